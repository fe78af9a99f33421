//! The payment gate in one call, framework-free: what the gateway's HTTP layer runs for a
//! priced route, settle-first.
//!
//! Stages, in order:
//! 1. no payment header → [`GateOutcome::PaymentRequired`] (the 402 challenge);
//! 2. [`decode_payment_header`] — malformed → 402 with the reason;
//! 3. [`verify_exact`] against the route's own offers (pure, ~tens of µs) → 402 with the reason;
//! 4. [`SingleFlight::settle_once`] with the configured [`Settler`] (local chain or remote
//!    facilitator): one settlement per authorization however many requests carry it;
//! 5. [`GateOutcome::Paid`] with the `PAYMENT-RESPONSE` to attach — serve the resource.
//!
//! Unknown outcomes (receipt timeout, facilitator timeout) are [`GateOutcome::Pending`], never a
//! fresh 402: answering them with a new challenge makes agents pay twice.

use std::sync::Arc;

use alloy::primitives::Address;
use async_trait::async_trait;

use crate::chain::EvmChain;
use crate::codec::{
    decode_payment_header, encode_payment_response, EncodeError, HEADER_PAYMENT_RESPONSE,
    HEADER_X_PAYMENT_RESPONSE,
};
use crate::facilitator::{FacilitatorClient, FacilitatorError};
use crate::price::PricedRoute;
use crate::reason::Reason;
use crate::settle::{FlightError, SettleFailure, SettleOutcome, SingleFlight};
use crate::verify::{
    verify_exact, verify_exact_terms_for_contract_wallet, Clock, PayerSignature, VerifiedPayment,
    VerifyError,
};
use crate::wire::{FacilitatorRequirements, PaymentPayload, PaymentRequired, SettleResponse};

/// Settles verified payments: the local chain ([`EvmChain`]) or a remote facilitator.
#[async_trait]
pub trait Settler: Send + Sync + 'static {
    /// Settles one payment (called at most once per authorization by the gate).
    async fn settle(&self, job: &SettleJob) -> Result<SettleOutcome, SettleFailure>;

    /// Whether this settler can check contract-wallet (ERC-1271) signatures; when false, a
    /// signature that does not recover to `from` is refused.
    fn supports_contract_signatures(&self) -> bool {
        false
    }

    /// Checks a contract-wallet signature (`job.verified.signature` is
    /// [`PayerSignature::Contract`]): true if the wallet accepts it.
    async fn verify_contract_signature(&self, _job: &SettleJob) -> Result<bool, SettleFailure> {
        Ok(false)
    }
}

/// Everything a [`Settler`] may need about one payment.
#[derive(Clone, Debug)]
pub struct SettleJob {
    /// The client's payment as decoded.
    pub payload: PaymentPayload,
    /// The result of local verification.
    pub verified: VerifiedPayment,
    /// The server's own requirement for the matched offer (what a facilitator must check).
    pub requirements: FacilitatorRequirements,
}

#[async_trait]
impl Settler for EvmChain {
    async fn settle(&self, job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
        EvmChain::settle(self, &job.verified)
            .await
            .map_err(Into::into)
    }

    fn supports_contract_signatures(&self) -> bool {
        true
    }

    async fn verify_contract_signature(&self, job: &SettleJob) -> Result<bool, SettleFailure> {
        let v = &job.verified;
        let PayerSignature::Contract(sig) = &v.signature else {
            return Ok(false);
        };
        self.is_valid_contract_signature(v.payer, v.digest, sig)
            .await
            .map_err(Into::into)
    }
}

#[async_trait]
impl Settler for FacilitatorClient {
    async fn settle(&self, job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
        FacilitatorClient::settle(self, &job.payload, &job.requirements)
            .await
            .map_err(Into::into)
    }

    fn supports_contract_signatures(&self) -> bool {
        true
    }

    /// The facilitator's `/verify` judges smart-wallet signatures (ERC-1271/6492) itself.
    async fn verify_contract_signature(&self, job: &SettleJob) -> Result<bool, SettleFailure> {
        match self.verify(&job.payload, &job.requirements).await {
            Ok(_) => Ok(true),
            Err(FacilitatorError::Rejected { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What the HTTP layer should answer.
#[derive(Clone, Debug, PartialEq)]
pub enum GateOutcome {
    /// Answer 402 with this challenge (base64 in `PAYMENT-REQUIRED`, JSON in the body,
    /// `Cache-Control: no-store`). `reason` is set when a payment was presented but refused.
    PaymentRequired {
        /// The challenge.
        challenge: PaymentRequired,
        /// Why the presented payment was refused (None: no payment was presented).
        reason: Option<Reason>,
        /// Diagnostic detail for logs (not for clients).
        detail: Option<String>,
        /// For a replay of an already-settled payment: the original settlement.
        original: Option<SettleResponse>,
    },
    /// Paid: serve the resource and attach `response` as `PAYMENT-RESPONSE`
    /// (`X-PAYMENT-RESPONSE` for v1, see [`GateOutcome::payment_response_header_name`]).
    Paid {
        /// The settlement result.
        response: SettleResponse,
        /// Payer.
        payer: Address,
        /// Protocol version of the payment.
        x402_version: u8,
    },
    /// The settlement was sent but its outcome is not known yet: answer 202/503 with
    /// `response` (it carries the transaction hash if known); never a new 402.
    Pending {
        /// The settlement result so far (`success: false`, `errorReason: settlement_pending`).
        response: SettleResponse,
        /// Protocol version of the payment.
        x402_version: u8,
    },
    /// A server-side dependency failed (RPC, facilitator, store): answer 503, fail closed.
    Unavailable {
        /// Why.
        reason: Reason,
        /// Diagnostic detail for logs.
        detail: String,
    },
}

impl GateOutcome {
    /// The HTTP status this outcome maps to.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::PaymentRequired { .. } => 402,
            Self::Paid { .. } => 200,
            Self::Pending { .. } => 202,
            Self::Unavailable { .. } => 503,
        }
    }

    /// The name of the settlement header for this outcome's protocol version.
    pub fn payment_response_header_name(&self) -> &'static str {
        match self {
            Self::Paid {
                x402_version: 1, ..
            }
            | Self::Pending {
                x402_version: 1, ..
            } => HEADER_X_PAYMENT_RESPONSE,
            _ => HEADER_PAYMENT_RESPONSE,
        }
    }

    /// The `PAYMENT-RESPONSE` header value, if this outcome carries one.
    pub fn payment_response_header(&self) -> Result<Option<String>, EncodeError> {
        let r = match self {
            Self::Paid { response, .. } | Self::Pending { response, .. } => Some(response),
            Self::PaymentRequired { original, .. } => original.as_ref(),
            Self::Unavailable { .. } => None,
        };
        r.map(encode_payment_response).transpose()
    }
}

/// Settle-first payment gate (see the module docs).
#[derive(Clone)]
pub struct PaymentGate {
    flight: SingleFlight,
    settler: Arc<dyn Settler>,
    clock: Arc<dyn Clock>,
    serve_duplicates: bool,
    contract_wallets: bool,
}

impl PaymentGate {
    /// A gate settling through `settler`, deduplicating through `flight`'s store.
    pub fn new(flight: SingleFlight, settler: Arc<dyn Settler>, clock: Arc<dyn Clock>) -> Self {
        Self {
            flight,
            settler,
            clock,
            serve_duplicates: false,
            contract_wallets: false,
        }
    }

    /// Whether payers may be contract wallets (ERC-1271), checked through the settler when the
    /// signature does not recover to `from`. Off by default: every such check costs the chain
    /// (or facilitator) a call, which unauthenticated garbage signatures could otherwise drive.
    pub fn accept_contract_wallets(mut self, accept: bool) -> Self {
        self.contract_wallets = accept;
        self
    }

    /// Whether a request carrying an already-settled payment is served again (`Paid` with the
    /// original transaction) instead of refused with `nonce_already_used` (the default).
    /// Serving makes client retries idempotent, but lets one payment buy a response per replay
    /// until the authorization expires.
    pub fn serve_duplicates(mut self, serve: bool) -> Self {
        self.serve_duplicates = serve;
        self
    }

    /// Runs the gate for one request to `resource_url` priced by `route`, with the raw value of
    /// its `PAYMENT-SIGNATURE` (or `X-PAYMENT`) header if any.
    pub async fn process(
        &self,
        route: &PricedRoute,
        resource_url: &str,
        payment_header: Option<&[u8]>,
    ) -> GateOutcome {
        let Some(header) = payment_header else {
            return GateOutcome::PaymentRequired {
                challenge: route
                    .payment_required(resource_url, Some("PAYMENT-SIGNATURE header is required")),
                reason: None,
                detail: None,
                original: None,
            };
        };
        let job = match self.verify(route, resource_url, header).await {
            Ok(job) => job,
            Err(outcome) => return outcome,
        };
        self.settle(route, resource_url, job).await
    }

    /// The first half of [`PaymentGate::process`]: decode → verify (→ contract-wallet check),
    /// giving the job to settle or the outcome to answer. For a verify-then-serve flow, call
    /// this, serve, then [`PaymentGate::settle`] — but know that the payer can move funds in
    /// between (settle-first, i.e. `process`, is the safe default).
    pub async fn verify(
        &self,
        route: &PricedRoute,
        resource_url: &str,
        header: &[u8],
    ) -> Result<SettleJob, GateOutcome> {
        let refuse =
            |reason: Reason, detail: String| refused(route, resource_url, reason, detail, None);
        let payload = decode_payment_header(header).map_err(|e| {
            tracing::debug!(reason = e.reason().as_str(), error = %e, "x402 header refused");
            refuse(e.reason(), e.to_string())
        })?;
        let now = self.clock.now_unix();
        let (verified, contract_wallet) = match verify_exact(route, &payload, now) {
            Ok(v) => (v, false),
            // Not an EOA signature of `from`: maybe `from` is a contract wallet (ERC-1271).
            Err(
                e @ (VerifyError::InvalidSignature { .. } | VerifyError::MalformedSignature(_)),
            ) if self.contract_wallets && self.settler.supports_contract_signatures() => {
                let v = verify_exact_terms_for_contract_wallet(route, &payload, now)
                    .map_err(|_| refuse(e.reason(), e.to_string()))?;
                (v, true)
            }
            Err(e) => {
                tracing::debug!(reason = e.reason().as_str(), error = %e, "x402 payment refused");
                return Err(refuse(e.reason(), e.to_string()));
            }
        };
        let offer = route
            .offers
            .get(verified.offer_index)
            .ok_or_else(|| refuse(Reason::RequirementsMismatch, "offer vanished".into()))?;
        // The facilitator gets the server's own requirement, in the payload's version.
        let requirements = match &payload {
            PaymentPayload::V2(_) => FacilitatorRequirements::V2(offer.requirements.clone()),
            PaymentPayload::V1(_) => offer
                .requirements_v1(
                    resource_url,
                    route.description.as_deref().unwrap_or(""),
                    route.mime_type.as_deref().unwrap_or("application/json"),
                )
                .map(FacilitatorRequirements::V1)
                .ok_or_else(|| refuse(Reason::UnsupportedNetwork, "no v1 name".into()))?,
        };
        let job = SettleJob {
            payload,
            verified,
            requirements,
        };
        if contract_wallet {
            match self.settler.verify_contract_signature(&job).await {
                Ok(true) => {}
                Ok(false) => {
                    let detail = "contract wallet rejected the signature".to_owned();
                    return Err(refuse(Reason::InvalidSignature, detail));
                }
                Err(f) if f.reason.is_client_error() => return Err(refuse(f.reason, f.detail)),
                Err(f) => {
                    return Err(GateOutcome::Unavailable {
                        reason: f.reason,
                        detail: f.detail,
                    })
                }
            }
        }
        Ok(job)
    }

    /// The second half of [`PaymentGate::process`]: single-flight settlement of a verified
    /// payment, mapped to the HTTP-level outcome.
    pub async fn settle(
        &self,
        route: &PricedRoute,
        resource_url: &str,
        job: SettleJob,
    ) -> GateOutcome {
        let verified = job.verified.clone();
        let x402_version = job.payload.version();
        let network = match &job.payload {
            PaymentPayload::V2(_) => match &job.requirements {
                FacilitatorRequirements::V2(r) => r.network.as_str().to_owned(),
                FacilitatorRequirements::V1(r) => r.network.clone(),
            },
            PaymentPayload::V1(p) => p.network.clone(),
        };
        let payer = verified.payer;
        let response = |success: bool, tx: &str, error: Option<Reason>| SettleResponse {
            success,
            error_reason: error.map(|r| r.as_str().to_owned()),
            payer: Some(payer.to_checksum(None)),
            transaction: tx.to_owned(),
            network: network.clone(),
            amount: None,
            extensions: None,
        };
        let settler = Arc::clone(&self.settler);
        let result = self
            .flight
            .settle_once(&verified, move || async move { settler.settle(&job).await })
            .await;
        let refuse = |reason: Reason, detail: String, original: Option<SettleResponse>| {
            refused(route, resource_url, reason, detail, original)
        };
        let outcome = match result {
            Ok(f) => match (f.outcome, f.first) {
                (SettleOutcome::Settled { tx }, first) if first || self.serve_duplicates => {
                    GateOutcome::Paid {
                        response: response(true, &tx, None),
                        payer,
                        x402_version,
                    }
                }
                // A replay of a payment that already bought a response does not buy another.
                (SettleOutcome::Settled { tx }, _) => refuse(
                    Reason::NonceAlreadyUsed,
                    "payment already settled".into(),
                    Some(response(true, &tx, None)),
                ),
                (SettleOutcome::Pending { tx }, _) => GateOutcome::Pending {
                    response: response(false, &tx, Some(Reason::SettlementPending)),
                    x402_version,
                },
            },
            Err(FlightError::Failed(f)) if f.reason.is_client_error() => {
                refuse(f.reason, f.detail, None)
            }
            Err(FlightError::Conflict) => refuse(
                Reason::PaymentConflict,
                FlightError::Conflict.to_string(),
                None,
            ),
            Err(FlightError::InProgress | FlightError::TaskLost) => GateOutcome::Pending {
                response: response(false, "", Some(Reason::SettlementPending)),
                x402_version,
            },
            Err(e) => GateOutcome::Unavailable {
                reason: e.reason(),
                detail: e.to_string(),
            },
        };
        log_outcome(&outcome, &verified);
        outcome
    }
}

fn refused(
    route: &PricedRoute,
    resource_url: &str,
    reason: Reason,
    detail: String,
    original: Option<SettleResponse>,
) -> GateOutcome {
    GateOutcome::PaymentRequired {
        challenge: route.payment_required(resource_url, Some(reason.as_str())),
        reason: Some(reason),
        detail: Some(detail),
        original,
    }
}

fn log_outcome(outcome: &GateOutcome, p: &VerifiedPayment) {
    match outcome {
        GateOutcome::Paid { response, .. } => tracing::info!(
            payer = %p.payer, chain_id = p.chain_id, value = %p.value, tx = %response.transaction,
            "x402 payment settled"
        ),
        GateOutcome::Pending { response, .. } => tracing::warn!(
            payer = %p.payer, chain_id = p.chain_id, tx = %response.transaction,
            "x402 settlement outcome unknown"
        ),
        GateOutcome::PaymentRequired { reason, detail, .. } => tracing::info!(
            payer = %p.payer, reason = reason.map_or("", Reason::as_str),
            detail = detail.as_deref().unwrap_or(""), "x402 payment refused at settlement"
        ),
        GateOutcome::Unavailable { reason, detail } => tracing::error!(
            payer = %p.payer, reason = reason.as_str(), detail = %detail,
            "x402 settlement unavailable"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{sign_exact_payment, AuthorizationTerms};
    use crate::codec::encode_payment_header;
    use crate::price::{NetworkOffer, RoutePrice};
    use crate::store::InMemoryPaymentStore;
    use crate::verify::FixedClock;
    use alloy::primitives::B256;
    use alloy::signers::local::PrivateKeySigner;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const NOW: u64 = 1_750_000_000;

    struct Fake {
        calls: AtomicUsize,
        result: Result<SettleOutcome, SettleFailure>,
    }

    #[async_trait]
    impl Settler for Fake {
        async fn settle(&self, _job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.result.clone()
        }
    }

    fn route() -> PricedRoute {
        RoutePrice {
            amount: None,
            usd: Some("0.01".into()),
            offers: vec![NetworkOffer {
                network: "eip155:84532".into(),
                asset: None,
                pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
                eip712_name: None,
                eip712_version: None,
                decimals: None,
                max_timeout_seconds: 60,
            }],
            description: Some("d".into()),
            mime_type: None,
        }
        .compile()
        .unwrap()
    }

    fn gate(result: Result<SettleOutcome, SettleFailure>) -> (PaymentGate, Arc<Fake>) {
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
            result,
        });
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(1),
        );
        (
            PaymentGate::new(flight, fake.clone(), Arc::new(FixedClock(NOW))),
            fake,
        )
    }

    fn header(nonce: u8) -> String {
        let r = route();
        let terms = AuthorizationTerms::for_offer(&r.offers[0], NOW, B256::repeat_byte(nonce));
        let p = sign_exact_payment(&PrivateKeySigner::random(), &r.offers[0], &terms).unwrap();
        encode_payment_header(&p).unwrap()
    }

    #[tokio::test]
    async fn no_header_is_a_challenge() {
        let (g, _) = gate(Ok(SettleOutcome::Settled { tx: "0x1".into() }));
        let out = g.process(&route(), "https://a/b", None).await;
        assert_eq!(out.http_status(), 402);
        let GateOutcome::PaymentRequired {
            challenge, reason, ..
        } = &out
        else {
            panic!()
        };
        assert_eq!(reason, &None);
        assert_eq!(challenge.resource.url, "https://a/b");
        assert_eq!(challenge.accepts.len(), 1);
        assert_eq!(out.payment_response_header().unwrap(), None);
    }

    #[tokio::test]
    async fn paid_once_then_replay_is_refused_with_the_original() {
        let (g, fake) = gate(Ok(SettleOutcome::Settled { tx: "0xaa".into() }));
        let h = header(1);
        let out = g.process(&route(), "u", Some(h.as_bytes())).await;
        let GateOutcome::Paid { response, .. } = &out else {
            panic!("{out:?}")
        };
        assert!(response.success);
        assert_eq!(response.transaction, "0xaa");
        assert_eq!(response.network, "eip155:84532");
        assert!(out.payment_response_header().unwrap().is_some());
        let again = g.process(&route(), "u", Some(h.as_bytes())).await;
        let GateOutcome::PaymentRequired {
            reason, original, ..
        } = &again
        else {
            panic!()
        };
        assert_eq!(*reason, Some(Reason::NonceAlreadyUsed));
        assert_eq!(original.as_ref().unwrap().transaction, "0xaa");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        let lenient = g.serve_duplicates(true);
        let again = lenient.process(&route(), "u", Some(h.as_bytes())).await;
        assert!(matches!(again, GateOutcome::Paid { .. }), "{again:?}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn v1_payment_gets_v1_response_header() {
        let (g, _) = gate(Ok(SettleOutcome::Settled { tx: "0xcc".into() }));
        let mut r = route();
        // Base Sepolia has the v1 name `base-sepolia`.
        let terms = AuthorizationTerms::for_offer(&r.offers[0], NOW, B256::repeat_byte(5));
        let p =
            crate::client::sign_exact_payment_v1(&PrivateKeySigner::random(), &r.offers[0], &terms)
                .unwrap();
        let h = encode_payment_header(&p).unwrap();
        let out = g.process(&r, "u", Some(h.as_bytes())).await;
        let GateOutcome::Paid {
            response,
            x402_version,
            ..
        } = &out
        else {
            panic!("{out:?}")
        };
        assert_eq!(*x402_version, 1);
        assert_eq!(response.network, "base-sepolia");
        assert_eq!(out.payment_response_header_name(), "x-payment-response");
        r.offers.clear();
        let out = g.process(&r, "u", Some(h.as_bytes())).await;
        assert!(matches!(
            out,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::UnsupportedNetwork),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn refusals_carry_stable_reasons() {
        let (g, fake) = gate(Ok(SettleOutcome::Settled { tx: "0x".into() }));
        let out = g.process(&route(), "u", Some(b"%%%")).await;
        assert!(matches!(
            out,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::MalformedPayment),
                ..
            }
        ));
        let r = route();
        let mut terms = AuthorizationTerms::for_offer(&r.offers[0], NOW, B256::ZERO);
        terms.value += alloy::primitives::U256::from(1u8);
        let p = sign_exact_payment(&PrivateKeySigner::random(), &r.offers[0], &terms).unwrap();
        let h = encode_payment_header(&p).unwrap();
        let out = g.process(&r, "u", Some(h.as_bytes())).await;
        assert!(matches!(
            out,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::AmountMismatch),
                ..
            }
        ));
        assert_eq!(
            fake.calls.load(Ordering::SeqCst),
            0,
            "nothing invalid reaches settlement"
        );
    }

    #[tokio::test]
    async fn pending_and_unavailable_are_never_a_new_challenge() {
        let (g, _) = gate(Ok(SettleOutcome::Pending { tx: "0xbb".into() }));
        let out = g.process(&route(), "u", Some(header(2).as_bytes())).await;
        assert_eq!(out.http_status(), 202);
        let GateOutcome::Pending { response, .. } = &out else {
            panic!()
        };
        assert_eq!(out.payment_response_header_name(), "payment-response");
        assert_eq!(response.transaction, "0xbb");
        assert_eq!(response.error_reason.as_deref(), Some("settlement_pending"));

        let down = SettleFailure {
            reason: Reason::ProviderUnavailable,
            retryable: true,
            detail: "x".into(),
        };
        let (g, _) = gate(Err(down));
        let out = g.process(&route(), "u", Some(header(3).as_bytes())).await;
        assert_eq!(out.http_status(), 503);

        let poor = SettleFailure {
            reason: Reason::InsufficientFunds,
            retryable: false,
            detail: "x".into(),
        };
        let (g, _) = gate(Err(poor));
        let out = g.process(&route(), "u", Some(header(4).as_bytes())).await;
        assert!(matches!(
            out,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::InsufficientFunds),
                ..
            }
        ));
    }

    struct WalletChecker(Result<bool, SettleFailure>);

    #[async_trait]
    impl Settler for WalletChecker {
        async fn settle(&self, _job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
            Ok(SettleOutcome::Settled { tx: "0xdd".into() })
        }
        fn supports_contract_signatures(&self) -> bool {
            true
        }
        async fn verify_contract_signature(&self, job: &SettleJob) -> Result<bool, SettleFailure> {
            assert!(matches!(
                job.verified.signature,
                PayerSignature::Contract(_)
            ));
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn contract_wallet_signature_is_checked_by_the_settler() {
        let r = route();
        let terms = AuthorizationTerms::for_offer(&r.offers[0], NOW, B256::repeat_byte(6));
        let p = crate::client::sign_exact_payment_as_wallet(
            &PrivateKeySigner::random(),
            Address::repeat_byte(0x77),
            &r.offers[0],
            &terms,
        )
        .unwrap();
        let h = encode_payment_header(&p).unwrap();
        let run = |answer: Result<bool, SettleFailure>| {
            let flight = SingleFlight::new(
                Arc::new(InMemoryPaymentStore::new()),
                Duration::from_secs(1),
            );
            let gate = PaymentGate::new(
                flight,
                Arc::new(WalletChecker(answer)),
                Arc::new(FixedClock(NOW)),
            )
            .accept_contract_wallets(true);
            let (r, h) = (r.clone(), h.clone());
            async move { gate.process(&r, "u", Some(h.as_bytes())).await }
        };
        assert!(matches!(run(Ok(true)).await, GateOutcome::Paid { .. }));
        assert!(matches!(
            run(Ok(false)).await,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::InvalidSignature),
                ..
            }
        ));
        let down = SettleFailure {
            reason: Reason::ProviderUnavailable,
            retryable: true,
            detail: "x".into(),
        };
        assert_eq!(run(Err(down)).await.http_status(), 503);
        // Off by default: the settler is never asked.
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(1),
        );
        let strict = PaymentGate::new(
            flight,
            Arc::new(WalletChecker(Ok(true))),
            Arc::new(FixedClock(NOW)),
        );
        assert!(matches!(
            strict.process(&r, "u", Some(h.as_bytes())).await,
            GateOutcome::PaymentRequired {
                reason: Some(Reason::InvalidSignature),
                ..
            }
        ));
    }
}
