//! Windows and the accumulators behind them. A [`Samples`] store records one
//! scope's marks (response samples, orders, transfers…) for `today` and the
//! last hour; a [`WindowAcc`] is one window's mergeable total, which turns
//! into the protocol's [`WindowMetrics`].

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::day::Day;
use super::hist::Hist;

/// Response times at or above this are recorded at this value (30 days:
/// a weekend or a holiday without an answer is still measured exactly).
pub const MAX_TRACKED_MS: u64 = 30 * 86_400_000;
/// The histogram's unit, ms: below 64 × 256 ms it is exact to 64 ms,
/// above it to 1/128 of the value, inside the protocol's "1 % or 100 ms,
/// whichever is larger", and 20 % smaller than 1 ms units would be.
pub const HIST_UNIT_MS: u64 = 64;
/// Samples kept raw (exact percentiles) before spilling into a histogram.
pub const RAW_LIMIT: usize = 512;
/// The longest rolling window.
pub const HOUR_MS: i64 = 3_600_000;

/// A query window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    /// The business day of `now`, midnight to midnight in the desk's zone.
    #[serde(rename = "today")]
    Today,
    /// Rolling hour.
    #[serde(rename = "1h")]
    Hour,
    /// Rolling 15 minutes.
    #[serde(rename = "15m")]
    Min15,
    /// Rolling 5 minutes.
    #[serde(rename = "5m")]
    Min5,
}

impl Window {
    /// Every window, `today` first.
    pub const ALL: [Window; 4] = [Window::Today, Window::Hour, Window::Min15, Window::Min5];

    /// Parses `today`, `1h`, `15m`, `5m`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "today" => Self::Today,
            "1h" => Self::Hour,
            "15m" => Self::Min15,
            "5m" => Self::Min5,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Today => "today",
            Self::Hour => "1h",
            Self::Min15 => "15m",
            Self::Min5 => "5m",
        }
    }

    /// Length of a rolling window in ms; `None` for `today`.
    pub fn rolling_ms(self) -> Option<i64> {
        match self {
            Self::Today => None,
            Self::Hour => Some(HOUR_MS),
            Self::Min15 => Some(15 * 60_000),
            Self::Min5 => Some(5 * 60_000),
        }
    }
}

/// The `ts` range a window covers at some `now`, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Earliest ts inside.
    pub lo: i64,
    /// Latest ts inside.
    pub hi: i64,
}

impl Range {
    /// The range of `window` at `now`, given the day of `now`.
    pub fn of(window: Window, now: i64, today: Day) -> Self {
        match window.rolling_ms() {
            None => Range {
                lo: today.start_ms,
                hi: today.end_ms - 1,
            },
            // (now - W, now]; events stamped slightly ahead of the server
            // clock count as current.
            Some(w) => Range {
                lo: now.saturating_sub(w) + 1,
                hi: i64::MAX,
            },
        }
    }

    /// Whether `ts` is inside.
    pub fn contains(&self, ts: i64) -> bool {
        ts >= self.lo && ts <= self.hi
    }
}

/// A distribution of response times: exact while small, a [`Hist`]
/// (64 ms .. 30 days, 2 significant figures, u32 counts) once large.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(into = "DistData", from = "DistData")]
pub struct Dist {
    raw: Vec<u32>,
    hist: Option<Hist>,
}

/// A [`Dist`] on disk: raw samples and the histogram's non-zero counts,
/// each at the highest value of its bucket (as HdrHistogram's
/// `iter_recorded` named them when it kept them).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DistData {
    raw: Vec<u32>,
    counts: Option<Vec<(u64, u32)>>,
}

impl From<Dist> for DistData {
    fn from(d: Dist) -> Self {
        Self {
            counts: d.hist.map(|h| h.recorded().collect()),
            raw: d.raw,
        }
    }
}

impl From<DistData> for Dist {
    fn from(d: DistData) -> Self {
        let hist = d.counts.map(|counts| {
            let mut h = Hist::default();
            for (v, c) in counts {
                h.record_n(v, c);
            }
            h
        });
        Self { raw: d.raw, hist }
    }
}

impl Dist {
    /// Records one sample in ms (saturating at 30 days).
    pub fn record(&mut self, ms: u64) {
        let ms = ms.min(MAX_TRACKED_MS);
        match &mut self.hist {
            Some(h) => h.record(ms),
            None => {
                self.raw.push(ms as u32);
                if self.raw.len() > RAW_LIMIT {
                    self.spill();
                }
            }
        }
    }

    /// Asks the cache for the line a sample of `ms` will be recorded on,
    /// once the samples are a histogram. A hint only.
    pub fn prefetch(&self, ms: u64) {
        if let Some(h) = &self.hist {
            h.prefetch(ms);
        }
    }

    fn spill(&mut self) {
        let h = self.hist.get_or_insert_with(Hist::default);
        for v in self.raw.drain(..) {
            h.record(u64::from(v));
        }
        self.raw = Vec::new();
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Dist) {
        if let Some(oh) = &other.hist {
            self.hist.get_or_insert_with(Hist::default).add(oh);
            if !self.raw.is_empty() {
                self.spill();
            }
        }
        for &v in &other.raw {
            self.record(u64::from(v));
        }
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.raw.len() as u64 + self.hist.as_ref().map_or(0, Hist::len)
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nearest-rank quantiles (`ceil(q·n)`-th smallest sample), in ms.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<u64>; N] {
        let n = self.len();
        if n == 0 {
            return [None; N];
        }
        match &self.hist {
            None => {
                let mut sorted = self.raw.clone();
                sorted.sort_unstable();
                qs.map(|q| {
                    let rank = ((q * n as f64).ceil() as usize).clamp(1, sorted.len());
                    Some(u64::from(sorted[rank - 1]))
                })
            }
            Some(h) => qs.map(|q| h.quantile(q)),
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.raw.capacity() * 4 + self.hist.as_ref().map_or(0, |_| super::hist::LEN * 4)
    }

    /// The samples as counts per bucket `[from_ms, to_ms)` of the given edges.
    pub fn buckets(&self, edges_ms: &[u64]) -> Vec<u64> {
        let mut counts = vec![0u64; edges_ms.len().saturating_sub(1)];
        let mut put = |v: u64, c: u64| {
            if let Some(i) = edges_ms.windows(2).position(|w| v >= w[0] && v < w[1]) {
                counts[i] += c;
            } else if let Some(last) = counts.last_mut() {
                *last += c;
            }
        };
        for &v in &self.raw {
            put(u64::from(v), 1);
        }
        if let Some(h) = &self.hist {
            for (middle, n) in h.middles() {
                put(middle, n.into());
            }
        }
        counts
    }
}

/// Additive counters of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Response samples.
    pub responses: u64,
    /// Sum of response samples, ms.
    pub response_sum_ms: u64,
    /// Largest response sample, ms.
    pub max_ms: Option<u64>,
    /// First-response samples.
    pub first_responses: u64,
    /// Sum of first-response samples, ms.
    pub first_response_sum_ms: u64,
    /// Samples above `norm_ms`.
    pub slow_responses: u64,
    /// Auto-replies sent.
    pub auto_replies: u64,
    /// Conversations transferred to the agent.
    pub transfers_in: u64,
    /// Conversations transferred away from the agent.
    pub transfers_out: u64,
    /// Orders credited.
    pub orders: u64,
    /// Sum of credited orders, fen. This and the other sums stop at
    /// `u64::MAX` rather than wrap: amounts are accepted up to `i64::MAX`.
    pub sales_fen: u64,
    /// Orders with no agent to credit (shop level).
    pub silent_orders: u64,
    /// Sum of silent orders, fen.
    pub silent_sales_fen: u64,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, o: &Tally) {
        self.responses += o.responses;
        self.response_sum_ms = self.response_sum_ms.saturating_add(o.response_sum_ms);
        self.max_ms = self.max_ms.max(o.max_ms);
        self.first_responses += o.first_responses;
        self.first_response_sum_ms = self.first_response_sum_ms.saturating_add(o.first_response_sum_ms);
        self.slow_responses += o.slow_responses;
        self.auto_replies += o.auto_replies;
        self.transfers_in += o.transfers_in;
        self.transfers_out += o.transfers_out;
        self.orders += o.orders;
        self.sales_fen = self.sales_fen.saturating_add(o.sales_fen);
        self.silent_orders += o.silent_orders;
        self.silent_sales_fen = self.silent_sales_fen.saturating_add(o.silent_sales_fen);
    }

    fn add(&mut self, mark: &Mark) {
        match mark.kind() {
            MarkKind::Response { first, slow } => {
                self.responses += 1;
                self.response_sum_ms = self.response_sum_ms.saturating_add(mark.value);
                self.max_ms = self.max_ms.max(Some(mark.value));
                if first {
                    self.first_responses += 1;
                    self.first_response_sum_ms = self.first_response_sum_ms.saturating_add(mark.value);
                }
                if slow {
                    self.slow_responses += 1;
                }
            }
            MarkKind::AutoReply => self.auto_replies += 1,
            MarkKind::TransferIn => self.transfers_in += 1,
            MarkKind::TransferOut => self.transfers_out += 1,
            MarkKind::Order => {
                self.orders += 1;
                self.sales_fen = self.sales_fen.saturating_add(mark.value);
            }
            MarkKind::SilentOrder => {
                self.silent_orders += 1;
                self.silent_sales_fen = self.silent_sales_fen.saturating_add(mark.value);
            }
        }
    }
}

/// What a [`Mark`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarkKind {
    /// A response sample; `value` is ms.
    Response {
        /// The conversation's first response.
        first: bool,
        /// Above the scope's `norm_ms`.
        slow: bool,
    },
    /// An auto-reply.
    AutoReply,
    /// A transfer to the agent.
    TransferIn,
    /// A transfer away from the agent.
    TransferOut,
    /// A credited order; `value` is fen.
    Order,
    /// A silent order; `value` is fen.
    SilentOrder,
}

/// One countable happening at `ts`, in 16 bytes: the hour of marks is
/// most of a busy partial's memory, and a desk's first hour grows it by
/// every response and order. The kind rides in the low four bits of
/// `ts · 16`: event times are below 2^48 ms (year 9999), far inside the
/// ±2^59 this leaves. Stored as `{ts, kind, value}` ([`MarkData`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "MarkData", into = "MarkData")]
pub struct Mark {
    ts_kind: i64,
    /// ms for responses, fen for orders, 0 otherwise.
    pub value: u64,
}

impl Mark {
    /// The span of `ts` a mark holds; an event time outside it (none the
    /// protocol accepts) is kept as its nearest end.
    const TS_LIMIT: i64 = 1 << 59;

    pub fn new(ts: i64, kind: MarkKind, value: u64) -> Self {
        let ts = ts.clamp(-Self::TS_LIMIT, Self::TS_LIMIT - 1);
        Self {
            ts_kind: ts * 16 + i64::from(kind.code()),
            value,
        }
    }

    /// Event time, ms.
    pub fn ts(&self) -> i64 {
        self.ts_kind >> 4
    }

    /// What it counts.
    pub fn kind(&self) -> MarkKind {
        MarkKind::from_code((self.ts_kind & 15) as u8)
    }
}

impl MarkKind {
    /// Four bits: a response's two flags, or 4..=8 for the others.
    fn code(self) -> u8 {
        match self {
            Self::Response { first, slow } => u8::from(first) | u8::from(slow) << 1,
            Self::AutoReply => 4,
            Self::TransferIn => 5,
            Self::TransferOut => 6,
            Self::Order => 7,
            Self::SilentOrder => 8,
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0..=3 => Self::Response {
                first: code & 1 != 0,
                slow: code & 2 != 0,
            },
            4 => Self::AutoReply,
            5 => Self::TransferIn,
            6 => Self::TransferOut,
            7 => Self::Order,
            _ => Self::SilentOrder,
        }
    }
}

/// How a [`Mark`] is stored: the layout it had as a plain struct, so
/// snapshots read either way.
#[derive(Serialize, Deserialize)]
struct MarkData {
    ts: i64,
    kind: MarkKind,
    value: u64,
}

impl From<MarkData> for Mark {
    fn from(d: MarkData) -> Self {
        Self::new(d.ts, d.kind, d.value)
    }
}

impl From<Mark> for MarkData {
    fn from(m: Mark) -> Self {
        Self {
            ts: m.ts(),
            kind: m.kind(),
            value: m.value,
        }
    }
}

/// One day's tally and distribution.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaySlot {
    /// Start of the day (ms); the slot is empty when `None`.
    pub day_start: Option<i64>,
    /// Counters.
    pub tally: Tally,
    /// Response-time distribution.
    pub dist: Dist,
}

/// The marks of one scope: today's (and the day before's) tallies, and the
/// exact marks of the last hour, sorted by `ts`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    days: [DaySlot; 2],
    recent: TimeQueue<Mark>,
    /// Response samples `(ts, ms)` of the alert window, sorted, with their
    /// sum: 128 bits, so no number of samples of any size can wrap it
    /// (stored as the 64-bit sum it was, which postcard writes the same).
    alert_window: TimeQueue<(i64, u64)>,
    alert_window_sum: u128,
    /// How many of them are above the scope's `norm_ms` (recorded slow):
    /// while none is and no alert is active, no sample leaving the window
    /// can raise one. Not stored: [`Samples::recount_slow`] on restore.
    #[serde(skip)]
    alert_window_slow: u64,
}

impl Samples {
    /// Asks the cache for every line a mark recorded here may touch: the
    /// newer day slot (its start, tally and distribution), the hour's
    /// queue and the alert window. The older slot is read only for a
    /// mark of a day past or when a new day begins, so it is left alone.
    /// A hint only, for the look-ahead of `Engine::apply_batch`.
    pub fn prefetch(&self) {
        use mem_prefetch::prefetch_read_data as fetch;
        let today = &self.days[1];
        fetch::<_, 3>(&today.day_start);
        fetch::<_, 3>(&today.tally.responses);
        fetch::<_, 3>(&today.tally.silent_sales_fen);
        fetch::<_, 3>(&today.dist);
        fetch::<_, 3>(&self.recent);
        fetch::<_, 3>(&self.alert_window);
        fetch::<_, 3>(&self.alert_window_sum);
        fetch::<_, 3>(&self.alert_window_slow);
    }

    /// Asks the cache for the line of today's distribution a response of
    /// `ms` will be counted on: the newer day slot's, as the older one
    /// takes only late events. A hint only.
    ///
    /// And the ends of the queues a response puts its mark in: the hour
    /// of marks and the alert window. A response pops, most often, the
    /// mark put an hour before it, reads the next one as the new front,
    /// and writes after the back; none of them is in cache on a big desk,
    /// where the agent's last record was a thousand events ago.
    pub fn prefetch_response(&self, ms: u64) {
        self.days[1].dist.prefetch(ms);
        self.recent.prefetch_ends();
        self.alert_window.prefetch_ends();
    }

    /// Records `mark`, which falls on `day`; `now` prunes the rolling part.
    pub fn record(&mut self, mark: Mark, day: Day, now: i64) {
        if let Some(slot) = self.slot_for(day) {
            slot.tally.add(&mark);
            if let MarkKind::Response { .. } = mark.kind() {
                slot.dist.record(mark.value);
            }
        }
        if let MarkKind::Response { slow, .. } = mark.kind() {
            self.alert_window.insert((mark.ts(), mark.value));
            self.alert_window_sum += u128::from(mark.value);
            self.alert_window_slow += u64::from(slow);
        }
        if mark.ts() > now - HOUR_MS {
            self.recent.insert(mark);
        }
        self.prune(now);
    }

    fn slot_for(&mut self, day: Day) -> Option<&mut DaySlot> {
        let [older, newer] = &mut self.days;
        match (older.day_start, newer.day_start) {
            (_, Some(s)) if s == day.start_ms => Some(newer),
            (Some(s), _) if s == day.start_ms => Some(older),
            (_, Some(s)) if s > day.start_ms => None, // a late event for a past day
            _ => {
                // A new day: the newer slot becomes the older one.
                *older = std::mem::take(newer);
                newer.day_start = Some(day.start_ms);
                Some(newer)
            }
        }
    }

    /// Drops rolling marks older than an hour before `now`.
    pub fn prune(&mut self, now: i64) {
        while self.recent.pop_before(now - HOUR_MS + 1).is_some() {}
    }

    /// Adds this store's part of `window` at `now` into `acc`.
    pub fn add_to(&self, acc: &mut WindowAcc, window: Window, range: Range, today: Day) {
        match window {
            Window::Today => {
                if let Some(slot) = self.days.iter().find(|s| s.day_start == Some(today.start_ms)) {
                    acc.tally.merge(&slot.tally);
                    acc.dist.merge(&slot.dist);
                }
            }
            _ => {
                let from = self.recent.items.partition_point(|m| m.ts() < range.lo);
                for mark in self.recent.items.range(from..) {
                    acc.tally.add(mark);
                    if let MarkKind::Response { .. } = mark.kind() {
                        acc.dist.record(mark.value);
                    }
                }
            }
        }
    }

    /// Count and sum (ms) of the response samples with `ts >= lo`,
    /// forgetting older ones: `lo` must never decrease between calls, and
    /// `norm_ms` is the one the samples were recorded under (a sample above
    /// it was marked slow).
    pub fn responses_since(&mut self, lo: i64, norm_ms: u64) -> (u64, u128) {
        while let Some((_, ms)) = self.alert_window.pop_before(lo) {
            self.alert_window_sum -= u128::from(ms);
            self.alert_window_slow -= u64::from(ms > norm_ms);
        }
        (self.alert_window.items.len() as u64, self.alert_window_sum)
    }

    /// Samples of the alert window above `norm_ms`, as last counted.
    pub fn slow_in_alert_window(&self) -> u64 {
        self.alert_window_slow
    }

    /// `ts` of the alert window's oldest sample, if any.
    pub fn alert_window_oldest(&self) -> Option<i64> {
        self.alert_window.oldest()
    }

    /// Counts the alert window's samples above `norm_ms` again: after a
    /// restore (the count is not stored, and `norm_ms` may have changed).
    pub fn recount_slow(&mut self, norm_ms: u64) {
        self.alert_window_slow = self.alert_window.items.iter().filter(|&&(_, ms)| ms > norm_ms).count() as u64;
    }

    /// Time of the latest rolling mark, if any.
    pub fn latest_ts(&self) -> Option<i64> {
        self.recent.items.back().map(Mark::ts)
    }

    /// Rolling marks, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Mark> {
        self.recent.items.iter()
    }

    /// Response distribution of the day starting at `day_start`.
    pub fn day_dist(&self, day_start: i64) -> Option<&Dist> {
        self.days
            .iter()
            .find(|s| s.day_start == Some(day_start))
            .map(|s| &s.dist)
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.recent.items.capacity() * std::mem::size_of::<Mark>()
            + self.alert_window.items.capacity() * 16
            + self.days.iter().map(|d| d.dist.heap_bytes()).sum::<usize>()
    }

    /// The day slots, for snapshots.
    pub fn days(&self) -> &[DaySlot; 2] {
        &self.days
    }
}

/// Something with an event time.
trait Timed {
    fn ts(&self) -> i64;
}

impl Timed for Mark {
    fn ts(&self) -> i64 {
        Mark::ts(self)
    }
}

impl Timed for (i64, u64) {
    fn ts(&self) -> i64 {
        self.0
    }
}

/// A queue kept sorted by time (equal times in arrival order), with the
/// time of its front and an upper bound of its times held beside it. A
/// record then knows where its mark goes and whether the front has
/// expired without reading the queue's own memory: on a busy desk the
/// queue's ends are a cache miss each, its header shares the partial's
/// lines.
///
/// Stored as the plain queue; both times are recomputed on load.
#[derive(Debug, Clone)]
struct TimeQueue<T> {
    items: VecDeque<T>,
    /// `ts` of the front (`i64::MAX` when empty).
    oldest: i64,
    /// At least every held `ts`: the largest ever put (`i64::MIN` before).
    newest: i64,
}

impl<T> Default for TimeQueue<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            oldest: i64::MAX,
            newest: i64::MIN,
        }
    }
}

impl<T: Timed> TimeQueue<T> {
    /// Puts `item` after every item with a time at or before its own.
    /// Marks nearly always come in time order: appended, not inserted.
    fn insert(&mut self, item: T) {
        let t = item.ts();
        self.oldest = self.oldest.min(t);
        if t >= self.newest {
            self.newest = t;
            self.items.push_back(item);
        } else {
            let at = self.items.partition_point(|m| m.ts() <= t);
            self.items.insert(at, item);
        }
    }

    /// Asks for the front item and the one after it (a pop's new front),
    /// most often on one line, and the back item, whose line an insert
    /// most often writes. A hint only.
    fn prefetch_ends(&self) {
        for item in self.items.iter().take(2).chain(self.items.back()) {
            mem_prefetch::prefetch_read_data::<_, 3>(item);
        }
    }

    /// The time of the front item, from the time held beside the queue.
    fn oldest(&self) -> Option<i64> {
        (!self.items.is_empty()).then_some(self.oldest)
    }

    /// Takes the front item if its time is before `lo`.
    fn pop_before(&mut self, lo: i64) -> Option<T> {
        if self.oldest >= lo {
            return None;
        }
        let item = self.items.pop_front();
        self.oldest = self.items.front().map_or(i64::MAX, Timed::ts);
        item
    }
}

impl<T: Timed> From<VecDeque<T>> for TimeQueue<T> {
    fn from(items: VecDeque<T>) -> Self {
        Self {
            oldest: items.front().map_or(i64::MAX, Timed::ts),
            newest: items.back().map_or(i64::MIN, Timed::ts),
            items,
        }
    }
}

impl<T: Serialize> Serialize for TimeQueue<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(serializer)
    }
}

impl<'de, T: Timed + Deserialize<'de>> Deserialize<'de> for TimeQueue<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        VecDeque::deserialize(deserializer).map(Self::from)
    }
}

/// Customer counts of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCounts {
    /// 接待人数.
    pub customers: u64,
    /// Of those, the ones replied to.
    pub replied_customers: u64,
    /// Of those, the ones with a credited order.
    pub paying_customers: u64,
    /// Distinct customers with a credited order (the 客单价 denominator).
    pub buyers: u64,
}

impl CustomerCounts {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &CustomerCounts) {
        self.customers += o.customers;
        self.replied_customers += o.replied_customers;
        self.paying_customers += o.paying_customers;
        self.buyers += o.buyers;
    }
}

/// One window's mergeable total over any set of scopes.
#[derive(Debug, Clone, Default)]
pub struct WindowAcc {
    /// Additive counters.
    pub tally: Tally,
    /// Customer counts.
    pub customers: CustomerCounts,
    /// Response-time distribution.
    pub dist: Dist,
}

impl WindowAcc {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &WindowAcc) {
        self.tally.merge(&other.tally);
        self.customers.merge(&other.customers);
        self.dist.merge(&other.dist);
    }

    /// The protocol's metrics.
    pub fn metrics(&self) -> WindowMetrics {
        let t = &self.tally;
        let c = &self.customers;
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        let [p50, p90, p99] = self.dist.quantiles([0.5, 0.9, 0.99]);
        // Histogram buckets can round above the exact max; never report that.
        let cap = |p: Option<u64>| p.map(|v| t.max_ms.map_or(v, |m| v.min(m)));
        WindowMetrics {
            responses: t.responses,
            avg_response_ms: ratio(t.response_sum_ms, t.responses),
            p50_ms: cap(p50),
            p90_ms: cap(p90),
            p99_ms: cap(p99),
            max_ms: t.max_ms,
            first_responses: t.first_responses,
            avg_first_response_ms: ratio(t.first_response_sum_ms, t.first_responses),
            slow_responses: t.slow_responses,
            customers: c.customers,
            replied_customers: c.replied_customers,
            reply_rate: ratio(c.replied_customers, c.customers),
            orders: t.orders,
            sales_fen: t.sales_fen,
            paying_customers: c.paying_customers,
            conversion_rate: ratio(c.paying_customers, c.customers),
            avg_order_fen: ratio(t.sales_fen, c.buyers),
            auto_replies: t.auto_replies,
            transfers_in: t.transfers_in,
            transfers_out: t.transfers_out,
        }
    }
}

/// The protocol's per-window metrics (PROTOCOL.md §3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub responses: u64,
    pub avg_response_ms: Option<f64>,
    pub p50_ms: Option<u64>,
    pub p90_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub first_responses: u64,
    pub avg_first_response_ms: Option<f64>,
    pub slow_responses: u64,
    pub customers: u64,
    pub replied_customers: u64,
    pub reply_rate: Option<f64>,
    pub orders: u64,
    pub sales_fen: u64,
    pub paying_customers: u64,
    pub conversion_rate: Option<f64>,
    pub avg_order_fen: Option<f64>,
    pub auto_replies: u64,
    pub transfers_in: u64,
    pub transfers_out: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(q: &TimeQueue<(i64, u64)>) -> Vec<i64> {
        q.items.iter().map(|m| m.0).collect()
    }

    #[test]
    fn a_time_queue_stays_sorted_and_its_held_times_follow_it() {
        let mut q = TimeQueue::default();
        assert_eq!(q.pop_before(i64::MAX), None);
        // In order, late, tied and early: ties keep arrival order.
        for (ts, v) in [(10, 0), (30, 1), (20, 2), (30, 3), (5, 4)] {
            q.insert((ts, v));
        }
        assert_eq!(times(&q), [5, 10, 20, 30, 30]);
        assert_eq!(q.items.iter().map(|m| m.1).collect::<Vec<_>>(), [4, 0, 2, 1, 3]);
        assert_eq!((q.oldest, q.newest), (5, 30));
        assert_eq!(q.pop_before(5), None);
        assert_eq!(q.pop_before(11), Some((5, 4)));
        assert_eq!(q.pop_before(11), Some((10, 0)));
        assert_eq!(q.pop_before(11), None);
        assert_eq!(q.oldest(), Some(20));
        // Emptied, it takes any time again, earlier ones included.
        while q.pop_before(i64::MAX).is_some() {}
        assert_eq!(q.oldest(), None);
        q.insert((1, 5));
        q.insert((2, 6));
        assert_eq!(times(&q), [1, 2]);
        assert_eq!(q.oldest, 1);
    }

    #[test]
    fn a_stored_time_queue_is_the_plain_queue_and_loads_its_times_back() {
        let mut q = TimeQueue::default();
        for ts in [7, 3, 9] {
            q.insert((ts, 0u64));
        }
        let bytes = postcard::to_stdvec(&q).unwrap();
        assert_eq!(bytes, postcard::to_stdvec(&q.items).unwrap());
        let mut back: TimeQueue<(i64, u64)> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!((back.oldest, back.newest), (3, 9));
        back.insert((8, 1));
        assert_eq!(times(&back), [3, 7, 8, 9]);
    }

    #[test]
    fn a_mark_gives_back_its_time_kind_and_value_and_is_stored_as_before() {
        let responses = [(false, false), (true, false), (false, true), (true, true)]
            .map(|(first, slow)| MarkKind::Response { first, slow });
        let others = [
            MarkKind::AutoReply,
            MarkKind::TransferIn,
            MarkKind::TransferOut,
            MarkKind::Order,
            MarkKind::SilentOrder,
        ];
        let times = [
            0,
            1,
            -1,
            -17,
            crate::protocol::MAX_TS_MS,
            Mark::TS_LIMIT - 1,
            -Mark::TS_LIMIT,
        ];
        assert_eq!(std::mem::size_of::<Mark>(), 16);
        for (k, kind) in responses.into_iter().chain(others).enumerate() {
            for ts in times {
                let value = u64::MAX - k as u64;
                let m = Mark::new(ts, kind, value);
                assert_eq!((m.ts(), m.kind(), m.value), (ts, kind, value));
                let plain = MarkData { ts, kind, value };
                let bytes = postcard::to_stdvec(&m).unwrap();
                assert_eq!(bytes, postcard::to_stdvec(&plain).unwrap());
                assert_eq!(postcard::from_bytes::<Mark>(&bytes).unwrap(), m);
            }
        }
        // Marks order by time whatever their kinds.
        assert!(Mark::new(-2, MarkKind::SilentOrder, 0).ts() < Mark::new(-1, responses[0], 0).ts());
        assert_eq!(Mark::new(i64::MAX, MarkKind::Order, 1).ts(), Mark::TS_LIMIT - 1);
    }

    #[test]
    fn the_alert_window_sums_samples_of_any_size_without_wrapping() {
        let day = crate::engine::day::Day {
            start_ms: 0,
            end_ms: 86_400_000,
        };
        let response = MarkKind::Response {
            first: false,
            slow: true,
        };
        let mut s = Samples::default();
        for ts in [1_000, 2_000, 3_000] {
            s.record(Mark::new(ts, response, u64::MAX), day, ts);
        }
        assert_eq!(s.responses_since(0, 0), (3, 3 * u128::from(u64::MAX)));
        assert_eq!(s.responses_since(2_500, 0), (1, u128::from(u64::MAX)));
        // Stored as the 64-bit sum was: postcard writes both alike.
        for v in [0, 300, u64::MAX] {
            assert_eq!(
                postcard::to_stdvec(&v).unwrap(),
                postcard::to_stdvec(&u128::from(v)).unwrap()
            );
        }
    }

    #[test]
    fn nearest_rank_percentiles_exact_while_small() {
        let mut d = Dist::default();
        for v in [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000] {
            d.record(v);
        }
        assert_eq!(d.quantiles([0.5, 0.9, 0.99]), [Some(5000), Some(9000), Some(10000)]);
    }

    #[test]
    fn histogram_percentiles_within_one_percent_or_100ms() {
        let mut d = Dist::default();
        let mut exact = Vec::new();
        let mut x: u64 = 12345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Seconds, minutes, hours and days, up to 23 days.
            let span = [1_000, 300_000, 20_000_000, 2_000_000_000][(x >> 20) as usize % 4];
            let v = (x >> 33) % span;
            d.record(v);
            exact.push(v);
        }
        assert!(d.hist.is_some(), "spilled into the histogram");
        exact.sort_unstable();
        for q in [0.05, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.99, 0.999, 1.0] {
            let want = exact[((q * exact.len() as f64).ceil() as usize) - 1];
            let got = d.quantiles([q])[0].unwrap();
            let tol = (want as f64 * 0.01).max(100.0);
            assert!((got as f64 - want as f64).abs() <= tol, "q={q} got={got} want={want}");
        }
    }

    #[test]
    fn absurd_value_saturates_without_growing_memory() {
        let mut d = Dist::default();
        for v in 0..600 {
            d.record(v * 100);
        }
        let before = d.heap_bytes();
        d.record(u64::MAX / 2);
        d.record(1_700_000_000_000);
        assert_eq!(d.heap_bytes(), before);
        assert_eq!(d.len(), 602);
    }

    #[test]
    fn a_spilled_distribution_survives_serialization() {
        let mut d = Dist::default();
        for v in 0..2000u64 {
            d.record(v * 97 % 400_000);
        }
        let bytes = postcard::to_stdvec(&d).unwrap();
        let back: Dist = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), d.len());
        assert_eq!(back.quantiles([0.5, 0.9, 0.99]), d.quantiles([0.5, 0.9, 0.99]));
    }

    #[test]
    fn merge_of_raw_and_histogram_keeps_every_sample() {
        let mut a = Dist::default();
        let mut b = Dist::default();
        for v in 0..600 {
            a.record(v);
        }
        for v in 0..10 {
            b.record(v);
        }
        let mut m = b.clone();
        m.merge(&a);
        assert_eq!(m.len(), 610);
        a.merge(&b);
        assert_eq!(a.len(), 610);
    }

    #[test]
    fn a_distribution_past_its_raw_samples_reads_the_same_after_a_snapshot() {
        let mut d = Dist::default();
        for k in 0..3_000u64 {
            d.record((k * 7_919) % 400_000);
        }
        assert!(d.hist.is_some(), "spilled into a histogram");
        let back: Dist = postcard::from_bytes(&postcard::to_stdvec(&d).unwrap()).unwrap();
        assert_eq!(back.hist, d.hist);
        assert_eq!(back.len(), 3_000);
        let qs = [0.0, 0.5, 0.9, 0.99, 1.0];
        assert_eq!(back.quantiles(qs), d.quantiles(qs));
        let edges = [0, 1_000, 30_000, 60_000, 100_000, u64::MAX];
        assert_eq!(back.buckets(&edges), d.buckets(&edges));
    }
}
