//! The local stand-ins a benchmark runs against: moto (behind the testkit's AWS proxy, which
//! records every AWS request's service and operation), the Azure DevOps emulator (its request
//! log) and the Slack sink (its posts), seeded with N targets — each its own IAM user with one
//! key, its own secret and its own AWS service connection — plus the PAT and webhook SSM
//! parameters and a keyrotor config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_ssm::types::ParameterType;
use futures::StreamExt;
use keyrotor_testkit::ado::{AdoEmulator, OrgSeed, RateLimit, Scope, Seed, aws_endpoint};
use keyrotor_testkit::aws_proxy::AwsProxy;
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::moto::Moto;
use keyrotor_testkit::slack::SlackSink;
use serde_json::{Value, json};

use crate::measure::{self, Usage};

pub const ORG: &str = "contoso";
pub const PROJECT: &str = "Platform";
pub const PAT: &str = "kq7xbenchmarkpat0123456789abcdefghijklmnopqrstuvwxyz";
pub const PAT_PARAM: &str = "/azuredevops/service/connection/pat";
pub const WEBHOOK_PARAM: &str = "/slack/webhook/url/alarm-access-keys-rotate";
pub const CONFIG_PARAM: &str = "/keyrotor/config";

/// One seeded target.
#[derive(Debug, Clone)]
pub struct TargetSeed {
    pub name: String,
    pub user: String,
    pub secret: String,
    pub endpoint: String,
    /// The project its connection is in.
    pub project: String,
}

/// How a world is set up.
#[derive(Debug, Clone)]
pub struct Options {
    pub targets: usize,
    /// Projects the targets are spread over, round robin (1: all in `PROJECT`).
    pub projects: usize,
    /// `policy.concurrency` in the config.
    pub concurrency: usize,
}

pub struct World {
    pub moto: Arc<Moto>,
    pub proxy: AwsProxy,
    pub slack: SlackSink,
    pub ado: AdoEmulator,
    pub targets: Vec<TargetSeed>,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// How long seeding took.
    pub seed_time: Duration,
}

/// What one run did to the stand-ins: requests per AWS service and operation, ADO requests,
/// Slack posts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calls {
    /// `service` → operation → count.
    pub aws: BTreeMap<String, BTreeMap<String, usize>>,
    /// `METHOD kind` → count (kind: `endpoint`, `endpoints?query`, …).
    pub ado: BTreeMap<String, usize>,
    /// ADO answers by status.
    pub ado_status: BTreeMap<u16, usize>,
    /// ADO answers delayed by the rate limit (`X-RateLimit-Delay`).
    pub ado_delayed: usize,
    /// Gaps of a second or more between one ADO request's arrival and the next one's: the
    /// client holding back for the rate limit (seconds, in order).
    pub ado_pauses: Vec<f64>,
    pub slack: usize,
}

impl Calls {
    pub fn aws_total(&self, service: &str) -> usize {
        self.aws.get(service).map_or(0, |m| m.values().sum())
    }
    pub fn ado_total(&self) -> usize {
        self.ado.values().sum()
    }
}

/// Marks in the logs, to take differences.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    aws: usize,
    ado: usize,
    slack: usize,
}

/// Project `p` of a world: `PROJECT`, then `PROJECT-2`, `PROJECT-3`, ….
pub fn project_name(p: usize) -> String {
    if p == 0 {
        PROJECT.to_owned()
    } else {
        format!("{PROJECT}-{}", p + 1)
    }
}

pub fn target_name(i: usize) -> String {
    format!("bench-{i:04}")
}

impl World {
    /// Resets `moto` (shared by every world of a benchmark run: it takes seconds to start)
    /// and seeds it, a fresh proxy, sink and emulator.
    pub async fn start(opts: &Options, moto: &Arc<Moto>) -> Result<Self> {
        let t0 = Instant::now();
        moto.reset().await.context("resetting moto")?;
        let moto = moto.clone();
        let proxy = AwsProxy::start(&moto.endpoint).await?;
        let slack = SlackSink::start().await?;
        let sdk = moto.sdk_config().await;
        let ssm = aws_sdk_ssm::Client::new(&sdk);

        // Users, keys and secrets, 16 at a time (moto serves a thread per request).
        let seeded: Vec<Result<(TargetSeed, Value)>> = futures::stream::iter(0..opts.targets)
            .map(|i| {
                let sdk = sdk.clone();
                let project = project_name(i % opts.projects.max(1));
                async move {
                    let name = target_name(i);
                    let t = TargetSeed {
                        user: format!("{name}-user"),
                        secret: format!("/bench/{name}/accesskey"),
                        endpoint: format!("aws-{name}"),
                        project,
                        name,
                    };
                    let (id, secret) =
                        aws_seed::user_with_key_in_secret(&sdk, &t.user, &t.secret).await?;
                    let mut ep = aws_endpoint(&t.endpoint, &id, &secret, &[t.project.as_str()]);
                    ep["id"] = json!(uuid::Uuid::new_v4().to_string());
                    ep["description"] = json!("Deploys from Azure Pipelines");
                    ep["data"] = json!({"region": "eu-west-1"});
                    Ok((t, ep))
                }
            })
            .buffered(16)
            .collect()
            .await;
        let mut org = OrgSeed::new(ORG).pat(PAT, Scope::Manage);
        for p in 0..opts.projects.max(1) {
            org = org.project(&project_name(p));
        }
        let mut targets = Vec::with_capacity(opts.targets);
        for r in seeded {
            let (t, ep) = r?;
            let id = ep["id"].as_str().unwrap_or_default().to_owned();
            org = org.endpoint(ep).pipeline_permissions(
                &id,
                json!({"resource": {"type": "endpoint", "id": id},
                       "pipelines": [{"id": 7, "authorized": true}],
                       "allPipelines": {"authorized": false}}),
            );
            targets.push(t);
        }
        let ado = AdoEmulator::start(Seed::new().org(org)).await?;

        let dir = std::env::temp_dir().join(format!("keyrotor-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let mut text = format!(
            r#"# written by keyrotor-bench
[ado]
organization = "{org}"
pat = "ssm:{PAT_PARAM}"

[slack]
webhook = "ssm:{WEBHOOK_PARAM}"

[policy]
verify_interval = "1ms"
verify_consecutive = 1
drain = "0s"
delete_old_key_after = "0s"
concurrency = {concurrency}
"#,
            org = ado.org_url(ORG),
            concurrency = opts.concurrency
        );
        for t in &targets {
            text.push_str(&format!(
                "\n[[target]]\nname = \"{}\"\niam_user = \"{}\"\nsecret = \"{}\"\nendpoints = [ {{ project = \"{}\", name = \"{}\" }} ]\n",
                t.name, t.user, t.secret, t.project, t.endpoint
            ));
        }
        let config = dir.join("keyrotor.toml");
        std::fs::write(&config, &text)?;
        for (name, value, kind) in [
            (PAT_PARAM, PAT.to_owned(), ParameterType::SecureString),
            (
                WEBHOOK_PARAM,
                slack.webhook_url(),
                ParameterType::SecureString,
            ),
            (CONFIG_PARAM, text.clone(), ParameterType::String),
        ] {
            // The config parameter is for the Lambda benchmark (one target); SSM's standard tier
            // holds 4 KB, so a fleet's config stays a file only.
            if name == CONFIG_PARAM && value.len() > 4096 {
                continue;
            }
            ssm.put_parameter()
                .name(name)
                .value(value)
                .r#type(kind)
                .send()
                .await?;
        }
        Ok(Self {
            moto,
            proxy,
            slack,
            ado,
            targets,
            dir,
            config,
            seed_time: t0.elapsed(),
        })
    }

    /// The environment a child needs: AWS through the proxy, dummy credentials, nothing else.
    pub fn child_env(&self, cmd: &mut Command) {
        cmd.env_clear();
        for (k, v) in self.moto.env() {
            cmd.env(k, v);
        }
        // boto3 reads AWS_DEFAULT_REGION (the SDK for Rust reads AWS_REGION).
        cmd.env("AWS_ENDPOINT_URL", self.proxy.endpoint())
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("HOME", &self.dir)
            .env("AWS_CONFIG_FILE", self.dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.join("no-aws-credentials"),
            )
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(&self.dir)
            .stdin(Stdio::null());
    }

    pub fn mark(&self) -> Mark {
        Mark {
            aws: self.proxy.seen().len(),
            ado: self.ado.requests().len(),
            slack: self.slack.posts().len(),
        }
    }

    /// The calls since `m`.
    pub fn calls_since(&self, m: Mark) -> Calls {
        let mut c = Calls::default();
        for s in self.proxy.seen().into_iter().skip(m.aws) {
            let service = s.service.unwrap_or_else(|| "?".into());
            *c.aws.entry(service).or_default().entry(s.op).or_default() += 1;
        }
        let mut previous: Option<u64> = None;
        for r in self.ado.requests().into_iter().skip(m.ado) {
            *c.ado
                .entry(ado_kind(&r.method, &r.path, r.query.as_deref()))
                .or_default() += 1;
            *c.ado_status.entry(r.status).or_default() += 1;
            c.ado_delayed += usize::from(r.delayed);
            if let Some(p) = previous {
                let gap = r.received_us.saturating_sub(p) as f64 / 1e6;
                if gap >= 1.0 {
                    c.ado_pauses.push(gap);
                }
            }
            previous = Some(r.received_us);
        }
        c.slack = self.slack.posts().len() - m.slack;
        c
    }

    /// Turns the emulator's rate limit on.
    pub fn rate_limit(&self, rl: RateLimit) {
        self.ado.set_rate_limit(Some(rl));
    }

    /// `keyrotor rotate --config … --force --output json`, measured. Returns the usage and the
    /// JSON document it printed (`Value::Null` if none).
    pub async fn rotate(&self, keyrotor: &std::path::Path, tag: &str) -> Result<(Usage, Value)> {
        let out = self.dir.join(format!("{tag}.stdout.json"));
        let err = self.dir.join(format!("{tag}.stderr.log"));
        let mut cmd = Command::new(keyrotor);
        cmd.args(["rotate", "--config"])
            .arg(&self.config)
            .args(["--force", "--output", "json"]);
        self.child_env(&mut cmd);
        let usage = measure::run(cmd, &out, &err).await?;
        let doc = std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        if doc.is_null() {
            let log = std::fs::read_to_string(&err).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "keyrotor exited {} without a JSON document; stderr (last lines, newest first):\n{}",
                usage.code,
                tail.join("\n")
            );
        }
        Ok((usage, doc))
    }

    /// Removes the temporary folder; moto, the proxy, the emulator and the sink stop on drop.
    pub async fn stop(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.ado.shutdown().await;
        self.slack.stop().await;
    }
}

/// `GET endpoint`, `PUT endpoint`, `GET endpoints?names`, … — the ADO request without ids.
pub fn ado_kind(method: &str, path: &str, query: Option<&str>) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let tail = match segs.as_slice() {
        [_, "_apis", "serviceendpoint", "endpoints"] => "endpoints (org)".to_owned(),
        [_, "_apis", "serviceendpoint", "endpoints", _] => "endpoints/{id} (org)".to_owned(),
        [_, _, "_apis", "serviceendpoint", "endpoints"] => {
            let names = query.is_some_and(|q| q.contains("endpointNames="));
            if names {
                "endpoints?endpointNames (project)".to_owned()
            } else {
                "endpoints (project)".to_owned()
            }
        }
        [_, _, "_apis", "serviceendpoint", "endpoints", _] => "endpoints/{id} (project)".to_owned(),
        [_, "_apis", "projects"] => "projects".to_owned(),
        _ => path.to_owned(),
    };
    format!("{method} {tail}")
}

/// Outcomes in a `--output json` document: outcome → count.
pub fn outcomes(doc: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in doc["targets"].as_array().into_iter().flatten() {
        let o = t["outcome"].as_str().unwrap_or("?").to_owned();
        *m.entry(o).or_default() += 1;
    }
    m
}

/// How targets failed: `step: error` → count.
pub fn failures(doc: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in doc["targets"].as_array().into_iter().flatten() {
        if t["outcome"].as_str() == Some("rotated") {
            continue;
        }
        let step = t["failed_step"].as_str().unwrap_or("-");
        let err = t["error"]
            .as_str()
            .or(t["reason"].as_str())
            .unwrap_or("-")
            .to_owned();
        *m.entry(format!("{step}: {err}")).or_default() += 1;
    }
    m
}
