//! Accept loop: HTTP/1.1 and HTTP/2 (prior knowledge) on one listener, TCP_NODELAY on every
//! socket, graceful shutdown that lets in-flight requests finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::pipeline::Gateway;

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
