//! `keyrotor migrate-oidc`, the pure half: what a service connection's OIDC token looks like to
//! AWS, the trust policy a role needs to accept it, whether a trust policy accepts it, the
//! permissions an IAM user has (to give a role the same), and the durable, secret-free record of
//! a migration. No I/O here: the CLI observes, [`plan`] decides, the adapters act.
//!
//! The facts (`shared/ado/SERVICE-ENDPOINTS.md`, "OIDC"): the issuer is
//! `https://vstoken.dev.azure.com/{organization id}`, the audience `api://AzureADTokenExchange`,
//! the subject `sc://{organization}/{project}/{connection name}` (one per project a shared
//! connection is in, with its name there). A role trusts it with `Principal.Federated` = the
//! provider's ARN, `sts:AssumeRoleWithWebIdentity`, and `StringEquals` on `{issuer}:aud` and
//! `{issuer}:sub` (the issuer without its scheme).

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::{OrgUrl, TargetName};

/// The audience (client id) of Azure DevOps' OIDC tokens.
pub const AUDIENCE: &str = "api://AzureADTokenExchange";
/// The host of Azure DevOps' OIDC issuer.
pub const ISSUER_HOST: &str = "vstoken.dev.azure.com";
/// The `Sid` prefix of the trust statement keyrotor writes (one per target).
const SID_PREFIX: &str = "KeyrotorAzureDevOpsOidc";

/// The issuer without its scheme, as IAM names the provider and its condition keys:
/// `vstoken.dev.azure.com/{organization id}`.
pub fn issuer_path(org_id: &str) -> String {
    format!("{ISSUER_HOST}/{org_id}")
}

/// The organization's name in its URL: the last path segment (`https://dev.azure.com/contoso`,
/// also an emulator's `http://127.0.0.1:PORT/contoso`), else the first label of a
/// `{org}.visualstudio.com` host.
pub fn organization_name(org: &OrgUrl) -> String {
    let rest = org.as_str().split_once("://").map_or("", |(_, r)| r);
    let mut parts = rest.split('/').filter(|s| !s.is_empty());
    let host = parts.next().unwrap_or_default();
    match parts.next_back() {
        Some(last) => last.to_owned(),
        None => host.split('.').next().unwrap_or_default().to_owned(),
    }
}

/// The token subject of a connection in one project: `sc://{org}/{project}/{name}`.
pub fn subject(org_name: &str, project: &str, connection: &str) -> String {
    format!("sc://{org_name}/{project}/{connection}")
}

/// The name of the role keyrotor creates for a target (IAM allows 64 characters).
pub fn role_name(target: &TargetName) -> String {
    let mut name = format!("keyrotor-oidc-{target}");
    name.truncate(64);
    name
}

/// The `Sid` of the statement keyrotor adds for a target (letters and digits only).
pub fn statement_id(target: &TargetName) -> String {
    let clean: String = target
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{SID_PREFIX}{clean}")
}

/// The trust statement that lets these subjects in through the organization's provider.
pub fn trust_statement(sid: &str, provider_arn: &str, issuer: &str, subjects: &[String]) -> Value {
    let subjects: BTreeSet<&String> = subjects.iter().collect();
    json!({
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Federated": provider_arn},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {
            format!("{issuer}:aud"): AUDIENCE,
            format!("{issuer}:sub"): subjects.into_iter().collect::<Vec<_>>(),
        }}
    })
}

/// A whole trust policy of one statement: what a role keyrotor creates trusts, exactly.
pub fn trust_policy(sid: &str, provider_arn: &str, issuer: &str, subjects: &[String]) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [trust_statement(sid, provider_arn, issuer, subjects)]
    })
}

/// An existing trust policy with keyrotor's statement `sid` added (or replaced); every other
/// statement kept as it was. The subjects a previous statement of the same `sid` allowed are
/// kept too, so that a rerun never takes a subject away.
pub fn with_statement(
    existing: &Value,
    sid: &str,
    provider_arn: &str,
    issuer: &str,
    subjects: &[String],
) -> Value {
    let mut doc = existing.clone();
    if !doc.is_object() {
        doc = json!({"Version": "2012-10-17"});
    }
    let mut statements = match doc.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let mut all: Vec<String> = subjects.to_vec();
    statements.retain(|s| {
        if s.get("Sid").and_then(Value::as_str) != Some(sid) {
            return true;
        }
        let key = format!("{issuer}:sub");
        all.extend(strings(
            s.pointer("/Condition/StringEquals")
                .and_then(|c| c.get(&key)),
        ));
        false
    });
    statements.push(trust_statement(sid, provider_arn, issuer, &all));
    doc["Statement"] = Value::Array(statements);
    doc
}

/// A string or a list of strings (IAM policy grammar) as a list.
fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// `*` and `?` wildcards, as IAM's `StringLike` matches them.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether a statement's conditions hold for a token with this audience and subject. Only
/// `StringEquals` and `StringLike` (and their `IgnoreCase` forms) on the issuer's `aud`, `sub`
/// (and `amr`, ignored) are understood; any other operator or key makes the statement count as
/// not matching, so an unusual policy is reported instead of trusted.
fn conditions_hold(statement: &Value, issuer: &str, subject: &str) -> bool {
    let Some(conds) = statement.get("Condition") else {
        return true;
    };
    let Some(conds) = conds.as_object() else {
        return false;
    };
    conds.iter().all(|(op, block)| {
        let Some(block) = block.as_object() else {
            return false;
        };
        block.iter().all(|(key, wanted)| {
            let actual = if key.eq_ignore_ascii_case(&format!("{issuer}:aud")) {
                AUDIENCE
            } else if key.eq_ignore_ascii_case(&format!("{issuer}:sub")) {
                subject
            } else {
                return false;
            };
            let wanted = strings(Some(wanted));
            match op.as_str() {
                "StringEquals" => wanted.iter().any(|w| w == actual),
                "StringEqualsIgnoreCase" => wanted.iter().any(|w| w.eq_ignore_ascii_case(actual)),
                "StringLike" => wanted.iter().any(|w| glob(w, actual)),
                _ => false,
            }
        })
    })
}

/// Whether a statement names the provider as its federated principal and allows (or denies)
/// `sts:AssumeRoleWithWebIdentity`.
fn applies(statement: &Value, provider_arn: &str) -> bool {
    let principal = statement
        .pointer("/Principal/Federated")
        .map(|p| strings(Some(p)))
        .unwrap_or_default();
    let action = strings(statement.get("Action"));
    principal.iter().any(|p| p == provider_arn)
        && action.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case("sts:*")
                || a.eq_ignore_ascii_case("sts:AssumeRoleWithWebIdentity")
        })
}

/// Whether a role's trust policy lets a token of this subject (and Azure DevOps' audience) from
/// the provider assume it: some Allow statement applies and holds, and no Deny statement does.
pub fn trust_allows(trust: &Value, provider_arn: &str, issuer: &str, subject: &str) -> bool {
    let statements = match trust.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => return false,
    };
    let matching = |effect: &str| {
        statements.iter().any(|s| {
            s.get("Effect").and_then(Value::as_str) == Some(effect)
                && applies(s, provider_arn)
                && conditions_hold(s, issuer, subject)
        })
    };
    matching("Allow") && !matching("Deny")
}

/// Reads a policy document as IAM returns it: JSON, or URL-encoded JSON (RFC 3986), which is
/// how IAM answers `GetRole`, `GetUserPolicy` and `GetPolicyVersion`.
pub fn parse_policy_document(raw: &str) -> Option<Value> {
    serde_json::from_str(raw)
        .ok()
        .or_else(|| serde_json::from_str(&percent_decode(raw)).ok())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            // Two hex digits make at most 255: the cast cannot truncate.
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An inline policy: its name and document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InlinePolicy {
    /// Its name.
    pub name: String,
    /// The document.
    pub document: Value,
}

/// Where a permission of the user comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// Attached to (or put on) the user.
    User,
    /// Through this group.
    Group(String),
}

/// What an IAM user may do: its managed policies and inline policies, and its groups', within
/// its permissions boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Managed policy ARNs, with where they come from.
    pub managed: Vec<(String, Source)>,
    /// Inline policies, with where they come from.
    pub inline: Vec<(InlinePolicy, Source)>,
    /// The document (default version) of each managed policy, by ARN: read to find what a role
    /// cannot carry ([`uncarried`]), never copied (the role gets the ARN attached).
    pub managed_documents: Vec<(String, Value)>,
    /// The user's permissions boundary (a managed policy's ARN), if it has one. Without it on the
    /// role, the role could do more than the user ever could.
    pub boundary: Option<String>,
}

/// What a role must get to have the user's effective permissions: each managed policy attached
/// once, each inline policy put under a name unique on the role (a group's as
/// `{group}.{name}`), and the user's permissions boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePermissions {
    /// Managed policy ARNs to attach, each once, sorted.
    pub managed: Vec<String>,
    /// Inline policies to put, by their name on the role.
    pub inline: Vec<InlinePolicy>,
    /// The permissions boundary the role gets (the user's).
    pub boundary: Option<String>,
}

impl Permissions {
    /// The same permissions, for a role.
    pub fn for_role(&self) -> RolePermissions {
        let managed: BTreeSet<String> = self.managed.iter().map(|(a, _)| a.clone()).collect();
        let mut inline: Vec<InlinePolicy> = self
            .inline
            .iter()
            .map(|(p, src)| {
                let mut name = match src {
                    Source::User => p.name.clone(),
                    Source::Group(g) => format!("{g}.{}", p.name),
                };
                name.truncate(128);
                InlinePolicy {
                    name,
                    document: p.document.clone(),
                }
            })
            .collect();
        inline.sort_by(|a, b| a.name.cmp(&b.name));
        inline.dedup_by(|a, b| a.name == b.name);
        RolePermissions {
            managed: managed.into_iter().collect(),
            inline,
            boundary: self.boundary.clone(),
        }
    }
}

/// The condition keys (and policy variables, `${…}`) whose value is the IAM user's own. On the
/// role they are the role session's (`aws:userid` `ROLEID:session`, `aws:PrincipalArn` the
/// role's, `aws:principaltype` `AssumedRole`, `aws:PrincipalTag/…` the role's tags) or absent
/// (`aws:username`), so a statement that uses them stops matching after the switch. Lower case;
/// a trailing `/` is a prefix.
pub const USER_KEYS: [&str; 5] = [
    "aws:username",
    "aws:userid",
    "aws:principalarn",
    "aws:principaltype",
    "aws:principaltag/",
];

fn is_user_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    USER_KEYS.iter().any(|k| match k.strip_suffix('/') {
        Some(prefix) => key.starts_with(prefix) && key.len() > k.len() - 1,
        None => key == *k,
    })
}

/// Every string of a JSON document, and every object key, depth first.
fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k);
                walk(x, out);
            }
        }
        _ => {}
    }
}

/// The user-specific keys ([`USER_KEYS`]) a policy document uses, as policy variables
/// (`${aws:username}`) or as condition keys; each once, as written.
pub fn user_specific_keys(doc: &Value) -> Vec<String> {
    let mut strings = Vec::new();
    walk(doc, &mut strings);
    let mut found = BTreeSet::new();
    for s in strings {
        if is_user_key(s) {
            found.insert(s.to_owned());
        }
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            if is_user_key(&after[..end]) {
                found.insert(format!("${{{}}}", &after[..end]));
            }
            rest = &after[end..];
        }
    }
    found.into_iter().collect()
}

/// Whether a policy document names the user: a string that is its ARN, or an ARN pattern of
/// users (`…:user/*`) that matches it. A resource policy that lets the user in that way does not
/// let the role in.
pub fn names_user(doc: &Value, user_arn: &str) -> bool {
    let mut strings = Vec::new();
    walk(doc, &mut strings);
    strings
        .iter()
        .any(|s| s.contains(":user/") && glob(s, user_arn))
}

/// What kind of resource policy names the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// The target's Secrets Manager secret (`GetResourcePolicy`).
    Secret,
    /// An IAM role of the account, by its trust policy (`ListRoles`).
    RoleTrust,
}

/// A resource policy keyrotor read, to see whether it names the user.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourcePolicy {
    /// The resource's ARN.
    pub arn: String,
    /// What it is.
    pub kind: ResourceKind,
    /// The policy.
    pub document: Value,
}

/// Something of the user's access that a role cannot carry: the plan lists each, and `--apply`
/// is refused until the person acknowledges each by its [`id`](Uncarried::id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncarried {
    /// A policy the role gets uses keys whose value is the user's ([`USER_KEYS`]).
    PolicyVariables {
        /// The policy: its name on the role (inline), or its ARN (managed).
        policy: String,
        /// The keys, as written.
        keys: Vec<String>,
    },
    /// A resource policy names the user, and so does not let the role in.
    NamesUser {
        /// The resource's ARN.
        resource: String,
        /// What it is.
        kind: ResourceKind,
    },
}

impl Uncarried {
    /// What `--acknowledge` takes: `policy-variables:{policy}` or `names-user:{resource arn}`.
    pub fn id(&self) -> String {
        match self {
            Self::PolicyVariables { policy, .. } => format!("policy-variables:{policy}"),
            Self::NamesUser { resource, .. } => format!("names-user:{resource}"),
        }
    }

    /// One sentence for people: what will stop working.
    pub fn describe(&self, user: &str) -> String {
        match self {
            Self::PolicyVariables { policy, keys } => format!(
                "policy {policy} uses {}, which on the role name the role's session instead of IAM user {user} (or nothing), so its statements with them stop matching after the switch",
                keys.join(", ")
            ),
            Self::NamesUser {
                resource,
                kind: ResourceKind::Secret,
            } => format!(
                "the resource policy of secret {resource} names IAM user {user}, and does not let the role in"
            ),
            Self::NamesUser {
                resource,
                kind: ResourceKind::RoleTrust,
            } => format!(
                "the trust policy of role {resource} names IAM user {user}: a pipeline that assumes it with the key cannot assume it from the role"
            ),
        }
    }
}

/// What a role cannot carry of the user's access: user-specific keys in the policies it gets
/// (`copied`: `permissions` goes to a role), and resource policies that name the user
/// (`switched`: some connection stops signing as the user). Resource policies of `skip` (the
/// roles of the plan itself) are not counted.
pub fn uncarried(
    permissions: Option<&RolePermissions>,
    managed_documents: &[(String, Value)],
    resource_policies: &[ResourcePolicy],
    user_arn: &str,
    skip: &[String],
) -> Vec<Uncarried> {
    let mut out = Vec::new();
    if let Some(perms) = permissions {
        for arn in &perms.managed {
            if let Some((_, doc)) = managed_documents.iter().find(|(a, _)| a == arn) {
                let keys = user_specific_keys(doc);
                if !keys.is_empty() {
                    out.push(Uncarried::PolicyVariables {
                        policy: arn.clone(),
                        keys,
                    });
                }
            }
        }
        for p in &perms.inline {
            let keys = user_specific_keys(&p.document);
            if !keys.is_empty() {
                out.push(Uncarried::PolicyVariables {
                    policy: p.name.clone(),
                    keys,
                });
            }
        }
    }
    for r in resource_policies {
        if !skip.contains(&r.arn) && names_user(&r.document, user_arn) {
            out.push(Uncarried::NamesUser {
                resource: r.arn.clone(),
                kind: r.kind,
            });
        }
    }
    out
}

/// The principals, other than the provider's web identities, that a trust policy lets assume
/// the role: every Allow statement whose principal is not only `Federated` = the provider (or
/// that uses `NotPrincipal`), shown as written. Empty: every assumption of the role is an
/// `sts:AssumeRoleWithWebIdentity` with a token of that provider, so IAM's `RoleLastUsed` after
/// the trust became so proves that a pipeline on OIDC assumed it.
pub fn other_principals(trust: &Value, provider_arn: &str) -> Vec<String> {
    let statements = match trust.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for s in statements
        .iter()
        .filter(|s| s.get("Effect").and_then(Value::as_str) == Some("Allow"))
    {
        if let Some(np) = s.get("NotPrincipal") {
            out.push(format!("NotPrincipal {np}"));
            continue;
        }
        match s.get("Principal") {
            Some(Value::Object(p)) => {
                for (kind, v) in p {
                    let names = strings(Some(v));
                    let ours = kind == "Federated"
                        && !names.is_empty()
                        && names.iter().all(|n| n.eq_ignore_ascii_case(provider_arn));
                    if !ours {
                        out.push(format!("{kind} {}", names.join(", ")));
                    }
                }
            }
            Some(other) => out.push(other.to_string()),
            None => out.push("any principal".to_owned()),
        }
    }
    out
}

/// How far a target's migration has come. Stored (secret-free) before every change a rerun or
/// a rollback must know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Connections are being switched: some may still hold the key.
    Applying,
    /// Every connection is on OIDC; the key stays Active for a rollback until `--finish`.
    Applied,
    /// Every connection is back on the key.
    RolledBack,
    /// The key is retired.
    Finished,
}

/// What a connection's authorization was before keyrotor switched it, for a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchedConnection {
    /// Its id.
    pub id: String,
    /// The project it was found in (for GET).
    pub project: String,
    /// Its name there.
    pub name: String,
    /// The role it uses on OIDC.
    pub role_arn: String,
    /// `assumeRoleArn` before the switch (`""` when unset).
    pub original_assume_role: String,
    /// `useOIDC` before the switch (`""` when unset).
    pub original_use_oidc: String,
}

/// The durable record of a target's migration (an SSM parameter). Ids, ARNs and dates only:
/// never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationRecord {
    /// The format.
    pub version: u32,
    /// The target.
    pub target: String,
    /// Where it stands.
    pub phase: Phase,
    /// The key the connections held before (full id: the record is not shown to people).
    pub key_id: String,
    /// The organization's OIDC provider.
    pub provider_arn: String,
    /// The role keyrotor created, if it created one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_role: Option<String>,
    /// Every connection switched (or about to be), with what it was before.
    pub connections: Vec<SwitchedConnection>,
    /// When the last connection was switched: uses of the key are counted from here.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::machine::time_serde"
    )]
    pub switched_at: Option<SystemTime>,
    /// Since when keyrotor knows each role's trust lets in only the provider's web identities
    /// ([`other_principals`] empty): a `RoleLastUsed` from before then may be another principal's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oidc_only: Vec<OidcOnlySince>,
}

/// A role whose trust lets in only the provider's web identities, and since when keyrotor knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OidcOnlySince {
    /// The role.
    pub role_arn: String,
    /// Since when.
    #[serde(with = "crate::machine::time_serde")]
    pub since: Option<SystemTime>,
}

impl MigrationRecord {
    /// The record's current format.
    pub const VERSION: u32 = 1;

    /// Since when keyrotor knows that `role`'s trust lets in only the provider's web identities.
    pub fn oidc_only_since(&self, role: &str) -> Option<SystemTime> {
        self.oidc_only
            .iter()
            .find(|r| r.role_arn == role)
            .and_then(|r| r.since)
    }

    /// Records that `role`'s trust lets in only the provider's web identities from `at` on, or
    /// forgets it (`None`: it lets others in).
    pub fn set_oidc_only(&mut self, role: &str, at: Option<SystemTime>) {
        self.oidc_only.retain(|r| r.role_arn != role);
        if let Some(at) = at {
            self.oidc_only.push(OidcOnlySince {
                role_arn: role.to_owned(),
                since: Some(at),
            });
        }
    }

    /// What a connection was before, if this record switched it.
    pub fn original(&self, id: &str) -> Option<&SwitchedConnection> {
        self.connections
            .iter()
            .find(|c| c.id.eq_ignore_ascii_case(id))
    }
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
mod tests;
