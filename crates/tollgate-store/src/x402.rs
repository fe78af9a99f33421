//! The durable x402 payment store: [`tollgate_x402::PaymentStore`] on tollgate's SQLite file.
//!
//! Every write (reservation, state change) runs inside the journal writer's transaction and is
//! committed before the call returns, so a (payer, nonce) is reserved durably before any
//! settlement is sent, and a restart never forgets a payment that may have moved funds.
//! Reads use a connection of their own. Besides the protocol state, each row records what the
//! operator wants to see: route, network, asset, amount, payTo, request id and times.

use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use tollgate_x402::alloy::primitives::{Address, B256};
use tollgate_x402::store::{StoreError as PayError, StoredPayment};
use tollgate_x402::{PaymentKey, PaymentState, PaymentStore, Reason, Reservation};

use crate::clock::Clock;
use crate::journal::{Journal, StoreError};

/// What the gateway knows about a payment beyond its key, recorded with its reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentMeta {
    /// Route id.
    pub route: String,
    /// CAIP-2 network.
    pub network: String,
    /// Amount in the asset's atomic units (decimal).
    pub amount: String,
    /// Recipient.
    pub pay_to: String,
    /// Request that presented the payment first.
    pub request_id: String,
}

/// One x402 payment as listed by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PaymentView {
    /// Listing order (pass as `after` for the next page).
    pub seq: i64,
    /// Route id.
    pub route: Option<String>,
    /// Payer address (lower-case hex).
    pub payer: String,
    /// Recipient.
    pub pay_to: Option<String>,
    /// Amount in atomic units of the asset.
    pub amount: Option<String>,
    /// Token contract (lower-case hex).
    pub asset: String,
    /// CAIP-2 network.
    pub network: Option<String>,
    /// EIP-3009 nonce.
    pub nonce: String,
    /// `verified`, `settling`, `settled`, `pending` or `failed`.
    pub state: String,
    /// Settlement transaction hash.
    pub tx_hash: Option<String>,
    /// Why it failed (stable reason code).
    pub reason: Option<String>,
    /// Request that presented the payment first.
    pub request_id: Option<String>,
    /// First seen (RFC 3339).
    pub created_at: String,
    /// Last state change (RFC 3339).
    pub updated_at: String,
}

/// Filters of [`SqlitePaymentStore::list`].
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    /// Only this route.
    pub route: Option<String>,
    /// Only this payer (any case).
    pub payer: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only rows after this `seq`.
    pub after: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// [`PaymentStore`] on the SQLite store (see the module docs).
pub struct SqlitePaymentStore {
    journal: Journal,
    reader: Mutex<Connection>,
    clock: Arc<dyn Clock>,
    meta: DashMap<PaymentKey, PaymentMeta>,
}

impl std::fmt::Debug for SqlitePaymentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqlitePaymentStore")
    }
}

fn hex_addr(a: &Address) -> String {
    format!("{a:#x}")
}

fn hex_b256(b: &B256) -> String {
    format!("{b:#x}")
}

fn state_columns(s: &PaymentState) -> (&'static str, Option<String>, Option<&'static str>, bool) {
    match s {
        PaymentState::Verified => ("verified", None, None, false),
        PaymentState::Settling => ("settling", None, None, false),
        PaymentState::Settled { tx } => ("settled", Some(tx.clone()), None, false),
        PaymentState::Pending { tx } => ("pending", Some(tx.clone()), None, false),
        PaymentState::Failed { reason, retryable } => {
            ("failed", None, Some(reason.as_str()), *retryable)
        }
    }
}

fn decode_state(
    name: &str,
    tx: Option<String>,
    reason: Option<String>,
    retryable: bool,
) -> PaymentState {
    match name {
        "verified" => PaymentState::Verified,
        "settling" => PaymentState::Settling,
        "settled" => PaymentState::Settled {
            tx: tx.unwrap_or_default(),
        },
        "pending" => PaymentState::Pending {
            tx: tx.unwrap_or_default(),
        },
        _ => PaymentState::Failed {
            reason: reason
                .as_deref()
                .and_then(Reason::from_code)
                .unwrap_or(Reason::SettlementFailed),
            retryable,
        },
    }
}

const KEY_WHERE: &str = "chain_id = ?1 AND asset = ?2 AND payer = ?3 AND nonce = ?4";

fn read(conn: &Connection, key: &PaymentKey) -> rusqlite::Result<Option<StoredPayment>> {
    conn.query_row(
        &format!(
            "SELECT fingerprint, state, tx_hash, reason, retryable, expires_at \
             FROM x402_payments WHERE {KEY_WHERE}"
        ),
        params![
            key.chain_id as i64,
            hex_addr(&key.asset),
            hex_addr(&key.payer),
            hex_b256(&key.nonce)
        ],
        |r| {
            let fp: Vec<u8> = r.get(0)?;
            let state: String = r.get(1)?;
            Ok(StoredPayment {
                fingerprint: B256::try_from(fp.as_slice()).unwrap_or_default(),
                state: decode_state(&state, r.get(2)?, r.get(3)?, r.get::<_, i64>(4)? != 0),
                expires_at: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
            })
        },
    )
    .optional()
}

fn unavailable(e: StoreError) -> PayError {
    PayError::Unavailable(e.to_string())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

impl SqlitePaymentStore {
    /// A store writing through `journal` and reading on `reader`.
    pub fn new(journal: Journal, reader: Connection, clock: Arc<dyn Clock>) -> Self {
        Self {
            journal,
            reader: Mutex::new(reader),
            clock,
            meta: DashMap::new(),
        }
    }

    /// Attach what the gateway knows about the payment under `key`; written with its
    /// reservation. Call [`SqlitePaymentStore::forget`] once the payment's outcome is known.
    pub fn annotate(&self, key: PaymentKey, meta: PaymentMeta) {
        self.meta.entry(key).or_insert(meta);
    }

    /// Drop the annotation of `key`.
    pub fn forget(&self, key: &PaymentKey) {
        self.meta.remove(key);
    }

    /// Payments, oldest first, filtered and paged.
    pub fn list(&self, f: &PaymentFilter) -> Result<Vec<PaymentView>, StoreError> {
        let conn = self.reader.lock();
        let mut st = conn.prepare_cached(
            "SELECT seq, route, payer, pay_to, amount, asset, network, nonce, state, tx_hash, \
             reason, request_id, created_ms, updated_ms FROM x402_payments \
             WHERE seq > ?1 AND (?2 IS NULL OR route = ?2) AND (?3 IS NULL OR payer = ?3) \
             AND (?4 IS NULL OR state = ?4) ORDER BY seq LIMIT ?5",
        )?;
        let payer = f.payer.as_ref().map(|p| p.to_ascii_lowercase());
        let rows = st.query_map(
            params![
                f.after.unwrap_or(0),
                f.route,
                payer,
                f.state,
                f.limit as i64
            ],
            |r| {
                Ok(PaymentView {
                    seq: r.get(0)?,
                    route: r.get(1)?,
                    payer: r.get(2)?,
                    pay_to: r.get(3)?,
                    amount: r.get(4)?,
                    asset: r.get(5)?,
                    network: r.get(6)?,
                    nonce: r.get(7)?,
                    state: r.get(8)?,
                    tx_hash: r.get(9)?,
                    reason: r.get(10)?,
                    request_id: r.get(11)?,
                    created_at: rfc3339(r.get(12)?),
                    updated_at: rfc3339(r.get(13)?),
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

#[async_trait]
impl PaymentStore for SqlitePaymentStore {
    async fn reserve(
        &self,
        key: &PaymentKey,
        fingerprint: B256,
        expires_at: u64,
    ) -> Result<Reservation, PayError> {
        let key = *key;
        let meta = self.meta.get(&key).map(|m| m.clone()).unwrap_or_default();
        let now = self.clock.now_ms();
        self.journal
            .admin(move |tx| {
                let inserted = tx.execute(
                    "INSERT INTO x402_payments(chain_id, asset, payer, nonce, fingerprint, state, \
                     retryable, expires_at, route, network, amount, pay_to, request_id, \
                     created_ms, updated_ms) \
                     VALUES(?1, ?2, ?3, ?4, ?5, 'verified', 0, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12) \
                     ON CONFLICT DO NOTHING",
                    params![
                        key.chain_id as i64,
                        hex_addr(&key.asset),
                        hex_addr(&key.payer),
                        hex_b256(&key.nonce),
                        fingerprint.as_slice(),
                        i64::try_from(expires_at).unwrap_or(i64::MAX),
                        Some(meta.route).filter(|s| !s.is_empty()),
                        Some(meta.network).filter(|s| !s.is_empty()),
                        Some(meta.amount).filter(|s| !s.is_empty()),
                        Some(meta.pay_to).filter(|s| !s.is_empty()),
                        Some(meta.request_id).filter(|s| !s.is_empty()),
                        now
                    ],
                )?;
                if inserted == 1 {
                    return Ok(Reservation::Reserved);
                }
                let Some(rec) = read(tx, &key)? else {
                    return Err(StoreError::Sql("payment row vanished".into()));
                };
                let retry = rec.fingerprint == fingerprint
                    && matches!(
                        rec.state,
                        PaymentState::Failed {
                            retryable: true,
                            ..
                        }
                    );
                if !retry {
                    return Ok(Reservation::Duplicate(rec));
                }
                tx.execute(
                    &format!(
                        "UPDATE x402_payments SET state = 'verified', reason = NULL, \
                         retryable = 0, updated_ms = ?5 WHERE {KEY_WHERE}"
                    ),
                    params![
                        key.chain_id as i64,
                        hex_addr(&key.asset),
                        hex_addr(&key.payer),
                        hex_b256(&key.nonce),
                        now
                    ],
                )?;
                Ok(Reservation::Reserved)
            })
            .await
            .map_err(unavailable)
    }

    async fn transition(&self, key: &PaymentKey, next: PaymentState) -> Result<(), PayError> {
        let key = *key;
        let now = self.clock.now_ms();
        self.journal
            .admin(move |tx| {
                let Some(rec) = read(tx, &key)? else {
                    return Ok(Err(PayError::NotFound));
                };
                if !rec.state.may_become(&next) {
                    return Ok(Err(PayError::InvalidTransition {
                        from: rec.state.name(),
                        to: next.name(),
                    }));
                }
                let (state, tx_hash, reason, retryable) = state_columns(&next);
                // A pending transaction keeps its hash when the outcome arrives without one.
                tx.execute(
                    &format!(
                        "UPDATE x402_payments SET state = ?5, tx_hash = COALESCE(?6, tx_hash), \
                         reason = ?7, retryable = ?8, updated_ms = ?9 WHERE {KEY_WHERE}"
                    ),
                    params![
                        key.chain_id as i64,
                        hex_addr(&key.asset),
                        hex_addr(&key.payer),
                        hex_b256(&key.nonce),
                        state,
                        tx_hash,
                        reason,
                        i64::from(retryable),
                        now
                    ],
                )?;
                Ok(Ok(()))
            })
            .await
            .map_err(unavailable)?
    }

    async fn get(&self, key: &PaymentKey) -> Result<Option<StoredPayment>, PayError> {
        let conn = self.reader.lock();
        read(&conn, key).map_err(|e| PayError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::journal::open_connection;

    fn open(dir: &std::path::Path) -> SqlitePaymentStore {
        let path = dir.join("t.db");
        let journal = Journal::start(
            &path,
            1,
            open_connection(&path, true).unwrap(),
            open_connection(&path, true).unwrap(),
            true,
            crate::dblock::DbLock::acquire(&path, crate::dblock::LOCK_WAIT).unwrap(),
        )
        .unwrap();
        SqlitePaymentStore::new(
            journal,
            open_connection(&path, true).unwrap(),
            Arc::new(SystemClock),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_payment_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
        tollgate_x402::store_conformance::check_payment_store(store.clone(), 1)
            .await
            .unwrap();
        // A second run on the same file with other keys, then a reopen: records survive.
        tollgate_x402::store_conformance::check_payment_store(store.clone(), 2)
            .await
            .unwrap();
        let listed = store
            .list(&PaymentFilter {
                state: Some("settled".into()),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(listed.len(), 4, "{listed:?}");
        drop(store);
        let again = open(dir.path());
        let all = again
            .list(&PaymentFilter {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 8);
        let page = again
            .list(&PaymentFilter {
                after: Some(all[5].seq),
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.len(), 2);
    }

    #[tokio::test]
    async fn annotations_are_recorded_with_the_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let key = PaymentKey {
            chain_id: 31337,
            asset: Address::repeat_byte(0xAA),
            payer: Address::repeat_byte(0xBB),
            nonce: B256::repeat_byte(1),
        };
        store.annotate(
            key,
            PaymentMeta {
                route: "paid".into(),
                network: "eip155:31337".into(),
                amount: "10000".into(),
                pay_to: "0xcc".into(),
                request_id: "r1".into(),
            },
        );
        assert_eq!(
            store.reserve(&key, B256::ZERO, 10).await.unwrap(),
            Reservation::Reserved
        );
        store.forget(&key);
        store
            .transition(&key, PaymentState::Settling)
            .await
            .unwrap();
        store
            .transition(
                &key,
                PaymentState::Pending {
                    tx: "0xfeed".into(),
                },
            )
            .await
            .unwrap();
        let rows = store
            .list(&PaymentFilter {
                payer: Some(format!("{:#X}", key.payer).replace("0X", "0x")),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].route.as_deref(), Some("paid"));
        assert_eq!(rows[0].amount.as_deref(), Some("10000"));
        assert_eq!(rows[0].state, "pending");
        assert_eq!(rows[0].tx_hash.as_deref(), Some("0xfeed"));
    }
}
