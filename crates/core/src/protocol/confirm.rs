//! **confirm**: every connection read back.

use super::*;

/// **confirm**: every endpoint, read back, holds the new key and is ready.
pub async fn confirm(ports: &Ports, target: &Target, progress: &Progress) -> Result<(), StepError> {
    let step = Step::Confirm;
    ensure_key_live(ports, target, progress, step).await?;
    let new = progress.new_key.clone().ok_or_else(|| {
        StepError::new(
            step,
            StepErrorKind::Failed,
            "no new key in this run's progress",
        )
    })?;
    for e in run_endpoints(ports, target, progress, step).await? {
        let now = ports
            .ado
            .get(&e.handle)
            .await
            .map_err(at(step, "reading a service connection back"))?;
        let Some(now) = now else {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!("service connection '{}' is gone", e.name),
            ));
        };
        if now.key_id().as_ref() != Some(&new) {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' does not hold the new key after the update",
                    e.name
                ),
            ));
        }
        if !now.is_ready {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' is not ready after the update",
                    e.name
                ),
            ));
        }
    }
    Ok(())
}
