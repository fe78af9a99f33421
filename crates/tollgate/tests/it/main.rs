//! End-to-end tests: each spawns the real `tollgate` binary against a mock upstream that
//! counts its calls.

mod bad_input;
mod crash;
mod demo;
mod harness;
mod money;
mod ops;
mod policy;
