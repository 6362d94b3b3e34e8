//! One fault case's world: moto (shared by the cases of one worker, reset before each), the
//! fault-injecting AWS proxy in front of it, the Azure DevOps emulator and the Slack sink, seeded
//! with one IAM user whose key a shared AWS service connection holds; a config file; and
//! [`Env::run`], which runs the real `keyrotor` binary against them with `AWS_ENDPOINT_URL`
//! pointing at the proxy.
//!
//! The test's own reads and seeding go to moto directly, never through the proxy, so the proxy's
//! counts are the binary's requests only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_iam::types::StatusType;
use keyrotor_core::invariants::{World, WorldEndpoint, WorldKey};
use keyrotor_testkit::ado::{AdoEmulator, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_testkit::aws_proxy::AwsProxy;
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::moto::Moto;
use keyrotor_testkit::slack::SlackSink;
use serde_json::{Value, json};

pub const ORG: &str = "contoso";
pub const TARGET: &str = "platform-prod";
pub const USER: &str = "azure-devops-pipeline";
pub const SECRET: &str = "/azure/devops/agent/iam/accesskey";
pub const PAT: &str = "kq7xfaultstestpat00123456789abcdefghijklmnopqrstuvwxy";
pub const PAT_PARAM: &str = "/azuredevops/service/connection/pat";
pub const WEBHOOK_PARAM: &str = "/slack/webhook/url/alarm-access-keys-rotate";
pub const EP_ID: &str = "0f6c2d8e-4b1a-4e7f-9c3d-5a8b7e6f1d20";
pub const EP_NAME: &str = "aws-prod";

/// How long the test waits for one run before it kills it (a hang is a failure of its own; the
/// bound the cases assert is [`crate::cases::RUN_BOUND`]).
const KILL_AFTER: Duration = Duration::from_secs(300);

/// Small verification settings, so a permanent STS fault ends in seconds.
pub const VERIFY_INTERVAL_MS: u64 = 50;
pub const VERIFY_TIMEOUT_MS: u64 = 3000;

const CONFIG: &str = r#"# written by the fault tests
[ado]
organization = "ORG_URL"
pat = "ssm:PAT_PARAM"

[slack]
webhook = "ssm:WEBHOOK_PARAM"

[policy]
drain = "0s"
verify_interval = "VERIFY_INTERVALms"
verify_timeout = "VERIFY_TIMEOUTms"

[[target]]
name = "TARGET"
iam_user = "USER"
secret = "SECRET"
endpoints = [ { project = "Platform", name = "EP_NAME" }, { project = "Web", name = "EP_NAME" } ]
"#;

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    /// stdout as JSON (`--output json`), when it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The one target's report.
    pub fn target(&self) -> Option<Value> {
        self.json()?["targets"].get(0).cloned()
    }

    pub fn outcome(&self) -> String {
        self.target()
            .and_then(|t| t["outcome"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    }

    pub fn failed_step(&self) -> Option<String> {
        self.target()?["failed_step"].as_str().map(str::to_owned)
    }

    /// For assertion messages.
    pub fn show(&self) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        format!(
            "exit {} after {:.1} s\n--- stdout\n{}\n--- stderr (last lines)\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.stdout,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

pub struct Env {
    pub proxy: AwsProxy,
    pub ado: AdoEmulator,
    pub slack: SlackSink,
    pub iam: aws_sdk_iam::Client,
    pub sm: aws_sdk_secretsmanager::Client,
    moto_env: Vec<(&'static str, String)>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub initial_key: String,
    pub initial_secret: String,
}

impl Env {
    /// Resets `moto` and seeds a fresh world around it.
    pub async fn seed(moto: &Moto) -> Env {
        moto.reset().await.expect("moto resets");
        let sdk = moto.sdk_config().await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let sm = aws_sdk_secretsmanager::Client::new(&sdk);
        let (key_id, key_secret) = aws_seed::user_with_key_in_secret(&sdk, USER, SECRET)
            .await
            .unwrap();
        let slack = SlackSink::start().await.unwrap();
        aws_seed::secure_parameters(
            &sdk,
            &[
                (PAT_PARAM, PAT.to_owned()),
                (WEBHOOK_PARAM, slack.webhook_url()),
            ],
        )
        .await
        .unwrap();

        let mut endpoint = aws_endpoint(EP_NAME, &key_id, &key_secret, &["Platform", "Web"]);
        endpoint["id"] = json!(EP_ID);
        let seed = Seed::new().org(
            OrgSeed::new(ORG)
                .pat(PAT, Scope::Manage)
                .project("Platform")
                .project("Web")
                .endpoint(endpoint),
        );
        let ado = AdoEmulator::start(seed).await.unwrap();
        let proxy = AwsProxy::start(&moto.endpoint).await.unwrap();

        let dir = std::env::temp_dir().join(format!("keyrotor-faults-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("keyrotor.toml");
        let text = CONFIG
            .replace("ORG_URL", &ado.org_url(ORG))
            .replace("PAT_PARAM", PAT_PARAM)
            .replace("WEBHOOK_PARAM", WEBHOOK_PARAM)
            .replace("VERIFY_INTERVAL", &VERIFY_INTERVAL_MS.to_string())
            .replace("VERIFY_TIMEOUT", &VERIFY_TIMEOUT_MS.to_string())
            .replace("TARGET", TARGET)
            .replace("USER", USER)
            .replace("SECRET", SECRET)
            .replace("EP_NAME", EP_NAME);
        std::fs::write(&config, text).unwrap();
        Env {
            proxy,
            ado,
            slack,
            iam,
            sm,
            moto_env: moto.env(),
            dir,
            config,
            initial_key: key_id,
            initial_secret: key_secret,
        }
    }

    /// Runs `keyrotor rotate --force --config <config> --output json` with AWS reached through
    /// the proxy, and nothing else from the test's environment.
    pub async fn rotate(&self) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"));
        cmd.args(["rotate", "--force", "--output", "json", "--config"])
            .arg(&self.config)
            .env_clear()
            .envs(self.moto_env.iter().cloned())
            .env("AWS_ENDPOINT_URL", self.proxy.endpoint())
            .env("RUST_LOG", "info")
            .env("HOME", &self.dir)
            .env("AWS_CONFIG_FILE", self.dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd.spawn().expect("the keyrotor binary starts");
        let out = tokio::time::timeout(KILL_AFTER, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("keyrotor rotate did not finish within {KILL_AFTER:?}"))
            .expect("waiting for keyrotor");
        Output {
            code: out
                .status
                .code()
                .unwrap_or_else(|| panic!("keyrotor was ended by a signal: {:?}", out.status)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Every version of the secret that holds a key: key id → secret access key.
    async fn stored_keys(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let versions = self
            .sm
            .list_secret_version_ids()
            .secret_id(SECRET)
            .include_deprecated(true)
            .send()
            .await
            .unwrap();
        for v in versions.versions() {
            let got = self
                .sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_id(v.version_id().unwrap())
                .send()
                .await
                .unwrap();
            if let Ok(j) = serde_json::from_str::<Value>(got.secret_string().unwrap_or_default())
                && let (Some(i), Some(s)) =
                    (j["AccessKeyId"].as_str(), j["SecretAccessKey"].as_str())
            {
                out.insert(i.to_owned(), s.to_owned());
            }
        }
        out
    }

    /// The secret's labels and what they hold (read by explicit `VersionStage`).
    pub async fn stages(&self) -> BTreeMap<String, String> {
        let versions = self
            .sm
            .list_secret_version_ids()
            .secret_id(SECRET)
            .include_deprecated(true)
            .send()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
            if !versions
                .versions()
                .iter()
                .any(|v| v.version_stages().iter().any(|s| s == stage))
            {
                continue;
            }
            let got = self
                .sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_stage(stage)
                .send()
                .await
                .unwrap();
            out.insert(
                stage.to_owned(),
                got.secret_string().unwrap_or_default().to_owned(),
            );
        }
        out
    }

    /// The world as the invariants see it: keys (status, last use, secret when stored) and the
    /// secret's stages from moto; each stored endpoint's username and password from the emulator.
    pub async fn world(&self) -> World {
        let stored = self.stored_keys().await;
        let mut world = World::default();
        let listed = self
            .iam
            .list_access_keys()
            .user_name(USER)
            .send()
            .await
            .unwrap();
        for m in listed.access_key_metadata() {
            let id = m.access_key_id().unwrap().to_owned();
            let used = self
                .iam
                .get_access_key_last_used()
                .access_key_id(&id)
                .send()
                .await
                .unwrap()
                .access_key_last_used()
                .and_then(|u| u.last_used_date())
                .is_some();
            world.keys.push(WorldKey {
                secret: stored.get(&id).cloned(),
                active: m.status() == Some(&StatusType::Active),
                used,
                id,
            });
        }
        world.stages = self.stages().await;
        let state = self.ado.state();
        for ep in &state.org(ORG).expect("the organization exists").endpoints {
            let p = &ep["authorization"]["parameters"];
            world.endpoints.push(WorldEndpoint {
                name: ep["name"].as_str().unwrap_or_default().to_owned(),
                username: p["username"].as_str().map(str::to_owned),
                password: p["password"].as_str().map(str::to_owned),
            });
        }
        world.created = world
            .keys
            .iter()
            .map(|k| k.id.clone())
            .filter(|id| id != &self.initial_key)
            .collect();
        world
    }

    /// Every secret the outputs must not show: the PAT, the webhook, every stored key secret,
    /// every endpoint password.
    pub async fn secrets(&self) -> Vec<String> {
        let mut out = vec![
            PAT.to_owned(),
            self.slack.webhook_url(),
            self.slack.webhook_secret().to_owned(),
            self.initial_secret.clone(),
        ];
        out.extend(self.stored_keys().await.into_values());
        for ep in &self.ado.state().org(ORG).unwrap().endpoints {
            if let Some(p) = ep["authorization"]["parameters"]["password"].as_str() {
                out.push(p.to_owned());
            }
        }
        out.retain(|s| s.len() >= 8);
        out
    }

    pub async fn stop(self) {
        let Env {
            proxy,
            ado,
            slack,
            dir,
            ..
        } = self;
        proxy.stop().await;
        ado.shutdown().await;
        slack.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Every string in a JSON value, joined by newlines (what Slack shows).
pub fn all_text(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::String(s) => {
                out.push_str(s);
                out.push('\n');
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}
