//! A response-time histogram of fixed shape: 64 ms units, 256 sub-buckets
//! (two significant figures), up to [`MAX_TRACKED_MS`]. It keeps the layout
//! HdrHistogram gives those bounds (`Histogram::new_with_bounds(64, 30
//! days, 2)`): the same buckets, the same index for every value and the
//! same value for every index, so a snapshot written by either reads into
//! the other, and a quantile reads the same. What it adds is the address:
//! [`Hist::prefetch`] names the count a sample will land on, so the
//! engine's look-ahead can ask for that line before the sample comes (an
//! agent's histogram is 10 KiB, and a busy desk's no longer fit in cache).
//! It keeps no minimum or maximum; its total is the sum of its counts.

use super::window::{HIST_UNIT_MS, MAX_TRACKED_MS};

/// log2 of the unit.
const UNIT_MAGNITUDE: u32 = HIST_UNIT_MS.trailing_zeros();
/// log2 of the sub-buckets of one bucket: the least power of two of at
/// least 2 · 10² (two significant figures).
const SUB_BUCKET_MAGNITUDE: u32 = 8;
/// Bucket 0 uses all its sub-buckets; every later one only its upper half.
const HALF_MAGNITUDE: u32 = SUB_BUCKET_MAGNITUDE - 1;
const HALF: usize = 1 << HALF_MAGNITUDE;
/// The bits of bucket 0's values: any value below 256 units is in it.
const SUB_BUCKET_MASK: u64 = ((1 << SUB_BUCKET_MAGNITUDE) - 1) << UNIT_MAGNITUDE;
/// 64 less the bits of bucket 0's largest value.
const LEADING_ZERO_BASE: u32 = 64 - UNIT_MAGNITUDE - SUB_BUCKET_MAGNITUDE;
/// Buckets needed to hold [`MAX_TRACKED_MS`]: each doubles the last's span.
const BUCKETS: usize = {
    let mut untrackable = 1u64 << (SUB_BUCKET_MAGNITUDE + UNIT_MAGNITUDE);
    let mut buckets = 1;
    while untrackable <= MAX_TRACKED_MS {
        untrackable <<= 1;
        buckets += 1;
    }
    buckets
};
/// Counts held: HdrHistogram's `(buckets + 1) · half` (2 560 here).
pub const LEN: usize = (BUCKETS + 1) << HALF_MAGNITUDE;

/// A histogram of response times in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hist {
    counts: Box<[u32; LEN]>,
    /// The sum of `counts`: a count stops at `u32::MAX`, and so then
    /// does what it adds here.
    total: u64,
}

impl Default for Hist {
    fn default() -> Self {
        let counts = vec![0; LEN].into_boxed_slice().try_into().expect("LEN counts");
        Self { counts, total: 0 }
    }
}

impl Hist {
    /// Records `n` samples of `ms` (above [`MAX_TRACKED_MS`], at it).
    pub fn record_n(&mut self, ms: u64, n: u32) {
        self.add_at(index_of(ms), n);
    }

    /// Records one sample of `ms`.
    pub fn record(&mut self, ms: u64) {
        self.record_n(ms, 1);
    }

    /// Asks the cache for the line of the count a sample of `ms` lands on.
    /// A hint only.
    pub fn prefetch(&self, ms: u64) {
        mem_prefetch::prefetch_read_data::<_, 3>(&self.counts[index_of(ms)]);
    }

    /// Adds every sample of `other`.
    pub fn add(&mut self, other: &Hist) {
        for (i, n) in other.held() {
            self.add_at(i, n);
        }
    }

    /// Adds `n` to the count at `index`, as far as it goes.
    fn add_at(&mut self, index: usize, n: u32) {
        let count = &mut self.counts[index];
        let added = n.min(u32::MAX - *count);
        *count += added;
        self.total += u64::from(added);
    }

    /// Samples held.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The middle of the bucket holding the `ceil(q·n)`-th smallest sample
    /// (the first at `q = 0`; `q` above 1 reads as 1), or `None` when empty:
    /// what HdrHistogram's `median_equivalent(value_at_quantile(q))` reads.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let rank = ((q.min(1.0) * self.total as f64).ceil() as u64).max(1);
        let mut below = 0u64;
        let index = self.counts.iter().position(|&n| {
            below += u64::from(n);
            below >= rank
        })?;
        Some(middle(index))
    }

    /// `(highest value, count)` of every bucket holding a sample, lowest
    /// first: HdrHistogram's `iter_recorded` (`value_iterated_to`,
    /// `count_at_value`), as snapshots store it.
    pub fn recorded(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.held().map(|(i, n)| {
            let (lowest, span) = bucket_of(i);
            (lowest + span - 1, n)
        })
    }

    /// `(middle value, count)` of every bucket holding a sample, lowest first.
    pub fn middles(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.held().map(|(i, n)| (middle(i), n))
    }

    /// `(index, count)` of every count that is not 0.
    fn held(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter_map(|(i, &n)| (n != 0).then_some((i, n)))
    }
}

/// Where a sample of `ms` is counted.
fn index_of(ms: u64) -> usize {
    let ms = ms.min(MAX_TRACKED_MS);
    let bucket = LEADING_ZERO_BASE - (ms | SUB_BUCKET_MASK).leading_zeros();
    let sub = (ms >> (bucket + UNIT_MAGNITUDE)) as usize;
    // Bucket 0 starts at index 0; bucket b ≥ 1 fills its upper half only,
    // from index (b + 1) · half.
    ((bucket as usize + 1) << HALF_MAGNITUDE) + sub - HALF
}

/// The middle of the values counted at `index` (rounded up).
fn middle(index: usize) -> u64 {
    let (lowest, span) = bucket_of(index);
    lowest + span / 2
}

/// The lowest value counted at `index`, and how many values share it.
fn bucket_of(index: usize) -> (u64, u64) {
    let (bucket, sub) = match (index >> HALF_MAGNITUDE).checked_sub(1) {
        // Bucket 0's lower half.
        None => (0, index),
        Some(bucket) => (bucket, (index & (HALF - 1)) + HALF),
    };
    let shift = bucket as u32 + UNIT_MAGNITUDE;
    ((sub as u64) << shift, 1 << shift)
}

#[cfg(test)]
mod tests {
    use hdrhistogram::Histogram;
    use proptest::prelude::*;

    use super::*;

    fn hdr() -> Histogram<u32> {
        Histogram::new_with_bounds(HIST_UNIT_MS, MAX_TRACKED_MS, 2).expect("valid bounds")
    }

    #[test]
    fn has_the_shape_hdr_histogram_gives_the_same_bounds() {
        assert_eq!(hdr().distinct_values(), LEN);
        assert_eq!(LEN, 2560);
    }

    /// Values spread over every bucket, with each bucket's edges.
    fn sample() -> impl Strategy<Value = u64> {
        prop_oneof![
            0..20_000u64,
            (0u32..32).prop_flat_map(|shift| 0..(1u64 << shift) << 6),
            (0u32..24).prop_map(|b| (1u64 << (b + 14)) - 1),
            (0u32..24).prop_map(|b| 1u64 << (b + 14)),
            Just(MAX_TRACKED_MS),
            MAX_TRACKED_MS..u64::MAX,
        ]
    }

    proptest! {
        /// Every sample lands where HdrHistogram counts it: the same
        /// buckets read back, and every quantile reads the same.
        #[test]
        fn reads_as_hdr_histogram_reads(
            samples in prop::collection::vec(sample(), 1..300),
            qs in prop::collection::vec(0.0f64..1.2, 1..8),
        ) {
            let (mut ours, mut theirs) = (Hist::default(), hdr());
            for &ms in &samples {
                ours.record(ms);
                theirs.saturating_record(ms.min(MAX_TRACKED_MS));
            }
            let recorded: Vec<(u64, u32)> = theirs
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect();
            prop_assert_eq!(ours.recorded().collect::<Vec<_>>(), recorded);
            let middles: Vec<(u64, u32)> = theirs
                .iter_recorded()
                .map(|v| (theirs.median_equivalent(v.value_iterated_to()), v.count_at_value()))
                .collect();
            prop_assert_eq!(ours.middles().collect::<Vec<_>>(), middles);
            prop_assert_eq!(ours.len(), theirs.len());
            for q in qs.into_iter().chain([0.0, 0.5, 1.0]) {
                let want = theirs.median_equivalent(theirs.value_at_quantile(q));
                prop_assert_eq!(ours.quantile(q), Some(want), "q = {}", q);
            }
        }

        /// A histogram restored from what `recorded` gives holds the same
        /// counts, and two added read as one recording both.
        #[test]
        fn restores_and_adds_what_was_recorded(
            a in prop::collection::vec(sample(), 0..200),
            b in prop::collection::vec(sample(), 0..200),
        ) {
            let (mut x, mut y, mut both) = (Hist::default(), Hist::default(), Hist::default());
            for &ms in &a {
                x.record(ms);
                both.record(ms);
            }
            for &ms in &b {
                y.record(ms);
                both.record(ms);
            }
            let mut back = Hist::default();
            for (ms, n) in x.recorded() {
                back.record_n(ms, n);
            }
            prop_assert_eq!(&back, &x);
            x.add(&y);
            prop_assert_eq!(&x, &both);
        }
    }

    #[test]
    fn a_full_count_stops_and_the_total_with_it() {
        let mut h = Hist::default();
        h.record_n(5_000, u32::MAX - 1);
        h.record_n(5_000, 3);
        h.record(70_000);
        assert_eq!(h.len(), u64::from(u32::MAX) + 1);
        assert_eq!(h.recorded().map(|(_, n)| n).collect::<Vec<_>>(), [u32::MAX, 1]);
        let top = hdr().median_equivalent(70_000);
        assert_eq!(h.quantile(1.0), Some(top), "the top sample is still found");
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        assert_eq!(Hist::default().quantile(0.5), None);
    }
}
