//! The state machine's definition against the core: its steps are `Step::ALL`, in order, and
//! every Task retries and catches as the design says.

use keyrotor_core::report::Step;
use serde_json::Value;

const ASL: &str = include_str!("../../../deploy/statemachine/rotate.asl.json");

const LAMBDA_ERRORS: [&str; 4] = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];

fn asl() -> Value {
    serde_json::from_str(ASL).expect("rotate.asl.json is JSON")
}

/// Every state of the machine, Map iterations included, as (name, state).
fn all_states(machine: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (name, st) in machine["States"].as_object().unwrap() {
        out.push((name.clone(), st.clone()));
        if let Some(inner) = st.get("ItemProcessor").or_else(|| st.get("Iterator")) {
            out.extend(all_states(inner));
        }
    }
    out
}

/// The `step` values of the Task states met on the happy path (Choice: Default; Map: into its
/// iteration), in order.
fn happy_path_steps(machine: &Value) -> Vec<String> {
    let states = machine["States"].as_object().unwrap();
    let mut out = Vec::new();
    let mut at = machine["StartAt"].as_str().map(str::to_owned);
    let mut guard = 0;
    while let Some(name) = at {
        guard += 1;
        assert!(guard < 100, "the happy path loops");
        let st = &states[&name];
        match st["Type"].as_str().unwrap() {
            "Task" => out.extend(
                st.pointer("/Parameters/Payload/step")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            "Map" => out.extend(happy_path_steps(&st["ItemProcessor"])),
            _ => {}
        }
        at = match st["Type"].as_str().unwrap() {
            "Choice" => st["Default"].as_str().map(str::to_owned),
            _ => st["Next"].as_str().map(str::to_owned),
        };
    }
    out
}

#[test]
fn the_state_machine_runs_the_core_s_steps_in_order() {
    let steps: Vec<String> = happy_path_steps(&asl())
        .into_iter()
        .filter(|s| s != "targets")
        .collect();
    let core: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        steps, core,
        "deploy/statemachine/rotate.asl.json has drifted from keyrotor_core::report::Step::ALL"
    );
}

#[test]
fn every_step_the_machine_names_is_one_the_lambda_handles() {
    let mut named: Vec<String> = all_states(&asl())
        .iter()
        .filter_map(|(_, st)| {
            st.pointer("/Parameters/Payload/step")
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .collect();
    named.sort();
    named.dedup();
    let mut expected: Vec<String> = Step::ALL.iter().map(|s| s.name().to_owned()).collect();
    expected.extend(["targets".to_owned(), "compensate".to_owned()]);
    expected.sort();
    assert_eq!(named, expected);
    for step in &expected {
        let req: Result<keyrotor_lambda::Request, _> =
            serde_json::from_value(serde_json::json!({"step": step, "state": {}, "error": {}}));
        assert!(
            req.is_ok(),
            "the Lambda does not parse step {step}: {req:?}"
        );
    }
}

#[test]
fn every_task_retries_lambda_errors_and_rotation_retryable_and_catches_everything() {
    for (name, st) in all_states(&asl()) {
        if st["Type"] != "Task" {
            continue;
        }
        assert_eq!(st["Resource"], "arn:aws:states:::lambda:invoke", "{name}");
        let function = st
            .pointer("/Parameters/FunctionName")
            .unwrap()
            .as_str()
            .unwrap();
        assert!(
            [
                "${RotatorFunctionArn}",
                "${PusherFunctionArn}",
                "${NotifierFunctionArn}"
            ]
            .contains(&function),
            "{name}: {function}"
        );
        let retry = st["Retry"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no Retry"));
        let lambda = retry
            .iter()
            .find(|r| r["ErrorEquals"].as_array().unwrap().len() == 4)
            .unwrap_or_else(|| panic!("{name} does not retry Lambda's service errors"));
        for e in LAMBDA_ERRORS {
            assert!(
                lambda["ErrorEquals"]
                    .as_array()
                    .unwrap()
                    .contains(&e.into()),
                "{name}: {e}"
            );
        }
        assert_eq!(lambda["JitterStrategy"], "FULL", "{name}");
        assert!(lambda["BackoffRate"].as_f64().unwrap() > 1.0, "{name}");
        assert!(
            retry
                .iter()
                .any(|r| r["ErrorEquals"] == serde_json::json!(["Rotation.Retryable"])),
            "{name} does not retry Rotation.Retryable"
        );
        let catch = st["Catch"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no Catch"));
        assert!(
            catch
                .iter()
                .any(|c| c["ErrorEquals"] == serde_json::json!(["States.ALL"])
                    && c["ResultPath"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("$."))),
            "{name}: a Catch of States.ALL that keeps the input"
        );
    }
}

#[test]
fn verify_waits_for_propagation_through_retry() {
    let states = all_states(&asl());
    let verify = &states.iter().find(|(n, _)| n == "Verify").unwrap().1;
    let r = &verify["Retry"][0];
    assert_eq!(
        r["ErrorEquals"],
        serde_json::json!(["Rotation.NotPropagated"])
    );
    // The longest total wait the Retry allows (without jitter) covers the default verify_timeout.
    let (mut wait, mut interval) = (0.0, r["IntervalSeconds"].as_f64().unwrap());
    for _ in 0..r["MaxAttempts"].as_u64().unwrap() {
        wait += interval.min(r["MaxDelaySeconds"].as_f64().unwrap());
        interval *= r["BackoffRate"].as_f64().unwrap();
    }
    assert!(wait >= 100.0, "the Retry waits {wait}s in all");
}
