//! Request and response bodies of the admin API. Requests reject unknown fields; money is a
//! decimal string in the configured currency; instants are RFC 3339.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_core::config::{CapScope, Overage, PlanConfig, RateScope};
use tollgate_core::period::PeriodKind;
use tollgate_store::{
    ConsumerView, EntryView, KeyView, LedgerCheck, SubStatus, TenantView, UsageTotals,
};
use utoipa::{IntoParams, ToSchema};

/// The error body of every failed request (the gateway's error contract).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// Stable UPPER_SNAKE code, e.g. `BAD_REQUEST`, `NOT_FOUND`, `UNAUTHENTICATED`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Code-specific details; `reason` says what was wrong, `field` names the input.
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Request id, also in the `x-request-id` header.
    pub request_id: String,
    /// Link to the reference entry of the code.
    pub docs_url: String,
}

/// A subscription state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for an administrator's approval.
    PendingApproval,
    /// In its trial.
    Trialing,
    /// Paid and in good standing.
    Active,
    /// A payment failed; works until `grace_until`.
    PastDue,
    /// Suspended.
    Suspended,
    /// Canceled.
    Canceled,
    /// Ran out.
    Expired,
}

impl From<Status> for SubStatus {
    fn from(s: Status) -> SubStatus {
        match s {
            Status::PendingApproval => SubStatus::PendingApproval,
            Status::Trialing => SubStatus::Trialing,
            Status::Active => SubStatus::Active,
            Status::PastDue => SubStatus::PastDue,
            Status::Suspended => SubStatus::Suspended,
            Status::Canceled => SubStatus::Canceled,
            Status::Expired => SubStatus::Expired,
        }
    }
}

/// Create or update a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantInput {
    /// Stable id: 1–64 letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Who consumers of this tenant should contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_email: Option<String>,
    /// Overrides the plan's upgrade URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_url: Option<String>,
    /// Overrides the plan's top-up URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up_url: Option<String>,
}

/// A tenant.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Contact.
    pub contact_email: Option<String>,
    /// Upgrade URL override.
    pub upgrade_url: Option<String>,
    /// Top-up URL override.
    pub top_up_url: Option<String>,
}

impl From<TenantView> for Tenant {
    fn from(t: TenantView) -> Self {
        Tenant {
            id: t.id,
            name: t.name,
            contact_email: t.contact_email,
            upgrade_url: t.upgrade_url,
            top_up_url: t.top_up_url,
        }
    }
}

/// A list of tenants.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    /// Tenants by id.
    pub items: Vec<Tenant>,
}

/// Create a consumer with a subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerInput {
    /// Id; `c_<random>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tenant id (must exist).
    pub tenant: String,
    /// Plan id (must exist in the configuration).
    pub plan: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Initial state; by default `pending_approval` when the plan requires approval,
    /// `trialing` when it has trial days, else `active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// A consumer and its subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Consumer {
    /// Id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// Plan id.
    pub plan: String,
    /// Subscription state.
    pub status: Status,
    /// Period anchor (RFC 3339).
    pub anchor: String,
    /// End of the trial (RFC 3339).
    pub trial_end: Option<String>,
    /// End of the grace period of a `past_due` subscription (RFC 3339).
    pub grace_until: Option<String>,
    /// Posted prepaid balance (decimal).
    pub balance: String,
    /// Balance held by in-flight requests (decimal).
    pub pending: String,
}

impl From<ConsumerView> for Consumer {
    fn from(c: ConsumerView) -> Self {
        let status = match SubStatus::parse(c.status) {
            Some(SubStatus::PendingApproval) => Status::PendingApproval,
            Some(SubStatus::Trialing) => Status::Trialing,
            Some(SubStatus::Active) => Status::Active,
            Some(SubStatus::PastDue) => Status::PastDue,
            Some(SubStatus::Canceled) => Status::Canceled,
            Some(SubStatus::Expired) => Status::Expired,
            Some(SubStatus::Suspended) | None => Status::Suspended,
        };
        Consumer {
            id: c.id,
            tenant: c.tenant,
            plan: c.plan,
            status,
            anchor: c.anchor,
            trial_end: c.trial_end,
            grace_until: c.grace_until,
            balance: c.balance,
            pending: c.pending,
        }
    }
}

/// A page of consumers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsumerList {
    /// Consumers by id.
    pub items: Vec<Consumer>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Filters of the consumer list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsumerListQuery {
    /// Only consumers of this tenant.
    pub tenant: Option<String>,
    /// Only consumers whose id sorts after this one (paging).
    pub after: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
}

/// Create an API key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyInput {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry (RFC 3339, in the future).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A sandbox (`tg_test_…`) key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<bool>,
}

/// An API key (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// Key id (the prefix part of the key string).
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
    /// Revocation, possibly in the future during a rotation overlap (RFC 3339).
    pub revoked_at: Option<String>,
}

impl From<KeyView> for ApiKey {
    fn from(k: KeyView) -> Self {
        ApiKey {
            id: k.id,
            consumer: k.consumer,
            name: k.name,
            test: k.test,
            created_at: k.created_at,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A newly created key: the full key string is shown this once and never again.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The full key string (`tg_live_<id>_<secret>`); store it now.
    pub secret: String,
    /// The key.
    pub key: ApiKey,
}

/// The result of a rotation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    /// The new key string, shown once.
    pub secret: String,
    /// The new key.
    pub key: ApiKey,
    /// The old key, revoked at the end of the overlap.
    pub previous: ApiKey,
}

/// A list of keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Keys in creation order.
    pub items: Vec<ApiKey>,
}

/// Rotate a key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// How long the old key keeps working, seconds (default 3600, at most 30 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_seconds: Option<u64>,
}

/// Quotas of a plan per period.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanQuotas {
    /// Requests per period.
    pub requests: Option<u64>,
    /// Body bytes per period.
    pub bytes: Option<u64>,
}

/// A spending cap.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanCap {
    /// `key`, `consumer` or `tenant`.
    pub scope: String,
    /// Most spent per period (decimal).
    pub amount: String,
}

/// A rate limit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanRateLimit {
    /// Requests per second.
    pub per_second: Option<u32>,
    /// Requests per minute.
    pub per_minute: Option<u32>,
    /// Burst.
    pub burst: Option<u32>,
    /// `key` or `consumer`.
    pub scope: String,
}

/// A plan, as configured (read-only through the API).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Plan {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `day`, `week` or `month`.
    pub period: String,
    /// IANA timezone periods reset in.
    pub timezone: String,
    /// Route ids the plan is entitled to (`*` = all).
    pub routes: Vec<String>,
    /// Quotas per period.
    pub quotas: PlanQuotas,
    /// Per-route prices (decimal).
    pub prices: BTreeMap<String, String>,
    /// Spending caps.
    pub spending_caps: Vec<PlanCap>,
    /// `block`, `allow_and_bill` or `degrade`.
    pub overage: String,
    /// Upstream for degraded requests.
    pub degrade_upstream: Option<String>,
    /// Trial days for new subscriptions.
    pub trial_days: u32,
    /// Grace days after a failed payment.
    pub grace_days: u32,
    /// New subscriptions wait for approval.
    pub requires_approval: bool,
    /// Upgrade URL.
    pub upgrade_url: Option<String>,
    /// Top-up URL.
    pub top_up_url: Option<String>,
    /// Rate limit.
    pub rate_limit: Option<PlanRateLimit>,
    /// Currency of the amounts.
    pub currency: String,
}

impl Plan {
    /// Render a configured plan.
    pub fn from_config(p: &PlanConfig, currency: &str) -> Self {
        Plan {
            id: p.id.clone(),
            name: p.name.clone(),
            period: match p.period {
                PeriodKind::Day => "day",
                PeriodKind::Week => "week",
                PeriodKind::Month => "month",
            }
            .into(),
            timezone: p.timezone.clone(),
            routes: p.routes.clone(),
            quotas: PlanQuotas {
                requests: p.quotas.requests,
                bytes: p.quotas.bytes,
            },
            prices: p
                .prices
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            spending_caps: p
                .spending_caps
                .iter()
                .map(|c| PlanCap {
                    scope: match c.scope {
                        CapScope::Key => "key",
                        CapScope::Consumer => "consumer",
                        CapScope::Tenant => "tenant",
                    }
                    .into(),
                    amount: c.amount.to_string(),
                })
                .collect(),
            overage: match p.overage {
                Overage::Block => "block",
                Overage::AllowAndBill => "allow_and_bill",
                Overage::Degrade => "degrade",
            }
            .into(),
            degrade_upstream: p.degrade_upstream.clone(),
            trial_days: p.trial_days,
            grace_days: p.grace_days,
            requires_approval: p.requires_approval,
            upgrade_url: p.upgrade_url.clone(),
            top_up_url: p.top_up_url.clone(),
            rate_limit: p.rate_limit.as_ref().map(|r| PlanRateLimit {
                per_second: r.per_second,
                per_minute: r.per_minute,
                burst: r.burst,
                scope: match r.scope {
                    RateScope::Key => "key",
                    RateScope::Consumer => "consumer",
                }
                .into(),
            }),
            currency: currency.into(),
        }
    }
}

/// A list of plans.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    /// Plans in configuration order.
    pub items: Vec<Plan>,
}

/// Change a subscription.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    /// New plan id (keeps the period anchor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// New state; only allowed transitions are accepted (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// Top up a prepaid balance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpInput {
    /// Positive decimal amount, e.g. `"12.50"`.
    pub amount: String,
    /// Same key, same top-up: applied once. Also accepted as the `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Adjust a prepaid balance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentInput {
    /// Non-zero decimal amount; negative debits, e.g. `"-1.00"`.
    pub amount: String,
    /// Why (logged with the operation).
    pub reason: String,
    /// Same key, same adjustment: applied once. Also accepted as the `Idempotency-Key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The outcome of a top-up or adjustment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BalanceChange {
    /// Consumer id.
    pub consumer: String,
    /// Amount applied (decimal, signed).
    pub amount: String,
    /// Posted balance after the operation (decimal).
    pub balance: String,
    /// Currency.
    pub currency: String,
    /// `false` when this idempotency key had already been applied (nothing changed now).
    pub applied: bool,
    /// The idempotency key of the operation (generated when none was given).
    pub idempotency_key: String,
    /// Reason of an adjustment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A ledger entry of a prepaid balance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntry {
    /// Hex id.
    pub id: String,
    /// `charge`, `topup`, `adjust`, …
    pub kind: String,
    /// `debit` or `credit` from the balance's point of view.
    pub direction: String,
    /// Amount (decimal).
    pub amount: String,
    /// Charge id or operation id.
    pub charge_id: String,
    /// When (RFC 3339).
    pub created_at: String,
}

impl From<EntryView> for LedgerEntry {
    fn from(e: EntryView) -> Self {
        LedgerEntry {
            id: e.id,
            kind: e.kind,
            direction: e.direction.into(),
            amount: e.amount,
            charge_id: e.charge_id,
            created_at: e.created_at,
        }
    }
}

/// Entries, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntryList {
    /// Entries, newest first.
    pub items: Vec<LedgerEntry>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    pub next_after: Option<String>,
}

/// Entry list paging.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EntryListQuery {
    /// Most entries returned, 1–1000 (default 100).
    pub limit: Option<usize>,
    /// Only entries listed after this position: the `next_after` of the previous page (paging).
    pub after: Option<String>,
}

/// Which usage window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeriodSel {
    /// The plan period containing now.
    Current,
    /// The plan period before it.
    Previous,
}

/// Usage query: a plan period, or an explicit `from`/`to` range.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `current` (default) or `previous` plan period.
    pub period: Option<PeriodSel>,
    /// Range start (RFC 3339, inclusive); exclusive with `period`.
    pub from: Option<String>,
    /// Range end (RFC 3339, exclusive; default now).
    pub to: Option<String>,
}

/// One quota's standing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaStanding {
    /// Limit per period.
    pub limit: u64,
    /// Used in the period (posted).
    pub used: u64,
    /// Left in the period.
    pub remaining: u64,
}

/// Quotas in the current period.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaReport {
    /// Request quota, when the plan has one.
    pub requests: Option<QuotaStanding>,
    /// Byte quota, when the plan has one.
    pub bytes: Option<QuotaStanding>,
}

/// Usage totals over a window.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// Consumer id.
    pub consumer: String,
    /// Plan id.
    pub plan: String,
    /// `current`, `previous` or `range`.
    pub period: String,
    /// Window start (RFC 3339, inclusive).
    pub from: String,
    /// Window end (RFC 3339, exclusive).
    pub to: String,
    /// Requests recorded.
    pub requests: i64,
    /// Requests charged.
    pub charged_requests: i64,
    /// Body bytes.
    pub bytes: i64,
    /// Money charged (decimal).
    pub cost: String,
    /// Currency.
    pub currency: String,
    /// Quota standing (current period only).
    pub quota: Option<QuotaReport>,
}

impl Usage {
    /// Combine totals with the window.
    pub fn new(
        consumer: &str,
        plan: &str,
        period: &str,
        window: (String, String),
        t: UsageTotals,
        currency: &str,
    ) -> Self {
        Usage {
            consumer: consumer.into(),
            plan: plan.into(),
            period: period.into(),
            from: window.0,
            to: window.1,
            requests: t.requests,
            charged_requests: t.charged_requests,
            bytes: t.bytes,
            cost: t.cost,
            currency: currency.into(),
            quota: None,
        }
    }
}

/// Liveness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// One x402 payment as recorded by the gateway.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct X402Payment {
    /// Listing position (pass as `after` for the next page).
    pub seq: i64,
    /// Route id.
    pub route: Option<String>,
    /// Payer address (lower-case hex).
    pub payer: String,
    /// Recipient address.
    pub pay_to: Option<String>,
    /// Amount in atomic units of the asset (decimal string).
    pub amount: Option<String>,
    /// Token contract address.
    pub asset: String,
    /// CAIP-2 network.
    pub network: Option<String>,
    /// EIP-3009 authorization nonce.
    pub nonce: String,
    /// `verified`, `settling`, `settled`, `pending` or `failed`.
    pub state: String,
    /// Settlement transaction hash.
    pub tx_hash: Option<String>,
    /// Why it failed (stable reason code).
    pub reason: Option<String>,
    /// Request that presented the payment first.
    pub request_id: Option<String>,
    /// First seen (RFC 3339).
    pub created_at: String,
    /// Last state change (RFC 3339).
    pub updated_at: String,
}

impl From<tollgate_store::x402::PaymentView> for X402Payment {
    fn from(p: tollgate_store::x402::PaymentView) -> Self {
        X402Payment {
            seq: p.seq,
            route: p.route,
            payer: p.payer,
            pay_to: p.pay_to,
            amount: p.amount,
            asset: p.asset,
            network: p.network,
            nonce: p.nonce,
            state: p.state,
            tx_hash: p.tx_hash,
            reason: p.reason,
            request_id: p.request_id,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// A page of x402 payments, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct X402PaymentList {
    /// Payments.
    pub items: Vec<X402Payment>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Filters of the x402 payment list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct X402PaymentQuery {
    /// Only payments for this route.
    pub route: Option<String>,
    /// Only payments of this payer address.
    pub payer: Option<String>,
    /// Only payments in this state (`verified`, `settling`, `settled`, `pending`, `failed`).
    pub state: Option<String>,
    /// Only payments listed after this `seq` (paging).
    pub after: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
}

/// One bucket of a charge log latency histogram (its syncs, or its records' waits).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncBucket {
    /// Upper bound of the bucket in microseconds (inclusive); `null` for the last bucket,
    /// which holds everything slower than the bounds before it.
    pub le_us: Option<u64>,
    /// Syncs (or records) in this bucket (not cumulative).
    pub count: u64,
}

/// The charge log writer since the gateway started: what it appended and how long the disk
/// took to make it durable. A strict-mode response waits for one sync, so `sync_p99_us` is
/// the floor under the gateway's p99 latency on this disk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JournalStats {
    /// `strict` (a response waits until its charge is on disk) or `relaxed`.
    pub durability: String,
    /// Records appended (charges and ledger entries).
    pub records: u64,
    /// Group commits: appends of everything that had queued, each with at most one sync.
    pub commits: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Mean sync duration in microseconds (`null` before the first sync).
    pub sync_mean_us: Option<u64>,
    /// Upper bound of the bucket holding the median sync, in microseconds (`null` before the
    /// first sync or when it falls in the last, open bucket). Likewise for the next two.
    pub sync_p50_us: Option<u64>,
    /// The 99th percentile's bucket bound, microseconds.
    pub sync_p99_us: Option<u64>,
    /// The 99.9th percentile's bucket bound, microseconds.
    pub sync_p999_us: Option<u64>,
    /// Every bucket, fastest first.
    pub sync_histogram: Vec<SyncBucket>,
    /// Records whose wait is counted below: each from its hand-over to the log writer until
    /// its batch was written and (strict) synced, so the time a strict response waited for
    /// its charge to be durable. A sync counts once above however many records it held;
    /// here each of them counts, with the time it queued behind the sync before.
    pub waits: u64,
    /// Mean wait in microseconds (`null` before the first record).
    pub wait_mean_us: Option<u64>,
    /// Upper bound of the bucket holding the median wait, in microseconds (as for syncs).
    pub wait_p50_us: Option<u64>,
    /// The 99th percentile's bucket bound, microseconds.
    pub wait_p99_us: Option<u64>,
    /// The 99.9th percentile's bucket bound, microseconds.
    pub wait_p999_us: Option<u64>,
    /// Records per bucket (the bounds of `sync_histogram`), fastest first.
    pub wait_histogram: Vec<SyncBucket>,
    /// Log sequence number of the last record in the charge log.
    pub logged_lsn: u64,
    /// Log sequence number of the last record applied to the database (usage, entries and
    /// statements read from there).
    pub applied_lsn: u64,
    /// Records logged but not applied yet (`logged_lsn - applied_lsn`): held in memory until
    /// the projector commits them, normally at most about a second's worth. A backlog
    /// that keeps growing means the database cannot keep up with the traffic.
    pub backlog: u64,
}

/// Credits and debits of one account: micro-units for money accounts, units (requests,
/// bytes) for quota accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    /// Credits.
    pub credits: i64,
    /// Debits.
    pub debits: i64,
}

impl From<(i64, i64)> for Totals {
    fn from((credits, debits): (i64, i64)) -> Self {
        Totals { credits, debits }
    }
}

/// An account whose recorded totals differ from the sum of its entries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountMismatchView {
    /// Account kind: 1 balance, 2 requests quota, 3 bytes quota, 4/5/6 consumer/key/tenant
    /// spending cap, 100 revenue, 101 quota sink, 102 funding, 103 cap sink.
    pub kind: i64,
    /// Owner: the consumer's, key's or tenant's sequence number.
    pub owner: i64,
    /// Period start, Unix seconds (0 for balances).
    pub period: i64,
    /// Recorded in the account (with entries not folded in yet).
    pub recorded: Totals,
    /// Summed from its entries.
    pub entries: Totals,
}

/// A consumer whose balance in memory differs from the one its entries give.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BalanceMismatchView {
    /// Consumer id.
    pub consumer: String,
    /// Posted in memory, micro-units.
    pub memory: Totals,
    /// Summed from its balance entries, micro-units.
    pub entries: Totals,
    /// Its requests in flight when last compared (a difference with requests in flight may
    /// be one settling; run the check again).
    pub in_flight: usize,
}

/// The ledger checked: `ok` when it balances, every account's totals are the sum of its
/// entries and every consumer's balance in memory is the one its entries give.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerCheckView {
    /// Nothing below differs.
    pub ok: bool,
    /// Entries read.
    pub entries: i64,
    /// Accounts recorded.
    pub accounts: i64,
    /// Credits minus debits over every account: 0 when the ledger balances (entries do by
    /// construction: each credits one account and debits another by its amount).
    pub imbalance: i64,
    /// Accounts whose totals differ from their entries' (the first 100).
    pub account_mismatches: Vec<AccountMismatchView>,
    /// Consumers whose balance in memory differs from their entries' (the first 100).
    pub balance_mismatches: Vec<BalanceMismatchView>,
}

impl From<LedgerCheck> for LedgerCheckView {
    fn from(c: LedgerCheck) -> Self {
        LedgerCheckView {
            ok: c.ok,
            entries: c.entries,
            accounts: c.accounts,
            imbalance: c.imbalance,
            account_mismatches: c
                .account_mismatches
                .into_iter()
                .map(|m| AccountMismatchView {
                    kind: m.kind,
                    owner: m.owner,
                    period: m.period,
                    recorded: m.recorded.into(),
                    entries: m.entries.into(),
                })
                .collect(),
            balance_mismatches: c
                .balance_mismatches
                .into_iter()
                .map(|m| BalanceMismatchView {
                    consumer: m.consumer,
                    memory: m.memory.into(),
                    entries: m.entries.into(),
                    in_flight: m.in_flight,
                })
                .collect(),
        }
    }
}
