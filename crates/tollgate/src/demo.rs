//! `tollgate demo`: the gateway with a built-in mock upstream and demo data, printing
//! copy-paste curl lines for the scenarios of the product brief.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::sync::watch;

use tollgate_core::config::Config;
use tollgate_store::SubStatus;

use crate::serve::{self, Running};
use crate::{EXIT_CONFIG, EXIT_IOERR, EXIT_OSERR};

/// The admin token of the demo (the demo listens on loopback only).
pub const DEMO_TOKEN: &str = "demo-admin-token";

fn demo_config(upstream: &str, listen: &str, admin_listen: &str, db: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin_listen}"
admin_token = "{DEMO_TOKEN}"

[store]
path = "{db}"

[[upstreams]]
name = "demo-api"
targets = ["http://{upstream}"]

[[routes]]
id = "data"
path_prefix = "/v1/data"
upstream = "demo-api"

[[routes]]
id = "premium"
path_prefix = "/v1/premium"
upstream = "demo-api"

[[routes]]
id = "summarize"
path_prefix = "/v1/summarize"
methods = ["POST"]
upstream = "demo-api"
price = "4.75"

[[plans]]
id = "free"
name = "Free"
period = "month"
routes = ["data"]
quotas = {{ requests = 5 }}
upgrade_url = "https://billing.example.com/upgrade"

[[plans]]
id = "pro"
name = "Pro"
period = "month"
routes = ["*"]
quotas = {{ requests = 100000 }}

[[plans]]
id = "prepaid"
name = "Prepaid AI credits"
routes = ["summarize"]
top_up_url = "https://billing.example.com/top-up"

[[tenants]]
id = "acme"
name = "Acme"
contact_email = "admin@acme.example.com"
"#
    )
}

/// Run the demo until Ctrl-C.
pub async fn run(listen: String, admin_listen: String, data_dir: Option<PathBuf>) -> ExitCode {
    let mock = match testkit::MockUpstream::start_local().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("tollgate demo: cannot start the mock upstream: {e}");
            return ExitCode::from(EXIT_OSERR);
        }
    };
    let (_tmp, dir) = match data_dir {
        Some(d) => (None, d),
        None => match tempfile::tempdir() {
            Ok(t) => {
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
            Err(e) => {
                eprintln!("tollgate demo: cannot create a temporary directory: {e}");
                return ExitCode::from(EXIT_IOERR);
            }
        },
    };
    let db = dir.join("tollgate-demo.db");
    let text = demo_config(
        &mock.addr().to_string(),
        &listen,
        &admin_listen,
        &db.to_string_lossy(),
    );
    let config = match Config::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate demo: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (tx, rx) = watch::channel(false);
    let running = match serve::start(config, None, rx).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let keys = match seed_demo(&running).await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tollgate demo: cannot create the demo data: {e}");
            let _ = tx.send(true);
            return ExitCode::from(EXIT_IOERR);
        }
    };
    let mut out = std::io::stdout();
    let _ = out.write_all(script(&running, &keys).as_bytes());
    let _ = out.flush();
    serve::shutdown_signal().await;
    let _ = tx.send(true);
    let _ = running.done.await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}

struct DemoKeys {
    alice: String,
    bob: String,
    carol: String,
}

async fn seed_demo(r: &Running) -> Result<DemoKeys, tollgate_store::StoreError> {
    let s = &r.store;
    for (id, plan) in [("alice", "free"), ("bob", "prepaid"), ("carol", "free")] {
        if s.dir.consumer(id).is_none() {
            s.create_consumer(id, "acme", None, plan, SubStatus::Active, None, "api")
                .await?;
        }
    }
    s.adjust_balance("bob", 2_500_000, "demo-initial-balance", "topup")
        .await?;
    let alice = s.create_key("alice", Some("demo"), None, false).await?.1;
    let bob = s.create_key("bob", Some("demo"), None, false).await?.1;
    let carol = s.create_key("carol", Some("demo"), None, false).await?.1;
    Ok(DemoKeys { alice, bob, carol })
}

fn script(r: &Running, k: &DemoKeys) -> String {
    let p = format!("http://{}", r.proxy_addr);
    let a = format!("http://{}", r.admin_addr);
    let admin =
        format!("-H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json'");
    format!(
        r#"tollgate demo is running (Ctrl-C to stop).
  proxy  {p}
  admin  {a}   (token: {DEMO_TOKEN})
  consumers of tenant "acme": alice (Free: 5 requests/month), bob (prepaid, balance 2.50 USD), carol (Free)

# 1. A call within the Free plan -> 200, with X-Tollgate-Cost, X-Tollgate-Balance and RateLimit headers
curl -si -H 'Authorization: Bearer {alice}' {p}/v1/data/reports

# 2. Free tier runs out: four more calls pass, the sixth answers 402 QUOTA_EXCEEDED
for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\n' -H 'Authorization: Bearer {alice}' {p}/v1/data/reports; done
curl -si -H 'Authorization: Bearer {alice}' {p}/v1/data/reports
#    upgrade alice to Pro, and the very next call passes
curl -s -X PUT {admin} -d '{{"plan":"pro"}}' {a}/v1/consumers/alice/subscription
curl -si -H 'Authorization: Bearer {alice}' {p}/v1/data/reports

# 3. Prepaid credits: bob has 2.50, a summary costs 4.75 -> 402 INSUFFICIENT_FUNDS (the upstream is not called)
curl -si -X POST -H 'Authorization: Bearer {bob}' -d '{{"text":"summarize me"}}' {p}/v1/summarize
#    top up 5.00, then it passes and 4.75 is charged (X-Tollgate-Balance: 2.75)
curl -s -X POST {admin} -d '{{"amount":"5.00"}}' {a}/v1/consumers/bob/credits
curl -si -X POST -H 'Authorization: Bearer {bob}' -d '{{"text":"summarize me"}}' {p}/v1/summarize

# 4. A premium route that the Free plan does not include -> 402 PLAN_UPGRADE_REQUIRED
curl -si -H 'Authorization: Bearer {carol}' {p}/v1/premium/insights

# The errors reference: {p}/_tollgate/errors
"#,
        alice = k.alice,
        bob = k.bob,
        carol = k.carol,
    )
}
