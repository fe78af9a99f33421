//! The payment gate's decisions, in the fixed documented order: subscription state →
//! entitlement → quota → spending cap → prepaid balance. The checks that need counters are
//! expressed as one [`ReserveSpec`] so the ledger takes every leg or none.

use chrono::{DateTime, TimeZone, Utc};

use tollgate_core::config::{CapScope, Overage};
use tollgate_core::period::{calendar_anchor, period_containing, Period, PeriodKind};
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
    /// Index in `spec.legs` of the request quota leg.
    pub quota_leg: Option<usize>,
    /// Index in `spec.legs` of the byte quota leg.
    pub bytes_leg: Option<usize>,
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
    let period = period_containing(plan.cfg.period, plan.tz, ms_to_utc(sub.anchor_ms), now);
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
                    let tp =
                        period_containing(plan.cfg.period, plan.tz, calendar_anchor(plan.tz), now);
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
                    let tp =
                        period_containing(plan.cfg.period, plan.tz, calendar_anchor(plan.tz), now);
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
