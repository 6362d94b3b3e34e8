//! The value keyrotor keeps in the secret, and what it finds there.
//!
//! A key: `{"AccessKeyId","SecretAccessKey","UserName","CreateDate"}`. An intent record
//! (written to AWSPENDING before `CreateAccessKey`, so another run can tell a key being created
//! from an orphan): `{"KeyrotorIntent":{"RunId","ExpiresAt"}}`, with the writing process
//! (`"Host","Boot","Pid","Started"`) and, on the Step Functions path, its execution
//! (`"Execution"`), as in a [`Lease`]. A legacy value (the older design
//! stored the bare secret access key) is adopted: the first rotation writes the JSON.
//!
//! The secret stays the user's: [`key_value_over`] writes a new key over the previous value,
//! keeping every field other programs put there (`Region`, `Owner`, …).

use std::collections::BTreeMap;
use std::time::SystemTime;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::AccessKeyId;

/// A key read from the secret, with its secret.
pub struct StoredKey {
    /// The key id.
    pub id: AccessKeyId,
    /// The secret access key.
    pub secret: SecretString,
    /// The IAM user it belongs to.
    pub user_name: String,
}

/// What a secret version holds, without the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// keyrotor's JSON for a key.
    Key {
        /// The key id.
        id: AccessKeyId,
        /// The user it belongs to.
        user_name: String,
    },
    /// An intent record.
    Intent {
        /// The run that wrote it.
        run_id: String,
        /// When it stops holding off other runs.
        expires_at: SystemTime,
    },
    /// A bare secret access key (the older design).
    Legacy,
    /// Anything else.
    Foreign,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyJson<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    user_name: &'a str,
    create_date: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IntentJson {
    keyrotor_intent: IntentBody,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct IntentBody {
    run_id: String,
    expires_at: String,
    /// The Step Functions execution that owns the rotation (its ARN), on that path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    execution: Option<String>,
    /// The owning process (see [`crate::liveness`]): `"Host"`, `"Boot"`, `"Pid"`, `"Started"`.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    holder: Option<HolderJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HolderJson {
    host: String,
    boot: String,
    pid: u32,
    started: u64,
}

/// The fields keyrotor owns in the secret's JSON: it writes the first four and never copies
/// the last (an intent record) from a previous value.
pub const OWNED_FIELDS: [&str; 7] = [
    "AccessKeyId",
    "SecretAccessKey",
    "UserName",
    "CreateDate",
    "KeyrotorIntent",
    "KeyrotorOwner",
    "KeyrotorConfirmedAt",
];

/// Whether keyrotor owns a field of the secret's JSON. Compared ignoring ASCII case, so that a
/// previous value's `secretAccessKey` (another tool's spelling) neither keeps the old secret
/// nor sits next to `SecretAccessKey` (PowerShell's `ConvertFrom-Json`, say, refuses keys
/// that differ only in case).
fn owned(field: &str) -> bool {
    OWNED_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(field))
}

/// The JSON for a key, with no other field: [`key_value_over`] with no previous value.
pub fn key_value(
    id: &AccessKeyId,
    secret: &SecretString,
    user_name: &str,
    created: SystemTime,
) -> SecretString {
    key_value_over(None, id, secret, user_name, created)
}

/// The JSON for a key, written over the previous value `base` of the secret.
///
/// When `base` is a JSON object, every field keyrotor does not own (see [`OWNED_FIELDS`]) is
/// kept with its value (any JSON type); keyrotor's four fields are replaced and an intent
/// record's `KeyrotorIntent` is dropped. Any other `base` (a legacy bare key, an array, text
/// that is not JSON) contributes nothing. The output is deterministic: keyrotor's fields first
/// (`AccessKeyId`, `SecretAccessKey`, `UserName`, `CreateDate`), then the kept fields sorted
/// by name.
pub fn key_value_over(
    base: Option<&SecretString>,
    id: &AccessKeyId,
    secret: &SecretString,
    user_name: &str,
    created: SystemTime,
) -> SecretString {
    key_value_owned(base, id, secret, user_name, created, None)
}

/// Which run owns a rotation, and until when (invariant 7, one owner at a time): written into
/// the new key's version while it is at AWSPENDING as
/// `"KeyrotorOwner":{"RunId","ExpiresAt","Host","Boot","Pid","Started","Execution"}`, and, for
/// the create window, into the intent record (`"KeyrotorIntent"`, same fields). Another run
/// resumes that rotation only once the lease has expired, or at once when the owner is seen
/// dead: its process on the contender's own machine ([`crate::liveness`]), or its Step
/// Functions execution no longer running ([`crate::ports::Executions`]). A running execution
/// keeps its lease past the expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run that owns the rotation.
    pub run_id: String,
    /// When another run may take it over.
    pub expires_at: SystemTime,
    /// The owning process, when the system could name it.
    pub holder: Option<crate::liveness::Holder>,
    /// The owning Step Functions execution (its ARN), on that path.
    pub execution: Option<String>,
    /// What the reader saw of the owner (set when the lease is read, never written).
    pub seen: Seen,
}

/// What a reader of a lease saw of its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seen {
    /// Nothing could be told (another machine, no execution, an error asking): the lease's
    /// expiry decides.
    #[default]
    Unknown,
    /// The owner no longer runs: its process is gone from this machine, or its execution ended
    /// (or does not exist). The lease holds nobody off.
    Dead,
    /// The owner's execution is running: the lease holds, even past its expiry.
    Running,
}

impl Lease {
    /// A lease of `run_id` (and of `execution`, on the Step Functions path) until `expires_at`,
    /// held by this process.
    pub fn mine(run_id: &str, execution: Option<&str>, expires_at: SystemTime) -> Self {
        Self {
            run_id: run_id.to_owned(),
            expires_at,
            holder: crate::liveness::Holder::this_process(),
            execution: execution.map(str::to_owned),
            seen: Seen::Unknown,
        }
    }

    /// Whether the lease still holds other runs off at `now`: its owner seen running, or not
    /// expired and its owner not seen dead.
    pub fn holds(&self, now: SystemTime) -> bool {
        match self.seen {
            Seen::Dead => false,
            Seen::Running => true,
            Seen::Unknown => self.expires_at > now,
        }
    }

    fn body(&self) -> IntentBody {
        IntentBody {
            run_id: self.run_id.clone(),
            expires_at: humantime::format_rfc3339_seconds(self.expires_at).to_string(),
            execution: self.execution.clone(),
            holder: self.holder.as_ref().map(|h| HolderJson {
                host: h.host.clone(),
                boot: h.boot.clone(),
                pid: h.pid,
                started: h.started,
            }),
        }
    }

    fn from_body(b: IntentBody) -> Option<Self> {
        Some(Self {
            expires_at: humantime::parse_rfc3339_weak(&b.expires_at).ok()?,
            run_id: b.run_id,
            execution: b.execution,
            holder: b.holder.map(|h| crate::liveness::Holder {
                host: h.host,
                boot: h.boot,
                pid: h.pid,
                started: h.started,
            }),
            seen: Seen::Unknown,
        })
    }
}

/// [`key_value_over`], with the rotation's owner recorded in the value.
pub fn key_value_owned(
    base: Option<&SecretString>,
    id: &AccessKeyId,
    secret: &SecretString,
    user_name: &str,
    created: SystemTime,
    owner: Option<&Lease>,
) -> SecretString {
    key_value_stamped(base, id, secret, user_name, created, owner, None)
}

/// [`key_value_owned`], with the moment every connection held this key recorded as
/// `"KeyrotorConfirmedAt"`: the old key's drain (and its grace after that) is counted from it by
/// every later run, not estimated from the key's creation. Never copied into the next key's
/// version (an owned field).
pub fn key_value_stamped(
    base: Option<&SecretString>,
    id: &AccessKeyId,
    secret: &SecretString,
    user_name: &str,
    created: SystemTime,
    owner: Option<&Lease>,
    confirmed_at: Option<SystemTime>,
) -> SecretString {
    let json = KeyJson {
        access_key_id: id.as_str(),
        secret_access_key: secret.expose_secret(),
        user_name,
        create_date: humantime::format_rfc3339_seconds(created).to_string(),
    };
    // Serialising strings and JSON values cannot fail.
    let mut text = serde_json::to_string(&json).unwrap_or_default();
    let kept = base
        .and_then(|b| {
            serde_json::from_str::<BTreeMap<String, serde_json::Value>>(b.expose_secret()).ok()
        })
        .unwrap_or_default();
    if text.ends_with('}') {
        text.pop();
        if let Some(o) = owner {
            let body = o.body();
            text.push_str(",\"KeyrotorOwner\":");
            text.push_str(&serde_json::to_string(&body).unwrap_or_default());
        }
        if let Some(t) = confirmed_at {
            text.push_str(",\"KeyrotorConfirmedAt\":\"");
            text.push_str(&humantime::format_rfc3339_seconds(t).to_string());
            text.push('"');
        }
        for (field, value) in kept.iter().filter(|(f, _)| !owned(f)) {
            text.push(',');
            text.push_str(&serde_json::to_string(field).unwrap_or_default());
            text.push(':');
            text.push_str(&serde_json::to_string(value).unwrap_or_default());
        }
        text.push('}');
    }
    SecretString::from(text)
}

/// The JSON for an intent record of `run_id` until `expires_at`, naming no process.
pub fn intent_value(run_id: &str, expires_at: SystemTime) -> SecretString {
    intent_value_of(&Lease {
        run_id: run_id.into(),
        expires_at,
        holder: None,
        execution: None,
        seen: Seen::Unknown,
    })
}

/// The JSON for an intent record that holds `lease` (its run, expiry, process and execution):
/// a contender can see its writer dead, as for a rotation's owner.
pub fn intent_value_of(lease: &Lease) -> SecretString {
    let json = IntentJson {
        keyrotor_intent: lease.body(),
    };
    SecretString::from(serde_json::to_string(&json).unwrap_or_default())
}

/// The lease a value names, whether a key's version (`KeyrotorOwner`, see [`owner_of`]) or an
/// intent record ([`intent_of`]), with whether its process is seen dead on this machine (an
/// IO: it reads `/proc`), for the readers that decide whether to stand aside. The execution
/// (if any) is judged by the caller, which has the port for it.
pub fn lease_seen(value: &SecretString) -> Option<Lease> {
    owner_of(value).or_else(|| intent_of(value)).map(|mut l| {
        if l.holder.as_ref().is_some_and(|h| h.is_dead_here()) {
            l.seen = Seen::Dead;
        }
        l
    })
}

/// The lease an intent record holds (its run and expiry, and its writer when recorded).
pub fn intent_of(value: &SecretString) -> Option<Lease> {
    let i: IntentJson = serde_json::from_str(value.expose_secret().trim()).ok()?;
    Lease::from_body(i.keyrotor_intent)
}

/// The owner a key's version names, if any (see [`Lease`]).
pub fn owner_of(value: &SecretString) -> Option<Lease> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Owned {
        keyrotor_owner: IntentBody,
    }
    let o: Owned = serde_json::from_str(value.expose_secret()).ok()?;
    Lease::from_body(o.keyrotor_owner)
}

/// The instant a top-level field of the value's JSON records (RFC 3339), if it holds one.
fn time_field(value: &SecretString, field: &str) -> Option<SystemTime> {
    let v: serde_json::Value = serde_json::from_str(value.expose_secret()).ok()?;
    humantime::parse_rfc3339_weak(v.get(field)?.as_str()?).ok()
}

/// The `CreateDate` a key's value records, if it holds one.
pub fn created_of(value: &SecretString) -> Option<SystemTime> {
    time_field(value, "CreateDate")
}

/// When every connection held the key a value holds (`KeyrotorConfirmedAt`), if recorded.
pub fn confirmed_of(value: &SecretString) -> Option<SystemTime> {
    time_field(value, "KeyrotorConfirmedAt")
}

/// Reads a key out of a value, if it holds one.
pub fn parse_key(value: &SecretString) -> Option<StoredKey> {
    let raw: KeyJson = serde_json::from_str(value.expose_secret()).ok()?;
    Some(StoredKey {
        id: AccessKeyId::parse(raw.access_key_id).ok()?,
        secret: SecretString::from(raw.secret_access_key.to_owned()),
        user_name: raw.user_name.to_owned(),
    })
}

/// Classifies a value without keeping its secret.
pub fn classify(value: &SecretString) -> Content {
    if let Some(k) = parse_key(value) {
        return Content::Key {
            id: k.id,
            user_name: k.user_name,
        };
    }
    let text = value.expose_secret().trim();
    if let Ok(i) = serde_json::from_str::<IntentJson>(text)
        && let Ok(t) = humantime::parse_rfc3339_weak(&i.keyrotor_intent.expires_at)
    {
        return Content::Intent {
            run_id: i.keyrotor_intent.run_id,
            expires_at: t,
        };
    }
    let legacy = (16..=128).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/+=".contains(c));
    if legacy {
        Content::Legacy
    } else {
        Content::Foreign
    }
}

#[cfg(test)]
#[path = "secret_value_tests.rs"]
mod tests;
