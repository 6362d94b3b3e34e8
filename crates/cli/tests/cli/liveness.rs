//! A dead owner is detected, not waited out (#21, 2), from outside: the real binary against
//! moto (behind the strict proxy, with its Step Functions) and the emulator, under the default
//! leases (a 5 min intent, a 30 min owner lease).
//!
//! - a run SIGKILLed inside create's window (its intent written; before `CreateAccessKey`
//!   answers, and after it acted but before the key was stored) is taken over at once by the
//!   next plain run on its machine: the intent names its process;
//! - a rotation a Step Functions execution owns stands while the execution is `RUNNING`, even
//!   past its lease, and is taken over at once once it is not (`DescribeExecution`).

use std::time::{Duration, SystemTime};

use keyrotor_testkit::aws_proxy::{Fault, FaultKind};
use keyrotor_testkit::env::TestEnv as Env;

use crate::interleave::Execution;
use crate::setup;

fn starts(step: &str) -> impl Fn(&str) -> bool + Send + Sync + use<> {
    let wanted = [format!("step=\"{step}\""), format!("step={step}")];
    move |line: &str| {
        line.contains("step started") && wanted.iter().any(|w| line.contains(w.as_str()))
    }
}

/// Every key is due (a plain run rotates), the default leases.
async fn due_env() -> Env {
    setup()
        .policy("min_key_age = \"0s\"")
        .policy("verify_consecutive = 2")
        .start()
        .await
}

/// The rotation finished: exactly one key, Active, at AWSCURRENT, held by the connection; no
/// AWSPENDING.
async fn finished(env: &Env, label: &str) -> String {
    let aws = env.aws_state().await;
    assert_eq!(aws.keys.len(), 1, "{label}: one key left: {aws:#?}");
    assert_eq!(aws.active_keys().len(), 1, "{label}: {aws:#?}");
    let key = aws.active_keys()[0].to_owned();
    assert_eq!(
        aws.stage_key("AWSCURRENT").as_deref(),
        Some(key.as_str()),
        "{label}: AWSCURRENT names the Active key"
    );
    assert_eq!(
        env.endpoint()["authorization"]["parameters"]["username"],
        key.as_str(),
        "{label}: the connection holds the Active key"
    );
    assert!(!aws.stages.contains_key("AWSPENDING"), "{label}: {aws:#?}");
    env.world()
        .await
        .after_success()
        .unwrap_or_else(|v| panic!("{label}: {v}"));
    key
}

/// The next plain run: `rotated`, exit 0, and the rotation finished.
async fn the_next_run_rotates(env: &Env, label: &str) {
    let next = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (next.code, next.outcome().as_str()),
        (0, "rotated"),
        "{label}: the next run takes over at once: {}",
        next.show()
    );
    let key = finished(env, label).await;
    assert_ne!(key, env.initial_key, "{label}: a new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_in_creates_window_before_the_key_exists_is_taken_over_at_once() {
    let env = due_env().await;
    // CreateAccessKey never answers (the adapter retries it for about 3 s): the run is killed
    // while it waits, its intent written, no key created.
    env.proxy()
        .inject(Fault::new("CreateAccessKey", FaultKind::Drop).forever());
    let killed = env
        .cmd(&["rotate"])
        .kill_after_line(starts("create"), Duration::from_millis(1000))
        .run()
        .await;
    assert!(killed.triggered && killed.killed, "{}", killed.show());
    env.proxy().clear_faults();
    env.world().await.always().unwrap();
    let aws = env.aws_state().await;
    assert_eq!(aws.keys.len(), 1, "no key was created: {aws:#?}");
    let pending = aws.stage_json("AWSPENDING");
    assert!(
        pending
            .as_ref()
            .is_some_and(|p| p["KeyrotorIntent"]["Pid"].is_u64()),
        "the killed run's intent names its process: {pending:?}"
    );
    the_next_run_rotates(&env, "killed before CreateAccessKey").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_in_creates_window_after_the_key_was_made_is_taken_over_at_once() {
    let env = due_env().await;
    // CreateAccessKey acts 1.5 s after it was sent: the run is killed before the answer, so the
    // new key exists with its secret seen by nobody.
    env.proxy()
        .inject(Fault::new("CreateAccessKey", FaultKind::Slow { ms: 1500 }));
    let killed = env
        .cmd(&["rotate"])
        .kill_after_line(starts("create"), Duration::from_millis(500))
        .run()
        .await;
    assert!(killed.triggered && killed.killed, "{}", killed.show());
    // Wait for the held request to reach moto (the key appears in IAM).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while env.aws_state().await.keys.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held CreateAccessKey never acted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.world().await.always().unwrap();
    let aws = env.aws_state().await;
    assert!(
        aws.stage_json("AWSPENDING")
            .is_some_and(|p| p["KeyrotorIntent"]["Pid"].is_u64()),
        "{aws:#?}"
    );
    the_next_run_rotates(&env, "killed after CreateAccessKey").await;
    env.stop().await;
}

/// A state machine in moto's Step Functions and one of its executions, left `RUNNING` (moto does
/// not interpret it unless told to). Returns the execution's ARN.
async fn a_running_execution(env: &Env, name: &str) -> String {
    let sfn = aws_sdk_sfn::Client::new(&env.sdk);
    let definition =
        r#"{"StartAt":"Drain","States":{"Drain":{"Type":"Wait","Seconds":86400,"End":true}}}"#;
    let machine = sfn
        .create_state_machine()
        .name("keyrotor-rotate")
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/keyrotor-states")
        .send()
        .await
        .expect("moto creates the state machine");
    let started = sfn
        .start_execution()
        .state_machine_arn(machine.state_machine_arn())
        .name(name)
        .send()
        .await
        .expect("moto starts the execution");
    started.execution_arn().to_owned()
}

/// The execution's status, as Step Functions answers it.
async fn status(env: &Env, arn: &str) -> String {
    let sfn = aws_sdk_sfn::Client::new(&env.sdk);
    let d = sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .expect("DescribeExecution");
    d.status().as_str().to_owned()
}

/// Drives the execution (the Lambda's handlers, its ARN passed with every step) until its next
/// step is `push`: the new key at AWSPENDING, its lease naming the execution.
async fn own_until_push(env: &Env, x: &mut Execution, arn: &str) {
    x.arn = Some(arn.to_owned());
    for _ in 0..10 {
        if x.next() == "push" {
            break;
        }
        x.task().await;
    }
    assert_eq!(x.next(), "push", "{}", x.state);
    let pending = env.aws_state().await.stage_json("AWSPENDING");
    assert_eq!(
        pending
            .as_ref()
            .map(|p| p["KeyrotorOwner"]["Execution"].clone()),
        Some(serde_json::json!(arn)),
        "the lease names the execution: {pending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_a_running_execution_owns_stands_past_its_lease() {
    let env = setup()
        .policy("owner_lease = \"2s\"")
        .policy("verify_consecutive = 2")
        .start()
        .await;
    let arn = a_running_execution(&env, "execution-running").await;
    let mut x = Execution::new(&env, "execution-running").await;
    own_until_push(&env, &mut x, &arn).await;
    // Past the lease's expiry (the clock is what is waited for), the execution still runs.
    let expires = env
        .aws_state()
        .await
        .stage_json("AWSPENDING")
        .and_then(|p| p["KeyrotorOwner"]["ExpiresAt"].as_str().map(str::to_owned))
        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
        .expect("the lease's expiry");
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_secs(1)).await;
    }
    assert_eq!(status(&env, &arn).await, "RUNNING");
    let before = env.snapshot().await;
    let cli = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(
        (cli.code, cli.outcome().as_str()),
        (5, "busy"),
        "the running execution's rotation stands: {}",
        cli.show()
    );
    env.assert_unchanged(&before).await;
    assert!(
        env.proxy().count("DescribeExecution") >= 1,
        "the CLI asked Step Functions"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_an_execution_that_no_longer_runs_owns_is_taken_over_at_once() {
    // The default owner lease (30 minutes), held by this test process (alive): only the
    // execution's status can let the CLI in.
    let env = setup().policy("verify_consecutive = 2").start().await;
    let arn = a_running_execution(&env, "execution-aborted").await;
    let mut x = Execution::new(&env, "execution-aborted").await;
    own_until_push(&env, &mut x, &arn).await;

    let before = env.snapshot().await;
    let cli = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (cli.code, cli.outcome().as_str()),
        (5, "busy"),
        "while it runs: {}",
        cli.show()
    );
    env.assert_unchanged(&before).await;

    let sfn = aws_sdk_sfn::Client::new(&env.sdk);
    sfn.stop_execution()
        .execution_arn(&arn)
        .send()
        .await
        .expect("moto stops the execution");
    assert_eq!(status(&env, &arn).await, "ABORTED");
    let next = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (next.code, next.outcome().as_str()),
        (0, "rotated"),
        "the stopped execution's rotation is taken over at once: {}",
        next.show()
    );
    let key = finished(&env, "after the execution was stopped").await;
    let x_key = x.state["progress"]["new_key"].as_str().map(str::to_owned);
    assert_eq!(Some(key), x_key, "the execution's key was rotated in");
    env.stop().await;
}
