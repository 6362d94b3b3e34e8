//! A minimal Lambda Runtime API (the 2018-06-01 interface the real service serves to a
//! function's runtime), enough to time a runtime's cold start and to drive it through a step
//! sequence: `GET /runtime/invocation/next` hands out queued events, `POST …/response` and
//! `POST …/error` record the answers with the instant they arrived.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyrotor_testkit::lambda_api::routes;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

/// An answer the runtime posted.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request_id: String,
    /// `Ok(response)` or `Err(error body)`.
    pub result: Result<Value, Value>,
    pub at: Instant,
}

struct Shared {
    queue: Mutex<VecDeque<(String, Value)>>,
    queued: Notify,
    first_next: Mutex<Option<Instant>>,
    answers: mpsc::UnboundedSender<Answer>,
}

pub struct RuntimeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    answers: mpsc::UnboundedReceiver<Answer>,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    pub async fn start() -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            first_next: Mutex::new(None),
            answers: tx,
        });
        let app = routes(next, response, error, init_error).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            shared,
            answers: rx,
            task,
        })
    }

    /// `127.0.0.1:PORT`: the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Queues an event; returns its request id.
    pub fn invoke(&self, event: Value) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        lock(&self.shared.queue).push_back((id.clone(), event));
        self.shared.queued.notify_one();
        id
    }

    /// When the runtime first asked for an invocation.
    pub fn first_next(&self) -> Option<Instant> {
        *lock(&self.shared.first_next)
    }

    /// The next answer (responses and errors in arrival order).
    pub async fn answer(&mut self, timeout: Duration) -> Result<Answer> {
        match tokio::time::timeout(timeout, self.answers.recv()).await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => bail!("the runtime API stopped"),
            Err(_) => bail!("no answer from the runtime within {timeout:?}"),
        }
    }

    /// Invokes and waits for that invocation's answer.
    pub async fn call(&mut self, event: Value, timeout: Duration) -> Result<Answer> {
        let id = self.invoke(event);
        let a = self.answer(timeout).await?;
        if a.request_id != id {
            bail!("answer for {} while waiting for {id}", a.request_id);
        }
        Ok(a)
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn next(State(sh): State<Arc<Shared>>) -> Response {
    {
        let mut first = lock(&sh.first_next);
        if first.is_none() {
            *first = Some(Instant::now());
        }
    }
    let (id, event) = loop {
        let notified = sh.queued.notified();
        if let Some(item) = lock(&sh.queue).pop_front() {
            break item;
        }
        notified.await;
    };
    let deadline = SystemTime::now()
        .checked_add(Duration::from_secs(900))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let mut h = HeaderMap::new();
    let v = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("x"));
    h.insert("lambda-runtime-aws-request-id", v(&id));
    h.insert("lambda-runtime-deadline-ms", v(&deadline.to_string()));
    h.insert(
        "lambda-runtime-invoked-function-arn",
        v("arn:aws:lambda:us-east-1:123456789012:function:keyrotor-bench"),
    );
    h.insert(
        "lambda-runtime-trace-id",
        v("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, event.to_string()).into_response()
}

fn parse(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

async fn response(
    State(sh): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let _ = sh.answers.send(Answer {
        request_id: id,
        result: Ok(parse(&body)),
        at: Instant::now(),
    });
    StatusCode::ACCEPTED
}

async fn error(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let _ = sh.answers.send(Answer {
        request_id: id,
        result: Err(parse(&body)),
        at: Instant::now(),
    });
    StatusCode::ACCEPTED
}

async fn init_error(State(sh): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    let _ = sh.answers.send(Answer {
        request_id: "init".into(),
        result: Err(parse(&body)),
        at: Instant::now(),
    });
    StatusCode::ACCEPTED
}

/// The zip a Lambda deployment uploads: `bootstrap` alone, deflated (`zip -9 -j`).
pub fn zip_size(bootstrap: &std::path::Path, dir: &std::path::Path) -> Result<u64> {
    let zip = dir.join("bootstrap.zip");
    let _ = std::fs::remove_file(&zip);
    let st = std::process::Command::new("zip")
        .args(["-q", "-9", "-j"])
        .arg(&zip)
        .arg(bootstrap)
        .status()
        .context("running zip (is it installed?)")?;
    if !st.success() {
        bail!("zip failed");
    }
    Ok(std::fs::metadata(&zip)?.len())
}
