//! Kill at any moment: the real `keyrotor rotate` against moto and the Azure DevOps emulator
//! (every emulator call delayed, so each step takes measurable time) is SIGKILLed inside every
//! step of the protocol, at several offsets after the step starts; after each kill the
//! invariants are checked from the outside (IAM keys and last use, secret stages, the
//! emulator's stored credentials), then `rotate` runs again until it converges, and a last
//! `rotate` must change nothing (invariants 1-4, 6). Two processes started together on one
//! target: exactly one key is created (invariant 7).
//!
//! CI runs a sample (two offsets per step); the full set of offsets runs with
//! `KEYROTOR_FULL_MATRIX=1 cargo test -p keyrotor --test kill -- --nocapture`.

#[allow(dead_code)]
#[path = "../binary/env.rs"]
mod env;

#[allow(dead_code)]
#[path = "../binary/leaks.rs"]
mod leaks;

mod kill;
