//! The IAM and SSM side of `keyrotor migrate-oidc` ([`OidcIam`], [`MigrationStore`]): the
//! organization's OIDC provider, the roles the connections assume, the user's effective
//! permissions and permissions boundary, the resource policies that may name the user (every
//! role's trust, the target's secret's), and the migration record in an SSM parameter.
//!
//! IAM answers policy documents URL-encoded; they are decoded here
//! ([`parse_policy_document`]). Lists are followed to their end (`Marker`).

use async_trait::async_trait;
use aws_sdk_ssm::types::ParameterType;
use keyrotor_core::domain::{IamUserName, SecretName, TargetName};
use keyrotor_core::oidc::{
    InlinePolicy, MigrationRecord, Permissions, ResourceKind, ResourcePolicy, Source,
    parse_policy_document,
};
use keyrotor_core::oidc_ports::{MigrationStore, OidcIam, OidcProvider, Role};
use keyrotor_core::ports::{PortError, PortErrorKind, PortResult};
use serde_json::Value;

use crate::{Aws, optional, to_system};

/// Where the migration record of a target is kept: a String parameter (no secret in it).
pub const RECORD_PREFIX: &str = "/keyrotor/migrate-oidc/";

fn document(what: &str, raw: &str) -> PortResult<Value> {
    parse_policy_document(raw).ok_or_else(|| {
        PortError::new(
            PortErrorKind::Failed,
            format!("IAM answered {what} with a policy document that is not JSON"),
        )
    })
}

/// Whose policies: the user's own, or one of its groups'.
#[derive(Clone, Copy)]
enum Principal<'a> {
    User(&'a str),
    Group(&'a str),
}

/// The ARNs of a page of attached policies.
fn arns(attached: &[aws_sdk_iam::types::AttachedPolicy]) -> Vec<String> {
    attached
        .iter()
        .filter_map(|p| p.policy_arn().map(str::to_owned))
        .collect()
}

impl Aws {
    /// The document of a managed policy's default version (`GetPolicy`, `GetPolicyVersion`).
    async fn managed_document(&self, arn: &str) -> PortResult<Value> {
        let got = self
            .iam
            .get_policy()
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| self.map_err("IAM GetPolicy", e))?;
        let version = got
            .policy()
            .and_then(|p| p.default_version_id())
            .ok_or_else(|| {
                PortError::new(
                    PortErrorKind::Failed,
                    format!("IAM GetPolicy answered no default version for {arn}"),
                )
            })?;
        let got = self
            .iam
            .get_policy_version()
            .policy_arn(arn)
            .version_id(version)
            .send()
            .await
            .map_err(|e| self.map_err("IAM GetPolicyVersion", e))?;
        document(
            "GetPolicyVersion",
            got.policy_version()
                .and_then(|v| v.document())
                .unwrap_or("{}"),
        )
    }

    /// The managed policies attached to `p`, every page.
    async fn managed_of(&self, p: Principal<'_>) -> PortResult<Vec<String>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let (page, next) = match p {
                Principal::User(u) => {
                    let r = self.iam.list_attached_user_policies().user_name(u);
                    let page = r.set_marker(marker.take()).send().await;
                    let page = page.map_err(|e| self.map_err("IAM ListAttachedUserPolicies", e))?;
                    let next = page
                        .marker()
                        .filter(|_| page.is_truncated())
                        .map(str::to_owned);
                    (arns(page.attached_policies()), next)
                }
                Principal::Group(g) => {
                    let r = self.iam.list_attached_group_policies().group_name(g);
                    let page = r.set_marker(marker.take()).send().await;
                    let page =
                        page.map_err(|e| self.map_err("IAM ListAttachedGroupPolicies", e))?;
                    let next = page
                        .marker()
                        .filter(|_| page.is_truncated())
                        .map(str::to_owned);
                    (arns(page.attached_policies()), next)
                }
            };
            out.extend(page);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(out),
            }
        }
    }

    /// The inline policies of `p`, with their documents.
    async fn inline_of(&self, p: Principal<'_>) -> PortResult<Vec<InlinePolicy>> {
        let names: Vec<String> = match p {
            Principal::User(u) => {
                let r = self.iam.list_user_policies().user_name(u).send().await;
                let r = r.map_err(|e| self.map_err("IAM ListUserPolicies", e))?;
                r.policy_names().to_vec()
            }
            Principal::Group(g) => {
                let r = self.iam.list_group_policies().group_name(g).send().await;
                let r = r.map_err(|e| self.map_err("IAM ListGroupPolicies", e))?;
                r.policy_names().to_vec()
            }
        };
        let mut out = Vec::new();
        for name in &names {
            let (what, raw) = match p {
                Principal::User(u) => {
                    let r = self.iam.get_user_policy().user_name(u).policy_name(name);
                    let got = r
                        .send()
                        .await
                        .map_err(|e| self.map_err("IAM GetUserPolicy", e))?;
                    ("GetUserPolicy", got.policy_document().to_owned())
                }
                Principal::Group(g) => {
                    let r = self.iam.get_group_policy().group_name(g).policy_name(name);
                    let got = r
                        .send()
                        .await
                        .map_err(|e| self.map_err("IAM GetGroupPolicy", e))?;
                    ("GetGroupPolicy", got.policy_document().to_owned())
                }
            };
            out.push(InlinePolicy {
                name: name.clone(),
                document: document(what, &raw)?,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl OidcIam for Aws {
    async fn user_arn(&self, user: &IamUserName) -> PortResult<String> {
        let out = self
            .iam
            .get_user()
            .user_name(user.as_str())
            .send()
            .await
            .map_err(|e| self.map_err("IAM GetUser", e))?;
        out.user()
            .map(|u| u.arn().to_owned())
            .ok_or_else(|| PortError::new(PortErrorKind::Failed, "IAM GetUser answered no user"))
    }

    async fn find_provider(&self, issuer: &str) -> PortResult<Option<OidcProvider>> {
        let listed = self
            .iam
            .list_open_id_connect_providers()
            .send()
            .await
            .map_err(|e| self.map_err("IAM ListOpenIDConnectProviders", e))?;
        let wanted = format!(":oidc-provider/{issuer}");
        for entry in listed.open_id_connect_provider_list() {
            let Some(arn) = entry.arn() else { continue };
            if !arn
                .to_ascii_lowercase()
                .ends_with(&wanted.to_ascii_lowercase())
            {
                continue;
            }
            let got = self
                .iam
                .get_open_id_connect_provider()
                .open_id_connect_provider_arn(arn)
                .send()
                .await
                .map_err(|e| self.map_err("IAM GetOpenIDConnectProvider", e))?;
            return Ok(Some(OidcProvider {
                arn: arn.to_owned(),
                audiences: got.client_id_list().to_vec(),
            }));
        }
        Ok(None)
    }

    async fn create_provider(&self, issuer: &str, audience: &str) -> PortResult<String> {
        // No thumbprint: IAM secures providers of well-known issuers with its own trusted CAs
        // and fills in the thumbprint itself when none is given.
        let out = self
            .iam
            .create_open_id_connect_provider()
            .url(format!("https://{issuer}"))
            .client_id_list(audience)
            .send()
            .await
            .map_err(|e| self.map_err("IAM CreateOpenIDConnectProvider", e))?;
        out.open_id_connect_provider_arn()
            .map(str::to_owned)
            .ok_or_else(|| {
                PortError::new(
                    PortErrorKind::Failed,
                    "IAM CreateOpenIDConnectProvider answered no ARN",
                )
            })
    }

    async fn add_audience(&self, provider_arn: &str, audience: &str) -> PortResult<()> {
        self.iam
            .add_client_id_to_open_id_connect_provider()
            .open_id_connect_provider_arn(provider_arn)
            .client_id(audience)
            .send()
            .await
            .map_err(|e| self.map_err("IAM AddClientIDToOpenIDConnectProvider", e))?;
        Ok(())
    }

    async fn role(&self, name: &str) -> PortResult<Option<Role>> {
        let got = optional(
            self.iam
                .get_role()
                .role_name(name)
                .send()
                .await
                .map_err(|e| self.map_err("IAM GetRole", e)),
        )?;
        let Some(role) = got.and_then(|g| g.role().cloned()) else {
            return Ok(None);
        };
        Ok(Some(Role {
            arn: role.arn().to_owned(),
            name: role.role_name().to_owned(),
            trust: document(
                "GetRole",
                role.assume_role_policy_document().unwrap_or("{}"),
            )?,
            last_used: to_system(role.role_last_used().and_then(|u| u.last_used_date())),
            boundary: role
                .permissions_boundary()
                .and_then(|b| b.permissions_boundary_arn())
                .map(str::to_owned),
        }))
    }

    async fn create_role(
        &self,
        name: &str,
        trust: &Value,
        description: &str,
        boundary: Option<&str>,
    ) -> PortResult<Role> {
        let out = self
            .iam
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust.to_string())
            .description(description)
            .set_permissions_boundary(boundary.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.map_err("IAM CreateRole", e))?;
        let role = out.role().ok_or_else(|| {
            PortError::new(PortErrorKind::Failed, "IAM CreateRole answered no role")
        })?;
        Ok(Role {
            arn: role.arn().to_owned(),
            name: role.role_name().to_owned(),
            trust: trust.clone(),
            last_used: None,
            boundary: boundary.map(str::to_owned),
        })
    }

    async fn set_boundary(&self, name: &str, boundary: &str) -> PortResult<()> {
        self.iam
            .put_role_permissions_boundary()
            .role_name(name)
            .permissions_boundary(boundary)
            .send()
            .await
            .map_err(|e| self.map_err("IAM PutRolePermissionsBoundary", e))?;
        Ok(())
    }

    async fn set_trust(&self, name: &str, trust: &Value) -> PortResult<()> {
        self.iam
            .update_assume_role_policy()
            .role_name(name)
            .policy_document(trust.to_string())
            .send()
            .await
            .map_err(|e| self.map_err("IAM UpdateAssumeRolePolicy", e))?;
        Ok(())
    }

    async fn user_permissions(&self, user: &IamUserName) -> PortResult<Permissions> {
        let user = user.as_str();
        let mut p = Permissions::default();
        let got = self
            .iam
            .get_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| self.map_err("IAM GetUser", e))?;
        p.boundary = got
            .user()
            .and_then(|u| u.permissions_boundary())
            .and_then(|b| b.permissions_boundary_arn())
            .map(str::to_owned);
        for arn in self.managed_of(Principal::User(user)).await? {
            p.managed.push((arn, Source::User));
        }
        for doc in self.inline_of(Principal::User(user)).await? {
            p.inline.push((doc, Source::User));
        }
        let groups = self
            .iam
            .list_groups_for_user()
            .user_name(user)
            .send()
            .await
            .map_err(|e| self.map_err("IAM ListGroupsForUser", e))?;
        for g in groups.groups() {
            let name = g.group_name();
            for arn in self.managed_of(Principal::Group(name)).await? {
                p.managed.push((arn, Source::Group(name.to_owned())));
            }
            for doc in self.inline_of(Principal::Group(name)).await? {
                p.inline.push((doc, Source::Group(name.to_owned())));
            }
        }
        let mut arns: Vec<&String> = p.managed.iter().map(|(a, _)| a).collect();
        arns.sort();
        arns.dedup();
        let mut documents = Vec::new();
        for arn in arns {
            documents.push((arn.clone(), self.managed_document(arn).await?));
        }
        p.managed_documents = documents;
        Ok(p)
    }

    async fn role_trusts(&self) -> PortResult<Vec<ResourcePolicy>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .iam
                .list_roles()
                .set_marker(marker.take())
                .send()
                .await
                .map_err(|e| self.map_err("IAM ListRoles", e))?;
            for r in page.roles() {
                out.push(ResourcePolicy {
                    arn: r.arn().to_owned(),
                    kind: ResourceKind::RoleTrust,
                    document: document(
                        "ListRoles",
                        r.assume_role_policy_document().unwrap_or("{}"),
                    )?,
                });
            }
            match page.marker().filter(|_| page.is_truncated()) {
                Some(m) => marker = Some(m.to_owned()),
                None => return Ok(out),
            }
        }
    }

    async fn secret_policy(&self, secret: &SecretName) -> PortResult<Option<ResourcePolicy>> {
        let got = optional(
            self.secrets
                .get_resource_policy()
                .secret_id(secret.as_str())
                .send()
                .await
                .map_err(|e| self.map_err("Secrets Manager GetResourcePolicy", e)),
        )?;
        let Some(got) = got else { return Ok(None) };
        let (Some(arn), Some(policy)) = (got.arn(), got.resource_policy()) else {
            return Ok(None);
        };
        let document = serde_json::from_str(policy).map_err(|_| {
            PortError::new(
                PortErrorKind::Failed,
                "Secrets Manager answered GetResourcePolicy with a policy that is not JSON",
            )
        })?;
        Ok(Some(ResourcePolicy {
            arn: arn.to_owned(),
            kind: ResourceKind::Secret,
            document,
        }))
    }

    async fn attach_policy(&self, role: &str, policy_arn: &str) -> PortResult<()> {
        self.iam
            .attach_role_policy()
            .role_name(role)
            .policy_arn(policy_arn)
            .send()
            .await
            .map_err(|e| self.map_err("IAM AttachRolePolicy", e))?;
        Ok(())
    }

    async fn put_policy(&self, role: &str, name: &str, document: &Value) -> PortResult<()> {
        self.iam
            .put_role_policy()
            .role_name(role)
            .policy_name(name)
            .policy_document(document.to_string())
            .send()
            .await
            .map_err(|e| self.map_err("IAM PutRolePolicy", e))?;
        Ok(())
    }
}

#[async_trait]
impl MigrationStore for Aws {
    async fn load(&self, target: &TargetName) -> PortResult<Option<MigrationRecord>> {
        let name = format!("{RECORD_PREFIX}{target}");
        let got = optional(
            self.ssm
                .get_parameter()
                .name(&name)
                .send()
                .await
                .map_err(|e| self.map_err("SSM GetParameter", e)),
        )?;
        let Some(text) = got.and_then(|g| g.parameter().and_then(|p| p.value().map(str::to_owned)))
        else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|_| {
            PortError::new(
                PortErrorKind::Failed,
                format!("SSM parameter {name} does not hold a keyrotor migration record"),
            )
        })
    }

    async fn save(&self, target: &TargetName, record: &MigrationRecord) -> PortResult<()> {
        let name = format!("{RECORD_PREFIX}{target}");
        let text = serde_json::to_string(record).map_err(|_| {
            PortError::new(
                PortErrorKind::Failed,
                "could not encode the migration record",
            )
        })?;
        self.ssm
            .put_parameter()
            .name(&name)
            .value(text)
            .r#type(ParameterType::String)
            .overwrite(true)
            .description(
                "keyrotor migrate-oidc: where this target's move to OIDC stands (no secret)",
            )
            .send()
            .await
            .map_err(|e| self.map_err("SSM PutParameter", e))?;
        Ok(())
    }

    fn location(&self, target: &TargetName) -> String {
        format!("SSM parameter {RECORD_PREFIX}{target}")
    }
}
