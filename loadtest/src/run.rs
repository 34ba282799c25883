//! `run`: open-loop load against a live deskpulse. A scheduler thread pulls
//! events from the generator at their intended times (event time compressed
//! into wall time), feeds the ground truth, and batches them onto N ingest
//! sockets; M subscribers watch `/v1/stream`. At the end the server's
//! figures and alerts are compared with the truth and reports are written.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Frame, Rec, Recorder, Window, lock};
use crate::events::{GenStats, Generator, Names};
use crate::http::Target;
use crate::procstat;
use crate::report;
use crate::scenario::{Scenario, World};
use crate::truth::{TEvent, Truth, TruthConfig, TruthReport};
use crate::verdict::{self, Raised};

/// Which clock the server runs with, and so how event times are stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Clock {
    /// Scenario time, compressed into `--duration` (server `--clock event`).
    Event,
    /// Real time from now, one second per second (server `--clock wall`).
    Wall,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub target: String,
    pub token: Option<String>,
    pub scenario: Scenario,
    pub seed: u64,
    pub duration_ms: i64,
    pub connections: usize,
    pub batch: usize,
    pub linger_us: u64,
    pub window: usize,
    pub subscribers: usize,
    pub stream_interval_ms: Option<u64>,
    pub rate: Option<f64>,
    pub clock: Clock,
    pub server_pid: Option<u32>,
    pub out_dir: PathBuf,
    pub max_events: u64,
    pub max_backlog: u64,
    pub settle_ms: u64,
    pub drain_ms: u64,
    pub id_prefix: String,
    pub min_precision: f64,
    pub min_recall: f64,
    pub quiet: bool,
    /// Write every event sent, in send order, as NDJSON (for `deskpulse replay`).
    pub save_log: Option<PathBuf>,
}

/// µs of schedule lead before the first event is due.
const LEAD_US: u64 = 300_000;

/// Per (agent, day): intended send time (µs) of each response sample, in order.
type SampleTimes = Arc<Mutex<HashMap<(u32, i64), Vec<u64>>>>;

/// First and last CPU ticks of the server, its max RSS (kB), first and last own ticks.
type Totals = Arc<Mutex<(Option<u64>, Option<u64>, u64, Option<u64>, Option<u64>)>>;

/// One CPU/RSS reading: when, server `(ticks, rss)`, own `(ticks, rss)`.
type Reading = (Instant, Option<(u64, u64)>, Option<(u64, u64)>);

/// How the generator's event times map to the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Event time of wall time `LEAD_US`.
    pub ts0: i64,
    /// Event ms per wall ms.
    pub compression: f64,
}

impl Schedule {
    /// Intended send time of event time `ts`, µs since t0.
    pub fn due_us(&self, ts: i64) -> u64 {
        LEAD_US + (((ts - self.ts0).max(0)) as f64 * 1000.0 / self.compression) as u64
    }
}

/// What the subscribers saw.
#[derive(Debug, Default)]
struct StreamLog {
    raised: Vec<Raised>,
    escalated: u64,
    resolved: u64,
    acked: u64,
    snapshots: u64,
    updates: u64,
    lagged: u64,
    errors: Vec<String>,
}

fn day_of(ts: i64, offset_ms: i64) -> i64 {
    (ts + offset_ms).div_euclid(86_400_000)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one task's whole context, spawned once per subscriber"
)]
async fn subscriber(
    url: String,
    token: Option<String>,
    rec: Rec,
    samples: SampleTimes,
    agent_ix: Arc<HashMap<String, u32>>,
    log: Arc<Mutex<StreamLog>>,
    offset_ms: i64,
    stop: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async(conn::ws_request(&url, token.as_deref())?)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let (_sink, mut stream) = ws.split();
    let mut ready = Some(ready);
    let mut last: HashMap<u32, (i64, u64)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("stream closed by the server"),
            Ok(Some(m)) => m.context("reading stream")?,
        };
        let arrived = lock(&rec).now_us();
        let text = match msg {
            Message::Text(t) => t.to_string(),
            Message::Close(c) => bail!("stream closed by the server: {c:?}"),
            _ => continue,
        };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                log.lock()
                    .expect("stream log lock")
                    .errors
                    .push(format!("unparsable stream frame: {e}"));
                continue;
            }
        };
        let ty = v["type"].as_str().unwrap_or("");
        match ty {
            "snapshot" | "update" => {
                let day = v["now"].as_i64().map(|n| day_of(n, offset_ms));
                let mut lats = Vec::new();
                if let (Some(day), Some(agents)) = (day, v["agents"].as_array()) {
                    let st = samples.lock().expect("sample times lock");
                    for a in agents {
                        let Some(&ix) = a["agent"].as_str().and_then(|n| agent_ix.get(n)) else {
                            continue;
                        };
                        let Some(k) = a["today"]["responses"].as_u64() else {
                            continue;
                        };
                        let prev = last.insert(ix, (day, k));
                        if ty == "update"
                            && k > 0
                            && prev.is_some_and(|(d, p)| d != day || p < k)
                            && let Some(&due) = st.get(&(ix, day)).and_then(|v| v.get(k as usize - 1))
                        {
                            lats.push(arrived.saturating_sub(due).max(1));
                        }
                    }
                }
                {
                    let mut r = lock(&rec);
                    for &l in &lats {
                        r.sub_lat.saturating_record(l);
                    }
                    let sec = r.sec(arrived);
                    for &l in &lats {
                        sec.sub_lat.saturating_record(l);
                    }
                }
                let mut lg = log.lock().expect("stream log lock");
                if ty == "snapshot" {
                    lg.snapshots += 1;
                    if let Some(tx) = ready.take() {
                        let _ready = tx.send(()); // the waiter may have timed out
                    }
                } else {
                    lg.updates += 1;
                }
            }
            "alert" => {
                let a = &v["alert"];
                let mut lg = log.lock().expect("stream log lock");
                match v["event"].as_str().unwrap_or("") {
                    "raised" => lg.raised.push(Raised {
                        agent: a["agent"].as_str().unwrap_or("").to_string(),
                        shop: a["shop"].as_str().unwrap_or("").to_string(),
                        rule: a["rule"].as_str().unwrap_or("").to_string(),
                        raised_at: a["raised_at"].as_i64().unwrap_or(0),
                        arrived_us: arrived,
                    }),
                    "escalated" => lg.escalated += 1,
                    "resolved" => lg.resolved += 1,
                    "acked" => lg.acked += 1,
                    other => lg.errors.push(format!("alert frame with event {other:?}")),
                }
            }
            "lagged" => log.lock().expect("stream log lock").lagged += 1,
            other => log
                .lock()
                .expect("stream log lock")
                .errors
                .push(format!("unknown stream frame type {other:?}")),
        }
    }
    Ok(())
}

struct Buf {
    payload: Vec<u8>,
    intended: Vec<u64>,
    first_due: u64,
}

struct SchedOut {
    truth: TruthReport,
    generated: GenStats,
    events: u64,
    aborted: Option<String>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "the scheduler thread's whole context, called once"
)]
fn schedule(
    mut generator: Generator,
    mut truth: Truth,
    names: Names,
    senders: Vec<mpsc::UnboundedSender<Frame>>,
    rec: Rec,
    sched: Schedule,
    batch: usize,
    linger_us: u64,
    samples: SampleTimes,
    stop: Arc<AtomicBool>,
    max_events: u64,
    max_backlog: u64,
    handed: Arc<AtomicU64>,
    mut log: Option<std::io::BufWriter<std::fs::File>>,
) -> SchedOut {
    let t0 = lock(&rec).t0;
    let n = senders.len();
    let mut bufs: Vec<Buf> = (0..n)
        .map(|_| Buf {
            payload: Vec::with_capacity(batch * 200),
            intended: Vec::with_capacity(batch),
            first_due: 0,
        })
        .collect();
    let mut lag = conn::hist();
    let mut aborted = None;
    let mut count: u64 = 0;
    let send = |bufs: &mut Vec<Buf>, i: usize| -> bool {
        let b = &mut bufs[i];
        if b.intended.is_empty() {
            return true;
        }
        let f = Frame {
            payload: std::mem::replace(&mut b.payload, Vec::with_capacity(batch * 200)),
            intended_us: std::mem::take(&mut b.intended),
        };
        senders[i].send(f).is_ok()
    };
    let mut pending = generator.next();
    while let Some(ev) = pending {
        if stop.load(Ordering::Relaxed) {
            aborted.get_or_insert_with(|| "stopped".to_string());
            break;
        }
        if count >= max_events {
            break;
        }
        let due = sched.due_us(ev.ts);
        let now = t0.elapsed().as_micros() as u64;
        if due > now {
            for i in 0..n {
                if !bufs[i].intended.is_empty() && bufs[i].first_due + linger_us <= now && !send(&mut bufs, i) {
                    aborted = Some("a connection closed".into());
                }
            }
            let backlog = handed.load(Ordering::Relaxed).saturating_sub(lock(&rec).events_acked);
            if backlog > max_backlog {
                aborted = Some(format!(
                    "server fell behind: {backlog} events sent but not acknowledged (limit {max_backlog})"
                ));
                break;
            }
            let wait = (due - now).min(linger_us.max(200));
            if wait > 60 {
                std::thread::sleep(Duration::from_micros(wait));
            }
            continue;
        }
        lag.saturating_record((now - due).max(1));
        if !ev.dup
            && let Some(note) = truth.apply(&TEvent::from(&ev))
        {
            samples
                .lock()
                .expect("sample times lock")
                .entry((note.agent, note.day))
                .or_default()
                .push(due);
        }
        let i = (ev.route() % n as u64) as usize;
        let b = &mut bufs[i];
        if b.intended.is_empty() {
            b.first_due = due;
        } else {
            b.payload.push(b'\n');
        }
        let start = b.payload.len();
        names.write_json(&ev, &mut b.payload);
        if let Some(w) = log.as_mut() {
            use std::io::Write;
            if w.write_all(&b.payload[start..])
                .and_then(|()| w.write_all(b"\n"))
                .is_err()
            {
                log = None;
                lock(&rec).error("writing --save-log failed; log is incomplete");
            }
        }
        b.intended.push(due);
        count += 1;
        handed.store(count, Ordering::Relaxed);
        if b.intended.len() >= batch && !send(&mut bufs, i) {
            aborted = Some("a connection closed".into());
            break;
        }
        if count.is_multiple_of(512) {
            for i in 0..n {
                if !bufs[i].intended.is_empty() && bufs[i].first_due + linger_us <= now {
                    send(&mut bufs, i);
                }
            }
        }
        pending = generator.next();
    }
    for i in 0..n {
        send(&mut bufs, i);
    }
    if let Some(mut w) = log {
        use std::io::Write;
        if w.flush().is_err() {
            lock(&rec).error("flushing --save-log failed");
        }
    }
    {
        let mut r = lock(&rec);
        r.sched_lag.add(&lag).expect("same histogram bounds");
    }
    let world = generator.world().clone();
    let stats = generator.stats.clone();
    SchedOut {
        truth: truth.finish(&world.agent_names, &world.shop_names),
        generated: stats,
        events: count,
        aborted,
    }
}

fn hist_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1000.0)
}

/// Samples server and own CPU/RSS once a second into the recorder.
async fn sampler(pid: Option<u32>, rec: Rec, stop: Arc<AtomicBool>, totals: Totals) {
    let me = std::process::id();
    let mut prev: Option<Reading> = None;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let s = pid.and_then(procstat::sample);
        let m = procstat::sample(me);
        {
            let mut t = totals.lock().expect("totals lock");
            if let Some((ticks, rss)) = s {
                t.0.get_or_insert(ticks);
                t.1 = Some(ticks);
                t.2 = t.2.max(rss);
            }
            if let Some((ticks, _)) = m {
                t.3.get_or_insert(ticks);
                t.4 = Some(ticks);
            }
        }
        if let Some((pt, ps, pm)) = prev {
            let dt = now.duration_since(pt).as_secs_f64().max(1e-3);
            let pct = |a: Option<(u64, u64)>, b: Option<(u64, u64)>| match (a, b) {
                (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0)) as f64 / procstat::CLK_TCK / dt * 100.0),
                _ => None,
            };
            let mut r = lock(&rec);
            let us = r.now_us();
            let sec = r.sec(us);
            sec.cpu_pct = pct(ps, s);
            sec.self_cpu_pct = pct(pm, m);
            sec.rss_kb = s.map(|x| x.1);
        }
        prev = Some((now, s, m));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn progress(rec: Rec, stop: Arc<AtomicBool>, total_s: f64) {
    let mut last = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = lock(&rec);
        let t = r.now_us() as f64 / 1e6;
        let s = (r.now_us() / 1_000_000).saturating_sub(1) as usize;
        let sec = r.secs.get(s);
        let p99 = sec
            .and_then(|x| hist_ms(&x.ack_lat, 0.99))
            .map_or("-".into(), |v| format!("{v:.1}"));
        let sub = sec
            .and_then(|x| hist_ms(&x.sub_lat, 0.99))
            .map_or("-".into(), |v| format!("{v:.0}"));
        let cpu = sec.and_then(|x| x.cpu_pct).map_or("-".into(), |v| format!("{v:.0}%"));
        let rss = sec
            .and_then(|x| x.rss_kb)
            .map_or("-".into(), |v| format!("{:.0}MB", v as f64 / 1024.0));
        eprint!(
            "\r[{t:5.1}/{total_s:.0}s] sent {} ({}/s) acked {} ({}/s) ack p99 {p99} ms  stream p99 {sub} ms  server cpu {cpu} rss {rss}  errors {}   ",
            r.events_sent,
            r.events_sent - last.0,
            r.events_acked,
            r.events_acked - last.1,
            r.error_count
        );
        last = (r.events_sent, r.events_acked);
    }
    eprintln!();
}

/// The arrival scale that makes the scenario produce about `target`
/// events: status events do not scale, everything else does.
pub fn arrival_scale_for(world: &Arc<World>, seed: u64, ts0: i64, span: i64, target: f64) -> f64 {
    let (mut status, mut other) = (0u64, 0u64);
    for e in Generator::new(world.clone(), seed, ts0, span, 1.0) {
        if e.kind == crate::events::Kind::Status {
            status += 1;
        } else {
            other += 1;
        }
    }
    ((target - status as f64) / other.max(1) as f64).max(1e-6)
}

/// Runs the load and writes the reports; returns the result JSON.
pub async fn run(o: RunOpts) -> Result<Value> {
    let target = Target::parse(&o.target).await?;
    if o.duration_ms <= 0 || o.duration_ms > 3_600_000 {
        bail!("--duration must be between 1s and 1h");
    }
    if o.connections == 0 || o.connections > 1024 || o.subscribers > 5_000 || o.batch == 0 {
        bail!("--connections must be 1..=1024, --subscribers at most 5000, --batch at least 1");
    }
    let world = Arc::new(World::build(&o.scenario, o.seed)?);
    let wall_now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let (mut ts0, span, compression) = match o.clock {
        Clock::Event => (
            world.start_ts,
            world.scenario.span.0,
            world.scenario.span.0 as f64 / o.duration_ms as f64,
        ),
        Clock::Wall => (wall_now_ms + LEAD_US as i64 / 1000, o.duration_ms, 1.0),
    };
    let arrival_scale = match o.rate {
        Some(r) => arrival_scale_for(&world, o.seed, ts0, span, r * o.duration_ms as f64 / 1000.0),
        None => 1.0,
    };
    let pid = o.server_pid.or_else(|| procstat::find_listener(target.port));
    match target.get("/healthz", o.token.as_deref()).await {
        Ok((200, _)) => {}
        Ok((s, b)) => eprintln!("warning: /healthz answered {s}: {}", String::from_utf8_lossy(&b)),
        Err(e) => bail!("deskpulse at {} is not answering: {e:#}", o.target),
    }
    let rec: Rec = Arc::new(Mutex::new(Recorder::new(Instant::now())));
    let samples: SampleTimes = Arc::default();
    let stream_log: Arc<Mutex<StreamLog>> = Arc::default();
    let stop_subs = Arc::new(AtomicBool::new(false));
    let agent_ix: Arc<HashMap<String, u32>> = Arc::new(
        world
            .agent_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect(),
    );
    let mut sub_tasks = Vec::new();
    let mut readies = Vec::new();
    let stream_path = match o.stream_interval_ms {
        Some(ms) => format!("/v1/stream?interval_ms={ms}"),
        None => "/v1/stream".to_string(),
    };
    for _ in 0..o.subscribers {
        let (tx, rx) = tokio::sync::oneshot::channel();
        readies.push(rx);
        sub_tasks.push(tokio::spawn(subscriber(
            target.ws(&stream_path),
            o.token.clone(),
            rec.clone(),
            samples.clone(),
            agent_ix.clone(),
            stream_log.clone(),
            world.utc_offset_ms,
            stop_subs.clone(),
            tx,
        )));
    }
    for r in readies {
        if tokio::time::timeout(Duration::from_secs(10), r).await.is_err() {
            lock(&rec).error("a subscriber got no snapshot within 10 s");
        }
    }
    // The schedule starts now.
    let t0 = Instant::now();
    lock(&rec).t0 = t0;
    if o.clock == Clock::Wall {
        // Stamp events from the wall clock as of the schedule's start.
        ts0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64
            + LEAD_US as i64 / 1000;
    }
    let sched = Schedule { ts0, compression };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_bg = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut ingest = Vec::new();
    for _ in 0..o.connections {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        ingest.push(tokio::spawn(conn::ws_ingest(
            target.ws("/v1/ingest"),
            o.token.clone(),
            rx,
            rec.clone(),
            Window(o.window),
            stop.clone(),
        )));
    }
    let totals: Totals = Arc::default();
    let sampler_task = tokio::spawn(sampler(pid, rec.clone(), stop_bg.clone(), totals.clone()));
    let progress_task =
        (!o.quiet).then(|| tokio::spawn(progress(rec.clone(), stop_bg.clone(), o.duration_ms as f64 / 1000.0)));
    let mut names = Names::of(&world);
    names.id_prefix = o.id_prefix.clone();
    let generator = Generator::new(world.clone(), o.seed, ts0, span, arrival_scale);
    let truth = Truth::new(TruthConfig {
        open_waits_keep_aging: o.clock == Clock::Wall,
        ..TruthConfig::of(&world.scenario)
    });
    let handed = Arc::new(AtomicU64::new(0));
    let log = match &o.save_log {
        Some(p) => Some(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let sched_task = {
        let (rec, samples, stop, handed) = (rec.clone(), samples.clone(), stop.clone(), handed.clone());
        let (batch, linger, max_events, max_backlog) = (o.batch, o.linger_us, o.max_events, o.max_backlog);
        tokio::task::spawn_blocking(move || {
            schedule(
                generator,
                truth,
                names,
                senders,
                rec,
                sched,
                batch,
                linger,
                samples,
                stop,
                max_events,
                max_backlog,
                handed,
                log,
            )
        })
    };
    let out = sched_task.await.context("scheduler thread panicked")?;
    let send_end_us = lock(&rec).now_us();
    // Drain: wait for every ack, bounded.
    let drain_deadline = tokio::time::Instant::now() + Duration::from_millis(o.drain_ms);
    for t in ingest {
        match tokio::time::timeout_at(drain_deadline, t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => lock(&rec).error(format!("ingest connection: {e:#}")),
            Ok(Err(e)) => lock(&rec).error(format!("ingest task: {e}")),
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                lock(&rec).error("acks still missing after --drain timeout");
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let acked_end_us = lock(&rec).now_us();
    tokio::time::sleep(Duration::from_millis(o.settle_ms)).await;
    stop_bg.store(true, Ordering::Relaxed);
    // Fetch the server's figures.
    let mut server_agents = std::collections::BTreeMap::new();
    let mut fetch_error = None;
    match target.get_json("/v1/agents?window=today", o.token.as_deref()).await {
        Ok((200, v)) => {
            for a in v["agents"].as_array().into_iter().flatten() {
                if let Some(n) = a["agent"].as_str() {
                    server_agents.insert(n.to_string(), a.clone());
                }
            }
        }
        Ok((s, v)) => fetch_error = Some(format!("GET /v1/agents?window=today answered {s}: {v}")),
        Err(e) => fetch_error = Some(format!("GET /v1/agents?window=today: {e:#}")),
    }
    let alerts_api = target.get_json("/v1/alerts?state=all", o.token.as_deref()).await.ok();
    // Silent orders (静默下单) are per shop: compare them there.
    let mut shop_mismatches = Vec::new();
    let mut shops_checked = 0;
    for shop in &world.shop_names {
        let (n, fen) = out.truth.silent.get(shop).copied().unwrap_or((0, 0));
        let mismatch = |field: &str, expected: Value, got: Value| verdict::Mismatch {
            agent: format!("shop {shop}"),
            field: field.to_string(),
            expected,
            got,
        };
        match target
            .get_json(&format!("/v1/shops/{shop}/stats?window=today"), o.token.as_deref())
            .await
        {
            Ok((200, v)) => {
                shops_checked += 1;
                for (f, e) in [("silent_orders", n), ("silent_sales_fen", fen)] {
                    if v[f].as_u64() != Some(e) {
                        shop_mismatches.push(mismatch(f, json!(e), v[f].clone()));
                    }
                }
            }
            Ok((404, _)) if (n, fen) == (0, 0) => {}
            Ok((st, v)) => shop_mismatches.push(mismatch("(GET stats)", json!(200), json!(format!("{st}: {v}")))),
            Err(e) => shop_mismatches.push(mismatch("(GET stats)", json!(200), json!(format!("{e:#}")))),
        }
    }
    stop_subs.store(true, Ordering::Relaxed);
    for t in sub_tasks {
        match tokio::time::timeout(Duration::from_secs(2), t).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => lock(&rec).error(format!("subscriber: {e:#}")),
            _ => {}
        }
    }
    let _sampled = sampler_task.await;
    if let Some(p) = progress_task {
        let _shown = p.await;
    }
    // Verdict.
    let truth = out.truth;
    let mut stats_check = verdict::compare_stats(&truth, &server_agents);
    stats_check.mismatches.extend(shop_mismatches);
    stats_check.figures += 2 * shops_checked;
    let lg = stream_log.lock().expect("stream log lock");
    // Cross-connection arrival order can move the event clock past a wait's
    // threshold before its reply lands (see `verdict::Interleave`): judged
    // only for several connections on the event clock, bounded by the worst
    // ack latency seen + 1 s.
    let interleave = (o.connections > 1 && o.clock == Clock::Event).then(|| {
        let max_ack_ms = lock(&rec).ack_lat.max() as f64 / 1000.0;
        verdict::Interleave {
            norm_ms: world.scenario.alerts.norm_ms,
            compression,
            max_wall_skew_ms: max_ack_ms + 1000.0,
        }
    });
    let alert_check = (o.subscribers > 0).then(|| verdict::score_alerts(&truth, &lg.raised, interleave));
    let mut alert_delay = conn::hist();
    if let Some(a) = &alert_check {
        let first_cross: HashMap<(String, String, String), i64> = truth
            .alerts
            .iter()
            .filter_map(|t| {
                t.first_cross
                    .map(|c| ((t.agent.clone(), t.shop.clone(), t.rule.to_string()), c))
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for r in &lg.raised {
            let k = (r.agent.clone(), r.shop.clone(), r.rule.clone());
            if seen.insert(k.clone())
                && let Some(&c) = first_cross.get(&k)
            {
                alert_delay.saturating_record(r.arrived_us.saturating_sub(sched.due_us(c)).max(1));
            }
        }
        let _ = a;
    }
    let alerts_api_summary = alerts_api.as_ref().map(|(s, v)| {
        let list = v["alerts"].as_array().cloned().unwrap_or_default();
        let mut keys = std::collections::BTreeSet::new();
        for a in &list {
            keys.insert((a["agent"].as_str().unwrap_or("").to_string(), a["shop"].as_str().unwrap_or("").to_string(), a["rule"].as_str().unwrap_or("").to_string()));
        }
        let stream_keys: std::collections::BTreeSet<_> = lg.raised.iter().map(|r| (r.agent.clone(), r.shop.clone(), r.rule.clone())).collect();
        json!({"status": s, "alerts": list.len(), "distinct_keys": keys.len(), "keys_not_on_stream": keys.difference(&stream_keys).count(), "stream_keys_not_in_api": stream_keys.difference(&keys).count()})
    });
    let r = lock(&rec);
    let mut reasons: Vec<String> = Vec::new();
    if let Some(a) = &out.aborted {
        reasons.push(format!("load aborted: {a}"));
    }
    if let Some(e) = &fetch_error {
        reasons.push(e.clone());
    }
    if r.error_count > 0 {
        reasons.push(format!(
            "{} errors (first: {})",
            r.error_count,
            r.errors.first().cloned().unwrap_or_default()
        ));
    }
    if r.events_acked != r.events_sent || r.events_sent != out.events {
        reasons.push(format!(
            "{} events generated, {} sent, {} acknowledged",
            out.events, r.events_sent, r.events_acked
        ));
    }
    if r.rejected > 0 {
        reasons.push(format!("{} events rejected", r.rejected));
    }
    if r.duplicates != out.generated.duplicates {
        reasons.push(format!(
            "server counted {} duplicates, generator sent {}",
            r.duplicates, out.generated.duplicates
        ));
    }
    if !stats_check.mismatches.is_empty() {
        reasons.push(format!(
            "{} agent figures differ from the ground truth",
            stats_check.mismatches.len()
        ));
    }
    if let Some(a) = &alert_check {
        if a.precision < o.min_precision {
            reasons.push(format!("alert precision {:.3} < {}", a.precision, o.min_precision));
        }
        if a.recall < o.min_recall {
            reasons.push(format!("alert recall {:.3} < {}", a.recall, o.min_recall));
        }
    }
    if !lg.errors.is_empty() {
        reasons.push(format!("stream errors: {}", lg.errors[0]));
    }
    let pass = reasons.is_empty();
    let t = totals.lock().expect("totals lock");
    let server_cpu_s = match (t.0, t.1) {
        (Some(a), Some(b)) => Some((b - a) as f64 / procstat::CLK_TCK),
        _ => None,
    };
    let self_cpu_s = match (t.3, t.4) {
        (Some(a), Some(b)) => Some((b - a) as f64 / procstat::CLK_TCK),
        _ => None,
    };
    let elapsed_s = acked_end_us.saturating_sub(LEAD_US) as f64 / 1e6;
    let series: Vec<Value> = r
        .secs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "t": i, "sent": s.sent, "acked": s.acked,
                "ack_p50_ms": hist_ms(&s.ack_lat, 0.5), "ack_p99_ms": hist_ms(&s.ack_lat, 0.99), "ack_max_ms": hist_ms(&s.ack_lat, 1.0),
                "sub_p50_ms": hist_ms(&s.sub_lat, 0.5), "sub_p99_ms": hist_ms(&s.sub_lat, 0.99),
                "rss_mb": s.rss_kb.map(|k| k as f64 / 1024.0), "cpu_pct": s.cpu_pct, "self_cpu_pct": s.self_cpu_pct,
            })
        })
        .collect();
    let peak = r.secs.iter().map(|s| s.acked).max().unwrap_or(0);
    let result = json!({
        "tool": "deskpulse-loadtest",
        "version": env!("CARGO_PKG_VERSION"),
        "kind": "run",
        "config": {
            "target": o.target, "scenario": world.scenario.name, "seed": o.seed, "clock": format!("{:?}", o.clock).to_lowercase(),
            "duration_ms": o.duration_ms, "compression": (compression * 100.0).round() / 100.0, "event_ts0": ts0, "event_span_ms": span,
            "connections": o.connections, "batch": o.batch, "linger_us": o.linger_us, "window": o.window, "subscribers": o.subscribers,
            "rate_requested": o.rate, "arrival_scale": arrival_scale, "server_pid": pid, "id_prefix": o.id_prefix,
            "agents": world.agent_names.len(), "shops": world.shop_names.len(),
        },
        "generator": out.generated,
        "totals": {
            "events_generated": out.events, "events_sent": r.events_sent, "events_acked": r.events_acked,
            "frames_sent": r.frames_sent, "frames_acked": r.frames_acked,
            "accepted": r.accepted, "duplicates": r.duplicates, "rejected": r.rejected, "warnings": r.warnings, "errors": r.error_count,
            "elapsed_s": (elapsed_s * 100.0).round() / 100.0,
            "send_phase_s": (send_end_us.saturating_sub(LEAD_US) as f64 / 1e4).round() / 100.0,
            "sent_per_s": (r.events_sent as f64 / elapsed_s.max(1e-3)).round(),
            "acked_per_s": (r.events_acked as f64 / elapsed_s.max(1e-3)).round(),
            "peak_acked_per_s": peak,
            "server_cpu_s": server_cpu_s,
            "server_cpu_us_per_event": server_cpu_s.map(|c| (c * 1e6 / r.events_acked.max(1) as f64 * 10.0).round() / 10.0),
            "server_rss_max_mb": (t.2 > 0).then(|| (t.2 as f64 / 1024.0 * 10.0).round() / 10.0),
            "self_cpu_s": self_cpu_s,
        },
        "latency_ms": {
            "ack (from intended time)": report::percentiles(&r.ack_lat),
            "ack service (from write)": report::percentiles(&r.service_lat),
            "event → subscriber": report::percentiles(&r.sub_lat),
            "alert delay (wall)": report::percentiles(&alert_delay),
            "scheduler lag": report::percentiles(&r.sched_lag),
        },
        "stream": {
            "snapshots": lg.snapshots, "updates": lg.updates, "lagged": lg.lagged,
            "raised": lg.raised.len(), "escalated": lg.escalated, "resolved": lg.resolved, "acked": lg.acked, "errors": lg.errors,
        },
        "truth": {
            "now": truth.now, "day": truth.day, "events": truth.events, "agents": truth.agents.len(),
            "alert_keys_expected": truth.alerts.iter().filter(|a| a.expect == crate::truth::Expect::Yes).count(),
            "silent_orders": truth.silent.values().map(|v| v.0).sum::<u64>(),
        },
        "verdict": {
            "pass": pass, "reasons": reasons,
            "stats": stats_check,
            "alerts": alert_check,
            "alerts_api": alerts_api_summary,
            "duplicates_expected": out.generated.duplicates,
        },
        "series": series,
        "errors": r.errors,
    });
    drop(r);
    write_reports(&o.out_dir, "run", &result)?;
    Ok(result)
}

/// Writes `<kind>-<stamp>.json` and `.html` into `dir` (plus `latest-*` copies).
pub fn write_reports(dir: &std::path::Path, kind: &str, result: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let json_text = serde_json::to_string_pretty(result)?;
    let html = report::html(result);
    for name in [format!("{kind}-{stamp}"), format!("latest-{kind}")] {
        std::fs::write(dir.join(format!("{name}.json")), &json_text)?;
        std::fs::write(dir.join(format!("{name}.html")), &html)?;
    }
    eprintln!(
        "reports: {}/{kind}-{stamp}.json, .html (and latest-{kind}.*)",
        dir.display()
    );
    Ok(())
}
