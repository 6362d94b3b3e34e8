//! Where people meet the command: `--help`, `keyrotor audit`, `keyrotor sandbox --oidc`.

use keyrotor_testkit::env::PAT_PARAM;

use super::*;

#[test]
fn help_lists_migrate_oidc_and_its_modes_and_exit_codes() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"))
            .args(args)
            .env_clear()
            .output()
            .expect("the keyrotor binary runs");
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    let help = run(&["--help"]);
    assert!(help.contains("migrate-oidc"), "{help}");
    let help = run(&["migrate-oidc", "--help"]);
    for shown in [
        "--apply",
        "--rollback",
        "--finish",
        "--role-arn",
        "--target",
        "Exit codes",
    ] {
        assert!(help.contains(shown), "{shown}: {help}");
    }
}

#[tokio::test]
async fn audit_points_each_oidc_ready_connection_at_the_command() {
    let env = crate::setup().edit_connections(without_roles).start().await;
    let (org, pat) = (env.org_url(), format!("ssm:{PAT_PARAM}"));
    let audit = ["audit", "--organization", &org, "--pat", &pat];
    let audit_json = || async {
        env.run(&[&audit[..], &["--output", "json"]].concat())
            .await
            .json()
    };
    let o = env.run(&audit).await;
    let pointer = "keyrotor migrate-oidc --config F --target NAME";
    assert!(o.code == 0 && o.stdout.contains(pointer), "{}", o.show());
    let doc = audit_json().await;
    let flags = doc["connections"][0]["flags"].to_string();
    assert!(flags.contains("keyrotor migrate-oidc moves it"), "{doc:#}");

    // Once moved, the connection is no longer flagged.
    migrate_exits(&env, &["--apply"], 0).await;
    let doc = audit_json().await;
    assert_eq!(doc["connections"][0]["uses_oidc"], true, "{doc:#}");
    assert!(
        !doc["connections"][0]["flags"]
            .to_string()
            .contains("migrate-oidc"),
        "{doc:#}"
    );
    env.stop().await;
}

#[tokio::test]
async fn the_oidc_sandbox_runs_plan_apply_rollback_apply_and_finish() {
    let env = crate::setup().start().await;
    let done = "Done: the connection moved to OIDC, and every check holds.";
    let o = crate::e2e::sandbox(&env, &["sandbox", "--oidc"], done).await;
    for step in [
        "--apply",
        "--rollback",
        "--finish",
        "assumed-role/keyrotor-oidc-platform-prod",
    ] {
        assert!(o.stdout.contains(step), "{step}: {}", o.stdout);
    }
    env.stop().await;
}
