//! The fault-injecting AWS proxy, driven by the AWS SDK through it, in front of moto: the SDK
//! must see each fault exactly as it would see the real service's (retry what it retries, map
//! error codes), and the proxy must count what it saw.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use keyrotor_testkit::aws_proxy::{AwsProxy, Fault, FaultKind, Seen};
use keyrotor_testkit::moto::Moto;

/// One moto for every test of this file (they use distinct names); it exits with the process.
fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start().expect("moto must start (it is installed on first use)"))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// An SDK config that reaches moto through `endpoint`, with `attempts` attempts per call.
async fn sdk(endpoint: &str, attempts: u32) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "t"))
        .retry_config(RetryConfig::standard().with_max_attempts(attempts))
        .load()
        .await
}

async fn proxy() -> AwsProxy {
    AwsProxy::start(&moto().endpoint).await.unwrap()
}

/// IAM straight to moto (no proxy): to look at what really happened.
async fn direct_iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&sdk(&moto().endpoint, 1).await)
}

async fn user_exists(name: &str) -> bool {
    direct_iam()
        .await
        .get_user()
        .user_name(name)
        .send()
        .await
        .is_ok()
}

/// The HTTP status and AWS error code of a failed call.
fn status_and_code<E>(e: &SdkError<E, HttpResponse>) -> (Option<u16>, Option<String>)
where
    E: ProvideErrorMetadata,
{
    let status = match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        _ => None,
    };
    let code = e
        .as_service_error()
        .and_then(|s| s.code().map(str::to_owned));
    (status, code)
}

#[tokio::test]
async fn a_throttled_iam_call_is_retried_by_the_sdk_and_succeeds() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 5).await);
    let name = unique("throttled");
    p.inject(Fault::throttle("CreateUser").times(2));

    iam.create_user().user_name(&name).send().await.unwrap();

    assert!(user_exists(&name).await);
    assert_eq!(p.count("CreateUser"), 3, "two throttled, one forwarded");
    assert_eq!(p.faulted("CreateUser"), 2);
    assert_eq!(
        p.attempts_per_call("CreateUser"),
        vec![3],
        "one SDK call, three attempts"
    );
    let attempts: Vec<Option<u32>> = p
        .seen()
        .iter()
        .filter(|s| s.op == "CreateUser")
        .map(|s| s.attempt)
        .collect();
    assert_eq!(attempts, vec![Some(1), Some(2), Some(3)]);
    assert!(p.faults().is_empty(), "a spent fault is removed");
}

#[tokio::test]
async fn a_throttled_json_call_is_retried_by_the_sdk_and_succeeds() {
    let p = proxy().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk(p.endpoint(), 5).await);
    let name = unique("secret");
    p.inject(Fault::throttle("CreateSecret").times(1));

    sm.create_secret()
        .name(&name)
        .secret_string("v")
        .send()
        .await
        .unwrap();

    assert_eq!(p.count("CreateSecret"), 2);
    assert_eq!(p.attempts_per_call("CreateSecret"), vec![2]);
    let s = p.seen();
    assert_eq!(s[0].service.as_deref(), Some("secretsmanager"));
    assert_eq!(s[0].fault, Some(FaultKind::Throttle));
    assert_eq!(s[1].fault, None);
}

#[tokio::test]
async fn throttling_has_the_real_error_shapes() {
    let p = proxy().await;
    let conf = sdk(p.endpoint(), 1).await;
    p.inject(Fault::throttle("ListUsers"));
    p.inject(Fault::throttle("GetParameter"));

    let e = aws_sdk_iam::Client::new(&conf)
        .list_users()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(400), Some("Throttling".into())),
        "IAM (query protocol): {e:?}"
    );
    assert_eq!(e.message(), Some("Rate exceeded"));

    let e = aws_sdk_ssm::Client::new(&conf)
        .get_parameter()
        .name("/nothing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(400), Some("ThrottlingException".into())),
        "SSM (JSON protocol): {e:?}"
    );
    assert_eq!(e.message(), Some("Rate exceeded"));
    assert_eq!(p.seen()[1].service.as_deref(), Some("ssm"));
}

#[tokio::test]
async fn server_errors_have_the_real_error_shapes() {
    let p = proxy().await;
    let conf = sdk(p.endpoint(), 1).await;
    p.inject(Fault::new("ListUsers", FaultKind::InternalError));
    p.inject(Fault::new("ListUsers", FaultKind::Unavailable).after(1));
    p.inject(Fault::new("ListSecrets", FaultKind::InternalError));
    p.inject(Fault::new("ListSecrets", FaultKind::Unavailable).after(1));
    let iam = aws_sdk_iam::Client::new(&conf);
    let sm = aws_sdk_secretsmanager::Client::new(&conf);

    let e = iam.list_users().send().await.unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(500), Some("InternalFailure".into())),
        "{e:?}"
    );
    let e = iam.list_users().send().await.unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(503), Some("ServiceUnavailable".into())),
        "{e:?}"
    );
    let e = sm.list_secrets().send().await.unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(500), Some("InternalFailure".into())),
        "{e:?}"
    );
    let e = sm.list_secrets().send().await.unwrap_err();
    assert_eq!(
        status_and_code(&e),
        (Some(503), Some("ServiceUnavailable".into())),
        "{e:?}"
    );
    // Spent: the next ones are forwarded.
    iam.list_users().send().await.unwrap();
    sm.list_secrets().send().await.unwrap();
}

#[tokio::test]
async fn server_errors_are_retried_by_the_sdk() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 5).await);
    p.inject(Fault::new("ListUsers", FaultKind::InternalError));
    p.inject(Fault::new("ListUsers", FaultKind::Unavailable).after(1));

    iam.list_users().send().await.unwrap();
    assert_eq!(p.attempts_per_call("ListUsers"), vec![3]);
}

#[tokio::test]
async fn a_permanent_fault_is_retried_up_to_the_sdks_bound_then_surfaces() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 3).await);
    p.inject(Fault::new("ListUsers", FaultKind::Unavailable).forever());

    let e = iam.list_users().send().await.unwrap_err();
    assert_eq!(status_and_code(&e).1.as_deref(), Some("ServiceUnavailable"));
    assert_eq!(p.attempts_per_call("ListUsers"), vec![3]);
    assert_eq!(p.faults().len(), 1, "a fault forever stays");
    p.clear_faults();
    iam.list_users().send().await.unwrap();
}

#[tokio::test]
async fn a_dropped_connection_surfaces_as_a_dispatch_failure_and_nothing_happened() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    let name = unique("dropped");
    p.inject(Fault::new("CreateUser", FaultKind::Drop));

    let e = iam.create_user().user_name(&name).send().await.unwrap_err();
    assert!(
        matches!(e, SdkError::DispatchFailure(_)),
        "a closed connection is a dispatch failure: {e:?}"
    );
    assert!(!user_exists(&name).await, "the request never reached moto");
    // The SDK retries it (with its default of several attempts) and then succeeds.
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 3).await);
    p.inject(Fault::new("CreateUser", FaultKind::Drop));
    iam.create_user().user_name(&name).send().await.unwrap();
    assert!(user_exists(&name).await);
    assert_eq!(p.attempts_per_call("CreateUser"), vec![1, 2]);
}

#[tokio::test]
async fn a_lost_response_means_moto_acted_but_the_caller_does_not_know() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    let name = unique("lost");
    p.inject(Fault::new("CreateUser", FaultKind::ResponseLost));

    let e = iam.create_user().user_name(&name).send().await.unwrap_err();
    assert!(matches!(e, SdkError::DispatchFailure(_)), "{e:?}");
    assert!(user_exists(&name).await, "moto created the user");
}

#[tokio::test]
async fn a_slow_answer_is_delayed_then_forwarded() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    p.inject(Fault::new("ListUsers", FaultKind::Slow { ms: 300 }));

    let started = Instant::now();
    iam.list_users().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(p.faulted("ListUsers"), 1);
}

#[tokio::test]
async fn after_lets_the_first_requests_through_and_counts_are_per_operation() {
    let p = proxy().await;
    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    p.inject(Fault::throttle("ListUsers").after(2).times(1));

    iam.list_users().send().await.unwrap();
    iam.list_roles().send().await.unwrap();
    iam.list_users().send().await.unwrap();
    assert!(iam.list_users().send().await.is_err(), "the third is hit");
    iam.list_users().send().await.unwrap();

    let counts = p.counts();
    assert_eq!(counts.get("ListUsers"), Some(&4));
    assert_eq!(counts.get("ListRoles"), Some(&1));
    assert_eq!(p.attempts_per_call("ListUsers"), vec![1, 1, 1, 1]);
    assert_eq!(p.max_attempts_per_call(), 1);
    p.wait_for("ListUsers", 4, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        p.wait_for("ListUsers", 5, Duration::from_millis(50))
            .await
            .is_err()
    );
    p.clear_seen();
    assert!(p.seen().is_empty());
}

#[tokio::test]
async fn the_control_routes_add_faults_and_show_what_was_seen() {
    let p = proxy().await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/_proxy/{path}", p.endpoint());
    let r = http
        .post(url("faults"))
        .body(r#"[{"op":"ListUsers","kind":"throttle","times":null},{"op":"ListRoles","kind":{"slow":{"ms":10}}}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let faults: Vec<Fault> = http
        .get(url("faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0].times, None, "null: forever");

    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    assert!(iam.list_users().send().await.is_err());
    iam.list_roles().send().await.unwrap();
    let seen: Vec<Seen> = http
        .get(url("seen"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops: Vec<(&str, Option<FaultKind>)> =
        seen.iter().map(|s| (s.op.as_str(), s.fault)).collect();
    assert_eq!(
        ops,
        vec![
            ("ListUsers", Some(FaultKind::Throttle)),
            ("ListRoles", Some(FaultKind::Slow { ms: 10 }))
        ]
    );
    assert_eq!(
        http.delete(url("faults")).send().await.unwrap().status(),
        204
    );
    assert_eq!(http.delete(url("seen")).send().await.unwrap().status(), 204);
    iam.list_users().send().await.unwrap();
    assert_eq!(p.seen().len(), 1);
    assert_eq!(
        http.post(url("faults"))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

#[tokio::test]
async fn a_stopped_proxy_no_longer_listens() {
    let p = proxy().await;
    let addr = p.endpoint().trim_start_matches("http://").to_owned();
    tokio::net::TcpStream::connect(&addr).await.unwrap();
    p.stop().await;
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}
