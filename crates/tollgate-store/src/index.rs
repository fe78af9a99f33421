//! A concurrent index of entries by their string id, for millions of consumers and keys.
//!
//! Each shard is a `hashbrown::HashTable` holding only the `Arc` of the entry (8 bytes a slot
//! plus one control byte), hashed by the id the entry carries itself, so the id is not stored
//! a second time and no key/value pair is padded. Shards are picked by the hash's top bits
//! and each has its own lock, so lookups from many threads rarely meet.

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

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

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
        let per = n.div_ceil(SHARDS);
        IdIndex {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashTable::with_capacity(per)))
                .collect(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn locate(&self, id: &str) -> (u64, &RwLock<HashTable<Arc<T>>>) {
        let h = self.hasher.hash_one(id);
        let shard = (h >> (64 - SHARD_BITS)) as usize;
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
}
