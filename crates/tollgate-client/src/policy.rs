//! The spend policy: which x402 offers the client may pay, and how much.
//!
//! Amounts are atomic units of the offer's asset (USDC has 6 decimals: `10000` = 0.01 USDC).
//! The daily budget sums atomic units over all assets the policy allows; allow only assets of
//! the same denomination (e.g. USDC on several networks) when you rely on it.

use std::fmt;

use alloy::primitives::{Address, U256};
use tollgate_x402::price::KNOWN_USDC;
use tollgate_x402::{Network, PaymentRequirements, PaymentRequirementsV1, SCHEME_EXACT};

/// Default largest single payment: 100000 atomic units (0.10 USDC).
pub const DEFAULT_MAX_PER_PAYMENT: u64 = 100_000;
/// Default daily budget: 1000000 atomic units (1.00 USDC).
pub const DEFAULT_MAX_PER_DAY: u64 = 1_000_000;

/// What the client may pay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendPolicy {
    /// Largest single payment (atomic units); `None`: no limit.
    pub max_per_payment: Option<U256>,
    /// Largest total per UTC day (atomic units, persisted in the spend state); `None`: no limit.
    pub max_per_day: Option<U256>,
    /// Networks the client pays on (CAIP-2). Empty: any network of an allowed asset.
    pub networks: Vec<Network>,
    /// Token contracts the client pays with, besides the known USDC deployments (which are
    /// always allowed, on allowed networks, unless `only_listed_assets` is set).
    pub assets: Vec<Address>,
    /// When true, only `assets` are allowed (known USDC is not implied).
    pub only_listed_assets: bool,
}

impl Default for SpendPolicy {
    fn default() -> Self {
        Self {
            max_per_payment: Some(U256::from(DEFAULT_MAX_PER_PAYMENT)),
            max_per_day: Some(U256::from(DEFAULT_MAX_PER_DAY)),
            networks: Vec::new(),
            assets: Vec::new(),
            only_listed_assets: false,
        }
    }
}

/// Which protocol version an offer came from, with the server's requirement as sent (it is
/// echoed back verbatim in the payment).
#[derive(Clone, Debug, PartialEq)]
pub enum OfferSource {
    /// v2 (`PAYMENT-REQUIRED` header).
    V2(PaymentRequirements),
    /// v1 (402 body `accepts`).
    V1(PaymentRequirementsV1),
}

/// One offer of a challenge, normalized across versions. Fields that failed to parse are
/// `None` (the offer is then refused with a reason, never guessed).
#[derive(Clone, Debug, PartialEq)]
pub struct Offer {
    /// Scheme (`exact`).
    pub scheme: String,
    /// CAIP-2 network (v1 names mapped), if known.
    pub network: Option<Network>,
    /// The network as the server wrote it.
    pub network_raw: String,
    /// Token contract.
    pub asset: Option<Address>,
    /// Recipient.
    pub pay_to: Option<Address>,
    /// Price in atomic units.
    pub amount: U256,
    /// How long the authorization should stay valid.
    pub max_timeout_seconds: u64,
    /// EIP-712 domain `(name, version)` of the token, from `extra`.
    pub domain: Option<(String, String)>,
    /// The requirement as sent.
    pub source: OfferSource,
}

impl Offer {
    /// Normalizes a v2 requirement.
    pub fn from_v2(r: &PaymentRequirements) -> Self {
        Self {
            scheme: r.scheme.clone(),
            network: Some(r.network.clone()).filter(|n| n.eip155_chain_id().is_some()),
            network_raw: r.network.as_str().to_owned(),
            asset: r.asset.parse().ok(),
            pay_to: r.pay_to.parse().ok(),
            amount: r.amount.0,
            max_timeout_seconds: r.max_timeout_seconds,
            domain: domain_of(r.extra.as_ref()),
            source: OfferSource::V2(r.clone()),
        }
    }

    /// Normalizes a v1 requirement (network names are mapped to CAIP-2).
    pub fn from_v1(r: &PaymentRequirementsV1) -> Self {
        Self {
            scheme: r.scheme.clone(),
            network: Network::from_v1_name(&r.network),
            network_raw: r.network.clone(),
            asset: r.asset.parse().ok(),
            pay_to: r.pay_to.parse().ok(),
            amount: r.max_amount_required.0,
            max_timeout_seconds: r.max_timeout_seconds,
            domain: domain_of(r.extra.as_ref()),
            source: OfferSource::V1(r.clone()),
        }
    }

    /// The protocol version of the offer.
    pub fn version(&self) -> u8 {
        match self.source {
            OfferSource::V2(_) => 2,
            OfferSource::V1(_) => 1,
        }
    }

    /// The asset as written by the server (for messages).
    pub fn asset_raw(&self) -> &str {
        match &self.source {
            OfferSource::V2(r) => &r.asset,
            OfferSource::V1(r) => &r.asset,
        }
    }
}

fn domain_of(extra: Option<&tollgate_x402::JsonObject>) -> Option<(String, String)> {
    let extra = extra?;
    let name = extra.get("name")?.as_str()?;
    let version = extra.get("version")?.as_str()?;
    Some((name.to_owned(), version.to_owned()))
}

/// Why one offer was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferRefusal {
    /// Not scheme `exact`.
    UnsupportedScheme(String),
    /// Not an EVM network this client can sign for (or an unknown v1 name).
    UnsupportedNetwork,
    /// The network is not in the policy's list.
    NetworkNotAllowed,
    /// The asset, payTo or EIP-712 domain is missing or malformed.
    MalformedOffer(&'static str),
    /// The asset is not allowed by the policy.
    AssetNotAllowed,
    /// A zero-amount offer (nothing to sign; refused rather than trusted).
    ZeroAmount,
    /// The price is above the per-payment limit.
    AboveMaxPerPayment {
        /// Limit.
        max: U256,
    },
    /// Paying would pass the daily budget.
    AboveDailyBudget {
        /// Already spent (or reserved) today.
        spent: U256,
        /// Limit.
        max: U256,
    },
}

impl fmt::Display for OfferRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedScheme(s) => write!(f, "scheme {s:?} is not supported (only exact)"),
            Self::UnsupportedNetwork => {
                f.write_str("network is not an EVM network this client knows")
            }
            Self::NetworkNotAllowed => f.write_str("network is not allowed by the spend policy"),
            Self::MalformedOffer(what) => write!(f, "offer is malformed: {what}"),
            Self::AssetNotAllowed => f.write_str("asset is not allowed by the spend policy"),
            Self::ZeroAmount => f.write_str("amount is zero"),
            Self::AboveMaxPerPayment { max } => write!(f, "amount is above max-per-payment {max}"),
            Self::AboveDailyBudget { spent, max } => {
                write!(
                    f,
                    "would pass max-per-day {max} (already spent today: {spent})"
                )
            }
        }
    }
}

/// An offer the policy refused, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedOffer {
    /// The network as written by the server.
    pub network: String,
    /// The asset as written by the server.
    pub asset: String,
    /// The price.
    pub amount: U256,
    /// Why.
    pub why: OfferRefusal,
}

impl fmt::Display for RefusedOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on {}: {}",
            self.amount, self.asset, self.network, self.why
        )
    }
}

/// A signable offer: every field parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Chosen {
    /// Index in the challenge's offers.
    pub index: usize,
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Recipient.
    pub pay_to: Address,
    /// EIP-712 domain name and version.
    pub domain: (String, String),
}

impl SpendPolicy {
    /// Whether `asset` on `chain_id` is allowed.
    pub fn asset_allowed(&self, chain_id: u64, asset: Address) -> bool {
        self.assets.contains(&asset)
            || (!self.only_listed_assets
                && KNOWN_USDC
                    .iter()
                    .any(|k| k.chain_id == chain_id && k.address == asset))
    }

    /// Checks one offer against the policy, with `spent_today` already spent or reserved.
    pub fn check(&self, offer: &Offer, spent_today: U256) -> Result<Chosen, OfferRefusal> {
        if offer.scheme != SCHEME_EXACT {
            return Err(OfferRefusal::UnsupportedScheme(offer.scheme.clone()));
        }
        let network = offer
            .network
            .as_ref()
            .ok_or(OfferRefusal::UnsupportedNetwork)?;
        let chain_id = network
            .eip155_chain_id()
            .ok_or(OfferRefusal::UnsupportedNetwork)?;
        if !self.networks.is_empty() && !self.networks.contains(network) {
            return Err(OfferRefusal::NetworkNotAllowed);
        }
        let asset = offer.asset.ok_or(OfferRefusal::MalformedOffer("asset"))?;
        let pay_to = offer
            .pay_to
            .filter(|a| !a.is_zero())
            .ok_or(OfferRefusal::MalformedOffer("payTo"))?;
        let domain = offer
            .domain
            .clone()
            .ok_or(OfferRefusal::MalformedOffer("extra.name/extra.version"))?;
        if !self.asset_allowed(chain_id, asset) {
            return Err(OfferRefusal::AssetNotAllowed);
        }
        if offer.amount.is_zero() {
            return Err(OfferRefusal::ZeroAmount);
        }
        if let Some(max) = self.max_per_payment {
            if offer.amount > max {
                return Err(OfferRefusal::AboveMaxPerPayment { max });
            }
        }
        if let Some(max) = self.max_per_day {
            let fits = spent_today
                .checked_add(offer.amount)
                .is_some_and(|total| total <= max);
            if !fits {
                return Err(OfferRefusal::AboveDailyBudget {
                    spent: spent_today,
                    max,
                });
            }
        }
        Ok(Chosen {
            index: 0,
            chain_id,
            asset,
            pay_to,
            domain,
        })
    }

    /// Picks the cheapest offer the policy allows (the first of equal prices), or says why
    /// each offer was refused.
    pub fn choose(&self, offers: &[Offer], spent_today: U256) -> Result<Chosen, Vec<RefusedOffer>> {
        let mut best: Option<(U256, Chosen)> = None;
        let mut refused = Vec::new();
        for (i, offer) in offers.iter().enumerate() {
            match self.check(offer, spent_today) {
                Ok(mut c) => {
                    c.index = i;
                    if best.as_ref().is_none_or(|(a, _)| offer.amount < *a) {
                        best = Some((offer.amount, c));
                    }
                }
                Err(why) => refused.push(RefusedOffer {
                    network: offer.network_raw.clone(),
                    asset: offer.asset_raw().to_owned(),
                    amount: offer.amount,
                    why,
                }),
            }
        }
        best.map(|(_, c)| c).ok_or(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tollgate_x402::TokenAmount;

    const TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
    const BASE_USDC: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";

    fn offer(network: &str, asset: &str, amount: u128) -> Offer {
        let mut extra = tollgate_x402::JsonObject::new();
        extra.insert("name".into(), "USD Coin".into());
        extra.insert("version".into(), "2".into());
        Offer::from_v2(&PaymentRequirements {
            scheme: "exact".into(),
            network: Network::new(network),
            amount: TokenAmount::from_u128(amount),
            asset: asset.into(),
            pay_to: PAY_TO.into(),
            max_timeout_seconds: 60,
            extra: Some(extra),
        })
    }

    fn local_policy() -> SpendPolicy {
        SpendPolicy {
            assets: vec![TOKEN.parse().unwrap()],
            ..SpendPolicy::default()
        }
    }

    #[test]
    fn known_usdc_is_allowed_by_default_other_tokens_are_not() {
        let p = SpendPolicy::default();
        assert!(p
            .check(&offer("eip155:8453", BASE_USDC, 10_000), U256::ZERO)
            .is_ok());
        assert_eq!(
            p.check(&offer("eip155:31337", TOKEN, 10_000), U256::ZERO),
            Err(OfferRefusal::AssetNotAllowed)
        );
        // Known USDC of Base is not known USDC on another chain.
        assert_eq!(
            p.check(&offer("eip155:1", BASE_USDC, 10_000), U256::ZERO),
            Err(OfferRefusal::AssetNotAllowed)
        );
        let only = SpendPolicy {
            only_listed_assets: true,
            ..local_policy()
        };
        assert_eq!(
            only.check(&offer("eip155:8453", BASE_USDC, 1), U256::ZERO),
            Err(OfferRefusal::AssetNotAllowed)
        );
        assert!(only
            .check(&offer("eip155:31337", TOKEN, 1), U256::ZERO)
            .is_ok());
    }

    #[test]
    fn limits_and_network_list() {
        let p = SpendPolicy {
            max_per_payment: Some(U256::from(10_000)),
            max_per_day: Some(U256::from(25_000)),
            networks: vec![Network::new("eip155:31337")],
            ..local_policy()
        };
        assert!(p
            .check(&offer("eip155:31337", TOKEN, 10_000), U256::ZERO)
            .is_ok());
        assert_eq!(
            p.check(&offer("eip155:31337", TOKEN, 10_001), U256::ZERO),
            Err(OfferRefusal::AboveMaxPerPayment {
                max: U256::from(10_000)
            })
        );
        assert!(p
            .check(&offer("eip155:31337", TOKEN, 5_000), U256::from(20_000))
            .is_ok());
        assert!(matches!(
            p.check(&offer("eip155:31337", TOKEN, 5_001), U256::from(20_000)),
            Err(OfferRefusal::AboveDailyBudget { .. })
        ));
        assert_eq!(
            p.check(&offer("eip155:8453", BASE_USDC, 1), U256::ZERO),
            Err(OfferRefusal::NetworkNotAllowed)
        );
        assert_eq!(
            p.check(
                &offer("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp", TOKEN, 1),
                U256::ZERO
            ),
            Err(OfferRefusal::UnsupportedNetwork)
        );
        assert_eq!(
            p.check(&offer("eip155:31337", TOKEN, 0), U256::ZERO),
            Err(OfferRefusal::ZeroAmount)
        );
    }

    #[test]
    fn malformed_offers_are_refused_not_guessed() {
        let p = local_policy();
        let mut o = offer("eip155:31337", TOKEN, 1);
        o.domain = None;
        assert!(matches!(
            p.check(&o, U256::ZERO),
            Err(OfferRefusal::MalformedOffer(_))
        ));
        let mut o = offer("eip155:31337", TOKEN, 1);
        o.pay_to = Some(Address::ZERO);
        assert!(matches!(
            p.check(&o, U256::ZERO),
            Err(OfferRefusal::MalformedOffer(_))
        ));
        let mut o = offer("eip155:31337", TOKEN, 1);
        o.scheme = "upto".into();
        assert!(matches!(
            p.check(&o, U256::ZERO),
            Err(OfferRefusal::UnsupportedScheme(_))
        ));
    }

    #[test]
    fn choose_takes_the_cheapest_allowed_and_explains_refusals() {
        let p = SpendPolicy {
            max_per_payment: Some(U256::from(50_000)),
            ..local_policy()
        };
        let offers = vec![
            offer("eip155:31337", TOKEN, 60_000),
            offer("eip155:8453", BASE_USDC, 20_000),
            offer("eip155:31337", TOKEN, 30_000),
        ];
        let c = p.choose(&offers, U256::ZERO).unwrap();
        assert_eq!(c.index, 1);
        let refused = p.choose(&offers[..1], U256::ZERO).unwrap_err();
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].to_string().contains("max-per-payment 50000"),
            "{}",
            refused[0]
        );
    }

    proptest! {
        /// Whatever the offers and the day's spend, a chosen offer never passes either limit
        /// and is never dearer than another allowed offer.
        #[test]
        fn chosen_offer_respects_limits(
            amounts in proptest::collection::vec(0u64..200_000, 1..6),
            spent in 0u64..1_200_000,
            per_payment in 1u64..150_000,
            per_day in 1u64..1_500_000,
        ) {
            let p = SpendPolicy {
                max_per_payment: Some(U256::from(per_payment)),
                max_per_day: Some(U256::from(per_day)),
                ..local_policy()
            };
            let offers: Vec<Offer> = amounts
                .iter()
                .map(|a| offer("eip155:31337", TOKEN, u128::from(*a)))
                .collect();
            match p.choose(&offers, U256::from(spent)) {
                Ok(c) => {
                    let a = amounts[c.index];
                    prop_assert!(a > 0 && a <= per_payment);
                    prop_assert!(spent + a <= per_day);
                    for &other in &amounts {
                        if other > 0 && other <= per_payment && spent + other <= per_day {
                            prop_assert!(a <= other);
                        }
                    }
                }
                Err(refused) => {
                    prop_assert_eq!(refused.len(), amounts.len());
                    for &a in &amounts {
                        prop_assert!(a == 0 || a > per_payment || spent + a > per_day);
                    }
                }
            }
        }
    }
}
