//! The handlers called directly, as the state machine would chain them, against the in-memory
//! fakes (which enforce IAM's, Secrets Manager's and Azure DevOps' rules and check the
//! invariants after every change). Every payload that leaves a handler is scanned for the fake
//! world's secrets.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyrotor_core::config::Config;
use keyrotor_core::ports::{Notifier, PortError, PortErrorKind, PortResult};
use keyrotor_core::report::RunReport;
use keyrotor_lambda::{Deps, OutcomeName, PlanDecision, TargetState, error_type, handle};
use keyrotor_testkit::fakes::{ORG, Scenario};
use lambda_runtime::Diagnostic;
use serde_json::{Value, json};

const RUN: &str = "5b0e2c9a-8f41-4d1b-a7c3-0e9d6f2b1a77";

fn config(slack: bool) -> Config {
    let slack = if slack {
        "[slack]\nwebhook = \"env:KEYROTOR_TEST_WEBHOOK\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"
[ado]
organization = "{ORG}"
pat = "env:KEYROTOR_TEST_PAT"
{slack}
[policy]
verify_interval = "2s"

[[target]]
name = "platform"
iam_user = "pipeline"
secret = "pipeline-key"
endpoints = [ {{ project = "Platform", name = "aws-0" }} ]
"#
    );
    Config::parse(Path::new("test.toml"), &text).expect("the test config parses")
}

/// Records the reports it is given; fails when told to.
#[derive(Default)]
struct Recorder {
    fail: bool,
    seen: Mutex<Vec<RunReport>>,
}

#[async_trait]
impl Notifier for Recorder {
    async fn notify(&self, report: &RunReport) -> PortResult<()> {
        self.seen.lock().unwrap().push(report.clone());
        if self.fail {
            return Err(PortError::new(
                PortErrorKind::NotFound,
                "Slack answered 404 channel_not_found",
            ));
        }
        Ok(())
    }
}

struct Harness {
    scenario: Scenario,
    deps: Deps,
    notifier: Arc<Recorder>,
    /// Every payload a handler returned or raised, serialized.
    outputs: Vec<String>,
}

impl Harness {
    fn new(fail_slack: bool) -> Self {
        let scenario = Scenario::new(1);
        let notifier = Arc::new(Recorder {
            fail: fail_slack,
            ..Recorder::default()
        });
        let deps = Deps::with_ports(
            config(true),
            scenario.fakes.ports(),
            Arc::new(scenario.fakes.clone()),
            Some(notifier.clone()),
        );
        Self {
            scenario,
            deps,
            notifier,
            outputs: Vec::new(),
        }
    }

    async fn call(&mut self, event: Value) -> Result<Value, Diagnostic> {
        let out = handle(event, &self.deps).await;
        self.outputs.push(match &out {
            Ok(v) => v.to_string(),
            Err(d) => serde_json::to_string(d).unwrap(),
        });
        out
    }

    async fn step(&mut self, step: &str, state: &Value) -> Result<Value, Diagnostic> {
        self.call(json!({"step": step, "state": state})).await
    }

    /// Every secret the fake world holds or held: key secrets (also of deleted keys, which all
    /// start with `fakeSecret`), endpoint passwords, secret values.
    fn assert_no_secret_in_outputs(&self) {
        let st = self.scenario.fakes.state();
        let mut secrets: Vec<String> =
            vec!["fakeSecret".into(), self.scenario.initial_key.1.clone()];
        for keys in st.users.values() {
            secrets.extend(keys.iter().map(|k| k.secret.clone()));
        }
        for e in &st.endpoints {
            secrets.extend(e.password.clone());
        }
        for versions in st.secrets.values() {
            for v in versions {
                if let Ok(j) = serde_json::from_str::<Value>(&v.value)
                    && let Some(s) = j["SecretAccessKey"].as_str()
                {
                    secrets.push(s.to_owned());
                }
            }
        }
        for out in &self.outputs {
            for s in &secrets {
                assert!(
                    !out.contains(s.as_str()),
                    "a handler's payload holds a secret ({}…):\n{out}",
                    &s[..6.min(s.len())]
                );
            }
        }
        assert!(!self.outputs.is_empty());
    }
}

fn state(v: &Value) -> TargetState {
    serde_json::from_value(v.clone()).expect("a handler returns a TargetState")
}

fn fresh() -> Value {
    json!({"target": "platform", "run_id": RUN, "force": false})
}

/// What the state machine does at verify: retry on Rotation.NotPropagated.
async fn verify_until_propagated(h: &mut Harness, s: &Value) -> Value {
    for _ in 0..8 {
        match h.step("verify", s).await {
            Ok(v) => return v,
            Err(d) if d.error_type == error_type::NOT_PROPAGATED => {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(d) => panic!("verify failed: {d:?}"),
        }
    }
    panic!("verify never succeeded")
}

#[tokio::test(start_paused = true)]
async fn the_state_machine_s_chain_of_handlers_rotates_the_key() {
    let mut h = Harness::new(false);
    let listed = h
        .call(json!({"step": "targets", "input": {}}))
        .await
        .unwrap();
    assert_eq!(listed, json!({"targets": ["platform"], "force": false}));

    let s = h.step("inspect", &fresh()).await.unwrap();
    assert_eq!(state(&s).decision, Some(PlanDecision::Rotate));
    let s = h.step("cleanup", &s).await.unwrap();
    let s = h.step("create", &s).await.unwrap();
    let created = state(&s);
    assert!(created.new_key.is_some() && created.pending_version.is_some());
    let s = verify_until_propagated(&mut h, &s).await;
    let s = h.step("push", &s).await.unwrap();
    let s = h.step("confirm", &s).await.unwrap();
    let s = h.step("promote", &s).await.unwrap();
    let s = h.step("retire", &s).await.unwrap();
    let done = state(&s);
    assert_eq!(done.outcome, Some(OutcomeName::Rotated));
    assert_eq!(
        done.steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
        [
            "inspect", "cleanup", "create", "verify", "push", "confirm", "promote", "retire"
        ]
    );
    h.scenario.world().after_success().unwrap();
    assert!(h.scenario.fakes.state().violations.is_empty());

    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": [{"state": s}]}))
        .await
        .unwrap();
    assert_eq!(summary["rotated"], 1);
    assert_eq!(summary["needs_attention"], false);
    assert_eq!(summary["notification"], "sent");
    let seen = h.notifier.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].run_id, RUN);
    h.assert_no_secret_in_outputs();

    // A second run right after: nothing due, nothing to tidy.
    let again = json!({"target": "platform", "run_id": "second-run-0000000000000000000000", "force": false});
    let s = h.step("inspect", &again).await.unwrap();
    let s = state(&s);
    assert_eq!(s.decision, Some(PlanDecision::NothingDue));
    assert_eq!(s.outcome, Some(OutcomeName::NothingDue));
    assert!(!s.tidy);
}

#[tokio::test(start_paused = true)]
async fn a_key_iam_never_accepts_raises_not_propagated_and_compensation_deletes_it() {
    let mut h = Harness::new(false);
    h.scenario.fakes.state().propagation = Duration::from_secs(3600);
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = h.step("cleanup", &s).await.unwrap();
    let s = h.step("create", &s).await.unwrap();
    let new_key = state(&s).new_key.unwrap();

    let err = h.step("verify", &s).await.unwrap_err();
    assert_eq!(err.error_type, "Rotation.NotPropagated");
    assert!(
        err.error_message.starts_with("verify: "),
        "{}",
        err.error_message
    );
    assert!(
        !err.error_message.contains(new_key.as_str()),
        "key ids are masked in errors: {}",
        err.error_message
    );

    // The Catch: ResultPath $.error keeps the state; compensate gets both.
    let caught = json!({
        "Error": err.error_type,
        "Cause": json!({"errorType": err.error_type, "errorMessage": err.error_message}).to_string(),
    });
    let out_v = h
        .call(json!({"step": "compensate", "state": s, "error": caught}))
        .await
        .unwrap();
    let out = state(&out_v);
    assert_eq!(out.outcome, Some(OutcomeName::Failed));
    assert_eq!(out.failed_step.map(|s| s.name()), Some("verify"));
    assert!(out.compensation.unwrap().contains("deleted"));
    let keys: Vec<String> = h.scenario.fakes.state().users["pipeline"]
        .iter()
        .map(|k| k.id.clone())
        .collect();
    assert_eq!(
        keys,
        [h.scenario.initial_key.0.clone()],
        "only the old key is left"
    );
    h.scenario.world().always().unwrap();

    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": [{"state": out_v}]}))
        .await
        .unwrap();
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["needs_attention"], true);
    h.assert_no_secret_in_outputs();
}

#[tokio::test(start_paused = true)]
async fn a_crashed_step_without_a_lambda_error_is_attributed_to_the_next_step() {
    let mut h = Harness::new(false);
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = h.step("cleanup", &s).await.unwrap();
    let caught = json!({"Error": "States.Timeout", "Cause": "Task timed out"});
    let out = h
        .call(json!({"step": "compensate", "state": s, "error": caught}))
        .await
        .unwrap();
    let out = state(&out);
    assert_eq!(out.failed_step.map(|s| s.name()), Some("create"));
    assert_eq!(out.error.as_deref(), Some("States.Timeout: Task timed out"));
    assert_eq!(out.outcome, Some(OutcomeName::Failed));
}

#[tokio::test(start_paused = true)]
async fn a_slack_failure_is_reported_in_the_summary_and_does_not_fail_the_run() {
    let mut h = Harness::new(true);
    let s = json!({"target": "platform", "run_id": RUN, "outcome": "rotated"});
    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": [{"state": s}, {"state": {"target": "gone", "run_id": RUN}, "error": {"Error": "States.Runtime", "Cause": "boom"}}]}))
        .await
        .expect("a Slack failure never fails the report step");
    assert!(
        summary["notification"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{summary}"
    );
    assert_eq!(
        summary["failed"], 1,
        "a result without an outcome is a failure"
    );
    assert_eq!(summary["needs_attention"], true);
}

#[tokio::test]
async fn a_refused_target_ends_at_inspect_with_its_reason() {
    let mut h = Harness::new(false);
    h.scenario.fakes.state().endpoints[0].oidc = true;
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = state(&s);
    assert_eq!(s.decision, Some(PlanDecision::Refused));
    assert_eq!(s.outcome, Some(OutcomeName::Refused));
    assert!(s.error.unwrap().contains("OIDC"));
}

#[tokio::test]
async fn bad_input_and_unknown_targets_are_rotation_failed() {
    let mut h = Harness::new(false);
    let e = h.call(json!({"step": "dance"})).await.unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    let e = h
        .step("inspect", &json!({"target": "nope", "run_id": RUN}))
        .await
        .unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    assert!(e.error_message.contains("no target named 'nope'"));
    let e = h
        .step(
            "inspect",
            &json!({"target": "platform", "run_id": "has spaces"}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
}

#[test]
fn step_errors_map_to_the_four_fixed_names() {
    use keyrotor_core::protocol::StepErrorKind as K;
    use keyrotor_lambda::error_type_of;
    assert_eq!(error_type_of(K::Retryable), "Rotation.Retryable");
    assert_eq!(error_type_of(K::NotPropagated), "Rotation.NotPropagated");
    assert_eq!(error_type_of(K::Refused), "Rotation.Refused");
    assert_eq!(error_type_of(K::Busy), "Rotation.Refused");
    assert_eq!(error_type_of(K::Invalid), "Rotation.Failed");
    assert_eq!(error_type_of(K::Failed), "Rotation.Failed");
}

#[tokio::test]
async fn a_run_where_nothing_happened_posts_nothing() {
    let mut h = Harness::new(false);
    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": [
            {"state": {"target": "platform", "run_id": RUN, "outcome": "nothing-due"}}]}))
        .await
        .unwrap();
    assert_eq!(summary["notification"], "skipped");
    assert_eq!(summary["needs_attention"], false);
    assert!(h.notifier.seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_push_that_fails_halfway_is_compensated_back_onto_the_old_key() {
    let mut h = Harness::new(false);
    // Two connections: the first PUT lands, the second is refused for good.
    h.scenario.fakes.add_endpoint(
        ORG,
        "Platform",
        "aws-1",
        Some((&h.scenario.initial_key.0, &h.scenario.initial_key.1)),
    );
    let two = {
        let mut c = config(false);
        c.targets[0]
            .endpoints
            .push(keyrotor_core::domain::EndpointRef {
                project: keyrotor_core::domain::ProjectName::parse("Platform").unwrap(),
                by: keyrotor_core::domain::EndpointSelector::Name("aws-1".into()),
            });
        c
    };
    h.deps = Deps::with_ports(
        two,
        h.scenario.fakes.ports(),
        Arc::new(h.scenario.fakes.clone()),
        None,
    );
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = h.step("cleanup", &s).await.unwrap();
    let s = h.step("create", &s).await.unwrap();
    assert!(state(&s).created_here);
    let s = verify_until_propagated(&mut h, &s).await;
    h.scenario.fakes.state().ado_put_script = [
        None,
        Some(PortError::new(
            PortErrorKind::Failed,
            "TF400813: not authorized",
        )),
    ]
    .into_iter()
    .collect();
    let err = h.step("push", &s).await.unwrap_err();
    assert_eq!(err.error_type, "Rotation.Failed");
    let caught = json!({"Error": err.error_type,
        "Cause": json!({"errorType": err.error_type, "errorMessage": err.error_message}).to_string()});
    let out = h
        .call(json!({"step": "compensate", "state": s, "error": caught}))
        .await
        .unwrap();
    let out = state(&out);
    assert_eq!(out.failed_step.map(|s| s.name()), Some("push"));
    assert!(out.put_attempted);
    assert!(out.compensation.unwrap().contains("deleted"));
    let st = h.scenario.fakes.state();
    for e in &st.endpoints {
        assert_eq!(
            e.username.as_deref(),
            Some(h.scenario.initial_key.0.as_str()),
            "{}",
            e.name
        );
    }
    assert_eq!(st.users["pipeline"].len(), 1);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    drop(st);
    h.assert_no_secret_in_outputs();
}
