//! Single-flight settlement: however many requests carry the same payment at once, exactly one
//! settlement runs and every other request gets its outcome.
//!
//! The settlement itself runs on a spawned task so it finishes (and its outcome is recorded)
//! even if the request that started it is dropped — a client disconnect must not leave a
//! half-known payment behind.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::reason::Reason;
use crate::store::{PaymentKey, PaymentState, PaymentStore, Reservation, StoreError};
use crate::verify::VerifiedPayment;

/// A settlement that went through (or was at least broadcast).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Confirmed on chain.
    Settled {
        /// Transaction hash.
        tx: String,
    },
    /// Broadcast; receipt not seen in time. The payment must not be asked for again.
    Pending {
        /// Transaction hash.
        tx: String,
    },
}

impl SettleOutcome {
    /// The transaction hash.
    pub fn tx(&self) -> &str {
        match self {
            Self::Settled { tx } | Self::Pending { tx } => tx,
        }
    }
}

/// A settlement that did not go through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("settlement failed ({reason}): {detail}")]
pub struct SettleFailure {
    /// Stable reason.
    pub reason: Reason,
    /// True when nothing reached the chain, so the same payment may be tried again.
    pub retryable: bool,
    /// Diagnostic detail (logged, not shown to clients).
    pub detail: String,
}

/// The result of [`SingleFlight::settle_once`] that went through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightOutcome {
    /// What happened.
    pub outcome: SettleOutcome,
    /// True for the request whose call ran the settlement; false for duplicates that were
    /// given its outcome. Whether a duplicate is served is the caller's policy (serving every
    /// replay of one payment would sell many responses for one payment).
    pub first: bool,
}

/// Why [`SingleFlight::settle_once`] did not produce a settlement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// The settlement (this call's or the first one's) failed.
    #[error(transparent)]
    Failed(SettleFailure),
    /// The same payer and nonce were already used by a *different* payment.
    #[error("payer and nonce already used by a different payment")]
    Conflict,
    /// Another request is settling this payment and did not finish within the wait timeout.
    #[error("settlement of this payment is still in progress")]
    InProgress,
    /// The payment store failed; fail closed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The settlement task died (panicked or was cancelled) before recording an outcome.
    #[error("settlement task ended without an outcome")]
    TaskLost,
}

impl FlightError {
    /// Stable reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Failed(f) => f.reason,
            Self::Conflict => Reason::PaymentConflict,
            Self::InProgress | Self::TaskLost => Reason::SettlementPending,
            Self::Store(_) => Reason::SettlementUnavailable,
        }
    }
}

/// Runs at most one settlement per payment (see the module docs).
#[derive(Clone)]
pub struct SingleFlight {
    store: Arc<dyn PaymentStore>,
    wait_timeout: Duration,
}

impl SingleFlight {
    /// Duplicates wait up to `wait_timeout` for the first request's outcome.
    pub fn new(store: Arc<dyn PaymentStore>, wait_timeout: Duration) -> Self {
        Self {
            store,
            wait_timeout,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn PaymentStore> {
        &self.store
    }

    /// Settles `payment` with `settle` unless this payment is already reserved, in which case the
    /// existing (or awaited) outcome is returned with `first: false`.
    pub async fn settle_once<F, Fut>(
        &self,
        payment: &VerifiedPayment,
        settle: F,
    ) -> Result<FlightOutcome, FlightError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<SettleOutcome, SettleFailure>> + Send + 'static,
    {
        let key = PaymentKey::of(payment);
        let mut settle = Some(settle);
        // A duplicate that finds the first attempt failed *retryably* takes over (bounded).
        for _ in 0..3 {
            let reservation = self
                .store
                .reserve(&key, payment.digest, payment.valid_before_secs())
                .await?;
            let rec = match reservation {
                Reservation::Reserved => {
                    let Some(f) = settle.take() else {
                        return Err(FlightError::TaskLost);
                    };
                    return self.run_first(key, f).await;
                }
                Reservation::Duplicate(rec) => rec,
            };
            if rec.fingerprint != payment.digest {
                return Err(FlightError::Conflict);
            }
            let rec = if rec.state.is_in_flight() {
                self.store
                    .wait_until_resolved(&key, self.wait_timeout)
                    .await?
                    .ok_or(StoreError::NotFound)?
            } else {
                rec
            };
            match rec.state {
                PaymentState::Settled { tx } => {
                    return Ok(FlightOutcome {
                        outcome: SettleOutcome::Settled { tx },
                        first: false,
                    })
                }
                PaymentState::Pending { tx } => {
                    return Ok(FlightOutcome {
                        outcome: SettleOutcome::Pending { tx },
                        first: false,
                    })
                }
                PaymentState::Failed {
                    retryable: true, ..
                } if settle.is_some() => continue,
                PaymentState::Failed { reason, retryable } => {
                    return Err(FlightError::Failed(SettleFailure {
                        reason,
                        retryable,
                        detail: "an earlier attempt with this payment failed".to_owned(),
                    }))
                }
                PaymentState::Verified | PaymentState::Settling => {
                    return Err(FlightError::InProgress)
                }
            }
        }
        Err(FlightError::InProgress)
    }

    async fn run_first<F, Fut>(
        &self,
        key: PaymentKey,
        settle: F,
    ) -> Result<FlightOutcome, FlightError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<SettleOutcome, SettleFailure>> + Send + 'static,
    {
        if let Err(e) = self.store.transition(&key, PaymentState::Settling).await {
            // Nothing was sent: release the reservation (best effort) so a retry can run.
            let release = PaymentState::Failed {
                reason: Reason::SettlementUnavailable,
                retryable: true,
            };
            let _ = self.store.transition(&key, release).await;
            return Err(e.into());
        }
        let store = Arc::clone(&self.store);
        let task = tokio::spawn(async move {
            let result = settle().await;
            let next = match &result {
                Ok(SettleOutcome::Settled { tx }) => PaymentState::Settled { tx: tx.clone() },
                Ok(SettleOutcome::Pending { tx }) => PaymentState::Pending { tx: tx.clone() },
                Err(f) => PaymentState::Failed {
                    reason: f.reason,
                    retryable: f.retryable,
                },
            };
            if let Err(e) = store.transition(&key, next).await {
                tracing::error!(error = %e, payer = %key.payer, nonce = %key.nonce,
                    "could not record settlement outcome");
            }
            result
        });
        match task.await {
            Ok(Ok(outcome)) => Ok(FlightOutcome {
                outcome,
                first: true,
            }),
            Ok(Err(f)) => Err(FlightError::Failed(f)),
            Err(_) => Err(FlightError::TaskLost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InMemoryPaymentStore;
    use alloy::primitives::{Address, Signature, B256, U256};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn payment(digest: u8) -> VerifiedPayment {
        VerifiedPayment {
            offer_index: 0,
            chain_id: 1,
            asset: Address::repeat_byte(1),
            payer: Address::repeat_byte(2),
            pay_to: Address::repeat_byte(3),
            value: U256::from(1u8),
            valid_after: U256::ZERO,
            valid_before: U256::from(u64::MAX),
            nonce: B256::repeat_byte(4),
            signature: crate::verify::PayerSignature::Ecdsa(Signature::test_signature()),
            digest: B256::repeat_byte(digest),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_concurrent_duplicates_settle_once() {
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(5),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let flight = flight.clone();
            let calls = Arc::clone(&calls);
            tasks.push(tokio::spawn(async move {
                flight
                    .settle_once(&payment(9), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(SettleOutcome::Settled { tx: "0xabc".into() })
                    })
                    .await
            }));
        }
        let mut firsts = 0;
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.outcome, SettleOutcome::Settled { tx: "0xabc".into() });
            firsts += usize::from(r.first);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(firsts, 1);
    }

    #[tokio::test]
    async fn conflict_failure_and_retry() {
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(1),
        );
        let fail = |retryable| {
            move || async move {
                Err(SettleFailure {
                    reason: Reason::ProviderUnavailable,
                    retryable,
                    detail: "down".into(),
                })
            }
        };
        let e = flight
            .settle_once(&payment(1), fail(true))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Reason::ProviderUnavailable);
        // Same payment after a retryable failure: runs again.
        let ok = flight
            .settle_once(&payment(1), || async {
                Ok(SettleOutcome::Pending { tx: "0x1".into() })
            })
            .await
            .unwrap();
        assert!(ok.first);
        // Same key, different payment.
        let e = flight
            .settle_once(&payment(2), || async {
                Ok(SettleOutcome::Settled { tx: "0x2".into() })
            })
            .await
            .unwrap_err();
        assert_eq!(e, FlightError::Conflict);
        assert_eq!(e.reason(), Reason::PaymentConflict);
        // Replay after the outcome is known: the stored outcome, not a new settlement.
        let again = flight
            .settle_once(&payment(1), || async {
                Ok(SettleOutcome::Settled { tx: "0xnew".into() })
            })
            .await
            .unwrap();
        assert_eq!(
            again,
            FlightOutcome {
                outcome: SettleOutcome::Pending { tx: "0x1".into() },
                first: false
            }
        );
    }

    #[tokio::test]
    async fn final_failure_is_shared_and_not_retried() {
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(1),
        );
        let e = flight
            .settle_once(&payment(1), || async {
                Err(SettleFailure {
                    reason: Reason::InsufficientFunds,
                    retryable: false,
                    detail: String::new(),
                })
            })
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Reason::InsufficientFunds);
        let e = flight
            .settle_once(&payment(1), || async {
                Ok(SettleOutcome::Settled { tx: "0x".into() })
            })
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Reason::InsufficientFunds);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_first_attempt_gives_in_progress_to_waiters() {
        let flight = SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_millis(100),
        );
        let f2 = flight.clone();
        let first = tokio::spawn(async move {
            f2.settle_once(&payment(1), || async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(SettleOutcome::Settled { tx: "0x".into() })
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let e = flight
            .settle_once(&payment(1), || async {
                Ok(SettleOutcome::Settled { tx: "0x".into() })
            })
            .await
            .unwrap_err();
        assert_eq!(e, FlightError::InProgress);
        assert!(first.await.unwrap().unwrap().first);
    }
}
