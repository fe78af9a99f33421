//! tollgate-client: an HTTP client that understands 402 Payment Required.
//!
//! [`PayingClient::send`] sends one logical request and deals with what comes back:
//!
//! - **x402 challenges** — v2 (`PAYMENT-REQUIRED` header) or v1 (body `accepts`): the cheapest
//!   offer that fits the [`SpendPolicy`] (max per payment, max per UTC day, allowed networks,
//!   allowed assets; known USDC deployments are allowed by default) is reserved in the
//!   [`SpendState`] (a JSON file shared by every process using it, so the daily budget survives
//!   restarts), signed as an EIP-3009 `TransferWithAuthorization` with the local key, and the
//!   request is retried **once** with `PAYMENT-SIGNATURE` (v2) or `X-PAYMENT` (v1). The
//!   server's `PAYMENT-RESPONSE` is decoded into [`Payment::settlement`]. A request is never
//!   paid twice: a second challenge after a payment is [`ClientError::PaymentRejected`]. When
//!   no offer fits, nothing is signed: [`ClientError::PolicyRefused`] lists why each offer
//!   was refused.
//! - **Quota-style contract 402s** (`QUOTA_EXCEEDED`, `SPENDING_CAP_REACHED`): never retried
//!   at once; waits 30 s, 60 s, 120 s (or `Retry-After` when larger), at most 3 retries
//!   ([`Backoff`]); a wait longer than `max_wait` (5 min) is not slept — the client gives up at
//!   once with [`ClientError::GaveUp`], saying when to come back and where to upgrade.
//! - **Codes a human must act on** (`INSUFFICIENT_FUNDS`, `PLAN_UPGRADE_REQUIRED`,
//!   `SUBSCRIPTION_INACTIVE`, `APPROVAL_PENDING`, `PREMIUM_MODEL_ACCESS_DENIED`, and any code
//!   it does not know): no retry; [`ClientError::HumanAction`] carries the remedy URL (`Link`
//!   header, body `remedy`, `details.top_up_url` / `upgrade_url`).
//! - **429**: waits `Retry-After` (or 1 s, 2 s, 4 s), within the same retry budget. A **503**
//!   after a payment (payment provider unavailable) is retried with the *same* payment.
//!
//! Time and waiting are injectable ([`PayingClient::clock`], [`PayingClient::sleeper`] with
//! [`RecordingSleeper`]) so tests never sleep for real.
//!
//! ```no_run
//! # async fn f() -> Result<(), tollgate_client::ClientError> {
//! use tollgate_client::{PayingClient, Request, SpendPolicy, SpendState};
//! let key: alloy::signers::local::PrivateKeySigner = std::env::var("TOLLGATE_PAY_KEY")
//!     .unwrap_or_default().parse().map_err(|_| tollgate_client::ClientError::NoKey)?;
//! let client = PayingClient::new(SpendPolicy::default())?
//!     .signer(key)
//!     .state(SpendState::file("spend.json"));
//! let resp = client.send(&Request::get("https://api.example.com/premium")).await?;
//! if let Some(p) = &resp.payment {
//!     println!("paid {} on {} in {:?}", p.amount, p.network, p.tx());
//! }
//! # Ok(()) }
//! ```
//!
//! With feature `paid-server`, [`paid_server`] serves a priced resource behind a
//! [`tollgate_x402::PaymentGate`] (tests and the x402 benchmark).

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
#[cfg(test)]
mod flow_tests;
#[cfg(any(test, feature = "paid-server"))]
pub mod paid_server;
pub mod policy;
pub mod problem;
pub mod retry;
pub mod state;

pub use client::{exit, ClientError, PayingClient, Payment, Request, Response};
pub use policy::{Offer, OfferRefusal, RefusedOffer, SpendPolicy};
pub use problem::{CodeClass, ContractError, Refusal, X402Challenge};
pub use retry::{Backoff, RecordingSleeper, Sleeper, TokioSleeper};
pub use state::{PaymentStatus, SpendState, StateError};
