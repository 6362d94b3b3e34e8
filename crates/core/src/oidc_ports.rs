//! The ports `keyrotor migrate-oidc` needs besides the rotation's: IAM's OIDC providers, roles,
//! the user's policies and boundary, and the resource policies that may name the user
//! ([`OidcIam`]), the migration record ([`MigrationStore`]), and Azure
//! DevOps' organization id and the switch of a connection between its key and OIDC
//! ([`OidcConnections`]). Only the CLI's migration uses them: the rotation functions' roles
//! never get these permissions.

use std::time::SystemTime;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

use crate::domain::{AccessKeyId, IamUserName, OrgUrl, SecretName, TargetName};
use crate::oidc::{MigrationRecord, Permissions, ResourcePolicy};
use crate::ports::{EndpointHandle, PortResult};

/// An IAM OIDC identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcProvider {
    /// Its ARN.
    pub arn: String,
    /// Its audiences (client ids).
    pub audiences: Vec<String>,
}

/// An IAM role.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// Its ARN.
    pub arn: String,
    /// Its name.
    pub name: String,
    /// Its trust policy.
    pub trust: Value,
    /// When it was last assumed (`RoleLastUsed`), when IAM says.
    pub last_used: Option<SystemTime>,
    /// Its permissions boundary (a managed policy's ARN), if it has one.
    pub boundary: Option<String>,
}

/// IAM, for the migration to OIDC.
#[async_trait]
pub trait OidcIam: Send + Sync {
    /// The user's ARN (`GetUser`); `NotFound` if the user does not exist.
    async fn user_arn(&self, user: &IamUserName) -> PortResult<String>;
    /// The provider whose URL is `https://{issuer}`, if it exists.
    async fn find_provider(&self, issuer: &str) -> PortResult<Option<OidcProvider>>;
    /// `CreateOpenIDConnectProvider` for `https://{issuer}` with one audience; its ARN.
    async fn create_provider(&self, issuer: &str, audience: &str) -> PortResult<String>;
    /// `AddClientIDToOpenIDConnectProvider`.
    async fn add_audience(&self, provider_arn: &str, audience: &str) -> PortResult<()>;
    /// A role by name; `None` if there is none.
    async fn role(&self, name: &str) -> PortResult<Option<Role>>;
    /// `CreateRole` with this trust policy and permissions boundary (in the same call, so the
    /// role never exists without its boundary).
    async fn create_role(
        &self,
        name: &str,
        trust: &Value,
        description: &str,
        boundary: Option<&str>,
    ) -> PortResult<Role>;
    /// `PutRolePermissionsBoundary`.
    async fn set_boundary(&self, name: &str, boundary: &str) -> PortResult<()>;
    /// `UpdateAssumeRolePolicy`.
    async fn set_trust(&self, name: &str, trust: &Value) -> PortResult<()>;
    /// The user's effective permissions: its attached and inline policies and its groups', the
    /// managed policies' documents, and its permissions boundary.
    async fn user_permissions(&self, user: &IamUserName) -> PortResult<Permissions>;
    /// The trust policy of every role of the account (`ListRoles`).
    async fn role_trusts(&self) -> PortResult<Vec<ResourcePolicy>>;
    /// The resource policy of the secret (`GetResourcePolicy`), if it has one.
    async fn secret_policy(&self, secret: &SecretName) -> PortResult<Option<ResourcePolicy>>;
    /// `AttachRolePolicy`.
    async fn attach_policy(&self, role: &str, policy_arn: &str) -> PortResult<()>;
    /// `PutRolePolicy`.
    async fn put_policy(&self, role: &str, name: &str, document: &Value) -> PortResult<()>;
}

/// Where a target's migration record is kept (durable, secret-free).
#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// The record, if there is one.
    async fn load(&self, target: &TargetName) -> PortResult<Option<MigrationRecord>>;
    /// Writes the record (replacing the last one).
    async fn save(&self, target: &TargetName, record: &MigrationRecord) -> PortResult<()>;
    /// Where records are kept, for people (`SSM parameter /keyrotor/…`).
    fn location(&self, target: &TargetName) -> String;
}

/// A connection's authorization, as the migration reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionAuth {
    /// Where it lives.
    pub handle: EndpointHandle,
    /// Its name in the project it was found in.
    pub name: String,
    /// `type`.
    pub kind: String,
    /// Every project it is in, with its name there: `(project, name)`.
    pub projects: Vec<(String, String)>,
    /// `username`, when set.
    pub username: Option<String>,
    /// `useOIDC` as stored (`""` when unset).
    pub use_oidc: String,
    /// `assumeRoleArn` as stored (`""` when unset).
    pub assume_role: String,
}

impl ConnectionAuth {
    /// `useOIDC == "true"`.
    pub fn uses_oidc(&self) -> bool {
        self.use_oidc.eq_ignore_ascii_case("true")
    }
}

/// How a connection goes back on its key.
#[derive(Debug, Clone, Copy)]
pub struct BackOnKey<'a> {
    /// The key.
    pub key: &'a AccessKeyId,
    /// Its secret.
    pub secret: &'a SecretString,
    /// `assumeRoleArn` to restore.
    pub assume_role: &'a str,
    /// `useOIDC` to restore.
    pub use_oidc: &'a str,
}

/// Azure DevOps, for the migration to OIDC.
#[async_trait]
pub trait OidcConnections: Send + Sync {
    /// The organization's id (`instanceId` of `GET {org}/_apis/connectionData`).
    async fn organization_id(&self, org: &OrgUrl) -> PortResult<String>;
    /// A connection's authorization; `None` when the service answers `null`.
    async fn auth(&self, handle: &EndpointHandle) -> PortResult<Option<ConnectionAuth>>;
    /// Switches it in place (same id, every other field kept) to OIDC with this role:
    /// `useOIDC` `"true"`, `assumeRoleArn`, and `username`, `password`, `sessionToken` `""`.
    async fn switch_to_oidc(&self, handle: &EndpointHandle, role_arn: &str) -> PortResult<()>;
    /// Puts it back in place on the key, `useOIDC` and `assumeRoleArn` as they were.
    async fn switch_to_key(&self, handle: &EndpointHandle, back: BackOnKey<'_>) -> PortResult<()>;
}
