//! `tollgate pay <url>`: the command-line face of [`PayingClient`] (feature `cli`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};
use tollgate_x402::Network;

use crate::client::exit;
use crate::{Backoff, ClientError, PayingClient, Request, Response, SpendPolicy, SpendState};

/// Exit codes, shown by `tollgate pay --help`.
pub const EXIT_CODES_HELP: &str = "\
Amounts are atomic units of the token (USDC has 6 decimals: 10000 = 0.01 USDC); `none` lifts a limit.
Known USDC deployments (Base, Base Sepolia) are allowed assets by default; add others with --asset.
The private key is read from the environment variable named by --key-env, never from the command line.

Exit codes:
  0   the resource was served (2xx)
  2   refused by the spend policy, or no key configured: nothing was paid
  3   the server refused the payment (a new challenge or a failed settlement)
  4   a human must act: top up, upgrade, renew, approval; or a quota that waiting did not fix
  5   network failure, payment outcome unknown (do not pay again), or a non-2xx answer
  64  bad arguments, key or state file";

/// Arguments of `tollgate pay`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct PayArgs {
    /// URL to call.
    pub url: String,
    /// Environment variable holding the payer's private key (0x-hex).
    #[arg(long, default_value = "TOLLGATE_PAY_KEY")]
    pub key_env: String,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    pub method: String,
    /// Request body (`@FILE` reads a file).
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Largest single payment, atomic units (or `none`).
    #[arg(long, default_value = "100000")]
    pub max_per_payment: String,
    /// Largest total per UTC day, atomic units (or `none`); kept in the state file.
    #[arg(long, default_value = "1000000")]
    pub max_per_day: String,
    /// Allowed network, CAIP-2 (repeatable; default: any network of an allowed asset).
    #[arg(long)]
    pub network: Vec<String>,
    /// Allowed token contract besides known USDC (repeatable).
    #[arg(long)]
    pub asset: Vec<String>,
    /// Spend state file (default: $TOLLGATE_PAY_STATE, else ~/.local/state/tollgate/spend.json).
    #[arg(long, env = "TOLLGATE_PAY_STATE")]
    pub state: Option<PathBuf>,
    /// Longest single wait on a quota-style 402 or 429, seconds; longer waits are not slept.
    #[arg(long, default_value_t = 300)]
    pub max_wait: u64,
    /// Print one JSON object (status, body, payment, error) on stdout instead of the body.
    #[arg(long)]
    pub json: bool,
}

fn limit(s: &str, what: &str) -> Result<Option<U256>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    tollgate_x402::TokenAmount::parse(s)
        .map(|a| Some(a.0))
        .map_err(|e| format!("--{what}: {s:?} is not an amount in atomic units ({e})"))
}

fn default_state() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("tollgate").join("spend.json"))
}

/// Builds the client and request from the arguments.
pub fn build(args: &PayArgs) -> Result<(PayingClient, Request), String> {
    let policy = SpendPolicy {
        max_per_payment: limit(&args.max_per_payment, "max-per-payment")?,
        max_per_day: limit(&args.max_per_day, "max-per-day")?,
        networks: args
            .network
            .iter()
            .map(|n| {
                Network::parse(n)
                    .filter(|n| n.eip155_chain_id().is_some())
                    .ok_or_else(|| format!("--network: {n:?} is not a CAIP-2 id like eip155:8453"))
            })
            .collect::<Result<_, _>>()?,
        assets: args
            .asset
            .iter()
            .map(|a| {
                a.parse::<Address>()
                    .map_err(|_| format!("--asset: {a:?} is not a 0x address"))
            })
            .collect::<Result<_, _>>()?,
        only_listed_assets: false,
    };
    let mut client = PayingClient::new(policy)
        .map_err(|e| e.to_string())?
        .backoff(Backoff {
            max_wait: Duration::from_secs(args.max_wait),
            ..Backoff::default()
        });
    match std::env::var(&args.key_env) {
        Ok(k) => {
            let signer: PrivateKeySigner = k.trim().parse().map_err(|_| {
                format!(
                    "--key-env: {} does not hold a valid private key",
                    args.key_env
                )
            })?;
            client = client.signer(signer);
        }
        Err(_) => {
            tracing::debug!(env = %args.key_env, "no payer key: payments will be refused");
        }
    }
    let state = match args.state.clone().or_else(default_state) {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("--state: cannot create {}: {e}", dir.display()))?;
            }
            SpendState::file(path)
        }
        None => SpendState::in_memory(),
    };
    client = client.state(state);
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--method: {:?} is not an HTTP method", args.method))?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("-H: {h:?} is not `Name: value`"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("-H: bad header name {k:?}"))?;
        let value = HeaderValue::from_str(v.trim())
            .map_err(|_| format!("-H: bad header value in {h:?}"))?;
        headers.append(name, value);
    }
    let body = match &args.data {
        None => None,
        Some(d) => match d.strip_prefix('@') {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("--data: cannot read {path}: {e}"))?)
            }
            None => Some(d.as_bytes().to_vec()),
        },
    };
    reqwest::Url::parse(&args.url).map_err(|e| format!("{:?} is not a URL: {e}", args.url))?;
    Ok((
        client,
        Request {
            method,
            url: args.url.clone(),
            headers,
            body,
        },
    ))
}

fn payment_json(p: &crate::Payment) -> Value {
    json!({
        "x402_version": p.x402_version,
        "network": p.network,
        "asset": p.asset.to_checksum(None),
        "pay_to": p.pay_to.to_checksum(None),
        "amount": p.amount.to_string(),
        "payer": p.payer.to_checksum(None),
        "transaction": p.tx(),
        "settlement": p.settlement,
    })
}

fn body_json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// The one-line stderr summary of a served response.
pub fn summary(r: &Response) -> String {
    match &r.payment {
        Some(p) => format!(
            "tollgate pay: HTTP {} — paid {} of {} on {} to {}, tx {}",
            r.status,
            p.amount,
            p.asset.to_checksum(None),
            p.network,
            p.pay_to.to_checksum(None),
            p.tx().unwrap_or("(none reported)")
        ),
        None => format!("tollgate pay: HTTP {} — nothing paid", r.status),
    }
}

/// Runs `tollgate pay`; returns the exit code.
pub async fn run(args: PayArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let (client, req) = match build(&args) {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "tollgate pay: {e}");
            return exit::CONFIG;
        }
    };
    match client.send(&req).await {
        Ok(r) => {
            let code = if (200..300).contains(&r.status) && r.status != 202 {
                exit::OK
            } else {
                exit::OTHER
            };
            if args.json {
                let v = json!({
                    "status": r.status,
                    "body": body_json(&r.body),
                    "payment": r.payment.as_ref().map(payment_json),
                    "waits_s": r.waits.iter().map(Duration::as_secs).collect::<Vec<_>>(),
                    "error": Value::Null,
                    "exit_code": code,
                });
                let _ = writeln!(out, "{v}");
            } else {
                let _ = out.write_all(&r.body);
            }
            let _ = writeln!(err, "{}", summary(&r));
            code
        }
        Err(e) => {
            let code = e.exit_code();
            if args.json {
                let payment = match &e {
                    ClientError::PaymentRejected { payment, .. }
                    | ClientError::PaymentUnknown { payment, .. } => Some(payment_json(payment)),
                    _ => None,
                };
                let v = json!({
                    "status": status_of(&e),
                    "body": e.body().map(body_json),
                    "payment": payment,
                    "error": {
                        "kind": kind_of(&e),
                        "message": e.to_string(),
                        "remedy_url": e.remedy_url(),
                    },
                    "exit_code": code,
                });
                let _ = writeln!(out, "{v}");
            } else if let Some(b) = e.body() {
                let _ = out.write_all(b);
            }
            let _ = writeln!(err, "tollgate pay: {e}");
            code
        }
    }
}

fn status_of(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::PaymentRejected { status, .. }
        | ClientError::PaymentUnknown { status, .. } => Some(*status),
        ClientError::HumanAction(c, _) => Some(c.status),
        ClientError::GaveUp { error, .. } => Some(error.status),
        _ => None,
    }
}

fn kind_of(e: &ClientError) -> &'static str {
    match e {
        ClientError::PolicyRefused { .. } | ClientError::OverBudget(_) => "policy_refused",
        ClientError::NoKey => "no_key",
        ClientError::PaymentRejected { .. } => "payment_rejected",
        ClientError::PaymentUnknown { .. } => "payment_unknown",
        ClientError::HumanAction(..) => "human_action",
        ClientError::GaveUp { .. } => "gave_up_waiting",
        ClientError::BadRequest(_) => "bad_request",
        ClientError::Network(_) => "network",
        ClientError::State(_) => "state",
        ClientError::Signing(_) => "signing",
    }
}
