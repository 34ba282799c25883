//! One live-stream subscriber: a snapshot of what its scope allows, then
//! coalesced updates and alert frames. A subscriber that falls behind is told
//! it lagged and gets a fresh snapshot; one that stops reading is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::{Hub, Published, ReadModel, UpdateBatch};
use crate::config::Role;
use crate::engine::Settings;
use crate::engine::alerts::{Alert, AlertChange};
use crate::http::auth::Principal;
use crate::protocol::{AgentId, ShopId, TeamId};

/// A socket send taking longer than this drops the subscriber.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What one caller may see, resolved against the roster.
#[derive(Debug, Clone)]
pub struct Scope {
    all: bool,
    agent: Option<AgentId>,
    team_agents: BTreeSet<AgentId>,
    teams: BTreeSet<TeamId>,
    shops: BTreeSet<ShopId>,
}

impl Scope {
    /// The scope of `p` under the roster in `settings`.
    pub fn of(p: &Principal, settings: &Settings) -> Self {
        let team_agents = settings
            .teams
            .iter()
            .filter(|(t, _)| p.teams.contains(*t))
            .flat_map(|(_, m)| m.iter().cloned())
            .collect();
        Self {
            all: p.role == Role::Admin,
            agent: (p.role == Role::Agent).then(|| p.agent.clone()).flatten(),
            team_agents,
            teams: if p.role == Role::Supervisor {
                p.teams.clone()
            } else {
                BTreeSet::new()
            },
            shops: if matches!(p.role, Role::Supervisor | Role::Shop) {
                p.shops.clone()
            } else {
                BTreeSet::new()
            },
        }
    }

    /// Whether the whole agent (all shops) is visible.
    pub fn sees_agent(&self, agent: &AgentId) -> bool {
        self.all || self.agent.as_ref() == Some(agent) || self.team_agents.contains(agent)
    }

    /// Whether the (agent, shop) slice is visible (and the whole agent is not).
    pub fn sees_slice(&self, agent: &AgentId, shop: &ShopId) -> bool {
        !self.sees_agent(agent) && self.shops.contains(shop)
    }

    /// Whether a team total is visible.
    pub fn sees_team(&self, team: &TeamId) -> bool {
        self.all || self.teams.contains(team)
    }

    /// Whether a shop total is visible.
    pub fn sees_shop(&self, shop: &ShopId) -> bool {
        self.all || self.shops.contains(shop)
    }

    /// Whether some alert of `shop` can be visible: the shop is in scope,
    /// or the caller sees whole agents (who may serve any shop).
    pub fn may_see_alerts_of(&self, shop: &ShopId) -> bool {
        self.sees_shop(shop) || self.agent.is_some() || !self.team_agents.is_empty()
    }

    /// Whether the desk total is visible.
    pub fn sees_desk(&self) -> bool {
        self.all
    }

    /// Whether an alert is visible.
    pub fn sees_alert(&self, alert: &Alert) -> bool {
        self.sees_agent(&alert.agent) || self.shops.contains(&alert.shop)
    }

    /// The shops whose slice of `agent` is visible, or `None` for all of them;
    /// `Some(empty)` means the agent is not visible at all.
    pub fn shop_filter(&self, agent: &AgentId) -> Option<BTreeSet<ShopId>> {
        if self.sees_agent(agent) {
            None
        } else {
            Some(self.shops.clone())
        }
    }
}

fn push_joined(out: &mut String, items: impl Iterator<Item = Arc<str>>) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
}

/// The snapshot frame for `scope`.
pub fn snapshot_frame(model: &ReadModel, scope: &Scope, hub: &Hub) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(&format!("{{\"type\":\"snapshot\",\"now\":{},\"agents\":", model.now));
    let agents = model
        .agents
        .values()
        .filter(|a| scope.sees_agent(&a.agent))
        .map(|a| a.json.clone())
        .chain(
            model
                .slices
                .iter()
                .filter(|((shop, agent), _)| scope.sees_slice(agent, shop))
                .map(|(_, j)| j.clone()),
        );
    push_joined(&mut out, agents);
    out.push_str(",\"teams\":");
    push_joined(
        &mut out,
        model
            .teams
            .iter()
            .filter(|(t, _)| scope.sees_team(t))
            .map(|(_, j)| j.clone()),
    );
    out.push_str(",\"shops\":");
    push_joined(
        &mut out,
        model
            .shops
            .iter()
            .filter(|(s, _)| scope.sees_shop(s))
            .map(|(_, j)| j.clone()),
    );
    out.push_str(",\"desk\":");
    match (&model.desk, scope.sees_desk()) {
        (Some(d), true) => out.push_str(d),
        _ => out.push_str("null"),
    }
    let alerts: Vec<&Alert> = {
        let mut v: Vec<&Alert> = model.alerts.values().filter(|a| scope.sees_alert(a)).collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.raised_at));
        v
    };
    out.push_str(",\"alerts\":");
    out.push_str(&serde_json::to_string(&alerts).expect("alerts serialize"));
    out.push_str(",\"thresholds\":");
    out.push_str(&serde_json::to_string(&hub.thresholds()).expect("thresholds serialize"));
    out.push('}');
    out
}

/// Pending changes of one subscriber, keyed so the latest wins.
#[derive(Debug, Default)]
struct Pending {
    now: i64,
    agents: BTreeMap<(Option<ShopId>, AgentId), Arc<str>>,
    teams: BTreeMap<TeamId, Arc<str>>,
    shops: BTreeMap<ShopId, Arc<str>>,
    desk: Option<Arc<str>>,
}

impl Pending {
    fn add(&mut self, batch: &UpdateBatch, scope: &Scope) {
        self.now = batch.now;
        for a in batch.agents.iter().filter(|a| scope.sees_agent(&a.agent)) {
            self.agents.insert((None, a.agent.clone()), a.json.clone());
        }
        for s in batch.slices.iter().filter(|s| scope.sees_slice(&s.agent, &s.shop)) {
            self.agents
                .insert((Some(s.shop.clone()), s.agent.clone()), s.json.clone());
        }
        for (t, j) in batch.teams.iter().filter(|(t, _)| scope.sees_team(t)) {
            self.teams.insert(t.clone(), j.clone());
        }
        for (s, j) in batch.shops.iter().filter(|(s, _)| scope.sees_shop(s)) {
            self.shops.insert(s.clone(), j.clone());
        }
        if scope.sees_desk() && batch.desk.is_some() {
            self.desk = batch.desk.clone();
        }
    }

    fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.teams.is_empty() && self.shops.is_empty() && self.desk.is_none()
    }

    fn take_frame(&mut self) -> String {
        let p = std::mem::take(self);
        let mut out = format!("{{\"type\":\"update\",\"now\":{},\"agents\":", p.now);
        push_joined(&mut out, p.agents.into_values());
        out.push_str(",\"teams\":");
        push_joined(&mut out, p.teams.into_values());
        out.push_str(",\"shops\":");
        push_joined(&mut out, p.shops.into_values());
        out.push_str(",\"desk\":");
        match p.desk {
            Some(d) => out.push_str(&d),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }
}

/// Why a subscriber ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The client closed or the socket failed.
    Client,
    /// Sends stalled past [`SEND_TIMEOUT`].
    Stalled,
    /// The server is shutting down.
    Shutdown,
}

/// Sends an `alert` frame for each change the caller may see.
async fn send_alerts<S>(sink: &mut S, changes: &[AlertChange], scope: &Scope) -> Result<(), End>
where
    S: Sink<Message> + Unpin,
{
    for change in changes.iter().filter(|c| scope.sees_alert(&c.alert)) {
        let frame = serde_json::json!({"type": "alert", "event": change.event, "alert": change.alert}).to_string();
        send(sink, frame).await?;
    }
    Ok(())
}

async fn send<S>(sink: &mut S, text: String) -> Result<(), End>
where
    S: Sink<Message> + Unpin,
{
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(Utf8Bytes::from(text)))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Client),
        Err(_) => Err(End::Stalled),
    }
}

/// Serves one subscriber until it leaves, stalls or the server stops.
/// `interval` is the least time between two update frames (zero: forward
/// each published update at once).
pub async fn serve<S>(socket: S, hub: Hub, scope: Scope, interval: Duration, shutdown: CancellationToken) -> End
where
    S: Sink<Message> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let (mut sink, mut incoming) = socket.split();
    let mut rx = hub.subscribe();
    let snapshot = hub.read(|m| snapshot_frame(m, &scope, &hub));
    if let Err(end) = send(&mut sink, snapshot).await {
        return end;
    }
    let mut pending = Pending::default();
    // Updates go out as soon as they arrive unless one went out less than
    // `interval` ago; then what piled up goes out when `interval` is over.
    let mut last_sent = tokio::time::Instant::now() - interval;
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break End::Shutdown,
            msg = incoming.next() => match msg {
                Some(Ok(Message::Close(_))) => {
                    // Finish the closing handshake: the socket queues our
                    // close reply and sends it while we keep reading to the end.
                    tokio::time::timeout(Duration::from_secs(1), async {
                        sink.flush().await.ok();
                        while incoming.next().await.is_some() {}
                    })
                    .await
                    .ok();
                    break End::Client;
                }
                None | Some(Err(_)) => break End::Client,
                Some(Ok(_)) => {} // pings are answered by the socket; other input is ignored
            },
            _ = tokio::time::sleep_until(last_sent + interval), if !pending.is_empty() => {
                last_sent = tokio::time::Instant::now();
                let frame = pending.take_frame();
                if let Err(end) = send(&mut sink, frame).await {
                    break end;
                }
            }
            item = rx.recv() => match item {
                Ok(Published::Update(batch)) => {
                    pending.add(&batch, &scope);
                    if !pending.is_empty() && last_sent.elapsed() >= interval {
                        last_sent = tokio::time::Instant::now();
                        let frame = pending.take_frame();
                        if let Err(end) = send(&mut sink, frame).await {
                            break end;
                        }
                    }
                }
                Ok(Published::Alerts(changes)) => {
                    if let Err(end) = send_alerts(&mut sink, &changes, &scope).await {
                        break end;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    // Never a silent gap: say so, then a snapshot with every active alert.
                    pending = Pending::default();
                    let lagged = format!("{{\"type\":\"lagged\",\"missed\":{missed}}}");
                    if let Err(end) = send(&mut sink, lagged).await {
                        break end;
                    }
                    let snapshot = hub.read(|m| snapshot_frame(m, &scope, &hub));
                    if let Err(end) = send(&mut sink, snapshot).await {
                        break end;
                    }
                }
                Err(RecvError::Closed) => break End::Shutdown,
            },
        }
    };
    if end == End::Shutdown {
        let close = Message::Close(Some(CloseFrame {
            code: 1001,
            reason: Utf8Bytes::from_static("server shutting down"),
        }));
        // The client may already be gone; the close is a courtesy.
        tokio::time::timeout(Duration::from_secs(1), sink.send(close))
            .await
            .ok();
    }
    end
}
