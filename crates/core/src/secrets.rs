//! Resolves secret references from the config into values held as `SecretString`.

use secrecy::SecretString;

use crate::domain::{SecretName, SecretRef};
use crate::ports::{Parameters, PortError, PortErrorKind, SecretStore, Stage};

/// Reads the value a reference points at. Errors name the reference, never a value.
pub async fn resolve(
    r: &SecretRef,
    params: &dyn Parameters,
    secrets: &dyn SecretStore,
) -> Result<SecretString, PortError> {
    match r {
        SecretRef::Env(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
            _ => Err(PortError::new(
                PortErrorKind::NotFound,
                format!("environment variable {var} (from {r}) is not set"),
            )),
        },
        SecretRef::Ssm(name) => params.get_secure(name).await.map_err(|e| PortError {
            message: format!("SSM parameter {name}: {}", e.message),
            ..e
        }),
        SecretRef::SecretsManager(name) => {
            let parsed = SecretName::parse(name)
                .map_err(|e| PortError::new(PortErrorKind::Invalid, format!("{r}: {e}")))?;
            match secrets.read(&parsed, Stage::Current).await? {
                Some((_, v)) => Ok(v),
                None => Err(PortError::new(
                    PortErrorKind::NotFound,
                    format!("secret {name} (from {r}) has no AWSCURRENT value"),
                )),
            }
        }
    }
}

/// Reads the Slack webhook URL `slack.webhook` points at; the error is the sentence both drivers
/// report (`slack.webhook: the webhook URL could not be read: …`).
pub async fn resolve_webhook(
    r: &SecretRef,
    params: &dyn Parameters,
    secrets: &dyn SecretStore,
) -> Result<SecretString, String> {
    resolve(r, params, secrets).await.map_err(|e| {
        format!(
            "slack.webhook: the webhook URL could not be read: {}",
            e.message
        )
    })
}
