//! The invocations' payloads: what the state machine sends each step and what comes back.
//! Ids, names and sentences only, never a secret (execution history keeps them for 90 days).

use keyrotor_core::machine::TargetState;
use keyrotor_core::report::NotificationStatus;
use serde::{Deserialize, Serialize};

/// A step's input: `{"step": "...", "state": {...}, "execution": "<ARN>"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct StateInput {
    /// The target's state so far.
    pub state: TargetState,
    /// The execution running the step (`$$.Execution.Id`, its ARN): recorded in the rotation's
    /// intent and owner lease, so that a contender asks Step Functions whether it still runs.
    #[serde(default)]
    pub execution: Option<String>,
}

impl StateInput {
    /// The state, with the execution that runs it (when the payload names one).
    pub fn into_state(self) -> TargetState {
        let mut state = self.state;
        if let Some(arn) = self.execution.filter(|a| !a.is_empty()) {
            state.progress.execution = Some(arn);
        }
        state
    }
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

impl CaughtError {
    /// The error name and message: a Lambda error's own, else Step Functions' name and cause.
    pub(crate) fn read(&self) -> (String, String) {
        #[derive(Deserialize)]
        struct LambdaCause {
            #[serde(rename = "errorType", default)]
            error_type: String,
            #[serde(rename = "errorMessage", default)]
            error_message: String,
        }
        match self
            .cause
            .as_deref()
            .and_then(|c| serde_json::from_str::<LambdaCause>(c).ok())
        {
            Some(c) if !c.error_type.is_empty() => (c.error_type, c.error_message),
            Some(c) => (self.error.clone(), c.error_message),
            None => (self.error.clone(), self.cause.clone().unwrap_or_default()),
        }
    }
}

/// `compensate`'s input: the state the failed step started from, and what the Catch caught.
#[derive(Debug, Clone, Deserialize)]
pub struct CompensateInput {
    /// The state before the failed step (its `next` names the step that failed).
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

/// `targets`' output: the Map's items, each a target's initial state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetsOutput {
    /// One initial state per target, in config order (`next` is `inspect`).
    pub targets: Vec<TargetState>,
}

/// One Map iteration's result: the target's last state, and the error if a Catch fired and even
/// compensation could not run.
#[derive(Debug, Clone, Deserialize)]
pub struct IterationResult {
    /// The target's state.
    pub state: TargetState,
    /// The error a Catch put there, if any.
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    /// Whether the notification went out (core's status); a failed one never fails the run.
    pub notification: NotificationStatus,
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
    /// Records a failed step and undoes the rotation as far as is safe.
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
