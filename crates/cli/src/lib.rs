//! # keyrotor (the command line)
//!
//! Thin: parse arguments (clap), resolve them into domain values, build the adapters through a
//! [`Backend`], call the core, print, map the outcome to an exit code. The binary's `main` uses
//! the real backend; tests use one that mixes real adapters (moto) with fakes.
//!
//! # Layout
//!
//! - this file: the commands and their wiring;
//! - [`output`]: text and JSON rendering (masked ids only), the status table;
//! - [`progress`]: the live per-step progress line on a terminal;
//! - [`audit`]: `keyrotor audit`;
//! - [`migrate_oidc`]: `keyrotor migrate-oidc`, from the key to OIDC and back;
//! - [`check`]: `keyrotor check`, the read-only preflight;
//! - [`docs`]: `keyrotor completions` and `keyrotor man`, from the same clap definitions;
//! - [`backend`]: the real adapters;
//! - [`sandbox`]: `keyrotor sandbox`, the whole job against local stand-ins (`sandbox_oidc`:
//!   `--oidc`, the move to OIDC).

#![warn(missing_docs)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clap::{Parser, Subcommand, ValueEnum};
use keyrotor_core::config::{Config, Target};
use keyrotor_core::domain::RunId;
use keyrotor_core::engine::{self, Observer, RunOptions};
use keyrotor_core::plan::Snapshot;
use keyrotor_core::ports::{
    Account, CallerIdentity, Clock, Executions, KeyStore, Notifier, Parameters, PortResult,
    SecretStore, ServiceConnections, SystemClock,
};
use keyrotor_core::protocol::{self, Ports, StepError, StepErrorKind};
use keyrotor_core::report::exit;
use keyrotor_core::secrets;
use secrecy::SecretString;

pub mod audit;
pub mod backend;
pub mod check;
pub mod docs;
pub mod migrate_oidc;
pub mod output;
pub mod progress;
pub mod sandbox;
mod sandbox_oidc;

const EXIT_CODES: &str = "\
Exit codes (check: the code the failed checks stand for, 0 when a rotation can run):
  0  every target rotated or had nothing due
  1  a rotation failed (it was compensated or left safe: see the report); check: a service could not be reached
  2  bad usage or configuration (a name that does not exist, a missing parameter or permission); nothing changed
  3  refused as unsafe (e.g. an OIDC connection, two active keys in use); nothing changed
  4  every rotation is fine, but the Slack notification could not be sent; check: the webhook is not valid
  5  a target stood aside for another run that owns its rotation (nothing failed or was refused); its work is not done
  130, 143  stopped by SIGINT (Ctrl-C) or SIGTERM: rotations this run owned were given up for the next run";

/// keyrotor rotates the AWS access key behind Azure DevOps AWS service connections, in place.
#[derive(Parser, Debug)]
#[command(name = "keyrotor", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document on stdout, for machines.
    Json,
}

/// The config file and the targets to act on.
#[derive(clap::Args, Debug, Clone)]
pub struct Selection {
    /// The config file.
    #[arg(long, short, env = "KEYROTOR_CONFIG", default_value = "keyrotor.toml")]
    pub config: PathBuf,
    /// Only this target (repeatable); all targets when absent.
    #[arg(long = "target", short = 't', value_name = "NAME")]
    pub targets: Vec<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Format,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Rotate every due target: create, verify, update connections in place, retire, report.
    #[command(after_help = EXIT_CODES)]
    Rotate {
        /// Config and targets.
        #[command(flatten)]
        sel: Selection,
        /// Rotate even when the key is younger than min_key_age.
        #[arg(long)]
        force: bool,
        /// Wait out policy.drain and retire the old key in this run (else the old key stays
        /// Active until the drain is over, and a later run retires it).
        #[arg(long)]
        wait_for_drain: bool,
    },
    /// Show what `rotate` would do, changing nothing.
    #[command(after_help = EXIT_CODES)]
    Plan {
        /// Config and targets.
        #[command(flatten)]
        sel: Selection,
        /// Plan as if --force were given to rotate.
        #[arg(long)]
        force: bool,
    },
    /// Per target: each key (masked), its age, status and last use; the secret's stages; the
    /// key each connection holds.
    Status {
        /// Config and targets.
        #[command(flatten)]
        sel: Selection,
    },
    /// Check, changing nothing, that a rotation can run: the config, the secret references, AWS
    /// region, credentials and permissions, each IAM user and secret, the PAT, each connection,
    /// the Slack webhook (probed without posting). One line per check, each failure with its fix.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// Config and targets.
        #[command(flatten)]
        sel: Selection,
    },
    /// Print a commented example config.
    Init,
    /// Print the shell completion script for SHELL (e.g. `keyrotor completions bash >
    /// ~/.local/share/bash-completion/completions/keyrotor`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into DIR with --out.
    Man {
        /// Write keyrotor.1 and keyrotor-COMMAND.1 into this directory instead.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// List every AWS service connection of an organization: key (masked), OIDC, key age and
    /// last use (where IAM allows), flagging keys older than 90 days and connections that could
    /// move to OIDC.
    Audit(audit::AuditArgs),
    /// Move a target's connections from the IAM user's key to OIDC (plan by default; --apply,
    /// --rollback, --finish), in place and reversibly.
    MigrateOidc(migrate_oidc::MigrateArgs),
    /// Watch a whole rotation on this machine, against local stand-ins for AWS (moto), Azure
    /// DevOps and Slack.
    Sandbox(sandbox::SandboxArgs),
}

/// The AWS ports, built from the environment.
#[derive(Clone)]
pub struct AwsPorts {
    /// IAM.
    pub iam: Arc<dyn KeyStore>,
    /// Secrets Manager.
    pub secrets: Arc<dyn SecretStore>,
    /// STS.
    pub sts: Arc<dyn CallerIdentity>,
    /// SSM.
    pub params: Arc<dyn Parameters>,
    /// The region and credentials in force, read only (`keyrotor check`).
    pub account: Arc<dyn Account>,
    /// Step Functions (whether an execution that owns a lease still runs).
    pub executions: Arc<dyn Executions>,
}

/// Builds the adapters. The binary uses [`RealBackend`]; tests swap parts for fakes.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The AWS adapters.
    async fn aws(&self, region: Option<String>) -> AwsPorts;
    /// The Azure DevOps adapter, authenticated with the PAT.
    fn ado(&self, pat: SecretString) -> PortResult<Arc<dyn ServiceConnections>>;
    /// The Slack notifier for a webhook URL.
    fn notifier(&self, webhook: SecretString) -> PortResult<Arc<dyn Notifier>>;
    /// The adapters `migrate-oidc` adds: IAM providers and roles, the migration record, and
    /// Azure DevOps' OIDC side (authenticated with the PAT).
    async fn oidc(
        &self,
        region: Option<String>,
        pat: SecretString,
    ) -> PortResult<migrate_oidc::OidcPorts>;
    /// The wall clock.
    fn clock(&self) -> Arc<dyn Clock> {
        Arc::new(SystemClock)
    }
}

/// Where the CLI writes.
pub struct Io<'a> {
    /// Standard output (reports, JSON).
    pub out: &'a mut (dyn Write + Send),
    /// Standard error (errors, progress).
    pub err: &'a mut (dyn Write + Send),
    /// Whether stderr is a terminal (live progress line).
    pub terminal: bool,
}

fn origin() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into());
    format!("keyrotor CLI on {host}")
}

/// Parses `args` and runs the command. Returns the exit code.
pub async fn run(args: Vec<OsString>, backend: &dyn Backend, io: &mut Io<'_>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = write!(
                if e.use_stderr() {
                    &mut *io.err
                } else {
                    &mut *io.out
                },
                "{}",
                e.render()
            );
            return code;
        }
    };
    match cli.command {
        Command::Init => {
            let _ = io.out.write_all(keyrotor_core::config::EXAMPLE.as_bytes());
            exit::OK
        }
        Command::Rotate {
            sel,
            force,
            wait_for_drain,
        } => rotate(&sel, force, false, wait_for_drain, backend, io).await,
        Command::Plan { sel, force } => rotate(&sel, force, true, false, backend, io).await,
        Command::Status { sel } => status(&sel, backend, io).await,
        Command::Check { sel } => check::run(&sel, backend, io).await,
        Command::Completions { shell } => docs::completions(shell, io),
        Command::Man { out } => docs::man(out.as_deref(), io),
        Command::Audit(args) => audit::run(&args, backend, io).await,
        Command::MigrateOidc(args) => Box::pin(migrate_oidc::run(&args, backend, io)).await,
        Command::Sandbox(args) => sandbox::run(&args, io).await,
    }
}

/// Everything a command needs, resolved from the config.
struct Prepared {
    config: Config,
    targets: Vec<Target>,
    ports: Ports,
    notifier: Option<Arc<dyn Notifier>>,
}

/// Loads the config, resolves the PAT (and webhook), builds the ports. Any failure here is bad
/// usage or configuration: one sentence on stderr, exit 2, nothing changed.
async fn prepare(
    sel: &Selection,
    backend: &dyn Backend,
    with_notifier: bool,
) -> Result<Prepared, String> {
    let config = Config::load(&sel.config).map_err(|e| e.to_string())?;
    let targets = config.select(&sel.targets)?;
    let aws = backend.aws(config.aws_region.clone()).await;
    // Every AWS call would fail without a region: say so first, with the fix.
    if aws.account.region().is_none() {
        return Err(keyrotor_aws::NO_REGION.to_owned());
    }
    let pat = secrets::resolve(&config.pat, aws.params.as_ref(), aws.secrets.as_ref())
        .await
        .map_err(|e| format!("ado.pat: the PAT could not be read: {}", e.message))?;
    let notifier = match (&config.slack_webhook, with_notifier) {
        (Some(r), true) => {
            let url =
                secrets::resolve_webhook(r, aws.params.as_ref(), aws.secrets.as_ref()).await?;
            Some(
                backend
                    .notifier(url)
                    .map_err(|e| format!("slack.webhook: {}", e.message))?,
            )
        }
        _ => None,
    };
    let ports = Ports {
        iam: aws.iam,
        secrets: aws.secrets,
        sts: aws.sts,
        ado: backend
            .ado(pat)
            .map_err(|e| format!("ado.pat: {}", e.message))?,
        clock: backend.clock(),
        executions: aws.executions,
    };
    Ok(Prepared {
        config,
        targets,
        ports,
        notifier,
    })
}

/// The log filter: `RUST_LOG` when it says more than a level, else keyrotor's crates at that
/// level (`warn` when unset) and every other crate at `error`. So the AWS SDK's probes and
/// retries (instance metadata, credential providers) stay out of a plain run and of
/// `RUST_LOG=info`, and appear from `RUST_LOG=debug` on, or with directives of one's own.
pub fn log_filter(rust_log: Option<&str>) -> String {
    const OURS: [&str; 6] = [
        "keyrotor",
        "keyrotor_core",
        "keyrotor_aws",
        "keyrotor_ado",
        "keyrotor_notify",
        "keyrotor_standins",
    ];
    let given = rust_log.map(str::trim).filter(|v| !v.is_empty());
    let level = match given {
        None => "warn".to_owned(),
        Some(v) if ["error", "warn", "info"].contains(&v.to_ascii_lowercase().as_str()) => {
            v.to_ascii_lowercase()
        }
        Some(v) => return v.to_owned(),
    };
    let mut filter = "error".to_owned();
    for c in OURS {
        filter.push_str(&format!(",{c}={level}"));
    }
    filter
}

fn fail_usage(io: &mut Io<'_>, msg: &str) -> i32 {
    // The last net under a message built from a service's answer: see `domain::redact`.
    let msg = keyrotor_core::domain::redact(msg);
    let _ = writeln!(io.err, "error: {msg}");
    exit::USAGE
}

async fn rotate(
    sel: &Selection,
    force: bool,
    dry_run: bool,
    wait_for_drain: bool,
    backend: &dyn Backend,
    io: &mut Io<'_>,
) -> i32 {
    let p = match prepare(sel, backend, !dry_run).await {
        Ok(p) => p,
        Err(msg) => return fail_usage(io, &msg),
    };
    let opts = RunOptions {
        wait_for_drain,
        run_id: RunId::new(),
        force,
        dry_run,
        origin: origin(),
    };
    let live = progress::Live::new(io.terminal && sel.output == Format::Text, &p.targets);
    let observer: Observer = live.observer();
    let run = engine::run(
        &p.ports,
        &p.config.policy,
        &p.targets,
        &opts,
        p.notifier.as_deref(),
        &observer,
    );
    let report = tokio::select! {
        report = run => report,
        signal = stop_signal() => {
            live.finish();
            return interrupted(&p, &opts.run_id, signal, io).await;
        }
    };
    live.finish();
    let code = report.exit_code();
    let printed = match sel.output {
        Format::Json => output::json(&report),
        Format::Text if dry_run => output::plan_text(&report),
        Format::Text => output::report_text(&report),
    };
    let _ = io.out.write_all(printed.as_bytes());
    code
}

/// The signal that stops a run (SIGINT: Ctrl-C; SIGTERM: a scheduler or `kill`), by name and
/// the exit code a shell gives it (128 + its number).
async fn stop_signal() -> (&'static str, i32) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => ("SIGINT", 130),
                _ = term.recv() => ("SIGTERM", 143),
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                ("SIGINT", 130)
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        ("SIGINT", 130)
    }
}

/// A run stopped by a signal (#21, 2): whatever step was under way was dropped where it stood
/// (as safe as a SIGKILL there, which the kill suites prove), and each rotation this run owns is
/// given up at once, so the next run resumes it instead of standing aside for the lease.
async fn interrupted(
    p: &Prepared,
    run_id: &RunId,
    (name, code): (&'static str, i32),
    io: &mut Io<'_>,
) -> i32 {
    let mut released = Vec::new();
    for t in &p.targets {
        if protocol::release_run(&p.ports, t, run_id).await {
            released.push(t.name.to_string());
        }
    }
    let what = if released.is_empty() {
        "this run owned no rotation".to_owned()
    } else {
        format!(
            "gave up this run's ownership of the rotation of {}; the next run resumes it",
            released.join(", ")
        )
    };
    let _ = writeln!(io.err, "keyrotor: stopped by {name}: {what}");
    code
}

async fn status(sel: &Selection, backend: &dyn Backend, io: &mut Io<'_>) -> i32 {
    let p = match prepare(sel, backend, false).await {
        Ok(p) => p,
        Err(msg) => return fail_usage(io, &msg),
    };
    let now = p.ports.clock.now();
    let mut results: Vec<(Target, Result<Snapshot, StepError>)> = Vec::new();
    for t in &p.targets {
        let snap = protocol::inspect(&p.ports, t).await;
        results.push((t.clone(), snap));
    }
    let code = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .map(|e| {
            if e.kind == StepErrorKind::Invalid {
                exit::USAGE
            } else {
                exit::FAILED
            }
        })
        .max_by_key(|c| if *c == exit::FAILED { 2 } else { 1 })
        .unwrap_or(exit::OK);
    let printed = match sel.output {
        Format::Json => output::status_json(&results, now),
        Format::Text => output::status_text(&results, now, &p.config.policy),
    };
    let _ = io.out.write_all(printed.as_bytes());
    code
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn by_default_and_at_info_other_crates_log_only_errors() {
        let quiet = "error,keyrotor=warn,keyrotor_core=warn,keyrotor_aws=warn,keyrotor_ado=warn,keyrotor_notify=warn,keyrotor_standins=warn";
        assert_eq!(log_filter(None), quiet);
        assert_eq!(log_filter(Some("  ")), quiet);
        assert!(log_filter(Some("INFO")).starts_with("error,keyrotor=info,"));
        assert_eq!(log_filter(Some("debug")), "debug");
        assert_eq!(log_filter(Some("aws_config=trace")), "aws_config=trace");
    }
}
