//! `keyrotor migrate-oidc`: moves a target's service connections from its IAM user's access key
//! to OIDC (the AWS Toolkit's `useOIDC`), safely and reversibly.
//!
//! Without a mode flag it prints the plan and changes nothing (every request a read). The
//! modes (`act`): `--apply` creates or reuses the organization's OIDC provider, creates the
//! target's role (trust: exactly Azure DevOps' audience and the connections' subjects;
//! permissions: the user's effective ones, within the user's permissions boundary) or uses
//! `--role-arn`, or keeps the role a connection
//! assumes today and adds the subjects to its trust, writes the migration record, and switches
//! each connection in place; `--rollback` puts every switched connection back on the key, in
//! place; `--finish` retires the key once nothing holds or uses it and each role was assumed
//! while its trust let in only the OIDC provider.
//!
//! What a role cannot carry of the user's access (user-specific policy keys, resource policies
//! naming the user) the plan lists, and `--apply` is refused until each item is acknowledged
//! (`--acknowledge ID`).
//!
//! Crash safety: roles and trust are complete before the record is written, and the record
//! (with what each connection was before) before any connection is switched; so at every
//! instant each connection either holds the Active key or is on OIDC with a role that trusts it,
//! and a rerun of the same command converges.

mod act;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use keyrotor_core::config::{Config, Target};
use keyrotor_core::domain::{AccessKeyId, TargetName};
use keyrotor_core::oidc::{self, AUDIENCE, MigrationRecord, Phase, Source};
use keyrotor_core::oidc_plan::{MigrationPlan, Observed, PlanError, ProviderStep, RoleKind};
use keyrotor_core::oidc_ports::{ConnectionAuth, MigrationStore, OidcConnections, OidcIam};
use keyrotor_core::ports::PortErrorKind;
use keyrotor_core::protocol::{self, Ports};
use keyrotor_core::report::{Step, exit};
use keyrotor_core::secrets;

use crate::{Backend, Io};

const EXIT_CODES: &str = "\
Exit codes:
  0  the plan was shown, or the step is done (also when it was done already)
  1  a step failed part way (every connection still works: on the key or on OIDC); run it again
  2  bad usage or input (unknown target, a role that does not exist or does not trust the
     connections, nothing recorded to roll back or finish); nothing changed
  3  refused as unsafe (the key is still held or used, a rotation is in progress, the drain is
     not over, the role not yet assumed through the OIDC provider, or something the role cannot
     carry not acknowledged with --acknowledge); nothing changed";

/// IAM's default quota of managed policies attached to one role.
const MANAGED_PER_ROLE: usize = 10;

/// Options of `keyrotor migrate-oidc`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = EXIT_CODES)]
pub struct MigrateArgs {
    /// The config file.
    #[arg(long, short, env = "KEYROTOR_CONFIG", default_value = "keyrotor.toml")]
    pub config: PathBuf,
    /// The target whose connections move to OIDC.
    #[arg(long, short = 't', value_name = "NAME")]
    pub target: String,
    /// Do it: provider, role, record, then each connection switched in place.
    #[arg(long, conflicts_with_all = ["rollback", "finish"])]
    pub apply: bool,
    /// Put every switched connection back on the key, in place.
    #[arg(long, conflicts_with = "finish")]
    pub rollback: bool,
    /// Retire the key: nothing holds it anywhere in the organization, nothing used it since the
    /// switch, and each role was assumed through the OIDC provider (its trust lets in nothing
    /// else).
    #[arg(long)]
    pub finish: bool,
    /// Use this role for connections that assume none today (its trust must already let them
    /// in), instead of creating one.
    #[arg(long, value_name = "ARN")]
    pub role_arn: Option<String>,
    /// Acknowledge one thing the plan lists as not carried to the role (a policy that uses
    /// `${aws:username}` and the like, a resource policy that names the user), by the id the
    /// plan shows; once per item. `--apply` is refused while any is not acknowledged.
    #[arg(long, value_name = "ID", action = clap::ArgAction::Append)]
    pub acknowledge: Vec<String>,
}

/// The adapters `migrate-oidc` needs besides the rotation's.
#[derive(Clone)]
pub struct OidcPorts {
    /// IAM: providers, roles, the user's policies.
    pub iam: Arc<dyn OidcIam>,
    /// Where the migration record is kept.
    pub store: Arc<dyn MigrationStore>,
    /// Azure DevOps: the organization id and the switch.
    pub ado: Arc<dyn OidcConnections>,
}

/// Everything a mode works with.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) target: Target,
    pub(crate) ports: Ports,
    pub(crate) oidc: OidcPorts,
}

/// A failure: the exit code and one sentence.
pub(crate) struct Failure(pub(crate) i32, pub(crate) String);

impl From<PlanError> for Failure {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Invalid(m) => Failure(exit::USAGE, m),
            PlanError::Refused(m) => Failure(exit::REFUSED, m),
        }
    }
}

/// A port error while observing: bad input unless it is a failure of the service.
pub(crate) fn observing(what: &str) -> impl Fn(keyrotor_core::ports::PortError) -> Failure + '_ {
    move |e| {
        let code = match e.kind {
            PortErrorKind::Retryable | PortErrorKind::Failed | PortErrorKind::LostAnswer => {
                exit::FAILED
            }
            _ => exit::USAGE,
        };
        Failure(code, format!("{what}: {}", e.message))
    }
}

/// Runs the command. Returns the exit code.
pub async fn run(args: &MigrateArgs, backend: &dyn Backend, io: &mut Io<'_>) -> i32 {
    let result = async {
        let ctx = prepare(args, backend).await?;
        let mode = if args.apply {
            "apply"
        } else if args.rollback {
            "rollback"
        } else if args.finish {
            "finish"
        } else {
            "plan"
        };
        tracing::info!(target_name = %ctx.target.name, mode, "migrate-oidc: starting");
        let record = ctx
            .oidc
            .store
            .load(&ctx.target.name)
            .await
            .map_err(observing("reading the migration record"))?;
        match mode {
            "rollback" => act::rollback(&ctx, act::recorded(&ctx, record, "roll back")?, io).await,
            "finish" => act::finish(&ctx, act::recorded(&ctx, record, "finish")?, io).await,
            _ if record.as_ref().is_some_and(|r| r.phase == Phase::Finished) => {
                let _ = writeln!(
                    io.out,
                    "{}: the migration to OIDC is finished (the key is retired); nothing to do",
                    ctx.target.name
                );
                Ok(exit::OK)
            }
            _ => {
                let observed = observe(&ctx, args, record).await?;
                let plan = keyrotor_core::oidc_plan::plan(&observed)?;
                if mode == "apply" {
                    act::apply(&ctx, &observed, &plan, &args.acknowledge, io).await
                } else {
                    let others = other_holders(&ctx, &observed).await;
                    let _ = io
                        .out
                        .write_all(plan_text(&ctx, &observed, &plan, &others).as_bytes());
                    Ok(exit::OK)
                }
            }
        }
    }
    .await;
    match result {
        Ok(code) => code,
        Err(Failure(code, msg)) => {
            let _ = writeln!(io.err, "error: {}", keyrotor_core::domain::redact(&msg));
            code
        }
    }
}

async fn prepare(args: &MigrateArgs, backend: &dyn Backend) -> Result<Ctx, Failure> {
    let usage = |m: String| Failure(exit::USAGE, m);
    let config = Config::load(&args.config).map_err(|e| usage(e.to_string()))?;
    let target = config
        .select(std::slice::from_ref(&args.target))
        .map_err(usage)?
        .remove(0);
    if let Some(arn) = &args.role_arn
        && !(arn.starts_with("arn:") && arn.contains(":role/"))
    {
        return Err(usage(format!(
            "--role-arn: '{arn}' is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
        )));
    }
    let aws = backend.aws(config.aws_region.clone()).await;
    let pat = secrets::resolve(&config.pat, aws.params.as_ref(), aws.secrets.as_ref())
        .await
        .map_err(|e| usage(format!("ado.pat: the PAT could not be read: {}", e.message)))?;
    let ado = backend
        .ado(pat.clone())
        .map_err(|e| usage(format!("ado.pat: {}", e.message)))?;
    let oidc = backend
        .oidc(config.aws_region.clone(), pat)
        .await
        .map_err(|e| usage(format!("ado.pat: {}", e.message)))?;
    let ports = Ports {
        iam: aws.iam,
        secrets: aws.secrets,
        sts: aws.sts,
        ado,
        clock: backend.clock(),
        executions: aws.executions,
    };
    Ok(Ctx {
        config,
        target,
        ports,
        oidc,
    })
}

/// The target's connections as they are now (each once).
pub(crate) async fn connections(ctx: &Ctx) -> Result<Vec<ConnectionAuth>, Failure> {
    let endpoints = protocol::resolve_endpoints(&ctx.ports, &ctx.target, Step::Inspect)
        .await
        .map_err(|e| {
            let code = match e.kind {
                protocol::StepErrorKind::Invalid => exit::USAGE,
                _ => exit::FAILED,
            };
            Failure(code, e.message)
        })?;
    let mut out = Vec::new();
    for e in endpoints {
        let auth = ctx
            .oidc
            .ado
            .auth(&e.handle)
            .await
            .map_err(observing("reading a service connection"))?
            .ok_or_else(|| {
                Failure(
                    exit::USAGE,
                    format!("service connection {} no longer exists", e.handle.id),
                )
            })?;
        out.push(auth);
    }
    Ok(out)
}

/// Reads what the plan depends on.
async fn observe(
    ctx: &Ctx,
    args: &MigrateArgs,
    record: Option<MigrationRecord>,
) -> Result<Observed, Failure> {
    let t = &ctx.target;
    let conns = connections(ctx).await?;
    let on_key: Vec<&str> = conns
        .iter()
        .filter(|c| !c.uses_oidc())
        .filter_map(|c| c.username.as_deref())
        .collect();
    let key_raw = match (on_key.first(), &record) {
        (Some(first), _) => {
            if let Some(other) = on_key.iter().find(|k| *k != first) {
                return Err(Failure(
                    exit::REFUSED,
                    format!(
                        "the connections of target '{}' hold different keys ({} and {}): run keyrotor rotate first so that they hold one",
                        t.name,
                        keyrotor_core::domain::mask_key_ids(first),
                        keyrotor_core::domain::mask_key_ids(other)
                    ),
                ));
            }
            (*first).to_owned()
        }
        (None, Some(r)) => r.key_id.clone(),
        (None, None) => {
            return Err(Failure(
                exit::USAGE,
                format!(
                    "no connection of target '{}' holds a key: there is nothing to move to OIDC",
                    t.name
                ),
            ));
        }
    };
    let key = AccessKeyId::parse(&key_raw).map_err(|_| {
        Failure(
            exit::USAGE,
            format!(
                "the connections of target '{}' hold a username that is not an access key id",
                t.name
            ),
        )
    })?;
    let iam = &ctx.oidc.iam;
    let org_id = ctx
        .oidc
        .ado
        .organization_id(&t.organization)
        .await
        .map_err(observing("reading the organization's id (connectionData)"))?;
    let user_arn = iam
        .user_arn(&t.iam_user)
        .await
        .map_err(observing("reading the IAM user"))?;
    let account_prefix = user_arn
        .split_once(":user/")
        .map_or(user_arn.as_str(), |(a, _)| a)
        .to_owned();
    let issuer = oidc::issuer_path(&org_id);
    let provider = iam
        .find_provider(&issuer)
        .await
        .map_err(observing("reading IAM's OIDC providers"))?;
    let own_role = iam
        .role(&oidc::role_name(&t.name))
        .await
        .map_err(observing("reading the target's role"))?;
    let mut arns: Vec<String> = conns
        .iter()
        .map(|c| c.assume_role.clone())
        .filter(|a| !a.is_empty())
        .collect();
    arns.extend(args.role_arn.clone());
    arns.sort();
    arns.dedup();
    let mut roles = Vec::new();
    for arn in arns {
        let role = if arn.starts_with(&format!("{account_prefix}:role/")) {
            iam.role(keyrotor_core::oidc_plan::role_name_of(&arn))
                .await
                .map_err(observing("reading a role"))?
        } else {
            None
        };
        roles.push((arn, role));
    }
    let permissions = iam
        .user_permissions(&t.iam_user)
        .await
        .map_err(observing("reading the IAM user's policies"))?;
    let mut resource_policies = iam
        .role_trusts()
        .await
        .map_err(observing("reading the account's roles (ListRoles)"))?;
    resource_policies.extend(
        iam.secret_policy(&t.secret)
            .await
            .map_err(observing("reading the secret's resource policy"))?,
    );
    Ok(Observed {
        target: t.name.clone(),
        org_name: oidc::organization_name(&t.organization),
        org_id,
        account_prefix,
        user_arn,
        connections: conns,
        key,
        provider,
        own_role,
        roles,
        permissions,
        resource_policies,
        given_role: args.role_arn.clone(),
        record,
    })
}

/// Connections of the organization outside the target that hold the key (they keep it; the
/// finish waits for them).
async fn other_holders(ctx: &Ctx, o: &Observed) -> Vec<String> {
    let Ok(all) = ctx.ports.ado.list_aws(&ctx.target.organization).await else {
        return Vec::new();
    };
    all.into_iter()
        .filter(|c| c.key_id.as_ref() == Some(&o.key))
        .filter(|c| {
            !o.connections
                .iter()
                .any(|m| m.handle.id.as_str().eq_ignore_ascii_case(c.id.as_str()))
        })
        .map(|c| {
            format!(
                "{}/{}",
                c.projects.first().map_or("?", String::as_str),
                c.name
            )
        })
        .collect()
}

fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{l}\n")).collect()
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The plan, for people.
pub(crate) fn plan_text(ctx: &Ctx, o: &Observed, p: &MigrationPlan, others: &[String]) -> String {
    let t = &ctx.target;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "migrate-oidc plan for target {} (nothing is changed; --apply does it)",
        t.name
    );
    let _ = writeln!(
        s,
        "Organization {} (id {}): issuer https://{}, audience {AUDIENCE}",
        o.org_name, o.org_id, p.issuer
    );
    let _ = writeln!(s, "\nOIDC provider {}", p.provider_arn);
    let _ = writeln!(
        s,
        "  {}",
        match p.provider {
            ProviderStep::Create => "will be created, with the audience".to_owned(),
            ProviderStep::AddAudience => format!("exists: the audience {AUDIENCE} will be added"),
            ProviderStep::Reuse => "exists with the audience: reused as it is".to_owned(),
        }
    );
    for r in &p.roles {
        let what = match r.kind {
            RoleKind::Create => "will be created",
            RoleKind::Own => "exists (created by keyrotor): brought up to date",
            RoleKind::Kept => "is assumed today with the key: kept, with its permissions",
            RoleKind::Given => {
                "given with --role-arn: its trust already lets the connections in; unchanged"
            }
        };
        let _ = writeln!(s, "\nRole {}\n  {what}", r.arn);
        let trust_line = match (r.kind == RoleKind::Kept, r.trust_changes) {
            (true, true) => {
                "  trust policy after adding the connections' subjects (every other statement kept):"
            }
            (_, true) => "  trust policy (exactly the audience and these subjects):",
            (_, false) => "  trust policy (already lets the connections in; unchanged):",
        };
        let _ = writeln!(s, "{trust_line}");
        s.push_str(&indent(&pretty(&r.trust), "    "));
        if let Some(perms) = &r.permissions {
            let _ = writeln!(
                s,
                "  permissions: the same as IAM user {} has today",
                t.iam_user
            );
            for arn in &perms.managed {
                let via: Vec<String> = o
                    .permissions
                    .managed
                    .iter()
                    .filter(|(a, _)| a == arn)
                    .map(|(_, src)| match src {
                        Source::User => "the user".to_owned(),
                        Source::Group(g) => format!("group {g}"),
                    })
                    .collect();
                let _ = writeln!(s, "    managed {arn} (from {})", via.join(", "));
            }
            for p in &perms.inline {
                let _ = writeln!(s, "    inline {}:", p.name);
                s.push_str(&indent(&pretty(&p.document), "      "));
            }
            if perms.managed.len() > MANAGED_PER_ROLE {
                let _ = writeln!(
                    s,
                    "    note: {} managed policies, and IAM lets a role have {MANAGED_PER_ROLE} by default (20 on request): raise the quota first, or give --role-arn",
                    perms.managed.len()
                );
            }
            if perms.managed.is_empty() && perms.inline.is_empty() {
                let _ = writeln!(s, "    (none: the user has no policy)");
            }
            match (
                &perms.boundary,
                r.kind == RoleKind::Create || r.boundary_changes,
            ) {
                (Some(b), true) => {
                    let _ = writeln!(s, "    permissions boundary {b} (the user's)");
                }
                (Some(b), false) => {
                    let _ = writeln!(s, "    permissions boundary {b} (the user's; it has it)");
                }
                (None, _) => {
                    let _ = writeln!(s, "    permissions boundary: none (the user has none)");
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "\nService connections (switched in place: same id, every other field kept)"
    );
    for sw in &p.switches {
        let state = if sw.done {
            "on OIDC already".to_owned()
        } else {
            format!(
                "{} → OIDC (useOIDC true, username/password/sessionToken cleared)",
                o.key
            )
        };
        let _ = writeln!(
            s,
            "  {}/{} ({}): {state}",
            sw.handle.project, sw.name, sw.handle.id
        );
        let _ = writeln!(s, "    role {}", sw.role_arn);
        for sub in &sw.subjects {
            let _ = writeln!(s, "    subject {sub}");
        }
    }
    s.push_str(&uncarried_text(t, p));
    if !others.is_empty() {
        let _ = writeln!(
            s,
            "\nAlso holding {} and not in this target (they keep it; --finish waits for them): {}",
            o.key,
            others.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "\nThe key {} stays Active and stored (secret {}) for a drain: --rollback puts every \
         connection back on it; --finish retires it after policy.drain ({}), once nothing holds \
         or uses it. The record is kept in {}.",
        o.key,
        t.secret,
        humantime::format_duration(ctx.config.policy.drain),
        ctx.oidc.store.location(&t.name)
    );
    s
}

/// What the role cannot carry, for people: each item with the id that acknowledges it, and
/// what keyrotor did not look at.
fn uncarried_text(t: &Target, p: &MigrationPlan) -> String {
    let mut s = String::new();
    if p.uncarried.is_empty() {
        let _ = writeln!(
            s,
            "\nNothing found that the role cannot carry (in the policies it gets, the secret's resource policy and the account's role trusts)."
        );
    } else {
        let _ = writeln!(
            s,
            "\nWhat the role cannot carry (--apply is refused until each is acknowledged):"
        );
        for u in &p.uncarried {
            let _ = writeln!(s, "  {}", u.describe(t.iam_user.as_str()));
            let _ = writeln!(s, "    acknowledge: --acknowledge {}", u.id());
        }
    }
    let _ = writeln!(
        s,
        "  Not looked at: resource policies of other services (S3 buckets, KMS keys, SQS, SNS, ECR, Lambda, …) and of other accounts; check that none names IAM user {}.",
        t.iam_user
    );
    s
}

/// The target's name, for messages.
pub(crate) fn name(ctx: &Ctx) -> &TargetName {
    &ctx.target.name
}
