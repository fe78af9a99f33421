//! `Idempotency-Key` outcomes: the same key with the same request replays the original
//! outcome (charged once); with a different request it is a 409; while the first is still in
//! flight a duplicate gets a 409 "in progress".

use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

/// A stored response to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// Status.
    pub status: u16,
    /// Headers to replay.
    pub headers: Vec<(String, String)>,
    /// Body, when it was small enough to keep.
    pub body: Option<Vec<u8>>,
    /// When it was first answered, Unix ms.
    pub created_ms: i64,
}

#[derive(Debug, Clone)]
enum Slot {
    InProgress([u8; 32]),
    Done([u8; 32], Arc<StoredResponse>),
}

/// What a new request with an `Idempotency-Key` should do.
#[derive(Debug)]
pub enum IdemLookup {
    /// First time: go ahead; complete or drop the guard.
    Proceed(IdemGuard),
    /// Same key, same request, already answered: replay.
    Replay(Arc<StoredResponse>),
    /// Same key, different request.
    Conflict,
    /// Same key, first request still in flight.
    InProgress,
}

/// The in-memory index of idempotency keys (loaded from the store at start).
#[derive(Debug, Default)]
pub struct IdemIndex {
    map: DashMap<(i64, Box<str>), Slot>,
}

/// Holds an in-progress slot; dropping it without [`IdemGuard::complete`] frees the key so
/// the client may retry (nothing was charged for it).
#[derive(Debug)]
pub struct IdemGuard {
    index: Arc<IdemIndex>,
    key: (i64, Box<str>),
    fp: [u8; 32],
    done: bool,
}

impl IdemIndex {
    /// Look up, claiming the key when new.
    pub fn begin(self: &Arc<Self>, consumer_seq: i64, key: &str, fp: [u8; 32]) -> IdemLookup {
        let k = (consumer_seq, Box::<str>::from(key));
        match self.map.entry(k.clone()) {
            MapEntry::Occupied(o) => match o.get() {
                Slot::InProgress(f) if *f == fp => IdemLookup::InProgress,
                Slot::Done(f, r) if *f == fp => IdemLookup::Replay(Arc::clone(r)),
                _ => IdemLookup::Conflict,
            },
            MapEntry::Vacant(v) => {
                v.insert(Slot::InProgress(fp));
                IdemLookup::Proceed(IdemGuard {
                    index: Arc::clone(self),
                    key: k,
                    fp,
                    done: false,
                })
            }
        }
    }

    /// Insert a completed outcome (loading from the store).
    pub fn load(&self, consumer_seq: i64, key: &str, fp: [u8; 32], resp: StoredResponse) {
        self.map
            .insert((consumer_seq, key.into()), Slot::Done(fp, Arc::new(resp)));
    }

    /// Forget outcomes created before `cutoff_ms`.
    pub fn expire(&self, cutoff_ms: i64) {
        self.map.retain(|_, s| match s {
            Slot::Done(_, r) => r.created_ms >= cutoff_ms,
            Slot::InProgress(_) => true,
        });
    }
}

impl IdemGuard {
    /// Record the outcome (call only once it is durable).
    pub fn complete(mut self, resp: StoredResponse) {
        self.done = true;
        self.index
            .map
            .insert(self.key.clone(), Slot::Done(self.fp, Arc::new(resp)));
    }

    /// The fingerprint of the claimed request.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fp
    }
}

impl Drop for IdemGuard {
    fn drop(&mut self) {
        if !self.done {
            self.index
                .map
                .remove_if(&self.key, |_, s| matches!(s, Slot::InProgress(_)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let idx = Arc::new(IdemIndex::default());
        let g = match idx.begin(1, "k", [1; 32]) {
            IdemLookup::Proceed(g) => g,
            other => panic!("{other:?}"),
        };
        assert!(matches!(idx.begin(1, "k", [1; 32]), IdemLookup::InProgress));
        assert!(matches!(idx.begin(1, "k", [2; 32]), IdemLookup::Conflict));
        assert!(matches!(idx.begin(2, "k", [1; 32]), IdemLookup::Proceed(_)));
        g.complete(StoredResponse {
            status: 200,
            headers: vec![],
            body: Some(b"x".to_vec()),
            created_ms: 5,
        });
        assert!(matches!(idx.begin(1, "k", [1; 32]), IdemLookup::Replay(r) if r.status == 200));
        assert!(matches!(idx.begin(1, "k", [2; 32]), IdemLookup::Conflict));
        // A dropped guard frees the key.
        let g = match idx.begin(1, "j", [1; 32]) {
            IdemLookup::Proceed(g) => g,
            o => panic!("{o:?}"),
        };
        drop(g);
        assert!(matches!(idx.begin(1, "j", [1; 32]), IdemLookup::Proceed(_)));
        idx.expire(6);
        assert!(matches!(idx.begin(1, "k", [1; 32]), IdemLookup::Proceed(_)));
    }
}
