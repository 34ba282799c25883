//! A set of `(u32, u32)` pairs emptied in one step: which (shop, agent)
//! pairs the engine has already listed for its next `settle`.
//!
//! A frame of a hundred events touches a few hundred partials, many of
//! them twice. Sorting the list to drop repeats cost about 100 instructions
//! per event; asking this set costs about ten. Slots carry the round they
//! were filled in, so emptying the set is one increment, not a sweep.

/// Keys seen since the last [`Seen::clear`].
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// `(key, round)`; a slot of another round is empty.
    slots: Vec<(u64, u32)>,
    /// The current round, never 0 once a key is in (slots start at 0).
    round: u32,
}

/// Smallest table; 1 024 bytes.
const MIN_SLOTS: usize = 64;

impl Seen {
    /// Adds `pair`; true if it was not in the set. `listed` holds the
    /// pairs added this round, to refill a table that grows.
    pub fn insert(&mut self, pair: (u32, u32), listed: &[(u32, u32)]) -> bool {
        if self.round == 0 {
            self.round = 1;
        }
        // At most half full, so probes stay short.
        if (listed.len() + 1) * 2 > self.slots.len() {
            self.grow(listed);
        }
        self.place(key(pair))
    }

    /// Empties the set.
    pub fn clear(&mut self) {
        self.round = self.round.wrapping_add(1);
        if self.round == 0 {
            // After 2^32 rounds old slots could look current: wipe them.
            self.slots.fill((0, 0));
            self.round = 1;
        }
    }

    fn place(&mut self, key: u64) -> bool {
        let mask = self.slots.len() - 1;
        let mut i = home(key, mask);
        loop {
            let slot = &mut self.slots[i];
            if slot.1 != self.round {
                *slot = (key, self.round);
                return true;
            }
            if slot.0 == key {
                return false;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self, listed: &[(u32, u32)]) {
        let len = ((listed.len() + 1) * 4).next_power_of_two().max(MIN_SLOTS);
        self.slots = vec![(0, 0); len];
        for &pair in listed {
            self.place(key(pair));
        }
    }
}

/// A pair as one word, the first above the second.
fn key((s, a): (u32, u32)) -> u64 {
    (u64::from(s) << 32) | u64::from(a)
}

/// The slot a key starts probing from: the top bits of a multiplicative
/// hash (shop and agent indexes are small and dense).
fn home(key: u64, mask: usize) -> usize {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_new_once_per_round() {
        let mut seen = Seen::default();
        let mut listed = Vec::new();
        for round in 0..3 {
            // Enough keys to grow the table twice in the first round.
            for i in 0..300u32 {
                let pair = (i % 7, i / 7 + round);
                if seen.insert(pair, &listed) {
                    listed.push(pair);
                }
                assert!(!seen.insert(pair, &listed), "{pair:?} listed twice");
            }
            let mut unique = listed.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), listed.len());
            assert_eq!(listed.len(), 300);
            seen.clear();
            listed.clear();
        }
    }

    #[test]
    fn clearing_forgets_every_key() {
        let mut seen = Seen::default();
        assert!(seen.insert((0, 5), &[]));
        assert!(!seen.insert((0, 5), &[(0, 5)]));
        seen.clear();
        assert!(seen.insert((0, 5), &[]));
    }

    #[test]
    fn the_round_counter_wrapping_empties_the_table() {
        let mut seen = Seen::default();
        assert!(seen.insert((0, 9), &[]));
        seen.round = u32::MAX;
        assert!(
            seen.insert((0, 9), &[(0, 9)]),
            "a slot of round 1 is not current in round u32::MAX"
        );
        seen.clear();
        assert_eq!(seen.round, 1);
        assert!(
            seen.insert((0, 9), &[]),
            "slots of round 1 were wiped when the counter wrapped"
        );
    }
}
