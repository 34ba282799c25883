//! Property tests of the engine against a deliberately simple reference model
//! (plain vectors, everything recomputed from scratch), plus partition
//! merging and determinism.

use std::collections::BTreeMap;
use std::sync::Arc;

use deskpulse::engine::window::{Window, WindowAcc, WindowMetrics};
use deskpulse::engine::{Applied, Clock, Engine, LiveAcc, Settings};
use deskpulse::protocol::{AgentId, AgentStatus, Event, EventKind, FlagReason, ShopId};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use proptest::prelude::*;

/// 2025-11-11 20:00 in Shanghai: a random walk of a few hours crosses midnight.
const BASE: i64 = 1_762_862_400_000;
const NORM_MS: u64 = 60_000;

#[derive(Debug, Clone)]
enum Op {
    Customer {
        shop: u8,
        conv: u8,
        agent: Option<u8>,
    },
    Agent {
        shop: u8,
        conv: u8,
        agent: u8,
        auto: bool,
    },
    Assign {
        shop: u8,
        conv: u8,
        agent: u8,
        transfer: bool,
    },
    Close {
        shop: u8,
        conv: u8,
    },
    Status {
        shop: u8,
        agent: u8,
        status: u8,
    },
    Flag {
        shop: u8,
        customer: u8,
    },
    Order {
        shop: u8,
        customer: u8,
        amount: u32,
        /// How long before the current time the order was paid: the shop
        /// may report a payment after more messages to the customer.
        late: i64,
    },
    Repeat,
}

fn op() -> impl Strategy<Value = Op> {
    let shop = 0u8..3;
    let conv = 0u8..6;
    let agent = 0u8..4;
    prop_oneof![
        6 => (shop.clone(), conv.clone(), proptest::option::weighted(0.6, agent.clone()))
            .prop_map(|(shop, conv, agent)| Op::Customer { shop, conv, agent }),
        6 => (shop.clone(), conv.clone(), agent.clone(), proptest::bool::weighted(0.15))
            .prop_map(|(shop, conv, agent, auto)| Op::Agent { shop, conv, agent, auto }),
        2 => (shop.clone(), conv.clone(), agent.clone(), any::<bool>())
            .prop_map(|(shop, conv, agent, transfer)| Op::Assign { shop, conv, agent, transfer }),
        1 => (shop.clone(), conv.clone()).prop_map(|(shop, conv)| Op::Close { shop, conv }),
        1 => (shop.clone(), agent.clone(), 0u8..4).prop_map(|(shop, agent, status)| Op::Status { shop, agent, status }),
        1 => (shop.clone(), 0u8..6).prop_map(|(shop, customer)| Op::Flag { shop, customer }),
        2 => (shop, 0u8..6, 0u32..100_000, prop_oneof![3 => Just(0i64), 1 => 0i64..1_200_000])
            .prop_map(|(shop, customer, amount, late)| Op::Order { shop, customer, amount, late }),
        1 => Just(Op::Repeat),
    ]
}

/// Turns ops and time steps into events. Conversation `c` of a shop always
/// belongs to customer `c`; ts mostly grows, sometimes steps back a little.
fn events(ops: &[(Op, i64)]) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    let mut ts = BASE;
    // Last agent of each conversation, for transfers.
    let mut owner: BTreeMap<(u8, u8), u8> = BTreeMap::new();
    for (i, (op, step)) in ops.iter().enumerate() {
        ts += step;
        let shop = |s: u8| ShopId::new(&format!("s{s}"));
        let agent = |a: u8| AgentId::new(&format!("a{a}"));
        let (s, kind) = match op {
            Op::Repeat => {
                if let Some(prev) = out.last().cloned() {
                    out.push(prev);
                }
                continue;
            }
            Op::Customer {
                shop: s,
                conv,
                agent: a,
            } => {
                if let Some(a) = a {
                    owner.insert((*s, *conv), *a);
                }
                (
                    *s,
                    EventKind::CustomerMessage {
                        conversation: format!("c{conv}").as_str().into(),
                        customer: format!("u{conv}").as_str().into(),
                        agent: a.map(agent),
                    },
                )
            }
            Op::Agent {
                shop: s,
                conv,
                agent: a,
                auto,
            } => {
                owner.insert((*s, *conv), *a);
                (
                    *s,
                    EventKind::AgentMessage {
                        conversation: format!("c{conv}").as_str().into(),
                        customer: format!("u{conv}").as_str().into(),
                        agent: agent(*a),
                        auto: *auto,
                    },
                )
            }
            Op::Assign {
                shop: s,
                conv,
                agent: a,
                transfer,
            } => {
                let from = owner.insert((*s, *conv), *a).filter(|_| *transfer).map(agent);
                (
                    *s,
                    EventKind::Assign {
                        conversation: format!("c{conv}").as_str().into(),
                        customer: format!("u{conv}").as_str().into(),
                        agent: agent(*a),
                        from_agent: from,
                    },
                )
            }
            Op::Close { shop: s, conv } => {
                owner.remove(&(*s, *conv));
                (
                    *s,
                    EventKind::Close {
                        conversation: format!("c{conv}").as_str().into(),
                    },
                )
            }
            Op::Status {
                shop: s,
                agent: a,
                status,
            } => (
                *s,
                EventKind::Status {
                    agent: agent(*a),
                    status: [
                        AgentStatus::Online,
                        AgentStatus::Busy,
                        AgentStatus::Away,
                        AgentStatus::Offline,
                    ][*status as usize],
                },
            ),
            Op::Flag { shop: s, customer } => (
                *s,
                EventKind::Flag {
                    customer: format!("u{customer}").as_str().into(),
                    reason: FlagReason::Ad,
                },
            ),
            Op::Order {
                shop: s,
                customer,
                amount,
                late: _,
            } => (
                *s,
                EventKind::OrderPaid {
                    order: format!("o{i}").as_str().into(),
                    customer: format!("u{customer}").as_str().into(),
                    amount: u64::from(*amount),
                },
            ),
        };
        let paid_before = match op {
            Op::Order { late, .. } => *late,
            _ => 0,
        };
        out.push(Event {
            id: format!("e{i}").as_str().into(),
            ts: ts - paid_before,
            shop: shop(s),
            kind,
        });
    }
    out
}

fn ops() -> impl Strategy<Value = Vec<(Op, i64)>> {
    proptest::collection::vec(
        (
            op(),
            prop_oneof![8 => 0i64..40_000, 1 => -30_000i64..0, 1 => 0i64..1_800_000],
        ),
        1..250,
    )
}

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        clock: Clock::Event,
        ..Settings::default()
    })
}

// ---------------- the reference model ----------------

#[derive(Debug, Default)]
struct Model {
    seen: Vec<(String, String)>,
    convs: Vec<MConv>,
    flagged: Vec<(String, String)>,
    status: Vec<(String, AgentStatus)>,
    agents: Vec<(String, String)>, // (agent, shop) partials
    samples: Vec<(String, String, i64, u64, bool)>,
    counted: Vec<(String, String, String, i64)>,
    replied: Vec<(String, String, String, i64)>,
    orders: Vec<(String, String, String, i64, u64)>,
    autos: Vec<(String, i64)>,
    transfers_in: Vec<(String, i64)>,
    transfers_out: Vec<(String, i64)>,
    max_ts: i64,
}

#[derive(Debug, Clone)]
struct MConv {
    shop: String,
    id: String,
    customer: String,
    agent: Option<String>,
    wait: Option<i64>,
    responded: bool,
}

impl Model {
    fn note_agent(&mut self, agent: &str, shop: &str) {
        if !self.agents.iter().any(|(a, s)| a == agent && s == shop) {
            self.agents.push((agent.into(), shop.into()));
        }
    }

    fn conv(&mut self, shop: &str, id: &str, customer: &str) -> usize {
        match self.convs.iter().position(|c| c.shop == shop && c.id == id) {
            Some(i) => {
                self.convs[i].customer = customer.into();
                i
            }
            None => {
                self.convs.push(MConv {
                    shop: shop.into(),
                    id: id.into(),
                    customer: customer.into(),
                    agent: None,
                    wait: None,
                    responded: false,
                });
                self.convs.len() - 1
            }
        }
    }

    fn assign(&mut self, i: usize, agent: &str, ts: i64) {
        if self.convs[i].agent.as_deref() == Some(agent) {
            return;
        }
        self.convs[i].agent = Some(agent.into());
        let (shop, customer) = (self.convs[i].shop.clone(), self.convs[i].customer.clone());
        self.note_agent(agent, &shop);
        if self.convs[i].wait.is_some() {
            self.counted.push((agent.into(), shop, customer, ts));
        }
    }

    fn apply(&mut self, e: &Event) {
        let key = (e.shop.to_string(), e.id.to_string());
        if self.seen.contains(&key) {
            return;
        }
        self.seen.push(key);
        self.max_ts = self.max_ts.max(e.ts);
        let shop = e.shop.to_string();
        let ts = e.ts;
        match &e.kind {
            EventKind::Status { agent, status } => {
                self.status.retain(|(a, _)| a != agent.as_str());
                self.status.push((agent.to_string(), *status));
            }
            EventKind::CustomerMessage {
                conversation,
                customer,
                agent,
            } => {
                if self.flagged.contains(&(shop.clone(), customer.to_string())) {
                    return;
                }
                let i = self.conv(&shop, conversation.as_str(), customer.as_str());
                if let Some(a) = agent {
                    self.assign(i, a.as_str(), ts);
                }
                if self.convs[i].wait.is_none() {
                    self.convs[i].wait = Some(ts);
                }
                if let Some(a) = self.convs[i].agent.clone() {
                    self.counted.push((a, shop, customer.to_string(), ts));
                }
            }
            EventKind::AgentMessage {
                conversation,
                customer,
                agent,
                auto,
            } => {
                let i = self.conv(&shop, conversation.as_str(), customer.as_str());
                self.assign(i, agent.as_str(), ts);
                if *auto {
                    self.autos.push((agent.to_string(), ts));
                    return;
                }
                self.replied
                    .push((agent.to_string(), shop.clone(), customer.to_string(), ts));
                if let Some(start) = self.convs[i].wait.take() {
                    let first = !self.convs[i].responded;
                    self.convs[i].responded = true;
                    self.samples
                        .push((agent.to_string(), shop, ts, (ts - start).max(0) as u64, first));
                }
            }
            EventKind::Assign {
                conversation,
                customer,
                agent,
                from_agent,
            } => {
                let i = self.conv(&shop, conversation.as_str(), customer.as_str());
                self.assign(i, agent.as_str(), ts);
                if let Some(from) = from_agent {
                    self.note_agent(from.as_str(), &shop);
                    self.transfers_in.push((agent.to_string(), ts));
                    self.transfers_out.push((from.to_string(), ts));
                }
            }
            EventKind::Close { conversation } => {
                self.convs
                    .retain(|c| !(c.shop == shop && c.id == conversation.as_str()));
            }
            EventKind::Flag { customer, .. } => {
                self.flagged.push((shop.clone(), customer.to_string()));
                for c in &mut self.convs {
                    if c.shop == shop && c.customer == customer.as_str() {
                        c.wait = None;
                    }
                }
            }
            EventKind::OrderPaid { customer, amount, .. } => {
                let credited = self
                    .replied
                    .iter()
                    .filter(|(_, s, c, at)| *s == shop && c == customer.as_str() && *at <= ts && *at >= ts - 86_400_000)
                    .max_by_key(|(_, _, _, at)| *at)
                    .map(|(a, _, _, _)| a.clone());
                if let Some(a) = credited {
                    self.orders.push((a, shop, customer.to_string(), ts, *amount));
                }
            }
        }
    }

    fn range(&self, window: Window) -> (i64, i64) {
        let now = self.max_ts;
        match window.rolling_ms() {
            Some(w) => (now - w + 1, i64::MAX),
            None => {
                let tz = TimeZone::get("Asia/Shanghai").unwrap();
                let date = Timestamp::from_millisecond(now)
                    .unwrap()
                    .to_zoned_datetime(tz.clone())
                    .date();
                let start = date.to_zoned_datetime(tz.clone()).unwrap().timestamp().as_millisecond();
                let end = date
                    .tomorrow()
                    .unwrap()
                    .to_zoned_datetime(tz)
                    .unwrap()
                    .timestamp()
                    .as_millisecond();
                (start, end - 1)
            }
        }
    }

    fn metrics(&self, agent: &str, window: Window) -> (WindowMetrics, u64, u64, Option<i64>, Option<AgentStatus>) {
        let (lo, hi) = self.range(window);
        let inside = |ts: i64| ts >= lo && ts <= hi;
        let mut values: Vec<u64> = Vec::new();
        let mut m = WindowMetrics::default();
        let (mut sum, mut first_sum) = (0u64, 0u64);
        for (a, _, ts, v, first) in &self.samples {
            if a == agent && inside(*ts) {
                values.push(*v);
                sum += v;
                m.responses += 1;
                if *first {
                    m.first_responses += 1;
                    first_sum += v;
                }
                if *v > NORM_MS {
                    m.slow_responses += 1;
                }
            }
        }
        values.sort_unstable();
        let rank = |q: f64| {
            values
                .get(((q * values.len() as f64).ceil() as usize).max(1) - 1)
                .copied()
        };
        m.avg_response_ms = (m.responses > 0).then(|| sum as f64 / m.responses as f64);
        m.avg_first_response_ms = (m.first_responses > 0).then(|| first_sum as f64 / m.first_responses as f64);
        m.p50_ms = rank(0.5);
        m.p90_ms = rank(0.9);
        m.p99_ms = rank(0.99);
        m.max_ms = values.last().copied();
        let mut customers: Vec<(&str, &str)> = self
            .counted
            .iter()
            .filter(|(a, s, c, ts)| a == agent && inside(*ts) && !self.flagged.contains(&(s.clone(), c.clone())))
            .map(|(_, s, c, _)| (s.as_str(), c.as_str()))
            .collect();
        customers.sort();
        customers.dedup();
        m.customers = customers.len() as u64;
        m.replied_customers = customers
            .iter()
            .filter(|(s, c)| {
                self.replied
                    .iter()
                    .any(|(a, s2, c2, ts)| a == agent && s2 == s && c2 == c && inside(*ts))
            })
            .count() as u64;
        m.paying_customers = customers
            .iter()
            .filter(|(s, c)| {
                self.orders
                    .iter()
                    .any(|(a, s2, c2, ts, _)| a == agent && s2 == s && c2 == c && inside(*ts))
            })
            .count() as u64;
        let mut buyers: Vec<(&str, &str)> = Vec::new();
        for (a, s, c, ts, amount) in &self.orders {
            if a == agent && inside(*ts) {
                m.orders += 1;
                m.sales_fen += amount;
                buyers.push((s, c));
            }
        }
        buyers.sort();
        buyers.dedup();
        let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
        m.reply_rate = ratio(m.replied_customers, m.customers);
        m.conversion_rate = ratio(m.paying_customers, m.customers);
        m.avg_order_fen = ratio(m.sales_fen, buyers.len() as u64);
        m.auto_replies = self.autos.iter().filter(|(a, ts)| a == agent && inside(*ts)).count() as u64;
        m.transfers_in = self
            .transfers_in
            .iter()
            .filter(|(a, ts)| a == agent && inside(*ts))
            .count() as u64;
        m.transfers_out = self
            .transfers_out
            .iter()
            .filter(|(a, ts)| a == agent && inside(*ts))
            .count() as u64;
        let mine: Vec<&MConv> = self
            .convs
            .iter()
            .filter(|c| c.agent.as_deref() == Some(agent))
            .collect();
        let open = mine.len() as u64;
        let waiting = mine.iter().filter(|c| c.wait.is_some()).count() as u64;
        let oldest = mine.iter().filter_map(|c| c.wait).min();
        let status = self.status.iter().find(|(a, _)| a == agent).map(|(_, s)| *s);
        (m, open, waiting, oldest, status)
    }

    fn agent_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.agents.iter().map(|(a, _)| a.clone()).collect();
        v.extend(self.status.iter().map(|(a, _)| a.clone()));
        v.sort();
        v.dedup();
        v
    }
}

fn run_engine(events: &[Event]) -> Engine {
    let mut e = Engine::new(settings());
    for ev in events {
        e.apply(ev);
    }
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engine_matches_the_reference_model(ops in ops()) {
        let events = events(&ops);
        let engine = run_engine(&events);
        let mut model = Model::default();
        for e in &events {
            model.apply(e);
        }
        let engine_agents: Vec<String> = engine.agent_ids().iter().map(ToString::to_string).collect();
        let model_agents = model.agent_ids();
        prop_assert_eq!(&engine_agents, &model_agents);
        for agent in &model_agents {
            for window in Window::ALL {
                let got = engine.agent_stats(&AgentId::new(agent), window, None).unwrap();
                let (want, open, waiting, oldest, status) = model.metrics(agent, window);
                prop_assert_eq!(&got.metrics, &want, "agent {} window {:?}", agent, window);
                prop_assert_eq!(got.live.open_conversations, open, "open, agent {}", agent);
                prop_assert_eq!(got.live.waiting, waiting, "waiting, agent {}", agent);
                prop_assert_eq!(got.live.oldest_wait_start, oldest, "oldest, agent {}", agent);
                prop_assert_eq!(got.live.status, status);
            }
        }
    }

    #[test]
    fn the_wait_rule_runs_wherever_what_it_reads_changed(ops in ops()) {
        let mut e = Engine::new(settings());
        for (i, ev) in events(&ops).iter().enumerate() {
            e.apply(ev);
            prop_assert_eq!(e.recheck_waits(), 0, "after event {} ({:?})", i, ev.kind);
        }
    }

    #[test]
    fn partitions_merge_to_the_same_totals(ops in ops(), split in 0u8..8) {
        let events = events(&ops);
        let whole = run_engine(&events);
        // Shops go to partition (bit of `split`); status events go everywhere.
        let part_of = |s: &ShopId| -> usize {
            let n: u8 = s.as_str()[1..].parse().unwrap();
            usize::from((split >> n) & 1)
        };
        let mut parts = [Engine::new(settings()), Engine::new(settings())];
        for e in &events {
            if matches!(e.kind, EventKind::Status { .. }) {
                let owner = part_of(&e.shop);
                let applied = parts[owner].apply(e);
                if applied == Applied::Accepted {
                    parts[1 - owner].apply(e);
                }
            } else {
                parts[part_of(&e.shop)].apply(e);
            }
        }
        // Equal clocks, as a server partition set ticks them together.
        let now = whole.now();
        for p in &mut parts {
            p.tick(now);
        }
        for agent in whole.agent_ids() {
            for window in Window::ALL {
                let (acc, live) = whole.agent_acc(&agent, window, None).unwrap();
                let mut merged = WindowAcc::default();
                let mut merged_live = LiveAcc::default();
                for p in &parts {
                    if let Some((a, l)) = p.agent_acc(&agent, window, None) {
                        merged.merge(&a);
                        merged_live.merge(&l);
                    }
                }
                prop_assert_eq!(merged.metrics(), acc.metrics(), "agent {} window {:?}", agent, window);
                prop_assert_eq!(merged_live.waiting, live.waiting);
                prop_assert_eq!(merged_live.oldest_wait_start, live.oldest_wait_start);
                prop_assert_eq!(merged_live.status, live.status);
            }
        }
    }

    #[test]
    fn the_same_log_gives_the_same_state_twice(ops in ops()) {
        let events = events(&ops);
        let mut a = Engine::new(settings());
        let mut b = Engine::new(settings());
        let mut changes_a = Vec::new();
        let mut changes_b = Vec::new();
        for e in &events {
            a.apply(e);
            changes_a.extend(a.take_alert_changes());
            b.apply(e);
            changes_b.extend(b.take_alert_changes());
        }
        prop_assert_eq!(changes_a, changes_b);
        let out_a = serde_json::to_string(&deskpulse::replay::output(&a, Window::Today, None)).unwrap();
        let out_b = serde_json::to_string(&deskpulse::replay::output(&b, Window::Today, None)).unwrap();
        prop_assert_eq!(out_a, out_b);
        prop_assert_eq!(a.all_alerts(), b.all_alerts());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `apply_batch` looks events ahead (index slots, conversations,
    /// customers) before applying them; in any cut into batches, what it
    /// finds ahead may go stale (a conversation closes and its slot is
    /// reused, a shop appears) and the result must still be that of one
    /// event at a time.
    #[test]
    fn batches_give_what_one_event_at_a_time_gives(ops in ops(), sizes in proptest::collection::vec(1usize..40, 1..20)) {
        let events = events(&ops);
        let single = run_engine(&events);
        let mut batched = Engine::new(settings());
        let mut rest = &events[..];
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, later) = rest.split_at(n.min(rest.len()));
            let single_outcomes: Vec<Applied> = {
                let mut probe = batched.clone();
                batch.iter().map(|e| probe.apply(e)).collect()
            };
            prop_assert_eq!(batched.apply_batch(batch), single_outcomes);
            rest = later;
        }
        for w in Window::ALL {
            let a = serde_json::to_string(&deskpulse::replay::output(&single, w, None)).unwrap();
            let b = serde_json::to_string(&deskpulse::replay::output(&batched, w, None)).unwrap();
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(single.all_alerts(), batched.all_alerts());
        prop_assert_eq!(single.open_waits(None, None), batched.open_waits(None, None));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn a_snapshot_restore_in_the_middle_changes_nothing(ops in ops(), cut in 0usize..250) {
        let events = events(&ops);
        let cut = cut.min(events.len());
        let whole = run_engine(&events);
        let mut first = Engine::new(settings());
        for e in &events[..cut] {
            first.apply(e);
        }
        let bytes = first.snapshot();
        let mut resumed = Engine::restore(settings(), &bytes).expect("restores");
        for e in &events[cut..] {
            resumed.apply(e);
        }
        for w in Window::ALL {
            let a = serde_json::to_string(&deskpulse::replay::output(&whole, w, None)).unwrap();
            let b = serde_json::to_string(&deskpulse::replay::output(&resumed, w, None)).unwrap();
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(whole.all_alerts(), resumed.all_alerts());
    }
}
