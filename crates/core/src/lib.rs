//! # keyrotor-core
//!
//! The heart of keyrotor: the domain, the configuration, the planner and the rotation protocol,
//! written against ports (traits) so that the same code runs in the CLI, in Lambda, and against
//! in-memory fakes in tests. No SDK in here.
//!
//! # Layout
//!
//! - [`domain`]: values built only by parsing (`AccessKeyId`, `IamUserName`, `OrgUrl`, …).
//! - [`config`]: the TOML file, parsed once into those values; errors name file, line, field.
//! - [`ports`]: what the protocol needs from IAM, Secrets Manager, SSM, STS, Azure DevOps, Slack.
//! - [`secret_value`]: the JSON keyrotor keeps in the secret, intent records, legacy values.
//! - [`plan`]: `plan(snapshot, policy, now, run, force)`, a pure function.
//! - [`protocol`]: one function per step, each re-reading the real state it acts on.
//! - [`machine`]: the one state machine (state, transition, recovery, report) both drivers run.
//! - [`engine`]: the CLI's loop over the machine for many targets.
//! - [`report`]: what a run did; exit codes.
//! - [`invariants`]: the seven invariants, checked by tests over a view of the world.
//! - [`secrets`]: resolves `ssm:`, `secretsmanager:` and `env:` references.
//! - [`oidc`], [`oidc_plan`], [`oidc_ports`]: `keyrotor migrate-oidc` (trust policies, the plan,
//!   the migration record, and the ports it needs besides the rotation's).

#![warn(missing_docs)]

pub mod config;
pub mod domain;
pub mod engine;
pub mod invariants;
pub mod liveness;
pub mod machine;
pub mod oidc;
pub mod oidc_plan;
pub mod oidc_ports;
pub mod plan;
pub mod ports;
pub mod protocol;
pub mod report;
pub mod secret_value;
pub mod secrets;
pub mod shared;
