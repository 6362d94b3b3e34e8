//! A local stand-in for the AWS Lambda Runtime API (`2018-06-01`), enough to run a real
//! custom-runtime binary (`bootstrap`) through invocations on this machine.
//!
//! | request | does |
//! |---|---|
//! | `GET /2018-06-01/runtime/invocation/next` | waits for an event queued with [`LambdaApi::invoke`]; answers it with the `Lambda-Runtime-*` headers |
//! | `POST /2018-06-01/runtime/invocation/{id}/response` | records the function's answer |
//! | `POST /2018-06-01/runtime/invocation/{id}/error` | records the function's error (`errorType`, `errorMessage`) |
//! | `POST /2018-06-01/runtime/init/error` | records an initialization error |
//!
//! Start it with [`LambdaApi::start`], point the binary at [`LambdaApi::address`] through
//! `AWS_LAMBDA_RUNTIME_API`, queue an event and wait for its [`Outcome`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

/// How one invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST …/response`: the function's answer (JSON, or a JSON string of a non-JSON body).
    Response(Value),
    /// `POST …/error`: the function's error.
    Error {
        /// `errorType`.
        error_type: String,
        /// `errorMessage`.
        error_message: String,
    },
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<(String, Value)>,
    outcomes: HashMap<String, Outcome>,
    init_error: Option<Outcome>,
    next_id: u64,
    /// Stopping: `next` answers 500 at once, so a waiting function lets go of its connection.
    closed: bool,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    queued: Arc<Notify>,
    answered: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The Runtime API's routes (`invocation/next`, an invocation's `response` and `error`,
/// `init/error`), served by these handlers.
pub fn routes<S, N, R, E, I, TN, TR, TE, TI>(
    next: N,
    response: R,
    error: E,
    init_error: I,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    N: Handler<TN, S>,
    R: Handler<TR, S>,
    E: Handler<TE, S>,
    I: Handler<TI, S>,
    TN: 'static,
    TR: 'static,
    TE: 'static,
    TI: 'static,
{
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
}

/// The invoked function's ARN the API announces.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:keyrotor-test";

/// A running Runtime API on a loopback port. Dropping it stops the server.
pub struct LambdaApi {
    addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LambdaApi {
    /// Starts the API on a free loopback port.
    pub async fn start() -> Result<Self> {
        let shared = Shared::default();
        let app = routes(next, response, error, init_error).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Lambda Runtime API")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// `program` as a Lambda function named `name` that this API serves: a clean environment
    /// with the API's address and the function's name, memory size and version, `home` as its
    /// `HOME` with no AWS config or credentials file, stdin closed, stdout and stderr piped,
    /// killed when dropped. The caller adds the rest of the function's environment.
    pub fn function(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        name: &str,
        home: &std::path::Path,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", self.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("HOME", home)
            .env("AWS_CONFIG_FILE", home.join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Queues an event; returns its request id.
    pub fn invoke(&self, payload: Value) -> String {
        let id = {
            let mut inner = self.shared.lock();
            inner.next_id += 1;
            let id = format!("00000000-0000-4000-8000-{:012}", inner.next_id);
            inner.queue.push_back((id.clone(), payload));
            id
        };
        self.shared.queued.notify_waiters();
        self.shared.queued.notify_one();
        id
    }

    /// Waits for the outcome of an invocation (or an initialization error).
    pub async fn outcome(&self, request_id: &str, timeout: Duration) -> Result<Outcome> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answered = self.shared.answered.notified();
            {
                let inner = self.shared.lock();
                if let Some(o) = inner.outcomes.get(request_id) {
                    return Ok(o.clone());
                }
                if let Some(e) = &inner.init_error {
                    bail!("the function failed to initialize: {e:?}");
                }
            }
            if tokio::time::timeout_at(deadline, answered).await.is_err() {
                bail!("no answer to invocation {request_id} within {timeout:?}");
            }
        }
    }

    /// Stops the server: a function waiting in `next` gets an error (and, like a real runtime,
    /// exits), then the server shuts down.
    pub async fn stop(mut self) {
        self.close();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    fn close(&mut self) {
        self.shared.lock().closed = true;
        self.shared.queued.notify_waiters();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for LambdaApi {
    fn drop(&mut self) {
        self.close();
    }
}

async fn next(State(shared): State<Shared>) -> Response {
    loop {
        let queued = shared.queued.notified();
        let next = {
            let mut inner = shared.lock();
            if inner.closed {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the Runtime API is stopping",
                )
                    .into_response();
            }
            inner.queue.pop_front()
        };
        if let Some((id, payload)) = next {
            let deadline = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                + Duration::from_secs(60);
            return (
                StatusCode::OK,
                [
                    ("Lambda-Runtime-Aws-Request-Id", id),
                    (
                        "Lambda-Runtime-Deadline-Ms",
                        deadline.as_millis().to_string(),
                    ),
                    ("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN.into()),
                    (
                        "Lambda-Runtime-Trace-Id",
                        "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
                    ),
                    ("Content-Type", "application/json".into()),
                ],
                payload.to_string(),
            )
                .into_response();
        }
        queued.await;
    }
}

fn record(shared: &Shared, id: Option<String>, outcome: Outcome) -> StatusCode {
    {
        let mut inner = shared.lock();
        match id {
            Some(id) => {
                inner.outcomes.insert(id, outcome);
            }
            None => inner.init_error = Some(outcome),
        }
    }
    shared.answered.notify_waiters();
    StatusCode::ACCEPTED
}

async fn response(State(shared): State<Shared>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    record(&shared, Some(id), Outcome::Response(value))
}

fn error_of(headers: &HeaderMap, body: &Bytes) -> Outcome {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error_type = v["errorType"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            headers
                .get("Lambda-Runtime-Function-Error-Type")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    Outcome::Error {
        error_type,
        error_message: v["errorMessage"].as_str().unwrap_or_default().to_owned(),
    }
}

async fn error(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let outcome = error_of(&headers, &body);
    record(&shared, Some(id), outcome)
}

async fn init_error(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let outcome = error_of(&headers, &body);
    record(&shared, None, outcome)
}
