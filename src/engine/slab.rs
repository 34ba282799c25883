//! A slab: values addressed by `u32` index, with freed slots reused. The
//! engine interns conversation and customer ids into slabs so the hot
//! path follows indices instead of hashing strings again.
//!
//! Two ways to keep the slots. [`Flat`], one vector: one step from index
//! to value, for conversations, which are closed and their slots reused,
//! so the vector stops growing once a desk is busy. [`Chunks`], vectors
//! of 64 to 128 KiB, each but the first allocated at that size and never
//! moved, for customers, who are kept 26 h and so grow through a big day:
//! a growing vector is
//! copied into a block twice its size, which takes fresh memory for twice
//! what it holds, and past a few hundred KiB each block is fresh huge
//! pages the kernel zeroes. (Chunked conversations were measured too: the
//! hot path indexes conversations several times per event, and the extra
//! step cost more than the copies it saved.)

use std::ops::{Index, IndexMut};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a slab keeps its slots, in index order.
pub trait Slots: Default {
    type Value;
    fn slot(&self, ix: usize) -> Option<&Option<Self::Value>>;
    fn slot_mut(&mut self, ix: usize) -> Option<&mut Option<Self::Value>>;
    /// Appends a slot holding `value`; returns its index.
    fn push(&mut self, value: Self::Value) -> usize;
    fn iter(&self) -> impl Iterator<Item = &Option<Self::Value>>;
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<Self::Value>>;
}

/// Slots in one vector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flat<T>(Vec<Option<T>>);

impl<T> Default for Flat<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Slots for Flat<T> {
    type Value = T;

    fn slot(&self, ix: usize) -> Option<&Option<T>> {
        self.0.get(ix)
    }

    fn slot_mut(&mut self, ix: usize) -> Option<&mut Option<T>> {
        self.0.get_mut(ix)
    }

    fn push(&mut self, value: T) -> usize {
        self.0.push(Some(value));
        self.0.len() - 1
    }

    fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        self.0.iter()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<T>> {
        self.0.iter_mut()
    }
}

/// Slots in chunks of [`Chunks::LEN`]; every chunk but the last is full.
/// The first chunk grows as a vector does, by doubling up to its full
/// size, so a shop with a few dozen customers holds a few KiB, not a
/// chunk; every later one is allocated at its full size and never moves.
/// Stored as one sequence, as [`Flat`].
#[derive(Debug, Clone)]
pub struct Chunks<T>(Vec<Vec<Option<T>>>);

impl<T> Chunks<T> {
    /// log2 of [`Chunks::LEN`].
    const SHIFT: u32 = (65_536 / size_of::<Option<T>>()).next_power_of_two().ilog2();
    /// Slots per chunk: 64 to 128 KiB of them, a size the allocator serves
    /// from its ordinary pages.
    const LEN: usize = 1 << Self::SHIFT;
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T> Slots for Chunks<T> {
    type Value = T;

    fn slot(&self, ix: usize) -> Option<&Option<T>> {
        self.0.get(ix >> Self::SHIFT)?.get(ix & (Self::LEN - 1))
    }

    fn slot_mut(&mut self, ix: usize) -> Option<&mut Option<T>> {
        self.0.get_mut(ix >> Self::SHIFT)?.get_mut(ix & (Self::LEN - 1))
    }

    fn push(&mut self, value: T) -> usize {
        match self.0.last_mut() {
            Some(last) if last.len() < Self::LEN => {
                // A first chunk (or one restored short) growing: doubled,
                // never past a chunk.
                if last.len() == last.capacity() {
                    let grown = (last.len() * 2).clamp(4, Self::LEN);
                    last.reserve_exact(grown - last.len());
                }
            }
            Some(_) => self.0.push(Vec::with_capacity(Self::LEN)),
            None => self.0.push(Vec::with_capacity(4.min(Self::LEN))),
        }
        let chunk = self.0.len() - 1;
        let last = &mut self.0[chunk];
        last.push(Some(value));
        chunk * Self::LEN + last.len() - 1
    }

    fn iter(&self) -> impl Iterator<Item = &Option<T>> {
        self.0.iter().flatten()
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Option<T>> {
        self.0.iter_mut().flatten()
    }
}

impl<T: Serialize> Serialize for Chunks<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.iter().map(Vec::len).sum()))?;
        for slot in self.iter() {
            seq.serialize_element(slot)?;
        }
        seq.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunks<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let flat = Vec::<Option<T>>::deserialize(d)?;
        let mut chunks = Vec::with_capacity(flat.len().div_ceil(Self::LEN));
        let mut slots = flat.into_iter().peekable();
        while slots.peek().is_some() {
            // Sized to what it holds; a short last chunk grows as it fills.
            chunks.push(slots.by_ref().take(Self::LEN).collect());
        }
        Ok(Self(chunks))
    }
}

/// Values addressed by a stable `u32` index until removed, kept in `S`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Slab<S> {
    slots: S,
    free: Vec<u32>,
    len: usize,
}

impl<S: Slots> Slab<S> {
    /// Stores `value` and returns its index.
    pub fn insert(&mut self, value: S::Value) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(ix) => {
                *self.slots.slot_mut(ix as usize).expect("freed slots exist") = Some(value);
                ix
            }
            None => u32::try_from(self.slots.push(value)).expect("fewer than 2^32 live values per slab"),
        }
    }

    /// The index the next [`Slab::insert`] returns.
    pub fn next_index(&self) -> u32 {
        let slots = self.len + self.free.len();
        self.free.last().copied().unwrap_or(slots as u32)
    }

    /// Takes the value at `ix` out; its slot will be reused.
    pub fn remove(&mut self, ix: u32) -> Option<S::Value> {
        let v = self.slots.slot_mut(ix as usize)?.take()?;
        self.len -= 1;
        self.free.push(ix);
        Some(v)
    }

    /// The value at `ix`, if live.
    pub fn get(&self, ix: u32) -> Option<&S::Value> {
        self.slots.slot(ix as usize)?.as_ref()
    }

    /// The value at `ix`, if live.
    pub fn get_mut(&mut self, ix: u32) -> Option<&mut S::Value> {
        self.slots.slot_mut(ix as usize)?.as_mut()
    }

    /// Asks the CPU to fetch the value at `ix` (if in range), so a later
    /// access finds it in cache: the line it starts on and the line the
    /// next slot starts on. Values of up to three lines are then covered
    /// with the hardware's adjacent-line fetch, without reading the slot.
    pub fn prefetch(&self, ix: u32) {
        let ix = ix as usize;
        if let Some(slot) = self.slots.slot(ix) {
            mem_prefetch::prefetch_read_data::<_, 3>(slot);
        }
        if let Some(next) = self.slots.slot(ix + 1) {
            mem_prefetch::prefetch_read_data::<_, 3>(next);
        }
    }

    /// Live values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Live values, in index order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut S::Value> {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }

    /// Live values with their indices, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &S::Value)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as u32, v.as_ref()?)))
    }
}

impl<S: Slots> Index<u32> for Slab<S> {
    type Output = S::Value;
    fn index(&self, ix: u32) -> &S::Value {
        self.get(ix).expect("index of a live slab value")
    }
}

impl<S: Slots> IndexMut<u32> for Slab<S> {
    fn index_mut(&mut self, ix: u32) -> &mut S::Value {
        self.get_mut(ix).expect("index of a live slab value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused_and_others_keep_their_index() {
        let mut s = Slab::<Flat<_>>::default();
        let a = s.insert("a");
        let b = s.insert("b");
        let c = s.insert("c");
        assert_eq!(s.remove(b), Some("b"));
        assert_eq!(s.remove(b), None);
        assert_eq!(s.len(), 2);
        let d = s.insert("d");
        assert_eq!(d, b);
        assert_eq!((s[a], s[c], s[d]), ("a", "c", "d"));
        assert_eq!(s.iter().map(|(_, v)| *v).collect::<Vec<_>>(), ["a", "d", "c"]);
    }

    /// Slots per chunk of `u64` values: 16-byte slots, 4 096 a chunk.
    const LEN: u32 = 4_096;

    /// Three and a half chunks, every thousandth value removed.
    fn spanning() -> Slab<Chunks<u64>> {
        assert_eq!(Chunks::<u64>::LEN, LEN as usize);
        let mut s = Slab::default();
        for v in 0..LEN * 7 / 2 {
            assert_eq!(s.insert(u64::from(v)), v);
        }
        for ix in (0..LEN * 7 / 2).step_by(1_000) {
            assert_eq!(s.remove(ix), Some(u64::from(ix)));
        }
        s
    }

    #[test]
    fn next_index_is_the_index_the_next_insert_returns() {
        let mut s = Slab::<Chunks<u64>>::default();
        for v in 0..3 * LEN as u64 {
            let next = s.next_index();
            assert_eq!(s.insert(v), next);
            if v % 3 == 0 {
                s.remove((v / 2) as u32);
            }
        }
        while s.len() > 0 {
            let ix = s.iter().next().expect("live").0;
            s.remove(ix);
            let next = s.next_index();
            assert_eq!(s.insert(7), next);
            s.remove(next);
        }
    }

    #[test]
    fn chunked_values_keep_their_index_and_freed_slots_in_any_chunk_are_reused() {
        let mut s = spanning();
        assert_eq!(s.slots.0.len(), 4);
        let removed = (0..LEN * 7 / 2).step_by(1_000).count();
        assert_eq!(s.len(), (LEN * 7 / 2) as usize - removed);
        assert!(s.iter().all(|(ix, &v)| u64::from(ix) == v && ix % 1_000 != 0));
        assert_eq!(s.get(LEN * 7 / 2), None);
        // Freed slots first, the last freed first; then the next new slot.
        assert_eq!(s.insert(1), 14_000);
        let refill: Vec<u32> = (1..removed).map(|_| s.insert(2)).collect();
        assert_eq!(refill.last(), Some(&0));
        assert_eq!(s.insert(3), LEN * 7 / 2);
        assert_eq!(s.slots.0.len(), 4);
    }

    #[test]
    fn a_small_chunked_slab_holds_about_what_it_needs_and_no_chunk_passes_its_size() {
        let mut s = Slab::<Chunks<u64>>::default();
        for v in 0..100 {
            s.insert(v);
        }
        assert_eq!(s.slots.0[0].capacity(), 128);
        for v in 0..10_000 {
            s.insert(v);
        }
        assert!(s.slots.0.iter().all(|c| c.capacity() == LEN as usize));
        let restored: Slab<Chunks<u64>> =
            postcard::from_bytes(&postcard::to_allocvec(&s).expect("serialize")).expect("deserialize");
        assert_eq!(
            restored.slots.0.last().map(Vec::capacity),
            Some(10_100 - 2 * LEN as usize)
        );
    }

    #[test]
    fn a_value_past_the_first_chunk_never_moves_as_the_slab_grows() {
        let mut s = Slab::<Chunks<u64>>::default();
        for v in 0..=LEN {
            s.insert(u64::from(v));
        }
        let at = std::ptr::from_ref(&s[LEN]).addr();
        for v in 0..100_000 {
            s.insert(v);
        }
        assert_eq!(s[LEN], u64::from(LEN));
        assert_eq!(std::ptr::from_ref(&s[LEN]).addr(), at);
    }

    #[test]
    fn a_chunked_slab_is_stored_as_a_flat_one_and_restores_to_the_same_slab() {
        let s = spanning();
        let bytes = postcard::to_allocvec(&s).expect("serialize");
        let flat = Slab {
            slots: Flat(s.slots.iter().copied().collect()),
            free: s.free.clone(),
            len: s.len,
        };
        assert_eq!(bytes, postcard::to_allocvec(&flat).expect("serialize"));
        let mut back: Slab<Chunks<u64>> = postcard::from_bytes(&bytes).expect("deserialize");
        assert!(back.iter().eq(s.iter()));
        assert_eq!((back.len(), back.slots.0.len()), (s.len(), 4));
        // The restored slab refills its freed slots, then its last chunk,
        // before it starts a fifth.
        for _ in 0..s.free.len() {
            back.insert(0);
        }
        assert_eq!(back.insert(9), LEN * 7 / 2);
        while back.insert(9) < 4 * LEN - 1 {}
        assert_eq!(back.slots.0.len(), 4);
        assert_eq!(back.insert(9), 4 * LEN);
        assert_eq!(back.slots.0.len(), 5);
    }
}
