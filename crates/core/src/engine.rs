//! Runs the rotation in-process (the CLI): every target through the one state machine of
//! [`machine`](crate::machine), in batches that move step by step together (see [`run`]), then
//! one report and one notification for the run. Nothing here decides what follows a step or a
//! failure: the machine does.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let mut run = TargetRun::new(ports, policy, target, opts);
    while run.state.next.is_some() {
        run.wait_for_drain().await;
        run.step(observer).await;
    }
    run.finish().await
}

/// How many targets move through the protocol together. Every target of a batch runs a step
/// before any of them runs the next one, so that one listing serves the batch's pushes, one its
/// confirms and one organization-wide scan its retires (see [`SharedReads`]). A hundred keeps a
/// batch's time from `create` to `push` (its verifies, `policy.concurrency` at a time) well
/// inside the owner lease, and the read before a PUT young.
pub const BATCH: usize = 100;

/// Rotates every target, then notifies once. Targets go in batches of [`BATCH`], the targets of
/// one project side by side; within a batch, step by step (each step at most
/// `policy.concurrency` targets at once), so that a fleet spends Azure DevOps' request budget
/// on the PUTs and not on reading the same connections again.
pub async fn run(
    ports: &Ports,
    policy: &Policy,
    targets: &[Target],
    opts: &RunOptions,
    notifier: Option<&dyn Notifier>,
    observer: &Observer,
) -> RunReport {
    // Reads that can serve several targets are shared between them (see `shared`).
    let shared = Arc::new(SharedReads::new(ports.ado.clone(), ports.clock.clone()));
    let ports = &Ports {
        ado: shared.clone(),
        ..ports.clone()
    };
    let project = |t: &Target| {
        let first = t
            .endpoints
            .first()
            .map(|e| e.project.as_str().to_ascii_lowercase());
        (t.organization.as_str().to_owned(), first)
    };
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_cached_key(|&i| project(&targets[i]));
    let mut reports: Vec<Option<TargetReport>> = vec![None; targets.len()];
    for batch in order.chunks(BATCH) {
        let mut runs: Vec<TargetRun> = batch
            .iter()
            .map(|&i| TargetRun::new(ports, policy, &targets[i], opts))
            .collect();
        // Steps only move forward (`machine::TRANSITIONS`): the earliest one any target is at.
        while let Some(step) = runs.iter().filter_map(|r| r.state.next).min() {
            let group: Vec<&mut TargetRun> = runs
                .iter_mut()
                .filter(|r| r.state.next == Some(step))
                .collect();
            // Push and confirm read the group's connections by id: one read serves them all.
            let reads = match step {
                Step::Push | Step::Confirm => group
                    .iter()
                    .flat_map(|r| r.state.progress.endpoints.iter().cloned())
                    .collect(),
                _ => Vec::new(),
            };
            shared.begin_step(reads).await;
            if step == Step::Retire
                && let Some(left) = group.iter().filter_map(|r| r.drain_left()).max()
            {
                tracing::info!(run_id = %opts.run_id, wait_s = left.as_secs(), targets = group.len(), "waiting out the drain before retiring the old keys");
                tokio::time::sleep(left).await;
            }
            futures::stream::iter(group)
                .for_each_concurrent(policy.concurrency.max(1), |r| r.step(observer))
                .await;
        }
        shared.begin_step(Vec::new()).await;
        for (&i, r) in batch.iter().zip(runs) {
            reports[i] = Some(r.finish().await);
        }
    }
    let mut report = machine::run_report(
        opts.run_id.as_str(),
        &opts.origin,
        reports.into_iter().flatten().collect(),
    );
    machine::notify(&mut report, notifier, opts.dry_run).await;
    report
}

/// One target on its way through the machine: its state, and when its first step started.
struct TargetRun<'a> {
    cx: Context<'a>,
    state: TargetState,
    /// When its first step started, and when its last one ended.
    started: Option<Instant>,
    ended: Option<Instant>,
    opts: &'a RunOptions,
}

impl<'a> TargetRun<'a> {
    fn new(ports: &'a Ports, policy: &'a Policy, target: &'a Target, opts: &'a RunOptions) -> Self {
        let mut state = TargetState::new(target, opts.run_id.clone(), opts.force);
        state.dry_run = opts.dry_run;
        Self {
            cx: Context {
                ports,
                policy,
                target,
                verify_budget: policy.verify_timeout,
                waits_for_drain: opts.wait_for_drain,
            },
            state,
            started: None,
            ended: None,
            opts,
        }
    }

    /// Runs the step the state names as next; [`machine::fail`] decides what follows a failure.
    async fn step(&mut self, observer: &Observer) {
        let Some(step) = self.state.next else {
            return;
        };
        self.started.get_or_insert_with(Instant::now);
        let (target, run_id) = (&self.cx.target.name, &self.opts.run_id);
        let emit = |phase: Phase| {
            observer(&Event {
                target: target.to_string(),
                step,
                phase,
            })
        };
        emit(Phase::Started);
        tracing::info!(target_name = %target, run_id = %run_id, step = step.name(), "step started");
        match machine::advance(&self.cx, &mut self.state).await {
            Ok(()) => emit(Phase::Done),
            Err(e) => {
                tracing::warn!(target_name = %target, run_id = %run_id, step = step.name(), error = %e.message, "step failed");
                emit(Phase::Failed(e.message.clone()));
                machine::fail(&mut self.state, e);
            }
        }
        if self.state.next.is_none() {
            self.ended = Some(Instant::now());
        }
    }

    /// Waits until the drain of this target is over, if `retire` is next and it is not yet.
    async fn wait_for_drain(&self) {
        if self.state.next == Some(Step::Retire)
            && let Some(left) = self.drain_left()
        {
            tracing::info!(target_name = %self.cx.target.name, run_id = %self.opts.run_id, wait_s = left.as_secs(), "waiting out the drain before retiring the old key");
            tokio::time::sleep(left).await;
        }
    }

    fn drain_left(&self) -> Option<Duration> {
        let at = self.state.retire_at?;
        at.duration_since(self.cx.ports.clock.now()).ok()
    }

    /// The target's report. A rotation that got as far as creating a key may have switched
    /// connections: it shows where each one is now.
    async fn finish(self) -> TargetReport {
        let (ports, target, state) = (self.cx.ports, self.cx.target, self.state);
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
        // connection changes after it. Otherwise read them again, by id when inspect resolved
        // them.
        let confirmed =
            state.outcome == Some(Outcome::Rotated) && state.steps.contains(&Step::Confirm);
        let mut endpoints = None;
        if rotating && !confirmed {
            let read = if state.progress.endpoints.is_empty() {
                protocol::resolve_endpoints(ports, target, Step::Report).await
            } else {
                protocol::read_handles(ports, &state.progress.endpoints, Step::Report).await
            };
            endpoints = read.ok().map(|eps| machine::endpoint_reports(&eps));
        }
        let mut state = state;
        if let Some(eps) = endpoints {
            state.endpoints = eps;
        }
        let mut report = machine::target_report(&state);
        report.duration_ms = match (self.started, self.ended) {
            (Some(s), Some(e)) => e.duration_since(s).as_millis() as u64,
            (Some(s), None) => s.elapsed().as_millis() as u64,
            _ => 0,
        };
        report
    }
}
