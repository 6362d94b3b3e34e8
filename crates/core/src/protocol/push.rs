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
    // A payload from before endpoint ids travelled: resolve the config's names once, then work
    // by id like every other run.
    if progress.endpoints.is_empty() {
        let eps = run_endpoints(ports, target, progress, step).await?;
        progress.endpoints = handles_of(&eps);
    }
    let mut unlisted = Vec::new();
    if policy.update_unlisted_connections
        && let Some(old) = progress.old_key.clone()
    {
        for c in holders_of(ports, target, &old, step, None).await? {
            if progress.endpoints.iter().any(|h| h.id == c.id) {
                continue;
            }
            let Some(project) = c.projects.first().and_then(|p| ProjectName::parse(p).ok()) else {
                continue;
            };
            unlisted.push(format!("{project}/{}", c.name));
            progress.endpoints.push(EndpointHandle {
                org: target.organization.clone(),
                project: project.clone(),
                id: c.id.clone(),
            });
            progress.unlisted.push(EndpointRef {
                project,
                by: EndpointSelector::Id(c.id.clone()),
            });
        }
    }
    // Right before the PUTs: this run still owns the rotation (AWSPENDING is its version, not
    // taken over) and its key is live in IAM.
    let (id, secret) = pending_secret(ports, target, policy, progress, step).await?;
    ensure_key_live(ports, target, progress, step).await?;
    // Then one fresh read of every connection, by id (one listing per project): it decides what
    // is still to do, and it is the read each PUT sends back (`set_credentials_from`), so no
    // connection is read on its own. A connection gone by id fails the step before any PUT.
    let endpoints = read_handles(ports, &progress.endpoints, step).await?;
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
            .set_credentials_from(&e, &id, &secret)
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
