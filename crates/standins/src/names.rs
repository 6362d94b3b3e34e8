//! The names the stand-in worlds start from: `keyrotor sandbox` seeds and configures them, and
//! so do the tests' environments. One place, so every world uses the same ones.

/// The emulated Azure DevOps organization.
pub const ORG: &str = "contoso";
/// The IAM user whose access key is rotated.
pub const USER: &str = "azure-devops-pipeline";
/// The Secrets Manager secret that keeps the user's key.
pub const SECRET: &str = "/azure/devops/agent/iam/accesskey";
/// The SSM parameter that holds the Azure DevOps PAT.
pub const PAT_PARAM: &str = "/azuredevops/service/connection/pat";
/// The SSM parameter that holds the Slack webhook URL.
pub const WEBHOOK_PARAM: &str = "/slack/webhook/url/alarm-access-keys-rotate";
