//! The durable record. Settled requests go to the charge log ([`crate::chargelog`]): one
//! writer thread appends whatever has queued up with a single `fdatasync` (group commit), so
//! the fsync is shared by every request in the batch; in strict mode a caller awaits
//! [`Journal::write`] before releasing its response. A projector thread applies the log to the
//! SQLite file in large transactions (usage rows, entries, idempotency outcomes, account
//! totals), and runs admin changes there in log order, answering them once committed.

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;

use crate::chargelog;
use crate::clock::{Clock, SystemClock};
use crate::completions::{self, Done, Inbox};
use crate::dblock::DbLock;
use crate::ledger::{AcctKey, Entry};

/// Per-account `(credits, debits)` to fold into `accounts`.
type Deltas = hashbrown::HashMap<AcctKey, (i64, i64)>;

/// Failure of the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("store error: {0}")]
    Sql(String),
    /// The writer thread is gone (shutdown or crash).
    #[error("store writer stopped")]
    WriterGone,
    /// A row that must exist does not.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation conflicts with existing data.
    #[error("conflict: {0}")]
    Conflict(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e.to_string())
    }
}

/// One request's usage event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// Charge id (request id, or consumer-scoped idempotency key).
    pub charge_id: String,
    /// Request id as sent to the client.
    pub request_id: String,
    /// Tenant seq.
    pub tenant_seq: i64,
    /// Consumer seq (0 for anonymous).
    pub consumer_seq: i64,
    /// Key id.
    pub key_id: Option<String>,
    /// Route id.
    pub route: String,
    /// HTTP status returned (0 when no response came from upstream).
    pub status: u16,
    /// Requests counted.
    pub requests: i64,
    /// Body bytes counted.
    pub bytes: i64,
    /// Money charged (micro-units).
    pub cost: i64,
    /// Whether it was charged.
    pub charged: bool,
    /// When, Unix ms.
    pub occurred_ms: i64,
}

/// A stored `Idempotency-Key` outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdemRecord {
    /// Consumer seq.
    pub consumer_seq: i64,
    /// The client's key.
    pub key: String,
    /// SHA-256 of method, path and body.
    pub fingerprint: [u8; 32],
    /// Response status.
    pub status: u16,
    /// Response headers worth replaying, as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Response body, when it was small enough to keep.
    pub body: Option<Vec<u8>>,
    /// When, Unix ms.
    pub created_ms: i64,
}

/// Admin mutation run inside the writer's transaction.
pub type AdminOp = Box<dyn FnOnce(&Transaction<'_>) -> Result<(), StoreError> + Send>;

/// What the writer applies.
pub enum Op {
    /// A settled request: its usage event, entries and idempotency outcome.
    Charge {
        /// Usage event.
        usage: Box<UsageRecord>,
        /// Balanced entries (may be empty for an uncharged request).
        entries: Vec<Entry>,
        /// Idempotency outcome to remember.
        idem: Option<Box<IdemRecord>>,
    },
    /// Entries alone (late byte counts and other follow-up postings).
    Entries {
        /// Charge id the entries belong to.
        charge_id: String,
        /// When, Unix ms.
        occurred_ms: i64,
        /// The entries.
        entries: Vec<Entry>,
    },
    /// An admin change.
    Admin(AdminOp),
}

pub(crate) struct Job {
    work: Work,
    done: Option<Done>,
    /// The caller's thread inbox (a proxy worker): its answer goes there, woken once a batch.
    origin: Option<Arc<Inbox>>,
    /// When the caller handed it over (the writer counts each record's wait until durable).
    queued: std::time::Instant,
}

/// What a job carries to the writer.
enum Work {
    /// A change as built by its caller (admin changes, and records from threads without an
    /// outbox): the writer encodes it.
    Op(Op),
    /// A log record already encoded by its caller (its number still unset), at `range` of the
    /// `buf`-th byte buffer the writer received. Encoding on the caller's thread frees the
    /// record's parts there: freed by another thread, every block of them would come back to
    /// the caller's allocator cold.
    Frame {
        buf: usize,
        range: std::ops::Range<usize>,
    },
}

impl Job {
    /// A job for `work`, handed over now.
    fn new(work: Work, done: Option<Done>, origin: Option<Arc<Inbox>>) -> Job {
        Job {
            work,
            done,
            origin,
            queued: std::time::Instant::now(),
        }
    }

    /// Encode a logged change into `frames` (the buffer its message will carry) and drop the
    /// change on this thread; other changes are kept as they are.
    pub(crate) fn encode_into(mut self, frames: &mut Vec<u8>) -> Job {
        if let Work::Op(op) = &self.work {
            let start = frames.len();
            if encode_logged(frames, 0, op) {
                self.work = Work::Frame {
                    buf: 0,
                    range: start..frames.len(),
                };
            }
        }
        self
    }
}

#[cfg(test)]
impl Job {
    /// A background job (no caller waits) named `name`.
    pub(crate) fn for_test(name: &str) -> Job {
        Job::new(
            Work::Op(Op::Entries {
                charge_id: name.to_string(),
                occurred_ms: 0,
                entries: Vec::new(),
            }),
            None,
            None,
        )
    }

    /// The name given to [`Job::for_test`], decoded from `frames` when it was encoded there.
    pub(crate) fn test_name(&self, frames: &[u8]) -> String {
        match &self.work {
            Work::Op(Op::Entries { charge_id, .. }) => charge_id.clone(),
            Work::Frame { range, .. } => match frames
                .get(range.start + 8..range.end)
                .map(chargelog::decode_payload)
            {
                Some(Ok((_, chargelog::Record::Entries { charge_id, .. }))) => charge_id,
                _ => String::new(),
            },
            Work::Op(_) => String::new(),
        }
    }
}

/// What the writer receives: a job, or the jobs a worker thread queued in one round
/// ([`completions`]).
pub(crate) enum Msg {
    One(Job),
    /// Jobs of one round; their [`Work::Frame`]s are in `frames`.
    Many {
        jobs: Vec<Job>,
        frames: Vec<u8>,
    },
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    /// The log writer's counters.
    stats: Arc<crate::logstats::LogStats>,
    /// The checkpointer stops once every handle is gone.
    _alive: std::sync::Arc<()>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tenants(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  contact_email TEXT, upgrade_url TEXT, top_up_url TEXT, source TEXT NOT NULL DEFAULT 'api',
  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS consumers(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, tenant_id TEXT NOT NULL,
  name TEXT, source TEXT NOT NULL DEFAULT 'api', created_ms INTEGER NOT NULL,
  plan_id TEXT NOT NULL, status TEXT NOT NULL, anchor_ms INTEGER NOT NULL,
  trial_end_ms INTEGER, grace_until_ms INTEGER, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, consumer_id TEXT NOT NULL,
  hash BLOB NOT NULL, test INTEGER NOT NULL DEFAULT 0, name TEXT, source TEXT NOT NULL DEFAULT 'api',
  created_ms INTEGER NOT NULL, expires_ms INTEGER, revoked_ms INTEGER);
CREATE INDEX IF NOT EXISTS api_keys_consumer ON api_keys(consumer_id);
CREATE TABLE IF NOT EXISTS accounts(
  kind INTEGER NOT NULL, owner INTEGER NOT NULL, period INTEGER NOT NULL,
  credits INTEGER NOT NULL DEFAULT 0, debits INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(kind, owner, period)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries(
  charge_id TEXT NOT NULL, leg INTEGER NOT NULL, kind TEXT NOT NULL,
  debit_kind INTEGER NOT NULL, debit_owner INTEGER NOT NULL, debit_period INTEGER NOT NULL,
  credit_kind INTEGER NOT NULL, credit_owner INTEGER NOT NULL, credit_period INTEGER NOT NULL,
  amount INTEGER NOT NULL CHECK(amount > 0), created_ms INTEGER NOT NULL,
  lsn INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(charge_id, leg)) WITHOUT ROWID;
-- A consumer's statement: the entries of its prepaid balance (kind 1), by side; a request's
-- quota entries (other kinds) are not indexed here.
CREATE INDEX IF NOT EXISTS entries_balance_debit ON entries(debit_owner, created_ms) WHERE debit_kind = 1;
CREATE INDEX IF NOT EXISTS entries_balance_credit ON entries(credit_owner, created_ms) WHERE credit_kind = 1;
CREATE TABLE IF NOT EXISTS usage(
  charge_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, tenant_seq INTEGER NOT NULL,
  consumer_seq INTEGER NOT NULL, key_id TEXT, route TEXT NOT NULL, status INTEGER NOT NULL,
  requests INTEGER NOT NULL, bytes INTEGER NOT NULL, cost INTEGER NOT NULL,
  charged INTEGER NOT NULL, occurred_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_consumer_time ON usage(consumer_seq, occurred_ms);
CREATE TABLE IF NOT EXISTS log_rejects(
  lsn INTEGER PRIMARY KEY, error TEXT NOT NULL, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency(
  consumer_seq INTEGER NOT NULL, key TEXT NOT NULL, fingerprint BLOB NOT NULL,
  status INTEGER NOT NULL, headers TEXT NOT NULL, body BLOB, created_ms INTEGER NOT NULL,
  PRIMARY KEY(consumer_seq, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS x402_payments(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  chain_id INTEGER NOT NULL, asset TEXT NOT NULL, payer TEXT NOT NULL, nonce TEXT NOT NULL,
  fingerprint BLOB NOT NULL, state TEXT NOT NULL, tx_hash TEXT, reason TEXT,
  retryable INTEGER NOT NULL DEFAULT 0, expires_at INTEGER NOT NULL,
  route TEXT, network TEXT, amount TEXT, pay_to TEXT, request_id TEXT,
  created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  UNIQUE(chain_id, asset, payer, nonce));
CREATE INDEX IF NOT EXISTS x402_payments_payer ON x402_payments(payer);
CREATE INDEX IF NOT EXISTS x402_payments_route ON x402_payments(route);
"#;

/// Schema version written to `meta`. Version 2 indexes usage by consumer and time
/// (`usage_consumer_time`) instead of by time alone (`usage_time`, version 1): a consumer's
/// usage in a period is then read from that consumer's rows instead of from every consumer's
/// rows in the period. Version 3 folds account totals by log position: an entry written from
/// the charge log carries the log sequence number of its record (`entries.lsn`) and
/// `meta.accounts_lsn` says through which record `accounts` holds the totals; the
/// per-entry sequence number of version 2 (`entries.seq`, its index `entries_seq` and
/// `meta.accounts_through`) is gone. A migrated database keeps the `seq` column, unused.
pub const SCHEMA_VERSION: &str = "3";

/// Open (creating and migrating) the database at `path` with the pragmas for `strict`.
pub fn open_connection(path: &Path, strict: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // 16 KiB pages (takes effect only when the file is created; an existing database keeps its
    // own): the projector's appends split and rebalance B-tree pages a quarter as often and
    // the WAL carries fewer frames. Against 4 KiB pages it took the projector from 4.80-4.90
    // to 4.15-4.32 us of CPU per request at governed saturation (bench/ab, two runs of 3
    // rounds on a 2-core Xeon VM), and the checkpointer from 0.25-0.33 to 0.16-0.20.
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if strict { "FULL" } else { "NORMAL" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.execute_batch(SCHEMA)?;
    let v: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k='schema'", [], |r| r.get(0))
        .optional()?;
    match v.as_deref() {
        None => {
            conn.execute("INSERT INTO meta(k, v) VALUES('schema', ?1)", [SCHEMA_VERSION])?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(from @ ("1" | "2")) => {
            migrate(&conn, from)?;
            tracing::info!("database schema migrated from version {from} to {SCHEMA_VERSION}");
        }
        Some(other) => {
            return Err(StoreError::Sql(format!(
                "database schema version {other} is newer than this binary understands ({SCHEMA_VERSION})"
            )))
        }
    }
    Ok(conn)
}

/// The names of `table`'s columns.
fn table_columns(conn: &Connection, table: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Bring a version 1 or 2 database to version 3, in one transaction. The schema above has
/// already created what is new (`usage_consumer_time` over the existing rows).
fn migrate(conn: &Connection, from: &str) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        if from == "1" {
            conn.execute_batch("DROP INDEX IF EXISTS usage_time")?;
        }
        let columns = table_columns(conn, "entries")?;
        let has = |c: &str| columns.iter().any(|n| n == c);
        if has("seq") {
            // Versions 1 and 2 folded entries into `accounts` by their sequence number: fold
            // those past `meta.accounts_through` now, so that `accounts` holds every entry in
            // the database. The records of the charge log after `meta.log_lsn` are not in it
            // yet; they are applied, and their totals folded, when the store opens.
            let through: i64 = conn
                .query_row(
                    "SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'accounts_through'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            conn.execute(
                "INSERT INTO accounts(kind, owner, period, credits, debits)
                 SELECT kind, owner, period, SUM(c), SUM(d) FROM (
                   SELECT debit_kind AS kind, debit_owner AS owner, debit_period AS period,
                     0 AS c, amount AS d FROM entries WHERE seq > ?1
                   UNION ALL
                   SELECT credit_kind, credit_owner, credit_period, amount, 0 FROM entries WHERE seq > ?1)
                 WHERE true GROUP BY kind, owner, period
                 ON CONFLICT(kind, owner, period) DO UPDATE SET credits = credits + excluded.credits,
                 debits = debits + excluded.debits",
                [through],
            )?;
        }
        if !has("lsn") {
            conn.execute_batch("ALTER TABLE entries ADD COLUMN lsn INTEGER NOT NULL DEFAULT 0")?;
        }
        conn.execute_batch(
            "DROP INDEX IF EXISTS entries_seq;
             INSERT INTO meta(k, v) SELECT 'accounts_lsn', COALESCE(
               (SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'log_lsn'), 0) WHERE true
             ON CONFLICT(k) DO UPDATE SET v = excluded.v;
             DELETE FROM meta WHERE k = 'accounts_through';",
        )?;
        conn.execute(
            "UPDATE meta SET v = ?1 WHERE k = 'schema'",
            [SCHEMA_VERSION],
        )?;
        Ok::<(), StoreError>(())
    })();
    match r {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

impl Journal {
    /// Start the journal for the database at `db_path`: the charge-log writer (segments in
    /// [`chargelog::dir_for`], starting at sequence number `next_lsn`), the projector that
    /// applies the log to SQLite on `conn`, and a checkpointer on `checkpoint_conn` so that
    /// copying the WAL into the database file (and its fsync) never stalls a commit. The three
    /// threads hold `lock` until each has stopped, so the database is not opened again before
    /// the last of them is done with it.
    pub fn start(
        db_path: &Path,
        next_lsn: u64,
        conn: Connection,
        checkpoint_conn: Connection,
        strict: bool,
        lock: Arc<DbLock>,
    ) -> Result<Journal, StoreError> {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let log = chargelog::LogWriter::create(&chargelog::dir_for(db_path), next_lsn)?;
        let stats = log.stats();
        // `replay_log` applied everything the log held.
        stats.set_logged(next_lsn.saturating_sub(1));
        stats.set_applied(next_lsn.saturating_sub(1));
        let alive = std::sync::Arc::new(());
        let weak = std::sync::Arc::downgrade(&alive);
        thread::Builder::new()
            .name("tollgate-checkpoint".into())
            .spawn({
                let lock = Arc::clone(&lock);
                move || {
                    checkpoint_loop(checkpoint_conn, weak);
                    drop(lock);
                }
            })
            .map_err(|e| StoreError::Sql(format!("cannot start checkpoint thread: {e}")))?;
        let (ptx, prx) = mpsc::channel::<Vec<Projected>>();
        let projector = thread::Builder::new()
            .name("tollgate-projector".into())
            .spawn({
                let lock = Arc::clone(&lock);
                let stats = Arc::clone(&stats);
                move || {
                    projector_loop(conn, prx, stats);
                    drop(lock);
                }
            })
            .map_err(|e| StoreError::Sql(format!("cannot start projector thread: {e}")))?
            .thread()
            .clone();
        let (tx, rx) = mpsc::channel::<Msg>();
        thread::Builder::new()
            .name("tollgate-journal".into())
            .spawn(move || {
                log_loop(log, rx, ptx, projector, strict);
                drop(lock);
            })
            .map_err(|e| StoreError::Sql(format!("cannot start writer thread: {e}")))?;
        Ok(Journal {
            tx,
            stats,
            _alive: alive,
        })
    }

    /// Records in the charge log that the database does not have yet.
    pub fn backlog(&self) -> u64 {
        self.stats.backlog()
    }

    /// The charge log writer's counters now: records, group commits, sync latency.
    pub fn stats(&self) -> crate::logstats::LogStatsSnapshot {
        self.stats.snapshot()
    }

    /// Queue `op` and wait until it is durable.
    pub async fn write(&self, op: Op) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.submit(Job::new(Work::Op(op), Some(done), completions::current()))?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Wait until everything queued before this call is durable and applied to the database
    /// (read-after-write for queries, and at shutdown, so background records such as uncharged
    /// usage and streamed byte counts are not lost).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(Op::Admin(Box::new(|_| Ok(())))).await
    }

    /// Queue `op` without waiting (relaxed durability, background records).
    pub fn write_nowait(&self, op: Op) -> Result<(), StoreError> {
        self.submit(Job::new(Work::Op(op), None, None))
    }

    /// Hand `job` to the writer: through this thread's outbox when it runs a
    /// [`completions::pump`] (sent with the other jobs of the round), else directly.
    fn submit(&self, job: Job) -> Result<(), StoreError> {
        let id = std::sync::Arc::as_ptr(&self._alive) as usize;
        match completions::submit(id, &self.tx, job) {
            Ok(()) => Ok(()),
            Err(job) => self
                .tx
                .send(Msg::One(job))
                .map_err(|_| StoreError::WriterGone),
        }
    }

    /// Run `f` inside a database transaction, durably, after everything queued before it
    /// has been applied, and return its output.
    pub async fn admin<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let slot = std::sync::Arc::new(parking_lot::Mutex::new(None));
        let out = std::sync::Arc::clone(&slot);
        self.write(Op::Admin(Box::new(move |tx| {
            let v = f(tx)?;
            *out.lock() = Some(v);
            Ok(())
        })))
        .await?;
        let v = slot.lock().take();
        v.ok_or(StoreError::WriterGone)
    }
}

const MAX_BATCH: usize = 4096;

/// WAL size that triggers a checkpoint.
const CHECKPOINT_AT_BYTES: u64 = 64 << 20;
/// A non-empty WAL is checkpointed at least this often.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How often the checkpointer looks at the WAL (to write it back, see [`WalSync`]).
const WAL_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// The WAL is written back once it has grown by this much since its last sync...
const WAL_SYNC_BYTES: u64 = 8 << 20;
/// ...or, when it changed at all, after this long.
const WAL_SYNC_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Copy the WAL into the database file when it has grown past [`CHECKPOINT_AT_BYTES`] or
/// [`CHECKPOINT_EVERY`] has passed, without blocking the writer (PASSIVE); once fully copied,
/// restart it from the beginning (TRUNCATE) so it does not grow without bound. A checkpoint
/// writes and fsyncs the database file, which slows the writer's own fsyncs while it runs, so
/// it runs seldom and in large steps rather than often. In between, the WAL is written back
/// in steps of at most about [`WAL_SYNC_BYTES`] (see [`WalSync`]). Stops with the journal.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>) {
    let wal = conn
        .path()
        .map(|p| std::path::PathBuf::from(format!("{p}-wal")));
    let mut last = std::time::Instant::now();
    let mut wal_sync = WalSync::default();
    loop {
        thread::sleep(WAL_LOOK_EVERY);
        if alive.upgrade().is_none() {
            return;
        }
        let meta = wal.as_ref().and_then(|w| std::fs::metadata(w).ok());
        if let (Some(w), Some(m)) = (&wal, &meta) {
            wal_sync.sync_if_changed(w, m);
        }
        let size = meta.map_or(0, |m| m.len());
        if size == 0 || (size < CHECKPOINT_AT_BYTES && last.elapsed() < CHECKPOINT_EVERY) {
            continue;
        }
        last = std::time::Instant::now();
        let r: Result<(i64, i64, i64), _> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match r {
            Ok((_, log_pages, done)) if log_pages == done => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

/// The WAL's write-back, a little at a time. The projector commits without syncing
/// (`synchronous = NORMAL`), so what it adds to the WAL otherwise reaches the disk in bulk: at
/// a checkpoint (which syncs the WAL first: up to [`CHECKPOINT_AT_BYTES`]) or when the
/// kernel's flusher gets to it. Tens of MiB handed to the disk at once queue ahead of the
/// charge log's own fdatasync, and every strict response waits for that. Synced once it has
/// grown by [`WAL_SYNC_BYTES`] (or after [`WAL_SYNC_AFTER`] when it changed less), each
/// write-back is a few MiB. The sync only makes durable earlier what SQLite syncs anyway; it
/// does not change what a commit means. Measured at governed saturation on a 2-core VM
/// (`wrk -c64`, 12 s, two runs each way): charge log syncs over 25 ms 5-9 -> 0, response p99
/// 22.0-34.4 -> 9.7-11.6 ms, p99.9 44.3-57.4 -> 17.7-18.3 ms; req/s and CPU per request the
/// same (bench/ab, 4 rounds: 34,700 vs 34,726 req/s). Syncing every 100 ms instead cost 4%
/// of req/s.
#[derive(Default)]
struct WalSync {
    file: Option<std::fs::File>,
    synced: Option<Synced>,
}

/// The WAL as of its last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Synced {
    /// Its length then, or since, the shortest it has been (after a truncation it grows
    /// again from there).
    len: u64,
    modified: std::time::SystemTime,
    at: std::time::Instant,
}

impl WalSync {
    fn sync_if_changed(&mut self, path: &Path, meta: &std::fs::Metadata) {
        let Ok(modified) = meta.modified() else {
            return;
        };
        let len = meta.len();
        if let Some(last) = &mut self.synced {
            last.len = last.len.min(len);
            let unchanged = last.len == len && last.modified == modified;
            // A WAL that restarted overwrites its frames in place: its length then says
            // nothing, the time since the last sync does.
            let small =
                len < last.len.saturating_add(WAL_SYNC_BYTES) && last.at.elapsed() < WAL_SYNC_AFTER;
            if unchanged || small {
                return;
            }
        }
        if self.file.is_none() {
            // Read-only is enough to sync; the WAL keeps its inode when SQLite truncates it.
            self.file = std::fs::File::open(path).ok();
        }
        let Some(file) = &self.file else {
            return;
        };
        match file.sync_data() {
            Ok(()) => {
                self.synced = Some(Synced {
                    len,
                    modified,
                    at: std::time::Instant::now(),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, wal = %path.display(), "WAL write-back failed; reopening it next time");
                self.file = None;
            }
        }
    }
}

/// Account totals are derived state: an entry written from the charge log carries its
/// record's log sequence number (`entries.lsn`), and the projector folds the totals of what
/// it applied into `accounts` every 30 s and when it stops (one write per account instead of
/// one per batch, which would touch a random page per consumer on every commit and stall the
/// requests waiting on it), recording in `meta.accounts_lsn` the last record folded in. A
/// segment of the log is removed only once its records are folded in durably, so after a
/// crash [`replay_log`] finds every record whose totals `accounts` lacks, and folds it.
struct WriterState {
    deltas: Deltas,
    last_flush: std::time::Instant,
    /// The highest log sequence number applied to the database (published in `stats` with
    /// each commit, before anyone waiting on it is answered).
    applied_lsn: u64,
    /// The highest log sequence number whose totals are durably in `accounts`.
    folded_lsn: u64,
    stats: Arc<crate::logstats::LogStats>,
}

const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
const FLUSH_MAX_ACCOUNTS: usize = 50_000;

/// A `meta` value that holds a log sequence number (0 when absent).
fn meta_lsn(conn: &Connection, key: &str) -> Result<u64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT CAST(v AS INTEGER) FROM meta WHERE k = ?1",
            [key],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0)
        .max(0) as u64)
}

/// The last log record whose totals are folded into `accounts` (`meta.accounts_lsn`).
pub(crate) fn accounts_lsn(conn: &Connection) -> Result<u64, StoreError> {
    meta_lsn(conn, "accounts_lsn")
}

/// Set `meta.<key>` to `lsn`.
fn set_meta_lsn(tx: &Transaction<'_>, key: &str, lsn: u64) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO meta(k, v) VALUES(?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        params![key, lsn.to_string()],
    )?;
    Ok(())
}

/// Add `(credits, debits)` to each account, creating it when new.
pub(crate) fn upsert_accounts<'a>(
    tx: &Transaction<'_>,
    deltas: impl Iterator<Item = (&'a AcctKey, &'a (i64, i64))>,
) -> Result<(), StoreError> {
    let mut up = tx.prepare_cached(
        "INSERT INTO accounts(kind, owner, period, credits, debits) VALUES(?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(kind, owner, period) DO UPDATE SET credits = credits + excluded.credits,
         debits = debits + excluded.debits",
    )?;
    for (k, (c, d)) in deltas {
        up.execute(params![k.kind as u8, k.owner, k.period, c, d])?;
    }
    Ok(())
}

/// What the log writer hands to the projector, in log order.
enum Projected {
    /// A record that is in the log (already acknowledged to its caller): the frame at `range`
    /// of the writer's batch buffer, decoded here (so what decoding allocates is freed on this
    /// thread).
    Frame(u64, Arc<[u8]>, std::ops::Range<usize>),
    /// A change that is made durable by the database commit itself; `done` is answered then.
    Direct(Op, Option<Done>),
    /// A full segment: remove it once everything up to `last_lsn` is in the database.
    Retired(std::path::PathBuf, u64),
}

/// The log writer: takes whatever has queued, appends the charges among it to the log with
/// one `fdatasync` for the lot, answers their callers, and passes everything on to the
/// projector in order, as one message per batch. The projector sleeps between its
/// transactions; the writer wakes it early only for a change whose caller waits on the
/// database commit.
fn log_loop(
    mut log: chargelog::LogWriter,
    rx: mpsc::Receiver<Msg>,
    ptx: mpsc::Sender<Vec<Projected>>,
    projector: thread::Thread,
    strict: bool,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    // Frames encoded by callers, as received (a job's `Work::Frame::buf` indexes this).
    let mut received: Vec<Vec<u8>> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    // Per job: its log sequence number (0: not logged) and its frame's place in `buf`.
    let mut placed: Vec<(u64, std::ops::Range<usize>)> = Vec::with_capacity(MAX_BATCH);
    let mut inboxes: Vec<Arc<Inbox>> = Vec::new();
    let stats = log.stats();
    // Relaxed durability syncs the log at most this often; strict syncs every batch.
    let relaxed_sync = std::time::Duration::from_millis(100);
    let mut last_sync = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        let take = |batch: &mut Vec<Job>, received: &mut Vec<Vec<u8>>, m: Msg| match m {
            Msg::One(j) => batch.push(j),
            Msg::Many { jobs, frames } => {
                let at = received.len();
                received.push(frames);
                batch.extend(jobs.into_iter().map(|mut j| {
                    if let Work::Frame { buf, .. } = &mut j.work {
                        *buf = at;
                    }
                    j
                }));
            }
        };
        take(&mut batch, &mut received, first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => take(&mut batch, &mut received, m),
                Err(_) => break,
            }
        }
        buf.clear();
        placed.clear();
        let first_lsn = log.next_lsn;
        for job in &batch {
            let start = buf.len();
            let logged = match &job.work {
                Work::Op(op) => encode_logged(&mut buf, log.next_lsn, op),
                Work::Frame { buf: b, range } => {
                    match received.get(*b).and_then(|f| f.get(range.clone())) {
                        Some(frame) => {
                            buf.extend_from_slice(frame);
                            chargelog::seal(&mut buf[start..], log.next_lsn);
                            true
                        }
                        None => {
                            tracing::error!("a caller's log record is out of its buffer");
                            false
                        }
                    }
                }
            };
            if logged {
                log.next_lsn += 1;
                placed.push((log.next_lsn - 1, start..buf.len()));
            } else {
                placed.push((0, start..start));
            }
        }
        received.clear();
        let written = if buf.is_empty() {
            Ok(())
        } else {
            let sync = strict || last_sync.elapsed() >= relaxed_sync;
            if sync {
                last_sync = std::time::Instant::now();
            }
            log.append(&buf, sync).map_err(|e| {
                tracing::error!(error = %e, "charge log write failed");
                e
            })
        };
        if written.is_err() {
            // Nothing of this batch is durable: its numbers are handed out again.
            log.next_lsn = first_lsn;
        } else if log.next_lsn > first_lsn {
            stats.record_commit(log.next_lsn - first_lsn);
            stats.set_logged(log.next_lsn - 1);
        }
        // Every logged record goes on to the projector as its frame in a copy of this batch's
        // frames, exactly their size (`buf` is reused): the copy lives until the projector has
        // applied the batch (about a second, more when it lags), and with the 64 KiB
        // of capacity a batch's buffer used to keep, 2,000+ batches a second of ~4 KB held
        // 64 KiB apiece. Measured: VmRSS after 3 s of governed load with 1,000,000 keys
        // 374-396 MiB then (6 runs), 359-365 MiB (4 runs) with exact-size buffers; CPU per
        // request the same (bench/ab).
        let frames: Arc<[u8]> = Arc::from(&buf[..]);
        let mut out: Vec<Projected> = Vec::with_capacity(batch.len() + 1);
        let mut wake = false;
        let written_at = std::time::Instant::now();
        for (job, (lsn, range)) in batch.drain(..).zip(placed.drain(..)) {
            let msg = if lsn == 0 {
                match job.work {
                    Work::Op(op) => {
                        wake |= job.done.is_some();
                        Projected::Direct(op, job.done)
                    }
                    // A frame that could not be placed: its caller learns it was not logged.
                    Work::Frame { .. } => {
                        if let Some(d) = job.done {
                            answer(d, job.origin, Err(StoreError::WriterGone), &mut inboxes);
                        }
                        continue;
                    }
                }
            } else {
                // Counted before the caller is answered, so a caller that reads the stats
                // after its write returned finds its own wait in them.
                if written.is_ok() {
                    stats.record_wait(written_at.saturating_duration_since(job.queued));
                }
                if let Some(d) = job.done {
                    answer(d, job.origin, written.clone(), &mut inboxes);
                }
                if written.is_err() {
                    continue;
                }
                Projected::Frame(lsn, Arc::clone(&frames), range)
            };
            out.push(msg);
        }
        // One wake-up per caller thread for the whole batch.
        for inbox in inboxes.drain(..) {
            inbox.wake();
        }
        match log.rotate_if_full() {
            Ok(Some((path, last))) => out.push(Projected::Retired(path, last)),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "charge log segment could not be rotated"),
        }
        if !out.is_empty() && ptx.send(out).is_err() {
            tracing::error!("journal projector stopped");
        }
        if wake {
            projector.unpark();
        }
    }
    // The projector sees the channel close at its next wake-up; make that now.
    drop(ptx);
    projector.unpark();
    if let Err(e) = log.append(&[], true) {
        tracing::error!(error = %e, "charge log could not be synced at stop");
    }
    tracing::debug!("charge log writer stopped");
}

/// Answer a logged write's caller: through its thread's inbox when it has one (remembered in
/// `inboxes`, each woken once after the batch), else directly.
fn answer(
    done: Done,
    origin: Option<Arc<Inbox>>,
    result: Result<(), StoreError>,
    inboxes: &mut Vec<Arc<Inbox>>,
) {
    match origin {
        Some(inbox) => {
            if inbox.queue(done, result) && !inboxes.iter().any(|i| Arc::ptr_eq(i, &inbox)) {
                inboxes.push(inbox);
            }
        }
        None => {
            let _ = done.send(result);
        }
    }
}

/// The projector yields its core after this many records of a transaction (about 30 us of
/// its work). Against 16 on a 2-core VM (`bench/ab`, 5 rounds each): p99 at 5000 req/s
/// 2.54 -> 1.93 ms (lower in 4 of 5 rounds), p99.9 53.0 -> 7.8 ms (one round of the 16 had
/// 228 ms); at saturation req/s 22,833 -> 23,847 and the projector's CPU per request
/// 7.27 -> 7.45 us (the yields).
const YIELD_EVERY: usize = 4;

/// Records applied per database transaction (about: whole writer batches are taken).
const PROJECT_MAX: usize = 32_768;
/// How long logged records may wait before they are applied (queries and admin changes do not
/// wait for it: they flush). Longer transactions write each B-tree page to the WAL fewer times:
/// 250 ms against 50 ms took the projector from 4.2-4.5 to 3.9-4.3 us of CPU per request at
/// governed saturation. The two indexes by consumer (`usage_consumer_time`,
/// `entries_balance_debit`) get a row at the end of each active consumer's range, so a
/// transaction dirties about one of their pages per consumer whatever its length. 1 s (with
/// [`apply_order`]) against 250 ms (without), `bench/ab` at governed saturation on a 2-core
/// Xeon VM: 3 rounds of 8 s, projector 6.55 -> 5.52 us of CPU per request, checkpointer 0.50 ->
/// 0.33, disk bytes written per request 2,658 -> 1,658, req/s 37,867 -> 39,258; 60 s, projector
/// 11.19 -> 8.19 us, disk bytes 8,263 -> 4,345, req/s 30,469 -> 35,278. 2 s against 1 s
/// (60 s, both with a 16 MiB cache): 2,150 -> 1,207 bytes and projector 8.58 -> 7.72 us per
/// request, but p99 at 5,000 req/s 1.75 -> 2.06 ms (longer projector bursts). A 16 MiB page
/// cache for the projector (SQLite's default is 2 MiB) halved its disk bytes again at the same
/// CPU but held 13-20 MiB more with 1,000,000 keys (VmRSS after load 385-392 MiB against
/// 372-373 without; 362-369 at 250 ms).
const PROJECT_EVERY: std::time::Duration = std::time::Duration::from_millis(1000);

/// The projector: applies the log to SQLite in large transactions (one every
/// [`PROJECT_EVERY`], or at once when a caller waits on a direct change), records in
/// `meta.log_lsn` how far it got, and removes segments that are fully applied. Between
/// transactions it sleeps (parked) rather than waking for every batch the writer sends.
fn projector_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Vec<Projected>>,
    stats: Arc<crate::logstats::LogStats>,
) {
    // The store opened with everything in the database folded in (`replay_log`).
    let folded = accounts_lsn(&conn).unwrap_or(0);
    let mut ws = WriterState {
        deltas: Deltas::default(),
        last_flush: std::time::Instant::now(),
        applied_lsn: meta_lsn(&conn, "log_lsn").unwrap_or(0).max(folded),
        folded_lsn: folded,
        stats,
    };
    let mut pending: Vec<Projected> = Vec::new();
    let mut retired: Vec<(std::path::PathBuf, u64)> = Vec::new();
    let mut open = true;
    let waits = |ms: &[Projected]| {
        ms.iter()
            .any(|m| matches!(m, Projected::Direct(_, Some(_))))
    };
    while open {
        let mut waiting = waits(&pending);
        if pending.is_empty() {
            match rx.recv() {
                Ok(v) => {
                    waiting = waits(&v);
                    pending.extend(v);
                }
                // Stopped while idle: one last (empty) commit still folds the totals in, and
                // the segments they were waiting for go.
                Err(_) => open = false,
            }
        }
        let deadline = std::time::Instant::now() + PROJECT_EVERY;
        loop {
            // Take what has queued, without waiting for more.
            loop {
                match rx.try_recv() {
                    Ok(v) => {
                        waiting |= waits(&v);
                        pending.extend(v);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if !open || waiting || pending.len() >= PROJECT_MAX {
                break;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            // The writer unparks this thread for a waiting caller and at stop.
            thread::park_timeout(deadline - now);
        }
        let mut batch = std::mem::take(&mut pending);
        for m in &mut batch {
            if let Projected::Retired(p, l) = m {
                retired.push((std::mem::take(p), *l));
            }
        }
        batch.retain(|m| !matches!(m, Projected::Retired(..)));
        // The projection is rebuilt from the log after a crash, so its commits need not reach
        // the disk, with three exceptions: admin changes (the database is their only record),
        // a commit that folds totals into `accounts` (after which segments are removed), and
        // the last commit before shutdown.
        let flush =
            !open || ws.last_flush.elapsed() >= FLUSH_EVERY || ws.deltas.len() > FLUSH_MAX_ACCOUNTS;
        let durable = flush || batch.iter().any(|m| matches!(m, Projected::Direct(..)));
        match project_batch(&mut conn, &mut batch, &mut ws, flush, durable) {
            Ok(()) => {
                retired.retain(|(p, last)| {
                    if *last <= ws.folded_lsn {
                        chargelog::remove_segment(p);
                        false
                    } else {
                        true
                    }
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "applying the charge log to the database failed; retrying (the log keeps the records)");
                // Logged records stay for the next attempt; direct changes were answered.
                pending = batch
                    .into_iter()
                    .filter(|m| matches!(m, Projected::Frame(..)))
                    .collect();
                if open {
                    thread::sleep(std::time::Duration::from_millis(500));
                } else {
                    break;
                }
            }
        }
    }
    tracing::debug!("journal projector stopped");
}

/// Apply `batch` in one transaction, with `flush` folding the totals gathered so far into
/// `accounts`; answer the direct changes' callers once it is committed. `ws` then says how far
/// the database and `accounts` got.
fn project_batch(
    conn: &mut Connection,
    batch: &mut [Projected],
    ws: &mut WriterState,
    flush: bool,
    durable: bool,
) -> Result<(), StoreError> {
    // `synchronous` applies to the commits that follow; FULL syncs the WAL, and with it every
    // earlier commit of this connection.
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
    // First try: every logged record applied without a savepoint each. Should the database
    // refuse one (it does not in practice), the transaction is rolled back and the batch applied
    // again record by record, so the refused one can be set aside.
    let fast = !batch.iter().any(|m| matches!(m, Projected::Direct(..)));
    if fast {
        match apply_batch(conn, batch, ws, flush, durable, false) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "a charge log batch was refused as a whole; applying it record by record");
            }
        }
    }
    let (outcome, results) = match apply_batch(conn, batch, ws, flush, durable, true) {
        Ok(results) => (Ok(()), results),
        Err(e) => (Err(e), Vec::new()),
    };
    for (i, m) in batch.iter_mut().enumerate() {
        if let Projected::Direct(_, done) = m {
            if let Some(d) = done.take() {
                let r = match &outcome {
                    Ok(_) => results.get(i).cloned().unwrap_or(Ok(())),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = &r {
                    tracing::error!(error = %e, "journal write failed");
                }
                let _ = d.send(r);
            }
        }
    }
    outcome
}

/// One transaction over `batch`. With `careful`, each record gets a savepoint: a logged record
/// the database refuses goes to `log_rejects` and a failing admin change is undone alone;
/// without it, any refusal fails the whole transaction (nothing committed, `ws` untouched).
/// Returns each item's own result.
fn apply_batch(
    conn: &mut Connection,
    batch: &mut [Projected],
    ws: &mut WriterState,
    flush: bool,
    durable: bool,
    careful: bool,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut results: Vec<Result<(), StoreError>> = vec![Ok(()); batch.len()];
    let tx = conn.transaction()?;
    let mut deltas = Deltas::default();
    let mut max_lsn = 0u64;
    let mut st = Statements::prepare(&tx)?;
    for (n, i) in apply_order(batch).into_iter().enumerate() {
        let Some(m) = batch.get_mut(i) else {
            continue;
        };
        if n % YIELD_EVERY == YIELD_EVERY - 1 {
            // A transaction of a few hundred records takes milliseconds of CPU; letting a
            // request thread that waits for this core run in between keeps that out of
            // request latency (the commit is not on any request's path).
            thread::yield_now();
        }
        let r = match m {
            Projected::Frame(lsn, buf, range) => {
                max_lsn = max_lsn.max(*lsn);
                let frame = buf.get(range.clone()).unwrap_or_default();
                match decode_frame(frame) {
                    Ok(op) if !careful => {
                        apply_logged(&tx, &mut st, *lsn, &op, &mut deltas)?;
                    }
                    Ok(op) => {
                        apply_or_set_aside(&tx, &mut st, *lsn, &op, &mut deltas)?;
                    }
                    Err(e) if !careful => return Err(e),
                    Err(e) => keep_rejected(&tx, *lsn, frame, &e, "does not decode")?,
                }
                Ok(())
            }
            Projected::Direct(op, _) => {
                let op = std::mem::replace(op, Op::Admin(Box::new(|_| Ok(()))));
                match op {
                    Op::Admin(f) => {
                        // A failing admin change must not undo the requests committed with it.
                        tx.execute_batch("SAVEPOINT admin_op")?;
                        match f(&tx) {
                            Ok(()) => tx
                                .execute_batch("RELEASE admin_op")
                                .map_err(StoreError::from),
                            Err(e) => {
                                tx.execute_batch("ROLLBACK TO admin_op; RELEASE admin_op")?;
                                Err(e)
                            }
                        }
                    }
                    // Only admin changes travel as direct; logged ops never do.
                    _ => Ok(()),
                }
            }
            Projected::Retired(..) => Ok(()),
        };
        if let Some(slot) = results.get_mut(i) {
            *slot = r;
        }
    }
    drop(st);
    let applied = ws.applied_lsn.max(max_lsn);
    if max_lsn > 0 {
        tx.execute(
            "INSERT INTO meta(k, v) VALUES('log_lsn', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v
             WHERE CAST(v AS INTEGER) < CAST(excluded.v AS INTEGER)",
            [max_lsn.to_string()],
        )?;
    }
    if flush {
        upsert_accounts(&tx, ws.deltas.iter().chain(deltas.iter()))?;
        set_meta_lsn(&tx, "accounts_lsn", applied)?;
    }
    // A commit that writes nothing syncs nothing: when it must be durable, this row makes sure
    // the WAL, with every earlier commit in it, reaches the disk.
    if durable {
        tx.execute(
            "INSERT INTO meta(k, v) VALUES('synced_ms', ?1) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            [SystemClock.now_ms().to_string()],
        )?;
    }
    tx.commit()?;
    ws.applied_lsn = applied;
    ws.stats.set_applied(applied);
    if flush {
        ws.deltas.clear();
        ws.last_flush = std::time::Instant::now();
        ws.folded_lsn = applied;
    } else {
        add_deltas(&mut ws.deltas, deltas);
    }
    Ok(results)
}

/// The order in which `apply_batch` applies `batch`: each run of consecutive charge records
/// sorted by consumer (stably: one consumer's records keep their log order), everything else
/// (admin changes, follow-up entries) where it is, between the runs. The indexes by consumer
/// (`usage_consumer_time`, `entries_balance_debit`) then take a transaction's inserts in key
/// order, one pass over their pages, instead of at random places: once an index outgrows the
/// page cache, a random insert reads its page (and may push out a dirty one) for nearly every
/// record.
fn apply_order(batch: &[Projected]) -> Vec<usize> {
    let consumer: Vec<Option<i64>> = batch
        .iter()
        .map(|m| match m {
            Projected::Frame(_, buf, range) => buf
                .get(range.clone())
                .and_then(|f| f.get(8..))
                .and_then(chargelog::charge_consumer),
            _ => None,
        })
        .collect();
    let mut order: Vec<usize> = (0..batch.len()).collect();
    let mut start = 0;
    while start < order.len() {
        let end = consumer[start..]
            .iter()
            .position(Option::is_none)
            .map_or(order.len(), |p| start + p);
        if let Some(run) = order.get_mut(start..end) {
            run.sort_by_key(|&i| consumer[i]);
        }
        start = end + 1;
    }
    order
}

fn apply_logged(
    tx: &Transaction<'_>,
    st: &mut Statements<'_>,
    lsn: u64,
    op: &Op,
    deltas: &mut Deltas,
) -> Result<(), StoreError> {
    match op {
        Op::Charge {
            usage,
            entries,
            idem,
        } => apply_charge(tx, st, lsn, usage, entries, idem.as_deref(), deltas),
        Op::Entries {
            charge_id,
            occurred_ms,
            entries,
        } => insert_entries(st, lsn, entries, charge_id, *occurred_ms, deltas),
        Op::Admin(_) => Ok(()),
    }
}

/// Apply a logged record in a savepoint; a record the database refuses is kept aside in
/// `log_rejects` rather than retried forever.
fn apply_or_set_aside(
    tx: &Transaction<'_>,
    st: &mut Statements<'_>,
    lsn: u64,
    op: &Op,
    deltas: &mut Deltas,
) -> Result<(), StoreError> {
    tx.execute_batch("SAVEPOINT logged")?;
    // What the record adds to the totals counts only once it is applied.
    let mut own = Deltas::default();
    match apply_logged(tx, st, lsn, op, &mut own) {
        Ok(()) => {
            tx.execute_batch("RELEASE logged")?;
            add_deltas(deltas, own);
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO logged; RELEASE logged")?;
            reject(tx, lsn, op, &e)?;
        }
    }
    Ok(())
}

/// Add `more` to `into`.
fn add_deltas(into: &mut Deltas, more: Deltas) {
    for (k, (c, d)) in more {
        let e = into.entry(k).or_default();
        e.0 += c;
        e.1 += d;
    }
}

/// The change a framed log record (`[len][crc][payload]`) holds.
fn decode_frame(frame: &[u8]) -> Result<Op, StoreError> {
    let payload = frame
        .get(8..)
        .ok_or_else(|| StoreError::Sql("charge log frame too short".into()))?;
    chargelog::decode_payload(payload)
        .map(|(_, rec)| Op::from(rec))
        .map_err(|e| StoreError::Sql(e.to_string()))
}

/// Keep a log record (its frame) that could not be applied in `log_rejects`, so it is never
/// lost silently; `why` says what went wrong with it.
fn keep_rejected(
    tx: &Transaction<'_>,
    lsn: u64,
    frame: &[u8],
    e: &StoreError,
    why: &str,
) -> Result<(), StoreError> {
    tracing::error!(lsn, error = %e, why, "charge log record kept in log_rejects");
    tx.execute(
        "INSERT INTO log_rejects(lsn, error, record) VALUES(?1, ?2, ?3) ON CONFLICT(lsn) DO NOTHING",
        params![lsn as i64, e.to_string(), frame],
    )?;
    Ok(())
}

impl From<chargelog::Record> for Op {
    fn from(rec: chargelog::Record) -> Op {
        match rec {
            chargelog::Record::Charge {
                usage,
                entries,
                idem,
            } => Op::Charge {
                usage,
                entries,
                idem,
            },
            chargelog::Record::Entries {
                charge_id,
                occurred_ms,
                entries,
            } => Op::Entries {
                charge_id,
                occurred_ms,
                entries,
            },
        }
    }
}

/// Append `op`'s log record to `out`; `false` for changes that are not logged (admin).
fn encode_logged(out: &mut Vec<u8>, lsn: u64, op: &Op) -> bool {
    match op {
        Op::Charge {
            usage,
            entries,
            idem,
        } => chargelog::encode_charge(out, lsn, usage, entries, idem.as_deref()),
        Op::Entries {
            charge_id,
            occurred_ms,
            entries,
        } => chargelog::encode_entries(out, lsn, charge_id, *occurred_ms, entries),
        Op::Admin(_) => return false,
    }
    true
}

/// Keep a logged record the database refused.
fn reject(tx: &Transaction<'_>, lsn: u64, op: &Op, e: &StoreError) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    encode_logged(&mut buf, lsn, op);
    keep_rejected(tx, lsn, &buf, e, "refused by the database")
}

/// What [`replay_log`] did on open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The next log sequence number to hand out.
    pub next_lsn: u64,
    /// Records of the log the database did not have, now applied (each once).
    pub applied: usize,
    /// Records the database had whose totals `accounts` did not, now folded in.
    pub folded: usize,
}

/// Bring the database up to the charge log (after a crash, or a stop before the projector
/// caught up): apply the records it does not have yet (after `meta.log_lsn`) and fold into
/// `accounts` the totals of every record it lacks there (after `meta.accounts_lsn`), in one
/// durable transaction; then remove the segments.
pub fn replay_log(conn: &mut Connection, db_path: &Path) -> Result<Replayed, StoreError> {
    let dir = chargelog::dir_for(db_path);
    let mut out = Replayed::default();
    // The segments are removed once this commit is on disk, whatever the durability setting;
    // the connection gets its own setting back afterwards.
    let setting: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Read where the database stands and write what follows from it in one write
    // transaction, taken at once: no other commit can come in between.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied = meta_lsn(&tx, "log_lsn")?;
    let folded = accounts_lsn(&tx)?;
    let mut deltas = Deltas::default();
    let mut st = Statements::prepare(&tx)?;
    let max_lsn = chargelog::for_each_after(&dir, folded.min(applied), |lsn, rec| {
        let op = Op::from(rec);
        if lsn > applied {
            out.applied += 1;
            apply_or_set_aside(&tx, &mut st, lsn, &op, &mut deltas)
        } else {
            out.folded += 1;
            fold_applied(&tx, lsn, &op, &mut deltas)
        }
    })?;
    drop(st);
    let last = max_lsn.max(applied).max(folded);
    if out.applied + out.folded > 0 {
        upsert_accounts(&tx, deltas.iter())?;
        set_meta_lsn(&tx, "log_lsn", last)?;
        set_meta_lsn(&tx, "accounts_lsn", last)?;
        tx.commit()?;
    } else {
        drop(tx);
    }
    conn.pragma_update(None, "synchronous", setting)?;
    for p in chargelog::segments(&dir)? {
        chargelog::remove_segment(&p);
    }
    out.next_lsn = last + 1;
    Ok(out)
}

/// Add to `deltas` the entries of a record the database already has (`lsn` at or before
/// `meta.log_lsn`) that this record wrote: an entry whose row carries another record's number
/// was written before it (the same deterministic id), and this record changed nothing; a
/// refused record wrote no row.
fn fold_applied(
    tx: &Transaction<'_>,
    lsn: u64,
    op: &Op,
    deltas: &mut Deltas,
) -> Result<(), StoreError> {
    let (charge_id, entries) = match op {
        Op::Charge { usage, entries, .. } => (&usage.charge_id, entries),
        Op::Entries {
            charge_id, entries, ..
        } => (charge_id, entries),
        Op::Admin(_) => return Ok(()),
    };
    let mut written_by =
        tx.prepare_cached("SELECT lsn FROM entries WHERE charge_id = ?1 AND leg = ?2")?;
    for e in entries {
        let by: Option<i64> = written_by
            .query_row(params![charge_id, e.leg], |r| r.get(0))
            .optional()?;
        if by == Some(lsn as i64) {
            add_entry(deltas, e);
        }
    }
    Ok(())
}

/// Add an entry's two sides to `deltas`.
fn add_entry(deltas: &mut Deltas, e: &Entry) {
    deltas.entry(e.debit).or_default().1 += e.amount;
    deltas.entry(e.credit).or_default().0 += e.amount;
}

/// The statements a logged record runs, prepared once per transaction rather than looked up
/// in the connection's statement cache for every record.
struct Statements<'t> {
    usage: rusqlite::CachedStatement<'t>,
    entries: rusqlite::CachedStatement<'t>,
}

impl<'t> Statements<'t> {
    fn prepare(tx: &'t Transaction<'_>) -> Result<Statements<'t>, StoreError> {
        Ok(Statements {
            usage: tx.prepare_cached(
                "INSERT INTO usage(charge_id, request_id, tenant_seq, consumer_seq, key_id, route, status,
                 requests, bytes, cost, charged, occurred_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)
                 ON CONFLICT(charge_id) DO NOTHING",
            )?,
            entries: tx.prepare_cached(
                "INSERT INTO entries(charge_id, leg, kind, debit_kind, debit_owner, debit_period, credit_kind,
                 credit_owner, credit_period, amount, created_ms, lsn)
                 VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12) ON CONFLICT(charge_id, leg) DO NOTHING",
            )?,
        })
    }
}

fn apply_charge(
    tx: &Transaction<'_>,
    st: &mut Statements<'_>,
    lsn: u64,
    u: &UsageRecord,
    entries: &[Entry],
    idem: Option<&IdemRecord>,
    deltas: &mut Deltas,
) -> Result<(), StoreError> {
    st.usage.execute(params![
        u.charge_id,
        u.request_id,
        u.tenant_seq,
        u.consumer_seq,
        u.key_id,
        u.route,
        u.status,
        u.requests,
        u.bytes,
        u.cost,
        u.charged,
        u.occurred_ms
    ])?;
    insert_entries(st, lsn, entries, &u.charge_id, u.occurred_ms, deltas)?;
    if let Some(i) = idem {
        let headers =
            serde_json::to_string(&i.headers).map_err(|e| StoreError::Sql(e.to_string()))?;
        let mut st = tx.prepare_cached(
            "INSERT INTO idempotency(consumer_seq, key, fingerprint, status, headers, body, created_ms)
             VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(consumer_seq, key) DO NOTHING",
        )?;
        st.execute(params![
            i.consumer_seq,
            i.key,
            &i.fingerprint[..],
            i.status,
            headers,
            i.body,
            i.created_ms
        ])?;
    }
    Ok(())
}

/// Insert a record's entries, each stamped with the record's log sequence number `lsn`.
fn insert_entries(
    st: &mut Statements<'_>,
    lsn: u64,
    entries: &[Entry],
    charge_id: &str,
    now_ms: i64,
    deltas: &mut Deltas,
) -> Result<(), StoreError> {
    for e in entries {
        let n = st.entries.execute(params![
            charge_id,
            e.leg,
            e.kind,
            e.debit.kind as u8,
            e.debit.owner,
            e.debit.period,
            e.credit.kind as u8,
            e.credit.owner,
            e.credit.period,
            e.amount,
            now_ms,
            lsn as i64
        ])?;
        // Only a first insert moves balances: replays are no-ops forever.
        if n == 1 {
            add_entry(deltas, e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_wal_is_written_back_when_it_grew_by_a_step_or_changed_a_while_ago() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db-wal");
        let grow_to = |len: u64| {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            f.set_len(len).unwrap();
            std::fs::metadata(&path).unwrap()
        };
        let synced_len = |w: &WalSync| w.synced.map(|s| s.len);
        let mut w = WalSync::default();
        // The first look syncs.
        w.sync_if_changed(&path, &grow_to(1 << 20));
        assert_eq!(synced_len(&w), Some(1 << 20));
        // Less than a step, and recently synced: not yet.
        w.sync_if_changed(&path, &grow_to((1 << 20) + WAL_SYNC_BYTES - 1));
        assert_eq!(synced_len(&w), Some(1 << 20));
        // A step past the last sync: synced.
        let step = (1 << 20) + WAL_SYNC_BYTES;
        w.sync_if_changed(&path, &grow_to(step));
        assert_eq!(synced_len(&w), Some(step));
        // Truncated by a checkpoint: growth counts from the new length, not the old one.
        w.sync_if_changed(&path, &grow_to(0));
        assert_eq!(synced_len(&w), Some(0));
        w.sync_if_changed(&path, &grow_to(WAL_SYNC_BYTES));
        assert_eq!(synced_len(&w), Some(WAL_SYNC_BYTES));
        // A small change is synced once WAL_SYNC_AFTER has passed since the last sync.
        if let Some(s) = w.synced.as_mut() {
            s.at -= WAL_SYNC_AFTER;
        }
        w.sync_if_changed(&path, &grow_to(WAL_SYNC_BYTES + 4096));
        assert_eq!(synced_len(&w), Some(WAL_SYNC_BYTES + 4096));
        // Nothing changed: nothing to sync, however long ago.
        if let Some(s) = w.synced.as_mut() {
            s.at -= WAL_SYNC_AFTER;
        }
        let before = w.synced;
        w.sync_if_changed(&path, &std::fs::metadata(&path).unwrap());
        assert_eq!(w.synced, before);
    }

    fn indexes(conn: &Connection, table: &str) -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND sql IS NOT NULL ORDER BY name")
            .unwrap();
        st.query_map([table], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn schema_version(conn: &Connection) -> String {
        conn.query_row("SELECT v FROM meta WHERE k = 'schema'", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_consumers_usage_is_read_through_its_own_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("t.db"), false).unwrap();
        let plan = query_plan(&conn, crate::USAGE_TOTALS_SQL, params![1, 0, 10]);
        assert!(
            plan.iter()
                .any(|d| d.contains("usage_consumer_time") && d.contains("consumer_seq=?")),
            "{plan:?}"
        );
    }

    fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params, |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_statement_page_reads_both_sides_of_the_balance_through_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_connection(&dir.path().join("t.db"), false).unwrap();
        let plan = query_plan(
            &conn,
            crate::STATEMENT_PAGE_SQL,
            params![1, i64::MAX, "", 0, 51],
        );
        for index in ["entries_balance_debit", "entries_balance_credit"] {
            assert!(
                plan.iter().any(|d| d.starts_with("SEARCH entries")
                    && d.contains(index)
                    && d.contains("owner=? AND (created_ms,charge_id,leg)<(?,?,?)")),
                "{index}: {plan:?}"
            );
        }
        assert!(
            !plan.iter().any(|d| d.starts_with("SCAN entries")),
            "{plan:?}"
        );
    }

    /// A database as version `version` (1 or 2) left it: entries numbered by `seq` (with its
    /// index), and for version 1 usage indexed by time alone.
    fn old_database(path: &Path, version: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "CREATE TABLE entries(
               charge_id TEXT NOT NULL, leg INTEGER NOT NULL, kind TEXT NOT NULL,
               debit_kind INTEGER NOT NULL, debit_owner INTEGER NOT NULL, debit_period INTEGER NOT NULL,
               credit_kind INTEGER NOT NULL, credit_owner INTEGER NOT NULL, credit_period INTEGER NOT NULL,
               amount INTEGER NOT NULL CHECK(amount > 0), created_ms INTEGER NOT NULL,
               seq INTEGER NOT NULL DEFAULT 0,
               PRIMARY KEY(charge_id, leg)) WITHOUT ROWID;
             CREATE INDEX entries_seq ON entries(seq);",
        )
        .unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute("INSERT INTO meta(k, v) VALUES('schema', ?1)", [version])
            .unwrap();
        if version == "1" {
            conn.execute_batch(
                "DROP INDEX usage_consumer_time;
                 CREATE INDEX usage_time ON usage(occurred_ms);",
            )
            .unwrap();
        }
        conn
    }

    fn meta(conn: &Connection, k: &str) -> Option<String> {
        conn.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
            .optional()
            .unwrap()
    }

    /// Per-account totals as `(kind, owner, period, credits, debits)` rows of `sql`.
    fn totals(conn: &Connection, sql: &str) -> Vec<(i64, i64, i64, i64, i64)> {
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// `accounts`, in key order.
    fn accounts(conn: &Connection) -> Vec<(i64, i64, i64, i64, i64)> {
        totals(
            conn,
            "SELECT kind, owner, period, credits, debits FROM accounts ORDER BY kind, owner, period",
        )
    }

    #[test]
    fn a_version_1_database_is_migrated_with_its_usage_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let conn = old_database(&path, "1");
            conn.execute(
                "INSERT INTO usage VALUES('c1', 'c1', 1, 7, NULL, 'api', 200, 1, 10, 100, 1, 5000)",
                [],
            )
            .unwrap();
            assert_eq!(indexes(&conn, "usage"), ["usage_time"]);
        }
        let conn = open_connection(&path, false).unwrap();
        assert_eq!(schema_version(&conn), SCHEMA_VERSION);
        assert_eq!(indexes(&conn, "usage"), ["usage_consumer_time"]);
        assert_eq!(
            indexes(&conn, "entries"),
            ["entries_balance_credit", "entries_balance_debit"]
        );
        let (n, cost): (i64, i64) = conn
            .query_row(crate::USAGE_TOTALS_SQL, params![7, 0, 10_000], |r| {
                Ok((r.get(0)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((n, cost), (1, 100));
        drop(conn);
        // Opening it again changes nothing.
        let conn = open_connection(&path, false).unwrap();
        assert_eq!(schema_version(&conn), "3");
        assert_eq!(indexes(&conn, "usage"), ["usage_consumer_time"]);
    }

    /// Version 2 kept account totals a fold behind the entries, by entry sequence number; the
    /// migration folds in what was not, once, and from then on counts by log position.
    #[test]
    fn a_version_2_database_is_migrated_with_its_unfolded_entries_folded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let conn = old_database(&path, "2");
            conn.execute_batch(
                "-- A top-up (an admin entry: seq 0, posted to accounts directly), a charge
                 -- folded in (seq 1 <= accounts_through) and two that are not (seq 2 and 3).
                 INSERT INTO entries VALUES('op:topup:a', 0, 'topup', 102, 0, 0, 1, 7, 0, 1000, 1, 0);
                 INSERT INTO entries VALUES('r1', 0, 'charge', 1, 7, 0, 100, 1, 0, 10, 2, 1);
                 INSERT INTO entries VALUES('r2', 0, 'charge', 1, 7, 0, 100, 1, 0, 20, 3, 2);
                 INSERT INTO entries VALUES('r2', 1, 'quota', 2, 7, 500, 101, 0, 0, 1, 3, 3);
                 INSERT INTO accounts VALUES(102, 0, 0, 0, 1000);
                 INSERT INTO accounts VALUES(1, 7, 0, 1000, 10);
                 INSERT INTO accounts VALUES(100, 1, 0, 10, 0);
                 INSERT INTO meta VALUES('accounts_through', '1');
                 INSERT INTO meta VALUES('log_lsn', '41');",
            )
            .unwrap();
        }
        let want = vec![
            (1, 7, 0, 1000, 30),
            (2, 7, 500, 0, 1),
            (100, 1, 0, 30, 0),
            (101, 0, 0, 1, 0),
            (102, 0, 0, 0, 1000),
        ];
        for round in 0..2 {
            let conn = open_connection(&path, false).unwrap();
            assert_eq!(schema_version(&conn), SCHEMA_VERSION, "round {round}");
            assert_eq!(accounts(&conn), want, "round {round}");
            assert_eq!(meta(&conn, "accounts_lsn").as_deref(), Some("41"));
            assert_eq!(meta(&conn, "accounts_through"), None);
            assert_eq!(
                indexes(&conn, "entries"),
                ["entries_balance_credit", "entries_balance_debit"],
                "entries_seq is gone"
            );
            assert!(table_columns(&conn, "entries")
                .unwrap()
                .contains(&"lsn".to_string()));
            // The entries of the database are all folded in: none counts as pending.
            let pending: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM entries WHERE lsn > CAST((SELECT v FROM meta WHERE k = 'accounts_lsn') AS INTEGER)",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(pending, 0);
        }
    }

    use crate::ledger::AcctKind;

    fn acct(kind: AcctKind, owner: i64, period: i64) -> AcctKey {
        AcctKey {
            kind,
            owner,
            period,
        }
    }

    /// A charge of `amount` to consumer 7's balance (leg 0), and one request of its quota in
    /// period 500 (leg 1) of `quota` units (0 is refused by the `entries` table).
    fn charge_record(id: &str, amount: i64, quota: i64) -> (UsageRecord, Vec<Entry>) {
        let u = UsageRecord {
            charge_id: id.into(),
            request_id: id.into(),
            tenant_seq: 1,
            consumer_seq: 7,
            key_id: None,
            route: "api".into(),
            status: 200,
            requests: 1,
            bytes: 0,
            cost: amount,
            charged: true,
            occurred_ms: 1_000,
        };
        let legs = vec![
            Entry {
                leg: 0,
                kind: "charge",
                debit: acct(AcctKind::Balance, 7, 0),
                credit: acct(AcctKind::Revenue, 1, 0),
                amount,
            },
            Entry {
                leg: 1,
                kind: "quota",
                debit: acct(AcctKind::QuotaRequests, 7, 500),
                credit: acct(AcctKind::QuotaSink, 0, 0),
                amount: quota,
            },
        ];
        (u, legs)
    }

    /// Log records 1-6, synced to a segment: r1 (10), r2 (20), r2's charge leg again as a
    /// follow-up record (a no-op: same id), r4 (5, with a refused quota leg: the database
    /// refuses the whole record), r5 (7), r6 (9). Returns each record's frame.
    /// A logged record: its number, its batch's frames and its place among them.
    type Framed = (u64, Arc<[u8]>, std::ops::Range<usize>);

    fn six_records(path: &Path) -> Vec<Framed> {
        let mut buf = Vec::new();
        let mut ranges = Vec::new();
        let mut lsn = 1;
        let mut push = |buf: &mut Vec<u8>, f: &dyn Fn(&mut Vec<u8>, u64)| {
            let start = buf.len();
            f(buf, lsn);
            ranges.push((lsn, start..buf.len()));
            lsn += 1;
        };
        for (id, amount, quota) in [("r1", 10, 1), ("r2", 20, 1)] {
            let (u, e) = charge_record(id, amount, quota);
            push(&mut buf, &|b, l| {
                chargelog::encode_charge(b, l, &u, &e, None)
            });
        }
        let (_, again) = charge_record("r2", 20, 1);
        push(&mut buf, &|b, l| {
            chargelog::encode_entries(b, l, "r2", 1_000, &again[..1])
        });
        for (id, amount, quota) in [("r4", 5, 0), ("r5", 7, 1), ("r6", 9, 1)] {
            let (u, e) = charge_record(id, amount, quota);
            push(&mut buf, &|b, l| {
                chargelog::encode_charge(b, l, &u, &e, None)
            });
        }
        let mut w = chargelog::LogWriter::create(&chargelog::dir_for(path), 1).unwrap();
        w.append(&buf, true).unwrap();
        let frames: Arc<[u8]> = Arc::from(&buf[..]);
        ranges
            .into_iter()
            .map(|(l, r)| (l, Arc::clone(&frames), r))
            .collect()
    }

    fn project(conn: &mut Connection, ws: &mut WriterState, frames: &[Framed], flush: bool) {
        let mut batch: Vec<Projected> = frames
            .iter()
            .map(|(l, b, r)| Projected::Frame(*l, Arc::clone(b), r.clone()))
            .collect();
        project_batch(conn, &mut batch, ws, flush, true).unwrap();
    }

    fn fresh_state(conn: &Connection) -> WriterState {
        WriterState {
            deltas: Deltas::default(),
            last_flush: std::time::Instant::now(),
            applied_lsn: meta_lsn(conn, "log_lsn").unwrap(),
            folded_lsn: accounts_lsn(conn).unwrap(),
            stats: Arc::default(),
        }
    }

    /// A transaction applies each run of charges in consumer order (one consumer's in log
    /// order); follow-up entries, admin changes and retired segments stay where they are and
    /// end a run.
    #[test]
    fn charges_are_applied_by_consumer_between_other_records() {
        let mut buf = Vec::new();
        // Per item: a charge of this consumer (Some) or the follow-up entries record (None).
        let items: [Option<i64>; 8] = [
            Some(9),
            Some(3),
            Some(9),
            None,
            Some(5),
            Some(1),
            Some(5),
            Some(2),
        ];
        let mut ranges = Vec::new();
        for (n, item) in items.iter().enumerate() {
            let lsn = n as u64 + 1;
            let (mut u, e) = charge_record(&format!("r{lsn}"), 10, 1);
            let start = buf.len();
            match item {
                Some(c) => {
                    u.consumer_seq = *c;
                    chargelog::encode_charge(&mut buf, lsn, &u, &e, None);
                }
                None => chargelog::encode_entries(&mut buf, lsn, "r1", 1_000, &e[..1]),
            }
            ranges.push((lsn, start..buf.len()));
        }
        let frames: Arc<[u8]> = Arc::from(&buf[..]);
        let mut batch: Vec<Projected> = ranges
            .into_iter()
            .map(|(l, r)| Projected::Frame(l, Arc::clone(&frames), r))
            .collect();
        batch.insert(7, Projected::Retired(std::path::PathBuf::from("old"), 3));
        batch.insert(3, Projected::Direct(Op::Admin(Box::new(|_| Ok(()))), None));
        // 0-2: charges of 9, 3, 9; 3: admin; 4: entries; 5-7: charges of 5, 1, 5;
        // 8: retired; 9: charge of 2.
        assert_eq!(apply_order(&batch), [1, 0, 2, 3, 4, 6, 5, 7, 8, 9]);
    }

    /// Balance debits 10 + 20 + 7 + 9 (r4 refused, r2's repeat a no-op), four quota units.
    const ALL_SIX: [(i64, i64, i64, i64, i64); 4] = [
        (1, 7, 0, 0, 46),
        (2, 7, 500, 0, 4),
        (100, 1, 0, 46, 0),
        (101, 0, 0, 4, 0),
    ];

    /// The sums of the entries, per account, as `accounts` lists them.
    fn entry_sums(conn: &Connection) -> Vec<(i64, i64, i64, i64, i64)> {
        totals(
            conn,
            "SELECT kind, owner, period, SUM(c), SUM(d) FROM (
               SELECT debit_kind AS kind, debit_owner AS owner, debit_period AS period, 0 AS c, amount AS d FROM entries
               UNION ALL SELECT credit_kind, credit_owner, credit_period, amount, 0 FROM entries)
             GROUP BY kind, owner, period ORDER BY kind, owner, period",
        )
    }

    /// A crash after the projector applied records but before it folded their totals into
    /// `accounts` (and before it applied the last one): on open, the records are read again
    /// from the log, which was kept for them, and each one's totals are folded in once.
    #[test]
    fn totals_the_database_has_but_accounts_lack_are_folded_from_the_log_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let frames = six_records(&path);
        {
            let mut conn = open_connection(&path, false).unwrap();
            let mut ws = fresh_state(&conn);
            // r1 applied and folded; then r2 to r5 applied, not folded; r6 never applied.
            project(&mut conn, &mut ws, &frames[..1], true);
            assert_eq!(ws.folded_lsn, 1);
            project(&mut conn, &mut ws, &frames[1..5], false);
            assert_eq!((ws.applied_lsn, ws.folded_lsn), (5, 1));
            assert_eq!(meta(&conn, "accounts_lsn").as_deref(), Some("1"));
            assert_eq!(meta(&conn, "log_lsn").as_deref(), Some("5"));
            let rejected: i64 = conn
                .query_row("SELECT COUNT(*) FROM log_rejects WHERE lsn = 4", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(rejected, 1);
            // The crash: the totals gathered since the fold are lost with the process.
        }
        let mut conn = open_connection(&path, false).unwrap();
        let r = replay_log(&mut conn, &path).unwrap();
        assert_eq!(
            r,
            Replayed {
                next_lsn: 7,
                applied: 1,
                folded: 4
            }
        );
        assert_eq!(accounts(&conn), ALL_SIX);
        assert_eq!(entry_sums(&conn), ALL_SIX);
        assert_eq!(meta(&conn, "accounts_lsn").as_deref(), Some("6"));
        assert!(chargelog::segments(&chargelog::dir_for(&path))
            .unwrap()
            .is_empty());
        // Opening again finds nothing to do.
        let r = replay_log(&mut conn, &path).unwrap();
        assert_eq!((r.applied, r.folded, r.next_lsn), (0, 0, 7));
        assert_eq!(accounts(&conn), ALL_SIX);
    }

    /// While the gateway runs: a record the database refuses adds nothing to the totals, not
    /// even the legs of it that went in before the refused one; a repeated entry adds nothing.
    #[test]
    fn a_refused_or_repeated_record_adds_nothing_to_the_totals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let frames = six_records(&path);
        let mut conn = open_connection(&path, false).unwrap();
        let mut ws = fresh_state(&conn);
        project(&mut conn, &mut ws, &frames[..3], false);
        project(&mut conn, &mut ws, &frames[3..], true);
        assert_eq!((ws.applied_lsn, ws.folded_lsn), (6, 6));
        assert_eq!(accounts(&conn), ALL_SIX);
        assert_eq!(entry_sums(&conn), ALL_SIX);
    }

    /// While the gateway runs, a full segment stays until its records are folded into
    /// `accounts` (every 30 s), not merely applied; the last commit at stop folds them, and the
    /// segment goes.
    #[test]
    fn a_segment_is_removed_only_once_its_records_are_folded_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let frames = six_records(&path);
        let segs = chargelog::segments(&chargelog::dir_for(&path)).unwrap();
        assert_eq!(segs.len(), 1);
        let seg = segs[0].clone();
        let conn = open_connection(&path, false).unwrap();
        let (tx, rx) = mpsc::channel();
        let projector = thread::spawn(move || projector_loop(conn, rx, Arc::default()));
        let mut batch: Vec<Projected> = frames
            .iter()
            .map(|(l, b, r)| Projected::Frame(*l, Arc::clone(b), r.clone()))
            .collect();
        batch.push(Projected::Retired(seg.clone(), 6));
        tx.send(batch).unwrap();
        let reader = open_connection(&path, false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while meta(&reader, "log_lsn").as_deref() != Some("6") {
            assert!(std::time::Instant::now() < deadline, "never applied");
            thread::sleep(std::time::Duration::from_millis(20));
        }
        // Applied, not folded in: a crash now needs the segment to fold them at open.
        assert!(seg.exists());
        assert_eq!(meta(&reader, "accounts_lsn"), None);
        // Stop while idle.
        drop(tx);
        projector.join().unwrap();
        assert!(!seg.exists());
        assert_eq!(meta(&reader, "accounts_lsn").as_deref(), Some("6"));
        assert_eq!(accounts(&reader), ALL_SIX);
    }

    #[test]
    fn a_database_newer_than_the_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        open_connection(&path, false)
            .unwrap()
            .execute("UPDATE meta SET v = '99' WHERE k = 'schema'", [])
            .unwrap();
        let err = open_connection(&path, false).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("schema version 99 is newer")),
            "{err:?}"
        );
    }
}
