//! A string-keyed hash map split into independently locked shards.
//!
//! Token and account look-ups happen on every request from many connections at once; one
//! global lock would serialise them. Locks are parking_lot and never held across an await.

use parking_lot::RwLock;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

const SHARDS: usize = 64;

pub(crate) struct Sharded<V> {
    hasher: RandomState,
    shards: Box<[RwLock<HashMap<String, V>>]>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl<V> Sharded<V> {
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, V>> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    pub(crate) fn with<R>(&self, key: &str, f: impl FnOnce(Option<&V>) -> R) -> R {
        f(self.shard(key).read().get(key))
    }

    pub(crate) fn insert(&self, key: String, value: V) -> Option<V> {
        self.shard(&key).write().insert(key, value)
    }

    /// Inserts only if absent; returns false (and drops `value`) when the key exists.
    pub(crate) fn insert_new(&self, key: String, value: V) -> bool {
        let mut shard = self.shard(&key).write();
        if shard.contains_key(&key) {
            return false;
        }
        shard.insert(key, value);
        true
    }

    pub(crate) fn remove(&self, key: &str) -> Option<V> {
        self.shard(key).write().remove(key)
    }

    pub(crate) fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        for shard in self.shards.iter() {
            for (k, v) in shard.read().iter() {
                f(k, v);
            }
        }
    }
}

impl<V: Clone> Sharded<V> {
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        self.with(key, |v| v.cloned())
    }
}
