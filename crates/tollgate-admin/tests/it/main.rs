//! Integration tests of the admin API (router called without a socket) and of the CLI client
//! (against a real server on 127.0.0.1:0). One test binary for the crate.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tempfile::TempDir;
use tollgate_admin::{router, AdminState};
use tollgate_core::config::Config;
use tollgate_core::period::{period_containing, PeriodKind};
use tollgate_store::{ManualClock, Store};
use tower::ServiceExt;

mod cli;

const TOKEN: &str = "admin-s3cret";
const NOW: &str = "2027-03-15T12:00:00Z";

const CONFIG: &str = r#"
[server]
docs_url = "https://docs.example/errors"

[[upstreams]]
name = "api"
targets = ["http://127.0.0.1:9"]

[[routes]]
id = "data"
path_prefix = "/data"
upstream = "api"
price = "0.01"

[[plans]]
id = "free"
name = "Free"
routes = ["data"]
quotas = { requests = 1000 }

[[plans]]
id = "pro"
name = "Pro"
routes = ["*"]
quotas = { requests = 100000, bytes = 1000000 }
prices = { data = "0.005" }
spending_caps = [{ scope = "consumer", amount = "50" }]
grace_days = 3
timezone = "America/New_York"
upgrade_url = "https://example.com/upgrade"

[[plans]]
id = "trial"
name = "Trial"
routes = ["*"]
trial_days = 14

[[plans]]
id = "enterprise"
name = "Enterprise"
routes = ["*"]
requires_approval = true

[[tenants]]
id = "acme"
name = "Acme"
"#;

fn ms(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct Env {
    _dir: TempDir,
    state: AdminState,
    app: Router,
    clock: ManualClock,
}

async fn env_with_token(token: Option<&str>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::from_toml(CONFIG).unwrap();
    cfg.store.path = dir
        .path()
        .join("tollgate.db")
        .to_string_lossy()
        .into_owned();
    let clock = ManualClock::at_ms(ms(NOW));
    let store = Arc::new(Store::open(&cfg.store, Arc::new(clock.clone())).unwrap());
    store.sync_config(&cfg).await.unwrap();
    let state = AdminState {
        store,
        config: Arc::new(ArcSwap::from_pointee(cfg)),
        token: token.map(str::to_string),
    };
    Env {
        _dir: dir,
        app: router(state.clone()),
        state,
        clock,
    }
}

async fn env() -> Env {
    env_with_token(Some(TOKEN)).await
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Env {
    async fn raw(&self, req: Request<Body>) -> Resp {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).unwrap())
            }
            None => Body::empty(),
        };
        self.raw(b.body(body).unwrap()).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    /// Top up consumer `cid` by `amount` under idempotency key `key`.
    async fn top_up(&self, cid: &str, amount: &str, key: &str) -> Resp {
        self.post(
            &format!("/v1/consumers/{cid}/credits"),
            json!({"amount": amount, "idempotency_key": key}),
        )
        .await
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        ct: Option<&str>,
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        self.raw(b.body(body.into()).unwrap()).await
    }

    async fn consumer(&self, plan: &str) -> String {
        let r = self
            .post("/v1/consumers", json!({"tenant": "acme", "plan": plan}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }
}

/// Every error has our body and a request id that matches the header.
fn assert_error(r: &Resp, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    assert!(r.body["message"].is_string());
    assert!(r.body["details"].is_object());
    let rid = r.headers.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(r.body["request_id"], rid);
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(
        r.body["docs_url"],
        format!("https://docs.example/errors#{}", code.to_ascii_lowercase())
    );
}

// -------------------------------------------------------------------------------------------
// flows

#[tokio::test]
async fn tenant_consumer_key_flow() {
    let e = env().await;
    let r = e
        .post(
            "/v1/tenants",
            json!({"id": "globex", "name": "Globex", "contact_email": "ops@globex.example"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "Globex");
    let r = e
        .post(
            "/v1/tenants",
            json!({"id": "globex", "name": "Globex Corp"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = e.get("/v1/tenants/globex").await;
    assert_eq!(r.body["name"], "Globex Corp");
    let r = e.get("/v1/tenants").await;
    let ids: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "globex"]);

    let r = e
        .post(
            "/v1/consumers",
            json!({"tenant": "globex", "plan": "free", "name": "Alice"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cid = r.body["id"].as_str().unwrap().to_string();
    assert!(cid.starts_with("c_") && cid.len() == 18, "{cid}");
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["plan"], "free");
    assert_eq!(r.body["balance"], "0.00");
    assert_eq!(r.body["anchor"], "2027-03-15T12:00:00+00:00");

    let r = e
        .post(
            "/v1/consumers",
            json!({"id": "bob", "tenant": "globex", "plan": "free"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = e
        .post(
            "/v1/consumers",
            json!({"id": "bob", "tenant": "globex", "plan": "free"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");

    let r = e.get("/v1/consumers?tenant=globex&limit=1").await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let first = r.body["next_after"].as_str().unwrap().to_string();
    let r = e
        .get(&format!(
            "/v1/consumers?tenant=globex&limit=1&after={first}"
        ))
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_ne!(r.body["items"][0]["id"], first.as_str());
    let r = e.get("/v1/consumers?tenant=acme").await;
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["next_after"], Value::Null);

    let r = e.get(&format!("/v1/consumers/{cid}")).await;
    assert_eq!(r.body["tenant"], "globex");

    // A key with no body at all, one with options.
    let r = e
        .call(Method::POST, &format!("/v1/consumers/{cid}/keys"), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap();
    let kid = r.body["key"]["id"].as_str().unwrap().to_string();
    assert!(secret.starts_with(&format!("tg_live_{kid}_")), "{secret}");
    assert_eq!(r.body["key"]["created_at"], "2027-03-15T12:00:00+00:00");
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/keys"),
            json!({"name": "ci", "test": true, "expires_at": "2028-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["secret"].as_str().unwrap().starts_with("tg_test_"));
    assert_eq!(r.body["key"]["name"], "ci");
    assert_eq!(r.body["key"]["expires_at"], "2028-01-01T00:00:00+00:00");

    let r = e.get(&format!("/v1/consumers/{cid}/keys")).await;
    let keys = r.body["items"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    // The secret is never listed.
    assert!(!r.body.to_string().contains(secret));
    // The key authenticates against the directory the gateway uses.
    assert!(e.state.store.dir.keys.contains_key(kid.as_str()));

    let r = e
        .post(
            &format!("/v1/consumers/{cid}/keys"),
            json!({"expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "expires_at");
}

#[tokio::test]
async fn top_up_is_idempotent_and_adjustments_post() {
    let e = env().await;
    let cid = e.consumer("free").await;
    let path = format!("/v1/consumers/{cid}/credits");
    let r = e.top_up(&cid, "12.50", "inv-1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["applied"], true);
    assert_eq!(r.body["balance"], "12.50");
    assert_eq!(r.body["currency"], "USD");
    let r = e.top_up(&cid, "12.50", "inv-1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["applied"], false);
    assert_eq!(r.body["balance"], "12.50");
    // The header works as the key too.
    let r = e
        .raw(
            Request::post(&path)
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "inv-1")
                .body(Body::from(r#"{"amount":"12.50"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(r.body["applied"], false);
    // Same key, another amount: a conflict, nothing applied.
    let r = e.top_up(&cid, "99", "inv-1").await;
    assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
    assert_eq!(r.body["details"]["original_amount"], "12.50");

    // The same key for another consumer of the same tenant is its own operation.
    let other = e.consumer("free").await;
    let r = e
        .post(
            &format!("/v1/consumers/{other}/credits"),
            json!({"amount": "1", "idempotency_key": "inv-1"}),
        )
        .await;
    assert_eq!(r.body["applied"], true, "{}", r.body);
    assert_eq!(r.body["balance"], "1.00");

    // No key: each call applies.
    for _ in 0..2 {
        let r = e.post(&path, json!({"amount": "0.25"})).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/adjustments"),
            json!({"amount": "-1.00", "reason": "goodwill reversal", "idempotency_key": "adj-1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["balance"], "12.00");
    assert_eq!(r.body["amount"], "-1.00");
    assert_eq!(r.body["reason"], "goodwill reversal");
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/adjustments"),
            json!({"amount": "-1.00", "reason": "goodwill reversal", "idempotency_key": "adj-1"}),
        )
        .await;
    assert_eq!(r.body["applied"], false);
    assert_eq!(r.body["balance"], "12.00");

    let r = e.get(&format!("/v1/consumers/{cid}/entries")).await;
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{}", r.body);
    let dirs: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap(),
                i["direction"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(dirs.contains(&("adjust", "debit")), "{dirs:?}");
    assert_eq!(dirs.iter().filter(|d| d.0 == "topup").count(), 3);
    let r = e.get(&format!("/v1/consumers/{cid}")).await;
    assert_eq!(r.body["balance"], "12.00");
    let r = e.get(&format!("/v1/consumers/{cid}/entries?limit=1")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);

    // Amount validation.
    for (amount, path) in [
        (json!("0"), format!("/v1/consumers/{cid}/credits")),
        (json!("-5"), format!("/v1/consumers/{cid}/credits")),
        (json!("1.0000001"), format!("/v1/consumers/{cid}/credits")),
        (json!("abc"), format!("/v1/consumers/{cid}/credits")),
        (json!(5), format!("/v1/consumers/{cid}/credits")),
    ] {
        let r = e.post(&path, json!({"amount": amount})).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
        assert_eq!(r.body["details"]["field"], "amount", "{}", r.body);
    }
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/adjustments"),
            json!({"amount": "1"}),
        )
        .await;
    assert_eq!(r.body["details"]["field"], "reason");
    let r = e
        .post("/v1/consumers/nobody/credits", json!({"amount": "1"}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn rotate_and_revoke() {
    let e = env().await;
    let cid = e.consumer("free").await;
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/keys"),
            json!({"name": "main"}),
        )
        .await;
    let old = r.body["key"]["id"].as_str().unwrap().to_string();

    let r = e
        .post(
            &format!("/v1/keys/{old}/rotate"),
            json!({"overlap_seconds": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let new = r.body["key"]["id"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(r.body["secret"]
        .as_str()
        .unwrap()
        .starts_with(&format!("tg_live_{new}_")));
    assert_eq!(r.body["previous"]["id"], old.as_str());
    assert_eq!(
        r.body["previous"]["revoked_at"],
        "2027-03-15T12:10:00+00:00"
    );
    assert_eq!(r.body["key"]["revoked_at"], Value::Null);

    // Default overlap is an hour; an empty body is fine.
    let r = e
        .call(Method::POST, &format!("/v1/keys/{new}/rotate"), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["previous"]["revoked_at"],
        "2027-03-15T13:00:00+00:00"
    );
    let newest = r.body["key"]["id"].as_str().unwrap().to_string();

    // Revoking a key in its overlap revokes it now.
    e.clock.advance_ms(1000);
    let r = e
        .call(Method::POST, &format!("/v1/keys/{old}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["revoked_at"], "2027-03-15T12:00:01+00:00");
    // Revoking again changes nothing.
    e.clock.advance_ms(1000);
    let r = e
        .call(Method::POST, &format!("/v1/keys/{old}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["revoked_at"], "2027-03-15T12:00:01+00:00");
    // A revoked key cannot be rotated.
    let r = e
        .call(Method::POST, &format!("/v1/keys/{old}/rotate"), None)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");

    let r = e
        .post(
            &format!("/v1/keys/{newest}/rotate"),
            json!({"overlap_seconds": -1}),
        )
        .await;
    assert_eq!(r.body["details"]["field"], "overlap_seconds");
    let r = e
        .post(
            &format!("/v1/keys/{newest}/rotate"),
            json!({"overlap_seconds": 99_999_999}),
        )
        .await;
    assert_eq!(r.body["details"]["field"], "overlap_seconds");
    let r = e.call(Method::POST, "/v1/keys/nokey/revoke", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");

    let r = e.get(&format!("/v1/consumers/{cid}/keys")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn plan_changes_and_states() {
    let e = env().await;
    let cid = e.consumer("free").await;
    let path = format!("/v1/consumers/{cid}/subscription");
    let r = e
        .call(Method::PUT, &path, Some(json!({"plan": "pro"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["plan"], "pro");
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["anchor"], "2027-03-15T12:00:00+00:00");

    let r = e
        .call(Method::PUT, &path, Some(json!({"plan": "platinum"})))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "plan");

    // past_due starts the plan's grace (3 days on pro).
    let r = e
        .call(Method::PUT, &path, Some(json!({"status": "past_due"})))
        .await;
    assert_eq!(r.body["status"], "past_due", "{}", r.body);
    assert_eq!(r.body["grace_until"], "2027-03-18T12:00:00+00:00");
    let r = e
        .call(Method::PUT, &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["grace_until"], Value::Null);

    // Not allowed: back to trialing or pending_approval.
    for to in ["trialing", "pending_approval"] {
        let r = e
            .call(Method::PUT, &path, Some(json!({"status": to})))
            .await;
        assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
        assert_eq!(r.body["details"]["from"], "active");
        assert_eq!(r.body["details"]["to"], to);
    }
    let r = e
        .call(Method::PUT, &path, Some(json!({"status": "canceled"})))
        .await;
    assert_eq!(r.body["status"], "canceled");
    let r = e
        .call(Method::PUT, &path, Some(json!({"status": "suspended"})))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = e
        .call(Method::PUT, &path, Some(json!({"status": "paused"})))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "status");
    let r = e.call(Method::PUT, &path, Some(json!({}))).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");

    // The change is what the gateway's directory sees.
    let c = e.state.store.dir.consumer(&cid).unwrap();
    assert_eq!(&*c.state.lock().sub.plan, "pro");
}

#[tokio::test]
async fn approval_flow() {
    let e = env().await;
    let cid = e.consumer("enterprise").await;
    let r = e.get(&format!("/v1/consumers/{cid}")).await;
    assert_eq!(r.body["status"], "pending_approval");

    let r = e
        .call(Method::POST, &format!("/v1/consumers/{cid}/approve"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "active");

    // Approving twice is a conflict with the current state named.
    let r = e
        .call(Method::POST, &format!("/v1/consumers/{cid}/approve"), None)
        .await;
    assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "IDEMPOTENCY_CONFLICT",
      "details": {
        "reason": "only a `pending_approval` subscription can be approved; this one is `active`",
        "required_status": "pending_approval",
        "status": "active"
      },
      "docs_url": "https://docs.example/errors#idempotency_conflict",
      "message": "Conflict: only a `pending_approval` subscription can be approved; this one is `active`",
      "request_id": "[request_id]"
    }
    "#);
    let r = e
        .call(Method::POST, &format!("/v1/consumers/{cid}/reject"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);

    // Reject.
    let other = e.consumer("enterprise").await;
    let r = e
        .call(Method::POST, &format!("/v1/consumers/{other}/reject"), None)
        .await;
    assert_eq!(r.body["status"], "canceled");

    // A trial plan starts trialing with its trial end.
    let t = e.consumer("trial").await;
    let r = e.get(&format!("/v1/consumers/{t}")).await;
    assert_eq!(r.body["status"], "trialing");
    assert_eq!(r.body["trial_end"], "2027-03-29T12:00:00+00:00");
    // An explicit initial state wins.
    let r = e
        .post(
            "/v1/consumers",
            json!({"tenant": "acme", "plan": "enterprise", "status": "active"}),
        )
        .await;
    assert_eq!(r.body["status"], "active");
    let r = e
        .post(
            "/v1/consumers",
            json!({"tenant": "acme", "plan": "free", "status": "trialing"}),
        )
        .await;
    assert_eq!(r.body["details"]["field"], "status");
    let r = e
        .post("/v1/consumers", json!({"tenant": "nope", "plan": "free"}))
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "tenant");
    let r = e
        .post("/v1/consumers", json!({"tenant": "acme", "plan": "nope"}))
        .await;
    assert_eq!(r.body["details"]["field"], "plan");
}

#[tokio::test]
async fn usage_periods_and_quota() {
    let e = env().await;
    let cid = e.consumer("free").await;
    e.clock.set_ms(ms("2027-05-02T08:00:00Z"));
    let r = e.get(&format!("/v1/consumers/{cid}/usage")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let p = period_containing(
        PeriodKind::Month,
        chrono_tz::Tz::UTC,
        utc(NOW),
        utc("2027-05-02T08:00:00Z"),
    );
    assert_eq!(r.body["from"], p.start.to_rfc3339());
    assert_eq!(r.body["from"], "2027-04-15T12:00:00+00:00");
    assert_eq!(r.body["to"], "2027-05-15T12:00:00+00:00");
    assert_eq!(r.body["period"], "current");
    assert_eq!(r.body["requests"], 0);
    assert_eq!(r.body["cost"], "0.00");
    assert_eq!(
        r.body["quota"],
        json!({"requests": {"limit": 1000, "used": 0, "remaining": 1000}, "bytes": null})
    );

    let r = e
        .get(&format!("/v1/consumers/{cid}/usage?period=previous"))
        .await;
    assert_eq!(r.body["from"], "2027-03-15T12:00:00+00:00");
    assert_eq!(r.body["to"], "2027-04-15T12:00:00+00:00");
    assert_eq!(r.body["quota"], Value::Null);

    let r = e
        .get(&format!(
            "/v1/consumers/{cid}/usage?from=2027-01-01T00:00:00Z&to=2027-02-01T00:00:00Z"
        ))
        .await;
    assert_eq!(r.body["period"], "range");
    assert_eq!(r.body["from"], "2027-01-01T00:00:00+00:00");

    // Plan in another timezone: periods follow the plan's timezone.
    e.call(
        Method::PUT,
        &format!("/v1/consumers/{cid}/subscription"),
        Some(json!({"plan": "pro"})),
    )
    .await;
    let r = e.get(&format!("/v1/consumers/{cid}/usage")).await;
    assert_eq!(r.body["from"], "2027-04-15T12:00:00+00:00");
    assert_eq!(r.body["quota"]["bytes"]["limit"], 1_000_000);

    for (q, field) in [
        ("period=current&from=2027-01-01T00:00:00Z", "period"),
        ("from=yesterday", "from"),
        ("to=2027-01-01T00:00:00Z", "from"),
        ("from=2027-02-01T00:00:00Z&to=2027-01-01T00:00:00Z", "to"),
        ("period=last", "period"),
        ("perod=current", "perod"),
    ] {
        let r = e.get(&format!("/v1/consumers/{cid}/usage?{q}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
        assert_eq!(r.body["details"]["field"], field, "{q}: {}", r.body);
    }
    let r = e.get("/v1/consumers/ghost/usage").await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn plans_are_rendered_from_config() {
    let e = env().await;
    let r = e.get("/v1/plans").await;
    let ids: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["free", "pro", "trial", "enterprise"]);
    let r = e.get("/v1/plans/pro").await;
    assert_eq!(r.body["prices"]["data"], "0.005");
    assert_eq!(r.body["spending_caps"][0]["amount"], "50.00");
    assert_eq!(r.body["spending_caps"][0]["scope"], "consumer");
    assert_eq!(r.body["timezone"], "America/New_York");
    assert_eq!(r.body["period"], "month");
    assert_eq!(r.body["currency"], "USD");
    let r = e.get("/v1/plans/gold").await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "NOT_FOUND",
      "details": {
        "id": "gold",
        "reason": "plan not found",
        "resource": "plan"
      },
      "docs_url": "https://docs.example/errors#not_found",
      "message": "Plan `gold` does not exist.",
      "request_id": "[request_id]"
    }
    "#);
}

// -------------------------------------------------------------------------------------------
// authentication

#[tokio::test]
async fn auth_failures() {
    let e = env_with_token(None).await;
    let r = e.get("/v1/tenants").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "UNAUTHENTICATED",
      "details": {
        "reason": "admin token not configured"
      },
      "docs_url": "https://docs.example/errors#unauthenticated",
      "message": "The admin API token is not configured; set `server.admin_token` to enable the admin API.",
      "request_id": "[request_id]"
    }
    "#);
    // Public paths stay public.
    let r = e
        .raw(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");

    let e = env().await;
    let r = e
        .raw(Request::get("/v1/tenants").body(Body::empty()).unwrap())
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert_eq!(r.body["details"]["reason"], "missing bearer token");
    for value in [
        "Bearer wrong",
        "Basic YWRtaW46cw==",
        "Bearer",
        &format!("Bearer {TOKEN}x"),
    ] {
        let r = e
            .raw(
                Request::get("/v1/tenants")
                    .header(header::AUTHORIZATION, value)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    // Unknown paths do not reveal themselves without a token either.
    let r = e
        .raw(Request::get("/v1/secret").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The scheme is case-insensitive.
    let r = e
        .raw(
            Request::get("/v1/tenants")
                .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // A caller's request id is kept.
    let r = e
        .raw(
            Request::get("/v1/nothing")
                .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                .header("x-request-id", "trace-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(r.body["request_id"], "trace-42");
}

// -------------------------------------------------------------------------------------------
// bad input

#[tokio::test]
async fn bad_input_is_a_documented_400() {
    let e = env().await;
    let r = e
        .send_raw(
            Method::POST,
            "/v1/tenants",
            Some("application/json"),
            "{not json",
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "BAD_REQUEST",
      "details": {
        "field": "body",
        "reason": "invalid JSON: key must be a string at line 1 column 2"
      },
      "docs_url": "https://docs.example/errors#bad_request",
      "message": "Invalid request: invalid JSON: key must be a string at line 1 column 2",
      "request_id": "[request_id]"
    }
    "#);

    let r = e
        .post(
            "/v1/tenants",
            json!({"id": "x", "name": "X", "colour": "red"}),
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "BAD_REQUEST",
      "details": {
        "field": "colour",
        "reason": "colour: unknown field `colour`, expected one of `id`, `name`, `contact_email`, `upgrade_url`, `top_up_url` at line 1 column 9"
      },
      "docs_url": "https://docs.example/errors#bad_request",
      "message": "Invalid request: colour: unknown field `colour`, expected one of `id`, `name`, `contact_email`, `upgrade_url`, `top_up_url` at line 1 column 9",
      "request_id": "[request_id]"
    }
    "#);

    let r = e.post("/v1/tenants", json!({"id": 7, "name": "X"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "id");
    let r = e.post("/v1/tenants", json!({"name": "X"})).await;
    assert_eq!(r.body["details"]["field"], "id");
    let r = e.post("/v1/tenants", json!([1, 2])).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let r = e
        .post("/v1/tenants", json!({"id": "bad id!", "name": "X"}))
        .await;
    assert_eq!(r.body["details"]["field"], "id");
    let r = e
        .post(
            "/v1/tenants",
            json!({"id": "t", "name": "X", "upgrade_url": "javascript:alert(1)"}),
        )
        .await;
    assert_eq!(r.body["details"]["field"], "upgrade_url");

    // Wrong or missing content type.
    let body = r#"{"id":"t","name":"T"}"#;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let r = e.send_raw(Method::POST, "/v1/tenants", ct, body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
        assert_eq!(r.body["details"]["field"], "content-type");
    }
    let r = e
        .send_raw(
            Method::POST,
            "/v1/tenants",
            Some("application/json; charset=utf-8"),
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Empty body where one is required; invalid UTF-8; trailing garbage.
    let r = e
        .send_raw(Method::POST, "/v1/tenants", Some("application/json"), "")
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let r = e
        .send_raw(
            Method::POST,
            "/v1/tenants",
            Some("application/json"),
            &b"\xff\xfe\x00"[..],
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    let r = e
        .send_raw(
            Method::POST,
            "/v1/tenants",
            Some("application/json"),
            r#"{"id":"t","name":"T"}{}"#,
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");

    // Huge body.
    let huge = format!(r#"{{"id":"t","name":"{}"}}"#, "x".repeat(200 * 1024));
    let r = e
        .send_raw(Method::POST, "/v1/tenants", Some("application/json"), huge)
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    assert_eq!(r.body["details"]["limit_bytes"], 65536);
    // A huge optional body too.
    let cid = e.consumer("free").await;
    let r = e
        .send_raw(
            Method::POST,
            &format!("/v1/consumers/{cid}/keys"),
            Some("application/json"),
            vec![b' '; 100 * 1024],
        )
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");

    // Bad query parameters.
    let r = e.get("/v1/consumers?limit=abc").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "limit");
    let r = e.get("/v1/consumers?limit=0").await;
    assert_eq!(r.body["details"]["field"], "limit");
    let r = e.get("/v1/consumers?tennant=acme").await;
    assert_eq!(r.body["details"]["field"], "tennant");

    // Unknown path, wrong method.
    let r = e.get("/v1/nothing").await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = e.call(Method::DELETE, "/v1/tenants", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
    let r = e.get("/v1/consumers/ghost").await;
    assert_error(&r, StatusCode::NOT_FOUND, "NOT_FOUND");
    insta::assert_json_snapshot!(r.body, {".request_id" => "[request_id]"}, @r#"
    {
      "code": "NOT_FOUND",
      "details": {
        "id": "ghost",
        "reason": "consumer not found",
        "resource": "consumer"
      },
      "docs_url": "https://docs.example/errors#not_found",
      "message": "Consumer `ghost` does not exist.",
      "request_id": "[request_id]"
    }
    "#);
}

#[tokio::test]
async fn openapi_document_is_public_and_complete() {
    let e = env_with_token(None).await;
    let r = e
        .raw(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["openapi"].as_str().unwrap().get(..2), Some("3."));
    let paths = r.body["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 21, "{:?}", paths.keys().collect::<Vec<_>>());
    assert_eq!(
        paths["/v1/consumers/{id}/credits"]["post"]["requestBody"]["required"],
        true
    );
    // Optional bodies are documented as optional.
    assert_ne!(
        paths["/v1/keys/{id}/rotate"]["post"]["requestBody"]["required"],
        true
    );
    assert!(r.body["components"]["schemas"]["ErrorResponse"].is_object());
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
    // Every operation documents its success and at least one error.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path}");
            if path.starts_with("/v1/") {
                assert!(responses.contains_key("401"), "{method} {path}");
            }
        }
    }
}

/// The statement pages with `after` / `next_after`; a cursor the API did not hand out is a 400
/// naming the field.
#[tokio::test]
async fn entries_page_with_next_after() {
    let e = env().await;
    let cid = e.consumer("free").await;
    for (i, amount) in ["1", "2", "3"].iter().enumerate() {
        e.clock.advance_ms(1);
        let r = e.top_up(&cid, amount, &format!("pay-{i}")).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let list = format!("/v1/consumers/{cid}/entries");
    let r = e.get(&format!("{list}?limit=2")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let amounts = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["amount"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(amounts(&r.body), ["3.00", "2.00"], "newest first");
    let next = r.body["next_after"].as_str().unwrap().to_string();
    let r = e
        .get(&format!("{list}?limit=2&after={}", urlencode(&next)))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(amounts(&r.body), ["1.00"]);
    assert!(r.body["next_after"].is_null(), "{}", r.body);
    let r = e.get(&format!("{list}?after=yesterday")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert_eq!(r.body["details"]["field"], "after");
}

/// The 409 for a reused top-up key holds however long the consumer's statement has grown since
/// (the first amount is found by its id, not on the statement's first page).
#[tokio::test]
async fn a_reused_top_up_key_conflicts_after_more_than_a_page_of_newer_entries() {
    let e = env().await;
    let cid = e.consumer("free").await;
    let r = e.top_up(&cid, "12.50", "inv-9").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let seq = e.state.store.dir.consumer(&cid).unwrap().seq;
    let balance = tollgate_store::AcctKey {
        kind: tollgate_store::AcctKind::Balance,
        owner: seq,
        period: 0,
    };
    let revenue = tollgate_store::AcctKey {
        kind: tollgate_store::AcctKind::Revenue,
        owner: 1,
        period: 0,
    };
    for i in 0..1_001 {
        e.state
            .store
            .journal
            .write_nowait(tollgate_store::Op::Entries {
                charge_id: format!("later-{i}"),
                occurred_ms: ms(NOW) + 1 + i,
                entries: vec![tollgate_store::Entry {
                    leg: 0,
                    kind: "charge",
                    debit: balance,
                    credit: revenue,
                    amount: 1,
                }],
            })
            .unwrap();
    }
    let r = e
        .get(&format!("/v1/consumers/{cid}/entries?limit=1000"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    assert!(
        items.iter().all(|i| i["kind"] == "charge"),
        "the top-up is past the first page"
    );
    let r = e.top_up(&cid, "99", "inv-9").await;
    assert_error(&r, StatusCode::CONFLICT, "IDEMPOTENCY_CONFLICT");
    assert_eq!(r.body["details"]["original_amount"], "12.50");
    let r = e.top_up(&cid, "12.50", "inv-9").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["applied"], false);
}

#[tokio::test]
async fn journal_reports_commits_and_the_disks_sync_latency() {
    let e = env().await;
    let before = e.get("/v1/journal").await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    assert_eq!(before.body["durability"], "strict");
    // What a settled request logs (admin changes go to the database, not the log): each
    // write is durable (strict) before it returns.
    for id in ["j-1", "j-2"] {
        e.state
            .store
            .journal
            .write(tollgate_store::Op::Entries {
                charge_id: id.into(),
                occurred_ms: ms(NOW),
                entries: Vec::new(),
            })
            .await
            .unwrap();
    }
    let r = e.get("/v1/journal").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap();
    assert!(
        n(&r.body, "records") >= n(&before.body, "records") + 2,
        "{}",
        r.body
    );
    assert!(n(&r.body, "commits") > n(&before.body, "commits"));
    assert!(n(&r.body, "syncs") > n(&before.body, "syncs"));
    let hist = r.body["sync_histogram"].as_array().unwrap();
    let counted: u64 = hist.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, n(&r.body, "syncs"));
    assert!(hist.last().unwrap()["le_us"].is_null());
    assert!(hist[0]["le_us"].as_u64().unwrap() > 0);
    // Percentiles are bucket bounds, in order.
    let p50 = n(&r.body, "sync_p50_us");
    let p99 = n(&r.body, "sync_p99_us");
    assert!(hist.iter().any(|b| b["le_us"].as_u64() == Some(p50)));
    assert!(p50 <= p99, "{}", r.body);
    assert!(r.body["sync_mean_us"].is_u64());
    // Each record's wait until durable: at least the two written here, every one of them in
    // a bucket, and none shorter than the fastest sync it waited for.
    assert!(n(&r.body, "waits") >= n(&before.body, "waits") + 2);
    let waits = r.body["wait_histogram"].as_array().unwrap();
    assert_eq!(waits.len(), hist.len());
    let counted: u64 = waits.iter().map(|b| b["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, n(&r.body, "waits"));
    assert!(n(&r.body, "wait_p50_us") <= n(&r.body, "wait_p99_us"));
    assert!(r.body["wait_mean_us"].is_u64());
    // Both records are in the log, numbered; once flushed they are in the database too.
    assert!(n(&r.body, "logged_lsn") >= n(&before.body, "logged_lsn") + 2);
    e.state.store.journal.flush().await.unwrap();
    let r = e.get("/v1/journal").await;
    assert_eq!(
        n(&r.body, "applied_lsn"),
        n(&r.body, "logged_lsn"),
        "{}",
        r.body
    );
    assert_eq!(n(&r.body, "backlog"), 0);
    // Admin only.
    let anon = e
        .raw(Request::get("/v1/journal").body(Body::empty()).unwrap())
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn store_failure_is_a_503() {
    let e = env().await;
    let cid = e.consumer("free").await;
    // Make every ledger write fail inside SQLite, as a full or broken disk would.
    let db = e._dir.path().join("tollgate.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER fail_entries BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
    )
    .unwrap();
    let r = e
        .post(
            &format!("/v1/consumers/{cid}/credits"),
            json!({"amount": "1"}),
        )
        .await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE");
    assert_eq!(r.headers.get(header::RETRY_AFTER).unwrap(), "1");
    // The cause stays in the log, not in the body.
    assert!(!r.body.to_string().contains("disk on fire"), "{}", r.body);
    let r = e.get(&format!("/v1/consumers/{cid}")).await;
    assert_eq!(r.body["balance"], "0.00");
}

/// Percent-encode a query value (everything but unreserved characters).
fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
