//! Whole-request tests of [`PayingClient`] against in-process servers: a [`PaidServer`] with a
//! fake settler (no chain) for x402, and a scripted server for contract 402s and 429s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::U256;
use alloy::signers::local::PrivateKeySigner;
use async_trait::async_trait;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tollgate_x402::price::{NetworkOffer, RoutePrice};
use tollgate_x402::{
    InMemoryPaymentStore, PaymentGate, PricedRoute, SettleFailure, SettleJob, SettleOutcome,
    Settler, SingleFlight, SystemClock, TokenAmount,
};

use crate::paid_server::PaidServer;
use crate::{
    ClientError, PayingClient, PaymentStatus, RecordingSleeper, Request, SpendPolicy, SpendState,
};

const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcaf784d7bf4f2ff80";

/// Settles everything, counting calls; `fail` makes it refuse as insufficient funds.
#[derive(Default)]
struct FakeSettler {
    calls: AtomicUsize,
    fail: bool,
}

#[async_trait]
impl Settler for FakeSettler {
    async fn settle(&self, _job: &SettleJob) -> Result<SettleOutcome, SettleFailure> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(SettleFailure {
                reason: tollgate_x402::Reason::InsufficientFunds,
                retryable: false,
                detail: "fake".into(),
            });
        }
        Ok(SettleOutcome::Settled {
            tx: format!("0x{:064x}", n + 1),
        })
    }
}

fn route(amount: u128) -> PricedRoute {
    RoutePrice {
        amount: Some(TokenAmount::from_u128(amount)),
        usd: None,
        offers: vec![NetworkOffer {
            network: "eip155:31337".into(),
            asset: Some(TOKEN.into()),
            pay_to: PAY_TO.into(),
            eip712_name: Some("USD Coin".into()),
            eip712_version: Some("2".into()),
            decimals: Some(6),
            max_timeout_seconds: 60,
        }],
        description: None,
        mime_type: None,
    }
    .compile()
    .unwrap()
}

async fn paid_server(amount: u128, settler: Arc<FakeSettler>) -> PaidServer {
    let store = Arc::new(InMemoryPaymentStore::new());
    let gate = PaymentGate::new(
        SingleFlight::new(store, Duration::from_secs(5)),
        settler,
        Arc::new(SystemClock),
    );
    PaidServer::start(gate, route(amount)).await.unwrap()
}

fn policy(max_payment: u64, max_day: u64) -> SpendPolicy {
    SpendPolicy {
        max_per_payment: Some(U256::from(max_payment)),
        max_per_day: Some(U256::from(max_day)),
        assets: vec![TOKEN.parse().unwrap()],
        ..SpendPolicy::default()
    }
}

fn client(policy: SpendPolicy) -> (PayingClient, RecordingSleeper) {
    let sleeper = RecordingSleeper::default();
    let signer: PrivateKeySigner = KEY.parse().unwrap();
    let c = PayingClient::new(policy)
        .unwrap()
        .signer(signer)
        .sleeper(Arc::new(sleeper.clone()));
    (c, sleeper)
}

#[tokio::test]
async fn pays_once_and_decodes_the_settlement() {
    let settler = Arc::new(FakeSettler::default());
    let srv = paid_server(10_000, Arc::clone(&settler)).await;
    let (c, sleeper) = client(policy(10_000, 100_000));
    let r = c
        .send(&Request::get(format!("{}/paid", srv.url)))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let p = r.payment.unwrap();
    assert_eq!(p.amount, U256::from(10_000));
    assert_eq!(p.network, "eip155:31337");
    assert!(p.settlement.as_ref().unwrap().success);
    assert_eq!(p.tx(), Some(format!("0x{:064x}", 1).as_str()));
    assert_eq!(settler.calls.load(Ordering::SeqCst), 1);
    assert_eq!((srv.requests(), srv.served()), (2, 1));
    assert!(sleeper.waits().is_empty());
    let state = c.spend_state().load(SystemClock.now()).unwrap();
    assert_eq!(state.payments.len(), 1);
    assert_eq!(state.payments[0].status, PaymentStatus::Settled);
}

trait Now {
    fn now(&self) -> u64;
}
impl Now for SystemClock {
    fn now(&self) -> u64 {
        tollgate_x402::Clock::now_unix(self)
    }
}

#[tokio::test]
async fn refuses_above_max_per_payment_without_signing() {
    let settler = Arc::new(FakeSettler::default());
    let srv = paid_server(20_000, Arc::clone(&settler)).await;
    let (c, _) = client(policy(10_000, 100_000));
    let e = c
        .send(&Request::get(format!("{}/paid", srv.url)))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::PolicyRefused { .. }), "{e}");
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("max-per-payment 10000"), "{e}");
    assert_eq!(srv.requests(), 1);
    assert_eq!(settler.calls.load(Ordering::SeqCst), 0);
    assert!(c
        .spend_state()
        .load(SystemClock.now())
        .unwrap()
        .payments
        .is_empty());
}

#[tokio::test]
async fn daily_budget_spans_requests_and_state_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spend.json");
    let settler = Arc::new(FakeSettler::default());
    let srv = paid_server(10_000, Arc::clone(&settler)).await;
    let url = format!("{}/paid", srv.url);
    for _ in 0..2 {
        let (c, _) = client(policy(10_000, 25_000));
        let c = c.state(SpendState::file(&path));
        c.send(&Request::get(&url)).await.unwrap();
    }
    let (c, _) = client(policy(10_000, 25_000));
    let c = c.state(SpendState::file(&path));
    let e = c.send(&Request::get(&url)).await.unwrap_err();
    assert!(e.to_string().contains("max-per-day 25000"), "{e}");
    assert_eq!(settler.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_payment_is_not_paid_again_and_is_released() {
    let settler = Arc::new(FakeSettler {
        fail: true,
        ..FakeSettler::default()
    });
    let srv = paid_server(10_000, Arc::clone(&settler)).await;
    let (c, _) = client(policy(10_000, 100_000));
    let e = c
        .send(&Request::get(format!("{}/paid", srv.url)))
        .await
        .unwrap_err();
    let ClientError::PaymentRejected { reason, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(e.exit_code(), 3);
    // One challenge, one paid attempt; no second signature.
    assert_eq!(srv.requests(), 2);
    assert_eq!(settler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.spend_state().spent_today(SystemClock.now()).unwrap(),
        U256::ZERO
    );
}

#[tokio::test]
async fn no_key_means_no_payment() {
    let srv = paid_server(10_000, Arc::new(FakeSettler::default())).await;
    let c = PayingClient::new(policy(10_000, 100_000)).unwrap();
    let e = c
        .send(&Request::get(format!("{}/paid", srv.url)))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NoKey));
    assert_eq!(srv.requests(), 1);
}

/// One scripted answer: status, headers, body.
type Scripted = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// A server answering a fixed script of responses, then 200.
#[derive(Clone)]
struct Script {
    steps: Arc<Mutex<Vec<Scripted>>>,
    hits: Arc<AtomicUsize>,
}

async fn scripted(steps: Vec<Scripted>) -> (String, Script) {
    let script = Script {
        steps: Arc::new(Mutex::new(steps.into_iter().rev().collect())),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let s2 = script.clone();
    let app = Router::new().route(
        "/r",
        get(move || {
            let s = s2.clone();
            async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                let step = s.steps.lock().unwrap().pop();
                let Some((status, headers, body)) = step else {
                    return "ok".into_response();
                };
                let mut h = HeaderMap::new();
                for (k, v) in headers {
                    h.insert(k, HeaderValue::from_static(v));
                }
                let mut r: Response =
                    (StatusCode::from_u16(status).unwrap(), h, body).into_response();
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/json"));
                r
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/r", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, script)
}

const QUOTA: &str = r#"{"code":"QUOTA_EXCEEDED","message":"used up","details":{"upgrade_url":"https://portal.example/upgrade"}}"#;

#[tokio::test]
async fn quota_402_backs_off_30_60_then_succeeds() {
    let (url, script) = scripted(vec![
        (402, vec![], QUOTA),
        (402, vec![("retry-after", "45")], QUOTA),
    ])
    .await;
    let (c, sleeper) = client(policy(1, 1));
    let r = c.send(&Request::get(&url)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        sleeper.waits(),
        vec![Duration::from_secs(30), Duration::from_secs(60)]
    );
    assert_eq!(script.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn quota_402_gives_up_after_three_retries_with_the_remedy() {
    let (url, script) = scripted(vec![(402, vec![], QUOTA); 5]).await;
    let (c, sleeper) = client(policy(1, 1));
    let e = c.send(&Request::get(&url)).await.unwrap_err();
    assert!(matches!(e, ClientError::GaveUp { .. }), "{e}");
    assert_eq!(e.exit_code(), 4);
    assert_eq!(e.remedy_url(), Some("https://portal.example/upgrade"));
    assert_eq!(
        sleeper.waits(),
        vec![
            Duration::from_secs(30),
            Duration::from_secs(60),
            Duration::from_secs(120)
        ]
    );
    assert_eq!(script.hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn quota_resetting_in_a_day_is_reported_not_slept() {
    let (url, script) = scripted(vec![(402, vec![("retry-after", "86400")], QUOTA)]).await;
    let (c, sleeper) = client(policy(1, 1));
    let e = c.send(&Request::get(&url)).await.unwrap_err();
    let ClientError::GaveUp { next_wait, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(*next_wait, Some(Duration::from_secs(86_400)));
    assert!(sleeper.waits().is_empty());
    assert_eq!(script.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn human_action_codes_are_not_retried() {
    for body in [
        r#"{"code":"INSUFFICIENT_FUNDS","details":{"top_up_url":"https://portal.example/top-up"}}"#,
        r#"{"code":"PLAN_UPGRADE_REQUIRED","details":{"upgrade_url":"https://portal.example/top-up"}}"#,
        r#"{"code":"SUBSCRIPTION_INACTIVE","details":{"status":"past_due"},"remedy":"https://portal.example/top-up"}"#,
    ] {
        let (url, script) = scripted(vec![(402, vec![], body)]).await;
        let (c, sleeper) = client(policy(1, 1));
        let e = c.send(&Request::get(&url)).await.unwrap_err();
        assert!(matches!(e, ClientError::HumanAction(..)), "{e}");
        assert_eq!(e.exit_code(), 4);
        assert_eq!(
            e.remedy_url(),
            Some("https://portal.example/top-up"),
            "{body}"
        );
        assert!(sleeper.waits().is_empty());
        assert_eq!(script.hits.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn rate_limit_429_honours_retry_after() {
    let (url, script) = scripted(vec![(
        429,
        vec![("retry-after", "7")],
        r#"{"code":"RATE_LIMITED"}"#,
    )])
    .await;
    let (c, sleeper) = client(policy(1, 1));
    let r = c.send(&Request::get(&url)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sleeper.waits(), vec![Duration::from_secs(7)]);
    assert_eq!(script.hits.load(Ordering::SeqCst), 2);
}
