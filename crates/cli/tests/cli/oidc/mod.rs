//! `keyrotor migrate-oidc` against moto (through the strict proxy) and the Azure DevOps emulator:
//! the plan changes nothing (every request a read), apply, rollback, finish and its refusals, a
//! user with managed, inline and group policies, a connection shared into two projects, a
//! provider that exists, a role a connection keeps, bad input; `crash`: a kill after every step.
//!
//! After every run, [`assert_every_connection_works`] checks from outside that each connection
//! either holds an Active key with its secret, or is on OIDC (key fields empty) with a role in
//! moto whose trust lets its subjects in (keyrotor's evaluator, `trust_allows`).
//!
//! What moto cannot show (reported, not faked): it does not implement
//! `AddClientIDToOpenIDConnectProvider`, and its `AssumeRoleWithWebIdentity` checks neither the
//! token nor the trust policy; the tests call it to make IAM record the role's use
//! (`RoleLastUsed`), as a pipeline on OIDC would.

mod carried;
mod crash;
mod flows;
mod surface;

use keyrotor_core::oidc::{self, AUDIENCE};
use keyrotor_testkit::env::{Connections, ORG, Output, TARGET, TestEnv, USER};
use serde_json::Value;

/// The role keyrotor creates for the env's target.
pub fn own_role_name() -> String {
    oidc::role_name(&keyrotor_core::domain::TargetName::parse(TARGET).unwrap())
}

/// Its ARN in moto's account.
pub fn own_role_arn() -> String {
    format!("arn:aws:iam::123456789012:role/{}", own_role_name())
}

/// The organization's issuer path (`vstoken.dev.azure.com/{id}`).
pub fn issuer(env: &TestEnv) -> String {
    oidc::issuer_path(&env.ado_state().org(ORG).unwrap().id)
}

/// The provider's ARN in moto's account.
pub fn provider_arn(env: &TestEnv) -> String {
    format!("arn:aws:iam::123456789012:oidc-provider/{}", issuer(env))
}

/// `keyrotor migrate-oidc --config … --target platform-prod EXTRA…`.
pub async fn migrate(env: &TestEnv, extra: &[&str]) -> Output {
    let config = env.config.to_string_lossy().into_owned();
    let mut args = vec!["migrate-oidc", "--config", &config, "--target", TARGET];
    args.extend_from_slice(extra);
    env.run(&args).await
}

/// `migrate` that must exit with `code`.
pub async fn migrate_exits(env: &TestEnv, extra: &[&str], code: i32) -> Output {
    let o = migrate(env, extra).await;
    assert_eq!(o.code, code, "migrate-oidc {extra:?}: {}", o.show());
    o
}

/// An env whose two connections are separate objects (not one shared connection).
pub async fn separate() -> TestEnv {
    crate::setup()
        .connections(Connections::Separate)
        .start()
        .await
}

/// The env's connections without an `assumeRoleArn` (the shared one has one by default).
pub fn without_roles(eps: &mut Vec<Value>) {
    for ep in eps {
        ep["authorization"]["parameters"]["assumeRoleArn"] = Value::String(String::new());
    }
}

/// A role's trust policy and `RoleLastUsed`, straight from moto; `None` if it does not exist.
pub async fn role(env: &TestEnv, name: &str) -> Option<(Value, bool)> {
    let got = env.iam.get_role().role_name(name).send().await.ok()?;
    let r = got.role()?;
    let trust = oidc::parse_policy_document(r.assume_role_policy_document().unwrap_or("{}"))
        .expect("a trust policy is JSON");
    let used = r
        .role_last_used()
        .and_then(|u| u.last_used_date())
        .is_some();
    Some((trust, used))
}

fn param<'a>(ep: &'a Value, name: &str) -> &'a str {
    ep["authorization"]["parameters"][name]
        .as_str()
        .unwrap_or_default()
}

/// The subjects of a stored connection: one per project it is in, with its name there.
pub fn subjects(env: &TestEnv, ep: &Value) -> Vec<String> {
    let state = env.ado_state();
    let org = state.org(ORG).unwrap();
    ep["serviceEndpointProjectReferences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let id = r["projectReference"]["id"].as_str().unwrap_or_default();
            let project = org
                .projects
                .iter()
                .find(|p| p.id == id)
                .map(|p| p.name.clone())
                .unwrap();
            let name = r["name"]
                .as_str()
                .unwrap_or_else(|| ep["name"].as_str().unwrap());
            oidc::subject(ORG, &project, name)
        })
        .collect()
}

/// How a connection stands, checked: `Some(role arn)` on OIDC, `None` on the key.
pub async fn check_connection(env: &TestEnv, ep: &Value) -> Option<String> {
    let name = ep["name"].as_str().unwrap_or_default().to_owned();
    let aws = env.aws_state().await;
    if param(ep, "useOIDC").eq_ignore_ascii_case("true") {
        for cleared in ["username", "password", "sessionToken"] {
            assert_eq!(
                param(ep, cleared),
                "",
                "{name} on OIDC keeps no {cleared}: {ep:#}"
            );
        }
        let arn = param(ep, "assumeRoleArn").to_owned();
        let role_name = arn.rsplit('/').next().unwrap();
        let (trust, _) = role(env, role_name)
            .await
            .unwrap_or_else(|| panic!("{name} is on OIDC with role {arn}, which exists"));
        for s in subjects(env, ep) {
            assert!(
                oidc::trust_allows(&trust, &provider_arn(env), &issuer(env), &s),
                "the trust of {arn} lets {s} in: {trust:#}"
            );
        }
        let providers = env
            .iam
            .list_open_id_connect_providers()
            .send()
            .await
            .unwrap();
        assert!(
            providers
                .open_id_connect_provider_list()
                .iter()
                .any(|p| p.arn() == Some(provider_arn(env).as_str())),
            "the provider exists"
        );
        Some(arn)
    } else {
        let key = param(ep, "username");
        assert_eq!(
            aws.keys.get(key).map(String::as_str),
            Some("Active"),
            "{name} holds an Active key: {ep:#}"
        );
        assert_eq!(
            param(ep, "password"),
            env.initial_secret,
            "{name} holds the key's secret"
        );
        assert_eq!(param(ep, "sessionToken"), "", "{name} has no session token");
        None
    }
}

/// Every connection of the organization works: on an Active key, or on OIDC with a role that
/// trusts it. Returns how many are on OIDC.
pub async fn assert_every_connection_works(env: &TestEnv) -> usize {
    let mut on_oidc = 0;
    for ep in env.ado_state().org(ORG).unwrap().endpoints.clone() {
        on_oidc += usize::from(check_connection(env, &ep).await.is_some());
    }
    on_oidc
}

/// What a pipeline on OIDC does (`AssumeRoleWithWebIdentity`, then a call with the role's
/// credentials), so that IAM records the role's use.
pub async fn pipeline_assumes(env: &TestEnv, role_arn: &str) {
    let arn = keyrotor_standins::pipeline::assume_with_web_identity(&env.sdk, role_arn)
        .await
        .expect("moto accepts AssumeRoleWithWebIdentity");
    assert!(arn.contains(":assumed-role/"), "{arn}");
    assert!(
        role(env, role_arn.rsplit('/').next().unwrap())
            .await
            .unwrap()
            .1,
        "moto records the role's use"
    );
}

/// The operations the binary sent to AWS (through the proxy) that change something.
pub fn aws_writes(env: &TestEnv) -> Vec<String> {
    env.proxy()
        .counts()
        .into_keys()
        .filter(|op| {
            !["Get", "List", "Describe"]
                .iter()
                .any(|p| op.starts_with(p))
        })
        .collect()
}

/// The one error line of a run that failed.
pub fn one_error(o: &Output) -> String {
    let errors = o.errors();
    assert_eq!(errors.len(), 1, "one error line: {}", o.show());
    errors[0].to_owned()
}

/// The user the env seeds.
pub const IAM_USER: &str = USER;
/// Azure DevOps' audience.
pub const AUD: &str = AUDIENCE;
