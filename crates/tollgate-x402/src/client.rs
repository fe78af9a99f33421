//! The paying side of `exact` on EVM: builds and signs a payment for an offer.
//!
//! Used by tests, test wallets and tools; the gateway itself never signs payments.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;

use crate::amount::TokenAmount;
use crate::price::ResolvedOffer;
use crate::verify::eip3009_digest;
use crate::wire::{
    Eip3009Authorization, ExactEvmPayload, PaymentPayload, PaymentPayloadV1, PaymentPayloadV2,
};

/// What to sign, beyond what the offer fixes.
#[derive(Clone, Copy, Debug)]
pub struct AuthorizationTerms {
    /// Recipient (normally the offer's payTo).
    pub to: Address,
    /// Amount (normally the offer's price).
    pub value: U256,
    /// `validAfter`, Unix seconds.
    pub valid_after: u64,
    /// `validBefore`, Unix seconds.
    pub valid_before: u64,
    /// Unique nonce.
    pub nonce: B256,
}

impl AuthorizationTerms {
    /// The honest terms for `offer`: its payTo and price, valid from `now - 60` for the offer's
    /// `maxTimeoutSeconds`.
    pub fn for_offer(offer: &ResolvedOffer, now: u64, nonce: B256) -> Self {
        Self {
            to: offer.pay_to,
            value: offer.amount,
            valid_after: now.saturating_sub(60),
            valid_before: now.saturating_add(offer.max_timeout_seconds),
            nonce,
        }
    }
}

/// Signs `terms` for `offer`'s token domain and returns the v2 payment (with `accepted` = the
/// offer's advertised requirement).
pub fn sign_exact_payment(
    signer: &PrivateKeySigner,
    offer: &ResolvedOffer,
    terms: &AuthorizationTerms,
) -> Result<PaymentPayload, alloy::signers::Error> {
    let payload = sign_exact_evm_payload(signer, offer, terms)?;
    Ok(PaymentPayload::V2(PaymentPayloadV2 {
        x402_version: 2,
        resource: None,
        accepted: offer.requirements.clone(),
        payload,
        extensions: None,
    }))
}

/// Like [`sign_exact_payment`] but in v1 form (the offer's network must have a v1 name).
pub fn sign_exact_payment_v1(
    signer: &PrivateKeySigner,
    offer: &ResolvedOffer,
    terms: &AuthorizationTerms,
) -> Result<PaymentPayload, alloy::signers::Error> {
    let payload = sign_exact_evm_payload(signer, offer, terms)?;
    Ok(PaymentPayload::V1(PaymentPayloadV1 {
        x402_version: 1,
        scheme: crate::wire::SCHEME_EXACT.to_owned(),
        network: offer.network.v1_name().unwrap_or_default().to_owned(),
        payload,
    }))
}

/// Signs the EIP-3009 authorization and returns the scheme payload.
pub fn sign_exact_evm_payload(
    signer: &PrivateKeySigner,
    offer: &ResolvedOffer,
    terms: &AuthorizationTerms,
) -> Result<ExactEvmPayload, alloy::signers::Error> {
    sign_exact_evm_payload_from(signer, signer.address(), offer, terms)
}

/// Signs an authorization whose `from` is `from` — a contract wallet (ERC-1271) for which
/// `signer` is the owner key.
pub fn sign_exact_payment_as_wallet(
    signer: &PrivateKeySigner,
    from: Address,
    offer: &ResolvedOffer,
    terms: &AuthorizationTerms,
) -> Result<PaymentPayload, alloy::signers::Error> {
    let payload = sign_exact_evm_payload_from(signer, from, offer, terms)?;
    Ok(PaymentPayload::V2(PaymentPayloadV2 {
        x402_version: 2,
        resource: None,
        accepted: offer.requirements.clone(),
        payload,
        extensions: None,
    }))
}

fn sign_exact_evm_payload_from(
    signer: &PrivateKeySigner,
    from: Address,
    offer: &ResolvedOffer,
    terms: &AuthorizationTerms,
) -> Result<ExactEvmPayload, alloy::signers::Error> {
    let digest = eip3009_digest(
        offer.domain_separator,
        from,
        terms.to,
        terms.value,
        U256::from(terms.valid_after),
        U256::from(terms.valid_before),
        terms.nonce,
    );
    let sig = signer.sign_hash_sync(&digest)?;
    Ok(ExactEvmPayload {
        signature: sig.as_bytes().to_vec().into(),
        authorization: Eip3009Authorization {
            from,
            to: terms.to,
            value: TokenAmount(terms.value),
            valid_after: U256::from(terms.valid_after),
            valid_before: U256::from(terms.valid_before),
            nonce: terms.nonce,
        },
    })
}
