//! The queue of alert-rule deadlines: `(deadline ms, shop, agent)`
//! entries, taken earliest first once due.
//!
//! A binary heap did this job, but on a busy desk it holds tens of
//! thousands of entries (a superseded deadline stays until it comes due),
//! and every pop walked a path from its root to a leaf through cold memory.
//! Deadlines are nearly always a fixed span after the event that set them,
//! so here they are appended to a bucket per second of deadline, and a
//! bucket is sorted only when its second comes due. A push touches the
//! tail of a bucket written moments before; a pop reads the next entry of
//! a sorted vector. Entries still come out in exactly the heap's order,
//! deadline to the ms, then shop, then agent.
//!
//! The buckets of the next [`RING`] seconds are a ring indexed by second,
//! so a push finds its bucket by a subtraction; only deadlines further out
//! (a threshold of hours) go to a tree. Found in a tree, a bucket cost
//! 70–140 instructions a push on the engine bench's desk, whose deadlines
//! spread over the 15 minutes of the slow-average window.

use std::collections::{BTreeMap, VecDeque};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `(deadline ms, shop, agent)`.
pub type Entry = (i64, u32, u32);

/// Width of a bucket, ms.
const BUCKET_MS: i64 = 1_000;

/// Buckets held in the ring: a little over an hour ahead of the earliest.
const RING: usize = 4_096;

fn bucket(deadline: i64) -> i64 {
    deadline.div_euclid(BUCKET_MS)
}

/// Entries earliest first; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Deadlines {
    /// Entries of the bucket taken out of `later` last (and of any earlier
    /// bucket pushed since), sorted; those before `due_next` are taken.
    due: Vec<Entry>,
    due_next: usize,
    /// The bucket `due` stands for while it holds entries: every entry
    /// of `later` is in a later bucket.
    due_bucket: Option<i64>,
    /// Unsorted entries of bucket `base + i` at `i`, all after
    /// `due_bucket`; `base` means nothing while the ring is empty.
    later: VecDeque<Vec<Entry>>,
    base: i64,
    /// Unsorted entries of buckets that were [`RING`] or more past `base`
    /// when pushed. A bucket may have entries both here and in the ring.
    far: BTreeMap<i64, Vec<Entry>>,
    /// Emptied bucket vectors, kept for reuse.
    spare: Vec<Vec<Entry>>,
}

impl Deadlines {
    /// Adds `entry`.
    pub fn push(&mut self, entry: Entry) {
        let b = bucket(entry.0);
        if self.due_bucket.is_some_and(|due| b <= due) {
            let pending = &self.due[self.due_next..];
            let at = self.due_next + pending.partition_point(|e| *e <= entry);
            self.due.insert(at, entry);
            return;
        }
        if self.later.is_empty() {
            self.base = b;
            if self.later.capacity() == 0 {
                // The whole ring at once (96 KiB): grown by doubling, the
                // blocks it left behind held ~2 MiB of a 1 000-agent
                // desk's memory that nothing else reused.
                self.later.reserve_exact(RING);
            }
        }
        if b < self.base {
            // Earlier than every bucket in the ring (and after the due one).
            let gap = usize::try_from(self.base - b).unwrap_or(usize::MAX);
            if gap.saturating_add(self.later.len()) > RING {
                self.push_far(b, entry);
                return;
            }
            for _ in 0..gap {
                self.later.push_front(Vec::new());
            }
            self.base = b;
        }
        let i = usize::try_from(b - self.base).unwrap_or(usize::MAX);
        if i >= RING {
            self.push_far(b, entry);
            return;
        }
        while self.later.len() <= i {
            self.later.push_back(self.spare.pop().unwrap_or_default());
        }
        self.later[i].push(entry);
    }

    fn push_far(&mut self, b: i64, entry: Entry) {
        let spare = &mut self.spare;
        self.far
            .entry(b)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(entry);
    }

    /// Takes the entries of the earliest bucket if its second is at or
    /// before `now`'s.
    fn take_due_bucket(&mut self, now: i64) -> Option<(i64, Vec<Entry>)> {
        while self.later.front().is_some_and(Vec::is_empty) {
            let empty = self.later.pop_front().expect("a front was just read");
            self.spare.push(empty);
            self.base += 1;
        }
        let in_ring = (!self.later.is_empty()).then_some(self.base);
        let far = self.far.first_key_value().map(|(&b, _)| b);
        let b = match (in_ring, far) {
            (Some(r), Some(f)) => r.min(f),
            (r, f) => r.or(f)?,
        };
        if b > bucket(now) {
            return None;
        }
        let mut entries = Vec::new();
        if in_ring == Some(b) {
            entries = self.later.pop_front().expect("the ring is not empty");
            self.base += 1;
        }
        if far == Some(b) {
            let (_, mut more) = self.far.pop_first().expect("its key was just read");
            entries.append(&mut more);
            self.spare.push(more);
        }
        Some((b, entries))
    }

    /// Takes the earliest entry if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: i64) -> Option<Entry> {
        loop {
            if let Some(&next) = self.due.get(self.due_next) {
                if next.0 > now {
                    return None;
                }
                self.due_next += 1;
                return Some(next);
            }
            // `due` is spent: sort the next bucket if its second has come.
            let (b, mut entries) = self.take_due_bucket(now)?;
            entries.sort_unstable();
            let mut spent = std::mem::replace(&mut self.due, entries);
            spent.clear();
            self.spare.push(spent);
            self.due_next = 0;
            self.due_bucket = Some(b);
        }
    }

    /// Entries not yet taken, in no particular order.
    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.due[self.due_next..]
            .iter()
            .chain(self.later.iter().flatten())
            .chain(self.far.values().flatten())
    }

    /// Number of entries not yet taken.
    pub fn len(&self) -> usize {
        self.due.len() - self.due_next + self.later.iter().chain(self.far.values()).map(Vec::len).sum::<usize>()
    }
}

/// Written as the `BinaryHeap<Reverse<Entry>>` it replaced wrote itself: a
/// sequence of entries in no particular order. Snapshots read either way.
impl Serialize for Deadlines {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for entry in self.iter() {
            seq.serialize_element(entry)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Deadlines {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut d = Deadlines::default();
        for entry in Vec::<Entry>::deserialize(deserializer)? {
            d.push(entry);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use proptest::prelude::*;

    use super::*;

    /// What the engine did before: a min-heap, popped while due.
    fn heap_pop_due(heap: &mut BinaryHeap<Reverse<Entry>>, now: i64) -> Option<Entry> {
        if heap.peek().is_some_and(|Reverse(e)| e.0 <= now) {
            heap.pop().map(|Reverse(e)| e)
        } else {
            None
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Push at `now + offset` (offsets reach back before `now` too).
        Push(i64, u32, u32),
        /// Move `now` forward and take everything due.
        Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (-1_500i64..4_000, 0u32..3, 0u32..3).prop_map(|(o, s, a)| Op::Push(o, s, a)),
            1 => (0i64..2_500).prop_map(Op::Advance),
        ]
    }

    /// Offsets and steps in seconds, up to twice the ring ahead: entries
    /// pushed far, then into the ring once it has moved on.
    fn far_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (-5i64..2 * RING as i64, 0u32..3, 0u32..3).prop_map(|(o, s, a)| Op::Push(o * 1_000 + o % 7, s, a)),
            1 => (0i64..RING as i64).prop_map(|by| Op::Advance(by * 1_000)),
        ]
    }

    proptest! {
        #[test]
        fn entries_come_out_in_the_order_a_heap_gives(ops in proptest::collection::vec(op(), 1..300)) {
            same_as_a_heap(ops)?;
        }

        #[test]
        fn entries_an_hour_and_more_ahead_come_out_in_the_order_a_heap_gives(ops in proptest::collection::vec(far_op(), 1..300)) {
            same_as_a_heap(ops)?;
        }
    }

    fn same_as_a_heap(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut heap = BinaryHeap::new();
        let mut buckets = Deadlines::default();
        let mut now = 10_000i64;
        for op in ops {
            match op {
                Op::Push(offset, s, a) => {
                    heap.push(Reverse((now + offset, s, a)));
                    buckets.push((now + offset, s, a));
                }
                Op::Advance(by) => {
                    now += by;
                    loop {
                        let want = heap_pop_due(&mut heap, now);
                        prop_assert_eq!(buckets.pop_due(now), want);
                        if want.is_none() {
                            break;
                        }
                    }
                }
            }
            prop_assert_eq!(buckets.len(), heap.len());
        }
        Ok(())
    }

    #[test]
    fn an_entry_waits_for_its_ms_not_its_second() {
        let mut d = Deadlines::default();
        d.push((5_700, 0, 0));
        d.push((5_200, 1, 0));
        assert_eq!(d.pop_due(5_199), None);
        assert_eq!(d.pop_due(5_200), Some((5_200, 1, 0)));
        assert_eq!(d.pop_due(5_699), None);
        // Pushed into the second already being taken, before its rest.
        d.push((5_300, 2, 0));
        assert_eq!(d.pop_due(5_699), Some((5_300, 2, 0)));
        assert_eq!(d.pop_due(5_699), None);
        assert_eq!(d.pop_due(5_700), Some((5_700, 0, 0)));
        assert_eq!(d.pop_due(i64::MAX), None);
    }

    #[test]
    fn stored_as_the_heap_was() {
        let entries = [(7_000, 1, 2), (3_000, 0, 1), (3_000, 0, 0), (-5, 4, 4), (90_000, 2, 2)];
        let heap: BinaryHeap<Reverse<Entry>> = entries.iter().copied().map(Reverse).collect();
        let from_heap: Deadlines = postcard::from_bytes(&postcard::to_allocvec(&heap).unwrap()).unwrap();
        let mut d = Deadlines::default();
        for e in entries {
            d.push(e);
        }
        // Partly taken: only what is left is written.
        assert_eq!(d.pop_due(-5), Some((-5, 4, 4)));
        let back: BinaryHeap<Reverse<Entry>> = postcard::from_bytes(&postcard::to_allocvec(&d).unwrap()).unwrap();
        let mut sorted: Vec<Entry> = back.into_iter().map(|Reverse(e)| e).collect();
        sorted.sort_unstable();
        assert_eq!(sorted, [(3_000, 0, 0), (3_000, 0, 1), (7_000, 1, 2), (90_000, 2, 2)]);
        let mut from_heap = from_heap;
        let drained: Vec<Entry> = std::iter::from_fn(|| from_heap.pop_due(i64::MAX)).collect();
        let mut all = entries.to_vec();
        all.sort_unstable();
        assert_eq!(drained, all);
    }
}
