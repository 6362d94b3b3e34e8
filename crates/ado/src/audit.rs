//! Every AWS service connection of an organization: `keyrotor audit`, and the holder scan that
//! comes before a key is deactivated or deleted (retire, make room, compensation).
//!
//! The scan is one listing of the projects, then one listing of connections per project. Those
//! go [`SCAN_CONCURRENCY`] at a time through the client, and so through its pacing: with a few
//! hundred projects the scan takes `P / 16` round trips instead of `P`, which keeps it inside a
//! Lambda step's 60 s (300 projects at 150 ms a request: about 3 s instead of 45 s), while the
//! rate limit still holds all of them back alike (when throttled, they go one at a time) and the
//! client's `deadline` bounds every one of them. The answer does not depend on the order the
//! listings come back in: they are taken in the order of the projects, and the result is
//! sorted.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt};
use keyrotor_core::domain::{AccessKeyId, EndpointId, OrgUrl};
use keyrotor_core::ports::{PortError, PortErrorKind, PortResult};
use serde_json::Value;

use crate::client::{AdoClient, api_url};
use crate::endpoint::{self, parameter, str_at};

/// A project of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoProject {
    /// Its id (a GUID).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// One AWS service connection, as the audit reports it.
pub use keyrotor_core::ports::AwsConnection as AuditEndpoint;

/// Guards against a server that keeps answering a continuation token.
const MAX_PAGES: usize = 1000;

/// How many projects' connections the holder scan lists at once. Azure DevOps counts TSTUs, not
/// concurrent requests, so concurrency costs no budget; 16 keeps a scan of 300 projects near
/// 19 round trips without opening more connections than a browser would.
pub const SCAN_CONCURRENCY: usize = 16;

impl AdoClient {
    /// The organization's projects (`GET {org}/_apis/projects`, following continuation
    /// tokens).
    pub async fn list_projects(&self, org: &OrgUrl) -> PortResult<Vec<AdoProject>> {
        let mut projects = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("$top", "100")];
            if let Some(t) = &token {
                query.push(("continuationToken", t.as_str()));
            }
            let url = api_url(org, &["_apis", "projects"], &query)?;
            let answer = self.get_json(&url).await?;
            for p in endpoint::list_items(answer.body)? {
                let (Some(id), Some(name)) = (str_at(&p, "/id"), str_at(&p, "/name")) else {
                    continue;
                };
                projects.push(AdoProject {
                    id: id.to_owned(),
                    name: name.to_owned(),
                });
            }
            match answer.continuation {
                Some(next) if token.as_deref() != Some(next.as_str()) => token = Some(next),
                _ => return Ok(projects),
            }
        }
        Err(PortError::new(
            PortErrorKind::Failed,
            format!("listing the projects of {org} did not end after {MAX_PAGES} pages"),
        ))
    }

    /// Every service connection of type AWS (compared case-insensitively) in every project of
    /// the organization, each listed once with every project it was found in; sorted by name.
    pub async fn list_aws_endpoints(&self, org: &OrgUrl) -> PortResult<Vec<AuditEndpoint>> {
        let projects = self.list_projects(org).await?;
        // `buffered` keeps the projects' order whatever order the answers come in; the first
        // error ends the scan (the listings still in flight are dropped).
        let mut listings = stream::iter(projects)
            .map(move |project| async move {
                // No `type=` filter: the service may compare it case-sensitively, and some
                // clients store `aws`.
                let url = api_url(
                    org,
                    &[&project.id, "_apis", "serviceendpoint", "endpoints"],
                    &[("includeFailed", "true"), ("includeDetails", "true")],
                )?;
                let items = endpoint::list_items(self.get_json(&url).await?.body)?;
                Ok::<_, PortError>((project, items))
            })
            .buffered(SCAN_CONCURRENCY);
        let mut found: BTreeMap<String, AuditEndpoint> = BTreeMap::new();
        while let Some(listing) = listings.next().await {
            let (project, items) = listing?;
            for e in items.iter().filter(|e| is_aws(e)) {
                let Ok(id) = endpoint::endpoint_id(e) else {
                    continue;
                };
                let entry = found
                    .entry(id.as_str().to_ascii_lowercase())
                    .or_insert_with(|| audit_entry(e, id));
                if !entry.projects.contains(&project.name) {
                    entry.projects.push(project.name.clone());
                }
            }
        }
        let mut list: Vec<AuditEndpoint> = found.into_values().collect();
        list.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(list)
    }
}

fn is_aws(e: &Value) -> bool {
    str_at(e, "/type").is_some_and(|t| t.eq_ignore_ascii_case("aws"))
}

fn audit_entry(e: &Value, id: EndpointId) -> AuditEndpoint {
    let username = parameter(e, "username");
    AuditEndpoint {
        id,
        name: str_at(e, "/name").unwrap_or_default().to_owned(),
        kind: str_at(e, "/type").unwrap_or_default().to_owned(),
        scheme: str_at(e, "/authorization/scheme")
            .unwrap_or_default()
            .to_owned(),
        projects: Vec::new(),
        key_id: username.and_then(|u| AccessKeyId::parse(u).ok()),
        has_username: username.is_some(),
        uses_oidc: endpoint::uses_oidc(e),
        has_assume_role: parameter(e, "assumeRoleArn").is_some(),
        is_ready: e.get("isReady").and_then(Value::as_bool).unwrap_or(false),
    }
}
