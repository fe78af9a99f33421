//! Statement and usage queries: a consumer sees only its own entries and usage, newest first,
//! with debits and credits of its balance merged in time order and the limit honoured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use tollgate_core::config::StoreConfig;
use tollgate_store::{AcctKey, AcctKind, Entry, ManualClock, Op, UsageRecord};

mod common;

/// A charge of `amount` micros to consumer `seq`'s balance at `at_ms`.
fn charge(id: &str, seq: i64, amount: i64, at_ms: i64) -> Op {
    Op::Charge {
        usage: Box::new(UsageRecord {
            charge_id: id.into(),
            request_id: id.into(),
            tenant_seq: 1,
            consumer_seq: seq,
            key_id: None,
            route: "api".into(),
            status: 200,
            requests: 1,
            bytes: 10,
            cost: amount,
            charged: true,
            occurred_ms: at_ms,
        }),
        entries: vec![Entry {
            leg: 0,
            kind: "charge",
            debit: AcctKey {
                kind: AcctKind::Balance,
                owner: seq,
                period: 0,
            },
            credit: AcctKey {
                kind: AcctKind::Revenue,
                owner: 1,
                period: 0,
            },
            amount,
        }],
        idem: None,
    }
}

/// A store in a fresh directory with consumers `names`, on a manual clock at 1,000,000 ms (the
/// directory lives as long as the returned guard).
async fn open(names: &[&str]) -> (tempfile::TempDir, ManualClock, tollgate_store::Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        path: dir.path().join("q.db").display().to_string(),
        ..StoreConfig::default()
    };
    let clock = ManualClock::at_ms(1_000_000);
    let store = common::store_with_consumers(&cfg, Arc::new(clock.clone()), names).await;
    (dir, clock, store)
}

#[tokio::test]
async fn statements_and_usage_are_per_consumer_newest_first() {
    let (_dir, clock, store) = open(&["a", "b"]).await;
    let a = store.dir.consumer("a").unwrap().seq;
    let b = store.dir.consumer("b").unwrap().seq;
    store
        .adjust_balance("a", 1_000_000, "a-topup", "topup")
        .await
        .unwrap();
    store
        .adjust_balance("b", 500_000, "b-topup", "topup")
        .await
        .unwrap();
    store
        .journal
        .write(charge("a-1", a, 10_000, 2_000_000))
        .await
        .unwrap();
    store
        .journal
        .write(charge("b-1", b, 20_000, 2_500_000))
        .await
        .unwrap();
    store
        .journal
        .write(charge("a-2", a, 30_000, 3_000_000))
        .await
        .unwrap();
    clock.advance_ms(3_000_000);
    store
        .adjust_balance("a", 70_000, "a-topup-2", "topup")
        .await
        .unwrap();

    let all = store.list_entries("a", 10, None).await.unwrap().items;
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|e| (e.charge_id.as_str(), e.direction))
        .collect();
    assert_eq!(
        seen,
        [
            ("op:topup:a-topup-2", "credit"),
            ("a-2", "debit"),
            ("a-1", "debit"),
            ("op:topup:a-topup", "credit"),
        ],
        "only a's entries, newest first"
    );
    let two = store.list_entries("a", 2, None).await.unwrap().items;
    assert_eq!(
        two.iter().map(|e| e.charge_id.as_str()).collect::<Vec<_>>(),
        ["op:topup:a-topup-2", "a-2"]
    );
    let b_entries = store.list_entries("b", 10, None).await.unwrap().items;
    assert_eq!(b_entries.len(), 2);

    let t = store.usage_totals("a", 0, i64::MAX).await.unwrap();
    assert_eq!((t.requests, t.bytes), (2, 20));
    assert_eq!(t.cost, "0.04");
    let t = store.usage_totals("a", 2_500_000, 3_000_001).await.unwrap();
    assert_eq!(t.requests, 1, "only a-2 falls in the window");
    let t = store.usage_totals("b", 0, i64::MAX).await.unwrap();
    assert_eq!(t.requests, 1);
}

/// A balance change replayed under its op id changes nothing and reports what was recorded the
/// first time — found by its id, not by paging through the consumer's statement, so it holds
/// however many entries came after it (the admin API answers 409 on a different amount).
#[tokio::test]
async fn a_replayed_balance_change_reports_the_first_amount_after_any_number_of_entries() {
    let (_dir, clock, store) = open(&["a"]).await;
    let a = store.dir.consumer("a").unwrap().seq;
    let first = store
        .adjust_balance("a", 5_000_000, "inv-1", "topup")
        .await
        .unwrap();
    assert!(first.applied);
    assert_eq!((first.balance, first.recorded), (5_000_000, 5_000_000));
    let debit = store
        .adjust_balance("a", -1_000_000, "fix-1", "adjust")
        .await
        .unwrap();
    assert_eq!((debit.balance, debit.recorded), (4_000_000, -1_000_000));
    // More newer entries than the largest statement page (1000).
    for i in 0..1_050 {
        clock.advance_ms(1);
        store
            .journal
            .write_nowait(charge(&format!("c-{i}"), a, 1, 2_000_000 + i))
            .unwrap();
    }
    store.journal.flush().await.unwrap();
    let statement = store.list_entries("a", 1000, None).await.unwrap().items;
    assert!(statement.iter().all(|e| !e.charge_id.starts_with("op:")));

    let again = store
        .adjust_balance("a", 9_000_000, "inv-1", "topup")
        .await
        .unwrap();
    assert!(!again.applied, "the op id was used: nothing applied");
    assert_eq!(again.recorded, 5_000_000, "the first amount, for the 409");
    let same = store
        .adjust_balance("a", -1_000_000, "fix-1", "adjust")
        .await
        .unwrap();
    assert!(!same.applied);
    assert_eq!(same.recorded, -1_000_000, "a debit is reported negative");
    // The in-memory balance does not see the charges (they bypass the ledger here); the
    // replays moved it by nothing.
    assert_eq!(again.balance, 4_000_000);
    assert_eq!(same.balance, 4_000_000);
}

/// Paging through a statement with `next_after` lists every entry once, newest first, also when
/// many share a millisecond; a foreign cursor does not parse.
#[tokio::test]
async fn statement_pages_cover_every_entry_once_across_equal_times() {
    let (_dir, _clock, store) = open(&["a", "b"]).await;
    let a = store.dir.consumer("a").unwrap().seq;
    let b = store.dir.consumer("b").unwrap().seq;
    store
        .adjust_balance("a", 1_000_000, "seed", "topup")
        .await
        .unwrap();
    // 25 charges of a in 5 distinct milliseconds (5 per ms), 10 of b between them.
    for i in 0..25_i64 {
        store
            .journal
            .write_nowait(charge(&format!("a-{i:02}"), a, 1 + i, 2_000_000 + i / 5))
            .unwrap();
        if i % 3 == 0 {
            store
                .journal
                .write_nowait(charge(&format!("b-{i:02}"), b, 1, 2_000_000 + i / 5))
                .unwrap();
        }
    }
    store.journal.flush().await.unwrap();
    let whole = store.list_entries("a", 1000, None).await.unwrap();
    assert_eq!(whole.items.len(), 26);
    assert_eq!(whole.next_after, None, "one page holds it all");
    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.list_entries("a", 4, after).await.unwrap();
        assert!(page.items.len() <= 4);
        paged.extend(page.items);
        pages += 1;
        match page.next_after {
            Some(c) => after = Some(c.parse().unwrap()),
            None => break,
        }
        assert!(pages < 20, "paging does not end");
    }
    assert_eq!(pages, 7, "26 entries in pages of 4");
    assert_eq!(
        paged, whole.items,
        "the pages, joined, are the whole statement"
    );
    let times: Vec<&str> = paged.iter().map(|e| e.created_at.as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(paged.last().unwrap().charge_id, "op:topup:seed");
    for bad in ["", "x", "12", "12:0", "12:0:", "-1:0:c", "1:x:c"] {
        assert!(
            bad.parse::<tollgate_store::EntryCursor>().is_err(),
            "{bad:?}"
        );
    }
}

/// The ledger check passes on a ledger written through the store — admin balance changes
/// (posted to `accounts` directly) and request entries (folded in later) — and names what
/// differs once the accounts or the entries are changed behind the store's back.
#[tokio::test]
async fn the_ledger_check_passes_on_a_sound_ledger_and_names_what_was_tampered_with() {
    let (dir, _clock, store) = open(&["a", "b"]).await;
    let a = store.dir.consumer("a").unwrap().seq;
    let b = store.dir.consumer("b").unwrap().seq;
    store
        .adjust_balance("a", 5_000_000, "t-1", "topup")
        .await
        .unwrap();
    store
        .adjust_balance("a", -1_000_000, "f-1", "adjust")
        .await
        .unwrap();
    store
        .adjust_balance("b", 2_000_000, "t-2", "topup")
        .await
        .unwrap();
    // Request entries on a quota account: logged, applied, not yet folded into `accounts`.
    for i in 0..10 {
        let quota = Op::Charge {
            usage: Box::new(UsageRecord {
                charge_id: format!("q-{i}"),
                request_id: format!("q-{i}"),
                tenant_seq: 1,
                consumer_seq: a,
                key_id: None,
                route: "api".into(),
                status: 200,
                requests: 1,
                bytes: 0,
                cost: 0,
                charged: true,
                occurred_ms: 2_000_000 + i,
            }),
            entries: vec![Entry {
                leg: 0,
                kind: "quota",
                debit: AcctKey {
                    kind: AcctKind::QuotaRequests,
                    owner: a,
                    period: 7,
                },
                credit: AcctKey {
                    kind: AcctKind::QuotaSink,
                    owner: 1,
                    period: 7,
                },
                amount: 1,
            }],
            idem: None,
        };
        store.journal.write(quota).await.unwrap();
    }
    let sound = store.check_ledger().await.unwrap();
    assert!(sound.ok, "{sound:?}");
    assert_eq!((sound.entries, sound.imbalance), (13, 0));
    assert!(sound.account_mismatches.is_empty() && sound.balance_mismatches.is_empty());

    // Behind the store's back: a's balance account gains 5 units of credit, and an entry
    // crediting b's balance appears that neither `accounts` nor memory saw.
    let db = rusqlite::Connection::open(dir.path().join("q.db")).unwrap();
    db.execute(
        "UPDATE accounts SET credits = credits + 5 WHERE kind = 1 AND owner = ?1",
        [a],
    )
    .unwrap();
    db.execute(
        "INSERT INTO entries(charge_id, leg, kind, debit_kind, debit_owner, debit_period,
         credit_kind, credit_owner, credit_period, amount, created_ms)
         VALUES('forged', 0, 'topup', 102, 1, 0, 1, ?1, 0, 700, 3000000)",
        [b],
    )
    .unwrap();
    let found = store.check_ledger().await.unwrap();
    assert!(!found.ok);
    assert_eq!(
        found.imbalance, 5,
        "the accounts no longer balance (a forged entry has two sides, an edited account not)"
    );
    let by_account: Vec<_> = found
        .account_mismatches
        .iter()
        .map(|m| (m.kind, m.owner, m.recorded, m.entries))
        .collect();
    assert_eq!(
        by_account,
        [
            (1, a, (5_000_005, 1_000_000), (5_000_000, 1_000_000)),
            (1, b, (2_000_000, 0), (2_000_700, 0)),
            (102, 1, (0, 0), (0, 700)),
        ]
    );
    let balances: Vec<_> = found
        .balance_mismatches
        .iter()
        .map(|m| (m.consumer.as_str(), m.memory, m.entries, m.in_flight))
        .collect();
    assert_eq!(balances, [("b", (2_000_000, 0), (2_000_700, 0), 0)]);
}
