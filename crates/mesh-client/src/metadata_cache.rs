//! A bounded cache of other connections' metadata, with shared lookups.
//!
//! Metadata of a connection rarely changes and presence UIs ask for it on
//! every join, so the client remembers answers. The cache is dropped when we
//! leave a room (the server may stop answering for members we no longer
//! share a room with) and on every reconnect (all ids we knew are gone).
//! A lookup already in flight is shared, so resolving a room of a hundred
//! members sends at most one request per member.

use serde_json::Value;
use std::collections::{HashMap, VecDeque};

/// Cached values and lookups in flight. `L` is the shared lookup future
/// (generic so that the bookkeeping can be tested without one).
#[derive(Debug)]
pub(crate) struct MetadataCache<L> {
    capacity: usize,
    /// Bumped on every clear, so that a lookup started before the clear does
    /// not put a stale answer back.
    generation: u64,
    entries: HashMap<String, Value>,
    /// Insertion order, oldest first, for eviction.
    order: VecDeque<String>,
    inflight: HashMap<String, L>,
}

impl<L: Clone> MetadataCache<L> {
    /// An empty cache holding at most `capacity` values.
    pub fn new(capacity: usize) -> Self {
        MetadataCache {
            capacity,
            generation: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            inflight: HashMap::new(),
        }
    }

    /// The cached value for `id`.
    pub fn get(&self, id: &str) -> Option<Value> {
        self.entries.get(id).cloned()
    }

    /// The current generation; pass it back to [`MetadataCache::finish`].
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The lookup in flight for `id`, if any.
    pub fn inflight(&self, id: &str) -> Option<L> {
        self.inflight.get(id).cloned()
    }

    /// Records a lookup in flight for `id`.
    pub fn start(&mut self, id: &str, lookup: L) {
        self.inflight.insert(id.to_string(), lookup);
    }

    /// Ends the lookup for `id` started in `generation`, caching its value.
    ///
    /// `null` is not cached: it also means "not visible to you (yet)" or
    /// "not set yet", both of which change without a leave or reconnect.
    pub fn finish(&mut self, generation: u64, id: &str, value: Option<&Value>) {
        if generation != self.generation {
            return;
        }
        self.inflight.remove(id);
        if let Some(value) = value.filter(|v| !v.is_null()) {
            self.insert(id, value.clone());
        }
    }

    /// Caches `value` for `id`, evicting the oldest entry when full.
    pub fn insert(&mut self, id: &str, value: Value) {
        if self.capacity == 0 {
            return;
        }
        if let Some(slot) = self.entries.get_mut(id) {
            *slot = value;
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
        self.entries.insert(id.to_string(), value);
        self.order.push_back(id.to_string());
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &str) {
        if self.entries.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }

    /// Forgets everything, including lookups in flight.
    pub fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.order.clear();
        self.inflight.clear();
    }

    /// Number of cached values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evicts_the_oldest_when_full() {
        let mut cache: MetadataCache<()> = MetadataCache::new(2);
        cache.insert("a", json!(1));
        cache.insert("b", json!(2));
        cache.insert("a", json!(10)); // update, not a new entry
        cache.insert("c", json!(3));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(json!(2)));
        assert_eq!(cache.get("c"), Some(json!(3)));
        cache.remove("b");
        cache.insert("d", json!(4));
        assert_eq!(
            cache.get("c"),
            Some(json!(3)),
            "removal must not skew eviction"
        );
    }

    #[test]
    fn lookups_from_before_a_clear_are_discarded() {
        let mut cache: MetadataCache<u8> = MetadataCache::new(8);
        let generation = cache.generation();
        cache.start("a", 1);
        assert_eq!(cache.inflight("a"), Some(1));
        cache.clear();
        assert_eq!(cache.inflight("a"), None);
        cache.finish(generation, "a", Some(&json!("stale")));
        assert_eq!(cache.get("a"), None);

        let generation = cache.generation();
        cache.start("a", 2);
        cache.finish(generation, "a", Some(&json!("fresh")));
        assert_eq!(cache.get("a"), Some(json!("fresh")));
        assert_eq!(cache.inflight("a"), None);
    }

    #[test]
    fn failed_and_null_lookups_are_not_cached() {
        let mut cache: MetadataCache<u8> = MetadataCache::new(8);
        let generation = cache.generation();
        cache.start("a", 1);
        cache.finish(generation, "a", None);
        assert_eq!(cache.get("a"), None);
        cache.start("a", 2);
        cache.finish(generation, "a", Some(&Value::Null));
        assert_eq!(cache.get("a"), None, "null is not cached");
        assert_eq!(cache.inflight("a"), None);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let mut cache: MetadataCache<()> = MetadataCache::new(0);
        cache.insert("a", json!(1));
        assert_eq!(cache.len(), 0);
    }
}
