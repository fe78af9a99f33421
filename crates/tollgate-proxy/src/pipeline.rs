//! The request pipeline, outermost first:
//! request id → head limits (431/413) → built-in routes → route lookup → authenticate →
//! rate limit → idempotency → payment gate (subscription → entitlement → quota → cap →
//! balance, reserved all or nothing) → rewrite for upstream → upstream call → settle (charge
//! actual, release the rest; durable before the response is released in strict mode) →
//! stream back. Errors become the contract body in [`crate::respond`] only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use tollgate_core::config::{Durability, Overage};
use tollgate_core::{ErrorCode, Money};
use tollgate_store::{
    Actual, Denied, Hold, IdemGuard, IdemLookup, IdemRecord, KeyEntry, Op, Store, StoredResponse,
    UsageRecord,
};

use crate::body::{limited, replay_body};
use crate::connpool::UpstreamBody;
use crate::policy::{self, Remedy};
use crate::ratelimit;
use crate::respond::{full, Body, Reject};
use crate::snapshot::{Route, Snapshot, Target, Upstream};

/// Shared state of the proxy.
pub struct Gateway {
    /// The current configuration snapshot.
    pub snapshot: ArcSwap<Snapshot>,
    /// Ledger, directory, journal.
    pub store: Arc<Store>,
    /// x402 settlement (None without `[x402]`).
    pub x402: arc_swap::ArcSwapOption<crate::x402::X402Runtime>,
    rid_prefix: String,
    rid_counter: AtomicU64,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static X_COST: HeaderName = HeaderName::from_static("x-tollgate-cost");
static X_BALANCE: HeaderName = HeaderName::from_static("x-tollgate-balance");
static X_QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-tollgate-quota-remaining");
static X_QUOTA_RESET: HeaderName = HeaderName::from_static("x-tollgate-quota-reset");
static X_QUOTA_WARNING: HeaderName = HeaderName::from_static("x-tollgate-quota-warning");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Hop-by-hop headers never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than eight removals.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    for n in connection_listed(h) {
        h.remove(n);
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// The header names a `Connection` header of `h` lists (hop-by-hop as well).
fn connection_listed(h: &HeaderMap) -> Vec<HeaderName> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// `prefix` then `n` as ten or more lower-case hex digits: the text of `{prefix}{n:010x}`,
/// without the formatting machinery (every request makes one).
fn request_id_text(prefix: &str, n: u64) -> String {
    if n >= 1 << 40 {
        return format!("{prefix}{n:010x}");
    }
    let mut s = String::with_capacity(prefix.len() + 10);
    s.push_str(prefix);
    for i in (0..10).rev() {
        s.push(char::from(
            b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize],
        ));
    }
    s
}

/// What a request carries through the pipeline after admission.
struct Admitted {
    key: Arc<KeyEntry>,
    hold: Option<Hold>,
    gate: Option<policy::Gate>,
    charge_id: String,
    idem: Option<IdemGuard>,
    upstream: Arc<Upstream>,
    req_bytes: u64,
    quota_limit: Option<u64>,
    /// Plan id of the subscription as read at admission (for the upstream's identity headers).
    plan: Arc<str>,
}

impl Gateway {
    /// A gateway over `store` with the compiled `snapshot`.
    pub fn new(snapshot: Snapshot, store: Arc<Store>) -> Arc<Gateway> {
        let rid_prefix: String = {
            use rand::Rng;
            let mut r = rand::thread_rng();
            (0..10)
                .map(|_| char::from(b"0123456789abcdefghjkmnpqrstvwxyz"[r.gen_range(0..32)]))
                .collect()
        };
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            store,
            x402: arc_swap::ArcSwapOption::empty(),
            rid_prefix,
            rid_counter: AtomicU64::new(1),
        })
    }

    fn request_id(&self) -> String {
        request_id_text(
            &self.rid_prefix,
            self.rid_counter.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Handle one request; never fails (errors are rendered into responses).
    pub async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<Body> {
        let rid = self.request_id();
        let snap = self.snapshot.load_full();
        // A refusal may leave a request body unread; an HTTP/1 connection is then closed after
        // the response, and saying so keeps clients from reusing it for their next request.
        let unread_body = req.version() < http::Version::HTTP_2
            && (req.headers().contains_key(header::TRANSFER_ENCODING)
                || req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() != b"0"));
        let mut resp = match self.process(req, remote, &rid, &snap).await {
            Ok(r) => r,
            Err(rej) => {
                if rej.code == ErrorCode::Internal {
                    tracing::error!(request_id = %rid, "internal error");
                }
                let mut r = rej.into_response(&rid, &snap.config.server.docs_url);
                if unread_body {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                r
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        resp
    }

    async fn process(
        self: &Arc<Self>,
        req: Request<Incoming>,
        remote: SocketAddr,
        rid: &str,
        snap: &Arc<Snapshot>,
    ) -> Result<Response<Body>, Reject> {
        let server = &snap.config.server;
        // Head limits.
        let head_bytes: usize = uri_len(req.uri())
            + req
                .headers()
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if head_bytes > server.max_header_bytes {
            return Err(Reject::new(ErrorCode::HeadersTooLarge)
                .detail("limit_bytes", server.max_header_bytes));
        }
        let declared_len = match req.headers().get(header::CONTENT_LENGTH) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        Reject::new(ErrorCode::BadRequest)
                            .detail("reason", "invalid Content-Length")
                    })?,
            ),
            None => None,
        };
        if declared_len.is_some_and(|l| l > server.max_body_bytes) {
            return Err(Reject::new(ErrorCode::PayloadTooLarge)
                .detail("limit_bytes", server.max_body_bytes));
        }
        let path = req.uri().path();
        if let Some(r) = builtin(path) {
            return Ok(r);
        }
        let host = host_of(&req);
        if path == "/.well-known/x402" {
            let raw_host = req
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()));
            return Ok(crate::x402::discovery(snap, raw_host.as_deref()));
        }
        let Some(route) = snap.route(host.as_deref(), path, req.method()).cloned() else {
            return Err(Reject::new(ErrorCode::NotFound).detail("path", path.to_string()));
        };
        if route.x402.is_some() {
            let h = req.headers();
            if h.contains_key(&crate::x402::PAYMENT_SIGNATURE)
                || h.contains_key(&crate::x402::X_PAYMENT)
            {
                // Boxed: the x402 path's state is large and rare; unboxed it would size (and
                // be copied with) every request's future.
                return Box::pin(self.x402_request(
                    req,
                    remote,
                    rid,
                    snap,
                    &route,
                    host.as_deref(),
                ))
                .await;
            }
            // Without a payment: an API key still pays on a non-public route.
            if route.cfg.public
                || !(h.contains_key(header::AUTHORIZATION) || h.contains_key(&X_API_KEY))
            {
                return Err(self.x402_challenge(&req, &route));
            }
        }
        if route.cfg.public {
            let (parts, body) = req.into_parts();
            let body = ForwardBody::Stream(limited(body, server.max_body_bytes));
            let resp = self
                .forward(
                    &parts,
                    body,
                    remote,
                    rid,
                    &route,
                    &route.upstream,
                    None,
                    host.as_deref(),
                )
                .await?;
            let mut r = resp.map(crate::respond::streamed);
            strip_hop_by_hop(r.headers_mut());
            return Ok(r);
        }
        let now_ms = self.store.clock().now_ms();
        let key = self.authenticate(&req, now_ms)?;
        let consumer = Arc::clone(&key.consumer);
        let sub = consumer.state.lock().sub.clone();
        let Some(plan) = snap.plans.get(sub.plan.as_ref()).cloned() else {
            return Err(Reject::new(ErrorCode::Forbidden)
                .detail("reason", "plan_not_configured")
                .detail("current_plan", sub.plan.as_ref()));
        };
        // Rate limit (transient, 429) before anything that costs.
        if let Some((t, tau, rl)) = plan.gcra() {
            let cell = match rl.scope {
                tollgate_core::config::RateScope::Key => &key.rate_tat,
                tollgate_core::config::RateScope::Consumer => &consumer.rate_tat,
            };
            if let Err(wait_ns) = ratelimit::gcra(cell, t, tau, ratelimit::now_ns()) {
                let secs = wait_ns.div_ceil(1_000_000_000);
                return Err(Reject::new(ErrorCode::RateLimited)
                    .detail(
                        "scope",
                        if rl.scope == tollgate_core::config::RateScope::Key {
                            "key"
                        } else {
                            "consumer"
                        },
                    )
                    .detail("retry_after_ms", wait_ns.div_ceil(1_000_000))
                    .retry_after(secs));
            }
        }
        self.check_backlog(snap)?;
        // Idempotency: buffer the body to fingerprint the request.
        let (parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut buffered: Option<Bytes> = None;
        let mut idem = None;
        let mut charge_id = rid.to_string();
        if let Some(ik) = parts.headers.get(&IDEMPOTENCY_KEY) {
            let ik = ik
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 255)
                .ok_or_else(|| {
                    Reject::new(ErrorCode::BadRequest).detail(
                        "reason",
                        "Idempotency-Key must be 1-255 visible ASCII characters",
                    )
                })?
                .to_string();
            let Some(b) = body.take() else {
                return Err(Reject::new(ErrorCode::Internal));
            };
            let bytes = Limited::new(b, server.max_body_bytes as usize)
                .collect()
                .await
                .map_err(|_| {
                    Reject::new(ErrorCode::PayloadTooLarge)
                        .detail("limit_bytes", server.max_body_bytes)
                })?
                .to_bytes();
            let mut h = Sha256::new();
            h.update(parts.method.as_str());
            h.update([0]);
            h.update(
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/"),
            );
            h.update([0]);
            h.update(&bytes);
            let fp: [u8; 32] = h.finalize().into();
            match self.store.idem.begin(consumer.seq, &ik, fp) {
                IdemLookup::Replay(stored) => return Ok(replay(&stored)),
                IdemLookup::Conflict => return Err(Reject::new(ErrorCode::IdempotencyConflict)),
                IdemLookup::InProgress => {
                    return Err(Reject::new(ErrorCode::IdempotencyInProgress).retry_after(1))
                }
                IdemLookup::Proceed(g) => idem = Some(g),
            }
            charge_id = format!("idem:{}:{}", consumer.seq, ik);
            buffered = Some(bytes);
        }
        let req_bytes = buffered
            .as_ref()
            .map(|b| b.len() as u64)
            .or(declared_len)
            .unwrap_or(0);

        // Payment gate.
        policy::check_subscription(&sub, now_ms)
            .map_err(|r| self.with_remedy(r, &consumer.tenant.id, &plan))?;
        let now = self.store.clock().now();
        let mut upstream = Arc::clone(&route.upstream);
        let mut gate = policy::build(&plan, &route, &key, &consumer, &sub, req_bytes, now, false)
            .map_err(|r| self.with_remedy(r, &consumer.tenant.id, &plan))?;
        let hold = match self
            .store
            .ledger
            .reserve(&consumer, gate.spec.clone(), now_ms)
        {
            Ok(h) => h,
            Err(Denied::Limit { acct, .. })
                if matches!(
                    acct.kind,
                    tollgate_store::AcctKind::QuotaRequests | tollgate_store::AcctKind::QuotaBytes
                ) && plan.overage() != Overage::Block =>
            {
                if plan.overage() == Overage::Degrade {
                    if let Some(d) = &plan.degrade {
                        upstream = Arc::clone(d);
                    }
                }
                gate = policy::build(&plan, &route, &key, &consumer, &sub, req_bytes, now, true)
                    .map_err(|r| self.with_remedy(r, &consumer.tenant.id, &plan))?;
                self.store
                    .ledger
                    .reserve(&consumer, gate.spec.clone(), now_ms)
                    .map_err(|d| self.deny(d, &gate, &plan, &consumer.tenant.id, now))?
            }
            Err(d) => return Err(self.deny(d, &gate, &plan, &consumer.tenant.id, now)),
        };
        let quota_limit = plan.cfg.quotas.requests;
        let adm = Admitted {
            key,
            hold: Some(hold),
            gate: Some(gate),
            charge_id,
            idem,
            upstream,
            req_bytes,
            quota_limit,
            plan: Arc::clone(&sub.plan),
        };
        let fbody = match (buffered, body) {
            (Some(b), _) => ForwardBody::Full(b),
            (None, Some(body)) => ForwardBody::Stream(limited(body, server.max_body_bytes)),
            (None, None) => ForwardBody::Full(Bytes::new()),
        };
        self.forward_governed(
            parts,
            fbody,
            remote,
            rid,
            &route,
            adm,
            host.as_deref(),
            snap,
        )
        .await
    }

    fn remedy_urls(
        &self,
        tenant_id: &str,
        plan: &crate::snapshot::Plan,
    ) -> (Option<String>, Option<String>) {
        let t = self.store.dir.tenant(tenant_id);
        let up = t
            .as_ref()
            .and_then(|t| t.upgrade_url.as_deref().map(str::to_string))
            .or_else(|| plan.cfg.upgrade_url.clone());
        let top = t
            .as_ref()
            .and_then(|t| t.top_up_url.as_deref().map(str::to_string))
            .or_else(|| plan.cfg.top_up_url.clone());
        (up, top)
    }

    fn with_remedy(&self, r: Reject, tenant_id: &str, plan: &crate::snapshot::Plan) -> Reject {
        let (up, _) = self.remedy_urls(tenant_id, plan);
        match r.code {
            ErrorCode::PlanUpgradeRequired => {
                let up2 = up.clone();
                r.detail_opt("upgrade_url", up)
                    .link(up2.as_deref(), "payment")
            }
            ErrorCode::SubscriptionInactive | ErrorCode::ApprovalPending => {
                let contact = self
                    .store
                    .dir
                    .tenant(tenant_id)
                    .and_then(|t| t.contact_email.as_deref().map(str::to_string));
                r.detail_opt("contact_email", contact)
            }
            _ => r,
        }
    }

    fn deny(
        &self,
        d: Denied,
        gate: &policy::Gate,
        plan: &crate::snapshot::Plan,
        tenant_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Reject {
        let (up, top) = self.remedy_urls(tenant_id, plan);
        let snap = self.snapshot.load();
        let remedy = Remedy {
            upgrade_url: up.as_deref(),
            top_up_url: top.as_deref(),
            currency: &snap.config.server.currency,
        };
        policy::explain(d, gate, plan, now, &remedy)
    }

    /// Refuse a new charge while the database is more than `store.max_backlog_records` behind
    /// the charge log (the records in between wait in memory): 503 until it catches up.
    pub(crate) fn check_backlog(&self, snap: &Snapshot) -> Result<(), Reject> {
        let limit = snap.config.store.max_backlog_records;
        if limit > 0 && self.store.journal.backlog() > limit {
            return Err(Reject::new(ErrorCode::StoreUnavailable)
                .detail("reason", "ledger_backlog")
                .retry_after(1));
        }
        Ok(())
    }

    fn authenticate(&self, req: &Request<Incoming>, now_ms: i64) -> Result<Arc<KeyEntry>, Reject> {
        let presented = match req.headers().get(header::AUTHORIZATION) {
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| unauth(tollgate_store::AuthError::Malformed))?;
                let (scheme, rest) = s
                    .split_once(' ')
                    .ok_or_else(|| unauth(tollgate_store::AuthError::Malformed))?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(unauth(tollgate_store::AuthError::Malformed)
                        .detail("hint", "use the Bearer scheme"));
                }
                rest.trim()
            }
            None => match req.headers().get(&X_API_KEY) {
                Some(v) => v
                    .to_str()
                    .map_err(|_| unauth(tollgate_store::AuthError::Malformed))?
                    .trim(),
                None => return Err(unauth(tollgate_store::AuthError::Missing)),
            },
        };
        self.store
            .dir
            .authenticate(presented, now_ms)
            .map_err(unauth)
    }

    /// Send the request to `up` and return the upstream response head with its body, or a
    /// rejection for a refused connection (502) or a timeout (504). Only requests whose body
    /// can be sent again (buffered or empty) are retried, once, on another target, and only
    /// when the connection could not be made (nothing reached the upstream).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn forward(
        &self,
        parts: &http::request::Parts,
        body: ForwardBody,
        remote: SocketAddr,
        rid: &str,
        route: &Route,
        up: &Upstream,
        who: Option<(&str, &str, &str)>,
        host: Option<&str>,
    ) -> Result<Response<UpstreamBody>, Reject> {
        let attempts = if body.replayable() {
            up.targets.len().min(2)
        } else {
            1
        };
        let mut body = Some(body);
        let mut last_err = Reject::new(ErrorCode::UpstreamUnavailable);
        for attempt in 0..attempts {
            let now_ms = self.store.clock().now_ms();
            let idx = up.pick(now_ms);
            let target = &up.targets[idx];
            let uri = uri_for(target, route, &parts.uri)?;
            let b = match body.take() {
                Some(ForwardBody::Full(bytes)) => {
                    if attempt + 1 < attempts {
                        body = Some(ForwardBody::Full(bytes.clone()));
                    }
                    full(bytes)
                }
                Some(ForwardBody::Stream(s)) => s,
                None => full(Bytes::new()),
            };
            let mut out = Request::new(b);
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.headers_mut() =
                upstream_headers(parts, remote, rid, route, who, host, &target.authority);
            let res = tokio::time::timeout(
                up.request_timeout,
                up.pool(idx)
                    .send(&target.authority, up.connect_timeout, out),
            )
            .await;
            match res {
                Ok(Ok(resp)) => {
                    up.report(idx, !resp.status().is_server_error(), now_ms);
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    up.report(idx, false, now_ms);
                    tracing::warn!(request_id = %rid, upstream = %up.name, error = %e, "upstream call failed");
                    if crate::body::is_length_limit(&e) {
                        return Err(Reject::new(ErrorCode::PayloadTooLarge));
                    }
                    let connect = e.is_connect();
                    last_err = Reject::new(ErrorCode::UpstreamUnavailable)
                        .detail("upstream", up.name.as_str());
                    if !connect {
                        return Err(last_err);
                    }
                }
                Err(_) => {
                    up.report(idx, false, now_ms);
                    return Err(Reject::new(ErrorCode::UpstreamTimeout)
                        .detail("upstream", up.name.as_str())
                        .detail("timeout_ms", up.request_timeout.as_millis() as u64));
                }
            }
        }
        Err(last_err)
    }

    /// Forward an admitted request, then settle or release its hold.
    #[allow(clippy::too_many_arguments)]
    async fn forward_governed(
        self: &Arc<Self>,
        parts: http::request::Parts,
        body: ForwardBody,
        remote: SocketAddr,
        rid: &str,
        route: &Arc<Route>,
        mut adm: Admitted,
        host: Option<&str>,
        snap: &Arc<Snapshot>,
    ) -> Result<Response<Body>, Reject> {
        let consumer = Arc::clone(&adm.key.consumer);
        let plan_id = Arc::clone(&adm.plan);
        let who = (
            consumer.tenant.id.as_ref(),
            consumer.id.as_ref(),
            plan_id.as_ref(),
        );
        let upstream = Arc::clone(&adm.upstream);
        let result = self
            .forward(&parts, body, remote, rid, route, &upstream, Some(who), host)
            .await;
        let store_cfg = &snap.config.store;
        let now_ms = self.store.clock().now_ms();
        let resp = match result {
            Err(rej) => {
                // Refused connection or timeout: never charged; the hold is released.
                drop(adm.hold.take());
                self.record_uncharged(&adm, rid, route, 0, now_ms);
                return Err(rej);
            }
            Ok(r) => r,
        };
        let status = resp.status();
        if status.is_server_error() && !store_cfg.charge_server_errors {
            drop(adm.hold.take());
            self.record_uncharged(&adm, rid, route, status.as_u16(), now_ms);
            let mut r = resp.map(crate::respond::streamed);
            r.headers_mut()
                .insert(X_COST.clone(), HeaderValue::from_static("0.00"));
            strip_hop_by_hop(r.headers_mut());
            return Ok(r);
        }
        let (mut head, incoming) = resp.into_parts();
        strip_hop_by_hop(&mut head.headers);
        let resp_len = head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        // With an Idempotency-Key the response is kept to replay it, so read it first.
        let mut kept: Option<Option<Bytes>> = None;
        let mut body = crate::respond::streamed(incoming);
        if adm.idem.is_some() {
            let (k, b) = crate::body::keep_prefix(body, store_cfg.idempotency_max_body_bytes).await;
            kept = Some(k);
            body = b;
        }
        let gate = adm.gate.take();
        let hold = adm.hold.take();
        let mut headers_out: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(6);
        let mut meter_bytes = None;
        if let (Some(gate), Some(hold)) = (gate, hold) {
            if kept.is_none() && resp_len.is_none() {
                meter_bytes = gate
                    .bytes_leg
                    .and_then(|i| gate.spec.legs.get(i))
                    .map(|l| l.acct);
            }
            let resp_bytes = kept
                .as_ref()
                .and_then(|k| k.as_ref().map(|b| b.len() as u64))
                .or(resp_len)
                .unwrap_or(0);
            let mut legs = Vec::with_capacity(gate.spec.legs.len());
            for (i, l) in gate.spec.legs.iter().enumerate() {
                let v = if Some(i) == gate.quota_leg {
                    1
                } else if Some(i) == gate.bytes_leg {
                    (adm.req_bytes + resp_bytes) as i64
                } else {
                    l.amount
                };
                legs.push(v);
            }
            let tenant_legs = gate.spec.tenant_legs.iter().map(|l| l.amount).collect();
            let cost = gate.price;
            let posting = hold.settle(&Actual {
                cost: cost.micros(),
                legs,
                tenant_legs,
            });
            let usage = UsageRecord {
                charge_id: adm.charge_id.clone(),
                request_id: rid.to_string(),
                tenant_seq: consumer.tenant.seq,
                consumer_seq: consumer.seq,
                key_id: Some(adm.key.id.to_string()),
                route: route.cfg.id.clone(),
                status: status.as_u16(),
                requests: 1,
                bytes: (adm.req_bytes + resp_bytes) as i64,
                cost: cost.micros(),
                charged: true,
                occurred_ms: now_ms,
            };
            headers_out.push((X_COST.clone(), money_header(cost)));
            headers_out.push((
                X_BALANCE.clone(),
                money_header(Money(posting.balance_after)),
            ));
            if let (Some(qi), Some(limit)) = (gate.quota_leg, adm.quota_limit) {
                let used = posting.legs_after.get(qi).copied().unwrap_or(0).max(0) as u64;
                let remaining = limit.saturating_sub(used);
                let reset_secs = (gate.period.end.timestamp_millis() - now_ms).max(0) / 1000;
                let window = (gate.period.end - gate.period.start).num_seconds();
                push_header(
                    &mut headers_out,
                    &RATELIMIT_POLICY,
                    &[("\"quota\";q=", limit), (";w=", window.max(0) as u64)],
                );
                push_header(
                    &mut headers_out,
                    &RATELIMIT,
                    &[("\"quota\";r=", remaining), (";t=", reset_secs as u64)],
                );
                push_header(&mut headers_out, &X_QUOTA_REMAINING, &[("", remaining)]);
                headers_out.push((X_QUOTA_RESET.clone(), gate.period_end.clone()));
                if limit > 0 && used * 10 >= limit * 9 {
                    headers_out.push((X_QUOTA_WARNING.clone(), HeaderValue::from_static("90")));
                } else if limit > 0 && used * 10 >= limit * 8 {
                    headers_out.push((X_QUOTA_WARNING.clone(), HeaderValue::from_static("80")));
                }
            }
            let idem_rec = match (&adm.idem, &kept) {
                (Some(g), Some(k)) => Some(Box::new(IdemRecord {
                    consumer_seq: consumer.seq,
                    key: adm
                        .charge_id
                        .rsplit_once(':')
                        .map(|(_, k)| k.to_string())
                        .unwrap_or_default(),
                    fingerprint: g.fingerprint(),
                    status: status.as_u16(),
                    headers: replay_headers(&head.headers, &headers_out),
                    body: k.as_ref().map(|b| b.to_vec()),
                    created_ms: now_ms,
                })),
                _ => None,
            };
            let op = Op::Charge {
                usage: Box::new(usage),
                entries: posting.entries.clone(),
                idem: idem_rec.clone(),
            };
            if self.store.durability == Durability::Strict {
                if let Err(e) = self.store.journal.write(op).await {
                    tollgate_store::ledger::revert_posting(&consumer, &posting);
                    tracing::error!(request_id = %rid, error = %e, "charge could not be made durable");
                    return Err(Reject::new(ErrorCode::StoreUnavailable).retry_after(5));
                }
            } else if let Err(e) = self.store.journal.write_nowait(op) {
                tracing::error!(request_id = %rid, error = %e, "charge could not be queued");
            }
            if let (Some(g), Some(rec)) = (adm.idem.take(), idem_rec) {
                g.complete(StoredResponse {
                    status: rec.status,
                    headers: rec.headers,
                    body: rec.body,
                    created_ms: rec.created_ms,
                });
            }
        }
        if let Some(acct) = meter_bytes {
            // The response's length was not known when it was charged: count it as it streams.
            let journal = self.store.journal.clone();
            let consumer = Arc::clone(&consumer);
            let charge_id = adm.charge_id.clone();
            body = crate::body::Metered::new(body, move |n| {
                if let Some(e) = tollgate_store::ledger::post_units(&consumer, acct, n as i64, 200)
                {
                    let op = Op::Entries {
                        charge_id,
                        occurred_ms: now_ms,
                        entries: vec![e],
                    };
                    if let Err(e) = journal.write_nowait(op) {
                        tracing::error!(error = %e, "streamed byte count could not be queued");
                    }
                }
            })
            .boxed();
        }
        let mut r = Response::from_parts(head, body);
        r.headers_mut().reserve(headers_out.len() + 1);
        for (k, v) in headers_out {
            r.headers_mut().insert(k, v);
        }
        Ok(r)
    }

    fn record_uncharged(&self, adm: &Admitted, rid: &str, route: &Route, status: u16, now_ms: i64) {
        let c = &adm.key.consumer;
        let usage = UsageRecord {
            charge_id: format!("nocharge:{rid}"),
            request_id: rid.to_string(),
            tenant_seq: c.tenant.seq,
            consumer_seq: c.seq,
            key_id: Some(adm.key.id.to_string()),
            route: route.cfg.id.clone(),
            status,
            requests: 1,
            bytes: adm.req_bytes as i64,
            cost: 0,
            charged: false,
            occurred_ms: now_ms,
        };
        if let Err(e) = self.store.journal.write_nowait(Op::Charge {
            usage: Box::new(usage),
            entries: Vec::new(),
            idem: None,
        }) {
            tracing::error!(request_id = %rid, error = %e, "usage record could not be queued");
        }
    }
}

/// The request body to send upstream.
pub(crate) enum ForwardBody {
    /// Already read (idempotency) — can be sent again.
    Full(Bytes),
    /// Still streaming from the client.
    Stream(Body),
}

impl ForwardBody {
    fn replayable(&self) -> bool {
        matches!(self, ForwardBody::Full(_))
    }
}

fn money_header(m: Money) -> HeaderValue {
    HeaderValue::from_str(m.decimal().as_str()).unwrap_or_else(|_| HeaderValue::from_static("0.00"))
}

/// Push header `k` whose value is each text followed by its number (`r=5;t=60`), written
/// without the formatting machinery (several such headers go on every governed response).
fn push_header(v: &mut Vec<(HeaderName, HeaderValue)>, k: &HeaderName, parts: &[(&str, u64)]) {
    let mut out = Vec::with_capacity(32);
    let mut num = itoa::Buffer::new();
    for (text, n) in parts {
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(num.format(*n).as_bytes());
    }
    if let Ok(h) = HeaderValue::from_maybe_shared(bytes::Bytes::from(out)) {
        v.push((k.clone(), h));
    }
}

fn replay_headers(h: &HeaderMap, extra: &[(HeaderName, HeaderValue)]) -> Vec<(String, String)> {
    h.iter()
        .chain(extra.iter().map(|(k, v)| (k, v)))
        .filter(|(k, _)| *k != header::CONTENT_LENGTH && *k != header::DATE)
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
static XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
// Identity headers for the upstream, made once (a name made per request is validated each time).
static X_TOLLGATE_TENANT: HeaderName = HeaderName::from_static("x-tollgate-tenant");
static X_TOLLGATE_CONSUMER: HeaderName = HeaderName::from_static("x-tollgate-consumer");
static X_TOLLGATE_PLAN: HeaderName = HeaderName::from_static("x-tollgate-plan");

/// Headers for the upstream request: hop-by-hop removed, client credentials removed on
/// governed routes, identity and forwarding headers added, our own `x-tollgate-*` never
/// taken from the client.
fn upstream_headers(
    parts: &http::request::Parts,
    remote: SocketAddr,
    rid: &str,
    route: &Route,
    who: Option<(&str, &str, &str)>,
    host: Option<&str>,
    authority: &http::uri::Authority,
) -> HeaderMap {
    let src = &parts.headers;
    let listed = connection_listed(src);
    let hop_by_hop = |k: &HeaderName| HOP_BY_HOP.contains(k) || listed.contains(k);
    let keep_credentials = route.cfg.public;
    // Built in one pass, with room for what is added below, rather than cloned and then
    // trimmed: a clone has the client's capacity, so the headers added after it made the map
    // grow and rehash on every request.
    let mut h = HeaderMap::with_capacity(src.len() + 10);
    for (k, v) in src {
        let dropped = hop_by_hop(k)
            || k.as_str().starts_with("x-tollgate-")
            || (!keep_credentials && (k == header::AUTHORIZATION || k == X_API_KEY))
            || k == IDEMPOTENCY_KEY
            || k == crate::x402::PAYMENT_SIGNATURE
            || k == crate::x402::X_PAYMENT
            // Replaced below.
            || k == XFF
            || k == FORWARDED
            || k == XFP
            || k == header::HOST
            || k == X_REQUEST_ID;
        if !dropped {
            h.append(k.clone(), v.clone());
        }
    }
    let (xff, fwd) = forwarding(
        remote,
        host,
        src.get(&XFF)
            .filter(|_| !hop_by_hop(&XFF))
            .and_then(|v| v.to_str().ok()),
        src.get(&FORWARDED)
            .filter(|_| !hop_by_hop(&FORWARDED))
            .and_then(|v| v.to_str().ok()),
    );
    if let Some(v) = xff {
        h.insert(XFF.clone(), v);
    }
    h.insert(XFP.clone(), HeaderValue::from_static("http"));
    if let Some(v) = fwd {
        h.insert(FORWARDED.clone(), v);
    }
    if let Some(orig) = src.get(header::HOST) {
        h.insert(XFH.clone(), orig.clone());
    }
    if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
        h.insert(header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(rid) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    if let Some((tenant, consumer, plan)) = who {
        for (k, v) in [
            (&X_TOLLGATE_TENANT, tenant),
            (&X_TOLLGATE_CONSUMER, consumer),
            (&X_TOLLGATE_PLAN, plan),
        ] {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(k.clone(), v);
            }
        }
    }
    h
}

/// `X-Forwarded-For` and `Forwarded` for a request from `remote` to `host`, appended to what the
/// client sent. Without client values they depend on the client's address and the host alone,
/// which repeat from request to request, so each worker keeps the last pair it made.
fn forwarding(
    remote: SocketAddr,
    host: Option<&str>,
    prev_xff: Option<&str>,
    prev_fwd: Option<&str>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    type Last = Option<(std::net::IpAddr, Option<String>, HeaderValue, HeaderValue)>;
    thread_local! {
        static LAST: std::cell::RefCell<Last> = const { std::cell::RefCell::new(None) };
    }
    let ip = remote.ip();
    let fresh = prev_xff.is_none() && prev_fwd.is_none();
    if fresh {
        let hit = LAST.with_borrow(|last| match last {
            Some((i, h, x, f)) if *i == ip && h.as_deref() == host => Some((x.clone(), f.clone())),
            _ => None,
        });
        if let Some((x, f)) = hit {
            return (Some(x), Some(f));
        }
    }
    let ip_s = ip.to_string();
    let xff = match prev_xff {
        Some(prev) => format!("{prev}, {ip_s}"),
        None => ip_s.clone(),
    };
    let node = if remote.is_ipv6() {
        format!("\"[{ip_s}]\"")
    } else {
        ip_s
    };
    let fwd = match host {
        Some(hn) => format!("for={node};host={hn};proto=http"),
        None => format!("for={node};proto=http"),
    };
    let fwd = match prev_fwd {
        Some(prev) => format!("{prev}, {fwd}"),
        None => fwd,
    };
    let xff = HeaderValue::from_str(&xff).ok();
    let fwd = HeaderValue::from_str(&fwd).ok();
    if let (true, Some(x), Some(f)) = (fresh, &xff, &fwd) {
        let entry = (ip, host.map(str::to_string), x.clone(), f.clone());
        LAST.with_borrow_mut(|last| *last = Some(entry));
    }
    (xff, fwd)
}

/// Length of `uri` as written on the request line (origin form: path and query; absolute form:
/// scheme, authority, path and query), without formatting it.
fn uri_len(uri: &Uri) -> usize {
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path
}

fn unauth(e: tollgate_store::AuthError) -> Reject {
    Reject::new(ErrorCode::Unauthenticated).detail("reason", e.reason())
}

/// The request's host without port: from an absolute URI (HTTP/2, proxies) or `Host`.
fn host_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(h) = req.uri().host() {
        return Some(h.to_ascii_lowercase());
    }
    let value = req.headers().get(header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = value.parse().ok()?;
    Some(authority.host().to_ascii_lowercase())
}

fn builtin(path: &str) -> Option<Response<Body>> {
    match path {
        "/_tollgate/health" => {
            let mut r = Response::new(full(&b"{\"status\":\"ok\"}"[..]));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Some(r)
        }
        "/_tollgate/errors" => {
            let mut r = Response::new(full(tollgate_core::error::render_errors_doc()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/markdown; charset=utf-8"),
            );
            Some(r)
        }
        _ => None,
    }
}

pub(crate) fn replay(stored: &StoredResponse) -> Response<Body> {
    let mut r = Response::new(replay_body(stored.body.clone()));
    *r.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (k, v) in &stored.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    if stored.body.is_none() {
        r.headers_mut().insert(
            HeaderName::from_static("x-tollgate-replay-body"),
            HeaderValue::from_static("omitted"),
        );
    }
    r
}

/// The request target sent to `t` (HTTP/1.1 origin form: path and query; the
/// target's authority goes in `Host`): the target's base path, then the client's path (without
/// the route's prefix when it strips it) and query.
fn uri_for(t: &Target, route: &Route, orig: &Uri) -> Result<Uri, Reject> {
    let base_path = t.base.path().trim_end_matches('/');
    let client_pq = orig.path_and_query();
    if !route.cfg.strip_prefix && base_path.is_empty() {
        // The common case: the client's path and query as they are (no copy, no parse).
        return Ok(Uri::from(
            client_pq
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        ));
    }
    let pq = client_pq.map(|p| p.as_str()).unwrap_or("/");
    let pq = if route.cfg.strip_prefix {
        let prefix = route.cfg.path_prefix.trim_end_matches('/');
        let rest = pq.strip_prefix(prefix).unwrap_or(pq);
        if rest.is_empty() || rest.starts_with('?') {
            format!("/{rest}")
        } else {
            rest.to_string()
        }
    } else {
        pq.to_string()
    };
    format!("{base_path}{pq}")
        .parse()
        .map_err(|_| invalid_target())
}

fn invalid_target() -> Reject {
    Reject::new(ErrorCode::BadRequest).detail("reason", "invalid request target")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn forwarding_headers_append_to_the_clients_and_follow_address_and_host() {
        let v4: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let text = |p: (Option<HeaderValue>, Option<HeaderValue>)| {
            (
                p.0.unwrap().to_str().unwrap().to_string(),
                p.1.unwrap().to_str().unwrap().to_string(),
            )
        };
        // Twice each: the second answer may come from the worker's last pair.
        for _ in 0..2 {
            assert_eq!(
                text(forwarding(v4, Some("api.example"), None, None)),
                (
                    "10.1.2.3".to_string(),
                    "for=10.1.2.3;host=api.example;proto=http".to_string()
                )
            );
            assert_eq!(
                text(forwarding(v4, None, None, None)),
                (
                    "10.1.2.3".to_string(),
                    "for=10.1.2.3;proto=http".to_string()
                )
            );
            assert_eq!(
                text(forwarding(v6, Some("api.example"), None, None)),
                (
                    "2001:db8::1".to_string(),
                    "for=\"[2001:db8::1]\";host=api.example;proto=http".to_string()
                )
            );
        }
        assert_eq!(
            text(forwarding(
                v4,
                Some("api.example"),
                Some("192.0.2.7"),
                Some("for=192.0.2.7")
            )),
            (
                "192.0.2.7, 10.1.2.3".to_string(),
                "for=192.0.2.7, for=10.1.2.3;host=api.example;proto=http".to_string()
            )
        );
        // A client value never leaks into the next request's headers.
        assert_eq!(
            text(forwarding(v4, Some("api.example"), None, None)).0,
            "10.1.2.3"
        );
    }

    #[test]
    fn the_upstream_request_target_is_origin_form_with_base_path_and_stripped_prefix() {
        let cfg = tollgate_core::config::Config::from_toml(
            r#"
[[upstreams]]
name = "plain"
targets = ["http://127.0.0.1:1"]
[[upstreams]]
name = "based"
targets = ["http://127.0.0.1:2/base/"]
[[routes]]
id = "keep"
path_prefix = "/api"
upstream = "plain"
[[routes]]
id = "strip"
path_prefix = "/s/"
strip_prefix = true
upstream = "plain"
[[routes]]
id = "based"
path_prefix = "/b"
strip_prefix = true
upstream = "based"
"#,
        )
        .unwrap();
        let snap = Snapshot::compile(Arc::new(cfg)).unwrap();
        let target = |path: &str| {
            let uri: Uri = path.parse().unwrap();
            let route = snap.route(None, uri.path(), &http::Method::GET).unwrap();
            uri_for(&route.upstream.targets[0], route, &uri)
                .unwrap()
                .to_string()
        };
        assert_eq!(target("/api/v1/x?q=1"), "/api/v1/x?q=1");
        assert_eq!(target("/s/v1/x?q=1"), "/v1/x?q=1");
        assert_eq!(target("/s"), "/");
        assert_eq!(target("/s?q=1"), "/?q=1");
        assert_eq!(target("/b/x?q=1"), "/base/x?q=1");
        assert_eq!(target("/b"), "/base/");
    }

    #[test]
    fn uri_length_matches_the_written_form() {
        for u in [
            "/",
            "/data/x?y=1&z=2",
            "http://example.com/a/b?q",
            "https://example.com:8443/",
            "*",
            "example.com:443",
        ] {
            let uri: Uri = u.parse().unwrap();
            assert_eq!(uri_len(&uri), u.len(), "{u}");
        }
    }

    #[test]
    fn number_headers_read_as_their_texts_and_numbers() {
        let mut v = Vec::new();
        push_header(&mut v, &RATELIMIT, &[("\"quota\";r=", 5), (";t=", 86_400)]);
        push_header(&mut v, &X_QUOTA_REMAINING, &[("", u64::MAX)]);
        push_header(&mut v, &X_QUOTA_REMAINING, &[("", 0)]);
        let got: Vec<(&str, &str)> = v
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("ratelimit", "\"quota\";r=5;t=86400"),
                ("x-tollgate-quota-remaining", "18446744073709551615"),
                ("x-tollgate-quota-remaining", "0"),
            ]
        );
    }

    #[test]
    fn request_ids_read_as_prefix_and_ten_hex_digits() {
        for n in [0u64, 1, 0xabc, (1 << 40) - 1, 1 << 40, u64::MAX] {
            assert_eq!(request_id_text("p7", n), format!("p7{n:010x}"), "{n}");
        }
        assert_eq!(request_id_text("x", 255), "x00000000ff");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-drop"),
        );
        h.insert("x-drop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
        let mut clean = HeaderMap::new();
        clean.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut clean);
        assert_eq!(clean.len(), 1);
    }
}
