//! Routes, chains and payments for the e2e tests, on the local chain of `testkit::chain` (anvil
//! and the token deployed by `tools/x402-e2e/deploy.mjs`).

use std::time::Duration;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
pub use testkit::chain::{tools_dir, Anvil, Deployment};
use tollgate_x402::chain::{ChainConfig, EvmChain};
use tollgate_x402::client::{sign_exact_payment, AuthorizationTerms};
use tollgate_x402::price::{NetworkOffer, PricedRoute, RoutePrice};
use tollgate_x402::verify::{verify_exact, Clock, SystemClock, VerifiedPayment};
use tollgate_x402::{PaymentPayload, TokenAmount};

/// Price used by the e2e routes (0.01 USDC).
pub const PRICE: u128 = 10_000;

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
        let dep = testkit::chain::deploy(&anvil.url).await;
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
