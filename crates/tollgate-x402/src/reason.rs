//! Stable rejection reasons: the codes tollgate reports, whatever produced the rejection
//! (header decoding, local verification, chain checks, or a remote facilitator).

use std::fmt;

use serde::{Serialize, Serializer};

/// A stable, machine-readable reason why a payment was not accepted.
///
/// The string forms ([`Reason::as_str`]) are part of tollgate's public contract: they appear in
/// 402 bodies and metrics labels, so they never change once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The payment header is not valid base64/JSON or does not have the expected shape.
    MalformedPayment,
    /// `x402Version` is not 1 or 2.
    UnsupportedVersion,
    /// The scheme is not one we accept.
    UnsupportedScheme,
    /// The network is not one we accept.
    UnsupportedNetwork,
    /// The requirement the client chose is not one this route offers.
    RequirementsMismatch,
    /// `authorization.to` is not our `payTo`.
    RecipientMismatch,
    /// `authorization.value` is not exactly the price.
    AmountMismatch,
    /// `validAfter` is in the future.
    NotYetValid,
    /// `validBefore` is past (or too close to now).
    Expired,
    /// The signature is malformed or not from `authorization.from`.
    InvalidSignature,
    /// The payer's token balance is below the price.
    InsufficientFunds,
    /// The authorization nonce was already used (on chain or in our store).
    NonceAlreadyUsed,
    /// The same payer+nonce arrived with a different payment.
    PaymentConflict,
    /// The settlement transaction failed.
    SettlementFailed,
    /// The settlement was sent but its outcome is not known yet.
    SettlementPending,
    /// Settlement is impossible for a server-side reason (settler account, node rejecting
    /// our transaction, configuration): fail closed with 503, not a new 402.
    SettlementUnavailable,
    /// The chain RPC endpoint cannot be reached.
    ProviderUnavailable,
    /// The remote facilitator cannot be reached or answered garbage.
    FacilitatorUnavailable,
    /// The remote facilitator rejected with a reason we do not know.
    FacilitatorRejected,
}

impl Reason {
    /// Every reason, for tables and round-trips.
    pub const ALL: &'static [Reason] = &[
        Self::MalformedPayment,
        Self::UnsupportedVersion,
        Self::UnsupportedScheme,
        Self::UnsupportedNetwork,
        Self::RequirementsMismatch,
        Self::RecipientMismatch,
        Self::AmountMismatch,
        Self::NotYetValid,
        Self::Expired,
        Self::InvalidSignature,
        Self::InsufficientFunds,
        Self::NonceAlreadyUsed,
        Self::PaymentConflict,
        Self::SettlementFailed,
        Self::SettlementPending,
        Self::SettlementUnavailable,
        Self::ProviderUnavailable,
        Self::FacilitatorUnavailable,
        Self::FacilitatorRejected,
    ];

    /// Parses a code produced by [`Reason::as_str`] (for stores that persist it as text).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == code)
    }

    /// The stable code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MalformedPayment => "malformed_payment",
            Self::UnsupportedVersion => "unsupported_x402_version",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::UnsupportedNetwork => "unsupported_network",
            Self::RequirementsMismatch => "requirements_mismatch",
            Self::RecipientMismatch => "recipient_mismatch",
            Self::AmountMismatch => "amount_mismatch",
            Self::NotYetValid => "authorization_not_yet_valid",
            Self::Expired => "authorization_expired",
            Self::InvalidSignature => "invalid_signature",
            Self::InsufficientFunds => "insufficient_funds",
            Self::NonceAlreadyUsed => "nonce_already_used",
            Self::PaymentConflict => "payment_conflict",
            Self::SettlementFailed => "settlement_failed",
            Self::SettlementPending => "settlement_pending",
            Self::SettlementUnavailable => "settlement_unavailable",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::FacilitatorUnavailable => "facilitator_unavailable",
            Self::FacilitatorRejected => "facilitator_rejected",
        }
    }

    /// Whether the client can fix this by signing a new payment (as opposed to a server-side
    /// problem or an outcome that is still unknown).
    pub const fn is_client_error(self) -> bool {
        !matches!(
            self,
            Self::SettlementPending
                | Self::SettlementUnavailable
                | Self::ProviderUnavailable
                | Self::FacilitatorUnavailable
        )
    }

    /// Maps a reason string from a facilitator (spec, TypeScript, Go, Python or x402-rs spelling)
    /// to our code. Unknown strings map to [`Reason::FacilitatorRejected`]; keep the original
    /// string alongside for diagnostics.
    pub fn from_facilitator(s: &str) -> Self {
        match s {
            "insufficient_funds" | "invalid_exact_evm_insufficient_balance" => {
                Self::InsufficientFunds
            }
            "invalid_exact_evm_payload_authorization_valid_after"
            | "invalid_exact_evm_authorization_valid_after" => Self::NotYetValid,
            "invalid_exact_evm_payload_authorization_valid_before"
            | "invalid_exact_evm_authorization_valid_before"
            | "authorization_expired"
            | "payment_expired" => Self::Expired,
            "invalid_exact_evm_payload_authorization_value_mismatch"
            | "invalid_exact_evm_payload_authorization_value"
            | "invalid_exact_evm_authorization_value" => Self::AmountMismatch,
            "invalid_exact_evm_payload_signature"
            | "invalid_exact_evm_signature"
            | "invalid_signature" => Self::InvalidSignature,
            "invalid_exact_evm_payload_recipient_mismatch"
            | "invalid_exact_evm_recipient_mismatch"
            | "recipient_mismatch" => Self::RecipientMismatch,
            "invalid_network"
            | "unsupported_network"
            | "network_mismatch"
            | "invalid_exact_evm_network_mismatch" => Self::UnsupportedNetwork,
            "invalid_scheme"
            | "unsupported_scheme"
            | "unsupported_payload_type"
            | "invalid_exact_evm_eip3009_not_supported" => Self::UnsupportedScheme,
            "invalid_exact_evm_token_name_mismatch"
            | "invalid_exact_evm_token_version_mismatch"
            | "invalid_exact_evm_missing_eip712_domain" => Self::RequirementsMismatch,
            "invalid_x402_version" => Self::UnsupportedVersion,
            "invalid_payload" => Self::MalformedPayment,
            "invalid_payment_requirements" => Self::RequirementsMismatch,
            "invalid_transaction_state"
            | "transaction_failed"
            | "invalid_exact_evm_transaction_failed"
            | "invalid_exact_evm_transaction_simulation_failed"
            | "invalid_exact_evm_transfer_event_mismatch"
            | "unexpected_settle_error" => Self::SettlementFailed,
            "settlement_pending" => Self::SettlementPending,
            s if s.contains("nonce") => Self::NonceAlreadyUsed,
            _ => Self::FacilitatorRejected,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facilitator_spellings_map_to_one_code() {
        assert_eq!(
            Reason::from_facilitator("invalid_exact_evm_signature"),
            Reason::InvalidSignature
        );
        assert_eq!(
            Reason::from_facilitator("invalid_exact_evm_payload_signature"),
            Reason::InvalidSignature
        );
        assert_eq!(
            Reason::from_facilitator("insufficient_funds"),
            Reason::InsufficientFunds
        );
        assert_eq!(
            Reason::from_facilitator("invalid_exact_evm_payload_authorization_valid_before"),
            Reason::Expired
        );
        assert_eq!(
            Reason::from_facilitator("what_is_this"),
            Reason::FacilitatorRejected
        );
        assert_eq!(
            Reason::from_facilitator("settlement_pending"),
            Reason::SettlementPending
        );
        assert!(!Reason::SettlementPending.is_client_error());
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.as_str()), Some(*r));
        }
    }
}
