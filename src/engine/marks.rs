//! One partial's marks: for each customer the agent served, the latest
//! times the customer counted for, was replied to by, and paid the agent.
//!
//! A `HashMap` would do, but a lookup there reads the table's control
//! bytes, then the entry they point at: two cold lines, the second waiting
//! on the first. This table probes linearly over the entries themselves,
//! each holding its customer, so the line a lookup starts on follows from
//! the customer alone and [`MarkTable::prefetch`] can ask for it an event
//! ahead. An open conversation holding a mark (see
//! [`MarkTimes::held_by`]) keeps the slot its mark sat in when it took it,
//! and reads it straight from that index when it lets the mark go (closed,
//! transferred). An index gone stale (the table grew, or the clean-up
//! moved its entries) is seen by its key and the lookup goes the usual
//! way. Over a 48 M-event day of the 1 000-agent desk this read 13–19 % more
//! events a second than the hashbrown table it replaced (BENCHMARKS.md,
//! *A mark table of our own, again*).
//!
//! An entry is 20 bytes, where `(customer, three i64 times, holder)` took
//! 32: each time is held as milliseconds after the table's epoch in 32
//! bits (49.7 days), the customer and the holder in 32 bits each. A desk
//! holds a day of marks, many millions of them, so their bytes are fresh
//! memory and cache misses (BENCHMARKS.md, *Marks in 20 bytes*).
//!
//! What 32 bits cannot hold never shows. A time older than the epoch is
//! held as never only when it lies [`LOOKBACK`] or more before `now`,
//! where no window and no clean-up tells it from never. Any other time
//! that does not fit moves the epoch, re-encoding the table, to
//! [`LOOKBACK`] before the earliest time a window can still read. A time
//! that even then cannot be held (stamped more than ~47 days ahead of the
//! clock) is held as the latest that can be, which every window treats
//! alike until the clock comes within weeks of it.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::slab::{Flat, Slab};
use super::{ConvIx, Conversation, CustIx, MARK_RETENTION_MS, MarkTime};

/// How far before `now` the oldest time a window or the clean-up reads
/// may lie: the clean-up's retention, longer than any day (25 h with a
/// DST change) and any rolling window.
pub(super) const LOOKBACK: i64 = MARK_RETENTION_MS;

/// The latest time after the epoch an entry can hold, ms.
const SPAN: i64 = u32::MAX as i64 - 1;

/// One entry: a customer's marks as offsets from the table's epoch
/// ([`encode`]), read and written through [`MarkTimes`] and [`MarkMut`].
#[derive(Debug, Clone, Copy)]
struct Marks {
    counted: u32,
    replied: u32,
    paid: u32,
    /// The open conversation that holds this mark ([`NO_CONVERSATION`]:
    /// none): it is assigned to the mark's agent, names the mark's
    /// customer, and keeps later `counted` and `replied` times in its own
    /// fields until it is released (agent or customer changed, closed).
    /// A held mark is never dropped by the clean-up.
    held_by: ConvIx,
    /// The table's key.
    customer: CustIx,
}

/// [`MarkTimes::held_by`] of a mark no conversation holds.
pub(super) const NO_CONVERSATION: ConvIx = ConvIx::MAX;

/// `ts` as an offset from `epoch`: 0 for never or before the epoch, else
/// one more than the ms after it, at most [`SPAN`] + 1.
fn encode(ts: i64, epoch: i64) -> u32 {
    if ts < epoch {
        0
    } else {
        (ts.saturating_sub(epoch).min(SPAN) + 1) as u32
    }
}

fn decode(v: u32, epoch: i64) -> i64 {
    if v == 0 {
        i64::MIN
    } else {
        epoch.saturating_add(i64::from(v) - 1)
    }
}

/// A customer's marks as times: latest times the customer counted for,
/// was replied to by, and paid an agent (`i64::MIN` for never), and the
/// conversation holding the mark. Also how a table is stored in
/// snapshots, field for field the layout of the 32-byte entry it
/// replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MarkTimes {
    pub counted: i64,
    pub replied: i64,
    pub paid: i64,
    pub held_by: ConvIx,
}

impl MarkTimes {
    /// Every time never, held by no conversation: a new entry.
    pub const NEVER: Self = Self {
        counted: i64::MIN,
        replied: i64::MIN,
        paid: i64::MIN,
        held_by: NO_CONVERSATION,
    };

    /// `counted` and `replied` in force: the later of the table's and the
    /// holding conversation's.
    pub fn counted_replied(&self, conversations: &Slab<Flat<Conversation>>) -> (i64, i64) {
        match conversations.get(self.held_by) {
            Some(c) if self.held_by != NO_CONVERSATION => (self.counted.max(c.counted), self.replied.max(c.replied)),
            _ => (self.counted, self.replied),
        }
    }

    /// The latest of the three times (`i64::MIN`: all never).
    pub fn latest(&self) -> i64 {
        self.counted.max(self.replied).max(self.paid)
    }
}

impl Marks {
    /// Whether this slot holds a customer's marks ([`EMPTY`] does not).
    fn is_held(&self) -> bool {
        self.customer != EMPTY_CUSTOMER
    }

    fn times(&self, epoch: i64) -> MarkTimes {
        MarkTimes {
            counted: decode(self.counted, epoch),
            replied: decode(self.replied, epoch),
            paid: decode(self.paid, epoch),
            held_by: self.held_by,
        }
    }

    fn new(customer: CustIx, t: &MarkTimes, epoch: i64) -> Self {
        Self {
            counted: encode(t.counted, epoch),
            replied: encode(t.replied, epoch),
            paid: encode(t.paid, epoch),
            held_by: t.held_by,
            customer,
        }
    }
}

/// One entry of a table, to be written: its times move only forward.
pub(super) struct MarkMut<'t> {
    marks: &'t mut Marks,
    epoch: i64,
    /// Made by the lookup that returned it.
    new: bool,
}

impl MarkMut<'_> {
    /// Whether the lookup that returned this entry made it: the caller
    /// lists a new mark for the clean-up ([`MarkTable::forget_if_due`]).
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// Moves `counted` to `ts` at least.
    pub fn raise_counted(&mut self, ts: i64) {
        self.marks.counted = self.marks.counted.max(encode(ts, self.epoch));
    }

    /// Moves `replied` to `ts` at least.
    pub fn raise_replied(&mut self, ts: i64) {
        self.marks.replied = self.marks.replied.max(encode(ts, self.epoch));
    }

    /// Moves `time` (counted or replied) to `ts` at least.
    pub fn raise(&mut self, time: MarkTime, ts: i64) {
        match time {
            MarkTime::Counted => self.raise_counted(ts),
            MarkTime::Replied => self.raise_replied(ts),
        }
    }

    /// Moves `paid` to `ts` at least.
    pub fn raise_paid(&mut self, ts: i64) {
        self.marks.paid = self.marks.paid.max(encode(ts, self.epoch));
    }

    pub fn held_by(&self) -> ConvIx {
        self.marks.held_by
    }

    pub fn set_held_by(&mut self, c: ConvIx) {
        self.marks.held_by = c;
    }

    #[cfg(test)]
    pub fn times(&self) -> MarkTimes {
        self.marks.times(self.epoch)
    }
}

/// Customer → marks, whose entries can be reached again by slot: linear
/// probing from the slot the customer's hash picks, at most 8/10 full,
/// growing fourfold when it would be fuller ([`MarkTable::grow`]).
#[derive(Debug, Clone, Default)]
pub(super) struct MarkTable {
    /// No slots, or a power of two of them; [`EMPTY`] where none is held.
    slots: Vec<Marks>,
    /// Entries held.
    len: usize,
    /// What the entries' times count from (see the module's docs).
    epoch: i64,
    /// Until this `now`, a time too far ahead to hold is held as the
    /// latest that can be without looking for an epoch that would hold
    /// it: the last look found none. A sender whose clock runs months
    /// ahead thus costs one pass over the table a day, not one an event.
    far_until: Option<i64>,
}

/// The customer of an empty slot: no slab holds 2^32 customers.
const EMPTY_CUSTOMER: CustIx = CustIx::MAX;
/// An empty slot.
const EMPTY: Marks = Marks {
    counted: 0,
    replied: 0,
    paid: 0,
    held_by: NO_CONVERSATION,
    customer: EMPTY_CUSTOMER,
};

/// The hash of a customer index. Indices are dense slab indices: the
/// multiply by an odd constant spreads every bit into the high ones, whose
/// bits 32 and up pick the slot ([`MarkTable::home`]).
fn hash(customer: CustIx) -> u64 {
    u64::from(customer).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl MarkTable {
    /// The slot the customer's probe starts on; the table has slots.
    fn home(&self, customer: CustIx) -> usize {
        (hash(customer) >> 32) as usize & (self.slots.len() - 1)
    }

    /// Where the customer's marks are (`Ok`), or the empty slot where
    /// they would go (`Err`); the table has slots, one of them empty.
    fn find(&self, customer: CustIx) -> Result<usize, usize> {
        let mask = self.slots.len() - 1;
        let mut i = self.home(customer);
        loop {
            match self.slots[i].customer {
                c if c == customer => return Ok(i),
                EMPTY_CUSTOMER => return Err(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// [`MarkTable::find`], or `None` while the table has no slots.
    fn find_index_or_free(&self, customer: CustIx) -> Option<Result<usize, usize>> {
        (!self.slots.is_empty()).then(|| self.find(customer))
    }

    /// The slot holding the customer's marks, if any.
    fn find_index(&self, customer: CustIx) -> Option<usize> {
        self.find_index_or_free(customer)?.ok()
    }

    /// Puts `m`, whose customer the table does not hold, in the empty slot
    /// its probe ends on; returns the slot.
    fn place(&mut self, m: Marks) -> usize {
        let i = self.find(m.customer).expect_err("a customer placed once");
        self.slots[i] = m;
        i
    }

    /// Empty slots enough for `n` entries at most 8/10 full.
    fn empty_slots(n: usize) -> Vec<Marks> {
        vec![EMPTY; (n * 10 / 8 + 1).next_power_of_two().max(8)]
    }

    /// Makes the slots four times as many (at least 8) and places every
    /// entry again, so the table runs between 1/5 and 4/5 full. Doubling
    /// instead (2/5 to 4/5) applied about 5 % fewer events a second over a
    /// day, for the same memory a busy partial (BENCHMARKS.md, *A mark
    /// table of our own, again*): longer probes over cold lines.
    fn grow(&mut self) {
        let size = (self.slots.len() * 4).max(8);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; size]);
        for m in old.into_iter().filter(Marks::is_held) {
            self.place(m);
        }
    }

    /// Asks for the line the customer's probe starts on.
    pub fn prefetch(&self, customer: CustIx) {
        if !self.slots.is_empty() {
            mem_prefetch::prefetch_read_data::<_, 3>(&self.slots[self.home(customer)]);
        }
    }

    /// Asks for the line of `slot`, where a held mark was taken from
    /// ([`MarkTable::get_mut_at`] looks there first).
    pub fn prefetch_slot(&self, slot: u32) {
        if let Some(m) = self.slots.get(slot as usize) {
            mem_prefetch::prefetch_read_data::<_, 3>(m);
        }
    }

    pub fn get(&self, customer: CustIx) -> Option<MarkTimes> {
        self.find_index(customer).map(|i| self.slots[i].times(self.epoch))
    }

    pub fn contains(&self, customer: CustIx) -> bool {
        self.get(customer).is_some()
    }

    /// The customer's marks, a new one (all times never) if it has none,
    /// and the slot they are in until the table next grows or the
    /// clean-up moves them back; ready to take times up to `latest` at
    /// `now` (the engine's, which never goes back). The caller raises a
    /// new entry to `latest` before anything else reads the table.
    pub fn entry(&mut self, customer: CustIx, latest: i64, now: i64) -> (u32, MarkMut<'_>) {
        self.fit(latest, now);
        let epoch = self.epoch;
        let (i, new) = self.slot(customer);
        let slot = u32::try_from(i).expect("fewer than 2^32 slots");
        (
            slot,
            MarkMut {
                marks: &mut self.slots[i],
                epoch,
                new,
            },
        )
    }

    /// The customer's entry, inserted with every time never if it has
    /// none, and whether it was. A new customer takes the empty slot its
    /// lookup ended on, unless the table must grow first.
    fn slot(&mut self, customer: CustIx) -> (usize, bool) {
        let fits = (self.len + 1) * 10 <= self.slots.len() * 8;
        let free = match self.find_index_or_free(customer) {
            Some(Ok(i)) => return (i, false),
            Some(Err(i)) if fits => Some(i),
            _ => None,
        };
        self.len += 1;
        let m = Marks::new(customer, &MarkTimes::NEVER, self.epoch);
        let i = match free {
            Some(i) => {
                self.slots[i] = m;
                i
            }
            None => {
                self.grow();
                self.place(m)
            }
        };
        (i, true)
    }

    /// The customer's marks, looked for first in `slot`; ready to take
    /// times up to `latest` at `now`, as [`MarkTable::entry`].
    pub fn get_mut_at(&mut self, customer: CustIx, slot: u32, latest: i64, now: i64) -> Option<MarkMut<'_>> {
        self.fit(latest, now);
        let at = match self.slots.get(slot as usize) {
            Some(m) if m.customer == customer => Some(slot as usize),
            _ => self.find_index(customer),
        };
        let epoch = self.epoch;
        at.map(|i| MarkMut {
            marks: &mut self.slots[i],
            epoch,
            new: false,
        })
    }

    /// Every (customer, marks), in table order.
    pub fn iter(&self) -> impl Iterator<Item = (CustIx, MarkTimes)> + '_ {
        self.slots
            .iter()
            .filter(|m| m.is_held())
            .map(|m| (m.customer, m.times(self.epoch)))
    }

    /// Forgets the customer's mark if no conversation holds it and its
    /// latest time is `horizon` or before; else returns the time to list
    /// it under again for the next clean-up (its latest time, or
    /// `horizon` if it is held and older), as long as it is in the table.
    /// The hourly clean-up calls this for each mark listed under the
    /// horizon's hour or before ([`super::hours`]); it used to read every
    /// entry of every table holding one that old, which from a desk's
    /// second day on was every table (BENCHMARKS.md, *The marks' clean-up
    /// compares times as held, then marks listed by the hour …*).
    pub fn forget_if_due(&mut self, customer: CustIx, horizon: i64) -> Option<i64> {
        let i = self.find_index(customer)?;
        let times = self.slots[i].times(self.epoch);
        let latest = times.latest();
        if times.held_by == NO_CONVERSATION && latest <= horizon {
            self.remove_at(i);
            return None;
        }
        Some(latest.max(horizon))
    }

    /// Keeps the marks `keep` returns true for, in one pass over the
    /// slots: each that goes is taken out where it is
    /// ([`MarkTable::remove_at`]).
    #[cfg(test)]
    pub fn retain(&mut self, mut keep: impl FnMut(&MarkTimes) -> bool) {
        let mut i = 0;
        while i < self.slots.len() {
            let m = self.slots[i];
            if !m.is_held() || keep(&m.times(self.epoch)) {
                i += 1;
            } else {
                // Slot `i` now holds the entry moved back into it, if
                // any: read it next.
                self.remove_at(i);
            }
        }
    }

    /// Empties slot `i` by moving back each later entry of its run that
    /// may sit there (its home is not between the hole and it), so every
    /// probe still meets its entry before an empty slot. An index that
    /// named a moved entry goes stale and is caught by its key.
    fn remove_at(&mut self, i: usize) {
        let mask = self.slots.len() - 1;
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let m = self.slots[j];
            if !m.is_held() {
                break;
            }
            let probed = j.wrapping_sub(self.home(m.customer)) & mask;
            if probed >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = m;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }

    /// Moves the epoch, if need be, so that `ts` is held as it is, or
    /// holding it as never cannot show (it lies [`LOOKBACK`] or more before
    /// `now`). The new epoch keeps every time a window may still read:
    /// [`LOOKBACK`] before the earliest of them when it can, so late
    /// events find room; if they span more than 49 days, the latest are
    /// held as the latest time that can be.
    fn fit(&mut self, ts: i64, now: i64) {
        if ts == i64::MIN || (ts >= self.epoch && ts.saturating_sub(self.epoch) <= SPAN) {
            return;
        }
        let floor = now.saturating_sub(LOOKBACK);
        if ts < self.epoch && ts <= floor {
            return;
        }
        if ts > self.epoch && self.far_until.is_some_and(|until| now < until) {
            return;
        }
        let (mut lo, mut hi) = (ts, ts);
        for m in self.slots.iter().filter(|m| m.is_held()) {
            let t = m.times(self.epoch);
            for t in [t.counted, t.replied, t.paid].into_iter().filter(|&t| t > floor) {
                (lo, hi) = (lo.min(t), hi.max(t));
            }
        }
        let epoch = lo.saturating_sub(LOOKBACK).max(hi.saturating_sub(SPAN)).min(lo);
        if epoch != self.epoch {
            self.rebase(epoch);
        }
        self.far_until = (ts.saturating_sub(epoch) > SPAN).then(|| now.saturating_add(LOOKBACK));
    }

    /// Re-encodes every entry from `epoch` on.
    fn rebase(&mut self, epoch: i64) {
        let old = self.epoch;
        for m in self.slots.iter_mut().filter(|m| m.is_held()) {
            *m = Marks::new(m.customer, &m.times(old), epoch);
        }
        self.epoch = epoch;
    }
}

/// Stored as a map from customer to [`MarkTimes`]: the bytes the
/// `HashMap` of 32-byte entries before it wrote, so snapshots read either
/// way.
impl Serialize for MarkTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (customer, marks) in self.iter() {
            map.serialize_entry(&customer, &marks)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for MarkTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = MarkTable;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of customer indices to marks")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MarkTable, A::Error> {
                let mut read = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<CustIx, MarkTimes>()? {
                    read.push(entry);
                }
                // From the oldest time held, so that every time of the
                // day the snapshot holds comes back as it was.
                let epoch = read
                    .iter()
                    .flat_map(|(_, t)| [t.counted, t.replied, t.paid])
                    .filter(|&t| t != i64::MIN)
                    .min()
                    .unwrap_or(0);
                let mut table = MarkTable {
                    slots: MarkTable::empty_slots(read.len()),
                    len: 0,
                    epoch,
                    far_until: None,
                };
                for (customer, times) in read {
                    let (i, _) = table.slot(customer);
                    table.slots[i] = Marks::new(customer, &times, epoch);
                }
                Ok(table)
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
    use crate::engine::hours::Hours;

    /// 2026-11-11 00:00 UTC.
    const T: i64 = 1_794_355_200_000;
    const DAY: i64 = 86_400_000;

    fn counted(t: &MarkTable, cu: CustIx) -> Option<i64> {
        t.get(cu).map(|m| m.counted)
    }

    #[test]
    fn a_new_entry_has_every_time_never_and_no_holder() {
        let mut t = MarkTable::default();
        let (_, m) = t.entry(7, T, T);
        assert_eq!(
            m.times(),
            MarkTimes {
                counted: i64::MIN,
                replied: i64::MIN,
                paid: i64::MIN,
                held_by: NO_CONVERSATION
            }
        );
        assert!(t.contains(7));
        assert!(!t.contains(8));
    }

    #[test]
    fn an_entry_takes_20_bytes() {
        assert_eq!(std::mem::size_of::<Marks>(), 20);
    }

    #[test]
    fn snapshot_bytes_equal_those_of_the_hash_map_it_replaced() {
        let mut t = MarkTable::default();
        t.entry(3, T, T).1.raise_counted(T);
        t.entry(4, T, T).1.raise_paid(T - 5);
        let mut map = HashMap::new();
        let never = MarkTimes::NEVER;
        map.insert(3u32, MarkTimes { counted: T, ..never });
        map.insert(4u32, MarkTimes { paid: T - 5, ..never });
        let mut ours: Vec<(CustIx, MarkTimes)> = t.iter().collect();
        ours.sort_by_key(|(cu, _)| *cu);
        let mut theirs: Vec<(CustIx, MarkTimes)> = map.iter().map(|(&cu, &m)| (cu, m)).collect();
        theirs.sort_by_key(|(cu, _)| *cu);
        assert_eq!(ours, theirs);
        // One entry each way, since the order of a map's entries is its own.
        let one: HashMap<u32, MarkTimes> = HashMap::from([(3, map[&3])]);
        let mut t3 = MarkTable::default();
        t3.entry(3, T, T).1.raise_counted(T);
        let bytes = postcard::to_allocvec(&one).expect("serializes");
        assert_eq!(postcard::to_allocvec(&t3).expect("serializes"), bytes);
        let back: MarkTable = postcard::from_bytes(&postcard::to_allocvec(&map).expect("serializes")).expect("reads");
        assert_eq!(back.get(3), Some(map[&3]));
        assert_eq!(back.get(4), Some(map[&4]));
    }

    #[test]
    fn a_stale_slot_still_finds_its_customer() {
        let mut t = MarkTable::default();
        let (slot, mut m) = t.entry(1, T, T);
        m.raise_counted(T + 10);
        // Growing the table moves entries to other slots.
        for cu in 2..1_000 {
            t.entry(cu, T + 1_000, T).1.raise_counted(T + i64::from(cu) * 10);
        }
        let at = |t: &mut MarkTable, cu, b| t.get_mut_at(cu, b, T, T).map(|m| m.times().counted);
        assert_eq!(at(&mut t, 1, slot), Some(T + 10));
        for (cu, stale) in [(500, slot), (999, u32::MAX), (2, 0)] {
            assert_eq!(at(&mut t, cu, stale), Some(T + i64::from(cu) * 10));
        }
        assert!(at(&mut t, 5_000, slot).is_none());
    }

    #[test]
    fn every_time_a_window_can_read_is_held_exactly() {
        let mut t = MarkTable::default();
        // Before any clock (a wall-clock engine not yet ticked): held.
        t.entry(1, T, 0).1.raise_counted(T);
        t.entry(2, T - 3_600_000, 0).1.raise_counted(T - 3_600_000);
        assert_eq!((counted(&t, 1), counted(&t, 2)), (Some(T), Some(T - 3_600_000)));
        // A late event just inside the lookback, and one 40 days ahead of
        // the clock (stamped in the future): both exact, the others kept.
        t.entry(3, T - LOOKBACK + 1, T).1.raise_counted(T - LOOKBACK + 1);
        t.entry(4, T + 40 * DAY, T).1.raise_counted(T + 40 * DAY);
        assert_eq!(counted(&t, 3), Some(T - LOOKBACK + 1));
        assert_eq!(counted(&t, 4), Some(T + 40 * DAY));
        assert_eq!((counted(&t, 1), counted(&t, 2)), (Some(T), Some(T - 3_600_000)));
        // Two months on, by the event clock: the new time is exact; those
        // no window reads any more may read as never.
        let later = T + 60 * DAY;
        t.entry(5, later, later).1.raise_counted(later);
        assert_eq!(counted(&t, 5), Some(later));
        for (cu, was) in [(1, T), (2, T - 3_600_000), (3, T - LOOKBACK + 1), (4, T + 40 * DAY)] {
            let read = counted(&t, cu).expect("kept until the clean-up");
            assert!(read == was || read == i64::MIN, "{read}");
        }
    }

    #[test]
    fn a_time_too_far_ahead_of_the_clock_is_held_as_the_latest_that_can_be() {
        let mut t = MarkTable::default();
        t.entry(1, T, T).1.raise_counted(T);
        t.entry(2, T + 100 * DAY, T).1.raise_counted(T + 100 * DAY);
        assert_eq!(counted(&t, 1), Some(T), "what a window reads now is kept");
        let far = counted(&t, 2).expect("held");
        assert!(far > T + 45 * DAY && far <= T + 100 * DAY, "{far}");
        // More of them within the day are held the same way, and times
        // near the clock still exactly.
        t.entry(3, T + 200 * DAY, T + 1).1.raise_counted(T + 200 * DAY);
        t.entry(4, T + 5, T + 5).1.raise_counted(T + 5);
        assert_eq!((counted(&t, 3), counted(&t, 4)), (Some(far), Some(T + 5)));
    }

    /// The engine's clean-up of one table: reads each mark listed under
    /// the hour of `horizon` or before, and lists again what it keeps.
    fn clean_up(t: &mut MarkTable, hours: &mut Hours<CustIx>, horizon: i64) {
        for cu in hours.take_due(horizon) {
            if let Some(ts) = t.forget_if_due(cu, horizon) {
                hours.list(cu, ts);
            }
        }
    }

    /// [`MarkTable::entry`], listing a new mark under the hour of `ts`
    /// as the engine does.
    fn listed_entry<'t>(t: &'t mut MarkTable, hours: &mut Hours<CustIx>, cu: CustIx, ts: i64, now: i64) -> MarkMut<'t> {
        let m = t.entry(cu, ts, now).1;
        if m.is_new() {
            hours.list(cu, ts);
        }
        m
    }

    #[test]
    fn the_clean_up_forgets_a_mark_last_touched_at_its_horizon_and_keeps_one_a_ms_later() {
        let (mut t, mut hours) = (MarkTable::default(), Hours::default());
        listed_entry(&mut t, &mut hours, 1, T, T).raise_counted(T);
        listed_entry(&mut t, &mut hours, 2, T, T).raise_replied(T + 1);
        listed_entry(&mut t, &mut hours, 3, T, T + 1).raise_paid(T + 1);
        let mut held = listed_entry(&mut t, &mut hours, 4, T, T + 1);
        held.raise_counted(T);
        held.set_held_by(7);
        clean_up(&mut t, &mut hours, T);
        let mut left: Vec<CustIx> = t.iter().map(|(cu, _)| cu).collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3, 4]);
        assert_eq!(hours.all(), left, "what is kept is listed again");
        clean_up(&mut t, &mut hours, T + 1);
        assert_eq!(t.iter().map(|(cu, _)| cu).collect::<Vec<_>>(), [4]);
    }

    proptest! {
        /// A table whose clean-up reads only the marks listed under its
        /// horizon's hour or before forgets exactly what a read of every
        /// entry forgets: marks made, raised and held in any order, late
        /// ones (stamped before the last clean-up's horizon) among them,
        /// under horizons that move by less and more than an hour; and
        /// every mark stays listed once.
        #[test]
        fn forgetting_the_listed_marks_forgets_what_a_full_read_forgets(
            ops in prop::collection::vec((0u32..60, -30 * 3_600_000i64..3_600_000, 0u8..8, 0i64..3_600_000), 0..600)
        ) {
            let (mut t, mut full, mut hours) = (MarkTable::default(), MarkTable::default(), Hours::default());
            let mut now = T;
            for (cu, dt, op, step) in ops {
                now += step;
                let ts = now + dt;
                match op {
                    0 | 1 => {
                        let horizon = now - LOOKBACK;
                        clean_up(&mut t, &mut hours, horizon);
                        full.retain(|m| m.held_by != NO_CONVERSATION || m.latest() > horizon);
                    }
                    2 => {
                        let mut m = listed_entry(&mut t, &mut hours, cu, ts, now);
                        m.raise(MarkTime::Counted, ts);
                        m.set_held_by(cu);
                        let mut m = full.entry(cu, ts, now).1;
                        m.raise(MarkTime::Counted, ts);
                        m.set_held_by(cu);
                    }
                    3 => {
                        for table in [&mut t, &mut full] {
                            if let Some(mut m) = table.get_mut_at(cu, 0, ts, now) {
                                m.set_held_by(NO_CONVERSATION);
                            }
                        }
                    }
                    _ => {
                        listed_entry(&mut t, &mut hours, cu, ts, now).raise(MarkTime::Replied, ts);
                        full.entry(cu, ts, now).1.raise(MarkTime::Replied, ts);
                    }
                }
                let read = |table: &MarkTable| {
                    let mut all: Vec<_> = table.iter().collect();
                    all.sort_by_key(|&(cu, _)| cu);
                    all
                };
                prop_assert_eq!(read(&t), read(&full));
                prop_assert_eq!(hours.all(), read(&t).into_iter().map(|(cu, _)| cu).collect::<Vec<_>>());
            }
        }

        /// Inserts, updates, lookups by (possibly stale) slot and
        /// clean-ups against a `HashMap`, under a clock that moves on
        /// (now and then by months) and times up to three days either
        /// side of it: every time within [`LOOKBACK`] of the clock reads
        /// exactly; an older one as some time no window reads (itself,
        /// never, or a later write just as old).
        #[test]
        fn matches_a_hash_map_wherever_a_window_can_read(
            ops in prop::collection::vec((0u32..300, -3 * DAY..3 * DAY, 0u8..12, 0i64..3_600_000), 0..2000)
        ) {
            let mut t = MarkTable::default();
            let mut model: HashMap<CustIx, i64> = HashMap::new();
            let mut slots: HashMap<CustIx, u32> = HashMap::new();
            let mut now = T;
            let same = |got: Option<i64>, want: Option<i64>, now: i64| match (got, want) {
                (Some(g), Some(w)) if w <= now - LOOKBACK => g <= now - LOOKBACK,
                (g, w) => g == w,
            };
            for (cu, dt, op, step) in ops {
                now += if op == 11 { 60 * DAY } else { step };
                let ts = now + dt;
                match op {
                    0 => {
                        let floor = now - LOOKBACK;
                        t.retain(|m| m.counted > floor);
                        model.retain(|_, v| *v > floor);
                    }
                    1..=3 => {
                        let hint = slots.get(&cu).copied().unwrap_or(0);
                        let got = t.get_mut_at(cu, hint, ts, now).map(|mut m| {
                            m.raise_counted(ts);
                            m.times().counted
                        });
                        let want = model.get_mut(&cu).map(|e| {
                            *e = (*e).max(ts);
                            *e
                        });
                        prop_assert!(same(got, want, now), "{got:?} {want:?}");
                    }
                    _ => {
                        let (slot, mut m) = t.entry(cu, ts, now);
                        m.raise_counted(ts);
                        slots.insert(cu, slot);
                        let e = model.entry(cu).or_insert(i64::MIN);
                        *e = (*e).max(ts);
                    }
                }
            }
            let mut got: Vec<(CustIx, i64)> = t.iter().map(|(cu, m)| (cu, m.counted)).collect();
            let mut want: Vec<(CustIx, i64)> = model.into_iter().collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.0, w.0);
                prop_assert!(same(Some(g.1), Some(w.1), now), "{g:?} {w:?}");
            }
            let back: MarkTable = postcard::from_bytes(&postcard::to_allocvec(&t).expect("serializes")).expect("reads");
            let mut again: Vec<(CustIx, i64)> = back.iter().map(|(cu, m)| (cu, m.counted)).collect();
            again.sort_unstable();
            prop_assert_eq!(again, got);
        }
    }
}
