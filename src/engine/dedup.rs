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
pub struct Dedup {
    current: HashSet<Fingerprint, Fixed>,
    previous: HashSet<Fingerprint, Fixed>,
    /// Event time at which `current` started.
    current_since: Option<i64>,
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

/// The fingerprint of `(shop, id)`: two independent 64-bit SipHashes.
pub fn fingerprint(shop: &str, id: &str) -> Fingerprint {
    let half = |salt: u8| {
        #[allow(deprecated)] // SipHasher with fixed keys: stable across runs.
        let mut h = std::hash::SipHasher::new_with_keys(0x6465_736b_7075_6c73, u64::from(salt));
        h.write(shop.as_bytes());
        h.write_u8(0xff);
        h.write(id.as_bytes());
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
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
    fn shop_is_part_of_the_key() {
        assert_ne!(fingerprint("s1", "e"), fingerprint("s2", "e"));
        assert_ne!(fingerprint("s", "1e"), fingerprint("s1", "e"));
    }
}
