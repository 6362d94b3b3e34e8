//! Plan, apply, rollback, finish, the refusals and bad input.

use keyrotor_core::oidc;
use keyrotor_testkit::ado::aws_endpoint;
use keyrotor_testkit::env::{
    EP_ID, EP_NAME, ORG, ROLE_ARN, TestEnv, masked, permissions, without_parameters,
};
use serde_json::{Value, json};

use super::*;

async fn env_without_roles() -> TestEnv {
    crate::setup().edit_connections(without_roles).start().await
}

fn perms(env: &TestEnv) -> Value {
    env.ado_state().org(ORG).unwrap().pipeline_permissions[EP_ID].clone()
}

#[tokio::test]
async fn the_plan_shows_provider_role_trust_and_connections_and_only_reads() {
    let env = env_without_roles().await;
    let before = env.snapshot().await;
    let o = migrate_exits(&env, &[], 0).await;
    let issuer = issuer(&env);
    for shown in [
        "will be created",
        own_role_arn().as_str(),
        &provider_arn(&env),
        "sc://contoso/Platform/aws-prod",
        "sc://contoso/Web/aws-prod",
        &format!("{issuer}:aud"),
        AUD,
        &masked(&env.initial_key),
        "(none: the user has no policy)",
        "--rollback",
    ] {
        assert!(o.stdout.contains(shown), "{shown}: {}", o.show());
    }
    env.assert_unchanged(&before).await;
    assert_eq!(
        aws_writes(&env),
        Vec::<String>::new(),
        "every AWS request was a read"
    );
    assert!(role(&env, &own_role_name()).await.is_none());
    assert_eq!(assert_every_connection_works(&env).await, 0);
    env.stop().await;
}

#[tokio::test]
async fn apply_switches_a_shared_connection_in_place_and_finish_retires_the_key() {
    let env = env_without_roles().await;
    let before = env.endpoint();
    let perms_before = perms(&env);

    migrate_exits(&env, &["--apply"], 0).await;
    let after = env.endpoint();
    assert_eq!(check_connection(&env, &after).await, Some(own_role_arn()));
    let changed = [
        "username",
        "password",
        "sessionToken",
        "useOIDC",
        "assumeRoleArn",
    ];
    assert_eq!(
        without_parameters(&after, &changed),
        without_parameters(&before, &changed),
        "same id, every other field kept"
    );
    assert_eq!(perms(&env), perms_before, "pipeline authorizations kept");
    // Exactly the audience and the connection's subjects in both projects.
    let (trust, used) = role(&env, &own_role_name()).await.unwrap();
    let sid = oidc::statement_id(&keyrotor_core::domain::TargetName::parse(TARGET).unwrap());
    let subjects = vec![
        "sc://contoso/Platform/aws-prod".to_owned(),
        "sc://contoso/Web/aws-prod".to_owned(),
    ];
    assert_eq!(
        trust,
        oidc::trust_policy(&sid, &provider_arn(&env), &issuer(&env), &subjects)
    );
    assert!(!used);
    assert_eq!(
        env.aws_state().await.active_keys(),
        vec![env.initial_key.as_str()],
        "the key stays Active"
    );
    let puts = env.puts().len();

    let recorded = record(&env).await;
    assert_eq!(recorded["phase"], "applied", "{recorded:#}");
    assert!(
        !recorded.to_string().contains(&env.initial_secret),
        "no secret in the record"
    );

    // A rerun converges: nothing left to do, no PUT, the switch time kept.
    let o = migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(env.puts().len(), puts, "no second PUT");
    assert!(o.stdout.contains("already on OIDC"), "{}", o.show());
    assert_eq!(record(&env).await["switchedAt"], recorded["switchedAt"]);

    // Finish is refused until a pipeline has assumed the role.
    let o = migrate_exits(&env, &["--finish"], 3).await;
    assert!(one_error(&o).contains("RoleLastUsed"), "{}", o.show());
    assert_eq!(env.aws_state().await.active_keys().len(), 1);

    pipeline_assumes(&env, &own_role_arn()).await;
    let o = migrate_exits(&env, &["--finish"], 0).await;
    assert!(env.aws_state().await.keys.is_empty(), "the key is deleted");
    for left in [IAM_USER, keyrotor_testkit::env::SECRET, "Left, not deleted"] {
        assert!(o.stdout.contains(left), "{left}: {}", o.show());
    }
    assert_eq!(assert_every_connection_works(&env).await, 1);
    // Finished: every mode says so and changes nothing; a rollback is refused.
    let o = migrate_exits(&env, &["--apply"], 0).await;
    assert!(o.stdout.contains("finished"), "{}", o.show());
    let o = migrate_exits(&env, &["--rollback"], 3).await;
    one_error(&o);
    env.stop().await;
}

/// The migration record, straight from SSM.
async fn record(env: &TestEnv) -> Value {
    let got = env
        .ssm
        .get_parameter()
        .name(format!("/keyrotor/migrate-oidc/{TARGET}"))
        .send()
        .await
        .expect("the record exists");
    serde_json::from_str(got.parameter().unwrap().value().unwrap()).unwrap()
}

#[tokio::test]
async fn rollback_puts_every_connection_back_on_the_key_in_place() {
    let env = separate().await;
    let before: Vec<Value> = env.ado_state().org(ORG).unwrap().endpoints.clone();
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 2);

    migrate_exits(&env, &["--rollback"], 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 0);
    let after: Vec<Value> = env.ado_state().org(ORG).unwrap().endpoints.clone();
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            a["authorization"]["parameters"]["useOIDC"],
            json!(""),
            "{a:#}"
        );
        assert_eq!(
            without_parameters(a, &["useOIDC"]),
            *b,
            "back as it was, in place"
        );
    }
    // A rerun of the rollback changes nothing; apply again works from there.
    let puts = env.puts().len();
    migrate_exits(&env, &["--rollback"], 0).await;
    assert_eq!(env.puts().len(), puts);
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 2);
    env.stop().await;
}

#[tokio::test]
async fn finish_is_refused_while_the_key_is_used_or_held_elsewhere() {
    // A connection outside the target holds the key too.
    let env = crate::setup()
        .edit_connections(|eps| {
            without_roles(eps);
            let key = eps[0]["authorization"]["parameters"]["username"].clone();
            let secret = eps[0]["authorization"]["parameters"]["password"].clone();
            eps.push(aws_endpoint(
                "aws-legacy",
                key.as_str().unwrap(),
                secret.as_str().unwrap(),
                &["Web"],
            ));
        })
        .start()
        .await;
    let o = migrate(&env, &[]).await;
    assert!(
        o.stdout.contains("Web/aws-legacy"),
        "the plan names the other holder: {}",
        o.show()
    );
    migrate_exits(&env, &["--apply"], 0).await;
    pipeline_assumes(&env, &own_role_arn()).await;

    let o = migrate_exits(&env, &["--finish"], 3).await;
    assert!(one_error(&o).contains("aws-legacy"), "{}", o.show());
    assert_eq!(
        env.aws_state().await.active_keys(),
        vec![env.initial_key.as_str()]
    );

    // The key is used after the switch: refused, whoever holds it.
    crate::badinput::use_key(&env, &env.initial_key, &env.initial_secret).await;
    let o = migrate_exits(&env, &["--finish"], 3).await;
    assert!(one_error(&o).contains("was used"), "{}", o.show());
    assert_eq!(
        env.aws_state().await.active_keys(),
        vec![env.initial_key.as_str()]
    );
    assert_eq!(assert_every_connection_works(&env).await, 1);
    env.stop().await;
}

/// A customer managed policy with this statement; its ARN.
pub(super) async fn managed_policy(env: &TestEnv, name: &str, action: &str) -> String {
    let doc = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]});
    env.iam
        .create_policy()
        .policy_name(name)
        .policy_document(doc.to_string())
        .send()
        .await
        .unwrap()
        .policy()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned()
}

async fn managed_document(env: &TestEnv, arn: &str) -> Value {
    let p = env.iam.get_policy().policy_arn(arn).send().await.unwrap();
    let version = p.policy().unwrap().default_version_id().unwrap().to_owned();
    let v = env
        .iam
        .get_policy_version()
        .policy_arn(arn)
        .version_id(version)
        .send()
        .await
        .unwrap();
    oidc::parse_policy_document(v.policy_version().unwrap().document().unwrap()).unwrap()
}

#[tokio::test]
async fn the_role_gets_the_users_managed_inline_and_group_policies() {
    let env = env_without_roles().await;
    let user_managed = managed_policy(&env, "deploy-s3", "s3:PutObject").await;
    let group_managed = managed_policy(&env, "deploy-lambda", "lambda:UpdateFunctionCode").await;
    let inline = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "cloudfront:CreateInvalidation", "Resource": "*"}]});
    let group_inline = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:PutImage", "Resource": "*"}]});
    let iam = &env.iam;
    iam.attach_user_policy()
        .user_name(IAM_USER)
        .policy_arn(&user_managed)
        .send()
        .await
        .unwrap();
    iam.put_user_policy()
        .user_name(IAM_USER)
        .policy_name("invalidate")
        .policy_document(inline.to_string())
        .send()
        .await
        .unwrap();
    iam.create_group()
        .group_name("deployers")
        .send()
        .await
        .unwrap();
    iam.add_user_to_group()
        .group_name("deployers")
        .user_name(IAM_USER)
        .send()
        .await
        .unwrap();
    iam.attach_group_policy()
        .group_name("deployers")
        .policy_arn(&group_managed)
        .send()
        .await
        .unwrap();
    iam.put_group_policy()
        .group_name("deployers")
        .policy_name("push")
        .policy_document(group_inline.to_string())
        .send()
        .await
        .unwrap();

    let o = migrate_exits(&env, &[], 0).await;
    for shown in [
        user_managed.as_str(),
        group_managed.as_str(),
        "group deployers",
        "inline invalidate",
        "inline deployers.push",
    ] {
        assert!(o.stdout.contains(shown), "{shown}: {}", o.show());
    }
    migrate_exits(&env, &["--apply"], 0).await;

    // Compared by the documents: the user's effective ones and the role's are the same.
    let mut user_docs = vec![
        managed_document(&env, &user_managed).await,
        managed_document(&env, &group_managed).await,
        inline.clone(),
        group_inline.clone(),
    ];
    let role = own_role_name();
    let mut role_docs = Vec::new();
    let attached = iam
        .list_attached_role_policies()
        .role_name(&role)
        .send()
        .await
        .unwrap();
    for p in attached.attached_policies() {
        role_docs.push(managed_document(&env, p.policy_arn().unwrap()).await);
    }
    for name in iam
        .list_role_policies()
        .role_name(&role)
        .send()
        .await
        .unwrap()
        .policy_names()
    {
        let got = iam
            .get_role_policy()
            .role_name(&role)
            .policy_name(name)
            .send()
            .await
            .unwrap();
        role_docs.push(oidc::parse_policy_document(got.policy_document()).unwrap());
    }
    let key = |v: &Value| v.to_string();
    user_docs.sort_by_key(key);
    role_docs.sort_by_key(key);
    assert_eq!(role_docs, user_docs);
    env.stop().await;
}

#[tokio::test]
async fn an_existing_provider_is_reused_and_a_connections_role_is_kept() {
    // The shared connection assumes ROLE_ARN with its key today.
    let env = crate::setup().start().await;
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]});
    let kept = ROLE_ARN.rsplit('/').next().unwrap();
    env.iam
        .create_role()
        .role_name(kept)
        .assume_role_policy_document(theirs.to_string())
        .send()
        .await
        .unwrap();
    env.iam
        .create_open_id_connect_provider()
        .url(format!("https://{}", issuer(&env)))
        .client_id_list(AUD)
        .send()
        .await
        .unwrap();

    let o = migrate_exits(&env, &[], 0).await;
    assert!(o.stdout.contains("reused as it is"), "{}", o.show());
    assert!(
        o.stdout.contains("kept, with its permissions"),
        "{}",
        o.show()
    );
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(env.proxy().count("CreateOpenIDConnectProvider"), 0);
    assert_eq!(env.proxy().count("CreateRole"), 0, "no role is created");
    assert_eq!(
        check_connection(&env, &env.endpoint()).await,
        Some(ROLE_ARN.to_owned())
    );
    let (trust, _) = role(&env, kept).await.unwrap();
    assert_eq!(
        trust["Statement"][0], theirs["Statement"][0],
        "their statement is kept"
    );
    assert_eq!(trust["Statement"].as_array().unwrap().len(), 2);

    migrate_exits(&env, &["--rollback"], 0).await;
    let ep = env.endpoint();
    assert_eq!(
        ep["authorization"]["parameters"]["assumeRoleArn"],
        json!(ROLE_ARN)
    );
    assert_eq!(check_connection(&env, &ep).await, None);
    env.stop().await;
}

#[tokio::test]
async fn bad_input_is_one_sentence_exit_2_and_changes_nothing() {
    let env = env_without_roles().await;
    let mine = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"Federated": provider_arn(&env)}, "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {format!("{}:sub", issuer(&env)): "sc://contoso/Platform/aws-prod"}}}]});
    env.iam
        .create_role()
        .role_name("mine")
        .assume_role_policy_document(mine.to_string())
        .send()
        .await
        .unwrap();
    let before = env.snapshot().await;
    let config = env.config.to_string_lossy().into_owned();
    let cases: Vec<(Vec<&str>, &str, bool)> = vec![
        (vec!["--target", "nope"], "no target named 'nope'", false),
        (
            vec![
                "--target",
                TARGET,
                "--apply",
                "--role-arn",
                "arn:aws:iam::123456789012:role/mine",
            ],
            "sc://contoso/Web/aws-prod",
            true,
        ),
        (
            vec![
                "--target",
                TARGET,
                "--apply",
                "--role-arn",
                "arn:aws:iam::123456789012:role/absent",
            ],
            "does not exist",
            true,
        ),
        (
            vec!["--target", TARGET, "--apply", "--role-arn", "not-an-arn"],
            "not an IAM role ARN",
            false,
        ),
        (
            vec!["--target", TARGET, "--rollback"],
            "nothing to roll back",
            true,
        ),
        (
            vec!["--target", TARGET, "--finish"],
            "nothing to finish",
            true,
        ),
    ];
    for (extra, says, traced) in cases {
        let mut args = vec!["migrate-oidc", "--config", &config];
        args.extend(extra.iter().copied());
        let run = env.cmd(&args);
        let o = if traced {
            run.run().await
        } else {
            run.untraced().run().await
        };
        assert_eq!(o.code, 2, "{}", o.show());
        let line = one_error(&o);
        assert!(line.contains(says), "{says}: {line}");
        env.assert_unchanged(&before).await;
        assert_eq!(
            aws_writes(&env),
            Vec::<String>::new(),
            "{extra:?}: nothing written to AWS"
        );
    }
    assert_eq!(perms(&env), permissions());
    assert_eq!(env.endpoint()["name"], json!(EP_NAME));
    env.stop().await;
}
