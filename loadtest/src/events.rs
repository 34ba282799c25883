//! Event generator: a discrete-event simulation of the [`World`] in event
//! time. Scheduled actions come out of one heap in `ts` order as typed
//! [`Event`]s; [`Names::write_json`] serializes them to NDJSON by hand (fast).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::rng::Rng;
use crate::scenario::{AgentKind, World};

/// "No agent" in [`Event::agent`] / [`Event::from_agent`].
pub const NO_AGENT: u32 = u32::MAX;

/// Event type (PROTOCOL §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `chat.customer`
    Customer,
    /// `chat.agent`
    Agent,
    /// `conversation.assign`
    Assign,
    /// `conversation.close`
    Close,
    /// `agent.status`
    Status,
    /// `customer.flag`
    Flag,
    /// `order.paid`
    Order,
}

impl Kind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Customer => "chat.customer",
            Kind::Agent => "chat.agent",
            Kind::Assign => "conversation.assign",
            Kind::Close => "conversation.close",
            Kind::Status => "agent.status",
            Kind::Flag => "customer.flag",
            Kind::Order => "order.paid",
        }
    }
}

/// Desk status values.
pub const STATUSES: [&str; 4] = ["online", "busy", "away", "offline"];
/// Flag reasons.
pub const REASONS: [&str; 2] = ["spam", "ad"];

/// One generated event; ids are numbers that [`Names`] turns into strings.
/// `customer` is set on every customer-bound event (also `conversation.close`)
/// so a sender can route all of one customer's events over one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event number → `"e<n>"`, unique across shops.
    pub id: u64,
    /// Event time, ms since the epoch.
    pub ts: i64,
    /// Type.
    pub kind: Kind,
    /// Shop index.
    pub shop: u32,
    /// Conversation number → `"v<n>"` (0 when not applicable).
    pub conv: u64,
    /// Customer number → `"c<n>"` (0 for `agent.status`).
    pub customer: u64,
    /// Agent index or [`NO_AGENT`].
    pub agent: u32,
    /// Transfer source or [`NO_AGENT`].
    pub from_agent: u32,
    /// `auto` of `chat.agent`.
    pub auto: bool,
    /// Index into [`STATUSES`] / [`REASONS`].
    pub code: u8,
    /// Order number → `"o<n>"`.
    pub order: u64,
    /// Order amount in fen.
    pub amount: u64,
    /// True on the second copy of a deliberately repeated event.
    pub dup: bool,
}

impl Event {
    /// Routing key: all events of one (shop, customer) share it, so per
    /// conversation order survives being spread over several connections.
    pub fn route(&self) -> u64 {
        let k = if self.kind == Kind::Status {
            0xA6E0_0000_0000_0000 ^ self.agent as u64
        } else {
            ((self.shop as u64) << 40) ^ self.customer
        };
        let mut s = k;
        crate::rng::splitmix64(&mut s)
    }
}

/// Turns numeric ids into wire strings.
#[derive(Debug, Clone)]
pub struct Names {
    /// Shop names by index.
    pub shops: Vec<String>,
    /// Agent names by index.
    pub agents: Vec<String>,
    /// Prepended to every event id (lets two runs share one server).
    pub id_prefix: String,
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl Names {
    /// Names of a world.
    pub fn of(world: &World) -> Names {
        Names {
            shops: world.shop_names.clone(),
            agents: world.agent_names.clone(),
            id_prefix: String::new(),
        }
    }

    /// The wire id of an event.
    pub fn event_id(&self, ev: &Event) -> String {
        format!("{}e{}", self.id_prefix, ev.id)
    }

    /// Appends `ev` as one JSON object (no newline). Names are generated
    /// ASCII without quotes or backslashes, so no escaping is needed.
    pub fn write_json(&self, ev: &Event, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.id_prefix.as_bytes());
        out.push(b'e');
        push_u64(out, ev.id);
        out.extend_from_slice(b"\",\"type\":\"");
        out.extend_from_slice(ev.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"ts\":");
        push_u64(out, ev.ts.max(0) as u64);
        out.extend_from_slice(b",\"shop\":\"");
        out.extend_from_slice(self.shops[ev.shop as usize].as_bytes());
        out.push(b'"');
        let conv = |out: &mut Vec<u8>| {
            out.extend_from_slice(b",\"conversation\":\"v");
            push_u64(out, ev.conv);
            out.push(b'"');
        };
        let customer = |out: &mut Vec<u8>| {
            out.extend_from_slice(b",\"customer\":\"c");
            push_u64(out, ev.customer);
            out.push(b'"');
        };
        let agent = |out: &mut Vec<u8>, key: &[u8], a: u32| {
            out.extend_from_slice(key);
            out.extend_from_slice(self.agents[a as usize].as_bytes());
            out.push(b'"');
        };
        match ev.kind {
            Kind::Customer => {
                conv(out);
                customer(out);
                if ev.agent != NO_AGENT {
                    agent(out, b",\"agent\":\"", ev.agent);
                }
            }
            Kind::Agent => {
                conv(out);
                customer(out);
                agent(out, b",\"agent\":\"", ev.agent);
                if ev.auto {
                    out.extend_from_slice(b",\"auto\":true");
                }
            }
            Kind::Assign => {
                conv(out);
                customer(out);
                agent(out, b",\"agent\":\"", ev.agent);
                if ev.from_agent != NO_AGENT {
                    agent(out, b",\"from_agent\":\"", ev.from_agent);
                }
            }
            Kind::Close => conv(out),
            Kind::Status => {
                agent(out, b",\"agent\":\"", ev.agent);
                out.extend_from_slice(b",\"status\":\"");
                out.extend_from_slice(STATUSES[ev.code as usize].as_bytes());
                out.push(b'"');
            }
            Kind::Flag => {
                customer(out);
                out.extend_from_slice(b",\"reason\":\"");
                out.extend_from_slice(REASONS[ev.code as usize].as_bytes());
                out.push(b'"');
            }
            Kind::Order => {
                out.extend_from_slice(b",\"order\":\"o");
                push_u64(out, ev.order);
                out.push(b'"');
                customer(out);
                out.extend_from_slice(b",\"amount\":");
                push_u64(out, ev.amount);
            }
        }
        out.push(b'}');
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Arrive(u32),
    SilentOrder(u32),
    StatusChange(u32),
    Step(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    ts: i64,
    seq: u64,
    action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepKind {
    CustomerMsg,
    Assign { agent: u32, from: u32 },
    AutoReply,
    Reply { agent: u32 },
    Flag,
    Close,
    Order,
    NextRound,
}

#[derive(Debug, Clone, Copy)]
struct Step {
    ts: i64,
    kind: StepKind,
}

#[derive(Debug, Clone)]
struct Conv {
    shop: u32,
    conv: u64,
    customer: u64,
    agent: u32,
    spam: bool,
    rounds_left: u32,
    steps: Vec<Step>,
    pos: usize,
}

/// Counters of what the generator produced, for reports and tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenStats {
    /// Events returned (including duplicates).
    pub events: u64,
    /// Conversations started.
    pub conversations: u64,
    /// Deliberate duplicates.
    pub duplicates: u64,
    /// Spam customers flagged.
    pub flagged: u64,
    /// Transfers.
    pub transfers: u64,
    /// Orders after a chat.
    pub orders: u64,
    /// Orders with no chat.
    pub silent_orders: u64,
}

/// The simulation. `next()` yields events in non-decreasing `ts` order.
#[derive(Debug)]
pub struct Generator {
    world: Arc<World>,
    rng: Rng,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    convs: Vec<Conv>,
    free: Vec<u32>,
    next_event: u64,
    next_customer: u64,
    next_conv: u64,
    next_order: u64,
    end_ts: i64,
    ts0: i64,
    arrival_scale: f64,
    dup: Option<Event>,
    /// What has been produced so far.
    pub stats: GenStats,
}

impl Generator {
    /// A generator whose event times start at `ts0` (the scenario clock is
    /// shifted there) and stop before `ts0 + span_ms`. `arrival_scale`
    /// multiplies every arrival rate (used by `--rate`).
    pub fn new(world: Arc<World>, seed: u64, ts0: i64, span_ms: i64, arrival_scale: f64) -> Generator {
        let mut g = Generator {
            rng: Rng::new(seed),
            heap: BinaryHeap::new(),
            seq: 0,
            convs: Vec::new(),
            free: Vec::new(),
            next_event: 1,
            next_customer: 1,
            next_conv: 1,
            next_order: 1,
            end_ts: ts0 + span_ms,
            ts0,
            arrival_scale,
            dup: None,
            stats: GenStats::default(),
            world,
        };
        let n_agents = g.world.agent_names.len() as u32;
        for a in 0..n_agents {
            // Everybody logs in during the first second.
            let t = ts0 + (a as i64 * 997) % 1000;
            g.push(t, Action::StatusChange(a));
        }
        for s in 0..g.world.shop_names.len() as u32 {
            let t = g.next_arrival(g.world.scenario.traffic.conversations_per_shop_per_hour, s, ts0);
            g.push(t, Action::Arrive(s));
            let t = g.next_arrival(g.world.scenario.orders.silent_orders_per_shop_per_hour, s, ts0);
            g.push(t, Action::SilentOrder(s));
        }
        g
    }

    /// The world being simulated.
    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    fn push(&mut self, ts: i64, action: Action) {
        self.seq += 1;
        self.heap.push(Reverse(Pending {
            ts,
            seq: self.seq,
            action,
        }));
    }

    /// Scenario-clock time for a generated time (they differ in wall mode).
    fn scenario_ts(&self, ts: i64) -> i64 {
        ts - self.ts0 + self.world.start_ts
    }

    fn rate_per_ms(&self, per_hour: f64, shop: u32, ts: i64) -> f64 {
        let st = self.scenario_ts(ts);
        per_hour
            * self.world.shop_weight[shop as usize]
            * self.world.profile(st)
            * self.world.spike(st)
            * self.arrival_scale
            / 3_600_000.0
    }

    /// Next arrival of a non-homogeneous Poisson process after `t`: draws
    /// Exp(1) and integrates the rate in 5 s steps until it is used up, so
    /// low rates stay exact and the spike is never stepped over.
    fn next_arrival(&mut self, per_hour: f64, shop: u32, t: i64) -> i64 {
        const STEP: i64 = 5_000;
        let mut need = self.rng.exp(1.0);
        let mut at = t;
        while at < self.end_ts {
            let rate = self.rate_per_ms(per_hour, shop, at);
            let mass = rate * STEP as f64;
            if mass >= need {
                return at + ((need / rate) as i64).max(1);
            }
            need -= mass;
            at += STEP;
        }
        self.end_ts
    }

    fn new_event(&mut self, ts: i64, kind: Kind, shop: u32) -> Event {
        let id = self.next_event;
        self.next_event += 1;
        Event {
            id,
            ts,
            kind,
            shop,
            conv: 0,
            customer: 0,
            agent: NO_AGENT,
            from_agent: NO_AGENT,
            auto: false,
            code: 0,
            order: 0,
            amount: 0,
            dup: false,
        }
    }

    fn response_ms(&mut self, agent: u32, ts: i64) -> i64 {
        let a = &self.world.scenario.agents;
        let slow = match self.world.agent_kind[agent as usize] {
            AgentKind::Normal => false,
            AgentKind::Slow => true,
            AgentKind::Drifting => {
                let since = self.scenario_ts(ts) - self.world.start_ts - a.drift_start.0;
                since > 0 && self.rng.f64() < since as f64 / a.drift_ramp.0.max(1) as f64
            }
        };
        if slow {
            (self.rng.lognormal(a.slow_median_ms, a.slow_sigma) as i64).clamp(a.slow_min_ms, a.slow_max_ms)
        } else {
            (self.rng.lognormal(a.normal_median_ms, a.normal_sigma) as i64).clamp(500, a.normal_max_ms)
        }
    }

    fn pick_agent(&mut self, shop: u32, not: u32) -> u32 {
        let agents = &self.world.shop_agents[shop as usize];
        loop {
            let a = agents[self.rng.below(agents.len() as u64) as usize];
            if a != not || agents.len() == 1 {
                return a;
            }
        }
    }

    fn count_extra(&mut self) -> u32 {
        let mean = self.world.scenario.conversations.extra_messages_mean;
        let mut k = 0;
        // Geometric with the given mean, at most 3.
        let p = mean / (1.0 + mean);
        while k < 3 && self.rng.chance(p) {
            k += 1;
        }
        k
    }

    /// Plans one round starting with a customer message at `t`.
    fn plan_round(&mut self, slot: usize, t: i64, first: bool) {
        let c = self.world.scenario.conversations.clone();
        let (shop, cur_agent, spam) = {
            let cv = &self.convs[slot];
            (cv.shop, cv.agent, cv.spam)
        };
        let mut steps = std::mem::take(&mut self.convs[slot].steps);
        steps.clear();
        steps.push(Step {
            ts: t,
            kind: StepKind::CustomerMsg,
        });
        let extras = self.count_extra();
        let wait_len = |g: &mut Generator, long: bool| -> i64 {
            if long {
                g.rng.range(c.long_wait_min_ms, c.long_wait_max_ms)
            } else {
                g.rng.range(10_000, c.short_wait_max_ms)
            }
        };
        let mut agent = cur_agent;
        let mut floor = 1_000;
        if first {
            if self.rng.chance(c.abandoned_in_queue_share) {
                let long = self.rng.chance(c.long_wait_share);
                let w = wait_len(self, long);
                self.add_extras(&mut steps, t, w, extras);
                steps.push(Step {
                    ts: t + w,
                    kind: StepKind::Close,
                });
                self.finish_plan(slot, steps);
                return;
            }
            let q = self.rng.range(c.queue_min_ms, c.queue_max_ms);
            agent = self.pick_agent(shop, NO_AGENT);
            steps.push(Step {
                ts: t + q,
                kind: StepKind::Assign { agent, from: NO_AGENT },
            });
            if self.rng.chance(c.auto_reply_share) {
                steps.push(Step {
                    ts: t + q + self.rng.range(200, 800),
                    kind: StepKind::AutoReply,
                });
            }
            floor = q + 1_000;
        }
        if spam {
            let f = floor + self.rng.range(4_000, 19_000);
            self.add_extras(&mut steps, t, f, extras);
            steps.push(Step {
                ts: t + f,
                kind: StepKind::Flag,
            });
            steps.push(Step {
                ts: t + f + 1_000,
                kind: StepKind::Close,
            });
            self.finish_plan(slot, steps);
            return;
        }
        if self.rng.chance(c.unanswered_share / c.rounds_mean.max(1.0)) {
            let long = self.rng.chance(c.long_wait_share);
            let w = wait_len(self, long).max(floor);
            self.add_extras(&mut steps, t, w, extras);
            steps.push(Step {
                ts: t + w,
                kind: StepKind::Close,
            });
            self.finish_plan(slot, steps);
            return;
        }
        let mut responder = agent;
        if self.world.shop_agents[shop as usize].len() > 1 && self.rng.chance(c.transfer_share) {
            let x = floor + self.rng.range(2_000, 11_000);
            responder = self.pick_agent(shop, agent);
            steps.push(Step {
                ts: t + x,
                kind: StepKind::Assign {
                    agent: responder,
                    from: agent,
                },
            });
            floor = x + 1_000;
            self.stats.transfers += 1;
        }
        let r = self.response_ms(responder, t).max(floor);
        let reply = t + r;
        self.add_extras(&mut steps, t, r, extras);
        steps.push(Step {
            ts: reply,
            kind: StepKind::Reply { agent: responder },
        });
        if self.rng.chance(c.follow_up_share) {
            steps.push(Step {
                ts: reply + self.rng.range(1_000, 4_000),
                kind: StepKind::Reply { agent: responder },
            });
        }
        let rounds_left = self.convs[slot].rounds_left.saturating_sub(1);
        self.convs[slot].rounds_left = rounds_left;
        if rounds_left > 0 {
            steps.push(Step {
                ts: reply + self.rng.range(c.think_min_ms, c.think_max_ms),
                kind: StepKind::NextRound,
            });
        } else {
            let close = reply + self.rng.range(c.close_after_min_ms, c.close_after_max_ms);
            steps.push(Step {
                ts: close,
                kind: StepKind::Close,
            });
            if self.rng.chance(self.world.scenario.orders.conversion_share) {
                steps.push(Step {
                    ts: reply + self.rng.range(5_000, 600_000),
                    kind: StepKind::Order,
                });
            }
        }
        self.finish_plan(slot, steps);
    }

    /// Extra customer messages strictly inside (t, t + before).
    fn add_extras(&mut self, steps: &mut Vec<Step>, t: i64, before: i64, n: u32) {
        for _ in 0..n {
            if before > 1_500 {
                steps.push(Step {
                    ts: t + self.rng.range(1_000, before - 500),
                    kind: StepKind::CustomerMsg,
                });
            }
        }
    }

    fn finish_plan(&mut self, slot: usize, mut steps: Vec<Step>) {
        // Stable: equal times keep plan order (assign before auto-reply, …).
        steps.sort_by_key(|s| s.ts);
        let cv = &mut self.convs[slot];
        cv.steps = steps;
        cv.pos = 0;
    }

    fn start_conversation(&mut self, shop: u32, t: i64) {
        let c = &self.world.scenario.conversations;
        let spam = self.rng.chance(c.spam_share);
        // Rounds: 1 + geometric with mean rounds_mean - 1.
        let extra_mean = (c.rounds_mean - 1.0).max(0.0);
        let p = extra_mean / (1.0 + extra_mean);
        let mut rounds = 1;
        while rounds < 12 && self.rng.chance(p) {
            rounds += 1;
        }
        let conv = Conv {
            shop,
            conv: self.next_conv,
            customer: self.next_customer,
            agent: NO_AGENT,
            spam,
            rounds_left: rounds,
            steps: Vec::new(),
            pos: 0,
        };
        self.next_conv += 1;
        self.next_customer += 1;
        self.stats.conversations += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.convs[s as usize] = conv;
                s as usize
            }
            None => {
                self.convs.push(conv);
                self.convs.len() - 1
            }
        };
        self.plan_round(slot, t, true);
        self.push(t, Action::Step(slot as u32));
    }

    /// Emits the conversation's current step and schedules the next one.
    fn step(&mut self, slot: usize, ts: i64) -> Option<Event> {
        let step = self.convs[slot].steps[self.convs[slot].pos];
        if let StepKind::NextRound = step.kind {
            self.plan_round(slot, ts, false);
            return self.step(slot, ts);
        }
        let (shop, conv, customer, cur) = {
            let cv = &self.convs[slot];
            (cv.shop, cv.conv, cv.customer, cv.agent)
        };
        let ev = match step.kind {
            StepKind::CustomerMsg => {
                let mut e = self.new_event(ts, Kind::Customer, shop);
                e.agent = cur;
                Some(e)
            }
            StepKind::Assign { agent, from } => {
                self.convs[slot].agent = agent;
                let mut e = self.new_event(ts, Kind::Assign, shop);
                e.agent = agent;
                e.from_agent = from;
                Some(e)
            }
            StepKind::AutoReply => {
                let mut e = self.new_event(ts, Kind::Agent, shop);
                e.agent = cur;
                e.auto = true;
                Some(e)
            }
            StepKind::Reply { agent } => {
                let mut e = self.new_event(ts, Kind::Agent, shop);
                e.agent = agent;
                Some(e)
            }
            StepKind::Flag => {
                self.stats.flagged += 1;
                let mut e = self.new_event(ts, Kind::Flag, shop);
                e.code = self.rng.below(2) as u8;
                Some(e)
            }
            StepKind::Close => Some(self.new_event(ts, Kind::Close, shop)),
            StepKind::Order => {
                self.stats.orders += 1;
                let mut e = self.new_event(ts, Kind::Order, shop);
                e.order = self.next_order;
                self.next_order += 1;
                let o = &self.world.scenario.orders;
                e.amount = self
                    .rng
                    .lognormal(o.amount_median_fen, o.amount_sigma)
                    .round()
                    .max(100.0) as u64;
                Some(e)
            }
            StepKind::NextRound => unreachable!("handled above"),
        };
        let cv = &mut self.convs[slot];
        cv.pos += 1;
        if cv.pos < cv.steps.len() {
            let next = cv.steps[cv.pos].ts;
            self.push(next, Action::Step(slot as u32));
        } else {
            self.free.push(slot as u32);
        }
        ev.map(|mut e| {
            e.conv = conv;
            e.customer = customer;
            e
        })
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if let Some(d) = self.dup.take() {
            self.stats.events += 1;
            self.stats.duplicates += 1;
            return Some(d);
        }
        loop {
            let Reverse(p) = self.heap.pop()?;
            if p.ts >= self.end_ts {
                self.heap.clear();
                return None;
            }
            let ev = match p.action {
                Action::Arrive(shop) => {
                    self.start_conversation(shop, p.ts);
                    let next =
                        self.next_arrival(self.world.scenario.traffic.conversations_per_shop_per_hour, shop, p.ts);
                    self.push(next, Action::Arrive(shop));
                    None
                }
                Action::SilentOrder(shop) => {
                    let next =
                        self.next_arrival(self.world.scenario.orders.silent_orders_per_shop_per_hour, shop, p.ts);
                    self.push(next, Action::SilentOrder(shop));
                    self.stats.silent_orders += 1;
                    let mut e = self.new_event(p.ts, Kind::Order, shop);
                    e.customer = self.next_customer;
                    self.next_customer += 1;
                    e.order = self.next_order;
                    self.next_order += 1;
                    let o = &self.world.scenario.orders;
                    e.amount = self
                        .rng
                        .lognormal(o.amount_median_fen, o.amount_sigma)
                        .round()
                        .max(100.0) as u64;
                    Some(e)
                }
                Action::StatusChange(agent) => {
                    let first = p.ts < self.ts0 + 1_000;
                    let mut e = self.new_event(p.ts, Kind::Status, self.world.agent_shops[agent as usize][0]);
                    e.agent = agent;
                    e.code = if first {
                        0
                    } else {
                        [0u8, 1, 1, 2][self.rng.below(4) as usize]
                    };
                    let per_hour = self.world.scenario.traffic.status_changes_per_agent_per_hour;
                    if per_hour > 0.0 {
                        let gap = (self.rng.exp(3_600_000.0 / per_hour) as i64).max(1_000);
                        self.push(p.ts + gap, Action::StatusChange(agent));
                    }
                    Some(e)
                }
                Action::Step(slot) => self.step(slot as usize, p.ts),
            };
            if let Some(e) = ev {
                self.stats.events += 1;
                if self.world.scenario.conversations.duplicate_share > 0.0
                    && self.rng.chance(self.world.scenario.conversations.duplicate_share)
                {
                    self.dup = Some(Event { dup: true, ..e });
                }
                return Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn small() -> Arc<World> {
        let mut s = Scenario::default();
        s.shops.count = 6;
        s.shops.shared_seat_agents = 2;
        s.shops.shops_per_shared_agent = 2;
        s.span = crate::scenario::Millis(3_600_000);
        s.traffic.conversations_per_shop_per_hour = 30.0;
        s.conversations.duplicate_share = 0.01;
        Arc::new(World::build(&s, 5).unwrap())
    }

    fn ndjson(world: &Arc<World>, seed: u64) -> Vec<u8> {
        let names = Names::of(world);
        let mut out = Vec::new();
        for e in Generator::new(world.clone(), seed, world.start_ts, world.scenario.span.0, 1.0) {
            names.write_json(&e, &mut out);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn same_seed_same_log_other_seed_other_log() {
        let w = small();
        let a = ndjson(&w, 9);
        assert!(a.len() > 10_000);
        assert_eq!(a, ndjson(&w, 9));
        assert_ne!(a, ndjson(&w, 10));
    }

    #[test]
    fn times_never_go_back_and_stay_in_span() {
        let w = small();
        let mut last = i64::MIN;
        for e in Generator::new(w.clone(), 3, w.start_ts, w.scenario.span.0, 1.0) {
            assert!(e.ts >= last, "ts went back");
            assert!(e.ts >= w.start_ts && e.ts < w.start_ts + w.scenario.span.0);
            last = e.ts;
        }
    }

    #[test]
    fn midnight_spike_is_visible_in_arrivals() {
        let w = small();
        let at = w.spike_at.unwrap();
        let (mut before, mut after) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        for e in Generator::new(w.clone(), 3, w.start_ts, w.scenario.span.0, 1.0) {
            // Count conversation starts (first customer message).
            if e.kind == Kind::Customer && seen.insert(e.conv) {
                if e.ts >= at - 600_000 && e.ts < at {
                    before += 1;
                } else if e.ts >= at + 300_000 && e.ts < at + 900_000 {
                    after += 1;
                }
            }
        }
        // Ten times the rate, a slightly lower night profile: 8x-11x.
        assert!(
            after > before * 8 && after < before * 11,
            "before {before} after {after}"
        );
    }

    #[test]
    fn every_line_is_a_valid_protocol_event() {
        let w = small();
        let log = ndjson(&w, 4);
        let mut kinds = std::collections::BTreeMap::new();
        for (i, line) in log.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| panic!("line {i}: {e}"));
            crate::validate::check_event(&v).unwrap_or_else(|e| panic!("line {i}: {e}: {v}"));
            *kinds.entry(v["type"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        for k in [
            "chat.customer",
            "chat.agent",
            "conversation.assign",
            "conversation.close",
            "agent.status",
            "customer.flag",
            "order.paid",
        ] {
            assert!(kinds.get(k).copied().unwrap_or(0) > 0, "no {k} in {kinds:?}");
        }
    }

    #[test]
    fn conversation_events_are_ordered_and_routed_together() {
        let w = small();
        let mut route_of = std::collections::HashMap::new();
        for e in Generator::new(w.clone(), 11, w.start_ts, w.scenario.span.0, 1.0) {
            if e.kind == Kind::Status || e.conv == 0 {
                continue;
            }
            let r = *route_of.entry((e.shop, e.conv)).or_insert(e.route());
            assert_eq!(r, e.route());
        }
    }
}
