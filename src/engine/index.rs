//! An index from id keys (128-bit fingerprints of an id) to slab indices,
//! for a shop's conversations and customers.
//!
//! A `HashMap` would do, but the slot a key's probe starts at is hidden
//! inside it. Here it follows from the key alone, so
//! [`Engine::apply_batch`](super::Engine::apply_batch) can ask for it
//! events ahead ([`IdIndex::prefetch`]) and find it in cache when the
//! event is applied: on a desk of any size the index is cold memory.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The key of an id: a uniform 128-bit fingerprint (`id_key`).
pub type Key = u128;

/// `value` of a slot that holds nothing.
const EMPTY: u32 = u32::MAX;

/// One slot: a key, as two words, and its value. 32-byte aligned, so a
/// slot never straddles two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(align(32))]
struct Slot {
    key: [u64; 2],
    value: u32,
}

impl Slot {
    const VACANT: Slot = Slot {
        key: [0, 0],
        value: EMPTY,
    };
}

fn words(key: Key) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}

/// Key → `u32` (never `u32::MAX`), by linear probing in a power-of-two
/// table at most 7/10 full; removal shifts the rest of the probe run back,
/// so no tombstones build up however many conversations open and close.
#[derive(Debug, Clone, Default)]
pub struct IdIndex {
    slots: Vec<Slot>,
    len: usize,
}

impl IdIndex {
    const MIN_SLOTS: usize = 16;

    /// Number of keys held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The slot `key`'s probe starts at: its high bits (keys are uniform).
    fn home(&self, key: [u64; 2]) -> usize {
        key[0] as usize & (self.slots.len() - 1)
    }

    /// Where `key` is (`Ok`), or the vacant slot ending its probe (`Err`).
    /// The table is not empty and never full.
    fn find(&self, key: [u64; 2]) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = &self.slots[i];
            if slot.value == EMPTY {
                return Err(i);
            }
            if slot.key == key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: Key) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        self.find(words(key)).ok().map(|i| self.slots[i].value)
    }

    /// Asks the CPU to fetch the line `key`'s probe starts on.
    pub fn prefetch(&self, key: Key) {
        if !self.slots.is_empty() {
            mem_prefetch::prefetch_read_data::<_, 3>(&self.slots[self.home(words(key))]);
        }
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: Key, value: u32) -> Option<u32> {
        assert_ne!(value, EMPTY, "u32::MAX marks a vacant slot");
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let key = words(key);
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].value, value)),
            Err(i) => {
                self.slots[i] = Slot { key, value };
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; the value it had, if any.
    pub fn remove(&mut self, key: Key) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mut hole = self.find(words(key)).ok()?;
        let value = self.slots[hole].value;
        let mask = self.slots.len() - 1;
        // Backward shift: each later slot of the run whose home does not
        // lie strictly between the hole and it moves into the hole.
        let mut i = (hole + 1) & mask;
        while self.slots[i].value != EMPTY {
            let home = self.home(self.slots[i].key);
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[i];
                hole = i;
            }
            i = (i + 1) & mask;
        }
        self.slots[hole] = Slot::VACANT;
        self.len -= 1;
        Some(value)
    }

    /// Every (key, value), in table order.
    pub fn iter(&self) -> impl Iterator<Item = (Key, u32)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.value != EMPTY)
            .map(|s| ((u128::from(s.key[0]) << 64) | u128::from(s.key[1]), s.value))
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(Self::MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot::VACANT; size]);
        for slot in old.into_iter().filter(|s| s.value != EMPTY) {
            if let Err(i) = self.find(slot.key) {
                self.slots[i] = slot;
            }
        }
    }
}

/// Stored as a map from key to value: the bytes a `HashMap<u128, u32>`
/// writes, so snapshots read either way.
impl Serialize for IdIndex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.iter() {
            map.serialize_entry(&key, &value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for IdIndex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = IdIndex;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of id keys to indices")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IdIndex, A::Error> {
                let mut index = IdIndex::default();
                while let Some((key, value)) = map.next_entry::<Key, u32>()? {
                    if value == EMPTY {
                        return Err(serde::de::Error::custom("index value u32::MAX"));
                    }
                    index.insert(key, value);
                }
                Ok(index)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_removal_keeps_every_other_key_of_its_probe_run_reachable() {
        // Keys sharing a home slot make one run; removing from its middle
        // must shift the rest back, wrapping round the end of the table.
        let mut index = IdIndex::default();
        let at = |home: u64, n: u64| (u128::from(home) << 64) | u128::from(n);
        let run: Vec<Key> = (0..5).map(|n| at(14, n)).chain([at(15, 9), at(0, 7)]).collect();
        for (v, &k) in run.iter().enumerate() {
            index.insert(k, v as u32);
        }
        assert_eq!(index.remove(at(14, 1)), Some(1));
        assert_eq!(index.remove(at(14, 1)), None);
        for (v, &k) in run.iter().enumerate().filter(|&(v, _)| v != 1) {
            assert_eq!(index.get(k), Some(v as u32), "key {k:x}");
        }
        assert_eq!(index.len(), run.len() - 1);
    }

    #[test]
    fn snapshot_bytes_are_those_of_a_hash_map() {
        let mut index = IdIndex::default();
        let mut map = HashMap::new();
        for k in 0..100u128 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            index.insert(key, k as u32);
            map.insert(key, k as u32);
        }
        let from_map: IdIndex = postcard::from_bytes(&postcard::to_allocvec(&map).unwrap()).unwrap();
        let back: HashMap<u128, u32> = postcard::from_bytes(&postcard::to_allocvec(&index).unwrap()).unwrap();
        assert_eq!(back, map);
        assert_eq!(from_map.iter().collect::<HashMap<_, _>>(), map);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0..1000u32).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Any mix of inserts and removals leaves the index equal to a
        /// `HashMap` given the same operations. Keys are drawn from few
        /// homes, so runs are long and removals shift often.
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec(op(), 1..400)) {
            let key = |k: u8| (u128::from(k % 8) << 64) | u128::from(k);
            let mut index = IdIndex::default();
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(index.insert(key(k), v), model.insert(key(k), v)),
                    Op::Remove(k) => prop_assert_eq!(index.remove(key(k)), model.remove(&key(k))),
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for k in 0..=255u8 {
                prop_assert_eq!(index.get(key(k)), model.get(&key(k)).copied());
            }
        }
    }
}
