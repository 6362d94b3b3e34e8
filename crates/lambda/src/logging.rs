//! JSON logs for CloudWatch: one JSON object per line, with the run id and the step of the
//! invocation on every line written while it runs (the runtime's own lines included).
//!
//! [`InvocationLayer`] wraps the whole invocation (the runtime's handling of the answer too) in
//! a span `invocation{request_id, run_id, step, target_name}` read from the raw event, so every line
//! carries those fields under `"span"`. The AWS SDK and HTTP stacks log at `warn` and above only
//! (`RUST_LOG` overrides): their debug output could name request details.

use std::task;

use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{Error, LambdaInvocation};
use serde::Deserialize;
use tracing::Instrument;
use tracing::instrument::Instrumented;
use tracing_subscriber::EnvFilter;

/// The default filter: keyrotor at `info`, the SDK and HTTP stacks at `warn`.
pub const DEFAULT_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,hyper=warn,hyper_util=warn,reqwest=warn,rustls=warn,h2=warn";

/// Installs the JSON subscriber (stdout, as Lambda expects). `RUST_LOG` overrides the filter.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(true)
        .init();
}

/// The ids an event carries, for the span (never anything else of the event).
#[derive(Deserialize, Default)]
struct Ids {
    #[serde(default)]
    step: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    state: Option<StateIds>,
}

#[derive(Deserialize, Default)]
struct StateIds {
    #[serde(default)]
    progress: ProgressIds,
}

/// `state.progress`: where a target's state keeps its name and the run id.
#[derive(Deserialize, Default)]
struct ProgressIds {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    target: Option<String>,
}

/// The span of one invocation: the Lambda request id, the run id, the step, the target's name.
pub fn invocation_span(request_id: &str, event: &[u8]) -> tracing::Span {
    let ids: Ids = serde_json::from_slice(event).unwrap_or_default();
    let state = ids.state.unwrap_or_default().progress;
    let run_id = state.run_id.or(ids.run_id).unwrap_or_default();
    tracing::info_span!(
        "invocation",
        request_id,
        run_id = %run_id,
        step = %ids.step.unwrap_or_default(),
        target_name = %state.target.unwrap_or_default(),
    )
}

/// A runtime layer that runs every invocation inside [`invocation_span`].
#[derive(Debug, Default, Clone, Copy)]
pub struct InvocationLayer;

impl<S> Layer<S> for InvocationLayer {
    type Service = InvocationService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InvocationService { inner }
    }
}

/// The service [`InvocationLayer`] makes.
#[derive(Debug, Clone)]
pub struct InvocationService<S> {
    inner: S,
}

impl<S> Service<LambdaInvocation> for InvocationService<S>
where
    S: Service<LambdaInvocation, Response = (), Error = Error>,
{
    type Response = ();
    type Error = Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: LambdaInvocation) -> Self::Future {
        let span = invocation_span(&req.context.request_id, &req.body);
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        future.instrument(span)
    }
}
