//! x402 for tollgate: wire types, header codec, route pricing, local verification of scheme
//! `exact` on EVM (EIP-3009), a payment store with single-flight settlement, on-chain settlement
//! via alloy, and a client for remote facilitators. No HTTP server lives here.
//!
//! # How the gateway uses it
//! At config load: deserialize a [`RoutePrice`] per priced route (`deny_unknown_fields`) and
//! [`RoutePrice::compile`] it into a [`PricedRoute`] (errors name the field path). Build one
//! [`PaymentGate`] from a [`SingleFlight`] over a [`PaymentStore`] (the gateway's durable one, or
//! [`InMemoryPaymentStore`]) and a [`Settler`]: [`EvmChain`] (settle locally from tollgate's own
//! account, [`ChainConfig`]) or [`FacilitatorClient`] (remote facilitator, [`FacilitatorConfig`]).
//!
//! Per request: [`PaymentGate::process`] with the raw `PAYMENT-SIGNATURE` / `X-PAYMENT` value. It
//! runs, in order:
//! 1. [`codec::decode_payment_header`] (absent → 402 challenge from
//!    [`PricedRoute::payment_required`], encoded by [`codec::encode_payment_required`]);
//! 2. [`verify::verify_exact`] against the route's own offers (pure, no IO, clock injected);
//! 3. [`SingleFlight::settle_once`]: one settlement per authorization, concurrent duplicates get
//!    its outcome; the settlement runs on its own task so a client disconnect cannot cut it short;
//! 4. a [`GateOutcome`] → status 200 / 402 / 202 / 503, plus the `PAYMENT-RESPONSE` header
//!    ([`GateOutcome::payment_response_header`]).
//!
//! Every refusal carries a stable [`Reason`] code; facilitator reason strings are mapped onto the
//! same codes ([`Reason::from_facilitator`]) with the original kept.

pub mod amount;
pub mod chain;
pub mod client;
pub mod codec;
pub mod facilitator;
pub mod gate;
pub mod network;
pub mod price;
pub mod reason;
pub mod settle;
pub mod store;
pub mod store_conformance;
pub mod verify;
pub mod wire;

/// The alloy version the wire types are built on (addresses, hashes, signers).
pub use alloy;
pub use amount::TokenAmount;
pub use chain::{ChainConfig, ChainError, EvmChain};
pub use codec::{decode_payment_header, DecodeError};
pub use facilitator::{FacilitatorClient, FacilitatorConfig, FacilitatorError};
pub use gate::{GateOutcome, PaymentGate, SettleJob, Settler};
pub use network::Network;
pub use price::{NetworkOffer, PricedRoute, RoutePrice};
pub use reason::Reason;
pub use settle::{FlightError, FlightOutcome, SettleFailure, SettleOutcome, SingleFlight};
pub use store::{InMemoryPaymentStore, PaymentKey, PaymentState, PaymentStore, Reservation};
pub use verify::{verify_exact, Clock, SystemClock, VerifiedPayment, VerifyError};
pub use wire::*;
