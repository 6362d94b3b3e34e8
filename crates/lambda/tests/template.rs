//! `deploy/template.yaml` as CloudFormation runs it: packaged as `aws cloudformation package`
//! and `sam deploy` package it (each function's own `CodeUri` replaced by its S3 location), then
//! translated by the SAM translator (`scripts/check-deploy --translate`, which installs
//! `aws-sam-translator` pinned, by itself), and checked against the state machine definition and
//! against the `bootstrap` this machine builds.
//!
//! The architecture check reads the ELF header of the `bootstrap` cargo builds for these tests:
//! the same toolchain and host target `scripts/package-lambda` builds the release zip with (a
//! fat-LTO release build is too slow for every CI run). `scripts/package-lambda` checks the ELF
//! header of every zip it writes, and refuses to put a zip of another architecture than the
//! template's default into `deploy/dist/` without saying which override the deploy needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

mod common;
use common::{ASL, all_states};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The translated template (CloudFormation JSON), made once per test binary.
fn translated() -> &'static Value {
    static T: OnceLock<Value> = OnceLock::new();
    T.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("template.translated.json");
        let status = Command::new(repo().join("scripts/check-deploy"))
            .arg("--translate")
            .arg(&out)
            .status()
            .expect("scripts/check-deploy runs (it needs python3)");
        assert!(
            status.success(),
            "scripts/check-deploy --translate failed: the packagers or the SAM translator reject deploy/template.yaml"
        );
        serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("the translator writes JSON")
    })
}

/// The translated resources of one type, by logical id.
fn resources(kind: &str) -> Vec<(String, Value)> {
    translated()["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == kind)
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

/// Lambda's name for the instruction set of an ELF executable (`e_machine`, little-endian at
/// offset 18).
fn elf_architecture(bytes: &[u8]) -> &'static str {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF executable");
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => "x86_64",
        183 => "arm64",
        other => panic!("an ELF executable for machine {other}, which Lambda does not run"),
    }
}

#[test]
fn the_default_architecture_is_the_one_this_machine_builds() {
    let bootstrap = std::fs::read(env!("CARGO_BIN_EXE_bootstrap")).unwrap();
    let built = elf_architecture(&bootstrap);
    let default = &translated()["Parameters"]["Architecture"]["Default"];
    assert_eq!(
        default, built,
        "a default deploy would run a {built} bootstrap as {default}: Runtime.InvalidEntrypoint on every invocation"
    );
    let functions = resources("AWS::Lambda::Function");
    assert_eq!(functions.len(), 3, "rotator, pusher, notifier");
    for (name, f) in functions {
        assert_eq!(
            f["Properties"]["Architectures"],
            serde_json::json!([{"Ref": "Architecture"}]),
            "{name} runs on the Architecture parameter"
        );
    }
}

/// `scripts/package-lambda --arch-of` on a zip of `bytes` as `bootstrap`: its answer, or `None`
/// when it refuses the zip.
fn package_script_arch_of(bytes: &[u8]) -> Option<String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("zip-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bootstrap"), bytes).unwrap();
    let zipped = Command::new("python3")
        .args(["-m", "zipfile", "-c", "bootstrap.zip", "bootstrap"])
        .current_dir(&dir)
        .status()
        .expect("python3 runs");
    assert!(zipped.success());
    let out = Command::new(repo().join("scripts/package-lambda"))
        .arg("--arch-of")
        .arg(dir.join("bootstrap.zip"))
        .output()
        .expect("scripts/package-lambda runs");
    std::fs::remove_dir_all(&dir).unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn the_package_script_names_the_architecture_of_a_zip_by_its_elf_header() {
    let bootstrap = std::fs::read(env!("CARGO_BIN_EXE_bootstrap")).unwrap();
    let built = elf_architecture(&bootstrap);
    assert_eq!(package_script_arch_of(&bootstrap).as_deref(), Some(built));
    assert_eq!(
        translated()["Parameters"]["Architecture"]["Default"],
        built,
        "a zip of this machine's build deploys with the template's default"
    );
    // An AArch64 header (the first 20 bytes are all it reads), and things Lambda cannot run.
    let mut arm = bootstrap[..64].to_vec();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    assert_eq!(package_script_arch_of(&arm).as_deref(), Some("arm64"));
    assert_eq!(package_script_arch_of(b"#!/bin/sh\necho hi\n"), None);
    let mut other = bootstrap[..64].to_vec();
    other[18..20].copy_from_slice(&40u16.to_le_bytes());
    assert_eq!(package_script_arch_of(&other), None, "32-bit ARM");
}

#[test]
fn every_function_is_packaged_from_its_own_code_uri() {
    for (name, f) in resources("AWS::Lambda::Function") {
        assert_eq!(
            f["Properties"]["Code"],
            serde_json::json!({"S3Bucket": "keyrotor-artifacts", "S3Key": format!("{name}/bootstrap.zip")}),
            "{name}: its own CodeUri, as the packagers upload it"
        );
    }
    // The state machine definition is the file, inlined by the packaging step.
    let sm = resources("AWS::StepFunctions::StateMachine");
    assert_eq!(sm.len(), 1);
    let asl: Value = serde_json::from_str(ASL).unwrap();
    assert!(
        sm[0].1["Properties"]["DefinitionString"]
            .to_string()
            .contains(asl["StartAt"].as_str().unwrap()),
        "the definition comes from deploy/statemachine/rotate.asl.json"
    );
}

/// How much longer than its function a Task must wait, at least: Lambda's own deadline ends the
/// code first (its cold start, throttling and the answer's trip come on top), so a Task's
/// `States.Timeout`, and the compensation it leads to, never overlap a step still running.
const TASK_MARGIN_SECONDS: u64 = 20;

/// The logical id a `Ref` or `Fn::GetAtt` names.
fn referenced(v: &Value) -> String {
    v.get("Ref")
        .or_else(|| v.pointer("/Fn::GetAtt/0"))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("not a Ref or GetAtt: {v}"))
        .to_owned()
}

/// The translated function (logical id, resource) a Task's `FunctionName` placeholder names,
/// through the state machine's `DefinitionSubstitutions` (a function, or a version of one).
fn function_of(placeholder: &str) -> (String, Value) {
    let (_, sm) = &resources("AWS::StepFunctions::StateMachine")[0];
    let key = placeholder
        .strip_prefix("${")
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or_else(|| panic!("FunctionName {placeholder} is not a ${{placeholder}}"));
    let mut id = referenced(&sm["Properties"]["DefinitionSubstitutions"][key]);
    let all = &translated()["Resources"];
    while ["AWS::Lambda::Version", "AWS::Lambda::Alias"]
        .contains(&all[&id]["Type"].as_str().unwrap())
    {
        id = referenced(&all[&id]["Properties"]["FunctionName"]);
    }
    assert_eq!(all[&id]["Type"], "AWS::Lambda::Function", "{placeholder}");
    (id.clone(), all[&id].clone())
}

#[test]
fn every_task_waits_longer_than_its_function_runs() {
    let asl: Value = serde_json::from_str(ASL).unwrap();
    let mut checked = 0;
    for (name, st) in all_states(&asl) {
        let Some(placeholder) = st
            .pointer("/Parameters/FunctionName")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let (function, f) = function_of(placeholder);
        let timeout = f["Properties"]["Timeout"]
            .as_u64()
            .unwrap_or_else(|| panic!("{function} has no Timeout"));
        let task = st["TimeoutSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} has no TimeoutSeconds"));
        assert!(
            task >= timeout + TASK_MARGIN_SECONDS,
            "{name} gives up after {task} s, but {function} may run {timeout} s: compensation would overlap a running step (at least {TASK_MARGIN_SECONDS} s more are needed)"
        );
        checked += 1;
    }
    assert!(checked >= 11, "every Lambda Task ({checked})");
}

#[test]
fn every_error_route_names_an_error_the_functions_raise() {
    use keyrotor_core::machine::{ERROR_KINDS, error_name};
    let raised: Vec<&str> = ERROR_KINDS.iter().map(|k| error_name(*k)).collect();
    let lambda = [
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    ];
    let asl: Value = serde_json::from_str(ASL).unwrap();
    for (name, st) in all_states(&asl) {
        if st.pointer("/Parameters/FunctionName").is_none() {
            continue;
        }
        for route in ["Retry", "Catch"] {
            for r in st[route].as_array().into_iter().flatten() {
                for e in r["ErrorEquals"].as_array().unwrap() {
                    let e = e.as_str().unwrap();
                    assert!(
                        raised.contains(&e) || lambda.contains(&e) || e.starts_with("States."),
                        "{name}'s {route} matches {e}, which no keyrotor function raises (core's names: {raised:?})"
                    );
                }
            }
        }
    }
}

#[test]
fn the_state_machine_may_list_its_own_running_executions_and_no_others() {
    let (_, sm) = &resources("AWS::StepFunctions::StateMachine")[0];
    let name = sm["Properties"]["StateMachineName"]["Fn::Sub"]
        .as_str()
        .expect("the state machine's name is derived from the stack");
    let role = referenced(&sm["Properties"]["RoleArn"]);
    let policies = &translated()["Resources"][&role]["Properties"]["Policies"];
    let listing: Vec<&Value> = policies
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["PolicyDocument"]["Statement"].as_array().unwrap())
        .filter(|s| s["Action"] == "states:ListExecutions")
        .collect();
    assert_eq!(
        listing.len(),
        1,
        "one statement allows states:ListExecutions"
    );
    assert_eq!(
        listing[0]["Resource"]["Fn::Sub"],
        format!(
            "arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:stateMachine:{name}"
        ),
        "on this state machine only"
    );
}

/// The alarms, by logical id.
fn alarms() -> Vec<(String, Value)> {
    resources("AWS::CloudWatch::Alarm")
}

/// The one alarm that watches `metric`, in its own properties or in a metric-math input.
fn alarm_on(metric: &str) -> Value {
    let found: Vec<Value> = alarms()
        .into_iter()
        .map(|(_, a)| a["Properties"].clone())
        .filter(|p| {
            p["MetricName"] == metric
                || p["Metrics"].as_array().into_iter().flatten().any(|m| {
                    m.pointer("/MetricStat/Metric/MetricName") == Some(&Value::from(metric))
                })
        })
        .collect();
    assert_eq!(found.len(), 1, "one alarm watches {metric}");
    found[0].clone()
}

#[test]
fn every_alarm_reaches_a_person() {
    let all = alarms();
    assert!(all.len() >= 4, "{}", all.len());
    let target = serde_json::json!([{"Fn::If": ["OwnAlarmTopic", {"Ref": "AlarmTopic"}, {"Ref": "AlarmTopicArn"}]}]);
    for (name, a) in &all {
        assert_eq!(
            a["Properties"]["AlarmActions"], target,
            "{name} notifies the stack's topic or the given one"
        );
    }
    // And a topic without a subscriber is refused at deploy: an email or a topic is required.
    let rule = &translated()["Rules"]["SomeoneHearsEveryAlarm"]["Assertions"][0]["Assert"];
    assert_eq!(
        rule,
        &serde_json::json!({"Fn::Or": [
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]},
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
        ]})
    );
    let (_, sub) = &resources("AWS::SNS::Subscription")[0];
    assert_eq!(
        sub["Properties"]["Endpoint"],
        serde_json::json!({"Ref": "AlarmEmail"})
    );
}

#[test]
fn one_alarm_covers_failed_timed_out_and_aborted_executions() {
    let a = alarm_on("ExecutionsFailed");
    for m in ["ExecutionsTimedOut", "ExecutionsAborted"] {
        assert_eq!(alarm_on(m), a, "{m} is in the same alarm");
    }
    let sum = a["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["ReturnData"] == true)
        .expect("the alarm's expression");
    let expr = sum["Expression"].as_str().unwrap();
    for id in ["failed", "timedout", "aborted"] {
        assert!(expr.contains(&format!("FILL({id}, 0)")), "{expr}");
    }
    assert_eq!(a["ComparisonOperator"], "GreaterThanOrEqualToThreshold");
    assert_eq!(a["Threshold"], 1);
}

/// The longest time between two starts of a schedule expression, in days (the forms the
/// template's default may take).
fn schedule_period_days(expr: &str) -> u64 {
    if let Some(rate) = expr.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
        let (n, unit) = rate.split_once(' ').unwrap();
        let n: u64 = n.parse().unwrap();
        return match unit.trim_end_matches('s') {
            "day" => n,
            "hour" | "minute" => n.div_ceil(if unit.starts_with("hour") { 24 } else { 1440 }),
            other => panic!("rate unit {other}"),
        };
    }
    let fields: Vec<&str> = expr
        .strip_prefix("cron(")
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("schedule {expr}"))
        .split(' ')
        .collect();
    match (fields[2], fields[3], fields[4]) {
        ("*", "*", "?") => 1,
        ("?", "*", dow) if !dow.contains([',', '-', '#', '/']) && dow != "*" => 7,
        other => panic!("the test does not know the period of {expr} ({other:?})"),
    }
}

#[test]
fn the_heartbeat_fires_when_no_execution_started_for_longer_than_the_schedule_s_period() {
    let a = alarm_on("ExecutionsStarted");
    assert_eq!(a["ComparisonOperator"], "LessThanThreshold");
    assert_eq!(a["Threshold"], 1);
    assert_eq!(
        a["TreatMissingData"], "breaching",
        "no data is no execution"
    );
    assert_eq!(a["Period"], 86400);
    assert_eq!(
        a["EvaluationPeriods"],
        serde_json::json!({"Ref": "HeartbeatDays"})
    );
    assert_eq!(
        a["DatapointsToAlarm"],
        serde_json::json!({"Ref": "HeartbeatDays"})
    );
    let params = &translated()["Parameters"];
    let days = params["HeartbeatDays"]["Default"].as_u64().unwrap();
    assert!(
        params["HeartbeatDays"]["MaxValue"].as_u64().unwrap() <= 7,
        "CloudWatch evaluates 7 days at most"
    );
    let period = schedule_period_days(params["ScheduleExpression"]["Default"].as_str().unwrap());
    assert!(
        days > period,
        "a heartbeat of {days} days under a schedule every {period} days would fire between two good runs"
    );
}

#[test]
fn a_start_the_schedule_could_not_deliver_is_kept_and_alarms() {
    let (_, schedule) = &resources("AWS::Scheduler::Schedule")[0];
    let dlq = referenced(&schedule["Properties"]["Target"]["DeadLetterConfig"]["Arn"]);
    assert_eq!(translated()["Resources"][&dlq]["Type"], "AWS::SQS::Queue");
    let a = alarm_on("ApproximateNumberOfMessagesVisible");
    assert_eq!(
        referenced(&a["Dimensions"][0]["Value"]),
        dlq,
        "the alarm watches the schedule's dead-letter queue"
    );
    // The schedule's role may send there.
    let role = referenced(&schedule["Properties"]["Target"]["RoleArn"]);
    let statements = translated()["Resources"][&role]["Properties"]["Policies"][0]
        ["PolicyDocument"]["Statement"]
        .clone();
    assert!(
        statements
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Action"] == "sqs:SendMessage" && referenced(&s["Resource"]) == dlq),
        "{statements}"
    );
}

#[test]
fn a_failed_slack_post_is_a_metric_the_stack_alarms_on() {
    use keyrotor_lambda::metrics::{DIMENSION, NAMESPACE, NOTIFICATIONS_FAILED};
    let a = alarm_on(NOTIFICATIONS_FAILED);
    assert_eq!(a["Namespace"], NAMESPACE);
    assert_eq!(a["Dimensions"][0]["Name"], DIMENSION);
    let (notifier, _) = function_of("${NotifierFunctionArn}");
    assert_eq!(
        referenced(&a["Dimensions"][0]["Value"]),
        notifier,
        "the function that posts to Slack"
    );
}

/// The longest stack name the template's names are sized for (deploy/README.md).
const STACK_NAME_MAX: usize = 73;

#[test]
fn every_name_fits_its_limit_for_any_stack_name_up_to_73_characters() {
    // (resource type, name property, AWS's limit)
    let limits = [
        ("AWS::Lambda::Function", "FunctionName", 64),
        ("AWS::StepFunctions::StateMachine", "StateMachineName", 80),
        ("AWS::Scheduler::Schedule", "Name", 64),
        ("AWS::SQS::Queue", "QueueName", 80),
        ("AWS::SNS::Topic", "TopicName", 256),
        ("AWS::CloudWatch::Alarm", "AlarmName", 255),
        ("AWS::Logs::LogGroup", "LogGroupName", 512),
        ("AWS::IAM::Role", "RoleName", 64),
    ];
    let stack = "s".repeat(STACK_NAME_MAX);
    let mut named = 0;
    for (id, r) in translated()["Resources"].as_object().unwrap() {
        for (kind, prop, limit) in limits {
            if r["Type"] != kind {
                continue;
            }
            let Some(name) = r["Properties"].get(prop) else {
                continue; // CloudFormation makes one up, within the limit
            };
            let text = name
                .get("Fn::Sub")
                .and_then(Value::as_str)
                .or(name.as_str())
                .unwrap_or_else(|| panic!("{id}.{prop} is {name}"));
            let rendered = text.replace("${AWS::StackName}", &stack);
            assert!(
                !rendered.contains("${"),
                "{id}.{prop}: only the stack name is expected in {text}"
            );
            assert!(
                rendered.len() <= limit,
                "{id}.{prop} is {} characters for a {STACK_NAME_MAX}-character stack name; the limit is {limit}",
                rendered.len()
            );
            named += 1;
        }
    }
    assert!(named >= 5, "{named}");
}

#[test]
fn no_arn_names_the_aws_partition() {
    let template = std::fs::read_to_string(repo().join("deploy/template.yaml")).unwrap();
    for (file, text) in [
        ("template.yaml", template.as_str()),
        ("rotate.asl.json", ASL),
    ] {
        assert!(
            !text.contains("arn:aws:"),
            "{file} names the aws partition; use ${{AWS::Partition}} (or ${{Partition}} in the ASL) for aws-cn and aws-us-gov"
        );
    }
    let (_, sm) = &resources("AWS::StepFunctions::StateMachine")[0];
    assert_eq!(
        sm["Properties"]["DefinitionSubstitutions"]["Partition"],
        serde_json::json!({"Ref": "AWS::Partition"})
    );
}

#[test]
fn the_config_parameter_is_named_after_the_stack_and_outlives_it() {
    let (_, p) = &resources("AWS::SSM::Parameter")[0];
    assert_eq!(p["DeletionPolicy"], "Retain");
    assert_eq!(p["UpdateReplacePolicy"], "Retain");
    let name = &p["Properties"]["Name"];
    assert_eq!(
        name,
        &serde_json::json!({"Fn::If": ["OwnConfigName",
            {"Fn::Sub": "/keyrotor/${AWS::StackName}/config"}, {"Ref": "ConfigParameterName"}]})
    );
    assert_eq!(
        translated()["Parameters"]["ConfigParameterName"]["Default"],
        ""
    );
    for (id, f) in resources("AWS::Lambda::Function") {
        let env = &f["Properties"]["Environment"]["Variables"];
        assert_eq!(
            &env[keyrotor_lambda::CONFIG_PARAMETER_ENV],
            name,
            "{id} reads the parameter the stack writes"
        );
        assert!(
            env.get("RUST_LOG").is_none(),
            "{id}: RUST_LOG would override the code's default filter (logging::DEFAULT_FILTER)"
        );
    }
}

#[test]
fn every_execution_runs_the_versions_its_deploy_published() {
    let (_, sm) = &resources("AWS::StepFunctions::StateMachine")[0];
    let all = &translated()["Resources"];
    for key in [
        "RotatorFunctionArn",
        "PusherFunctionArn",
        "NotifierFunctionArn",
    ] {
        let id = referenced(&sm["Properties"]["DefinitionSubstitutions"][key]);
        assert_eq!(
            all[&id]["Type"], "AWS::Lambda::Version",
            "{key}: a version, not $LATEST or an alias that a deploy moves mid-execution"
        );
        assert_eq!(
            all[&id]["DeletionPolicy"], "Retain",
            "{key}: kept for running executions"
        );
    }
}

#[test]
fn every_role_takes_the_optional_permissions_boundary_and_everything_is_tagged() {
    let roles = resources("AWS::IAM::Role");
    assert_eq!(roles.len(), 5);
    for (id, r) in roles {
        assert_eq!(
            r["Properties"]["PermissionsBoundary"],
            serde_json::json!({"Fn::If": ["HasPermissionsBoundary",
                {"Ref": "PermissionsBoundaryArn"}, {"Ref": "AWS::NoValue"}]}),
            "{id}"
        );
        assert!(
            r["Properties"]["Tags"].as_array().is_some_and(
                |t| t.contains(&serde_json::json!({"Key": "app", "Value": "keyrotor"}))
            ),
            "{id}"
        );
    }
    for (id, f) in resources("AWS::Lambda::Function") {
        assert!(
            f["Properties"]["Tags"].as_array().is_some_and(
                |t| t.contains(&serde_json::json!({"Key": "app", "Value": "keyrotor"}))
            ),
            "{id}"
        );
    }
}

#[test]
fn build_outputs_are_ignored_by_git() {
    for path in [
        "deploy/dist/bootstrap.zip",
        "deploy/.aws-sam/build.toml",
        ".aws-sam/build.toml",
        "deploy/packaged.yaml",
    ] {
        let ignored = Command::new("git")
            .args(["check-ignore", "--quiet", "--no-index", path])
            .current_dir(repo())
            .status()
            .expect("git runs");
        assert!(ignored.success(), "{path} is not ignored by git");
    }
}
