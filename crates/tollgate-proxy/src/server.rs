//! Accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, TCP_NODELAY on every
//! socket, graceful shutdown that lets in-flight requests finish.
//!
//! The proxy runs thread per core: [`bind_listeners`] opens one listening socket per worker
//! (`SO_REUSEPORT` on Linux, so the kernel spreads connections over them) and
//! [`spawn_workers`] gives each its own thread with a single-threaded runtime. A connection,
//! its requests and the upstream connections they use (each worker has its own pools, see
//! [`worker_index`]) stay on one thread: no work stealing, no cross-thread wake-ups on the
//! proxy path. Charges still meet on the store's log writer.

use std::cell::Cell;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::pipeline::Gateway;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The proxy worker this thread is (0 on any other thread): picks the worker's own upstream
/// connection pool.
pub fn worker_index() -> usize {
    WORKER.with(Cell::get)
}

/// Bind `n` listening sockets on `addr` (the first address it resolves to that binds). On
/// Linux each is its own socket with `SO_REUSEPORT`; elsewhere they share one socket.
pub fn bind_listeners(addr: &str, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let n = n.max(1);
    let mut last_err = None;
    for a in addr.to_socket_addrs()? {
        match bind_one(a, n > 1) {
            Ok(first) => {
                let local = first.local_addr()?;
                let mut out = Vec::with_capacity(n);
                out.push(first);
                for _ in 1..n {
                    #[cfg(target_os = "linux")]
                    out.push(bind_one(local, true)?);
                    #[cfg(not(target_os = "linux"))]
                    {
                        let _ = local;
                        out.push(out[0].try_clone()?);
                    }
                }
                return Ok(out);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    sock.set_reuse_address(true)?;
    #[cfg(target_os = "linux")]
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Serve `gw` on each listener from its own thread and single-threaded runtime until
/// `shutdown` turns `true`, then drain each for at most `grace`. The returned future resolves
/// when every worker has stopped.
pub fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    gw: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<impl Future<Output = ()>> {
    let mut stopped = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel::<()>();
        let gw = Arc::clone(&gw);
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name(format!("proxy-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(i));
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            // Journal answers for this worker's requests, one wake-up a batch.
                            tokio::spawn(tollgate_store::completions::pump());
                            tokio::spawn(keep_a_timer_near());
                            let listener = TcpListener::from_std(listener)?;
                            run(listener, gw, shutdown_requested(shutdown), grace).await
                        })
                    });
                if let Err(e) = served {
                    tracing::error!(worker = i, error = %e, "proxy worker failed");
                }
                let _ = tx.send(());
            })?;
        stopped.push(rx);
    }
    Ok(async move {
        for rx in stopped {
            let _ = rx.await;
        }
    })
}

/// How often a worker's timer wheel wakes for [`keep_a_timer_near`].
const NEAR_TIMER: Duration = Duration::from_secs(1);

/// Keep a timer due within [`NEAR_TIMER`] in this worker's runtime, forever (the task ends
/// with the runtime). Every kept-alive connection arms hyper's 30 s header-read timer when it
/// starts reading its next request; tokio wakes the runtime's driver (a write to its eventfd,
/// and one more turn of `epoll_wait` to read it) for a timer due before the earliest one it
/// last looked at, or when it last saw no timer at all, which is how a governed worker parks:
/// each of its connections is waiting on the charge log, none on a header. With a timer
/// always due sooner, a header timer never needs that wake. Measured on a 2-core VM over 3 s
/// of governed saturation (`wrk -c64`, `perf stat`): 30,068 `write` calls before, 8,738 after
/// (the charge log's and its wake-ups of the workers); CPU per request unchanged within the
/// noise (`bench/ab`, 6 rounds: workers 37.34 and 37.21 us).
async fn keep_a_timer_near() {
    let mut tick = tokio::time::interval(NEAR_TIMER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Resolves once `rx` reads `true` (or its sender is gone).
pub async fn shutdown_requested(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Serve `gw` on `listener` until `shutdown` resolves, then drain for at most `grace`.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let max_head = gw.snapshot.load().config.server.max_header_bytes;
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper answers 431 on its own beyond its buffer; ours (with the contract body) sits below.
    builder
        .http1()
        .max_buf_size((max_head * 2).max(8192 + 1))
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().max_header_list_size((max_head * 2) as u32);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gw = Arc::clone(&gw);
                let svc = service_fn(move |req| {
                    let gw = Arc::clone(&gw);
                    async move { Ok::<_, std::convert::Infallible>(gw.handle(req, remote).await) }
                });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn workers_share_one_port_and_each_gets_connections() {
        let ls = bind_listeners("127.0.0.1:0", 2).unwrap();
        assert_eq!(ls.len(), 2);
        let addr = ls[0].local_addr().unwrap();
        assert_eq!(ls[1].local_addr().unwrap(), addr);
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        // Every connection is queued on one of the two sockets; count what each accepts.
        let mut per = [0usize; 2];
        for (i, l) in ls.iter().enumerate() {
            while let Ok((_s, _)) = l.accept() {
                per[i] += 1;
            }
        }
        assert_eq!(per[0] + per[1], clients.len(), "{per:?}");
        #[cfg(target_os = "linux")]
        assert!(
            per[0] > 0 && per[1] > 0,
            "SO_REUSEPORT spreads connections: {per:?}"
        );
    }

    #[test]
    fn a_bad_listen_address_is_an_error() {
        assert!(bind_listeners("not an address", 2).is_err());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        // A port held by a socket without SO_REUSEPORT cannot be shared.
        assert!(bind_listeners(&addr, 2).is_err());
    }
}
