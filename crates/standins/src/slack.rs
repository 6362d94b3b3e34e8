//! A Slack incoming-webhook sink: a local server that takes posts the way Slack does, records
//! them, and answers with Slack's real status codes and plain-text bodies.
//!
//! [`SlackSink::start`] binds `127.0.0.1:0` and serves one webhook path with a random secret
//! part (`/services/T00000000/B00000000/<32 hex>`), so tests can check that part never leaks.
//! Unless scripted, a post is checked as Slack would: a body that is not a JSON object gets
//! `400 invalid_payload`, one without `text` or `blocks` `400 no_text` (so an empty object `{}`
//! tells a live webhook from a dead one without posting anything: `keyrotor check` relies on it), blocks beyond Slack's
//! limits (50 blocks, 3,000 characters per section, 150 per header) `400 invalid_blocks`, a post
//! to another `/services/…` path `404 no_service`; anything else `200 ok`.
//!
//! [`SlackSink::script`] makes the next N webhook posts get a chosen [`Reply`] (429 with
//! `Retry-After`, `500 rollup_error`, …); scripts queue up and expire after their N posts.
//!
//! Other processes (the CLI under test) use the same through HTTP under `/_sink/`:
//!
//! - `GET /_sink/posts[?min=N&timeout_ms=T]`: the posts as JSON; with `min`, waits until there
//!   are at least N (at most T ms, default 10,000), answering `408` with what there is if they
//!   do not come.
//! - `POST /_sink/script` with `{"status":429,"body":"rate_limited","retry_after":1,"times":2}`
//!   (or an array of them): queues replies.
//! - `POST /_sink/reset`: forgets posts and scripts.
//!
//! The server stops when the [`SlackSink`] is dropped, or when [`SlackSink::stop`] is awaited.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Slack's limits, as the sink enforces them.
const MAX_BLOCKS: usize = 50;
const MAX_SECTION_CHARS: usize = 3000;
const MAX_HEADER_CHARS: usize = 150;

/// One post the sink received.
#[derive(Debug, Clone, Serialize)]
pub struct Post {
    /// The request path (the webhook's, unless a client posted elsewhere under `/services/`).
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body as text (lossy UTF-8).
    pub body: String,
    /// The body as JSON, when it parses.
    pub json: Option<Value>,
    /// The status the sink answered with.
    pub status: u16,
    /// When it arrived, since the sink started (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
}

fn as_millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Post {
    /// The message's `text`, if it is JSON with one.
    pub fn text(&self) -> Option<&str> {
        self.json.as_ref()?.get("text")?.as_str()
    }
}

/// An answer Slack gives to a webhook post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The plain-text body (`ok`, or Slack's error code).
    pub body: String,
    /// `Retry-After`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// How long to wait before answering, in milliseconds (a slow Slack, for timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

/// Slack's error answers, one constructor each, named for the error code they answer with.
macro_rules! slack_errors {
    ($($(#[$doc:meta])* $code:ident => $status:literal,)*) => {
        $(
            $(#[$doc])*
            pub fn $code() -> Self {
                Self::new($status, stringify!($code))
            }
        )*
    };
}

impl Reply {
    /// An answer with this status and body.
    pub fn new(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.into(),
            retry_after: None,
            delay_ms: None,
        }
    }
    slack_errors! {
        /// `200 ok`.
        ok => 200,
        /// `500 rollup_error`: Slack's internal error.
        rollup_error => 500,
        /// `400 invalid_payload`.
        invalid_payload => 400,
        /// `400 no_text`.
        no_text => 400,
        /// `403 action_prohibited`.
        action_prohibited => 403,
        /// `404 channel_not_found`.
        channel_not_found => 404,
        /// `404 no_service`: the webhook was disabled or removed.
        no_service => 404,
        /// `403 invalid_token`: the webhook's token is not valid (revoked, or mistyped).
        invalid_token => 403,
        /// `410 channel_is_archived`.
        channel_is_archived => 410,
    }
    /// `429 rate_limited` with `Retry-After: secs`.
    pub fn rate_limited(secs: u64) -> Self {
        Self {
            retry_after: Some(secs),
            ..Self::new(429, "rate_limited")
        }
    }
    /// The same answer, after a delay.
    pub fn delayed(self, delay: Duration) -> Self {
        Self {
            delay_ms: Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
            ..self
        }
    }
}

/// A scripted reply, as `POST /_sink/script` takes it.
#[derive(Debug, Deserialize)]
struct ScriptEntry {
    #[serde(flatten)]
    reply: Reply,
    #[serde(default = "one")]
    times: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ScriptRequest {
    One(ScriptEntry),
    Many(Vec<ScriptEntry>),
}

#[derive(Default)]
struct Recorded {
    posts: Vec<Post>,
    /// Replies for the next posts, each with how many posts it still answers.
    script: VecDeque<(Reply, usize)>,
}

struct Shared {
    recorded: Mutex<Recorded>,
    /// The number of posts, for waiting without sleeping.
    count: watch::Sender<usize>,
    started: Instant,
    webhook_path: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.recorded.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reset(&self) {
        let mut r = self.lock();
        r.posts.clear();
        r.script.clear();
        self.count.send_replace(0);
    }

    fn script(&self, reply: Reply, times: usize) {
        if times > 0 {
            self.lock().script.push_back((reply, times));
        }
    }

    async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A running sink. Dropping it stops the server.
pub struct SlackSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SlackSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackSink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SlackSink {
    /// Starts a sink on a free loopback port, with a fresh webhook path.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Slack sink to 127.0.0.1:0")?;
        let addr = listener.local_addr().context("the Slack sink's address")?;
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let shared = Arc::new(Shared {
            recorded: Mutex::new(Recorded::default()),
            count: watch::Sender::new(0),
            started: Instant::now(),
            webhook_path: format!("/services/T00000000/B00000000/{secret}"),
        });
        let app = Router::new()
            .route("/services/{*rest}", post(webhook))
            .route("/_sink/posts", get(api_posts))
            .route("/_sink/script", post(api_script))
            .route("/_sink/reset", post(api_reset))
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            // Ends when told to, or when the sender is dropped with the sink.
            let stop = async {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                eprintln!("keyrotor-standins: the Slack sink stopped: {e}");
            }
        });
        Ok(Self {
            addr,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The webhook URL to post to: `http://127.0.0.1:PORT/services/T…/B…/<secret>`.
    pub fn webhook_url(&self) -> String {
        format!("{}{}", self.base_url(), self.shared.webhook_path)
    }

    /// The webhook path's secret part (its last segment), for leak checks.
    pub fn webhook_secret(&self) -> &str {
        self.shared
            .webhook_path
            .rsplit('/')
            .next()
            .unwrap_or_default()
    }

    /// Where the `/_sink/` API is: `http://127.0.0.1:PORT/_sink`.
    pub fn api_url(&self) -> String {
        format!("{}/_sink", self.base_url())
    }

    /// Answers the next `times` webhook posts with `reply` (after any replies already queued).
    pub fn script(&self, reply: Reply, times: usize) {
        self.shared.script(reply, times);
    }

    /// Every post received so far, oldest first.
    pub fn posts(&self) -> Vec<Post> {
        self.shared.lock().posts.clone()
    }

    /// Waits until at least `n` posts have arrived (at most `timeout`), then returns them all.
    pub async fn wait_for_posts(&self, n: usize, timeout: Duration) -> Result<Vec<Post>> {
        if !self.shared.wait_for(n, timeout).await {
            anyhow::bail!(
                "the Slack sink got {} posts, not {n}, within {timeout:?}",
                self.posts().len()
            );
        }
        Ok(self.posts())
    }

    /// Forgets every post and script.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops the server and waits until it no longer listens (at most five seconds for open
    /// requests to finish, then they are cut).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            // Cutting the serving task drops the listener, whatever requests are still open.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for SlackSink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn answer(reply: &Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(secs) = reply.retry_after {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    (status, headers, reply.body.clone()).into_response()
}

/// What Slack would answer to an unscripted post of this body.
fn judge(json: Option<&Value>) -> Reply {
    let Some(Value::Object(msg)) = json else {
        return Reply::invalid_payload();
    };
    let text = msg
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.trim().is_empty());
    let blocks = msg.get("blocks");
    let has_blocks = blocks
        .and_then(Value::as_array)
        .is_some_and(|b| !b.is_empty());
    if !text && !has_blocks {
        return Reply::no_text();
    }
    match blocks {
        Some(blocks) if !blocks_ok(blocks) => Reply::new(400, "invalid_blocks"),
        _ => Reply::ok(),
    }
}

fn blocks_ok(blocks: &Value) -> bool {
    let Some(blocks) = blocks.as_array() else {
        return false;
    };
    let chars = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.chars().count());
    blocks.len() <= MAX_BLOCKS
        && blocks
            .iter()
            .all(|b| match b.get("type").and_then(Value::as_str) {
                Some("header") => chars(b.pointer("/text/text"))
                    .is_some_and(|n| (1..=MAX_HEADER_CHARS).contains(&n)),
                Some("section") => chars(b.pointer("/text/text"))
                    .is_some_and(|n| (1..=MAX_SECTION_CHARS).contains(&n)),
                Some("context") => b
                    .get("elements")
                    .and_then(Value::as_array)
                    .is_some_and(|els| {
                        (1..=10).contains(&els.len())
                            && els.iter().all(|e| {
                                chars(e.get("text"))
                                    .is_none_or(|n| (1..=MAX_SECTION_CHARS).contains(&n))
                            })
                    }),
                Some("divider") => true,
                _ => false,
            })
}

async fn webhook(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let reply = {
        let mut r = shared.lock();
        let reply = if path != shared.webhook_path {
            // Slack's answer to a webhook that does not exist; it consumes no script.
            Reply::no_service()
        } else if let Some((reply, left)) = r.script.front_mut() {
            let reply = reply.clone();
            *left -= 1;
            if *left == 0 {
                r.script.pop_front();
            }
            reply
        } else {
            judge(json.as_ref())
        };
        r.posts.push(Post {
            path,
            content_type,
            body: String::from_utf8_lossy(&body).into_owned(),
            json,
            status: reply.status,
            at: shared.started.elapsed(),
        });
        shared.count.send_replace(r.posts.len());
        reply
    };
    if let Some(ms) = reply.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    answer(&reply)
}

#[derive(Debug, Deserialize)]
struct PostsQuery {
    min: Option<usize>,
    timeout_ms: Option<u64>,
}

async fn api_posts(State(shared): State<Arc<Shared>>, Query(q): Query<PostsQuery>) -> Response {
    let mut status = StatusCode::OK;
    if let Some(min) = q.min {
        let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(10_000));
        if !shared.wait_for(min, timeout).await {
            status = StatusCode::REQUEST_TIMEOUT;
        }
    }
    let posts = shared.lock().posts.clone();
    (status, axum::Json(posts)).into_response()
}

async fn api_script(
    State(shared): State<Arc<Shared>>,
    axum::Json(req): axum::Json<ScriptRequest>,
) -> StatusCode {
    let entries = match req {
        ScriptRequest::One(e) => vec![e],
        ScriptRequest::Many(v) => v,
    };
    for e in entries {
        shared.script(e.reply, e.times);
    }
    StatusCode::NO_CONTENT
}

async fn api_reset(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}
