//! Integration tests of tollgate-x402 (one test binary, per the engineering guide).
//!
//! The `e2e` module runs against a real local chain: anvil and Circle's FiatTokenV2_2 from
//! `tools/x402-e2e` (install with `tools/x402-e2e/setup.sh`). Missing tools make these tests
//! FAIL, never skip.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod e2e;
mod facilitator;
mod harness;
mod interop;
