//! **create**: the new key, announced by an intent record and stored at AWSPENDING at once.

use std::time::SystemTime;

use super::*;
use crate::ports::{KeyInfo, NewKey};

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
    let keys = keys_of(ports, target, step, "listing keys").await?;
    let versions = ports
        .secrets
        .versions(&target.secret)
        .await
        .map_err(at(step, "reading the secret"))?;
    let exists = versions.is_some();
    // AWSPENDING on no version (steady state): nothing to resume or respect, and nothing to
    // read. A run that writes its intent after this read is caught by the read-back below.
    if exists {
        if labelled(&versions, Stage::Pending)
            && let Some(info) = stage_info(ports, target, Stage::Pending)
                .await
                .map_err(at(step, "reading AWSPENDING"))?
        {
            match info.content.clone() {
                Content::Key { id, .. } if keys.iter().any(|k| k.id == id) => {
                    // A rotation whose key is already AWSCURRENT (a promote cut short) is
                    // finished as it stands: a new version of the same key would push the old
                    // key's version out of AWSPREVIOUS.
                    let promoted = versions.iter().flatten().any(|v| {
                        v.id == info.version && v.stages.iter().any(|s| s == "AWSCURRENT")
                    });
                    let version = if promoted {
                        info.version
                    } else {
                        take_over(ports, target, policy, progress, &keys, &id, info).await?
                    };
                    progress.new_key = Some(id);
                    progress.pending_version = Some(version);
                    return Ok(());
                }
                // Another run's intent holds while it lasts and its writer is not seen dead (its
                // process gone from this machine, its execution ended): a run killed inside the
                // create window is taken over at once where that can be seen.
                Content::Intent { run_id, .. }
                    if run_id != progress.run_id.as_str() && info.intent_holds(now) =>
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
                Content::Intent {
                    run_id, expires_at, ..
                } if run_id == progress.run_id.as_str() => {
                    own_intent = Some((info.version, expires_at));
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
    // An earlier attempt of this step under the same intent may have created a key and lost it
    // (crashed, or its answer was lost, before the key reached AWSPENDING): nobody has its
    // secret. Delete such keys, so the two-key limit does not stop this attempt.
    let mut keys = keys;
    if let Some((_, expires_at)) = &own_intent {
        let from = crate::plan::intent_window_start(*expires_at, policy);
        let mut named = HashSet::new();
        for stage in [Stage::Current, Stage::Previous] {
            if let Some(StageInfo {
                content: Content::Key { id, .. },
                ..
            }) = stage_info(ports, target, stage)
                .await
                .map_err(at(step, "reading the secret's stages"))?
            {
                named.insert(id);
            }
        }
        let lost: Vec<AccessKeyId> = keys
            .iter()
            .filter(|k| k.created >= from && Some(&k.id) != progress.old_key.as_ref())
            .filter(|k| !named.contains(&k.id))
            .map(|k| k.id.clone())
            .collect();
        if !lost.is_empty() {
            let gone = delete_lost(ports, target, &lost).await?;
            keys.retain(|k| !gone.contains(&k.id));
        }
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
        Some((v, _)) => v,
        None => {
            let intent = secret_value::intent_value_of(&secret_value::Lease::mine(
                progress.run_id.as_str(),
                progress.execution.as_deref(),
                now + policy.intent_lease,
            ));
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

    let new = create_key(ports, target, policy, now, &keys).await?;
    let owner = secret_value::Lease::mine(
        progress.run_id.as_str(),
        progress.execution.as_deref(),
        now + policy.owner_lease,
    );
    let value = secret_value::key_value_owned(
        base.as_ref(),
        &new.info.id,
        &new.secret,
        target.iam_user.as_str(),
        new.info.created,
        Some(&owner),
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

/// Resumes the rotation to `id`, found at AWSPENDING. Invariant 7 (one owner at a time): a
/// rotation another run owns is left to it while its lease lasts (`Busy`); this run's own is
/// simply resumed; one without a live owner (crashed, or written before owners were recorded)
/// is taken over: a new version of the same key names this run as the owner and takes the
/// AWSPENDING label, so the previous owner, should it wake up, sees that it lost the rotation
/// before its next visible action and stands aside.
async fn take_over(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &Progress,
    keys: &[crate::ports::KeyInfo],
    id: &AccessKeyId,
    info: StageInfo,
) -> Result<SecretVersionId, StepError> {
    let step = Step::Create;
    let now = ports.clock.now();
    let me = progress.run_id.as_str();
    match &info.owner {
        Some(o) if o.run_id == me => return Ok(info.version),
        Some(o) if o.holds(now) => {
            return Err(StepError::new(
                step,
                StepErrorKind::Busy,
                format!(
                    "another run ({}) owns the rotation to {id}; standing aside",
                    o.run_id
                ),
            ));
        }
        _ => {}
    }
    let (version, value) = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING"))?
        .ok_or_else(|| {
            StepError::new(
                step,
                StepErrorKind::Busy,
                "AWSPENDING changed; standing aside",
            )
        })?;
    let stored = secret_value::parse_key(&value).filter(|k| &k.id == id);
    let (Some(stored), true) = (stored, version == info.version) else {
        return Err(StepError::new(
            step,
            StepErrorKind::Busy,
            "AWSPENDING changed since it was read; another run is acting; standing aside",
        ));
    };
    let created = keys.iter().find(|k| &k.id == id).map_or(now, |k| k.created);
    let owner =
        secret_value::Lease::mine(me, progress.execution.as_deref(), now + policy.owner_lease);
    let owned = secret_value::key_value_owned(
        Some(&value),
        id,
        &stored.secret,
        &stored.user_name,
        created,
        Some(&owner),
    );
    let token = progress.run_id.token("takeover");
    with_retries(3, || {
        ports
            .secrets
            .put(&target.secret, &token, &owned, Stage::Pending)
    })
    .await
    .map_err(at(step, "taking the rotation over"))
}

/// Gives up this run's ownership of its rotation (best effort): when AWSPENDING still holds this
/// run's version of the new key, a new version of the same key names this run with a lease that
/// has already expired, so the next run resumes the rotation at once. Used when a run ends
/// leaving its rotation to the next one.
pub async fn release(ports: &Ports, target: &Target, progress: &Progress) -> bool {
    let Some(mine) = progress.pending_version.as_ref() else {
        return false;
    };
    release_where(ports, target, &progress.run_id, |version, _| {
        version == mine
    })
    .await
}

/// Gives up whatever rotation of `target` the run `run_id` owns (best effort), when its lease
/// is at AWSPENDING: for a run that is stopping (SIGINT, SIGTERM) without the progress of its
/// steps at hand. The next run then resumes the rotation at once instead of waiting out the
/// lease. An intent record is left to expire (`intent_lease`): it is what shows a key created
/// in its window to be keyrotor's.
pub async fn release_run(ports: &Ports, target: &Target, run_id: &crate::domain::RunId) -> bool {
    release_where(ports, target, run_id, |_, value| {
        secret_value::owner_of(value).is_some_and(|o| o.run_id == run_id.as_str())
    })
    .await
}

async fn release_where(
    ports: &Ports,
    target: &Target,
    run_id: &crate::domain::RunId,
    ours: impl Fn(&SecretVersionId, &SecretString) -> bool,
) -> bool {
    let Ok(Some((version, value))) = ports.secrets.read(&target.secret, Stage::Pending).await
    else {
        return false;
    };
    let Some(stored) = secret_value::parse_key(&value).filter(|_| ours(&version, &value)) else {
        return false;
    };
    let now = ports.clock.now();
    let released = secret_value::Lease {
        run_id: run_id.to_string(),
        expires_at: now,
        holder: None,
        execution: None,
        seen: secret_value::Seen::Unknown,
    };
    let keys = ports
        .iam
        .list_keys_brief(&target.iam_user)
        .await
        .unwrap_or_default();
    let created = keys
        .iter()
        .find(|k| k.id == stored.id)
        .map_or(now, |k| k.created);
    let value = secret_value::key_value_owned(
        Some(&value),
        &stored.id,
        &stored.secret,
        &stored.user_name,
        created,
        Some(&released),
    );
    let token = run_id.token("release");
    ports
        .secrets
        .put(&target.secret, &token, &value, Stage::Pending)
        .await
        .is_ok()
}

/// `CreateAccessKey`, recovering from a lost answer: a key created by an attempt whose answer
/// never arrived is unusable (its secret was seen by nobody) and holds one of the user's two
/// places. Such keys are the ones that appeared since `before` was listed, inside this run's
/// intent window, never used; they are deleted, and the create is tried once more.
async fn create_key(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    now: SystemTime,
    before: &[KeyInfo],
) -> Result<NewKey, StepError> {
    let step = Step::Create;
    let from = crate::plan::intent_window_start(now + policy.intent_lease, policy);
    let appeared = |keys: Vec<KeyInfo>, new: Option<&AccessKeyId>| -> Vec<AccessKeyId> {
        keys.into_iter()
            .filter(|k| before.iter().all(|b| b.id != k.id) && Some(&k.id) != new)
            .filter(|k| k.created >= from)
            .map(|k| k.id)
            .collect()
    };
    let mut retried = false;
    loop {
        match ports.iam.create_key(&target.iam_user).await {
            Ok(new) => {
                if new.after_lost_answer {
                    let keys =
                        keys_of(ports, target, step, "listing keys after a lost answer").await?;
                    let lost = appeared(keys, Some(&new.info.id));
                    if !lost.is_empty() {
                        // Best effort: a key left here is the next run's orphan (same window).
                        let _ = delete_lost(ports, target, &lost).await;
                    }
                }
                return Ok(new);
            }
            Err(e) if e.kind == PortErrorKind::LostAnswer && !retried => {
                retried = true;
                let keys = keys_of(ports, target, step, "listing keys after a lost answer").await?;
                let lost = appeared(keys, None);
                if delete_lost(ports, target, &lost).await?.is_empty() {
                    return Err(StepError::new(
                        step,
                        StepErrorKind::Failed,
                        format!(
                            "{}; no key of this run's could be told apart, nothing was deleted",
                            e.message
                        ),
                    ));
                }
            }
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
        }
    }
}

/// Deletes the keys among `ids` that are Active and never used (a key someone already signs
/// with is not a lost one). Returns the ids deleted.
async fn delete_lost(
    ports: &Ports,
    target: &Target,
    ids: &[AccessKeyId],
) -> Result<Vec<AccessKeyId>, StepError> {
    let step = Step::Create;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys = ports
        .iam
        .list_keys(&target.iam_user)
        .await
        .map_err(at(step, "listing keys with their last use"))?;
    let mut gone = Vec::new();
    for k in keys.iter().filter(|k| ids.contains(&k.id)) {
        if k.status != KeyStatus::Active || k.last_used.is_some() {
            continue;
        }
        match ports.iam.delete_key(&target.iam_user, &k.id).await {
            Ok(()) => {}
            Err(e) if e.kind == PortErrorKind::NotFound => {}
            Err(e) => return Err(StepError::port(step, "deleting a lost key", e)),
        }
        tracing::warn!(key = %k.id, "deleted a key whose secret was lost (CreateAccessKey answer lost or a crash)");
        gone.push(k.id.clone());
    }
    Ok(gone)
}
