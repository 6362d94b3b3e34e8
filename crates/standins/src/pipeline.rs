//! What a pipeline job on an OIDC service connection does with AWS, played against moto: the AWS
//! Toolkit's task calls `sts:AssumeRoleWithWebIdentity` with the job's Azure DevOps token, then
//! signs its calls with the role's temporary credentials ([`assume_with_web_identity`]). A job
//! on a key connection with `assumeRoleArn` calls `sts:AssumeRole` signed with the key instead
//! ([`assume_with_key`]). moto accepts any token and checks no
//! trust policy, so this shows nothing about trust; it makes IAM record the role's use
//! (`RoleLastUsed`), as a real pipeline run would.

use anyhow::{Context as _, Result};
use aws_config::SdkConfig;
use aws_credential_types::Credentials;

/// Signs calls with the role's temporary credentials: one `GetCallerIdentity`; the ARN.
async fn call_as(sdk: &SdkConfig, c: &aws_sdk_sts::types::Credentials) -> Result<String> {
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "pipeline-role",
    );
    let conf = aws_sdk_sts::config::Builder::from(sdk)
        .credentials_provider(creds)
        .build();
    let me = aws_sdk_sts::Client::from_conf(conf)
        .get_caller_identity()
        .send()
        .await
        .context("GetCallerIdentity with the role's credentials")?;
    Ok(me.arn().unwrap_or_default().to_owned())
}

/// Assumes `role_arn` with `sts:AssumeRole` signed with an access key (a job on a key
/// connection that has `assumeRoleArn`), and makes one call with the role's credentials.
/// Returns the ARN the call ran as.
pub async fn assume_with_key(
    sdk: &SdkConfig,
    key_id: &str,
    secret: &str,
    role_arn: &str,
) -> Result<String> {
    let key = Credentials::new(key_id, secret, None, None, "pipeline-key");
    let conf = aws_sdk_sts::config::Builder::from(sdk)
        .credentials_provider(key)
        .build();
    let got = aws_sdk_sts::Client::from_conf(conf)
        .assume_role()
        .role_arn(role_arn)
        .role_session_name("aws-vsts-tools")
        .send()
        .await
        .context("AssumeRole signed with the key")?;
    let c = got
        .credentials()
        .context("AssumeRole answered no credentials")?;
    call_as(sdk, c).await
}

/// Assumes `role_arn` with a web identity token and makes one call (`GetCallerIdentity`) with
/// the role's credentials. Returns the ARN the call ran as.
pub async fn assume_with_web_identity(sdk: &SdkConfig, role_arn: &str) -> Result<String> {
    let sts = aws_sdk_sts::Client::new(sdk);
    let got = sts
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name("aws-vsts-tools")
        .web_identity_token("header.payload.signature")
        .send()
        .await
        .context("AssumeRoleWithWebIdentity")?;
    let c = got
        .credentials()
        .context("AssumeRoleWithWebIdentity answered no credentials")?;
    call_as(sdk, c).await
}
