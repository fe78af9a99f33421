//! Reading a refusal: an x402 challenge (v2 `PAYMENT-REQUIRED` header, v1 body `accepts`), or a
//! tollgate/contract error body (`code`, or `error.code` on provider-compatible routes) with its
//! `Retry-After` and remedy URL (`Link` header, body `remedy`, `details.*_url`).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, LINK, RETRY_AFTER};
use serde_json::Value;
use tollgate_x402::codec::{decode_base64_header, HEADER_PAYMENT_REQUIRED};
use tollgate_x402::{PaymentRequired, PaymentRequiredV1};

use crate::policy::Offer;

/// An x402 challenge, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct X402Challenge {
    /// Protocol version (1 or 2).
    pub version: u8,
    /// The server's `error` text.
    pub error: Option<String>,
    /// The v2 challenge as sent (echoed `resource` in the payment).
    pub v2: Option<PaymentRequired>,
    /// The offers.
    pub offers: Vec<Offer>,
}

/// How a contract (non-x402) error code should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeClass {
    /// Waiting fixes it (quota period, spending cap period, rate limit): back off and retry.
    Wait,
    /// A human must act (top up, upgrade, renew, approve): no retry, show the remedy.
    HumanAction,
}

/// Codes where waiting fixes the refusal.
pub const WAIT_CODES: &[&str] = &[
    "QUOTA_EXCEEDED",
    "SPENDING_CAP_REACHED",
    "RATE_LIMITED",
    "BUDGET_EXCEEDED",
];

/// The class of a contract error code (case-insensitive). Unknown codes need a human: a client
/// must not hammer a 402 it does not understand.
pub fn classify_code(code: &str) -> CodeClass {
    if WAIT_CODES.iter().any(|c| c.eq_ignore_ascii_case(code)) {
        CodeClass::Wait
    } else {
        CodeClass::HumanAction
    }
}

/// A gateway error body, as far as the client needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContractError {
    /// HTTP status.
    pub status: u16,
    /// Stable code (`QUOTA_EXCEEDED`, …); `None` when the body had none.
    pub code: Option<String>,
    /// Human-readable message.
    pub message: Option<String>,
    /// `Retry-After`, if sent.
    pub retry_after: Option<Duration>,
    /// Where a human can fix it (`Link` header, body `remedy`, `details.top_up_url` / `upgrade_url`).
    pub remedy_url: Option<String>,
    /// The remedy text, when the body has one.
    pub remedy: Option<String>,
    /// `docs_url` of the body.
    pub docs_url: Option<String>,
    /// `details` of the body.
    pub details: Option<Value>,
}

/// What a 402 (or 429) asks of the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// Pay (x402).
    X402(X402Challenge),
    /// A contract error.
    Contract(ContractError),
}

/// Parses `Retry-After` (delta-seconds or an HTTP date, relative to `now`).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The first URL of a `Link` header (`<url>; rel="payment"`), preferring rel values that name
/// a remedy (`payment`, `upgrade`, `help`).
pub fn link_url(headers: &HeaderMap) -> Option<String> {
    let mut first = None;
    for v in headers.get_all(LINK) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let part = part.trim();
            let Some(rest) = part.strip_prefix('<') else {
                continue;
            };
            let Some((url, params)) = rest.split_once('>') else {
                continue;
            };
            let rel = params
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("rel="))
                .map(|r| r.trim_matches('"').to_ascii_lowercase())
                .next();
            if rel
                .as_deref()
                .is_some_and(|r| matches!(r, "payment" | "upgrade" | "help"))
            {
                return Some(url.to_owned());
            }
            first.get_or_insert_with(|| url.to_owned());
        }
    }
    first
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_str()
}

/// Decodes the v2 `PAYMENT-REQUIRED` header, if present and valid.
pub fn payment_required_header(headers: &HeaderMap) -> Option<PaymentRequired> {
    let raw = headers.get(HEADER_PAYMENT_REQUIRED)?;
    let json = decode_base64_header(raw.as_bytes()).ok()?;
    serde_json::from_slice::<PaymentRequired>(&json)
        .ok()
        .filter(|p| p.x402_version == 2)
}

/// Reads an x402 challenge: the v2 header first, else the body (`x402Version` 1 with
/// `accepts`, or a v2 challenge mirrored in the body).
pub fn x402_challenge(headers: &HeaderMap, body: &[u8]) -> Option<X402Challenge> {
    let v2 = |p: PaymentRequired| X402Challenge {
        version: 2,
        error: p.error.clone(),
        offers: p.accepts.iter().map(Offer::from_v2).collect(),
        v2: Some(p),
    };
    if let Some(p) = payment_required_header(headers) {
        return Some(v2(p));
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("x402Version").and_then(Value::as_u64) {
        Some(1) => {
            let p: PaymentRequiredV1 = serde_json::from_value(value).ok()?;
            Some(X402Challenge {
                version: 1,
                error: Some(p.error.clone()).filter(|e| !e.is_empty()),
                offers: p.accepts.iter().map(Offer::from_v1).collect(),
                v2: None,
            })
        }
        Some(2) => serde_json::from_value::<PaymentRequired>(value)
            .ok()
            .map(v2),
        _ => None,
    }
}

/// Reads a contract error from a refusal's headers and body (any JSON shape tolerated).
pub fn contract_error(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> ContractError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let code = str_at(&value, &["code"])
        .or_else(|| str_at(&value, &["error", "code"]))
        .map(str::to_owned);
    let message = str_at(&value, &["message"])
        .or_else(|| str_at(&value, &["error", "message"]))
        .or_else(|| str_at(&value, &["error"]))
        .map(str::to_owned);
    let remedy_field = value.get("remedy");
    let remedy_text = remedy_field.and_then(Value::as_str).map(str::to_owned);
    let details = value.get("details").cloned();
    let remedy_url = link_url(headers)
        .or_else(|| remedy_text.clone().filter(|r| is_url(r)))
        .or_else(|| str_at(&value, &["remedy", "url"]).map(str::to_owned))
        .or_else(|| {
            ["top_up_url", "upgrade_url", "billing_url", "url"]
                .iter()
                .find_map(|k| str_at(&value, &["details", k]))
                .filter(|u| is_url(u))
                .map(str::to_owned)
        });
    ContractError {
        status,
        code,
        message,
        retry_after: retry_after(headers, now),
        remedy_url,
        remedy: remedy_text.filter(|r| !is_url(r)),
        docs_url: str_at(&value, &["docs_url"]).map(str::to_owned),
        details,
    }
}

/// Classifies a 402 / 429. An x402 challenge wins when present; a contract code of
/// `PAYMENT_REQUIRED`/`PAYMENT_INVALID` without a readable challenge stays a contract error.
pub fn read_refusal(status: u16, headers: &HeaderMap, body: &[u8], now: SystemTime) -> Refusal {
    if status == 402 {
        if let Some(c) = x402_challenge(headers, body) {
            return Refusal::X402(c);
        }
    }
    Refusal::Contract(contract_error(status, headers, body, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::HeaderValue;
    use tollgate_x402::codec::encode_json_header;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const ACCEPT_V2: &str = r#"{"scheme":"exact","network":"eip155:84532","amount":"10000",
      "asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e",
      "payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,
      "extra":{"name":"USDC","version":"2"}}"#;

    #[test]
    fn v2_challenge_from_the_header_wins_over_the_body() {
        let pr: PaymentRequired = serde_json::from_str(&format!(
            r#"{{"x402Version":2,"error":"pay","resource":{{"url":"http://x/p"}},"accepts":[{ACCEPT_V2}]}}"#
        ))
        .unwrap();
        let h = encode_json_header(&pr).unwrap();
        let hm = headers(&[("PAYMENT-REQUIRED", &h)]);
        let r = read_refusal(402, &hm, b"{}", SystemTime::now());
        let Refusal::X402(c) = r else { panic!("{r:?}") };
        assert_eq!(c.version, 2);
        assert_eq!(c.offers.len(), 1);
        assert_eq!(c.offers[0].amount, alloy::primitives::U256::from(10_000));
        assert_eq!(
            c.offers[0].domain,
            Some(("USDC".to_owned(), "2".to_owned()))
        );
    }

    #[test]
    fn v1_challenge_from_the_body() {
        let body = r#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{
          "scheme":"exact","network":"base-sepolia","maxAmountRequired":"5000",
          "resource":"http://x/p","description":"","mimeType":"application/json",
          "payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,
          "asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"name":"USDC","version":"2"}}]}"#;
        let r = read_refusal(402, &HeaderMap::new(), body.as_bytes(), SystemTime::now());
        let Refusal::X402(c) = r else { panic!("{r:?}") };
        assert_eq!(c.version, 1);
        assert_eq!(
            c.offers[0].network.as_ref().map(|n| n.as_str().to_owned()),
            Some("eip155:84532".to_owned())
        );
    }

    #[test]
    fn tollgate_quota_body_with_retry_after_and_link() {
        let body = r#"{"code":"QUOTA_EXCEEDED","message":"The quota of your plan is used up.",
          "details":{"current_plan":"free","upgrade_url":"https://portal.example/upgrade"},
          "request_id":"r1","docs_url":"https://docs.example/errors#quota_exceeded"}"#;
        let hm = headers(&[
            ("retry-after", "120"),
            ("link", "<https://portal.example/upgrade>; rel=\"payment\""),
        ]);
        let Refusal::Contract(e) = read_refusal(402, &hm, body.as_bytes(), SystemTime::now())
        else {
            panic!()
        };
        assert_eq!(e.code.as_deref(), Some("QUOTA_EXCEEDED"));
        assert_eq!(e.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(
            e.remedy_url.as_deref(),
            Some("https://portal.example/upgrade")
        );
        assert_eq!(classify_code("QUOTA_EXCEEDED"), CodeClass::Wait);
        assert_eq!(classify_code("spending_cap_reached"), CodeClass::Wait);
        assert_eq!(classify_code("INSUFFICIENT_FUNDS"), CodeClass::HumanAction);
        assert_eq!(
            classify_code("SUBSCRIPTION_INACTIVE"),
            CodeClass::HumanAction
        );
        assert_eq!(classify_code("SOMETHING_NEW"), CodeClass::HumanAction);
    }

    #[test]
    fn provider_style_error_object_and_body_remedy() {
        let body = r#"{"error":{"code":"INSUFFICIENT_FUNDS","message":"top up"},
                       "remedy":"https://portal.example/top-up"}"#;
        let e = contract_error(402, &HeaderMap::new(), body.as_bytes(), SystemTime::now());
        assert_eq!(e.code.as_deref(), Some("INSUFFICIENT_FUNDS"));
        assert_eq!(e.message.as_deref(), Some("top up"));
        assert_eq!(
            e.remedy_url.as_deref(),
            Some("https://portal.example/top-up")
        );
        let body =
            r#"{"code":"INSUFFICIENT_FUNDS","details":{"top_up_url":"https://p.example/t"}}"#;
        let e = contract_error(402, &HeaderMap::new(), body.as_bytes(), SystemTime::now());
        assert_eq!(e.remedy_url.as_deref(), Some("https://p.example/t"));
    }

    #[test]
    fn retry_after_http_date_and_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_392_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let hm = headers(&[("retry-after", &date)]);
        assert_eq!(retry_after(&hm, now), Some(Duration::from_secs(90)));
        let hm = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(&hm, now), None);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        let hm = headers(&[("retry-after", &past)]);
        assert_eq!(retry_after(&hm, now), Some(Duration::ZERO));
    }

    #[test]
    fn link_prefers_a_remedy_rel() {
        let hm = headers(&[(
            "link",
            "<https://docs.example>; rel=\"describedby\", <https://pay.example/top-up>; rel=payment",
        )]);
        assert_eq!(link_url(&hm).as_deref(), Some("https://pay.example/top-up"));
    }

    proptest! {
        /// Arbitrary bodies and header values never panic the parser.
        #[test]
        fn refusal_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..300),
                                        hdr in "[ -~]{0,120}") {
            let mut hm = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&hdr) {
                hm.insert("payment-required", v.clone());
                hm.insert("retry-after", v.clone());
                hm.insert("link", v);
            }
            let _ = read_refusal(402, &hm, &body, SystemTime::now());
            let _ = read_refusal(429, &hm, &body, SystemTime::now());
        }
    }
}
