//! Local chain harness: spawns anvil on a free loopback port, deploys USDC with
//! `tools/x402-e2e/deploy.mjs`, and builds routes/chains/payments for tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use serde::Deserialize;
use tokio::process::{Child, Command};
use tollgate_x402::chain::{ChainConfig, EvmChain};
use tollgate_x402::client::{sign_exact_payment, AuthorizationTerms};
use tollgate_x402::price::{NetworkOffer, PricedRoute, RoutePrice};
use tollgate_x402::verify::{verify_exact, Clock, SystemClock, VerifiedPayment};
use tollgate_x402::{PaymentPayload, TokenAmount};

/// Price used by the e2e routes (0.01 USDC).
pub const PRICE: u128 = 10_000;

pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/x402-e2e")
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {} — run tools/x402-e2e/setup.sh first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running anvil, killed on drop.
pub struct Anvil {
    child: Child,
    pub url: String,
}

impl Anvil {
    pub async fn start(extra_args: &[&str]) -> Anvil {
        let bin = require(tools_dir().join("node_modules/.bin/anvil"), "anvil");
        // The port is free when chosen but could be taken before anvil binds it; anvil then
        // exits, and we try another port rather than talk to someone else's chain.
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--silent",
                ])
                .args(extra_args)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn anvil");
            let mut anvil = Anvil {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            if anvil.wait_ready().await {
                return anvil;
            }
        }
        panic!("anvil failed to start on 5 different ports");
    }

    /// True once anvil answers; false if the process exited first.
    async fn wait_ready(&mut self) -> bool {
        let http = reqwest::Client::new();
        let body = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]});
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.child.try_wait().expect("poll anvil").is_some() {
                return false;
            }
            let ok = http
                .post(&self.url)
                .json(&body)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "anvil did not start within 20s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Deployment {
    pub rpc_url: String,
    pub chain_id: u64,
    pub network: String,
    pub token: Address,
    pub name: String,
    pub version: String,
    pub payer: Address,
    pub payer_key: String,
    pub smart_wallet: Address,
    pub smart_wallet_owner_key: String,
    pub poor_payer: Address,
    pub poor_payer_key: String,
    pub pay_to: Address,
    pub settler: Address,
    pub settler_key: String,
}

/// Runs deploy.mjs against `rpc_url`.
pub async fn deploy(rpc_url: &str) -> Deployment {
    let script = require(tools_dir().join("deploy.mjs"), "deploy.mjs");
    require(tools_dir().join("node_modules/viem"), "node_modules (viem)");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new("node")
            .arg(script)
            .arg(rpc_url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("deploy.mjs timed out")
    .expect("run node deploy.mjs (is node installed?)");
    assert!(
        out.status.success(),
        "deploy.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("deploy.mjs printed JSON")
}

/// Anvil + deployed token: the starting point of every e2e test.
pub struct Env {
    pub anvil: Anvil,
    pub dep: Deployment,
    pub route: PricedRoute,
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(&[]).await
    }

    pub async fn start_with(anvil_args: &[&str]) -> Env {
        let anvil = Anvil::start(anvil_args).await;
        let dep = deploy(&anvil.url).await;
        let route = route_for(&dep);
        Env { anvil, dep, route }
    }

    pub fn chain_config(&self) -> ChainConfig {
        ChainConfig {
            network: self.dep.network.clone(),
            rpc_url: self.anvil.url.clone(),
            settler_key_env: "UNUSED_IN_TESTS".into(),
            receipt_timeout_ms: 15_000,
            rpc_timeout_ms: 5_000,
            poll_interval_ms: 20,
        }
    }

    pub fn chain(&self) -> EvmChain {
        let signer: PrivateKeySigner = self.dep.settler_key.parse().expect("settler key");
        EvmChain::with_signer(&self.chain_config(), signer).expect("chain")
    }

    /// A signed payment for the route's offer from `key` with nonce `nonce`.
    pub fn payment(&self, key: &str, nonce: B256) -> PaymentPayload {
        let signer: PrivateKeySigner = key.parse().expect("payer key");
        let offer = &self.route.offers[0];
        let terms = AuthorizationTerms::for_offer(offer, SystemClock.now_unix(), nonce);
        sign_exact_payment(&signer, offer, &terms).expect("sign")
    }

    pub fn verified(&self, key: &str, nonce: B256) -> VerifiedPayment {
        verify_exact(
            &self.route,
            &self.payment(key, nonce),
            SystemClock.now_unix(),
        )
        .expect("locally valid")
    }
}

pub fn route_for(dep: &Deployment) -> PricedRoute {
    RoutePrice {
        amount: Some(TokenAmount::from_u128(PRICE)),
        usd: None,
        offers: vec![NetworkOffer {
            network: dep.network.clone(),
            asset: Some(dep.token.to_string()),
            pay_to: dep.pay_to.to_string(),
            eip712_name: Some(dep.name.clone()),
            eip712_version: Some(dep.version.clone()),
            decimals: Some(6),
            max_timeout_seconds: 120,
        }],
        description: Some("e2e premium resource".into()),
        mime_type: Some("application/json".into()),
    }
    .compile()
    .expect("valid route")
}

pub fn nonce(n: u64) -> B256 {
    // Random high part so repeated runs against a long-lived chain never collide.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let mut seed = [0u8; 28];
    seed[..16].copy_from_slice(&t.to_be_bytes());
    seed[16..20].copy_from_slice(&std::process::id().to_be_bytes());
    seed[20..].copy_from_slice(&n.to_be_bytes());
    alloy::primitives::keccak256(seed)
}

/// Runs a test body with an overall time bound.
pub async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {secs}s bound"));
}
