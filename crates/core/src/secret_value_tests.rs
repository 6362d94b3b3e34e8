//! Tests of `secret_value`.
use super::*;
use std::time::Duration;

#[test]
fn a_key_value_names_its_owner_and_the_owner_never_carries_over() {
    let id = AccessKeyId::parse("AKIAQQQQQQQQQQQQ0NEW").unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let lease = Lease::mine("run-a", None, t);
    assert!(lease.holder.is_some(), "a lease names this process");
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
    let v = epoch_key_value(&id, "s3cr3t/abc", "u");
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
fn an_intent_names_its_process_and_execution_and_a_dead_writer_holds_nobody_off() {
    // Whole seconds: the record keeps RFC 3339 seconds.
    let now = SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(now + 300);
    let arn = "arn:aws:states:eu-west-1:123456789012:execution:keyrotor-rotate:run-1";
    let mine = Lease::mine("run-1", Some(arn), t);
    let v = intent_value_of(&mine);
    assert_eq!(
        classify(&v),
        Content::Intent {
            run_id: "run-1".into(),
            expires_at: t,
        },
        "still an intent to every reader"
    );
    let read = lease_seen(&v).unwrap();
    assert_eq!(read.execution.as_deref(), Some(arn));
    assert_eq!(read.holder, mine.holder, "this process, alive");
    assert_eq!(read.seen, Seen::Unknown);
    assert!(read.holds(SystemTime::now()));

    // The same intent written by a process of this machine that no longer runs.
    let mut dead = mine.clone();
    if let Some(h) = dead.holder.as_mut() {
        h.pid = u32::MAX - 1;
    }
    let read = lease_seen(&intent_value_of(&dead)).unwrap();
    assert_eq!(read.seen, Seen::Dead);
    assert!(
        !read.holds(SystemTime::now()),
        "a dead writer's intent holds nobody off"
    );

    // A running execution holds past the expiry; an ended one not even before it.
    let running = Lease {
        seen: Seen::Running,
        ..mine.clone()
    };
    assert!(running.holds(t + Duration::from_secs(86_400)));
    let ended = Lease {
        seen: Seen::Dead,
        ..mine
    };
    assert!(!ended.holds(SystemTime::now()));
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
    let plain = epoch_key_value(&id, "new/secret", "new-user");
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

/// keyrotor's JSON for a key created at the epoch.
fn epoch_key_value(id: &AccessKeyId, secret: &str, user: &str) -> SecretString {
    key_value(
        id,
        &SecretString::from(secret),
        user,
        SystemTime::UNIX_EPOCH,
    )
}
