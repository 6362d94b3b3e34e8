//! An emulator of Azure DevOps' service-endpoint REST API (api-version 7.1), faithful to
//! Microsoft's contract and its quirks (`shared/ado/SERVICE-ENDPOINTS.md`):
//!
//! - an unknown endpoint id answers HTTP 200 with the body `null`;
//! - lists answer `{"count": N, "value": [...]}`;
//! - `GET {org}/_apis/connectionData` (a `-preview` api-version) answers the organization's id
//!   as `instanceId` (seeded, or derived from its name), the GUID of its OIDC issuer;
//! - `password` and `sessionToken` come back `null`; every other field is stored and returned
//!   exactly as given, unknown ones too (see "Confidential fields on update" for a PUT);
//! - POST assigns the id (one in the body is ignored); PUT keeps it; DELETE needs
//!   `projectIds`; a duplicate name in a project is `DuplicateServiceConnectionException`;
//! - `api-version` from the query or the `Accept` header, else 400; pipeline permissions need a
//!   `-preview` version;
//! - a wrong or missing PAT gets 203 and an HTML sign-in page, or 401 with
//!   `X-TFS-FedAuthRedirect: Suppress`; a read-only PAT's write gets 401 `TF400813`;
//! - optional rate limiting ([`RateLimit`]): delayed (`X-RateLimit-Delay`), then 429
//!   `TF400733` with `Retry-After` and the `X-RateLimit-*` headers; `X-RateLimit-Reset` is when
//!   the identity's usage would be back at zero if it stopped now, as Microsoft documents it.
//!
//! Tests drive it through [`AdoEmulator`]; the `ado-emulator` binary serves the same thing,
//! with the control API under `/_emulator/`:
//!
//! | request | does |
//! |---|---|
//! | `GET /_emulator/state` | the whole state, passwords included |
//! | `GET` / `DELETE /_emulator/requests` | the request log ([`RequestRecord`]: method, path, query, status, arrival time, `Retry-After`, delayed) / clear it |
//! | `GET` / `DELETE /_emulator/in-flight` | `{"now": N, "peak": M}`: API requests being served now, and the most at once since the start or the last `DELETE` (which starts the peak again from `now`) |
//! | `GET` / `POST` / `DELETE /_emulator/faults` | pending faults / add one ([`Fault`] JSON) / clear |
//! | `POST /_emulator/reset` | back to the seed (or to the [`Seed`] in the body), faults, log and peak in flight cleared |
//!
//! # Confidential fields on update
//!
//! What a PUT does with a confidential parameter (`password`, `sessionToken`):
//!
//! | sent | stored afterwards |
//! |---|---|
//! | `null` | the value stored before (kept) |
//! | absent (the parameters object is there, the field is not) | the value stored before (kept) |
//! | `""` | `""`: cleared |
//! | any other string | that string |
//!
//! Whatever is stored, a GET answers `null`. Microsoft documents only the last two rows; the
//! `null` row is what the web UI relies on. For absence, reports differ (Terraform provider
//! users saw secrets reset by updates that left them out, `SERVICE-ENDPOINTS.md`): the
//! emulator chooses *keep*, like `null`, so that a client which only leaves a stale
//! `sessionToken` out, rather than sending `""`, still finds it stored, as it would on a
//! service that keeps it (AWS then answers "The security token included in the request is
//! invalid"). A PUT whose `authorization` has no `parameters` object keeps no secret.
//!
//! Tests read what is stored, secrets unredacted, through [`AdoEmulator::endpoint`] and
//! [`AdoEmulator::state`] (the binary: `GET /_emulator/state`).
//!
//! # Layout
//!
//! - `seed`: the starting state ([`Seed`], JSON or builders).
//! - `state`: the stored organizations ([`EmulatorState`]).
//! - `faults`: injected answers ([`Fault`], [`Op`]).
//! - `http`: routing, authentication, api-version, rate limits, the control API.
//! - `handlers`: the operations themselves.

mod faults;
mod handlers;
mod http;
mod seed;
mod state;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Fault, Op};
pub use seed::{OrgSeed, PatSeed, ProjectSeed, RateLimit, Scope, Seed, aws_endpoint};
pub use state::{EmulatorState, OrgState, Project};

/// One request as the emulator logged it. Never a body, never a header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// `GET`, `PUT`, …
    pub method: String,
    /// The path as requested (still percent-encoded).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The status answered.
    pub status: u16,
    /// When the request arrived, in microseconds since the emulator started.
    #[serde(default)]
    pub received_us: u64,
    /// The `Retry-After` of the answer, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The answer was delayed by the rate limit (it carried `X-RateLimit-Delay`).
    #[serde(default)]
    pub delayed: bool,
}

/// A request body kept by [`AdoEmulator::capture_bodies`] (for contract tests; holds secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct CapturedBody {
    /// The operation.
    pub op: Op,
    /// The path as requested.
    pub path: String,
    /// The body as parsed.
    pub body: Value,
}

/// What the server task shares with the handle.
pub(crate) struct Shared {
    pub(crate) base_url: String,
    /// What [`RequestRecord::received_us`] counts from.
    pub(crate) started: Instant,
    inner: Mutex<Inner>,
    /// API requests being served now (control requests not counted).
    in_flight: AtomicUsize,
    /// The most API requests served at once since the start or the last reset of the peak.
    peak_in_flight: AtomicUsize,
}

/// Counts one API request as in flight while it lives (dropped when the answer is ready, or when
/// the client went away and the request was cancelled).
pub(crate) struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct Inner {
    pub(crate) initial: (EmulatorState, BTreeMap<String, Vec<PatSeed>>),
    pub(crate) initial_rate_limit: Option<RateLimit>,
    pub(crate) state: EmulatorState,
    pub(crate) pats: BTreeMap<String, Vec<PatSeed>>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) log: Vec<RequestRecord>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) usage: HashMap<(String, String), VecDeque<(Instant, u32)>>,
    pub(crate) capture: bool,
    pub(crate) captured: Vec<CapturedBody>,
}

impl Shared {
    fn new(seed: &Seed, base_url: String) -> Result<Self> {
        let initial = EmulatorState::from_seed(seed)?;
        Ok(Self {
            base_url,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                state: initial.0.clone(),
                pats: initial.1.clone(),
                initial,
                initial_rate_limit: seed.rate_limit.clone(),
                faults: Vec::new(),
                log: Vec::new(),
                rate_limit: seed.rate_limit.clone(),
                usage: HashMap::new(),
                capture: false,
                captured: Vec::new(),
            }),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        })
    }

    /// Counts an API request in flight until the guard is dropped.
    pub(crate) fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    /// `(now, peak)`: requests in flight, and the most at once.
    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (
            self.in_flight.load(Ordering::SeqCst),
            self.peak_in_flight.load(Ordering::SeqCst),
        )
    }

    /// Starts the peak again from the requests in flight now.
    pub(crate) fn reset_peak(&self) {
        let now = self.in_flight.load(Ordering::SeqCst);
        self.peak_in_flight.store(now, Ordering::SeqCst);
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Back to the seed given at start, or to a new one.
    pub(crate) fn reset(&self, seed: Option<&Seed>) -> Result<()> {
        let mut inner = self.lock();
        if let Some(seed) = seed {
            inner.initial = EmulatorState::from_seed(seed)?;
            inner.initial_rate_limit = seed.rate_limit.clone();
        }
        inner.state = inner.initial.0.clone();
        inner.pats = inner.initial.1.clone();
        inner.rate_limit = inner.initial_rate_limit.clone();
        inner.faults.clear();
        inner.log.clear();
        inner.usage.clear();
        inner.captured.clear();
        drop(inner);
        self.reset_peak();
        Ok(())
    }
}

/// A running emulator on a loopback port. Dropping it stops the server.
pub struct AdoEmulator {
    base_url: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AdoEmulator {
    /// Starts an emulator with this seed on `127.0.0.1` and a free port.
    pub async fn start(seed: Seed) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), seed).await
    }

    /// Starts an emulator with this seed on this address (port 0: a free one).
    pub async fn start_on(addr: SocketAddr, seed: Seed) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        let base_url = format!("http://{local}");
        let shared = Arc::new(Shared::new(&seed, base_url.clone())?);
        let app = http::router(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = rx.await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("the ADO emulator stopped: {e}");
            }
        });
        Ok(Self {
            base_url,
            shared,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// An organization's URL: `{base}/{org}`.
    pub fn org_url(&self, org: &str) -> String {
        format!("{}/{org}", self.base_url)
    }

    /// Everything stored, passwords included.
    pub fn state(&self) -> EmulatorState {
        self.shared.lock().state.clone()
    }

    /// One stored endpoint, password included.
    pub fn endpoint(&self, org: &str, id: &str) -> Option<Value> {
        self.shared.lock().state.endpoint(org, id).cloned()
    }

    crate::fault_accessors!(Fault);

    /// The request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().log.clear();
    }

    /// The most API requests the emulator served at once since it started or since
    /// [`AdoEmulator::reset_peak_in_flight`]: a client's concurrency, seen from outside.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.in_flight().1
    }

    /// Starts [`AdoEmulator::peak_in_flight`] again from the requests in flight now.
    pub fn reset_peak_in_flight(&self) {
        self.shared.reset_peak();
    }

    /// Back to the seed: state, rate limit and usage; faults, log, captured bodies and the peak
    /// in flight cleared.
    pub fn reset(&self) {
        // Re-applying the seed already accepted at start cannot fail.
        let _ = self.shared.reset(None);
    }

    /// Turns rate limiting on or off (and forgets past usage).
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let mut inner = self.shared.lock();
        inner.rate_limit = limit;
        inner.usage.clear();
    }

    /// Keeps (or stops keeping) the JSON bodies of PUT, POST and PATCH requests in memory, for
    /// contract tests. They hold passwords: never log them. Off by default.
    pub fn capture_bodies(&self, on: bool) {
        self.shared.lock().capture = on;
    }

    /// The bodies kept since [`AdoEmulator::capture_bodies`] was turned on.
    pub fn captured_bodies(&self) -> Vec<CapturedBody> {
        self.shared.lock().captured.clone()
    }

    /// Stops the server and waits (at most five seconds) for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for AdoEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl std::fmt::Debug for AdoEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdoEmulator")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}
