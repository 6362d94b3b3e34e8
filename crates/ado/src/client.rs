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

use crate::endpoint;
use crate::transport::{Answer, Transport};

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

    /// The raw object behind a handle; `None` when the service answers `null`.
    pub(crate) async fn get_raw(&self, handle: &EndpointHandle) -> PortResult<Option<Value>> {
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
        match self.get_json(&url).await?.body {
            Value::Null => Ok(None),
            v @ Value::Object(_) => Ok(Some(v)),
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
        let items = endpoint::list_items(self.get_json(&url).await?.body)?;
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
            [one] => endpoint::to_endpoint(one, org, project),
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
                    Some(v) => endpoint::to_endpoint(&v, org, &r.project),
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
            .map(|v| endpoint::to_endpoint(&v, &handle.org, &handle.project))
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
        let items = endpoint::list_items(self.get_json(&url).await?.body)?;
        items
            .iter()
            .map(|v| endpoint::to_endpoint(v, org, project))
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
        let Some(object) = self.get_raw(handle).await? else {
            return Err(PortError::new(
                PortErrorKind::NotFound,
                format!(
                    "service connection {} no longer exists in project '{}' of {}",
                    handle.id, handle.project, handle.org
                ),
            ));
        };
        self.put_with_key(handle, object, key, secret).await
    }

    /// The connection just read, PUT back with the new key. The read the caller made (push's
    /// listing, filtered by `endpointIds`, right after this run's ownership was re-checked) is
    /// the read right before the PUT: reading it again would cost a request per connection and
    /// narrow the window for a concurrent edit by no more than the time between two requests of
    /// one loop. Without the object (another adapter's read), it is read again here.
    async fn set_credentials_from(
        &self,
        read: &Endpoint,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        match &read.raw {
            Some(object) => {
                self.put_with_key(&read.handle, (**object).clone(), key, secret)
                    .await
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
                if let Some(v) = items
                    .iter()
                    .find(|v| endpoint::id_of(v).is_ok_and(|id| id.eq_ignore_ascii_case(wanted)))
                {
                    out[i] = Some(endpoint::to_endpoint(v, org, project)?);
                }
            }
        }
        Ok(out)
    }
}

impl AdoClient {
    /// `GET {org}/{project}/_apis/serviceendpoint/endpoints?endpointIds=a,b,…`: the connections
    /// of one project with these ids, in one request (an unknown id is left out of the answer).
    async fn list_by_ids(
        &self,
        org: &OrgUrl,
        project: &ProjectName,
        ids: &[&str],
    ) -> PortResult<Vec<Value>> {
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
            items.extend(endpoint::list_items(self.get_json(&url).await?.body)?);
        }
        Ok(items)
    }

    /// PUTs `object` back to its own id — the update in place: same id, so pipeline
    /// authorizations, approvals and checks stay. `scrub` is kept out of errors. Returns the
    /// answer and whether it names the same id.
    pub(crate) async fn put_in_place(
        &self,
        handle: &EndpointHandle,
        object: Value,
        scrub: &[&str],
    ) -> PortResult<(Value, bool)> {
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
        let answer = self
            .transport
            .send(Method::PUT, &url, Some(&body), scrub)
            .await?;
        let same_id = endpoint::id_of(&answer.body)
            .is_ok_and(|id| id.eq_ignore_ascii_case(handle.id.as_str()));
        Ok((answer.body, same_id))
    }

    /// PUTs `object` (as read) back with the new key: the update in place.
    async fn put_with_key(
        &self,
        handle: &EndpointHandle,
        mut object: Value,
        key: &AccessKeyId,
        secret: &SecretString,
    ) -> PortResult<()> {
        let current = endpoint::to_endpoint(&object, &handle.org, &handle.project)?;
        if let Some(reason) = current.unrotatable_reason() {
            return Err(PortError::new(PortErrorKind::Refused, reason));
        }
        // The new key, and `sessionToken: ""`: a stale token must not outlive the old key.
        endpoint::put_credentials(&mut object, key, secret)?;
        let (answer, same_id) = self
            .put_in_place(handle, object, &[secret.expose_secret()])
            .await?;
        let holds_key = endpoint::parameter(&answer, "username") == Some(key.as_str());
        if !same_id || !holds_key {
            return Err(PortError::new(
                PortErrorKind::Failed,
                format!(
                    "Azure DevOps accepted the update of service connection '{}' but its answer \
                     does not show it holding {key} under id {}",
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
        Ok(())
    }
}
