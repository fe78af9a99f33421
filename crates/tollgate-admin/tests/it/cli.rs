//! The CLI client against a real server on 127.0.0.1:0.

use std::sync::Arc;

use clap::Parser;
use tollgate_admin::{run, serve, AdminArgs, AdminCommand, CliError};

use crate::{env, TOKEN};

#[derive(Parser, Debug)]
struct Top {
    #[command(flatten)]
    admin: AdminArgs,
}

fn cmd(args: &[&str]) -> AdminCommand {
    let mut v = vec!["tollgate-admin"];
    v.extend_from_slice(args);
    Top::try_parse_from(v).unwrap().admin.command
}

async fn run_json(url: &str, token: &str, args: &[&str]) -> Result<serde_json::Value, CliError> {
    let mut out = Vec::new();
    run(cmd(args), url, token, &mut out).await?;
    Ok(serde_json::from_slice(&out).unwrap())
}

#[tokio::test]
async fn cli_drives_a_real_server() {
    let e = env().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, e.state.clone(), async move {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}");

    let v = run_json(&url, "", &["health"]).await.unwrap();
    assert_eq!(v["status"], "ok");
    let v = run_json(
        &url,
        TOKEN,
        &["tenants", "create", "--id", "initech", "--name", "Initech"],
    )
    .await
    .unwrap();
    assert_eq!(v["id"], "initech");
    let v = run_json(
        &url,
        TOKEN,
        &[
            "consumers",
            "create",
            "--tenant",
            "initech",
            "--plan",
            "free",
            "--id",
            "peter",
        ],
    )
    .await
    .unwrap();
    assert_eq!(v["status"], "active");
    let v = run_json(
        &url,
        TOKEN,
        &["keys", "create", "--consumer", "peter", "--name", "laptop"],
    )
    .await
    .unwrap();
    assert!(v["secret"].as_str().unwrap().starts_with("tg_live_"));
    let kid = v["key"]["id"].as_str().unwrap().to_string();
    let v = run_json(
        &url,
        TOKEN,
        &["keys", "rotate", &kid, "--overlap-seconds", "60"],
    )
    .await
    .unwrap();
    assert_eq!(v["previous"]["id"], kid.as_str());
    let v = run_json(&url, TOKEN, &["keys", "revoke", &kid])
        .await
        .unwrap();
    assert!(v["revoked_at"].is_string());
    for _ in 0..2 {
        let v = run_json(
            &url,
            TOKEN,
            &[
                "credits",
                "top-up",
                "--consumer",
                "peter",
                "--amount",
                "12.50",
                "--idempotency-key",
                "k1",
            ],
        )
        .await
        .unwrap();
        assert_eq!(v["balance"], "12.50");
    }
    let v = run_json(
        &url,
        TOKEN,
        &[
            "credits",
            "adjust",
            "--consumer",
            "peter",
            "--amount",
            "-0.50",
            "--reason",
            "fix",
        ],
    )
    .await
    .unwrap();
    assert_eq!(v["balance"], "12.00");
    let v = run_json(&url, TOKEN, &["credits", "entries", "--consumer", "peter"])
        .await
        .unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let v = run_json(
        &url,
        TOKEN,
        &[
            "subscriptions",
            "set",
            "--consumer",
            "peter",
            "--plan",
            "pro",
        ],
    )
    .await
    .unwrap();
    assert_eq!(v["plan"], "pro");
    let v = run_json(&url, TOKEN, &["usage", "--consumer", "peter"])
        .await
        .unwrap();
    assert_eq!(v["quota"]["requests"]["limit"], 100000);
    let v = run_json(&url, TOKEN, &["plans", "list"]).await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    let v = run_json(&url, TOKEN, &["openapi"]).await.unwrap();
    assert!(v["paths"].is_object());

    // API errors carry code and message, and map to exit codes.
    let err = run_json(
        &url,
        TOKEN,
        &["subscriptions", "approve", "--consumer", "peter"],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, CliError::Api { status: 409, code, .. } if code == "IDEMPOTENCY_CONFLICT"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string()
            .starts_with("IDEMPOTENCY_CONFLICT (HTTP 409): Conflict:"),
        "{err}"
    );
    let err = run_json(&url, "wrong", &["tenants", "list"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 77, "{err}");
    let err = run_json(
        &url,
        TOKEN,
        &[
            "credits",
            "top-up",
            "--consumer",
            "peter",
            "--amount",
            "lots",
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 65, "{err}");
    assert!(err.to_string().contains("amount"), "{err}");
    let err = run_json(&url, TOKEN, &["consumers", "get", "nobody"])
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("NOT_FOUND (HTTP 404)"), "{err}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();

    // Nothing listens any more: unavailable.
    let err = run_json(&url, TOKEN, &["tenants", "list"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 69, "{err}");
    drop(Arc::clone(&e.state.store));
}
