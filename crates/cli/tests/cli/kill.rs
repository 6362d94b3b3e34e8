//! Kill at any moment: the real `keyrotor rotate` against moto and the Azure DevOps emulator
//! (every emulator call delayed, so each step takes measurable time) is SIGKILLed inside every
//! step of the protocol, at several offsets after the step starts; after each kill the
//! invariants are checked from the outside (IAM keys and last use, secret stages, the
//! emulator's stored credentials), then `rotate` runs again until it converges, and a last
//! `rotate` must change nothing (invariants 1-4, 6). Two processes started together on one
//! target: exactly one key is created (invariant 7).
//!
//! The kill suite runs under the default leases (a 5 min intent, a 30 min owner lease), and after
//! each kill a single clean run must finish the rotation at once (#21, 2): the killed run's
//! intent and lease name its process, which the next run on this machine sees dead.
//!
//! CI runs a sample (two offsets per step); the full set of offsets runs with
//! `KEYROTOR_FULL_MATRIX=1 cargo test -p keyrotor --test cli kill -- --nocapture`.

use std::time::Duration;

use keyrotor_testkit::ado::{Fault, Op};
use keyrotor_testkit::env::TestEnv as Env;

/// Per emulator call: stretches push and confirm (and inspect) so a kill lands inside them.
const ADO_DELAY_MS: u64 = 120;

const STEPS: [&str; 7] = [
    "inspect", "create", "verify", "push", "confirm", "promote", "retire",
];

fn offsets() -> Vec<u64> {
    if std::env::var_os("KEYROTOR_FULL_MATRIX").is_some() {
        vec![0, 5, 15, 40, 80, 150]
    } else {
        vec![0, 40]
    }
}

/// An env whose config has a short intent lease, so a run killed inside create's window is
/// outlived quickly by the next run.
pub(crate) async fn spawn_env() -> Env {
    crate::setup()
        .policy("intent_lease = \"2s\"")
        .policy("owner_lease = \"2s\"")
        .policy("verify_consecutive = 2")
        .start()
        .await
}

/// An env under the default intent and owner leases: after a kill, nothing but seeing the owner
/// dead lets the next run in before half an hour.
pub(crate) async fn spawn_env_default_leases() -> Env {
    crate::setup()
        .policy("verify_consecutive = 2")
        .start()
        .await
}

/// After a kill, one clean run (plain `rotate`) finishes the rotation (#21, 2): it rotates
/// (resuming or taking over the killed run's rotation, or after the killed run's create window
/// was tidied) or, when the killed run had not begun or had finished, has nothing due; exit 0.
/// A run that stood aside did nothing and must not exit 0. Then: one Active key, AWSCURRENT
/// names it, every connection holds it; and a last run changes nothing.
pub(crate) async fn finishes_in_one_run(env: &Env, label: &str) -> String {
    let out = env.run(&["rotate", "--output", "json"]).await;
    let outcome = out.outcome();
    if outcome == "busy" {
        assert_ne!(out.code, 0, "{label}: a run that stood aside exits 0");
    }
    assert!(
        matches!(outcome.as_str(), "rotated" | "nothing-due") && out.code == 0,
        "{label}: one clean run does not finish the rotation ({outcome}, exit {}): {}",
        out.code,
        out.show()
    );
    let w = env.world().await;
    w.after_success()
        .unwrap_or_else(|v| panic!("{label}: not converged after one run: {v}"));
    let aws = env.aws_state().await;
    let active = aws.active_keys();
    assert_eq!(active.len(), 1, "{label}: {aws:#?}");
    assert_eq!(
        aws.stage_key("AWSCURRENT").as_deref(),
        Some(active[0]),
        "{label}: AWSCURRENT names the Active key"
    );
    for c in env.connections() {
        assert_eq!(
            c.username.as_deref(),
            Some(active[0]),
            "{label}: connection {} holds another key",
            c.name
        );
    }
    let before = env.aws_state().await;
    let puts = env.puts().len();
    let again = env.run(&["rotate", "--output", "json"]).await;
    assert_eq!(
        (again.code, again.outcome().as_str()),
        (0, "nothing-due"),
        "{label}: invariant 6"
    );
    let after = env.aws_state().await;
    assert_eq!(before.keys, after.keys, "{label}: invariant 6 (IAM)");
    assert_eq!(before.stages, after.stages, "{label}: invariant 6 (secret)");
    assert_eq!(puts, env.puts().len(), "{label}: invariant 6 (ADO)");
    outcome
}

/// Starts `rotate --force`, SIGKILLs it `offset_ms` after it logs the start of `step`.
/// Returns whether the kill landed (the step was reached before the run ended).
pub(crate) async fn kill_inside(env: &Env, step: &str, offset_ms: u64) -> bool {
    let wanted = [format!("step=\"{step}\""), format!("step={step}")];
    let o = env
        .cmd(&["rotate", "--force"])
        .kill_after_line(
            move |line| {
                line.contains("step started") && wanted.iter().any(|w| line.contains(w.as_str()))
            },
            Duration::from_millis(offset_ms),
        )
        .run()
        .await;
    // Killed, or it finished in the meantime: either way the state must be safe.
    o.triggered && (o.killed || o.code == 0 || o.code == 1)
}

/// Runs `rotate` until it rotates or has nothing due (a killed run's intent may hold it off
/// for the lease), checking invariants after each run; then a last run must change nothing.
pub(crate) async fn converge(env: &Env, label: &str) {
    let mut outcome = String::new();
    for _ in 0..10 {
        let out = env.run(&["rotate", "--output", "json"]).await;
        let doc = out
            .try_json()
            .unwrap_or_else(|| panic!("{label}: rerun printed no JSON: {}", out.show()));
        outcome = doc["targets"][0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        env.world()
            .await
            .always()
            .unwrap_or_else(|v| panic!("{label}: after a rerun ({outcome}): {v}"));
        match outcome.as_str() {
            "rotated" | "nothing-due" => break,
            // Standing aside until the killed run's intent or ownership expires (both leases 2s).
            "busy" => tokio::time::sleep(Duration::from_millis(500)).await,
            other => panic!("{label}: rerun ended {other}: {}", out.stdout),
        }
    }
    assert!(
        matches!(outcome.as_str(), "rotated" | "nothing-due"),
        "{label}: never converged ({outcome})"
    );
    // After the key was replaced at least once (a forced rotation ran), the world converged.
    let w = env.world().await;
    w.after_success()
        .unwrap_or_else(|v| panic!("{label}: not converged: {v}"));
    let before = env.aws_state().await;
    let puts = env.puts().len();
    let out = env.run(&["rotate", "--output", "json"]).await;
    let doc = out.json();
    assert_eq!(
        doc["targets"][0]["outcome"], "nothing-due",
        "{label}: invariant 6"
    );
    let after = env.aws_state().await;
    assert_eq!(before.keys, after.keys, "{label}: invariant 6 (IAM)");
    assert_eq!(before.stages, after.stages, "{label}: invariant 6 (secret)");
    assert_eq!(puts, env.puts().len(), "{label}: invariant 6 (ADO)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_inside_every_step_leaves_a_safe_state_and_the_next_run_converges() {
    let mut kills = 0;
    let mut landed = std::collections::BTreeSet::new();
    for step in STEPS {
        for offset in offsets() {
            let env = spawn_env_default_leases().await;
            env.ado
                .inject(Fault::delay(Op::Any, ADO_DELAY_MS).forever());
            let label = format!("kill {offset} ms into {step}");
            if kill_inside(&env, step, offset).await {
                landed.insert(step);
            }
            kills += 1;
            env.world()
                .await
                .always()
                .unwrap_or_else(|v| panic!("{label}: {v}"));
            // The endpoint still holds an Active key whose secret it stores (invariant 1), and
            // at most two keys exist (invariant 4): checked by always(). Now one clean run,
            // without the emulator's delays, under the default leases.
            env.ado.clear_faults();
            let outcome = finishes_in_one_run(&env, &label).await;
            println!("kill: {label}: safe, finished by one run ({outcome})");
            env.stop().await;
        }
    }
    println!("kills: {kills} runs killed, {kills} finished by one clean run");
    for step in STEPS {
        assert!(landed.contains(step), "no kill landed inside {step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_started_together_create_one_key_between_them() {
    let env = spawn_env().await;
    env.ado.inject(Fault::delay(Op::Any, 30).forever());
    let a = env.run(&["rotate", "--force", "--output", "json"]);
    let b = env.run(&["rotate", "--force", "--output", "json"]);
    let (a, b) = tokio::join!(a, b);
    let outcome = |o: &keyrotor_testkit::env::Output| {
        o.json()["targets"][0]["outcome"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (oa, ob) = (outcome(&a), outcome(&b));
    assert!(oa == "rotated" || ob == "rotated", "{oa} / {ob}");
    // Every key that ever existed is in IAM or was retired; count the keys created: the
    // secret's versions that hold keyrotor's JSON for a key other than the initial one.
    let mut created = std::collections::BTreeSet::new();
    for v in env.secret_versions().await {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&v)
            && let Some(i) = j["AccessKeyId"].as_str()
            && i != env.initial_key
        {
            created.insert(i.to_owned());
        }
    }
    assert_eq!(created.len(), 1, "{oa} / {ob}: keys created {created:?}");
    env.world().await.always().unwrap();
    converge(&env, "two processes").await;
    env.stop().await;
}
