//! [`AdoClient`]: the [`ServiceConnections`] port over Azure DevOps' REST API.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use keyrotor_core::domain::{AccessKeyId, EndpointRef, EndpointSelector, OrgUrl, ProjectName};
use keyrotor_core::ports::{
    Endpoint, EndpointHandle, PortError, PortErrorKind, PortResult, ServiceConnections,
};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;

use crate::endpoint;
use crate::transport::{Answer, Sent, Transport};

/// How often one update reads its connection again because the rate limit held its PUT back
/// past [`AdoOptions::max_read_age`], before it gives up (retryable): each read again waits
/// its turn too.
const MAX_REREADS: u32 = 3;

/// A connection object as read, and when the request that read it went out.
pub(crate) type Read = (Value, Instant);

/// The REST API version every request names.
pub const API_VERSION: &str = "7.1";

/// Timeouts, retry bounds and rate-limit bounds. The defaults suit the real service and the CLI;
/// tests shrink them, and a Lambda step sets [`deadline`](Self::deadline).
///
/// Failures (5xx, 408, timeouts, dropped connections) and refusals for the rate limit (429)
/// are bounded separately, so that waiting for the rate limit never uses up the retries of
/// real failures (see the crate docs, "Rate limit").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoOptions {
    /// One attempt, from connecting to the last byte of the answer.
    pub request_timeout: Duration,
    /// Establishing a connection.
    pub connect_timeout: Duration,
    /// Attempts per request, the first included, counting failures (5xx, 408, timeouts,
    /// connection failures); refusals for the rate limit count against
    /// [`max_rate_limited_attempts`](Self::max_rate_limited_attempts) instead.
    pub max_attempts: u32,
    /// The first backoff after a failure; it doubles after every failed attempt.
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_cap: Duration,
    /// The longest `Retry-After` honoured, and the longest pause for the rate limit (a longer
    /// one is shortened to this). Azure DevOps' window is 300 s; the default is 310 s.
    pub max_retry_after: Duration,
    /// No retry of a failure starts once this much time has gone by since the first attempt,
    /// not counting time held back by the rate limit.
    pub max_total: Duration,
    /// Attempts per request that Azure DevOps may refuse for its rate limit (429) before the
    /// request gives up; each refusal is waited out in full first.
    pub max_rate_limited_attempts: u32,
    /// The longest one request waits, in all, for the rate limit (its own refusals and the
    /// pauses other requests' answers set). A pause that would end past it is not started:
    /// the request fails at once as retryable.
    pub rate_limit_max_wait: Duration,
    /// Nothing this client does runs past this instant: no wait (rate limit or backoff) is
    /// started that would end after it, and an attempt's timeout is shortened to it. For a
    /// Lambda invocation: its deadline less a margin. `None`: no deadline.
    pub deadline: Option<SystemTime>,
    /// The oldest a read of a connection may be when the PUT that sends it back goes out (after
    /// any wait for the rate limit or a retry): an older one is read again first, so that what
    /// a person changed meanwhile is not reverted. The default is the core's
    /// [`MAX_READ_AGE`](keyrotor_core::ports::MAX_READ_AGE) (10 s).
    pub max_read_age: Duration,
}

impl Default for AdoOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(310),
            max_total: Duration::from_secs(120),
            max_rate_limited_attempts: 5,
            rate_limit_max_wait: Duration::from_secs(15 * 60),
            deadline: None,
            max_read_age: keyrotor_core::ports::MAX_READ_AGE,
        }
    }
}

/// An Azure DevOps client authenticated with one PAT (scope: Service Connections, read, query
/// and manage). It updates service connections in place and never deletes or creates one.
pub struct AdoClient {
    pub(crate) transport: Transport,
}

impl fmt::Debug for AdoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdoClient")
            .field("pat", &"[redacted]")
            .field("options", &self.transport.options)
            .finish()
    }
}

impl AdoClient {
    /// A client with the default [`AdoOptions`].
    pub fn new(pat: SecretString) -> PortResult<Self> {
        Self::with_options(pat, AdoOptions::default())
    }

    /// A client with these options.
    pub fn with_options(pat: SecretString, options: AdoOptions) -> PortResult<Self> {
        if pat.expose_secret().trim().is_empty() {
            return Err(PortError::new(
                PortErrorKind::Invalid,
                "the Azure DevOps PAT is empty",
            ));
        }
        Ok(Self {
            transport: Transport::new(pat, options)?,
        })
    }

    /// The options in force.
    pub fn options(&self) -> &AdoOptions {
        &self.transport.options
    }

    /// How much longer this client holds every request back for Azure DevOps' rate limit;
    /// `None` when a request would be sent at once. Shared by every request of the client.
    pub fn rate_limit_pause(&self) -> Option<Duration> {
        self.transport.pacer.pause_left()
    }

    pub(crate) async fn get_json(&self, url: &Url) -> PortResult<Answer> {
        self.transport.send(Method::GET, url, None, &[]).await
    }

    /// The raw object behind a handle, and when its request went out; `None` when the service
    /// answers `null`.
    pub(crate) async fn get_raw(&self, handle: &EndpointHandle) -> PortResult<Option<Read>> {
        let url = api_url(
            &handle.org,
            &[
                handle.project.as_str(),
                "_apis",
                "serviceendpoint",
                "endpoints",
                handle.id.as_str(),
            ],
            &[],
        )?;
        let answer = self.get_json(&url).await?;
        match answer.body {
            Value::Null => Ok(None),
            v @ Value::Object(_) => Ok(Some((v, answer.sent))),
            _ => Err(PortError::new(
                PortErrorKind::Failed,
                format!(
                    "Azure DevOps answered service connection {} with something that is not an object",
                    handle.id
                ),
            )),
        }
    }

    async fn find_by_name(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
        name: &str,
    ) -> PortResult<Endpoint> {
        let url = api_url(
            org,
            &[project.as_str(), "_apis", "serviceendpoint", "endpoints"],
            &[
                ("endpointNames", name),
                // A connection whose last operation failed is still the one configured: find
                // it and report `isReady = false` rather than "not found".
                ("includeFailed", "true"),
                ("includeDetails", "true"),
            ],
        )?;
        let answer = self.get_json(&url).await?;
        let sent = answer.sent;
        let items = endpoint::list_items(answer.body)?;
        // The service filters by name already; filtering again guards against a filter it
        // ignored, which would otherwise hand back every connection of the project.
        let matches: Vec<Value> = items
            .into_iter()
            .filter(|e| endpoint::is_named(e, name))
            .collect();
        match matches.as_slice() {
            [] => Err(PortError::new(
                PortErrorKind::NotFound,
                format!("no service connection named '{name}' in project '{project}' of {org}"),
            )),
            [one] => endpoint::to_endpoint(one, org, project, sent),
            many => Err(PortError::new(
                PortErrorKind::Invalid,
                format!(
                    "{} service connections are named '{name}' in project '{project}' of {org}: \
                     name it by id instead",
                    many.len()
                ),
            )),
        }
    }
}

/// `{org}/{segments…}?{query…}&api-version=7.1`, each segment and value percent-encoded.
pub(crate) fn api_url(org: &OrgUrl, segments: &[&str], query: &[(&str, &str)]) -> PortResult<Url> {
    let bad = || {
        PortError::new(
            PortErrorKind::Invalid,
            format!("'{org}' cannot be used as an Azure DevOps organization URL"),
        )
    };
    let mut url = Url::parse(org.as_str()).map_err(|_| bad())?;
    url.path_segments_mut()
        .map_err(|_| bad())?
        .pop_if_empty()
        .extend(segments);
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query {
            pairs.append_pair(k, v);
        }
        pairs.append_pair("api-version", API_VERSION);
    }
    Ok(url)
}

#[async_trait]
impl ServiceConnections for AdoClient {
    async fn find(&self, org: &OrgUrl, r: &EndpointRef) -> PortResult<Endpoint> {
        match &r.by {
            EndpointSelector::Name(name) => self.find_by_name(org, &r.project, name).await,
            EndpointSelector::Id(id) => {
                let handle = EndpointHandle {
                    org: org.clone(),
                    project: r.project.clone(),
                    id: id.clone(),
                };
                match self.get_raw(&handle).await? {
                    Some((v, sent)) => endpoint::to_endpoint(&v, org, &r.project, sent),
                    None => Err(PortError::new(
                        PortErrorKind::NotFound,
                        format!(
                            "no service connection with id {id} in project '{}' of {org}",
                            r.project
                        ),
                    )),
                }
            }
        }
    }

    async fn get(&self, handle: &EndpointHandle) -> PortResult<Option<Endpoint>> {
        self.get_raw(handle)
            .await?
            .map(|(v, sent)| endpoint::to_endpoint(&v, &handle.org, &handle.project, sent))
            .transpose()
    }

    /// One listing of the project, every type (a connection of another type must still be
    /// found, to be refused by name), failed ones included.
    async fn list_project(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
    ) -> PortResult<Option<Vec<Endpoint>>> {
        let url = api_url(
            org,
            &[project.as_str(), "_apis", "serviceendpoint", "endpoints"],
            &[("includeFailed", "true"), ("includeDetails", "true")],
        )?;
        let answer = self.get_json(&url).await?;
        let sent = answer.sent;
        let items = endpoint::list_items(answer.body)?;
        items
            .iter()
            .map(|v| endpoint::to_endpoint(v, org, project, sent))
            .collect::<PortResult<Vec<_>>>()
            .map(Some)
    }

    async fn list_aws(&self, org: &OrgUrl) -> PortResult<Vec<keyrotor_core::ports::AwsConnection>> {
        self.list_aws_endpoints(org).await
    }

    /// `GET {org}/_apis/connectionData`: the user the PAT authenticates as (no scope needed).
    /// A refused PAT is `Unauthorized` (the transport asks for a 401 instead of a sign-in page).
    async fn authenticated_as(&self, org: &OrgUrl) -> PortResult<Option<String>> {
        let mut url = api_url(org, &["_apis", "connectionData"], &[])?;
        // A preview resource on the real service: `-preview` is accepted wherever it is not
        // required.
        url.set_query(Some(&format!("api-version={API_VERSION}-preview")));
        let body = self.get_json(&url).await?.body;
        let user = &body["authenticatedUser"];
        let name = ["providerDisplayName", "customDisplayName"]
            .iter()
            .find_map(|k| user[*k].as_str().filter(|s| !s.trim().is_empty()));
        match name {
            Some(n) => Ok(Some(n.to_owned())),
            None => Err(PortError::new(
                PortErrorKind::Unauthorized,
                format!(
                    "{org} answered connectionData without an authenticated user: the PAT was not accepted"
                ),
            )),
        }
    }

    async fn set_credentials(
        &self,
        handle: &EndpointHandle,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        let read = self.get_raw(handle).await?.ok_or_else(|| gone(handle))?;
        self.put_with_key(handle, read, key, secret).await
    }

    /// The connection just read, PUT back with the new key. The read the caller made (push's
    /// listing, filtered by `endpointIds`, right after this run's ownership was re-checked) is
    /// the read right before the PUT, as long as it is at most `max_read_age` old when the PUT
    /// goes out: reading it again every time would cost a request per connection and narrow the
    /// window for a concurrent edit by no more than the time between two requests of one loop.
    /// Past that (the rate limit held the PUT back), it is read again (`put_with_key`). Without
    /// the object (another adapter's read), it is read again here.
    async fn set_credentials_from(
        &self,
        read: &Endpoint,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        match &read.raw {
            Some(raw) => {
                let read_at = (raw.object.clone(), Instant::from_std(raw.sent));
                self.put_with_key(&read.handle, read_at, key, secret).await
            }
            None => self.set_credentials(&read.handle, key, secret).await,
        }
    }

    /// One listing per project, filtered by `endpointIds`, for all the handles of that project.
    async fn get_many(&self, handles: &[EndpointHandle]) -> PortResult<Vec<Option<Endpoint>>> {
        let mut out: Vec<Option<Endpoint>> = vec![None; handles.len()];
        let mut groups: Vec<(&OrgUrl, &ProjectName, Vec<usize>)> = Vec::new();
        for (i, h) in handles.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(o, p, _)| *o == &h.org && *p == &h.project)
            {
                Some((_, _, ix)) => ix.push(i),
                None => groups.push((&h.org, &h.project, vec![i])),
            }
        }
        for (org, project, ix) in groups {
            let ids: Vec<&str> = ix.iter().map(|&i| handles[i].id.as_str()).collect();
            let items = self.list_by_ids(org, project, &ids).await?;
            for &i in &ix {
                // The service filters by id already; matching again guards against a filter it
                // ignored.
                let wanted = handles[i].id.as_str();
                if let Some((v, sent)) = items.iter().find(|(v, _)| {
                    endpoint::id_of(v).is_ok_and(|id| id.eq_ignore_ascii_case(wanted))
                }) {
                    out[i] = Some(endpoint::to_endpoint(v, org, project, *sent)?);
                }
            }
        }
        Ok(out)
    }
}

impl AdoClient {
    /// `GET {org}/{project}/_apis/serviceendpoint/endpoints?endpointIds=a,b,…`: the connections
    /// of one project with these ids, in one request (an unknown id is left out of the answer);
    /// each with when its request went out.
    async fn list_by_ids(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
        ids: &[&str],
    ) -> PortResult<Vec<Read>> {
        let mut items = Vec::new();
        for chunk in ids.chunks(keyrotor_core::ports::IDS_PER_LISTING) {
            let joined = chunk.join(",");
            let url = api_url(
                org,
                &[project.as_str(), "_apis", "serviceendpoint", "endpoints"],
                &[
                    ("endpointIds", joined.as_str()),
                    ("includeFailed", "true"),
                    ("includeDetails", "true"),
                ],
            )?;
            let answer = self.get_json(&url).await?;
            let sent = answer.sent;
            items.extend(
                endpoint::list_items(answer.body)?
                    .into_iter()
                    .map(|v| (v, sent)),
            );
        }
        Ok(items)
    }

    /// PUTs `object` back to its own id — the update in place: same id, so pipeline
    /// authorizations, approvals and checks stay. `scrub` is kept out of errors. `read_at` is
    /// when the read `object` was made from went out: the PUT is not sent once that is more than
    /// `max_read_age` ago (`None`: the caller reads again). Otherwise returns the answer and
    /// whether it names the same id.
    pub(crate) async fn put_in_place(
        &self,
        handle: &EndpointHandle,
        object: Value,
        scrub: &[&str],
        read_at: Instant,
    ) -> PortResult<Option<(Value, bool)>> {
        let body = serde_json::to_vec(&object).map_err(|_| {
            PortError::new(
                PortErrorKind::Failed,
                "could not encode the service connection",
            )
        })?;
        drop(object);
        let url = api_url(
            &handle.org,
            &["_apis", "serviceendpoint", "endpoints", handle.id.as_str()],
            &[],
        )?;
        let fresh_until = read_at + self.transport.options.max_read_age;
        let answer = match self
            .transport
            .send_while_fresh(Method::PUT, &url, &body, scrub, fresh_until)
            .await?
        {
            Sent::Answered(answer) => answer,
            Sent::Stale => return Ok(None),
        };
        let same_id = endpoint::id_of(&answer.body)
            .is_ok_and(|id| id.eq_ignore_ascii_case(handle.id.as_str()));
        Ok(Some((answer.body, same_id)))
    }

    /// Reads the connection again because its PUT, made from a read taken `read_at`, could not
    /// go out within `max_read_age` of it (the rate limit, or a retry, held it back); `rereads`
    /// counts these
    /// for one update, which gives up (retryable) after [`MAX_REREADS`].
    pub(crate) async fn read_again(
        &self,
        handle: &EndpointHandle,
        name: &str,
        read_at: Instant,
        rereads: &mut u32,
    ) -> PortResult<Read> {
        let age = read_at.elapsed();
        *rereads += 1;
        if *rereads > MAX_REREADS {
            return Err(PortError::new(
                PortErrorKind::Retryable,
                format!(
                    "the update of service connection '{name}' was not sent: {MAX_REREADS} times \
                     the rate limit held it back until the connection it had read was over {} s \
                     old",
                    self.transport.options.max_read_age.as_secs_f64()
                ),
            ));
        }
        tracing::info!(
            connection = %name,
            id = %handle.id,
            age_ms = age.as_millis() as u64,
            "the update of service connection '{name}' would go out {:.1} s after it was read \
             (held back by the rate limit, or a retry): reading it again, so as not to undo a \
             change made meanwhile",
            age.as_secs_f64()
        );
        self.get_raw(handle).await?.ok_or_else(|| gone(handle))
    }

    /// PUTs the connection as read (`read`) back with the new key: the update in place. The
    /// object sent is at most `max_read_age` old when the PUT goes out: past that it is read
    /// again, and what the new read shows decides. It may have the new key already (another run
    /// put it, or a PUT that seemed to fail went through): done, nothing sent. It may no longer
    /// be rotatable (switched to OIDC, another scheme or type), or hold another key than the read
    /// the caller decided on: refused, nothing sent, the person's change left as it is.
    /// Otherwise its new state, a new description included, goes back with the new key.
    async fn put_with_key(
        &self,
        handle: &EndpointHandle,
        read: Read,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        let (mut object, mut read_at) = read;
        let held = endpoint::parameter(&object, "username").map(str::to_owned);
        let mut rereads = 0u32;
        loop {
            let current = endpoint::to_endpoint(&object, &handle.org, &handle.project, read_at)?;
            if let Some(reason) = current.unrotatable_reason() {
                return Err(PortError::new(PortErrorKind::Refused, reason));
            }
            if rereads > 0 {
                if current.username.as_deref() == Some(key.as_str()) {
                    tracing::info!(
                        connection = %current.name,
                        id = %handle.id,
                        key = %key,
                        "service connection already holds the new key: nothing to send"
                    );
                    return Ok(());
                }
                if current.username != held {
                    return Err(PortError::new(
                        PortErrorKind::Refused,
                        format!(
                            "service connection '{}' changed while its update waited for the \
                             rate limit: it holds {} now, not {}; it is left as it is",
                            current.name,
                            holding(current.username.as_deref()),
                            holding(held.as_deref())
                        ),
                    ));
                }
            }
            // The new key, and `sessionToken: ""`: a stale token must not outlive the old key.
            endpoint::put_credentials(&mut object, key, secret)?;
            let Some((answer, same_id)) = self
                .put_in_place(handle, object, &[secret.expose_secret()], read_at)
                .await?
            else {
                (object, read_at) = self
                    .read_again(handle, &current.name, read_at, &mut rereads)
                    .await?;
                continue;
            };
            let holds_key = endpoint::parameter(&answer, "username") == Some(key.as_str());
            if !same_id || !holds_key {
                return Err(PortError::new(
                    PortErrorKind::Failed,
                    format!(
                        "Azure DevOps accepted the update of service connection '{}' but its \
                         answer does not show it holding {key} under id {}",
                        current.name, handle.id
                    ),
                ));
            }
            tracing::info!(
                connection = %current.name,
                id = %handle.id,
                key = %key,
                "service connection updated in place"
            );
            return Ok(());
        }
    }
}

/// The error for a connection the service no longer knows (`null` for its id).
pub(crate) fn gone(handle: &EndpointHandle) -> PortError {
    PortError::new(
        PortErrorKind::NotFound,
        format!(
            "service connection {} no longer exists in project '{}' of {}",
            handle.id, handle.project, handle.org
        ),
    )
}

/// What a connection's username says it holds, a key id masked.
fn holding(username: Option<&str>) -> String {
    match username {
        None => "no key".to_owned(),
        Some(u) => match AccessKeyId::parse(u) {
            Ok(k) => format!("key {}", k.masked()),
            Err(_) => "a username that is not a key id".to_owned(),
        },
    }
}
