//! [`plan`]: what `keyrotor migrate-oidc` does for a target, a pure function of what it
//! observed. The CLI prints it (the default) or carries it out (`--apply`), step by step, each
//! step re-checked against the world so that a rerun converges.

use serde_json::Value;

use crate::domain::{AccessKeyId, TargetName};
use crate::oidc::{self, MigrationRecord, Permissions, ResourcePolicy, RolePermissions, Uncarried};
use crate::oidc_ports::{ConnectionAuth, OidcProvider, Role};
use crate::ports::EndpointHandle;

/// Everything the plan depends on, read from IAM and Azure DevOps.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The target.
    pub target: TargetName,
    /// The organization's name (in the subjects).
    pub org_name: String,
    /// The organization's id (in the issuer).
    pub org_id: String,
    /// `arn:{partition}:iam::{account}`, from the user's ARN.
    pub account_prefix: String,
    /// The IAM user's ARN.
    pub user_arn: String,
    /// The target's connections.
    pub connections: Vec<ConnectionAuth>,
    /// The key they hold.
    pub key: AccessKeyId,
    /// The organization's provider, if it exists.
    pub provider: Option<OidcProvider>,
    /// The role keyrotor creates for the target, if it exists already.
    pub own_role: Option<Role>,
    /// The roles the connections assume today and the `--role-arn` one, by ARN (`None`: no
    /// such role in this account).
    pub roles: Vec<(String, Option<Role>)>,
    /// The user's effective permissions.
    pub permissions: Permissions,
    /// The resource policies keyrotor reads to see whether they name the user: the target's
    /// secret's, and every role's trust.
    pub resource_policies: Vec<ResourcePolicy>,
    /// `--role-arn`.
    pub given_role: Option<String>,
    /// The migration record, if any.
    pub record: Option<MigrationRecord>,
}

/// What happens to the organization's OIDC provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStep {
    /// Created, with Azure DevOps' audience.
    Create,
    /// It exists without the audience: the audience is added.
    AddAudience,
    /// It exists with the audience: reused as it is.
    Reuse,
}

/// Why a role is in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleKind {
    /// keyrotor creates it, with the user's permissions.
    Create,
    /// keyrotor created it on an earlier run: its trust and permissions are brought up to date.
    Own,
    /// A connection assumes it today with its key: it keeps it, and its trust gets the subjects.
    Kept,
    /// Given with `--role-arn`: its trust already covers the subjects; nothing changes.
    Given,
}

/// One role the switched connections use.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleStep {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// Why it is here.
    pub kind: RoleKind,
    /// The trust policy it ends up with.
    pub trust: Value,
    /// Whether that differs from what it has (always for a role to create).
    pub trust_changes: bool,
    /// The subjects it must trust.
    pub subjects: Vec<String>,
    /// The permissions keyrotor gives it (a role keyrotor creates or created).
    pub permissions: Option<RolePermissions>,
    /// A role keyrotor created on an earlier run gets the user's boundary
    /// (`PutRolePermissionsBoundary`); a role to create gets it with `CreateRole`.
    pub boundary_changes: bool,
}

/// One connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// Where it lives.
    pub handle: EndpointHandle,
    /// Its name.
    pub name: String,
    /// Its subjects (one per project it is in).
    pub subjects: Vec<String>,
    /// The role it uses on OIDC.
    pub role_arn: String,
    /// It is on OIDC with that role already.
    pub done: bool,
}

/// The whole migration of a target.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationPlan {
    /// `vstoken.dev.azure.com/{org id}`.
    pub issuer: String,
    /// The provider's ARN (as it will be when created).
    pub provider_arn: String,
    /// What happens to it.
    pub provider: ProviderStep,
    /// The roles, each once.
    pub roles: Vec<RoleStep>,
    /// The connections.
    pub switches: Vec<Switch>,
    /// What the roles cannot carry of the user's access; `--apply` waits for each to be
    /// acknowledged.
    pub uncarried: Vec<Uncarried>,
}

impl MigrationPlan {
    /// What the plan cannot carry and `acknowledged` (the `--acknowledge` ids) does not name.
    pub fn unacknowledged(&self, acknowledged: &[String]) -> Vec<&Uncarried> {
        self.uncarried
            .iter()
            .filter(|u| !acknowledged.contains(&u.id()))
            .collect()
    }
}

/// Why there is no plan: bad input (exit 2) or unsafe (exit 3). One sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The input names something that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Going on would be unsafe.
    #[error("{0}")]
    Refused(String),
}

/// The subjects of a connection: one per project it is in, with its name there.
pub fn subjects_of(org_name: &str, c: &ConnectionAuth) -> Vec<String> {
    c.projects
        .iter()
        .map(|(p, n)| oidc::subject(org_name, p, n))
        .collect()
}

/// The role name in an ARN (`arn:aws:iam::1:role/path/name` → `name`).
pub fn role_name_of(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// Decides the migration. Pure: the same observation always gives the same plan.
pub fn plan(o: &Observed) -> Result<MigrationPlan, PlanError> {
    let issuer = oidc::issuer_path(&o.org_id);
    let provider_arn = o.provider.as_ref().map_or_else(
        || format!("{}:oidc-provider/{issuer}", o.account_prefix),
        |p| p.arn.clone(),
    );
    let provider = match &o.provider {
        None => ProviderStep::Create,
        Some(p) if p.audiences.iter().any(|a| a == oidc::AUDIENCE) => ProviderStep::Reuse,
        Some(_) => ProviderStep::AddAudience,
    };
    let sid = oidc::statement_id(&o.target);
    let own_name = oidc::role_name(&o.target);
    let own_arn = o.own_role.as_ref().map_or_else(
        || format!("{}:role/{own_name}", o.account_prefix),
        |r| r.arn.clone(),
    );
    let role = |arn: &str| {
        o.roles
            .iter()
            .find(|(a, _)| a == arn)
            .and_then(|(_, r)| r.as_ref())
    };

    let mut switches = Vec::new();
    for c in &o.connections {
        if !c.kind.eq_ignore_ascii_case("aws") {
            return Err(PlanError::Invalid(format!(
                "service connection '{}' is of type '{}', not AWS",
                c.name, c.kind
            )));
        }
        let recorded = o
            .record
            .as_ref()
            .and_then(|r| r.original(c.handle.id.as_str()));
        let (role_arn, done) = if c.uses_oidc() {
            if c.assume_role.is_empty() {
                return Err(PlanError::Refused(format!(
                    "service connection '{}' has useOIDC set but no role (assumeRoleArn): fix it by hand first",
                    c.name
                )));
            }
            (c.assume_role.clone(), true)
        } else if !c.assume_role.is_empty() {
            (c.assume_role.clone(), false)
        } else if let Some(r) =
            recorded.filter(|r| !r.role_arn.is_empty() && o.given_role.is_none())
        {
            (r.role_arn.clone(), false)
        } else if let Some(given) = &o.given_role {
            (given.clone(), false)
        } else {
            (own_arn.clone(), false)
        };
        switches.push(Switch {
            handle: c.handle.clone(),
            name: c.name.clone(),
            subjects: subjects_of(&o.org_name, c),
            role_arn,
            done,
        });
    }

    let mut roles: Vec<RoleStep> = Vec::new();
    for s in &switches {
        if let Some(r) = roles.iter_mut().find(|r| r.arn == s.role_arn) {
            r.subjects.extend(s.subjects.iter().cloned());
            continue;
        }
        let kind = if s.role_arn == own_arn {
            if o.own_role.is_some() {
                RoleKind::Own
            } else {
                RoleKind::Create
            }
        } else if Some(&s.role_arn) == o.given_role.as_ref() {
            RoleKind::Given
        } else {
            RoleKind::Kept
        };
        roles.push(RoleStep {
            arn: s.role_arn.clone(),
            name: role_name_of(&s.role_arn).to_owned(),
            kind,
            trust: Value::Null,
            trust_changes: false,
            subjects: s.subjects.clone(),
            permissions: None,
            boundary_changes: false,
        });
    }
    for r in &mut roles {
        r.subjects.sort();
        r.subjects.dedup();
        let existing = match r.kind {
            RoleKind::Create => None,
            RoleKind::Own => o.own_role.as_ref(),
            RoleKind::Kept | RoleKind::Given => match role(&r.arn) {
                Some(x) => Some(x),
                None if !r.arn.starts_with(&format!("{}:", o.account_prefix)) => {
                    return Err(PlanError::Invalid(format!(
                        "role {} is not in this AWS account ({}): keyrotor can only check and change roles of the account it runs in",
                        r.arn, o.account_prefix
                    )));
                }
                None => {
                    return Err(PlanError::Invalid(format!(
                        "role {} does not exist in this AWS account",
                        r.arn
                    )));
                }
            },
        };
        let allows_all = |trust: &Value| {
            r.subjects
                .iter()
                .all(|s| oidc::trust_allows(trust, &provider_arn, &issuer, s))
        };
        match (&r.kind, existing) {
            (RoleKind::Create, _) | (_, None) => {
                r.trust = oidc::trust_policy(&sid, &provider_arn, &issuer, &r.subjects);
                r.trust_changes = true;
            }
            (RoleKind::Given, Some(x)) => {
                if let Some(missing) = r
                    .subjects
                    .iter()
                    .find(|s| !oidc::trust_allows(&x.trust, &provider_arn, &issuer, s))
                {
                    return Err(PlanError::Invalid(format!(
                        "the trust policy of role {} does not let {missing} in (sts:AssumeRoleWithWebIdentity from {provider_arn} with audience {}): add it, or leave --role-arn out and keyrotor creates a role",
                        r.arn,
                        oidc::AUDIENCE
                    )));
                }
                r.trust = x.trust.clone();
            }
            (_, Some(x)) => {
                r.trust_changes = !allows_all(&x.trust);
                r.trust = if r.trust_changes {
                    oidc::with_statement(&x.trust, &sid, &provider_arn, &issuer, &r.subjects)
                } else {
                    x.trust.clone()
                };
            }
        }
        if matches!(r.kind, RoleKind::Create | RoleKind::Own) {
            let perms = o.permissions.for_role();
            // A boundary the role has and the user has not is left: taking it away would let
            // the role do more.
            r.boundary_changes = r.kind == RoleKind::Own
                && perms.boundary.is_some()
                && o.own_role.as_ref().and_then(|x| x.boundary.as_ref()) != perms.boundary.as_ref();
            r.permissions = Some(perms);
        }
        debug_assert!(allows_all(&r.trust), "a planned trust lets its subjects in");
    }
    // The user's own policies go to keyrotor's role; a connection on any role but the one it
    // assumes today stops signing as the user, so resource policies naming the user matter.
    // Only for connections still to switch: once every one is on OIDC there is nothing to
    // acknowledge (a rerun converges as it is).
    let to_switch: Vec<&Switch> = switches.iter().filter(|s| !s.done).collect();
    let copied = roles
        .iter()
        .filter(|r| to_switch.iter().any(|s| s.role_arn == r.arn))
        .find_map(|r| r.permissions.as_ref());
    let leaves_user = to_switch.iter().any(|s| {
        roles
            .iter()
            .any(|r| r.arn == s.role_arn && r.kind != RoleKind::Kept)
    });
    let plan_roles: Vec<String> = roles.iter().map(|r| r.arn.clone()).collect();
    let uncarried = oidc::uncarried(
        copied,
        &o.permissions.managed_documents,
        if leaves_user {
            &o.resource_policies
        } else {
            &[]
        },
        &o.user_arn,
        &plan_roles,
    );
    Ok(MigrationPlan {
        issuer,
        provider_arn,
        provider,
        roles,
        switches,
        uncarried,
    })
}
