//! The value keyrotor keeps in the secret, and what it finds there.
//!
//! A key: `{"AccessKeyId","SecretAccessKey","UserName","CreateDate"}`. An intent record
//! (written to AWSPENDING before `CreateAccessKey`, so another run can tell a key being created
//! from an orphan): `{"KeyrotorIntent":{"RunId","ExpiresAt"}}`. A legacy value (the older design
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
}

/// The fields keyrotor owns in the secret's JSON: it writes the first four and never copies
/// the last (an intent record) from a previous value.
pub const OWNED_FIELDS: [&str; 6] = [
    "AccessKeyId",
    "SecretAccessKey",
    "UserName",
    "CreateDate",
    "KeyrotorIntent",
    "KeyrotorOwner",
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
/// the new key's version while it is at AWSPENDING as `"KeyrotorOwner":{"RunId","ExpiresAt"}`.
/// Another run resumes that rotation only once the lease has expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run that owns the rotation.
    pub run_id: String,
    /// When another run may take it over.
    pub expires_at: SystemTime,
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
            let body = IntentBody {
                run_id: o.run_id.clone(),
                expires_at: humantime::format_rfc3339_seconds(o.expires_at).to_string(),
            };
            text.push_str(",\"KeyrotorOwner\":");
            text.push_str(&serde_json::to_string(&body).unwrap_or_default());
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

/// The owner a key's version names, if any (see [`Lease`]).
pub fn owner_of(value: &SecretString) -> Option<Lease> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Owned {
        keyrotor_owner: IntentBody,
    }
    let o: Owned = serde_json::from_str(value.expose_secret()).ok()?;
    Some(Lease {
        expires_at: humantime::parse_rfc3339_weak(&o.keyrotor_owner.expires_at).ok()?,
        run_id: o.keyrotor_owner.run_id,
    })
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
    fn a_key_value_names_its_owner_and_the_owner_never_carries_over() {
        let id = AccessKeyId::parse("AKIAQQQQQQQQQQQQ0NEW").unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lease = Lease {
            run_id: "run-a".into(),
            expires_at: t,
        };
        let v = key_value_owned(
            None,
            &id,
            &SecretString::from("s3cr3t"),
            "u",
            t,
            Some(&lease),
        );
        assert_eq!(owner_of(&v), Some(lease));
        assert_eq!(parse_key(&v).unwrap().id, id);
        let next = key_value_over(Some(&v), &id, &SecretString::from("other"), "u", t);
        assert_eq!(owner_of(&next), None, "{}", next.expose_secret());
    }

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

    const OLD_SECRET: &str = "oldOLDold/secret+KEY0123456789abcdefABCDEF";

    fn old_value(extra: &str) -> SecretString {
        SecretString::from(format!(
            "{{\"AccessKeyId\":\"AKIAOLDOLDOLDOLD0000\",\"SecretAccessKey\":\"{OLD_SECRET}\",\
             \"UserName\":\"old-user\",\"CreateDate\":\"2001-01-01T00:00:00Z\"{extra}}}"
        ))
    }

    fn new_over(base: Option<&SecretString>) -> SecretString {
        key_value_over(
            base,
            &AccessKeyId::parse("AKIANEWNEWNEWNEW1111").unwrap(),
            &SecretString::from("new/secret"),
            "new-user",
            SystemTime::UNIX_EPOCH,
        )
    }

    fn object(v: &SecretString) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(v.expose_secret()).unwrap() {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn other_fields_of_every_json_type_survive_a_new_key() {
        let extra = r#","Region":"eu-west-1","Port":5432,"Big":18446744073709551615,"Ratio":0.25,"Neg":-7,"Enabled":true,"Nothing":null,"Tags":["a",1,{"b":[]}],"Owner":{"team":"platform","oncall":["x"]},"Empty":"""#;
        let base = old_value(extra);
        let out = object(&new_over(Some(&base)));
        let before = object(&base);
        for field in [
            "Region", "Port", "Big", "Ratio", "Neg", "Enabled", "Nothing", "Tags", "Owner", "Empty",
        ] {
            assert_eq!(out.get(field), before.get(field), "{field}");
        }
        assert_eq!(out.len(), 4 + 10);
    }

    #[test]
    fn keyrotor_fields_are_replaced() {
        let base = old_value(r#","Region":"eu-west-1""#);
        let v = new_over(Some(&base));
        let out = object(&v);
        assert_eq!(out["AccessKeyId"], "AKIANEWNEWNEWNEW1111");
        assert_eq!(out["SecretAccessKey"], "new/secret");
        assert_eq!(out["UserName"], "new-user");
        assert_eq!(out["CreateDate"], "1970-01-01T00:00:00Z");
        let k = parse_key(&v).unwrap();
        assert_eq!(k.id.as_str(), "AKIANEWNEWNEWNEW1111");
        assert_eq!(k.secret.expose_secret(), "new/secret");
        assert!(matches!(classify(&v), Content::Key { .. }));
    }

    #[test]
    fn the_old_secret_survives_nowhere() {
        let base = old_value(&format!(
            r#","secretAccessKey":"{OLD_SECRET}","SECRETACCESSKEY":"{OLD_SECRET}","Region":"x""#
        ));
        let v = new_over(Some(&base));
        let text = v.expose_secret();
        assert!(!text.contains(OLD_SECRET), "{text}");
        assert!(!text.contains("AKIAOLDOLDOLDOLD0000"), "{text}");
        assert!(!text.contains("old-user"), "{text}");
        assert!(!text.contains("2001-01-01"), "{text}");
        assert!(text.contains("\"Region\":\"x\""), "{text}");
    }

    #[test]
    fn an_intent_record_is_never_copied() {
        let intent = intent_value("run-1", SystemTime::UNIX_EPOCH);
        let v = new_over(Some(&intent));
        assert_eq!(v.expose_secret(), new_over(None).expose_secret());
        let mixed = old_value(
            r#","KeyrotorIntent":{"RunId":"r","ExpiresAt":"x"},"keyrotorintent":1,"Owner":"o""#,
        );
        let out = object(&new_over(Some(&mixed)));
        assert!(
            out.keys()
                .all(|k| !k.eq_ignore_ascii_case("KeyrotorIntent")),
            "{out:?}"
        );
        assert_eq!(out["Owner"], "o");
    }

    #[test]
    fn a_legacy_or_non_object_base_contributes_nothing() {
        let fresh = new_over(None);
        for base in [
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "[1,2,3]",
            "\"text\"",
            "42",
            "null",
            "not json {",
            "",
        ] {
            let v = new_over(Some(&SecretString::from(base)));
            assert_eq!(v.expose_secret(), fresh.expose_secret(), "{base:?}");
        }
        let id = AccessKeyId::parse("AKIANEWNEWNEWNEW1111").unwrap();
        let plain = key_value(
            &id,
            &SecretString::from("new/secret"),
            "new-user",
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(plain.expose_secret(), fresh.expose_secret());
    }

    #[test]
    fn the_field_order_is_deterministic() {
        let a = old_value(r#","Zeta":1,"Alpha":{"x":2,"y":1},"Mid":"m""#);
        let b = old_value(r#","Mid":"m","Alpha":{"x":2,"y":1},"Zeta":1"#);
        let (va, vb) = (new_over(Some(&a)), new_over(Some(&b)));
        assert_eq!(va.expose_secret(), vb.expose_secret());
        assert_eq!(
            va.expose_secret(),
            "{\"AccessKeyId\":\"AKIANEWNEWNEWNEW1111\",\"SecretAccessKey\":\"new/secret\",\
             \"UserName\":\"new-user\",\"CreateDate\":\"1970-01-01T00:00:00Z\",\
             \"Alpha\":{\"x\":2,\"y\":1},\"Mid\":\"m\",\"Zeta\":1}"
        );
        // Written over its own output, a value does not change.
        assert_eq!(new_over(Some(&va)).expose_secret(), va.expose_secret());
    }
}
