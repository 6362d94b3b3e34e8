//! # keyrotor-lambda
//!
//! keyrotor's AWS Lambda function: a thin shell over `keyrotor-core` for the Step Functions
//! state machine in `deploy/statemachine/rotate.asl.json`. One binary (`bootstrap`) is deployed
//! three times with three least-privilege roles (rotator, pusher, notifier); every invocation
//! names the step it runs in the field `step`, and [`handle`] dispatches it to one handler per
//! step. Each handler calls the very same core function the CLI's engine calls
//! (`keyrotor_core::protocol::*`, `keyrotor_core::plan::plan`).
//!
//! # Payloads
//!
//! Between steps the state machine carries one [`TargetState`] per target: the target's name,
//! the run id (the execution name), key ids, secret version ids and what the planner decided.
//! Never a secret: execution history keeps inputs and outputs for 90 days. Every step re-reads
//! the real state it acts on, so a retried or resumed step is safe.
//!
//! # Errors
//!
//! A failed step leaves as a [`Diagnostic`] whose `error_type` is one of the fixed names the
//! state machine matches ([`error_type`]): `Rotation.Retryable`, `Rotation.NotPropagated`,
//! `Rotation.Refused` (also for "another run is rotating this target"), `Rotation.Failed`.
//! The message is the core's one sentence, prefixed with the step (`verify: …`).
//!
//! # Layout
//!
//! - this file: [`Deps`], the payload types, [`handle`] and the handlers;
//! - [`logging`]: JSON logs with the run id and the step on every line of an invocation.

#![warn(missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyrotor_core::config::{Config, Target};
use keyrotor_core::domain::{AccessKeyId, RunId};
use keyrotor_core::plan::{self, Decision};
use keyrotor_core::ports::{
    CallerIdentity, Clock, KeyStore, Notifier, Parameters, PortError, SecretStore,
    ServiceConnections, SystemClock,
};
use keyrotor_core::protocol::{self, Compensation, Ports, Progress, StepError, StepErrorKind};
use keyrotor_core::report::{NotificationStatus, Outcome, RunReport, Step, TargetReport};
use lambda_runtime::Diagnostic;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub mod logging;

/// The environment variable naming the SSM parameter that holds the config (TOML).
pub const CONFIG_PARAMETER_ENV: &str = "KEYROTOR_CONFIG_PARAMETER";

/// The fixed error names the state machine matches (`Diagnostic::error_type`).
pub mod error_type {
    /// Transient: the state machine retries the step.
    pub const RETRYABLE: &str = "Rotation.Retryable";
    /// IAM does not accept the new key yet: the state machine waits and verifies again.
    pub const NOT_PROPAGATED: &str = "Rotation.NotPropagated";
    /// Unsafe to go on, or another run is rotating the target: a person (or the other run) acts.
    pub const REFUSED: &str = "Rotation.Refused";
    /// Permanent failure (also: bad configuration, names that do not exist).
    pub const FAILED: &str = "Rotation.Failed";
}

/// The `error_type` for a step error. `Busy` (another run is rotating this target) leaves as
/// `Rotation.Refused`: nothing is retried, nothing of the other run is undone; `Invalid` (a
/// name in the config that does not exist) as `Rotation.Failed`.
pub fn error_type_of(kind: StepErrorKind) -> &'static str {
    match kind {
        StepErrorKind::Retryable => error_type::RETRYABLE,
        StepErrorKind::NotPropagated => error_type::NOT_PROPAGATED,
        StepErrorKind::Busy | StepErrorKind::Refused => error_type::REFUSED,
        StepErrorKind::Invalid | StepErrorKind::Failed => error_type::FAILED,
    }
}

/// A step error as the state machine sees it: the fixed name and `step: message`.
pub fn diagnostic(e: &StepError) -> Diagnostic {
    Diagnostic {
        error_type: error_type_of(e.kind).to_owned(),
        error_message: e.to_string(),
    }
}

fn failed(step: Step, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        error_type: error_type::FAILED.to_owned(),
        error_message: format!(
            "{step}: {}",
            keyrotor_core::domain::mask_key_ids(&message.into())
        ),
    }
}

fn port_failed(step: Step, what: &str, e: &PortError) -> Diagnostic {
    let kind = if e.is_retryable() {
        error_type::RETRYABLE
    } else {
        error_type::FAILED
    };
    Diagnostic {
        error_type: kind.to_owned(),
        error_message: format!("{step}: {what}: {}", e.message),
    }
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
    clock: Arc<dyn Clock>,
    config_parameter: Option<String>,
    config: Lazy<Config>,
    ado: Lazy<Arc<dyn ServiceConnections>>,
    notifier: Lazy<Option<Arc<dyn Notifier>>>,
    origin: String,
    /// Given ready-made (tests): kept across invocations.
    fixed: bool,
    /// The invocation's deadline less [`DEADLINE_MARGIN`]: the Azure DevOps client starts no
    /// wait (rate limit, backoff) that would end after it.
    deadline: Option<SystemTime>,
}

/// How long before the invocation's deadline the Azure DevOps client stops waiting, so that the
/// step can still fail cleanly (as `Rotation.Retryable`) instead of being cut off by Lambda.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

impl Deps {
    /// The production dependencies: AWS clients from the environment (the function's role and
    /// region), the config from the SSM parameter named by [`CONFIG_PARAMETER_ENV`].
    pub async fn from_env() -> Self {
        let config = keyrotor_aws::load_config(None).await;
        let aws = Arc::new(keyrotor_aws::Aws::new(&config));
        let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
        Self {
            iam: aws.clone(),
            secrets: aws.clone(),
            sts: aws.clone(),
            params: aws,
            clock: Arc::new(SystemClock),
            config_parameter: std::env::var(CONFIG_PARAMETER_ENV).ok(),
            config: Lazy::new(),
            ado: Lazy::new(),
            notifier: Lazy::new(),
            origin: format!("AWS Step Functions (Lambda {function})"),
            fixed: false,
            deadline: None,
        }
    }

    /// The dependencies of one invocation that must end by `deadline` (Lambda's, if known): the
    /// same clients, and the config, PAT and webhook read afresh (unless they were given
    /// ready-made).
    pub fn for_invocation(&self, deadline: Option<SystemTime>) -> Deps {
        Deps {
            iam: self.iam.clone(),
            secrets: self.secrets.clone(),
            sts: self.sts.clone(),
            params: self.params.clone(),
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
            deadline: deadline.map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d)),
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
            clock: ports.clock,
            config_parameter: None,
            config: Lazy::new_with(Some(config)),
            ado: Lazy::new_with(Some(ports.ado)),
            notifier: Lazy::new_with(Some(notifier)),
            origin: "AWS Step Functions (test)".into(),
            fixed: true,
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
                let url =
                    keyrotor_core::secrets::resolve(r, self.params.as_ref(), self.secrets.as_ref())
                        .await
                        .map_err(|e| {
                            format!(
                                "slack.webhook: the webhook URL could not be read: {}",
                                e.message
                            )
                        })?;
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
        })
    }

    async fn target(
        &self,
        step: Step,
        state: &TargetState,
    ) -> Result<(Target, &Config), Diagnostic> {
        let config = self.config(step).await?;
        let target = config
            .targets
            .iter()
            .find(|t| t.name.as_str() == state.target)
            .cloned()
            .ok_or_else(|| {
                failed(
                    step,
                    format!("there is no target named '{}' in the config", state.target),
                )
            })?;
        Ok((target, config))
    }
}

/// What the planner decided for a target (the state machine's Choice states read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanDecision {
    /// Create a new key and rotate it in.
    Rotate,
    /// Finish the rotation whose key is at AWSPENDING.
    Resume,
    /// The key is young enough; only tidy up.
    NothingDue,
    /// Another run holds the intent lease.
    Busy,
    /// Unsafe: a person must act.
    Refused,
    /// The secret holds something keyrotor does not manage.
    Invalid,
}

impl From<Decision> for PlanDecision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Rotate => Self::Rotate,
            Decision::Resume => Self::Resume,
            Decision::NothingDue => Self::NothingDue,
            Decision::Busy => Self::Busy,
            Decision::Refuse => Self::Refused,
            Decision::Invalid => Self::Invalid,
        }
    }
}

/// How a target's run ended, as carried in the payload (`report::Outcome` by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeName {
    /// Rotated.
    Rotated,
    /// Nothing due.
    NothingDue,
    /// Another run is rotating this target.
    Busy,
    /// Refused as unsafe.
    Refused,
    /// The config names something unusable.
    Invalid,
    /// A step failed.
    Failed,
}

impl From<OutcomeName> for Outcome {
    fn from(o: OutcomeName) -> Self {
        match o {
            OutcomeName::Rotated => Outcome::Rotated,
            OutcomeName::NothingDue => Outcome::NothingDue,
            OutcomeName::Busy => Outcome::Busy,
            OutcomeName::Refused => Outcome::Refused,
            OutcomeName::Invalid => Outcome::Invalid,
            OutcomeName::Failed => Outcome::Failed,
        }
    }
}

/// One target's state between steps: ids and decisions only, never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetState {
    /// The target's name (as in the config).
    pub target: String,
    /// The run id: the Step Functions execution name.
    pub run_id: String,
    /// Rotate even when the key is younger than `min_key_age`.
    pub force: bool,
    /// What the planner decided (set by `inspect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<PlanDecision>,
    /// Whether `cleanup` or a finishing `retire` has work to do (set by `inspect`).
    pub tidy: bool,
    /// The planner's reason, and what was tidied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key the endpoints held before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_key: Option<AccessKeyId>,
    /// The key being rotated in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_key: Option<AccessKeyId>,
    /// The secret version holding the new key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<String>,
    /// The version of this run's intent record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_version: Option<String>,
    /// This run created the new key (it did not resume one).
    pub created_here: bool,
    /// This run sent (or may have sent) a credential update to a connection.
    pub put_attempted: bool,
    /// `cleanup` takes a stale AWSPENDING label off.
    pub clear_pending: bool,
    /// Never-used keys nobody holds, deleted by `cleanup`.
    pub orphans: Vec<AccessKeyId>,
    /// A retired key deleted by `cleanup` to make room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub make_room: Option<AccessKeyId>,
    /// A previous key whose retirement a nothing-due run finishes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_retire: Option<AccessKeyId>,
    /// Whether finishing that retirement deletes the key.
    pub finish_retire_delete: bool,
    /// How the target ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeName>,
    /// The step that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<Step>,
    /// The error, one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What compensation did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// Steps done, in order.
    pub steps: Vec<Step>,
}

impl TargetState {
    fn run_id(&self, step: Step) -> Result<RunId, Diagnostic> {
        RunId::parse(&self.run_id).map_err(|e| {
            failed(
                step,
                format!(
                    "the run id (the execution name) '{}' is unusable: {e}",
                    self.run_id
                ),
            )
        })
    }

    fn progress(&self, target: &Target, run_id: RunId) -> Progress {
        let mut p = Progress::new(target, run_id);
        p.old_key = self.old_key.clone();
        p.new_key = self.new_key.clone();
        p.pending_version = self.pending_version.clone();
        p.intent_version = self.intent_version.clone();
        p.created_here = self.created_here;
        p.put_attempted = self.put_attempted;
        p
    }

    fn absorb(&mut self, p: Progress) {
        self.new_key = p.new_key;
        self.pending_version = p.pending_version;
        self.intent_version = p.intent_version;
        self.created_here = p.created_here;
        self.put_attempted = p.put_attempted;
    }

    fn note(&mut self, s: &str) {
        match &mut self.reason {
            Some(r) if !r.is_empty() => {
                r.push_str("; ");
                r.push_str(s);
            }
            _ => self.reason = Some(s.to_owned()),
        }
    }

    fn done(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }
}

/// A step's input: `{"step": "...", "state": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct StateInput {
    /// The target's state so far.
    pub state: TargetState,
}

/// What a Catch put into the payload (`ResultPath: "$.error"`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CaughtError {
    /// The error name (`Rotation.Failed`, `States.Timeout`, …).
    #[serde(rename = "Error", default)]
    pub error: String,
    /// The cause: for a Lambda error, the JSON `{"errorType","errorMessage"}`.
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

/// `compensate`'s input: the last good state and the error that stopped the target.
#[derive(Debug, Clone, Deserialize)]
pub struct CompensateInput {
    /// The state before the failed step.
    pub state: TargetState,
    /// What the Catch caught.
    #[serde(default)]
    pub error: CaughtError,
}

/// `targets`' input: `{"step": "targets", "run_id": …, "input": <the execution input>}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TargetsRequest {
    /// The run id (execution name), for the logs.
    pub run_id: String,
    /// The execution input.
    pub input: TargetsInput,
}

/// The execution input: `{}` from the schedule; `{"names": [...], "force": true}` by hand.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TargetsInput {
    /// Only these targets (all when empty).
    pub names: Vec<String>,
    /// Rotate even when keys are young.
    pub force: bool,
}

/// `targets`' output: the Map's items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsOutput {
    /// Target names, in config order.
    pub targets: Vec<String>,
    /// Passed on to every target.
    pub force: bool,
}

/// One Map iteration's result: the target's last state, and the error if a Catch fired and even
/// compensation could not run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IterationResult {
    /// The target's state.
    pub state: TargetState,
    /// The error a Catch put there, if any.
    pub error: Option<CaughtError>,
}

/// `report`'s input: the run id and the Map's per-target results.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReportInput {
    /// The run id (execution name).
    pub run_id: String,
    /// One per target.
    pub results: Vec<IterationResult>,
}

/// `report`'s output: what the state machine's last Choice reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The run id.
    pub run_id: String,
    /// Targets rotated.
    pub rotated: usize,
    /// Targets with nothing due.
    pub nothing_due: usize,
    /// Targets another run was rotating.
    pub busy: usize,
    /// Targets refused as unsafe.
    pub refused: usize,
    /// Targets whose config names something unusable.
    pub invalid: usize,
    /// Targets whose rotation failed.
    pub failed: usize,
    /// Whether a person must act (any failed, refused or invalid target): the execution fails.
    pub needs_attention: bool,
    /// `sent`, `skipped` (nothing happened), `not-configured`, or `failed: <why>`; a failed
    /// notification never fails the run.
    pub notification: String,
    /// Per target: `name: outcome`.
    pub targets: Vec<String>,
}

/// An invocation's input, dispatched on the field `step`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum Request {
    /// Lists the targets to rotate (the Map's items).
    Targets(TargetsRequest),
    /// Reads keys, stages, endpoints; plans.
    Inspect(StateInput),
    /// Deletes leftovers.
    Cleanup(StateInput),
    /// Creates (or resumes) the new key.
    Create(StateInput),
    /// One short verification attempt.
    Verify(StateInput),
    /// Updates every endpoint in place.
    Push(StateInput),
    /// Reads every endpoint back.
    Confirm(StateInput),
    /// Moves AWSCURRENT to the new key.
    Promote(StateInput),
    /// Retires the old key (or finishes an earlier retirement).
    Retire(StateInput),
    /// Undoes a failed rotation as far as is safe.
    Compensate(CompensateInput),
    /// Posts the run's Slack message; returns a [`Summary`].
    Report(ReportInput),
}

impl Request {
    /// The step's name, for logs.
    pub fn step_name(&self) -> &'static str {
        match self {
            Request::Targets(_) => "targets",
            Request::Inspect(_) => "inspect",
            Request::Cleanup(_) => "cleanup",
            Request::Create(_) => "create",
            Request::Verify(_) => "verify",
            Request::Push(_) => "push",
            Request::Confirm(_) => "confirm",
            Request::Promote(_) => "promote",
            Request::Retire(_) => "retire",
            Request::Compensate(_) => "compensate",
            Request::Report(_) => "report",
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> Result<serde_json::Value, Diagnostic> {
    serde_json::to_value(v).map_err(|e| Diagnostic {
        error_type: error_type::FAILED.to_owned(),
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

/// Runs one invocation that must end by `deadline` (Lambda's, from the invocation's context):
/// parses the event, dispatches on `step`, returns the step's JSON.
pub async fn handle_until(
    event: serde_json::Value,
    deps: &Deps,
    deadline: Option<SystemTime>,
) -> Result<serde_json::Value, Diagnostic> {
    let request: Request = serde_json::from_value(event).map_err(|e| Diagnostic {
        error_type: error_type::FAILED.to_owned(),
        error_message: format!("the input is not a keyrotor step request: {e}"),
    })?;
    let step = request.step_name();
    tracing::info!(step, "step started");
    let deps = &deps.for_invocation(deadline);
    let out = async {
        match request {
            Request::Targets(i) => to_value(&targets(i, deps).await?),
            Request::Inspect(i) => to_value(&inspect(i, deps).await?),
            Request::Cleanup(i) => to_value(&cleanup(i, deps).await?),
            Request::Create(i) => to_value(&create(i, deps).await?),
            Request::Verify(i) => to_value(&verify(i, deps).await?),
            Request::Push(i) => to_value(&push(i, deps).await?),
            Request::Confirm(i) => to_value(&confirm(i, deps).await?),
            Request::Promote(i) => to_value(&promote(i, deps).await?),
            Request::Retire(i) => to_value(&retire(i, deps).await?),
            Request::Compensate(i) => to_value(&compensate(i, deps).await?),
            Request::Report(i) => to_value(&report(i, deps).await?),
        }
    }
    .await;
    match &out {
        Ok(_) => tracing::info!(step, "step done"),
        Err(d) => {
            tracing::warn!(step, error_type = %d.error_type, error = %d.error_message, "step failed")
        }
    }
    out
}

/// **targets**: the names of the targets to rotate (all, or those named), in config order.
pub async fn targets(request: TargetsRequest, deps: &Deps) -> Result<TargetsOutput, Diagnostic> {
    let input = request.input;
    let config = deps.config(Step::Inspect).await?;
    let selected = config
        .select(&input.names)
        .map_err(|e| failed(Step::Inspect, e))?;
    Ok(TargetsOutput {
        targets: selected.iter().map(|t| t.name.to_string()).collect(),
        force: input.force,
    })
}

/// **inspect**: reads the target's keys, stages and endpoints and plans (`plan::plan`).
pub async fn inspect(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Inspect;
    let mut s = input.state;
    let run_id = s.run_id(step)?;
    let (target, config) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    let snap = protocol::inspect(&ports, &target)
        .await
        .map_err(|e| diagnostic(&e))?;
    let p = plan::plan(
        &snap,
        &config.policy,
        ports.clock.now(),
        run_id.as_str(),
        s.force,
    );
    let decision = PlanDecision::from(p.decision);
    s.decision = Some(decision);
    s.tidy = p.clear_pending
        || !p.orphans.is_empty()
        || p.make_room.is_some()
        || p.finish_retire.is_some();
    s.reason = Some(p.reason.clone());
    s.old_key = p.old_key;
    // As the CLI's engine: a resumed key becomes this run's new key only when `create` finds it
    // at AWSPENDING (so a failed resume is not compensated by deleting a key it never took on).
    s.new_key = None;
    s.clear_pending = p.clear_pending;
    s.orphans = p.orphans;
    s.make_room = p.make_room;
    s.finish_retire = p.finish_retire;
    s.finish_retire_delete = p.finish_retire_delete;
    s.outcome = match decision {
        PlanDecision::Refused => Some(OutcomeName::Refused),
        PlanDecision::Invalid => Some(OutcomeName::Invalid),
        PlanDecision::Busy => Some(OutcomeName::Busy),
        PlanDecision::NothingDue if !s.tidy => Some(OutcomeName::NothingDue),
        _ => None,
    };
    if matches!(decision, PlanDecision::Refused | PlanDecision::Invalid) {
        s.failed_step = Some(step);
        s.error = Some(p.reason);
    }
    s.pending_version = None;
    s.intent_version = None;
    Ok(s.done(step))
}

/// **cleanup**: deletes leftovers as planned (a no-op when there are none).
pub async fn cleanup(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Cleanup;
    let mut s = input.state;
    let run_id = s.run_id(step)?;
    let (target, _) = deps.target(step, &s).await?;
    if s.clear_pending || !s.orphans.is_empty() || s.make_room.is_some() {
        let ports = deps.ports(step).await?;
        let notes = protocol::cleanup(
            &ports,
            &target,
            &run_id,
            s.clear_pending,
            &s.orphans,
            s.make_room.as_ref(),
        )
        .await
        .map_err(|e| diagnostic(&e))?;
        if !notes.is_empty() {
            s.note(&notes.join("; "));
        }
    }
    Ok(s.done(step))
}

/// **create**: creates the new key and stores it at AWSPENDING, or resumes the key there.
pub async fn create(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Create;
    let mut s = input.state;
    let run_id = s.run_id(step)?;
    let (target, config) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    let mut progress = s.progress(&target, run_id);
    protocol::create(&ports, &target, &config.policy, &mut progress)
        .await
        .map_err(|e| diagnostic(&e))?;
    s.absorb(progress);
    Ok(s.done(step))
}

/// How long one `verify` invocation tries: enough for `verify_consecutive` attempts, at most
/// `verify_timeout` and never more than 30 s. The state machine's Retry does the waiting.
pub fn verify_budget(policy: &keyrotor_core::config::Policy) -> Duration {
    let attempts = policy.verify_interval * policy.verify_consecutive;
    (attempts + Duration::from_secs(2))
        .min(policy.verify_timeout)
        .min(Duration::from_secs(30))
}

/// **verify**: one short, bounded attempt; `Rotation.NotPropagated` while IAM does not accept
/// the new key yet.
pub async fn verify(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Verify;
    let s = input.state;
    let run_id = s.run_id(step)?;
    let (target, config) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    let progress = s.progress(&target, run_id);
    protocol::verify(
        &ports,
        &target,
        &config.policy,
        &progress,
        verify_budget(&config.policy),
    )
    .await
    .map_err(|e| diagnostic(&e))?;
    Ok(s.done(step))
}

/// **push**: every endpoint gets the new key, updated in place.
pub async fn push(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Push;
    let mut s = input.state;
    let run_id = s.run_id(step)?;
    let (target, _) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    let mut progress = s.progress(&target, run_id);
    let updated = protocol::push(&ports, &target, &mut progress)
        .await
        .map_err(|e| diagnostic(&e))?;
    s.absorb(progress);
    if !updated.is_empty() {
        s.note(&format!("updated {}", updated.join(", ")));
    }
    Ok(s.done(step))
}

/// **confirm**: every endpoint, read back, holds the new key and is ready.
pub async fn confirm(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Confirm;
    let s = input.state;
    let run_id = s.run_id(step)?;
    let (target, _) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    protocol::confirm(&ports, &target, &s.progress(&target, run_id))
        .await
        .map_err(|e| diagnostic(&e))?;
    Ok(s.done(step))
}

/// **promote**: AWSCURRENT moves to the new key.
pub async fn promote(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Promote;
    let s = input.state;
    let run_id = s.run_id(step)?;
    let (target, _) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    protocol::promote(&ports, &target, &s.progress(&target, run_id))
        .await
        .map_err(|e| diagnostic(&e))?;
    Ok(s.done(step))
}

/// **retire**: the old key becomes Inactive (and is deleted without a grace period). For a
/// nothing-due target, finishes an earlier retirement instead.
pub async fn retire(input: StateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let step = Step::Retire;
    let mut s = input.state;
    s.run_id(step)?;
    let (target, config) = deps.target(step, &s).await?;
    let ports = deps.ports(step).await?;
    if s.decision == Some(PlanDecision::NothingDue) {
        if let Some(old) = s.finish_retire.clone() {
            protocol::retire(
                &ports,
                &target,
                &config.policy,
                Some(&old),
                None,
                Some(s.finish_retire_delete),
            )
            .await
            .map_err(|e| diagnostic(&e))?;
            s.note(&format!(
                "finished retiring the previous key {}",
                old.masked()
            ));
        }
        s.outcome = Some(OutcomeName::NothingDue);
        return Ok(s.done(step));
    }
    protocol::retire(
        &ports,
        &target,
        &config.policy,
        s.old_key.as_ref(),
        s.new_key.as_ref(),
        None,
    )
    .await
    .map_err(|e| diagnostic(&e))?;
    s.outcome = Some(OutcomeName::Rotated);
    Ok(s.done(step))
}

/// The Lambda error inside a Catch's `Cause`.
#[derive(Deserialize)]
struct LambdaCause {
    #[serde(rename = "errorType", default)]
    error_type: String,
    #[serde(rename = "errorMessage", default)]
    error_message: String,
}

/// Reads the failed step, the error name and the message out of a caught error. A Lambda error
/// names its step (`verify: …`); a timeout or crash does not: then it is the step after the last
/// one done.
fn read_caught(state: &TargetState, e: &CaughtError) -> (Step, String, String) {
    let (name, message) = match e
        .cause
        .as_deref()
        .and_then(|c| serde_json::from_str::<LambdaCause>(c).ok())
    {
        Some(c) => (
            if c.error_type.is_empty() {
                e.error.clone()
            } else {
                c.error_type
            },
            c.error_message,
        ),
        None => (e.error.clone(), e.cause.clone().unwrap_or_default()),
    };
    let named = message
        .split_once(": ")
        .and_then(|(head, _)| Step::ALL.iter().copied().find(|s| s.name() == head));
    let after_last = state
        .steps
        .last()
        .and_then(|last| Step::ALL.iter().copied().find(|s| s > last))
        .unwrap_or(Step::Inspect);
    let step = named.unwrap_or(after_last);
    let message = match named {
        Some(s) => message
            .strip_prefix(&format!("{}: ", s.name()))
            .unwrap_or(&message)
            .to_owned(),
        None if message.is_empty() => name.clone(),
        None => format!("{name}: {message}"),
    };
    (step, name, keyrotor_core::domain::mask_key_ids(&message))
}

/// **compensate**: after a failed step, undoes the rotation as far as is safe
/// (`protocol::compensate`, as the CLI's engine does) and returns the target's final state.
pub async fn compensate(input: CompensateInput, deps: &Deps) -> Result<TargetState, Diagnostic> {
    let mut s = input.state;
    let (step, name, message) = read_caught(&s, &input.error);
    s.failed_step = Some(step);
    s.error = Some(message);
    s.outcome = Some(if name == error_type::REFUSED {
        OutcomeName::Refused
    } else {
        OutcomeName::Failed
    });
    let run_id = s.run_id(Step::Report)?;
    let (target, _) = deps.target(Step::Report, &s).await?;
    // Before push finishes, undo; a failure after confirm leaves every endpoint on the new,
    // verified key and the old key kept (the next run finishes).
    let undo = s.new_key.is_none() || step <= Step::Confirm;
    if !undo {
        s.compensation = Some(format!(
            "every connection holds the new key {}; the old key is kept; the next run finishes {step}",
            s.new_key.as_ref().map_or_else(String::new, |k| k.masked())
        ));
        return Ok(s);
    }
    let ports = deps.ports(Step::Report).await?;
    if step >= Step::Push {
        // A failed push answers no state, so whether it sent a PUT is unknown here: assume it
        // did (compensation then insists on reading the connections before deleting the key).
        s.put_attempted = true;
    }
    let mut progress = s.progress(&target, run_id.clone());
    if progress.new_key.is_none() && progress.intent_version.is_none() {
        // `create` may have written our intent record before it failed; its version id is the
        // deterministic token, and compensation only takes the label off that very version.
        progress.intent_version = Some(run_id.token("intent"));
    }
    s.compensation = match protocol::compensate(&ports, &target, &progress).await {
        Compensation::Nothing => None,
        Compensation::Compensated(c) | Compensation::Partial(c) => Some(c),
    };
    Ok(s)
}

fn target_report(r: &IterationResult) -> TargetReport {
    let s = &r.state;
    let outcome = match (s.outcome, &r.error) {
        (Some(o), _) => o,
        (None, _) => OutcomeName::Failed,
    };
    let mut t = TargetReport::new(&s.target, outcome.into());
    t.old_key = s.old_key.as_ref().map(AccessKeyId::masked);
    t.new_key = s.new_key.as_ref().map(AccessKeyId::masked);
    t.failed_step = s.failed_step;
    t.error = s.error.clone();
    t.reason = s.reason.clone();
    t.compensation = s.compensation.clone();
    t.steps = s.steps.clone();
    if s.outcome.is_none() {
        let (step, _, message) =
            read_caught(s, r.error.as_ref().unwrap_or(&CaughtError::default()));
        t.failed_step = Some(step);
        t.error = Some(if message.is_empty() {
            "the target stopped without a result".into()
        } else {
            message
        });
        t.compensation = Some(
            "compensation did not run; run keyrotor (or the state machine) again: it resumes or cleans up"
                .into(),
        );
    }
    if matches!(
        t.outcome,
        Outcome::Failed | Outcome::Refused | Outcome::Invalid
    ) {
        t.next_step = Some(match t.outcome {
            Outcome::Refused => "fix what the error names, then run the rotation again".into(),
            Outcome::Invalid => "correct the configuration; nothing was changed".into(),
            _ => "read the failed execution's history, fix the cause and start a new execution"
                .into(),
        });
    }
    t
}

/// **report**: posts one Slack message for the whole run and returns a [`Summary`]. A failed
/// notification is logged and shown in the summary; it never fails the rotation.
pub async fn report(input: ReportInput, deps: &Deps) -> Result<Summary, Diagnostic> {
    let run = RunReport {
        run_id: input.run_id.clone(),
        origin: format!("{} execution {}", deps.origin, input.run_id),
        targets: input.results.iter().map(target_report).collect(),
        notification: NotificationStatus::NotConfigured,
    };
    // As the CLI's engine: a run where every target had nothing due or stood aside posts
    // nothing (a frequent schedule would otherwise post every time).
    let quiet = !run.targets.is_empty()
        && run
            .targets
            .iter()
            .all(|t| matches!(t.outcome, Outcome::NothingDue | Outcome::Busy));
    let notification = match deps.notifier().await {
        Ok(None) => "not-configured".to_owned(),
        Ok(Some(_)) if quiet => "skipped".to_owned(),
        Ok(Some(n)) => match n.notify(&run).await {
            Ok(()) => "sent".to_owned(),
            Err(e) => format!("failed: {}", e.message),
        },
        Err(e) => format!("failed: {e}"),
    };
    if let Some(e) = notification.strip_prefix("failed: ") {
        tracing::warn!(error = %e, "the Slack notification could not be sent; the rotation stands");
    }
    let count = |o: Outcome| run.targets.iter().filter(|t| t.outcome == o).count();
    let summary = Summary {
        run_id: run.run_id.clone(),
        rotated: count(Outcome::Rotated),
        nothing_due: count(Outcome::NothingDue),
        busy: count(Outcome::Busy),
        refused: count(Outcome::Refused),
        invalid: count(Outcome::Invalid),
        failed: count(Outcome::Failed),
        needs_attention: run.targets.iter().any(|t| {
            matches!(
                t.outcome,
                Outcome::Failed | Outcome::Refused | Outcome::Invalid
            )
        }),
        notification,
        targets: run
            .targets
            .iter()
            .map(|t| format!("{}: {}", t.name, t.outcome.name()))
            .collect(),
    };
    Ok(summary)
}
