//! The real `keyrotor` binary, run as a child process against moto (AWS), the Azure DevOps
//! emulator and the Slack sink, all on loopback ports started and stopped by each test.
//!
//! Every run is checked for leaks (`leaks`): no secret in stdout, stderr (`RUST_LOG=trace`) or
//! a Slack payload; key ids only masked. Every test asserts the exit code, the outcome that
//! `--output json` reports, and the real state afterwards in moto and in the emulator.
//!
//! For debugging: `KEYROTOR_BINARY_SHOW=1` prints each run's stdout and the Slack posts,
//! `KEYROTOR_BINARY_LOGS=DIR` keeps each run's stderr in DIR, `KEYROTOR_SHOW_SDK_ID_LINES=1`
//! prints the AWS SDK log lines that hold a full key id (allowed: see `leaks`). Run with
//! `--nocapture`.

mod env;
mod leaks;
mod readonly;
mod rotate;
