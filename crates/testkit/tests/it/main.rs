//! Integration tests of the mock upstream over real sockets (one test binary for the crate).

// Helpers outside `#[test]` functions panic on failure on purpose: that fails the test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use testkit::{refused_addr, MockUpstream};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client.request(
        req.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    );
    let resp = resp.await.unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

async fn get(client: &HttpClient, url: &str) -> (StatusCode, Bytes) {
    let (status, _, body) = send(client, Method::GET, url, &[], "").await;
    (status, body)
}

fn json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[tokio::test]
async fn default_path_answers_ok_json_and_is_counted() {
    let mock = MockUpstream::start_local().await.unwrap();
    let c = client();
    let (status, headers, body) = send(&c, Method::GET, &mock.url("/data/x?q=1"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        json(&body),
        serde_json::json!({"ok": true, "path": "/data/x"})
    );
    get(&c, &mock.url("/data/y")).await;
    get(&c, &mock.url("/other")).await;
    assert_eq!(mock.calls(), 3);
    assert_eq!(mock.calls_for("/data"), 2);
    assert_eq!(mock.calls_for("/data/y"), 1);
    assert_eq!(mock.calls_for("/nothing"), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn status_and_delay_control_paths() {
    let mock = MockUpstream::start_local().await.unwrap();
    let c = client();
    let (status, body) = get(&c, &mock.url("/status/503")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["status"], 503);
    // Behind a gateway route prefix the control word still works.
    assert_eq!(
        get(&c, &mock.url("/data/status/402")).await.0,
        StatusCode::PAYMENT_REQUIRED
    );
    assert_eq!(
        get(&c, &mock.url("/status/204")).await,
        (StatusCode::NO_CONTENT, Bytes::new())
    );
    assert_eq!(
        get(&c, &mock.url("/status/42")).await.0,
        StatusCode::BAD_REQUEST
    );

    let started = Instant::now();
    let (status, body) = get(&c, &mock.url("/delay/150")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(json(&body)["path"], "/delay/150");
    // Control requests count too.
    assert_eq!(mock.calls(), 5);
    assert_eq!(mock.calls_for("/status"), 3);
}

#[tokio::test]
async fn echo_returns_method_path_headers_and_body() {
    let mock = MockUpstream::start_local().await.unwrap();
    let c = client();
    let headers = [
        ("x-forwarded-for", "10.1.2.3"),
        ("forwarded", "for=10.1.2.3;proto=http"),
        ("x-multi", "a"),
        ("x-multi", "b"),
    ];
    let (status, _, body) = send(
        &c,
        Method::POST,
        &mock.url("/open/echo?a=1"),
        &headers,
        "hello body",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc["method"], "POST");
    assert_eq!(doc["path"], "/open/echo");
    assert_eq!(doc["query"], "a=1");
    assert_eq!(doc["headers"]["x-forwarded-for"], "10.1.2.3");
    assert_eq!(doc["headers"]["forwarded"], "for=10.1.2.3;proto=http");
    assert_eq!(doc["headers"]["x-multi"], "a, b");
    assert!(doc["headers"].get("authorization").is_none());
    assert_eq!(
        doc["header_list"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == "x-multi")
            .count(),
        2
    );
    assert_eq!(doc["body"], "hello body");
    assert_eq!(doc["body_len"], 10);
    assert_eq!(mock.calls_for("/open/echo"), 1);
}

#[tokio::test]
async fn bytes_and_stream_bodies() {
    let mock = MockUpstream::start_local().await.unwrap();
    let c = client();
    let (status, headers, body) = send(&c, Method::GET, &mock.url("/bytes/100000"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "100000");
    assert_eq!(body.len(), 100_000);
    assert!(body.iter().all(|b| *b == b'x'));
    assert_eq!(
        get(&c, &mock.url("/bytes/0")).await,
        (StatusCode::OK, Bytes::new())
    );

    let (status, headers, body) = send(
        &c,
        Method::GET,
        &mock.url("/stream/3?interval_ms=5"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert_eq!(&body[..], b"{\"chunk\":0}\n{\"chunk\":1}\n{\"chunk\":2}\n");
}

#[tokio::test]
async fn calls_endpoint_does_not_count_itself_and_reset_clears() {
    let mock = MockUpstream::start_local().await.unwrap();
    let c = client();
    get(&c, &mock.url("/a/1")).await;
    get(&c, &mock.url("/a/2")).await;
    get(&c, &mock.url("/b")).await;
    let (_, body) = get(&c, &mock.url("/__calls")).await;
    assert_eq!(json(&body), serde_json::json!({"calls": 3}));
    let (_, body) = get(&c, &mock.url("/__calls?prefix=/a")).await;
    assert_eq!(
        json(&body),
        serde_json::json!({"calls": 3, "prefix": "/a", "calls_for": 2})
    );
    assert_eq!(mock.calls(), 3);
    mock.reset();
    assert_eq!((mock.calls(), mock.calls_for("/")), (0, 0));
    get(&c, &mock.url("/c")).await;
    get(&c, &mock.url("/__reset")).await;
    assert_eq!(mock.calls(), 0);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection_from_a_thread() {
    let mock = MockUpstream::start_on_thread("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut stream = TcpStream::connect(mock.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    for i in 0..20 {
        write!(stream, "GET /k/{i} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        assert!(status_line.starts_with("HTTP/1.1 200"), "{status_line}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(
            body,
            format!("{{\"ok\":true,\"path\":\"/k/{i}\"}}").into_bytes()
        );
    }
    assert_eq!(mock.calls_for("/k/"), 20);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let mock = MockUpstream::start_local().await.unwrap();
    let addr = mock.addr();
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn refused_addr_refuses_connections() {
    let addr = refused_addr();
    assert!(addr.ip().is_loopback());
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn binary_prints_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-mock-upstream"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: std::net::SocketAddr = line.trim().parse().unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(r#"{"ok":true,"path":"/hello"}"#),
        "{response}"
    );
}

#[test]
fn binary_rejects_bad_arguments_with_usage_exit_code() {
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate-mock-upstream"))
        .args(["--listen", "not-an-address"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
}
