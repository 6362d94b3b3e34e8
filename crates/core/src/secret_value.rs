//! The value keyrotor keeps in the secret, and what it finds there.
//!
//! A key: `{"AccessKeyId","SecretAccessKey","UserName","CreateDate"}`. An intent record
//! (written to AWSPENDING before `CreateAccessKey`, so another run can tell a key being created
//! from an orphan): `{"KeyrotorIntent":{"RunId","ExpiresAt"}}`. A legacy value (the older design
//! stored the bare secret access key) is adopted: the first rotation writes the JSON.

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
}

/// The JSON for a key.
pub fn key_value(
    id: &AccessKeyId,
    secret: &SecretString,
    user_name: &str,
    created: SystemTime,
) -> SecretString {
    let json = KeyJson {
        access_key_id: id.as_str(),
        secret_access_key: secret.expose_secret(),
        user_name,
        create_date: humantime::format_rfc3339_seconds(created).to_string(),
    };
    // Serialising a struct of strings cannot fail.
    SecretString::from(serde_json::to_string(&json).unwrap_or_default())
}

/// The JSON for an intent record.
pub fn intent_value(run_id: &str, expires_at: SystemTime) -> SecretString {
    let json = IntentJson {
        keyrotor_intent: IntentBody {
            run_id: run_id.into(),
            expires_at: humantime::format_rfc3339_seconds(expires_at).to_string(),
        },
    };
    SecretString::from(serde_json::to_string(&json).unwrap_or_default())
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
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_round_trips_through_its_json() {
        let id = AccessKeyId::parse("AKIAIOSFODNN7EXAMPLE").unwrap();
        let v = key_value(
            &id,
            &SecretString::from("s3cr3t/abc"),
            "u",
            SystemTime::UNIX_EPOCH,
        );
        let k = parse_key(&v).unwrap();
        assert_eq!(k.id, id);
        assert_eq!(k.secret.expose_secret(), "s3cr3t/abc");
        assert!(
            v.expose_secret()
                .contains("\"CreateDate\":\"1970-01-01T00:00:00Z\"")
        );
        assert_eq!(
            classify(&v),
            Content::Key {
                id,
                user_name: "u".into()
            }
        );
    }

    #[test]
    fn an_intent_round_trips() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let v = intent_value("run-1", t);
        assert_eq!(
            classify(&v),
            Content::Intent {
                run_id: "run-1".into(),
                expires_at: t
            }
        );
    }

    #[test]
    fn a_bare_secret_key_is_legacy_and_other_json_is_foreign() {
        let legacy = SecretString::from("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(classify(&legacy), Content::Legacy);
        assert_eq!(
            classify(&SecretString::from("{\"user\":\"x\"}")),
            Content::Foreign
        );
        assert_eq!(
            classify(&SecretString::from("hello world")),
            Content::Foreign
        );
    }
}
