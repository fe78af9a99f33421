//! A local EVM chain for x402 end-to-end tests (feature `chain`): anvil on a free loopback port
//! and Circle's FiatTokenV2_2 deployed by `tools/x402-e2e/deploy.mjs`. A missing tool makes the
//! test FAIL with the command that installs it (`tools/x402-e2e/setup.sh`), never skip.
#![allow(clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alloy_primitives::Address;
use serde::Deserialize;
use tokio::process::{Child, Command};

/// `tools/x402-e2e`: anvil, node packages, the Python venv and the scripts the tests run.
pub fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/x402-e2e")
}

/// `path`, or a failed test naming what is missing and how to install it.
pub fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {} — run tools/x402-e2e/setup.sh first",
        path.display()
    );
    path
}

/// A loopback port that was free when asked.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running anvil, killed on drop.
pub struct Anvil {
    child: Child,
    /// Its JSON-RPC URL.
    pub url: String,
}

impl Anvil {
    /// Starts anvil with `extra_args` (e.g. `--no-mining`) and waits until it answers.
    pub async fn start(extra_args: &[&str]) -> Anvil {
        let bin = require(tools_dir().join("node_modules/.bin/anvil"), "anvil");
        // The port is free when chosen but could be taken before anvil binds it; anvil then
        // exits, and another port is tried rather than talking to someone else's chain.
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

    /// Stops anvil now (an RPC-down test), rather than when dropped.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What `deploy.mjs` prints: the token and the funded accounts of a fresh chain.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The chain's JSON-RPC URL.
    pub rpc_url: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// CAIP-2 network (`eip155:<chain id>`).
    pub network: String,
    /// FiatTokenV2_2 proxy.
    pub token: Address,
    /// EIP-712 domain name of the token.
    pub name: String,
    /// EIP-712 domain version of the token.
    pub version: String,
    /// A payer holding tokens, and its key.
    pub payer: Address,
    /// Hex private key of `payer`.
    pub payer_key: String,
    /// An ERC-1271 smart wallet holding tokens.
    pub smart_wallet: Address,
    /// Hex private key of the smart wallet's owner.
    pub smart_wallet_owner_key: String,
    /// A payer without tokens.
    pub poor_payer: Address,
    /// Hex private key of `poor_payer`.
    pub poor_payer_key: String,
    /// The seller.
    pub pay_to: Address,
    /// An account with gas that sends settlement transactions.
    pub settler: Address,
    /// Hex private key of `settler`.
    pub settler_key: String,
}

/// Runs `deploy.mjs` against `rpc_url` (bounded: 90 s).
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
