//! `deploy/statemachine/rotate.asl.json` EXECUTED by moto's Step Functions interpreter
//! (`execute_state_machine`), each Lambda answer scripted.
//!
//! What moto can and cannot do here (moto 5.2.5): its Lambda without Docker (`lambda-simple`)
//! answers every invoke with the next canned string queued at
//! `/moto-api/static/lambda-simple/response`, always as a success: status 200, no
//! `X-Amz-Function-Error`. So a canned answer can never be an error that a Retry or a Catch
//! matches (moto's port of LocalStack's mock-config mode, which can `Throw`, is disabled:
//! `load_mock_test_case_for` always returns `None`). But moto's interpreter does call Lambda
//! over HTTP, at `http://localhost:$MOTO_PORT`. The test serves that port with a thin proxy:
//! it answers the invocations a scenario scripts as errors itself (`X-Amz-Function-Error:
//! Unhandled`, `{"errorType": "Rotation.NotPropagated", …}`, exactly what the Lambda service
//! returns for a function error), and forwards everything else to moto, whose canned answers
//! then come out in order. So the Retry and Catch clauses are matched by moto's interpreter,
//! on real error names.
//!
//! Timing is the only thing the test changes in the definition: Wait states wait 0 s and every
//! Retry waits at most 1 s (the structure, names and error lists are untouched); and the one
//! aws-sdk Task (`OneAtATime`, `sfn:listExecutions`) speaks boto's camelCase instead of AWS's
//! PascalCase, in its parameters and where its answer is read: moto 5.2.5 passes both through
//! unconverted. moto runs the fleet's Distributed Map (each batch a child execution) but keeps
//! the children's events out of the parent's history and cannot list them; so the tests that
//! follow a target's path run the same states inline ([`Batches::Inline`]), and the ones about
//! batches run the definition as deployed ([`Batches::Distributed`]), observing the Lambda
//! invocations and the parent's path.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use base64::Engine;
use keyrotor_core::machine::TRANSITIONS;
use keyrotor_core::report::Step;
use keyrotor_testkit::moto::Moto;
use serde_json::{Value, json};

const ASL: &str = include_str!("../../../deploy/statemachine/rotate.asl.json");
const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

/// Errors a scenario scripts, per step: the next invocations of that step fail with these.
type Script = Arc<Mutex<HashMap<String, VecDeque<(String, String)>>>>;

/// An invocation of a step the proxy holds until the test releases it: (step, held, release).
type Hold = Arc<Mutex<Option<(String, Arc<tokio::sync::Notify>, Arc<tokio::sync::Notify>)>>>;

struct Shared {
    moto: Moto,
    script: Script,
    hold: Hold,
    /// Every Lambda payload the state machine sent, in order.
    seen: Arc<Mutex<Vec<Value>>>,
    /// One scenario at a time: moto's canned queue is global.
    lock: tokio::sync::Mutex<()>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // moto's interpreter calls Lambda at localhost:$MOTO_PORT; take a free port for the proxy
        // and tell moto (it inherits this process's environment when it starts).
        let proxy = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = proxy.local_addr().unwrap().port();
        // SAFETY: set once (inside the OnceLock, before moto is spawned). Other threads of this
        // test binary read the environment only through std, which holds the same lock; no C
        // code of this binary calls getenv.
        unsafe { std::env::set_var("MOTO_PORT", port.to_string()) };
        let moto = Moto::start().expect("moto starts");
        let script: Script = Arc::default();
        let hold: Hold = Arc::default();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let state = ProxyState {
            moto: moto.endpoint.clone(),
            script: script.clone(),
            hold: hold.clone(),
            seen: seen.clone(),
            http: reqwest::Client::new(),
        };
        proxy.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(proxy).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Shared {
            moto,
            script,
            hold,
            seen,
            lock: tokio::sync::Mutex::new(()),
        }
    })
}

#[derive(Clone)]
struct ProxyState {
    moto: String,
    script: Script,
    hold: Hold,
    seen: Arc<Mutex<Vec<Value>>>,
    http: reqwest::Client,
}

/// Lambda's Invoke, as moto's interpreter sends it: a scripted error, or moto's canned answer.
async fn forward(State(st): State<ProxyState>, req: Request<Body>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, 10 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if path.ends_with("/invocations") {
        let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let step = payload["step"].as_str().unwrap_or_default().to_owned();
        let held = {
            let mut hold = st.hold.lock().unwrap();
            if hold.as_ref().is_some_and(|(s, _, _)| *s == step) {
                hold.take()
            } else {
                None
            }
        };
        if let Some((_, reached, release)) = held {
            reached.notify_one();
            release.notified().await;
        }
        st.seen.lock().unwrap().push(payload.clone());
        let scripted = st
            .script
            .lock()
            .unwrap()
            .get_mut(&step)
            .and_then(VecDeque::pop_front);
        if let Some((error_type, message)) = scripted {
            let body = json!({"errorType": error_type, "errorMessage": message}).to_string();
            return Response::builder()
                .status(StatusCode::OK)
                .header("Content-Type", "application/json")
                .header("X-Amz-Function-Error", "Unhandled")
                .header("X-Amz-Executed-Version", "$LATEST")
                .body(Body::from(body))
                .unwrap();
        }
    }
    let url = format!(
        "{}{}",
        st.moto,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" {
            headers.insert(k.clone(), v.clone());
        }
    }
    let answer = st
        .http
        .request(parts.method, url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("moto answers");
    let mut out = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        if k != "content-length" && k != "transfer-encoding" {
            out = out.header(k, v);
        }
    }
    out.body(Body::from(answer.bytes().await.unwrap_or_default()))
        .unwrap()
}

/// A signed-looking header: moto picks the service from the credential scope (it checks no
/// signature).
fn auth(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0"
    )
}

struct Sfn<'a> {
    endpoint: &'a str,
    http: reqwest::Client,
}

impl Sfn<'_> {
    async fn call(&self, action: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/", self.endpoint))
            .header("X-Amz-Target", format!("AWSStepFunctions.{action}"))
            .header("Content-Type", "application/x-amz-json-1.0")
            .header("Authorization", auth("states"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{action}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// How the fleet's Map runs its batches in a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Batches {
    /// As deployed: a Distributed Map, each batch a child execution. moto keeps a child's
    /// events out of the parent's history (as AWS does) and lists no child executions, so only
    /// the Lambda invocations and the parent's path can be observed.
    Distributed,
    /// The same states with the Distributed Map run inline, so every target's path is in the
    /// one history the test reads.
    Inline,
}

/// The definition with the functions' ARNs substituted and the waits shortened.
fn definition(batches: Batches) -> String {
    let mut text = ASL.replace("${Partition}", "aws");
    for (var, name) in [
        ("RotatorFunctionArn", "rotator"),
        ("PusherFunctionArn", "pusher"),
        ("NotifierFunctionArn", "notifier"),
    ] {
        text = text.replace(
            &format!("${{{var}}}"),
            &format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"),
        );
    }
    // moto 5.2.5 hands an aws-sdk Task's answer over as boto parses it, in the API's camelCase;
    // AWS turns it into PascalCase, as the definition reads it.
    for (aws, boto) in [
        ("($.Executions)", "($.executions)"),
        ("\"$.Executions\"", "\"$.executions\""),
        (".oldest.ExecutionArn", ".oldest.executionArn"),
    ] {
        assert!(text.contains(aws), "the definition reads {aws}");
        text = text.replace(aws, boto);
    }
    let mut v: Value = serde_json::from_str(&text).unwrap();
    fn shorten(v: &mut Value, batches: Batches) {
        match v {
            Value::Object(o) => {
                if o.get("Type") == Some(&json!("Wait")) && o.contains_key("Seconds") {
                    // A TimestampPath wait (the drain) is shortened by the canned states' past
                    // timestamp instead.
                    o.insert("Seconds".into(), json!(0));
                }
                if o.get("Resource") == Some(&json!("arn:aws:states:::aws-sdk:sfn:listExecutions"))
                {
                    // moto 5.2.5 hands an aws-sdk Task's parameters to boto as they are written;
                    // AWS wants them in PascalCase, boto in its own camelCase.
                    let p = o["Parameters"].as_object_mut().unwrap();
                    for (aws, boto) in [
                        ("StateMachineArn.$", "stateMachineArn.$"),
                        ("StatusFilter", "statusFilter"),
                    ] {
                        let v = p.remove(aws).expect("the Task's parameter");
                        p.insert(boto.into(), v);
                    }
                }
                if batches == Batches::Inline && o.get("Mode") == Some(&json!("DISTRIBUTED")) {
                    o.insert("Mode".into(), json!("INLINE"));
                    o.remove("ExecutionType");
                }
                if o.contains_key("ErrorEquals") && o.contains_key("IntervalSeconds") {
                    o.insert("IntervalSeconds".into(), json!(1));
                    o.insert("MaxDelaySeconds".into(), json!(1));
                }
                o.values_mut().for_each(|c| shorten(c, batches));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| shorten(c, batches)),
            _ => {}
        }
    }
    shorten(&mut v, batches);
    v.to_string()
}

/// What one execution did.
struct Run {
    /// The execution's name (the run id).
    name: String,
    status: String,
    /// Names of the states entered, in order (Map iterations included).
    path: Vec<String>,
    /// Lambda payloads sent, in order.
    payloads: Vec<Value>,
    /// The execution's output (or error).
    history: Vec<Value>,
}

impl Run {
    fn invocations_of(&self, step: &str) -> usize {
        self.payloads.iter().filter(|p| p["step"] == step).count()
    }
    fn show(&self) -> String {
        let failures: Vec<String> = self
            .history
            .iter()
            .filter(|e| e["type"].as_str().is_some_and(|t| t.ends_with("Failed")))
            .map(|e| e.to_string())
            .collect();
        format!(
            "status {}; path {:?}; failures {failures:?}",
            self.status, self.path
        )
    }
    fn path_has(&self, seq: &[&str]) -> bool {
        self.path.windows(seq.len()).any(|w| w == seq)
    }
}

/// A state after a step: the answer a Lambda gives for a target, naming the step core's machine
/// chose as next (`"done"` with an outcome at the end).
fn st(next: &str, outcome: Option<&str>) -> Value {
    let mut s = json!({
        "progress": {"target": "platform-prod", "run_id": "r", "old_key": "AKIAOLDOLDOLDOLDOLD1"},
        "next": next, "steps": ["inspect"]
    });
    if next == "retire" {
        // When the drain ends (already past: the Wait state goes straight on).
        s["retire_at"] = json!("2020-01-01T00:00:00Z");
    }
    if let Some(o) = outcome {
        s["outcome"] = json!(o);
    }
    s
}

/// `targets`' answer: one target about to be inspected.
fn listed() -> Value {
    json!({"targets": [st("inspect", None)]})
}

fn summary(needs_attention: bool) -> Value {
    json!({"run_id": "r", "rotated": 1, "nothing_due": 0, "busy": 0, "refused": 0, "invalid": 0,
           "failed": 0, "needs_attention": needs_attention, "notification": {"status": "sent"}, "targets": []})
}

/// Runs the state machine once: `canned` answers the successful invocations in order,
/// `errors` fails the named steps' next invocations.
async fn execute(canned: Vec<Value>, errors: &[(&str, &str)]) -> Run {
    execute_as(Batches::Inline, canned, errors).await
}

/// [`execute`], with the batches run as `batches` says.
async fn execute_as(batches: Batches, canned: Vec<Value>, errors: &[(&str, &str)]) -> Run {
    let sh = shared();
    let _one = sh.lock.lock().await;
    let sm = setup_as(batches, canned, errors).await;
    let arn = start(&sm).await;
    finish(&arn).await
}

/// A fresh moto with the three functions, `canned` and `errors` queued, and the state machine
/// (batches inline); returns its ARN. The caller holds `shared().lock`.
async fn setup(canned: Vec<Value>, errors: &[(&str, &str)]) -> String {
    setup_as(Batches::Inline, canned, errors).await
}

/// [`setup`], with the batches run as `batches` says.
async fn setup_as(batches: Batches, canned: Vec<Value>, errors: &[(&str, &str)]) -> String {
    let sh = shared();
    sh.moto.reset().await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", sh.moto.endpoint))
            .json(&body)
            .send()
    };
    let r = post(
        "/moto-api/config",
        json!({"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "moto config: {}", r.status());
    {
        let mut script = sh.script.lock().unwrap();
        script.clear();
        for (step, error_type) in errors {
            script.entry((*step).to_owned()).or_default().push_back((
                (*error_type).to_owned(),
                format!("{step}: scripted {error_type}"),
            ));
        }
        sh.seen.lock().unwrap().clear();
        *sh.hold.lock().unwrap() = None;
    }

    let sdk = sh.moto.sdk_config().await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let role = iam
        .create_role()
        .role_name("keyrotor-lambda")
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let role_arn = role.role().unwrap().arn().to_owned();
    // The smallest valid zip: an empty archive (moto runs no code without Docker).
    let mut zip = b"PK\x05\x06".to_vec();
    zip.extend([0u8; 18]);
    let zip = base64::engine::general_purpose::STANDARD.encode(zip);
    for name in ["rotator", "pusher", "notifier"] {
        let r = http
            .post(format!("{}/2015-03-31/functions", sh.moto.endpoint))
            .header("Authorization", auth("lambda"))
            .json(&json!({"FunctionName": name, "Runtime": "provided.al2023", "Role": role_arn,
                          "Handler": "bootstrap", "Architectures": ["arm64"], "Code": {"ZipFile": zip}}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create {name}: {}",
            r.text().await.unwrap()
        );
    }

    let results: Vec<String> = canned.iter().map(Value::to_string).collect();
    let r = post(
        "/moto-api/static/lambda-simple/response",
        json!({"results": results, "region": REGION}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let sfn = Sfn {
        endpoint: &sh.moto.endpoint,
        http: http.clone(),
    };
    let sm = sfn
        .call(
            "CreateStateMachine",
            json!({"name": "keyrotor-rotate", "definition": definition(batches),
                   "roleArn": format!("arn:aws:iam::{ACCOUNT}:role/keyrotor-sfn"), "type": "STANDARD"}),
        )
        .await;
    sm["stateMachineArn"].as_str().unwrap().to_owned()
}

fn sfn() -> Sfn<'static> {
    Sfn {
        endpoint: &shared().moto.endpoint,
        http: reqwest::Client::new(),
    }
}

/// Starts an execution (named with a new UUID, input `{}`); returns its ARN.
async fn start(state_machine: &str) -> String {
    let name = uuid::Uuid::new_v4().to_string();
    let exec = sfn()
        .call(
            "StartExecution",
            json!({"stateMachineArn": state_machine, "name": name, "input": "{}"}),
        )
        .await;
    exec["executionArn"].as_str().unwrap().to_owned()
}

/// Waits for an execution to end; what it did.
async fn finish(arn: &str) -> Run {
    let sh = shared();
    let sfn = sfn();
    let name = arn.rsplit(':').next().unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..600 {
        let d = sfn
            .call("DescribeExecution", json!({"executionArn": arn}))
            .await;
        status = d["status"].as_str().unwrap_or_default().to_owned();
        if status != "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut history = Vec::new();
    let mut token: Option<Value> = None;
    loop {
        let mut req = json!({"executionArn": arn, "maxResults": 1000});
        if let Some(t) = &token {
            req["nextToken"] = t.clone();
        }
        let h = sfn.call("GetExecutionHistory", req).await;
        history.extend(h["events"].as_array().cloned().unwrap_or_default());
        match h.get("nextToken") {
            Some(t) if !t.is_null() => token = Some(t.clone()),
            _ => break,
        }
    }
    let path = history
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("StateEntered"))
        })
        .filter_map(|e| {
            e["stateEnteredEventDetails"]["name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let payloads = sh.seen.lock().unwrap().clone();
    // Every payload names its execution as the run id, and never carries anything but ids.
    for p in &payloads {
        if let Some(run) = p.pointer("/state/run_id").or_else(|| p.get("run_id")) {
            assert!(
                run == "r" || run == &json!(name),
                "run id {run} is not the execution name {name}"
            );
        }
    }
    let run = Run {
        name: name.clone(),
        status,
        path,
        payloads,
        history,
    };
    eprintln!("{}", run.show());
    run
}

/// The canned answers of a whole successful rotation, from `targets` to `report`.
fn rotation(report: Value) -> Vec<Value> {
    vec![
        listed(),
        st("create", None),
        st("verify", None),
        st("push", None),
        st("confirm", None),
        st("promote", None),
        st("retire", None),
        st("done", Some("rotated")),
        report,
    ]
}

/// How every execution starts when it is the only one running.
const ALONE: [&str; 5] = [
    "OneAtATime",
    "AnyRunning",
    "Oldest",
    "IsThisTheOldest",
    "ListTargets",
];

const HAPPY: [&str; 15] = [
    "ListTargets",
    "RotateTargets",
    "RotateBatch",
    "Inspect",
    "AfterInspect",
    "Create",
    "WaitForPropagation",
    "Verify",
    "Push",
    "Confirm",
    "Promote",
    "AfterPromote",
    "Drain",
    "Retire",
    "TargetDone",
];

/// Every path core's machine can take from `inspect` to done, as step names.
fn paths_of_core_s_machine() -> Vec<Vec<&'static str>> {
    fn walk(at: Step, path: &mut Vec<&'static str>, out: &mut Vec<Vec<&'static str>>) {
        path.push(at.name());
        let (_, next) = TRANSITIONS.iter().find(|(s, _)| *s == at).unwrap();
        for n in *next {
            match n {
                None => out.push(path.clone()),
                Some(n) => walk(*n, path, out),
            }
        }
        path.pop();
    }
    let mut out = Vec::new();
    walk(Step::Inspect, &mut Vec::new(), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_of_core_s_machine_runs_in_the_definition() {
    let paths = paths_of_core_s_machine();
    assert!(paths.len() >= 5, "{paths:?}");
    for path in paths {
        // Each step answers with the state naming the next step of this path.
        let mut canned = vec![listed()];
        for (i, _) in path.iter().enumerate() {
            canned.push(match path.get(i + 1) {
                Some(next) => st(next, None),
                None => st("done", Some("rotated")),
            });
        }
        canned.push(summary(false));
        let run = execute(canned, &[]).await;
        assert_eq!(run.status, "SUCCEEDED", "{path:?}: {}", run.show());
        let invoked: Vec<String> = run
            .payloads
            .iter()
            .filter_map(|p| p["step"].as_str())
            .filter(|s| !["targets", "report"].contains(s))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            invoked, path,
            "the definition invoked other steps than core's path"
        );
        assert!(run.path.iter().any(|p| p == "TargetDone"), "{}", run.show());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_key_goes_through_every_step_and_the_run_succeeds() {
    let run = execute(rotation(summary(false)), &[]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert!(run.path_has(&HAPPY), "{}", run.show());
    assert!(
        run.path_has(&["Report", "Summarize", "AnyNeedsAttention", "Done"]),
        "{}",
        run.show()
    );
    assert!(
        !run.path.iter().any(|p| p == "Compensate"),
        "{}",
        run.show()
    );
    // What the Lambdas were asked: the Map's item and the execution name as the run id.
    let first = &run.payloads[1];
    assert_eq!(first["step"], "inspect");
    assert_eq!(first["state"]["progress"]["target"], "platform-prod");
    assert_eq!(first["state"]["next"], "inspect");
    let report = run.payloads.last().unwrap();
    assert_eq!(report["step"], "report");
    assert_eq!(report["results"][0]["state"]["outcome"], "rotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_due_ends_the_target_after_inspect() {
    let canned = vec![listed(), st("done", Some("nothing-due")), summary(false)];
    let run = execute(canned, &[]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert!(
        run.path_has(&["Inspect", "AfterInspect", "TargetDone"]),
        "{}",
        run.show()
    );
    assert!(!run.path.iter().any(|p| p == "Cleanup" || p == "Create"));
    assert_eq!(run.invocations_of("report"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_due_with_leftovers_tidies_and_finishes_the_retirement() {
    let canned = vec![
        listed(),
        st("cleanup", None),
        st("retire", None),
        st("done", Some("nothing-due")),
        summary(false),
    ];
    let run = execute(canned, &[]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert!(
        run.path_has(&[
            "Inspect",
            "AfterInspect",
            "Cleanup",
            "AfterCleanup",
            "Retire",
            "TargetDone"
        ]),
        "{}",
        run.show()
    );
    assert!(!run.path.iter().any(|p| p == "Create"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_propagated_twice_is_retried_by_the_state_machine_then_the_rotation_goes_on() {
    let run = execute(
        rotation(summary(false)),
        &[
            ("verify", "Rotation.NotPropagated"),
            ("verify", "Rotation.NotPropagated"),
        ],
    )
    .await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert_eq!(run.invocations_of("verify"), 3);
    assert!(run.path_has(&HAPPY), "{}", run.show());
    assert!(
        !run.path.iter().any(|p| p == "Compensate"),
        "{}",
        run.show()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_retryable_is_retried_and_lambda_service_errors_too() {
    let run = execute(
        rotation(summary(false)),
        &[
            ("create", "Rotation.Retryable"),
            ("push", "Lambda.ServiceException"),
        ],
    )
    .await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert_eq!(run.invocations_of("create"), 2);
    assert_eq!(run.invocations_of("push"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_is_compensated_reported_and_fails_the_execution() {
    let steps = [
        ("inspect", "Inspect"),
        ("cleanup", "Cleanup"),
        ("create", "Create"),
        ("verify", "Verify"),
        ("push", "Push"),
        ("confirm", "Confirm"),
        ("promote", "Promote"),
        ("retire", "Retire"),
    ];
    for (i, (step, state)) in steps.iter().enumerate() {
        // Successful answers before the failing step, then compensate's and report's.
        let mut canned = vec![listed()];
        canned.extend((1..=i).map(|j| st(steps[j].0, None)));
        let mut failed = st("done", Some("failed"));
        failed["failure"] = json!({"step": step, "kind": "failed", "message": "scripted"});
        canned.push(failed);
        canned.push(summary(true));
        let run = execute(canned, &[(step, "Rotation.Failed")]).await;
        assert_eq!(run.status, "FAILED", "failure at {step}: {}", run.show());
        assert!(
            run.path_has(&[state, "Compensate", "AfterCompensate", "TargetFailed"]),
            "failure at {step}: {}",
            run.show()
        );
        assert!(
            run.path_has(&["Report", "Summarize", "AnyNeedsAttention", "RotationFailed"]),
            "failure at {step}: {}",
            run.show()
        );
        assert_eq!(
            run.invocations_of(step),
            1,
            "Rotation.Failed is not retried"
        );
        // compensate got the last good state and the caught error, as ids and names only.
        let comp = run
            .payloads
            .iter()
            .find(|p| p["step"] == "compensate")
            .unwrap();
        assert_eq!(comp["error"]["Error"], "Rotation.Failed", "{comp}");
        let cause: Value = serde_json::from_str(comp["error"]["Cause"].as_str().unwrap()).unwrap();
        assert_eq!(cause["errorType"], "Rotation.Failed");
        assert_eq!(
            comp["state"]["next"], *step,
            "compensate learns the failed step from the state it started from"
        );
        let report = run.payloads.last().unwrap();
        assert_eq!(report["step"], "report");
        assert_eq!(report["results"][0]["state"]["outcome"], "failed");
        let failed_event = run
            .history
            .iter()
            .find(|e| e["type"] == "ExecutionFailed")
            .expect("an ExecutionFailed event");
        assert_eq!(
            failed_event["executionFailedEventDetails"]["error"],
            "Rotation.Failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_at_inspect_touches_nothing_and_fails_the_execution_for_a_person() {
    let canned = vec![listed(), st("done", Some("refused")), summary(true)];
    let run = execute(canned, &[]).await;
    assert_eq!(run.status, "FAILED", "{}", run.show());
    assert!(
        run.path_has(&["Inspect", "AfterInspect", "TargetDone"]),
        "{}",
        run.show()
    );
    assert!(
        !run.path
            .iter()
            .any(|p| ["Cleanup", "Create", "Compensate"].contains(&p.as_str())),
        "{}",
        run.show()
    );
    assert!(
        run.path_has(&["Report", "Summarize", "AnyNeedsAttention", "RotationFailed"]),
        "{}",
        run.show()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_raised_by_a_later_step_is_compensated() {
    let mut canned = vec![listed()];
    canned.extend(["create", "verify", "push"].map(|n| st(n, None)));
    canned.push(st("done", Some("refused")));
    canned.push(summary(true));
    let run = execute(canned, &[("push", "Rotation.Refused")]).await;
    assert_eq!(run.status, "FAILED", "{}", run.show());
    assert_eq!(
        run.invocations_of("push"),
        1,
        "Rotation.Refused is not retried"
    );
    assert!(
        run.path_has(&["Push", "Compensate", "AfterCompensate", "TargetFailed"]),
        "{}",
        run.show()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_config_fails_the_execution_at_once() {
    let run = execute(vec![], &[("targets", "Rotation.Failed")]).await;
    assert_eq!(run.status, "FAILED", "{}", run.show());
    assert!(
        run.path_has(&["ListTargets", "ConfigUnusable"]),
        "{}",
        run.show()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_alone_goes_on_after_checking_for_others() {
    let run = execute(rotation(summary(false)), &[]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert!(
        run.path.starts_with(&ALONE.map(String::from)),
        "{}",
        run.show()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_execution_while_one_runs_stands_aside_and_touches_nothing() {
    let sh = shared();
    let _one = sh.lock.lock().await;
    let sm = setup(rotation(summary(false)), &[]).await;
    // The first execution is held inside ListTargets while the second one starts and ends.
    let reached = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    *sh.hold.lock().unwrap() = Some(("targets".into(), reached.clone(), release.clone()));
    let first = start(&sm).await;
    if tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .is_err()
    {
        panic!(
            "the first execution never invoked targets: {}",
            finish(&first).await.show()
        );
    }
    let second = finish(&start(&sm).await).await;
    release.notify_one();
    let first = finish(&first).await;

    assert_eq!(second.status, "SUCCEEDED", "{}", second.show());
    assert_eq!(
        second.path,
        [
            "OneAtATime",
            "AnyRunning",
            "Oldest",
            "IsThisTheOldest",
            "AnotherExecutionRuns"
        ],
        "{}",
        second.show()
    );
    let out = second
        .history
        .iter()
        .find(|e| e["type"] == "ExecutionSucceeded")
        .expect("an ExecutionSucceeded event");
    let out: Value = serde_json::from_str(
        out["executionSucceededEventDetails"]["output"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(
        out["running_execution"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{}", first.name))),
        "the output names the execution that runs: {out}"
    );

    assert_eq!(first.status, "SUCCEEDED", "{}", first.show());
    assert!(first.path_has(&HAPPY), "{}", first.show());
    assert_eq!(
        first.invocations_of("targets"),
        1,
        "only the first execution listed targets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_another_run_owns_stands_aside_and_the_execution_succeeds() {
    let canned = vec![
        listed(),
        st("create", None),
        st("done", Some("busy")),
        summary(false),
    ];
    let run = execute(canned, &[("create", "Rotation.Busy")]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    assert!(
        run.path_has(&[
            "Create",
            "Compensate",
            "AfterCompensate",
            "TargetStoodAside"
        ]),
        "{}",
        run.show()
    );
    assert_eq!(
        run.invocations_of("create"),
        1,
        "Rotation.Busy is not retried"
    );
    let comp = run
        .payloads
        .iter()
        .find(|p| p["step"] == "compensate")
        .unwrap();
    assert_eq!(comp["error"]["Error"], "Rotation.Busy", "{comp}");
    let report = run.payloads.last().unwrap();
    assert_eq!(report["results"][0]["state"]["outcome"], "busy");
}

/// `targets`' answer: `n` targets about to be inspected, `t00`, `t01`, ….
fn listed_many(n: usize) -> Value {
    let targets: Vec<Value> = (0..n)
        .map(|i| {
            let mut s = st("inspect", None);
            s["progress"]["target"] = json!(format!("t{i:02}"));
            s
        })
        .collect();
    json!({"targets": targets})
}

/// An answer that serves as any step's in a run where nothing is due: as a target's state it
/// ends the target (`next: done`, nothing due), as a report's summary it needs no one. Batches
/// run at once, so their invocations take moto's canned answers in no fixed order.
fn nothing_due_anywhere() -> Value {
    let mut s = st("done", Some("nothing-due"));
    s["needs_attention"] = json!(false);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_runs_as_child_executions_of_ten_targets_each_with_one_report_each() {
    let mut canned = vec![listed_many(25)];
    canned.extend((0..25 + 3).map(|_| nothing_due_anywhere()));
    let run = execute_as(Batches::Distributed, canned, &[]).await;
    assert_eq!(run.status, "SUCCEEDED", "{}", run.show());
    let mut parent: Vec<&str> = ALONE.to_vec();
    parent.extend(["RotateTargets", "Summarize", "AnyNeedsAttention", "Done"]);
    assert_eq!(
        run.path, parent,
        "the targets' states are in the child executions' histories, not the parent's"
    );
    let mut inspected: Vec<&str> = run
        .payloads
        .iter()
        .filter(|p| p["step"] == "inspect")
        .map(|p| p["state"]["progress"]["target"].as_str().unwrap())
        .collect();
    inspected.sort();
    let all: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    assert_eq!(inspected, all, "every target once");
    let reports: Vec<&Value> = run
        .payloads
        .iter()
        .filter(|p| p["step"] == "report")
        .collect();
    let mut sizes: Vec<usize> = reports
        .iter()
        .map(|r| r["results"].as_array().unwrap().len())
        .collect();
    sizes.sort();
    assert_eq!(sizes, [5, 10, 10], "one report per batch of at most 10");
    for r in reports {
        assert_eq!(r["run_id"], run.name.as_str(), "the run id is the parent's");
    }
    // The parent keeps one compact summary per batch, not the targets' states.
    let out = run
        .history
        .iter()
        .find(|e| e["type"] == "ExecutionSucceeded")
        .unwrap();
    let out: Value = serde_json::from_str(
        out["executionSucceededEventDetails"]["output"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(out["needs_attention"], false, "{out}");
    assert_eq!(out["batches"].as_array().unwrap().len(), 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_report_fails_fails_the_fleet_s_execution() {
    let mut canned = vec![listed_many(12)];
    canned.extend((0..12 + 2).map(|_| nothing_due_anywhere()));
    let run = execute_as(
        Batches::Distributed,
        canned,
        &[("report", "Rotation.Failed")],
    )
    .await;
    assert_eq!(run.status, "FAILED", "{}", run.show());
    assert!(
        run.path_has(&[
            "RotateTargets",
            "Summarize",
            "AnyNeedsAttention",
            "RotationFailed"
        ]),
        "{}",
        run.show()
    );
    assert_eq!(run.invocations_of("inspect"), 12);
    assert_eq!(
        run.invocations_of("report"),
        2,
        "the other batch still reports"
    );
}
