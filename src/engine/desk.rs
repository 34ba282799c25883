//! A desk is a set of engine partitions, each owning a disjoint set of shops,
//! and the queries that merge them. Events route to their shop's partition;
//! `agent.status` (which applies in every shop) goes to the owner first and,
//! if new, to the others. Still pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::alerts::{Alert, AlertChange};
use super::dedup::{Dedup, Id, Key};
use super::window::{MarkKind, Window, WindowAcc, WindowMetrics};
use super::{AgentStats, Applied, Engine, LiveAcc, LiveState, OpenWait, QueueState, Settings};
use crate::protocol::{AgentId, Event, EventKind, ShopId, TeamId};

/// Which shops of an agent a view may include; `None` means all.
pub type ShopFilter = Option<BTreeSet<ShopId>>;

/// Stats of a team, shop or the whole desk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TotalStats {
    /// `team`, `shop` or `desk`.
    pub scope: &'static str,
    /// The team or shop id (`desk` for the desk).
    pub id: String,
    pub window: Window,
    pub now: i64,
    /// Agents counted.
    pub agents: u64,
    #[serde(flatten)]
    pub metrics: WindowMetrics,
    pub silent_orders: u64,
    pub silent_sales_fen: u64,
    #[serde(flatten)]
    pub live: LiveState,
    #[serde(flatten)]
    pub queue: QueueState,
}

/// The partitions of one node.
#[derive(Debug, Clone)]
pub struct Desk {
    parts: Vec<Engine>,
    settings: Arc<Settings>,
}

/// A desk's duplicate decisions, taken ahead of the desk: the node's log
/// thread answers each event "accepted" or "duplicate" from this copy, so
/// an acknowledgement never waits for the engine. It holds a copy of each
/// partition's dedup set and sees the same events in the same order, so
/// it decides exactly as the partitions will when they apply them.
#[derive(Debug, Clone)]
pub struct Admission {
    parts: Vec<Dedup>,
}

impl Admission {
    /// Whether `event` is new (and now remembered) or a duplicate. Each set
    /// records what its partition's own set records, so their 24 h
    /// generations move alike: a new `agent.status` reaches every set.
    pub fn admit(&mut self, event: &Event) -> Applied {
        let n = self.parts.len();
        let owner = partition_of(&event.shop, n);
        let id = Id::event(event.shop.as_str(), event.id.as_str());
        let key = Key::of(id);
        if !self.parts[owner].insert(id, &key, event.ts) {
            return Applied::Duplicate;
        }
        if reaches_every_partition(event) {
            for (i, part) in self.parts.iter_mut().enumerate() {
                if i != owner {
                    part.insert(id, &key, event.ts);
                }
            }
        }
        Applied::Accepted
    }
}

/// Whether an event, once its own partition accepted it, is applied in
/// every other partition too: a new `agent.status` holds in every shop.
/// The desk ([`Desk::apply`]) and its [`Admission`] both route by this.
fn reaches_every_partition(event: &Event) -> bool {
    matches!(event.kind, EventKind::Status { .. })
}

/// A stable partition index for a shop.
pub fn partition_of(shop: &ShopId, n: usize) -> usize {
    (super::dedup::fingerprint(shop.as_str(), "") as u64 % n as u64) as usize
}

impl Desk {
    /// `n` empty partitions (at least one).
    pub fn new(settings: Arc<Settings>, n: usize) -> Self {
        let parts = (0..n.max(1)).map(|_| Engine::new(settings.clone())).collect();
        Self { parts, settings }
    }

    /// Every partition's state as one snapshot body.
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_pieces().concat()
    }

    /// The snapshot body in pieces, whose concatenation is
    /// [`Desk::snapshot`]: the postcard form of the partitions' byte
    /// vectors (a count, then each length and its bytes), without copying
    /// hundreds of MiB of partition state into one buffer.
    pub fn snapshot_pieces(&self) -> Vec<Vec<u8>> {
        let varint = |n: usize| postcard::to_stdvec(&(n as u64)).expect("an integer serializes");
        let mut pieces = vec![varint(self.parts.len())];
        for part in &self.parts {
            let body = part.snapshot();
            pieces.push(varint(body.len()));
            pieces.push(body);
        }
        pieces
    }

    /// A desk restored from a snapshot body (with the snapshot's partition count).
    pub fn restore(settings: Arc<Settings>, bytes: &[u8]) -> Result<Self, postcard::Error> {
        let parts: Vec<Vec<u8>> = postcard::from_bytes(bytes)?;
        let parts = parts
            .iter()
            .map(|b| Engine::restore(settings.clone(), b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { parts, settings })
    }

    /// A copy of the partitions' duplicate decisions so far, to take the
    /// next ones ahead of the desk (see [`Admission`]).
    pub fn admission(&self) -> Admission {
        Admission {
            parts: self.parts.iter().map(|p| p.dedup().clone()).collect(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// The partitions.
    pub fn parts(&self) -> &[Engine] {
        &self.parts
    }

    /// Mutable partitions (restoring snapshots).
    pub fn parts_mut(&mut self) -> &mut [Engine] {
        &mut self.parts
    }

    /// Applies one event in its partition.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let applied = self.route(event);
        self.settle();
        applied
    }

    /// Applies a batch that arrived at one instant, judging the wait rules
    /// once at the end (wall clock). With the event clock each event is
    /// judged on its own, as in replay.
    pub fn apply_batch(&mut self, events: &[Event]) -> Vec<Applied> {
        if let [one] = self.parts.as_mut_slice() {
            return one.apply_batch(events);
        }
        if self.settings.clock == super::Clock::Event {
            return events.iter().map(|e| self.apply(e)).collect();
        }
        let out = events.iter().map(|e| self.route(e)).collect();
        self.settle();
        out
    }

    fn route(&mut self, event: &Event) -> Applied {
        let n = self.parts.len();
        let owner = partition_of(&event.shop, n);
        let applied = self.parts[owner].apply_deferred(event);
        if applied == Applied::Accepted && reaches_every_partition(event) && n > 1 {
            for (i, p) in self.parts.iter_mut().enumerate() {
                if i != owner {
                    p.apply_deferred(event);
                }
            }
        }
        applied
    }

    fn settle(&mut self) {
        for p in &mut self.parts {
            p.settle();
        }
    }

    /// Moves every partition's clock to `now`.
    pub fn tick(&mut self, now: i64) {
        for p in &mut self.parts {
            p.tick(now);
        }
    }

    /// The desk's `now`: the latest of the partitions'.
    pub fn now(&self) -> i64 {
        self.parts.iter().map(Engine::now).max().unwrap_or(0)
    }

    /// Events applied across partitions (status events count once per partition).
    pub fn applied(&self) -> u64 {
        self.parts.iter().map(Engine::applied).sum()
    }

    /// Agents known anywhere, sorted; roster agents included.
    pub fn agent_ids(&self) -> Vec<AgentId> {
        let mut set: BTreeSet<AgentId> = self.parts.iter().flat_map(Engine::agent_ids).collect();
        for members in self.settings.teams.values() {
            set.extend(members.iter().cloned());
        }
        set.into_iter().collect()
    }

    /// Shops known anywhere, sorted.
    pub fn shop_ids(&self) -> Vec<ShopId> {
        let set: BTreeSet<ShopId> = self.parts.iter().flat_map(Engine::shop_ids).collect();
        set.into_iter().collect()
    }

    /// Whether an event has named `shop` (its own partition knows it).
    pub fn has_shop(&self, shop: &ShopId) -> bool {
        self.parts[partition_of(shop, self.parts.len())].has_shop(shop)
    }

    /// Shops an agent has state in.
    pub fn shops_of(&self, agent: &AgentId) -> Vec<ShopId> {
        let set: BTreeSet<ShopId> = self.parts.iter().flat_map(|p| p.shops_of(agent)).collect();
        set.into_iter().collect()
    }

    /// Whether the agent is known (seen in an event or listed in a team).
    pub fn knows_agent(&self, agent: &AgentId) -> bool {
        self.settings.teams.values().any(|m| m.contains(agent)) || self.parts.iter().any(|p| p.knows(agent))
    }

    /// An agent's merged window total and live state over the allowed shops.
    pub fn agent_acc(&self, agent: &AgentId, window: Window, filter: &ShopFilter) -> (WindowAcc, LiveAcc) {
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc::default();
        for p in &self.parts {
            match filter {
                None => {
                    if let Some((a, l)) = p.agent_acc(agent, window, None) {
                        acc.merge(&a);
                        live.merge(&l);
                    }
                }
                Some(allowed) => {
                    for shop in p.shops_of(agent).iter().filter(|s| allowed.contains(*s)) {
                        if let Some((a, l)) = p.agent_acc(agent, window, Some(shop)) {
                            acc.merge(&a);
                            live.merge(&l);
                        }
                    }
                    if live.status.is_none() {
                        live.status = p.agent_status(agent);
                    }
                }
            }
        }
        (acc, live)
    }

    /// The stats object of an agent; `shop` narrows to one shop's slice.
    pub fn agent_stats(
        &self,
        agent: &AgentId,
        window: Window,
        shop: Option<&ShopId>,
        filter: &ShopFilter,
    ) -> AgentStats {
        let filter = match shop {
            Some(s) => Some(filter.as_ref().map_or_else(
                || BTreeSet::from([s.clone()]),
                |f| f.iter().filter(|x| *x == s).cloned().collect(),
            )),
            None => filter.clone(),
        };
        let (acc, live) = self.agent_acc(agent, window, &filter);
        let now = self.now();
        let shops: Vec<ShopId> = self
            .shops_of(agent)
            .into_iter()
            .filter(|s| filter.as_ref().is_none_or(|f| f.contains(s)))
            .collect();
        // A slice of one shop names it, asked for or not (a merchant's view).
        let shop = match (shop, &filter, &shops[..]) {
            (Some(s), _, _) => Some(s.clone()),
            (None, Some(_), [only]) => Some(only.clone()),
            _ => None,
        };
        AgentStats {
            agent: agent.clone(),
            window,
            now,
            shop,
            shops,
            teams: self.settings.teams_of(agent),
            metrics: acc.metrics(),
            live: live.state(now),
        }
    }

    /// A shop's total.
    pub fn shop_stats(&self, shop: &ShopId, window: Window) -> Option<TotalStats> {
        let p = &self.parts[partition_of(shop, self.parts.len())];
        let (acc, live) = p.shop_acc(shop, window)?;
        let agents = p.shop_agent_count(shop) as u64;
        Some(self.total("shop", shop.to_string(), window, agents, &acc, &live))
    }

    /// A team's total over its agents (all their shops).
    pub fn team_stats(&self, team: &TeamId, window: Window) -> Option<TotalStats> {
        let members = self.settings.teams.get(team)?;
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc::default();
        for agent in members {
            let (a, l) = self.agent_acc(agent, window, &None);
            acc.merge(&a);
            live.merge(&LiveAcc { status: None, ..l });
        }
        Some(self.total("team", team.to_string(), window, members.len() as u64, &acc, &live))
    }

    /// The whole desk's total.
    pub fn desk_stats(&self, window: Window) -> TotalStats {
        let mut acc = WindowAcc::default();
        let mut live = LiveAcc::default();
        for p in &self.parts {
            for shop in p.shop_ids() {
                if let Some((a, l)) = p.shop_acc(&shop, window) {
                    acc.merge(&a);
                    live.merge(&l);
                }
            }
        }
        let agents = self.agent_ids().len() as u64;
        self.total("desk", "desk".into(), window, agents, &acc, &live)
    }

    fn total(
        &self,
        scope: &'static str,
        id: String,
        window: Window,
        agents: u64,
        acc: &WindowAcc,
        live: &LiveAcc,
    ) -> TotalStats {
        let now = self.now();
        TotalStats {
            scope,
            id,
            window,
            now,
            agents,
            metrics: acc.metrics(),
            silent_orders: acc.tally.silent_orders,
            silent_sales_fen: acc.tally.silent_sales_fen,
            live: live.state(now),
            queue: live.queue(now),
        }
    }

    /// Open waits of an agent over the allowed shops, oldest first.
    pub fn open_waits(&self, agent: &AgentId, filter: &ShopFilter) -> Vec<OpenWait> {
        let mut v: Vec<OpenWait> = self
            .parts
            .iter()
            .flat_map(|p| p.open_waits(Some(agent), None))
            .filter(|w| filter.as_ref().is_none_or(|f| f.contains(&w.shop)))
            .collect();
        v.sort_by(|a, b| (a.since, &a.shop, &a.conversation).cmp(&(b.since, &b.shop, &b.conversation)));
        v
    }

    /// Per-minute response count and average over the last hour (60 buckets,
    /// oldest first) for the allowed shops.
    pub fn minutes(&self, agent: &AgentId, filter: &ShopFilter) -> Vec<MinuteStat> {
        let now = self.now();
        let this_minute = now.div_euclid(60_000);
        let mut out: Vec<MinuteStat> = (0..60)
            .map(|i| MinuteStat {
                minute_start: (this_minute - 59 + i) * 60_000,
                responses: 0,
                avg_response_ms: None,
            })
            .collect();
        let mut sums = [0u64; 60];
        for p in &self.parts {
            for shop in p.shops_of(agent) {
                if filter.as_ref().is_some_and(|f| !f.contains(&shop)) {
                    continue;
                }
                for m in p.agent_recent_marks_in(agent, &shop) {
                    let MarkKind::Response { .. } = m.kind() else { continue };
                    let idx = m.ts().div_euclid(60_000) - (this_minute - 59);
                    if let Ok(i) = usize::try_from(idx)
                        && i < 60
                    {
                        out[i].responses += 1;
                        sums[i] += m.value;
                    }
                }
            }
        }
        for (o, s) in out.iter_mut().zip(sums) {
            o.avg_response_ms = (o.responses > 0).then(|| s as f64 / o.responses as f64);
        }
        out
    }

    /// Today's response-time histogram for display: counts per bucket.
    pub fn histogram(&self, agent: &AgentId, filter: &ShopFilter) -> Vec<HistogramBucket> {
        const EDGES_S: [u64; 13] = [0, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 86_400];
        let edges: Vec<u64> = EDGES_S.iter().map(|s| s * 1000).collect();
        let mut counts = vec![0u64; edges.len() - 1];
        for p in &self.parts {
            for shop in p.shops_of(agent) {
                if filter.as_ref().is_some_and(|f| !f.contains(&shop)) {
                    continue;
                }
                if let Some(dist) = p.agent_day_dist(agent, &shop) {
                    for (c, n) in counts.iter_mut().zip(dist.buckets(&edges)) {
                        *c += n;
                    }
                }
            }
        }
        edges
            .windows(2)
            .zip(counts)
            .map(|(w, count)| HistogramBucket {
                from_ms: w[0],
                to_ms: w[1],
                count,
            })
            .collect()
    }

    /// Active alerts, newest first.
    pub fn active_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.parts.iter().flat_map(Engine::active_alerts).collect();
        v.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Every alert held, newest first.
    pub fn all_alerts(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.parts.iter().flat_map(Engine::all_alerts).collect();
        v.sort_by(|a, b| b.raised_at.cmp(&a.raised_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// The alert with this id.
    pub fn alert(&self, id: &str) -> Option<Alert> {
        self.parts.iter().find_map(|p| p.alert(id).cloned())
    }

    /// Acknowledges an alert; `None` if unknown.
    pub fn ack_alert(&mut self, id: &str, by: &str) -> Option<Alert> {
        self.parts
            .iter_mut()
            .find_map(|p| p.alert(id).is_some().then(|| p.ack_alert(id, by)).flatten())
    }

    /// Alert changes of every partition since the last call.
    pub fn take_alert_changes(&mut self) -> Vec<AlertChange> {
        self.parts.iter_mut().flat_map(Engine::take_alert_changes).collect()
    }

    /// Agents and shops changed since the last call.
    pub fn take_dirty(&mut self) -> (BTreeSet<AgentId>, BTreeSet<ShopId>) {
        let mut agents = BTreeSet::new();
        let mut shops = BTreeSet::new();
        for p in &mut self.parts {
            let (a, s) = p.take_dirty();
            agents.extend(a);
            shops.extend(s);
        }
        (agents, shops)
    }

    /// Teams each agent is in, for the roster.
    pub fn roster(&self) -> &BTreeMap<TeamId, Vec<AgentId>> {
        &self.settings.teams
    }
}

/// One minute of an agent's last hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinuteStat {
    /// Start of the minute, ms.
    pub minute_start: i64,
    pub responses: u64,
    pub avg_response_ms: Option<f64>,
}

/// One bar of the response-time histogram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistogramBucket {
    pub from_ms: u64,
    pub to_ms: u64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Clock;
    use crate::protocol::AgentStatus;

    #[test]
    fn snapshot_pieces_make_the_postcard_body_of_the_partitions() {
        let mut desk = Desk::new(Arc::new(Settings::default()), 3);
        for k in 0..400 {
            desk.apply(&event(k));
        }
        let parts: Vec<Vec<u8>> = desk.parts.iter().map(Engine::snapshot).collect();
        assert!(parts.iter().any(|p| p.len() > 127), "a length takes two varint bytes");
        assert!(
            desk.snapshot() == postcard::to_stdvec(&parts).unwrap(),
            "the same bytes"
        );
        let back = Desk::restore(desk.settings().clone(), &desk.snapshot()).unwrap();
        assert_eq!(back.parts().len(), 3);
    }

    fn event(k: u64) -> Event {
        let shop = ShopId::new(&format!("s{}", k % 7));
        let kind = if k.is_multiple_of(5) {
            EventKind::Status {
                agent: AgentId::new(&format!("a{}", k % 3)),
                status: AgentStatus::Online,
            }
        } else {
            EventKind::Close {
                conversation: format!("c{k}").as_str().into(),
            }
        };
        Event {
            // Ids repeat, within a batch and across the 24 h generations.
            id: format!("e{}", k % 40).as_str().into(),
            ts: 1_762_790_400_000 + k as i64 * 5 * 60_000,
            shop,
            kind,
        }
    }

    #[test]
    fn admission_decides_duplicates_as_the_partitions_will() {
        let settings = Arc::new(Settings {
            clock: Clock::Event,
            ..Settings::default()
        });
        let mut desk = Desk::new(settings, 3);
        // Taken mid-way, as the node takes it after recovery.
        for k in 0..50 {
            desk.apply(&event(k));
        }
        let mut admission = desk.admission();
        let mut duplicates = 0;
        for k in 50..900 {
            let e = event(k);
            let decided = admission.admit(&e);
            assert_eq!(decided, desk.apply(&e), "event {k}");
            duplicates += usize::from(decided == Applied::Duplicate);
        }
        assert!(duplicates > 0 && duplicates < 850, "both outcomes occur: {duplicates}");
    }

    #[test]
    fn a_status_moves_the_generations_of_every_partitions_admission() {
        const H: i64 = 3_600_000;
        let t0 = 1_762_790_400_000;
        let settings = Arc::new(Settings {
            clock: Clock::Event,
            ..Settings::default()
        });
        let mut desk = Desk::new(settings, 2);
        let mut admission = desk.admission();
        let shop_in = |part: usize| {
            (0..)
                .map(|i| ShopId::new(&format!("shop-{i}")))
                .find(|s| partition_of(s, 2) == part)
                .expect("some shop lands in each partition")
        };
        let (x, y) = (shop_in(0), shop_in(1));
        let status = Event {
            id: "st".into(),
            ts: t0,
            shop: x,
            kind: EventKind::Status {
                agent: AgentId::new("a1"),
                status: AgentStatus::Online,
            },
        };
        let close = |id: &str, ts: i64| Event {
            id: id.into(),
            ts,
            shop: y.clone(),
            kind: EventKind::Close {
                conversation: "c".into(),
            },
        };
        // The status starts partition 1's first generation at t0; "y1" is
        // then forgotten two rotations later, at t0 + 49 h.
        for e in [
            status,
            close("y1", t0 + 23 * H),
            close("y2", t0 + 25 * H),
            close("y1", t0 + 49 * H + H / 2),
        ] {
            assert_eq!(admission.admit(&e), desk.apply(&e), "{} at {}", e.id, e.ts);
        }
    }
}
