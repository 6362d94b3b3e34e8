//! `spawn_env()`: moto with an IAM user whose key an AWS connection holds, a secret, the PAT in
//! SSM, and a config file; a backend that mixes the real AWS adapters with the ADO fake.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use keyrotor::{AwsPorts, Backend, Io};
use keyrotor_aws::Aws;
use keyrotor_core::invariants::{World, WorldKey};
use keyrotor_core::ports::{Notifier, PortResult, ServiceConnections};
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::fakes::{Fakes, ORG};
use keyrotor_testkit::moto::Moto;
use secrecy::SecretString;

pub const USER: &str = "azure-devops-pipeline";
pub const SECRET: &str = "/azure/devops/agent/iam/accesskey";
pub const PAT: &str = "patSECRETvalue0123456789abcdefghijklmnopqrstuv";
pub const PAT_PARAM: &str = "/azuredevops/service/connection/pat";

pub struct Env {
    /// Kept alive for the test; dropping it stops moto.
    pub _moto: Moto,
    pub aws: Aws,
    pub ado: Fakes,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// The secrets the run must never print.
    pub secrets: Vec<String>,
    pub initial_key: String,
}

pub struct TestBackend {
    aws: Aws,
    ado: Fakes,
    pub pats: Mutex<Vec<String>>,
}

#[async_trait]
impl Backend for TestBackend {
    async fn aws(&self, _region: Option<String>) -> AwsPorts {
        let aws = Arc::new(self.aws.clone());
        AwsPorts {
            iam: aws.clone(),
            secrets: aws.clone(),
            sts: aws.clone(),
            params: aws,
        }
    }
    fn ado(&self, pat: SecretString) -> PortResult<Arc<dyn ServiceConnections>> {
        use secrecy::ExposeSecret;
        self.pats
            .lock()
            .unwrap()
            .push(pat.expose_secret().to_owned());
        Ok(Arc::new(self.ado.clone()))
    }
    fn notifier(&self, _webhook: SecretString) -> PortResult<Arc<dyn Notifier>> {
        Ok(Arc::new(self.ado.clone()))
    }
}

pub struct Output {
    pub code: i32,
    pub out: String,
    pub err: String,
    pub logs: String,
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub const CONFIG: &str = r#"
[ado]
organization = "ORG"
pat = "ssm:PAT_PARAM"

[policy]
verify_interval = "50ms"
verify_timeout = "20s"
drain = "0s"

[[target]]
name = "platform-prod"
iam_user = "USER"
secret = "SECRET"
endpoints = [ { project = "Platform", name = "aws-prod" }, { project = "Web", name = "aws-web" } ]
"#;

impl Env {
    pub fn backend(&self) -> TestBackend {
        TestBackend {
            aws: self.aws.clone(),
            ado: self.ado.clone(),
            pats: Mutex::new(Vec::new()),
        }
    }

    /// Runs `keyrotor ARGS` in-process, capturing stdout, stderr and trace-level logs.
    pub async fn run(&self, args: &[&str]) -> Output {
        let backend = self.backend();
        let (mut out, mut err, logs) = (Buf::default(), Buf::default(), Buf::default());
        let logs2 = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_writer(move || logs2.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut argv: Vec<std::ffi::OsString> = vec!["keyrotor".into()];
        argv.extend(
            args.iter()
                .map(|a| a.replace("{config}", self.config.to_str().unwrap()).into()),
        );
        let code = {
            let mut io = Io {
                out: &mut out,
                err: &mut err,
                terminal: false,
            };
            keyrotor::run(argv, &backend, &mut io).await
        };
        let text = |b: &Buf| String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
        let o = Output {
            code,
            out: text(&out),
            err: text(&err),
            logs: text(&logs),
        };
        self.assert_no_leak(&o);
        o
    }

    /// Invariant 5: no secret value anywhere in what the run printed or logged.
    pub fn assert_no_leak(&self, o: &Output) {
        let mut secrets = self.secrets.clone();
        secrets.extend(
            self.ado
                .state()
                .users
                .values()
                .flatten()
                .map(|k| k.secret.clone()),
        );
        for s in &secrets {
            for (name, text) in [("stdout", &o.out), ("stderr", &o.err), ("logs", &o.logs)] {
                assert!(!text.contains(s.as_str()), "a secret leaked into {name}");
            }
        }
    }

    /// Reads the secret's current keys from moto, so later scans cover them.
    pub async fn learn_secrets(&mut self) {
        let sm = self.aws.secrets_client();
        for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
            if let Ok(v) = sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_stage(stage)
                .send()
                .await
                && let Some(s) = v.secret_string()
                && let Ok(j) = serde_json::from_str::<serde_json::Value>(s)
                && let Some(k) = j["SecretAccessKey"].as_str()
            {
                self.secrets.push(k.to_owned());
            }
        }
    }

    /// The world as the invariants see it: IAM and the secret from moto, endpoints from the fake.
    pub async fn world(&self) -> World {
        let iam = self.aws.iam();
        let keys = iam.list_access_keys().user_name(USER).send().await.unwrap();
        let mut world = World::default();
        let secrets: Vec<(String, String)> = self.known_key_secrets().await;
        for m in keys.access_key_metadata() {
            let id = m.access_key_id().unwrap().to_owned();
            let used = iam
                .get_access_key_last_used()
                .access_key_id(&id)
                .send()
                .await
                .unwrap()
                .access_key_last_used()
                .and_then(|u| u.last_used_date())
                .is_some();
            world.keys.push(WorldKey {
                secret: secrets
                    .iter()
                    .find(|(i, _)| i == &id)
                    .map(|(_, s)| s.clone()),
                active: m.status() == Some(&aws_sdk_iam::types::StatusType::Active),
                used,
                id,
            });
        }
        let sm = self.aws.secrets_client();
        for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
            if let Ok(v) = sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_stage(stage)
                .send()
                .await
            {
                world.stages.insert(
                    stage.into(),
                    v.secret_string().unwrap_or_default().to_owned(),
                );
            }
        }
        let fake = self.ado.world("nobody", "nothing");
        world.endpoints = fake.endpoints;
        world.created = world
            .keys
            .iter()
            .map(|k| k.id.clone())
            .filter(|id| id != &self.initial_key)
            .collect();
        world
    }

    async fn known_key_secrets(&self) -> Vec<(String, String)> {
        let sm = self.aws.secrets_client();
        let mut out = Vec::new();
        let versions = sm
            .list_secret_version_ids()
            .secret_id(SECRET)
            .include_deprecated(true)
            .send()
            .await;
        if let Ok(vs) = versions {
            for v in vs.versions() {
                let got = sm
                    .get_secret_value()
                    .secret_id(SECRET)
                    .version_id(v.version_id().unwrap())
                    .send()
                    .await
                    .unwrap();
                if let Ok(j) = serde_json::from_str::<serde_json::Value>(
                    got.secret_string().unwrap_or_default(),
                ) && let (Some(i), Some(s)) =
                    (j["AccessKeyId"].as_str(), j["SecretAccessKey"].as_str())
                {
                    out.push((i.to_owned(), s.to_owned()));
                }
            }
        }
        out
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }
}

/// How the secret starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SecretStart {
    /// keyrotor's JSON for the initial key.
    Json,
    /// The older design's bare secret access key.
    Legacy,
    /// No secret yet.
    Absent,
}

pub async fn spawn_env(secret: SecretStart) -> Env {
    let moto = Moto::start().expect("moto must start (it is installed on first use)");
    let sdk = moto.sdk_config().await;
    let aws = Aws::new(&sdk);
    let key = aws_seed::user_with_key(&sdk, USER).await.unwrap();
    let (id, secret_key) = key.clone();
    match secret {
        SecretStart::Json => {
            aws.secrets_client()
                .create_secret()
                .name(SECRET)
                .secret_string(aws_seed::key_json(USER, &key))
                .send()
                .await
                .unwrap();
        }
        SecretStart::Legacy => {
            aws.secrets_client()
                .create_secret()
                .name(SECRET)
                .secret_string(&secret_key)
                .send()
                .await
                .unwrap();
        }
        SecretStart::Absent => {}
    }
    aws.ssm()
        .put_parameter()
        .name(PAT_PARAM)
        .value(PAT)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let ado = Fakes::new();
    ado.add_endpoint(ORG, "Platform", "aws-prod", Some((&id, &secret_key)));
    ado.add_endpoint(ORG, "Web", "aws-web", Some((&id, &secret_key)));
    let dir = std::env::temp_dir().join(format!("keyrotor-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keyrotor.toml");
    let env = Env {
        _moto: moto,
        aws,
        ado,
        dir,
        config,
        secrets: vec![PAT.into(), secret_key],
        initial_key: id,
    };
    env.write_config(
        &CONFIG
            .replace("ORG", ORG)
            .replace("PAT_PARAM", PAT_PARAM)
            .replace("USER", USER)
            .replace("SECRET", SECRET),
    );
    env
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
