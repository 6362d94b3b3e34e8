//! `spawn_env()`: moto, the Azure DevOps emulator and the Slack sink on loopback ports, seeded
//! with one IAM user whose key a shared AWS service connection holds; a config file; and
//! [`Env::run`], which runs the real `keyrotor` binary against them and checks every output for
//! leaks afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_iam::types::StatusType;
use aws_sdk_ssm::types::ParameterType;
use keyrotor_testkit::ado::{AdoEmulator, EmulatorState, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::moto::Moto;
use keyrotor_testkit::slack::{Post, SlackSink};
use serde_json::{Value, json};

use crate::leaks;

pub const ORG: &str = "contoso";
pub const TARGET: &str = "platform-prod";
pub const USER: &str = "azure-devops-pipeline";
pub const SECRET: &str = "/azure/devops/agent/iam/accesskey";
/// Shaped like a real PAT (52 characters).
pub const PAT: &str = "kq7xbinarytestpat0123456789abcdefghijklmnopqrstuvwxy";
pub const PAT_PARAM: &str = "/azuredevops/service/connection/pat";
pub const WEBHOOK_PARAM: &str = "/slack/webhook/url/alarm-access-keys-rotate";
/// The shared endpoint's id (fixed, so tests can look it up).
pub const EP_ID: &str = "5e1a0c3b-7d2f-4c8e-9b61-2f0d9a4e7c15";
pub const EP_NAME: &str = "aws-prod";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deploy-from-azure-devops";
pub const EXTERNAL_ID: &str = "ext-7f3a9c21";
pub const SESSION_NAME: &str = "azure-pipelines-deploy";

/// The longest a run of the binary may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

const CONFIG: &str = r#"# written by the binary tests
[ado]
organization = "ORG_URL"
pat = "ssm:PAT_PARAM"

[slack]
webhook = "ssm:WEBHOOK_PARAM"

[policy]
verify_interval = "50ms"
drain = "0s"

[[target]]
name = "TARGET"
iam_user = "USER"
secret = "SECRET"
endpoints = [ { project = "Platform", name = "EP_NAME" }, { project = "Web", name = "EP_NAME" } ]
"#;

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Output {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// stdout as the JSON document `--output json` prints.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of {:?} is not JSON ({e}):\n{}\nstderr (tail):\n{}",
                self.args,
                self.stdout,
                tail(&self.stderr)
            )
        })
    }

    /// For assertion messages: the command, the exit code, stdout and the end of stderr.
    pub fn show(&self) -> String {
        format!(
            "keyrotor {:?} exited {}\n--- stdout\n{}\n--- stderr (last lines)\n{}",
            self.args,
            self.code,
            self.stdout,
            tail(&self.stderr)
        )
    }
}

/// The last 40 lines of a (trace-level, long) log.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// IAM keys and the secret's versions, as moto holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsState {
    /// Key id → `Active` / `Inactive`.
    pub keys: BTreeMap<String, String>,
    /// Version id → its stages (sorted).
    pub versions: BTreeMap<String, Vec<String>>,
    /// Stage → the secret string it holds (read with an explicit `VersionStage`).
    pub stages: BTreeMap<String, String>,
}

impl AwsState {
    pub fn active_keys(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(_, s)| s.as_str() == "Active")
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The JSON a stage holds, if any.
    pub fn stage_json(&self, stage: &str) -> Option<Value> {
        self.stages
            .get(stage)
            .map(|s| serde_json::from_str(s).unwrap_or(Value::String(s.clone())))
    }

    /// The key id a stage holds, if it holds a key.
    pub fn stage_key(&self, stage: &str) -> Option<String> {
        self.stage_json(stage)?["AccessKeyId"]
            .as_str()
            .map(str::to_owned)
    }
}

/// Secrets and key ids seen so far: everything the leak checks look for.
#[derive(Debug, Default)]
pub struct Known {
    pub secrets: BTreeSet<String>,
    pub key_ids: BTreeSet<String>,
}

pub struct Env {
    pub moto: Moto,
    pub ado: AdoEmulator,
    pub slack: SlackSink,
    pub iam: aws_sdk_iam::Client,
    pub sm: aws_sdk_secretsmanager::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Removes `dir` when the env is dropped (also when a test fails).
    _cleanup: RemoveDir,
    /// The key the endpoint holds at the start, and its secret.
    pub initial_key: String,
    pub initial_secret: String,
    pub known: Mutex<Known>,
    /// Every run so far (rescanned after each run, with whatever secrets were learnt since).
    history: Mutex<Vec<Output>>,
}

/// The shared AWS service connection, with every non-credential parameter set.
pub fn shared_endpoint(key_id: &str, secret: &str) -> Value {
    let mut ep = aws_endpoint(EP_NAME, key_id, secret, &["Platform", "Web"]);
    ep["id"] = json!(EP_ID);
    ep["description"] = json!("Deploys from Azure Pipelines (rotated by keyrotor)");
    ep["data"] = json!({"region": "eu-west-1", "note": "kept as is"});
    let params = &mut ep["authorization"]["parameters"];
    params["assumeRoleArn"] = json!(ROLE_ARN);
    params["externalId"] = json!(EXTERNAL_ID);
    params["roleSessionName"] = json!(SESSION_NAME);
    ep
}

/// The pipeline permissions seeded for the endpoint.
pub fn permissions() -> Value {
    json!({
        "resource": {"type": "endpoint", "id": EP_ID},
        "pipelines": [
            {"id": 7, "authorized": true, "authorizedOn": "2025-03-01T10:00:00Z"},
            {"id": 12, "authorized": true, "authorizedOn": "2025-03-02T11:30:00Z"}
        ],
        "allPipelines": {"authorized": false}
    })
}

/// A fresh environment with the default endpoint.
pub async fn spawn_env() -> Env {
    spawn_env_with(|_| {}).await
}

/// A fresh environment; `edit` may change the endpoint before it is seeded.
pub async fn spawn_env_with(edit: impl FnOnce(&mut Value)) -> Env {
    spawn(edit, 0).await
}

/// A fresh environment with `extra` more targets after the first: `fleet-N`, each its own IAM
/// user (`fleet-user-N`) with one key, its secret and its own AWS service connection
/// (`aws-fleet-N` in Platform).
pub async fn spawn_fleet(extra: usize) -> Env {
    spawn(|_| {}, extra).await
}

async fn spawn(edit: impl FnOnce(&mut Value), extra: usize) -> Env {
    let moto = Moto::start().expect("moto must start (it is installed on first use)");
    let sdk = moto.sdk_config().await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
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

    let mut endpoint = shared_endpoint(&key_id, &key_secret);
    edit(&mut endpoint);
    let mut org = OrgSeed::new(ORG)
        .pat(PAT, Scope::Manage)
        .project("Platform")
        .project("Web")
        .endpoint(endpoint)
        .pipeline_permissions(EP_ID, permissions());
    let mut fleet_config = String::new();
    let mut fleet_known = Vec::new();
    for i in 0..extra {
        let (user, secret, ep_name) = (
            format!("fleet-user-{i}"),
            format!("/fleet/{i}/accesskey"),
            format!("aws-fleet-{i}"),
        );
        let (id, secret_key) = aws_seed::user_with_key_in_secret(&sdk, &user, &secret)
            .await
            .unwrap();
        org = org.endpoint(aws_endpoint(&ep_name, &id, &secret_key, &["Platform"]));
        fleet_config.push_str(&format!(
            "\n[[target]]\nname = \"fleet-{i}\"\niam_user = \"{user}\"\nsecret = \"{secret}\"\nendpoints = [ {{ project = \"Platform\", name = \"{ep_name}\" }} ]\n"
        ));
        fleet_known.push((id, secret_key));
    }
    let ado = AdoEmulator::start(Seed::new().org(org)).await.unwrap();

    let dir = std::env::temp_dir().join(format!("keyrotor-binary-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keyrotor.toml");
    let text = CONFIG
        .replace("ORG_URL", &ado.org_url(ORG))
        .replace("PAT_PARAM", PAT_PARAM)
        .replace("WEBHOOK_PARAM", WEBHOOK_PARAM)
        .replace("TARGET", TARGET)
        .replace("USER", USER)
        .replace("SECRET", SECRET)
        .replace("EP_NAME", EP_NAME)
        + &fleet_config;
    std::fs::write(&config, text).unwrap();

    let mut known = Known::default();
    known.secrets.extend([
        PAT.to_owned(),
        slack.webhook_url(),
        slack.webhook_secret().to_owned(),
        key_secret.clone(),
    ]);
    known.key_ids.insert(key_id.clone());
    for (id, secret) in fleet_known {
        known.key_ids.insert(id);
        known.secrets.insert(secret);
    }
    Env {
        moto,
        ado,
        slack,
        iam,
        sm,
        ssm,
        _cleanup: RemoveDir(dir.clone()),
        dir,
        config,
        initial_key: key_id,
        initial_secret: key_secret,
        known: Mutex::new(known),
        history: Mutex::new(Vec::new()),
    }
}

impl Env {
    /// Runs `keyrotor ARGS --config <the env's config>` (the config is added after the
    /// subcommand when there is one), then checks every output so far for leaks.
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut argv: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if matches!(args.first(), Some(&("rotate" | "plan" | "status"))) {
            argv.insert(1, "--config".into());
            argv.insert(2, self.config.to_str().unwrap().to_owned());
        }
        let output = self.run_binary(argv).await;
        // The leak scan means something only if the child really logged at trace level, the
        // HTTP stack included.
        assert!(
            output.stderr.contains(" TRACE ") && output.stderr.contains("hyper_util::"),
            "RUST_LOG=trace did not take effect: {}",
            output.show()
        );
        if std::env::var_os("KEYROTOR_BINARY_SHOW").is_some() {
            eprintln!(
                "keyrotor {:?} exited {}\n{}",
                output.args, output.code, output.stdout
            );
            for p in self.slack.posts() {
                eprintln!("slack post ({}): {}", p.status, p.body);
            }
        }
        if let Some(dir) = std::env::var_os("KEYROTOR_BINARY_LOGS") {
            let n = self.history.lock().unwrap().len();
            let file = PathBuf::from(dir).join(format!("{}-{n}.log", uuid::Uuid::new_v4()));
            std::fs::write(file, &output.stderr).unwrap();
        }
        self.learn().await;
        self.history.lock().unwrap().push(output.clone());
        self.assert_no_leaks();
        output
    }

    /// Runs the binary with exactly these arguments, moto's environment, `RUST_LOG=trace`, and
    /// nothing else from the test's environment.
    async fn run_binary(&self, argv: Vec<String>) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"));
        cmd.args(&argv)
            .env_clear()
            .envs(self.moto.env())
            .env("RUST_LOG", "trace")
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
        let child = cmd.spawn().expect("the keyrotor binary starts");
        let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("keyrotor {argv:?} did not finish within {RUN_TIMEOUT:?}"))
            .expect("waiting for keyrotor");
        Output {
            args: argv,
            code: out
                .status
                .code()
                .unwrap_or_else(|| panic!("keyrotor was ended by a signal: {:?}", out.status)),
            stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Learns every secret access key and key id that moto and the emulator hold now: every
    /// version of the secret, every IAM key, every endpoint's username and password.
    pub async fn learn(&self) {
        let mut secrets = Vec::new();
        let mut ids = Vec::new();
        for text in self.secret_versions().await {
            let text = text.as_str();
            match serde_json::from_str::<Value>(text) {
                Ok(j) => {
                    if let Some(s) = j["SecretAccessKey"].as_str() {
                        secrets.push(s.to_owned());
                    }
                    if let Some(i) = j["AccessKeyId"].as_str() {
                        ids.push(i.to_owned());
                    }
                }
                // Not JSON: a bare secret (the older design's); itself a secret.
                Err(_) if !text.is_empty() => secrets.push(text.to_owned()),
                Err(_) => {}
            }
        }
        let keys = self
            .iam
            .list_access_keys()
            .user_name(USER)
            .send()
            .await
            .unwrap();
        ids.extend(
            keys.access_key_metadata()
                .iter()
                .filter_map(|k| k.access_key_id().map(str::to_owned)),
        );
        for org in self.ado.state().organizations.values() {
            for ep in &org.endpoints {
                let p = &ep["authorization"]["parameters"];
                for field in ["password", "sessionToken"] {
                    if let Some(s) = p[field].as_str().filter(|s| !s.is_empty()) {
                        secrets.push(s.to_owned());
                    }
                }
                if let Some(u) = p["username"].as_str().filter(|s| !s.is_empty()) {
                    ids.push(u.to_owned());
                }
            }
        }
        let mut known = self.known.lock().unwrap();
        known.secrets.extend(secrets);
        known.key_ids.extend(ids);
    }

    /// The value of every version of the secret, labelled or not.
    pub async fn secret_versions(&self) -> Vec<String> {
        let versions = self
            .sm
            .list_secret_version_ids()
            .secret_id(SECRET)
            .include_deprecated(true)
            .send()
            .await
            .unwrap();
        let mut out = Vec::new();
        for v in versions.versions() {
            let got = self
                .sm
                .get_secret_value()
                .secret_id(SECRET)
                .version_id(v.version_id().unwrap())
                .send()
                .await
                .unwrap();
            out.push(got.secret_string().unwrap_or_default().to_owned());
        }
        out
    }

    /// Adds a secret the scans must look for (a PAT the test wrote, …).
    pub fn add_secret(&self, secret: &str) {
        self.known.lock().unwrap().secrets.insert(secret.to_owned());
    }

    /// Scans stdout and stderr of every run so far, and every Slack payload, for every known
    /// secret; and stdout and Slack for any full key id (logs: see [`leaks::check_logs`]).
    pub fn assert_no_leaks(&self) {
        let known = self.known.lock().unwrap();
        let history = self.history.lock().unwrap();
        let posts = self.slack.posts();
        leaks::check(&known, &history, &posts);
    }

    /// Puts another value into the PAT parameter.
    pub async fn set_pat_parameter(&self, value: &str) {
        self.add_secret(value);
        self.ssm
            .put_parameter()
            .name(PAT_PARAM)
            .value(value)
            .r#type(ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap();
    }

    /// IAM keys and the secret's versions and stages, as moto holds them now.
    pub async fn aws_state(&self) -> AwsState {
        let mut keys = BTreeMap::new();
        let listed = self
            .iam
            .list_access_keys()
            .user_name(USER)
            .send()
            .await
            .unwrap();
        for k in listed.access_key_metadata() {
            let status = match k.status() {
                Some(StatusType::Active) => "Active",
                Some(StatusType::Inactive) => "Inactive",
                other => panic!("unexpected key status {other:?}"),
            };
            keys.insert(k.access_key_id().unwrap().to_owned(), status.to_owned());
        }
        let mut versions = BTreeMap::new();
        let listed = self
            .sm
            .list_secret_version_ids()
            .secret_id(SECRET)
            .include_deprecated(true)
            .send()
            .await
            .unwrap();
        for v in listed.versions() {
            let mut stages: Vec<String> = v.version_stages().to_vec();
            stages.sort();
            versions.insert(v.version_id().unwrap().to_owned(), stages);
        }
        let mut stages = BTreeMap::new();
        for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
            if !versions.values().any(|s| s.iter().any(|l| l == stage)) {
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
            stages.insert(
                stage.to_owned(),
                got.secret_string().unwrap_or_default().to_owned(),
            );
        }
        AwsState {
            keys,
            versions,
            stages,
        }
    }

    /// Everything the emulator holds, passwords included.
    pub fn ado_state(&self) -> EmulatorState {
        self.ado.state()
    }

    /// The shared endpoint as stored (password included).
    pub fn endpoint(&self) -> Value {
        self.ado.endpoint(ORG, EP_ID).expect("the endpoint exists")
    }

    /// Requests that changed (or tried to change) something: anything but GET.
    pub fn write_requests(&self) -> Vec<String> {
        self.ado
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
            .collect()
    }

    /// The PUTs the emulator saw, as `(path, status)`.
    pub fn puts(&self) -> Vec<(String, u16)> {
        self.ado
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT")
            .map(|r| (r.path, r.status))
            .collect()
    }

    pub fn posts(&self) -> Vec<Post> {
        self.slack.posts()
    }

    /// Stops the emulator and the sink and waits until they no longer listen; moto stops when
    /// the env is dropped.
    pub async fn stop(self) {
        let Env {
            moto, ado, slack, ..
        } = self;
        ado.shutdown().await;
        slack.stop().await;
        drop(moto);
    }
}

/// Removes a temporary folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `AKIA…WXYZ`.
pub fn masked(id: &str) -> String {
    format!("{}…{}", &id[..4], &id[id.len() - 4..])
}

/// The endpoint without `username` and `password`: what an update in place must keep.
pub fn without_credentials(ep: &Value) -> Value {
    let mut v = ep.clone();
    if let Some(p) = v
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
    {
        p.remove("username");
        p.remove("password");
    }
    v
}

/// Every string in a JSON value, joined by newlines (what Slack shows, unescaped).
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
