//! **inspect**: reads keys, the secret's stages and the connections; the planner decides.

use super::*;

/// **inspect**: keys first, then the secret's stages, then the endpoints (that order makes an
/// intent record visible whenever the key it announced is); last, the last use of the keys
/// that neither a connection nor a stage accounts for ([`Snapshot::unaccounted`]), the only
/// ones the planner asks about (in steady state: none, so no `GetAccessKeyLastUsed`).
pub async fn inspect(ports: &Ports, target: &Target) -> Result<Snapshot, StepError> {
    let step = Step::Inspect;
    let user_err = |e| {
        let what = format!("IAM user '{}'", target.iam_user);
        StepError::port(step, &what, e)
    };
    let keys = ports
        .iam
        .list_keys_brief(&target.iam_user)
        .await
        .map_err(user_err)?;
    let versions = ports
        .secrets
        .versions(&target.secret)
        .await
        .map_err(|e| StepError::port(step, &format!("secret '{}'", target.secret), e))?;
    // Only the stages DescribeSecret shows on a version are read (in steady state AWSPENDING
    // is on none). The labels were read after the keys, so an intent record whose key the
    // listing shows is among them.
    let secret_err = |e| StepError::port(step, &format!("secret '{}'", target.secret), e);
    let mut stages = [None, None, None];
    for (slot, stage) in stages
        .iter_mut()
        .zip([Stage::Current, Stage::Pending, Stage::Previous])
    {
        if labelled(&versions, stage) {
            *slot = stage_info(ports, target, stage).await.map_err(secret_err)?;
        }
    }
    let [current, pending, previous] = stages;
    let endpoints = resolve_endpoints(ports, target, step).await?;
    let mut snap = Snapshot {
        user: target.iam_user.clone(),
        keys,
        secret_exists: versions.is_some(),
        current,
        pending,
        previous,
        endpoints,
    };
    for id in snap.unaccounted() {
        let used = ports.iam.last_used(&id).await.map_err(user_err)?;
        if let Some(k) = snap.keys.iter_mut().find(|k| k.id == id) {
            k.last_used = used;
        }
    }
    Ok(snap)
}
