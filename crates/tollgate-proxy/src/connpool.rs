//! Keep-alive HTTP/1.1 connections to upstream targets: one pool per proxy worker and target.
//!
//! Each proxy worker runs its own single-threaded runtime and keeps its own idle connections
//! to each target, so taking one is a pop from a short list: no shared map keyed by
//! scheme and authority to hash on every request, no lock another thread holds, and no task
//! spawned per request to hand the connection back. A connection goes back to its pool when
//! the response body has been read to its end ([`UpstreamBody`]); a body dropped early takes
//! its connection with it (HTTP/1.1 cannot reuse a connection with a response half read).
//! Idle connections older than [`IDLE_TIMEOUT`] are closed when next seen.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::respond::Body;

/// An idle connection is closed once it has waited this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per worker and target; more are closed as they come back.
pub const MAX_IDLE: usize = 1024;
/// TCP keep-alive probes on upstream connections start after this much silence.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (nothing reached the upstream).
    #[error("cannot connect to {authority}: {reason}")]
    Connect {
        /// The target.
        authority: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection was made but the exchange failed.
    #[error("upstream exchange failed: {0}")]
    Exchange(#[from] hyper::Error),
}

impl UpstreamError {
    /// Whether the request never reached the upstream (so it may be sent to another target).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. })
    }
}

struct Idle {
    tx: SendRequest<Body>,
    since: Instant,
}

/// The idle connections of one worker to one target.
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnPool {
    /// Send `req` (origin-form URI, `Host` set) to `authority`, on an idle connection when
    /// one is ready, else on a new one made within `connect_timeout`.
    pub async fn send(
        self: &Arc<Self>,
        authority: &http::uri::Authority,
        connect_timeout: Duration,
        req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let (mut tx, pooled) = match self.take_ready().await {
            Some(tx) => (tx, true),
            None => (connect(authority, connect_timeout).await?, false),
        };
        let resp = match tx.try_send_request(req).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // The idle connection closed before the request went out on it (the upstream
                // timed it out): the request goes on a new one.
                Some(req) if pooled => {
                    tx = connect(authority, connect_timeout).await?;
                    tx.send_request(req).await?
                }
                _ => return Err(UpstreamError::Exchange(e.into_error())),
            },
        };
        let (parts, body) = resp.into_parts();
        let body = if body.is_end_stream() {
            self.put(tx);
            UpstreamBody {
                inner: body,
                back: None,
            }
        } else {
            UpstreamBody {
                inner: body,
                back: Some((tx, Arc::clone(self))),
            }
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The most recently returned idle connection that is (or becomes) ready for a request;
    /// closed and expired ones are dropped on the way.
    async fn take_ready(&self) -> Option<SendRequest<Body>> {
        loop {
            let idle = {
                let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                list.pop()
            }?;
            if idle.tx.is_closed() || idle.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            let mut tx = idle.tx;
            // Returned at the end of its last response body: ready, or about to be once its
            // connection task has seen that end.
            if tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    fn put(&self, tx: SendRequest<Body>) {
        if tx.is_closed() {
            return;
        }
        let mut list = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < MAX_IDLE {
            list.push(Idle {
                tx,
                since: Instant::now(),
            });
        }
    }

    /// Idle connections held now (for tests and diagnostics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Open a connection to `authority` (every address it resolves to, in turn), with
/// `TCP_NODELAY` and keep-alive, and start its HTTP/1.1 connection task on this runtime.
async fn connect(
    authority: &http::uri::Authority,
    timeout: Duration,
) -> Result<SendRequest<Body>, UpstreamError> {
    let fail = |reason: String| UpstreamError::Connect {
        authority: authority.to_string(),
        reason,
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(timeout, async {
        let addrs: Vec<SocketAddr> = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect(),
        };
        let mut last = format!("{host} resolves to no address");
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        Err(last)
    })
    .await
    .map_err(|_| fail(format!("timed out after {} ms", timeout.as_millis())))?
    .map_err(fail)?;
    stream
        .set_nodelay(true)
        .map_err(|e| fail(format!("cannot set TCP_NODELAY: {e}")))?;
    let sock = socket2::SockRef::from(&stream);
    if let Err(e) = sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE)) {
        tracing::debug!(error = %e, "TCP keep-alive not set on an upstream connection");
    }
    let (tx, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}

/// An upstream response body. Read to its end, it hands its connection back to the pool it
/// came from; dropped before that, the connection closes with it.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<ConnPool>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let done = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                // The connection is broken: it is not handed back.
                this.back = None;
                false
            }
            Poll::Pending => false,
        };
        if done {
            if let Some((tx, pool)) = this.back.take() {
                pool.put(tx);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    /// A loopback HTTP/1.1 server answering `body` to every request; counts the connections
    /// it accepted. With `keep_alive` false it closes each connection after one response.
    async fn server(
        body: &'static str,
        keep_alive: bool,
    ) -> (http::uri::Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (addr.to_string().parse().unwrap(), accepted)
    }

    fn get(authority: &http::uri::Authority) -> Request<Body> {
        let mut r = Request::new(Empty::new().map_err(|e| match e {}).boxed());
        *r.uri_mut() = http::Uri::from_static("/x");
        r.headers_mut()
            .insert(http::header::HOST, authority.as_str().parse().unwrap());
        r
    }

    const T: Duration = Duration::from_secs(5);

    /// GET through `pool` and read the body to its end.
    async fn fetch(pool: &Arc<ConnPool>, auth: &http::uri::Authority) -> Bytes {
        let resp = pool.send(auth, T, get(auth)).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_was_read() {
        let (auth, accepted) = server("hello", true).await;
        let pool = Arc::new(ConnPool::default());
        for _ in 0..5 {
            assert_eq!(&fetch(&pool, &auth).await[..], b"hello");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_with_it() {
        let (auth, accepted) = server("a longer body", true).await;
        let pool = Arc::new(ConnPool::default());
        let resp = pool.send(&auth, T, get(&auth)).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(&fetch(&pool, &auth).await[..], b"a longer body");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced_without_failing_the_request() {
        let (auth, accepted) = server("once", false).await;
        let pool = Arc::new(ConnPool::default());
        for _ in 0..4 {
            assert_eq!(&fetch(&pool, &auth).await[..], b"once");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_all_come_back() {
        let (auth, accepted) = server("c", true).await;
        let pool = Arc::new(ConnPool::default());
        let calls = (0..8).map(|_| {
            let pool = Arc::clone(&pool);
            let auth = auth.clone();
            async move { fetch(&pool, &auth).await }
        });
        let bodies = futures_util::future::join_all(calls).await;
        assert!(bodies.iter().all(|b| &b[..] == b"c"));
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "opened {opened}");
        assert_eq!(pool.idle_count(), opened);
        // Sequential requests now reuse them: no new connection.
        for _ in 0..5 {
            fetch(&pool, &auth).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let auth: http::uri::Authority = testkit_refused().to_string().parse().unwrap();
        let pool = Arc::new(ConnPool::default());
        let err = pool.send(&auth, T, get(&auth)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
        assert!(err.to_string().contains(auth.as_str()), "{err}");
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_a_connect_error() {
        let auth: http::uri::Authority = "no-such-host.invalid:80".parse().unwrap();
        let pool = Arc::new(ConnPool::default());
        let err = pool.send(&auth, T, get(&auth)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    /// A loopback port nothing listens on: bound, then closed.
    fn testkit_refused() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        a
    }
}
