//! Interop with the official x402 clients: a minimal HTTP server built on this crate's
//! [`PaymentGate`] (challenge → verify → single-flight settle → PAYMENT-RESPONSE), paid by
//! `pay.mjs` (@x402/fetch) and `pay.py` (PyPI x402) on the local chain.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tollgate_x402::codec::{encode_payment_required, EXPOSE_HEADERS};
use tollgate_x402::gate::{GateOutcome, PaymentGate};
use tollgate_x402::price::PricedRoute;
use tollgate_x402::settle::SingleFlight;
use tollgate_x402::store::InMemoryPaymentStore;
use tollgate_x402::verify::SystemClock;

use crate::harness::{bounded, tools_dir, Env, PRICE};

/// Serves `/paid` behind the gate until the test ends. Returns the base URL.
pub async fn serve(gate: PaymentGate, route: PricedRoute) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let route = Arc::new(route);
    let base2 = base.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (gate, route, base) = (gate.clone(), Arc::clone(&route), base2.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(60),
                    handle(sock, &gate, &route, &base),
                )
                .await;
            });
        }
    });
    base
}

/// One HTTP/1.1 request per connection (`connection: close`), enough for these clients.
async fn handle(mut sock: TcpStream, gate: &PaymentGate, route: &PricedRoute, base: &str) {
    sock.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        assert!(buf.len() < 64 * 1024, "request head too large");
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .unwrap_or("")
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_owned();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let payment = header("payment-signature").or_else(|| header("x-payment"));
    let url = format!("{base}{path}");
    let outcome = gate
        .process(route, &url, payment.as_deref().map(str::as_bytes))
        .await;
    let status = outcome.http_status();
    let mut extra = format!("access-control-expose-headers: {EXPOSE_HEADERS}\r\n");
    if let Some(h) = outcome.payment_response_header().unwrap() {
        extra.push_str(&format!(
            "{}: {h}\r\n",
            outcome.payment_response_header_name()
        ));
    }
    let body = match &outcome {
        GateOutcome::PaymentRequired { challenge, .. } => {
            extra.push_str(&format!(
                "payment-required: {}\r\ncache-control: no-store\r\n",
                encode_payment_required(challenge).unwrap()
            ));
            serde_json::to_string(challenge).unwrap()
        }
        GateOutcome::Paid { payer, .. } => {
            serde_json::json!({"data": "premium", "payer": payer.to_string()}).to_string()
        }
        GateOutcome::Pending { response, .. } => serde_json::to_string(response).unwrap(),
        GateOutcome::Unavailable { reason, .. } => {
            serde_json::json!({"error": reason.as_str()}).to_string()
        }
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn gate_for(env: &Env) -> (PaymentGate, Arc<InMemoryPaymentStore>) {
    let store = Arc::new(InMemoryPaymentStore::new());
    let flight = SingleFlight::new(store.clone(), Duration::from_secs(30));
    let gate = PaymentGate::new(flight, Arc::new(env.chain()), Arc::new(SystemClock));
    (gate, store)
}

pub async fn run_client(cmd: &mut Command) -> serde_json::Value {
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.kill_on_drop(true).output())
        .await
        .expect("client timed out")
        .expect("client ran");
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

async fn assert_paid(env: &Env, result: &serde_json::Value, store: &InMemoryPaymentStore) {
    assert_eq!(result["status"], 200, "{result:#}");
    assert_eq!(result["body"]["data"], "premium");
    let pr = &result["paymentResponse"];
    assert_eq!(pr["success"], true, "{result:#}");
    assert_eq!(pr["network"], "eip155:31337");
    assert_eq!(pr["transaction"].as_str().unwrap().len(), 66);
    assert_eq!(store.len(), 1);
    let chain = env.chain();
    let received = chain
        .balance_of(env.dep.token, env.dep.pay_to)
        .await
        .unwrap();
    assert_eq!(received, U256::from(PRICE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_typescript_client_pays() {
    bounded(150, async {
        let env = Env::start().await;
        let (gate, store) = gate_for(&env).await;
        let base = serve(gate, env.route.clone()).await;
        let result = run_client(
            Command::new("node")
                .arg(tools_dir().join("pay.mjs"))
                .arg(format!("{base}/paid"))
                .arg(&env.dep.payer_key)
                .arg(env.dep.token.to_string()),
        )
        .await;
        assert_paid(&env, &result, &store).await;
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_client_pays() {
    bounded(150, async {
        let env = Env::start().await;
        let python = tools_dir().join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} missing — run tools/x402-e2e/setup.sh",
            python.display()
        );
        let (gate, store) = gate_for(&env).await;
        let base = serve(gate, env.route.clone()).await;
        let result = run_client(
            Command::new(python)
                .arg(tools_dir().join("pay.py"))
                .arg(format!("{base}/paid"))
                .arg(&env.dep.payer_key)
                .arg(env.dep.token.to_string()),
        )
        .await;
        assert_paid(&env, &result, &store).await;
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_request_gets_a_v2_challenge() {
    bounded(60, async {
        let env = Env::start().await;
        let (gate, _) = gate_for(&env).await;
        let base = serve(gate, env.route.clone()).await;
        let r = reqwest::get(format!("{base}/paid")).await.unwrap();
        assert_eq!(r.status().as_u16(), 402);
        assert_eq!(r.headers()["cache-control"], "no-store");
        let h = r.headers()["payment-required"].to_str().unwrap().to_owned();
        let body: serde_json::Value = r.json().await.unwrap();
        let decoded = tollgate_x402::codec::decode_base64_header(h.as_bytes()).unwrap();
        let from_header: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(
            from_header, body,
            "header and body carry the same challenge"
        );
        assert_eq!(body["x402Version"], 2);
        assert_eq!(body["accepts"][0]["amount"], PRICE.to_string());
        assert_eq!(body["accepts"][0]["extra"]["name"], "USD Coin");
        env.anvil.stop().await;
    })
    .await;
}
