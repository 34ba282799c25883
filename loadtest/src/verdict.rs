//! Compares the server's per-agent `today` figures and its alert frames with
//! the [`TruthReport`]; out come mismatches, precision/recall and a pass flag.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::truth::{Expect, TruthReport};

/// One figure that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub agent: String,
    pub field: String,
    pub expected: Value,
    pub got: Value,
}

/// Outcome of the stats comparison.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StatsCheck {
    /// Agents compared.
    pub agents: usize,
    /// Figures compared.
    pub figures: usize,
    /// Required figures that differ (fail the verdict).
    pub mismatches: Vec<Mismatch>,
    /// Extension figures (`auto_replies`, `transfers_*`) that differ (reported only).
    pub extension_mismatches: Vec<Mismatch>,
}

const EXACT: [&str; 8] = [
    "responses",
    "first_responses",
    "slow_responses",
    "customers",
    "replied_customers",
    "orders",
    "sales_fen",
    "paying_customers",
];
const MEANS: [&str; 2] = ["avg_response_ms", "avg_first_response_ms"];
const PERCENTILES: [&str; 4] = ["p50_ms", "p90_ms", "p99_ms", "max_ms"];
const EXTENSIONS: [&str; 3] = ["auto_replies", "transfers_in", "transfers_out"];

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Compares every agent the truth knows against `server` (agent name →
/// window-metrics object, flat as `GET /v1/agents/{id}/stats` returns it).
pub fn compare_stats(truth: &TruthReport, server: &BTreeMap<String, Value>) -> StatsCheck {
    let mut out = StatsCheck::default();
    let push = |out: &mut StatsCheck, agent: &str, field: &str, expected: Value, got: Value, ext: bool| {
        let m = Mismatch {
            agent: agent.to_string(),
            field: field.to_string(),
            expected,
            got,
        };
        if ext {
            out.extension_mismatches.push(m)
        } else {
            out.mismatches.push(m)
        }
    };
    for (agent, t) in &truth.agents {
        out.agents += 1;
        let Some(s) = server.get(agent) else {
            push(
                &mut out,
                agent,
                "(agent)",
                Value::String("present".into()),
                Value::Null,
                false,
            );
            continue;
        };
        let tv = serde_json::to_value(t).expect("AgentToday serializes: plain numbers");
        for f in EXACT {
            out.figures += 1;
            let (e, g) = (&tv[f], s.get(f).cloned().unwrap_or(Value::Null));
            if num(e) != num(&g) {
                push(&mut out, agent, f, e.clone(), g, false);
            }
        }
        for f in MEANS {
            out.figures += 1;
            let (e, g) = (&tv[f], s.get(f).cloned().unwrap_or(Value::Null));
            let ok = match (num(e), num(&g)) {
                (None, None) => e.is_null() && g.is_null(),
                (Some(a), Some(b)) => (a - b).abs() <= 0.01 + a.abs() * 1e-9,
                _ => false,
            };
            if !ok {
                push(&mut out, agent, f, e.clone(), g, false);
            }
        }
        for f in PERCENTILES {
            out.figures += 1;
            let (e, g) = (&tv[f], s.get(f).cloned().unwrap_or(Value::Null));
            let ok = match (num(e), num(&g)) {
                (None, None) => e.is_null() && g.is_null(),
                (Some(a), Some(b)) => (a - b).abs() <= (a.abs() * 0.01).max(100.0),
                _ => false,
            };
            if !ok {
                push(&mut out, agent, f, e.clone(), g, false);
            }
        }
        for f in EXTENSIONS {
            if let Some(g) = s.get(f)
                && num(&tv[f]) != num(g)
            {
                push(&mut out, agent, f, tv[f].clone(), g.clone(), true);
            }
        }
    }
    for agent in server.keys() {
        if !truth.agents.contains_key(agent) {
            push(
                &mut out,
                agent,
                "(agent)",
                Value::Null,
                Value::String("unexpected agent".into()),
                false,
            );
        }
    }
    out
}

/// One alert the server raised, as seen on the stream.
#[derive(Debug, Clone, Serialize)]
pub struct Raised {
    pub agent: String,
    pub shop: String,
    pub rule: String,
    /// `raised_at` from the alert object (server clock).
    pub raised_at: i64,
    /// When the frame arrived, µs since the run started.
    pub arrived_us: u64,
}

/// Precision, recall and delay of the alert frames against the truth.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AlertCheck {
    /// Keys the truth says must alert.
    pub expected: usize,
    /// Keys in the ambiguous band (not scored).
    pub ambiguous: usize,
    /// Distinct keys raised.
    pub raised: usize,
    pub true_positives: usize,
    pub false_positives: Vec<String>,
    pub missed: Vec<String>,
    pub precision: f64,
    pub recall: f64,
    /// `raised_at − first crossing` per matched key, event-time ms.
    pub delays_event_ms: Vec<i64>,
    /// p50 / p99 / max of `delays_event_ms`.
    pub delay_event_ms_p50_p99_max: Option<(i64, i64, i64)>,
    /// Matched keys per rule.
    pub by_rule: BTreeMap<String, (usize, usize)>,
}

/// Scores the first raise per (agent, shop, rule).
pub fn score_alerts(truth: &TruthReport, raised: &[Raised]) -> AlertCheck {
    let mut first: BTreeMap<(String, String, String), &Raised> = BTreeMap::new();
    for r in raised {
        first
            .entry((r.agent.clone(), r.shop.clone(), r.rule.clone()))
            .or_insert(r);
    }
    let mut out = AlertCheck {
        raised: first.len(),
        ..Default::default()
    };
    let mut expect: BTreeMap<(String, String, String), (Expect, Option<i64>)> = BTreeMap::new();
    for a in &truth.alerts {
        expect.insert(
            (a.agent.clone(), a.shop.clone(), a.rule.to_string()),
            (a.expect, a.first_cross),
        );
    }
    let mut yes: BTreeSet<&(String, String, String)> = BTreeSet::new();
    for (k, (e, _)) in &expect {
        match e {
            Expect::Yes => {
                out.expected += 1;
                yes.insert(k);
            }
            Expect::Ambiguous => out.ambiguous += 1,
            Expect::No => {}
        }
    }
    for (k, r) in &first {
        let label = format!("{}/{}/{}", k.0, k.1, k.2);
        match expect.get(k) {
            Some((Expect::Yes, cross)) => {
                out.true_positives += 1;
                if let Some(c) = cross {
                    out.delays_event_ms.push(r.raised_at - c);
                }
                out.by_rule.entry(k.2.clone()).or_default().0 += 1;
            }
            Some((Expect::Ambiguous, _)) => {}
            _ => out.false_positives.push(label),
        }
    }
    for k in yes {
        if !first.contains_key(k) {
            out.missed.push(format!("{}/{}/{}", k.0, k.1, k.2));
            out.by_rule.entry(k.2.clone()).or_default().1 += 1;
        }
    }
    let mut d = out.delays_event_ms.clone();
    d.sort_unstable();
    if !d.is_empty() {
        let at = |q: f64| d[((q * d.len() as f64).ceil() as usize).clamp(1, d.len()) - 1];
        out.delay_event_ms_p50_p99_max = Some((at(0.5), at(0.99), d[d.len() - 1]));
    }
    let fp = out.false_positives.len();
    out.precision = if out.true_positives + fp == 0 {
        1.0
    } else {
        out.true_positives as f64 / (out.true_positives + fp) as f64
    };
    out.recall = if out.expected == 0 {
        1.0
    } else {
        out.true_positives as f64 / out.expected as f64
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::truth::{AgentToday, AlertTruth};
    use serde_json::json;

    fn truth() -> TruthReport {
        let mut agents = BTreeMap::new();
        agents.insert(
            "a1".to_string(),
            AgentToday {
                responses: 3,
                avg_response_ms: Some(10_000.0),
                p50_ms: Some(9_000),
                p90_ms: Some(20_000),
                p99_ms: Some(20_000),
                max_ms: Some(20_000),
                first_responses: 1,
                avg_first_response_ms: Some(20_000.0),
                slow_responses: 0,
                customers: 2,
                replied_customers: 1,
                orders: 1,
                sales_fen: 100,
                paying_customers: 1,
                auto_replies: 0,
                transfers_in: 0,
                transfers_out: 0,
            },
        );
        let alerts = vec![
            AlertTruth {
                agent: "a1".into(),
                shop: "s".into(),
                rule: "customer_waiting",
                expect: Expect::Yes,
                peak_ms: 80_000.0,
                first_cross: Some(1000),
            },
            AlertTruth {
                agent: "a2".into(),
                shop: "s".into(),
                rule: "customer_waiting",
                expect: Expect::Ambiguous,
                peak_ms: 61_000.0,
                first_cross: Some(1000),
            },
            AlertTruth {
                agent: "a3".into(),
                shop: "s".into(),
                rule: "customer_waiting",
                expect: Expect::Yes,
                peak_ms: 90_000.0,
                first_cross: Some(1000),
            },
        ];
        TruthReport {
            now: 0,
            day: 0,
            events: 0,
            agents,
            alerts,
            silent: BTreeMap::new(),
        }
    }

    fn server(p99: u64, customers: u64) -> BTreeMap<String, Value> {
        let mut m = BTreeMap::new();
        m.insert(
            "a1".to_string(),
            json!({"responses":3,"avg_response_ms":10000.0,"p50_ms":9050,"p90_ms":20000,"p99_ms":p99,"max_ms":20000,
                   "first_responses":1,"avg_first_response_ms":20000.0,"slow_responses":0,"customers":customers,
                   "replied_customers":1,"orders":1,"sales_fen":100,"paying_customers":1,"auto_replies":0}),
        );
        m
    }

    #[test]
    fn stats_match_within_tolerance_and_fail_outside() {
        let t = truth();
        assert!(compare_stats(&t, &server(20_150, 2)).mismatches.is_empty());
        let bad = compare_stats(&t, &server(20_300, 3));
        let fields: Vec<&str> = bad.mismatches.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(fields, vec!["customers", "p99_ms"]);
        assert!(!compare_stats(&t, &BTreeMap::new()).mismatches.is_empty());
    }

    #[test]
    fn alert_scoring_counts_fp_fn_and_skips_ambiguous() {
        let t = truth();
        let r = |agent: &str| Raised {
            agent: agent.into(),
            shop: "s".into(),
            rule: "customer_waiting".into(),
            raised_at: 1500,
            arrived_us: 0,
        };
        let s = score_alerts(&t, &[r("a1"), r("a2"), r("a9")]);
        assert_eq!((s.expected, s.true_positives, s.ambiguous), (2, 1, 1));
        assert_eq!(s.false_positives, vec!["a9/s/customer_waiting".to_string()]);
        assert_eq!(s.missed, vec!["a3/s/customer_waiting".to_string()]);
        assert_eq!(s.precision, 0.5);
        assert_eq!(s.recall, 0.5);
        assert_eq!(s.delays_event_ms, vec![500]);
    }
}
