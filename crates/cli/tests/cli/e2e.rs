//! The commands end to end: `rotate`, `plan`, `status`, `init`, `sandbox` and `audit` against
//! moto (real AWS SDK calls, through the strict proxy) and the Azure DevOps emulator, with two
//! connections of their own (`aws-prod` in Platform, `aws-web` in Web) and no Slack; the secret
//! as keyrotor's JSON, the older design's bare secret, or not there yet.

use keyrotor_core::invariants::World;
use keyrotor_testkit::env::{
    Connections, Output, PAT, PAT_PARAM, SecretStart, Setup, TestEnv as Env, USER, masked,
};
use keyrotor_testkit::moto;
use serde_json::json;

use crate::setup;

/// No Slack; `aws-prod` in Platform and `aws-web` in Web.
fn e2e_setup() -> Setup {
    setup().slack(false).connections(Connections::Separate)
}

async fn spawn_env(secret: SecretStart) -> Env {
    e2e_setup().secret(secret).start().await
}

/// A forced `rotate` (text output) from a secret that starts as `secret`: exit 0. Returns the
/// env and the world after it.
async fn rotated(secret: SecretStart) -> (Env, World) {
    let env = spawn_env(secret).await;
    let o = env.run(&["rotate", "--force"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let world = env.world().await;
    (env, world)
}

#[tokio::test]
async fn a_forced_rotation_against_moto_converges_and_a_rerun_does_nothing() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let doc = o.json();
    let t = &doc["targets"][0];
    assert_eq!(t["outcome"], "rotated");
    assert_eq!(
        t["old_key"].as_str().unwrap().chars().count(),
        9,
        "masked: {t}"
    );
    assert!(t["new_key"].as_str().unwrap().contains('…'));
    let world = env.world().await;
    world.after_success().unwrap();
    assert!(
        world.keys.iter().all(|k| k.id != env.initial_key),
        "the old key is deleted (no grace)"
    );
    assert!(
        !o.stdout.contains(&env.initial_key),
        "full key ids never appear"
    );
    assert!(world.keys.iter().all(|k| !o.stdout.contains(&k.id)));

    let again = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(again.code, 0, "{}", again.show());
    let doc = again.json();
    assert_eq!(
        doc["targets"][0]["outcome"], "nothing-due",
        "{}",
        again.stdout
    );
    assert_eq!(env.world().await.keys.len(), 1);
    env.stop().await;
}

#[tokio::test]
async fn the_new_key_is_proven_with_sts_before_any_connection_gets_it() {
    // moto records the new key's use by STS (GetAccessKeyLastUsed).
    let (env, world) = rotated(SecretStart::Json).await;
    assert!(
        world.keys[0].used,
        "verify signed GetCallerIdentity with the new key"
    );
    let connections = env.connections();
    assert!(
        connections
            .iter()
            .all(|c| c.username.as_deref() == Some(world.keys[0].id.as_str())),
        "{connections:#?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_legacy_secret_is_adopted_and_rewritten_as_json() {
    let (env, world) = rotated(SecretStart::Legacy).await;
    world.after_success().unwrap();
    let current: serde_json::Value = serde_json::from_str(&world.stages["AWSCURRENT"]).unwrap();
    assert_eq!(current["UserName"], USER);
    env.stop().await;
}

#[tokio::test]
async fn a_first_run_without_a_secret_creates_it() {
    let (env, world) = rotated(SecretStart::Absent).await;
    world.after_success().unwrap();
    env.stop().await;
}

#[tokio::test]
async fn plan_and_status_change_nothing_and_show_masked_keys() {
    let env = spawn_env(SecretStart::Json).await;
    let before = env.world().await;
    let plan = env.run(&["plan", "--force"]).await;
    assert_eq!(plan.code, 0, "{}", plan.show());
    assert!(plan.stdout.contains("would rotate"), "{}", plan.stdout);
    let status = env.run(&["status"]).await;
    assert_eq!(status.code, 0, "{}", status.show());
    let masked = masked(&env.initial_key);
    assert!(status.stdout.contains(&masked), "{}", status.stdout);
    assert!(status.stdout.contains("AWSCURRENT"), "{}", status.stdout);
    assert!(status.stdout.contains("aws-prod"), "{}", status.stdout);
    assert!(!status.stdout.contains(&env.initial_key));
    let json = env.run(&["status", "--output", "json"]).await;
    let doc = json.json();
    assert_eq!(doc["targets"][0]["keys"][0]["key"], masked.as_str());
    let after = env.world().await;
    assert_eq!(before.keys.len(), after.keys.len());
    assert_eq!(before.stages, after.stages);
    assert_eq!(env.write_requests(), Vec::<String>::new(), "no write");
    env.stop().await;
}

#[tokio::test]
async fn a_young_key_is_not_rotated_without_force() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let doc = o.json();
    assert_eq!(doc["targets"][0]["outcome"], "nothing-due");
    assert_eq!(env.world().await.keys[0].id, env.initial_key);
    env.stop().await;
}

#[tokio::test]
async fn an_oidc_connection_is_refused_with_exit_3_and_nothing_changes() {
    let env = e2e_setup()
        .edit_connections(|eps| {
            eps[1]["authorization"]["parameters"]["useOIDC"] = json!("true");
        })
        .start()
        .await;
    let before = env.world().await;
    let o = env.run(&["rotate", "--force"]).await;
    assert_eq!(o.code, 3, "{}", o.show());
    assert!(o.stdout.contains("OIDC"), "{}", o.stdout);
    let after = env.world().await;
    assert_eq!(
        before.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        after.keys.iter().map(|k| &k.id).collect::<Vec<_>>()
    );
    assert_eq!(before.stages, after.stages);
    env.stop().await;
}

#[tokio::test]
async fn an_unknown_iam_user_is_bad_config_with_exit_2() {
    let env = spawn_env(SecretStart::Json).await;
    env.edit_config(|text| text.replace(USER, "no-such-user"));
    let o = env.run(&["rotate", "--force"]).await;
    assert_eq!(o.code, 2, "{}", o.show());
    assert!(o.stdout.contains("no-such-user"), "{}", o.stdout);
    env.stop().await;
}

#[tokio::test]
async fn a_missing_pat_parameter_is_one_sentence_and_exit_2() {
    let env = spawn_env(SecretStart::Json).await;
    env.edit_config(|text| text.replace("ssm:/azuredevops", "ssm:/nowhere"));
    let o = env.run(&["rotate"]).await;
    assert_eq!(o.code, 2, "{}", o.show());
    let err = o.errors();
    assert_eq!(err.len(), 1, "{}", o.show());
    assert!(err[0].starts_with("error: ado.pat: "), "{err:?}");
    assert!(err[0].contains("/nowhere"), "{err:?}");
    // Without the logs, stderr is that one line and nothing else.
    let quiet = env
        .cmd(&["rotate"])
        .env("RUST_LOG", "off")
        .untraced()
        .run()
        .await;
    assert_eq!(quiet.code, 2, "{}", quiet.show());
    assert!(
        quiet.stderr.starts_with("error: ado.pat: "),
        "{}",
        quiet.stderr
    );
    assert!(quiet.stderr.contains("/nowhere"), "{}", quiet.stderr);
    assert_eq!(quiet.stderr.lines().count(), 1, "{}", quiet.stderr);
    env.stop().await;
}

/// The PAT reaches the Azure DevOps client (the emulator, which knows only this PAT, accepts
/// every request of the run) but no output (the env's leak scan).
#[tokio::test]
async fn the_pat_reaches_the_ado_adapter_but_no_output() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.run(&["plan"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let requests = env.ado.requests();
    assert!(!requests.is_empty(), "plan reads Azure DevOps");
    assert!(
        requests.iter().all(|r| r.status == 200),
        "every request carried the PAT {}…: {requests:#?}",
        &PAT[..4]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_config_error_names_file_line_and_field() {
    let env = spawn_env(SecretStart::Json).await;
    env.add_secret("my-literal-pat");
    env.edit_config(|text| text.replace(&format!("ssm:{PAT_PARAM}"), "my-literal-pat"));
    let o = env.cmd(&["plan"]).untraced().run().await;
    assert_eq!(o.code, 2, "{}", o.show());
    assert!(
        o.stderr.contains("keyrotor.toml:4: ado.pat:"),
        "{}",
        o.stderr
    );
    assert!(!o.stderr.contains("my-literal-pat"));
    env.stop().await;
}

#[tokio::test]
async fn init_prints_a_config_that_parses() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.cmd(&["init"]).untraced().run().await;
    assert_eq!(o.code, 0, "{}", o.show());
    let path = env.dir.join("init.toml");
    std::fs::write(&path, &o.stdout).unwrap();
    keyrotor_core::config::Config::load(&path).unwrap();
    env.stop().await;
}

/// Runs `keyrotor` with `args` (a `sandbox` command), which starts a moto of its own from the
/// test's virtualenv, and checks that it succeeded, said `done`, showed no ✗, and showed key
/// ids masked only (no 20-character AKIA id).
pub(crate) async fn sandbox(env: &Env, args: &[&str], done: &str) -> Output {
    let o = env
        .cmd(args)
        .env(
            "KEYROTOR_MOTO_VENV",
            moto::venv_dir().to_string_lossy().into_owned(),
        )
        .run()
        .await;
    assert_eq!(o.code, 0, "{}", o.show());
    assert!(o.stdout.contains(done), "{}", o.stdout);
    assert!(!o.stdout.contains('✗'), "{}", o.stdout);
    let full_ids = o
        .stdout
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("AKIA") && w.len() == 20)
        .count();
    assert_eq!(full_ids, 0, "{}", o.stdout);
    o
}

#[tokio::test]
async fn the_sandbox_runs_start_to_finish_and_every_check_holds() {
    let env = spawn_env(SecretStart::Json).await;
    // The sandbox starts a moto of its own, from the test's virtualenv (HOME is the test's
    // folder).
    let o = sandbox(
        &env,
        &["sandbox"],
        "Done: the key was rotated and every check holds.",
    )
    .await;
    // `keyrotor check` runs before the rotation, and passes.
    let check = o
        .stdout
        .find("━━ Preflight: keyrotor check")
        .expect("the sandbox runs keyrotor check");
    let rotate = o.stdout.find("━━ Rotating").expect("then it rotates");
    assert!(check < rotate, "{}", o.stdout);
    assert!(
        o.stdout[check..rotate].contains("0 failed")
            && o.stdout[check..rotate].contains("a rotation can run"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("The Slack message"), "{}", o.stdout);
    env.stop().await;
}

#[tokio::test]
async fn audit_lists_every_aws_connection_with_its_key_age_and_flags() {
    let env = e2e_setup()
        .edit_connections(|eps| {
            let mut oidc = keyrotor_testkit::ado::aws_endpoint("aws-oidc", "", "", &["Web"]);
            oidc["authorization"]["parameters"]["useOIDC"] = json!("true");
            eps.push(oidc);
        })
        .start()
        .await;
    let org = env.org_url();
    let pat = format!("ssm:{PAT_PARAM}");
    let o = env
        .run(&[
            "audit",
            "--organization",
            &org,
            "--pat",
            &pat,
            "--output",
            "json",
        ])
        .await;
    assert_eq!(o.code, 0, "{}", o.show());
    let doc = o.json();
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3, "{}", o.stdout);
    let prod = conns.iter().find(|c| c["name"] == "aws-prod").unwrap();
    assert_eq!(prod["iam_user"], USER);
    assert_eq!(prod["age_days"], 0);
    assert!(prod["key"].as_str().unwrap().contains('…'));
    assert!(prod["flags"].to_string().contains("could use OIDC"));
    let oidc = conns.iter().find(|c| c["name"] == "aws-oidc").unwrap();
    assert_eq!(oidc["uses_oidc"], true);
    assert_eq!(oidc["flags"].as_array().unwrap().len(), 0);
    assert!(!o.stdout.contains(&env.initial_key));
    let text = env
        .run(&["audit", "--organization", &org, "--pat", &pat])
        .await;
    assert_eq!(text.code, 0, "{}", text.show());
    assert!(
        text.stdout.contains("aws-oidc") && text.stdout.contains(USER),
        "{}",
        text.stdout
    );
    env.stop().await;
}

#[tokio::test]
async fn audit_refuses_a_literal_pat_without_echoing_it() {
    let env = spawn_env(SecretStart::Json).await;
    let org = env.org_url();
    let o = env
        .cmd(&["audit", "--organization", &org, "--pat", PAT])
        .untraced()
        .run()
        .await;
    assert_eq!(o.code, 2, "{}", o.show());
    assert!(o.stderr.starts_with("error: --pat: "), "{}", o.stderr);
    env.stop().await;
}

/// The AWS calls of one rotation, counted by the proxy (every HTTP request to moto), pinned: a
/// call added to the happy path shows here, not only in the benchmark. Above the protocol's
/// minimum (IAM 4, Secrets Manager 6) each extra is a safety rule, named in bench/RESULTS.md.
#[tokio::test]
async fn one_rotation_makes_the_pinned_aws_calls() {
    let env = spawn_env(SecretStart::Json).await;
    env.proxy().clear_seen();
    let o = env.run(&["rotate", "--force"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let mut calls: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for s in env.proxy().seen() {
        let service = s.service.clone().unwrap_or_default();
        if service == "iam" || service == "secretsmanager" {
            *calls.entry((service, s.op.clone())).or_default() += 1;
        }
    }
    let want: Vec<((&str, &str), usize)> = vec![
        // Inspect, create, push, confirm, promote and retire each list the keys once.
        (("iam", "CreateAccessKey"), 1),
        (("iam", "DeleteAccessKey"), 1),
        // Retire only: the old key's last use, right before it is deactivated. Inspect asks
        // about no key (each is held by a connection or named by a stage).
        (("iam", "GetAccessKeyLastUsed"), 1),
        (("iam", "ListAccessKeys"), 6),
        (("iam", "UpdateAccessKey"), 1),
        // Inspect, create and promote.
        (("secretsmanager", "DescribeSecret"), 3),
        // Inspect AWSCURRENT (the only labelled stage of this secret); create AWSCURRENT and
        // AWSPENDING read back after the intent; verify and push AWSPENDING.
        (("secretsmanager", "GetSecretValue"), 5),
        (("secretsmanager", "PutSecretValue"), 2),
        (("secretsmanager", "UpdateSecretVersionStage"), 3),
    ];
    let want: std::collections::BTreeMap<(String, String), usize> = want
        .into_iter()
        .map(|((s, op), n)| ((s.to_owned(), op.to_owned()), n))
        .collect();
    assert_eq!(calls, want);
    env.stop().await;
}
