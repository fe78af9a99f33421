//! The admin endpoints. Each handler carries its OpenAPI description (`utoipa::path`), and
//! [`routes`] registers handlers and documentation together, so the document cannot miss an
//! endpoint the router serves.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::distributions::Alphanumeric;
use rand::Rng;
use tollgate_core::config::{Config, PlanConfig};
use tollgate_core::period::{period_containing, Period};
use tollgate_core::{ErrorCode, Money};
use tollgate_store::{AcctKey, AcctKind, Store, SubStatus, TenantView};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::model::*;
use crate::AdminState;

type ApiResult<T> = Result<T, ApiError>;

const DAY_MS: i64 = 86_400_000;
/// Default overlap of a rotated key, seconds.
pub const DEFAULT_OVERLAP_SECS: u64 = 3600;
const MAX_OVERLAP_SECS: u64 = 30 * 86_400;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// Every endpoint, with its documentation.
pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(upsert_tenant, list_tenants))
        .routes(routes!(get_tenant))
        .routes(routes!(create_consumer, list_consumers))
        .routes(routes!(get_consumer))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(rotate_key))
        .routes(routes!(list_plans))
        .routes(routes!(get_plan))
        .routes(routes!(set_subscription))
        .routes(routes!(approve))
        .routes(routes!(reject))
        .routes(routes!(top_up))
        .routes(routes!(adjust))
        .routes(routes!(list_entries))
        .routes(routes!(usage))
        .routes(routes!(list_x402_payments))
        .routes(routes!(journal_stats))
        .routes(routes!(check_ledger))
}

// ---------------------------------------------------------------------------------------------
// validation helpers

fn check_id(field: &str, id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("{field}: must be 1–64 characters of letters, digits, `-`, `_`, `.`"),
        ))
    }
}

fn check_url(field: &str, u: &Option<String>) -> ApiResult<()> {
    match u {
        Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() > 2048 => {
            Err(ApiError::bad_field(
                field,
                format!("{field}: `{u}` is not an http(s) URL"),
            ))
        }
        _ => Ok(()),
    }
}

fn check_text(field: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        Err(ApiError::bad_field(
            field,
            format!("{field}: must be 1–{max} printable characters"),
        ))
    } else {
        Ok(())
    }
}

fn parse_time(field: &str, s: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_field(
                field,
                format!("{field}: `{s}` is not an RFC 3339 instant ({e})"),
            )
        })
}

fn parse_money(field: &str, s: &str) -> ApiResult<Money> {
    Money::parse(s).map_err(|e| ApiError::bad_field(field, format!("{field}: {e}")))
}

fn page_limit(field: &str, limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("{field}: must be between 1 and {MAX_PAGE}"),
        )),
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339()
}

fn plan<'c>(cfg: &'c Config, field: &str, id: &str) -> ApiResult<&'c PlanConfig> {
    cfg.plan(id)
        .ok_or_else(|| ApiError::bad_field(field, format!("{field}: unknown plan `{id}`")))
}

fn consumer_of(store: &Store, id: &str) -> ApiResult<Consumer> {
    store
        .dir
        .consumer(id)
        .map(|c| Consumer::from(store.consumer_view(&c)))
        .ok_or_else(|| ApiError::not_found("consumer", id))
}

fn store_status(c: &Consumer) -> SubStatus {
    SubStatus::from(c.status)
}

// ---------------------------------------------------------------------------------------------
// health

/// Liveness (no authentication).
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Check the ledger: it balances, every account's totals are the sum of its entries, and
/// every consumer's balance in memory (what admission decides on) is the one its entries give.
/// Reads every entry: on a large database, run it off-peak. A difference is a finding, not an
/// error: the answer is 200 with `ok: false` and the accounts and consumers that differ.
#[utoipa::path(get, path = "/v1/ledger/check", tag = "meta",
    responses((status = 200, description = "What the check found", body = LedgerCheckView),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn check_ledger(State(st): State<AdminState>) -> ApiResult<Json<LedgerCheckView>> {
    let found = st.store.check_ledger().await?;
    if !found.ok {
        tracing::error!(
            imbalance = found.imbalance,
            accounts = found.account_mismatches.len(),
            balances = found.balance_mismatches.len(),
            "ledger check found differences"
        );
    }
    Ok(Json(found.into()))
}

/// The charge log writer's counters since start: records, group commits, the disk's sync
/// latency and each record's wait until durable (histograms with fixed bounds, and the bucket
/// bounds of their percentiles); and how far the database is behind the log.
#[utoipa::path(get, path = "/v1/journal", tag = "meta",
    responses((status = 200, description = "Charge log counters", body = JournalStats),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse)))]
pub async fn journal_stats(State(st): State<AdminState>) -> Json<JournalStats> {
    let s = st.store.journal.stats();
    let histogram = |buckets: &[u64]| -> Vec<SyncBucket> {
        buckets
            .iter()
            .enumerate()
            .map(|(i, &count)| SyncBucket {
                le_us: tollgate_store::SYNC_BUCKETS_US.get(i).copied(),
                count,
            })
            .collect()
    };
    Json(JournalStats {
        durability: st.store.durability.as_str().into(),
        records: s.records,
        commits: s.commits,
        syncs: s.syncs,
        sync_mean_us: s.sync_us_total.checked_div(s.syncs),
        sync_p50_us: s.sync_quantile_us(0.5),
        sync_p99_us: s.sync_quantile_us(0.99),
        sync_p999_us: s.sync_quantile_us(0.999),
        sync_histogram: histogram(&s.buckets),
        waits: s.waits,
        wait_mean_us: s.wait_us_total.checked_div(s.waits),
        wait_p50_us: s.wait_quantile_us(0.5),
        wait_p99_us: s.wait_quantile_us(0.99),
        wait_p999_us: s.wait_quantile_us(0.999),
        wait_histogram: histogram(&s.wait_buckets),
        logged_lsn: s.logged_lsn,
        applied_lsn: s.applied_lsn,
        backlog: s.backlog(),
    })
}

// ---------------------------------------------------------------------------------------------
// tenants

/// Create a tenant, or update the one with this id.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = TenantInput,
    responses(
        (status = 201, description = "Created", body = Tenant),
        (status = 200, description = "Updated", body = Tenant),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn upsert_tenant(
    State(st): State<AdminState>,
    ApiJson(input): ApiJson<TenantInput>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    check_id("id", &input.id)?;
    check_text("name", &input.name, 200)?;
    if let Some(e) = &input.contact_email {
        if !e.contains('@') || e.len() > 320 {
            return Err(ApiError::bad_field(
                "contact_email",
                format!("contact_email: `{e}` is not an email address"),
            ));
        }
    }
    check_url("upgrade_url", &input.upgrade_url)?;
    check_url("top_up_url", &input.top_up_url)?;
    let existed = st.store.dir.tenant(&input.id).is_some();
    let view = TenantView {
        id: input.id,
        name: input.name,
        contact_email: input.contact_email,
        upgrade_url: input.upgrade_url,
        top_up_url: input.top_up_url,
    };
    let t = st.store.upsert_tenant(view, "api").await?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(t.into())))
}

/// List tenants.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, description = "Tenants", body = TenantList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse)))]
pub async fn list_tenants(State(st): State<AdminState>) -> Json<TenantList> {
    Json(TenantList {
        items: st
            .store
            .list_tenants()
            .into_iter()
            .map(Tenant::from)
            .collect(),
    })
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    params(("id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "The tenant", body = Tenant),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such tenant", body = ErrorResponse)))]
pub async fn get_tenant(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<Tenant>> {
    st.store
        .list_tenants()
        .into_iter()
        .find(|t| t.id == id)
        .map(|t| Json(t.into()))
        .ok_or_else(|| ApiError::not_found("tenant", &id))
}

// ---------------------------------------------------------------------------------------------
// consumers

fn new_consumer_id() -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(16)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect();
    format!("c_{tail}")
}

/// Create a consumer subscribed to a plan. The initial state follows the plan:
/// `pending_approval` when it requires approval, `trialing` when it has trial days (the trial
/// counts from sign-up), else `active`; `status` overrides it.
#[utoipa::path(post, path = "/v1/consumers", tag = "consumers", request_body = ConsumerInput,
    responses((status = 201, description = "Created", body = Consumer),
        (status = 400, description = "Invalid input, unknown tenant or plan", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 409, description = "The id is taken", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn create_consumer(
    State(st): State<AdminState>,
    ApiJson(input): ApiJson<ConsumerInput>,
) -> ApiResult<(StatusCode, Json<Consumer>)> {
    let id = match input.id {
        Some(id) => {
            check_id("id", &id)?;
            id
        }
        None => new_consumer_id(),
    };
    if let Some(n) = &input.name {
        check_text("name", n, 200)?;
    }
    check_id("tenant", &input.tenant)?;
    if st.store.dir.tenant(&input.tenant).is_none() {
        return Err(ApiError::bad_field(
            "tenant",
            format!("tenant: unknown tenant `{}`", input.tenant),
        ));
    }
    let cfg = st.config.load_full();
    let p = plan(&cfg, "plan", &input.plan)?;
    let now = st.store.clock().now_ms();
    // The trial clock starts at sign-up, also while approval is pending: the store cannot
    // move the trial end later, and a bounded trial is the safe side.
    let trial_end = (p.trial_days > 0).then(|| now + i64::from(p.trial_days) * DAY_MS);
    let status = match input.status {
        Some(s) => SubStatus::from(s),
        None if p.requires_approval => SubStatus::PendingApproval,
        None if p.trial_days > 0 => SubStatus::Trialing,
        None => SubStatus::Active,
    };
    if status == SubStatus::Trialing && trial_end.is_none() {
        return Err(ApiError::bad_field(
            "status",
            format!("status: plan `{}` has no trial days", p.id),
        ));
    }
    let v = st
        .store
        .create_consumer(
            &id,
            &input.tenant,
            input.name.as_deref(),
            &p.id,
            status,
            trial_end,
            "api",
        )
        .await?;
    Ok((StatusCode::CREATED, Json(v.into())))
}

/// List consumers by id, optionally of one tenant, in pages.
#[utoipa::path(get, path = "/v1/consumers", tag = "consumers", params(ConsumerListQuery),
    responses((status = 200, description = "A page of consumers", body = ConsumerList),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse)))]
pub async fn list_consumers(
    State(st): State<AdminState>,
    ApiQuery(q): ApiQuery<ConsumerListQuery>,
) -> ApiResult<Json<ConsumerList>> {
    let limit = page_limit("limit", q.limit)?;
    let items: Vec<Consumer> = st
        .store
        .list_consumers(q.tenant.as_deref(), q.after.as_deref(), limit)
        .into_iter()
        .map(Consumer::from)
        .collect();
    let next_after = if items.len() == limit {
        items.last().map(|c| c.id.clone())
    } else {
        None
    };
    Ok(Json(ConsumerList { items, next_after }))
}

/// One consumer with its subscription and balance.
#[utoipa::path(get, path = "/v1/consumers/{id}", tag = "consumers",
    params(("id" = String, Path, description = "Consumer id")),
    responses((status = 200, description = "The consumer", body = Consumer),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse)))]
pub async fn get_consumer(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<Consumer>> {
    consumer_of(&st.store, &id).map(Json)
}

// ---------------------------------------------------------------------------------------------
// keys

fn key_view(store: &Store, id: &str) -> ApiResult<ApiKey> {
    let consumer = store
        .dir
        .keys
        .get(id)
        .map(|e| e.consumer.id.to_string())
        .ok_or_else(|| ApiError::not_found("key", id))?;
    store
        .list_keys(&consumer)?
        .into_iter()
        .find(|k| k.id == id)
        .map(ApiKey::from)
        .ok_or_else(|| ApiError::not_found("key", id))
}

/// Create an API key for a consumer. The response holds the full key string, shown only now.
#[utoipa::path(post, path = "/v1/consumers/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "Consumer id")),
    request_body(content = Option<KeyInput>, description = "Optional; `{}` or no body for defaults"),
    responses((status = 201, description = "Created; `secret` is shown once", body = CreatedKey),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn create_key(
    State(st): State<AdminState>,
    ApiPath(consumer): ApiPath,
    OptionalJson(input): OptionalJson<KeyInput>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    if let Some(n) = &input.name {
        check_text("name", n, 200)?;
    }
    let expires_ms = match &input.expires_at {
        Some(s) => {
            let t = parse_time("expires_at", s)?;
            if t.timestamp_millis() <= st.store.clock().now_ms() {
                return Err(ApiError::bad_field(
                    "expires_at",
                    "expires_at: must be in the future",
                ));
            }
            Some(t.timestamp_millis())
        }
        None => None,
    };
    consumer_of(&st.store, &consumer)?;
    let (view, secret) = st
        .store
        .create_key(
            &consumer,
            input.name.as_deref(),
            expires_ms,
            input.test.unwrap_or(false),
        )
        .await?;
    // The store's returned view lacks the creation time; the listing has it.
    let key = key_view(&st.store, &view.id).unwrap_or_else(|_| view.into());
    Ok((StatusCode::CREATED, Json(CreatedKey { secret, key })))
}

/// List a consumer's keys (never their secrets).
#[utoipa::path(get, path = "/v1/consumers/{id}/keys", tag = "keys",
    params(("id" = String, Path, description = "Consumer id")),
    responses((status = 200, description = "Keys", body = KeyList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn list_keys(
    State(st): State<AdminState>,
    ApiPath(consumer): ApiPath,
) -> ApiResult<Json<KeyList>> {
    consumer_of(&st.store, &consumer)?;
    let items = st
        .store
        .list_keys(&consumer)?
        .into_iter()
        .map(ApiKey::from)
        .collect();
    Ok(Json(KeyList { items }))
}

/// Revoke a key now. Revoking a revoked key changes nothing; a key still in a rotation
/// overlap is revoked at once.
#[utoipa::path(post, path = "/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "The revoked key", body = ApiKey),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such key", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn revoke_key(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<ApiKey>> {
    let revoked_at = st
        .store
        .dir
        .keys
        .get(id.as_str())
        .map(|e| e.revoked_at_ms.load(std::sync::atomic::Ordering::SeqCst))
        .ok_or_else(|| ApiError::not_found("key", &id))?;
    let now = st.store.clock().now_ms();
    if revoked_at == 0 || revoked_at > now {
        st.store.revoke_key(&id, None).await?;
    }
    key_view(&st.store, &id).map(Json)
}

/// Rotate a key: a new key for the same consumer; the old one keeps working for
/// `overlap_seconds` (default 3600), then stops.
#[utoipa::path(post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    request_body(content = Option<RotateInput>, description = "Optional"),
    responses((status = 201, description = "The new key; `secret` is shown once", body = RotatedKey),
        (status = 400, description = "Invalid input", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such key", body = ErrorResponse),
        (status = 409, description = "The key is revoked", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn rotate_key(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    OptionalJson(input): OptionalJson<RotateInput>,
) -> ApiResult<(StatusCode, Json<RotatedKey>)> {
    let overlap = input.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ApiError::bad_field(
            "overlap_seconds",
            format!("overlap_seconds: must be at most {MAX_OVERLAP_SECS}"),
        ));
    }
    let (view, secret) = st.store.rotate_key(&id, overlap as i64 * 1000).await?;
    let key = key_view(&st.store, &view.id).unwrap_or_else(|_| view.into());
    let previous = key_view(&st.store, &id)?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            secret,
            key,
            previous,
        }),
    ))
}

// ---------------------------------------------------------------------------------------------
// plans

/// List the configured plans (read-only; plans live in the configuration file).
#[utoipa::path(get, path = "/v1/plans", tag = "plans",
    responses((status = 200, description = "Plans", body = PlanList),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse)))]
pub async fn list_plans(State(st): State<AdminState>) -> Json<PlanList> {
    let cfg = st.config.load();
    let cur = &cfg.server.currency;
    Json(PlanList {
        items: cfg
            .plans
            .iter()
            .map(|p| Plan::from_config(p, cur))
            .collect(),
    })
}

/// One configured plan.
#[utoipa::path(get, path = "/v1/plans/{id}", tag = "plans",
    params(("id" = String, Path, description = "Plan id")),
    responses((status = 200, description = "The plan", body = Plan),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such plan", body = ErrorResponse)))]
pub async fn get_plan(State(st): State<AdminState>, ApiPath(id): ApiPath) -> ApiResult<Json<Plan>> {
    let cfg = st.config.load();
    cfg.plan(&id)
        .map(|p| Json(Plan::from_config(p, &cfg.server.currency)))
        .ok_or_else(|| ApiError::not_found("plan", &id))
}

// ---------------------------------------------------------------------------------------------
// subscriptions

/// Whether an administrator may move a subscription from `from` to `to`. Staying in the
/// same state is always allowed (a no-op). `trialing` is reached only by approval or on
/// creation; `pending_approval` only on creation.
pub fn transition_allowed(from: SubStatus, to: SubStatus) -> bool {
    use SubStatus::*;
    if from == to {
        return true;
    }
    matches!(
        (from, to),
        (PendingApproval, Active | Trialing | Canceled)
            | (Trialing, Active | PastDue | Suspended | Canceled | Expired)
            | (Active, PastDue | Suspended | Canceled | Expired)
            | (PastDue, Active | Suspended | Canceled | Expired)
            | (Suspended, Active | Canceled | Expired)
            | (Canceled | Expired, Active)
    )
}

fn not_pending(action: &str, from: SubStatus) -> ApiError {
    ApiError::conflict(format!(
        "only a `pending_approval` subscription can be {action}; this one is `{}`",
        from.as_str()
    ))
    .detail("status", from.as_str())
    .detail("required_status", SubStatus::PendingApproval.as_str())
}

fn transition_error(from: SubStatus, to: SubStatus) -> ApiError {
    ApiError::conflict(format!(
        "a subscription cannot move from `{}` to `{}`",
        from.as_str(),
        to.as_str()
    ))
    .detail("from", from.as_str())
    .detail("to", to.as_str())
}

async fn apply_status(
    st: &AdminState,
    consumer: &Consumer,
    plan_id: &str,
    new_plan: Option<&str>,
    to: Option<SubStatus>,
) -> ApiResult<Consumer> {
    let cfg = st.config.load_full();
    let from = store_status(consumer);
    let grace = match to {
        Some(SubStatus::PastDue) if from != SubStatus::PastDue => {
            let days = cfg.plan(plan_id).map(|p| p.grace_days).unwrap_or(0);
            Some(Some(st.store.clock().now_ms() + i64::from(days) * DAY_MS))
        }
        Some(s) if s != SubStatus::PastDue && from == SubStatus::PastDue => Some(None),
        _ => None,
    };
    let v = st
        .store
        .set_subscription(&consumer.id, new_plan, to, grace)
        .await?;
    Ok(v.into())
}

/// Change a consumer's plan and/or subscription state. A plan change keeps the period anchor;
/// moving to `past_due` starts the plan's grace period. Disallowed transitions are a 409.
#[utoipa::path(put, path = "/v1/consumers/{id}/subscription", tag = "subscriptions",
    params(("id" = String, Path, description = "Consumer id")),
    request_body = SubscriptionInput,
    responses((status = 200, description = "The consumer after the change", body = Consumer),
        (status = 400, description = "Invalid input or unknown plan", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 409, description = "Transition not allowed from the current state", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn set_subscription(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    ApiJson(input): ApiJson<SubscriptionInput>,
) -> ApiResult<Json<Consumer>> {
    if input.plan.is_none() && input.status.is_none() {
        return Err(ApiError::bad_field(
            "body",
            "body: give `plan`, `status` or both",
        ));
    }
    let c = consumer_of(&st.store, &id)?;
    let cfg = st.config.load_full();
    let plan_id = match &input.plan {
        Some(p) => plan(&cfg, "plan", p)?.id.clone(),
        None => c.plan.clone(),
    };
    let to = input.status.map(SubStatus::from);
    if let Some(to) = to {
        let from = store_status(&c);
        if !transition_allowed(from, to) {
            return Err(transition_error(from, to));
        }
        if to == SubStatus::Trialing && from != SubStatus::Trialing {
            return Err(ApiError::conflict(
                "`trialing` is reached only on creation or by approval",
            )
            .detail("from", from.as_str())
            .detail("to", to.as_str()));
        }
    }
    apply_status(&st, &c, &plan_id, input.plan.as_deref(), to)
        .await
        .map(Json)
}

/// Approve a subscription waiting for approval: it becomes `trialing` while the plan's
/// trial lasts, else `active`. 409 from any other state.
#[utoipa::path(post, path = "/v1/consumers/{id}/approve", tag = "subscriptions",
    params(("id" = String, Path, description = "Consumer id")),
    responses((status = 200, description = "The consumer after approval", body = Consumer),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 409, description = "Not pending approval", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn approve(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<Consumer>> {
    let c = consumer_of(&st.store, &id)?;
    let from = store_status(&c);
    if from != SubStatus::PendingApproval {
        return Err(not_pending("approved", from));
    }
    let now = st.store.clock().now();
    let in_trial = c
        .trial_end
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| t > now);
    let to = if in_trial {
        SubStatus::Trialing
    } else {
        SubStatus::Active
    };
    let plan_id = c.plan.clone();
    apply_status(&st, &c, &plan_id, None, Some(to))
        .await
        .map(Json)
}

/// Reject a subscription waiting for approval: it becomes `canceled`. 409 from any other
/// state.
#[utoipa::path(post, path = "/v1/consumers/{id}/reject", tag = "subscriptions",
    params(("id" = String, Path, description = "Consumer id")),
    responses((status = 200, description = "The consumer after rejection", body = Consumer),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 409, description = "Not pending approval", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn reject(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
) -> ApiResult<Json<Consumer>> {
    let c = consumer_of(&st.store, &id)?;
    let from = store_status(&c);
    if from != SubStatus::PendingApproval {
        return Err(not_pending("rejected", from));
    }
    let plan_id = c.plan.clone();
    apply_status(&st, &c, &plan_id, None, Some(SubStatus::Canceled))
        .await
        .map(Json)
}

// ---------------------------------------------------------------------------------------------
// credits

fn idempotency_key(body: Option<String>, headers: &HeaderMap) -> ApiResult<Option<String>> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_field("Idempotency-Key", "Idempotency-Key: must be ASCII")
                })?
                .to_string(),
        ),
        None => None,
    };
    let key = match (body, header) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::bad_field(
                "idempotency_key",
                "idempotency_key: differs from the Idempotency-Key header",
            ))
        }
        (Some(b), _) => Some(b),
        (None, h) => h,
    };
    if let Some(k) = &key {
        let ok = !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ApiError::bad_field(
                "idempotency_key",
                "idempotency_key: must be 1–128 printable ASCII characters without spaces",
            ));
        }
    }
    Ok(key)
}

fn new_op_key() -> String {
    let tail: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect();
    format!("op_{tail}")
}

/// Apply a balance change once per (consumer, kind, key); a replay with a different amount is
/// a 409.
async fn change_balance(
    st: &AdminState,
    consumer: &str,
    amount: Money,
    key: Option<String>,
    kind: &'static str,
    reason: Option<String>,
) -> ApiResult<BalanceChange> {
    consumer_of(&st.store, consumer)?;
    let key = key.unwrap_or_else(new_op_key);
    // The store derives entry ids from the tenant, so the consumer is part of the op id: the
    // same key used for two consumers of one tenant must not collide.
    let op_id = format!("admin:{kind}:{consumer}:{key}");
    let done = st
        .store
        .adjust_balance(consumer, amount.micros(), &op_id, kind)
        .await?;
    if !done.applied && done.recorded != amount.micros() {
        return Err(ApiError::new(ErrorCode::IdempotencyConflict)
            .detail("reason", "idempotency key already used with another amount")
            .detail("idempotency_key", key)
            .detail("original_amount", Money(done.recorded).to_string()));
    }
    tracing::info!(consumer, kind, amount = %amount, applied = done.applied, reason = reason.as_deref().unwrap_or(""), "admin balance change");
    Ok(BalanceChange {
        consumer: consumer.into(),
        amount: amount.to_string(),
        balance: Money(done.balance).to_string(),
        currency: st.config.load().server.currency.clone(),
        applied: done.applied,
        idempotency_key: key,
        reason,
    })
}

/// Top up a consumer's prepaid balance. With the same idempotency key it is applied once;
/// replays answer 200 with `applied: false`.
#[utoipa::path(post, path = "/v1/consumers/{id}/credits", tag = "credits",
    params(("id" = String, Path, description = "Consumer id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Alternative to `idempotency_key`")),
    request_body = TopUpInput,
    responses((status = 201, description = "Applied", body = BalanceChange),
        (status = 200, description = "Already applied earlier with this key", body = BalanceChange),
        (status = 400, description = "Invalid amount", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 409, description = "Key reused with a different amount", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn top_up(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    headers: HeaderMap,
    ApiJson(input): ApiJson<TopUpInput>,
) -> ApiResult<(StatusCode, Json<BalanceChange>)> {
    let amount = parse_money("amount", &input.amount)?;
    if amount.micros() <= 0 {
        return Err(ApiError::bad_field("amount", "amount: must be positive"));
    }
    let key = idempotency_key(input.idempotency_key, &headers)?;
    let r = change_balance(&st, &id, amount, key, "topup", None).await?;
    let code = if r.applied {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(r)))
}

/// Adjust a consumer's prepaid balance by a signed amount (negative debits), with a reason.
#[utoipa::path(post, path = "/v1/consumers/{id}/adjustments", tag = "credits",
    params(("id" = String, Path, description = "Consumer id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Alternative to `idempotency_key`")),
    request_body = AdjustmentInput,
    responses((status = 201, description = "Applied", body = BalanceChange),
        (status = 200, description = "Already applied earlier with this key", body = BalanceChange),
        (status = 400, description = "Invalid amount or reason", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 409, description = "Key reused with a different amount", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn adjust(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    headers: HeaderMap,
    ApiJson(input): ApiJson<AdjustmentInput>,
) -> ApiResult<(StatusCode, Json<BalanceChange>)> {
    let amount = parse_money("amount", &input.amount)?;
    if amount.micros() == 0 {
        return Err(ApiError::bad_field("amount", "amount: must not be zero"));
    }
    check_text("reason", &input.reason, 500)?;
    let key = idempotency_key(input.idempotency_key, &headers)?;
    let r = change_balance(&st, &id, amount, key, "adjust", Some(input.reason)).await?;
    let code = if r.applied {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(r)))
}

/// Ledger entries of a consumer's prepaid balance, newest first.
#[utoipa::path(get, path = "/v1/consumers/{id}/entries", tag = "credits",
    params(("id" = String, Path, description = "Consumer id"), EntryListQuery),
    responses((status = 200, description = "Entries", body = EntryList),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn list_entries(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<EntryListQuery>,
) -> ApiResult<Json<EntryList>> {
    let limit = page_limit("limit", q.limit)?;
    let after = q
        .after
        .as_deref()
        .map(str::parse::<tollgate_store::EntryCursor>)
        .transpose()
        .map_err(|_| {
            ApiError::bad_field(
                "after",
                "after: must be the `next_after` of an earlier page of this list",
            )
        })?;
    let page = st.store.list_entries(&id, limit, after).await?;
    Ok(Json(EntryList {
        items: page.items.into_iter().map(LedgerEntry::from).collect(),
        next_after: page.next_after,
    }))
}

// ---------------------------------------------------------------------------------------------
// usage

fn plan_period(p: &PlanConfig, anchor: DateTime<Utc>, at: DateTime<Utc>) -> Period {
    let tz: Tz = p.timezone.parse().unwrap_or(Tz::UTC);
    period_containing(p.period, tz, anchor, at)
}

fn standing(limit: Option<u64>, used: i64) -> Option<QuotaStanding> {
    limit.map(|limit| {
        let used = u64::try_from(used.max(0)).unwrap_or(0);
        QuotaStanding {
            limit,
            used,
            remaining: limit.saturating_sub(used),
        }
    })
}

/// Usage totals of a consumer: the current (default) or previous plan period, or an explicit
/// `from`/`to` range. The current period also reports the plan's quotas and what is left.
#[utoipa::path(get, path = "/v1/consumers/{id}/usage", tag = "usage",
    params(("id" = String, Path, description = "Consumer id"), UsageQuery),
    responses((status = 200, description = "Usage totals", body = Usage),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 404, description = "No such consumer", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn usage(
    State(st): State<AdminState>,
    ApiPath(id): ApiPath,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<Usage>> {
    let entry = st
        .store
        .dir
        .consumer(&id)
        .ok_or_else(|| ApiError::not_found("consumer", &id))?;
    let (plan_id, anchor_ms) = {
        let s = entry.state.lock();
        (s.sub.plan.to_string(), s.sub.anchor_ms)
    };
    let now = st.store.clock().now();
    let cfg = st.config.load_full();
    let currency = cfg.server.currency.clone();
    if q.from.is_some() || q.to.is_some() {
        if q.period.is_some() {
            return Err(ApiError::bad_field(
                "period",
                "period: give either `period` or `from`/`to`",
            ));
        }
        let Some(from) = q.from.as_deref() else {
            return Err(ApiError::bad_field("from", "from: required with `to`"));
        };
        let from = parse_time("from", from)?;
        let to = match q.to.as_deref() {
            Some(t) => parse_time("to", t)?,
            None => now,
        };
        if to <= from {
            return Err(ApiError::bad_field("to", "to: must be after `from`"));
        }
        let t = st
            .store
            .usage_totals(&id, from.timestamp_millis(), to.timestamp_millis())
            .await?;
        return Ok(Json(Usage::new(
            &id,
            &plan_id,
            "range",
            (rfc3339(from), rfc3339(to)),
            t,
            &currency,
        )));
    }
    let Some(p) = cfg.plan(&plan_id) else {
        return Err(ApiError::conflict(format!(
            "plan `{plan_id}` of this consumer is no longer configured; query with `from`/`to`"
        )));
    };
    let anchor = DateTime::from_timestamp_millis(anchor_ms).unwrap_or(now);
    let sel = q.period.unwrap_or(PeriodSel::Current);
    let current = plan_period(p, anchor, now);
    let window = match sel {
        PeriodSel::Current => current,
        PeriodSel::Previous => {
            plan_period(p, anchor, current.start - chrono::Duration::milliseconds(1))
        }
    };
    let t = st
        .store
        .usage_totals(
            &id,
            window.start.timestamp_millis(),
            window.end.timestamp_millis(),
        )
        .await?;
    let mut u = Usage::new(
        &id,
        &plan_id,
        match sel {
            PeriodSel::Current => "current",
            PeriodSel::Previous => "previous",
        },
        (rfc3339(window.start), rfc3339(window.end)),
        t,
        &currency,
    );
    if sel == PeriodSel::Current {
        // The quota counters the gateway enforces are the authority for "used"; they are
        // keyed by the period start in Unix seconds.
        let counter = |kind| {
            let key = AcctKey {
                kind,
                owner: entry.seq,
                period: window.start.timestamp(),
            };
            entry.state.lock().counters.get(&key).posted
        };
        u.quota = Some(QuotaReport {
            requests: standing(p.quotas.requests, counter(AcctKind::QuotaRequests)),
            bytes: standing(p.quotas.bytes, counter(AcctKind::QuotaBytes)),
        });
    }
    Ok(Json(u))
}

// ---------------------------------------------------------------------------------------------
// x402

/// x402 payments recorded by the gateway (payer, route, amount, asset, network, transaction,
/// state), oldest first, in pages.
#[utoipa::path(get, path = "/v1/x402/payments", tag = "x402", params(X402PaymentQuery),
    responses((status = 200, description = "A page of payments", body = X402PaymentList),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 401, description = "Missing or wrong admin token", body = ErrorResponse),
        (status = 503, description = "Store unavailable", body = ErrorResponse)))]
pub async fn list_x402_payments(
    State(st): State<AdminState>,
    ApiQuery(q): ApiQuery<X402PaymentQuery>,
) -> ApiResult<Json<X402PaymentList>> {
    let limit = page_limit("limit", q.limit)?;
    if let Some(s) = &q.state {
        if !["verified", "settling", "settled", "pending", "failed"].contains(&s.as_str()) {
            return Err(ApiError::bad_field(
                "state",
                format!("state: `{s}` is not one of verified, settling, settled, pending, failed"),
            ));
        }
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            ApiError::bad_field("after", format!("after: `{a}` is not a listing position"))
        })?),
    };
    let filter = tollgate_store::x402::PaymentFilter {
        route: q.route,
        payer: q.payer,
        state: q.state,
        after,
        limit,
    };
    let items: Vec<X402Payment> = st
        .store
        .x402
        .list(&filter)?
        .into_iter()
        .map(X402Payment::from)
        .collect();
    let next_after = if items.len() == limit {
        items.last().map(|p| p.seq.to_string())
    } else {
        None
    };
    Ok(Json(X402PaymentList { items, next_after }))
}
