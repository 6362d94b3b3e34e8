//! The rotation protocol, one file per step (`inspect`, `cleanup`, `create`, `verify`, `push`,
//! `confirm`, `promote`, `retire`, `compensate`); this file holds what they share: the ports,
//! the errors, the [`Progress`] carried between steps, and small re-reads.
//!
//! Every step has the same shape: re-read the real state it depends on, decide, act only on what
//! is still missing. So any step can be retried, or resumed by a new process, at any time; the
//! only thing carried between steps is a [`Progress`] of ids (never a secret), which travels in
//! the Step Functions payload. What follows a step, or a failure, is not decided here but in
//! [`machine`](crate::machine).

mod cleanup;
mod compensate;
mod confirm;
mod create;
mod inspect;
mod promote;
mod push;
mod retire;
mod verify;

pub use cleanup::cleanup;
pub use compensate::{Compensation, compensate};
pub use confirm::confirm;
pub use create::{create, release, release_run};
pub use inspect::inspect;
pub use promote::promote;
pub use push::push;
pub use retire::{retire, retire_confirmed};
pub use verify::verify;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{Policy, Target};
use crate::domain::{
    AccessKeyId, EndpointRef, EndpointSelector, KeyStatus, ProjectName, RunId, SecretVersionId,
};
use crate::plan::{Retirement, Snapshot, StageInfo, Tidy};
use crate::ports::{
    CallerIdentity, Clock, Endpoint, EndpointHandle, ExecutionStatus, Executions, KeyStore,
    PortError, PortErrorKind, SecretStore, ServiceConnections, Stage,
};
use crate::report::Step;
use crate::secret_value::{self, Content};

/// The adapters a run needs.
#[derive(Clone)]
pub struct Ports {
    /// IAM.
    pub iam: Arc<dyn KeyStore>,
    /// Secrets Manager.
    pub secrets: Arc<dyn SecretStore>,
    /// STS.
    pub sts: Arc<dyn CallerIdentity>,
    /// Azure DevOps.
    pub ado: Arc<dyn ServiceConnections>,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Step Functions, asked whether the execution that owns a lease still runs.
    pub executions: Arc<dyn Executions>,
}

/// What a step failure means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepErrorKind {
    /// Transient; retrying the step may work.
    Retryable,
    /// IAM does not accept the new key yet.
    NotPropagated,
    /// Another run is rotating this target.
    Busy,
    /// Unsafe to go on: a person must act.
    Refused,
    /// The config names something that does not exist or cannot be used.
    Invalid,
    /// Permanent failure.
    Failed,
}

/// A failed step: which, why (one sentence, no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{step}: {message}")]
pub struct StepError {
    /// The step.
    pub step: Step,
    /// What it means.
    pub kind: StepErrorKind,
    /// One readable sentence.
    pub message: String,
}

impl StepError {
    /// A step error; key ids in the message are masked.
    pub fn new(step: Step, kind: StepErrorKind, message: impl Into<String>) -> Self {
        Self {
            step,
            kind,
            message: crate::domain::redact(&message.into()),
        }
    }

    /// A port error met in a step. `context` says what was being done.
    pub(crate) fn port(step: Step, context: &str, e: PortError) -> Self {
        let kind = match e.kind {
            PortErrorKind::Retryable => StepErrorKind::Retryable,
            PortErrorKind::NotFound
            | PortErrorKind::Invalid
            | PortErrorKind::Unauthorized
            | PortErrorKind::Forbidden
                if step == Step::Inspect =>
            {
                StepErrorKind::Invalid
            }
            PortErrorKind::Refused => StepErrorKind::Refused,
            _ => StepErrorKind::Failed,
        };
        Self::new(step, kind, format!("{context}: {}", e.message))
    }
}

/// Ids carried from step to step. Never a secret: it is the Step Functions payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The target's name.
    pub target: String,
    /// The run.
    pub run_id: RunId,
    /// The key the endpoints held before.
    pub old_key: Option<AccessKeyId>,
    /// The key being rotated in.
    pub new_key: Option<AccessKeyId>,
    /// The secret version holding the new key.
    pub pending_version: Option<SecretVersionId>,
    /// The version of this run's intent record, while it may still be at AWSPENDING.
    pub intent_version: Option<SecretVersionId>,
    /// This run created the new key (it did not resume one).
    #[serde(default)]
    pub created_here: bool,
    /// This run sent (or tried to send) a credential update to a connection.
    #[serde(default)]
    pub put_attempted: bool,
    /// When `confirm` saw every connection on the new key: the drain is counted from here.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::machine::time_serde"
    )]
    pub confirmed_at: Option<std::time::SystemTime>,
    /// Connections outside the target's config that held the old key and that this run
    /// updates too (`policy.update_unlisted_connections`), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unlisted: Vec<EndpointRef>,
    /// The connections this run rotates, by id, as `inspect` resolved them from the config (and
    /// `push` added the unlisted ones): later steps read them by id, in one request per project,
    /// instead of finding each by name again. Ids only, never a secret. Empty in a payload from
    /// before this field existed: the steps then resolve the config's names as they used to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointHandle>,
    /// The Step Functions execution running this rotation (its ARN), on that path: written into
    /// the intent record and the owner lease, so that a contender can ask whether it still runs
    /// (`DescribeExecution`) instead of waiting the lease out. The state machine passes it with
    /// every step (`$$.Execution.Id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<String>,
}

impl Progress {
    /// A fresh progress record.
    pub fn new(target: &Target, run_id: RunId) -> Self {
        Self {
            target: target.name.to_string(),
            run_id,
            old_key: None,
            new_key: None,
            pending_version: None,
            intent_version: None,
            created_here: false,
            put_attempted: false,
            confirmed_at: None,
            unlisted: Vec::new(),
            endpoints: Vec::new(),
            execution: None,
        }
    }
}

/// Maps a port error to a step error.
pub(crate) fn at(step: Step, context: &'static str) -> impl Fn(PortError) -> StepError {
    move |e| StepError::port(step, context, e)
}

/// A value this run's progress must carry by `step` (an earlier step put it there).
pub(crate) fn carried<T: Clone>(v: &Option<T>, step: Step, what: &str) -> Result<T, StepError> {
    v.clone().ok_or_else(|| {
        StepError::new(
            step,
            StepErrorKind::Failed,
            format!("no {what} in this run's progress"),
        )
    })
}

/// The user's keys and their status (one `ListAccessKeys`), as `step` reads them; `why` names
/// the read in the error.
pub(crate) async fn keys_of(
    ports: &Ports,
    target: &Target,
    step: Step,
    why: &'static str,
) -> Result<Vec<crate::ports::KeyInfo>, StepError> {
    ports
        .iam
        .list_keys_brief(&target.iam_user)
        .await
        .map_err(at(step, why))
}

/// Whether DescribeSecret's answer shows `stage` on any version: a stage on none is not read
/// (GetSecretValue would only say it is missing).
pub(crate) fn labelled(versions: &Option<Vec<crate::ports::SecretVersion>>, stage: Stage) -> bool {
    versions
        .iter()
        .flatten()
        .any(|v| v.stages.iter().any(|l| l == stage.label()))
}

/// Reads one stage's content, without keeping the secret. At AWSPENDING, the lease it names
/// (a rotation's owner, or an intent record's writer) is judged: its process, when it ran on
/// this machine, and its execution, when Step Functions runs it ([`judge_execution`]).
pub(crate) async fn stage_info(
    ports: &Ports,
    target: &Target,
    stage: Stage,
) -> Result<Option<StageInfo>, PortError> {
    let Some((version, value)) = ports.secrets.read(&target.secret, stage).await? else {
        return Ok(None);
    };
    let mut owner = secret_value::lease_seen(&value);
    if stage == Stage::Pending
        && let Some(lease) = owner.as_mut()
    {
        judge_execution(ports, lease).await;
    }
    Ok(Some(StageInfo {
        version,
        owner,
        confirmed_at: secret_value::confirmed_of(&value),
        content: secret_value::classify(&value),
    }))
}

/// Invariant 7 (one owner at a time) on the Step Functions path: a lease an execution holds
/// lasts while that execution runs (`DescribeExecution`): `RUNNING` holds it even past its
/// expiry (a long Wait); any other status, or an execution Step Functions does not know, is a
/// dead owner, taken over at once. An error asking (a missing permission, throttling)
/// concludes nothing: the lease's expiry decides, as without an execution.
pub(crate) async fn judge_execution(ports: &Ports, lease: &mut secret_value::Lease) {
    let Some(arn) = lease.execution.as_deref() else {
        return;
    };
    if lease.seen != secret_value::Seen::Unknown {
        return;
    }
    match ports.executions.status(arn).await {
        Ok(ExecutionStatus::Running) => lease.seen = secret_value::Seen::Running,
        Ok(ExecutionStatus::Ended(_) | ExecutionStatus::Missing) => {
            lease.seen = secret_value::Seen::Dead;
        }
        Err(e) => {
            tracing::warn!(execution = %arn, error = %e.message, "could not tell whether the execution that owns a lease still runs; its expiry decides");
        }
    }
}

/// Finds every configured endpoint; one shared into several projects counts once. Errors
/// belong to `step` (a refused PAT is bad input at inspect, a failure later on).
pub async fn resolve_endpoints(
    ports: &Ports,
    target: &Target,
    step: Step,
) -> Result<Vec<Endpoint>, StepError> {
    resolve_refs(ports, target, &target.endpoints, step).await
}

/// The connections this run rotates: the target's, and the unlisted ones it took on
/// (`policy.update_unlisted_connections`).
pub(crate) async fn run_endpoints(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
    step: Step,
) -> Result<Vec<Endpoint>, StepError> {
    if !progress.endpoints.is_empty() {
        return read_handles(ports, &progress.endpoints, step).await;
    }
    let refs: Vec<EndpointRef> = target
        .endpoints
        .iter()
        .chain(&progress.unlisted)
        .cloned()
        .collect();
    resolve_refs(ports, target, &refs, step).await
}

/// The connections behind `handles`, as they are now, read by id (one listing per project). A
/// connection the service no longer knows by its id (deleted, or no longer shared into the
/// project) is the same error a lookup by name gives for a missing one: `NotFound`. A rename
/// changes nothing: the id is the connection.
pub async fn read_handles(
    ports: &Ports,
    handles: &[EndpointHandle],
    step: Step,
) -> Result<Vec<Endpoint>, StepError> {
    let read = ports
        .ado
        .get_many(handles)
        .await
        .map_err(at(step, "reading the service connections"))?;
    handles
        .iter()
        .zip(read)
        .map(|(h, e)| {
            e.ok_or_else(|| {
                let gone = PortError::new(
                    PortErrorKind::NotFound,
                    format!(
                        "no service connection with id {} in project '{}' of {} any more",
                        h.id, h.project, h.org
                    ),
                );
                StepError::port(step, &format!("service connection {}", h.id), gone)
            })
        })
        .collect()
}

/// The handles of resolved connections, each once.
pub fn handles_of(endpoints: &[Endpoint]) -> Vec<EndpointHandle> {
    let mut out: Vec<EndpointHandle> = Vec::new();
    for e in endpoints {
        if !out
            .iter()
            .any(|h| h.org == e.handle.org && h.id == e.handle.id)
        {
            out.push(e.handle.clone());
        }
    }
    out
}

async fn resolve_refs(
    ports: &Ports,
    target: &Target,
    refs: &[EndpointRef],
    step: Step,
) -> Result<Vec<Endpoint>, StepError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in refs {
        let e = ports
            .ado
            .find(&target.organization, r)
            .await
            .map_err(|e| StepError::port(step, &format!("service connection {r}"), e))?;
        if seen.insert((e.handle.org.clone(), e.handle.id.clone())) {
            out.push(e);
        }
    }
    Ok(out)
}

/// Whether `key` is referenced by a stage of the secret.
pub(crate) async fn staged_keys(
    ports: &Ports,
    target: &Target,
) -> Result<Vec<(Stage, StageInfo)>, PortError> {
    let mut out = Vec::new();
    for stage in [Stage::Current, Stage::Pending, Stage::Previous] {
        if let Some(info) = stage_info(ports, target, stage).await? {
            out.push((stage, info));
        }
    }
    Ok(out)
}

/// Retries a port call a few times on retryable errors (adapters retry too; this covers a
/// step's must-succeed writes).
pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, PortError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PortError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut n = 1;
    loop {
        match f().await {
            Err(e) if e.is_retryable() && n < attempts => {
                tokio::time::sleep(delay).await;
                delay *= 2;
                n += 1;
            }
            other => return other,
        }
    }
}

/// Reads the key this run rotates in, from AWSPENDING. If a racing run took the label off our
/// version (it wrote its intent just after we stored the key, then lost to IAM's two-key limit),
/// the label is put back: our version is the rotation in progress.
///
/// Invariant 7 (one owner for the rotation's whole life): when less than half of this run's
/// lease is left (a slow verify, a paced fleet, retries), the lease is renewed here, before the
/// step acts: the same key written again at AWSPENDING with a new expiry. A fresh lease costs
/// nothing.
pub(crate) async fn pending_secret(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
    step: Step,
) -> Result<(AccessKeyId, SecretString), StepError> {
    let fail = |m: String| StepError::new(step, StepErrorKind::Failed, m);
    let new = carried(&progress.new_key, step, "new key")?;
    let mine = carried(&progress.pending_version, step, "pending version")?;
    let holder = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING"))?;
    let value = match holder {
        Some((v, value)) if v == mine => {
            renew_if_due(ports, target, policy, progress, &value, step).await?;
            value
        }
        Some((_, ref value))
            if secret_value::parse_key(value).is_some_and(|k| k.id == new)
                && secret_value::owner_of(value)
                    .is_some_and(|o| o.run_id != progress.run_id.as_str()) =>
        {
            return Err(StepError::new(
                step,
                StepErrorKind::Busy,
                "another run took this rotation over; standing aside",
            ));
        }
        other => {
            let value = ports
                .secrets
                .read_version(&target.secret, &mine)
                .await
                .map_err(at(step, "reading the new key's version"))?
                .ok_or_else(|| fail(format!("the secret version holding {new} is gone")))?;
            let from = other.map(|(v, _)| v);
            ports
                .secrets
                .move_stage(&target.secret, Stage::Pending, Some(&mine), from.as_ref())
                .await
                .map_err(at(step, "putting AWSPENDING back on the new key"))?;
            value
        }
    };
    let k = secret_value::parse_key(&value)
        .filter(|k| k.id == new)
        .ok_or_else(|| fail(format!("the pending version no longer holds {new}")))?;
    Ok((new, k.secret))
}

/// Renews this run's lease on its rotation when less than half of it is left (see
/// [`pending_secret`]); `value` is this run's version at AWSPENDING.
async fn renew_if_due(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
    value: &SecretString,
    step: Step,
) -> Result<(), StepError> {
    let now = ports.clock.now();
    let me = progress.run_id.as_str();
    match secret_value::owner_of(value) {
        Some(o) if o.run_id == me && o.expires_at < now + policy.owner_lease / 2 => {}
        _ => return Ok(()),
    }
    let (Some(k), Some(created)) = (
        secret_value::parse_key(value),
        secret_value::created_of(value),
    ) else {
        return Ok(());
    };
    let expires_at = now + policy.owner_lease;
    let lease = secret_value::Lease::mine(me, progress.execution.as_deref(), expires_at);
    let renewed = secret_value::key_value_owned(
        Some(value),
        &k.id,
        &k.secret,
        &k.user_name,
        created,
        Some(&lease),
    );
    // One token per renewal (its expiry in the purpose): a retried step that renews again
    // writes a new version, never a different value under a used token.
    let secs = expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let token = progress.run_id.token(&format!("renew-{secs}"));
    let version = with_retries(3, || {
        ports
            .secrets
            .put(&target.secret, &token, &renewed, Stage::Pending)
    })
    .await
    .map_err(at(step, "renewing this run's lease on the rotation"))?;
    progress.pending_version = Some(version);
    Ok(())
}

/// Invariant 7 (one owner at a time), the IAM half, checked right before every visible or
/// destructive action of a rotation (PUT, confirm, promote): the new key still exists and is
/// Active. Gone is `Busy` (another run undid the rotation: stand aside, undo nothing); Inactive
/// is `Refused` (someone deactivated it). The secret half (no other run took the rotation
/// over) is read where the step reads AWSPENDING anyway: `pending_secret` (push) and promote's
/// stage read, so the happy path pays one `ListAccessKeys` per action and nothing more.
pub(crate) async fn ensure_key_live(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
    step: Step,
) -> Result<(), StepError> {
    let new = carried(&progress.new_key, step, "new key")?;
    let keys = keys_of(ports, target, step, "listing keys").await?;
    match keys.iter().find(|k| k.id == new) {
        Some(k) if k.status == KeyStatus::Active => Ok(()),
        Some(_) => Err(StepError::new(
            step,
            StepErrorKind::Refused,
            format!(
                "the new key {new} was deactivated by someone else; no connection is switched to it"
            ),
        )),
        None => Err(StepError::new(
            step,
            StepErrorKind::Busy,
            format!(
                "the new key {new} no longer exists: another run undid this rotation; standing aside"
            ),
        )),
    }
}

/// The run that took this run's rotation over, if one did: AWSPENDING holds another version of
/// the same key, naming another owner.
pub(crate) async fn taken_over_by(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
    step: Step,
) -> Result<Option<String>, StepError> {
    let Some(new) = progress.new_key.as_ref() else {
        return Ok(None);
    };
    let pending = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING"))?;
    Ok(pending.and_then(|(v, value)| {
        if Some(&v) == progress.pending_version.as_ref() {
            return None;
        }
        let same_key = secret_value::parse_key(&value).is_some_and(|k| &k.id == new);
        secret_value::owner_of(&value)
            .filter(|o| same_key && o.run_id != progress.run_id.as_str())
            .map(|o| o.run_id)
    }))
}

/// Every AWS service connection of the target's organization (all projects, listed in the
/// config or not) that holds `id`. With `since`, a scan another target of this run started at or
/// after that moment may answer ([`ServiceConnections::list_aws_since`]); without, the scan is
/// this caller's own.
pub(crate) async fn holders_of(
    ports: &Ports,
    target: &Target,
    id: &AccessKeyId,
    step: Step,
    since: Option<std::time::SystemTime>,
) -> Result<Vec<crate::ports::AwsConnection>, StepError> {
    let org = &target.organization;
    let all = match since {
        Some(t) => ports.ado.list_aws_since(org, t).await,
        None => ports.ado.list_aws(org).await,
    }
    .map_err(at(
        step,
        "listing the organization's AWS service connections",
    ))?;
    Ok(all
        .into_iter()
        .filter(|c| c.key_id.as_ref() == Some(id))
        .collect())
}
