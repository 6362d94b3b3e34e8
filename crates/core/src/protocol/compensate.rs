//! **compensate**: undoes a failed rotation as far as is safe.

use super::*;

/// What compensation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compensation {
    /// Nothing to undo.
    Nothing,
    /// The new key was deleted; the old key is kept and every endpoint holds it.
    Compensated(String),
    /// Some endpoints hold the new (verified) key and could not be put back; the old key is kept.
    Partial(String),
    /// Another run took the rotation over: nothing of it was undone.
    StoodAside(String),
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
        // Take our intent record off AWSPENDING if it is still there.
        if let Some(v) = &progress.intent_version {
            clear_pending_if_on(ports, target, v).await?;
        }
        return Ok(Compensation::Nothing);
    };
    // Invariant 7: a rotation another run took over is that run's now; undo nothing of it.
    if let Some(other) = taken_over_by(ports, target, progress, step).await? {
        return Ok(Compensation::StoodAside(format!(
            "another run ({other}) took this rotation over; nothing of it was undone"
        )));
    }
    let endpoints = match run_endpoints(ports, target, progress, step).await {
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
        let keys = keys_of(ports, target, step, "listing keys").await?;
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
    // Invariant 1, every connection of the organization counted: the new key is deleted only
    // when no AWS connection holds it, listed in the config or not (another run may have
    // pushed it).
    match holders_of(ports, target, new, step, None).await {
        Ok(h) if !h.is_empty() => {
            let names: Vec<String> = h
                .iter()
                .map(|c| {
                    format!(
                        "{}/{}",
                        c.projects.first().map_or("?", String::as_str),
                        c.name
                    )
                })
                .collect();
            return Ok(Compensation::Partial(format!(
                "{} hold the new, verified key {new}, so it is kept Active, and so is the old key; the next run finishes the rotation",
                names.join(", ")
            )));
        }
        Ok(_) => {}
        // This run created the key and never sent a PUT: no connection can hold it.
        Err(_) if progress.created_here && !progress.put_attempted => {}
        Err(e) => {
            return Ok(Compensation::Partial(format!(
                "the new key {new} is kept: whether a connection holds it could not be checked ({})",
                e.message
            )));
        }
    }
    match ports.iam.delete_key(&target.iam_user, new).await {
        Ok(()) => {}
        Err(e) if e.kind == PortErrorKind::NotFound => {}
        Err(e) => return Err(StepError::port(step, "deleting the new key", e)),
    }
    if let Some(v) = &progress.pending_version {
        clear_pending_if_on(ports, target, v).await?;
    }
    Ok(Compensation::Compensated(format!(
        "the new key {new} was deleted; the old key {} is kept and every connection holds it",
        progress
            .old_key
            .as_ref()
            .map_or_else(|| "-".to_owned(), AccessKeyId::masked)
    )))
}

/// Takes AWSPENDING off `version` if it is still there (this run's intent or key), and off
/// nothing else.
async fn clear_pending_if_on(
    ports: &Ports,
    target: &Target,
    version: &SecretVersionId,
) -> Result<(), StepError> {
    let step = Step::Compensate;
    let pending = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(at(step, "reading AWSPENDING"))?;
    if pending.as_ref().map(|(v, _)| v) == Some(version) {
        ports
            .secrets
            .move_stage(&target.secret, Stage::Pending, None, Some(version))
            .await
            .map_err(at(step, "clearing AWSPENDING"))?;
    }
    Ok(())
}
