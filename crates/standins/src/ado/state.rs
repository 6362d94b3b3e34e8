//! The emulator's world: organizations with their projects and service connections, stored
//! as the JSON objects clients sent (unknown fields kept, passwords included).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::seed::{PatSeed, Seed};

/// Authorization parameters the service never returns (it answers `null`). On a PUT, a
/// `null` for one of them (or its absence) keeps the stored value, as the web UI relies on;
/// `""` clears it (stored as `""`, still answered `null`); another string replaces it.
pub(crate) const CONFIDENTIAL: [&str; 2] = ["password", "sessionToken"];

/// Everything the emulator holds, passwords included (for assertions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmulatorState {
    /// Organizations by lower-case name.
    pub organizations: BTreeMap<String, OrgState>,
}

/// One organization.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgState {
    /// Its name as seeded.
    pub name: String,
    /// Its id (a GUID: `instanceId` of `connectionData`, the id in its OIDC issuer).
    #[serde(default)]
    pub id: String,
    /// Its projects.
    pub projects: Vec<Project>,
    /// Its service connections, exactly as stored (passwords included).
    pub endpoints: Vec<Value>,
    /// Pipeline permissions by lower-case endpoint id.
    pub pipeline_permissions: BTreeMap<String, Value>,
    /// Execution records by lower-case endpoint id.
    pub execution_history: BTreeMap<String, Vec<Value>>,
}

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Its id (a GUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl EmulatorState {
    /// An organization by name (case-insensitive).
    pub fn org(&self, name: &str) -> Option<&OrgState> {
        self.organizations.get(&name.to_lowercase())
    }

    /// A stored endpoint by organization and id, passwords included.
    pub fn endpoint(&self, org: &str, id: &str) -> Option<&Value> {
        self.org(org)?.endpoint(id)
    }

    /// Builds the world a seed describes, and the PATs of each organization.
    pub(crate) fn from_seed(seed: &Seed) -> Result<(Self, BTreeMap<String, Vec<PatSeed>>)> {
        let mut state = Self::default();
        let mut pats = BTreeMap::new();
        for org_seed in &seed.organizations {
            let key = org_seed.name.to_lowercase();
            ensure!(
                !org_seed.name.is_empty() && !org_seed.name.contains('/'),
                "organization name {:?} is not a URL path segment",
                org_seed.name
            );
            ensure!(
                !state.organizations.contains_key(&key) && key != "_emulator",
                "organization {:?} is seeded twice (or reserved)",
                org_seed.name
            );
            let mut org = OrgState {
                name: org_seed.name.clone(),
                id: org_seed.id.clone().unwrap_or_else(|| org_id_of(&key)),
                ..OrgState::default()
            };
            for p in &org_seed.projects {
                ensure!(
                    org.project(&p.name).is_none(),
                    "project {:?} is seeded twice in {:?}",
                    p.name,
                    org_seed.name
                );
                org.projects.push(Project {
                    id: p.id.clone().unwrap_or_else(new_id),
                    name: p.name.clone(),
                    description: p.description.clone(),
                });
            }
            for (i, raw) in org_seed.endpoints.iter().enumerate() {
                let ep = org
                    .seed_endpoint(raw)
                    .with_context(|| format!("endpoint #{i} of organization {:?}", org.name))?;
                org.endpoints.push(ep);
            }
            for (id, p) in &org_seed.pipeline_permissions {
                org.pipeline_permissions
                    .insert(id.to_lowercase(), p.clone());
            }
            for (id, h) in &org_seed.execution_history {
                org.execution_history.insert(id.to_lowercase(), h.clone());
            }
            pats.insert(key.clone(), org_seed.pats.clone());
            state.organizations.insert(key, org);
        }
        Ok((state, pats))
    }
}

impl OrgState {
    /// A project by name (case-insensitive) or id.
    pub fn project(&self, key: &str) -> Option<&Project> {
        self.projects
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(key) || p.id.eq_ignore_ascii_case(key))
    }

    /// A stored endpoint by id (case-insensitive), passwords included.
    pub fn endpoint(&self, id: &str) -> Option<&Value> {
        self.endpoints
            .iter()
            .find(|e| id_of(e).eq_ignore_ascii_case(id))
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| id_of(e).eq_ignore_ascii_case(id))
    }

    /// The project a `serviceEndpointProjectReferences` entry names (by id, else by name).
    pub(crate) fn project_of_reference(&self, reference: &Value) -> Option<&Project> {
        let pr = reference.get("projectReference")?;
        if let Some(id) = pr
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            return self.projects.iter().find(|p| p.id.eq_ignore_ascii_case(id));
        }
        let name = pr.get("name").and_then(Value::as_str)?;
        self.projects
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// Whether a `serviceEndpointProjectReferences` entry names `project`: what
    /// [`project_of_reference`](Self::project_of_reference) would find, without searching every
    /// project (project ids and names are unique in an organization), so that listing a project
    /// of an organization with hundreds of them does not cost a search of all of them per
    /// connection.
    fn refers_to(reference: &Value, project: &Project) -> bool {
        let Some(pr) = reference.get("projectReference") else {
            return false;
        };
        match pr
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            Some(id) => project.id.eq_ignore_ascii_case(id),
            None => pr
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| project.name.eq_ignore_ascii_case(n)),
        }
    }

    /// Whether an endpoint is shared into a project.
    pub(crate) fn is_in(&self, ep: &Value, project: &Project) -> bool {
        references(ep).iter().any(|r| Self::refers_to(r, project))
    }

    /// An endpoint's name in a project: its reference's `name` there, else its own `name`.
    pub(crate) fn name_in(&self, ep: &Value, project: &Project) -> String {
        references(ep)
            .iter()
            .filter(|r| Self::refers_to(r, project))
            .find_map(|r| {
                r.get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
            })
            .or_else(|| ep.get("name").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned()
    }

    /// Checks a seeded endpoint and fills in what the server would have assigned.
    fn seed_endpoint(&self, raw: &Value) -> Result<Value> {
        let mut ep = raw.clone();
        let Some(obj) = ep.as_object_mut() else {
            bail!("is not a JSON object");
        };
        match obj.get("id") {
            Some(Value::String(id)) => {
                ensure!(self.endpoint(id).is_none(), "id {id} is used twice");
            }
            None | Some(Value::Null) => {
                obj.insert("id".into(), json!(new_id()));
            }
            Some(_) => bail!("its id is not a string"),
        }
        let refs = obj
            .get_mut("serviceEndpointProjectReferences")
            .and_then(Value::as_array_mut)
            .filter(|r| !r.is_empty())
            .context("has no serviceEndpointProjectReferences: name the projects it is in")?;
        for r in refs.iter_mut() {
            let project = self
                .project_of_reference(r)
                .with_context(|| format!("reference {r} names no seeded project"))?
                .clone();
            if let Some(pr) = r.get_mut("projectReference").and_then(Value::as_object_mut) {
                pr.entry("id").or_insert_with(|| json!(project.id));
                pr.entry("name").or_insert_with(|| json!(project.name));
            }
        }
        Ok(ep)
    }
}

/// An endpoint's `id` ("" when it has none).
pub(crate) fn id_of(ep: &Value) -> &str {
    ep.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// An endpoint's `serviceEndpointProjectReferences` (empty when absent).
pub(crate) fn references(ep: &Value) -> &[Value] {
    ep.get("serviceEndpointProjectReferences")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The endpoint as the service answers it: confidential parameters `null`.
pub(crate) fn redacted(ep: &Value) -> Value {
    let mut out = ep.clone();
    if let Some(params) = out
        .pointer_mut("/authorization/parameters")
        .and_then(Value::as_object_mut)
    {
        for key in CONFIDENTIAL {
            if let Some(v) = params.get_mut(key) {
                *v = Value::Null;
            }
        }
    }
    out
}

/// A fixed GUID for an organization seeded without an id (the same name, the same id).
fn org_id_of(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let g = h.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        g & 0xfff,
        g >> 16
    )
}

/// A fresh GUID, as the server assigns.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
