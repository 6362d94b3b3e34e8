//! Errors that name the fix: no region, no credentials, an endpoint that cannot be reached. The
//! same sentences reach the CLI, the Lambda's errors and Slack, since they all come from here.
//! No AWS at all is needed: each request fails before anything answers.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use keyrotor_core::ports::{Account, Parameters, PortErrorKind};

/// A loopback port nothing listens on: bound, then dropped.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn creds() -> Credentials {
    Credentials::new("AKIAEXAMPLEEXAMPLE00", "not-a-secret", None, None, "test")
}

async fn config(region: Option<&str>, with_creds: bool, endpoint: &str) -> SdkConfig {
    let mut b = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint);
    if let Some(r) = region {
        b = b.region(Region::new(r.to_owned()));
    }
    if with_creds {
        b = b.credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(creds()),
        );
    }
    b.build()
}

#[tokio::test]
async fn without_a_region_the_error_says_how_to_set_one() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let aws = keyrotor_aws::Aws::new(&config(None, true, &endpoint).await);
    let e = aws.get_secure("/x").await.expect_err("no region fails");
    assert_eq!(e.kind, PortErrorKind::Invalid, "{e:?}");
    assert_eq!(
        e.message,
        format!("SSM GetParameter: {}", keyrotor_aws::NO_REGION)
    );
    for fix in ["aws.region", "AWS_REGION", "AWS_PROFILE"] {
        assert!(e.message.contains(fix), "{fix}: {}", e.message);
    }
    assert_eq!(aws.region(), None);
}

#[tokio::test]
async fn without_credentials_the_error_lists_where_the_sdk_looked() {
    // The real loader, with nothing to find: no variables, files that do not exist, no IMDS.
    let dir = std::env::temp_dir().join(format!("keyrotor-aws-errors-{}", std::process::id()));
    // SAFETY of the test: these variables are read by the loader below and by the message; this
    // test binary's other tests set their credentials explicitly and never read them.
    unsafe {
        std::env::remove_var("AWS_ACCESS_KEY_ID");
        std::env::remove_var("AWS_SECRET_ACCESS_KEY");
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
        std::env::remove_var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        std::env::remove_var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", dir.join("credentials"));
        std::env::set_var("AWS_CONFIG_FILE", dir.join("config"));
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let aws = keyrotor_aws::Aws::new(&sdk);
    let e = aws
        .get_secure("/x")
        .await
        .expect_err("no credentials fails");
    assert_eq!(e.kind, PortErrorKind::Unauthorized, "{e:?}");
    assert!(
        e.message
            .starts_with("SSM GetParameter: no AWS credentials were found: the SDK looked in "),
        "{}",
        e.message
    );
    for place in [
        "AWS_ACCESS_KEY_ID",
        "profile 'default'",
        &dir.join("credentials").display().to_string(),
        &dir.join("config").display().to_string(),
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "ECS container endpoint",
    ] {
        assert!(e.message.contains(place), "{place}: {}", e.message);
    }
    assert!(
        !e.message.contains("instance metadata"),
        "IMDS is off, so it was not looked at: {}",
        e.message
    );
    let e = aws.caller().await.expect_err("no credentials fails");
    assert!(
        e.message
            .starts_with("STS GetCallerIdentity: no AWS credentials"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let sdk = config(Some("eu-west-1"), true, &endpoint).await;
    // One attempt: the standard retries would only repeat the refusal.
    let sdk = sdk
        .into_builder()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    let aws = keyrotor_aws::Aws::new(&sdk);
    let e = aws.get_secure("/x").await.expect_err("a closed port fails");
    assert_eq!(e.kind, PortErrorKind::Retryable, "{e:?}");
    assert_eq!(
        e.message,
        format!(
            "SSM GetParameter: could not connect to {endpoint} (AWS_ENDPOINT_URL): check the address, the network and any proxy"
        )
    );
}
