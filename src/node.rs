//! One node: the log writer thread (group commit) and the engine thread (the
//! desk's partitions), started after recovery, behind a cheap [`Node`]
//! handle. Batches in, per-event outcomes out once durable: the log thread
//! decides duplicates ahead of the engine ([`Admission`]) and queues each
//! batch for the engine before answering, and queries run on the engine
//! thread behind it, so they see every acknowledged event.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::engine::alerts::Alert;
use crate::engine::desk::{Admission, Desk};
use crate::engine::{Applied, Clock};
use crate::log::{self, LogWriter, RecordKind};
use crate::protocol::{Event, parse_event};
use crate::publish::Hub;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Where the log lives.
    pub data_dir: PathBuf,
    /// Wall or event clock.
    pub clock: Clock,
    /// Engine partitions (shops are spread over them).
    pub partitions: usize,
    /// Live stream push interval.
    pub push_interval: Duration,
    /// Take an engine snapshot after this many applied events.
    pub snapshot_every_events: u64,
}

/// Why a batch was not taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    /// The log cannot write: nothing is acknowledged until restart.
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The node is shutting down.
    #[error("shutting down")]
    Stopped,
}

/// Counters for `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Counters {
    pub events_accepted: AtomicU64,
    pub events_duplicate: AtomicU64,
    pub events_rejected: AtomicU64,
    pub frames: AtomicU64,
    pub commits: AtomicU64,
    pub commit_micros_total: AtomicU64,
    pub records: AtomicU64,
    pub ws_ingest: AtomicU64,
    pub ws_stream: AtomicU64,
    pub stream_lagged: AtomicU64,
    pub recovered_records: AtomicU64,
    pub recovery_millis: AtomicU64,
    pub truncated_bytes: AtomicU64,
    /// Time from a batch's arrival to its outcome (durable, queued for the engine).
    pub ingest_latency: LatencyHistogram,
    /// Time of each group commit (write and fsync of the log).
    pub commit_latency: LatencyHistogram,
    /// Events acknowledged but not yet applied by the engine.
    pub engine_backlog: Backlog,
}

/// How far (in events) the engine may fall behind the log before acks
/// wait for it: about 1.7 s of a 150 k/s load, ~60 MiB of parsed events.
pub const ENGINE_BACKLOG_EVENTS: u64 = 250_000;

/// Events acknowledged and queued for the engine but not yet applied.
///
/// The log thread waits here, before queueing a batch, only once the engine
/// is [`ENGINE_BACKLOG_EVENTS`] behind. The engine's command queue itself is
/// counted in commands, and a frame can hold one event or a thousand: with
/// it as the only bound, a paced load of small frames filled it within a
/// quarter of a second of an engine pause (a snapshot copy), and every ack
/// waited for the engine.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: std::sync::Mutex<u64>,
    drained: std::sync::Condvar,
}

impl Backlog {
    /// Counts `n` more events in, first waiting while the backlog is full
    /// (an empty backlog takes any batch, however large).
    fn add(&self, n: u64) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        while *queued > 0 && *queued + n > ENGINE_BACKLOG_EVENTS {
            queued = self.drained.wait(queued).unwrap_or_else(|e| e.into_inner());
        }
        *queued += n;
    }

    /// Counts `n` events out: the engine applied them.
    fn done(&self, n: u64) {
        let mut queued = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        *queued = queued.saturating_sub(n);
        self.drained.notify_all();
    }

    /// Events queued now.
    pub fn events(&self) -> u64 {
        *self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Prometheus histogram of durations with fixed buckets, lock-free.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Count per bucket of [`LatencyHistogram::BOUNDS_US`], then one above all.
    buckets: [AtomicU64; 13],
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Upper bounds of the buckets, µs.
    pub const BOUNDS_US: [u64; 12] = [
        500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 5_000_000,
    ];

    /// Counts one duration.
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = Self::BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`), and the sum in µs.
    pub fn cumulative(&self) -> (Vec<u64>, u64) {
        let mut total = 0;
        let counts = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        (counts, self.sum_micros.load(Ordering::Relaxed))
    }
}

/// The outcome of each event (accepted or duplicate), known once durable.
type Outcome = Result<Vec<Applied>, NodeError>;
type Reply = oneshot::Sender<Outcome>;
type Query = Box<dyn FnOnce(&Desk) + Send>;

enum LogCmd {
    Events {
        framed: Vec<u8>,
        events: Vec<Event>,
        reply: Reply,
    },
    Ack {
        payload: Vec<u8>,
        ack: AckRecord,
        reply: oneshot::Sender<Result<Option<Alert>, NodeError>>,
    },
    /// The wall clock's tick (every 100 ms): logged as a clock record, so
    /// recovery moves time exactly where the engine did between batches,
    /// and alerts raised by time alone come back as they were raised.
    Tick,
}

/// `through` is the sequence number after the command's records.
enum EngineCmd {
    /// Events already acknowledged: the log thread admitted them (see
    /// [`Admission`]) and answered once they were durable.
    Apply {
        events: Vec<Event>,
        clock: Option<i64>,
        through: u64,
        admitted: Vec<Applied>,
    },
    Ack {
        ack: AckRecord,
        clock: Option<i64>,
        through: u64,
        reply: oneshot::Sender<Result<Option<Alert>, NodeError>>,
    },
    /// Time moves to `now` (wall clock), as logged below `through`.
    Tick {
        now: i64,
        through: u64,
    },
    Publish {
        full: bool,
    },
    Query(Query),
}

/// One log record, parsed, on its way to the recovery applier.
enum Replayed {
    Event(Event),
    Ack(AckRecord),
    Clock(i64),
}

/// An acknowledgement as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AckRecord {
    id: String,
    by: String,
}

/// The outcome of an enqueued batch, once durable.
#[derive(Debug)]
pub struct Pending(Option<oneshot::Receiver<Outcome>>);

impl Pending {
    /// Waits for the outcome.
    pub async fn wait(self) -> Result<Vec<Applied>, NodeError> {
        match self.0 {
            None => Ok(Vec::new()),
            Some(rx) => rx.await.map_err(|_| NodeError::Stopped)?,
        }
    }
}

/// The handle every connection holds.
#[derive(Debug, Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

struct Shared {
    log_tx: mpsc::Sender<LogCmd>,
    engine_tx: mpsc::Sender<EngineCmd>,
    hub: Hub,
    config: Arc<Config>,
    options: NodeOptions,
    counters: Arc<Counters>,
    storage_failed: Arc<AtomicBool>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Wall-clock ms since the epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Node {
    /// Recovers the desk from the log in `options.data_dir` and starts the
    /// log and engine threads. Blocking: call before serving.
    pub fn start(config: Arc<Config>, options: NodeOptions) -> std::io::Result<Self> {
        let started = Instant::now();
        let counters = Arc::new(Counters::default());
        let settings = config.settings(options.clock);
        let wall = options.clock == Clock::Wall;
        let log_dir = options.data_dir.join("log");
        let snap_dir = options.data_dir.join("snapshots");
        let (mut desk, from) = match log::snapshot::read_latest(&snap_dir)? {
            Some((seq, body)) => match Desk::restore(settings.clone(), &body) {
                Ok(desk) => {
                    if desk.parts().len() != options.partitions {
                        tracing::warn!(
                            snapshot = desk.parts().len(),
                            asked = options.partitions,
                            "keeping the snapshot's partition count"
                        );
                    }
                    tracing::info!(seq, "restored the engine snapshot");
                    (desk, seq)
                }
                Err(e) => {
                    return Err(std::io::Error::other(format!(
                        "snapshot {seq} does not load ({e}); move {} away to rebuild from the log",
                        snap_dir.display()
                    )));
                }
            },
            None => (Desk::new(settings, options.partitions), 0),
        };
        // Recovery reads and parses on this thread while another applies,
        // in log order.
        let mut bad_records = 0u64;
        let (writer, recovery) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Replayed>>(16);
            let desk = &mut desk;
            let applier = scope.spawn(move || {
                // Events are applied as the batches they arrived in: with
                // the wall clock each batch was logged after a clock record
                // of its own, and the rules judged it as a whole, so a
                // batch ends at the next clock or ack record. (Logs from
                // before per-batch clock records group a whole commit.)
                // With the event clock any grouping gives the same result.
                const MAX_EVENT_CLOCK_BATCH: usize = 256;
                let mut batch: Vec<Event> = Vec::new();
                for chunk in rx {
                    for item in chunk {
                        match item {
                            Replayed::Event(e) => {
                                batch.push(e);
                                if !wall && batch.len() >= MAX_EVENT_CLOCK_BATCH {
                                    flush(desk, &mut batch);
                                }
                            }
                            Replayed::Ack(a) => {
                                flush(desk, &mut batch);
                                desk.ack_alert(&a.id, &a.by);
                            }
                            Replayed::Clock(now) => {
                                flush(desk, &mut batch);
                                desk.tick(now);
                            }
                        }
                    }
                }
                flush(desk, &mut batch);
            });
            let mut chunk = Vec::with_capacity(1024);
            let opened = LogWriter::open(&log_dir, from, log::DEFAULT_SEGMENT_BYTES, |_, kind, payload| {
                let item = match kind {
                    RecordKind::Event => {
                        match std::str::from_utf8(payload)
                            .map_err(|e| e.to_string())
                            .and_then(parse_event)
                        {
                            Ok(event) => Some(Replayed::Event(event)),
                            Err(_) => {
                                bad_records += 1;
                                None
                            }
                        }
                    }
                    RecordKind::AlertAck => serde_json::from_slice::<AckRecord>(payload).ok().map(Replayed::Ack),
                    RecordKind::Clock => <[u8; 8]>::try_from(payload)
                        .ok()
                        .map(|b| Replayed::Clock(i64::from_le_bytes(b))),
                };
                chunk.extend(item);
                if chunk.len() >= 1024 {
                    // The applier only stops if it panicked; that panic surfaces at join.
                    tx.send(std::mem::replace(&mut chunk, Vec::with_capacity(1024))).ok();
                }
            });
            tx.send(chunk).ok();
            drop(tx);
            applier.join().expect("the recovery applier does not panic");
            opened
        })?;
        if wall {
            desk.tick(wall_ms());
        }
        // Alerts raised while replaying are history, not news.
        desk.take_alert_changes();
        if bad_records > 0 {
            tracing::error!(bad_records, "log records that did not parse were skipped");
        }
        counters.recovered_records.store(recovery.replayed, Ordering::Relaxed);
        counters
            .truncated_bytes
            .store(recovery.truncated_bytes, Ordering::Relaxed);
        counters
            .recovery_millis
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "cut a torn or corrupt log tail (never acknowledged)"
            );
        }
        tracing::info!(
            records = recovery.replayed,
            millis = started.elapsed().as_millis() as u64,
            "recovered from the log"
        );

        let hub = Hub::new(desk.settings().thresholds);
        // Alerts still active after recovery belong in every new snapshot frame.
        hub.seed_alerts(desk.active_alerts());
        let (log_tx, log_rx) = mpsc::channel::<LogCmd>(4096);
        // Bounded in events by `Counters::engine_backlog`; this bound only
        // keeps a flood of tiny commands in check.
        let (engine_tx, engine_rx) = mpsc::channel::<EngineCmd>(1 << 16);
        let storage_failed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let engine_tx = engine_tx.clone();
            let counters = counters.clone();
            let failed = storage_failed.clone();
            let admission = desk.admission();
            threads.push(
                std::thread::Builder::new()
                    .name("deskpulse-log".into())
                    .spawn(move || {
                        fail_fast("log", || {
                            log_thread(writer, log_rx, engine_tx, admission, counters, failed, wall)
                        })
                    })?,
            );
        }
        {
            let hub = hub.clone();
            let counters = counters.clone();
            let snapshots = Snapshots {
                dir: snap_dir,
                every: options.snapshot_every_events.max(1),
                log_dir: log_dir.clone(),
                through: recovery.next_seq,
                since: recovery.replayed,
                written_through: from,
                writer: None,
                spare: None,
            };
            threads.push(
                std::thread::Builder::new()
                    .name("deskpulse-engine".into())
                    .spawn(move || {
                        fail_fast("engine", || {
                            engine_thread(desk, engine_rx, hub, snapshots, &counters.engine_backlog)
                        })
                    })?,
            );
        }
        let node = Self {
            shared: Arc::new(Shared {
                log_tx,
                engine_tx,
                hub,
                config,
                options,
                counters,
                storage_failed,
                threads: std::sync::Mutex::new(threads),
            }),
        };
        Ok(node)
    }

    /// Starts the timers (engine ticks and stream pushes) on the current runtime.
    pub fn spawn_timers(&self, shutdown: tokio_util::sync::CancellationToken) {
        let tx = self.shared.engine_tx.clone();
        let log_tx = self.shared.log_tx.clone();
        let wall = self.shared.options.clock == Clock::Wall;
        let push = self.shared.options.push_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut publish = tokio::time::interval(push);
            let mut full = tokio::time::interval(Duration::from_secs(30));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let cmd = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick(), if wall => {
                        // Through the log, in order with the batches.
                        if log_tx.send(LogCmd::Tick).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = publish.tick() => EngineCmd::Publish { full: false },
                    _ = full.tick() => EngineCmd::Publish { full: true },
                };
                if tx.send(cmd).await.is_err() {
                    break;
                }
            }
        });
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.shared.config
    }

    /// The clock mode.
    pub fn clock(&self) -> Clock {
        self.shared.options.clock
    }

    /// The live-stream hub.
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether the log can still write.
    pub fn storage_ok(&self) -> bool {
        !self.shared.storage_failed.load(Ordering::Relaxed)
    }

    /// Makes `events` durable, applies them, and returns each one's outcome.
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<Applied>, NodeError> {
        self.enqueue(events).await?.wait().await
    }

    /// Queues `events` for the log (in call order) and returns a handle for
    /// their outcome; a connection enqueues frames one after the other and
    /// waits for the answers concurrently, so its events stay in order.
    pub async fn enqueue(&self, events: Vec<Event>) -> Result<Pending, NodeError> {
        if events.is_empty() {
            return Ok(Pending(None));
        }
        if !self.storage_ok() {
            return Err(NodeError::Storage("an earlier write or fsync failed".into()));
        }
        let mut framed = Vec::with_capacity(events.len() * 256);
        for e in &events {
            log::encode(&mut framed, RecordKind::Event, e.to_json().as_bytes());
        }
        let (reply, rx) = oneshot::channel();
        self.shared
            .log_tx
            .send(LogCmd::Events { framed, events, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(Pending(Some(rx)))
    }

    /// Logs and applies an acknowledgement; `None` if the alert is unknown.
    pub async fn ack_alert(&self, id: &str, by: &str) -> Result<Option<Alert>, NodeError> {
        let ack = AckRecord {
            id: id.to_owned(),
            by: by.to_owned(),
        };
        let payload = serde_json::to_vec(&ack).expect("strings serialize");
        let (reply, rx) = oneshot::channel();
        self.shared
            .log_tx
            .send(LogCmd::Ack { payload, ack, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `f` on the engine thread, after every event acknowledged so far.
    pub async fn query<R: Send + 'static>(&self, f: impl FnOnce(&Desk) -> R + Send + 'static) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: Query = Box::new(move |desk| {
            // The asker may have gone (client disconnected): nothing to do then.
            tx.send(f(desk)).ok();
        });
        self.shared
            .engine_tx
            .send(EngineCmd::Query(job))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Asks for an immediate publish of everything (tests, new subscribers).
    pub async fn publish_now(&self) {
        // A stopped engine has nothing to publish.
        self.shared.engine_tx.send(EngineCmd::Publish { full: true }).await.ok();
    }

    /// Drops the senders and waits for both threads to drain and exit.
    pub fn shutdown(self) {
        let Ok(shared) = Arc::try_unwrap(self.shared) else {
            tracing::warn!("node handles still held at shutdown; threads exit when they drop");
            return;
        };
        let Shared {
            log_tx,
            engine_tx,
            threads,
            ..
        } = shared;
        drop(log_tx);
        drop(engine_tx);
        for t in threads.into_inner().expect("no panics while holding the lock") {
            if t.join().is_err() {
                tracing::error!("a node thread panicked");
            }
        }
    }
}

/// A panic in a node thread is a bug that leaves the node unable to answer;
/// exit so the supervisor restarts it and it recovers from the log.
fn fail_fast(name: &str, body: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
        tracing::error!(
            thread = name,
            "node thread panicked; exiting so a restart recovers from the log"
        );
        std::process::exit(70);
    }
}

/// The least time from one group commit's start to the next one's.
const MIN_COMMIT_GAP: Duration = Duration::from_millis(1);

/// Group commit: take everything queued, write it, one fsync, then hand the
/// batches to the engine in log order and acknowledge them: each event's
/// outcome comes from `admission`, the desk's duplicate decisions taken
/// ahead of it, so an ack waits for the disk, never for the engine.
fn log_thread(
    mut writer: LogWriter,
    mut rx: mpsc::Receiver<LogCmd>,
    engine_tx: mpsc::Sender<EngineCmd>,
    mut admission: Admission,
    counters: Arc<Counters>,
    failed: Arc<AtomicBool>,
    wall: bool,
) {
    const MAX_BATCH_BYTES: usize = 8 << 20;
    let mut batch: Vec<LogCmd> = Vec::new();
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        // Under load, gather for at least MIN_COMMIT_GAP between fsyncs:
        // fewer, larger commits cost the kernel and the disk less. A frame
        // after a quiet spell is committed at once.
        if let Some(gap) = last_commit.and_then(|t| MIN_COMMIT_GAP.checked_sub(t.elapsed())) {
            std::thread::sleep(gap);
        }
        let mut bytes = 0;
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(cmd) => {
                    bytes += match &cmd {
                        LogCmd::Events { framed, .. } => framed.len(),
                        LogCmd::Ack { payload, .. } => payload.len(),
                        LogCmd::Tick => 0,
                    };
                    batch.push(cmd);
                }
                Err(_) => break,
            }
        }
        if failed.load(Ordering::Relaxed) {
            for cmd in batch.drain(..) {
                refuse(cmd, "an earlier write or fsync failed", &engine_tx, writer.next_seq());
            }
            continue;
        }
        let clock = wall.then(wall_ms);
        let mut through = Vec::with_capacity(batch.len());
        for cmd in &batch {
            // A clock record opens each batch (wall clock), so recovery
            // knows where a batch ends and applies it as it was applied.
            if let Some(now) = clock {
                writer.append(RecordKind::Clock, &now.to_le_bytes());
            }
            match cmd {
                LogCmd::Events { framed, events, .. } => {
                    writer.append_framed(framed, events.len() as u64);
                }
                LogCmd::Ack { payload, .. } => {
                    writer.append(RecordKind::AlertAck, payload);
                }
                LogCmd::Tick => {} // its clock record is written above
            }
            through.push(writer.next_seq());
        }
        // Ticks alone need no fsync: the next commit's covers them, and a
        // tick lost in a crash only moves a raise to the next batch's time.
        let durable = batch.iter().any(|cmd| !matches!(cmd, LogCmd::Tick));
        let t = Instant::now();
        let written = if durable {
            last_commit = Some(t);
            writer.commit()
        } else {
            writer.write_unsynced()
        };
        if let Err(e) = written {
            // Never retry an fsync and assume success: stop acknowledging.
            tracing::error!(error = %e, "log write failed; no further events will be acknowledged");
            failed.store(true, Ordering::Relaxed);
            for cmd in batch.drain(..) {
                refuse(cmd, &e.to_string(), &engine_tx, writer.next_seq());
            }
            continue;
        }
        if durable {
            let took = t.elapsed();
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters
                .commit_micros_total
                .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
            counters.commit_latency.record(took);
        }
        for (cmd, through) in batch.drain(..).zip(through) {
            match cmd {
                LogCmd::Events { events, reply, .. } => {
                    counters.records.fetch_add(events.len() as u64, Ordering::Relaxed);
                    // Durable now: decide duplicates here, in log order, and
                    // answer once the engine has the batch queued, so a query
                    // sent after the ack is served after the batch.
                    let admitted: Vec<Applied> = events.iter().map(|e| admission.admit(e)).collect();
                    let answer = admitted.clone();
                    counters.engine_backlog.add(events.len() as u64);
                    let apply = EngineCmd::Apply {
                        events,
                        clock,
                        through,
                        admitted,
                    };
                    if engine_tx.blocking_send(apply).is_err() {
                        return;
                    }
                    reply.send(Ok(answer)).ok();
                }
                LogCmd::Ack { ack, reply, .. } => {
                    let next = EngineCmd::Ack {
                        ack,
                        clock,
                        through,
                        reply,
                    };
                    if engine_tx.blocking_send(next).is_err() {
                        return;
                    }
                }
                LogCmd::Tick => {
                    let now = clock.expect("ticks come with the wall clock only");
                    if engine_tx.blocking_send(EngineCmd::Tick { now, through }).is_err() {
                        return;
                    }
                }
            }
        }
    }
    // Every sender is gone (shutdown): the last ticks may be unsynced.
    if let Err(e) = writer.finish() {
        tracing::warn!(error = %e, "could not sync the log's last clock records");
    }
}

/// Applies the events of one logged batch, if any.
fn flush(desk: &mut Desk, batch: &mut Vec<Event>) {
    if !batch.is_empty() {
        desk.apply_batch(batch);
        batch.clear();
    }
}

/// Answers a command the log cannot take. A tick still reaches the engine,
/// unlogged: with storage down, waits keep counting and alerts keep coming.
fn refuse(cmd: LogCmd, why: &str, engine_tx: &mpsc::Sender<EngineCmd>, through: u64) {
    let err = NodeError::Storage(why.to_owned());
    // A refused sender that already left needs no answer.
    match cmd {
        LogCmd::Events { reply, .. } => {
            reply.send(Err(err)).ok();
        }
        LogCmd::Ack { reply, .. } => {
            reply.send(Err(err)).ok();
        }
        LogCmd::Tick => {
            engine_tx
                .blocking_send(EngineCmd::Tick {
                    now: wall_ms(),
                    through,
                })
                .ok();
        }
    }
}

/// When and where the engine thread writes snapshots.
struct Snapshots {
    dir: PathBuf,
    /// The log, whose segments a written snapshot covers are removed.
    log_dir: PathBuf,
    every: u64,
    /// Records below this sequence number are applied.
    through: u64,
    /// Events applied since the last snapshot.
    since: u64,
    /// The newest snapshot known to be on disk covers records below this.
    written_through: u64,
    /// The thread serializing and writing the last snapshot, if any; it
    /// returns the sequence number it covers once written, and the copy it
    /// wrote from.
    writer: Option<std::thread::JoinHandle<(Option<u64>, Desk)>>,
    /// The copy the last snapshot was written from, kept until the next
    /// copy is taken and freed just before it (see `maybe_write`).
    spare: Option<Desk>,
}

/// Whether the next snapshot writer runs at normal priority: when the
/// newest snapshot on disk is more than two intervals behind the engine.
/// At nice 9 a writer under a saturating load took 2–3 s per snapshot, so
/// the snapshots fell behind and a restart after kill -9 replayed up to
/// 4 M records (10.1 s); on a desk with CPU to spare it is never behind.
fn snapshot_is_overdue(through: u64, written_through: u64, every: u64) -> bool {
    through.saturating_sub(written_through) > every.saturating_mul(2)
}

impl Snapshots {
    fn applied(&mut self, through: u64, events: u64) {
        self.through = through;
        self.since += events;
    }

    /// Takes a snapshot when due (or `force`d and anything changed): the
    /// engine thread only copies the desk; another thread serializes and
    /// writes it, after which the log may drop the segments it covers.
    fn maybe_write(&mut self, desk: &Desk, force: bool) {
        if self.since < self.every && !(force && self.since > 0) {
            return;
        }
        if let Some(w) = &self.writer {
            if !w.is_finished() && !force {
                return; // the previous one is still being written; try later
            }
            self.finish();
        }
        let overdue = snapshot_is_overdue(self.through, self.written_through, self.every);
        let started = Instant::now();
        // The last copy is freed here, not when it was written: the new
        // copy, of about the same size, then takes the memory it had
        // instead of fresh pages. On the machine this was measured on
        // fresh memory costs ~2.5 ns per byte, and the copy at 4 M events
        // (`loadtest/bench/ingest.sh`) took up to 755 ms on fresh pages
        // (over 470 ms in 6 of 15 runs), 74–179 ms reusing the last
        // copy's; all of it is an engine pause.
        drop(self.spare.take());
        let copy = desk.clone();
        let copied_ms = started.elapsed().as_millis() as u64;
        let (dir, log_dir, seq) = (self.dir.clone(), self.log_dir.clone(), self.through);
        self.since = 0;
        let write = move || {
            let pieces = copy.snapshot_pieces();
            let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let written = match log::snapshot::write(&dir, seq, &pieces) {
                Ok(()) => {
                    tracing::info!(
                        seq,
                        bytes = pieces.iter().map(|p| p.len()).sum::<usize>(),
                        copy_millis = copied_ms,
                        millis = started.elapsed().as_millis() as u64,
                        "wrote an engine snapshot"
                    );
                    // Here, not on the log thread: unlinking hundreds of MiB
                    // held its commits (and acks) for 30-45 ms.
                    match log::remove_segments_before(&log_dir, seq) {
                        Ok(n) if n > 0 => tracing::info!(segments = n, "removed log segments covered by a snapshot"),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "could not remove old log segments; the next snapshot retries")
                        }
                    }
                    Some(seq)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not write a snapshot; the log keeps everything");
                    None
                }
            };
            (written, copy)
        };
        if force {
            let (written, copy) = write();
            if let Some(seq) = written {
                self.written_through = seq;
            }
            self.spare = Some(copy);
        } else {
            let background = move || {
                // Serializing a big desk takes seconds of CPU. It runs as a
                // batch thread at nice 9: about a tenth of a core while
                // ingest keeps both busy, so acks hardly notice it, yet it
                // never starves (under SCHED_IDLE a saturating load held
                // snapshots back until a restart replayed 4.8 M records).
                // Without the policy (not Linux, or refused) it runs as a
                // normal thread, and so does an overdue one
                // ([`snapshot_is_overdue`]).
                if overdue {
                    tracing::info!(seq, "snapshots are behind; this one is written at normal priority");
                    return write();
                }
                use thread_priority::unix::{
                    NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
                };
                let batch = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch);
                let nice_9 = thread_priority::ThreadPriority::Crossplatform(
                    25u8.try_into().expect("25 is a valid cross-platform priority"),
                );
                if let Err(e) = set_thread_priority_and_policy(thread_native_id(), nice_9, batch) {
                    tracing::debug!(error = ?e, "the snapshot writer keeps the normal schedule policy");
                }
                write()
            };
            match std::thread::Builder::new()
                .name("deskpulse-snapshot".into())
                .spawn(background)
            {
                Ok(handle) => self.writer = Some(handle),
                Err(e) => tracing::warn!(error = %e, "could not start the snapshot writer"),
            }
        }
    }

    /// Waits for a snapshot still being written, if any, and notes what
    /// it wrote.
    fn finish(&mut self) {
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok((written, copy))) => {
                if let Some(seq) = written {
                    self.written_through = seq;
                }
                self.spare = Some(copy);
            }
            Some(Err(_)) => tracing::error!("the snapshot writer panicked"),
            None => {}
        }
    }
}

fn engine_thread(
    mut desk: Desk,
    mut rx: mpsc::Receiver<EngineCmd>,
    hub: Hub,
    mut snapshots: Snapshots,
    backlog: &Backlog,
) {
    // A publish runs in slices, and waiting commands come first: a slice
    // of IDLE_SLICE runs whenever no command waits. Under a load that never
    // lets the queue run dry, a STARVED_SLICE runs after every
    // STARVE_AFTER of commands, so pushes slow down instead of ingest.
    const IDLE_SLICE: Duration = Duration::from_millis(1);
    const STARVED_SLICE: Duration = Duration::from_micros(500);
    const STARVE_AFTER: Duration = Duration::from_millis(5);
    let mut publisher = crate::publish::Publisher::default();
    let mut last_slice = Instant::now();
    loop {
        let cmd = if publisher.busy() {
            match rx.try_recv() {
                Ok(cmd) => cmd,
                Err(mpsc::error::TryRecvError::Empty) => {
                    publisher.step(&mut desk, &hub, IDLE_SLICE);
                    last_slice = Instant::now();
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(cmd) => cmd,
                None => break,
            }
        };
        match cmd {
            EngineCmd::Apply {
                events,
                clock,
                through,
                admitted,
            } => {
                if let Some(now) = clock {
                    desk.tick(now);
                }
                let outcomes: Vec<Applied> = desk.apply_batch(&events);
                backlog.done(events.len() as u64);
                snapshots.applied(through, events.len() as u64);
                if outcomes != admitted {
                    // Never expected: both sides hold the same sets and see
                    // the same events in the same order.
                    tracing::error!(
                        ?outcomes,
                        ?admitted,
                        "the engine's duplicate decisions differ from the acknowledged ones"
                    );
                }
            }
            EngineCmd::Ack {
                ack,
                clock,
                through,
                reply,
            } => {
                if let Some(now) = clock {
                    desk.tick(now);
                }
                reply.send(Ok(desk.ack_alert(&ack.id, &ack.by))).ok();
                snapshots.applied(through, 1);
            }
            EngineCmd::Tick { now, through } => {
                desk.tick(now);
                hub.set_now(desk.now());
                // A tick counts as one record toward the next snapshot, so
                // an idle desk still snapshots (about daily) and its log of
                // ticks stays short.
                snapshots.applied(through, 1);
            }
            EngineCmd::Publish { full } => {
                hub.set_now(desk.now());
                publisher.start(&mut desk, full);
            }
            EngineCmd::Query(job) => job(&desk),
        }
        let changes = desk.take_alert_changes();
        if !changes.is_empty() {
            hub.alerts(changes);
        }
        if publisher.busy() && last_slice.elapsed() >= STARVE_AFTER {
            publisher.step(&mut desk, &hub, STARVED_SLICE);
            last_slice = Instant::now();
        }
        snapshots.maybe_write(&desk, false);
    }
    // Senders gone: a last publish, and a snapshot so the next start is quick.
    publisher.publish(&mut desk, &hub, false);
    snapshots.finish();
    snapshots.maybe_write(&desk, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_overdue_past_two_intervals_behind() {
        let every = 1_000_000;
        assert!(!snapshot_is_overdue(0, 0, every), "a new desk");
        assert!(
            !snapshot_is_overdue(5_000_000, 3_000_000, every),
            "two intervals: on time"
        );
        assert!(snapshot_is_overdue(5_000_001, 3_000_000, every));
        assert!(!snapshot_is_overdue(3_000_000, 5_000_000, every), "never negative");
    }

    #[test]
    fn a_full_engine_backlog_holds_the_log_thread_until_the_engine_applies() {
        let backlog = Arc::new(Backlog::default());
        // An empty backlog takes a batch of any size.
        backlog.add(ENGINE_BACKLOG_EVENTS + 5);
        assert_eq!(backlog.events(), ENGINE_BACKLOG_EVENTS + 5);
        backlog.done(ENGINE_BACKLOG_EVENTS);
        backlog.add(ENGINE_BACKLOG_EVENTS - 5);
        assert_eq!(backlog.events(), ENGINE_BACKLOG_EVENTS);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = {
            let backlog = backlog.clone();
            std::thread::spawn(move || {
                backlog.add(100);
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a full backlog takes nothing more"
        );
        backlog.done(50);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "50 free, 100 wanted"
        );
        backlog.done(50);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("room for the batch: it goes in");
        waiting.join().unwrap();
        assert_eq!(backlog.events(), ENGINE_BACKLOG_EVENTS);
    }

    #[test]
    fn latency_buckets_are_inclusive_upper_bounds_with_an_overflow() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(500));
        h.record(Duration::from_micros(501));
        h.record(Duration::from_secs(6));
        let (counts, sum) = h.cumulative();
        assert_eq!(counts.len(), LatencyHistogram::BOUNDS_US.len() + 1);
        assert_eq!(
            (counts[0], counts[1]),
            (1, 2),
            "500 µs is in le=0.0005, 501 µs in le=0.001"
        );
        assert_eq!(counts[11], 2, "nothing between 1 ms and 5 s");
        assert_eq!(counts[12], 3, "6 s only in +Inf");
        assert_eq!(sum, 500 + 501 + 6_000_000);
    }
}
