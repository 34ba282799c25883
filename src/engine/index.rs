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

/// The key of an id: a uniform 128-bit hash of it ([`key_of`]).
pub type Key = u128;

/// The key of `id` in the engine's indexes: two 64-bit lanes, each a
/// folded multiply (the two halves of a 64 × 64 → 128-bit product, xored)
/// per 16 bytes, the length folded in last.
///
/// Not the duplicate set's fingerprint, which snapshots hold and so must
/// never change: index keys live only in memory, every index being rebuilt
/// from the ids on restore, so they can be cheap. An id of up to 16 bytes
/// (most shop, agent, conversation and customer ids) is one block read as
/// two words, overlapping when it is 8 to 15 bytes long (4 to 7 bytes:
/// two overlapping half-words). The fingerprint
/// copies the id into a buffer and mixes a word at a time: with these keys
/// the hashing of an event's ids fell from 603 to 410 instructions on the
/// engine bench's desk (callgrind).
pub fn key_of(id: &str) -> Key {
    let b = id.as_bytes();
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (mut a, mut c) = (LANE_A[0], LANE_B[0]);
    let (w0, w1) = if n > 16 {
        // Whole blocks while more than one block is left, then the last 16
        // bytes, overlapping the block before.
        let mut at = 0;
        while n - at > 16 {
            let (w0, w1) = (word(at), word(at + 8));
            a = fold(w0 ^ a, w1 ^ LANE_A[1]);
            c = fold(w0 ^ c, w1 ^ LANE_B[1]);
            at += 16;
        }
        (word(n - 16), word(n - 8))
    } else if n >= 8 {
        (word(0), word(n - 8))
    } else if n >= 4 {
        let half = |at: usize| u64::from(u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")));
        (half(0), half(n - 4))
    } else if n > 0 {
        // Bytes 0, n / 2 and n - 1: every byte of an id of 1 to 3 bytes.
        (
            u64::from(b[0]) | u64::from(b[n / 2]) << 8 | u64::from(b[n - 1]) << 16,
            0,
        )
    } else {
        (0, 0)
    };
    a = fold(w0 ^ a, w1 ^ LANE_A[1]);
    c = fold(w0 ^ c, w1 ^ LANE_B[1]);
    let n = n as u64;
    a = fold(a ^ n, LANE_A[2]);
    c = fold(c ^ n, LANE_B[2]);
    (u128::from(a) << 64) | u128::from(c)
}

/// Each lane's seed, block constant and final constant: odd 64-bit
/// constants with about half their bits set.
const LANE_A: [u64; 3] = [0x243f_6a88_85a3_08d3, 0xa409_3822_299f_31d1, 0x9e37_79b9_7f4a_7c15];
const LANE_B: [u64; 3] = [0x1319_8a2e_0370_7345, 0x082e_fa98_ec4e_6c89, 0xbf58_476d_1ce4_e5b9];

/// The low and the high word of `x × y`, xored.
fn fold(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    (p as u64) ^ ((p >> 64) as u64)
}

/// `value` of a slot that holds nothing.
const EMPTY: u32 = u32::MAX;

/// One slot: a key, as four 32-bit words ([`packed`]), and its value: 20
/// bytes. A shop's customer index holds a day of customers, millions of
/// slots. The 32-byte slot before it never straddled two cache lines but
/// made the index 60 % larger, and over a whole day the engine's rate
/// read the same either way (BENCHMARKS.md, *Index slots in 20 bytes*).
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: [u32; 4],
    value: u32,
}

impl Slot {
    const VACANT: Slot = Slot {
        key: [0; 4],
        value: EMPTY,
    };
}

/// A key's [`halves`] as four words, so that a slot is 4-aligned.
fn packed([hi, lo]: [u64; 2]) -> [u32; 4] {
    [(hi >> 32) as u32, hi as u32, (lo >> 32) as u32, lo as u32]
}

/// The [`halves`] [`packed`] split.
fn unpacked([a, b, c, d]: [u32; 4]) -> [u64; 2] {
    [u64::from(a) << 32 | u64::from(b), u64::from(c) << 32 | u64::from(d)]
}

/// A key as two words, high first: held in a struct, it keeps the struct
/// 8-aligned where a `u128` would align it to 16.
pub fn halves(key: Key) -> [u64; 2] {
    [(key >> 64) as u64, key as u64]
}

/// The key [`halves`] split.
pub fn whole([hi, lo]: [u64; 2]) -> Key {
    (u128::from(hi) << 64) | u128::from(lo)
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
        let key = packed(key);
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
        self.find(halves(key)).ok().map(|i| self.slots[i].value)
    }

    /// Asks the CPU to fetch the line `key`'s probe starts on.
    pub fn prefetch(&self, key: Key) {
        if !self.slots.is_empty() {
            mem_prefetch::prefetch_read_data::<_, 3>(&self.slots[self.home(halves(key))]);
        }
    }

    /// Sets `key` to `value`; the value it had, if any.
    pub fn insert(&mut self, key: Key, value: u32) -> Option<u32> {
        assert_ne!(value, EMPTY, "u32::MAX marks a vacant slot");
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let key = halves(key);
        match self.find(key) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].value, value)),
            Err(i) => {
                self.slots[i] = Slot {
                    key: packed(key),
                    value,
                };
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
        let mut hole = self.find(halves(key)).ok()?;
        let value = self.slots[hole].value;
        let mask = self.slots.len() - 1;
        // Backward shift: each later slot of the run whose home does not
        // lie strictly between the hole and it moves into the hole.
        let mut i = (hole + 1) & mask;
        while self.slots[i].value != EMPTY {
            let home = self.home(unpacked(self.slots[i].key));
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
            .map(|s| (whole(unpacked(s.key)), s.value))
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(Self::MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![Slot::VACANT; size]);
        for slot in old.into_iter().filter(|s| s.value != EMPTY) {
            if let Err(i) = self.find(unpacked(slot.key)) {
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
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    /// Each lane on its own, 64 bits, must not collide over a million ids
    /// of the shapes desks use (a collision there would be a one in ten
    /// million chance for a good hash; the two lanes together make 128).
    #[test]
    fn index_keys_do_not_collide_even_per_lane_over_a_million_ids() {
        let shapes: [fn(u64) -> String; 4] = [
            |i| i.to_string(),
            |i| format!("c{i:08}"),
            |i| format!("客户-{i}"),
            |i| format!("tb-conversation-{i}-2026-11-11T00:00:00+08:00"),
        ];
        let (mut keys, mut high, mut low) = (HashSet::new(), HashSet::new(), HashSet::new());
        for shape in shapes {
            for i in 0..250_000 {
                let k = key_of(&shape(i));
                assert!(keys.insert(k));
                assert!(high.insert((k >> 64) as u64), "lane a collides at {:?}", shape(i));
                assert!(low.insert(k as u64), "lane b collides at {:?}", shape(i));
            }
        }
    }

    /// An index's home slot is the low bits of the key's high word: over
    /// sequential ids they must fall as uniformly random values would,
    /// leaving about 1/e of the slots of a table as large as the set empty
    /// (24 109 of 65 536, give or take 150).
    #[test]
    fn sequential_ids_spread_over_an_indexs_slots() {
        for shape in [|i: u32| format!("c{i}"), |i: u32| format!("customer-{i:010}")] {
            let mut used = vec![false; 1 << 16];
            for i in 0..1u32 << 16 {
                used[((key_of(&shape(i)) >> 64) as usize) & 0xffff] = true;
            }
            let empty = used.iter().filter(|&&u| !u).count();
            assert!(
                (23_500..=24_700).contains(&empty),
                "{empty} empty slots for {:?}",
                shape(0)
            );
        }
    }

    #[test]
    fn a_slot_takes_20_bytes_and_its_key_comes_back_whole() {
        assert_eq!(std::mem::size_of::<Slot>(), 20);
        let key = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(whole(unpacked(packed(halves(key)))), key);
    }

    #[test]
    fn every_length_and_every_bit_of_an_id_moves_its_key() {
        let mut seen = HashSet::new();
        for n in 0..=128usize {
            let base = vec![b'x'; n];
            assert!(
                seen.insert(key_of(std::str::from_utf8(&base).expect("ascii"))),
                "length {n}"
            );
            for at in 0..n {
                for bit in 0..7 {
                    let mut id = base.clone();
                    id[at] ^= 1 << bit;
                    let key = key_of(std::str::from_utf8(&id).expect("ascii"));
                    assert!(seen.insert(key), "length {n}, byte {at}, bit {bit}");
                    // A one-bit change flips about half of each lane.
                    let d = key ^ key_of(std::str::from_utf8(&base).expect("ascii"));
                    let (da, db) = (((d >> 64) as u64).count_ones(), (d as u64).count_ones());
                    assert!((12..=52).contains(&da) && (12..=52).contains(&db), "{da} {db} bits");
                }
            }
        }
        // Trailing zero bytes are read as the words' padding: the length
        // tells these apart.
        assert!(seen.insert(key_of("a\0")) && seen.insert(key_of("a\0\0")));
    }

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
