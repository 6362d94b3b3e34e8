//! Tests of `domain`.
use super::*;

#[test]
fn redact_masks_key_ids_and_secret_shaped_tokens_and_keeps_the_rest() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let pat = "abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnop2345";
    let hook = "https://hooks.slack.com/services/T000/B000/XXXX";
    let text = format!(
        "key AKIAIOSFODNN7EXAMPLE refused ({secret}); PAT '{pat}', hook {hook}\nrun 5b0e2c9a-8f41-4d1b-a7c3-0e9d6f2b1a77 ok"
    );
    let r = redact(&text);
    for s in [secret, pat, hook, "AKIAIOSFODNN7EXAMPLE"] {
        assert!(!r.contains(s), "{r}");
    }
    assert!(r.contains("AKIA…MPLE"), "{r}");
    assert!(r.contains("([redacted]);"), "{r}");
    assert!(r.contains("PAT '[redacted]',"), "{r}");
    assert!(
        r.contains("\nrun 5b0e2c9a-8f41-4d1b-a7c3-0e9d6f2b1a77 ok"),
        "ids and newlines stay: {r}"
    );
}

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

/// Run ids at the bounds, with `_` and `-`, and the distinct ones `truncation` used to merge.
fn bound_run_ids() -> Vec<String> {
    let mut ids = Vec::new();
    for len in [1, 31, 32, 33, 58, 59, 63, 64, 65, 79, 80] {
        let body: String = "a_b-C9".chars().cycle().take(len).collect();
        ids.push(body);
        ids.push("x".repeat(len));
        ids.push("-".repeat(len));
        ids.push("_".repeat(len));
    }
    // Differ only past character 64, or only in the last character.
    ids.push(format!("{}a", "r".repeat(79)));
    ids.push(format!("{}b", "r".repeat(79)));
    ids.push(format!("{}-", "r".repeat(63)));
    ids.push(format!("{}_", "r".repeat(63)));
    ids.push("r".repeat(63));
    ids.push(RunId::new().to_string());
    ids.sort();
    ids.dedup();
    ids
}

fn is_token(t: &str) -> bool {
    (32..=64).contains(&t.len()) && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[test]
fn run_ids_take_every_execution_name_of_letters_digits_dash_and_underscore() {
    for id in bound_run_ids() {
        let run = RunId::parse(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(run.as_str(), id);
    }
    assert!(RunId::parse(&"a".repeat(80)).is_ok());
}

#[test]
fn run_ids_refuse_empty_too_long_and_other_characters() {
    for bad in ["", "a b", "a.b", "a/b", "a:b", "é", "a\u{0}"] {
        let e = RunId::parse(bad).unwrap_err();
        assert_eq!(e.0, "a run id is 1 to 80 of A-Z a-z 0-9 - _", "{bad:?}");
    }
    assert!(RunId::parse(&"a".repeat(81)).is_err());
}

#[test]
fn tokens_are_32_to_64_letters_digits_and_dashes_for_every_run_id() {
    for id in bound_run_ids() {
        let run = RunId::parse(&id).unwrap();
        for purpose in ["intent", "key", "", "a_purpose_far_too_long_to_show_whole"] {
            let t = run.token(purpose);
            assert!(is_token(t.as_str()), "{id:?} {purpose:?}: {t:?}");
        }
    }
}

#[test]
fn distinct_run_ids_and_purposes_never_share_a_token() {
    let mut seen = std::collections::HashMap::new();
    for id in bound_run_ids() {
        let run = RunId::parse(&id).unwrap();
        for purpose in ["intent", "key", "intent2", "in-tent", "in_tent"] {
            let t = run.token(purpose);
            if let Some(prev) = seen.insert(t.clone(), (id.clone(), purpose)) {
                panic!("{prev:?} and {:?} share {t}", (&id, purpose));
            }
        }
    }
}

#[test]
fn a_token_is_the_same_every_time_for_the_same_run_and_purpose() {
    let id = format!("{}_x-", "e".repeat(77));
    let a = RunId::parse(&id).unwrap();
    let b: RunId = serde_json::from_str(&format!("\"{id}\"")).unwrap();
    assert_eq!(a.token("intent"), b.token("intent"));
    assert_eq!(a.token("key"), a.clone().token("key"));
    assert_ne!(a.token("intent"), a.token("key"));
    assert!(a.token("intent").as_str().starts_with("kr-intent-"));
    // Pinned: a change of derivation would orphan the versions of runs in flight.
    let run = RunId::parse("run-1").unwrap();
    assert_eq!(
        run.token("intent").as_str(),
        "kr-intent-15433d760e5ca9fb22a3051df9123dfe8d7e7abc"
    );
    assert_eq!(
        run.token("key").as_str(),
        "kr-key-6525f0888df6e6adb4c6f69aa621f53d552e4f88"
    );
}

#[test]
fn deserializing_goes_through_every_parser() {
    fn refused<T: serde::de::DeserializeOwned>(json: &str) -> bool {
        serde_json::from_str::<T>(json).is_err()
    }
    assert!(refused::<RunId>("\"\""));
    assert!(refused::<RunId>(&format!("\"{}\"", "a".repeat(81))));
    assert!(refused::<RunId>("\"a b\""));
    assert!(refused::<RunId>("42"));
    assert!(refused::<AccessKeyId>("\"akiaiosfodnn7example\""));
    assert!(refused::<IamUserName>("\"a b\""));
    assert!(refused::<SecretName>("\"a b\""));
    assert!(refused::<TargetName>("\"a/b\""));
    assert!(refused::<ProjectName>("\"a/b\""));
    assert!(refused::<OrgUrl>("\"http://dev.azure.com/x\""));
    assert!(refused::<EndpointId>("\"a b\""));
    assert!(refused::<SecretVersionId>("\"a_b\""));
    assert!(refused::<Arn>("\"secret\""));
    assert!(refused::<EndpointSelector>("{\"name\":\" \"}"));
    assert!(refused::<EndpointSelector>("{\"id\":\"\"}"));
    assert!(refused::<EndpointSelector>("{\"id\":\"a b\"}"));
    assert!(refused::<EndpointRef>(
        "{\"project\":\"P\",\"by\":{\"id\":\"a b\"}}"
    ));
    assert!(refused::<EndpointRef>(
        "{\"project\":\"a/b\",\"by\":{\"name\":\"n\"}}"
    ));

    let run: RunId = serde_json::from_str("\"run_1-x\"").unwrap();
    assert_eq!(serde_json::to_string(&run).unwrap(), "\"run_1-x\"");
    let r = EndpointRef {
        project: ProjectName::parse("P").unwrap(),
        by: EndpointSelector::Id(
            EndpointId::parse("00000000-0000-0000-0000-000000000000").unwrap(),
        ),
    };
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(serde_json::from_str::<EndpointRef>(&json).unwrap(), r);
    let by: EndpointSelector = serde_json::from_str("{\"name\":\"aws-prod\"}").unwrap();
    assert_eq!(by, EndpointSelector::Name("aws-prod".into()));
}

#[test]
fn endpoint_ids_are_lenient_but_not_blank() {
    let id = EndpointId::parse("00000000-0000-0000-0000-000000000000").unwrap();
    assert_eq!(id.as_str(), "00000000-0000-0000-0000-000000000000");
    assert_eq!(id.to_string(), id.as_str());
    assert!(EndpointId::parse("not-a-guid-but-fine").is_ok());
    assert!(EndpointId::parse(&"a".repeat(64)).is_ok());
    for bad in ["", " ", "a b", "a\tb", "a\n"] {
        assert!(EndpointId::parse(bad).is_err(), "{bad:?}");
    }
    assert!(EndpointId::parse(&"a".repeat(65)).is_err());
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<EndpointId>(&json).unwrap(), id);
}

#[test]
fn secret_version_ids_are_letters_digits_and_dashes() {
    let uuid = RunId::new().to_string();
    assert_eq!(SecretVersionId::parse(&uuid).unwrap().as_str(), uuid);
    let token = RunId::parse("r").unwrap().token("intent");
    assert!(SecretVersionId::parse(token.as_str()).is_ok());
    assert!(SecretVersionId::parse(&"a".repeat(64)).is_ok());
    for bad in ["", "a_b", "a b", "a.b"] {
        assert!(SecretVersionId::parse(bad).is_err(), "{bad:?}");
    }
    assert!(SecretVersionId::parse(&"a".repeat(65)).is_err());
    let v = SecretVersionId::parse("v-1").unwrap();
    assert_eq!(v.to_string(), "v-1");
    let json = serde_json::to_string(&v).unwrap();
    assert_eq!(json, "\"v-1\"");
    assert_eq!(serde_json::from_str::<SecretVersionId>(&json).unwrap(), v);
}

#[test]
fn arns_start_with_arn_and_fit_2048() {
    let raw = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ado/key-AbCdEf";
    let arn = Arn::parse(raw).unwrap();
    assert_eq!(arn.as_str(), raw);
    assert_eq!(arn.to_string(), raw);
    assert!(Arn::parse(&format!("arn:{}", "x".repeat(2044))).is_ok());
    assert!(Arn::parse(&format!("arn:{}", "x".repeat(2045))).is_err());
    for bad in ["", "arn:", "ARN:aws:iam::1:user/u", "aws:iam::1:user/u"] {
        assert!(Arn::parse(bad).is_err(), "{bad:?}");
    }
    let json = serde_json::to_string(&arn).unwrap();
    assert_eq!(serde_json::from_str::<Arn>(&json).unwrap(), arn);
}

#[test]
fn an_arn_names_an_iam_user_only_when_it_is_one() {
    let user = |raw: &str| Arn::parse(raw).unwrap().iam_user_name().map(str::to_owned);
    assert_eq!(
        user("arn:aws:iam::123456789012:user/pipeline").as_deref(),
        Some("pipeline")
    );
    assert_eq!(
        user("arn:aws-cn:iam::123456789012:user/team/a/pipeline").as_deref(),
        Some("pipeline")
    );
    assert_eq!(
        user("arn:aws:sts::123456789012:assumed-role/r/pipeline"),
        None
    );
    assert_eq!(user("arn:aws:iam::123456789012:role/pipeline"), None);
    assert_eq!(user("arn:aws:iam::123456789012:user/"), None);
    assert_eq!(user("arn:aws:s3:::user/pipeline"), None);
}
