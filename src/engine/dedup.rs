//! Duplicate detection of `(shop, id)`, in two generations that rotate
//! every 24 h of event time, so an id is recognized for at least 24 h and
//! at most 48 h after it was last accepted.
//!
//! Most ids end in a number that rises (`e1`, `e2`, … or `ORD-000123`):
//! those of a shop that share the rest (their prefix) form a run, and a
//! run holds its recent numbers in a window of bits, two per number (one
//! per generation), where the newest are in cache; its [`Head`], all a
//! lookup reads, is one cache line of a table. Every other id (a UUID, a
//! number far from its run's window, a run that would grow too sparse to
//! pay for its bits) is kept as a 128-bit fingerprint (64 bits of it) in a
//! set of 64 KiB open-addressing segments under a directory ([`FlatSet`]).
//! A batch asks for either ahead ([`Dedup::prefetch`], then
//! [`Dedup::prefetch_route`]) while earlier events are applied. Which ids
//! take which path depends only on what the set holds, so two sets fed
//! the same ids decide alike.

use std::collections::HashMap;

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::index;

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
    /// Generations started since the first (a silence that drops both
    /// counts two).
    generation: u64,
    /// The runs of numbered ids: what a lookup reads, by run key.
    heads: RunTable,
    /// Their windows, and whose they are, by [`Head::body`].
    bodies: Vec<Body>,
    /// The shops that have runs, or had no room for one.
    shops: Vec<ShopRuns>,
    /// Index into `shops` by the shop's index key ([`index::key_of`], as
    /// the engine finds its shops: one hash of an integer, no string
    /// compared), rebuilt on load.
    shop_ix: HashMap<index::Key, u32, foldhash::fast::RandomState>,
}

/// How a [`Dedup`] is stored: each generation's fingerprints as a plain
/// sequence (each set sized once on load), then the shops and the runs.
/// Written straight from the tables (`impl Serialize for Dedup`), read
/// through this (tests also write it, to compare the bytes).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct DedupData {
    current: Vec<Fingerprint>,
    previous: Vec<Fingerprint>,
    current_since: Option<i64>,
    generation: u64,
    shops: Vec<ShopRuns>,
    runs: Vec<StoredRun>,
}

impl From<DedupData> for Dedup {
    fn from(d: DedupData) -> Self {
        let mut set = Self {
            current: FlatSet::from_vec(d.current),
            previous: FlatSet::from_vec(d.previous),
            current_since: d.current_since,
            generation: d.generation,
            heads: RunTable::default(),
            bodies: Vec::with_capacity(d.runs.len()),
            shops: d.shops,
            shop_ix: HashMap::default(),
        };
        for run in d.runs {
            let shop = &mut set.shops[run.shop as usize];
            shop.runs += 1;
            let head = Head {
                key: run_key(&shop.shop, run.kind, &run.prefix),
                lo: run.lo,
                base: run.base,
                top: run.base + WORD_BITS * run.words.len() as u64,
                closed: run.closed.unwrap_or(OPEN),
                last: run.last,
                ..Head::default()
            };
            set.add_run(
                head,
                Body {
                    words: run.words,
                    held: run.held,
                    shop: run.shop,
                    kind: run.kind,
                    prefix: run.prefix,
                },
            );
        }
        set.shop_ix = index_shops(&set.shops);
        set
    }
}

/// The layout of `DedupData`, written from the tables as they are: a
/// snapshot of a few million ids then needs no copy of them (one was
/// 48 MiB of fresh memory per snapshot, faulted in while acks wait on the
/// same machine).
impl Serialize for Dedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("DedupData", 6)?;
        s.serialize_field("current", &Generation(&self.current))?;
        s.serialize_field("previous", &Generation(&self.previous))?;
        s.serialize_field("current_since", &self.current_since)?;
        s.serialize_field("generation", &self.generation)?;
        s.serialize_field("shops", &self.shops)?;
        s.serialize_field("runs", &Runs(self))?;
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
    separated(shop, IdKind::Event.separator(), id)
}

/// The fingerprint of the order `order` of `shop`, kept in the same sets
/// as event ids: the same hash over `shop`, 0xfe, `order`. Neither 0xfe
/// nor 0xff occurs in UTF-8, so no `(shop, id)` can give these bytes.
pub fn order_fingerprint(shop: &str, order: &str) -> Fingerprint {
    separated(shop, IdKind::Order.separator(), order)
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

/// What kind of id: an event's `id` or an order's `order`. The two are
/// kept apart (the separator byte of [`separated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdKind {
    Event,
    Order,
}

impl IdKind {
    fn separator(self) -> u8 {
        match self {
            Self::Event => 0xff,
            Self::Order => 0xfe,
        }
    }
}

/// An id the set is asked about: `text`, of `kind`, of `shop`, whose
/// index key is `shop_key`.
#[derive(Debug, Clone, Copy)]
pub struct Id<'a> {
    shop: &'a str,
    shop_key: index::Key,
    kind: IdKind,
    text: &'a str,
}

impl<'a> Id<'a> {
    /// The event `id` of `shop`.
    pub fn event(shop: &'a str, id: &'a str) -> Self {
        Self::keyed(shop, index::key_of(shop), IdKind::Event, id)
    }

    /// The order `order` of `shop`.
    pub fn order(shop: &'a str, order: &'a str) -> Self {
        Self::keyed(shop, index::key_of(shop), IdKind::Order, order)
    }

    /// `text` of `kind` of `shop`, for a caller that has the shop's
    /// [`index::key_of`] at hand (the engine's look-ahead computes it).
    pub fn keyed(shop: &'a str, shop_key: index::Key, kind: IdKind, text: &'a str) -> Self {
        debug_assert_eq!(shop_key, index::key_of(shop), "the key of another shop");
        Self {
            shop,
            shop_key,
            kind,
            text,
        }
    }

    /// Its fingerprint: [`fingerprint`] or [`order_fingerprint`].
    fn fingerprint(self) -> Fingerprint {
        separated(self.shop, self.kind.separator(), self.text)
    }
}

/// How the set looks an id up, worked out once per id (the engine's
/// look-ahead does it while earlier events are applied): for an id that
/// ends in a number ([`numbered`]), `[number, run key's low half, its
/// high half]` ([`run_key`], whose high half is never 0); for any other,
/// `[fingerprint's high half, its low half, 0]`. Three words, 8-byte
/// aligned, so the engine's `Ahead` that holds one stays small.
#[derive(Debug, Clone, Copy)]
pub struct Key([u64; 3]);

impl Key {
    pub fn of(id: Id) -> Self {
        match numbered(id.text) {
            Some((at, number)) => {
                let key = run_key(id.shop, id.kind, &id.text[..at]);
                Self([number, key as u64, (key >> 64) as u64])
            }
            None => {
                let fp = id.fingerprint();
                Self([(fp >> 64) as u64, fp as u64, 0])
            }
        }
    }

    /// The fingerprint of an id that does not end in a number.
    fn fingerprint(&self) -> Option<Fingerprint> {
        let [hi, lo, tag] = self.0;
        (tag == 0).then(|| (u128::from(hi) << 64) | u128::from(lo))
    }

    /// The run key and the number of an id that ends in one.
    fn numbered(&self) -> Option<(RunKey, u64)> {
        let [number, lo, hi] = self.0;
        (hi != 0).then(|| ((u128::from(hi) << 64) | u128::from(lo), number))
    }
}

/// Where the number `text` ends in starts, and its value: the last 1 to
/// 19 decimal digits after their leading zeros, which belong to the
/// prefix (`ORD-000123` is `ORD-000` and 123, `e00` is `e0` and 0), so
/// prefix and number give back the text. None past [`MAX_PREFIX`].
fn numbered(text: &str) -> Option<(usize, u64)> {
    let bytes = text.as_bytes();
    let digits = bytes.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let start = bytes.len() - digits;
    let zeros = bytes[start..bytes.len() - 1].iter().take_while(|&&b| b == b'0').count();
    let at = start + zeros;
    if bytes.len() - at > 19 || at > MAX_PREFIX {
        return None;
    }
    let number = bytes[at..].iter().fold(0u64, |n, &b| n * 10 + u64::from(b - b'0'));
    Some((at, number))
}

/// What names a run: the fingerprint of its shop, kind and prefix (as if
/// the prefix were an id of its own), with bit 64 set so that it is never
/// 0 (an empty slot of the [`RunTable`]) nor has a high half of 0 (a
/// [`Key`] without a number). Stable, as fingerprints are: the flat sets
/// keep a numbered id as [`numbered_fingerprint`] of it.
type RunKey = u128;

fn run_key(shop: &str, kind: IdKind, prefix: &str) -> RunKey {
    separated(shop, kind.separator(), prefix) | (1 << 64)
}

/// The fingerprint of the id numbered `number` of run `run`, the one the
/// flat sets keep of it whatever the route (so every numbered id has one
/// fingerprint): each lane a bijection of the number for a given run, so
/// two numbers of one run never share a lane, and a few multiplies where
/// hashing the id's text again took a fifth of an id's lookup.
fn numbered_fingerprint(run: RunKey, number: u64) -> Fingerprint {
    let lane = |half: u64, seed: u64| Lanes::avalanche(half ^ Lanes::avalanche(number ^ seed));
    let (a, b) = (
        lane((run >> 64) as u64, NUMBER_SEEDS[0]),
        lane(run as u64, NUMBER_SEEDS[1]),
    );
    (u128::from(a) << 64) | u128::from(b)
}

/// The seeds of [`numbered_fingerprint`]'s lanes: odd, about half their
/// bits set, none of [`Lanes`]'s.
const NUMBER_SEEDS: [u64; 2] = [0x4528_21e6_38d0_1377, 0xbe54_66cf_34e9_0c6d];

/// The longest prefix a run may have. A counter's is short (`e`,
/// `ORD-000`, `msg_`); a UUID or a 24-digit hex id that happens to end in
/// decimal digits leaves a longer one, unique to the id, which could only
/// fill the shop's runs and then cost every such id a search of them
/// before it went to the flat sets anyway (on the bench's desk with UUIDs,
/// 1.07 M events/s against 1.53 before this bound).
const MAX_PREFIX: usize = 16;
/// Numbers per word of a run's window.
const WORD_BITS: u64 = 64;
/// How far past its window's top a new number may be, in words, for the
/// window to grow to it.
const MAX_STEP_WORDS: u64 = 64;
/// Words a window may have beyond one per id it holds: 1 KiB at 16 bytes
/// a word (two generations), so a window costs at most 16 bytes an id
/// past its first KiB, about what the flat sets take.
const FREE_WORDS: u64 = 64;
/// Runs per shop: ids crafted to have many prefixes cannot grow memory.
const MAX_RUNS: u32 = 8;
/// [`Head::closed`] of a run whose window may still grow.
const OPEN: u64 = u64::MAX;

/// A run: the ids of one shop and kind that share a prefix and are told
/// apart by their number. Its window holds a bit per number from `base`
/// to `top`, one word of each generation per 64 numbers ([`Body`]).
/// Numbers below `lo` are not the window's (they are in the flat sets or
/// new); numbers at or past the top are new, and the window grows to
/// take them, unless the run is closed.
///
/// A run never holds a number the flat sets hold: `lo` only rises, a
/// window grows only past its top, and a number past the top goes to the
/// flat sets only once the run is closed, which it stays until its window
/// is empty and `lo` is past every such number.
///
/// The head is all a lookup reads, in one cache line of the
/// [`RunTable`], so the look-ahead can fetch it before it reads it: a
/// sparse run (one that closed) then costs an id one line more than the
/// flat sets alone.
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct Head {
    /// Its [`RunKey`]; 0 in an empty slot.
    key: RunKey,
    lo: u64,
    /// The number of the window's first word's lowest bit, a multiple of 64.
    base: u64,
    /// `base` plus 64 numbers per word of the window.
    top: u64,
    /// [`OPEN`], or once the window stopped growing, the largest number
    /// past its top that went to the flat sets.
    closed: u64,
    /// The generation in which an id of the run was last recorded.
    last: u64,
    /// Its [`Body`] in [`Dedup::bodies`].
    body: u32,
}

/// The rest of a run: its window, what it holds and whose it is.
#[derive(Debug, Clone)]
struct Body {
    /// From `base` on: [this generation's bits, the last one's].
    words: Vec<[u64; 2]>,
    /// Ids held: [this generation, the last].
    held: [u64; 2],
    /// Its shop in [`Dedup::shops`].
    shop: u32,
    kind: IdKind,
    prefix: Box<str>,
}

impl Body {
    /// Records the number at bit `mask` of word `i`, not held.
    fn set(&mut self, i: usize, mask: u64) {
        self.words[i][0] |= mask;
        self.held[0] += 1;
    }
}

/// How a run is stored.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(test, derive(Serialize, PartialEq))]
struct StoredRun {
    shop: u32,
    kind: IdKind,
    prefix: Box<str>,
    lo: u64,
    base: u64,
    words: Vec<[u64; 2]>,
    held: [u64; 2],
    closed: Option<u64>,
    last: u64,
}

/// The runs in `StoredRun`'s layout, written from the table as it is.
struct Runs<'a>(&'a Dedup);

impl Serialize for Runs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        let mut seq = serializer.serialize_seq(Some(d.bodies.len()))?;
        for head in d.heads.iter() {
            let body = &d.bodies[head.body as usize];
            seq.serialize_element(&StoredRunRef {
                shop: body.shop,
                kind: body.kind,
                prefix: &body.prefix,
                lo: head.lo,
                base: head.base,
                words: &body.words,
                held: body.held,
                closed: (head.closed != OPEN).then_some(head.closed),
                last: head.last,
            })?;
        }
        seq.end()
    }
}

/// A [`StoredRun`] written from a head and its body.
#[derive(Serialize)]
#[serde(rename = "StoredRun")]
struct StoredRunRef<'a> {
    shop: u32,
    kind: IdKind,
    prefix: &'a str,
    lo: u64,
    base: u64,
    words: &'a [[u64; 2]],
    held: [u64; 2],
    closed: Option<u64>,
    last: u64,
}

/// Where a number is with respect to a run's window.
enum Place {
    Below,
    /// Bit `mask` of word `i`.
    At(usize, u64),
    Past,
}

impl Head {
    fn place(&self, number: u64) -> Place {
        if number < self.lo {
            Place::Below
        } else if number < self.top {
            let offset = number - self.base;
            Place::At((offset / WORD_BITS) as usize, 1 << (offset % WORD_BITS))
        } else {
            Place::Past
        }
    }

    /// Grows the window to `number`, past its top; false, and the run
    /// closes, if that is too far or would leave the window too sparse.
    fn grow(&mut self, body: &mut Body, number: u64) -> bool {
        if self.closed != OPEN {
            self.closed = self.closed.max(number);
            return false;
        }
        let words = &mut body.words;
        if words.is_empty() {
            self.base = number - number % WORD_BITS;
            self.lo = self.lo.max(self.base);
        }
        let len = (number - self.base) / WORD_BITS + 1;
        let step = len - words.len() as u64;
        if !words.is_empty() && (step > MAX_STEP_WORDS || len > FREE_WORDS + body.held[0] + body.held[1]) {
            self.closed = number;
            return false;
        }
        words.resize(len as usize, [0; 2]);
        self.top = self.base + WORD_BITS * len;
        true
    }

    /// Records `number`, in the window and not held.
    fn set(&mut self, body: &mut Body, number: u64) {
        let Place::At(i, mask) = self.place(number) else {
            unreachable!("{number} is in the window");
        };
        body.set(i, mask);
    }

    /// Moves on one generation (`steps` 1) or drops both (2); a window
    /// emptied from below gives up its words.
    fn rotate(&mut self, body: &mut Body, steps: u64) {
        let words = &mut body.words;
        for w in words.iter_mut() {
            *w = if steps == 1 { [0, w[0]] } else { [0; 2] };
        }
        body.held = if steps == 1 { [0, body.held[0]] } else { [0; 2] };
        let empty = words.iter().take_while(|w| w[1] == 0).count();
        words.drain(..empty);
        self.base += WORD_BITS * empty as u64;
        self.lo = self.lo.max(self.base);
        if words.is_empty() {
            *words = Vec::new();
            // The numbers that went past the top to the flat sets stay
            // below the next window.
            if self.closed != OPEN {
                self.lo = self.lo.max(self.closed + 1);
                self.closed = OPEN;
            }
        }
    }
}

/// The runs' heads by [`RunKey`]: open addressing with linear probing, at
/// most half full, one head a cache line. Nothing is removed but at a
/// rotation, which builds the table anew.
#[derive(Debug, Clone, Default)]
struct RunTable {
    slots: Vec<Head>,
    len: usize,
}

impl RunTable {
    fn home(&self, key: RunKey) -> usize {
        key as usize & (self.slots.len() - 1)
    }

    /// The slot of `key`'s head.
    fn find(&self, key: RunKey) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.slots[i].key {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Adds `head`, whose key is not in the table.
    fn insert(&mut self, head: Head) {
        if 2 * (self.len + 1) > self.slots.len() {
            let old = std::mem::replace(
                self,
                Self {
                    slots: vec![Head::default(); (2 * self.slots.len()).max(16)],
                    len: 0,
                },
            );
            for &h in old.iter() {
                self.insert(h);
            }
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(head.key);
        while self.slots[i].key != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = head;
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Head> {
        self.slots.iter().filter(|h| h.key != 0)
    }

    /// Asks the CPU to fetch the line `key`'s probe starts on.
    fn prefetch(&self, key: RunKey) {
        if !self.slots.is_empty() {
            mem_prefetch::prefetch_read_data::<_, 3>(&self.slots[self.home(key)]);
        }
    }
}

/// A shop that has runs, or found no room for one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(PartialEq))]
struct ShopRuns {
    shop: Box<str>,
    /// The generation in which a numbered id of the shop last found no run
    /// and no room for one, and went to the flat sets: until that
    /// generation is gone, no run may start (it could hold such an id).
    full: Option<u64>,
    /// How many runs it has (counted on load).
    #[serde(skip)]
    runs: u32,
}

impl ShopRuns {
    /// Whether a new run may start in `generation`.
    fn may_start(&self, generation: u64) -> bool {
        self.runs < MAX_RUNS && self.full.is_none_or(|g| g + 2 <= generation)
    }
}

fn index_shops(shops: &[ShopRuns]) -> HashMap<index::Key, u32, foldhash::fast::RandomState> {
    shops
        .iter()
        .enumerate()
        .map(|(i, s)| (index::key_of(&s.shop), i as u32))
        .collect()
}

/// Where a numbered id is held or goes.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// Bit `mask` of word `i` of the run in slot `h`.
    Bit { h: usize, i: usize, mask: u64 },
    /// Past the top of the run in slot `h`, which is open: new, and the
    /// window may grow.
    Past { h: usize },
    /// No run yet, and room for one (in shop `s`, if it has any runs).
    Start { s: Option<usize> },
    /// The flat sets, for the run in slot `h`: below its window, or past
    /// it once closed.
    Flat { h: usize },
    /// The flat sets, for no run: shop `s` has no room for one.
    Full { s: usize },
}

impl Route {
    fn is_flat(self) -> bool {
        matches!(self, Route::Flat { .. } | Route::Full { .. })
    }
}

impl Dedup {
    /// Records `id` (whose key is `key`) at event time `ts`; false if it
    /// was already there.
    ///
    /// Only a new id moves the generations on: a duplicate stamped a day
    /// or two later must not rotate out the very generation that holds it.
    pub fn insert(&mut self, id: Id, key: &Key, ts: i64) -> bool {
        debug_assert_eq!(Key::of(id).0, key.0, "the key of another id");
        match key.numbered() {
            Some((run, number)) => self.insert_numbered(id, run, number, ts),
            None => self.insert_flat(key.fingerprint().expect("a key without a number has a fingerprint"), ts),
        }
    }

    fn insert_flat(&mut self, fp: Fingerprint, ts: i64) -> bool {
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

    fn insert_numbered(&mut self, id: Id, run: RunKey, number: u64, ts: i64) -> bool {
        let mut route = self.route(id, run, number);
        // Made only for an id the flat sets take (a window's bit needs none).
        let fp = || numbered_fingerprint(run, number);
        if route.is_flat() && !self.rotation_due(ts) {
            // As for an id without a number: the last generation probed,
            // then this one, where the probe places it.
            let fp = fp();
            if self.previous.contains(fp) || !self.current.insert(fp) {
                return false;
            }
            self.went_flat(route, number);
            return true;
        }
        if self.holds(route, run, number) {
            return false;
        }
        if self.rotation_due(ts) {
            self.rotate(ts);
            route = self.route(id, run, number);
        }
        let generation = self.generation;
        match route {
            Route::Bit { h, i, mask } => {
                let head = &mut self.heads.slots[h];
                head.last = generation;
                self.bodies[head.body as usize].set(i, mask);
            }
            Route::Past { h } => {
                let head = &mut self.heads.slots[h];
                head.last = generation;
                let body = &mut self.bodies[head.body as usize];
                if head.grow(body, number) {
                    head.set(body, number);
                } else {
                    self.current.insert(fp());
                }
            }
            Route::Start { s } => {
                let s = s.unwrap_or_else(|| {
                    self.shops.push(ShopRuns {
                        shop: id.shop.into(),
                        full: None,
                        runs: 0,
                    });
                    self.shop_ix.insert(id.shop_key, self.shops.len() as u32 - 1);
                    self.shops.len() - 1
                });
                self.shops[s].runs += 1;
                let (at, _) = numbered(id.text).expect("a numbered id");
                let mut body = Body {
                    words: Vec::new(),
                    held: [0; 2],
                    shop: s as u32,
                    kind: id.kind,
                    prefix: id.text[..at].into(),
                };
                let mut head = Head {
                    key: run,
                    closed: OPEN,
                    last: generation,
                    ..Head::default()
                };
                head.grow(&mut body, number);
                head.set(&mut body, number);
                self.add_run(head, body);
            }
            Route::Flat { .. } | Route::Full { .. } => {
                self.current.insert(fp());
                self.went_flat(route, number);
            }
        }
        true
    }

    /// Adds a run: its head to the table, linked to its body.
    fn add_run(&mut self, mut head: Head, body: Body) {
        head.body = self.bodies.len() as u32;
        self.heads.insert(head);
        self.bodies.push(body);
    }

    /// What a run (or its shop) records of a new id numbered `number` that
    /// `route` sent to the flat sets.
    fn went_flat(&mut self, route: Route, number: u64) {
        match route {
            Route::Flat { h } => {
                let head = &mut self.heads.slots[h];
                head.last = self.generation;
                if number >= head.top {
                    head.grow(&mut self.bodies[head.body as usize], number);
                }
            }
            Route::Full { s } => self.shops[s].full = Some(self.generation),
            _ => unreachable!("{route:?} is not to the flat sets"),
        }
    }

    /// Where the numbered `id`, of run `run`, is held or goes (see
    /// [`Route`]).
    fn route(&self, id: Id, run: RunKey, number: u64) -> Route {
        if let Some(h) = self.heads.find(run) {
            let head = &self.heads.slots[h];
            return match head.place(number) {
                Place::At(i, mask) => Route::Bit { h, i, mask },
                Place::Past if head.closed == OPEN => Route::Past { h },
                Place::Past | Place::Below => Route::Flat { h },
            };
        }
        match self.shop_ix.get(&id.shop_key) {
            None => Route::Start { s: None },
            Some(&s) if self.shops[s as usize].may_start(self.generation) => Route::Start { s: Some(s as usize) },
            Some(&s) => Route::Full { s: s as usize },
        }
    }

    /// Whether the id numbered `number` of run `run`, which `route` leads
    /// to, is held.
    fn holds(&self, route: Route, run: RunKey, number: u64) -> bool {
        match route {
            Route::Bit { h, i, mask } => {
                let [current, previous] = self.bodies[self.heads.slots[h].body as usize].words[i];
                (current | previous) & mask != 0
            }
            Route::Past { .. } | Route::Start { .. } => false,
            Route::Flat { .. } | Route::Full { .. } => self.holds_flat(numbered_fingerprint(run, number)),
        }
    }

    /// Whether `id` was seen, without recording it.
    pub fn contains(&self, id: Id) -> bool {
        let key = Key::of(id);
        match key.numbered() {
            Some((run, number)) => self.holds(self.route(id, run, number), run, number),
            None => self.holds_flat(key.fingerprint().expect("a key without a number has a fingerprint")),
        }
    }

    fn holds_flat(&self, fp: Fingerprint) -> bool {
        self.current.contains(fp) || self.previous.contains(fp)
    }

    /// The look-ahead's first step for an id: starts fetching the lines of
    /// the flat sets its insert will probe, or for a numbered id, its
    /// run's head. Reads nothing that may miss the cache, so a batch can
    /// overlap these waits with the events before it.
    pub fn prefetch(&self, key: &Key) {
        match key.numbered() {
            Some((run, _)) => self.heads.prefetch(run),
            None => self.prefetch_flat(key.fingerprint().expect("a key without a number has a fingerprint")),
        }
    }

    /// The look-ahead's second step, some events after [`Dedup::prefetch`]
    /// (whose line it reads): for a numbered id, the flat sets' lines if it
    /// goes there, or its word of the run's window.
    pub fn prefetch_route(&self, id: Id, key: &Key) {
        let Some((run, number)) = key.numbered() else {
            return;
        };
        match self.route(id, run, number) {
            Route::Bit { h, i, .. } => {
                let body = &self.bodies[self.heads.slots[h].body as usize];
                mem_prefetch::prefetch_read_data::<_, 3>(&body.words[i]);
            }
            Route::Flat { .. } | Route::Full { .. } => self.prefetch_flat(numbered_fingerprint(run, number)),
            Route::Past { .. } | Route::Start { .. } => {}
        }
    }

    fn prefetch_flat(&self, fp: Fingerprint) {
        self.current.prefetch(fp);
        self.previous.prefetch(fp);
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        let in_runs: u64 = self.bodies.iter().map(|b| b.held[0] + b.held[1]).sum();
        self.current.len() + self.previous.len() + in_runs as usize
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
            let steps = if ts >= since + 2 * GENERATION_MS {
                self.previous = FlatSet::default();
                2
            } else {
                1
            };
            self.rotate_runs(steps);
        }
        self.current_since = Some(ts);
    }

    /// Moves every run on `steps` generations, lets go of the runs with
    /// nothing recorded in either generation and of the shops left with
    /// no run and no recent lack of room, and builds the table anew.
    fn rotate_runs(&mut self, steps: u64) {
        self.generation += steps;
        let generation = self.generation;
        let heads = std::mem::take(&mut self.heads);
        let mut bodies: Vec<Option<Body>> = std::mem::take(&mut self.bodies).into_iter().map(Some).collect();
        for shop in &mut self.shops {
            shop.runs = 0;
        }
        let mut kept = Vec::new();
        for mut head in heads.iter().copied() {
            let mut body = bodies[head.body as usize].take().expect("one head per body");
            head.rotate(&mut body, steps);
            if head.last + 2 > generation {
                self.shops[body.shop as usize].runs += 1;
                kept.push((head, body));
            }
        }
        // The shops kept, and each old index's new one.
        let mut moved = Vec::with_capacity(self.shops.len());
        let mut shops = Vec::new();
        for shop in std::mem::take(&mut self.shops) {
            moved.push(shops.len() as u32);
            if shop.runs > 0 || shop.full.is_some_and(|g| g + 2 > generation) {
                shops.push(shop);
            }
        }
        self.shops = shops;
        for (head, mut body) in kept {
            body.shop = moved[body.shop as usize];
            self.add_run(head, body);
        }
        self.shop_ix = index_shops(&self.shops);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Inserts the event id `id` of `shop` at `ts`.
    fn add(d: &mut Dedup, shop: &str, id: &str, ts: i64) -> bool {
        let id = Id::event(shop, id);
        d.insert(id, &Key::of(id), ts)
    }

    fn has(d: &Dedup, shop: &str, id: &str) -> bool {
        d.contains(Id::event(shop, id))
    }

    /// An id of each path: a run's window and the flat sets.
    const BOTH_PATHS: [&str; 2] = ["e1", "3f2a9c4e-7b1d-4e8a-9c6f-d2b1a0e9f8ce"];

    #[test]
    fn remembered_for_at_least_24_hours() {
        for id in BOTH_PATHS {
            let mut d = Dedup::default();
            assert!(add(&mut d, "s", id, 0));
            assert!(!add(&mut d, "s", id, 1));
            // Rotation at 24 h keeps the old generation.
            assert!(add(&mut d, "s", "other", GENERATION_MS));
            assert!(!add(&mut d, "s", id, GENERATION_MS + 1));
            assert!(!add(&mut d, "s", id, GENERATION_MS + GENERATION_MS / 2));
            // The next one drops it.
            assert!(add(&mut d, "s", "another", 2 * GENERATION_MS));
            assert!(!has(&d, "s", id), "{id}");
            assert!(add(&mut d, "s", id, 2 * GENERATION_MS + 1));
        }
    }

    #[test]
    fn a_duplicate_stamped_days_later_neither_rotates_nor_is_forgotten() {
        for id in BOTH_PATHS {
            let mut d = Dedup::default();
            assert!(add(&mut d, "s", id, 0));
            // Two days on, a rotation would drop both generations, and with
            // them the id being asked about.
            assert!(!add(&mut d, "s", id, 2 * GENERATION_MS));
            assert!(!add(&mut d, "s", id, 2 * GENERATION_MS + 1));
            assert_eq!(d.current_since, Some(0));
            // A new id does rotate, and the old one is still held a day more.
            assert!(add(&mut d, "s", "e2", GENERATION_MS));
            assert!(!add(&mut d, "s", id, GENERATION_MS + 1));
        }
    }

    #[test]
    fn an_id_splits_into_prefix_and_number_that_give_it_back() {
        let cases: [(&str, Option<(&str, u64)>); 14] = [
            ("e1", Some(("e", 1))),
            ("e0", Some(("e", 0))),
            ("e00", Some(("e0", 0))),
            ("ORD-000123", Some(("ORD-000", 123))),
            ("123", Some(("", 123))),
            ("2025111100012345678", Some(("", 2_025_111_100_012_345_678))),
            ("x9999999999999999999", Some(("x", 9_999_999_999_999_999_999))),
            // 20 digits may not fit a u64: the flat sets take them.
            ("x10000000000000000000", None),
            ("x000000000000001", Some(("x00000000000000", 1))),
            // A prefix past 16 bytes is no counter's: UUIDs and the like.
            ("3f2a9c4e-7b1d-4e8a-9c6f-d2b1a0e98765", None),
            ("x00000000000000001", None),
            ("e1x", None),
            ("", None),
            ("会话9", Some(("会话", 9))),
        ];
        for (text, want) in cases {
            let got = numbered(text).map(|(at, n)| (&text[..at], n));
            assert_eq!(got, want, "{text:?}");
            if let Some((prefix, n)) = got {
                assert_eq!(format!("{prefix}{n}"), text);
            }
        }
    }

    #[test]
    fn a_rising_run_is_held_in_its_window_and_let_go_two_days_after() {
        let mut d = Dedup::default();
        for n in 1..=100_000 {
            assert!(add(&mut d, "s", &format!("e{n}"), n));
        }
        assert_eq!(
            (d.current.len(), d.shops.len(), d.shops[0].runs, d.bodies.len()),
            (0, 1, 1, 1)
        );
        assert_eq!(d.bodies[0].words.len(), 100_000 / 64 + 1);
        assert_eq!(d.len(), 100_000);
        assert!((1..=100_000).all(|n| has(&d, "s", &format!("e{n}"))));
        assert!(!has(&d, "s", "e0") && !has(&d, "s", "e100001") && !has(&d, "t", "e5"));
        // Other shops and kinds are other runs.
        assert!(add(&mut d, "t", "e5", 5));
        let order = Id::order("s", "e5");
        assert!(d.insert(order, &Key::of(order), 5) && !d.insert(order, &Key::of(order), 6));
        // Two rotations with nothing of the run between: it is gone.
        assert!(add(&mut d, "u", "x", 1 + GENERATION_MS));
        assert!(has(&d, "s", "e77"));
        assert!(add(&mut d, "u", "y", 1 + 2 * GENERATION_MS));
        assert!(!has(&d, "s", "e77"));
        assert_eq!(d.shops.len(), 0);
        assert!(add(&mut d, "s", "e77", 1 + 2 * GENERATION_MS));
    }

    #[test]
    fn a_shop_let_go_at_a_rotation_leaves_every_other_run_to_its_own_shop() {
        let mut d = Dedup::default();
        assert!(add(&mut d, "a", "e1", 0) && add(&mut d, "b", "e1", 0) && add(&mut d, "c", "e1", 0));
        // b and c stay busy, a falls silent: its run and its place go.
        for day in 1..=3 {
            for shop in ["b", "c"] {
                assert!(add(&mut d, shop, &format!("e{}", day + 1), day * GENERATION_MS));
            }
        }
        assert_eq!(d.shops.iter().map(|s| &*s.shop).collect::<Vec<_>>(), ["b", "c"]);
        for head in d.heads.iter() {
            let body = &d.bodies[head.body as usize];
            let shop = &d.shops[body.shop as usize].shop;
            assert_eq!(head.key, run_key(shop, body.kind, &body.prefix));
        }
        assert!(has(&d, "b", "e4") && has(&d, "c", "e3") && !has(&d, "a", "e1"));
        assert!(!add(&mut d, "c", "e4", 3 * GENERATION_MS + 1));
        assert!(add(&mut d, "a", "e1", 3 * GENERATION_MS + 2) && !has(&d, "a", "e2"));
    }

    #[test]
    fn ids_crafted_to_spread_or_to_vary_their_prefix_cannot_grow_the_runs() {
        let mut d = Dedup::default();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut ids = Vec::new();
        for k in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Random numbers under one prefix, and a thousand prefixes.
            let id = if k % 2 == 0 {
                format!("e{}", rng % 1_000_000_000_000)
            } else {
                format!("p{}-{}", rng % 1000, k)
            };
            if add(&mut d, "s", &id, k) {
                ids.push(id);
            }
        }
        assert!(d.shops[0].runs <= MAX_RUNS && d.bodies.len() as u32 == d.shops[0].runs);
        for run in &d.bodies {
            assert!(run.words.len() as u64 <= FREE_WORDS + run.held[0] + run.held[1] + 1);
        }
        assert_eq!(d.len(), ids.len());
        assert!(ids.iter().all(|id| has(&d, "s", id) && !add(&mut d, "s", id, 30_000)));
    }

    /// What [`Dedup`] must answer: every id accepted in this generation or
    /// the last, generations moving as [`Dedup::insert`] says.
    #[derive(Default)]
    struct Exact {
        current: HashSet<(String, IdKind, String)>,
        previous: HashSet<(String, IdKind, String)>,
        since: Option<i64>,
    }

    impl Exact {
        fn insert(&mut self, id: Id, ts: i64) -> bool {
            let key = (id.shop.to_string(), id.kind, id.text.to_string());
            if self.current.contains(&key) || self.previous.contains(&key) {
                return false;
            }
            if self.since.is_none_or(|s| ts >= s + GENERATION_MS) {
                if let Some(s) = self.since {
                    self.previous = std::mem::take(&mut self.current);
                    if ts >= s + 2 * GENERATION_MS {
                        self.previous.clear();
                    }
                }
                self.since = Some(ts);
            }
            self.current.insert(key)
        }
    }

    #[test]
    fn the_set_answers_as_an_exact_set_would() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (mut d, mut exact) = (Dedup::default(), Exact::default());
        let mut sent: Vec<(usize, IdKind, String)> = Vec::new();
        // Per shop and style: the next number of a rising counter.
        let mut counters = [[1u64; 4]; 3];
        let mut ts = 0i64;
        for step in 0..200_000 {
            // Hours pass; now and then a day, or two at once.
            ts += match next(20_000) {
                0..=2 => GENERATION_MS,
                3 => 2 * GENERATION_MS + 1,
                _ => next(3_000) as i64,
            };
            let shop = next(3) as usize;
            let kind = if next(10) == 0 { IdKind::Order } else { IdKind::Event };
            let roll = next(100);
            let text = if roll < 15 && !sent.is_empty() {
                // A resend, or an event that comes late.
                let (s, k, t) = sent[next(sent.len() as u64) as usize].clone();
                let id = if k == IdKind::Event {
                    Id::event(SHOPS[s], &t)
                } else {
                    Id::order(SHOPS[s], &t)
                };
                let key = Key::of(id);
                assert_eq!(d.insert(id, &key, ts), exact.insert(id, ts), "step {step}: {id:?}");
                continue;
            } else {
                let style = next(4) as usize;
                let c = &mut counters[shop][style];
                // Mostly small steps; sometimes a jump far ahead or back.
                *c = match next(1000) {
                    0 => (*c * 1000 + 7) % 1_000_000_000_000_000,
                    1 => *c / 3,
                    _ => *c + 1 + next(40),
                };
                match (style, roll) {
                    (_, 15..=19) => format!("{:012x}-{:x}", next(1 << 48), next(16)),
                    (_, 20..=21) => format!("p{}-{}", next(30), next(1_000_000)),
                    (0, _) => format!("e{c}"),
                    (1, _) => format!("ORD-{c:08}"),
                    (2, _) => format!("{c}"),
                    _ => format!("m{}", *c % 5_000_000),
                }
            };
            sent.push((shop, kind, text.clone()));
            let id = if kind == IdKind::Event {
                Id::event(SHOPS[shop], &text)
            } else {
                Id::order(SHOPS[shop], &text)
            };
            assert_eq!(
                d.insert(id, &Key::of(id), ts),
                exact.insert(id, ts),
                "step {step}: {id:?}"
            );
            if step % 50_000 == 49_999 {
                d = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
            }
        }
        assert_eq!(d.len(), exact.current.len() + exact.previous.len());
        for (s, kind, text) in &sent {
            let id = if *kind == IdKind::Event {
                Id::event(SHOPS[*s], text)
            } else {
                Id::order(SHOPS[*s], text)
            };
            let key = (id.shop.to_string(), id.kind, id.text.to_string());
            let held = exact.current.contains(&key) || exact.previous.contains(&key);
            assert_eq!(d.contains(id), held, "{id:?}");
        }
        assert!(d.heads.iter().any(|h| h.closed != OPEN), "a run closed");
        assert!(d.current.len() > 0, "the flat sets took ids");
        let in_runs: u64 = d.bodies.iter().map(|r| r.held[0] + r.held[1]).sum();
        // Both paths in use (with 962 ids in runs and 22 672 in the flat
        // sets at the end, on 2026-12-07).
        assert!(in_runs > 500, "runs took ids");
    }

    const SHOPS: [&str; 3] = ["shop-a", "shop-b", "店铺"];

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

    #[test]
    fn numbered_fingerprints_are_stable_and_distinct() {
        // Snapshots store them too: these values must never change.
        let run = run_key("shop-a", IdKind::Event, "e");
        assert_eq!(run, 0xaa8a_8c6d_a602_5e07_49ca_634d_4cf1_fc7a);
        assert_eq!(numbered_fingerprint(run, 1), 0x2ef5_3076_a0e9_5723_1e77_eb3c_f564_5e83);
        let mut seen = HashSet::new();
        for shop in 0..50 {
            for kind in [IdKind::Event, IdKind::Order] {
                let run = run_key(&format!("s{shop}"), kind, "e");
                for n in 0..2000 {
                    assert!(seen.insert(split(numbered_fingerprint(run, n))));
                }
            }
        }
        // And none of them is an id's fingerprint taken the other way.
        assert!((0..2000).all(|n| !seen.contains(&split(fingerprint("s0", &format!("e{n}"))))));
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
            add(&mut d, "s", &format!("x{i}y"), i);
            add(&mut d, "s", &format!("e{i}"), i);
        }
        add(&mut d, "s", "late", GENERATION_MS + 5);
        let back: Dedup = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
        assert_eq!(back.len(), d.len());
        assert!((0..3000).all(|i| has(&back, "s", &format!("x{i}y")) && has(&back, "s", &format!("e{i}"))));
        assert!(has(&back, "s", "late") && !has(&back, "s", "e3000"));
        // Rotation sized the new generation for yesterday's count.
        assert!(d.current.segments.len() * SEGMENT_SLOTS * 6 >= 3000 * 10);
    }

    #[test]
    fn a_dedup_is_written_in_the_layout_of_its_stored_form() {
        // Split into several segments, with the fingerprint 0, both
        // generations and a run in use.
        let mut d = Dedup::default();
        for i in 0..2000 {
            add(&mut d, "s", &format!("x{i}y"), i);
        }
        add(&mut d, "s", "e1", 2001);
        add(&mut d, "s", "late", GENERATION_MS + 5);
        d.insert_flat(0, GENERATION_MS + 6);
        let mut n = 0;
        while d.current.segments.len() < 3 {
            add(&mut d, "t", &format!("x{n}y"), GENERATION_MS + 7);
            n += 1;
        }
        add(&mut d, "s", "e2", GENERATION_MS + 8);
        add(&mut d, "t", "n5", GENERATION_MS + 9);
        let layout = DedupData {
            current: d.current.iter().collect(),
            previous: d.previous.iter().collect(),
            current_since: d.current_since,
            generation: d.generation,
            shops: d.shops.clone(),
            runs: d
                .heads
                .iter()
                .map(|h| {
                    let b = &d.bodies[h.body as usize];
                    StoredRun {
                        shop: b.shop,
                        kind: b.kind,
                        prefix: b.prefix.clone(),
                        lo: h.lo,
                        base: h.base,
                        words: b.words.clone(),
                        held: b.held,
                        closed: (h.closed != OPEN).then_some(h.closed),
                        last: h.last,
                    }
                })
                .collect(),
        };
        assert_eq!(layout.runs.len(), 2);
        assert_eq!(layout.current.len(), d.current.len());
        assert!(layout.current.contains(&kept(0)));
        let bytes = postcard::to_stdvec(&d).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&layout).unwrap());
        let back: Dedup = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), d.len());
        assert!(back.holds_flat(0) && has(&back, "t", "x0y") && has(&back, "s", "x1y"));
        assert!(has(&back, "s", "e1") && has(&back, "s", "e2") && !has(&back, "s", "e3"));
        assert!(has(&back, "t", "n5") && !has(&back, "s", "n5"));
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
