//! Domain values. Each is built only by parsing, so an invalid one cannot exist past the edge.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a raw string was not accepted as a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

macro_rules! string_newtype_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                <$t>::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
        impl FromStr for $t {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                <$t>::parse(s)
            }
        }
    };
}

/// An IAM access key id such as `AKIAIOSFODNN7EXAMPLE`.
///
/// Not a secret, but shown masked (`AKIA…MPLE`) everywhere a person reads it: `Display`
/// and `Debug` mask, [`AccessKeyId::as_str`] gives the full id for API calls and payloads.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccessKeyId(String);

impl AccessKeyId {
    /// Parses an access key id: 16 to 128 upper-case letters and digits.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok_len = (16..=128).contains(&raw.len());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !ok_len || !ok_chars {
            return err("an access key id is 16 to 128 upper-case letters and digits");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The full id, for API calls and Step Functions payloads (never for people).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The masked form people see: first four and last four characters.
    pub fn masked(&self) -> String {
        let n = self.0.len();
        format!("{}…{}", &self.0[..4], &self.0[n - 4..])
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessKeyId({})", self.masked())
    }
}
string_newtype_serde!(AccessKeyId);

/// Masks anything that looks like an access key id inside free text (an error message from a
/// service, say), so that no full key id reaches a person.
pub fn mask_key_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let starts = text[i..].starts_with("AKIA") || text[i..].starts_with("ASIA");
        if starts {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit()))
                .map_or(text.len(), |e| i + e);
            if let Ok(id) = AccessKeyId::parse(&text[i..end]) {
                out.push_str(&id.masked());
                i = end;
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

macro_rules! plain_newtype {
    ($(#[$m:meta])* $t:ident, $check:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $t(String);
        impl $t {
            /// Parses the raw value, refusing what the service would refuse.
            pub fn parse(raw: &str) -> Result<Self, ParseError> {
                let check: fn(&str) -> Result<(), ParseError> = $check;
                check(raw)?;
                Ok(Self(raw.to_owned()))
            }
            /// The value as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        string_newtype_serde!($t);
    };
}

plain_newtype!(
    /// An IAM user name: 1 to 64 of letters, digits and `+=,.@_-`.
    IamUserName,
    |raw| {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
        if ok { Ok(()) } else { err("an IAM user name is 1 to 64 letters, digits or +=,.@_-") }
    }
);

plain_newtype!(
    /// A Secrets Manager secret, by name or ARN.
    SecretName,
    |raw| {
        let ok = (1..=2048).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-:".contains(c));
        if ok { Ok(()) } else { err("a secret name is letters, digits and /_+=.@- (or an ARN)") }
    }
);

plain_newtype!(
    /// The name of a configured target (unique within a config).
    TargetName,
    |raw| {
        let ok = (1..=80).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if ok { Ok(()) } else { err("a target name is 1 to 80 letters, digits, '_', '-' or '.'") }
    }
);

plain_newtype!(
    /// An Azure DevOps project name (or id).
    ProjectName,
    |raw| {
        let ok = !raw.trim().is_empty()
            && raw.len() <= 64
            && !raw.chars().any(|c| c.is_control() || "/\\?#%&:*<>|\"".contains(c));
        if ok { Ok(()) } else { err("a project name is 1 to 64 characters without / \\ ? # % & : * < > | \"") }
    }
);

/// An Azure DevOps organization URL, such as `https://dev.azure.com/contoso`.
///
/// Always https, except plain http to a loopback host (tests, the sandbox). Stored without a
/// trailing slash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OrgUrl(String);

impl OrgUrl {
    /// Parses an organization URL.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        parse_url(raw)?;
        Ok(Self(raw.trim_end_matches('/').to_owned()))
    }
    /// The URL without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl fmt::Display for OrgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype_serde!(OrgUrl);

/// Checks that `raw` is an https URL, or an http URL to a loopback host.
pub fn parse_url(raw: &str) -> Result<(), ParseError> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| ParseError(format!("'{raw}' is not a URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return err(format!("'{raw}' has no host (or carries credentials)"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => err(format!(
            "'{raw}' uses plain http: only https is allowed, except to a loopback host"
        )),
        _ => err(format!("'{raw}' is not an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where a secret value lives. Never the value itself: a literal is refused.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SecretRef {
    /// An SSM Parameter Store parameter (SecureString), `ssm:/path`.
    Ssm(String),
    /// A Secrets Manager secret (its AWSCURRENT value), `secretsmanager:name-or-arn`.
    SecretsManager(String),
    /// An environment variable, `env:NAME`.
    Env(String),
}

impl SecretRef {
    /// Parses `ssm:/path`, `secretsmanager:NAME` or `env:VAR`. Anything else is taken for a
    /// literal secret and refused, without echoing it.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let literal = || {
            ParseError(
                "a secret must be a reference (ssm:/path, secretsmanager:NAME or env:VAR), \
                 never the secret itself"
                    .into(),
            )
        };
        let (kind, rest) = raw.split_once(':').ok_or_else(literal)?;
        if rest.is_empty() {
            return err(format!("the {kind}: reference names nothing"));
        }
        match kind {
            "ssm" if rest.starts_with('/') || !rest.contains('/') => Ok(Self::Ssm(rest.into())),
            "secretsmanager" => Ok(Self::SecretsManager(rest.into())),
            "env" if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Self::Env(rest.into()))
            }
            _ => Err(literal()),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ssm(p) => write!(f, "ssm:{p}"),
            Self::SecretsManager(n) => write!(f, "secretsmanager:{n}"),
            Self::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// How a configured service connection is found.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct EndpointRef {
    /// The project the connection is looked up in.
    pub project: ProjectName,
    /// By name or by id.
    pub by: EndpointSelector,
}

/// By name or by id.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointSelector {
    /// The connection's name in the project.
    Name(String),
    /// The connection's id (a GUID).
    Id(String),
}

impl fmt::Display for EndpointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.by {
            EndpointSelector::Name(n) => write!(f, "{}/{}", self.project, n),
            EndpointSelector::Id(id) => write!(f, "{}/id:{}", self.project, id),
        }
    }
}

/// The status of an IAM access key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum KeyStatus {
    /// Signs requests.
    Active,
    /// Kept but refused by AWS.
    Inactive,
}

impl fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "Active",
            Self::Inactive => "Inactive",
        })
    }
}

/// A run's id: names one rotation attempt, doubles as the `ClientRequestToken` of the secret
/// version it writes (and as the Step Functions execution name).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct RunId(String);

impl RunId {
    /// A fresh random run id (a UUID v4: 36 characters, as `ClientRequestToken` wants 32-64).
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
    /// Parses a run id given from outside (an execution name): 1 to 64 of `[A-Za-z0-9_-]`.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c));
        if ok {
            Ok(Self(raw.into()))
        } else {
            err("a run id is 1 to 64 of A-Z a-z 0-9 - _")
        }
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A `ClientRequestToken` derived from the run id for one purpose (32 to 64 characters).
    pub fn token(&self, purpose: &str) -> String {
        let mut t = format!("{}-{}", self.0, purpose);
        while t.len() < 32 {
            t.push('0');
        }
        t.truncate(64);
        t
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_masked_in_display_and_debug() {
        let id = AccessKeyId::parse("AKIAIOSFODNN7EXAMPLE").unwrap();
        assert_eq!(id.to_string(), "AKIA…MPLE");
        assert_eq!(format!("{id:?}"), "AccessKeyId(AKIA…MPLE)");
        assert_eq!(id.as_str(), "AKIAIOSFODNN7EXAMPLE");
    }

    #[test]
    fn lower_case_or_short_key_ids_are_rejected() {
        assert!(AccessKeyId::parse("akiaiosfodnn7example").is_err());
        assert!(AccessKeyId::parse("AKIA123").is_err());
    }

    #[test]
    fn key_ids_inside_free_text_are_masked() {
        let text = "key AKIAIOSFODNN7EXAMPLE is gone; AKIA is a prefix";
        assert_eq!(
            mask_key_ids(text),
            "key AKIA…MPLE is gone; AKIA is a prefix"
        );
    }

    #[test]
    fn https_is_required_except_on_loopback() {
        assert!(OrgUrl::parse("https://dev.azure.com/contoso").is_ok());
        assert!(OrgUrl::parse("http://127.0.0.1:8080/contoso").is_ok());
        assert!(OrgUrl::parse("http://[::1]:8080/contoso").is_ok());
        assert!(OrgUrl::parse("http://localhost/contoso").is_ok());
        assert!(OrgUrl::parse("http://dev.azure.com/contoso").is_err());
        assert!(OrgUrl::parse("http://127.0.0.1.evil.com/x").is_err());
        assert!(OrgUrl::parse("ftp://x").is_err());
        assert!(OrgUrl::parse("dev.azure.com").is_err());
    }

    #[test]
    fn trailing_slash_of_an_org_url_is_dropped() {
        let url = OrgUrl::parse("https://dev.azure.com/contoso/").unwrap();
        assert_eq!(url.as_str(), "https://dev.azure.com/contoso");
    }

    #[test]
    fn literal_secrets_are_refused_without_being_echoed() {
        let e = SecretRef::parse("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").unwrap_err();
        assert!(!e.0.contains("wJalr"), "{e}");
        let e = SecretRef::parse("hunter2:abc/def").unwrap_err();
        assert!(!e.0.contains("hunter2"));
        assert_eq!(
            SecretRef::parse("ssm:/a/b").unwrap(),
            SecretRef::Ssm("/a/b".into())
        );
        assert_eq!(
            SecretRef::parse("env:PAT").unwrap(),
            SecretRef::Env("PAT".into())
        );
        assert_eq!(
            SecretRef::parse("secretsmanager:x/y").unwrap(),
            SecretRef::SecretsManager("x/y".into())
        );
    }

    #[test]
    fn iam_user_names_follow_iam_rules() {
        assert!(IamUserName::parse("azure-devops-pipeline").is_ok());
        assert!(IamUserName::parse("").is_err());
        assert!(IamUserName::parse("a b").is_err());
        assert!(IamUserName::parse(&"a".repeat(65)).is_err());
    }

    #[test]
    fn run_tokens_fit_client_request_token_bounds() {
        let run = RunId::parse("x").unwrap();
        assert_eq!(run.token("key").len(), 32);
        let run = RunId::new();
        let t = run.token("intent");
        assert!((32..=64).contains(&t.len()));
    }
}
