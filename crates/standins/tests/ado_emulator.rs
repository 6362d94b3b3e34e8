//! The ADO emulator follows Microsoft's contract and its quirks: 200 + `null` for an unknown
//! id, `password: null` (a PUT keeps a secret sent `null` or left out, clears it with `""`),
//! a 203 sign-in page (or 401 with `X-TFS-FedAuthRedirect: Suppress`),
//! a required api-version, `{count, value}` lists, server-assigned ids, `projectIds` on delete,
//! faults that expire, and a rate limit that delays and then refuses.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use keyrotor_standins::ado::{
    AdoEmulator, Fault, Op, OrgSeed, RateLimit, Scope, Seed, aws_endpoint,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const PAT: &str = "manage-pat-7f3a9c";
const READ_PAT: &str = "read-pat-51d0e2";
const EP: &str = "11111111-1111-4111-8111-111111111111";
const PLATFORM: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const SECRET: &str = "wJalrXUtnFEMI-secret-one";

fn seed() -> Seed {
    let mut prod = aws_endpoint("aws-prod", "AKIAIOSFODNN7EXAMPLE", SECRET, &["Platform"]);
    prod["id"] = json!(EP);
    prod["customField"] = json!({"kept": [1, 2, 3]});
    prod["authorization"]["parameters"]["sessionToken"] = json!("session-token-secret");
    prod["authorization"]["parameters"]["assumeRoleArn"] =
        json!("arn:aws:iam::123456789012:role/deploy");
    let mut broken = aws_endpoint("aws-broken", "AKIAI44QH8DHBEXAMPLE", "s2", &["Platform"]);
    broken["isReady"] = json!(false);
    let github = json!({
        "name": "github", "type": "GitHub", "url": "https://github.com",
        "authorization": {"scheme": "Token", "parameters": {"accessToken": "gh"}},
        "serviceEndpointProjectReferences": [{"projectReference": {"name": "Platform"}, "name": "github"}]
    });
    Seed::new().org(
        OrgSeed::new("contoso")
            .pat(PAT, Scope::Manage)
            .pat(READ_PAT, Scope::Read)
            .project_with_id("Platform", PLATFORM)
            .project("Web")
            .endpoint(prod)
            .endpoint(broken)
            .endpoint(github)
            .pipeline_permissions(EP, json!({"pipelines": [{"id": 7, "authorized": true}]}))
            .execution_history(
                EP,
                vec![
                    json!({"endpointId": EP, "data": {"id": 1, "result": "succeeded"}}),
                    json!({"endpointId": EP, "data": {"id": 2, "result": "failed"}}),
                ],
            ),
    )
}

/// The list of the Platform project's connections.
const LIST: &str = "Platform/_apis/serviceendpoint/endpoints?api-version=7.1";

/// Where a connection is created.
const CREATE: &str = "_apis/serviceendpoint/endpoints?api-version=7.1";

/// `EP` by id in the Platform project.
fn by_project() -> String {
    format!("Platform/_apis/serviceendpoint/endpoints/{EP}?api-version=7.1")
}

/// `EP` at the organization level, where it is updated, shared and deleted.
fn by_org() -> String {
    format!("_apis/serviceendpoint/endpoints/{EP}?api-version=7.1")
}

struct Api {
    emu: AdoEmulator,
    http: reqwest::Client,
}

impl Api {
    async fn start(seed: Seed) -> Self {
        Self {
            emu: AdoEmulator::start(seed).await.unwrap(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// A request to `{org}/contoso/{path}` with no credentials.
    fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/{path}", self.emu.org_url("contoso")))
    }

    /// The same with the manage PAT.
    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).basic_auth("", Some(PAT))
    }

    /// Sends a request with the manage PAT and no body.
    async fn send(&self, method: Method, path: &str) -> Response {
        self.req(method, path).send().await.unwrap()
    }

    /// Sends a request with the manage PAT and `json` as its body.
    async fn send_json(&self, method: Method, path: &str, json: &Value) -> Response {
        self.req(method, path).json(json).send().await.unwrap()
    }

    /// The status a GET of `path` with the manage PAT answers.
    async fn status_of(&self, path: &str) -> StatusCode {
        self.send(Method::GET, path).await.status()
    }

    /// The JSON a GET of `path` with the manage PAT answers.
    async fn get_json(&self, path: &str) -> Value {
        body(self.send(Method::GET, path).await).await
    }
}

async fn body(resp: reqwest::Response) -> Value {
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn assert_vss_error(v: &Value, type_key: &str) {
    assert_eq!(v["$id"], "1", "{v}");
    assert!(v["innerException"].is_null(), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["typeName"].as_str().unwrap().contains(type_key), "{v}");
    assert_eq!(v["typeKey"], type_key, "{v}");
    assert_eq!(v["errorCode"], 0, "{v}");
    assert_eq!(v["eventId"], 3000, "{v}");
}

/// The `Content-Type` of `resp`.
fn content_type(resp: &Response) -> &str {
    resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
}

/// The answer to `request`, which must reach the emulator.
async fn sent(request: RequestBuilder) -> Response {
    request.send().await.unwrap()
}

/// The error body of `resp`, which must be a VSS error of `type_key` with `status` and a
/// message that contains `says` (`""`: any message).
async fn refusal(resp: Response, status: u16, type_key: &str, says: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{type_key}");
    let err = body(resp).await;
    assert_vss_error(&err, type_key);
    assert!(err["message"].as_str().unwrap().contains(says), "{err}");
    err
}

#[tokio::test]
async fn an_unknown_id_answers_200_with_null() {
    let api = Api::start(seed()).await;
    let resp = api.send(Method::GET, "Platform/_apis/serviceendpoint/endpoints/99999999-9999-4999-8999-999999999999?api-version=7.1").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(content_type(&resp).starts_with("application/json"));
    assert_eq!(resp.text().await.unwrap(), "null");

    // A known id in a project it is not shared into is unknown there too.
    let resp = api
        .send(
            Method::GET,
            &format!("Web/_apis/serviceendpoint/endpoints/{EP}?api-version=7.1"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "null");
}

#[tokio::test]
async fn secrets_come_back_null_and_every_other_field_as_stored() {
    let api = Api::start(seed()).await;
    let got = api.get_json(&by_project()).await;
    let params = &got["authorization"]["parameters"];
    assert!(params["password"].is_null(), "{got}");
    assert!(params["sessionToken"].is_null(), "{got}");
    assert_eq!(params["username"], "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(
        params["assumeRoleArn"],
        "arn:aws:iam::123456789012:role/deploy"
    );
    assert_eq!(got["customField"], json!({"kept": [1, 2, 3]}));
    assert_eq!(
        got["serviceEndpointProjectReferences"][0]["projectReference"]["id"],
        PLATFORM
    );
    assert!(!got.to_string().contains(SECRET));
    // The state read back for assertions keeps the secrets.
    let stored = api.emu.endpoint("contoso", EP).unwrap();
    assert_eq!(stored["authorization"]["parameters"]["password"], SECRET);
    assert_eq!(
        stored["authorization"]["parameters"]["sessionToken"],
        "session-token-secret"
    );
}

#[tokio::test]
async fn a_bad_pat_gets_the_sign_in_page_unless_redirects_are_suppressed() {
    let api = Api::start(seed()).await;
    let path = LIST;
    for request in [
        api.anon(Method::GET, path).basic_auth("", Some("wrong")),
        api.anon(Method::GET, path),
    ] {
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
        let ct = content_type(&resp).to_owned();
        assert!(ct.starts_with("text/html"), "{ct}");
        let html = resp.text().await.unwrap();
        assert!(html.contains("Sign in"), "{html}");
        assert!(serde_json::from_str::<Value>(&html).is_err());
    }
    for request in [
        api.anon(Method::GET, path).basic_auth("", Some("wrong")),
        api.anon(Method::GET, path),
    ] {
        let resp = sent(request.header("X-TFS-FedAuthRedirect", "Suppress")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(
            resp.headers()
                .contains_key(reqwest::header::WWW_AUTHENTICATE)
        );
    }
    // The user name part of Basic auth is ignored, as by the real service.
    let resp = sent(api.anon(Method::GET, path).basic_auth("anyone", Some(PAT))).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_read_only_pat_reads_but_cannot_write() {
    let api = Api::start(seed()).await;
    let resp = sent(api.anon(Method::GET, LIST).basic_auth("", Some(READ_PAT))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let current = api.emu.endpoint("contoso", EP).unwrap();
    let resp = sent(
        api.anon(Method::PUT, &by_org())
            .basic_auth("", Some(READ_PAT))
            .json(&current),
    )
    .await;
    refusal(resp, 401, "UnauthorizedRequestException", "TF400813").await;
}

#[tokio::test]
async fn the_api_version_comes_from_the_query_or_the_accept_header() {
    let api = Api::start(seed()).await;
    let list = "Platform/_apis/serviceendpoint/endpoints";
    let resp = api.send(Method::GET, list).await;
    let err = refusal(resp, 400, "VssVersionNotSpecifiedException", "").await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("No api-version was supplied")
    );

    let resp = api
        .req(Method::GET, list)
        .header("Accept", "application/json;api-version=7.1-preview.4")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(content_type(&resp).contains("api-version=7.1-preview.4"));
    for ok in ["7.1", "7.1-preview", "7.0", "7.2-preview.1"] {
        let status = api.status_of(&format!("{list}?api-version={ok}")).await;
        assert_eq!(status, StatusCode::OK, "{ok}");
    }
    for bad in ["seven", "7.1-beta", "9.0"] {
        let status = api.status_of(&format!("{list}?api-version={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // Pipeline permissions are a preview API: 7.1 alone is refused.
    let perms = format!("Platform/_apis/pipelines/pipelinepermissions/endpoint/{EP}");
    let resp = api
        .send(Method::GET, &format!("{perms}?api-version=7.1"))
        .await;
    refusal(resp, 400, "VssInvalidPreviewVersionException", "").await;
    let status = api
        .status_of(&format!("{perms}?api-version=7.1-preview.1"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lists_answer_count_and_value_and_honour_their_filters() {
    let api = Api::start(seed()).await;
    let list = |q: &str| {
        api.req(
            Method::GET,
            &format!("Platform/_apis/serviceendpoint/endpoints?api-version=7.1{q}"),
        )
        .send()
    };
    let names = |v: &Value| -> Vec<String> {
        assert_eq!(
            v["count"].as_u64().unwrap() as usize,
            v["value"].as_array().unwrap().len()
        );
        let mut n: Vec<String> = v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let cases = [
        ("", &["aws-prod", "github"][..]),
        ("&includeFailed=true", &["aws-broken", "aws-prod", "github"]),
        ("&endpointNames=AWS-PROD,github", &["aws-prod", "github"]),
        ("&type=aws", &["aws-prod"]),
        (&format!("&endpointIds={EP}"), &["aws-prod"]),
        ("&endpointNames=nothing", &[]),
    ];
    for (query, expected) in cases {
        assert_eq!(
            names(&body(list(query).await.unwrap()).await),
            expected,
            "{query}"
        );
    }
    // Routes are case-insensitive and a project can be named by id.
    let resp = api
        .send(
            Method::GET,
            &format!("{PLATFORM}/_APIS/ServiceEndpoint/Endpoints?API-VERSION=7.1"),
        )
        .await;
    assert_eq!(names(&body(resp).await), ["aws-prod", "github"]);
    // An unknown project is TF200016.
    let resp = api
        .send(
            Method::GET,
            "Nope/_apis/serviceendpoint/endpoints?api-version=7.1",
        )
        .await;
    refusal(
        resp,
        404,
        "ProjectDoesNotExistWithNameException",
        "TF200016",
    )
    .await;
}

#[tokio::test]
async fn create_assigns_the_id_and_refuses_a_duplicate_name() {
    let api = Api::start(seed()).await;
    let mut new = aws_endpoint("aws-new", "AKIAJ3EXAMPLE0000001", "new-secret", &["Web"]);
    new["id"] = json!(EP);
    let resp = api.send_json(Method::POST, CREATE, &new).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let created = body(resp).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_ne!(id, EP, "an id in the body is ignored");
    assert_eq!(id.len(), 36);
    assert!(created["authorization"]["parameters"]["password"].is_null());
    assert_eq!(
        api.emu.endpoint("contoso", &id).unwrap()["authorization"]["parameters"]["password"],
        "new-secret"
    );
    assert_eq!(api.emu.endpoint("contoso", EP).unwrap()["name"], "aws-prod");

    let dup = aws_endpoint("AWS-PROD", "AKIAJ3EXAMPLE0000001", "x", &["Platform"]);
    let resp = api.send_json(Method::POST, CREATE, &dup).await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
    assert_vss_error(&body(resp).await, "DuplicateServiceConnectionException");
}

#[tokio::test]
async fn update_keeps_the_id_and_a_null_secret_keeps_the_stored_one() {
    let api = Api::start(seed()).await;
    let url = by_project();
    let mut got = api.get_json(&url).await;
    got["description"] = json!("changed");
    got["authorization"]["parameters"]["password"] = json!("rotated-secret");
    let resp = api.send_json(Method::PUT, &by_org(), &got).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let answered = body(resp).await;
    assert_eq!(answered["id"], EP);
    assert!(answered["authorization"]["parameters"]["password"].is_null());
    let stored = api.emu.endpoint("contoso", EP).unwrap();
    assert_eq!(stored["description"], "changed");
    assert_eq!(
        stored["authorization"]["parameters"]["password"],
        "rotated-secret"
    );
    assert_eq!(
        stored["authorization"]["parameters"]["sessionToken"], "session-token-secret",
        "a null sessionToken keeps the stored one"
    );
    // A body naming another id is refused; an unknown id is 404.
    got["id"] = json!("22222222-2222-4222-8222-222222222222");
    let resp = api.send_json(Method::PUT, &by_org(), &got).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api
        .send_json(
            Method::PUT,
            "_apis/serviceendpoint/endpoints/22222222-2222-4222-8222-222222222222?api-version=7.1",
            &got,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Pipeline permissions are keyed by id and survive the update.
    let perms = api
        .get_json(&format!(
            "Platform/_apis/pipelines/pipelinepermissions/endpoint/{EP}?api-version=7.1-preview.1"
        ))
        .await;
    assert_eq!(perms["pipelines"][0]["id"], 7);
    assert_eq!(perms["resource"]["id"], EP);
}

#[tokio::test]
async fn a_secret_is_kept_by_null_or_absence_cleared_by_empty_and_replaced_by_a_value() {
    let api = Api::start(seed()).await;
    let url = by_project();
    let got = api.get_json(&url).await;
    // PUTs the object as read, with `sessionToken` set to `token` (`None`: left out).
    let put = |token: Option<Value>| {
        let mut sent = got.clone();
        let params = sent["authorization"]["parameters"].as_object_mut().unwrap();
        match token {
            Some(t) => params.insert("sessionToken".into(), t),
            None => params.remove("sessionToken"),
        };
        api.req(Method::PUT, &by_org()).json(&sent).send()
    };
    let stored = |field: &str| {
        api.emu.endpoint("contoso", EP).unwrap()["authorization"]["parameters"][field].clone()
    };
    let cases = [
        (
            Some(Value::Null),
            json!("session-token-secret"),
            "null keeps",
        ),
        (None, json!("session-token-secret"), "absence keeps"),
        (Some(json!("")), json!(""), "the empty string clears"),
        (Some(Value::Null), json!(""), "null keeps the cleared value"),
        (
            Some(json!("session-two")),
            json!("session-two"),
            "a value replaces",
        ),
        (Some(json!("")), json!(""), "the empty string clears again"),
    ];
    for (sent, expected, what) in cases {
        let resp = put(sent).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{what}");
        let answered = body(resp).await;
        assert_eq!(stored("sessionToken"), expected, "{what}");
        // Stored or cleared, a confidential field is answered null, by the PUT and a GET.
        assert!(
            answered["authorization"]["parameters"]["sessionToken"].is_null(),
            "{what}: {answered}"
        );
        let read = api.get_json(&url).await;
        assert!(
            read["authorization"]["parameters"]["sessionToken"].is_null(),
            "{what}: {read}"
        );
        // The password went back null every time: still the seeded one.
        assert_eq!(stored("password"), SECRET, "{what}");
        assert_eq!(
            stored("assumeRoleArn"),
            "arn:aws:iam::123456789012:role/deploy",
            "{what}"
        );
    }
}

#[tokio::test]
async fn delete_needs_project_ids_and_takes_the_permissions_with_it() {
    let api = Api::start(seed()).await;
    let path = by_org();
    let resp = api.send(Method::DELETE, &path).await;
    refusal(resp, 400, "ArgumentNullException", "").await;
    assert!(api.emu.endpoint("contoso", EP).is_some());

    let resp = api
        .send(Method::DELETE, &format!("{path}&projectIds={PLATFORM}"))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(api.emu.endpoint("contoso", EP).is_none());
    assert!(
        !api.emu.state().organizations["contoso"]
            .pipeline_permissions
            .contains_key(EP)
    );
    let resp = api.send(Method::GET, &by_project()).await;
    assert_eq!(resp.text().await.unwrap(), "null");
}

#[tokio::test]
async fn sharing_adds_a_project_under_its_own_name() {
    let api = Api::start(seed()).await;
    let web = api.emu.state().organizations["contoso"].projects[1].clone();
    let resp = api
        .send_json(
            Method::PATCH,
            &by_org(),
            &json!([{"projectReference": {"id": web.id, "name": "Web"}, "name": "aws-prod-web"}]),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let found = api
        .get_json("Web/_apis/serviceendpoint/endpoints?endpointNames=aws-prod-web&api-version=7.1")
        .await;
    assert_eq!(found["count"], 1);
    assert_eq!(found["value"][0]["id"], EP);
    assert_eq!(found["value"][0]["isShared"], true);
}

#[tokio::test]
async fn history_and_projects_answer_lists() {
    let mut seed = seed();
    for i in 0..5 {
        seed.organizations[0] = seed.organizations[0].clone().project(&format!("extra-{i}"));
    }
    let api = Api::start(seed).await;
    let h = api
        .get_json(&format!(
            "Platform/_apis/serviceendpoint/{EP}/executionhistory?api-version=7.1&top=1"
        ))
        .await;
    assert_eq!(h["count"], 1);
    assert_eq!(h["value"][0]["data"]["result"], "succeeded");

    // Seven projects, three per page, joined by continuation tokens.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..5 {
        let q = token
            .as_ref()
            .map(|t| format!("&continuationToken={t}"))
            .unwrap_or_default();
        let resp = api
            .send(
                Method::GET,
                &format!("_apis/projects?api-version=7.1&$top=3{q}"),
            )
            .await;
        token = resp
            .headers()
            .get("x-ms-continuationtoken")
            .map(|v| v.to_str().unwrap().to_owned());
        let page = body(resp).await;
        for p in page["value"].as_array().unwrap() {
            assert_eq!(p["state"], "wellFormed");
            names.push(p["name"].as_str().unwrap().to_owned());
        }
        if token.is_none() {
            break;
        }
    }
    assert!(token.is_none());
    assert_eq!(names.len(), 7);
    assert_eq!(names[0], "Platform");
}

#[tokio::test]
async fn faults_hit_the_named_operation_then_expire() {
    let api = Api::start(seed()).await;
    api.emu
        .inject(Fault::status(Op::Get, 503).times(2).retry_after(3));
    let url = by_project();
    // Another operation is not hit.
    let resp = api.send(Method::GET, LIST).await;
    assert_eq!(resp.status(), StatusCode::OK);
    for _ in 0..2 {
        let resp = api.send(Method::GET, &url).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_vss_error(&body(resp).await, "VssServiceException");
    }
    let resp = api.send(Method::GET, &url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(api.emu.faults().is_empty());

    // A custom body, and the sign-in page.
    api.emu
        .inject(Fault::status(Op::Put, 403).body("application/json", r#"{"message":"nope"}"#));
    api.emu.inject(Fault::sign_in_page(Op::Any));
    let resp = api.send_json(Method::PUT, &by_org(), &json!({})).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(resp).await["message"], "nope");
    let resp = api.send(Method::GET, &url).await;
    assert_eq!(resp.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    assert!(resp.text().await.unwrap().contains("<html"));

    // A delay alone answers normally, late.
    api.emu.inject(Fault::delay(Op::Get, 150));
    let started = std::time::Instant::now();
    let resp = api.send(Method::GET, &url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));

    // A fault that never expires.
    api.emu.inject(Fault::status(Op::Projects, 500).forever());
    for _ in 0..3 {
        let resp = api
            .send(Method::GET, "_apis/projects?api-version=7.1")
            .await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(api.emu.faults().len(), 1);
}

#[tokio::test]
async fn the_rate_limit_delays_then_refuses_with_429_and_its_headers() {
    let limit = RateLimit {
        limit: 3,
        window_seconds: 300,
        cost_per_request: 1,
        block_at: Some(5),
        delay_ms: 20,
    };
    let api = Api::start(seed().rate_limit(limit)).await;
    let url = LIST;
    for _ in 0..3 {
        let resp = api.send(Method::GET, url).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(!resp.headers().contains_key("x-ratelimit-delay"));
    }
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    for _ in 0..2 {
        let resp = api.send(Method::GET, url).await;
        assert_eq!(resp.status(), StatusCode::OK, "delayed, not refused");
        assert_eq!(resp.headers()["x-ratelimit-delay"], "0.020");
        assert_eq!(resp.headers()["x-ratelimit-resource"], "Core");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
        // Microsoft's definition: when usage would be back at zero if the identity stopped
        // now, that is a whole window after this (the newest) request.
        let reset: u64 = resp.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = epoch();
        assert!(reset >= now + 299 && reset <= now + 301, "{reset} vs {now}");
    }
    let resp = api.send(Method::GET, url).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = resp.headers().clone();
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_eq!(h["x-ratelimit-resource"], "Core");
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    let now = epoch();
    assert!(reset >= now + 299 && reset <= now + 301, "{reset} vs {now}");
    refusal(resp, 429, "RequestBlockedException", "TF400733").await;
    // The log tells delays and refusals apart, with the Retry-After and the arrival times.
    let log = api.emu.requests();
    let delayed: Vec<bool> = log.iter().map(|r| r.delayed).collect();
    assert_eq!(delayed, [false, false, false, true, true, false]);
    assert_eq!(log[5].retry_after, Some(retry_after));
    assert!(log[..5].iter().all(|r| r.retry_after.is_none()));
    assert!(log.windows(2).all(|w| w[0].received_us <= w[1].received_us));
    // Limits count per identity.
    let resp = sent(api.anon(Method::GET, url).basic_auth("", Some(READ_PAT))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("x-ratelimit-delay"));
}

#[tokio::test]
async fn the_control_api_reads_state_and_log_injects_faults_and_resets() {
    let api = Api::start(seed()).await;
    let control = |m: Method, p: &str| {
        api.http
            .request(m, format!("{}/_emulator/{p}", api.emu.base_url()))
    };
    let resp = api
        .send(
            Method::GET,
            "Platform/_apis/serviceendpoint/endpoints?api-version=7.1&endpointNames=aws-prod",
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let log: Value = body(control(Method::GET, "requests").send().await.unwrap()).await;
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["method"], "GET");
    assert_eq!(
        log[0]["path"],
        "/contoso/Platform/_apis/serviceendpoint/endpoints"
    );
    assert_eq!(log[0]["query"], "api-version=7.1&endpointNames=aws-prod");
    assert_eq!(log[0]["status"], 200);
    assert!(!log.to_string().contains(PAT), "no auth header is logged");

    let state = body(control(Method::GET, "state").send().await.unwrap()).await;
    assert!(
        state.to_string().contains(SECRET),
        "the state keeps passwords"
    );
    assert!(!state.to_string().contains(PAT), "but not the PATs");

    let resp = control(Method::POST, "faults")
        .json(&json!({"op": "list", "status": 502, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = api.send(Method::GET, LIST).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);

    api.send(
        Method::DELETE,
        &format!("_apis/serviceendpoint/endpoints/{EP}?api-version=7.1&projectIds={PLATFORM}"),
    )
    .await;
    assert!(api.emu.endpoint("contoso", EP).is_none());
    let resp = control(Method::POST, "reset").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(api.emu.endpoint("contoso", EP).is_some());
    assert!(api.emu.requests().is_empty());
}

#[tokio::test]
async fn captured_bodies_are_off_until_asked_for() {
    let api = Api::start(seed()).await;
    let current = api.emu.endpoint("contoso", EP).unwrap();
    let put = by_org();
    api.send_json(Method::PUT, &put, &current).await;
    assert!(api.emu.captured_bodies().is_empty());
    api.emu.capture_bodies(true);
    api.send_json(Method::PUT, &put, &current).await;
    let captured = api.emu.captured_bodies();
    assert_eq!(captured.len(), 1);
    assert_eq!(captured[0].op, Op::Put);
    assert_eq!(captured[0].body, current);
}

#[tokio::test]
async fn a_seed_naming_an_unknown_project_is_refused() {
    let bad = Seed::new().org(
        OrgSeed::new("contoso")
            .project("Platform")
            .endpoint(aws_endpoint(
                "x",
                "AKIAIOSFODNN7EXAMPLE",
                "s",
                &["Elsewhere"],
            )),
    );
    let err = AdoEmulator::start(bad).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("names no seeded project"),
        "{err:#}"
    );
    let json = "\u{feff}{\"organizations\":[{\"name\":\"a\",\"pats\":[{\"token\":\"t\"}]}]}";
    let seed = Seed::from_json(json).unwrap();
    assert_eq!(seed.organizations[0].pats[0].scope, Scope::Manage);
    assert!(
        Seed::from_json("{\"organisations\":[]}").is_err(),
        "unknown fields are refused"
    );
}

/// The emulator binary on a seed file in a fresh directory named for `tag`, with `args` before
/// `--seed` and `stdin` as given: the child, the base URL it printed first, and the directory.
async fn start_binary(tag: &str, args: &[&str], stdin: Stdio) -> (Child, String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ado-emulator-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed_file = dir.join("seed.json");
    std::fs::write(&seed_file, serde_json::to_string(&seed()).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ado-emulator"))
        .args(args)
        .arg("--seed")
        .arg(&seed_file)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    (child, line.trim().to_owned(), dir)
}

/// A GET of `url` with the manage PAT, outside any `Api`.
async fn get_with_pat(url: &str) -> Response {
    reqwest::Client::new()
        .get(url)
        .basic_auth("", Some(PAT))
        .send()
        .await
        .unwrap()
}

/// How `child` exited, waited for up to 20 s; `why` says what should have stopped it.
async fn exit_status(mut child: Child, why: &str) -> ExitStatus {
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .unwrap_or_else(|_| panic!("the emulator did not stop {why}"))
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn the_binary_prints_its_url_and_stops_when_stdin_closes() {
    let (mut child, base, dir) = start_binary("test", &[], Stdio::piped()).await;
    assert!(base.starts_with("http://127.0.0.1:"), "{base:?}");
    let resp = get_with_pat(&format!(
        "{base}/contoso/Platform/_apis/serviceendpoint/endpoints/{EP}?api-version=7.1"
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body(resp).await["id"], EP);

    let mut stdin = child.stdin.take().unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let status = exit_status(child, "when its stdin closed").await;
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_stops_on_sigterm_even_when_it_ignores_stdin() {
    let (child, base, dir) = start_binary("term", &["--ignore-stdin"], Stdio::null()).await;
    // Still serving although its stdin was closed from the start.
    let resp = get_with_pat(&format!("{base}/contoso/_apis/projects?api-version=7.1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = exit_status(child, "on SIGTERM").await;
    assert!(status.success(), "a clean exit on SIGTERM: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
