//! `keyrotor rotate`: success, rerun, a refused PAT, a failing update, a 429 storm, a fleet
//! against Azure DevOps' rate limit, an OIDC connection, a Slack outage.

use keyrotor_testkit::ado::{Fault, Op, RateLimit};
use keyrotor_testkit::slack::Reply;
use serde_json::Value;

use keyrotor_testkit::env::{
    EP_ID, EXTERNAL_ID, ORG, Output, ROLE_ARN, SESSION_NAME, TARGET, TestEnv as Env, USER,
    WRONG_PAT, all_text, masked, on_oidc, permissions, without_credentials,
};

use crate::{setup, spawn_env};

/// After a successful rotation from `old`: one key in IAM, Active, at AWSCURRENT with its
/// secret; the endpoint holds it with that secret and is otherwise unchanged; the pipeline
/// permissions are unchanged; no endpoint was created or deleted. Returns the new key id.
async fn assert_converged(env: &Env, old: &str, endpoint_before: &Value) -> String {
    let aws = env.aws_state().await;
    assert_eq!(
        aws.keys.len(),
        1,
        "exactly one key is left (the old one is deleted, no grace): {aws:#?}"
    );
    let active = aws.active_keys();
    assert_eq!(active.len(), 1, "exactly one Active key: {aws:#?}");
    let new = active[0].to_owned();
    assert_ne!(new, old, "the key was rotated");
    let current = aws.stage_json("AWSCURRENT").expect("AWSCURRENT exists");
    assert_eq!(
        current["AccessKeyId"],
        new.as_str(),
        "AWSCURRENT holds the new key"
    );
    assert_eq!(current["UserName"], USER);
    let new_secret = current["SecretAccessKey"]
        .as_str()
        .expect("AWSCURRENT has the secret access key")
        .to_owned();
    assert!(
        !aws.stages.contains_key("AWSPENDING"),
        "AWSPENDING is dropped after a rotation: {aws:#?}"
    );
    assert_eq!(
        aws.stage_key("AWSPREVIOUS").as_deref(),
        Some(old),
        "the old key is AWSPREVIOUS"
    );

    let ep = env.endpoint();
    let params = &ep["authorization"]["parameters"];
    assert_eq!(
        params["username"],
        new.as_str(),
        "the endpoint holds the new key"
    );
    assert!(
        params["password"].as_str() == Some(new_secret.as_str()),
        "the endpoint holds the new key's secret as its password"
    );
    assert_eq!(params["assumeRoleArn"], ROLE_ARN);
    assert_eq!(params["externalId"], EXTERNAL_ID);
    assert_eq!(params["roleSessionName"], SESSION_NAME);
    assert_eq!(ep["data"]["note"], "kept as is");
    assert_eq!(
        ep["serviceEndpointProjectReferences"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "still shared into both projects"
    );
    assert_eq!(
        without_credentials(&ep),
        without_credentials(endpoint_before),
        "everything but username/password is kept exactly (id, project references, data, \
         assumeRoleArn, externalId, roleSessionName, sessionToken, …)"
    );
    assert_eq!(
        serde_json::to_string(&without_credentials(&ep)).unwrap(),
        serde_json::to_string(&without_credentials(endpoint_before)).unwrap(),
        "byte for byte"
    );
    let state = env.ado_state();
    let org = state.org(ORG).unwrap();
    assert_eq!(org.endpoints.len(), 1, "no endpoint created or deleted");
    assert_eq!(
        org.pipeline_permissions.get(&EP_ID.to_lowercase()),
        Some(&permissions()),
        "pipeline permissions unchanged"
    );
    new
}

fn target(doc: &Value) -> &Value {
    let targets = doc["targets"].as_array().expect("targets is an array");
    assert_eq!(targets.len(), 1, "{doc:#}");
    assert_eq!(targets[0]["name"], TARGET, "{doc:#}");
    &targets[0]
}

/// Asserts the outcome JSON of a successful rotation from `old` to `new`.
fn assert_rotated_json(o: &Output, old: &str, new: &str) -> Value {
    let doc = o.json();
    let t = target(&doc);
    assert_eq!(t["outcome"], "rotated", "{}", o.show());
    assert_eq!(t["old_key"], masked(old).as_str(), "{t:#}");
    assert_eq!(t["new_key"], masked(new).as_str(), "{t:#}");
    assert!(t["failed_step"].is_null(), "{t:#}");
    assert!(t["error"].is_null(), "{t:#}");
    doc
}

/// `rotate --force --output json`: exits `code`, and the target ends `outcome`. Returns the run
/// and the target's report.
async fn forced_json(env: &Env, code: i32, outcome: &str) -> (Output, Value) {
    let o = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(o.code, code, "{}", o.show());
    let t = target(&o.json()).clone();
    assert_eq!(t["outcome"], outcome, "{}", o.show());
    (o, t)
}

/// `rotate --force --output json` from the initial key: exits `code`, converges
/// ([`assert_converged`]) and reports the rotation ([`assert_rotated_json`]). Returns the run,
/// the new key and the report.
async fn forced_rotation(env: &Env, code: i32) -> (Output, String, Value) {
    let before = env.endpoint();
    let old = env.initial_key.clone();
    let o = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(o.code, code, "{}", o.show());
    let new = assert_converged(env, &old, &before).await;
    let doc = assert_rotated_json(&o, &old, &new);
    (o, new, doc)
}

#[tokio::test]
async fn a_forced_rotation_updates_the_shared_endpoint_once_in_place() {
    let env = spawn_env().await;
    let old = env.initial_key.clone();
    let (_, new, doc) = forced_rotation(&env, 0).await;
    assert_eq!(doc["notification"]["status"], "sent", "{doc:#}");
    let endpoints = doc["targets"][0]["endpoints"].as_array().unwrap();
    assert!(
        endpoints
            .iter()
            .all(|e| e["id"] == EP_ID && e["key"] == masked(&new).as_str()),
        "{doc:#}"
    );
    // Strict mode: STS refused the new key at first, as AWS does; verify waited it out.
    assert!(
        env.proxy().refused("GetCallerIdentity") > 0,
        "STS (strict) refused the new key at least once: {:?}",
        env.proxy().counts()
    );

    // In place: one PUT to the shared endpoint's id, nothing created, deleted or re-shared.
    let writes = env.write_requests();
    assert_eq!(
        env.puts(),
        vec![(
            format!("/{ORG}/_apis/serviceendpoint/endpoints/{EP_ID}"),
            200
        )],
        "exactly one PUT, to the endpoint's own id (the shared endpoint is updated once): \
         {writes:#?}"
    );
    assert_eq!(writes.len(), 1, "no POST, DELETE or PATCH: {writes:#?}");

    let posts = env.posts();
    assert_eq!(posts.len(), 1, "one Slack post: {posts:#?}");
    assert_eq!(posts[0].status, 200);
    let text = all_text(posts[0].json.as_ref().expect("the post is JSON"));
    assert!(text.contains(TARGET), "the post names the target: {text}");
    assert!(
        text.contains(&masked(&new)),
        "the post shows the new key masked: {text}"
    );
    assert!(
        text.contains(&masked(&old)),
        "the post shows the old key masked: {text}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_rerun_right_after_a_rotation_does_nothing() {
    let env = spawn_env().await;
    let first = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.show());
    let before = env.snapshot().await;
    env.ado.clear_requests();

    let posts_before = env.posts().len();
    let o = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let doc = o.json();
    let t = target(&doc);
    assert_eq!(t["outcome"], "nothing-due", "{}", o.show());
    assert_eq!(doc["notification"]["status"], "skipped", "{doc:#}");
    assert_eq!(
        env.posts().len(),
        posts_before,
        "no Slack message for a quiet run"
    );
    assert!(t["new_key"].is_null(), "{t:#}");
    env.assert_unchanged(&before).await;
    env.stop().await;
}

#[tokio::test]
async fn a_refused_pat_exits_2_and_changes_nothing() {
    let env = spawn_env().await;
    env.set_pat_parameter(WRONG_PAT).await;
    let before = env.snapshot().await;

    let (o, t) = forced_json(&env, 2, "invalid").await;
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("Azure DevOps") && error.contains("PAT"),
        "the error says in plain words that Azure DevOps refused the PAT: {}",
        o.show()
    );
    assert!(t["new_key"].is_null(), "{t:#}");

    let text = env.run(&["rotate", "--force"]).await;
    assert_eq!(text.code, 2, "{}", text.show());
    assert!(
        text.stdout.contains("Azure DevOps") && text.stdout.contains("PAT"),
        "{}",
        text.show()
    );

    env.assert_unchanged(&before).await;
    env.stop().await;
}

#[tokio::test]
async fn an_update_that_fails_for_good_is_compensated_with_exit_1() {
    let env = spawn_env().await;
    env.ado.inject(Fault::status(Op::Put, 400).forever());
    let endpoint_before = env.endpoint();
    let old = env.initial_key.clone();

    let (_, t) = forced_json(&env, 1, "failed").await;
    assert_eq!(t["failed_step"], "push", "{t:#}");
    assert!(t["error"].as_str().is_some_and(|e| !e.is_empty()), "{t:#}");
    assert!(
        t["compensation"].as_str().is_some_and(|c| !c.is_empty()),
        "the report says what was undone: {t:#}"
    );
    let new_masked = t["new_key"].as_str().expect("the report names the new key");
    assert_ne!(new_masked, masked(&old));

    // The new key was stored before the push, so the leak scans knew its secret.
    let versions = env.secret_versions().await;
    let stored: Value = versions
        .iter()
        .filter_map(|v| serde_json::from_str::<Value>(v).ok())
        .find(|v| v["AccessKeyId"].as_str().map(masked).as_deref() == Some(new_masked))
        .expect("a version of the secret holds the new key");
    assert!(
        env.knows_secret(stored["SecretAccessKey"].as_str().unwrap()),
        "the deleted key's secret is among the secrets scanned for"
    );

    let aws = env.aws_state().await;
    assert_eq!(
        aws.keys.keys().cloned().collect::<Vec<_>>(),
        vec![old.clone()],
        "the new key is deleted, only the old one is left: {aws:#?}"
    );
    assert_eq!(
        aws.active_keys(),
        vec![old.as_str()],
        "the old key is Active"
    );
    assert_eq!(aws.stage_key("AWSCURRENT").as_deref(), Some(old.as_str()));
    assert_eq!(
        aws.stage_json("AWSCURRENT").unwrap()["SecretAccessKey"],
        env.initial_secret.as_str()
    );
    assert!(
        !aws.stages.contains_key("AWSPENDING"),
        "AWSPENDING is cleared by the compensation: {aws:#?}"
    );
    assert_eq!(
        env.endpoint(),
        endpoint_before,
        "the endpoint still holds the old key and its secret"
    );
    assert!(
        env.puts().iter().all(|(_, status)| *status == 400),
        "{:?}",
        env.puts()
    );

    let posts = env.posts();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    let summary = posts[0].text().unwrap_or_default();
    assert!(
        summary.contains(TARGET) && summary.contains("push"),
        "the post's summary names the target and the failed step: {summary}"
    );
    let text = all_text(posts[0].json.as_ref().unwrap());
    assert!(
        text.contains(&masked(&old)) && text.contains(new_masked),
        "the post shows both keys, masked: {text}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_429_storm_that_ends_is_waited_out() {
    let env = spawn_env().await;
    env.ado
        .inject(Fault::status(Op::Put, 429).retry_after(1).times(3));
    forced_rotation(&env, 0).await;
    let statuses: Vec<u16> = env.puts().into_iter().map(|(_, s)| s).collect();
    assert_eq!(statuses, vec![429, 429, 429, 200]);
    env.stop().await;
}

/// Issue #21, item 6, end to end with the real bound (a read serves a PUT for 10 s): the run's
/// first PUT is refused with `Retry-After: 11`, and during that pause a person edits the
/// description of one of the target's two connections and switches the other to OIDC. Every PUT
/// after the pause would send a read older than 10 s, so each connection is read again first:
/// the edited one gets the new key with the person's description (and, when the run is
/// compensated, the old key back with it), the one switched to OIDC gets no PUT at all, and the
/// target is refused as an OIDC connection is (exit 3). Before the fix both changes were
/// reverted by PUTs of the reads from before the pause.
#[tokio::test]
async fn a_change_a_person_makes_while_a_put_waits_out_the_rate_limit_survives() {
    const EDITED: &str = "Edited by a person while keyrotor waited";
    let mut env = spawn_env().await;
    let key = (env.initial_key.clone(), env.initial_secret.clone());
    env.add_listed_connection("aws-second", (&key.0, &key.1))
        .await;
    let second = env.connection_id("aws-second");
    env.ado.capture_bodies(true);
    env.ado.inject(Fault::status(Op::Put, 429).retry_after(11));
    let person = async {
        let since = std::time::Instant::now();
        while !env.puts().iter().any(|(_, status)| *status == 429) {
            assert!(
                since.elapsed() < std::time::Duration::from_secs(120),
                "the run never sent its PUT"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        env.edit_as_a_person(&second, |ep| ep["description"] = EDITED.into())
            .await;
        env.edit_as_a_person(EP_ID, |ep| {
            on_oidc(ep);
            ep["authorization"]["parameters"]["sessionToken"] = "".into();
        })
        .await;
        env.ado.requests().len()
    };
    let (o, after) = tokio::join!(env.run(&["rotate", "--force", "--output", "json"]), person);
    assert_eq!(o.code, 3, "{}", o.show());
    let t = target(&o.json()).clone();
    assert_eq!(t["outcome"], "refused", "{}", o.show());
    assert!(all_text(&t).contains("OIDC"), "{t:#}");

    let shared = env.endpoint();
    let p = &shared["authorization"]["parameters"];
    assert_eq!(p["useOIDC"], "true", "the switch to OIDC stays");
    assert_eq!(p["username"], "", "no key was put back into it");
    assert_eq!(p["password"], "");
    let edited = env.ado.endpoint(ORG, &second).unwrap();
    assert_eq!(
        edited["description"], EDITED,
        "the person's description stays"
    );

    let later = &env.ado.requests()[after..];
    assert!(
        !later
            .iter()
            .any(|r| r.method == "PUT" && r.path.contains(EP_ID)),
        "no PUT over the connection switched to OIDC: {later:?}"
    );
    // Every PUT of the edited connection, the person's included, in the order they came.
    let bodies: Vec<Value> = env
        .ado
        .captured_bodies()
        .into_iter()
        .filter(|b| b.op == Op::Put && b.path.contains(&second))
        .map(|b| b.body)
        .collect();
    let person_at = bodies
        .iter()
        .position(|b| b["description"] == EDITED)
        .expect("the person's PUT");
    let keyrotors = &bodies[person_at + 1..];
    assert!(
        !keyrotors.is_empty(),
        "keyrotor updated the edited connection after the pause"
    );
    for b in keyrotors {
        assert_eq!(
            b["description"], EDITED,
            "every PUT after the person's edit carries their description"
        );
    }
    env.stop().await;
}

/// Eight targets rotated four at a time (the default concurrency) through the one Azure DevOps
/// client of the run, against Azure DevOps' rate limit with a shrunken window: 4 undelayed
/// requests per 2 s, refusals from 8 (the margin of 4 covers the four targets' requests in
/// flight) — the run needs about 15 (the eight move step by step together and share their
/// reads, issue #14: a PUT each, one listing for all pushes, one for all confirms, one holder
/// scan; it needed about 70 before). The client pauses whenever the budget is spent, so no
/// request is ever refused and every target rotates.
#[tokio::test]
async fn a_fleet_rides_out_the_rate_limit_with_no_failed_target() {
    let env = setup().fleet(7).start().await;
    env.ado.set_rate_limit(Some(RateLimit {
        limit: 4,
        window_seconds: 2,
        cost_per_request: 1,
        block_at: Some(8),
        delay_ms: 0,
    }));
    let o = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(o.code, 0, "{}", o.show());
    let doc = o.json();
    let outcomes: Vec<&str> = doc["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(outcomes, vec!["rotated"; 8], "{}", o.show());
    let log = env.ado.requests();
    assert!(
        log.len() > 4 * 2,
        "the run needs more than two windows of budget: {} requests",
        log.len()
    );
    assert!(log.iter().any(|r| r.delayed), "the budget was reached");
    assert!(
        log.iter().all(|r| r.status == 200),
        "no request refused or failed: {:?}",
        log.iter().filter(|r| r.status != 200).collect::<Vec<_>>()
    );
    assert!(
        o.stderr
            .contains("Azure DevOps rate limit: holding every request back"),
        "the pause is logged"
    );
    env.stop().await;
}

#[tokio::test]
async fn an_oidc_connection_is_refused_with_exit_3_and_nothing_changes() {
    let env = setup()
        .edit_connections(|eps| on_oidc(&mut eps[0]))
        .start()
        .await;
    let before = env.snapshot().await;

    let (_, t) = forced_json(&env, 3, "refused").await;
    assert!(
        all_text(&t).contains("OIDC"),
        "the report says why (OIDC): {t:#}"
    );
    env.assert_unchanged(&before).await;
    env.stop().await;
}

#[tokio::test]
async fn a_slack_outage_does_not_undo_a_rotation_and_exits_4() {
    let env = spawn_env().await;
    env.slack().script(Reply::rollup_error(), 1000);
    let (_, new, doc) = forced_rotation(&env, 4).await;
    assert_eq!(doc["notification"]["status"], "failed", "{doc:#}");
    assert!(
        doc["notification"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{doc:#}"
    );
    let posts = env.posts();
    assert!(
        !posts.is_empty() && posts.iter().all(|p| p.status == 500),
        "{posts:#?}"
    );

    // The text report says so too (a webhook that was removed this time: 404 no_service).
    env.slack().reset();
    env.slack().script(Reply::no_service(), 1000);
    let before = env.endpoint();
    let text = env.run(&["rotate", "--force"]).await;
    assert_eq!(text.code, 4, "{}", text.show());
    let newer = assert_converged(&env, &new, &before).await;
    assert!(text.stdout.contains(&masked(&newer)), "{}", text.show());
    assert!(
        text.stdout.to_lowercase().contains("notification failed"),
        "stdout says the notification failed: {}",
        text.show()
    );
    env.stop().await;
}
