//! Client for a remote x402 facilitator (`POST /verify`, `POST /settle`, `GET /supported`).
//!
//! Facilitators disagree on reason strings and may answer `/settle` with HTTP 200 and
//! `success: false`, so every answer's flag is checked and every reason is mapped to our stable
//! [`Reason`] while the original string is kept. A `/settle` that times out has an *unknown*
//! outcome and is reported as `Pending` (never as a failure that would prompt a new payment).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::reason::Reason;
use crate::settle::{SettleFailure, SettleOutcome};
use crate::wire::{
    FacilitatorRequest, FacilitatorRequirements, PaymentPayload, SettleResponse, SupportedResponse,
    VerifyResponse,
};

/// Remote facilitator configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilitatorConfig {
    /// Base URL, e.g. `https://x402.org/facilitator`.
    pub url: String,
    /// Timeout of `/verify` and `/supported`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Timeout of `/settle` (settlement waits for a block).
    #[serde(default = "default_settle_timeout_ms")]
    pub settle_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_settle_timeout_ms() -> u64 {
    60_000
}

/// Facilitator failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FacilitatorError {
    /// Bad configuration.
    #[error("facilitator config: {0}")]
    Config(String),
    /// Cannot reach the facilitator, or it answered 5xx.
    #[error("facilitator unavailable: {0}")]
    Unavailable(String),
    /// The facilitator answered something that is not the protocol.
    #[error("facilitator protocol error: {0}")]
    Protocol(String),
    /// The facilitator rejected the payment.
    #[error("facilitator rejected the payment: {original}")]
    Rejected {
        /// Our stable reason.
        reason: Reason,
        /// The facilitator's own reason string.
        original: String,
    },
}

impl FacilitatorError {
    /// Stable reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Config(_) | Self::Unavailable(_) | Self::Protocol(_) => {
                Reason::FacilitatorUnavailable
            }
            Self::Rejected { reason, .. } => *reason,
        }
    }
}

impl From<FacilitatorError> for SettleFailure {
    fn from(e: FacilitatorError) -> Self {
        // Only a rejection is known not to have moved funds... and so is an unreachable
        // facilitator (the request never arrived) — but a 5xx after arrival is unknown; retrying
        // is still safe because the token contract refuses a used nonce.
        let retryable = !matches!(e, FacilitatorError::Rejected { .. });
        SettleFailure {
            reason: e.reason(),
            retryable,
            detail: e.to_string(),
        }
    }
}

/// A payment the facilitator judged valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FacilitatorVerified {
    /// Payer, as reported.
    pub payer: Option<String>,
}

/// Client for one remote facilitator.
#[derive(Clone, Debug)]
pub struct FacilitatorClient {
    http: reqwest::Client,
    base: reqwest::Url,
    timeout: Duration,
    settle_timeout: Duration,
}

impl FacilitatorClient {
    /// Builds the client.
    pub fn new(cfg: &FacilitatorConfig) -> Result<Self, FacilitatorError> {
        let mut base: reqwest::Url = cfg
            .url
            .parse()
            .map_err(|e| FacilitatorError::Config(format!("url: {e}")))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| FacilitatorError::Config(format!("http client: {e}")))?;
        Ok(Self {
            http,
            base,
            timeout: Duration::from_millis(cfg.timeout_ms),
            settle_timeout: Duration::from_millis(cfg.settle_timeout_ms),
        })
    }

    fn endpoint(&self, path: &str) -> Result<reqwest::Url, FacilitatorError> {
        self.base
            .join(path)
            .map_err(|e| FacilitatorError::Config(format!("url: {e}")))
    }

    fn request_body(
        payload: &PaymentPayload,
        requirements: &FacilitatorRequirements,
    ) -> FacilitatorRequest {
        FacilitatorRequest {
            x402_version: payload.version(),
            payment_payload: payload.clone(),
            payment_requirements: requirements.clone(),
        }
    }

    /// `POST /verify`. `requirements` must be the server's own (not the client's echo).
    pub async fn verify(
        &self,
        payload: &PaymentPayload,
        requirements: &FacilitatorRequirements,
    ) -> Result<FacilitatorVerified, FacilitatorError> {
        let body = Self::request_body(payload, requirements);
        let resp: VerifyResponse = self
            .post("verify", &body, self.timeout)
            .await
            .map_err(|e| e.into_error())?;
        if resp.is_valid {
            return Ok(FacilitatorVerified { payer: resp.payer });
        }
        let original = resp.invalid_reason.unwrap_or_default();
        Err(FacilitatorError::Rejected {
            reason: Reason::from_facilitator(&original),
            original,
        })
    }

    /// `POST /settle`. HTTP 200 with `success: false` is a rejection; a timeout (or a
    /// `settlement_pending` answer) is `Pending` because the outcome is unknown.
    pub async fn settle(
        &self,
        payload: &PaymentPayload,
        requirements: &FacilitatorRequirements,
    ) -> Result<SettleOutcome, FacilitatorError> {
        let body = Self::request_body(payload, requirements);
        let resp: SettleResponse = match self.post("settle", &body, self.settle_timeout).await {
            Ok(r) => r,
            Err(PostError::TimedOut) => return Ok(SettleOutcome::Pending { tx: String::new() }),
            Err(e) => return Err(e.into_error()),
        };
        if resp.success {
            if resp.transaction.is_empty() {
                return Err(FacilitatorError::Protocol(
                    "settle succeeded without a transaction".to_owned(),
                ));
            }
            return Ok(SettleOutcome::Settled {
                tx: resp.transaction,
            });
        }
        let original = resp.error_reason.unwrap_or_default();
        let reason = Reason::from_facilitator(&original);
        if reason == Reason::SettlementPending {
            return Ok(SettleOutcome::Pending {
                tx: resp.transaction,
            });
        }
        Err(FacilitatorError::Rejected { reason, original })
    }

    /// `GET /supported`.
    pub async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let url = self.endpoint("supported")?;
        let resp = self
            .http
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| PostError::from_reqwest(e).into_error())?;
        read_json(resp).await.map_err(PostError::into_error)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &FacilitatorRequest,
        timeout: Duration,
    ) -> Result<T, PostError> {
        let url = self.endpoint(path).map_err(PostError::Other)?;
        let resp = self
            .http
            .post(url)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(PostError::from_reqwest)?;
        read_json(resp).await
    }
}

enum PostError {
    TimedOut,
    Other(FacilitatorError),
}

impl PostError {
    fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Self::TimedOut
        } else {
            Self::Other(FacilitatorError::Unavailable(e.to_string()))
        }
    }

    fn into_error(self) -> FacilitatorError {
        match self {
            Self::TimedOut => FacilitatorError::Unavailable("timed out".to_owned()),
            Self::Other(e) => e,
        }
    }
}

async fn read_json<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, PostError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(PostError::from_reqwest)?;
    if status.is_server_error() {
        return Err(PostError::Other(FacilitatorError::Unavailable(format!(
            "HTTP {status}"
        ))));
    }
    // 4xx bodies often still carry the protocol answer (`isValid:false`, `success:false`).
    serde_json::from_slice(&bytes).map_err(|e| {
        PostError::Other(FacilitatorError::Protocol(format!(
            "HTTP {status}, unreadable body: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-route-table HTTP/1.1 mock: path → (status, body, delay). Records request bodies.
    async fn mock(
        routes: Vec<(&'static str, u16, &'static str, u64)>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let seen = Arc::clone(&seen2);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut tmp).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&tmp[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if buf.len() >= end + 4 + len {
                                let path = text.split_whitespace().nth(1).unwrap().to_owned();
                                seen.lock().unwrap().push(text[end + 4..].to_owned());
                                let (_, status, body, delay) = routes
                                    .iter()
                                    .find(|r| path.ends_with(r.0))
                                    .copied()
                                    .unwrap_or(("", 404, "{}", 0));
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                                let resp = format!(
                                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = sock.write_all(resp.as_bytes()).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/facilitator"), seen)
    }

    fn payload() -> (PaymentPayload, FacilitatorRequirements) {
        let p = crate::codec::decode_payment_json(crate::codec::tests::V2.as_bytes()).unwrap();
        let PaymentPayload::V2(v2) = &p else { panic!() };
        let req = FacilitatorRequirements::V2(v2.accepted.clone());
        (p, req)
    }

    fn client(url: String, settle_timeout_ms: u64) -> FacilitatorClient {
        FacilitatorClient::new(&FacilitatorConfig {
            url,
            timeout_ms: 2000,
            settle_timeout_ms,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn verify_valid_and_invalid_with_reason_mapping() {
        let (url, seen) = mock(vec![(
            "/verify",
            200,
            r#"{"isValid":true,"payer":"0xabc"}"#,
            0,
        )])
        .await;
        let (p, r) = payload();
        let v = client(url, 1000).verify(&p, &r).await.unwrap();
        assert_eq!(v.payer.as_deref(), Some("0xabc"));
        let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap()[0]).unwrap();
        assert_eq!(body["x402Version"], 2);
        assert_eq!(body["paymentRequirements"]["amount"], "10000");
        assert_eq!(
            body["paymentPayload"]["payload"]["authorization"]["value"],
            "10000"
        );

        let (url, _) = mock(vec![(
            "/verify",
            400,
            r#"{"isValid":false,"invalidReason":"invalid_exact_evm_signature"}"#,
            0,
        )])
        .await;
        let e = client(url, 1000).verify(&p, &r).await.unwrap_err();
        assert_eq!(
            e,
            FacilitatorError::Rejected {
                reason: Reason::InvalidSignature,
                original: "invalid_exact_evm_signature".into()
            }
        );
    }

    #[tokio::test]
    async fn settle_checks_success_field_even_on_200() {
        let (p, r) = payload();
        let (url, _) = mock(vec![(
            "/settle",
            200,
            r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#,
            0,
        )])
        .await;
        let e = client(url, 1000).settle(&p, &r).await.unwrap_err();
        assert_eq!(e.reason(), Reason::InsufficientFunds);
        let f: SettleFailure = e.into();
        assert!(!f.retryable);

        let (url, _) = mock(vec![(
            "/settle",
            200,
            r#"{"success":true,"transaction":"0x1234","network":"eip155:84532","payer":"0xabc"}"#,
            0,
        )])
        .await;
        assert_eq!(
            client(url, 1000).settle(&p, &r).await.unwrap(),
            SettleOutcome::Settled {
                tx: "0x1234".into()
            }
        );

        let (url, _) = mock(vec![(
            "/settle",
            200,
            r#"{"success":false,"errorReason":"settlement_pending","transaction":"0x99","network":"eip155:84532"}"#,
            0,
        )])
        .await;
        assert_eq!(
            client(url, 1000).settle(&p, &r).await.unwrap(),
            SettleOutcome::Pending { tx: "0x99".into() }
        );
    }

    #[tokio::test]
    async fn settle_timeout_is_pending_and_errors_are_unavailable() {
        let (p, r) = payload();
        let (url, _) = mock(vec![("/settle", 200, r#"{"success":true}"#, 3000)]).await;
        assert_eq!(
            client(url, 200).settle(&p, &r).await.unwrap(),
            SettleOutcome::Pending { tx: String::new() }
        );
        let (url, _) = mock(vec![("/settle", 502, "bad gateway", 0)]).await;
        let e = client(url, 1000).settle(&p, &r).await.unwrap_err();
        assert_eq!(e.reason(), Reason::FacilitatorUnavailable);
        let (url, _) = mock(vec![("/verify", 200, "not json", 0)]).await;
        assert!(matches!(
            client(url, 1000).verify(&p, &r).await,
            Err(FacilitatorError::Protocol(_))
        ));
        let e = client("http://127.0.0.1:1/".into(), 1000)
            .verify(&p, &r)
            .await
            .unwrap_err();
        assert!(matches!(e, FacilitatorError::Unavailable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn supported() {
        let (url, _) = mock(vec![(
            "/supported",
            200,
            r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"}],"extensions":[],"signers":{}}"#,
            0,
        )])
        .await;
        let s = client(url, 1000).supported().await.unwrap();
        assert_eq!(s.kinds[0].network, "eip155:84532");
    }
}
