//! The real adapters: AWS SDK, Azure DevOps REST, Slack webhook.

use std::sync::Arc;

use async_trait::async_trait;
use keyrotor_core::ports::{Notifier, PortResult, ServiceConnections};
use secrecy::SecretString;

use crate::migrate_oidc::OidcPorts;
use crate::{AwsPorts, Backend};

/// The production backend. AWS settings come from the environment unless a config is given
/// (the sandbox passes moto's).
#[derive(Default)]
pub struct RealBackend {
    aws: Option<aws_config::SdkConfig>,
}

impl RealBackend {
    /// AWS from the environment (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, roles).
    pub fn from_env() -> Self {
        Self { aws: None }
    }

    /// AWS from this SDK config.
    pub fn with_aws(config: aws_config::SdkConfig) -> Self {
        Self { aws: Some(config) }
    }
}

#[async_trait]
impl Backend for RealBackend {
    async fn aws(&self, region: Option<String>) -> AwsPorts {
        let config = match &self.aws {
            Some(c) => c.clone(),
            None => keyrotor_aws::load_config(region).await,
        };
        let aws = Arc::new(keyrotor_aws::Aws::new(&config));
        AwsPorts {
            iam: aws.clone(),
            secrets: aws.clone(),
            sts: aws.clone(),
            params: aws.clone(),
            executions: aws.clone(),
            account: aws,
        }
    }

    fn ado(&self, pat: SecretString) -> PortResult<Arc<dyn ServiceConnections>> {
        Ok(Arc::new(keyrotor_ado::AdoClient::new(pat)?))
    }

    async fn oidc(&self, region: Option<String>, pat: SecretString) -> PortResult<OidcPorts> {
        let config = match &self.aws {
            Some(c) => c.clone(),
            None => keyrotor_aws::load_config(region).await,
        };
        let aws = Arc::new(keyrotor_aws::Aws::new(&config));
        Ok(OidcPorts {
            iam: aws.clone(),
            store: aws,
            ado: Arc::new(keyrotor_ado::AdoClient::new(pat)?),
        })
    }

    fn notifier(&self, webhook: SecretString) -> PortResult<Arc<dyn Notifier>> {
        Ok(Arc::new(keyrotor_notify::SlackNotifier::new(webhook)?))
    }
}
