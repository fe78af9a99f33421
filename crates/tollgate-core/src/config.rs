//! The TOML configuration: raw serde types (unknown keys rejected), then [`Config::validate`]
//! which checks values and cross-references and reports every problem with its key path.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::money::Money;
use crate::period::PeriodKind;

/// A secret given inline or as `env:NAME`; redacted in `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret from a literal value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// Resolve `env:NAME` references; `None` when the variable is unset or empty.
    pub fn resolve(&self) -> Option<String> {
        match self.0.strip_prefix("env:") {
            Some(name) => std::env::var(name).ok().filter(|v| !v.is_empty()),
            None => Some(self.0.clone()).filter(|v| !v.is_empty()),
        }
    }

    fn env_name(&self) -> Option<&str> {
        self.0.strip_prefix("env:")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.env_name() {
            Some(n) => write!(f, "Secret(env:{n})"),
            None => f.write_str("Secret(<redacted>)"),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// The embedded store and ledger.
    #[serde(default)]
    pub store: StoreConfig,
    /// Upstream services.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Routes, matched in order of specificity (host, then longest prefix).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Plans.
    #[serde(default)]
    pub plans: Vec<PlanConfig>,
    /// Tenants declared in config (more can be created through the admin API).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Consumers and keys declared in config, for GitOps users.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// x402 settlement: the networks the gateway settles on.
    pub x402: Option<X402Config>,
}

/// `[x402]`: how the gateway settles x402 payments, per network.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct X402Config {
    /// One entry per network the gateway settles on.
    #[serde(default)]
    pub networks: Vec<X402NetworkConfig>,
}

/// `[[x402.networks]]`: settle locally through an RPC endpoint (`rpc_url` +
/// `signer_key_env`) or through a remote facilitator (`facilitator_url`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct X402NetworkConfig {
    /// CAIP-2 id, `eip155:N`.
    pub network: String,
    /// JSON-RPC URL; the gateway settles with `transferWithAuthorization` itself.
    pub rpc_url: Option<String>,
    /// Name of the environment variable holding the settler's private key (with `rpc_url`).
    pub signer_key_env: Option<String>,
    /// Remote facilitator base URL (instead of `rpc_url`).
    pub facilitator_url: Option<String>,
    /// How long to wait for a settlement receipt before answering 503 with the pending
    /// transaction (never a new 402).
    #[serde(default = "d_receipt_timeout")]
    pub receipt_timeout_seconds: u64,
}

fn d_receipt_timeout() -> u64 {
    30
}

/// `[routes.x402]`: the per-call price of a route in stablecoin (the fields of
/// [`tollgate_x402::RoutePrice`], plus how the gateway orders settlement and serving).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteX402Config {
    /// Price in atomic units of each offer's asset. Exactly one of `amount` and `usd`.
    pub amount: Option<tollgate_x402::TokenAmount>,
    /// Price in US dollars as a decimal string (`"0.01"`).
    pub usd: Option<String>,
    /// Resource description shown to payers and in discovery.
    pub description: Option<String>,
    /// MIME type of the response.
    pub mime_type: Option<String>,
    /// `false` (default): verify → settle → forward. `true`: verify → reserve → forward →
    /// settle only when the upstream answered below 500.
    #[serde(default)]
    pub settle_after_response: bool,
    /// Require the `payment-identifier` extension on every payment (400 without it).
    #[serde(default)]
    pub require_payment_identifier: bool,
    /// Ways to pay.
    #[serde(default)]
    pub offers: Vec<tollgate_x402::NetworkOffer>,
}

impl RouteX402Config {
    /// The price in the x402 crate's form.
    pub fn price(&self) -> tollgate_x402::RoutePrice {
        tollgate_x402::RoutePrice {
            amount: self.amount,
            usd: self.usd.clone(),
            offers: self.offers.clone(),
            description: self.description.clone(),
            mime_type: self.mime_type.clone(),
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Proxy listener.
    pub listen: String,
    /// Admin API listener (separate from the proxy).
    pub admin_listen: String,
    /// Admin bearer token; `env:NAME` reads it from the environment. Without one the admin
    /// API refuses every request.
    pub admin_token: Option<Secret>,
    /// Largest accepted request head (request line + headers), bytes → 431 beyond.
    pub max_header_bytes: usize,
    /// Largest accepted request body, bytes → 413 beyond.
    pub max_body_bytes: u64,
    /// Base URL of the errors reference used in `docs_url`.
    pub docs_url: String,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Currency of all money amounts (ISO code).
    pub currency: String,
    /// Proxy worker threads, each with its own event loop, listener socket and upstream
    /// connection pools; `None` = one per CPU. Takes effect on restart.
    pub workers: Option<usize>,
}

impl ServerConfig {
    /// The number of proxy worker threads to run: `workers`, or one per available CPU.
    pub fn worker_threads(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:8081".into(),
            admin_token: None,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            docs_url: "/_tollgate/errors".into(),
            shutdown_grace_secs: 10,
            currency: "USD".into(),
            workers: None,
        }
    }
}

/// Durability of charges.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A successful response is released only once its charge is durable on disk.
    #[default]
    Strict,
    /// Charges are written in the background; a crash may lose the last few milliseconds.
    Relaxed,
}

impl Durability {
    /// Lower-case name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Relaxed => "relaxed",
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file, created and migrated on start.
    pub path: String,
    /// See [`Durability`].
    pub durability: Durability,
    /// Seconds a reservation may stay pending before the sweeper releases it.
    pub hold_ttl_secs: u64,
    /// How often the sweeper runs, milliseconds.
    pub sweep_interval_ms: u64,
    /// Charge responses with status ≥ 500 (default: not charged, like timeouts and refused
    /// connections, which are never charged).
    pub charge_server_errors: bool,
    /// How long a stored `Idempotency-Key` outcome is kept, seconds.
    pub idempotency_ttl_secs: u64,
    /// Largest response body kept for replaying an `Idempotency-Key`, bytes.
    pub idempotency_max_body_bytes: usize,
    /// Charge log records that may wait in memory for the database (the projector's backlog)
    /// before governed requests are refused with 503 `STORE_UNAVAILABLE` until it catches up;
    /// 0 for no limit.
    pub max_backlog_records: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "tollgate.db".into(),
            durability: Durability::Strict,
            hold_ttl_secs: 120,
            sweep_interval_ms: 1000,
            charge_server_errors: false,
            idempotency_ttl_secs: 24 * 3600,
            idempotency_max_body_bytes: 1024 * 1024,
            max_backlog_records: 500_000,
        }
    }
}

/// `[[upstreams]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name routes refer to.
    pub name: String,
    /// Base URLs (`http://host:port`), used round-robin.
    pub targets: Vec<String>,
    /// TCP connect timeout, milliseconds.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Time to the upstream's response head, milliseconds.
    #[serde(default = "d_request_timeout")]
    pub request_timeout_ms: u64,
    /// Consecutive failures after which a target is skipped for `cooldown_ms`.
    #[serde(default = "d_failure_threshold")]
    pub failure_threshold: u32,
    /// How long a failing target is skipped, milliseconds.
    #[serde(default = "d_cooldown")]
    pub cooldown_ms: u64,
}

fn d_connect_timeout() -> u64 {
    2_000
}
fn d_request_timeout() -> u64 {
    30_000
}
fn d_failure_threshold() -> u32 {
    3
}
fn d_cooldown() -> u64 {
    10_000
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Stable id (used in plans, prices, metrics and usage records).
    pub id: String,
    /// Host to match (without port); any host when absent.
    pub host: Option<String>,
    /// Path prefix to match (segment-aware: `/v1` matches `/v1` and `/v1/x`, not `/v10`).
    pub path_prefix: String,
    /// Methods to match; any when absent.
    pub methods: Option<Vec<String>>,
    /// Upstream name.
    pub upstream: String,
    /// Remove the prefix before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Served without credentials and without policy.
    #[serde(default)]
    pub public: bool,
    /// Price per request, in the currency (plans may override).
    pub price: Option<Money>,
    /// Per-call price in stablecoin (x402). With `public = false` an API key on a plan also
    /// pays; with `public = true` x402 is the only way to pay.
    pub x402: Option<RouteX402Config>,
}

/// How the plan treats use beyond its quota.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overage {
    /// Refuse with 402 `QUOTA_EXCEEDED`.
    #[default]
    Block,
    /// Serve and bill the request at the route price.
    AllowAndBill,
    /// Serve from the plan's `degrade_upstream` instead.
    Degrade,
}

/// Quotas per period.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Requests per period.
    pub requests: Option<u64>,
    /// Request + response body bytes per period.
    pub bytes: Option<u64>,
}

/// Whose spending a cap limits.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CapScope {
    /// One API key.
    Key,
    /// One consumer.
    Consumer,
    /// All consumers of a tenant together (calendar-aligned periods).
    Tenant,
}

impl CapScope {
    /// Lower-case name used in `details.scope`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapScope::Key => "key",
            CapScope::Consumer => "consumer",
            CapScope::Tenant => "tenant",
        }
    }
}

/// A spending cap per period.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendingCap {
    /// Whose spending.
    pub scope: CapScope,
    /// Most that may be spent in one period.
    pub amount: Money,
}

/// GCRA rate limit.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second (exclusive with `per_minute`).
    pub per_second: Option<u32>,
    /// Requests per minute.
    pub per_minute: Option<u32>,
    /// Burst size; defaults to the per-second or per-minute count.
    pub burst: Option<u32>,
    /// Apply per API key or per consumer.
    #[serde(default = "d_rl_scope")]
    pub scope: RateScope,
}

/// Who a rate limit counts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Per API key.
    Key,
    /// Per consumer (all keys together).
    Consumer,
}

fn d_rl_scope() -> RateScope {
    RateScope::Key
}

/// `[[plans]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Billing period length.
    #[serde(default)]
    pub period: PeriodKind,
    /// IANA timezone the periods reset in.
    #[serde(default = "d_tz")]
    pub timezone: String,
    /// Route ids this plan is entitled to; `"*"` means every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Quotas per period.
    #[serde(default)]
    pub quotas: Quotas,
    /// Per-route price overrides (route id → price per request).
    #[serde(default)]
    pub prices: BTreeMap<String, Money>,
    /// Spending caps per period.
    #[serde(default)]
    pub spending_caps: Vec<SpendingCap>,
    /// What happens beyond the quota.
    #[serde(default)]
    pub overage: Overage,
    /// Upstream that serves requests beyond the quota when `overage = "degrade"`.
    pub degrade_upstream: Option<String>,
    /// Days of trial for new subscriptions.
    #[serde(default)]
    pub trial_days: u32,
    /// Days a `past_due` subscription keeps working.
    #[serde(default)]
    pub grace_days: u32,
    /// New subscriptions wait for approval.
    #[serde(default)]
    pub requires_approval: bool,
    /// Where to upgrade from this plan.
    pub upgrade_url: Option<String>,
    /// Where to top up the prepaid balance.
    pub top_up_url: Option<String>,
    /// Rate limit for keys or consumers on this plan.
    pub rate_limit: Option<RateLimitConfig>,
}

fn d_tz() -> String {
    "UTC".into()
}

/// `[[tenants]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Stable id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Who consumers should contact.
    pub contact_email: Option<String>,
    /// Overrides the plan's upgrade URL for this tenant.
    pub upgrade_url: Option<String>,
    /// Overrides the plan's top-up URL for this tenant.
    pub top_up_url: Option<String>,
}

/// `[[consumers]]` declared in config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Stable id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// Display name.
    pub name: Option<String>,
    /// Plan id of the subscription.
    pub plan: String,
    /// API keys by id and SHA-256 of their secret part.
    #[serde(default)]
    pub keys: Vec<ConfigKey>,
}

/// An API key declared by hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    /// The key id (the part between `tg_live_` and the secret).
    pub id: String,
    /// Lower-case hex SHA-256 of the whole key string.
    pub sha256: String,
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path, e.g. `routes[2].upstream`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// TOML syntax or a type/unknown-key error at a path.
    #[error("{0}")]
    Parse(ConfigIssue),
    /// Values or cross-references that do not hold.
    #[error("{}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

impl Config {
    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse(ConfigIssue {
                path: if path == "." || path.is_empty() {
                    "(root)".into()
                } else {
                    path
                },
                message: inner.message().trim().to_string(),
            })
        })?;
        let issues = cfg.validate();
        if issues.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    }

    /// Every problem with values and cross-references.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut push = |path: String, message: String| out.push(ConfigIssue { path, message });
        let s = &self.server;
        for (k, v) in [
            ("server.listen", &s.listen),
            ("server.admin_listen", &s.admin_listen),
        ] {
            if v.parse::<SocketAddr>().is_err() {
                push(
                    k.into(),
                    format!("`{v}` is not an address like 127.0.0.1:8080"),
                );
            }
        }
        if s.listen == s.admin_listen && !s.listen.ends_with(":0") {
            push(
                "server.admin_listen".into(),
                "must differ from server.listen".into(),
            );
        }
        if s.max_header_bytes < 1024 {
            push(
                "server.max_header_bytes".into(),
                "must be at least 1024".into(),
            );
        }
        if let Some(w) = s.workers {
            if !(1..=1024).contains(&w) {
                push(
                    "server.workers".into(),
                    "must be between 1 and 1024 (leave it out for one per CPU)".into(),
                );
            }
        }
        if s.currency.len() != 3 || !s.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            push(
                "server.currency".into(),
                "must be a three-letter ISO code such as USD".into(),
            );
        }
        if self.store.path.is_empty() {
            push("store.path".into(), "must not be empty".into());
        }
        if self.store.hold_ttl_secs == 0 {
            push("store.hold_ttl_secs".into(), "must be at least 1".into());
        }
        if self.store.sweep_interval_ms == 0 {
            push(
                "store.sweep_interval_ms".into(),
                "must be at least 1".into(),
            );
        }

        let mut upstreams = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let p = format!("upstreams[{i}]");
            check_id(&u.name, &format!("{p}.name"), &mut push);
            if !upstreams.insert(u.name.as_str()) {
                push(
                    format!("{p}.name"),
                    format!("duplicate upstream `{}`", u.name),
                );
            }
            if u.targets.is_empty() {
                push(format!("{p}.targets"), "needs at least one target".into());
            }
            for (j, t) in u.targets.iter().enumerate() {
                let ok = t
                    .parse::<http::Uri>()
                    .ok()
                    .filter(|uri| uri.scheme_str() == Some("http") && uri.authority().is_some())
                    .is_some();
                if !ok {
                    push(
                        format!("{p}.targets[{j}]"),
                        format!("`{t}` is not a URL like http://127.0.0.1:9000"),
                    );
                }
            }
            if u.connect_timeout_ms == 0 || u.request_timeout_ms == 0 {
                push(p.clone(), "timeouts must be at least 1 ms".into());
            }
        }

        let mut x402_networks = HashSet::new();
        if let Some(x) = &self.x402 {
            for (i, n) in x.networks.iter().enumerate() {
                let p = format!("x402.networks[{i}]");
                let parsed = tollgate_x402::Network::parse(&n.network)
                    .filter(|net| net.eip155_chain_id().is_some());
                if parsed.is_none() {
                    push(
                        format!("{p}.network"),
                        format!(
                            "`{}` is not an EVM CAIP-2 network like eip155:8453",
                            n.network
                        ),
                    );
                }
                if !x402_networks.insert(n.network.as_str()) {
                    push(
                        format!("{p}.network"),
                        format!("duplicate network `{}`", n.network),
                    );
                }
                match (&n.rpc_url, &n.facilitator_url) {
                    (Some(_), Some(_)) | (None, None) => push(
                        p.clone(),
                        "set exactly one of rpc_url and facilitator_url".into(),
                    ),
                    (Some(u), None) => {
                        check_url(u, &format!("{p}.rpc_url"), &mut push);
                        match &n.signer_key_env {
                            None => push(
                                format!("{p}.signer_key_env"),
                                "required with rpc_url (name of the env var holding the settler key)"
                                    .into(),
                            ),
                            Some(e) if e.is_empty() || e.contains('=') => push(
                                format!("{p}.signer_key_env"),
                                "must be an environment variable name".into(),
                            ),
                            _ => {}
                        }
                    }
                    (None, Some(u)) => {
                        check_url(u, &format!("{p}.facilitator_url"), &mut push);
                        if n.signer_key_env.is_some() {
                            push(
                                format!("{p}.signer_key_env"),
                                "only used with rpc_url (the facilitator settles)".into(),
                            );
                        }
                    }
                }
                if n.receipt_timeout_seconds == 0 || n.receipt_timeout_seconds > 600 {
                    push(
                        format!("{p}.receipt_timeout_seconds"),
                        "must be between 1 and 600".into(),
                    );
                }
            }
        }

        let mut routes = HashSet::new();
        let mut matchers = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            check_id(&r.id, &format!("{p}.id"), &mut push);
            if !routes.insert(r.id.as_str()) {
                push(format!("{p}.id"), format!("duplicate route `{}`", r.id));
            }
            if !r.path_prefix.starts_with('/') {
                push(format!("{p}.path_prefix"), "must start with `/`".into());
            }
            if !upstreams.contains(r.upstream.as_str()) {
                push(
                    format!("{p}.upstream"),
                    format!("unknown upstream `{}`", r.upstream),
                );
            }
            if let Some(ms) = &r.methods {
                for (j, m) in ms.iter().enumerate() {
                    if http::Method::from_bytes(m.as_bytes()).is_err()
                        || m.to_ascii_uppercase() != *m
                    {
                        push(
                            format!("{p}.methods[{j}]"),
                            format!("`{m}` is not an upper-case HTTP method"),
                        );
                    }
                }
            }
            if let Some(price) = r.price {
                if price.micros() < 0 {
                    push(format!("{p}.price"), "must not be negative".into());
                }
                if r.public {
                    push(
                        format!("{p}.price"),
                        "a public route cannot have a price".into(),
                    );
                }
            }
            if let Some(x) = &r.x402 {
                if let Err(errs) = x.price().compile() {
                    for e in errs.0 {
                        push(format!("{p}.x402.{}", e.field), e.message);
                    }
                }
                for (j, o) in x.offers.iter().enumerate() {
                    if !x402_networks.contains(o.network.as_str()) {
                        push(
                            format!("{p}.x402.offers[{j}].network"),
                            format!(
                                "no [[x402.networks]] entry for `{}`: the gateway could not settle it",
                                o.network
                            ),
                        );
                    }
                }
            }
            let key = (r.host.clone(), r.path_prefix.clone(), r.methods.clone());
            if !matchers.insert(key) {
                push(
                    p.clone(),
                    "matches exactly the same requests as an earlier route".into(),
                );
            }
        }

        let mut plans = HashSet::new();
        for (i, pl) in self.plans.iter().enumerate() {
            let p = format!("plans[{i}]");
            check_id(&pl.id, &format!("{p}.id"), &mut push);
            if !plans.insert(pl.id.as_str()) {
                push(format!("{p}.id"), format!("duplicate plan `{}`", pl.id));
            }
            if pl.timezone.parse::<Tz>().is_err() {
                push(
                    format!("{p}.timezone"),
                    format!("unknown IANA timezone `{}`", pl.timezone),
                );
            }
            for (j, r) in pl.routes.iter().enumerate() {
                if r != "*" && !routes.contains(r.as_str()) {
                    push(format!("{p}.routes[{j}]"), format!("unknown route `{r}`"));
                }
            }
            for (r, price) in &pl.prices {
                if !routes.contains(r.as_str()) {
                    push(format!("{p}.prices.{r}"), format!("unknown route `{r}`"));
                }
                if price.micros() < 0 {
                    push(format!("{p}.prices.{r}"), "must not be negative".into());
                }
            }
            for (j, c) in pl.spending_caps.iter().enumerate() {
                if c.amount.micros() <= 0 {
                    push(
                        format!("{p}.spending_caps[{j}].amount"),
                        "must be positive".into(),
                    );
                }
            }
            match (pl.overage, &pl.degrade_upstream) {
                (Overage::Degrade, None) => push(
                    format!("{p}.degrade_upstream"),
                    "required when overage = \"degrade\"".into(),
                ),
                (_, Some(u)) if !upstreams.contains(u.as_str()) => push(
                    format!("{p}.degrade_upstream"),
                    format!("unknown upstream `{u}`"),
                ),
                _ => {}
            }
            if let Some(rl) = &pl.rate_limit {
                match (rl.per_second, rl.per_minute) {
                    (Some(0), _) | (_, Some(0)) => {
                        push(format!("{p}.rate_limit"), "rates must be at least 1".into())
                    }
                    (Some(_), Some(_)) | (None, None) => push(
                        format!("{p}.rate_limit"),
                        "set exactly one of per_second and per_minute".into(),
                    ),
                    _ => {}
                }
                if rl.burst == Some(0) {
                    push(format!("{p}.rate_limit.burst"), "must be at least 1".into());
                }
            }
            for (k, u) in [
                ("upgrade_url", &pl.upgrade_url),
                ("top_up_url", &pl.top_up_url),
            ] {
                if let Some(u) = u {
                    check_url(u, &format!("{p}.{k}"), &mut push);
                }
            }
        }

        let mut tenants = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let p = format!("tenants[{i}]");
            check_id(&t.id, &format!("{p}.id"), &mut push);
            if !tenants.insert(t.id.as_str()) {
                push(format!("{p}.id"), format!("duplicate tenant `{}`", t.id));
            }
            for (k, u) in [
                ("upgrade_url", &t.upgrade_url),
                ("top_up_url", &t.top_up_url),
            ] {
                if let Some(u) = u {
                    check_url(u, &format!("{p}.{k}"), &mut push);
                }
            }
        }

        let mut consumers = HashSet::new();
        let mut key_ids = HashSet::new();
        for (i, c) in self.consumers.iter().enumerate() {
            let p = format!("consumers[{i}]");
            check_id(&c.id, &format!("{p}.id"), &mut push);
            if !consumers.insert(c.id.as_str()) {
                push(format!("{p}.id"), format!("duplicate consumer `{}`", c.id));
            }
            if !tenants.contains(c.tenant.as_str()) {
                push(
                    format!("{p}.tenant"),
                    format!("unknown tenant `{}`", c.tenant),
                );
            }
            if !plans.contains(c.plan.as_str()) {
                push(format!("{p}.plan"), format!("unknown plan `{}`", c.plan));
            }
            for (j, k) in c.keys.iter().enumerate() {
                if k.id.is_empty() || !k.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    push(
                        format!("{p}.keys[{j}].id"),
                        "must be non-empty ASCII letters and digits".into(),
                    );
                }
                if !key_ids.insert(k.id.as_str()) {
                    push(
                        format!("{p}.keys[{j}].id"),
                        format!("duplicate key id `{}`", k.id),
                    );
                }
                if k.sha256.len() != 64
                    || !k
                        .sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    push(
                        format!("{p}.keys[{j}].sha256"),
                        "must be 64 lower-case hex digits".into(),
                    );
                }
            }
        }
        out
    }

    /// Problems with the environment the configuration refers to (settler keys of
    /// `[[x402.networks]]`): checked by `config check` and at `serve`, not on parse.
    pub fn env_issues(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        for (i, n) in self.x402.iter().flat_map(|x| x.networks.iter()).enumerate() {
            if let (Some(_), Some(var)) = (&n.rpc_url, &n.signer_key_env) {
                if !std::env::var(var).is_ok_and(|v| !v.trim().is_empty()) {
                    out.push(ConfigIssue {
                        path: format!("x402.networks[{i}].signer_key_env"),
                        message: format!(
                            "environment variable {var} (the settler's private key) is not set"
                        ),
                    });
                }
            }
        }
        out
    }

    /// Look up a plan by id.
    pub fn plan(&self, id: &str) -> Option<&PlanConfig> {
        self.plans.iter().find(|p| p.id == id)
    }
}

fn check_id(id: &str, path: &str, push: &mut impl FnMut(String, String)) {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        push(
            path.into(),
            format!("`{id}` must be 1–64 characters of letters, digits, `-`, `_`, `.`"),
        );
    }
}

fn check_url(u: &str, path: &str, push: &mut impl FnMut(String, String)) {
    if !(u.starts_with("https://") || u.starts_with("http://")) {
        push(path.into(), format!("`{u}` is not an http(s) URL"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9080"
admin_listen = "127.0.0.1:9081"
admin_token = "env:TG_TEST_TOKEN"

[[upstreams]]
name = "api"
targets = ["http://127.0.0.1:9000"]

[[routes]]
id = "data"
path_prefix = "/data"
upstream = "api"
price = "0.01"

[[plans]]
id = "free"
name = "Free"
routes = ["data"]
quotas = { requests = 1000 }
spending_caps = [{ scope = "consumer", amount = "50" }]
rate_limit = { per_second = 10 }
"#;

    #[test]
    fn good_config_loads() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.routes[0].price, Some(Money(10_000)));
        assert_eq!(c.plans[0].quotas.requests, Some(1000));
        assert!(format!("{:?}", c.server.admin_token).contains("env:TG_TEST_TOKEN"));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let bad = GOOD.replace("upstream = \"api\"\nprice", "upstrem = \"api\"\nprice");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.starts_with("routes[0]"), "{e}");
        assert!(e.contains("upstrem"), "{e}");
    }

    #[test]
    fn an_empty_key_at_the_top_is_reported_at_the_root() {
        // Found by the `config` fuzz target: the error had an empty key path.
        match Config::from_toml("\n''='2'").unwrap_err() {
            ConfigError::Parse(issue) => {
                assert_eq!(issue.path, "(root)");
                assert!(issue.message.contains("unknown field"), "{}", issue.message);
            }
            e => panic!("unexpected {e}"),
        }
        let e = Config::from_toml("[server]\n'' = 1").unwrap_err();
        match e {
            ConfigError::Parse(issue) => assert!(!issue.path.is_empty(), "{issue:?}"),
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn cross_references_are_checked() {
        let bad = GOOD
            .replace("upstream = \"api\"", "upstream = \"nope\"")
            .replace("routes = [\"data\"]", "routes = [\"gone\"]");
        match Config::from_toml(&bad).unwrap_err() {
            ConfigError::Invalid(issues) => {
                let paths: Vec<_> = issues.iter().map(|i| i.path.as_str()).collect();
                assert!(paths.contains(&"routes[0].upstream"), "{paths:?}");
                assert!(paths.contains(&"plans[0].routes[0]"), "{paths:?}");
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn bad_values_are_reported() {
        let bad = GOOD.replace("price = \"0.01\"", "price = \"0.0000001\"");
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(
            e.contains("routes[0].price") && e.contains("6 decimal"),
            "{e}"
        );
        let bad = GOOD.replace(
            "[[plans]]\nid = \"free\"",
            "[[plans]]\nid = \"free\"\ntimezone = \"Mars/Base\"",
        );
        let e = Config::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("plans[0].timezone"), "{e}");
        let e = Config::from_toml("server = 3").unwrap_err().to_string();
        assert!(e.contains("server"), "{e}");
    }

    const X402: &str = r#"
[x402]
[[x402.networks]]
network = "eip155:31337"
rpc_url = "http://127.0.0.1:8545"
signer_key_env = "TOLLGATE_X402_SIGNER_KEY"

[[routes]]
id = "paid"
path_prefix = "/paid"
upstream = "api"
public = true
[routes.x402]
amount = "10000"
description = "Premium data"
mime_type = "application/json"
[[routes.x402.offers]]
network = "eip155:31337"
asset = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
eip712_name = "USD Coin"
eip712_version = "2"
max_timeout_seconds = 60
"#;

    #[test]
    fn x402_config_loads_and_compiles() {
        let c = Config::from_toml(&format!("{GOOD}{X402}")).unwrap();
        let r = &c.routes[1];
        let x = r.x402.as_ref().unwrap();
        assert!(!x.settle_after_response);
        let priced = x.price().compile().unwrap();
        assert_eq!(priced.offers[0].chain_id, 31337);
        assert_eq!(c.x402.unwrap().networks[0].receipt_timeout_seconds, 30);
    }

    #[test]
    fn x402_errors_name_their_paths() {
        let issues = |text: String| match Config::from_toml(&text).unwrap_err() {
            ConfigError::Invalid(i) => i.into_iter().map(|i| i.path).collect::<Vec<_>>(),
            ConfigError::Parse(i) => vec![i.path],
        };
        let bad = format!("{GOOD}{X402}")
            .replace("pay_to = \"0x2096", "pay_to = \"0xZZ96")
            .replace("amount = \"10000\"", "amount = \"10000\"\nusd = \"0.01\"");
        let p = issues(bad);
        assert!(
            p.contains(&"routes[1].x402.offers[0].pay_to".to_string()),
            "{p:?}"
        );
        assert!(p.contains(&"routes[1].x402.usd".to_string()), "{p:?}");
        let bad = format!("{GOOD}{X402}").replace(
            "network = \"eip155:31337\"\nrpc",
            "network = \"eip155:1\"\nrpc",
        );
        let p = issues(bad);
        assert!(
            p.contains(&"routes[1].x402.offers[0].network".to_string()),
            "{p:?}"
        );
        let ok = format!("{GOOD}{X402}").replace(
            "rpc_url = \"http://127.0.0.1:8545\"\nsigner_key_env = \"TOLLGATE_X402_SIGNER_KEY\"",
            "facilitator_url = \"http://127.0.0.1:9000\"",
        );
        assert!(Config::from_toml(&ok).is_ok());
        let bad = format!("{GOOD}{X402}").replace(
            "signer_key_env = \"TOLLGATE_X402_SIGNER_KEY\"",
            "signer_key_env = \"K\"\nfacilitator_url = \"http://127.0.0.1:9000\"",
        );
        let p = issues(bad);
        assert!(p.contains(&"x402.networks[0]".to_string()), "{p:?}");
        let bad = format!("{GOOD}{X402}").replace("amount = \"10000\"", "");
        let p = issues(bad);
        assert!(p.contains(&"routes[1].x402.amount".to_string()), "{p:?}");
        let bad = format!("{GOOD}{X402}").replace("mime_type = \"application/json\"", "mime = 1");
        let p = issues(bad);
        assert!(p[0].starts_with("routes[1].x402"), "{p:?}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
