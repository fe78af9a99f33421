//! Exact money: integer micro-units (10⁻⁶ of the currency unit). Never `f64`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Micro-units per currency unit.
pub const MICROS: i64 = 1_000_000;

/// An amount of money in micro-units of the configured currency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub i64);

/// Why a decimal amount could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a plain decimal number such as `12`, `0.50` or `-3.000001`.
    #[error("`{0}` is not a decimal amount (expected e.g. \"2.50\")")]
    Syntax(String),
    /// More than six decimal places.
    #[error("`{0}` has more than 6 decimal places")]
    TooPrecise(String),
    /// Outside the representable range.
    #[error("`{0}` is out of range")]
    Overflow(String),
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// From micro-units.
    pub const fn from_micros(m: i64) -> Self {
        Money(m)
    }

    /// The raw micro-units.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// Checked addition.
    pub fn checked_add(self, o: Money) -> Option<Money> {
        self.0.checked_add(o.0).map(Money)
    }

    /// Checked subtraction.
    pub fn checked_sub(self, o: Money) -> Option<Money> {
        self.0.checked_sub(o.0).map(Money)
    }

    /// Saturating subtraction, used only for display-side values.
    pub fn saturating_sub(self, o: Money) -> Money {
        Money(self.0.saturating_sub(o.0))
    }

    /// Multiply by a unit count (e.g. price per request × requests).
    pub fn checked_mul(self, n: i64) -> Option<Money> {
        self.0.checked_mul(n).map(Money)
    }

    /// Parse a decimal string such as `"2.50"`.
    pub fn parse(s: &str) -> Result<Money, MoneyError> {
        let t = s.trim();
        let (neg, body) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let digits_ok = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !digits_ok(int)
            || !digits_ok(frac)
            || (body.contains('.') && frac.is_empty())
        {
            return Err(MoneyError::Syntax(s.to_string()));
        }
        if frac.len() > 6 {
            return Err(MoneyError::TooPrecise(s.to_string()));
        }
        let overflow = || MoneyError::Overflow(s.to_string());
        let int_v: i64 = int.parse().map_err(|_| overflow())?;
        let mut frac_v: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_v += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
        }
        let v = int_v
            .checked_mul(MICROS)
            .and_then(|x| x.checked_add(frac_v))
            .ok_or_else(overflow)?;
        Ok(Money(if neg { -v } else { v }))
    }
}

/// A [`Money`] amount as decimal text, formatted on the stack (see [`Money::decimal`]).
#[derive(Clone, Copy)]
pub struct MoneyText {
    // Sign, 20 digits of `u64`, the point and six decimals fit.
    buf: [u8; 28],
    len: u8,
}

impl MoneyText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, '-' and '.' are ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("0.00")
    }
}

impl Money {
    /// The amount as decimal text: at least two decimals, at most six, trailing zeros beyond
    /// the second trimmed (`2500000` → `2.50`, `100` → `0.0001`). No allocation: it goes on
    /// every governed response (twice).
    pub fn decimal(self) -> MoneyText {
        let a = self.0.unsigned_abs();
        let mut frac = a % MICROS as u64;
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        let mut nfrac = digits.len();
        while nfrac > 2 && digits[nfrac - 1] == b'0' {
            nfrac -= 1;
        }
        let mut out = MoneyText {
            buf: [0; 28],
            len: 0,
        };
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out.buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        if self.0 < 0 {
            put(b"-");
        }
        put(itoa::Buffer::new().format(a / MICROS as u64).as_bytes());
        put(b".");
        put(&digits[..nfrac]);
        out.len = at as u8;
        out
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.decimal().as_str())
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => Money::parse(&s).map_err(serde::de::Error::custom),
            Raw::I(i) => i
                .checked_mul(MICROS)
                .map(Money)
                .ok_or_else(|| serde::de::Error::custom("amount out of range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats() {
        assert_eq!(Money::parse("2.50").unwrap(), Money(2_500_000));
        assert_eq!(Money::parse("0.0001").unwrap(), Money(100));
        assert_eq!(Money::parse("-3.000001").unwrap(), Money(-3_000_001));
        assert_eq!(Money::parse("12").unwrap(), Money(12_000_000));
        assert_eq!(Money(2_500_000).to_string(), "2.50");
        assert_eq!(Money(100).to_string(), "0.0001");
        assert_eq!(Money(-2_250_000).to_string(), "-2.25");
        assert_eq!(Money(0).to_string(), "0.00");
        assert_eq!(Money(-1).to_string(), "-0.000001");
        assert_eq!(Money(10).to_string(), "0.00001");
        assert_eq!(Money(i64::MAX).to_string(), "9223372036854.775807");
        assert_eq!(Money(i64::MIN).to_string(), "-9223372036854.775808");
    }

    #[test]
    fn rejects_bad_input() {
        for s in ["", "1.", ".5", "1e3", "abc", "1.2.3", "--1", "1,5"] {
            assert!(matches!(Money::parse(s), Err(MoneyError::Syntax(_))), "{s}");
        }
        assert!(matches!(
            Money::parse("0.0000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("99999999999999999999"),
            Err(MoneyError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn display_roundtrips(v in -1_000_000_000_000_000i64..1_000_000_000_000_000i64) {
            let m = Money(v);
            prop_assert_eq!(Money::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn decimal_text_matches_a_plain_formatting(v in any::<i64>()) {
            let a = v.unsigned_abs();
            let mut want = format!("{}{}.{:06}", if v < 0 { "-" } else { "" }, a / 1_000_000, a % 1_000_000);
            while want.ends_with('0') && want.len() - want.find('.').unwrap() > 3 {
                want.pop();
            }
            let got = Money(v).decimal();
            prop_assert_eq!(got.as_str(), want.as_str());
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = Money::parse(&s);
        }
    }
}
