//! A slab: values in a vector, addressed by `u32` index, with freed slots
//! reused. The engine interns conversation and customer ids into slabs so
//! the hot path follows indices instead of hashing strings again.

use std::ops::{Index, IndexMut};

use serde::{Deserialize, Serialize};

/// Values addressed by a stable `u32` index until removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value` and returns its index.
    pub fn insert(&mut self, value: T) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(ix) => {
                self.slots[ix as usize] = Some(value);
                ix
            }
            None => {
                let ix = u32::try_from(self.slots.len()).expect("fewer than 2^32 live values per slab");
                self.slots.push(Some(value));
                ix
            }
        }
    }

    /// Takes the value at `ix` out; its slot will be reused.
    pub fn remove(&mut self, ix: u32) -> Option<T> {
        let v = self.slots.get_mut(ix as usize)?.take()?;
        self.len -= 1;
        self.free.push(ix);
        Some(v)
    }

    /// The value at `ix`, if live.
    pub fn get(&self, ix: u32) -> Option<&T> {
        self.slots.get(ix as usize)?.as_ref()
    }

    /// The value at `ix`, if live.
    pub fn get_mut(&mut self, ix: u32) -> Option<&mut T> {
        self.slots.get_mut(ix as usize)?.as_mut()
    }

    /// Asks the CPU to fetch the value at `ix` (if in range), so a later
    /// access finds it in cache: the line it starts on and the line the
    /// next slot starts on. Values of up to three lines are then covered
    /// with the hardware's adjacent-line fetch, without reading the slot.
    pub fn prefetch(&self, ix: u32) {
        let ix = ix as usize;
        if let Some(slot) = self.slots.get(ix) {
            mem_prefetch::prefetch_read_data::<_, 3>(slot);
        }
        if let Some(next) = self.slots.get(ix + 1) {
            mem_prefetch::prefetch_read_data::<_, 3>(next);
        }
    }

    /// Live values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Live values, in index order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }

    /// Live values with their indices, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i as u32, v.as_ref()?)))
    }
}

impl<T> Index<u32> for Slab<T> {
    type Output = T;
    fn index(&self, ix: u32) -> &T {
        self.get(ix).expect("index of a live slab value")
    }
}

impl<T> IndexMut<u32> for Slab<T> {
    fn index_mut(&mut self, ix: u32) -> &mut T {
        self.get_mut(ix).expect("index of a live slab value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused_and_others_keep_their_index() {
        let mut s = Slab::default();
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
}
