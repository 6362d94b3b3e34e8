//! What the role keyrotor creates may and may not carry of the user's access (issue #21 item 9):
//! the user's permissions boundary goes with it; what it cannot carry (policies that use
//! `${aws:username}` and the like, resource policies that name the user) is listed by the plan
//! and `--apply` is refused until each is acknowledged; `--finish` takes only an assumption that
//! can have come through the OIDC provider. Every check reads moto's IAM directly.

use std::time::Duration;

use keyrotor_core::oidc;
use keyrotor_testkit::env::{ROLE_ARN, SECRET, TestEnv};
use serde_json::{Value, json};

use super::*;

async fn env_without_roles() -> TestEnv {
    crate::setup().edit_connections(without_roles).start().await
}

/// A role's permissions boundary, straight from moto.
async fn role_boundary(env: &TestEnv, name: &str) -> Option<String> {
    let got = env.iam.get_role().role_name(name).send().await.unwrap();
    got.role()
        .unwrap()
        .permissions_boundary()
        .and_then(|b| b.permissions_boundary_arn())
        .map(str::to_owned)
}

#[tokio::test]
async fn the_role_gets_the_users_permissions_boundary() {
    let env = env_without_roles().await;
    let boundary = super::flows::managed_policy(&env, "pipeline-boundary", "s3:*").await;
    let admin = super::flows::managed_policy(&env, "everything", "*").await;
    env.iam
        .attach_user_policy()
        .user_name(IAM_USER)
        .policy_arn(&admin)
        .send()
        .await
        .unwrap();
    env.iam
        .put_user_permissions_boundary()
        .user_name(IAM_USER)
        .permissions_boundary(&boundary)
        .send()
        .await
        .unwrap();

    let o = migrate_exits(&env, &[], 0).await;
    assert!(
        o.stdout
            .contains(&format!("permissions boundary {boundary} (the user's)")),
        "{}",
        o.show()
    );
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(
        role_boundary(&env, &own_role_name()).await,
        Some(boundary.clone()),
        "the role can do no more than the user could"
    );
    assert_eq!(
        env.proxy().count("PutRolePermissionsBoundary"),
        0,
        "given with CreateRole: the role never existed without it"
    );

    // A role keyrotor created before it carried boundaries gets it on the next --apply, before
    // any policy is attached.
    migrate_exits(&env, &["--rollback"], 0).await;
    env.iam
        .delete_role_permissions_boundary()
        .role_name(own_role_name())
        .send()
        .await
        .unwrap();
    migrate_exits(&env, &["--apply"], 0).await;
    assert_eq!(role_boundary(&env, &own_role_name()).await, Some(boundary));
    assert_eq!(env.proxy().count("PutRolePermissionsBoundary"), 1);
    assert_eq!(assert_every_connection_works(&env).await, 1);
    env.stop().await;
}

#[tokio::test]
async fn apply_is_refused_until_each_thing_the_role_cannot_carry_is_acknowledged() {
    let env = env_without_roles().await;
    let user_arn = format!("arn:aws:iam::123456789012:user/{IAM_USER}");
    // A policy whose resources are the user's own by name.
    let home = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
        "Resource": "arn:aws:s3:::artifacts/${aws:username}/*"}]});
    env.iam
        .put_user_policy()
        .user_name(IAM_USER)
        .policy_name("home")
        .policy_document(home.to_string())
        .send()
        .await
        .unwrap();
    // The secret lets the user in by its ARN.
    let secret_policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": user_arn}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]});
    env.sm
        .put_resource_policy()
        .secret_id(SECRET)
        .resource_policy(secret_policy.to_string())
        .send()
        .await
        .unwrap();
    let secret_arn = env
        .sm
        .describe_secret()
        .secret_id(SECRET)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    // A role a pipeline assumes with the key, by the user's ARN.
    let trusts_user = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
        "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole"}]});
    let other_role = env
        .iam
        .create_role()
        .role_name("cross-deploy")
        .assume_role_policy_document(trusts_user.to_string())
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .arn()
        .to_owned();
    let ids = [
        "policy-variables:home".to_owned(),
        format!("names-user:{secret_arn}"),
        format!("names-user:{other_role}"),
    ];

    let o = migrate_exits(&env, &[], 0).await;
    for id in &ids {
        assert!(
            o.stdout.contains(&format!("--acknowledge {id}")),
            "{id}: {}",
            o.show()
        );
    }
    for shown in ["${aws:username}", "Not looked at", "S3 buckets"] {
        assert!(o.stdout.contains(shown), "{shown}: {}", o.show());
    }

    // Refused, naming each item not acknowledged; nothing changed anywhere.
    let before = env.snapshot().await;
    let ack = |n: usize| -> Vec<&str> {
        let mut args = vec!["--apply"];
        for id in &ids[..n] {
            args.extend(["--acknowledge", id.as_str()]);
        }
        args
    };
    for n in 0..ids.len() {
        let o = migrate_exits(&env, &ack(n), 3).await;
        let line = one_error(&o);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(line.contains(id.as_str()), i >= n, "{id}: {line}");
        }
        assert!(line.contains("--acknowledge"), "{line}");
        env.assert_unchanged(&before).await;
        assert_eq!(
            aws_writes(&env),
            Vec::<String>::new(),
            "nothing written to AWS"
        );
        assert!(role(&env, &own_role_name()).await.is_none());
    }

    // Each acknowledged: applied, the role has the user's policy as it was.
    migrate_exits(&env, &ack(ids.len()), 0).await;
    assert_eq!(assert_every_connection_works(&env).await, 1);
    let got = env
        .iam
        .get_role_policy()
        .role_name(own_role_name())
        .policy_name("home")
        .send()
        .await
        .unwrap();
    assert_eq!(
        oidc::parse_policy_document(got.policy_document()).unwrap(),
        home
    );
    // A rerun with nothing left to switch needs no acknowledgement.
    migrate_exits(&env, &["--apply"], 0).await;
    env.stop().await;
}

/// An old-key job on a kept role: `sts:AssumeRole` signed with the user's key, then a call with
/// the role's credentials (IAM records the role's use as for any other assumption).
async fn old_key_job_assumes(env: &TestEnv, role_arn: &str) {
    let arn = keyrotor_standins::pipeline::assume_with_key(
        &env.sdk,
        &env.initial_key,
        &env.initial_secret,
        role_arn,
    )
    .await
    .expect("the key assumes the kept role");
    assert!(arn.contains(":assumed-role/"), "{arn}");
}

#[tokio::test]
async fn finish_takes_only_an_assumption_through_the_oidc_provider_not_an_old_key_job() {
    // The shared connection assumes ROLE_ARN with its key today; its trust lets the account in.
    let env = crate::setup().policy("drain = \"3s\"").start().await;
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Sid": "Account", "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]});
    let kept = ROLE_ARN.rsplit('/').next().unwrap();
    env.iam
        .create_role()
        .role_name(kept)
        .assume_role_policy_document(theirs.to_string())
        .send()
        .await
        .unwrap();
    migrate_exits(&env, &["--apply"], 0).await;

    // During the drain a job that started before the switch assumes the kept role with the key.
    old_key_job_assumes(&env, ROLE_ARN).await;
    assert!(
        role(&env, kept).await.unwrap().1,
        "IAM records the role's use"
    );
    tokio::time::sleep(Duration::from_millis(3_500)).await;

    // RoleLastUsed is after the switch and the key was not used after the drain, but the trust
    // lets the account in: that use proves nothing about OIDC.
    let o = migrate_exits(&env, &["--finish"], 3).await;
    let line = one_error(&o);
    assert!(
        line.contains("arn:aws:iam::123456789012:root")
            && line.contains("AssumeRoleWithWebIdentity"),
        "{line}"
    );
    assert_eq!(
        env.aws_state().await.active_keys(),
        vec![env.initial_key.as_str()],
        "the key stays Active"
    );

    // The person takes the account's statement out; from then on only uses count.
    let (trust, _) = role(&env, kept).await.unwrap();
    let only_oidc: Vec<Value> = trust["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Principal"].get("Federated").is_some())
        .cloned()
        .collect();
    let only_oidc = json!({"Version": "2012-10-17", "Statement": only_oidc});
    env.iam
        .update_assume_role_policy()
        .role_name(kept)
        .policy_document(only_oidc.to_string())
        .send()
        .await
        .unwrap();
    let (trust, used) = role(&env, kept).await.unwrap();
    assert!(used, "the old job's use is still IAM's last use");
    assert_eq!(trust["Statement"].as_array().unwrap().len(), 1, "{trust:#}");
    assert_eq!(
        trust["Statement"][0]["Principal"],
        json!({"Federated": provider_arn(&env)})
    );
    let o = migrate_exits(&env, &["--finish"], 3).await;
    assert!(one_error(&o).contains("from now on"), "{}", o.show());
    assert_eq!(env.aws_state().await.active_keys().len(), 1);

    pipeline_assumes(&env, ROLE_ARN).await;
    migrate_exits(&env, &["--finish"], 0).await;
    assert!(env.aws_state().await.keys.is_empty(), "the key is deleted");
    assert_eq!(assert_every_connection_works(&env).await, 1);
    env.stop().await;
}
