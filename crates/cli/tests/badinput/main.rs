//! Bad input gets a clear error and changes nothing: a table of cases, each run against the
//! REAL `keyrotor` binary with moto (AWS), the Azure DevOps emulator and a Slack sink (the
//! harness of the `binary` suite, reused through `#[path]`).
//!
//! Every case sets something up wrong (the config text, the emulator's seed, the AWS state),
//! runs `keyrotor rotate --force --output json` and then the text form `keyrotor rotate
//! --force`, and checks:
//!
//! - the exit code (README: 2 bad usage or configuration, 3 refused as unsafe, 1 a failed and
//!   compensated rotation);
//! - the error is ONE sentence on ONE line and NAMES the offending thing: `file:line` and the
//!   field for config errors (on stderr, as `error: …keyrotor.toml:LINE: FIELD: …`), the IAM
//!   user, parameter, connection or key otherwise (in the report: JSON `error`/`reason`, and
//!   the same line in the text report);
//! - nothing changed: IAM's key list (with status), the secret's versions and stages, and
//!   everything the emulator holds are compared before and after, and no write request
//!   reached Azure DevOps (the one case where keyrotor can only learn at the PUT that it may
//!   not write says precisely what may and may not have changed);
//! - no secret leaked into any output (the `binary` suite's leak scan, at `RUST_LOG=trace`).
//!
//! `cargo test -p keyrotor --test badinput -- --nocapture` prints one line per case and
//! `bad input: N cases, N passed`.

#[allow(dead_code)]
#[path = "../binary/env.rs"]
mod env;

#[allow(dead_code)]
#[path = "../binary/leaks.rs"]
mod leaks;

mod cases;
mod harness;
