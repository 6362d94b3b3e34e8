//! The real `bootstrap` binary, run through a local Lambda Runtime API
//! (`keyrotor_testkit::lambda_api`), against moto (IAM, Secrets Manager, SSM: the config and the
//! PAT) and the Azure DevOps emulator. No fake in the binary: the same adapters as in AWS.

use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;
use keyrotor_testkit::ado::{AdoEmulator, Fault, Op, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::env::{ORG, PAT_PARAM, SECRET, USER};
use keyrotor_testkit::lambda_api::{LambdaApi, Outcome};
use keyrotor_testkit::moto::Moto;
use serde_json::{Value, json};

const PAT: &str = "kq7xlambdatestpat0123456789abcdefghijklmnopqrstuvwxy";
const CONFIG_PARAM: &str = "/keyrotor/config";

/// moto with the user (one key), the secret, the PAT and the config; the emulator with the
/// endpoint holding the key.
struct Seeded {
    moto: Moto,
    ado: AdoEmulator,
    ssm: aws_sdk_ssm::Client,
    config: String,
    /// The user's key: (id, secret).
    key: aws_seed::Key,
}

async fn seeded() -> Seeded {
    let moto = Moto::start().expect("moto starts");
    let sdk = moto.sdk_config().await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let key = aws_seed::user_with_key_in_secret(&sdk, USER, SECRET)
        .await
        .unwrap();
    let ado = AdoEmulator::start(
        Seed::new().org(
            OrgSeed::new(ORG)
                .pat(PAT, Scope::Manage)
                .project("Platform")
                .endpoint(aws_endpoint("aws-prod", &key.0, &key.1, &["Platform"])),
        ),
    )
    .await
    .unwrap();
    let config = format!(
        r#"[ado]
organization = "{}"
pat = "ssm:{PAT_PARAM}"

[[target]]
name = "platform-prod"
iam_user = "{USER}"
secret = "{SECRET}"
endpoints = [ {{ project = "Platform", name = "aws-prod" }} ]
"#,
        ado.org_url(ORG)
    );
    aws_seed::parameters(
        &sdk,
        &[
            (PAT_PARAM, PAT.to_owned(), ParameterType::SecureString),
            (CONFIG_PARAM, config.clone(), ParameterType::String),
        ],
    )
    .await
    .unwrap();

    Seeded {
        moto,
        ado,
        ssm,
        config,
        key,
    }
}

/// The real `bootstrap`, served by `api`, with moto's environment and a fresh home directory
/// (returned, for the test to remove).
fn bootstrap(moto: &Moto, api: &LambdaApi) -> (tokio::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("keyrotor-lambda-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = api
        .function(env!("CARGO_BIN_EXE_bootstrap"), "keyrotor-rotator", &dir)
        .envs(moto.env())
        .env("KEYROTOR_CONFIG_PARAMETER", CONFIG_PARAM)
        .spawn()
        .expect("bootstrap starts");
    (child, dir)
}

/// Overwrites the config parameter (the next invocation reads it).
async fn set_config(ssm: &aws_sdk_ssm::Client, text: String) {
    ssm.put_parameter()
        .name(CONFIG_PARAM)
        .value(text)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serves_invocations_from_the_runtime_api() {
    let Seeded {
        moto,
        ado,
        ssm,
        config,
        key: (key_id, key_secret),
    } = seeded().await;
    let api = LambdaApi::start().await.unwrap();
    let (child, dir) = bootstrap(&moto, &api);

    let run_id = uuid::Uuid::new_v4().to_string();
    let wait = Duration::from_secs(60);
    let listed = api.invoke(json!({"step": "targets", "run_id": run_id, "input": {}}));
    let listed = api.outcome(&listed, wait).await.unwrap();
    let Outcome::Response(listed) = listed else {
        panic!("targets failed: {listed:?}")
    };
    let names = |l: &serde_json::Value| -> Vec<String> {
        l["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["progress"]["target"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&listed), ["platform-prod"]);
    assert_eq!(listed["targets"][0]["next"], "inspect");
    assert_eq!(listed["targets"][0]["progress"]["run_id"], run_id.as_str());

    let mut initial = listed["targets"][0].clone();
    initial["force"] = json!(true);
    let inspected = api.invoke(json!({"step": "inspect", "state": initial}));
    let Outcome::Response(state) = api.outcome(&inspected, wait).await.unwrap() else {
        panic!("inspect failed")
    };
    assert_eq!(state["plan"]["decision"], "rotate", "{state}");
    assert_eq!(state["progress"]["old_key"], key_id.as_str(), "{state}");
    assert_eq!(state["steps"], json!(["inspect"]));

    // A changed config is read by the next invocation of the same (warm) instance.
    let two = format!(
        "{config}\n[[target]]\nname = \"second\"\niam_user = \"second-user\"\nsecret = \"other\"\nendpoints = [ {{ project = \"Platform\", name = \"aws-prod\" }} ]\n"
    );
    set_config(&ssm, two).await;
    let listed = api.invoke(json!({"step": "targets", "run_id": run_id, "input": {}}));
    let Outcome::Response(listed) = api.outcome(&listed, wait).await.unwrap() else {
        panic!("targets failed")
    };
    assert_eq!(names(&listed), ["platform-prod", "second"]);

    let mut unknown = initial.clone();
    unknown["progress"]["target"] = json!("nope");
    let unknown = api.invoke(json!({"step": "inspect", "state": unknown}));
    match api.outcome(&unknown, wait).await.unwrap() {
        Outcome::Error {
            error_type,
            error_message,
        } => {
            assert_eq!(error_type, "Rotation.Failed");
            assert!(
                error_message.contains("no target named 'nope'"),
                "{error_message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // A Slack message that cannot be sent counts in the metric the stack alarms on (EMF).
    set_config(
        &ssm,
        format!("{config}\n[slack]\nwebhook = \"ssm:/keyrotor-test/no-such-webhook\"\n"),
    )
    .await;
    let mut rotated = state.clone();
    rotated["outcome"] = json!("rotated");
    rotated["next"] = json!("done");
    let reported =
        api.invoke(json!({"step": "report", "run_id": run_id, "results": [{"state": rotated}]}));
    let Outcome::Response(summary) = api.outcome(&reported, wait).await.unwrap() else {
        panic!("report failed")
    };
    assert_eq!(summary["notification"]["status"], "failed", "{summary}");

    // Stop the function (as Lambda freezes and ends it) and read what it logged.
    api.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("bootstrap ends once the Runtime API is gone")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for secret in [PAT, key_secret.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a secret was logged"
        );
        assert!(!state.to_string().contains(secret));
    }
    // JSON lines; every line of an invocation names its run id and step.
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "step started")
        .collect();
    assert_eq!(started.len(), 5, "{stdout}");
    let metrics: Vec<&Value> = lines.iter().filter(|l| l.get("_aws").is_some()).collect();
    assert_eq!(metrics.len(), 1, "one EMF line: {stdout}");
    assert_eq!(
        metrics[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        keyrotor_lambda::metrics::NAMESPACE
    );
    assert_eq!(
        metrics[0][keyrotor_lambda::metrics::NOTIFICATIONS_FAILED],
        1
    );
    assert_eq!(metrics[0]["FunctionName"], "keyrotor-rotator");
    assert_eq!(metrics[0]["run_id"], run_id.as_str());
    let failed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "step failed")
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert_eq!(failed[0]["error_type"], "Rotation.Failed");
    for l in lines.iter().filter(|l| l.get("span").is_some()) {
        assert_eq!(l["span"]["name"], "invocation", "{l}");
        assert!(
            l["span"]["step"].as_str().is_some_and(|s| !s.is_empty()),
            "{l}"
        );
    }
    let in_invocations: Vec<&Value> = lines.iter().filter(|l| l.get("span").is_some()).collect();
    assert!(in_invocations.len() >= 7, "{stdout}");
    for l in in_invocations {
        assert_eq!(l["span"]["run_id"], run_id.as_str(), "{l}");
    }
    ado.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Azure DevOps' rate limit asks for a five-minute wait; the invocation has 60 s (the Runtime
/// API's deadline). The step does not start a wait it cannot finish: it fails at once as
/// `Rotation.Retryable`, for the state machine to retry, instead of being cut off by Lambda.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_wait_past_the_invocations_deadline_is_not_started() {
    let Seeded {
        moto,
        ado,
        key: (_, key_secret),
        ..
    } = seeded().await;
    ado.inject(Fault::status(Op::List, 429).retry_after(300).forever());
    let api = LambdaApi::start().await.unwrap();
    let (child, dir) = bootstrap(&moto, &api);
    let run_id = uuid::Uuid::new_v4().to_string();
    let inspected = api.invoke(json!({"step": "inspect",
        "state": {"progress": {"target": "platform-prod", "run_id": run_id}, "next": "inspect", "force": true}}));
    // Well inside the 60 s deadline: a client that waited out the 300 s would not answer.
    match api
        .outcome(&inspected, Duration::from_secs(45))
        .await
        .unwrap()
    {
        Outcome::Error {
            error_type,
            error_message,
        } => {
            assert_eq!(error_type, "Rotation.Retryable", "{error_message}");
            assert!(error_message.contains("429"), "{error_message}");
            for secret in [PAT, key_secret.as_str()] {
                assert!(!error_message.contains(secret), "a secret in the error");
            }
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    let lists = ado
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/endpoints"))
        .count();
    assert_eq!(
        lists, 1,
        "one refused request, no retry inside the invocation"
    );
    // What the function logged while it gave up (the pacing warning included) names no secret.
    api.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("bootstrap ends once the Runtime API is gone")
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("rate limit"), "{printed}");
    for secret in [PAT, key_secret.as_str()] {
        assert!(!printed.contains(secret), "a secret was logged");
    }
    ado.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
