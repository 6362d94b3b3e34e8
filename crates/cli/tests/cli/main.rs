//! The real `keyrotor` binary, run as a child process against moto (AWS, behind the test kit's
//! proxy in strict mode), the Azure DevOps emulator and the Slack sink, all on loopback ports:
//! one environment for every test, [`keyrotor_testkit::env::TestEnv`].
//!
//! Every run is checked for leaks: no secret in stdout, stderr (`RUST_LOG=trace`), the JSON
//! output or a Slack payload; key ids only masked. Every test asserts the exit code, the
//! outcome the run reports, and the real state afterwards in moto and in the emulator.
//!
//! - `rotate`: `keyrotor rotate` (success, rerun, refused PAT, failing update, 429 storm, a
//!   fleet against the rate limit, OIDC, Slack outage);
//! - `check`: `keyrotor check` (a sound setup, and each failure with its fix: no region, no
//!   credentials, an unreachable endpoint, a missing permission, an unknown or OIDC connection,
//!   another user's key, a dead webhook), all of it read only; quiet logs by default;
//! - `readonly`: `plan`, `status`, `--help`, completions and the man page change nothing;
//! - `e2e`: the commands end to end (legacy and missing secrets, STS proof, `init`,
//!   `sandbox`, `audit`, config errors);
//! - `badinput`: the bad-input table (`bad input: N cases, N passed`);
//! - `faults`: the network fault matrix (`faults: N cases, N passed`);
//! - `kill`: SIGKILL inside every step (`kills: N runs killed, N converged`);
//! - `interleave`: a Step Functions execution (the Lambda's handlers) and CLI processes on one
//!   target, interleaved at every step, a CLI run killed inside every step, a refused PUT;
//! - `production`: safe in production, second pass (#21): a person's key after a rotation, a
//!   killed or stopped owner, a consumer late in the drain, the default grace, a forced rotation
//!   mid-drain;
//! - `liveness`: a dead owner detected, not waited out (#21, 2): a run killed inside create's
//!   window, a rotation owned by a Step Functions execution that runs or no longer runs;
//! - `oidc`: `migrate-oidc` (plan, apply, rollback, finish, refusals, a crash at every step).
//!
//! ```sh
//! cargo test -p keyrotor --test cli -- --nocapture             # everything, with the count lines
//! cargo test -p keyrotor --test cli badinput -- --nocapture    # one suite
//! KEYROTOR_FULL_MATRIX=1 cargo test -p keyrotor --test cli faults::fault_matrix -- --nocapture
//! KEYROTOR_FULL_MATRIX=1 cargo test -p keyrotor --test cli kill -- --nocapture
//! ```
//!
//! For debugging: `KEYROTOR_BINARY_SHOW=1` prints each run's stdout and the Slack posts,
//! `KEYROTOR_BINARY_LOGS=DIR` keeps each run's stderr in DIR, `KEYROTOR_SHOW_SDK_ID_LINES=1`
//! prints the AWS SDK log lines that hold a full key id (allowed), `KEYROTOR_BADINPUT_SHOW=1`
//! prints each bad-input message. Run with `--nocapture`.

mod badinput;
mod check;
mod e2e;
mod faults;
mod interleave;
mod kill;
mod liveness;
mod oidc;
mod production;
mod readonly;
mod rotate;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use keyrotor_testkit::env::{Setup, TestEnv};

/// The environment for this build's `keyrotor` binary, to adjust before `start()`.
pub fn setup() -> Setup {
    Setup::new(binary())
}

/// The binary under test, pinned for the whole test process: `target/debug/keyrotor` is
/// re-pointed by every build into the target directory (other checkouts sharing it too), so
/// the tests run a hard link to what it was when they started (`target/tmp`, one per process;
/// those of processes that ended are removed).
fn binary() -> &'static Path {
    static PINNED: OnceLock<PathBuf> = OnceLock::new();
    PINNED.get_or_init(|| {
        let built = Path::new(env!("CARGO_BIN_EXE_keyrotor"));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let prefix = "keyrotor-under-test-";
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(prefix)
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let pinned = dir.join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_file(&pinned);
        match std::fs::hard_link(built, &pinned)
            .or_else(|_| std::fs::copy(built, &pinned).map(drop))
        {
            Ok(()) => pinned,
            Err(_) => built.to_owned(),
        }
    })
}

/// A fresh environment with the defaults.
pub async fn spawn_env() -> TestEnv {
    setup().start().await
}
