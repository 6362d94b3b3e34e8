//! **cleanup**: deletes what earlier runs left, each delete re-checked right before it.

use super::retire::retire_key;
use super::*;

/// **cleanup**: takes a stale AWSPENDING label off, deletes never-used keys nobody holds
/// (re-checked right before each delete), and makes room for a new key.
pub async fn cleanup(
    ports: &Ports,
    target: &Target,
    run_id: &RunId,
    tidy: &Tidy,
) -> Result<Vec<String>, StepError> {
    let step = Step::Cleanup;
    let now = ports.clock.now();
    let mut done = Vec::new();
    // Orphans first: the stale intent that proves keyrotor created them is still in the
    // secret if this run dies in between.
    for id in &tidy.orphans {
        // Keys first, then the stages: a key created after our first read is announced by an
        // intent record that this second read sees.
        let keys = ports
            .iam
            .list_keys(&target.iam_user)
            .await
            .map_err(at(step, "listing keys"))?;
        let Some(k) = keys.iter().find(|k| &k.id == id) else {
            continue;
        };
        if k.last_used.is_some() {
            continue;
        }
        let stages = staged_keys(ports, target)
            .await
            .map_err(at(step, "reading the secret"))?;
        let referenced = stages
            .iter()
            .any(|(_, s)| matches!(&s.content, Content::Key { id: i, .. } if i == id));
        let live_intent = stages.iter().any(|(stage, s)| {
            *stage == Stage::Pending
                && matches!(&s.content, Content::Intent { run_id: r, .. } if r != run_id.as_str())
                && s.intent_holds(now)
        });
        if live_intent {
            return Err(StepError::new(
                step,
                StepErrorKind::Busy,
                "another run wrote an intent record and is creating a key; standing aside",
            ));
        }
        if referenced {
            continue;
        }
        match ports.iam.delete_key(&target.iam_user, id).await {
            Ok(()) => done.push(format!(
                "deleted orphan key {id} (never used, held by nobody)"
            )),
            Err(e) if e.kind == PortErrorKind::NotFound => {}
            Err(e) => return Err(StepError::port(step, "deleting an orphan key", e)),
        }
    }
    if tidy.clear_pending {
        let keys = keys_of(ports, target, step, "listing keys").await?;
        if let Some(info) = stage_info(ports, target, Stage::Pending)
            .await
            .map_err(at(step, "reading AWSPENDING"))?
        {
            let stale = match &info.content {
                Content::Intent { run_id: r, .. } => {
                    r != run_id.as_str() && !info.intent_holds(now)
                }
                Content::Key { id, .. } => !keys.iter().any(|k| &k.id == id),
                Content::Legacy | Content::Foreign => true,
            };
            if stale {
                ports
                    .secrets
                    .move_stage(&target.secret, Stage::Pending, None, Some(&info.version))
                    .await
                    .map_err(at(step, "clearing a stale AWSPENDING"))?;
                done.push("cleared a stale AWSPENDING label".to_owned());
            }
        }
    }
    if let Some(r) = &tidy.make_room {
        retire_key(ports, target, r, step, None).await?;
        done.push(format!("deleted the retired key {} to make room", r.key));
    }
    Ok(done)
}
