//! # keyrotor-aws
//!
//! The AWS side of keyrotor's ports, on the official AWS SDK for Rust: IAM access keys
//! ([`KeyStore`]), Secrets Manager ([`SecretStore`]), SSM Parameter Store ([`Parameters`]) and
//! STS signed with a given key ([`CallerIdentity`]), and Step Functions' `DescribeExecution`
//! ([`Executions`]: whether the execution that owns a lease still runs).
//!
//! The endpoint, region and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, profiles, the Lambda role), so tests point the same code
//! at moto. Throttling, 5xx and timeouts are retried by the SDK's standard retry strategy with
//! backoff (`CreateAccessKey` by the adapter itself, see [`KeyStore::create_key`]); errors are mapped to [`PortErrorKind`] by their AWS error code.
//!
//! Secrets Manager is always read with an explicit `VersionStage` or `VersionId`, never "the
//! latest": without it moto can answer the old value right after a stage move.
//!
//! [`oidc`]: what `keyrotor migrate-oidc` needs of IAM and SSM (providers, roles, the user's
//! policies, the migration record).
//!
//! (One file on purpose: the four port implementations share one [`SdkConfig`], one error
//! mapping (`Aws::map_err`, which names the fix for a missing region, credentials or
//! permission) and the same parsing of SDK answers into domain types; each `impl` is a thin
//! translation of one core trait, read next to the others.)

#![warn(missing_docs)]

pub mod oidc;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_iam::config::AsyncSleep;
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::error::SdkError;
use aws_sdk_iam::primitives::DateTime;
use aws_sdk_iam::types::StatusType;
use keyrotor_core::domain::{
    AccessKeyId, Arn, IamUserName, KeyStatus, SecretName, SecretVersionId,
};
use keyrotor_core::ports::{
    Account, Caller, CallerIdentity, ExecutionStatus, Executions, KeyInfo, KeyOwner, KeyStore,
    NewKey, Parameters, PortError, PortErrorKind, PortResult, SecretStore, SecretVersion,
    Simulated, Stage,
};
use secrecy::{ExposeSecret, SecretString};

/// How long one attempt of an AWS call may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// keyrotor's timeouts with every operation (its attempts and their backoff) bounded by
/// `operation`, each attempt by the lesser of 20 s and `operation`.
fn timeouts(operation: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5).min(operation))
        .operation_attempt_timeout(ATTEMPT_TIMEOUT.min(operation))
        .operation_timeout(operation)
        .build()
}

/// `config` with every operation bounded by `operation`: for a caller that must end by a
/// deadline (a Lambda invocation bounds each call by its remaining time, so a slow call fails
/// as retryable before Lambda cuts the function off).
pub fn bounded(config: &SdkConfig, operation: Duration) -> SdkConfig {
    config
        .to_builder()
        .timeout_config(timeouts(operation))
        .build()
}

/// Loads the AWS configuration from the environment, with keyrotor's retry and timeout
/// settings (90 s per operation; see [`bounded`]). `region` overrides the environment's.
pub async fn load_config(region: Option<String>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(5))
        .timeout_config(timeouts(Duration::from_secs(90)));
    if let Some(r) = region {
        loader = loader.region(Region::new(r));
    }
    loader.load().await
}

/// The AWS adapters, built once from one [`SdkConfig`].
#[derive(Clone, Debug)]
pub struct Aws {
    config: SdkConfig,
    iam: aws_sdk_iam::Client,
    secrets: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    sfn: aws_sdk_sfn::Client,
}

impl Aws {
    /// Clients for every service keyrotor uses.
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            config: config.clone(),
            iam: aws_sdk_iam::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            sfn: aws_sdk_sfn::Client::new(config),
        }
    }

    /// The IAM client (tests and the sandbox seed users with it).
    pub fn iam(&self) -> &aws_sdk_iam::Client {
        &self.iam
    }
    /// The Secrets Manager client.
    pub fn secrets_client(&self) -> &aws_sdk_secretsmanager::Client {
        &self.secrets
    }
    /// The SSM client.
    pub fn ssm(&self) -> &aws_sdk_ssm::Client {
        &self.ssm
    }

    /// `GetSecretValue` by stage or by version id: the version and its text; `None` when the
    /// secret or that version does not exist. A binary secret is refused.
    async fn get_value(
        &self,
        name: &SecretName,
        stage: Option<&str>,
        version: Option<&str>,
    ) -> PortResult<Option<(SecretVersionId, SecretString)>> {
        let r = self
            .secrets
            .get_secret_value()
            .secret_id(name.as_str())
            .set_version_stage(stage.map(str::to_owned))
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
            .map_err(|e| self.map_err("Secrets Manager GetSecretValue", e));
        let Some(out) = optional(r)? else {
            return Ok(None);
        };
        if out.secret_string().is_none() && out.secret_binary().is_some() {
            return Err(binary_secret(name));
        }
        let Some(text) = out.secret_string() else {
            return Ok(None);
        };
        let id = version_id(out.version_id().or(version).unwrap_or_default())?;
        Ok(Some((id, SecretString::from(text.to_owned()))))
    }
}

/// The first sentence of the error when no region is set anywhere, with its fix. The CLI, the
/// Lambda and Slack all show it (it ends every AWS error of a client without a region).
pub const NO_REGION: &str = "no AWS region is set: set aws.region in the config, AWS_REGION in the environment, or region in the AWS profile (AWS_PROFILE)";

/// Why a request could not be sent, as far as keyrotor can tell without reading error text.
#[derive(Debug)]
enum Unsent {
    /// The credential chain found nothing.
    NoCredentials,
    /// A credential provider is misconfigured (a profile that does not exist, a bad setting).
    BadCredentialConfig,
    /// A credential provider did not answer in time (instance metadata, a container endpoint).
    CredentialsTimedOut,
    /// A credential provider failed.
    CredentialsFailed,
    /// No region: requests cannot be signed or routed.
    NoRegion,
    /// Connecting failed (refused, unreachable, DNS).
    Connect,
    /// No answer within the timeout.
    TimedOut,
    /// Anything else.
    Other,
}

/// Walks an error's sources for a credential failure.
fn credentials_cause(e: &(dyn std::error::Error + 'static)) -> Option<Unsent> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(c) = err.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::CredentialsNotLoaded(_) => Unsent::NoCredentials,
                CredentialsError::InvalidConfiguration(_) => Unsent::BadCredentialConfig,
                CredentialsError::ProviderTimedOut(_) => Unsent::CredentialsTimedOut,
                _ => Unsent::CredentialsFailed,
            });
        }
        cur = err.source();
    }
    None
}

/// Where the default credential chain looked, in its order, as this process is configured.
fn credential_sources() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let home = var("HOME").unwrap_or_else(|| "~".into());
    let credentials =
        var("AWS_SHARED_CREDENTIALS_FILE").unwrap_or_else(|| format!("{home}/.aws/credentials"));
    let config = var("AWS_CONFIG_FILE").unwrap_or_else(|| format!("{home}/.aws/config"));
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let mut places = vec![
        "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".to_owned(),
        format!("profile '{profile}' in {credentials} and {config}"),
        "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE)".to_owned(),
        "the ECS container endpoint".to_owned(),
    ];
    let imds_off = var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !imds_off {
        places.push("EC2 instance metadata".to_owned());
    }
    let last = places.pop().unwrap_or_default();
    format!("{} and {last}", places.join(", "))
}

/// The AWS action a call of ours stands for: `IAM CreateAccessKey` is `iam:CreateAccessKey`.
fn action_of(what: &str) -> Option<String> {
    let (prefix, service) = [
        ("IAM ", "iam"),
        ("Secrets Manager ", "secretsmanager"),
        ("SSM ", "ssm"),
        ("STS ", "sts"),
        ("Step Functions ", "states"),
    ]
    .into_iter()
    .find(|(p, _)| what.starts_with(p))?;
    let op = what[prefix.len()..].split_whitespace().next()?;
    Some(format!("{service}:{op}"))
}

impl Aws {
    /// The region, unless none is set (an empty `AWS_REGION` counts as none).
    fn region_set(&self) -> Option<&str> {
        self.config
            .region()
            .map(|r| r.as_ref())
            .filter(|r| !r.trim().is_empty())
    }

    /// Where `what`'s requests go: the configured endpoint (`AWS_ENDPOINT_URL`) when there is
    /// one, else the service's public endpoint in the region.
    fn host_of(&self, what: &str) -> String {
        if let Some(url) = self.config.endpoint_url() {
            return format!("{url} (AWS_ENDPOINT_URL)");
        }
        let region = self.region_set().unwrap_or("(no region)");
        match action_of(what).as_deref().and_then(|a| a.split(':').next()) {
            Some("iam") => "iam.amazonaws.com".to_owned(),
            Some(service) => format!("{service}.{region}.amazonaws.com"),
            None => format!("AWS in {region}"),
        }
    }

    /// Why a request was not sent or not answered: the error's sources (a credential failure),
    /// its kind (connect, timeout), and the config (no region).
    fn unsent<E, R>(&self, e: &SdkError<E, R>) -> Unsent
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        if let Some(c) = std::error::Error::source(e).and_then(credentials_cause) {
            return c;
        }
        match e {
            SdkError::DispatchFailure(d) if d.is_timeout() => Unsent::TimedOut,
            SdkError::DispatchFailure(d) if d.is_io() => Unsent::Connect,
            SdkError::TimeoutError(_) => Unsent::TimedOut,
            _ if self.region_set().is_none() => Unsent::NoRegion,
            _ => Unsent::Other,
        }
    }

    /// Maps an SDK error to a port error: by its AWS error code when the service answered;
    /// otherwise by what kept the request from being sent or answered, naming the fix (no
    /// region, no credentials and where the SDK looked, the host that could not be reached).
    /// `what` says what was being done (`IAM CreateAccessKey`).
    fn map_err<E>(&self, what: &str, e: SdkError<E, HttpResponse>) -> PortError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (kind, detail) = match &e {
            // An answer without an error code the SDK can read (some proxies and VPC endpoint
            // policies, and moto's authorization, answer 403 in a shape the protocol does not
            // use): the status still says what it is.
            SdkError::ServiceError(se) if se.err().code().is_none() && se.raw().status().as_u16() == 403 => {
                let fix = action_of(what)
                    .map(|a| format!(": the AWS credentials in use need {a}; deploy/README.md lists every permission"))
                    .unwrap_or_default();
                (
                    PortErrorKind::Forbidden,
                    format!("access denied (HTTP 403){fix}"),
                )
            }
            SdkError::ServiceError(se) => {
                let err = se.err();
                let code = err.code().unwrap_or("Unknown");
                let kind = match code {
                    "NoSuchEntity" | "ResourceNotFoundException" | "ParameterNotFound" => {
                        PortErrorKind::NotFound
                    }
                    "LimitExceeded" | "LimitExceededException" => PortErrorKind::LimitExceeded,
                    "Throttling"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "TooManyRequestsException"
                    | "ServiceUnavailable"
                    | "InternalFailure"
                    | "InternalServiceError"
                    | "InternalServiceErrorException"
                    | "ServiceFailure" => PortErrorKind::Retryable,
                    "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "UnrecognizedClientException"
                    | "ExpiredToken"
                    | "ExpiredTokenException"
                    | "InvalidAccessKeyId" => PortErrorKind::Unauthorized,
                    "AccessDenied" | "AccessDeniedException" => PortErrorKind::Forbidden,
                    "InvalidParameterException"
                    | "InvalidRequestException"
                    | "InvalidInput"
                    | "ValidationException"
                    | "ValidationError"
                    | "ResourceExistsException"
                    | "MalformedPolicyDocument" => PortErrorKind::Invalid,
                    _ => PortErrorKind::Failed,
                };
                let msg = err.message().unwrap_or("no message");
                let detail = match (kind, action_of(what)) {
                    _ if err.code().is_none() => format!(
                        "HTTP {} without an error code the SDK could read",
                        se.raw().status().as_u16()
                    ),
                    (PortErrorKind::Forbidden, Some(action)) => format!(
                        "{code}: {msg} (the AWS credentials in use need {action}; deploy/README.md lists every permission)"
                    ),
                    _ => format!("{code}: {msg}"),
                };
                (kind, detail)
            }
            SdkError::ResponseError(_) => (
                PortErrorKind::Retryable,
                format!("unreadable response from {}", self.host_of(what)),
            ),
            SdkError::DispatchFailure(_)
            | SdkError::ConstructionFailure(_)
            | SdkError::TimeoutError(_) => match self.unsent(&e) {
                Unsent::NoCredentials => (
                    PortErrorKind::Unauthorized,
                    format!(
                        "no AWS credentials were found: the SDK looked in {}",
                        credential_sources()
                    ),
                ),
                Unsent::BadCredentialConfig => (
                    PortErrorKind::Unauthorized,
                    "the AWS credentials could not be loaded: the profile (AWS_PROFILE) or a credential setting is invalid".to_owned(),
                ),
                Unsent::CredentialsTimedOut => (
                    PortErrorKind::Retryable,
                    "the AWS credential provider (instance metadata or the container endpoint) did not answer in time".to_owned(),
                ),
                Unsent::CredentialsFailed => (
                    PortErrorKind::Unauthorized,
                    "the AWS credential provider failed to give credentials".to_owned(),
                ),
                Unsent::NoRegion => (PortErrorKind::Invalid, NO_REGION.to_owned()),
                Unsent::Connect => (
                    PortErrorKind::Retryable,
                    format!(
                        "could not connect to {}: check the address, the network and any proxy",
                        self.host_of(what)
                    ),
                ),
                Unsent::TimedOut => (
                    PortErrorKind::Retryable,
                    format!("{} did not answer in time", self.host_of(what)),
                ),
                // Sent, and the connection ended before an answer (a dropped connection): a
                // later attempt may work.
                Unsent::Other if matches!(e, SdkError::DispatchFailure(_)) => (
                    PortErrorKind::Retryable,
                    format!(
                        "the connection to {} ended before an answer came",
                        self.host_of(what)
                    ),
                ),
                Unsent::Other => (
                    PortErrorKind::Failed,
                    format!("the request to {} could not be sent", self.host_of(what)),
                ),
            },
            _ => (PortErrorKind::Failed, "unknown SDK error".to_owned()),
        };
        PortError::new(kind, format!("{what}: {detail}"))
    }
}

/// A `NotFound` answer becomes `None`.
fn optional<T>(r: PortResult<T>) -> PortResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind == PortErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn to_system(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|d| SystemTime::try_from(*d).ok())
}

fn version_id(raw: &str) -> PortResult<SecretVersionId> {
    SecretVersionId::parse(raw).map_err(|e| {
        PortError::new(
            PortErrorKind::Failed,
            format!("Secrets Manager returned an unexpected version id: {e}"),
        )
    })
}

fn key_id(raw: &str) -> PortResult<AccessKeyId> {
    AccessKeyId::parse(raw).map_err(|e| {
        PortError::new(
            PortErrorKind::Failed,
            format!("IAM returned an unexpected key id: {e}"),
        )
    })
}

#[async_trait]
impl KeyStore for Aws {
    async fn list_keys_brief(&self, user: &IamUserName) -> PortResult<Vec<KeyInfo>> {
        let out = self
            .iam
            .list_access_keys()
            .user_name(user.as_str())
            .send()
            .await
            .map_err(|e| self.map_err("IAM ListAccessKeys", e))?;
        let mut keys = Vec::new();
        for m in out.access_key_metadata() {
            let Some(id) = m.access_key_id() else {
                continue;
            };
            keys.push(KeyInfo {
                status: match m.status() {
                    Some(StatusType::Active) => KeyStatus::Active,
                    _ => KeyStatus::Inactive,
                },
                created: to_system(m.create_date()).unwrap_or(SystemTime::UNIX_EPOCH),
                last_used: None,
                id: key_id(id)?,
            });
        }
        Ok(keys)
    }

    async fn list_keys(&self, user: &IamUserName) -> PortResult<Vec<KeyInfo>> {
        let mut keys = self.list_keys_brief(user).await?;
        for k in &mut keys {
            let last = self
                .iam
                .get_access_key_last_used()
                .access_key_id(k.id.as_str())
                .send()
                .await
                .map_err(|e| self.map_err("IAM GetAccessKeyLastUsed", e))?;
            k.last_used = to_system(last.access_key_last_used().and_then(|u| u.last_used_date()));
        }
        Ok(keys)
    }

    /// Retried here, not by the SDK: a retry after an attempt whose answer was lost (the key
    /// may exist, its secret unseen) can meet the two-key limit that attempt caused, which is
    /// not the same as another actor holding the room ([`PortErrorKind::LostAnswer`]).
    async fn create_key(&self, user: &IamUserName) -> PortResult<NewKey> {
        const ATTEMPTS: u32 = 5;
        let mut lost = false;
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        let out = loop {
            let sent = self
                .iam
                .create_access_key()
                .user_name(user.as_str())
                .customize()
                .config_override(
                    aws_sdk_iam::config::Builder::default().retry_config(RetryConfig::disabled()),
                )
                .send()
                .await;
            let e = match sent {
                Ok(out) => break out,
                Err(e) => e,
            };
            // Throttling is refused before it acts; anything else unanswered may have acted.
            let unknown = match &e {
                SdkError::ServiceError(se) => !matches!(
                    se.err().code(),
                    Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded")
                ),
                _ => true,
            };
            let err = self.map_err("IAM CreateAccessKey", e);
            if err.kind == PortErrorKind::LimitExceeded && lost {
                return Err(PortError::new(
                    PortErrorKind::LostAnswer,
                    "IAM CreateAccessKey: an attempt's answer was lost and its retry met the \
                     two-key limit; that attempt probably created a key whose secret was never \
                     received",
                ));
            }
            if !err.is_retryable() || attempt == ATTEMPTS {
                return Err(err);
            }
            lost |= unknown;
            if let Some(sleep) = self.config.sleep_impl() {
                sleep.sleep(delay).await;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
        };
        let k = out.access_key().ok_or_else(|| {
            PortError::new(PortErrorKind::Failed, "IAM CreateAccessKey returned no key")
        })?;
        Ok(NewKey {
            info: KeyInfo {
                id: key_id(k.access_key_id())?,
                status: KeyStatus::Active,
                created: to_system(k.create_date()).unwrap_or_else(SystemTime::now),
                last_used: None,
            },
            secret: SecretString::from(k.secret_access_key().to_owned()),
            after_lost_answer: lost,
        })
    }

    async fn set_status(
        &self,
        user: &IamUserName,
        key: &AccessKeyId,
        status: KeyStatus,
    ) -> PortResult<()> {
        let status = match status {
            KeyStatus::Active => StatusType::Active,
            KeyStatus::Inactive => StatusType::Inactive,
        };
        self.iam
            .update_access_key()
            .user_name(user.as_str())
            .access_key_id(key.as_str())
            .status(status)
            .send()
            .await
            .map_err(|e| self.map_err("IAM UpdateAccessKey", e))?;
        Ok(())
    }

    async fn delete_key(&self, user: &IamUserName, key: &AccessKeyId) -> PortResult<()> {
        self.iam
            .delete_access_key()
            .user_name(user.as_str())
            .access_key_id(key.as_str())
            .send()
            .await
            .map_err(|e| self.map_err("IAM DeleteAccessKey", e))?;
        Ok(())
    }

    async fn last_used(&self, key: &AccessKeyId) -> PortResult<Option<SystemTime>> {
        let last = optional(
            self.iam
                .get_access_key_last_used()
                .access_key_id(key.as_str())
                .send()
                .await
                .map_err(|e| self.map_err("IAM GetAccessKeyLastUsed", e)),
        )?;
        Ok(last.and_then(|l| to_system(l.access_key_last_used().and_then(|u| u.last_used_date()))))
    }

    async fn owner_of(&self, key: &AccessKeyId) -> PortResult<Option<KeyOwner>> {
        let Some(last) = optional(
            self.iam
                .get_access_key_last_used()
                .access_key_id(key.as_str())
                .send()
                .await
                .map_err(|e| self.map_err("IAM GetAccessKeyLastUsed", e)),
        )?
        else {
            return Ok(None);
        };
        let Some(user) = last.user_name().map(str::to_owned) else {
            return Ok(None);
        };
        let last_used = to_system(last.access_key_last_used().and_then(|u| u.last_used_date()));
        let created = match self.iam.list_access_keys().user_name(&user).send().await {
            Ok(out) => out
                .access_key_metadata()
                .iter()
                .find(|m| m.access_key_id() == Some(key.as_str()))
                .and_then(|m| to_system(m.create_date())),
            Err(_) => None,
        };
        Ok(Some(KeyOwner {
            user,
            created,
            last_used,
        }))
    }
}

/// A secret that holds a binary value: keyrotor keeps a JSON string, and will not overwrite what
/// some other program stored.
fn binary_secret(name: &SecretName) -> PortError {
    PortError::new(
        PortErrorKind::Invalid,
        format!(
            "secret '{name}' holds a binary value (SecretBinary), not a string; keyrotor keeps its key as JSON text: give it a secret of its own"
        ),
    )
}

#[async_trait]
impl SecretStore for Aws {
    async fn versions(&self, name: &SecretName) -> PortResult<Option<Vec<SecretVersion>>> {
        // DescribeSecret lists every labelled version in one call (and, unlike moto's
        // ListSecretVersionIds, answers ResourceNotFoundException for a missing secret).
        let described = self
            .secrets
            .describe_secret()
            .secret_id(name.as_str())
            .send()
            .await
            .map_err(|e| self.map_err("Secrets Manager DescribeSecret", e));
        let Some(out) = optional(described)? else {
            return Ok(None);
        };
        // Two rotators would fight over one key: Secrets Manager's own rotation (a rotation
        // Lambda) and keyrotor. Refused before anything changes.
        if out.rotation_enabled() == Some(true) {
            return Err(PortError::new(
                PortErrorKind::Invalid,
                format!(
                    "secret '{name}' has Secrets Manager rotation turned on (a rotation Lambda rotates it too); turn it off or give keyrotor a secret of its own"
                ),
            ));
        }
        let mut versions = Vec::new();
        for (id, stages) in out.version_ids_to_stages().into_iter().flatten() {
            if !stages.is_empty() {
                versions.push(SecretVersion {
                    id: version_id(id)?,
                    stages: stages.clone(),
                });
            }
        }
        versions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some(versions))
    }

    async fn read(
        &self,
        name: &SecretName,
        stage: Stage,
    ) -> PortResult<Option<(SecretVersionId, SecretString)>> {
        self.get_value(name, Some(stage.label()), None).await
    }

    async fn read_version(
        &self,
        name: &SecretName,
        version: &SecretVersionId,
    ) -> PortResult<Option<SecretString>> {
        Ok(self
            .get_value(name, None, Some(version.as_str()))
            .await?
            .map(|(_, value)| value))
    }

    async fn create(&self, name: &SecretName, description: &str) -> PortResult<()> {
        if name.as_str().starts_with("arn:") {
            return Err(PortError::new(
                PortErrorKind::NotFound,
                format!("secret {name} does not exist, and keyrotor creates secrets by name only"),
            ));
        }
        let r = self
            .secrets
            .create_secret()
            .name(name.as_str())
            .description(description)
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.map_err("Secrets Manager CreateSecret", e);
                if e.message.contains("ResourceExistsException") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn put(
        &self,
        name: &SecretName,
        token: &SecretVersionId,
        value: &SecretString,
        stage: Stage,
    ) -> PortResult<SecretVersionId> {
        let out = self
            .secrets
            .put_secret_value()
            .secret_id(name.as_str())
            .client_request_token(token.as_str())
            .secret_string(value.expose_secret())
            .version_stages(stage.label())
            .send()
            .await
            .map_err(|e| self.map_err("Secrets Manager PutSecretValue", e))?;
        match out.version_id() {
            Some(v) => version_id(v),
            None => Ok(token.clone()),
        }
    }

    async fn move_stage(
        &self,
        name: &SecretName,
        stage: Stage,
        to: Option<&SecretVersionId>,
        from: Option<&SecretVersionId>,
    ) -> PortResult<()> {
        self.secrets
            .update_secret_version_stage()
            .secret_id(name.as_str())
            .version_stage(stage.label())
            .set_move_to_version_id(to.map(|v| v.as_str().to_owned()))
            .set_remove_from_version_id(from.map(|v| v.as_str().to_owned()))
            .send()
            .await
            .map_err(|e| self.map_err("Secrets Manager UpdateSecretVersionStage", e))?;
        Ok(())
    }
}

#[async_trait]
impl Executions for Aws {
    async fn status(&self, arn: &str) -> PortResult<ExecutionStatus> {
        let r = self
            .sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await;
        let out = match r {
            Ok(out) => out,
            // Step Functions knows no such execution: it cannot be running. Only this code says
            // so; any other error (AccessDenied, InvalidArn, throttling) concludes nothing.
            Err(SdkError::ServiceError(se)) if se.err().code() == Some("ExecutionDoesNotExist") => {
                return Ok(ExecutionStatus::Missing);
            }
            Err(e) => return Err(self.map_err("Step Functions DescribeExecution", e)),
        };
        Ok(match out.status() {
            aws_sdk_sfn::types::ExecutionStatus::Running => ExecutionStatus::Running,
            other => ExecutionStatus::Ended(other.as_str().to_owned()),
        })
    }
}

#[async_trait]
impl Parameters for Aws {
    async fn get_secure(&self, name: &str) -> PortResult<SecretString> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.map_err("SSM GetParameter", e))?;
        out.parameter()
            .and_then(|p| p.value())
            .map(|v| SecretString::from(v.to_owned()))
            .ok_or_else(|| {
                PortError::new(
                    PortErrorKind::NotFound,
                    format!("SSM parameter {name} has no value"),
                )
            })
    }
}

#[async_trait]
impl CallerIdentity for Aws {
    async fn caller_arn(&self, key: &AccessKeyId, secret: &SecretString) -> PortResult<Arn> {
        // A client of its own, signed with the new key only; no retries: verify loops itself.
        let creds = Credentials::new(
            key.as_str(),
            secret.expose_secret(),
            None,
            None,
            "keyrotor-new-key",
        );
        let conf = aws_sdk_sts::config::Builder::from(&self.config)
            .credentials_provider(creds)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build();
        let sts = aws_sdk_sts::Client::from_conf(conf);
        let out = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| self.map_err("STS GetCallerIdentity with the new key", e))?;
        let arn = out
            .arn()
            .ok_or_else(|| PortError::new(PortErrorKind::Failed, "STS answered without an ARN"))?;
        Arn::parse(arn).map_err(|e| {
            PortError::new(
                PortErrorKind::Failed,
                format!("STS answered an unexpected ARN: {e}"),
            )
        })
    }
}

#[async_trait]
impl Account for Aws {
    fn region(&self) -> Option<String> {
        self.region_set().map(str::to_owned)
    }

    async fn caller(&self) -> PortResult<Caller> {
        let sts = aws_sdk_sts::Client::new(&self.config);
        let out = sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| self.map_err("STS GetCallerIdentity", e))?;
        match (out.account(), out.arn()) {
            (Some(account), Some(arn)) => Ok(Caller {
                account: account.to_owned(),
                arn: arn.to_owned(),
            }),
            _ => Err(PortError::new(
                PortErrorKind::Failed,
                "STS GetCallerIdentity answered without an account or ARN",
            )),
        }
    }

    async fn simulate(
        &self,
        principal: &str,
        checks: &[(String, String)],
    ) -> PortResult<Vec<Simulated>> {
        // One simulation per resource: IAM evaluates every action against every resource given.
        let mut by_resource: Vec<(&str, Vec<&str>)> = Vec::new();
        for (action, resource) in checks {
            match by_resource.iter_mut().find(|(r, _)| r == resource) {
                Some((_, actions)) => actions.push(action),
                None => by_resource.push((resource, vec![action])),
            }
        }
        let mut decisions = Vec::new();
        for (resource, actions) in by_resource {
            let mut marker: Option<String> = None;
            loop {
                let out = self
                    .iam
                    .simulate_principal_policy()
                    .policy_source_arn(principal)
                    .set_action_names(Some(actions.iter().map(|a| (*a).to_owned()).collect()))
                    .resource_arns(resource)
                    .set_marker(marker.take())
                    .send()
                    .await
                    .map_err(|e| self.map_err("IAM SimulatePrincipalPolicy", e))?;
                for r in out.evaluation_results() {
                    decisions.push(Simulated {
                        action: r.eval_action_name().to_owned(),
                        resource: r.eval_resource_name().unwrap_or(resource).to_owned(),
                        allowed: *r.eval_decision()
                            == aws_sdk_iam::types::PolicyEvaluationDecisionType::Allowed,
                    });
                }
                match out.marker() {
                    Some(m) if out.is_truncated() => marker = Some(m.to_owned()),
                    _ => break,
                }
            }
        }
        Ok(decisions)
    }
}
