//! One environment for the end-to-end tests of the real `keyrotor` binary: [`TestEnv`].
//!
//! (One file on purpose: it is the one harness — start, seed, config, run, observe, scan for
//! leaks — that issue #11 asked for instead of five; its parts share the environment's state.)
//!
//! [`Setup`] starts, on loopback ports:
//!
//! - moto (its own, or a shared one it resets), behind the fault-injecting [`AwsProxy`] in
//!   **strict mode** by default ([`STRICT_NEW_KEY_DELAY`]: STS refuses a new key for a while,
//!   so verify must really wait and retry; Inactive and deleted keys are refused; secret
//!   versions are immutable; a label moves only with `RemoveFromVersionId`);
//! - the Azure DevOps emulator, seeded with one organization ([`ORG`]) whose AWS service
//!   connection holds the IAM user's key ([`Connections`]: one connection shared into two
//!   projects, or one per project), pipeline permissions, and optionally more targets (a fleet);
//! - the Slack sink (unless [`Setup::slack`] turns it off).
//!
//! It seeds AWS through [`aws_seed`] (the user with its key, the secret as [`SecretStart`]
//! says, the PAT and the webhook URL as SecureString parameters) and writes `keyrotor.toml` from
//! one template (targets, `[policy]` lines, `[slack]` or not).
//!
//! [`TestEnv::cmd`] runs the binary ([`Run`]: arguments, environment, stdin, a kill after a
//! delay or after a log line, `RUST_LOG=trace`); every run is checked afterwards: trace logging
//! took effect, and no secret value involved (every key secret ever stored or held, the PAT,
//! base64 of the Basic header, the webhook URL and its secret part) is in any stdout, stderr,
//! JSON output or Slack post of the environment so far, nor a full key id outside the AWS SDK's
//! own log lines (see `leaks`).
//!
//! The test's own seeding and reads go to moto directly, never through the proxy, so the
//! proxy's counts are the binary's requests only. [`TestEnv::aws_state`], [`TestEnv::world`]
//! and [`TestEnv::connections`] read the world back from outside.
//!
//! For debugging: `KEYROTOR_BINARY_SHOW=1` prints each run's stdout and the Slack posts,
//! `KEYROTOR_BINARY_LOGS=DIR` keeps each run's stderr in DIR, `KEYROTOR_SHOW_SDK_ID_LINES=1`
//! prints the AWS SDK log lines that hold a full key id (allowed). Run with `--nocapture`.
//!
//! (One file for the API a test sees — setup, run, observe; the world read back and the leak scan
//! are in `env/`.)

mod leaks;
mod observe;
mod run;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

pub use leaks::Known;
pub use observe::{AwsState, Snapshot};
pub use run::{Output, Run, SIGINT, SIGTERM};

use crate::ado::{AdoEmulator, EmulatorState, OrgSeed, Scope, Seed, aws_endpoint};
use crate::aws_proxy::{AwsProxy, StrictOptions};
use crate::aws_seed;
use crate::moto::Moto;
use crate::slack::{Post, SlackSink};

// The emulated organization, the first target's IAM user and secret, and the SSM parameters that
// hold the PAT and the Slack webhook URL: the names every stand-in world starts from.
pub use keyrotor_standins::names::{ORG, PAT_PARAM, SECRET, USER, WEBHOOK_PARAM};
/// The first target's name.
pub const TARGET: &str = "platform-prod";
/// The PAT (shaped like a real one: 52 characters), seeded with the manage scope.
pub const PAT: &str = "kq7xtestenvpat000123456789abcdefghijklmnopqrstuvwxyz";
/// A PAT the emulator does not know (shaped like a real one), for [`TestEnv::set_pat_parameter`].
pub const WRONG_PAT: &str = "wrongpat0123456789abcdefghijklmnopqrstuvwxyzabcdefg";
/// The shared connection's id (fixed, so tests can look it up).
pub const EP_ID: &str = "5e1a0c3b-7d2f-4c8e-9b61-2f0d9a4e7c15";
/// The connection's name (in both projects with [`Connections::Shared`], in Platform with
/// [`Connections::Separate`]).
pub const EP_NAME: &str = "aws-prod";
/// The Web project's own connection with [`Connections::Separate`].
pub const WEB_EP_NAME: &str = "aws-web";
/// The shared connection's `assumeRoleArn`.
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/deploy-from-azure-devops";
/// The shared connection's `externalId`.
pub const EXTERNAL_ID: &str = "ext-7f3a9c21";
/// The shared connection's `roleSessionName`.
pub const SESSION_NAME: &str = "azure-pipelines-deploy";
/// How long STS refuses a new key in the default strict mode.
pub const STRICT_NEW_KEY_DELAY: Duration = Duration::from_millis(400);

/// The `[policy]` lines every config starts with (a line of the same key given to
/// [`Setup::policy`] replaces one): quick enough for tests, long enough for the strict mode's
/// new-key delay.
/// No drain (`policy.drain`, 60 m by default) and no grace (`policy.delete_old_key_after`, 3 d
/// by default): the suites check that the old key is retired and deleted in the run that
/// rotated; the drain and the grace have tests of their own.
const DEFAULT_POLICY: [&str; 4] = [
    "verify_interval = \"50ms\"",
    "verify_timeout = \"20s\"",
    "drain = \"0s\"",
    "delete_old_key_after = \"0s\"",
];

/// How the secret starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretStart {
    /// keyrotor's JSON for the initial key.
    #[default]
    Json,
    /// The older design's bare secret access key.
    Legacy,
    /// No secret yet.
    Absent,
}

/// The first target's service connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connections {
    /// One connection ([`EP_NAME`], id [`EP_ID`]) shared into Platform and Web, with every
    /// non-credential parameter set and two pipelines authorized.
    #[default]
    Shared,
    /// Two connections: [`EP_NAME`] in Platform and [`WEB_EP_NAME`] in Web, both holding the key.
    Separate,
}

/// One `[[target]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `name`.
    pub name: String,
    /// `iam_user`.
    pub user: String,
    /// `secret`.
    pub secret: String,
    /// `endpoints`: `(project, connection name)`.
    pub endpoints: Vec<(String, String)>,
}

type EditConnections = Box<dyn FnOnce(&mut Vec<Value>) + Send>;

/// How to build a [`TestEnv`]; [`Setup::start`] starts it.
pub struct Setup {
    binary: PathBuf,
    moto: Option<Arc<Moto>>,
    proxy: bool,
    strict: Option<StrictOptions>,
    slack: bool,
    secret: SecretStart,
    connections: Connections,
    edit: Option<EditConnections>,
    fleet: usize,
    policy: Vec<String>,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("binary", &self.binary)
            .field("proxy", &self.proxy)
            .field("strict", &self.strict)
            .field("slack", &self.slack)
            .field("secret", &self.secret)
            .field("connections", &self.connections)
            .field("fleet", &self.fleet)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// The defaults, for this `keyrotor` binary (`env!("CARGO_BIN_EXE_keyrotor")`): a moto of
    /// its own behind the proxy in strict mode, Slack on, the secret as keyrotor's JSON, one
    /// shared connection, no fleet.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            moto: None,
            proxy: true,
            strict: Some(StrictOptions::with_new_key_delay(STRICT_NEW_KEY_DELAY)),
            slack: true,
            secret: SecretStart::Json,
            connections: Connections::Shared,
            edit: None,
            fleet: 0,
            policy: DEFAULT_POLICY.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    /// Uses this moto (reset first) instead of starting one.
    pub fn moto(mut self, moto: Arc<Moto>) -> Self {
        self.moto = Some(moto);
        self
    }

    /// Strict mode with these options (`None`: off; the proxy still runs).
    pub fn strict(mut self, options: Option<StrictOptions>) -> Self {
        self.strict = options;
        self
    }

    /// No proxy at all: the binary talks to moto directly (and strict mode is off).
    pub fn direct(mut self) -> Self {
        self.proxy = false;
        self.strict = None;
        self
    }

    /// Slack on (the sink, the webhook parameter, `[slack]` in the config) or off.
    pub fn slack(mut self, on: bool) -> Self {
        self.slack = on;
        self
    }

    /// How the first target's secret starts.
    pub fn secret(mut self, start: SecretStart) -> Self {
        self.secret = start;
        self
    }

    /// The first target's connections.
    pub fn connections(mut self, layout: Connections) -> Self {
        self.connections = layout;
        self
    }

    /// Edits the organization's connections before they are seeded (the first target's come
    /// first; more may be pushed, the config does not name them).
    pub fn edit_connections(mut self, edit: impl FnOnce(&mut Vec<Value>) + Send + 'static) -> Self {
        self.edit = Some(Box::new(edit));
        self
    }

    /// `extra` more targets after the first: `fleet-N`, each its own IAM user (`fleet-user-N`)
    /// with one key, its secret and its own connection (`aws-fleet-N` in Platform).
    pub fn fleet(mut self, extra: usize) -> Self {
        self.fleet = extra;
        self
    }

    /// A `[policy]` line (`intent_lease = "2s"`); it replaces a line of the same key.
    pub fn policy(mut self, line: &str) -> Self {
        let key = |l: &str| l.split('=').next().unwrap_or_default().trim().to_owned();
        match self.policy.iter_mut().find(|l| key(l) == key(line)) {
            Some(l) => *l = line.to_owned(),
            None => self.policy.push(line.to_owned()),
        }
        self
    }

    /// Starts everything, seeds it, writes the config.
    pub async fn start(self) -> TestEnv {
        let moto = match self.moto {
            Some(m) => {
                m.reset().await.expect("moto resets");
                m
            }
            None => {
                Arc::new(Moto::start().expect("moto must start (it is installed on first use)"))
            }
        };
        let sdk = moto.sdk_config().await;
        let iam = aws_sdk_iam::Client::new(&sdk);
        let sm = aws_sdk_secretsmanager::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let (key_id, key_secret) = match self.secret {
            SecretStart::Json => aws_seed::user_with_key_in_secret(&sdk, USER, SECRET).await,
            SecretStart::Legacy => match aws_seed::user_with_key(&sdk, USER).await {
                Ok(key) => aws_seed::secret(&sdk, SECRET, &key.1).await.map(|()| key),
                Err(e) => Err(e),
            },
            SecretStart::Absent => aws_seed::user_with_key(&sdk, USER).await,
        }
        .expect("seeding the IAM user and its secret");
        let slack = if self.slack {
            Some(SlackSink::start().await.expect("the Slack sink starts"))
        } else {
            None
        };
        let mut params = vec![(PAT_PARAM, PAT.to_owned())];
        if let Some(s) = &slack {
            params.push((WEBHOOK_PARAM, s.webhook_url()));
        }
        aws_seed::secure_parameters(&sdk, &params)
            .await
            .expect("seeding the parameters");

        let mut known = Known::default();
        known.secrets.extend([PAT.to_owned(), key_secret.clone()]);
        if let Some(s) = &slack {
            known
                .secrets
                .extend([s.webhook_url(), s.webhook_secret().to_owned()]);
        }
        known.key_ids.insert(key_id.clone());

        let (mut connections, endpoints) = match self.connections {
            Connections::Shared => (
                vec![shared_endpoint(&key_id, &key_secret)],
                vec![("Platform", EP_NAME), ("Web", EP_NAME)],
            ),
            Connections::Separate => (
                vec![
                    aws_endpoint(EP_NAME, &key_id, &key_secret, &["Platform"]),
                    aws_endpoint(WEB_EP_NAME, &key_id, &key_secret, &["Web"]),
                ],
                vec![("Platform", EP_NAME), ("Web", WEB_EP_NAME)],
            ),
        };
        if let Some(edit) = self.edit {
            edit(&mut connections);
        }
        let mut targets = vec![target(TARGET, USER, SECRET, &endpoints)];
        for i in 0..self.fleet {
            let (user, secret, ep) = (
                format!("fleet-user-{i}"),
                format!("/fleet/{i}/accesskey"),
                format!("aws-fleet-{i}"),
            );
            let (id, secret_key) = aws_seed::user_with_key_in_secret(&sdk, &user, &secret)
                .await
                .expect("seeding a fleet target");
            connections.push(aws_endpoint(&ep, &id, &secret_key, &["Platform"]));
            targets.push(target(
                &format!("fleet-{i}"),
                &user,
                &secret,
                &[("Platform", &ep)],
            ));
            known.key_ids.insert(id);
            known.secrets.insert(secret_key);
        }
        let mut org = OrgSeed::new(ORG)
            .pat(PAT, Scope::Manage)
            .project("Platform")
            .project("Web");
        for c in connections {
            org = org.endpoint(c);
        }
        if self.connections == Connections::Shared {
            org = org.pipeline_permissions(EP_ID, permissions());
        }
        let ado = AdoEmulator::start(Seed::new().org(org.clone()))
            .await
            .expect("the Azure DevOps emulator starts");
        let proxy = if self.proxy {
            let p = AwsProxy::start(&moto.endpoint)
                .await
                .expect("the AWS proxy starts");
            p.set_strict(self.strict);
            Some(p)
        } else {
            None
        };

        let dir = std::env::temp_dir().join(format!("keyrotor-env-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("creating the test's folder");
        let config = dir.join("keyrotor.toml");
        let text = config_text(&ado.org_url(ORG), self.slack, &self.policy, &targets);
        std::fs::write(&config, text).expect("writing the config");

        TestEnv {
            moto,
            proxy,
            ado,
            slack,
            sdk,
            iam,
            sm,
            ssm,
            _cleanup: RemoveDir(dir.clone()),
            dir,
            config,
            targets,
            initial_key: key_id,
            initial_secret: key_secret,
            binary: self.binary,
            org_seed: org,
            known: Mutex::new(known),
            history: Mutex::new(Vec::new()),
        }
    }
}

fn target(name: &str, user: &str, secret: &str, endpoints: &[(&str, &str)]) -> Target {
    Target {
        name: name.to_owned(),
        user: user.to_owned(),
        secret: secret.to_owned(),
        endpoints: endpoints
            .iter()
            .map(|(p, n)| ((*p).to_owned(), (*n).to_owned()))
            .collect(),
    }
}

/// The config: `[ado]` (the PAT on line 4), `[slack]` when on, `[policy]`, the targets.
fn config_text(org_url: &str, slack: bool, policy: &[String], targets: &[Target]) -> String {
    let mut text = format!(
        "# written by keyrotor_testkit::env\n[ado]\norganization = \"{org_url}\"\n\
         pat = \"ssm:{PAT_PARAM}\"\n"
    );
    if slack {
        text.push_str(&format!("\n[slack]\nwebhook = \"ssm:{WEBHOOK_PARAM}\"\n"));
    }
    text.push_str("\n[policy]\n");
    for line in policy {
        text.push_str(line);
        text.push('\n');
    }
    for t in targets {
        let endpoints: Vec<String> = t
            .endpoints
            .iter()
            .map(|(p, n)| format!("{{ project = \"{p}\", name = \"{n}\" }}"))
            .collect();
        text.push_str(&format!(
            "\n[[target]]\nname = \"{}\"\niam_user = \"{}\"\nsecret = \"{}\"\nendpoints = [ {} ]\n",
            t.name,
            t.user,
            t.secret,
            endpoints.join(", ")
        ));
    }
    text
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

/// Switches a connection (one [`Setup::edit_connections`] edits, or one of an [`OrgSeed`]'s) to
/// OIDC: `useOIDC`, username and password cleared, assuming [`ROLE_ARN`].
pub fn on_oidc(ep: &mut Value) {
    let p = &mut ep["authorization"]["parameters"];
    p["useOIDC"] = json!("true");
    p["username"] = json!("");
    p["password"] = json!("");
    p["assumeRoleArn"] = json!(ROLE_ARN);
}

/// Gives a child `dir` as its `HOME`, with no AWS config or credentials file there: nothing of
/// the machine's own AWS setup reaches the binary.
pub fn isolated_home<'c>(
    cmd: &'c mut tokio::process::Command,
    dir: &std::path::Path,
) -> &'c mut tokio::process::Command {
    cmd.env("HOME", dir)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.join("no-aws-credentials"),
        )
}

/// The pipeline permissions seeded for the shared connection.
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

/// moto, the proxy, the emulator and the sink, seeded; the config; every run so far.
pub struct TestEnv {
    /// moto (shared when [`Setup::moto`] gave one).
    pub moto: Arc<Moto>,
    proxy: Option<AwsProxy>,
    /// The Azure DevOps emulator.
    pub ado: AdoEmulator,
    slack: Option<SlackSink>,
    /// An SDK config that reaches moto directly.
    pub sdk: aws_config::SdkConfig,
    /// IAM, straight at moto.
    pub iam: aws_sdk_iam::Client,
    /// Secrets Manager, straight at moto.
    pub sm: aws_sdk_secretsmanager::Client,
    /// SSM, straight at moto.
    pub ssm: aws_sdk_ssm::Client,
    /// The test's folder (the binary's `HOME` and working directory).
    pub dir: PathBuf,
    /// `keyrotor.toml` in it.
    pub config: PathBuf,
    /// The config's targets, the first one [`TARGET`].
    pub targets: Vec<Target>,
    /// The key the first target's connections hold at the start.
    pub initial_key: String,
    /// Its secret.
    pub initial_secret: String,
    binary: PathBuf,
    org_seed: OrgSeed,
    known: Mutex<Known>,
    /// Every run so far (rescanned after each run, with whatever secrets were learnt since).
    history: Mutex<Vec<Output>>,
    /// Removes `dir` when the env is dropped (also when a test fails).
    _cleanup: RemoveDir,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("moto", &self.moto.endpoint)
            .field("proxy", &self.proxy)
            .field("ado", &self.ado.base_url())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// The proxy in front of moto (panics with [`Setup::direct`]).
    pub fn proxy(&self) -> &AwsProxy {
        self.proxy
            .as_ref()
            .expect("this env has no proxy (Setup::direct)")
    }

    /// The Slack sink (panics with `Setup::slack(false)`).
    pub fn slack(&self) -> &SlackSink {
        self.slack
            .as_ref()
            .expect("this env has no Slack sink (Setup::slack(false))")
    }

    /// Every Slack post so far (none without a sink).
    pub fn posts(&self) -> Vec<Post> {
        self.slack
            .as_ref()
            .map(SlackSink::posts)
            .unwrap_or_default()
    }

    /// The emulated organization's URL.
    pub fn org_url(&self) -> String {
        self.ado.org_url(ORG)
    }

    /// The organization as seeded at the start, with the PAT at `scope` (to [`Self::reseed`]
    /// with changes).
    pub fn org_seed(&self, scope: Scope) -> OrgSeed {
        let mut org = self.org_seed.clone();
        for p in &mut org.pats {
            p.scope = scope;
        }
        org
    }

    /// Replaces the emulator with one started from `org`, and points the config at it.
    pub async fn reseed(&mut self, org: OrgSeed) {
        let ado = AdoEmulator::start(Seed::new().org(org))
            .await
            .expect("the emulator starts with the new seed");
        let (old_url, new_url) = (self.org_url(), ado.org_url(ORG));
        let old = std::mem::replace(&mut self.ado, ado);
        old.shutdown().await;
        self.replace_in_config(&old_url, &new_url);
        self.learn().await;
    }

    /// Adds a connection `name` in Platform holding `key` (reseeding the emulator with the
    /// manage scope), and lists it first in the target's endpoints.
    pub async fn add_listed_connection(&mut self, name: &str, key: (&str, &str)) {
        let added = aws_endpoint(name, key.0, key.1, &["Platform"]);
        let org = self.org_seed(Scope::Manage).endpoint(added);
        self.reseed(org).await;
        self.replace_in_config(
            "endpoints = [ ",
            &format!("endpoints = [ {{ project = \"Platform\", name = \"{name}\" }}, "),
        );
    }

    /// Rewrites the config file; the edit must change it.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("reading the config");
        let edited = edit(text.clone());
        assert_ne!(edited, text, "the config edit changed nothing");
        std::fs::write(&self.config, edited).expect("writing the config");
    }

    /// Replaces `from` (which must occur exactly once) by `to` in the config.
    pub fn replace_in_config(&self, from: &str, to: &str) {
        self.edit_config(|text| {
            assert_eq!(
                text.matches(from).count(),
                1,
                "{from:?} occurs once in the config:\n{text}"
            );
            text.replace(from, to)
        });
    }

    /// The 1-based line of the config that contains `needle`, the first one after `after`
    /// lines.
    pub fn config_line_of(&self, needle: &str, after: usize) -> usize {
        let text = std::fs::read_to_string(&self.config).expect("reading the config");
        text.lines()
            .enumerate()
            .skip(after)
            .find(|(_, l)| l.contains(needle))
            .map(|(i, _)| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} is not in the config:\n{text}"))
    }

    /// Adds a secret the scans must look for (a PAT the test wrote, …).
    pub fn add_secret(&self, secret: &str) {
        self.lock_known().secrets.insert(secret.to_owned());
    }

    /// Whether the scans look for this secret.
    pub fn knows_secret(&self, secret: &str) -> bool {
        self.lock_known().secrets.contains(secret)
    }

    /// Puts another value into the PAT parameter (and scans for it).
    pub async fn set_pat_parameter(&self, value: &str) {
        self.add_secret(value);
        self.ssm
            .delete_parameter()
            .name(PAT_PARAM)
            .send()
            .await
            .expect("deleting the PAT parameter");
        aws_seed::secure_parameters(&self.sdk, &[(PAT_PARAM, value.to_owned())])
            .await
            .expect("putting the PAT parameter");
    }

    /// Creates another access key for the first target's user, straight at moto; the scans
    /// learn its secret and id. Returns `(id, secret)`.
    pub async fn add_key(&self) -> (String, String) {
        let created = self
            .iam
            .create_access_key()
            .user_name(USER)
            .send()
            .await
            .expect("creating a key");
        let k = created
            .access_key()
            .expect("CreateAccessKey answered a key");
        let (id, secret) = (
            k.access_key_id().to_owned(),
            k.secret_access_key().to_owned(),
        );
        let mut known = self.lock_known();
        known.secrets.insert(secret.clone());
        known.key_ids.insert(id.clone());
        (id, secret)
    }

    /// Everything the emulator holds, passwords included.
    pub fn ado_state(&self) -> EmulatorState {
        self.ado.state()
    }

    /// The shared connection as stored (password included).
    pub fn endpoint(&self) -> Value {
        self.ado
            .endpoint(ORG, EP_ID)
            .expect("the shared connection exists")
    }

    /// The id of the connection named `name` (its top-level name), as stored.
    pub fn connection_id(&self, name: &str) -> String {
        self.ado_state()
            .org(ORG)
            .and_then(|o| {
                o.endpoints
                    .iter()
                    .find(|e| e["name"] == name)
                    .and_then(|e| e["id"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no connection named {name}"))
    }

    /// What a person does in the web UI, through Azure DevOps' REST API: reads the connection
    /// `id` (in Platform), makes `edit`, and PUTs it back (confidential fields as read, `null`:
    /// kept). Panics unless the service stores it.
    pub async fn edit_as_a_person(&self, id: &str, edit: impl FnOnce(&mut Value)) {
        let org = self.org_url();
        let http = reqwest::Client::new();
        let mut ep: Value = http
            .get(format!(
                "{org}/Platform/_apis/serviceendpoint/endpoints/{id}?api-version=7.1"
            ))
            .basic_auth("", Some(PAT))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the person reads the connection")
            .json()
            .await
            .expect("a connection object");
        edit(&mut ep);
        http.put(format!(
            "{org}/_apis/serviceendpoint/endpoints/{id}?api-version=7.1"
        ))
        .basic_auth("", Some(PAT))
        .json(&ep)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the person's edit is stored");
    }

    /// Requests to Azure DevOps that changed (or tried to change) something: anything but GET,
    /// as `METHOD path -> status`.
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

    /// Stops the proxy, the emulator and the sink and waits until they no longer listen; moto
    /// stops when its last owner drops it.
    pub async fn stop(self) {
        let TestEnv {
            moto,
            proxy,
            ado,
            slack,
            ..
        } = self;
        if let Some(p) = proxy {
            p.stop().await;
        }
        ado.shutdown().await;
        if let Some(s) = slack {
            s.stop().await;
        }
        drop(moto);
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a temporary folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A key id as keyrotor shows it: `AKIA…WXYZ`.
pub fn masked(id: &str) -> String {
    format!("{}…{}", &id[..4], &id[id.len() - 4..])
}

/// The connection without `username` and `password`: what an update in place must keep.
pub fn without_credentials(ep: &Value) -> Value {
    without_parameters(ep, &["username", "password"])
}

/// The connection without these `authorization.parameters`.
pub fn without_parameters(ep: &Value, names: &[&str]) -> Value {
    let mut v = ep.clone();
    if let Some(p) = v
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
    {
        for name in names {
            p.remove(*name);
        }
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
