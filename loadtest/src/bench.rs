//! `side-by-side`: the same event stream pushed through deskpulse (WebSocket
//! ingest, durable acks), Redis (one pipelined HINCRBY per event over raw
//! RESP) and NATS JetStream (one HPUB with Nats-Msg-Id per event, PubAck
//! each), in one process on one machine: max throughput, then p99 at a
//! fixed open-loop rate. Out: one JSON/HTML report with ratios to deskpulse.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::conn::{self, Frame, Peer, Rec, Recorder, Window, lock};
use crate::events::{Event, Generator, Kind, Names};
use crate::http::Target;
use crate::procstat;
use crate::report;
use crate::scenario::{Scenario, World};

/// Options of the side-by-side benchmark.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    pub deskpulse: Option<String>,
    pub token: Option<String>,
    pub deskpulse_pid: Option<u32>,
    pub redis: Option<String>,
    pub redis_pid: Option<u32>,
    pub nats: Option<String>,
    pub nats_pid: Option<u32>,
    pub scenario: Scenario,
    pub seed: u64,
    pub events: usize,
    pub rate: f64,
    pub rate_duration_ms: u64,
    pub connections: usize,
    pub batch: usize,
    pub window: usize,
    pub out_dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sys {
    Deskpulse,
    Redis,
    Nats,
}

impl Sys {
    fn name(self) -> &'static str {
        match self {
            Sys::Deskpulse => "deskpulse",
            Sys::Redis => "redis",
            Sys::Nats => "nats-js",
        }
    }
}

struct Encoded {
    /// (connection, encoded bytes of one event incl. separator)
    items: Vec<(usize, Vec<u8>)>,
}

fn encode(sys: Sys, events: &[Event], names: &Names, conns: usize) -> Encoded {
    let mut items = Vec::with_capacity(events.len());
    let mut json = Vec::with_capacity(256);
    let mut per_conn = vec![0u64; conns];
    for e in events {
        let c = (e.route() % conns as u64) as usize;
        json.clear();
        names.write_json(e, &mut json);
        let mut out = Vec::with_capacity(json.len() + 64);
        match sys {
            Sys::Deskpulse => {
                out.extend_from_slice(&json);
                out.push(b'\n');
            }
            Sys::Redis | Sys::Nats => {
                let shop = &names.shops[e.shop as usize];
                let who = if e.agent != crate::events::NO_AGENT && e.kind != Kind::Order {
                    names.agents[e.agent as usize].as_str()
                } else {
                    "-"
                };
                let key = format!("dp:{shop}:{who}");
                per_conn[c] += 1;
                let peer = if sys == Sys::Redis { Peer::Redis } else { Peer::Nats };
                conn::encode_peer(
                    peer,
                    &mut out,
                    &json,
                    &key,
                    e.kind.as_str(),
                    &format!("dp.ev.{shop}"),
                    &format!("{shop}/{}", names.event_id(e)),
                    &format!("_INBOX.dp{c}.{}", per_conn[c]),
                );
            }
        }
        items.push((c, out));
    }
    Encoded { items }
}

struct PhaseOut {
    events: u64,
    elapsed_s: f64,
    ack: hdrhistogram::Histogram<u64>,
    service: hdrhistogram::Histogram<u64>,
    /// Ack p99 of the events acknowledged in each second of the phase, ms.
    p99_by_second: Vec<f64>,
    errors: u64,
    first_errors: Vec<String>,
    cpu_s: Option<f64>,
}

/// Sends `enc` to `sys`: all at once (`rate == None`, window-limited) or
/// paced at `rate` events/s from intended times.
async fn phase(
    sys: Sys,
    addr: &str,
    token: Option<&str>,
    pid: Option<u32>,
    enc: &Encoded,
    rate: Option<f64>,
    o: &BenchOpts,
) -> Result<PhaseOut> {
    let rec: Rec = Arc::new(Mutex::new(Recorder::new(Instant::now())));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for c in 0..o.connections {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let (rec, stop) = (rec.clone(), stop.clone());
        let window = Window(if rate.is_some() { 4096 } else { o.window });
        tasks.push(match sys {
            Sys::Deskpulse => tokio::spawn(conn::ws_ingest(
                addr.to_string(),
                token.map(String::from),
                rx,
                rec,
                window,
                stop,
            )),
            Sys::Redis => tokio::spawn(conn::tcp_peer(Peer::Redis, addr.to_string(), c, rx, rec, window, stop)),
            Sys::Nats => tokio::spawn(conn::tcp_peer(Peer::Nats, addr.to_string(), c, rx, rec, window, stop)),
        });
    }
    // Let the connections open before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Copied before the clock starts: 1.5 M small copies take longer than
    // a hundred milliseconds, which the first events would count as lateness.
    let items: Vec<(usize, Vec<u8>)> = enc.items.clone();
    let batch = o.batch;
    let n_conns = o.connections;
    let cpu0 = pid.and_then(procstat::sample);
    let t0 = Instant::now();
    lock(&rec).t0 = t0;
    let feeder = tokio::task::spawn_blocking(move || {
        let mut bufs: Vec<(Vec<u8>, Vec<u64>, u64)> = (0..n_conns).map(|_| (Vec::new(), Vec::new(), 0)).collect();
        let flush = |bufs: &mut Vec<(Vec<u8>, Vec<u64>, u64)>, c: usize| {
            if bufs[c].1.is_empty() {
                return;
            }
            let f = Frame {
                payload: std::mem::take(&mut bufs[c].0),
                intended_us: std::mem::take(&mut bufs[c].1),
            };
            let _gone = senders[c].send(f); // a closed connection reports its own error
        };
        for (i, (c, bytes)) in items.into_iter().enumerate() {
            let due = match rate {
                Some(r) => (i as f64 * 1e6 / r) as u64,
                None => 0,
            };
            if rate.is_some() {
                loop {
                    let now = t0.elapsed().as_micros() as u64;
                    if now >= due {
                        break;
                    }
                    for k in 0..n_conns {
                        if !bufs[k].1.is_empty() && bufs[k].2 + 2_000 <= now {
                            flush(&mut bufs, k);
                        }
                    }
                    std::thread::sleep(Duration::from_micros((due - now).min(500)));
                }
            }
            let b = &mut bufs[c];
            if b.1.is_empty() {
                b.2 = due;
            }
            b.0.extend_from_slice(&bytes);
            b.1.push(due);
            if b.1.len() >= batch {
                flush(&mut bufs, c);
            }
        }
        for k in 0..n_conns {
            flush(&mut bufs, k);
        }
    });
    feeder.await.context("feeder thread panicked")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => lock(&rec).error(format!("{}: {e:#}", sys.name())),
            Ok(Err(e)) => lock(&rec).error(format!("{}: task {e}", sys.name())),
            Err(_) => {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                lock(&rec).error(format!("{}: replies still missing after 120 s", sys.name()));
            }
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let cpu1 = pid.and_then(procstat::sample);
    let r = lock(&rec);
    let mut errors = r.error_count;
    if r.events_acked != enc.items.len() as u64 {
        errors += 1;
    }
    Ok(PhaseOut {
        events: r.events_acked,
        elapsed_s,
        ack: r.ack_lat.clone(),
        service: r.service_lat.clone(),
        p99_by_second: r
            .secs
            .iter()
            .filter(|s| !s.ack_lat.is_empty())
            .map(|s| (s.ack_lat.value_at_quantile(0.99) as f64 / 10.0).round() / 100.0)
            .collect(),
        errors,
        first_errors: r.errors.iter().take(5).cloned().collect(),
        cpu_s: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some((b.0 - a.0) as f64 / procstat::CLK_TCK),
            _ => None,
        },
    })
}

fn events_for(world: &Arc<World>, seed: u64, n: usize) -> Vec<Event> {
    let scale = crate::run::arrival_scale_for(world, seed, world.start_ts, world.scenario.span.0, n as f64 * 1.1);
    Generator::new(world.clone(), seed, world.start_ts, world.scenario.span.0, scale)
        .take(n)
        .collect()
}

/// Runs the comparison and writes the report; returns the result JSON.
pub async fn side_by_side(o: BenchOpts) -> Result<Value> {
    let dp = match &o.deskpulse {
        Some(u) => Some(Target::parse(u).await?),
        None => None,
    };
    for (what, addr) in [("redis", &o.redis), ("nats", &o.nats)] {
        if let Some(a) = addr {
            Target::parse(&format!("http://{a}"))
                .await
                .with_context(|| format!("--{what}"))?;
        }
    }
    let world = Arc::new(World::build(&o.scenario, o.seed)?);
    let n_rate = (o.rate * o.rate_duration_ms as f64 / 1000.0) as usize;
    eprintln!("generating {} + {} events…", o.events, n_rate);
    let events = events_for(&world, o.seed, o.events.max(n_rate));
    let mut names_max = Names::of(&world);
    names_max.id_prefix = "m".into();
    let mut names_rate = Names::of(&world);
    names_rate.id_prefix = "r".into();
    let max_events = &events[..o.events.min(events.len())];
    let rate_events = &events[..n_rate.min(events.len())];
    if o.nats.is_some() {
        let addr = o.nats.clone().expect("checked is_some");
        let cfg = r#"{"name":"DESKPULSE","subjects":["dp.ev.>"],"storage":"file","retention":"limits","discard":"old","max_msgs":-1,"max_bytes":-1,"max_age":0,"num_replicas":1,"duplicate_window":120000000000}"#;
        let answer = conn::nats_request(&addr, "$JS.API.STREAM.CREATE.DESKPULSE", cfg)
            .await
            .context("creating the JetStream stream")?;
        if answer.contains("\"error\"") && !answer.contains("already in use") {
            bail!("JetStream stream create failed: {answer}");
        }
    }
    let mut systems: Vec<(Sys, String, Option<u32>)> = Vec::new();
    if let Some(dp) = &dp {
        let pid = o.deskpulse_pid.or_else(|| procstat::find_listener(dp.port));
        systems.push((Sys::Deskpulse, dp.ws("/v1/ingest"), pid));
    }
    if let Some(a) = &o.redis {
        systems.push((Sys::Redis, a.clone(), o.redis_pid));
    }
    if let Some(a) = &o.nats {
        systems.push((Sys::Nats, a.clone(), o.nats_pid));
    }
    if systems.is_empty() {
        bail!("nothing to benchmark: give --deskpulse and/or --redis/--nats");
    }
    let mut rows = Vec::new();
    for (sys, addr, pid) in &systems {
        eprintln!("{}: max-throughput phase ({} events)…", sys.name(), max_events.len());
        let enc = encode(*sys, max_events, &names_max, o.connections);
        let a = phase(*sys, addr, o.token.as_deref(), *pid, &enc, None, &o).await?;
        eprintln!("{}: {:.0} events/s", sys.name(), a.events as f64 / a.elapsed_s);
        eprintln!(
            "{}: paced phase ({} events at {}/s)…",
            sys.name(),
            rate_events.len(),
            o.rate
        );
        let enc = encode(*sys, rate_events, &names_rate, o.connections);
        let b = phase(*sys, addr, o.token.as_deref(), *pid, &enc, Some(o.rate), &o).await?;
        // Where a tail comes from: every second, or a few slow ones.
        eprintln!("{}: ack p99 by second (ms): {:?}", sys.name(), b.p99_by_second);
        rows.push((*sys, a, b));
    }
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0)
    };
    let base_tput = rows[0].1.events as f64 / rows[0].1.elapsed_s;
    let base_p99 = ms(&rows[0].2.ack, 0.99);
    let peers: Vec<Value> = rows
        .iter()
        .map(|(sys, a, b)| {
            let tput = a.events as f64 / a.elapsed_s;
            let p99 = ms(&b.ack, 0.99);
            let cpu = match (a.cpu_s, b.cpu_s) {
                (Some(x), Some(y)) => Some(((x + y) * 1e6 / (a.events + b.events).max(1) as f64 * 10.0).round() / 10.0),
                _ => None,
            };
            json!({
                "name": sys.name(),
                "max_events_per_s": tput.round(),
                "throughput_ratio": ((tput / base_tput) * 100.0).round() / 100.0,
                "max_phase_service_p99_ms": ms(&a.service, 0.99),
                "max_phase_elapsed_s": (a.elapsed_s * 100.0).round() / 100.0,
                "p50_ms_at_rate": ms(&b.ack, 0.5),
                "p99_ms_at_rate": p99,
                "p999_ms_at_rate": ms(&b.ack, 0.999),
                "max_ms_at_rate": ms(&b.ack, 1.0),
                "service_p99_ms_at_rate": ms(&b.service, 0.99),
                "p99_ms_at_rate_by_second": b.p99_by_second,
                "p99_ratio": match (p99, base_p99) { (Some(x), Some(y)) if y > 0.0 => Some(((x / y) * 100.0).round() / 100.0), _ => None },
                "cpu_us_per_event": cpu,
                "errors": a.errors + b.errors,
                "first_errors": a.first_errors.iter().chain(&b.first_errors).collect::<Vec<_>>(),
            })
        })
        .collect();
    let result = json!({
        "tool": "deskpulse-loadtest",
        "version": env!("CARGO_PKG_VERSION"),
        "kind": "side-by-side",
        "config": {
            "target": o.deskpulse, "baseline": systems[0].0.name(), "scenario": world.scenario.name, "seed": o.seed, "connections": o.connections, "batch": o.batch,
            "window": o.window, "events_max_phase": max_events.len(), "rate": o.rate, "rate_events": rate_events.len(),
            "clock": "event", "compression": null, "subscribers": 0,
            "notes": "deskpulse acks after fsync (group commit); Redis runs with appendonly yes, appendfsync always (see bench/side-by-side.sh); NATS 2.9 JetStream file storage syncs on its own interval, not per ack. Ratios are peer / deskpulse: throughput_ratio > 1 means the peer is faster, p99_ratio > 1 means the peer is slower.",
        },
        "peers": peers,
    });
    crate::run::write_reports(&o.out_dir, "side-by-side", &result)?;
    Ok(result)
}

/// `report` output for a side-by-side result is the same terminal table.
pub fn print(result: &Value) {
    println!("{}", report::terminal(result));
}
