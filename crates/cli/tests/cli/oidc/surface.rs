//! Where people meet the command: `--help`, `keyrotor audit`, `keyrotor sandbox --oidc`.

use keyrotor_testkit::env::PAT_PARAM;
use keyrotor_testkit::moto;

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
    let o = env
        .run(&["audit", "--organization", &org, "--pat", &pat])
        .await;
    assert_eq!(o.code, 0, "{}", o.show());
    assert!(
        o.stdout
            .contains("keyrotor migrate-oidc --config F --target NAME"),
        "{}",
        o.show()
    );
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
    let doc = o.json();
    let flags = doc["connections"][0]["flags"].to_string();
    assert!(flags.contains("keyrotor migrate-oidc moves it"), "{doc:#}");

    // Once moved, the connection is no longer flagged.
    let m = migrate(&env, &["--apply"]).await;
    assert_eq!(m.code, 0, "{}", m.show());
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
    let doc = o.json();
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
    let o = env
        .cmd(&["sandbox", "--oidc"])
        .env(
            "KEYROTOR_MOTO_VENV",
            moto::venv_dir().to_string_lossy().into_owned(),
        )
        .run()
        .await;
    assert_eq!(o.code, 0, "{}", o.show());
    assert!(
        o.stdout
            .contains("Done: the connection moved to OIDC, and every check holds."),
        "{}",
        o.stdout
    );
    assert!(!o.stdout.contains('✗'), "{}", o.stdout);
    for step in [
        "--apply",
        "--rollback",
        "--finish",
        "assumed-role/keyrotor-oidc-platform-prod",
    ] {
        assert!(o.stdout.contains(step), "{step}: {}", o.stdout);
    }
    let full_ids = o
        .stdout
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.starts_with("AKIA") && w.len() == 20)
        .count();
    assert_eq!(full_ids, 0, "{}", o.stdout);
    env.stop().await;
}
