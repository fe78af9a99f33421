//! A small HTTP server selling one resource through a [`PaymentGate`] (settle-first), for
//! integration tests and the x402 benchmark. Not the gateway: no config, no routes table.
//!
//! - `GET|POST /paid…` — priced: 402 with `PAYMENT-REQUIRED` (and the challenge mirrored in the
//!   body), 200 with `PAYMENT-RESPONSE` once paid, 202 when settlement is pending, 503 with
//!   `Retry-After` when the settler is unavailable.
//! - `GET /served` — how many paid responses were served (JSON number).
//! - `GET /free` — 200, no payment.
//! - `GET /topup` — a contract 402 `INSUFFICIENT_FUNDS` with a `Link` remedy.
//! - `GET /quota-monthly` — a contract 402 `QUOTA_EXCEEDED` with `Retry-After: 86400`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tollgate_x402::codec::{
    encode_payment_required, EXPOSE_HEADERS, HEADER_PAYMENT_REQUIRED, HEADER_PAYMENT_SIGNATURE,
    HEADER_X_PAYMENT,
};
use tollgate_x402::{GateOutcome, PaymentGate, PricedRoute};

struct Shared {
    gate: PaymentGate,
    route: PricedRoute,
    base: String,
    served: AtomicU64,
    requests: AtomicU64,
}

/// A running paid server (stops when dropped).
pub struct PaidServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PaidServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PaidServer {
    /// Binds `127.0.0.1:0` and serves `route` through `gate`.
    pub async fn start(gate: PaymentGate, route: PricedRoute) -> std::io::Result<Self> {
        Self::start_on(
            "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            gate,
            route,
        )
        .await
    }

    /// Binds `addr` and serves `route` through `gate`.
    pub async fn start_on(
        addr: SocketAddr,
        gate: PaymentGate,
        route: PricedRoute,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let url = format!("http://{local}");
        let shared = Arc::new(Shared {
            gate,
            route,
            base: url.clone(),
            served: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/served", get(served))
            .route("/free", get(|| async { "free\n" }))
            .route("/topup", get(topup))
            .route("/quota-monthly", get(quota_monthly))
            .fallback(paid)
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, shared, task })
    }

    /// Paid responses served so far.
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// Requests to priced paths so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn served(State(s): State<Arc<Shared>>) -> Response {
    json(StatusCode::OK, s.served.load(Ordering::SeqCst).to_string())
}

async fn topup() -> Response {
    let mut r = json(
        StatusCode::PAYMENT_REQUIRED,
        r#"{"code":"INSUFFICIENT_FUNDS","message":"Your account balance is insufficient to cover the estimated cost of this request.","details":{"current_balance":"2.50","estimated_cost":"4.75","required_to_top_up":"2.25","currency":"USD","top_up_url":"https://portal.example/top-up","scope":"consumer"},"request_id":"t1"}"#.to_owned(),
    );
    r.headers_mut().insert(
        header::LINK,
        HeaderValue::from_static("<https://portal.example/top-up>; rel=\"payment\""),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn quota_monthly() -> Response {
    let mut r = json(
        StatusCode::PAYMENT_REQUIRED,
        r#"{"code":"QUOTA_EXCEEDED","message":"The quota of your plan for the current period is used up.","details":{"current_plan":"free","limit_type":"monthly_requests","limit":1000,"current_usage":1000,"upgrade_url":"https://portal.example/upgrade","scope":"consumer"},"request_id":"q1"}"#.to_owned(),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("86400"));
    r.headers_mut().insert(
        header::LINK,
        HeaderValue::from_static("<https://portal.example/upgrade>; rel=\"payment\""),
    );
    r
}

async fn paid(State(s): State<Arc<Shared>>, req: Request) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let resource = format!("{}{}", s.base, req.uri().path());
    let header = req
        .headers()
        .get(HEADER_PAYMENT_SIGNATURE)
        .or_else(|| req.headers().get(HEADER_X_PAYMENT))
        .map(|v| v.as_bytes().to_vec());
    let outcome = s.gate.process(&s.route, &resource, header.as_deref()).await;
    let status = StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = match &outcome {
        GateOutcome::Paid { payer, .. } => {
            let n = s.served.fetch_add(1, Ordering::SeqCst) + 1;
            json(
                status,
                format!(r#"{{"data":"premium","payer":"{payer}","served":{n}}}"#),
            )
        }
        GateOutcome::PaymentRequired {
            challenge, reason, ..
        } => {
            let mut body = serde_json::to_value(challenge).unwrap_or_default();
            if let (Some(obj), Some(r)) = (body.as_object_mut(), reason) {
                obj.insert("code".into(), "PAYMENT_INVALID".into());
                obj.insert(
                    "details".into(),
                    serde_json::json!({ "reason": r.as_str() }),
                );
            } else if let Some(obj) = body.as_object_mut() {
                obj.insert("code".into(), "PAYMENT_REQUIRED".into());
            }
            let mut r = json(status, body.to_string());
            if let Ok(h) = encode_payment_required(challenge) {
                if let Ok(v) = HeaderValue::from_str(&h) {
                    r.headers_mut().insert(HEADER_PAYMENT_REQUIRED, v);
                }
            }
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        GateOutcome::Pending { .. } => json(status, r#"{"code":"SETTLEMENT_PENDING"}"#.into()),
        GateOutcome::Unavailable { reason, .. } => {
            let mut r = json(
                status,
                format!(
                    r#"{{"code":"PAYMENT_PROVIDER_UNAVAILABLE","details":{{"reason":"{}"}}}}"#,
                    reason.as_str()
                ),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    };
    if let Ok(Some(v)) = outcome.payment_response_header() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut()
                .insert(outcome.payment_response_header_name(), v);
        }
    }
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    resp
}
