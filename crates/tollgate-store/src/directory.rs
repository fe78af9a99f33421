//! Who is calling: tenants → consumers → API keys, held in memory for the hot path and
//! persisted in the store. Keys are `tg_live_<id>_<secret>` (or `tg_test_…`); only the
//! SHA-256 of the whole key string is kept.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::index::{IdIndex, Keyed};
use crate::ledger::{ConsumerState, TenantState};

/// Length of the random id part of a key.
pub const KEY_ID_LEN: usize = 12;
/// Length of the random secret part of a key.
pub const KEY_SECRET_LEN: usize = 32;

/// State of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubStatus {
    /// Waiting for an administrator.
    PendingApproval,
    /// In its trial.
    Trialing,
    /// Paid and in good standing.
    Active,
    /// A payment failed; works until `grace_until`.
    PastDue,
    /// Suspended by an operator or by dunning.
    Suspended,
    /// Canceled.
    Canceled,
    /// Ran out.
    Expired,
}

impl SubStatus {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SubStatus::PendingApproval => "pending_approval",
            SubStatus::Trialing => "trialing",
            SubStatus::Active => "active",
            SubStatus::PastDue => "past_due",
            SubStatus::Suspended => "suspended",
            SubStatus::Canceled => "canceled",
            SubStatus::Expired => "expired",
        }
    }

    /// Parse the snake-case name.
    pub fn parse(s: &str) -> Option<SubStatus> {
        Some(match s {
            "pending_approval" => SubStatus::PendingApproval,
            "trialing" => SubStatus::Trialing,
            "active" => SubStatus::Active,
            "past_due" => SubStatus::PastDue,
            "suspended" => SubStatus::Suspended,
            "canceled" => SubStatus::Canceled,
            "expired" => SubStatus::Expired,
            _ => return None,
        })
    }
}

/// A consumer's subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Plan id.
    pub plan: Arc<str>,
    /// State.
    pub status: SubStatus,
    /// Period anchor, Unix ms.
    pub anchor_ms: i64,
    /// End of the trial, Unix ms.
    pub trial_end_ms: OptMs,
    /// End of the grace period of a `past_due` subscription, Unix ms.
    pub grace_until_ms: OptMs,
}

/// An optional Unix-ms instant in 8 bytes instead of the 16 of `Option<i64>`: the directory
/// holds one per consumer and key, by the million. `i64::MIN` (some 292 million years BC) is
/// the "none" niche; [`OptMs::new`] moves a real `i64::MIN` to `i64::MIN + 1`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OptMs(i64);

impl OptMs {
    /// No instant.
    pub const NONE: OptMs = OptMs(i64::MIN);

    /// From an optional instant.
    pub const fn new(ms: Option<i64>) -> OptMs {
        match ms {
            Some(i64::MIN) => OptMs(i64::MIN + 1),
            Some(v) => OptMs(v),
            None => OptMs::NONE,
        }
    }

    /// The instant, if any.
    pub const fn get(self) -> Option<i64> {
        if self.0 == i64::MIN {
            None
        } else {
            Some(self.0)
        }
    }
}

impl Default for OptMs {
    fn default() -> Self {
        OptMs::NONE
    }
}

impl From<Option<i64>> for OptMs {
    fn from(ms: Option<i64>) -> Self {
        OptMs::new(ms)
    }
}

impl std::fmt::Debug for OptMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// A tenant.
#[derive(Debug)]
pub struct TenantEntry {
    /// Stable id.
    pub id: Box<str>,
    /// Numeric id used in account keys.
    pub seq: i64,
    /// Display name.
    pub name: Box<str>,
    /// Contact for consumers.
    pub contact_email: Option<Box<str>>,
    /// Upgrade URL override.
    pub upgrade_url: Option<Box<str>>,
    /// Top-up URL override.
    pub top_up_url: Option<Box<str>>,
    /// Tenant-wide counters (spending caps). Shared by every entry the tenant has had: an
    /// update of its profile makes a new entry, and the consumers loaded before it keep the
    /// old one until restart, so the counters must be one and the same for all of them.
    pub state: Arc<Mutex<TenantState>>,
}

/// A consumer with its subscription and ledger state behind one lock.
#[derive(Debug)]
pub struct ConsumerEntry {
    /// Stable id.
    pub id: compact_str::CompactString,
    /// Numeric id used in account keys.
    pub seq: i64,
    /// Owning tenant.
    pub tenant: Arc<TenantEntry>,
    /// Subscription and ledger; one lock so a plan change and a reservation never interleave.
    pub state: Mutex<ConsumerState>,
    /// GCRA state of the per-consumer rate limit (theoretical arrival time, ns).
    pub rate_tat: AtomicU64,
}

/// An API key.
#[derive(Debug)]
pub struct KeyEntry {
    /// The id part of the key.
    pub id: compact_str::CompactString,
    /// Numeric id used in account keys.
    pub seq: i64,
    /// The first 120 bits of the SHA-256 of the whole key string ([`key_digest`]).
    pub hash: [u8; KEY_DIGEST_LEN],
    /// Owner.
    pub consumer: Arc<ConsumerEntry>,
    /// `true` for `tg_test_` keys.
    pub test: bool,
    /// Expiry, Unix ms.
    pub expires_at_ms: OptMs,
    /// Revocation time, Unix ms (0 = not revoked). A rotated key gets a future value.
    pub revoked_at_ms: AtomicI64,
    /// GCRA state of the per-key rate limit (theoretical arrival time, ns).
    pub rate_tat: AtomicU64,
}

/// Why a presented key was not accepted (all map to 401 `UNAUTHENTICATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No key was sent.
    #[error("missing")]
    Missing,
    /// Not of the form `tg_live_<id>_<secret>`.
    #[error("malformed")]
    Malformed,
    /// No such key, or the secret does not match.
    #[error("unknown")]
    Unknown,
    /// Revoked.
    #[error("revoked")]
    Revoked,
    /// Expired.
    #[error("expired")]
    Expired,
}

impl AuthError {
    /// The `details.reason` value.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Malformed => "malformed_key",
            AuthError::Unknown => "unknown_key",
            AuthError::Revoked => "revoked_key",
            AuthError::Expired => "expired_key",
        }
    }
}

/// A key split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// `true` for `tg_test_`.
    pub test: bool,
    /// The id part.
    pub id: &'a str,
}

/// Split `tg_live_<id>_<secret>`; the secret is not returned, only checked for shape.
pub fn parse_key(key: &str) -> Result<ParsedKey<'_>, AuthError> {
    let (test, rest) = if let Some(r) = key.strip_prefix("tg_live_") {
        (false, r)
    } else if let Some(r) = key.strip_prefix("tg_test_") {
        (true, r)
    } else {
        return Err(AuthError::Malformed);
    };
    let (id, secret) = rest.split_once('_').ok_or(AuthError::Malformed)?;
    let alnum =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !alnum(id) || !alnum(secret) {
        return Err(AuthError::Malformed);
    }
    Ok(ParsedKey { test, id })
}

/// SHA-256 of a key string (what the store keeps).
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Bytes of a key's SHA-256 that memory keeps ([`key_digest`]).
pub const KEY_DIGEST_LEN: usize = 15;

/// What memory keeps of a key's SHA-256: its first 120 bits. Finding a string with a given
/// 120-bit digest takes 2^120 guesses, and keys carry 190 bits of randomness. The store keeps
/// the whole digest; the 15 bytes here leave room for the `test` flag in the same 16, so a
/// [`KeyEntry`] with its `Arc` header fits a 96-byte allocation (a million keys: 16 MB less
/// than the next size class).
pub fn key_digest(full: &[u8; 32]) -> [u8; KEY_DIGEST_LEN] {
    let mut d = [0u8; KEY_DIGEST_LEN];
    d.copy_from_slice(&full[..KEY_DIGEST_LEN]);
    d
}

/// A new random key: `(id, full key string)`.
pub fn generate_key(test: bool) -> (String, String) {
    let mut rng = rand::thread_rng();
    let id: String = (&mut rng)
        .sample_iter(&Alphanumeric)
        .take(KEY_ID_LEN)
        .map(char::from)
        .collect();
    let secret: String = (&mut rng)
        .sample_iter(&Alphanumeric)
        .take(KEY_SECRET_LEN)
        .map(char::from)
        .collect();
    let env = if test { "test" } else { "live" };
    let key = format!("tg_{env}_{id}_{secret}");
    (id, key)
}

impl Keyed for ConsumerEntry {
    fn key(&self) -> &str {
        &self.id
    }
}

impl Keyed for KeyEntry {
    fn key(&self) -> &str {
        &self.id
    }
}

/// The in-memory directory.
#[derive(Debug, Default)]
pub struct Directory {
    /// Tenants by id.
    pub tenants: DashMap<Box<str>, Arc<TenantEntry>>,
    /// Consumers by id.
    pub consumers: IdIndex<ConsumerEntry>,
    /// Keys by id.
    pub keys: IdIndex<KeyEntry>,
}

impl Directory {
    /// An empty directory sized for `consumers` and `keys` (no rehashing while loading).
    pub fn with_capacity(consumers: usize, keys: usize) -> Self {
        Directory {
            tenants: DashMap::new(),
            consumers: IdIndex::with_capacity(consumers),
            keys: IdIndex::with_capacity(keys),
        }
    }

    /// Authenticate a presented key at `now_ms`.
    pub fn authenticate(&self, presented: &str, now_ms: i64) -> Result<Arc<KeyEntry>, AuthError> {
        let parsed = parse_key(presented)?;
        let entry = self.keys.get(parsed.id).ok_or(AuthError::Unknown)?;
        let h = key_digest(&hash_key(presented));
        if !bool::from(h.ct_eq(&entry.hash)) || entry.test != parsed.test {
            return Err(AuthError::Unknown);
        }
        let revoked = entry.revoked_at_ms.load(Ordering::Relaxed);
        if revoked != 0 && revoked <= now_ms {
            return Err(AuthError::Revoked);
        }
        if entry.expires_at_ms.get().is_some_and(|e| e <= now_ms) {
            return Err(AuthError::Expired);
        }
        Ok(entry)
    }

    /// A consumer by id.
    pub fn consumer(&self, id: &str) -> Option<Arc<ConsumerEntry>> {
        self.consumers.get(id)
    }

    /// A tenant by id.
    pub fn tenant(&self, id: &str) -> Option<Arc<TenantEntry>> {
        self.tenants.get(id).map(|e| Arc::clone(e.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parsing() {
        assert_eq!(
            parse_key("tg_live_abc_def").unwrap(),
            ParsedKey {
                test: false,
                id: "abc"
            }
        );
        assert!(parse_key("tg_test_abc_def").unwrap().test);
        for bad in [
            "",
            "tg_live_",
            "tg_live_abc",
            "tg_live__x",
            "tg_live_a_",
            "sk-123",
            "tg_live_a-b_c",
            "tg_live_a_b_c",
        ] {
            assert_eq!(parse_key(bad), Err(AuthError::Malformed), "{bad}");
        }
        let (id, key) = generate_key(false);
        assert_eq!(parse_key(&key).unwrap().id, id);
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod layout_tests {
    use super::*;

    /// The directory holds one consumer and one key per API key, by the million: a field that
    /// grows these past an allocator size class costs tens of megabytes at 1M keys.
    #[test]
    fn directory_entries_stay_small() {
        assert_eq!(std::mem::size_of::<OptMs>(), 8);
        assert_eq!(std::mem::size_of::<Subscription>(), 48);
        // + 16 bytes of `Arc` header: 160 and 96 bytes per allocation (size classes of the
        // allocator: 128/160 and 96/112).
        assert!(std::mem::size_of::<ConsumerEntry>() <= 144);
        assert!(std::mem::size_of::<KeyEntry>() <= 80);
    }

    #[test]
    fn opt_ms_round_trips() {
        for v in [
            None,
            Some(0),
            Some(-1),
            Some(1_700_000_000_000),
            Some(i64::MAX),
        ] {
            assert_eq!(OptMs::new(v).get(), v);
        }
        assert_eq!(OptMs::new(Some(i64::MIN)).get(), Some(i64::MIN + 1));
        assert_eq!(OptMs::default().get(), None);
        assert_eq!(format!("{:?}", OptMs::new(Some(5))), "Some(5)");
    }
}
