//! Seeding AWS (moto) the way keyrotor's tests and benchmarks start: an IAM user whose one
//! access key is kept in a secret, and SecureString parameters. One place, so every harness
//! starts from the same shapes.

use anyhow::{Context as _, Result};
use aws_config::SdkConfig;
use aws_sdk_ssm::types::ParameterType;
use serde_json::json;

/// A freshly created access key: `(access key id, secret access key)`.
pub type Key = (String, String);

/// Creates `user` with one access key.
pub async fn user_with_key(sdk: &SdkConfig, user: &str) -> Result<Key> {
    let iam = aws_sdk_iam::Client::new(sdk);
    iam.create_user()
        .user_name(user)
        .send()
        .await
        .with_context(|| format!("creating the IAM user {user}"))?;
    let created = iam
        .create_access_key()
        .user_name(user)
        .send()
        .await
        .with_context(|| format!("creating a key for {user}"))?;
    let key = created
        .access_key()
        .context("CreateAccessKey answered no key")?;
    Ok((
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    ))
}

/// The secret's value as keyrotor writes it (JSON with the key, its user and a creation date).
pub fn key_json(user: &str, key: &Key) -> String {
    json!({
        "AccessKeyId": key.0,
        "SecretAccessKey": key.1,
        "UserName": user,
        "CreateDate": "2026-01-01T00:00:00Z",
    })
    .to_string()
}

/// Creates `user` with one access key, and the secret `secret` holding it as keyrotor writes it.
pub async fn user_with_key_in_secret(sdk: &SdkConfig, user: &str, secret: &str) -> Result<Key> {
    let key = user_with_key(sdk, user).await?;
    self::secret(sdk, secret, &key_json(user, &key)).await?;
    Ok(key)
}

/// Creates the secret `name` holding the string `value`.
pub async fn secret(sdk: &SdkConfig, name: &str, value: &str) -> Result<()> {
    aws_sdk_secretsmanager::Client::new(sdk)
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .with_context(|| format!("creating the secret {name}"))?;
    Ok(())
}

/// Puts each `(name, value)` as a SecureString parameter.
pub async fn secure_parameters(sdk: &SdkConfig, params: &[(&str, String)]) -> Result<()> {
    let typed: Vec<_> = params
        .iter()
        .map(|(name, value)| (*name, value.clone(), ParameterType::SecureString))
        .collect();
    parameters(sdk, &typed).await
}

/// Puts each `(name, value, type)` as a parameter.
pub async fn parameters(sdk: &SdkConfig, params: &[(&str, String, ParameterType)]) -> Result<()> {
    let ssm = aws_sdk_ssm::Client::new(sdk);
    for (name, value, kind) in params {
        ssm.put_parameter()
            .name(*name)
            .value(value)
            .r#type(kind.clone())
            .send()
            .await
            .with_context(|| format!("putting the parameter {name}"))?;
    }
    Ok(())
}
