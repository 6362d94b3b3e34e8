//! A crash at every step of `--apply` and `--rollback` (SIGKILL right after each step's log
//! line), a crash inside `--finish` (as it deactivates, and as it deletes the key), and a failing
//! Azure DevOps update: after each, every connection works (checked from
//! outside), and a rerun of the same command converges.

use std::sync::Arc;
use std::time::Duration;

use keyrotor_testkit::ado::{Fault, Op};
use keyrotor_testkit::env::{Connections, TestEnv};
use keyrotor_testkit::moto::Moto;

use super::*;

const APPLY_STEPS: [&str; 5] = [
    "migrate-oidc: provider ready",
    "migrate-oidc: role ready",
    "migrate-oidc: record written",
    "migrate-oidc: connection switched",
    "migrate-oidc: applied",
];

async fn killed_after(env: &TestEnv, mode: &str, line: &'static str) -> bool {
    let config = env.config.to_string_lossy().into_owned();
    let mut args = vec![
        "migrate-oidc",
        "--config",
        &config,
        "--target",
        keyrotor_testkit::env::TARGET,
    ];
    if !mode.is_empty() {
        args.push(mode);
    }
    let o = env
        .cmd(&args)
        .kill_after_line(move |l| l.contains(line), Duration::ZERO)
        .run()
        .await;
    assert!(o.triggered, "the run reached '{line}': {}", o.show());
    o.killed
}

#[tokio::test]
async fn a_crash_after_every_step_leaves_every_connection_working_and_a_rerun_converges() {
    let moto = Arc::new(Moto::start().expect("moto starts"));
    let mut killed = 0;
    for step in APPLY_STEPS {
        // Two connections, so that a kill between them leaves one switched and one not.
        let env = crate::setup()
            .moto(moto.clone())
            .connections(Connections::Separate)
            .start()
            .await;
        killed += usize::from(killed_after(&env, "--apply", step).await);
        let on_oidc = assert_every_connection_works(&env).await;
        assert!(on_oidc <= 2, "{step}");

        let o = migrate(&env, &["--apply"]).await;
        assert_eq!(o.code, 0, "after a kill at '{step}': {}", o.show());
        assert_eq!(assert_every_connection_works(&env).await, 2, "{step}");

        // And the rollback, killed after its first connection, then run again.
        killed += usize::from(
            killed_after(
                &env,
                "--rollback",
                "migrate-oidc: connection back on the key",
            )
            .await,
        );
        assert_every_connection_works(&env).await;
        let o = migrate(&env, &["--rollback"]).await;
        assert_eq!(o.code, 0, "{step}: {}", o.show());
        assert_eq!(assert_every_connection_works(&env).await, 0, "{step}");
        env.stop().await;
    }
    println!(
        "migrate-oidc kills: {killed} runs killed, {} converged",
        APPLY_STEPS.len() * 2
    );
    assert!(
        killed >= APPLY_STEPS.len(),
        "most kills landed before the run ended: {killed}"
    );
}

#[tokio::test]
async fn a_failing_update_leaves_every_connection_working_and_a_rerun_finishes() {
    let env = separate().await;
    // Every PUT fails for good (the client retries 5xx; every attempt fails).
    env.ado.inject(Fault::status(Op::Put, 500).forever());
    let o = migrate_exits(&env, &["--apply"], 1).await;
    let line = one_error(&o);
    assert!(line.contains("run the same command again"), "{line}");
    assert_eq!(assert_every_connection_works(&env).await, 0);

    env.ado.clear_faults();
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 2);
    env.stop().await;
}

#[tokio::test]
async fn a_partial_apply_can_be_rolled_back_and_then_finish_is_refused() {
    let env = separate().await;
    assert!(killed_after(&env, "--apply", "migrate-oidc: connection switched").await);
    assert_eq!(
        assert_every_connection_works(&env).await,
        1,
        "one switched, one not"
    );

    let o = migrate(&env, &["--finish"]).await;
    assert_eq!(o.code, 3, "the apply did not finish: {}", o.show());
    assert!(one_error(&o).contains("--apply again"), "{}", o.show());

    migrate_exits(&env, &["--rollback"], 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 0);
    let o = migrate_exits(&env, &["--finish"], 3).await;
    assert!(one_error(&o).contains("rolled back"), "{}", o.show());
    assert_eq!(
        env.aws_state().await.active_keys(),
        vec![env.initial_key.as_str()]
    );
    env.stop().await;
}

#[tokio::test]
async fn a_crash_inside_finish_leaves_every_connection_working_and_a_rerun_finishes() {
    let moto = Arc::new(Moto::start().expect("moto starts"));
    // The AWS SDK's trace line as each of finish's two writes starts.
    for op in [
        "rpc.method=\"UpdateAccessKey\"",
        "rpc.method=\"DeleteAccessKey\"",
    ] {
        let env = crate::setup()
            .moto(moto.clone())
            .connections(Connections::Separate)
            .start()
            .await;
        migrate_exits(&env, &["--apply"], 0).await;
        pipeline_assumes(&env, &own_role_arn()).await;
        killed_after(&env, "--finish", op).await;
        // Every connection is on its role, which does not need the key.
        assert_eq!(assert_every_connection_works(&env).await, 2, "{op}");
        let o = migrate_exits(&env, &["--finish"], 0).await;
        assert!(
            env.aws_state().await.keys.is_empty(),
            "{op}: a rerun deletes the key: {}",
            o.show()
        );
        assert_eq!(assert_every_connection_works(&env).await, 2, "{op}");
        env.stop().await;
    }
}
