//! Things listed by the hour, for a clean-up that forgets what was last
//! seen before a horizon: each thing listed once, under an hour no later
//! than its last time (or than the hour of the clean-up that last read
//! it). As long as a thing's last time only rises, a clean-up reads only
//! the hours at or before its horizon's and finds there everything it is
//! to forget, instead of reading everything to find the few due.
//!
//! A shop lists its customers this way, and the (agent, customer) marks
//! of its partials. Listings are derived, not stored: a restore lists
//! each thing again under the hour of its last time.

use std::collections::BTreeMap;

use super::window::HOUR_MS;

/// Things listed under hours (ms / [`HOUR_MS`]). The latest hour listed
/// under is kept apart from the earlier ones: nearly everything is listed
/// under the hour of the event clock, and a push there reads the one line
/// its list ends on, where a map lookup read several.
#[derive(Debug, Clone)]
pub(super) struct Hours<T> {
    /// The latest hour listed under, and what is listed under it (`None`
    /// only while nothing is listed).
    latest: Option<(i64, Vec<T>)>,
    /// The hours before it.
    earlier: BTreeMap<i64, Vec<T>>,
}

impl<T> Default for Hours<T> {
    fn default() -> Self {
        Self {
            latest: None,
            earlier: BTreeMap::new(),
        }
    }
}

impl<T: Copy + Ord> Hours<T> {
    /// Lists `item` under the hour of `ts`. Kept out of line: inlined
    /// into the hot path it cost the desk's first day about 4 % (the
    /// rest of the event's code placed and predicted worse), out of line
    /// it read level (BENCHMARKS.md, *The marks' clean-up compares times
    /// as held, then marks listed by the hour …*).
    #[inline(never)]
    pub fn list(&mut self, item: T, ts: i64) {
        let hour = ts.div_euclid(HOUR_MS);
        match &mut self.latest {
            Some((latest, items)) if *latest == hour => items.push(item),
            Some((latest, _)) if *latest > hour => self.earlier.entry(hour).or_default().push(item),
            _ => {
                if let Some((h, items)) = self.latest.replace((hour, vec![item])) {
                    // Every earlier hour is before the latest, so `h` is
                    // none of them: its list moves over whole.
                    let before = self.earlier.insert(h, items);
                    debug_assert!(before.is_none(), "an earlier hour at or after the latest");
                }
            }
        }
    }

    /// Takes out everything listed under the hour of `horizon` or before,
    /// sorted: the clean-up reads each, and lists again what it keeps.
    pub fn take_due(&mut self, horizon: i64) -> Vec<T> {
        let due_hour = horizon.div_euclid(HOUR_MS);
        let mut due = Vec::new();
        if self.earlier.first_key_value().is_some_and(|(&h, _)| h <= due_hour) {
            let later = self.earlier.split_off(&(due_hour + 1));
            due.extend(std::mem::replace(&mut self.earlier, later).into_values().flatten());
        }
        if self.latest.as_ref().is_some_and(|&(h, _)| h <= due_hour) {
            due.extend(self.latest.take().into_iter().flat_map(|(_, items)| items));
        }
        due.sort_unstable();
        due
    }

    /// Everything listed, sorted.
    #[cfg(test)]
    pub fn all(&self) -> Vec<T> {
        let mut all: Vec<T> = self
            .earlier
            .values()
            .chain(self.latest.iter().map(|(_, items)| items))
            .flatten()
            .copied()
            .collect();
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_is_listed_at_or_before_the_horizons_hour_and_nothing_later() {
        let mut h = Hours::default();
        h.list(3u32, 5 * HOUR_MS - 1);
        h.list(1, 5 * HOUR_MS + 7);
        h.list(2, 6 * HOUR_MS);
        h.list(0, -1);
        assert_eq!(h.take_due(4 * HOUR_MS - 1), [0]);
        assert_eq!(h.take_due(5 * HOUR_MS), [1, 3]);
        assert_eq!(h.take_due(5 * HOUR_MS + 8), Vec::<u32>::new());
        assert_eq!(h.all(), [2]);
        // The latest hour taken out, then listed under again, and an
        // earlier one after a later.
        assert_eq!(h.take_due(6 * HOUR_MS), [2]);
        h.list(4, 7 * HOUR_MS);
        h.list(5, 6 * HOUR_MS + 1);
        h.list(6, 7 * HOUR_MS + 2);
        assert_eq!(h.all(), [4, 5, 6]);
        assert_eq!(h.take_due(6 * HOUR_MS), [5]);
        assert_eq!(h.take_due(8 * HOUR_MS), [4, 6]);
        assert_eq!(h.all(), Vec::<u32>::new());
    }
}
