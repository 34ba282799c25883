//! Result rendering: percentiles of a histogram as JSON, the terminal table,
//! and a self-contained HTML report with inline SVG charts (no network).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// p50/p90/p99/p99.9/max (ms) and count of a µs histogram.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null});
    }
    let ms = |v: u64| (v as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

fn f(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{}", x as i64)
            } else if x.abs() >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.2}")
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The end-of-run table for the terminal.
pub fn terminal(r: &Value) -> String {
    let mut o = String::new();
    let t = &r["totals"];
    let c = &r["config"];
    let _ = writeln!(
        o,
        "\n== deskpulse-loadtest {} ({}) ==",
        f(&r["kind"]),
        f(&c["scenario"])
    );
    let _ = writeln!(
        o,
        "target {}  clock {}  compression {}x  connections {}  batch {}  subscribers {}",
        f(&c["target"]),
        f(&c["clock"]),
        f(&c["compression"]),
        f(&c["connections"]),
        f(&c["batch"]),
        f(&c["subscribers"])
    );
    if !t.is_null() {
        let _ = writeln!(
            o,
            "events sent {}  acked {}  in {} s  → sent {}/s, acked {}/s (peak second {}/s)",
            f(&t["events_sent"]),
            f(&t["events_acked"]),
            f(&t["elapsed_s"]),
            f(&t["sent_per_s"]),
            f(&t["acked_per_s"]),
            f(&t["peak_acked_per_s"])
        );
        let _ = writeln!(
            o,
            "accepted {}  duplicates {}  rejected {}  warnings {}  errors {}",
            f(&t["accepted"]),
            f(&t["duplicates"]),
            f(&t["rejected"]),
            f(&t["warnings"]),
            f(&t["errors"])
        );
        let _ = writeln!(
            o,
            "server cpu {} s ({} µs/event)  rss max {} MB   generator cpu {} s",
            f(&t["server_cpu_s"]),
            f(&t["server_cpu_us_per_event"]),
            f(&t["server_rss_max_mb"]),
            f(&t["self_cpu_s"])
        );
    }
    if let Some(l) = r["latency_ms"].as_object() {
        let _ = writeln!(
            o,
            "\n{:<28}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "max", "count"
        );
        for (name, v) in l {
            let _ = writeln!(
                o,
                "{:<28}{:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
                name,
                f(&v["p50"]),
                f(&v["p90"]),
                f(&v["p99"]),
                f(&v["p999"]),
                f(&v["max"]),
                f(&v["count"])
            );
        }
    }
    let v = &r["verdict"];
    if !v.is_null() {
        let _ = writeln!(
            o,
            "\nverdict: {}",
            if v["pass"].as_bool() == Some(true) {
                "PASS"
            } else {
                "FAIL"
            }
        );
        let s = &v["stats"];
        let _ = writeln!(
            o,
            "  stats: {} agents, {} figures, {} mismatches ({} extension mismatches)",
            f(&s["agents"]),
            f(&s["figures"]),
            s["mismatches"].as_array().map_or(0, |a| a.len()),
            s["extension_mismatches"].as_array().map_or(0, |a| a.len())
        );
        for m in s["mismatches"].as_array().into_iter().flatten().take(10) {
            let _ = writeln!(
                o,
                "    {} {}: expected {} got {}",
                f(&m["agent"]),
                f(&m["field"]),
                m["expected"],
                m["got"]
            );
        }
        let a = &v["alerts"];
        if !a.is_null() {
            let _ = writeln!(
                o,
                "  alerts: expected {}  raised {}  tp {}  fp {}  interleaved {}  missed {}  ambiguous {}  precision {}  recall {}",
                f(&a["expected"]),
                f(&a["raised"]),
                f(&a["true_positives"]),
                a["false_positives"].as_array().map_or(0, |x| x.len()),
                f(&a["interleaved"]),
                a["missed"].as_array().map_or(0, |x| x.len()),
                f(&a["ambiguous"]),
                f(&a["precision"]),
                f(&a["recall"])
            );
            let il = &a["interleave_rule"];
            if il.is_null() {
                let _ = writeln!(
                    o,
                    "  interleaved: n/a (one ingest connection or wall clock: every unexpected raise is an fp)"
                );
            } else {
                let _ = writeln!(
                    o,
                    "  interleaved {}: implied skew max {} ms scenario / {} ms wall (bound {} ms wall)  over bound (fp) {}",
                    f(&a["interleaved"]),
                    f(&a["interleaved_skew_max_event_ms"]),
                    a["interleaved_skew_max_wall_ms"]
                        .as_f64()
                        .map_or("-".to_string(), |w| format!("{w:.1}")),
                    il["max_wall_skew_ms"]
                        .as_f64()
                        .map_or("-".to_string(), |w| format!("{w:.1}")),
                    f(&a["interleaved_over_bound"])
                );
                for e in a["interleaved_examples"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        o,
                        "    {} raised_at {} wait {}..{} skew {} ms ({} ms wall)",
                        f(&e["key"]),
                        f(&e["raised_at"]),
                        f(&e["wait_start"]),
                        f(&e["closed_at"]),
                        f(&e["skew_event_ms"]),
                        f(&e["skew_wall_ms"])
                    );
                }
            }
            for fp in a["false_positives"].as_array().into_iter().flatten().take(5) {
                let _ = writeln!(o, "    fp {}", f(fp));
            }
        }
        for reason in v["reasons"].as_array().into_iter().flatten() {
            let _ = writeln!(o, "  ✗ {}", f(reason));
        }
    }
    if let Some(peers) = r["peers"].as_array() {
        let _ = writeln!(
            o,
            "\n{:<12}{:>14}{:>10}{:>14}{:>10}{:>12}{:>10}",
            "peer", "max ev/s", "ratio", "p99 ms @rate", "ratio", "cpu µs/ev", "errors"
        );
        for p in peers {
            let _ = writeln!(
                o,
                "{:<12}{:>14}{:>10}{:>14}{:>10}{:>12}{:>10}",
                f(&p["name"]),
                f(&p["max_events_per_s"]),
                f(&p["throughput_ratio"]),
                f(&p["p99_ms_at_rate"]),
                f(&p["p99_ratio"]),
                f(&p["cpu_us_per_event"]),
                f(&p["errors"])
            );
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// An SVG line chart of several series over the same x axis.
pub fn svg_chart(title: &str, y_label: &str, xs: &[f64], series: &[(&str, &str, Vec<Option<f64>>)]) -> String {
    let (w, h, l, r, t, b) = (760.0, 260.0, 60.0, 130.0, 28.0, 34.0);
    let x_max = xs.iter().cloned().fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().flatten().cloned())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.08;
    let px = |x: f64| l + (w - l - r) * x / x_max;
    let py = |y: f64| t + (h - t - b) * (1.0 - y / y_max);
    let mut o = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}' font-family='sans-serif' font-size='11'>"
    );
    let _ = write!(
        o,
        "<text x='{l}' y='16' font-size='13' font-weight='bold'>{}</text>",
        esc(title)
    );
    for i in 0..=4 {
        let y = y_max * i as f64 / 4.0;
        let _ = write!(
            o,
            "<line x1='{l}' x2='{}' y1='{:.1}' y2='{:.1}' stroke='#ddd'/>",
            w - r,
            py(y),
            py(y)
        );
        let _ = write!(
            o,
            "<text x='{}' y='{:.1}' text-anchor='end'>{}</text>",
            l - 4.0,
            py(y) + 4.0,
            fmt_num(y)
        );
    }
    for i in 0..=5 {
        let x = x_max * i as f64 / 5.0;
        let label = if x_max < 10.0 {
            format!("{x:.1}s")
        } else {
            format!("{x:.0}s")
        };
        let _ = write!(
            o,
            "<text x='{:.1}' y='{}' text-anchor='middle'>{label}</text>",
            px(x),
            h - b + 14.0
        );
    }
    let _ = write!(
        o,
        "<text x='12' y='{:.1}' transform='rotate(-90 12 {:.1})' text-anchor='middle'>{}</text>",
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        esc(y_label)
    );
    for (k, (name, color, ys)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen = false;
        for (x, y) in xs.iter().zip(ys) {
            match y {
                Some(y) => {
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen { "L" } else { "M" }, px(*x), py(*y));
                    pen = true;
                }
                None => pen = false,
            }
        }
        let _ = write!(o, "<path d='{d}' fill='none' stroke='{color}' stroke-width='1.6'/>");
        let ly = t + 14.0 * k as f64 + 6.0;
        let _ = write!(
            o,
            "<line x1='{}' x2='{}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='3'/>",
            w - r + 8.0,
            w - r + 24.0
        );
        let _ = write!(o, "<text x='{}' y='{}'>{}</text>", w - r + 28.0, ly + 4.0, esc(name));
    }
    o.push_str("</svg>");
    o
}

/// Bars of max events/s per peer (side-by-side).
fn peer_chart(peers: &[Value]) -> String {
    let max = peers
        .iter()
        .filter_map(|p| p["max_events_per_s"].as_f64())
        .fold(1.0, f64::max);
    let mut o = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='760' height='{}' font-family='sans-serif' font-size='12'>",
        40 + 30 * peers.len()
    );
    o.push_str("<text x='10' y='18' font-size='13' font-weight='bold'>Max events/s (acknowledged)</text>");
    for (i, p) in peers.iter().enumerate() {
        let v = p["max_events_per_s"].as_f64().unwrap_or(0.0);
        let y = 30 + 30 * i;
        let w = 520.0 * v / max;
        let _ = write!(
            o,
            "<text x='10' y='{}'>{}</text><rect x='110' y='{y}' width='{w:.1}' height='20' fill='#1f77b4'/><text x='{:.1}' y='{}'>{}</text>",
            y + 15,
            esc(p["name"].as_str().unwrap_or("")),
            116.0 + w,
            y + 15,
            fmt_num(v)
        );
    }
    o.push_str("</svg>");
    o
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The whole HTML report: summary, verdict, charts, raw JSON.
pub fn html(r: &Value) -> String {
    let series = r["series"].as_array().cloned().unwrap_or_default();
    let xs: Vec<f64> = series.iter().map(|s| s["t"].as_f64().unwrap_or(0.0)).collect();
    let col = |k: &str| -> Vec<Option<f64>> { series.iter().map(|s| s[k].as_f64()).collect() };
    let mut charts = String::new();
    if !series.is_empty() {
        charts += &svg_chart(
            "Throughput",
            "events/s",
            &xs,
            &[("sent", "#1f77b4", col("sent")), ("acked", "#2ca02c", col("acked"))],
        );
        charts += &svg_chart(
            "Latency over time (by second of ack / arrival)",
            "ms",
            &xs,
            &[
                ("ack p50", "#2ca02c", col("ack_p50_ms")),
                ("ack p99", "#d62728", col("ack_p99_ms")),
                ("subscriber p99", "#9467bd", col("sub_p99_ms")),
            ],
        );
        charts += &svg_chart(
            "Server memory",
            "RSS MB",
            &xs,
            &[("server RSS", "#8c564b", col("rss_mb"))],
        );
        charts += &svg_chart(
            "CPU",
            "% of one core",
            &xs,
            &[
                ("server", "#ff7f0e", col("cpu_pct")),
                ("load generator", "#7f7f7f", col("self_cpu_pct")),
            ],
        );
    }
    if let Some(peers) = r["peers"].as_array() {
        charts += &peer_chart(peers);
    }
    let pass = r["verdict"]["pass"].as_bool();
    let badge = match pass {
        Some(true) => "<span style='background:#2ca02c;color:#fff;padding:2px 8px'>PASS</span>",
        Some(false) => "<span style='background:#d62728;color:#fff;padding:2px 8px'>FAIL</span>",
        None => "",
    };
    let json_text = serde_json::to_string_pretty(r).unwrap_or_default();
    format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>deskpulse load test</title>\
<style>body{{font-family:sans-serif;margin:24px;max-width:980px}}pre{{background:#f6f6f6;padding:12px;overflow:auto;font-size:12px}}\
svg{{display:block;margin:12px 0;border:1px solid #eee}}</style></head><body>\
<h1>deskpulse load test {badge}</h1><pre>{}</pre>{charts}<details><summary>raw result JSON</summary><pre>{}</pre></details></body></html>",
        esc(&terminal(r)),
        esc(&json_text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_self_contained_and_has_charts() {
        let r = json!({"kind":"run","config":{},"totals":{},"series":[{"t":0,"sent":10,"acked":9,"ack_p99_ms":1.5},{"t":1,"sent":20,"acked":20,"ack_p99_ms":null}],"verdict":{"pass":true}});
        let h = html(&r);
        assert!(h.contains("<svg"));
        assert!(h.contains("PASS"));
        assert!(
            !h.contains("http://") || h.matches("http://").count() == h.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(!h.contains("<script src"));
    }

    #[test]
    fn percentiles_are_in_ms() {
        let mut h = crate::conn::hist();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let p = percentiles(&h);
        assert!((p["p50"].as_f64().unwrap() - 500.0).abs() < 1.0);
        assert_eq!(p["count"], 1000);
    }
}
