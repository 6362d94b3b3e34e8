//! `rotate`, `plan`, `status` against moto.

use crate::env::{PAT, SecretStart, USER, spawn_env};

#[tokio::test]
async fn a_forced_rotation_against_moto_converges_and_a_rerun_does_nothing() {
    let mut env = spawn_env(SecretStart::Json).await;
    let o = env
        .run(&[
            "rotate", "--config", "{config}", "--force", "--output", "json",
        ])
        .await;
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.out, o.err);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let t = &doc["targets"][0];
    assert_eq!(t["outcome"], "rotated");
    assert_eq!(
        t["old_key"].as_str().unwrap().chars().count(),
        9,
        "masked: {t}"
    );
    assert!(t["new_key"].as_str().unwrap().contains('…'));
    env.learn_secrets().await;
    let world = env.world().await;
    world.after_success().unwrap();
    assert!(
        world.keys.iter().all(|k| k.id != env.initial_key),
        "the old key is deleted (no grace)"
    );
    assert!(
        !o.out.contains(&env.initial_key),
        "full key ids never appear"
    );
    assert!(world.keys.iter().all(|k| !o.out.contains(&k.id)));

    let again = env
        .run(&["rotate", "--config", "{config}", "--output", "json"])
        .await;
    assert_eq!(again.code, 0);
    let doc: serde_json::Value = serde_json::from_str(&again.out).unwrap();
    assert_eq!(doc["targets"][0]["outcome"], "nothing-due", "{}", again.out);
    assert_eq!(env.world().await.keys.len(), 1);
}

#[tokio::test]
async fn the_new_key_is_proven_with_sts_before_any_connection_gets_it() {
    let mut env = spawn_env(SecretStart::Json).await;
    let o = env
        .run(&["rotate", "--config", "{config}", "--force"])
        .await;
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    env.learn_secrets().await;
    // moto records the new key's use by STS (GetAccessKeyLastUsed).
    let world = env.world().await;
    assert!(
        world.keys[0].used,
        "verify signed GetCallerIdentity with the new key"
    );
    let endpoints = &env.ado.state().endpoints;
    assert!(
        endpoints
            .iter()
            .all(|e| e.username.as_deref() == Some(world.keys[0].id.as_str()))
    );
}

#[tokio::test]
async fn a_legacy_secret_is_adopted_and_rewritten_as_json() {
    let mut env = spawn_env(SecretStart::Legacy).await;
    let o = env
        .run(&["rotate", "--config", "{config}", "--force"])
        .await;
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    env.learn_secrets().await;
    let world = env.world().await;
    world.after_success().unwrap();
    let current: serde_json::Value = serde_json::from_str(&world.stages["AWSCURRENT"]).unwrap();
    assert_eq!(current["UserName"], USER);
}

#[tokio::test]
async fn a_first_run_without_a_secret_creates_it() {
    let mut env = spawn_env(SecretStart::Absent).await;
    let o = env
        .run(&["rotate", "--config", "{config}", "--force"])
        .await;
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    env.learn_secrets().await;
    env.world().await.after_success().unwrap();
}

#[tokio::test]
async fn plan_and_status_change_nothing_and_show_masked_keys() {
    let env = spawn_env(SecretStart::Json).await;
    let before = env.world().await;
    let plan = env.run(&["plan", "--config", "{config}", "--force"]).await;
    assert_eq!(plan.code, 0, "{}{}", plan.out, plan.err);
    assert!(plan.out.contains("would rotate"), "{}", plan.out);
    let status = env.run(&["status", "--config", "{config}"]).await;
    assert_eq!(status.code, 0, "{}{}", status.out, status.err);
    let masked = format!(
        "{}…{}",
        &env.initial_key[..4],
        &env.initial_key[env.initial_key.len() - 4..]
    );
    assert!(status.out.contains(&masked), "{}", status.out);
    assert!(status.out.contains("AWSCURRENT"), "{}", status.out);
    assert!(status.out.contains("aws-prod"), "{}", status.out);
    assert!(!status.out.contains(&env.initial_key));
    let json = env
        .run(&["status", "--config", "{config}", "--output", "json"])
        .await;
    let doc: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    assert_eq!(doc["targets"][0]["keys"][0]["key"], masked.as_str());
    let after = env.world().await;
    assert_eq!(before.keys.len(), after.keys.len());
    assert_eq!(before.stages, after.stages);
    assert!(env.ado.state().mutations == 0);
}

#[tokio::test]
async fn a_young_key_is_not_rotated_without_force() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env
        .run(&["rotate", "--config", "{config}", "--output", "json"])
        .await;
    assert_eq!(o.code, 0);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    assert_eq!(doc["targets"][0]["outcome"], "nothing-due");
    assert_eq!(env.world().await.keys[0].id, env.initial_key);
}

#[tokio::test]
async fn an_oidc_connection_is_refused_with_exit_3_and_nothing_changes() {
    let env = spawn_env(SecretStart::Json).await;
    env.ado.state().endpoints[1].oidc = true;
    let before = env.world().await;
    let o = env
        .run(&["rotate", "--config", "{config}", "--force"])
        .await;
    assert_eq!(o.code, 3, "{}{}", o.out, o.err);
    assert!(o.out.contains("OIDC"), "{}", o.out);
    let after = env.world().await;
    assert_eq!(
        before.keys.iter().map(|k| &k.id).collect::<Vec<_>>(),
        after.keys.iter().map(|k| &k.id).collect::<Vec<_>>()
    );
    assert_eq!(before.stages, after.stages);
}

#[tokio::test]
async fn an_unknown_iam_user_is_bad_config_with_exit_2() {
    let env = spawn_env(SecretStart::Json).await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(USER, "no-such-user");
    env.write_config(&text);
    let o = env
        .run(&["rotate", "--config", "{config}", "--force"])
        .await;
    assert_eq!(o.code, 2, "{}{}", o.out, o.err);
    assert!(o.out.contains("no-such-user"), "{}", o.out);
}

#[tokio::test]
async fn a_missing_pat_parameter_is_one_sentence_and_exit_2() {
    let env = spawn_env(SecretStart::Json).await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("ssm:/azuredevops", "ssm:/nowhere");
    env.write_config(&text);
    let o = env.run(&["rotate", "--config", "{config}"]).await;
    assert_eq!(o.code, 2);
    assert!(o.err.starts_with("error: ado.pat: "), "{}", o.err);
    assert!(o.err.contains("/nowhere"), "{}", o.err);
    assert_eq!(o.err.lines().count(), 1, "{}", o.err);
}

#[tokio::test]
async fn the_pat_reaches_the_ado_adapter_but_no_output() {
    let env = spawn_env(SecretStart::Json).await;
    let backend = env.backend();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut io = keyrotor::Io {
        out: &mut out,
        err: &mut err,
        terminal: false,
    };
    let argv = vec![
        "keyrotor".into(),
        "plan".into(),
        "--config".into(),
        env.config.clone().into_os_string(),
    ];
    let code = keyrotor::run(argv, &backend, &mut io).await;
    assert_eq!(code, 0);
    assert_eq!(backend.pats.lock().unwrap().as_slice(), [PAT.to_owned()]);
}

#[tokio::test]
async fn a_config_error_names_file_line_and_field() {
    let env = spawn_env(SecretStart::Json).await;
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("ssm:/azuredevops/service/connection/pat", "my-literal-pat");
    env.write_config(&text);
    let o = env.run(&["plan", "--config", "{config}"]).await;
    assert_eq!(o.code, 2);
    assert!(o.err.contains("keyrotor.toml:4: ado.pat:"), "{}", o.err);
    assert!(!o.err.contains("my-literal-pat"));
}

#[tokio::test]
async fn init_prints_a_config_that_parses() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.run(&["init"]).await;
    assert_eq!(o.code, 0);
    let path = env.dir.join("init.toml");
    std::fs::write(&path, &o.out).unwrap();
    keyrotor_core::config::Config::load(&path).unwrap();
}

#[tokio::test]
async fn the_sandbox_runs_start_to_finish_and_every_check_holds() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env.run(&["sandbox"]).await;
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.out, o.err);
    assert!(
        o.out
            .contains("Done: the key was rotated and every check holds."),
        "{}",
        o.out
    );
    assert!(!o.out.contains('✗'), "{}", o.out);
    assert!(o.out.contains("The Slack message"), "{}", o.out);
    // Key ids are shown masked only: no 20-character AKIA id in the output.
    let full_ids = o
        .out
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("AKIA") && w.len() == 20)
        .count();
    assert_eq!(full_ids, 0, "{}", o.out);
}

#[tokio::test]
async fn audit_lists_every_aws_connection_with_its_key_age_and_flags() {
    let env = spawn_env(SecretStart::Json).await;
    env.ado
        .add_endpoint(keyrotor_testkit::fakes::ORG, "Web", "aws-oidc", None);
    env.ado.state().endpoints[2].oidc = true;
    let o = env
        .run(&[
            "audit",
            "--organization",
            keyrotor_testkit::fakes::ORG,
            "--pat",
            "ssm:/azuredevops/service/connection/pat",
            "--output",
            "json",
        ])
        .await;
    assert_eq!(o.code, 0, "{}{}", o.out, o.err);
    let doc: serde_json::Value = serde_json::from_str(&o.out).unwrap();
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3, "{}", o.out);
    let prod = conns.iter().find(|c| c["name"] == "aws-prod").unwrap();
    assert_eq!(prod["iam_user"], USER);
    assert_eq!(prod["age_days"], 0);
    assert!(prod["key"].as_str().unwrap().contains('…'));
    assert!(prod["flags"].to_string().contains("could use OIDC"));
    let oidc = conns.iter().find(|c| c["name"] == "aws-oidc").unwrap();
    assert_eq!(oidc["uses_oidc"], true);
    assert_eq!(oidc["flags"].as_array().unwrap().len(), 0);
    assert!(!o.out.contains(&env.initial_key));
    let text = env
        .run(&[
            "audit",
            "--organization",
            keyrotor_testkit::fakes::ORG,
            "--pat",
            "ssm:/azuredevops/service/connection/pat",
        ])
        .await;
    assert_eq!(text.code, 0);
    assert!(
        text.out.contains("aws-oidc") && text.out.contains(USER),
        "{}",
        text.out
    );
}

#[tokio::test]
async fn audit_refuses_a_literal_pat_without_echoing_it() {
    let env = spawn_env(SecretStart::Json).await;
    let o = env
        .run(&[
            "audit",
            "--organization",
            keyrotor_testkit::fakes::ORG,
            "--pat",
            PAT,
        ])
        .await;
    assert_eq!(o.code, 2);
    assert!(o.err.starts_with("error: --pat: "), "{}", o.err);
}
