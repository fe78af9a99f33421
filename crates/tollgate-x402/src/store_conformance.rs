//! Behaviour every [`PaymentStore`] must have, as one reusable check: run it against the
//! in-memory store here and against the gateway's durable store in its own tests, so both
//! backends are held to the same contract.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256};

use crate::reason::Reason;
use crate::store::{PaymentKey, PaymentState, PaymentStore, Reservation, StoreError};

fn key(tag: u8, n: u8) -> PaymentKey {
    PaymentKey {
        chain_id: 31_337,
        asset: Address::repeat_byte(0xA0 | (tag & 0x0F)),
        payer: Address::repeat_byte(tag),
        nonce: B256::repeat_byte(n),
    }
}

fn ensure(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_owned())
    }
}

/// Checks `store` against the [`PaymentStore`] contract. `tag` namespaces the keys it writes
/// (use a different tag per run against a shared database). Returns what failed.
pub async fn check_payment_store(store: Arc<dyn PaymentStore>, tag: u8) -> Result<(), String> {
    let fp = B256::repeat_byte(0x11);
    let other_fp = B256::repeat_byte(0x22);
    let e = |e: StoreError| e.to_string();

    // Reserve once; the second reservation is a duplicate carrying the stored record.
    let k = key(tag, 1);
    ensure(
        store.reserve(&k, fp, 1_000).await.map_err(e)? == Reservation::Reserved,
        "first reserve must be Reserved",
    )?;
    match store.reserve(&k, other_fp, 1_000).await.map_err(e)? {
        Reservation::Duplicate(rec) => {
            ensure(
                rec.fingerprint == fp,
                "duplicate must return the stored fingerprint",
            )?;
            ensure(
                rec.state == PaymentState::Verified,
                "new record must be Verified",
            )?;
            ensure(rec.expires_at == 1_000, "expires_at must be stored")?;
        }
        Reservation::Reserved => return Err("second reserve must be Duplicate".into()),
    }

    // Transitions: allowed ones apply, others are refused and change nothing.
    store
        .transition(&k, PaymentState::Settling)
        .await
        .map_err(e)?;
    ensure(
        matches!(
            store.transition(&k, PaymentState::Verified).await,
            Err(StoreError::InvalidTransition { .. })
        ),
        "settling -> verified must be refused",
    )?;
    let tx = "0x".to_owned() + &"ab".repeat(32);
    store
        .transition(&k, PaymentState::Pending { tx: tx.clone() })
        .await
        .map_err(e)?;
    store
        .transition(&k, PaymentState::Settled { tx: tx.clone() })
        .await
        .map_err(e)?;
    let rec = store.get(&k).await.map_err(e)?.ok_or("record vanished")?;
    ensure(
        rec.state == PaymentState::Settled { tx },
        "settled state must be stored",
    )?;
    ensure(
        store.transition(&key(tag, 9), PaymentState::Settling).await == Err(StoreError::NotFound),
        "transition of an unknown key must be NotFound",
    )?;

    // A retryable failure may be reserved again by the same payment only; a final one never.
    let k2 = key(tag, 2);
    store.reserve(&k2, fp, 1_000).await.map_err(e)?;
    store
        .transition(&k2, PaymentState::Settling)
        .await
        .map_err(e)?;
    let retryable = PaymentState::Failed {
        reason: Reason::ProviderUnavailable,
        retryable: true,
    };
    store.transition(&k2, retryable).await.map_err(e)?;
    ensure(
        matches!(
            store.reserve(&k2, other_fp, 1_000).await.map_err(e)?,
            Reservation::Duplicate(_)
        ),
        "a different payment must not take over a failed key",
    )?;
    ensure(
        store.reserve(&k2, fp, 1_000).await.map_err(e)? == Reservation::Reserved,
        "the same payment may retry after a retryable failure",
    )?;
    store
        .transition(&k2, PaymentState::Settling)
        .await
        .map_err(e)?;
    let final_failure = PaymentState::Failed {
        reason: Reason::InsufficientFunds,
        retryable: false,
    };
    store
        .transition(&k2, final_failure.clone())
        .await
        .map_err(e)?;
    match store.reserve(&k2, fp, 1_000).await.map_err(e)? {
        Reservation::Duplicate(rec) => ensure(
            rec.state == final_failure,
            "final failure (with reason) must be stored",
        )?,
        Reservation::Reserved => return Err("a final failure must not be retried".into()),
    }

    // Concurrent reservations of one key: exactly one wins.
    let k3 = key(tag, 3);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { s.reserve(&k3, fp, 1_000).await }));
    }
    let mut reserved = 0;
    for t in tasks {
        let r = t.await.map_err(|j| j.to_string())?.map_err(e)?;
        reserved += usize::from(r == Reservation::Reserved);
    }
    ensure(reserved == 1, "exactly one concurrent reserve must win")?;

    // Waiting: returns once resolved, or the in-flight record after the timeout.
    let s = Arc::clone(&store);
    let waiter =
        tokio::spawn(async move { s.wait_until_resolved(&k3, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .transition(&k3, PaymentState::Settling)
        .await
        .map_err(e)?;
    store
        .transition(&k3, PaymentState::Settled { tx: "0x01".into() })
        .await
        .map_err(e)?;
    let rec = waiter
        .await
        .map_err(|j| j.to_string())?
        .map_err(e)?
        .ok_or("waited record vanished")?;
    ensure(
        !rec.state.is_in_flight(),
        "waiter must see the resolved state",
    )?;
    let k4 = key(tag, 4);
    store.reserve(&k4, fp, 1_000).await.map_err(e)?;
    let rec = store
        .wait_until_resolved(&k4, Duration::from_millis(100))
        .await
        .map_err(e)?
        .ok_or("record vanished")?;
    ensure(
        rec.state.is_in_flight(),
        "wait must time out on an in-flight record",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryPaymentStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_memory_store_conforms() {
        check_payment_store(Arc::new(InMemoryPaymentStore::new()), 1)
            .await
            .unwrap();
    }
}
