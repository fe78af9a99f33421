//! Fuzzes the untrusted-input decoder of `PAYMENT-SIGNATURE` / `X-PAYMENT`.
//!
//! Run: `cargo +nightly fuzz run payment_header` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_x402::codec::{decode_payment_header, decode_payment_json, encode_payment_header};

fuzz_target!(|data: &[u8]| {
    // As a header value (base64) ...
    if let Ok(p) = decode_payment_header(data) {
        // ... whatever decodes must survive a round trip unchanged.
        let again = encode_payment_header(&p).expect("encodes");
        assert_eq!(decode_payment_header(again.as_bytes()).expect("re-decodes"), p);
    }
    // ... and as raw JSON (the body form), which reaches the JSON layer far more often.
    let _ = decode_payment_json(data);
});
