//! Spawn the real binary on loopback with a temporary config and store.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A running gateway process.
pub struct Gw {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
}

/// Config header with loopback listeners on free ports and the store in `dir`.
pub fn base_config(dir: &std::path::Path, upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{TOKEN}"
max_header_bytes = 8192
max_body_bytes = 65536
shutdown_grace_secs = 5

[store]
path = "{}"
hold_ttl_secs = 5
sweep_interval_ms = 200

# Generous: on a loaded test machine a loopback connect has been seen to take over 500 ms
# (an exact-admission test then got a 502). Tests of timeouts declare their own upstream.
[[upstreams]]
name = "mock"
targets = ["http://{upstream}"]
request_timeout_ms = 10000
connect_timeout_ms = 10000
"#,
        dir.join("tollgate.db").display()
    )
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(600)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

impl Gw {
    /// Start with `config` (written to the temp dir) and wait until it listens.
    pub fn start(dir: tempfile::TempDir, config: &str) -> Gw {
        let path = dir.path().join("tollgate.toml");
        std::fs::write(&path, config).unwrap();
        let (child, proxy, admin) = spawn_serve(&path);
        Gw {
            child: Some(child),
            dir,
            proxy,
            admin,
            http: client(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.toml")
    }

    /// Restart on the same config and store (after a kill).
    pub fn restart(&mut self) {
        let (child, proxy, admin) = spawn_serve(&self.config_path());
        self.child = Some(child);
        self.proxy = proxy;
        self.admin = admin;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .http
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        (s, v)
    }

    /// Tenant `t`, consumer `id` on `plan`, one key; returns the key.
    pub async fn consumer(&self, id: &str, plan: &str) -> String {
        let (s, _) = self.admin(reqwest::Method::POST, "/v1/tenants", Some(serde_json::json!({"id": "t1", "name": "T1", "contact_email": "ops@t1.example.com"}))).await;
        assert!(s == 200 || s == 201, "tenant: {s}");
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                "/v1/consumers",
                Some(serde_json::json!({"id": id, "tenant": "t1", "plan": plan})),
            )
            .await;
        assert!(s == 200 || s == 201, "consumer: {s} {v}");
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/consumers/{id}/keys"),
                Some(serde_json::json!({})),
            )
            .await;
        assert!(s == 200 || s == 201, "key: {s} {v}");
        v["secret"].as_str().unwrap().to_string()
    }

    pub async fn top_up(&self, id: &str, amount: &str) {
        let (s, v) = self
            .admin(
                reqwest::Method::POST,
                &format!("/v1/consumers/{id}/credits"),
                Some(serde_json::json!({"amount": amount})),
            )
            .await;
        assert!(s == 200 || s == 201, "top up: {s} {v}");
    }

    pub async fn consumer_view(&self, id: &str) -> Value {
        let (s, v) = self
            .admin(reqwest::Method::GET, &format!("/v1/consumers/{id}"), None)
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The database, once everything settled so far has been applied to it (reading a
    /// consumer's usage waits for that).
    pub async fn db(&self, consumer: &str) -> rusqlite::Connection {
        let (s, v) = self
            .admin(
                reqwest::Method::GET,
                &format!("/v1/consumers/{consumer}/usage"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        rusqlite::Connection::open(self.dir.path().join("tollgate.db")).unwrap()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawn `tollgate serve` and read the bound addresses from its JSON log.
pub fn spawn_serve(config: &std::path::Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(bin())
        .args(["serve", "--log-json", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "tollgate listening" {
                        let p: SocketAddr = v["fields"]["proxy"].as_str().unwrap().parse().unwrap();
                        let a: SocketAddr = v["fields"]["admin"].as_str().unwrap().parse().unwrap();
                        let _ = tx.send(Ok((p, a)));
                        sent = true;
                        continue;
                    }
                }
                if line.contains("invalid") || line.contains("cannot") {
                    let _ = tx.send(Err(line.clone()));
                }
            }
            if std::env::var_os("TOLLGATE_TEST_LOGS").is_some() {
                eprintln!("gateway: {line}");
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok((p, a))) => (child, p, a),
        Ok(Err(line)) => {
            let _ = child.kill();
            panic!("gateway failed to start: {line}");
        }
        Err(_) => {
            let _ = child.kill();
            panic!("gateway did not start within 30 s");
        }
    }
}

/// Parse a JSON body.
pub async fn json(r: reqwest::Response) -> Value {
    r.json::<Value>().await.unwrap()
}
