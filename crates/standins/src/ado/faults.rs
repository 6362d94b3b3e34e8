//! Injected faults: an answer (or a delay) the emulator gives instead of the real one, for
//! one operation, a given number of times.

use serde::{Deserialize, Serialize};

/// The operations of the API, as faults and the request log name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `GET {org}/{project}/_apis/serviceendpoint/endpoints`.
    List,
    /// `GET {org}/{project}/_apis/serviceendpoint/endpoints/{id}`.
    Get,
    /// `PUT {org}/_apis/serviceendpoint/endpoints/{id}`.
    Put,
    /// `POST {org}/_apis/serviceendpoint/endpoints`.
    Post,
    /// `DELETE {org}/_apis/serviceendpoint/endpoints/{id}`.
    Delete,
    /// `PATCH {org}/_apis/serviceendpoint/endpoints/{id}` (share).
    Patch,
    /// `GET {org}/_apis/projects`.
    Projects,
    /// `GET {org}/_apis/connectionData`: who the PAT authenticates as, and the organization's
    /// id (for OIDC).
    ConnectionData,
    /// `GET {org}/{project}/_apis/serviceendpoint/{id}/executionhistory`.
    History,
    /// `GET {org}/{project}/_apis/pipelines/pipelinepermissions/endpoint/{id}`.
    PermissionsGet,
    /// `PATCH {org}/{project}/_apis/pipelines/pipelinepermissions/endpoint/{id}`.
    PermissionsPatch,
    /// Any of the above (only as a fault's target).
    Any,
}

impl Op {
    /// Whether the operation changes something (needs the manage scope).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Put | Self::Post | Self::Delete | Self::Patch | Self::PermissionsPatch
        )
    }
}

/// What to do instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// The operation it hits.
    pub op: Op,
    /// Only in this organization (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The status to answer; absent: after the delay, answer normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A `Retry-After` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Hold the request this long first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The body to answer; absent: what the service would send with that status (a JSON
    /// error, or the HTML sign-in page for 203).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body's `Content-Type` (JSON when the body parses as JSON, else text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// How many requests it hits before it expires.
    #[serde(default = "one")]
    pub times: u32,
    /// Hits every request and never expires (`times` is ignored).
    #[serde(default)]
    pub forever: bool,
}

fn one() -> u32 {
    1
}

impl Fault {
    /// Answers `status` to the next request of `op`.
    pub fn status(op: Op, status: u16) -> Self {
        Self {
            op,
            org: None,
            status: Some(status),
            retry_after: None,
            delay_ms: None,
            body: None,
            content_type: None,
            times: 1,
            forever: false,
        }
    }

    /// Holds the next request of `op` for `ms` milliseconds, then answers normally.
    pub fn delay(op: Op, ms: u64) -> Self {
        Self {
            status: None,
            delay_ms: Some(ms),
            ..Self::status(op, 200)
        }
    }

    /// Answers like a bad PAT without `X-TFS-FedAuthRedirect: Suppress`: 203 and the HTML
    /// sign-in page.
    pub fn sign_in_page(op: Op) -> Self {
        Self::status(op, 203)
    }

    /// Hits `n` requests.
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    /// Never expires.
    pub fn forever(mut self) -> Self {
        self.forever = true;
        self
    }

    /// Adds `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Holds the request `ms` milliseconds before answering.
    pub fn delayed(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    /// Answers this body with this content type.
    pub fn body(mut self, content_type: &str, body: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.body = Some(body.to_owned());
        self
    }

    /// Only in this organization.
    pub fn in_org(mut self, org: &str) -> Self {
        self.org = Some(org.to_owned());
        self
    }

    pub(crate) fn hits(&self, op: Op, org: &str) -> bool {
        (self.op == Op::Any || self.op == op)
            && self
                .org
                .as_deref()
                .is_none_or(|o| o.eq_ignore_ascii_case(org))
            && (self.forever || self.times > 0)
    }
}
