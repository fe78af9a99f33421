//! `tollgate demo` runs as the README says, and each scenario answers exactly as printed,
//! 402 bodies pinned by snapshots.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::bin;

/// Run one printed shell line and split `curl -si` output into (status, headers, body).
fn run_line(line: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(line).output().unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse(resp: &str) -> (u16, String, Value) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn redact(mut v: Value) -> Value {
    v["request_id"] = Value::from("[request_id]");
    if v["details"].get("resets_at").is_some() {
        v["details"]["resets_at"] = Value::from("[resets_at]");
    }
    v
}

#[test]
fn demo_scenarios_answer_as_printed() {
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            let end = l.starts_with("# The errors reference");
            lines.push(l);
            if end {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("demo printed its script");
    let cmds: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("curl ") || l.starts_with("for "))
        .collect();
    assert_eq!(cmds.len(), 9, "{lines:#?}");

    // 1. 200 within the free plan.
    let (s, h, _) = parse(&run_line(cmds[0]));
    assert_eq!(s, 200);
    assert!(h.contains("x-tollgate-quota-remaining: 4"), "{h}");
    assert!(h.contains("ratelimit-policy: \"quota\";q=5;"), "{h}");
    // 2. Four more pass, then QUOTA_EXCEEDED.
    assert_eq!(
        run_line(cmds[1]).lines().collect::<Vec<_>>(),
        vec!["200"; 4]
    );
    let (s, h, v) = parse(&run_line(cmds[2]));
    assert_eq!(s, 402);
    assert!(h.contains("cache-control: no-store"), "{h}");
    assert!(h.contains("retry-after: "), "{h}");
    assert!(
        h.contains("link: <https://billing.example.com/upgrade>; rel=\"payment\""),
        "{h}"
    );
    insta::assert_json_snapshot!("demo_quota_exceeded", redact(v));
    let upgraded: Value = serde_json::from_str(&run_line(cmds[3])).unwrap();
    assert_eq!(upgraded["plan"], "pro");
    let (s, _, _) = parse(&run_line(cmds[4]));
    assert_eq!(s, 200, "the very next request after the upgrade passes");
    // 3. Insufficient funds, then a top-up.
    let (s, h, v) = parse(&run_line(cmds[5]));
    assert_eq!(s, 402);
    assert!(
        h.contains("link: <https://billing.example.com/top-up>; rel=\"payment\""),
        "{h}"
    );
    insta::assert_json_snapshot!("demo_insufficient_funds", redact(v));
    let topped: Value = serde_json::from_str(&run_line(cmds[6])).unwrap();
    assert_eq!(topped["balance"], "7.50");
    let (s, h, _) = parse(&run_line(cmds[7]));
    assert_eq!(s, 200);
    assert!(h.contains("x-tollgate-cost: 4.75"), "{h}");
    assert!(h.contains("x-tollgate-balance: 2.75"), "{h}");
    // 4. Premium route on Free.
    let (s, _, v) = parse(&run_line(cmds[8]));
    assert_eq!(s, 402);
    insta::assert_json_snapshot!("demo_plan_upgrade_required", redact(v));
    let _ = child.kill();
    let _ = child.wait();
}
