//! **inspect**: reads keys, the secret's stages and the connections; the planner decides.

use super::*;

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
