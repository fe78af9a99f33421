//! Token amounts: decimal strings on the wire, [`U256`] inside.

use std::fmt;
use std::str::FromStr;

use alloy::primitives::U256;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest decimal representation of a `U256` (2^256 − 1 has 78 digits).
const MAX_DIGITS: usize = 78;

/// An amount in the token's atomic units (e.g. micro-USDC for a 6-decimal token).
///
/// Serialized as a decimal string (`"10000"`), as x402 requires. Parsing is strict:
/// ASCII digits only, no sign, no hex, no exponent, no whitespace — a client must not be able to
/// smuggle `"0x10"` or `"1e4"` past an equality check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenAmount(pub U256);

/// Why a string is not a [`TokenAmount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The string is empty.
    #[error("amount is empty")]
    Empty,
    /// The string holds something other than ASCII digits.
    #[error("amount must be a decimal integer string")]
    NotDecimal,
    /// The value does not fit in 256 bits.
    #[error("amount does not fit in 256 bits")]
    Overflow,
}

impl TokenAmount {
    /// Zero.
    pub const ZERO: Self = Self(U256::ZERO);

    /// From a `u128`.
    pub fn from_u128(v: u128) -> Self {
        Self(U256::from(v))
    }

    /// The value as a `u128` if it fits.
    pub fn to_u128(self) -> Option<u128> {
        u128::try_from(self.0).ok()
    }

    /// Strict decimal parse (see the type docs).
    pub fn parse(s: &str) -> Result<Self, AmountError> {
        parse_decimal_u256(s).map(Self)
    }
}

/// Parses a strict decimal `U256` (digits only).
pub(crate) fn parse_decimal_u256(s: &str) -> Result<U256, AmountError> {
    if s.is_empty() {
        return Err(AmountError::Empty);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AmountError::NotDecimal);
    }
    let trimmed = s.trim_start_matches('0');
    if trimmed.len() > MAX_DIGITS {
        return Err(AmountError::Overflow);
    }
    U256::from_str_radix(s, 10).map_err(|_| AmountError::Overflow)
}

impl FromStr for TokenAmount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for TokenAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u128> for TokenAmount {
    fn from(v: u128) -> Self {
        Self::from_u128(v)
    }
}

impl From<U256> for TokenAmount {
    fn from(v: U256) -> Self {
        Self(v)
    }
}

impl Serialize for TokenAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TokenAmount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal integer string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TokenAmount, E> {
                TokenAmount::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// Serde helper for `U256` fields carried as decimal strings (EIP-3009 `validAfter`, ...).
pub(crate) mod decimal_u256 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        TokenAmount::deserialize(d).map(|a| a.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strict_decimals() {
        assert_eq!(
            TokenAmount::parse("10000").unwrap(),
            TokenAmount::from_u128(10_000)
        );
        assert_eq!(TokenAmount::parse("0").unwrap(), TokenAmount::ZERO);
        assert_eq!(
            TokenAmount::parse("007").unwrap(),
            TokenAmount::from_u128(7)
        );
        for bad in ["", "0x10", "1e4", "-1", " 1", "1 ", "1.0", "+1", "１"] {
            assert!(TokenAmount::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        let max = U256::MAX.to_string();
        assert_eq!(TokenAmount::parse(&max).unwrap().0, U256::MAX);
        assert_eq!(
            TokenAmount::parse(&format!("{max}0")),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn serde_round_trip_as_string() {
        let a = TokenAmount::from_u128(123);
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"123\"");
        let back: TokenAmount = serde_json::from_str("\"123\"").unwrap();
        assert_eq!(back, a);
        assert!(serde_json::from_str::<TokenAmount>("123").is_err());
    }
}
