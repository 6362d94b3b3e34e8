//! Runs the protocol in-process (the CLI): every target through inspect → plan → cleanup →
//! create → verify → push → confirm → promote → retire, with compensation on failure, then one
//! report for the run.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::config::{Policy, Target};
use crate::domain::RunId;
use crate::plan::{self, Decision};
use crate::ports::{Endpoint, Notifier};
use crate::protocol::{self, Compensation, Ports, Progress, StepError, StepErrorKind};
use crate::report::{EndpointReport, NotificationStatus, Outcome, RunReport, Step, TargetReport};

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
}

struct Runner<'a> {
    ports: &'a Ports,
    policy: &'a Policy,
    target: &'a Target,
    opts: &'a RunOptions,
    observer: &'a Observer,
    report: TargetReport,
}

impl Runner<'_> {
    fn emit(&self, step: Step, phase: Phase) {
        (self.observer)(&Event {
            target: self.target.name.to_string(),
            step,
            phase,
        });
    }

    async fn step<T>(
        &mut self,
        step: Step,
        fut: impl Future<Output = Result<T, StepError>>,
    ) -> Result<T, StepError> {
        self.emit(step, Phase::Started);
        tracing::info!(target_name = %self.target.name, run_id = %self.opts.run_id, step = step.name(), "step started");
        let r = fut.await;
        match &r {
            Ok(_) => {
                self.report.steps.push(step);
                self.emit(step, Phase::Done);
            }
            Err(e) => {
                tracing::warn!(target_name = %self.target.name, run_id = %self.opts.run_id, step = step.name(), error = %e.message, "step failed");
                self.emit(step, Phase::Failed(e.message.clone()));
            }
        }
        r
    }

    fn fail(&mut self, e: &StepError) {
        self.report.outcome = match e.kind {
            StepErrorKind::Busy => Outcome::Busy,
            StepErrorKind::Refused => Outcome::Refused,
            StepErrorKind::Invalid => Outcome::Invalid,
            _ => Outcome::Failed,
        };
        if self.report.outcome == Outcome::Busy {
            self.report.reason = Some(e.message.clone());
        } else {
            self.report.failed_step = Some(e.step);
            self.report.error = Some(e.message.clone());
        }
        self.report.next_step = Some(next_step_for(e));
    }

    async fn run(mut self) -> TargetReport {
        let started = Instant::now();
        self.go().await;
        self.report.duration_ms = started.elapsed().as_millis() as u64;
        self.report
    }

    async fn go(&mut self) {
        let (ports, target, policy) = (self.ports, self.target, self.policy);
        let snap = match self
            .step(Step::Inspect, protocol::inspect(ports, target))
            .await
        {
            Ok(s) => s,
            Err(e) => return self.fail(&e),
        };
        let p = plan::plan(
            &snap,
            policy,
            ports.clock.now(),
            self.opts.run_id.as_str(),
            self.opts.force,
        );
        self.report.old_key = p.old_key.as_ref().map(|k| k.masked());
        self.report.new_key = p.new_key.as_ref().map(|k| k.masked());
        self.report.endpoints = endpoint_reports(&snap.endpoints);
        self.report.reason = Some(p.reason.clone());
        let outcome = match p.decision {
            Decision::Refuse => Some(Outcome::Refused),
            Decision::Invalid => Some(Outcome::Invalid),
            Decision::Busy => Some(Outcome::Busy),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.report.outcome = outcome;
            if outcome != Outcome::Busy {
                self.report.failed_step = Some(Step::Inspect);
                self.report.error = Some(if outcome == Outcome::Invalid {
                    // Every Invalid plan is about the secret: name it.
                    format!("secret '{}': {}", target.secret, p.reason)
                } else {
                    p.reason.clone()
                });
                self.report.next_step = Some(match outcome {
                    Outcome::Refused => {
                        "fix what the reason names, then run keyrotor again; nothing was changed"
                            .into()
                    }
                    _ => "correct the configuration or the secret; nothing was changed".into(),
                });
            }
            return;
        }
        if self.opts.dry_run {
            self.report.outcome = if p.decision == Decision::NothingDue {
                Outcome::NothingDue
            } else {
                Outcome::Rotated
            };
            return;
        }

        let mut progress = Progress::new(target, self.opts.run_id.clone());
        progress.old_key = p.old_key.clone();
        let tidy = p.clear_pending || !p.orphans.is_empty() || p.make_room.is_some();
        if tidy {
            let r = protocol::cleanup(
                ports,
                target,
                &self.opts.run_id,
                p.clear_pending,
                &p.orphans,
                p.make_room.as_ref(),
            );
            match self.step(Step::Cleanup, r).await {
                Ok(notes) if !notes.is_empty() => self.note(&notes.join("; ")),
                Ok(_) => {}
                Err(e) => return self.fail(&e),
            }
        }
        if p.decision == Decision::NothingDue {
            if let Some(old) = &p.finish_retire {
                let r = protocol::retire(
                    ports,
                    target,
                    policy,
                    Some(old),
                    None,
                    Some(p.finish_retire_delete),
                );
                match self.step(Step::Retire, r).await {
                    Ok(()) => self.note(&format!("finished retiring the previous key {old}")),
                    Err(e) => return self.fail(&e),
                }
            }
            self.report.outcome = Outcome::NothingDue;
            return;
        }

        if let Err(e) = self.rotate(&mut progress).await {
            self.fail(&e);
            let undo = progress.new_key.is_none()
                || (e.step <= Step::Confirm && e.kind != StepErrorKind::Busy);
            if undo {
                match protocol::compensate(ports, target, &progress).await {
                    Compensation::Nothing => {}
                    Compensation::Compensated(s) => self.report.compensation = Some(s),
                    Compensation::Partial(s) => self.report.compensation = Some(s),
                }
            } else {
                self.report.compensation = Some(format!(
                    "every connection holds the new key {}; the old key is kept; the next run finishes {}",
                    progress
                        .new_key
                        .as_ref()
                        .map_or_else(String::new, |k| k.masked()),
                    e.step
                ));
            }
            if let Ok(eps) = protocol::resolve_endpoints(ports, target, Step::Report).await {
                self.report.endpoints = endpoint_reports(&eps);
            }
            return;
        }
        self.report.outcome = Outcome::Rotated;
        self.report.new_key = progress.new_key.as_ref().map(|k| k.masked());
        if let Ok(eps) = protocol::resolve_endpoints(ports, target, Step::Report).await {
            self.report.endpoints = endpoint_reports(&eps);
        }
    }

    fn note(&mut self, s: &str) {
        let r = self.report.reason.get_or_insert_with(String::new);
        if !r.is_empty() {
            r.push_str("; ");
        }
        r.push_str(s);
    }

    async fn rotate(&mut self, progress: &mut Progress) -> Result<(), StepError> {
        let (ports, target, policy) = (self.ports, self.target, self.policy);
        self.step(
            Step::Create,
            protocol::create(ports, target, policy, progress),
        )
        .await?;
        self.report.new_key = progress.new_key.as_ref().map(|k| k.masked());
        self.step(
            Step::Verify,
            protocol::verify(ports, target, policy, progress, policy.verify_timeout),
        )
        .await?;
        self.step(Step::Push, protocol::push(ports, target, progress))
            .await?;
        self.step(Step::Confirm, protocol::confirm(ports, target, progress))
            .await?;
        self.step(Step::Promote, protocol::promote(ports, target, progress))
            .await?;
        let (old, new) = (progress.old_key.clone(), progress.new_key.clone());
        self.step(
            Step::Retire,
            protocol::retire(ports, target, policy, old.as_ref(), new.as_ref(), None),
        )
        .await?;
        Ok(())
    }
}

fn endpoint_reports(eps: &[Endpoint]) -> Vec<EndpointReport> {
    eps.iter()
        .map(|e| EndpointReport {
            endpoint: format!("{}/{}", e.handle.project, e.name),
            id: e.handle.id.clone(),
            key: e.key_id().map(|k| k.masked()),
        })
        .collect()
}

fn next_step_for(e: &StepError) -> String {
    match (e.kind, e.step) {
        (StepErrorKind::Busy, _) => "nothing to do: the other run finishes the rotation".into(),
        (StepErrorKind::Invalid, _) => "correct the configuration; nothing was changed".into(),
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

/// Rotates one target.
pub async fn run_target(
    ports: &Ports,
    policy: &Policy,
    target: &Target,
    opts: &RunOptions,
    observer: &Observer,
) -> TargetReport {
    let runner = Runner {
        ports,
        policy,
        target,
        opts,
        observer,
        report: TargetReport::new(target.name.as_str(), Outcome::Failed),
    };
    runner.run().await
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
    let mut reports: Vec<(usize, TargetReport)> = futures::stream::iter(targets.iter().enumerate())
        .map(|(i, t)| async move { (i, run_target(ports, policy, t, opts, observer).await) })
        .buffer_unordered(policy.concurrency.max(1))
        .collect()
        .await;
    reports.sort_by_key(|(i, _)| *i);
    let mut report = RunReport {
        run_id: opts.run_id.to_string(),
        origin: opts.origin.clone(),
        targets: reports.into_iter().map(|(_, r)| r).collect(),
        notification: NotificationStatus::NotConfigured,
    };
    let quiet = report
        .targets
        .iter()
        .all(|t| matches!(t.outcome, Outcome::NothingDue | Outcome::Busy));
    if let (Some(_), false, true) = (notifier, opts.dry_run, quiet) {
        report.notification = NotificationStatus::Skipped;
    } else if let (Some(n), false) = (notifier, opts.dry_run) {
        report.notification = match n.notify(&report).await {
            Ok(()) => NotificationStatus::Sent,
            Err(e) => {
                tracing::warn!(run_id = %opts.run_id, error = %e.message, "notification failed");
                NotificationStatus::Failed(e.message)
            }
        };
    }
    report
}
