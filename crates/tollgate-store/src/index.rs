//! A concurrent index of entries by their string id, for millions of consumers and keys.
//!
//! Each shard is a `hashbrown::HashTable` holding only the `Arc` of the entry (8 bytes a slot
//! plus one control byte), hashed by the id the entry carries itself, so the id is not stored
//! a second time and no key/value pair is padded. Each shard has its own lock, so lookups from
//! many threads rarely meet. A shard is picked by bits 16..48 of the hash, apart from the low
//! bits a table uses for the bucket and the top 7 it keeps as the tag.
//!
//! A table's buckets are a power of two, at most 7/8 full. Sized for 1M entries over 64 shards,
//! each would need 17,857 buckets and get 32,768 (half empty, 9 bytes a bucket); instead an index
//! sized for `n` entries takes as many shards as it needs to fill 16,384-bucket tables.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;

/// Something indexed by a string id.
pub trait Keyed {
    /// The id.
    fn key(&self) -> &str;
}

/// Shards at least.
const MIN_SHARDS: usize = 64;
/// Entries per shard an index made by `with_capacity` is sized for: a 16,384-bucket table holds
/// 14,336 (7/8), and the margin covers the spread of a hash over shards (about 115 entries, one
/// standard deviation, at this size), so no shard outgrows its table while loading.
const SHARD_FILL: usize = 13_500;

/// Entries by id.
pub struct IdIndex<T> {
    shards: Box<[RwLock<HashTable<Arc<T>>>]>,
    hasher: DefaultHashBuilder,
}

impl<T: Keyed> std::fmt::Debug for IdIndex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdIndex({} entries)", self.len())
    }
}

impl<T: Keyed> Default for IdIndex<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<T: Keyed> IdIndex<T> {
    /// An index sized for `n` entries (no rehashing while loading them).
    pub fn with_capacity(n: usize) -> Self {
        let shards = MIN_SHARDS.max(n.div_ceil(SHARD_FILL));
        let per = n.div_ceil(shards);
        IdIndex {
            shards: (0..shards)
                .map(|_| RwLock::new(HashTable::with_capacity(per)))
                .collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn locate(&self, id: &str) -> (u64, &RwLock<HashTable<Arc<T>>>) {
        let h = self.hasher.hash_one(id);
        let mid = (h >> 16) & 0xFFFF_FFFF;
        let shard = ((mid * self.shards.len() as u64) >> 32) as usize;
        (h, &self.shards[shard])
    }

    /// The entry with `id`.
    pub fn get(&self, id: &str) -> Option<Arc<T>> {
        let (h, s) = self.locate(id);
        s.read().find(h, |e| e.key() == id).cloned()
    }

    /// Whether an entry with `id` exists.
    pub fn contains_key(&self, id: &str) -> bool {
        let (h, s) = self.locate(id);
        s.read().find(h, |e| e.key() == id).is_some()
    }

    /// Insert `e`, replacing (and returning) an entry with the same id.
    pub fn insert(&self, e: Arc<T>) -> Option<Arc<T>> {
        let (h, s) = self.locate(e.key());
        let hasher = &self.hasher;
        let mut t = s.write();
        match t.entry(h, |x| x.key() == e.key(), |x| hasher.hash_one(x.key())) {
            Entry::Occupied(mut o) => Some(std::mem::replace(o.get_mut(), e)),
            Entry::Vacant(v) => {
                v.insert(e);
                None
            }
        }
    }

    /// Remove the entry with `id`.
    pub fn remove(&self, id: &str) -> Option<Arc<T>> {
        let (h, s) = self.locate(id);
        let mut t = s.write();
        match t.find_entry(h, |e| e.key() == id) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of every entry (in no particular order).
    pub fn values(&self) -> Vec<Arc<T>> {
        let mut v = Vec::with_capacity(self.len());
        for s in self.shards.iter() {
            v.extend(s.read().iter().cloned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct E(String, u32);
    impl Keyed for E {
        fn key(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn insert_get_replace_remove() {
        let ix: IdIndex<E> = IdIndex::with_capacity(100);
        for i in 0..1000u32 {
            assert!(ix.insert(Arc::new(E(format!("id{i}"), i))).is_none());
        }
        assert_eq!(ix.len(), 1000);
        assert_eq!(ix.get("id7").unwrap().1, 7);
        assert!(ix.get("id1000").is_none());
        let old = ix.insert(Arc::new(E("id7".into(), 70))).unwrap();
        assert_eq!(old.1, 7);
        assert_eq!(ix.get("id7").unwrap().1, 70);
        assert_eq!(ix.remove("id7").unwrap().1, 70);
        assert!(!ix.contains_key("id7"));
        assert_eq!(ix.values().len(), 999);
    }

    #[test]
    fn sized_for_a_million_it_keeps_tables_full() {
        let n = 1_000_000;
        let ix: IdIndex<E> = IdIndex::with_capacity(n);
        assert_eq!(ix.shards.len(), 75);
        for i in 0..n as u32 {
            ix.insert(Arc::new(E(format!("k{i}"), i)));
        }
        // 75 tables of 16,384 buckets hold 1M entries without one growing to 32,768.
        for s in ix.shards.iter() {
            assert_eq!(s.read().capacity(), 14_336);
        }
        assert_eq!(ix.len(), n);
        assert_eq!(ix.get("k999999").unwrap().1, 999_999);
    }
}
