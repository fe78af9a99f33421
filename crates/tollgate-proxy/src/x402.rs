//! x402 on the request path: per-call stablecoin payments for routes with `[routes.x402]`.
//!
//! A request carrying `PAYMENT-SIGNATURE` (or `X-PAYMENT`) runs the gate of `tollgate-x402`:
//! decode → verify against the route's own offers → (payment-identifier dedup) → settle once
//! per authorization (or, with `settle_after_response`, reserve → forward → settle when the
//! upstream answered below 500) → forward → `PAYMENT-RESPONSE`. Every refusal is answered
//! before the upstream is called. A settlement whose outcome is unknown, or a provider that
//! cannot be reached, is a 503 with `Retry-After` — never a fresh 402, which would make a
//! conforming agent pay twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use tollgate_core::config::{Config, ConfigIssue, X402NetworkConfig};
use tollgate_core::ErrorCode;
use tollgate_store::x402::{PaymentMeta, SqlitePaymentStore};
use tollgate_store::{IdemGuard, IdemLookup, IdemRecord, Op, StoredResponse, UsageRecord};
use tollgate_x402::codec::{
    encode_payment_required, encode_payment_response, EXPOSE_HEADERS, HEADER_PAYMENT_RESPONSE,
    HEADER_X_PAYMENT_RESPONSE,
};
use tollgate_x402::store::StoredPayment;
use tollgate_x402::{
    ChainConfig, ChainError, EvmChain, FacilitatorClient, FacilitatorConfig, GateOutcome, Network,
    PaymentGate, PaymentKey, PaymentPayload, PaymentRequired, PaymentState, PaymentStore, Reason,
    Reservation, SettleFailure, SettleJob, SettleOutcome, SettleResponse, Settler, SingleFlight,
    SystemClock,
};

use crate::body::limited;
use crate::pipeline::{replay, strip_hop_by_hop, ForwardBody, Gateway};
use crate::respond::{full, Body, Reject};
use crate::snapshot::{Route, Snapshot, X402Route};

/// v2 payment header.
pub static PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");
/// v1 payment header.
pub static X_PAYMENT: HeaderName = HeaderName::from_static("x-payment");
static PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");

/// The idempotency index keeps payment identifiers under this consumer seq (no consumer has 0).
const PAYMENT_ID_SEQ: i64 = 0;
/// `Retry-After` of 503s caused by the payment provider or an unknown settlement outcome.
const RETRY_AFTER_SECS: u64 = 5;
/// Name of the payment-identifier extension.
const PAYMENT_IDENTIFIER: &str = "payment-identifier";

/// Dispatches each settlement to the settler of its chain.
pub struct NetworkSettlers {
    by_chain: HashMap<u64, Arc<dyn Settler>>,
    /// Chains settled locally (their pending transactions can be looked up).
    chains: HashMap<u64, Arc<EvmChain>>,
}

#[async_trait]
impl Settler for NetworkSettlers {
    async fn settle(&self, job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
        match self.by_chain.get(&job.verified.chain_id) {
            Some(s) => s.settle(job).await,
            None => Err(SettleFailure {
                reason: Reason::UnsupportedNetwork,
                retryable: false,
                detail: format!("no settler for chain {}", job.verified.chain_id),
            }),
        }
    }
}

/// The x402 machinery of a running gateway: settlers per network, the durable payment store and
/// the gate over both. Kept across config reloads while `[x402]` does not change, so a
/// settler's transaction nonces stay in one hand.
pub struct X402Runtime {
    /// Verify + single-flight settlement.
    pub gate: PaymentGate,
    /// Settlers by chain.
    pub settlers: Arc<NetworkSettlers>,
    /// Durable payment records.
    pub store: Arc<SqlitePaymentStore>,
    networks: Vec<X402NetworkConfig>,
    /// The runtime settlements run on: the one `build` was called on (the gateway's main
    /// runtime), which outlives the proxy workers, so a settlement whose request went away
    /// still finishes and is recorded during shutdown.
    background: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for X402Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X402Runtime")
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

impl X402Runtime {
    /// Build from `[x402]` (reading each settler key from its environment variable). `None`
    /// without an `[x402]` section; config issues with key paths when a key is missing or bad.
    pub fn build(
        cfg: &Config,
        store: Arc<SqlitePaymentStore>,
    ) -> Result<Option<X402Runtime>, Vec<ConfigIssue>> {
        let Some(x) = &cfg.x402 else {
            return Ok(None);
        };
        let mut issues = Vec::new();
        let mut by_chain: HashMap<u64, Arc<dyn Settler>> = HashMap::new();
        let mut chains: HashMap<u64, Arc<EvmChain>> = HashMap::new();
        let mut wait_secs = 10;
        for (i, n) in x.networks.iter().enumerate() {
            let p = format!("x402.networks[{i}]");
            let chain_id = Network::parse(&n.network)
                .and_then(|net| net.eip155_chain_id())
                .unwrap_or(0);
            wait_secs = wait_secs.max(n.receipt_timeout_seconds + 10);
            let settler: Arc<dyn Settler> = match (&n.rpc_url, &n.facilitator_url) {
                (Some(rpc), _) => {
                    let cc = ChainConfig {
                        network: n.network.clone(),
                        rpc_url: rpc.clone(),
                        settler_key_env: n.signer_key_env.clone().unwrap_or_default(),
                        receipt_timeout_ms: n.receipt_timeout_seconds * 1000,
                        rpc_timeout_ms: 10_000,
                        poll_interval_ms: 100,
                    };
                    match EvmChain::from_config(&cc) {
                        Ok(c) => {
                            let c = Arc::new(c);
                            chains.insert(chain_id, Arc::clone(&c));
                            c
                        }
                        Err(ChainError::Config(m)) => {
                            let (field, msg) = m.split_once(": ").unwrap_or(("", m.as_str()));
                            let path = if field.starts_with("settler_key_env") {
                                format!("{p}.signer_key_env")
                            } else if field.is_empty() {
                                p.clone()
                            } else {
                                format!("{p}.{field}")
                            };
                            issues.push(ConfigIssue {
                                path,
                                message: msg.to_string(),
                            });
                            continue;
                        }
                        Err(e) => {
                            issues.push(ConfigIssue {
                                path: p,
                                message: e.to_string(),
                            });
                            continue;
                        }
                    }
                }
                (None, Some(url)) => {
                    let fc = FacilitatorConfig {
                        url: url.clone(),
                        timeout_ms: 10_000,
                        settle_timeout_ms: n.receipt_timeout_seconds * 1000,
                    };
                    match FacilitatorClient::new(&fc) {
                        Ok(c) => Arc::new(c),
                        Err(e) => {
                            issues.push(ConfigIssue {
                                path: format!("{p}.facilitator_url"),
                                message: e.to_string(),
                            });
                            continue;
                        }
                    }
                }
                (None, None) => continue,
            };
            by_chain.insert(chain_id, settler);
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let settlers = Arc::new(NetworkSettlers { by_chain, chains });
        let flight = SingleFlight::new(
            Arc::clone(&store) as Arc<dyn PaymentStore>,
            Duration::from_secs(wait_secs),
        );
        let gate = PaymentGate::new(
            flight,
            Arc::clone(&settlers) as Arc<dyn Settler>,
            Arc::new(SystemClock),
        );
        Ok(Some(X402Runtime {
            gate,
            settlers,
            store,
            networks: x.networks.clone(),
            background: tokio::runtime::Handle::try_current().ok(),
        }))
    }

    /// A payment whose settlement came back pending: look its transaction up. When it has been
    /// mined successfully in the meantime, record it settled and return the transaction — only
    /// to the one caller whose store transition wins, so a pending payment is served once.
    /// A reverted transaction is recorded as a final failure.
    async fn reconcile(
        &self,
        verified: &tollgate_x402::verify::VerifiedPayment,
        tx: &str,
    ) -> Option<String> {
        let chain = self.settlers.chains.get(&verified.chain_id)?;
        let hash: tollgate_x402::alloy::primitives::B256 = tx.parse().ok()?;
        let key = PaymentKey::of(verified);
        match chain.settlement_status(hash, verified).await {
            Ok(Some(SettleOutcome::Settled { tx })) => {
                let next = PaymentState::Settled { tx: tx.clone() };
                self.store.transition(&key, next).await.ok().map(|()| tx)
            }
            Ok(_) => None,
            Err(e @ (ChainError::Reverted { .. } | ChainError::MissingTransferEvent { .. })) => {
                tracing::warn!(error = %e, "pending x402 settlement failed on chain");
                let next = PaymentState::Failed {
                    reason: Reason::SettlementFailed,
                    retryable: false,
                };
                let _ = self.store.transition(&key, next).await;
                None
            }
            Err(_) => None,
        }
    }

    /// Whether this runtime was built from the same `[x402]` networks as `cfg`.
    pub fn serves(&self, cfg: &Config) -> bool {
        cfg.x402.as_ref().map(|x| &x.networks) == Some(&self.networks)
    }
}

/// The URL of the resource a request is for (as the challenge names it).
fn resource_url<B>(req: &Request<B>) -> String {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "localhost".into());
    format!("http://{host}{pq}")
}

fn hv(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

fn expose() -> (HeaderName, HeaderValue) {
    (
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    )
}

/// `(name, value)` of the settlement header for a payment of protocol `version`.
fn settlement_header(resp: &SettleResponse, version: u8) -> Option<(HeaderName, HeaderValue)> {
    let name = if version == 1 {
        HEADER_X_PAYMENT_RESPONSE
    } else {
        HEADER_PAYMENT_RESPONSE
    };
    let v = encode_payment_response(resp).ok()?;
    Some((HeaderName::from_static(name), hv(&v)?))
}

fn with_settlement(mut r: Reject, resp: &SettleResponse, version: u8) -> Reject {
    if let Some((k, v)) = settlement_header(resp, version) {
        r = r.header(k, v);
    }
    if !resp.transaction.is_empty() {
        r = r.detail("transaction", resp.transaction.clone());
    }
    r
}

fn payment_identifier_extension(required: bool) -> Value {
    json!({
        "info": { "required": required },
        "schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "required": { "type": "boolean" },
                "id": { "type": "string", "minLength": 16, "maxLength": 128,
                        "pattern": "^[a-zA-Z0-9_-]+$" }
            },
            "required": ["required"]
        }
    })
}

/// A 402 carrying the challenge: our contract body with the x402 fields mirrored beside it,
/// the `PAYMENT-REQUIRED` header and the CORS expose list.
pub fn challenge_reject(
    code: ErrorCode,
    mut challenge: PaymentRequired,
    px: &X402Route,
    api_key_accepted: bool,
) -> Reject {
    if px.require_payment_identifier {
        let mut ext = challenge.extensions.take().unwrap_or_default();
        ext.insert(
            PAYMENT_IDENTIFIER.into(),
            payment_identifier_extension(true),
        );
        challenge.extensions = Some(ext);
    }
    let mut r = Reject::new(code);
    if let Some(o) = px.priced.offers.first() {
        r = r
            .detail("amount", o.amount.to_string())
            .detail("asset", o.asset.to_checksum(None))
            .detail("network", o.network.as_str())
            .detail("pay_to", o.pay_to.to_checksum(None));
    }
    r = r
        .detail("resource", challenge.resource.url.clone())
        .detail("api_key_accepted", api_key_accepted);
    if let Some((k, v)) = encode_payment_required(&challenge)
        .ok()
        .and_then(|v| hv(&v))
        .map(|v| (PAYMENT_REQUIRED.clone(), v))
    {
        r = r.header(k, v);
    }
    let (k, v) = expose();
    r = r.header(k, v);
    if let Ok(Value::Object(fields)) = serde_json::to_value(&challenge) {
        r = r.extra_fields(fields);
    }
    r
}

/// Maps a gate outcome that is not `Paid` to the answer.
fn outcome_reject(o: GateOutcome, px: &X402Route, api_key_accepted: bool) -> Reject {
    match o {
        GateOutcome::PaymentRequired {
            challenge,
            reason,
            detail,
            original,
        } => {
            let code = match reason {
                None => ErrorCode::PaymentRequired,
                Some(Reason::NonceAlreadyUsed | Reason::PaymentConflict) => {
                    ErrorCode::PaymentAlreadyUsed
                }
                Some(Reason::SettlementFailed | Reason::FacilitatorRejected) => {
                    ErrorCode::PaymentSettlementFailed
                }
                Some(_) => ErrorCode::PaymentInvalid,
            };
            if let Some(d) = &detail {
                tracing::info!(reason = reason.map_or("", Reason::as_str), detail = %d, "x402 payment refused");
            }
            let mut r = challenge_reject(code, challenge, px, api_key_accepted);
            if let Some(reason) = reason {
                r = r.detail("reason", reason.as_str());
            }
            if let Some(orig) = &original {
                r = with_settlement(r, orig, 2);
            }
            r
        }
        GateOutcome::Pending {
            response,
            x402_version,
        } => pending_reject(&response, x402_version),
        GateOutcome::Unavailable { reason, detail } => {
            tracing::warn!(reason = reason.as_str(), detail = %detail, "x402 payment provider unavailable");
            unavailable(reason)
        }
        GateOutcome::Paid { .. } => Reject::new(ErrorCode::Internal),
    }
}

fn pending_reject(resp: &SettleResponse, version: u8) -> Reject {
    let (k, v) = expose();
    with_settlement(
        Reject::new(ErrorCode::PaymentSettlementPending)
            .retry_after(RETRY_AFTER_SECS)
            .header(k, v),
        resp,
        version,
    )
}

fn unavailable(reason: Reason) -> Reject {
    Reject::new(ErrorCode::PaymentProviderUnavailable)
        .detail("reason", reason.as_str())
        .retry_after(RETRY_AFTER_SECS)
}

/// The `payment-identifier` id of a payment, if it carries one; an error message when it is
/// present but malformed.
fn payment_identifier(p: &PaymentPayload) -> Result<Option<String>, &'static str> {
    let PaymentPayload::V2(v2) = p else {
        return Ok(None);
    };
    let Some(ext) = v2
        .extensions
        .as_ref()
        .and_then(|e| e.get(PAYMENT_IDENTIFIER))
    else {
        return Ok(None);
    };
    let id = ext
        .get("info")
        .and_then(|i| i.get("id"))
        .or_else(|| ext.get("id"));
    match id {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s))
            if (16..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(Some(s.clone()))
        }
        Some(_) => Err("payment-identifier id must be 16-128 characters of [A-Za-z0-9_-]"),
    }
}

/// `GET /.well-known/x402`: the priced routes with their offers and discovery metadata.
pub fn discovery(snap: &Snapshot, host: Option<&str>) -> Response<Body> {
    let host = host.unwrap_or("localhost");
    let items: Vec<Value> = snap
        .config
        .routes
        .iter()
        .filter_map(|rc| {
            let route = snap.routes.iter().find(|r| r.cfg.id == rc.id)?;
            let px = route.x402.as_ref()?;
            let methods: Vec<String> = rc
                .methods
                .clone()
                .unwrap_or_else(|| vec!["GET".to_string()]);
            let url = format!("http://{host}{}", rc.path_prefix);
            let mime = px.priced.mime_type.clone();
            let mut extensions = Map::new();
            extensions.insert(
                "bazaar".into(),
                json!({
                    "info": {
                        "input": { "type": "http", "method": methods.first() },
                        "output": { "type": mime.as_deref().unwrap_or("application/json") },
                    },
                    "description": px.priced.description,
                    "mimeType": mime,
                    "methods": methods,
                }),
            );
            if px.require_payment_identifier {
                extensions.insert(
                    PAYMENT_IDENTIFIER.into(),
                    payment_identifier_extension(true),
                );
            }
            Some(json!({
                "resource": url,
                "type": "http",
                "x402Version": 2,
                "route": rc.id,
                "description": px.priced.description,
                "mimeType": mime,
                "accepts": px.priced.accepts(),
                "settleAfterResponse": px.settle_after_response,
                "apiKeyAccepted": !rc.public,
                "extensions": extensions,
            }))
        })
        .collect();
    let body = json!({ "x402Version": 2, "items": items });
    let mut r = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What the forwarding half needs about a paid request.
struct Paid {
    response: SettleResponse,
    version: u8,
    payer: String,
}

impl Gateway {
    /// The 402 challenge for a priced route requested without a payment.
    pub(crate) fn x402_challenge<B>(&self, req: &Request<B>, route: &Route) -> Reject {
        let Some(px) = &route.x402 else {
            return Reject::new(ErrorCode::Internal);
        };
        let challenge = px.priced.payment_required(
            &resource_url(req),
            Some("PAYMENT-SIGNATURE header is required"),
        );
        challenge_reject(ErrorCode::PaymentRequired, challenge, px, !route.cfg.public)
    }

    /// A request to a priced route that carries a payment.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn x402_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
        rid: &str,
        snap: &Arc<Snapshot>,
        route: &Arc<Route>,
        host: Option<&str>,
    ) -> Result<Response<Body>, Reject> {
        let Some(px) = route.x402.clone() else {
            return Err(Reject::new(ErrorCode::Internal));
        };
        // Before any payment is verified or settled.
        self.check_backlog(snap)?;
        let api_key = !route.cfg.public;
        let Some(rt) = self.x402.load_full() else {
            return Err(unavailable(Reason::SettlementUnavailable));
        };
        let resource = resource_url(&req);
        let header_value: Bytes = req
            .headers()
            .get(&PAYMENT_SIGNATURE)
            .or_else(|| req.headers().get(&X_PAYMENT))
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .unwrap_or_default();
        let job = match rt.gate.verify(&px.priced, &resource, &header_value).await {
            Ok(j) => j,
            Err(o) => return Err(outcome_reject(o, &px, api_key)),
        };
        let pid = payment_identifier(&job.payload)
            .map_err(|m| Reject::new(ErrorCode::BadRequest).detail("reason", m))?;
        if px.require_payment_identifier && pid.is_none() {
            return Err(Reject::new(ErrorCode::BadRequest).detail(
                "reason",
                "this route requires the payment-identifier extension",
            ));
        }
        let mut guard = None;
        if let Some(id) = &pid {
            let mut h = Sha256::new();
            h.update(req.method().as_str());
            h.update([0]);
            h.update(req.uri().path_and_query().map_or("/", |p| p.as_str()));
            h.update([0]);
            h.update(job.verified.digest.as_slice());
            let fp: [u8; 32] = h.finalize().into();
            match self
                .store
                .idem
                .begin(PAYMENT_ID_SEQ, &format!("x402:{id}"), fp)
            {
                IdemLookup::Replay(stored) => return Ok(replay(&stored)),
                IdemLookup::Conflict => {
                    return Err(Reject::new(ErrorCode::PaymentIdentifierConflict))
                }
                IdemLookup::InProgress => {
                    return Err(Reject::new(ErrorCode::IdempotencyInProgress).retry_after(1))
                }
                IdemLookup::Proceed(g) => guard = Some((g, id.clone())),
            }
        }
        let key = PaymentKey::of(&job.verified);
        let network = px
            .priced
            .offers
            .get(job.verified.offer_index)
            .map(|o| o.network.as_str().to_string())
            .unwrap_or_default();
        rt.store.annotate(
            key,
            PaymentMeta {
                route: route.cfg.id.clone(),
                network,
                amount: job.verified.value.to_string(),
                pay_to: format!("{:#x}", job.verified.pay_to),
                request_id: rid.to_string(),
            },
        );
        let server = &snap.config.server;
        let req_bytes = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let (parts, body) = req.into_parts();
        let fbody = ForwardBody::Stream(limited(body, server.max_body_bytes));
        let result = if px.settle_after_response {
            self.x402_settle_after(
                &rt, &px, job, key, &resource, &parts, fbody, remote, rid, route, host,
            )
            .await
        } else {
            self.x402_settle_first(
                &rt, &px, job, &resource, &parts, fbody, remote, rid, route, host,
            )
            .await
        };
        rt.store.forget(&key);
        let (resp, paid) = result?;
        self.x402_finish(resp, paid, guard, rid, route, req_bytes, snap)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn x402_settle_first(
        &self,
        rt: &X402Runtime,
        px: &X402Route,
        job: SettleJob,
        resource: &str,
        parts: &http::request::Parts,
        body: ForwardBody,
        remote: SocketAddr,
        rid: &str,
        route: &Route,
        host: Option<&str>,
    ) -> Result<(Response<crate::connpool::UpstreamBody>, Paid), Reject> {
        let verified = job.verified.clone();
        let mut outcome = rt.gate.settle(&px.priced, resource, job).await;
        if let GateOutcome::Pending {
            response,
            x402_version,
        } = &outcome
        {
            // A payment left pending by an earlier request may have been mined since.
            if !response.transaction.is_empty() {
                if let Some(tx) = rt.reconcile(&verified, &response.transaction).await {
                    let mut settled = response.clone();
                    settled.success = true;
                    settled.error_reason = None;
                    settled.transaction = tx;
                    outcome = GateOutcome::Paid {
                        response: settled,
                        payer: verified.payer,
                        x402_version: *x402_version,
                    };
                }
            }
        }
        let paid = match outcome {
            GateOutcome::Paid {
                response,
                payer,
                x402_version,
            } => Paid {
                response,
                version: x402_version,
                payer: format!("{payer:#x}"),
            },
            other => return Err(outcome_reject(other, px, !route.cfg.public)),
        };
        match self
            .forward(parts, body, remote, rid, route, &route.upstream, None, host)
            .await
        {
            Ok(resp) => Ok((resp, paid)),
            // Paid but not served: say so, with the settlement, so the payer can follow up.
            Err(rej) => {
                self.x402_usage(rid, route, 0, &paid.payer, false);
                Err(with_settlement(rej, &paid.response, paid.version))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn x402_settle_after(
        &self,
        rt: &X402Runtime,
        px: &X402Route,
        job: SettleJob,
        key: PaymentKey,
        resource: &str,
        parts: &http::request::Parts,
        body: ForwardBody,
        remote: SocketAddr,
        rid: &str,
        route: &Route,
        host: Option<&str>,
    ) -> Result<(Response<crate::connpool::UpstreamBody>, Paid), Reject> {
        let api_key = !route.cfg.public;
        let v = job.verified.clone();
        let version = job.payload.version();
        let network = match &job.payload {
            PaymentPayload::V1(p) => p.network.clone(),
            PaymentPayload::V2(_) => px
                .priced
                .offers
                .get(v.offer_index)
                .map(|o| o.network.as_str().to_string())
                .unwrap_or_default(),
        };
        let settle_response = |success: bool, tx: &str, err: Option<Reason>| SettleResponse {
            success,
            error_reason: err.map(|r| r.as_str().to_string()),
            payer: Some(v.payer.to_checksum(None)),
            transaction: tx.to_string(),
            network: network.clone(),
            amount: None,
            extensions: None,
        };
        let refuse = |reason: Reason, code: ErrorCode| {
            let ch = px.priced.payment_required(resource, Some(reason.as_str()));
            challenge_reject(code, ch, px, api_key).detail("reason", reason.as_str())
        };
        match rt
            .store
            .reserve(&key, v.digest, v.valid_before_secs())
            .await
        {
            Ok(Reservation::Reserved) => {}
            Ok(Reservation::Duplicate(rec)) => {
                return Err(self.x402_duplicate(rec, v.digest, &settle_response, version, &refuse))
            }
            Err(e) => {
                tracing::error!(request_id = %rid, error = %e, "x402 payment could not be reserved");
                return Err(Reject::new(ErrorCode::StoreUnavailable).retry_after(RETRY_AFTER_SECS));
            }
        }
        let release = |reason: Reason| {
            let store = Arc::clone(&rt.store);
            async move {
                let next = PaymentState::Failed {
                    reason,
                    retryable: true,
                };
                if let Err(e) = store.transition(&key, next).await {
                    tracing::error!(error = %e, "x402 reservation could not be released");
                }
            }
        };
        let resp = match self
            .forward(parts, body, remote, rid, route, &route.upstream, None, host)
            .await
        {
            Ok(r) => r,
            Err(rej) => {
                release(Reason::SettlementUnavailable).await;
                return Err(rej);
            }
        };
        let payer = format!("{:#x}", v.payer);
        if resp.status().is_server_error() {
            // Not served: not settled; the same payment may be presented again.
            release(Reason::SettlementUnavailable).await;
            return Ok((
                resp,
                Paid {
                    response: settle_response(false, "", None),
                    version: 0,
                    payer,
                },
            ));
        }
        if let Err(e) = rt.store.transition(&key, PaymentState::Settling).await {
            tracing::error!(request_id = %rid, error = %e, "x402 settlement could not be recorded");
            release(Reason::SettlementUnavailable).await;
            return Err(Reject::new(ErrorCode::StoreUnavailable).retry_after(RETRY_AFTER_SECS));
        }
        // On its own task: a client disconnect must not leave a half-known payment behind.
        let settlers = Arc::clone(&rt.settlers);
        let store = Arc::clone(&rt.store);
        let settle = async move {
            let result = settlers.settle(&job).await;
            let next = match &result {
                Ok(SettleOutcome::Settled { tx }) => PaymentState::Settled { tx: tx.clone() },
                Ok(SettleOutcome::Pending { tx }) => PaymentState::Pending { tx: tx.clone() },
                Err(f) => PaymentState::Failed {
                    reason: f.reason,
                    retryable: f.retryable,
                },
            };
            if let Err(e) = store.transition(&key, next).await {
                tracing::error!(error = %e, "could not record x402 settlement outcome");
            }
            result
        };
        let task = match &rt.background {
            Some(h) => h.spawn(settle),
            None => tokio::spawn(settle),
        };
        match task.await {
            Ok(Ok(SettleOutcome::Settled { tx })) => Ok((
                resp,
                Paid {
                    response: settle_response(true, &tx, None),
                    version,
                    payer,
                },
            )),
            Ok(Ok(SettleOutcome::Pending { tx })) => Err(pending_reject(
                &settle_response(false, &tx, Some(Reason::SettlementPending)),
                version,
            )),
            Ok(Err(f)) if f.reason.is_client_error() => {
                tracing::info!(request_id = %rid, reason = f.reason.as_str(), detail = %f.detail, "x402 settlement refused after the response");
                let code = match f.reason {
                    Reason::SettlementFailed | Reason::FacilitatorRejected => {
                        ErrorCode::PaymentSettlementFailed
                    }
                    Reason::NonceAlreadyUsed => ErrorCode::PaymentAlreadyUsed,
                    _ => ErrorCode::PaymentInvalid,
                };
                Err(refuse(f.reason, code))
            }
            Ok(Err(f)) => {
                tracing::warn!(request_id = %rid, reason = f.reason.as_str(), detail = %f.detail, "x402 settlement unavailable");
                Err(unavailable(f.reason))
            }
            Err(_) => Err(pending_reject(
                &settle_response(false, "", Some(Reason::SettlementPending)),
                version,
            )),
        }
    }

    fn x402_duplicate(
        &self,
        rec: StoredPayment,
        digest: tollgate_x402::alloy::primitives::B256,
        settle_response: &dyn Fn(bool, &str, Option<Reason>) -> SettleResponse,
        version: u8,
        refuse: &dyn Fn(Reason, ErrorCode) -> Reject,
    ) -> Reject {
        if rec.fingerprint != digest {
            return refuse(Reason::PaymentConflict, ErrorCode::PaymentAlreadyUsed);
        }
        match rec.state {
            PaymentState::Settled { tx } => with_settlement(
                refuse(Reason::NonceAlreadyUsed, ErrorCode::PaymentAlreadyUsed),
                &settle_response(true, &tx, None),
                version,
            ),
            PaymentState::Pending { tx } => pending_reject(
                &settle_response(false, &tx, Some(Reason::SettlementPending)),
                version,
            ),
            PaymentState::Verified | PaymentState::Settling => {
                refuse(Reason::NonceAlreadyUsed, ErrorCode::PaymentAlreadyUsed)
                    .detail("in_flight", true)
            }
            PaymentState::Failed { reason, .. } => {
                let code = if reason == Reason::SettlementFailed {
                    ErrorCode::PaymentSettlementFailed
                } else {
                    ErrorCode::PaymentInvalid
                };
                refuse(reason, code)
            }
        }
    }

    /// Attach the settlement to the upstream response, record usage (and the
    /// payment-identifier outcome), and release it.
    #[allow(clippy::too_many_arguments)]
    async fn x402_finish(
        &self,
        resp: Response<crate::connpool::UpstreamBody>,
        paid: Paid,
        guard: Option<(IdemGuard, String)>,
        rid: &str,
        route: &Route,
        req_bytes: u64,
        snap: &Arc<Snapshot>,
    ) -> Result<Response<Body>, Reject> {
        let (mut head, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let status = head.status.as_u16();
        let mut body = crate::respond::streamed(incoming);
        let charged = paid.version != 0;
        if charged {
            if let Some((k, v)) = settlement_header(&paid.response, paid.version) {
                head.headers.insert(k, v);
            }
            let (k, v) = expose();
            head.headers.insert(k, v);
        }
        let now_ms = self.store.clock().now_ms();
        let usage = UsageRecord {
            charge_id: format!("x402:{rid}"),
            request_id: rid.to_string(),
            tenant_seq: 0,
            consumer_seq: 0,
            key_id: Some(format!("x402:{}", paid.payer)),
            route: route.cfg.id.clone(),
            status,
            requests: 1,
            bytes: req_bytes as i64,
            cost: 0,
            charged,
            occurred_ms: now_ms,
        };
        match guard {
            Some((g, id)) if charged => {
                let max = snap.config.store.idempotency_max_body_bytes;
                let (kept, b) = crate::body::keep_prefix(body, max).await;
                body = b;
                let headers: Vec<(String, String)> = head
                    .headers
                    .iter()
                    .filter(|(k, _)| *k != header::CONTENT_LENGTH && *k != header::DATE)
                    .filter_map(|(k, v)| {
                        v.to_str()
                            .ok()
                            .map(|v| (k.as_str().to_string(), v.to_string()))
                    })
                    .collect();
                let rec = IdemRecord {
                    consumer_seq: PAYMENT_ID_SEQ,
                    key: format!("x402:{id}"),
                    fingerprint: g.fingerprint(),
                    status,
                    headers,
                    body: kept.map(|b| b.to_vec()),
                    created_ms: now_ms,
                };
                let op = Op::Charge {
                    usage: Box::new(usage),
                    entries: Vec::new(),
                    idem: Some(Box::new(rec.clone())),
                };
                match self.store.journal.write(op).await {
                    Ok(()) => g.complete(StoredResponse {
                        status: rec.status,
                        headers: rec.headers,
                        body: rec.body,
                        created_ms: rec.created_ms,
                    }),
                    Err(e) => {
                        tracing::error!(request_id = %rid, error = %e, "payment-identifier outcome could not be stored")
                    }
                }
            }
            _ => self.x402_usage_record(usage, rid),
        }
        Ok(Response::from_parts(head, body))
    }

    fn x402_usage(&self, rid: &str, route: &Route, status: u16, payer: &str, charged: bool) {
        let usage = UsageRecord {
            charge_id: format!("x402:{rid}"),
            request_id: rid.to_string(),
            tenant_seq: 0,
            consumer_seq: 0,
            key_id: Some(format!("x402:{payer}")),
            route: route.cfg.id.clone(),
            status,
            requests: 1,
            bytes: 0,
            cost: 0,
            charged,
            occurred_ms: self.store.clock().now_ms(),
        };
        self.x402_usage_record(usage, rid);
    }

    fn x402_usage_record(&self, usage: UsageRecord, rid: &str) {
        if let Err(e) = self.store.journal.write_nowait(Op::Charge {
            usage: Box::new(usage),
            entries: Vec::new(),
            idem: None,
        }) {
            tracing::error!(request_id = %rid, error = %e, "x402 usage record could not be queued");
        }
    }
}
