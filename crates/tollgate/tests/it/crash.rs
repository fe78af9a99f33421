//! kill -9 under load: every success a client saw is charged exactly once, and nothing stays
//! held after restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::MockUpstream;

use crate::harness::{base_config, Gw};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_charge_a_client_saw() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config(dir.path(), mock.addr());
    cfg.push_str(
        r#"
[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
price = "0.01"

[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
quotas = { requests = 1000000 }
"#,
    );
    let mut gw = Gw::start(dir, &cfg);
    let key = gw.consumer("crash", "payg").await;
    gw.top_up("crash", "1000.00").await;
    let url = gw.url("/paid/x");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (seen, stop, url, key) = (
            Arc::clone(&seen),
            Arc::clone(&stop),
            url.clone(),
            key.clone(),
        );
        let http = crate::harness::client();
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 10 s or until the gateway is gone.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                match http.get(&url).bearer_auth(&key).send().await {
                    Ok(r) if r.status() == 200 => {
                        let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
                        if r.bytes().await.is_ok() {
                            seen.lock().unwrap().push(rid);
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status()),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 50, "load ran: {} successes", seen.len());

    gw.restart();
    let db = gw.db("crash").await;
    let mut missing = 0;
    for rid in &seen {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM usage WHERE request_id = ?1 AND charged = 1",
                [rid],
                |r| r.get(0),
            )
            .unwrap();
        let e: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM entries WHERE charge_id = ?1 AND kind = 'charge'",
                [rid],
                |r| r.get(0),
            )
            .unwrap();
        if n != 1 || e != 1 {
            missing += 1;
        }
    }
    assert_eq!(
        missing,
        0,
        "every success the clients saw is charged exactly once ({} seen)",
        seen.len()
    );
    let charged: i64 = db
        .query_row("SELECT COUNT(*) FROM usage WHERE charged = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(charged as usize >= seen.len());
    let (cr, de): (i64, i64) = db
        .query_row("SELECT SUM(credits), SUM(debits) FROM accounts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(cr, de, "balanced");
    let c = gw.consumer_view("crash").await;
    let expected = 1_000_000_000_i64 - charged * 10_000;
    assert_eq!(
        c["balance"],
        tollgate_core::Money(expected).to_string(),
        "{c}"
    );
    assert_eq!(c["pending"], "0.00", "no hold survives the restart: {c}");
    // The ledger the restart recovered balances, its accounts are the sums of their entries
    // and the balances it loaded into memory are the entries'.
    let (s, check) = gw
        .admin(reqwest::Method::GET, "/v1/ledger/check", None)
        .await;
    assert_eq!(s, 200, "{check}");
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["imbalance"], 0, "{check}");
    assert!(check["entries"].as_i64().unwrap() >= 2 * charged, "{check}");
    // And the gateway keeps serving and charging after the restart.
    let r = gw
        .http
        .get(gw.url("/paid/after"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The CLI runs the same check: exit 0 on this ledger; after the balance account is
    // changed behind the gateway's back, exit 1 with the account and the consumer named.
    let ledger_check = || {
        std::process::Command::new(crate::harness::bin())
            .args(["admin", "--url", &format!("http://{}", gw.admin)])
            .args(["--token", crate::harness::TOKEN, "ledger", "check"])
            .output()
            .unwrap()
    };
    let out = ledger_check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE accounts SET debits = debits - 10000 WHERE kind = 1",
        [],
    )
    .unwrap();
    let out = ledger_check();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["imbalance"], 10_000, "{report}");
    let diff = &report["account_mismatches"][0];
    assert_eq!(diff["kind"], 1, "{report}");
    assert_eq!(
        diff["entries"]["debits"].as_i64().unwrap() - diff["recorded"]["debits"].as_i64().unwrap(),
        10_000,
        "{report}"
    );
}
