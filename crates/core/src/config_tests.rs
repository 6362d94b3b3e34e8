//! Tests of `config`.
use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("keyrotor.toml"), text)
}

/// The error parsing `text` fails with, which must name `field`.
fn refused_at(text: &str, field: &str) -> ConfigError {
    let e = parse(text).unwrap_err();
    assert_eq!(e.field.as_deref(), Some(field), "{e:?}");
    e
}

const MINIMAL: &str = r#"
[ado]
organization = "https://dev.azure.com/contoso"
pat = "ssm:/azuredevops/pat"

[[target]]
name = "platform-prod"
iam_user = "azure-devops-pipeline"
secret = "/azure/devops/agent/iam/accesskey"
endpoints = [ { project = "Platform", name = "aws-prod" } ]
"#;

#[test]
fn the_example_config_parses() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.targets.len(), 1);
    assert_eq!(c.targets[0].endpoints.len(), 2);
    assert_eq!(c.policy.min_key_age, Duration::from_secs(6 * 86400));
}

#[test]
fn defaults_apply_when_policy_is_absent() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.policy, Policy::default());
    assert_eq!(
        c.targets[0].organization.as_str(),
        "https://dev.azure.com/contoso"
    );
    assert!(c.slack_webhook.is_none());
}

#[test]
fn a_literal_pat_is_refused_with_file_line_and_field() {
    let text = MINIMAL.replace("ssm:/azuredevops/pat", "abcdefghijklmnop1234");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.line, Some(4));
    assert_eq!(e.field.as_deref(), Some("ado.pat"));
    let shown = e.to_string();
    assert!(shown.starts_with("keyrotor.toml:4: ado.pat: "), "{shown}");
    assert!(!shown.contains("abcdefghijklmnop1234"), "{shown}");
}

#[test]
fn unknown_keys_are_named() {
    let text = MINIMAL.replace("[ado]", "[ado]\nregion = \"x\"");
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("unknown field `region`"), "{e}");
    assert_eq!(e.line, Some(3));
}

#[test]
fn a_missing_target_field_is_named() {
    let text = MINIMAL.replace("iam_user = \"azure-devops-pipeline\"\n", "");
    let e = parse(&text).unwrap_err();
    assert!(e.message.contains("missing field `iam_user`"), "{e}");
    assert!(e.line.is_some());
}

#[test]
fn duplicate_target_names_are_refused() {
    let second = &MINIMAL[MINIMAL.find("[[target]]").unwrap()..];
    let e = refused_at(&format!("{MINIMAL}{second}"), "target[1].name");
    assert!(e.message.contains("used twice"));
    assert_eq!(e.line, Some(12));
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let text = MINIMAL.replace("https://dev.azure.com", "http://dev.azure.com");
    let e = refused_at(&text, "ado.organization");
    assert!(e.message.contains("plain http"));
}

#[test]
fn malformed_toml_names_the_line() {
    let e = parse("[ado\norganization = 1").unwrap_err();
    assert_eq!(e.line, Some(1));
}

#[test]
fn an_endpoint_needs_exactly_one_of_name_or_id() {
    let text = MINIMAL.replace("name = \"aws-prod\"", "name = \"a\", id = \"b\"");
    refused_at(&text, "target[0].endpoints[0]");
}

#[test]
fn bad_durations_are_named() {
    let text = format!("{MINIMAL}\n[policy]\nmin_key_age = \"a week\"\n");
    let e = refused_at(&text, "policy.min_key_age");
    assert!(e.message.contains("not a duration"));
}

#[test]
fn unknown_targets_are_refused_by_select() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.select(&["nope".into()]).unwrap_err().contains("nope"));
    assert_eq!(c.select(&[]).unwrap().len(), 1);
}

/// MINIMAL and a second target with this user and secret.
fn two_targets(user: &str, secret: &str) -> String {
    format!(
        "{MINIMAL}\n[[target]]\nname = \"web-prod\"\niam_user = \"{user}\"\n\
         secret = \"{secret}\"\nendpoints = [ {{ project = \"Web\", name = \"aws\" }} ]\n"
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    text[..text.rfind(needle).unwrap()].lines().count() + 1
}

#[test]
fn two_targets_rotating_one_iam_user_are_refused_whatever_the_case() {
    let text = two_targets("Azure-DevOps-Pipeline", "/other/secret");
    let e = refused_at(&text, "target[1].iam_user");
    assert_eq!(e.line, Some(line_of(&text, "iam_user = \"Azure")));
    let shown = e.to_string();
    let start = format!("keyrotor.toml:{}: target[1].iam_user: ", e.line.unwrap());
    assert!(shown.starts_with(&start), "{shown}");
    for part in [
        "'platform-prod'",
        "'web-prod'",
        "'Azure-DevOps-Pipeline'",
        "'azure-devops-pipeline'",
    ] {
        assert!(e.message.contains(part), "{part}: {shown}");
    }

    let e = refused_at(
        &two_targets("azure-devops-pipeline", "/other/secret"),
        "target[1].iam_user",
    );
    assert!(!e.message.contains("ignore case"), "{e}");
}

#[test]
fn two_targets_keeping_one_secret_are_refused() {
    let text = two_targets("other-user", "/azure/devops/agent/iam/accesskey");
    let e = refused_at(&text, "target[1].secret");
    assert_eq!(e.line, Some(line_of(&text, "secret = ")));
    for part in [
        "'platform-prod'",
        "'web-prod'",
        "'/azure/devops/agent/iam/accesskey'",
    ] {
        assert!(e.message.contains(part), "{part}: {e}");
    }
}

#[test]
fn an_arn_and_a_name_of_one_secret_are_one_secret() {
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:/azure/devops/agent/iam/accesskey-AbC123";
    let e = refused_at(&two_targets("other-user", arn), "target[1].secret");
    assert!(
        e.message.contains("'platform-prod'") && e.message.contains(arn),
        "{e}"
    );
    assert!(
        e.message.contains("'/azure/devops/agent/iam/accesskey'"),
        "{e}"
    );

    // A partial ARN (no random suffix) names the same secret too.
    let partial =
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:/azure/devops/agent/iam/accesskey";
    assert!(parse(&two_targets("other-user", partial)).is_err());

    // With aws.region set, an ARN in that region is the named secret; in another it is not.
    let in_region = |region: &str, secret: &str| {
        let text = two_targets("other-user", secret);
        parse(&format!("[aws]\nregion = \"{region}\"\n{text}"))
    };
    assert!(in_region("eu-west-1", arn).is_err());
    assert!(in_region("us-east-1", arn).is_ok());

    // Two ARNs of one secret (full and partial), in one region and account.
    let text = two_targets("other-user", partial).replace(
        "secret = \"/azure/devops/agent/iam/accesskey\"",
        &format!("secret = \"{arn}\""),
    );
    assert!(parse(&text).is_err());
    // The same name in another account is another secret.
    let text = two_targets(
        "other-user",
        &partial.replace("123456789012", "210987654321"),
    )
    .replace(
        "secret = \"/azure/devops/agent/iam/accesskey\"",
        &format!("secret = \"{arn}\""),
    );
    assert!(parse(&text).is_ok());
}

#[test]
fn different_users_and_secrets_are_fine() {
    let c = parse(&two_targets("other-user", "/other/secret")).unwrap();
    assert_eq!(c.targets.len(), 2);
    // Secret names are case-sensitive: these are two secrets.
    assert!(
        parse(&two_targets(
            "other-user",
            "/Azure/devops/agent/iam/accesskey"
        ))
        .is_ok()
    );
    // The suffix of another secret's ARN is not this name's.
    let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:/azure/devops/agent/iam/accesskey-2-AbC123";
    assert!(parse(&two_targets("other-user", arn)).is_ok());
    // An ARN that is not a Secrets Manager secret's compares as written.
    assert!(
        parse(&two_targets(
            "other-user",
            "arn:aws:ssm:eu-west-1:123456789012:secret:/azure/devops/agent/iam/accesskey"
        ))
        .is_ok()
    );
}

#[test]
fn updating_unlisted_connections_is_opt_in_and_a_bool() {
    assert!(!parse(MINIMAL).unwrap().policy.update_unlisted_connections);
    let on = format!("{MINIMAL}\n[policy]\nupdate_unlisted_connections = true\n");
    assert!(parse(&on).unwrap().policy.update_unlisted_connections);
    let bad = format!("{MINIMAL}\n[policy]\nupdate_unlisted_connections = \"yes\"\n");
    let e = parse(&bad).unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("policy.update_unlisted_connections")
    );
    assert!(e.message.contains("not true or false"), "{e}");
}
