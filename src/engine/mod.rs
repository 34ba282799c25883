//! The pure engine: validated events in (`apply`), time in (`tick`), metrics,
//! live state and alert changes out. No I/O, no clock reads, no threads.
//! State is partitioned by shop; every figure of an agent, team, shop or the
//! desk is a sum of per-(agent, shop) partials.

pub mod alerts;
pub mod day;
pub mod dedup;
pub mod desk;
pub mod window;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// Hash maps of the hot path: foldhash, seeded per process (outputs never
/// depend on iteration order).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use jiff::tz::TimeZone;
use serde::Serialize;

use crate::protocol::{AgentId, AgentStatus, ConversationId, CustomerId, Event, EventKind, ShopId, TeamId};
use alerts::{Alert, AlertBook, AlertChange, Reading, Rule, Severity, Thresholds};
use day::{Calendar, Day};
use dedup::{Dedup, fingerprint};
use window::{CustomerCounts, Mark, MarkKind, Range, Samples, Window, WindowAcc, WindowMetrics};

/// Orders are credited to an agent's message at most this long before, ms.
pub const ATTRIBUTION_MS: i64 = 24 * 3_600_000;
/// Agent messages remembered per customer for order attribution.
pub const RECENT_AGENT_MESSAGES: usize = 8;
/// A conversation with no event for this long is forgotten (its wait dropped), ms.
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
    pub fn apply(&self, base: Thresholds) -> Thresholds {
        Thresholds {
            target_ms: self.target_ms.unwrap_or(base.target_ms),
            norm_ms: self.norm_ms.unwrap_or(base.norm_ms),
            clear_ms: self.clear_ms.unwrap_or(base.clear_ms),
            critical_ms: self.critical_ms.unwrap_or(base.critical_ms),
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

/// Open waits of one scope: start ts → count.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Waits {
    starts: BTreeMap<i64, u32>,
    count: u64,
}

impl Waits {
    fn add(&mut self, start: i64) {
        *self.starts.entry(start).or_insert(0) += 1;
        self.count += 1;
    }
    fn remove(&mut self, start: i64) {
        if let Some(n) = self.starts.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&start);
            }
            self.count -= 1;
        }
    }
    fn oldest(&self) -> Option<i64> {
        self.starts.keys().next().copied()
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Conversation {
    customer: CustomerId,
    agent: Option<AgentId>,
    wait_start: Option<i64>,
    responded: bool,
    last_ts: i64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Customer {
    flagged: bool,
    conversations: Vec<ConversationId>,
    /// Latest non-auto agent messages to this customer: (agent, ts).
    agent_messages: VecDeque<(AgentId, i64)>,
}

/// Latest times a customer counted for, was replied to by, and paid an
/// agent; `i64::MIN` for never.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Marks {
    counted: i64,
    replied: i64,
    paid: i64,
}

impl Default for Marks {
    fn default() -> Self {
        Self {
            counted: i64::MIN,
            replied: i64::MIN,
            paid: i64::MIN,
        }
    }
}

/// One agent's state in one shop.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Partial {
    thresholds: Thresholds,
    /// Listed in `Engine::dirty_partials` since the last `take_dirty`.
    dirty: bool,
    /// The `wait_deadlines` / `slow_deadlines` entries in force.
    wait_deadline: Option<i64>,
    slow_deadline: Option<i64>,
    /// Severity of the active alert per rule (`customer_waiting`, `slow_average`).
    waiting_alert: Option<Severity>,
    slow_alert: Option<Severity>,
    samples: Samples,
    marks: Map<CustomerId, Marks>,
    open_conversations: u64,
    waits: Waits,
}

impl Partial {
    fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            dirty: false,
            wait_deadline: None,
            slow_deadline: None,
            waiting_alert: None,
            slow_alert: None,
            samples: Samples::default(),
            marks: Map::default(),
            open_conversations: 0,
            waits: Waits::default(),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Shop {
    /// Listed in `Engine::dirty_shop_list` since the last `take_dirty`.
    dirty: bool,
    conversations: Map<ConversationId, Conversation>,
    customers: Map<CustomerId, Customer>,
    partials: Map<AgentId, Partial>,
    queue: Waits,
    /// Shop-level marks: silent orders.
    samples: Samples,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct AgentInfo {
    status: Option<AgentStatus>,
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
}

/// The engine of one partition (a set of shops).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    #[serde(skip, default = "default_settings")]
    settings: Arc<Settings>,
    #[serde(skip, default = "default_calendar")]
    calendar: Calendar,
    now: i64,
    max_ts: Option<i64>,
    dedup: Dedup,
    shops: Map<ShopId, Shop>,
    agents: Map<AgentId, AgentInfo>,
    alerts: AlertBook,
    /// (deadline, shop, agent): re-check `customer_waiting` at the deadline.
    wait_deadlines: BTreeSet<(i64, ShopId, AgentId)>,
    /// (deadline, shop, agent): re-check `slow_average` when a sample leaves the 15m window.
    slow_deadlines: BTreeSet<(i64, ShopId, AgentId)>,
    /// Partials whose waits changed during the current `apply`.
    touched: Vec<(ShopId, AgentId)>,
    dirty_agents: HashSet<AgentId>,
    dirty_partials: Vec<(ShopId, AgentId)>,
    dirty_shop_list: Vec<ShopId>,
    last_maintenance_h: i64,
    applied: u64,
}

/// Takes the earliest deadline entry if it is due at `now`.
fn pop_due(deadlines: &mut BTreeSet<(i64, ShopId, AgentId)>, now: i64) -> Option<(i64, ShopId, AgentId)> {
    if deadlines.first().is_some_and(|(d, _, _)| *d <= now) {
        deadlines.pop_first()
    } else {
        None
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
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("engine state serializes")
    }

    /// An engine restored from `snapshot` bytes, under `settings` (thresholds
    /// are re-resolved, so a changed config applies).
    pub fn restore(settings: Arc<Settings>, bytes: &[u8]) -> Result<Self, postcard::Error> {
        let mut e: Engine = postcard::from_bytes(bytes)?;
        e.calendar = Calendar::new(settings.timezone.clone());
        for (shop, s) in &mut e.shops {
            for (agent, p) in &mut s.partials {
                p.thresholds = settings.thresholds_for(Some(agent), shop);
            }
        }
        e.settings = settings;
        Ok(e)
    }

    /// An empty engine.
    pub fn new(settings: Arc<Settings>) -> Self {
        Self {
            calendar: Calendar::new(settings.timezone.clone()),
            settings,
            now: 0,
            max_ts: None,
            dedup: Dedup::default(),
            shops: Map::default(),
            agents: Map::default(),
            alerts: AlertBook::default(),
            wait_deadlines: BTreeSet::new(),
            slow_deadlines: BTreeSet::new(),
            touched: Vec::new(),
            dirty_agents: HashSet::new(),
            dirty_partials: Vec::new(),
            dirty_shop_list: Vec::new(),
            last_maintenance_h: i64::MIN,
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
        if self.settings.clock == Clock::Event {
            self.tick(event.ts);
        }
        if !self
            .dedup
            .insert(fingerprint(event.shop.as_str(), event.id.as_str()), event.ts)
        {
            return Applied::Duplicate;
        }
        self.applied += 1;
        self.max_ts = Some(self.max_ts.map_or(event.ts, |m| m.max(event.ts)));
        let ts = event.ts;
        let shop_id = &event.shop;
        let shop = self.shops.entry(shop_id.clone()).or_default();
        if !shop.dirty {
            shop.dirty = true;
            self.dirty_shop_list.push(shop_id.clone());
        }
        match &event.kind {
            EventKind::Status { agent, status } => {
                self.agent(agent).status = Some(*status);
                self.dirty_agents.insert(agent.clone());
            }
            EventKind::CustomerMessage {
                conversation,
                customer,
                agent,
            } => self.customer_message(shop_id, conversation, customer, agent.as_ref(), ts),
            EventKind::AgentMessage {
                conversation,
                customer,
                agent,
                auto,
            } => self.agent_message(shop_id, conversation, customer, agent, *auto, ts),
            EventKind::Assign {
                conversation,
                customer,
                agent,
                from_agent,
            } => {
                self.open_conversation(shop_id, conversation, customer, ts);
                self.assign(shop_id, conversation, agent, ts);
                if let Some(from) = from_agent {
                    self.record(shop_id, Some(agent), MarkKind::TransferIn, 0, ts);
                    self.record(shop_id, Some(from), MarkKind::TransferOut, 0, ts);
                }
            }
            EventKind::Close { conversation } => self.close(shop_id, conversation),
            EventKind::Flag { customer, .. } => self.flag(shop_id, customer),
            EventKind::OrderPaid { customer, amount, .. } => self.order(shop_id, customer, *amount, ts),
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
        touched.sort();
        touched.dedup();
        for (shop, agent) in touched.drain(..) {
            self.check_waiting(&shop, &agent);
        }
        self.touched = touched;
    }

    /// Moves time forward to `now` (never back) and runs the time-driven
    /// rules: waits crossing thresholds, 15m averages sliding, clean-up.
    pub fn tick(&mut self, now: i64) {
        if now <= self.now {
            return;
        }
        self.now = now;
        while let Some((deadline, shop, agent)) = pop_due(&mut self.wait_deadlines, now) {
            if let Some(p) = self.shops.get_mut(&shop).and_then(|s| s.partials.get_mut(&agent))
                && p.wait_deadline == Some(deadline)
            {
                p.wait_deadline = None;
                self.check_waiting(&shop, &agent);
            }
        }
        while let Some((deadline, shop, agent)) = pop_due(&mut self.slow_deadlines, now) {
            if let Some(p) = self.shops.get_mut(&shop).and_then(|s| s.partials.get_mut(&agent))
                && p.slow_deadline == Some(deadline)
            {
                p.slow_deadline = None;
                self.check_slow(&shop, &agent);
            }
        }
        let hour = now.div_euclid(window::HOUR_MS);
        if hour != self.last_maintenance_h {
            self.last_maintenance_h = hour;
            self.maintain();
        }
    }

    fn agent(&mut self, agent: &AgentId) -> &mut AgentInfo {
        self.agents.entry(agent.clone()).or_default()
    }

    fn partial(&mut self, shop: &ShopId, agent: &AgentId) -> &mut Partial {
        let Self {
            shops,
            agents,
            settings,
            dirty_partials,
            ..
        } = self;
        let p = shops
            .entry(shop.clone())
            .or_default()
            .partials
            .entry(agent.clone())
            .or_insert_with(|| {
                agents.entry(agent.clone()).or_default().shops.insert(shop.clone());
                Partial::new(settings.thresholds_for(Some(agent), shop))
            });
        if !p.dirty {
            p.dirty = true;
            dirty_partials.push((shop.clone(), agent.clone()));
        }
        p
    }

    fn open_conversation(&mut self, shop: &ShopId, conv: &ConversationId, customer: &CustomerId, ts: i64) {
        let s = self.shops.entry(shop.clone()).or_default();
        let c = s.conversations.entry(conv.clone()).or_insert_with(|| Conversation {
            customer: customer.clone(),
            agent: None,
            wait_start: None,
            responded: false,
            last_ts: ts,
        });
        c.last_ts = c.last_ts.max(ts);
        if c.customer != *customer {
            // The sender moved the conversation to another customer id.
            let old = std::mem::replace(&mut c.customer, customer.clone());
            if let Some(oc) = s.customers.get_mut(&old) {
                oc.conversations.retain(|x| x != conv);
            }
        }
        let cust = s.customers.entry(customer.clone()).or_default();
        if !cust.conversations.contains(conv) {
            cust.conversations.push(conv.clone());
        }
    }

    fn customer_message(
        &mut self,
        shop: &ShopId,
        conv: &ConversationId,
        customer: &CustomerId,
        agent: Option<&AgentId>,
        ts: i64,
    ) {
        let flagged = self
            .shops
            .get(shop)
            .and_then(|s| s.customers.get(customer))
            .is_some_and(|c| c.flagged);
        if flagged {
            return; // a flagged customer's messages are ignored
        }
        self.open_conversation(shop, conv, customer, ts);
        if let Some(agent) = agent {
            self.assign(shop, conv, agent, ts);
        }
        let s = self.shops.get_mut(shop).expect("opened above");
        let c = s.conversations.get_mut(conv).expect("opened above");
        let assigned = c.agent.clone();
        if c.wait_start.is_none() {
            c.wait_start = Some(ts);
            match &assigned {
                None => s.queue.add(ts),
                Some(a) => {
                    s.partials
                        .get_mut(a)
                        .expect("assigned agents have partials")
                        .waits
                        .add(ts);
                }
            }
        }
        if let Some(a) = assigned {
            let p = self.partial(shop, &a);
            let m = p.marks.entry(customer.clone()).or_default();
            m.counted = m.counted.max(ts);
            self.touched.push((shop.clone(), a));
        }
    }

    fn agent_message(
        &mut self,
        shop: &ShopId,
        conv: &ConversationId,
        customer: &CustomerId,
        agent: &AgentId,
        auto: bool,
        ts: i64,
    ) {
        self.open_conversation(shop, conv, customer, ts);
        self.assign(shop, conv, agent, ts);
        if auto {
            self.record(shop, Some(agent), MarkKind::AutoReply, 0, ts);
            return;
        }
        let s = self.shops.get_mut(shop).expect("opened above");
        let cust = s.customers.get_mut(customer).expect("opened above");
        cust.agent_messages.push_back((agent.clone(), ts));
        if cust.agent_messages.len() > RECENT_AGENT_MESSAGES {
            cust.agent_messages.pop_front();
        }
        let c = s.conversations.get_mut(conv).expect("opened above");
        let answered = c.wait_start.take().map(|start| {
            let first = !c.responded;
            c.responded = true;
            (start, first)
        });
        let p = self.partial(shop, agent);
        let m = p.marks.entry(customer.clone()).or_default();
        m.replied = m.replied.max(ts);
        if let Some((start, first)) = answered {
            p.waits.remove(start);
            let ms = (ts - start).max(0) as u64;
            let slow = ms > p.thresholds.norm_ms;
            self.record(shop, Some(agent), MarkKind::Response { first, slow }, ms, ts);
            self.touched.push((shop.clone(), agent.clone()));
            self.check_slow(shop, agent);
        }
    }

    /// Assigns `conv` to `agent`, moving its open wait along.
    fn assign(&mut self, shop: &ShopId, conv: &ConversationId, agent: &AgentId, ts: i64) {
        let s = self.shops.get_mut(shop).expect("conversation opened first");
        let c = s.conversations.get_mut(conv).expect("conversation opened first");
        if c.agent.as_ref() == Some(agent) {
            return;
        }
        let old = c.agent.replace(agent.clone());
        let wait = c.wait_start;
        let customer = c.customer.clone();
        match &old {
            Some(o) => {
                let p = s.partials.get_mut(o).expect("assigned agents have partials");
                p.open_conversations -= 1;
                if let Some(start) = wait {
                    p.waits.remove(start);
                }
            }
            None => {
                if let Some(start) = wait {
                    s.queue.remove(start);
                }
            }
        }
        let p = self.partial(shop, agent);
        p.open_conversations += 1;
        if let Some(start) = wait {
            p.waits.add(start);
            let m = p.marks.entry(customer).or_default();
            m.counted = m.counted.max(ts);
        }
        if let Some(o) = old {
            self.dirty_agents.insert(o.clone());
            self.touched.push((shop.clone(), o));
        }
        self.touched.push((shop.clone(), agent.clone()));
    }

    fn close(&mut self, shop: &ShopId, conv: &ConversationId) {
        let Some(s) = self.shops.get_mut(shop) else { return };
        let Some(c) = s.conversations.remove(conv) else { return };
        if let Some(cust) = s.customers.get_mut(&c.customer) {
            cust.conversations.retain(|x| x != conv);
        }
        self.drop_conversation(shop, c);
    }

    /// Removes a conversation's open wait and assignment (already unlinked).
    fn drop_conversation(&mut self, shop: &ShopId, c: Conversation) {
        let s = self.shops.get_mut(shop).expect("caller holds the shop");
        match &c.agent {
            Some(a) => {
                let p = s.partials.get_mut(a).expect("assigned agents have partials");
                p.open_conversations -= 1;
                if let Some(start) = c.wait_start {
                    p.waits.remove(start);
                }
                let a = a.clone();
                self.dirty_agents.insert(a.clone());
                self.touched.push((shop.clone(), a));
            }
            None => {
                if let Some(start) = c.wait_start {
                    s.queue.remove(start);
                }
            }
        }
    }

    fn flag(&mut self, shop: &ShopId, customer: &CustomerId) {
        let s = self.shops.entry(shop.clone()).or_default();
        let cust = s.customers.entry(customer.clone()).or_default();
        cust.flagged = true;
        let convs = cust.conversations.clone();
        for conv in convs {
            let s = self.shops.get_mut(shop).expect("present");
            let Some(c) = s.conversations.get_mut(&conv) else {
                continue;
            };
            let Some(start) = c.wait_start.take() else { continue };
            match c.agent.clone() {
                Some(a) => {
                    s.partials
                        .get_mut(&a)
                        .expect("assigned agents have partials")
                        .waits
                        .remove(start);
                    self.dirty_agents.insert(a.clone());
                    self.touched.push((shop.clone(), a));
                }
                None => s.queue.remove(start),
            }
        }
        // The customer leaves `customers` of every agent in the shop.
        let agents: Vec<AgentId> = self.shops[shop]
            .partials
            .iter()
            .filter(|(_, p)| p.marks.contains_key(customer))
            .map(|(a, _)| a.clone())
            .collect();
        self.dirty_agents.extend(agents);
    }

    fn order(&mut self, shop: &ShopId, customer: &CustomerId, amount: u64, ts: i64) {
        let credited = self
            .shops
            .get(shop)
            .and_then(|s| s.customers.get(customer))
            .and_then(|c| {
                c.agent_messages
                    .iter()
                    .filter(|(_, at)| *at <= ts && *at >= ts - ATTRIBUTION_MS)
                    .max_by_key(|(_, at)| *at)
                    .map(|(a, _)| a.clone())
            });
        match credited {
            Some(agent) => {
                self.record(shop, Some(&agent), MarkKind::Order, amount, ts);
                let m = self.partial(shop, &agent).marks.entry(customer.clone()).or_default();
                m.paid = m.paid.max(ts);
            }
            None => self.record(shop, None, MarkKind::SilentOrder, amount, ts),
        }
    }

    /// Records a mark for (agent, shop), or for the shop when `agent` is `None`.
    fn record(&mut self, shop: &ShopId, agent: Option<&AgentId>, kind: MarkKind, value: u64, ts: i64) {
        let day = self.calendar.day_of(ts);
        let now = self.now.max(ts);
        let mark = Mark { ts, kind, value };
        match agent {
            Some(a) => self.partial(shop, a).samples.record(mark, day, now),
            None => self
                .shops
                .entry(shop.clone())
                .or_default()
                .samples
                .record(mark, day, now),
        }
    }

    /// Re-evaluates `customer_waiting` for (shop, agent) and schedules the next check.
    fn check_waiting(&mut self, shop: &ShopId, agent: &AgentId) {
        let now = self.now;
        let Some(p) = self.shops.get_mut(shop).and_then(|s| s.partials.get_mut(agent)) else {
            return;
        };
        let t = p.thresholds;
        let oldest = p.waits.oldest();
        let age = oldest.map_or(0, |s| now.saturating_sub(s).max(0) as u64);
        let reading = Reading::customer_waiting(age, &t);
        if reading.raise || p.waiting_alert.is_some() {
            let severity = self
                .alerts
                .observe(shop, agent, Rule::CustomerWaiting, reading, &t, now);
            self.shops
                .get_mut(shop)
                .expect("found above")
                .partials
                .get_mut(agent)
                .expect("found above")
                .waiting_alert = severity;
        }
        let severity = self.shops[shop].partials[agent].waiting_alert;
        let next = oldest.and_then(|start| match severity {
            None => Some(start.saturating_add(t.norm_ms as i64) + 1),
            Some(Severity::Warning) => Some(start.saturating_add(t.critical_ms as i64) + 1),
            Some(Severity::Critical) => None,
        });
        self.schedule_wait(shop, agent, next.filter(|d| *d > now));
    }

    /// Keeps one live `wait_deadlines` entry per partial; superseded entries
    /// are skipped when they come due.
    fn schedule_wait(&mut self, shop: &ShopId, agent: &AgentId, next: Option<i64>) {
        let Some(p) = self.shops.get_mut(shop).and_then(|s| s.partials.get_mut(agent)) else {
            return;
        };
        if p.wait_deadline != next {
            p.wait_deadline = next;
            if let Some(d) = next {
                self.wait_deadlines.insert((d, shop.clone(), agent.clone()));
            }
        }
    }

    /// Re-evaluates `slow_average` for (shop, agent) over the 15m window.
    fn check_slow(&mut self, shop: &ShopId, agent: &AgentId) {
        let now = self.now;
        let Some(p) = self.shops.get_mut(shop).and_then(|s| s.partials.get_mut(agent)) else {
            return;
        };
        let t = p.thresholds;
        let w = Window::Min15.rolling_ms().expect("rolling");
        let lo = now.saturating_sub(w) + 1;
        let (count, sum, oldest) = p.samples.responses_since(lo);
        let reading = Reading::slow_average(count, sum, &t);
        if reading.raise || p.slow_alert.is_some() {
            let severity = self.alerts.observe(shop, agent, Rule::SlowAverage, reading, &t, now);
            self.shops
                .get_mut(shop)
                .expect("found above")
                .partials
                .get_mut(agent)
                .expect("found above")
                .slow_alert = severity;
        }
        // The average next changes when the oldest sample leaves the window.
        let next = oldest.map(|o| o + w);
        let p = self
            .shops
            .get_mut(shop)
            .and_then(|s| s.partials.get_mut(agent))
            .expect("looked up above");
        if p.slow_deadline != next {
            p.slow_deadline = next;
            if let Some(d) = next {
                self.slow_deadlines.insert((d, shop.clone(), agent.clone()));
            }
        }
    }

    /// Hourly clean-up: idle conversations, old marks, old alerts.
    fn maintain(&mut self) {
        let now = self.now;
        for shop in self.shop_ids() {
            let s = self.shops.get_mut(&shop).expect("listed above");
            let mut idle: Vec<ConversationId> = s
                .conversations
                .iter()
                .filter(|(_, c)| c.last_ts <= now - CONVERSATION_IDLE_MS)
                .map(|(id, _)| id.clone())
                .collect();
            idle.sort();
            for conv in idle {
                self.close(&shop, &conv);
            }
            let s = self.shops.get_mut(&shop).expect("listed above");
            for p in s.partials.values_mut() {
                p.marks
                    .retain(|_, m| m.counted.max(m.replied).max(m.paid) > now - MARK_RETENTION_MS);
                p.samples.prune(now);
            }
            s.customers.retain(|_, c| {
                c.flagged
                    || !c.conversations.is_empty()
                    || c.agent_messages
                        .back()
                        .is_some_and(|(_, at)| *at > now - ATTRIBUTION_MS)
            });
            s.samples.prune(now);
        }
        self.settle();
        self.alerts.prune(now);
    }

    // ---- queries ----

    /// The day containing `now`.
    pub fn today(&self) -> Day {
        self.calendar.peek(self.now.max(0))
    }

    fn partial_acc(&self, shop_id: &ShopId, s: &Shop, p: &Partial, window: Window, range: Range, acc: &mut WindowAcc) {
        let _ = shop_id;
        p.samples.add_to(acc, window, range, self.today());
        let mut counts = CustomerCounts::default();
        for (customer, m) in &p.marks {
            if range.contains(m.paid) {
                counts.buyers += 1;
            }
            if !range.contains(m.counted) || s.customers.get(customer).is_some_and(|c| c.flagged) {
                continue;
            }
            counts.customers += 1;
            if range.contains(m.replied) {
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

    /// An agent's window total and live state over its shops in this
    /// partition (only `shop` when given); `None` if the agent is unknown here.
    pub fn agent_acc(&self, agent: &AgentId, window: Window, shop: Option<&ShopId>) -> Option<(WindowAcc, LiveAcc)> {
        let info = self.agents.get(agent)?;
        let range = self.range(window);
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc {
            status: info.status,
            ..LiveAcc::default()
        };
        for shop_id in info.shops.iter().filter(|s| shop.is_none_or(|f| f == *s)) {
            let Some(s) = self.shops.get(shop_id) else { continue };
            let Some(p) = s.partials.get(agent) else { continue };
            self.partial_acc(shop_id, s, p, window, range, &mut acc);
            live.merge(&Self::partial_live(p));
        }
        Some((acc, live))
    }

    /// A shop's window total (sum of its partials plus silent orders) and live state.
    pub fn shop_acc(&self, shop: &ShopId, window: Window) -> Option<(WindowAcc, LiveAcc)> {
        let s = self.shops.get(shop)?;
        let range = self.range(window);
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc::default();
        for p in s.partials.values() {
            self.partial_acc(shop, s, p, window, range, &mut acc);
            live.merge(&Self::partial_live(p));
        }
        s.samples.add_to(&mut acc, window, range, self.today());
        live.queued = s.queue.count;
        live.oldest_queued_start = s.queue.oldest();
        Some((acc, live))
    }

    /// Agents known to this partition, sorted.
    pub fn agent_ids(&self) -> Vec<AgentId> {
        let mut v: Vec<_> = self.agents.keys().cloned().collect();
        v.sort();
        v
    }

    /// Shops of this partition, sorted.
    pub fn shop_ids(&self) -> Vec<ShopId> {
        let mut v: Vec<_> = self.shops.keys().cloned().collect();
        v.sort();
        v
    }

    /// Shops an agent has state in.
    pub fn shops_of(&self, agent: &AgentId) -> Vec<ShopId> {
        self.agents
            .get(agent)
            .map(|a| a.shops.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The full stats object of one agent (single-partition use: replay, tests).
    pub fn agent_stats(&self, agent: &AgentId, window: Window, shop: Option<&ShopId>) -> Option<AgentStats> {
        if let Some(s) = shop
            && !self.agents.get(agent)?.shops.contains(s)
        {
            return None;
        }
        let (acc, live) = self.agent_acc(agent, window, shop)?;
        Some(AgentStats {
            agent: agent.clone(),
            window,
            now: self.now,
            shop: shop.cloned(),
            shops: self.shops_of(agent),
            teams: self.settings.teams_of(agent),
            metrics: acc.metrics(),
            live: live.state(self.now),
        })
    }

    /// Open waits of an agent (or the queue of `shop` when `agent` is `None`), oldest first.
    pub fn open_waits(&self, agent: Option<&AgentId>, shop: Option<&ShopId>) -> Vec<OpenWait> {
        let mut out = Vec::new();
        for (shop_id, s) in &self.shops {
            if shop.is_some_and(|f| f != shop_id) {
                continue;
            }
            for (conv, c) in &s.conversations {
                if let Some(since) = c.wait_start
                    && c.agent.as_ref() == agent
                {
                    out.push(OpenWait {
                        shop: shop_id.clone(),
                        conversation: conv.clone(),
                        customer: c.customer.clone(),
                        agent: c.agent.clone(),
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
        let Some(info) = self.agents.get(agent) else {
            return Vec::new();
        };
        let lo = self.now.saturating_sub(window::HOUR_MS) + 1;
        let mut marks: Vec<Mark> = info
            .shops
            .iter()
            .filter_map(|s| self.shops.get(s)?.partials.get(agent))
            .flat_map(|p| p.samples.recent().filter(|m| m.ts >= lo).copied())
            .collect();
        marks.sort_by_key(|m| m.ts);
        marks
    }

    /// Whether the agent has been seen here.
    pub fn knows(&self, agent: &AgentId) -> bool {
        self.agents.contains_key(agent)
    }

    /// Rolling marks of (agent, shop) over the last hour, oldest first.
    pub fn agent_recent_marks_in(&self, agent: &AgentId, shop: &ShopId) -> Vec<Mark> {
        let lo = self.now.saturating_sub(window::HOUR_MS) + 1;
        self.shops
            .get(shop)
            .and_then(|s| s.partials.get(agent))
            .map(|p| p.samples.recent().filter(|m| m.ts >= lo).copied().collect())
            .unwrap_or_default()
    }

    /// Today's response distribution of (agent, shop).
    pub fn agent_day_dist(&self, agent: &AgentId, shop: &ShopId) -> Option<&window::Dist> {
        let today = self.today();
        self.shops
            .get(shop)?
            .partials
            .get(agent)?
            .samples
            .day_dist(today.start_ms)
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

    /// Agents and shops changed since the last call.
    pub fn take_dirty(&mut self) -> (HashSet<AgentId>, HashSet<ShopId>) {
        (
            {
                let mut agents = std::mem::take(&mut self.dirty_agents);
                for (shop, agent) in self.dirty_partials.drain(..) {
                    if let Some(p) = self.shops.get_mut(&shop).and_then(|s| s.partials.get_mut(&agent)) {
                        p.dirty = false;
                    }
                    agents.insert(agent);
                }
                agents
            },
            self.dirty_shop_list
                .drain(..)
                .inspect(|shop| {
                    if let Some(s) = self.shops.get_mut(shop) {
                        s.dirty = false;
                    }
                })
                .collect(),
        )
    }

    /// Whether (shop, id) was accepted before.
    pub fn is_duplicate(&self, shop: &ShopId, id: &str) -> bool {
        self.dedup.contains(fingerprint(shop.as_str(), id))
    }

    /// Counts of what the engine holds.
    pub fn census(&self) -> Census {
        Census {
            shops: self.shops.len(),
            agents: self.agents.len(),
            partials: self.shops.values().map(|s| s.partials.len()).sum(),
            conversations: self.shops.values().map(|s| s.conversations.len()).sum(),
            customers: self.shops.values().map(|s| s.customers.len()).sum(),
            dedup_ids: self.dedup.len(),
            active_alerts: self.alerts.active().count(),
        }
    }

    /// Thresholds in force for (agent, shop).
    pub fn thresholds(&self, agent: Option<&AgentId>, shop: &ShopId) -> Thresholds {
        self.settings.thresholds_for(agent, shop)
    }
}

#[cfg(test)]
mod tests;
