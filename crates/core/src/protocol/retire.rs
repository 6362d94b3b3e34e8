//! **retire**: the old key Inactive, then deleted.

use super::*;

/// **retire**: the previous key becomes Inactive, and is deleted when `r.delete` (no grace
/// period, or a later run finishing a retirement whose grace is over). The organization-wide
/// holder scan is this call's own.
pub async fn retire(ports: &Ports, target: &Target, r: &Retirement) -> Result<(), StepError> {
    retire_key(ports, target, r, Step::Retire, None).await
}

/// [`retire`] in the run whose confirm saw every connection of the target on the new key at
/// `confirmed_at`: the organization-wide holder scan may be one another target of the run started
/// after that moment ([`ServiceConnections::list_aws_since`](crate::ports::ServiceConnections::list_aws_since)).
pub async fn retire_confirmed(
    ports: &Ports,
    target: &Target,
    r: &Retirement,
    confirmed_at: Option<std::time::SystemTime>,
) -> Result<(), StepError> {
    retire_key(ports, target, r, Step::Retire, confirmed_at).await
}

/// Deactivates a key (if Active) and deletes it when `r.delete`. Invariant 1 (pipelines never
/// break, every connection of the organization counted): a key that any AWS connection of the
/// organization holds, listed in the config or not, stays Active and the step is refused, naming
/// the connections; and an Active key IAM saw in use after `r.unused_after` stays Active too.
pub(super) async fn retire_key(
    ports: &Ports,
    target: &Target,
    r: &Retirement,
    step: Step,
    since: Option<std::time::SystemTime>,
) -> Result<(), StepError> {
    let (id, delete) = (&r.key, r.delete);
    let holders = holders_of(ports, target, id, step, since).await?;
    if !holders.is_empty() {
        let listed = resolve_endpoints(ports, target, step)
            .await
            .map(|eps| eps.into_iter().map(|e| e.handle.id).collect::<Vec<_>>())
            .unwrap_or_default();
        let (mine, others): (Vec<_>, Vec<_>) = holders.iter().partition(|c| listed.contains(&c.id));
        let name = |c: &&crate::ports::AwsConnection| {
            format!(
                "{}/{}",
                c.projects.first().map_or("?", String::as_str),
                c.name
            )
        };
        let message = if others.is_empty() {
            format!(
                "key {id} is still held by service connection '{}'; it stays Active",
                mine.iter().map(name).collect::<Vec<_>>().join("', '")
            )
        } else {
            format!(
                "key {id} stays Active: service connection '{}' holds it and is not in this target's config; add it to the target's endpoints, point it at the new key, or set policy.update_unlisted_connections = true; then run keyrotor again",
                others.iter().map(name).collect::<Vec<_>>().join("', '")
            )
        };
        return Err(StepError::new(step, StepErrorKind::Refused, message));
    }
    let keys = keys_of(ports, target, step, "listing keys").await?;
    if let Some(new) = &r.successor {
        match keys.iter().find(|k| &k.id == new) {
            Some(k) if k.status == KeyStatus::Active => {}
            Some(_) => {
                return Err(StepError::new(
                    step,
                    StepErrorKind::Refused,
                    format!(
                        "key {id} stays Active: the key that replaced it, {new}, was deactivated by someone else"
                    ),
                ));
            }
            None => {
                return Err(StepError::new(
                    step,
                    StepErrorKind::Busy,
                    format!(
                        "key {id} stays Active: the key that replaced it, {new}, is gone (another run acted); standing aside"
                    ),
                ));
            }
        }
    }
    let Some(k) = keys.iter().find(|k| &k.id == id) else {
        return Ok(());
    };
    if k.status == KeyStatus::Active {
        if let Some(cutoff) = r.unused_after {
            let used = ports
                .iam
                .last_used(id)
                .await
                .map_err(at(step, "reading when the old key was last used"))?;
            let now = ports.clock.now();
            if let Some(used) = used.filter(|u| *u > cutoff && *u + crate::plan::QUIET_AFTER > now)
            {
                return Err(StepError::new(
                    step,
                    StepErrorKind::Refused,
                    format!(
                        "key {id} is still in use and stays Active: IAM saw it used at {}, after {} (the second half of the drain that followed the moment every listed connection held the new key, or later); something outside the organization's AWS service connections (or a job longer than policy.drain) still uses it: find it (CloudTrail, by the key id) and move it to the new key; a run after it has been quiet for a day retires the key",
                        humantime::format_rfc3339_seconds(used),
                        humantime::format_rfc3339_seconds(cutoff)
                    ),
                ));
            }
        }
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
