//! Runs the rotation in-process (the CLI): every target through the one state machine of
//! [`machine`](crate::machine), a few at a time, then one report and one notification for the
//! run. Nothing here decides what follows a step or a failure: the machine does.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::config::{Policy, Target};
use crate::domain::RunId;
use crate::machine::{self, Context, TargetState};
use crate::plan::Plan;
use crate::ports::Notifier;
use crate::protocol::{self, Ports};
use crate::report::{Outcome, RunReport, Step, TargetReport};
use crate::shared::SharedReads;

/// A progress event, for the live progress line and logs.
#[derive(Debug, Clone)]
pub struct Event {
    /// The target.
    pub target: String,
    /// The step.
    pub step: Step,
    /// Started, or finished (ok or not).
    pub phase: Phase,
}

/// Where a step is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Started.
    Started,
    /// Finished.
    Done,
    /// Failed with this message.
    Failed(String),
}

/// Receives progress events.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// Options of one run.
#[derive(Clone)]
pub struct RunOptions {
    /// The run id.
    pub run_id: RunId,
    /// Rotate even when the key is younger than `min_key_age`.
    pub force: bool,
    /// Only plan: change nothing.
    pub dry_run: bool,
    /// Where the run happens (host name or execution), for the report.
    pub origin: String,
    /// Wait out the drain and retire the old key in this run (else a later run retires it).
    pub wait_for_drain: bool,
}

/// Rotates one target: a loop over [`machine::advance`], from `inspect` until the state says
/// done, with [`machine::fail`] deciding what follows a failure (the same decisions the Step
/// Functions definition routes on).
pub async fn run_target(
    ports: &Ports,
    policy: &Policy,
    target: &Target,
    opts: &RunOptions,
    observer: &Observer,
) -> TargetReport {
    let started = Instant::now();
    let cx = Context {
        ports,
        policy,
        target,
        verify_budget: policy.verify_timeout,
        waits_for_drain: opts.wait_for_drain,
    };
    let mut state = TargetState::new(target, opts.run_id.clone(), opts.force);
    state.dry_run = opts.dry_run;
    let emit = |step: Step, phase: Phase| {
        observer(&Event {
            target: target.name.to_string(),
            step,
            phase,
        })
    };
    while let Some(step) = state.next {
        if step == Step::Retire
            && let Some(at) = state.retire_at
            && let Ok(left) = at.duration_since(ports.clock.now())
        {
            tracing::info!(target_name = %target.name, run_id = %opts.run_id, wait_s = left.as_secs(), "waiting out the drain before retiring the old key");
            tokio::time::sleep(left).await;
        }
        emit(step, Phase::Started);
        tracing::info!(target_name = %target.name, run_id = %opts.run_id, step = step.name(), "step started");
        match machine::advance(&cx, &mut state).await {
            Ok(()) => emit(step, Phase::Done),
            Err(e) => {
                tracing::warn!(target_name = %target.name, run_id = %opts.run_id, step = step.name(), error = %e.message, "step failed");
                emit(step, Phase::Failed(e.message.clone()));
                machine::fail(&mut state, e);
            }
        }
    }
    // A rotation that got as far as creating a key may have switched connections: show where
    // each one is now.
    let rotating = state
        .plan
        .as_ref()
        .is_some_and(|p| matches!(p, Plan::Rotate { .. } | Plan::Resume { .. }))
        && !state.dry_run
        && (state.steps.contains(&Step::Create)
            || state
                .failure
                .as_ref()
                .is_some_and(|f| f.step == Step::Create));
    // A rotation that ended after confirm shows confirm's read (the machine kept it): no
    // connection changes after it. Otherwise read them again, by id when inspect resolved them.
    let confirmed = state.outcome == Some(Outcome::Rotated) && state.steps.contains(&Step::Confirm);
    if rotating && !confirmed {
        let read = if state.progress.endpoints.is_empty() {
            protocol::resolve_endpoints(ports, target, Step::Report).await
        } else {
            protocol::read_handles(ports, &state.progress.endpoints, Step::Report).await
        };
        if let Ok(eps) = read {
            state.endpoints = machine::endpoint_reports(&eps);
        }
    }
    let mut report = machine::target_report(&state);
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// Rotates every target (at most `policy.concurrency` at once), then notifies once.
pub async fn run(
    ports: &Ports,
    policy: &Policy,
    targets: &[Target],
    opts: &RunOptions,
    notifier: Option<&dyn Notifier>,
    observer: &Observer,
) -> RunReport {
    // Reads that can serve several targets are shared between them (see `shared`).
    let ports = &Ports {
        ado: Arc::new(SharedReads::new(ports.ado.clone(), ports.clock.clone())),
        ..ports.clone()
    };
    let mut reports: Vec<(usize, TargetReport)> = futures::stream::iter(targets.iter().enumerate())
        .map(|(i, t)| async move { (i, run_target(ports, policy, t, opts, observer).await) })
        .buffer_unordered(policy.concurrency.max(1))
        .collect()
        .await;
    reports.sort_by_key(|(i, _)| *i);
    let mut report = machine::run_report(
        opts.run_id.as_str(),
        &opts.origin,
        reports.into_iter().map(|(_, r)| r).collect(),
    );
    machine::notify(&mut report, notifier, opts.dry_run).await;
    report
}
