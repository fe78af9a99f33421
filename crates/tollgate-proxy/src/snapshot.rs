//! The compiled form of a configuration: what a request reads, loaded once per request from
//! an `ArcSwap` so a reload swaps everything in one step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use http::{Method, Uri};

use tollgate_core::config::{Config, Overage, PlanConfig, RateLimitConfig, RouteConfig};

use crate::connpool::ConnPool;
use tollgate_core::Money;

/// One upstream target with its passive health state.
#[derive(Debug)]
pub struct Target {
    /// `scheme://authority` of the target.
    pub base: Uri,
    /// `host:port`, for the `Host` header we send.
    pub authority: http::uri::Authority,
    fails: AtomicU32,
    skip_until_ms: AtomicI64,
}

/// A named upstream: targets used round-robin, failing ones skipped for a while.
#[derive(Debug)]
pub struct Upstream {
    /// Name.
    pub name: String,
    /// Targets.
    pub targets: Vec<Target>,
    next: AtomicUsize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response head.
    pub request_timeout: Duration,
    failure_threshold: u32,
    cooldown_ms: i64,
    /// Keep-alive connections: per proxy worker, one pool per target, so an upstream
    /// connection is driven by the thread whose requests use it.
    pools: Box<[Box<[Arc<ConnPool>]>]>,
}

impl Upstream {
    /// This worker's ([`crate::server::worker_index`]) connections to target `idx`.
    pub fn pool(&self, idx: usize) -> &Arc<ConnPool> {
        &self.pools[crate::server::worker_index() % self.pools.len()][idx]
    }

    /// Pick the next healthy target (or, when all are cooling down, the next one anyway).
    pub fn pick(&self, now_ms: i64) -> usize {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            if self.targets[idx].skip_until_ms.load(Ordering::Relaxed) <= now_ms {
                return idx;
            }
        }
        start % n
    }

    /// Record the outcome of a call to target `idx`.
    pub fn report(&self, idx: usize, ok: bool, now_ms: i64) {
        let Some(t) = self.targets.get(idx) else {
            return;
        };
        if ok {
            if t.fails.load(Ordering::Relaxed) != 0 {
                t.fails.store(0, Ordering::Relaxed);
            }
        } else {
            let f = t.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if f >= self.failure_threshold {
                t.skip_until_ms
                    .store(now_ms + self.cooldown_ms, Ordering::Relaxed);
                t.fails.store(0, Ordering::Relaxed);
                tracing::warn!(upstream = %self.name, target = %t.base, "target skipped after repeated failures");
            }
        }
    }
}

/// A compiled plan.
#[derive(Debug)]
pub struct Plan {
    /// The plan as configured.
    pub cfg: PlanConfig,
    /// Its timezone.
    pub tz: Tz,
    /// The calendar-aligned anchor in `tz` (ms since the epoch) of tenant-wide periods.
    pub calendar_anchor_ms: i64,
    /// Entitled to every route.
    pub all_routes: bool,
    /// Degrade target, when `overage = "degrade"`.
    pub degrade: Option<Arc<Upstream>>,
}

impl Plan {
    /// Whether the plan includes `route`.
    pub fn entitled(&self, route: &str) -> bool {
        self.all_routes || self.cfg.routes.iter().any(|r| r == route)
    }

    /// Price of one request on `route`.
    pub fn price(&self, route: &Route) -> Money {
        self.cfg
            .prices
            .get(&route.cfg.id)
            .copied()
            .or(route.cfg.price)
            .unwrap_or(Money::ZERO)
    }

    /// `overage` policy.
    pub fn overage(&self) -> Overage {
        self.cfg.overage
    }

    /// Rate limit as (emission interval ns, tolerance ns).
    pub fn gcra(&self) -> Option<(u64, u64, &RateLimitConfig)> {
        let rl = self.cfg.rate_limit.as_ref()?;
        let (count, window_ns) = match (rl.per_second, rl.per_minute) {
            (Some(n), _) => (n, 1_000_000_000u64),
            (None, Some(n)) => (n, 60_000_000_000u64),
            _ => return None,
        };
        let t = window_ns / u64::from(count.max(1));
        let burst = u64::from(rl.burst.unwrap_or(count).max(1));
        Some((t, t * (burst - 1), rl))
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route as configured.
    pub cfg: RouteConfig,
    /// Methods it matches (`None`: any).
    pub methods: Option<Vec<Method>>,
    /// Its upstream.
    pub upstream: Arc<Upstream>,
    /// Its x402 price, compiled.
    pub x402: Option<Arc<X402Route>>,
}

/// The x402 price of a route, compiled at load.
#[derive(Debug)]
pub struct X402Route {
    /// Offers, challenge builder and reference for verification.
    pub priced: tollgate_x402::PricedRoute,
    /// Settle only after the upstream answered below 500.
    pub settle_after_response: bool,
    /// Payments must carry the `payment-identifier` extension.
    pub require_payment_identifier: bool,
}

/// Everything a request needs from the configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration it was compiled from.
    pub config: Arc<Config>,
    /// Routes, most specific first (host-bound before any-host, then longer prefixes).
    pub routes: Vec<Arc<Route>>,
    /// Plans by id.
    pub plans: HashMap<String, Arc<Plan>>,
    /// Upstreams by name.
    upstreams: HashMap<String, Arc<Upstream>>,
}

fn compile_upstream(
    u: &tollgate_core::config::UpstreamConfig,
    workers: usize,
) -> Result<Upstream, String> {
    let mut targets = Vec::new();
    for t in &u.targets {
        let base: Uri = t.parse().map_err(|e| format!("upstream {}: {e}", u.name))?;
        let authority = base
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream {}: no host in {t}", u.name))?;
        targets.push(Target {
            base,
            authority,
            fails: AtomicU32::new(0),
            skip_until_ms: AtomicI64::new(0),
        });
    }
    let pools = (0..workers.max(1))
        .map(|_| targets.iter().map(|_| Arc::default()).collect())
        .collect();
    Ok(Upstream {
        pools,
        name: u.name.clone(),
        targets,
        next: AtomicUsize::new(0),
        connect_timeout: Duration::from_millis(u.connect_timeout_ms),
        request_timeout: Duration::from_millis(u.request_timeout_ms),
        failure_threshold: u.failure_threshold.max(1),
        cooldown_ms: u.cooldown_ms as i64,
    })
}

impl Snapshot {
    /// Compile a validated configuration.
    pub fn compile(config: Arc<Config>) -> Result<Snapshot, String> {
        Snapshot::compile_after(config, None)
    }

    /// Compile a configuration that replaces `previous` (a reload): an upstream whose settings
    /// did not change is carried over as it is, with its warm keep-alive pool and its targets'
    /// failure counts, so a reload neither reconnects to every upstream nor forgets a target it
    /// is skipping. Changed or new upstreams start fresh; removed ones are dropped once the
    /// requests still using them finish.
    pub fn compile_after(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        let mut ups = HashMap::new();
        for u in &config.upstreams {
            let kept = previous
                .filter(|p| p.config.upstreams.contains(u))
                .and_then(|p| p.upstream(&u.name));
            let up = match kept {
                Some(up) => up,
                None => Arc::new(compile_upstream(u, config.server.worker_threads())?),
            };
            ups.insert(u.name.clone(), up);
        }
        let mut routes = Vec::new();
        for r in &config.routes {
            let upstream = ups
                .get(&r.upstream)
                .cloned()
                .ok_or_else(|| format!("route {}: unknown upstream", r.id))?;
            let methods = r.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            });
            let x402 = match &r.x402 {
                Some(x) => Some(Arc::new(X402Route {
                    priced: x
                        .price()
                        .compile()
                        .map_err(|e| format!("routes {}: x402: {e}", r.id))?,
                    settle_after_response: x.settle_after_response,
                    require_payment_identifier: x.require_payment_identifier,
                })),
                None => None,
            };
            routes.push(Arc::new(Route {
                cfg: r.clone(),
                methods,
                upstream,
                x402,
            }));
        }
        routes.sort_by(|a, b| {
            b.cfg
                .host
                .is_some()
                .cmp(&a.cfg.host.is_some())
                .then(b.cfg.path_prefix.len().cmp(&a.cfg.path_prefix.len()))
        });
        let mut plans = HashMap::new();
        for p in &config.plans {
            let tz: Tz = p
                .timezone
                .parse()
                .map_err(|_| format!("plan {}: bad timezone", p.id))?;
            let degrade = p
                .degrade_upstream
                .as_ref()
                .and_then(|u| ups.get(u).cloned());
            let all_routes = p.routes.iter().any(|r| r == "*");
            plans.insert(
                p.id.clone(),
                Arc::new(Plan {
                    cfg: p.clone(),
                    tz,
                    calendar_anchor_ms: tollgate_core::period::calendar_anchor(tz)
                        .timestamp_millis(),
                    all_routes,
                    degrade,
                }),
            );
        }
        Ok(Snapshot {
            config,
            routes,
            plans,
            upstreams: ups,
        })
    }

    /// An upstream by name.
    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.get(name).cloned()
    }

    /// The route for a request, if any.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            if let Some(h) = &r.cfg.host {
                if host.is_none_or(|x| !x.eq_ignore_ascii_case(h)) {
                    return false;
                }
            }
            if !prefix_matches(&r.cfg.path_prefix, path) {
                return false;
            }
            r.methods.as_ref().is_none_or(|ms| ms.contains(method))
        })
    }
}

/// Segment-aware prefix match: `/v1` matches `/v1`, `/v1/`, `/v1/x`, not `/v10`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let p = prefix.trim_end_matches('/');
    match path.strip_prefix(p) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_segment_aware() {
        assert!(prefix_matches("/v1", "/v1"));
        assert!(prefix_matches("/v1", "/v1/x"));
        assert!(prefix_matches("/v1/", "/v1/x"));
        assert!(!prefix_matches("/v1", "/v10"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn most_specific_route_wins() {
        let cfg = Config::from_toml(
            r#"
[[upstreams]]
name = "a"
targets = ["http://127.0.0.1:1"]
[[routes]]
id = "all"
path_prefix = "/"
upstream = "a"
[[routes]]
id = "data"
path_prefix = "/data"
upstream = "a"
[[routes]]
id = "data-host"
host = "api.example.com"
path_prefix = "/data"
methods = ["GET"]
upstream = "a"
"#,
        )
        .unwrap();
        let s = Snapshot::compile(Arc::new(cfg)).unwrap();
        let id = |h: Option<&str>, p: &str, m: Method| s.route(h, p, &m).map(|r| r.cfg.id.clone());
        assert_eq!(id(None, "/data/x", Method::GET).as_deref(), Some("data"));
        assert_eq!(
            id(Some("api.example.com"), "/data/x", Method::GET).as_deref(),
            Some("data-host")
        );
        assert_eq!(
            id(Some("api.example.com"), "/data/x", Method::POST).as_deref(),
            Some("data")
        );
        assert_eq!(id(None, "/other", Method::GET).as_deref(), Some("all"));
    }

    #[test]
    fn a_reload_keeps_unchanged_upstreams_and_replaces_changed_ones() {
        let toml = |b_target: &str| {
            format!(
                r#"
[[upstreams]]
name = "a"
targets = ["http://127.0.0.1:1"]
[[upstreams]]
name = "b"
targets = ["{b_target}"]
[[routes]]
id = "ra"
path_prefix = "/a"
upstream = "a"
[[routes]]
id = "rb"
path_prefix = "/b"
upstream = "b"
"#
            )
        };
        let first = Snapshot::compile(Arc::new(
            Config::from_toml(&toml("http://127.0.0.1:2")).unwrap(),
        ))
        .unwrap();
        let a1 = first.upstream("a").unwrap();
        let b1 = first.upstream("b").unwrap();
        // A target that is failing is remembered across the reload.
        a1.targets[0].fails.store(2, Ordering::Relaxed);
        let second = Snapshot::compile_after(
            Arc::new(Config::from_toml(&toml("http://127.0.0.1:3")).unwrap()),
            Some(&first),
        )
        .unwrap();
        let a2 = second.upstream("a").unwrap();
        let b2 = second.upstream("b").unwrap();
        assert!(
            Arc::ptr_eq(&a1, &a2),
            "unchanged upstream must be carried over"
        );
        assert_eq!(a2.targets[0].fails.load(Ordering::Relaxed), 2);
        assert!(!Arc::ptr_eq(&b1, &b2), "changed upstream must be rebuilt");
        assert_eq!(b2.targets[0].authority.as_str(), "127.0.0.1:3");
        // Routes of the new snapshot point at the carried-over pool.
        let ra = second.route(None, "/a/x", &Method::GET).unwrap();
        assert!(Arc::ptr_eq(&ra.upstream, &a1));
    }
}
