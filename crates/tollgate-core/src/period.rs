//! Billing periods computed from an anchor instant and a timezone. A period is `[start, end)`
//! in UTC; months keep the anchor's day of month, clamped to the month's length (an anchor on
//! the 31st gives Feb 28/29, then back to the 31st), so periods never overlap or leave gaps.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Length of a billing period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    /// Calendar day.
    Day,
    /// Seven days.
    Week,
    /// Calendar month, anchored on a day of the month.
    #[default]
    Month,
}

/// One billing period, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    /// First instant of the period.
    pub start: DateTime<Utc>,
    /// First instant after the period.
    pub end: DateTime<Utc>,
}

fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    match (
        NaiveDate::from_ymd_opt(ny, nm, 1),
        NaiveDate::from_ymd_opt(y, m, 1),
    ) {
        (Some(a), Some(b)) => (a - b).num_days() as u32,
        _ => 28,
    }
}

fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        // In a DST gap: the instant one hour later exists.
        LocalResult::None => match tz.from_local_datetime(&(local + Duration::hours(1))) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
            LocalResult::None => Utc.from_utc_datetime(&local),
        },
    }
}

/// The start of the `n`-th period after the anchor's (negative `n` goes back).
fn nth_start(kind: PeriodKind, tz: Tz, anchor_local: NaiveDateTime, n: i64) -> DateTime<Utc> {
    let local = match kind {
        PeriodKind::Day => anchor_local + Duration::days(n),
        PeriodKind::Week => anchor_local + Duration::days(7 * n),
        PeriodKind::Month => {
            let months0 =
                i64::from(anchor_local.year()) * 12 + i64::from(anchor_local.month0()) + n;
            let y = months0.div_euclid(12) as i32;
            let m = months0.rem_euclid(12) as u32 + 1;
            let d = anchor_local.day().min(days_in_month(y, m));
            match NaiveDate::from_ymd_opt(y, m, d) {
                Some(date) => date.and_time(anchor_local.time()),
                None => anchor_local,
            }
        }
    };
    local_to_utc(tz, local)
}

/// The period of `kind`, anchored at `anchor` in `tz`, that contains `now`.
pub fn period_containing(
    kind: PeriodKind,
    tz: Tz,
    anchor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Period {
    let anchor_local = anchor.with_timezone(&tz).naive_local();
    let now_local = now.with_timezone(&tz).naive_local();
    let mut n = match kind {
        PeriodKind::Day => (now_local - anchor_local).num_days(),
        PeriodKind::Week => (now_local - anchor_local).num_days().div_euclid(7),
        PeriodKind::Month => {
            (i64::from(now_local.year()) - i64::from(anchor_local.year())) * 12
                + i64::from(now_local.month0())
                - i64::from(anchor_local.month0())
        }
    };
    // The estimate is off by at most one in either direction; walk to the right period. Each
    // boundary is a timezone conversion, so the two in hand move along instead of being
    // computed again (two conversions in the common case).
    let mut start = nth_start(kind, tz, anchor_local, n);
    let mut end = nth_start(kind, tz, anchor_local, n + 1);
    for _ in 0..4 {
        if start > now {
            n -= 1;
            end = start;
            start = nth_start(kind, tz, anchor_local, n);
        } else if end <= now {
            n += 1;
            start = end;
            end = nth_start(kind, tz, anchor_local, n + 1);
        } else {
            break;
        }
    }
    Period { start, end }
}

/// The calendar-aligned anchor (midnight of the 1st of January 2000 local time), used for
/// tenant-wide limits whose periods must be the same for every consumer.
pub fn calendar_anchor(tz: Tz) -> DateTime<Utc> {
    let local = NaiveDate::from_ymd_opt(2000, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    match local {
        Some(l) => local_to_utc(tz, l),
        None => DateTime::<Utc>::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn month_end_anchor_clamps_without_overlap() {
        let anchor = utc("2027-01-31T10:00:00Z");
        let p = period_containing(
            PeriodKind::Month,
            Tz::UTC,
            anchor,
            utc("2027-02-15T00:00:00Z"),
        );
        assert_eq!(p.start, utc("2027-01-31T10:00:00Z"));
        assert_eq!(p.end, utc("2027-02-28T10:00:00Z"));
        let q = period_containing(
            PeriodKind::Month,
            Tz::UTC,
            anchor,
            utc("2027-03-01T00:00:00Z"),
        );
        assert_eq!(q.start, utc("2027-02-28T10:00:00Z"));
        assert_eq!(q.end, utc("2027-03-31T10:00:00Z"));
        // Leap year.
        let r = period_containing(
            PeriodKind::Month,
            Tz::UTC,
            anchor,
            utc("2028-02-29T12:00:00Z"),
        );
        assert_eq!(r.start, utc("2028-02-29T10:00:00Z"));
    }

    #[test]
    fn resets_at_local_midnight_in_plan_timezone() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let anchor = calendar_anchor(tz);
        let p = period_containing(PeriodKind::Month, tz, anchor, utc("2027-07-01T03:59:59Z"));
        // 2027-07-01T03:59:59Z is still June 30 in New York (EDT, UTC-4).
        assert_eq!(p.start, utc("2027-06-01T04:00:00Z"));
        assert_eq!(p.end, utc("2027-07-01T04:00:00Z"));
        let d = period_containing(PeriodKind::Day, tz, anchor, utc("2027-01-10T12:00:00Z"));
        assert_eq!(d.start, utc("2027-01-10T05:00:00Z"));
    }

    proptest! {
        #[test]
        fn period_contains_now_and_is_contiguous(
            a in 946_684_800i64..1_900_000_000, off in 0i64..400_000_000, k in 0usize..3, z in 0usize..3
        ) {
            let kind = [PeriodKind::Day, PeriodKind::Week, PeriodKind::Month][k];
            let tz: Tz = ["UTC", "Europe/Berlin", "Australia/Lord_Howe"][z].parse().unwrap();
            let anchor = Utc.timestamp_opt(a, 0).unwrap();
            let now = Utc.timestamp_opt(a + off, 0).unwrap();
            let p = period_containing(kind, tz, anchor, now);
            prop_assert!(p.start <= now && now < p.end);
            let next = period_containing(kind, tz, anchor, p.end);
            prop_assert_eq!(next.start, p.end);
        }
    }
}
