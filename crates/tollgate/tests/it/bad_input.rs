//! Untrusted input gets its documented error, never a 500 or a panic.

use std::process::Command;

use serde_json::Value;
use testkit::MockUpstream;

use crate::harness::{base_config, bin, json, Gw, TOKEN};

fn paid_config(dir: &std::path::Path, up: std::net::SocketAddr) -> String {
    let mut cfg = base_config(dir, up);
    cfg.push_str(
        r#"
[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
price = "0.01"

[[routes]]
id = "open"
path_prefix = "/open"
upstream = "mock"
public = true

[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
"#,
    );
    cfg
}

fn redact(mut v: Value) -> Value {
    v["request_id"] = Value::from("[request_id]");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_401_with_the_reason() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = paid_config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    let key = gw.consumer("cbad", "payg").await;
    gw.top_up("cbad", "1.00").await;
    mock.reset();

    let r = gw.http.get(gw.url("/paid")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    insta::assert_json_snapshot!("unauthenticated_missing", redact(json(r).await));
    for (k, reason) in [
        ("tg_live_nope", "malformed_key"),
        ("tg_live_abcdefabcdef_wrongsecret", "unknown_key"),
        ("Basic dXNlcjpwYXNz", "malformed_key"),
    ] {
        let r = gw
            .http
            .get(gw.url("/paid"))
            .header("authorization", format!("Bearer {k}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{k}");
        assert_eq!(json(r).await["details"]["reason"], reason, "{k}");
    }
    // Right id, wrong secret.
    let last = if key.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &key[..key.len() - 1]);
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["details"]["reason"], "unknown_key");
    // x-api-key works too.
    let r = gw
        .http
        .get(gw.url("/paid"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Expiring key.
    let soon = (chrono_like_now_plus(1)).to_string();
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            "/v1/consumers/cbad/keys",
            Some(serde_json::json!({"expires_at": soon})),
        )
        .await;
    assert!(s == 200 || s == 201, "{v}");
    let expiring = v["secret"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&expiring)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["details"]["reason"], "expired_key");

    // Revoked key.
    let id = key.split('_').nth(2).unwrap();
    let (s, v) = gw
        .admin(
            reqwest::Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(serde_json::json!({})),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    let r = gw
        .http
        .get(gw.url("/paid"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["details"]["reason"], "revoked_key");
    assert_eq!(
        mock.calls(),
        1,
        "only the one good call reached the upstream"
    );
}

fn chrono_like_now_plus(secs: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    // RFC 3339 via the core crate's dependency-free path: format seconds as UTC.
    let s = d.as_secs() as i64;
    let days = s.div_euclid(86_400);
    let rem = s.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_4xx() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = paid_config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    mock.reset();

    let big = "a".repeat(10_000);
    let r = gw
        .http
        .get(gw.url("/open"))
        .header("x-big", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    insta::assert_json_snapshot!("headers_too_large", redact(json(r).await));
    // Far beyond the limit the HTTP layer refuses before the pipeline (bare 431).
    let huge = "a".repeat(40_000);
    let r = gw
        .http
        .get(gw.url("/open"))
        .header("x-big", &huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    let r = gw
        .http
        .post(gw.url("/open"))
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    insta::assert_json_snapshot!("payload_too_large", redact(json(r).await));

    let r = gw.http.get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json(r).await["code"], "NOT_FOUND");

    let r = gw
        .http
        .post(gw.url("/paid"))
        .header("authorization", "Bearer \u{7f}")
        .send()
        .await;
    if let Ok(r) = r {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let r = gw
        .http
        .get(gw.url("/paid"))
        .header("idempotency-key", "")
        .header("x-api-key", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(mock.calls(), 0, "nothing bad reached the upstream");
    // A streamed (chunked) body that passes the limit mid-way: the upstream may see its start
    // (bodies are streamed, not buffered); the client gets 413.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'y'; 8192])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    // The server answers 413 as soon as the limit is passed and closes the connection, so a
    // client still writing may see the close instead of the response; never anything else.
    match gw.http.post(gw.url("/open/stream")).body(body).send().await {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_rejects_garbage_with_400() {
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = paid_config(dir.path(), mock.addr());
    let gw = Gw::start(dir, &cfg);
    let url = format!("http://{}/v1/tenants", gw.admin);
    for body in ["{", "null", "[]", "{\"id\": 5}", "\u{0}\u{1}garbage"] {
        let r = gw
            .http
            .post(&url)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(json(r).await["code"], "BAD_REQUEST", "{body}");
    }
    let r = gw.http.get(&url).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = gw
        .http
        .get(format!("http://{}/openapi.json", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc = json(r).await;
    assert!(doc["paths"].as_object().unwrap().len() >= 10);
}

#[test]
fn broken_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[routes]]\nid = \"r\"\npath_prefix = \"/x\"\nupstream = \"missing\"\n",
    )
    .unwrap();
    for args in [
        vec!["config", "check", "--config"],
        vec!["serve", "--config"],
    ] {
        let out = Command::new(bin()).args(&args).arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("routes[0].upstream: unknown upstream `missing`"),
            "{err}"
        );
    }
    std::fs::write(&p, "[server]\nlisten = \"127.0.0.1:1\"\nlsten = 3\n").unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.lsten"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&p, "this is = = not toml").unwrap();
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(bin())
        .args(["config", "check", "--config"])
        .arg(dir.path().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(66));
}

/// A second gateway started on a database another one is serving exits with 74 (store failure)
/// and says which database is in use, after a bounded wait; the first one keeps serving.
#[tokio::test]
async fn a_second_gateway_on_the_same_database_exits_74_and_says_why() {
    let upstream = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = base_config(dir.path(), upstream.addr());
    let gw = Gw::start(dir, &config);
    let mut second = Command::new(bin())
        .args(["serve", "--config"])
        .arg(gw.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            panic!("the second gateway kept running on a database in use");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(74), "{err}");
    assert!(
        err.contains("is in use by another tollgate") && err.contains("tollgate.db-lock"),
        "{err}"
    );
    let r = gw
        .http
        .get(format!("http://{}/_tollgate/health", gw.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
