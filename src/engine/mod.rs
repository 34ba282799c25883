//! The pure engine: validated events in (`apply`), time in (`tick`), metrics,
//! live state and alert changes out. No I/O, no clock reads, no threads.
//! State is partitioned by shop; every figure of an agent, team, shop or the
//! desk is a sum of per-(agent, shop) partials.

pub mod alerts;
pub mod day;
mod deadlines;
pub mod dedup;
pub mod desk;
mod hist;
mod hours;
mod index;
mod marks;
mod seen;
mod slab;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Hash maps of the hot path: foldhash, seeded per process (outputs never
/// depend on iteration order).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use jiff::tz::TimeZone;
use serde::Serialize;

use crate::protocol::{AgentId, AgentStatus, ConversationId, CustomerId, Event, EventKind, ShopId, TeamId};
use alerts::{Alert, AlertBook, AlertChange, Reading, Rule, Severity, Thresholds};
use day::{Calendar, Day};
use deadlines::Deadlines;
use dedup::{Dedup, Id, IdKind};
use hours::Hours;
use index::{IdIndex, halves, whole};
use marks::{MarkMut, MarkTable, NO_CONVERSATION};
use seen::Seen;
use slab::{Chunks, Flat, Slab};
use window::{CustomerCounts, Mark, MarkKind, Range, Samples, Window, WindowAcc, WindowMetrics};

/// Orders are credited to an agent's message at most this long before, ms.
pub const ATTRIBUTION_MS: i64 = 24 * 3_600_000;
/// Agent messages held inline per customer for order attribution.
pub const RECENT_AGENT_MESSAGES: usize = 8;
/// Agent messages held per customer beyond the inline ones, for a longer
/// chat (a bound against a flood of messages to one customer).
pub const OLDER_AGENT_MESSAGES: usize = 248;
/// A message pushed out of the inline ring is kept while it is at most
/// this much older than the newest: an order reported up to a day late
/// still finds the agent who served its customer in the day before it.
pub const OLDER_MESSAGES_MS: i64 = 2 * ATTRIBUTION_MS;
/// A conversation with no event for this long, and no open wait, is
/// forgotten, ms. One with an open wait is kept until it is closed or its
/// customer flagged: a customer nobody answered is still waiting.
pub const CONVERSATION_IDLE_MS: i64 = 24 * 3_600_000;
/// Customer marks older than this are forgotten (beyond every window), ms.
pub const MARK_RETENTION_MS: i64 = 26 * 3_600_000;

/// Where `now` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The caller passes the wall clock to `tick`.
    #[default]
    Wall,
    /// `now` is the largest `ts` applied so far.
    Event,
}

/// Overrides of some thresholds (for one shop or team).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    pub target_ms: Option<u64>,
    pub norm_ms: Option<u64>,
    pub clear_ms: Option<u64>,
    pub critical_ms: Option<u64>,
    pub min_samples: Option<u64>,
}

impl ThresholdOverride {
    /// `base` with these overrides applied.
    ///
    /// A key left out is inherited, unless the override moves `norm_ms`
    /// past it: then it keeps its proportion to `norm_ms` instead. So
    /// `norm_ms = 45000` alone over the defaults resolves at 37 500 (not
    /// the inherited 50 000, which would resolve an alert as it is raised).
    pub fn apply(&self, base: Thresholds) -> Thresholds {
        let norm_ms = self.norm_ms.unwrap_or(base.norm_ms);
        // The value in force: `given`, else `inherited`, scaled with the
        // norm when the new norm has crossed it.
        let kept = |given: Option<u64>, inherited: u64, crossed: bool| {
            given.unwrap_or(if crossed {
                (u128::from(inherited) * u128::from(norm_ms) / u128::from(base.norm_ms.max(1))) as u64
            } else {
                inherited
            })
        };
        Thresholds {
            target_ms: kept(self.target_ms, base.target_ms, base.target_ms > norm_ms),
            norm_ms,
            clear_ms: kept(self.clear_ms, base.clear_ms, base.clear_ms > norm_ms),
            critical_ms: kept(self.critical_ms, base.critical_ms, base.critical_ms < norm_ms),
            min_samples: self.min_samples.unwrap_or(base.min_samples),
        }
    }
}

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The desk's time zone for `today`.
    pub timezone: TimeZone,
    /// Where `now` comes from.
    pub clock: Clock,
    /// Desk-wide thresholds.
    pub thresholds: Thresholds,
    /// Per-shop overrides (win over team overrides).
    pub shop_thresholds: HashMap<ShopId, ThresholdOverride>,
    /// Per-team overrides.
    pub team_thresholds: HashMap<TeamId, ThresholdOverride>,
    /// The roster: team → agents, in config order.
    pub teams: BTreeMap<TeamId, Vec<AgentId>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timezone: TimeZone::get("Asia/Shanghai").unwrap_or(TimeZone::UTC),
            clock: Clock::Wall,
            thresholds: Thresholds::default(),
            shop_thresholds: HashMap::new(),
            team_thresholds: HashMap::new(),
            teams: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// Teams of `agent`, in roster order.
    pub fn teams_of(&self, agent: &AgentId) -> Vec<TeamId> {
        self.teams
            .iter()
            .filter(|(_, members)| members.contains(agent))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Thresholds of (agent, shop): defaults, then the agent's first team
    /// with an override, then the shop's override.
    pub fn thresholds_for(&self, agent: Option<&AgentId>, shop: &ShopId) -> Thresholds {
        let mut t = self.thresholds;
        if let Some(agent) = agent
            && let Some(o) = self
                .teams
                .iter()
                .filter(|(_, m)| m.contains(agent))
                .find_map(|(team, _)| self.team_thresholds.get(team))
        {
            t = o.apply(t);
        }
        if let Some(o) = self.shop_thresholds.get(shop) {
            t = o.apply(t);
        }
        t
    }
}

/// Whether an event changed state or was a repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New `(shop, id)`: applied.
    Accepted,
    /// Seen before: not applied again.
    Duplicate,
}

/// Open waits of one scope: (start ts, count), sorted by start. A scope
/// holds a handful of waits, so a sorted vector beats a tree, and the
/// oldest start is kept inline: the wait rule, run after most events,
/// reads it without following the vector. Stored as the start -> count
/// map the tree map was, so snapshots read either way.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(from = "WaitsData", into = "WaitsData")]
struct Waits {
    starts: Vec<(i64, u32)>,
    count: u64,
    /// `starts[0].0`.
    oldest: Option<i64>,
}

/// How [`Waits`] is stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct WaitsData {
    #[serde(with = "wait_starts")]
    starts: Vec<(i64, u32)>,
    count: u64,
}

impl From<WaitsData> for Waits {
    fn from(d: WaitsData) -> Self {
        Self {
            oldest: d.starts.first().map(|&(s, _)| s),
            starts: d.starts,
            count: d.count,
        }
    }
}

impl From<Waits> for WaitsData {
    fn from(w: Waits) -> Self {
        Self {
            starts: w.starts,
            count: w.count,
        }
    }
}

impl Waits {
    fn add(&mut self, start: i64) {
        match self.starts.binary_search_by_key(&start, |&(s, _)| s) {
            Ok(i) => self.starts[i].1 += 1,
            Err(i) => self.starts.insert(i, (start, 1)),
        }
        self.count += 1;
        self.oldest = self.starts.first().map(|&(s, _)| s);
    }
    fn remove(&mut self, start: i64) {
        if let Ok(i) = self.starts.binary_search_by_key(&start, |&(s, _)| s) {
            self.starts[i].1 -= 1;
            if self.starts[i].1 == 0 {
                self.starts.remove(i);
            }
            self.count -= 1;
            self.oldest = self.starts.first().map(|&(s, _)| s);
        }
    }
    fn oldest(&self) -> Option<i64> {
        self.oldest
    }
}

/// [`Waits::starts`] on disk: a map from start to count.
mod wait_starts {
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(starts: &[(i64, u32)], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(starts.len()))?;
        for (start, n) in starts {
            map.serialize_entry(start, n)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(i64, u32)>, D::Error> {
        let map: std::collections::BTreeMap<i64, u32> = serde::Deserialize::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

/// Index of a shop in `Engine::shops`; shops are never removed.
type ShopIx = u32;
/// Index of an agent in `Engine::agents`; agents are never removed.
type AgentIx = u32;
/// Index of a conversation in its shop's slab (reused after a close).
type ConvIx = u32;
/// Index of a customer in its shop's slab (reused once the customer and
/// every mark naming it are forgotten).
type CustIx = u32;

/// The key of the id indexes: a 128-bit hash of the id, so a lookup
/// compares integers in the table instead of chasing the id's string.
type IdKey = u128;

fn id_key(id: &str) -> IdKey {
    index::key_of(id)
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Conversation {
    id: ConversationId,
    customer: CustIx,
    /// [`halves`] of `id_key` of the customer's id, kept so an event naming
    /// the conversation's own customer skips the customer index; rebuilt
    /// on restore.
    #[serde(skip)]
    customer_key: [u64; 2],
    agent: Option<AgentIx>,
    wait_start: Option<i64>,
    responded: bool,
    /// Whether this conversation holds the mark of (its agent, its
    /// customer): see [`marks::MarkTimes::held_by`].
    holds_mark: bool,
    last_ts: i64,
    /// While `holds_mark`: the mark's latest `counted` and `replied`
    /// times written through this conversation (`i64::MIN`: none yet).
    /// A message then updates the line the engine has already read for
    /// the conversation rather than probing the agent's mark table.
    counted: i64,
    replied: i64,
    /// While `holds_mark`: the slot of the agent's mark table the mark
    /// was in when this conversation took it, where releasing it looks
    /// first ([`marks::MarkTable::get_mut_at`]). 0 after a restore: a
    /// stale slot like any other.
    #[serde(skip)]
    mark_slot: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Customer {
    id: CustomerId,
    flagged: bool,
    /// Latest `ts` of an event or mark naming this customer. Marks are
    /// forgotten before their customer is, so a mark's index never points
    /// at a reused slot.
    last_ts: i64,
    /// Open conversations with this customer.
    open: u32,
    /// Latest non-auto agent messages to this customer.
    agent_messages: RecentMessages,
}

/// The non-auto agent messages to a customer, (agent, ts), each one: the
/// latest [`RECENT_AGENT_MESSAGES`] inline, in a ring (no allocation and
/// no extra cache miss on the hot path), and those pushed out of it in
/// `older`, allocated only for a customer with a longer chat.
///
/// Every message is kept, not only each agent's first and latest of a
/// streak: an order (or another agent's message) may arrive late, stamped
/// inside a streak, and then the message of the streak just before it is
/// the answer. What `older` drops: messages more than
/// [`OLDER_MESSAGES_MS`] older than the newest, and past
/// [`OLDER_AGENT_MESSAGES`] the middle of the first run of three from one
/// agent (or else the oldest).
///
/// The ring holds each time as a 32-bit offset from `base`, the oldest
/// time it holds ([`placed`]): 24 bytes less per customer, and every customer of the
/// day is fresh memory. A message more than [`RING_SPAN_MS`] (49 days)
/// older than the newest is forgotten, as `older` would have forgotten it
/// long before. Stored in the snapshot as absolute times
/// ([`RecentMessagesLayout`]), the bytes the ring of `i64` times wrote.
#[derive(Debug, Clone, Default)]
struct RecentMessages {
    agents: [AgentIx; RECENT_AGENT_MESSAGES],
    /// Each message's `ts - base`, ms; [`FORGOTTEN`] for one forgotten.
    offsets: [u32; RECENT_AGENT_MESSAGES],
    /// No later than any time the ring holds, at most [`RING_SPAN_MS`]
    /// before the newest.
    base: i64,
    len: u8,
    next: u8,
    /// Messages pushed out of the ring, boxed: one pointer per customer,
    /// and most never allocate it.
    older: Option<Box<Older>>,
}

/// The messages of a [`RecentMessages`] pushed out of its ring.
#[derive(Debug, Clone)]
struct Older {
    /// In the order they were pushed (not always in time order: events
    /// come late).
    messages: Vec<(AgentIx, i64)>,
    /// No later than any message's time (`i64::MAX` when there are none),
    /// so that a push reads the list to drop the too old only when one
    /// may be: a long chat made every push read all of it.
    oldest: i64,
}

impl Default for Older {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            oldest: i64::MAX,
        }
    }
}

impl Older {
    /// The earliest time of `messages` (`i64::MAX` for none).
    fn earliest(messages: &[(AgentIx, i64)]) -> i64 {
        messages.iter().map(|&(_, t)| t).min().unwrap_or(i64::MAX)
    }
}

impl From<Vec<(AgentIx, i64)>> for Older {
    fn from(messages: Vec<(AgentIx, i64)>) -> Self {
        Self {
            oldest: Self::earliest(&messages),
            messages,
        }
    }
}

/// The offset of a ring message that is forgotten: it is skipped, as if gone.
const FORGOTTEN: u32 = u32::MAX;
/// The longest a ring message is held behind the newest, ms (49.7 days).
const RING_SPAN_MS: i64 = FORGOTTEN as i64 - 1;

/// The `base` and offsets of a ring holding `times` (`None`: forgotten):
/// `base` is the oldest time within [`RING_SPAN_MS`] of the newest, and
/// every time further behind is forgotten.
fn placed(times: &[Option<i64>]) -> (i64, [u32; RECENT_AGENT_MESSAGES]) {
    let newest = times.iter().flatten().copied().max();
    let kept = |t: &i64| newest.is_some_and(|n| n - t <= RING_SPAN_MS);
    let base = times.iter().flatten().copied().filter(kept).min().unwrap_or(0);
    let mut offsets = [FORGOTTEN; RECENT_AGENT_MESSAGES];
    for (offset, t) in offsets.iter_mut().zip(times) {
        *offset = t.filter(kept).map_or(FORGOTTEN, |t| (t - base) as u32);
    }
    (base, offsets)
}

impl RecentMessages {
    fn push(&mut self, agent: AgentIx, ts: i64) {
        let i = usize::from(self.next);
        if usize::from(self.len) == RECENT_AGENT_MESSAGES
            && let Some(at) = self.time(i)
        {
            self.push_older(self.agents[i], at, ts);
        }
        if self.len == 0 {
            self.base = ts;
        }
        self.agents[i] = agent;
        self.offsets[i] = match ts.checked_sub(self.base).map(u32::try_from) {
            Some(Ok(offset)) if offset != FORGOTTEN => offset,
            // Before `base`, or past the span from it: seldom.
            _ => self.rebase(i, ts),
        };
        self.next = ((i + 1) % RECENT_AGENT_MESSAGES) as u8;
        self.len = (usize::from(self.len) + 1).min(RECENT_AGENT_MESSAGES) as u8;
    }

    /// Moves `base` so that it holds `ts`, to be written into slot `i`,
    /// forgetting what falls more than [`RING_SPAN_MS`] behind the newest
    /// (`ts` itself, if it does); returns the offset of `ts`.
    fn rebase(&mut self, i: usize, ts: i64) -> u32 {
        let slots = usize::from(self.len).max(i + 1);
        let mut times = [None; RECENT_AGENT_MESSAGES];
        for (k, t) in times.iter_mut().enumerate().take(slots) {
            *t = if k == i { Some(ts) } else { self.time(k) };
        }
        let (base, offsets) = placed(&times[..slots]);
        self.base = base;
        self.offsets[..slots].copy_from_slice(&offsets[..slots]);
        offsets[i]
    }

    /// The time of ring slot `i`, unless it is forgotten.
    fn time(&self, i: usize) -> Option<i64> {
        let offset = self.offsets[i];
        (offset != FORGOTTEN).then(|| self.base + i64::from(offset))
    }

    /// Keeps `(agent, at)`, pushed out of the ring by a message at `now`,
    /// and drops what is too old or too many.
    fn push_older(&mut self, agent: AgentIx, at: i64, now: i64) {
        let Older {
            messages: older,
            oldest,
        } = &mut **self.older.get_or_insert_default();
        let horizon = now.saturating_sub(OLDER_MESSAGES_MS);
        if *oldest < horizon {
            older.retain(|&(_, t)| t >= horizon);
            *oldest = Older::earliest(older);
        }
        if at >= horizon {
            if older.len() >= OLDER_AGENT_MESSAGES {
                // A message between two of the same agent's, on both sides
                // in time, answers only what its neighbours answer too.
                let middle = (1..older.len() - 1).find(|&k| {
                    let (p, m, n) = (older[k - 1], older[k], older[k + 1]);
                    p.0 == m.0 && m.0 == n.0 && p.1 <= m.1 && m.1 <= n.1 && n.1 - p.1 <= ATTRIBUTION_MS
                });
                older.remove(middle.unwrap_or(0));
            }
            older.push((agent, at));
            *oldest = (*oldest).min(at);
        }
        if older.is_empty() {
            self.older = None;
        }
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = (AgentIx, i64)> + '_ {
        let n = RECENT_AGENT_MESSAGES;
        let start = (usize::from(self.next) + n - usize::from(self.len)) % n;
        let older = self.older.as_deref().map_or(&[][..], |o| o.messages.as_slice());
        older
            .iter()
            .copied()
            .chain((0..usize::from(self.len)).filter_map(move |k| {
                let i = (start + k) % n;
                Some((self.agents[i], self.time(i)?))
            }))
    }
}

/// [`RecentMessages`] as snapshots hold it: absolute times, 0 in a slot
/// never written (and, for a forgotten message, a time more than
/// [`RING_SPAN_MS`] behind the newest).
#[derive(serde::Serialize, serde::Deserialize)]
struct RecentMessagesLayout {
    agents: [AgentIx; RECENT_AGENT_MESSAGES],
    ts: [i64; RECENT_AGENT_MESSAGES],
    len: u8,
    next: u8,
    older: Option<Vec<(AgentIx, i64)>>,
}

impl serde::Serialize for RecentMessages {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let filled = usize::from(self.len);
        let newest = (0..filled).filter_map(|i| self.time(i)).max().unwrap_or(self.base);
        let mut ts = [0i64; RECENT_AGENT_MESSAGES];
        for (i, t) in ts.iter_mut().enumerate().take(filled) {
            *t = self.time(i).unwrap_or(newest - RING_SPAN_MS - 1);
        }
        // The fields of `RecentMessagesLayout`, in its order, without
        // cloning `older`.
        let mut s = serializer.serialize_struct("RecentMessagesLayout", 5)?;
        s.serialize_field("agents", &self.agents)?;
        s.serialize_field("ts", &ts)?;
        s.serialize_field("len", &self.len)?;
        s.serialize_field("next", &self.next)?;
        s.serialize_field("older", &self.older.as_ref().map(|o| &o.messages))?;
        s.end()
    }
}

impl<'de> serde::Deserialize<'de> for RecentMessages {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let l = RecentMessagesLayout::deserialize(deserializer)?;
        let len = usize::from(l.len).min(RECENT_AGENT_MESSAGES);
        let mut times = [None; RECENT_AGENT_MESSAGES];
        for (t, &at) in times.iter_mut().zip(&l.ts[..len]) {
            *t = Some(at);
        }
        let (base, offsets) = placed(&times[..len]);
        Ok(Self {
            agents: l.agents,
            offsets,
            base,
            len: len as u8,
            next: l.next % RECENT_AGENT_MESSAGES as u8,
            older: l.older.map(|m| Box::new(Older::from(m))),
        })
    }
}

/// Which time of a customer's marks ([`marks::MarkTimes`]) an event moves.
#[derive(Debug, Clone, Copy)]
enum MarkTime {
    Counted,
    Replied,
}

impl MarkTime {
    /// Moves this time, of the pair `counted` and `replied`, to `ts` at least.
    fn advance(self, counted: &mut i64, replied: &mut i64, ts: i64) {
        let at = match self {
            Self::Counted => counted,
            Self::Replied => replied,
        };
        *at = (*at).max(ts);
    }
}

/// What [`Shop::customer_in`] learned of a chat event's conversation, so
/// [`Engine::open_conversation`] neither hashes its id nor probes again.
#[derive(Debug, Clone, Copy)]
struct ConvLookup<'a> {
    id: &'a ConversationId,
    key: IdKey,
    customer_key: [u64; 2],
    /// The conversation, when it exists and already belongs to the customer.
    found: Option<ConvIx>,
}

/// [`Partial::listed`] in the place of the flag it replaced: written as
/// false, read as never listed.
mod round_as_flag {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(_: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(false)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        bool::deserialize(deserializer).map(|_| 0)
    }
}

/// One agent's state in one shop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Partial {
    thresholds: Thresholds,
    /// The `Engine::dirty_round` in which it was last listed in
    /// `Engine::dirty_partials` (0: never): `take_dirty` then starts a new
    /// round instead of reading every listed partial to clear a flag.
    /// Stored as the flag it replaced, always false; restore lists again
    /// what `dirty_partials` holds.
    #[serde(with = "round_as_flag")]
    listed: u32,
    /// The `wait_deadlines` / `slow_deadlines` entries in force: for
    /// waits the earliest queued, which may come before the wait rule
    /// needs to run (it then runs early, changes nothing and queues the
    /// next; see [`run_by`]).
    wait_deadline: Option<i64>,
    slow_deadline: Option<i64>,
    /// Severity of the active alert per rule (`customer_waiting`, `slow_average`).
    waiting_alert: Option<Severity>,
    slow_alert: Option<Severity>,
    samples: Samples,
    marks: MarkTable,
    open_conversations: u64,
    waits: Waits,
}

impl Partial {
    /// Asks the cache for every line of the partial an event may touch.
    /// Its fields span some ten lines, in an order the compiler picks, so
    /// each is named: fetching the first line alone left the event to
    /// wait on the others (on a desk of 20 000 agents, the first read of
    /// `listed` in [`Engine::parts`] was 6 % of `apply`'s time).
    fn prefetch(&self) {
        use mem_prefetch::prefetch_read_data as fetch;
        fetch::<_, 3>(&self.thresholds);
        fetch::<_, 3>(&self.listed);
        fetch::<_, 3>(&self.wait_deadline);
        fetch::<_, 3>(&self.slow_deadline);
        fetch::<_, 3>(&self.waiting_alert);
        fetch::<_, 3>(&self.slow_alert);
        fetch::<_, 3>(&self.marks);
        fetch::<_, 3>(&self.open_conversations);
        fetch::<_, 3>(&self.waits);
        self.samples.prefetch();
    }

    /// When the slow-average rule must next run if no sample comes: as the
    /// alert window's oldest sample leaves it. Not while no alert is active
    /// and no sample in the window is above `norm_ms`: what is left then
    /// averages at most `norm_ms` however many leave, so nothing can raise
    /// until a new sample, which runs the rule.
    fn slow_recheck_at(&self) -> Option<i64> {
        let quiet = self.slow_alert.is_none() && self.samples.slow_in_alert_window() == 0;
        let w = Window::Min15.rolling_ms().expect("rolling");
        self.samples.alert_window_oldest().filter(|_| !quiet).map(|o| o + w)
    }

    /// Moves the `time` of this partial's mark of the customer of
    /// conversation `c` to `ts` at least; `c` is assigned to this
    /// partial's agent. The first time goes to the partial's table (a new
    /// mark listed in the shop's `hours`), where the conversation takes
    /// the mark if no other holds it; later ones stay in the
    /// conversation. `now` is the engine's.
    fn mark(
        &mut self,
        conversations: &mut Slab<Flat<Conversation>>,
        hours: &mut Hours<(AgentIx, CustIx)>,
        c: ConvIx,
        time: MarkTime,
        ts: i64,
        now: i64,
    ) {
        let conversation = &mut conversations[c];
        if conversation.holds_mark {
            time.advance(&mut conversation.counted, &mut conversation.replied, ts);
            return;
        }
        let a = conversation
            .agent
            .expect("a conversation marked for its agent is assigned");
        let (slot, mut m) = self.mark_entry(hours, a, conversation.customer, ts, now);
        m.raise(time, ts);
        if m.held_by() == NO_CONVERSATION {
            m.set_held_by(c);
            conversation.holds_mark = true;
            conversation.mark_slot = slot;
        }
    }

    /// This partial's mark of customer `cu`, as [`MarkTable::entry`]; a
    /// new one is listed in the shop's `hours` under `ts`, as (`a`, `cu`),
    /// `a` being this partial's agent.
    fn mark_entry(
        &mut self,
        hours: &mut Hours<(AgentIx, CustIx)>,
        a: AgentIx,
        cu: CustIx,
        ts: i64,
        now: i64,
    ) -> (u32, MarkMut<'_>) {
        let (slot, m) = self.marks.entry(cu, ts, now);
        if m.is_new() {
            hours.list((a, cu), ts);
        }
        (slot, m)
    }

    fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            listed: 0,
            wait_deadline: None,
            slow_deadline: None,
            waiting_alert: None,
            slow_alert: None,
            samples: Samples::default(),
            marks: MarkTable::default(),
            open_conversations: 0,
            waits: Waits::default(),
        }
    }
}

/// A partial borrowed with the rest of what an event writes beside it,
/// from [`Engine::parts`].
struct Parts<'e> {
    partial: &'e mut Partial,
    /// The conversations of the partial's shop.
    conversations: &'e mut Slab<Flat<Conversation>>,
    /// The shop's marks by the hour ([`Shop::mark_hours`]).
    mark_hours: &'e mut Hours<(AgentIx, CustIx)>,
    rules: Rules<'e>,
}

/// The alert rules of one partial, with what they write besides the
/// partial: the alert book and the deadline queues.
struct Rules<'e> {
    now: i64,
    s: ShopIx,
    a: AgentIx,
    shop: &'e ShopId,
    agent: &'e AgentId,
    alerts: &'e mut AlertBook,
    wait_deadlines: &'e mut Deadlines,
    slow_deadlines: &'e mut Deadlines,
}

impl Rules<'_> {
    /// Re-evaluates `customer_waiting` for the partial `p` and schedules
    /// its next check. With `alerts_may_move` false it stops short of a
    /// reading that would raise, escalate or resolve an alert and returns
    /// false, having changed nothing.
    fn waiting(&mut self, p: &mut Partial, alerts_may_move: bool) -> bool {
        let now = self.now;
        let t = p.thresholds;
        let oldest = p.waits.oldest();
        let age = oldest.map_or(0, |s| now.saturating_sub(s).max(0) as u64);
        let reading = Reading::customer_waiting(age, &t);
        if reading.moves(p.waiting_alert, &t) {
            if !alerts_may_move {
                return false;
            }
            p.waiting_alert = self
                .alerts
                .observe(self.shop, self.agent, Rule::CustomerWaiting, reading, &t, now);
        }
        let next = oldest.and_then(|start| match p.waiting_alert {
            None => Some(start.saturating_add(t.norm_ms as i64) + 1),
            Some(Severity::Warning) => Some(start.saturating_add(t.critical_ms as i64) + 1),
            Some(Severity::Critical) => None,
        });
        // One live entry per partial; superseded entries are skipped when
        // they come due.
        let next = next.filter(|d| *d > now);
        run_by(&mut p.wait_deadline, self.wait_deadlines, next, self.s, self.a);
        true
    }

    /// Re-evaluates `slow_average` for the partial `p` over the 15m window.
    fn slow(&mut self, p: &mut Partial) {
        let now = self.now;
        let t = p.thresholds;
        let w = Window::Min15.rolling_ms().expect("rolling");
        let lo = now.saturating_sub(w) + 1;
        let (count, sum) = p.samples.responses_since(lo, t.norm_ms);
        let reading = Reading::slow_average(count, sum, &t);
        if reading.moves(p.slow_alert, &t) {
            p.slow_alert = self
                .alerts
                .observe(self.shop, self.agent, Rule::SlowAverage, reading, &t, now);
        }
        let next = p.slow_recheck_at();
        reschedule(&mut p.slow_deadline, self.slow_deadlines, next, self.s, self.a);
    }
}

/// The response time of a reply at `ts` to a wait that started at
/// `start`, ms (a reply stamped before the wait counts as 0): one rule for
/// the sample and for the look-ahead that fetches where it lands.
fn response_ms(start: i64, ts: i64) -> u64 {
    (ts - start).max(0) as u64
}

/// How many marks or customers ahead the hourly clean-up asks for the
/// line it will read at a random place of a big table: a mark's line of
/// its table ([`Shop::forget_marks_through`]), a forgotten customer's
/// slot of the index ([`Shop::forget_customers_through`]).
const SWEPT_AHEAD: usize = 8;

/// One shop: its conversations and customers (ids interned to slab
/// indices on the way in), and the partials of the agents serving it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Shop {
    id: ShopId,
    /// Listed in `Engine::dirty_shop_list` since the last `take_dirty`.
    dirty: bool,
    conversation_ix: IdIndex,
    conversations: Slab<Flat<Conversation>>,
    customer_ix: IdIndex,
    customers: Slab<Chunks<Customer>>,
    /// Every customer, listed once, under an hour no later than that of
    /// its `last_ts` or than the hour of the last clean-up's horizon
    /// ([`hours`]). Not stored: listed again from the customers on restore.
    #[serde(skip)]
    customer_hours: Hours<CustIx>,
    /// Every mark of the partials, (agent, customer), listed once under
    /// an hour no later than that of its latest time or than the hour of
    /// the last clean-up's horizon. Not stored.
    #[serde(skip)]
    mark_hours: Hours<(AgentIx, CustIx)>,
    partials: Map<AgentIx, Partial>,
    queue: Waits,
    /// Shop-level marks: silent orders.
    samples: Samples,
}

impl Shop {
    fn new(id: ShopId) -> Self {
        Self {
            id,
            dirty: false,
            conversation_ix: IdIndex::default(),
            conversations: Slab::default(),
            customer_ix: IdIndex::default(),
            customers: Slab::default(),
            customer_hours: Hours::default(),
            mark_hours: Hours::default(),
            partials: Map::default(),
            queue: Waits::default(),
            samples: Samples::default(),
        }
    }

    /// The customer's index, creating it; `ts` counts as activity.
    fn customer(&mut self, id: &CustomerId, ts: i64) -> CustIx {
        self.customer_by_key(id, id_key(id.as_str()), ts)
    }

    /// The customer's index, as [`Shop::customer`], found through the
    /// conversation when it already belongs to this customer: one slab read
    /// instead of a probe of the shop's whole customer index. `keys` are
    /// the [`id_key`]s of the conversation and the customer.
    fn customer_in<'a>(
        &mut self,
        conversation: &'a ConversationId,
        id: &CustomerId,
        keys: [IdKey; 2],
        ts: i64,
    ) -> (CustIx, ConvLookup<'a>) {
        let [conversation_key, key] = keys;
        let mut at = ConvLookup {
            id: conversation,
            key: conversation_key,
            customer_key: halves(key),
            found: None,
        };
        if let Some(c) = self.conversation_ix.get(at.key) {
            let conv = &self.conversations[c];
            if conv.customer_key == at.customer_key {
                let cu = conv.customer;
                self.touch_customer(cu, ts);
                at.found = Some(c);
                return (cu, at);
            }
        }
        (self.customer_by_key(id, key, ts), at)
    }

    fn customer_by_key(&mut self, id: &CustomerId, key: IdKey, ts: i64) -> CustIx {
        let ix = match self.customer_ix.get(key) {
            Some(ix) => ix,
            None => {
                let ix = self.customers.insert(Customer {
                    id: id.clone(),
                    flagged: false,
                    last_ts: ts,
                    open: 0,
                    agent_messages: RecentMessages::default(),
                });
                self.customer_hours.list(ix, ts);
                self.customer_ix.insert(key, ix);
                ix
            }
        };
        self.touch_customer(ix, ts);
        ix
    }

    /// Folds the mark conversation `c` holds, if any, back into its
    /// agent's table: before the conversation's agent or customer changes
    /// or it closes. `now` is the engine's.
    fn release_mark(&mut self, c: ConvIx, now: i64) {
        let conversation = &mut self.conversations[c];
        if !std::mem::take(&mut conversation.holds_mark) {
            return;
        }
        let counted = std::mem::replace(&mut conversation.counted, i64::MIN);
        let replied = std::mem::replace(&mut conversation.replied, i64::MIN);
        let a = conversation.agent.expect("a held mark has an agent");
        let mut m = self
            .partials
            .get_mut(&a)
            .and_then(|p| {
                let latest = counted.max(replied);
                p.marks
                    .get_mut_at(conversation.customer, conversation.mark_slot, latest, now)
            })
            .expect("a held mark is in its agent's table");
        m.raise_counted(counted);
        m.raise_replied(replied);
        m.set_held_by(NO_CONVERSATION);
    }

    /// Forgets the customers last seen at `horizon` or before, neither
    /// flagged nor in an open conversation, reading only those listed
    /// under its hour or before. Each customer read and kept is listed
    /// again: under the hour of its `last_ts` when seen since, else
    /// (open or flagged) under the horizon's, so the next clean-up reads
    /// it again. Forgotten in index order, as a read of the whole slab
    /// forgot them, so the slab reuses their slots in the same order.
    ///
    /// The listed customers of an hour came in together and sit near each
    /// other in the slab, but each one's slot of the index is at a random
    /// line of it: so the index is emptied after the slab, each slot
    /// asked for [`SWEPT_AHEAD`] customers before it is read.
    fn forget_customers_through(&mut self, horizon: i64) {
        let mut gone: Vec<IdKey> = Vec::new();
        for cu in self.customer_hours.take_due(horizon) {
            let c = &self.customers[cu];
            if c.last_ts > horizon {
                self.customer_hours.list(cu, c.last_ts);
            } else if c.flagged || c.open > 0 {
                self.customer_hours.list(cu, horizon);
            } else {
                let c = self.customers.remove(cu).expect("listed customers are live");
                gone.push(id_key(c.id.as_str()));
            }
        }
        for (i, &key) in gone.iter().enumerate() {
            if let Some(&ahead) = gone.get(i + SWEPT_AHEAD) {
                self.customer_ix.prefetch(ahead);
            }
            self.customer_ix.remove(key);
        }
    }

    /// Forgets the marks no conversation holds whose latest time is
    /// `horizon` or before, reading only those listed under its hour or
    /// before ([`MarkTable::forget_if_due`]), each mark's line asked for
    /// [`SWEPT_AHEAD`] marks before it is read: in sorted order the
    /// listed marks of a partial come together, but each sits at a
    /// random line of its table.
    fn forget_marks_through(&mut self, horizon: i64) {
        let due = self.mark_hours.take_due(horizon);
        for (i, &(a, cu)) in due.iter().enumerate() {
            if let Some(&(ahead, customer)) = due.get(i + SWEPT_AHEAD)
                && let Some(p) = self.partials.get(&ahead)
            {
                p.marks.prefetch(customer);
            }
            let p = self.partials.get_mut(&a).expect("a listed mark's partial");
            if let Some(ts) = p.marks.forget_if_due(cu, horizon) {
                self.mark_hours.list((a, cu), ts);
            }
        }
    }

    fn touch_customer(&mut self, ix: CustIx, ts: i64) {
        let c = &mut self.customers[ix];
        c.last_ts = c.last_ts.max(ts);
    }

    fn flagged(&self, ix: CustIx) -> bool {
        self.customers.get(ix).is_some_and(|c| c.flagged)
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AgentInfo {
    id: AgentId,
    /// [`halves`] of `id_key(id)`, so an event naming the agent of its
    /// conversation is matched by comparing keys, not by reading the id's
    /// string from its own allocation; rebuilt on restore.
    #[serde(skip)]
    key: [u64; 2],
    status: Option<AgentStatus>,
    /// Listed in `Engine::dirty_agents` since the last `take_dirty`.
    dirty: bool,
    shops: BTreeSet<ShopId>,
}

/// Live state, mergeable: sums and earliest starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveAcc {
    /// Desk status (agents only).
    pub status: Option<AgentStatus>,
    /// Open conversations assigned.
    pub open_conversations: u64,
    /// Open waits on assigned conversations.
    pub waiting: u64,
    /// Start of the oldest of those.
    pub oldest_wait_start: Option<i64>,
    /// Open waits on unassigned conversations (shops and totals).
    pub queued: u64,
    /// Start of the oldest of those.
    pub oldest_queued_start: Option<i64>,
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl LiveAcc {
    /// Adds `o` into `self` (status is kept from `self` unless unset).
    pub fn merge(&mut self, o: &LiveAcc) {
        self.status = self.status.or(o.status);
        self.open_conversations += o.open_conversations;
        self.waiting += o.waiting;
        self.oldest_wait_start = min_opt(self.oldest_wait_start, o.oldest_wait_start);
        self.queued += o.queued;
        self.oldest_queued_start = min_opt(self.oldest_queued_start, o.oldest_queued_start);
    }

    /// The protocol's live fields at `now`.
    pub fn state(&self, now: i64) -> LiveState {
        let age = |s: Option<i64>| s.map_or(0, |s| (now - s).max(0) as u64);
        LiveState {
            status: self.status,
            open_conversations: self.open_conversations,
            waiting: self.waiting,
            oldest_wait_ms: age(self.oldest_wait_start),
            oldest_wait_start: self.oldest_wait_start,
        }
    }
}

/// The protocol's live state of an agent (PROTOCOL.md §3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveState {
    pub status: Option<AgentStatus>,
    pub open_conversations: u64,
    pub waiting: u64,
    pub oldest_wait_ms: u64,
    pub oldest_wait_start: Option<i64>,
}

/// Queue fields of a shop or total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueState {
    pub queued: u64,
    pub oldest_queued_ms: u64,
    pub oldest_queued_start: Option<i64>,
}

impl LiveAcc {
    /// The queue fields at `now`.
    pub fn queue(&self, now: i64) -> QueueState {
        QueueState {
            queued: self.queued,
            oldest_queued_ms: self.oldest_queued_start.map_or(0, |s| (now - s).max(0) as u64),
            oldest_queued_start: self.oldest_queued_start,
        }
    }
}

/// What `GET /v1/agents/{agent}/stats` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStats {
    pub agent: AgentId,
    pub window: Window,
    pub now: i64,
    pub shop: Option<ShopId>,
    pub shops: Vec<ShopId>,
    pub teams: Vec<TeamId>,
    #[serde(flatten)]
    pub metrics: WindowMetrics,
    #[serde(flatten)]
    pub live: LiveState,
}

/// One open wait, for detail views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenWait {
    pub shop: ShopId,
    pub conversation: ConversationId,
    pub customer: CustomerId,
    pub agent: Option<AgentId>,
    /// When the wait began, ms.
    pub since: i64,
}

/// Sizes of the engine's state, for memory reports.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Census {
    pub shops: usize,
    pub agents: usize,
    pub partials: usize,
    pub conversations: usize,
    pub customers: usize,
    pub dedup_ids: usize,
    pub active_alerts: usize,
    /// Alerts held: active ones and the day's history.
    pub alerts_held: usize,
}

/// The engine of one partition (a set of shops).
///
/// Ids are interned once per event: shops and agents into engine-wide
/// indices, conversations and customers into per-shop slabs. Everything
/// behind the edge follows `u32` indices.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    #[serde(skip, default = "default_settings")]
    settings: Arc<Settings>,
    #[serde(skip, default = "default_calendar")]
    calendar: Calendar,
    now: i64,
    max_ts: Option<i64>,
    dedup: Dedup,
    shop_ix: Map<IdKey, ShopIx>,
    shops: Vec<Shop>,
    agent_ix: Map<IdKey, AgentIx>,
    agents: Vec<AgentInfo>,
    alerts: AlertBook,
    /// (deadline, shop, agent): re-check `customer_waiting` at the deadline.
    /// A superseded entry stays until it comes due and is then skipped (the
    /// partial's own deadline no longer matches it); so in `slow_deadlines`.
    /// Wait entries are superseded only by earlier ones ([`run_by`]).
    wait_deadlines: Deadlines,
    /// (deadline, shop, agent): re-check `slow_average` when a sample leaves the 15m window.
    slow_deadlines: Deadlines,
    /// Partials whose waits changed during the current `apply`, each
    /// listed once, in the order first touched. Always empty in a
    /// snapshot (kept in the format, which predates `seen`).
    touched: Vec<(ShopIx, AgentIx)>,
    /// Which pairs `touched` lists.
    #[serde(skip)]
    seen: Seen,
    dirty_agents: Vec<AgentIx>,
    dirty_partials: Vec<(ShopIx, AgentIx)>,
    /// The current `take_dirty` round, from 1 ([`Partial::listed`]).
    #[serde(skip)]
    dirty_round: u32,
    dirty_shop_list: Vec<ShopIx>,
    last_maintenance_h: i64,
    /// The next shop of the hourly clean-up under way.
    maintain_next: Option<ShopIx>,
    applied: u64,
}

/// How many events ahead [`Engine::apply_batch`] fetches an event's
/// duplicate-set slot and index slot: far enough for the fetch to land
/// before the next stage reads it, near enough for the line to still be in
/// cache.
pub const INDEX_AHEAD: usize = 8;
/// How many events ahead [`Engine::apply_batch`] reads the index slot and
/// fetches the conversation entry.
pub const ENTRY_AHEAD: usize = 4;
/// How many events ahead [`Engine::apply_batch`] reads the conversation and
/// fetches its customer and its agent's partial.
pub const PARTIAL_AHEAD: usize = 2;
/// How many events ahead [`Engine::apply_batch`] reads the partial's mark
/// table (fetched the stage before) and fetches the customer's line of it.
pub const MARKS_AHEAD: usize = 1;

/// An event's keys, each id hashed once, and what the look-ahead of
/// [`Engine::apply_batch`] found out about it.
///
/// The 128-bit keys are held as [`halves`]: a `u128` field would align
/// the struct to 16 bytes and each `Option` of one to 32, and at 144
/// bytes an `Ahead` was copied by a call to `memcpy` (some 30
/// instructions an event); at 120 the copy is inline.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    dedup: dedup::Key,
    shop_key: [u64; 2],
    /// [`id_key`]s of the conversation, the customer and the agent the
    /// event names (`from_agent` is hashed when it is applied: transfers
    /// are few).
    conversation: Option<[u64; 2]>,
    customer: Option<[u64; 2]>,
    agent: Option<[u64; 2]>,
    /// The shop, if it existed at the look-ahead (shops are never removed,
    /// so it still does when the event is applied).
    shop: Option<ShopIx>,
    /// The conversation's index at the look-ahead: a hint for the next
    /// stage only (it may close, and its slot be reused, before the event
    /// is applied).
    found: Option<ConvIx>,
}

// Kept at most 128 bytes, so that moving one stays inline (see `Ahead`).
const _: () = assert!(std::mem::size_of::<Ahead>() <= 128);

impl Ahead {
    fn of(event: &Event) -> Self {
        let key = |id: &str| Some(halves(id_key(id)));
        let (conversation, customer, agent) = match &event.kind {
            EventKind::CustomerMessage {
                conversation,
                customer,
                agent,
            } => (
                key(conversation.as_str()),
                key(customer.as_str()),
                agent.as_ref().and_then(|a| key(a.as_str())),
            ),
            EventKind::AgentMessage {
                conversation,
                customer,
                agent,
                ..
            }
            | EventKind::Assign {
                conversation,
                customer,
                agent,
                ..
            } => (key(conversation.as_str()), key(customer.as_str()), key(agent.as_str())),
            EventKind::Close { conversation } => (key(conversation.as_str()), None, None),
            EventKind::OrderPaid { customer, .. } => (None, key(customer.as_str()), None),
            EventKind::Status { agent, .. } => (None, None, key(agent.as_str())),
            EventKind::Flag { .. } => (None, None, None),
        };
        let shop_key = id_key(event.shop.as_str());
        Self {
            dedup: dedup::Key::of(dedup_id(event, shop_key)),
            shop_key: halves(shop_key),
            conversation,
            customer,
            agent,
            shop: None,
            found: None,
        }
    }

    fn shop_key(&self) -> IdKey {
        whole(self.shop_key)
    }

    fn conversation(&self) -> Option<IdKey> {
        self.conversation.map(whole)
    }

    fn customer(&self) -> Option<IdKey> {
        self.customer.map(whole)
    }

    /// Whether the event may fold back the mark `conversation` holds for
    /// its agent, whose key is `agent_key`: a close (the only event naming
    /// a conversation but no customer), or one naming another customer or
    /// another agent.
    fn may_release(&self, conversation: &Conversation, agent_key: [u64; 2]) -> bool {
        match self.customer {
            None => self.closes(),
            Some(customer) => customer != conversation.customer_key || self.agent.is_some_and(|k| k != agent_key),
        }
    }

    /// Whether the event is a close: the only one naming a conversation
    /// but no customer.
    fn closes(&self) -> bool {
        self.conversation.is_some() && self.customer.is_none()
    }

    /// The conversation and customer keys of a chat or assign event.
    fn chat_keys(&self) -> [IdKey; 2] {
        [
            self.conversation().expect("a chat event names its conversation"),
            self.customer().expect("a chat event names its customer"),
        ]
    }

    /// The key of the agent the event names.
    fn agent_key(&self) -> IdKey {
        whole(self.agent.expect("the event names an agent"))
    }
}

/// The event's id, as the duplicate set takes it; `shop_key` is the
/// [`id_key`] of its shop.
fn dedup_id(event: &Event, shop_key: IdKey) -> Id<'_> {
    Id::keyed(event.shop.as_str(), shop_key, IdKind::Event, event.id.as_str())
}

/// An order's id, as the duplicate set takes it, for an order event. Its
/// [`dedup::Key`] is worked out at each look-ahead stage and again when
/// the event is applied: the look-ahead record has no room to keep it,
/// and orders are a few events in a hundred.
fn order_id(event: &Event, shop_key: IdKey) -> Option<Id<'_>> {
    match &event.kind {
        EventKind::OrderPaid { order, .. } => {
            Some(Id::keyed(event.shop.as_str(), shop_key, IdKind::Order, order.as_str()))
        }
        _ => None,
    }
}

/// Shops cleaned up per `tick`: the hourly pass is spread over ticks so a
/// desk with thousands of shops never stops for it.
pub const MAINTAIN_SHOPS_PER_TICK: u32 = 8;

/// Makes `next` the partial's deadline in force (`slot`), queueing it if
/// it changed; the entry it replaces is skipped when it comes due.
fn reschedule(slot: &mut Option<i64>, queue: &mut Deadlines, next: Option<i64>, s: ShopIx, a: AgentIx) {
    if *slot != next {
        *slot = next;
        if let Some(d) = next {
            queue.push((d, s, a));
        }
    }
}

/// Makes sure the partial's rule runs again by `next`, with the fewest
/// entries queued: an entry already queued at or before `next` is kept
/// (when it comes due, the rule runs and queues the entry it then needs),
/// and only an earlier `next` is queued.
///
/// For waits: the deadline moves later each time the oldest wait of a
/// partial is answered, seconds apart on a busy desk. Queued each time,
/// every one of those entries came due, nearly all of them superseded, and
/// each read its partial from memory to find that out.
fn run_by(slot: &mut Option<i64>, queue: &mut Deadlines, next: Option<i64>, s: ShopIx, a: AgentIx) {
    if let Some(d) = next
        && slot.is_none_or(|queued| queued > d)
    {
        *slot = Some(d);
        queue.push((d, s, a));
    }
}

fn default_settings() -> Arc<Settings> {
    Arc::new(Settings::default())
}

fn default_calendar() -> Calendar {
    Calendar::new(TimeZone::UTC)
}

impl Engine {
    /// The engine's state as bytes (a snapshot); settings are not included.
    ///
    /// Measured first, then written into a buffer of exactly that size: a
    /// buffer grown by doubling touched about three times the snapshot's
    /// size in fresh memory (each size copied into the next), and fresh
    /// memory is slow on the machines this runs on (~2–2.5 ns per byte in
    /// a Firecracker guest). The measuring pass costs less than the copies.
    pub fn snapshot(&self) -> Vec<u8> {
        let size = postcard::experimental::serialized_size(self).expect("engine state serializes");
        let bytes = postcard::to_extend(self, Vec::with_capacity(size)).expect("engine state serializes");
        debug_assert_eq!(bytes.len(), size);
        bytes
    }

    /// An engine restored from `snapshot` bytes, under `settings` (thresholds
    /// are re-resolved, so a changed config applies).
    pub fn restore(settings: Arc<Settings>, bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut e: Engine = postcard::from_bytes(bytes)?;
        e.calendar = Calendar::new(settings.timezone.clone());
        e.rebuild_indexes(id_key);
        let Engine {
            shops,
            agents,
            slow_deadlines,
            dirty_partials,
            dirty_round,
            ..
        } = &mut e;
        *dirty_round = 1;
        for &(s, a) in dirty_partials.iter() {
            if let Some(p) = shops[s as usize].partials.get_mut(&a) {
                p.listed = 1;
            }
        }
        for (s, shop) in (0..).zip(shops.iter_mut()) {
            for (&a, p) in &mut shop.partials {
                p.thresholds = settings.thresholds_for(Some(&agents[a as usize].id), &shop.id);
                p.samples.recount_slow(p.thresholds.norm_ms);
                // A lower `norm_ms` may find samples above it in a window
                // that had none, and so no deadline: give it the one
                // `Rules::slow` would have.
                if p.slow_deadline.is_none()
                    && let Some(d) = p.slow_recheck_at()
                {
                    p.slow_deadline = Some(d);
                    slow_deadlines.push((d, s, a));
                }
            }
        }
        e.settings = settings;
        Ok(e)
    }

    /// Builds every id index again from the ids the engine holds, keyed
    /// by `key` ([`id_key`] but in tests), and each conversation's copy of
    /// its customer's key (not stored): a snapshot carries the keys of the
    /// build that wrote it, and keys are free to change between builds.
    fn rebuild_indexes(&mut self, key: fn(&str) -> IdKey) {
        self.shop_ix = (0..)
            .zip(&self.shops)
            .map(|(s, shop)| (key(shop.id.as_str()), s))
            .collect();
        for info in &mut self.agents {
            info.key = halves(key(info.id.as_str()));
        }
        self.agent_ix = (0..)
            .zip(&self.agents)
            .map(|(a, info)| (key(info.id.as_str()), a))
            .collect();
        for shop in &mut self.shops {
            shop.conversation_ix = IdIndex::default();
            for (c, conversation) in shop.conversations.iter() {
                shop.conversation_ix.insert(key(conversation.id.as_str()), c);
            }
            let Shop {
                conversations,
                customers,
                customer_ix,
                customer_hours,
                mark_hours,
                partials,
                ..
            } = shop;
            *customer_ix = IdIndex::default();
            *customer_hours = Hours::default();
            for (cu, customer) in customers.iter() {
                customer_ix.insert(key(customer.id.as_str()), cu);
                customer_hours.list(cu, customer.last_ts);
            }
            *mark_hours = Hours::default();
            for (&a, p) in partials.iter() {
                for (cu, m) in p.marks.iter() {
                    mark_hours.list((a, cu), m.latest());
                }
            }
            for c in conversations.values_mut() {
                c.customer_key = halves(key(customers[c.customer].id.as_str()));
            }
        }
    }

    /// An empty engine.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self {
            calendar: Calendar::new(settings.timezone.clone()),
            settings,
            now: 0,
            max_ts: None,
            dedup: Dedup::default(),
            shop_ix: Map::default(),
            shops: Vec::new(),
            agent_ix: Map::default(),
            agents: Vec::new(),
            alerts: AlertBook::default(),
            wait_deadlines: Deadlines::default(),
            slow_deadlines: Deadlines::default(),
            touched: Vec::new(),
            seen: Seen::default(),
            dirty_agents: Vec::new(),
            dirty_partials: Vec::new(),
            dirty_round: 1,
            dirty_shop_list: Vec::new(),
            last_maintenance_h: i64::MIN,
            maintain_next: None,
            applied: 0,
        }
    }

    /// The settings this engine runs with.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The current time, ms (0 before any event or tick).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The largest `ts` applied.
    pub fn max_ts(&self) -> Option<i64> {
        self.max_ts
    }

    /// The `(shop, id)`s this engine has accepted, for 24–48 h.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Events applied (not counting duplicates).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies one validated event. With the event clock, time first moves
    /// to the event's `ts`, so rules see the world as it was just before it.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let applied = self.apply_deferred(event);
        self.settle();
        applied
    }

    /// Applies an event but leaves the wait rules for [`Engine::settle`]:
    /// a batch that holds both a customer message and its reply is judged
    /// as a whole (wall clock: the batch arrives at one `now`).
    pub fn apply_deferred(&mut self, event: &Event) -> Applied {
        self.apply_keyed(event, &Ahead::of(event))
    }

    /// Applies `events` in order, with the results of [`Engine::apply`] on
    /// each in turn under the event clock, and of one arrival under the
    /// wall clock (wait rules judged once, at the end).
    ///
    /// Faster than one call per event: the memory an event will touch is
    /// cold on a desk of any size (its duplicate-set slot, its conversation
    /// and customer, the agent's partial), and each fetch depends on the
    /// one before. So the batch looks ahead in four stages, each a few
    /// events before the event is applied, and each finding in cache what
    /// the stage before asked for: [`INDEX_AHEAD`] events ahead, the
    /// duplicate-set slot (or a numbered id's run head) and the
    /// conversation's index slot; [`ENTRY_AHEAD`], where a numbered id
    /// goes in the duplicate set, and the conversation entry; [`PARTIAL_AHEAD`], its
    /// customer and its agent's partial; one ahead, the line of that
    /// partial's mark table the customer's lookup starts on. Each id is
    /// hashed once.
    pub fn apply_batch(&mut self, events: &[Event]) -> Vec<Applied> {
        let mut ahead: Vec<Ahead> = events.iter().map(Ahead::of).collect();
        let per_event = self.settings.clock == Clock::Event;
        let n = events.len();
        let mut out = Vec::with_capacity(n);
        for step in 0..n + INDEX_AHEAD {
            // The event `lead` events ahead of the one this step applies.
            let at = |lead: usize| (step + lead).checked_sub(INDEX_AHEAD);
            if let Some(a) = ahead.get_mut(step) {
                self.fetch_index(&events[step], a);
            }
            if let Some(i) = at(ENTRY_AHEAD).filter(|&i| i < n) {
                self.fetch_entry(&events[i], &mut ahead[i]);
            }
            if let Some(i) = at(PARTIAL_AHEAD).filter(|&i| i < n) {
                self.fetch_partial(&events[i], &ahead[i]);
            }
            if let Some(i) = at(MARKS_AHEAD).filter(|&i| i < n) {
                self.fetch_marks(&events[i], &ahead[i]);
            }
            let Some(i) = at(0) else {
                continue;
            };
            out.push(self.apply_keyed(&events[i], &ahead[i]));
            if per_event {
                self.settle();
            }
        }
        self.settle();
        out
    }

    /// Look-ahead, first stage: the event's duplicate-set slot (and an
    /// order's) or its run's head, and the index slot of its conversation
    /// (or, for an order, its customer).
    fn fetch_index(&self, event: &Event, a: &mut Ahead) {
        self.dedup.prefetch(&a.dedup);
        if let Some(id) = order_id(event, a.shop_key()) {
            self.dedup.prefetch(&dedup::Key::of(id));
        }
        a.shop = self.shop_ix.get(&a.shop_key()).copied();
        let Some(s) = a.shop else { return };
        let shop = &self.shops[s as usize];
        match a.conversation() {
            Some(key) => shop.conversation_ix.prefetch(key),
            None => {
                if let Some(key) = a.customer() {
                    shop.customer_ix.prefetch(key);
                }
            }
        }
    }

    /// Second stage: where a numbered id goes in the duplicate set (its
    /// run's head read), and the conversation's entry, or when the event
    /// opens one (or names another customer), the customer's index slot.
    fn fetch_entry(&self, event: &Event, a: &mut Ahead) {
        self.dedup.prefetch_route(dedup_id(event, a.shop_key()), &a.dedup);
        if let Some(id) = order_id(event, a.shop_key()) {
            self.dedup.prefetch_route(id, &dedup::Key::of(id));
        }
        let Some(s) = a.shop else { return };
        let shop = &self.shops[s as usize];
        match a.conversation() {
            Some(key) => {
                a.found = shop.conversation_ix.get(key);
                match a.found {
                    Some(c) => shop.conversations.prefetch(c),
                    None => {
                        if let Some(key) = a.customer() {
                            shop.customer_ix.prefetch(key);
                        }
                    }
                }
            }
            None => {
                if let Some(cu) = a.customer().and_then(|key| shop.customer_ix.get(key)) {
                    shop.customers.prefetch(cu);
                }
            }
        }
    }

    /// Third stage: the customer's entry and the conversation agent's
    /// partial, and on a transfer, the partial of the agent taking it.
    fn fetch_partial(&self, event: &Event, a: &Ahead) {
        let Some(s) = a.shop else { return };
        let shop = &self.shops[s as usize];
        let Some(conversation) = a.found.and_then(|c| shop.conversations.get(c)) else {
            if a.conversation.is_none() {
                return;
            }
            let customer = a.customer().and_then(|key| shop.customer_ix.get(key));
            if let Some(cu) = customer {
                shop.customers.prefetch(cu);
            }
            // A conversation the event opens, with the agent it names: that
            // agent's partial, and the line of its mark table the
            // customer's first mark is looked up from (a new customer
            // takes the slab's next index, unless another comes first).
            let agent = a.agent.and_then(|key| self.agent_ix.get(&whole(key)));
            if let Some(p) = agent.and_then(|agent| shop.partials.get(agent)) {
                p.prefetch();
                p.marks
                    .prefetch(customer.unwrap_or_else(|| shop.customers.next_index()));
            }
            return;
        };
        shop.customers.prefetch(conversation.customer);
        if a.closes() {
            // A close drops the conversation's id, written last when the
            // conversation opened, most often long ago.
            conversation.id.prefetch_counts();
        }
        if let Some(agent) = conversation.agent {
            // Where `agent_in` compares the event's agent with it.
            mem_prefetch::prefetch_read_data::<_, 3>(&self.agents[agent as usize]);
        }
        if let Some(p) = conversation.agent.and_then(|agent| shop.partials.get(&agent)) {
            p.prefetch();
        }
        if let Some(p) = self.transferred_to(event, a, shop, conversation) {
            p.prefetch();
        }
    }

    /// The partial an assign event hands its conversation to, when that
    /// is another agent's: whose mark of the customer the event writes.
    fn transferred_to<'s>(
        &self,
        event: &Event,
        a: &Ahead,
        shop: &'s Shop,
        conversation: &Conversation,
    ) -> Option<&'s Partial> {
        let EventKind::Assign { .. } = event.kind else {
            return None;
        };
        let to = self.agent_ix.get(&whole(a.agent?))?;
        (conversation.agent != Some(*to))
            .then(|| shop.partials.get(to))
            .flatten()
    }

    /// Fourth stage: the line of the conversation agent's mark table the
    /// event reads, if it reads one. Without a held mark, the event's
    /// first mark looks the customer up from its home line. A held mark
    /// takes every message in the conversation's own entry, so the table
    /// is read again only when the mark is folded back, at the slot it
    /// sat in: on a close, or when the event names another agent or
    /// customer. Most events are messages through a held mark and read no
    /// line of the table; asking for one anyway fetched a random line of
    /// it for nearly every event (the rate read the same without them:
    /// BENCHMARKS.md, *Mark lines asked for only when read*).
    ///
    /// And the count of the agent's histogram a reply's response time
    /// lands on: the partial's line naming the histogram came in at the
    /// stage before, while the count's own is one of the tens of lines an
    /// agent's replies spread over, seldom still in cache on a big desk.
    ///
    /// On a transfer, also the line the customer's mark is looked up from
    /// in the table of the agent taking the conversation, which the event
    /// marks (a quarter of the mark probes' samples on a second day before).
    fn fetch_marks(&self, event: &Event, a: &Ahead) {
        let Some(s) = a.shop else { return };
        let shop = &self.shops[s as usize];
        let Some(conversation) = a.found.and_then(|c| shop.conversations.get(c)) else {
            return;
        };
        let Some(agent) = conversation.agent else { return };
        let Some(p) = shop.partials.get(&agent) else { return };
        let agent_key = self.agents[agent as usize].key;
        if !conversation.holds_mark {
            p.marks.prefetch(conversation.customer);
        } else if a.may_release(conversation, agent_key) {
            p.marks.prefetch_slot(conversation.mark_slot);
        }
        if let EventKind::AgentMessage { auto: false, .. } = event.kind
            && let Some(start) = conversation.wait_start
            && a.agent == Some(agent_key)
        {
            p.samples.prefetch_response(response_ms(start, event.ts));
        }
        if let Some(to) = self.transferred_to(event, a, shop, conversation) {
            to.marks.prefetch(conversation.customer);
        }
    }

    fn apply_keyed(&mut self, event: &Event, ahead: &Ahead) -> Applied {
        // A duplicate changes nothing, the event clock included: `now` is
        // the largest `ts` accepted, and a resent event may carry a later one.
        if !self
            .dedup
            .insert(dedup_id(event, ahead.shop_key()), &ahead.dedup, event.ts)
        {
            return Applied::Duplicate;
        }
        if self.settings.clock == Clock::Event {
            self.tick(event.ts);
        }
        self.applied += 1;
        self.max_ts = Some(self.max_ts.map_or(event.ts, |m| m.max(event.ts)));
        let ts = event.ts;
        let s = match ahead.shop {
            Some(s) => s,
            None => self.shop_index(&event.shop, ahead.shop_key()),
        };
        let shop = &mut self.shops[s as usize];
        if !shop.dirty {
            shop.dirty = true;
            self.dirty_shop_list.push(s);
        }
        match &event.kind {
            EventKind::Status { agent, status } => {
                let a = self.agent_index(agent, ahead.agent_key());
                self.agents[a as usize].status = Some(*status);
                self.mark_agent(a);
            }
            EventKind::CustomerMessage {
                conversation,
                customer,
                agent,
            } => {
                let (cu, at) = self.shops[s as usize].customer_in(conversation, customer, ahead.chat_keys(), ts);
                // A flagged customer's messages are ignored, down to the
                // agent they name: it does not become known through them.
                if !self.shops[s as usize].flagged(cu) {
                    let a = agent.as_ref().map(|a| self.agent_in(s, at.found, a, ahead.agent_key()));
                    self.customer_message(s, at, cu, a, ts);
                }
            }
            EventKind::AgentMessage {
                conversation,
                customer,
                agent,
                auto,
            } => {
                let (cu, at) = self.shops[s as usize].customer_in(conversation, customer, ahead.chat_keys(), ts);
                let a = self.agent_in(s, at.found, agent, ahead.agent_key());
                self.agent_message(s, at, cu, a, *auto, ts);
            }
            EventKind::Assign {
                conversation,
                customer,
                agent,
                from_agent,
            } => {
                let (cu, at) = self.shops[s as usize].customer_in(conversation, customer, ahead.chat_keys(), ts);
                let a = self.agent_in(s, at.found, agent, ahead.agent_key());
                let c = self.open_conversation(s, at, cu, ts);
                self.assign(s, c, a, ts);
                if let Some(from) = from_agent {
                    let from = self.agent_index(from, id_key(from.as_str()));
                    self.record(s, Some(a), MarkKind::TransferIn, 0, ts);
                    self.record(s, Some(from), MarkKind::TransferOut, 0, ts);
                }
            }
            EventKind::Close { .. } => self.close(s, ahead.conversation().expect("a close names its conversation")),
            EventKind::Flag { customer, .. } => {
                let cu = self.shops[s as usize].customer(customer, ts);
                self.flag(s, cu);
            }
            EventKind::OrderPaid { amount, .. } => {
                // An order the shop reported before (under another event id)
                // is a resend: taken, not counted twice.
                let id = order_id(event, ahead.shop_key()).expect("an order event has an order id");
                if self.dedup.insert(id, &dedup::Key::of(id), ts) {
                    self.order(s, ahead.customer().expect("an order names its customer"), *amount, ts);
                }
            }
        }
        Applied::Accepted
    }

    /// Runs the wait rules for every partial touched since the last call.
    /// Rules see an event (or a batch) as a whole: a transfer and the reply
    /// in the same message never raise and resolve in one instant.
    pub fn settle(&mut self) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        self.seen.clear();
        for (s, a) in touched.drain(..) {
            self.check_waiting(s, a);
        }
        self.touched = touched;
    }

    /// Runs the wait rule on every partial, as though each had been
    /// touched, and returns how many that changed (an alert raised,
    /// escalated or resolved, or a deadline moved). The engine runs the
    /// rule only where a wait started or ended, or a deadline came due; a
    /// test calls this after each event to show that nothing else could
    /// change what it reads (0 every time).
    #[doc(hidden)]
    pub fn recheck_waits(&mut self) -> usize {
        let mut changed = 0;
        for s in 0..self.shops.len() {
            let s = s as ShopIx;
            let agents: Vec<AgentIx> = self.shops[s as usize].partials.keys().copied().collect();
            for a in agents {
                let state = |e: &Self| {
                    let p = &e.shops[s as usize].partials[&a];
                    (p.waiting_alert, p.wait_deadline)
                };
                let before = state(self);
                self.check_waiting(s, a);
                changed += usize::from(state(self) != before);
            }
        }
        changed
    }

    /// Runs the wait rule on (shop `s`, agent `a`), whose waits changed,
    /// or lists the partial for the next [`Engine::settle`], once.
    ///
    /// The rule runs at once when it would leave the partial's alert as it
    /// is and only move its deadline, as it nearly always does at the start
    /// or end of a wait: the partial is still in cache, and that result is
    /// the one `settle` would reach unless a later event of the batch
    /// changes the waits, which touches the partial again. Only a reading
    /// that would raise, escalate or resolve an alert waits for `settle`.
    fn touch(&mut self, s: ShopIx, a: AgentIx) {
        if !self.run_wait_rule(s, a, false) {
            self.defer_waiting(s, a);
        }
    }

    /// Lists (shop `s`, agent `a`) for the next [`Engine::settle`], once:
    /// its wait rule would move an alert.
    fn defer_waiting(&mut self, s: ShopIx, a: AgentIx) {
        if self.seen.insert((s, a), &self.touched) {
            self.touched.push((s, a));
        }
    }

    /// Moves time forward to `now` (never back) and runs the time-driven
    /// rules: waits crossing thresholds, 15m averages sliding, clean-up.
    pub fn tick(&mut self, now: i64) {
        if now <= self.now {
            return;
        }
        self.now = now;
        while let Some((deadline, s, a)) = self.wait_deadlines.pop_due(now) {
            if let Some((p, mut rules)) = self.rules_at(s, a)
                && p.wait_deadline == Some(deadline)
            {
                p.wait_deadline = None;
                rules.waiting(p, true);
            }
        }
        while let Some((deadline, s, a)) = self.slow_deadlines.pop_due(now) {
            if let Some((p, mut rules)) = self.rules_at(s, a)
                && p.slow_deadline == Some(deadline)
            {
                p.slow_deadline = None;
                rules.slow(p);
            }
        }
        let hour = now.div_euclid(window::HOUR_MS);
        if hour != self.last_maintenance_h {
            self.last_maintenance_h = hour;
            // A pass still under way restarts from the first shop.
            self.maintain_next = Some(0);
        }
        self.maintain_some();
    }

    /// The shop's index, creating it; `key` is the [`id_key`] of `id`.
    fn shop_index(&mut self, id: &ShopId, key: IdKey) -> ShopIx {
        if let Some(&s) = self.shop_ix.get(&key) {
            return s;
        }
        let s = ShopIx::try_from(self.shops.len()).expect("fewer than 2^32 shops");
        self.shops.push(Shop::new(id.clone()));
        self.shop_ix.insert(key, s);
        s
    }

    /// The agent's index, as [`Engine::agent_index`], taken from the
    /// conversation `found` (of shop `s`) when it is already assigned to
    /// this agent, as most chat events name: a compare of two short strings
    /// instead of hashing the id and probing the agent index.
    /// The agent `id`, whose [`id_key`] is `key`: the agent of conversation
    /// `found` when it is the one, found without a lookup.
    fn agent_in(&mut self, s: ShopIx, found: Option<ConvIx>, id: &AgentId, key: IdKey) -> AgentIx {
        let assigned = found.and_then(|c| self.shops[s as usize].conversations[c].agent);
        match assigned {
            Some(a) if self.agents[a as usize].key == halves(key) => a,
            _ => self.agent_index(id, key),
        }
    }

    /// The agent `id`, whose [`id_key`] is `key`, known from now on.
    fn agent_index(&mut self, id: &AgentId, key: IdKey) -> AgentIx {
        if let Some(&a) = self.agent_ix.get(&key) {
            return a;
        }
        let a = AgentIx::try_from(self.agents.len()).expect("fewer than 2^32 agents");
        self.agents.push(AgentInfo {
            id: id.clone(),
            key: halves(key),
            status: None,
            dirty: false,
            shops: BTreeSet::new(),
        });
        self.agent_ix.insert(key, a);
        a
    }

    /// Lists the agent as changed for the next `take_dirty`.
    fn mark_agent(&mut self, a: AgentIx) {
        let info = &mut self.agents[a as usize];
        if !info.dirty {
            info.dirty = true;
            self.dirty_agents.push(a);
        }
    }

    /// The partial of (shop `s`, agent `a`), created if new, listed as
    /// changed for the next `take_dirty`.
    fn partial(&mut self, s: ShopIx, a: AgentIx) -> &mut Partial {
        self.parts(s, a).partial
    }

    /// [`Engine::partial`], with the shop's conversations and the alert
    /// rules borrowed beside it: what an event does to one partial takes
    /// one lookup of it.
    fn parts(&mut self, s: ShopIx, a: AgentIx) -> Parts<'_> {
        let Self {
            now,
            shops,
            agents,
            settings,
            alerts,
            wait_deadlines,
            slow_deadlines,
            dirty_partials,
            dirty_round,
            ..
        } = self;
        let Shop {
            id: shop,
            partials,
            conversations,
            mark_hours,
            ..
        } = &mut shops[s as usize];
        let partial = partials.entry(a).or_insert_with(|| {
            let info = &mut agents[a as usize];
            info.shops.insert(shop.clone());
            Partial::new(settings.thresholds_for(Some(&info.id), shop))
        });
        if partial.listed != *dirty_round {
            partial.listed = *dirty_round;
            dirty_partials.push((s, a));
        }
        Parts {
            partial,
            conversations,
            mark_hours,
            rules: Rules {
                now: *now,
                s,
                a,
                shop,
                agent: &agents[a as usize].id,
                alerts,
                wait_deadlines,
                slow_deadlines,
            },
        }
    }

    /// The partial of (shop `s`, agent `a`) if it exists, and its rules;
    /// neither created nor listed.
    fn rules_at(&mut self, s: ShopIx, a: AgentIx) -> Option<(&mut Partial, Rules<'_>)> {
        let Self {
            now,
            shops,
            agents,
            alerts,
            wait_deadlines,
            slow_deadlines,
            ..
        } = self;
        let Shop { id: shop, partials, .. } = &mut shops[s as usize];
        let partial = partials.get_mut(&a)?;
        let rules = Rules {
            now: *now,
            s,
            a,
            shop,
            agent: &agents[a as usize].id,
            alerts,
            wait_deadlines,
            slow_deadlines,
        };
        Some((partial, rules))
    }

    /// The conversation's index, opening it for `customer` if new.
    fn open_conversation(&mut self, s: ShopIx, at: ConvLookup<'_>, customer: CustIx, ts: i64) -> ConvIx {
        let now = self.now;
        let shop = &mut self.shops[s as usize];
        let key = at.key;
        let found = at.found.or_else(|| shop.conversation_ix.get(key));
        let (ix, is_new) = match found {
            Some(ix) => (ix, false),
            None => {
                let ix = shop.conversations.insert(Conversation {
                    id: at.id.clone(),
                    customer,
                    customer_key: at.customer_key,
                    agent: None,
                    wait_start: None,
                    responded: false,
                    holds_mark: false,
                    last_ts: ts,
                    counted: i64::MIN,
                    replied: i64::MIN,
                    mark_slot: 0,
                });
                shop.conversation_ix.insert(key, ix);
                (ix, true)
            }
        };
        if !is_new && shop.conversations[ix].customer != customer {
            shop.release_mark(ix, now);
        }
        let c = &mut shop.conversations[ix];
        c.last_ts = c.last_ts.max(ts);
        if is_new {
            shop.customers[customer].open += 1;
        } else if c.customer != customer {
            // The sender moved the conversation to another customer id.
            let old = std::mem::replace(&mut c.customer, customer);
            c.customer_key = at.customer_key;
            if let Some(oc) = shop.customers.get_mut(old) {
                oc.open -= 1;
            }
            shop.customers[customer].open += 1;
        }
        ix
    }

    /// A counted customer message (the caller has checked the customer is
    /// not flagged).
    fn customer_message(&mut self, s: ShopIx, at: ConvLookup<'_>, cu: CustIx, agent: Option<AgentIx>, ts: i64) {
        let c = self.open_conversation(s, at, cu, ts);
        if let Some(a) = agent {
            self.assign(s, c, a, ts);
        }
        let shop = &mut self.shops[s as usize];
        let conversation = &mut shop.conversations[c];
        // Only a wait that starts changes what the wait rule reads: a
        // customer writing again into a wait is judged from its start.
        let starts = conversation.wait_start.is_none();
        if starts {
            conversation.wait_start = Some(ts);
        }
        let Some(a) = conversation.agent else {
            if starts {
                shop.queue.add(ts);
            }
            return;
        };
        let Parts {
            partial: p,
            conversations,
            mark_hours,
            mut rules,
        } = self.parts(s, a);
        p.mark(conversations, mark_hours, c, MarkTime::Counted, ts, rules.now);
        if starts {
            p.waits.add(ts);
            if !rules.waiting(p, false) {
                self.defer_waiting(s, a);
            }
        }
    }

    fn agent_message(&mut self, s: ShopIx, at: ConvLookup<'_>, cu: CustIx, a: AgentIx, auto: bool, ts: i64) {
        let c = self.open_conversation(s, at, cu, ts);
        self.assign(s, c, a, ts);
        if auto {
            self.record(s, Some(a), MarkKind::AutoReply, 0, ts);
            return;
        }
        let shop = &mut self.shops[s as usize];
        let cust = &mut shop.customers[cu];
        cust.agent_messages.push(a, ts);
        let conversation = &mut shop.conversations[c];
        let answered = conversation.wait_start.take().map(|start| {
            let first = !conversation.responded;
            conversation.responded = true;
            (start, first)
        });
        // Recorded here rather than through `record`: one lookup of the
        // partial for the mark, the wait, the sample and both rules.
        let (day, now) = self.day_and_now(ts);
        let Parts {
            partial: p,
            conversations,
            mark_hours,
            mut rules,
        } = self.parts(s, a);
        p.mark(conversations, mark_hours, c, MarkTime::Replied, ts, rules.now);
        let Some((start, first)) = answered else {
            return;
        };
        p.waits.remove(start);
        let ms = response_ms(start, ts);
        let slow = ms > p.thresholds.norm_ms;
        let mark = Mark::new(ts, MarkKind::Response { first, slow }, ms);
        p.samples.record(mark, day, now);
        let settled = rules.waiting(p, false);
        rules.slow(p);
        if !settled {
            self.defer_waiting(s, a);
        }
    }

    /// Assigns conversation `c` to agent `a`, moving its open wait along.
    fn assign(&mut self, s: ShopIx, c: ConvIx, a: AgentIx, ts: i64) {
        let now = self.now;
        let shop = &mut self.shops[s as usize];
        let conversation = &mut shop.conversations[c];
        if conversation.agent == Some(a) {
            return;
        }
        shop.release_mark(c, now);
        let conversation = &mut shop.conversations[c];
        let old = conversation.agent.replace(a);
        let wait = conversation.wait_start;
        let cu = conversation.customer;
        match old {
            Some(o) => {
                let p = shop.partials.get_mut(&o).expect("assigned agents have partials");
                p.open_conversations -= 1;
                if let Some(start) = wait {
                    p.waits.remove(start);
                }
            }
            None => {
                if let Some(start) = wait {
                    shop.queue.remove(start);
                }
            }
        }
        if wait.is_some() {
            shop.touch_customer(cu, ts);
        }
        let Parts {
            partial: p,
            conversations,
            mark_hours,
            rules,
        } = self.parts(s, a);
        p.open_conversations += 1;
        if let Some(start) = wait {
            p.waits.add(start);
            p.mark(conversations, mark_hours, c, MarkTime::Counted, ts, rules.now);
        }
        if let Some(o) = old {
            self.mark_agent(o);
        }
        // The wait rule reads waits only: without one, neither agent's moved.
        if wait.is_some() {
            if let Some(o) = old {
                self.touch(s, o);
            }
            self.touch(s, a);
        }
    }

    /// Closes the conversation whose [`id_key`] is `key`, if open.
    fn close(&mut self, s: ShopIx, key: IdKey) {
        let now = self.now;
        let shop = &mut self.shops[s as usize];
        let Some(ix) = shop.conversation_ix.remove(key) else {
            return;
        };
        shop.release_mark(ix, now);
        let c = shop.conversations.remove(ix).expect("indexed conversations are live");
        if let Some(cust) = shop.customers.get_mut(c.customer) {
            cust.open -= 1;
        }
        self.drop_conversation(s, c);
    }

    /// Removes a conversation's open wait and assignment (already unlinked).
    fn drop_conversation(&mut self, s: ShopIx, c: Conversation) {
        let shop = &mut self.shops[s as usize];
        match c.agent {
            Some(a) => {
                let p = shop.partials.get_mut(&a).expect("assigned agents have partials");
                p.open_conversations -= 1;
                if let Some(start) = c.wait_start {
                    p.waits.remove(start);
                }
                self.mark_agent(a);
                if c.wait_start.is_some() {
                    self.touch(s, a);
                }
            }
            None => {
                if let Some(start) = c.wait_start {
                    shop.queue.remove(start);
                }
            }
        }
    }

    fn flag(&mut self, s: ShopIx, cu: CustIx) {
        let shop = &mut self.shops[s as usize];
        shop.customers[cu].flagged = true;
        let mut changed = Vec::new();
        // Flags are rare: a scan of the shop's open conversations is fine.
        let Shop {
            conversations,
            partials,
            queue,
            ..
        } = shop;
        for conversation in conversations.values_mut().filter(|c| c.customer == cu) {
            let Some(start) = conversation.wait_start.take() else {
                continue;
            };
            match conversation.agent {
                Some(a) => {
                    partials
                        .get_mut(&a)
                        .expect("assigned agents have partials")
                        .waits
                        .remove(start);
                    changed.push(a);
                }
                None => queue.remove(start),
            }
        }
        // The customer leaves `customers` of every agent in the shop.
        let counted: Vec<AgentIx> = partials
            .iter()
            .filter(|(_, p)| p.marks.contains(cu))
            .map(|(&a, _)| a)
            .collect();
        for a in changed {
            self.mark_agent(a);
            self.touch(s, a);
        }
        for a in counted {
            self.mark_agent(a);
        }
    }

    /// An order by the customer whose [`id_key`] is `customer`.
    fn order(&mut self, s: ShopIx, customer: IdKey, amount: u64, ts: i64) {
        let shop = &self.shops[s as usize];
        let credited = shop.customer_ix.get(customer).and_then(|cu| {
            shop.customers[cu]
                .agent_messages
                .iter()
                .filter(|(_, at)| *at <= ts && *at >= ts - ATTRIBUTION_MS)
                .max_by_key(|(_, at)| *at)
                .map(|(a, _)| (cu, a))
        });
        match credited {
            Some((cu, a)) => {
                self.record(s, Some(a), MarkKind::Order, amount, ts);
                self.shops[s as usize].touch_customer(cu, ts);
                let Parts {
                    partial,
                    mark_hours,
                    rules,
                    ..
                } = self.parts(s, a);
                partial.mark_entry(mark_hours, a, cu, ts, rules.now).1.raise_paid(ts);
            }
            None => self.record(s, None, MarkKind::SilentOrder, amount, ts),
        }
    }

    /// Records a mark for (agent, shop), or for the shop when `agent` is `None`.
    fn record(&mut self, s: ShopIx, agent: Option<AgentIx>, kind: MarkKind, value: u64, ts: i64) {
        let (day, now) = self.day_and_now(ts);
        let mark = Mark::new(ts, kind, value);
        match agent {
            Some(a) => self.partial(s, a).samples.record(mark, day, now),
            None => self.shops[s as usize].samples.record(mark, day, now),
        }
    }

    /// The business day of a mark at `ts`, and the `now` that prunes the
    /// rolling windows as it is recorded.
    fn day_and_now(&mut self, ts: i64) -> (Day, i64) {
        (self.calendar.day_of(ts), self.now.max(ts))
    }

    /// Re-evaluates `customer_waiting` for (shop, agent) and schedules the next check.
    fn check_waiting(&mut self, s: ShopIx, a: AgentIx) {
        self.run_wait_rule(s, a, true);
    }

    /// [`Engine::check_waiting`]; with `alerts_may_move` false it stops
    /// short of a reading that would raise, escalate or resolve an alert
    /// and returns false, having changed nothing.
    fn run_wait_rule(&mut self, s: ShopIx, a: AgentIx, alerts_may_move: bool) -> bool {
        match self.rules_at(s, a) {
            Some((p, mut rules)) => rules.waiting(p, alerts_may_move),
            None => true,
        }
    }

    /// The hourly clean-up, [`MAINTAIN_SHOPS_PER_TICK`] shops at a time:
    /// idle conversations, old marks, old customers, and at the end of a
    /// pass old alerts.
    fn maintain_some(&mut self) {
        let Some(first) = self.maintain_next else { return };
        let end = first
            .saturating_add(MAINTAIN_SHOPS_PER_TICK)
            .min(self.shops.len() as ShopIx);
        for s in first..end {
            self.maintain_shop(s);
        }
        self.settle();
        if end as usize >= self.shops.len() {
            self.maintain_next = None;
            self.alerts.prune(self.now);
        } else {
            self.maintain_next = Some(end);
        }
    }

    fn maintain_shop(&mut self, s: ShopIx) {
        let now = self.now;
        // Marks and customers last seen at or before this are forgotten.
        let horizon = now - MARK_RETENTION_MS;
        {
            let shop = &mut self.shops[s as usize];
            let mut idle: Vec<ConversationId> = shop
                .conversations
                .iter()
                .filter(|(_, c)| c.last_ts <= now - CONVERSATION_IDLE_MS && c.wait_start.is_none())
                .map(|(_, c)| c.id.clone())
                .collect();
            idle.sort();
            for conv in idle {
                self.close(s, id_key(conv.as_str()));
            }
            let shop = &mut self.shops[s as usize];
            shop.forget_marks_through(horizon);
            for p in shop.partials.values_mut() {
                p.samples.prune(now);
            }
            // Every mark's time is at most its customer's `last_ts`, so no
            // mark left above names a customer dropped here.
            shop.forget_customers_through(horizon);
            shop.samples.prune(now);
        }
    }

    // ---- queries ----

    /// The day containing `now`.
    pub fn today(&self) -> Day {
        self.calendar.peek(self.now.max(0))
    }

    fn partial_acc(&self, s: &Shop, p: &Partial, window: Window, range: Range, acc: &mut WindowAcc) {
        p.samples.add_to(acc, window, range, self.today());
        let mut counts = CustomerCounts::default();
        for (cu, m) in p.marks.iter() {
            if range.contains(m.paid) {
                counts.buyers += 1;
            }
            let (counted, replied) = m.counted_replied(&s.conversations);
            if !range.contains(counted) || s.flagged(cu) {
                continue;
            }
            counts.customers += 1;
            if range.contains(replied) {
                counts.replied_customers += 1;
            }
            if range.contains(m.paid) {
                counts.paying_customers += 1;
            }
        }
        acc.customers.merge(&counts);
    }

    fn partial_live(p: &Partial) -> LiveAcc {
        LiveAcc {
            status: None,
            open_conversations: p.open_conversations,
            waiting: p.waits.count,
            oldest_wait_start: p.waits.oldest(),
            queued: 0,
            oldest_queued_start: None,
        }
    }

    /// The range of `window` at the current `now`.
    pub fn range(&self, window: Window) -> Range {
        Range::of(window, self.now, self.today())
    }

    /// Whether an event has named shop `id`.
    pub fn has_shop(&self, id: &ShopId) -> bool {
        self.shop(id).is_some()
    }

    fn shop(&self, id: &ShopId) -> Option<&Shop> {
        self.shop_ix.get(&id_key(id.as_str())).map(|&s| &self.shops[s as usize])
    }

    fn agent_info(&self, id: &AgentId) -> Option<(AgentIx, &AgentInfo)> {
        self.agent_ix
            .get(&id_key(id.as_str()))
            .map(|&a| (a, &self.agents[a as usize]))
    }

    /// The partial of (agent, shop), if any.
    fn partial_of(&self, agent: &AgentId, shop: &ShopId) -> Option<&Partial> {
        let (a, _) = self.agent_info(agent)?;
        self.shop(shop)?.partials.get(&a)
    }

    /// An agent's window total and live state over its shops in this
    /// partition (only `shop` when given); `None` if the agent is unknown here.
    pub fn agent_acc(&self, agent: &AgentId, window: Window, shop: Option<&ShopId>) -> Option<(WindowAcc, LiveAcc)> {
        let (a, info) = self.agent_info(agent)?;
        let range = self.range(window);
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc {
            status: info.status,
            ..LiveAcc::default()
        };
        for shop_id in info.shops.iter().filter(|s| shop.is_none_or(|f| f == *s)) {
            let Some(s) = self.shop(shop_id) else { continue };
            let Some(p) = s.partials.get(&a) else { continue };
            self.partial_acc(s, p, window, range, &mut acc);
            live.merge(&Self::partial_live(p));
        }
        Some((acc, live))
    }

    /// A shop's window total (sum of its partials plus silent orders) and live state.
    pub fn shop_acc(&self, shop: &ShopId, window: Window) -> Option<(WindowAcc, LiveAcc)> {
        let s = self.shop(shop)?;
        let range = self.range(window);
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc::default();
        for p in s.partials.values() {
            self.partial_acc(s, p, window, range, &mut acc);
            live.merge(&Self::partial_live(p));
        }
        s.samples.add_to(&mut acc, window, range, self.today());
        live.queued = s.queue.count;
        live.oldest_queued_start = s.queue.oldest();
        Some((acc, live))
    }

    /// Agents known to this partition, sorted.
    pub fn agent_ids(&self) -> Vec<AgentId> {
        let mut v: Vec<_> = self.agents.iter().map(|a| a.id.clone()).collect();
        v.sort();
        v
    }

    /// Shops of this partition, sorted.
    pub fn shop_ids(&self) -> Vec<ShopId> {
        let mut v: Vec<_> = self.shops.iter().map(|s| s.id.clone()).collect();
        v.sort();
        v
    }

    /// Shops an agent has state in.
    pub fn shops_of(&self, agent: &AgentId) -> Vec<ShopId> {
        self.agent_info(agent)
            .map(|(_, a)| a.shops.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The full stats object of one agent (single-partition use: replay, tests).
    pub fn agent_stats(&self, agent: &AgentId, window: Window, shop: Option<&ShopId>) -> Option<AgentStats> {
        if let Some(s) = shop
            && !self.agent_info(agent)?.1.shops.contains(s)
        {
            return None;
        }
        let (acc, live) = self.agent_acc(agent, window, shop)?;
        Some(AgentStats {
            agent: agent.clone(),
            window,
            now: self.now,
            shop: shop.cloned(),
            // The shops the figures cover: only `shop` when one is asked for.
            shops: match shop {
                Some(s) => vec![s.clone()],
                None => self.shops_of(agent),
            },
            teams: self.settings.teams_of(agent),
            metrics: acc.metrics(),
            live: live.state(self.now),
        })
    }

    /// Open waits of an agent (or the queue of `shop` when `agent` is `None`), oldest first.
    pub fn open_waits(&self, agent: Option<&AgentId>, shop: Option<&ShopId>) -> Vec<OpenWait> {
        let wanted = match agent {
            Some(id) => match self.agent_info(id) {
                Some((a, _)) => Some(a),
                None => return Vec::new(),
            },
            None => None,
        };
        let mut out = Vec::new();
        for s in &self.shops {
            if shop.is_some_and(|f| *f != s.id) {
                continue;
            }
            for (_, c) in s.conversations.iter() {
                if let Some(since) = c.wait_start
                    && c.agent == wanted
                {
                    out.push(OpenWait {
                        shop: s.id.clone(),
                        conversation: c.id.clone(),
                        customer: s.customers[c.customer].id.clone(),
                        agent: c.agent.map(|a| self.agents[a as usize].id.clone()),
                        since,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.since, &a.shop, &a.conversation).cmp(&(b.since, &b.shop, &b.conversation)));
        out
    }

    /// Rolling marks of an agent over the last hour (all its shops here).
    pub fn agent_recent_marks(&self, agent: &AgentId) -> Vec<Mark> {
        let Some((_, info)) = self.agent_info(agent) else {
            return Vec::new();
        };
        let lo = self.now.saturating_sub(window::HOUR_MS) + 1;
        let mut marks: Vec<Mark> = info
            .shops
            .iter()
            .filter_map(|s| self.partial_of(agent, s))
            .flat_map(|p| p.samples.recent().filter(|m| m.ts() >= lo).copied())
            .collect();
        marks.sort_by_key(Mark::ts);
        marks
    }

    /// The agent's desk status, if it was ever reported here.
    pub fn agent_status(&self, agent: &AgentId) -> Option<AgentStatus> {
        self.agent_info(agent)?.1.status
    }

    /// Agents with state in `shop` (one partial each).
    pub fn shop_agent_count(&self, shop: &ShopId) -> usize {
        self.shop(shop).map_or(0, |s| s.partials.len())
    }

    /// Whether the agent has been seen here.
    pub fn knows(&self, agent: &AgentId) -> bool {
        self.agent_info(agent).is_some()
    }

    /// Rolling marks of (agent, shop) over the last hour, oldest first.
    pub fn agent_recent_marks_in(&self, agent: &AgentId, shop: &ShopId) -> Vec<Mark> {
        let lo = self.now.saturating_sub(window::HOUR_MS) + 1;
        self.partial_of(agent, shop)
            .map(|p| p.samples.recent().filter(|m| m.ts() >= lo).copied().collect())
            .unwrap_or_default()
    }

    /// Today's response distribution of (agent, shop).
    pub fn agent_day_dist(&self, agent: &AgentId, shop: &ShopId) -> Option<&window::Dist> {
        let today = self.today();
        self.partial_of(agent, shop)?.samples.day_dist(today.start_ms)
    }

    /// Alert by id.
    pub fn alert(&self, id: &str) -> Option<&Alert> {
        self.alerts.get(id)
    }

    /// Active alerts.
    pub fn active_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.alerts.active().cloned().collect();
        v.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Every alert held (active and resolved today), newest first.
    pub fn all_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.alerts.all().cloned().collect();
        v.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Acknowledges an alert; `None` if unknown here.
    pub fn ack_alert(&mut self, id: &str, by: &str) -> Option<Alert> {
        let now = self.now;
        self.alerts.ack(id, by, now)
    }

    /// Alert changes since the last call, in order.
    pub fn take_alert_changes(&mut self) -> Vec<AlertChange> {
        self.alerts.take_changes()
    }

    /// Agents and shops changed since the last call, each once.
    pub fn take_dirty(&mut self) -> (Vec<AgentId>, Vec<ShopId>) {
        let mut listed = std::mem::take(&mut self.dirty_partials);
        for (_, a) in listed.drain(..) {
            self.mark_agent(a);
        }
        self.dirty_partials = listed;
        self.dirty_round = self.dirty_round.wrapping_add(1);
        if self.dirty_round == 0 {
            // After 2^32 rounds a stamp could match again: reset them all.
            for p in self.shops.iter_mut().flat_map(|shop| shop.partials.values_mut()) {
                p.listed = 0;
            }
            self.dirty_round = 1;
        }
        let agents = self
            .dirty_agents
            .drain(..)
            .map(|a| {
                let info = &mut self.agents[a as usize];
                info.dirty = false;
                info.id.clone()
            })
            .collect();
        let shops = self
            .dirty_shop_list
            .drain(..)
            .map(|s| {
                let shop = &mut self.shops[s as usize];
                shop.dirty = false;
                shop.id.clone()
            })
            .collect();
        (agents, shops)
    }

    /// Whether (shop, id) was accepted before.
    pub fn is_duplicate(&self, shop: &ShopId, id: &str) -> bool {
        self.dedup.contains(Id::event(shop.as_str(), id))
    }

    /// Counts of what the engine holds.
    pub fn census(&self) -> Census {
        Census {
            shops: self.shops.len(),
            agents: self.agents.len(),
            partials: self.shops.iter().map(|s| s.partials.len()).sum(),
            conversations: self.shops.iter().map(|s| s.conversations.len()).sum(),
            customers: self.shops.iter().map(|s| s.customers.len()).sum(),
            dedup_ids: self.dedup.len(),
            active_alerts: self.alerts.active().count(),
            alerts_held: self.alerts.all().count(),
        }
    }

    /// Thresholds in force for (agent, shop).
    pub fn thresholds(&self, agent: Option<&AgentId>, shop: &ShopId) -> Thresholds {
        self.settings.thresholds_for(agent, shop)
    }
}

#[cfg(test)]
impl Engine {
    /// Panics unless every index points at a live value: marks and
    /// conversations at live customers, customers' open counts right,
    /// agents' keys their own.
    fn assert_consistent(&self) {
        for (a, info) in (0..).zip(&self.agents) {
            assert_eq!(
                info.key,
                halves(id_key(info.id.as_str())),
                "agent {} keeps its key",
                info.id
            );
            assert_eq!(self.agent_ix.get(&id_key(info.id.as_str())), Some(&a));
        }
        for shop in &self.shops {
            let mut open = Map::<CustIx, u32>::default();
            for (_, c) in shop.conversations.iter() {
                assert!(
                    shop.customers.get(c.customer).is_some(),
                    "conversation of a dead customer"
                );
                assert_eq!(
                    c.customer_key,
                    halves(id_key(shop.customers[c.customer].id.as_str())),
                    "conversation {} keeps its customer's key",
                    c.id
                );
                *open.entry(c.customer).or_default() += 1;
            }
            for (cu, c) in shop.customers.iter() {
                assert_eq!(c.open, open.get(&cu).copied().unwrap_or(0), "open count of {}", c.id);
                assert_eq!(shop.customer_ix.get(id_key(c.id.as_str())), Some(cu));
            }
            let live: Vec<CustIx> = shop.customers.iter().map(|(cu, _)| cu).collect();
            assert_eq!(
                shop.customer_hours.all(),
                live,
                "every live customer listed once by hour"
            );
            let mut marks: Vec<(AgentIx, CustIx)> = (shop.partials.iter())
                .flat_map(|(&a, p)| p.marks.iter().map(move |(cu, _)| (a, cu)))
                .collect();
            marks.sort_unstable();
            assert_eq!(shop.mark_hours.all(), marks, "every mark listed once by hour");
            for (&a, p) in &shop.partials {
                for (cu, m) in p.marks.iter() {
                    assert!(shop.customers.get(cu).is_some(), "a mark names a dead customer slot");
                    if m.held_by != NO_CONVERSATION {
                        let c = shop
                            .conversations
                            .get(m.held_by)
                            .expect("a mark held by a live conversation");
                        assert!(
                            c.holds_mark && c.agent == Some(a) && c.customer == cu,
                            "{} holds the mark",
                            c.id
                        );
                    }
                }
            }
            for (ix, c) in shop.conversations.iter() {
                if c.holds_mark {
                    let a = c.agent.expect("a conversation holding a mark is assigned");
                    let m = shop.partials[&a].marks.get(c.customer).expect("the held mark exists");
                    assert_eq!(m.held_by, ix, "the mark {} holds points back at it", c.id);
                } else {
                    assert_eq!(
                        (c.counted, c.replied),
                        (i64::MIN, i64::MIN),
                        "{} keeps no mark times",
                        c.id
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
