//! Least privilege, enforced. The three Lambda roles of `deploy/template.yaml` are created in
//! moto exactly as the template declares them (trust and inline policies rendered from the YAML,
//! with the template's parameter defaults), moto's IAM enforcement is switched on, and the real
//! `bootstrap` runs as three functions — rotator, pusher, notifier — each with nothing but its
//! role's assumed-role credentials in its environment, as Lambda gives them. Every step goes to
//! the function the state machine (`deploy/statemachine/rotate.asl.json`) sends it to.
//!
//! moto evaluates the policies itself; `Moto::start_authorizing_resources` only tells its
//! evaluator which ARN a request touches (moto 5.2.5 would otherwise check IAM-user, Secrets
//! Manager and SSM requests against `"*"` and could not tell one user or secret from another).
//!
//! Shown here: every step succeeds with only its own policy (a first rotation that creates the
//! secret, a second one, and a compensation), also when the run's lease is due for renewal at
//! `verify` and at `push` (a `PutSecretValue` in each step's own role); the rotator cannot
//! create, update, delete or list another user's keys, nor read or write another secret or
//! parameter; the pusher and the notifier cannot touch IAM at all, nor another secret, nor what
//! the other roles keep.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::types::StatusType;
use aws_sdk_ssm::types::ParameterType;
use keyrotor_testkit::ado::{AdoEmulator, Fault, Op, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_testkit::aws_seed;
use keyrotor_testkit::lambda_api::{LambdaApi, Outcome};
use keyrotor_testkit::moto::Moto;
use keyrotor_testkit::slack::SlackSink;
use serde_json::{Value as Json, json};
use serde_norway::Value as Yaml;

const TEMPLATE: &str = include_str!("../../../deploy/template.yaml");
const ASL: &str = include_str!("../../../deploy/statemachine/rotate.asl.json");
/// moto's account and the region the test uses.
const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";
const STACK: &str = "keyrotor";
const ORG: &str = "contoso";
const PAT: &str = "lp7xleastprivilegepat0123456789abcdefghijklmnopqrstu";
/// Someone else's: an IAM user, a secret and a parameter the roles must not reach.
const OTHER_USER: &str = "billing-batch";
const OTHER_SECRET: &str = "/billing/batch/iam/accesskey";
const OTHER_PARAM: &str = "/billing/database/password";
const OTHER_PARAM_VALUE: &str = "billing-db-password-do-not-leak";
const ROLES: [&str; 3] = ["RotatorRole", "PusherRole", "NotifierRole"];

// ---------------------------------------------------------------- the template, rendered

/// `deploy/template.yaml`, with CloudFormation's `!Sub`, `!Ref` and `!GetAtt` resolved from
/// its parameter defaults, moto's account and region, and the log groups' ARNs.
struct Template {
    doc: Yaml,
    vars: HashMap<String, String>,
}

impl Template {
    fn load() -> Self {
        Self::load_with(&[])
    }

    /// The template with these parameters given (the others at their defaults).
    fn load_with(overrides: &[(&str, &str)]) -> Self {
        let doc: Yaml = serde_norway::from_str(TEMPLATE).expect("deploy/template.yaml is YAML");
        let mut t = Template {
            doc,
            vars: HashMap::from([
                ("AWS::Partition".into(), "aws".into()),
                ("AWS::Region".into(), REGION.into()),
                ("AWS::AccountId".into(), ACCOUNT.into()),
                ("AWS::StackName".into(), STACK.into()),
            ]),
        };
        let params = t.doc["Parameters"]
            .as_mapping()
            .expect("Parameters")
            .clone();
        for (name, p) in &params {
            let default = match &p["Default"] {
                Yaml::String(s) => s.clone(),
                Yaml::Number(n) => n.to_string(),
                Yaml::Bool(b) => b.to_string(),
                other => panic!("parameter {name:?} has an unexpected default {other:?}"),
            };
            t.vars.insert(name.as_str().unwrap().to_owned(), default);
        }
        for (name, value) in overrides {
            assert!(
                t.vars.contains_key(*name),
                "the template has no parameter {name}"
            );
            t.vars.insert((*name).to_owned(), (*value).to_owned());
        }
        let resources = t.doc["Resources"].as_mapping().expect("Resources").clone();
        for (name, r) in &resources {
            if r["Type"].as_str() == Some("AWS::Logs::LogGroup") {
                let group = t.render(&r["Properties"]["LogGroupName"]);
                let group = group.as_str().unwrap();
                t.vars.insert(
                    format!("{}.Arn", name.as_str().unwrap()),
                    format!("arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}:*"),
                );
            }
        }
        t
    }

    fn param(&self, name: &str) -> &str {
        &self.vars[name]
    }

    fn lookup(&self, name: &str) -> String {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("the test cannot resolve ${{{name}}} in the template"))
            .clone()
    }

    fn sub(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').expect("an unterminated ${") + i;
            out.push_str(&self.lookup(&rest[i + 2..end]));
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// A template value as JSON, intrinsic functions resolved.
    fn render(&self, v: &Yaml) -> Json {
        match v {
            Yaml::Null => Json::Null,
            Yaml::Bool(b) => json!(b),
            Yaml::Number(n) => serde_json::to_value(n).unwrap(),
            Yaml::String(s) => json!(s),
            Yaml::Sequence(items) => Json::Array(items.iter().map(|i| self.render(i)).collect()),
            Yaml::Mapping(m) => Json::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), self.render(v)))
                    .collect(),
            ),
            Yaml::Tagged(t) if t.tag == "If" => {
                let [cond, yes, no] = t.value.as_sequence().map(Vec::as_slice).unwrap_or_default()
                else {
                    panic!("!If takes [condition, then, else]: {t:?}")
                };
                let cond = cond.as_str().expect("!If names a condition");
                self.render(if self.condition(cond) { yes } else { no })
            }
            Yaml::Tagged(t) if t.tag == "Sub" && t.value.is_sequence() => {
                // !Sub [text, {name: value}]: the names first, then the template's own.
                let args = t.value.as_sequence().unwrap();
                let mut vars = self.vars.clone();
                for (k, v) in args[1].as_mapping().expect("!Sub's variables") {
                    let v = self.render(v);
                    vars.insert(
                        k.as_str().unwrap().to_owned(),
                        v.as_str().unwrap().to_owned(),
                    );
                }
                let with = Template {
                    doc: Yaml::Null,
                    vars,
                };
                json!(with.sub(args[0].as_str().expect("!Sub's text")))
            }
            Yaml::Tagged(t) => {
                let tag = t.tag.to_string();
                let arg = t
                    .value
                    .as_str()
                    .unwrap_or_else(|| panic!("{tag} of a non-string"));
                match tag.trim_start_matches('!') {
                    "Sub" => json!(self.sub(arg)),
                    "Ref" | "GetAtt" => json!(self.lookup(arg)),
                    other => panic!("the test does not render !{other}"),
                }
            }
        }
    }

    /// A condition of the template's `Conditions`, evaluated (`!Not`, `!Equals`, `!Ref`).
    fn condition(&self, name: &str) -> bool {
        let c = &self.doc["Conditions"][name];
        assert!(!c.is_null(), "the template has no condition {name}");
        self.truth(c)
    }

    fn truth(&self, v: &Yaml) -> bool {
        let Yaml::Tagged(t) = v else {
            panic!("a condition must be an intrinsic: {v:?}")
        };
        let args = t.value.as_sequence();
        match t.tag.to_string().trim_start_matches('!') {
            "Not" => !self.truth(&args.unwrap()[0]),
            "Equals" => {
                let args = args.unwrap();
                self.render(&args[0]) == self.render(&args[1])
            }
            "Condition" => self.condition(t.value.as_str().unwrap()),
            other => panic!("the test does not evaluate !{other}"),
        }
    }

    fn resource(&self, name: &str) -> &Yaml {
        let r = &self.doc["Resources"][name];
        assert!(!r.is_null(), "the template has no resource {name}");
        r
    }

    /// `(trust policy, [(policy name, policy document)])` of a role, as declared.
    fn role(&self, name: &str) -> (Json, Vec<(String, Json)>) {
        let props = &self.resource(name)["Properties"];
        let trust = self.render(&props["AssumeRolePolicyDocument"]);
        let policies = props["Policies"]
            .as_sequence()
            .expect("inline Policies")
            .iter()
            .map(|p| {
                (
                    p["PolicyName"].as_str().unwrap().to_owned(),
                    self.render(&p["PolicyDocument"]),
                )
            })
            .collect();
        (trust, policies)
    }

    /// The resource a `!GetAtt X.Arn` or a `!Ref X.Version` (AutoPublishAlias) names.
    fn get_att_resource(v: &Yaml) -> String {
        let Yaml::Tagged(t) = v else {
            panic!("expected !GetAtt or !Ref, got {v:?}")
        };
        let arg = t.value.as_str().unwrap();
        arg.strip_suffix(".Arn")
            .or_else(|| arg.strip_suffix(".Version"))
            .expect("!GetAtt X.Arn or !Ref X.Version")
            .to_owned()
    }

    /// The name of the config parameter, as the stack computes it.
    fn config_parameter(&self) -> String {
        let name = self.render(&self.resource("ConfigParameter")["Properties"]["Name"]);
        name.as_str().unwrap().to_owned()
    }

    /// Which role runs each step: the ASL's `FunctionName` placeholder → the state machine's
    /// `DefinitionSubstitutions` → the function → its `Role`.
    fn role_of_steps(&self) -> BTreeMap<String, String> {
        let machine = self.doc["Resources"]
            .as_mapping()
            .unwrap()
            .values()
            .find(|r| !r["Properties"]["DefinitionSubstitutions"].is_null())
            .expect("a state machine with DefinitionSubstitutions");
        let subs = &machine["Properties"]["DefinitionSubstitutions"];
        let asl: Json = serde_json::from_str(ASL).unwrap();
        let mut tasks = Vec::new();
        collect_tasks(&asl, &mut tasks);
        let mut out = BTreeMap::new();
        for (step, placeholder) in tasks {
            let key = placeholder
                .strip_prefix("${")
                .and_then(|p| p.strip_suffix('}'))
                .expect("FunctionName is a ${placeholder}");
            let function = Self::get_att_resource(&subs[key]);
            let role = Self::get_att_resource(&self.resource(&function)["Properties"]["Role"]);
            if let Some(before) = out.insert(step.clone(), role.clone()) {
                assert_eq!(before, role, "step {step} runs in two roles");
            }
        }
        out
    }
}

/// `(step, FunctionName)` of every Lambda task of the ASL.
fn collect_tasks(v: &Json, out: &mut Vec<(String, String)>) {
    match v {
        Json::Object(m) => {
            if let (Some(f), Some(step)) = (
                m.get("FunctionName").and_then(Json::as_str),
                m.get("Payload").and_then(|p| p["step"].as_str()),
            ) {
                out.push((step.to_owned(), f.to_owned()));
            }
            m.values().for_each(|c| collect_tasks(c, out));
        }
        Json::Array(a) => a.iter().for_each(|c| collect_tasks(c, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------- the world

struct RoleCreds {
    arn: String,
    id: String,
    secret: String,
    token: String,
}

struct World {
    moto: Moto,
    ado: AdoEmulator,
    slack: SlackSink,
    template: Template,
    admin: SdkConfig,
    roles: HashMap<String, RoleCreds>,
    user: String,
    secret: String,
    initial_key: (String, String),
    other_key: (String, String),
    other_secret_value: String,
    dir: std::path::PathBuf,
}

fn sdk(endpoint: &str, creds: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
        .build()
}

/// The three Lambda roles, created as the template declares them, each assumed once.
async fn create_roles(template: &Template, admin: &SdkConfig) -> HashMap<String, RoleCreds> {
    let iam = aws_sdk_iam::Client::new(admin);
    let sts = aws_sdk_sts::Client::new(admin);
    let mut roles = HashMap::new();
    for role in ROLES {
        let (trust, policies) = template.role(role);
        let arn = iam
            .create_role()
            .role_name(format!("{STACK}-{role}"))
            .assume_role_policy_document(trust.to_string())
            .send()
            .await
            .unwrap()
            .role()
            .unwrap()
            .arn()
            .to_owned();
        for (name, doc) in &policies {
            iam.put_role_policy()
                .role_name(format!("{STACK}-{role}"))
                .policy_name(name)
                .policy_document(doc.to_string())
                .send()
                .await
                .unwrap();
        }
        let c = sts
            .assume_role()
            .role_arn(&arn)
            .role_session_name(format!("{STACK}-{role}"))
            .send()
            .await
            .unwrap();
        let c = c.credentials().unwrap();
        roles.insert(
            role.to_owned(),
            RoleCreds {
                arn,
                id: c.access_key_id().to_owned(),
                secret: c.secret_access_key().to_owned(),
                token: c.session_token().to_owned(),
            },
        );
    }
    roles
}

impl World {
    /// Seeds moto (the user with one key held by the endpoint, no secret yet; someone else's
    /// user, secret and parameter; the PAT, webhook and config parameters; the three roles) and
    /// the emulator, assumes the roles, then switches enforcement on.
    async fn new(extra_target: bool) -> World {
        Self::with_policy(extra_target, "").await
    }

    /// [`World::new`], with these lines added to the config's `[policy]` table.
    async fn with_policy(extra_target: bool, policy: &str) -> World {
        let moto = Moto::start_authorizing_resources().expect("moto starts");
        let template = Template::load();
        let admin = moto.sdk_config().await;

        let user = template.param("IamUserName").to_owned();
        let secret = template.param("SecretName").to_owned();
        let initial_key = aws_seed::user_with_key(&admin, &user).await.unwrap();
        let other_key = aws_seed::user_with_key_in_secret(&admin, OTHER_USER, OTHER_SECRET)
            .await
            .unwrap();
        let other_secret_value = aws_seed::key_json(OTHER_USER, &other_key);

        let project = template.param("EndpointProject").to_owned();
        let endpoint = template.param("EndpointName").to_owned();
        let ado = AdoEmulator::start(
            Seed::new().org(
                OrgSeed::new(ORG)
                    .pat(PAT, Scope::Manage)
                    .project(&project)
                    .endpoint(aws_endpoint(
                        &endpoint,
                        &initial_key.0,
                        &initial_key.1,
                        &[&project],
                    )),
            ),
        )
        .await
        .unwrap();
        let slack = SlackSink::start().await.unwrap();

        // The config exactly as the stack writes it, pointed at the emulator; propagation waits
        // shortened (moto accepts a new key at once).
        let mut vars = template.vars.clone();
        vars.insert("Organization".into(), ado.org_url(ORG));
        let with_org = Template {
            doc: Yaml::Null,
            vars,
        };
        let config = with_org.render(&template.resource("ConfigParameter")["Properties"]["Value"]);
        let mut config = config.as_str().unwrap().to_owned();
        config.push_str(
            "\n[policy]\nverify_interval = \"1ms\"\nverify_consecutive = 1\ndrain = \"0s\"\ndelete_old_key_after = \"0s\"\n",
        );
        config.push_str(policy);
        if extra_target {
            config.push_str(&format!(
                "\n[[target]]\nname = \"intruder\"\niam_user = \"{OTHER_USER}\"\nsecret = \"{OTHER_SECRET}\"\nendpoints = [ {{ project = \"{project}\", name = \"{endpoint}\" }} ]\n"
            ));
        }
        let parameters = [
            (
                template.param("PatParameterName"),
                PAT.to_owned(),
                ParameterType::SecureString,
            ),
            (
                template.param("WebhookParameterName"),
                slack.webhook_url(),
                ParameterType::SecureString,
            ),
            (&template.config_parameter(), config, ParameterType::String),
            (
                OTHER_PARAM,
                OTHER_PARAM_VALUE.to_owned(),
                ParameterType::SecureString,
            ),
        ];
        aws_seed::parameters(&admin, &parameters).await.unwrap();

        let roles = create_roles(&template, &admin).await;

        moto.enforce_iam(true).await.unwrap();
        let dir = std::env::temp_dir().join(format!("keyrotor-lp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        World {
            moto,
            ado,
            slack,
            template,
            admin,
            roles,
            user,
            secret,
            initial_key,
            other_key,
            other_secret_value,
            dir,
        }
    }

    /// An SDK config with a role's credentials.
    fn as_role(&self, role: &str) -> SdkConfig {
        let c = &self.roles[role];
        sdk(
            &self.moto.endpoint,
            Credentials::new(&c.id, &c.secret, Some(c.token.clone()), None, "role"),
        )
    }

    /// Reads what the test checks with enforcement off (the admin's dummy key is refused while
    /// it is on), then switches it back on.
    async fn observe(&self) -> Observed {
        self.moto.enforce_iam(false).await.unwrap();
        let iam = aws_sdk_iam::Client::new(&self.admin);
        let sm = aws_sdk_secretsmanager::Client::new(&self.admin);
        let mut keys = BTreeMap::new();
        for u in [self.user.as_str(), OTHER_USER] {
            let listed = iam.list_access_keys().user_name(u).send().await.unwrap();
            keys.insert(
                u.to_owned(),
                listed
                    .access_key_metadata()
                    .iter()
                    .map(|k| {
                        (
                            k.access_key_id().unwrap().to_owned(),
                            k.status() == Some(&StatusType::Active),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let current = match sm
            .get_secret_value()
            .secret_id(&self.secret)
            .version_stage("AWSCURRENT")
            .send()
            .await
        {
            Ok(v) => v.secret_string().map(str::to_owned),
            Err(_) => None,
        };
        let other_secret = sm
            .get_secret_value()
            .secret_id(OTHER_SECRET)
            .send()
            .await
            .unwrap()
            .secret_string()
            .map(str::to_owned);
        self.moto.enforce_iam(true).await.unwrap();
        let held = self.ado.state().organizations[ORG].endpoints[0]["authorization"]["parameters"]
            ["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Observed {
            keys,
            current,
            other_secret,
            held,
        }
    }

    /// The three functions: the real `bootstrap`, each with its role's credentials only.
    async fn functions(&self) -> Functions {
        let mut by_role = HashMap::new();
        for role in ROLES {
            let api = LambdaApi::start().await.unwrap();
            let c = &self.roles[role];
            let name = format!("{STACK}-{}", role.trim_end_matches("Role").to_lowercase());
            let child = api
                .function(env!("CARGO_BIN_EXE_bootstrap"), &name, &self.dir)
                .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
                .env("AWS_REGION", REGION)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_ACCESS_KEY_ID", &c.id)
                .env("AWS_SECRET_ACCESS_KEY", &c.secret)
                .env("AWS_SESSION_TOKEN", &c.token)
                .env(
                    "KEYROTOR_CONFIG_PARAMETER",
                    self.template.config_parameter(),
                )
                .env("RUST_LOG", "trace")
                .spawn()
                .expect("bootstrap starts");
            // Drained as it comes: at RUST_LOG=trace a full pipe would stall the function.
            let mut child = child;
            let drain = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    if let Some(mut r) = r {
                        let _ = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut buf).await;
                    }
                    buf
                })
            };
            let out = drain(child.stdout.take().map(|o| Box::new(o) as _));
            let err = drain(child.stderr.take().map(|e| Box::new(e) as _));
            by_role.insert(role.to_owned(), (api, Running { child, out, err }));
        }
        Functions {
            by_role,
            step_role: self.template.role_of_steps(),
            payloads: Vec::new(),
        }
    }

    /// The rotated secret's AWSPENDING version and the owner its value names
    /// (`KeyrotorOwner`: `RunId` and the lease's `ExpiresAt`), read as the admin.
    async fn pending(&self) -> (String, Json) {
        self.moto.enforce_iam(false).await.unwrap();
        let v = aws_sdk_secretsmanager::Client::new(&self.admin)
            .get_secret_value()
            .secret_id(&self.secret)
            .version_stage("AWSPENDING")
            .send()
            .await
            .unwrap();
        self.moto.enforce_iam(true).await.unwrap();
        let value: Json = serde_json::from_str(v.secret_string().unwrap()).unwrap();
        (
            v.version_id().unwrap().to_owned(),
            value["KeyrotorOwner"].clone(),
        )
    }

    /// Every secret value the test knows: key secrets (read from moto), the PAT, the webhook,
    /// the other parameter.
    async fn secrets(&self) -> Vec<String> {
        self.moto.enforce_iam(false).await.unwrap();
        let sm = aws_sdk_secretsmanager::Client::new(&self.admin);
        let mut out = vec![
            PAT.to_owned(),
            self.slack.webhook_url(),
            self.slack.webhook_secret().to_owned(),
            OTHER_PARAM_VALUE.to_owned(),
            self.initial_key.1.clone(),
            self.other_key.1.clone(),
        ];
        if let Ok(listed) = sm
            .list_secret_version_ids()
            .secret_id(&self.secret)
            .send()
            .await
        {
            for v in listed.versions() {
                let value = sm
                    .get_secret_value()
                    .secret_id(&self.secret)
                    .version_id(v.version_id().unwrap())
                    .send()
                    .await
                    .unwrap();
                if let Some(s) = value.secret_string()
                    && let Ok(j) = serde_json::from_str::<Json>(s)
                    && let Some(k) = j["SecretAccessKey"].as_str()
                {
                    out.push(k.to_owned());
                }
            }
        }
        self.moto.enforce_iam(true).await.unwrap();
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Observed {
    /// Per user: `(key id, active)`.
    keys: BTreeMap<String, Vec<(String, bool)>>,
    /// The rotated secret's AWSCURRENT value.
    current: Option<String>,
    other_secret: Option<String>,
    /// The key id the endpoint holds.
    held: String,
}

/// A `bootstrap` process and the tasks collecting what it prints.
struct Running {
    child: tokio::process::Child,
    out: tokio::task::JoinHandle<Vec<u8>>,
    err: tokio::task::JoinHandle<Vec<u8>>,
}

struct Functions {
    by_role: HashMap<String, (LambdaApi, Running)>,
    step_role: BTreeMap<String, String>,
    /// Every payload sent to or returned by a function.
    payloads: Vec<String>,
}

impl Functions {
    async fn call(&mut self, event: Json) -> Result<Json, (String, String)> {
        let step = event["step"].as_str().unwrap().to_owned();
        let role = self
            .step_role
            .get(&step)
            .unwrap_or_else(|| panic!("the state machine never sends {step}"))
            .clone();
        let (api, _) = &self.by_role[&role];
        self.payloads.push(event.to_string());
        let id = api.invoke(event);
        let outcome = match api.outcome(&id, Duration::from_secs(60)).await {
            Ok(o) => o,
            Err(e) => {
                let (_, printed) = self.stop().await;
                panic!("{step} in {role}: {e}\n{printed}");
            }
        };
        match outcome {
            Outcome::Response(v) => {
                self.payloads.push(v.to_string());
                Ok(v)
            }
            Outcome::Error {
                error_type,
                error_message,
            } => {
                self.payloads.push(format!("{error_type}: {error_message}"));
                Err((error_type, error_message))
            }
        }
    }

    /// One target through the steps, as the state machine chains them when the planner says
    /// rotate. Returns the last good state and, if a step failed, its name and error.
    async fn rotate(
        &mut self,
        target: &str,
        run_id: &str,
    ) -> (Json, Option<(String, (String, String))>) {
        let mut state = json!({"progress": {"target": target, "run_id": run_id}, "force": true, "next": "inspect"});
        // As the state machine routes: the Task the state's `next` names.
        while let Some(step) = state["next"]
            .as_str()
            .filter(|n| *n != "done")
            .map(str::to_owned)
        {
            match self.call(json!({"step": step, "state": state})).await {
                Ok(next) => {
                    if step == "inspect" {
                        assert_eq!(next["plan"]["decision"], "rotate", "{next}");
                    }
                    state = next;
                }
                Err(e) => return (state, Some((step, e))),
            }
        }
        (state, None)
    }

    /// Stops the functions; returns every payload and everything they printed.
    async fn stop(&mut self) -> (Vec<String>, String) {
        let mut printed = String::new();
        for (_, (api, mut running)) in self.by_role.drain() {
            api.stop().await;
            tokio::time::timeout(Duration::from_secs(30), running.child.wait())
                .await
                .expect("bootstrap ends once the Runtime API is gone")
                .unwrap();
            printed.push_str(&String::from_utf8_lossy(&running.out.await.unwrap()));
            printed.push_str(&String::from_utf8_lossy(&running.err.await.unwrap()));
        }
        (std::mem::take(&mut self.payloads), printed)
    }
}

/// The request was refused by IAM authorization (not failed for another reason).
fn assert_denied<T: Debug, E: ProvideErrorMetadata + Debug>(what: &str, r: Result<T, E>) {
    match r {
        Ok(v) => panic!("{what}: allowed, but the policy must deny it ({v:?})"),
        Err(e) => {
            let code = e.code().unwrap_or_default();
            assert!(
                code.starts_with("AccessDenied"),
                "{what}: refused with {code:?}, not AccessDenied: {e:?}"
            );
        }
    }
}

fn assert_no_leak(secrets: &[String], payloads: &[String], printed: &str) {
    assert!(!printed.trim().is_empty(), "the functions logged nothing");
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(!printed.contains(s.as_str()), "a secret was logged");
        for p in payloads {
            assert!(!p.contains(s.as_str()), "a secret is in a payload: {p}");
        }
    }
}

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_succeeds_with_only_its_own_roles_policy() {
    let w = World::new(false).await;
    let step_role = w.template.role_of_steps();
    assert_eq!(
        step_role.keys().cloned().collect::<Vec<_>>(),
        [
            "cleanup",
            "compensate",
            "confirm",
            "create",
            "inspect",
            "promote",
            "push",
            "report",
            "retire",
            "targets",
            "verify"
        ],
        "every step of the state machine runs in some function"
    );

    // Enforcement is really on: a role is refused what its policy does not grant.
    let rotator_iam = aws_sdk_iam::Client::new(&w.as_role("RotatorRole"));
    assert_denied("rotator ListUsers", rotator_iam.list_users().send().await);

    let mut f = w.functions().await;
    let target = w.template.param("TargetName").to_owned();
    let listed = f
        .call(json!({"step": "targets", "run_id": "lp-1", "input": {"force": true}}))
        .await
        .expect("targets");
    assert_eq!(listed["targets"][0]["progress"]["target"], json!(target));
    assert_eq!(listed["targets"].as_array().unwrap().len(), 1);

    // 1. The first rotation: the secret does not exist yet, the rotator creates it.
    let before = w.observe().await;
    assert_eq!(before.current, None, "no secret before the first rotation");
    let run1 = uuid::Uuid::new_v4().to_string();
    let (state, failed) = f.rotate(&target, &run1).await;
    assert!(failed.is_none(), "first rotation: {failed:?}");
    assert_eq!(state["outcome"], "rotated", "{state}");
    let new1 = state["progress"]["new_key"].as_str().unwrap().to_owned();
    let after = w.observe().await;
    assert_eq!(
        after.keys[&w.user],
        [(new1.clone(), true)],
        "only the new key remains"
    );
    assert_eq!(after.held, new1, "the endpoint holds the new key");
    assert!(after.current.as_deref().unwrap().contains(&new1));

    // 2. A second rotation, now that the secret exists.
    let run2 = uuid::Uuid::new_v4().to_string();
    let (state2, failed) = f.rotate(&target, &run2).await;
    assert!(failed.is_none(), "second rotation: {failed:?}");
    let new2 = state2["progress"]["new_key"].as_str().unwrap().to_owned();
    assert_ne!(new1, new2);
    let after = w.observe().await;
    assert_eq!(after.keys[&w.user], [(new2.clone(), true)]);
    assert_eq!(after.held, new2);

    // 3. A rotation that Azure DevOps refuses: compensation (the rotator) deletes the new key.
    w.ado.inject(Fault::status(Op::Put, 400).forever());
    let run3 = uuid::Uuid::new_v4().to_string();
    let (last_good, failed) = f.rotate(&target, &run3).await;
    let (step, (error_type, error_message)) = failed.expect("push fails");
    assert_eq!(step, "push");
    let compensated = f
        .call(json!({"step": "compensate", "state": last_good, "error": {
            "Error": error_type,
            "Cause": json!({"errorType": error_type, "errorMessage": error_message}).to_string()
        }}))
        .await
        .expect("compensate");
    assert_eq!(compensated["outcome"], "failed", "{compensated}");
    w.ado.clear_faults();
    let after = w.observe().await;
    assert_eq!(
        after.keys[&w.user],
        [(new2.clone(), true)],
        "compensation deleted the key Azure DevOps never got"
    );
    assert_eq!(after.held, new2);

    // 4. The report (the notifier) posts to Slack.
    let summary = f
        .call(json!({"step": "report", "run_id": run2, "results": [{"state": state2}]}))
        .await
        .expect("report");
    assert_eq!(
        summary["notification"],
        json!({"status": "sent"}),
        "{summary}"
    );
    assert_eq!(w.slack.posts().len(), 1);

    // Nothing else was touched.
    assert_eq!(after.keys[OTHER_USER], [(w.other_key.0.clone(), true)]);
    assert_eq!(
        after.other_secret.as_deref(),
        Some(w.other_secret_value.as_str())
    );

    let secrets = w.secrets().await;
    let (payloads, printed) = f.stop().await;
    assert_no_leak(&secrets, &payloads, &printed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_puts_awspending_back_on_its_runs_version() {
    let w = World::new(false).await;
    let mut f = w.functions().await;
    let target = w.template.param("TargetName").to_owned();
    let run = uuid::Uuid::new_v4().to_string();
    let mut state =
        json!({"progress": {"target": target, "run_id": run}, "force": true, "next": "inspect"});
    while state["next"] != "push" {
        let step = state["next"].as_str().unwrap().to_owned();
        state = f
            .call(json!({"step": step, "state": state}))
            .await
            .unwrap_or_else(|e| panic!("{step}: {e:?}"));
    }
    // Someone moves AWSPENDING off this run's version (a person, a script, a run that gave up).
    let mine = state["progress"]["pending_version"]
        .as_str()
        .expect("create recorded its version")
        .to_owned();
    w.moto.enforce_iam(false).await.unwrap();
    aws_sdk_secretsmanager::Client::new(&w.admin)
        .update_secret_version_stage()
        .secret_id(&w.secret)
        .version_stage("AWSPENDING")
        .remove_from_version_id(&mine)
        .send()
        .await
        .unwrap();
    w.moto.enforce_iam(true).await.unwrap();

    // The pusher puts it back (UpdateSecretVersionStage on its one secret) and pushes.
    let pushed = f
        .call(json!({"step": "push", "state": state}))
        .await
        .expect("the pusher may put AWSPENDING back on its run's version");
    assert_eq!(pushed["next"], "confirm", "{pushed}");
    let after = w.observe().await;
    assert_eq!(
        Some(after.held.as_str()),
        state["progress"]["new_key"].as_str(),
        "the endpoint holds the new key"
    );
    let (payloads, printed) = f.stop().await;
    assert_no_leak(&w.secrets().await, &payloads, &printed);
}

/// The lease in the test's config: short, so that it is due for renewal (less than half left)
/// by the time the next step runs.
const SHORT_LEASE: Duration = Duration::from_secs(2);

/// Issue #21 item 8: a step that finds its run's lease half gone renews it (core's
/// `pending_secret` → `renew_if_due`: the same key written again at AWSPENDING with a new expiry,
/// a `PutSecretValue`), at `verify` (the rotator) and at `push` (the pusher). Each step goes to the
/// function, and so the role, the state machine gives it; a missing grant is `AccessDenied` there,
/// and the rotation would be compensated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_due_at_verify_and_at_push_is_renewed_with_each_steps_own_role() {
    let lease = format!("owner_lease = \"{}s\"\n", SHORT_LEASE.as_secs());
    let w = World::with_policy(false, &lease).await;
    let step_role = w.template.role_of_steps();
    let mut f = w.functions().await;
    let target = w.template.param("TargetName").to_owned();
    let run = uuid::Uuid::new_v4().to_string();
    let mut state =
        json!({"progress": {"target": target, "run_id": run}, "force": true, "next": "inspect"});
    let mut renewed_at = Vec::new();
    while let Some(step) = state["next"]
        .as_str()
        .filter(|n| *n != "done")
        .map(str::to_owned)
    {
        let due = matches!(step.as_str(), "verify" | "push");
        let before = if due {
            // Past the whole lease: whatever the last step wrote, less than half is left now.
            tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
            Some(w.pending().await)
        } else {
            None
        };
        state = match f.call(json!({"step": step, "state": state})).await {
            Ok(next) => next,
            Err(e) => {
                let (_, printed) = f.stop().await;
                panic!(
                    "{step} (run by {}) failed with the lease due: {e:?}\n{printed}",
                    step_role[&step]
                )
            }
        };
        if let Some((version, owner)) = before {
            let (now, renewed) = w.pending().await;
            assert_eq!(owner["RunId"], json!(run), "{owner}");
            assert_eq!(renewed["RunId"], json!(run), "{renewed}");
            assert_ne!(
                now, version,
                "{step} wrote the renewed lease as a new version"
            );
            assert!(
                renewed["ExpiresAt"].as_str() > owner["ExpiresAt"].as_str(),
                "{step} moved the lease's expiry on: {owner} → {renewed}"
            );
            assert_eq!(
                state["progress"]["pending_version"],
                json!(now),
                "{step} carries the renewed version on"
            );
            renewed_at.push((step.clone(), step_role[&step].clone()));
        }
    }
    assert_eq!(
        renewed_at,
        [
            ("verify".to_owned(), step_role["verify"].clone()),
            ("push".to_owned(), step_role["push"].clone())
        ]
    );
    assert_eq!(
        step_role["push"], "PusherRole",
        "the state machine's push runs as the pusher"
    );
    assert_eq!(state["outcome"], "rotated", "{state}");
    let new = state["progress"]["new_key"].as_str().unwrap().to_owned();
    let after = w.observe().await;
    assert_eq!(after.keys[&w.user], [(new.clone(), true)]);
    assert_eq!(after.held, new, "the endpoint holds the new key");
    assert!(
        after.current.as_deref().unwrap().contains(&new),
        "the renewed version was promoted"
    );
    let secrets = w.secrets().await;
    let (payloads, printed) = f.stop().await;
    assert_no_leak(&secrets, &payloads, &printed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rotator_reaches_no_other_user_secret_or_parameter() {
    let w = World::new(true).await;
    let cfg = w.as_role("RotatorRole");
    let iam = aws_sdk_iam::Client::new(&cfg);
    let sm = aws_sdk_secretsmanager::Client::new(&cfg);
    let ssm = aws_sdk_ssm::Client::new(&cfg);
    let other_key = w.other_key.0.as_str();

    // Its own user's keys: allowed (so the refusals below are about the resource).
    iam.list_access_keys()
        .user_name(&w.user)
        .send()
        .await
        .expect("the rotator lists its own user's keys");
    ssm.get_parameter()
        .name(w.template.param("PatParameterName"))
        .with_decryption(true)
        .send()
        .await
        .expect("the rotator reads the PAT");

    assert_denied(
        "CreateAccessKey for another user",
        iam.create_access_key().user_name(OTHER_USER).send().await,
    );
    assert_denied(
        "UpdateAccessKey of another user's key",
        iam.update_access_key()
            .user_name(OTHER_USER)
            .access_key_id(other_key)
            .status(StatusType::Inactive)
            .send()
            .await,
    );
    assert_denied(
        "UpdateAccessKey of another user's key, no user named",
        iam.update_access_key()
            .access_key_id(other_key)
            .status(StatusType::Inactive)
            .send()
            .await,
    );
    assert_denied(
        "DeleteAccessKey of another user's key",
        iam.delete_access_key()
            .user_name(OTHER_USER)
            .access_key_id(other_key)
            .send()
            .await,
    );
    assert_denied(
        "ListAccessKeys of another user",
        iam.list_access_keys().user_name(OTHER_USER).send().await,
    );
    assert_denied(
        "GetAccessKeyLastUsed of another user's key",
        iam.get_access_key_last_used()
            .access_key_id(other_key)
            .send()
            .await,
    );
    assert_denied(
        "CreateUser",
        iam.create_user()
            .user_name("keyrotor-was-here")
            .send()
            .await,
    );
    assert_denied(
        "GetSecretValue of another secret",
        sm.get_secret_value().secret_id(OTHER_SECRET).send().await,
    );
    assert_denied(
        "DescribeSecret of another secret",
        sm.describe_secret().secret_id(OTHER_SECRET).send().await,
    );
    assert_denied(
        "PutSecretValue into another secret",
        sm.put_secret_value()
            .secret_id(OTHER_SECRET)
            .secret_string("{}")
            .send()
            .await,
    );
    assert_denied(
        "CreateSecret under another name",
        sm.create_secret()
            .name("/billing/batch/other")
            .secret_string("{}")
            .send()
            .await,
    );
    assert_denied(
        "GetParameter of another parameter",
        ssm.get_parameter()
            .name(OTHER_PARAM)
            .with_decryption(true)
            .send()
            .await,
    );
    assert_denied(
        "GetParameter of the webhook (the notifier's)",
        ssm.get_parameter()
            .name(w.template.param("WebhookParameterName"))
            .with_decryption(true)
            .send()
            .await,
    );

    // Step Functions: whether the execution that owns a lease still runs, for this stack's
    // state machine's executions (and its batches' child executions) only.
    let sfn = aws_sdk_sfn::Client::new(&cfg);
    let execution =
        |machine: &str| format!("arn:aws:states:{REGION}:{ACCOUNT}:execution:{machine}");
    for own in [
        execution(&format!("{STACK}-rotate:a-run")),
        execution(&format!(
            "{STACK}-rotate/RotateTargets:3f1c9a52-0b1e-4c8e-9d7a-2a5b6c7d8e9f"
        )),
    ] {
        let r = sfn.describe_execution().execution_arn(&own).send().await;
        allowed(&format!("DescribeExecution of {own}"), r);
    }
    assert_denied(
        "DescribeExecution of another state machine's execution",
        sfn.describe_execution()
            .execution_arn(execution("billing-etl:a-run"))
            .send()
            .await,
    );
    assert_denied(
        "DescribeExecution of another stack's machine that shares the prefix",
        sfn.describe_execution()
            .execution_arn(execution(&format!("{STACK}-rotated:a-run")))
            .send()
            .await,
    );

    // keyrotor itself, pointed at the other user by its config: the rotator function fails at
    // inspect, names the refusal, and changes nothing.
    let before = w.observe().await;
    let mut f = w.functions().await;
    let run = uuid::Uuid::new_v4().to_string();
    let err = f
        .call(json!({"step": "inspect", "state": {"progress": {"target": "intruder", "run_id": run}, "next": "inspect", "force": true}}))
        .await
        .expect_err("inspect of another user's target is refused");
    assert!(
        err.1.contains("not authorized") || err.1.contains("AccessDenied"),
        "{err:?}"
    );
    let after = w.observe().await;
    assert_eq!(before.keys, after.keys);
    assert_eq!(
        after.other_secret.as_deref(),
        Some(w.other_secret_value.as_str())
    );
    assert_eq!(after.keys[OTHER_USER], [(other_key.to_owned(), true)]);
    let secrets = w.secrets().await;
    let (payloads, printed) = f.stop().await;
    assert_no_leak(&secrets, &payloads, &printed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_and_the_notifier_cannot_touch_iam() {
    let w = World::new(false).await;
    let own_key = w.initial_key.0.as_str();
    for role in ["PusherRole", "NotifierRole"] {
        let cfg = w.as_role(role);
        let iam = aws_sdk_iam::Client::new(&cfg);
        let sm = aws_sdk_secretsmanager::Client::new(&cfg);
        // The pusher may list its one user's keys (is the new key live before a PUT?), and
        // nobody else's; the notifier no one's.
        let listed_own = iam.list_access_keys().user_name(&w.user).send().await;
        if role == "PusherRole" {
            assert!(
                listed_own.is_ok(),
                "the pusher lists its user's keys: {listed_own:?}"
            );
        } else {
            assert_denied(&format!("{role} ListAccessKeys of {}", w.user), listed_own);
        }
        assert_denied(
            &format!("{role} ListAccessKeys of {OTHER_USER}"),
            iam.list_access_keys().user_name(OTHER_USER).send().await,
        );
        for user in [w.user.as_str(), OTHER_USER] {
            assert_denied(
                &format!("{role} CreateAccessKey for {user}"),
                iam.create_access_key().user_name(user).send().await,
            );
        }
        assert_denied(
            &format!("{role} UpdateAccessKey"),
            iam.update_access_key()
                .user_name(&w.user)
                .access_key_id(own_key)
                .status(StatusType::Inactive)
                .send()
                .await,
        );
        assert_denied(
            &format!("{role} DeleteAccessKey"),
            iam.delete_access_key()
                .user_name(&w.user)
                .access_key_id(own_key)
                .send()
                .await,
        );
        assert_denied(
            &format!("{role} GetAccessKeyLastUsed"),
            iam.get_access_key_last_used()
                .access_key_id(own_key)
                .send()
                .await,
        );
        assert_denied(
            &format!("{role} GetSecretValue of another secret"),
            sm.get_secret_value().secret_id(OTHER_SECRET).send().await,
        );
        assert_denied(
            &format!("{role} CreateSecret"),
            sm.create_secret()
                .name(&w.secret)
                .secret_string("{}")
                .send()
                .await,
        );
        // The pusher may write its one secret (a lease renewal at push): no other one.
        assert_denied(
            &format!("{role} PutSecretValue into another secret"),
            sm.put_secret_value()
                .secret_id(OTHER_SECRET)
                .secret_string("{}")
                .send()
                .await,
        );
        assert_denied(
            &format!("{role} UpdateSecretVersionStage of another secret"),
            sm.update_secret_version_stage()
                .secret_id(OTHER_SECRET)
                .version_stage("AWSPENDING")
                .move_to_version_id(uuid::Uuid::new_v4().to_string())
                .send()
                .await,
        );
        assert_denied(
            &format!("{role} DeleteSecret of another secret"),
            sm.delete_secret().secret_id(OTHER_SECRET).send().await,
        );
    }

    // The notifier reads neither the PAT nor the key; the pusher not the webhook.
    let notifier_ssm = aws_sdk_ssm::Client::new(&w.as_role("NotifierRole"));
    assert_denied(
        "NotifierRole GetParameter of the PAT",
        notifier_ssm
            .get_parameter()
            .name(w.template.param("PatParameterName"))
            .with_decryption(true)
            .send()
            .await,
    );
    let pusher_ssm = aws_sdk_ssm::Client::new(&w.as_role("PusherRole"));
    assert_denied(
        "PusherRole GetParameter of the webhook",
        pusher_ssm
            .get_parameter()
            .name(w.template.param("WebhookParameterName"))
            .with_decryption(true)
            .send()
            .await,
    );
    // …while each reads its own.
    notifier_ssm
        .get_parameter()
        .name(w.template.param("WebhookParameterName"))
        .with_decryption(true)
        .send()
        .await
        .expect("the notifier reads the webhook");
    pusher_ssm
        .get_parameter()
        .name(w.template.param("PatParameterName"))
        .with_decryption(true)
        .send()
        .await
        .expect("the pusher reads the PAT");

    // The pusher, sent a rotator step, fails on its first IAM call and changes nothing.
    let before = w.observe().await;
    let mut f = w.functions().await;
    let (api, _) = &f.by_role["PusherRole"];
    let id = api.invoke(json!({"step": "inspect", "state": {
        "progress": {"target": w.template.param("TargetName"), "run_id": uuid::Uuid::new_v4().to_string()},
        "next": "inspect", "force": true}}));
    match api.outcome(&id, Duration::from_secs(60)).await.unwrap() {
        Outcome::Error { error_message, .. } => assert!(
            error_message.contains("not authorized") || error_message.contains("AccessDenied"),
            "{error_message}"
        ),
        other => panic!("the pusher ran inspect: {other:?}"),
    }
    f.payloads.clear();
    let after = w.observe().await;
    assert_eq!(before.keys, after.keys);
    assert_eq!(before.held, after.held);
    assert_eq!(w.roles.len(), 3);
    assert!(w.roles.values().all(|r| r.arn.contains(":role/")));
    let secrets = w.secrets().await;
    let (payloads, printed) = f.stop().await;
    assert_no_leak(&secrets, &payloads, &printed);
}

/// A request's result as its error code and description, whatever the service.
type Answer = Result<(), (String, String)>;

fn answer<T, E: ProvideErrorMetadata + Debug>(r: Result<T, E>) -> Answer {
    r.map(|_| ())
        .map_err(|e| (e.code().unwrap_or_default().to_owned(), format!("{e:?}")))
}

/// Whether a request was allowed (it may still fail for another reason, e.g. `NotFound`).
fn allowed<T, E: ProvideErrorMetadata + Debug>(what: &str, r: Result<T, E>) {
    expect(what, true, answer(r));
}

/// Allowed or refused by IAM authorization, as `inside` says.
fn expect(what: &str, inside: bool, a: Answer) {
    match (inside, a) {
        (true, Err((code, e))) if code.starts_with("AccessDenied") => {
            panic!("{what}: refused, but the policy must allow it: {e}")
        }
        (false, Ok(())) => panic!("{what}: allowed, but the policy must deny it"),
        (false, Err((code, e))) if !code.starts_with("AccessDenied") => {
            panic!("{what}: refused with {code:?}, not AccessDenied: {e}")
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_stack_reaches_the_users_under_its_path_and_the_secrets_under_its_prefix_only() {
    let moto = Moto::start_authorizing_resources().expect("moto starts");
    let template = Template::load_with(&[
        ("FleetUserPath", "/keyrotor/"),
        ("FleetSecretPrefix", "keyrotor/"),
    ]);
    let admin = moto.sdk_config().await;
    let iam = aws_sdk_iam::Client::new(&admin);
    // (name, path, in the fleet)
    let users = [
        ("fleet-a", "/keyrotor/", true),
        ("fleet-b", "/keyrotor/team-b/", true),
        ("outside-root", "/", false),
        ("outside-similar", "/keyrotorx/", false),
        ("outside-nested", "/other/keyrotor/", false),
    ];
    let mut keys = HashMap::new();
    for (name, path, _) in users {
        iam.create_user()
            .user_name(name)
            .path(path)
            .send()
            .await
            .unwrap();
        let k = iam
            .create_access_key()
            .user_name(name)
            .send()
            .await
            .unwrap();
        keys.insert(name, k.access_key().unwrap().access_key_id().to_owned());
    }
    // (name, in the fleet)
    let secrets = [
        ("keyrotor/fleet-a", true),
        ("keyrotor/team-b/fleet-b", true),
        (OTHER_SECRET, false),
        ("keyrotorx/similar", false),
    ];
    for (name, _) in secrets {
        aws_seed::secret(&admin, name, "{}").await.unwrap();
    }
    let roles = create_roles(&template, &admin).await;
    moto.enforce_iam(true).await.unwrap();
    let as_role = |role: &str| {
        let c = &roles[role];
        sdk(
            &moto.endpoint,
            Credentials::new(&c.id, &c.secret, Some(c.token.clone()), None, "role"),
        )
    };

    let rotator = as_role("RotatorRole");
    let (r_iam, r_sm) = (
        aws_sdk_iam::Client::new(&rotator),
        aws_sdk_secretsmanager::Client::new(&rotator),
    );
    let pusher = as_role("PusherRole");
    let (p_iam, p_sm) = (
        aws_sdk_iam::Client::new(&pusher),
        aws_sdk_secretsmanager::Client::new(&pusher),
    );
    for (user, _, inside) in users {
        let key = &keys[user];
        let results = [
            (
                "rotator ListAccessKeys",
                answer(r_iam.list_access_keys().user_name(user).send().await),
            ),
            (
                "rotator UpdateAccessKey",
                answer(
                    r_iam
                        .update_access_key()
                        .user_name(user)
                        .access_key_id(key)
                        .status(StatusType::Active)
                        .send()
                        .await,
                ),
            ),
            (
                "pusher ListAccessKeys",
                answer(p_iam.list_access_keys().user_name(user).send().await),
            ),
        ];
        for (what, r) in results {
            expect(&format!("{what} of {user}"), inside, r);
        }
        let created = r_iam.create_access_key().user_name(user).send().await;
        if inside {
            let id = created
                .unwrap_or_else(|e| panic!("rotator CreateAccessKey of {user}: {e:?}"))
                .access_key()
                .unwrap()
                .access_key_id()
                .to_owned();
            allowed(
                &format!("rotator DeleteAccessKey of {user}"),
                r_iam
                    .delete_access_key()
                    .user_name(user)
                    .access_key_id(id)
                    .send()
                    .await,
            );
        } else {
            assert_denied(&format!("rotator CreateAccessKey of {user}"), created);
            assert_denied(
                &format!("rotator DeleteAccessKey of {user}"),
                r_iam
                    .delete_access_key()
                    .user_name(user)
                    .access_key_id(key)
                    .send()
                    .await,
            );
        }
    }
    for (secret, inside) in secrets {
        let results = [
            (
                "rotator GetSecretValue",
                answer(r_sm.get_secret_value().secret_id(secret).send().await),
            ),
            (
                "rotator PutSecretValue",
                answer(
                    r_sm.put_secret_value()
                        .secret_id(secret)
                        .secret_string("{\"written\": true}")
                        .send()
                        .await,
                ),
            ),
            (
                "pusher GetSecretValue",
                answer(p_sm.get_secret_value().secret_id(secret).send().await),
            ),
            (
                "pusher DescribeSecret",
                answer(p_sm.describe_secret().secret_id(secret).send().await),
            ),
            (
                "pusher PutSecretValue (a lease renewal at push)",
                answer(
                    p_sm.put_secret_value()
                        .secret_id(secret)
                        .secret_string("{\"renewed\": true}")
                        .send()
                        .await,
                ),
            ),
        ];
        for (what, r) in results {
            expect(&format!("{what} of {secret}"), inside, r);
        }
    }
    // A first rotation creates its secret: under the prefix only.
    allowed(
        "rotator DescribeSecret of a missing keyrotor/new",
        r_sm.describe_secret()
            .secret_id("keyrotor/new")
            .send()
            .await,
    );
    allowed(
        "rotator CreateSecret keyrotor/new",
        r_sm.create_secret()
            .name("keyrotor/new")
            .secret_string("{}")
            .send()
            .await,
    );
    assert_denied(
        "rotator DescribeSecret of a missing elsewhere/new",
        r_sm.describe_secret()
            .secret_id("elsewhere/new")
            .send()
            .await,
    );
    assert_denied(
        "rotator CreateSecret elsewhere/new",
        r_sm.create_secret()
            .name("elsewhere/new")
            .secret_string("{}")
            .send()
            .await,
    );
    // The pusher creates no secret and no key anywhere.
    assert_denied(
        "pusher CreateSecret keyrotor/new-by-the-pusher",
        p_sm.create_secret()
            .name("keyrotor/new-by-the-pusher")
            .secret_string("{}")
            .send()
            .await,
    );
    assert_denied(
        "pusher CreateAccessKey of fleet-a",
        p_iam.create_access_key().user_name("fleet-a").send().await,
    );
}
