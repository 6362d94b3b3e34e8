//! What the Slack message (and its plain-text preview) says for each kind of run, that it holds
//! no secret, and that it stays within Slack's limits for runs of any size.

use std::sync::Arc;

use keyrotor_core::domain::{AccessKeyId, RunId};
use keyrotor_core::engine::{self, Observer, RunOptions};
use keyrotor_core::ports::{PortError, PortErrorKind};
use keyrotor_core::report::{
    EndpointReport, NotificationStatus, Outcome, RunReport, Step, TargetReport,
};
use keyrotor_notify::{render, render_text};
use keyrotor_testkit::fakes::Scenario;
use serde_json::Value;

const OLD_FULL: &str = "AKIAIOSFODNN7OLDKEY1";
const NEW_FULL: &str = "AKIAIOSFODNN7NEWKEY2";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

fn masked(full: &str) -> String {
    AccessKeyId::parse(full).unwrap().masked()
}

fn endpoint(name: &str, key: Option<&str>) -> EndpointReport {
    EndpointReport {
        endpoint: format!("Platform/{name}"),
        id: keyrotor_core::domain::EndpointId::parse(&format!(
            "00000000-0000-0000-0000-{:012}",
            name.len()
        ))
        .unwrap(),
        key: key.map(masked),
    }
}

fn rotated(name: &str) -> TargetReport {
    let mut t = TargetReport::new(name, Outcome::Rotated);
    t.old_key = Some(masked(OLD_FULL));
    t.new_key = Some(masked(NEW_FULL));
    t.endpoints = vec![
        endpoint("aws-0", Some(NEW_FULL)),
        endpoint("aws-1", Some(NEW_FULL)),
    ];
    t.steps = Step::ROTATION.to_vec();
    t.reason = Some("the key is 95 days old, older than max_key_age (90 days)".into());
    t.duration_ms = 3140;
    t
}

fn failed(name: &str, step: Step) -> TargetReport {
    let mut t = TargetReport::new(name, Outcome::Failed);
    t.old_key = Some(masked(OLD_FULL));
    t.new_key = Some(masked(NEW_FULL));
    t.failed_step = Some(step);
    t.error = Some(format!(
        "{step}: Azure DevOps answered 401 Unauthorized for service connection 'aws-1'"
    ));
    t.compensation = Some(format!(
        "the new key {} was deleted; the old key {} is kept and every connection holds it",
        masked(NEW_FULL),
        masked(OLD_FULL)
    ));
    t.next_step =
        Some("fix the cause (Azure DevOps access, the PAT) and run keyrotor again".into());
    t.endpoints = vec![
        endpoint("aws-0", Some(OLD_FULL)),
        endpoint("aws-1", Some(OLD_FULL)),
    ];
    t.duration_ms = 2048;
    t
}

fn refused(name: &str, why: &str) -> TargetReport {
    let mut t = TargetReport::new(name, Outcome::Refused);
    t.old_key = Some(masked(OLD_FULL));
    t.failed_step = Some(Step::Inspect);
    t.error = Some(why.into());
    t.reason = Some(why.into());
    t.next_step =
        Some("fix what the reason names, then run keyrotor again; nothing was changed".into());
    t
}

fn brief(name: &str, outcome: Outcome, why: &str) -> TargetReport {
    let mut t = TargetReport::new(name, outcome);
    if outcome == Outcome::Invalid {
        t.failed_step = Some(Step::Inspect);
        t.error = Some(why.into());
        t.next_step = Some("correct the configuration or the secret; nothing was changed".into());
    }
    t.reason = Some(why.into());
    t
}

fn run(targets: Vec<TargetReport>) -> RunReport {
    RunReport {
        run_id: "run-2f6c1d".into(),
        origin: "arn:aws:states:eu-west-1:123456789012:execution:keyrotor:nightly-42".into(),
        targets,
        notification: NotificationStatus::NotConfigured,
    }
}

fn blocks(v: &Value) -> &Vec<Value> {
    v["blocks"].as_array().expect("blocks is an array")
}

/// Every text a person can see, block by block (the `text` fallback last).
fn texts(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for b in blocks(v) {
        match b["type"].as_str().unwrap() {
            "header" | "section" => out.push(b["text"]["text"].as_str().unwrap().to_owned()),
            "context" => {
                for e in b["elements"].as_array().unwrap() {
                    out.push(e["text"].as_str().unwrap().to_owned());
                }
            }
            other => panic!("unexpected block type {other}"),
        }
    }
    out.push(v["text"].as_str().unwrap().to_owned());
    out
}

fn all_text(v: &Value) -> String {
    texts(v).join("\n")
}

fn header(v: &Value) -> &str {
    let b = &blocks(v)[0];
    assert_eq!(b["type"], "header");
    b["text"]["text"].as_str().unwrap()
}

fn sections(v: &Value) -> Vec<&str> {
    blocks(v)
        .iter()
        .filter(|b| b["type"] == "section")
        .map(|b| b["text"]["text"].as_str().unwrap())
        .collect()
}

#[test]
fn a_rotation_shows_old_and_new_key_the_connections_and_the_duration() {
    let report = run(vec![rotated("platform")]);
    let (v, all) = rendered(&report, "keyrotor: 1 rotated");
    assert_has(
        &all,
        &[
            "*platform* `AKIA…KEY1` → `AKIA…KEY2`",
            "2 connections updated (Platform/aws-0, Platform/aws-1)",
            "3.1 s",
            "run `run-2f6c1d`",
            "from `arn:aws:states:eu-west-1:123456789012:execution:keyrotor:nightly-42`",
        ],
    );
    assert!(!all.contains(":x:") && !all.contains("FAILED"), "{all}");
    assert_eq!(v["text"], "keyrotor: 1 rotated");

    let text = render_text(&report);
    assert!(
        text.starts_with("keyrotor: 1 rotated\nrun run-2f6c1d · from arn:aws:states:"),
        "{text}"
    );
    assert!(
        text.contains("✓ Rotated (1)\n• platform AKIA…KEY1 → AKIA…KEY2 · 2 connections updated"),
        "{text}"
    );
}

#[test]
fn a_rotation_that_did_not_reach_every_connection_says_how_many_did() {
    let mut t = rotated("platform");
    t.endpoints[1].key = Some(masked(OLD_FULL));
    let all = all_text(&render(&run(vec![t])));
    assert!(all.contains("1 of 2 connections hold the new key"), "{all}");
}

#[test]
fn a_planned_rotation_of_a_dry_run_does_not_claim_connections_were_updated() {
    let mut t = rotated("platform");
    t.new_key = None;
    t.endpoints = vec![endpoint("aws-0", Some(OLD_FULL))];
    let all = all_text(&render(&run(vec![t])));
    assert!(
        all.contains("*platform* `AKIA…KEY1` → a new key · 1 connection (Platform/aws-0)"),
        "{all}"
    );
    assert!(!all.contains("updated"), "{all}");
}

/// Every step a run can fail at (all but compensate and report).
const STEPS: &[Step] = Step::ALL.split_at(8).0;

#[test]
fn a_failure_at_each_step_names_the_step_the_error_the_keys_and_what_to_do() {
    for &step in STEPS {
        let report = run(vec![rotated("platform"), failed("billing", step)]);
        let v = render(&report);
        assert_eq!(header(&v), "keyrotor: 1 rotated, 1 FAILED", "{step}");
        let first = sections(&v)[0];
        assert!(
            first.starts_with(":x: *billing* FAILED at step *"),
            "failures come first: {first}"
        );
        assert!(
            first.contains(&format!("FAILED at step *{step}* (")),
            "{step}: {first}"
        );
        assert!(
            first.contains(&format!(
                "*Error:* {step}: Azure DevOps answered 401 Unauthorized"
            )),
            "{first}"
        );
        assert_has(
            first,
            &[
                "*What keyrotor did:* the new key AKIA…KEY2 was deleted; the old key AKIA…KEY1 is kept",
                "*Keys:* old `AKIA…KEY1` → new `AKIA…KEY2`",
                "• Platform/aws-1 holds `AKIA…KEY1` (old key)",
                "*Next:* fix the cause (Azure DevOps access, the PAT)",
                "after 2.0 s",
            ],
        );
        assert_eq!(
            v["text"],
            format!("keyrotor: 1 rotated, 1 FAILED — billing failed at {step}")
        );

        let text = render_text(&report);
        assert!(
            text.contains(&format!("✗ billing FAILED at step {step} (")),
            "{text}"
        );
        assert!(
            text.contains("Keys: old AKIA…KEY1 → new AKIA…KEY2"),
            "{text}"
        );
        for out in [all_text(&v), text] {
            assert!(!out.contains(OLD_FULL) && !out.contains(NEW_FULL), "{out}");
        }
    }
}

#[test]
fn a_partial_compensation_shows_which_connection_holds_which_key() {
    let mut t = failed("billing", Step::Confirm);
    t.compensation = Some(format!(
        "aws-0 now hold the new, verified key {}; the others still hold the old key, which is kept Active; the next run finishes the rotation",
        masked(NEW_FULL)
    ));
    t.endpoints = vec![
        endpoint("aws-0", Some(NEW_FULL)),
        endpoint("aws-1", Some(OLD_FULL)),
        endpoint("aws-2", None),
    ];
    let text = render_text(&run(vec![t]));
    assert!(
        text.contains("What keyrotor did: aws-0 now hold the new, verified key AKIA…KEY2;"),
        "{text}"
    );
    assert!(
        text.contains(
            "Connections now:\n\
             • Platform/aws-0 holds AKIA…KEY2 (new key)\n\
             • Platform/aws-1 holds AKIA…KEY1 (old key)\n\
             • Platform/aws-2 holds no key keyrotor could read"
        ),
        "{text}"
    );
}

#[test]
fn a_failure_without_compensation_says_nothing_needed_undoing() {
    let mut t = failed("billing", Step::Create);
    t.compensation = None;
    t.new_key = None;
    let all = all_text(&render(&run(vec![t])));
    assert_has(
        &all,
        &[
            "*What keyrotor did:* nothing needed undoing",
            "*Keys:* old `AKIA…KEY1`, no new key",
        ],
    );
}

#[test]
fn a_refusal_gives_its_reason_and_how_to_fix_it() {
    let why = "service connection 'aws-0' uses OIDC (useOIDC = true): it holds no key to rotate";
    let report = run(vec![refused("platform", why)]);
    let v = render(&report);
    assert_eq!(header(&v), "keyrotor: 1 REFUSED");
    let first = sections(&v)[0];
    assert!(
        first.starts_with(":no_entry: *platform* REFUSED at step *inspect*"),
        "{first}"
    );
    assert!(first.contains(&format!("*Why:* {why}")), "{first}");
    assert!(
        first.contains("*To fix:* fix what the reason names, then run keyrotor again"),
        "{first}"
    );
    assert!(
        !first.contains("Connections now"),
        "nothing changed, nothing to list: {first}"
    );
    assert_eq!(v["text"], "keyrotor: 1 REFUSED — platform refused");
    assert!(render_text(&report).contains("⊘ platform REFUSED at step inspect"));
}

#[test]
fn busy_nothing_due_and_invalid_targets_are_brief_with_their_reason() {
    let report = run(vec![
        brief("api", Outcome::Busy, "run 1b2c is rotating this target now"),
        brief(
            "web",
            Outcome::NothingDue,
            "the key is 3 days old, younger than min_key_age (30 days)",
        ),
        brief(
            "db",
            Outcome::Invalid,
            "the IAM user 'db-pipeline' does not exist",
        ),
    ]);
    let (v, all) = rendered(&report, "keyrotor: 1 nothing due, 1 busy, 1 INVALID");
    assert_has(
        &all,
        &[
            ":warning: *Invalid (1)*\n• *db* (at step inspect): the IAM user 'db-pipeline' does not exist — correct the configuration",
            ":hourglass_flowing_sand: *Busy, stood aside (1)*\n• *api*: run 1b2c is rotating this target now",
            ":zzz: *Nothing due (1)*\n• *web*: the key is 3 days old",
        ],
    );
    assert_eq!(sections(&v).len(), 1, "brief lines share one section");
}

#[test]
fn an_empty_run_says_so() {
    let v = render(&run(vec![]));
    assert_eq!(header(&v), "keyrotor: no targets");
    assert!(all_text(&v).contains("0 targets"));
}

#[test]
fn user_text_is_escaped_so_it_cannot_mention_or_link() {
    let mut t = failed("billing", Step::Push);
    t.error = Some("<!channel> Q&A <https://evil.example|click here> failed".into());
    let all = all_text(&render(&run(vec![t.clone()])));
    assert!(
        all.contains("&lt;!channel&gt; Q&amp;A &lt;https://evil.example|click here&gt; failed"),
        "{all}"
    );
    assert!(
        !all.contains("<!channel>") && !all.contains("<https://"),
        "{all}"
    );
    assert!(
        render_text(&run(vec![t])).contains("<!channel> Q&A <https://evil.example|click here>")
    );
}

/// Texts where a service could have echoed a secret: each is given one, and none comes out.
#[test]
fn secrets_echoed_into_free_text_are_masked_or_redacted() {
    let mut t = failed("billing", Step::Verify);
    t.error = Some(format!(
        "STS: the signature does not match; check the secret access key {SECRET_KEY} and signing method for {OLD_FULL}"
    ));
    t.compensation = Some(format!("deleted {NEW_FULL}; kept {OLD_FULL}"));
    t.next_step = Some(
        "check https://hooks.slack.com/services/T0123/B0456/abcdefSECRETpath789 and retry".into(),
    );
    t.old_key = Some(OLD_FULL.into()); // even unmasked where a masked id belongs
    t.endpoints[0].key = Some(NEW_FULL.into());
    let mut busy = brief(
        "api",
        Outcome::Busy,
        &format!("another run holds {NEW_FULL}"),
    );
    busy.reason = Some(format!(
        "pat abcdefghijklmnopqrstuvwxyz234567abcdefghijklmnopqrst in use by {NEW_FULL}"
    ));
    let report = run(vec![t, busy]);
    let json = render(&report).to_string();
    let text = render_text(&report);
    for out in [&json, &text] {
        for secret in [
            SECRET_KEY,
            OLD_FULL,
            NEW_FULL,
            "SECRETpath",
            "hooks.slack.com",
            "abcdefghijklmnop",
        ] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(
            out.contains("AKIA…KEY1") && out.contains("AKIA…KEY2"),
            "{out}"
        );
        assert!(out.contains("[redacted]"), "{out}");
    }
}

/// Known-safe input: the message holds what the report gave and words of its own, nothing that
/// could be a key id or a secret.
fn assert_no_secret_shapes(out: &str) {
    for (i, _) in out.match_indices("AKIA").chain(out.match_indices("ASIA")) {
        let rest: String = out[i..].chars().take(20).collect();
        let id_len = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        assert!(id_len < 16, "a full key id in the message: {rest}");
    }
    for token in out.split(|c: char| c.is_whitespace() || "`*'\"(),;".contains(c)) {
        let shaped = token.len() >= 32
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c));
        assert!(!shaped, "a secret-shaped token in the message: {token}");
    }
}

fn quiet() -> Observer {
    Arc::new(|_| {})
}

fn every_secret_of(sc: &Scenario) -> Vec<String> {
    let st = sc.fakes.state();
    let mut secrets = vec![sc.initial_key.1.clone()];
    secrets.extend(st.users.values().flatten().map(|k| k.secret.clone()));
    secrets.extend(st.endpoints.iter().filter_map(|e| e.password.clone()));
    for v in st.secrets.values().flatten() {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&v.value) {
            secrets.extend(
                m.values()
                    .filter_map(|x| x.as_str())
                    .filter(|s| s.len() >= 30)
                    .map(str::to_owned),
            );
        }
    }
    secrets
}

fn every_key_id_of(sc: &Scenario) -> Vec<String> {
    let st = sc.fakes.state();
    let mut ids = vec![sc.initial_key.0.clone()];
    ids.extend(st.created.iter().cloned());
    ids.extend(st.users.values().flatten().map(|k| k.id.clone()));
    ids
}

/// Reports made by the real engine against the fakes (a rotation, a failure at push with
/// compensation, a refusal): no secret the fake world holds, no full key id, reaches the message.
#[tokio::test(start_paused = true)]
async fn engine_reports_render_without_any_secret_of_the_world() {
    let opts = RunOptions {
        wait_for_drain: false,
        run_id: RunId::new(),
        force: false,
        dry_run: false,
        origin: "build-01".into(),
    };

    let ok = Scenario::new(2);
    let failing = Scenario::new(2);
    failing.fakes.state().ado_put_script.extend([
        None,
        Some(PortError::new(
            PortErrorKind::Unauthorized,
            format!(
                "Azure DevOps answered 401 for a PUT carrying {}",
                failing.initial_key.0
            ),
        )),
    ]);
    let refusing = Scenario::new(1);
    refusing.fakes.state().endpoints[0].oidc = true;

    let mut targets = Vec::new();
    let mut secrets = Vec::new();
    let mut ids = Vec::new();
    for sc in [&ok, &failing, &refusing] {
        let r = engine::run(
            &sc.fakes.ports(),
            &sc.policy,
            std::slice::from_ref(&sc.target),
            &opts,
            None,
            &quiet(),
        )
        .await;
        targets.extend(r.targets);
        secrets.extend(every_secret_of(sc));
        ids.extend(every_key_id_of(sc));
    }
    let outcomes: Vec<Outcome> = targets.iter().map(|t| t.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Rotated, Outcome::Failed, Outcome::Refused],
        "{targets:#?}"
    );
    assert!(targets[1].compensation.is_some(), "{:?}", targets[1]);
    assert!(secrets.len() >= 3 && ids.len() >= 3);

    let report = RunReport {
        run_id: opts.run_id.to_string(),
        origin: opts.origin.clone(),
        targets,
        notification: NotificationStatus::NotConfigured,
    };
    let v = render(&report);
    let text = render_text(&report);
    assert_eq!(header(&v), "keyrotor: 1 rotated, 1 FAILED, 1 REFUSED");
    assert!(text.contains("✗ platform FAILED at step push"), "{text}");
    for out in [&v.to_string(), &text] {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "secret leaked: {out}");
        }
        for id in &ids {
            assert!(!out.contains(id.as_str()), "full key id {id} in: {out}");
        }
        assert_no_secret_shapes(out);
    }
    assert!(
        text.contains(&masked(&ok.initial_key.0)),
        "the old key is named, masked: {text}"
    );
}

// ----- limits -----

/// Words that are no prefix of one another nor of anything the renderer writes: a cut word
/// shows up as a token that is a proper prefix of one of them.
const WORDS: [&str; 6] = [
    "Quokka",
    "Xylophone",
    "Zeppelin",
    "Quixotic",
    "Xenolith",
    "Zygomatic",
];

fn prose(words: usize, seed: usize) -> String {
    (0..words)
        .map(|i| WORDS[(i + seed) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_no_word_is_cut(v: &Value) {
    for t in texts(v) {
        for token in t.split(|c: char| !c.is_alphanumeric()) {
            let cut =
                WORDS.iter().any(|w| w.starts_with(token) && *w != token) && !token.is_empty();
            assert!(!cut, "a word cut to {token:?} in: {t}");
        }
        // A shortened text ends with an ellipsis right after a whole word (not after a space).
        for (i, e) in t.match_indices('…') {
            let after = t[i + e.len()..].chars().next();
            if after.is_none_or(char::is_whitespace) {
                let before = t[..i].chars().last();
                assert!(
                    before.is_some_and(|c| !c.is_whitespace()),
                    "an ellipsis after a space in: {t}"
                );
            }
        }
        // No escape is cut either.
        for (i, _) in t.match_indices('&') {
            let rest = &t[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "a cut escape in: {t}"
            );
        }
    }
}

fn assert_within_limits(v: &Value) {
    let b = blocks(v);
    assert!(b.len() <= 50, "{} blocks", b.len());
    for block in b {
        match block["type"].as_str().unwrap() {
            "header" => {
                let n = block["text"]["text"].as_str().unwrap().chars().count();
                assert!((1..=150).contains(&n), "header of {n} characters");
                assert_eq!(block["text"]["type"], "plain_text");
            }
            "section" => {
                let n = block["text"]["text"].as_str().unwrap().chars().count();
                assert!((1..=3000).contains(&n), "section of {n} characters");
                assert_eq!(block["text"]["type"], "mrkdwn");
            }
            "context" => {
                let els = block["elements"].as_array().unwrap();
                assert!((1..=10).contains(&els.len()));
                for e in els {
                    let n = e["text"].as_str().unwrap().chars().count();
                    assert!((1..=3000).contains(&n), "context element of {n} characters");
                }
            }
            other => panic!("unexpected block {other}"),
        }
    }
    let n = v["text"].as_str().unwrap().chars().count();
    assert!((1..=3000).contains(&n), "fallback text of {n} characters");
}

fn name(i: usize) -> String {
    format!("tgt-{i:04}")
}

/// Every target is either named in a block or counted in "…and N more"; the header counts all.
fn assert_every_target_accounted_for(v: &Value, n: usize) {
    let all = texts(v);
    let blocks_text: String = all[..all.len() - 1].join("\n");
    let named = (0..n)
        .filter(|i| blocks_text.contains(&format!("*{}*", name(*i))))
        .count();
    let trailer = all[all.len() - 2].strip_prefix("…and ");
    let more = trailer.map_or(0, |t| {
        let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<usize>().unwrap()
    });
    assert_eq!(named + more, n, "{named} named + {more} more");
    let counted: usize = header(v)
        .trim_start_matches("keyrotor: ")
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, n, "{}", header(v));
}

fn long_failure(i: usize) -> TargetReport {
    let mut t = failed(&name(i), STEPS[i % STEPS.len()]);
    t.error = Some(prose(400, i));
    t.compensation = Some(prose(300, i + 1));
    t.next_step = Some(prose(120, i + 2));
    t.endpoints = (0..40)
        .map(|e| EndpointReport {
            endpoint: format!("Platform/{} {}", prose(3, e), e),
            id: keyrotor_core::domain::EndpointId::parse(&format!("id-{e}")).unwrap(),
            key: Some(masked(if e % 2 == 0 { OLD_FULL } else { NEW_FULL })),
        })
        .collect();
    t
}

fn mixed(i: usize) -> TargetReport {
    let mut t = if i.is_multiple_of(5) {
        long_failure(i)
    } else if i.is_multiple_of(7) {
        refused(&name(i), &prose(80, i))
    } else if i.is_multiple_of(11) {
        brief(&name(i), Outcome::Invalid, &prose(60, i))
    } else if i.is_multiple_of(13) {
        brief(
            &name(i),
            Outcome::Busy,
            "another run is rotating this target now",
        )
    } else if i.is_multiple_of(3) {
        brief(&name(i), Outcome::NothingDue, &prose(50, i))
    } else {
        rotated(&name(i))
    };
    t.name = name(i);
    t
}

#[test]
fn limits_hold_for_runs_of_every_size() {
    type Make = fn(usize) -> TargetReport;
    let shapes: [(&str, Make); 3] = [
        ("all rotated", |i| rotated(&name(i))),
        ("mixed", mixed),
        ("all failed at length", long_failure),
    ];
    let mut cut_somewhere = false;
    for n in [1, 10, 200, 1000] {
        for (shape, make) in shapes {
            let report = run((0..n).map(make).collect());
            let v = render(&report);
            assert_within_limits(&v);
            assert_no_word_is_cut(&v);
            assert_every_target_accounted_for(&v, n);
            let failures = report
                .targets
                .iter()
                .filter(|t| t.outcome == Outcome::Failed)
                .count();
            if failures > 0 {
                assert!(
                    sections(&v)[0].starts_with(":x: *"),
                    "{shape}/{n}: failures first"
                );
            }
            if n <= 10 {
                assert!(
                    !all_text(&v).contains(" more ("),
                    "{shape}/{n}: a small run is shown whole"
                );
            }
            if n == 1000 {
                assert!(
                    all_text(&v).contains(" more ("),
                    "{shape}/{n}: a large run is summarised"
                );
            }
            cut_somewhere |= WORDS
                .iter()
                .any(|w| all_text(&v).contains(&format!("{w}…")));

            // The preview is the same message.
            let text = render_text(&report);
            assert!(text.starts_with(header(&v)), "{shape}/{n}");
            let trailer = blocks(&v).last().unwrap();
            if trailer["type"] == "context" && blocks(&v).len() > 2 {
                let t = trailer["elements"][0]["text"].as_str().unwrap();
                let summary = &t[..t.find(')').unwrap() + 1];
                assert!(text.contains(summary), "{shape}/{n}: {summary}");
            }
        }
    }
    assert!(
        cut_somewhere,
        "the long texts were shortened, with an ellipsis after a whole word"
    );
}

#[test]
fn a_single_enormous_failure_is_shortened_not_dropped() {
    let mut t = long_failure(0);
    t.error = Some(prose(5000, 0).replace("Quokka", "Quokka&<>"));
    let v = render(&run(vec![t]));
    assert_within_limits(&v);
    assert_no_word_is_cut(&v);
    let first = sections(&v)[0];
    assert!(first.contains("*Error:* "), "{first}");
    assert!(
        first.contains("*Next:* "),
        "the way forward survives: {first}"
    );
    assert!(
        first.contains("• …and "),
        "connections beyond the first are counted: {first}"
    );
}

/// The message of `report`, which must have `expected_header`, and all its text.
fn rendered(report: &RunReport, expected_header: &str) -> (Value, String) {
    let v = render(report);
    assert_eq!(header(&v), expected_header);
    let all = all_text(&v);
    (v, all)
}

/// Fails unless `text` holds every one of `parts`, naming the first that is missing.
fn assert_has(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}
