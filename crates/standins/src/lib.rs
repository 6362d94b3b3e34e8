//! # keyrotor-standins
//!
//! Local stand-ins for the services keyrotor talks to, for `keyrotor sandbox`, the tests and
//! the benchmarks.
//!
//! This crate is separate from `keyrotor-testkit` because the `keyrotor` binary ships it:
//! `keyrotor sandbox` starts these stand-ins, so they are a normal dependency of the product.
//! Code only tests need (the in-memory fakes, the fault-injecting AWS proxy, the Lambda Runtime
//! API stand-in) stays in `keyrotor-testkit`, which the shipped binaries never depend on.
//!
//! # Layout
//!
//! - [`moto`]: installs (once, pinned, in a virtualenv) and starts moto in server mode on a
//!   free loopback port; stops it when dropped, or when the process that started it dies.
//! - [`ado`]: an emulator of Azure DevOps' service-endpoint API (library and `ado-emulator`).
//! - [`slack`]: a Slack incoming-webhook sink (library and `slack-sink`).
//! - [`aws_seed`]: seeds moto: a user whose key a secret keeps, parameters.
//! - [`names`]: the organization, user, secret and parameter names the worlds start from.
//! - [`pipeline`]: what a pipeline job on an OIDC connection does with STS (for `migrate-oidc`).
//!
//! The `keyrotor-tools install-moto` binary installs moto ahead of time (`scripts/test`).

#![warn(missing_docs)]

/// The fault-injection methods of a stand-in (`inject`, `faults`, `clear_faults`), for an
/// `impl` whose `self.shared.lock()` holds the faults as `faults: Vec<$fault>`, tried in the
/// order they were added. The Azure DevOps emulator and the test kit's AWS proxy share them.
#[macro_export]
macro_rules! fault_accessors {
    ($fault:ty) => {
        /// Adds a fault (faults are tried in the order they were added: the first that applies
        /// to a request wins).
        pub fn inject(&self, fault: $fault) {
            self.shared.lock().faults.push(fault);
        }

        /// The faults that can still hit (not expired yet).
        pub fn faults(&self) -> Vec<$fault> {
            self.shared.lock().faults.clone()
        }

        /// Removes every fault.
        pub fn clear_faults(&self) {
            self.shared.lock().faults.clear();
        }
    };
}

pub mod ado;
pub mod aws_seed;
pub mod moto;
pub mod names;
pub mod pipeline;
pub mod slack;
