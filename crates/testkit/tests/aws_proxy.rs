//! The fault-injecting AWS proxy, driven by the AWS SDK through it, in front of moto: the SDK
//! must see each fault exactly as it would see the real service's (retry what it retries, map
//! error codes), and the proxy must count what it saw. Strict mode: each rule is shown to matter
//! (moto alone accepts the request) and to answer as AWS does.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use keyrotor_testkit::aws_proxy::StrictRule::{DeletedKey, InactiveKey, VersionExists};
use keyrotor_testkit::aws_proxy::{AwsProxy, Fault, FaultKind, Seen, StrictOptions, StrictRule};
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

/// A proxy, and a client made by `client` that goes through it with `attempts` attempts a call.
async fn proxied<C>(attempts: u32, client: impl FnOnce(&SdkConfig) -> C) -> (AwsProxy, C) {
    let p = proxy().await;
    let c = client(&sdk(p.endpoint(), attempts).await);
    (p, c)
}

/// IAM straight to moto (no proxy): to look at what really happened.
async fn direct_iam() -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&sdk(&moto().endpoint, 1).await)
}

async fn user_exists(name: &str) -> bool {
    let iam = direct_iam().await;
    iam.get_user().user_name(name).send().await.is_ok()
}

/// The HTTP status and AWS error code of a failed call.
/// Fails unless `e` is a service error answered with `status` and `code`; the failure message
/// is `what` (may be empty), then the error.
fn assert_answer<E>(e: &SdkError<E, HttpResponse>, status: u16, code: &str, what: &str)
where
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    assert_eq!(
        status_and_code(e),
        (Some(status), Some(code.to_owned())),
        "{what} {e:?}"
    );
}

/// What Secrets Manager says when `label` is moved without naming the version `holder` that
/// has it.
fn remove_from_needed(label: &str, holder: &str) -> String {
    format!(
        "The parameter RemoveFromVersionId can't be empty. Staging label {label} is currently \
         attached to version {holder}, so you must explicitly reference that version in \
         RemoveFromVersionId."
    )
}

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
    let (p, iam) = proxied(5, aws_sdk_iam::Client::new).await;
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
    let (p, sm) = proxied(5, aws_sdk_secretsmanager::Client::new).await;
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
    assert_answer(&e, 400, "Throttling", "IAM (query protocol):");
    assert_eq!(e.message(), Some("Rate exceeded"));

    let e = aws_sdk_ssm::Client::new(&conf)
        .get_parameter()
        .name("/nothing")
        .send()
        .await
        .unwrap_err();
    assert_answer(&e, 400, "ThrottlingException", "SSM (JSON protocol):");
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
    assert_answer(&e, 500, "InternalFailure", "");
    let e = iam.list_users().send().await.unwrap_err();
    assert_answer(&e, 503, "ServiceUnavailable", "");
    let e = sm.list_secrets().send().await.unwrap_err();
    assert_answer(&e, 500, "InternalFailure", "");
    let e = sm.list_secrets().send().await.unwrap_err();
    assert_answer(&e, 503, "ServiceUnavailable", "");
    // Spent: the next ones are forwarded.
    iam.list_users().send().await.unwrap();
    sm.list_secrets().send().await.unwrap();
}

#[tokio::test]
async fn server_errors_are_retried_by_the_sdk() {
    let (p, iam) = proxied(5, aws_sdk_iam::Client::new).await;
    p.inject(Fault::new("ListUsers", FaultKind::InternalError));
    p.inject(Fault::new("ListUsers", FaultKind::Unavailable).after(1));

    iam.list_users().send().await.unwrap();
    assert_eq!(p.attempts_per_call("ListUsers"), vec![3]);
}

#[tokio::test]
async fn a_permanent_fault_is_retried_up_to_the_sdks_bound_then_surfaces() {
    let (p, iam) = proxied(3, aws_sdk_iam::Client::new).await;
    p.inject(Fault::new("ListUsers", FaultKind::Unavailable).forever());

    let e = iam.list_users().send().await.unwrap_err();
    assert_eq!(status_and_code(&e).1.as_deref(), Some("ServiceUnavailable"));
    assert_eq!(p.attempts_per_call("ListUsers"), vec![3]);
    assert_eq!(p.faults().len(), 1, "a fault forever stays");
    p.clear_faults();
    iam.list_users().send().await.unwrap();
}

/// A proxy whose next CreateUser meets `kind`, sent once (no retry) for a new user named
/// from `prefix`: the proxy, the user's name, and the error the SDK answered.
async fn create_user_meeting(
    kind: FaultKind,
    prefix: &str,
) -> (
    AwsProxy,
    String,
    SdkError<aws_sdk_iam::operation::create_user::CreateUserError, HttpResponse>,
) {
    let (p, iam) = proxied(1, aws_sdk_iam::Client::new).await;
    let name = unique(prefix);
    p.inject(Fault::new("CreateUser", kind));
    let e = iam.create_user().user_name(&name).send().await.unwrap_err();
    (p, name, e)
}

#[tokio::test]
async fn a_dropped_connection_surfaces_as_a_dispatch_failure_and_nothing_happened() {
    let (p, name, e) = create_user_meeting(FaultKind::Drop, "dropped").await;
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
    let (_p, name, e) = create_user_meeting(FaultKind::ResponseLost, "lost").await;
    assert!(matches!(e, SdkError::DispatchFailure(_)), "{e:?}");
    assert!(user_exists(&name).await, "moto created the user");
}

#[tokio::test]
async fn a_slow_answer_is_delayed_then_forwarded() {
    let (p, iam) = proxied(1, aws_sdk_iam::Client::new).await;
    p.inject(Fault::new("ListUsers", FaultKind::Slow { ms: 300 }));

    let started = Instant::now();
    iam.list_users().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(p.faulted("ListUsers"), 1);
}

#[tokio::test]
async fn after_lets_the_first_requests_through_and_counts_are_per_operation() {
    let (p, iam) = proxied(1, aws_sdk_iam::Client::new).await;
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
    let faults: Vec<Fault> = json_of(http.get(url("faults"))).await;
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0].times, None, "null: forever");

    let iam = aws_sdk_iam::Client::new(&sdk(p.endpoint(), 1).await);
    assert!(iam.list_users().send().await.is_err());
    iam.list_roles().send().await.unwrap();
    let seen: Vec<Seen> = json_of(http.get(url("seen"))).await;
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

// --- Strict mode --------------------------------------------------------------------------------

/// An access key: its id and secret.
struct Key {
    id: String,
    secret: String,
}

/// Creates an access key for `user` (through whatever endpoint `iam` reaches).
async fn create_key(iam: &aws_sdk_iam::Client, user: &str) -> Key {
    let k = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .unwrap()
        .access_key
        .unwrap();
    Key {
        id: k.access_key_id,
        secret: k.secret_access_key,
    }
}

/// STS as `conf` says, signed with `key` (no loading: ready the moment the key is).
fn sts_as(conf: &SdkConfig, key: &Key) -> aws_sdk_sts::Client {
    let creds = Credentials::new(&key.id, &key.secret, None, None, "key");
    aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::config::Builder::from(conf)
            .credentials_provider(creds)
            .build(),
    )
}

/// `GetCallerIdentity` signed with `key`: the caller's ARN, or the error's HTTP status and code.
async fn whoami(conf: &SdkConfig, key: &Key) -> Result<String, (Option<u16>, Option<String>)> {
    match sts_as(conf, key).get_caller_identity().send().await {
        Ok(out) => Ok(out.arn.unwrap_or_default()),
        Err(e) => Err(status_and_code(&e)),
    }
}

/// The answer strict mode gives for a key STS must not accept yet, or any more.
fn invalid_token() -> Result<String, (Option<u16>, Option<String>)> {
    Err((Some(403), Some("InvalidClientTokenId".into())))
}

/// The strict-mode rules applied to requests of `op`, in order (`None` for those forwarded).
fn strict_rules(p: &AwsProxy, op: &str) -> Vec<Option<StrictRule>> {
    p.seen()
        .iter()
        .filter(|s| s.op == op)
        .map(|s| s.strict)
        .collect()
}

/// A user made straight at moto; its ARN.
async fn user(name: &str) -> String {
    direct_iam()
        .await
        .create_user()
        .user_name(name)
        .send()
        .await
        .unwrap()
        .user
        .unwrap()
        .arn
}

#[tokio::test]
async fn strict_sts_refuses_a_new_key_until_the_delay_has_passed() {
    const DELAY: Duration = Duration::from_millis(800);
    let p = proxy().await;
    let conf = sdk(p.endpoint(), 1).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    let name = unique("newkey");
    let arn = user(&name).await;

    // moto alone: a key works the moment it exists.
    let key = create_key(&iam, &name).await;
    assert_eq!(whoami(&conf, &key).await, Ok(arn.clone()));

    p.set_strict(Some(StrictOptions::with_new_key_delay(DELAY)));
    let before_create = Instant::now();
    let key = create_key(&iam, &name).await;
    assert_eq!(
        whoami(&conf, &key).await,
        invalid_token(),
        "a key younger than the delay is refused"
    );
    // Other services do not check: IAM still answers calls signed with the admin key.
    iam.list_access_keys()
        .user_name(&name)
        .send()
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refusals = 1;
    let worked_at = loop {
        match whoami(&conf, &key).await {
            Ok(got) => {
                assert_eq!(got, arn);
                break Instant::now();
            }
            Err(e) => {
                assert_eq!(Err(e), invalid_token());
                refusals += 1;
            }
        }
        assert!(Instant::now() < deadline, "the new key never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        worked_at - before_create >= DELAY,
        "accepted {:?} after its creation started, before the delay",
        worked_at - before_create
    );
    let rules = strict_rules(&p, "GetCallerIdentity");
    assert_eq!(rules.len(), 1 + refusals + 1);
    assert_eq!(rules[0], None, "strict mode was off");
    assert!(
        rules[1..=refusals]
            .iter()
            .all(|r| *r == Some(StrictRule::NewKey))
    );
    assert_eq!(rules.last(), Some(&None));
    assert_eq!(p.refused("GetCallerIdentity"), refusals);
}

#[tokio::test]
async fn strict_sts_refuses_inactive_and_deleted_keys() {
    let p = proxy().await;
    let conf = sdk(p.endpoint(), 1).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    let name = unique("deadkey");
    let arn = user(&name).await;
    let set = |key: &Key, status: aws_sdk_iam::types::StatusType| {
        iam.update_access_key()
            .user_name(&name)
            .access_key_id(&key.id)
            .status(status)
            .send()
    };
    let delete = |key: &Key| {
        iam.delete_access_key()
            .user_name(&name)
            .access_key_id(&key.id)
            .send()
    };
    use aws_sdk_iam::types::StatusType::{Active, Inactive};

    // moto alone: an Inactive key still signs; a deleted one too (as some default identity).
    let key = create_key(&iam, &name).await;
    set(&key, Inactive).await.unwrap();
    assert_eq!(whoami(&conf, &key).await, Ok(arn.clone()));
    delete(&key).await.unwrap();
    assert!(whoami(&conf, &key).await.is_ok());

    p.set_strict(Some(StrictOptions::with_new_key_delay(Duration::ZERO)));
    let key = create_key(&iam, &name).await;
    assert_eq!(whoami(&conf, &key).await, Ok(arn.clone()));
    set(&key, Inactive).await.unwrap();
    assert_eq!(whoami(&conf, &key).await, invalid_token());
    let listed = iam
        .list_access_keys()
        .user_name(&name)
        .send()
        .await
        .expect("IAM is not refused");
    assert_eq!(listed.access_key_metadata[0].status, Some(Inactive));
    set(&key, Active).await.unwrap();
    assert_eq!(whoami(&conf, &key).await, Ok(arn.clone()), "Active again");
    delete(&key).await.unwrap();
    assert_eq!(whoami(&conf, &key).await, invalid_token());

    assert_eq!(
        strict_rules(&p, "GetCallerIdentity"),
        vec![None, None, None, Some(InactiveKey), None, Some(DeletedKey)]
    );
}

#[tokio::test]
async fn strict_sts_ignores_a_state_change_that_failed() {
    let p = proxy()
        .await
        .strict(StrictOptions::with_new_key_delay(Duration::ZERO));
    let conf = sdk(p.endpoint(), 1).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    let name = unique("failedchange");
    let arn = user(&name).await;
    let key = create_key(&iam, &name).await;
    // Deleting it as another user's key fails at moto: the key stays usable.
    let other = unique("other");
    user(&other).await;
    let e = iam
        .delete_access_key()
        .user_name(&other)
        .access_key_id(&key.id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(status_and_code(&e).0, Some(404), "{e:?}");
    assert_eq!(whoami(&conf, &key).await, Ok(arn));
}

/// Secrets Manager through `endpoint`, one attempt per call.
async fn secrets(endpoint: &str) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk(endpoint, 1).await)
}

/// A 32-character version id / client request token.
fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A secret created straight at moto, its value `v1` under version `token`.
async fn secret(name: &str, token: &str) {
    secrets(&moto().endpoint)
        .await
        .create_secret()
        .name(name)
        .secret_string("v1")
        .client_request_token(token)
        .send()
        .await
        .unwrap();
}

async fn value_of(name: &str, version: &str) -> String {
    secrets(&moto().endpoint)
        .await
        .get_secret_value()
        .secret_id(name)
        .version_id(version)
        .send()
        .await
        .unwrap()
        .secret_string
        .unwrap()
}

/// Version id → labels, as moto holds them.
async fn stages(name: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    secrets(&moto().endpoint)
        .await
        .describe_secret()
        .secret_id(name)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages
        .unwrap_or_default()
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v)
        })
        .collect()
}

#[tokio::test]
async fn strict_put_secret_value_refuses_a_token_reused_with_another_value() {
    let p = proxy().await;
    let sm = secrets(p.endpoint()).await;
    let put = |name: &str, token: &str, value: &str| {
        sm.put_secret_value()
            .secret_id(name)
            .client_request_token(token)
            .secret_string(value)
            .version_stages("AWSPENDING")
            .send()
    };

    // moto alone: the second put silently overwrites the pending version's value.
    let lax = unique("lax");
    secret(&lax, &token()).await;
    let t = token();
    put(&lax, &t, "first").await.unwrap();
    put(&lax, &t, "second").await.unwrap();
    assert_eq!(value_of(&lax, &t).await, "second");

    p.set_strict(Some(StrictOptions::default()));
    let name = unique("strict");
    secret(&name, &token()).await;
    let t = token();
    put(&name, &t, "first").await.unwrap();
    let e = put(&name, &t, "second").await.unwrap_err();
    assert_answer(&e, 400, "ResourceExistsException", "");
    assert_eq!(
        e.message(),
        Some("You can't modify an existing version, you can only create a new version.")
    );
    assert_eq!(
        value_of(&name, &t).await,
        "first",
        "the version is untouched"
    );
    // The same token with the same value is a retry: AWS (and the proxy) accept it.
    let again = put(&name, &t, "first").await.unwrap();
    assert_eq!(again.version_id.as_deref(), Some(t.as_str()));
    // A new token is a new version.
    let t2 = token();
    put(&name, &t2, "second").await.unwrap();
    assert_eq!(value_of(&name, &t2).await, "second");

    assert_eq!(
        strict_rules(&p, "PutSecretValue"),
        vec![None, None, None, Some(VersionExists), None, None]
    );
}

#[tokio::test]
async fn strict_stage_moves_need_the_version_that_holds_the_label() {
    let p = proxy().await;
    let sm = secrets(p.endpoint()).await;
    let labels = |ls: &[&str]| ls.iter().map(|l| l.to_string()).collect::<Vec<_>>();
    // A secret with `a` AWSCURRENT, `b` AWSPENDING and `c` (labelled `candidate`).
    let setup = |name: String| async move {
        let (a, b, c) = (token(), token(), token());
        secret(&name, &a).await;
        for (t, label) in [(&b, "AWSPENDING"), (&c, "candidate")] {
            secrets(&moto().endpoint)
                .await
                .put_secret_value()
                .secret_id(&name)
                .client_request_token(t)
                .secret_string(format!("value {label}"))
                .version_stages(label)
                .send()
                .await
                .unwrap();
        }
        (name, a, b, c)
    };
    let mv = |name: &str, label: &str, to: &str, from: Option<&str>| {
        sm.update_secret_version_stage()
            .secret_id(name)
            .version_stage(label)
            .move_to_version_id(to)
            .set_remove_from_version_id(from.map(str::to_owned))
            .send()
    };

    // moto alone: AWSPENDING moved without RemoveFromVersionId ends up on two versions.
    let (lax, _, b, c) = setup(unique("lax")).await;
    mv(&lax, "AWSPENDING", &c, None).await.unwrap();
    let s = stages(&lax).await;
    assert_eq!(s[&b], labels(&["AWSPENDING"]));
    assert_eq!(s[&c], labels(&["AWSPENDING", "candidate"]));

    p.set_strict(Some(StrictOptions::default()));
    let (name, a, b, c) = setup(unique("strict")).await;
    let before = stages(&name).await;
    let e = mv(&name, "AWSPENDING", &c, None).await.unwrap_err();
    assert_answer(&e, 400, "InvalidParameterException", "");
    assert_eq!(
        e.message(),
        Some(remove_from_needed("AWSPENDING", &b).as_str())
    );
    // Naming a version that does not hold the label.
    let e = mv(&name, "AWSPENDING", &c, Some(&a)).await.unwrap_err();
    assert_eq!(
        status_and_code(&e).1.as_deref(),
        Some("InvalidParameterException")
    );
    assert_eq!(stages(&name).await, before, "nothing moved");
    // The right one: the label moves.
    mv(&name, "AWSPENDING", &c, Some(&b)).await.unwrap();
    let s = stages(&name).await;
    assert_eq!(s[&b], labels(&[]));
    assert_eq!(s[&c], labels(&["AWSPENDING", "candidate"]));
    // AWSCURRENT: moto refuses the move without RemoveFromVersionId too; strict mode answers
    // first, with the same words.
    let e = mv(&name, "AWSCURRENT", &c, None).await.unwrap_err();
    assert_eq!(
        e.message(),
        Some(remove_from_needed("AWSCURRENT", &a).as_str())
    );
    mv(&name, "AWSCURRENT", &c, Some(&a)).await.unwrap();
    let s = stages(&name).await;
    assert_eq!(s[&a], labels(&["AWSPREVIOUS"]));
    assert_eq!(s[&c], labels(&["AWSCURRENT", "AWSPENDING", "candidate"]));

    assert_eq!(
        strict_rules(&p, "UpdateSecretVersionStage"),
        vec![
            None,
            Some(StrictRule::RemoveFromVersion),
            Some(StrictRule::RemoveFromVersion),
            None,
            Some(StrictRule::RemoveFromVersion),
            None
        ]
    );
}

#[tokio::test]
async fn the_strict_control_route_switches_strict_mode() {
    let p = proxy().await;
    let http = reqwest::Client::new();
    let url = format!("{}/_proxy/strict", p.endpoint());
    let get = || async {
        http.get(&url)
            .send()
            .await
            .unwrap()
            .json::<Option<StrictOptions>>()
            .await
            .unwrap()
    };
    assert_eq!(get().await, None, "off by default");

    let r = http
        .post(&url)
        .body(r#"{"new_key_delay_ms": 600000, "stage_moves": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let expected = StrictOptions {
        stage_moves: false,
        ..StrictOptions::with_new_key_delay(Duration::from_secs(600))
    };
    assert_eq!(get().await, Some(expected.clone()));
    assert_eq!(p.strict_options(), Some(expected));

    let conf = sdk(p.endpoint(), 1).await;
    let iam = aws_sdk_iam::Client::new(&conf);
    let name = unique("route");
    let arn = user(&name).await;
    let key = create_key(&iam, &name).await;
    assert_eq!(whoami(&conf, &key).await, invalid_token());
    let seen: Vec<Seen> = json_of(http.get(format!("{}/_proxy/seen", p.endpoint()))).await;
    let last = seen.last().unwrap();
    assert_eq!(
        (last.op.as_str(), last.strict),
        ("GetCallerIdentity", Some(StrictRule::NewKey))
    );

    assert_eq!(http.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(get().await, None);
    assert_eq!(whoami(&conf, &key).await, Ok(arn), "off: forwarded");
    assert_eq!(
        http.post(&url)
            .body(r#"{"delay": 1}"#)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

/// The JSON answer to `request`, which must succeed.
async fn json_of<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.unwrap().json().await.unwrap()
}
