//! `tollgate-x402-bench`: the measuring half of `bench/run x402` (a benchmark, not a test).
//!
//! ```text
//! tollgate-x402-bench --deployment deploy.json --facilitator http://127.0.0.1:P \
//!     [--lane-seconds 20] [--lane-max 300] [--concurrency 16] [--verify-count 20000]
//! tollgate-x402-bench --verify-only [--verify-count 20000]
//! ```
//! `--verify-only` runs measurement 1 alone, on a synthetic offer (no chain, no deployment).
//! `deploy.json` is the output of `tools/x402-e2e/deploy.mjs <rpc> --payers N` (N ≥ concurrency).
//! Measures, on the chain the deployment names:
//! 1. local verification latency: header decode + EIP-712 signature recovery + every check of
//!    `verify_exact`, no chain round trip, over pre-signed payments (p50/p99 µs);
//! 2. tollgate's settlement path: paid HTTP requests (each carrying a fresh pre-signed payment)
//!    to a `PaidServer` whose `PaymentGate` settles settle-first through `EvmChain`, sequential
//!    and with `concurrency` clients;
//! 3. the official TypeScript facilitator: `/verify` then `/settle` over HTTP for the same kind
//!    of payments, sequential and concurrent.
//!
//! Prints a Markdown table and `key: value` lines; the caller writes the results file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use serde::Deserialize;
use tollgate_client::paid_server::PaidServer;
use tollgate_x402::chain::{ChainConfig, EvmChain};
use tollgate_x402::client::{sign_exact_payment, AuthorizationTerms};
use tollgate_x402::codec::{decode_payment_header, encode_payment_header};
use tollgate_x402::price::{NetworkOffer, PricedRoute, RoutePrice};
use tollgate_x402::{
    verify_exact, Clock, FacilitatorClient, FacilitatorConfig, FacilitatorRequirements,
    InMemoryPaymentStore, PaymentGate, SingleFlight, SystemClock, TokenAmount,
};

const PRICE: u128 = 10_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payer {
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Deployment {
    rpc_url: String,
    network: String,
    token: Address,
    name: String,
    version: String,
    payers: Vec<Payer>,
    pay_to: Address,
    settler_key: String,
}

struct Args {
    deployment: String,
    facilitator: String,
    gateway: Option<String>,
    lane_seconds: u64,
    lane_max: usize,
    concurrency: usize,
    verify_count: usize,
    verify_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        deployment: String::new(),
        facilitator: String::new(),
        gateway: None,
        lane_seconds: 20,
        lane_max: 300,
        concurrency: 16,
        verify_count: 20_000,
        verify_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--verify-only" {
            a.verify_only = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--deployment" => a.deployment = v,
            "--facilitator" => a.facilitator = v,
            "--gateway" => a.gateway = Some(v),
            "--lane-seconds" => a.lane_seconds = num(&v)? as u64,
            "--lane-max" => a.lane_max = num(&v)?,
            "--concurrency" => a.concurrency = num(&v)?.max(1),
            "--verify-count" => a.verify_count = num(&v)?.max(1),
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if !a.verify_only && (a.deployment.is_empty() || a.facilitator.is_empty()) {
        return Err("usage: tollgate-x402-bench --deployment FILE --facilitator URL [--lane-seconds N] [--lane-max N] [--concurrency N] [--verify-count N]\n       tollgate-x402-bench --verify-only [--verify-count N]".into());
    }
    Ok(a)
}

fn route(dep: &Deployment) -> Result<PricedRoute, String> {
    RoutePrice {
        amount: Some(TokenAmount::from_u128(PRICE)),
        usd: None,
        offers: vec![NetworkOffer {
            network: dep.network.clone(),
            asset: Some(dep.token.to_string()),
            pay_to: dep.pay_to.to_string(),
            eip712_name: Some(dep.name.clone()),
            eip712_version: Some(dep.version.clone()),
            decimals: Some(6),
            max_timeout_seconds: 300,
        }],
        description: None,
        mime_type: None,
    }
    .compile()
    .map_err(|e| e.to_string())
}

fn nonce() -> Result<B256, String> {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).map_err(|e| e.to_string())?;
    Ok(B256::from(n))
}

/// `count` encoded payment headers from `signer`.
fn presign(
    route: &PricedRoute,
    signer: &PrivateKeySigner,
    count: usize,
) -> Result<Vec<String>, String> {
    let offer = route.offers.first().ok_or("no offer")?;
    let now = SystemClock.now_unix();
    (0..count)
        .map(|_| {
            let terms = AuthorizationTerms::for_offer(offer, now, nonce()?);
            let p = sign_exact_payment(signer, offer, &terms).map_err(|e| e.to_string())?;
            encode_payment_header(&p).map_err(|e| e.to_string())
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct LaneResult {
    ok: usize,
    failed: usize,
    secs: f64,
    first_error: Option<String>,
}

impl LaneResult {
    fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Runs `work` over per-worker queues of pre-signed headers until done or `deadline`.
async fn run_lane<F, Fut>(queues: Vec<Vec<String>>, deadline: Duration, work: F) -> LaneResult
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let work = Arc::new(work);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for q in queues {
        let work = Arc::clone(&work);
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut first) = (0usize, 0usize, None);
            for h in q {
                if start.elapsed() >= deadline {
                    break;
                }
                match work(h).await {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            (ok, failed, first)
        }));
    }
    let mut r = LaneResult {
        ok: 0,
        failed: 0,
        secs: 0.0,
        first_error: None,
    };
    for t in tasks {
        if let Ok((ok, failed, first)) = t.await {
            r.ok += ok;
            r.failed += failed;
            if r.first_error.is_none() {
                r.first_error = first;
            }
        }
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

fn queues(
    route: &PricedRoute,
    signers: &[PrivateKeySigner],
    workers: usize,
    total: usize,
) -> Result<Vec<Vec<String>>, String> {
    let per = total.div_ceil(workers);
    (0..workers)
        .map(|i| presign(route, &signers[i % signers.len()], per))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-x402-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Local verification latency over `count` payments signed beforehand (signing and key
/// generation are not timed): a warm-up pass over up to 2,000 of them, untimed, then each one
/// timed alone (`decode_payment_header` + `verify_exact`). Returns (p50, p99) in µs.
fn measure_verify(
    route: &PricedRoute,
    signer: &PrivateKeySigner,
    count: usize,
) -> Result<(f64, f64), String> {
    let headers = presign(route, signer, count)?;
    let now = SystemClock.now_unix();
    let verify = |h: &str| -> Result<(), String> {
        let p = decode_payment_header(h.as_bytes()).map_err(|e| e.to_string())?;
        let v = verify_exact(route, &p, now).map_err(|e| e.to_string())?;
        std::hint::black_box(v);
        Ok(())
    };
    for h in headers.iter().take(2_000) {
        verify(h)?;
    }
    let mut lat = Vec::with_capacity(headers.len());
    for h in &headers {
        let t = Instant::now();
        verify(std::hint::black_box(h))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    say(&format!(
        "verify: {} payments, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        lat.len(),
        p50,
        p99,
        lat.last().copied().unwrap_or_default()
    ));
    Ok((p50, p99))
}

/// `--verify-only`: measurement 1 alone, on a synthetic offer (chain 31337, FiatTokenV2_2's
/// EIP-712 domain name and version) with a fresh key; nothing else is started.
fn run_verify_only(count: usize) -> Result<(), String> {
    let dep = Deployment {
        rpc_url: String::new(),
        network: "eip155:31337".into(),
        token: Address::repeat_byte(0x5f),
        name: "USD Coin".into(),
        version: "2".into(),
        payers: Vec::new(),
        pay_to: Address::repeat_byte(0x20),
        settler_key: String::new(),
    };
    let route = route(&dep)?;
    let (p50, p99) = measure_verify(&route, &PrivateKeySigner::random(), count)?;
    say(&format!("x402 verify p50 us: {p50:.1}"));
    say(&format!("x402 verify p99 us: {p99:.1}"));
    Ok(())
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    if args.verify_only {
        return run_verify_only(args.verify_count);
    }
    let dep: Deployment = serde_json::from_slice(
        &std::fs::read(&args.deployment).map_err(|e| format!("{}: {e}", args.deployment))?,
    )
    .map_err(|e| format!("{}: {e}", args.deployment))?;
    let route = route(&dep)?;
    let signers: Vec<PrivateKeySigner> = dep
        .payers
        .iter()
        .map(|p| p.key.parse().map_err(|e| format!("payer key: {e}")))
        .collect::<Result<_, String>>()?;
    if signers.len() < 2 {
        return Err(format!(
            "need at least 2 payers in the deployment (--payers), got {}",
            signers.len()
        ));
    }
    // Payer 0..c for tollgate, c.. for the facilitator: each lane's payers are its own.
    let (ours, theirs) = signers.split_at(signers.len() / 2);

    // 1. Local verification latency.
    let (p50, p99) = measure_verify(&route, &signers[0], args.verify_count)?;

    // 2. tollgate: PaidServer (PaymentGate settle-first + EvmChain) on the chain.
    let cfg = ChainConfig {
        network: dep.network.clone(),
        rpc_url: dep.rpc_url.clone(),
        settler_key_env: "UNUSED".into(),
        receipt_timeout_ms: 30_000,
        rpc_timeout_ms: 10_000,
        poll_interval_ms: 5,
    };
    let settler: PrivateKeySigner = dep
        .settler_key
        .parse()
        .map_err(|e| format!("settler key: {e}"))?;
    let chain = Arc::new(EvmChain::with_signer(&cfg, settler).map_err(|e| e.to_string())?);
    chain.check_chain_id().await.map_err(|e| e.to_string())?;
    let gate = PaymentGate::new(
        SingleFlight::new(
            Arc::new(InMemoryPaymentStore::new()),
            Duration::from_secs(30),
        ),
        chain,
        Arc::new(SystemClock),
    );
    let server = PaidServer::start(gate, route.clone())
        .await
        .map_err(|e| e.to_string())?;
    let url = format!("{}/paid", server.url);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Duration::from_secs(args.lane_seconds);
    let paid_work = |url: String| {
        let http = http.clone();
        move |h: String| {
            let http = http.clone();
            let url = url.clone();
            async move {
                let r = http
                    .get(&url)
                    .header("payment-signature", h)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ))
                }
            }
        }
    };
    let tollgate_work = paid_work(url.clone());
    let gateway_work = args
        .gateway
        .as_ref()
        .map(|g| paid_work(format!("{}/paid", g.trim_end_matches('/'))));
    let fac = FacilitatorClient::new(&FacilitatorConfig {
        url: args.facilitator.clone(),
        timeout_ms: 30_000,
        settle_timeout_ms: 60_000,
    })
    .map_err(|e| e.to_string())?;
    let fac = Arc::new(fac);
    let reqs =
        FacilitatorRequirements::V2(route.offers.first().ok_or("no offer")?.requirements.clone());
    let fac_work = {
        let fac = Arc::clone(&fac);
        move |h: String| {
            let fac = Arc::clone(&fac);
            let reqs = reqs.clone();
            async move {
                let p = decode_payment_header(h.as_bytes()).map_err(|e| e.to_string())?;
                fac.verify(&p, &reqs)
                    .await
                    .map_err(|e| format!("verify: {e}"))?;
                match fac.settle(&p, &reqs).await {
                    Ok(tollgate_x402::SettleOutcome::Settled { .. }) => Ok(()),
                    Ok(other) => Err(format!("settle: {other:?}")),
                    Err(e) => Err(format!("settle: {e}")),
                }
            }
        }
    };

    let report = |what: &str, lane: &str, r: &LaneResult| {
        say(&format!(
            "{what} {lane}: {} ok, {} failed in {:.2} s = {:.1} per s{}",
            r.ok,
            r.failed,
            r.secs,
            r.rps(),
            r.first_error
                .as_deref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        ));
    };
    let mut rows = Vec::new();
    for (lane, workers) in [("sequential", 1usize), ("concurrent", args.concurrency)] {
        let g = match &gateway_work {
            Some(w) => {
                let q = queues(&route, ours, workers, args.lane_max)?;
                let g = run_lane(q, deadline, w.clone()).await;
                report("gateway", lane, &g);
                Some(g)
            }
            None => None,
        };
        let q = queues(&route, ours, workers, args.lane_max)?;
        let t = run_lane(q, deadline, tollgate_work.clone()).await;
        report("paymentgate", lane, &t);
        let q = queues(&route, theirs, workers, args.lane_max)?;
        let f = run_lane(q, deadline, fac_work.clone()).await;
        report("facilitator", lane, &f);
        rows.push((lane, workers, g, t, f));
    }
    let cell = |r: &LaneResult| format!("{:.1} ({}/{})", r.rps(), r.ok, r.failed);
    let ratio = |a: &LaneResult, b: &LaneResult| {
        if b.rps() > 0.0 {
            format!("{:.2}", a.rps() / b.rps())
        } else {
            "n/a".into()
        }
    };
    say("");
    say("| lane | clients | gateway binary paid req/s (ok/failed) | PaymentGate+EvmChain server paid req/s (ok/failed) | TS facilitator verify+settle/s (ok/failed) | ratio gateway/TS | ratio PaymentGate/TS |");
    say("|---|---|---|---|---|---|---|");
    for (lane, workers, g, t, f) in &rows {
        say(&format!(
            "| {lane} | {workers} | {} | {} | {} | {} | {} |",
            g.as_ref().map_or("not run".into(), cell),
            cell(t),
            cell(f),
            g.as_ref().map_or("n/a".into(), |g| ratio(g, f)),
            ratio(t, f)
        ));
    }
    say("");
    for (lane, _, g, t, f) in &rows {
        if let Some(g) = g {
            say(&format!("x402 {lane} gateway rps: {:.1}", g.rps()));
        }
        say(&format!("x402 {lane} paymentgate rps: {:.1}", t.rps()));
        say(&format!("x402 {lane} facilitator rps: {:.1}", f.rps()));
    }
    say(&format!("x402 verify p50 us: {p50:.1}"));
    say(&format!("x402 verify p99 us: {p99:.1}"));
    Ok(())
}
