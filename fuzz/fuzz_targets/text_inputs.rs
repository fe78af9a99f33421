//! Fuzzes the hand-written parsers of short untrusted text: the API key a request presents
//! (`Authorization: Bearer` / `x-api-key`), the decimal amounts the admin API and the config
//! take (`"12.50"`), and a gateway's 402 / 429 refusal as `tollgate-pay` reads it (status,
//! `Retry-After`, `Link`, `PAYMENT-REQUIRED`, the JSON body).
//!
//! The first byte picks the parser; the rest is its input. Run: `cargo fuzz run text_inputs`
//! (from `fuzz/`).
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tollgate_client::problem::{read_refusal, retry_after};
use tollgate_client::Refusal;
use tollgate_core::money::Money;
use tollgate_store::directory::{parse_key, Directory};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => api_key(rest),
        1 => amount_text(rest),
        2 => amount_value(rest),
        _ => refusal(rest),
    }
});

/// A presented key: parsed, then looked up in an empty directory (which knows no key).
fn api_key(data: &[u8]) {
    let Ok(key) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse_key(key) {
        // What parses is `tg_<live|test>_<id>_<secret>`, id and secret 1-64 ASCII
        // alphanumerics, and the id is the one in the text.
        let prefix = if p.test { "tg_test_" } else { "tg_live_" };
        let rest = key
            .strip_prefix(prefix)
            .expect("parsed keys carry their prefix");
        let (id, secret) = rest
            .split_once('_')
            .expect("parsed keys have an id and a secret");
        assert_eq!(id, p.id);
        for part in [id, secret] {
            assert!(!part.is_empty() && part.len() <= 64);
            assert!(part.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
    }
    let dir = Directory::with_capacity(0, 0);
    assert!(
        dir.authenticate(key, 0).is_err(),
        "an empty directory accepted {key:?}"
    );
}

/// A decimal amount as text: whatever parses prints back to text that parses to the same
/// amount.
fn amount_text(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Money::parse(s) {
        let printed = m.to_string();
        assert_eq!(
            Money::parse(&printed).ok(),
            Some(m),
            "{s:?} printed as {printed:?}"
        );
    }
}

/// Any amount in micro-units prints as text that parses back to it (all but `i64::MIN`,
/// whose magnitude has no positive `i64`).
fn amount_value(data: &[u8]) {
    let Some(b) = data.get(..8).and_then(|s| <[u8; 8]>::try_from(s).ok()) else {
        return;
    };
    let v = i64::from_le_bytes(b);
    let printed = Money(v).to_string();
    match Money::parse(&printed) {
        Ok(m) => assert_eq!(m, Money(v), "{v} printed as {printed:?}"),
        Err(e) => assert_eq!(v, i64::MIN, "{v} printed as {printed:?}: {e}"),
    }
}

/// A refusal as a client reads it: `<status byte>` then `Name: value` lines, an empty line,
/// and the body.
fn refusal(data: &[u8]) {
    let Some((&s, rest)) = data.split_first() else {
        return;
    };
    let status = match s % 4 {
        0 | 1 => 402,
        2 => 429,
        _ => 400 + u16::from(s),
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let wait = retry_after(&headers, now);
    match read_refusal(status, &headers, body, now) {
        Refusal::X402(c) => {
            assert_eq!(status, 402, "only a 402 carries a payment challenge");
            assert!(c.version == 1 || c.version == 2);
        }
        Refusal::Contract(e) => {
            assert_eq!(e.status, status);
            assert_eq!(e.retry_after, wait);
        }
    }
}
