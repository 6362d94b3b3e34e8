//! The rotation protocol, one function per step.
//!
//! Every step has the same shape: read the real state it depends on, decide, act only on what is
//! still missing. So any step can be retried, or resumed by a new process, at any time; the only
//! thing carried between steps is a [`Progress`] of ids (never a secret), which is also the
//! Step Functions payload.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::config::{Policy, Target};
use crate::domain::{AccessKeyId, KeyStatus, RunId};
use crate::plan::{Snapshot, StageInfo};
use crate::ports::{
    CallerIdentity, Clock, Endpoint, KeyStore, PortError, PortErrorKind, SecretStore,
    ServiceConnections, Stage,
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
            message: crate::domain::mask_key_ids(&message.into()),
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
    pub pending_version: Option<String>,
    /// The version of this run's intent record, while it may still be at AWSPENDING.
    pub intent_version: Option<String>,
    /// This run created the new key (it did not resume one).
    #[serde(default)]
    pub created_here: bool,
    /// This run sent (or tried to send) a credential update to a connection.
    #[serde(default)]
    pub put_attempted: bool,
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
        }
    }
}

/// Maps a port error to a step error.
fn at(step: Step, context: &'static str) -> impl Fn(PortError) -> StepError {
    move |e| StepError::port(step, context, e)
}

/// Reads one stage's content, without keeping the secret.
async fn stage_info(
    ports: &Ports,
    target: &Target,
    stage: Stage,
) -> Result<Option<StageInfo>, PortError> {
    Ok(ports
        .secrets
        .read(&target.secret, stage)
        .await?
        .map(|(version, value)| StageInfo {
            version,
            content: secret_value::classify(&value),
        }))
}

/// Finds every configured endpoint; one shared into several projects counts once. Errors
/// belong to `step` (a refused PAT is bad input at inspect, a failure later on).
pub async fn resolve_endpoints(
    ports: &Ports,
    target: &Target,
    step: Step,
) -> Result<Vec<Endpoint>, StepError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in &target.endpoints {
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

/// **inspect**: keys first, then the secret's stages, then the endpoints (that order makes an
/// intent record visible whenever the key it announced is).
pub async fn inspect(ports: &Ports, target: &Target) -> Result<Snapshot, StepError> {
    let step = Step::Inspect;
    let keys = ports.iam.list_keys(&target.iam_user).await.map_err(|e| {
        let what = format!("IAM user '{}'", target.iam_user);
        StepError::port(step, &what, e)
    })?;
    let versions = ports
        .secrets
        .versions(&target.secret)
        .await
        .map_err(|e| StepError::port(step, &format!("secret '{}'", target.secret), e))?;
    let (current, pending, previous) = if versions.is_some() {
        let read = |s| stage_info(ports, target, s);
        let secret_err = |e| StepError::port(step, &format!("secret '{}'", target.secret), e);
        (
            read(Stage::Current).await.map_err(secret_err)?,
            read(Stage::Pending).await.map_err(secret_err)?,
            read(Stage::Previous).await.map_err(secret_err)?,
        )
    } else {
        (None, None, None)
    };
    let endpoints = resolve_endpoints(ports, target, step).await?;
    Ok(Snapshot {
        user: target.iam_user.clone(),
        keys,
        secret_exists: versions.is_some(),
        current,
        pending,
        previous,
        endpoints,
    })
}

/// Whether `key` is referenced by a stage of the secret.
async fn staged_keys(ports: &Ports, target: &Target) -> Result<Vec<(Stage, StageInfo)>, PortError> {
    let mut out = Vec::new();
    for stage in [Stage::Current, Stage::Pending, Stage::Previous] {
        if let Some(info) = stage_info(ports, target, stage).await? {
            out.push((stage, info));
        }
    }
    Ok(out)
}

/// **cleanup**: takes a stale AWSPENDING label off, deletes never-used keys nobody holds
/// (re-checked right before each delete), and makes room for a new key.
pub async fn cleanup(
    ports: &Ports,
    target: &Target,
    run_id: &RunId,
    clear_pending: bool,
    orphans: &[AccessKeyId],
    make_room: Option<&AccessKeyId>,
) -> Result<Vec<String>, StepError> {
    let step = Step::Cleanup;
    let now = ports.clock.now();
    let mut done = Vec::new();
    if clear_pending {
        let keys = ports
            .iam
            .list_keys(&target.iam_user)
            .await
            .map_err(at(step, "listing keys"))?;
        if let Some(info) = stage_info(ports, target, Stage::Pending)
            .await
            .map_err(at(step, "reading AWSPENDING"))?
        {
            let stale = match &info.content {
                Content::Intent {
                    run_id: r,
                    expires_at,
                } => r != run_id.as_str() && *expires_at <= now,
                Content::Key { id, .. } => !keys.iter().any(|k| &k.id == id),
                Content::Legacy | Content::Foreign => true,
            };
            if stale {
                ports
                    .secrets
                    .move_stage(&target.secret, Stage::Pending, None, Some(&info.version))
                    .await
                    .map_err(at(step, "clearing a stale AWSPENDING"))?;
                done.push("cleared a stale AWSPENDING label".to_owned());
            }
        }
    }
    for id in orphans {
        // Keys first, then the stages: a key created after our first read is announced by an
        // intent record that this second read sees.
        let keys = ports
            .iam
            .list_keys(&target.iam_user)
            .await
            .map_err(at(step, "listing keys"))?;
        let Some(k) = keys.iter().find(|k| &k.id == id) else {
            continue;
        };
        if k.last_used.is_some() {
            continue;
        }
        let stages = staged_keys(ports, target)
            .await
            .map_err(at(step, "reading the secret"))?;
        let referenced = stages
            .iter()
            .any(|(_, s)| matches!(&s.content, Content::Key { id: i, .. } if i == id));
        let live_intent = stages.iter().any(|(stage, s)| {
            *stage == Stage::Pending
                && matches!(&s.content, Content::Intent { run_id: r, expires_at } if r != run_id.as_str() && *expires_at > now)
        });
        if live_intent {
            return Err(StepError::new(
                step,
                StepErrorKind::Busy,
                "another run wrote an intent record and is creating a key; standing aside",
            ));
        }
        if referenced {
            continue;
        }
        match ports.iam.delete_key(&target.iam_user, id).await {
            Ok(()) => done.push(format!(
                "deleted orphan key {id} (never used, held by nobody)"
            )),
            Err(e) if e.kind == PortErrorKind::NotFound => {}
            Err(e) => return Err(StepError::port(step, "deleting an orphan key", e)),
        }
    }
    if let Some(id) = make_room {
        retire_key(ports, target, id, true, step).await?;
        done.push(format!("deleted the retired key {id} to make room"));
    }
    Ok(done)
}

/// Deactivates a key (if Active) and deletes it when `delete`. Refuses a key an endpoint holds.
async fn retire_key(
    ports: &Ports,
    target: &Target,
    id: &AccessKeyId,
    delete: bool,
    step: Step,
) -> Result<(), StepError> {
    let endpoints = resolve_endpoints(ports, target, step).await?;
    if let Some(e) = endpoints.iter().find(|e| e.key_id().as_ref() == Some(id)) {
        return Err(StepError::new(
            step,
            StepErrorKind::Refused,
            format!(
                "key {id} is still held by service connection '{}'; it stays Active",
                e.name
            ),
        ));
    }
    let keys = ports
        .iam
        .list_keys(&target.iam_user)
        .await
        .map_err(at(step, "listing keys"))?;
    let Some(k) = keys.iter().find(|k| &k.id == id) else {
        return Ok(());
    };
    if k.status == KeyStatus::Active {
        ports
            .iam
            .set_status(&target.iam_user, id, KeyStatus::Inactive)
            .await
            .map_err(at(step, "deactivating the old key"))?;
    }
    if delete {
        match ports.iam.delete_key(&target.iam_user, id).await {
            Ok(()) => {}
            Err(e) if e.kind == PortErrorKind::NotFound => {}
            Err(e) => return Err(StepError::port(step, "deleting the old key", e)),
        }
    }
    Ok(())
}

/// Retries a port call a few times on retryable errors (adapters retry too; this covers a
/// step's must-succeed writes).
async fn with_retries<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, PortError>
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

/// **create**: resumes the key at AWSPENDING if it exists; else writes an intent record to
/// AWSPENDING, creates the key and immediately stores it at AWSPENDING (token = run id). If
/// storing fails for good, the new key is deleted.
pub async fn create(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
) -> Result<(), StepError> {
    let step = Step::Create;
    let now = ports.clock.now();
    let mut own_intent = None;
    let keys = ports
        .iam
        .list_keys(&target.iam_user)
        .await
        .map_err(at(step, "listing keys"))?;
    let exists = ports
        .secrets
        .versions(&target.secret)
        .await
        .map_err(at(step, "reading the secret"))?
        .is_some();
    if exists {
        if let Some(info) = stage_info(ports, target, Stage::Pending)
            .await
            .map_err(at(step, "reading AWSPENDING"))?
        {
            match info.content {
                Content::Key { id, .. } if keys.iter().any(|k| k.id == id) => {
                    progress.new_key = Some(id);
                    progress.pending_version = Some(info.version);
                    return Ok(());
                }
                Content::Intent { run_id, expires_at }
                    if run_id != progress.run_id.as_str() && expires_at > now =>
                {
                    return Err(StepError::new(
                        step,
                        StepErrorKind::Busy,
                        format!("another run ({run_id}) is creating a key for this user"),
                    ));
                }
                // This run's own intent, written by an earlier attempt of this step: keep it.
                // Writing it again under the same request token with a new expiry is refused
                // by Secrets Manager (ResourceExistsException).
                Content::Intent { run_id, .. } if run_id == progress.run_id.as_str() => {
                    own_intent = Some(info.version);
                }
                _ => {}
            }
        }
    } else {
        ports
            .secrets
            .create(
                &target.secret,
                "Access key of an Azure DevOps AWS service connection, rotated by keyrotor",
            )
            .await
            .map_err(at(step, "creating the secret"))?;
    }
    if let Some(old) = &progress.old_key
        && !keys
            .iter()
            .any(|k| &k.id == old && k.status == KeyStatus::Active)
    {
        return Err(StepError::new(
            step,
            StepErrorKind::Busy,
            format!("key {old} changed since inspect; another run has rotated this user"),
        ));
    }
    if keys.len() >= 2 {
        return Err(StepError::new(
            step,
            StepErrorKind::Busy,
            format!(
                "IAM user '{}' already has two keys; another run may be rotating it",
                target.iam_user
            ),
        ));
    }

    // Invariant 8 (the secret stays the user's): the new version is written over AWSCURRENT,
    // keeping every field keyrotor does not own. Read before the key exists, so nothing slows
    // the CreateAccessKey → PutSecretValue window.
    let base = if exists {
        ports
            .secrets
            .read(&target.secret, Stage::Current)
            .await
            .map_err(at(step, "reading AWSCURRENT"))?
            .map(|(_, v)| v)
    } else {
        None
    };

    // The intent record: announces the key about to exist, so no other run takes it for an orphan.
    let version = match own_intent {
        Some(v) => v,
        None => {
            let intent =
                secret_value::intent_value(progress.run_id.as_str(), now + policy.intent_lease);
            let token = progress.run_id.token("intent");
            with_retries(3, || {
                ports
                    .secrets
                    .put(&target.secret, &token, &intent, Stage::Pending)
            })
            .await
            .map_err(at(step, "writing the intent record"))?
        }
    };
    progress.intent_version = Some(version.clone());
    let pending = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING back"))?;
    if pending.as_ref().map(|(v, _)| v) != Some(&version) {
        return Err(StepError::new(
            step,
            StepErrorKind::Busy,
            "another run took AWSPENDING first; standing aside",
        ));
    }

    let new = match ports.iam.create_key(&target.iam_user).await {
        Ok(k) => k,
        Err(e) if e.kind == PortErrorKind::LimitExceeded => {
            return Err(StepError::new(
                step,
                StepErrorKind::Busy,
                format!(
                    "IAM user '{}' has two keys already; another run is rotating it",
                    target.iam_user
                ),
            ));
        }
        Err(e) => return Err(StepError::port(step, "creating the access key", e)),
    };
    let value = secret_value::key_value_over(
        base.as_ref(),
        &new.info.id,
        &new.secret,
        target.iam_user.as_str(),
        new.info.created,
    );
    let token = progress.run_id.token("key");
    let stored = with_retries(4, || {
        ports
            .secrets
            .put(&target.secret, &token, &value, Stage::Pending)
    })
    .await;
    match stored {
        Ok(version) => {
            progress.created_here = true;
            progress.new_key = Some(new.info.id);
            progress.pending_version = Some(version);
            progress.intent_version = None;
            Ok(())
        }
        Err(e) => {
            // The key exists nowhere else: delete it, or its secret is lost for good.
            let undo = ports.iam.delete_key(&target.iam_user, &new.info.id).await;
            let what = match undo {
                Ok(()) => "the new key was deleted",
                Err(_) => "deleting the new key failed too; the next run's cleanup deletes it",
            };
            Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!("storing the new key failed ({}); {what}", e.message),
            ))
        }
    }
}

/// Reads the key this run rotates in, from AWSPENDING. If a racing run took the label off our
/// version (it wrote its intent just after we stored the key, then lost to IAM's two-key limit),
/// the label is put back: our version is the rotation in progress.
async fn pending_secret(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
    step: Step,
) -> Result<(AccessKeyId, SecretString), StepError> {
    let fail = |m: String| StepError::new(step, StepErrorKind::Failed, m);
    let new = progress
        .new_key
        .clone()
        .ok_or_else(|| fail("no new key in this run's progress".into()))?;
    let mine = progress
        .pending_version
        .clone()
        .ok_or_else(|| fail("no pending version in this run's progress".into()))?;
    let holder = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING"))?;
    let value = match holder {
        Some((v, value)) if v == mine => value,
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
                .move_stage(&target.secret, Stage::Pending, Some(&mine), from.as_deref())
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

/// **verify**: `GetCallerIdentity` signed with the new key must answer the user's ARN
/// `verify_consecutive` times in a row, within `budget`.
pub async fn verify(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &Progress,
    budget: Duration,
) -> Result<(), StepError> {
    let step = Step::Verify;
    let (id, secret) = pending_secret(ports, target, progress, step).await?;
    let deadline = tokio::time::Instant::now() + budget;
    let mut streak = 0;
    let mut last = String::from("no attempt was made");
    loop {
        match ports.sts.caller_arn(&id, &secret).await {
            Ok(arn) => {
                let ok = arn.contains(":user/")
                    && arn.rsplit('/').next() == Some(target.iam_user.as_str());
                if !ok {
                    return Err(StepError::new(
                        step,
                        StepErrorKind::Failed,
                        format!(
                            "the new key belongs to {arn}, not to IAM user '{}'",
                            target.iam_user
                        ),
                    ));
                }
                streak += 1;
                if streak >= policy.verify_consecutive {
                    return Ok(());
                }
            }
            Err(e)
                if matches!(
                    e.kind,
                    PortErrorKind::Unauthorized | PortErrorKind::Retryable
                ) =>
            {
                streak = 0;
                last = e.message;
            }
            Err(e) => return Err(StepError::port(step, "calling STS with the new key", e)),
        }
        if tokio::time::Instant::now() + policy.verify_interval > deadline {
            return Err(StepError::new(
                step,
                StepErrorKind::NotPropagated,
                format!(
                    "IAM did not accept the new key {id} {} times in a row within {} (last: {last})",
                    policy.verify_consecutive,
                    crate::plan::human(budget)
                ),
            ));
        }
        tokio::time::sleep(policy.verify_interval).await;
    }
}

/// **push**: every endpoint that does not hold the new key yet gets it, updated in place.
pub async fn push(
    ports: &Ports,
    target: &Target,
    progress: &mut Progress,
) -> Result<Vec<String>, StepError> {
    let step = Step::Push;
    let (id, secret) = pending_secret(ports, target, progress, step).await?;
    let mut updated = Vec::new();
    for e in resolve_endpoints(ports, target, step).await? {
        if e.key_id().as_ref() == Some(&id) {
            continue;
        }
        if let Some(reason) = e.unrotatable_reason() {
            return Err(StepError::new(step, StepErrorKind::Refused, reason));
        }
        progress.put_attempted = true;
        ports
            .ado
            .set_credentials(&e.handle, &id, &secret)
            .await
            .map_err(|err| {
                StepError::port(
                    step,
                    &format!("updating service connection '{}'", e.name),
                    err,
                )
            })?;
        updated.push(e.name);
    }
    Ok(updated)
}

/// **confirm**: every endpoint, read back, holds the new key and is ready.
pub async fn confirm(ports: &Ports, target: &Target, progress: &Progress) -> Result<(), StepError> {
    let step = Step::Confirm;
    let new = progress.new_key.clone().ok_or_else(|| {
        StepError::new(
            step,
            StepErrorKind::Failed,
            "no new key in this run's progress",
        )
    })?;
    for e in resolve_endpoints(ports, target, step).await? {
        let now = ports
            .ado
            .get(&e.handle)
            .await
            .map_err(at(step, "reading a service connection back"))?;
        let Some(now) = now else {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!("service connection '{}' is gone", e.name),
            ));
        };
        if now.key_id().as_ref() != Some(&new) {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' does not hold the new key after the update",
                    e.name
                ),
            ));
        }
        if !now.is_ready {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' is not ready after the update",
                    e.name
                ),
            ));
        }
    }
    Ok(())
}

/// **promote**: AWSCURRENT moves to the new version (the old becomes AWSPREVIOUS), AWSPENDING
/// is dropped. Stage moves are absolute, so a repeat does nothing new.
pub async fn promote(ports: &Ports, target: &Target, progress: &Progress) -> Result<(), StepError> {
    let step = Step::Promote;
    let new_version = progress.pending_version.clone().ok_or_else(|| {
        StepError::new(
            step,
            StepErrorKind::Failed,
            "no pending version in this run's progress",
        )
    })?;
    // A concurrent run finishing the same rotation may move a label between our read and our
    // move; the move then fails, and a fresh read shows whether the work is done.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match promote_once(ports, target, &new_version).await {
            Ok(()) => return Ok(()),
            Err(e) if attempts < 3 && e.kind == PortErrorKind::Invalid => continue,
            Err(e) => return Err(StepError::port(step, "moving the secret's stages", e)),
        }
    }
}

async fn promote_once(ports: &Ports, target: &Target, new_version: &str) -> Result<(), PortError> {
    let versions = ports
        .secrets
        .versions(&target.secret)
        .await?
        .unwrap_or_default();
    let holder = |label: &str| {
        versions
            .iter()
            .find(|v| v.stages.iter().any(|s| s == label))
            .map(|v| v.id.clone())
    };
    let current = holder("AWSCURRENT");
    if current.as_deref() != Some(new_version) {
        if let Some(old) = &current {
            ports
                .secrets
                .move_stage(
                    &target.secret,
                    Stage::Previous,
                    Some(old),
                    holder("AWSPREVIOUS").as_deref(),
                )
                .await?;
        }
        ports
            .secrets
            .move_stage(
                &target.secret,
                Stage::Current,
                Some(new_version),
                current.as_deref(),
            )
            .await?;
    }
    if holder("AWSPENDING").as_deref() == Some(new_version) {
        ports
            .secrets
            .move_stage(&target.secret, Stage::Pending, None, Some(new_version))
            .await?;
    }
    Ok(())
}

/// **retire**: the old key becomes Inactive, and is deleted now when there is no grace period
/// (else by the first run after the grace period).
///
/// `delete` overrides the policy (a later run finishing a retirement whose grace is over).
pub async fn retire(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    old: Option<&AccessKeyId>,
    new: Option<&AccessKeyId>,
    delete: Option<bool>,
) -> Result<(), StepError> {
    let Some(old) = old else { return Ok(()) };
    if Some(old) == new {
        return Ok(());
    }
    let delete = delete.unwrap_or(policy.delete_old_key_after.is_zero());
    retire_key(ports, target, old, delete, Step::Retire).await
}

/// What compensation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compensation {
    /// Nothing to undo.
    Nothing,
    /// The new key was deleted; the old key is kept and every endpoint holds it.
    Compensated(String),
    /// Some endpoints hold the new (verified) key and could not be put back; the old key is kept.
    Partial(String),
}

/// Undoes a failed rotation as far as is safe: endpoints already switched go back to the old
/// key when its secret is known (AWSCURRENT); then the new key is deleted. Otherwise the
/// switched endpoints stay on the new, verified key and the old key is not retired.
pub async fn compensate(ports: &Ports, target: &Target, progress: &Progress) -> Compensation {
    match compensate_inner(ports, target, progress).await {
        Ok(c) => c,
        Err(e) => Compensation::Partial(format!("compensation stopped: {}", e.message)),
    }
}

async fn compensate_inner(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
) -> Result<Compensation, StepError> {
    let step = Step::Compensate;
    let Some(new) = &progress.new_key else {
        if let Some(v) = &progress.intent_version {
            // Take our intent record off AWSPENDING if it is still there.
            let pending = ports
                .secrets
                .read(&target.secret, Stage::Pending)
                .await
                .map_err(at(step, "reading AWSPENDING"))?;
            if pending.as_ref().map(|(pv, _)| pv) == Some(v) {
                ports
                    .secrets
                    .move_stage(&target.secret, Stage::Pending, None, Some(v))
                    .await
                    .map_err(at(step, "clearing the intent record"))?;
            }
        }
        return Ok(Compensation::Nothing);
    };
    let endpoints = match resolve_endpoints(ports, target, step).await {
        Ok(eps) => eps,
        // This run created the key and never sent a PUT: no connection can hold it.
        Err(_) if progress.created_here && !progress.put_attempted => Vec::new(),
        Err(e) => return Err(e),
    };
    let on_new: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|e| e.key_id().as_ref() == Some(new))
        .collect();
    if !on_new.is_empty() {
        // Put them back on the old key, when AWSCURRENT holds it with its secret.
        let old = match ports
            .secrets
            .read(&target.secret, Stage::Current)
            .await
            .map_err(at(step, "reading AWSCURRENT"))?
        {
            Some((_, v)) => {
                secret_value::parse_key(&v).filter(|k| Some(&k.id) == progress.old_key.as_ref())
            }
            None => None,
        };
        let keys = ports
            .iam
            .list_keys(&target.iam_user)
            .await
            .map_err(at(step, "listing keys"))?;
        let old_active = old.as_ref().is_some_and(|o| {
            keys.iter()
                .any(|k| k.id == o.id && k.status == KeyStatus::Active)
        });
        let Some(old) = old.filter(|_| old_active) else {
            let names: Vec<&str> = on_new.iter().map(|e| e.name.as_str()).collect();
            return Ok(Compensation::Partial(format!(
                "{} now hold the new, verified key {new}; the others still hold the old key, which is kept Active; the next run finishes the rotation",
                names.join(", ")
            )));
        };
        for e in &on_new {
            if let Err(err) = ports
                .ado
                .set_credentials(&e.handle, &old.id, &old.secret)
                .await
            {
                return Ok(Compensation::Partial(format!(
                    "putting '{}' back on the old key failed ({}); connections may hold either key, both are kept Active",
                    e.name, err.message
                )));
            }
        }
        for e in &on_new {
            let back = ports
                .ado
                .get(&e.handle)
                .await
                .map_err(at(step, "reading a service connection back"))?;
            if back.and_then(|b| b.key_id()).as_ref() != Some(&old.id) {
                return Ok(Compensation::Partial(format!(
                    "'{}' did not take the old key back; both keys are kept Active",
                    e.name
                )));
            }
        }
    }
    match ports.iam.delete_key(&target.iam_user, new).await {
        Ok(()) => {}
        Err(e) if e.kind == PortErrorKind::NotFound => {}
        Err(e) => return Err(StepError::port(step, "deleting the new key", e)),
    }
    if let Some(v) = &progress.pending_version {
        let pending = ports
            .secrets
            .read(&target.secret, Stage::Pending)
            .await
            .map_err(at(step, "reading AWSPENDING"))?;
        if pending.as_ref().map(|(pv, _)| pv) == Some(v) {
            ports
                .secrets
                .move_stage(&target.secret, Stage::Pending, None, Some(v))
                .await
                .map_err(at(step, "clearing AWSPENDING"))?;
        }
    }
    Ok(Compensation::Compensated(format!(
        "the new key {new} was deleted; the old key {} is kept and every connection holds it",
        progress
            .old_key
            .as_ref()
            .map_or_else(|| "-".to_owned(), AccessKeyId::masked)
    )))
}
