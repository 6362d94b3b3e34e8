//! Table-driven tests of the planner.
//!
//! (Long on purpose: one row per scenario of the planner, each a few lines; the rows are read
//! as one table, next to the helpers that build them.)
//!
//! Each row is a scenario built with [`snap`] (keys, the connections that hold them, the secret's
//! stages, the policy) and the plan expected of it, built with [`rotate`], [`resume`],
//! [`nothing_due`], [`busy`], [`refuse`] or [`invalid`]. Every field of the plan is compared (a
//! field a row does not set must be empty), the reason must mention what the row names, and
//! [`check`] adds what holds for every plan: it is pure, it never shows a full key id, it never
//! deletes or retires a key a connection holds, and a refusal changes nothing.

use std::time::{Duration, SystemTime};

use super::{Decision, Plan, Snapshot, StageInfo, plan};
use crate::config::Policy;
use crate::domain::{
    AccessKeyId, EndpointId, IamUserName, KeyStatus, OrgUrl, ProjectName, SecretVersionId,
};
use crate::ports::{Endpoint, EndpointHandle, KeyInfo};
use crate::secret_value::Content;

use KeyStatus::{Active, Inactive};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The IAM user of every scenario.
const USER: &str = "pipeline";

/// The key the connections hold at the start.
const OLD: &str = "AKIAQQQQQQQQQQQQ0OLD";
/// The key being rotated in.
const NEW: &str = "AKIAQQQQQQQQQQQQ0NEW";
/// A second key of the user that a connection holds, or that AWSCURRENT names.
const OTHER: &str = "AKIAQQQQQQQQQQQOTHER";
/// A key nobody holds and no stage names.
const STRAY: &str = "AKIAQQQQQQQQQQQSTRAY";
/// A key of another IAM user.
const ALIEN: &str = "AKIAQQQQQQQQQQQALIEN";

/// Every key id used above: none may appear unmasked in a reason.
const ALL_KEYS: [&str; 5] = [OLD, NEW, OTHER, STRAY, ALIEN];

/// The run that plans.
const THIS_RUN: &str = "run-this";
/// Another run.
const OTHER_RUN: &str = "run-other";

const USED: bool = true;
const NEVER_USED: bool = false;

const DAY: u64 = 86_400;

/// The planner's clock.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * DAY)
}

fn id(raw: &str) -> AccessKeyId {
    AccessKeyId::parse(raw).unwrap()
}

/// How people see a key id.
fn masked(raw: &str) -> String {
    id(raw).masked()
}

/// keyrotor's JSON for a key of [`USER`].
fn key_of(raw: &str) -> Content {
    key_of_user(raw, USER)
}

/// keyrotor's JSON for a key of some user.
fn key_of_user(raw: &str, user: &str) -> Content {
    Content::Key {
        id: id(raw),
        user_name: user.into(),
    }
}

/// An intent record of `run` that holds for `secs` more seconds (expired when negative).
fn intent(run: &str, secs: i64) -> Content {
    let expires_at = if secs >= 0 {
        now() + Duration::from_secs(secs.unsigned_abs())
    } else {
        now() - Duration::from_secs(secs.unsigned_abs())
    };
    Content::Intent {
        run_id: run.into(),
        expires_at,
    }
}

/// An AWS connection with the UsernamePassword scheme whose username is `username`.
fn aws(name: &str, username: Option<&str>) -> Endpoint {
    Endpoint {
        handle: EndpointHandle {
            org: OrgUrl::parse("https://dev.azure.com/contoso").unwrap(),
            project: ProjectName::parse("Platform").unwrap(),
            id: EndpointId::parse(&format!("00000000-0000-0000-0000-{:0>12}", name.len())).unwrap(),
        },
        name: name.into(),
        kind: "AWS".into(),
        scheme: "UsernamePassword".into(),
        username: username.map(Into::into),
        uses_oidc: false,
        is_ready: true,
        raw: None,
    }
}

/// A scenario: the snapshot `inspect` read, and how the planner is called.
#[derive(Clone)]
struct Given {
    snapshot: Snapshot,
    policy: Policy,
    run_id: &'static str,
    force: bool,
}

/// An empty scenario: user [`USER`] without keys, no secret, no connections, the default
/// policy (min_key_age 6 days, no grace), run [`THIS_RUN`], not forced.
fn snap() -> Given {
    Given {
        snapshot: Snapshot {
            user: IamUserName::parse(USER).unwrap(),
            keys: Vec::new(),
            secret_exists: false,
            current: None,
            pending: None,
            previous: None,
            endpoints: Vec::new(),
        },
        // No drain unless a row asks for one (`drain_minutes`): most rows are about other things.
        // No grace either (`grace_days`): the old key is deleted as it is retired.
        policy: Policy {
            drain: Duration::ZERO,
            delete_old_key_after: Duration::ZERO,
            ..Policy::default()
        },
        run_id: THIS_RUN,
        force: false,
    }
}

impl Given {
    /// The user has key `raw`, created `age_days` ago, used a minute ago or never.
    fn key(mut self, raw: &str, status: KeyStatus, age_days: u64, used: bool) -> Self {
        self.snapshot.keys.push(KeyInfo {
            id: id(raw),
            status,
            created: now() - days(age_days),
            last_used: used.then(|| now() - Duration::from_secs(60)),
        });
        self
    }

    /// The AWS connection `name` holds key `raw`.
    fn held_by(self, name: &str, raw: &str) -> Self {
        self.connection(aws(name, Some(raw)))
    }

    /// Any connection.
    fn connection(mut self, e: Endpoint) -> Self {
        self.snapshot.endpoints.push(e);
        self
    }

    fn stage(&mut self, version: &str, content: Content) -> Option<StageInfo> {
        self.snapshot.secret_exists = true;
        Some(StageInfo {
            version: SecretVersionId::parse(version).unwrap(),
            content,
            owner: None,
            confirmed_at: None,
        })
    }

    /// AWSCURRENT holds `content`.
    fn current(mut self, content: Content) -> Self {
        self.snapshot.current = self.stage("v-current", content);
        self
    }

    /// AWSPENDING holds `content`.
    fn pending(mut self, content: Content) -> Self {
        self.snapshot.pending = self.stage("v-pending", content);
        self
    }

    /// AWSPENDING holds an intent record of `run` that holds for `secs` more seconds.
    fn pending_intent(self, run: &str, secs: i64) -> Self {
        self.pending(intent(run, secs))
    }

    /// AWSPREVIOUS holds `content`.
    fn previous(mut self, content: Content) -> Self {
        self.snapshot.previous = self.stage("v-previous", content);
        self
    }

    fn min_key_age_days(mut self, n: u64) -> Self {
        self.policy.min_key_age = days(n);
        self
    }

    /// AWSCURRENT records that every connection held its key `n` minutes ago.
    fn confirmed_minutes_ago(mut self, n: u64) -> Self {
        if let Some(st) = self.snapshot.current.as_mut() {
            st.confirmed_at = Some(now() - Duration::from_secs(60 * n));
        }
        self
    }

    fn drain_minutes(mut self, n: u64) -> Self {
        self.policy.drain = Duration::from_secs(n * 60);
        self
    }

    fn grace_days(mut self, n: u64) -> Self {
        self.policy.delete_old_key_after = days(n);
        self
    }

    /// `--force`.
    fn forced(mut self) -> Self {
        self.force = true;
        self
    }

    fn plan(&self) -> Plan {
        plan(&self.snapshot, &self.policy, now(), self.run_id, self.force)
    }
}

/// The plan a row expects. Fields it does not set are expected empty.
#[derive(Debug)]
struct Want {
    decision: Decision,
    old_key: Option<&'static str>,
    new_key: Option<&'static str>,
    orphans: Vec<&'static str>,
    make_room: Option<&'static str>,
    finish_retire: Option<&'static str>,
    finish_retire_delete: bool,
    clear_pending: bool,
    reason_mentions: Vec<String>,
}

fn want(decision: Decision) -> Want {
    Want {
        decision,
        old_key: None,
        new_key: None,
        orphans: Vec::new(),
        make_room: None,
        finish_retire: None,
        finish_retire_delete: false,
        clear_pending: false,
        reason_mentions: Vec::new(),
    }
}

fn rotate() -> Want {
    want(Decision::Rotate)
}
fn resume() -> Want {
    want(Decision::Resume)
}
fn nothing_due() -> Want {
    want(Decision::NothingDue)
}
fn busy() -> Want {
    want(Decision::Busy)
}
fn refuse() -> Want {
    want(Decision::Refuse)
}
fn invalid() -> Want {
    want(Decision::Invalid)
}

impl Want {
    fn old_key(mut self, raw: &'static str) -> Self {
        self.old_key = Some(raw);
        self
    }
    fn new_key(mut self, raw: &'static str) -> Self {
        self.new_key = Some(raw);
        self
    }
    fn orphan(mut self, raw: &'static str) -> Self {
        self.orphans.push(raw);
        self
    }
    fn make_room(mut self, raw: &'static str) -> Self {
        self.make_room = Some(raw);
        self
    }
    fn finish_retire(mut self, raw: &'static str, delete: bool) -> Self {
        self.finish_retire = Some(raw);
        self.finish_retire_delete = delete;
        self
    }
    fn clear_pending(mut self) -> Self {
        self.clear_pending = true;
        self
    }
    /// The reason contains `text`.
    fn because(mut self, text: &str) -> Self {
        self.reason_mentions.push(text.into());
        self
    }
    /// The reason names key `raw` (masked).
    fn naming(mut self, raw: &str) -> Self {
        self.reason_mentions.push(masked(raw));
        self
    }
}

/// Plans `given` and compares with `want`, then checks what holds for every plan.
fn check(given: Given, want: Want) {
    let got = given.plan();
    let ids = |v: &[&str]| v.iter().map(|k| id(k)).collect::<Vec<_>>();
    let shown = format!("{got:#?}");

    let tidy = got.tidy().cloned().unwrap_or_default();
    let make_room = tidy.make_room.as_ref().map(|r| r.key.clone());
    let finish_retire = got.finish_retire().map(|r| r.key.clone());
    let reason = got.reason();
    assert_eq!(got.decision(), want.decision, "decision of {shown}");
    assert_eq!(
        got.old_key().cloned(),
        want.old_key.map(id),
        "old_key of {shown}"
    );
    assert_eq!(
        got.new_key().cloned(),
        want.new_key.map(id),
        "new_key of {shown}"
    );
    assert_eq!(tidy.orphans, ids(&want.orphans), "orphans of {shown}");
    assert_eq!(make_room, want.make_room.map(id), "make_room of {shown}");
    assert_eq!(
        finish_retire,
        want.finish_retire.map(id),
        "finish_retire of {shown}"
    );
    assert_eq!(
        got.finish_retire().is_some_and(|r| r.delete),
        want.finish_retire_delete,
        "finish_retire_delete of {shown}"
    );
    assert_eq!(
        tidy.clear_pending, want.clear_pending,
        "clear_pending of {shown}"
    );
    for text in &want.reason_mentions {
        assert!(
            reason.contains(text.as_str()),
            "the reason {reason:?} does not mention {text:?}"
        );
    }

    // What holds for every plan.
    assert!(!reason.trim().is_empty(), "a plan without a reason");
    for raw in ALL_KEYS {
        assert!(
            !reason.contains(raw),
            "invariant 5: the reason shows a full key id: {reason:?}"
        );
    }
    assert_eq!(given.plan(), got, "the planner is not pure");
    let held: Vec<AccessKeyId> = given
        .snapshot
        .endpoints
        .iter()
        .filter_map(Endpoint::key_id)
        .collect();
    for doomed in tidy.orphans.iter().chain(&make_room).chain(&finish_retire) {
        assert!(
            !held.contains(doomed),
            "invariant 1: the plan retires {doomed:?}, which a connection holds: {shown}"
        );
    }
    if matches!(
        got.decision(),
        Decision::Refuse | Decision::Invalid | Decision::Busy
    ) {
        assert!(!got.changes_anything(), "a refusal that changes: {shown}");
    }
}

/// One `#[test]` per row: `name: given => want;`. Attributes (`#[ignore = "…"]`) go before
/// the name.
macro_rules! plans {
    ($( $(#[$attr:meta])* $name:ident: $given:expr => $want:expr; )+) => {
        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                check($given, $want);
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// Age and force
// ---------------------------------------------------------------------------------------------

plans! {
    a_key_older_than_min_key_age_is_rotated:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
        => rotate().old_key(OLD).because("min_key_age").naming(OLD);

    a_key_exactly_min_key_age_old_is_rotated:
        snap().key(OLD, Active, 6, USED).held_by("aws-prod", OLD).current(key_of(OLD))
        => rotate().old_key(OLD).because("min_key_age");

    a_key_younger_than_min_key_age_is_nothing_due:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD).current(key_of(OLD))
        => nothing_due().old_key(OLD).because("min_key_age").because("due in 5d 0h").naming(OLD);

    a_young_key_is_rotated_when_forced:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD).current(key_of(OLD)).forced()
        => rotate().old_key(OLD).because("forced").naming(OLD);

    a_longer_min_key_age_from_the_policy_is_honoured:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .min_key_age_days(30)
        => nothing_due().old_key(OLD).because("min_key_age (30d 0h)");
}

// ---------------------------------------------------------------------------------------------
// The secret
// ---------------------------------------------------------------------------------------------

plans! {
    a_first_run_without_a_secret_adopts_the_key_the_connection_holds:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD)
        => rotate().old_key(OLD);

    a_first_run_without_a_secret_waits_until_the_key_is_due:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD)
        => nothing_due().old_key(OLD).because("min_key_age");

    a_legacy_awscurrent_is_adopted_by_rotating:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(Content::Legacy)
        => rotate().old_key(OLD);

    a_foreign_awscurrent_is_invalid:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(Content::Foreign)
        => invalid().because("not an access key");

    an_awscurrent_naming_a_key_of_another_user_is_invalid:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD)
            .current(key_of_user(ALIEN, "someone-else"))
        => invalid().because("AWSCURRENT").because("'someone-else'").because("'pipeline'")
            .naming(ALIEN);

    an_awsprevious_naming_a_key_of_another_user_is_invalid:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .previous(key_of_user(ALIEN, "someone-else"))
        => invalid().because("AWSPREVIOUS").because("'someone-else'").naming(ALIEN);

    a_foreign_awsprevious_does_not_block_a_rotation:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .previous(Content::Foreign)
        => rotate().old_key(OLD);
}

// ---------------------------------------------------------------------------------------------
// The service connections
// ---------------------------------------------------------------------------------------------

plans! {
    a_connection_that_is_not_aws_is_refused_by_name:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD)).held_by("aws-prod", OLD)
            .connection(Endpoint { kind: "AzureRM".into(), ..aws("azure-prod", Some(OLD)) })
        => refuse().because("'azure-prod'").because("'AzureRM'").because("not AWS");

    an_oidc_connection_is_refused_by_name:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD))
            .connection(Endpoint { uses_oidc: true, ..aws("aws-oidc", None) })
        => refuse().because("'aws-oidc'").because("OIDC");

    a_connection_with_another_scheme_is_refused_by_name:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD))
            .connection(Endpoint {
                scheme: "WorkloadIdentityFederation".into(),
                ..aws("aws-wif", Some(OLD))
            })
        => refuse().because("'aws-wif'").because("'WorkloadIdentityFederation'")
            .because("not UsernamePassword");

    a_connection_holding_no_key_id_is_refused:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD)).held_by("aws-prod", OLD)
            .connection(aws("aws-empty", None))
        => refuse().because("'aws-empty'").because("holds no access key id");

    a_connection_whose_username_is_not_a_key_id_is_refused:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD))
            .connection(aws("aws-bot", Some("deploy-bot")))
        => refuse().because("'aws-bot'").because("holds no access key id");

    a_connection_holding_a_key_of_another_user_is_refused:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD)).held_by("aws-prod", ALIEN)
        => refuse().because("'aws-prod'").naming(ALIEN)
            .because("not a key of IAM user 'pipeline'");

    a_connection_holding_an_inactive_key_is_refused:
        snap().key(OLD, Inactive, 10, USED).current(key_of(OLD)).held_by("aws-prod", OLD)
        => refuse().because("'aws-prod'").naming(OLD).because("Inactive");

    connections_holding_two_active_keys_without_a_rotation_in_progress_are_refused:
        snap().key(OLD, Active, 10, USED).key(OTHER, Active, 3, USED)
            .held_by("aws-prod", OLD).held_by("aws-dev", OTHER).current(key_of(OLD))
        => refuse().because("two active keys").naming(OLD).naming(OTHER);

    a_target_without_connections_is_refused:
        snap().key(OLD, Active, 10, USED).current(key_of(OLD))
        => refuse().because("no service connection");
}

// ---------------------------------------------------------------------------------------------
// Keys nobody holds and no stage names
// ---------------------------------------------------------------------------------------------

plans! {
    // "Safe among others", case 3: a never-used key nobody holds is someone's new key unless an
    // intent record of keyrotor announced it.
    a_never_used_key_keyrotor_did_not_create_blocks_a_due_rotation_and_is_kept:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 2, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD))
        => refuse().naming(STRAY).because("did not create");

    a_never_used_key_an_intent_announced_is_an_orphan_of_a_due_rotation:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending_intent(OTHER_RUN, 0)
        => rotate().old_key(OLD).orphan(STRAY).clear_pending();

    a_never_used_key_keyrotor_did_not_create_is_left_alone_when_nothing_is_due:
        snap().key(OLD, Active, 1, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD))
        => nothing_due().old_key(OLD).because("min_key_age");

    an_inactive_never_used_key_keyrotor_did_not_create_is_left_alone:
        snap().key(OLD, Active, 1, USED).key(STRAY, Inactive, 20, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD))
        => nothing_due().old_key(OLD);

    an_unknown_key_that_was_used_is_refused_not_deleted:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 30, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD))
        => refuse().naming(STRAY).because("was last used");

    an_inactive_unknown_key_that_was_used_is_refused_not_deleted:
        snap().key(OLD, Active, 10, USED).key(STRAY, Inactive, 30, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD))
        => refuse().naming(STRAY).because("was last used");
}

// ---------------------------------------------------------------------------------------------
// Running jobs finish: the drain ("Safe among others", case 5)
// ---------------------------------------------------------------------------------------------

plans! {
    a_previous_key_still_active_within_the_drain_is_left_active:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .drain_minutes(60)
        => nothing_due().old_key(NEW).because("stays Active until");

    a_previous_key_still_active_after_the_drain_is_retired:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .drain_minutes(60)
        => nothing_due().old_key(NEW).finish_retire(OLD, true);
}

// ---------------------------------------------------------------------------------------------
// The intent record at AWSPENDING
// ---------------------------------------------------------------------------------------------

plans! {
    a_live_intent_of_another_run_is_busy_and_spares_the_key_it_is_creating:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending_intent(OTHER_RUN, 120)
        => busy().old_key(OLD).because(OTHER_RUN);

    a_live_intent_of_another_run_is_busy_even_when_nothing_is_due:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending_intent(OTHER_RUN, 120)
        => busy().old_key(OLD).because(OTHER_RUN);

    an_expired_intent_of_another_run_is_cleared_and_its_key_is_an_orphan:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending_intent(OTHER_RUN, 0)
        => rotate().old_key(OLD).orphan(STRAY).clear_pending();

    an_expired_intent_is_cleared_even_when_nothing_is_due:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending_intent(OTHER_RUN, -600)
        => nothing_due().old_key(OLD).clear_pending();

    an_intent_expiring_this_very_second_no_longer_holds:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending_intent(OTHER_RUN, 0)
        => rotate().old_key(OLD).clear_pending();

    an_intent_of_this_run_is_neither_busy_nor_cleared:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending_intent(THIS_RUN, 120)
        => rotate().old_key(OLD);

    an_expired_intent_of_this_run_is_not_cleared:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending_intent(THIS_RUN, -600)
        => rotate().old_key(OLD);

    a_pending_label_on_a_legacy_value_is_cleared:
        snap().key(OLD, Active, 10, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending(Content::Legacy)
        => rotate().old_key(OLD).clear_pending();

    a_pending_label_on_a_foreign_value_is_cleared:
        snap().key(OLD, Active, 1, USED).held_by("aws-prod", OLD).current(key_of(OLD))
            .pending(Content::Foreign)
        => nothing_due().old_key(OLD).clear_pending();
}

// ---------------------------------------------------------------------------------------------
// A key at AWSPENDING: a rotation left unfinished
// ---------------------------------------------------------------------------------------------

plans! {
    a_pending_key_that_exists_is_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW).because("resuming").naming(NEW);

    a_pending_key_is_resumed_even_when_the_old_key_is_young:
        snap().key(OLD, Active, 1, USED).key(NEW, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW);

    a_pending_key_missing_from_iam_is_cleared_and_the_rotation_starts_over:
        snap().key(OLD, Active, 10, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending(key_of(NEW))
        => rotate().old_key(OLD).clear_pending();

    a_pending_key_missing_from_iam_is_cleared_when_nothing_is_due:
        snap().key(OLD, Active, 1, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending(key_of(NEW))
        => nothing_due().old_key(OLD).clear_pending();

    an_inactive_pending_key_is_refused:
        snap().key(OLD, Active, 10, USED).key(NEW, Inactive, 0, USED)
            .held_by("aws-prod", OLD).current(key_of(OLD)).pending(key_of(NEW))
        => refuse().naming(NEW).because("Inactive");

    connections_split_between_the_old_and_the_pending_key_are_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", OLD).held_by("aws-dev", NEW)
            .current(key_of(OLD)).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW);

    connections_all_on_the_pending_key_before_promote_are_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).held_by("aws-dev", NEW)
            .current(key_of(OLD)).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW);

    a_crash_inside_promote_is_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW)
            .current(key_of(NEW)).pending(key_of(NEW)).previous(key_of(OLD))
        => resume().old_key(OLD).new_key(NEW);

    // The first version of a new secret gets AWSCURRENT whatever was asked (Secrets Manager,
    // and the testkit's fake): a first run's intent record sits at AWSCURRENT until promote.
    // A crash after every connection was switched to the new key, before promote, leaves the
    // old key held by nobody and named by no stage, but used: the next run must finish the
    // rotation (move AWSCURRENT, retire the old key), not refuse its own leftovers.
    a_first_run_that_crashed_after_every_connection_switched_is_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW)
            .current(intent(OTHER_RUN, -600)).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW);

    a_legacy_first_run_that_crashed_after_every_connection_switched_is_resumed:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW)
            .current(Content::Legacy).pending(key_of(NEW))
        => resume().old_key(OLD).new_key(NEW);
}

// ---------------------------------------------------------------------------------------------
// The previous key: retirement finished by a later run, or deleted to make room
// ---------------------------------------------------------------------------------------------

plans! {
    an_active_previous_key_left_by_a_crash_before_retire_is_retired_and_deleted:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
        => nothing_due().old_key(NEW).finish_retire(OLD, true).because("min_key_age");

    an_active_previous_key_is_only_deactivated_while_its_grace_lasts:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(7)
        => nothing_due().old_key(NEW).finish_retire(OLD, false);

    an_inactive_previous_key_within_its_grace_is_left_alone:
        snap().key(OLD, Inactive, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(7)
        => nothing_due().old_key(NEW);

    an_inactive_previous_key_past_its_grace_is_deleted:
        snap().key(OLD, Inactive, 20, USED).key(NEW, Active, 8, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(7).min_key_age_days(30)
        => nothing_due().old_key(NEW).finish_retire(OLD, true);

    an_inactive_previous_key_left_by_a_crash_inside_retire_is_deleted_without_grace:
        snap().key(OLD, Inactive, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
        => nothing_due().old_key(NEW).finish_retire(OLD, true);

    a_due_rotation_deletes_the_inactive_previous_key_to_make_room:
        snap().key(OLD, Inactive, 20, USED).key(NEW, Active, 10, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
        => rotate().old_key(NEW).make_room(OLD);

    // Safe in production, second pass (#21, 5): no key is deleted before its grace ends, not
    // even to make room; the rotation waits (and a forced one is refused, naming the grace).
    a_due_rotation_waits_while_the_previous_key_is_in_its_grace:
        snap().key(OLD, Inactive, 20, USED).key(NEW, Active, 10, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(30)
        => nothing_due().old_key(NEW).because("stays Inactive until").naming(OLD);

    a_forced_rotation_is_refused_while_the_previous_key_is_in_its_grace:
        snap().key(OLD, Inactive, 20, USED).key(NEW, Active, 10, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(30).forced()
        => refuse().because("delete_old_key_after").naming(OLD);

    // #21, 5: make-room never deletes a key in its drain, forced or not.
    a_forced_rotation_is_refused_while_the_previous_key_drains:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .drain_minutes(60).forced()
        => refuse().because("stays Active until").because("policy.drain").naming(OLD);

    a_rotation_due_within_the_drain_waits_for_it:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .drain_minutes(60).min_key_age_days(0)
        => nothing_due().old_key(NEW).because("stays Active until").naming(OLD);

    // #21, 5: the drain counts from the moment every connection held the key, as recorded in
    // its version at promote, not from the key's creation (a push may come long after).
    a_recorded_confirmation_time_sets_the_drain_not_the_keys_creation:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).confirmed_minutes_ago(10)
            .previous(key_of(OLD)).drain_minutes(60)
        => nothing_due().old_key(NEW).because("stays Active until").naming(OLD);

    a_recorded_confirmation_time_past_the_drain_retires_the_previous_key:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).confirmed_minutes_ago(61)
            .previous(key_of(OLD)).drain_minutes(60)
        => nothing_due().old_key(NEW).finish_retire(OLD, true);

    // Recoverable first (#21, 3): an Active previous key past its drain, with a grace, is
    // deactivated and the due rotation waits for the grace instead of deleting it for room.
    a_due_rotation_deactivates_an_active_previous_key_first_when_there_is_a_grace:
        snap().key(OLD, Active, 20, USED).key(NEW, Active, 10, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
            .grace_days(3)
        => nothing_due().old_key(NEW).finish_retire(OLD, false).because("deactivated first");

    a_due_rotation_makes_room_by_deleting_an_active_previous_key:
        snap().key(OLD, Active, 20, USED).key(NEW, Active, 10, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(key_of(OLD))
        => rotate().old_key(NEW).make_room(OLD);

    an_active_awscurrent_key_the_connections_do_not_hold_is_refused:
        snap().key(OLD, Active, 10, USED).key(OTHER, Active, 3, USED)
            .held_by("aws-prod", OLD).current(key_of(OTHER))
        => refuse().because("two active keys").because("AWSCURRENT").naming(OLD).naming(OTHER);

    // Same root cause as the first-run resume above, one step later: after promote,
    // AWSPREVIOUS holds the legacy value (or the first run's intent record), so the old key is
    // still named by no stage; a crash before retire must be finished by the next run.
    a_legacy_first_run_that_crashed_after_promote_finishes_retiring_the_old_key:
        snap().key(OLD, Active, 10, USED).key(NEW, Active, 0, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(Content::Legacy)
        => nothing_due().old_key(NEW).finish_retire(OLD, true);

    // "Safe among others", found by reading: a used key nobody holds that was created AFTER
    // the current one is not the legacy key that was current before the first rotation; it is
    // someone else's, and is refused, never retired as the adopted old key.
    // Safe in production, second pass (#21, 1): a first rotation (the secret was absent) leaves
    // its intent record at AWSPREVIOUS; a key a person makes right after that rotation finished,
    // inside the intent's window, is the person's, never deleted as the rotation's orphan.
    a_never_used_key_made_right_after_a_finished_rotation_is_left_alone:
        snap().key(NEW, Active, 0, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(intent(OTHER_RUN, 120))
        => nothing_due().old_key(NEW);

    a_never_used_key_made_in_the_window_of_an_unpromoted_first_rotation_is_its_orphan:
        snap().key(OLD, Active, 10, USED).key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD).current(intent(OTHER_RUN, 120))
        => rotate().old_key(OLD).orphan(STRAY);

    a_used_unheld_key_younger_than_the_current_one_is_not_taken_for_the_adopted_old_key:
        snap().key(NEW, Active, 3, USED).key(STRAY, Active, 1, USED)
            .held_by("aws-prod", NEW).current(key_of(NEW)).previous(Content::Legacy)
        => refuse().naming(STRAY).because("was last used");
}

// ---------------------------------------------------------------------------------------------
// Purity and `changes_anything`
// ---------------------------------------------------------------------------------------------

/// A few scenarios of every kind.
fn assorted() -> Vec<Given> {
    vec![
        snap()
            .key(OLD, Active, 10, USED)
            .held_by("aws-prod", OLD)
            .current(key_of(OLD)),
        snap()
            .key(OLD, Active, 1, USED)
            .key(STRAY, Active, 0, NEVER_USED)
            .held_by("aws-prod", OLD)
            .current(key_of(OLD)),
        snap()
            .key(OLD, Active, 10, USED)
            .key(NEW, Active, 0, USED)
            .held_by("aws-prod", OLD)
            .held_by("aws-dev", NEW)
            .current(key_of(OLD))
            .pending(key_of(NEW)),
        snap()
            .key(OLD, Active, 10, USED)
            .held_by("aws-prod", OLD)
            .current(key_of(OLD))
            .pending_intent(OTHER_RUN, 120),
        snap()
            .key(OLD, Active, 10, USED)
            .key(STRAY, Active, 10, USED)
            .held_by("aws-prod", OLD),
    ]
}

#[test]
fn the_same_inputs_give_equal_plans() {
    for given in assorted() {
        let first = given.plan();
        let again = given.clone().plan();
        assert_eq!(first, again);
        assert_eq!(first, given.plan());
    }
}

#[test]
fn the_plan_depends_only_on_its_inputs_not_on_the_order_of_calls() {
    let plans: Vec<Plan> = assorted().iter().map(Given::plan).collect();
    let reversed: Vec<Plan> = assorted().iter().rev().map(Given::plan).collect();
    let mut back = reversed;
    back.reverse();
    assert_eq!(plans, back);
}

#[test]
fn a_plain_nothing_due_changes_nothing() {
    let p = snap()
        .key(OLD, Active, 1, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .plan();
    assert_eq!(p.decision(), Decision::NothingDue);
    assert!(!p.changes_anything(), "{p:?}");
}

#[test]
fn an_inactive_previous_key_in_grace_changes_nothing() {
    let p = snap()
        .key(OLD, Inactive, 10, USED)
        .key(NEW, Active, 1, USED)
        .held_by("aws-prod", NEW)
        .current(key_of(NEW))
        .previous(key_of(OLD))
        .grace_days(7)
        .plan();
    assert_eq!(p.decision(), Decision::NothingDue);
    assert!(!p.changes_anything(), "{p:?}");
}

#[test]
fn a_rotation_changes_something() {
    let p = snap()
        .key(OLD, Active, 10, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .plan();
    assert_eq!(p.decision(), Decision::Rotate);
    assert!(p.changes_anything(), "{p:?}");
}

#[test]
fn a_resume_changes_something() {
    let p = snap()
        .key(OLD, Active, 10, USED)
        .key(NEW, Active, 0, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .pending(key_of(NEW))
        .plan();
    assert_eq!(p.decision(), Decision::Resume);
    assert!(p.changes_anything(), "{p:?}");
}

#[test]
fn tidying_up_changes_something_even_when_nothing_is_due() {
    let orphan = snap()
        .key(OLD, Active, 1, USED)
        .key(STRAY, Active, 0, NEVER_USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .pending_intent(OTHER_RUN, 0);
    let unfinished_retire = snap()
        .key(OLD, Active, 10, USED)
        .key(NEW, Active, 1, USED)
        .held_by("aws-prod", NEW)
        .current(key_of(NEW))
        .previous(key_of(OLD));
    let stale_pending = snap()
        .key(OLD, Active, 1, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .pending_intent(OTHER_RUN, -600);
    for given in [orphan, unfinished_retire, stale_pending] {
        let p = given.plan();
        assert_eq!(p.decision(), Decision::NothingDue, "{p:?}");
        assert!(p.changes_anything(), "{p:?}");
    }
}

#[test]
fn refusals_and_busy_change_nothing() {
    let busy = snap()
        .key(OLD, Active, 10, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD))
        .pending_intent(OTHER_RUN, 120);
    let refused = snap()
        .key(OLD, Active, 10, USED)
        .key(STRAY, Active, 10, USED)
        .held_by("aws-prod", OLD)
        .current(key_of(OLD));
    let invalid = snap()
        .key(OLD, Active, 10, USED)
        .held_by("aws-prod", OLD)
        .current(Content::Foreign);
    for (given, decision) in [
        (busy, Decision::Busy),
        (refused, Decision::Refuse),
        (invalid, Decision::Invalid),
    ] {
        let p = given.plan();
        assert_eq!(p.decision(), decision, "{p:?}");
        assert!(!p.changes_anything(), "{p:?}");
    }
}
