//! The paying client: one logical request, with at most one payment and a bounded number of
//! waits.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::Eip712Domain;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use tollgate_x402::client::{sign_exact_payment, sign_exact_payment_v1, AuthorizationTerms};
use tollgate_x402::codec::{
    decode_base64_header, encode_payment_header, HEADER_PAYMENT_RESPONSE, HEADER_PAYMENT_SIGNATURE,
    HEADER_X_PAYMENT, HEADER_X_PAYMENT_RESPONSE,
};
use tollgate_x402::price::ResolvedOffer;
use tollgate_x402::{Clock, Network, PaymentPayload, SettleResponse, SystemClock};

use crate::policy::{Chosen, Offer, OfferSource, RefusedOffer, SpendPolicy};
use crate::problem::{
    classify_code, read_refusal, CodeClass, ContractError, Refusal, X402Challenge,
};
use crate::retry::{Backoff, Sleeper, Step, TokioSleeper, WaitKind};
use crate::state::{PaymentRecord, PaymentStatus, SpendState, StateError};

/// Largest response body read (bodies are held in memory).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request to send (its body is kept so it can be re-sent after a payment or a wait).
#[derive(Clone, Debug)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            headers: HeaderMap::new(),
            body: None,
        }
    }
}

/// A payment this client made.
#[derive(Clone, Debug, PartialEq)]
pub struct Payment {
    /// Protocol version used (1 or 2).
    pub x402_version: u8,
    /// Network as offered (CAIP-2 for v2, a name for v1).
    pub network: String,
    /// Token contract.
    pub asset: Address,
    /// Recipient.
    pub pay_to: Address,
    /// Amount in atomic units.
    pub amount: U256,
    /// Payer (the signing key's address).
    pub payer: Address,
    /// The authorization nonce.
    pub nonce: B256,
    /// The server's settlement result (`PAYMENT-RESPONSE`), when it sent one.
    pub settlement: Option<SettleResponse>,
}

impl Payment {
    /// The settlement transaction, if known.
    pub fn tx(&self) -> Option<&str> {
        self.settlement
            .as_ref()
            .map(|s| s.transaction.as_str())
            .filter(|t| !t.is_empty())
    }
}

/// The final answer of a request that was not refused.
#[derive(Clone, Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// The payment made for it, if any.
    pub payment: Option<Payment>,
    /// Waits slept before it (quota backoff, `Retry-After`).
    pub waits: Vec<Duration>,
}

/// Why a request did not get its resource. [`ClientError::exit_code`] maps each to the exit
/// code of `tollgate pay`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No offer of the challenge fits the spend policy (nothing was signed).
    #[error("no offer fits the spend policy: {}", join(.refused))]
    PolicyRefused {
        /// Every offer, with why it was refused.
        refused: Vec<RefusedOffer>,
    },
    /// Another process spent the budget between the check and the reservation.
    #[error("spend policy: {0}")]
    OverBudget(StateError),
    /// Payment is required but no signing key is configured.
    #[error("payment required but no signing key is configured")]
    NoKey,
    /// The server refused the payment (a new challenge, or a failed settlement).
    #[error("payment of {} refused by the server: {}", .payment.amount, .reason.as_deref().unwrap_or("no reason given"))]
    PaymentRejected {
        /// The payment.
        payment: Box<Payment>,
        /// The server's reason.
        reason: Option<String>,
        /// The final response's status.
        status: u16,
        /// The final response's body.
        body: Vec<u8>,
    },
    /// The payment was sent but its outcome is not known (settlement pending, 5xx after
    /// waiting): it stays counted against the budget; do not pay again.
    #[error("payment of {} sent, outcome unknown (HTTP {status}){}", .payment.amount, .payment.tx().map(|t| format!(", transaction {t}")).unwrap_or_default())]
    PaymentUnknown {
        /// The payment.
        payment: Box<Payment>,
        /// The final response's status.
        status: u16,
        /// The final response's body.
        body: Vec<u8>,
    },
    /// A human must act: top up, upgrade, renew, wait for approval.
    #[error("{}", describe(.0, "action needed"))]
    HumanAction(Box<ContractError>, Vec<u8>),
    /// Waiting did not help within the retry budget, or the wait needed is too long.
    #[error("{}{}", describe(.error, "still refused"), .next_wait.map(|d| format!("; retry in {} s", d.as_secs())).unwrap_or_default())]
    GaveUp {
        /// The last refusal.
        error: Box<ContractError>,
        /// Waits already slept.
        waits: Vec<Duration>,
        /// The wait the server asks for next, when it was too long to sleep.
        next_wait: Option<Duration>,
        /// The last body.
        body: Vec<u8>,
    },
    /// The request could not be built.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Network failure (connection, timeout, body).
    #[error("network: {0}")]
    Network(String),
    /// The spend state file could not be used.
    #[error("{0}")]
    State(StateError),
    /// Signing failed.
    #[error("signing: {0}")]
    Signing(String),
}

fn join(r: &[RefusedOffer]) -> String {
    if r.is_empty() {
        return "the challenge has no offers".to_owned();
    }
    r.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe(e: &ContractError, what: &str) -> String {
    let mut s = format!(
        "HTTP {} {}: {}",
        e.status,
        e.code.as_deref().unwrap_or("(no code)"),
        e.message.as_deref().unwrap_or(what)
    );
    if let Some(r) = &e.remedy {
        s.push_str(&format!(" — {r}"));
    }
    if let Some(u) = &e.remedy_url {
        s.push_str(&format!(" — remedy: {u}"));
    }
    s
}

/// Exit codes of `tollgate pay`.
pub mod exit {
    /// The resource was served (2xx).
    pub const OK: u8 = 0;
    /// Refused by the spend policy (nothing paid).
    pub const POLICY_REFUSED: u8 = 2;
    /// The server refused the payment.
    pub const PAYMENT_REJECTED: u8 = 3;
    /// A human must act (top up, upgrade, renew, approval; or a quota that waiting did not fix).
    pub const HUMAN_ACTION: u8 = 4;
    /// Network failure, unknown payment outcome, or a non-2xx answer.
    pub const OTHER: u8 = 5;
    /// Bad configuration or arguments (key, state file, amounts).
    pub const CONFIG: u8 = 64;
}

impl ClientError {
    /// The `tollgate pay` exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::PolicyRefused { .. } | Self::OverBudget(_) | Self::NoKey => exit::POLICY_REFUSED,
            Self::PaymentRejected { .. } => exit::PAYMENT_REJECTED,
            Self::HumanAction(..) | Self::GaveUp { .. } => exit::HUMAN_ACTION,
            Self::PaymentUnknown { .. } | Self::Network(_) | Self::Signing(_) => exit::OTHER,
            Self::BadRequest(_) | Self::State(_) => exit::CONFIG,
        }
    }

    /// The remedy URL, for errors a human must act on.
    pub fn remedy_url(&self) -> Option<&str> {
        match self {
            Self::HumanAction(e, _) => e.remedy_url.as_deref(),
            Self::GaveUp { error, .. } => error.remedy_url.as_deref(),
            _ => None,
        }
    }

    /// The body of the last response, when there was one.
    pub fn body(&self) -> Option<&[u8]> {
        match self {
            Self::HumanAction(_, b)
            | Self::GaveUp { body: b, .. }
            | Self::PaymentRejected { body: b, .. }
            | Self::PaymentUnknown { body: b, .. } => Some(b),
            _ => None,
        }
    }
}

/// An HTTP client that handles 402s (see the crate docs).
pub struct PayingClient {
    http: reqwest::Client,
    signer: Option<PrivateKeySigner>,
    policy: SpendPolicy,
    backoff: Backoff,
    state: SpendState,
    sleeper: Arc<dyn Sleeper>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for PayingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayingClient")
            .field(
                "payer",
                &self.signer.as_ref().map(PrivateKeySigner::address),
            )
            .field("policy", &self.policy)
            .field("backoff", &self.backoff)
            .field("state", &self.state.path())
            .finish_non_exhaustive()
    }
}

impl PayingClient {
    /// A client with `policy`, no key, in-memory spend state, real sleeping and clock.
    pub fn new(policy: SpendPolicy) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::BadRequest(format!("http client: {e}")))?;
        Ok(Self::with_http(http, policy))
    }

    /// A client over an existing `reqwest::Client`.
    pub fn with_http(http: reqwest::Client, policy: SpendPolicy) -> Self {
        Self {
            http,
            signer: None,
            policy,
            backoff: Backoff::default(),
            state: SpendState::in_memory(),
            sleeper: Arc::new(TokioSleeper),
            clock: Arc::new(SystemClock),
        }
    }

    /// Signs payments with `signer`.
    pub fn signer(mut self, signer: PrivateKeySigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Keeps the day's spend in `state`.
    pub fn state(mut self, state: SpendState) -> Self {
        self.state = state;
        self
    }

    /// Uses `backoff` for quota-style refusals and 429s.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Waits with `sleeper` (tests inject [`crate::RecordingSleeper`]).
    pub fn sleeper(mut self, sleeper: Arc<dyn Sleeper>) -> Self {
        self.sleeper = sleeper;
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The payer address, if a key is configured.
    pub fn payer(&self) -> Option<Address> {
        self.signer.as_ref().map(PrivateKeySigner::address)
    }

    /// The spend state.
    pub fn spend_state(&self) -> &SpendState {
        &self.state
    }

    fn now_system(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.clock.now_unix())
    }

    async fn send_once(
        &self,
        req: &Request,
        payment: Option<(&'static str, &HeaderValue)>,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ClientError> {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| ClientError::BadRequest(format!("url {:?}: {e}", req.url)))?;
        let mut b = self
            .http
            .request(req.method.clone(), url)
            .headers(req.headers.clone());
        if let Some((name, value)) = payment {
            b = b.header(HeaderName::from_static(name), value.clone());
        }
        if let Some(body) = &req.body {
            b = b.body(body.clone());
        }
        let mut resp = b
            .send()
            .await
            .map_err(|e| ClientError::Network(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ClientError::Network(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(ClientError::Network(format!(
                    "response body larger than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }

    /// Sends `req`, paying an x402 challenge at most once within the policy and waiting out
    /// quota-style refusals and 429s within the backoff schedule.
    pub async fn send(&self, req: &Request) -> Result<Response, ClientError> {
        let mut waits = Vec::new();
        let mut retries = 0u32;
        // The payment made for this request (never more than one) and its header.
        let mut paid: Option<(Payment, &'static str, HeaderValue, u64)> = None;
        loop {
            let header = paid.as_ref().map(|(_, n, v, _)| (*n, v));
            let sent = self.send_once(req, header).await;
            let (status, headers, body) = match sent {
                Ok(r) => r,
                Err(e) => {
                    if let Some((p, _, _, id)) = &paid {
                        // The payment may have been settled: keep it counted.
                        self.finish(*id, PaymentStatus::Unknown, p.tx());
                    }
                    return Err(e);
                }
            };
            if let Some((p, ..)) = &mut paid {
                if let Some(s) = settlement(&headers) {
                    p.settlement = Some(s);
                }
            }
            let wait_kind = match status {
                402 => None,
                429 => Some(WaitKind::RateLimit),
                // A paid request the gateway cannot settle right now: retry the same payment.
                503 if paid.is_some() => Some(WaitKind::RateLimit),
                _ => {
                    return self.done(status, headers, body, paid, waits);
                }
            };
            let refusal = read_refusal(status, &headers, &body, self.now_system());
            let contract = match (refusal, wait_kind) {
                (Refusal::X402(challenge), None) => {
                    if let Some((p, _, _, id)) = paid.take() {
                        // Never pay twice: a new challenge after our payment is a refusal.
                        let success = p.settlement.as_ref().is_some_and(|s| s.success);
                        let status_after = if success {
                            PaymentStatus::Settled
                        } else {
                            PaymentStatus::Released
                        };
                        self.finish(id, status_after, p.tx());
                        let reason = p
                            .settlement
                            .as_ref()
                            .and_then(|s| s.error_reason.clone())
                            .or_else(|| body_reason(&body))
                            .or(challenge.error);
                        return Err(ClientError::PaymentRejected {
                            payment: Box::new(p),
                            reason,
                            status,
                            body,
                        });
                    }
                    let (payment, name, value, id) = self.pay(req, &challenge)?;
                    paid = Some((payment, name, value, id));
                    continue;
                }
                (Refusal::X402(_), Some(_)) => ContractError {
                    status,
                    ..ContractError::default()
                },
                (Refusal::Contract(c), _) => c,
            };
            let kind = match wait_kind {
                Some(k) => k,
                None => match contract.code.as_deref().map(classify_code) {
                    Some(CodeClass::Wait) if paid.is_none() => WaitKind::Quota,
                    _ => {
                        if let Some((p, _, _, id)) = paid.take() {
                            self.finish(id, PaymentStatus::Unknown, p.tx());
                            return Err(ClientError::PaymentUnknown {
                                payment: Box::new(p),
                                status,
                                body,
                            });
                        }
                        return Err(ClientError::HumanAction(Box::new(contract), body));
                    }
                },
            };
            match self.backoff.step(kind, retries, contract.retry_after) {
                Step::Wait(d) => {
                    tracing::info!(status, code = ?contract.code, wait_s = d.as_secs_f64(), "waiting before retry");
                    self.sleeper.sleep(d).await;
                    waits.push(d);
                    retries += 1;
                }
                step => {
                    if let Some((p, _, _, id)) = paid.take() {
                        self.finish(id, PaymentStatus::Unknown, p.tx());
                        return Err(ClientError::PaymentUnknown {
                            payment: Box::new(p),
                            status,
                            body,
                        });
                    }
                    let next_wait = match step {
                        Step::TooLong(d) => Some(d),
                        _ => contract.retry_after,
                    };
                    return Err(ClientError::GaveUp {
                        error: Box::new(contract),
                        waits,
                        next_wait,
                        body,
                    });
                }
            }
        }
    }

    fn done(
        &self,
        status: u16,
        headers: HeaderMap,
        body: Vec<u8>,
        paid: Option<(Payment, &'static str, HeaderValue, u64)>,
        waits: Vec<Duration>,
    ) -> Result<Response, ClientError> {
        let Some((p, _, _, id)) = paid else {
            return Ok(Response {
                status,
                headers,
                body,
                payment: None,
                waits,
            });
        };
        let settled = p.settlement.as_ref().is_some_and(|s| s.success);
        if (200..300).contains(&status) && status != 202 {
            // Served: the payment counts, with its transaction when the server said it.
            let st = if settled {
                PaymentStatus::Settled
            } else {
                PaymentStatus::Unknown
            };
            self.finish(id, st, p.tx());
            return Ok(Response {
                status,
                headers,
                body,
                payment: Some(p),
                waits,
            });
        }
        if let Some(s) = p.settlement.as_ref().filter(|s| !s.success) {
            let pending = s.error_reason.as_deref() == Some("settlement_pending");
            if !pending && status != 202 {
                self.finish(id, PaymentStatus::Released, None);
                let reason = s.error_reason.clone();
                return Err(ClientError::PaymentRejected {
                    payment: Box::new(p),
                    reason,
                    status,
                    body,
                });
            }
        }
        self.finish(id, PaymentStatus::Unknown, p.tx());
        Err(ClientError::PaymentUnknown {
            payment: Box::new(p),
            status,
            body,
        })
    }

    fn finish(&self, id: u64, status: PaymentStatus, tx: Option<&str>) {
        let now = self.clock.now_unix();
        if let Err(e) = self.state.finish(now, id, status, tx.map(str::to_owned)) {
            tracing::warn!(error = %e, "could not record the payment outcome in the spend state");
        }
    }

    /// Chooses an offer, reserves it in the spend state, signs it and builds the header.
    fn pay(
        &self,
        req: &Request,
        challenge: &X402Challenge,
    ) -> Result<(Payment, &'static str, HeaderValue, u64), ClientError> {
        let now = self.clock.now_unix();
        let spent = self.state.spent_today(now).map_err(ClientError::State)?;
        let chosen = self
            .policy
            .choose(&challenge.offers, spent)
            .map_err(|refused| ClientError::PolicyRefused { refused })?;
        let signer = self.signer.as_ref().ok_or(ClientError::NoKey)?;
        let offer = challenge
            .offers
            .get(chosen.index)
            .ok_or_else(|| ClientError::Signing("offer vanished".into()))?;
        let resolved = resolve(offer, &chosen)?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| ClientError::Signing(format!("nonce: {e}")))?;
        let nonce = B256::from(nonce);
        let terms = AuthorizationTerms::for_offer(&resolved, now, nonce);
        let record = PaymentRecord {
            id: 0,
            at: now,
            url: req.url.clone(),
            network: offer.network_raw.clone(),
            asset: chosen.asset.to_checksum(None),
            pay_to: chosen.pay_to.to_checksum(None),
            amount: tollgate_x402::TokenAmount(offer.amount),
            status: PaymentStatus::Reserved,
            tx: None,
        };
        let id = self
            .state
            .reserve(now, self.policy.max_per_day, record)
            .map_err(|e| match e {
                e @ StateError::OverBudget { .. } => ClientError::OverBudget(e),
                e => ClientError::State(e),
            })?;
        let signed = match &offer.source {
            OfferSource::V2(_) => sign_exact_payment(signer, &resolved, &terms).map(|mut p| {
                if let (PaymentPayload::V2(p2), Some(v2)) = (&mut p, &challenge.v2) {
                    p2.resource = Some(v2.resource.clone());
                }
                p
            }),
            OfferSource::V1(_) => sign_exact_payment_v1(signer, &resolved, &terms),
        };
        let header = signed
            .map_err(|e| e.to_string())
            .and_then(|p| encode_payment_header(&p).map_err(|e| e.to_string()))
            .and_then(|h| HeaderValue::from_str(&h).map_err(|e| e.to_string()));
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                self.finish(id, PaymentStatus::Released, None);
                return Err(ClientError::Signing(e));
            }
        };
        let name = if offer.version() == 1 {
            HEADER_X_PAYMENT
        } else {
            HEADER_PAYMENT_SIGNATURE
        };
        tracing::info!(amount = %offer.amount, network = %offer.network_raw, asset = %chosen.asset, "paying");
        let payment = Payment {
            x402_version: offer.version(),
            network: offer.network_raw.clone(),
            asset: chosen.asset,
            pay_to: chosen.pay_to,
            amount: offer.amount,
            payer: signer.address(),
            nonce,
            settlement: None,
        };
        Ok((payment, name, header, id))
    }
}

/// Builds what the signing helpers need from a policy-checked offer.
fn resolve(offer: &Offer, chosen: &Chosen) -> Result<ResolvedOffer, ClientError> {
    let (name, version) = chosen.domain.clone();
    let domain_separator = Eip712Domain::new(
        Some(name.clone().into()),
        Some(version.clone().into()),
        Some(U256::from(chosen.chain_id)),
        Some(chosen.asset),
        None,
    )
    .separator();
    let requirements = match &offer.source {
        OfferSource::V2(r) => r.clone(),
        OfferSource::V1(r) => tollgate_x402::PaymentRequirements {
            scheme: r.scheme.clone(),
            network: Network::eip155(chosen.chain_id),
            amount: r.max_amount_required,
            asset: r.asset.clone(),
            pay_to: r.pay_to.clone(),
            max_timeout_seconds: r.max_timeout_seconds,
            extra: r.extra.clone(),
        },
    };
    Ok(ResolvedOffer {
        network: Network::eip155(chosen.chain_id),
        chain_id: chosen.chain_id,
        asset: chosen.asset,
        pay_to: chosen.pay_to,
        amount: offer.amount,
        eip712_name: name,
        eip712_version: version,
        max_timeout_seconds: offer.max_timeout_seconds.clamp(1, 3600),
        domain_separator,
        requirements,
    })
}

/// Decodes `PAYMENT-RESPONSE` (or `X-PAYMENT-RESPONSE`).
pub fn settlement(headers: &HeaderMap) -> Option<SettleResponse> {
    let raw = headers
        .get(HEADER_PAYMENT_RESPONSE)
        .or_else(|| headers.get(HEADER_X_PAYMENT_RESPONSE))?;
    let json = decode_base64_header(raw.as_bytes()).ok()?;
    serde_json::from_slice(&json).ok()
}

/// `details.reason` or `error` of a refusal body.
fn body_reason(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/details/reason")
        .or_else(|| v.get("code"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
}
