//! Test and benchmark helpers for tollgate.
//!
//! - [`MockUpstream`]: a fast HTTP/1.1 mock upstream (hyper 1, keep-alive, `TCP_NODELAY` on every
//!   accepted socket) that counts the calls it receives, so e2e tests can assert exact call counts
//!   and benchmarks can measure the gateway rather than the upstream. The binary
//!   `tollgate-mock-upstream` runs the same server from the command line.
//! - [`refused_addr`]: a loopback address with nothing listening, for "upstream down" tests.
//! - [`chain`] (feature `chain`): anvil and the x402 test token, for end-to-end payment tests.

#[cfg(feature = "chain")]
pub mod chain;
mod upstream;

pub use upstream::{refused_addr, MockBody, MockUpstream, MAX_RECORDED_PATHS};
