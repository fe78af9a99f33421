//! Rough timing of local verification (`verify_exact`) and header decoding.
//!
//! `cargo run --release -p tollgate-x402 --example verify_timing`
//! Prints percentiles to stderr; not a benchmark suite (no assertions, no result file).
use std::time::Instant;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use tollgate_x402::client::{sign_exact_payment, AuthorizationTerms};
use tollgate_x402::codec::{decode_payment_header, encode_payment_header};
use tollgate_x402::price::{NetworkOffer, RoutePrice};
use tollgate_x402::verify::verify_exact;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let route = RoutePrice {
        amount: None,
        usd: Some("0.01".into()),
        offers: vec![NetworkOffer {
            network: "eip155:84532".into(),
            asset: None,
            pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".into(),
            eip712_name: None,
            eip712_version: None,
            decimals: None,
            max_timeout_seconds: 60,
        }],
        description: None,
        mime_type: None,
    }
    .compile()?;
    let now = 1_750_000_000;
    let signer = PrivateKeySigner::random();
    let offer = &route.offers[0];
    let n = 5_000;
    let mut headers = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let terms =
            AuthorizationTerms::for_offer(offer, now, B256::left_padding_from(&i.to_be_bytes()));
        headers.push(encode_payment_header(&sign_exact_payment(
            &signer, offer, &terms,
        )?)?);
    }
    let mut decode = Vec::with_capacity(n);
    let mut verify = Vec::with_capacity(n);
    for h in &headers {
        let t = Instant::now();
        let p = decode_payment_header(h.as_bytes())?;
        let t1 = Instant::now();
        let v = verify_exact(&route, &p, now)?;
        let t2 = Instant::now();
        std::hint::black_box(v);
        decode.push((t1 - t).as_nanos() as u64);
        verify.push((t2 - t1).as_nanos() as u64);
    }
    for (name, mut xs) in [("decode", decode), ("verify", verify)] {
        xs.sort_unstable();
        let p = |q: f64| xs[((xs.len() as f64 * q) as usize).min(xs.len() - 1)] as f64 / 1000.0;
        eprintln!(
            "{name}: p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs",
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
    Ok(())
}
