//! The protocol against the in-memory fakes: rotation, refusal, resumption, compensation, a
//! crash at every port call, and two runs racing.

use std::sync::Arc;
use std::time::Duration;

use keyrotor_core::domain::RunId;
use keyrotor_core::engine::{self, Observer, RunOptions};
use keyrotor_core::ports::{PortError, PortErrorKind};
use keyrotor_core::report::{Outcome, Step, TargetReport};
use keyrotor_testkit::fakes::{Scenario, Tripwire};

/// Whether the user has key `id` (in any state).
fn has_key(sc: &Scenario, id: &str) -> bool {
    sc.fakes.state().users["pipeline"]
        .iter()
        .any(|k| k.id == id)
}

/// Whether the user has key `id` and it is Active.
fn is_active(sc: &Scenario, id: &str) -> bool {
    sc.fakes.state().users["pipeline"]
        .iter()
        .any(|k| k.id == id && k.active)
}

/// A forced run (rotates whatever the key's age).
async fn forced(sc: &Scenario) -> TargetReport {
    let mut o = opts();
    o.force = true;
    engine::run_target(&sc.fakes.ports(), &sc.policy, &sc.target, &o, &quiet()).await
}

fn quiet() -> Observer {
    Arc::new(|_| {})
}

fn opts() -> RunOptions {
    RunOptions {
        wait_for_drain: false,
        run_id: RunId::new(),
        force: false,
        dry_run: false,
        origin: "test".into(),
    }
}

async fn run(sc: &Scenario) -> TargetReport {
    engine::run_target(&sc.fakes.ports(), &sc.policy, &sc.target, &opts(), &quiet()).await
}

/// A whole run over the scenario's one target, with the fakes as its notifier.
async fn run_notifying(sc: &Scenario) -> keyrotor_core::report::RunReport {
    let targets = [sc.target.clone()];
    let notifier: &dyn keyrotor_core::ports::Notifier = &sc.fakes;
    engine::run(
        &sc.fakes.ports(),
        &sc.policy,
        &targets,
        &opts(),
        Some(notifier),
        &quiet(),
    )
    .await
}

/// Adds a connection outside the config (organization `ORG`, `project`/`name`) holding the
/// scenario's initial key; returns that key's id.
fn holder_outside_config(sc: &Scenario, project: &str, name: &str) -> String {
    let (old, secret) = &sc.initial_key;
    sc.fakes.add_endpoint(
        keyrotor_testkit::fakes::ORG,
        project,
        name,
        Some((old, secret)),
    );
    old.clone()
}

/// A one-connection scenario with a drain of `drain`, rotated once by a forced run: the
/// scenario, the old key's id and the run's report.
async fn rotated_with_drain(drain: Duration) -> (Scenario, String, TargetReport) {
    let mut sc = Scenario::new(1);
    sc.policy.drain = drain;
    let old = sc.initial_key.0.clone();
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    (sc, old, r)
}

/// Past the drain (and the verify budget), a run retires the old key `old`.
async fn a_run_after_the_drain_retires(sc: &Scenario, old: &str) {
    sc.fakes
        .advance(sc.policy.drain + sc.policy.verify_timeout + Duration::from_secs(1));
    let r = run(sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(!has_key(sc, old), "retired after the drain");
}

#[tokio::test(start_paused = true)]
async fn a_due_key_is_rotated_and_every_invariant_holds() {
    let sc = Scenario::new(2);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    sc.world().after_success().unwrap();
    let st = sc.fakes.state();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    assert_eq!(st.creates, 1);
    assert_eq!(st.limit_exceeded, 0);
    let keys = &st.users["pipeline"];
    assert_eq!(keys.len(), 1, "no grace: the old key is deleted");
    assert_ne!(keys[0].id, sc.initial_key.0);
    assert_eq!(r.steps, Step::ROTATION);
}

#[tokio::test(start_paused = true)]
async fn a_second_run_right_after_a_success_changes_nothing() {
    let sc = Scenario::new(1);
    assert_eq!(run(&sc).await.outcome, Outcome::Rotated);
    let before = sc.fakes.state().mutations;
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(r.reason.unwrap().contains("younger than min_key_age"));
    assert_eq!(sc.fakes.state().mutations, before);
}

#[tokio::test(start_paused = true)]
async fn a_grace_period_keeps_the_old_key_inactive_until_a_later_run() {
    let mut sc = Scenario::new(1);
    sc.policy.delete_old_key_after = Duration::from_secs(86400);
    assert_eq!(run(&sc).await.outcome, Outcome::Rotated);
    {
        let st = sc.fakes.state();
        let keys = &st.users["pipeline"];
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().any(|k| k.id == sc.initial_key.0 && !k.active));
    }
    sc.world().after_success().unwrap();
    assert_eq!(run(&sc).await.outcome, Outcome::NothingDue);
    assert_eq!(
        sc.fakes.state().users["pipeline"].len(),
        2,
        "still in grace"
    );
    // The grace counts from the drain's end; with no drain nothing is recorded at promote, so the
    // confirmation is estimated from the key's creation plus verify_timeout and ten minutes.
    sc.fakes.advance(Duration::from_secs(86400));
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue);
    assert_eq!(
        sc.fakes.state().users["pipeline"].len(),
        2,
        "still in grace"
    );
    sc.fakes
        .advance(sc.policy.verify_timeout + Duration::from_secs(601));
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue);
    assert!(r.reason.unwrap().contains("finished retiring"));
    assert_eq!(sc.fakes.state().users["pipeline"].len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_first_run_without_a_secret_adopts_the_key_ado_holds() {
    let sc = Scenario::new(1);
    sc.fakes.state().secrets.clear();
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_legacy_secret_with_a_bare_secret_key_is_adopted() {
    let sc = Scenario::new(1);
    sc.fakes.state().secrets.clear();
    sc.fakes.set_secret("pipeline-key", &sc.initial_key.1);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_oidc_endpoint_is_refused_and_nothing_changes() {
    let sc = Scenario::new(1);
    sc.fakes.state().endpoints[0].oidc = true;
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.error.unwrap().contains("OIDC"));
    assert_eq!(sc.fakes.state().mutations, 0);
}

#[tokio::test(start_paused = true)]
async fn a_non_aws_endpoint_is_refused() {
    let sc = Scenario::new(1);
    sc.fakes.state().endpoints[0].kind = "azurerm".into();
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.error.unwrap().contains("not AWS"));
    assert_eq!(sc.fakes.state().mutations, 0);
}

#[tokio::test(start_paused = true)]
async fn two_active_keys_both_in_use_are_refused() {
    let sc = Scenario::new(2);
    let other = sc.fakes.add_key("pipeline", Duration::from_secs(86400));
    {
        let mut st = sc.fakes.state();
        st.endpoints[1].username = Some(other.0.clone());
        st.endpoints[1].password = Some(other.1.clone());
    }
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.error.unwrap().contains("two active keys"));
    assert_eq!(sc.fakes.state().mutations, 0);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_key_that_was_used_is_refused_not_deleted() {
    let sc = Scenario::new(1);
    sc.fakes.add_key("pipeline", Duration::from_secs(86400));
    sc.fakes.state().users.get_mut("pipeline").unwrap()[1].used =
        Some(std::time::SystemTime::UNIX_EPOCH);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused);
    assert!(r.error.unwrap().contains("was last used"));
    assert_eq!(sc.fakes.state().users["pipeline"].len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_orphan_a_crashed_run_announced_is_deleted_before_rotating() {
    let sc = Scenario::new(1);
    let (id, _) = sc.fakes.add_key("pipeline", Duration::from_secs(3600));
    // The crashed run's intent: written just before the key, expired since.
    {
        let mut st = sc.fakes.state();
        let created = st.users["pipeline"]
            .iter()
            .find(|k| k.id == id)
            .unwrap()
            .created;
        let intent = keyrotor_core::secret_value::intent_value(
            "crashed-run",
            created + Duration::from_secs(60),
        );
        let versions = st.secrets.get_mut("pipeline-key").unwrap();
        versions.push(keyrotor_testkit::fakes::FakeVersion {
            id: "intent-of-the-crashed-run-000000000".into(),
            value: secrecy::ExposeSecret::expose_secret(&intent).to_owned(),
            stages: vec!["AWSPENDING".into()],
        });
    }
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    assert!(r.steps.contains(&Step::Cleanup));
    assert!(!has_key(&sc, &id), "the orphan is gone");
    assert_eq!(
        sc.fakes.state().limit_exceeded,
        0,
        "invariant 4: no LimitExceeded from our leftovers"
    );
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_a_person_created_is_never_deleted() {
    // "Safe among others", case 3: someone creates a second key for a new consumer; the next
    // run deleted it as a "never used orphan".
    let sc = Scenario::new(1);
    let (id, _) = sc.fakes.add_key("pipeline", Duration::from_secs(600));
    let before = sc.fakes.state().mutations;
    let r = run(&sc).await;
    assert_eq!(
        r.outcome,
        Outcome::Refused,
        "a due rotation needs its room: {r:?}"
    );
    assert!(
        r.error.as_deref().unwrap().contains("did not create"),
        "{r:?}"
    );
    {
        let st = sc.fakes.state();
        assert_eq!(st.mutations, before, "nothing changed");
        assert!(st.users["pipeline"].iter().any(|k| k.id == id && k.active));
    }

    // Nothing due: the key is left alone, and the run is fine.
    let mut young = Scenario::new(1);
    young.policy.min_key_age = Duration::from_secs(30 * 86_400);
    let (id, _) = young.fakes.add_key("pipeline", Duration::from_secs(600));
    let r = run(&young).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(is_active(&young, &id));
}

#[tokio::test(start_paused = true)]
async fn an_unknown_user_is_invalid() {
    let sc = Scenario::new(1);
    sc.fakes.state().users.clear();
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Invalid);
    assert!(r.error.unwrap().contains("pipeline"));
}

#[tokio::test(start_paused = true)]
async fn a_secret_that_holds_something_else_is_invalid() {
    let sc = Scenario::new(1);
    sc.fakes
        .set_secret("pipeline-key", "{\"database\":\"postgres\"}");
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Invalid);
    assert_eq!(sc.fakes.state().creates, 0);
}

#[tokio::test(start_paused = true)]
async fn a_key_iam_never_accepts_is_deleted_and_the_old_one_kept() {
    let mut sc = Scenario::new(1);
    sc.fakes.state().propagation = Duration::from_secs(100_000);
    sc.policy.verify_timeout = Duration::from_secs(30);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.failed_step, Some(Step::Verify));
    assert!(r.compensation.unwrap().contains("was deleted"));
    let st = sc.fakes.state();
    assert_eq!(st.users["pipeline"].len(), 1);
    assert_eq!(st.users["pipeline"][0].id, sc.initial_key.0);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    drop(st);
    sc.world().pipelines_work().unwrap();
    assert!(!sc.world().stages.contains_key("AWSPENDING"));
}

#[tokio::test(start_paused = true)]
async fn a_permanent_push_failure_puts_switched_endpoints_back_on_the_old_key() {
    let sc = Scenario::new(3);
    let denied = PortError::new(
        PortErrorKind::Forbidden,
        "Access denied: needs Service Connections (manage)",
    );
    sc.fakes.state().ado_put_script = [None, Some(denied)].into_iter().collect();
    let fakes = sc.fakes.clone();
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.failed_step, Some(Step::Push));
    let c = r.compensation.unwrap();
    assert!(c.contains("was deleted"), "{c}");
    let st = fakes.state();
    assert!(
        st.endpoints
            .iter()
            .all(|e| e.username.as_deref() == Some(sc.initial_key.0.as_str()))
    );
    assert_eq!(st.users["pipeline"].len(), 1);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

/// Runs until the target converges (advancing the clock past the leases when a dead run's intent
/// or ownership holds it off), checking invariants after every run.
async fn converge(sc: &Scenario, label: &str) {
    for attempt in 0..4 {
        let r = run(sc).await;
        sc.world()
            .always()
            .unwrap_or_else(|v| panic!("{label}, rerun {attempt}: {v}"));
        match r.outcome {
            Outcome::Rotated | Outcome::NothingDue => {
                sc.world()
                    .after_success()
                    .unwrap_or_else(|v| panic!("{label}, after rerun {attempt}: {v} ({r:?})"));
                let before = sc.fakes.state().mutations;
                let again = run(sc).await;
                assert_eq!(
                    again.outcome,
                    Outcome::NothingDue,
                    "{label}: invariant 6 ({again:?})"
                );
                assert_eq!(sc.fakes.state().mutations, before, "{label}: invariant 6");
                return;
            }
            Outcome::Busy => sc.fakes.advance(
                sc.policy.intent_lease.max(sc.policy.owner_lease) + Duration::from_secs(1),
            ),
            _ => panic!(
                "{label}: rerun {attempt} ended {:?}: {:?}",
                r.outcome, r.error
            ),
        }
    }
    panic!("{label}: did not converge in 4 reruns");
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_every_port_call_is_recovered_by_the_next_run() {
    crash_everywhere(|sc| sc).await;
}

/// The older design's secret: the bare secret access key.
fn legacy(sc: Scenario) -> Scenario {
    sc.fakes.state().secrets.clear();
    sc.fakes
        .set_secret("pipeline-key", &sc.initial_key.1.clone());
    sc
}

/// No secret yet: the first run creates it (its first version, the intent, gets AWSCURRENT).
fn no_secret(sc: Scenario) -> Scenario {
    sc.fakes.state().secrets.clear();
    sc
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_every_port_call_of_a_first_run_without_a_secret_is_recovered() {
    crash_everywhere(no_secret).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_every_port_call_of_a_first_run_on_a_legacy_secret_is_recovered() {
    crash_everywhere(legacy).await;
}

/// Kills a run at every port call (before and after the call takes effect), then checks the
/// invariants and that the next runs converge.
async fn crash_everywhere(start: fn(Scenario) -> Scenario) {
    // Count the calls of a clean run.
    let clean = start(Scenario::new(2));
    assert_eq!(run(&clean).await.outcome, Outcome::Rotated);
    let total = clean.fakes.state().calls;
    assert!(total > 20, "a rotation makes {total} calls");

    let mut steps_hit = std::collections::BTreeSet::new();
    for at in 1..=total {
        for after_effect in [false, true] {
            let sc = start(Scenario::new(2));
            let world = sc.fakes.clone();
            let seen = Arc::new(std::sync::Mutex::new(None));
            let seen2 = seen.clone();
            let observer: Observer = Arc::new(move |e| {
                if e.phase == keyrotor_core::engine::Phase::Started && !world.state().tripwire.fired
                {
                    *seen2.lock().unwrap() = Some(e.step);
                }
            });
            sc.fakes.state().tripwire = Tripwire {
                at: Some(at),
                after_effect,
                fired: false,
            };
            let r = engine::run_target(
                &sc.fakes.ports(),
                &sc.policy,
                &sc.target,
                &opts(),
                &observer,
            )
            .await;
            let label = format!(
                "crash at call {at} ({}) in {:?}",
                if after_effect {
                    "after effect"
                } else {
                    "before effect"
                },
                seen.lock().unwrap()
            );
            assert!(
                sc.fakes.state().tripwire.fired,
                "{label}: the tripwire did not fire ({r:?})"
            );
            if let Some(step) = *seen.lock().unwrap() {
                steps_hit.insert(step);
            }
            {
                let st = sc.fakes.state();
                assert!(st.violations.is_empty(), "{label}: {:?}", st.violations);
            }
            sc.world()
                .always()
                .unwrap_or_else(|v| panic!("{label}: {v}"));
            sc.fakes.state().tripwire = Tripwire::default();
            converge(&sc, &label).await;
            let st = sc.fakes.state();
            assert!(st.violations.is_empty(), "{label}: {:?}", st.violations);
            assert_eq!(st.limit_exceeded, 0, "{label}: invariant 4");
        }
    }
    println!(
        "crashes: {} kills ({total} port calls x before/after effect), {} converged, steps hit: {steps_hit:?}",
        total * 2,
        total * 2
    );
    for step in Step::ROTATION {
        assert!(
            steps_hit.contains(&step),
            "no crash landed in {step}: {steps_hit:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_cleanup_is_recovered_too() {
    // A scenario whose clean run needs cleanup (an orphan and a retired key to make room).
    let build = || {
        let mut sc = Scenario::new(1);
        sc.policy.delete_old_key_after = Duration::from_secs(3600);
        sc
    };
    let sc = build();
    assert_eq!(run(&sc).await.outcome, Outcome::Rotated);
    sc.fakes.advance(Duration::from_secs(7 * 86400));
    let start = sc.fakes.state().calls;
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated);
    assert!(r.steps.contains(&Step::Cleanup));
    let total = sc.fakes.state().calls - start;
    for at in 1..=total {
        let sc = build();
        assert_eq!(run(&sc).await.outcome, Outcome::Rotated);
        sc.fakes.advance(Duration::from_secs(7 * 86400));
        let base = sc.fakes.state().calls;
        sc.fakes.state().tripwire = Tripwire {
            at: Some(base + at),
            after_effect: at % 2 == 0,
            fired: false,
        };
        let _ = run(&sc).await;
        sc.world()
            .always()
            .unwrap_or_else(|v| panic!("crash at {at}: {v}"));
        sc.fakes.state().tripwire = Tripwire::default();
        converge(&sc, &format!("second rotation, crash at {at}")).await;
    }
}

#[tokio::test(start_paused = true)]
async fn two_runs_racing_never_both_create_a_key() {
    for head_start in 0..40u32 {
        let sc = Scenario::new(2);
        sc.fakes.state().yield_every_call = true;
        let a = run(&sc);
        let b = async {
            for _ in 0..head_start {
                tokio::task::yield_now().await;
            }
            run(&sc).await
        };
        let (ra, rb) = futures::join!(a, b);
        let (creates, violations) = {
            let st = sc.fakes.state();
            (st.creates, st.violations.clone())
        };
        assert_eq!(creates, 1, "head start {head_start}: {ra:?} / {rb:?}");
        assert!(
            violations.is_empty(),
            "head start {head_start}: {violations:?}"
        );
        let outcomes = [ra.outcome, rb.outcome];
        assert!(
            outcomes.contains(&Outcome::Rotated),
            "head start {head_start}: {outcomes:?} {:?} {:?}",
            ra.error,
            rb.error
        );
        for o in outcomes {
            assert!(
                matches!(o, Outcome::Rotated | Outcome::Busy | Outcome::NothingDue),
                "head start {head_start}: {o:?} {:?} {:?}",
                ra,
                rb
            );
        }
        sc.fakes.state().yield_every_call = false;
        converge(&sc, &format!("race with head start {head_start}")).await;
        println!(
            "race: head start {head_start}: {:?} / {:?}, one key created",
            ra.outcome, rb.outcome
        );
        assert!(
            sc.fakes.state().users["pipeline"]
                .iter()
                .all(|k| k.active || sc.policy.delete_old_key_after > Duration::ZERO)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn slack_hears_of_a_rotation_but_not_of_a_run_with_nothing_due() {
    use keyrotor_core::report::NotificationStatus;
    let sc = Scenario::new(1);
    let r = run_notifying(&sc).await;
    assert_eq!(r.notification, NotificationStatus::Sent);
    assert_eq!(sc.fakes.state().notifications.len(), 1);
    let r = run_notifying(&sc).await;
    assert_eq!(r.targets[0].outcome, Outcome::NothingDue);
    assert_eq!(r.notification, NotificationStatus::Skipped);
    assert_eq!(
        sc.fakes.state().notifications.len(),
        1,
        "no message for a quiet run"
    );
}

#[tokio::test(start_paused = true)]
async fn fields_other_readers_rely_on_survive_every_rotation() {
    // "Safe among others", case 4: a secret JSON with fields keyrotor does not own came back
    // with only keyrotor's four.
    let sc = Scenario::new(1);
    let (old_id, old_secret) = sc.initial_key.clone();
    {
        let mut st = sc.fakes.state();
        let v = st
            .secrets
            .get_mut("pipeline-key")
            .unwrap()
            .last_mut()
            .unwrap();
        let mut j: serde_json::Value = serde_json::from_str(&v.value).unwrap();
        j["Region"] = serde_json::json!("eu-west-1");
        j["Owner"] = serde_json::json!({"team": "platform", "oncall": ["a", "b"]});
        v.value = j.to_string();
    }
    for round in 0..2 {
        let r = forced(&sc).await;
        assert_eq!(r.outcome, Outcome::Rotated, "round {round}: {r:?}");
        let st = sc.fakes.state();
        let current = st.secrets["pipeline-key"]
            .iter()
            .find(|v| v.stages.iter().any(|s| s == "AWSCURRENT"))
            .unwrap();
        let j: serde_json::Value = serde_json::from_str(&current.value).unwrap();
        assert_eq!(j["Region"], "eu-west-1", "round {round}: {j}");
        assert_eq!(j["Owner"]["oncall"][1], "b", "round {round}");
        assert_ne!(j["AccessKeyId"], old_id.as_str());
        assert!(
            !current.value.contains(&old_secret),
            "the old secret is not carried over"
        );
        assert!(j.get("KeyrotorIntent").is_none());
    }
}

// ---- Safe among others: other runs, other connections (checked from outside: the fake IAM,
// the secret's stages and every connection of the organization).

use keyrotor_core::machine::{self, Context, TargetState};
use keyrotor_core::protocol::Ports;

/// The machine's context for a scenario (`waits`: the driver waits out the drain, as Step
/// Functions does).
fn context<'a>(sc: &'a Scenario, ports: &'a Ports, waits: bool) -> Context<'a> {
    Context {
        ports,
        policy: &sc.policy,
        target: &sc.target,
        verify_budget: sc.policy.verify_timeout,
        waits_for_drain: waits,
    }
}

/// Drives a run through core's machine until the step it would run next is `until` (or done).
async fn drive_until(sc: &Scenario, s: &mut TargetState, until: Option<Step>) {
    let ports = sc.fakes.ports();
    let cx = context(sc, &ports, false);
    while s.next.is_some() && s.next != until {
        if let Err(e) = machine::advance(&cx, s).await {
            machine::fail(s, e);
        }
    }
}

fn run_state(sc: &Scenario, id: &str) -> TargetState {
    TargetState::new(&sc.target, RunId::parse(id).unwrap(), true)
}

/// From outside: the user has an Active key, every connection of the organization holds an
/// existing Active key, and AWSCURRENT names an existing key.
fn nobody_is_left_without_a_key(sc: &Scenario, label: &str) {
    let st = sc.fakes.state();
    let keys = &st.users["pipeline"];
    assert!(
        keys.iter().any(|k| k.active),
        "{label}: no Active key left: {keys:?}"
    );
    for e in &st.endpoints {
        let held = e.username.as_deref().unwrap_or_default();
        assert!(
            keys.iter().any(|k| k.id == held && k.active),
            "{label}: connection {} holds {held}, which is not an Active key",
            e.name
        );
    }
    let current = st.secrets["pipeline-key"]
        .iter()
        .find(|v| v.stages.iter().any(|s| s == "AWSCURRENT"))
        .expect("AWSCURRENT");
    let j: serde_json::Value = serde_json::from_str(&current.value).unwrap();
    assert!(
        keys.iter().any(|k| j["AccessKeyId"] == k.id.as_str()),
        "{label}: AWSCURRENT names a key that does not exist"
    );
    drop(st);
    sc.world()
        .always()
        .unwrap_or_else(|v| panic!("{label}: {v}"));
}

#[tokio::test(start_paused = true)]
async fn two_overlapping_runs_never_leave_the_user_without_a_key() {
    // "Safe among others", case 1: A creates and verifies; B starts and (was) resumed A's key;
    // A's PUT is refused for good and A compensates (deletes the new key); B's PUT then landed
    // the deleted key, B promoted it and retired the old one: zero keys.
    let sc = Scenario::new(1);
    let mut a = run_state(&sc, "run-a");
    drive_until(&sc, &mut a, Some(Step::Push)).await;
    let mut b = run_state(&sc, "run-b");
    drive_until(&sc, &mut b, Some(Step::Push)).await;
    assert_eq!(
        b.outcome,
        Some(Outcome::Busy),
        "B stands aside: A owns the rotation ({b:?})"
    );
    assert_eq!(b.next, None);

    sc.fakes.state().ado_put_script = [Some(PortError::new(
        PortErrorKind::Failed,
        "TF400813: refused",
    ))]
    .into_iter()
    .collect();
    drive_until(&sc, &mut a, None).await;
    assert_eq!(a.outcome, Some(Outcome::Failed));
    assert!(
        a.compensation.as_deref().unwrap().contains("deleted"),
        "{a:?}"
    );
    drive_until(&sc, &mut b, None).await;
    nobody_is_left_without_a_key(&sc, "after A compensated and B went on");
    assert_eq!(sc.fakes.state().users["pipeline"].len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_run_whose_lease_expired_is_taken_over_and_stands_aside_without_undoing_anything() {
    let sc = Scenario::new(1);
    let mut a = run_state(&sc, "run-a");
    drive_until(&sc, &mut a, Some(Step::Push)).await;
    // A stalls past its lease; B takes the rotation over and finishes it.
    sc.fakes
        .advance(sc.policy.owner_lease + Duration::from_secs(1));
    let mut b = run_state(&sc, "run-b");
    drive_until(&sc, &mut b, Some(Step::Promote)).await;
    assert_eq!(b.failure, None, "{b:?}");
    assert_eq!(b.progress.new_key, a.progress.new_key, "B resumed A's key");
    // A wakes up: before its PUT it sees it lost the rotation, and undoes nothing.
    drive_until(&sc, &mut a, None).await;
    assert_eq!(a.outcome, Some(Outcome::Busy), "{a:?}");
    assert!(a.compensation.is_none(), "{a:?}");
    drive_until(&sc, &mut b, None).await;
    assert_eq!(b.outcome, Some(Outcome::Rotated), "{b:?}");
    nobody_is_left_without_a_key(&sc, "after the takeover");
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_key_that_a_connection_outside_the_config_holds_is_not_retired() {
    // "Safe among others", case 2: another project's AWS connection, not in the config, holds
    // the same key; the rotation used to delete the key under it.
    let sc = Scenario::new(1);
    let old = holder_outside_config(&sc, "Billing", "aws-shared");
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert_eq!(r.failed_step, Some(Step::Retire));
    let error = r.error.clone().unwrap();
    assert!(
        error.contains("Billing/aws-shared") && error.contains("not in this target's config"),
        "{error}"
    );
    assert!(!error.contains(&old), "key ids are masked: {error}");
    let st = sc.fakes.state();
    let k = st.users["pipeline"]
        .iter()
        .find(|k| k.id == old)
        .expect("the old key still exists");
    assert!(k.active, "and is still Active");
    let listed = st.endpoints.iter().find(|e| e.name == "aws-0").unwrap();
    assert_ne!(
        listed.username.as_deref(),
        Some(old.as_str()),
        "the listed connection was rotated"
    );
    drop(st);
    nobody_is_left_without_a_key(&sc, "unlisted holder");
}

/// How a run records a failed step: in-process (the CLI keeps what the step did before it
/// failed) or as the Lambda does (the failed invocation's partial progress is lost; the Catch
/// hands the state it started from to `compensate`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Driver {
    Cli,
    Lambda,
}

/// One step of a run through core's machine, recording a failure as its driver does.
async fn step_once(sc: &Scenario, s: &mut TargetState, driver: Driver) {
    let ports = sc.fakes.ports();
    let cx = context(sc, &ports, false);
    let before = s.clone();
    if let Err(e) = machine::advance(&cx, s).await {
        match driver {
            Driver::Cli => machine::fail(s, e),
            Driver::Lambda => {
                *s = before;
                machine::failed_elsewhere(s, machine::error_name(e.kind), &e.message);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn two_runs_interleaved_at_every_step_with_a_failure_or_a_death_leave_everyone_a_key() {
    // "Safe among others": B starts after A's i-th step and runs j steps, then A goes on (or
    // has died), then B finishes; one of them may have its PUT refused for good. Every pair of
    // drivers (CLI and CLI, CLI and Step Functions, two executions). Checked from outside after
    // every single step; afterwards a fresh run converges.
    let mut cases = 0;
    for (da, db) in [
        (Driver::Cli, Driver::Cli),
        (Driver::Cli, Driver::Lambda),
        (Driver::Lambda, Driver::Cli),
        (Driver::Lambda, Driver::Lambda),
    ] {
        for trouble in ["none", "a-put-refused", "b-put-refused", "a-dies"] {
            for i in 0..=7usize {
                for j in [0usize, 1, 2, 3, 5, 9] {
                    cases += 1;
                    let label = format!("{da:?}/{db:?} {trouble} i={i} j={j}");
                    let sc = Scenario::new(2);
                    let mut a = run_state(&sc, "run-a");
                    let mut b = run_state(&sc, "run-b");
                    let refuse_next_put = |sc: &Scenario, s: &TargetState, who: &str| {
                        if s.next == Some(Step::Push) && trouble == format!("{who}-put-refused") {
                            sc.fakes.state().ado_put_script = [Some(PortError::new(
                                PortErrorKind::Failed,
                                "TF400813: refused",
                            ))]
                            .into_iter()
                            .collect();
                        }
                    };
                    // One step of `who`'s run, then the check from outside.
                    let step = async |s: &mut TargetState, who: &str, driver: Driver| {
                        refuse_next_put(&sc, s, who);
                        step_once(&sc, s, driver).await;
                        nobody_is_left_without_a_key(&sc, &label);
                    };
                    for _ in 0..i {
                        if a.next.is_none() {
                            break;
                        }
                        step(&mut a, "a", da).await;
                    }
                    for _ in 0..j {
                        if b.next.is_none() {
                            break;
                        }
                        step(&mut b, "b", db).await;
                    }
                    if trouble != "a-dies" {
                        while a.next.is_some() {
                            step(&mut a, "a", da).await;
                        }
                    }
                    while b.next.is_some() {
                        step(&mut b, "b", db).await;
                    }
                    sc.fakes.state().ado_put_script.clear();
                    assert!(
                        sc.fakes.state().limit_exceeded <= 1,
                        "{label}: at most the losing run meets the two-key limit"
                    );
                    converge(&sc, &label).await;
                }
            }
        }
    }
    println!(
        "interleavings: {cases} cases (2 runs, 4 driver pairs, 4 troubles), all safe and converged"
    );
}

#[tokio::test(start_paused = true)]
async fn running_jobs_keep_the_old_key_for_the_drain_on_both_drivers() {
    // "Safe among others", case 5: with the old key deleted seconds after the push, a job that
    // started a minute before the rotation failed at its next AWS call.
    let drain = Duration::from_secs(3600);
    // The CLI, not waiting: the rotation ends with the old key Active and its due time.
    let (sc, old, r) = rotated_with_drain(drain).await;
    assert!(
        r.reason.as_deref().unwrap().contains("stays Active until"),
        "{r:?}"
    );
    assert!(
        is_active(&sc, &old),
        "the old key is Active during the drain"
    );
    assert!(
        sc.fakes
            .state()
            .endpoints
            .iter()
            .all(|e| e.username.as_deref() != Some(old.as_str())),
        "every connection holds the new key"
    );
    // A run within the drain leaves it alone; the first run after it retires it.
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(is_active(&sc, &old));
    a_run_after_the_drain_retires(&sc, &old).await;
    sc.world().after_success().unwrap();

    // Step Functions: the machine goes on to retire at `retire_at`, which the Wait state waits
    // for; a retire invoked earlier is refused (retryable) and changes nothing.
    let old = sc.fakes.state().users["pipeline"][0].id.clone();
    let ports = sc.fakes.ports();
    let cx = context(&sc, &ports, true);
    let mut s = run_state(&sc, "execution-1");
    while s.next != Some(Step::Retire) {
        machine::advance(&cx, &mut s).await.unwrap();
    }
    let retire_at = s.retire_at.expect("the Wait state's timestamp");
    let confirmed = s.progress.confirmed_at.unwrap();
    assert_eq!(retire_at, confirmed + drain);
    let serialized = serde_json::to_value(&s).unwrap();
    assert!(
        serialized["retire_at"].as_str().unwrap().ends_with('Z'),
        "{serialized}"
    );
    let e = machine::advance(&cx, &mut s).await.unwrap_err();
    assert_eq!(
        e.kind,
        keyrotor_core::protocol::StepErrorKind::Retryable,
        "{e:?}"
    );
    assert!(is_active(&sc, &old));
    sc.fakes.advance(drain);
    machine::advance(&cx, &mut s).await.unwrap();
    assert_eq!(s.outcome, Some(Outcome::Rotated));
    assert!(!has_key(&sc, &old));
}

#[tokio::test(start_paused = true)]
async fn three_runs_interleaved_leave_everyone_a_key() {
    // A runs i steps, B runs j steps, C runs to the end, then A (unless it died), then B.
    let mut cases = 0;
    for drivers in [
        [Driver::Cli, Driver::Lambda, Driver::Cli],
        [Driver::Lambda, Driver::Cli, Driver::Lambda],
    ] {
        for a_dies in [false, true] {
            for i in 0..=7usize {
                for j in [0usize, 1, 2, 4, 9] {
                    cases += 1;
                    let label = format!("{drivers:?} a_dies={a_dies} i={i} j={j}");
                    let sc = Scenario::new(2);
                    let mut runs = [
                        run_state(&sc, "run-a"),
                        run_state(&sc, "run-b"),
                        run_state(&sc, "run-c"),
                    ];
                    let schedule = [
                        (0, i),
                        (1, j),
                        (2, usize::MAX),
                        (0, usize::MAX),
                        (1, usize::MAX),
                    ];
                    for (who, steps) in schedule {
                        if who == 0 && steps == usize::MAX && a_dies {
                            continue;
                        }
                        let mut n = 0;
                        while runs[who].next.is_some() && n < steps {
                            step_once(&sc, &mut runs[who], drivers[who]).await;
                            nobody_is_left_without_a_key(&sc, &label);
                            n += 1;
                        }
                    }
                    converge(&sc, &label).await;
                }
            }
        }
    }
    println!("three-run interleavings: {cases} cases, all safe and converged");
}

#[tokio::test(start_paused = true)]
async fn a_previous_key_an_operator_reactivated_for_another_connection_is_not_switched_off() {
    // "Safe among others", found by reading: an operator re-activates the previous key to
    // repair something (here: a connection outside the config uses it); the next run used to
    // deactivate it again.
    let mut sc = Scenario::new(1);
    sc.policy.delete_old_key_after = Duration::from_secs(86_400);
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    let old = sc.initial_key.0.clone();
    edit_key(&sc, &old, |k| {
        assert!(!k.active, "retired into its grace period");
        k.active = true;
    });
    holder_outside_config(&sc, "Ops", "aws-repair");
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("Ops/aws-repair"),
        "{r:?}"
    );
    assert!(is_active(&sc, &old), "the re-activated key stays Active");
    nobody_is_left_without_a_key(&sc, "re-activated previous key");
}

#[tokio::test(start_paused = true)]
async fn a_lost_create_answer_is_recovered_in_the_same_run() {
    // The lost attempt created a key whose secret nobody received; the adapter's retry met the
    // two-key limit. The run deletes that key (it appeared since create's listing, inside this
    // run's intent window, never used) and creates again, instead of standing aside as "busy"
    // with its own intent live.
    let sc = Scenario::new(2);
    sc.fakes.state().lose_create_answers = 1;
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    let st = sc.fakes.state();
    assert_eq!(st.creates, 2, "the lost attempt and the one that worked");
    let lost = &st.created[0];
    assert!(
        !st.users["pipeline"].iter().any(|k| &k.id == lost),
        "the key whose answer was lost is deleted"
    );
    drop(st);
    sc.world().after_success().unwrap();
    nobody_is_left_without_a_key(&sc, "lost create answer");
}

#[tokio::test(start_paused = true)]
async fn a_lost_create_answer_whose_retry_worked_leaves_no_stray_key() {
    // With room for two (no key yet), the adapter's retry after a lost answer succeeds: the
    // lost attempt's key exists too, unusable. Create deletes it; nothing else would (it is in
    // no intent's window once the key replaces the intent).
    let sc = Scenario::new(1);
    let mut s = run_state(&sc, "run-with-room-for-two");
    drive_until(&sc, &mut s, Some(Step::Create)).await;
    {
        let mut st = sc.fakes.state();
        st.users.get_mut("pipeline").unwrap().clear();
        st.lose_create_answers = 1;
    }
    s.progress.old_key = None;
    let ports = sc.fakes.ports();
    let cx = context(&sc, &ports, false);
    machine::advance(&cx, &mut s).await.unwrap();
    let st = sc.fakes.state();
    assert_eq!(st.creates, 2);
    let keys: Vec<_> = st.users["pipeline"].iter().map(|k| k.id.clone()).collect();
    assert_eq!(
        keys,
        vec![s.progress.new_key.as_ref().unwrap().as_str().to_owned()],
        "only the key this run holds is left"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_create_deletes_the_key_its_crashed_attempt_made() {
    // Step Functions retries a create whose invocation died right after CreateAccessKey: same
    // run, same intent at AWSPENDING, a key nobody has the secret of. The retry deletes that
    // key and rotates, instead of standing aside ("two keys") until the intent expires.
    let mut found = false;
    for at in 1..=20 {
        let sc = Scenario::new(1);
        let mut s = run_state(&sc, "execution-retried");
        drive_until(&sc, &mut s, Some(Step::Create)).await;
        let before = s.clone();
        let base = sc.fakes.state().calls;
        sc.fakes.state().tripwire = Tripwire {
            at: Some(base + at),
            after_effect: true,
            fired: false,
        };
        let ports = sc.fakes.ports();
        let cx = context(&sc, &ports, false);
        let died = machine::advance(&cx, &mut s).await.is_err();
        sc.fakes.state().tripwire = Tripwire::default();
        let (creates, keys) = {
            let st = sc.fakes.state();
            (st.creates, st.users["pipeline"].len())
        };
        if !(died && creates == 1 && keys == 2 && s.progress.new_key.is_none()) {
            continue;
        }
        // Died after CreateAccessKey, before the key reached AWSPENDING.
        let lost = sc.fakes.state().created[0].clone();
        let mut s = before;
        drive_until(&sc, &mut s, None).await;
        assert_eq!(
            s.outcome,
            Some(Outcome::Rotated),
            "crash at call {at}: {:?}",
            s.failure
        );
        assert!(!has_key(&sc, &lost), "the crashed attempt's key is deleted");
        nobody_is_left_without_a_key(&sc, "retried create");
        found = true;
        break;
    }
    assert!(found, "no crash landed right after CreateAccessKey");
}

/// Marks `id` as used by IAM at the fake clock's now.
fn used_now(sc: &Scenario, id: &str) {
    let now = sc.fakes.state().now.unwrap();
    edit_key(sc, id, |k| k.used = Some(now));
}

/// Changes the user's key `id` (which must exist) in place.
fn edit_key(sc: &Scenario, id: &str, edit: impl FnOnce(&mut keyrotor_testkit::fakes::FakeKey)) {
    let mut st = sc.fakes.state();
    let k = st
        .users
        .get_mut("pipeline")
        .unwrap()
        .iter_mut()
        .find(|k| k.id == id)
        .unwrap();
    edit(k);
}

/// A one-connection scenario whose run (`run_id`) was driven up to retire: the scenario, the
/// old key's id and the run's state.
async fn at_retire(run_id: &str) -> (Scenario, String, TargetState) {
    let sc = Scenario::new(1);
    let old = sc.initial_key.0.clone();
    let mut s = run_state(&sc, run_id);
    drive_until(&sc, &mut s, Some(Step::Retire)).await;
    (sc, old, s)
}

/// Runs the state's next step, which must be refused; returns the refusal's message.
async fn refused_step(sc: &Scenario, s: &mut TargetState) -> String {
    let ports = sc.fakes.ports();
    let e = machine::advance(&context(sc, &ports, false), s)
        .await
        .unwrap_err();
    assert_eq!(
        e.kind,
        keyrotor_core::protocol::StepErrorKind::Refused,
        "{e:?}"
    );
    e.message
}

#[tokio::test(start_paused = true)]
async fn an_old_key_iam_saw_in_use_after_the_push_and_the_drain_is_not_retired() {
    // "Every holder counts": IAM's last-used date is the second signal. A consumer the
    // organization's connections do not show (a script, another organization) signs with the
    // old key after every connection moved: the key stays Active, on the run that rotated and
    // on every later run while the use goes on, and is retired once it stops.
    let (sc, old, mut s) = at_retire("run-meets-a-hidden-consumer").await;
    sc.fakes.advance(Duration::from_secs(120));
    used_now(&sc, &old);
    let message = refused_step(&sc, &mut s).await;
    assert!(message.contains("still uses it"), "{message}");
    assert!(is_active(&sc, &old), "the old key stays Active");
    nobody_is_left_without_a_key(&sc, "hidden consumer");

    // Later runs: still in use well after the push → kept; quiet since → retired.
    sc.fakes.advance(Duration::from_secs(3600));
    used_now(&sc, &old);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(is_active(&sc, &old));
    sc.fakes.state().users.get_mut("pipeline").unwrap()[0].used = None;
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(!has_key(&sc, &old), "retired once IAM saw no later use");
}

#[tokio::test(start_paused = true)]
async fn a_use_of_the_old_key_early_in_the_drain_does_not_keep_it() {
    // Jobs that started before the push use the old key during the drain: that is what the
    // drain is for, not a sign of a hidden consumer.
    let drain = Duration::from_secs(3600);
    let (sc, old, _) = rotated_with_drain(drain).await;
    sc.fakes.advance(drain / 4);
    used_now(&sc, &old);
    a_run_after_the_drain_retires(&sc, &old).await;
}

#[tokio::test(start_paused = true)]
async fn a_use_of_the_old_key_late_in_the_drain_keeps_it_active_until_it_is_quiet() {
    // #21, 3: a use in the second half of the drain is a consumer nobody listed (or a job longer
    // than half the drain): the first run after the drain keeps the key Active and says so; a
    // run once the key has been quiet for a day retires it.
    let drain = Duration::from_secs(3600);
    let (sc, old, _) = rotated_with_drain(drain).await;
    sc.fakes.advance(drain * 3 / 4);
    used_now(&sc, &old);
    sc.fakes
        .advance(drain / 4 + sc.policy.verify_timeout + Duration::from_secs(1));
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
    assert!(
        r.error
            .as_deref()
            .unwrap_or_default()
            .contains("still in use"),
        "{r:?}"
    );
    assert!(is_active(&sc, &old), "the old key stays Active");
    sc.fakes.advance(keyrotor_core::plan::QUIET_AFTER);
    let r = run(&sc).await;
    assert_eq!(r.outcome, Outcome::NothingDue, "{r:?}");
    assert!(!has_key(&sc, &old), "retired once it was quiet for a day");
}

#[tokio::test(start_paused = true)]
async fn with_the_opt_in_an_unlisted_holder_is_updated_too_on_both_drivers() {
    // `policy.update_unlisted_connections = true`: the connection in another project that holds
    // the same key is updated in place with the listed ones, and the old key is retired.
    for driver in [Driver::Cli, Driver::Lambda] {
        let mut sc = Scenario::new(1);
        sc.policy.update_unlisted_connections = true;
        let old = holder_outside_config(&sc, "Billing", "aws-shared");
        let mut s = run_state(&sc, "run-with-the-opt-in");
        while s.next.is_some() {
            step_once(&sc, &mut s, driver).await;
        }
        assert_eq!(
            s.outcome,
            Some(Outcome::Rotated),
            "{driver:?}: {:?}",
            s.failure
        );
        assert!(
            s.reason
                .as_deref()
                .unwrap_or_default()
                .contains("Billing/aws-shared"),
            "{driver:?}: the run says which unlisted connection it updated: {:?}",
            s.reason
        );
        let st = sc.fakes.state();
        assert!(
            !st.users["pipeline"].iter().any(|k| k.id == old),
            "{driver:?}: the old key is retired"
        );
        let new = s.progress.new_key.as_ref().unwrap().as_str();
        for e in &st.endpoints {
            assert_eq!(e.username.as_deref(), Some(new), "{driver:?}: {}", e.name);
        }
        drop(st);
        nobody_is_left_without_a_key(&sc, "opt-in");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_run_renews_its_lease_and_is_not_taken_over() {
    // "One owner per rotation, for its whole life": a run whose steps take longer than its lease
    // (a paced fleet, retries) renews the lease before it acts, so another run stands aside
    // instead of taking the rotation over under it.
    let sc = Scenario::new(1);
    let lease = sc.policy.owner_lease;
    let ports = sc.fakes.ports();
    let cx = context(&sc, &ports, false);
    let mut a = run_state(&sc, "slow-run");
    drive_until(&sc, &mut a, Some(Step::Verify)).await;
    let first = a.progress.pending_version.clone();
    // Fresh lease: verify writes nothing.
    let writes = sc.fakes.state().mutations;
    machine::advance(&cx, &mut a).await.unwrap();
    assert_eq!(
        a.progress.pending_version, first,
        "a fresh lease is not renewed"
    );
    assert_eq!(sc.fakes.state().mutations, writes);
    // Two thirds of the lease later, push renews it first.
    sc.fakes.advance(lease * 2 / 3);
    machine::advance(&cx, &mut a).await.unwrap();
    assert_ne!(a.progress.pending_version, first, "push renewed the lease");
    // Past the first lease's end, another run finds a live owner and stands aside.
    sc.fakes.advance(lease / 2);
    let mut b = run_state(&sc, "other-run");
    drive_until(&sc, &mut b, None).await;
    assert_eq!(b.outcome, Some(Outcome::Busy), "{:?}", b.failure);
    drive_until(&sc, &mut a, None).await;
    assert_eq!(a.outcome, Some(Outcome::Rotated), "{:?}", a.failure);
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_old_key_is_not_retired_when_its_successor_was_switched_off() {
    // Invariant 7 before retire: the new key must still exist and be Active, read from the same
    // listing retire makes anyway (no extra call).
    let (sc, old, mut s) = at_retire("run-whose-new-key-was-switched-off").await;
    let new = s.progress.new_key.clone().unwrap();
    edit_key(&sc, new.as_str(), |k| k.active = false);
    let message = refused_step(&sc, &mut s).await;
    assert!(
        message.contains("was deactivated by someone else"),
        "{message}"
    );
    assert!(is_active(&sc, &old), "the old key stays Active");
}

// ---- Azure DevOps' request budget: endpoint ids between steps, reads shared in a run ----

/// Counts Azure DevOps requests per step (as the real client sends them, see
/// `fakes::AdoCalls`) while one target runs.
type PerStep = Arc<std::sync::Mutex<Vec<(Step, u32)>>>;

fn ado_per_step(sc: &Scenario) -> (Observer, PerStep) {
    let per_step = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (fakes, out) = (sc.fakes.clone(), per_step.clone());
    let started = std::sync::Mutex::new(0);
    let observer: Observer = Arc::new(move |e: &engine::Event| {
        let now = fakes.state().ado_reads.requests();
        match e.phase {
            engine::Phase::Started => *started.lock().unwrap() = now,
            _ => out
                .lock()
                .unwrap()
                .push((e.step, now - *started.lock().unwrap())),
        }
    });
    (observer, per_step)
}

#[tokio::test(start_paused = true)]
async fn one_rotation_spends_the_pinned_azure_devops_requests_per_step() {
    for endpoints in [1, 2] {
        let sc = Scenario::new(endpoints);
        let (observer, per_step) = ado_per_step(&sc);
        let mut o = opts();
        o.force = true;
        let r = engine::run_target(&sc.fakes.ports(), &sc.policy, &sc.target, &o, &observer).await;
        assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
        sc.world().after_success().unwrap();
        let n = endpoints as u32;
        // inspect: one lookup per configured connection (by name: the config names them).
        // push: one listing by `endpointIds` (its project), then one PUT per connection of the
        //       object that listing read (no GET of its own).
        // confirm: one listing by `endpointIds`: the read-back (and the report's view).
        // retire: the organization-wide holder scan: the project list, one listing per project.
        // create, verify, promote: none.
        let expected = vec![
            (Step::Inspect, n),
            (Step::Create, 0),
            (Step::Verify, 0),
            (Step::Push, 1 + n),
            (Step::Confirm, 1),
            (Step::Promote, 0),
            (Step::Retire, 2),
        ];
        assert_eq!(
            *per_step.lock().unwrap(),
            expected,
            "{endpoints} connection(s)"
        );
        let calls = sc.fakes.state().ado_reads;
        assert_eq!(calls.requests(), 2 * n + 4, "{calls:?}");
        assert_eq!(calls.find, n, "found by name once, at inspect: {calls:?}");
        assert_eq!(
            calls.get + calls.get_before_put,
            0,
            "no connection read on its own: {calls:?}"
        );
        assert_eq!(calls.put, n);
        println!(
            "{endpoints} connection(s): {} Azure DevOps requests, {calls:?}",
            calls.requests()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_targets_shares_inspects_listing_and_spends_the_pinned_requests() {
    let sc = Scenario::new(1);
    let mut targets = vec![sc.target.clone()];
    for n in 1..10 {
        targets.push(sc.add_target(n, "Platform", 1));
    }
    let mut o = opts();
    o.force = true;
    let r = engine::run(&sc.fakes.ports(), &sc.policy, &targets, &o, None, &quiet()).await;
    for t in &r.targets {
        assert_eq!(t.outcome, Outcome::Rotated, "{t:?}");
    }
    assert!(sc.fakes.state().violations.is_empty());
    let calls = sc.fakes.state().ado_reads;
    // Inspect: ONE listing of the project serves all ten targets (none found on its own).
    assert_eq!(calls.list_project, 1, "{calls:?}");
    assert_eq!(calls.find, 0, "{calls:?}");
    // The ten move step by step together: ONE listing by id serves every push, ONE every
    // confirm; then a PUT per target.
    assert_eq!(calls.list_ids, 2, "{calls:?}");
    assert_eq!(calls.put, 10, "{calls:?}");
    assert_eq!(calls.get + calls.get_before_put, 0, "{calls:?}");
    // Retire: ONE holder scan (the project list and the project's listing) serves all ten: it
    // was made during the retire step, after every confirm of the batch.
    assert_eq!(calls.scans, 1, "{calls:?}");
    assert_eq!(calls.requests(), 1 + 2 + 10 + 2, "{calls:?}");
    println!(
        "10 targets: {} Azure DevOps requests ({:.1} per target), {calls:?}",
        calls.requests(),
        f64::from(calls.requests()) / 10.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_fleet_in_two_projects_goes_in_batches_by_project_and_spends_the_pinned_requests() {
    let sc = Scenario::new(1);
    // 120 targets, the two projects alternating in the config: the run puts each project's
    // targets side by side (60 of A and 40 of B, then B's last 20) and reports in config order.
    let mut targets = vec![sc.target.clone()];
    for n in 1..120 {
        let project = if n % 2 == 0 { "Platform" } else { "Data" };
        targets.push(sc.add_target(n, project, 1));
    }
    let mut o = opts();
    o.force = true;
    let r = engine::run(&sc.fakes.ports(), &sc.policy, &targets, &o, None, &quiet()).await;
    assert_eq!(r.targets.len(), 120);
    for (t, want) in r.targets.iter().zip(&targets) {
        assert_eq!(t.name, want.name.as_str(), "reports in config order");
        assert_eq!(t.outcome, Outcome::Rotated, "{t:?}");
    }
    assert!(sc.fakes.state().violations.is_empty());
    let calls = sc.fakes.state().ado_reads;
    assert_eq!(engine::BATCH, 100);
    // Inspect: one listing per project (the fakes' clock stands still: still fresh in batch 2).
    assert_eq!(calls.list_project, 2, "{calls:?}");
    // Push and confirm, each: batch 1 reads Platform's 60 ids in two listings (50 ids each at
    // most) and Data's 40 in one; batch 2 Data's last 20 in one.
    assert_eq!(calls.list_ids, 2 * (3 + 1), "{calls:?}");
    assert_eq!(calls.put, 120, "{calls:?}");
    // One holder scan per batch, each the project list and both projects' listings.
    assert_eq!(calls.scans, 2, "{calls:?}");
    assert_eq!(calls.scan_requests, 2 * 3, "{calls:?}");
    assert_eq!(calls.requests(), 2 + 8 + 120 + 6, "{calls:?}");
    assert_eq!(
        calls.find + calls.get + calls.get_before_put,
        0,
        "{calls:?}"
    );
}

/// Hands off within a batch: a person switches one target's connection to OIDC as the batch's
/// push step begins (after inspect, before the step's one shared read). The shared read sees it:
/// that target is refused and its connection is left as the person made it, while the other
/// nine rotate. (A change made after the shared read, within its 10 s, would be overwritten by
/// that target's PUT: the window `SharedReads` documents, as a read of the target's own has for
/// the time between its read and its PUT.)
#[tokio::test(start_paused = true)]
async fn a_change_made_as_a_batch_reaches_push_is_seen_by_the_shared_read() {
    let sc = Scenario::new(1);
    let mut targets = vec![sc.target.clone()];
    for n in 1..10 {
        targets.push(sc.add_target(n, "Platform", 1));
    }
    let fakes = sc.fakes.clone();
    let switched = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = switched.clone();
    let observer: Observer = Arc::new(move |e| {
        if e.step == Step::Push
            && e.phase == engine::Phase::Started
            && !once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut st = fakes.state();
            let ep = st
                .endpoints
                .iter_mut()
                .find(|e| e.name == "aws-5-0")
                .unwrap();
            ep.oidc = true;
        }
    });
    let mut o = opts();
    o.force = true;
    let r = engine::run(&sc.fakes.ports(), &sc.policy, &targets, &o, None, &observer).await;
    assert!(switched.load(std::sync::atomic::Ordering::SeqCst));
    for t in &r.targets {
        if t.name == "t5" {
            assert_ne!(t.outcome, Outcome::Rotated, "{t:?}");
            assert!(
                t.error.as_deref().unwrap_or_default().contains("OIDC"),
                "{t:?}"
            );
        } else {
            assert_eq!(t.outcome, Outcome::Rotated, "{t:?}");
        }
    }
    let st = sc.fakes.state();
    let ep = st.endpoints.iter().find(|e| e.name == "aws-5-0").unwrap();
    assert!(ep.oidc, "the person's switch to OIDC stays");
    let user5 = &st.users["pipeline-5"];
    assert_eq!(
        ep.username.as_deref(),
        user5.iter().find(|k| k.active).map(|k| k.id.as_str()),
        "its key is untouched and Active"
    );
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    // One shared read still served the batch's pushes.
    assert_eq!(st.ado_reads.put, 9);
}

/// The batch reads of [`SharedReads`] from outside: what serves whom, and what does not.
#[tokio::test(start_paused = true)]
async fn a_shared_read_serves_its_step_while_young_and_never_the_next_step() {
    use keyrotor_core::ports::ServiceConnections;
    use keyrotor_core::shared::SharedReads;

    let sc = Scenario::new(1);
    let other = sc.add_target(1, "Platform", 1);
    let ports = sc.fakes.ports();
    let mut handles = Vec::new();
    for t in [&sc.target, &other] {
        let found = ports.ado.find(&t.organization, &t.endpoints[0]).await;
        handles.push(found.unwrap().handle);
    }
    let (a, b) = (handles[0].clone(), handles[1].clone());
    let shared = SharedReads::new(ports.ado.clone(), ports.clock.clone());
    let reads = || sc.fakes.state().ado_reads.list_ids;
    let before = reads();
    // Not announced: straight through, every time.
    shared.get_many(std::slice::from_ref(&a)).await.unwrap();
    shared.get_many(std::slice::from_ref(&a)).await.unwrap();
    assert_eq!(reads(), before + 2);
    // Announced: the first read reads both, the second target is served by it.
    shared.begin_step(vec![a.clone(), b.clone()]).await;
    let got_a = shared.get_many(std::slice::from_ref(&a)).await.unwrap();
    let got_b = shared.get_many(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(reads(), before + 3);
    assert_eq!(got_a[0].as_ref().unwrap().handle.id, a.id);
    assert_eq!(got_b[0].as_ref().unwrap().handle.id, b.id);
    // Older than MAX_AGE: read again (a PUT never sends back an old read).
    sc.fakes
        .advance(SharedReads::MAX_AGE + Duration::from_secs(1));
    shared.get_many(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(reads(), before + 4);
    // A new step forgets the reads of the one before (confirm never sees a read from before
    // the PUTs).
    shared.begin_step(vec![a.clone(), b.clone()]).await;
    let now_b = shared.get_many(std::slice::from_ref(&b)).await.unwrap();
    assert_eq!(reads(), before + 5);
    assert_eq!(now_b[0].as_ref().unwrap().handle.id, b.id);
    let org = sc.target.organization.clone();
    shared.begin_step(Vec::new()).await;
    let scan_at = ports.clock.now();
    let scans = || sc.fakes.state().ado_reads.scans;
    let s0 = scans();
    // The holder scan: a scan made during the step serves callers whose moment is no later
    // than the step's beginning, and not one whose moment came after it.
    shared.list_aws_since(&org, scan_at).await.unwrap();
    shared.list_aws_since(&org, scan_at).await.unwrap();
    assert_eq!(scans(), s0 + 1);
    sc.fakes.advance(Duration::from_secs(1));
    shared
        .list_aws_since(&org, ports.clock.now())
        .await
        .unwrap();
    assert_eq!(scans(), s0 + 2);
}

/// Runs one forced target through the machine step by step, calling `between` after inspect.
async fn forced_with(sc: &Scenario, between: impl FnOnce(&Scenario)) -> TargetState {
    let ports = sc.fakes.ports();
    let cx = Context {
        ports: &ports,
        policy: &sc.policy,
        target: &sc.target,
        verify_budget: sc.policy.verify_timeout,
        waits_for_drain: false,
    };
    let mut state = TargetState::new(&sc.target, RunId::new(), true);
    let mut between = Some(between);
    while let Some(step) = state.next {
        if let Err(e) = machine::advance(&cx, &mut state).await {
            machine::fail(&mut state, e);
        }
        if step == Step::Inspect
            && let Some(f) = between.take()
        {
            assert_eq!(state.progress.endpoints.len(), 1, "inspect carries the id");
            f(sc);
        }
    }
    state
}

#[tokio::test(start_paused = true)]
async fn a_connection_renamed_after_inspect_is_still_rotated_by_its_id() {
    let sc = Scenario::new(1);
    let state = forced_with(&sc, |sc| {
        sc.fakes.state().endpoints[0].name = "renamed".into();
    })
    .await;
    assert_eq!(state.outcome, Some(Outcome::Rotated), "{state:?}");
    sc.world().after_success().unwrap();
    let st = sc.fakes.state();
    assert_eq!(
        st.endpoints[0].username.as_deref(),
        state.progress.new_key.as_ref().map(|k| k.as_str())
    );
    assert_eq!(st.ado_reads.find, 1, "not looked up by name again");
}

#[tokio::test(start_paused = true)]
async fn a_connection_deleted_after_inspect_fails_push_and_the_new_key_is_compensated() {
    let sc = Scenario::new(1);
    let old = sc.initial_key.0.clone();
    let state = forced_with(&sc, |sc| {
        sc.fakes.state().endpoints.clear();
    })
    .await;
    assert_eq!(state.outcome, Some(Outcome::Failed), "{state:?}");
    let f = state.failure.as_ref().expect("a failure");
    assert_eq!(f.step, Step::Push, "{f:?}");
    assert!(f.message.contains("any more"), "{f:?}");
    assert!(
        state
            .compensation
            .as_deref()
            .is_some_and(|c| c.contains("was deleted")),
        "{state:?}"
    );
    let st = sc.fakes.state();
    assert_eq!(
        st.ado_reads.put, 0,
        "nothing sent to a connection gone by id"
    );
    assert_eq!(st.users["pipeline"].len(), 1, "the new key is gone");
    drop(st);
    assert!(is_active(&sc, &old), "the old key is kept Active");
}

#[test]
fn endpoint_ids_travel_in_the_payload_and_old_payloads_still_read() {
    let sc = Scenario::new(1);
    let mut state = TargetState::new(&sc.target, RunId::new(), false);
    state
        .progress
        .endpoints
        .push(keyrotor_core::ports::EndpointHandle {
            org: sc.target.organization.clone(),
            project: keyrotor_core::domain::ProjectName::parse("Platform").unwrap(),
            id: keyrotor_core::domain::EndpointId::parse("00000000-0000-0000-0000-000000000001")
                .unwrap(),
        });
    let json = serde_json::to_value(&state).unwrap();
    assert_eq!(
        json["progress"]["endpoints"][0]["id"], "00000000-0000-0000-0000-000000000001",
        "{json}"
    );
    let back: TargetState = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, state);
    let mut old = json;
    old["progress"].as_object_mut().unwrap().remove("endpoints");
    let back: TargetState = serde_json::from_value(old).unwrap();
    assert!(
        back.progress.endpoints.is_empty(),
        "a payload from before: names resolve as before"
    );
}

#[tokio::test(start_paused = true)]
async fn a_holder_scan_is_shared_only_if_it_started_after_the_callers_moment_and_is_recent() {
    use keyrotor_core::ports::ServiceConnections;
    use keyrotor_core::shared::SharedReads;
    let sc = Scenario::new(1);
    let (ports, shared) = shared_reads(&sc);
    let org = &sc.target.organization;
    let scans = || sc.fakes.state().ado_reads.scans;
    let t0 = ports.clock.now();
    sc.fakes.advance(Duration::from_secs(1));
    shared.list_aws(org).await.unwrap(); // started at t0 + 1 s
    assert_eq!(scans(), 1);
    shared.list_aws_since(org, t0).await.unwrap();
    assert_eq!(scans(), 1, "started after the caller's moment: shared");
    shared
        .list_aws_since(org, t0 + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(scans(), 2, "not strictly after: a scan of its own");
    sc.fakes
        .advance(SharedReads::MAX_AGE + Duration::from_secs(1));
    shared.list_aws_since(org, t0).await.unwrap();
    assert_eq!(scans(), 3, "too old: a scan of its own");
    shared.list_aws(org).await.unwrap();
    assert_eq!(scans(), 4, "list_aws is never shared");
}

#[tokio::test(start_paused = true)]
async fn inspects_shared_listing_falls_back_to_a_lookup_for_a_name_it_does_not_show() {
    use keyrotor_core::domain::{EndpointRef, EndpointSelector, ProjectName};
    use keyrotor_core::ports::ServiceConnections;
    let sc = Scenario::new(2);
    let (_, shared) = shared_reads(&sc);
    let org = &sc.target.organization;
    for r in &sc.target.endpoints {
        shared.find(org, r).await.unwrap();
    }
    let calls = sc.fakes.state().ado_reads;
    assert_eq!((calls.list_project, calls.find), (1, 0), "{calls:?}");
    // Created after the listing: not in it, found on its own.
    sc.fakes
        .add_endpoint(keyrotor_testkit::fakes::ORG, "Platform", "late", None);
    let late = EndpointRef {
        project: ProjectName::parse("Platform").unwrap(),
        by: EndpointSelector::Name("late".into()),
    };
    assert_eq!(shared.find(org, &late).await.unwrap().name, "late");
    let calls = sc.fakes.state().ado_reads;
    assert_eq!((calls.list_project, calls.find), (1, 1), "{calls:?}");
}

/// The scenario's ports and reads shared over them (as a run shares them between its targets).
fn shared_reads(sc: &Scenario) -> (Ports, keyrotor_core::shared::SharedReads) {
    let ports = sc.fakes.ports();
    let shared = keyrotor_core::shared::SharedReads::new(ports.ado.clone(), ports.clock.clone());
    (ports, shared)
}

// ---- A dead owner is detected, not waited out (#21, 2): an owner's lease or intent that names
// a Step Functions execution lasts while that execution runs.

const EXECUTION: &str = "arn:aws:states:eu-west-1:123456789012:execution:keyrotor-rotate:run-a";

/// Puts another run's intent record at AWSPENDING, written just now by `execution`, and the key
/// that run created right after it (its secret lost with the run): the create window.
fn an_intent_of(sc: &Scenario, execution: &str) -> String {
    let (orphan, _) = sc.fakes.add_key("pipeline", Duration::ZERO);
    let now = keyrotor_core::ports::Clock::now(&sc.fakes);
    let mut st = sc.fakes.state();
    let intent = keyrotor_core::secret_value::intent_value_of(&Lease {
        run_id: "run-a".into(),
        expires_at: now + sc.policy.intent_lease,
        holder: None,
        execution: Some(execution.into()),
        seen: Seen::Unknown,
    });
    st.secrets
        .get_mut("pipeline-key")
        .unwrap()
        .push(keyrotor_testkit::fakes::FakeVersion {
            id: "intent-of-the-execution-0000000000".into(),
            value: secrecy::ExposeSecret::expose_secret(&intent).to_owned(),
            stages: vec!["AWSPENDING".into()],
        });
    orphan
}

use keyrotor_core::secret_value::{Lease, Seen};

#[tokio::test(start_paused = true)]
async fn an_intent_whose_execution_ended_is_taken_over_at_once_and_a_running_ones_stands() {
    // Running: the intent holds; nothing changes.
    let sc = Scenario::new(1);
    let orphan = an_intent_of(&sc, EXECUTION);
    sc.fakes
        .state()
        .executions
        .insert(EXECUTION.into(), "RUNNING".into());
    let before = sc.fakes.state().mutations;
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Busy, "{r:?}");
    assert_eq!(sc.fakes.state().mutations, before, "nothing changed");
    assert!(has_key(&sc, &orphan));

    // Ended: the next run at once (no clock moved) deletes the dead run's key and rotates.
    for status in ["ABORTED", "FAILED", "SUCCEEDED", "TIMED_OUT"] {
        let sc = Scenario::new(1);
        let orphan = an_intent_of(&sc, EXECUTION);
        sc.fakes
            .state()
            .executions
            .insert(EXECUTION.into(), status.into());
        let r = forced(&sc).await;
        assert_eq!(r.outcome, Outcome::Rotated, "{status}: {r:?}");
        assert!(
            !has_key(&sc, &orphan),
            "{status}: the dead run's key is gone"
        );
        assert_eq!(sc.fakes.state().limit_exceeded, 0, "{status}: invariant 4");
        sc.world().after_success().unwrap();
    }

    // An execution Step Functions does not know is no owner either.
    let sc = Scenario::new(1);
    an_intent_of(&sc, EXECUTION);
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "ExecutionDoesNotExist: {r:?}");
    assert!(sc.fakes.state().describe_executions > 0);
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_refused_describe_execution_concludes_nothing_and_the_intent_expires_as_before() {
    let sc = Scenario::new(1);
    let orphan = an_intent_of(&sc, EXECUTION);
    sc.fakes.state().executions_refused = true;
    let before = sc.fakes.state().mutations;
    let r = forced(&sc).await;
    assert_eq!(
        r.outcome,
        Outcome::Busy,
        "an error is no proof of death: {r:?}"
    );
    assert_eq!(sc.fakes.state().mutations, before, "nothing changed");
    sc.fakes
        .advance(sc.policy.intent_lease + Duration::from_secs(1));
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "the expiry decides: {r:?}");
    assert!(!has_key(&sc, &orphan));
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rotation_a_running_execution_owns_stands_past_its_lease_and_an_ended_one_is_taken_over()
{
    let sc = Scenario::new(1);
    let mut a = run_state(&sc, "run-a");
    a.progress.execution = Some(EXECUTION.into());
    sc.fakes
        .state()
        .executions
        .insert(EXECUTION.into(), "RUNNING".into());
    drive_until(&sc, &mut a, Some(Step::Push)).await;
    assert_eq!(a.failure, None, "{a:?}");
    let pending = sc.fakes.state().secrets["pipeline-key"]
        .iter()
        .find(|v| v.stages.iter().any(|s| s == "AWSPENDING"))
        .map(|v| v.value.clone())
        .unwrap();
    let lease = keyrotor_core::secret_value::owner_of(&pending.clone().into()).unwrap();
    assert_eq!(
        lease.execution.as_deref(),
        Some(EXECUTION),
        "the lease names the execution"
    );

    // Long past the lease, the execution still runs: the lease stands.
    sc.fakes.advance(sc.policy.owner_lease * 3);
    let before = sc.fakes.state().mutations;
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Busy, "{r:?}");
    assert_eq!(sc.fakes.state().mutations, before, "nothing changed");

    // The execution was aborted: the next run takes the rotation over at once and finishes it.
    sc.fakes
        .state()
        .executions
        .insert(EXECUTION.into(), "ABORTED".into());
    let r = forced(&sc).await;
    assert_eq!(r.outcome, Outcome::Rotated, "{r:?}");
    let current = sc.fakes.state().secrets["pipeline-key"]
        .iter()
        .find(|v| v.stages.iter().any(|s| s == "AWSCURRENT"))
        .map(|v| v.value.clone())
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&current).unwrap();
    assert_eq!(
        j["AccessKeyId"].as_str(),
        a.progress.new_key.as_ref().map(|k| k.as_str()),
        "the dead execution's key was rotated in"
    );
    sc.world().after_success().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crash_at_every_port_call_of_an_execution_that_then_ended_is_finished_by_one_clean_run() {
    // Count the calls of a clean run of an execution.
    let clean = Scenario::new(2);
    let mut s = run_state(&clean, "run-a");
    s.progress.execution = Some(EXECUTION.into());
    clean
        .fakes
        .state()
        .executions
        .insert(EXECUTION.into(), "RUNNING".into());
    drive_until(&clean, &mut s, None).await;
    assert_eq!(s.outcome, Some(Outcome::Rotated), "{s:?}");
    let total = clean.fakes.state().calls;
    let mut kills = 0;
    for at in 1..=total {
        for after_effect in [false, true] {
            let sc = Scenario::new(2);
            sc.fakes
                .state()
                .executions
                .insert(EXECUTION.into(), "RUNNING".into());
            let mut s = run_state(&sc, "run-a");
            s.progress.execution = Some(EXECUTION.into());
            sc.fakes.state().tripwire = Tripwire {
                at: Some(at),
                after_effect,
                fired: false,
            };
            let mut step = None;
            {
                let ports = sc.fakes.ports();
                let cx = context(&sc, &ports, false);
                while s.next.is_some() && !sc.fakes.state().tripwire.fired {
                    step = s.next;
                    if let Err(e) = machine::advance(&cx, &mut s).await {
                        machine::fail(&mut s, e);
                    }
                }
            }
            let label = format!("crash at call {at} (after effect: {after_effect}) in {step:?}");
            if !sc.fakes.state().tripwire.fired {
                continue;
            }
            kills += 1;
            sc.world()
                .always()
                .unwrap_or_else(|v| panic!("{label}: {v}"));
            // The execution is gone (aborted, or failed after its retries); the clock does not move.
            {
                let mut st = sc.fakes.state();
                st.tripwire = Tripwire::default();
                st.executions.insert(EXECUTION.into(), "ABORTED".into());
            }
            let r = run(&sc).await;
            assert!(
                matches!(r.outcome, Outcome::Rotated | Outcome::NothingDue),
                "{label}: one clean run under the default lease finishes: {r:?}"
            );
            sc.world()
                .after_success()
                .unwrap_or_else(|v| panic!("{label}: {v} ({r:?})"));
            let st = sc.fakes.state();
            assert!(st.violations.is_empty(), "{label}: {:?}", st.violations);
            assert_eq!(st.limit_exceeded, 0, "{label}: invariant 4");
        }
    }
    assert!(kills > 40, "{kills} kills");
    println!("execution crashes: {kills} kills, {kills} finished by one clean run");
}
