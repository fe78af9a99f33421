//! Money under concurrency and failure: exact admission, nothing charged for upstream
//! failures, idempotent retries.

use std::sync::Arc;

use serde_json::json;
use testkit::{refused_addr, MockUpstream};

use crate::harness::{base_config, json, Gw};

async fn gateway(mock: &MockUpstream) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path(), mock.addr());
    cfg.push_str(&format!(
        r#"
[[upstreams]]
name = "refused"
targets = ["http://{}"]
failure_threshold = 1000

# The mock again, with a short request timeout: /delay/3000 times out here.
[[upstreams]]
name = "impatient"
targets = ["http://{}"]
request_timeout_ms = 500
failure_threshold = 1000

[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
price = "1.00"

[[routes]]
id = "fail"
path_prefix = "/status"
upstream = "mock"
price = "1.00"

[[routes]]
id = "slow"
path_prefix = "/delay"
upstream = "impatient"
price = "1.00"

[[routes]]
id = "down"
path_prefix = "/down"
upstream = "refused"
price = "1.00"

[[routes]]
id = "echo"
path_prefix = "/echo"
upstream = "mock"
price = "0.50"

[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
"#,
        refused_addr(),
        mock.addr()
    ));
    Gw::start(dir, &cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_137_of_500_concurrent_requests_pass_on_a_balance_for_137() {
    let mock = MockUpstream::start_local().await.unwrap();
    let gw = gateway(&mock).await;
    let key = gw.consumer("c137", "payg").await;
    gw.top_up("c137", "137.00").await;
    mock.reset();
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let gw = Arc::clone(&gw);
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let r = gw
                .http
                .get(gw.url(&format!("/paid/{i}")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v = r.json::<serde_json::Value>().await.unwrap();
            (s, v)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            200 => ok += 1,
            402 => {
                assert_eq!(v["code"], "INSUFFICIENT_FUNDS", "{v}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {v}"),
        }
    }
    assert_eq!(ok, 137);
    assert_eq!(refused, 363);
    assert_eq!(
        mock.calls(),
        137,
        "the upstream saw exactly the admitted calls"
    );
    let c = gw.consumer_view("c137").await;
    assert_eq!(c["balance"], "0.00", "{c}");
    assert_eq!(c["pending"], "0.00", "{c}");
    // The durable record agrees with memory.
    let db = gw.db("c137").await;
    let charged: i64 = db
        .query_row("SELECT COUNT(*) FROM usage WHERE charged = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(charged, 137);
    let (cr, de): (i64, i64) = db
        .query_row("SELECT SUM(credits), SUM(debits) FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(cr, de, "every entry is balanced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_not_charged() {
    let mock = MockUpstream::start_local().await.unwrap();
    let gw = gateway(&mock).await;
    let key = gw.consumer("cfail", "payg").await;
    gw.top_up("cfail", "10.00").await;

    let r = gw
        .http
        .get(gw.url("/status/500"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "an upstream 500 is passed through");
    assert_eq!(r.headers()["x-tollgate-cost"], "0.00");

    let r = gw
        .http
        .get(gw.url("/delay/3000"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let v = json(r).await;
    assert_eq!(v["code"], "UPSTREAM_TIMEOUT");

    let r = gw
        .http
        .get(gw.url("/down/x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v = json(r).await;
    assert_eq!(v["code"], "UPSTREAM_UNAVAILABLE");

    let c = gw.consumer_view("cfail").await;
    assert_eq!(c["balance"], "10.00", "nothing charged: {c}");
    assert_eq!(c["pending"], "0.00", "holds released: {c}");
    // A success afterwards is charged normally.
    let r = gw
        .http
        .get(gw.url("/status/200"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-cost"], "1.00");
    assert_eq!(r.headers()["x-tollgate-balance"], "9.00");
    // The failures are recorded as uncharged usage.
    let db = gw.db("cfail").await;
    let (n, charged): (i64, i64) = db
        .query_row("SELECT COUNT(*), SUM(charged) FROM usage", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((n, charged), (4, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_retry_is_charged_once() {
    let mock = MockUpstream::start_local().await.unwrap();
    let gw = gateway(&mock).await;
    let key = gw.consumer("cidem", "payg").await;
    gw.top_up("cidem", "10.00").await;
    mock.reset();
    let send = |body: &'static str| {
        gw.http
            .post(gw.url("/echo"))
            .bearer_auth(&key)
            .header("idempotency-key", "order-42")
            .body(body)
            .send()
    };
    let first = send("{\"amount\":1}").await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.text().await.unwrap();
    let again = send("{\"amount\":1}").await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-tollgate-cost"], "0.50");
    assert_eq!(
        again.text().await.unwrap(),
        first_body,
        "the original outcome is returned"
    );
    assert_eq!(mock.calls(), 1, "the upstream was called once");
    let other = send("{\"amount\":2}").await.unwrap();
    assert_eq!(other.status(), 409);
    assert_eq!(json(other).await["code"], "IDEMPOTENCY_CONFLICT");
    let c = gw.consumer_view("cidem").await;
    assert_eq!(c["balance"], "9.50", "charged once: {c}");
    // The outcome survives a restart.
    let mut gw = gw;
    gw.kill9();
    gw.restart();
    let again = gw
        .http
        .post(gw.url("/echo"))
        .bearer_auth(&key)
        .header("idempotency-key", "order-42")
        .body("{\"amount\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(mock.calls(), 1);
    assert_eq!(gw.consumer_view("cidem").await["balance"], "9.50");
    let _ = json!({});
}
