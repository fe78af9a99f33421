//! Local verification of scheme `exact` on EVM (EIP-3009 `transferWithAuthorization`).
//!
//! Pure and synchronous: no IO, the clock is a parameter, and the only heap use is none — the
//! EIP-712 digest is hashed from stack buffers and the domain separator was precomputed when the
//! route price was compiled. Checks run cheapest first; signature recovery (the expensive one) last.
//! On-chain checks (balance, nonce state) live in [`crate::chain`].

use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::{b256, keccak256, Address, Bytes, Signature, B256, U256};

use crate::network::Network;
use crate::price::{PricedRoute, ResolvedOffer};
use crate::reason::Reason;
use crate::wire::{PaymentPayload, SCHEME_EXACT};

/// `keccak256("TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)")`.
pub const TRANSFER_WITH_AUTHORIZATION_TYPEHASH: B256 =
    b256!("7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267");

/// An authorization must stay valid at least this long past "now", so it cannot expire between
/// verification and its settlement transaction being mined.
pub const MIN_VALIDITY_MARGIN_SECS: u64 = 6;

/// Source of the current Unix time, injectable for tests.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A fixed clock (tests).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub u64);

impl Clock for FixedClock {
    fn now_unix(&self) -> u64 {
        self.0
    }
}

/// Why a payment failed local verification. Each maps to one stable [`Reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Scheme is not `exact`.
    #[error("unsupported scheme {0:?}")]
    UnsupportedScheme(String),
    /// The network is not offered on this route (or is an unknown v1 name).
    #[error("network {0:?} is not offered for this route")]
    UnsupportedNetwork(String),
    /// The client's `accepted` is not structurally one of this route's offers.
    #[error("accepted requirements do not match any offer: {field} differs")]
    RequirementsMismatch {
        /// The first field that differs from the closest offer on the same network.
        field: &'static str,
    },
    /// `authorization.to` is not the offer's `payTo`.
    #[error("authorization.to {got} is not payTo {expected}")]
    RecipientMismatch {
        /// Our payTo.
        expected: Address,
        /// The client's `to`.
        got: Address,
    },
    /// `authorization.value` is not exactly the price.
    #[error("authorization.value {got} is not the price {expected}")]
    AmountMismatch {
        /// Price.
        expected: U256,
        /// Client's value.
        got: U256,
    },
    /// `validAfter` is later than now.
    #[error("authorization not valid before {valid_after} (now {now})")]
    NotYetValid {
        /// `validAfter`.
        valid_after: U256,
        /// Now.
        now: u64,
    },
    /// `validBefore` is earlier than now + [`MIN_VALIDITY_MARGIN_SECS`].
    #[error("authorization expires at {valid_before} (now {now})")]
    Expired {
        /// `validBefore`.
        valid_before: U256,
        /// Now.
        now: u64,
    },
    /// The signature is not 65 (or 64, EIP-2098) bytes, has a bad `v`, or a high `s`.
    #[error("malformed signature: {0}")]
    MalformedSignature(&'static str),
    /// The signature does not recover to `authorization.from`.
    #[error("signature recovers to {recovered:?}, not {from}")]
    InvalidSignature {
        /// `authorization.from`.
        from: Address,
        /// What it recovered to (None if recovery failed).
        recovered: Option<Address>,
    },
}

impl VerifyError {
    /// The stable reason code.
    pub fn reason(&self) -> Reason {
        match self {
            Self::UnsupportedScheme(_) => Reason::UnsupportedScheme,
            Self::UnsupportedNetwork(_) => Reason::UnsupportedNetwork,
            Self::RequirementsMismatch { .. } => Reason::RequirementsMismatch,
            Self::RecipientMismatch { .. } => Reason::RecipientMismatch,
            Self::AmountMismatch { .. } => Reason::AmountMismatch,
            Self::NotYetValid { .. } => Reason::NotYetValid,
            Self::Expired { .. } => Reason::Expired,
            Self::MalformedSignature(_) | Self::InvalidSignature { .. } => Reason::InvalidSignature,
        }
    }
}

/// The payer's signature, by kind of account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayerSignature {
    /// ECDSA by an EOA, checked locally (`s` normalized).
    Ecdsa(Signature),
    /// Signature of a contract wallet (ERC-1271): opaque bytes, checked on chain by the wallet's
    /// `isValidSignature` (see [`crate::gate::Settler::verify_contract_signature`]).
    Contract(Bytes),
}

/// A payment whose signature and terms were verified against one of the route's offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPayment {
    /// Index of the matched offer in [`PricedRoute::offers`].
    pub offer_index: usize,
    /// EVM chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Payer (recovered from the signature).
    pub payer: Address,
    /// Recipient (= the offer's payTo).
    pub pay_to: Address,
    /// Amount (= the offer's price).
    pub value: U256,
    /// `validAfter`.
    pub valid_after: U256,
    /// `validBefore`.
    pub valid_before: U256,
    /// EIP-3009 nonce.
    pub nonce: B256,
    /// The signature.
    pub signature: PayerSignature,
    /// The EIP-712 digest that was signed: identifies this exact payment (its fingerprint).
    pub digest: B256,
}

impl VerifiedPayment {
    /// `validBefore` as Unix seconds, saturating.
    pub fn valid_before_secs(&self) -> u64 {
        u64::try_from(self.valid_before).unwrap_or(u64::MAX)
    }
}

/// Verifies an `exact` EVM payment against the route's own offers at time `now` (Unix seconds).
///
/// The client's echoed `accepted` only selects an offer; every value that matters (asset, payTo,
/// amount, domain) comes from the server's [`ResolvedOffer`].
pub fn verify_exact(
    route: &PricedRoute,
    payment: &PaymentPayload,
    now: u64,
) -> Result<VerifiedPayment, VerifyError> {
    verify_with(route, payment, now, SignatureCheck::Ecdsa)
}

/// Like [`verify_exact`] but for a payer that is a contract wallet (ERC-1271): every check
/// except the signature, which is returned as [`PayerSignature::Contract`] for an on-chain check.
/// Use only after [`verify_exact`] failed on the signature, and never settle such a payment
/// before the wallet accepted the signature.
pub fn verify_exact_terms_for_contract_wallet(
    route: &PricedRoute,
    payment: &PaymentPayload,
    now: u64,
) -> Result<VerifiedPayment, VerifyError> {
    verify_with(route, payment, now, SignatureCheck::Deferred)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SignatureCheck {
    Ecdsa,
    Deferred,
}

fn verify_with(
    route: &PricedRoute,
    payment: &PaymentPayload,
    now: u64,
    check: SignatureCheck,
) -> Result<VerifiedPayment, VerifyError> {
    if payment.scheme() != SCHEME_EXACT {
        return Err(VerifyError::UnsupportedScheme(
            payment.scheme().chars().take(64).collect(),
        ));
    }
    let offer_index = select_offer(route, payment)?;
    let offer = route
        .offers
        .get(offer_index)
        .ok_or(VerifyError::RequirementsMismatch { field: "network" })?;
    verify_offer(offer, offer_index, payment, now, check)
}

fn select_offer(route: &PricedRoute, payment: &PaymentPayload) -> Result<usize, VerifyError> {
    match payment {
        PaymentPayload::V2(p) => {
            let acc = &p.accepted;
            let mut first_diff = None;
            for (i, o) in route.offers.iter().enumerate() {
                if o.network != acc.network {
                    continue;
                }
                let diff = if !same_address(&acc.asset, o.asset) {
                    Some("asset")
                } else if !same_address(&acc.pay_to, o.pay_to) {
                    Some("payTo")
                } else if acc.amount.0 != o.amount {
                    Some("amount")
                } else {
                    None
                };
                match diff {
                    None => return Ok(i),
                    Some(f) => {
                        first_diff.get_or_insert(f);
                    }
                }
            }
            match first_diff {
                Some(field) => Err(VerifyError::RequirementsMismatch { field }),
                None => Err(VerifyError::UnsupportedNetwork(
                    acc.network.as_str().chars().take(64).collect(),
                )),
            }
        }
        PaymentPayload::V1(p) => {
            let network = Network::from_v1_name(&p.network);
            // v1 names one network only; the asset is implied by our offer on it.
            route
                .offers
                .iter()
                .position(|o| Some(&o.network) == network.as_ref())
                .ok_or_else(|| {
                    VerifyError::UnsupportedNetwork(p.network.chars().take(64).collect())
                })
        }
    }
}

fn same_address(text: &str, addr: Address) -> bool {
    text.parse::<Address>().is_ok_and(|a| a == addr)
}

/// Verifies a payment against one specific offer (the scheme must already be `exact`).
pub fn verify_against_offer(
    offer: &ResolvedOffer,
    offer_index: usize,
    payment: &PaymentPayload,
    now: u64,
) -> Result<VerifiedPayment, VerifyError> {
    verify_offer(offer, offer_index, payment, now, SignatureCheck::Ecdsa)
}

fn verify_offer(
    offer: &ResolvedOffer,
    offer_index: usize,
    payment: &PaymentPayload,
    now: u64,
    check: SignatureCheck,
) -> Result<VerifiedPayment, VerifyError> {
    let exact = payment.exact();
    let auth = &exact.authorization;
    if auth.to != offer.pay_to {
        return Err(VerifyError::RecipientMismatch {
            expected: offer.pay_to,
            got: auth.to,
        });
    }
    if auth.value.0 != offer.amount {
        return Err(VerifyError::AmountMismatch {
            expected: offer.amount,
            got: auth.value.0,
        });
    }
    if auth.valid_after > U256::from(now) {
        return Err(VerifyError::NotYetValid {
            valid_after: auth.valid_after,
            now,
        });
    }
    if auth.valid_before < U256::from(now.saturating_add(MIN_VALIDITY_MARGIN_SECS)) {
        return Err(VerifyError::Expired {
            valid_before: auth.valid_before,
            now,
        });
    }
    let digest = eip3009_digest(
        offer.domain_separator,
        auth.from,
        auth.to,
        auth.value.0,
        auth.valid_after,
        auth.valid_before,
        auth.nonce,
    );
    let signature = match check {
        SignatureCheck::Ecdsa => {
            let sig = parse_signature(&exact.signature)?;
            let recovered = sig.recover_address_from_prehash(&digest).ok();
            if recovered != Some(auth.from) {
                return Err(VerifyError::InvalidSignature {
                    from: auth.from,
                    recovered,
                });
            }
            PayerSignature::Ecdsa(sig)
        }
        SignatureCheck::Deferred => {
            if exact.signature.is_empty() || exact.signature.len() > 8 * 1024 {
                return Err(VerifyError::MalformedSignature(
                    "empty or oversized signature",
                ));
            }
            PayerSignature::Contract(exact.signature.clone())
        }
    };
    Ok(VerifiedPayment {
        offer_index,
        chain_id: offer.chain_id,
        asset: offer.asset,
        payer: auth.from,
        pay_to: auth.to,
        value: auth.value.0,
        valid_after: auth.valid_after,
        valid_before: auth.valid_before,
        nonce: auth.nonce,
        signature,
        digest,
    })
}

/// Parses a 65-byte `r‖s‖v` (v ∈ {0, 1, 27, 28}) or 64-byte EIP-2098 signature, rejecting
/// high-`s` signatures, which USDC's `ECRecover` refuses on chain.
pub fn parse_signature(bytes: &[u8]) -> Result<Signature, VerifyError> {
    let sig = match bytes.len() {
        65 => {
            let v = bytes[64];
            if !matches!(v, 0 | 1 | 27 | 28) {
                return Err(VerifyError::MalformedSignature("v must be 27 or 28"));
            }
            Signature::from_raw(bytes)
                .map_err(|_| VerifyError::MalformedSignature("invalid r, s or v"))?
        }
        64 => Signature::from_erc2098(bytes),
        _ => {
            return Err(VerifyError::MalformedSignature(
                "expected 65 bytes (or 64, EIP-2098)",
            ))
        }
    };
    if sig.normalize_s().is_some() {
        return Err(VerifyError::MalformedSignature(
            "s is in the upper half of the curve order",
        ));
    }
    if sig.r().is_zero() || sig.s().is_zero() {
        return Err(VerifyError::MalformedSignature("r and s must be non-zero"));
    }
    Ok(sig)
}

/// The EIP-712 digest of a `TransferWithAuthorization`, hashed from stack buffers.
pub fn eip3009_digest(
    domain_separator: B256,
    from: Address,
    to: Address,
    value: U256,
    valid_after: U256,
    valid_before: U256,
    nonce: B256,
) -> B256 {
    let mut data = [0u8; 7 * 32];
    data[..32].copy_from_slice(TRANSFER_WITH_AUTHORIZATION_TYPEHASH.as_slice());
    data[44..64].copy_from_slice(from.as_slice());
    data[76..96].copy_from_slice(to.as_slice());
    data[96..128].copy_from_slice(&value.to_be_bytes::<32>());
    data[128..160].copy_from_slice(&valid_after.to_be_bytes::<32>());
    data[160..192].copy_from_slice(&valid_before.to_be_bytes::<32>());
    data[192..224].copy_from_slice(nonce.as_slice());
    let struct_hash = keccak256(data);
    let mut msg = [0u8; 66];
    msg[0] = 0x19;
    msg[1] = 0x01;
    msg[2..34].copy_from_slice(domain_separator.as_slice());
    msg[34..66].copy_from_slice(struct_hash.as_slice());
    keccak256(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{sign_exact_payment, sign_exact_payment_v1, AuthorizationTerms};
    use crate::price::{NetworkOffer, RoutePrice};
    use crate::TokenAmount;
    use alloy::signers::local::PrivateKeySigner;
    use alloy::sol;
    use alloy::sol_types::{eip712_domain, SolStruct};

    const NOW: u64 = 1_750_000_000;
    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    sol! {
        struct TransferWithAuthorization {
            address from;
            address to;
            uint256 value;
            uint256 validAfter;
            uint256 validBefore;
            bytes32 nonce;
        }
    }

    fn route() -> PricedRoute {
        let offer = |n: &str| NetworkOffer {
            network: n.into(),
            asset: None,
            pay_to: PAY_TO.into(),
            eip712_name: None,
            eip712_version: None,
            decimals: None,
            max_timeout_seconds: 60,
        };
        RoutePrice {
            amount: Some(TokenAmount::from_u128(10_000)),
            usd: None,
            offers: vec![offer("eip155:8453"), offer("eip155:84532")],
            description: None,
            mime_type: None,
        }
        .compile()
        .unwrap()
    }

    fn signed(f: impl FnOnce(&mut AuthorizationTerms)) -> (PrivateKeySigner, PaymentPayload) {
        let r = route();
        let signer = PrivateKeySigner::random();
        let mut terms = AuthorizationTerms::for_offer(&r.offers[1], NOW, B256::repeat_byte(7));
        f(&mut terms);
        let p = sign_exact_payment(&signer, &r.offers[1], &terms).unwrap();
        (signer, p)
    }

    #[test]
    fn typehash_and_digest_match_alloy_eip712() {
        assert_eq!(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH,
            keccak256(
                "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
            )
        );
        let r = route();
        let o = &r.offers[1];
        let domain = eip712_domain! {
            name: "USDC", version: "2", chain_id: 84532, verifying_contract: o.asset,
        };
        assert_eq!(domain.separator(), o.domain_separator);
        let msg = TransferWithAuthorization {
            from: Address::repeat_byte(1),
            to: o.pay_to,
            value: U256::from(10_000u64),
            validAfter: U256::from(1u64),
            validBefore: U256::from(2u64),
            nonce: B256::repeat_byte(9),
        };
        let ours = eip3009_digest(
            o.domain_separator,
            msg.from,
            msg.to,
            msg.value,
            msg.validAfter,
            msg.validBefore,
            msg.nonce,
        );
        assert_eq!(ours, msg.eip712_signing_hash(&domain));
    }

    #[test]
    fn accepts_an_honest_payment_v2_and_v1() {
        let (signer, p) = signed(|_| {});
        let v = verify_exact(&route(), &p, NOW).unwrap();
        assert_eq!(v.payer, signer.address());
        assert_eq!(v.offer_index, 1);
        assert_eq!(v.chain_id, 84532);
        assert_eq!(v.value, U256::from(10_000u64));

        let r = route();
        let terms = AuthorizationTerms::for_offer(&r.offers[0], NOW, B256::repeat_byte(1));
        let p1 = sign_exact_payment_v1(&signer, &r.offers[0], &terms).unwrap();
        assert_eq!(p1.network_str(), "base");
        let v = verify_exact(&r, &p1, NOW).unwrap();
        assert_eq!(v.offer_index, 0);
    }

    #[test]
    fn survives_header_round_trip() {
        let (_, p) = signed(|_| {});
        let h = crate::codec::encode_payment_header(&p).unwrap();
        let decoded = crate::codec::decode_payment_header(h.as_bytes()).unwrap();
        verify_exact(&route(), &decoded, NOW).unwrap();
    }

    #[test]
    fn rejects_client_echoed_requirements_we_do_not_offer() {
        for (field, mutate) in [
            (
                "amount",
                (|p: &mut PaymentPayload| {
                    if let PaymentPayload::V2(v) = p {
                        v.accepted.amount = TokenAmount::from_u128(1)
                    }
                }) as fn(&mut PaymentPayload),
            ),
            ("payTo", |p| {
                if let PaymentPayload::V2(v) = p {
                    v.accepted.pay_to = format!("{}", Address::repeat_byte(3))
                }
            }),
            ("asset", |p| {
                if let PaymentPayload::V2(v) = p {
                    v.accepted.asset = "not-an-address".into()
                }
            }),
        ] {
            let (_, mut p) = signed(|_| {});
            mutate(&mut p);
            let e = verify_exact(&route(), &p, NOW).unwrap_err();
            assert_eq!(e, VerifyError::RequirementsMismatch { field });
            assert_eq!(e.reason(), Reason::RequirementsMismatch);
        }
        let (_, mut p) = signed(|_| {});
        if let PaymentPayload::V2(v) = &mut p {
            v.accepted.network = Network::eip155(1);
        }
        let e = verify_exact(&route(), &p, NOW).unwrap_err();
        assert_eq!(e.reason(), Reason::UnsupportedNetwork);
        let (_, mut p) = signed(|_| {});
        if let PaymentPayload::V2(v) = &mut p {
            v.accepted.scheme = "upto".into();
        }
        assert_eq!(
            verify_exact(&route(), &p, NOW).unwrap_err().reason(),
            Reason::UnsupportedScheme
        );
    }

    #[test]
    fn rejects_each_bad_term() {
        let (_, p) = signed(|t| t.to = Address::repeat_byte(5));
        assert!(matches!(
            verify_exact(&route(), &p, NOW),
            Err(VerifyError::RecipientMismatch { .. })
        ));
        let (_, p) = signed(|t| t.value = U256::from(10_001u64));
        let e = verify_exact(&route(), &p, NOW).unwrap_err();
        assert!(matches!(e, VerifyError::AmountMismatch { .. }));
        assert_eq!(e.reason().as_str(), "amount_mismatch");
        let (_, p) = signed(|t| t.value = U256::from(9_999u64));
        assert!(matches!(
            verify_exact(&route(), &p, NOW),
            Err(VerifyError::AmountMismatch { .. })
        ));
        let (_, p) = signed(|t| t.valid_after = NOW + 1);
        assert!(matches!(
            verify_exact(&route(), &p, NOW),
            Err(VerifyError::NotYetValid { .. })
        ));
        let (_, p) = signed(|t| t.valid_after = NOW);
        assert!(
            verify_exact(&route(), &p, NOW).is_ok(),
            "validAfter == now is accepted"
        );
        let (_, p) = signed(|t| t.valid_before = NOW + MIN_VALIDITY_MARGIN_SECS - 1);
        assert!(matches!(
            verify_exact(&route(), &p, NOW),
            Err(VerifyError::Expired { .. })
        ));
        let (_, p) = signed(|t| t.valid_before = NOW + MIN_VALIDITY_MARGIN_SECS);
        assert!(verify_exact(&route(), &p, NOW).is_ok());
        let (_, p) = signed(|_| {});
        assert_eq!(
            verify_exact(&route(), &p, NOW + 1_000)
                .unwrap_err()
                .reason(),
            Reason::Expired
        );
    }

    #[test]
    fn rejects_bad_signatures() {
        // Signed by someone else than `from`.
        let (_, mut p) = signed(|_| {});
        if let PaymentPayload::V2(v) = &mut p {
            v.payload.authorization.from = Address::repeat_byte(0x11);
        }
        let e = verify_exact(&route(), &p, NOW).unwrap_err();
        assert!(matches!(e, VerifyError::InvalidSignature { .. }));
        assert_eq!(e.reason().as_str(), "invalid_signature");
        // Any signed field tampered with after signing.
        let (_, mut p) = signed(|_| {});
        if let PaymentPayload::V2(v) = &mut p {
            v.payload.authorization.nonce = B256::repeat_byte(8);
        }
        assert!(matches!(
            verify_exact(&route(), &p, NOW),
            Err(VerifyError::InvalidSignature { .. })
        ));
        // Signed for another chain's domain (offer 0 = Base) but presented for Base Sepolia.
        let r = route();
        let signer = PrivateKeySigner::random();
        let terms = AuthorizationTerms::for_offer(&r.offers[1], NOW, B256::ZERO);
        let other = sign_exact_payment(&signer, &r.offers[0], &terms).unwrap();
        let mut p = sign_exact_payment(&signer, &r.offers[1], &terms).unwrap();
        if let (PaymentPayload::V2(v), PaymentPayload::V2(o)) = (&mut p, &other) {
            v.payload.signature = o.payload.signature.clone();
        }
        assert!(matches!(
            verify_exact(&r, &p, NOW),
            Err(VerifyError::InvalidSignature { .. })
        ));
        // Malformed: wrong length, bad v, high s, zero r.
        let (_, p) = signed(|_| {});
        let good = p.exact().signature.to_vec();
        let set_sig = |bytes: Vec<u8>| {
            let mut q = p.clone();
            if let PaymentPayload::V2(v) = &mut q {
                v.payload.signature = bytes.into();
            }
            verify_exact(&route(), &q, NOW)
        };
        assert!(matches!(
            set_sig(good[..60].to_vec()),
            Err(VerifyError::MalformedSignature(_))
        ));
        let mut bad_v = good.clone();
        bad_v[64] = 29;
        assert!(matches!(
            set_sig(bad_v),
            Err(VerifyError::MalformedSignature(_))
        ));
        let sig = Signature::from_raw(&good).unwrap();
        let n = alloy::primitives::uint!(
            0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256
        );
        let high = Signature::new(sig.r(), n - sig.s(), !sig.v());
        assert!(matches!(
            set_sig(high.as_bytes().to_vec()),
            Err(VerifyError::MalformedSignature(_))
        ));
        let mut zero_r = good.clone();
        zero_r[..32].fill(0);
        assert!(set_sig(zero_r).is_err());
        // v = 0/1 and EIP-2098 compact forms of the good signature are accepted.
        let mut v01 = good.clone();
        v01[64] -= 27;
        assert!(set_sig(v01).is_ok());
        assert!(set_sig(sig.as_erc2098().to_vec()).is_ok());
    }

    /// Recovery runs on libsecp256k1 (alloy-primitives' `secp256k1` feature); the pure-Rust
    /// k256 recovery that alloy also carries must agree with it, key by key.
    #[test]
    fn libsecp256k1_recovery_agrees_with_k256_on_random_keys() {
        use alloy::signers::SignerSync;
        let k256_address = |sig: &Signature, digest: &B256| {
            sig.recover_from_prehash(digest)
                .ok()
                .map(|vk| Address::from_public_key(&vk))
        };
        let r = route();
        for i in 0..200u8 {
            let signer = PrivateKeySigner::random();
            let digest = keccak256([i; 32]);
            let sig = signer.sign_hash_sync(&digest).unwrap();
            let parsed = parse_signature(&sig.as_bytes()).unwrap();
            let ours = parsed.recover_address_from_prehash(&digest).ok();
            assert_eq!(ours, Some(signer.address()));
            assert_eq!(k256_address(&parsed, &digest), ours);
            // The other parity recovers someone else, on both backends alike.
            let flipped = Signature::new(parsed.r(), parsed.s(), !parsed.v());
            let other = flipped.recover_address_from_prehash(&digest).ok();
            assert_ne!(other, Some(signer.address()));
            assert_eq!(k256_address(&flipped, &digest), other);
            // A whole payment by this key verifies and names it.
            let terms = AuthorizationTerms::for_offer(&r.offers[1], NOW, B256::repeat_byte(i));
            let p = sign_exact_payment(&signer, &r.offers[1], &terms).unwrap();
            assert_eq!(verify_exact(&r, &p, NOW).unwrap().payer, signer.address());
        }
        // Arbitrary (r, s, parity): both backends recover the same address, or both fail
        // (r not the x of a curve point, or out of range).
        let mut seed = keccak256(b"tollgate recovery cross-check");
        let mut agreed_on_some = 0;
        for _ in 0..300 {
            let r_bytes = keccak256(seed);
            let s_bytes = keccak256(r_bytes);
            seed = s_bytes;
            let sig = Signature::new(
                U256::from_be_bytes(r_bytes.0),
                U256::from_be_bytes(s_bytes.0),
                seed.0[0] & 1 == 1,
            );
            let digest = keccak256(seed);
            let ours = sig.recover_address_from_prehash(&digest).ok();
            assert_eq!(ours, k256_address(&sig, &digest), "{sig:?}");
            agreed_on_some += usize::from(ours.is_some());
        }
        assert!(agreed_on_some > 100, "{agreed_on_some}");
    }

    #[test]
    fn rejects_high_s_and_bad_v_for_any_key() {
        let n = alloy::primitives::uint!(
            0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141_U256
        );
        for i in 0..50u8 {
            let (signer, p) = signed(|t| t.nonce = B256::repeat_byte(i));
            let good = p.exact().signature.to_vec();
            let sig = Signature::from_raw(&good).unwrap();
            // The malleable twin (n - s, other parity) recovers the same key, but is refused.
            let twin = Signature::new(sig.r(), n - sig.s(), !sig.v());
            assert_eq!(
                twin.recover_address_from_prehash(&verify_exact(&route(), &p, NOW).unwrap().digest)
                    .ok(),
                Some(signer.address())
            );
            assert!(matches!(
                parse_signature(&twin.as_bytes()),
                Err(VerifyError::MalformedSignature(_))
            ));
            for v in [2u8, 3, 26, 29, 30, 255] {
                let mut bad = good.clone();
                bad[64] = v;
                assert!(matches!(
                    parse_signature(&bad),
                    Err(VerifyError::MalformedSignature(_))
                ));
            }
        }
    }

    #[test]
    fn contract_wallet_path_checks_terms_but_defers_the_signature() {
        let (_, mut p) = signed(|_| {});
        if let PaymentPayload::V2(v) = &mut p {
            v.payload.authorization.from = Address::repeat_byte(0x42);
            v.payload.signature = vec![1u8; 300].into();
        }
        assert!(verify_exact(&route(), &p, NOW).is_err());
        let v = verify_exact_terms_for_contract_wallet(&route(), &p, NOW).unwrap();
        assert!(matches!(v.signature, PayerSignature::Contract(ref b) if b.len() == 300));
        assert_eq!(v.payer, Address::repeat_byte(0x42));
        let (_, p) = signed(|t| t.value = U256::from(1u8));
        assert!(matches!(
            verify_exact_terms_for_contract_wallet(&route(), &p, NOW),
            Err(VerifyError::AmountMismatch { .. })
        ));
    }

    #[test]
    fn system_clock_is_sane() {
        assert!(SystemClock.now_unix() > 1_700_000_000);
        assert_eq!(FixedClock(5).now_unix(), 5);
    }
}
