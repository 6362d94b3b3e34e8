//! End-to-end tests of the `keyrotor` commands against moto (real AWS SDK calls) with the
//! in-memory Azure DevOps fake. One test binary; `spawn_env()` starts a fresh moto per test.

mod env;
mod rotate;
