//! **create**: the new key, announced by an intent record and stored at AWSPENDING at once.

use super::*;

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
