//! Wiring of `tollgate serve`: load and validate config, open the store, bind the proxy and
//! admin listeners, run the sweeper and the config reloader, shut down gracefully.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use tollgate_core::config::Config;
use tollgate_core::Money;
use tollgate_proxy::x402::X402Runtime;
use tollgate_proxy::{Gateway, Snapshot};
use tollgate_store::{Store, SystemClock};

use crate::{EXIT_CONFIG, EXIT_IOERR, EXIT_NOINPUT, EXIT_OSERR};

/// Print configuration issues the way every config error is printed; the exit code for them.
fn config_issues(path: &Path, issues: &[tollgate_core::config::ConfigIssue]) -> ExitCode {
    eprintln!("tollgate: invalid configuration {}:", path.display());
    for i in issues {
        eprintln!("  {i}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Like [`load_config`], and also check the environment it refers to (x402 settler keys).
pub fn load_config_for_serving(path: &Path) -> Result<Config, ExitCode> {
    let cfg = load_config(path)?;
    let issues = cfg.env_issues();
    if issues.is_empty() {
        Ok(cfg)
    } else {
        Err(config_issues(path, &issues))
    }
}

/// Read and validate a configuration file, printing every problem.
pub fn load_config(path: &Path) -> Result<Config, ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("tollgate: cannot read {}: {e}", path.display());
        ExitCode::from(EXIT_NOINPUT)
    })?;
    Config::from_toml(&text).map_err(|e| {
        eprintln!("tollgate: invalid configuration {}:", path.display());
        for line in e.to_string().lines() {
            eprintln!("  {line}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// A running gateway (proxy + admin), as started by `serve` and `demo`.
pub struct Running {
    /// The proxy's bound address.
    pub proxy_addr: std::net::SocketAddr,
    /// The admin API's bound address.
    pub admin_addr: std::net::SocketAddr,
    /// Resolves when both servers have stopped.
    pub done: tokio::task::JoinHandle<()>,
    /// The store.
    pub store: Arc<Store>,
}

/// Open the store, bind both listeners and start serving. Exit codes on failure.
pub async fn start(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running, ExitCode> {
    let store = Store::open(&config.store, Arc::new(SystemClock)).map_err(|e| {
        eprintln!(
            "tollgate: cannot open the store at {}: {e}",
            config.store.path
        );
        ExitCode::from(EXIT_IOERR)
    })?;
    let store = Arc::new(store);
    if let Err(e) = store.sync_config(&config).await {
        eprintln!("tollgate: cannot apply the consumers and keys of the configuration: {e}");
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let x402 = X402Runtime::build(&config, Arc::clone(&store.x402)).map_err(|issues| {
        config_issues(
            config_path.as_deref().unwrap_or(Path::new("(config)")),
            &issues,
        )
    })?;
    let config = Arc::new(config);
    let snapshot = Snapshot::compile(Arc::clone(&config)).map_err(|e| {
        eprintln!("tollgate: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let workers = config.server.worker_threads();
    let proxy =
        tollgate_proxy::server::bind_listeners(&config.server.listen, workers).map_err(|e| {
            eprintln!("tollgate: cannot listen on {}: {e}", config.server.listen);
            ExitCode::from(EXIT_OSERR)
        })?;
    let admin = bind(&config.server.admin_listen).await?;
    let proxy_addr = proxy[0]
        .local_addr()
        .map_err(|_| ExitCode::from(EXIT_OSERR))?;
    let admin_addr = admin.local_addr().map_err(|_| ExitCode::from(EXIT_OSERR))?;
    let gw = Gateway::new(snapshot, Arc::clone(&store));
    gw.x402.store(x402.map(Arc::new));
    let shared_cfg = Arc::new(ArcSwap::from(Arc::clone(&config)));
    let token = config.server.admin_token.as_ref().and_then(|t| t.resolve());
    if token.is_none() {
        tracing::warn!(
            "no admin token configured (server.admin_token): the admin API refuses every request"
        );
    }
    let admin_state = tollgate_admin::AdminState {
        store: Arc::clone(&store),
        config: Arc::clone(&shared_cfg),
        token,
    };

    spawn_sweeper(
        Arc::clone(&store),
        config.store.sweep_interval_ms,
        config.store.idempotency_ttl_secs,
        shutdown.clone(),
    );
    if let Some(path) = config_path {
        spawn_reloader(
            path,
            Arc::clone(&gw),
            Arc::clone(&shared_cfg),
            shutdown.clone(),
        );
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let proxy_stopped = tollgate_proxy::server::spawn_workers(proxy, gw, shutdown.clone(), grace)
        .map_err(|e| {
        eprintln!("tollgate: cannot start the proxy workers: {e}");
        ExitCode::from(EXIT_OSERR)
    })?;
    let s2 = tollgate_proxy::server::shutdown_requested(shutdown);
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, workers, "tollgate listening");
    let done = tokio::spawn(async move {
        let admin_task = tokio::spawn(async move {
            if let Err(e) = tollgate_admin::serve(admin, admin_state, s2).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        proxy_stopped.await;
        let _ = admin_task.await;
    });
    Ok(Running {
        proxy_addr,
        admin_addr,
        done,
        store,
    })
}

async fn bind(addr: &str) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("tollgate: cannot listen on {addr}: {e}");
        ExitCode::from(EXIT_OSERR)
    })
}

/// `tollgate serve`.
pub async fn serve(path: PathBuf) -> ExitCode {
    let config = match load_config_for_serving(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (tx, rx) = watch::channel(false);
    let running = match start(config, Some(path), rx).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = tx.send(true);
    let _ = running.done.await;
    if let Err(e) = running.store.journal.flush().await {
        tracing::error!(error = %e, "journal could not be flushed at shutdown");
    }
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn spawn_sweeper(
    store: Arc<Store>,
    every_ms: u64,
    idem_ttl_secs: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(1)));
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = store.clock().now_ms();
            let released = store.ledger.sweep(now);
            if released > 0 {
                tracing::warn!(released, "expired holds released");
            }
            n += 1;
            if n.is_multiple_of(60) {
                store.idem.expire(now - idem_ttl_secs as i64 * 1000);
            }
        }
    });
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reload on SIGHUP or when the file changes: parse, validate, compile, then swap in one
/// step. A bad file is logged and the running configuration stays.
fn spawn_reloader(
    path: PathBuf,
    gw: Arc<Gateway>,
    shared: Arc<ArcSwap<Config>>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut last = mtime(&path);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            #[cfg(unix)]
            let hup_fut = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fut = std::future::pending::<()>();
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = hup_fut => true,
                _ = shutdown.changed() => return,
            };
            let now = mtime(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "config reload: cannot read; keeping the running configuration");
                    continue;
                }
            };
            let cfg = match Config::from_toml(&text) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::error!(error = %e, "config reload: invalid; keeping the running configuration");
                    continue;
                }
            };
            if let Err(e) = gw.store.sync_config(&cfg).await {
                tracing::error!(error = %e, "config reload: cannot apply consumers/keys; keeping the running configuration");
                continue;
            }
            let env = cfg.env_issues();
            if !env.is_empty() {
                for i in env {
                    tracing::error!(issue = %i, "config reload: invalid; keeping the running configuration");
                }
                continue;
            }
            let current = gw.x402.load_full();
            let x402 = match current {
                Some(rt) if rt.serves(&cfg) => Some(rt),
                None if cfg.x402.is_none() => None,
                _ => match X402Runtime::build(&cfg, Arc::clone(&gw.store.x402)) {
                    Ok(rt) => rt.map(Arc::new),
                    Err(issues) => {
                        for i in issues {
                            tracing::error!(issue = %i, "config reload: invalid; keeping the running configuration");
                        }
                        continue;
                    }
                },
            };
            match Snapshot::compile_after(Arc::clone(&cfg), Some(&gw.snapshot.load())) {
                Ok(s) => {
                    gw.x402.store(x402);
                    gw.snapshot.store(Arc::new(s));
                    shared.store(cfg);
                    tracing::info!("configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "config reload: cannot compile; keeping the running configuration")
                }
            }
        }
    });
}

/// `tollgate seed`.
pub fn seed(
    config: &Path,
    tenant: &str,
    plan: &str,
    n: usize,
    balance: &str,
    prefix: &str,
    out: &Path,
) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.plan(plan).is_none() {
        eprintln!("tollgate: unknown plan `{plan}`");
        return ExitCode::from(EXIT_CONFIG);
    }
    let balance = match Money::parse(balance) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tollgate: --balance: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let keys = match tollgate_store::seed(
        Path::new(&cfg.store.path),
        tenant,
        plan,
        n,
        balance.micros(),
        prefix,
    ) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tollgate: seeding failed: {e}");
            return ExitCode::from(EXIT_IOERR);
        }
    };
    let mut text = keys.join("\n");
    text.push('\n');
    if let Err(e) = std::fs::write(out, text) {
        eprintln!("tollgate: cannot write {}: {e}", out.display());
        return ExitCode::from(EXIT_IOERR);
    }
    eprintln!(
        "seeded {n} consumers of tenant `{tenant}` on plan `{plan}`; keys in {}",
        out.display()
    );
    ExitCode::SUCCESS
}
