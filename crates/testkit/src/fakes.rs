//! In-memory fakes of every port, for fast unit and crash tests of the core.
//!
//! They enforce the real services' rules: IAM's two keys per user (`LimitExceeded`), the secret
//! shown only at creation, a propagation delay before STS accepts a new key, Secrets Manager's
//! staging-label rules (a label on another version needs `RemoveFromVersionId`; a reused
//! `ClientRequestToken` with another value is refused; the first version gets AWSCURRENT), Azure DevOps' `null` for an unknown id
//! and a GET that never returns the password.
//!
//! A [`Tripwire`] simulates a process killed at the n-th port call (before or after the call
//! takes effect); after it fires, every call fails, as nothing runs in a dead process. After
//! every change the world is checked against the invariants that must hold at every instant;
//! violations are recorded for the test to assert on.
//!
//! (One file on purpose: every fake shares one world state, so that the invariants can be
//! checked after every single change, whichever port made it.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keyrotor_core::config::{Policy, Target};
use keyrotor_core::domain::{
    AccessKeyId, Arn, EndpointId, EndpointRef, EndpointSelector, IamUserName, KeyStatus, OrgUrl,
    ProjectName, SecretName, SecretVersionId,
};
use keyrotor_core::invariants::{World, WorldEndpoint, WorldKey};
use keyrotor_core::ports::{
    AwsConnection, CallerIdentity, Clock, Endpoint, EndpointHandle, ExecutionStatus, Executions,
    IDS_PER_LISTING, KeyInfo, KeyOwner, KeyStore, NewKey, Notifier, Parameters, PortError,
    PortErrorKind, PortResult, SecretStore, SecretVersion, ServiceConnections, Stage,
};
use keyrotor_core::protocol::Ports;
use keyrotor_core::report::RunReport;
use secrecy::{ExposeSecret, SecretString};

/// A fake IAM key.
#[derive(Debug, Clone)]
pub struct FakeKey {
    /// Id.
    pub id: String,
    /// Secret.
    pub secret: String,
    /// Active?
    pub active: bool,
    /// Created (wall clock).
    pub created: SystemTime,
    /// Last used.
    pub used: Option<SystemTime>,
    /// When STS starts accepting it (tokio time).
    pub valid_from: tokio::time::Instant,
}

/// A fake secret version.
#[derive(Debug, Clone)]
pub struct FakeVersion {
    /// Version id (= ClientRequestToken).
    pub id: String,
    /// Value.
    pub value: String,
    /// Labels.
    pub stages: Vec<String>,
}

/// A fake service connection.
#[derive(Debug, Clone)]
pub struct FakeEndpoint {
    /// Organization URL.
    pub org: String,
    /// Projects it is shared into.
    pub projects: Vec<String>,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Type (`AWS`).
    pub kind: String,
    /// Scheme.
    pub scheme: String,
    /// `username`.
    pub username: Option<String>,
    /// `password` (never returned by GET).
    pub password: Option<String>,
    /// `useOIDC`.
    pub oidc: bool,
}

/// The whole fake world.
#[derive(Debug, Default)]
pub struct State {
    /// Wall clock.
    pub now: Option<SystemTime>,
    /// IAM: user → keys.
    pub users: BTreeMap<String, Vec<FakeKey>>,
    /// Secrets Manager: name → versions (`None` when it exists with no versions yet).
    pub secrets: BTreeMap<String, Vec<FakeVersion>>,
    /// SSM parameters.
    pub params: BTreeMap<String, String>,
    /// ADO endpoints.
    pub endpoints: Vec<FakeEndpoint>,
    /// Keys created by keyrotor during the test.
    pub created: Vec<String>,
    /// Successful `CreateAccessKey` calls.
    pub creates: u32,
    /// `LimitExceeded` answers.
    pub limit_exceeded: u32,
    /// The next this many `CreateAccessKey` attempts act but lose their answer (the adapter's
    /// retry then reports [`PortErrorKind::LostAnswer`] or a key with `after_lost_answer`).
    pub lose_create_answers: u32,
    /// Mutations made.
    pub mutations: u32,
    /// Port calls made.
    pub calls: u64,
    /// Invariant violations seen after a change.
    pub violations: Vec<String>,
    /// How long STS takes to accept a new key.
    pub propagation: Duration,
    /// How the next PUTs to ADO answer, in order: `None` works, `Some(e)` fails (then all work).
    pub ado_put_script: std::collections::VecDeque<Option<PortError>>,
    /// Kill switch.
    pub tripwire: Tripwire,
    /// Notifications received.
    pub notifications: Vec<RunReport>,
    /// Yield to the scheduler at every call (interleaves concurrent runs).
    pub yield_every_call: bool,
    /// Azure DevOps requests, counted as the real client (`keyrotor-ado`) sends them.
    pub ado_reads: AdoCalls,
    /// Step Functions executions: ARN → status (`RUNNING`, `SUCCEEDED`, …). An ARN not here
    /// does not exist (`ExecutionDoesNotExist`), as Step Functions answers.
    pub executions: BTreeMap<String, String>,
    /// `DescribeExecution` refused (as for a role without `states:DescribeExecution`).
    pub executions_refused: bool,
    /// `DescribeExecution` calls answered.
    pub describe_executions: u32,
    key_counter: u64,
}

/// The Azure DevOps requests the fakes answered, by operation, counted as the real client sends
/// them: a lookup is one request, a listing by `endpointIds` one per project, an
/// organization-wide scan one for the project list and one per project, `set_credentials` a GET
/// and a PUT, `set_credentials_from` the PUT alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AdoCalls {
    /// Lookups by name or id (`find`).
    pub find: u32,
    /// GETs by id (`get`).
    pub get: u32,
    /// Listings by `endpointIds` (`get_many`: one per project).
    pub list_ids: u32,
    /// Listings of a whole project (`list_project`).
    pub list_project: u32,
    /// Organization-wide scans (`list_aws`).
    pub scans: u32,
    /// The requests those scans took (the project list, then one listing per project).
    pub scan_requests: u32,
    /// PUTs.
    pub put: u32,
    /// GETs that `set_credentials` sends right before its PUT.
    pub get_before_put: u32,
}

impl AdoCalls {
    /// Every request, as the real client would send them.
    pub fn requests(&self) -> u32 {
        self.find
            + self.get
            + self.list_ids
            + self.list_project
            + self.scan_requests
            + self.put
            + self.get_before_put
    }
}

/// Simulates a kill at the n-th port call.
#[derive(Debug, Default, Clone)]
pub struct Tripwire {
    /// Fire at this call number (1-based).
    pub at: Option<u64>,
    /// Let the fatal call take effect before dying (the answer is lost).
    pub after_effect: bool,
    /// Fired already.
    pub fired: bool,
}

const ACCOUNT: &str = "123456789012";

fn dead() -> PortError {
    PortError::new(PortErrorKind::Failed, "the process was killed")
}

/// The fake world, shared by every fake port.
#[derive(Debug, Default, Clone)]
pub struct Fakes(Arc<Mutex<State>>);

enum Gate {
    Go,
    DieAfter,
}

impl Fakes {
    /// An empty world; the clock starts at a fixed instant.
    pub fn new() -> Self {
        let f = Self::default();
        f.state().now = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000));
        f
    }

    /// Locks the state (tests read and change it directly).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ports, all backed by this world.
    pub fn ports(&self) -> Ports {
        let me = Arc::new(self.clone());
        Ports {
            iam: me.clone(),
            secrets: me.clone(),
            sts: me.clone(),
            ado: me.clone(),
            executions: me.clone(),
            clock: me,
        }
    }

    /// Moves the wall clock.
    pub fn advance(&self, d: Duration) {
        let mut s = self.state();
        s.now = Some(s.now.unwrap_or(SystemTime::UNIX_EPOCH) + d);
    }

    /// Adds a key to a user, as if created `age` ago outside keyrotor. Returns (id, secret).
    pub fn add_key(&self, user: &str, age: Duration) -> (String, String) {
        let mut s = self.state();
        let now = s.now.unwrap_or(SystemTime::UNIX_EPOCH);
        let k = s.new_key(now - age);
        let out = (k.id.clone(), k.secret.clone());
        s.users.entry(user.into()).or_default().push(k);
        out
    }

    /// Adds an AWS endpoint holding a key.
    pub fn add_endpoint(
        &self,
        org: &str,
        project: &str,
        name: &str,
        key: Option<(&str, &str)>,
    ) -> String {
        let mut s = self.state();
        let id = format!("00000000-0000-0000-0000-{:012}", s.endpoints.len() + 1);
        s.endpoints.push(FakeEndpoint {
            org: org.into(),
            projects: vec![project.into()],
            id: id.clone(),
            name: name.into(),
            kind: "AWS".into(),
            scheme: "UsernamePassword".into(),
            username: key.map(|k| k.0.into()),
            password: key.map(|k| k.1.into()),
            oidc: false,
        });
        id
    }

    /// Sets a secret's AWSCURRENT value (creating the secret).
    pub fn set_secret(&self, name: &str, value: &str) {
        let mut s = self.state();
        let versions = s.secrets.entry(name.into()).or_default();
        for v in versions.iter_mut() {
            v.stages.retain(|l| l != "AWSCURRENT");
        }
        versions.push(FakeVersion {
            id: uuid::Uuid::new_v4().to_string(),
            value: value.into(),
            stages: vec!["AWSCURRENT".into()],
        });
    }

    /// The world as the invariants see it, for one target.
    pub fn world(&self, user: &str, secret: &str) -> World {
        self.state().world(user, secret)
    }

    fn gate(&self) -> Result<Gate, PortError> {
        let mut s = self.state();
        if s.tripwire.fired {
            return Err(dead());
        }
        s.calls += 1;
        if s.tripwire.at == Some(s.calls) {
            s.tripwire.fired = true;
            if s.tripwire.after_effect {
                return Ok(Gate::DieAfter);
            }
            return Err(dead());
        }
        Ok(Gate::Go)
    }

    /// Runs one port call through the tripwire.
    async fn call<T>(&self, f: impl FnOnce(&mut State) -> PortResult<T>) -> PortResult<T> {
        if self.state().yield_every_call {
            tokio::task::yield_now().await;
        }
        let gate = self.gate()?;
        let r = f(&mut self.state());
        match gate {
            Gate::Go => r,
            Gate::DieAfter => Err(dead()),
        }
    }
}

impl State {
    fn now(&self) -> SystemTime {
        self.now.unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn new_key(&mut self, created: SystemTime) -> FakeKey {
        self.key_counter += 1;
        let n = self.key_counter;
        FakeKey {
            id: format!("AKIAFAKE{n:012}"),
            secret: format!("fakeSecret{n:04}/{}", "x".repeat(26)),
            active: true,
            created,
            used: None,
            valid_from: tokio::time::Instant::now() + self.propagation,
        }
    }

    fn mutated(&mut self) {
        self.mutations += 1;
        let users: Vec<String> = self.users.keys().cloned().collect();
        let secrets: Vec<String> = self.secrets.keys().cloned().collect();
        if let (Some(u), Some(sec)) = (users.first(), secrets.first())
            && users.len() == 1
            && secrets.len() == 1
            && let Err(v) = self.world(u, sec).always()
        {
            self.violations.push(v);
        }
    }

    /// The world as the invariants see it.
    pub fn world(&self, user: &str, secret: &str) -> World {
        let keys = self.users.get(user).cloned().unwrap_or_default();
        let mut stages = BTreeMap::new();
        for v in self.secrets.get(secret).into_iter().flatten() {
            for l in &v.stages {
                stages.insert(l.clone(), v.value.clone());
            }
        }
        World {
            keys: keys
                .iter()
                .map(|k| WorldKey {
                    id: k.id.clone(),
                    active: k.active,
                    secret: Some(k.secret.clone()),
                    used: k.used.is_some(),
                })
                .collect(),
            stages,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| WorldEndpoint {
                    name: e.name.clone(),
                    username: e.username.clone(),
                    password: e.password.clone(),
                })
                .collect(),
            created: self.created.clone(),
        }
    }

    fn keys_of(&mut self, user: &IamUserName) -> PortResult<&mut Vec<FakeKey>> {
        self.users.get_mut(user.as_str()).ok_or_else(|| {
            PortError::new(
                PortErrorKind::NotFound,
                format!("The user with name {user} cannot be found."),
            )
        })
    }

    /// The connection behind a handle, if it is in that project.
    fn view_of(&self, h: &EndpointHandle) -> Option<Endpoint> {
        self.endpoints
            .iter()
            .find(|e| {
                e.org == h.org.as_str()
                    && e.id == h.id.as_str()
                    && e.projects.iter().any(|p| p == h.project.as_str())
            })
            .map(|e| State::endpoint_view(e, &h.org, &h.project))
    }

    fn endpoint_view(e: &FakeEndpoint, org: &OrgUrl, project: &ProjectName) -> Endpoint {
        Endpoint {
            handle: EndpointHandle {
                org: org.clone(),
                project: project.clone(),
                id: EndpointId::parse(&e.id).expect("fake endpoint ids parse"),
            },
            name: e.name.clone(),
            kind: e.kind.clone(),
            scheme: e.scheme.clone(),
            username: e.username.clone(),
            uses_oidc: e.oidc,
            is_ready: true,
            raw: None,
        }
    }
}

#[async_trait]
impl KeyStore for Fakes {
    async fn list_keys(&self, user: &IamUserName) -> PortResult<Vec<KeyInfo>> {
        self.call(|s| {
            Ok(s.keys_of(user)?
                .iter()
                .map(|k| KeyInfo {
                    id: AccessKeyId::parse(&k.id).expect("fake ids parse"),
                    status: if k.active {
                        KeyStatus::Active
                    } else {
                        KeyStatus::Inactive
                    },
                    created: k.created,
                    last_used: k.used,
                })
                .collect())
        })
        .await
    }

    async fn create_key(&self, user: &IamUserName) -> PortResult<NewKey> {
        self.call(|s| {
            let now = s.now();
            // As the AWS adapter reports a lost answer: the lost attempt created a key, the
            // adapter's retry met the limit (LostAnswer) or created another key.
            let mut lost = false;
            loop {
                if s.keys_of(user)?.len() >= 2 {
                    if lost {
                        return Err(PortError::new(
                            PortErrorKind::LostAnswer,
                            "IAM CreateAccessKey: an attempt's answer was lost and its retry met the two-key limit",
                        ));
                    }
                    s.limit_exceeded += 1;
                    return Err(PortError::new(
                        PortErrorKind::LimitExceeded,
                        "Cannot exceed quota for AccessKeysPerUser: 2",
                    ));
                }
                if s.lose_create_answers == 0 {
                    break;
                }
                s.lose_create_answers -= 1;
                lost = true;
                let k = s.new_key(now);
                s.created.push(k.id.clone());
                s.creates += 1;
                s.keys_of(user)?.push(k);
                s.mutated();
            }
            let k = s.new_key(now);
            let out = NewKey {
                info: KeyInfo {
                    id: AccessKeyId::parse(&k.id).expect("fake ids parse"),
                    status: KeyStatus::Active,
                    created: now,
                    last_used: None,
                },
                secret: SecretString::from(k.secret.clone()),
                after_lost_answer: lost,
            };
            s.created.push(k.id.clone());
            s.creates += 1;
            s.keys_of(user)?.push(k);
            s.mutated();
            Ok(out)
        })
        .await
    }

    async fn set_status(
        &self,
        user: &IamUserName,
        key: &AccessKeyId,
        status: KeyStatus,
    ) -> PortResult<()> {
        self.call(|s| {
            let k = s
                .keys_of(user)?
                .iter_mut()
                .find(|k| k.id == key.as_str())
                .ok_or_else(|| {
                    PortError::new(PortErrorKind::NotFound, "The Access Key cannot be found.")
                })?;
            k.active = status == KeyStatus::Active;
            s.mutated();
            Ok(())
        })
        .await
    }

    async fn delete_key(&self, user: &IamUserName, key: &AccessKeyId) -> PortResult<()> {
        self.call(|s| {
            let keys = s.keys_of(user)?;
            let before = keys.len();
            keys.retain(|k| k.id != key.as_str());
            if keys.len() == before {
                return Err(PortError::new(
                    PortErrorKind::NotFound,
                    "The Access Key cannot be found.",
                ));
            }
            s.mutated();
            Ok(())
        })
        .await
    }

    async fn owner_of(&self, key: &AccessKeyId) -> PortResult<Option<KeyOwner>> {
        self.call(|s| {
            Ok(s.users.iter().find_map(|(user, keys)| {
                keys.iter()
                    .find(|k| k.id == key.as_str())
                    .map(|k| KeyOwner {
                        user: user.clone(),
                        created: Some(k.created),
                        last_used: k.used,
                    })
            }))
        })
        .await
    }
}

/// A fake version's id as the port hands it out (the fakes' ids are valid version ids).
fn fake_version_id(raw: &str) -> SecretVersionId {
    SecretVersionId::parse(raw).expect("fake version ids parse")
}

fn no_secret(name: &SecretName) -> PortError {
    PortError::new(
        PortErrorKind::NotFound,
        format!("Secrets Manager can't find the specified secret {name}."),
    )
}

#[async_trait]
impl SecretStore for Fakes {
    async fn versions(&self, name: &SecretName) -> PortResult<Option<Vec<SecretVersion>>> {
        self.call(|s| {
            Ok(s.secrets.get(name.as_str()).map(|vs| {
                vs.iter()
                    .filter(|v| !v.stages.is_empty())
                    .map(|v| SecretVersion {
                        id: fake_version_id(&v.id),
                        stages: v.stages.clone(),
                    })
                    .collect()
            }))
        })
        .await
    }

    async fn read(
        &self,
        name: &SecretName,
        stage: Stage,
    ) -> PortResult<Option<(SecretVersionId, SecretString)>> {
        self.call(|s| {
            Ok(s.secrets.get(name.as_str()).and_then(|vs| {
                vs.iter()
                    .find(|v| v.stages.iter().any(|l| l == stage.label()))
                    .map(|v| (fake_version_id(&v.id), SecretString::from(v.value.clone())))
            }))
        })
        .await
    }

    async fn read_version(
        &self,
        name: &SecretName,
        version: &SecretVersionId,
    ) -> PortResult<Option<SecretString>> {
        let version = version.as_str();
        self.call(|s| {
            Ok(s.secrets
                .get(name.as_str())
                .and_then(|vs| vs.iter().find(|v| v.id == version))
                .map(|v| SecretString::from(v.value.clone())))
        })
        .await
    }

    async fn create(&self, name: &SecretName, _description: &str) -> PortResult<()> {
        self.call(|s| {
            if !s.secrets.contains_key(name.as_str()) {
                s.secrets.insert(name.to_string(), Vec::new());
                s.mutated();
            }
            Ok(())
        })
        .await
    }

    async fn put(
        &self,
        name: &SecretName,
        token: &SecretVersionId,
        value: &SecretString,
        stage: Stage,
    ) -> PortResult<SecretVersionId> {
        let id = token.clone();
        let token = token.as_str();
        self.call(|s| {
            let vs = s
                .secrets
                .get_mut(name.as_str())
                .ok_or_else(|| no_secret(name))?;
            if let Some(v) = vs.iter().find(|v| v.id == token) {
                if v.value == value.expose_secret() {
                    return Ok(id);
                }
                return Err(PortError::new(
                    PortErrorKind::Invalid,
                    "You can't modify an existing version, you can only create a new version.",
                ));
            }
            for v in vs.iter_mut() {
                v.stages.retain(|l| l != stage.label());
            }
            let mut stages = vec![stage.label().to_owned()];
            // The first version of a secret gets AWSCURRENT too, whatever was asked.
            if stage != Stage::Current && vs.iter().all(|v| v.stages.is_empty()) {
                stages.push("AWSCURRENT".into());
            }
            vs.push(FakeVersion {
                id: token.into(),
                value: value.expose_secret().to_owned(),
                stages,
            });
            s.mutated();
            Ok(id)
        })
        .await
    }

    async fn move_stage(
        &self,
        name: &SecretName,
        stage: Stage,
        to: Option<&SecretVersionId>,
        from: Option<&SecretVersionId>,
    ) -> PortResult<()> {
        let (to, from) = (
            to.map(SecretVersionId::as_str),
            from.map(SecretVersionId::as_str),
        );
        self.call(|s| {
            let vs = s.secrets.get_mut(name.as_str()).ok_or_else(|| no_secret(name))?;
            let label = stage.label();
            let holder = vs.iter().find(|v| v.stages.iter().any(|l| l == label)).map(|v| v.id.clone());
            if to.is_some() && to == holder.as_deref() {
                return Ok(());
            }
            if let Some(f) = from {
                if holder.as_deref() != Some(f) {
                    return Err(PortError::new(PortErrorKind::Invalid, format!("The parameter RemoveFromVersionId can't be {f}: the label is not on it")));
                }
            } else if holder.is_some() && to.is_some() {
                return Err(PortError::new(PortErrorKind::Invalid, "The staging label is attached to another version: RemoveFromVersionId is required"));
            }
            if let Some(t) = to
                && !vs.iter().any(|v| v.id == t) {
                    return Err(PortError::new(PortErrorKind::NotFound, "version not found"));
                }
            for v in vs.iter_mut() {
                if Some(v.id.as_str()) == from {
                    v.stages.retain(|l| l != label);
                    if stage == Stage::Current && to.is_some() {
                        // Secrets Manager moves AWSPREVIOUS to the old AWSCURRENT itself.
                        v.stages.push("AWSPREVIOUS".into());
                    }
                }
            }
            if stage == Stage::Current && to.is_some() && from.is_some() {
                for v in vs.iter_mut() {
                    if Some(v.id.as_str()) != from {
                        v.stages.retain(|l| l != "AWSPREVIOUS");
                    }
                }
            }
            if let Some(t) = to
                && let Some(v) = vs.iter_mut().find(|v| v.id == t) {
                    v.stages.push(label.into());
                }
            s.mutated();
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Parameters for Fakes {
    async fn get_secure(&self, name: &str) -> PortResult<SecretString> {
        self.call(|s| {
            s.params
                .get(name)
                .map(|v| SecretString::from(v.clone()))
                .ok_or_else(|| {
                    PortError::new(
                        PortErrorKind::NotFound,
                        format!("parameter {name} does not exist"),
                    )
                })
        })
        .await
    }
}

#[async_trait]
impl CallerIdentity for Fakes {
    async fn caller_arn(&self, key: &AccessKeyId, secret: &SecretString) -> PortResult<Arn> {
        self.call(|s| {
            let now = s.now();
            let nowi = tokio::time::Instant::now();
            for (user, keys) in s.users.iter_mut() {
                if let Some(k) = keys.iter_mut().find(|k| k.id == key.as_str()) {
                    if k.active && k.secret == secret.expose_secret() && nowi >= k.valid_from {
                        k.used = Some(now);
                        return Ok(Arn::parse(&format!("arn:aws:iam::{ACCOUNT}:user/{user}"))
                            .expect("a user's ARN"));
                    }
                    break;
                }
            }
            Err(PortError::new(
                PortErrorKind::Unauthorized,
                "The security token included in the request is invalid.",
            ))
        })
        .await
    }
}

#[async_trait]
impl ServiceConnections for Fakes {
    async fn find(&self, org: &OrgUrl, r: &EndpointRef) -> PortResult<Endpoint> {
        self.call(|s| {
            s.ado_reads.find += 1;
            let matches: Vec<&FakeEndpoint> = s
                .endpoints
                .iter()
                .filter(|e| {
                    e.org == org.as_str() && e.projects.iter().any(|p| p == r.project.as_str())
                })
                .filter(|e| match &r.by {
                    EndpointSelector::Name(n) => &e.name == n,
                    EndpointSelector::Id(id) => e.id == id.as_str(),
                })
                .collect();
            match matches.as_slice() {
                [] => Err(PortError::new(
                    PortErrorKind::NotFound,
                    format!("no service connection {r} in {org}"),
                )),
                [e] => Ok(State::endpoint_view(e, org, &r.project)),
                _ => Err(PortError::new(
                    PortErrorKind::Invalid,
                    format!("{} service connections are named {r}", matches.len()),
                )),
            }
        })
        .await
    }

    async fn list_project(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
    ) -> PortResult<Option<Vec<Endpoint>>> {
        self.call(|s| {
            s.ado_reads.list_project += 1;
            Ok(Some(
                s.endpoints
                    .iter()
                    .filter(|e| {
                        e.org == org.as_str() && e.projects.iter().any(|p| p == project.as_str())
                    })
                    .map(|e| State::endpoint_view(e, org, project))
                    .collect(),
            ))
        })
        .await
    }

    async fn list_aws(&self, org: &OrgUrl) -> PortResult<Vec<AwsConnection>> {
        self.call(|s| {
            let projects: std::collections::BTreeSet<&str> = s
                .endpoints
                .iter()
                .filter(|e| e.org == org.as_str())
                .flat_map(|e| e.projects.iter().map(String::as_str))
                .collect();
            let n = projects.len() as u32;
            s.ado_reads.scans += 1;
            s.ado_reads.scan_requests += 1 + n;
            Ok(s.endpoints
                .iter()
                .filter(|e| e.org == org.as_str() && e.kind.eq_ignore_ascii_case("aws"))
                .map(|e| AwsConnection {
                    id: EndpointId::parse(&e.id).expect("fake endpoint ids parse"),
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    scheme: e.scheme.clone(),
                    projects: e.projects.clone(),
                    key_id: e
                        .username
                        .as_deref()
                        .and_then(|u| AccessKeyId::parse(u).ok()),
                    has_username: e.username.is_some(),
                    uses_oidc: e.oidc,
                    has_assume_role: e.oidc,
                    is_ready: true,
                })
                .collect())
        })
        .await
    }

    async fn get(&self, h: &EndpointHandle) -> PortResult<Option<Endpoint>> {
        self.call(|s| {
            s.ado_reads.get += 1;
            Ok(s.view_of(h))
        })
        .await
    }

    /// One call per project, counted as the real client sends it: one listing by
    /// `endpointIds` per [`IDS_PER_LISTING`] ids.
    async fn get_many(&self, handles: &[EndpointHandle]) -> PortResult<Vec<Option<Endpoint>>> {
        let mut out = vec![None; handles.len()];
        let mut groups: Vec<(&OrgUrl, &ProjectName, usize)> = Vec::new();
        for h in handles {
            match groups
                .iter_mut()
                .find(|(o, p, _)| *o == &h.org && *p == &h.project)
            {
                Some((_, _, n)) => *n += 1,
                None => groups.push((&h.org, &h.project, 1)),
            }
        }
        for (org, project, n) in groups {
            let read = self
                .call(|s| {
                    s.ado_reads.list_ids += n.div_ceil(IDS_PER_LISTING) as u32;
                    Ok(handles
                        .iter()
                        .map(|h| {
                            (&h.org == org && &h.project == project)
                                .then(|| s.view_of(h))
                                .flatten()
                        })
                        .collect::<Vec<_>>())
                })
                .await?;
            for (slot, e) in out.iter_mut().zip(read) {
                if e.is_some() {
                    *slot = e;
                }
            }
        }
        Ok(out)
    }

    async fn set_credentials_from(
        &self,
        read: &Endpoint,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        self.put(&read.handle, key, secret, false).await
    }

    async fn set_credentials(
        &self,
        h: &EndpointHandle,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        self.put(h, key, secret, true).await
    }
}

impl Fakes {
    /// A PUT of new credentials; `read_first`: `set_credentials`, which GETs right before.
    async fn put(
        &self,
        h: &EndpointHandle,
        key: &AccessKeyId,
        secret: &SecretString,
        read_first: bool,
    ) -> PortResult<()> {
        self.call(|s| {
            s.ado_reads.put += 1;
            if read_first {
                s.ado_reads.get_before_put += 1;
            }
            if let Some(Some(e)) = s.ado_put_script.pop_front() {
                return Err(e);
            }
            let e = s
                .endpoints
                .iter_mut()
                .find(|e| e.org == h.org.as_str() && e.id == h.id.as_str())
                .ok_or_else(|| PortError::new(PortErrorKind::NotFound, "endpoint not found"))?;
            e.username = Some(key.as_str().to_owned());
            e.password = Some(secret.expose_secret().to_owned());
            s.mutated();
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Notifier for Fakes {
    async fn notify(&self, report: &RunReport) -> PortResult<()> {
        self.state().notifications.push(report.clone());
        Ok(())
    }
}

#[async_trait]
impl Executions for Fakes {
    async fn status(&self, arn: &str) -> PortResult<ExecutionStatus> {
        self.call(|s| {
            if s.executions_refused {
                return Err(PortError::new(
                    PortErrorKind::Forbidden,
                    "Step Functions DescribeExecution: AccessDeniedException: not authorized to perform states:DescribeExecution",
                ));
            }
            s.describe_executions += 1;
            Ok(match s.executions.get(arn).map(String::as_str) {
                None => ExecutionStatus::Missing,
                Some("RUNNING") => ExecutionStatus::Running,
                Some(other) => ExecutionStatus::Ended(other.to_owned()),
            })
        })
        .await
    }
}

impl Clock for Fakes {
    fn now(&self) -> SystemTime {
        self.state().now()
    }
}

/// A ready-made scenario: one user with one key of a given age, held by `endpoints` AWS
/// connections, and a secret at AWSCURRENT holding it (keyrotor's JSON).
pub struct Scenario {
    /// The world.
    pub fakes: Fakes,
    /// The target.
    pub target: Target,
    /// The policy (propagation waits short, no grace).
    pub policy: Policy,
    /// The key the endpoints hold at the start.
    pub initial_key: (String, String),
}

/// The organization URL scenarios use.
pub const ORG: &str = "https://dev.azure.com/contoso";

impl Scenario {
    /// `endpoints` connections holding a 10-day-old key; the secret holds it as keyrotor's JSON.
    pub fn new(endpoints: usize) -> Self {
        let fakes = Fakes::new();
        let key = fakes.add_key("pipeline", Duration::from_secs(10 * 86400));
        let mut refs = Vec::new();
        for i in 0..endpoints {
            let name = format!("aws-{i}");
            fakes.add_endpoint(ORG, "Platform", &name, Some((&key.0, &key.1)));
            refs.push(EndpointRef {
                project: ProjectName::parse("Platform").unwrap(),
                by: EndpointSelector::Name(name),
            });
        }
        // Pipelines have been using the key (an hour ago, last).
        let created = {
            let mut st = fakes.state();
            let now = st.now();
            let k = &mut st.users.get_mut("pipeline").expect("just added")[0];
            k.used = Some(now - Duration::from_secs(3600));
            k.created
        };
        let json = keyrotor_core::secret_value::key_value(
            &AccessKeyId::parse(&key.0).unwrap(),
            &SecretString::from(key.1.clone()),
            "pipeline",
            created,
        );
        fakes.set_secret("pipeline-key", json.expose_secret());
        fakes.state().propagation = Duration::from_secs(8);
        let target = Target {
            name: keyrotor_core::domain::TargetName::parse("platform").unwrap(),
            iam_user: IamUserName::parse("pipeline").unwrap(),
            secret: SecretName::parse("pipeline-key").unwrap(),
            organization: OrgUrl::parse(ORG).unwrap(),
            endpoints: refs,
        };
        let policy = Policy {
            verify_interval: Duration::from_secs(2),
            // Retire and delete at once; the drain and the grace have tests of their own.
            drain: Duration::ZERO,
            delete_old_key_after: Duration::ZERO,
            ..Policy::default()
        };
        Self {
            fakes,
            target,
            policy,
            initial_key: key,
        }
    }

    /// The world as the invariants see it.
    pub fn world(&self) -> World {
        self.fakes.world("pipeline", "pipeline-key")
    }

    /// Another target in the same world, like the first: its own user (`pipeline-{n}`), secret
    /// (`pipeline-{n}-key`) and `endpoints` connections in project `project`, holding a
    /// 10-day-old key.
    pub fn add_target(&self, n: usize, project: &str, endpoints: usize) -> Target {
        let user = format!("pipeline-{n}");
        let secret = format!("{user}-key");
        let key = self.fakes.add_key(&user, Duration::from_secs(10 * 86400));
        let refs = (0..endpoints)
            .map(|i| {
                let name = format!("aws-{n}-{i}");
                self.fakes
                    .add_endpoint(ORG, project, &name, Some((&key.0, &key.1)));
                EndpointRef {
                    project: ProjectName::parse(project).unwrap(),
                    by: EndpointSelector::Name(name),
                }
            })
            .collect();
        let created = {
            let mut st = self.fakes.state();
            let now = st.now();
            let k = &mut st.users.get_mut(&user).expect("just added")[0];
            k.used = Some(now - Duration::from_secs(3600));
            k.created
        };
        let json = keyrotor_core::secret_value::key_value(
            &AccessKeyId::parse(&key.0).unwrap(),
            &SecretString::from(key.1.clone()),
            &user,
            created,
        );
        self.fakes.set_secret(&secret, json.expose_secret());
        Target {
            name: keyrotor_core::domain::TargetName::parse(&format!("t{n}")).unwrap(),
            iam_user: IamUserName::parse(&user).unwrap(),
            secret: SecretName::parse(&secret).unwrap(),
            organization: OrgUrl::parse(ORG).unwrap(),
            endpoints: refs,
        }
    }
}
