//! **push**: every connection updated in place with the new key.

use super::*;

/// **push**: every endpoint that does not hold the new key yet gets it, updated in place. With
/// `policy.update_unlisted_connections`, so does every AWS connection of the organization that
/// holds the old key and is not in the config; returns those (`project/name`).
pub async fn push(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
) -> Result<Vec<String>, StepError> {
    let step = Step::Push;
    let mut endpoints = run_endpoints(ports, target, progress, step).await?;
    let mut unlisted = Vec::new();
    if policy.update_unlisted_connections
        && let Some(old) = progress.old_key.clone()
    {
        for c in holders_of(ports, target, &old, step).await? {
            if endpoints.iter().any(|e| e.handle.id == c.id) {
                continue;
            }
            let Some(project) = c.projects.first().and_then(|p| ProjectName::parse(p).ok()) else {
                continue;
            };
            let r = EndpointRef {
                project,
                by: EndpointSelector::Id(c.id.clone()),
            };
            let e = ports
                .ado
                .find(&target.organization, &r)
                .await
                .map_err(|e| StepError::port(step, &format!("service connection {r}"), e))?;
            unlisted.push(format!("{}/{}", r.project, e.name));
            progress.unlisted.push(r);
            endpoints.push(e);
        }
    }
    // Right before the PUTs: this run still owns the rotation (AWSPENDING is its version, not
    // taken over) and its key is live in IAM.
    let (id, secret) = pending_secret(ports, target, policy, progress, step).await?;
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
    }
    Ok(unlisted)
}
