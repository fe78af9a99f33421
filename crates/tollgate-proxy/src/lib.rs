//! The hot path of tollgate: route table, pipeline, upstream calls, payment gate.

// `Reject` is the cold path; boxing it would add an allocation to every refusal for nothing.
#![allow(clippy::result_large_err)]

pub mod body;
pub mod connpool;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod respond;
pub mod server;
pub mod snapshot;
pub mod x402;

pub use pipeline::Gateway;
pub use snapshot::Snapshot;
