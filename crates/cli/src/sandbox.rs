//! `keyrotor sandbox`: the whole job on this machine, against local stand-ins.
//!
//! Starts moto (AWS), the Azure DevOps emulator and a Slack sink on loopback ports, seeds an IAM
//! user whose key an AWS service connection holds (shared into two projects, with pipeline
//! authorizations), a secret, the SSM parameters and a config, then runs the normal `status`,
//! `check` and `rotate` code paths against them and shows what changed (it stops before
//! rotating when `check` fails). Everything it started stops when it
//! ends, also on Ctrl-C (moto also stops by itself when this process dies).

use std::path::Path;

use anyhow::{Context, Result};
use keyrotor_aws::Aws;
use keyrotor_standins::ado::{AdoEmulator, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_standins::aws_seed;
use keyrotor_standins::moto::Moto;
use keyrotor_standins::names::{PAT_PARAM, SECRET, USER, WEBHOOK_PARAM};
use keyrotor_standins::slack::SlackSink;
use serde_json::{Value, json};

use crate::Io;
use crate::backend::RealBackend;

const ENDPOINT_ID: &str = "5e2b7c1d-0a4f-4c3e-9d8b-aa51c0ffee01";

/// Options of `keyrotor sandbox`.
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Keep the stand-ins running after the rotation (until Ctrl-C), and print how to point
    /// `keyrotor status|plan|rotate` at them.
    #[arg(long)]
    pub keep: bool,
    /// Instead of a rotation, show the move from the key to OIDC (`keyrotor migrate-oidc`: the
    /// plan, --apply, --rollback, --apply and --finish).
    #[arg(long, conflicts_with = "keep")]
    pub oidc: bool,
}

struct Stage<'a, 'b> {
    io: &'a mut Io<'b>,
}

impl Stage<'_, '_> {
    fn title(&mut self, text: &str) {
        let _ = writeln!(self.io.out, "\n━━ {text}");
    }
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.io.out, "   {text}");
    }
    fn check(&mut self, ok: bool, text: &str) -> bool {
        let _ = writeln!(self.io.out, "   {} {text}", if ok { "✓" } else { "✗" });
        ok
    }
    /// Says `title`, then runs `keyrotor ARGS` against the stand-ins; its exit code.
    async fn run(&mut self, title: &str, args: &[&str], backend: &RealBackend) -> i32 {
        self.title(title);
        let _ = self.io.out.flush();
        Box::pin(crate::run(argv(args), backend, self.io)).await
    }
}

/// Runs the sandbox. Returns the exit code.
pub async fn run(args: &SandboxArgs, io: &mut Io<'_>) -> i32 {
    let dir = std::env::temp_dir().join(format!(
        "keyrotor-sandbox-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = tokio::select! {
        r = async {
            if args.oidc {
                crate::sandbox_oidc::body(&dir, io).await
            } else {
                body(args, &dir, io).await
            }
        } => r,
        _ = tokio::signal::ctrl_c() => {
            let _ = writeln!(io.err, "\ninterrupted: stopping moto, the Azure DevOps emulator and the Slack sink");
            Ok(130)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io.err, "error: the sandbox could not run: {e:#}");
            1
        }
    }
}

fn random_token(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    s.truncate(n);
    s
}

async fn body(args: &SandboxArgs, dir: &Path, io: &mut Io<'_>) -> Result<i32> {
    let mut st = Stage { io };
    st.title("Starting local stand-ins (loopback only)");
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .context("starting moto")??;
    st.line(&format!(
        "AWS (moto {})            {}",
        keyrotor_standins::moto::MOTO_VERSION,
        moto.endpoint
    ));

    let sdk = moto.sdk_config().await;
    let aws = Aws::new(&sdk);
    let (old_id, old_secret) = aws_seed::user_with_key_in_secret(&sdk, USER, SECRET).await?;

    let pat = random_token(52);
    let mut endpoint = aws_endpoint("aws-prod", &old_id, &old_secret, &["Platform", "Web"]);
    endpoint["id"] = json!(ENDPOINT_ID);
    endpoint["authorization"]["parameters"]["roleSessionName"] = json!("aws-vsts-tools");
    let permissions = json!({
        "resource": {"type": "endpoint", "id": ENDPOINT_ID},
        "pipelines": [{"id": 12, "authorized": true}, {"id": 31, "authorized": true}],
        "allPipelines": {"authorized": false}
    });
    let seed = Seed::new().org(
        OrgSeed::new("contoso")
            .pat(&pat, Scope::Manage)
            .project("Platform")
            .project("Web")
            .endpoint(endpoint)
            .pipeline_permissions(ENDPOINT_ID, permissions),
    );
    let ado = AdoEmulator::start(seed)
        .await
        .context("starting the Azure DevOps emulator")?;
    st.line(&format!(
        "Azure DevOps (emulator)   {}",
        ado.org_url("contoso")
    ));
    let slack = SlackSink::start()
        .await
        .context("starting the Slack sink")?;
    st.line(&format!("Slack (sink)              {}/…", slack.base_url()));

    for (name, value) in [
        (PAT_PARAM, pat.as_str()),
        (WEBHOOK_PARAM, slack.webhook_url().as_str()),
    ] {
        aws.ssm()
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .with_context(|| format!("storing SSM parameter {name}"))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("keyrotor.toml");
    std::fs::write(&config, config_text(&ado.org_url("contoso"))).context("writing the config")?;

    st.title("Seeded");
    st.line(&format!("IAM user {USER} with one key, {}", mask(&old_id)));
    st.line(&format!("secret {SECRET} holding it (AWSCURRENT)"));
    st.line(&format!(
        "SSM SecureString {PAT_PARAM} (the PAT) and {WEBHOOK_PARAM} (the webhook)"
    ));
    st.line(&format!(
        "service connection aws-prod (id {ENDPOINT_ID}), type AWS, shared into Platform and Web,"
    ));
    st.line("  authorized for pipelines 12 and 31, holding the key");
    st.line(&format!("config {}", config.display()));

    let backend = RealBackend::with_aws(sdk.clone());
    let cfg = config.to_string_lossy().into_owned();
    let before = ado
        .endpoint("contoso", ENDPOINT_ID)
        .context("the seeded endpoint is missing")?;
    let perms_before = permissions_of(&ado);

    let status = ["status", "--config", &cfg];
    st.run("Before: keyrotor status", &status, &backend).await;

    let checked = st
        .run(
            "Preflight: keyrotor check   (read-only: can a rotation run?)",
            &["check", "--config", &cfg],
            &backend,
        )
        .await;
    if checked != 0 {
        st.title("Stopped: keyrotor check found a problem (see above); nothing was rotated.");
        return Ok(checked);
    }

    let code = st
        .run(
            "Rotating: keyrotor rotate --force   (--force: the seeded key is minutes old, younger than min_key_age)",
            &["rotate", "--config", &cfg, "--force"],
            &backend,
        )
        .await;

    st.run("After: keyrotor status", &status, &backend).await;

    st.title("Checks");
    let keys = aws.iam().list_access_keys().user_name(USER).send().await?;
    let active: Vec<String> = keys
        .access_key_metadata()
        .iter()
        .filter(|k| k.status() == Some(&aws_sdk_iam::types::StatusType::Active))
        .filter_map(|k| k.access_key_id().map(str::to_owned))
        .collect();
    let new_id = active.first().cloned().unwrap_or_default();
    let current = aws
        .secrets_client()
        .get_secret_value()
        .secret_id(SECRET)
        .version_stage("AWSCURRENT")
        .send()
        .await?;
    let current: Value =
        serde_json::from_str(current.secret_string().unwrap_or("{}")).unwrap_or_default();
    let after = ado.endpoint("contoso", ENDPOINT_ID).unwrap_or(Value::Null);
    let mut ok = true;
    ok &= st.check(
        active.len() == 1 && new_id != old_id,
        &format!("one Active key in IAM, the new one: {}", mask(&new_id)),
    );
    // The default grace (policy.delete_old_key_after, 3 days): retired means Inactive, so a
    // consumer nobody knew of can be given its key back (re-activate it); a later run deletes it.
    ok &= st.check(
        keys.access_key_metadata().iter().any(|k| {
            k.access_key_id() == Some(old_id.as_str())
                && k.status() == Some(&aws_sdk_iam::types::StatusType::Inactive)
        }),
        &format!(
            "the old key {} is Inactive (re-activate it to undo; deleted after policy.delete_old_key_after, 3d)",
            mask(&old_id)
        ),
    );
    ok &= st.check(
        current["AccessKeyId"] == json!(new_id),
        "AWSCURRENT holds the new key",
    );
    ok &= st.check(
        after["authorization"]["parameters"]["username"] == json!(new_id),
        "the service connection holds the new key",
    );
    ok &= st.check(
        after["id"] == before["id"],
        &format!("the service connection kept its id {ENDPOINT_ID} (updated in place)"),
    );
    ok &= st.check(
        without_credentials(&after) == without_credentials(&before),
        "every other field of the connection is unchanged",
    );
    ok &= st.check(
        permissions_of(&ado) == perms_before,
        "pipeline authorizations (12, 31) are intact",
    );

    st.title("The Slack message");
    let posts = slack.posts();
    match posts.last().and_then(|p| p.json.clone()) {
        Some(msg) => {
            for line in slack_as_text(&msg).lines() {
                st.line(line);
            }
        }
        None => {
            ok &= st.check(false, "Slack received a message");
        }
    }

    if args.keep {
        st.title("The stand-ins keep running (Ctrl-C stops them). In another terminal:");
        st.line(&format!(
            "export AWS_ENDPOINT_URL={} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1",
            moto.endpoint
        ));
        st.line(&format!("cargo run -p keyrotor -- status --config {cfg}"));
        st.line(&format!("cargo run -p keyrotor -- plan --config {cfg}"));
        st.line(&format!(
            "cargo run -p keyrotor -- rotate --config {cfg} --force"
        ));
        let _ = st.io.out.flush();
        let _ = tokio::signal::ctrl_c().await;
    }
    st.title(if ok && code == 0 {
        "Done: the key was rotated and every check holds."
    } else {
        "Done, with problems: see above."
    });
    drop((moto, ado, slack));
    Ok(if code != 0 {
        code
    } else if ok {
        0
    } else {
        1
    })
}

fn argv(args: &[&str]) -> Vec<std::ffi::OsString> {
    std::iter::once("keyrotor")
        .chain(args.iter().copied())
        .map(Into::into)
        .collect()
}

fn mask(id: &str) -> String {
    keyrotor_core::domain::AccessKeyId::parse(id).map_or_else(|_| "(none)".into(), |k| k.masked())
}

fn permissions_of(ado: &AdoEmulator) -> Option<Value> {
    ado.state()
        .org("contoso")
        .and_then(|o| o.pipeline_permissions.get(ENDPOINT_ID).cloned())
}

fn without_credentials(endpoint: &Value) -> Value {
    let mut e = endpoint.clone();
    if let Some(p) = e
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
    {
        p.remove("username");
        p.remove("password");
    }
    e
}

fn config_text(org: &str) -> String {
    format!(
        r#"# Written by `keyrotor sandbox`: every address is a local stand-in.
[ado]
organization = "{org}"
pat = "ssm:{PAT_PARAM}"

[slack]
webhook = "ssm:{WEBHOOK_PARAM}"

[policy]
verify_interval = "200ms"     # moto accepts a new key at once; real IAM takes 5-20 s
drain = "0s"                  # no pipeline job runs here: retire the old key at once (default 60m)

[[target]]
name = "platform-prod"
iam_user = "{USER}"
secret = "{SECRET}"
endpoints = [ {{ project = "Platform", name = "aws-prod" }}, {{ project = "Web", name = "aws-prod" }} ]
"#
    )
}

/// The posted Block Kit message as a terminal can show it.
fn slack_as_text(msg: &Value) -> String {
    let mut out = String::new();
    let text_of = |v: &Value| {
        v.get("text")
            .and_then(|t| t.as_str().or_else(|| t.get("text").and_then(Value::as_str)))
            .map(str::to_owned)
    };
    for b in msg["blocks"].as_array().into_iter().flatten() {
        if let Some(t) = text_of(b) {
            out.push_str(&t);
            out.push('\n');
        }
        for f in b["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(b["elements"].as_array().into_iter().flatten())
        {
            if let Some(t) = f["text"].as_str() {
                out.push_str(t);
                out.push('\n');
            }
        }
    }
    if out.is_empty() {
        out = msg["text"].as_str().unwrap_or("(empty message)").to_owned();
    }
    out
}
