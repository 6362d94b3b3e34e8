//! What the emulator starts with: organizations, their PATs, projects, service connections,
//! pipeline permissions and execution history, and an optional rate limit. Read from JSON
//! (the `ado-emulator --seed FILE` format) or built in Rust.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The emulator's starting state.
///
/// ```json
/// {
///   "organizations": [{
///     "name": "contoso",
///     "pats": [{"token": "manage-pat", "scope": "manage"}, {"token": "read-pat", "scope": "read"}],
///     "projects": [{"name": "Platform"}, {"name": "Web", "id": "6f1c…"}],
///     "endpoints": [{"id": "…", "name": "aws-prod", "type": "AWS", "url": "https://aws.amazon.com/",
///                    "authorization": {"scheme": "UsernamePassword",
///                                      "parameters": {"username": "AKIA…", "password": "…"}},
///                    "serviceEndpointProjectReferences": [{"projectReference": {"name": "Platform"},
///                                                          "name": "aws-prod"}]}],
///     "pipelinePermissions": {"<endpoint id>": {"pipelines": [{"id": 7, "authorized": true}]}},
///     "executionHistory": {"<endpoint id>": [{"data": {"id": 1}, "endpointId": "<endpoint id>"}]}
///   }],
///   "rateLimit": {"limit": 200, "windowSeconds": 300, "costPerRequest": 1}
/// }
/// ```
///
/// Endpoints are stored exactly as given, except that an endpoint without an `id` gets a
/// fresh one and a `projectReference` naming a project only by name (or only by id) gets the
/// other half filled in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// The organizations, each reached at `{base}/{name}`.
    #[serde(default)]
    pub organizations: Vec<OrgSeed>,
    /// Throttling like Azure DevOps' global rate limit; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl Seed {
    /// An empty seed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a seed from JSON (a leading UTF-8 byte order mark is ignored).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text.trim_start_matches('\u{feff}')).context("parsing the seed JSON")
    }

    /// Adds an organization.
    pub fn org(mut self, org: OrgSeed) -> Self {
        self.organizations.push(org);
        self
    }

    /// Turns rate limiting on.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }
}

/// One organization.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrgSeed {
    /// Its name: the first path segment of its URL.
    pub name: String,
    /// Its id (a GUID, `instanceId` of `connectionData`); derived from the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The PATs it accepts.
    #[serde(default)]
    pub pats: Vec<PatSeed>,
    /// Its projects.
    #[serde(default)]
    pub projects: Vec<ProjectSeed>,
    /// Its service connections, as `ServiceEndpoint` JSON objects (passwords included).
    #[serde(default)]
    pub endpoints: Vec<Value>,
    /// Pipeline permissions by endpoint id (the body `pipelinepermissions` answers).
    #[serde(default)]
    pub pipeline_permissions: BTreeMap<String, Value>,
    /// Execution records by endpoint id.
    #[serde(default)]
    pub execution_history: BTreeMap<String, Vec<Value>>,
}

impl OrgSeed {
    /// An organization with nothing in it.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Gives it this id (a GUID) instead of the one derived from its name.
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// Accepts a PAT with this scope.
    pub fn pat(mut self, token: &str, scope: Scope) -> Self {
        self.pats.push(PatSeed {
            token: token.to_owned(),
            scope,
            identity: None,
        });
        self
    }

    /// Adds a project (its id is generated).
    pub fn project(mut self, name: &str) -> Self {
        self.projects.push(ProjectSeed {
            name: name.to_owned(),
            id: None,
            description: None,
        });
        self
    }

    /// Adds a project with a fixed id.
    pub fn project_with_id(mut self, name: &str, id: &str) -> Self {
        self.projects.push(ProjectSeed {
            name: name.to_owned(),
            id: Some(id.to_owned()),
            description: None,
        });
        self
    }

    /// Adds a service connection (a `ServiceEndpoint` JSON object).
    pub fn endpoint(mut self, endpoint: Value) -> Self {
        self.endpoints.push(endpoint);
        self
    }

    /// Sets the pipeline permissions of an endpoint.
    pub fn pipeline_permissions(mut self, endpoint_id: &str, permissions: Value) -> Self {
        self.pipeline_permissions
            .insert(endpoint_id.to_owned(), permissions);
        self
    }

    /// Sets the execution history of an endpoint.
    pub fn execution_history(mut self, endpoint_id: &str, records: Vec<Value>) -> Self {
        self.execution_history
            .insert(endpoint_id.to_owned(), records);
        self
    }
}

/// A personal access token an organization accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatSeed {
    /// The token itself.
    pub token: String,
    /// What it may do.
    #[serde(default)]
    pub scope: Scope,
    /// The identity it belongs to (rate limits count per identity); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A PAT's scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `vso.serviceendpoint_manage`: read, query and manage.
    #[default]
    Manage,
    /// `vso.serviceendpoint`: read only; every write is refused with 401 (TF400813).
    Read,
}

/// A project.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSeed {
    /// Its name.
    pub name: String,
    /// Its id (a GUID); generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Azure DevOps' global rate limit: `limit` TSTUs per sliding window per identity. Past the
/// limit requests are delayed (answered normally, with `X-RateLimit-Delay`,
/// `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset`, the epoch second at which usage would be
/// back at zero if the identity stopped now); at `block_at` TSTUs they are refused with 429,
/// `TF400733` and `Retry-After` (seconds until the oldest counted request leaves the window).
/// Refused requests are not counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// TSTUs per window before requests are delayed (Azure DevOps: 200).
    #[serde(default = "RateLimit::default_limit")]
    pub limit: u32,
    /// The sliding window (Azure DevOps: 300 s).
    #[serde(default = "RateLimit::default_window")]
    pub window_seconds: u64,
    /// What one request costs.
    #[serde(default = "RateLimit::default_cost")]
    pub cost_per_request: u32,
    /// Usage at which requests are refused; twice `limit` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_at: Option<u32>,
    /// How long a delayed request is held.
    #[serde(default)]
    pub delay_ms: u64,
}

impl RateLimit {
    fn default_limit() -> u32 {
        200
    }
    fn default_window() -> u64 {
        300
    }
    fn default_cost() -> u32 {
        1
    }

    /// Usage at which requests are refused.
    pub fn block_threshold(&self) -> u32 {
        self.block_at.unwrap_or(self.limit.saturating_mul(2))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            limit: Self::default_limit(),
            window_seconds: Self::default_window(),
            cost_per_request: Self::default_cost(),
            block_at: None,
            delay_ms: 0,
        }
    }
}

/// An AWS service connection as the AWS Toolkit for Azure DevOps creates it, shared into
/// `projects` under its own name, holding `key_id` / `secret`. Add an `"id"` to fix its id.
pub fn aws_endpoint(name: &str, key_id: &str, secret: &str, projects: &[&str]) -> Value {
    let references: Vec<Value> = projects
        .iter()
        .map(|p| json!({"projectReference": {"name": p}, "name": name, "description": ""}))
        .collect();
    json!({
        "name": name,
        "type": "AWS",
        "url": "https://aws.amazon.com/",
        "description": "",
        "owner": "library",
        "isShared": projects.len() > 1,
        "isReady": true,
        "data": {},
        "authorization": {
            "scheme": "UsernamePassword",
            "parameters": {
                "username": key_id,
                "password": secret,
                "assumeRoleArn": "",
                "externalId": "",
                "roleSessionName": "",
                "sessionToken": ""
            }
        },
        "serviceEndpointProjectReferences": references
    })
}
