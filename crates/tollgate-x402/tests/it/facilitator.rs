//! Our facilitator client against the official TypeScript facilitator
//! (`tools/x402-e2e/facilitator.mjs`) settling on the local chain.

use std::process::Stdio;
use std::time::Duration;

use alloy::primitives::U256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate_x402::facilitator::{FacilitatorClient, FacilitatorConfig, FacilitatorError};
use tollgate_x402::settle::SettleOutcome;
use tollgate_x402::wire::FacilitatorRequirements;
use tollgate_x402::{PaymentPayload, Reason};

use crate::harness::{bounded, nonce, tools_dir, Env, PRICE};

async fn start_facilitator(env: &Env) -> (Child, FacilitatorClient) {
    let script = tools_dir().join("facilitator.mjs");
    assert!(script.exists(), "{} missing", script.display());
    let mut child = Command::new("node")
        .arg(script)
        .arg(&env.anvil.url)
        .arg(&env.dep.settler_key)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node facilitator.mjs");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("facilitator did not start within 30s")
    .expect("read facilitator stdout");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("facilitator printed {line:?}: {e}"));
    let url = v["url"].as_str().expect("url").to_owned();
    let client = FacilitatorClient::new(&FacilitatorConfig {
        url,
        timeout_ms: 15_000,
        settle_timeout_ms: 45_000,
    })
    .expect("client");
    (child, client)
}

fn requirements(env: &Env) -> FacilitatorRequirements {
    FacilitatorRequirements::V2(env.route.offers[0].requirements.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_facilitator_verifies_and_settles_for_our_client() {
    bounded(150, async {
        let env = Env::start().await;
        let (mut child, fac) = start_facilitator(&env).await;
        let req = requirements(&env);

        let supported = fac.supported().await.unwrap();
        assert!(
            supported.kinds.iter().any(|k| k.x402_version == 2
                && k.scheme == "exact"
                && k.network == env.dep.network),
            "{supported:?}"
        );

        // Valid payment: verified, then settled on chain.
        let p = env.payment(&env.dep.payer_key, nonce(1));
        let v = fac.verify(&p, &req).await.unwrap();
        assert_eq!(
            v.payer.map(|s| s.to_lowercase()),
            Some(env.dep.payer.to_string().to_lowercase())
        );

        // Tampered signature: the facilitator's own reason string maps to ours.
        let mut bad = p.clone();
        if let PaymentPayload::V2(b) = &mut bad {
            b.payload.authorization.value = tollgate_x402::TokenAmount::from_u128(PRICE);
            b.payload.authorization.valid_before += U256::from(1u8);
        }
        let e = fac.verify(&bad, &req).await.unwrap_err();
        let FacilitatorError::Rejected { reason, original } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*reason, Reason::InvalidSignature, "original: {original}");

        // No funds. The TS facilitator simulates first, so on anvil this surfaces as
        // `invalid_exact_evm_transaction_simulation_failed` rather than a balance error.
        let poor = env.payment(&env.dep.poor_payer_key, nonce(2));
        let e = fac.verify(&poor, &req).await.unwrap_err();
        assert!(
            matches!(
                e.reason(),
                Reason::InsufficientFunds | Reason::SettlementFailed
            ),
            "{e:?}"
        );

        let chain = env.chain();
        let before = chain
            .balance_of(env.dep.token, env.dep.pay_to)
            .await
            .unwrap();
        let outcome = fac.settle(&p, &req).await.unwrap();
        assert!(
            matches!(outcome, SettleOutcome::Settled { .. }),
            "{outcome:?}"
        );
        let after = chain
            .balance_of(env.dep.token, env.dep.pay_to)
            .await
            .unwrap();
        assert_eq!(after - before, U256::from(PRICE));

        // Replay: refused (HTTP 200 + success:false is checked, not trusted).
        let e = fac.settle(&p, &req).await.unwrap_err();
        assert!(matches!(e, FacilitatorError::Rejected { .. }), "{e:?}");
        let _ = child.kill().await;
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_pays_through_our_gate_settling_via_official_facilitator() {
    use std::sync::Arc;
    use tollgate_x402::gate::PaymentGate;
    use tollgate_x402::settle::SingleFlight;
    use tollgate_x402::store::InMemoryPaymentStore;
    use tollgate_x402::verify::SystemClock;

    bounded(150, async {
        let env = Env::start().await;
        let (mut child, fac) = start_facilitator(&env).await;
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(30),
        );
        let gate = PaymentGate::new(flight, Arc::new(fac), Arc::new(SystemClock));
        let base = crate::interop::serve(gate, env.route.clone()).await;
        let result = crate::interop::run_client(
            Command::new("node")
                .arg(tools_dir().join("pay.mjs"))
                .arg(format!("{base}/paid"))
                .arg(&env.dep.payer_key)
                .arg(env.dep.token.to_string()),
        )
        .await;
        assert_eq!(result["status"], 200, "{result:#}");
        assert_eq!(result["paymentResponse"]["success"], true, "{result:#}");
        let chain = env.chain();
        let received = chain
            .balance_of(env.dep.token, env.dep.pay_to)
            .await
            .unwrap();
        assert_eq!(received, U256::from(PRICE));
        let _ = child.kill().await;
        env.anvil.stop().await;
    })
    .await;
}
