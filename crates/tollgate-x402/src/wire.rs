//! x402 wire types (v2 and v1), as they appear in headers, bodies and facilitator calls.
//!
//! Input is parsed tolerantly: unknown fields are ignored everywhere (x402 adds fields often and
//! clients echo extensions). Output uses the exact camelCase names of the specification.

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::amount::{decimal_u256, TokenAmount};
use crate::network::Network;

/// The scheme name of the only scheme this crate verifies.
pub const SCHEME_EXACT: &str = "exact";

/// Free-form JSON object (`extra`, `extensions`, `outputSchema`).
pub type JsonObject = Map<String, Value>;

/// The `ResourceInfo` of a v2 challenge or payload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// URL of the protected resource.
    pub url: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// `extra` of an `exact` EVM requirement: the token's EIP-712 domain name and version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eip712Extra {
    /// EIP-712 domain `name` of the token contract.
    pub name: String,
    /// EIP-712 domain `version` of the token contract.
    pub version: String,
}

/// One v2 `PaymentRequirements` (an entry of `accepts`, or the payload's `accepted`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// Scheme, e.g. `exact`.
    pub scheme: String,
    /// CAIP-2 network, e.g. `eip155:8453`.
    pub network: Network,
    /// Amount in atomic units of `asset`.
    pub amount: TokenAmount,
    /// Token contract address (kept as text: non-EVM networks use other formats).
    pub asset: String,
    /// Recipient.
    pub pay_to: String,
    /// Maximum time the payment may take to complete.
    pub max_timeout_seconds: u64,
    /// Scheme-specific data (`{name, version}` for `exact` on EVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// The v2 challenge, sent base64-encoded in `PAYMENT-REQUIRED` (and mirrored in the 402 body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u8,
    /// Why payment is required (human-readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The protected resource.
    pub resource: ResourceInfo,
    /// What the server accepts.
    pub accepts: Vec<PaymentRequirements>,
    /// Extensions advertised by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<JsonObject>,
}

/// One v1 `PaymentRequirements`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsV1 {
    /// Scheme, e.g. `exact`.
    pub scheme: String,
    /// Network *name*, e.g. `base-sepolia`.
    pub network: String,
    /// Amount in atomic units.
    pub max_amount_required: TokenAmount,
    /// URL of the resource.
    pub resource: String,
    /// Description of the resource.
    #[serde(default)]
    pub description: String,
    /// MIME type of the response.
    #[serde(default)]
    pub mime_type: String,
    /// Optional schema of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// Recipient.
    pub pay_to: String,
    /// Maximum time the payment may take to complete.
    pub max_timeout_seconds: u64,
    /// Token contract address.
    pub asset: String,
    /// Scheme-specific data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// The v1 challenge: the JSON body of a 402.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequiredV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Why payment is required.
    #[serde(default)]
    pub error: String,
    /// What the server accepts.
    pub accepts: Vec<PaymentRequirementsV1>,
}

/// The EIP-3009 authorization signed by the payer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Eip3009Authorization {
    /// Payer.
    pub from: Address,
    /// Recipient.
    pub to: Address,
    /// Amount in atomic units.
    pub value: TokenAmount,
    /// Unix seconds; valid strictly after... (EIP-3009: `now > validAfter`).
    #[serde(with = "decimal_u256")]
    pub valid_after: U256,
    /// Unix seconds; valid strictly before.
    #[serde(with = "decimal_u256")]
    pub valid_before: U256,
    /// Unique 32-byte nonce chosen by the payer.
    pub nonce: B256,
}

/// The `payload` of scheme `exact` on EVM (EIP-3009 transfer method).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactEvmPayload {
    /// The EIP-712 signature (65 bytes `r‖s‖v`, or 64 bytes EIP-2098 compact).
    pub signature: Bytes,
    /// The signed authorization.
    pub authorization: Eip3009Authorization,
}

/// A v2 `PaymentPayload` (the decoded `PAYMENT-SIGNATURE` header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV2 {
    /// Always 2.
    pub x402_version: u8,
    /// The resource the client is paying for (optional, echoed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The requirement the client chose (echoed; never trusted on its own).
    pub accepted: PaymentRequirements,
    /// Scheme payload.
    pub payload: ExactEvmPayload,
    /// Extensions echoed / added by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<JsonObject>,
}

/// A v1 `PaymentPayload` (the decoded `X-PAYMENT` header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayloadV1 {
    /// Always 1.
    pub x402_version: u8,
    /// Scheme, e.g. `exact`.
    pub scheme: String,
    /// Network name, e.g. `base`.
    pub network: String,
    /// Scheme payload.
    pub payload: ExactEvmPayload,
}

/// A decoded payment of either protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
// v2 is the common case and the larger one; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum PaymentPayload {
    /// x402 v2.
    V2(PaymentPayloadV2),
    /// x402 v1.
    V1(PaymentPayloadV1),
}

impl PaymentPayload {
    /// Protocol version (1 or 2).
    pub fn version(&self) -> u8 {
        match self {
            Self::V2(_) => 2,
            Self::V1(_) => 1,
        }
    }

    /// The scheme the client used.
    pub fn scheme(&self) -> &str {
        match self {
            Self::V2(p) => &p.accepted.scheme,
            Self::V1(p) => &p.scheme,
        }
    }

    /// The network as sent (CAIP-2 for v2, a name for v1).
    pub fn network_str(&self) -> &str {
        match self {
            Self::V2(p) => p.accepted.network.as_str(),
            Self::V1(p) => &p.network,
        }
    }

    /// The EIP-3009 payload.
    pub fn exact(&self) -> &ExactEvmPayload {
        match self {
            Self::V2(p) => &p.payload,
            Self::V1(p) => &p.payload,
        }
    }

    /// The payer claimed by the authorization (verified only after signature recovery).
    pub fn payer(&self) -> Address {
        self.exact().authorization.from
    }
}

/// The settlement result, sent base64-encoded in `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`,
/// and the response body of a facilitator's `/settle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the transfer happened. Facilitators may answer HTTP 200 with `false`.
    pub success: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Payer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash (empty when settlement failed).
    #[serde(default)]
    pub transaction: String,
    /// Network (CAIP-2 in v2, a name in v1).
    #[serde(default)]
    pub network: String,
    /// Amount actually settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<TokenAmount>,
    /// Extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<JsonObject>,
}

/// A facilitator's `/verify` response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payment is valid.
    pub is_valid: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Payer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// The request body of a facilitator's `/verify` and `/settle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// Protocol version of the payload.
    pub x402_version: u8,
    /// The client's payment.
    pub payment_payload: PaymentPayload,
    /// The requirement the server selected (its own copy, not the client's echo).
    pub payment_requirements: FacilitatorRequirements,
}

/// The `paymentRequirements` of a facilitator request, in the payload's protocol version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FacilitatorRequirements {
    /// v2 requirements.
    V2(PaymentRequirements),
    /// v1 requirements.
    V1(PaymentRequirementsV1),
}

/// One entry of `/supported`'s `kinds`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// Protocol version.
    pub x402_version: u8,
    /// Scheme.
    pub scheme: String,
    /// Network (CAIP-2 for v2, a name for v1).
    pub network: String,
    /// Scheme-specific data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<JsonObject>,
}

/// A facilitator's `/supported` response.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    /// Supported (version, scheme, network) kinds.
    pub kinds: Vec<SupportedKind>,
    /// Extension identifiers.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// CAIP-2 pattern → signer addresses.
    #[serde(default)]
    pub signers: std::collections::BTreeMap<String, Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_PAYLOAD: &str = r#"{
      "x402Version": 2,
      "resource": {"url": "https://api.example.com/premium-data", "description": "d", "mimeType": "application/json"},
      "accepted": {"scheme": "exact", "network": "eip155:84532", "amount": "10000",
        "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 60,
        "extra": {"name": "USDC", "version": "2"}, "someFutureField": true},
      "payload": {
        "signature": "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9ecab05ded3d6293af148b571c",
        "authorization": {"from": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
          "to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "value": "10000",
          "validAfter": "1740672089", "validBefore": "1740672154",
          "nonce": "0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"}},
      "extensions": {}, "unknownTopLevel": 1
    }"#;

    #[test]
    fn parses_spec_v2_payload_tolerating_unknown_fields() {
        let p: PaymentPayload = serde_json::from_str(SPEC_PAYLOAD).unwrap();
        let PaymentPayload::V2(p2) = &p else {
            panic!("expected v2")
        };
        assert_eq!(p.version(), 2);
        assert_eq!(p2.accepted.amount, TokenAmount::from_u128(10_000));
        assert_eq!(p2.accepted.network.eip155_chain_id(), Some(84532));
        assert_eq!(p.exact().signature.len(), 65);
        assert_eq!(
            p.exact().authorization.valid_before,
            U256::from(1_740_672_154u64)
        );
        // Re-serializes with the spec's field names and decimal strings.
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["payload"]["authorization"]["validAfter"], "1740672089");
        assert_eq!(
            v["accepted"]["payTo"],
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
        );
        assert_eq!(v["accepted"]["maxTimeoutSeconds"], 60);
    }

    #[test]
    fn parses_v1_payload_and_settle_response() {
        let v1 = r#"{"x402Version":1,"scheme":"exact","network":"base-sepolia","payload":{
          "signature":"0x00","authorization":{"from":"0x857b06519E91e3A54538791bDbb0E22373e36b66",
          "to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"1","validAfter":"0",
          "validBefore":"10","nonce":"0x0000000000000000000000000000000000000000000000000000000000000001"}}}"#;
        let p: PaymentPayload = serde_json::from_str(v1).unwrap();
        assert_eq!(p.version(), 1);
        assert_eq!(p.network_str(), "base-sepolia");

        let s: SettleResponse = serde_json::from_str(
            r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532","new":1}"#,
        )
        .unwrap();
        assert!(!s.success);
        assert_eq!(s.error_reason.as_deref(), Some("insufficient_funds"));
        let ok = SettleResponse {
            success: true,
            error_reason: None,
            payer: Some("0xabc".into()),
            transaction: "0x12".into(),
            network: "eip155:8453".into(),
            amount: None,
            extensions: None,
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"success":true,"payer":"0xabc","transaction":"0x12","network":"eip155:8453"}"#
        );
    }

    #[test]
    fn parses_supported_and_verify_response() {
        let s: SupportedResponse = serde_json::from_str(
            r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"}],
                "extensions":[],"signers":{"eip155:*":["0x1234567890abcdef1234567890abcdef12345678"]}}"#,
        )
        .unwrap();
        assert_eq!(s.kinds.len(), 1);
        assert_eq!(s.signers["eip155:*"].len(), 1);
        let v: VerifyResponse = serde_json::from_str(
            r#"{"isValid":false,"invalidReason":"insufficient_funds","payer":"0x1"}"#,
        )
        .unwrap();
        assert!(!v.is_valid);
    }
}
