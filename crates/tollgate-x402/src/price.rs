//! Route pricing: the config form ([`RoutePrice`]) and its validated, precomputed form
//! ([`PricedRoute`]) that builds 402 challenges and drives verification.
//!
//! Raw config → validated form happens once, at config load: [`RoutePrice::compile`] checks every
//! field (errors name the field path) and precomputes the EIP-712 domain separator of every offer,
//! so the per-request path does no parsing.

use std::fmt;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::Eip712Domain;
use serde::{Deserialize, Serialize};

use crate::amount::TokenAmount;
use crate::network::Network;
use crate::wire::{
    JsonObject, PaymentRequired, PaymentRequiredV1, PaymentRequirements, PaymentRequirementsV1,
    ResourceInfo, SCHEME_EXACT,
};

/// Default `maxTimeoutSeconds` of an offer.
pub const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 60;
/// Upper bound accepted for `max_timeout_seconds`.
pub const MAX_TIMEOUT_SECONDS_LIMIT: u64 = 86_400;

/// A USDC deployment whose EIP-712 domain and decimals are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownAsset {
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub address: Address,
    /// EIP-712 domain name.
    pub eip712_name: &'static str,
    /// EIP-712 domain version.
    pub eip712_version: &'static str,
    /// Token decimals.
    pub decimals: u8,
}

/// Known USDC deployments (extend as networks are added).
pub const KNOWN_USDC: &[KnownAsset] = &[
    KnownAsset {
        chain_id: 8453,
        address: alloy::primitives::address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        eip712_name: "USD Coin",
        eip712_version: "2",
        decimals: 6,
    },
    KnownAsset {
        chain_id: 84532,
        address: alloy::primitives::address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
        eip712_name: "USDC",
        eip712_version: "2",
        decimals: 6,
    },
];

/// The USDC deployment of a chain, if known.
pub fn known_usdc(chain_id: u64) -> Option<&'static KnownAsset> {
    KNOWN_USDC.iter().find(|k| k.chain_id == chain_id)
}

/// The price of a route as written in the gateway config.
///
/// ```toml
/// usd = "0.01"                      # or: amount = "10000" (atomic units of the asset)
/// description = "Premium data"
/// mime_type = "application/json"
/// [[offers]]
/// network = "eip155:8453"            # asset, eip712_name/version default to the known USDC
/// pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePrice {
    /// Price in atomic units of each offer's asset. Exactly one of `amount` and `usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<TokenAmount>,
    /// Price in US dollars as a decimal string (`"0.01"`), converted with each offer's decimals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<String>,
    /// One or more ways to pay.
    pub offers: Vec<NetworkOffer>,
    /// Resource description shown to payers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One network/asset on which a route can be paid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOffer {
    /// CAIP-2 id, `eip155:N`.
    pub network: String,
    /// Token contract; defaults to the network's known USDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Recipient address.
    pub pay_to: String,
    /// EIP-712 domain name of the token; required for assets that are not known USDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip712_name: Option<String>,
    /// EIP-712 domain version of the token; required for assets that are not known USDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip712_version: Option<String>,
    /// Token decimals; needed with `usd` for assets that are not known USDC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decimals: Option<u8>,
    /// Maximum time the payment may take to complete.
    #[serde(default = "default_timeout")]
    pub max_timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_MAX_TIMEOUT_SECONDS
}

/// A config error, naming the field path relative to the price (`offers[1].pay_to`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PriceError {
    /// Field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl PriceError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A list of [`PriceError`]s, displayed one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PriceErrors(pub Vec<PriceError>);

impl fmt::Display for PriceErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A validated offer with everything verification needs precomputed.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedOffer {
    /// CAIP-2 network.
    pub network: Network,
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Recipient.
    pub pay_to: Address,
    /// Exact price in atomic units.
    pub amount: U256,
    /// EIP-712 domain name.
    pub eip712_name: String,
    /// EIP-712 domain version.
    pub eip712_version: String,
    /// Maximum time the payment may take.
    pub max_timeout_seconds: u64,
    /// Precomputed EIP-712 domain separator of the token.
    pub domain_separator: B256,
    /// The v2 requirement this offer advertises.
    pub requirements: PaymentRequirements,
}

impl ResolvedOffer {
    /// The v1 requirement, if the network has a v1 name.
    pub fn requirements_v1(
        &self,
        resource_url: &str,
        description: &str,
        mime_type: &str,
    ) -> Option<PaymentRequirementsV1> {
        let name = self.network.v1_name()?;
        Some(PaymentRequirementsV1 {
            scheme: SCHEME_EXACT.to_owned(),
            network: name.to_owned(),
            max_amount_required: TokenAmount(self.amount),
            resource: resource_url.to_owned(),
            description: description.to_owned(),
            mime_type: mime_type.to_owned(),
            output_schema: None,
            pay_to: self.pay_to.to_checksum(None),
            max_timeout_seconds: self.max_timeout_seconds,
            asset: self.asset.to_checksum(None),
            extra: self.requirements.extra.clone(),
        })
    }
}

/// A validated route price: builds challenges and is the reference for verification.
#[derive(Clone, Debug, PartialEq)]
pub struct PricedRoute {
    /// Resource description.
    pub description: Option<String>,
    /// Response MIME type.
    pub mime_type: Option<String>,
    /// Offers, in config order.
    pub offers: Vec<ResolvedOffer>,
}

impl PricedRoute {
    /// The v2 `accepts` list.
    pub fn accepts(&self) -> Vec<PaymentRequirements> {
        self.offers.iter().map(|o| o.requirements.clone()).collect()
    }

    /// The v2 challenge for `resource_url` (send base64 in `PAYMENT-REQUIRED` and as the body).
    pub fn payment_required(&self, resource_url: &str, error: Option<&str>) -> PaymentRequired {
        PaymentRequired {
            x402_version: 2,
            error: error.map(str::to_owned),
            resource: ResourceInfo {
                url: resource_url.to_owned(),
                description: self.description.clone(),
                mime_type: self.mime_type.clone(),
            },
            accepts: self.accepts(),
            extensions: None,
        }
    }

    /// The v1 `accepts` list (only offers on networks that have a v1 name).
    pub fn accepts_v1(&self, resource_url: &str) -> Vec<PaymentRequirementsV1> {
        let description = self.description.as_deref().unwrap_or("");
        let mime = self.mime_type.as_deref().unwrap_or("application/json");
        self.offers
            .iter()
            .filter_map(|o| o.requirements_v1(resource_url, description, mime))
            .collect()
    }

    /// The v1 challenge body.
    pub fn payment_required_v1(&self, resource_url: &str, error: &str) -> PaymentRequiredV1 {
        PaymentRequiredV1 {
            x402_version: 1,
            error: error.to_owned(),
            accepts: self.accepts_v1(resource_url),
        }
    }
}

impl RoutePrice {
    /// Checks every field; errors name the field path.
    pub fn validate(&self) -> Result<(), PriceErrors> {
        self.compile().map(|_| ())
    }

    /// Validates and precomputes the route's offers.
    pub fn compile(&self) -> Result<PricedRoute, PriceErrors> {
        let mut errors = Vec::new();
        let usd = match (&self.amount, &self.usd) {
            (Some(_), Some(_)) => {
                errors.push(PriceError::new(
                    "usd",
                    "set either `amount` or `usd`, not both",
                ));
                None
            }
            (None, None) => {
                errors.push(PriceError::new(
                    "amount",
                    "a price is required: set `amount` or `usd`",
                ));
                None
            }
            (Some(a), None) => {
                if a.0.is_zero() {
                    errors.push(PriceError::new("amount", "must be greater than zero"));
                }
                None
            }
            (None, Some(u)) => match parse_usd(u) {
                Ok(parsed) if parsed.is_zero() => {
                    errors.push(PriceError::new("usd", "must be greater than zero"));
                    None
                }
                Ok(parsed) => Some(parsed),
                Err(m) => {
                    errors.push(PriceError::new("usd", m));
                    None
                }
            },
        };
        if self.offers.is_empty() {
            errors.push(PriceError::new("offers", "at least one offer is required"));
        }
        let mut offers = Vec::with_capacity(self.offers.len());
        for (i, offer) in self.offers.iter().enumerate() {
            if let Some(r) = resolve_offer(i, offer, self.amount, usd.as_ref(), &mut errors) {
                if offers
                    .iter()
                    .any(|o: &ResolvedOffer| o.chain_id == r.chain_id && o.asset == r.asset)
                {
                    errors.push(PriceError::new(
                        format!("offers[{i}]"),
                        "duplicate offer for the same network and asset",
                    ));
                }
                offers.push(r);
            }
        }
        if errors.is_empty() {
            Ok(PricedRoute {
                description: self.description.clone(),
                mime_type: self.mime_type.clone(),
                offers,
            })
        } else {
            Err(PriceErrors(errors))
        }
    }
}

/// A USD price as an exact decimal: `(integer digits, fraction digits)` scaled later.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UsdPrice {
    int: U256,
    frac: String,
}

impl UsdPrice {
    fn is_zero(&self) -> bool {
        self.int.is_zero() && self.frac.bytes().all(|b| b == b'0')
    }

    /// Atomic units for a token with `decimals` decimals, if exact.
    fn to_units(&self, decimals: u8) -> Result<U256, String> {
        let frac = self.frac.trim_end_matches('0');
        if frac.len() > usize::from(decimals) {
            return Err(format!(
                "usd price has more precision than the asset's {decimals} decimals"
            ));
        }
        let scale = U256::from(10u8).pow(U256::from(decimals));
        let mut frac_units = U256::ZERO;
        if !frac.is_empty() {
            frac_units = U256::from_str_radix(frac, 10).map_err(|e| e.to_string())?
                * U256::from(10u8).pow(U256::from(usize::from(decimals) - frac.len()));
        }
        self.int
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_units))
            .ok_or_else(|| "usd price overflows".to_owned())
    }
}

fn parse_usd(s: &str) -> Result<UsdPrice, String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (s.contains('.') && frac.is_empty()) {
        return Err(format!("{s:?} is not a decimal number like \"0.01\""));
    }
    let int = crate::amount::parse_decimal_u256(int).map_err(|e| e.to_string())?;
    Ok(UsdPrice {
        int,
        frac: frac.to_owned(),
    })
}

fn resolve_offer(
    i: usize,
    offer: &NetworkOffer,
    amount: Option<TokenAmount>,
    usd: Option<&UsdPrice>,
    errors: &mut Vec<PriceError>,
) -> Option<ResolvedOffer> {
    let field = |name: &str| format!("offers[{i}].{name}");
    let start = errors.len();
    let network = Network::parse(&offer.network);
    let chain_id = network.as_ref().and_then(Network::eip155_chain_id);
    if chain_id.is_none() {
        errors.push(PriceError::new(
            field("network"),
            format!(
                "{:?} is not an EVM CAIP-2 network like \"eip155:8453\"",
                offer.network
            ),
        ));
    }
    let known = chain_id.and_then(known_usdc);
    let asset = match (&offer.asset, known) {
        (Some(a), _) => parse_address(a, &field("asset"), errors),
        (None, Some(k)) => Some(k.address),
        (None, None) => {
            if chain_id.is_some() {
                errors.push(PriceError::new(
                    field("asset"),
                    format!("required: no known USDC on {}", offer.network),
                ));
            }
            None
        }
    };
    let pay_to = parse_address(&offer.pay_to, &field("pay_to"), errors);
    if pay_to == Some(Address::ZERO) {
        errors.push(PriceError::new(
            field("pay_to"),
            "must not be the zero address",
        ));
    }
    // Known USDC pins the domain: a different name/version could never verify.
    let known_asset = known.filter(|k| Some(k.address) == asset);
    let name = domain_part(
        offer.eip712_name.as_deref(),
        known_asset.map(|k| k.eip712_name),
        &field("eip712_name"),
        errors,
    );
    let version = domain_part(
        offer.eip712_version.as_deref(),
        known_asset.map(|k| k.eip712_version),
        &field("eip712_version"),
        errors,
    );
    if offer.max_timeout_seconds == 0 || offer.max_timeout_seconds > MAX_TIMEOUT_SECONDS_LIMIT {
        errors.push(PriceError::new(
            field("max_timeout_seconds"),
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS_LIMIT}"),
        ));
    }
    let decimals = offer.decimals.or(known_asset.map(|k| k.decimals));
    if let (Some(d), Some(k)) = (offer.decimals, known_asset) {
        if d != k.decimals {
            errors.push(PriceError::new(
                field("decimals"),
                format!("this USDC has {} decimals", k.decimals),
            ));
        }
    }
    let units = match (amount, usd) {
        (Some(a), _) => Some(a.0),
        (None, Some(u)) => match decimals {
            Some(d) => match u.to_units(d) {
                Ok(v) => Some(v),
                Err(m) => {
                    errors.push(PriceError::new("usd", format!("offers[{i}]: {m}")));
                    None
                }
            },
            None => {
                errors.push(PriceError::new(
                    field("decimals"),
                    "required to convert a usd price for an asset that is not known USDC",
                ));
                None
            }
        },
        (None, None) => None,
    };
    if errors.len() != start {
        return None;
    }
    let (network, chain_id, asset, pay_to, name, version, amount) = (
        network?, chain_id?, asset?, pay_to?, name?, version?, units?,
    );
    let domain_separator = Eip712Domain::new(
        Some(name.clone().into()),
        Some(version.clone().into()),
        Some(U256::from(chain_id)),
        Some(asset),
        None,
    )
    .separator();
    let mut extra = JsonObject::new();
    extra.insert("name".to_owned(), name.clone().into());
    extra.insert("version".to_owned(), version.clone().into());
    let requirements = PaymentRequirements {
        scheme: SCHEME_EXACT.to_owned(),
        network: network.clone(),
        amount: TokenAmount(amount),
        asset: asset.to_checksum(None),
        pay_to: pay_to.to_checksum(None),
        max_timeout_seconds: offer.max_timeout_seconds,
        extra: Some(extra),
    };
    Some(ResolvedOffer {
        network,
        chain_id,
        asset,
        pay_to,
        amount,
        eip712_name: name,
        eip712_version: version,
        max_timeout_seconds: offer.max_timeout_seconds,
        domain_separator,
        requirements,
    })
}

fn parse_address(s: &str, field: &str, errors: &mut Vec<PriceError>) -> Option<Address> {
    let ok = s.len() == 42 && s.starts_with("0x");
    match s.parse::<Address>() {
        Ok(a) if ok => Some(a),
        _ => {
            errors.push(PriceError::new(
                field,
                format!("{s:?} is not a 0x-prefixed 20-byte hex address"),
            ));
            None
        }
    }
}

fn domain_part(
    given: Option<&str>,
    known: Option<&'static str>,
    field: &str,
    errors: &mut Vec<PriceError>,
) -> Option<String> {
    match (given, known) {
        (Some(g), Some(k)) if g != k => {
            errors.push(PriceError::new(
                field,
                format!("this token's EIP-712 domain uses {k:?}; {g:?} would never verify"),
            ));
            None
        }
        (Some(""), _) => {
            errors.push(PriceError::new(field, "must not be empty"));
            None
        }
        (Some(g), _) => Some(g.to_owned()),
        (None, Some(k)) => Some(k.to_owned()),
        (None, None) => {
            errors.push(PriceError::new(
                field,
                "required for an asset that is not known USDC",
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    fn base_offer(network: &str) -> NetworkOffer {
        NetworkOffer {
            network: network.into(),
            asset: None,
            pay_to: PAY_TO.into(),
            eip712_name: None,
            eip712_version: None,
            decimals: None,
            max_timeout_seconds: 60,
        }
    }

    #[test]
    fn usd_price_on_known_usdc() {
        let p = RoutePrice {
            amount: None,
            usd: Some("0.01".into()),
            offers: vec![base_offer("eip155:8453"), base_offer("eip155:84532")],
            description: Some("Premium".into()),
            mime_type: Some("application/json".into()),
        };
        let r = p.compile().unwrap();
        assert_eq!(r.offers[0].amount, U256::from(10_000u64));
        assert_eq!(r.offers[0].eip712_name, "USD Coin");
        assert_eq!(r.offers[1].eip712_name, "USDC");
        let req = r.payment_required("https://x/y", Some("PAYMENT-SIGNATURE header is required"));
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v["accepts"][1]["asset"],
            "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
        );
        assert_eq!(v["accepts"][1]["amount"], "10000");
        assert_eq!(v["accepts"][1]["extra"]["name"], "USDC");
        assert_eq!(v["resource"]["mimeType"], "application/json");
        let v1 = r.accepts_v1("https://x/y");
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[0].network, "base");
        assert_eq!(v1[1].network, "base-sepolia");
        assert_eq!(v1[0].max_amount_required, TokenAmount::from_u128(10_000));
    }

    #[test]
    fn usd_conversion_is_exact() {
        let u = |s: &str| parse_usd(s).unwrap().to_units(6);
        assert_eq!(u("1"), Ok(U256::from(1_000_000u64)));
        assert_eq!(u("0.000001"), Ok(U256::from(1u64)));
        assert_eq!(u("12.5"), Ok(U256::from(12_500_000u64)));
        assert_eq!(u("0.0000010"), Ok(U256::from(1u64)));
        assert!(u("0.0000001").is_err());
        for bad in ["", ".5", "1.", "-1", "1e3", "0x1", "1,5", " 1"] {
            assert!(parse_usd(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn custom_token_needs_domain_and_localnet_has_no_v1() {
        let mut o = base_offer("eip155:31337");
        let p = RoutePrice {
            amount: Some(TokenAmount::from_u128(5)),
            usd: None,
            offers: vec![o.clone()],
            description: None,
            mime_type: None,
        };
        let errs = p.validate().unwrap_err().0;
        assert_eq!(errs[0].field, "offers[0].asset");
        o.asset = Some("0x5FbDB2315678afecb367f032d93F642f64180aa3".into());
        o.eip712_name = Some("USD Coin".into());
        o.eip712_version = Some("2".into());
        let p = RoutePrice {
            offers: vec![o],
            ..p
        };
        let r = p.compile().unwrap();
        assert!(r.accepts_v1("u").is_empty());
        assert_eq!(r.offers[0].chain_id, 31337);
    }

    #[test]
    fn validate_names_fields() {
        let toml_like = serde_json::json!({
            "usd": "0.01", "amount": "0",
            "offers": [
                {"network": "base", "pay_to": "0x12"},
                {"network": "eip155:8453", "pay_to": PAY_TO, "eip712_name": "USDC", "max_timeout_seconds": 0},
                {"network": "eip155:8453", "pay_to": PAY_TO},
            ]
        });
        let p: RoutePrice = serde_json::from_value(toml_like).unwrap();
        let errs = p.validate().unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"usd"), "{errs}");
        assert!(fields.contains(&"offers[0].network"), "{errs}");
        assert!(fields.contains(&"offers[0].pay_to"), "{errs}");
        assert!(fields.contains(&"offers[1].eip712_name"), "{errs}");
        assert!(fields.contains(&"offers[1].max_timeout_seconds"), "{errs}");
        let empty = RoutePrice {
            amount: None,
            usd: None,
            offers: vec![],
            description: None,
            mime_type: None,
        };
        let errs = empty.validate().unwrap_err().0;
        assert_eq!(errs.len(), 2);
        let dup = RoutePrice {
            amount: Some(TokenAmount::from_u128(1)),
            usd: None,
            offers: vec![base_offer("eip155:8453"), base_offer("eip155:8453")],
            description: None,
            mime_type: None,
        };
        assert_eq!(dup.validate().unwrap_err().0[0].field, "offers[1]");
    }

    #[test]
    fn rejects_unknown_fields() {
        let bad = serde_json::json!({"amount": "1", "offers": [], "colour": "red"});
        assert!(serde_json::from_value::<RoutePrice>(bad).is_err());
        let bad = serde_json::json!({"amount": "1", "offers": [{"network": "eip155:1", "pay_to": PAY_TO, "payto": 1}]});
        assert!(serde_json::from_value::<RoutePrice>(bad).is_err());
    }

    #[test]
    fn challenge_json_is_pinned() {
        let p = RoutePrice {
            amount: None,
            usd: Some("0.01".into()),
            offers: vec![base_offer("eip155:84532")],
            description: Some("Premium".into()),
            mime_type: Some("application/json".into()),
        };
        let r = p.compile().unwrap();
        let json = serde_json::to_string(&r.payment_required(
            "https://api.example.com/x",
            Some("PAYMENT-SIGNATURE header is required"),
        ))
        .unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"x402Version":2,"error":"PAYMENT-SIGNATURE header is required","#,
                r#""resource":{"url":"https://api.example.com/x","description":"Premium","mimeType":"application/json"},"#,
                r#""accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","#,
                r#""asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","#,
                r#""maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}]}"#
            )
        );
        let v1 = serde_json::to_string(
            &r.payment_required_v1("https://api.example.com/x", "X-PAYMENT header is required"),
        )
        .unwrap();
        assert_eq!(
            v1,
            concat!(
                r#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{"scheme":"exact","#,
                r#""network":"base-sepolia","maxAmountRequired":"10000","resource":"https://api.example.com/x","#,
                r#""description":"Premium","mimeType":"application/json","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","#,
                r#""maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","#,
                r#""extra":{"name":"USDC","version":"2"}}]}"#
            )
        );
    }

    #[test]
    fn deserializes_from_toml_like_config() {
        let p: RoutePrice = serde_json::from_value(serde_json::json!({
            "usd": "0.05",
            "description": "d",
            "offers": [{"network": "eip155:8453", "pay_to": PAY_TO}]
        }))
        .unwrap();
        assert_eq!(p.offers[0].max_timeout_seconds, DEFAULT_MAX_TIMEOUT_SECONDS);
        let r = p.compile().unwrap();
        assert_eq!(r.offers[0].amount, U256::from(50_000u64));
        assert_eq!(r.offers[0].asset, KNOWN_USDC[0].address);
    }
}
