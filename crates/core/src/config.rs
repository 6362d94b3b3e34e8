//! The configuration file (TOML), parsed once into domain values.
//!
//! Every error names the file, the line and the field: `keyrotor.toml:14: target[0].secret:
//! …`. Secrets are references (`ssm:`, `secretsmanager:`, `env:`); a literal is refused.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::domain::{
    EndpointId, EndpointRef, EndpointSelector, IamUserName, OrgUrl, ProjectName, SecretName,
    SecretRef, TargetName,
};

/// A configuration error: where, which field, what is wrong (one sentence).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The field, dotted (`target[1].endpoints[0].project`), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The rotation policy. Defaults as documented in the README.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A key younger than this is not rotated again (unless forced).
    pub min_key_age: Duration,
    /// How long to wait for IAM to accept a new key.
    pub verify_timeout: Duration,
    /// Successes in a row that count as propagated.
    pub verify_consecutive: u32,
    /// Pause between verification attempts.
    pub verify_interval: Duration,
    /// How long the old key stays Inactive before it is deleted.
    pub delete_old_key_after: Duration,
    /// How long the intent record written before `CreateAccessKey` holds off other runs.
    pub intent_lease: Duration,
    /// How long a run owns a rotation from `create` on: another run stands aside until then,
    /// and takes the rotation over only after it.
    pub owner_lease: Duration,
    /// How long the old key stays Active after every connection holds the new one, so that
    /// pipeline jobs that started before the push (the agent got the old key when the job
    /// started) can finish. `0` retires at once.
    pub drain: Duration,
    /// How many targets the CLI rotates at once.
    pub concurrency: usize,
    /// Whether AWS service connections of the organization that hold the old key but are not in
    /// the target's config are updated in place too (opt-in). Off: such a connection keeps the
    /// old key Active, and the run says which connection and what to do.
    pub update_unlisted_connections: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_key_age: Duration::from_secs(6 * 24 * 3600),
            verify_timeout: Duration::from_secs(120),
            verify_consecutive: 3,
            verify_interval: Duration::from_secs(2),
            delete_old_key_after: Duration::from_secs(3 * 24 * 3600),
            intent_lease: Duration::from_secs(300),
            owner_lease: Duration::from_secs(30 * 60),
            drain: Duration::from_secs(60 * 60),
            concurrency: 4,
            update_unlisted_connections: false,
        }
    }
}

/// One IAM user, its secret and the service connections that hold its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Unique name.
    pub name: TargetName,
    /// The IAM user whose key rotates.
    pub iam_user: IamUserName,
    /// The Secrets Manager secret that keeps the key.
    pub secret: SecretName,
    /// The organization its endpoints live in.
    pub organization: OrgUrl,
    /// The service connections that use the key.
    pub endpoints: Vec<EndpointRef>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// AWS region, when set (else the usual AWS environment).
    pub aws_region: Option<String>,
    /// The default organization.
    pub organization: OrgUrl,
    /// Where the PAT is.
    pub pat: SecretRef,
    /// Where the Slack webhook URL is, when Slack is configured.
    pub slack_webhook: Option<SecretRef>,
    /// The policy.
    pub policy: Policy,
    /// The targets, in file order.
    pub targets: Vec<Target>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    aws: RawAws,
    ado: RawAdo,
    slack: Option<RawSlack>,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdo {
    organization: Spanned<String>,
    pat: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlack {
    webhook: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    min_key_age: Option<Spanned<String>>,
    verify_timeout: Option<Spanned<String>>,
    verify_consecutive: Option<Spanned<i64>>,
    verify_interval: Option<Spanned<String>>,
    delete_old_key_after: Option<Spanned<String>>,
    intent_lease: Option<Spanned<String>>,
    owner_lease: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    update_unlisted_connections: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    iam_user: Spanned<String>,
    secret: Spanned<String>,
    endpoints: Spanned<Vec<RawEndpoint>>,
    organization: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    project: Spanned<String>,
    name: Option<Spanned<String>>,
    id: Option<Spanned<String>>,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn error(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: span.map(|s| self.line_of(s)),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    fn parse<T, E: fmt::Display>(
        &self,
        raw: &Spanned<String>,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, ConfigError> {
        parse(raw.get_ref()).map_err(|e| self.error(Some(raw.span()), field, e.to_string()))
    }

    fn duration(
        &self,
        raw: &Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match raw {
            None => Ok(default),
            Some(raw) => self.parse(raw, field, |s| {
                humantime::parse_duration(s).map_err(|_| {
                    format!("'{s}' is not a duration (write it like \"6d\", \"120s\" or \"90m\")")
                })
            }),
        }
    }

    fn flag(
        &self,
        raw: &Option<Spanned<toml::Value>>,
        field: &str,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match raw {
            None => Ok(default),
            Some(v) => v.get_ref().as_bool().ok_or_else(|| {
                self.error(
                    Some(v.span()),
                    field,
                    format!("{} is not true or false", v.get_ref()),
                )
            }),
        }
    }

    fn count(
        &self,
        raw: &Option<Spanned<i64>>,
        field: &str,
        range: Range<i64>,
        default: i64,
    ) -> Result<i64, ConfigError> {
        match raw {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.error(
                Some(v.span()),
                field,
                format!(
                    "{} is out of range: it must be from {} to {}",
                    v.get_ref(),
                    range.start,
                    range.end - 1
                ),
            )),
        }
    }
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            field: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `file` names it in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let cx = Ctx { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| cx.line_of(s)),
            field: None,
            message: e.message().trim().replace('\n', " "),
        })?;

        let aws_region = raw.aws.region.map(|r| r.into_inner());
        let organization = cx.parse(&raw.ado.organization, "ado.organization", OrgUrl::parse)?;
        let pat = cx.parse(&raw.ado.pat, "ado.pat", SecretRef::parse)?;
        let slack_webhook = match &raw.slack {
            Some(s) => Some(cx.parse(&s.webhook, "slack.webhook", SecretRef::parse)?),
            None => None,
        };

        let p = &raw.policy;
        let d = Policy::default();
        let policy = Policy {
            min_key_age: cx.duration(&p.min_key_age, "policy.min_key_age", d.min_key_age)?,
            verify_timeout: cx.duration(
                &p.verify_timeout,
                "policy.verify_timeout",
                d.verify_timeout,
            )?,
            verify_consecutive: cx.count(
                &p.verify_consecutive,
                "policy.verify_consecutive",
                1..101,
                d.verify_consecutive.into(),
            )? as u32,
            verify_interval: cx.duration(
                &p.verify_interval,
                "policy.verify_interval",
                d.verify_interval,
            )?,
            delete_old_key_after: cx.duration(
                &p.delete_old_key_after,
                "policy.delete_old_key_after",
                d.delete_old_key_after,
            )?,
            intent_lease: cx.duration(&p.intent_lease, "policy.intent_lease", d.intent_lease)?,
            owner_lease: cx.duration(&p.owner_lease, "policy.owner_lease", d.owner_lease)?,
            drain: cx.duration(&p.drain, "policy.drain", d.drain)?,
            concurrency: cx.count(
                &p.concurrency,
                "policy.concurrency",
                1..65,
                d.concurrency as i64,
            )? as usize,
            update_unlisted_connections: cx.flag(
                &p.update_unlisted_connections,
                "policy.update_unlisted_connections",
                d.update_unlisted_connections,
            )?,
        };

        let mut targets = Vec::with_capacity(raw.target.len());
        let mut names = HashSet::new();
        for (i, t) in raw.target.iter().enumerate() {
            let f = |name: &str| format!("target[{i}].{name}");
            let name = cx.parse(&t.name, &f("name"), TargetName::parse)?;
            if !names.insert(name.clone()) {
                return Err(cx.error(
                    Some(t.name.span()),
                    &f("name"),
                    format!("the target name '{name}' is used twice"),
                ));
            }
            let iam_user = cx.parse(&t.iam_user, &f("iam_user"), IamUserName::parse)?;
            // IAM user names are unique ignoring case: `Bob` and `bob` are one user.
            let same_user =
                |o: &&Target| o.iam_user.as_str().eq_ignore_ascii_case(iam_user.as_str());
            if let Some(other) = targets.iter().find(same_user) {
                let spelled = if other.iam_user == iam_user {
                    String::new()
                } else {
                    format!(
                        " ('{}' in '{}'; IAM user names ignore case)",
                        other.iam_user, other.name
                    )
                };
                return Err(cx.error(
                    Some(t.iam_user.span()),
                    &f("iam_user"),
                    format!(
                        "targets '{}' and '{name}' both rotate the IAM user '{iam_user}'{spelled}: \
                         give each user one target, or they undo each other's rotations",
                        other.name
                    ),
                ));
            }
            let secret = cx.parse(&t.secret, &f("secret"), SecretName::parse)?;
            let region = aws_region.as_deref();
            if let Some(other) = targets
                .iter()
                .find(|o| same_secret(&o.secret, &secret, region))
            {
                let spelled = if other.secret == secret {
                    String::new()
                } else {
                    format!(" ('{}' in '{}')", other.secret, other.name)
                };
                return Err(cx.error(
                    Some(t.secret.span()),
                    &f("secret"),
                    format!(
                        "targets '{}' and '{name}' both keep their key in the secret '{secret}'{spelled}: \
                         give each secret one target, or they overwrite each other's key",
                        other.name
                    ),
                ));
            }
            let organization = match &t.organization {
                Some(o) => cx.parse(o, &f("organization"), OrgUrl::parse)?,
                None => organization.clone(),
            };
            if t.endpoints.get_ref().is_empty() {
                return Err(cx.error(
                    Some(t.endpoints.span()),
                    &f("endpoints"),
                    "a target needs at least one service connection",
                ));
            }
            let mut endpoints = Vec::new();
            for (j, e) in t.endpoints.get_ref().iter().enumerate() {
                let fe = |name: &str| format!("target[{i}].endpoints[{j}].{name}");
                let project = cx.parse(&e.project, &fe("project"), ProjectName::parse)?;
                let by = match (&e.name, &e.id) {
                    (Some(n), None) => EndpointSelector::Name(cx.parse(n, &fe("name"), |s| {
                        if s.trim().is_empty() {
                            Err("the name is empty")
                        } else {
                            Ok(s.to_owned())
                        }
                    })?),
                    (None, Some(id)) => EndpointSelector::Id(cx.parse(id, &fe("id"), |s| {
                        let ok =
                            s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
                        if ok {
                            EndpointId::parse(&s.to_ascii_lowercase())
                                .map_err(|_| "an endpoint id is a GUID")
                        } else {
                            Err("an endpoint id is a GUID")
                        }
                    })?),
                    _ => {
                        return Err(cx.error(
                            Some(e.project.span()),
                            &format!("target[{i}].endpoints[{j}]"),
                            "give exactly one of name or id",
                        ));
                    }
                };
                let r = EndpointRef { project, by };
                if endpoints.contains(&r) {
                    return Err(cx.error(
                        Some(e.project.span()),
                        &format!("target[{i}].endpoints[{j}]"),
                        format!("the service connection {r} is listed twice"),
                    ));
                }
                endpoints.push(r);
            }
            targets.push(Target {
                name,
                iam_user,
                secret,
                organization,
                endpoints,
            });
        }
        if targets.is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                field: Some("target".into()),
                message: "the config has no [[target]]".into(),
            });
        }
        Ok(Self {
            aws_region,
            organization,
            pat,
            slack_webhook,
            policy,
            targets,
        })
    }

    /// The targets named (all when `names` is empty). An unknown name is an error.
    pub fn select(&self, names: &[String]) -> Result<Vec<Target>, String> {
        if names.is_empty() {
            return Ok(self.targets.clone());
        }
        names
            .iter()
            .map(|n| {
                self.targets
                    .iter()
                    .find(|t| t.name.as_str() == n)
                    .cloned()
                    .ok_or_else(|| format!("there is no target named '{n}' in the config"))
            })
            .collect()
    }
}

/// Whether two configured secrets are the same secret, as far as the config alone can tell.
///
/// A chosen, conservative rule (a missed match only leaves things as they were; a false one
/// refuses a valid config):
///
/// - Names compare case-sensitively, as given (as Secrets Manager does).
/// - A `secretsmanager` ARN (`arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME-XXXXXX`)
///   stands for `NAME`: a last `-` and six letters or digits are Secrets Manager's random
///   suffix. Without them it is a partial ARN and the whole rest is the name. (A partial ARN
///   of a name that itself ends in `-` and six such characters is read as a full ARN, the
///   ambiguity AWS itself warns of.)
/// - Two such ARNs are one secret when region, account and name are the same.
/// - Such an ARN and a bare name are one secret when the names are the same and the ARN's
///   region is `aws.region`, or `aws.region` is unset (the region then comes from the
///   environment, which the config cannot see). The account is not compared: a bare name is
///   in the caller's account, which the config cannot see either.
/// - Any other ARN is compared as written, like a name.
fn same_secret(a: &SecretName, b: &SecretName, region: Option<&str>) -> bool {
    match (SecretId::of(a.as_str()), SecretId::of(b.as_str())) {
        (SecretId::Name(x), SecretId::Name(y)) => x == y,
        (SecretId::Arn(x), SecretId::Arn(y)) => x == y,
        (SecretId::Arn(arn), SecretId::Name(name)) | (SecretId::Name(name), SecretId::Arn(arn)) => {
            arn.name == name && region.is_none_or(|r| r == arn.region)
        }
    }
}

/// A secret as the config names it: see [`same_secret`].
enum SecretId<'a> {
    /// A name (or an ARN that is not a Secrets Manager secret's).
    Name(&'a str),
    /// A Secrets Manager secret's ARN.
    Arn(SecretArn<'a>),
}

/// What identifies a secret in its ARN.
#[derive(PartialEq, Eq)]
struct SecretArn<'a> {
    region: &'a str,
    account: &'a str,
    name: &'a str,
}

impl<'a> SecretId<'a> {
    fn of(raw: &'a str) -> Self {
        let parts: Vec<&str> = raw.splitn(7, ':').collect();
        let [
            "arn",
            _partition,
            "secretsmanager",
            region,
            account,
            "secret",
            rest,
        ] = parts[..]
        else {
            return Self::Name(raw);
        };
        let name = match rest.rsplit_once('-') {
            Some((name, suffix))
                if !name.is_empty()
                    && suffix.len() == 6
                    && suffix.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                name
            }
            _ => rest,
        };
        Self::Arn(SecretArn {
            region,
            account,
            name,
        })
    }
}

/// A commented example config, as `keyrotor init` prints it.
pub const EXAMPLE: &str = include_str!("example.toml");

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
