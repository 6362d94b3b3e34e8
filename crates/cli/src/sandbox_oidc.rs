//! `keyrotor sandbox --oidc`: the move from an access key to OIDC on this machine, against moto
//! and the Azure DevOps emulator (whose `connectionData` answers an organization id).
//!
//! Seeds an IAM user with one key (kept in its secret), a managed and an inline policy, and an
//! AWS connection holding the key, shared into two projects; then runs the normal
//! `keyrotor migrate-oidc` code paths: the plan, `--apply`, `--rollback`, `--apply` again, a
//! pipeline job on OIDC (moto accepts the web identity call), and `--finish`, checking the
//! world after each.

use std::path::Path;

use anyhow::{Context, Result};
use keyrotor_aws::Aws;
use keyrotor_standins::ado::{AdoEmulator, OrgSeed, Scope, Seed, aws_endpoint};
use keyrotor_standins::moto::Moto;
use keyrotor_standins::names::{PAT_PARAM, SECRET, USER};
use keyrotor_standins::{aws_seed, pipeline};
use serde_json::{Value, json};

use crate::Io;
use crate::backend::RealBackend;

const ENDPOINT_ID: &str = "5e2b7c1d-0a4f-4c3e-9d8b-aa51c0ffee01";
const ORG_ID: &str = "7d4c1f0a-5b6e-4a3d-9c2b-0123456789ab";
const ROLE: &str = "keyrotor-oidc-platform-prod";

fn say(io: &mut Io<'_>, text: &str) {
    let _ = writeln!(io.out, "{text}");
}

fn check(io: &mut Io<'_>, ok: bool, text: &str) -> bool {
    let _ = writeln!(io.out, "   {} {text}", if ok { "✓" } else { "✗" });
    ok
}

/// Says `title`, then runs keyrotor with `args` against the stand-ins; whether it exited 0.
async fn titled_run(
    io: &mut Io<'_>,
    backend: &RealBackend,
    title: &str,
    args: Vec<std::ffi::OsString>,
) -> bool {
    say(io, title);
    Box::pin(crate::run(args, backend, io)).await == 0
}

fn argv(args: &[&str]) -> Vec<std::ffi::OsString> {
    std::iter::once("keyrotor")
        .chain(args.iter().copied())
        .map(Into::into)
        .collect()
}

fn param<'a>(ep: &'a Value, name: &str) -> &'a str {
    ep["authorization"]["parameters"][name]
        .as_str()
        .unwrap_or_default()
}

/// Runs the OIDC sandbox in `dir`. Returns the exit code.
pub(crate) async fn body(dir: &Path, io: &mut Io<'_>) -> Result<i32> {
    say(io, "\n━━ Starting local stand-ins (loopback only)");
    let moto = tokio::task::spawn_blocking(Moto::start)
        .await
        .context("starting moto")??;
    let sdk = moto.sdk_config().await;
    let aws = Aws::new(&sdk);
    let (key_id, key_secret) = aws_seed::user_with_key_in_secret(&sdk, USER, SECRET).await?;
    let doc = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::deploy-artifacts/*"}]});
    let policy = aws
        .iam()
        .create_policy()
        .policy_name("deploy-artifacts")
        .policy_document(doc.to_string())
        .send()
        .await?;
    let policy_arn = policy.policy().and_then(|p| p.arn()).unwrap_or_default();
    aws.iam()
        .attach_user_policy()
        .user_name(USER)
        .policy_arn(policy_arn)
        .send()
        .await?;
    let inline = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "cloudfront:CreateInvalidation", "Resource": "*"}]});
    aws.iam()
        .put_user_policy()
        .user_name(USER)
        .policy_name("invalidate")
        .policy_document(inline.to_string())
        .send()
        .await?;

    let pat = uuid::Uuid::new_v4().simple().to_string();
    let mut endpoint = aws_endpoint("aws-prod", &key_id, &key_secret, &["Platform", "Web"]);
    endpoint["id"] = json!(ENDPOINT_ID);
    let seed = Seed::new().org(
        OrgSeed::new("contoso")
            .with_id(ORG_ID)
            .pat(&pat, Scope::Manage)
            .project("Platform")
            .project("Web")
            .endpoint(endpoint)
            .pipeline_permissions(
                ENDPOINT_ID,
                json!({"pipelines": [{"id": 12, "authorized": true}]}),
            ),
    );
    let ado = AdoEmulator::start(seed)
        .await
        .context("starting the Azure DevOps emulator")?;
    aws_seed::secure_parameters(&sdk, &[(PAT_PARAM, pat.clone())]).await?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = dir.join("keyrotor.toml");
    std::fs::write(&config, config_text(&ado.org_url("contoso"))).context("writing the config")?;
    say(
        io,
        &format!(
            "   AWS (moto) {}, Azure DevOps (emulator) {}",
            moto.endpoint,
            ado.org_url("contoso")
        ),
    );
    say(
        io,
        &format!("   IAM user {USER} (a managed and an inline policy), its key in {SECRET};"),
    );
    say(
        io,
        "   service connection aws-prod holding the key, shared into Platform and Web",
    );

    let backend = RealBackend::with_aws(sdk.clone());
    let cfg = config.to_string_lossy().into_owned();
    let base = [
        "migrate-oidc",
        "--config",
        cfg.as_str(),
        "--target",
        "platform-prod",
    ];
    let run = |extra: &'static [&'static str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        argv(&a)
    };
    let before = ado
        .endpoint("contoso", ENDPOINT_ID)
        .context("the seeded endpoint")?;
    let mut ok = true;

    ok &= titled_run(
        io,
        &backend,
        "\n━━ The plan: keyrotor migrate-oidc --target platform-prod   (changes nothing)",
        run(&[]),
    )
    .await;
    ok &= titled_run(
        io,
        &backend,
        "\n━━ keyrotor migrate-oidc --target platform-prod --apply",
        run(&["--apply"]),
    )
    .await;
    let ep = ado.endpoint("contoso", ENDPOINT_ID).unwrap_or(Value::Null);
    ok &= check(
        io,
        param(&ep, "useOIDC") == "true" && param(&ep, "assumeRoleArn").ends_with(ROLE),
        "the connection is on OIDC with the new role",
    );
    ok &= check(
        io,
        ["username", "password", "sessionToken"]
            .iter()
            .all(|f| param(&ep, f).is_empty()),
        "its username, password and session token are cleared (\"\")",
    );
    ok &= check(
        io,
        ep["id"] == before["id"],
        "it kept its id (updated in place)",
    );
    ok &= check(
        io,
        active_keys(&aws).await? == vec![key_id.clone()],
        "the key stays Active for a rollback",
    );

    ok &= titled_run(
        io,
        &backend,
        "\n━━ keyrotor migrate-oidc --target platform-prod --rollback",
        run(&["--rollback"]),
    )
    .await;
    let ep = ado.endpoint("contoso", ENDPOINT_ID).unwrap_or(Value::Null);
    ok &= check(
        io,
        param(&ep, "username") == key_id
            && param(&ep, "password") == key_secret
            && param(&ep, "useOIDC") != "true",
        "the connection is back on the key, its secret stored again",
    );

    ok &= titled_run(
        io,
        &backend,
        "\n━━ --apply again, a pipeline job on OIDC, then --finish",
        run(&["--apply"]),
    )
    .await;
    let role_arn = format!("arn:aws:iam::123456789012:role/{ROLE}");
    let as_whom = pipeline::assume_with_web_identity(&sdk, &role_arn).await?;
    say(
        io,
        &format!("   a pipeline job assumed the role with its OIDC token: {as_whom}"),
    );
    ok &= Box::pin(crate::run(run(&["--finish"]), &backend, io)).await == 0;

    say(io, "\n━━ Checks");
    let ep = ado.endpoint("contoso", ENDPOINT_ID).unwrap_or(Value::Null);
    ok &= check(
        io,
        active_keys(&aws).await?.is_empty(),
        "the user has no access key left",
    );
    ok &= check(
        io,
        param(&ep, "useOIDC") == "true" && param(&ep, "password").is_empty(),
        "the connection uses OIDC and stores no secret",
    );
    ok &= check(
        io,
        ep["id"] == before["id"]
            && ep["serviceEndpointProjectReferences"] == before["serviceEndpointProjectReferences"],
        "same id, still shared into Platform and Web",
    );
    let attached = aws
        .iam()
        .list_attached_role_policies()
        .role_name(ROLE)
        .send()
        .await?;
    let inl = aws
        .iam()
        .list_role_policies()
        .role_name(ROLE)
        .send()
        .await?;
    ok &= check(
        io,
        attached
            .attached_policies()
            .iter()
            .any(|p| p.policy_arn() == Some(policy_arn))
            && inl.policy_names().iter().any(|n| n == "invalidate"),
        "the role has the user's managed and inline policies",
    );
    say(
        io,
        if ok {
            "\n━━ Done: the connection moved to OIDC, and every check holds."
        } else {
            "\n━━ Done, with problems: see above."
        },
    );
    drop((moto, ado));
    Ok(if ok { 0 } else { 1 })
}

async fn active_keys(aws: &Aws) -> Result<Vec<String>> {
    let keys = aws.iam().list_access_keys().user_name(USER).send().await?;
    Ok(keys
        .access_key_metadata()
        .iter()
        .filter(|k| k.status() == Some(&aws_sdk_iam::types::StatusType::Active))
        .filter_map(|k| k.access_key_id().map(str::to_owned))
        .collect())
}

fn config_text(org: &str) -> String {
    format!(
        r#"# Written by `keyrotor sandbox --oidc`: every address is a local stand-in.
[ado]
organization = "{org}"
pat = "ssm:{PAT_PARAM}"

[policy]
verify_interval = "200ms"     # the pause after a role or trust change (real IAM: seconds)
drain = "0s"                  # no pipeline job runs here: finish may retire the key at once

[[target]]
name = "platform-prod"
iam_user = "{USER}"
secret = "{SECRET}"
endpoints = [ {{ project = "Platform", name = "aws-prod" }} ]
"#
    )
}
