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

/// What may leave keyrotor as text (a step error, a Lambda diagnostic, CLI output, a Slack
/// message): access key ids masked, and any secret-shaped token (a secret access key, a PAT, a
/// Slack webhook URL) replaced by `[redacted]`, in case a service echoed one into an error.
/// Secrets never reach a message on purpose (they are `SecretString`s); this is the net under
/// every outward boundary. Whitespace is kept.
pub fn redact(text: &str) -> String {
    let masked = mask_key_ids(text);
    let mut out = String::with_capacity(masked.len());
    for piece in masked.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        out.push_str(&redact_token(word));
        out.push_str(&piece[word.len()..]);
    }
    out
}

/// A secret-shaped token: a Slack webhook URL, or 32+ characters of base64/base32 mixing
/// letter cases or digits (40 of base64 is a secret access key, 52 of base32 an Azure DevOps
/// PAT; a word people read is neither this long nor this mixed).
fn looks_secret(token: &str) -> bool {
    if token.contains("/services/") || token.contains("hooks.slack.com") {
        return true;
    }
    let charset = token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
    let lower = token.chars().any(|c| c.is_ascii_lowercase());
    let upper = token.chars().any(|c| c.is_ascii_uppercase());
    let digit = token.chars().any(|c| c.is_ascii_digit());
    let classes = [lower, upper, digit].into_iter().filter(|b| *b).count();
    token.len() >= 32 && charset && classes >= 2
}

fn redact_token(token: &str) -> String {
    let is_edge = |c: char| "'\"()[]{}<>.,;:!?`".contains(c);
    let start = token.find(|c: char| !is_edge(c)).unwrap_or(token.len());
    let end = token.rfind(|c: char| !is_edge(c)).map_or(start, |i| {
        i + token[i..].chars().next().map_or(0, char::len_utf8)
    });
    let core = &token[start..end];
    if !core.is_empty() && looks_secret(core) {
        format!("{}[redacted]{}", &token[..start], &token[end..])
    } else {
        token.to_owned()
    }
}

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
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        string_newtype_serde!($t);
    };
}

/// Whether `raw` is `len` bytes long and made of ASCII letters, digits and the characters of
/// `others`.
fn letters_digits_or(raw: &str, len: std::ops::RangeInclusive<usize>, others: &str) -> bool {
    len.contains(&raw.len())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || others.contains(c))
}

plain_newtype!(
    /// An IAM user name: 1 to 64 of letters, digits and `+=,.@_-`.
    IamUserName,
    |raw| {
        let ok = letters_digits_or(raw, 1..=64, "+=,.@_-");
        if ok { Ok(()) } else { err("an IAM user name is 1 to 64 letters, digits or +=,.@_-") }
    }
);

plain_newtype!(
    /// A Secrets Manager secret, by name or ARN.
    SecretName,
    |raw| {
        let ok = letters_digits_or(raw, 1..=2048, "/_+=.@-:");
        if ok { Ok(()) } else { err("a secret name is letters, digits and /_+=.@- (or an ARN)") }
    }
);

plain_newtype!(
    /// The name of a configured target (unique within a config).
    TargetName,
    |raw| {
        let ok = letters_digits_or(raw, 1..=80, "_-.");
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

plain_newtype!(
    /// An Azure DevOps service connection's id, as Azure DevOps gives it (a GUID).
    ///
    /// Parsed leniently: 1 to 64 characters without whitespace or control characters.
    EndpointId,
    |raw| {
        let ok = (1..=64).contains(&raw.len())
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok { Ok(()) } else { err("an endpoint id is 1 to 64 characters without whitespace") }
    }
);

plain_newtype!(
    /// A Secrets Manager version id (a version's `ClientRequestToken`: 32 to 64 characters).
    ///
    /// Parsed leniently: 1 to 64 of `[A-Za-z0-9-]`.
    SecretVersionId,
    |raw| {
        let ok = letters_digits_or(raw, 1..=64, "-");
        if ok { Ok(()) } else { err("a secret version id is 1 to 64 letters, digits or '-'") }
    }
);

plain_newtype!(
    /// An Amazon Resource Name: `arn:` and more, at most 2048 characters.
    Arn,
    |raw| {
        let ok = raw.len() > "arn:".len() && raw.len() <= 2048 && raw.starts_with("arn:");
        if ok { Ok(()) } else { err("an ARN starts with 'arn:' and is at most 2048 characters") }
    }
);

impl Arn {
    /// The IAM user an ARN names (`arn:<partition>:iam::<account>:user/<path/>name`), if it
    /// names one.
    pub fn iam_user_name(&self) -> Option<&str> {
        let mut parts = self.0.splitn(6, ':');
        let service = parts.nth(2)?;
        let resource = parts.nth(2)?;
        let name = resource.strip_prefix("user/")?.rsplit('/').next()?;
        (service == "iam" && !name.is_empty()).then_some(name)
    }
}

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
///
/// Deserializing checks the value like the config does: a name is not blank, an id is an
/// [`EndpointId`].
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "RawEndpointSelector")]
pub enum EndpointSelector {
    /// The connection's name in the project.
    Name(String),
    /// The connection's id (a GUID).
    Id(EndpointId),
}

/// [`EndpointSelector`] as it comes in, before its value is checked.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawEndpointSelector {
    Name(String),
    Id(String),
}

impl TryFrom<RawEndpointSelector> for EndpointSelector {
    type Error = ParseError;
    fn try_from(raw: RawEndpointSelector) -> Result<Self, ParseError> {
        match raw {
            RawEndpointSelector::Name(n) if n.trim().is_empty() => {
                err("a service connection name is not blank")
            }
            RawEndpointSelector::Name(n) => Ok(Self::Name(n)),
            RawEndpointSelector::Id(id) => Ok(Self::Id(EndpointId::parse(&id)?)),
        }
    }
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

/// A run's id: names one rotation attempt (the Step Functions execution name, in Lambda), and
/// derives the `ClientRequestToken`s of the secret versions the run writes ([`RunId::token`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RunId(String);

/// The longest run id: a Step Functions execution name is at most 80 characters.
pub const RUN_ID_MAX_LEN: usize = 80;

/// How many hex digits of the digest a token carries (160 bits).
const TOKEN_DIGEST_HEX: usize = 40;

/// How many characters of the purpose a token shows (only to be readable; see [`RunId::token`]).
const TOKEN_PURPOSE_MAX: usize = 16;

impl RunId {
    /// A fresh random run id (a UUID v4).
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Parses a run id given from outside (an execution name): 1 to 80 of `[A-Za-z0-9_-]`.
    ///
    /// Every Step Functions execution name made of letters, digits, `-` and `_` is accepted;
    /// the other characters execution names may hold (non-ASCII letters, `.`, …) are refused.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = letters_digits_or(raw, 1..=RUN_ID_MAX_LEN, "-_");
        if ok {
            Ok(Self(raw.into()))
        } else {
            err("a run id is 1 to 80 of A-Z a-z 0-9 - _")
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `ClientRequestToken` of the secret version this run writes for `purpose` (`"intent"`,
    /// `"key"`): `kr-<purpose>-<digest>`, 32 to 64 of `[A-Za-z0-9-]`.
    ///
    /// The digest is the first 160 bits (40 hex digits) of SHA-256 over the purpose and the
    /// whole run id, length-prefixed, so every run id works, distinct (run id, purpose) pairs
    /// give distinct tokens (short of a SHA-256 collision), and the same pair always gives the
    /// same token: a retried step reuses its token, and the intent's version id can be computed
    /// again later. The purpose shown in the token (its ASCII letters and digits, at most 16)
    /// is only there to be read; uniqueness never depends on it.
    pub fn token(&self, purpose: &str) -> SecretVersionId {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"keyrotor-token-v1\0");
        h.update((purpose.len() as u64).to_be_bytes());
        h.update(purpose.as_bytes());
        h.update(self.0.as_bytes());
        let digest = h.finalize();

        let mut t = String::with_capacity(64);
        t.push_str("kr-");
        t.extend(
            purpose
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(TOKEN_PURPOSE_MAX),
        );
        t.push('-');
        for b in digest.iter().take(TOKEN_DIGEST_HEX / 2) {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            t.push(HEX[usize::from(b >> 4)].into());
            t.push(HEX[usize::from(b & 0xf)].into());
        }
        SecretVersionId(t)
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
string_newtype_serde!(RunId);

#[cfg(test)]
#[path = "domain_tests.rs"]
mod tests;
