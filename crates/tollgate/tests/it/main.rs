//! End-to-end tests: each spawns the real `tollgate` binary against a mock upstream that
//! counts its calls.

// Test helpers outside #[test] functions may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_input;
mod crash;
mod demo;
mod harness;
mod money;
mod ops;
mod pay;
mod policy;
mod x402;
