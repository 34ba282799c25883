//! Duplicate detection of `(shop, id)`: 128-bit fingerprints kept in two
//! generations that rotate every 24 h of event time, so an id is recognized
//! for at least 24 h and at most 48 h after it was last accepted.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};

/// How long one generation covers, in ms of event time.
pub const GENERATION_MS: i64 = 24 * 3_600_000;

/// A fingerprint of `(shop, id)`.
pub type Fingerprint = u128;

/// The set of recently accepted `(shop, id)`s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "DedupData")]
pub struct Dedup {
    current: HashSet<Fingerprint, Fixed>,
    previous: HashSet<Fingerprint, Fixed>,
    /// Event time at which `current` started.
    current_since: Option<i64>,
}

/// How a [`Dedup`] loads: its sets are written as plain sequences, read
/// back into vectors, and each set is sized once instead of growing
/// through a dozen rehashes.
#[derive(Debug, Clone, Deserialize)]
struct DedupData {
    current: Vec<Fingerprint>,
    previous: Vec<Fingerprint>,
    current_since: Option<i64>,
}

impl From<DedupData> for Dedup {
    fn from(d: DedupData) -> Self {
        let set = |v: Vec<Fingerprint>| {
            let mut s = HashSet::with_capacity_and_hasher(v.len(), Fixed);
            s.extend(v);
            s
        };
        Self {
            current: set(d.current),
            previous: set(d.previous),
            current_since: d.current_since,
        }
    }
}

/// A fixed-key hasher so fingerprints and sets are the same on every run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Fixed;

impl BuildHasher for Fixed {
    type Hasher = FoldFinish;
    fn build_hasher(&self) -> FoldFinish {
        FoldFinish(0)
    }
}

/// Hashes an already uniformly distributed u128 by folding it.
#[derive(Debug)]
pub struct FoldFinish(u64);

impl Hasher for FoldFinish {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(buf);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// The fingerprint of `(shop, id)`: two independently seeded 64-bit lanes of
/// a multiply-rotate hash over 8-byte words. Defined here, not borrowed
/// from a crate, so it stays the same across versions (snapshots hold it).
pub fn fingerprint(shop: &str, id: &str) -> Fingerprint {
    let mut a = Lane::new(0x243f_6a88_85a3_08d3);
    let mut b = Lane::new(0x1319_8a2e_0370_7344);
    for part in [shop.as_bytes(), &[0xff], id.as_bytes()] {
        a.write(part);
        b.write(part);
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

struct Lane {
    h: u64,
    len: u64,
    buf: u64,
    filled: u32,
}

impl Lane {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new(seed: u64) -> Self {
        Self {
            h: seed,
            len: 0,
            buf: 0,
            filled: 0,
        }
    }

    fn mix(&mut self, word: u64) {
        self.h = (self.h ^ word.wrapping_mul(Self::K))
            .rotate_left(29)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }

    fn write(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        // Whole words while the buffer is empty: the same result as the
        // byte loop below, which packs bytes little-endian.
        while self.filled == 0 && bytes.len() >= 8 {
            let (word, rest) = bytes.split_at(8);
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            bytes = rest;
        }
        for &byte in bytes {
            self.buf |= u64::from(byte) << (8 * self.filled);
            self.filled += 1;
            if self.filled == 8 {
                self.mix(self.buf);
                self.buf = 0;
                self.filled = 0;
            }
        }
    }

    fn finish(mut self) -> u64 {
        let (buf, len) = (self.buf, self.len);
        self.mix(buf);
        self.mix(len);
        let mut z = self.h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Dedup {
    /// Records `fp` at event time `ts`; false if it was already there.
    pub fn insert(&mut self, fp: Fingerprint, ts: i64) -> bool {
        self.rotate(ts);
        if self.previous.contains(&fp) {
            return false;
        }
        self.current.insert(fp)
    }

    /// Whether `fp` was seen, without recording it.
    pub fn contains(&self, fp: Fingerprint) -> bool {
        self.current.contains(&fp) || self.previous.contains(&fp)
    }

    /// Number of fingerprints held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rotate(&mut self, ts: i64) {
        match self.current_since {
            None => self.current_since = Some(ts),
            Some(since) if ts >= since + GENERATION_MS => {
                self.previous = std::mem::take(&mut self.current);
                // Two generations back is gone; a long silence drops both.
                if ts >= since + 2 * GENERATION_MS {
                    self.previous.clear();
                }
                self.current_since = Some(ts);
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn shop_is_part_of_the_key() {
        assert_ne!(fingerprint("s1", "e"), fingerprint("s2", "e"));
        assert_ne!(fingerprint("s", "1e"), fingerprint("s1", "e"));
    }
}
