//! Duplicate detection of `(shop, id)`: 128-bit fingerprints (64 bits of
//! each kept) in two generations that rotate every 24 h of event time, so
//! an id is recognized for at least 24 h and at most 48 h after it was
//! last accepted.
//!
//! Each generation is a set of 64 KiB open-addressing segments under a
//! directory ([`FlatSet`]): a probe reads one or two adjacent cache lines,
//! and a batch can ask for them ahead ([`Dedup::prefetch`]) while earlier
//! events are applied.

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

/// How long one generation covers, in ms of event time.
pub const GENERATION_MS: i64 = 24 * 3_600_000;

/// A fingerprint of `(shop, id)`.
pub type Fingerprint = u128;

/// The set of recently accepted `(shop, id)`s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "DedupData")]
pub struct Dedup {
    current: FlatSet,
    previous: FlatSet,
    /// Event time at which `current` started.
    current_since: Option<i64>,
}

/// How a [`Dedup`] is stored: each generation as a plain sequence of
/// fingerprints (the layout the earlier hash-set version wrote, so
/// snapshots read either way), each set sized once on load. Written
/// straight from the tables (`impl Serialize for Dedup`), read through
/// this (tests also write it, to compare the bytes).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct DedupData {
    current: Vec<Fingerprint>,
    previous: Vec<Fingerprint>,
    current_since: Option<i64>,
}

impl From<DedupData> for Dedup {
    fn from(d: DedupData) -> Self {
        Self {
            current: FlatSet::from_vec(d.current),
            previous: FlatSet::from_vec(d.previous),
            current_since: d.current_since,
        }
    }
}

/// The layout of `DedupData`, written from the tables as they are: a
/// snapshot of a few million ids then needs no copy of them (one was
/// 48 MiB of fresh memory per snapshot, faulted in while acks wait on the
/// same machine).
impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("DedupData", 3)?;
        s.serialize_field("current", &Generation(&self.current))?;
        s.serialize_field("previous", &Generation(&self.previous))?;
        s.serialize_field("current_since", &self.current_since)?;
        s.end()
    }
}

/// One generation's fingerprints as a sequence, in table order.
struct Generation<'a>(&'a FlatSet);

impl Serialize for Generation<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for fp in self.0.iter() {
            seq.serialize_element(&fp)?;
        }
        seq.end()
    }
}

/// What a set keeps of a fingerprint, in one word: its top 32 bits
/// (never 0, so that no kept word is 0, the mark of an empty slot: a top
/// of 0 is kept as 1) above its low 32 bits. A new id is taken for a held
/// one only if all 64 match one of the ids its probe passes: ~13 of them
/// on average at 8/10 full (½(1 + 1/(1 − 0.8)²) for an absent key), so
/// about one chance in 10^18 per event and table searched, or one wrongly
/// dropped event in a million years at a billion events a day.
fn split(fp: Fingerprint) -> u64 {
    (u64::from(((fp >> 96) as u32).max(1)) << 32) | u64::from(fp as u32)
}

/// The fingerprint a kept word stands for (bits 32..96 zero): what a
/// snapshot stores, and what [`split`] turns back into the same word.
fn join(word: u64) -> Fingerprint {
    (u128::from(word >> 32) << 96) | u128::from(word as u32)
}

/// One open-addressing segment of kept words ([`split`]), eight to a cache
/// line; 0 is an empty slot. Probes wrap within the segment.
#[derive(Debug, Clone)]
struct Segment {
    /// [`SEGMENT_SLOTS`] of them, or a power of two more in a segment
    /// that could not split ([`MAX_DEPTH`]).
    words: Box<[u64]>,
    /// Words held.
    len: usize,
    /// How many top bits of a word all its words share (its prefix).
    depth: u32,
}

impl Segment {
    fn empty(depth: u32, slots: usize) -> Self {
        Self {
            words: vec![0; slots].into_boxed_slice(),
            len: 0,
            depth,
        }
    }

    /// Whether one more word would take it past 8/10 full.
    fn full(&self) -> bool {
        (self.len + 1) * 10 > self.words.len() * 8
    }

    /// The home slot of `word`: its low bits, which the directory does not
    /// use (fingerprints are uniform).
    fn home(&self, word: u64) -> usize {
        word as usize & (self.words.len() - 1)
    }

    /// Where `word` is (`Ok`), or the empty slot where it would go
    /// (`Err`); the segment is never full.
    fn find(&self, word: u64) -> Result<usize, usize> {
        let mask = self.words.len() - 1;
        let mut i = self.home(word);
        loop {
            match self.words[i] {
                0 => return Err(i),
                w if w == word => return Ok(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Puts `word`, known to be absent, into the segment, which has room.
    fn place(&mut self, word: u64) {
        if let Err(i) = self.find(word) {
            self.words[i] = word;
            self.len += 1;
        }
    }
}

/// Slots per segment: 64 KiB of 8-byte words.
const SEGMENT_SLOTS: usize = 1 << 13;
/// The deepest directory: 2^20 entries (4 MiB), for ~5·10^9 ids at the
/// usual loads. Words whose top 20 bits all agree (not uniform
/// fingerprints, then) cannot be split apart; their segment doubles
/// instead, so ids crafted to collide cost probes, not a directory.
const MAX_DEPTH: u32 = 20;

/// An insert-only set of fingerprints (64 bits of each, [`split`]):
/// extendible hashing over linear-probing segments of 64 KiB. A directory
/// of 2^`depth` entries, indexed by a word's top bits, names the segment
/// that holds it; a segment about to pass 8/10 full splits in two by the
/// next top bit (the directory doubling first if it had no bit to spare).
///
/// Fresh memory is what the set costs most (the kernel zeroes each new
/// page, up to 2.5 ns a byte in the VMs this runs on), and this grows by
/// what it holds, 10 to 20 bytes an id: a split allocates two segments
/// and frees one, which the next split takes back. The single table this
/// replaced doubled, held both tables while it moved, and zeroed its
/// successor ahead: over the 2.1 M new ids of the engine bench's warm desk
/// the process grew by 181–186 MiB with it and by 133 MiB with this. A
/// split moves at most 6 553 words within three segments (192 KiB), so no
/// insert waits on a move of the whole set, which is why the old table
/// moved a few slots per insert.
#[derive(Debug, Clone, Default)]
struct FlatSet {
    /// Segment index per top-`depth`-bit prefix (empty while the set is).
    dir: Vec<u32>,
    depth: u32,
    segments: Vec<Segment>,
    len: usize,
}

impl FlatSet {
    fn from_vec(fps: Vec<Fingerprint>) -> Self {
        let mut set = Self::default();
        set.reserve(fps.len());
        for fp in fps {
            set.insert(fp);
        }
        set
    }

    /// Every fingerprint held (as [`join`] gives it), each once.
    fn iter(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.segments
            .iter()
            .flat_map(|s| s.words.iter().filter(|&&w| w != 0).map(|&w| join(w)))
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The segment that holds or would hold `word`, if any.
    fn segment_of(&self, word: u64) -> Option<usize> {
        let at = if self.depth == 0 {
            0
        } else {
            (word >> (64 - self.depth)) as usize
        };
        self.dir.get(at).map(|&s| s as usize)
    }

    fn contains(&self, fp: Fingerprint) -> bool {
        let word = split(fp);
        self.segment_of(word)
            .is_some_and(|s| self.segments[s].find(word).is_ok())
    }

    /// Adds `fp`; false if it was already there.
    fn insert(&mut self, fp: Fingerprint) -> bool {
        let word = split(fp);
        if self.dir.is_empty() {
            self.segments.push(Segment::empty(0, SEGMENT_SLOTS));
            self.dir.push(0);
        }
        loop {
            let s = self.segment_of(word).expect("the directory covers every prefix");
            let segment = &mut self.segments[s];
            let Err(free) = segment.find(word) else {
                return false;
            };
            if segment.full() {
                if segment.depth < MAX_DEPTH {
                    self.split_segment(s);
                } else {
                    let bigger = Segment::empty(segment.depth, 2 * segment.words.len());
                    let old = std::mem::replace(segment, bigger);
                    for &w in old.words.iter().filter(|&&w| w != 0) {
                        segment.place(w);
                    }
                }
                continue;
            }
            segment.words[free] = word;
            segment.len += 1;
            self.len += 1;
            return true;
        }
    }

    /// Splits segment `s` by the top bit after its prefix: words with it
    /// set go to a new segment, the rest stay in `s`, each into a fresh
    /// table (removing from linear probing would need shifting).
    fn split_segment(&mut self, s: usize) {
        let depth = self.segments[s].depth;
        if depth == self.depth {
            // Each entry becomes two, for the next bit 0 and 1.
            self.dir = self.dir.iter().flat_map(|&e| [e, e]).collect();
            self.depth += 1;
        }
        let old = std::mem::replace(&mut self.segments[s], Segment::empty(depth + 1, SEGMENT_SLOTS));
        let mut high = Segment::empty(depth + 1, SEGMENT_SLOTS);
        let bit = 63 - depth;
        for &word in old.words.iter().filter(|&&w| w != 0) {
            if word >> bit & 1 == 1 {
                high.place(word);
            } else {
                self.segments[s].place(word);
            }
        }
        let h = u32::try_from(self.segments.len()).expect("fewer than 2^32 segments");
        self.segments.push(high);
        // The entries naming `s` are those of its prefix: a run of
        // 2^(depth − its depth) from the prefix on; the upper half of the
        // run has the next bit set.
        let prefix = old
            .words
            .iter()
            .find(|&&w| w != 0)
            .map_or(0, |&w| if depth == 0 { 0 } else { w >> (64 - depth) });
        let run = 1usize << (self.depth - depth);
        let first = (prefix as usize) << (self.depth - depth);
        for e in &mut self.dir[first + run / 2..first + run] {
            *e = h;
        }
    }

    /// Makes room for `extra` more fingerprints without a split, when the
    /// set is empty (a load, or a new generation sized like the last);
    /// otherwise the set grows as it goes.
    fn reserve(&mut self, extra: usize) {
        if !self.dir.is_empty() || extra == 0 {
            return;
        }
        // Segments fill unevenly: aim at 6/10 on average.
        let mut depth = 0;
        while depth < MAX_DEPTH && (1usize << depth) * SEGMENT_SLOTS * 6 / 10 < extra {
            depth += 1;
        }
        self.depth = depth;
        self.segments = (0..1usize << depth)
            .map(|_| Segment::empty(depth, SEGMENT_SLOTS))
            .collect();
        self.dir = (0..1u32 << depth).collect();
    }

    /// Asks the CPU to fetch the line a probe for `fp` starts on, and the
    /// line after it, where a probe often ends: most probes are for new
    /// ids, which run to the first empty slot.
    fn prefetch(&self, fp: Fingerprint) {
        let word = split(fp);
        if let Some(s) = self.segment_of(word) {
            let segment = &self.segments[s];
            let home = segment.home(word);
            let next_line = ((home | 7) + 1) & (segment.words.len() - 1);
            mem_prefetch::prefetch_read_data::<_, 3>(&segment.words[home]);
            mem_prefetch::prefetch_read_data::<_, 3>(&segment.words[next_line]);
        }
    }
}

/// The fingerprint of `(shop, id)`: two independently seeded 64-bit lanes of
/// a multiply-rotate hash over the bytes `shop`, 0xff, `id`, packed
/// little-endian into 8-byte words. Defined here, not borrowed from a crate,
/// so it stays the same across versions (snapshots hold it).
pub fn fingerprint(shop: &str, id: &str) -> Fingerprint {
    separated(shop, 0xff, id)
}

/// The fingerprint of the order `order` of `shop`, kept in the same sets
/// as event ids: the same hash over `shop`, 0xfe, `order`. Neither 0xfe
/// nor 0xff occurs in UTF-8, so no `(shop, id)` can give these bytes.
pub fn order_fingerprint(shop: &str, order: &str) -> Fingerprint {
    separated(shop, 0xfe, order)
}

/// The hash over `shop`, the byte `separator`, `id`.
///
/// Ids are short: under [`SHORT_BYTES`] in all, the three are laid end to
/// end in a zeroed buffer and hashed a word at a time, the last word
/// zero-padded as [`Lanes`] pads it. Every event hashes four or five ids,
/// and this takes well under half the instructions of feeding [`Lanes`]
/// piece by piece, which longer input still does.
fn separated(shop: &str, separator: u8, id: &str) -> Fingerprint {
    let (shop, id) = (shop.as_bytes(), id.as_bytes());
    let len = shop.len() + 1 + id.len();
    if len >= SHORT_BYTES {
        let mut h = Lanes::new();
        h.write(shop);
        h.push(u64::from(separator), 1);
        h.write(id);
        return h.finish();
    }
    let mut buf = [0u8; SHORT_BYTES];
    buf[..shop.len()].copy_from_slice(shop);
    buf[shop.len()] = separator;
    buf[shop.len() + 1..len].copy_from_slice(id);
    let mut h = Lanes::new();
    // Every whole word, then the last one, partial or empty.
    for word in buf[..(len / 8 + 1) * 8].chunks_exact(8) {
        h.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    h.mix(len as u64);
    h.output()
}

/// Input shorter than this is hashed from a stack buffer by [`separated`].
const SHORT_BYTES: usize = 64;

/// The last `n` (1..=7) bytes of `bytes` as a little-endian word, read
/// with whole loads: a byte-wise copy here costs more than the hashing.
fn tail_word(bytes: &[u8], n: usize) -> u64 {
    if let Some(last) = bytes.len().checked_sub(8) {
        let word = u64::from_le_bytes(bytes[last..].try_into().expect("8 bytes"));
        return word >> (8 * (8 - n));
    }
    let mut word = 0u64;
    let mut at = 0;
    if n >= 4 {
        word = u64::from(u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")));
        at = 4;
    }
    if n - at >= 2 {
        word |= u64::from(u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))) << (8 * at);
        at += 2;
    }
    if n > at {
        word |= u64::from(bytes[at]) << (8 * at);
    }
    word
}

/// Both lanes of [`fingerprint`], fed the same words.
struct Lanes {
    a: u64,
    b: u64,
    /// Bytes written so far.
    len: u64,
    /// Bytes not yet mixed, little-endian, `filled` of them.
    buf: u64,
    filled: u32,
}

impl Lanes {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> Self {
        Self {
            a: 0x243f_6a88_85a3_08d3,
            b: 0x1319_8a2e_0370_7344,
            len: 0,
            buf: 0,
            filled: 0,
        }
    }

    fn mix_one(h: u64, word: u64) -> u64 {
        (h ^ word.wrapping_mul(Self::K))
            .rotate_left(29)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9)
    }

    fn mix(&mut self, word: u64) {
        self.a = Self::mix_one(self.a, word);
        self.b = Self::mix_one(self.b, word);
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.push(u64::from_le_bytes(w.try_into().expect("8 bytes")), 8);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            self.push(tail_word(bytes, rest.len()), rest.len() as u32);
        }
    }

    /// Appends `n` (1..=8) bytes held in the low bytes of `word` (the
    /// bytes above them are zero), mixing each word as it fills.
    fn push(&mut self, word: u64, n: u32) {
        self.len += u64::from(n);
        let f = self.filled;
        self.buf |= word << (8 * f);
        if f + n >= 8 {
            self.mix(self.buf);
            // The bytes that did not fit start the next word.
            self.buf = if f == 0 { 0 } else { word >> (8 * (8 - f)) };
            self.filled = f + n - 8;
        } else {
            self.filled = f + n;
        }
    }

    fn finish(mut self) -> Fingerprint {
        let (buf, len) = (self.buf, self.len);
        self.mix(buf);
        self.mix(len);
        self.output()
    }

    /// The fingerprint of the lanes once every word, the length last, is
    /// mixed in.
    fn output(&self) -> Fingerprint {
        (u128::from(Self::avalanche(self.a)) << 64) | u128::from(Self::avalanche(self.b))
    }

    fn avalanche(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Dedup {
    /// Records `fp` at event time `ts`; false if it was already there.
    ///
    /// Only a new `fp` moves the generations on: a duplicate stamped a day
    /// or two later must not rotate out the very generation that holds it.
    pub fn insert(&mut self, fp: Fingerprint, ts: i64) -> bool {
        if self.previous.contains(fp) {
            return false;
        }
        if self.rotation_due(ts) {
            if self.current.contains(fp) {
                return false;
            }
            self.rotate(ts);
        }
        self.current.insert(fp)
    }

    /// Whether `fp` was seen, without recording it.
    pub fn contains(&self, fp: Fingerprint) -> bool {
        self.current.contains(fp) || self.previous.contains(fp)
    }

    /// Starts fetching the memory an `insert` of `fp` will probe, so a
    /// batch can overlap that wait with the events before it.
    pub fn prefetch(&self, fp: Fingerprint) {
        self.current.prefetch(fp);
        self.previous.prefetch(fp);
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an id accepted at `ts` starts a new generation (or the first).
    fn rotation_due(&self, ts: i64) -> bool {
        self.current_since.is_none_or(|since| ts >= since + GENERATION_MS)
    }

    /// Starts the generation of `ts`, when [`Dedup::rotation_due`].
    fn rotate(&mut self, ts: i64) {
        if let Some(since) = self.current_since {
            // The new generation starts at the size the last one reached,
            // so a steady desk never splits it, in segments the generation
            // two back frees first: a steady desk's dedup takes no fresh
            // memory from one day to the next.
            self.previous = FlatSet::default();
            let mut fresh = FlatSet::default();
            fresh.reserve(self.current.len());
            self.previous = std::mem::replace(&mut self.current, fresh);
            // Two generations back is gone; a long silence drops both.
            if ts >= since + 2 * GENERATION_MS {
                self.previous = FlatSet::default();
            }
        }
        self.current_since = Some(ts);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn remembered_for_at_least_24_hours() {
        let mut d = Dedup::default();
        let fp = fingerprint("s", "e1");
        assert!(d.insert(fp, 0));
        assert!(!d.insert(fp, 1));
        // Rotation at 24 h keeps the old generation.
        assert!(d.insert(fingerprint("s", "other"), GENERATION_MS));
        assert!(!d.insert(fp, GENERATION_MS + 1));
        assert!(!d.insert(fp, GENERATION_MS + GENERATION_MS / 2));
    }

    #[test]
    fn a_duplicate_stamped_days_later_neither_rotates_nor_is_forgotten() {
        let mut d = Dedup::default();
        let fp = fingerprint("s", "e1");
        assert!(d.insert(fp, 0));
        // Two days on, a rotation would drop both generations, and with them
        // the id being asked about.
        assert!(!d.insert(fp, 2 * GENERATION_MS));
        assert!(!d.insert(fp, 2 * GENERATION_MS + 1));
        assert_eq!(d.current_since, Some(0));
        // A new id does rotate, and the old one is still held a day more.
        assert!(d.insert(fingerprint("s", "e2"), GENERATION_MS));
        assert!(!d.insert(fp, GENERATION_MS + 1));
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        // Snapshots store fingerprints: these values must never change.
        assert_eq!(fingerprint("shop-a", "e1"), 0x6fe4_9fe5_7191_ae4d_b71c_bafc_bea0_8ae3);
        assert_eq!(
            fingerprint("a-longer-shop-id", "an-event-id-of-some-length-0123456789"),
            0x5ea9_aef2_aad1_fee7_c4f0_9c45_768f_3af5
        );
        let mut seen = HashSet::new();
        for shop in 0..50 {
            for id in 0..2000 {
                assert!(seen.insert(fingerprint(&format!("s{shop}"), &format!("{id}"))));
            }
        }
    }

    /// What a set keeps of `fp`, as it lists it.
    fn kept(fp: Fingerprint) -> Fingerprint {
        join(split(fp))
    }

    #[test]
    fn a_set_keeps_64_bits_and_tells_apart_what_they_tell_apart() {
        let fp = fingerprint("shop-a", "e1");
        let mut set = FlatSet::default();
        assert!(set.insert(fp));
        // Bits 32..96 are not kept; every other bit is.
        assert!(!set.insert(fp ^ (1 << 70)) && !set.insert(fp ^ (1 << 40)));
        assert!(set.insert(fp ^ (1 << 3)) && set.insert(fp ^ (1 << 100)));
        // A top of 0 is kept as 1 (0 marks an empty slot): the two collide,
        // and the fingerprint 0 is held like any other.
        assert!(set.insert(0) && !set.insert(1 << 96) && !set.contains(2 << 96));
        assert_eq!(split(kept(fp)), split(fp));
        assert_eq!(set.len(), 4);
    }

    /// Panics unless every segment is at most 8/10 full and holds exactly
    /// the words whose prefix the directory sends to it.
    fn assert_well_formed(set: &FlatSet) {
        assert_eq!(set.dir.len(), 1 << set.depth);
        let mut named = vec![0usize; set.segments.len()];
        for &e in &set.dir {
            named[e as usize] += 1;
        }
        for (s, segment) in set.segments.iter().enumerate() {
            assert!(
                segment.len * 10 <= segment.words.len() * 8,
                "segment {s} at most 8/10 full"
            );
            assert_eq!(segment.len, segment.words.iter().filter(|&&w| w != 0).count());
            assert_eq!(
                named[s],
                1 << (set.depth - segment.depth),
                "segment {s} named by its whole run"
            );
            for &w in segment.words.iter().filter(|&&w| w != 0) {
                assert_eq!(set.segment_of(w), Some(s), "word {w:x} is where the directory looks");
            }
        }
        assert_eq!(set.len, set.segments.iter().map(|s| s.len).sum::<usize>());
    }

    #[test]
    fn the_flat_set_keeps_every_fingerprint_through_splits_and_collisions() {
        let mut set = FlatSet::default();
        // Uniform fingerprints, 0 and the extremes, and a run sharing one
        // home slot (equal low halves) that probes past a segment's end.
        let home_last = u128::from(SEGMENT_SLOTS as u64 - 1);
        let fps: Vec<Fingerprint> = (0..40_000u64)
            .map(|i| fingerprint("s", &i.to_string()))
            .chain([0, 1, u128::MAX])
            .chain((2..200).map(|k| home_last | (k << 96)))
            .collect();
        for (n, &fp) in fps.iter().enumerate() {
            assert!(set.insert(fp), "{fp:x} is new");
            assert!(!set.insert(fp), "{fp:x} is held");
            if n % 5_000 == 0 {
                assert_well_formed(&set);
            }
        }
        assert_well_formed(&set);
        assert!(set.segments.len() >= 8, "{} segments", set.segments.len());
        assert_eq!(set.len(), fps.len());
        assert!(fps.iter().all(|&fp| set.contains(fp)));
        assert!(!set.contains(fingerprint("s", "absent")));
        assert!(!set.contains(home_last | (999 << 96)));
        let mut held: Vec<Fingerprint> = set.iter().collect();
        held.sort_unstable();
        let mut want: Vec<Fingerprint> = fps.iter().map(|&fp| kept(fp)).collect();
        want.sort_unstable();
        assert_eq!(held, want);
    }

    #[test]
    fn a_flat_set_answers_for_every_earlier_fingerprint_after_each_split() {
        let mut set = FlatSet::default();
        let fps: Vec<Fingerprint> = (0..30_000u64).map(|i| fingerprint("s", &i.to_string())).collect();
        let mut splits = 0;
        for (n, &fp) in fps.iter().enumerate() {
            let segments = set.segments.len();
            assert!(set.insert(fp));
            if set.segments.len() != segments {
                splits += 1;
                assert!(fps[..=n].iter().all(|&f| set.contains(f)));
                assert!(!set.insert(fps[n / 2]), "an earlier fingerprint is a duplicate");
                assert_eq!(set.iter().count(), n + 1);
            }
        }
        assert!(splits >= 4, "{splits} splits");
    }

    #[test]
    fn words_that_share_their_top_bits_fill_a_segment_that_grows_instead_of_splitting() {
        // Not fingerprints of real ids: crafted to agree in their top 32
        // bits, which no split can tell apart.
        let mut set = FlatSet::default();
        let fps: Vec<Fingerprint> = (1..=20_000u128).map(|k| (0xdead_beef << 96) | k).collect();
        for &fp in &fps {
            assert!(set.insert(fp));
        }
        assert_eq!(set.depth, MAX_DEPTH);
        assert_well_formed(&set);
        assert!(set.segments.iter().any(|s| s.words.len() > SEGMENT_SLOTS));
        assert!(fps.iter().all(|&fp| set.contains(fp) && !set.insert(fp)));
        assert_eq!(set.len(), fps.len());
    }

    #[test]
    fn a_reserved_flat_set_takes_what_it_was_sized_for_without_a_split() {
        let mut set = FlatSet::default();
        set.reserve(50_000);
        let segments = set.segments.len();
        assert_well_formed(&set);
        for i in 0..50_000u64 {
            assert!(set.insert(fingerprint("s", &i.to_string())));
        }
        assert_eq!(set.segments.len(), segments);
        assert_well_formed(&set);
    }

    #[test]
    fn a_dedup_reads_back_from_its_bytes() {
        let mut d = Dedup::default();
        for i in 0..3000 {
            d.insert(fingerprint("s", &i.to_string()), i);
        }
        d.insert(fingerprint("s", "late"), GENERATION_MS + 5);
        let back: Dedup = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
        assert_eq!(back.len(), d.len());
        assert!((0..3000).all(|i| back.contains(fingerprint("s", &i.to_string()))));
        assert!(back.contains(fingerprint("s", "late")));
        // Rotation sized the new generation for yesterday's count.
        assert!(d.current.segments.len() * SEGMENT_SLOTS * 6 >= 3000 * 10);
    }

    #[test]
    fn a_dedup_is_written_in_the_layout_of_its_stored_form() {
        // Split into several segments, with the fingerprint 0 and both
        // generations in use.
        let mut d = Dedup::default();
        for i in 0..2000 {
            d.insert(fingerprint("s", &i.to_string()), i);
        }
        d.insert(fingerprint("s", "late"), GENERATION_MS + 5);
        d.insert(0, GENERATION_MS + 6);
        let mut n = 0;
        while d.current.segments.len() < 3 {
            d.insert(fingerprint("t", &n.to_string()), GENERATION_MS + 7);
            n += 1;
        }
        let layout = DedupData {
            current: d.current.iter().collect(),
            previous: d.previous.iter().collect(),
            current_since: d.current_since,
        };
        assert_eq!(layout.current.len(), d.current.len());
        assert!(layout.current.contains(&kept(0)));
        let bytes = postcard::to_stdvec(&d).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&layout).unwrap());
        let back: Dedup = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), d.len());
        assert!(back.contains(0) && back.contains(fingerprint("t", "0")) && back.contains(fingerprint("s", "1")));
    }

    /// The definition of [`fingerprint`] one byte at a time, as first written.
    fn fingerprint_bytewise(shop: &str, id: &str) -> Fingerprint {
        let lane = |seed: u64| {
            let (mut h, mut buf, mut filled) = (seed, 0u64, 0u32);
            let bytes: Vec<u8> = shop.bytes().chain([0xff]).chain(id.bytes()).collect();
            for &byte in &bytes {
                buf |= u64::from(byte) << (8 * filled);
                filled += 1;
                if filled == 8 {
                    h = Lanes::mix_one(h, buf);
                    (buf, filled) = (0, 0);
                }
            }
            h = Lanes::mix_one(h, buf);
            Lanes::avalanche(Lanes::mix_one(h, bytes.len() as u64))
        };
        (u128::from(lane(0x243f_6a88_85a3_08d3)) << 64) | u128::from(lane(0x1319_8a2e_0370_7344))
    }

    #[test]
    fn the_word_at_a_time_fingerprint_equals_the_bytewise_definition() {
        let text = "0123456789abcdefghijklmnopqrstuvwxyz店铺客服-会话";
        let cut = |n: usize| &text[..text.char_indices().nth(n).map_or(text.len(), |(i, _)| i)];
        // Inputs on both sides of the short path's limit.
        assert!(cut(30).len() + 1 + text.len() > SHORT_BYTES);
        for s in 0..30 {
            for i in 0..70 {
                let (shop, id) = (cut(s), cut(i));
                assert_eq!(fingerprint(shop, id), fingerprint_bytewise(shop, id), "{shop:?} {id:?}");
            }
        }
    }

    #[test]
    fn an_order_and_an_event_id_with_the_same_text_differ() {
        assert_ne!(fingerprint("s", "o1"), order_fingerprint("s", "o1"));
        assert_ne!(order_fingerprint("s1", "o"), order_fingerprint("s", "1o"));
    }

    #[test]
    fn shop_is_part_of_the_key() {
        assert_ne!(fingerprint("s1", "e"), fingerprint("s2", "e"));
        assert_ne!(fingerprint("s", "1e"), fingerprint("s1", "e"));
    }
}
