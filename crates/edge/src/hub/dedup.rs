//! A bounded set of recently seen eventIds. Ids are kept as 64-bit hashes
//! (a collision among a few thousand ids is about 1 in 10^12), in arrival
//! order, so the oldest is forgotten first.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

pub struct RecentIds {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
    /// How many ids were ever recorded (new ones only).
    inserted: u64,
    hasher: std::collections::hash_map::RandomState,
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            inserted: 0,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn key(&self, id: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(id.as_bytes());
        h.finish()
    }

    /// Whether `id` is among the remembered ones.
    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(&self.key(id))
    }

    /// How many ids were ever recorded: what was recorded before
    /// `inserted() - capacity` is forgotten.
    pub fn inserted(&self) -> u64 {
        self.inserted
    }

    /// Records `id`; false when it was already seen.
    pub fn insert(&mut self, id: &str) -> bool {
        let key = self.key(id);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        self.inserted = self.inserted.wrapping_add(1);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_up_to_capacity() {
        let mut r = RecentIds::new(3);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        assert!(r.insert("b"));
        assert!(r.insert("c"));
        assert!(r.insert("d"));
        assert_eq!(r.len(), 3);
        // "a" was forgotten, the rest are remembered.
        assert!(r.insert("a"));
        assert!(!r.insert("d"));
        assert!(r.contains("d") && !r.contains("b"));
    }
}
