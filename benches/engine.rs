//! Engine benchmarks: `apply` throughput on a realistic event mix, memory
//! per (agent, shop) partial and per open conversation, the time a
//! snapshot takes, and `replay` of a 1-million-event log through the
//! release binary.
//!
//! Run: `cargo bench --bench engine` (add `-- apply`, `-- memory`,
//! `-- snapshot` or `-- replay` to run one part; `-- apply-1000`,
//! `-- apply-20000` or `-- apply-paced-20000` for one desk). Results go into BENCHMARKS.md by hand.
//!
//! `-- count` is not the bench's timing: it applies 500 000 events of the 1 000-agent
//! desk, after 1 M untimed, inside [`counted`], for a count of
//! instructions and simulated cache misses that does not move with the
//! machine's load:
//! `valgrind --tool=callgrind --cache-sim=yes --LL=33554432,16,64 --toggle-collect='*counted*' <bench binary> count`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use deskpulse::engine::{Clock, Engine, Settings};

/// The allocator the server binary uses, so these figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use deskpulse::protocol::{AgentStatus, Event, EventKind};

/// SplitMix64: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 2025-11-11 00:00 Shanghai.
const START: i64 = 1_762_790_400_000;

/// How the bench's desk names its events and orders.
#[derive(Debug, Clone, Copy)]
enum Ids {
    /// `e<n>` and `o<n>`, numbered across the desk, as a connector that
    /// relays a platform's message numbers would: each shop sees about
    /// one number in as many as there are shops (50 on the 1 000-agent
    /// desk, 500 on the 20 000-agent one). The default.
    Desk,
    /// Numbered per shop, as a connector keeping a count per shop would.
    Shop,
    /// Random UUIDs (version 4 layout), which no numbering helps.
    Uuid,
}

/// What [`Workload::id`] names: an event's id or an order's, each with its
/// own letter and, with [`Ids::Shop`], its own count per shop.
const EVENT: usize = 0;
const ORDER: usize = 1;

impl std::str::FromStr for Ids {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "desk" => Ok(Self::Desk),
            "shop" => Ok(Self::Shop),
            "uuid" => Ok(Self::Uuid),
            _ => Err(()),
        }
    }
}

/// A chat-desk day: customers open conversations, agents answer after a
/// few to a hundred seconds, some auto-replies, transfers, orders, closes.
///
/// Event time runs at ~1 000 events a second times `pace`. At pace 1 a
/// desk of 1 000 agents with its 4 000 open conversations sees each
/// conversation every ~4 s; one of 20 000 agents sees each of its 80 000
/// every ~80 s, so nearly every customer waits past the `customer_waiting`
/// norm: an alert storm. Pace 20 gives the 20 000-agent desk the 1 000's
/// traffic per agent. The pace changes only the times, not the events.
fn workload(n_events: usize, agents: u64, shops: u64, pace: u64, seed: u64) -> Vec<Event> {
    let mut out = Vec::with_capacity(n_events);
    out.extend(Workload::new(agents, shops, pace, seed).take(n_events));
    out
}

/// The events of [`workload`] one at a time, so a desk can be warmed by
/// more events than memory holds at once (`count --after=N`).
struct Workload {
    rng: Rng,
    agents: u64,
    shops: u64,
    pace: u64,
    /// Event time in 1/pace ms since START.
    steps: u64,
    /// Events made so far (the last one's id is `e{made}` with [`Ids::Desk`]).
    made: u64,
    ids: Ids,
    /// Per shop, events and orders made so far, for [`Ids::Shop`].
    per_shop: Vec<[u64; 2]>,
    /// Open conversations: (shop, conversation, customer, agent, waiting).
    open: Vec<(u64, u64, u64, u64, bool)>,
    next_conv: u64,
}

impl Workload {
    fn new(agents: u64, shops: u64, pace: u64, seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            agents,
            shops,
            pace,
            steps: 0,
            made: 0,
            ids: Ids::Desk,
            per_shop: vec![[0; 2]; shops as usize],
            open: Vec::new(),
            next_conv: 0,
        }
    }

    /// The same events with ids in the style `ids`.
    fn with_ids(mut self, ids: Ids) -> Self {
        self.ids = ids;
        self
    }

    /// The id of the next [`EVENT`] or [`ORDER`] (`kind`) of `shop`.
    fn id(&mut self, shop: u64, kind: usize) -> String {
        let letter = ["e", "o"][kind];
        match self.ids {
            Ids::Desk => format!("{letter}{}", self.made),
            Ids::Shop => {
                let n = &mut self.per_shop[shop as usize][kind];
                *n += 1;
                format!("{letter}{n}")
            }
            Ids::Uuid => {
                let mut r = Rng(self.made.wrapping_mul(2).wrapping_add(kind as u64));
                let (a, b) = (r.next(), r.next());
                format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    (b >> 48) | 0x8000,
                    b & 0xffff_ffff_ffff
                )
            }
        }
    }

    fn event(&mut self, ts: i64, shop: u64, kind: EventKind) -> Event {
        self.made += 1;
        Event {
            id: self.id(shop, EVENT).as_str().into(),
            ts,
            shop: format!("shop-{shop}").as_str().into(),
            kind,
        }
    }
}

impl Iterator for Workload {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let (agents, shops) = (self.agents, self.shops);
        // First every agent comes online, at START.
        if self.made < agents {
            let a = self.made;
            let kind = EventKind::Status {
                agent: format!("agent-{a}").as_str().into(),
                status: AgentStatus::Online,
            };
            return Some(self.event(START, a % shops, kind));
        }
        let rng = &mut self.rng;
        self.steps += rng.below(3);
        let ts = START + (self.steps / self.pace) as i64;
        let roll = rng.below(100);
        if self.open.len() < (agents * 4) as usize && (roll < 12 || self.open.is_empty()) {
            let shop = rng.below(shops);
            // Agent `a` sits in shop `a % shops`; one in ten conversations goes
            // to a shared-seat agent of the neighbouring shop.
            let home = if rng.below(10) == 0 { (shop + 1) % shops } else { shop };
            let agent = home + shops * rng.below(agents / shops);
            self.next_conv += 1;
            let customer = rng.below(1_000_000);
            self.open.push((shop, self.next_conv, customer, agent, true));
            let kind = EventKind::CustomerMessage {
                conversation: format!("c{}", self.next_conv).as_str().into(),
                customer: format!("u{customer}").as_str().into(),
                agent: Some(format!("agent-{agent}").as_str().into()),
            };
            return Some(self.event(ts, shop, kind));
        }
        let i = rng.below(self.open.len() as u64) as usize;
        let (shop, conv, customer, agent, waiting) = self.open[i];
        let conversation = format!("c{conv}").as_str().into();
        let cust = format!("u{customer}").as_str().into();
        let ag = format!("agent-{agent}").as_str().into();
        let kind = match roll {
            0..=44 if waiting => {
                self.open[i].4 = false;
                EventKind::AgentMessage {
                    conversation,
                    customer: cust,
                    agent: ag,
                    auto: rng.below(10) == 0,
                }
            }
            0..=54 => {
                self.open[i].4 = true;
                EventKind::CustomerMessage {
                    conversation,
                    customer: cust,
                    agent: None,
                }
            }
            55..=60 => {
                let to = shop + shops * rng.below(agents / shops);
                self.open[i].3 = to;
                EventKind::Assign {
                    conversation,
                    customer: cust,
                    agent: format!("agent-{to}").as_str().into(),
                    from_agent: Some(ag),
                }
            }
            61..=66 => {
                let amount = 100 + rng.below(50_000);
                EventKind::OrderPaid {
                    // With [`Ids::Desk`], named by the count of events before it.
                    order: self.id(shop, ORDER).as_str().into(),
                    customer: cust,
                    amount,
                }
            }
            67..=75 => {
                self.open.swap_remove(i);
                EventKind::Close { conversation }
            }
            _ => EventKind::AgentMessage {
                conversation,
                customer: cust,
                agent: ag,
                auto: false,
            },
        };
        Some(self.event(ts, shop, kind))
    }
}

fn settings() -> Arc<Settings> {
    Arc::new(Settings {
        clock: Clock::Event,
        ..Settings::default()
    })
}

/// The process's resident memory, as `/metrics` reports it.
fn rss_bytes() -> u64 {
    deskpulse::allocator::proc_kib("/proc/self/status", "VmRSS").unwrap_or(0) << 10
}

/// Prints how fast this host hands out fresh memory, which sets much of
/// what a growing engine costs: the kernel zeroes each new page, and in
/// the VMs this runs on that has cost anywhere from 0.1 to 2.7 ns a byte,
/// hour by hour, as the host backs the guest's pages or does not. Taken
/// in a child process, so the memory is not reused by what follows.
fn report_fresh_memory(when: &str) {
    let exe = std::env::current_exe().expect("bench binary path");
    let out = std::process::Command::new(&exe)
        .arg("fresh-memory-child")
        .output()
        .expect("run the fresh-memory child");
    println!(
        "host, {when}: fresh memory {} ns/byte (256 MiB faulted in by a new process)",
        String::from_utf8_lossy(&out.stdout).trim()
    );
}

/// The child of [`report_fresh_memory`]: faults in 256 MiB, one write a
/// page, and prints ns per byte.
fn fresh_memory_child() {
    const BYTES: usize = 256 << 20;
    let t = Instant::now();
    let mut v = vec![0u8; BYTES];
    for i in (0..BYTES).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&v);
    println!("{:.2}", t.elapsed().as_secs_f64() * 1e9 / BYTES as f64);
}

fn bench_apply(want: impl Fn(&str) -> bool) {
    // The 20 000-agent desk twice: at the bench's usual pace, an alert
    // storm (see [`workload`]); and paced to the 1 000-agent desk's traffic
    // per agent, where 4 M events are 3.4 minutes of event time, not 67,
    // so its hour of marks is far from full.
    for (case, agents, shops, pace) in [
        ("apply-1000", 1_000u64, 50u64, 1u64),
        ("apply-20000", 20_000, 500, 1),
        ("apply-paced-20000", 20_000, 500, 20),
    ] {
        if !want(case) {
            continue;
        }
        report_fresh_memory("before");
        // Three desks: a fresh engine taking 2 M events (its tables grow and
        // the kernel zeroes their new pages as it goes); a warm one taking
        // the next 2 M after 1 M (17 minutes of the bench's event time: its
        // tables past their first growth, its hour of marks still filling);
        // and a steady one taking the next 2 M after 4 M (67 minutes: its
        // windows full, marks leaving the hour as fast as they come, as on
        // a desk that has been up through an evening). Each under both
        // clocks: the event clock of `replay` (time moves and the wait
        // rules run at every event) and the wall clock `serve` runs on (one
        // tick per frame, the wait rules once per frame).
        const WARM_UP: usize = 1_000_000;
        const STEADY: usize = 4_000_000;
        let events = workload(STEADY + 2_000_000, agents, shops, pace, 7);
        let first = &events[..2_000_000];
        let desks = [
            (None, first),
            (Some(WARM_UP), &events[WARM_UP..][..2_000_000]),
            (Some(STEADY), &events[STEADY..]),
        ];
        for clock in [Clock::Event, Clock::Wall] {
            let name = match clock {
                Clock::Event => "event clock",
                Clock::Wall => "wall clock",
            };
            let desk = format!("{agents} agents, {shops} shops, {}{name}", paced(pace));
            for (warm_up, timed) in desks {
                let warm = &events[..warm_up.unwrap_or(0)];
                report(
                    &desk,
                    warm_up,
                    timed.len(),
                    best_of_3(|| time_apply(clock, warm, timed)),
                );
            }
        }
        // The runs above read each event from a 6 M-event vector built in
        // advance, so every id's bytes are a cache miss when hashed. `serve`
        // (and `replay`) apply a frame microseconds after parsing it, its
        // events still in cache. Here each frame is cloned, untimed, just
        // before it is applied, and only the engine's calls are timed.
        let desk = format!(
            "{agents} agents, {shops} shops, {}wall clock, frames in cache",
            paced(pace)
        );
        for (warm_up, timed) in desks {
            let warm = &events[..warm_up.unwrap_or(0)];
            report(&desk, warm_up, timed.len(), best_of_3(|| time_apply_hot(warm, timed)));
        }
        report_fresh_memory("after");
    }
}

/// How a desk's label names its pace: nothing at the usual pace.
fn paced(pace: u64) -> String {
    if pace == 1 {
        String::new()
    } else {
        format!("paced x{pace}, ")
    }
}

/// Prints one `apply` figure: `events` applied in `secs` (best of 3) on
/// the desk `desk` describes, fresh or after `warm_up` events.
fn report(desk: &str, warm_up: Option<usize>, events: usize, secs: f64) {
    let engine = match warm_up {
        None => "fresh engine".to_owned(),
        Some(n) => format!("after {n} events"),
    };
    println!(
        "apply: {events} events, {desk}, {engine}: best of 3 {secs:.3} s = {:.2} M events/s",
        events as f64 / secs / 1e6
    );
}

/// Seconds a fresh wall-clock engine spends in `tick`, `apply_batch` and
/// the drains of `timed`, after `warm_up` untimed, each frame freshly
/// cloned (untimed) before it is applied, as `serve` applies frames it has
/// just parsed.
fn time_apply_hot(warm_up: &[Event], timed: &[Event]) -> f64 {
    let mut engine = Engine::new(Arc::new(Settings {
        clock: Clock::Wall,
        ..Settings::default()
    }));
    apply_frames(&mut engine, warm_up);
    let mut took = 0.0;
    for (i, frame) in timed.chunks(100).enumerate() {
        let fresh: Vec<Event> = frame.to_vec();
        let t = Instant::now();
        apply_frame(&mut engine, i, &fresh);
        took += t.elapsed().as_secs_f64();
        drop(fresh);
    }
    std::hint::black_box(&engine);
    took
}

/// The fastest of three runs of `run` (each returns its own seconds).
fn best_of_3(mut run: impl FnMut() -> f64) -> f64 {
    (0..3).map(|_| run()).fold(f64::MAX, f64::min)
}

/// Seconds a fresh engine on `clock` takes to apply `timed`, after
/// `warm_up` untimed.
fn time_apply(clock: Clock, warm_up: &[Event], timed: &[Event]) -> f64 {
    let mut engine = Engine::new(Arc::new(Settings {
        clock,
        ..Settings::default()
    }));
    apply_frames(&mut engine, warm_up);
    let t = Instant::now();
    apply_frames(&mut engine, timed);
    let took = t.elapsed().as_secs_f64();
    std::hint::black_box(&engine);
    took
}

/// Frames of 100 events, as the server applies them, with alert changes
/// and dirty lists drained every 40 frames as the server does. Under the
/// wall clock, each frame is applied after a tick to its newest `ts`, as
/// the server ticks to the time it logged the frame at (the workload's
/// wall time is its event time).
fn apply_frames(engine: &mut Engine, events: &[Event]) {
    for (i, frame) in events.chunks(100).enumerate() {
        apply_frame(engine, i, frame);
    }
}

/// Alert changes [`apply_frame`] has drained, for `count` to report.
static ALERT_CHANGES: AtomicUsize = AtomicUsize::new(0);

/// The `i`-th frame of [`apply_frames`].
fn apply_frame(engine: &mut Engine, i: usize, frame: &[Event]) {
    if engine.settings().clock == Clock::Wall
        && let Some(newest) = frame.iter().map(|e| e.ts).max()
    {
        engine.tick(newest);
    }
    drop(engine.apply_batch(frame));
    if i % 40 == 39 {
        ALERT_CHANGES.fetch_add(engine.take_alert_changes().len(), Ordering::Relaxed);
        drop(engine.take_dirty());
    }
}

/// The workload of `apply-1000`'s warm desk: 1 M events untimed (or
/// `--after=N`), then 500 000 (or `--count=N`) through [`counted`] under
/// the wall clock, as `serve` runs. `--agents=20000` profiles the desk of
/// `apply-20000` instead (one shop per 40 agents), and with `--pace=20`
/// that of `apply-paced-20000`. With `--hot`, each frame is cloned just
/// before it is applied, outside what is counted, as in the bench's
/// "frames in cache" runs: the event's own bytes are then in cache, as in
/// `serve`, and do not show up as the engine's misses; this holds for the
/// warm-up too, so `--every=N --hot` reads the desk's day as `serve`
/// applies it.
///
/// The warm-up is made as it is applied, so `--after` may be an hour of
/// event time or more; `--every=N` prints the rate of each N events of it
/// (frames as they come from memory unless `--hot`, wall clock). The last line ends with
/// the counted events' rate: one run, for finding where a desk's time
/// goes (with `perf`), not a figure for BENCHMARKS.md's table, which takes
/// the best of three.
///
/// `--ids=shop` numbers events and orders per shop instead of across the
/// desk, `--ids=uuid` gives them random UUIDs ([`Ids`]).
///
/// `--reserve=MIB` first has another thread fault in and free that much
/// memory, as `serve` does on its main thread for
/// `server.reserve_memory_mib` before its engine thread starts.
fn bench_count(args: &[String]) {
    let warm_up = flag(args, "--after=", 1_000_000, "--after=N takes a count of events");
    let count = flag(args, "--count=", 500_000, "--count=N takes a count of events");
    let agents = flag(args, "--agents=", 1_000, "--agents=N takes a count of agents");
    let shops = (agents / 40).max(1);
    let pace = flag(args, "--pace=", 1, "--pace=N takes a whole multiple of the usual pace");
    let hot = args.iter().any(|a| a == "--hot");
    let reserve_mib = flag(args, "--reserve=", 0u64, "--reserve=MIB takes a count of MiB");
    if reserve_mib > 0 {
        let start = Instant::now();
        let bytes = std::thread::spawn(move || deskpulse::allocator::reserve(reserve_mib << 20))
            .join()
            .expect("the reserving thread");
        println!(
            "reserve: {} MiB faulted in and freed in {:.1} s; the process holds {} MiB",
            bytes >> 20,
            start.elapsed().as_secs_f64(),
            rss_bytes() >> 20
        );
    }
    let mut engine = Engine::new(Arc::new(Settings {
        clock: Clock::Wall,
        ..Settings::default()
    }));
    // The warm-up is made and applied 100 000 events at a time, so it may
    // run longer than memory could hold its events (an hour of the paced
    // 20 000-agent desk is 72 M). With `--every=N`, each N events of it
    // print their rate and how much the process grew: the desk's day as
    // it goes.
    let every = flag(args, "--every=", 0usize, "--every=N takes a count of events");
    let ids = flag(args, "--ids=", Ids::Desk, "--ids= takes desk, shop or uuid");
    let mut made = Workload::new(agents, shops, pace, 7).with_ids(ids);
    let mut chunk = Vec::with_capacity(100_000);
    let (mut slice_secs, mut slice_rss) = (0.0, rss_bytes());
    for at in (0..warm_up).step_by(100_000) {
        let left = (warm_up - at).min(100_000);
        chunk.clear();
        chunk.extend(made.by_ref().take(left));
        slice_secs += if hot {
            apply_hot(&mut engine, &chunk)
        } else {
            let start = Instant::now();
            apply_frames(&mut engine, &chunk);
            start.elapsed().as_secs_f64()
        };
        let done = at + left;
        if every > 0 && (done.is_multiple_of(every) || done == warm_up) {
            let n = (done - 1) % every + 1;
            let rss = rss_bytes();
            println!(
                "warm-up: events {}..{done}: {:.2} M events/s, the process grew by {:.0} bytes an event",
                done - n,
                n as f64 / slice_secs / 1e6,
                rss.saturating_sub(slice_rss) as f64 / n as f64
            );
            (slice_secs, slice_rss) = (0.0, rss);
        }
    }
    let mut events = Vec::with_capacity(count);
    events.extend(made.take(count));
    // A profiler attaches on this line: what runs after it is the counted
    // part.
    println!("count: {count} events made; applying them");
    let changes_before = ALERT_CHANGES.load(Ordering::Relaxed);
    // Only the counted calls are timed (with `--hot`, not the clones).
    let rss_before = rss_bytes();
    let secs = if hot {
        apply_hot(&mut engine, &events)
    } else {
        let start = Instant::now();
        counted(&mut engine, &events);
        start.elapsed().as_secs_f64()
    };
    let applied = events.len();
    // Growth counts the clones of `--hot` too, but those are freed frame by
    // frame and their memory taken again by the next.
    let grown = rss_bytes().saturating_sub(rss_before);
    println!(
        "count: applied {applied} events in `counted` after {warm_up} ({:.2} M events/s, one run, wall clock; the process grew by {:.0} bytes an event); {} alert changes drained meanwhile",
        applied as f64 / secs / 1e6,
        grown as f64 / applied as f64,
        ALERT_CHANGES.load(Ordering::Relaxed) - changes_before
    );
}

/// The number after `prefix` among `args` (`--count=5` for `--count=`), or
/// `default` when none names it.
fn flag<T: std::str::FromStr>(args: &[String], prefix: &str, default: T, what: &str) -> T {
    args.iter()
        .find_map(|a| a.strip_prefix(prefix))
        .map_or(default, |n| n.parse().unwrap_or_else(|_| panic!("{what}")))
}

/// The part of [`bench_count`] a profiler counts (`--toggle-collect`).
#[inline(never)]
fn counted(engine: &mut Engine, events: &[Event]) {
    apply_frames(engine, events);
    std::hint::black_box(engine);
}

/// Applies `events` in frames of 100, each cloned just before it is
/// applied, so that its bytes are in cache as those of a frame `serve`
/// has just parsed; returns the seconds the applies took, the clones not
/// counted.
fn apply_hot(engine: &mut Engine, events: &[Event]) -> f64 {
    let mut secs = 0.0;
    for (i, frame) in events.chunks(100).enumerate() {
        let fresh: Vec<Event> = frame.to_vec();
        let start = Instant::now();
        counted_frame(engine, i, &fresh);
        secs += start.elapsed().as_secs_f64();
    }
    secs
}

/// One frame of [`bench_count`] with `--hot`, counted as [`counted`] is.
#[inline(never)]
fn counted_frame(engine: &mut Engine, i: usize, frame: &[Event]) {
    apply_frame(engine, i, frame);
    std::hint::black_box(engine);
}

/// Each memory figure is taken in a fresh process, so memory freed by an
/// earlier measurement cannot hide growth in a later one.
fn bench_memory() {
    let exe = std::env::current_exe().expect("bench binary path");
    for case in ["agents-1000", "agents-100000", "conversations", "alerts"] {
        let out = std::process::Command::new(&exe)
            .args(["memory-child", case])
            .output()
            .expect("run the memory child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn memory_child(case: &str) {
    match case {
        "agents-1000" => memory_agents(1_000),
        "agents-100000" => memory_agents(100_000),
        "alerts" => memory_alerts(),
        _ => memory_conversations(),
    }
}

fn memory_agents(agents: u64) {
    // No alert fires here (the norm is far above every wait): alert history
    // is desk-wide and measured on its own by the `alerts` case.
    let quiet = Arc::new(Settings {
        clock: Clock::Event,
        thresholds: deskpulse::engine::alerts::Thresholds {
            norm_ms: 600_000,
            clear_ms: 300_000,
            critical_ms: 1_200_000,
            ..Default::default()
        },
        ..Settings::default()
    });
    // Every agent has a busy hour inside the last hour: `per_agent`
    // conversations, each a customer message, a reply 5–95 s later and a
    // close, to `per_agent * 3 / 4` distinct customers. So every window
    // (today, 1h, 15m, 5m) holds data; no conversation stays open. Events
    // are applied in time order (the event clock moves as on a real desk)
    // and alert changes and dirty lists are drained as the server does.
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    let per_agent = 120u64;
    let round_ms = 25_000i64;
    let base = START + 10 * 3_600_000;
    // The dedup set is desk-wide (every event id for 24–48 h), so it is
    // reported apart: one holding the same ids of the same shops as the
    // engine's below (3 events per conversation, numbered across the desk,
    // so each shop's runs close and its ids go to the flat sets) is built
    // first, on its own, and kept, so it grows into fresh memory exactly as
    // the engine's own set does.
    let dedup_ids = 3 * per_agent * agents;
    let before_dedup = rss_bytes();
    let mut dedup = deskpulse::engine::dedup::Dedup::default();
    for i in 0..dedup_ids {
        let (shop, id) = (format!("shop-{}", (i / 3) % agents % 500), format!("e{}", i + 1));
        let id = deskpulse::engine::dedup::Id::event(&shop, &id);
        dedup.insert(id, &deskpulse::engine::dedup::Key::of(id), base);
    }
    let dedup_bytes = rss_bytes().saturating_sub(before_dedup) as f64;
    let before = rss_bytes();
    let mut engine = Engine::new(quiet);
    let mut id = 0u64;
    // (ts, seq) → event; `seq` keeps equal times in generation order.
    let mut pending: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut events: std::collections::HashMap<u64, Event> = std::collections::HashMap::new();
    let mut seq = 0u64;
    let mut applied = 0u64;
    for k in 0..=per_agent {
        let round_start = base + k as i64 * round_ms;
        // Everything due before this round's first message goes in first.
        while let Some(&Reverse((ts, s))) = pending.peek() {
            if k < per_agent && ts >= round_start {
                break;
            }
            pending.pop();
            engine.apply(&events.remove(&s).expect("pending events are stored"));
            applied += 1;
            if applied.is_multiple_of(4096) {
                drop(engine.take_alert_changes());
                drop(engine.take_dirty());
            }
        }
        if k == per_agent {
            break;
        }
        for a in 0..agents {
            let shop: deskpulse::protocol::ShopId = format!("shop-{}", a % 500).as_str().into();
            let agent: deskpulse::protocol::AgentId = format!("agent-{a}").as_str().into();
            let conv: deskpulse::protocol::ConversationId = format!("c{a}-{k}").as_str().into();
            let cust: deskpulse::protocol::CustomerId = format!("u{a}-{}", k % (per_agent * 3 / 4)).as_str().into();
            let reply = 5_000 + ((k * 7919 + a * 104_729) % 90_000) as i64;
            let planned = [
                (
                    0,
                    EventKind::CustomerMessage {
                        conversation: conv.clone(),
                        customer: cust.clone(),
                        agent: Some(agent.clone()),
                    },
                ),
                (
                    reply,
                    EventKind::AgentMessage {
                        conversation: conv.clone(),
                        customer: cust,
                        agent,
                        auto: false,
                    },
                ),
                (100_000, EventKind::Close { conversation: conv }),
            ];
            for (dt, kind) in planned {
                id += 1;
                seq += 1;
                let ts = round_start + (a as i64 * 7) % 20_000 + dt;
                events.insert(
                    seq,
                    Event {
                        id: format!("e{id}").as_str().into(),
                        ts,
                        shop: shop.clone(),
                        kind,
                    },
                );
                pending.push(Reverse((ts, seq)));
            }
        }
    }
    drop(engine.take_alert_changes());
    drop(engine.take_dirty());
    drop(events);
    drop(pending);
    let census = engine.census();
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(census.alerts_held, 0, "the quiet thresholds raise nothing");
    assert_eq!(census.dedup_ids as u64, dedup_ids, "the engine holds every event id");
    std::hint::black_box(&dedup);
    let per_partial = (grown as f64 - dedup_bytes) / census.partials as f64;
    println!(
        "memory: {agents} agents × {per_agent} responses in the last hour (all windows populated): RSS +{:.1} MiB; \
         {:.1} KiB per (agent, shop) partial incl. its customers, + {:.1} MiB for {} remembered event ids",
        grown as f64 / (1 << 20) as f64,
        per_partial / 1024.0,
        dedup_bytes / (1 << 20) as f64,
        census.dedup_ids,
    );
}

/// Alert history: `n` alerts raised and resolved over 20 000 (agent, shop)
/// keys, all within the day the book keeps.
fn memory_alerts() {
    use deskpulse::engine::alerts::{AlertBook, Reading, Rule, Thresholds};
    let n = 1_000_000u64;
    let t = Thresholds::default();
    let shops: Vec<deskpulse::protocol::ShopId> = (0..500).map(|s| format!("shop-{s}").as_str().into()).collect();
    let agents: Vec<deskpulse::protocol::AgentId> = (0..20_000).map(|a| format!("agent-{a}").as_str().into()).collect();
    let before = rss_bytes();
    let mut book = AlertBook::default();
    for i in 0..n {
        let a = (i % 20_000) as usize;
        let now = START + i as i64;
        let slow = Reading::customer_waiting(t.norm_ms + 1, &t);
        let fine = Reading::customer_waiting(0, &t);
        book.observe(&shops[a % 500], &agents[a], Rule::CustomerWaiting, slow, &t, now);
        book.observe(&shops[a % 500], &agents[a], Rule::CustomerWaiting, fine, &t, now);
        if i % 4096 == 0 {
            drop(book.take_changes());
        }
    }
    drop(book.take_changes());
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "memory: {n} alerts raised and resolved, held in the day's history: RSS +{:.1} MiB = {:.0} bytes per alert",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / n as f64
    );
    std::hint::black_box(&book);
}

fn memory_conversations() {
    // Open conversations, each with an open wait and its own customer.
    let n = 1_000_000u64;
    let before = rss_bytes();
    let mut engine = Engine::new(settings());
    for i in 0..n {
        engine.apply(&Event {
            id: format!("w{i}").as_str().into(),
            ts: START + i as i64,
            shop: format!("shop-{}", i % 100).as_str().into(),
            kind: EventKind::CustomerMessage {
                conversation: format!("conv-{i}").as_str().into(),
                customer: format!("cust-{i}").as_str().into(),
                agent: Some(format!("agent-{}", i % 5000).as_str().into()),
            },
        });
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "memory: {n} open conversations with waits: RSS +{:.1} MiB = {:.0} bytes per conversation (incl. its customer, marks and event id)",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / n as f64
    );
}

/// The snapshot of a desk after 3 M events (1 000 agents): the copy the
/// engine thread takes, and the serialization the snapshot writer then
/// does. Three runs of each, all printed: the allocator may hand a later
/// run memory an earlier one freed, where a server's snapshot, a million
/// events after the last, mostly gets fresh pages.
fn bench_snapshot() {
    let events = workload(3_000_000, 1_000, 50, 1, 7);
    let mut engine = Engine::new(settings());
    apply_frames(&mut engine, &events);
    let ms = |run: &mut dyn FnMut() -> f64| {
        (0..3)
            .map(|_| format!("{:.0}", run() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let copy = ms(&mut || {
        let t = Instant::now();
        let copy = engine.clone();
        let took = t.elapsed().as_secs_f64();
        drop(std::hint::black_box(copy));
        took
    });
    let mut bytes = 0;
    let serialize = ms(&mut || {
        let t = Instant::now();
        let body = engine.snapshot();
        let took = t.elapsed().as_secs_f64();
        bytes = body.len();
        drop(std::hint::black_box(body));
        took
    });
    let body = engine.snapshot();
    let restore = ms(&mut || {
        let t = Instant::now();
        let back = Engine::restore(engine.settings().clone(), &body).expect("the snapshot restores");
        let took = t.elapsed().as_secs_f64();
        drop(std::hint::black_box(back));
        took
    });
    println!(
        "snapshot: desk after 3 000 000 events, 1000 agents, 50 shops, {:.1} MiB: copy {copy} ms, serialize {serialize} ms, restore (indexes rebuilt) {restore} ms",
        bytes as f64 / (1 << 20) as f64
    );
}

fn bench_replay() {
    let path = std::env::temp_dir().join("deskpulse-bench-1m.ndjson");
    let events = workload(1_000_000, 2_000, 100, 1, 11);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("temp file"));
        for e in &events {
            writeln!(f, "{}", e.to_json()).expect("write");
        }
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let bin = env!("CARGO_BIN_EXE_deskpulse");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args(["replay", path.to_str().expect("utf-8 path")])
            .output()
            .expect("run deskpulse replay");
        best = best.min(t.elapsed().as_secs_f64());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "replay: 1 000 000 events ({:.0} MiB NDJSON), best of 3 {:.2} s = {:.0} k events/s ({bin})",
        size as f64 / (1 << 20) as f64,
        best,
        1e6 / best / 1e3
    );
    let _ = std::fs::remove_file(&path);
}

fn main() {
    // As `deskpulse` runs (its `main` does the same), unless the caller
    // set mimalloc's purge delay itself.
    deskpulse::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("fresh-memory-child") {
        fresh_memory_child();
        return;
    }
    if args.get(1).map(String::as_str) == Some("memory-child") {
        memory_child(args.get(2).map_or("", String::as_str));
        return;
    }
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if filter.iter().any(|f| f == "count") {
        bench_count(&args);
        return;
    }
    bench_apply(want);
    if want("memory") {
        bench_memory();
    }
    if want("snapshot") {
        bench_snapshot();
    }
    if want("replay") {
        bench_replay();
    }
}
