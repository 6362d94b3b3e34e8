//! What a run did: one [`TargetReport`] per target, gathered in a [`RunReport`]. This is what
//! the CLI prints (text or JSON), what Slack shows and what the exit code is made from. It holds
//! masked key ids and readable sentences, never a secret.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The protocol's steps, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Read keys, secret stages, endpoints; plan.
    Inspect,
    /// Delete leftovers.
    Cleanup,
    /// Create (or resume) the new key and store it at AWSPENDING.
    Create,
    /// Prove the new key works.
    Verify,
    /// Update every endpoint in place.
    Push,
    /// Read every endpoint back.
    Confirm,
    /// Move AWSCURRENT to the new key.
    Promote,
    /// Deactivate and delete the old key.
    Retire,
    /// Undo a failed rotation as far as is safe (only after a failure).
    Compensate,
    /// Notify.
    Report,
}

impl Step {
    /// The steps of a rotation with nothing to tidy, in order: [`Step::ALL`] up to retire,
    /// without cleanup.
    pub const ROTATION: [Step; 7] = {
        let [
            inspect,
            _cleanup,
            create,
            verify,
            push,
            confirm,
            promote,
            retire,
            ..,
        ] = Self::ALL;
        [inspect, create, verify, push, confirm, promote, retire]
    };

    /// Every step, in protocol order (the state machine has the same list; a test checks).
    pub const ALL: [Step; 10] = [
        Step::Inspect,
        Step::Cleanup,
        Step::Create,
        Step::Verify,
        Step::Push,
        Step::Confirm,
        Step::Promote,
        Step::Retire,
        Step::Compensate,
        Step::Report,
    ];

    /// The step's name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Inspect => "inspect",
            Step::Cleanup => "cleanup",
            Step::Create => "create",
            Step::Verify => "verify",
            Step::Push => "push",
            Step::Confirm => "confirm",
            Step::Promote => "promote",
            Step::Retire => "retire",
            Step::Compensate => "compensate",
            Step::Report => "report",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a target's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new key is in every endpoint and AWSCURRENT; the old one is retired.
    Rotated,
    /// The key is younger than `min_key_age`.
    NothingDue,
    /// Another run is rotating this target now; this one stood aside.
    Busy,
    /// Unsafe to rotate: a person must act (reason given).
    Refused,
    /// The configuration names something that does not exist or cannot be used.
    Invalid,
    /// A step failed; see `failed_step`, `error` and `compensation`.
    Failed,
}

impl Outcome {
    /// The name used in JSON and text.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Rotated => "rotated",
            Outcome::NothingDue => "nothing-due",
            Outcome::Busy => "busy",
            Outcome::Refused => "refused",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

/// Which key one endpoint holds after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EndpointReport {
    /// `project/name`.
    pub endpoint: String,
    /// Its id.
    pub id: crate::domain::EndpointId,
    /// The key it holds (masked), if known.
    pub key: Option<String>,
}

/// What happened to one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// The target's name.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The key pipelines used before (masked).
    pub old_key: Option<String>,
    /// The key rotated in (masked).
    pub new_key: Option<String>,
    /// The step that failed.
    pub failed_step: Option<Step>,
    /// The error, one sentence.
    pub error: Option<String>,
    /// Why it was refused, busy or nothing due; what was tidied.
    pub reason: Option<String>,
    /// What keyrotor did about a failure.
    pub compensation: Option<String>,
    /// What a person should do next.
    pub next_step: Option<String>,
    /// The endpoints and the key each holds.
    pub endpoints: Vec<EndpointReport>,
    /// Steps done, in order.
    pub steps: Vec<Step>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

impl TargetReport {
    /// An empty report for a target.
    pub fn new(name: &str, outcome: Outcome) -> Self {
        Self {
            name: name.into(),
            outcome,
            old_key: None,
            new_key: None,
            failed_step: None,
            error: None,
            reason: None,
            compensation: None,
            next_step: None,
            endpoints: Vec::new(),
            steps: Vec::new(),
            duration_ms: 0,
        }
    }

    /// The duration.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }
}

/// Whether the run's notification went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "error")]
pub enum NotificationStatus {
    /// No notifier configured.
    NotConfigured,
    /// Posted.
    Sent,
    /// Not posted: every target had nothing due or stood aside, so nothing happened that a
    /// person needs to read (a daily schedule would otherwise post every day).
    Skipped,
    /// Could not be posted; the rotation stands.
    Failed(String),
}

/// What one run did, for all its targets.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run id.
    pub run_id: String,
    /// Where it ran (host, or the Step Functions execution).
    pub origin: String,
    /// One per target, in config order.
    pub targets: Vec<TargetReport>,
    /// Whether the notification went out.
    pub notification: NotificationStatus,
}

/// The CLI's exit codes (also in the README and `--help`).
pub mod exit {
    /// Every target rotated or had nothing due.
    pub const OK: i32 = 0;
    /// A rotation failed (and was compensated, or left safe; see the report).
    pub const FAILED: i32 = 1;
    /// Bad usage or configuration (including names that do not exist); nothing changed.
    pub const USAGE: i32 = 2;
    /// Refused as unsafe; nothing changed.
    pub const REFUSED: i32 = 3;
    /// Every rotation is fine but the notification could not be sent.
    pub const NOTIFY_FAILED: i32 = 4;
    /// A target stood aside for another run that owns its rotation (nothing failed, nothing was
    /// refused): this run did not do that target's work, so a script or scheduler must not read
    /// it as done.
    pub const BUSY: i32 = 5;
}

impl RunReport {
    /// Whether a person must act: a target failed, was refused, or is misconfigured.
    pub fn needs_attention(&self) -> bool {
        self.targets.iter().any(|t| {
            matches!(
                t.outcome,
                Outcome::Failed | Outcome::Refused | Outcome::Invalid
            )
        })
    }

    /// The exit code: failed beats refused beats invalid beats stood aside beats a failed
    /// notification.
    pub fn exit_code(&self) -> i32 {
        let has = |o: Outcome| self.targets.iter().any(|t| t.outcome == o);
        if has(Outcome::Failed) {
            exit::FAILED
        } else if has(Outcome::Refused) {
            exit::REFUSED
        } else if has(Outcome::Invalid) {
            exit::USAGE
        } else if has(Outcome::Busy) {
            exit::BUSY
        } else if matches!(self.notification, NotificationStatus::Failed(_)) {
            exit::NOTIFY_FAILED
        } else {
            exit::OK
        }
    }
}
