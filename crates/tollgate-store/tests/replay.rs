//! The charge log is the record a strict-mode success waits for; the database is built from it.
//! These tests leave records in the log that the database never saw (as a crash between the
//! log's fsync and the projector's commit does) and check that opening the store applies each
//! of them exactly once, folds them into balances, and ignores a torn last record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use tollgate_core::config::StoreConfig;
use tollgate_store::chargelog::{self, LogWriter};
use tollgate_store::{AcctKey, AcctKind, Entry, Store, SystemClock, UsageRecord};

mod common;

fn cfg(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        path: dir.join("t.db").display().to_string(),
        ..StoreConfig::default()
    }
}

fn charge(i: u64, consumer_seq: i64) -> (UsageRecord, Vec<Entry>) {
    let u = UsageRecord {
        charge_id: format!("req-{i}"),
        request_id: format!("req-{i}"),
        tenant_seq: 1,
        consumer_seq,
        key_id: None,
        route: "api".into(),
        status: 200,
        requests: 1,
        bytes: 10,
        cost: 10_000,
        charged: true,
        occurred_ms: 1_700_000_000_000,
    };
    let e = Entry {
        leg: 0,
        kind: "charge",
        debit: AcctKey {
            kind: AcctKind::Balance,
            owner: consumer_seq,
            period: 0,
        },
        credit: AcctKey {
            kind: AcctKind::Revenue,
            owner: 1,
            period: 0,
        },
        amount: 10_000,
    };
    (u, vec![e])
}

/// A store with tenant `t` and consumer `c` holding a balance of 1.00.
async fn store_with_consumer(cfg: &StoreConfig) -> Store {
    let store = common::store_with_consumers(cfg, Arc::new(SystemClock), &["c"]).await;
    store
        .adjust_balance("c", 1_000_000, "seed", "topup")
        .await
        .unwrap();
    store
}

/// Every entry credits one account and debits another by the same amount.
fn assert_balanced(db: &std::path::Path) {
    assert_eq!(
        count(db, "SELECT SUM(credits) - SUM(debits) FROM accounts"),
        0,
        "balanced"
    );
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn records_the_database_missed_are_applied_once_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let db = std::path::PathBuf::from(&cfg.path);
    // A first open creates the database and a consumer with a balance.
    {
        let store = store_with_consumer(&cfg).await;
        store.journal.flush().await.unwrap();
    }
    // The store's threads are done with the database once its lock is free.
    drop(tollgate_store::dblock::DbLock::acquire(&db, tollgate_store::dblock::LOCK_WAIT).unwrap());
    let seq = count(&db, "SELECT seq FROM consumers WHERE id = 'c'");
    // Records in the log that the projector never applied: 5 whole ones, then a torn one.
    let log_dir = chargelog::dir_for(&db);
    let mut w = LogWriter::create(&log_dir, 1_000).unwrap();
    let mut buf = Vec::new();
    for i in 0..5 {
        let (u, e) = charge(i, seq);
        chargelog::encode_charge(&mut buf, w.next_lsn, &u, &e, None);
        w.next_lsn += 1;
    }
    let whole = buf.len();
    let (u, e) = charge(99, seq);
    chargelog::encode_charge(&mut buf, w.next_lsn, &u, &e, None);
    buf.truncate(whole + (buf.len() - whole) / 2);
    w.append(&buf, true).unwrap();
    drop(w);

    for round in 0..2 {
        let store = Store::open(&cfg, Arc::new(SystemClock)).unwrap();
        let c = store.dir.consumer("c").unwrap();
        let view = store.consumer_view(&c);
        assert_eq!(view.balance, "0.95", "round {round}: 1.00 − 5 × 0.01");
        let t = store.usage_totals("c", 0, i64::MAX).await.unwrap();
        assert_eq!((t.requests, t.charged_requests), (5, 5), "round {round}");
        drop(store);
        assert_eq!(count(&db, "SELECT COUNT(*) FROM usage"), 5);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM entries WHERE kind = 'charge'"),
            5
        );
        assert_eq!(
            count(&db, "SELECT SUM(credits) - SUM(debits) FROM accounts"),
            0,
            "balanced"
        );
    }
    // Applied segments are removed; the new ones hold nothing unapplied.
    let (left, _) = chargelog::read_after(
        &log_dir,
        count(
            &db,
            "SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'log_lsn'",
        ) as u64,
    )
    .unwrap();
    assert!(left.is_empty());
}

/// A record the database refuses while the gateway runs (here an entry of amount 0, which the
/// `entries` table's CHECK rejects) is set aside in `log_rejects`; the records logged with it
/// are applied all the same, each once.
#[tokio::test]
async fn a_refused_record_is_set_aside_and_the_rest_of_its_batch_applies() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let db = std::path::PathBuf::from(&cfg.path);
    let store = store_with_consumer(&cfg).await;
    let seq = store.dir.consumer("c").unwrap().seq;
    let op = |i: u64, amount: i64| {
        let (u, mut e) = charge(i, seq);
        e[0].amount = amount;
        tollgate_store::Op::Charge {
            usage: Box::new(u),
            entries: e,
            idem: None,
        }
    };
    // Written together, so they share log batches and projector transactions.
    let (a, b, c, d) = tokio::join!(
        store.journal.write(op(1, 10_000)),
        store.journal.write(op(2, 0)),
        store.journal.write(op(3, 10_000)),
        store.journal.write(op(4, 10_000)),
    );
    for r in [a, b, c, d] {
        r.unwrap();
    }
    store.journal.flush().await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM log_rejects"), 1);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM usage WHERE charge_id IN ('req-1', 'req-3', 'req-4')"
        ),
        3
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM usage WHERE charge_id = 'req-2'"),
        0
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM entries WHERE kind = 'charge'"),
        3
    );
    drop(store);
    // Reopened: nothing applied twice, the books balance.
    let store = Store::open(&cfg, Arc::new(SystemClock)).unwrap();
    drop(store);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM entries WHERE kind = 'charge'"),
        3
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM log_rejects"), 1);
    assert_balanced(&db);
}

/// Write `per_thread` charges of 1 from each of `threads` threads at once, each on its own
/// current-thread runtime, which runs a pump (as the proxy workers do) when `pump`; `answered`
/// sees the n-th charge id a thread got its answer for. Returns every id answered.
fn charge_from_threads(
    store: &Arc<Store>,
    threads: u64,
    per_thread: u64,
    pump: bool,
    answered: impl Fn(usize, &str) + Send + Clone + 'static,
) -> Vec<String> {
    let seq = store.dir.consumer("c").unwrap().seq;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = Arc::clone(store);
            let answered = answered.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if pump {
                        tokio::spawn(tollgate_store::completions::pump());
                    }
                    let writes: Vec<_> = (0..per_thread)
                        .map(|i| {
                            let (mut u, mut e) = charge(t * 10_000 + i, seq);
                            u.cost = 1;
                            e[0].amount = 1;
                            let id = u.charge_id.clone();
                            let store = Arc::clone(&store);
                            tokio::spawn(async move {
                                store
                                    .journal
                                    .write(tollgate_store::Op::Charge {
                                        usage: Box::new(u),
                                        entries: e,
                                        idem: None,
                                    })
                                    .await
                                    .map(|()| id)
                            })
                        })
                        .collect();
                    let mut ids = Vec::new();
                    for (n, w) in writes.into_iter().enumerate() {
                        let id = w.await.unwrap().unwrap();
                        answered(n, &id);
                        ids.push(id);
                    }
                    ids
                })
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

/// Writers on two runtime threads that run a pump (as the proxy workers do) are answered
/// through it: every write returns once durable, and each charge is in the database once.
#[tokio::test]
async fn writes_from_threads_with_a_pump_are_each_answered_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let db = std::path::PathBuf::from(&cfg.path);
    let store = Arc::new(store_with_consumer(&cfg).await);
    let per_thread = 300u64;
    let answered = charge_from_threads(&store, 2, per_thread, true, |_, _| {});
    assert_eq!(answered.len() as u64, 2 * per_thread);
    store.journal.flush().await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM usage") as u64,
        2 * per_thread
    );
    assert_eq!(
        count(
            &db,
            "SELECT COALESCE(SUM(amount), 0) FROM entries WHERE kind = 'charge'"
        ) as u64,
        2 * per_thread
    );
}

/// Writes from several threads at once, grouped into commits however they queue: every write
/// answered as durable is in the log's files when it is answered, the records are numbered
/// 1..=n in log order without a gap or a repeat, and each is applied to the database once.
#[tokio::test]
async fn answered_writes_are_in_the_log_numbered_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let db = std::path::PathBuf::from(&cfg.path);
    let store = Arc::new(store_with_consumer(&cfg).await);
    let log_dir = chargelog::dir_for(&db);
    let (threads, per_thread) = (4u64, 250u64);
    let in_log = log_dir.clone();
    let mut answered = charge_from_threads(&store, threads, per_thread, false, move |n, id| {
        if n % 50 == 0 {
            // Answered, so already in the log (read from the files).
            let (records, _) = chargelog::read_after(&in_log, 0).unwrap();
            assert!(
                records.iter().any(|(_, r)| matches!(r,
                    chargelog::Record::Charge { usage, .. } if usage.charge_id == id)),
                "{id} answered but not in the log"
            );
        }
    });
    let n = threads * per_thread;
    assert_eq!(answered.len() as u64, n);
    let (records, max_lsn) = chargelog::read_after(&log_dir, 0).unwrap();
    let lsns: Vec<u64> = records.iter().map(|(l, _)| *l).collect();
    assert_eq!(lsns, (1..=n).collect::<Vec<_>>(), "numbers in log order");
    assert_eq!(max_lsn, n);
    let mut logged: Vec<String> = records
        .iter()
        .filter_map(|(_, r)| match r {
            chargelog::Record::Charge { usage, .. } => Some(usage.charge_id.clone()),
            _ => None,
        })
        .collect();
    logged.sort();
    answered.sort();
    assert_eq!(logged, answered);
    let stats = store.journal.stats();
    assert_eq!((stats.records, stats.logged_lsn), (n, n), "{stats:?}");
    assert!(stats.commits >= 1 && stats.commits <= n, "{stats:?}");
    store.journal.flush().await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM usage") as u64, n);
    assert_eq!(
        count(
            &db,
            "SELECT CAST(v AS INTEGER) FROM meta WHERE k = 'log_lsn'"
        ) as u64,
        n
    );
}

/// A store dropped and opened again at once (no pause in between) finds everything the old
/// one wrote, each once: the new one waits for the old one's threads (its last commit folds the
/// totals in) instead of racing them for the database.
#[tokio::test]
async fn a_store_opened_again_at_once_waits_for_the_old_ones_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let db = std::path::PathBuf::from(&cfg.path);
    let mut store = store_with_consumer(&cfg).await;
    let seq = store.dir.consumer("c").unwrap().seq;
    let rounds = 12u64;
    let per_round = 50u64;
    for round in 0..rounds {
        // Queued together (a few log batches, one projector transaction), the last one waited
        // for: the log writer takes them in order.
        for i in 0..per_round {
            let (u, e) = charge(round * per_round + i, seq);
            let op = tollgate_store::Op::Charge {
                usage: Box::new(u),
                entries: e,
                idem: None,
            };
            if i + 1 < per_round {
                store.journal.write_nowait(op).unwrap();
            } else {
                store.journal.write(op).await.unwrap();
            }
        }
        drop(store);
        store = Store::open(&cfg, Arc::new(SystemClock)).unwrap();
    }
    drop(store);
    // Opened once more (waiting for the last one) so that everything is folded in.
    drop(Store::open(&cfg, Arc::new(SystemClock)).unwrap());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM entries WHERE kind = 'charge'"),
        (rounds * per_round) as i64
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT debits FROM accounts WHERE kind = 1 AND owner = {seq}")
        ),
        (rounds * per_round) as i64 * 10_000
    );
    assert_balanced(&db);
}

/// While a store has the database open, a second open of the same file is refused with an
/// error that says so, after a bounded wait, and leaves the first store working.
#[tokio::test]
async fn a_second_open_of_a_database_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg(dir.path());
    let store = store_with_consumer(&cfg).await;
    let err = Store::open(&cfg, Arc::new(SystemClock)).err().unwrap();
    assert!(
        matches!(&err, tollgate_store::StoreError::Conflict(m) if m.contains("in use by another tollgate")),
        "{err}"
    );
    let err = tollgate_store::seed(std::path::Path::new(&cfg.path), "t", "p", 1, 0, "x")
        .err()
        .unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    store
        .adjust_balance("c", 5, "after", "topup")
        .await
        .unwrap();
}
