//! CAIP-2 network identifiers and the v1 network names that map onto them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A CAIP-2 network id such as `eip155:8453` (kept as sent; see [`Network::eip155_chain_id`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Network(String);

/// EVM networks that have a v1 name, as (v1 name, chain id).
///
/// v1 only knows names; a chain missing here (e.g. a local anvil) cannot be offered over v1.
const V1_NAMES: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("iotex", 4689),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("peaq", 3338),
];

impl Network {
    /// Wraps a CAIP-2 string without checking it (see [`Network::parse`]).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Parses and checks the CAIP-2 shape `namespace:reference`
    /// (namespace `[-a-z0-9]{3,8}`, reference `[-_a-zA-Z0-9]{1,32}`).
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, reference) = s.split_once(':')?;
        let ns_ok = (3..=8).contains(&ns.len())
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let ref_ok = (1..=32).contains(&reference.len())
            && reference
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (ns_ok && ref_ok).then(|| Self(s.to_owned()))
    }

    /// An `eip155:<chain id>` network.
    pub fn eip155(chain_id: u64) -> Self {
        Self(format!("eip155:{chain_id}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Some(N)` for `eip155:N` with a canonical decimal `N` (no sign, no leading zeros).
    pub fn eip155_chain_id(&self) -> Option<u64> {
        let n = self.0.strip_prefix("eip155:")?;
        if n.is_empty()
            || (n.len() > 1 && n.starts_with('0'))
            || !n.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        n.parse().ok()
    }

    /// The v1 name of this network, if it has one.
    pub fn v1_name(&self) -> Option<&'static str> {
        let id = self.eip155_chain_id()?;
        V1_NAMES.iter().find(|(_, c)| *c == id).map(|(n, _)| *n)
    }

    /// The CAIP-2 network of a v1 name.
    pub fn from_v1_name(name: &str) -> Option<Self> {
        V1_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| Self::eip155(*c))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caip2_parsing() {
        assert_eq!(
            Network::parse("eip155:8453").unwrap().eip155_chain_id(),
            Some(8453)
        );
        assert_eq!(
            Network::parse("eip155:31337").unwrap().eip155_chain_id(),
            Some(31337)
        );
        let sol = Network::parse("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp").unwrap();
        assert_eq!(sol.eip155_chain_id(), None);
        for bad in ["eip155", ":1", "EIP155:1", "eip155:", "e:1", "eip155:1:2"] {
            assert!(Network::parse(bad).is_none(), "{bad}");
        }
        for bad in [
            "eip155:01",
            "eip155:-1",
            "eip155:x",
            "eip155:99999999999999999999",
        ] {
            assert_eq!(Network::new(bad).eip155_chain_id(), None, "{bad}");
        }
    }

    #[test]
    fn v1_names() {
        assert_eq!(Network::eip155(8453).v1_name(), Some("base"));
        assert_eq!(Network::eip155(84532).v1_name(), Some("base-sepolia"));
        assert_eq!(Network::eip155(31337).v1_name(), None);
        assert_eq!(Network::from_v1_name("base"), Some(Network::eip155(8453)));
        assert_eq!(Network::from_v1_name("nope"), None);
    }
}
