//! **promote**: AWSCURRENT to the new version.

use super::*;

/// **promote**: AWSCURRENT moves to the new version (the old becomes AWSPREVIOUS), AWSPENDING
/// is dropped. Stage moves are absolute, so a repeat does nothing new.
pub async fn promote(ports: &Ports, target: &Target, progress: &Progress) -> Result<(), StepError> {
    let step = Step::Promote;
    ensure_key_live(ports, target, progress, step).await?;
    let new_version = carried(&progress.pending_version, step, "pending version")?;
    // A concurrent run finishing the same rotation may move a label between our read and our
    // move; the move then fails, and a fresh read shows whether the work is done.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match promote_once(ports, target, progress, &new_version).await {
            Ok(()) => return Ok(()),
            Err(Stop::Port(e)) if attempts < 3 && e.kind == PortErrorKind::Invalid => continue,
            Err(Stop::Port(e)) => {
                return Err(StepError::port(step, "moving the secret's stages", e));
            }
            Err(Stop::Step(e)) => return Err(e),
        }
    }
}

/// Why one promotion attempt stopped.
enum Stop {
    /// A port failed (an `Invalid` one is a label that moved under us: read again).
    Port(PortError),
    /// Another run took the rotation over.
    Step(StepError),
}

impl From<PortError> for Stop {
    fn from(e: PortError) -> Self {
        Stop::Port(e)
    }
}

async fn promote_once(
    ports: &Ports,
    target: &Target,
    progress: &Progress,
    new_version: &SecretVersionId,
) -> Result<(), Stop> {
    let versions = ports
        .secrets
        .versions(&target.secret)
        .await?
        .unwrap_or_default();
    let holder = |label: &str| {
        versions
            .iter()
            .find(|v| v.stages.iter().any(|s| s == label))
            .map(|v| v.id.clone())
    };
    let current = holder("AWSCURRENT");
    // Invariant 7, the secret half: AWSPENDING on another version before this run's key is
    // current may be another run's takeover; only then is its value read.
    let pending = holder("AWSPENDING");
    if current.as_ref() != Some(new_version)
        && pending.is_some()
        && pending.as_ref() != Some(new_version)
        && let Some(other) = taken_over_by(ports, target, progress, Step::Promote)
            .await
            .map_err(Stop::Step)?
    {
        return Err(Stop::Step(StepError::new(
            Step::Promote,
            StepErrorKind::Busy,
            format!("another run ({other}) took this rotation over; standing aside"),
        )));
    }
    if current.as_ref() != Some(new_version) {
        if let Some(old) = &current {
            ports
                .secrets
                .move_stage(
                    &target.secret,
                    Stage::Previous,
                    Some(old),
                    holder("AWSPREVIOUS").as_ref(),
                )
                .await?;
        }
        ports
            .secrets
            .move_stage(
                &target.secret,
                Stage::Current,
                Some(new_version),
                current.as_ref(),
            )
            .await?;
    }
    if holder("AWSPENDING").as_ref() == Some(new_version) {
        ports
            .secrets
            .move_stage(&target.secret, Stage::Pending, None, Some(new_version))
            .await?;
    }
    Ok(())
}
