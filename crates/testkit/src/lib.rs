//! # keyrotor-testkit
//!
//! Test-only stand-ins for keyrotor's tests and benchmarks. No shipped binary depends on it
//! (the `keyrotor` CLI and the Lambda take it as a dev-dependency only).
//!
//! The stand-ins `keyrotor sandbox` also uses live in `keyrotor-standins`, which the CLI ships;
//! they are re-exported here ([`ado`], [`aws_seed`], [`moto`], [`slack`]) so tests can reach
//! everything through this crate.
//!
//! # Layout
//!
//! - [`fakes`]: in-memory fakes of every port that enforce the real services' rules, with a
//!   tripwire that kills a run at any port call (crash tests).
//! - [`lambda_api`]: a minimal local Lambda Runtime API, to run the real `bootstrap`.
//! - [`aws_proxy`]: a fault-injecting proxy in front of moto (throttling, 5xx, slow, dropped),
//!   with a strict mode that answers as AWS does where moto is kinder.
//! - [`env`]: the one `TestEnv` of the integration tests: moto (behind the strict proxy), the
//!   emulator and the Slack sink, one config template, the real binary, the world read back.
//! - re-exported from `keyrotor-standins`: [`moto`] (the moto launcher), [`ado`] (the Azure
//!   DevOps emulator), [`slack`] (the Slack sink), [`aws_seed`] (seeding moto).

#![warn(missing_docs)]

pub mod aws_proxy;
pub mod env;
pub mod fakes;
pub mod lambda_api;

pub use keyrotor_standins::{ado, aws_seed, moto, slack};
