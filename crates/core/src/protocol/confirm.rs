//! **confirm**: every connection read back.

use super::*;

/// **confirm**: every endpoint, read back (by id, one listing per project), holds the new key
/// and is ready. Returns the connections as read, for the report.
pub async fn confirm(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
) -> Result<Vec<Endpoint>, StepError> {
    let step = Step::Confirm;
    ensure_key_live(ports, target, progress, step).await?;
    let new = carried(&progress.new_key, step, "new key")?;
    let read = run_endpoints(ports, target, progress, step).await?;
    for now in &read {
        if now.key_id().as_ref() != Some(&new) {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' does not hold the new key after the update",
                    now.name
                ),
            ));
        }
        if !now.is_ready {
            return Err(StepError::new(
                step,
                StepErrorKind::Failed,
                format!(
                    "service connection '{}' is not ready after the update",
                    now.name
                ),
            ));
        }
    }
    Ok(read)
}
