//! Ground truth: an independent implementation of PROTOCOL §3 (per-agent
//! `today` metrics) and §4 (which (agent, shop, rule) must alert), fed the
//! same events the load sends, in generation order. Out: a [`TruthReport`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::events::{Event, Kind, NO_AGENT};

/// Thresholds and calendar the truth assumes (must match the server's).
#[derive(Debug, Clone, Copy)]
pub struct TruthConfig {
    /// UTC offset of the business day, ms.
    pub utc_offset_ms: i64,
    /// `norm_ms`.
    pub norm_ms: i64,
    /// `min_samples` of `slow_average`.
    pub min_samples: u32,
    /// Rolling window of `slow_average`, ms.
    pub window_ms: i64,
    /// Half-width of the ambiguous band around `norm_ms`.
    pub margin_ms: i64,
    /// Waits still open at the end keep aging (wall clock): their keys
    /// cannot be judged and count as ambiguous unless already over.
    pub open_waits_keep_aging: bool,
}

impl TruthConfig {
    /// From a scenario's `[alerts]` and time zone.
    pub fn of(s: &crate::scenario::Scenario) -> TruthConfig {
        TruthConfig {
            utc_offset_ms: s.utc_offset_minutes as i64 * 60_000,
            norm_ms: s.alerts.norm_ms,
            min_samples: s.alerts.min_samples,
            window_ms: s.alerts.window.0,
            margin_ms: s.alerts.margin_ms,
            open_waits_keep_aging: false,
        }
    }
}

/// An event reduced to what the metrics need; ids interned to numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TEvent {
    /// Event time.
    pub ts: i64,
    /// Shop number.
    pub shop: u32,
    /// What happened.
    pub kind: TKind,
}

/// Per-type payload of a [`TEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TKind {
    /// `chat.customer`
    Customer {
        conv: u64,
        customer: u64,
        agent: Option<u32>,
    },
    /// `chat.agent`
    Agent {
        conv: u64,
        customer: u64,
        agent: u32,
        auto: bool,
    },
    /// `conversation.assign`
    Assign {
        conv: u64,
        customer: u64,
        agent: u32,
        from: Option<u32>,
    },
    /// `conversation.close`
    Close { conv: u64 },
    /// `agent.status`
    Status { agent: u32 },
    /// `customer.flag`
    Flag { customer: u64 },
    /// `order.paid`
    Order { customer: u64, amount: u64 },
}

impl From<&Event> for TEvent {
    fn from(e: &Event) -> TEvent {
        let agent = (e.agent != NO_AGENT).then_some(e.agent);
        let kind = match e.kind {
            Kind::Customer => TKind::Customer {
                conv: e.conv,
                customer: e.customer,
                agent,
            },
            Kind::Agent => TKind::Agent {
                conv: e.conv,
                customer: e.customer,
                agent: e.agent,
                auto: e.auto,
            },
            Kind::Assign => TKind::Assign {
                conv: e.conv,
                customer: e.customer,
                agent: e.agent,
                from: (e.from_agent != NO_AGENT).then_some(e.from_agent),
            },
            Kind::Close => TKind::Close { conv: e.conv },
            Kind::Status => TKind::Status { agent: e.agent },
            Kind::Flag => TKind::Flag { customer: e.customer },
            Kind::Order => TKind::Order {
                customer: e.customer,
                amount: e.amount,
            },
        };
        TEvent {
            ts: e.ts,
            shop: e.shop,
            kind,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    start: i64,
    /// When the current agent got it (or the wait start).
    since: i64,
}

#[derive(Debug)]
struct ConvState {
    customer: u64,
    agent: u32,
    wait: Option<Wait>,
    answered: bool,
}

#[derive(Debug, Default)]
struct AgentDay {
    samples: Vec<u32>,
    sum: u64,
    first_n: u64,
    first_sum: u64,
    slow: u64,
    customers: HashSet<(u32, u64)>,
    messaged: HashSet<(u32, u64)>,
    orders: u64,
    sales: u64,
    credited: HashSet<(u32, u64)>,
    auto: u64,
    transfers_in: u64,
    transfers_out: u64,
}

#[derive(Debug, Default)]
struct SlowKey {
    win: VecDeque<(i64, u32)>,
    sum: u64,
    max_avg: Option<f64>,
    first_cross: Option<i64>,
}

#[derive(Debug, Default)]
struct WaitKey {
    max_age: i64,
    first_cross: Option<i64>,
    open_at_end: bool,
    any_open_at_end: bool,
}

/// A response sample the truth just recorded: whose, and on which day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleNote {
    /// Agent number.
    pub agent: u32,
    /// Business day number (days since epoch in the desk's time zone).
    pub day: i64,
}

/// One stretch of a wait held by an agent that ended before the run did:
/// the wait's start and the `ts` of the event that ended it for that agent
/// (the reply, a close, a flag or a transfer away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitSpan {
    /// Wait start (the customer message), event ms.
    pub start: i64,
    /// `ts` of the event that ended the agent's hold on the wait.
    pub closed_at: i64,
}

/// The running model.
#[derive(Debug)]
pub struct Truth {
    cfg: TruthConfig,
    now: i64,
    convs: HashMap<(u32, u64), ConvState>,
    cust_convs: HashMap<(u32, u64), Vec<u64>>,
    flagged: HashSet<(u32, u64)>,
    last_msg: HashMap<(u32, u64), (u32, i64)>,
    days: HashMap<(u32, i64), AgentDay>,
    touched: HashMap<(u32, u64), Vec<u32>>,
    slow: HashMap<(u32, u32), SlowKey>,
    waiting: HashMap<(u32, u32), WaitKey>,
    spans: HashMap<(u32, u32), Vec<WaitSpan>>,
    silent: HashMap<(u32, i64), (u64, u64)>,
    agents_seen: HashSet<u32>,
    events: u64,
}

/// Expected `today` figures of one agent (field names as in the API).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentToday {
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
    pub orders: u64,
    pub sales_fen: u64,
    pub paying_customers: u64,
    pub auto_replies: u64,
    pub transfers_in: u64,
    pub transfers_out: u64,
}

/// Whether an (agent, shop, rule) must have alerted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Clearly over the threshold.
    Yes,
    /// Clearly under it.
    No,
    /// Within the margin band: either answer is accepted.
    Ambiguous,
}

/// One alert key and what the truth expects.
#[derive(Debug, Clone, Serialize)]
pub struct AlertTruth {
    pub agent: String,
    pub shop: String,
    pub rule: &'static str,
    pub expect: Expect,
    /// Largest 15m average (`slow_average`) or wait age (`customer_waiting`), ms.
    pub peak_ms: f64,
    /// Event time at which the threshold was first exceeded.
    pub first_cross: Option<i64>,
}

/// Everything the truth concludes after the last event.
#[derive(Debug, Clone, Serialize)]
pub struct TruthReport {
    /// Largest `ts` seen.
    pub now: i64,
    /// Business day of `now`.
    pub day: i64,
    /// Events applied (duplicates excluded).
    pub events: u64,
    /// `today` figures per agent name.
    pub agents: BTreeMap<String, AgentToday>,
    /// Alert keys with a verdict.
    pub alerts: Vec<AlertTruth>,
    /// `(silent_orders, silent_sales_fen)` per shop, today.
    pub silent: BTreeMap<String, (u64, u64)>,
    /// Ended waits per (agent, shop), in the order they ended (used to judge
    /// `customer_waiting` alerts that only cross-connection arrival order
    /// can explain; see `verdict::Interleave`).
    #[serde(skip)]
    pub wait_spans: BTreeMap<(String, String), Vec<WaitSpan>>,
}

fn nearest_rank(sorted: &[u32], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as u64)
}

impl Truth {
    /// An empty model.
    pub fn new(cfg: TruthConfig) -> Truth {
        Truth {
            cfg,
            now: i64::MIN,
            convs: HashMap::new(),
            cust_convs: HashMap::new(),
            flagged: HashSet::new(),
            last_msg: HashMap::new(),
            days: HashMap::new(),
            touched: HashMap::new(),
            slow: HashMap::new(),
            waiting: HashMap::new(),
            spans: HashMap::new(),
            silent: HashMap::new(),
            agents_seen: HashSet::new(),
            events: 0,
        }
    }

    /// Business day of `ts`.
    pub fn day(&self, ts: i64) -> i64 {
        (ts + self.cfg.utc_offset_ms).div_euclid(86_400_000)
    }

    fn conv(&mut self, shop: u32, conv: u64, customer: u64) -> &mut ConvState {
        self.convs.entry((shop, conv)).or_insert_with(|| {
            self.cust_convs.entry((shop, customer)).or_default().push(conv);
            ConvState {
                customer,
                agent: NO_AGENT,
                wait: None,
                answered: false,
            }
        })
    }

    fn touch(&mut self, agent: u32, shop: u32, customer: u64) {
        let t = self.touched.entry((shop, customer)).or_default();
        if !t.contains(&agent) {
            t.push(agent);
        }
    }

    fn add_customer(&mut self, agent: u32, shop: u32, customer: u64, ts: i64) {
        if self.flagged.contains(&(shop, customer)) {
            return;
        }
        let day = self.day(ts);
        self.days
            .entry((agent, day))
            .or_default()
            .customers
            .insert((shop, customer));
        self.touch(agent, shop, customer);
    }

    /// A wait leaves `agent` (answered, dropped, transferred or run ended).
    fn end_interval(&mut self, shop: u32, agent: u32, w: Wait, t_end: i64, open_at_end: bool) {
        let norm = self.cfg.norm_ms;
        if !open_at_end {
            self.spans.entry((agent, shop)).or_default().push(WaitSpan {
                start: w.start,
                closed_at: t_end,
            });
        }
        let k = self.waiting.entry((agent, shop)).or_default();
        let age = t_end - w.start;
        k.max_age = k.max_age.max(age);
        if age > norm {
            let cross = (w.start + norm + 1).max(w.since);
            k.first_cross = Some(k.first_cross.map_or(cross, |c| c.min(cross)));
            k.open_at_end |= open_at_end;
        }
    }

    fn assign(&mut self, shop: u32, conv: u64, agent: u32, ts: i64) {
        let (cur, wait, customer) = {
            let c = &self.convs[&(shop, conv)];
            (c.agent, c.wait, c.customer)
        };
        if cur == agent {
            return;
        }
        if let Some(w) = wait {
            if cur != NO_AGENT {
                self.end_interval(shop, cur, w, ts, false);
            }
            self.add_customer(agent, shop, customer, ts);
        }
        let c = self
            .convs
            .get_mut(&(shop, conv))
            .expect("conversation exists: read above");
        c.agent = agent;
        if let Some(w) = &mut c.wait {
            w.since = ts;
        }
    }

    fn eval_slow(k: &mut SlowKey, at: i64, cfg: &TruthConfig) {
        let n = k.win.len();
        if n >= cfg.min_samples.max(1) as usize {
            let avg = k.sum as f64 / n as f64;
            k.max_avg = Some(k.max_avg.map_or(avg, |m| m.max(avg)));
            if avg > cfg.norm_ms as f64 && k.first_cross.is_none() {
                k.first_cross = Some(at);
            }
        }
    }

    fn evict(k: &mut SlowKey, now: i64, cfg: &TruthConfig) {
        while let Some(&(t0, v)) = k.win.front() {
            if t0 > now - cfg.window_ms {
                break;
            }
            k.win.pop_front();
            k.sum -= v as u64;
            Self::eval_slow(k, t0 + cfg.window_ms, cfg);
        }
    }

    fn record_sample(&mut self, agent: u32, shop: u32, ts: i64, ms: u32, first: bool) {
        let day = self.day(ts);
        let norm = self.cfg.norm_ms;
        let d = self.days.entry((agent, day)).or_default();
        d.samples.push(ms);
        d.sum += ms as u64;
        if first {
            d.first_n += 1;
            d.first_sum += ms as u64;
        }
        if ms as i64 > norm {
            d.slow += 1;
        }
        let cfg = self.cfg;
        let k = self.slow.entry((agent, shop)).or_default();
        Self::evict(k, ts, &cfg);
        k.win.push_back((ts, ms));
        k.sum += ms as u64;
        Self::eval_slow(k, ts, &cfg);
    }

    /// Applies one event; returns the response sample it made, if any.
    pub fn apply(&mut self, ev: &TEvent) -> Option<SampleNote> {
        self.events += 1;
        self.now = self.now.max(ev.ts);
        let (ts, shop) = (ev.ts, ev.shop);
        match ev.kind {
            TKind::Customer { conv, customer, agent } => {
                if self.flagged.contains(&(shop, customer)) {
                    return None;
                }
                self.conv(shop, conv, customer);
                if let Some(a) = agent {
                    self.agents_seen.insert(a);
                    self.assign(shop, conv, a, ts);
                }
                let cur = self.convs[&(shop, conv)].agent;
                if cur != NO_AGENT {
                    self.add_customer(cur, shop, customer, ts);
                }
                let c = self
                    .convs
                    .get_mut(&(shop, conv))
                    .expect("conversation exists: created above");
                if c.wait.is_none() {
                    c.wait = Some(Wait { start: ts, since: ts });
                }
                None
            }
            TKind::Agent {
                conv,
                customer,
                agent,
                auto,
            } => {
                self.agents_seen.insert(agent);
                self.conv(shop, conv, customer);
                self.assign(shop, conv, agent, ts);
                let day = self.day(ts);
                if auto {
                    self.days.entry((agent, day)).or_default().auto += 1;
                    return None;
                }
                self.days
                    .entry((agent, day))
                    .or_default()
                    .messaged
                    .insert((shop, customer));
                self.touch(agent, shop, customer);
                self.last_msg.insert((shop, customer), (agent, ts));
                let c = self
                    .convs
                    .get_mut(&(shop, conv))
                    .expect("conversation exists: created above");
                let w = c.wait.take()?;
                let first = !c.answered;
                c.answered = true;
                let ms = (ts - w.start).max(0).min(u32::MAX as i64) as u32;
                self.end_interval(shop, agent, w, ts, false);
                self.record_sample(agent, shop, ts, ms, first);
                Some(SampleNote { agent, day })
            }
            TKind::Assign {
                conv,
                customer,
                agent,
                from,
            } => {
                self.agents_seen.insert(agent);
                self.conv(shop, conv, customer);
                let cur = self.convs[&(shop, conv)].agent;
                let day = self.day(ts);
                if let Some(f) = from {
                    self.agents_seen.insert(f);
                    if cur != agent {
                        self.days.entry((f, day)).or_default().transfers_out += 1;
                        self.days.entry((agent, day)).or_default().transfers_in += 1;
                    }
                }
                self.assign(shop, conv, agent, ts);
                None
            }
            TKind::Close { conv } => {
                if let Some(c) = self.convs.remove(&(shop, conv))
                    && let Some(w) = c.wait
                    && c.agent != NO_AGENT
                {
                    self.end_interval(shop, c.agent, w, ts, false);
                }
                None
            }
            TKind::Status { agent } => {
                self.agents_seen.insert(agent);
                None
            }
            TKind::Flag { customer } => {
                self.flagged.insert((shop, customer));
                let convs = self.cust_convs.get(&(shop, customer)).cloned().unwrap_or_default();
                for conv in convs {
                    let Some(c) = self.convs.get_mut(&(shop, conv)) else {
                        continue;
                    };
                    if let Some(w) = c.wait.take() {
                        let a = c.agent;
                        if a != NO_AGENT {
                            self.end_interval(shop, a, w, ts, false);
                        }
                    }
                }
                let day = self.day(ts);
                for a in self.touched.get(&(shop, customer)).cloned().unwrap_or_default() {
                    if let Some(d) = self.days.get_mut(&(a, day)) {
                        d.customers.remove(&(shop, customer));
                        d.messaged.remove(&(shop, customer));
                    }
                }
                None
            }
            TKind::Order { customer, amount } => {
                let day = self.day(ts);
                match self.last_msg.get(&(shop, customer)) {
                    Some(&(a, t)) if t >= ts - 86_400_000 && t <= ts => {
                        let d = self.days.entry((a, day)).or_default();
                        d.orders += 1;
                        d.sales += amount;
                        d.credited.insert((shop, customer));
                    }
                    _ => {
                        let s = self.silent.entry((shop, day)).or_default();
                        s.0 += 1;
                        s.1 += amount;
                    }
                }
                None
            }
        }
    }

    /// Closes the books at `now` (the largest `ts` sent) and states the truth.
    pub fn finish(mut self, agent_names: &[String], shop_names: &[String]) -> TruthReport {
        let now = self.now;
        let day = self.day(now);
        let open: Vec<(u32, u32, Wait)> = self
            .convs
            .iter()
            .filter_map(|(&(shop, _), c)| c.wait.filter(|_| c.agent != NO_AGENT).map(|w| (shop, c.agent, w)))
            .collect();
        for (shop, agent, w) in open {
            self.end_interval(shop, agent, w, now, true);
            self.waiting.entry((agent, shop)).or_default().any_open_at_end = true;
        }
        let cfg = self.cfg;
        for k in self.slow.values_mut() {
            Self::evict(k, now, &cfg);
        }
        let mut agents = BTreeMap::new();
        for &a in &self.agents_seen {
            let d = self.days.remove(&(a, day)).unwrap_or_default();
            let mut s = d.samples.clone();
            s.sort_unstable();
            let n = s.len() as u64;
            let replied = d.customers.intersection(&d.messaged).count() as u64;
            let paying = d.customers.intersection(&d.credited).count() as u64;
            agents.insert(
                agent_names[a as usize].clone(),
                AgentToday {
                    responses: n,
                    avg_response_ms: (n > 0).then(|| d.sum as f64 / n as f64),
                    p50_ms: nearest_rank(&s, 0.50),
                    p90_ms: nearest_rank(&s, 0.90),
                    p99_ms: nearest_rank(&s, 0.99),
                    max_ms: s.last().map(|&m| m as u64),
                    first_responses: d.first_n,
                    avg_first_response_ms: (d.first_n > 0).then(|| d.first_sum as f64 / d.first_n as f64),
                    slow_responses: d.slow,
                    customers: d.customers.len() as u64,
                    replied_customers: replied,
                    orders: d.orders,
                    sales_fen: d.sales,
                    paying_customers: paying,
                    auto_replies: d.auto,
                    transfers_in: d.transfers_in,
                    transfers_out: d.transfers_out,
                },
            );
        }
        let (norm, margin) = (cfg.norm_ms as f64, cfg.margin_ms as f64);
        let classify = |v: f64| {
            if v > norm + margin {
                Expect::Yes
            } else if v < norm - margin {
                Expect::No
            } else {
                Expect::Ambiguous
            }
        };
        let mut alerts = Vec::new();
        for (&(a, s), k) in &self.slow {
            let peak = k.max_avg.unwrap_or(0.0);
            alerts.push(AlertTruth {
                agent: agent_names[a as usize].clone(),
                shop: shop_names[s as usize].clone(),
                rule: "slow_average",
                expect: if k.max_avg.is_none() {
                    Expect::No
                } else {
                    classify(peak)
                },
                peak_ms: peak,
                first_cross: k.first_cross,
            });
        }
        for (&(a, s), k) in &self.waiting {
            let mut expect = classify(k.max_age as f64);
            if k.open_at_end && expect == Expect::Yes && k.max_age as f64 <= norm + 2.0 * margin {
                // Crossed only in the last moments of the run: the server
                // may not have seen a later event that moves `now` past it.
                expect = Expect::Ambiguous;
            }
            if cfg.open_waits_keep_aging && k.any_open_at_end && expect == Expect::No {
                expect = Expect::Ambiguous;
            }
            alerts.push(AlertTruth {
                agent: agent_names[a as usize].clone(),
                shop: shop_names[s as usize].clone(),
                rule: "customer_waiting",
                expect,
                peak_ms: k.max_age as f64,
                first_cross: k.first_cross,
            });
        }
        alerts.sort_by(|a, b| (a.rule, &a.agent, &a.shop).cmp(&(b.rule, &b.agent, &b.shop)));
        let silent = self
            .silent
            .iter()
            .filter(|((_, d), _)| *d == day)
            .map(|(&(s, _), &v)| (shop_names[s as usize].clone(), v))
            .collect();
        let wait_spans = self
            .spans
            .drain()
            .map(|((a, s), v)| ((agent_names[a as usize].clone(), shop_names[s as usize].clone()), v))
            .collect();
        TruthReport {
            now,
            day,
            events: self.events,
            agents,
            alerts,
            silent,
            wait_spans,
        }
    }
}

/// Turns an NDJSON log (any producer) into [`TEvent`]s with interned ids,
/// dropping repeated `(shop, id)` the way the server must.
#[derive(Debug, Default)]
pub struct LogReader {
    /// Shop names by number.
    pub shops: Vec<String>,
    /// Agent names by number.
    pub agents: Vec<String>,
    shop_ix: HashMap<String, u32>,
    agent_ix: HashMap<String, u32>,
    ids: HashMap<(u32, String), u64>,
    seen: HashSet<(u32, String)>,
    /// Lines skipped as duplicates.
    pub duplicates: u64,
}

impl LogReader {
    fn shop(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.shop_ix.get(s) {
            return i;
        }
        let i = self.shops.len() as u32;
        self.shops.push(s.to_string());
        self.shop_ix.insert(s.to_string(), i);
        i
    }

    fn agent(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.agent_ix.get(s) {
            return i;
        }
        let i = self.agents.len() as u32;
        self.agents.push(s.to_string());
        self.agent_ix.insert(s.to_string(), i);
        i
    }

    fn id(&mut self, shop: u32, prefix: char, s: &str) -> u64 {
        let n = self.ids.len() as u64 + 1;
        *self.ids.entry((shop, format!("{prefix}{s}"))).or_insert(n)
    }

    /// Parses one line; `Ok(None)` for a blank line or a duplicate.
    pub fn parse(&mut self, line: &str) -> anyhow::Result<Option<TEvent>> {
        use anyhow::Context;
        if line.trim().is_empty() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_str(line)?;
        crate::validate::check_event(&v).map_err(|e| anyhow::anyhow!(e))?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str());
        let shop = self.shop(s("shop").context("shop")?);
        let id = s("id").context("id")?.to_string();
        if !self.seen.insert((shop, id)) {
            self.duplicates += 1;
            return Ok(None);
        }
        let ts = v["ts"].as_i64().context("ts")?;
        let conv = s("conversation").map(|c| c.to_string());
        let conv = conv.map(|c| self.id(shop, 'v', &c)).unwrap_or(0);
        let customer = s("customer").map(|c| c.to_string());
        let customer = customer.map(|c| self.id(shop, 'c', &c)).unwrap_or(0);
        let agent = s("agent").map(|a| a.to_string()).map(|a| self.agent(&a));
        let from = s("from_agent").map(|a| a.to_string()).map(|a| self.agent(&a));
        let kind = match s("type").unwrap_or("") {
            "chat.customer" => TKind::Customer { conv, customer, agent },
            "chat.agent" => TKind::Agent {
                conv,
                customer,
                agent: agent.context("agent")?,
                auto: v.get("auto").and_then(|a| a.as_bool()).unwrap_or(false),
            },
            "conversation.assign" => TKind::Assign {
                conv,
                customer,
                agent: agent.context("agent")?,
                from,
            },
            "conversation.close" => TKind::Close { conv },
            "agent.status" => TKind::Status {
                agent: agent.context("agent")?,
            },
            "customer.flag" => TKind::Flag { customer },
            "order.paid" => TKind::Order {
                customer,
                amount: v["amount"].as_u64().context("amount")?,
            },
            other => anyhow::bail!("unknown type {other}"),
        };
        Ok(Some(TEvent { ts, shop, kind }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_794_326_400_000; // 2026-11-11T00:00:00+08:00

    fn cfg() -> TruthConfig {
        TruthConfig {
            utc_offset_ms: 480 * 60_000,
            norm_ms: 60_000,
            min_samples: 3,
            window_ms: 900_000,
            margin_ms: 10_000,
            open_waits_keep_aging: false,
        }
    }

    fn run(log: &str) -> TruthReport {
        let mut r = LogReader::default();
        let mut t = Truth::new(cfg());
        for line in log.lines() {
            if let Some(e) = r.parse(line).unwrap() {
                t.apply(&e);
            }
        }
        t.finish(&r.agents, &r.shops)
    }

    fn ev(id: &str, ty: &str, dt_s: i64, rest: &str) -> String {
        format!(
            "{{\"id\":\"{id}\",\"type\":\"{ty}\",\"ts\":{},\"shop\":\"s1\"{rest}}}\n",
            T0 + dt_s * 1000
        )
    }

    /// A hand-written day: queue, assign, auto-reply, two rounds, a transfer,
    /// a spam customer, an order, a silent order, a duplicate, and a wait that
    /// crosses midnight from the previous day.
    fn tiny_log() -> String {
        let mut l = String::new();
        // Yesterday: a sample at 23:59:50 that must not count today.
        l += &format!(
            "{{\"id\":\"y1\",\"type\":\"chat.customer\",\"ts\":{},\"shop\":\"s1\",\"conversation\":\"v0\",\"customer\":\"c0\",\"agent\":\"a1\"}}\n",
            T0 - 30_000
        );
        l += &format!(
            "{{\"id\":\"y2\",\"type\":\"chat.agent\",\"ts\":{},\"shop\":\"s1\",\"conversation\":\"v0\",\"customer\":\"c0\",\"agent\":\"a1\"}}\n",
            T0 - 10_000
        );
        // A wait opened yesterday, answered today: the sample counts today (by reply ts).
        l += &format!(
            "{{\"id\":\"y3\",\"type\":\"chat.customer\",\"ts\":{},\"shop\":\"s1\",\"conversation\":\"v0\",\"customer\":\"c0\",\"agent\":\"a1\"}}\n",
            T0 - 5_000
        );
        l += &ev(
            "e0",
            "chat.agent",
            5,
            ",\"conversation\":\"v0\",\"customer\":\"c0\",\"agent\":\"a1\"",
        );
        // c1 queued, assigned to a1, auto reply, answered after 20 s; 2nd round 10 s.
        l += &ev(
            "e1",
            "chat.customer",
            100,
            ",\"conversation\":\"v1\",\"customer\":\"c1\"",
        );
        l += &ev(
            "e2",
            "conversation.assign",
            103,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        );
        l += &ev(
            "e3",
            "chat.agent",
            104,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\",\"auto\":true",
        );
        l += &ev(
            "e4",
            "chat.customer",
            110,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        );
        l += &ev(
            "e5",
            "chat.agent",
            120,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        );
        l += &ev(
            "e5",
            "chat.agent",
            120,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        ); // duplicate
        l += &ev(
            "e6",
            "chat.customer",
            200,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        );
        l += &ev(
            "e7",
            "chat.agent",
            210,
            ",\"conversation\":\"v1\",\"customer\":\"c1\",\"agent\":\"a1\"",
        );
        l += &ev("e8", "conversation.close", 300, ",\"conversation\":\"v1\"");
        l += &ev(
            "e9",
            "order.paid",
            400,
            ",\"order\":\"o1\",\"customer\":\"c1\",\"amount\":8800",
        );
        // c2: a1 gets it, transfers to a2 after 10 s, a2 answers at 90 s (slow sample, wait alert for a2 only).
        l += &ev(
            "f1",
            "chat.customer",
            500,
            ",\"conversation\":\"v2\",\"customer\":\"c2\",\"agent\":\"a1\"",
        );
        l += &ev(
            "f2",
            "conversation.assign",
            510,
            ",\"conversation\":\"v2\",\"customer\":\"c2\",\"agent\":\"a2\",\"from_agent\":\"a1\"",
        );
        l += &ev(
            "f3",
            "chat.agent",
            590,
            ",\"conversation\":\"v2\",\"customer\":\"c2\",\"agent\":\"a2\"",
        );
        // Spam c3: assigned to a2, flagged; its wait is dropped, no sample, not a customer.
        l += &ev(
            "g1",
            "chat.customer",
            600,
            ",\"conversation\":\"v3\",\"customer\":\"c3\",\"agent\":\"a2\"",
        );
        l += &ev(
            "g2",
            "chat.agent",
            605,
            ",\"conversation\":\"v3\",\"customer\":\"c3\",\"agent\":\"a2\"",
        );
        l += &ev(
            "g3",
            "chat.customer",
            606,
            ",\"conversation\":\"v3\",\"customer\":\"c3\",\"agent\":\"a2\"",
        );
        l += &ev("g4", "customer.flag", 610, ",\"customer\":\"c3\",\"reason\":\"spam\"");
        l += &ev(
            "g5",
            "chat.customer",
            700,
            ",\"conversation\":\"v3\",\"customer\":\"c3\",\"agent\":\"a2\"",
        );
        // Silent order and an unanswered close.
        l += &ev(
            "h1",
            "order.paid",
            800,
            ",\"order\":\"o2\",\"customer\":\"c9\",\"amount\":500",
        );
        l += &ev(
            "h2",
            "chat.customer",
            900,
            ",\"conversation\":\"v4\",\"customer\":\"c4\",\"agent\":\"a1\"",
        );
        l += &ev("h3", "conversation.close", 930, ",\"conversation\":\"v4\"");
        l += &ev("h4", "agent.status", 940, ",\"agent\":\"a3\",\"status\":\"online\"");
        l
    }

    #[test]
    fn tiny_day_by_hand() {
        let r = run(&tiny_log());
        let a1 = &r.agents["a1"];
        // Samples today: c0 10 s (wait from yesterday 23:59:55 to 00:00:05), c1 20 s and 10 s.
        assert_eq!(a1.responses, 3);
        assert_eq!(a1.avg_response_ms, Some(40_000.0 / 3.0));
        assert_eq!(a1.p50_ms, Some(10_000));
        assert_eq!(a1.max_ms, Some(20_000));
        // First responses today: only c1's (c0's first was yesterday).
        assert_eq!(a1.first_responses, 1);
        assert_eq!(a1.avg_first_response_ms, Some(20_000.0));
        assert_eq!(a1.slow_responses, 0);
        // c1, c2 (sent a message while assigned), c4; c0 sent nothing today
        // but had an open wait? No: the wait was opened yesterday and the
        // conversation was assigned yesterday, so c0 is not a customer today.
        assert_eq!(a1.customers, 3);
        // a1 wrote to c0 and c1 today; c0 is not a customer → 1.
        assert_eq!(a1.replied_customers, 1);
        assert_eq!((a1.orders, a1.sales_fen, a1.paying_customers), (1, 8800, 1));
        assert_eq!(a1.auto_replies, 1);
        assert_eq!(a1.transfers_out, 1);
        let a2 = &r.agents["a2"];
        // 90 s for c2 and 5 s for c3 (answered before it was flagged).
        assert_eq!(a2.responses, 2);
        assert_eq!(a2.max_ms, Some(90_000));
        assert_eq!(a2.slow_responses, 1);
        assert_eq!(a2.first_responses, 2);
        // c2 (open wait when transferred); c3 left when flagged.
        assert_eq!((a2.customers, a2.replied_customers), (1, 1));
        assert_eq!(a2.transfers_in, 1);
        assert_eq!(r.agents["a3"].responses, 0);
        assert_eq!(r.silent["s1"], (1, 500));
        let find = |agent: &str, rule: &str| {
            r.alerts
                .iter()
                .find(|a| a.agent == agent && a.rule == rule)
                .map(|a| a.expect)
        };
        assert_eq!(find("a2", "customer_waiting"), Some(Expect::Yes));
        assert_eq!(find("a1", "customer_waiting"), Some(Expect::No));
        // Two samples only: no slow_average for a2.
        assert_eq!(find("a2", "slow_average"), Some(Expect::No));
    }

    #[test]
    fn slow_average_needs_min_samples_and_leaves_the_window() {
        // Three conversations starting at `starts` (s), each answered 80 s later.
        let replies = |starts: [i64; 3]| {
            let mut l = String::new();
            for (i, t) in starts.iter().enumerate() {
                let conv = format!(",\"conversation\":\"v{i}\",\"customer\":\"c{i}\",\"agent\":\"a1\"");
                l += &ev(&format!("c{i}"), "chat.customer", *t, &conv);
                l += &ev(&format!("r{i}"), "chat.agent", t + 80, &conv);
            }
            l
        };
        let r = run(&replies([0, 200, 400]));
        let s = r.alerts.iter().find(|a| a.rule == "slow_average").unwrap();
        assert_eq!(s.expect, Expect::Yes);
        assert_eq!(s.first_cross, Some(T0 + 480_000));
        // Spread the same three samples over 40 minutes: never 3 in 15m.
        let r = run(&replies([0, 1200, 2400]));
        let s = r.alerts.iter().find(|a| a.rule == "slow_average").unwrap();
        assert_eq!(s.expect, Expect::No);
    }

    #[test]
    fn waits_in_the_band_are_ambiguous() {
        let l = ev(
            "a",
            "chat.customer",
            0,
            ",\"conversation\":\"v\",\"customer\":\"c\",\"agent\":\"a1\"",
        ) + &ev(
            "b",
            "chat.agent",
            62,
            ",\"conversation\":\"v\",\"customer\":\"c\",\"agent\":\"a1\"",
        );
        let r = run(&l);
        assert_eq!(
            r.alerts.iter().find(|a| a.rule == "customer_waiting").unwrap().expect,
            Expect::Ambiguous
        );
    }
}
