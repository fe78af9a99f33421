//! `tollgate pay` (the real binary) against a real local chain: anvil + Circle's FiatTokenV2_2
//! deployed by `tools/x402-e2e/deploy.mjs`, and a paid resource served by
//! `tollgate_x402::PaymentGate` + `EvmChain` (settle-first). Missing tools make these tests FAIL
//! (run `tools/x402-e2e/setup.sh`), never skip.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use serde_json::Value;
use testkit::chain::{deploy, Anvil, Deployment};
use tokio::process::Command;
use tollgate_client::paid_server::PaidServer;
use tollgate_x402::chain::{ChainConfig, EvmChain};
use tollgate_x402::price::{NetworkOffer, RoutePrice};
use tollgate_x402::{InMemoryPaymentStore, PaymentGate, SingleFlight, SystemClock, TokenAmount};

const PRICE: u64 = 10_000;

/// Anvil, the token, a chain client and a paid server selling `/paid` for [`PRICE`].
struct World {
    _anvil: Anvil,
    dep: Deployment,
    chain: Arc<EvmChain>,
    server: PaidServer,
}

impl World {
    async fn start() -> World {
        let anvil = Anvil::start(&[]).await;
        let dep = deploy(&anvil.url).await;
        let cfg = ChainConfig {
            network: dep.network.clone(),
            rpc_url: anvil.url.clone(),
            settler_key_env: "UNUSED".into(),
            receipt_timeout_ms: 15_000,
            rpc_timeout_ms: 5_000,
            poll_interval_ms: 20,
        };
        let signer: PrivateKeySigner = dep.settler_key.parse().unwrap();
        let chain = Arc::new(EvmChain::with_signer(&cfg, signer).unwrap());
        let route = RoutePrice {
            amount: Some(TokenAmount::from_u128(u128::from(PRICE))),
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
            description: Some("tollgate pay e2e".into()),
            mime_type: Some("application/json".into()),
        }
        .compile()
        .unwrap();
        let gate = PaymentGate::new(
            SingleFlight::new(
                Arc::new(InMemoryPaymentStore::new()),
                Duration::from_secs(20),
            ),
            chain.clone(),
            Arc::new(SystemClock),
        );
        let server = PaidServer::start(gate, route).await.unwrap();
        World {
            _anvil: anvil,
            dep,
            chain,
            server,
        }
    }

    async fn balance(&self, who: Address) -> U256 {
        self.chain.balance_of(self.dep.token, who).await.unwrap()
    }

    fn paid_url(&self) -> String {
        format!("{}/paid", self.server.url)
    }

    /// Runs `tollgate pay <url> --json` with the payer key in the environment.
    async fn pay(&self, url: &str, state: &Path, extra: &[&str]) -> (i32, Value, String) {
        let token = self.dep.token.to_string();
        let state = state.display().to_string();
        let mut args = vec![
            "pay",
            url,
            "--key-env",
            "E2E_PAYER_KEY",
            "--asset",
            &token,
            "--network",
            &self.dep.network,
            "--state",
            &state,
            "--json",
        ];
        args.extend_from_slice(extra);
        pay_cmd(&args, &self.dep.payer_key).await
    }
}

async fn pay_cmd(args: &[&str], key: &str) -> (i32, Value, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .env("E2E_PAYER_KEY", key)
            .env_remove("TOLLGATE_PAY_STATE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tollgate pay timed out")
    .expect("run tollgate pay");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("--json output is not JSON ({e}): {stdout:?}; stderr: {stderr}")
    });
    (out.status.code().unwrap_or(-1), v, stderr)
}

async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {secs}s bound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_402_then_200_moves_exactly_the_price_and_policy_refusal_pays_nothing() {
    bounded(180, async {
        let w = World::start().await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("spend.json");
        let payer0 = w.balance(w.dep.payer).await;
        let to0 = w.balance(w.dep.pay_to).await;

        let (code, v, stderr) = w.pay(&w.paid_url(), &state, &[]).await;
        assert_eq!(code, 0, "{v}\n{stderr}");
        assert_eq!(v["status"], 200);
        assert_eq!(v["body"]["data"], "premium");
        assert_eq!(v["payment"]["amount"], PRICE.to_string());
        assert_eq!(v["payment"]["network"], w.dep.network);
        let tx = v["payment"]["transaction"].as_str().unwrap().to_owned();
        assert!(tx.starts_with("0x") && tx.len() == 66, "{tx}");
        assert!(
            stderr.contains(&format!("paid {PRICE}")) && stderr.contains(&tx),
            "{stderr}"
        );
        // On chain: exactly the price moved, once; the resource was served once.
        assert_eq!(w.balance(w.dep.payer).await, payer0 - U256::from(PRICE));
        assert_eq!(w.balance(w.dep.pay_to).await, to0 + U256::from(PRICE));
        assert_eq!((w.server.requests(), w.server.served()), (2, 1));
        let file: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert_eq!(file["payments"][0]["status"], "settled");
        assert_eq!(file["payments"][0]["tx"], tx.as_str());

        // Above --max-per-payment: refused before signing; exit 2; nothing moves.
        let (code, v, stderr) = w
            .pay(&w.paid_url(), &state, &["--max-per-payment", "9999"])
            .await;
        assert_eq!(code, 2, "{v}\n{stderr}");
        assert_eq!(v["error"]["kind"], "policy_refused");
        assert!(stderr.contains("max-per-payment 9999"), "{stderr}");
        assert_eq!(w.balance(w.dep.payer).await, payer0 - U256::from(PRICE));
        assert_eq!((w.server.requests(), w.server.served()), (3, 1));

        // An asset the policy does not allow (no --asset): refused too.
        let (code, v, _) = pay_cmd(
            &[
                "pay",
                &w.paid_url(),
                "--key-env",
                "E2E_PAYER_KEY",
                "--json",
                "--state",
                &state.display().to_string(),
            ],
            &w.dep.payer_key,
        )
        .await;
        assert_eq!(code, 2, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("asset is not allowed"),
            "{v}"
        );
        assert_eq!(w.server.served(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_budget_holds_across_two_invocations_sharing_a_state_file() {
    bounded(180, async {
        let w = World::start().await;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("spend.json");
        let payer0 = w.balance(w.dep.payer).await;
        let day = ["--max-per-day", "15000"];

        let (code, v, stderr) = w.pay(&w.paid_url(), &state, &day).await;
        assert_eq!(code, 0, "{v}\n{stderr}");
        let (code, v, stderr) = w.pay(&w.paid_url(), &state, &day).await;
        assert_eq!(code, 2, "{v}\n{stderr}");
        assert!(stderr.contains("max-per-day 15000"), "{stderr}");
        assert!(stderr.contains("already spent today: 10000"), "{stderr}");
        assert_eq!(w.balance(w.dep.payer).await, payer0 - U256::from(PRICE));
        assert_eq!(w.server.served(), 1);

        // A fresh state file is a fresh budget (the budget lives in the file).
        let other = dir.path().join("other.json");
        let (code, v, _) = w.pay(&w.paid_url(), &other, &day).await;
        assert_eq!(code, 0, "{v}");
        assert_eq!(w.balance(w.dep.payer).await, payer0 - U256::from(2 * PRICE));
        assert_eq!(w.server.served(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_action_402s_exit_4_with_the_remedy_and_are_not_retried() {
    bounded(60, async {
        // No chain needed: these routes never reach the gate.
        let cfg = ChainConfig {
            network: "eip155:31337".into(),
            rpc_url: "http://127.0.0.1:9".into(),
            settler_key_env: "UNUSED".into(),
            receipt_timeout_ms: 1_000,
            rpc_timeout_ms: 1_000,
            poll_interval_ms: 20,
        };
        let signer: PrivateKeySigner =
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
                .parse()
                .unwrap();
        let chain = Arc::new(EvmChain::with_signer(&cfg, signer).unwrap());
        let route = RoutePrice {
            amount: Some(TokenAmount::from_u128(1)),
            usd: None,
            offers: vec![NetworkOffer {
                network: "eip155:31337".into(),
                asset: Some("0x5FbDB2315678afecb367f032d93F642f64180aa3".into()),
                pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
                eip712_name: Some("USD Coin".into()),
                eip712_version: Some("2".into()),
                decimals: Some(6),
                max_timeout_seconds: 60,
            }],
            description: None,
            mime_type: None,
        }
        .compile()
        .unwrap();
        let gate = PaymentGate::new(
            SingleFlight::new(
                Arc::new(InMemoryPaymentStore::new()),
                Duration::from_secs(1),
            ),
            chain,
            Arc::new(SystemClock),
        );
        let srv = PaidServer::start(gate, route).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("s.json").display().to_string();
        let key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
        let pay_json = |url: String| {
            let state = state.clone();
            async move {
                let args = [
                    "pay",
                    &url,
                    "--key-env",
                    "E2E_PAYER_KEY",
                    "--state",
                    &state,
                    "--json",
                ];
                pay_cmd(&args, key).await
            }
        };

        let (code, v, stderr) = pay_json(format!("{}/topup", srv.url)).await;
        assert_eq!(code, 4, "{v}\n{stderr}");
        assert_eq!(v["error"]["kind"], "human_action");
        assert_eq!(v["error"]["remedy_url"], "https://portal.example/top-up");
        assert!(
            stderr.contains("INSUFFICIENT_FUNDS")
                && stderr.contains("https://portal.example/top-up"),
            "{stderr}"
        );

        // A monthly quota resetting in a day: not slept through, reported with its remedy.
        let (code, v, stderr) = pay_json(format!("{}/quota-monthly", srv.url)).await;
        assert_eq!(code, 4, "{v}\n{stderr}");
        assert_eq!(v["error"]["kind"], "gave_up_waiting");
        assert!(
            stderr.contains("retry in 86400 s")
                && stderr.contains("https://portal.example/upgrade"),
            "{stderr}"
        );

        // Not JSON: the body goes to stdout as is, the summary to stderr.
        let url = format!("{}/free", srv.url);
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["pay", &url, "--state", &state])
            .env_remove("TOLLGATE_PAY_KEY")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "free\n");
        assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 200 — nothing paid"));
    })
    .await;
}

/// `tollgate pay` paying through the real gateway binary (`tollgate serve` with an x402 route
/// in the config shape of docs/config.md) on the same local chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_through_the_gateway_binary() {
    bounded(180, async {
        let anvil = Anvil::start(&[]).await;
        let dep = deploy(&anvil.url).await;
        // nextest runs each test in its own process; the spawned gateway inherits this.
        std::env::set_var("TOLLGATE_X402_SIGNER_KEY", &dep.settler_key);
        let mock = testkit::MockUpstream::start_local().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::harness::base_config(dir.path(), mock.addr());
        cfg.push_str(&format!(
            r#"
[x402]
[[x402.networks]]
network = "{network}"
rpc_url = "{rpc}"
signer_key_env = "TOLLGATE_X402_SIGNER_KEY"

[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "mock"
public = true
[routes.x402]
amount = "{PRICE}"
[[routes.x402.offers]]
network = "{network}"
asset = "{token}"
pay_to = "{pay_to}"
eip712_name = "{name}"
eip712_version = "{version}"

[[plans]]
id = "payg"
name = "Pay as you go"
routes = ["*"]
"#,
            network = dep.network,
            rpc = anvil.url,
            token = dep.token,
            pay_to = dep.pay_to,
            name = dep.name,
            version = dep.version,
        ));
        let gw = crate::harness::Gw::start(dir, &cfg);
        let cfg = ChainConfig {
            network: dep.network.clone(),
            rpc_url: anvil.url.clone(),
            settler_key_env: "UNUSED".into(),
            receipt_timeout_ms: 15_000,
            rpc_timeout_ms: 5_000,
            poll_interval_ms: 20,
        };
        let reader: PrivateKeySigner = dep.settler_key.parse().unwrap();
        let chain = EvmChain::with_signer(&cfg, reader).unwrap();
        let payer0 = chain.balance_of(dep.token, dep.payer).await.unwrap();
        let to0 = chain.balance_of(dep.token, dep.pay_to).await.unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        let state = state_dir.path().join("spend.json").display().to_string();
        let token = dep.token.to_string();
        let url = gw.url("/paid/data");
        let args = [
            "pay",
            &url,
            "--key-env",
            "E2E_PAYER_KEY",
            "--asset",
            &token,
            "--network",
            &dep.network,
            "--state",
            &state,
            "--json",
        ];
        let (code, v, stderr) = pay_cmd(&args, &dep.payer_key).await;
        assert_eq!(code, 0, "{v}\n{stderr}");
        assert_eq!(v["status"], 200);
        assert!(
            v["payment"]["settlement"]["success"].as_bool().unwrap(),
            "{v}"
        );
        assert_eq!(v["payment"]["amount"], PRICE.to_string());
        assert_eq!(
            chain.balance_of(dep.token, dep.payer).await.unwrap(),
            payer0 - U256::from(PRICE)
        );
        assert_eq!(
            chain.balance_of(dep.token, dep.pay_to).await.unwrap(),
            to0 + U256::from(PRICE)
        );
        assert_eq!(
            mock.calls(),
            1,
            "the upstream is called once for one payment"
        );

        // Above the policy: the gateway's challenge is refused before signing.
        let (code, v, _) = pay_cmd(
            &[&args[..], &["--max-per-payment", "9999"]].concat(),
            &dep.payer_key,
        )
        .await;
        assert_eq!(code, 2, "{v}");
        assert_eq!(mock.calls(), 1);
        assert_eq!(
            chain.balance_of(dep.token, dep.payer).await.unwrap(),
            payer0 - U256::from(PRICE)
        );
    })
    .await;
}
