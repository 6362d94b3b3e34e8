//! **promote**: AWSCURRENT to the new version.

use super::*;

/// **promote**: AWSCURRENT moves to the new version (the old becomes AWSPREVIOUS), AWSPENDING
/// is dropped. Stage moves are absolute, so a repeat does nothing new.
///
/// With a drain (`policy.drain` not zero), the new key's version first records when every
/// connection held it (`KeyrotorConfirmedAt`, from confirm): every later run counts the old key's
/// drain and grace from that moment, whatever happened to this run's own state.
pub async fn promote(
    ports: &Ports,
    target: &Target,
    policy: &Policy,
    progress: &mut Progress,
) -> Result<(), StepError> {
    let step = Step::Promote;
    ensure_key_live(ports, target, progress, step).await?;
    if let Some(at) = progress.confirmed_at.filter(|_| !policy.drain.is_zero()) {
        stamp_confirmed(ports, target, progress, at).await?;
    }
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

/// Writes the new key again at AWSPENDING with `"KeyrotorConfirmedAt"` (see [`promote`]), unless
/// the version there already records it. A version of the same key this run wrote in an earlier
/// attempt of this step is taken as this run's; anything else at AWSPENDING is left to
/// [`promote_once`] (another run's takeover, or a rotation already promoted).
async fn stamp_confirmed(
    ports: &Ports,
    target: &Target,
    progress: &mut Progress,
    at: std::time::SystemTime,
) -> Result<(), StepError> {
    let step = Step::Promote;
    let new = carried(&progress.new_key, step, "new key")?;
    let Some((version, value)) = ports
        .secrets
        .read(&target.secret, Stage::Pending)
        .await
        .map_err(super::at(step, "reading AWSPENDING"))?
    else {
        return Ok(());
    };
    let ours = secret_value::owner_of(&value).is_some_and(|o| o.run_id == progress.run_id.as_str());
    let (Some(k), Some(created)) = (
        secret_value::parse_key(&value).filter(|k| k.id == new),
        secret_value::created_of(&value),
    ) else {
        return Ok(());
    };
    if !ours && Some(&version) != progress.pending_version.as_ref() {
        return Ok(());
    }
    progress.pending_version = Some(version);
    if secret_value::confirmed_of(&value).is_some() {
        return Ok(());
    }
    let stamped = secret_value::key_value_stamped(
        Some(&value),
        &k.id,
        &k.secret,
        &k.user_name,
        created,
        secret_value::owner_of(&value).as_ref(),
        Some(at),
    );
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let token = progress.run_id.token(&format!("confirmed-{secs}"));
    let version = with_retries(3, || {
        ports
            .secrets
            .put(&target.secret, &token, &stamped, Stage::Pending)
    })
    .await
    .map_err(super::at(
        step,
        "recording when every connection held the new key",
    ))?;
    progress.pending_version = Some(version);
    Ok(())
}
