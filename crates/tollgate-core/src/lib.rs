//! Pure domain of tollgate: money, the error-code table, configuration, plans and billing
//! periods. No IO lives here; every other crate builds on these types.

pub mod config;
pub mod error;
pub mod money;
pub mod period;

pub use error::{ErrorBody, ErrorCode};
pub use money::Money;
