//! Business days: which local calendar day a `ts` falls on, in the desk's
//! time zone, and where that day starts and ends (ms since the epoch).

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// One local calendar day as `[start_ms, end_ms)`; DST days are 23 or 25 hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    /// First ms of the day.
    pub start_ms: i64,
    /// First ms of the next day.
    pub end_ms: i64,
}

impl Day {
    /// Whether `ts` lies in this day.
    pub fn contains(&self, ts: i64) -> bool {
        (self.start_ms..self.end_ms).contains(&ts)
    }
}

/// Maps timestamps to days, caching the last day seen (most events share it).
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    last: Option<Day>,
}

impl Calendar {
    /// A calendar in `tz`.
    pub fn new(tz: TimeZone) -> Self {
        Self { tz, last: None }
    }

    /// The day containing `ts`.
    pub fn day_of(&mut self, ts: i64) -> Day {
        if let Some(day) = self.last.filter(|d| d.contains(ts)) {
            return day;
        }
        let day = compute(&self.tz, ts);
        self.last = Some(day);
        day
    }

    /// The day containing `ts`, without touching the cache.
    pub fn peek(&self, ts: i64) -> Day {
        match self.last {
            Some(day) if day.contains(ts) => day,
            _ => compute(&self.tz, ts),
        }
    }
}

fn compute(tz: &TimeZone, ts: i64) -> Day {
    let Ok(instant) = Timestamp::from_millisecond(ts) else {
        // Validation keeps ts inside jiff's range; fall back to UTC days.
        let start = ts.div_euclid(86_400_000) * 86_400_000;
        return Day {
            start_ms: start,
            end_ms: start + 86_400_000,
        };
    };
    let date = instant.to_zoned_datetime(tz.clone()).date();
    let start = date
        .to_zoned_datetime(tz.clone())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(ts);
    let end = date
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned_datetime(tz.clone()).ok())
        .map(|z| z.timestamp().as_millisecond())
        .unwrap_or(start + 86_400_000);
    Day {
        start_ms: start,
        end_ms: end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn shanghai_midnight_is_16_utc() {
        let mut cal = Calendar::new(TimeZone::get("Asia/Shanghai").unwrap());
        let day = cal.day_of(ms("2026-11-10T16:00:00Z"));
        assert_eq!(day.start_ms, ms("2026-11-10T16:00:00Z"));
        assert_eq!(day.end_ms, ms("2026-11-11T16:00:00Z"));
        let before = cal.day_of(ms("2026-11-10T15:59:59.999Z"));
        assert_eq!(before.end_ms, day.start_ms);
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let mut cal = Calendar::new(TimeZone::get("America/New_York").unwrap());
        let spring = cal.day_of(ms("2026-03-08T12:00:00Z"));
        assert_eq!(spring.end_ms - spring.start_ms, 23 * 3_600_000);
        let fall = cal.day_of(ms("2026-11-01T12:00:00Z"));
        assert_eq!(fall.end_ms - fall.start_ms, 25 * 3_600_000);
        assert_eq!(fall.start_ms, ms("2026-11-01T04:00:00Z"));
    }
}
