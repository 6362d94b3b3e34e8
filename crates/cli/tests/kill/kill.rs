//! The kill driver.

use std::process::Stdio;
use std::time::{Duration, Instant};

use keyrotor_core::invariants::{World, WorldEndpoint, WorldKey};
use keyrotor_testkit::ado::{Fault, Op};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::env::{EP_ID, Env, ORG, SECRET, USER, spawn_env};

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

/// Makes the config's intent lease short, so a run killed inside create's window is outlived
/// quickly by the next run.
fn short_lease(env: &Env) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.replace(
        "[policy]\n",
        "[policy]\nintent_lease = \"2s\"\nowner_lease = \"2s\"\nverify_consecutive = 2\n",
    );
    std::fs::write(&env.config, text).unwrap();
}

fn command(env: &Env, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyrotor"));
    cmd.args(args)
        .arg("--config")
        .arg(&env.config)
        .env_clear()
        .envs(env.moto.env())
        .env("RUST_LOG", "keyrotor_core=info")
        .env("HOME", &env.dir)
        .env("AWS_CONFIG_FILE", env.dir.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            env.dir.join("no-aws-credentials"),
        )
        .current_dir(&env.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `rotate --force`, SIGKILLs it `offset_ms` after it logs the start of `step`.
/// Returns whether the kill landed (the step was reached before the run ended).
async fn kill_inside(env: &Env, step: &str, offset_ms: u64) -> bool {
    let mut child = command(env, &["rotate", "--force"])
        .spawn()
        .expect("keyrotor starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let wanted = [format!("step=\"{step}\""), format!("step={step}")];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .expect("the run logs its steps")
            .expect("reading stderr");
        let Some(line) = line else {
            let _ = child.wait().await;
            return false;
        };
        if line.contains("step started") && wanted.iter().any(|w| line.contains(w.as_str())) {
            break;
        }
    }
    if offset_ms > 0 {
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
    }
    // SIGKILL: no cleanup of any kind runs in the child.
    let _ = child.start_kill();
    let status = child.wait().await.unwrap();
    // Killed, or it finished in the meantime: either way the state must be safe.
    status.code().is_none() || status.success() || status.code() == Some(1)
}

/// The world as the invariants see it, from moto and the emulator.
async fn world(env: &Env) -> World {
    let aws = env.aws_state().await;
    let mut w = World::default();
    let secrets = {
        let known = env.known.lock().unwrap();
        known.secrets.clone()
    };
    let _ = secrets;
    for (id, status) in &aws.keys {
        let used = env
            .iam
            .get_access_key_last_used()
            .access_key_id(id)
            .send()
            .await
            .unwrap()
            .access_key_last_used()
            .and_then(|u| u.last_used_date())
            .is_some();
        w.keys.push(WorldKey {
            id: id.clone(),
            active: status == "Active",
            secret: None,
            used,
        });
    }
    // Secrets of keys: from every stored version of the secret (keyrotor's JSON).
    let mut pairs = vec![(env.initial_key.clone(), env.initial_secret.clone())];
    for version in aws.versions.keys() {
        let v = env
            .sm
            .get_secret_value()
            .secret_id(SECRET)
            .version_id(version)
            .send()
            .await
            .unwrap();
        if let Ok(j) =
            serde_json::from_str::<serde_json::Value>(v.secret_string().unwrap_or_default())
            && let (Some(i), Some(s)) = (j["AccessKeyId"].as_str(), j["SecretAccessKey"].as_str())
        {
            pairs.push((i.to_owned(), s.to_owned()));
        }
    }
    for k in &mut w.keys {
        k.secret = pairs
            .iter()
            .find(|(i, _)| i == &k.id)
            .map(|(_, s)| s.clone());
    }
    w.stages = aws.stages.clone().into_iter().collect();
    let ep = env.ado.endpoint(ORG, EP_ID).expect("the endpoint exists");
    let p = &ep["authorization"]["parameters"];
    w.endpoints.push(WorldEndpoint {
        name: "aws-prod".into(),
        username: p["username"].as_str().map(str::to_owned),
        password: p["password"].as_str().map(str::to_owned),
    });
    w.created = w
        .keys
        .iter()
        .map(|k| k.id.clone())
        .filter(|id| id != &env.initial_key)
        .collect();
    w
}

/// Runs `rotate` until it rotates or has nothing due (a killed run's intent may hold it off
/// for the lease), checking invariants after each run; then a last run must change nothing.
async fn converge(env: &Env, label: &str) {
    let mut outcome = String::new();
    for _ in 0..10 {
        let out = command(env, &["rotate", "--output", "json"])
            .output()
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{label}: rerun printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        outcome = doc["targets"][0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        world(env)
            .await
            .always()
            .unwrap_or_else(|v| panic!("{label}: after a rerun ({outcome}): {v}"));
        match outcome.as_str() {
            "rotated" | "nothing-due" => break,
            // Standing aside until the killed run's intent or ownership expires (both leases 2s).
            "busy" => tokio::time::sleep(Duration::from_millis(500)).await,
            other => panic!(
                "{label}: rerun ended {other}: {}",
                String::from_utf8_lossy(&out.stdout)
            ),
        }
    }
    assert!(
        matches!(outcome.as_str(), "rotated" | "nothing-due"),
        "{label}: never converged ({outcome})"
    );
    // After the key was replaced at least once (a forced rotation ran), the world converged.
    let w = world(env).await;
    w.after_success()
        .unwrap_or_else(|v| panic!("{label}: not converged: {v}"));
    let before = env.aws_state().await;
    let puts = env.puts().len();
    let out = command(env, &["rotate", "--output", "json"])
        .output()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
            let env = spawn_env().await;
            short_lease(&env);
            env.ado
                .inject(Fault::delay(Op::Any, ADO_DELAY_MS).forever());
            let label = format!("kill {offset} ms into {step}");
            if kill_inside(&env, step, offset).await {
                landed.insert(step);
            }
            kills += 1;
            world(&env)
                .await
                .always()
                .unwrap_or_else(|v| panic!("{label}: {v}"));
            // The endpoint still holds an Active key whose secret it stores (invariant 1), and
            // at most two keys exist (invariant 4): checked by always(). Now converge.
            converge(&env, &label).await;
            println!("kill: {label}: safe, converged");
            env.stop().await;
        }
    }
    println!("kills: {kills} runs killed, {kills} converged");
    for step in STEPS {
        assert!(landed.contains(step), "no kill landed inside {step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_started_together_create_one_key_between_them() {
    let env = spawn_env().await;
    short_lease(&env);
    env.ado.inject(Fault::delay(Op::Any, 30).forever());
    let a = command(&env, &["rotate", "--force", "--output", "json"]).output();
    let b = command(&env, &["rotate", "--force", "--output", "json"]).output();
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    let outcome = |o: &std::process::Output| {
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        doc["targets"][0]["outcome"].as_str().unwrap().to_owned()
    };
    let (oa, ob) = (outcome(&a), outcome(&b));
    assert!(oa == "rotated" || ob == "rotated", "{oa} / {ob}");
    // Every key that ever existed is in IAM or was retired; count the keys created: the
    // secret's versions that hold keyrotor's JSON for a key other than the initial one.
    let aws = env.aws_state().await;
    let mut created = std::collections::BTreeSet::new();
    for version in aws.versions.keys() {
        let v = env
            .sm
            .get_secret_value()
            .secret_id(SECRET)
            .version_id(version)
            .send()
            .await
            .unwrap();
        if let Ok(j) =
            serde_json::from_str::<serde_json::Value>(v.secret_string().unwrap_or_default())
            && let Some(i) = j["AccessKeyId"].as_str()
            && i != env.initial_key
        {
            created.insert(i.to_owned());
        }
    }
    assert_eq!(created.len(), 1, "{oa} / {ob}: keys created {created:?}");
    world(&env).await.always().unwrap();
    let _ = USER;
    converge(&env, "two processes").await;
    env.stop().await;
}
