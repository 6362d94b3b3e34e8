//! Bad input gets a clear error and changes nothing: a table of cases (`cases`), each run
//! against the real `keyrotor` binary in a `TestEnv` of its own.
//!
//! Every case sets something up wrong (the config text, the emulator's seed, the AWS state),
//! runs `keyrotor rotate --force --output json` and then the text form `keyrotor rotate
//! --force`, and checks:
//!
//! - the exit code (README: 2 bad usage or configuration, 3 refused as unsafe, 1 a failed and
//!   compensated rotation);
//! - the error is ONE sentence on ONE line and NAMES the offending thing: `file:line` and the
//!   field for config errors (on stderr, as `error: …keyrotor.toml:LINE: FIELD: …`), the IAM
//!   user, parameter, connection or key otherwise (in the report: JSON `error`/`reason`, and
//!   the same line in the text report);
//! - nothing changed: IAM's key list (with status), the secret's versions and stages, and
//!   everything the emulator holds are compared before and after, and no write request
//!   reached Azure DevOps (the one case where keyrotor can only learn at the PUT that it may
//!   not write says precisely what may and may not have changed);
//! - no secret leaked into any output (the env's leak scan, at `RUST_LOG=trace`).
//!
//! `cargo test -p keyrotor --test cli badinput -- --nocapture` prints one line per case and
//! `bad input: N cases, N passed`.

mod cases;

use keyrotor_core::domain::AccessKeyId;
use keyrotor_core::ports::CallerIdentity;
use keyrotor_testkit::env::{Output, TestEnv, USER};
use secrecy::SecretString;
use serde_json::Value;

/// The arguments of the two forms every case runs.
pub const JSON: &[&str] = &["rotate", "--force", "--output", "json"];
pub const TEXT: &[&str] = &["rotate", "--force"];

/// Panics unless `msg` is one sentence on one line: not empty, no line break, and no sentence
/// boundary inside (". " / "! " / "? " followed by a capital letter).
pub fn assert_one_sentence(msg: &str, context: &str) {
    assert!(!msg.trim().is_empty(), "the error is empty: {context}");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "the error spans more than one line: {msg:?}\n{context}"
    );
    let chars: Vec<char> = msg.chars().collect();
    for w in chars.windows(3) {
        assert!(
            !(matches!(w[0], '.' | '!' | '?') && w[1] == ' ' && w[2].is_uppercase()),
            "the error is more than one sentence: {msg:?}\n{context}"
        );
    }
}

/// Panics unless `msg` contains every one of `names`.
pub fn assert_names(msg: &str, names: &[String], context: &str) {
    for n in names {
        assert!(
            msg.contains(n.as_str()),
            "the error does not name {n:?}: {msg:?}\n{context}"
        );
    }
}

/// The line number in `…keyrotor.toml:LINE: …`, if the message has one.
pub fn config_line(msg: &str) -> Option<usize> {
    let at = msg.find("keyrotor.toml:")? + "keyrotor.toml:".len();
    let digits: String = msg[at..].chars().take_while(char::is_ascii_digit).collect();
    if msg[at + digits.len()..].starts_with(':') {
        digits.parse().ok()
    } else {
        None
    }
}

/// The single target of a run report.
pub fn the_target(o: &Output) -> Value {
    let doc = o.json();
    let targets = doc["targets"].as_array().cloned().unwrap_or_default();
    assert_eq!(targets.len(), 1, "one target in the report: {}", o.show());
    targets[0].clone()
}

/// What a target's report says went wrong: `error`, else `reason`.
pub fn message_of(t: &Value) -> String {
    t["error"]
        .as_str()
        .or_else(|| t["reason"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Signs one `sts:GetCallerIdentity` with this key (keyrotor's own STS adapter, straight at
/// moto), so that `GetAccessKeyLastUsed` reports a date for it.
pub async fn use_key(env: &TestEnv, id: &str, secret: &str) {
    let aws = keyrotor_aws::Aws::new(&env.sdk);
    let arn = aws
        .caller_arn(
            &AccessKeyId::parse(id).unwrap(),
            &SecretString::from(secret.to_owned()),
        )
        .await
        .expect("GetCallerIdentity signed with the second key");
    assert_eq!(arn.iam_user_name(), Some(USER), "{arn}");
    let used = env
        .iam
        .get_access_key_last_used()
        .access_key_id(id)
        .send()
        .await
        .unwrap();
    assert!(
        used.access_key_last_used()
            .and_then(|u| u.last_used_date())
            .is_some(),
        "moto records the use of the second key"
    );
}

/// A secret, shown in a failure message without giving it away.
pub fn hint(secret: &str) -> String {
    let head: String = secret.chars().take(3).collect();
    format!("{head}… ({} chars)", secret.chars().count())
}
