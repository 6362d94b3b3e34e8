//! Reads of Azure DevOps shared between the targets of one run (the CLI's
//! [`engine::run`](crate::engine::run)), so that a fleet spends Azure DevOps' request budget on
//! what each target needs alone (its PUT, its read-back) and not on the same listing again.
//!
//! [`SharedReads`] wraps the run's [`ServiceConnections`] and shares three reads, each only where
//! a shared answer is as safe as a fresh one:
//!
//! - **inspect's lookups by name (or id)**: one listing of a project's connections serves the
//!   `find` of every target of that project for [`SharedReads::MAX_AGE`]. Inspect only reads; what
//!   it reads is re-read by every step that acts (push reads each connection by id right before
//!   its PUT and skips or refuses there, confirm reads them back, retire scans the organization).
//!   A name the listing does not show (a connection created since) is looked up on its own.
//! - **the organization-wide holder scan** ([`ServiceConnections::list_aws_since`]): a scan
//!   serves a caller only if it *started* after the moment the caller names (retire: when
//!   confirm saw every connection of the target on the new key) and is at most
//!   [`SharedReads::MAX_AGE`] old. In a batch, every confirm ends before the retire step
//!   begins, so one scan made during that step serves all of its retires. Such a scan saw every change made before the target's
//!   connections left the old key, as the caller's own scan would have; it misses only what
//!   changes between its start and the caller's action, which a scan of the caller's own misses
//!   for the time of its requests too. Callers that need a scan of their own (compensation, push,
//!   cleanup) call `list_aws`, which is never shared.
//! - **push's and confirm's reads by id** ([`ServiceConnections::get_many`]): the engine moves a
//!   batch of targets through each step together and says, as a step begins, which connections
//!   its targets will read ([`SharedReads::begin_step`]). The first read of the step reads them
//!   all (one listing per project, by `endpointIds`) and serves every target of the step while it
//!   is at most [`SharedReads::MAX_AGE`] old; a target whose connections the read does not show,
//!   or that asks later, gets a new read of its own connections and of every connection still to
//!   be read. Every such read was made after the step began, so after every PUT of the batch's
//!   push (confirm reads back what push wrote) — the same guarantee a read of the target's own
//!   gives. For push, the read is the object each PUT sends back, and what bounds its age is the
//!   adapter's, at the PUT itself: a read older than [`MAX_READ_AGE`](crate::ports::MAX_READ_AGE)
//!   when the PUT would go out (served late, or held back by the rate limit) is read again first
//!   ([`ServiceConnections::set_credentials_from`]), so a change a person made meanwhile is PUT
//!   back as they made it, or refused. Outside a step's group (compensation, the report, a step
//!   no batch announced) every read goes straight through.
//!
//! Everything else (GET by id, PUTs) goes straight through.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::Mutex;

use crate::domain::{AccessKeyId, EndpointRef, EndpointSelector, OrgUrl, ProjectName};
use crate::ports::{
    AwsConnection, Clock, Endpoint, EndpointHandle, PortResult, ServiceConnections,
};

type ProjectKey = (String, String);
/// A read and when it was made (for a scan: when it started).
type Dated<T> = (SystemTime, Arc<Vec<T>>);

/// The run's [`ServiceConnections`], with the reads that may be shared between its targets
/// shared (see the module docs).
pub struct SharedReads {
    inner: Arc<dyn ServiceConnections>,
    clock: Arc<dyn Clock>,
    /// Per (organization, project): when the listing was read, and what it held. One lock for
    /// all: a target waits for a listing another target is reading instead of reading it too.
    projects: Mutex<HashMap<ProjectKey, Dated<Endpoint>>>,
    /// Per organization: when the last holder scan started, and what it found.
    scans: Mutex<HashMap<String, Dated<AwsConnection>>>,
    /// The reads by id of the step the engine runs now (see [`SharedReads::begin_step`]).
    step: Mutex<StepReads>,
}

/// The connections a step's targets will read by id, and what has been read of them.
#[derive(Default)]
struct StepReads {
    /// When the step began (`None`: no step announced).
    began: Option<SystemTime>,
    /// Announced and not read yet.
    expected: Vec<EndpointHandle>,
    /// Read since the step began: by lower-cased id, when the read was made and what it held
    /// (`None`: the service no longer knows the id).
    read: HashMap<String, (SystemTime, Option<Endpoint>)>,
}

fn id_key(h: &EndpointHandle) -> String {
    h.id.as_str().to_ascii_lowercase()
}

impl SharedReads {
    /// How long a shared read serves: long enough for a burst of targets, short enough that
    /// inspect's view is no older than the time one target's own steps take (IAM propagation
    /// alone is 5–20 s).
    pub const MAX_AGE: Duration = crate::ports::MAX_READ_AGE;

    /// Wraps `inner`; `clock` dates the reads.
    pub fn new(inner: Arc<dyn ServiceConnections>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            clock,
            projects: Mutex::new(HashMap::new()),
            scans: Mutex::new(HashMap::new()),
            step: Mutex::new(StepReads::default()),
        }
    }

    /// A step begins for a group of targets, which will read `expected` by id (empty: the step
    /// reads nothing by id, or its reads are not to be shared). Forgets every read of the step
    /// before.
    pub async fn begin_step(&self, expected: Vec<EndpointHandle>) {
        let mut scans = self.scans.lock().await;
        scans.clear();
        *self.step.lock().await = StepReads {
            began: Some(self.clock.now()),
            expected,
            read: HashMap::new(),
        };
    }

    fn fresh(&self, read_at: SystemTime) -> bool {
        self.clock
            .now()
            .duration_since(read_at)
            .is_ok_and(|age| age <= Self::MAX_AGE)
    }

    /// A holder scan of `org` of its own, kept in `scans` with the moment it started.
    async fn scan(
        &self,
        scans: &mut HashMap<String, Dated<AwsConnection>>,
        org: &OrgUrl,
    ) -> PortResult<Vec<AwsConnection>> {
        let started = self.clock.now();
        let all = self.inner.list_aws(org).await?;
        scans.insert(org.as_str().to_owned(), (started, Arc::new(all.clone())));
        Ok(all)
    }

    /// The project's connections, from a listing at most `MAX_AGE` old; `None` when the adapter
    /// cannot list a project.
    async fn project(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
    ) -> PortResult<Option<Arc<Vec<Endpoint>>>> {
        let key = (
            org.as_str().to_owned(),
            project.as_str().to_ascii_lowercase(),
        );
        let mut cache = self.projects.lock().await;
        if let Some((at, list)) = cache.get(&key)
            && self.fresh(*at)
        {
            return Ok(Some(list.clone()));
        }
        let at = self.clock.now();
        let Some(list) = self.inner.list_project(org, project).await? else {
            return Ok(None);
        };
        let list = Arc::new(list);
        cache.insert(key, (at, list.clone()));
        Ok(Some(list))
    }
}

#[async_trait]
impl ServiceConnections for SharedReads {
    async fn find(&self, org: &OrgUrl, r: &EndpointRef) -> PortResult<Endpoint> {
        if let Some(list) = self.project(org, &r.project).await? {
            let matches: Vec<&Endpoint> = list
                .iter()
                .filter(|e| match &r.by {
                    EndpointSelector::Name(n) => e.name.eq_ignore_ascii_case(n),
                    EndpointSelector::Id(id) => {
                        e.handle.id.as_str().eq_ignore_ascii_case(id.as_str())
                    }
                })
                .collect();
            if let [one] = matches.as_slice() {
                return Ok((*one).clone());
            }
        }
        // Not in the listing (created since, or named otherwise in this project), or more than
        // one: the lookup of its own says which, exactly as without sharing.
        self.inner.find(org, r).await
    }

    async fn get(&self, handle: &EndpointHandle) -> PortResult<Option<Endpoint>> {
        self.inner.get(handle).await
    }

    async fn get_many(&self, handles: &[EndpointHandle]) -> PortResult<Vec<Option<Endpoint>>> {
        // The lock is held through the read: a target waits for the read in flight and is
        // served by it instead of reading beside it.
        let mut step = self.step.lock().await;
        if step.expected.is_empty() && step.read.is_empty() {
            drop(step);
            return self.inner.get_many(handles).await;
        }
        let served = |step: &StepReads| -> Option<Vec<Option<Endpoint>>> {
            handles
                .iter()
                .map(|h| match step.read.get(&id_key(h)) {
                    Some((at, e)) if self.fresh(*at) => Some(e.clone()),
                    _ => None,
                })
                .collect()
        };
        if let Some(out) = served(&step) {
            return Ok(out);
        }
        // This target's connections, and every one announced and not read yet, in one read.
        let mut want: Vec<EndpointHandle> = handles.to_vec();
        for h in std::mem::take(&mut step.expected) {
            if !want.iter().any(|w| id_key(w) == id_key(&h)) {
                want.push(h);
            }
        }
        let at = self.clock.now();
        let got = match self.inner.get_many(&want).await {
            Ok(got) => got,
            Err(e) => {
                // Still to be read, by the next target that asks.
                step.expected = want;
                return Err(e);
            }
        };
        for (h, e) in want.iter().zip(got) {
            step.read.insert(id_key(h), (at, e));
        }
        Ok(handles
            .iter()
            .map(|h| step.read.get(&id_key(h)).and_then(|(_, e)| e.clone()))
            .collect())
    }

    async fn list_project(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
    ) -> PortResult<Option<Vec<Endpoint>>> {
        self.inner.list_project(org, project).await
    }

    async fn list_aws(&self, org: &OrgUrl) -> PortResult<Vec<AwsConnection>> {
        // The lock is held through the scan: a caller that may share one waits for the scan in
        // flight and then decides, instead of starting its own beside it.
        let mut scans = self.scans.lock().await;
        self.scan(&mut scans, org).await
    }

    async fn list_aws_since(
        &self,
        org: &OrgUrl,
        since: SystemTime,
    ) -> PortResult<Vec<AwsConnection>> {
        let began = self.step.lock().await.began;
        let mut scans = self.scans.lock().await;
        // A scan serves if it started after `since`, or if it was made during the step now
        // running (the map is emptied as each step begins) and `since` is no later than the
        // step's beginning: the caller's moment is then from an earlier step of the batch (steps
        // only move forward), which ended before this step began and so before the scan started
        // — even when the clock did not move in between.
        if let Some((started, all)) = scans.get(org.as_str())
            && (*started > since || began.is_some_and(|b| since <= b))
            && self.fresh(*started)
        {
            return Ok(all.as_ref().clone());
        }
        self.scan(&mut scans, org).await
    }

    async fn set_credentials(
        &self,
        handle: &EndpointHandle,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        self.inner.set_credentials(handle, key, secret).await
    }

    async fn set_credentials_from(
        &self,
        read: &Endpoint,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        self.inner.set_credentials_from(read, key, secret).await
    }

    async fn authenticated_as(&self, org: &OrgUrl) -> PortResult<Option<String>> {
        self.inner.authenticated_as(org).await
    }
}
