//! The planner: a pure function of a [`Snapshot`], the [`Policy`], the clock and the run id.
//!
//! It decides what a run does for one target, and refuses what is unsafe. Everything it needs is
//! in the snapshot, which `inspect` reads from the systems themselves: IAM's keys (read first),
//! the secret's stages (read second, so an intent written before a key was created is always
//! seen when the key is), and each endpoint's username.
//!
//! (One file on purpose: the planner's rules refer to each other — what the connections hold,
//! what the stages name, which keys are unaccounted for, what an intent covers — and every
//! refusal is read against the others; `Plan` and its accessors sit next to the rules that
//! build it.)

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::config::Policy;
use crate::domain::{AccessKeyId, IamUserName, KeyStatus, SecretVersionId};
use crate::ports::{Endpoint, KeyInfo};
use crate::secret_value::Content;
use serde::{Deserialize, Serialize};

/// One labelled version of the secret, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageInfo {
    /// The version id.
    pub version: SecretVersionId,
    /// What it holds.
    pub content: Content,
    /// The run that owns the rotation to this key, while it is at AWSPENDING.
    pub owner: Option<crate::secret_value::Lease>,
    /// When every connection held this key (`KeyrotorConfirmedAt`, recorded at promote when
    /// `policy.drain` is not zero): the previous key's drain and grace count from here.
    pub confirmed_at: Option<SystemTime>,
}

impl StageInfo {
    /// For an intent record: whether it holds other runs off at `now`, by its lease (not
    /// expired and its writer not seen dead, or its execution seen running); an intent read
    /// without its lease counts by its expiry. `false` for anything else.
    pub fn intent_holds(&self, now: SystemTime) -> bool {
        match &self.content {
            Content::Intent { expires_at, .. } => self
                .owner
                .as_ref()
                .map_or(*expires_at > now, |o| o.holds(now)),
            _ => false,
        }
    }
}

/// The state of one target, as read by `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The IAM user.
    pub user: IamUserName,
    /// Its keys.
    pub keys: Vec<KeyInfo>,
    /// Whether the secret exists.
    pub secret_exists: bool,
    /// AWSCURRENT.
    pub current: Option<StageInfo>,
    /// AWSPENDING.
    pub pending: Option<StageInfo>,
    /// AWSPREVIOUS.
    pub previous: Option<StageInfo>,
    /// The endpoints (one per distinct connection).
    pub endpoints: Vec<Endpoint>,
}

impl Snapshot {
    /// The key with this id.
    pub fn key(&self, id: &AccessKeyId) -> Option<&KeyInfo> {
        self.keys.iter().find(|k| &k.id == id)
    }

    fn staged(stage: &Option<StageInfo>) -> Option<&AccessKeyId> {
        match stage {
            Some(StageInfo {
                content: Content::Key { id, .. },
                ..
            }) => Some(id),
            _ => None,
        }
    }

    /// The key id at AWSCURRENT, when it holds keyrotor's JSON.
    pub fn current_key(&self) -> Option<&AccessKeyId> {
        Self::staged(&self.current)
    }
    /// The key id at AWSPENDING, when it holds keyrotor's JSON.
    pub fn pending_key(&self) -> Option<&AccessKeyId> {
        Self::staged(&self.pending)
    }
    /// The key id at AWSPREVIOUS, when it holds keyrotor's JSON.
    pub fn previous_key(&self) -> Option<&AccessKeyId> {
        Self::staged(&self.previous)
    }

    /// The keys no connection holds and no stage names: the only keys whose last use the
    /// planner reads (it decides whether such a key is adopted, deleted or left alone), so the
    /// only ones `inspect` asks IAM about.
    pub fn unaccounted(&self) -> Vec<AccessKeyId> {
        let staged = [self.current_key(), self.pending_key(), self.previous_key()];
        self.keys
            .iter()
            .filter(|k| {
                !staged.contains(&Some(&k.id))
                    && !self
                        .endpoints
                        .iter()
                        .any(|e| e.key_id().as_ref() == Some(&k.id))
            })
            .map(|k| k.id.clone())
            .collect()
    }
}

/// What the run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// Create a new key and rotate it in.
    Rotate,
    /// Finish the rotation whose key is at AWSPENDING.
    Resume,
    /// The key is young enough; only tidy up.
    NothingDue,
    /// Another run holds the intent lease: stand aside.
    Busy,
    /// Unsafe: a person must act.
    Refuse,
    /// The secret holds something keyrotor does not manage.
    Invalid,
}

/// What `cleanup` tidies before anything else: leftovers of earlier runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tidy {
    /// AWSPENDING holds an expired intent or a deleted key: the label comes off.
    pub clear_pending: bool,
    /// Never-used keys nobody holds that an intent record announced: deleted.
    pub orphans: Vec<AccessKeyId>,
    /// A retired key deleted to make room for the new one (IAM allows two).
    pub make_room: Option<Retirement>,
}

impl Tidy {
    /// Whether there is anything to tidy.
    pub fn is_empty(&self) -> bool {
        !self.clear_pending && self.orphans.is_empty() && self.make_room.is_none()
    }
}

/// One key to retire, and how far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// The key.
    pub key: AccessKeyId,
    /// Deleted as well as deactivated (its grace period is over).
    pub delete: bool,
    /// Invariant 1's second signal: when IAM says the key signed a request after this instant
    /// (every connection had the new key and running jobs had their drain), something the
    /// organization's connections do not show still uses it, and it stays Active.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::machine::time_serde"
    )]
    pub unused_after: Option<SystemTime>,
    /// Invariant 7: the key that replaced it, which must still exist and be Active (read from
    /// the same listing) for the retirement to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<AccessKeyId>,
}

/// The plan for one target: what the run does, and what each decision needs. Ids and sentences
/// only, never a secret: it travels in the Step Functions payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum Plan {
    /// Create a new key and rotate it in, in place of `old_key`.
    Rotate {
        /// One sentence for people.
        reason: String,
        /// The key every connection holds now.
        old_key: AccessKeyId,
        /// Leftovers tidied first.
        tidy: Tidy,
    },
    /// Finish the rotation to `new_key`, whose key is at AWSPENDING.
    Resume {
        /// One sentence for people.
        reason: String,
        /// The key it replaces, when known.
        old_key: Option<AccessKeyId>,
        /// The key being rotated in.
        new_key: AccessKeyId,
        /// Leftovers tidied first.
        tidy: Tidy,
    },
    /// The key is young enough: only tidy up, and finish an earlier retirement.
    NothingDue {
        /// One sentence for people.
        reason: String,
        /// The key in use.
        old_key: AccessKeyId,
        /// Leftovers.
        tidy: Tidy,
        /// A previous key whose retirement is unfinished (Active past its drain, or Inactive
        /// past its grace).
        finish_retire: Option<Retirement>,
    },
    /// Another run holds the intent or the rotation's lease: stand aside.
    Busy {
        /// One sentence for people.
        reason: String,
        /// The key the connections hold, when known.
        old_key: Option<AccessKeyId>,
        /// The key the other run rotates in, when known.
        new_key: Option<AccessKeyId>,
    },
    /// Unsafe: a person must act.
    Refuse {
        /// What is wrong and what to do.
        reason: String,
    },
    /// The secret holds something keyrotor does not manage.
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

impl Plan {
    /// The decision, without what it carries.
    pub fn decision(&self) -> Decision {
        match self {
            Self::Rotate { .. } => Decision::Rotate,
            Self::Resume { .. } => Decision::Resume,
            Self::NothingDue { .. } => Decision::NothingDue,
            Self::Busy { .. } => Decision::Busy,
            Self::Refuse { .. } => Decision::Refuse,
            Self::Invalid { .. } => Decision::Invalid,
        }
    }

    /// One sentence for people.
    pub fn reason(&self) -> &str {
        match self {
            Self::Rotate { reason, .. }
            | Self::Resume { reason, .. }
            | Self::NothingDue { reason, .. }
            | Self::Busy { reason, .. }
            | Self::Refuse { reason }
            | Self::Invalid { reason } => reason,
        }
    }

    /// The key the connections hold now, when the plan knows it.
    pub fn old_key(&self) -> Option<&AccessKeyId> {
        match self {
            Self::Rotate { old_key, .. } | Self::NothingDue { old_key, .. } => Some(old_key),
            Self::Resume { old_key, .. } | Self::Busy { old_key, .. } => old_key.as_ref(),
            Self::Refuse { .. } | Self::Invalid { .. } => None,
        }
    }

    /// The key being rotated in, when one is at AWSPENDING.
    pub fn new_key(&self) -> Option<&AccessKeyId> {
        match self {
            Self::Resume { new_key, .. } => Some(new_key),
            Self::Busy { new_key, .. } => new_key.as_ref(),
            _ => None,
        }
    }

    /// What `cleanup` tidies (nothing for a plan that acts on nothing).
    pub fn tidy(&self) -> Option<&Tidy> {
        match self {
            Self::Rotate { tidy, .. }
            | Self::Resume { tidy, .. }
            | Self::NothingDue { tidy, .. } => Some(tidy),
            _ => None,
        }
    }

    /// An earlier retirement this run finishes.
    pub fn finish_retire(&self) -> Option<&Retirement> {
        match self {
            Self::NothingDue { finish_retire, .. } => finish_retire.as_ref(),
            _ => None,
        }
    }

    /// Whether the plan changes anything at all.
    pub fn changes_anything(&self) -> bool {
        matches!(self, Self::Rotate { .. } | Self::Resume { .. })
            || self.tidy().is_some_and(|t| !t.is_empty())
            || self.finish_retire().is_some()
    }
}

/// The planner's working notes, turned into a [`Plan`] at the end.
struct Draft {
    decision: Decision,
    reason: String,
    old_key: Option<AccessKeyId>,
    new_key: Option<AccessKeyId>,
    tidy: Tidy,
    finish_retire: Option<Retirement>,
}

impl Draft {
    fn new(decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            decision,
            reason: reason.into(),
            old_key: None,
            new_key: None,
            tidy: Tidy::default(),
            finish_retire: None,
        }
    }

    fn into_plan(self) -> Plan {
        let Draft {
            decision,
            reason,
            old_key,
            new_key,
            tidy,
            finish_retire,
        } = self;
        match (decision, old_key, new_key) {
            (Decision::Rotate, Some(old_key), _) => Plan::Rotate {
                reason,
                old_key,
                tidy,
            },
            (Decision::Resume, old_key, Some(new_key)) => Plan::Resume {
                reason,
                old_key,
                new_key,
                tidy,
            },
            (Decision::NothingDue, Some(old_key), _) => Plan::NothingDue {
                reason,
                old_key,
                tidy,
                finish_retire,
            },
            (Decision::Busy, old_key, new_key) => Plan::Busy {
                reason,
                old_key,
                new_key,
            },
            (Decision::Invalid, _, _) => Plan::Invalid { reason },
            (Decision::Refuse, _, _) => Plan::Refuse { reason },
            (d, _, _) => Plan::Refuse {
                reason: format!("the plan to {d:?} lacks the key it acts on ({reason})"),
            },
        }
    }
}

fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Human form of a duration, in whole units.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Whether the intent record of an **unfinished** rotation announced `k`: created inside the
/// window between the intent's writing (its expiry less `intent_lease`, less a minute of clock
/// skew) and its expiry. Only an intent at AWSPENDING (written before `CreateAccessKey`, and not
/// yet replaced by the key's version) or at AWSCURRENT (the first version of a new secret, before
/// promote) belongs to an unfinished rotation. An intent at AWSPREVIOUS is a finished
/// rotation's: that rotation knows its key (AWSCURRENT), so after it no key is taken for its
/// orphan — a key a person makes right after a rotation is theirs.
fn made_by_keyrotor(s: &Snapshot, policy: &Policy, k: &KeyInfo) -> bool {
    [&s.current, &s.pending]
        .into_iter()
        .flatten()
        .any(|st| match &st.content {
            Content::Intent { expires_at, .. } => {
                k.created >= intent_window_start(*expires_at, policy) && k.created <= *expires_at
            }
            _ => false,
        })
}

/// Where an intent's window starts: its writing (expiry less `intent_lease`), less a minute of
/// clock skew between the machine that wrote it and IAM's `CreateDate`.
pub(crate) fn intent_window_start(expires_at: SystemTime, policy: &Policy) -> SystemTime {
    expires_at
        .checked_sub(policy.intent_lease + Duration::from_secs(60))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// When every connection held `in_use`: recorded in its version at promote
/// (`KeyrotorConfirmedAt`, when `policy.drain` is not zero), else estimated from its creation
/// (the push follows within `verify_timeout`, plus ten minutes for a slow push and clock skew).
fn confirmed_at(s: &Snapshot, in_use: &KeyInfo, policy: &Policy) -> SystemTime {
    s.current
        .as_ref()
        .filter(|_| s.current_key() == Some(&in_use.id))
        .and_then(|st| st.confirmed_at)
        .unwrap_or(in_use.created + policy.verify_timeout + Duration::from_secs(600))
}

/// Invariant 1's second signal, IAM's last use of the old key, read as a hint with margins (it has
/// minute resolution and lags): a use later than this instant — the second half of the drain
/// that followed `confirmed` (the moment every connection held the new key), or after it —
/// means something the organization's connections do not show, or a job longer than the drain,
/// still uses the key. Half the drain also covers the clock skew between this machine and IAM
/// (a minute, for any drain of two minutes or more); with no drain the cutoff is a minute after
/// `confirmed`, so the signal can only fire in a later run.
pub fn last_use_cutoff(confirmed: SystemTime, policy: &Policy) -> SystemTime {
    if policy.drain.is_zero() {
        confirmed + Duration::from_secs(60)
    } else {
        confirmed + policy.drain / 2
    }
}

/// A key IAM last saw in use longer ago than this is taken as quiet, even after the cutoff: the
/// consumer that used it was moved (or runs less often than daily; deactivation, not deletion,
/// is what the default grace makes of such a miss, and re-activation is the way back).
pub const QUIET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Decides what a run does. Pure: the same inputs give the same plan.
pub fn plan(s: &Snapshot, policy: &Policy, now: SystemTime, run_id: &str, force: bool) -> Plan {
    decide(s, policy, now, run_id, force).into_plan()
}

fn decide(s: &Snapshot, policy: &Policy, now: SystemTime, run_id: &str, force: bool) -> Draft {
    let refuse = |reason: String| Draft::new(Decision::Refuse, reason);
    let user = &s.user;

    // Connections keyrotor cannot rotate.
    for e in &s.endpoints {
        if let Some(reason) = e.unrotatable_reason() {
            return refuse(reason);
        }
    }

    // The secret must be keyrotor's, legacy, or absent; and name this user's keys.
    for (label, stage) in [("AWSCURRENT", &s.current), ("AWSPREVIOUS", &s.previous)] {
        match stage.as_ref().map(|st| &st.content) {
            Some(Content::Foreign) if label == "AWSCURRENT" => {
                return Draft::new(
                    Decision::Invalid,
                    "the secret holds something that is not an access key (neither keyrotor's \
                     JSON nor a bare secret access key)",
                );
            }
            Some(Content::Key { user_name, id }) if user_name != user.as_str() => {
                return Draft::new(
                    Decision::Invalid,
                    format!(
                        "the secret's {label} holds key {id} of IAM user '{user_name}', not of '{user}'"
                    ),
                );
            }
            _ => {}
        }
    }

    // What the endpoints hold.
    let mut held = BTreeSet::new();
    for e in &s.endpoints {
        let Some(id) = e.key_id() else {
            return refuse(format!(
                "service connection '{}' holds no access key id (its username is empty or not a key id)",
                e.name
            ));
        };
        match s.key(&id) {
            None => {
                return refuse(format!(
                    "service connection '{}' holds key {id}, which is not a key of IAM user '{user}'",
                    e.name
                ));
            }
            Some(k) if k.status == KeyStatus::Inactive => {
                return refuse(format!(
                    "service connection '{}' holds key {id}, which is Inactive: its pipelines fail \
                     now; activate the key or point the connection at an active one",
                    e.name
                ));
            }
            Some(_) => {
                held.insert(id);
            }
        }
    }

    // AWSPENDING: a live intent of another run, a key to resume, or a stale label.
    let mut p = Draft::new(Decision::Rotate, "");
    let mut pending: Option<&AccessKeyId> = None;
    match s.pending.as_ref().map(|st| &st.content) {
        Some(Content::Intent {
            run_id: holder,
            expires_at,
        }) => {
            // Its writer seen dead (its process gone from this machine, its execution ended):
            // the intent holds nobody off, and a key created in its window is an orphan.
            let live = s.pending.as_ref().is_some_and(|st| st.intent_holds(now));
            if holder != run_id && live {
                let mut b = Draft::new(
                    Decision::Busy,
                    format!(
                        "another run ({holder}) is creating a key for this user; its intent holds \
                         until {}",
                        when(*expires_at)
                    ),
                );
                b.old_key = held.iter().next().cloned();
                return b;
            }
            if holder != run_id {
                p.tidy.clear_pending = true;
            }
        }
        Some(Content::Key { id, .. }) => {
            // Invariant 7 (one owner at a time): a rotation another run owns is left to it
            // until its lease expires; only then is it resumed (taken over).
            let owner = s.pending.as_ref().and_then(|st| st.owner.as_ref());
            if let Some(o) = owner.filter(|o| o.run_id != run_id && o.holds(now))
                && s.key(id).is_some()
            {
                let mut b = Draft::new(
                    Decision::Busy,
                    format!(
                        "another run ({}) owns the rotation to {id} until {}",
                        o.run_id,
                        when(o.expires_at)
                    ),
                );
                b.old_key = held.iter().find(|h| *h != id).cloned();
                b.new_key = Some(id.clone());
                return b;
            }
            if s.key(id).is_some() {
                pending = Some(id);
            } else {
                p.tidy.clear_pending = true;
            }
        }
        Some(Content::Legacy | Content::Foreign) => p.tidy.clear_pending = true,
        None => {}
    }

    // Keys that nobody holds and no stage names.
    let staged: BTreeSet<&AccessKeyId> = [s.current_key(), s.pending_key(), s.previous_key()]
        .into_iter()
        .flatten()
        .collect();
    // A used key no stage names is still known in two cases, both left by keyrotor itself when
    // the secret held no keyrotor JSON for the old key (a first run without a secret, or a
    // legacy value): a rotation is in progress (AWSPENDING names an existing key), so the other
    // key is its old key; or that rotation was promoted, so AWSCURRENT holds the key every
    // connection holds and AWSPREVIOUS holds the adopted value (legacy, or the intent record
    // that became the new secret's first version).
    let adopted_previous = pending.is_none()
        && held.len() == 1
        && s.current_key().is_some_and(|c| held.contains(c))
        && matches!(
            s.previous.as_ref().map(|st| &st.content),
            Some(Content::Legacy | Content::Intent { .. })
        );
    // Adoption picks only the key that was current before the first rotation: one created
    // before the key that replaced it (the one at AWSPENDING, or at AWSCURRENT after promote).
    let replaced_by = pending
        .or(if adopted_previous {
            s.current_key()
        } else {
            None
        })
        .and_then(|id| s.key(id))
        .map(|k| k.created);
    let mut adopted_old: Option<AccessKeyId> = None;
    let mut strangers: Vec<&KeyInfo> = Vec::new();
    for k in &s.keys {
        if held.contains(&k.id) || staged.contains(&k.id) {
            continue;
        }
        if k.last_used.is_some()
            && (pending.is_some() || adopted_previous)
            && replaced_by.is_some_and(|r| k.created < r)
        {
            adopted_old = Some(k.id.clone());
            continue;
        }
        if let Some(used) = k.last_used {
            return refuse(format!(
                "key {} of IAM user '{user}' is held by no service connection and kept in no \
                 secret stage, but was last used {}: keyrotor will not delete a key something \
                 else may use; delete it or add its connection to the config",
                k.id,
                when(used)
            ));
        }
        // Invariant 8 (hands off): a never-used key nobody holds is deleted only when keyrotor
        // can show it created it: an intent record of a run announced it (the key was created
        // inside that intent's window). Anything else is someone's new key.
        if made_by_keyrotor(s, policy, k) {
            p.tidy.orphans.push(k.id.clone());
        } else {
            strangers.push(k);
        }
    }

    // Resume the rotation at AWSPENDING.
    if let Some(new) = pending {
        if s.key(new).is_some_and(|k| k.status == KeyStatus::Inactive) {
            return refuse(format!(
                "the key being rotated in ({new}) is Inactive; someone deactivated it mid-rotation"
            ));
        }
        let old = held
            .iter()
            .find(|id| *id != new)
            .or_else(|| {
                s.current_key()
                    .filter(|id| *id != new && s.key(id).is_some())
            })
            .or_else(|| {
                s.keys
                    .iter()
                    .map(|k| &k.id)
                    .find(|id| *id != new && !p.tidy.orphans.contains(id))
            })
            .cloned();
        if held.len() > 2 || held.iter().any(|h| h != new && Some(h) != old.as_ref()) {
            return refuse("service connections hold more than two different keys".into());
        }
        p.decision = Decision::Resume;
        p.reason = format!("resuming the rotation to {new} left unfinished by an earlier run");
        p.new_key = Some(new.clone());
        p.old_key = old;
        return p;
    }

    // No rotation in progress: every endpoint must hold the same key.
    if held.len() > 1 {
        let list: Vec<String> = held.iter().map(|k| k.masked()).collect();
        return refuse(format!(
            "the service connections hold different keys ({}) and no rotation is in progress: \
             two active keys are in use; point every connection at one key first",
            list.join(", ")
        ));
    }
    let Some(in_use) = held.into_iter().next() else {
        return refuse("the target has no service connection".into());
    };
    let in_use_info = s.key(&in_use).cloned();
    p.old_key = Some(in_use.clone());

    // The other key, if any (IAM allows two).
    let other = s
        .keys
        .iter()
        .find(|k| {
            k.id != in_use
                && !p.tidy.orphans.contains(&k.id)
                && !strangers.iter().any(|x| x.id == k.id)
        })
        .cloned();
    if let Some(x) = strangers.first() {
        // Someone else's key: never deactivated or deleted. It only matters when a rotation
        // needs its room (IAM allows two keys).
        let age = in_use_info
            .as_ref()
            .map(|k| now.duration_since(k.created).unwrap_or_default())
            .unwrap_or_default();
        if force || age >= policy.min_key_age {
            return refuse(format!(
                "IAM user '{user}' has a second key {} (created {}, never used, held by no \
                 service connection, in no stage of the secret) that keyrotor did not create: \
                 keyrotor will not delete it, and IAM allows two keys; delete it or give it \
                 to its consumer, then run keyrotor again",
                x.id,
                when(x.created)
            ));
        }
    }
    // The previous key's drain and grace, counted from the moment every connection held the key
    // in use (recorded at promote; estimated for a version written without it).
    let confirmed = in_use_info.as_ref().map(|k| confirmed_at(s, k, policy));
    let drain_end = confirmed.map(|c| c + policy.drain);
    let grace_end = drain_end.map(|d| d + policy.delete_old_key_after);
    let cutoff = confirmed.map(|c| last_use_cutoff(c, policy));
    let mut drain_note: Option<String> = None;
    // Why the previous key cannot make room for a new one yet, when it cannot.
    let mut blocked: Option<String> = None;
    if let Some(o) = &other {
        let is_previous = s.previous_key() == Some(&o.id) || adopted_old.as_ref() == Some(&o.id);
        let is_current = s.current_key() == Some(&o.id);
        if o.status == KeyStatus::Active && !is_previous {
            return refuse(format!(
                "IAM user '{user}' has two active keys: {in_use} held by the service connections \
                 and {}{}; retire one by hand first",
                o.id,
                if is_current {
                    " named by the secret's AWSCURRENT"
                } else {
                    ""
                }
            ));
        }
        let retirement = |delete: bool| Retirement {
            key: o.id.clone(),
            delete,
            unused_after: cutoff,
            successor: Some(in_use.clone()),
        };
        if o.status == KeyStatus::Active {
            // Running jobs finish: the previous key stays Active for `drain` after every
            // connection held the new one; no path deactivates or deletes it before.
            match drain_end.filter(|t| now < *t && !policy.drain.is_zero()) {
                Some(t) => {
                    let note = format!(
                        "the previous key {} stays Active until {} (policy.drain) so that running jobs can finish",
                        o.id,
                        when(t)
                    );
                    blocked = Some(note.clone());
                    drain_note = Some(note);
                }
                None if policy.delete_old_key_after.is_zero() => {
                    p.finish_retire = Some(retirement(true));
                }
                None => {
                    // Recoverable first: deactivated now, deleted once its grace is over.
                    p.finish_retire = Some(retirement(false));
                    blocked = Some(format!(
                        "the previous key {} is deactivated first and deleted after policy.delete_old_key_after ({}), so that it can be re-activated if something still needs it",
                        o.id,
                        human(policy.delete_old_key_after)
                    ));
                }
            }
        } else {
            // Inactive already: its drain is over; its grace counts from the drain's end (when
            // retire deactivated it).
            match grace_end.filter(|t| now < *t && !policy.delete_old_key_after.is_zero()) {
                Some(t) => {
                    blocked = Some(format!(
                        "the previous key {} stays Inactive until {} (policy.delete_old_key_after), so that it can be re-activated if something still needs it",
                        o.id,
                        when(t)
                    ));
                }
                None => p.finish_retire = Some(retirement(true)),
            }
        }
    }

    let age = in_use_info
        .as_ref()
        .map(|k| now.duration_since(k.created).unwrap_or_default())
        .unwrap_or_default();
    if age < policy.min_key_age && !force {
        p.decision = Decision::NothingDue;
        p.reason = format!(
            "key {in_use} is {} old, younger than min_key_age ({}); next rotation due in {}",
            human(age),
            human(policy.min_key_age),
            human(policy.min_key_age - age)
        );
        if let Some(n) = drain_note {
            p.reason.push_str("; ");
            p.reason.push_str(&n);
        }
        return p;
    }

    // Rotate: any other key goes first, to make room (IAM allows two keys). A key still in its
    // drain or its grace is never deleted for room: the rotation waits (refused when forced).
    if let Some(why) = blocked {
        let reason = format!(
            "key {in_use} is {} old, but no new key can be made yet (IAM allows two): {why}",
            human(age)
        );
        if force {
            return refuse(format!("{reason}; run keyrotor again after that"));
        }
        p.decision = Decision::NothingDue;
        p.reason = format!("{reason}; the rotation follows after that");
        return p;
    }
    if let Some(o) = other {
        p.finish_retire = None;
        p.tidy.make_room = Some(Retirement {
            key: o.id,
            delete: true,
            unused_after: cutoff,
            successor: Some(in_use.clone()),
        });
    }
    p.decision = Decision::Rotate;
    p.reason = if force && age < policy.min_key_age {
        format!("key {in_use} is {} old; rotation forced", human(age))
    } else {
        format!(
            "key {in_use} is {} old, at least min_key_age ({})",
            human(age),
            human(policy.min_key_age)
        )
    };
    p
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
