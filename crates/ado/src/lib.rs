//! # keyrotor-ado
//!
//! Azure DevOps service-endpoint REST client: keyrotor's [`ServiceConnections`] adapter.
//!
//! [`AdoClient`] finds a service connection by name or id, reads it, and changes its AWS key
//! **in place**: it GETs the whole `ServiceEndpoint` object, sets
//! `authorization.parameters.username` and `.password` to the new key and `.sessionToken` to
//! `""`, and PUTs the object back to the same id
//! (`PUT {org}/_apis/serviceendpoint/endpoints/{id}?api-version=7.1`). Deleting and
//! re-creating would give a new id and drop every pipeline authorization, so it never does.
//!
//! The facts it relies on (`shared/ado/SERVICE-ENDPOINTS.md`): an unknown id answers 200 with
//! `null`; lists answer `{"count", "value"}`; confidential parameters (`password`,
//! `sessionToken`) always come back `null`; an explicit value sent back, `""` included,
//! replaces the stored one, while a `null` keeps it (what the web UI relies on; it is not
//! documented). So a key update does not send `sessionToken` back `null`, which would keep a
//! stale token beside the new key and make AWS refuse every call ("The security token included
//! in the request is invalid"), but `""`: an IAM user's key has no session token. Any other
//! confidential parameter goes back `null`, kept. A bad PAT can come back as a 203 HTML
//! sign-in page or a 302, so every request sends `X-TFS-FedAuthRedirect: Suppress` and any
//! non-JSON answer is an authentication failure.
//!
//! Errors are [`PortError`]s: 5xx, 408, timeouts and dropped connections are retried with
//! capped exponential backoff, 429 after its full `Retry-After`, and both become `Retryable`
//! when their bounds run out; 401 is `Unauthorized`, 403 `Forbidden`, 404 `NotFound`, other
//! 4xx `Invalid`. A message quotes only the service's own `message`, never a request body; the
//! PAT and the secret being written are scrubbed from it and key ids are masked.
//!
//! # Rate limit
//!
//! Azure DevOps allows a PAT 200 TSTUs per sliding five minutes, delays requests past that and
//! refuses them (429) further on. One client paces every request it sends with one shared
//! state (module `pacing`): after a 429 nobody sends before its `Retry-After`; after a delayed
//! answer (or `X-RateLimit-Remaining: 0`) nobody sends before `X-RateLimit-Reset`; and while
//! throttled, requests go one at a time. Waiting is bounded on its own
//! ([`AdoOptions::rate_limit_max_wait`], [`AdoOptions::max_rate_limited_attempts`],
//! [`AdoOptions::deadline`]) and never uses up the retries of real failures. A PUT sends back
//! an object read earlier, so it is checked once more as the pacing lets it go: a read older than
//! [`AdoOptions::max_read_age`] (10 s) by then is read again first, and a change made meanwhile
//! is sent back as it was made, or refused when it makes the connection one keyrotor must not
//! overwrite (switched to OIDC, another key).
//!
//! # Layout
//!
//! - `client`: [`AdoClient`], [`AdoOptions`] and the [`ServiceConnections`] implementation.
//! - `transport`: one request with the PAT, retries, and the mapping of answers to errors.
//! - `pacing`: the rate-limit pacing every request of a client shares, and its arithmetic.
//! - `endpoint`: the `ServiceEndpoint` JSON read into the core's `Endpoint`, and edited.
//! - `audit`: [`AdoClient::list_aws_endpoints`], every AWS connection of an organization (the
//!   holder scan), its per-project listings [`SCAN_CONCURRENCY`] at a time.
//! - `oidc`: `keyrotor migrate-oidc`'s side: the organization id, and a connection switched in
//!   place between its key and OIDC.
//!
//! [`ServiceConnections`]: keyrotor_core::ports::ServiceConnections
//! [`PortError`]: keyrotor_core::ports::PortError

#![warn(missing_docs)]

mod audit;
mod client;
mod endpoint;
mod oidc;
mod pacing;
mod transport;

pub use audit::{AdoProject, AuditEndpoint, SCAN_CONCURRENCY};
pub use client::{API_VERSION, AdoClient, AdoOptions};
