//! Publishing: at each push tick the engine thread turns changed agents,
//! shops and teams into pre-serialized views; the [`Hub`] keeps the latest
//! of each (the read model) and broadcasts the changes. Subscribers filter
//! by scope and never hold anything the engine waits on.

pub mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast;

use crate::engine::LiveState;
use crate::engine::alerts::{Alert, AlertChange, Thresholds};
use crate::engine::desk::{Desk, ShopFilter, TotalStats};
use crate::engine::window::{Window, WindowMetrics};
use crate::protocol::{AgentId, ShopId, TeamId};

/// How many published items a slow subscriber may fall behind before it is
/// told it lagged and resynchronised with a snapshot.
pub const BACKLOG: usize = 256;

/// The latest view of one agent over all its shops.
#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub agent: AgentId,
    pub shops: Vec<ShopId>,
    pub teams: Vec<TeamId>,
    /// The `AgentView` JSON.
    pub json: Arc<str>,
}

/// One agent's view restricted to one shop (for shop-scoped callers).
#[derive(Debug, Clone)]
pub struct SliceEntry {
    pub agent: AgentId,
    pub shop: ShopId,
    pub json: Arc<str>,
}

/// What changed at one push tick.
#[derive(Debug, Clone, Default)]
pub struct UpdateBatch {
    pub now: i64,
    pub agents: Vec<AgentEntry>,
    pub slices: Vec<SliceEntry>,
    pub teams: Vec<(TeamId, Arc<str>)>,
    pub shops: Vec<(ShopId, Arc<str>)>,
    pub desk: Option<Arc<str>>,
}

/// An item on the broadcast.
#[derive(Debug, Clone)]
pub enum Published {
    /// Changed views.
    Update(Arc<UpdateBatch>),
    /// Alerts changed (all the changes of one engine step: hundreds of waits
    /// can cross the norm at once, and each change in its own item would
    /// overrun [`BACKLOG`] for every subscriber).
    Alerts(Arc<Vec<AlertChange>>),
}

/// The read model: the latest view of everything.
#[derive(Debug, Default)]
pub struct ReadModel {
    pub now: i64,
    pub agents: BTreeMap<AgentId, AgentEntry>,
    pub slices: BTreeMap<(ShopId, AgentId), Arc<str>>,
    pub teams: BTreeMap<TeamId, Arc<str>>,
    pub shops: BTreeMap<ShopId, Arc<str>>,
    pub desk: Option<Arc<str>>,
    pub alerts: BTreeMap<String, Alert>,
}

/// The fan-out point: one cheap-to-clone handle.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    tx: broadcast::Sender<Published>,
    model: RwLock<ReadModel>,
    thresholds: Thresholds,
}

impl Hub {
    /// An empty hub; `thresholds` are sent to wallboards for colouring.
    pub fn new(thresholds: Thresholds) -> Self {
        let (tx, _) = broadcast::channel(BACKLOG);
        Self {
            inner: Arc::new(HubInner {
                tx,
                model: RwLock::new(ReadModel::default()),
                thresholds,
            }),
        }
    }

    /// Desk-wide thresholds.
    pub fn thresholds(&self) -> Thresholds {
        self.inner.thresholds
    }

    /// A receiver of everything published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.inner.tx.subscribe()
    }

    /// Reads the model (never across an await).
    pub fn read<R>(&self, f: impl FnOnce(&ReadModel) -> R) -> R {
        f(&self.inner.model.read().expect("no panics while holding the read model"))
    }

    /// Moves the model's `now` forward (never back) without a publish, so
    /// a snapshot taken on a quiet desk carries the current time: browsers
    /// count waits up from it.
    pub fn set_now(&self, now: i64) {
        let mut m = self
            .inner
            .model
            .write()
            .expect("no panics while holding the read model");
        m.now = m.now.max(now);
    }

    /// Stores and broadcasts changed views.
    pub fn update(&self, batch: UpdateBatch) {
        {
            let mut m = self
                .inner
                .model
                .write()
                .expect("no panics while holding the read model");
            m.now = m.now.max(batch.now);
            for a in &batch.agents {
                m.agents.insert(a.agent.clone(), a.clone());
            }
            for s in &batch.slices {
                m.slices.insert((s.shop.clone(), s.agent.clone()), s.json.clone());
            }
            for (t, j) in &batch.teams {
                m.teams.insert(t.clone(), j.clone());
            }
            for (s, j) in &batch.shops {
                m.shops.insert(s.clone(), j.clone());
            }
            if let Some(d) = &batch.desk {
                m.desk = Some(d.clone());
            }
        }
        // No subscriber is fine: the model keeps the state for the next one.
        self.inner.tx.send(Published::Update(Arc::new(batch))).ok();
    }

    /// Puts alerts that are already active (after a restart) in the model.
    pub fn seed_alerts(&self, alerts: Vec<Alert>) {
        let mut m = self
            .inner
            .model
            .write()
            .expect("no panics while holding the read model");
        for a in alerts {
            m.alerts.insert(a.id.clone(), a);
        }
    }

    /// Stores and broadcasts alert changes, in order.
    pub fn alerts(&self, changes: Vec<AlertChange>) {
        {
            let mut m = self
                .inner
                .model
                .write()
                .expect("no panics while holding the read model");
            for c in &changes {
                if c.alert.resolved_at.is_some() {
                    m.alerts.remove(&c.alert.id);
                } else {
                    m.alerts.insert(c.alert.id.clone(), c.alert.clone());
                }
            }
        }
        self.inner.tx.send(Published::Alerts(Arc::new(changes))).ok();
    }

    /// Current number of subscribers.
    pub fn subscribers(&self) -> usize {
        self.inner.tx.receiver_count()
    }
}

/// The agent view pushed to wallboards.
#[derive(Debug, Serialize)]
struct AgentView<'a> {
    agent: &'a AgentId,
    #[serde(skip_serializing_if = "Option::is_none")]
    shop: Option<&'a ShopId>,
    shops: &'a [ShopId],
    teams: &'a [TeamId],
    live: &'a LiveState,
    today: &'a WindowMetrics,
    #[serde(rename = "15m")]
    m15: &'a WindowMetrics,
    /// Average response per minute over the last hour, oldest first.
    sparkline: &'a [Option<f64>],
}

/// The figures of an agent view (all shops, or one shop's slice).
struct AgentFigures {
    live: LiveState,
    today: WindowMetrics,
    m15: WindowMetrics,
    sparkline: Vec<Option<f64>>,
}

impl AgentFigures {
    fn compute(desk: &Desk, agent: &AgentId, shop: Option<&ShopId>) -> Self {
        let filter: ShopFilter = shop.map(|s| BTreeSet::from([s.clone()]));
        let (today, live) = desk.agent_acc(agent, Window::Today, &filter);
        let (m15, _) = desk.agent_acc(agent, Window::Min15, &filter);
        Self {
            live: live.state(desk.now()),
            today: today.metrics(),
            m15: m15.metrics(),
            sparkline: desk
                .minutes(agent, &filter)
                .into_iter()
                .map(|m| m.avg_response_ms)
                .collect(),
        }
    }

    fn json(&self, agent: &AgentId, shop: Option<&ShopId>, shops: &[ShopId], teams: &[TeamId]) -> Arc<str> {
        let view = AgentView {
            agent,
            shop,
            shops,
            teams,
            live: &self.live,
            today: &self.today,
            m15: &self.m15,
            sparkline: &self.sparkline,
        };
        serde_json::to_string(&view).expect("views serialize").into()
    }
}

fn total_json(key: &str, today: &TotalStats, m15: &TotalStats) -> Arc<str> {
    let mut today_metrics = serde_json::to_value(&today.metrics).expect("metrics serialize");
    if let Some(o) = today_metrics.as_object_mut() {
        o.insert("silent_orders".into(), today.silent_orders.into());
        o.insert("silent_sales_fen".into(), today.silent_sales_fen.into());
    }
    json!({
        key: today.id,
        "agents": today.agents,
        "live": {
            "open_conversations": today.live.open_conversations,
            "waiting": today.live.waiting,
            "oldest_wait_ms": today.live.oldest_wait_ms,
            "oldest_wait_start": today.live.oldest_wait_start,
            "queued": today.queue.queued,
            "oldest_queued_ms": today.queue.oldest_queued_ms,
            "oldest_queued_start": today.queue.oldest_queued_start,
        },
        "today": today_metrics,
        "15m": m15.metrics,
    })
    .to_string()
    .into()
}

/// Turns the desk's changes into views at each push tick (engine thread).
///
/// A publish is a job computed a slice at a time ([`Publisher::step`]),
/// so the engine thread goes on applying events in between: one push never
/// stalls ingest for the tens of milliseconds a busy desk's views take.
/// Every view is computed from the live desk when its turn comes; the
/// batch goes out whole when the last one is done.
#[derive(Debug, Default)]
pub struct Publisher {
    published_once: bool,
    job: Option<Job>,
    /// A full publish was asked for while a job was under way.
    full_pending: bool,
}

#[derive(Debug)]
struct Job {
    settings: Arc<crate::engine::Settings>,
    batch: UpdateBatch,
    agents: std::collections::VecDeque<AgentId>,
    teams: BTreeSet<TeamId>,
    /// Filled from `teams` once every agent is done.
    team_queue: std::collections::VecDeque<TeamId>,
    shops: std::collections::VecDeque<ShopId>,
    desk_done: bool,
}

impl Publisher {
    /// Publishes changed views, or every view when `full` (rolling windows
    /// slide even without events), all at once.
    pub fn publish(&mut self, desk: &mut Desk, hub: &Hub, full: bool) {
        self.start(desk, full);
        while self.busy() {
            self.step(desk, hub, std::time::Duration::MAX);
        }
    }

    /// Whether a publish is under way.
    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    /// Starts a publish of what changed (everything when `full`). While one
    /// is under way a plain push waits for the next tick (the desk keeps
    /// its changes) and a full one is queued.
    pub fn start(&mut self, desk: &mut Desk, full: bool) {
        if self.job.is_some() {
            self.full_pending |= full;
            return;
        }
        let full = full || !self.published_once;
        let (dirty_agents, dirty_shops) = desk.take_dirty();
        if !full && dirty_agents.is_empty() && dirty_shops.is_empty() {
            return;
        }
        self.published_once = true;
        let (agents, shops): (BTreeSet<AgentId>, BTreeSet<ShopId>) = if full {
            (
                desk.agent_ids().into_iter().collect(),
                desk.shop_ids().into_iter().collect(),
            )
        } else {
            let mut shops = dirty_shops;
            for a in &dirty_agents {
                shops.extend(desk.shops_of(a));
            }
            (dirty_agents, shops)
        };
        let settings = desk.settings().clone();
        let teams = if full {
            settings.teams.keys().cloned().collect()
        } else {
            BTreeSet::new()
        };
        self.job = Some(Job {
            settings,
            batch: UpdateBatch::default(),
            agents: agents.into_iter().collect(),
            teams,
            team_queue: Default::default(),
            shops: shops.into_iter().collect(),
            desk_done: false,
        });
    }

    /// Computes views of the publish under way until `budget` is spent
    /// (at least one view), and sends the batch when all are done.
    pub fn step(&mut self, desk: &mut Desk, hub: &Hub, budget: std::time::Duration) {
        let Some(job) = &mut self.job else { return };
        let started = std::time::Instant::now();
        loop {
            if !job.step(desk) {
                let mut job = self.job.take().expect("under way");
                job.batch.now = desk.now();
                hub.update(job.batch);
                if std::mem::take(&mut self.full_pending) {
                    self.start(desk, true);
                }
                return;
            }
            if started.elapsed() >= budget {
                return;
            }
        }
    }
}

impl Job {
    /// Computes one view; false when none was left.
    fn step(&mut self, desk: &Desk) -> bool {
        if let Some(agent) = self.agents.pop_front() {
            let agent_shops = desk.shops_of(&agent);
            let agent_teams = self.settings.teams_of(&agent);
            self.teams.extend(agent_teams.iter().cloned());
            let whole = AgentFigures::compute(desk, &agent, None);
            let json = whole.json(&agent, None, &agent_shops, &agent_teams);
            for shop in &agent_shops {
                // An agent of one shop: the slice has the same figures.
                let slice = (agent_shops.len() > 1).then(|| AgentFigures::compute(desk, &agent, Some(shop)));
                self.batch.slices.push(SliceEntry {
                    agent: agent.clone(),
                    shop: shop.clone(),
                    json: slice.as_ref().unwrap_or(&whole).json(
                        &agent,
                        Some(shop),
                        std::slice::from_ref(shop),
                        &agent_teams,
                    ),
                });
            }
            self.batch.agents.push(AgentEntry {
                agent,
                shops: agent_shops,
                teams: agent_teams,
                json,
            });
            if self.agents.is_empty() {
                self.team_queue = std::mem::take(&mut self.teams).into_iter().collect();
            }
            return true;
        }
        if !self.teams.is_empty() {
            // A job with no agents: its teams were set at the start.
            self.team_queue = std::mem::take(&mut self.teams).into_iter().collect();
        }
        if let Some(team) = self.team_queue.pop_front() {
            if let (Some(t), Some(m)) = (
                desk.team_stats(&team, Window::Today),
                desk.team_stats(&team, Window::Min15),
            ) {
                self.batch.teams.push((team, total_json("team", &t, &m)));
            }
            return true;
        }
        if let Some(shop) = self.shops.pop_front() {
            if let (Some(t), Some(m)) = (
                desk.shop_stats(&shop, Window::Today),
                desk.shop_stats(&shop, Window::Min15),
            ) {
                self.batch.shops.push((shop, total_json("shop", &t, &m)));
            }
            return true;
        }
        if !self.desk_done {
            self.desk_done = true;
            self.batch.desk = Some(total_json(
                "desk",
                &desk.desk_stats(Window::Today),
                &desk.desk_stats(Window::Min15),
            ));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Clock, Settings};
    use crate::protocol::{Event, EventKind};

    fn desk() -> Desk {
        let mut teams = BTreeMap::new();
        teams.insert(TeamId::from("t1"), vec![AgentId::from("a0"), AgentId::from("a1")]);
        Desk::new(
            Arc::new(Settings {
                clock: Clock::Event,
                teams,
                ..Settings::default()
            }),
            2,
        )
    }

    fn message(desk: &mut Desk, n: u64, agent: u64, shop: u64) {
        let ts = 1_763_913_600_000 + n as i64 * 1000;
        desk.apply_batch(&[Event {
            id: format!("e{n}").as_str().into(),
            ts,
            shop: format!("s{shop}").as_str().into(),
            kind: EventKind::CustomerMessage {
                conversation: format!("c{n}").as_str().into(),
                customer: format!("u{n}").as_str().into(),
                agent: Some(format!("a{agent}").as_str().into()),
            },
        }]);
    }

    fn next_update(rx: &mut broadcast::Receiver<Published>) -> Arc<UpdateBatch> {
        loop {
            match rx.try_recv().expect("an update was sent") {
                Published::Update(b) => return b,
                Published::Alerts(_) => {}
            }
        }
    }

    #[test]
    fn a_push_in_slices_sends_one_batch_with_every_view_once_done() {
        let mut desk = desk();
        let hub = Hub::new(Thresholds::default());
        let mut rx = hub.subscribe();
        for n in 0..40 {
            message(&mut desk, n, n % 4, n % 3);
        }
        let mut publisher = Publisher::default();
        publisher.start(&mut desk, false);
        assert!(publisher.busy());
        let mut steps = 0;
        while publisher.busy() {
            // Nothing goes out before the last view is done.
            assert!(matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty)));
            publisher.step(&mut desk, &hub, std::time::Duration::ZERO);
            steps += 1;
        }
        let sliced = next_update(&mut rx);
        // 4 agents, 3 shops, 1 team, the desk: one view per step at least.
        assert!(steps >= 9, "{steps} steps");
        assert_eq!(sliced.agents.len(), 4);
        assert_eq!(sliced.shops.len(), 3);
        assert_eq!(sliced.teams.len(), 1);
        assert!(sliced.desk.is_some());
        // The same desk published in one go gives the same views.
        let mut again = Publisher::default();
        again.publish(&mut desk, &hub, true);
        let whole = next_update(&mut rx);
        let views = |b: &UpdateBatch| {
            let mut v: Vec<String> = b.agents.iter().map(|a| a.json.to_string()).collect();
            v.extend(b.slices.iter().map(|s| s.json.to_string()));
            v.extend(b.shops.iter().map(|(_, j)| j.to_string()));
            v.extend(b.teams.iter().map(|(_, j)| j.to_string()));
            v.sort();
            v
        };
        assert_eq!(views(&sliced), views(&whole));
        assert_eq!(sliced.desk, whole.desk);
    }

    #[test]
    fn events_applied_between_slices_reach_the_next_push() {
        let mut desk = desk();
        let hub = Hub::new(Thresholds::default());
        let mut rx = hub.subscribe();
        message(&mut desk, 0, 0, 0);
        let mut publisher = Publisher::default();
        publisher.start(&mut desk, false);
        publisher.step(&mut desk, &hub, std::time::Duration::ZERO);
        // An event for another agent lands mid-push; a plain push asked for
        // meanwhile waits, and the change is kept for it.
        message(&mut desk, 1, 7, 5);
        publisher.start(&mut desk, false);
        while publisher.busy() {
            publisher.step(&mut desk, &hub, std::time::Duration::ZERO);
        }
        let first = next_update(&mut rx);
        assert!(first.agents.iter().all(|a| a.agent.as_str() != "a7"));
        publisher.start(&mut desk, false);
        while publisher.busy() {
            publisher.step(&mut desk, &hub, std::time::Duration::ZERO);
        }
        let second = next_update(&mut rx);
        assert!(second.agents.iter().any(|a| a.agent.as_str() == "a7"));
        assert!(second.shops.iter().any(|(s, _)| s.as_str() == "s5"));
    }
}
