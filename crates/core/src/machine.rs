//! The one state machine of a rotation, run by both drivers: the CLI's [`engine`](crate::engine)
//! loops over it in-process; the Lambda runs one transition per invocation, and the Step
//! Functions definition (`deploy/statemachine/rotate.asl.json`) routes between invocations on the
//! state's [`TargetState::next`], which this module sets. A test walks every transition in
//! [`TRANSITIONS`] and checks that the definition has the matching Task, Choice branch and error
//! route, so the two cannot drift apart.
//!
//! - [`TargetState`]: one target's state between steps — progress, plan, outcome. Ids and
//!   sentences only, never a secret: it is the Step Functions payload, and execution history
//!   keeps payloads for 90 days.
//! - [`advance`]: runs the step the state names as next, over the ports, and moves the state on.
//! - [`fail`]: records a failed step and decides the recovery ([`recovery`]): compensate, leave
//!   the rotation for the next run, or stand aside for another run.
//! - [`failed_elsewhere`]: the same for a step that failed in another process (a Lambda error,
//!   timeout or crash caught by the state machine), whose partial progress is unknown.
//! - [`target_report`], [`run_report`], [`notify`]: what a run did, and the one notification.
//!
//! (One file on purpose: the state, its transitions and the failure policy are read together,
//! and the Step Functions definition mirrors exactly this file.)

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Policy, Target};
use crate::domain::{AccessKeyId, RunId};
use crate::plan::{self, Decision, Plan, Retirement};
use crate::ports::{Endpoint, Notifier};
use crate::protocol::{self, Compensation, Ports, Progress, StepError, StepErrorKind};
use crate::report::{EndpointReport, NotificationStatus, Outcome, RunReport, Step, TargetReport};

/// Everything a transition needs besides the state.
pub struct Context<'a> {
    /// The adapters.
    pub ports: &'a Ports,
    /// The policy.
    pub policy: &'a Policy,
    /// The target, as configured.
    pub target: &'a Target,
    /// How long one `verify` may try. The CLI waits up to `policy.verify_timeout`; the Lambda
    /// tries briefly and lets the state machine's Retry do the waiting.
    pub verify_budget: Duration,
    /// Whether this driver waits out the drain before `retire` (Step Functions: a Wait state;
    /// the CLI: `--wait-for-drain`). When it does not, a rotation ends after `promote` with the
    /// old key Active until the drain is over, and a later run retires it.
    pub waits_for_drain: bool,
}

/// One target's state between steps. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetState {
    /// Ids carried from step to step (the target's name and the run id are in here).
    pub progress: Progress,
    /// Rotate even when the key is younger than `min_key_age`.
    #[serde(default)]
    pub force: bool,
    /// Only plan: `inspect` ends the target.
    #[serde(default)]
    pub dry_run: bool,
    /// The step to run next; `"done"` once the target has ended. The state machine's Choice
    /// states read this field.
    #[serde(with = "next_serde")]
    pub next: Option<Step>,
    /// What `inspect` planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// How the target ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The failed step and its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<StepError>,
    /// What was done about a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// Why (the planner's reason), and what was tidied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When `retire` may deactivate the old key: every connection holds the new key since
    /// `progress.confirmed_at`, and jobs that started before have had `policy.drain` to finish.
    /// The state machine's Wait state reads it (`TimestampPath`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time_serde")]
    pub retire_at: Option<std::time::SystemTime>,
    /// The connections and the key each held when last read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointReport>,
    /// Steps done, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// A time as RFC 3339 (what a Step Functions Wait state's `TimestampPath` reads).
pub(crate) mod time_serde {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        v: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339_weak(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `next` as a plain string: a step's name, or `"done"`.
mod next_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::report::Step;

    pub(super) fn serialize<S: Serializer>(v: &Option<Step>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.map_or("done", Step::name))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Step>, D::Error> {
        let name = String::deserialize(d)?;
        if name == "done" {
            return Ok(None);
        }
        Step::ALL
            .iter()
            .copied()
            .find(|s| s.name() == name)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("'{name}' is not a step")))
    }
}

impl TargetState {
    /// A target about to be inspected.
    pub fn new(target: &Target, run_id: RunId, force: bool) -> Self {
        Self {
            progress: Progress::new(target, run_id),
            force,
            dry_run: false,
            next: Some(Step::Inspect),
            plan: None,
            outcome: None,
            failure: None,
            compensation: None,
            reason: None,
            endpoints: Vec::new(),
            steps: Vec::new(),
            retire_at: None,
        }
    }

    /// The target's name.
    pub fn target(&self) -> &str {
        &self.progress.target
    }

    fn decision(&self) -> Option<Decision> {
        self.plan.as_ref().map(Plan::decision)
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

    fn end(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.next = None;
    }
}

/// Every transition of the machine: after a step succeeds, the steps that may follow it (`None`:
/// the target is done). A failed step goes to [`Step::Compensate`] or ends the target
/// ([`recovery`]). The Step Functions definition mirrors exactly this table (a test checks).
pub const TRANSITIONS: &[(Step, &[Option<Step>])] = &[
    (
        Step::Inspect,
        &[
            None,
            Some(Step::Cleanup),
            Some(Step::Create),
            Some(Step::Retire),
        ],
    ),
    (
        Step::Cleanup,
        &[None, Some(Step::Create), Some(Step::Retire)],
    ),
    (Step::Create, &[Some(Step::Verify)]),
    (Step::Verify, &[Some(Step::Push)]),
    (Step::Push, &[Some(Step::Confirm)]),
    (Step::Confirm, &[Some(Step::Promote)]),
    (Step::Promote, &[Some(Step::Retire), None]),
    (Step::Retire, &[None]),
    (Step::Compensate, &[None]),
];

/// What follows a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Undo what this run did (its new key, its intent record, connections it switched).
    Compensate,
    /// Every connection holds the new, verified key: keep it; the next run finishes the rotation.
    LeaveForNextRun,
    /// Another run owns this target's rotation: touch nothing of it.
    StandAside,
    /// Nothing of this run's exists yet: nothing to undo.
    Nothing,
}

/// Decides what follows a failed step. The failure policy exists here only.
pub fn recovery(state: &TargetState, e: &StepError) -> Recovery {
    if e.kind == StepErrorKind::Busy {
        return Recovery::StandAside;
    }
    let p = &state.progress;
    match e.step {
        // Before a key exists nothing of this run can be undone, except its intent record.
        _ if p.new_key.is_none() && p.intent_version.is_none() => Recovery::Nothing,
        Step::Inspect
        | Step::Cleanup
        | Step::Create
        | Step::Verify
        | Step::Push
        | Step::Confirm => Recovery::Compensate,
        // After confirm every connection holds the new key: undoing would switch them again.
        Step::Promote | Step::Retire if p.new_key.is_some() => Recovery::LeaveForNextRun,
        Step::Promote | Step::Retire => Recovery::Compensate,
        Step::Compensate | Step::Report => Recovery::Nothing,
    }
}

/// Records a failed step in the state and sets what follows: [`Step::Compensate`], or done.
pub fn fail(state: &mut TargetState, e: StepError) {
    let outcome = match e.kind {
        StepErrorKind::Busy => Outcome::Busy,
        StepErrorKind::Refused => Outcome::Refused,
        StepErrorKind::Invalid => Outcome::Invalid,
        _ => Outcome::Failed,
    };
    let recovery = recovery(state, &e);
    state.outcome = Some(outcome);
    state.next = None;
    match recovery {
        Recovery::Compensate => state.next = Some(Step::Compensate),
        Recovery::LeaveForNextRun => {
            // `compensate` only gives up this run's ownership, so the next run resumes at once.
            state.next = Some(Step::Compensate);
            state.compensation = Some(format!(
                "every connection holds the new key {}; the old key is kept; the next run finishes {}",
                state
                    .progress
                    .new_key
                    .as_ref()
                    .map_or_else(String::new, AccessKeyId::masked),
                e.step
            ));
        }
        Recovery::StandAside => state.note(&e.message),
        Recovery::Nothing => {}
    }
    if outcome != Outcome::Busy {
        state.failure = Some(e);
    }
}

/// The error names a step failure leaves a Lambda with (`Diagnostic::error_type`); the state
/// machine's Retry and Catch match them. One per [`StepErrorKind`].
pub fn error_name(kind: StepErrorKind) -> &'static str {
    match kind {
        StepErrorKind::Retryable => "Rotation.Retryable",
        StepErrorKind::NotPropagated => "Rotation.NotPropagated",
        StepErrorKind::Busy => "Rotation.Busy",
        StepErrorKind::Refused => "Rotation.Refused",
        StepErrorKind::Invalid => "Rotation.Invalid",
        StepErrorKind::Failed => "Rotation.Failed",
    }
}

/// Every kind, for tests that check the error routes.
pub const ERROR_KINDS: [StepErrorKind; 6] = [
    StepErrorKind::Retryable,
    StepErrorKind::NotPropagated,
    StepErrorKind::Busy,
    StepErrorKind::Refused,
    StepErrorKind::Invalid,
    StepErrorKind::Failed,
];

/// Records a step that failed in another process: the state machine caught `error_name`
/// (one of [`error_name`]'s, or a Step Functions error such as `States.Timeout`) with
/// `message`. The failed step is the one the state named as next. What the step did before it
/// failed is unknown, so the worst is assumed: a push may have sent a PUT, a create may have
/// written this run's intent record (whose version id is its deterministic request token).
pub fn failed_elsewhere(state: &mut TargetState, error_name_: &str, message: &str) {
    let step = state.next.unwrap_or(Step::Inspect);
    let kind = ERROR_KINDS
        .iter()
        .copied()
        .find(|k| error_name(*k) == error_name_)
        .unwrap_or(StepErrorKind::Failed);
    let message = if ERROR_KINDS.iter().any(|k| error_name(*k) == error_name_) {
        message.to_owned()
    } else if message.is_empty() {
        format!("the step stopped without a result ({error_name_})")
    } else {
        format!("the step stopped without a result ({error_name_}: {message})")
    };
    let p = &mut state.progress;
    match step {
        Step::Push => p.put_attempted = true,
        Step::Create if p.new_key.is_none() && p.intent_version.is_none() => {
            p.intent_version = Some(p.run_id.token("intent"));
        }
        _ => {}
    }
    fail(state, StepError::new(step, kind, redact(&message)));
}

/// Redacts what may leave keyrotor (errors, Lambda diagnostics, reports, notifications): see
/// [`crate::domain::redact`].
pub fn redact(s: &str) -> String {
    crate::domain::redact(s)
}

/// Runs the step `state.next` names and moves the state on. On error the state keeps what the
/// step did before it failed; pass the error to [`fail`].
pub async fn advance(cx: &Context<'_>, state: &mut TargetState) -> Result<(), StepError> {
    let Some(step) = state.next else {
        return Ok(());
    };
    let (ports, policy, target) = (cx.ports, cx.policy, cx.target);
    match step {
        Step::Inspect => {
            let snap = protocol::inspect(ports, target).await?;
            let p = plan::plan(
                &snap,
                policy,
                ports.clock.now(),
                state.progress.run_id.as_str(),
                state.force,
            );
            state.endpoints = endpoint_reports(&snap.endpoints);
            // Resolved once, here: every later step reads them by id.
            state.progress.endpoints = protocol::handles_of(&snap.endpoints);
            after_inspect(state, p, target);
        }
        Step::Cleanup => {
            let tidy = state
                .plan
                .as_ref()
                .and_then(Plan::tidy)
                .cloned()
                .unwrap_or_default();
            let notes = protocol::cleanup(ports, target, &state.progress.run_id, &tidy).await?;
            if !notes.is_empty() {
                state.note(&notes.join("; "));
            }
            state.next = after_tidying(state);
            if state.next.is_none() {
                state.outcome = Some(Outcome::NothingDue);
            }
        }
        Step::Create => {
            protocol::create(ports, target, policy, &mut state.progress).await?;
            state.next = Some(Step::Verify);
        }
        Step::Verify => {
            protocol::verify(ports, target, policy, &mut state.progress, cx.verify_budget).await?;
            state.next = Some(Step::Push);
        }
        Step::Push => {
            let unlisted = protocol::push(ports, target, policy, &mut state.progress).await?;
            if !unlisted.is_empty() {
                state.note(&format!(
                    "also updated {} that held the old key and are not in the config (policy.update_unlisted_connections): {}",
                    if unlisted.len() == 1 { "1 connection" } else { "connections" },
                    unlisted.join(", ")
                ));
            }
            state.next = Some(Step::Confirm);
        }
        Step::Confirm => {
            let read = protocol::confirm(ports, target, &state.progress).await?;
            // The report shows the connections as confirm read them back; nothing later in a
            // rotation changes them.
            state.endpoints = endpoint_reports(&read);
            state.progress.confirmed_at = Some(ports.clock.now());
            state.next = Some(Step::Promote);
        }
        Step::Promote => {
            protocol::promote(ports, target, policy, &mut state.progress).await?;
            // Running jobs finish: the old key stays Active for the drain after the push.
            let now = ports.clock.now();
            let due = state.progress.confirmed_at.unwrap_or(now) + policy.drain;
            state.retire_at = Some(due);
            if due <= now || cx.waits_for_drain {
                state.next = Some(Step::Retire);
            } else {
                let old = state
                    .progress
                    .old_key
                    .as_ref()
                    .map_or_else(String::new, AccessKeyId::masked);
                state.note(&format!(
                    "the old key {old} stays Active until {} (policy.drain) so that jobs started before the push can finish; the first run after that retires it",
                    humantime::format_rfc3339_seconds(due)
                ));
                state.end(Outcome::Rotated);
            }
        }
        Step::Retire => {
            if state.decision() == Some(Decision::NothingDue) {
                if let Some(r) = state.plan.as_ref().and_then(Plan::finish_retire).cloned() {
                    protocol::retire(ports, target, &r).await?;
                    state.note(&format!("finished retiring the previous key {}", r.key));
                }
                state.end(Outcome::NothingDue);
            } else {
                if let Some(at) = state.retire_at
                    && at > ports.clock.now() + Duration::from_secs(1)
                {
                    return Err(StepError::new(
                        Step::Retire,
                        StepErrorKind::Retryable,
                        format!(
                            "retire was asked for before the drain ends ({}); the old key stays Active until then",
                            humantime::format_rfc3339_seconds(at)
                        ),
                    ));
                }
                let p = &state.progress;
                if let Some(old) = p
                    .old_key
                    .as_ref()
                    .filter(|o| Some(*o) != p.new_key.as_ref())
                {
                    let r = Retirement {
                        key: old.clone(),
                        delete: policy.delete_old_key_after.is_zero(),
                        unused_after: p
                            .confirmed_at
                            .map(|t| crate::plan::last_use_cutoff(t, policy)),
                        successor: p.new_key.clone(),
                    };
                    protocol::retire_confirmed(ports, target, &r, p.confirmed_at).await?;
                }
                state.end(Outcome::Rotated);
            }
        }
        Step::Compensate => {
            let leave = state
                .failure
                .as_ref()
                .is_some_and(|f| recovery(state, f) == Recovery::LeaveForNextRun);
            let done = if leave {
                Compensation::Nothing
            } else {
                protocol::compensate(ports, target, &state.progress).await
            };
            // Whatever this run leaves at AWSPENDING is for the next run: give up the ownership
            // now instead of holding every other run off until the lease expires.
            if leave || matches!(done, Compensation::Partial(_)) {
                protocol::release(ports, target, &state.progress).await;
            }
            match done {
                Compensation::Nothing => {}
                Compensation::Compensated(s) | Compensation::Partial(s) => {
                    state.compensation = Some(s)
                }
                Compensation::StoodAside(s) => {
                    // The rotation is another run's now: this target stood aside.
                    if let Some(f) = state.failure.take() {
                        state.note(&format!("{} failed: {}", f.step, f.message));
                    }
                    state.note(&s);
                    state.outcome = Some(Outcome::Busy);
                }
            }
            state.next = None;
        }
        Step::Report => state.next = None,
    }
    state.steps.push(step);
    Ok(())
}

/// What follows `inspect`, from the plan.
fn after_inspect(state: &mut TargetState, p: Plan, target: &Target) {
    state.progress.old_key = p.old_key().cloned();
    // A resumed key becomes this run's new key only when `create` finds it at AWSPENDING, so a
    // failed resume is never compensated by deleting a key this run did not take on.
    state.progress.new_key = None;
    state.progress.pending_version = None;
    state.progress.intent_version = None;
    state.reason = Some(p.reason().to_owned());
    let decision = p.decision();
    let reason = p.reason().to_owned();
    state.plan = Some(p);
    match decision {
        Decision::Refuse => {
            state.end(Outcome::Refused);
            state.failure = Some(StepError::new(
                Step::Inspect,
                StepErrorKind::Refused,
                reason,
            ));
        }
        Decision::Invalid => {
            state.end(Outcome::Invalid);
            // Every invalid plan is about the secret: name it.
            state.failure = Some(StepError::new(
                Step::Inspect,
                StepErrorKind::Invalid,
                format!("secret '{}': {reason}", target.secret),
            ));
        }
        Decision::Busy => state.end(Outcome::Busy),
        _ if state.dry_run => state.end(if decision == Decision::NothingDue {
            Outcome::NothingDue
        } else {
            Outcome::Rotated
        }),
        Decision::NothingDue | Decision::Rotate | Decision::Resume => {
            let tidy = state
                .plan
                .as_ref()
                .and_then(Plan::tidy)
                .is_some_and(|t| !t.is_empty());
            state.next = if tidy {
                Some(Step::Cleanup)
            } else {
                after_tidying(state)
            };
            if state.next.is_none() {
                state.outcome = Some(Outcome::NothingDue);
            }
        }
    }
}

/// What follows once leftovers are tidied: the rotation, finishing an earlier retirement, or
/// nothing.
fn after_tidying(state: &TargetState) -> Option<Step> {
    match &state.plan {
        Some(p) if p.decision() == Decision::NothingDue => p.finish_retire().map(|_| Step::Retire),
        _ => Some(Step::Create),
    }
}

/// The connections as the report shows them.
pub fn endpoint_reports(eps: &[Endpoint]) -> Vec<EndpointReport> {
    eps.iter()
        .map(|e| EndpointReport {
            endpoint: format!("{}/{}", e.handle.project, e.name),
            id: e.handle.id.clone(),
            key: e.key_id().map(|k| k.masked()),
        })
        .collect()
}

/// What a person should do after a failure.
fn next_step_for(e: &StepError, planned: Option<Decision>) -> String {
    match (e.kind, e.step) {
        (StepErrorKind::Busy, _) => "nothing to do: the other run finishes the rotation".into(),
        (StepErrorKind::Invalid, Step::Inspect) if planned == Some(Decision::Invalid) => {
            "correct the configuration or the secret; nothing was changed".into()
        }
        (StepErrorKind::Invalid, _) => "correct the configuration; nothing was changed".into(),
        (StepErrorKind::Refused, Step::Inspect) => {
            "fix what the reason names, then run keyrotor again; nothing was changed".into()
        }
        (StepErrorKind::Refused, _) => "fix what the error names, then run keyrotor again".into(),
        (StepErrorKind::NotPropagated, _) => {
            "check IAM (policies that deny the user, SCPs), then run keyrotor again".into()
        }
        (_, Step::Inspect | Step::Cleanup | Step::Create) => {
            "fix the cause and run keyrotor again; pipelines were not affected".into()
        }
        (_, Step::Verify | Step::Push | Step::Confirm) => {
            "fix the cause (Azure DevOps access, the PAT) and run keyrotor again".into()
        }
        _ => "run keyrotor again: it resumes from where this run stopped".into(),
    }
}

/// One target's report, from its final state.
pub fn target_report(state: &TargetState) -> TargetReport {
    let outcome = state.outcome.unwrap_or(Outcome::Failed);
    let mut t = TargetReport::new(state.target(), outcome);
    let plan = state.plan.as_ref();
    // The run's own key ids, else the plan's (a target that ended before create), masked.
    let masked = |own: &Option<AccessKeyId>, planned: fn(&Plan) -> Option<&AccessKeyId>| {
        own.as_ref()
            .or(plan.and_then(planned))
            .map(AccessKeyId::masked)
    };
    t.old_key = masked(&state.progress.old_key, Plan::old_key);
    t.new_key = masked(&state.progress.new_key, Plan::new_key);
    t.reason = state.reason.clone();
    t.compensation = state.compensation.clone();
    t.endpoints = state.endpoints.clone();
    t.steps = state.steps.clone();
    if let Some(f) = &state.failure {
        t.failed_step = Some(f.step);
        t.error = Some(redact(&f.message));
        t.next_step = Some(next_step_for(f, state.decision()));
    } else if outcome == Outcome::Busy {
        t.next_step = Some("nothing to do: the other run finishes the rotation".into());
    }
    if state.outcome.is_none() {
        let step = state.next.unwrap_or(Step::Inspect);
        t.failed_step = Some(step);
        t.error = Some("the target stopped without a result".into());
        t.compensation = Some(
            "compensation did not run; run keyrotor (or the state machine) again: it resumes or cleans up"
                .into(),
        );
        t.next_step = Some(next_step_for(
            &StepError::new(step, StepErrorKind::Failed, ""),
            state.decision(),
        ));
    }
    t.reason = t.reason.map(|r| redact(&r));
    t
}

/// A run's report, before it is notified.
pub fn run_report(run_id: &str, origin: &str, targets: Vec<TargetReport>) -> RunReport {
    RunReport {
        run_id: run_id.to_owned(),
        origin: origin.to_owned(),
        targets,
        notification: NotificationStatus::NotConfigured,
    }
}

/// Whether a run is quiet: no target changed anything or needs a person (every one had nothing
/// due or stood aside; an empty run too). A quiet run posts nothing, or a frequent schedule
/// would post every time.
pub fn is_quiet(report: &RunReport) -> bool {
    report
        .targets
        .iter()
        .all(|t| matches!(t.outcome, Outcome::NothingDue | Outcome::Busy))
}

/// Sends the run's one notification (unless the run is quiet or only planned) and records how
/// it went. A failed notification never undoes a rotation.
pub async fn notify(report: &mut RunReport, notifier: Option<&dyn Notifier>, dry_run: bool) {
    report.notification = match notifier {
        None => NotificationStatus::NotConfigured,
        Some(_) if dry_run => NotificationStatus::NotConfigured,
        Some(_) if is_quiet(report) => NotificationStatus::Skipped,
        Some(n) => match n.notify(report).await {
            Ok(()) => NotificationStatus::Sent,
            Err(e) => {
                tracing::warn!(run_id = %report.run_id, error = %e.message, "the notification could not be sent; the rotation stands");
                NotificationStatus::Failed(redact(&e.message))
            }
        },
    };
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
