//! `keyrotor check`: a read-only preflight before the first rotation.
//!
//! (One file on purpose: the checks are one ordered list, each reading what the one before
//! established — config, credentials, permissions, the secret, the PAT, the connections, Slack —
//! and the exit code is decided over all of them; split, the order and the precedence of the
//! exit codes would live in several places.)
//!
//! One line per check, `✓` or `✗` (or `–` for what cannot be checked from here), each failure
//! one sentence that names its fix; the exit code says whether a rotation can run. It reads and
//! never writes: the AWS calls are `sts:GetCallerIdentity`, `iam:SimulatePrincipalPolicy`,
//! `iam:ListAccessKeys`, `iam:GetAccessKeyLastUsed`, `secretsmanager:DescribeSecret`,
//! `secretsmanager:GetSecretValue` and `ssm:GetParameter`; the Azure DevOps calls are GETs
//! (`connectionData`, the connections); the Slack webhook gets one empty object (`{}`), which
//! Slack refuses as a message (`400 no_text`) when the webhook is live, so nothing is posted.
//!
//! Exit codes follow `rotate`'s table, the most serious failure winning (1, then 3, then 2,
//! then 4): 2 for what is missing or misconfigured (config, region, credentials, a permission,
//! an IAM user, a connection that does not exist, a PAT that is refused), 3 for what rotation
//! would refuse as unsafe (an OIDC or non-AWS connection, a connection holding a key that is
//! not the target user's), 1 for a service that could not be reached, 4 for a Slack webhook that
//! is not valid. "Not checked" does not fail the check.

use std::fmt::Write as _;
use std::sync::Arc;

use keyrotor_core::config::{Config, Target};
use keyrotor_core::domain::{AccessKeyId, KeyStatus, OrgUrl, SecretRef};
use keyrotor_core::ports::{
    Caller, KeyInfo, PortError, PortErrorKind, ServiceConnections, Stage, WebhookProbe,
};
use keyrotor_core::report::exit;
use keyrotor_core::secret_value::{self, Content};
use keyrotor_core::secrets;
use serde::Serialize;

use crate::{AwsPorts, Backend, Format, Io, Selection};

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// It holds.
    Ok,
    /// It does not; the exit code it stands for.
    Failed,
    /// It could not be checked from here (said why); it does not fail the check.
    NotChecked,
}

/// One line of the check.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// What was checked (`AWS credentials`, `IAM user`, …).
    pub check: String,
    /// The target it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How it ended.
    pub status: Status,
    /// What was found, or what is wrong and how to fix it: one sentence.
    pub message: String,
    /// For a failure: the exit code it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Every line so far, and the code they add up to.
#[derive(Default)]
struct Report {
    lines: Vec<Line>,
}

impl Report {
    fn push(&mut self, target: Option<&Target>, check: &str, status: Status, message: String) {
        self.lines.push(Line {
            check: check.to_owned(),
            target: target.map(|t| t.name.to_string()),
            status,
            message: keyrotor_core::domain::redact(&message),
            exit_code: None,
        });
    }
    fn ok(&mut self, target: Option<&Target>, check: &str, message: String) {
        self.push(target, check, Status::Ok, message);
    }
    fn not_checked(&mut self, target: Option<&Target>, check: &str, message: String) {
        self.push(target, check, Status::NotChecked, message);
    }
    fn failed(&mut self, target: Option<&Target>, check: &str, code: i32, message: String) {
        self.push(target, check, Status::Failed, message);
        if let Some(l) = self.lines.last_mut() {
            l.exit_code = Some(code);
        }
    }

    /// The most serious failure's code: 1, then 3, then 2, then 4 (as `rotate`'s).
    fn exit_code(&self) -> i32 {
        let rank = |c: i32| match c {
            exit::FAILED => 4,
            exit::REFUSED => 3,
            exit::USAGE => 2,
            exit::NOTIFY_FAILED => 1,
            _ => 0,
        };
        self.lines
            .iter()
            .filter_map(|l| l.exit_code)
            .max_by_key(|c| rank(*c))
            .unwrap_or(exit::OK)
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            let mark = match l.status {
                Status::Ok => "✓",
                Status::Failed => "✗",
                Status::NotChecked => "–",
            };
            let subject = match &l.target {
                Some(t) => format!("{t}: {}", l.check),
                None => l.check.clone(),
            };
            let _ = writeln!(out, "{mark} {subject}: {}", l.message);
        }
        let count = |s: Status| self.lines.iter().filter(|l| l.status == s).count();
        let (failed, unchecked) = (count(Status::Failed), count(Status::NotChecked));
        let verdict = if failed == 0 {
            "a rotation can run"
        } else {
            "fix what is marked ✗, then run keyrotor check again"
        };
        let _ = writeln!(
            out,
            "\ncheck: {} passed, {failed} failed, {unchecked} not checked: {verdict}",
            count(Status::Ok)
        );
        out
    }

    fn json(&self) -> String {
        let doc = serde_json::json!({
            "ok": self.exit_code() == exit::OK,
            "exit_code": self.exit_code(),
            "checks": self.lines,
        });
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    }
}

/// The exit code a failed port call stands for: unreachable or failing services 1, unsafe 3,
/// anything else (missing, refused, misconfigured) 2.
fn code_of(e: &PortError) -> i32 {
    match e.kind {
        PortErrorKind::Retryable => exit::FAILED,
        PortErrorKind::Refused => exit::REFUSED,
        _ => exit::USAGE,
    }
}

/// Runs `keyrotor check`. Returns the exit code.
pub async fn run(sel: &Selection, backend: &dyn Backend, io: &mut Io<'_>) -> i32 {
    let mut r = Report::default();
    check(sel, backend, &mut r).await;
    let printed = match sel.output {
        Format::Json => r.json(),
        Format::Text => r.text(),
    };
    let _ = io.out.write_all(printed.as_bytes());
    r.exit_code()
}

async fn check(sel: &Selection, backend: &dyn Backend, r: &mut Report) {
    // The config: nothing else can be checked without it.
    let config = match Config::load(&sel.config) {
        Ok(c) => c,
        Err(e) => return r.failed(None, "config", exit::USAGE, e.to_string()),
    };
    let targets = match config.select(&sel.targets) {
        Ok(t) => t,
        Err(e) => return r.failed(None, "config", exit::USAGE, e),
    };
    r.ok(
        None,
        "config",
        format!(
            "{} is valid: {} to check{}",
            sel.config.display(),
            match targets.len() {
                1 => "1 target".to_owned(),
                n => format!("{n} targets"),
            },
            if config.slack_webhook.is_some() {
                ", Slack on"
            } else {
                ", no Slack"
            }
        ),
    );

    let aws = backend.aws(config.aws_region.clone()).await;
    let caller = check_aws(&config, &aws, r).await;

    // The secret references: the PAT, then the webhook.
    let pat = resolve(r, "ado.pat", &config.pat, &aws, caller.is_some()).await;
    let webhook = match &config.slack_webhook {
        Some(w) => resolve(r, "slack.webhook", w, &aws, caller.is_some()).await,
        None => None,
    };

    let ado = match pat.map(|p| backend.ado(p)) {
        Some(Ok(a)) => Some(a),
        Some(Err(e)) => {
            r.failed(None, "ado.pat", exit::USAGE, e.message);
            None
        }
        None => None,
    };
    // Organizations that refuse the PAT: their connections are not looked at (each would only
    // repeat the refusal).
    let mut refused: Vec<OrgUrl> = Vec::new();
    if let Some(ado) = &ado {
        let mut orgs: Vec<&OrgUrl> = Vec::new();
        for t in &targets {
            if !orgs.contains(&&t.organization) {
                orgs.push(&t.organization);
            }
        }
        for org in orgs {
            if !check_pat(ado.as_ref(), org, r).await {
                refused.push(org.clone());
            }
        }
    }
    if let Some(url) = webhook {
        check_webhook(backend, url, r).await;
    }

    for t in &targets {
        let ado = ado
            .as_deref()
            .filter(|_| !refused.contains(&t.organization));
        check_target(&config, t, &aws, caller.as_ref(), ado, r).await;
    }
}

/// Region and credentials; `Some` with the caller when AWS can be reached at all.
async fn check_aws(config: &Config, aws: &AwsPorts, r: &mut Report) -> Option<Caller> {
    let Some(region) = aws.account.region() else {
        r.failed(
            None,
            "AWS region",
            exit::USAGE,
            keyrotor_aws::NO_REGION.to_owned(),
        );
        r.not_checked(
            None,
            "AWS credentials",
            "not checked: AWS cannot be called without a region".into(),
        );
        return None;
    };
    let from = if config.aws_region.is_some() {
        "aws.region in the config"
    } else {
        "the AWS environment"
    };
    r.ok(None, "AWS region", format!("{region} (from {from})"));
    match aws.account.caller().await {
        Ok(c) => {
            r.ok(
                None,
                "AWS credentials",
                format!("{} (account {})", c.arn, c.account),
            );
            Some(c)
        }
        Err(e) => {
            r.failed(None, "AWS credentials", code_of(&e), e.message);
            None
        }
    }
}

/// Resolves one secret reference; says so without the value.
async fn resolve(
    r: &mut Report,
    field: &str,
    reference: &SecretRef,
    aws: &AwsPorts,
    aws_ok: bool,
) -> Option<secrecy::SecretString> {
    if !aws_ok && !matches!(reference, SecretRef::Env(_)) {
        r.not_checked(
            None,
            field,
            format!("{reference} not read: it is in AWS, which cannot be called (see above)"),
        );
        return None;
    }
    match secrets::resolve(reference, aws.params.as_ref(), aws.secrets.as_ref()).await {
        Ok(v) => {
            r.ok(None, field, format!("{reference} resolves"));
            Some(v)
        }
        Err(e) => {
            let fix = match e.kind {
                PortErrorKind::NotFound => {
                    format!(": create it, or point {field} at where the value is")
                }
                _ => String::new(),
            };
            r.failed(
                None,
                field,
                code_of(&e),
                format!("{reference} cannot be read: {}{fix}", e.message),
            );
            None
        }
    }
}

/// Whether the organization accepts the PAT (or cannot tell); `false` when it refuses it.
async fn check_pat(ado: &dyn ServiceConnections, org: &OrgUrl, r: &mut Report) -> bool {
    let answer = ado.authenticated_as(org).await;
    let accepted = !matches!(&answer, Err(e) if e.kind == PortErrorKind::Unauthorized);
    match answer {
        Ok(Some(who)) => r.ok(
            None,
            "Azure DevOps PAT",
            format!("authenticates to {org} as {who}"),
        ),
        Ok(None) => r.not_checked(
            None,
            "Azure DevOps PAT",
            format!("whom it authenticates as in {org} is not known to this client"),
        ),
        Err(e) if e.kind == PortErrorKind::Unauthorized => r.failed(
            None,
            "Azure DevOps PAT",
            exit::USAGE,
            format!(
                "{org} refuses the PAT ({}): create a PAT with the scope Service Connections (Read, query & manage) and store it where ado.pat points",
                e.message
            ),
        ),
        Err(e) => r.failed(None, "Azure DevOps PAT", code_of(&e), e.message),
    }
    accepted
}

async fn check_webhook(backend: &dyn Backend, url: secrecy::SecretString, r: &mut Report) {
    let notifier = match backend.notifier(url) {
        Ok(n) => n,
        Err(e) => return r.failed(None, "Slack webhook", exit::NOTIFY_FAILED, e.message),
    };
    match notifier.probe().await {
        Ok(WebhookProbe::Valid) => r.ok(
            None,
            "Slack webhook",
            "answers as a live incoming webhook (nothing was posted)".into(),
        ),
        Ok(WebhookProbe::Unverifiable(why)) => {
            r.not_checked(None, "Slack webhook", format!("not verified: {why}"))
        }
        Err(e) => r.failed(None, "Slack webhook", exit::NOTIFY_FAILED, e.message),
    }
}

/// The IAM principal whose policies apply to `caller`: a user as is, an assumed role's session
/// as its role. `None` for the root user (nothing to simulate: it may do everything) and
/// anything else.
pub fn principal_of(caller_arn: &str) -> Option<String> {
    let parts: Vec<&str> = caller_arn.splitn(6, ':').collect();
    let [arn, partition, service, _, account, resource] = parts[..] else {
        return None;
    };
    if arn != "arn" {
        return None;
    }
    match service {
        "iam" if resource.starts_with("user/") => Some(caller_arn.to_owned()),
        "sts" => {
            let rest = resource.strip_prefix("assumed-role/")?;
            let role = rest.split('/').next()?;
            Some(format!("arn:{partition}:iam::{account}:role/{role}"))
        }
        _ => None,
    }
}

/// What a rotation of `t` calls, on which resource (as IAM authorizes it).
fn needed(config: &Config, t: &Target, caller: &Caller, region: &str) -> Vec<(String, String)> {
    let partition = caller.arn.split(':').nth(1).unwrap_or("aws");
    let account = &caller.account;
    let user = format!("arn:{partition}:iam::{account}:user/{}", t.iam_user);
    // A secret's ARN ends in `-` and six random characters; policies name it `NAME-*` or
    // `NAME-??????`, so the simulation uses a suffix of that shape.
    let secret = if t.secret.as_str().starts_with("arn:") {
        t.secret.as_str().to_owned()
    } else {
        format!(
            "arn:{partition}:secretsmanager:{region}:{account}:secret:{}-AbCdEf",
            t.secret
        )
    };
    let mut checks: Vec<(String, String)> = [
        "iam:ListAccessKeys",
        "iam:GetAccessKeyLastUsed",
        "iam:CreateAccessKey",
        "iam:UpdateAccessKey",
        "iam:DeleteAccessKey",
    ]
    .iter()
    .map(|a| ((*a).to_owned(), user.clone()))
    .collect();
    for a in [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage",
        "secretsmanager:CreateSecret",
    ] {
        checks.push((a.to_owned(), secret.clone()));
    }
    for r in std::iter::once(&config.pat).chain(config.slack_webhook.as_ref()) {
        if let SecretRef::Ssm(name) = r {
            let name = name.strip_prefix('/').unwrap_or(name);
            checks.push((
                "ssm:GetParameter".into(),
                format!("arn:{partition}:ssm:{region}:{account}:parameter/{name}"),
            ));
        }
    }
    checks
}

async fn check_permissions(
    config: &Config,
    t: &Target,
    aws: &AwsPorts,
    caller: &Caller,
    r: &mut Report,
) {
    let what = "permissions";
    let Some(principal) = principal_of(&caller.arn) else {
        return r.not_checked(
            Some(t),
            what,
            format!(
                "not checked: {} is not a user or a role that IAM can simulate",
                caller.arn
            ),
        );
    };
    let region = aws.account.region().unwrap_or_default();
    let checks = needed(config, t, caller, &region);
    match aws.account.simulate(&principal, &checks).await {
        Ok(decisions) => {
            let denied: Vec<String> = decisions
                .iter()
                .filter(|d| !d.allowed)
                .map(|d| format!("{} on {}", d.action, d.resource))
                .collect();
            if denied.is_empty() {
                r.ok(
                    Some(t),
                    what,
                    format!(
                        "{principal} may call all {} actions a rotation needs (iam:SimulatePrincipalPolicy)",
                        decisions.len()
                    ),
                );
            } else {
                r.failed(
                    Some(t),
                    what,
                    exit::USAGE,
                    format!(
                        "{principal} may not call {}: grant them (deploy/README.md lists every permission)",
                        denied.join(", ")
                    ),
                );
            }
        }
        Err(e) => r.not_checked(
            Some(t),
            what,
            format!(
                "not checked, the simulation is not available here ({}); the reads below show what the credentials may read",
                e.message
            ),
        ),
    }
}

fn key_list(keys: &[KeyInfo]) -> String {
    keys.iter()
        .map(|k| {
            let status = match k.status {
                KeyStatus::Active => "Active",
                KeyStatus::Inactive => "Inactive",
            };
            let used = if k.last_used.is_some() {
                "used"
            } else {
                "never used"
            };
            format!("{} ({status}, {used})", k.id.masked())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn check_target(
    config: &Config,
    t: &Target,
    aws: &AwsPorts,
    caller: Option<&Caller>,
    ado: Option<&dyn ServiceConnections>,
    r: &mut Report,
) {
    let user = &t.iam_user;
    let keys = match caller {
        None => {
            r.not_checked(
                Some(t),
                "AWS",
                format!(
                    "IAM user '{user}', secret '{}' and permissions not checked: AWS cannot be called (see above)",
                    t.secret
                ),
            );
            None
        }
        Some(c) => {
            check_permissions(config, t, aws, c, r).await;
            let keys = match aws.iam.list_keys(user).await {
                Ok(keys) => {
                    let listed = match keys.len() {
                        0 => "no key yet".to_owned(),
                        1 => format!("1 key: {}", key_list(&keys)),
                        n => format!("{n} keys: {}", key_list(&keys)),
                    };
                    r.ok(
                        Some(t),
                        "IAM user",
                        format!("'{user}' exists with {listed}"),
                    );
                    Some(keys)
                }
                Err(e) if e.kind == PortErrorKind::NotFound => {
                    r.failed(
                        Some(t),
                        "IAM user",
                        exit::USAGE,
                        format!(
                            "there is no IAM user '{user}' in account {}: correct target.iam_user, or use credentials of the user's account",
                            c.account
                        ),
                    );
                    None
                }
                Err(e) => {
                    r.failed(Some(t), "IAM user", code_of(&e), e.message);
                    None
                }
            };
            check_secret(t, aws, r).await;
            keys
        }
    };
    match ado {
        Some(ado) => {
            for e in &t.endpoints {
                check_connection(t, e, ado, aws, keys.as_deref(), r).await;
            }
        }
        None => r.not_checked(
            Some(t),
            "connections",
            format!(
                "{} service connection(s) not checked: there is no PAT that {} accepts (see above)",
                t.endpoints.len(),
                t.organization
            ),
        ),
    }
}

async fn check_secret(t: &Target, aws: &AwsPorts, r: &mut Report) {
    let name = &t.secret;
    let versions = match aws.secrets.versions(name).await {
        Ok(v) => v,
        Err(e) => return r.failed(Some(t), "secret", code_of(&e), e.message),
    };
    if versions.is_none() {
        return r.ok(
            Some(t),
            "secret",
            format!("'{name}' does not exist yet: the first rotation creates it"),
        );
    }
    let current = match aws.secrets.read(name, Stage::Current).await {
        Ok(v) => v,
        Err(e) => return r.failed(Some(t), "secret", code_of(&e), e.message),
    };
    let Some((_, value)) = current else {
        return r.ok(
            Some(t),
            "secret",
            format!("'{name}' exists without a value: the first rotation writes one"),
        );
    };
    match secret_value::classify(&value) {
        Content::Key { id, user_name } if user_name == t.iam_user.as_str() => r.ok(
            Some(t),
            "secret",
            format!(
                "'{name}' holds keyrotor's JSON for {} of '{user_name}' at AWSCURRENT",
                id.masked()
            ),
        ),
        Content::Key { id, user_name } => r.failed(
            Some(t),
            "secret",
            exit::USAGE,
            format!(
                "'{name}' holds {} of IAM user '{user_name}', not of '{}': give this target a secret of its own",
                id.masked(),
                t.iam_user
            ),
        ),
        Content::Legacy => r.ok(
            Some(t),
            "secret",
            format!(
                "'{name}' holds a bare secret access key (the older design's): the first rotation writes keyrotor's JSON"
            ),
        ),
        Content::Intent { run_id, .. } => r.ok(
            Some(t),
            "secret",
            format!("'{name}' holds the intent record of run {run_id} (a rotation started)"),
        ),
        Content::Foreign => r.failed(
            Some(t),
            "secret",
            exit::USAGE,
            format!(
                "'{name}' holds something that is not an access key (neither keyrotor's JSON nor a bare secret access key): give this target a secret of its own"
            ),
        ),
    }
}

async fn check_connection(
    t: &Target,
    e: &keyrotor_core::domain::EndpointRef,
    ado: &dyn ServiceConnections,
    aws: &AwsPorts,
    keys: Option<&[KeyInfo]>,
    r: &mut Report,
) {
    let what = "connection";
    let found = match ado.find(&t.organization, e).await {
        Ok(f) => f,
        Err(err) => {
            let msg = match err.kind {
                PortErrorKind::NotFound => format!(
                    "{}: correct target.endpoints (the project, and the name or id) or create the connection",
                    err.message
                ),
                PortErrorKind::Unauthorized | PortErrorKind::Forbidden => format!(
                    "{e}: the PAT may not read it ({}): give it the scope Service Connections (Read, query & manage)",
                    err.message
                ),
                _ => err.message.clone(),
            };
            return r.failed(Some(t), what, code_of(&err), msg);
        }
    };
    let label = format!("{}/{}", found.handle.project, found.name);
    if let Some(reason) = found.unrotatable_reason() {
        return r.failed(
            Some(t),
            what,
            exit::REFUSED,
            format!("{reason}: remove it from target.endpoints"),
        );
    }
    let Some(id) = found.key_id() else {
        return r.failed(
            Some(t),
            what,
            exit::REFUSED,
            format!(
                "'{label}' holds no access key id (its username is empty or not a key id): put a key of '{}' in it, or remove it from target.endpoints",
                t.iam_user
            ),
        );
    };
    let Some(keys) = keys else {
        return r.ok(
            Some(t),
            what,
            format!(
                "'{label}' is AWS, key-based and holds {}; whose key it is was not checked (see above)",
                id.masked()
            ),
        );
    };
    match keys.iter().find(|k| k.id == id) {
        Some(k) if k.status == KeyStatus::Active => r.ok(
            Some(t),
            what,
            format!(
                "'{label}' is AWS, key-based and holds {}, a key of '{}'",
                id.masked(),
                t.iam_user
            ),
        ),
        Some(_) => r.failed(
            Some(t),
            what,
            exit::REFUSED,
            format!(
                "'{label}' holds {}, which is Inactive: its pipelines fail now; activate the key or point the connection at an active one",
                id.masked()
            ),
        ),
        None => {
            let whose = whose_key(&aws.iam, &id).await;
            r.failed(
                Some(t),
                what,
                exit::REFUSED,
                format!(
                    "'{label}' holds {}, {whose}, not a key of '{}': list the connection under the target of the key's user, or put a key of '{}' in it",
                    id.masked(),
                    t.iam_user,
                    t.iam_user
                ),
            );
        }
    }
}

/// "a key of IAM user 'X'", or why that is not known.
async fn whose_key(iam: &Arc<dyn keyrotor_core::ports::KeyStore>, id: &AccessKeyId) -> String {
    match iam.owner_of(id).await {
        Ok(Some(owner)) => format!("a key of IAM user '{}'", owner.user),
        Ok(None) => "a key this AWS account does not know".to_owned(),
        Err(_) => "a key whose user could not be looked up".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_assumed_roles_are_simulated_as_their_principal() {
        assert_eq!(
            principal_of("arn:aws:iam::123456789012:user/ops/alice").as_deref(),
            Some("arn:aws:iam::123456789012:user/ops/alice")
        );
        assert_eq!(
            principal_of("arn:aws:sts::123456789012:assumed-role/keyrotor-rotator/session-1")
                .as_deref(),
            Some("arn:aws:iam::123456789012:role/keyrotor-rotator")
        );
        assert_eq!(principal_of("arn:aws:iam::123456789012:root"), None);
        assert_eq!(principal_of("not an arn"), None);
    }

    #[test]
    fn a_rotation_is_simulated_on_the_arns_iam_authorizes() {
        let text = r#"
[ado]
organization = "https://dev.azure.com/contoso"
pat = "ssm:/azuredevops/pat"
[slack]
webhook = "env:SLACK_WEBHOOK"
[[target]]
name = "t"
iam_user = "deployer"
secret = "/azure/key"
endpoints = [ { project = "P", name = "aws" } ]
"#;
        let config = Config::parse(std::path::Path::new("k.toml"), text).unwrap();
        let caller = Caller {
            account: "123456789012".into(),
            arn: "arn:aws-cn:iam::123456789012:user/ops".into(),
        };
        let checks = needed(&config, &config.targets[0], &caller, "cn-north-1");
        let on = |action: &str| {
            checks
                .iter()
                .find(|(a, _)| a == action)
                .map(|(_, r)| r.as_str())
                .unwrap_or_else(|| panic!("{action} is simulated: {checks:?}"))
        };
        assert_eq!(
            on("iam:CreateAccessKey"),
            "arn:aws-cn:iam::123456789012:user/deployer"
        );
        assert_eq!(
            on("secretsmanager:PutSecretValue"),
            "arn:aws-cn:secretsmanager:cn-north-1:123456789012:secret:/azure/key-AbCdEf"
        );
        assert_eq!(
            on("ssm:GetParameter"),
            "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/azuredevops/pat"
        );
        assert_eq!(
            checks
                .iter()
                .filter(|(a, _)| a == "ssm:GetParameter")
                .count(),
            1,
            "the webhook is in the environment: no parameter to read"
        );
    }

    #[test]
    fn the_most_serious_failure_sets_the_exit_code() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), exit::OK);
        r.not_checked(None, "a", "x".into());
        assert_eq!(r.exit_code(), exit::OK, "not checked does not fail");
        r.failed(None, "b", exit::NOTIFY_FAILED, "x".into());
        assert_eq!(r.exit_code(), exit::NOTIFY_FAILED);
        r.failed(None, "c", exit::USAGE, "x".into());
        assert_eq!(r.exit_code(), exit::USAGE);
        r.failed(None, "d", exit::REFUSED, "x".into());
        assert_eq!(r.exit_code(), exit::REFUSED);
        r.failed(None, "e", exit::FAILED, "x".into());
        r.failed(None, "f", exit::USAGE, "x".into());
        assert_eq!(r.exit_code(), exit::FAILED);
    }
}
