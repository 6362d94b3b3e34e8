use serde_json::json;

use super::*;
use crate::domain::{AccessKeyId, OrgUrl, ProjectName, TargetName};
use crate::oidc_plan::{Observed, PlanError, ProviderStep, RoleKind, plan};
use crate::oidc_ports::{ConnectionAuth, OidcProvider, Role};
use crate::ports::EndpointHandle;

const ORG_ID: &str = "0f3c2b1a-1111-4222-8333-444455556666";
const USER_ARN: &str = "arn:aws:iam::123456789012:user/azure-devops-pipeline";
const PROVIDER: &str = "arn:aws:iam::123456789012:oidc-provider/vstoken.dev.azure.com/0f3c2b1a-1111-4222-8333-444455556666";

fn issuer() -> String {
    issuer_path(ORG_ID)
}

/// IAM's provider for the organization, with these audiences.
fn provider(audiences: &[&str]) -> Option<OidcProvider> {
    Some(OidcProvider {
        arn: PROVIDER.into(),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
    })
}

#[test]
fn the_organization_name_comes_from_either_url_form() {
    let name = |u: &str| organization_name(&OrgUrl::parse(u).unwrap());
    assert_eq!(name("https://dev.azure.com/contoso"), "contoso");
    assert_eq!(name("https://dev.azure.com/contoso/"), "contoso");
    assert_eq!(name("http://127.0.0.1:4000/contoso"), "contoso");
    assert_eq!(name("https://fabrikam.visualstudio.com"), "fabrikam");
}

#[test]
fn subjects_and_issuer_are_shaped_as_azure_devops_issues_them() {
    assert_eq!(
        subject("contoso", "Platform", "aws-prod"),
        "sc://contoso/Platform/aws-prod"
    );
    assert_eq!(issuer(), format!("vstoken.dev.azure.com/{ORG_ID}"));
}

#[test]
fn the_trust_policy_names_exactly_the_audience_and_the_subjects() {
    let subjects = vec!["sc://c/Web/b".to_owned(), "sc://c/Platform/a".to_owned()];
    let doc = trust_policy("Sid1", PROVIDER, &issuer(), &subjects);
    let cond = &doc["Statement"][0]["Condition"]["StringEquals"];
    assert_eq!(cond[format!("{}:aud", issuer())], json!(AUDIENCE));
    assert_eq!(
        cond[format!("{}:sub", issuer())],
        json!(["sc://c/Platform/a", "sc://c/Web/b"]),
        "sorted, each once"
    );
    assert_eq!(
        doc["Statement"][0]["Principal"]["Federated"],
        json!(PROVIDER)
    );
    assert_eq!(doc["Statement"].as_array().unwrap().len(), 1);
    for s in &subjects {
        assert!(trust_allows(&doc, PROVIDER, &issuer(), s));
    }
    assert!(!trust_allows(
        &doc,
        PROVIDER,
        &issuer(),
        "sc://c/Platform/other"
    ));
    assert!(!trust_allows(
        &doc,
        "arn:aws:iam::1:oidc-provider/x",
        &issuer(),
        &subjects[0]
    ));
}

#[test]
fn an_unknown_condition_operator_or_a_deny_means_not_trusted() {
    let s = "sc://c/P/a";
    let mut doc = trust_policy("S", PROVIDER, &issuer(), &[s.to_owned()]);
    assert!(trust_allows(&doc, PROVIDER, &issuer(), s));
    let mut odd = doc.clone();
    odd["Statement"][0]["Condition"]["NumericLessThan"] = json!({"x": "1"});
    assert!(!trust_allows(&odd, PROVIDER, &issuer(), s));
    doc["Statement"].as_array_mut().unwrap().push(json!({
        "Effect": "Deny", "Principal": {"Federated": PROVIDER},
        "Action": "sts:AssumeRoleWithWebIdentity"
    }));
    assert!(!trust_allows(&doc, PROVIDER, &issuer(), s));
}

#[test]
fn string_like_patterns_are_matched_as_iam_does() {
    let doc = json!({"Statement": [{
        "Effect": "Allow", "Principal": {"Federated": [PROVIDER]},
        "Action": ["sts:AssumeRoleWithWebIdentity"],
        "Condition": {"StringLike": {format!("{}:sub", issuer()): "sc://c/*/aws-?"}}
    }]});
    assert!(trust_allows(&doc, PROVIDER, &issuer(), "sc://c/Web/aws-1"));
    assert!(!trust_allows(
        &doc,
        PROVIDER,
        &issuer(),
        "sc://c/Web/aws-12"
    ));
}

#[test]
fn adding_the_statement_keeps_every_other_statement_and_earlier_subjects() {
    let theirs = json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:user/u"}, "Action": "sts:AssumeRole"});
    let existing = json!({"Version": "2012-10-17", "Statement": [theirs.clone()]});
    let once = with_statement(&existing, "S", PROVIDER, &issuer(), &["sc://c/P/a".into()]);
    let twice = with_statement(&once, "S", PROVIDER, &issuer(), &["sc://c/P/b".into()]);
    let statements = twice["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2);
    assert_eq!(statements[0], theirs);
    assert!(trust_allows(&twice, PROVIDER, &issuer(), "sc://c/P/a"));
    assert!(trust_allows(&twice, PROVIDER, &issuer(), "sc://c/P/b"));
    assert_eq!(
        with_statement(&twice, "S", PROVIDER, &issuer(), &["sc://c/P/b".into()]),
        twice
    );
}

#[test]
fn policy_documents_are_read_url_encoded_or_not() {
    let doc = json!({"Version": "2012-10-17", "Statement": []});
    assert_eq!(parse_policy_document(&doc.to_string()), Some(doc.clone()));
    let encoded = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%5D%7D";
    assert_eq!(parse_policy_document(encoded), Some(doc));
    assert_eq!(parse_policy_document("not json"), None);
}

#[test]
fn a_role_gets_each_managed_policy_once_and_group_inline_policies_under_their_group() {
    let p = Permissions {
        managed: vec![
            ("arn:aws:iam::aws:policy/B".into(), Source::User),
            (
                "arn:aws:iam::aws:policy/A".into(),
                Source::Group("g".into()),
            ),
            (
                "arn:aws:iam::aws:policy/B".into(),
                Source::Group("g".into()),
            ),
        ],
        inline: vec![
            (
                InlinePolicy {
                    name: "deploy".into(),
                    document: json!({"a": 1}),
                },
                Source::User,
            ),
            (
                InlinePolicy {
                    name: "deploy".into(),
                    document: json!({"b": 2}),
                },
                Source::Group("g".into()),
            ),
        ],
        ..Permissions::default()
    };
    let r = p.for_role();
    assert_eq!(
        r.managed,
        vec!["arn:aws:iam::aws:policy/A", "arn:aws:iam::aws:policy/B"]
    );
    let names: Vec<&str> = r.inline.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["deploy", "g.deploy"]);
}

#[test]
fn the_record_holds_no_secret_and_round_trips() {
    let rec = MigrationRecord {
        version: MigrationRecord::VERSION,
        target: "t".into(),
        phase: Phase::Applied,
        key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        provider_arn: PROVIDER.into(),
        created_role: Some("arn:aws:iam::123456789012:role/r".into()),
        connections: vec![],
        switched_at: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
        oidc_only: vec![],
    };
    let mut rec = rec;
    rec.set_oidc_only(
        "arn:aws:iam::123456789012:role/r",
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_100)),
    );
    let text = serde_json::to_string(&rec).unwrap();
    assert!(text.contains("\"phase\":\"applied\""), "{text}");
    assert_eq!(serde_json::from_str::<MigrationRecord>(&text).unwrap(), rec);
}

fn conn(id: &str, projects: &[(&str, &str)], assume_role: &str, use_oidc: &str) -> ConnectionAuth {
    ConnectionAuth {
        handle: EndpointHandle {
            org: OrgUrl::parse("https://dev.azure.com/contoso").unwrap(),
            project: ProjectName::parse(projects[0].0).unwrap(),
            id: crate::domain::EndpointId::parse(id).unwrap(),
        },
        name: projects[0].1.into(),
        kind: "AWS".into(),
        projects: projects
            .iter()
            .map(|(p, n)| ((*p).into(), (*n).into()))
            .collect(),
        username: (use_oidc != "true").then(|| "AKIAIOSFODNN7EXAMPLE".into()),
        use_oidc: use_oidc.into(),
        assume_role: assume_role.into(),
    }
}

fn observed(connections: Vec<ConnectionAuth>) -> Observed {
    Observed {
        target: TargetName::parse("platform-prod").unwrap(),
        org_name: "contoso".into(),
        org_id: ORG_ID.into(),
        account_prefix: "arn:aws:iam::123456789012".into(),
        user_arn: USER_ARN.into(),
        connections,
        key: AccessKeyId::parse("AKIAIOSFODNN7EXAMPLE").unwrap(),
        provider: None,
        own_role: None,
        roles: vec![],
        permissions: Permissions::default(),
        resource_policies: vec![],
        given_role: None,
        record: None,
    }
}

#[test]
fn a_shared_connection_is_trusted_in_every_project_it_is_in() {
    let o = observed(vec![conn(
        "e1",
        &[("Platform", "aws-prod"), ("Web", "aws-web")],
        "",
        "",
    )]);
    let p = plan(&o).unwrap();
    assert_eq!(p.provider, ProviderStep::Create);
    assert_eq!(p.provider_arn, PROVIDER);
    assert_eq!(p.roles.len(), 1);
    assert_eq!(p.roles[0].kind, RoleKind::Create);
    assert_eq!(
        p.roles[0].arn,
        "arn:aws:iam::123456789012:role/keyrotor-oidc-platform-prod"
    );
    assert_eq!(
        p.switches[0].subjects,
        vec!["sc://contoso/Platform/aws-prod", "sc://contoso/Web/aws-web"]
    );
    for s in &p.switches[0].subjects {
        assert!(trust_allows(&p.roles[0].trust, PROVIDER, &p.issuer, s));
    }
}

#[test]
fn a_connection_that_assumes_a_role_keeps_it_and_its_trust_gets_the_subject() {
    let kept = "arn:aws:iam::123456789012:role/deploy";
    let mut o = observed(vec![conn("e1", &[("Platform", "aws-prod")], kept, "")]);
    o.provider = provider(&[AUDIENCE]);
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:user/u"}, "Action": "sts:AssumeRole"}]});
    o.roles = vec![(
        kept.into(),
        Some(Role {
            arn: kept.into(),
            name: "deploy".into(),
            trust: theirs,
            last_used: None,
            boundary: None,
        }),
    )];
    let p = plan(&o).unwrap();
    assert_eq!(p.provider, ProviderStep::Reuse);
    assert_eq!(p.roles.len(), 1, "no role is created");
    assert_eq!(p.roles[0].kind, RoleKind::Kept);
    assert!(p.roles[0].trust_changes);
    assert_eq!(p.roles[0].trust["Statement"].as_array().unwrap().len(), 2);
    assert_eq!(
        p.roles[0].permissions, None,
        "its permissions are what pipelines use today"
    );
}

#[test]
fn a_given_role_whose_trust_misses_a_subject_is_bad_input() {
    let given = "arn:aws:iam::123456789012:role/mine";
    let mut o = observed(vec![conn(
        "e1",
        &[("Platform", "aws-prod"), ("Web", "aws-prod")],
        "",
        "",
    )]);
    o.given_role = Some(given.into());
    let only_platform = trust_policy(
        "S",
        PROVIDER,
        &issuer(),
        &["sc://contoso/Platform/aws-prod".into()],
    );
    o.roles = vec![(
        given.into(),
        Some(Role {
            arn: given.into(),
            name: "mine".into(),
            trust: only_platform,
            last_used: None,
            boundary: None,
        }),
    )];
    match plan(&o) {
        Err(PlanError::Invalid(m)) => assert!(m.contains("sc://contoso/Web/aws-prod"), "{m}"),
        other => panic!("{other:?}"),
    }
    o.roles.clear();
    assert!(matches!(plan(&o), Err(PlanError::Invalid(m)) if m.contains("does not exist")));
}

#[test]
fn a_switched_connection_is_done_and_the_provider_without_the_audience_gets_it() {
    let own = "arn:aws:iam::123456789012:role/keyrotor-oidc-platform-prod";
    let mut o = observed(vec![conn("e1", &[("Platform", "aws-prod")], own, "true")]);
    o.provider = provider(&["other"]);
    let trust = trust_policy(
        "S",
        PROVIDER,
        &issuer(),
        &["sc://contoso/Platform/aws-prod".into()],
    );
    o.own_role = Some(Role {
        arn: own.into(),
        name: "keyrotor-oidc-platform-prod".into(),
        trust,
        last_used: None,
        boundary: None,
    });
    let p = plan(&o).unwrap();
    assert_eq!(p.provider, ProviderStep::AddAudience);
    assert!(p.switches[0].done);
    assert_eq!(p.roles[0].kind, RoleKind::Own);
    assert!(!p.roles[0].trust_changes);
}

#[test]
fn user_specific_variables_and_condition_keys_are_found_and_others_are_not() {
    let doc = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::home/${aws:username}/*"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::home",
         "Condition": {"StringLike": {"s3:prefix": "${aws:userid}/*"},
                       "StringEquals": {"aws:PrincipalTag/team": "web"}}},
        {"Effect": "Allow", "Action": "ec2:*", "Resource": "*",
         "Condition": {"DateLessThan": {"aws:CurrentTime": "${aws:CurrentTime}"}}}
    ]});
    assert_eq!(
        user_specific_keys(&doc),
        vec!["${aws:userid}", "${aws:username}", "aws:PrincipalTag/team"]
    );
    let plain = json!({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]});
    assert!(user_specific_keys(&plain).is_empty());
}

#[test]
fn a_policy_names_the_user_by_its_arn_or_a_pattern_of_users() {
    let by_arn = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": [USER_ARN]}, "Action": "secretsmanager:GetSecretValue"}]});
    let by_pattern = json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
        "Condition": {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::123456789012:user/azure-*"}}}]});
    let other = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:user/someone"}, "Action": "*"}]});
    assert!(names_user(&by_arn, USER_ARN));
    assert!(names_user(&by_pattern, USER_ARN));
    assert!(!names_user(&other, USER_ARN));
    assert!(!names_user(&json!({"Principal": "*"}), USER_ARN));
}

#[test]
fn the_role_gets_the_users_boundary_and_the_plan_lists_what_it_cannot_carry() {
    let mut o = observed(vec![conn("e1", &[("Platform", "aws-prod")], "", "")]);
    let managed = "arn:aws:iam::123456789012:policy/home";
    let boundary = "arn:aws:iam::123456789012:policy/boundary";
    let secret = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:s-AbCdEf";
    o.permissions = Permissions {
        managed: vec![(managed.into(), Source::User)],
        managed_documents: vec![(
            managed.into(),
            json!({"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/${aws:username}/*"}]}),
        )],
        boundary: Some(boundary.into()),
        ..Permissions::default()
    };
    o.resource_policies = vec![ResourcePolicy {
        arn: secret.into(),
        kind: ResourceKind::Secret,
        document: json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": USER_ARN}, "Action": "*", "Resource": "*"}]}),
    }];
    let p = plan(&o).unwrap();
    let perms = p.roles[0].permissions.as_ref().unwrap();
    assert_eq!(perms.boundary.as_deref(), Some(boundary));
    let ids: Vec<String> = p.uncarried.iter().map(Uncarried::id).collect();
    assert_eq!(
        ids,
        vec![
            format!("policy-variables:{managed}"),
            format!("names-user:{secret}")
        ]
    );
    assert_eq!(p.unacknowledged(&ids[..1]).len(), 1);
    assert!(p.unacknowledged(&ids).is_empty());

    // A role keyrotor created before without the boundary gets it; one that has it does not.
    let own = "arn:aws:iam::123456789012:role/keyrotor-oidc-platform-prod";
    let role = |b: Option<&str>| Role {
        arn: own.into(),
        name: "keyrotor-oidc-platform-prod".into(),
        trust: json!({}),
        last_used: None,
        boundary: b.map(str::to_owned),
    };
    o.own_role = Some(role(None));
    assert!(plan(&o).unwrap().roles[0].boundary_changes);
    o.own_role = Some(role(Some(boundary)));
    assert!(!plan(&o).unwrap().roles[0].boundary_changes);
}

#[test]
fn a_kept_role_carries_nothing_of_the_users_and_a_done_switch_needs_no_acknowledgement() {
    let kept = "arn:aws:iam::123456789012:role/deploy";
    let mut o = observed(vec![conn("e1", &[("Platform", "aws-prod")], kept, "")]);
    o.roles = vec![(
        kept.into(),
        Some(Role {
            arn: kept.into(),
            name: "deploy".into(),
            trust: json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": USER_ARN}, "Action": "sts:AssumeRole"}]}),
            last_used: None,
            boundary: None,
        }),
    )];
    o.resource_policies = vec![ResourcePolicy {
        arn: "arn:aws:iam::123456789012:role/other".into(),
        kind: ResourceKind::RoleTrust,
        document: json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": USER_ARN}, "Action": "sts:AssumeRole"}]}),
    }];
    assert!(
        plan(&o).unwrap().uncarried.is_empty(),
        "a kept role signs for the pipelines today"
    );
    o.connections[0].assume_role = String::new();
    o.roles.clear();
    assert_eq!(
        plan(&o).unwrap().uncarried.len(),
        1,
        "the other role's trust names the user"
    );
    o.connections[0].assume_role =
        "arn:aws:iam::123456789012:role/keyrotor-oidc-platform-prod".into();
    o.connections[0].use_oidc = "true".into();
    assert!(
        plan(&o).unwrap().uncarried.is_empty(),
        "nothing left to switch"
    );
}

#[test]
fn only_a_trust_of_the_providers_web_identities_has_no_other_principals() {
    let ours = trust_policy("S", PROVIDER, &issuer(), &["sc://c/P/a".into()]);
    assert!(other_principals(&ours, PROVIDER).is_empty());
    let kept = with_statement(
        &json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]}),
        "S",
        PROVIDER,
        &issuer(),
        &["sc://c/P/a".into()],
    );
    assert_eq!(
        other_principals(&kept, PROVIDER),
        vec!["AWS arn:aws:iam::123456789012:root"]
    );
    let github = json!({"Statement": [{"Effect": "Allow", "Principal": {"Federated": [PROVIDER, "arn:aws:iam::123456789012:oidc-provider/token.actions.githubusercontent.com"]}, "Action": "sts:AssumeRoleWithWebIdentity"}]});
    assert_eq!(other_principals(&github, PROVIDER).len(), 1);
    let star =
        json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "sts:AssumeRole"}});
    assert_eq!(other_principals(&star, PROVIDER), vec!["\"*\""]);
    let deny = json!({"Statement": [ours["Statement"][0].clone(), {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
    assert!(
        other_principals(&deny, PROVIDER).is_empty(),
        "a Deny lets no one in"
    );
}
