//! Safe in production, second pass (#21): what broke a consumer, a person's key or a long job,
//! driven through the real binary and read back from outside only (IAM's keys, the secret's
//! stages, the connection as the emulator stores it).
//!
//! - a key a person makes right after a finished rotation is theirs, never an "orphan" (1);
//! - a killed run is seen dead by the next run on its machine, which takes the rotation over
//!   at once instead of standing aside for the whole lease; SIGTERM gives the lease up; a run
//!   that stood aside exits 5, not 0 (2);
//! - a consumer that keeps using the old key late in the drain keeps it Active: exit 3, the
//!   report names the key (3);
//! - by default a retired key is Inactive, not deleted, and a forced rotation within its grace
//!   or its drain is refused with nothing changed (3, 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyrotor_core::domain::AccessKeyId;
use keyrotor_core::ports::CallerIdentity;
use keyrotor_testkit::ado::{Fault, Op};
use keyrotor_testkit::env::{SIGTERM, SecretStart, TestEnv as Env, masked};
use secrecy::SecretString;

use crate::badinput::message_of;
use crate::setup;

/// Whether a stderr line is the start of `step`, as the binary logs it at trace level.
fn starts(step: &str) -> impl Fn(&str) -> bool + Send + Sync + use<> {
    let wanted = [format!("step=\"{step}\""), format!("step={step}")];
    move |line: &str| {
        line.contains("step started") && wanted.iter().any(|w| line.contains(w.as_str()))
    }
}

/// The config without its `delete_old_key_after` line: the default grace applies.
fn with_default_grace(env: &Env) {
    env.edit_config(|c| {
        c.lines()
            .filter(|l| !l.trim_start().starts_with("delete_old_key_after"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_person_makes_right_after_a_finished_first_rotation_is_kept() {
    // The secret starts absent, so the first rotation's intent record becomes the secret's
    // first version and ends at AWSPREVIOUS once the rotation is promoted.
    let env = setup().secret(SecretStart::Absent).start().await;
    let first = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(first.code, 0, "{}", first.show());
    assert_eq!(first.outcome(), "rotated", "{}", first.show());
    // A person makes a second key for a new consumer, inside the finished run's intent window.
    let (person, _) = env.add_key().await;
    let plain = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(plain.code, 0, "{}", plain.show());
    assert_eq!(plain.outcome(), "nothing-due", "{}", plain.show());
    let aws = env.aws_state().await;
    assert_eq!(
        aws.keys.get(&person).map(String::as_str),
        Some("Active"),
        "the person's key {} is still there, Active: {aws:#?}\n{}",
        masked(&person),
        plain.show()
    );
    assert!(
        !plain.stdout.contains("orphan"),
        "nothing is called an orphan: {}",
        plain.show()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_run_is_taken_over_at_once_by_the_next_run_on_its_machine() {
    // The default owner lease (30 minutes): only seeing the owner dead lets the next run in.
    let env = setup().policy("verify_consecutive = 2").start().await;
    env.ado.inject(Fault::delay(Op::Any, 150).forever());
    let killed = env
        .cmd(&["rotate", "--force"])
        .kill_after_line(starts("push"), Duration::from_millis(60))
        .run()
        .await;
    assert!(
        killed.triggered && killed.killed,
        "killed inside push: {}",
        killed.show()
    );
    env.world().await.always().unwrap();
    let pending = env.aws_state().await.stage_json("AWSPENDING");
    assert!(
        pending
            .as_ref()
            .is_some_and(|p| p["KeyrotorOwner"]["Pid"].is_u64()),
        "the killed run's lease names its process: {pending:?}"
    );
    env.ado.clear_faults();
    let next = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (next.code, next.outcome().as_str()),
        (0, "rotated"),
        "the next run takes the dead run's rotation over: {}",
        next.show()
    );
    let aws = env.aws_state().await;
    assert_eq!(aws.active_keys().len(), 1, "{aws:#?}");
    let new = aws.active_keys()[0].to_owned();
    assert_eq!(aws.stage_key("AWSCURRENT").as_deref(), Some(new.as_str()));
    assert_eq!(
        env.endpoint()["authorization"]["parameters"]["username"],
        new.as_str(),
        "the connection holds the Active key"
    );
    assert!(!aws.stages.contains_key("AWSPENDING"), "{aws:#?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_the_lease_up_and_the_next_run_resumes_at_once() {
    let env = setup().policy("verify_consecutive = 2").start().await;
    env.ado.inject(Fault::delay(Op::Any, 150).forever());
    let stopped = env
        .cmd(&["rotate", "--force"])
        .signal_after_line(SIGTERM, starts("push"), Duration::from_millis(60))
        .run()
        .await;
    assert_eq!(stopped.code, 143, "{}", stopped.show());
    assert!(
        stopped
            .stderr
            .contains("stopped by SIGTERM: gave up this run's ownership"),
        "{}",
        stopped.show()
    );
    env.world().await.always().unwrap();
    let pending = env.aws_state().await.stage_json("AWSPENDING");
    let expires = pending
        .as_ref()
        .and_then(|p| p["KeyrotorOwner"]["ExpiresAt"].as_str())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .expect("the new key's version names its owner");
    assert!(
        expires <= std::time::SystemTime::now(),
        "the lease was given up (it has expired): {pending:?}"
    );
    env.ado.clear_faults();
    let next = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (next.code, next.outcome().as_str()),
        (0, "rotated"),
        "{}",
        next.show()
    );
    assert_eq!(env.aws_state().await.active_keys().len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_still_uses_the_old_key_late_in_the_drain_keeps_it_active() {
    let env = setup().policy("drain = \"6s\"").start().await;
    let (old, old_secret) = (env.initial_key.clone(), env.initial_secret.clone());
    // A consumer outside every connection keeps signing with the old key until the run ends.
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (env_sdk, done) = (env.sdk.clone(), done.clone());
        let (id, secret) = (old.clone(), old_secret.clone());
        tokio::spawn(async move {
            let aws = keyrotor_aws::Aws::new(&env_sdk);
            while !done.load(Ordering::SeqCst) {
                let _ = aws
                    .caller_arn(
                        &AccessKeyId::parse(&id).unwrap(),
                        &SecretString::from(secret.clone()),
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let out = env
        .run(&["rotate", "--force", "--wait-for-drain", "--output", "json"])
        .await;
    done.store(true, Ordering::SeqCst);
    consumer.await.unwrap();
    assert_eq!(out.code, 3, "{}", out.show());
    let t = out.target().unwrap();
    assert_eq!(t["failed_step"], "retire", "{}", out.show());
    let error = t["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&masked(&old)) && error.contains("still in use"),
        "the report names the key in use: {error}"
    );
    let aws = env.aws_state().await;
    assert_eq!(
        aws.keys.get(&old).map(String::as_str),
        Some("Active"),
        "the old key stays Active: {aws:#?}"
    );
    let new = aws.stage_key("AWSCURRENT").expect("AWSCURRENT holds a key");
    assert_ne!(new, old);
    assert_eq!(
        env.endpoint()["authorization"]["parameters"]["username"],
        new.as_str()
    );
    // A use during the first half of a drain is what the drain is for: checked in the
    // in-memory suite; here the signal also reaches Slack.
    let posts = env.posts();
    assert!(
        posts.iter().any(|p| p.body.contains("still in use")),
        "Slack names the key in use: {posts:?}"
    );
    env.stop().await;
}

/// A `rotate --force` now is refused (exit 3) with a reason naming `old` and `setting`, and
/// IAM, the secret and the connection are as they were, with no PUT sent.
async fn forced_rotation_is_refused_changing_nothing(env: &Env, old: &str, setting: &str) {
    let (before, puts) = (env.aws_state().await, env.puts().len());
    let endpoint = env.endpoint();
    let again = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(again.code, 3, "{}", again.show());
    assert_eq!(again.outcome(), "refused", "{}", again.show());
    let reason = message_of(&again.target().unwrap());
    assert!(
        reason.contains(setting) && reason.contains(&masked(old)),
        "{reason}"
    );
    assert_eq!(
        env.aws_state().await,
        before,
        "IAM and the secret are unchanged"
    );
    assert_eq!(env.puts().len(), puts, "no PUT reached Azure DevOps");
    assert_eq!(env.endpoint(), endpoint, "the connection is unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_retired_key_is_inactive_and_a_forced_rotation_waits_for_its_grace() {
    let env = setup().start().await;
    with_default_grace(&env);
    let old = env.initial_key.clone();
    let first = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(
        (first.code, first.outcome().as_str()),
        (0, "rotated"),
        "{}",
        first.show()
    );
    let aws = env.aws_state().await;
    assert_eq!(
        aws.keys.get(&old).map(String::as_str),
        Some("Inactive"),
        "retired is Inactive, not deleted: re-activating it is the way back: {aws:#?}"
    );
    assert_eq!(aws.stage_key("AWSPREVIOUS").as_deref(), Some(old.as_str()));
    forced_rotation_is_refused_changing_nothing(&env, &old, "delete_old_key_after").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_rotation_never_deletes_a_key_in_its_drain() {
    let env = setup().policy("drain = \"1h\"").start().await;
    let old = env.initial_key.clone();
    let first = env.run(&["rotate", "--force", "--output", "json"]).await;
    assert_eq!(
        (first.code, first.outcome().as_str()),
        (0, "rotated"),
        "{}",
        first.show()
    );
    let aws = env.aws_state().await;
    assert_eq!(aws.keys.get(&old).map(String::as_str), Some("Active"));
    // The moment every connection held the new key is recorded in the secret, not only in
    // this run's state.
    let current = aws.stage_json("AWSCURRENT").unwrap();
    assert!(
        current["KeyrotorConfirmedAt"].is_string(),
        "AWSCURRENT records the confirmation: {current}"
    );
    forced_rotation_is_refused_changing_nothing(&env, &old, "policy.drain").await;
    env.stop().await;
}
