//! The in-memory, authoritative ledger of one node (see `ledger.md`): accounts are integer
//! counters, reservations ("holds") span every leg of a request and are taken all-or-nothing
//! under the consumer's lock (and the tenant's, always in that order), settlement posts the
//! actual amounts and releases the rest, and a sweeper releases holds past their expiry.
//! Postings become balanced [`Entry`] values with deterministic ids for the journal.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::directory::{ConsumerEntry, Subscription};

/// What an account counts. Stored as an integer; never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum AcctKind {
    /// A consumer's prepaid balance (money).
    Balance = 1,
    /// Requests in a period (units).
    QuotaRequests = 2,
    /// Body bytes in a period (units).
    QuotaBytes = 3,
    /// Spending of a consumer in a period (money).
    CapConsumer = 4,
    /// Spending of a key in a period (money).
    CapKey = 5,
    /// Spending of a tenant in a period (money).
    CapTenant = 6,
    /// Revenue of a tenant (money, credit side of charges).
    Revenue = 100,
    /// Counter side of quota postings (units).
    QuotaSink = 101,
    /// Source of top-ups and adjustments (money).
    Funding = 102,
    /// Counter side of spending-cap postings (money).
    CapSink = 103,
}

impl AcctKind {
    /// From the stored integer.
    pub fn from_u8(v: u8) -> Option<AcctKind> {
        use AcctKind::*;
        Some(match v {
            1 => Balance,
            2 => QuotaRequests,
            3 => QuotaBytes,
            4 => CapConsumer,
            5 => CapKey,
            6 => CapTenant,
            100 => Revenue,
            101 => QuotaSink,
            102 => Funding,
            103 => CapSink,
            _ => return None,
        })
    }

    /// The counter side that a posting on this kind is balanced against.
    fn sink(self) -> AcctKind {
        match self {
            AcctKind::QuotaRequests | AcctKind::QuotaBytes => AcctKind::QuotaSink,
            AcctKind::CapConsumer | AcctKind::CapKey | AcctKind::CapTenant => AcctKind::CapSink,
            _ => AcctKind::Revenue,
        }
    }
}

/// An account: kind, owner (consumer/key/tenant seq; 0 for system accounts), period start
/// (Unix seconds; 0 for accounts without periods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcctKey {
    /// Kind.
    pub kind: AcctKind,
    /// Owner seq.
    pub owner: i64,
    /// Period start, Unix seconds.
    pub period: i64,
}

/// A balanced posting: `amount` leaves `debit` and arrives at `credit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Leg number within its charge; `(charge id, leg)` is the entry's deterministic id, so
    /// replaying the same posting is a no-op. Charge ids grow monotonically within a process,
    /// which keeps the journal's inserts at the end of its B-tree.
    pub leg: u16,
    /// What caused it (`charge`, `quota`, `cap`, `topup`, `adjust`, `bytes`).
    pub kind: &'static str,
    /// Debited account.
    pub debit: AcctKey,
    /// Credited account.
    pub credit: AcctKey,
    /// Positive amount.
    pub amount: i64,
}

/// Posted and pending use of one counter account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Durably posted.
    pub posted: i64,
    /// Held by in-flight requests.
    pub pending: i64,
}

/// Counters of one consumer or tenant: a handful of current-period accounts, so a vector
/// (no allocation until first use, linear scan over a few items).
#[derive(Clone, Debug, Default)]
pub struct Counters(thin_vec::ThinVec<(AcctKey, Counter)>);

impl Counters {
    /// The counter of `k` (zero when never used).
    pub fn get(&self, k: &AcctKey) -> Counter {
        self.0
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    fn get_mut(&mut self, k: AcctKey) -> &mut Counter {
        match self.0.iter().position(|(a, _)| *a == k) {
            Some(i) => &mut self.0[i].1,
            None => {
                // Grown one at a time: a consumer has one counter per quota or cap per period,
                // and the spare capacity of the usual doubling would stay allocated for
                // every consumer that has called.
                self.0.reserve_exact(1);
                self.0.push((k, Counter::default()));
                let last = self.0.len() - 1;
                &mut self.0[last].1
            }
        }
    }

    /// Set the posted amount (used when loading from the store).
    pub fn set_posted(&mut self, k: AcctKey, posted: i64) {
        self.get_mut(k).posted = posted;
    }

    /// Drop counters of periods that ended before `keep_from` (Unix seconds) and hold nothing.
    pub fn prune(&mut self, keep_from: i64) {
        self.0
            .retain(|(k, c)| k.period == 0 || k.period >= keep_from || c.pending != 0);
    }

    /// Every counter.
    pub fn iter(&self) -> impl Iterator<Item = &(AcctKey, Counter)> {
        self.0.iter()
    }
}

/// One leg of a reservation against a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leg {
    /// The account.
    pub acct: AcctKey,
    /// Amount to hold.
    pub amount: i64,
    /// Most that may be posted + pending in this account; `None` counts without limiting.
    pub limit: Option<i64>,
}

/// Everything a request reserves, taken all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReserveSpec {
    /// Money held from the prepaid balance.
    pub balance: i64,
    /// Legs on the consumer's counters (quotas, consumer and key caps).
    pub legs: Vec<Leg>,
    /// Legs on the tenant's counters (tenant caps).
    pub tenant_legs: Vec<Leg>,
}

/// Which leg refused a reservation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The prepaid balance does not cover the amount.
    Balance {
        /// Available before this request.
        available: i64,
        /// Asked for.
        needed: i64,
    },
    /// A counter would pass its limit.
    Limit {
        /// The account.
        acct: AcctKey,
        /// Posted + pending before this request.
        used: i64,
        /// The limit.
        limit: i64,
        /// Asked for.
        needed: i64,
    },
}

/// State of a consumer: subscription and ledger behind the consumer's one lock.
#[derive(Debug)]
pub struct ConsumerState {
    /// The subscription.
    pub sub: Subscription,
    /// Top-ups and credits posted to the prepaid balance.
    pub balance_credits: i64,
    /// Charges posted to the prepaid balance.
    pub balance_debits: i64,
    /// Money held by in-flight requests.
    pub balance_pending: i64,
    /// Quota and cap counters of the consumer and its keys.
    pub counters: Counters,
    /// In-flight holds.
    holds: thin_vec::ThinVec<HoldRec>,
}

impl ConsumerState {
    /// A fresh state with no money.
    pub fn new(sub: Subscription) -> Self {
        ConsumerState {
            sub,
            balance_credits: 0,
            balance_debits: 0,
            balance_pending: 0,
            counters: Counters::default(),
            holds: thin_vec::ThinVec::new(),
        }
    }

    /// Remove the hold at `pos`. The last one frees the list: most consumers have no request
    /// in flight most of the time, and an empty list's capacity would stay allocated for
    /// every consumer that has called.
    fn take_hold(&mut self, pos: usize) -> HoldRec {
        let rec = self.holds.swap_remove(pos);
        if self.holds.is_empty() {
            self.holds = thin_vec::ThinVec::new();
        }
        rec
    }

    /// Balance available to new reservations.
    pub fn available(&self) -> i64 {
        self.balance_credits - self.balance_debits - self.balance_pending
    }

    /// Posted balance (what a statement shows).
    pub fn posted_balance(&self) -> i64 {
        self.balance_credits - self.balance_debits
    }

    /// Number of in-flight holds.
    pub fn holds_len(&self) -> usize {
        self.holds.len()
    }
}

/// State of a tenant.
#[derive(Debug, Default)]
pub struct TenantState {
    /// Tenant-wide counters.
    pub counters: Counters,
}

#[derive(Debug, Clone)]
struct HoldRec {
    id: u64,
    spec: ReserveSpec,
}

/// A reservation owned by one request. Settle it or drop it (which releases it).
#[derive(Debug)]
pub struct Hold {
    id: u64,
    /// When the sweeper releases it (its key in the expiry index, with `id`).
    expires_ms: i64,
    consumer: Arc<ConsumerEntry>,
    spec: ReserveSpec,
    ledger: Arc<LedgerShared>,
    done: bool,
}

/// Actual use of a settled request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actual {
    /// Money charged to the prepaid balance.
    pub cost: i64,
    /// Actual amount per consumer leg, same order as the spec.
    pub legs: Vec<i64>,
    /// Actual amount per tenant leg, same order as the spec.
    pub tenant_legs: Vec<i64>,
}

/// The result of a settlement in memory, to be journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    /// Balanced entries.
    pub entries: Vec<Entry>,
    /// Posted balance after the charge.
    pub balance_after: i64,
    /// The hold had already been released by the sweeper when the request settled.
    pub hold_had_expired: bool,
    /// Posted + pending of each consumer leg's account after this settlement.
    pub legs_after: Vec<i64>,
}

/// Pending holds by (expiry, id). A hold leaves its shard when it is settled or dropped, so
/// the index holds only what is in flight; the sweeper takes expired ones from the front.
struct ExpiryShard(Mutex<BTreeMap<(i64, u64), Weak<ConsumerEntry>>>);

/// Shared ledger machinery: hold ids, expiry queue, gauges.
pub struct LedgerShared {
    next_hold: AtomicU64,
    ttl_ms: i64,
    shards: Vec<ExpiryShard>,
    pending_holds: AtomicI64,
}

impl std::fmt::Debug for LedgerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerShared")
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

const SHARDS: usize = 16;

impl LedgerShared {
    /// A ledger whose holds expire after `ttl_ms`.
    pub fn new(ttl_ms: i64) -> Arc<Self> {
        Arc::new(LedgerShared {
            next_hold: AtomicU64::new(1),
            ttl_ms,
            shards: (0..SHARDS)
                .map(|_| ExpiryShard(Mutex::new(BTreeMap::new())))
                .collect(),
            pending_holds: AtomicI64::new(0),
        })
    }

    /// Holds currently pending (gauge).
    pub fn pending_holds(&self) -> i64 {
        self.pending_holds.load(Ordering::Relaxed)
    }

    /// Reserve `spec` for `consumer` at `now_ms`, all or nothing.
    pub fn reserve(
        self: &Arc<Self>,
        consumer: &Arc<ConsumerEntry>,
        spec: ReserveSpec,
        now_ms: i64,
    ) -> Result<Hold, Denied> {
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        {
            let mut st = consumer.state.lock();
            // Check every leg before touching any (all or nothing).
            if spec.balance > 0 && st.available() < spec.balance {
                return Err(Denied::Balance {
                    available: st.available(),
                    needed: spec.balance,
                });
            }
            check_legs(&st.counters, &spec.legs)?;
            if spec.tenant_legs.is_empty() {
                apply(&mut st, &spec, 1);
            } else {
                // Lock order: consumer, then tenant.
                let mut ts = consumer.tenant.state.lock();
                check_legs(&ts.counters, &spec.tenant_legs)?;
                apply(&mut st, &spec, 1);
                for l in &spec.tenant_legs {
                    ts.counters.get_mut(l.acct).pending += l.amount;
                }
            }
            if st.holds.is_empty() {
                // The usual case, one request in flight: no spare capacity.
                st.holds.reserve_exact(1);
            }
            st.holds.push(HoldRec {
                id,
                spec: spec.clone(),
            });
        }
        self.pending_holds.fetch_add(1, Ordering::Relaxed);
        let expires_ms = now_ms + self.ttl_ms;
        self.shard(id)
            .lock()
            .insert((expires_ms, id), Arc::downgrade(consumer));
        Ok(Hold {
            id,
            expires_ms,
            consumer: Arc::clone(consumer),
            spec,
            ledger: Arc::clone(self),
            done: false,
        })
    }

    fn shard(&self, id: u64) -> &Mutex<BTreeMap<(i64, u64), Weak<ConsumerEntry>>> {
        &self.shards[(id as usize) % SHARDS].0
    }

    /// Take a settled or dropped hold out of the expiry index.
    fn forget(&self, id: u64, expires_ms: i64) {
        self.shard(id).lock().remove(&(expires_ms, id));
    }

    /// Holds in the expiry index (in flight, not yet swept).
    pub fn expiry_len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Release every hold whose expiry is at or before `now_ms`; returns how many.
    pub fn sweep(&self, now_ms: i64) -> usize {
        let mut released = 0;
        for shard in &self.shards {
            loop {
                let item = {
                    let mut q = shard.0.lock();
                    match q.first_key_value() {
                        Some((&(exp, _), _)) if exp <= now_ms => q.pop_first(),
                        _ => None,
                    }
                };
                let Some(((_, id), weak)) = item else { break };
                if let Some(c) = weak.upgrade() {
                    if release_hold(&c, id) {
                        self.pending_holds.fetch_sub(1, Ordering::Relaxed);
                        released += 1;
                    }
                }
            }
        }
        released
    }
}

fn check_legs(counters: &Counters, legs: &[Leg]) -> Result<(), Denied> {
    for l in legs {
        if let Some(limit) = l.limit {
            let c = counters.get(&l.acct);
            let used = c.posted + c.pending;
            if used + l.amount > limit {
                return Err(Denied::Limit {
                    acct: l.acct,
                    used,
                    limit,
                    needed: l.amount,
                });
            }
        }
    }
    Ok(())
}

/// Add (`sign = 1`) or remove (`sign = -1`) the consumer-side pending amounts of `spec`.
fn apply(st: &mut ConsumerState, spec: &ReserveSpec, sign: i64) {
    st.balance_pending += sign * spec.balance;
    for l in &spec.legs {
        st.counters.get_mut(l.acct).pending += sign * l.amount;
    }
}

fn release_hold(consumer: &ConsumerEntry, id: u64) -> bool {
    let mut st = consumer.state.lock();
    let Some(pos) = st.holds.iter().position(|h| h.id == id) else {
        return false;
    };
    let rec = st.take_hold(pos);
    apply(&mut st, &rec.spec, -1);
    if !rec.spec.tenant_legs.is_empty() {
        let mut ts = consumer.tenant.state.lock();
        for l in &rec.spec.tenant_legs {
            ts.counters.get_mut(l.acct).pending -= l.amount;
        }
    }
    true
}

impl Hold {
    /// The hold's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The consumer it belongs to.
    pub fn consumer(&self) -> &Arc<ConsumerEntry> {
        &self.consumer
    }

    /// What was reserved.
    pub fn spec(&self) -> &ReserveSpec {
        &self.spec
    }

    /// Post `actual` (overruns included: usage that happened is never dropped), release the
    /// rest, and return the balanced entries for the journal. The journal keys the entries by the charge id and
    /// their leg numbers (the request id, or the consumer-scoped `Idempotency-Key`).
    pub fn settle(mut self, actual: &Actual) -> Posting {
        self.done = true;
        self.ledger.forget(self.id, self.expires_ms);
        let c = Arc::clone(&self.consumer);
        let tenant_seq = c.tenant.seq;
        let mut entries =
            Vec::with_capacity(1 + self.spec.legs.len() + self.spec.tenant_legs.len());
        let mut st = c.state.lock();
        let had = match st.holds.iter().position(|h| h.id == self.id) {
            Some(pos) => {
                st.take_hold(pos);
                apply(&mut st, &self.spec, -1);
                self.ledger.pending_holds.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        };
        if actual.cost > 0 {
            st.balance_debits += actual.cost;
            entries.push(Entry {
                leg: 0,
                kind: "charge",
                debit: AcctKey {
                    kind: AcctKind::Balance,
                    owner: c.seq,
                    period: 0,
                },
                credit: AcctKey {
                    kind: AcctKind::Revenue,
                    owner: tenant_seq,
                    period: 0,
                },
                amount: actual.cost,
            });
        }
        for (i, l) in self.spec.legs.iter().enumerate() {
            let amt = actual.legs.get(i).copied().unwrap_or(0);
            if amt > 0 {
                st.counters.get_mut(l.acct).posted += amt;
                entries.push(leg_entry(i + 1, l.acct, amt));
            }
        }
        if !self.spec.tenant_legs.is_empty() {
            let mut ts = c.tenant.state.lock();
            for (i, l) in self.spec.tenant_legs.iter().enumerate() {
                if had {
                    ts.counters.get_mut(l.acct).pending -= l.amount;
                }
                let amt = actual.tenant_legs.get(i).copied().unwrap_or(0);
                if amt > 0 {
                    ts.counters.get_mut(l.acct).posted += amt;
                    entries.push(leg_entry(100 + i, l.acct, amt));
                }
            }
        }
        let balance_after = st.posted_balance();
        let legs_after = self
            .spec
            .legs
            .iter()
            .map(|l| {
                let c = st.counters.get(&l.acct);
                c.posted + c.pending
            })
            .collect();
        Posting {
            entries,
            balance_after,
            hold_had_expired: !had,
            legs_after,
        }
    }
}

fn leg_entry(leg: usize, acct: AcctKey, amount: i64) -> Entry {
    let kind = match acct.kind {
        AcctKind::QuotaRequests | AcctKind::QuotaBytes => "quota",
        _ => "cap",
    };
    Entry {
        leg: leg as u16,
        kind,
        debit: acct,
        credit: AcctKey {
            kind: acct.kind.sink(),
            owner: 0,
            period: 0,
        },
        amount,
    }
}

/// Post units that were only known after the response was released (the bytes of a streamed
/// response without `Content-Length`) to a consumer counter, and return the entry for the
/// journal. Usage that happened is never dropped, even past a limit.
pub fn post_units(consumer: &ConsumerEntry, acct: AcctKey, amount: i64, leg: u16) -> Option<Entry> {
    if amount <= 0 {
        return None;
    }
    consumer.state.lock().counters.get_mut(acct).posted += amount;
    let mut e = leg_entry(0, acct, amount);
    e.leg = leg;
    Some(e)
}

/// Undo a posting in memory (its journal write failed, so the client is told it failed).
pub fn revert_posting(consumer: &ConsumerEntry, posting: &Posting) {
    let mut st = consumer.state.lock();
    for e in &posting.entries {
        match e.debit.kind {
            AcctKind::Balance => st.balance_debits -= e.amount,
            AcctKind::CapTenant => {
                let mut ts = consumer.tenant.state.lock();
                ts.counters.get_mut(e.debit).posted -= e.amount;
            }
            _ => st.counters.get_mut(e.debit).posted -= e.amount,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.forget(self.id, self.expires_ms);
            if release_hold(&self.consumer, self.id) {
                self.ledger.pending_holds.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{SubStatus, TenantEntry};
    use proptest::prelude::*;

    fn consumer(balance: i64) -> Arc<ConsumerEntry> {
        let tenant = Arc::new(TenantEntry {
            id: "t".into(),
            seq: 1,
            name: "T".into(),
            contact_email: None,
            upgrade_url: None,
            top_up_url: None,
            state: Arc::new(Mutex::new(TenantState::default())),
        });
        let mut st = ConsumerState::new(Subscription {
            plan: "p".into(),
            status: SubStatus::Active,
            anchor_ms: 0,
            trial_end_ms: crate::OptMs::NONE,
            grace_until_ms: crate::OptMs::NONE,
        });
        st.balance_credits = balance;
        Arc::new(ConsumerEntry {
            id: "c".into(),
            seq: 7,
            tenant,
            state: Mutex::new(st),
            rate_tat: AtomicU64::new(0),
        })
    }

    fn quota(limit: i64) -> Leg {
        Leg {
            acct: AcctKey {
                kind: AcctKind::QuotaRequests,
                owner: 7,
                period: 100,
            },
            amount: 1,
            limit: Some(limit),
        }
    }

    fn tenant_cap(limit: i64, amount: i64) -> Leg {
        Leg {
            acct: AcctKey {
                kind: AcctKind::CapTenant,
                owner: 1,
                period: 100,
            },
            amount,
            limit: Some(limit),
        }
    }

    #[test]
    fn all_or_nothing_when_a_later_leg_refuses() {
        let l = LedgerShared::new(1000);
        let c = consumer(1_000);
        let spec = ReserveSpec {
            balance: 10,
            legs: vec![quota(5)],
            tenant_legs: vec![tenant_cap(5, 10)],
        };
        let err = l.reserve(&c, spec, 0).unwrap_err();
        assert!(matches!(err, Denied::Limit { limit: 5, .. }));
        let st = c.state.lock();
        assert_eq!(st.balance_pending, 0);
        assert_eq!(st.counters.get(&quota(5).acct), Counter::default());
        assert_eq!(
            c.tenant.state.lock().counters.get(&tenant_cap(5, 1).acct),
            Counter::default()
        );
    }

    #[test]
    fn settle_posts_actual_and_releases_rest() {
        let l = LedgerShared::new(1000);
        let c = consumer(1_000);
        let h = l
            .reserve(
                &c,
                ReserveSpec {
                    balance: 400,
                    legs: vec![quota(10)],
                    tenant_legs: vec![],
                },
                0,
            )
            .unwrap();
        assert_eq!(c.state.lock().available(), 600);
        let p = h.settle(&Actual {
            cost: 250,
            legs: vec![1],
            tenant_legs: vec![],
        });
        assert_eq!(p.balance_after, 750);
        assert_eq!(p.entries.len(), 2);
        let st = c.state.lock();
        assert_eq!(st.available(), 750);
        assert_eq!(st.balance_pending, 0);
        assert_eq!(
            st.counters.get(&quota(10).acct),
            Counter {
                posted: 1,
                pending: 0
            }
        );
        assert_eq!(l.pending_holds(), 0);
        assert_eq!(l.expiry_len(), 0, "a settled hold leaves the expiry index");
    }

    /// Memory stays bounded by what is in flight: a gateway settling thousands of requests a
    /// second keeps nothing per request for the hold TTL.
    #[test]
    fn settled_and_dropped_holds_leave_nothing_behind() {
        let l = LedgerShared::new(120_000);
        let c = consumer(1_000_000);
        let spec = ReserveSpec {
            balance: 1,
            ..Default::default()
        };
        for i in 0..10_000 {
            let h = l.reserve(&c, spec.clone(), i).unwrap();
            if i % 2 == 0 {
                h.settle(&Actual {
                    cost: 1,
                    ..Default::default()
                });
            } else {
                drop(h);
            }
        }
        assert_eq!(l.expiry_len(), 0);
        assert_eq!(l.pending_holds(), 0);
        let in_flight = l.reserve(&c, spec, 0).unwrap();
        assert_eq!(l.expiry_len(), 1);
        assert_eq!(l.sweep(120_000), 1);
        assert_eq!(l.expiry_len(), 0);
        drop(in_flight);
        assert_eq!(c.state.lock().available(), 1_000_000 - 5_000);
    }

    #[test]
    fn dropped_hold_is_released_and_swept_hold_still_charges() {
        let l = LedgerShared::new(1000);
        let c = consumer(100);
        let h = l
            .reserve(
                &c,
                ReserveSpec {
                    balance: 100,
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        drop(h);
        assert_eq!(c.state.lock().available(), 100);
        assert_eq!(l.expiry_len(), 0);
        let h = l
            .reserve(
                &c,
                ReserveSpec {
                    balance: 100,
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        assert_eq!(l.sweep(999), 0);
        assert_eq!(l.sweep(1000), 1);
        assert_eq!(c.state.lock().available(), 100);
        assert_eq!(l.pending_holds(), 0);
        let p = h.settle(&Actual {
            cost: 100,
            ..Default::default()
        });
        assert!(p.hold_had_expired);
        assert_eq!(c.state.lock().available(), 0);
    }

    #[test]
    fn legs_of_a_charge_have_distinct_ids() {
        let l = LedgerShared::new(1000);
        let c = consumer(1_000);
        let spec = ReserveSpec {
            balance: 10,
            legs: vec![quota(5)],
            tenant_legs: vec![tenant_cap(50, 10)],
        };
        let h = l.reserve(&c, spec, 0).unwrap();
        let p = h.settle(&Actual {
            cost: 10,
            legs: vec![1],
            tenant_legs: vec![10],
        });
        let mut legs: Vec<u16> = p.entries.iter().map(|e| e.leg).collect();
        legs.sort_unstable();
        legs.dedup();
        assert_eq!(legs.len(), 3);
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let l = LedgerShared::new(60_000);
        let c = consumer(137 * 10);
        let ok = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (l, c, ok) = (&l, &c, &ok);
                s.spawn(move || {
                    for _ in 0..100 {
                        if let Ok(h) = l.reserve(
                            c,
                            ReserveSpec {
                                balance: 10,
                                ..Default::default()
                            },
                            0,
                        ) {
                            ok.fetch_add(1, Ordering::SeqCst);
                            h.settle(&Actual {
                                cost: 10,
                                ..Default::default()
                            });
                        }
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::SeqCst), 137);
        assert_eq!(c.state.lock().available(), 0);
    }

    proptest! {
        /// Any interleaving of reserve / settle / release / sweep keeps: available ≥ 0 when no
        /// overrun is posted, pending equals the sum of live holds, and Σ debits = Σ credits of
        /// the produced entries.
        #[test]
        fn ledger_invariants(ops in proptest::collection::vec((0u8..4, 1i64..50, 0i64..60), 1..200)) {
            let l = LedgerShared::new(100);
            let c = consumer(500);
            let mut live: Vec<Hold> = Vec::new();
            let mut now = 0;
            let mut charged = 0;
            let mut overrun = false;
            for (op, amt, actual) in ops {
                match op {
                    0 => {
                        if let Ok(h) = l.reserve(&c, ReserveSpec { balance: amt, legs: vec![quota(20)], tenant_legs: vec![tenant_cap(300, amt)] }, now) {
                            live.push(h);
                        }
                    }
                    1 => if let Some(h) = live.pop() {
                        let cost = actual.min(h.spec().balance);
                        let tl = vec![cost];
                        let p = h.settle(&Actual { cost, legs: vec![1], tenant_legs: tl });
                        charged += cost;
                        overrun |= p.hold_had_expired;
                        let d: i64 = p.entries.iter().map(|e| e.amount).sum();
                        prop_assert!(d >= 0);
                    },
                    2 => { live.pop(); }
                    _ => { now += 60; l.sweep(now); }
                }
                let st = c.state.lock();
                prop_assert!(overrun || st.available() >= 0);
                prop_assert_eq!(st.balance_debits, charged);
                let live_sum: i64 = st.holds.iter().map(|h| h.spec.balance).sum();
                prop_assert_eq!(st.balance_pending, live_sum);
                let q = st.counters.get(&quota(20).acct);
                prop_assert!(overrun || q.posted + q.pending <= 20);
                drop(st);
                // The expiry index holds exactly the holds still pending.
                prop_assert_eq!(l.expiry_len() as i64, l.pending_holds());
            }
            drop(live);
            prop_assert_eq!(l.expiry_len(), 0);
            prop_assert_eq!(c.state.lock().balance_pending, 0);
            prop_assert_eq!(c.tenant.state.lock().counters.get(&tenant_cap(300, 1).acct).pending, 0);
        }
    }
}
