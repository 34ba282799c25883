//! One partial's marks: for each customer the agent served, the latest
//! times the customer counted for, was replied to by, and paid the agent.
//!
//! A `HashMap` would do, but a lookup there reads the table's control
//! bytes, then the entry they point at: two cold lines, the second waiting
//! on the first. An open conversation holding a mark (see
//! [`Marks::held_by`]) keeps the bucket its mark sat in when it took it,
//! and when it lets the mark go (closed, transferred) both lines are read
//! at once from that index. An index gone stale (the table grew since)
//! is seen by its key and the lookup goes the usual way.
//!
//! The table holds [`Marks`] themselves, the customer in the padding
//! after [`Marks::held_by`]: 32 bytes an entry, two to a cache line and
//! never one across two, where a `(customer, marks)` pair took 40.

use std::fmt;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::slab::{Flat, Slab};
use super::{ConvIx, Conversation, CustIx};

/// Latest times a customer counted for, was replied to by, and paid an
/// agent; `i64::MIN` for never.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Marks {
    pub counted: i64,
    pub replied: i64,
    pub paid: i64,
    /// The open conversation that holds this mark ([`NO_CONVERSATION`]:
    /// none): it is assigned to the mark's agent, names the mark's
    /// customer, and keeps later `counted` and `replied` times in its own
    /// fields until it is released (agent or customer changed, closed).
    /// A held mark is never dropped by the clean-up.
    pub held_by: ConvIx,
    /// The table's key, kept here rather than beside the marks so that an
    /// entry fills 32 bytes, not 40. Not in snapshots: the map key there.
    /// Private: code outside this module cannot build a `Marks` by its
    /// fields, and writes an entry's times and `held_by` one by one, never
    /// a whole `Marks` over it (which would lose the key).
    #[serde(skip)]
    customer: CustIx,
}

/// [`Marks::held_by`] of a mark no conversation holds.
pub(super) const NO_CONVERSATION: ConvIx = ConvIx::MAX;

impl Default for Marks {
    fn default() -> Self {
        Self {
            counted: i64::MIN,
            replied: i64::MIN,
            paid: i64::MIN,
            held_by: NO_CONVERSATION,
            customer: 0,
        }
    }
}

impl Marks {
    /// `counted` and `replied` in force: the later of the table's and the
    /// holding conversation's.
    pub fn counted_replied(&self, conversations: &Slab<Flat<Conversation>>) -> (i64, i64) {
        match conversations.get(self.held_by) {
            Some(c) if self.held_by != NO_CONVERSATION => (self.counted.max(c.counted), self.replied.max(c.replied)),
            _ => (self.counted, self.replied),
        }
    }
}

/// Customer → [`Marks`], whose entries can be reached again by bucket.
#[derive(Debug, Clone, Default)]
pub(super) struct MarkTable(HashTable<Marks>);

/// The hash of a customer index. Indices are dense slab indices: the
/// multiply by an odd constant keeps distinct low bits distinct (the
/// bucket) and spreads every bit into the high ones (the control tag).
fn hash(customer: CustIx) -> u64 {
    u64::from(customer).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl MarkTable {
    pub fn get(&self, customer: CustIx) -> Option<&Marks> {
        self.0.find(hash(customer), |m| m.customer == customer)
    }

    pub fn contains(&self, customer: CustIx) -> bool {
        self.get(customer).is_some()
    }

    /// The customer's marks, a new one (all times never) if it has none,
    /// and the bucket they are in until the table next grows.
    pub fn entry(&mut self, customer: CustIx) -> (u32, &mut Marks) {
        let entry = match self
            .0
            .entry(hash(customer), |m| m.customer == customer, |m| hash(m.customer))
        {
            Entry::Occupied(o) => o,
            Entry::Vacant(v) => v.insert(Marks {
                customer,
                ..Marks::default()
            }),
        };
        let bucket = u32::try_from(entry.bucket_index()).expect("fewer than 2^32 buckets");
        (bucket, entry.into_mut())
    }

    /// The customer's marks, looked for first in `bucket`.
    pub fn get_mut_at(&mut self, customer: CustIx, bucket: u32) -> Option<&mut Marks> {
        let at = match self.0.get_bucket(bucket as usize) {
            Some(m) if m.customer == customer => Some(bucket as usize),
            _ => self.0.find_bucket_index(hash(customer), |m| m.customer == customer),
        };
        at.and_then(|i| self.0.get_bucket_mut(i))
    }

    /// Every (customer, marks), in table order.
    pub fn iter(&self) -> impl Iterator<Item = (CustIx, &Marks)> + '_ {
        self.0.iter().map(|m| (m.customer, m))
    }

    /// Keeps the marks `keep` returns true for.
    pub fn retain(&mut self, mut keep: impl FnMut(&Marks) -> bool) {
        self.0.retain(|m| keep(m));
    }
}

/// Stored as a map from customer to marks: the bytes the `HashMap` it
/// replaced wrote, so snapshots read either way.
impl Serialize for MarkTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (customer, marks) in self.iter() {
            map.serialize_entry(&customer, marks)?;
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
                let mut table = MarkTable::default();
                while let Some((customer, marks)) = map.next_entry::<CustIx, Marks>()? {
                    *table.entry(customer).1 = Marks { customer, ..marks };
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

    fn marks(counted: i64) -> Marks {
        Marks {
            counted,
            ..Marks::default()
        }
    }

    #[test]
    fn a_new_entry_has_every_time_never_and_no_holder() {
        let mut t = MarkTable::default();
        let (_, m) = t.entry(7);
        assert_eq!(
            (m.counted, m.replied, m.paid, m.held_by),
            (i64::MIN, i64::MIN, i64::MIN, NO_CONVERSATION)
        );
        assert!(t.contains(7));
        assert!(!t.contains(8));
    }

    #[test]
    fn an_entry_fills_half_a_cache_line() {
        assert_eq!(std::mem::size_of::<Marks>(), 32);
    }

    #[test]
    fn snapshot_bytes_equal_those_of_the_hash_map_it_replaced() {
        let mut t = MarkTable::default();
        t.entry(3).1.counted = 30;
        let mut map = HashMap::new();
        map.insert(3u32, marks(30));
        let bytes = postcard::to_allocvec(&map).expect("serializes");
        assert_eq!(postcard::to_allocvec(&t).expect("serializes"), bytes);
        let back: MarkTable = postcard::from_bytes(&bytes).expect("reads");
        assert_eq!(back.get(3).map(|m| m.counted), Some(30));
    }

    #[test]
    fn a_stale_bucket_still_finds_its_customer() {
        let mut t = MarkTable::default();
        let (bucket, m) = t.entry(1);
        m.counted = 10;
        // Growing the table moves entries to other buckets.
        for cu in 2..1_000 {
            t.entry(cu).1.counted = i64::from(cu) * 10;
        }
        assert_eq!(t.get_mut_at(1, bucket).map(|m| m.counted), Some(10));
        for (cu, stale) in [(500, bucket), (999, u32::MAX), (2, 0)] {
            assert_eq!(t.get_mut_at(cu, stale).map(|m| m.counted), Some(i64::from(cu) * 10));
        }
        assert!(t.get_mut_at(5_000, bucket).is_none());
    }

    proptest! {
        /// Inserts, updates, lookups by (possibly stale) bucket and
        /// clean-ups against a `HashMap`.
        #[test]
        fn matches_a_hash_map(ops in prop::collection::vec((0u32..300, any::<i64>(), 0u8..10), 0..2000)) {
            let mut t = MarkTable::default();
            let mut model: HashMap<CustIx, i64> = HashMap::new();
            let mut buckets: HashMap<CustIx, u32> = HashMap::new();
            for (cu, v, op) in ops {
                match op {
                    0 => {
                        t.retain(|m| m.counted % 3 != 0);
                        model.retain(|_, v| *v % 3 != 0);
                    }
                    1..=3 => {
                        let hint = buckets.get(&cu).copied().unwrap_or(0);
                        let got = t.get_mut_at(cu, hint).map(|m| {
                            m.counted = m.counted.max(v);
                            m.counted
                        });
                        let want = model.get_mut(&cu).map(|e| {
                            *e = (*e).max(v);
                            *e
                        });
                        prop_assert_eq!(got, want);
                    }
                    _ => {
                        let (bucket, m) = t.entry(cu);
                        m.counted = m.counted.max(v);
                        buckets.insert(cu, bucket);
                        let e = model.entry(cu).or_insert(i64::MIN);
                        *e = (*e).max(v);
                    }
                }
            }
            let mut got: Vec<(CustIx, i64)> = t.iter().map(|(cu, m)| (cu, m.counted)).collect();
            let mut want: Vec<(CustIx, i64)> = model.into_iter().collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(&got, &want);
            let back: MarkTable = postcard::from_bytes(&postcard::to_allocvec(&t).expect("serializes")).expect("reads");
            let mut again: Vec<(CustIx, i64)> = back.iter().map(|(cu, m)| (cu, m.counted)).collect();
            again.sort_unstable();
            prop_assert_eq!(again, got);
        }
    }
}
