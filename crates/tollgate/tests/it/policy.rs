//! The payment gate's other legs end to end: spending caps, subscription states, overage
//! policies, config-declared keys, HTTP/2.

use reqwest::Method;
use serde_json::json;
use testkit::MockUpstream;

use crate::harness::{base_config, json, Gw};

const KEY: &str = "tg_live_gitops1_s3cretvalue0000000000000000000000";

fn sha256_hex(s: &str) -> String {
    use std::fmt::Write;
    let d = <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
    d.iter().fold(String::new(), |mut o, b| {
        let _ = write!(o, "{b:02x}");
        o
    })
}

fn config(dir: &std::path::Path, up: std::net::SocketAddr) -> String {
    let mut cfg = base_config(dir, up);
    cfg.push_str(&format!(
        r#"
[[upstreams]]
name = "cheap"
targets = ["http://{up}/cheap"]

[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
price = "1.00"

[[plans]]
id = "capped"
name = "Capped"
routes = ["*"]
spending_caps = [{{ scope = "consumer", amount = "3.00" }}]

[[plans]]
id = "tenantcap"
name = "Tenant-capped"
routes = ["*"]
spending_caps = [{{ scope = "tenant", amount = "3.00" }}]

[[plans]]
id = "graceful"
name = "Graceful"
routes = ["*"]
grace_days = 3

[[plans]]
id = "degrading"
name = "Degrading"
routes = ["*"]
quotas = {{ requests = 2 }}
overage = "degrade"
degrade_upstream = "cheap"
prices = {{ paid = "0.00" }}

[[plans]]
id = "billing"
name = "Bills overage"
routes = ["*"]
quotas = {{ requests = 2 }}
overage = "allow_and_bill"

[[plans]]
id = "bytes"
name = "Bytes"
routes = ["*"]
quotas = {{ bytes = 100 }}
prices = {{ paid = "0.00" }}

[[tenants]]
id = "ops"
name = "Ops"
contact_email = "billing@ops.example.com"

[[consumers]]
id = "gitops"
tenant = "ops"
plan = "billing"
keys = [{{ id = "gitops1", sha256 = "{}" }}]
"#,
        sha256_hex(KEY)
    ));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_cap_refuses_with_scope_and_reset() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("cap", "capped").await;
    gw.top_up("cap", "10.00").await;
    for _ in 0..3 {
        let r = gw
            .http
            .get(gw.url("/paid"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert!(r.headers().get("retry-after").is_some());
    let v = json(r).await;
    assert_eq!(v["code"], "SPENDING_CAP_REACHED");
    assert_eq!(v["details"]["scope"], "consumer");
    assert_eq!(v["details"]["cap"], "3.00");
    assert_eq!(v["details"]["current_spend"], "3.00");
    assert!(v["details"]["resets_at"].is_string());
    assert_eq!(
        gw.consumer_view("cap").await["balance"],
        "7.00",
        "the refused request was not charged"
    );
}

/// A tenant-wide cap counts the spending of all the tenant's consumers together, refuses every
/// one of them once reached (and no other tenant's), and still holds after a kill -9 and a
/// restart: the tenant's spend is rebuilt from the ledger. `Gw::consumer` upserts tenant t1
/// before each consumer, so a and b were created on either side of a tenant update (which
/// once gave each side counters of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cap_counts_all_its_consumers_and_survives_a_crash() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let mut gw = Gw::start(dir, &cfg);
    // Consumers a and b of tenant t1; c of tenant t2.
    let a = gw.consumer("a", "tenantcap").await;
    let b = gw.consumer("b", "tenantcap").await;
    let (s, _) = gw
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(json!({"id": "t2", "name": "T2"})),
        )
        .await;
    assert!(s == 200 || s == 201, "tenant t2: {s}");
    let (s, v) = gw
        .admin(
            Method::POST,
            "/v1/consumers",
            Some(json!({"id": "c", "tenant": "t2", "plan": "tenantcap"})),
        )
        .await;
    assert!(s == 200 || s == 201, "consumer c: {s} {v}");
    let (s, v) = gw
        .admin(Method::POST, "/v1/consumers/c/keys", Some(json!({})))
        .await;
    assert!(s == 200 || s == 201, "key of c: {s} {v}");
    let c = v["secret"].as_str().unwrap().to_string();
    for id in ["a", "b", "c"] {
        gw.top_up(id, "10.00").await;
    }
    let paid = |gw: &Gw, key: &str| gw.http.get(gw.url("/paid")).bearer_auth(key).send();
    for key in [&a, &a, &b] {
        assert_eq!(paid(&gw, key).await.unwrap().status(), 200);
    }
    let refused = |v: &serde_json::Value| {
        assert_eq!(v["code"], "SPENDING_CAP_REACHED", "{v}");
        assert_eq!(v["details"]["scope"], "tenant", "{v}");
        assert_eq!(v["details"]["cap"], "3.00", "{v}");
        assert_eq!(v["details"]["current_spend"], "3.00", "{v}");
        assert!(v["details"]["resets_at"].is_string(), "{v}");
    };
    for key in [&b, &a] {
        let r = paid(&gw, key).await.unwrap();
        assert_eq!(r.status(), 402);
        refused(&json(r).await);
    }
    // Another tenant's consumer on the same plan has a cap of its own.
    assert_eq!(paid(&gw, &c).await.unwrap().status(), 200);

    gw.kill9();
    gw.restart();
    let r = paid(&gw, &b).await.unwrap();
    assert_eq!(r.status(), 402, "the tenant's spend survived the crash");
    refused(&json(r).await);
    assert_eq!(paid(&gw, &c).await.unwrap().status(), 200);
    for (id, balance) in [("a", "8.00"), ("b", "9.00"), ("c", "8.00")] {
        assert_eq!(
            gw.consumer_view(id).await["balance"],
            balance,
            "{id}: charged for what was served, nothing for what was refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_states_gate_before_anything_else() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("subs", "graceful").await;
    gw.top_up("subs", "10.00").await;
    mock.reset();
    let set = |status: &'static str| {
        gw.admin(
            Method::PUT,
            "/v1/consumers/subs/subscription",
            Some(json!({ "status": status })),
        )
    };
    let (s, v) = set("suspended").await;
    assert_eq!(s, 200, "{v}");
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let v = json(r).await;
    assert_eq!(v["code"], "SUBSCRIPTION_INACTIVE");
    assert_eq!(v["details"]["status"], "suspended");
    let (s, v) = set("active").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = set("past_due").await;
    assert_eq!(s, 200, "{v}");
    assert!(v["grace_until"].is_string(), "grace period started: {v}");
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "past_due inside its grace period still works"
    );
    let (s, _) = set("canceled").await;
    assert_eq!(s, 200);
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["details"]["status"], "canceled");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overage_policies_degrade_or_bill() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    // Degrade: beyond the quota requests still pass (served by the degrade upstream).
    let key = gw.consumer("deg", "degrading").await;
    mock.reset();
    for _ in 0..4 {
        let r = gw
            .http
            .get(gw.url("/paid"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(mock.calls(), 4);
    assert_eq!(
        mock.calls_for("/cheap"),
        2,
        "the two requests beyond the quota went to the degrade upstream"
    );
    // Allow and bill, with a key declared in the config by its hash.
    gw.top_up("gitops", "3.50").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = gw
            .http
            .get(gw.url("/paid"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 402],
        "beyond the quota requests are billed until the balance runs out"
    );
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["code"], "INSUFFICIENT_FUNDS");
    assert_eq!(gw.consumer_view("gitops").await["balance"], "0.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    gw.top_up("gitops", "5.00").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(gw.url("/paid"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-cost"], "1.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_response_bytes_count_against_a_byte_quota() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("bytes", "bytes").await;
    // A chunked response (no Content-Length) of 20 lines, well over the 100-byte quota.
    let r = gw
        .http
        .get(gw.url("/paid/stream/20"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    let n = r.bytes().await.unwrap().len() as i64;
    assert!(n > 100, "{n}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let r = gw
        .http
        .get(gw.url("/paid/x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let v = json(r).await;
    assert_eq!(v["code"], "QUOTA_EXCEEDED");
    assert_eq!(v["details"]["limit_type"], "monthly_bytes");
    assert_eq!(
        v["details"]["current_usage"], n,
        "the streamed bytes were counted: {v}"
    );
}
