//! `keyrotor audit`: every AWS service connection of an organization, with its key's age and last
//! use where IAM allows it, flagging old keys and connections that could move to OIDC.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use keyrotor_core::domain::{OrgUrl, SecretRef};
use keyrotor_core::plan::human;
use keyrotor_core::ports::{AwsConnection, KeyOwner, PortErrorKind};
use keyrotor_core::report::exit;
use keyrotor_core::secrets;
use serde_json::json;

use crate::{Backend, Format, Io};

/// The flag of a connection that holds a key and could use OIDC: it names the command that
/// moves it.
pub const OIDC_READY: &str =
    "could use OIDC (AWS Toolkit ≥ 1.15) and hold no key at all: keyrotor migrate-oidc moves it";

/// Keys older than this are flagged.
pub const OLD_KEY: Duration = Duration::from_secs(90 * 86_400);

/// Options of `keyrotor audit`.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    /// The organization, e.g. https://dev.azure.com/contoso.
    #[arg(long)]
    pub organization: String,
    /// Where the PAT is: ssm:/path, secretsmanager:NAME or env:VAR (never the PAT itself).
    #[arg(long)]
    pub pat: String,
    /// AWS region for reading the PAT and IAM (else the AWS environment).
    #[arg(long)]
    pub region: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Format,
}

/// What IAM told about a connection's key.
enum KeyFacts {
    /// No key (OIDC, or an empty username).
    NoKey,
    /// Found.
    Known(KeyOwner),
    /// Not a key of this AWS account.
    Unknown,
    /// IAM would not say (no `iam:GetAccessKeyLastUsed`).
    Hidden(String),
}

struct Row {
    conn: AwsConnection,
    facts: KeyFacts,
    flags: Vec<&'static str>,
}

/// Runs the audit. Returns the exit code (0, or 2 for bad input).
pub async fn run(args: &AuditArgs, backend: &dyn Backend, io: &mut Io<'_>) -> i32 {
    let fail = |io: &mut Io<'_>, msg: String| {
        let _ = writeln!(io.err, "error: {msg}");
        exit::USAGE
    };
    let org = match OrgUrl::parse(&args.organization) {
        Ok(o) => o,
        Err(e) => return fail(io, format!("--organization: {e}")),
    };
    let pat_ref = match SecretRef::parse(&args.pat) {
        Ok(r) => r,
        Err(e) => return fail(io, format!("--pat: {e}")),
    };
    let aws = backend.aws(args.region.clone()).await;
    let pat = match secrets::resolve(&pat_ref, aws.params.as_ref(), aws.secrets.as_ref()).await {
        Ok(p) => p,
        Err(e) => {
            return fail(
                io,
                format!("--pat: the PAT could not be read: {}", e.message),
            );
        }
    };
    let ado = match backend.ado(pat) {
        Ok(a) => a,
        Err(e) => return fail(io, format!("--pat: {}", e.message)),
    };
    let conns = match ado.list_aws(&org).await {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind {
                PortErrorKind::Retryable | PortErrorKind::Failed => exit::FAILED,
                _ => exit::USAGE,
            };
            let _ = writeln!(
                io.err,
                "error: listing the service connections of {org}: {}",
                e.message
            );
            return code;
        }
    };
    let now = backend.clock().now();
    let mut rows = Vec::new();
    for conn in conns {
        let facts = match (&conn.key_id, conn.uses_oidc) {
            (None, _) | (_, true) => KeyFacts::NoKey,
            (Some(id), false) => match aws.iam.owner_of(id).await {
                Ok(Some(owner)) => KeyFacts::Known(owner),
                Ok(None) => KeyFacts::Unknown,
                Err(e) => KeyFacts::Hidden(e.message),
            },
        };
        let mut flags = Vec::new();
        if let KeyFacts::Known(KeyOwner {
            created: Some(c), ..
        }) = &facts
            && now.duration_since(*c).unwrap_or_default() > OLD_KEY
        {
            flags.push("key older than 90 days");
        }
        if !conn.uses_oidc && conn.key_id.is_some() {
            flags.push(OIDC_READY);
        }
        if !conn.is_ready {
            flags.push("not ready");
        }
        rows.push(Row { conn, facts, flags });
    }
    let printed = match args.output {
        Format::Json => json_out(&org, &rows, now),
        Format::Text => text_out(&org, &rows, now),
    };
    let _ = io.out.write_all(printed.as_bytes());
    exit::OK
}

fn ago(now: SystemTime, t: Option<SystemTime>) -> Option<Duration> {
    t.map(|t| now.duration_since(t).unwrap_or_default())
}

fn text_out(org: &OrgUrl, rows: &[Row], now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "AWS service connections of {org}: {}", rows.len());
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "connection",
        "projects",
        "key",
        "OIDC",
        "IAM user",
        "age",
        "last used",
        "flags",
    ]);
    for r in rows {
        let (user, age, used) = match &r.facts {
            KeyFacts::NoKey => ("-".into(), "-".into(), "-".into()),
            KeyFacts::Unknown => ("not in this account".into(), "?".into(), "?".into()),
            KeyFacts::Hidden(_) => ("(IAM denied)".into(), "?".into(), "?".into()),
            KeyFacts::Known(o) => (
                o.user.clone(),
                ago(now, o.created).map_or_else(|| "?".into(), human),
                ago(now, o.last_used)
                    .map_or_else(|| "never".into(), |d| format!("{} ago", human(d))),
            ),
        };
        table.add_row([
            r.conn.name.clone(),
            r.conn.projects.join(", "),
            r.conn
                .key_id
                .as_ref()
                .map_or_else(|| "-".into(), |k| k.masked()),
            if r.conn.uses_oidc {
                "yes".into()
            } else {
                "no".into()
            },
            user,
            age,
            used,
            r.flags.join("; "),
        ]);
    }
    let _ = writeln!(out, "{table}");
    if rows.iter().any(|r| r.flags.contains(&OIDC_READY)) {
        out.push_str(
            "To move a connection to OIDC: keyrotor migrate-oidc --config F --target NAME (the target \
             whose endpoints list it) shows the plan; --apply does it, reversibly (README: \"Leaving \
             keys behind\").\n",
        );
    }
    if rows.iter().any(|r| matches!(r.facts, KeyFacts::Hidden(_))) {
        out.push_str("Some key ages are unknown: the AWS credentials may not call iam:GetAccessKeyLastUsed.\n");
    }
    out
}

fn json_out(org: &OrgUrl, rows: &[Row], now: SystemTime) -> String {
    let conns: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let (user, age, used, note) = match &r.facts {
                KeyFacts::Known(o) => (
                    Some(o.user.clone()),
                    ago(now, o.created).map(|d| d.as_secs() / 86_400),
                    ago(now, o.last_used).map(|d| d.as_secs() / 86_400),
                    None,
                ),
                KeyFacts::Hidden(e) => (None, None, None, Some(e.clone())),
                KeyFacts::Unknown => (
                    None,
                    None,
                    None,
                    Some("the key is not in this AWS account".to_owned()),
                ),
                KeyFacts::NoKey => (None, None, None, None),
            };
            json!({
                "name": r.conn.name,
                "id": r.conn.id,
                "projects": r.conn.projects,
                "key": r.conn.key_id.as_ref().map(|k| k.masked()),
                "uses_oidc": r.conn.uses_oidc,
                "iam_user": user,
                "age_days": age,
                "last_used_days_ago": used,
                "iam_note": note,
                "flags": r.flags,
            })
        })
        .collect();
    let mut s =
        serde_json::to_string_pretty(&json!({"organization": org.as_str(), "connections": conns}))
            .unwrap_or_default();
    s.push('\n');
    s
}
