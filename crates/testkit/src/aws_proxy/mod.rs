//! A fault-injecting HTTP proxy in front of moto: point `AWS_ENDPOINT_URL` at it, and it forwards
//! every request to moto, except those of the AWS operations it was told to fail, which get the
//! answer the real service gives (throttling, 500, 503), a slow answer, or no answer at all.
//!
//! (One file on purpose: the proxy's request parsing, its faults and its strict mode act on
//! the same request in one pass, and a fault's effect depends on which of them saw it first.)
//!
//! [`AwsProxy::start`] binds `127.0.0.1:0`. The operation of a request is read from
//! `X-Amz-Target` (JSON protocols: `secretsmanager.PutSecretValue`, `AmazonSSM.GetParameter`) or
//! from the form body's `Action=` (query protocols: IAM `CreateAccessKey`, STS
//! `GetCallerIdentity`). [`AwsProxy::inject`] adds a [`Fault`]: an operation, a [`FaultKind`],
//! how many matching requests to let through first ([`Fault::after`]) and how many to hit
//! ([`Fault::times`], [`Fault::forever`]). The first fault that applies to a request wins; every
//! fault counts every request of its operation.
//!
//! The error bodies have the real services' shapes, so the SDK classifies them as it would in
//! production:
//!
//! | kind | query protocols (IAM, STS) | JSON protocols (Secrets Manager, SSM) |
//! |---|---|---|
//! | [`FaultKind::Throttle`] | 400 `text/xml` `<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>…` | 400 `application/x-amz-json-1.1` `{"__type":"ThrottlingException",…}` |
//! | [`FaultKind::InternalError`] | 500 `…<Type>Receiver</Type><Code>InternalFailure</Code>…` | 500 `{"__type":"InternalFailure",…}` |
//! | [`FaultKind::Unavailable`] | 503 `…<Type>Receiver</Type><Code>ServiceUnavailable</Code>…` | 503 `{"__type":"ServiceUnavailable",…}` |
//!
//! [`FaultKind::Slow`] waits, then forwards; [`FaultKind::Drop`] reads the request and closes the
//! connection without forwarding or answering; [`FaultKind::ResponseLost`] forwards the request
//! (moto acts on it) and then closes the connection without answering.
//!
//! Every request is recorded ([`Seen`]: operation, the SDK's `amz-sdk-invocation-id` and attempt
//! number, the fault applied, the strict-mode rule that refused it), so tests can count operations ([`AwsProxy::counts`]) and retries
//! per SDK call ([`AwsProxy::max_attempts_per_call`]).
//!
//! Other processes drive the same thing over HTTP under `/_proxy/`:
//!
//! | request | does |
//! |---|---|
//! | `GET /_proxy/faults` | the faults ([`Fault`] JSON) |
//! | `POST /_proxy/faults` | adds one (a [`Fault`], or an array of them) |
//! | `DELETE /_proxy/faults` | removes every fault |
//! | `GET /_proxy/seen` | the requests seen ([`Seen`] JSON), oldest first |
//! | `DELETE /_proxy/seen` | forgets them |
//! | `GET /_proxy/strict` | the strict mode's options ([`StrictOptions`] JSON), `null` when off |
//! | `POST /_proxy/strict` | switches strict mode on with these options (`{}`: the defaults) |
//! | `DELETE /_proxy/strict` | switches strict mode off |
//!
//! # Strict mode
//!
//! moto is kinder than AWS in ways that hide bugs. In strict mode (off by default;
//! [`AwsProxy::strict`], [`AwsProxy::set_strict`], `POST /_proxy/strict`) the proxy answers as
//! AWS does where moto does not; each rule can be switched off in [`StrictOptions`]:
//!
//! | rule ([`StrictRule`]) | request | moto | strict mode (as AWS) |
//! |---|---|---|---|
//! | [`NewKey`](StrictRule::NewKey) | STS, signed with a key IAM `CreateAccessKey` returned less than [`new_key_delay`](StrictOptions::new_key_delay) ago | accepts it | 403 `InvalidClientTokenId` "The security token included in the request is invalid." |
//! | [`InactiveKey`](StrictRule::InactiveKey), [`DeletedKey`](StrictRule::DeletedKey) | STS, signed with a key `UpdateAccessKey` set `Inactive` (and not `Active` again) or `DeleteAccessKey` deleted | accepts it (a deleted key as a default identity) | 403 `InvalidClientTokenId` |
//! | [`VersionExists`](StrictRule::VersionExists) | `PutSecretValue` whose `ClientRequestToken` names a version of the secret with another value | overwrites the version's value when it is `AWSPENDING` (refuses otherwise, in its own words) | 400 `ResourceExistsException` "You can't modify an existing version, you can only create a new version." |
//! | [`RemoveFromVersion`](StrictRule::RemoveFromVersion) | `UpdateSecretVersionStage` moving a label another version holds without `RemoveFromVersionId`, or with one that does not hold the label | refuses only for `AWSCURRENT`; any other label ends up on two versions | 400 `InvalidParameterException` "The parameter RemoveFromVersionId can't be empty. Staging label … is currently attached to version …, so you must explicitly reference that version in RemoveFromVersionId." |
//!
//! The key rules apply to STS requests only (IAM, Secrets Manager and SSM calls signed with any
//! key are forwarded) and only to keys whose creation, deactivation or deletion went through the
//! proxy and succeeded: the proxy learns them by watching IAM's answers (always, strict or not).
//! The Secrets Manager rules ask moto who holds what (`GetSecretValue` of the token's version,
//! `DescribeSecret`) with the incoming request's headers; when moto cannot say, the request is
//! forwarded untouched. The error message for a `RemoveFromVersionId` that names the wrong
//! version is the proxy's wording (the code, `InvalidParameterException`, is AWS's). Secret
//! values are only compared in memory, never kept or logged.
//!
//! A fault wins over strict mode: a request that gets a fault is not checked. A refusal is
//! recorded in [`Seen::strict`] ([`AwsProxy::refused`] counts them).
//!
//! The proxy stops when the [`AwsProxy`] is dropped.
//!
//! (The proxy's HTTP plumbing and fault injection stay together; strict mode is in `strict.rs`.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

mod strict;

pub use strict::{StrictOptions, StrictRule};

/// What the proxy does to a request instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// HTTP 400 `Throttling` (query protocols) / `ThrottlingException` (JSON protocols).
    Throttle,
    /// HTTP 500 `InternalFailure`.
    InternalError,
    /// HTTP 503 `ServiceUnavailable`.
    Unavailable,
    /// Waits this many milliseconds, then forwards.
    Slow {
        /// The delay.
        ms: u64,
    },
    /// Closes the connection without forwarding or answering.
    Drop,
    /// Forwards (moto acts on the request), then closes the connection without answering.
    ResponseLost,
}

impl FaultKind {
    /// A short name: `throttle`, `500`, `503`, `slow`, `drop`, `response-lost`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::InternalError => "500",
            Self::Unavailable => "503",
            Self::Slow { .. } => "slow",
            Self::Drop => "drop",
            Self::ResponseLost => "response-lost",
        }
    }
}

/// A fault for one AWS operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// The operation, as AWS names it (`CreateAccessKey`, `PutSecretValue`, …).
    pub op: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many requests of the operation pass untouched before the fault starts.
    #[serde(default)]
    pub skip: u32,
    /// How many requests it hits (after `skip`); `None` (JSON `null`): every one, forever.
    #[serde(default = "one")]
    pub times: Option<u32>,
    /// Requests of the operation this fault has counted (passed or hit).
    #[serde(default)]
    pub seen: u32,
}

fn one() -> Option<u32> {
    Some(1)
}

impl Fault {
    /// `kind` on the next request of `op`.
    pub fn new(op: &str, kind: FaultKind) -> Self {
        Self {
            op: op.to_owned(),
            kind,
            skip: 0,
            times: Some(1),
            seen: 0,
        }
    }

    /// Throttles the next request of `op`.
    pub fn throttle(op: &str) -> Self {
        Self::new(op, FaultKind::Throttle)
    }

    /// Hits `n` requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Hits every request from now on.
    pub fn forever(mut self) -> Self {
        self.times = None;
        self
    }

    /// Lets the first `n` requests of the operation through untouched first.
    pub fn after(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Counts one request of its operation; whether the fault applies to it.
    fn count(&mut self) -> bool {
        self.seen += 1;
        if self.seen <= self.skip {
            return false;
        }
        self.times.is_none_or(|t| self.seen - self.skip <= t)
    }

    /// Whether it will never hit again.
    fn spent(&self) -> bool {
        self.times.is_some_and(|t| self.seen >= self.skip + t)
    }
}

/// One request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The operation (`CreateAccessKey`, …), or `?` when it could not be told.
    pub op: String,
    /// The service, from `X-Amz-Target` or the signature's credential scope (`iam`, `sts`,
    /// `secretsmanager`, `ssm`), if known.
    pub service: Option<String>,
    /// `amz-sdk-invocation-id`: the same for every attempt of one SDK call.
    pub invocation: Option<String>,
    /// The attempt number from `amz-sdk-request: attempt=N; max=M`.
    pub attempt: Option<u32>,
    /// The fault applied, if any.
    pub fault: Option<FaultKind>,
    /// The strict-mode rule that refused the request, if any (it was not forwarded).
    #[serde(default)]
    pub strict: Option<StrictRule>,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    seen: Vec<Seen>,
    /// Bumped whenever `seen` is cleared, so a [`Slot`] from before points nowhere.
    generation: u64,
    /// `Some` when strict mode is on.
    strict: Option<StrictOptions>,
    /// What the proxy saw IAM do to access keys.
    keys: strict::KeyBook,
}

/// Where a request's [`Seen`] is, to complete it once its answer is known.
#[derive(Clone, Copy)]
struct Slot {
    generation: u64,
    index: usize,
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    state: Mutex<State>,
    /// The number of requests seen, for waiting without sleeping.
    count: watch::Sender<usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the request and decides its fault.
    fn decide(&self, seen: Seen) -> (Option<FaultKind>, Slot) {
        let mut st = self.lock();
        let mut chosen = None;
        for f in st.faults.iter_mut().filter(|f| f.op == seen.op) {
            if f.count() && chosen.is_none() {
                chosen = Some(f.kind);
            }
        }
        st.faults.retain(|f| !f.spent());
        st.seen.push(Seen {
            fault: chosen,
            ..seen
        });
        let n = st.seen.len();
        let slot = Slot {
            generation: st.generation,
            index: n - 1,
        };
        drop(st);
        self.count.send_replace(n);
        (chosen, slot)
    }

    /// Records that strict mode refused the request in `slot` (unless the record was cleared).
    fn refused(&self, slot: Slot, rule: StrictRule) {
        let mut st = self.lock();
        if st.generation == slot.generation
            && let Some(s) = st.seen.get_mut(slot.index)
        {
            s.strict = Some(rule);
        }
        let n = st.seen.len();
        drop(st);
        self.count.send_replace(n);
    }

    fn clear_seen(&self) {
        let mut st = self.lock();
        st.seen.clear();
        st.generation += 1;
        drop(st);
        self.count.send_replace(0);
    }
}

/// A running proxy. Dropping it stops it (and closes its connections).
pub struct AwsProxy {
    endpoint: String,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AwsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProxy")
            .field("endpoint", &self.endpoint)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl AwsProxy {
    /// Starts a proxy on `127.0.0.1` and a free port, forwarding to `upstream`
    /// (`http://127.0.0.1:PORT`, moto's endpoint).
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("binding the AWS proxy")?;
        let local = listener.local_addr().context("reading the bound address")?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("building the proxy's HTTP client")?;
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client,
            state: Mutex::new(State::default()),
            count,
        });
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(connection(stream, sh.clone()));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Self {
            endpoint: format!("http://{local}"),
            shared,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`: what `AWS_ENDPOINT_URL` should say.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where requests go.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    keyrotor_standins::fault_accessors!(Fault);

    /// Every request seen, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// Forgets the requests seen.
    pub fn clear_seen(&self) {
        self.shared.clear_seen();
    }

    /// Switches strict mode on with `options` (see [the module documentation](self)).
    pub fn strict(self, options: StrictOptions) -> Self {
        self.set_strict(Some(options));
        self
    }

    /// Switches strict mode on (`Some`) or off (`None`).
    pub fn set_strict(&self, options: Option<StrictOptions>) {
        self.shared.lock().strict = options;
    }

    /// The strict mode's options; `None` when it is off.
    pub fn strict_options(&self) -> Option<StrictOptions> {
        self.shared.lock().strict.clone()
    }

    /// How many requests of `op` strict mode refused.
    pub fn refused(&self, op: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.op == op && s.strict.is_some())
            .count()
    }

    /// How many requests of each operation were seen.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for s in self.shared.lock().seen.iter() {
            *out.entry(s.op.clone()).or_insert(0) += 1;
        }
        out
    }

    /// How many requests of `op` were seen.
    pub fn count(&self, op: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.op == op)
            .count()
    }

    /// How many of them got a fault.
    pub fn faulted(&self, op: &str) -> usize {
        self.shared
            .lock()
            .seen
            .iter()
            .filter(|s| s.op == op && s.fault.is_some())
            .count()
    }

    /// Requests of `op` per SDK call (grouped by `amz-sdk-invocation-id`; a request without
    /// one counts as a call of its own), in the order the calls started.
    pub fn attempts_per_call(&self, op: &str) -> Vec<usize> {
        let mut order: Vec<Option<String>> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        for s in self.shared.lock().seen.iter().filter(|s| s.op == op) {
            match s
                .invocation
                .as_ref()
                .and_then(|inv| order.iter().position(|o| o.as_ref() == Some(inv)))
            {
                Some(i) => counts[i] += 1,
                None => {
                    order.push(s.invocation.clone());
                    counts.push(1);
                }
            }
        }
        counts
    }

    /// The most requests any one SDK call made, over every operation (0 when none).
    pub fn max_attempts_per_call(&self) -> usize {
        let ops: Vec<String> = self.counts().into_keys().collect();
        ops.iter()
            .flat_map(|op| self.attempts_per_call(op))
            .max()
            .unwrap_or(0)
    }

    /// Waits until `n` requests of `op` have been seen (at most `timeout`).
    pub async fn wait_for(&self, op: &str, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.count.subscribe();
        let done = tokio::time::timeout(timeout, async {
            loop {
                if self.count(op) >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if done.is_err() || self.count(op) < n {
            bail!(
                "the proxy saw {} {op} requests, not {n}, within {timeout:?}",
                self.count(op)
            );
        }
        Ok(())
    }
}

impl AwsProxy {
    /// Stops the proxy and waits until it no longer listens (dropping it stops it too, a moment
    /// later).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One HTTP/1.1 request as read off the wire.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    /// The operation, its service, and whether it uses a query (XML) protocol.
    fn operation(&self) -> (String, Option<String>, bool) {
        let scope_service = self.header("authorization").and_then(|a| {
            // `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/iam/aws4_request, …`
            let cred = a.split("Credential=").nth(1)?;
            let cred = cred.split([',', ' ']).next()?;
            cred.split('/').nth(3).map(str::to_owned)
        });
        if let Some(t) = self.header("x-amz-target") {
            let (prefix, op) = t.rsplit_once('.').unwrap_or(("", t));
            let service = match prefix {
                "secretsmanager" => Some("secretsmanager".to_owned()),
                "AmazonSSM" => Some("ssm".to_owned()),
                _ => scope_service,
            };
            return (op.to_owned(), service, false);
        }
        let form = String::from_utf8_lossy(&self.body);
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        let action = form
            .split('&')
            .chain(query.split('&'))
            .find_map(|kv| kv.strip_prefix("Action="))
            .map(|a| a.to_owned());
        match action {
            Some(a) => (a, scope_service, true),
            None => ("?".to_owned(), scope_service, false),
        }
    }
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Result<Option<Request>> {
    let mut line = String::new();
    // Skip blank lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("not an HTTP request line");
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("the connection closed inside the headers");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            line.clear();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .context("a chunk size")?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..]).await?;
            line.clear();
            r.read_line(&mut line).await?;
        }
    } else if let Some(n) = req.header("content-length") {
        let n: usize = n.parse().context("Content-Length")?;
        req.body.resize(n, 0);
        r.read_exact(&mut req.body).await?;
    }
    Ok(Some(req))
}

/// An answer to write back.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    async fn write<W: tokio::io::AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        let reason = reqwest::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status).into_bytes();
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        w.write_all(&out).await?;
        w.flush().await
    }
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A query-protocol (IAM, STS) error: `<ErrorResponse xmlns="{ns}"><Error>…`.
fn query_error(status: u16, ns: &str, sender: bool, code: &str, message: &str) -> Answer {
    let rid = request_id();
    let kind = if sender { "Sender" } else { "Receiver" };
    let mut a = Answer::new(
        status,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"{ns}\">\n  <Error>\n    <Type>{kind}</Type>\n    \
             <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n  \
             <RequestId>{rid}</RequestId>\n</ErrorResponse>\n"
        ),
    );
    a.headers.push(("x-amzn-requestid".into(), rid));
    a
}

/// A JSON-protocol (Secrets Manager, SSM) error: `{"__type":"{code}","message":"{message}"}`.
fn json_error(status: u16, code: &str, message: &str) -> Answer {
    let mut a = Answer::new(
        status,
        "application/x-amz-json-1.1",
        serde_json::json!({"__type": code, "message": message}).to_string(),
    );
    a.headers.push(("x-amzn-requestid".into(), request_id()));
    a
}

/// The answer the real service gives for this fault.
fn error_answer(kind: FaultKind, query_protocol: bool, service: Option<&str>) -> Answer {
    let (status, code, json_code, message, sender) = match kind {
        FaultKind::Throttle => (
            400,
            "Throttling",
            "ThrottlingException",
            "Rate exceeded",
            true,
        ),
        FaultKind::InternalError => (
            500,
            "InternalFailure",
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
            false,
        ),
        _ => (
            503,
            "ServiceUnavailable",
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
            false,
        ),
    };
    if query_protocol {
        let ns = match service {
            Some("sts") => "https://sts.amazonaws.com/doc/2011-06-15/",
            _ => "https://iam.amazonaws.com/doc/2010-05-08/",
        };
        query_error(status, ns, sender, code, message)
    } else {
        json_error(status, json_code, message)
    }
}

async fn forward(sh: &Shared, req: &Request) -> Answer {
    let Ok(method) = reqwest::Method::from_bytes(req.method.as_bytes()) else {
        return Answer::new(400, "text/plain", "bad method");
    };
    let mut rb = sh
        .client
        .request(method, format!("{}{}", sh.upstream, req.target));
    for (k, v) in &req.headers {
        let lower = k.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection" | "expect"
        ) {
            continue;
        }
        rb = rb.header(k, v);
    }
    let resp = match rb.body(req.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => return Answer::new(502, "text/plain", format!("upstream failed: {e}")),
    };
    let status = resp.status().as_u16();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    match resp.bytes().await {
        Ok(body) => Answer {
            status,
            headers,
            body: body.to_vec(),
        },
        Err(e) => Answer::new(502, "text/plain", format!("upstream body failed: {e}")),
    }
}

async fn control(sh: &Shared, req: &Request) -> Answer {
    let path = req.target.split('?').next().unwrap_or_default();
    let json = |v: serde_json::Value| Answer::new(200, "application/json", v.to_string());
    match (req.method.as_str(), path) {
        ("GET", "/_proxy/faults") => json(serde_json::json!(sh.lock().faults)),
        ("DELETE", "/_proxy/faults") => {
            sh.lock().faults.clear();
            Answer::new(204, "text/plain", "")
        }
        ("POST", "/_proxy/faults") => {
            #[derive(Deserialize)]
            #[serde(untagged)]
            enum Many {
                One(Fault),
                Many(Vec<Fault>),
            }
            match serde_json::from_slice::<Many>(&req.body) {
                Ok(Many::One(f)) => {
                    sh.lock().faults.push(f);
                    Answer::new(204, "text/plain", "")
                }
                Ok(Many::Many(fs)) => {
                    sh.lock().faults.extend(fs);
                    Answer::new(204, "text/plain", "")
                }
                Err(e) => Answer::new(400, "text/plain", format!("not a fault: {e}")),
            }
        }
        ("GET", "/_proxy/seen") => json(serde_json::json!(sh.lock().seen)),
        ("DELETE", "/_proxy/seen") => {
            sh.clear_seen();
            Answer::new(204, "text/plain", "")
        }
        ("GET", "/_proxy/strict") => json(serde_json::json!(sh.lock().strict)),
        ("POST", "/_proxy/strict") => match serde_json::from_slice::<StrictOptions>(&req.body) {
            Ok(o) => {
                sh.lock().strict = Some(o);
                Answer::new(204, "text/plain", "")
            }
            Err(e) => Answer::new(400, "text/plain", format!("not strict options: {e}")),
        },
        ("DELETE", "/_proxy/strict") => {
            sh.lock().strict = None;
            Answer::new(204, "text/plain", "")
        }
        _ => Answer::new(404, "text/plain", "no such control route"),
    }
}

async fn connection(stream: TcpStream, sh: Arc<Shared>) {
    let (read, mut stream) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let req = match read_request(&mut reader).await {
            Ok(Some(req)) => req,
            _ => return,
        };
        if req.target.starts_with("/_proxy/") {
            if control(&sh, &req).await.write(&mut stream).await.is_err() {
                return;
            }
            continue;
        }
        let (op, service, query_protocol) = req.operation();
        let attempt = req.header("amz-sdk-request").and_then(|v| {
            v.split(';')
                .find_map(|p| p.trim().strip_prefix("attempt="))
                .and_then(|n| n.trim().parse().ok())
        });
        let seen = Seen {
            op,
            service: service.clone(),
            invocation: req.header("amz-sdk-invocation-id").map(str::to_owned),
            attempt,
            fault: None,
            strict: None,
        };
        let op = seen.op.clone();
        let (fault, slot) = sh.decide(seen);
        let pass = Pass {
            req: &req,
            op: &op,
            service: service.as_deref(),
            slot,
        };
        let answer = match fault {
            None => pass.run(&sh).await,
            Some(FaultKind::Slow { ms }) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                pass.run(&sh).await
            }
            Some(FaultKind::Drop) => return,
            Some(FaultKind::ResponseLost) => {
                let _ = pass.run(&sh).await;
                return;
            }
            Some(kind) => error_answer(kind, query_protocol, service.as_deref()),
        };
        if answer.write(&mut stream).await.is_err() || req.wants_close() {
            return;
        }
    }
}

/// A request no fault stops: strict mode may refuse it, else it is forwarded.
struct Pass<'a> {
    req: &'a Request,
    op: &'a str,
    service: Option<&'a str>,
    slot: Slot,
}

impl Pass<'_> {
    async fn run(&self, sh: &Shared) -> Answer {
        let options = sh.lock().strict.clone();
        if let Some(options) = options
            && let Some((rule, answer)) =
                strict::check(sh, self.req, self.op, self.service, &options).await
        {
            sh.refused(self.slot, rule);
            return answer;
        }
        let answer = forward(sh, self.req).await;
        // Before the caller gets the answer, so its next request finds the key noted.
        strict::observe(sh, self.req, self.op, self.service, &answer);
        answer
    }
}
