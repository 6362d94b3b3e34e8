//! What the client tests share: a seeded emulator on a free loopback port, and a client with
//! retry timings short enough to test.

#![allow(dead_code)]

use std::time::Duration;

use keyrotor_ado::{AdoClient, AdoOptions};
use keyrotor_core::domain::{OrgUrl, ProjectName};
use keyrotor_core::ports::EndpointHandle;
use keyrotor_testkit::ado::{AdoEmulator, OrgSeed, Scope, Seed, aws_endpoint};
use secrecy::SecretString;
use serde_json::{Value, json};

pub const PAT: &str = "patZ9xq1manage7kd0w3";
pub const READ_PAT: &str = "patR3adOnly8fj2m4u6";
pub const OLD_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const OLD_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYoldSECRET";
pub const NEW_KEY: &str = "AKIAI44QH8DHBEXAMPLE";
pub const NEW_SECRET: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbnewSECRET";
pub const SESSION_TOKEN: &str = "FwoGZXIvYXdzsessionTOKENsecret";
pub const SHARED_SECRET: &str = "sharedSECRETvalue0123456789";

pub const PLATFORM: &str = "aaaaaaaa-0000-4000-8000-000000000001";
pub const WEB: &str = "aaaaaaaa-0000-4000-8000-000000000002";
pub const DATA: &str = "aaaaaaaa-0000-4000-8000-000000000003";

pub const PROD: &str = "11111111-1111-4111-8111-111111111111";
pub const SHARED: &str = "22222222-2222-4222-8222-222222222222";
pub const OIDC: &str = "33333333-3333-4333-8333-333333333333";
pub const GITHUB: &str = "44444444-4444-4444-8444-444444444444";
pub const LOWER: &str = "55555555-5555-4555-8555-555555555555";
pub const FAILED: &str = "66666666-6666-4666-8666-666666666666";

/// Every secret a test might leak.
pub const SECRETS: [&str; 6] = [
    PAT,
    READ_PAT,
    OLD_SECRET,
    NEW_SECRET,
    SESSION_TOKEN,
    SHARED_SECRET,
];

pub fn seed() -> Seed {
    let mut prod = aws_endpoint("aws-prod", OLD_KEY, OLD_SECRET, &["Platform"]);
    prod["id"] = json!(PROD);
    prod["description"] = json!("Production deployments");
    prod["data"] = json!({"region": "eu-west-1", "note": "kept"});
    prod["customField"] = json!({"unknown": ["to", "the", "swagger"]});
    let p = &mut prod["authorization"]["parameters"];
    p["assumeRoleArn"] = json!("arn:aws:iam::123456789012:role/deploy");
    p["externalId"] = json!("ext-42");
    p["roleSessionName"] = json!("aws-vsts-tools");
    p["sessionToken"] = json!(SESSION_TOKEN);

    let mut shared = aws_endpoint("aws-shared", OLD_KEY, SHARED_SECRET, &["Platform", "Web"]);
    shared["id"] = json!(SHARED);
    shared["serviceEndpointProjectReferences"][1]["name"] = json!("aws-shared-web");

    let mut oidc = aws_endpoint("aws-oidc", "", "", &["Platform"]);
    oidc["id"] = json!(OIDC);
    oidc["authorization"]["parameters"]["useOIDC"] = json!("true");
    oidc["authorization"]["parameters"]["assumeRoleArn"] =
        json!("arn:aws:iam::123456789012:role/oidc");

    let github = json!({
        "id": GITHUB, "name": "github", "type": "GitHub", "url": "https://github.com",
        "isReady": true,
        "authorization": {"scheme": "Token", "parameters": {"accessToken": "ghp_x"}},
        "serviceEndpointProjectReferences": [{"projectReference": {"name": "Platform"}, "name": "github"}]
    });

    let mut lower = aws_endpoint("aws-data", OLD_KEY, "lowerSECRET", &["Data"]);
    lower["id"] = json!(LOWER);
    lower["type"] = json!("aws");

    let mut failed = aws_endpoint("aws-failed", OLD_KEY, "failedSECRET", &["Platform"]);
    failed["id"] = json!(FAILED);
    failed["isReady"] = json!(false);

    Seed::new().org(
        OrgSeed::new("contoso")
            .pat(PAT, Scope::Manage)
            .pat(READ_PAT, Scope::Read)
            .project_with_id("Platform", PLATFORM)
            .project_with_id("Web", WEB)
            .project_with_id("Data", DATA)
            .endpoint(prod)
            .endpoint(shared)
            .endpoint(oidc)
            .endpoint(github)
            .endpoint(lower)
            .endpoint(failed)
            .pipeline_permissions(
                PROD,
                json!({
                    "pipelines": [{"id": 7, "authorized": true}, {"id": 9, "authorized": true}],
                    "allPipelines": {"authorized": false}
                }),
            ),
    )
}

/// Retry timings short enough for tests.
pub fn fast() -> AdoOptions {
    AdoOptions {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_attempts: 4,
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(20),
        max_retry_after: Duration::from_millis(250),
        max_total: Duration::from_secs(10),
        max_rate_limited_attempts: 4,
        rate_limit_max_wait: Duration::from_secs(10),
        deadline: None,
        max_read_age: keyrotor_core::ports::MAX_READ_AGE,
    }
}

pub struct Env {
    pub emu: AdoEmulator,
    pub client: AdoClient,
    pub org: OrgUrl,
}

impl Env {
    pub async fn start() -> Self {
        Self::with(seed(), fast()).await
    }

    pub async fn with(seed: Seed, options: AdoOptions) -> Self {
        let emu = AdoEmulator::start(seed).await.unwrap();
        let org = OrgUrl::parse(&emu.org_url("contoso")).unwrap();
        let client = AdoClient::with_options(SecretString::from(PAT), options).unwrap();
        Self { emu, client, org }
    }

    /// Another client on the same emulator.
    pub fn client_with(&self, pat: &str, options: AdoOptions) -> AdoClient {
        AdoClient::with_options(SecretString::from(pat), options).unwrap()
    }

    pub fn handle(&self, project: &str, id: &str) -> EndpointHandle {
        EndpointHandle {
            org: self.org.clone(),
            project: ProjectName::parse(project).unwrap(),
            id: keyrotor_core::domain::EndpointId::parse(id).unwrap(),
        }
    }

    /// The stored endpoint, passwords included.
    pub fn stored(&self, id: &str) -> Value {
        self.emu.endpoint("contoso", id).unwrap()
    }

    /// The methods the emulator saw, in order.
    pub fn methods(&self) -> Vec<String> {
        self.emu.requests().into_iter().map(|r| r.method).collect()
    }
}

/// The object without what a key update writes (`username`, `password`, and `sessionToken`,
/// which it clears): what an update must leave exactly as is.
pub fn without_credentials(v: &Value) -> Value {
    keyrotor_testkit::env::without_parameters(v, &["username", "password", "sessionToken"])
}

/// The JSON answer to `request`, which must succeed.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Fails when any secret appears in the text.
pub fn assert_no_secret(text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "a secret leaked into: {text}");
    }
    for key in [OLD_KEY, NEW_KEY] {
        assert!(!text.contains(key), "a full key id leaked into: {text}");
    }
}
