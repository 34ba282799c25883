//! The alert rules of PROTOCOL.md §4 as a state machine: measured values in,
//! raise / escalate / ack / resolve changes out. At most one active alert
//! per (agent, shop, rule); severity only goes up until the alert resolves.

use std::collections::VecDeque;
use std::hash::Hasher;

use serde::{Deserialize, Serialize};

use super::Map;
use crate::protocol::{AgentId, ShopId};

/// Alert thresholds of one (agent, shop), ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Excellent at or below this (wallboard green).
    pub target_ms: u64,
    /// The norm: slow above this; alerts raise above it.
    pub norm_ms: u64,
    /// Alerts resolve at or below this.
    pub clear_ms: u64,
    /// Alerts escalate above this.
    pub critical_ms: u64,
    /// Fewest 15m samples for `slow_average` to raise.
    pub min_samples: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            target_ms: 30_000,
            norm_ms: 60_000,
            clear_ms: 50_000,
            critical_ms: 100_000,
            min_samples: 3,
        }
    }
}

/// Which rule an alert follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// 15m rolling average response time above the norm.
    SlowAverage,
    /// A customer has waited longer than the norm.
    CustomerWaiting,
}

impl Rule {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SlowAverage => "slow_average",
            Self::CustomerWaiting => "customer_waiting",
        }
    }
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

/// An alert as the protocol shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable, URL-safe id.
    pub id: String,
    /// The rule that raised it.
    pub rule: Rule,
    /// The agent it is about.
    pub agent: AgentId,
    /// The shop it is about.
    pub shop: ShopId,
    /// Current severity.
    pub severity: Severity,
    /// The measured value at the last raise or escalation, ms.
    pub value_ms: u64,
    /// When it was raised (server clock), ms.
    pub raised_at: i64,
    /// When it resolved, ms.
    pub resolved_at: Option<i64>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// When it was acknowledged, ms.
    pub acked_at: Option<i64>,
}

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    Raised,
    Escalated,
    Acked,
    Resolved,
}

/// One change, as pushed to subscribers and webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertChange {
    /// Raised, escalated, acked or resolved.
    pub event: Transition,
    /// The alert after the change.
    pub alert: Alert,
}

/// What a rule measured for one (agent, shop) at `now`.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The value compared with the thresholds, ms.
    pub value_ms: u64,
    /// May raise (enough samples, value above the norm).
    pub raise: bool,
    /// Should resolve.
    pub resolve: bool,
}

impl Reading {
    /// `slow_average` from the 15m window's sample count and sum.
    pub fn slow_average(count: u64, sum_ms: u128, t: &Thresholds) -> Self {
        let avg = if count == 0 {
            0
        } else {
            (sum_ms as f64 / count as f64).round() as u64
        };
        let exact_avg = if count == 0 { 0.0 } else { sum_ms as f64 / count as f64 };
        Self {
            value_ms: avg,
            raise: count >= t.min_samples && count > 0 && exact_avg > t.norm_ms as f64,
            resolve: count == 0 || exact_avg <= t.clear_ms as f64,
        }
    }

    /// Whether [`AlertBook::observe`] would change anything for a key whose
    /// active alert has severity `active` (`None`: no active alert): raise,
    /// resolve or escalate. When it would not, it returns `active` and
    /// records nothing, so the engine skips the call and its lookups (two
    /// string-keyed maps; 10 % of `apply` on a desk of 20 000 agents with
    /// many alerts standing).
    pub fn moves(&self, active: Option<Severity>, t: &Thresholds) -> bool {
        match active {
            None => self.raise,
            Some(Severity::Warning) => self.resolve || self.value_ms > t.critical_ms,
            Some(Severity::Critical) => self.resolve,
        }
    }

    /// `customer_waiting` from the oldest open wait.
    pub fn customer_waiting(oldest_wait_ms: u64, t: &Thresholds) -> Self {
        Self {
            value_ms: oldest_wait_ms,
            raise: oldest_wait_ms > t.norm_ms,
            resolve: oldest_wait_ms <= t.clear_ms,
        }
    }
}

/// Every alert of a partition: the active ones by key, and a day of history.
/// The maps hash with foldhash, not SipHash: in an alert storm on a desk
/// of 20 000 agents one event in five raises or resolves an alert, and
/// each does three or four lookups here. Their serialized form is the same
/// map either way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertBook {
    by_id: Map<String, Alert>,
    active: Map<(ShopId, AgentId, Rule), String>,
    raised_per_key: Map<(ShopId, AgentId, Rule), u64>,
    history: VecDeque<(i64, String)>,
    changes: Vec<AlertChange>,
}

/// How long resolved alerts stay queryable, ms.
pub const HISTORY_MS: i64 = 24 * 3_600_000;

impl AlertBook {
    /// Applies a reading for (shop, agent, rule) at `now`.
    pub fn observe(
        &mut self,
        shop: &ShopId,
        agent: &AgentId,
        rule: Rule,
        reading: Reading,
        t: &Thresholds,
        now: i64,
    ) -> Option<Severity> {
        let key = (shop.clone(), agent.clone(), rule);
        let critical = reading.value_ms > t.critical_ms;
        let Some(id) = self.active.get(&key) else {
            if !reading.raise {
                return None;
            }
            let n = match self.raised_per_key.get_mut(&key) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => {
                    self.raised_per_key.insert(key.clone(), 1);
                    1
                }
            };
            let id = alert_id(shop, agent, rule, n);
            let alert = Alert {
                id: id.clone(),
                rule,
                agent: agent.clone(),
                shop: shop.clone(),
                severity: if critical {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                value_ms: reading.value_ms,
                raised_at: now,
                resolved_at: None,
                acked_by: None,
                acked_at: None,
            };
            let severity = alert.severity;
            self.active.insert(key, id.clone());
            self.history.push_back((now, id.clone()));
            self.by_id.insert(id, alert.clone());
            self.changes.push(AlertChange {
                event: Transition::Raised,
                alert,
            });
            return Some(severity);
        };
        let alert = self.by_id.get_mut(id).expect("active ids are in by_id");
        if reading.resolve {
            alert.resolved_at = Some(now);
            let alert = alert.clone();
            self.active.remove(&key);
            self.changes.push(AlertChange {
                event: Transition::Resolved,
                alert,
            });
            None
        } else if critical && alert.severity == Severity::Warning {
            alert.severity = Severity::Critical;
            alert.value_ms = reading.value_ms;
            let alert = alert.clone();
            self.changes.push(AlertChange {
                event: Transition::Escalated,
                alert,
            });
            Some(Severity::Critical)
        } else {
            Some(alert.severity)
        }
    }

    /// Whether (shop, agent, rule) has an active alert, and its severity.
    pub fn active_severity(&self, shop: &ShopId, agent: &AgentId, rule: Rule) -> Option<Severity> {
        let key = (shop.clone(), agent.clone(), rule);
        self.active.get(&key).map(|id| self.by_id[id].severity)
    }

    /// Acknowledges alert `id` for `by`; the first acknowledgement stays.
    pub fn ack(&mut self, id: &str, by: &str, now: i64) -> Option<Alert> {
        let alert = self.by_id.get_mut(id)?;
        if alert.acked_by.is_none() {
            alert.acked_by = Some(by.to_owned());
            alert.acked_at = Some(now);
            let alert = alert.clone();
            self.changes.push(AlertChange {
                event: Transition::Acked,
                alert: alert.clone(),
            });
            return Some(alert);
        }
        Some(alert.clone())
    }

    /// The alert with this id.
    pub fn get(&self, id: &str) -> Option<&Alert> {
        self.by_id.get(id)
    }

    /// Active alerts.
    pub fn active(&self) -> impl Iterator<Item = &Alert> {
        self.active.values().map(|id| &self.by_id[id])
    }

    /// Every alert held (active, and resolved within a day).
    pub fn all(&self) -> impl Iterator<Item = &Alert> {
        self.by_id.values()
    }

    /// Takes the changes since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<AlertChange> {
        std::mem::take(&mut self.changes)
    }

    /// Forgets resolved alerts raised more than a day before `now`.
    pub fn prune(&mut self, now: i64) {
        while let Some((raised, id)) = self.history.front() {
            if *raised > now - HISTORY_MS {
                break;
            }
            let id = id.clone();
            self.history.pop_front();
            match self.by_id.get(&id) {
                Some(a) if a.resolved_at.is_some() => {
                    self.by_id.remove(&id);
                }
                // Still active: keep it, look again in a day.
                Some(_) => self.history.push_back((now, id)),
                None => {}
            }
        }
    }
}

/// The id of the `n`-th alert of (shop, agent, rule): the same when the log
/// is replayed after a restart, so acknowledgements find their alert.
fn alert_id(shop: &ShopId, agent: &AgentId, rule: Rule, n: u64) -> String {
    #[allow(deprecated)] // SipHasher with fixed keys: the same id on every run.
    let mut h = std::hash::SipHasher::new_with_keys(0x616c_6572_7473, 7);
    h.write(shop.as_str().as_bytes());
    h.write_u8(0xff);
    h.write(agent.as_str().as_bytes());
    h.write_u8(0xff);
    h.write(rule.as_str().as_bytes());
    h.write_u64(n);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_that_does_not_move_leaves_the_book_as_it_is() {
        let t = Thresholds::default();
        let (shop, agent) = (ShopId::new("s"), AgentId::new("a"));
        let values = [
            0,
            t.clear_ms,
            t.clear_ms + 1,
            t.norm_ms,
            t.norm_ms + 1,
            t.critical_ms,
            t.critical_ms + 1,
        ];
        for start in [None, Some(t.norm_ms + 1), Some(t.critical_ms + 1)] {
            for value_ms in values {
                for (raise, resolve) in [(false, false), (true, false), (false, true)] {
                    let mut book = AlertBook::default();
                    let mut active = None;
                    if let Some(v) = start {
                        let opening = Reading {
                            value_ms: v,
                            raise: true,
                            resolve: false,
                        };
                        active = book.observe(&shop, &agent, Rule::SlowAverage, opening, &t, 0);
                    }
                    book.take_changes();
                    let reading = Reading {
                        value_ms,
                        raise,
                        resolve,
                    };
                    let after = book.observe(&shop, &agent, Rule::SlowAverage, reading, &t, 1);
                    let changed = !book.take_changes().is_empty();
                    assert_eq!(
                        reading.moves(active, &t),
                        changed,
                        "{active:?} then {reading:?}: moves() says whether observe changes the book"
                    );
                    if !changed {
                        assert_eq!(after, active);
                    }
                }
            }
        }
    }
}
