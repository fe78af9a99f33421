//! The store of tollgate: the in-memory directory and ledger that the hot path uses, and the
//! SQLite file that makes them durable (see `ledger.md`). Callers go through [`Store`]; a
//! multi-replica backend will implement the same operations with central leases.

pub mod chargelog;
pub mod clock;
pub mod completions;
pub mod dblock;
pub mod directory;
pub mod idempotency;
pub mod index;
pub mod journal;
pub mod ledger;
pub mod logstats;
pub mod x402;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use tollgate_core::config::{Config, Durability, StoreConfig};

pub use clock::{Clock, ManualClock, SystemClock};
pub use directory::{
    AuthError, ConsumerEntry, Directory, KeyEntry, OptMs, SubStatus, Subscription, TenantEntry,
};
pub use idempotency::{IdemGuard, IdemIndex, IdemLookup, StoredResponse};
pub use journal::{IdemRecord, Journal, Op, StoreError, UsageRecord};
pub use ledger::{
    AcctKey, AcctKind, Actual, Denied, Entry, Hold, LedgerShared, Leg, Posting, ReserveSpec,
};
pub use logstats::{LogStats, LogStatsSnapshot, SYNC_BUCKETS_US};

use directory::{generate_key, hash_key};
use ledger::{ConsumerState, TenantState};

/// The opened store.
pub struct Store {
    /// Identity, in memory.
    pub dir: Arc<Directory>,
    /// Reservations and holds.
    pub ledger: Arc<LedgerShared>,
    /// Idempotency outcomes.
    pub idem: Arc<IdemIndex>,
    /// Durable writes.
    pub journal: Journal,
    /// Durability mode.
    pub durability: Durability,
    /// x402 payments (durable reservations and outcomes).
    pub x402: Arc<x402::SqlitePaymentStore>,
    /// Connection for statement and usage queries, which may scan many rows: they run on the
    /// runtime's blocking pool ([`Store::read`]), not on the thread of the admin API's tasks.
    reader: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
    /// Serializes admin changes to the directory so memory and disk agree.
    admin_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// A tenant as listed by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Contact.
    pub contact_email: Option<String>,
    /// Upgrade URL override.
    pub upgrade_url: Option<String>,
    /// Top-up URL override.
    pub top_up_url: Option<String>,
}

/// A consumer as listed by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConsumerView {
    /// Id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// Plan id.
    pub plan: String,
    /// Subscription state.
    pub status: &'static str,
    /// Period anchor (RFC 3339).
    pub anchor: String,
    /// Trial end (RFC 3339).
    pub trial_end: Option<String>,
    /// Grace end (RFC 3339).
    pub grace_until: Option<String>,
    /// Posted prepaid balance (decimal).
    pub balance: String,
    /// Balance held by in-flight requests (decimal).
    pub pending: String,
}

/// A key as listed by the admin API (never the secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyView {
    /// Key id.
    pub id: String,
    /// Consumer id.
    pub consumer: String,
    /// Display name.
    pub name: Option<String>,
    /// `true` for sandbox keys.
    pub test: bool,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Expiry (RFC 3339).
    pub expires_at: Option<String>,
    /// Revocation (RFC 3339).
    pub revoked_at: Option<String>,
}

/// A ledger entry as listed by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryView {
    /// Hex id.
    pub id: String,
    /// Kind.
    pub kind: String,
    /// `debit` or `credit` from the consumer balance's point of view.
    pub direction: &'static str,
    /// Amount (decimal).
    pub amount: String,
    /// Charge id or top-up id.
    pub charge_id: String,
    /// When (RFC 3339).
    pub created_at: String,
}

/// A page of a consumer's statement ([`Store::list_entries`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryPage {
    /// Entries, newest first.
    pub items: Vec<EntryView>,
    /// Where the next page starts (pass back as the cursor); `None` on the last page.
    pub next_after: Option<String>,
}

/// A position in a consumer's statement: the entry's time and id. Written as
/// `<created_ms>:<leg>:<charge_id>`; callers treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryCursor {
    /// The entry's time, Unix ms.
    pub created_ms: i64,
    /// Its charge id.
    pub charge_id: String,
    /// Its leg.
    pub leg: i64,
}

impl std::fmt::Display for EntryCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.created_ms, self.leg, self.charge_id)
    }
}

/// A statement cursor that is not one this store handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a statement position")]
pub struct BadCursor;

impl std::str::FromStr for EntryCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(3, ':');
        let created_ms = parts.next().and_then(|p| p.parse::<i64>().ok());
        let leg = parts.next().and_then(|p| p.parse::<i64>().ok());
        match (created_ms, leg, parts.next()) {
            (Some(created_ms), Some(leg), Some(charge_id))
                if created_ms >= 0 && leg >= 0 && !charge_id.is_empty() =>
            {
                Ok(EntryCursor {
                    created_ms,
                    charge_id: charge_id.to_string(),
                    leg,
                })
            }
            _ => Err(BadCursor),
        }
    }
}

/// What [`Store::check_ledger`] found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LedgerCheck {
    /// Nothing below differs.
    pub ok: bool,
    /// Entries read.
    pub entries: i64,
    /// Accounts recorded.
    pub accounts: i64,
    /// Credits minus debits over every account (micro-units or units): 0 when the ledger
    /// balances.
    pub imbalance: i64,
    /// Accounts whose recorded totals differ from the sum of their entries (the first 100).
    pub account_mismatches: Vec<AccountMismatch>,
    /// Consumers whose balance in memory (what admission decides on) differs from the one
    /// their entries give (the first 100).
    pub balance_mismatches: Vec<BalanceMismatch>,
}

/// An account whose totals in `accounts` (with entries not folded in yet) differ from the sum
/// of its entries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountMismatch {
    /// Account kind (`AcctKind` number).
    pub kind: i64,
    /// Owner (consumer, key or tenant sequence number).
    pub owner: i64,
    /// Period start (Unix seconds; 0 for balances).
    pub period: i64,
    /// Credits and debits recorded.
    pub recorded: (i64, i64),
    /// Credits and debits of its entries.
    pub entries: (i64, i64),
}

/// A consumer whose posted balance in memory differs from its balance account's entries.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BalanceMismatch {
    /// Consumer id.
    pub consumer: String,
    /// Credits and debits posted in memory.
    pub memory: (i64, i64),
    /// Credits and debits of its entries.
    pub entries: (i64, i64),
    /// Requests of it in flight when last compared.
    pub in_flight: usize,
}

/// Usage totals of a consumer over a time range.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UsageTotals {
    /// Requests recorded (charged or not).
    pub requests: i64,
    /// Requests charged.
    pub charged_requests: i64,
    /// Body bytes.
    pub bytes: i64,
    /// Money charged (decimal).
    pub cost: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

fn money(m: i64) -> String {
    tollgate_core::Money(m).to_string()
}

impl Store {
    /// Open the store described by `cfg`: create and migrate the file, load the directory,
    /// balances, current counters and idempotency outcomes into memory, start the writer.
    pub fn open(cfg: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        let strict = cfg.durability == Durability::Strict;
        let path = Path::new(&cfg.path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Sql(format!("{}: {e}", parent.display())))?;
        }
        let lock = dblock::DbLock::acquire(path, dblock::LOCK_WAIT)?;
        let mut conn = journal::open_connection(path, strict)?;
        let replayed = journal::replay_log(&mut conn, path)?;
        if replayed.applied > 0 {
            tracing::info!(
                records = replayed.applied,
                "applied charge log records the database did not have yet"
            );
        }
        if replayed.folded > 0 {
            tracing::info!(
                records = replayed.folded,
                "folded charge log records into account totals"
            );
        }
        let next_lsn = replayed.next_lsn;
        let count = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as usize)
        };
        let dir = Arc::new(Directory::with_capacity(
            count("SELECT COUNT(*) FROM consumers")?,
            count("SELECT COUNT(*) FROM api_keys")?,
        ));
        let idem = Arc::new(IdemIndex::default());
        load(
            &conn,
            &dir,
            &idem,
            clock.now_ms(),
            cfg.idempotency_ttl_secs as i64 * 1000,
        )?;
        let journal = Journal::start(
            path,
            next_lsn,
            conn,
            journal::open_connection(path, strict)?,
            strict,
            lock,
        )?;
        let reader = journal::open_connection(path, strict)?;
        let x402 = Arc::new(x402::SqlitePaymentStore::new(
            journal.clone(),
            journal::open_connection(path, strict)?,
            Arc::clone(&clock),
        ));
        Ok(Store {
            x402,
            dir,
            ledger: LedgerShared::new(cfg.hold_ttl_secs as i64 * 1000),
            idem,
            journal,
            durability: cfg.durability,
            reader: Arc::new(Mutex::new(reader)),
            clock,
            admin_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Make tenants, consumers and keys declared in config exist (GitOps). Existing rows keep
    /// their balances; a config consumer's plan follows the config.
    pub async fn sync_config(&self, cfg: &Config) -> Result<(), StoreError> {
        for t in &cfg.tenants {
            let view = TenantView {
                id: t.id.clone(),
                name: t.name.clone(),
                contact_email: t.contact_email.clone(),
                upgrade_url: t.upgrade_url.clone(),
                top_up_url: t.top_up_url.clone(),
            };
            self.upsert_tenant(view, "config").await?;
        }
        for c in &cfg.consumers {
            if self.dir.consumer(&c.id).is_none() {
                self.create_consumer(
                    &c.id,
                    &c.tenant,
                    c.name.as_deref(),
                    &c.plan,
                    SubStatus::Active,
                    None,
                    "config",
                )
                .await?;
            } else {
                self.set_subscription(&c.id, Some(&c.plan), None, None)
                    .await?;
            }
            for k in &c.keys {
                if self.dir.keys.contains_key(k.id.as_str()) {
                    continue;
                }
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&k.sha256, &mut hash)
                    .map_err(|e| StoreError::Conflict(e.to_string()))?;
                self.insert_key(&k.id, &c.id, hash, false, None, None, "config")
                    .await?;
            }
        }
        Ok(())
    }

    /// Create or update a tenant.
    pub async fn upsert_tenant(
        &self,
        t: TenantView,
        source: &'static str,
    ) -> Result<TenantView, StoreError> {
        let _g = self.admin_lock.lock().await;
        let now = self.clock.now_ms();
        let tv = t.clone();
        let seq = self
            .journal
            .admin(move |tx| {
                tx.execute(
                    "INSERT INTO tenants(id, name, contact_email, upgrade_url, top_up_url, source, created_ms)
                     VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(id) DO UPDATE SET name=excluded.name,
                     contact_email=excluded.contact_email, upgrade_url=excluded.upgrade_url,
                     top_up_url=excluded.top_up_url",
                    params![tv.id, tv.name, tv.contact_email, tv.upgrade_url, tv.top_up_url, source, now],
                )?;
                Ok(tx.query_row("SELECT seq FROM tenants WHERE id=?1", [&tv.id], |r| r.get::<_, i64>(0))?)
            })
            .await?;
        // Contact and URLs changed: a new entry with the same counters (one state, shared).
        // Consumers keep pointing at the old entry until restart, spending against the same
        // counters as those created after; the 402 path looks the URLs up by tenant id, so it
        // sees the new ones at once.
        let state = self
            .dir
            .tenant(&t.id)
            .map(|o| Arc::clone(&o.state))
            .unwrap_or_default();
        self.dir
            .tenants
            .insert(t.id.clone().into(), Arc::new(tenant_entry(seq, &t, state)));
        Ok(t)
    }

    /// Create a consumer with a subscription to `plan`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_consumer(
        &self,
        id: &str,
        tenant: &str,
        name: Option<&str>,
        plan: &str,
        status: SubStatus,
        trial_end_ms: Option<i64>,
        source: &'static str,
    ) -> Result<ConsumerView, StoreError> {
        let _g = self.admin_lock.lock().await;
        let t = self
            .dir
            .tenant(tenant)
            .ok_or_else(|| StoreError::NotFound(format!("tenant `{tenant}`")))?;
        if self.dir.consumer(id).is_some() {
            return Err(StoreError::Conflict(format!("consumer `{id}` exists")));
        }
        let now = self.clock.now_ms();
        let (idc, tc, nc, pc) = (
            id.to_string(),
            tenant.to_string(),
            name.map(str::to_string),
            plan.to_string(),
        );
        let seq = self
            .journal
            .admin(move |tx| {
                tx.execute(
                    "INSERT INTO consumers(id, tenant_id, name, source, created_ms, plan_id, status, anchor_ms,
                     trial_end_ms, grace_until_ms, updated_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?5,?8,NULL,?5)",
                    params![idc, tc, nc, source, now, pc, status.as_str(), trial_end_ms],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await?;
        let sub = Subscription {
            plan: plan.into(),
            status,
            anchor_ms: now,
            trial_end_ms: trial_end_ms.into(),
            grace_until_ms: OptMs::NONE,
        };
        let entry = Arc::new(ConsumerEntry {
            id: id.into(),
            seq,
            tenant: t,
            state: Mutex::new(ConsumerState::new(sub)),
            rate_tat: AtomicU64::new(0),
        });
        self.dir.consumers.insert(Arc::clone(&entry));
        Ok(self.consumer_view(&entry))
    }

    /// A consumer's admin view.
    pub fn consumer_view(&self, c: &ConsumerEntry) -> ConsumerView {
        let st = c.state.lock();
        ConsumerView {
            id: c.id.to_string(),
            tenant: c.tenant.id.to_string(),
            plan: st.sub.plan.to_string(),
            status: st.sub.status.as_str(),
            anchor: rfc3339(st.sub.anchor_ms),
            trial_end: st.sub.trial_end_ms.get().map(rfc3339),
            grace_until: st.sub.grace_until_ms.get().map(rfc3339),
            balance: money(st.posted_balance()),
            pending: money(st.balance_pending),
        }
    }

    /// Change a subscription's plan and/or status. A plan change keeps the period anchor, so
    /// usage already counted in the period stays counted against the new plan's quota.
    pub async fn set_subscription(
        &self,
        consumer: &str,
        plan: Option<&str>,
        status: Option<SubStatus>,
        grace_until_ms: Option<Option<i64>>,
    ) -> Result<ConsumerView, StoreError> {
        let _g = self.admin_lock.lock().await;
        let c = self
            .dir
            .consumer(consumer)
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{consumer}`")))?;
        let mut sub = c.state.lock().sub.clone();
        if let Some(p) = plan {
            sub.plan = p.into();
        }
        if let Some(s) = status {
            sub.status = s;
        }
        if let Some(g) = grace_until_ms {
            sub.grace_until_ms = g.into();
        }
        let now = self.clock.now_ms();
        let (id, s2) = (consumer.to_string(), sub.clone());
        self.journal
            .admin(move |tx| {
                tx.execute(
                    "UPDATE consumers SET plan_id=?2, status=?3, grace_until_ms=?4, updated_ms=?5 WHERE id=?1",
                    params![id, s2.plan.as_ref(), s2.status.as_str(), s2.grace_until_ms.get(), now],
                )?;
                Ok(())
            })
            .await?;
        c.state.lock().sub = sub;
        Ok(self.consumer_view(&c))
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_key(
        &self,
        id: &str,
        consumer: &str,
        hash: [u8; 32],
        test: bool,
        name: Option<&str>,
        expires_ms: Option<i64>,
        source: &'static str,
    ) -> Result<Arc<KeyEntry>, StoreError> {
        let c = self
            .dir
            .consumer(consumer)
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{consumer}`")))?;
        let now = self.clock.now_ms();
        let (idc, cc, nc) = (
            id.to_string(),
            consumer.to_string(),
            name.map(str::to_string),
        );
        let seq = self
            .journal
            .admin(move |tx| {
                tx.execute(
                    "INSERT INTO api_keys(id, consumer_id, hash, test, name, source, created_ms, expires_ms)
                     VALUES(?1,?2,?3,?4,?5,?6,?7,?8)",
                    params![idc, cc, &hash[..], test, nc, source, now, expires_ms],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .await?;
        let entry = Arc::new(KeyEntry {
            id: id.into(),
            seq,
            hash: directory::key_digest(&hash),
            consumer: c,
            test,
            expires_at_ms: expires_ms.into(),
            revoked_at_ms: AtomicI64::new(0),
            rate_tat: AtomicU64::new(0),
        });
        self.dir.keys.insert(Arc::clone(&entry));
        Ok(entry)
    }

    /// Create a key; returns its view and the full key string (shown once, never stored).
    pub async fn create_key(
        &self,
        consumer: &str,
        name: Option<&str>,
        expires_ms: Option<i64>,
        test: bool,
    ) -> Result<(KeyView, String), StoreError> {
        let _g = self.admin_lock.lock().await;
        let (id, key) = generate_key(test);
        let e = self
            .insert_key(&id, consumer, hash_key(&key), test, name, expires_ms, "api")
            .await?;
        Ok((self.key_view(&e, name.map(str::to_string)), key))
    }

    fn key_view(&self, e: &KeyEntry, name: Option<String>) -> KeyView {
        let rv = e.revoked_at_ms.load(std::sync::atomic::Ordering::Relaxed);
        KeyView {
            id: e.id.to_string(),
            consumer: e.consumer.id.to_string(),
            name,
            test: e.test,
            created_at: String::new(),
            expires_at: e.expires_at_ms.get().map(rfc3339),
            revoked_at: (rv != 0).then(|| rfc3339(rv)),
        }
    }

    /// Revoke a key at `at_ms` (now when `None`).
    pub async fn revoke_key(&self, id: &str, at_ms: Option<i64>) -> Result<(), StoreError> {
        let _g = self.admin_lock.lock().await;
        let e = self
            .dir
            .keys
            .get(id)
            .ok_or_else(|| StoreError::NotFound(format!("key `{id}`")))?;
        let at = at_ms.unwrap_or_else(|| self.clock.now_ms()).max(1);
        let idc = id.to_string();
        self.journal
            .admin(move |tx| {
                tx.execute(
                    "UPDATE api_keys SET revoked_ms=?2 WHERE id=?1",
                    params![idc, at],
                )?;
                Ok(())
            })
            .await?;
        e.revoked_at_ms
            .store(at, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Rotate a key: a new key for the same consumer; the old one keeps working for
    /// `overlap_ms`, then is revoked.
    pub async fn rotate_key(
        &self,
        id: &str,
        overlap_ms: i64,
    ) -> Result<(KeyView, String), StoreError> {
        let old = self
            .dir
            .keys
            .get(id)
            .ok_or_else(|| StoreError::NotFound(format!("key `{id}`")))?;
        if old.revoked_at_ms.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            return Err(StoreError::Conflict(format!("key `{id}` is revoked")));
        }
        let created = self
            .create_key(&old.consumer.id, None, old.expires_at_ms.get(), old.test)
            .await?;
        self.revoke_key(id, Some(self.clock.now_ms() + overlap_ms.max(0)))
            .await?;
        Ok(created)
    }

    /// List keys of a consumer.
    pub fn list_keys(&self, consumer: &str) -> Result<Vec<KeyView>, StoreError> {
        let conn = self.reader.lock();
        let mut st = conn.prepare(
            "SELECT id, consumer_id, name, test, created_ms, expires_ms, revoked_ms FROM api_keys
             WHERE consumer_id=?1 ORDER BY seq",
        )?;
        let rows = st.query_map([consumer], |r| {
            Ok(KeyView {
                id: r.get(0)?,
                consumer: r.get(1)?,
                name: r.get(2)?,
                test: r.get(3)?,
                created_at: rfc3339(r.get(4)?),
                expires_at: r.get::<_, Option<i64>>(5)?.map(rfc3339),
                revoked_at: r.get::<_, Option<i64>>(6)?.map(rfc3339),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// List tenants.
    pub fn list_tenants(&self) -> Vec<TenantView> {
        let mut v: Vec<TenantView> = self
            .dir
            .tenants
            .iter()
            .map(|t| tenant_view(t.value()))
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// List consumers, optionally of one tenant, at most `limit` from `after` (by id).
    pub fn list_consumers(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<ConsumerView> {
        let mut ids: Vec<Arc<ConsumerEntry>> = self
            .dir
            .consumers
            .values()
            .into_iter()
            .filter(|c| tenant.is_none_or(|t| &*c.tenant.id == t))
            .filter(|c| after.is_none_or(|a| &*c.id > a))
            .collect();
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        ids.truncate(limit);
        ids.iter().map(|c| self.consumer_view(c)).collect()
    }

    /// Credit (positive) or debit (negative) a consumer's prepaid balance. `op_id` makes it
    /// idempotent: the same id applies once; a later call with it changes nothing and reports
    /// the amount recorded under it the first time (which may differ from `amount`: the caller
    /// decides whether that is a conflict).
    pub async fn adjust_balance(
        &self,
        consumer: &str,
        amount: i64,
        op_id: &str,
        kind: &'static str,
    ) -> Result<Adjusted, StoreError> {
        let _g = self.admin_lock.lock().await;
        let c = self
            .dir
            .consumer(consumer)
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{consumer}`")))?;
        if amount == 0 {
            return Err(StoreError::Conflict("amount must not be zero".into()));
        }
        let bal = AcctKey {
            kind: AcctKind::Balance,
            owner: c.seq,
            period: 0,
        };
        let funding = AcctKey {
            kind: AcctKind::Funding,
            owner: 0,
            period: 0,
        };
        let (debit, credit) = if amount > 0 {
            (funding, bal)
        } else {
            (bal, funding)
        };
        let now = self.clock.now_ms();
        // Namespaced so an operator's id can never collide with a request's charge id.
        let (op, abs) = (op_charge_id(kind, op_id), amount.abs());
        let owner = c.seq;
        let (applied, recorded) = self
            .journal
            .admin(move |tx| {
                let n = tx.execute(
                    "INSERT INTO entries(charge_id, leg, kind, debit_kind, debit_owner, debit_period, credit_kind,
                     credit_owner, credit_period, amount, created_ms)
                     VALUES(?1,0,?2,?3,?4,?5,?6,?7,?8,?9,?10) ON CONFLICT(charge_id, leg) DO NOTHING",
                    params![op, kind, debit.kind as u8, debit.owner, debit.period, credit.kind as u8,
                            credit.owner, credit.period, abs, now],
                )?;
                if n == 1 {
                    journal::upsert_accounts(tx, [(&debit, &(0, abs)), (&credit, &(abs, 0))].into_iter())?;
                    return Ok((true, amount));
                }
                // Applied before: what was recorded then, by its primary key (however many
                // entries the consumer has had since).
                let (recorded, debited): (i64, bool) = tx.query_row(
                    "SELECT amount, debit_kind = ?2 AND debit_owner = ?3 FROM entries
                     WHERE charge_id = ?1 AND leg = 0",
                    params![op, AcctKind::Balance as u8, owner],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                Ok((false, if debited { -recorded } else { recorded }))
            })
            .await?;
        let mut st = c.state.lock();
        if applied {
            if amount > 0 {
                st.balance_credits += amount;
            } else {
                st.balance_debits -= amount;
            }
        }
        Ok(Adjusted {
            balance: st.posted_balance(),
            applied,
            recorded,
        })
    }

    /// Entries touching a consumer's prepaid balance, newest first (everything settled before
    /// the call included): at most `limit`, listed after `after` (the position of the last
    /// entry of the previous page), and the position to continue from when there may be more.
    pub async fn list_entries(
        &self,
        consumer: &str,
        limit: usize,
        after: Option<EntryCursor>,
    ) -> Result<EntryPage, StoreError> {
        self.journal.flush().await?;
        let c = self
            .dir
            .consumer(consumer)
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{consumer}`")))?;
        let seq = c.seq;
        // Before the first page: a time after every entry's.
        let after = after.unwrap_or(EntryCursor {
            created_ms: i64::MAX,
            charge_id: String::new(),
            leg: 0,
        });
        self.read(move |conn| {
            // Newest first, ties in time broken by the entry's id, so pages neither repeat nor
            // skip entries that share a millisecond.
            let mut st = conn.prepare(STATEMENT_PAGE_SQL)?;
            let rows = st.query_map(
                params![
                    seq,
                    after.created_ms,
                    after.charge_id,
                    after.leg,
                    limit as i64 + 1
                ],
                |r| {
                    let leg: i64 = r.get(0)?;
                    let charge_id: String = r.get(4)?;
                    let is_debit: bool = r.get(2)?;
                    let created_ms: i64 = r.get(5)?;
                    Ok((
                        created_ms,
                        leg,
                        EntryView {
                            id: format!("{charge_id}/{leg}"),
                            kind: r.get(1)?,
                            direction: if is_debit { "debit" } else { "credit" },
                            amount: money(r.get(3)?),
                            charge_id,
                            created_at: rfc3339(created_ms),
                        },
                    ))
                },
            )?;
            let mut rows: Vec<(i64, i64, EntryView)> = rows.collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            // The next page starts after the last entry of this one.
            let next_after = rows.last().filter(|_| more).map(|(created_ms, leg, v)| {
                EntryCursor {
                    created_ms: *created_ms,
                    charge_id: v.charge_id.clone(),
                    leg: *leg,
                }
                .to_string()
            });
            Ok(EntryPage {
                items: rows.into_iter().map(|(.., v)| v).collect(),
                next_after,
            })
        })
        .await
    }

    /// Usage totals of a consumer in `[from_ms, to_ms)` (everything settled before the call
    /// included).
    pub async fn usage_totals(
        &self,
        consumer: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<UsageTotals, StoreError> {
        self.journal.flush().await?;
        let c = self
            .dir
            .consumer(consumer)
            .ok_or_else(|| StoreError::NotFound(format!("consumer `{consumer}`")))?;
        let seq = c.seq;
        let (requests, charged, bytes, cost): (i64, i64, i64, i64) = self
            .read(move |conn| {
                Ok(
                    conn.query_row(USAGE_TOTALS_SQL, params![seq, from_ms, to_ms], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?,
                )
            })
            .await?;
        Ok(UsageTotals {
            requests,
            charged_requests: charged,
            bytes,
            cost: money(cost),
        })
    }

    /// Check the ledger: that it balances (credits equal debits over all accounts), that every
    /// account's recorded totals are the sum of its entries, and that every consumer's balance
    /// in memory is the one its entries give. Reads every entry (a scan: run it off-peak on a
    /// large database; it holds the store's query connection meanwhile). A consumer with
    /// requests settling while it runs may differ for a moment: such differences are compared
    /// again, up to five times 20 ms apart, before they are reported.
    pub async fn check_ledger(&self) -> Result<LedgerCheck, StoreError> {
        self.journal.flush().await?;
        let (entries, accounts, imbalance, account_mismatches) = self
            .read(|conn| {
                let tx = conn.unchecked_transaction()?;
                let through = journal::accounts_lsn(&tx)? as i64;
                let entries: i64 =
                    tx.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))?;
                let accounts: i64 =
                    tx.query_row("SELECT COUNT(*) FROM accounts", [], |r| r.get(0))?;
                // Every entry credits one account and debits another by the same amount, so
                // the entries not folded in yet balance by construction: the accounts must.
                let imbalance: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(credits) - SUM(debits), 0) FROM accounts",
                    [],
                    |r| r.get(0),
                )?;
                let mut st = tx.prepare(LEDGER_ACCOUNT_MISMATCHES_SQL)?;
                let mismatches = st
                    .query_map([through], |r| {
                        Ok(AccountMismatch {
                            kind: r.get(0)?,
                            owner: r.get(1)?,
                            period: r.get(2)?,
                            recorded: (r.get(3)?, r.get(4)?),
                            entries: (r.get(5)?, r.get(6)?),
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((entries, accounts, imbalance, mismatches))
            })
            .await?;
        let mut suspects: Vec<Arc<ConsumerEntry>> = self.dir.consumers.values();
        let mut balance_mismatches = Vec::new();
        for round in 0..5 {
            if round > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Memory first, then the ledger after a flush: a posting seen in memory is then
            // in the ledger too, unless it was made while this runs.
            let memory: Vec<(i64, i64, usize)> = suspects
                .iter()
                .map(|c| {
                    let st = c.state.lock();
                    (st.balance_credits, st.balance_debits, st.holds_len())
                })
                .collect();
            self.journal.flush().await?;
            let owners: Vec<i64> = suspects.iter().map(|c| c.seq).collect();
            let ledger = self
                .read(move |conn| balance_totals(conn, &owners, round == 0))
                .await?;
            balance_mismatches.clear();
            let mut still = Vec::new();
            for ((c, (mc, md, in_flight)), entries) in suspects.into_iter().zip(memory).zip(ledger)
            {
                if (mc, md) != entries {
                    if balance_mismatches.len() < 100 {
                        balance_mismatches.push(BalanceMismatch {
                            consumer: c.id.to_string(),
                            memory: (mc, md),
                            entries,
                            in_flight,
                        });
                    }
                    still.push(c);
                }
            }
            suspects = still;
            if suspects.is_empty() {
                break;
            }
        }
        Ok(LedgerCheck {
            ok: imbalance == 0 && account_mismatches.is_empty() && balance_mismatches.is_empty(),
            entries,
            accounts,
            imbalance,
            account_mismatches,
            balance_mismatches,
        })
    }

    /// Count of charged usage rows for a request id (tests and audits).
    pub async fn charged_count(&self, request_id: &str) -> Result<i64, StoreError> {
        self.journal.flush().await?;
        let request_id = request_id.to_string();
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM usage WHERE request_id=?1 AND charged=1",
                [request_id],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Run a query on the reader connection on the runtime's blocking pool: a statement or
    /// usage query over a large database scans many rows, and must not hold up the other
    /// tasks of the thread it was called from (admin requests, the hold sweeper).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = Arc::clone(&self.reader);
        match tokio::task::spawn_blocking(move || f(&reader.lock())).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Sql(format!("query task failed: {e}"))),
        }
    }
}

/// A page of a consumer's statement: the entries debiting its balance and those crediting it,
/// each side read newest first through its partial index (`entries_balance_debit`,
/// `entries_balance_credit`) from the cursor on, then merged. Columns: leg, kind, is_debit,
/// amount, charge_id, created_ms. Parameters: owner, cursor (created_ms, charge_id, leg), limit.
pub(crate) const STATEMENT_PAGE_SQL: &str = "
    SELECT leg, kind, is_debit, amount, charge_id, created_ms FROM (
      SELECT * FROM (
        SELECT leg, kind, 1 AS is_debit, amount, charge_id, created_ms FROM entries
        WHERE debit_kind = 1 AND debit_owner = ?1 AND (created_ms, charge_id, leg) < (?2, ?3, ?4)
        ORDER BY created_ms DESC, charge_id DESC, leg DESC LIMIT ?5)
      UNION ALL
      SELECT * FROM (
        SELECT leg, kind, 0 AS is_debit, amount, charge_id, created_ms FROM entries
        WHERE credit_kind = 1 AND credit_owner = ?1 AND (created_ms, charge_id, leg) < (?2, ?3, ?4)
          AND NOT (debit_kind = 1 AND debit_owner = ?1)
        ORDER BY created_ms DESC, charge_id DESC, leg DESC LIMIT ?5))
    ORDER BY created_ms DESC, charge_id DESC, leg DESC LIMIT ?5";

/// A consumer's usage totals in a time range (read through the `usage_consumer_time` index).
pub(crate) const USAGE_TOTALS_SQL: &str =
    "SELECT COUNT(*), COALESCE(SUM(charged),0), COALESCE(SUM(bytes),0), COALESCE(SUM(cost),0)
     FROM usage WHERE consumer_seq=?1 AND occurred_ms >= ?2 AND occurred_ms < ?3";

/// Accounts whose recorded totals differ from the sums of their entries: recorded is
/// `accounts` plus the entries not folded into it yet (written from a log record past
/// `meta.accounts_lsn`, parameter 1; entries of admin operations have `lsn` 0 and are posted
/// to `accounts` directly). One grouping over every entry's two sides.
const LEDGER_ACCOUNT_MISMATCHES_SQL: &str = "
    SELECT kind, owner, period, SUM(rc), SUM(rd), SUM(ec), SUM(ed) FROM (
      SELECT kind, owner, period, credits AS rc, debits AS rd, 0 AS ec, 0 AS ed FROM accounts
      UNION ALL
      SELECT debit_kind, debit_owner, debit_period, 0, amount, 0, 0 FROM entries WHERE lsn > ?1
      UNION ALL
      SELECT credit_kind, credit_owner, credit_period, amount, 0, 0, 0 FROM entries WHERE lsn > ?1
      UNION ALL
      SELECT debit_kind, debit_owner, debit_period, 0, 0, 0, amount FROM entries
      UNION ALL
      SELECT credit_kind, credit_owner, credit_period, 0, 0, amount, 0 FROM entries)
    GROUP BY kind, owner, period
    HAVING SUM(rc) <> SUM(ec) OR SUM(rd) <> SUM(ed)
    ORDER BY kind, owner, period LIMIT 100";

/// Credits and debits of every consumer's balance, summed from its entries (by owner).
const LEDGER_BALANCES_SQL: &str = "
    SELECT owner, SUM(c), SUM(d) FROM (
      SELECT credit_owner AS owner, amount AS c, 0 AS d FROM entries WHERE credit_kind = 1
      UNION ALL
      SELECT debit_owner, 0, amount FROM entries WHERE debit_kind = 1)
    GROUP BY owner";

/// Credits and debits of each consumer's balance account (by sequence number, in the order
/// given), summed from its entries: `all` in one grouping over every balance entry, else
/// owner by owner through the statement indexes (for a few).
fn balance_totals(
    conn: &Connection,
    owners: &[i64],
    all: bool,
) -> Result<Vec<(i64, i64)>, StoreError> {
    if all {
        let mut st = conn.prepare(LEDGER_BALANCES_SQL)?;
        let totals: std::collections::HashMap<i64, (i64, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
            .collect::<Result<_, _>>()?;
        return Ok(owners
            .iter()
            .map(|o| totals.get(o).copied().unwrap_or((0, 0)))
            .collect());
    }
    let mut debits = conn.prepare_cached(
        "SELECT COALESCE(SUM(amount), 0) FROM entries WHERE debit_kind = 1 AND debit_owner = ?1",
    )?;
    let mut credits = conn.prepare_cached(
        "SELECT COALESCE(SUM(amount), 0) FROM entries WHERE credit_kind = 1 AND credit_owner = ?1",
    )?;
    owners
        .iter()
        .map(|&o| {
            let c: i64 = credits.query_row([o], |r| r.get(0))?;
            let d: i64 = debits.query_row([o], |r| r.get(0))?;
            Ok((c, d))
        })
        .collect()
}

/// Outcome of [`Store::adjust_balance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    /// The consumer's posted balance afterwards, micro-units.
    pub balance: i64,
    /// Whether the change was applied by this call (`false`: its op id was used before).
    pub applied: bool,
    /// The signed amount recorded under the op id: this call's, or the earlier call's.
    pub recorded: i64,
}

/// The charge id under which an operator's balance change with `op_id` is recorded
/// (namespaced so it can never collide with a request's charge id).
pub fn op_charge_id(kind: &str, op_id: &str) -> String {
    format!("op:{kind}:{op_id}")
}

fn tenant_entry(seq: i64, t: &TenantView, state: Arc<Mutex<TenantState>>) -> TenantEntry {
    TenantEntry {
        id: t.id.clone().into(),
        seq,
        name: t.name.clone().into(),
        contact_email: t.contact_email.clone().map(Into::into),
        upgrade_url: t.upgrade_url.clone().map(Into::into),
        top_up_url: t.top_up_url.clone().map(Into::into),
        state,
    }
}

fn tenant_view(t: &TenantEntry) -> TenantView {
    TenantView {
        id: t.id.to_string(),
        name: t.name.to_string(),
        contact_email: t.contact_email.as_deref().map(str::to_string),
        upgrade_url: t.upgrade_url.as_deref().map(str::to_string),
        top_up_url: t.top_up_url.as_deref().map(str::to_string),
    }
}

/// Load everything the hot path needs. Holds are not durable: a request that had not settled
/// before a crash never got a success response, so its hold is simply gone on restart.
fn load(
    conn: &Connection,
    dir: &Directory,
    idem: &IdemIndex,
    now_ms: i64,
    idem_ttl_ms: i64,
) -> Result<(), StoreError> {
    let mut by_seq_tenant = std::collections::HashMap::new();
    {
        let mut st = conn
            .prepare("SELECT seq, id, name, contact_email, upgrade_url, top_up_url FROM tenants")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let v = TenantView {
                id: r.get(1)?,
                name: r.get(2)?,
                contact_email: r.get(3)?,
                upgrade_url: r.get(4)?,
                top_up_url: r.get(5)?,
            };
            let e = Arc::new(tenant_entry(r.get(0)?, &v, Default::default()));
            by_seq_tenant.insert(e.seq, Arc::clone(&e));
            dir.tenants.insert(v.id.into(), e);
        }
    }
    // Counters of recent periods (older ones cannot be current), grouped by owner so each is
    // attached while its consumer or key is loaded (no second index over a million rows).
    let mut counters: std::collections::HashMap<(u8, i64), Vec<(AcctKey, i64)>> =
        std::collections::HashMap::new();
    {
        let since = now_ms / 1000 - 400 * 86_400;
        let mut st = conn.prepare("SELECT kind, owner, period, debits FROM accounts WHERE kind BETWEEN 2 AND 6 AND period >= ?1")?;
        let mut rows = st.query([since])?;
        while let Some(r) = rows.next()? {
            let Some(kind) = AcctKind::from_u8(r.get::<_, i64>(0)? as u8) else {
                continue;
            };
            let key = AcctKey {
                kind,
                owner: r.get(1)?,
                period: r.get(2)?,
            };
            let debits: i64 = r.get(3)?;
            match kind {
                AcctKind::CapTenant => {
                    if let Some(t) = by_seq_tenant.get(&key.owner) {
                        t.state.lock().counters.set_posted(key, debits);
                    }
                }
                AcctKind::CapKey => counters
                    .entry((2, key.owner))
                    .or_default()
                    .push((key, debits)),
                _ => counters
                    .entry((1, key.owner))
                    .or_default()
                    .push((key, debits)),
            }
        }
    }
    {
        let mut st = conn.prepare(
            "SELECT c.seq, c.id, c.tenant_id, c.plan_id, c.status, c.anchor_ms, c.trial_end_ms, c.grace_until_ms,
             COALESCE(a.credits, 0), COALESCE(a.debits, 0)
             FROM consumers c LEFT JOIN accounts a ON a.kind = 1 AND a.owner = c.seq AND a.period = 0",
        )?;
        let mut rows = st.query([])?;
        // Borrowed column reads and interned plan ids: no per-row allocation beyond the entry.
        let mut plans: std::collections::HashMap<String, Arc<str>> =
            std::collections::HashMap::new();
        let mut last_tenant: Option<Arc<TenantEntry>> = None;
        while let Some(r) = rows.next()? {
            let tenant_id = r
                .get_ref(2)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let tenant = match &last_tenant {
                Some(t) if &*t.id == tenant_id => Arc::clone(t),
                _ => match dir.tenant(tenant_id) {
                    Some(t) => {
                        last_tenant = Some(Arc::clone(&t));
                        t
                    }
                    None => {
                        tracing::warn!(tenant = %tenant_id, "consumer of an unknown tenant skipped");
                        continue;
                    }
                },
            };
            let status = r
                .get_ref(4)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let plan_id = r
                .get_ref(3)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let plan = match plans.get(plan_id) {
                Some(p) => Arc::clone(p),
                None => {
                    let p: Arc<str> = plan_id.into();
                    plans.insert(plan_id.to_string(), Arc::clone(&p));
                    p
                }
            };
            let sub = Subscription {
                plan,
                status: SubStatus::parse(status).unwrap_or(SubStatus::Suspended),
                anchor_ms: r.get(5)?,
                trial_end_ms: r.get::<_, Option<i64>>(6)?.into(),
                grace_until_ms: r.get::<_, Option<i64>>(7)?.into(),
            };
            let mut state = ConsumerState::new(sub);
            state.balance_credits = r.get(8)?;
            state.balance_debits = r.get(9)?;
            let seq: i64 = r.get(0)?;
            if let Some(list) = counters.remove(&(1, seq)) {
                for (k, d) in list {
                    state.counters.set_posted(k, d);
                }
            }
            let id = r
                .get_ref(1)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let e = Arc::new(ConsumerEntry {
                id: id.into(),
                seq,
                tenant,
                state: Mutex::new(state),
                rate_tat: AtomicU64::new(0),
            });
            dir.consumers.insert(e);
        }
    }
    {
        let mut st = conn.prepare(
            "SELECT seq, id, consumer_id, hash, test, expires_ms, revoked_ms FROM api_keys",
        )?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let cid = r
                .get_ref(2)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let Some(c) = dir.consumer(cid) else {
                continue;
            };
            let Ok(full) = <[u8; 32]>::try_from(
                r.get_ref(3)?
                    .as_blob()
                    .map_err(|e| StoreError::Sql(e.to_string()))?,
            ) else {
                continue;
            };
            let h = directory::key_digest(&full);
            let id = r
                .get_ref(1)?
                .as_str()
                .map_err(|e| StoreError::Sql(e.to_string()))?;
            let seq: i64 = r.get(0)?;
            if let Some(list) = counters.remove(&(2, seq)) {
                let mut st = c.state.lock();
                for (k, d) in list {
                    st.counters.set_posted(k, d);
                }
            }
            let e = Arc::new(KeyEntry {
                id: id.into(),
                seq,
                hash: h,
                consumer: c,
                test: r.get(4)?,
                expires_at_ms: r.get::<_, Option<i64>>(5)?.into(),
                revoked_at_ms: AtomicI64::new(r.get::<_, Option<i64>>(6)?.unwrap_or(0)),
                rate_tat: AtomicU64::new(0),
            });
            dir.keys.insert(e);
        }
    }
    {
        let mut st = conn.prepare("SELECT consumer_seq, key, fingerprint, status, headers, body, created_ms FROM idempotency WHERE created_ms >= ?1")?;
        let mut rows = st.query([now_ms - idem_ttl_ms])?;
        while let Some(r) = rows.next()? {
            let fp: Vec<u8> = r.get(2)?;
            let mut f = [0u8; 32];
            if fp.len() != 32 {
                continue;
            }
            f.copy_from_slice(&fp);
            let headers: String = r.get(4)?;
            let key: String = r.get(1)?;
            idem.load(
                r.get(0)?,
                &key,
                f,
                StoredResponse {
                    status: r.get(3)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: r.get(5)?,
                    created_ms: r.get(6)?,
                },
            );
        }
    }
    Ok(())
}

/// Bulk-create `n` consumers of `tenant` on `plan`, each with one key and `balance`, straight
/// into the file (offline: it fails while a gateway has the database open). Returns the keys.
pub fn seed(
    path: &Path,
    tenant: &str,
    plan: &str,
    n: usize,
    balance: i64,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    let _lock = dblock::DbLock::acquire(path, std::time::Duration::ZERO)?;
    let mut conn = journal::open_connection(path, false)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = chrono::Utc::now().timestamp_millis();
    let exists: Option<i64> = tx
        .query_row("SELECT seq FROM tenants WHERE id=?1", [tenant], |r| {
            r.get(0)
        })
        .optional()?;
    if exists.is_none() {
        tx.execute(
            "INSERT INTO tenants(id, name, created_ms) VALUES(?1, ?1, ?2)",
            params![tenant, now],
        )?;
    }
    let mut keys = Vec::with_capacity(n);
    {
        let mut ins_c = tx.prepare(
            "INSERT INTO consumers(id, tenant_id, source, created_ms, plan_id, status, anchor_ms, updated_ms)
             VALUES(?1, ?2, 'seed', ?3, ?4, 'active', ?3, ?3)",
        )?;
        let mut ins_k = tx.prepare("INSERT INTO api_keys(id, consumer_id, hash, source, created_ms) VALUES(?1, ?2, ?3, 'seed', ?4)")?;
        let mut ins_e = tx.prepare(
            "INSERT INTO entries(charge_id, leg, kind, debit_kind, debit_owner, debit_period, credit_kind, credit_owner,
             credit_period, amount, created_ms) VALUES(?1, 0, 'topup', 102, 0, 0, 1, ?2, 0, ?3, ?4)",
        )?;
        let mut ins_a = tx.prepare(
            "INSERT INTO accounts(kind, owner, period, credits, debits) VALUES(1, ?1, 0, ?2, 0)",
        )?;
        for i in 0..n {
            let cid = format!("{prefix}{i}");
            ins_c.execute(params![cid, tenant, now, plan])?;
            let cseq = tx.last_insert_rowid();
            let (kid, key) = generate_key(false);
            ins_k.execute(params![kid, cid, &hash_key(&key)[..], now])?;
            if balance > 0 {
                let op = format!("op:topup:seed-{cid}");
                ins_e.execute(params![op, cseq, balance, now])?;
                ins_a.execute(params![cseq, balance])?;
            }
            keys.push(key);
        }
        if balance > 0 {
            tx.execute(
                "INSERT INTO accounts(kind, owner, period, credits, debits) VALUES(102, 0, 0, 0, ?1)
                 ON CONFLICT(kind, owner, period) DO UPDATE SET debits = debits + excluded.debits",
                params![balance * n as i64],
            )?;
        }
    }
    tx.commit()?;
    Ok(keys)
}
