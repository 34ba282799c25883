//! Scenario model: a TOML file (or the built-in `11.11` big-sale default) in,
//! a [`World`] out: named shops, agents (normal, slow, drifting, shared seats),
//! teams, and the arrival-rate curve with the midnight spike.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rng::Rng;

/// A duration in milliseconds; in TOML either an integer (ms) or a string
/// such as `"90m"`, `"1h30m"`, `"45s"`, `"250ms"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Millis(pub i64);

impl fmt::Debug for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_duration(self.0))
    }
}

/// Parses `"1h30m"`, `"90s"`, `"250ms"` or a bare number of milliseconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = String::from(c);
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let v: f64 = num.parse().map_err(|_| anyhow!("bad duration {s:?}"))?;
        let scale = match unit.as_str() {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            _ => bail!("bad duration unit {unit:?} in {s:?} (use ms, s, m, h, d)"),
        };
        total += v * scale;
        num.clear();
        any = true;
    }
    if !num.is_empty() || !any {
        bail!("bad duration {s:?}: a number needs a unit (ms, s, m, h, d)");
    }
    Ok(total.round() as i64)
}

/// `90000` → `"1m30s"`.
pub fn format_duration(ms: i64) -> String {
    if ms % 1000 != 0 || ms == 0 {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Millis(n)),
            Raw::Str(s) => parse_duration(&s).map(Millis).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS(+HH:MM|Z)` into ms since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        s.get(r)
            .and_then(|x| x.parse::<i64>().ok())
            .ok_or_else(|| anyhow!("bad timestamp {s:?} (want 2026-11-11T00:00:00+08:00)"))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        bail!("bad timestamp {s:?} (want 2026-11-11T00:00:00+08:00)");
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let tz = &s[19..];
    let offset_min = if tz == "Z" {
        0
    } else {
        let sign = match tz.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => bail!("bad offset in {s:?}"),
        };
        let oh: i64 = tz
            .get(1..3)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| anyhow!("bad offset in {s:?}"))?;
        let om: i64 = tz
            .get(4..6)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| anyhow!("bad offset in {s:?}"))?;
        sign * (oh * 60 + om)
    };
    let days = days_from_civil(y, mo, d);
    Ok(((days * 86_400 + h * 3600 + mi * 60 + se) - offset_min * 60) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The whole scenario file. Every section and key is optional; missing ones
/// take the built-in 11.11 defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A label for reports.
    pub name: String,
    /// Event time of the first event with `--clock event` (RFC 3339 with offset).
    pub start: String,
    /// Event-time length of the scenario; `run` compresses it into `--duration`.
    pub span: Millis,
    /// The desk's time zone as a fixed UTC offset (Asia/Shanghai = 480).
    pub utc_offset_minutes: i32,
    /// Shops, agents per shop, shared seats, teams.
    pub shops: ShopsSpec,
    /// Arrival curve.
    pub traffic: TrafficSpec,
    /// Response-time model.
    pub agents: AgentsSpec,
    /// Conversation shape.
    pub conversations: ConversationsSpec,
    /// Orders.
    pub orders: OrdersSpec,
    /// Alert thresholds the ground truth uses (must match the server's).
    pub alerts: AlertsSpec,
}

/// Shops and the people who serve them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShopsSpec {
    /// Number of shops.
    pub count: u32,
    /// Dedicated agents per shop.
    pub agents_per_shop: u32,
    /// Extra agents that each serve several shops (拼坐席).
    pub shared_seat_agents: u32,
    /// How many shops one shared-seat agent serves.
    pub shops_per_shared_agent: u32,
    /// Number of teams; agents are dealt round-robin.
    pub teams: u32,
    /// Platform prefixes for shop names, used in turn.
    pub platforms: Vec<String>,
    /// Log-space sigma of shop popularity (0 = all shops equal).
    pub popularity_sigma: f64,
}

/// Customer arrivals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficSpec {
    /// New conversations per shop per hour at profile 1.0 and no spike.
    pub conversations_per_shop_per_hour: f64,
    /// 24 multipliers, one per local hour (interpolated between hour centres).
    pub hourly_profile: Vec<f64>,
    /// The big-sale spike; omit for an ordinary day.
    pub spike: Option<SpikeSpec>,
    /// Desk status changes per agent per hour.
    pub status_changes_per_agent_per_hour: f64,
}

/// The midnight rush: arrivals ramp to `factor`× in `ramp`, hold, then decay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeSpec {
    /// When the rush starts (RFC 3339).
    pub at: String,
    /// Time to reach the peak.
    pub ramp: Millis,
    /// Time at the peak.
    pub hold: Millis,
    /// Linear decay back to 1×.
    pub decay: Millis,
    /// Peak multiplier.
    pub factor: f64,
}

/// Response times: log-normal per agent kind, kept out of the alert band.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsSpec {
    /// Median response of a normal agent (ms, includes queue time).
    pub normal_median_ms: f64,
    /// Log-space sigma of a normal agent.
    pub normal_sigma: f64,
    /// Normal responses are clamped to at most this (keep below norm − margin).
    pub normal_max_ms: i64,
    /// Share of agents that are slow all day.
    pub slow_share: f64,
    /// Median response of a slow agent.
    pub slow_median_ms: f64,
    /// Log-space sigma of a slow agent.
    pub slow_sigma: f64,
    /// Slow responses are clamped to at least this (keep above norm + margin).
    pub slow_min_ms: i64,
    /// …and at most this.
    pub slow_max_ms: i64,
    /// Share of agents that drift from normal to slow under the rush.
    pub drifting_share: f64,
    /// Offset from the scenario start at which drifting agents begin to slip.
    pub drift_start: Millis,
    /// Time over which a drifting agent's chance of a slow reply goes 0 → 1.
    pub drift_ramp: Millis,
}

/// Conversation shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationsSpec {
    /// Mean number of rounds (customer asks, agent answers); at least 1.
    pub rounds_mean: f64,
    /// Mean extra customer messages per round (they do not move the wait).
    pub extra_messages_mean: f64,
    /// Customer think time between an answer and the next question.
    pub think_min_ms: i64,
    /// …upper bound.
    pub think_max_ms: i64,
    /// Time a new conversation spends queued before assignment.
    pub queue_min_ms: i64,
    /// …upper bound.
    pub queue_max_ms: i64,
    /// Share of conversations that get an auto-reply right after assignment.
    pub auto_reply_share: f64,
    /// Share of answers followed by a second agent message (no wait, no sample).
    pub follow_up_share: f64,
    /// Share of rounds transferred to another agent of the shop before the answer.
    pub transfer_share: f64,
    /// Share of conversations that end with an unanswered question.
    pub unanswered_share: f64,
    /// Share of conversations abandoned while still queued.
    pub abandoned_in_queue_share: f64,
    /// Of unanswered waits, the share that last long (> norm + margin).
    pub long_wait_share: f64,
    /// Short unanswered waits last at most this.
    pub short_wait_max_ms: i64,
    /// Long unanswered waits last at least this…
    pub long_wait_min_ms: i64,
    /// …and at most this.
    pub long_wait_max_ms: i64,
    /// Share of customers who are spam/ad senders and get flagged.
    pub spam_share: f64,
    /// Idle time between the last answer and `conversation.close`.
    pub close_after_min_ms: i64,
    /// …upper bound.
    pub close_after_max_ms: i64,
    /// Share of events sent twice (same id) to exercise de-duplication.
    pub duplicate_share: f64,
}

/// Orders.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersSpec {
    /// Share of answered conversations that end with `order.paid`.
    pub conversion_share: f64,
    /// Median order amount in fen.
    pub amount_median_fen: f64,
    /// Log-space sigma of the amount.
    pub amount_sigma: f64,
    /// Silent orders (no chat) per shop per hour at profile 1.0 (spikes too).
    pub silent_orders_per_shop_per_hour: f64,
}

/// The server's thresholds as the ground truth assumes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsSpec {
    /// `norm_ms`: slow-sample threshold and alert threshold.
    pub norm_ms: i64,
    /// `clear_ms`.
    pub clear_ms: i64,
    /// `critical_ms`.
    pub critical_ms: i64,
    /// `min_samples` for `slow_average`.
    pub min_samples: u32,
    /// Rolling window of `slow_average` (15m).
    pub window: Millis,
    /// Half-width of the band around `norm_ms` where the truth calls an
    /// alert ambiguous (ordering across connections can tip it either way).
    pub margin_ms: i64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "11.11".into(),
            start: "2026-11-10T23:45:00+08:00".into(),
            span: Millis(3_600_000),
            utc_offset_minutes: 480,
            shops: ShopsSpec::default(),
            traffic: TrafficSpec::default(),
            agents: AgentsSpec::default(),
            conversations: ConversationsSpec::default(),
            orders: OrdersSpec::default(),
            alerts: AlertsSpec::default(),
        }
    }
}

impl Default for ShopsSpec {
    fn default() -> Self {
        ShopsSpec {
            count: 200,
            agents_per_shop: 3,
            shared_seat_agents: 20,
            shops_per_shared_agent: 3,
            teams: 12,
            platforms: vec!["tb".into(), "jd".into(), "dy".into(), "ks".into()],
            popularity_sigma: 0.5,
        }
    }
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            conversations_per_shop_per_hour: 40.0,
            hourly_profile: vec![
                0.60, 0.35, 0.20, 0.12, 0.08, 0.08, 0.12, 0.25, 0.50, 0.80, 1.00, 1.00, //
                0.85, 0.90, 1.00, 1.00, 0.95, 0.90, 0.85, 0.95, 1.10, 1.20, 1.10, 0.85,
            ],
            spike: Some(SpikeSpec::default()),
            status_changes_per_agent_per_hour: 2.0,
        }
    }
}

impl Default for SpikeSpec {
    fn default() -> Self {
        SpikeSpec {
            at: "2026-11-11T00:00:00+08:00".into(),
            ramp: Millis(180_000),
            hold: Millis(900_000),
            decay: Millis(1_200_000),
            factor: 10.0,
        }
    }
}

impl Default for AgentsSpec {
    fn default() -> Self {
        AgentsSpec {
            normal_median_ms: 12_000.0,
            normal_sigma: 0.6,
            normal_max_ms: 40_000,
            slow_share: 0.03,
            slow_median_ms: 100_000.0,
            slow_sigma: 0.3,
            slow_min_ms: 75_000,
            slow_max_ms: 240_000,
            drifting_share: 0.03,
            drift_start: Millis(1_200_000),
            drift_ramp: Millis(600_000),
        }
    }
}

impl Default for ConversationsSpec {
    fn default() -> Self {
        ConversationsSpec {
            rounds_mean: 3.0,
            extra_messages_mean: 0.5,
            think_min_ms: 5_000,
            think_max_ms: 60_000,
            queue_min_ms: 300,
            queue_max_ms: 4_000,
            auto_reply_share: 0.3,
            follow_up_share: 0.3,
            transfer_share: 0.03,
            unanswered_share: 0.04,
            abandoned_in_queue_share: 0.02,
            long_wait_share: 0.5,
            short_wait_max_ms: 40_000,
            long_wait_min_ms: 75_000,
            long_wait_max_ms: 150_000,
            spam_share: 0.03,
            close_after_min_ms: 20_000,
            close_after_max_ms: 120_000,
            duplicate_share: 0.001,
        }
    }
}

impl Default for OrdersSpec {
    fn default() -> Self {
        OrdersSpec {
            conversion_share: 0.25,
            amount_median_fen: 8_900.0,
            amount_sigma: 0.8,
            silent_orders_per_shop_per_hour: 8.0,
        }
    }
}

impl Default for AlertsSpec {
    fn default() -> Self {
        AlertsSpec {
            norm_ms: 60_000,
            clear_ms: 50_000,
            critical_ms: 100_000,
            min_samples: 3,
            window: Millis(900_000),
            margin_ms: 10_000,
        }
    }
}

impl Scenario {
    /// `"11.11"` (or `"default"`) is the built-in big-sale scenario,
    /// `"ordinary"` the same desk on a day without spike; anything else is
    /// a TOML file path.
    pub fn load(spec: &str) -> Result<Scenario> {
        match spec {
            "11.11" | "default" | "double11" => Ok(Scenario::default()),
            "ordinary" => {
                let mut s = Scenario {
                    name: "ordinary".into(),
                    ..Scenario::default()
                };
                s.start = "2026-11-20T20:00:00+08:00".into();
                s.traffic.spike = None;
                Ok(s)
            }
            path => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {path}"))?;
                Scenario::from_toml(&text).with_context(|| format!("scenario {path}"))
            }
        }
    }

    /// Parses a scenario file; unknown keys are errors (typos must not pass).
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    /// The scenario as TOML, every default written out.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("scenario serializes: all fields are plain data")
    }

    /// Rejects values the generator or the ground truth cannot honour.
    pub fn check(&self) -> Result<()> {
        let a = &self.alerts;
        let g = &self.agents;
        let c = &self.conversations;
        if self.shops.count == 0 || self.shops.agents_per_shop == 0 {
            bail!("shops.count and shops.agents_per_shop must be at least 1");
        }
        if self.shops.shared_seat_agents > 0 && self.shops.shops_per_shared_agent < 2 {
            bail!("shops.shops_per_shared_agent must be at least 2");
        }
        if self.shops.platforms.is_empty() {
            bail!("shops.platforms must name at least one platform");
        }
        if self.traffic.hourly_profile.len() != 24 {
            bail!(
                "traffic.hourly_profile needs 24 values, has {}",
                self.traffic.hourly_profile.len()
            );
        }
        if self.span.0 <= 0 {
            bail!("span must be positive");
        }
        if c.queue_max_ms < c.queue_min_ms || c.think_max_ms < c.think_min_ms || c.long_wait_max_ms < c.long_wait_min_ms
        {
            bail!("a *_max_ms is below its *_min_ms");
        }
        if c.think_min_ms < 5_000 {
            bail!("conversations.think_min_ms must be at least 5000 (follow-ups come 1-4 s after an answer)");
        }
        if c.queue_max_ms + 13_000 > g.normal_max_ms {
            bail!("agents.normal_max_ms must leave room for queueing and transfers (>= queue_max_ms + 13000)");
        }
        if g.slow_min_ms > g.slow_max_ms {
            bail!("agents.slow_min_ms > agents.slow_max_ms");
        }
        let (lo, hi) = (a.norm_ms - a.margin_ms, a.norm_ms + a.margin_ms);
        for (what, v) in [
            ("agents.normal_max_ms", g.normal_max_ms),
            ("conversations.short_wait_max_ms", c.short_wait_max_ms),
        ] {
            if v >= lo {
                eprintln!(
                    "warning: {what} = {v} is not below norm_ms - margin_ms = {lo}: some alerts will be ambiguous"
                );
            }
        }
        for (what, v) in [
            ("agents.slow_min_ms", g.slow_min_ms),
            ("conversations.long_wait_min_ms", c.long_wait_min_ms),
        ] {
            if v <= hi {
                eprintln!(
                    "warning: {what} = {v} is not above norm_ms + margin_ms = {hi}: some alerts will be ambiguous"
                );
            }
        }
        if let Some(sp) = &self.traffic.spike {
            parse_rfc3339(&sp.at).context("traffic.spike.at")?;
        }
        parse_rfc3339(&self.start).context("start")?;
        Ok(())
    }
}

/// What kind of responder an agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// Log-normal around `normal_median_ms`, below the alert band.
    Normal,
    /// Above the alert band all day.
    Slow,
    /// Normal until `drift_start`, then increasingly slow.
    Drifting,
}

/// A compiled scenario: names, rosters and the rate curve.
#[derive(Debug, Clone)]
pub struct World {
    /// The source scenario.
    pub scenario: Scenario,
    /// First event time (ms since epoch) with the event clock.
    pub start_ts: i64,
    /// Shop names (`tb-0001`), index = shop number.
    pub shop_names: Vec<String>,
    /// Relative popularity of each shop.
    pub shop_weight: Vec<f64>,
    /// Agents serving each shop (dedicated first, then shared seats).
    pub shop_agents: Vec<Vec<u32>>,
    /// Agent names (`ag-0001`), index = agent number.
    pub agent_names: Vec<String>,
    /// Each agent's kind.
    pub agent_kind: Vec<AgentKind>,
    /// Shops each agent serves.
    pub agent_shops: Vec<Vec<u32>>,
    /// Team of each agent (index into `team_names`).
    pub agent_team: Vec<u32>,
    /// Team names.
    pub team_names: Vec<String>,
    /// Spike start in ms since epoch (event clock).
    pub spike_at: Option<i64>,
    /// UTC offset of the desk's time zone in ms.
    pub utc_offset_ms: i64,
}

impl World {
    /// Deals shops, agents and kinds from the scenario and `seed`.
    pub fn build(scenario: &Scenario, seed: u64) -> Result<World> {
        scenario.check()?;
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_5C3E_A410);
        let sh = &scenario.shops;
        let n_shops = sh.count as usize;
        let shop_names: Vec<String> = (0..n_shops)
            .map(|i| format!("{}-{:04}", sh.platforms[i % sh.platforms.len()], i + 1))
            .collect();
        let shop_weight: Vec<f64> = (0..n_shops)
            .map(|_| {
                if sh.popularity_sigma > 0.0 {
                    rng.lognormal(1.0, sh.popularity_sigma)
                } else {
                    1.0
                }
            })
            .collect();
        let mean_w = shop_weight.iter().sum::<f64>() / n_shops as f64;
        let shop_weight: Vec<f64> = shop_weight.iter().map(|w| w / mean_w).collect();
        let mut shop_agents = vec![Vec::new(); n_shops];
        let mut agent_shops = Vec::new();
        for (s, agents) in shop_agents.iter_mut().enumerate() {
            for _ in 0..sh.agents_per_shop {
                agents.push(agent_shops.len() as u32);
                agent_shops.push(vec![s as u32]);
            }
        }
        let per = (sh.shops_per_shared_agent as usize).min(n_shops);
        for _ in 0..sh.shared_seat_agents {
            let id = agent_shops.len() as u32;
            let mut shops: Vec<u32> = Vec::new();
            while shops.len() < per {
                let s = rng.below(n_shops as u64) as u32;
                if !shops.contains(&s) {
                    shops.push(s);
                }
            }
            shops.sort_unstable();
            for &s in &shops {
                shop_agents[s as usize].push(id);
            }
            agent_shops.push(shops);
        }
        let n_agents = agent_shops.len();
        let agent_names: Vec<String> = (0..n_agents).map(|i| format!("ag-{:04}", i + 1)).collect();
        // Deal kinds by a shuffled order so slow agents land in random shops.
        let mut order: Vec<usize> = (0..n_agents).collect();
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let count = |share: f64| -> usize {
            if share <= 0.0 {
                0
            } else {
                ((share * n_agents as f64).round() as usize).max(1)
            }
        };
        let n_slow = count(scenario.agents.slow_share);
        let n_drift = count(scenario.agents.drifting_share).min(n_agents.saturating_sub(n_slow));
        let mut agent_kind = vec![AgentKind::Normal; n_agents];
        for (k, &a) in order.iter().enumerate() {
            if k < n_slow {
                agent_kind[a] = AgentKind::Slow;
            } else if k < n_slow + n_drift {
                agent_kind[a] = AgentKind::Drifting;
            }
        }
        let n_teams = sh.teams.max(1);
        let team_names: Vec<String> = (0..n_teams).map(|i| format!("team-{:02}", i + 1)).collect();
        let agent_team: Vec<u32> = (0..n_agents).map(|a| (a as u32) % n_teams).collect();
        let spike_at = match &scenario.traffic.spike {
            Some(sp) => Some(parse_rfc3339(&sp.at)?),
            None => None,
        };
        Ok(World {
            start_ts: parse_rfc3339(&scenario.start)?,
            scenario: scenario.clone(),
            shop_names,
            shop_weight,
            shop_agents,
            agent_names,
            agent_kind,
            agent_shops,
            agent_team,
            team_names,
            spike_at,
            utc_offset_ms: scenario.utc_offset_minutes as i64 * 60_000,
        })
    }

    /// Multiplier of the day curve at event time `ts` (interpolated between
    /// hour centres, local time).
    pub fn profile(&self, ts: i64) -> f64 {
        let p = &self.scenario.traffic.hourly_profile;
        let tod = (ts + self.utc_offset_ms).rem_euclid(86_400_000) as f64 / 3_600_000.0;
        let x = tod - 0.5;
        let i = x.floor();
        let frac = x - i;
        let a = p[(i as i64).rem_euclid(24) as usize];
        let b = p[((i as i64) + 1).rem_euclid(24) as usize];
        a + (b - a) * frac
    }

    /// Spike multiplier at `ts` (1.0 outside the rush).
    pub fn spike(&self, ts: i64) -> f64 {
        let (Some(at), Some(sp)) = (self.spike_at, &self.scenario.traffic.spike) else {
            return 1.0;
        };
        let d = ts - at;
        let f = sp.factor;
        if d < 0 {
            1.0
        } else if d < sp.ramp.0 {
            1.0 + (f - 1.0) * d as f64 / sp.ramp.0.max(1) as f64
        } else if d < sp.ramp.0 + sp.hold.0 {
            f
        } else if d < sp.ramp.0 + sp.hold.0 + sp.decay.0 {
            f - (f - 1.0) * (d - sp.ramp.0 - sp.hold.0) as f64 / sp.decay.0.max(1) as f64
        } else {
            1.0
        }
    }

    /// The deskpulse config (teams and thresholds) that matches this world.
    pub fn server_config(&self) -> String {
        let a = &self.scenario.alerts;
        let mut out = format!(
            "# generated by deskpulse-loadtest for scenario {:?}\n[alerts]\nnorm_ms = {}\nclear_ms = {}\ncritical_ms = {}\nmin_samples = {}\n",
            self.scenario.name, a.norm_ms, a.clear_ms, a.critical_ms, a.min_samples
        );
        for (t, name) in self.team_names.iter().enumerate() {
            let members: Vec<String> = (0..self.agent_names.len())
                .filter(|&i| self.agent_team[i] == t as u32)
                .map(|i| format!("{:?}", self.agent_names[i]))
                .collect();
            out.push_str(&format!("\n[teams.{name}]\nagents = [{}]\n", members.join(", ")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("90m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration("250ms").unwrap(), 250);
        assert_eq!(parse_duration("1500").unwrap(), 1500);
        assert!(parse_duration("12x").is_err());
        assert!(parse_duration("12").is_ok());
        assert!(parse_duration("3m12").is_err());
        assert_eq!(format_duration(5_400_000), "1h30m");
    }

    #[test]
    fn rfc3339_matches_known_epochs() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        // 2026-11-11T00:00:00+08:00 = 2026-11-10T16:00:00Z
        assert_eq!(
            parse_rfc3339("2026-11-11T00:00:00+08:00").unwrap(),
            1_762_790_400_000 + 365 * 86_400_000
        );
        let d = days_from_civil(2026, 11, 11);
        assert_eq!(civil_from_days(d), (2026, 11, 11));
    }

    #[test]
    fn default_round_trips_through_toml_and_rejects_typos() {
        let s = Scenario::default();
        let text = s.to_toml();
        let back = Scenario::from_toml(&text).unwrap();
        assert_eq!(back.to_toml(), text);
        assert!(Scenario::from_toml("[shops]\ncuont = 3\n").is_err());
        let small = Scenario::from_toml("span = \"10m\"\n[shops]\ncount = 2\n").unwrap();
        assert_eq!(small.shops.count, 2);
        assert_eq!(small.span.0, 600_000);
        assert_eq!(small.agents.slow_min_ms, 75_000);
    }

    #[test]
    fn world_is_deterministic_and_has_shared_seats_and_kinds() {
        let s = Scenario::default();
        let a = World::build(&s, 42).unwrap();
        let b = World::build(&s, 42).unwrap();
        let c = World::build(&s, 43).unwrap();
        assert_eq!(a.agent_kind, b.agent_kind);
        assert_eq!(a.agent_shops, b.agent_shops);
        assert_ne!(a.agent_kind, c.agent_kind);
        assert_eq!(a.agent_names.len(), 200 * 3 + 20);
        assert!(a.agent_shops.iter().filter(|s| s.len() >= 2).count() == 20);
        assert!(a.agent_kind.contains(&AgentKind::Slow));
        assert!(a.agent_kind.contains(&AgentKind::Drifting));
    }

    #[test]
    fn spike_is_tenfold_after_midnight_and_one_before() {
        let w = World::build(&Scenario::default(), 1).unwrap();
        let at = w.spike_at.unwrap();
        assert_eq!(w.spike(at - 1), 1.0);
        assert!((w.spike(at + 180_000 + 1) - 10.0).abs() < 1e-9);
        assert!(w.spike(at + 90_000) > 5.0 && w.spike(at + 90_000) < 6.0);
        assert_eq!(w.spike(at + 3_000_000), 1.0);
        // Night profile is lower than evening.
        assert!(w.profile(at + 4 * 3_600_000) < w.profile(at - 3_600_000));
    }
}
