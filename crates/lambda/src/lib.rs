//! # keyrotor-lambda
//!
//! keyrotor's AWS Lambda function: a thin shell over the state machine of
//! `keyrotor_core::machine`, for the Step Functions definition in
//! `deploy/statemachine/rotate.asl.json`. One binary (`bootstrap`) is deployed three times with
//! three least-privilege roles (rotator, pusher, notifier); every invocation names its step in
//! the field `step`. A step invocation is: payload → [`TargetState`] → one
//! [`machine::advance`] → payload. What follows a step, what a failure means and how a run is
//! summarised are decided in core, exactly as for the CLI; the state machine routes on the
//! state's `next` field, which core sets.
//!
//! # Payloads
//!
//! Between steps the state machine carries one [`TargetState`] per target (ids, the plan and the
//! outcome; never a secret: execution history keeps inputs and outputs for 90 days).
//!
//! # Errors
//!
//! A failed step leaves as a [`Diagnostic`] whose `error_type` is the fixed name core gives its
//! kind ([`machine::error_name`]: `Rotation.Retryable`, `Rotation.NotPropagated`,
//! `Rotation.Busy`, `Rotation.Refused`, `Rotation.Invalid`, `Rotation.Failed`) and whose message
//! is core's one redacted sentence. The state machine's Catch hands it, with the state the failed
//! step started from, to `compensate`, which records it through [`machine::failed_elsewhere`].
//!
//! # Layout
//!
//! - this file: [`Deps`], [`handle`] and the step handlers;
//! - `payload`: the requests and answers ([`Request`], [`Summary`], …);
//! - [`logging`]: JSON logs with the run id and the step on every line of an invocation;
//! - [`metrics`]: the metric a failed Slack notification counts in (EMF).

#![warn(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyrotor_core::config::{Config, Target};
use keyrotor_core::machine::{self, Context, TargetState};
use keyrotor_core::ports::{
    CallerIdentity, Clock, Executions, KeyStore, Notifier, Parameters, PortError, SecretStore,
    ServiceConnections, SystemClock,
};
use keyrotor_core::protocol::{Ports, StepError, StepErrorKind};
use keyrotor_core::report::{NotificationStatus, Outcome, Step, TargetReport};
use lambda_runtime::Diagnostic;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::sync::OnceCell;

pub mod logging;
pub mod metrics;
mod payload;

pub use payload::{
    CaughtError, CompensateInput, IterationResult, ReportInput, Request, StateInput, Summary,
    TargetsInput, TargetsOutput, TargetsRequest,
};

/// The environment variable naming the SSM parameter that holds the config (TOML).
pub const CONFIG_PARAMETER_ENV: &str = "KEYROTOR_CONFIG_PARAMETER";

/// A step error as the state machine sees it: core's fixed name for its kind, and its message.
pub fn diagnostic(e: &StepError) -> Diagnostic {
    Diagnostic {
        error_type: machine::error_name(e.kind).to_owned(),
        error_message: machine::redact(&e.message),
    }
}

fn failed(step: Step, message: impl Into<String>) -> Diagnostic {
    diagnostic(&StepError::new(step, StepErrorKind::Failed, message.into()))
}

fn port_failed(step: Step, what: &str, e: &PortError) -> Diagnostic {
    let kind = if e.is_retryable() {
        StepErrorKind::Retryable
    } else {
        StepErrorKind::Failed
    };
    diagnostic(&StepError::new(
        step,
        kind,
        format!("{what}: {}", e.message),
    ))
}

/// Something built on first use, or given ready-made (tests).
type Lazy<T> = OnceCell<T>;

/// Everything the handlers need. The AWS clients are built once per Lambda instance (in `main`).
/// The config, the Azure DevOps client (which needs the PAT) and the notifier (which needs the
/// webhook URL) are read on first use within an invocation, and again by the next invocation
/// ([`handle`] gives each its own [`Deps::for_invocation`]): so each of the three functions reads
/// only what its role allows, a changed config or a new PAT is used at once even by a warm
/// instance, and a missing parameter fails that invocation with a clear error instead of the
/// whole Lambda instance.
pub struct Deps {
    iam: Arc<dyn KeyStore>,
    secrets: Arc<dyn SecretStore>,
    sts: Arc<dyn CallerIdentity>,
    params: Arc<dyn Parameters>,
    executions: Arc<dyn Executions>,
    clock: Arc<dyn Clock>,
    config_parameter: Option<String>,
    config: Lazy<Config>,
    ado: Lazy<Arc<dyn ServiceConnections>>,
    notifier: Lazy<Option<Arc<dyn Notifier>>>,
    origin: String,
    /// Given ready-made (tests): kept across invocations.
    fixed: bool,
    /// The AWS configuration the clients were built from (production): each invocation rebuilds
    /// them with every call bounded by its remaining time.
    sdk: Option<aws_config::SdkConfig>,
    /// The invocation's deadline less [`DEADLINE_MARGIN`]: the step ends by then (as
    /// `Rotation.Retryable` if it must), every AWS call is bounded by it, and the Azure DevOps
    /// client starts no wait (rate limit, backoff) that would end after it.
    deadline: Option<SystemTime>,
}

/// How long before the invocation's deadline the Azure DevOps client stops waiting, so that the
/// step can still fail cleanly (as `Rotation.Retryable`) instead of being cut off by Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

impl Deps {
    /// The production dependencies: AWS clients from the environment (the function's role and
    /// region), the config from the SSM parameter named by [`CONFIG_PARAMETER_ENV`].
    pub async fn from_env() -> Self {
        let sdk = keyrotor_aws::load_config(None).await;
        let aws = Arc::new(keyrotor_aws::Aws::new(&sdk));
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
        Self {
            iam: aws.clone(),
            secrets: aws.clone(),
            sts: aws.clone(),
            params: aws.clone(),
            executions: aws,
            clock: Arc::new(SystemClock),
            config_parameter: std::env::var(CONFIG_PARAMETER_ENV).ok(),
            config: Lazy::new(),
            ado: Lazy::new(),
            notifier: Lazy::new(),
            origin: format!("AWS Step Functions (Lambda {function})"),
            fixed: false,
            sdk: Some(sdk),
            deadline: None,
        }
    }

    /// The dependencies of one invocation that must end by `deadline` (Lambda's, if known): the
    /// same clients, and the config, PAT and webhook read afresh (unless they were given
    /// ready-made).
    pub fn for_invocation(&self, deadline: Option<SystemTime>) -> Deps {
        let deadline = deadline.map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d));
        let (iam, secrets, sts, params, executions) = match (&self.sdk, remaining(deadline)) {
            (Some(sdk), Some(left)) => {
                // Clients are cheap to build from a config: they share its HTTP connections.
                let aws = Arc::new(keyrotor_aws::Aws::new(&keyrotor_aws::bounded(
                    sdk,
                    left.max(Duration::from_secs(1)),
                )));
                (
                    aws.clone() as Arc<dyn KeyStore>,
                    aws.clone() as Arc<dyn SecretStore>,
                    aws.clone() as Arc<dyn CallerIdentity>,
                    aws.clone() as Arc<dyn Parameters>,
                    aws as Arc<dyn Executions>,
                )
            }
            _ => (
                self.iam.clone(),
                self.secrets.clone(),
                self.sts.clone(),
                self.params.clone(),
                self.executions.clone(),
            ),
        };
        Deps {
            iam,
            secrets,
            sts,
            params,
            executions,
            clock: self.clock.clone(),
            config_parameter: self.config_parameter.clone(),
            config: if self.fixed {
                Lazy::new_with(self.config.get().cloned())
            } else {
                Lazy::new()
            },
            ado: if self.fixed {
                Lazy::new_with(self.ado.get().cloned())
            } else {
                Lazy::new()
            },
            notifier: if self.fixed {
                Lazy::new_with(self.notifier.get().cloned())
            } else {
                Lazy::new()
            },
            origin: self.origin.clone(),
            fixed: self.fixed,
            sdk: self.sdk.clone(),
            deadline,
        }
    }

    /// Ready-made dependencies (tests): these ports, this config, this notifier.
    pub fn with_ports(
        config: Config,
        ports: Ports,
        params: Arc<dyn Parameters>,
        notifier: Option<Arc<dyn Notifier>>,
    ) -> Self {
        Self {
            iam: ports.iam,
            secrets: ports.secrets,
            sts: ports.sts,
            params,
            executions: ports.executions,
            clock: ports.clock,
            config_parameter: None,
            config: Lazy::new_with(Some(config)),
            ado: Lazy::new_with(Some(ports.ado)),
            notifier: Lazy::new_with(Some(notifier)),
            origin: "AWS Step Functions (test)".into(),
            fixed: true,
            sdk: None,
            deadline: None,
        }
    }

    /// The config, read from SSM on first use.
    pub async fn config(&self, step: Step) -> Result<&Config, Diagnostic> {
        self.config
            .get_or_try_init(|| async {
                let name = self.config_parameter.as_deref().ok_or_else(|| {
                    failed(
                        step,
                        format!("{CONFIG_PARAMETER_ENV} is not set: it names the SSM parameter that holds the config"),
                    )
                })?;
                let text = self
                    .params
                    .get_secure(name)
                    .await
                    .map_err(|e| port_failed(step, &format!("reading the config parameter {name}"), &e))?;
                Config::parse(Path::new(&format!("ssm:{name}")), text.expose_secret())
                    .map_err(|e| failed(step, e.to_string()))
            })
            .await
    }

    async fn ado(&self, step: Step) -> Result<Arc<dyn ServiceConnections>, Diagnostic> {
        let config = self.config(step).await?;
        self.ado
            .get_or_try_init(|| async {
                let pat = keyrotor_core::secrets::resolve(
                    &config.pat,
                    self.params.as_ref(),
                    self.secrets.as_ref(),
                )
                .await
                .map_err(|e| port_failed(step, "ado.pat: the PAT could not be read", &e))?;
                let options = keyrotor_ado::AdoOptions {
                    deadline: self.deadline,
                    ..Default::default()
                };
                let client = keyrotor_ado::AdoClient::with_options(pat, options)
                    .map_err(|e| port_failed(step, "ado.pat", &e))?;
                Ok::<Arc<dyn ServiceConnections>, Diagnostic>(Arc::new(client))
            })
            .await
            .cloned()
    }

    /// The notifier, or why there is none (`Ok(None)`: Slack is not configured).
    async fn notifier(&self) -> Result<Option<Arc<dyn Notifier>>, String> {
        let config = self
            .config(Step::Report)
            .await
            .map_err(|d| d.error_message)?;
        self.notifier
            .get_or_try_init(|| async {
                let Some(r) = &config.slack_webhook else {
                    return Ok(None);
                };
                let url = keyrotor_core::secrets::resolve_webhook(
                    r,
                    self.params.as_ref(),
                    self.secrets.as_ref(),
                )
                .await?;
                let n = keyrotor_notify::SlackNotifier::new(url)
                    .map_err(|e| format!("slack.webhook: {}", e.message))?;
                Ok(Some(Arc::new(n) as Arc<dyn Notifier>))
            })
            .await
            .cloned()
    }

    /// The ports for a step. The Azure DevOps client (and so the PAT read) is built by the first
    /// step that runs in this instance and kept for the next ones.
    async fn ports(&self, step: Step) -> Result<Ports, Diagnostic> {
        Ok(Ports {
            iam: self.iam.clone(),
            secrets: self.secrets.clone(),
            sts: self.sts.clone(),
            ado: self.ado(step).await?,
            clock: self.clock.clone(),
            executions: self.executions.clone(),
        })
    }

    async fn target(&self, step: Step, name: &str) -> Result<(Target, &Config), Diagnostic> {
        let config = self.config(step).await?;
        let target = config
            .targets
            .iter()
            .find(|t| t.name.as_str() == name)
            .cloned()
            .ok_or_else(|| {
                failed(
                    step,
                    format!("there is no target named '{name}' in the config"),
                )
            })?;
        Ok((target, config))
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, Diagnostic> {
    serde_json::to_value(v).map_err(|e| Diagnostic {
        error_type: machine::error_name(StepErrorKind::Failed).to_owned(),
        error_message: format!("the result could not be encoded: {e}"),
    })
}

/// Runs one invocation with no deadline: see [`handle_until`].
pub async fn handle(
    event: serde_json::Value,
    deps: &Deps,
) -> Result<serde_json::Value, Diagnostic> {
    handle_until(event, deps, None).await
}

/// The time left until `deadline` (`None`: no deadline; zero once it has passed).
fn remaining(deadline: Option<SystemTime>) -> Option<Duration> {
    deadline.map(|d| d.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Runs one invocation that must end by `deadline` (Lambda's, from the invocation's context):
/// parses the event, dispatches on `step`, returns the step's JSON. The step ends
/// [`DEADLINE_MARGIN`] before the deadline at the latest: a step still running then is dropped
/// and fails as `Rotation.Retryable`, which the state machine retries (every step re-reads the
/// state, and what a step cut short may have done is what a crash may have done), instead of
/// being cut off by Lambda's timeout, which the state machine does not retry.
pub async fn handle_until(
    event: serde_json::Value,
    deps: &Deps,
    deadline: Option<SystemTime>,
) -> Result<serde_json::Value, Diagnostic> {
    let request: Request = serde_json::from_value(event).map_err(|e| Diagnostic {
        error_type: machine::error_name(StepErrorKind::Failed).to_owned(),
        error_message: format!("the input is not a keyrotor step request: {e}"),
    })?;
    let name = request.step_name();
    tracing::info!(step = name, "step started");
    let deps = &deps.for_invocation(deadline);
    let work = async {
        match request {
            Request::Targets(i) => to_value(&targets(i, deps).await?),
            Request::Inspect(i) => to_value(&step(Step::Inspect, i.into_state(), deps).await?),
            Request::Cleanup(i) => to_value(&step(Step::Cleanup, i.into_state(), deps).await?),
            Request::Create(i) => to_value(&step(Step::Create, i.into_state(), deps).await?),
            Request::Verify(i) => to_value(&step(Step::Verify, i.into_state(), deps).await?),
            Request::Push(i) => to_value(&step(Step::Push, i.into_state(), deps).await?),
            Request::Confirm(i) => to_value(&step(Step::Confirm, i.into_state(), deps).await?),
            Request::Promote(i) => to_value(&step(Step::Promote, i.into_state(), deps).await?),
            Request::Retire(i) => to_value(&step(Step::Retire, i.into_state(), deps).await?),
            Request::Compensate(i) => to_value(&compensate(i, deps).await?),
            Request::Report(i) => to_value(&report(i, deps).await?),
        }
    };
    let out = match remaining(deps.deadline) {
        None => work.await,
        Some(left) => tokio::time::timeout(left, work)
            .await
            .unwrap_or_else(|_| Err(out_of_time(name, left))),
    };
    match &out {
        Ok(_) => tracing::info!(step = name, "step done"),
        Err(d) => {
            tracing::warn!(step = name, error_type = %d.error_type, error = %d.error_message, "step failed")
        }
    }
    out
}

/// A step that did not finish within its invocation's time.
fn out_of_time(step: &str, had: Duration) -> Diagnostic {
    Diagnostic {
        error_type: machine::error_name(StepErrorKind::Retryable).to_owned(),
        error_message: format!(
            "the {step} step did not finish within the {}s its invocation had left; it was stopped {}s before Lambda's deadline and is retried",
            had.as_secs(),
            DEADLINE_MARGIN.as_secs()
        ),
    }
}

/// **targets**: one initial state per target to rotate (all, or those named), in config order.
pub async fn targets(request: TargetsRequest, deps: &Deps) -> Result<TargetsOutput, Diagnostic> {
    let input = request.input;
    let config = deps.config(Step::Inspect).await?;
    let selected = config
        .select(&input.names)
        .map_err(|e| failed(Step::Inspect, e))?;
    let run_id = keyrotor_core::domain::RunId::parse(&request.run_id).map_err(|e| {
        failed(
            Step::Inspect,
            format!(
                "the run id (the execution name) '{}' is unusable: {e}",
                request.run_id
            ),
        )
    })?;
    Ok(TargetsOutput {
        targets: selected
            .iter()
            .map(|t| TargetState::new(t, run_id.clone(), input.force))
            .collect(),
    })
}

/// How long one `verify` invocation tries: enough for `verify_consecutive` attempts, at most
/// `verify_timeout` and never more than 30 s. The state machine's Retry does the waiting.
pub fn verify_budget(policy: &keyrotor_core::config::Policy) -> Duration {
    let attempts = policy.verify_interval * policy.verify_consecutive;
    (attempts + Duration::from_secs(2))
        .min(policy.verify_timeout)
        .min(Duration::from_secs(30))
}

/// One step: the state must name `step` as next (the state machine routes on it), then one
/// transition of core's machine.
pub async fn step(
    step: Step,
    mut state: TargetState,
    deps: &Deps,
) -> Result<TargetState, Diagnostic> {
    if state.next != Some(step) {
        return Err(failed(
            step,
            format!(
                "the state machine invoked step '{step}' but the target's state names '{}' as next: deploy/statemachine/rotate.asl.json and keyrotor's machine disagree",
                state.next.map_or("done", Step::name)
            ),
        ));
    }
    let (target, config) = deps.target(step, state.target()).await?;
    let ports = deps.ports(step).await?;
    let cx = Context {
        ports: &ports,
        policy: &config.policy,
        target: &target,
        verify_budget: verify_budget(&config.policy),
        // The state machine's Wait state waits out the drain (`$.state.retire_at`).
        waits_for_drain: true,
    };
    machine::advance(&cx, &mut state)
        .await
        .map_err(|e| diagnostic(&e))?;
    Ok(state)
}

/// **compensate**: records the failed step the Catch caught ([`machine::failed_elsewhere`]) and,
/// when core's failure policy says so, undoes the rotation as far as is safe.
pub async fn compensate(input: CompensateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let mut s = input.state;
    let (name, message) = input.error.read();
    machine::failed_elsewhere(&mut s, &name, &message);
    if s.next == Some(Step::Compensate) {
        s = step(Step::Compensate, s, deps).await?;
    }
    Ok(s)
}

fn target_report(r: &IterationResult) -> TargetReport {
    let mut t = machine::target_report(&r.state);
    if r.state.outcome.is_none()
        && let Some(e) = &r.error
    {
        let (name, message) = e.read();
        t.error = Some(machine::redact(&if message.is_empty() {
            name
        } else {
            format!("{name}: {message}")
        }));
    }
    t
}

/// **report**: posts one Slack message for the whole run and returns a [`Summary`]. A failed
/// notification is logged, shown in the summary and counted in [`metrics::NOTIFICATIONS_FAILED`]
/// (which the stack alarms on); it never fails the rotation.
pub async fn report(input: ReportInput, deps: &Deps) -> Result<Summary, Diagnostic> {
    let mut run = machine::run_report(
        &input.run_id,
        &format!("{} execution {}", deps.origin, input.run_id),
        input.results.iter().map(target_report).collect(),
    );
    match deps.notifier().await {
        Ok(n) => machine::notify(&mut run, n.as_deref(), false).await,
        Err(e) => {
            tracing::warn!(error = %e, "the Slack notification could not be sent; the rotation stands");
            run.notification = NotificationStatus::Failed(e);
        }
    }
    if matches!(run.notification, NotificationStatus::Failed(_)) {
        metrics::emit_notification_failed(&run.run_id);
    }
    let count = |o: Outcome| run.targets.iter().filter(|t| t.outcome == o).count();
    Ok(Summary {
        run_id: run.run_id.clone(),
        rotated: count(Outcome::Rotated),
        nothing_due: count(Outcome::NothingDue),
        busy: count(Outcome::Busy),
        refused: count(Outcome::Refused),
        invalid: count(Outcome::Invalid),
        failed: count(Outcome::Failed),
        needs_attention: run.needs_attention(),
        notification: run.notification.clone(),
        targets: run
            .targets
            .iter()
            .map(|t| format!("{}: {}", t.name, t.outcome.name()))
            .collect(),
    })
}
