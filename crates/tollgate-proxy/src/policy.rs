//! The payment gate's decisions, in the fixed documented order: subscription state →
//! entitlement → quota → spending cap → prepaid balance. The checks that need counters are
//! expressed as one [`ReserveSpec`] so the ledger takes every leg or none.

use std::cell::RefCell;
use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use http::HeaderValue;

use tollgate_core::config::{CapScope, Overage};
use tollgate_core::period::{period_containing, Period, PeriodKind};
use tollgate_core::{ErrorCode, Money};
use tollgate_store::{
    AcctKey, AcctKind, ConsumerEntry, Denied, KeyEntry, Leg, ReserveSpec, SubStatus, Subscription,
};

use crate::respond::Reject;
use crate::snapshot::{Plan, Route};

/// What the gate decided to reserve, with what is needed to explain a refusal.
#[derive(Debug)]
pub struct Gate {
    /// The reservation.
    pub spec: ReserveSpec,
    /// Price of this request.
    pub price: Money,
    /// The plan's period for this consumer.
    pub period: Period,
    /// The end of `period` in RFC 3339 (the quota reset header).
    pub period_end: HeaderValue,
    /// Index in `spec.legs` of the request quota leg.
    pub quota_leg: Option<usize>,
    /// Index in `spec.legs` of the byte quota leg.
    pub bytes_leg: Option<usize>,
}

/// A period and its end as header text, computed once per billing period.
#[derive(Clone)]
struct KnownPeriod {
    period: Period,
    end: HeaderValue,
}

/// At most this many periods (distinct anchors) are remembered per worker thread; past that the
/// cache starts over. An entry, with its header text, takes about 160 bytes: 2.6 MB per thread
/// at most. With more active anchors than this, a request costs what it did without the cache.
const PERIODS_KEPT: usize = 16_384;

thread_local! {
    /// The periods computed on this thread, by kind, timezone and anchor. A period depends on
    /// nothing else but which period `now` falls in, so an entry is reused while `now` is
    /// inside it: on every governed request this saves two timezone conversions and the RFC
    /// 3339 formatting of the reset time.
    static PERIODS: RefCell<HashMap<(PeriodKind, Tz, i64), KnownPeriod>> =
        RefCell::new(HashMap::new());
}

/// The period of `kind` anchored at `anchor_ms` (ms since the epoch) in `tz` containing `now`,
/// with its end as header text.
fn known_period(kind: PeriodKind, tz: Tz, anchor_ms: i64, now: DateTime<Utc>) -> KnownPeriod {
    let compute = || {
        let period = period_containing(kind, tz, ms_to_utc(anchor_ms), now);
        let end = HeaderValue::from_str(&period.end.to_rfc3339())
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        KnownPeriod { period, end }
    };
    PERIODS
        .try_with(|cell| {
            let Ok(mut map) = cell.try_borrow_mut() else {
                return compute();
            };
            let key = (kind, tz, anchor_ms);
            if let Some(k) = map.get(&key) {
                if k.period.start <= now && now < k.period.end {
                    return k.clone();
                }
            }
            let k = compute();
            if map.len() >= PERIODS_KEPT {
                map.clear();
            }
            map.insert(key, k.clone());
            k
        })
        .unwrap_or_else(|_| compute())
}

/// The plan's tenant-wide period (calendar-aligned, the same for every consumer) containing
/// `now`.
fn tenant_period(plan: &Plan, now: DateTime<Utc>) -> Period {
    known_period(plan.cfg.period, plan.tz, plan.calendar_anchor_ms, now).period
}

fn ms_to_utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// Step 1: the subscription must allow use at `now_ms`.
pub fn check_subscription(sub: &Subscription, now_ms: i64) -> Result<(), Reject> {
    let inactive = |reason: &str| {
        Reject::new(ErrorCode::SubscriptionInactive)
            .detail("status", sub.status.as_str())
            .detail("reason", reason)
            .detail("current_plan", sub.plan.as_ref())
            .detail("scope", "consumer")
    };
    match sub.status {
        SubStatus::Active => Ok(()),
        SubStatus::Trialing => match sub.trial_end_ms.get() {
            Some(end) if end <= now_ms => {
                Err(inactive("trial_ended").detail("trial_ended_at", ms_to_utc(end).to_rfc3339()))
            }
            _ => Ok(()),
        },
        SubStatus::PastDue => match sub.grace_until_ms.get() {
            Some(g) if g > now_ms => Ok(()),
            g => Err(inactive("grace_period_over")
                .detail_opt("grace_until", g.map(|g| ms_to_utc(g).to_rfc3339()))
                .message("Your subscription is past due and its grace period is over.")),
        },
        SubStatus::PendingApproval => Err(Reject::new(ErrorCode::ApprovalPending)
            .detail("status", sub.status.as_str())
            .detail("current_plan", sub.plan.as_ref())
            .detail("scope", "consumer")),
        SubStatus::Suspended => Err(inactive("suspended")),
        SubStatus::Canceled => Err(inactive("canceled")),
        SubStatus::Expired => Err(inactive("expired")),
    }
}

/// `monthly_requests`, `daily_bytes`, …
pub fn limit_type(kind: PeriodKind, what: &str) -> String {
    let p = match kind {
        PeriodKind::Day => "daily",
        PeriodKind::Week => "weekly",
        PeriodKind::Month => "monthly",
    };
    format!("{p}_{what}")
}

/// Steps 2–5: entitlement, then the reservation spec for quota, caps and balance.
#[allow(clippy::too_many_arguments)]
pub fn build(
    plan: &Plan,
    route: &Route,
    key: &KeyEntry,
    consumer: &ConsumerEntry,
    sub: &Subscription,
    req_bytes: u64,
    now: DateTime<Utc>,
    over_quota: bool,
) -> Result<Gate, Reject> {
    if !plan.entitled(&route.cfg.id) {
        return Err(Reject::new(ErrorCode::PlanUpgradeRequired)
            .detail("current_plan", plan.cfg.id.as_str())
            .detail("route", route.cfg.id.as_str())
            .detail("scope", "plan"));
    }
    let price = plan.price(route);
    let KnownPeriod {
        period,
        end: period_end,
    } = known_period(plan.cfg.period, plan.tz, sub.anchor_ms, now);
    let pstart = period.start.timestamp();
    let mut spec = ReserveSpec {
        balance: price.micros(),
        legs: Vec::new(),
        tenant_legs: Vec::new(),
    };
    let mut quota_leg = None;
    let mut bytes_leg = None;
    // Beyond the quota with `allow_and_bill` / `degrade`, the legs still count but no longer limit.
    let limiting = !over_quota || plan.overage() == Overage::Block;
    if let Some(q) = plan.cfg.quotas.requests {
        quota_leg = Some(spec.legs.len());
        spec.legs.push(Leg {
            acct: AcctKey {
                kind: AcctKind::QuotaRequests,
                owner: consumer.seq,
                period: pstart,
            },
            amount: 1,
            limit: limiting.then_some(q as i64),
        });
    }
    if let Some(q) = plan.cfg.quotas.bytes {
        bytes_leg = Some(spec.legs.len());
        spec.legs.push(Leg {
            acct: AcctKey {
                kind: AcctKind::QuotaBytes,
                owner: consumer.seq,
                period: pstart,
            },
            amount: req_bytes as i64,
            limit: limiting.then_some(q as i64),
        });
    }
    if price.micros() > 0 {
        for cap in &plan.cfg.spending_caps {
            let leg = |kind, owner, period| Leg {
                acct: AcctKey {
                    kind,
                    owner,
                    period,
                },
                amount: price.micros(),
                limit: Some(cap.amount.micros()),
            };
            match cap.scope {
                CapScope::Consumer => {
                    spec.legs
                        .push(leg(AcctKind::CapConsumer, consumer.seq, pstart))
                }
                CapScope::Key => spec.legs.push(leg(AcctKind::CapKey, key.seq, pstart)),
                CapScope::Tenant => {
                    let tp = tenant_period(plan, now);
                    spec.tenant_legs.push(leg(
                        AcctKind::CapTenant,
                        consumer.tenant.seq,
                        tp.start.timestamp(),
                    ))
                }
            }
        }
    }
    Ok(Gate {
        spec,
        price,
        period,
        period_end,
        quota_leg,
        bytes_leg,
    })
}

/// URLs for the remedy, tenant override first.
pub struct Remedy<'a> {
    /// Upgrade page.
    pub upgrade_url: Option<&'a str>,
    /// Top-up page.
    pub top_up_url: Option<&'a str>,
    /// Currency code.
    pub currency: &'a str,
}

/// Explain a refused reservation.
pub fn explain(
    denied: Denied,
    gate: &Gate,
    plan: &Plan,
    now: DateTime<Utc>,
    remedy: &Remedy<'_>,
) -> Reject {
    match denied {
        Denied::Balance { available, needed } => {
            let short = needed - available.max(0);
            Reject::new(ErrorCode::InsufficientFunds)
                .detail("current_balance", Money(available).to_string())
                .detail("estimated_cost", Money(needed).to_string())
                .detail("required_to_top_up", Money(short).to_string())
                .detail("currency", remedy.currency)
                .detail_opt("top_up_url", remedy.top_up_url)
                .detail("scope", "consumer")
                .link(remedy.top_up_url, "payment")
        }
        Denied::Limit {
            acct,
            used,
            limit,
            needed,
        } => {
            let resets_at;
            let retry = match acct.kind {
                AcctKind::CapTenant => {
                    let tp = tenant_period(plan, now);
                    resets_at = tp.end;
                    (tp.end - now).num_seconds().max(1) as u64
                }
                _ => {
                    resets_at = gate.period.end;
                    (gate.period.end - now).num_seconds().max(1) as u64
                }
            };
            match acct.kind {
                AcctKind::QuotaRequests | AcctKind::QuotaBytes => {
                    let what = if acct.kind == AcctKind::QuotaRequests {
                        "requests"
                    } else {
                        "bytes"
                    };
                    Reject::new(ErrorCode::QuotaExceeded)
                        .detail("current_plan", plan.cfg.id.as_str())
                        .detail("limit_type", limit_type(plan.cfg.period, what))
                        .detail("limit", limit)
                        .detail("current_usage", used)
                        .detail("resets_at", resets_at.to_rfc3339())
                        .detail_opt("upgrade_url", remedy.upgrade_url)
                        .detail("scope", "consumer")
                        .retry_after(retry)
                        .link(remedy.upgrade_url, "payment")
                }
                _ => {
                    let scope = match acct.kind {
                        AcctKind::CapKey => CapScope::Key,
                        AcctKind::CapTenant => CapScope::Tenant,
                        _ => CapScope::Consumer,
                    };
                    Reject::new(ErrorCode::SpendingCapReached)
                        .detail("cap", Money(limit).to_string())
                        .detail("current_spend", Money(used).to_string())
                        .detail("estimated_cost", Money(needed).to_string())
                        .detail("currency", remedy.currency)
                        .detail("resets_at", resets_at.to_rfc3339())
                        .detail("scope", scope.as_str())
                        .retry_after(retry)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tollgate_core::config::PlanConfig;
    use tollgate_core::period::calendar_anchor;

    #[test]
    fn a_remembered_period_is_the_computed_one_at_every_instant_across_boundaries() {
        let zones = [Tz::UTC, Tz::America__New_York, Tz::Asia__Kolkata];
        let kinds = [PeriodKind::Day, PeriodKind::Week, PeriodKind::Month];
        // Anchors on a month's last day and just before a DST change, among others.
        let anchors = [
            "2027-01-31T10:00:00Z",
            "2027-03-13T06:30:00Z",
            "2026-12-01T00:00:00Z",
        ]
        .map(|s| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis());
        let start = ms_to_utc(anchors[0]);
        let mut checked = 0;
        for kind in kinds {
            for tz in zones {
                // Every 7 hours for 100 days, over the same keys: each step either reuses the
                // remembered period or crosses into the next one.
                for step in 0..(100 * 24 / 7) {
                    let now = start + chrono::Duration::hours(7 * step);
                    for &anchor in &anchors {
                        let got = known_period(kind, tz, anchor, now);
                        let want = period_containing(kind, tz, ms_to_utc(anchor), now);
                        assert_eq!(got.period, want, "{kind:?} {tz} {anchor} {now}");
                        assert_eq!(got.end.to_str().unwrap(), want.end.to_rfc3339());
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 9 * 342 * 3);
        // Moving back in time (a clock step) gets the earlier period, not the remembered one.
        let now = start + chrono::Duration::days(60);
        let later = known_period(PeriodKind::Day, Tz::UTC, anchors[0], now);
        let back = now - chrono::Duration::days(2);
        let earlier = known_period(PeriodKind::Day, Tz::UTC, anchors[0], back);
        assert!(earlier.period.end <= later.period.start);
        assert!(earlier.period.start <= back && back < earlier.period.end);
        // More anchors than are kept: the cache stays bounded and answers stay right.
        for i in 0..(PERIODS_KEPT as i64 + 10) {
            let anchor = anchors[2] + i * 1_000;
            let got = known_period(PeriodKind::Month, Tz::UTC, anchor, now);
            assert_eq!(
                got.period,
                period_containing(PeriodKind::Month, Tz::UTC, ms_to_utc(anchor), now)
            );
            assert!(PERIODS.with(|m| m.borrow().len()) <= PERIODS_KEPT);
        }
    }

    #[test]
    fn a_tenant_period_is_the_calendar_aligned_one_in_the_plans_timezone() {
        for (period, tz) in [("month", "Europe/Berlin"), ("day", "America/New_York")] {
            let cfg: PlanConfig = toml::from_str(&format!(
                "id = \"p\"\nname = \"P\"\nperiod = \"{period}\"\ntimezone = \"{tz}\"\nroutes = [\"*\"]"
            ))
            .unwrap();
            let tz: Tz = tz.parse().unwrap();
            let plan = Plan {
                calendar_anchor_ms: calendar_anchor(tz).timestamp_millis(),
                tz,
                all_routes: true,
                degrade: None,
                cfg,
            };
            let now = DateTime::parse_from_rfc3339("2027-03-28T01:30:00Z")
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(
                tenant_period(&plan, now),
                period_containing(plan.cfg.period, tz, calendar_anchor(tz), now)
            );
        }
    }
}
