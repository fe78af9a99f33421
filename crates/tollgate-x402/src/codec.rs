//! Header codec: tolerant decoding of `PAYMENT-SIGNATURE` / `X-PAYMENT`, and encoding of
//! `PAYMENT-REQUIRED` / `PAYMENT-RESPONSE`.
//!
//! Decoding runs on untrusted input before any authentication, so it is bounded (size limit
//! checked before any allocation), never panics (fuzzed: `fuzz/fuzz_targets/payment_header.rs`),
//! and says precisely what was wrong.

use alloy::primitives::Bytes;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, Engine, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::network::Network;
use crate::reason::Reason;
use crate::wire::{
    Eip3009Authorization, ExactEvmPayload, JsonObject, PaymentPayload, PaymentPayloadV1,
    PaymentPayloadV2, PaymentRequirements, ResourceInfo, SCHEME_EXACT,
};

/// v2 client payment header.
pub const HEADER_PAYMENT_SIGNATURE: &str = "payment-signature";
/// v1 client payment header (also accepted with v2 payloads).
pub const HEADER_X_PAYMENT: &str = "x-payment";
/// v2 challenge header.
pub const HEADER_PAYMENT_REQUIRED: &str = "payment-required";
/// v2 settlement result header.
pub const HEADER_PAYMENT_RESPONSE: &str = "payment-response";
/// v1 settlement result header.
pub const HEADER_X_PAYMENT_RESPONSE: &str = "x-payment-response";
/// Value for `Access-Control-Expose-Headers` on x402 responses, so browsers can read them.
pub const EXPOSE_HEADERS: &str = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";

/// Largest accepted encoded payment header (a real one is ~1.2 KiB).
pub const MAX_PAYMENT_HEADER_LEN: usize = 16 * 1024;

const STANDARD_TOLERANT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_TOLERANT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a payment header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header is empty (or only whitespace).
    #[error("payment header is empty")]
    Empty,
    /// The header is longer than [`MAX_PAYMENT_HEADER_LEN`].
    #[error("payment header is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not standard or URL-safe base64.
    #[error("payment header is not valid base64")]
    MalformedBase64,
    /// The decoded bytes are not JSON (syntax error at `line`:`column`).
    #[error("payment header is not valid JSON at line {line} column {column}: {message}")]
    MalformedJson {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// `x402Version` is missing or not 1 or 2.
    #[error("unsupported x402Version {0:?}")]
    UnsupportedVersion(Option<u64>),
    /// The scheme is not `exact`.
    #[error("unsupported scheme {0:?}")]
    UnsupportedScheme(String),
    /// The network is not an EVM network (v2) or not a known v1 name.
    #[error("unsupported network {0:?}")]
    UnsupportedNetwork(String),
    /// Valid JSON, but fields are missing or ill-typed for the version and scheme.
    #[error("payment payload has the wrong shape: {0}")]
    MalformedPayload(String),
}

impl DecodeError {
    /// The stable reason code.
    pub fn reason(&self) -> Reason {
        match self {
            Self::Empty
            | Self::TooLarge { .. }
            | Self::MalformedBase64
            | Self::MalformedJson { .. }
            | Self::MalformedPayload(_) => Reason::MalformedPayment,
            Self::UnsupportedVersion(_) => Reason::UnsupportedVersion,
            Self::UnsupportedScheme(_) => Reason::UnsupportedScheme,
            Self::UnsupportedNetwork(_) => Reason::UnsupportedNetwork,
        }
    }
}

/// Why a value could not be encoded into a header (not expected to happen with this crate's
/// types; kept as an error rather than a panic).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode x402 header: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// Decodes the base64 of a header value, tolerating URL-safe alphabet, missing padding and
/// surrounding whitespace, within [`MAX_PAYMENT_HEADER_LEN`].
pub fn decode_base64_header(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if raw.len() > MAX_PAYMENT_HEADER_LEN {
        return Err(DecodeError::TooLarge {
            len: raw.len(),
            max: MAX_PAYMENT_HEADER_LEN,
        });
    }
    let trimmed = raw.trim_ascii();
    if trimmed.is_empty() {
        return Err(DecodeError::Empty);
    }
    // Standard alphabet first (what clients send); a header with `-` or `_` cannot decode as
    // standard base64, so it is tried as URL-safe. Same outcome as choosing the alphabet by
    // scanning for those bytes first, without the scan on the common path.
    STANDARD_TOLERANT.decode(trimmed).or_else(|_| {
        if trimmed.iter().any(|&b| b == b'-' || b == b'_') {
            URL_SAFE_TOLERANT
                .decode(trimmed)
                .map_err(|_| DecodeError::MalformedBase64)
        } else {
            Err(DecodeError::MalformedBase64)
        }
    })
}

/// Decodes a `PAYMENT-SIGNATURE` or `X-PAYMENT` header value into a typed payment.
///
/// Accepts v2 (`accepted` + `payload`) and v1 (`scheme`/`network` + `payload`) with scheme
/// `exact` on EVM networks. Unknown fields are ignored. Never panics.
pub fn decode_payment_header(raw: &[u8]) -> Result<PaymentPayload, DecodeError> {
    let json = decode_base64_header(raw)?;
    decode_payment_json(&json)
}

/// Decodes a payment from its JSON bytes (the body form, or after [`decode_base64_header`]).
pub fn decode_payment_json(json: &[u8]) -> Result<PaymentPayload, DecodeError> {
    if let Some(p) = decode_v2_direct(json) {
        return Ok(PaymentPayload::V2(p));
    }
    decode_payment_json_checked(json)
}

/// The common case in one pass: a well-formed v2 `exact` EIP-3009 payment on an EVM network,
/// deserialized straight into its types (no intermediate [`Value`] tree). `None` for anything
/// else — including a duplicate key, which the typed pass refuses while the [`Value`] pass lets
/// the last one win — and [`decode_payment_json_checked`] then decides, with its precise
/// errors. Whatever this accepts, that accepts too, with the same result.
fn decode_v2_direct(json: &[u8]) -> Option<PaymentPayloadV2> {
    // serde skips the values of keys it does not know without checking their strings as the
    // [`Value`] pass does (UTF-8, `\u` escapes such as a lone surrogate): input that is not
    // UTF-8 or holds a `\u` escape anywhere goes to the checked pass (well-formed payments
    // carry neither).
    let text = std::str::from_utf8(json).ok()?;
    if text.contains("\\u") {
        return None;
    }
    let MapOnly(d) = serde_json::from_str::<MapOnly<DirectV2>>(text).ok()?;
    let MapOnly(accepted) = d.accepted;
    let ok = d.x402_version == 2
        && accepted.scheme == SCHEME_EXACT
        && !d.payload.permit2_authorization
        && accepted.network.eip155_chain_id().is_some();
    ok.then(|| PaymentPayloadV2 {
        x402_version: d.x402_version,
        resource: d.resource,
        accepted,
        payload: ExactEvmPayload {
            signature: d.payload.signature,
            authorization: d.payload.authorization,
        },
        extensions: d.extensions,
    })
}

/// [`PaymentPayloadV2`] as [`decode_v2_direct`] reads it: the same fields, plus whether the
/// payload has a `permit2Authorization` key (the Permit2 transfer method, refused). `accepted`
/// (like the whole payload) must be a JSON object, as [`decode_payment_json_checked`] requires;
/// serde would otherwise also read a struct from an array.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectV2 {
    x402_version: u8,
    #[serde(default)]
    resource: Option<ResourceInfo>,
    accepted: MapOnly<PaymentRequirements>,
    payload: DirectExact,
    #[serde(default)]
    extensions: Option<JsonObject>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DirectExact {
    signature: Bytes,
    authorization: Eip3009Authorization,
    #[serde(default, deserialize_with = "key_present")]
    permit2_authorization: bool,
}

/// A struct read from a JSON object only (never from an array).
struct MapOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData)).map(MapOnly)
    }
}

/// `true` whenever the key is there, whatever its value (`null` included).
fn key_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Decodes through a [`Value`] tree, checking version, scheme and network before the shape, so
/// each refusal names what was wrong.
fn decode_payment_json_checked(json: &[u8]) -> Result<PaymentPayload, DecodeError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| DecodeError::MalformedJson {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Object(obj) = &value else {
        return Err(DecodeError::MalformedPayload(
            "expected a JSON object".to_owned(),
        ));
    };
    let version = obj.get("x402Version").and_then(Value::as_u64);
    match version {
        Some(2) => {
            let accepted = obj
                .get("accepted")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    DecodeError::MalformedPayload("missing object field `accepted`".to_owned())
                })?;
            let scheme = str_field(accepted, "scheme")?;
            check_exact_scheme(scheme, obj)?;
            let network = str_field(accepted, "network")?;
            if Network::new(network).eip155_chain_id().is_none() {
                return Err(DecodeError::UnsupportedNetwork(truncate(network)));
            }
            serde_json::from_value::<PaymentPayloadV2>(value)
                .map(PaymentPayload::V2)
                .map_err(|e| DecodeError::MalformedPayload(e.to_string()))
        }
        Some(1) => {
            let scheme = str_field(obj, "scheme")?;
            check_exact_scheme(scheme, obj)?;
            let network = str_field(obj, "network")?;
            if Network::from_v1_name(network).is_none() {
                return Err(DecodeError::UnsupportedNetwork(truncate(network)));
            }
            serde_json::from_value::<PaymentPayloadV1>(value)
                .map(PaymentPayload::V1)
                .map_err(|e| DecodeError::MalformedPayload(e.to_string()))
        }
        other => Err(DecodeError::UnsupportedVersion(other)),
    }
}

fn str_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<&'a str, DecodeError> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| DecodeError::MalformedPayload(format!("missing string field `{key}`")))
}

fn check_exact_scheme(
    scheme: &str,
    top: &serde_json::Map<String, Value>,
) -> Result<(), DecodeError> {
    if scheme != SCHEME_EXACT {
        return Err(DecodeError::UnsupportedScheme(truncate(scheme)));
    }
    // `exact` with the Permit2 transfer method carries `permit2Authorization` instead.
    let is_permit2 = top
        .get("payload")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key("permit2Authorization"));
    if is_permit2 {
        return Err(DecodeError::UnsupportedScheme("exact/permit2".to_owned()));
    }
    Ok(())
}

/// Echoed strings in errors are bounded so a hostile header cannot bloat logs.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Encodes any x402 JSON value as standard padded base64 (the header form).
pub fn encode_json_header<T: Serialize>(value: &T) -> Result<String, EncodeError> {
    let json = serde_json::to_vec(value)?;
    Ok(STANDARD_TOLERANT.encode(json))
}

/// Encodes a v2 challenge for the `PAYMENT-REQUIRED` header.
pub fn encode_payment_required(
    value: &crate::wire::PaymentRequired,
) -> Result<String, EncodeError> {
    encode_json_header(value)
}

/// Encodes a settlement result for the `PAYMENT-RESPONSE` (v2) / `X-PAYMENT-RESPONSE` (v1) header.
pub fn encode_payment_response(value: &crate::wire::SettleResponse) -> Result<String, EncodeError> {
    encode_json_header(value)
}

/// Encodes a payment (what a client sends). Used by tests and tools.
pub fn encode_payment_header(value: &PaymentPayload) -> Result<String, EncodeError> {
    encode_json_header(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    pub(crate) const V2: &str = r#"{"x402Version":2,"accepted":{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}},"payload":{"signature":"0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c","authorization":{"from":"0x857b06519E91e3A54538791bDbb0E22373e36b66","to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"10000","validAfter":"1740672089","validBefore":"1740672154","nonce":"0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"}},"extensions":{}}"#;

    fn with(f: impl FnOnce(&mut Value)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(V2).unwrap();
        f(&mut v);
        STANDARD
            .encode(serde_json::to_vec(&v).unwrap())
            .into_bytes()
    }

    #[test]
    fn decodes_standard_urlsafe_padded_unpadded() {
        let std = STANDARD.encode(V2);
        let url = URL_SAFE_NO_PAD.encode(V2);
        let unpadded = std.trim_end_matches('=').to_owned();
        for h in [std.clone(), url, unpadded, format!("  {std}\t")] {
            let p = decode_payment_header(h.as_bytes()).unwrap();
            assert_eq!(p.version(), 2);
            assert_eq!(p.scheme(), "exact");
        }
    }

    #[test]
    fn round_trips_through_encode() {
        let p = decode_payment_header(STANDARD.encode(V2).as_bytes()).unwrap();
        let again = decode_payment_header(encode_payment_header(&p).unwrap().as_bytes()).unwrap();
        assert_eq!(p, again);
    }

    #[test]
    fn precise_errors() {
        assert_eq!(decode_payment_header(b""), Err(DecodeError::Empty));
        assert_eq!(decode_payment_header(b"   "), Err(DecodeError::Empty));
        assert!(matches!(
            decode_payment_header(&vec![b'A'; MAX_PAYMENT_HEADER_LEN + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode_payment_header(b"!!!!"),
            Err(DecodeError::MalformedBase64)
        );
        assert_eq!(
            decode_payment_header(b"a+b-"),
            Err(DecodeError::MalformedBase64)
        );
        let not_json = STANDARD.encode("{\"x402Version\": 2,");
        assert!(matches!(
            decode_payment_header(not_json.as_bytes()),
            Err(DecodeError::MalformedJson { line: 1, .. })
        ));
        let arr = STANDARD.encode("[1]");
        assert!(matches!(
            decode_payment_header(arr.as_bytes()),
            Err(DecodeError::MalformedPayload(_))
        ));
        assert_eq!(
            decode_payment_header(&with(|v| v["x402Version"] = 3.into())),
            Err(DecodeError::UnsupportedVersion(Some(3)))
        );
        assert_eq!(
            decode_payment_header(&with(|v| {
                v.as_object_mut().unwrap().remove("x402Version");
            })),
            Err(DecodeError::UnsupportedVersion(None))
        );
        assert_eq!(
            decode_payment_header(&with(|v| v["accepted"]["scheme"] = "upto".into())),
            Err(DecodeError::UnsupportedScheme("upto".into()))
        );
        assert_eq!(
            decode_payment_header(&with(
                |v| v["accepted"]["network"] = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".into()
            )),
            Err(DecodeError::UnsupportedNetwork(
                "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".into()
            ))
        );
        let bad_value = decode_payment_header(&with(|v| {
            v["payload"]["authorization"]["value"] = "0x10".into()
        }));
        assert!(
            matches!(bad_value, Err(DecodeError::MalformedPayload(_))),
            "{bad_value:?}"
        );
        let bad_nonce = decode_payment_header(&with(|v| {
            v["payload"]["authorization"]["nonce"] = "0x01".into()
        }));
        assert!(matches!(bad_nonce, Err(DecodeError::MalformedPayload(_))));
        let permit2 = decode_payment_header(&with(|v| {
            v["payload"]["permit2Authorization"] = serde_json::json!({});
        }));
        assert_eq!(
            permit2,
            Err(DecodeError::UnsupportedScheme("exact/permit2".into()))
        );
        assert_eq!(permit2.unwrap_err().reason(), Reason::UnsupportedScheme);
    }

    #[test]
    fn decodes_v1() {
        let v1 = with(|v| {
            let o = v.as_object_mut().unwrap();
            o.remove("accepted");
            o.insert("x402Version".into(), 1.into());
            o.insert("scheme".into(), "exact".into());
            o.insert("network".into(), "base-sepolia".into());
        });
        let p = decode_payment_header(&v1).unwrap();
        assert_eq!(p.version(), 1);
        assert_eq!(p.network_str(), "base-sepolia");
        let unknown = with(|v| {
            let o = v.as_object_mut().unwrap();
            o.insert("x402Version".into(), 1.into());
            o.insert("scheme".into(), "exact".into());
            o.insert("network".into(), "localnet".into());
        });
        assert_eq!(
            decode_payment_header(&unknown),
            Err(DecodeError::UnsupportedNetwork("localnet".into()))
        );
    }

    #[test]
    fn encodes_response_headers() {
        let r = crate::wire::SettleResponse {
            success: true,
            error_reason: None,
            payer: None,
            transaction: "0xab".into(),
            network: "eip155:8453".into(),
            amount: None,
            extensions: None,
        };
        let h = encode_payment_response(&r).unwrap();
        let back: crate::wire::SettleResponse =
            serde_json::from_slice(&STANDARD.decode(h).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn one_pass_and_checked_decoding_agree_on_edge_shapes() {
        let v2: Value = serde_json::from_str(V2).unwrap();
        let accepted = v2["accepted"].to_string();
        let payload = v2["payload"].to_string();
        let as_array = |o: &Value| {
            Value::Array(o.as_object().unwrap().values().cloned().collect()).to_string()
        };
        let docs = [
            V2.to_owned(),
            // A duplicate key: the last one wins (the one-pass decoder steps aside).
            V2.replacen(
                r#""x402Version":2,"#,
                r#""x402Version":1,"x402Version":2,"#,
                1,
            ),
            V2.replacen(
                r#""scheme":"exact","#,
                r#""scheme":"upto","scheme":"exact","#,
                1,
            ),
            // Structs written as arrays.
            format!(
                r#"{{"x402Version":2,"accepted":{},"payload":{payload}}}"#,
                as_array(&v2["accepted"])
            ),
            format!(
                r#"{{"x402Version":2,"accepted":{accepted},"payload":[{},{}]}}"#,
                v2["payload"]["signature"], v2["payload"]["authorization"]
            ),
            format!(r#"[2,null,{accepted},{payload},null]"#),
            // Permit2 marker with a null value, v1 number with a v2 shape, a float version.
            V2.replacen(
                r#""payload":{"#,
                r#""payload":{"permit2Authorization":null,"#,
                1,
            ),
            V2.replacen(r#""x402Version":2"#, r#""x402Version":1"#, 1),
            V2.replacen(r#""x402Version":2"#, r#""x402Version":2.0"#, 1),
            V2.replacen(r#""eip155:84532""#, r#""eip155:x""#, 1),
            V2.replacen(
                r#""extensions":{}"#,
                r#""extensions":null,"resource":null"#,
                1,
            ),
        ];
        for doc in &docs {
            let (fast, checked) = (
                decode_payment_json(doc.as_bytes()),
                decode_payment_json_checked(doc.as_bytes()),
            );
            assert_eq!(fast, checked, "{doc}");
        }
        for i in [0, 4, 10] {
            assert!(
                decode_v2_direct(docs[i].as_bytes()).is_some(),
                "{}",
                docs[i]
            );
        }
        for i in [1, 2, 3, 5, 6, 7, 8, 9] {
            assert!(
                decode_v2_direct(docs[i].as_bytes()).is_none(),
                "{}",
                docs[i]
            );
        }
        assert!(decode_payment_json(docs[1].as_bytes()).is_ok());
        assert!(matches!(
            decode_payment_json(docs[3].as_bytes()),
            Err(DecodeError::MalformedPayload(_))
        ));
        assert!(matches!(
            decode_payment_json(docs[6].as_bytes()),
            Err(DecodeError::UnsupportedScheme(_))
        ));
    }

    /// Found by `never_panics::mutated_json`: junk inside a key the typed pass does not know
    /// (invalid UTF-8, a lone surrogate escape) was skipped by the one-pass decoder and refused
    /// by the checked one; both now refuse it.
    #[test]
    fn junk_in_an_unknown_key_is_refused_by_both_passes() {
        let utf8 = V2
            .replace("\"extra\":{\"name\"", "\"dxtra\":{\"\u{1}ame\"")
            .into_bytes();
        let utf8: Vec<u8> = utf8
            .into_iter()
            .map(|b| if b == 1 { 0xee } else { b })
            .collect();
        let surrogate = V2.replace("\"extra\":{\"name\"", "\"dxtra\":{\"\\ud800\"");
        for json in [utf8, surrogate.into_bytes()] {
            assert!(decode_v2_direct(&json).is_none());
            let checked = decode_payment_json_checked(&json);
            assert!(
                matches!(checked, Err(DecodeError::MalformedJson { .. })),
                "{checked:?}"
            );
            assert_eq!(decode_payment_json(&json), checked);
        }
        // An escape elsewhere is fine for the checked pass, and the results agree.
        let escaped = V2.replace("\"USDC\"", "\"\\u0055SDC\"");
        assert!(decode_v2_direct(escaped.as_bytes()).is_none());
        assert_eq!(
            decode_payment_json(escaped.as_bytes()).unwrap(),
            decode_payment_json(V2.as_bytes()).unwrap()
        );
    }

    mod never_panics {
        //! The decoder over thousands of random and mutated inputs (the stable-toolchain
        //! counterpart of `fuzz/fuzz_targets/payment_header.rs`).
        use super::*;
        use proptest::prelude::*;

        fn check(bytes: &[u8]) {
            if let Ok(json) = decode_base64_header(bytes) {
                // The one-pass decoder and the checked one agree on everything.
                assert_eq!(
                    decode_payment_json(&json),
                    decode_payment_json_checked(&json)
                );
            }
            match decode_payment_header(bytes) {
                Ok(p) => {
                    // Whatever decodes must re-encode and decode to the same value.
                    let again = encode_payment_header(&p).unwrap();
                    assert_eq!(decode_payment_header(again.as_bytes()).unwrap(), p);
                }
                Err(e) => {
                    let _ = e.reason();
                    let _ = e.to_string();
                }
            }
        }

        #[derive(Debug, Clone)]
        enum Edit {
            Flip(usize, u8),
            Insert(usize, u8),
            Remove(usize),
            Truncate(usize),
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
                (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
                any::<usize>().prop_map(Edit::Remove),
                any::<usize>().prop_map(Edit::Truncate),
            ]
        }

        fn apply(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
            for e in edits {
                let n = v.len().max(1);
                match *e {
                    Edit::Flip(i, b) if !v.is_empty() => v[i % n] ^= b,
                    Edit::Insert(i, b) => v.insert(i % (v.len() + 1), b),
                    Edit::Remove(i) if !v.is_empty() => {
                        v.remove(i % n);
                    }
                    Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
                    _ => {}
                }
            }
            v
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                check(&bytes);
            }

            #[test]
            fn random_base64_of_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
                check(STANDARD.encode(&bytes).as_bytes());
            }

            #[test]
            fn mutated_json(edits in proptest::collection::vec(edit(), 1..8)) {
                let json = apply(V2.as_bytes().to_vec(), &edits);
                check(STANDARD.encode(&json).as_bytes());
                check(URL_SAFE_NO_PAD.encode(&json).as_bytes());
            }

            #[test]
            fn mutated_base64(edits in proptest::collection::vec(edit(), 1..8)) {
                let b64 = apply(STANDARD.encode(V2).into_bytes(), &edits);
                check(&b64);
            }

            #[test]
            fn replaced_field_values(
                path in prop::sample::select(vec![
                    "/x402Version", "/accepted", "/accepted/scheme", "/accepted/network",
                    "/accepted/amount", "/accepted/asset", "/accepted/payTo",
                    "/accepted/maxTimeoutSeconds", "/accepted/extra", "/payload",
                    "/payload/signature", "/payload/authorization", "/payload/authorization/from",
                    "/payload/authorization/value", "/payload/authorization/validBefore",
                    "/payload/authorization/nonce",
                ]),
                replacement in prop_oneof![
                    Just(Value::Null),
                    any::<bool>().prop_map(Value::from),
                    any::<i64>().prop_map(Value::from),
                    any::<f64>().prop_map(Value::from),
                    ".{0,80}".prop_map(Value::from),
                    "0x[0-9a-f]{0,70}".prop_map(Value::from),
                    "[0-9]{0,90}".prop_map(Value::from),
                    Just(serde_json::json!({})),
                    Just(serde_json::json!([1, "a"])),
                ],
            ) {
                let mut v: Value = serde_json::from_str(V2).unwrap();
                if let Some(slot) = v.pointer_mut(path) {
                    *slot = replacement;
                }
                check(STANDARD.encode(serde_json::to_vec(&v).unwrap()).as_bytes());
            }
        }
    }
}
