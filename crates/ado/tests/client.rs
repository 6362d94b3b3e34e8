//! `AdoClient` against the ADO emulator: update in place, retries, errors, and no secret in
//! anything a person could read.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use keyrotor_ado::{AdoClient, AdoOptions};
use keyrotor_core::domain::{AccessKeyId, EndpointRef, EndpointSelector, ProjectName};
use keyrotor_core::ports::{Endpoint, PortError, PortErrorKind, PortResult, ServiceConnections};
use keyrotor_testkit::ado::{Fault, Op, OrgSeed, RateLimit, Scope, Seed, aws_endpoint};
use secrecy::SecretString;
use serde_json::json;

fn by_name(project: &str, name: &str) -> EndpointRef {
    EndpointRef {
        project: ProjectName::parse(project).unwrap(),
        by: EndpointSelector::Name(name.into()),
    }
}

fn by_id(project: &str, id: &str) -> EndpointRef {
    EndpointRef {
        project: ProjectName::parse(project).unwrap(),
        by: EndpointSelector::Id(keyrotor_core::domain::EndpointId::parse(id).unwrap()),
    }
}

fn new_key() -> (AccessKeyId, SecretString) {
    (
        AccessKeyId::parse(NEW_KEY).unwrap(),
        SecretString::from(NEW_SECRET),
    )
}

/// An emulator that answers every GET with `status` and a `Retry-After` of `retry_after` s.
async fn answering_forever(status: u16, retry_after: u64) -> Env {
    let env = Env::start().await;
    env.emu.inject(
        Fault::status(Op::Get, status)
            .retry_after(retry_after)
            .forever(),
    );
    env
}

/// Fast options that accept a `Retry-After` of up to 310 s and wait out rate limits for up
/// to `rate_limit_max_wait_secs` in all.
fn willing_to_wait(rate_limit_max_wait_secs: u64) -> AdoOptions {
    AdoOptions {
        max_retry_after: Duration::from_secs(310),
        rate_limit_max_wait: Duration::from_secs(rate_limit_max_wait_secs),
        ..fast()
    }
}

/// `find` by name through the emulator's own client.
async fn named(env: &Env, project: &str, name: &str) -> PortResult<Endpoint> {
    env.client.find(&env.org, &by_name(project, name)).await
}

/// `find` of the prod connection by id through `client`.
async fn prod_via(env: &Env, client: &AdoClient) -> PortResult<Endpoint> {
    client.find(&env.org, &by_id("Platform", PROD)).await
}

/// Sets the new key on the connection `id` as seen from `project`, through `client`.
async fn put_new_key(env: &Env, client: &AdoClient, project: &str, id: &str) -> PortResult<()> {
    let (key, secret) = new_key();
    client
        .set_credentials(&env.handle(project, id), &key, &secret)
        .await
}

/// The error `call` ends in, which must come within `limit_secs` (no long wait was started):
/// `why` says what a slower failure would mean.
async fn fails_within(
    limit_secs: u64,
    why: &str,
    call: impl std::future::Future<Output = PortResult<Endpoint>>,
) -> PortError {
    let started = Instant::now();
    let e = call.await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(limit_secs),
        "{why}: {e}"
    );
    e
}

/// Fails unless `e` is of `kind` and its message holds every one of `parts`.
fn assert_error(e: &PortError, kind: PortErrorKind, parts: &[&str]) {
    assert_eq!(e.kind, kind, "{e}");
    for part in parts {
        assert!(e.message.contains(part), "{part:?} missing from: {e}");
    }
}

/// Everything a person could read of an error.
fn readable(e: &PortError) -> String {
    format!("{e} | {e:?}")
}

#[tokio::test]
async fn finds_by_name_and_by_id_and_maps_the_fields() {
    let env = Env::start().await;
    let e = named(&env, "Platform", "AWS-Prod").await.unwrap();
    assert_eq!(e.handle.id, PROD);
    assert_eq!(e.handle.project.as_str(), "Platform");
    assert_eq!(e.name, "aws-prod");
    assert_eq!(e.kind, "AWS");
    assert_eq!(e.scheme, "UsernamePassword");
    assert_eq!(e.username.as_deref(), Some(OLD_KEY));
    assert!(!e.uses_oidc);
    assert!(e.is_ready);
    assert_eq!(e.unrotatable_reason(), None);

    let by_id = prod_via(&env, &env.client).await.unwrap();
    assert_eq!(by_id, e);
    assert_eq!(env.client.get(&e.handle).await.unwrap(), Some(e));
}

#[tokio::test]
async fn what_is_not_there_is_not_found_and_null_is_none() {
    let env = Env::start().await;
    let missing = "99999999-9999-4999-8999-999999999999";
    let e = named(&env, "Platform", "nope").await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound, "{e}");
    let e = env
        .client
        .find(&env.org, &by_id("Platform", missing))
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound, "{e}");
    // The service answers 200 with `null`: `get` says None.
    assert_eq!(
        env.client
            .get(&env.handle("Platform", missing))
            .await
            .unwrap(),
        None
    );
    // Shared into Web only under another name, and not at all into Data.
    assert_eq!(
        env.client.get(&env.handle("Data", PROD)).await.unwrap(),
        None
    );
    let e = named(&env, "NoSuchProject", "aws-prod").await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound, "{e}");
    let e = put_new_key(&env, &env.client, "Platform", missing)
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::NotFound, "{e}");
    assert!(
        !env.methods().iter().any(|m| m != "GET"),
        "{:?}",
        env.methods()
    );
}

#[tokio::test]
async fn a_failed_connection_is_still_found_and_reported_not_ready() {
    let env = Env::start().await;
    let e = named(&env, "Platform", "aws-failed").await.unwrap();
    assert_eq!(e.handle.id, FAILED);
    assert!(!e.is_ready);
}

#[tokio::test]
async fn two_connections_with_one_name_are_invalid() {
    let mut seed = seed();
    let mut twin = keyrotor_testkit::ado::aws_endpoint("aws-prod", OLD_KEY, "x", &["Platform"]);
    twin["id"] = json!("77777777-7777-4777-8777-777777777777");
    seed.organizations[0].endpoints.push(twin);
    let env = Env::with(seed, fast()).await;
    let e = named(&env, "Platform", "aws-prod").await.unwrap_err();
    assert_error(&e, PortErrorKind::Invalid, &["2 service connections"]);
}

#[tokio::test]
async fn oidc_and_non_aws_connections_are_reported_and_left_alone() {
    let env = Env::start().await;
    let oidc = named(&env, "Platform", "aws-oidc").await.unwrap();
    assert!(oidc.uses_oidc);
    assert_eq!(oidc.username, None);
    assert!(oidc.unrotatable_reason().unwrap().contains("OIDC"));

    let gh = named(&env, "Platform", "github").await.unwrap();
    assert_eq!(gh.kind, "GitHub");
    assert_eq!(gh.scheme, "Token");
    assert!(!gh.uses_oidc);
    assert!(gh.unrotatable_reason().unwrap().contains("not AWS"));

    let lower = named(&env, "Data", "aws-data").await.unwrap();
    assert_eq!(lower.kind, "aws");
    assert_eq!(
        lower.unrotatable_reason(),
        None,
        "type is compared case-insensitively"
    );

    let (key, secret) = new_key();
    for h in [&oidc.handle, &gh.handle] {
        let before = env.stored(h.id.as_str());
        let e = env
            .client
            .set_credentials(h, &key, &secret)
            .await
            .unwrap_err();
        assert_eq!(e.kind, PortErrorKind::Refused, "{e}");
        assert_eq!(env.stored(h.id.as_str()), before);
    }
    assert!(
        env.methods().iter().all(|m| m == "GET"),
        "{:?}",
        env.methods()
    );
}

#[tokio::test]
async fn an_update_in_place_changes_the_credentials_and_nothing_else() {
    let env = Env::start().await;
    let before = env.stored(PROD);
    let permissions_before = env.emu.state().organizations["contoso"]
        .pipeline_permissions
        .clone();
    let h = env.handle("Platform", PROD);
    let (key, secret) = new_key();
    env.client.set_credentials(&h, &key, &secret).await.unwrap();

    let after = env.stored(PROD);
    assert_eq!(
        after["id"], PROD,
        "same id: pipeline authorizations stay attached"
    );
    assert_eq!(after["authorization"]["parameters"]["username"], NEW_KEY);
    assert_eq!(after["authorization"]["parameters"]["password"], NEW_SECRET);
    // The session token stored beside the old key is cleared: kept (it came back null, and a
    // null sent back keeps it), it would go with the new key and AWS would refuse every call.
    assert_eq!(
        before["authorization"]["parameters"]["sessionToken"],
        SESSION_TOKEN
    );
    assert_eq!(
        after["authorization"]["parameters"]["sessionToken"], "",
        "a key update clears the stale session token"
    );
    assert_eq!(without_credentials(&after), without_credentials(&before));
    // Byte for byte: the serialized forms of everything else match too.
    assert_eq!(
        serde_json::to_string(&without_credentials(&after)).unwrap(),
        serde_json::to_string(&without_credentials(&before)).unwrap()
    );
    assert_eq!(
        env.emu.state().organizations["contoso"].pipeline_permissions,
        permissions_before
    );
    assert_eq!(env.emu.state().organizations["contoso"].endpoints.len(), 6);

    // Exactly one GET and one PUT to the org-level path, api-version 7.1, no `operation`.
    let log = env.emu.requests();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].method, "GET");
    assert_eq!(log[1].method, "PUT");
    assert_eq!(
        log[1].path,
        format!("/contoso/_apis/serviceendpoint/endpoints/{PROD}")
    );
    assert_eq!(log[1].query.as_deref(), Some("api-version=7.1"));

    let now = env.client.get(&h).await.unwrap().unwrap();
    assert_eq!(now.username.as_deref(), Some(NEW_KEY));
    assert_eq!(now.key_id(), Some(key));
}

/// Issue "Safe among others", case 6: a connection that once had a session token kept it
/// through every key update (sent back `null`, which the service reads as "keep"), and AWS
/// refused the new key with it ("The security token included in the request is invalid").
#[tokio::test]
async fn a_key_update_clears_a_stale_session_token_and_keeps_the_rest() {
    let env = Env::start().await;
    let h = env.handle("Platform", PROD);
    let before = env.stored(PROD);
    assert_eq!(
        before["authorization"]["parameters"]["sessionToken"],
        SESSION_TOKEN
    );
    // The client reads it as the service answers it: null, like the password.
    let answered = env.client.get(&h).await.unwrap().unwrap();
    assert_eq!(answered.username.as_deref(), Some(OLD_KEY));

    let (key, secret) = new_key();
    env.client.set_credentials(&h, &key, &secret).await.unwrap();
    let after = env.stored(PROD);
    let params = &after["authorization"]["parameters"];
    assert_eq!(params["username"], NEW_KEY);
    assert_eq!(params["password"], NEW_SECRET);
    assert_eq!(
        params["sessionToken"], "",
        "the stale session token is cleared"
    );
    for field in ["assumeRoleArn", "externalId", "roleSessionName"] {
        assert_eq!(
            params[field], before["authorization"]["parameters"][field],
            "{field} is kept"
        );
    }
    assert_eq!(without_credentials(&after), without_credentials(&before));

    // A connection that never had one (`""` stored) keeps its empty one.
    let shared_before = env.stored(SHARED);
    put_new_key(&env, &env.client, "Web", SHARED).await.unwrap();
    let shared_after = env.stored(SHARED);
    assert_eq!(
        shared_after["authorization"]["parameters"]["sessionToken"],
        ""
    );
    assert_eq!(
        without_credentials(&shared_after),
        without_credentials(&shared_before)
    );
}

#[tokio::test]
async fn pipeline_permissions_survive_the_update() {
    let env = Env::start().await;
    let url = format!(
        "{}/Platform/_apis/pipelines/pipelinepermissions/endpoint/{PROD}?api-version=7.1-preview.1",
        env.emu.org_url("contoso")
    );
    let read = || json_of(reqwest::Client::new().get(&url).basic_auth("", Some(PAT)));
    let before = read().await;
    assert_eq!(before["pipelines"].as_array().unwrap().len(), 2);
    put_new_key(&env, &env.client, "Platform", PROD)
        .await
        .unwrap();
    assert_eq!(read().await, before);
}

#[tokio::test]
async fn running_the_update_again_changes_nothing_more() {
    let env = Env::start().await;
    let h = env.handle("Platform", PROD);
    let (key, secret) = new_key();
    env.client.set_credentials(&h, &key, &secret).await.unwrap();
    let once = env.emu.state();
    env.client.set_credentials(&h, &key, &secret).await.unwrap();
    assert_eq!(env.emu.state(), once);
    assert!(env.methods().iter().all(|m| m == "GET" || m == "PUT"));
}

#[tokio::test]
async fn a_shared_connection_is_one_object_in_every_project() {
    let env = Env::start().await;
    let web = named(&env, "Web", "aws-shared-web").await.unwrap();
    let platform = named(&env, "Platform", "aws-shared").await.unwrap();
    assert_eq!(web.handle.id, SHARED);
    assert_eq!(platform.handle.id, SHARED);
    assert_eq!(
        web.name, "aws-shared-web",
        "named as in the project it was found in"
    );
    assert_eq!(platform.name, "aws-shared");

    let before = env.stored(SHARED);
    let (key, secret) = new_key();
    env.client
        .set_credentials(&web.handle, &key, &secret)
        .await
        .unwrap();
    let seen_from_platform = env.client.get(&platform.handle).await.unwrap().unwrap();
    assert_eq!(seen_from_platform.username.as_deref(), Some(NEW_KEY));
    let after = env.stored(SHARED);
    assert_eq!(without_credentials(&after), without_credentials(&before));
    assert_eq!(
        after["serviceEndpointProjectReferences"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_429_waits_for_its_retry_after_then_succeeds() {
    let env = Env::start().await;
    env.emu.inject(Fault::status(Op::Get, 429).retry_after(1));
    let started = Instant::now();
    let e = prod_via(&env, &env.client).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(e.handle.id, PROD);
    // Retry-After: 1 s, capped at 250 ms by the options; the backoff alone would be 5 ms.
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_millis(1000), "{waited:?}");
    let statuses: Vec<u16> = env.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200]);
}

#[tokio::test]
async fn the_emulator_rate_limit_is_ridden_out() {
    let env = Env::start().await;
    env.emu
        .set_rate_limit(Some(keyrotor_testkit::ado::RateLimit {
            limit: 1,
            window_seconds: 1,
            cost_per_request: 1,
            block_at: Some(1),
            delay_ms: 0,
        }));
    let options = keyrotor_ado::AdoOptions {
        max_retry_after: Duration::from_secs(2),
        ..fast()
    };
    let client = env.client_with(PAT, options);
    prod_via(&env, &client).await.unwrap();
    // The second request within the window is refused with 429 and Retry-After; the client
    // waits it out and succeeds.
    prod_via(&env, &client).await.unwrap();
    let statuses: Vec<u16> = env.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses.first(), Some(&200));
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200));
}

/// A small budget with Azure DevOps' shape: `limit` undelayed, refused from `block_at`.
fn budget(limit: u32, block_at: u32, window_seconds: u64) -> RateLimit {
    RateLimit {
        limit,
        window_seconds,
        cost_per_request: 1,
        block_at: Some(block_at),
        delay_ms: 0,
    }
}

/// `tasks` tasks at once, each sending `each` requests one after the other through `client`
/// (like the CLI: a few targets at a time, each target's requests in order).
async fn concurrently(env: &Env, client: &Arc<keyrotor_ado::AdoClient>, tasks: usize, each: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, org) = (client.clone(), env.org.clone());
        set.spawn(async move {
            for _ in 0..each {
                client.find(&org, &by_id("Platform", PROD)).await?;
            }
            Ok::<_, PortError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("a task panicked").expect("every request succeeds");
    }
}

/// Three tasks, five requests each, against 5 undelayed requests per second and refusals from
/// 9: when Azure DevOps starts delaying, the client holds every request back until the budget
/// resets, so it never reaches the refusals (without pacing, 15 quick requests would) and
/// every request is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_one_client_pause_before_the_refusals() {
    let env = Env::start().await;
    env.emu.set_rate_limit(Some(budget(5, 9, 1)));
    let options = AdoOptions {
        max_retry_after: Duration::from_secs(5),
        ..fast()
    };
    let client = Arc::new(env.client_with(PAT, options));
    concurrently(&env, &client, 3, 5).await;
    let log = env.emu.requests();
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 15], "no refusal, no retry");
    assert!(
        log.iter().any(|r| r.delayed),
        "the budget was reached: {log:?}"
    );
}

/// The budget is spent by someone else with the same PAT. The client's first request is
/// refused; from then on no request of the client goes out before that `Retry-After` has
/// passed — neither the refused one nor the ones started meanwhile, which wait instead of each
/// spending its own attempts on refusals — and every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_429_no_request_of_the_client_goes_out_before_its_retry_after() {
    let env = Env::start().await;
    env.emu.set_rate_limit(Some(budget(4, 8, 1)));
    let url = format!(
        "{}/Platform/_apis/serviceendpoint/endpoints/{PROD}?api-version=7.1",
        env.emu.org_url("contoso")
    );
    let raw = reqwest::Client::new();
    for _ in 0..20 {
        let status = raw
            .get(&url)
            .basic_auth("", Some(PAT))
            .send()
            .await
            .unwrap()
            .status();
        if status == 429 {
            break;
        }
    }
    let mark = env.emu.requests().len();
    assert_eq!(
        env.emu.requests()[mark - 1].status,
        429,
        "the budget is spent"
    );

    let options = AdoOptions {
        max_retry_after: Duration::from_secs(5),
        ..fast()
    };
    let client = Arc::new(env.client_with(PAT, options));
    let first = tokio::spawn({
        let (client, org) = (client.clone(), env.org.clone());
        async move { client.find(&org, &by_id("Platform", PROD)).await }
    });
    // Synchronise on the client: it holds requests back once it has seen the refusal.
    let waiting_since = Instant::now();
    while client.rate_limit_pause().is_none() {
        assert!(
            waiting_since.elapsed() < Duration::from_secs(10),
            "the client never paused"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    concurrently(&env, &client, 4, 2).await;
    first
        .await
        .unwrap()
        .expect("the refused request succeeds in the end");

    let log = env.emu.requests().split_off(mark);
    let refused = &log[0];
    assert_eq!(refused.status, 429, "{log:?}");
    let retry_after = refused.retry_after.expect("a 429 names its Retry-After");
    assert!(retry_after >= 1);
    let free_at = refused.received_us + retry_after * 1_000_000;
    for r in &log[1..] {
        assert!(
            r.received_us >= free_at,
            "a request went out {} ms into a {retry_after} s Retry-After: {log:?}",
            (r.received_us - refused.received_us) / 1000
        );
        assert_ne!(r.status, 429, "a refusal after the pause: {log:?}");
    }
    // The refused request once more, and the 4 × 2 others.
    assert_eq!(log.len(), 1 + 1 + 8, "{log:?}");
}

#[tokio::test]
async fn a_rate_limit_wait_past_the_clients_bound_is_not_started() {
    let env = answering_forever(429, 120).await;
    let options = willing_to_wait(10);
    let client = env.client_with(PAT, options);
    let e = fails_within(5, "it did not wait", prod_via(&env, &client)).await;
    assert_error(
        &e,
        PortErrorKind::Retryable,
        &["HTTP 429", "another 120 s", "10 s this client waits"],
    );
    assert_eq!(env.emu.requests().len(), 1);
    assert_no_secret(&readable(&e));
    // The pause stays for every other request of the client: they fail at once too, unsent.
    let e = client
        .find(&env.org, &by_name("Platform", "aws-prod"))
        .await
        .unwrap_err();
    assert_error(&e, PortErrorKind::Retryable, &["was not sent"]);
    assert_eq!(env.emu.requests().len(), 1);
}

#[tokio::test]
async fn no_wait_runs_past_the_deadline() {
    let env = answering_forever(429, 30).await;
    let options = AdoOptions {
        deadline: Some(SystemTime::now() + Duration::from_secs(3)),
        ..willing_to_wait(900)
    };
    let client = env.client_with(PAT, options);
    let e = fails_within(2, "it did not wait", prod_via(&env, &client)).await;
    assert_error(&e, PortErrorKind::Retryable, &["past the deadline"]);

    // A backoff past the deadline is not started either, and a deadline that has passed sends
    // nothing.
    let env = Env::start().await;
    env.emu.inject(Fault::status(Op::Get, 500).forever());
    let options = AdoOptions {
        backoff_base: Duration::from_secs(5),
        backoff_cap: Duration::from_secs(5),
        deadline: Some(SystemTime::now() + Duration::from_secs(3)),
        ..fast()
    };
    let e = fails_within(
        2,
        "it did not wait",
        prod_via(&env, &env.client_with(PAT, options.clone())),
    )
    .await;
    assert!(e.message.contains("HTTP 500"), "{e}");
    assert_eq!(env.emu.requests().len(), 1);
    let options = AdoOptions {
        deadline: Some(SystemTime::now() - Duration::from_secs(1)),
        ..options
    };
    let e = prod_via(&env, &env.client_with(PAT, options))
        .await
        .unwrap_err();
    assert_error(&e, PortErrorKind::Retryable, &["deadline has passed"]);
    assert_eq!(env.emu.requests().len(), 1, "nothing sent");
}

#[tokio::test]
async fn refusals_are_bounded_in_count_and_do_not_use_up_the_retries_of_failures() {
    let env = answering_forever(429, 0).await;
    let e = prod_via(&env, &env.client).await.unwrap_err();
    assert_error(&e, PortErrorKind::Retryable, &["4 attempts"]);
    assert_eq!(env.emu.requests().len(), 4, "max_rate_limited_attempts");

    // Three refusals and one failure, with room for two failed attempts: it succeeds.
    env.emu.clear_faults();
    env.emu
        .inject(Fault::status(Op::Get, 429).retry_after(0).times(3));
    env.emu.inject(Fault::status(Op::Get, 503).times(1));
    let options = AdoOptions {
        max_attempts: 2,
        ..fast()
    };
    let client = env.client_with(PAT, options);
    prod_via(&env, &client).await.unwrap();
    let statuses: Vec<u16> = env.emu.requests()[4..].iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 429, 429, 503, 200]);
}

#[tokio::test]
async fn a_5xx_is_retried_with_backoff_then_succeeds() {
    let env = Env::start().await;
    env.emu.inject(Fault::status(Op::Put, 503).times(2));
    put_new_key(&env, &env.client, "Platform", PROD)
        .await
        .unwrap();
    let puts: Vec<u16> = env
        .emu
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, vec![503, 503, 200]);
    assert_eq!(
        env.stored(PROD)["authorization"]["parameters"]["username"],
        NEW_KEY
    );
}

#[tokio::test]
async fn a_5xx_that_never_ends_is_retryable_after_a_bounded_number_of_attempts() {
    let env = Env::start().await;
    env.emu.inject(Fault::status(Op::Get, 500).forever());
    let e = prod_via(&env, &env.client).await.unwrap_err();
    assert_error(&e, PortErrorKind::Retryable, &["4 attempts", "HTTP 500"]);
    assert_eq!(env.emu.requests().len(), 4);
}

#[tokio::test]
async fn retries_stop_when_the_time_budget_is_spent() {
    let env = answering_forever(503, 30).await;
    let options = keyrotor_ado::AdoOptions {
        max_retry_after: Duration::from_secs(60),
        max_total: Duration::from_secs(2),
        ..fast()
    };
    let client = env.client_with(PAT, options);
    let e = fails_within(2, "no 30 s wait past the budget", prod_via(&env, &client)).await;
    assert_eq!(e.kind, PortErrorKind::Retryable, "{e}");
    assert_eq!(env.emu.requests().len(), 1);
}

#[tokio::test]
async fn a_timeout_is_retried_and_a_hang_ends_as_retryable() {
    let env = Env::start().await;
    let options = keyrotor_ado::AdoOptions {
        request_timeout: Duration::from_millis(200),
        max_attempts: 3,
        ..fast()
    };
    let client = env.client_with(PAT, options);
    env.emu.inject(Fault::delay(Op::Get, 3_000));
    let e = prod_via(&env, &client).await.unwrap();
    assert_eq!(e.handle.id, PROD);

    env.emu.inject(Fault::delay(Op::Get, 3_000).forever());
    let e = fails_within(3, "the hang is cut short", prod_via(&env, &client)).await;
    assert_error(&e, PortErrorKind::Retryable, &["timed out", "3 attempts"]);
    assert_no_secret(&readable(&e));
}

#[tokio::test]
async fn a_connection_refused_is_retryable() {
    let env = Env::start().await;
    // A port that was free a moment ago and has nothing listening now.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let org =
        keyrotor_core::domain::OrgUrl::parse(&format!("http://127.0.0.1:{port}/contoso")).unwrap();
    let e = env
        .client
        .find(&org, &by_id("Platform", PROD))
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable, "{e}");
    assert!(
        e.message
            .contains(&format!("could not connect to 127.0.0.1:{port}")),
        "names the host it tried: {e}"
    );
    assert!(!e.message.contains("http://"), "no URL from reqwest: {e}");
}

#[tokio::test]
async fn a_bad_pat_is_unauthorized_in_plain_words_without_the_secret() {
    let env = Env::start().await;
    let wrong = "patWRONGvalue0000secret";
    let client = env.client_with(wrong, fast());
    let e = client
        .find(&env.org, &by_name("Platform", "aws-prod"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Unauthorized, "{e}");
    assert!(
        e.message.contains("Azure DevOps did not accept the PAT"),
        "{e}"
    );
    assert!(!readable(&e).contains(wrong), "{e:?}");
    assert_no_secret(&readable(&e));
    // The client asked for a 401 instead of the sign-in page.
    assert_eq!(env.emu.requests()[0].status, 401);

    // Should the service still answer with its sign-in page (203) or a redirect, the same.
    for fault in [Fault::sign_in_page(Op::Get), Fault::status(Op::Get, 302)] {
        env.emu.inject(fault);
        let e = prod_via(&env, &env.client).await.unwrap_err();
        assert_error(
            &e,
            PortErrorKind::Unauthorized,
            &["did not accept the PAT", "sign-in page"],
        );
        assert!(!e.message.contains("<html"), "{e}");
        assert_no_secret(&readable(&e));
    }
    // And a 200 that is not JSON.
    env.emu
        .inject(Fault::status(Op::Get, 200).body("text/html", "<html><body>Sign in</body></html>"));
    let e = prod_via(&env, &env.client).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Unauthorized, "{e}");
}

#[tokio::test]
async fn a_read_only_pat_cannot_update_and_nothing_changes() {
    let env = Env::start().await;
    let client = env.client_with(READ_PAT, fast());
    let before = env.stored(PROD);
    let e = put_new_key(&env, &client, "Platform", PROD)
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Unauthorized, "{e}");
    assert!(e.message.contains("TF400813"), "the server's message: {e}");
    assert_eq!(env.stored(PROD), before);
    assert_no_secret(&readable(&e));
}

#[tokio::test]
async fn a_403_is_forbidden_with_the_servers_message() {
    let env = Env::start().await;
    let body = json!({
        "$id": "1", "innerException": null,
        "message": "Access denied. The user needs Administrator permissions for service connection aws-prod.",
        "typeName": "Microsoft.VisualStudio.Services.Security.AccessCheckException, Microsoft.VisualStudio.Services.WebApi",
        "typeKey": "AccessCheckException", "errorCode": 0, "eventId": 3000
    });
    env.emu.inject(
        Fault::status(Op::Put, 403).body("application/json; charset=utf-8", &body.to_string()),
    );
    let e = put_new_key(&env, &env.client, "Platform", PROD)
        .await
        .unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Forbidden, "{e}");
    assert!(
        e.message
            .contains("needs Administrator permissions for service connection aws-prod"),
        "{e}"
    );
    assert_no_secret(&readable(&e));
}

#[tokio::test]
async fn other_client_errors_are_invalid_and_never_echo_what_was_sent() {
    let env = Env::start().await;
    // A server message that quotes the request (and a key id) is scrubbed and masked.
    let body = json!({"message": format!("Invalid parameter password '{NEW_SECRET}' for {NEW_KEY}"), "typeKey": "ArgumentException"});
    env.emu
        .inject(Fault::status(Op::Put, 400).body("application/json", &body.to_string()));
    let e = put_new_key(&env, &env.client, "Platform", PROD)
        .await
        .unwrap_err();
    assert_error(&e, PortErrorKind::Invalid, &["[redacted]", "AKIA…MPLE"]);
    assert_no_secret(&readable(&e));
}

#[tokio::test]
async fn the_client_never_deletes_or_creates() {
    let env = Env::start().await;
    let (key, secret) = new_key();
    for (project, id) in [("Platform", PROD), ("Web", SHARED)] {
        let e = env
            .client
            .find(&env.org, &by_id(project, id))
            .await
            .unwrap();
        env.client
            .set_credentials(&e.handle, &key, &secret)
            .await
            .unwrap();
        env.client.get(&e.handle).await.unwrap();
    }
    env.client.list_aws_endpoints(&env.org).await.unwrap();
    let methods = env.methods();
    assert!(methods.contains(&"PUT".to_owned()));
    assert!(
        methods.iter().all(|m| m == "GET" || m == "PUT"),
        "{methods:?}"
    );
    let ids: Vec<String> = env.emu.state().organizations["contoso"]
        .endpoints
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![PROD, SHARED, OIDC, GITHUB, LOWER, FAILED]);
}

#[tokio::test]
async fn the_audit_lists_every_aws_connection_once_with_all_its_projects() {
    let mut seed = seed();
    // More projects than one page of `_apis/projects` holds.
    for i in 0..120 {
        seed.organizations[0] = seed.organizations[0].clone().project(&format!("p{i:03}"));
    }
    let env = Env::with(seed, fast()).await;
    let list = env.client.list_aws_endpoints(&env.org).await.unwrap();
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aws-data",
            "aws-failed",
            "aws-oidc",
            "aws-prod",
            "aws-shared"
        ]
    );

    let shared = &list[4];
    assert_eq!(shared.id, SHARED);
    assert_eq!(shared.projects, ["Platform", "Web"]);
    let prod = &list[3];
    assert_eq!(prod.projects, ["Platform"]);
    assert_eq!(prod.key_id.as_ref().map(AccessKeyId::as_str), Some(OLD_KEY));
    assert!(prod.has_assume_role);
    assert!(!prod.uses_oidc);
    assert!(prod.is_ready);
    let oidc = &list[2];
    assert!(oidc.uses_oidc);
    assert!(oidc.has_assume_role);
    assert_eq!(oidc.key_id, None);
    assert!(!oidc.has_username);
    assert_eq!(list[0].kind, "aws");
    assert!(!list[1].is_ready);
    assert!(
        !format!("{list:?}").contains(OLD_KEY),
        "key ids are masked in Debug"
    );

    let project_pages = env
        .emu
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/_apis/projects"))
        .count();
    assert_eq!(project_pages, 2, "continuation token followed");
}

/// What a person does in the web UI, through the REST API with their own request: reads the
/// connection `id` (in Platform), edits it, PUTs it back (confidential fields `null`: kept).
async fn person_edits(env: &Env, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let org = env.emu.org_url("contoso");
    let http = reqwest::Client::new();
    let mut ep = json_of(
        http.get(format!(
            "{org}/Platform/_apis/serviceendpoint/endpoints/{id}?api-version=7.1"
        ))
        .basic_auth("", Some(PAT)),
    )
    .await;
    edit(&mut ep);
    let status = http
        .put(format!(
            "{org}/_apis/serviceendpoint/endpoints/{id}?api-version=7.1"
        ))
        .basic_auth("", Some(PAT))
        .json(&ep)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "the person's edit is stored");
}

/// Options under which a read is stale after 300 ms, and a `Retry-After` of 1 s is waited out
/// in full: a PUT the rate limit holds back goes out after its read is stale.
fn stale_after_a_pause() -> AdoOptions {
    AdoOptions {
        max_retry_after: Duration::from_secs(2),
        max_read_age: Duration::from_millis(300),
        ..fast()
    }
}

/// Reads the prod connection, then updates it from that read while Azure DevOps refuses the PUT
/// once (429, `Retry-After: 1`) and a person, during that pause, makes `edit`. Returns what
/// the update answered and the index in the request log from which the requests came after the
/// person's edit.
async fn update_while_a_person_edits(
    env: &Env,
    edit: impl FnOnce(&mut serde_json::Value),
) -> (PortResult<()>, usize) {
    let client = Arc::new(env.client_with(PAT, stale_after_a_pause()));
    let read = prod_via(env, &client).await.unwrap();
    env.emu.inject(Fault::status(Op::Put, 429).retry_after(1));
    let update = tokio::spawn({
        let client = client.clone();
        async move {
            let (key, secret) = new_key();
            client.set_credentials_from(&read, &key, &secret).await
        }
    });
    let since = Instant::now();
    while !env.emu.requests().iter().any(|r| r.status == 429) {
        assert!(since.elapsed() < Duration::from_secs(10), "no 429");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        client.rate_limit_pause().is_some(),
        "the client holds its requests back"
    );
    person_edits(env, PROD, edit).await;
    let after = env.emu.requests().len();
    (update.await.unwrap(), after)
}

/// Issue #21, item 6: a change a person made while the PUT waited out the rate limit is not
/// reverted. The read the update was made from is stale by the time the PUT may go out, so it is
/// read again and the PUT carries the person's new description with the new key.
#[tokio::test]
async fn a_description_a_person_edits_while_the_put_waits_for_the_rate_limit_survives() {
    let env = Env::start().await;
    env.emu.capture_bodies(true);
    let (result, after) = update_while_a_person_edits(&env, |ep| {
        ep["description"] = json!("Edited by a person during the pause");
    })
    .await;
    result.unwrap();
    let stored = env.stored(PROD);
    assert_eq!(stored["description"], "Edited by a person during the pause");
    assert_eq!(stored["authorization"]["parameters"]["username"], NEW_KEY);
    assert_eq!(
        stored["authorization"]["parameters"]["password"],
        NEW_SECRET
    );
    let log: Vec<(String, u16)> = env.emu.requests()[after..]
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        log,
        [("GET".to_owned(), 200), ("PUT".to_owned(), 200)],
        "read again, then the PUT"
    );
    let last_put = env.emu.captured_bodies().pop().unwrap();
    assert_eq!(
        last_put.body["description"], "Edited by a person during the pause",
        "the PUT sent the person's description"
    );
}

/// The person switched the connection to OIDC during the pause: the update reads it again,
/// sends nothing, and is refused as an OIDC connection is (the connection stays as the person
/// made it).
#[tokio::test]
async fn a_switch_to_oidc_while_the_put_waits_for_the_rate_limit_is_not_overwritten() {
    let env = Env::start().await;
    let (result, after) = update_while_a_person_edits(&env, |ep| {
        let p = &mut ep["authorization"]["parameters"];
        p["useOIDC"] = json!("true");
        p["username"] = json!("");
        p["password"] = json!("");
        p["sessionToken"] = json!("");
    })
    .await;
    let e = result.unwrap_err();
    assert_error(&e, PortErrorKind::Refused, &["aws-prod", "OIDC"]);
    assert_no_secret(&readable(&e));
    let stored = env.stored(PROD);
    assert_eq!(stored["authorization"]["parameters"]["useOIDC"], "true");
    assert_eq!(stored["authorization"]["parameters"]["username"], "");
    assert_eq!(stored["authorization"]["parameters"]["password"], "");
    let methods: Vec<String> = env.emu.requests()[after..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["GET"], "read again; no PUT");
}

/// The person put another key into the connection during the pause: that is not the key the
/// caller decided to replace, so nothing is sent and the update is refused, naming both keys
/// masked.
#[tokio::test]
async fn another_key_put_in_while_the_put_waits_for_the_rate_limit_is_not_overwritten() {
    const PERSONS_KEY: &str = "AKIAJ7PERSONSKEY0001";
    let env = Env::start().await;
    let (result, after) = update_while_a_person_edits(&env, |ep| {
        let p = &mut ep["authorization"]["parameters"];
        p["username"] = json!(PERSONS_KEY);
        p["password"] = json!("personsSECRETvalue");
    })
    .await;
    let e = result.unwrap_err();
    assert_error(
        &e,
        PortErrorKind::Refused,
        &["changed while its update waited", "AKIA…0001", "AKIA…MPLE"],
    );
    assert!(!e.message.contains(PERSONS_KEY), "key ids masked: {e}");
    assert_eq!(
        env.stored(PROD)["authorization"]["parameters"]["username"],
        PERSONS_KEY
    );
    let methods: Vec<String> = env.emu.requests()[after..]
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["GET"], "read again; no PUT");
}

/// A read still young when the PUT may go out is not read again: a short pause costs nothing.
#[tokio::test]
async fn a_put_held_back_less_than_the_read_age_bound_is_sent_from_the_read() {
    let env = Env::start().await;
    let options = AdoOptions {
        max_retry_after: Duration::from_secs(2),
        ..fast()
    };
    let client = env.client_with(PAT, options);
    let read = prod_via(&env, &client).await.unwrap();
    env.emu.inject(Fault::status(Op::Put, 429).retry_after(1));
    let (key, secret) = new_key();
    client
        .set_credentials_from(&read, &key, &secret)
        .await
        .unwrap();
    let log: Vec<(String, u16)> = env
        .emu
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    assert_eq!(
        log,
        [
            ("GET".to_owned(), 200),
            ("PUT".to_owned(), 429),
            ("PUT".to_owned(), 200)
        ]
    );
}

/// An organization of `projects` projects, each with one AWS connection (`aws-NNN`, its key
/// `OLD_KEY`); the last one also shared into the first project.
fn many_projects(projects: usize) -> Seed {
    let mut org = OrgSeed::new("contoso").pat(PAT, Scope::Manage);
    for i in 0..projects {
        org = org.project_with_id(
            &format!("Project-{i:03}"),
            &format!("bbbbbbbb-0000-4000-8000-{i:012}"),
        );
    }
    for i in 0..projects {
        let mut here = vec![format!("Project-{i:03}")];
        if i + 1 == projects {
            here.push("Project-000".to_owned());
        }
        let here: Vec<&str> = here.iter().map(String::as_str).collect();
        let mut ep = aws_endpoint(&format!("aws-{i:03}"), OLD_KEY, OLD_SECRET, &here);
        ep["id"] = json!(format!("cccccccc-0000-4000-8000-{i:012}"));
        org = org.endpoint(ep);
    }
    Seed::new().org(org)
}

/// Issue #21, item 7: the holder scan of 300 projects with Azure DevOps answering each request
/// in 150 ms. One request after the other it would take 301 × 150 ms = 45 s, which a Lambda
/// step's 60 s cannot afford beside its other work; the per-project listings go
/// `SCAN_CONCURRENCY` at a time, which the emulator sees from outside (the most requests it
/// served at once), and the answer is the same as one request at a time would give: every
/// connection once, sorted, a shared one with both its projects in the projects' order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holder_scan_of_300_projects_lists_them_16_at_a_time_through_the_paced_client() {
    const PROJECTS: usize = 300;
    let env = Env::with(many_projects(PROJECTS), fast()).await;
    env.emu.inject(Fault::delay(Op::Any, 150).forever());
    let started = Instant::now();
    let list = env.client.list_aws_endpoints(&env.org).await.unwrap();
    let took = started.elapsed();
    eprintln!("300 projects at 150 ms a request: the scan took {took:?}");

    let names: Vec<String> = list.iter().map(|c| c.name.clone()).collect();
    let expected: Vec<String> = (0..PROJECTS).map(|i| format!("aws-{i:03}")).collect();
    assert_eq!(names, expected, "every connection once, sorted");
    assert_eq!(list[0].projects, ["Project-000"]);
    assert_eq!(
        list[PROJECTS - 1].projects,
        ["Project-000", "Project-299"],
        "a shared connection once, with its projects in the order they were listed"
    );
    let log = env.emu.requests();
    let pages = PROJECTS.div_ceil(100);
    assert_eq!(
        log.len(),
        pages + PROJECTS,
        "pages of 100 projects, then one listing each"
    );
    assert!(log.iter().all(|r| r.status == 200), "{log:?}");

    let peak = env.emu.peak_in_flight();
    assert!(
        peak <= keyrotor_ado::SCAN_CONCURRENCY,
        "never more than SCAN_CONCURRENCY at once: {peak}"
    );
    assert!(
        peak >= keyrotor_ado::SCAN_CONCURRENCY / 2,
        "the listings overlapped (the bound is what makes the scan fast): {peak}"
    );
    // The bound the concurrency gives, with a wide margin for a busy machine: three pages of
    // projects, then 300 / 16 = 19 rounds, at 150 ms each: about 3.3 s (45 s one at a time).
    let rounds = pages + PROJECTS.div_ceil(keyrotor_ado::SCAN_CONCURRENCY);
    let bound = Duration::from_millis(150) * rounds as u32 * 4;
    assert!(took < bound, "the scan took {took:?}, over {bound:?}");
}

/// The Lambda's deadline bounds the scan as a whole, with its listings in flight at once: no
/// listing is started past it, the ones in flight end at it, and the scan fails retryable (the
/// state machine retries the step) instead of running into the function's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_a_concurrent_holder_scan() {
    let options = AdoOptions {
        deadline: Some(SystemTime::now() + Duration::from_secs(1)),
        ..fast()
    };
    let env = Env::with(many_projects(300), options).await;
    env.emu.inject(Fault::delay(Op::Any, 150).forever());
    let started = Instant::now();
    let e = env.client.list_aws_endpoints(&env.org).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Retryable, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it ended at the deadline: {:?}",
        started.elapsed()
    );
    assert!(
        env.emu.requests().len() < 3 + 300,
        "the scan stopped at the deadline"
    );
    assert_no_secret(&readable(&e));
}

#[tokio::test]
async fn no_secret_reaches_debug_output_or_any_error() {
    let env = Env::start().await;
    assert_no_secret(&format!("{:?}", env.client));
    let (key, secret) = new_key();
    let h = env.handle("Platform", PROD);
    let mut errors = Vec::new();
    let faults = [
        Fault::status(Op::Put, 500).forever(),
        Fault::status(Op::Put, 429).retry_after(0).forever(),
        Fault::status(Op::Put, 404),
        Fault::status(Op::Put, 409),
        Fault::status(Op::Put, 401),
        Fault::sign_in_page(Op::Put),
        Fault::status(Op::Put, 200).body("application/json", "{\"id\":\"other\"}"),
    ];
    for fault in faults {
        env.emu.clear_faults();
        env.emu.inject(fault);
        errors.push(
            env.client
                .set_credentials(&h, &key, &secret)
                .await
                .unwrap_err(),
        );
    }
    for client in [
        env.client_with("patWRONGvalue0000secret", fast()),
        env.client_with(READ_PAT, fast()),
    ] {
        env.emu.clear_faults();
        errors.push(client.set_credentials(&h, &key, &secret).await.unwrap_err());
    }
    for e in &errors {
        let text = readable(e);
        assert_no_secret(&text);
        assert!(!text.contains("patWRONGvalue0000secret"), "{text}");
    }
    let kinds: Vec<PortErrorKind> = errors.iter().map(|e| e.kind).collect();
    use PortErrorKind::*;
    assert_eq!(
        kinds,
        [
            Retryable,
            Retryable,
            NotFound,
            Invalid,
            Unauthorized,
            Unauthorized,
            Failed,
            Unauthorized,
            Unauthorized
        ]
    );
}

#[tokio::test]
async fn connection_data_names_whom_the_pat_authenticates_as_and_a_wrong_pat_is_unauthorized() {
    let env = Env::start().await;
    let who = env.client.authenticated_as(&env.org).await.unwrap();
    assert!(who.is_some_and(|w| !w.is_empty()));
    let read = env.client_with(READ_PAT, fast());
    assert!(
        read.authenticated_as(&env.org).await.unwrap().is_some(),
        "no scope is needed to say who one is"
    );
    let wrong = env.client_with("wrongpat0123456789", fast());
    let e = wrong.authenticated_as(&env.org).await.unwrap_err();
    assert_eq!(e.kind, PortErrorKind::Unauthorized, "{e:?}");
    assert_eq!(env.methods(), vec!["GET"; 3], "reads only");
}
