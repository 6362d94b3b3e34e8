//! A Step Functions execution and `keyrotor rotate` processes on one target, interleaved at
//! every step boundary, checked from outside (IAM, the secret's stages, every connection of the
//! emulated organization) after each turn, then converged.
//!
//! The execution is the Lambda's own handlers (`keyrotor_lambda::handle`, payload in, payload
//! out, exactly as each Task invokes them) with the production adapters, against the same moto
//! (behind the strict proxy) and the same emulator as the CLI processes; it is driven the way
//! the state machine drives it: the Task the state's `next` names, a retry on
//! `Rotation.Retryable` / `Rotation.NotPropagated`, any other error to `compensate` with the
//! state the failed Task started from.
//!
//! - `an_execution_and_a_cli_run_interleaved_at_every_step_leave_everyone_a_key`: the execution
//!   runs `i` steps, a whole CLI run goes in between, the execution goes on; for every `i`.
//! - `a_cli_run_killed_inside_every_step_then_an_execution_leave_everyone_a_key`: SIGKILL inside
//!   each step of a CLI run, then a whole execution.
//! - `an_execution_whose_push_fails_for_good_while_a_cli_run_goes_in_between`: the execution's
//!   PUT is refused for good after a CLI run went in between its verify and its push.

use std::sync::Arc;
use std::time::Duration;

use keyrotor_core::config::Config;
use keyrotor_core::domain::RunId;
use keyrotor_core::machine::TargetState;
use keyrotor_core::ports::SystemClock;
use keyrotor_core::protocol::Ports;
use keyrotor_lambda::Deps;
use keyrotor_testkit::ado::{Fault, Op};
use keyrotor_testkit::env::{PAT, TestEnv as Env};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::kill::{converge, kill_inside, spawn_env};

const STEPS: [&str; 7] = [
    "inspect", "create", "verify", "push", "confirm", "promote", "retire",
];

/// The Lambda's dependencies as the functions build them, on the env's moto (through the strict
/// proxy), emulator and config.
pub(crate) async fn lambda_deps(env: &Env) -> (Deps, Config) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let config = Config::parse(&env.config, &text).expect("the env's config parses");
    let sdk = env
        .sdk
        .to_builder()
        .endpoint_url(env.proxy().endpoint())
        .build();
    let aws = Arc::new(keyrotor_aws::Aws::new(&sdk));
    let ado = Arc::new(keyrotor_ado::AdoClient::new(SecretString::from(PAT)).unwrap());
    let ports = Ports {
        iam: aws.clone(),
        secrets: aws.clone(),
        sts: aws.clone(),
        ado,
        clock: Arc::new(SystemClock),
        executions: aws.clone(),
    };
    (Deps::with_ports(config.clone(), ports, aws, None), config)
}

/// One execution of the state machine, one Task at a time.
pub(crate) struct Execution {
    deps: Deps,
    pub(crate) state: Value,
    /// Every payload a handler returned or raised (scanned for secrets at the end).
    outputs: Vec<String>,
    /// The execution's ARN, passed with every step as the state machine does
    /// (`$$.Execution.Id`), when the test has one.
    pub(crate) arn: Option<String>,
}

impl Execution {
    pub(crate) async fn new(env: &Env, name: &str) -> Self {
        let (deps, config) = lambda_deps(env).await;
        let state = serde_json::to_value(TargetState::new(
            &config.targets[0],
            RunId::parse(name).unwrap(),
            true,
        ))
        .unwrap();
        Self {
            deps,
            state,
            outputs: Vec::new(),
            arn: None,
        }
    }

    pub(crate) fn next(&self) -> String {
        self.state["next"].as_str().unwrap_or("done").to_owned()
    }

    /// Runs the next Task (with the state machine's retries, and its Catch → compensate).
    pub(crate) async fn task(&mut self) {
        let step = self.next();
        if step == "done" {
            return;
        }
        for attempt in 0.. {
            let mut payload = json!({"step": step, "state": self.state});
            if let Some(arn) = &self.arn {
                payload["execution"] = json!(arn);
            }
            let out = keyrotor_lambda::handle(payload, &self.deps).await;
            self.outputs.push(match &out {
                Ok(v) => v.to_string(),
                Err(d) => serde_json::to_string(d).unwrap(),
            });
            match out {
                Ok(v) => {
                    self.state = v;
                    return;
                }
                Err(d)
                    if attempt < 6
                        && matches!(
                            d.error_type.as_str(),
                            "Rotation.Retryable" | "Rotation.NotPropagated"
                        ) =>
                {
                    // The ASL's Retry interval (the wait for IAM's propagation in strict mode).
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(d) => {
                    let caught = json!({
                        "Error": d.error_type,
                        "Cause": json!({"errorType": d.error_type, "errorMessage": d.error_message}).to_string(),
                    });
                    let out = keyrotor_lambda::handle(
                        json!({"step": "compensate", "state": self.state, "error": caught}),
                        &self.deps,
                    )
                    .await
                    .expect("compensate answers a state");
                    self.outputs.push(out.to_string());
                    self.state = out;
                    return;
                }
            }
        }
    }

    async fn finish(&mut self) {
        for _ in 0..20 {
            if self.next() == "done" {
                return;
            }
            self.task().await;
        }
        panic!("the execution never finished: {}", self.state);
    }

    fn outcome(&self) -> String {
        self.state["outcome"].as_str().unwrap_or("?").to_owned()
    }

    /// No handler payload holds a secret the env knows of.
    async fn assert_no_leaks(&self, env: &Env) {
        env.learn().await;
        let all = self.outputs.join("\n");
        env.assert_text_clean(&all, "a Lambda payload");
    }
}

/// From outside: the invariants that hold at every instant (every connection of the
/// organization holds an existing Active key whose secret a stage keeps, at most two keys,
/// AWSCURRENT names a key that exists).
async fn safe(env: &Env, label: &str) {
    env.world()
        .await
        .always()
        .unwrap_or_else(|v| panic!("{label}: {v}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_and_a_cli_run_interleaved_at_every_step_leave_everyone_a_key() {
    let mut outcomes = Vec::new();
    for i in 0..=STEPS.len() {
        let env = spawn_env().await;
        let mut x = Execution::new(&env, &format!("execution-{i}")).await;
        for _ in 0..i {
            x.task().await;
            safe(&env, &format!("execution step {i}")).await;
        }
        let cli = env.run(&["rotate", "--force", "--output", "json"]).await;
        let label = format!("CLI run after the execution's {i} steps");
        safe(&env, &label).await;
        x.finish().await;
        safe(&env, &format!("{label}, then the execution")).await;
        x.assert_no_leaks(&env).await;
        outcomes.push(format!(
            "{i}: cli {} / execution {}",
            cli.outcome(),
            x.outcome()
        ));
        converge(&env, &label).await;
        env.stop().await;
    }
    println!("interleavings (execution steps before the CLI run: outcomes): {outcomes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_killed_inside_every_step_then_an_execution_leave_everyone_a_key() {
    let mut landed = 0;
    for step in STEPS {
        let env = spawn_env().await;
        env.ado.inject(Fault::delay(Op::Any, 120).forever());
        if kill_inside(&env, step, 0).await {
            landed += 1;
        }
        let label = format!("CLI killed inside {step}, then an execution");
        safe(&env, &label).await;
        env.ado.clear_faults();
        let mut x = Execution::new(&env, &format!("execution-after-kill-in-{step}")).await;
        x.finish().await;
        safe(&env, &label).await;
        x.assert_no_leaks(&env).await;
        println!("interleave: {label}: execution {}", x.outcome());
        converge(&env, &label).await;
        env.stop().await;
    }
    assert_eq!(landed, STEPS.len(), "a kill missed its step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_whose_push_fails_for_good_while_a_cli_run_goes_in_between() {
    // The default leases: the execution owns its rotation however slow the machine is.
    let env = crate::setup()
        .policy("verify_consecutive = 2")
        .start()
        .await;
    let mut x = Execution::new(&env, "execution-push-refused").await;
    while x.next() != "push" {
        x.task().await;
    }
    // A CLI run now: the execution owns the rotation, so the CLI stands aside, and says so
    // with its own exit code (5): it did not do the target's work (#21, 2).
    let cli = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(cli.code, 5, "{}", cli.show());
    assert_eq!(cli.outcome(), "busy", "{}", cli.show());
    safe(&env, "CLI in between").await;
    // The execution's PUT is refused for good: compensated back onto the old key.
    env.ado.inject(Fault::status(Op::Put, 400).forever());
    x.finish().await;
    assert_eq!(x.outcome(), "failed", "{}", x.state);
    env.ado.clear_faults();
    safe(&env, "after the compensated execution").await;
    x.assert_no_leaks(&env).await;
    converge(&env, "push refused").await;
    env.stop().await;
}
