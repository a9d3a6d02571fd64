//! A map that keeps its latest `capacity` keys and forgets the oldest first: the
//! memory of recent work (the embedded store's recent orders, a simulator's answers
//! to idempotency keys and the state its effects left) that does not grow with all
//! the work ever done.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct FifoMap<K, V> {
    capacity: usize,
    /// Each value with the arrival that put its key here.
    entries: HashMap<K, (u64, V)>,
    /// Keys in arrival order, each with its arrival number; a key removed (or removed
    /// and inserted again) leaves a stale record that eviction skips.
    arrivals: VecDeque<(K, u64)>,
    next_arrival: u64,
}

impl<K: Hash + Eq + Clone, V> FifoMap<K, V> {
    /// An empty map that holds at most `capacity` entries (none at 0).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            arrivals: VecDeque::new(),
            next_arrival: 0,
        }
    }

    /// Like [`FifoMap::new`], with room for `capacity` entries allocated at once: for
    /// a map that fills up and stays full, so it never stops to grow.
    pub(crate) fn preallocated(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity),
            arrivals: VecDeque::with_capacity(capacity),
            ..Self::new(capacity)
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(_, value)| value)
    }

    /// The value to change in place; the key keeps its place in the eviction order.
    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key).map(|(_, value)| value)
    }

    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key).map(|(_, value)| value)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Inserts or replaces. A new key joins the end of the line, a known one keeps
    /// its place; beyond `capacity` the oldest arrivals leave.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        match self.entries.entry(key) {
            Entry::Occupied(mut held) => {
                held.get_mut().1 = value;
                return;
            }
            Entry::Vacant(free) => {
                let arrival = self.next_arrival;
                self.next_arrival += 1;
                self.arrivals.push_back((free.key().clone(), arrival));
                free.insert((arrival, value));
            }
        }
        if self.arrivals.len() > 2 * self.capacity {
            // Stale records from removals: drop them all, once per `capacity` of them.
            let entries = &self.entries;
            self.arrivals
                .retain(|(key, arrival)| entries.get(key).is_some_and(|(a, _)| a == arrival));
        }
        while self.entries.len() > self.capacity {
            let Some((oldest, arrival)) = self.arrivals.pop_front() else {
                break;
            };
            if let Entry::Occupied(held) = self.entries.entry(oldest)
                && held.get().0 == arrival
            {
                held.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_key_leaves_first_and_a_replaced_value_keeps_its_place() {
        let mut map = FifoMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        map.insert("a", 10);
        map.insert("c", 3);
        assert_eq!(
            (map.get("a"), map.get("b"), map.get("c")),
            (None, Some(&2), Some(&3))
        );
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_key_removed_and_inserted_again_counts_from_its_new_arrival() {
        let mut map = FifoMap::new(2);
        map.insert("a", 1);
        map.insert("b", 2);
        assert_eq!(map.remove("a"), Some(1));
        map.insert("a", 3);
        map.insert("c", 4);
        // "b" is now the oldest: the stale record of the first "a" evicts nothing.
        assert_eq!(
            (map.get("a"), map.get("b"), map.get("c")),
            (Some(&3), None, Some(&4))
        );
    }

    #[test]
    fn removals_do_not_let_the_line_of_arrivals_grow_without_bound() {
        let mut map = FifoMap::new(4);
        for i in 0..10_000 {
            map.insert(i, ());
            map.remove(&i);
        }
        assert!(map.arrivals.len() <= 8, "{} records", map.arrivals.len());
        for i in 0..100 {
            map.insert(i, ());
        }
        assert_eq!(map.len(), 4);
        assert!((96..100).all(|i| map.contains_key(&i)));
    }

    #[test]
    fn a_map_of_no_capacity_keeps_nothing() {
        let mut map = FifoMap::new(0);
        map.insert("a", 1);
        assert_eq!(map.len(), 0);
    }
}
