//! Verification and settlement against a real local chain (anvil + FiatTokenV2_2).

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use tollgate_x402::chain::ChainError;
use tollgate_x402::settle::{SettleOutcome, SingleFlight};
use tollgate_x402::store::InMemoryPaymentStore;
use tollgate_x402::Reason;

use crate::harness::{bounded, nonce, Env, PRICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_settle_a_real_authorization() {
    bounded(120, async {
        let env = Env::start().await;
        let chain = env.chain();
        chain.check_chain_id().await.unwrap();
        let token = env.dep.token;
        let payer_before = chain.balance_of(token, env.dep.payer).await.unwrap();
        let pay_to_before = chain.balance_of(token, env.dep.pay_to).await.unwrap();

        let p = env.verified(&env.dep.payer_key, nonce(1));
        assert_eq!(p.payer, env.dep.payer);
        chain.check_payable(&p).await.unwrap();
        let outcome = chain.settle(&p).await.unwrap();
        let SettleOutcome::Settled { tx } = &outcome else {
            panic!("expected settled: {outcome:?}")
        };
        assert_eq!(tx.len(), 66);

        let price = U256::from(PRICE);
        assert_eq!(
            chain.balance_of(token, env.dep.payer).await.unwrap(),
            payer_before - price
        );
        assert_eq!(
            chain.balance_of(token, env.dep.pay_to).await.unwrap(),
            pay_to_before + price
        );
        assert!(chain
            .authorization_used(token, p.payer, p.nonce)
            .await
            .unwrap());
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_is_rejected() {
    bounded(120, async {
        let env = Env::start().await;
        let chain = Arc::new(env.chain());
        let p = env.verified(&env.dep.payer_key, nonce(2));
        let first = chain.settle(&p).await.unwrap();

        // Straight to the chain again: the on-chain nonce state refuses it before sending.
        let e = chain.settle(&p).await.unwrap_err();
        assert_eq!(e, ChainError::NonceAlreadyUsed);
        assert_eq!(e.reason(), Reason::NonceAlreadyUsed);

        // Through the payment store: the replay gets the first outcome, no new transaction.
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(10),
        );
        let p2 = env.verified(&env.dep.payer_key, nonce(3));
        let c = Arc::clone(&chain);
        let p2c = p2.clone();
        let a = flight
            .settle_once(&p2, move || async move {
                c.settle(&p2c).await.map_err(Into::into)
            })
            .await
            .unwrap();
        assert!(a.first);
        let c = Arc::clone(&chain);
        let p2c = p2.clone();
        let b = flight
            .settle_once(&p2, move || async move {
                c.settle(&p2c).await.map_err(Into::into)
            })
            .await
            .unwrap();
        assert!(!b.first);
        assert_eq!(a.outcome, b.outcome);
        assert_ne!(first.tx(), a.outcome.tx());
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payer_without_funds_is_rejected() {
    bounded(120, async {
        let env = Env::start().await;
        let chain = env.chain();
        let p = env.verified(&env.dep.poor_payer_key, nonce(4));
        let e = chain.check_payable(&p).await.unwrap_err();
        assert!(matches!(e, ChainError::InsufficientFunds { .. }), "{e:?}");
        let e = chain.settle(&p).await.unwrap_err();
        assert_eq!(e.reason(), Reason::InsufficientFunds);
        assert!(!e.retryable());
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_down_is_provider_unavailable() {
    bounded(120, async {
        let env = Env::start().await;
        let chain = env.chain();
        let p = env.verified(&env.dep.payer_key, nonce(5));
        let Env { anvil, .. } = env;
        anvil.stop().await;
        let e = chain.settle(&p).await.unwrap_err();
        assert!(matches!(e, ChainError::ProviderUnavailable(_)), "{e:?}");
        assert_eq!(e.reason(), Reason::ProviderUnavailable);
        assert!(
            e.retryable(),
            "nothing was sent, the payment may be retried"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_settlements_from_one_settler_all_succeed() {
    bounded(180, async {
        let env = Env::start().await;
        let chain = Arc::new(env.chain());
        let before = chain
            .balance_of(env.dep.token, env.dep.payer)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let p = env.verified(&env.dep.payer_key, nonce(100 + i));
            let chain = Arc::clone(&chain);
            tasks.push(tokio::spawn(async move { chain.settle(&p).await }));
        }
        let mut txs = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(SettleOutcome::Settled { tx }) => txs.push(tx),
                other => panic!("settlement did not succeed: {other:?}"),
            }
        }
        txs.sort();
        txs.dedup();
        assert_eq!(txs.len(), 16);
        let after = chain
            .balance_of(env.dep.token, env.dep.payer)
            .await
            .unwrap();
        assert_eq!(before - after, U256::from(16 * PRICE));
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_identical_payments_make_one_transfer() {
    bounded(120, async {
        let env = Env::start().await;
        let chain = Arc::new(env.chain());
        let before = chain
            .balance_of(env.dep.token, env.dep.payer)
            .await
            .unwrap();
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(30),
        );
        let p = env.verified(&env.dep.payer_key, nonce(6));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (flight, chain, p) = (flight.clone(), Arc::clone(&chain), p.clone());
            tasks.push(tokio::spawn(async move {
                let pc = p.clone();
                flight
                    .settle_once(&p, move || async move {
                        chain.settle(&pc).await.map_err(Into::into)
                    })
                    .await
            }));
        }
        let mut firsts = 0;
        let mut txs = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            firsts += usize::from(r.first);
            assert!(matches!(r.outcome, SettleOutcome::Settled { .. }));
            txs.push(r.outcome.tx().to_owned());
        }
        assert_eq!(firsts, 1);
        txs.dedup();
        assert_eq!(txs.len(), 1, "every request got the same transaction");
        let after = chain
            .balance_of(env.dep.token, env.dep.payer)
            .await
            .unwrap();
        assert_eq!(before - after, U256::from(PRICE), "exactly one transfer");
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_timeout_is_pending_with_the_tx_hash() {
    bounded(120, async {
        let env = Env::start().await;
        let p = env.verified(&env.dep.payer_key, nonce(7));
        // Stop mining after deployment: the settlement is accepted but never mined.
        let http = reqwest::Client::new();
        let r = http
            .post(&env.anvil.url)
            .json(&serde_json::json!({"jsonrpc":"2.0","id":1,"method":"evm_setAutomine","params":[false]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut cfg = env.chain_config();
        cfg.receipt_timeout_ms = 1_000;
        let signer = env.dep.settler_key.parse().unwrap();
        let chain = tollgate_x402::EvmChain::with_signer(&cfg, signer).unwrap();
        let outcome = chain.settle(&p).await.unwrap();
        let SettleOutcome::Pending { tx } = outcome else { panic!("expected pending: {outcome:?}") };
        assert_eq!(tx.len(), 66);
        // Reconciliation: unknown while unmined, settled once a block includes it.
        let hash: alloy::primitives::B256 = tx.parse().unwrap();
        assert_eq!(chain.settlement_status(hash, &p).await.unwrap(), None);
        let r = http
            .post(&env.anvil.url)
            .json(&serde_json::json!({"jsonrpc":"2.0","id":2,"method":"evm_mine","params":[]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        assert_eq!(
            chain.settlement_status(hash, &p).await.unwrap(),
            Some(SettleOutcome::Settled { tx })
        );
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_settler_nonce_is_resynced() {
    bounded(120, async {
        let env = Env::start().await;
        // Two clients with the same settler key and separate nonce counters, as two gateway
        // processes (or an operator's manual transaction) would have.
        let a = env.chain();
        let b = env.chain();
        let p1 = env.verified(&env.dep.payer_key, nonce(8));
        let p2 = env.verified(&env.dep.payer_key, nonce(9));
        let p3 = env.verified(&env.dep.payer_key, nonce(10));
        assert!(matches!(
            a.settle(&p1).await.unwrap(),
            SettleOutcome::Settled { .. }
        ));
        assert!(matches!(
            b.settle(&p2).await.unwrap(),
            SettleOutcome::Settled { .. }
        ));
        // `a` believes the next nonce is the one `b` just used: the node says "nonce too low".
        assert!(matches!(
            a.settle(&p3).await.unwrap(),
            SettleOutcome::Settled { .. }
        ));
        env.anvil.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_wallet_pays_through_the_gate() {
    use alloy::signers::local::PrivateKeySigner;
    use tollgate_x402::client::{sign_exact_payment_as_wallet, AuthorizationTerms};
    use tollgate_x402::codec::encode_payment_header;
    use tollgate_x402::gate::{GateOutcome, PaymentGate};
    use tollgate_x402::verify::{verify_exact, Clock, SystemClock, VerifyError};

    bounded(120, async {
        let env = Env::start().await;
        let chain = Arc::new(env.chain());
        let owner: PrivateKeySigner = env.dep.smart_wallet_owner_key.parse().unwrap();
        let offer = &env.route.offers[0];
        let now = SystemClock.now_unix();
        let terms = AuthorizationTerms::for_offer(offer, now, nonce(11));
        let p = sign_exact_payment_as_wallet(&owner, env.dep.smart_wallet, offer, &terms).unwrap();
        // Not an EOA signature of `from`: local verification alone refuses it.
        assert!(matches!(
            verify_exact(&env.route, &p, now),
            Err(VerifyError::InvalidSignature { .. })
        ));
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(30),
        );
        let gate = PaymentGate::new(flight, chain.clone(), Arc::new(SystemClock))
            .accept_contract_wallets(true);
        let before = chain
            .balance_of(env.dep.token, env.dep.smart_wallet)
            .await
            .unwrap();
        let h = encode_payment_header(&p).unwrap();
        let out = gate
            .process(&env.route, "http://t/paid", Some(h.as_bytes()))
            .await;
        assert!(matches!(out, GateOutcome::Paid { .. }), "{out:?}");
        let after = chain
            .balance_of(env.dep.token, env.dep.smart_wallet)
            .await
            .unwrap();
        assert_eq!(before - after, U256::from(PRICE));

        // Signed by someone who is not the wallet's owner: the wallet says no.
        let stranger = PrivateKeySigner::random();
        let terms = AuthorizationTerms::for_offer(offer, now, nonce(12));
        let p =
            sign_exact_payment_as_wallet(&stranger, env.dep.smart_wallet, offer, &terms).unwrap();
        let h = encode_payment_header(&p).unwrap();
        let out = gate
            .process(&env.route, "http://t/paid", Some(h.as_bytes()))
            .await;
        assert!(
            matches!(
                out,
                GateOutcome::PaymentRequired {
                    reason: Some(Reason::InvalidSignature),
                    ..
                }
            ),
            "{out:?}"
        );
        env.anvil.stop().await;
    })
    .await;
}
