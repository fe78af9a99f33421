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

#[tokio::test]
async fn statements_and_usage_are_per_consumer_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        path: dir.path().join("q.db").display().to_string(),
        ..StoreConfig::default()
    };
    let clock = ManualClock::at_ms(1_000_000);
    let store = common::store_with_consumers(&cfg, Arc::new(clock.clone()), &["a", "b"]).await;
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

    let all = store.list_entries("a", 10).await.unwrap();
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
    let two = store.list_entries("a", 2).await.unwrap();
    assert_eq!(
        two.iter().map(|e| e.charge_id.as_str()).collect::<Vec<_>>(),
        ["op:topup:a-topup-2", "a-2"]
    );
    let b_entries = store.list_entries("b", 10).await.unwrap();
    assert_eq!(b_entries.len(), 2);

    let t = store.usage_totals("a", 0, i64::MAX).await.unwrap();
    assert_eq!((t.requests, t.bytes), (2, 20));
    assert_eq!(t.cost, "0.04");
    let t = store.usage_totals("a", 2_500_000, 3_000_001).await.unwrap();
    assert_eq!(t.requests, 1, "only a-2 falls in the window");
    let t = store.usage_totals("b", 0, i64::MAX).await.unwrap();
    assert_eq!(t.requests, 1);
}
