//! What the cases share: running the binary without the trace check (a config error is found
//! before anything is logged), the "one sentence that names it" checks, the before/after
//! state, and the setup helpers the `binary` suite's `env.rs` lacks (another seed for the
//! emulator, an edited config, a second IAM key).

use std::process::Stdio;
use std::time::Duration;

use keyrotor_core::domain::AccessKeyId;
use keyrotor_core::ports::CallerIdentity;
use keyrotor_testkit::ado::{AdoEmulator, EmulatorState, OrgSeed, Scope, Seed};
use secrecy::SecretString;
use serde_json::Value;

use crate::env::{AwsState, EP_ID, Env, ORG, Output, PAT, USER, permissions, shared_endpoint};
use crate::leaks;

/// The longest one run of the binary may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// The arguments of the two forms every case runs.
pub const JSON: &[&str] = &["rotate", "--force", "--output", "json"];
pub const TEXT: &[&str] = &["rotate", "--force"];

/// Runs `keyrotor ARGS --config <the env's config>` exactly like `Env::run` (moto's
/// environment only, `RUST_LOG=trace`), without its check that trace logging took effect: a
/// config that does not parse stops the binary before it logs anything. Every output of the
/// case so far (`history`) and every Slack post is scanned for leaks afterwards.
pub async fn run_untraced(env: &Env, args: &[&str], history: &mut Vec<Output>) -> Output {
    let mut argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    argv.insert(1, "--config".into());
    argv.insert(2, env.config.to_str().unwrap().to_owned());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"));
    cmd.args(&argv)
        .env_clear()
        .envs(env.moto.env())
        .env("RUST_LOG", "trace")
        .env("HOME", &env.dir)
        .env("AWS_CONFIG_FILE", env.dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            env.dir.join("no-aws-credentials"),
        )
        .current_dir(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("the keyrotor binary starts");
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("keyrotor {argv:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("waiting for keyrotor");
    let output = Output {
        args: argv,
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("keyrotor was ended by a signal: {:?}", out.status)),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    env.learn().await;
    history.push(output.clone());
    leaks::check(&env.known.lock().unwrap(), history, &env.posts());
    output
}

/// Everything that must not change: IAM and the secret as moto holds them, and everything the
/// emulator holds (endpoints with their credentials, permissions, history).
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    pub aws: AwsState,
    pub ado: EmulatorState,
}

pub async fn world(env: &Env) -> World {
    World {
        aws: env.aws_state().await,
        ado: env.ado_state(),
    }
}

/// The lines of stderr that are the binary's own error message (not log lines).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("Error:"))
        .collect()
}

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

/// Rewrites the env's config file.
pub fn edit_config(env: &Env, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the config edit changed nothing");
    std::fs::write(&env.config, edited).unwrap();
}

/// Replaces `from` (which must occur exactly once) by `to` in the config.
pub fn replace_in_config(env: &Env, from: &str, to: &str) {
    edit_config(env, |text| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} occurs once in the config:\n{text}"
        );
        text.replace(from, to)
    });
}

/// The organization `spawn_env` seeds (the shared endpoint holding the initial key, its
/// pipeline permissions, both projects), with the PAT at `scope`.
pub fn default_org(env: &Env, scope: Scope) -> OrgSeed {
    OrgSeed::new(ORG)
        .pat(PAT, scope)
        .project("Platform")
        .project("Web")
        .endpoint(shared_endpoint(&env.initial_key, &env.initial_secret))
        .pipeline_permissions(EP_ID, permissions())
}

/// Replaces the env's emulator with one started from `org`, and points the config at it.
pub async fn reseed(env: &mut Env, org: OrgSeed) {
    let ado = AdoEmulator::start(Seed::new().org(org))
        .await
        .expect("the emulator starts with the new seed");
    let (old_url, new_url) = (env.ado.org_url(ORG), ado.org_url(ORG));
    let old = std::mem::replace(&mut env.ado, ado);
    old.shutdown().await;
    replace_in_config(env, &old_url, &new_url);
    env.learn().await;
}

/// Creates a second access key for the user; the leak scans learn its secret.
pub async fn second_key(env: &Env) -> (String, String) {
    let created = env
        .iam
        .create_access_key()
        .user_name(USER)
        .send()
        .await
        .unwrap();
    let k = created.access_key().unwrap();
    let (id, secret) = (
        k.access_key_id().to_owned(),
        k.secret_access_key().to_owned(),
    );
    env.add_secret(&secret);
    env.known.lock().unwrap().key_ids.insert(id.clone());
    (id, secret)
}

/// Signs one `sts:GetCallerIdentity` with this key (keyrotor's own STS adapter), so that
/// `GetAccessKeyLastUsed` reports a date for it.
pub async fn use_key(env: &Env, id: &str, secret: &str) {
    let aws = keyrotor_aws::Aws::new(&env.moto.sdk_config().await);
    let arn = aws
        .caller_arn(
            &AccessKeyId::parse(id).unwrap(),
            &SecretString::from(secret.to_owned()),
        )
        .await
        .expect("GetCallerIdentity signed with the second key");
    assert!(arn.ends_with(&format!(":user/{USER}")), "{arn}");
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
