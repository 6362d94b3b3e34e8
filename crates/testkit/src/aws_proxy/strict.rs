//! Strict mode: the proxy answers as AWS does where moto is kinder (see the table in the
//! [module documentation](super)).
//!
//! Two of the rules work from what the proxy saw pass through it, two ask moto:
//!
//! - Access keys: every IAM `CreateAccessKey`, `UpdateAccessKey` and `DeleteAccessKey` that moto
//!   answers with a 2xx is noted (the key id, when it was created, whether it is Inactive or
//!   deleted), whether strict mode is on or not. Keys created, deactivated or deleted straight
//!   at moto are unknown to the proxy, and STS accepts them as moto does.
//! - Secrets Manager: before a `PutSecretValue` or an `UpdateSecretVersionStage`, the proxy asks
//!   moto (`GetSecretValue` of the version the token names; `DescribeSecret`), sending the
//!   incoming request's headers with its own body and `X-Amz-Target`: moto does not check
//!   signatures unless its IAM enforcement is on. When that question fails (the secret does not
//!   exist, moto enforces IAM and so rejects the re-used signature, …), the request is forwarded
//!   as it is and moto answers it. Secret values are compared in memory, never stored or logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Answer, Request, Shared, forward, json_error, query_error};

/// What strict mode enforces. Every rule is on by default; `new_key_delay` is 2 s by default.
///
/// Over HTTP (`POST /_proxy/strict`) the same fields, with the delay in milliseconds:
/// `{"new_key_delay_ms": 2000, "inactive_keys": true, "immutable_versions": true,
/// "stage_moves": true}`; a missing field takes its default (`{}` is the default options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrictOptions {
    /// STS refuses a key (`InvalidClientTokenId`) until this long after the proxy saw IAM
    /// `CreateAccessKey` return it. IAM is eventually consistent: AWS takes 5–20 s. Zero turns the
    /// rule off.
    #[serde(rename = "new_key_delay_ms", with = "millis")]
    pub new_key_delay: Duration,
    /// STS refuses (`InvalidClientTokenId`) a key the proxy saw set `Inactive` (until it sees it
    /// set `Active` again) or deleted.
    pub inactive_keys: bool,
    /// `PutSecretValue` with a `ClientRequestToken` that already names a version of the secret
    /// holding another value fails with `ResourceExistsException`.
    pub immutable_versions: bool,
    /// `UpdateSecretVersionStage` moving a label that another version holds fails with
    /// `InvalidParameterException` unless `RemoveFromVersionId` names that version; so does
    /// removing a label from a version that does not hold it.
    pub stage_moves: bool,
}

impl Default for StrictOptions {
    fn default() -> Self {
        Self {
            new_key_delay: Duration::from_secs(2),
            inactive_keys: true,
            immutable_versions: true,
            stage_moves: true,
        }
    }
}

impl StrictOptions {
    /// The default options with this new-key delay.
    pub fn with_new_key_delay(delay: Duration) -> Self {
        Self {
            new_key_delay: delay,
            ..Self::default()
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The strict-mode rule that refused a request ([`Seen::strict`](super::Seen::strict)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrictRule {
    /// STS, signed with a key created less than `new_key_delay` ago: 403 `InvalidClientTokenId`.
    NewKey,
    /// STS, signed with a key set Inactive: 403 `InvalidClientTokenId`.
    InactiveKey,
    /// STS, signed with a deleted key: 403 `InvalidClientTokenId`.
    DeletedKey,
    /// `PutSecretValue` re-using a version's token with another value: 400
    /// `ResourceExistsException`.
    VersionExists,
    /// `UpdateSecretVersionStage` without the right `RemoveFromVersionId`: 400
    /// `InvalidParameterException`.
    RemoveFromVersion,
}

impl StrictRule {
    /// A short name: `new-key`, `inactive-key`, `deleted-key`, `version-exists`,
    /// `remove-from-version`.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewKey => "new-key",
            Self::InactiveKey => "inactive-key",
            Self::DeletedKey => "deleted-key",
            Self::VersionExists => "version-exists",
            Self::RemoveFromVersion => "remove-from-version",
        }
    }
}

/// What the proxy knows of one access key.
#[derive(Debug, Default, Clone)]
pub(super) struct KeyState {
    created: Option<Instant>,
    inactive: bool,
    deleted: bool,
}

/// Access keys by id.
pub(super) type KeyBook = HashMap<String, KeyState>;

/// Whether strict mode refuses the request, and with what answer (before it is forwarded).
pub(super) async fn check(
    sh: &Shared,
    req: &Request,
    op: &str,
    service: Option<&str>,
    opts: &StrictOptions,
) -> Option<(StrictRule, Answer)> {
    match (service, op) {
        (Some("sts"), _) => check_sts_key(sh, req, opts),
        (Some("secretsmanager"), "PutSecretValue") if opts.immutable_versions => {
            check_put_secret_value(sh, req).await
        }
        (Some("secretsmanager"), "UpdateSecretVersionStage") if opts.stage_moves => {
            check_stage_move(sh, req).await
        }
        _ => None,
    }
}

/// Notes what a forwarded IAM request did to an access key (only when moto answered 2xx).
pub(super) fn observe(sh: &Shared, req: &Request, op: &str, service: Option<&str>, a: &Answer) {
    if !(200..300).contains(&a.status) || !matches!(service, Some("iam") | None) {
        return;
    }
    let form = String::from_utf8_lossy(&req.body);
    let (key, change): (Option<String>, fn(&mut KeyState)) = match op {
        "CreateAccessKey" => (
            xml_element(&String::from_utf8_lossy(&a.body), "AccessKeyId"),
            |k| k.created = Some(Instant::now()),
        ),
        "DeleteAccessKey" => (form_param(&form, "AccessKeyId"), |k| k.deleted = true),
        "UpdateAccessKey" => match form_param(&form, "Status").as_deref() {
            Some("Inactive") => (form_param(&form, "AccessKeyId"), |k| k.inactive = true),
            Some("Active") => (form_param(&form, "AccessKeyId"), |k| k.inactive = false),
            _ => return,
        },
        _ => return,
    };
    if let Some(key) = key {
        change(sh.lock().keys.entry(key).or_default());
    }
}

/// STS refuses a key that is too new, Inactive or deleted.
fn check_sts_key(sh: &Shared, req: &Request, opts: &StrictOptions) -> Option<(StrictRule, Answer)> {
    let key = req.access_key_id()?;
    let rule = {
        let st = sh.lock();
        let k = st.keys.get(key)?;
        if opts.inactive_keys && k.deleted {
            StrictRule::DeletedKey
        } else if opts.inactive_keys && k.inactive {
            StrictRule::InactiveKey
        } else if k.created.is_some_and(|c| c.elapsed() < opts.new_key_delay) {
            StrictRule::NewKey
        } else {
            return None;
        }
    };
    Some((
        rule,
        query_error(
            403,
            "https://sts.amazonaws.com/doc/2011-06-15/",
            true,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        ),
    ))
}

/// The request's JSON body, if it is a JSON object.
fn json_body(req: &Request) -> Option<serde_json::Map<String, Value>> {
    match serde_json::from_slice(&req.body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A non-null string field.
fn string<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// Asks moto a Secrets Manager question with the incoming request's headers; its JSON answer
/// when moto answered 200.
async fn ask_secretsmanager(
    sh: &Shared,
    req: &Request,
    op: &str,
    body: Value,
) -> Option<serde_json::Map<String, Value>> {
    let question = req.json_call(&format!("secretsmanager.{op}"), &body);
    let a = forward(sh, &question).await;
    if a.status != 200 {
        return None;
    }
    match serde_json::from_slice(&a.body).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `PutSecretValue` whose token names a version with another value.
async fn check_put_secret_value(sh: &Shared, req: &Request) -> Option<(StrictRule, Answer)> {
    let body = json_body(req)?;
    let secret = string(&body, "SecretId")?;
    let token = string(&body, "ClientRequestToken")?;
    let existing = ask_secretsmanager(
        sh,
        req,
        "GetSecretValue",
        json!({"SecretId": secret, "VersionId": token}),
    )
    .await?;
    // `null` and absent are the same (no value of that kind).
    let value =
        |m: &serde_json::Map<String, Value>, k: &str| m.get(k).filter(|v| !v.is_null()).cloned();
    let same = ["SecretString", "SecretBinary"]
        .iter()
        .all(|k| value(&existing, k) == value(&body, k));
    if same {
        return None;
    }
    Some((
        StrictRule::VersionExists,
        json_error(
            400,
            "ResourceExistsException",
            "You can't modify an existing version, you can only create a new version.",
        ),
    ))
}

/// `UpdateSecretVersionStage` that moves or removes a label without naming the version that
/// holds it.
async fn check_stage_move(sh: &Shared, req: &Request) -> Option<(StrictRule, Answer)> {
    let body = json_body(req)?;
    let secret = string(&body, "SecretId")?;
    let label = string(&body, "VersionStage")?;
    let move_to = string(&body, "MoveToVersionId");
    let remove_from = string(&body, "RemoveFromVersionId");
    if move_to.is_none() && remove_from.is_none() {
        return None;
    }
    let described =
        ask_secretsmanager(sh, req, "DescribeSecret", json!({"SecretId": secret})).await?;
    let holder = described
        .get("VersionIdsToStages")?
        .as_object()?
        .iter()
        .find(|(_, labels)| {
            labels
                .as_array()
                .is_some_and(|ls| ls.iter().any(|l| l.as_str() == Some(label)))
        })
        .map(|(id, _)| id.as_str());
    let message = match (holder, remove_from) {
        (Some(h), None) if move_to.is_some_and(|m| m != h) => format!(
            "The parameter RemoveFromVersionId can't be empty. Staging label {label} is \
             currently attached to version {h}, so you must explicitly reference that version in \
             RemoveFromVersionId."
        ),
        (Some(h), Some(r)) if r != h => format!(
            "Staging label {label} is currently attached to version {h}, not to version {r}: \
             RemoveFromVersionId must reference the version that has the label."
        ),
        (None, Some(r)) => format!(
            "Staging label {label} is not attached to version {r}, so it can't be removed from \
             it."
        ),
        _ => return None,
    };
    Some((
        StrictRule::RemoveFromVersion,
        json_error(400, "InvalidParameterException", &message),
    ))
}

impl Request {
    /// The access key id the request is signed with (`Credential=AKID/…` in `Authorization`).
    fn access_key_id(&self) -> Option<&str> {
        let cred = self.header("authorization")?.split("Credential=").nth(1)?;
        cred.split('/').next().filter(|k| !k.is_empty())
    }

    /// A JSON-protocol request with this one's headers (so its signature and endpoint), another
    /// `X-Amz-Target` and another body.
    fn json_call(&self, target: &str, body: &Value) -> Request {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("x-amz-target"))
            .cloned()
            .collect();
        headers.push(("X-Amz-Target".into(), target.into()));
        Request {
            method: "POST".into(),
            target: self.target.clone(),
            headers,
            body: body.to_string().into_bytes(),
        }
    }
}

/// The text of the first `<name>…</name>` in an XML document.
fn xml_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].trim().to_owned())
}

/// A parameter of a form (`application/x-www-form-urlencoded`) body, decoded.
fn form_param(form: &str, name: &str) -> Option<String> {
    form.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (url_decode(k) == name).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                match std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) if hex.len() == 2 => out.push(v),
                    _ => {
                        out.push(b'%');
                        out.extend_from_slice(&hex);
                    }
                }
            }
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parameters_are_decoded() {
        let form = "Action=UpdateAccessKey&AccessKeyId=AKIA123&Status=Inactive&UserName=a%2Bb+c";
        assert_eq!(form_param(form, "AccessKeyId").as_deref(), Some("AKIA123"));
        assert_eq!(form_param(form, "Status").as_deref(), Some("Inactive"));
        assert_eq!(form_param(form, "UserName").as_deref(), Some("a+b c"));
        assert_eq!(form_param(form, "Missing"), None);
    }

    #[test]
    fn the_access_key_id_is_read_from_the_credential_scope() {
        let req = Request {
            method: "POST".into(),
            target: "/".into(),
            headers: vec![(
                "Authorization".into(),
                "AWS4-HMAC-SHA256 Credential=AKIAXYZ/20260101/us-east-1/sts/aws4_request, \
                 SignedHeaders=host, Signature=abc"
                    .into(),
            )],
            body: Vec::new(),
        };
        assert_eq!(req.access_key_id(), Some("AKIAXYZ"));
    }

    #[test]
    fn an_xml_element_is_found() {
        let xml = "<CreateAccessKeyResult><AccessKey><AccessKeyId>AKIA1</AccessKeyId>";
        assert_eq!(xml_element(xml, "AccessKeyId").as_deref(), Some("AKIA1"));
        assert_eq!(xml_element(xml, "SecretAccessKey"), None);
    }

    #[test]
    fn options_read_the_delay_in_milliseconds_and_default_the_rest() {
        let o: StrictOptions = serde_json::from_str(r#"{"new_key_delay_ms": 500}"#).unwrap();
        assert_eq!(
            o,
            StrictOptions::with_new_key_delay(Duration::from_millis(500))
        );
        let o: StrictOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, StrictOptions::default());
        assert!(serde_json::from_str::<StrictOptions>(r#"{"delay": 1}"#).is_err());
    }
}
