//! `keyrotor check`: the read-only preflight, and errors that name the fix.
//!
//! Every case runs the real binary against the env (moto behind the strict proxy, the Azure
//! DevOps emulator, the Slack sink), in both output forms, and checks: the exit code the README
//! documents; exactly the expected `✗` line, one sentence naming its fix (the same message in
//! the text and in the JSON); and that nothing was written: IAM, the secret and the emulator are
//! as before, every AWS request the proxy saw is a read, every Azure DevOps request a GET, and
//! Slack got nothing but the probe (`{}`, refused as a message). The env scans every output for
//! secrets.

use std::collections::BTreeSet;

use aws_sdk_ssm::types::ParameterType;
use keyrotor_testkit::ado::Scope;
use keyrotor_testkit::env::{
    EP_NAME, Output, Snapshot, TestEnv, USER, WEBHOOK_PARAM, WRONG_PAT, isolated_home, on_oidc,
};
use serde_json::{Value, json};

use crate::badinput::assert_one_sentence;
use crate::{setup, spawn_env};

/// Every AWS operation `keyrotor check` may send: reads only.
const READS: [&str; 7] = [
    "GetCallerIdentity",
    "SimulatePrincipalPolicy",
    "ListAccessKeys",
    "GetAccessKeyLastUsed",
    "DescribeSecret",
    "GetSecretValue",
    "GetParameter",
];

/// The two forms of one check run, with extra environment variables.
struct Checked {
    text: Output,
    json: Output,
}

impl Checked {
    fn doc(&self) -> Value {
        self.json.json()
    }

    /// The lines of one status in the JSON.
    fn lines(&self, status: &str) -> Vec<Value> {
        self.doc()["checks"]
            .as_array()
            .expect("checks is a list")
            .iter()
            .filter(|l| l["status"] == status)
            .cloned()
            .collect()
    }

    fn show(&self) -> String {
        format!("{}\n{}", self.text.show(), self.json.stdout)
    }

    /// Checks that the one failed check is `check`, with exactly the message `expected` (and
    /// all that `the_failure` checks).
    fn fails_with(&self, code: i32, check: &str, expected: &str) {
        assert_eq!(self.the_failure(code, check), expected, "{}", self.show());
    }

    /// The message of the one failed check, which must be `check`, with the same exit code
    /// in both forms and the message on one line of the text form after a `✗`.
    fn the_failure(&self, code: i32, check: &str) -> String {
        assert_eq!(self.text.code, code, "{}", self.show());
        assert_eq!(self.json.code, code, "{}", self.show());
        let failed = self.lines("failed");
        assert_eq!(failed.len(), 1, "exactly one ✗: {}", self.show());
        let f = &failed[0];
        assert_eq!(f["exit_code"], code, "{}", self.show());
        let msg = f["message"].as_str().unwrap().to_owned();
        assert_one_sentence(&msg, &self.show());
        let in_text: Vec<&str> = self
            .text
            .stdout
            .lines()
            .filter(|l| l.starts_with('✗'))
            .collect();
        assert_eq!(in_text.len(), 1, "{}", self.show());
        assert!(in_text[0].ends_with(&msg), "{}", self.show());
        assert_eq!(self.doc()["ok"], false, "{}", self.show());
        assert_eq!(f["check"], check, "{}", self.show());
        msg
    }
}

/// Runs both forms. `traced`: the run sends requests, so its trace log must show the HTTP stack
/// (a run that fails before sending anything logs none; its output is still scanned).
async fn check(env: &TestEnv, vars: &[(&str, &str)]) -> Checked {
    check_with(env, vars, true).await
}

async fn check_with(env: &TestEnv, vars: &[(&str, &str)], traced: bool) -> Checked {
    let config = env.config.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for extra in [&[][..], &["--output", "json"][..]] {
        let mut args = vec!["check", "--config", config.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = env.cmd(&args);
        if !traced {
            cmd = cmd.untraced();
        }
        for (k, v) in vars {
            cmd = cmd.env(k, *v);
        }
        out.push(cmd.run().await);
    }
    let json = out.pop().unwrap();
    let text = out.pop().unwrap();
    Checked { text, json }
}

/// Nothing changed, and every request was a read (the Slack probe aside, which posts nothing).
async fn assert_read_only(env: &TestEnv, before: &Snapshot) {
    env.assert_unchanged(before).await;
    let ops: BTreeSet<String> = env.proxy().seen().into_iter().map(|s| s.op).collect();
    let reads: BTreeSet<String> = READS.iter().map(|s| (*s).to_owned()).collect();
    assert!(
        ops.is_subset(&reads),
        "every AWS request is a read: {:?}",
        ops.difference(&reads).collect::<Vec<_>>()
    );
    let methods: BTreeSet<String> = env.ado.requests().into_iter().map(|r| r.method).collect();
    assert!(
        methods.iter().all(|m| m == "GET"),
        "every Azure DevOps request is a GET: {methods:?}"
    );
    for p in env.posts() {
        assert_eq!(
            (p.body.as_str(), p.status),
            ("{}", 400),
            "Slack got only the probe, refused as a message"
        );
    }
}

/// A new access key of `user`: its id and secret, the secret registered as one the output
/// must never show.
async fn key_of(env: &TestEnv, user: &str) -> (String, String) {
    let created = env
        .iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .unwrap();
    let key = created.access_key().unwrap();
    let secret = key.secret_access_key().to_owned();
    env.add_secret(&secret);
    (key.access_key_id().to_owned(), secret)
}

/// Checks that the run only read (as `assert_read_only`), then stops the env.
async fn stop_read_only(env: TestEnv, before: &Snapshot) {
    assert_read_only(&env, before).await;
    env.stop().await;
}

#[tokio::test]
async fn check_passes_on_a_sound_setup_and_sends_only_reads() {
    let env = spawn_env().await;
    let before = env.snapshot().await;
    let c = check(&env, &[]).await;
    assert_eq!(c.text.code, 0, "{}", c.show());
    assert_eq!(c.json.code, 0, "{}", c.show());
    assert_eq!(c.doc()["ok"], true, "{}", c.show());
    assert!(c.lines("failed").is_empty(), "{}", c.show());
    let key = keyrotor_testkit::env::masked(&env.initial_key);
    for shown in [
        "✓ AWS region: us-east-1",
        "✓ AWS credentials: arn:aws:",
        "✓ ado.pat: ssm:/azuredevops/service/connection/pat resolves",
        "✓ Azure DevOps PAT: authenticates to",
        "✓ Slack webhook: answers as a live incoming webhook (nothing was posted)",
        &format!("✓ platform-prod: IAM user: '{USER}' exists with 1 key: {key} (Active"),
        &format!(
            "✓ platform-prod: secret: '/azure/devops/agent/iam/accesskey' holds keyrotor's JSON for {key}"
        ),
        &format!(
            "✓ platform-prod: connection: 'Platform/{EP_NAME}' is AWS, key-based and holds {key}, a key of '{USER}'"
        ),
        &format!("✓ platform-prod: connection: 'Web/{EP_NAME}' is AWS"),
        "a rotation can run",
    ] {
        assert!(c.text.stdout.contains(shown), "{shown}\n{}", c.show());
    }
    // It really looked, and only looked.
    let ops: BTreeSet<String> = env.proxy().seen().into_iter().map(|s| s.op).collect();
    for op in [
        "GetCallerIdentity",
        "ListAccessKeys",
        "DescribeSecret",
        "GetSecretValue",
        "GetParameter",
    ] {
        assert!(ops.contains(op), "{op} was called: {ops:?}");
    }
    let paths: Vec<String> = env.ado.requests().into_iter().map(|r| r.path).collect();
    assert!(
        paths.iter().any(|p| p.ends_with("/_apis/connectionData")),
        "{paths:?}"
    );
    assert_eq!(env.posts().len(), 2, "one probe per run");
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn no_region_is_named_with_how_to_set_it_and_logs_stay_quiet() {
    let env = spawn_env().await;
    let before = env.snapshot().await;
    // As a new user's shell: no region anywhere, the instance-metadata probe on (what printed
    // the long WARN dumps), no RUST_LOG.
    let unset = ["AWS_REGION", "AWS_EC2_METADATA_DISABLED", "RUST_LOG"];
    let quiet = |o: &Output| {
        assert!(
            !o.stderr.contains("WARN") && o.stderr.lines().all(|l| l.chars().count() < 300),
            "no SDK log dump at the default level: {}",
            o.show()
        );
    };
    let config = env.config.to_string_lossy().into_owned();
    let mut runs = Vec::new();
    for form in [&[][..], &["--output", "json"][..]] {
        let mut args = vec!["check", "--config", config.as_str()];
        args.extend_from_slice(form);
        runs.push(spawn(&env, &args, &[], &unset).await);
    }
    let json = runs.pop().unwrap();
    let text = runs.pop().unwrap();
    for o in [&text, &json] {
        quiet(o);
        assert_no_secrets(&env, o, &[]);
    }
    let c = Checked { text, json };
    let msg = c.the_failure(2, "AWS region");
    assert_eq!(msg, keyrotor_aws::NO_REGION);

    // `plan` says the same, first and alone, and stays as quiet.
    let plan = spawn(&env, &["plan", "--config", &config], &[], &unset).await;
    assert_eq!(plan.code, 2, "{}", plan.show());
    assert_eq!(
        plan.errors(),
        vec![format!("error: {}", keyrotor_aws::NO_REGION)],
        "{}",
        plan.show()
    );
    quiet(&plan);
    assert_no_secrets(&env, &plan, &[]);
    // The probes did happen: at RUST_LOG=debug they are there to see.
    let debug = spawn(
        &env,
        &["plan", "--config", &config],
        &[("RUST_LOG", "debug")],
        &unset[..2],
    )
    .await;
    assert!(
        debug.stderr.contains("aws_config::imds"),
        "the instance-metadata probe logs at debug: {}",
        debug.show()
    );
    assert_no_secrets(&env, &debug, &[]);
    println!(
        "no region: check {:.1} s, plan {:.1} s, plan at debug {:.1} s ({} stderr lines, {} at the default level)",
        c.text.elapsed.as_secs_f64(),
        plan.elapsed.as_secs_f64(),
        debug.elapsed.as_secs_f64(),
        debug.stderr.lines().count(),
        plan.stderr.lines().count()
    );
    assert_read_only(&env, &before).await;
    assert!(env.proxy().seen().is_empty(), "nothing reached AWS");
    env.stop().await;
}

#[tokio::test]
async fn no_credentials_are_named_with_where_the_sdk_looked() {
    let env = spawn_env().await;
    let before = env.snapshot().await;
    let c = check_with(
        &env,
        &[("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
        false,
    )
    .await;
    let msg = c.the_failure(2, "AWS credentials");
    assert!(
        msg.starts_with("STS GetCallerIdentity: no AWS credentials were found: the SDK looked in the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), profile 'default' in "),
        "{msg}"
    );
    assert!(
        msg.contains("no-aws-credentials"),
        "the file it read: {msg}"
    );
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() {
    let env = spawn_env().await;
    let before = env.snapshot().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let expected = format!(
        "STS GetCallerIdentity: could not connect to {closed} (AWS_ENDPOINT_URL): check the address, the network and any proxy"
    );
    let c = check(&env, &[("AWS_ENDPOINT_URL", &closed)]).await;
    c.fails_with(1, "AWS credentials", &expected);
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn a_missing_permission_is_named_and_the_unavailable_simulation_said_so() {
    let env = spawn_env().await;
    // A user that may do everything check reads, except in Secrets Manager.
    let checker = "keyrotor-checker";
    env.iam
        .create_user()
        .user_name(checker)
        .send()
        .await
        .unwrap();
    let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*",
        "Action": ["sts:GetCallerIdentity", "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed",
                   "iam:SimulatePrincipalPolicy", "ssm:GetParameter", "kms:Decrypt"]}]});
    env.iam
        .put_user_policy()
        .user_name(checker)
        .policy_name("check-without-secrets-manager")
        .policy_document(policy.to_string())
        .send()
        .await
        .unwrap();
    let (id, secret) = key_of(&env, checker).await;
    let before = env.snapshot().await;

    // With moto's IAM enforcement on, the env's own reads (moto's dummy credentials) would be
    // refused, so these two runs start the binary themselves, with the env's environment, and
    // scan their output for every secret involved.
    env.moto.enforce_iam(true).await.unwrap();
    let config = env.config.to_string_lossy().into_owned();
    let set = [
        // moto itself: it checks signatures once enforcement is on, and a request re-sent by
        // the proxy no longer matches its signature (the Host differs).
        ("AWS_ENDPOINT_URL", env.moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
    ];
    let mut runs = Vec::new();
    for form in [&[][..], &["--output", "json"][..]] {
        let mut args = vec!["check", "--config", config.as_str()];
        args.extend_from_slice(form);
        runs.push(spawn(&env, &args, &set, &[]).await);
    }
    env.moto.enforce_iam(false).await.unwrap();
    let json = runs.pop().unwrap();
    let text = runs.pop().unwrap();
    for o in [&text, &json] {
        assert_no_secrets(&env, o, &[&secret]);
        assert!(o.stderr.contains(" TRACE "), "traced: {}", o.show());
    }
    let c = Checked { text, json };
    println!("{}", c.text.stdout);

    let msg = c.the_failure(2, "secret");
    // moto answers a JSON-protocol service's refusal in XML, which the SDK cannot read as an
    // error code: the 403 alone says it (AWS itself answers AccessDeniedException, which
    // gets the same fix after its own message).
    assert_eq!(
        msg,
        "Secrets Manager DescribeSecret: access denied (HTTP 403): the AWS credentials in use need secretsmanager:DescribeSecret; deploy/README.md lists every permission"
    );
    // The caller is a real IAM user, so the simulation was tried: moto 5.2.5 does not offer
    // iam:SimulatePrincipalPolicy, and check says so instead of guessing.
    let permissions: Vec<Value> = c
        .lines("not-checked")
        .into_iter()
        .filter(|l| l["check"] == "permissions")
        .collect();
    assert_eq!(permissions.len(), 1, "{}", c.show());
    let why = permissions[0]["message"].as_str().unwrap();
    assert!(
        why.starts_with(
            "not checked, the simulation is not available here (IAM SimulatePrincipalPolicy: "
        ),
        "{why}"
    );
    assert!(
        c.text.stdout.contains(&format!(
            "✓ AWS credentials: arn:aws:iam::123456789012:user/{checker}"
        )),
        "{}",
        c.show()
    );
    // Read only: IAM, the secret and the emulator as before, Azure DevOps only read, Slack only
    // probed (the AWS requests went straight to moto, so the proxy saw none to classify).
    assert!(env.proxy().seen().is_empty());
    stop_read_only(env, &before).await;
}

/// Runs `keyrotor ARGS` as `env.cmd` would (the env's environment, the AWS proxy, trace logs),
/// with `set` added and `unset` removed, for what `env.cmd` cannot do: remove a variable, or
/// run while moto refuses the env's own reads. The caller scans the output
/// ([`assert_no_secrets`]).
async fn spawn(env: &TestEnv, args: &[&str], set: &[(&str, &str)], unset: &[&str]) -> Output {
    let started = std::time::Instant::now();
    let mut cmd = tokio::process::Command::new(crate::binary());
    cmd.args(args)
        .env_clear()
        .envs(env.moto.env())
        .env("AWS_ENDPOINT_URL", env.proxy().endpoint())
        .env("RUST_LOG", "trace");
    isolated_home(&mut cmd, &env.dir)
        .envs(set.iter().copied())
        .current_dir(&env.dir);
    for k in unset {
        cmd.env_remove(k);
    }
    let out = cmd.output().await.expect("the keyrotor binary runs");
    Output {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        code: out.status.code().expect("keyrotor exited"),
        killed: false,
        triggered: false,
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// No secret of the env (the PAT, the key's secret, the webhook URL) nor any of `more` is in
/// the output of a run started by [`spawn`].
fn assert_no_secrets(env: &TestEnv, o: &Output, more: &[&str]) {
    let sink = env.slack();
    let url = sink.webhook_url();
    let known = [
        keyrotor_testkit::env::PAT,
        env.initial_secret.as_str(),
        url.as_str(),
        sink.webhook_secret(),
    ];
    for s in known.iter().chain(more) {
        assert!(
            !o.stdout.contains(s) && !o.stderr.contains(s),
            "a secret leaked: {}",
            o.show()
        );
    }
}

#[tokio::test]
async fn an_unknown_connection_is_named() {
    let env = spawn_env().await;
    env.replace_in_config(
        &format!("{{ project = \"Platform\", name = \"{EP_NAME}\" }}"),
        "{ project = \"Platform\", name = \"aws-nope\" }",
    );
    let before = env.snapshot().await;
    let c = check(&env, &[]).await;
    let msg = c.the_failure(2, "connection");
    assert!(
        msg.starts_with("no service connection named 'aws-nope' in project 'Platform' of ")
            && msg.ends_with(": correct target.endpoints (the project, and the name or id) or create the connection"),
        "{msg}"
    );
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn a_refused_pat_is_named_once() {
    let env = spawn_env().await;
    env.set_pat_parameter(WRONG_PAT).await;
    let before = env.snapshot().await;
    let c = check(&env, &[]).await;
    let msg = c.the_failure(2, "Azure DevOps PAT");
    assert!(
        msg.ends_with("create a PAT with the scope Service Connections (Read, query & manage) and store it where ado.pat points"),
        "{msg}"
    );
    assert!(
        c.text.stdout.contains("– platform-prod: connections: 2 service connection(s) not checked: there is no PAT that"),
        "{}",
        c.show()
    );
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn an_oidc_connection_is_refused_as_unsafe() {
    let mut env = spawn_env().await;
    let mut org = env.org_seed(Scope::Manage);
    on_oidc(&mut org.endpoints[0]);
    env.reseed(org).await;
    let before = env.snapshot().await;
    let c = check(&env, &[]).await;
    let failed = c.lines("failed");
    // The connection is shared into both projects the target lists: one ✗ each.
    assert_eq!(failed.len(), 2, "{}", c.show());
    assert_eq!(c.text.code, 3, "{}", c.show());
    for f in &failed {
        let msg = f["message"].as_str().unwrap();
        assert_one_sentence(msg, &c.show());
        assert_eq!(
            msg,
            format!(
                "service connection '{EP_NAME}' uses OIDC (useOIDC = true): it holds no key to rotate: remove it from target.endpoints"
            )
        );
    }
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn a_connection_holding_another_users_key_is_named() {
    let mut env = spawn_env().await;
    let other = "someone-else";
    env.iam.create_user().user_name(other).send().await.unwrap();
    let (id, secret) = key_of(&env, other).await;
    env.add_listed_connection("aws-theirs", (&id, &secret))
        .await;
    let before = env.snapshot().await;
    let masked = keyrotor_testkit::env::masked(&id);
    let expected = format!(
        "'Platform/aws-theirs' holds {masked}, a key of IAM user '{other}', not a key of '{USER}': list the connection under the target of the key's user, or put a key of '{USER}' in it"
    );
    let c = check(&env, &[]).await;
    c.fails_with(3, "connection", &expected);
    stop_read_only(env, &before).await;
}

#[tokio::test]
async fn an_invalid_webhook_is_named_without_posting() {
    let env = spawn_env().await;
    let revoked = format!(
        "{}/services/T00000000/B00000000/revoked0webhook0secret",
        env.slack().base_url()
    );
    env.add_secret(&revoked);
    env.ssm
        .put_parameter()
        .name(WEBHOOK_PARAM)
        .value(&revoked)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let before = env.snapshot().await;
    let c = check(&env, &[]).await;
    let msg = c.the_failure(4, "Slack webhook");
    assert_eq!(
        msg,
        "Slack answered the webhook with HTTP 404 no_service: the webhook was disabled or removed; create a new one and store its URL where keyrotor reads it"
    );
    env.assert_unchanged(&before).await;
    let posts = env.posts();
    assert_eq!(posts.len(), 2, "one probe per run");
    assert!(
        posts.iter().all(|p| p.body == "{}" && p.status == 404),
        "only the probe, to the dead hook"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_check_without_slack_or_a_target_filter_error_still_says_one_thing() {
    let env = setup().slack(false).start().await;
    let c = check(&env, &[]).await;
    assert_eq!(c.text.code, 0, "{}", c.show());
    assert!(c.text.stdout.contains("no Slack"), "{}", c.show());
    let config = env.config.to_string_lossy().into_owned();
    let o = env
        .cmd(&["check", "--config", &config, "--target", "nope"])
        .untraced()
        .run()
        .await;
    assert_eq!(o.code, 2, "{}", o.show());
    assert!(
        o.stdout
            .contains("✗ config: there is no target named 'nope' in the config"),
        "{}",
        o.show()
    );
    env.stop().await;
}
