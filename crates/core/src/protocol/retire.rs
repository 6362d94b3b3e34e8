//! **retire**: the old key Inactive, then deleted.

use super::*;

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

/// Deactivates a key (if Active) and deletes it when `delete`. Invariant 1 (pipelines never
/// break, every connection of the organization counted): a key that any AWS connection of the
/// organization holds, listed in the config or not, stays Active and the step is refused, naming
/// the connections.
pub(super) async fn retire_key(
    ports: &Ports,
    target: &Target,
    id: &AccessKeyId,
    delete: bool,
    step: Step,
) -> Result<(), StepError> {
    let holders = holders_of(ports, target, id, step).await?;
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
                "key {id} stays Active: service connection '{}' holds it and is not in this target's config; add it to the target's endpoints (or point it at the new key), then run keyrotor again",
                others.iter().map(name).collect::<Vec<_>>().join("', '")
            )
        };
        return Err(StepError::new(step, StepErrorKind::Refused, message));
    }
    let keys = ports
        .iam
        .list_keys_brief(&target.iam_user)
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
