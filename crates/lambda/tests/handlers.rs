//! The handlers called directly, as the state machine would chain them (routing on the state's
//! `next`, retrying `Rotation.NotPropagated`, handing a caught error to `compensate`), against
//! the in-memory fakes (which enforce IAM's, Secrets Manager's and Azure DevOps' rules and check
//! the invariants after every change). Every payload that leaves a handler is scanned for the
//! fake world's secrets. The parity tests run the same case through the CLI's engine and through
//! the handlers and compare the outcomes: both drivers run core's one machine.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use keyrotor_core::config::Config;
use keyrotor_core::domain::RunId;
use keyrotor_core::engine::{self, Observer, RunOptions};
use keyrotor_core::machine::TargetState;
use keyrotor_core::plan::Decision;
use keyrotor_core::ports::{Notifier, PortError, PortErrorKind, PortResult};
use keyrotor_core::report::{Outcome, RunReport, Step, TargetReport};
use keyrotor_lambda::{Deps, handle};
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
drain = "0s"
delete_old_key_after = "0s"

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

    /// The report step over one target's final state, which must succeed; its summary.
    async fn report_one(&mut self, state: &Value) -> Value {
        self.call(json!({"step": "report", "run_id": RUN, "results": [{"state": state}]}))
            .await
            .unwrap()
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
    serde_json::to_value(TargetState::new(
        &Scenario::new(1).target,
        RunId::parse(RUN).unwrap(),
        false,
    ))
    .unwrap()
}

fn next(v: &Value) -> String {
    v["next"]
        .as_str()
        .expect("the state names its next step")
        .to_owned()
}

/// What a Catch hands to `compensate` for a Lambda error.
fn caught(d: &Diagnostic) -> Value {
    json!({
        "Error": d.error_type,
        "Cause": json!({"errorType": d.error_type, "errorMessage": d.error_message}).to_string(),
    })
}

impl Harness {
    /// Drives one target as the state machine does: the Task the state's `next` names; on
    /// `Rotation.NotPropagated` or `Rotation.Retryable` the same Task again (after a pause);
    /// any other error goes to `compensate` with the state the failed Task started from.
    /// Returns the final state.
    async fn drive(&mut self, mut s: Value) -> Value {
        for _ in 0..50 {
            let step = next(&s);
            if step == "done" {
                return s;
            }
            match self.step(&step, &s).await {
                Ok(v) => s = v,
                Err(d)
                    if matches!(
                        d.error_type.as_str(),
                        "Rotation.NotPropagated" | "Rotation.Retryable"
                    ) =>
                {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(d) => {
                    return self
                        .call(json!({"step": "compensate", "state": s, "error": caught(&d)}))
                        .await
                        .expect("compensate answers a state");
                }
            }
        }
        panic!("the target never finished: {s}")
    }
}

fn run_options() -> RunOptions {
    RunOptions {
        wait_for_drain: false,
        run_id: RunId::parse(RUN).unwrap(),
        force: false,
        dry_run: false,
        origin: "test".into(),
    }
}

/// The same case through the CLI's engine, on a world of its own.
async fn cli_run(sc: &Scenario) -> TargetReport {
    let quiet: Observer = Arc::new(|_| {});
    let opts = run_options();
    engine::run_target(&sc.fakes.ports(), &sc.policy, &sc.target, &opts, &quiet).await
}

/// The same case through the Lambda's handlers; the report the `report` step would show.
async fn lambda_run(h: &mut Harness) -> TargetReport {
    let s = h.drive(fresh()).await;
    keyrotor_core::machine::target_report(&state(&s))
}

#[tokio::test(start_paused = true)]
async fn the_state_machine_s_chain_of_handlers_rotates_the_key() {
    let mut h = Harness::new(false);
    let listed = h
        .call(json!({"step": "targets", "run_id": RUN, "input": {}}))
        .await
        .unwrap();
    assert_eq!(listed["targets"].as_array().unwrap().len(), 1);
    assert_eq!(listed["targets"][0], fresh());

    let s = h.step("inspect", &fresh()).await.unwrap();
    assert_eq!(state(&s).plan.unwrap().decision(), Decision::Rotate);
    assert_eq!(next(&s), "create", "nothing to tidy: no cleanup invocation");
    let s = h.drive(s).await;
    let done = state(&s);
    assert_eq!(done.outcome, Some(Outcome::Rotated));
    assert_eq!(
        done.steps.iter().map(|s| s.name()).collect::<Vec<_>>(),
        [
            "inspect", "create", "verify", "push", "confirm", "promote", "retire"
        ]
    );
    h.scenario.world().after_success().unwrap();
    assert!(h.scenario.fakes.state().violations.is_empty());

    let summary = h.report_one(&s).await;
    assert_eq!(summary["rotated"], 1);
    assert_eq!(summary["needs_attention"], false);
    assert_eq!(summary["notification"], json!({"status": "sent"}));
    let seen = h.notifier.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].run_id, RUN);
    h.assert_no_secret_in_outputs();

    // A second run right after: nothing due, nothing to tidy.
    let mut again = fresh();
    again["progress"]["run_id"] = json!("second-run");
    let s = state(&h.step("inspect", &again).await.unwrap());
    assert_eq!(s.plan.unwrap().decision(), Decision::NothingDue);
    assert_eq!(s.outcome, Some(Outcome::NothingDue));
    assert_eq!(s.next, None);
}

#[tokio::test(start_paused = true)]
async fn a_key_iam_never_accepts_raises_not_propagated_and_compensation_deletes_it() {
    let mut h = Harness::new(false);
    h.scenario.fakes.state().propagation = Duration::from_secs(3600);
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = h.step("create", &s).await.unwrap();
    let new_key = state(&s).progress.new_key.unwrap();

    let err = h.step("verify", &s).await.unwrap_err();
    assert_eq!(err.error_type, "Rotation.NotPropagated");
    assert!(
        !err.error_message.contains(new_key.as_str()),
        "key ids are masked in errors: {}",
        err.error_message
    );

    // The Catch: ResultPath $.error keeps the state; compensate gets both.
    let out_v = h
        .call(json!({"step": "compensate", "state": s, "error": caught(&err)}))
        .await
        .unwrap();
    let out = state(&out_v);
    assert_eq!(out.outcome, Some(Outcome::Failed));
    assert_eq!(out.failure.as_ref().map(|f| f.step), Some(Step::Verify));
    assert_eq!(
        out.steps.last(),
        Some(&Step::Compensate),
        "compensation is a step of its own"
    );
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

    let summary = h.report_one(&out_v).await;
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["needs_attention"], true);
    h.assert_no_secret_in_outputs();
}

#[tokio::test(start_paused = true)]
async fn a_crashed_step_is_the_step_the_state_named_as_next() {
    let mut h = Harness::new(false);
    let s = h.step("inspect", &fresh()).await.unwrap();
    assert_eq!(next(&s), "create");
    let caught = json!({"Error": "States.Timeout", "Cause": "Task timed out"});
    let out = h
        .call(json!({"step": "compensate", "state": s, "error": caught}))
        .await
        .unwrap();
    let out = state(&out);
    let f = out.failure.unwrap();
    assert_eq!(f.step, Step::Create);
    assert_eq!(
        f.message,
        "the step stopped without a result (States.Timeout: Task timed out)"
    );
    assert_eq!(out.outcome, Some(Outcome::Failed));
}

#[tokio::test(start_paused = true)]
async fn the_failed_step_is_never_read_from_the_message() {
    // Was: the Lambda parsed "step: " off the message. A message that starts with another
    // step's name is still attributed to the step that failed.
    let mut h = Harness::new(false);
    let s = h.step("inspect", &fresh()).await.unwrap();
    let s = h.step("create", &s).await.unwrap();
    let caught = json!({"Error": "Rotation.Failed",
        "Cause": json!({"errorType": "Rotation.Failed", "errorMessage": "push: looks like push"}).to_string()});
    let out = state(
        &h.call(json!({"step": "compensate", "state": s, "error": caught}))
            .await
            .unwrap(),
    );
    let f = out.failure.unwrap();
    assert_eq!(f.step, Step::Verify);
    assert_eq!(f.message, "push: looks like push");
}

#[tokio::test(start_paused = true)]
async fn a_slack_failure_is_reported_in_the_summary_and_does_not_fail_the_run() {
    let mut h = Harness::new(true);
    let mut ok = fresh();
    ok["outcome"] = json!("rotated");
    ok["next"] = json!("done");
    let mut gone = fresh();
    gone["progress"]["target"] = json!("gone");
    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": [{"state": ok}, {"state": gone, "error": {"Error": "States.Runtime", "Cause": "boom"}}]}))
        .await
        .expect("a Slack failure never fails the report step");
    assert_eq!(summary["notification"]["status"], "failed", "{summary}");
    assert!(
        summary["notification"]["error"]
            .as_str()
            .unwrap()
            .contains("channel_not_found"),
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
    let s = state(&h.step("inspect", &fresh()).await.unwrap());
    assert_eq!(s.plan.unwrap().decision(), Decision::Refuse);
    assert_eq!(s.outcome, Some(Outcome::Refused));
    assert_eq!(s.next, None);
    assert!(s.failure.unwrap().message.contains("OIDC"));
}

#[tokio::test]
async fn bad_input_unknown_targets_and_a_step_the_state_does_not_name_are_rotation_failed() {
    let mut h = Harness::new(false);
    let e = h.call(json!({"step": "dance"})).await.unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    let mut nope = fresh();
    nope["progress"]["target"] = json!("nope");
    let e = h.step("inspect", &nope).await.unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    assert!(e.error_message.contains("no target named 'nope'"));
    let mut bad = fresh();
    bad["progress"]["run_id"] = json!("has spaces");
    let e = h.step("inspect", &bad).await.unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    let e = h.step("push", &fresh()).await.unwrap_err();
    assert_eq!(e.error_type, "Rotation.Failed");
    assert!(
        e.error_message.contains("names 'inspect' as next"),
        "{}",
        e.error_message
    );
    assert_eq!(h.scenario.fakes.state().mutations, 0);
}

#[test]
fn every_kind_has_its_own_error_name() {
    use keyrotor_core::machine::error_name;
    use keyrotor_core::protocol::StepErrorKind as K;
    assert_eq!(error_name(K::Retryable), "Rotation.Retryable");
    assert_eq!(error_name(K::NotPropagated), "Rotation.NotPropagated");
    assert_eq!(error_name(K::Busy), "Rotation.Busy");
    assert_eq!(error_name(K::Refused), "Rotation.Refused");
    assert_eq!(error_name(K::Invalid), "Rotation.Invalid");
    assert_eq!(error_name(K::Failed), "Rotation.Failed");
}

#[tokio::test]
async fn a_run_where_nothing_happened_posts_nothing() {
    let mut h = Harness::new(false);
    let mut s = fresh();
    s["outcome"] = json!("nothing-due");
    s["next"] = json!("done");
    let summary = h.report_one(&s).await;
    assert_eq!(summary["notification"], json!({"status": "skipped"}));
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
    let s = h.step("create", &s).await.unwrap();
    assert!(state(&s).progress.created_here);
    let mut s = s;
    loop {
        match h.step("verify", &s).await {
            Ok(v) => {
                s = v;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
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
    let out = state(
        &h.call(json!({"step": "compensate", "state": s, "error": caught(&err)}))
            .await
            .unwrap(),
    );
    assert_eq!(out.failure.as_ref().map(|f| f.step), Some(Step::Push));
    assert!(out.progress.put_attempted);
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

// ---- Parity: the CLI's engine and the Lambda's handlers run core's one machine. Each case
// below was a divergence between the two copies of the orchestration; both paths must now give
// the same outcome.

fn same(cli: &TargetReport, lambda: &TargetReport) {
    assert_eq!(
        cli.outcome, lambda.outcome,
        "outcome: cli {cli:?}\nlambda {lambda:?}"
    );
    assert_eq!(cli.failed_step, lambda.failed_step, "failed step");
    assert_eq!(cli.error, lambda.error, "error");
    assert_eq!(
        cli.compensation.is_some(),
        lambda.compensation.is_some(),
        "compensation"
    );
    assert_eq!(cli.next_step, lambda.next_step, "next step");
    assert_eq!(cli.steps, lambda.steps, "steps");
}

/// Another run's live intent record at AWSPENDING, written after this run's inspect would
/// have planned (so the target is found busy at `create`, not at inspect).
fn other_runs_intent(sc: &Scenario) {
    let now = keyrotor_core::ports::Clock::now(&sc.fakes);
    let st = &mut *sc.fakes.state();
    let v = keyrotor_core::secret_value::intent_value("other-run", now + Duration::from_secs(3600));
    let versions = st.secrets.get_mut("pipeline-key").unwrap();
    for v in versions.iter_mut() {
        v.stages.retain(|s| s != "AWSPENDING");
    }
    versions.push(keyrotor_testkit::fakes::FakeVersion {
        id: "intent-of-other-run-0000000000000000".into(),
        value: secrecy::ExposeSecret::expose_secret(&v).to_owned(),
        stages: vec!["AWSPENDING".into()],
    });
}

#[tokio::test(start_paused = true)]
async fn parity_a_target_another_run_owns_stands_aside_on_both_paths_and_nothing_is_undone() {
    let cli_sc = Scenario::new(1);
    other_runs_intent(&cli_sc);
    let cli = cli_run(&cli_sc).await;
    let mut h = Harness::new(false);
    other_runs_intent(&h.scenario);
    let lambda = lambda_run(&mut h).await;
    same(&cli, &lambda);
    assert_eq!(cli.outcome, Outcome::Busy);
    assert!(
        cli.compensation.is_none(),
        "busy is never compensated: {cli:?}"
    );
    for sc in [&cli_sc, &h.scenario] {
        let st = sc.fakes.state();
        assert_eq!(st.users["pipeline"].len(), 1);
        assert!(
            st.secrets["pipeline-key"]
                .iter()
                .any(|v| v.id.starts_with("intent-of-other-run") && v.stages == ["AWSPENDING"]),
            "the other run's intent is untouched"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn parity_a_user_that_does_not_exist_is_invalid_on_both_paths() {
    // Was: the Lambda reported `failed` (Rotation.Failed), the CLI `invalid`.
    let cli_sc = Scenario::new(1);
    cli_sc.fakes.state().users.clear();
    let cli = cli_run(&cli_sc).await;
    let mut h = Harness::new(false);
    h.scenario.fakes.state().users.clear();
    let lambda = lambda_run(&mut h).await;
    same(&cli, &lambda);
    assert_eq!(cli.outcome, Outcome::Invalid);
}

#[tokio::test(start_paused = true)]
async fn parity_a_failed_push_is_compensated_alike() {
    let script = || {
        [Some(PortError::new(
            PortErrorKind::Failed,
            "TF400813: not authorized",
        ))]
        .into_iter()
        .collect()
    };
    let cli_sc = Scenario::new(1);
    cli_sc.fakes.state().ado_put_script = script();
    let cli = cli_run(&cli_sc).await;
    let mut h = Harness::new(false);
    h.scenario.fakes.state().ado_put_script = script();
    let lambda = lambda_run(&mut h).await;
    same(&cli, &lambda);
    assert_eq!(cli.failed_step, Some(Step::Push));
    assert!(cli.compensation.as_deref().unwrap().contains("deleted"));
}

#[tokio::test(start_paused = true)]
async fn parity_the_whole_rotation_takes_the_same_steps() {
    let cli_sc = Scenario::new(1);
    let cli = cli_run(&cli_sc).await;
    let mut h = Harness::new(false);
    let lambda = lambda_run(&mut h).await;
    same(&cli, &lambda);
    assert_eq!(cli.outcome, Outcome::Rotated);
}

#[tokio::test]
async fn parity_an_empty_run_is_quiet_on_both_paths() {
    // Was: an empty run was quiet for the CLI and posted for the Lambda.
    let recorder = Arc::new(Recorder::default());
    let sc = Scenario::new(1);
    let quiet: Observer = Arc::new(|_| {});
    let opts = run_options();
    let cli = engine::run(
        &sc.fakes.ports(),
        &sc.policy,
        &[],
        &opts,
        Some(recorder.as_ref() as &dyn Notifier),
        &quiet,
    )
    .await;
    let mut h = Harness::new(false);
    let summary = h
        .call(json!({"step": "report", "run_id": RUN, "results": []}))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&cli.notification).unwrap(),
        summary["notification"]
    );
    assert_eq!(summary["notification"], json!({"status": "skipped"}));
    assert!(recorder.seen.lock().unwrap().is_empty());
    assert!(h.notifier.seen.lock().unwrap().is_empty());
}

/// Azure DevOps that never answers (a hung connection).
struct HungAdo;

#[async_trait]
impl keyrotor_core::ports::ServiceConnections for HungAdo {
    async fn find(
        &self,
        _: &keyrotor_core::domain::OrgUrl,
        _: &keyrotor_core::domain::EndpointRef,
    ) -> PortResult<keyrotor_core::ports::Endpoint> {
        std::future::pending().await
    }
    async fn get(
        &self,
        _: &keyrotor_core::ports::EndpointHandle,
    ) -> PortResult<Option<keyrotor_core::ports::Endpoint>> {
        std::future::pending().await
    }
    async fn list_aws(
        &self,
        _: &keyrotor_core::domain::OrgUrl,
    ) -> PortResult<Vec<keyrotor_core::ports::AwsConnection>> {
        std::future::pending().await
    }
    async fn set_credentials(
        &self,
        _: &keyrotor_core::ports::EndpointHandle,
        _: &keyrotor_core::domain::AccessKeyId,
        _: &secrecy::SecretString,
    ) -> PortResult<()> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_would_outlast_its_invocation_ends_first_as_retryable() {
    let scenario = Scenario::new(1);
    let mut ports = scenario.fakes.ports();
    ports.ado = Arc::new(HungAdo);
    let deps = Deps::with_ports(config(false), ports, Arc::new(scenario.fakes.clone()), None);
    // Lambda's deadline: 3 s after the step's own limit (DEADLINE_MARGIN before it).
    let deadline =
        std::time::SystemTime::now() + keyrotor_lambda::DEADLINE_MARGIN + Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    // (Time is paused: a hang would be a minute of virtual time, then a failure, not a hang.)
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        keyrotor_lambda::handle_until(
            json!({"step": "inspect", "state": fresh()}),
            &deps,
            Some(deadline),
        ),
    )
    .await
    .expect("the step ends before Lambda's deadline instead of running into it");
    let d = out.expect_err("a step that cannot finish in time fails");
    assert_eq!(d.error_type, "Rotation.Retryable", "{}", d.error_message);
    assert!(d.error_message.contains("inspect"), "{}", d.error_message);
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "it ended by its own limit ({:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_aws_call_of_an_invocation_is_bounded_by_its_remaining_time() {
    let base = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let left = Duration::from_secs(12);
    let t = keyrotor_aws::bounded(&base, left);
    let t = t.timeout_config().expect("timeouts are set");
    assert_eq!(t.operation_timeout(), Some(left));
    assert!(t.operation_attempt_timeout().is_some_and(|a| a <= left));
    assert!(t.connect_timeout().is_some_and(|c| c <= left));
}
