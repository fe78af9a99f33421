//! Payment store: at most one settlement per EIP-3009 authorization.
//!
//! A payment is keyed by what the token contract itself keys it by — (chain, token, payer, nonce)
//! — and carries a fingerprint (the EIP-712 digest) so "same key, same payment" (a retry or a
//! concurrent duplicate: answer with the first outcome) can be told from "same key, different
//! payment" (a conflict). The gateway provides a durable implementation (SQLite) of the same
//! trait; [`InMemoryPaymentStore`] serves tests and single-node setups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use async_trait::async_trait;
use tokio::sync::watch;

use crate::reason::Reason;
use crate::verify::VerifiedPayment;

/// Identity of an authorization, as the token contract sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaymentKey {
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Payer (`authorization.from`).
    pub payer: Address,
    /// EIP-3009 nonce.
    pub nonce: B256,
}

impl PaymentKey {
    /// The key of a verified payment.
    pub fn of(p: &VerifiedPayment) -> Self {
        Self {
            chain_id: p.chain_id,
            asset: p.asset,
            payer: p.payer,
            nonce: p.nonce,
        }
    }
}

/// Lifecycle of a payment: `Verified → Settling → Settled | Pending | Failed`
/// (`Pending → Settled | Failed` when reconciled later; a retryable `Failed` may be reserved
/// again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentState {
    /// Reserved after verification; no transaction yet.
    Verified,
    /// A settlement attempt is running.
    Settling,
    /// Settled on chain in `tx`.
    Settled {
        /// Transaction hash.
        tx: String,
    },
    /// Sent in `tx`, outcome not known yet (receipt wait timed out). Never answer with a new 402.
    Pending {
        /// Transaction hash.
        tx: String,
    },
    /// Settlement failed.
    Failed {
        /// Why.
        reason: Reason,
        /// True when nothing reached the chain, so a later attempt with the same payment may run.
        retryable: bool,
    },
}

impl PaymentState {
    /// Whether a settlement attempt is reserved or running (a duplicate should wait).
    pub fn is_in_flight(&self) -> bool {
        matches!(self, Self::Verified | Self::Settling)
    }

    /// Short name for logs and storage.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Settling => "settling",
            Self::Settled { .. } => "settled",
            Self::Pending { .. } => "pending",
            Self::Failed { .. } => "failed",
        }
    }

    /// Whether the lifecycle allows moving from this state to `next` (every [`PaymentStore`]
    /// enforces the same rules).
    pub fn may_become(&self, next: &PaymentState) -> bool {
        use PaymentState::*;
        matches!(
            (self, next),
            (Verified, Settling | Failed { .. })
                | (Settling, Settled { .. } | Pending { .. } | Failed { .. })
                | (Pending { .. }, Settled { .. } | Failed { .. })
        )
    }
}

/// A stored payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPayment {
    /// EIP-712 digest of the authorization (identifies the exact payment).
    pub fingerprint: B256,
    /// Current state.
    pub state: PaymentState,
    /// Unix seconds after which the authorization can no longer settle (its `validBefore`);
    /// the record may be pruned some time after.
    pub expires_at: u64,
}

/// The answer of [`PaymentStore::reserve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The caller owns the settlement of this payment (state is now `Verified`).
    Reserved,
    /// The key is already known; here is what is stored (compare the fingerprint).
    Duplicate(StoredPayment),
}

/// Store failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot answer; fail closed.
    #[error("payment store unavailable: {0}")]
    Unavailable(String),
    /// No record for the key.
    #[error("no payment record for this key")]
    NotFound,
    /// The transition is not allowed from the current state.
    #[error("cannot move payment from {from} to {to}")]
    InvalidTransition {
        /// Current state name.
        from: &'static str,
        /// Requested state name.
        to: &'static str,
    },
}

/// Durable record of payments, one per [`PaymentKey`].
#[async_trait]
pub trait PaymentStore: Send + Sync {
    /// Atomically claims `key` for this payment: `Reserved` if the key is new, or if it holds the
    /// same fingerprint in a retryable `Failed` state (the record is reset to `Verified`);
    /// otherwise `Duplicate` with the stored record.
    async fn reserve(
        &self,
        key: &PaymentKey,
        fingerprint: B256,
        expires_at: u64,
    ) -> Result<Reservation, StoreError>;

    /// Moves the record to `next`, checking the transition is allowed.
    async fn transition(&self, key: &PaymentKey, next: PaymentState) -> Result<(), StoreError>;

    /// Reads the record.
    async fn get(&self, key: &PaymentKey) -> Result<Option<StoredPayment>, StoreError>;

    /// Waits until the record is no longer in flight (see [`PaymentState::is_in_flight`]) or
    /// `timeout` passes, and returns it as it then is. The default polls [`PaymentStore::get`]
    /// every 25 ms (right for a database shared by several nodes); in-memory stores override it.
    async fn wait_until_resolved(
        &self,
        key: &PaymentKey,
        timeout: Duration,
    ) -> Result<Option<StoredPayment>, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.get(key).await?;
            let done = rec.as_ref().is_none_or(|r| !r.state.is_in_flight());
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(rec);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

struct Entry {
    record: StoredPayment,
    // Waiters subscribe here; the sender lives as long as the record.
    changes: watch::Sender<PaymentState>,
}

/// In-process [`PaymentStore`]. A sync mutex is right here: it is held only for map operations,
/// never across an `.await`.
#[derive(Clone, Default)]
pub struct InMemoryPaymentStore {
    inner: Arc<Mutex<HashMap<PaymentKey, Entry>>>,
}

impl InMemoryPaymentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops records whose authorization expired more than `grace_secs` before `now` and that
    /// are not being settled (an expired authorization can no longer move funds).
    pub fn prune(&self, now: u64, grace_secs: u64) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| {
            e.record.state.is_in_flight() || e.record.expires_at.saturating_add(grace_secs) >= now
        });
        before - map.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PaymentKey, Entry>> {
        // A poisoned map is still consistent: every mutation is a single insert/assign.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl PaymentStore for InMemoryPaymentStore {
    async fn reserve(
        &self,
        key: &PaymentKey,
        fingerprint: B256,
        expires_at: u64,
    ) -> Result<Reservation, StoreError> {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(key) {
            let retry = e.record.fingerprint == fingerprint
                && matches!(
                    e.record.state,
                    PaymentState::Failed {
                        retryable: true,
                        ..
                    }
                );
            if !retry {
                return Ok(Reservation::Duplicate(e.record.clone()));
            }
            e.record.state = PaymentState::Verified;
            e.changes.send_replace(PaymentState::Verified);
            return Ok(Reservation::Reserved);
        }
        let (changes, _) = watch::channel(PaymentState::Verified);
        map.insert(
            *key,
            Entry {
                record: StoredPayment {
                    fingerprint,
                    state: PaymentState::Verified,
                    expires_at,
                },
                changes,
            },
        );
        Ok(Reservation::Reserved)
    }

    async fn transition(&self, key: &PaymentKey, next: PaymentState) -> Result<(), StoreError> {
        let mut map = self.lock();
        let e = map.get_mut(key).ok_or(StoreError::NotFound)?;
        if !e.record.state.may_become(&next) {
            return Err(StoreError::InvalidTransition {
                from: e.record.state.name(),
                to: next.name(),
            });
        }
        e.record.state = next.clone();
        e.changes.send_replace(next);
        Ok(())
    }

    async fn get(&self, key: &PaymentKey) -> Result<Option<StoredPayment>, StoreError> {
        Ok(self.lock().get(key).map(|e| e.record.clone()))
    }

    async fn wait_until_resolved(
        &self,
        key: &PaymentKey,
        timeout: Duration,
    ) -> Result<Option<StoredPayment>, StoreError> {
        let rx = self.lock().get(key).map(|e| e.changes.subscribe());
        let Some(mut rx) = rx else {
            return Ok(None);
        };
        // Timing out is not an error: the caller sees the record still in flight.
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| !s.is_in_flight())).await;
        self.get(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PaymentKey {
        PaymentKey {
            chain_id: 1,
            asset: Address::repeat_byte(1),
            payer: Address::repeat_byte(2),
            nonce: B256::repeat_byte(n),
        }
    }

    #[tokio::test]
    async fn reserve_then_duplicate_then_transitions() {
        let s = InMemoryPaymentStore::new();
        let fp = B256::repeat_byte(9);
        assert_eq!(
            s.reserve(&key(1), fp, 100).await.unwrap(),
            Reservation::Reserved
        );
        let Reservation::Duplicate(rec) = s.reserve(&key(1), fp, 100).await.unwrap() else {
            panic!("expected duplicate")
        };
        assert_eq!(rec.state, PaymentState::Verified);
        s.transition(&key(1), PaymentState::Settling).await.unwrap();
        assert_eq!(
            s.transition(&key(1), PaymentState::Verified).await,
            Err(StoreError::InvalidTransition {
                from: "settling",
                to: "verified"
            })
        );
        s.transition(&key(1), PaymentState::Pending { tx: "0x1".into() })
            .await
            .unwrap();
        s.transition(&key(1), PaymentState::Settled { tx: "0x1".into() })
            .await
            .unwrap();
        assert!(s.transition(&key(1), PaymentState::Settling).await.is_err());
        assert_eq!(
            s.transition(&key(2), PaymentState::Settling).await,
            Err(StoreError::NotFound)
        );
    }

    #[tokio::test]
    async fn retryable_failure_can_be_reserved_again_by_the_same_payment_only() {
        let s = InMemoryPaymentStore::new();
        let fp = B256::repeat_byte(9);
        s.reserve(&key(1), fp, 100).await.unwrap();
        s.transition(&key(1), PaymentState::Settling).await.unwrap();
        let failed = PaymentState::Failed {
            reason: Reason::ProviderUnavailable,
            retryable: true,
        };
        s.transition(&key(1), failed).await.unwrap();
        assert!(matches!(
            s.reserve(&key(1), B256::repeat_byte(8), 100).await.unwrap(),
            Reservation::Duplicate(_)
        ));
        assert_eq!(
            s.reserve(&key(1), fp, 100).await.unwrap(),
            Reservation::Reserved
        );
        // A final failure stays final.
        s.transition(&key(1), PaymentState::Settling).await.unwrap();
        let final_fail = PaymentState::Failed {
            reason: Reason::InsufficientFunds,
            retryable: false,
        };
        s.transition(&key(1), final_fail).await.unwrap();
        assert!(matches!(
            s.reserve(&key(1), fp, 100).await.unwrap(),
            Reservation::Duplicate(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_see_the_outcome_or_time_out() {
        let s = InMemoryPaymentStore::new();
        s.reserve(&key(1), B256::ZERO, 100).await.unwrap();
        let s2 = s.clone();
        let waiter = tokio::spawn(async move {
            s2.wait_until_resolved(&key(1), Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        s.transition(&key(1), PaymentState::Settling).await.unwrap();
        s.transition(&key(1), PaymentState::Settled { tx: "0xaa".into() })
            .await
            .unwrap();
        let rec = waiter.await.unwrap().unwrap().unwrap();
        assert_eq!(rec.state, PaymentState::Settled { tx: "0xaa".into() });

        s.reserve(&key(2), B256::ZERO, 100).await.unwrap();
        let rec = s
            .wait_until_resolved(&key(2), Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert!(rec.state.is_in_flight(), "timed out while still in flight");
        assert_eq!(
            s.wait_until_resolved(&key(3), Duration::from_secs(1))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn prune_drops_only_expired_resolved_records() {
        let s = InMemoryPaymentStore::new();
        s.reserve(&key(1), B256::ZERO, 100).await.unwrap();
        s.reserve(&key(2), B256::ZERO, 100).await.unwrap();
        s.transition(&key(2), PaymentState::Settling).await.unwrap();
        s.transition(&key(2), PaymentState::Settled { tx: "0x".into() })
            .await
            .unwrap();
        s.reserve(&key(3), B256::ZERO, 1_000).await.unwrap();
        assert_eq!(s.prune(500, 60), 1);
        assert_eq!(s.len(), 2);
    }
}
