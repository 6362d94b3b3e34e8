//! The Secrets Manager adapter against moto (server mode): what it refuses before keyrotor
//! changes anything ("Safe among others": the secret stays the user's).

use aws_sdk_secretsmanager::primitives::Blob;
use keyrotor_aws::Aws;
use keyrotor_core::domain::SecretName;
use keyrotor_core::ports::{PortErrorKind, SecretStore, Stage};
use keyrotor_standins::aws_seed;
use keyrotor_standins::moto::Moto;

/// A fresh moto, its SDK config and a Secrets Manager client.
async fn moto() -> (Moto, aws_config::SdkConfig, aws_sdk_secretsmanager::Client) {
    let moto = Moto::start().expect("moto starts");
    let sdk = moto.sdk_config().await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    (moto, sdk, sm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_secret_is_refused_naming_it_not_read_as_no_value() {
    let (_moto, sdk, sm) = moto().await;
    sm.create_secret()
        .name("binary-one")
        .secret_binary(Blob::new(b"\x00\x01not text".to_vec()))
        .send()
        .await
        .unwrap();
    let aws = Aws::new(&sdk);
    let name = SecretName::parse("binary-one").unwrap();
    let e = aws.read(&name, Stage::Current).await.expect_err("refused");
    assert_eq!(e.kind, PortErrorKind::Invalid);
    assert!(
        e.message.contains("'binary-one'") && e.message.contains("binary"),
        "{}",
        e.message
    );
    let version = sm
        .describe_secret()
        .secret_id("binary-one")
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let e = aws
        .read_version(
            &name,
            &keyrotor_core::domain::SecretVersionId::parse(&version).unwrap(),
        )
        .await
        .expect_err("refused");
    assert_eq!(e.kind, PortErrorKind::Invalid);
    // A string secret still reads.
    aws_seed::secret(&sdk, "text-one", "{}").await.unwrap();
    let text = SecretName::parse("text-one").unwrap();
    assert!(aws.read(&text, Stage::Current).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_with_secrets_manager_rotation_on_is_refused() {
    let (moto, sdk, sm) = moto().await;
    aws_seed::secret(&sdk, "rotated-elsewhere", "{}")
        .await
        .unwrap();
    let aws = Aws::new(&sdk);
    let name = SecretName::parse("rotated-elsewhere").unwrap();
    assert!(
        aws.versions(&name).await.unwrap().is_some(),
        "readable before rotation is on"
    );
    // A rotation Lambda must exist for Secrets Manager to turn rotation on: one in moto (its
    // Lambda API, reached without an SDK of its own; moto does not check signatures).
    let iam = aws_sdk_iam::Client::new(&sdk);
    let role = iam
        .create_role()
        .role_name("rotator-role")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let endpoint = moto
        .env()
        .into_iter()
        .find(|(k, _)| *k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v)
        .unwrap();
    // moto must not try to run the function in Docker (there is none here).
    let configured = reqwest::Client::new()
        .post(format!("{endpoint}/moto-api/config"))
        .json(&serde_json::json!({"lambda": {"use_docker": false}}))
        .send()
        .await
        .unwrap();
    assert!(configured.status().is_success());
    // The smallest zip: an empty archive's end-of-central-directory record.
    let mut zip = b"PK\x05\x06".to_vec();
    zip.extend([0u8; 18]);
    let created = reqwest::Client::new()
        .post(format!("{endpoint}/2015-03-31/functions"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=0",
        )
        .json(&serde_json::json!({
            "FunctionName": "rotator",
            "Runtime": "python3.12",
            "Role": role.role().unwrap().arn(),
            "Handler": "index.handler",
            "Code": {"ZipFile": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &zip)},
        }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    // Bounded: a moto that tried to run the function would hang here instead of failing.
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sm.rotate_secret()
            .secret_id("rotated-elsewhere")
            .rotation_lambda_arn("arn:aws:lambda:us-east-1:123456789012:function:rotator")
            .rotation_rules(
                aws_sdk_secretsmanager::types::RotationRulesType::builder()
                    .automatically_after_days(30)
                    .build(),
            )
            .rotate_immediately(false)
            .send(),
    )
    .await
    .expect("moto answers RotateSecret within a minute")
    .expect("moto turns rotation on");
    let e = aws.versions(&name).await.expect_err("refused");
    assert_eq!(e.kind, PortErrorKind::Invalid);
    assert!(e.message.contains("rotation turned on"), "{}", e.message);
}
