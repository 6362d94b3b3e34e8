//! # keyrotor-aws
//!
//! The AWS side of keyrotor's ports, on the official AWS SDK for Rust: IAM access keys
//! ([`KeyStore`]), Secrets Manager ([`SecretStore`]), SSM Parameter Store ([`Parameters`]) and
//! STS signed with a given key ([`CallerIdentity`]).
//!
//! The endpoint, region and credentials come from the standard AWS environment
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, profiles, the Lambda role), so tests point the same code
//! at moto. Throttling, 5xx and timeouts are retried by the SDK's standard retry strategy with
//! backoff; errors are mapped to [`PortErrorKind`] by their AWS error code.
//!
//! Secrets Manager is always read with an explicit `VersionStage` or `VersionId`, never "the
//! latest": without it moto can answer the old value right after a stage move.

#![warn(missing_docs)]

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::error::SdkError;
use aws_sdk_iam::primitives::DateTime;
use aws_sdk_iam::types::StatusType;
use keyrotor_core::domain::{AccessKeyId, IamUserName, KeyStatus, SecretName};
use keyrotor_core::ports::{
    CallerIdentity, KeyInfo, KeyOwner, KeyStore, NewKey, Parameters, PortError, PortErrorKind,
    PortResult, SecretStore, SecretVersion, Stage,
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
}

impl Aws {
    /// Clients for every service keyrotor uses.
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            config: config.clone(),
            iam: aws_sdk_iam::Client::new(config),
            secrets: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
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
}

/// Maps an SDK error to a port error by its AWS error code. `what` says what was being done.
fn map_err<E, R>(what: &str, e: SdkError<E, R>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (kind, detail) = match &e {
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
            (kind, format!("{code}: {msg}"))
        }
        SdkError::TimeoutError(_) => (PortErrorKind::Retryable, "timed out".to_owned()),
        SdkError::DispatchFailure(d) => {
            let why = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "connection failed"
            } else {
                "request could not be sent"
            };
            (PortErrorKind::Retryable, why.to_owned())
        }
        SdkError::ResponseError(_) => (PortErrorKind::Retryable, "unreadable response".to_owned()),
        SdkError::ConstructionFailure(_) => (
            PortErrorKind::Failed,
            "request could not be built".to_owned(),
        ),
        _ => (PortErrorKind::Failed, "unknown SDK error".to_owned()),
    };
    PortError::new(kind, format!("{what}: {detail}"))
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
            .map_err(|e| map_err("IAM ListAccessKeys", e))?;
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
                .map_err(|e| map_err("IAM GetAccessKeyLastUsed", e))?;
            k.last_used = to_system(last.access_key_last_used().and_then(|u| u.last_used_date()));
        }
        Ok(keys)
    }

    async fn create_key(&self, user: &IamUserName) -> PortResult<NewKey> {
        let out = self
            .iam
            .create_access_key()
            .user_name(user.as_str())
            .send()
            .await
            .map_err(|e| map_err("IAM CreateAccessKey", e))?;
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
            .map_err(|e| map_err("IAM UpdateAccessKey", e))?;
        Ok(())
    }

    async fn delete_key(&self, user: &IamUserName, key: &AccessKeyId) -> PortResult<()> {
        self.iam
            .delete_access_key()
            .user_name(user.as_str())
            .access_key_id(key.as_str())
            .send()
            .await
            .map_err(|e| map_err("IAM DeleteAccessKey", e))?;
        Ok(())
    }

    async fn owner_of(&self, key: &AccessKeyId) -> PortResult<Option<KeyOwner>> {
        let Some(last) = optional(
            self.iam
                .get_access_key_last_used()
                .access_key_id(key.as_str())
                .send()
                .await
                .map_err(|e| map_err("IAM GetAccessKeyLastUsed", e)),
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
            .map_err(|e| map_err("Secrets Manager DescribeSecret", e));
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
        let mut versions: Vec<SecretVersion> = out
            .version_ids_to_stages()
            .into_iter()
            .flatten()
            .filter(|(_, stages)| !stages.is_empty())
            .map(|(id, stages)| SecretVersion {
                id: id.clone(),
                stages: stages.clone(),
            })
            .collect();
        versions.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some(versions))
    }

    async fn read(
        &self,
        name: &SecretName,
        stage: Stage,
    ) -> PortResult<Option<(String, SecretString)>> {
        let r = self
            .secrets
            .get_secret_value()
            .secret_id(name.as_str())
            .version_stage(stage.label())
            .send()
            .await
            .map_err(|e| map_err("Secrets Manager GetSecretValue", e));
        let Some(out) = optional(r)? else {
            return Ok(None);
        };
        let version = out.version_id().unwrap_or_default().to_owned();
        if out.secret_string().is_none() && out.secret_binary().is_some() {
            return Err(binary_secret(name));
        }
        Ok(out
            .secret_string()
            .map(|s| (version, SecretString::from(s.to_owned()))))
    }

    async fn read_version(
        &self,
        name: &SecretName,
        version: &str,
    ) -> PortResult<Option<SecretString>> {
        let r = self
            .secrets
            .get_secret_value()
            .secret_id(name.as_str())
            .version_id(version)
            .send()
            .await
            .map_err(|e| map_err("Secrets Manager GetSecretValue", e));
        let Some(out) = optional(r)? else {
            return Ok(None);
        };
        if out.secret_string().is_none() && out.secret_binary().is_some() {
            return Err(binary_secret(name));
        }
        Ok(out
            .secret_string()
            .map(|s| SecretString::from(s.to_owned())))
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
                let e = map_err("Secrets Manager CreateSecret", e);
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
        token: &str,
        value: &SecretString,
        stage: Stage,
    ) -> PortResult<String> {
        let out = self
            .secrets
            .put_secret_value()
            .secret_id(name.as_str())
            .client_request_token(token)
            .secret_string(value.expose_secret())
            .version_stages(stage.label())
            .send()
            .await
            .map_err(|e| map_err("Secrets Manager PutSecretValue", e))?;
        Ok(out.version_id().unwrap_or(token).to_owned())
    }

    async fn move_stage(
        &self,
        name: &SecretName,
        stage: Stage,
        to: Option<&str>,
        from: Option<&str>,
    ) -> PortResult<()> {
        self.secrets
            .update_secret_version_stage()
            .secret_id(name.as_str())
            .version_stage(stage.label())
            .set_move_to_version_id(to.map(str::to_owned))
            .set_remove_from_version_id(from.map(str::to_owned))
            .send()
            .await
            .map_err(|e| map_err("Secrets Manager UpdateSecretVersionStage", e))?;
        Ok(())
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
            .map_err(|e| map_err("SSM GetParameter", e))?;
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
    async fn caller_arn(&self, key: &AccessKeyId, secret: &SecretString) -> PortResult<String> {
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
            .map_err(|e| map_err("STS GetCallerIdentity with the new key", e))?;
        out.arn()
            .map(str::to_owned)
            .ok_or_else(|| PortError::new(PortErrorKind::Failed, "STS answered without an ARN"))
    }
}
