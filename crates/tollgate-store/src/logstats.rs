//! Counters of the charge log writer: records and group commits since start, how long each
//! `fdatasync` took, and how long each record waited from its hand-over to the writer until
//! its batch was written (and, in strict mode, synced), in fixed buckets. A strict-mode
//! response waits for one such sync, so the sync latency of the disk under the gateway's own
//! load is the floor under its latency; the records' waits weigh each sync by the records it
//! held and add the time a record queued behind the sync before it, so they are the share of
//! a response's latency that durability takes. Operators read both from the admin API
//! (`GET /v1/journal`), and `bench/run` reads them around its fixed-rate lane. Recording is a
//! few relaxed atomic adds on the writer thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds, inclusive) of the sync latency buckets; one more bucket holds
/// everything slower than the last bound.
pub const SYNC_BUCKETS_US: [u64; 27] = [
    25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 700, 800, 1_000, 1_250,
    1_500, 2_000, 2_500, 3_000, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Live counters, shared by the log writer (which records) and readers (which snapshot).
#[derive(Debug, Default)]
pub struct LogStats {
    records: AtomicU64,
    commits: AtomicU64,
    syncs: Latencies,
    waits: Latencies,
    logged_lsn: AtomicU64,
    applied_lsn: AtomicU64,
}

/// Durations counted: how many, their sum and how many per bucket of [`SYNC_BUCKETS_US`].
#[derive(Debug, Default)]
struct Latencies {
    n: AtomicU64,
    total_us: AtomicU64,
    buckets: [AtomicU64; SYNC_BUCKETS_US.len() + 1],
}

impl Latencies {
    fn record(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = SYNC_BUCKETS_US.partition_point(|&b| b < us);
        self.n.fetch_add(1, Ordering::Relaxed);
        self.total_us.fetch_add(us, Ordering::Relaxed);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(count, sum in microseconds, per bucket)`.
    fn load(&self) -> (u64, u64, Vec<u64>) {
        (
            self.n.load(Ordering::Relaxed),
            self.total_us.load(Ordering::Relaxed),
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

impl LogStats {
    /// One group commit of `records` records was appended.
    pub fn record_commit(&self, records: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.records.fetch_add(records, Ordering::Relaxed);
    }

    /// The log holds every record up to `lsn` (set by the writer after each append).
    pub fn set_logged(&self, lsn: u64) {
        self.logged_lsn.store(lsn, Ordering::Relaxed);
    }

    /// The database holds every record up to `lsn` (set by the projector after each commit).
    pub fn set_applied(&self, lsn: u64) {
        self.applied_lsn.store(lsn, Ordering::Relaxed);
    }

    /// Records logged but not applied to the database yet.
    pub fn backlog(&self) -> u64 {
        let applied = self.applied_lsn.load(Ordering::Relaxed);
        self.logged_lsn
            .load(Ordering::Relaxed)
            .saturating_sub(applied)
    }

    /// One `fdatasync` took `took`.
    pub fn record_sync(&self, took: Duration) {
        self.syncs.record(took);
    }

    /// One record waited `took` from its hand-over to the writer until its batch was written
    /// (and synced, when it was).
    pub fn record_wait(&self, took: Duration) {
        self.waits.record(took);
    }

    /// The counters now (each read on its own: a snapshot taken while the writer runs may be
    /// off by the commit in progress).
    pub fn snapshot(&self) -> LogStatsSnapshot {
        let (syncs, sync_us_total, buckets) = self.syncs.load();
        let (waits, wait_us_total, wait_buckets) = self.waits.load();
        LogStatsSnapshot {
            records: self.records.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            syncs,
            sync_us_total,
            logged_lsn: self.logged_lsn.load(Ordering::Relaxed),
            applied_lsn: self.applied_lsn.load(Ordering::Relaxed),
            buckets,
            waits,
            wait_us_total,
            wait_buckets,
        }
    }
}

/// The upper bound of the bucket of `buckets` holding the `q`-quantile (`0 < q <= 1`): `None`
/// when they are empty, or when the quantile falls in the open last bucket.
fn bucket_quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || !(q > 0.0 && q <= 1.0) {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return SYNC_BUCKETS_US.get(i).copied();
        }
    }
    None
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatsSnapshot {
    /// Records appended to the log.
    pub records: u64,
    /// Group commits (one write of everything that had queued).
    pub commits: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Sum of the sync durations, microseconds.
    pub sync_us_total: u64,
    /// The last record in the log (its log sequence number).
    pub logged_lsn: u64,
    /// The last record applied to the database; `logged_lsn - applied_lsn` records wait in
    /// memory for the projector.
    pub applied_lsn: u64,
    /// Syncs per bucket: `buckets[i]` took at most `SYNC_BUCKETS_US[i]` microseconds (and more
    /// than the bound before it); the last entry counts those slower than every bound.
    pub buckets: Vec<u64>,
    /// Records whose wait was counted (those written; a failed write's records are not).
    pub waits: u64,
    /// Sum of the records' waits, microseconds.
    pub wait_us_total: u64,
    /// Records per bucket of [`SYNC_BUCKETS_US`] by how long each waited from its hand-over to
    /// the writer until its batch was written (and synced, when it was).
    pub wait_buckets: Vec<u64>,
}

impl LogStatsSnapshot {
    /// Records logged but not applied to the database yet, as of this snapshot.
    pub fn backlog(&self) -> u64 {
        self.logged_lsn.saturating_sub(self.applied_lsn)
    }

    /// The upper bound of the bucket holding the `q`-quantile sync (`0 < q <= 1`): that share
    /// of the syncs took at most this many microseconds. `None` with no syncs, or when the
    /// quantile falls in the open last bucket.
    pub fn sync_quantile_us(&self, q: f64) -> Option<u64> {
        bucket_quantile(&self.buckets, q)
    }

    /// Likewise for the records' waits: that share of the records waited at most this many
    /// microseconds from their hand-over until they were durable.
    pub fn wait_quantile_us(&self, q: f64) -> Option<u64> {
        bucket_quantile(&self.wait_buckets, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn syncs_land_in_the_bucket_whose_bound_holds_them() {
        let s = LogStats::default();
        for d in [0, 25, 26, 100, 101, 1_000_000, 1_000_001, 50_000_000] {
            s.record_sync(us(d));
        }
        let snap = s.snapshot();
        assert_eq!(snap.syncs, 8);
        assert_eq!(snap.buckets.len(), SYNC_BUCKETS_US.len() + 1);
        // 0 and 25 -> <=25; 26 -> <=50; 100 -> <=100; 101 -> <=125; 1 s -> last bound; above it
        // -> the open bucket.
        assert_eq!(snap.buckets[0], 2);
        assert_eq!(snap.buckets[1], 1);
        assert_eq!(snap.buckets[3], 1);
        assert_eq!(snap.buckets[4], 1);
        assert_eq!(snap.buckets[SYNC_BUCKETS_US.len() - 1], 1);
        assert_eq!(snap.buckets[SYNC_BUCKETS_US.len()], 2);
        assert_eq!(snap.buckets.iter().sum::<u64>(), 8);
        assert_eq!(
            snap.sync_us_total,
            25 + 26 + 100 + 101 + 1_000_000 + 1_000_001 + 50_000_000
        );
    }

    #[test]
    fn quantiles_read_the_bucket_bounds() {
        let s = LogStats::default();
        assert_eq!(s.snapshot().sync_quantile_us(0.5), None);
        // 98 fast syncs, one at 900 us, one at 4 ms.
        for _ in 0..98 {
            s.record_sync(us(140));
        }
        s.record_sync(us(900));
        s.record_sync(us(4_000));
        let snap = s.snapshot();
        assert_eq!(snap.sync_quantile_us(0.5), Some(150));
        assert_eq!(snap.sync_quantile_us(0.98), Some(150));
        assert_eq!(snap.sync_quantile_us(0.99), Some(1_000));
        assert_eq!(snap.sync_quantile_us(1.0), Some(5_000));
        assert_eq!(snap.sync_quantile_us(0.0), None);
        assert_eq!(snap.sync_quantile_us(1.5), None);
        s.record_sync(Duration::from_secs(5));
        assert_eq!(s.snapshot().sync_quantile_us(1.0), None);
    }

    #[test]
    fn record_waits_are_counted_apart_from_syncs() {
        let s = LogStats::default();
        s.record_sync(us(140));
        for w in [90, 160, 160, 2_200] {
            s.record_wait(us(w));
        }
        let snap = s.snapshot();
        assert_eq!((snap.syncs, snap.waits), (1, 4));
        assert_eq!(snap.wait_us_total, 90 + 160 + 160 + 2_200);
        assert_eq!(snap.wait_buckets.iter().sum::<u64>(), 4);
        assert_eq!(snap.buckets.iter().sum::<u64>(), 1);
        assert_eq!(snap.wait_quantile_us(0.5), Some(175));
        assert_eq!(snap.wait_quantile_us(0.99), Some(2_500));
        assert_eq!(snap.sync_quantile_us(0.99), Some(150));
    }

    #[test]
    fn commits_count_records() {
        let s = LogStats::default();
        s.record_commit(3);
        s.record_commit(1);
        let snap = s.snapshot();
        assert_eq!((snap.commits, snap.records), (2, 4));
    }
}
