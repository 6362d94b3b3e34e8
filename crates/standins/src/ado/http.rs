//! The HTTP side: routing (case-insensitive, like the real service), faults, authentication,
//! api-version, rate limits, the JSON error shape, and the `/_emulator/` control API.
//!
//! (One file on purpose: it is the route table of the emulated REST API and the quirks of each
//! route, kept side by side so the contract can be read in one place.)

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::faults::{Fault, Op};
use super::handlers;
use super::seed::{Scope, Seed};
use super::{Inner, RequestRecord, Shared};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_emulator/state", get(control_state))
        .route(
            "/_emulator/requests",
            get(control_requests).delete(control_clear_requests),
        )
        .route(
            "/_emulator/faults",
            get(control_faults)
                .post(control_add_fault)
                .delete(control_clear_faults),
        )
        .route(
            "/_emulator/in-flight",
            get(control_in_flight).delete(control_reset_peak),
        )
        .route("/_emulator/reset", post(control_reset))
        .fallback(api)
        .with_state(shared)
}

// ---------------------------------------------------------------- control API

async fn control_state(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(sh.lock().state.clone()).into_response()
}

async fn control_requests(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(sh.lock().log.clone()).into_response()
}

async fn control_clear_requests(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.lock().log.clear();
    StatusCode::NO_CONTENT
}

async fn control_faults(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(sh.lock().faults.clone()).into_response()
}

async fn control_add_fault(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Fault>(&body) {
        Ok(f) => {
            sh.lock().faults.push(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("not a fault: {e}")).into_response(),
    }
}

async fn control_clear_faults(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn control_in_flight(State(sh): State<Arc<Shared>>) -> Response {
    let (now, peak) = sh.in_flight();
    axum::Json(json!({"now": now, "peak": peak})).into_response()
}

async fn control_reset_peak(State(sh): State<Arc<Shared>>) -> StatusCode {
    sh.reset_peak();
    StatusCode::NO_CONTENT
}

async fn control_reset(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let seed = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match std::str::from_utf8(&body)
            .map_err(anyhow::Error::from)
            .and_then(Seed::from_json)
        {
            Ok(s) => Some(s),
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
        }
    };
    match sh.reset(seed.as_ref()) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e:#}")).into_response(),
    }
}

// ---------------------------------------------------------------- the API

/// Where a request goes.
pub(crate) struct Route {
    pub(crate) op: Op,
    pub(crate) path: String,
    pub(crate) org: String,
    pub(crate) project: Option<String>,
    pub(crate) id: Option<String>,
}

/// Query parameters, names lower-cased (the service binds them case-insensitively).
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn from_uri(uri: &Uri) -> Self {
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map(|q| q.0)
            .unwrap_or_default();
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A comma-separated list (empty when absent).
    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// Every API request: route, log, and answer.
async fn api(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    let _counted = sh.enter();
    let response = match route(&method, uri.path()) {
        Ok(route) => serve(&sh, &uri, &headers, &body, &route).await,
        Err(e) => e.into_response(),
    };
    let h = response.headers();
    sh.lock().log.push(RequestRecord {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        status: response.status().as_u16(),
        received_us: u64::try_from(received.duration_since(sh.started).as_micros())
            .unwrap_or(u64::MAX),
        retry_after: h
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        delayed: h.contains_key("x-ratelimit-delay"),
    });
    response
}

async fn serve(
    sh: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    route: &Route,
) -> Response {
    // Faults come first: a gateway failing does not look at who is asking.
    let fault = take_fault(&mut sh.lock(), route);
    if let Some(f) = fault {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if let Some(status) = f.status {
            return fault_response(&sh.base_url, &f, status);
        }
    }
    let params = Params::from_uri(uri);
    let (identity, scope) = {
        let inner = sh.lock();
        if inner.state.org(&route.org).is_none() {
            return vss_error(
                StatusCode::NOT_FOUND,
                &format!("The organization '{}' does not exist.", route.org),
                "HostDoesNotExistException",
            );
        }
        match authenticate(&inner, &route.org, headers) {
            Some(who) => who,
            None => return sign_in(&sh.base_url, headers),
        }
    };
    let version = match api_version(route.op, &params, headers) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let throttle = throttle(&mut sh.lock(), &route.org, &identity);
    let rate_headers = match throttle {
        Throttle::None => None,
        Throttle::Delay(delay, hdrs) => {
            tokio::time::sleep(delay).await;
            Some(hdrs)
        }
        Throttle::Block(resp) => return resp,
    };
    let mut resp = if route.op.is_write() && scope == Scope::Read {
        vss_error(
            StatusCode::UNAUTHORIZED,
            &format!("TF400813: The user '{identity}' is not authorized to access this resource."),
            "UnauthorizedRequestException",
        )
    } else {
        let mut inner = sh.lock();
        handlers::handle(&mut inner, &sh.base_url, route, &params, body, &identity)
    };
    if let Some(hdrs) = rate_headers {
        resp.headers_mut().extend(hdrs);
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if is_json
        && let Ok(v) = HeaderValue::from_str(&format!(
            "application/json; charset=utf-8; api-version={version}"
        ))
    {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// Splits and decodes the path, and finds the operation.
fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let lit = |i: usize, word: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word));
    let seg = |i: usize| segs.get(i).cloned();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            &format!("The resource '{path}' does not exist or the API is not supported."),
            "HttpException",
        )
    };
    let wrong_method = || {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("The requested resource does not support http method '{method}'."),
            "HttpException",
        )
    };
    // An operation that answers GET alone.
    let get_only = |op: Op| {
        if *method == Method::GET {
            Ok(op)
        } else {
            Err(wrong_method())
        }
    };
    let Some(org) = seg(0) else {
        return Err(not_found());
    };
    let mut route = Route {
        op: Op::Any,
        path: path.to_owned(),
        org,
        project: None,
        id: None,
    };
    let m = method.clone();
    if lit(1, "_apis") {
        match segs.len() {
            3 if lit(2, "projects") => {
                route.op = get_only(Op::Projects)?;
            }
            3 if lit(2, "connectiondata") => {
                route.op = get_only(Op::ConnectionData)?;
            }
            4 if lit(2, "serviceendpoint") && lit(3, "endpoints") => {
                route.op = if m == Method::POST {
                    Op::Post
                } else {
                    return Err(wrong_method());
                };
            }
            5 if lit(2, "serviceendpoint") && lit(3, "endpoints") => {
                route.id = seg(4);
                route.op = match m {
                    Method::PUT => Op::Put,
                    Method::DELETE => Op::Delete,
                    Method::PATCH => Op::Patch,
                    _ => return Err(wrong_method()),
                };
            }
            _ => return Err(not_found()),
        }
        return Ok(route);
    }
    if !lit(2, "_apis") {
        return Err(not_found());
    }
    route.project = seg(1);
    match segs.len() {
        5 if lit(3, "serviceendpoint") && lit(4, "endpoints") => {
            route.op = get_only(Op::List)?;
        }
        6 if lit(3, "serviceendpoint") && lit(4, "endpoints") => {
            route.id = seg(5);
            route.op = get_only(Op::Get)?;
        }
        6 if lit(3, "serviceendpoint") && lit(5, "executionhistory") => {
            route.id = seg(4);
            route.op = get_only(Op::History)?;
        }
        7 if lit(3, "pipelines") && lit(4, "pipelinepermissions") && lit(5, "endpoint") => {
            route.id = seg(6);
            route.op = match m {
                Method::GET => Op::PermissionsGet,
                Method::PATCH => Op::PermissionsPatch,
                _ => return Err(wrong_method()),
            };
        }
        _ => return Err(not_found()),
    }
    Ok(route)
}

/// Decodes the `%XX` escapes of a path segment; anything else, a stray `%` included, is kept.
fn percent_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = match (first, tail) {
            (b'%', [h, l, ..]) => hex_byte(*h, *l),
            _ => None,
        };
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = &tail[2..];
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte two hex digits spell, if they are hex digits.
fn hex_byte(high: u8, low: u8) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    // Two hex digits make at most 255: the cast cannot truncate.
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

fn take_fault(inner: &mut Inner, route: &Route) -> Option<Fault> {
    let i = inner
        .faults
        .iter()
        .position(|f| f.hits(route.op, &route.org))?;
    let f = inner.faults[i].clone();
    if !f.forever {
        inner.faults[i].times -= 1;
        if inner.faults[i].times == 0 {
            inner.faults.remove(i);
        }
    }
    Some(f)
}

fn fault_response(base: &str, f: &Fault, status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match &f.body {
        Some(body) => {
            let ct = f.content_type.clone().unwrap_or_else(|| {
                if serde_json::from_str::<Value>(body).is_ok() {
                    "application/json; charset=utf-8".into()
                } else {
                    "text/plain; charset=utf-8".into()
                }
            });
            let mut r = (status, body.clone()).into_response();
            if let Ok(v) = HeaderValue::from_str(&ct) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r
        }
        None if status == StatusCode::NON_AUTHORITATIVE_INFORMATION => sign_in_page(base),
        None if status == StatusCode::TOO_MANY_REQUESTS => {
            vss_error(status, TF400733, "RequestBlockedException")
        }
        None if status.is_client_error() || status.is_server_error() => vss_error(
            status,
            &format!("Injected fault: HTTP {}.", status.as_u16()),
            "VssServiceException",
        ),
        None => status.into_response(),
    };
    if status.is_redirection()
        && let Ok(v) = HeaderValue::from_str(&format!("{base}/_signin?realm=dev.azure.com"))
    {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(secs) = f.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The identity and scope of the PAT in `Authorization: Basic base64(user:PAT)`, if the
/// organization accepts it (the user part is ignored, as by the real service).
fn authenticate(inner: &Inner, org: &str, headers: &HeaderMap) -> Option<(String, Scope)> {
    let raw = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = raw.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let token = decoded.split_once(':').map_or(decoded.as_str(), |(_, p)| p);
    let pats = inner.pats.get(&org.to_lowercase())?;
    pats.iter().enumerate().find_map(|(i, p)| {
        (!p.token.is_empty() && p.token == token).then(|| {
            let who = p
                .identity
                .clone()
                .unwrap_or_else(|| format!("user{}@{}.example", i + 1, org.to_lowercase()));
            (who, p.scope)
        })
    })
}

/// How the service answers an unauthenticated request: 401 when the client asked for it with
/// `X-TFS-FedAuthRedirect: Suppress`, else 203 and an HTML sign-in page.
fn sign_in(base: &str, headers: &HeaderMap) -> Response {
    let suppress = headers
        .get("x-tfs-fedauthredirect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("suppress"));
    if !suppress {
        return sign_in_page(base);
    }
    let mut resp = StatusCode::UNAUTHORIZED.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{base}/\"")) {
        h.append(header::WWW_AUTHENTICATE, v);
    }
    h.insert(
        HeaderName::from_static("x-tfs-fedauthrealm"),
        HeaderValue::from_static("https://app.vssps.visualstudio.com/"),
    );
    h.insert(
        HeaderName::from_static("x-tfs-fedauthissuer"),
        HeaderValue::from_static("https://app.vssps.visualstudio.com/"),
    );
    resp
}

fn sign_in_page(base: &str) -> Response {
    let html = SIGN_IN_PAGE.replace("{base}", base);
    let mut resp = (StatusCode::NON_AUTHORITATIVE_INFORMATION, html).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

const SIGN_IN_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en-US">
<head><meta charset="utf-8" /><title>Azure DevOps Services | Sign In</title></head>
<body>
<div class="signin-page">
  <h1>Sign in to Azure DevOps</h1>
  <form id="signin" method="post" action="https://app.vssps.visualstudio.com/_signin?realm={base}&amp;reply_to={base}%2F&amp;redirect=1">
    <p>Azure DevOps needs you to sign in to continue.</p>
    <button type="submit">Sign in</button>
  </form>
</div>
</body>
</html>
"#;

/// The api-version from the query, else from `Accept: application/json;api-version=…`.
fn api_version(op: Op, params: &Params, headers: &HeaderMap) -> Result<String, ApiError> {
    let from_accept = || {
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .find_map(|part| {
                let (k, v) = part.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("api-version")
                    .then(|| v.trim().trim_matches('"').to_owned())
            })
    };
    let Some(version) = params
        .get("api-version")
        .map(str::to_owned)
        .or_else(from_accept)
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "No api-version was supplied for the request. The version must be supplied either as part of the Accept header (e.g. \"application/json; api-version=1.0\") or as a query parameter (e.g. \"?api-version=1.0\").",
            "VssVersionNotSpecifiedException",
        ));
    };
    let (number, preview) = match version.split_once('-') {
        Some((n, p)) => (n, Some(p)),
        None => (version.as_str(), None),
    };
    let parsed = number
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let preview_ok = preview.is_none_or(|p| {
        let p = p.to_ascii_lowercase();
        p == "preview"
            || p.strip_prefix("preview.")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    });
    let Some((major, minor)) = parsed.filter(|_| preview_ok) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!(
                "The api-version '{version}' is not in a valid format. Use major.minor, optionally followed by -preview or -preview.N."
            ),
            "VssInvalidApiVersionException",
        ));
    };
    if (major, minor) > (7, 2) || major < 1 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!(
                "The requested REST API version of {version} is out of range for this server. The latest REST API version this server supports is 7.2."
            ),
            "VssVersionOutOfRangeException",
        ));
    }
    if matches!(
        op,
        Op::PermissionsGet | Op::PermissionsPatch | Op::ConnectionData
    ) && preview.is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            &format!(
                "The requested version \"{version}\" of the resource is under preview. The -preview flag must be supplied in the api-version for such requests. For example: \"{major}.{minor}-preview\""
            ),
            "VssInvalidPreviewVersionException",
        ));
    }
    Ok(version)
}

enum Throttle {
    None,
    Delay(Duration, HeaderMap),
    Block(Response),
}

const TF400733: &str = "TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource 'Core' in namespace 'User'. For more information on why your request was blocked, see the topic \"Rate limits\" on the Microsoft Web site (https://go.microsoft.com/fwlink/?LinkId=823950).";

/// Counts the request against the identity's sliding window.
fn throttle(inner: &mut Inner, org: &str, identity: &str) -> Throttle {
    let Some(rl) = inner.rate_limit.clone() else {
        return Throttle::None;
    };
    let now = Instant::now();
    let window = Duration::from_secs(rl.window_seconds);
    let q = inner
        .usage
        .entry((org.to_lowercase(), identity.to_owned()))
        .or_default();
    while q
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) >= window)
    {
        q.pop_front();
    }
    let used: u32 = q.iter().map(|(_, c)| *c).sum();
    // `X-RateLimit-Reset`: when usage would be back at zero if the identity stopped now, that
    // is when the newest counted request leaves the window (Microsoft's definition).
    let headers = |newest: Option<Instant>| {
        let zero_in = newest.map_or(Duration::ZERO, |t| {
            window.saturating_sub(now.duration_since(t))
        });
        let reset_epoch = SystemTime::now()
            .checked_add(zero_in)
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-resource", HeaderValue::from_static("Core"));
        h.insert("x-ratelimit-limit", HeaderValue::from(rl.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
        h.insert("x-ratelimit-reset", HeaderValue::from(reset_epoch));
        h
    };
    if used >= rl.block_threshold() {
        let mut resp = vss_error(
            StatusCode::TOO_MANY_REQUESTS,
            TF400733,
            "RequestBlockedException",
        );
        resp.headers_mut()
            .extend(headers(q.back().map(|(t, _)| *t)));
        // `Retry-After`: when the oldest counted request leaves the window, which is when a
        // request is accepted again (delayed, at first).
        let frees_in = q.front().map_or(window, |(t, _)| {
            window.saturating_sub(now.duration_since(*t))
        });
        let secs = frees_in.as_secs() + u64::from(frees_in.subsec_nanos() > 0);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return Throttle::Block(resp);
    }
    q.push_back((now, rl.cost_per_request));
    let used = used.saturating_add(rl.cost_per_request);
    if used <= rl.limit {
        return Throttle::None;
    }
    let delay = Duration::from_millis(rl.delay_ms);
    let mut h = headers(Some(now));
    if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", delay.as_secs_f64())) {
        h.insert("x-ratelimit-delay", v);
    }
    Throttle::Delay(delay, h)
}

// ---------------------------------------------------------------- answers

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// The service's JSON error shape.
pub(crate) fn vss_error(status: StatusCode, message: &str, type_key: &str) -> Response {
    let namespace = match type_key {
        "DuplicateServiceConnectionException"
        | "ServiceEndpointNotFoundException"
        | "ServiceEndpointException" => {
            "Microsoft.VisualStudio.Services.ServiceEndpoints.WebApi.{}, Microsoft.VisualStudio.Services.ServiceEndpoints.WebApi"
        }
        "ArgumentException" | "ArgumentNullException" => "System.{}, mscorlib",
        "ProjectDoesNotExistWithNameException" => {
            "Microsoft.TeamFoundation.Core.WebApi.{}, Microsoft.TeamFoundation.Core.WebApi"
        }
        "UnauthorizedRequestException"
        | "RequestBlockedException"
        | "HostDoesNotExistException" => {
            "Microsoft.TeamFoundation.Framework.Server.{}, Microsoft.TeamFoundation.Framework.Server"
        }
        _ => "Microsoft.VisualStudio.Services.WebApi.{}, Microsoft.VisualStudio.Services.WebApi",
    };
    json(
        status,
        &json!({
            "$id": "1",
            "innerException": null,
            "message": message,
            "typeName": namespace.replace("{}", type_key),
            "typeKey": type_key,
            "errorCode": 0,
            "eventId": 3000
        }),
    )
}

/// An error the service reports in its JSON shape.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    type_key: &'static str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: &str, type_key: &'static str) -> Self {
        Self {
            status,
            message: message.to_owned(),
            type_key,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        vss_error(self.status, &self.message, self.type_key)
    }
}

/// An empty answer.
pub(crate) fn empty(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}
