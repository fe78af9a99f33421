//! Operations: hot reload, rate limits, header hygiene, graceful shutdown.

use std::time::Duration;

use testkit::MockUpstream;

use crate::harness::{base_config, json, Gw};

fn config(dir: &std::path::Path, up: std::net::SocketAddr, price: &str) -> String {
    let mut cfg = base_config(dir, up);
    cfg.push_str(&format!(
        r#"
[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
price = "{price}"

[[routes]]
id = "echo"
path_prefix = "/echo"
upstream = "mock"

[[routes]]
id = "slow"
path_prefix = "/delay"
upstream = "mock"

[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
rate_limit = {{ per_second = 5, burst = 5 }}
"#
    ));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_swaps_prices_and_keeps_a_bad_file_out() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr(), "0.10");
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("creload", "payg").await;
    gw.top_up("creload", "10.00").await;
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-tollgate-cost"], "0.10");
    // A broken file is refused and the running config stays.
    std::fs::write(gw.config_path(), "garbage = = =").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-tollgate-cost"], "0.10");
    // A good one is picked up.
    std::fs::write(gw.config_path(), config(gw.dir.path(), mock.addr(), "0.25")).unwrap();
    let mut cost = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = gw
            .http
            .get(gw.url("/paid"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            continue;
        }
        cost = r.headers()["x-tollgate-cost"].to_str().unwrap().to_string();
        if cost == "0.25" {
            break;
        }
    }
    assert_eq!(cost, "0.25");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr(), "0.01");
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("crl", "payg").await;
    gw.top_up("crl", "10.00").await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = gw
            .http
            .get(gw.url("/paid"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            let v = json(r).await;
            assert_eq!(v["code"], "RATE_LIMITED");
            assert_eq!(v["details"]["scope"], "key");
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429));
    // Rate-limited requests cost nothing.
    assert_eq!(gw.consumer_view("crl").await["balance"], "9.95");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_clean_forwarded_headers_and_no_credentials() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr(), "0.01");
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("cfwd", "payg").await;
    let r = gw
        .http
        .get(gw.url("/echo/x?q=1"))
        .bearer_auth(&key)
        .header("x-tollgate-consumer", "spoofed")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v = json(r).await;
    assert_eq!(v["path"], "/echo/x", "{v}");
    assert_eq!(v["query"], "q=1", "{v}");
    let h = &v["headers"];
    let text = h.to_string().to_ascii_lowercase();
    assert!(
        !text.contains("authorization"),
        "credentials stripped: {text}"
    );
    assert!(
        !text.contains("x-drop-me"),
        "connection-listed header dropped: {text}"
    );
    assert!(
        !text.contains("spoofed"),
        "x-tollgate-* never taken from the client: {text}"
    );
    assert!(text.contains("x-forwarded-for"), "{text}");
    assert!(text.contains("for=127.0.0.1"), "{text}");
    assert!(text.contains(&rid), "request id forwarded: {text}");
    assert!(text.contains("cfwd"), "consumer identity forwarded: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr(), "0.01");
    let mut gw = Gw::start(dir, &cfg);
    let key = gw.consumer("cdrain", "payg").await;
    let req = gw.http.get(gw.url("/delay/1000")).bearer_auth(&key).send();
    let pid = gw.child.as_ref().unwrap().id() as i32;
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY-free: plain signal delivery to our own child.
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    });
    let r = req.await.unwrap();
    killer.await.unwrap();
    assert_eq!(r.status(), 200, "the in-flight request finished");
    let status = gw.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "clean exit: {status:?}");
}

/// While the database cannot keep up (here another connection holds its write lock, so the
/// projector cannot commit), charges wait in memory up to `store.max_backlog_records`; past
/// that, governed requests get 503 `STORE_UNAVAILABLE` (reason `ledger_backlog`,
/// `Retry-After: 1`) and cost nothing; once the database has caught up they pass again, and
/// every success is charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_falls_behind_sheds_load_with_503_and_loses_nothing() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr(), "0.01")
        .replace("[store]\n", "[store]\nmax_backlog_records = 1\n");
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("cbl", "payg").await;
    gw.top_up("cbl", "10.00").await;
    let blocker = rusqlite::Connection::open(gw.dir.path().join("tollgate.db")).unwrap();
    blocker.busy_timeout(Duration::from_secs(5)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let get = || gw.http.get(gw.url("/paid")).bearer_auth(&key).send();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = get().await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            let v = json(r).await;
            assert_eq!(v["code"], "STORE_UNAVAILABLE", "{v}");
            assert_eq!(v["details"]["reason"], "ledger_backlog", "{v}");
        }
    }
    // Two charges wait for the database (the backlog is then 2, over the limit of 1).
    assert_eq!(statuses, [200, 200, 503]);
    let (s, j) = gw.admin(reqwest::Method::GET, "/v1/journal", None).await;
    assert_eq!(s, 200);
    assert_eq!(j["backlog"], 2, "{j}");
    blocker.execute_batch("ROLLBACK").unwrap();
    let mut caught_up = false;
    for _ in 0..200 {
        let (_, j) = gw.admin(reqwest::Method::GET, "/v1/journal", None).await;
        if j["backlog"] == 0 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(caught_up, "the database did not catch up");
    assert_eq!(get().await.unwrap().status(), 200);
    // Three successes, each charged once; the refused request cost nothing.
    assert_eq!(gw.consumer_view("cbl").await["balance"], "9.97");
    let db = gw.db("cbl").await;
    let charged: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM usage WHERE route = 'paid' AND charged = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(charged, 3);
}
