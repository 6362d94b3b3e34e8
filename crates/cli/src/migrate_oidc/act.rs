//! The three modes that change something: `--apply`, `--rollback`, `--finish`. Each re-reads what
//! it acts on and does only what is still missing, so a rerun after a crash converges. Every
//! step logs a `migrate-oidc:` line (the crash tests kill the process right after each).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use keyrotor_core::domain::{AccessKeyId, EndpointId, KeyStatus, ProjectName, SecretVersionId};
use keyrotor_core::oidc::{self, AUDIENCE, MigrationRecord, Phase, SwitchedConnection};
use keyrotor_core::oidc_plan::{MigrationPlan, Observed, ProviderStep, RoleKind, role_name_of};
use keyrotor_core::oidc_ports::{BackOnKey, ConnectionAuth};
use keyrotor_core::plan::Retirement;
use keyrotor_core::ports::{EndpointHandle, PortError, Stage};
use keyrotor_core::protocol::{self, StepErrorKind};
use keyrotor_core::report::exit;
use keyrotor_core::secret_value;
use secrecy::SecretString;

use super::{Ctx, Failure, connections, name, observing};
use crate::Io;

/// A failure while changing things: every connection still works; a rerun goes on.
fn failed(what: &str) -> impl Fn(PortError) -> Failure + '_ {
    move |e| {
        Failure(
            exit::FAILED,
            format!(
                "{what}: {} (every connection still works, on the key or on OIDC; run the same command again)",
                e.message
            ),
        )
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `--apply`.
pub(crate) async fn apply(
    ctx: &Ctx,
    o: &Observed,
    p: &MigrationPlan,
    acknowledged: &[String],
    io: &mut Io<'_>,
) -> Result<i32, Failure> {
    let t = &ctx.target;
    // What the role cannot carry, not acknowledged: refused before anything is changed.
    let open = p.unacknowledged(acknowledged);
    if !open.is_empty() {
        let items: Vec<String> = open
            .iter()
            .map(|u| u.describe(t.iam_user.as_str()))
            .collect();
        let flags: Vec<String> = open
            .iter()
            .map(|u| format!("--acknowledge {}", u.id()))
            .collect();
        return Err(refused(format!(
            "--apply is refused because the role cannot carry what the plan lists and this is not acknowledged: {}; deal with each (or accept it), then run again with {}",
            items.join("; "),
            flags.join(" ")
        )));
    }
    for a in acknowledged {
        if !p.uncarried.iter().any(|u| &u.id() == a) {
            let _ = writeln!(
                io.err,
                "note: --acknowledge {a} names nothing the plan lists (ignored)"
            );
        }
    }
    // The key must be the one the secret keeps (else a rollback has no secret to put back),
    // and no rotation may be half-way (it would switch the connections back to a key).
    let current = read_secret(ctx, Stage::Current).await?;
    let stored = current.and_then(|(_, v)| secret_value::parse_key(&v));
    if stored.as_ref().map(|k| &k.id) != Some(&o.key) {
        return Err(refused(format!(
            "the secret {} does not hold the key {} the connections hold at AWSCURRENT, so a rollback could not put it back: run keyrotor rotate (or fix the secret) first",
            t.secret, o.key
        )));
    }
    let pending = read_secret(ctx, Stage::Pending).await?;
    if let Some(k) = pending.and_then(|(_, v)| secret_value::parse_key(&v))
        && k.id != o.key
    {
        return Err(refused(format!(
            "a rotation of target '{}' is in progress (AWSPENDING holds {}): let it finish first",
            t.name, k.id
        )));
    }

    let iam = &ctx.oidc.iam;
    let mut provider_arn = p.provider_arn.clone();
    match p.provider {
        ProviderStep::Create => {
            provider_arn = match iam.create_provider(&p.issuer, AUDIENCE).await {
                Ok(arn) => arn,
                // Created meanwhile (a concurrent run): reuse it.
                Err(e) => match iam.find_provider(&p.issuer).await {
                    Ok(Some(found)) => found.arn,
                    _ => return Err(failed("creating the OIDC provider")(e)),
                },
            };
        }
        ProviderStep::AddAudience => iam
            .add_audience(&provider_arn, AUDIENCE)
            .await
            .map_err(failed("adding the audience to the OIDC provider"))?,
        ProviderStep::Reuse => {}
    }
    tracing::info!(provider = %provider_arn, "migrate-oidc: provider ready");

    let mut created_role = o.record.as_ref().and_then(|r| r.created_role.clone());
    let mut changed = p.provider != ProviderStep::Reuse;
    for r in &p.roles {
        match r.kind {
            RoleKind::Create => {
                // The boundary in the same call: the role never exists without it.
                let boundary = r.permissions.as_ref().and_then(|p| p.boundary.as_deref());
                iam.create_role(&r.name, &r.trust, &format!("Assumed by the Azure DevOps service connections of keyrotor target {} (OIDC)", t.name), boundary)
                    .await
                    .map_err(failed("creating the role"))?;
                created_role = Some(r.arn.clone());
            }
            RoleKind::Own | RoleKind::Kept if r.trust_changes => iam
                .set_trust(&r.name, &r.trust)
                .await
                .map_err(failed("updating the role's trust policy"))?,
            _ => {}
        }
        changed |= r.trust_changes;
        if let Some(boundary) = r
            .permissions
            .as_ref()
            .and_then(|p| p.boundary.as_deref())
            .filter(|_| r.boundary_changes)
        {
            // Before any policy, so that the role can never do more than the user.
            iam.set_boundary(&r.name, boundary)
                .await
                .map_err(failed("putting the permissions boundary on the role"))?;
            changed = true;
        }
        if let Some(perms) = &r.permissions {
            for arn in &perms.managed {
                iam.attach_policy(&r.name, arn)
                    .await
                    .map_err(failed("attaching a policy to the role"))?;
            }
            for inline in &perms.inline {
                iam.put_policy(&r.name, &inline.name, &inline.document)
                    .await
                    .map_err(failed("putting an inline policy on the role"))?;
            }
        }
        tracing::info!(role = %r.arn, "migrate-oidc: role ready");
    }
    if changed {
        // IAM is eventually consistent: give a new role or trust a moment before a pipeline
        // may need it (the same pause verify makes between its checks of a new key).
        let policy = &ctx.config.policy;
        tokio::time::sleep(policy.verify_interval * policy.verify_consecutive).await;
    }

    // The record before any switch: what each connection was, for a rollback.
    let mut record = o.record.clone().unwrap_or_else(|| MigrationRecord {
        version: MigrationRecord::VERSION,
        target: t.name.to_string(),
        phase: Phase::Applying,
        key_id: o.key.as_str().to_owned(),
        provider_arn: provider_arn.clone(),
        created_role: None,
        connections: Vec::new(),
        switched_at: None,
        oidc_only: Vec::new(),
    });
    record.phase = Phase::Applying;
    record.key_id = o.key.as_str().to_owned();
    record.provider_arn = provider_arn.clone();
    record.created_role = created_role;
    // A role whose trust now lets in only the provider's web identities: any later assumption
    // is a pipeline's on OIDC (what --finish waits for).
    let now = ctx.ports.clock.now();
    for r in &p.roles {
        let only_oidc = oidc::other_principals(&r.trust, &provider_arn).is_empty();
        let since = record.oidc_only_since(&r.arn);
        record.set_oidc_only(&r.arn, only_oidc.then(|| since.unwrap_or(now)));
    }
    let switched_before = record.switched_at.take();
    for (sw, c) in p.switches.iter().zip(&o.connections) {
        // On OIDC already: switched by an earlier run (its original is recorded), or before
        // keyrotor came (not keyrotor's to put back).
        if sw.done {
            continue;
        }
        record
            .connections
            .retain(|x| !x.id.eq_ignore_ascii_case(c.handle.id.as_str()));
        record.connections.push(SwitchedConnection {
            id: c.handle.id.to_string(),
            project: c.handle.project.to_string(),
            name: c.name.clone(),
            role_arn: sw.role_arn.clone(),
            original_assume_role: c.assume_role.clone(),
            original_use_oidc: c.use_oidc.clone(),
        });
    }
    save(ctx, &record).await?;
    tracing::info!("migrate-oidc: record written");

    let mut switched = Vec::new();
    for sw in p.switches.iter().filter(|s| !s.done) {
        // Re-read right before the change: a rerun skips what is done.
        let now = auth_now(ctx, &sw.handle).await?;
        if now
            .as_ref()
            .is_some_and(|c| c.uses_oidc() && c.assume_role == sw.role_arn)
        {
            continue;
        }
        let what = format!("switching service connection '{}' to OIDC", sw.name);
        ctx.oidc
            .ado
            .switch_to_oidc(&sw.handle, &sw.role_arn)
            .await
            .map_err(failed(&what))?;
        tracing::info!(connection = %sw.name, "migrate-oidc: connection switched");
        switched.push(sw);
    }
    record.phase = Phase::Applied;
    // The drain and the last-use checks count from the last switch; a rerun that switched
    // nothing does not move it.
    record.switched_at = match switched_before {
        Some(t) if switched.is_empty() => Some(t),
        _ => Some(ctx.ports.clock.now()),
    };
    save(ctx, &record).await?;
    tracing::info!("migrate-oidc: applied");

    let mut s = String::new();
    let _ = writeln!(s, "{}: every connection is on OIDC", t.name);
    let _ = writeln!(s, "  provider {provider_arn}");
    for r in &p.roles {
        let what = match r.kind {
            RoleKind::Create => "created",
            RoleKind::Own => "up to date",
            RoleKind::Kept if r.trust_changes => {
                "kept; the connections' subjects added to its trust"
            }
            RoleKind::Kept => "kept",
            RoleKind::Given => "given",
        };
        let _ = writeln!(s, "  role {} ({what})", r.arn);
    }
    for sw in &p.switches {
        let how = if switched.iter().any(|x| x.handle.id == sw.handle.id) {
            "switched in place"
        } else {
            "already on OIDC"
        };
        let _ = writeln!(
            s,
            "  {}/{} ({}): {how}, role {}",
            sw.handle.project, sw.name, sw.handle.id, sw.role_arn
        );
    }
    let _ = writeln!(
        s,
        "The key {} stays Active: `keyrotor migrate-oidc --target {} --rollback` puts every connection back on it; once pipelines run on OIDC, `--finish` retires it (not before policy.drain, {}).",
        o.key,
        t.name,
        humantime::format_duration(ctx.config.policy.drain)
    );
    let _ = io.out.write_all(s.as_bytes());
    Ok(exit::OK)
}

/// What reading the IAM user's keys is called in a failure.
const KEYS: &str = "listing the user's keys";

/// A refusal: nothing was changed, and running again will not help until `message` is dealt
/// with.
fn refused(message: String) -> Failure {
    Failure(exit::REFUSED, message)
}

/// Writes the migration record of the target.
async fn save(ctx: &Ctx, record: &MigrationRecord) -> Result<(), Failure> {
    ctx.oidc
        .store
        .save(&ctx.target.name, record)
        .await
        .map_err(failed("writing the migration record"))
}

/// What the target's secret holds at `stage`.
async fn read_secret(
    ctx: &Ctx,
    stage: Stage,
) -> Result<Option<(SecretVersionId, SecretString)>, Failure> {
    ctx.ports
        .secrets
        .read(&ctx.target.secret, stage)
        .await
        .map_err(observing("reading the secret"))
}

/// A service connection's authorization as it is right now (re-read before each change).
async fn auth_now(ctx: &Ctx, handle: &EndpointHandle) -> Result<Option<ConnectionAuth>, Failure> {
    ctx.oidc
        .ado
        .auth(handle)
        .await
        .map_err(failed("reading a service connection"))
}

fn handle_of(ctx: &Ctx, c: &SwitchedConnection) -> Result<EndpointHandle, Failure> {
    let project = ProjectName::parse(&c.project).map_err(|e| {
        Failure(
            exit::FAILED,
            format!("the migration record names project '{}': {e}", c.project),
        )
    })?;
    Ok(EndpointHandle {
        org: ctx.target.organization.clone(),
        project,
        id: EndpointId::parse(&c.id).map_err(|e| {
            Failure(
                exit::FAILED,
                format!("the migration record names connection id '{}': {e}", c.id),
            )
        })?,
    })
}

/// The record that `--rollback` and `--finish` (`what`) act on, which must be there.
pub(crate) fn recorded(
    ctx: &Ctx,
    record: Option<MigrationRecord>,
    what: &str,
) -> Result<MigrationRecord, Failure> {
    record.ok_or_else(|| no_record(ctx, what))
}

/// The key the record says the connections were moved off.
fn recorded_key(record: &MigrationRecord) -> Result<AccessKeyId, Failure> {
    AccessKeyId::parse(&record.key_id).map_err(|_| {
        Failure(
            exit::FAILED,
            "the migration record names no valid key".into(),
        )
    })
}

fn no_record(ctx: &Ctx, what: &str) -> Failure {
    Failure(
        exit::USAGE,
        format!(
            "no migration of target '{}' is recorded ({}): there is nothing to {what}",
            name(ctx),
            ctx.oidc.store.location(name(ctx))
        ),
    )
}

/// `--rollback`.
pub(crate) async fn rollback(
    ctx: &Ctx,
    mut record: MigrationRecord,
    io: &mut Io<'_>,
) -> Result<i32, Failure> {
    let t = &ctx.target;
    if record.phase == Phase::Finished {
        return Err(refused(format!(
            "the migration of target '{}' is finished: its key is retired, there is no key to go back to",
            t.name
        )));
    }
    let key = recorded_key(&record)?;
    let iam = &ctx.ports.iam;
    let keys = iam
        .list_keys_brief(&t.iam_user)
        .await
        .map_err(observing(KEYS))?;
    if !keys
        .iter()
        .any(|k| k.id == key && k.status == KeyStatus::Active)
    {
        return Err(refused(format!(
            "the key {key} is no longer Active in IAM: the connections stay on OIDC"
        )));
    }
    let current = read_secret(ctx, Stage::Current).await?;
    let Some(stored) = current
        .and_then(|(_, v)| secret_value::parse_key(&v))
        .filter(|k| k.id == key)
    else {
        return Err(refused(format!(
            "the secret {} no longer holds the key {key} at AWSCURRENT: the connections stay on OIDC",
            t.secret
        )));
    };
    let mut back = Vec::new();
    for c in &record.connections {
        let handle = handle_of(ctx, c)?;
        let now = auth_now(ctx, &handle).await?;
        if !now.as_ref().is_some_and(|n| n.uses_oidc()) {
            continue;
        }
        let what = format!("putting service connection '{}' back on the key", c.name);
        ctx.oidc
            .ado
            .switch_to_key(
                &handle,
                BackOnKey {
                    key: &key,
                    secret: &stored.secret,
                    assume_role: &c.original_assume_role,
                    use_oidc: &c.original_use_oidc,
                },
            )
            .await
            .map_err(failed(&what))?;
        tracing::info!(connection = %c.name, "migrate-oidc: connection back on the key");
        back.push(format!("{}/{}", c.project, c.name));
    }
    record.phase = Phase::RolledBack;
    record.switched_at = None;
    save(ctx, &record).await?;
    tracing::info!("migrate-oidc: rolled back");
    let mut s = format!(
        "{}: every connection is back on the key {key} (in place)\n",
        t.name
    );
    for b in &back {
        let _ = writeln!(s, "  {b}: back on the key");
    }
    let _ = writeln!(
        s,
        "Left in place (harmless; --apply reuses them): the OIDC provider {}{}.",
        record.provider_arn,
        record
            .created_role
            .as_deref()
            .map(|r| format!(" and the role {r}"))
            .unwrap_or_default()
    );
    let _ = io.out.write_all(s.as_bytes());
    Ok(exit::OK)
}

/// `--finish`.
pub(crate) async fn finish(
    ctx: &Ctx,
    mut record: MigrationRecord,
    io: &mut Io<'_>,
) -> Result<i32, Failure> {
    let key = recorded_key(&record)?;
    let t = &ctx.target;
    match record.phase {
        Phase::Finished => {
            let _ = writeln!(
                io.out,
                "{}: the migration is finished already; the key {key} is retired",
                t.name
            );
            return Ok(exit::OK);
        }
        Phase::Applying => {
            return Err(refused(format!(
                "the apply of target '{}' did not finish: run --apply again (or --rollback)",
                t.name
            )));
        }
        Phase::RolledBack => {
            return Err(refused(format!(
                "target '{}' was rolled back to its key: run --apply first",
                t.name
            )));
        }
        Phase::Applied => {}
    }
    let switched_at = record.switched_at.unwrap_or(UNIX_EPOCH);
    for c in connections(ctx).await? {
        if !c.uses_oidc() {
            return Err(refused(format!(
                "service connection '{}' is not on OIDC: run --apply again",
                c.name
            )));
        }
    }
    let drain = ctx.config.policy.drain;
    let now = ctx.ports.clock.now();
    if now < switched_at + drain {
        return Err(refused(format!(
            "the drain after the switch is not over (policy.drain, {}): pipeline jobs that started before it may still use the key; run --finish again after {}",
            humantime::format_duration(drain),
            humantime::format_rfc3339_seconds(switched_at + drain)
        )));
    }
    // IAM's last-used dates have a granularity of seconds (and lag): a use in the same second as
    // the end of the drain counts as a use after it.
    let since = secs(switched_at) + drain.as_secs();
    let keys = ctx
        .ports
        .iam
        .list_keys(&t.iam_user)
        .await
        .map_err(observing(KEYS))?;
    if let Some(k) = keys.iter().find(|k| k.id == key)
        && let Some(used) = k.last_used.filter(|u| secs(*u) >= since)
    {
        return Err(refused(format!(
            "the key {key} was used at {} after the switch to OIDC (IAM's last-used date): something still uses it; find it before finishing",
            humantime::format_rfc3339_seconds(used)
        )));
    }
    let mut roles: Vec<String> = record
        .connections
        .iter()
        .map(|c| c.role_arn.clone())
        .collect();
    roles.sort();
    roles.dedup();
    // IAM's RoleLastUsed says when a role was assumed, not how. It proves a pipeline on OIDC only
    // when the role's trust lets in nothing but the provider's web identities
    // (sts:AssumeRoleWithWebIdentity), and only for uses after keyrotor knew the trust to be so:
    // else an old-key job assuming a kept role (or any other principal it trusts) would pass.
    for arn in &roles {
        let role = ctx
            .oidc
            .iam
            .role(role_name_of(arn))
            .await
            .map_err(observing("reading a role"))?
            .ok_or_else(|| {
                refused(format!(
                    "role {arn}, which the switched connections use, does not exist: run --apply again (or --rollback)"
                ))
            })?;
        let others = oidc::other_principals(&role.trust, &record.provider_arn);
        if !others.is_empty() {
            if record.oidc_only_since(arn).is_some() {
                record.set_oidc_only(arn, None);
                save(ctx, &record).await?;
            }
            return Err(refused(format!(
                "role {arn} also trusts {} besides the OIDC provider {}, so IAM's RoleLastUsed cannot show that a pipeline assumed it through OIDC (sts:AssumeRoleWithWebIdentity): remove those principals from its trust policy (the switched connections need only the provider's statement; a --rollback would need them back), run a pipeline that uses the connection, then --finish again",
                others.join("; "),
                record.provider_arn
            )));
        }
        let Some(since) = record.oidc_only_since(arn) else {
            // First seen trusting only the provider: uses from now on count.
            record.set_oidc_only(arn, Some(now));
            save(ctx, &record).await?;
            return Err(refused(format!(
                "role {arn} trusts only the OIDC provider from now on ({}), and IAM's RoleLastUsed from before may be another principal's: run a pipeline that uses the connection, then --finish again",
                humantime::format_rfc3339_seconds(now)
            )));
        };
        let from = since.max(switched_at);
        let used = role.last_used.is_some_and(|u| secs(u) >= secs(from));
        if !used {
            return Err(refused(format!(
                "role {arn} has not been assumed through the OIDC provider since {} (IAM's RoleLastUsed; its trust lets in only the provider's web identities): run a pipeline that uses the connection, then --finish again",
                humantime::format_rfc3339_seconds(from)
            )));
        }
    }
    // The same checks as retire: no connection of the organization holds the key.
    // (IAM's last use was checked above, against the switch time.)
    let retirement = Retirement {
        key: key.clone(),
        delete: ctx.config.policy.delete_old_key_after.is_zero(),
        unused_after: None,
        successor: None,
    };
    protocol::retire(&ctx.ports, t, &retirement)
        .await
        .map_err(|e| {
            let code = if e.kind == StepErrorKind::Refused {
                exit::REFUSED
            } else {
                exit::FAILED
            };
            Failure(code, e.message)
        })?;
    record.phase = Phase::Finished;
    save(ctx, &record).await?;
    tracing::info!("migrate-oidc: finished");
    let retired = if ctx.config.policy.delete_old_key_after.is_zero() {
        "deleted"
    } else {
        "Inactive (deleted by keyrotor rotate after policy.delete_old_key_after)"
    };
    let _ = writeln!(
        io.out,
        "{}: the key {key} is {retired}; every connection uses OIDC.\nLeft, not deleted: the IAM user {} and the secret {} (it still holds the retired key's value). Delete them when nothing else needs them, and remove target '{}' from the config: its connections hold no key to rotate.",
        t.name, t.iam_user, t.secret, t.name
    );
    Ok(exit::OK)
}
