//! # keyrotor-testkit
//!
//! Local stand-ins for keyrotor's tests, sandbox and benchmarks.
//!
//! # Layout
//!
//! - [`fakes`]: in-memory fakes of every port that enforce the real services' rules, with a
//!   tripwire that kills a run at any port call (crash tests).
//! - [`moto`]: installs (once, pinned, in a virtualenv) and starts moto in server mode on a
//!   free loopback port; stops it when dropped, or when the test process dies.
//! - [`ado`]: an emulator of Azure DevOps' service-endpoint API (library and `ado-emulator`).
//! - [`lambda_api`]: a minimal local Lambda Runtime API, to run the real `bootstrap`.
//! - [`slack`]: a Slack incoming-webhook sink (library and `slack-sink`).
//! - [`aws_seed`]: seeds moto as the tests start: a user whose key a secret keeps, parameters.
//! - [`aws_proxy`]: a fault-injecting proxy in front of moto (throttling, 5xx, slow, dropped).

#![warn(missing_docs)]

pub mod ado;
pub mod aws_proxy;
pub mod aws_seed;
pub mod env;
pub mod fakes;
pub mod lambda_api;
pub mod moto;
pub mod slack;
