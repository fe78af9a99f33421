//! The mock upstream server.
//!
//! Behaviour by path (a control word is recognised in *any* path segment, so a gateway that
//! forwards `/data/status/503` unchanged still reaches `/status/503`):
//!
//! | path | response |
//! |---|---|
//! | anything else | `200` with `{"ok":true,"path":"<path>"}` |
//! | `/status/<code>` | that status (200..=599) with `{"ok":…,"status":<code>}` |
//! | `/delay/<ms>` | waits `ms` (at most 60 s), then the default response |
//! | `/echo` | `200` with the request as JSON: method, path, query, headers, body |
//! | `/bytes/<n>` | `n` bytes of `x` (at most 256 MiB), with a `content-length` |
//! | `/stream/<chunks>` | a chunked body of `chunks` lines `{"chunk":i}` (`?interval_ms=` apart) |
//! | `/__calls` | `{"calls":<total>}` (with `?prefix=/p` also `"calls_for"`); not counted |
//! | `/__reset` | resets the counters; not counted |
//!
//! Every other request is counted, control ones included, before its response is produced, so a
//! client that has its response can read an up-to-date [`MockUpstream::calls`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Distinct paths remembered for [`MockUpstream::calls_for`]; requests to further new paths are
/// still counted in [`MockUpstream::calls`] but cannot be attributed to a prefix. This bounds the
/// memory of a long benchmark that sends unique paths.
pub const MAX_RECORDED_PATHS: usize = 65_536;

const MAX_DELAY: Duration = Duration::from_secs(60);
const MAX_BYTES: u64 = 256 * 1024 * 1024;
const MAX_CHUNKS: u64 = 1_000_000;
const MAX_ECHO_BODY: usize = 16 * 1024 * 1024;
/// How long [`MockUpstream::shutdown`] lets in-flight requests finish before it returns.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Source of `/bytes/<n>` bodies: served as static slices, so no allocation per request.
static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A running mock upstream. Dropping it stops the server (without waiting); prefer
/// [`MockUpstream::shutdown`] to also wait for it to stop.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl MockUpstream {
    /// Binds `addr` and serves on the current tokio runtime. Use `127.0.0.1:0` (or
    /// [`MockUpstream::start_local`]) for a free port; [`MockUpstream::addr`] tells which.
    pub async fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Self::from_listener(listener)
    }

    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start_local() -> io::Result<Self> {
        Self::start(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Serves on an already bound listener, on the current tokio runtime.
    pub fn from_listener(listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = oneshot::channel();
        tokio::spawn(serve(listener, Arc::clone(&stats), stop_rx, stopped_tx));
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            stopped: Some(stopped),
        })
    }

    /// Binds `addr` and serves from a dedicated thread with its own single-threaded runtime, for
    /// tests that are not async or that block their own runtime.
    pub fn start_on_thread(addr: SocketAddr) -> io::Result<Self> {
        let std_listener = StdTcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = oneshot::channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let thread_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("mock-upstream".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Registering with the reactor needs the runtime context, hence here.
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => serve(listener, thread_stats, stop_rx, stopped_tx).await,
                        Err(_) => drop(stopped_tx),
                    }
                });
            })?;
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            stopped: Some(stopped),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>` followed by `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests received since start or the last [`MockUpstream::reset`] (`/__calls` excluded).
    pub fn calls(&self) -> u64 {
        self.stats.total.load(Ordering::SeqCst)
    }

    /// Requests whose path starts with `prefix` (query excluded). Exact while fewer than
    /// [`MAX_RECORDED_PATHS`] distinct paths were seen.
    pub fn calls_for(&self, prefix: &str) -> u64 {
        self.stats.calls_for(prefix)
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        self.stats.reset();
    }

    /// Stops accepting, lets in-flight requests finish (for at most a second), and waits until the
    /// server has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Returns a loopback address with nothing listening on it: connections to it are refused.
///
/// It binds an ephemeral port and releases it; another process could take the port in between,
/// which on a test machine is very unlikely.
pub fn refused_addr() -> SocketAddr {
    let loopback = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    match StdTcpListener::bind(loopback).and_then(|l| l.local_addr()) {
        Ok(addr) => addr,
        // Port 1 (tcpmux) is as good as never served; only reached if loopback cannot bind.
        Err(_) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)),
    }
}

#[derive(Debug, Default)]
struct Stats {
    total: AtomicU64,
    /// Per-path counts. A plain mutex: held for one hash-map update, never across `.await`, and
    /// uncontended on the one- or two-thread runtimes this runs on.
    by_path: Mutex<HashMap<Box<str>, u64>>,
}

impl Stats {
    fn paths(&self) -> MutexGuard<'_, HashMap<Box<str>, u64>> {
        // A panic while holding the lock cannot leave the map inconsistent; keep counting.
        self.by_path
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, path: &str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.paths();
        if let Some(count) = paths.get_mut(path) {
            *count += 1;
        } else if paths.len() < MAX_RECORDED_PATHS {
            paths.insert(path.into(), 1);
        }
    }

    fn calls_for(&self, prefix: &str) -> u64 {
        self.paths()
            .iter()
            .filter(|(path, _)| path.starts_with(prefix))
            .map(|(_, n)| *n)
            .sum()
    }

    fn reset(&self) {
        let mut paths = self.paths();
        paths.clear();
        self.total.store(0, Ordering::SeqCst);
    }
}

async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    mut stop: oneshot::Receiver<()>,
    stopped: oneshot::Sender<()>,
) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            // Out of file descriptors and the like: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        // Responses are small and written at once; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let stats = Arc::clone(&stats);
        let service = service_fn(move |req| handle(req, Arc::clone(&stats)));
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    let _ = stopped.send(());
}

/// A control word of the path, found in its first segment that names one.
enum Action {
    Default,
    Status(StatusCode),
    Delay(Duration),
    Echo,
    Bytes(u64),
    Stream(u64),
    Calls,
    Reset,
    BadArgument(&'static str),
}

fn parse_action(path: &str) -> Action {
    match path {
        "/__calls" => return Action::Calls,
        "/__reset" => return Action::Reset,
        _ => {}
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    while let Some(segment) = segments.next() {
        let action = match segment {
            "echo" => return Action::Echo,
            "status" => "status",
            "delay" => "delay",
            "bytes" => "bytes",
            "stream" => "stream",
            _ => continue,
        };
        let Some(arg) = segments.next() else {
            return Action::BadArgument(action);
        };
        let Ok(n) = arg.parse::<u64>() else {
            return Action::BadArgument(action);
        };
        return match action {
            "status" => match u16::try_from(n).ok().filter(|c| (200..=599).contains(c)) {
                Some(code) => match StatusCode::from_u16(code) {
                    Ok(status) => Action::Status(status),
                    Err(_) => Action::BadArgument(action),
                },
                None => Action::BadArgument(action),
            },
            "delay" => Action::Delay(Duration::from_millis(n).min(MAX_DELAY)),
            "bytes" if n <= MAX_BYTES => Action::Bytes(n),
            "stream" if n <= MAX_CHUNKS => Action::Stream(n),
            _ => Action::BadArgument(action),
        };
    }
    Action::Default
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
) -> Result<Response<MockBody>, Infallible> {
    let action = parse_action(req.uri().path());
    match action {
        Action::Calls => return Ok(calls_response(&stats, req.uri().query())),
        Action::Reset => {
            stats.reset();
            return Ok(json(StatusCode::OK, Bytes::from_static(b"{\"ok\":true}")));
        }
        _ => stats.record(req.uri().path()),
    }
    if let Action::Echo = action {
        return Ok(echo(req).await);
    }
    // Read the request body so the connection can be reused; a GET usually has none.
    let (parts, body) = req.into_parts();
    if !body.is_end_stream() {
        let _ = Limited::new(body, MAX_ECHO_BODY).collect().await;
    }
    let path = parts.uri.path();
    let response = match action {
        Action::Status(status) => {
            if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                with_status(status, MockBody::empty())
            } else {
                let ok = status.is_success();
                let body = format!("{{\"ok\":{ok},\"status\":{}}}", status.as_u16());
                json(status, Bytes::from(body))
            }
        }
        Action::Delay(delay) => {
            tokio::time::sleep(delay).await;
            json(StatusCode::OK, default_body(path))
        }
        Action::Bytes(n) => {
            let mut response = with_status(StatusCode::OK, MockBody::repeat(n));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        Action::Stream(chunks) => {
            let interval = query_param(parts.uri.query(), "interval_ms")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
            let mut response = with_status(StatusCode::OK, MockBody::chunks(chunks, interval));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        Action::BadArgument(word) => {
            let body = format!("{{\"ok\":false,\"error\":\"bad argument to /{word}\"}}");
            json(StatusCode::BAD_REQUEST, Bytes::from(body))
        }
        Action::Default | Action::Echo | Action::Calls | Action::Reset => {
            json(StatusCode::OK, default_body(path))
        }
    };
    Ok(response)
}

fn with_status(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

fn json(status: StatusCode, body: Bytes) -> Response<MockBody> {
    let mut response = with_status(status, MockBody::full(body));
    response.headers_mut().insert(CONTENT_TYPE, JSON);
    response
}

/// `{"ok":true,"path":"<path>"}`, built by hand: this is the response of every benchmark request.
fn default_body(path: &str) -> Bytes {
    let mut out = String::with_capacity(path.len() + 24);
    out.push_str("{\"ok\":true,\"path\":\"");
    push_json_escaped(&mut out, path);
    out.push_str("\"}");
    Bytes::from(out)
}

fn push_json_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

fn calls_response(stats: &Stats, query: Option<&str>) -> Response<MockBody> {
    let total = stats.total.load(Ordering::SeqCst);
    let body = match query_param(query, "prefix") {
        Some(prefix) => serde_json::json!({
            "calls": total,
            "prefix": prefix,
            "calls_for": stats.calls_for(prefix),
        }),
        None => serde_json::json!({ "calls": total }),
    };
    json(StatusCode::OK, Bytes::from(body.to_string()))
}

async fn echo(req: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_ECHO_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let body = Bytes::from_static(b"{\"ok\":false,\"error\":\"body too large or broken\"}");
            return json(StatusCode::PAYLOAD_TOO_LARGE, body);
        }
    };
    let mut headers = serde_json::Map::new();
    let mut header_list = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header_list.push(serde_json::json!([name.as_str(), value]));
        match headers.get_mut(name.as_str()) {
            // Repeated headers are joined as HTTP allows for list-valued fields.
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), serde_json::Value::String(value));
            }
        }
    }
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "header_list": header_list,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
    });
    json(StatusCode::OK, Bytes::from(doc.to_string()))
}

/// The response body of the mock: one buffer, a run of filler bytes, or timed chunks.
#[derive(Debug)]
pub struct MockBody {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Full(Option<Bytes>),
    Repeat {
        remaining: u64,
    },
    Chunks {
        next: u64,
        total: u64,
        interval: Option<Duration>,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl MockBody {
    fn empty() -> Self {
        Self {
            kind: BodyKind::Full(None),
        }
    }

    fn full(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Full(Some(bytes)),
        }
    }

    fn repeat(n: u64) -> Self {
        Self {
            kind: BodyKind::Repeat { remaining: n },
        }
    }

    fn chunks(total: u64, interval: Option<Duration>) -> Self {
        Self {
            kind: BodyKind::Chunks {
                next: 0,
                total,
                interval,
                sleep: None,
            },
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Repeat { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = usize::try_from(*remaining).map_or(FILL.len(), |r| r.min(FILL.len()));
                *remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
            }
            BodyKind::Chunks {
                next,
                total,
                interval,
                sleep,
            } => {
                if *next >= *total {
                    return Poll::Ready(None);
                }
                if let (true, Some(interval)) = (*next > 0, *interval) {
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *sleep = None;
                }
                let chunk = format!("{{\"chunk\":{next}}}\n");
                *next += 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Full(bytes) => bytes.is_none(),
            BodyKind::Repeat { remaining } => *remaining == 0,
            BodyKind::Chunks { next, total, .. } => next >= total,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyKind::Repeat { remaining } => SizeHint::with_exact(*remaining),
            // Unknown length: hyper sends it chunked.
            BodyKind::Chunks { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_words_are_found_in_any_segment() {
        assert!(matches!(parse_action("/status/503"), Action::Status(s) if s.as_u16() == 503));
        assert!(matches!(parse_action("/data/status/404"), Action::Status(s) if s.as_u16() == 404));
        assert!(matches!(parse_action("/open/echo"), Action::Echo));
        assert!(matches!(parse_action("/bytes/10"), Action::Bytes(10)));
        assert!(matches!(parse_action("/stream/3"), Action::Stream(3)));
        assert!(matches!(parse_action("/data/x"), Action::Default));
        assert!(matches!(parse_action("/"), Action::Default));
        assert!(matches!(parse_action("/__calls"), Action::Calls));
    }

    #[test]
    fn bad_arguments_are_reported() {
        assert!(matches!(
            parse_action("/status/99"),
            Action::BadArgument("status")
        ));
        assert!(matches!(
            parse_action("/status/abc"),
            Action::BadArgument("status")
        ));
        assert!(matches!(
            parse_action("/bytes"),
            Action::BadArgument("bytes")
        ));
    }

    #[test]
    fn delay_is_capped() {
        assert!(matches!(parse_action("/delay/999999999"), Action::Delay(d) if d == MAX_DELAY));
    }

    #[test]
    fn default_body_escapes_the_path() {
        assert_eq!(
            &default_body("/a\"b\\c")[..],
            br#"{"ok":true,"path":"/a\"b\\c"}"#
        );
    }

    #[test]
    fn query_param_finds_the_named_value() {
        assert_eq!(query_param(Some("a=1&prefix=/x"), "prefix"), Some("/x"));
        assert_eq!(query_param(Some("flag"), "flag"), Some(""));
        assert_eq!(query_param(None, "prefix"), None);
    }

    #[test]
    fn calls_for_sums_matching_paths_and_reset_clears() {
        let stats = Stats::default();
        stats.record("/a/1");
        stats.record("/a/2");
        stats.record("/a/2");
        stats.record("/b");
        assert_eq!(stats.total.load(Ordering::SeqCst), 4);
        assert_eq!(stats.calls_for("/a"), 3);
        assert_eq!(stats.calls_for("/a/2"), 2);
        assert_eq!(stats.calls_for("/c"), 0);
        stats.reset();
        assert_eq!(stats.total.load(Ordering::SeqCst), 0);
        assert_eq!(stats.calls_for("/"), 0);
    }
}
