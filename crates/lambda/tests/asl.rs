//! The state machine's definition against core's machine: every transition of
//! `keyrotor_core::machine::TRANSITIONS` is a route of the definition (and no other), every
//! step's failure goes to `compensate`, and only the kinds core calls retryable are retried.

use keyrotor_core::machine::{ERROR_KINDS, TRANSITIONS, error_name};
use keyrotor_core::protocol::StepErrorKind;
use keyrotor_core::report::Step;
use serde_json::Value;

mod common;
use common::{ASL, all_states};

const LAMBDA_ERRORS: [&str; 4] = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
];

/// The one Task that is not a keyrotor function: the check for other running executions.
const ONE_AT_A_TIME: &str = "OneAtATime";

fn asl() -> Value {
    serde_json::from_str(ASL).expect("rotate.asl.json is JSON")
}

/// The per-target iteration (a batch's inline Map, inside the fleet's Distributed Map): where
/// the machine's transitions are.
fn iteration(machine: &Value) -> serde_json::Map<String, Value> {
    machine["States"]["RotateTargets"]["ItemProcessor"]["States"]["RotateBatch"]["ItemProcessor"]
        ["States"]
        .as_object()
        .expect("RotateTargets runs batches whose RotateBatch is a Map with an ItemProcessor")
        .clone()
}

/// The Task state that runs `step`, by its payload (exactly one).
fn task_of(states: &serde_json::Map<String, Value>, step: &str) -> String {
    let found: Vec<&String> = states
        .iter()
        .filter(|(_, st)| {
            st.pointer("/Parameters/Payload/step")
                .and_then(Value::as_str)
                == Some(step)
        })
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one Task runs step {step}: {found:?}"
    );
    found[0].clone()
}

/// Where the iteration goes after the Task `from` succeeds with a state whose `next` is
/// `next`: the step of the Task it reaches (through Choice, Wait and Pass states), or "done" at
/// the iteration's end. `None` when no route matches.
fn route(states: &serde_json::Map<String, Value>, from: &str, next: &str) -> Option<String> {
    let mut at = states[from]["Next"].as_str()?.to_owned();
    for _ in 0..20 {
        let st = &states[&at];
        match st["Type"].as_str().unwrap() {
            "Task" => {
                return st
                    .pointer("/Parameters/Payload/step")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
            }
            "Choice" => {
                let hit = st["Choices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["Variable"] == "$.state.next" && c["StringEquals"] == next);
                at = match hit {
                    Some(c) => c["Next"].as_str().unwrap().to_owned(),
                    None => st["Default"].as_str()?.to_owned(),
                };
            }
            _ if st["End"] == true => return Some("done".into()),
            _ => at = st["Next"].as_str()?.to_owned(),
        }
    }
    None
}

#[test]
fn every_transition_of_core_s_machine_is_a_route_of_the_definition() {
    let states = iteration(&asl());
    for (from, successors) in TRANSITIONS {
        let task = task_of(&states, from.name());
        let names: Vec<&str> = successors
            .iter()
            .map(|s| s.map_or("done", Step::name))
            .collect();
        for want in &names {
            assert_eq!(
                route(&states, &task, want).as_deref(),
                Some(*want),
                "after {from} core may go to {want}; deploy/statemachine/rotate.asl.json does not route there"
            );
        }
        // And nowhere else: where a step has several successors, a `next` core never sets after
        // it falls to the Default, which records a failure (compensate), never another step.
        if names.len() > 1 {
            for other in Step::ALL.iter().map(|s| s.name()).chain(["done"]) {
                if names.contains(&other) {
                    continue;
                }
                assert_eq!(
                    route(&states, &task, other).as_deref(),
                    Some("compensate"),
                    "after {from} the definition routes next={other} somewhere core never goes"
                );
            }
        }
    }
    let tasks = states
        .iter()
        .filter(|(_, st)| st.pointer("/Parameters/Payload/step").is_some())
        .count();
    assert_eq!(
        tasks,
        TRANSITIONS.len(),
        "one Task per step of core's machine, no more"
    );
}

#[test]
fn every_failure_of_a_step_goes_to_compensate_with_the_state_it_started_from() {
    let states = iteration(&asl());
    let compensate = task_of(&states, "compensate");
    for (from, _) in TRANSITIONS.iter().filter(|(s, _)| *s != Step::Compensate) {
        let task = task_of(&states, from.name());
        assert_eq!(
            states[&task]["Catch"],
            serde_json::json!([{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": compensate}]),
            "{task}: every error, with the state kept at $.state and the error at $.error"
        );
    }
}

#[test]
fn the_definition_retries_only_the_kinds_core_calls_retryable() {
    let retried_by_core: Vec<&str> = ERROR_KINDS
        .iter()
        .filter(|k| matches!(k, StepErrorKind::Retryable | StepErrorKind::NotPropagated))
        .map(|k| error_name(*k))
        .collect();
    for (name, st) in all_states(&asl()) {
        if st.pointer("/Parameters/FunctionName").is_none() {
            continue; // not one of keyrotor's functions
        }
        for r in st["Retry"].as_array().into_iter().flatten() {
            for e in r["ErrorEquals"].as_array().unwrap() {
                let e = e.as_str().unwrap();
                assert!(
                    LAMBDA_ERRORS.contains(&e) || retried_by_core.contains(&e),
                    "{name} retries {e}, which core does not call retryable"
                );
            }
        }
    }
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
    expected.push("targets".to_owned());
    expected.sort();
    assert_eq!(named, expected);
    for step in &expected {
        let req: Result<keyrotor_lambda::Request, _> =
            serde_json::from_value(serde_json::json!({"step": step, "error": {},
                "state": {"progress": {"target": "t", "run_id": "r"}, "next": "inspect"}}));
        assert!(
            req.is_ok(),
            "the Lambda does not parse step {step}: {req:?}"
        );
    }
}

#[test]
fn every_task_retries_lambda_errors_and_rotation_retryable_and_catches_everything() {
    for (name, st) in all_states(&asl()) {
        if st["Type"] != "Task" || name == ONE_AT_A_TIME {
            continue;
        }
        assert_eq!(
            st["Resource"], "arn:${Partition}:states:::lambda:invoke",
            "{name}"
        );
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

#[test]
fn the_execution_checks_for_older_running_ones_before_anything_else() {
    let machine = asl();
    assert_eq!(machine["StartAt"], ONE_AT_A_TIME);
    let task = &machine["States"][ONE_AT_A_TIME];
    assert_eq!(
        task["Resource"],
        "arn:${Partition}:states:::aws-sdk:sfn:listExecutions"
    );
    assert_eq!(task["Parameters"]["StatusFilter"], "RUNNING");
    assert_eq!(
        task["Parameters"]["StateMachineArn.$"],
        "$$.StateMachine.Id"
    );
    // Whatever happens, nothing but the Choice and Pass states of the check run before the
    // targets are listed, and a failed check changes nothing.
    let failed = task["Catch"][0]["Next"].as_str().unwrap();
    assert_eq!(machine["States"][failed]["Type"], "Fail");
    // The targets are listed with the execution's own input (the check's answer is not it).
    assert_eq!(
        machine["States"]["ListTargets"]["Parameters"]["Payload"]["input.$"],
        "$$.Execution.Input"
    );
}

/// The fleet one execution is sized for (deploy/README.md, "How large a fleet one execution
/// handles").
const FLEET: usize = 800;

/// Step Functions' limit on a state's input or output, and on a Task's result.
const STATE_LIMIT: usize = 256 * 1024;

/// How many targets may be between `inspect` and `confirm` at once, across the whole execution:
/// Azure DevOps allows about 200 requests per 5 minutes per PAT, and one target makes about 8.
const ACTIVE_TARGETS: u64 = 30;

/// The batch size, from `ListTargets`' `States.ArrayPartition($.Payload.targets, N)`.
fn batch_size(machine: &Value) -> u64 {
    let selector = machine["States"]["ListTargets"]["ResultSelector"]["batches.$"]
        .as_str()
        .unwrap();
    selector
        .strip_prefix("States.ArrayPartition($.Payload.targets, ")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("ListTargets partitions the targets: {selector}"))
        .parse()
        .unwrap()
}

#[test]
fn the_fleet_runs_in_batches_as_child_executions_with_bounded_concurrency() {
    let machine = asl();
    let fleet = &machine["States"]["RotateTargets"];
    assert_eq!(fleet["Type"], "Map");
    assert_eq!(fleet["ItemsPath"], "$.batches");
    assert_eq!(
        fleet["ItemProcessor"]["ProcessorConfig"],
        serde_json::json!({"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}),
        "each batch a child execution, with its own history"
    );
    let batch = &fleet["ItemProcessor"]["States"]["RotateBatch"];
    assert_eq!(batch["ItemProcessor"]["ProcessorConfig"]["Mode"], "INLINE");
    let size = batch_size(&machine);
    assert_eq!(
        batch["MaxConcurrency"].as_u64(),
        Some(size),
        "every target of a batch at once, so that their drains overlap"
    );
    let batches = fleet["MaxConcurrency"].as_u64().expect("bounded");
    assert!(
        batches * size <= ACTIVE_TARGETS,
        "{batches} batches of {size} at once: more targets than Azure DevOps' rate limit serves"
    );
    // The run id of every batch is the parent execution's name.
    assert_eq!(fleet["ItemSelector"]["run_id.$"], "$$.Execution.Name");
    // A batch never fails its child execution: a failed report is a result that needs attention.
    let failed = &fleet["ItemProcessor"]["States"]["ReportFailed"];
    assert_eq!(failed["Type"], "Pass");
    assert_eq!(failed["Parameters"]["needs_attention"], true);
}

#[test]
fn a_fleet_of_800_targets_fits_the_state_limits_and_the_execution_timeout() {
    use keyrotor_core::config::Config;
    let machine = asl();
    let size = batch_size(&machine) as usize;
    // The largest state a target starts with: a 64-character name, a UUID run id.
    let name = "t".repeat(64);
    let config = Config::parse(
        std::path::Path::new("fleet.toml"),
        &format!(
            "[ado]\norganization = \"https://dev.azure.com/contoso\"\npat = \"env:PAT\"\n\n[[target]]\nname = \"{name}\"\niam_user = \"{name}\"\nsecret = \"keyrotor/{name}\"\nendpoints = [ {{ project = \"Platform\", name = \"aws-prod\" }} ]\n"
        ),
    )
    .unwrap();
    let run_id =
        keyrotor_core::domain::RunId::parse("5b0e2c9a-8f41-4d1b-a7c3-0e9d6f2b1a77").unwrap();
    let one = keyrotor_core::machine::TargetState::new(&config.targets[0], run_id, true);
    let listed = serde_json::to_vec(&keyrotor_lambda::TargetsOutput {
        targets: vec![one; FLEET],
    })
    .unwrap()
    .len();
    assert!(
        listed < STATE_LIMIT,
        "ListTargets' answer for {FLEET} targets is {listed} bytes"
    );
    // The parent keeps one summary per batch.
    let summary = serde_json::json!({
        "needs_attention": true,
        "summary": keyrotor_lambda::Summary {
            run_id: "5b0e2c9a-8f41-4d1b-a7c3-0e9d6f2b1a77".into(),
            rotated: 0, nothing_due: 0, busy: 0, refused: 0, invalid: 0, failed: size,
            needs_attention: true,
            notification: keyrotor_core::report::NotificationStatus::Failed("x".repeat(300)),
            targets: vec![format!("{name}: nothing-due"); size],
        },
    });
    let results = serde_json::to_vec(&summary).unwrap().len() * FLEET.div_ceil(size);
    assert!(
        results < STATE_LIMIT,
        "the batches' summaries of {FLEET} targets are {results} bytes"
    );
    // Time: batches run `MaxConcurrency` at a time; each takes its targets' steps (at most
    // every Task's timeout once, 15 min in all is generous) and the drain.
    let drain = keyrotor_core::config::Policy::default().drain.as_secs();
    let at_once = machine["States"]["RotateTargets"]["MaxConcurrency"]
        .as_u64()
        .unwrap() as usize;
    let rounds = FLEET.div_ceil(size).div_ceil(at_once) as u64;
    let needed = rounds * (drain + 15 * 60);
    let timeout = machine["TimeoutSeconds"].as_u64().unwrap();
    assert!(
        timeout >= needed,
        "{FLEET} targets need about {needed} s ({rounds} rounds of a {drain} s drain and the steps); the execution times out after {timeout} s"
    );
}
