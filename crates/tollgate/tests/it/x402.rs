//! x402 through the real binary: anvil started here on a free loopback port, Circle's
//! FiatTokenV2_2 deployed by `tools/x402-e2e/deploy.mjs`, the official TypeScript
//! (`@x402/fetch` + `@x402/evm`) and Python clients paying, payments signed in Rust and
//! tweaked to be refused. Missing tools make these tests FAIL (run `tools/x402-e2e/setup.sh`,
//! which `scripts/test` does), never skip.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use testkit::chain::{deploy, require, tools_dir, Anvil, Deployment};
use testkit::MockUpstream;
use tokio::process::Command;
use tollgate_x402::alloy::primitives::{keccak256, Address, B256, U256};
use tollgate_x402::alloy::signers::local::PrivateKeySigner;
use tollgate_x402::client::{sign_exact_payment, AuthorizationTerms};
use tollgate_x402::codec::encode_payment_header;
use tollgate_x402::price::{NetworkOffer, PricedRoute, RoutePrice};
use tollgate_x402::verify::{Clock, SystemClock};
use tollgate_x402::{PaymentPayload, TokenAmount};

use crate::harness::{base_config, json, Gw, TOKEN};

const PRICE: u128 = 10_000;
const SIGNER_ENV: &str = "TOLLGATE_X402_SIGNER_KEY";

/// One JSON-RPC call; `None` when the node cannot be reached or answers an error.
async fn rpc(url: &str, method: &str, params: Value) -> Option<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v.get("result").cloned()
}

async fn balance(url: &str, token: Address, who: Address) -> U256 {
    let data = format!("0x70a08231{:0>64}", hex_of(who.as_slice()));
    let out = rpc(
        url,
        "eth_call",
        json!([{"to": token.to_string(), "data": data}, "latest"]),
    )
    .await
    .expect("balanceOf");
    U256::from_str_radix(out.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The receipt status of `tx` (`"0x1"` for success), asserting it exists.
async fn receipt_status(url: &str, tx: &str) -> String {
    let r = rpc(url, "eth_getTransactionReceipt", json!([tx]))
        .await
        .unwrap_or_else(|| panic!("no receipt for {tx}"));
    r["status"].as_str().unwrap_or_default().to_string()
}

fn nonce(n: u64) -> B256 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut seed = [0u8; 28];
    seed[..16].copy_from_slice(&t.to_be_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_be_bytes());
    seed[20..].copy_from_slice(&n.to_be_bytes());
    keccak256(seed)
}

fn offer_toml(dep: &Deployment) -> String {
    format!(
        r#"
[[routes.x402.offers]]
network = "{}"
asset = "{}"
pay_to = "{}"
eip712_name = "{}"
eip712_version = "{}"
max_timeout_seconds = 120
"#,
        dep.network, dep.token, dep.pay_to, dep.name, dep.version
    )
}

/// The gateway config: a public x402-only route, a route paid by x402 or an API key, a
/// settle-after-response route and a route requiring payment identifiers.
fn config(dir: &std::path::Path, mock: &MockUpstream, rpc_url: &str, dep: &Deployment) -> String {
    let offer = offer_toml(dep);
    let mut cfg = base_config(dir, mock.addr());
    cfg.push_str(&format!(
        r#"
[x402]
[[x402.networks]]
network = "{network}"
rpc_url = "{rpc_url}"
signer_key_env = "{SIGNER_ENV}"
receipt_timeout_seconds = 20

[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
public = true
[routes.x402]
amount = "{PRICE}"
description = "Premium data"
mime_type = "application/json"
{offer}
[[routes]]
id = "both"
path_prefix = "/both"
upstream = "mock"
price = "0.10"
[routes.x402]
amount = "{PRICE}"
description = "Premium data, or use your API key"
{offer}
[[routes]]
id = "after"
path_prefix = "/after"
upstream = "mock"
public = true
[routes.x402]
amount = "{PRICE}"
settle_after_response = true
{offer}
[[routes]]
id = "pid"
path_prefix = "/pid"
upstream = "mock"
public = true
[routes.x402]
amount = "{PRICE}"
require_payment_identifier = true
{offer}
[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
"#,
        network = dep.network,
    ));
    cfg
}

/// The route's price as the gateway compiles it (for signing test payments).
fn priced(dep: &Deployment) -> PricedRoute {
    RoutePrice {
        amount: Some(TokenAmount::from_u128(PRICE)),
        usd: None,
        offers: vec![NetworkOffer {
            network: dep.network.clone(),
            asset: Some(dep.token.to_string()),
            pay_to: dep.pay_to.to_string(),
            eip712_name: Some(dep.name.clone()),
            eip712_version: Some(dep.version.clone()),
            decimals: None,
            max_timeout_seconds: 120,
        }],
        description: None,
        mime_type: None,
    }
    .compile()
    .unwrap()
}

struct Env {
    anvil: Anvil,
    dep: Deployment,
    mock: MockUpstream,
    gw: Gw,
    route: PricedRoute,
}

impl Env {
    async fn start() -> Env {
        let anvil = Anvil::start(&[]).await;
        let dep = deploy(&anvil.url).await;
        // Each test is its own process under nextest; the spawned gateway inherits this.
        std::env::set_var(SIGNER_ENV, &dep.settler_key);
        let mock = MockUpstream::start_local().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &mock, &anvil.url, &dep);
        let gw = Gw::start(dir, &cfg);
        let route = priced(&dep);
        Env {
            anvil,
            dep,
            mock,
            gw,
            route,
        }
    }

    fn terms(&self, n: u64) -> AuthorizationTerms {
        AuthorizationTerms::for_offer(&self.route.offers[0], SystemClock.now_unix(), nonce(n))
    }

    fn sign(&self, key: &str, terms: &AuthorizationTerms) -> PaymentPayload {
        let signer: PrivateKeySigner = key.parse().unwrap();
        sign_exact_payment(&signer, &self.route.offers[0], terms).unwrap()
    }

    fn header(&self, n: u64) -> String {
        payment_header(&self.dep, &self.route, n)
    }

    async fn pay(&self, path: &str, header: &str) -> reqwest::Response {
        get_paid(&self.gw, path, "PAYMENT-SIGNATURE", header).await
    }

    async fn pay_to_balance(&self) -> U256 {
        balance(&self.anvil.url, self.dep.token, self.dep.pay_to).await
    }

    async fn payer_balance(&self) -> U256 {
        balance(&self.anvil.url, self.dep.token, self.dep.payer).await
    }
}

/// The payer's signed authorization for `route`'s first offer with nonce `n`, as a header value.
fn payment_header(dep: &Deployment, route: &PricedRoute, n: u64) -> String {
    let signer: PrivateKeySigner = dep.payer_key.parse().unwrap();
    let t = AuthorizationTerms::for_offer(&route.offers[0], SystemClock.now_unix(), nonce(n));
    encode_payment_header(&sign_exact_payment(&signer, &route.offers[0], &t).unwrap()).unwrap()
}

/// `GET path` with the payment in header `name` (`PAYMENT-SIGNATURE` or v1's `X-PAYMENT`).
async fn get_paid(gw: &Gw, path: &str, name: &str, value: &str) -> reqwest::Response {
    gw.http
        .get(gw.url(path))
        .header(name, value)
        .send()
        .await
        .unwrap()
}

fn decode_b64_json(s: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Runs an official client and returns its one-line JSON report.
async fn run_client(cmd: &mut Command) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
        .await
        .expect("client timed out")
        .expect("client runs");
    assert!(
        out.status.success(),
        "client failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts one official-client payment went through end to end.
async fn assert_client_paid(env: &Env, report: &Value, calls_before: u64, pay_to_before: U256) {
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["body"]["ok"], true, "{report}");
    let pr = &report["paymentResponse"];
    assert_eq!(pr["success"], true, "{report}");
    let tx = pr["transaction"].as_str().unwrap();
    assert_eq!(receipt_status(&env.anvil.url, tx).await, "0x1");
    assert_eq!(
        env.mock.calls(),
        calls_before + 1,
        "upstream called exactly once"
    );
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(PRICE)
    );
}

fn redact_challenge(mut v: Value) -> Value {
    v["request_id"] = "[request_id]".into();
    for k in ["asset", "pay_to", "resource"] {
        if v["details"].get(k).is_some() {
            v["details"][k] = format!("[{k}]").into();
        }
    }
    v["resource"]["url"] = "[url]".into();
    if let Some(a) = v["accepts"].as_array_mut() {
        for o in a {
            o["asset"] = "[asset]".into();
            o["payTo"] = "[pay_to]".into();
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_pay_through_the_binary_and_api_keys_still_work() {
    let env = Env::start().await;

    // Without payment: our 402 contract body with the x402 challenge mirrored, plus headers.
    let r = env
        .gw
        .http
        .get(env.gw.url("/paid/data"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let expose = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(expose.contains("PAYMENT-REQUIRED") && expose.contains("PAYMENT-RESPONSE"));
    let header = decode_b64_json(r.headers()["payment-required"].to_str().unwrap());
    let body = json(r).await;
    assert_eq!(body["code"], "PAYMENT_REQUIRED");
    assert_eq!(header["x402Version"], 2);
    for k in ["x402Version", "error", "resource", "accepts"] {
        assert_eq!(body[k], header[k], "{k} mirrored in the body");
    }
    assert_eq!(header["accepts"][0]["amount"], PRICE.to_string());
    insta::assert_json_snapshot!("x402_payment_required", redact_challenge(body));
    assert_eq!(env.mock.calls(), 0);

    // The official TypeScript client: 402 → sign → 200 with PAYMENT-RESPONSE.
    let payer_before = env.payer_balance().await;
    let pay_to_before = env.pay_to_balance().await;
    let report = run_client(
        Command::new("node")
            .arg(tools_dir().join("pay.mjs"))
            .arg(env.gw.url("/paid/data"))
            .arg(&env.dep.payer_key)
            .arg(env.dep.token.to_string()),
    )
    .await;
    assert_client_paid(&env, &report, 0, pay_to_before).await;
    assert_eq!(
        env.payer_balance().await,
        payer_before - U256::from(PRICE),
        "payer debited exactly the price"
    );

    // The official Python client.
    let python = require(tools_dir().join(".venv/bin/python"), "python venv");
    let pay_to_before = env.pay_to_balance().await;
    let report = run_client(
        Command::new(python)
            .arg(tools_dir().join("pay.py"))
            .arg(env.gw.url("/paid/py"))
            .arg(&env.dep.payer_key)
            .arg(env.dep.token.to_string()),
    )
    .await;
    assert_client_paid(&env, &report, 1, pay_to_before).await;
    assert_eq!(
        env.payer_balance().await,
        payer_before - U256::from(2 * PRICE)
    );

    // A route with x402 and plans: no credentials → the challenge; an API key still pays.
    let r = env.gw.http.get(env.gw.url("/both")).send().await.unwrap();
    assert_eq!(r.status(), 402);
    let b = json(r).await;
    assert_eq!(b["details"]["api_key_accepted"], true);
    let key = env.gw.consumer("agent-co", "payg").await;
    env.gw.top_up("agent-co", "1.00").await;
    let r = env
        .gw
        .http
        .get(env.gw.url("/both"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-cost"], "0.10");
    assert!(r.headers().get("payment-response").is_none());
    assert_eq!(env.mock.calls(), 3);

    // Discovery lists the priced routes with their offers and bazaar metadata.
    let r = env
        .gw
        .http
        .get(env.gw.url("/.well-known/x402"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d = json(r).await;
    let items = d["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let paid = items.iter().find(|i| i["route"] == "paid").unwrap();
    assert_eq!(paid["accepts"][0]["amount"], PRICE.to_string());
    assert_eq!(paid["extensions"]["bazaar"]["description"], "Premium data");
    assert_eq!(
        paid["extensions"]["bazaar"]["info"]["input"]["method"],
        "GET"
    );
    assert_eq!(env.mock.calls(), 3);

    // Both payments are in the admin API and the CLI.
    let (s, v) = env
        .gw
        .admin(reqwest::Method::GET, "/v1/x402/payments?route=paid", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{v}");
    for p in items {
        assert_eq!(p["state"], "settled");
        assert_eq!(p["amount"], PRICE.to_string());
        assert_eq!(p["network"], env.dep.network);
        assert_eq!(
            p["payer"],
            format!("{:#x}", env.dep.payer),
            "payer recorded"
        );
        assert_eq!(
            receipt_status(&env.anvil.url, p["tx_hash"].as_str().unwrap()).await,
            "0x1"
        );
    }
    let (s, v) = env
        .gw
        .admin(reqwest::Method::GET, "/v1/x402/payments?state=bogus", None)
        .await;
    assert_eq!(s, 400, "{v}");
    let out = std::process::Command::new(crate::harness::bin())
        .args([
            "admin",
            "--url",
            &format!("http://{}", env.gw.admin),
            "--token",
            TOKEN,
            "x402",
            "payments",
            "--payer",
            &env.dep.payer.to_string(),
            "--limit",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["next_after"].is_string(), "{listed}");
    // A usage event was written per paid request.
    let n: i64 = env
        .gw
        .db("agent-co")
        .await
        .query_row(
            "SELECT COUNT(*) FROM usage WHERE route = 'paid' AND charged = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_payments_get_their_code_and_never_reach_the_upstream() {
    let env = Env::start().await;
    let pay_to_before = env.pay_to_balance().await;
    let expect = |v: &Value, status: u16, s: reqwest::StatusCode, code: &str, reason: &str| {
        assert_eq!(s.as_u16(), status, "{v}");
        assert_eq!(v["code"], code, "{v}");
        if !reason.is_empty() {
            assert_eq!(v["details"]["reason"], reason, "{v}");
        }
    };
    let check = |r: reqwest::Response, status: u16, code: &'static str, reason: &'static str| async move {
        let s = r.status();
        if status == 402 {
            assert!(
                r.headers().contains_key("payment-required"),
                "402 carries the challenge"
            );
        }
        let v = json(r).await;
        expect(&v, status, s, code, reason);
        v
    };

    // Malformed headers.
    check(
        env.pay("/paid", "%%%not-base64").await,
        402,
        "PAYMENT_INVALID",
        "malformed_payment",
    )
    .await;
    let not_json = base64::engine::general_purpose::STANDARD.encode("{not json");
    check(
        env.pay("/paid", &not_json).await,
        402,
        "PAYMENT_INVALID",
        "malformed_payment",
    )
    .await;
    let wrong_shape = base64::engine::general_purpose::STANDARD.encode(r#"{"x402Version":2}"#);
    check(
        env.pay("/paid", &wrong_shape).await,
        402,
        "PAYMENT_INVALID",
        "",
    )
    .await;

    // Wrong amount, recipient.
    let mut t = env.terms(1);
    t.value = U256::from(PRICE - 1);
    let h = encode_payment_header(&env.sign(&env.dep.payer_key, &t)).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "amount_mismatch",
    )
    .await;
    let mut t = env.terms(2);
    t.to = Address::repeat_byte(0x42);
    let h = encode_payment_header(&env.sign(&env.dep.payer_key, &t)).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "recipient_mismatch",
    )
    .await;

    // Wrong asset and wrong chain: signed for offers the route does not make.
    let signer: PrivateKeySigner = env.dep.payer_key.parse().unwrap();
    let mut other = RoutePrice {
        amount: Some(TokenAmount::from_u128(PRICE)),
        usd: None,
        offers: vec![NetworkOffer {
            network: env.dep.network.clone(),
            asset: Some("0x5FbDB2315678afecb367f032d93F642f64180aa3".into()),
            pay_to: env.dep.pay_to.to_string(),
            eip712_name: Some(env.dep.name.clone()),
            eip712_version: Some(env.dep.version.clone()),
            decimals: None,
            max_timeout_seconds: 120,
        }],
        description: None,
        mime_type: None,
    };
    let wrong_asset = other.compile().unwrap();
    let t = AuthorizationTerms::for_offer(&wrong_asset.offers[0], SystemClock.now_unix(), nonce(3));
    let h =
        encode_payment_header(&sign_exact_payment(&signer, &wrong_asset.offers[0], &t).unwrap())
            .unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "requirements_mismatch",
    )
    .await;
    // Base mainnet's known USDC.
    other.offers[0].network = "eip155:8453".into();
    other.offers[0].asset = None;
    other.offers[0].eip712_name = None;
    other.offers[0].eip712_version = None;
    let wrong_chain = other.compile().unwrap();
    let t = AuthorizationTerms::for_offer(&wrong_chain.offers[0], SystemClock.now_unix(), nonce(4));
    let h =
        encode_payment_header(&sign_exact_payment(&signer, &wrong_chain.offers[0], &t).unwrap())
            .unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "unsupported_network",
    )
    .await;

    // Expired and not yet valid authorizations.
    let now = SystemClock.now_unix();
    let mut t = env.terms(5);
    t.valid_after = now - 600;
    t.valid_before = now - 60;
    let h = encode_payment_header(&env.sign(&env.dep.payer_key, &t)).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "authorization_expired",
    )
    .await;
    let mut t = env.terms(6);
    t.valid_after = now + 600;
    t.valid_before = now + 1200;
    let h = encode_payment_header(&env.sign(&env.dep.payer_key, &t)).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "authorization_not_yet_valid",
    )
    .await;

    // Bad signature: signed by someone else, claiming to be the funded payer.
    let mut p = env.sign(&env.dep.poor_payer_key, &env.terms(7));
    if let PaymentPayload::V2(v2) = &mut p {
        v2.payload.authorization.from = env.dep.payer;
    }
    let h = encode_payment_header(&p).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "invalid_signature",
    )
    .await;

    // A payer without funds.
    let h = encode_payment_header(&env.sign(&env.dep.poor_payer_key, &env.terms(8))).unwrap();
    check(
        env.pay("/paid", &h).await,
        402,
        "PAYMENT_INVALID",
        "insufficient_funds",
    )
    .await;

    assert_eq!(
        env.mock.calls(),
        0,
        "no refused payment reached the upstream"
    );
    assert_eq!(env.pay_to_balance().await, pay_to_before, "nothing charged");

    // A good payment is served once; its replay is refused with the original settlement.
    let h = env.header(9);
    let r = env.pay("/paid", &h).await;
    assert_eq!(r.status(), 200);
    let pr = decode_b64_json(r.headers()["payment-response"].to_str().unwrap());
    assert_eq!(pr["success"], true);
    let r = env.pay("/paid", &h).await;
    let again = r
        .headers()
        .get("payment-response")
        .map(|v| decode_b64_json(v.to_str().unwrap()));
    let v = check(r, 402, "PAYMENT_ALREADY_USED", "nonce_already_used").await;
    assert_eq!(v["details"]["transaction"], pr["transaction"]);
    assert_eq!(again.unwrap()["transaction"], pr["transaction"]);
    // The same payment on another route of the same price is a replay too.
    check(
        env.pay("/both", &h).await,
        402,
        "PAYMENT_ALREADY_USED",
        "nonce_already_used",
    )
    .await;
    assert_eq!(env.mock.calls(), 1);
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(PRICE)
    );

    // payment-identifier: required but missing → 400; same id + same payment → the cached
    // response; same id + another payment → 409.
    let h = env.header(10);
    check(env.pay("/pid", &h).await, 400, "BAD_REQUEST", "").await;
    let with_id = |n: u64, id: &str| {
        let mut p = env.sign(&env.dep.payer_key, &env.terms(n));
        if let PaymentPayload::V2(v2) = &mut p {
            let mut ext = serde_json::Map::new();
            ext.insert(
                "payment-identifier".into(),
                json!({"info": {"required": true, "id": id}}),
            );
            v2.extensions = Some(ext);
        }
        encode_payment_header(&p).unwrap()
    };
    let id = "pay_0123456789abcdef";
    let h = with_id(11, id);
    let r = env.pay("/pid/x", &h).await;
    assert_eq!(r.status(), 200);
    let first = r.headers()["payment-response"].clone();
    let first_body = r.text().await.unwrap();
    let r = env.pay("/pid/x", &h).await;
    assert_eq!(r.status(), 200, "same id and payment: the cached response");
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.headers()["payment-response"], first);
    assert_eq!(r.text().await.unwrap(), first_body);
    check(
        env.pay("/pid/x", &with_id(12, id)).await,
        409,
        "PAYMENT_IDENTIFIER_CONFLICT",
        "",
    )
    .await;
    assert_eq!(env.mock.calls(), 2);
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(2 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_buys_one_response_under_concurrency_and_many_payments_all_settle() {
    let env = Arc::new(Env::start().await);
    let pay_to_before = env.pay_to_balance().await;

    // 20 concurrent requests carrying the same payment: one response, one transfer.
    let h = env.header(100);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let env = Arc::clone(&env);
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let r = env.pay("/paid/same", &h).await;
            let s = r.status().as_u16();
            (s, json(r).await)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        if s == 200 {
            ok += 1;
        } else {
            assert_eq!(s, 402, "{v}");
            assert_eq!(v["code"], "PAYMENT_ALREADY_USED", "{v}");
        }
    }
    assert_eq!(ok, 1, "exactly one request served");
    assert_eq!(env.mock.calls(), 1, "exactly one upstream call");
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(PRICE)
    );

    // 16 concurrent clients, each with its own authorization from the same payer, one settler
    // key: all settle, all served.
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let env = Arc::clone(&env);
        tasks.push(tokio::spawn(async move {
            let h = env.header(200 + i);
            let r = env.pay(&format!("/paid/many/{i}"), &h).await;
            let s = r.status().as_u16();
            let pr = r
                .headers()
                .get("payment-response")
                .map(|v| decode_b64_json(v.to_str().unwrap()));
            (s, pr, r.text().await.unwrap())
        }));
    }
    let mut txs = std::collections::HashSet::new();
    for t in tasks {
        let (s, pr, body) = t.await.unwrap();
        assert_eq!(s, 200, "{body}");
        let pr = pr.unwrap();
        assert_eq!(pr["success"], true);
        txs.insert(pr["transaction"].as_str().unwrap().to_string());
    }
    assert_eq!(txs.len(), 16, "16 distinct settlements");
    for tx in &txs {
        assert_eq!(receipt_status(&env.anvil.url, tx).await, "0x1");
    }
    assert_eq!(env.mock.calls(), 17);
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(17 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_after_response_settles_only_what_was_served() {
    let env = Env::start().await;
    let pay_to_before = env.pay_to_balance().await;
    // Upstream 503: served nothing, settled nothing; the same payment may be used again.
    let h = env.header(300);
    let r = env.pay("/after/status/503", &h).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("payment-response").is_none());
    assert_eq!(env.pay_to_balance().await, pay_to_before);
    let r = env.pay("/after/ok", &h).await;
    assert_eq!(r.status(), 200);
    let pr = decode_b64_json(r.headers()["payment-response"].to_str().unwrap());
    assert_eq!(pr["success"], true);
    assert_eq!(
        receipt_status(&env.anvil.url, pr["transaction"].as_str().unwrap()).await,
        "0x1"
    );
    assert_eq!(
        env.pay_to_balance().await,
        pay_to_before + U256::from(PRICE)
    );
    // Replayed: refused before the upstream.
    let r = env.pay("/after/ok", &h).await;
    assert_eq!(r.status(), 402);
    assert_eq!(json(r).await["code"], "PAYMENT_ALREADY_USED");
    assert_eq!(env.mock.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_rpc_is_503_with_retry_after_and_nothing_charged() {
    // Fixed addresses (no chain needed: the RPC endpoint is a closed port).
    let dep = offline_deployment();
    std::env::set_var(SIGNER_ENV, &dep.settler_key);
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://{}", testkit::refused_addr());
    let cfg = config(dir.path(), &mock, &closed, &dep);
    let gw = Gw::start(dir, &cfg);
    let h = payment_header(&dep, &priced(&dep), 1);
    for _ in 0..2 {
        let r = get_paid(&gw, "/paid", "X-PAYMENT", &h).await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert!(
            r.headers().get("payment-required").is_none(),
            "never a fresh 402"
        );
        let v = json(r).await;
        assert_eq!(v["code"], "PAYMENT_PROVIDER_UNAVAILABLE", "{v}");
        assert_eq!(v["details"]["reason"], "provider_unavailable", "{v}");
    }
    assert_eq!(mock.calls(), 0, "upstream not called");
    let (s, v) = gw
        .admin(reqwest::Method::GET, "/v1/x402/payments", None)
        .await;
    assert_eq!(s, 200);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    assert_eq!(items[0]["state"], "failed");
    assert_eq!(items[0]["reason"], "provider_unavailable");
    assert!(items[0]["tx_hash"].is_null(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_without_receipt_is_503_pending_never_a_fresh_402() {
    let anvil = Anvil::start(&[]).await;
    let dep = deploy(&anvil.url).await;
    std::env::set_var(SIGNER_ENV, &dep.settler_key);
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, &anvil.url, &dep).replace(
        "receipt_timeout_seconds = 20",
        "receipt_timeout_seconds = 1",
    );
    let gw = Gw::start(dir, &cfg);
    // Blocks stop: the settlement is broadcast but its receipt never comes.
    rpc(&anvil.url, "evm_setAutomine", json!([false]))
        .await
        .expect("evm_setAutomine");
    let h = payment_header(&dep, &priced(&dep), 1);
    let mut tx = String::new();
    for _ in 0..2 {
        let r = get_paid(&gw, "/paid", "PAYMENT-SIGNATURE", &h).await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        assert!(
            r.headers().get("payment-required").is_none(),
            "never a fresh 402"
        );
        let pr = decode_b64_json(r.headers()["payment-response"].to_str().unwrap());
        assert_eq!(pr["success"], false);
        assert_eq!(pr["errorReason"], "settlement_pending");
        let v = json(r).await;
        assert_eq!(v["code"], "PAYMENT_SETTLEMENT_PENDING", "{v}");
        tx = v["details"]["transaction"].as_str().unwrap().to_string();
        assert_eq!(pr["transaction"], tx.as_str());
        assert!(tx.starts_with("0x") && tx.len() == 66, "{v}");
    }
    assert_eq!(mock.calls(), 0);
    let (s, v) = gw
        .admin(
            reqwest::Method::GET,
            "/v1/x402/payments?state=pending",
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["tx_hash"], tx.as_str(), "{v}");

    // Once mined, the same payment is served — once.
    rpc(&anvil.url, "evm_mine", json!([]))
        .await
        .expect("evm_mine");
    assert_eq!(receipt_status(&anvil.url, &tx).await, "0x1");
    let r = gw
        .http
        .get(gw.url("/paid"))
        .header("PAYMENT-SIGNATURE", &h)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pr = decode_b64_json(r.headers()["payment-response"].to_str().unwrap());
    assert_eq!(pr["success"], true);
    assert_eq!(pr["transaction"], tx.as_str());
    assert_eq!(mock.calls(), 1);
    let r = gw
        .http
        .get(gw.url("/paid"))
        .header("PAYMENT-SIGNATURE", &h)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(json(r).await["code"], "PAYMENT_ALREADY_USED");
    assert_eq!(mock.calls(), 1);
    let (_, v) = gw
        .admin(reqwest::Method::GET, "/v1/x402/payments", None)
        .await;
    assert_eq!(v["items"][0]["state"], "settled", "{v}");
}

/// The fixed addresses of the tests that need no chain.
fn offline_deployment() -> Deployment {
    Deployment {
        network: "eip155:31337".into(),
        token: "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap(),
        name: "USD Coin".into(),
        version: "2".into(),
        payer: Address::ZERO,
        payer_key: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".into(),
        pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
            .parse()
            .unwrap(),
        settler_key: "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a".into(),
        ..Deployment::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_exit_64_with_key_paths_and_prices_follow_reloads() {
    let dep = offline_deployment();
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://{}", testkit::refused_addr());
    let cfg = config(dir.path(), &mock, &closed, &dep);
    let check = |text: &str, with_env: bool| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(crate::harness::bin());
        cmd.args(["config", "check", "--config"]).arg(&path);
        if with_env {
            cmd.env(SIGNER_ENV, &dep.settler_key);
        } else {
            cmd.env_remove(SIGNER_ENV);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(check(&cfg, true).0, Some(0));
    let (code, err) = check(&cfg, false);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("x402.networks[0].signer_key_env"), "{err}");
    let bad = cfg
        .replacen(&dep.pay_to.to_string(), "0x1234", 1)
        .replacen(
            "network = \"eip155:31337\"\nasset",
            "network = \"eip155:1\"\nasset",
            1,
        )
        .replacen(
            &format!("amount = \"{PRICE}\""),
            &format!("amount = \"{PRICE}\"\nusd = \"0.01\""),
            1,
        );
    let (code, err) = check(&bad, true);
    assert_eq!(code, Some(64), "{err}");
    for path in [
        "routes[0].x402.offers[0].pay_to",
        "routes[0].x402.offers[0].network",
        "routes[0].x402.usd",
    ] {
        assert!(err.contains(path), "{path} in {err}");
    }

    // A price change is picked up by a reload.
    std::env::set_var(SIGNER_ENV, &dep.settler_key);
    let gw = Gw::start(tempfile::tempdir().unwrap(), &cfg);
    let amount = |gw: &Gw| {
        let url = gw.url("/paid");
        let http = gw.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 402);
            json(r).await["accepts"][0]["amount"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    assert_eq!(amount(&gw).await, PRICE.to_string());
    let text = std::fs::read_to_string(gw.config_path()).unwrap();
    std::fs::write(
        gw.config_path(),
        text.replace(&format!("amount = \"{PRICE}\""), "amount = \"20000\""),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while amount(&gw).await != "20000" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new price not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mock.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_through_the_official_facilitator_when_configured() {
    let anvil = Anvil::start(&[]).await;
    let dep = deploy(&anvil.url).await;
    let script = require(tools_dir().join("facilitator.mjs"), "facilitator.mjs");
    let mut fac = Command::new("node")
        .arg(script)
        .arg(&anvil.url)
        .arg(&dep.settler_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node facilitator.mjs");
    let stdout = fac.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line),
    )
    .await
    .expect("facilitator did not start within 30s")
    .unwrap();
    let fac_url = serde_json::from_str::<Value>(&line).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let mock = MockUpstream::start_local().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &mock, &anvil.url, &dep).replace(
        &format!(
            "rpc_url = \"{}\"\nsigner_key_env = \"{SIGNER_ENV}\"",
            anvil.url
        ),
        &format!("facilitator_url = \"{fac_url}\""),
    );
    assert!(cfg.contains("facilitator_url"));
    let gw = Gw::start(dir, &cfg);
    let pay_to_before = balance(&anvil.url, dep.token, dep.pay_to).await;
    let report = run_client(
        Command::new("node")
            .arg(tools_dir().join("pay.mjs"))
            .arg(gw.url("/paid/fac"))
            .arg(&dep.payer_key)
            .arg(dep.token.to_string()),
    )
    .await;
    assert_eq!(report["status"], 200, "{report}");
    let tx = report["paymentResponse"]["transaction"].as_str().unwrap();
    assert_eq!(report["paymentResponse"]["success"], true, "{report}");
    assert_eq!(receipt_status(&anvil.url, tx).await, "0x1");
    assert_eq!(mock.calls(), 1);
    assert_eq!(
        balance(&anvil.url, dep.token, dep.pay_to).await,
        pay_to_before + U256::from(PRICE)
    );
    let (_, v) = gw
        .admin(reqwest::Method::GET, "/v1/x402/payments", None)
        .await;
    assert_eq!(v["items"][0]["state"], "settled", "{v}");
    assert_eq!(v["items"][0]["tx_hash"], tx, "{v}");
}
