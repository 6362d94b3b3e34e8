//! **push**: every connection updated in place with the new key.

use super::*;

/// **push**: every endpoint that does not hold the new key yet gets it, updated in place.
pub async fn push(
    ports: &Ports,
    target: &Target,
    progress: &mut Progress,
) -> Result<Vec<String>, StepError> {
    let step = Step::Push;
    let mut updated = Vec::new();
    let endpoints = resolve_endpoints(ports, target, step).await?;
    // Right before the PUTs: this run still owns the rotation (AWSPENDING is its version, not
    // taken over) and its key is live in IAM.
    let (id, secret) = pending_secret(ports, target, progress, step).await?;
    ensure_key_live(ports, target, progress, step).await?;
    for e in endpoints {
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
