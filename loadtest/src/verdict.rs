//! Compares the server's per-agent `today` figures and its alert frames with
//! the [`TruthReport`]; out come mismatches, precision/recall and a pass flag.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::truth::{Expect, TruthReport, WaitSpan};

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
    /// Unexpected `customer_waiting` raises explained by cross-connection
    /// arrival order (see [`Interleave`]); neither true nor false positives.
    /// Always 0 when the rule does not apply (one connection, wall clock).
    pub interleaved: usize,
    /// The first few of them.
    pub interleaved_examples: Vec<InterleavedAlert>,
    /// Largest implied skew among them, scenario ms and wall ms.
    pub interleaved_skew_max_event_ms: Option<i64>,
    pub interleaved_skew_max_wall_ms: Option<f64>,
    /// Unexpected raises that had a matching wait but an implied wall skew
    /// over the bound; they stay in `false_positives`.
    pub interleaved_over_bound: usize,
    /// The rule's parameters, `null` when it did not apply.
    pub interleave_rule: Option<Interleave>,
}

/// When an unexpected `customer_waiting` alert may be put down to the order
/// in which events of different ingest connections reached the server.
///
/// With `--clock event` the server's `now` is the largest `ts` it accepted.
/// With several ingest connections, events interleave at the server in an
/// order slightly different from the generator's single order, so `now` can
/// pass `start + norm_ms` of a wait before the event that ended the wait (sent
/// on another connection, with a smaller `ts`) is applied. An unexpected
/// raise of (agent, shop) is *interleaved* when the truth has an ended wait
/// of that agent in that shop with `start + norm_ms < raised_at` (the server's
/// clock was past the threshold) and `closed_at <= raised_at` (in generation
/// order the wait had already ended by that `now`), and the implied skew
/// `raised_at − closed_at` (of the best such wait, the one that ended last),
/// divided by `compression`, is at most `max_wall_skew_ms`. Only built for
/// runs with more than one ingest connection on the event clock.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Interleave {
    /// `norm_ms` of `customer_waiting`.
    pub norm_ms: i64,
    /// Scenario ms per wall ms.
    pub compression: f64,
    /// Largest wall skew accepted: max ack latency (from intended send
    /// time) + 1 s.
    pub max_wall_skew_ms: f64,
}

/// One raise classified as interleaved.
#[derive(Debug, Clone, Serialize)]
pub struct InterleavedAlert {
    pub key: String,
    pub raised_at: i64,
    pub wait_start: i64,
    pub closed_at: i64,
    /// `raised_at − closed_at`, scenario ms.
    pub skew_event_ms: i64,
    /// The same in wall ms (÷ compression).
    pub skew_wall_ms: f64,
}

/// Outcome of [`Interleave::judge`] for one unexpected raise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Judged {
    /// No ended wait explains it: a false positive.
    Unexplained,
    /// A wait explains it, but only with a skew over the bound: a false positive.
    OverBound(WaitSpan, i64, f64),
    /// Explained by arrival order: (wait, skew event ms, skew wall ms).
    Interleaved(WaitSpan, i64, f64),
}

impl Interleave {
    /// Judges an unexpected `customer_waiting` raise at `raised_at` against
    /// the ended waits of its (agent, shop).
    pub fn judge(&self, spans: &[WaitSpan], raised_at: i64) -> Judged {
        let best = spans
            .iter()
            .filter(|w| w.start + self.norm_ms < raised_at && w.closed_at <= raised_at)
            .max_by_key(|w| w.closed_at);
        let Some(&w) = best else {
            return Judged::Unexplained;
        };
        let skew = raised_at - w.closed_at;
        let wall = skew as f64 / self.compression;
        if wall <= self.max_wall_skew_ms {
            Judged::Interleaved(w, skew, wall)
        } else {
            Judged::OverBound(w, skew, wall)
        }
    }
}

/// Examples of interleaved raises kept in the report.
const INTERLEAVED_EXAMPLES: usize = 5;

/// Scores the first raise per (agent, shop, rule). `interleave` is `Some`
/// only for multi-connection event-clock runs; with `None` every raise the
/// truth did not expect is a false positive.
pub fn score_alerts(truth: &TruthReport, raised: &[Raised], interleave: Option<Interleave>) -> AlertCheck {
    let mut first: BTreeMap<(String, String, String), &Raised> = BTreeMap::new();
    for r in raised {
        first
            .entry((r.agent.clone(), r.shop.clone(), r.rule.clone()))
            .or_insert(r);
    }
    let mut out = AlertCheck {
        raised: first.len(),
        interleave_rule: interleave,
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
            _ => {
                let judged = match &interleave {
                    Some(il) if k.2 == "customer_waiting" => {
                        let spans = truth.wait_spans.get(&(k.0.clone(), k.1.clone()));
                        il.judge(spans.map_or(&[][..], |v| v.as_slice()), r.raised_at)
                    }
                    _ => Judged::Unexplained,
                };
                match judged {
                    Judged::Interleaved(w, skew, wall) => {
                        out.interleaved += 1;
                        out.interleaved_skew_max_event_ms =
                            Some(out.interleaved_skew_max_event_ms.map_or(skew, |m| m.max(skew)));
                        out.interleaved_skew_max_wall_ms =
                            Some(out.interleaved_skew_max_wall_ms.map_or(wall, |m| m.max(wall)));
                        if out.interleaved_examples.len() < INTERLEAVED_EXAMPLES {
                            out.interleaved_examples.push(InterleavedAlert {
                                key: label,
                                raised_at: r.raised_at,
                                wait_start: w.start,
                                closed_at: w.closed_at,
                                skew_event_ms: skew,
                                skew_wall_ms: (wall * 10.0).round() / 10.0,
                            });
                        }
                    }
                    Judged::OverBound(..) => {
                        out.interleaved_over_bound += 1;
                        out.false_positives.push(label);
                    }
                    Judged::Unexplained => out.false_positives.push(label),
                }
            }
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
            wait_spans: BTreeMap::new(),
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
        let s = score_alerts(&t, &[r("a1"), r("a2"), r("a9")], None);
        assert_eq!((s.expected, s.true_positives, s.ambiguous), (2, 1, 1));
        assert_eq!(s.false_positives, vec!["a9/s/customer_waiting".to_string()]);
        assert_eq!(s.missed, vec!["a3/s/customer_waiting".to_string()]);
        assert_eq!(s.precision, 0.5);
        assert_eq!(s.recall, 0.5);
        assert_eq!(s.delays_event_ms, vec![500]);
    }

    /// a4 and a5 each had one wait in shop s, from 0 to 50 s (answered in
    /// time: the truth expects no alert). The server raised anyway.
    fn interleave_case() -> TruthReport {
        let mut t = truth();
        for a in ["a4", "a5", "a6", "a7"] {
            t.alerts.push(AlertTruth {
                agent: a.into(),
                shop: "s".into(),
                rule: "customer_waiting",
                expect: Expect::No,
                peak_ms: 50_000.0,
                first_cross: None,
            });
            t.wait_spans.insert(
                (a.to_string(), "s".to_string()),
                vec![WaitSpan {
                    start: 0,
                    closed_at: 50_000,
                }],
            );
        }
        t
    }

    const IL: Interleave = Interleave {
        norm_ms: 60_000,
        compression: 180.0,
        max_wall_skew_ms: 1_250.0,
    };

    #[test]
    fn interleave_judges_by_threshold_close_and_bound() {
        let w = [WaitSpan {
            start: 0,
            closed_at: 50_000,
        }];
        // Server clock past 0 + 60 s, reply at 50 s ≤ 61 s: arrival order.
        assert_eq!(
            IL.judge(&w, 61_000),
            Judged::Interleaved(w[0], 11_000, 11_000.0 / 180.0)
        );
        // Clock not past the threshold (reply before it, or after the raise).
        assert_eq!(IL.judge(&w, 55_000), Judged::Unexplained);
        assert_eq!(IL.judge(&w, 45_000), Judged::Unexplained);
        // Exactly at the threshold is not past it.
        assert_eq!(IL.judge(&w, 60_000), Judged::Unexplained);
        // A later wait not yet over the threshold does not help, the ended one does.
        let two = [
            w[0],
            WaitSpan {
                start: 100_000,
                closed_at: 120_000,
            },
        ];
        assert_eq!(
            IL.judge(&two, 150_000),
            Judged::Interleaved(w[0], 100_000, 100_000.0 / 180.0)
        );
        // Skew over the bound: 300 s of scenario time is 1.67 s of wall time.
        assert!(matches!(IL.judge(&w, 350_000), Judged::OverBound(_, 300_000, _)));
        assert_eq!(IL.judge(&[], 61_000), Judged::Unexplained);
    }

    #[test]
    fn interleaved_raises_are_not_false_positives_with_several_connections() {
        let t = interleave_case();
        let r = |agent: &str, rule: &str, raised_at: i64| Raised {
            agent: agent.into(),
            shop: "s".into(),
            rule: rule.into(),
            raised_at,
            arrived_us: 0,
        };
        let raised = [
            r("a1", "customer_waiting", 1500),
            r("a3", "customer_waiting", 1500),
            // Reply (50 s) closed below raised_at (61 s), clock past 60 s.
            r("a4", "customer_waiting", 61_000),
            // Raised before the server's clock could pass the threshold.
            r("a5", "customer_waiting", 45_000),
            // Implied skew 1.67 s of wall time: over the bound.
            r("a6", "customer_waiting", 350_000),
            // Not a waiting alert.
            r("a7", "slow_average", 61_000),
        ];
        let s = score_alerts(&t, &raised, Some(IL));
        assert_eq!(s.interleaved, 1);
        assert_eq!(s.interleaved_over_bound, 1);
        assert_eq!(s.interleaved_examples[0].key, "a4/s/customer_waiting");
        assert_eq!(s.interleaved_examples[0].skew_event_ms, 11_000);
        assert_eq!(s.interleaved_skew_max_event_ms, Some(11_000));
        assert_eq!(
            s.false_positives,
            vec![
                "a5/s/customer_waiting".to_string(),
                "a6/s/customer_waiting".to_string(),
                "a7/s/slow_average".to_string()
            ]
        );
        assert_eq!(s.true_positives, 2);
        assert_eq!(s.precision, 2.0 / 5.0);
        // One connection: no rule, every unexpected raise is a false positive.
        let one = score_alerts(&t, &raised, None);
        assert_eq!(one.interleaved, 0);
        assert!(one.interleave_rule.is_none());
        assert_eq!(one.false_positives.len(), 4);
        assert!(one.false_positives.contains(&"a4/s/customer_waiting".to_string()));
    }
}
