//! The ports: what the protocol needs from IAM, Secrets Manager, SSM, STS, Azure DevOps and
//! Slack. Adapters (`keyrotor-aws`, `keyrotor-ado`, `keyrotor-notify`) implement them; the
//! in-memory fakes of `keyrotor-testkit` implement them with the same rules for fast tests.
//!
//! Errors carry a [`PortErrorKind`] shaped by what the caller decides (retry, stand aside,
//! refuse, give up) and a message that must never contain a secret.

use std::time::SystemTime;

use async_trait::async_trait;
use secrecy::SecretString;

use crate::domain::{
    AccessKeyId, Arn, EndpointId, EndpointRef, IamUserName, KeyStatus, OrgUrl, ProjectName,
    SecretName, SecretVersionId,
};
use crate::report::RunReport;

/// What the caller should do about a failed port call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortErrorKind {
    /// Throttling, 5xx, a timeout, a dropped connection: the adapter already retried; a later
    /// attempt may work.
    Retryable,
    /// The thing named does not exist.
    NotFound,
    /// IAM's two-keys-per-user limit.
    LimitExceeded,
    /// The call may have taken effect, and the adapter could not tell: an attempt's answer was
    /// lost (timeout, dropped connection, 5xx) and its retry met a refusal the first attempt
    /// would explain (`CreateAccessKey` retried into the two-key limit).
    LostAnswer,
    /// A credential was refused (a wrong PAT, a key IAM does not accept yet).
    Unauthorized,
    /// The caller is not allowed to do this (missing permission or scope).
    Forbidden,
    /// The request was rejected as invalid; retrying will not help.
    Invalid,
    /// The thing exists but is not something keyrotor may change.
    Refused,
    /// Anything else that is permanent.
    Failed,
}

/// A failed port call. The message is for people: never a secret, key ids masked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    /// What the caller should do.
    pub kind: PortErrorKind,
    /// One readable sentence.
    pub message: String,
}

impl PortError {
    /// A new error; key ids in the message are masked.
    pub fn new(kind: PortErrorKind, message: impl AsRef<str>) -> Self {
        Self {
            kind,
            message: crate::domain::redact(message.as_ref()),
        }
    }
    /// Whether a later attempt may work.
    pub fn is_retryable(&self) -> bool {
        self.kind == PortErrorKind::Retryable
    }
}

/// Shorthand for port results.
pub type PortResult<T> = Result<T, PortError>;

/// An IAM access key as IAM lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: AccessKeyId,
    /// Active or Inactive.
    pub status: KeyStatus,
    /// When IAM created it.
    pub created: SystemTime,
    /// When it last signed a request, if ever (`GetAccessKeyLastUsed`).
    pub last_used: Option<SystemTime>,
}

/// A key just created: the only moment IAM shows its secret.
pub struct NewKey {
    /// Its id, status and dates.
    pub info: KeyInfo,
    /// The secret access key.
    pub secret: SecretString,
    /// An earlier attempt of this `CreateAccessKey` lost its answer before this one succeeded:
    /// that attempt may have created a key whose secret nobody received.
    pub after_lost_answer: bool,
}

/// IAM access keys of one user.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The user's keys with their last use. `NotFound` if the user does not exist.
    async fn list_keys(&self, user: &IamUserName) -> PortResult<Vec<KeyInfo>>;
    /// The user's keys and their status, without their last use (`last_used` is `None`): one
    /// `ListAccessKeys`, for the checks that need no date (is the new key still there and
    /// Active, is there room for a key). `NotFound` if the user does not exist.
    async fn list_keys_brief(&self, user: &IamUserName) -> PortResult<Vec<KeyInfo>> {
        let mut keys = self.list_keys(user).await?;
        for k in &mut keys {
            k.last_used = None;
        }
        Ok(keys)
    }
    /// When IAM last saw the key sign a request (`GetAccessKeyLastUsed`); `None` if never or
    /// if the key is unknown.
    async fn last_used(&self, key: &AccessKeyId) -> PortResult<Option<SystemTime>> {
        Ok(self.owner_of(key).await?.and_then(|o| o.last_used))
    }
    /// `CreateAccessKey`. `LimitExceeded` if the user already has two keys; `LostAnswer` if an
    /// attempt whose answer was lost may have taken the room. Adapters retry it themselves so
    /// they can tell the two apart (and set [`NewKey::after_lost_answer`]).
    async fn create_key(&self, user: &IamUserName) -> PortResult<NewKey>;
    /// `UpdateAccessKey`.
    async fn set_status(
        &self,
        user: &IamUserName,
        key: &AccessKeyId,
        status: KeyStatus,
    ) -> PortResult<()>;
    /// `DeleteAccessKey`. `NotFound` if it is already gone.
    async fn delete_key(&self, user: &IamUserName, key: &AccessKeyId) -> PortResult<()>;
    /// Whose key this is, when it was created and last used (`GetAccessKeyLastUsed`, then
    /// `ListAccessKeys` of its user). `None` if the key is unknown to this account.
    async fn owner_of(&self, key: &AccessKeyId) -> PortResult<Option<KeyOwner>>;
}

/// The owner and dates of a key found by its id alone (for `keyrotor audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOwner {
    /// The IAM user.
    pub user: String,
    /// When the key was created, when its user's keys could be listed.
    pub created: Option<SystemTime>,
    /// When it last signed a request.
    pub last_used: Option<SystemTime>,
}

/// One AWS service connection of an organization, as `keyrotor audit` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConnection {
    /// Its id.
    pub id: EndpointId,
    /// Its name.
    pub name: String,
    /// Its `type` as stored (`AWS`, or `aws` from some clients).
    pub kind: String,
    /// `authorization.scheme`.
    pub scheme: String,
    /// The projects it was found in (a shared connection is listed once, with all of them).
    pub projects: Vec<String>,
    /// `authorization.parameters.username`, when it parses as an access key id.
    pub key_id: Option<AccessKeyId>,
    /// Whether `username` is set at all (it may be set to something that is not a key id).
    pub has_username: bool,
    /// `useOIDC == "true"`: no key to rotate.
    pub uses_oidc: bool,
    /// Whether `assumeRoleArn` is set.
    pub has_assume_role: bool,
    /// `isReady`.
    pub is_ready: bool,
}

/// The staging labels keyrotor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// What pipelines should use.
    Current,
    /// A key being rotated in (or an intent record before it is created).
    Pending,
    /// The key before the current one.
    Previous,
}

impl Stage {
    /// The Secrets Manager label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Current => "AWSCURRENT",
            Self::Pending => "AWSPENDING",
            Self::Previous => "AWSPREVIOUS",
        }
    }
}

/// One version of a secret with its staging labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersion {
    /// The version id.
    pub id: SecretVersionId,
    /// Its labels.
    pub stages: Vec<String>,
}

/// A Secrets Manager secret.
#[async_trait]
pub trait SecretStore: Send + Sync {
    /// The versions that carry a label; `None` if the secret does not exist.
    async fn versions(&self, name: &SecretName) -> PortResult<Option<Vec<SecretVersion>>>;
    /// The value at a stage, read with an explicit `VersionStage`; `None` if no version has
    /// that label (or the secret does not exist).
    async fn read(
        &self,
        name: &SecretName,
        stage: Stage,
    ) -> PortResult<Option<(SecretVersionId, SecretString)>>;
    /// The value of one version, by id; `None` if there is no such version.
    async fn read_version(
        &self,
        name: &SecretName,
        version: &SecretVersionId,
    ) -> PortResult<Option<SecretString>>;
    /// Creates the secret with no value. `Ok` if it exists already.
    async fn create(&self, name: &SecretName, description: &str) -> PortResult<()>;
    /// `PutSecretValue` with this `ClientRequestToken` (which becomes the version id) and the
    /// one label `stage` (moved from whichever version had it). Returns the version id.
    async fn put(
        &self,
        name: &SecretName,
        token: &SecretVersionId,
        value: &SecretString,
        stage: Stage,
    ) -> PortResult<SecretVersionId>;
    /// `UpdateSecretVersionStage`: put `stage` on `to` (if any), taking it off `from` (if any).
    async fn move_stage(
        &self,
        name: &SecretName,
        stage: Stage,
        to: Option<&SecretVersionId>,
        from: Option<&SecretVersionId>,
    ) -> PortResult<()>;
}

/// SSM Parameter Store.
#[async_trait]
pub trait Parameters: Send + Sync {
    /// A parameter's value, decrypted. `NotFound` if it does not exist.
    async fn get_secure(&self, name: &str) -> PortResult<SecretString>;
}

/// Who the AWS credentials in force belong to (`sts:GetCallerIdentity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The account id.
    pub account: String,
    /// The caller's ARN (a user, or an assumed role's session).
    pub arn: String,
}

/// What `iam:SimulatePrincipalPolicy` decided for one action on one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulated {
    /// The action (`iam:CreateAccessKey`).
    pub action: String,
    /// The resource ARN it was simulated on.
    pub resource: String,
    /// Whether the caller's policies allow it.
    pub allowed: bool,
}

/// Read-only questions about the AWS credentials in force, for `keyrotor check`: where
/// requests go, whose credentials these are, and what they may do. Nothing here changes
/// anything.
#[async_trait]
pub trait Account: Send + Sync {
    /// The region requests go to; `None` when none is set anywhere.
    fn region(&self) -> Option<String>;
    /// `sts:GetCallerIdentity` with the credentials in force (no permission needed).
    async fn caller(&self) -> PortResult<Caller>;
    /// `iam:SimulatePrincipalPolicy` for `principal` (a user or role ARN): one decision per
    /// `(action, resource)`. An error means the simulation itself could not run (the caller may
    /// not simulate, or the service does not offer it): the permissions are then unknown.
    async fn simulate(
        &self,
        principal: &str,
        checks: &[(String, String)],
    ) -> PortResult<Vec<Simulated>>;
}

/// What a webhook said to a probe that posts no message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookProbe {
    /// It answered as a live webhook does to an empty message.
    Valid,
    /// Its answer proves neither way; the reason, in one sentence.
    Unverifiable(String),
}

/// STS, signed with a given key.
#[async_trait]
pub trait CallerIdentity: Send + Sync {
    /// `GetCallerIdentity` signed with this key: the ARN it belongs to. `Unauthorized` while
    /// IAM does not accept the key yet.
    async fn caller_arn(&self, key: &AccessKeyId, secret: &SecretString) -> PortResult<Arn>;
}

/// Where one service connection lives: enough to GET and PUT it. Ids only: it travels between
/// steps in [`Progress`](crate::protocol::Progress) (the Step Functions payload).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EndpointHandle {
    /// The organization.
    pub org: OrgUrl,
    /// A project it is shared into (used for GET).
    pub project: ProjectName,
    /// Its id.
    pub id: EndpointId,
}

/// What keyrotor needs to know of a service connection. The password is never read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it lives.
    pub handle: EndpointHandle,
    /// Its name.
    pub name: String,
    /// `type` (`AWS` for the AWS Toolkit).
    pub kind: String,
    /// `authorization.scheme`.
    pub scheme: String,
    /// `authorization.parameters.username`: the access key id it holds, if any.
    pub username: Option<String>,
    /// `authorization.parameters.useOIDC == "true"`.
    pub uses_oidc: bool,
    /// `isReady`.
    pub is_ready: bool,
    /// The adapter's copy of the whole object as it was read, when it keeps one: an update in
    /// place can then PUT it back without reading it again
    /// ([`ServiceConnections::set_credentials_from`]) while the read is at most
    /// [`MAX_READ_AGE`] old. Never a secret: the service answers every confidential field
    /// `null`.
    pub raw: Option<std::sync::Arc<RawRead>>,
}

/// An adapter's copy of a connection object, and when the request that read it was sent.
/// Two reads are equal when they read the same object, whenever they were made.
#[derive(Debug, Clone)]
pub struct RawRead {
    /// The whole object as the service answered it.
    pub object: serde_json::Value,
    /// When the request that read it went out: the object shows the connection as it was at
    /// that moment or later.
    pub sent: std::time::Instant,
}

impl PartialEq for RawRead {
    fn eq(&self, other: &Self) -> bool {
        self.object == other.object
    }
}

impl Eq for RawRead {}

/// The oldest a read of a connection may be at the moment the PUT that sends it back goes out:
/// a PUT sends the whole object, so whatever a person changed since the read (a description, a
/// switch to OIDC) would be reverted. An update whose request is held back past it (by the rate
/// limit, or a retry) reads the connection again first ([`ServiceConnections::set_credentials_from`]);
/// [`SharedReads`](crate::shared::SharedReads) shares reads between targets within it.
pub const MAX_READ_AGE: std::time::Duration = std::time::Duration::from_secs(10);

impl Endpoint {
    /// Why keyrotor may not rotate this connection's key, if it may not.
    pub fn unrotatable_reason(&self) -> Option<String> {
        if !self.kind.eq_ignore_ascii_case("aws") {
            Some(format!(
                "service connection '{}' is of type '{}', not AWS: there is no AWS key to rotate",
                self.name, self.kind
            ))
        } else if self.uses_oidc {
            Some(format!(
                "service connection '{}' uses OIDC (useOIDC = true): it holds no key to rotate",
                self.name
            ))
        } else if !self.scheme.eq_ignore_ascii_case("UsernamePassword") {
            Some(format!(
                "service connection '{}' uses the '{}' scheme, not UsernamePassword",
                self.name, self.scheme
            ))
        } else {
            None
        }
    }

    /// The key id it holds, if the username parses as one.
    pub fn key_id(&self) -> Option<AccessKeyId> {
        self.username
            .as_deref()
            .and_then(|u| AccessKeyId::parse(u).ok())
    }
}

/// How many connection ids one listing by `endpointIds` names at most: 50 GUIDs keep its URL
/// near 1,850 characters, well under the service's URL length limits.
pub const IDS_PER_LISTING: usize = 50;

/// Azure DevOps service connections.
#[async_trait]
pub trait ServiceConnections: Send + Sync {
    /// Finds a connection by name in a project, or by id. `NotFound` if none matches;
    /// `Invalid` if a name matches more than one.
    async fn find(&self, org: &OrgUrl, r: &EndpointRef) -> PortResult<Endpoint>;
    /// The connection as it is now; `None` when the service answers `null` for the id.
    async fn get(&self, handle: &EndpointHandle) -> PortResult<Option<Endpoint>>;
    /// The connections behind these handles, as they are now, in the same order; `None` for
    /// one the service does not know (any more). Adapters that can read several connections in
    /// one request do so (Azure DevOps: one listing filtered by `endpointIds` per project and
    /// [`IDS_PER_LISTING`] ids).
    async fn get_many(&self, handles: &[EndpointHandle]) -> PortResult<Vec<Option<Endpoint>>> {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            out.push(self.get(h).await?);
        }
        Ok(out)
    }
    /// Every connection of one project (of any type), in as few requests as the service
    /// allows; `None` when this adapter cannot list a project (callers then find each
    /// connection on its own).
    async fn list_project(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
    ) -> PortResult<Option<Vec<Endpoint>>> {
        let _ = (org, project);
        Ok(None)
    }
    /// Every AWS service connection of the organization, across its projects; a connection
    /// shared into several projects appears once.
    async fn list_aws(&self, org: &OrgUrl) -> PortResult<Vec<AwsConnection>>;
    /// [`list_aws`](Self::list_aws), or the answer of a scan that *started* after `since`
    /// and is still recent, where one run shares scans between its targets
    /// ([`SharedReads`](crate::shared::SharedReads)). Callers pass the moment after which every
    /// change must be seen.
    async fn list_aws_since(
        &self,
        org: &OrgUrl,
        since: SystemTime,
    ) -> PortResult<Vec<AwsConnection>> {
        let _ = since;
        self.list_aws(org).await
    }
    /// Updates the credentials in place: GET, then PUT the full object with the new username
    /// and password, every other field kept. Never deletes and re-creates. The object PUT is at
    /// most [`MAX_READ_AGE`] old when it goes out, as for [`set_credentials_from`].
    ///
    /// [`set_credentials_from`]: Self::set_credentials_from
    async fn set_credentials(
        &self,
        handle: &EndpointHandle,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()>;
    /// Updates the credentials of a connection just read (`read`, from [`get_many`] or
    /// [`find`]) in place. An adapter that kept the object it read ([`Endpoint::raw`]) PUTs it
    /// back with the new key without reading it again, as long as the read is at most
    /// [`MAX_READ_AGE`] old at the moment the PUT goes out, after any wait; an older one is read
    /// again first, and when the connection changed meanwhile in a way keyrotor must not
    /// overwrite (it is no longer rotatable, e.g. switched to OIDC, or holds another key than the
    /// read showed), nothing is sent and the update is `Refused`. When the new read shows the new
    /// key already, nothing is sent either. Otherwise the same as [`set_credentials`].
    ///
    /// [`get_many`]: Self::get_many
    /// [`find`]: Self::find
    /// [`set_credentials`]: Self::set_credentials
    async fn set_credentials_from(
        &self,
        read: &Endpoint,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        self.set_credentials(&read.handle, key, secret).await
    }
    /// Who the credentials authenticate as in `org` (a read that needs no scope), for
    /// `keyrotor check`. `Unauthorized` when the organization refuses them; `Ok(None)` when this
    /// adapter cannot tell.
    async fn authenticated_as(&self, org: &OrgUrl) -> PortResult<Option<String>> {
        let _ = org;
        Ok(None)
    }
}

/// How a Step Functions execution stands (`DescribeExecution`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionStatus {
    /// `RUNNING`: the execution may still act.
    Running,
    /// Any other status (`SUCCEEDED`, `FAILED`, `TIMED_OUT`, `ABORTED`, …), as Step Functions
    /// names it: the execution acts no more.
    Ended(String),
    /// Step Functions knows no such execution (`ExecutionDoesNotExist`).
    Missing,
}

/// Step Functions, as far as ownership needs it: whether the execution that holds a lease still
/// runs (invariant 7 on the Step Functions path).
#[async_trait]
pub trait Executions: Send + Sync {
    /// The status of the execution `arn`. An error (a missing permission, throttling) says
    /// nothing about the execution: the caller concludes nothing from it.
    async fn status(&self, arn: &str) -> PortResult<ExecutionStatus>;
}

/// Where run reports go (Slack).
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Posts one message for the whole run.
    async fn notify(&self, report: &RunReport) -> PortResult<()>;
    /// Checks that the destination exists and takes posts, without posting a message, for
    /// `keyrotor check`. An error names what is wrong with it.
    async fn probe(&self) -> PortResult<WebhookProbe> {
        Ok(WebhookProbe::Unverifiable(
            "this notifier cannot be checked without posting".into(),
        ))
    }
}

/// The wall clock (key ages, grace periods, intent expiry).
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
