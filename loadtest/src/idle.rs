//! `idle`: opens N WebSocket connections to `/v1/stream` or `/v1/ingest`,
//! keeps them open and idle for a while (reading and dropping whatever
//! arrives), closes them, and reports how much server memory each one cost.
//!
//! One client address can only hold ~28k ephemeral ports, so connections are
//! spread over the source addresses 127.0.0.2, 127.0.0.3, … (`per_source_ip`
//! each; every 127/8 address is local on Linux).

use std::fmt::Write as _;
use std::io::{Read, Seek};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::conn::ws_request;
use crate::http::Target;
use crate::procstat;

/// Which endpoint the idle connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `/v1/stream`: a snapshot frame first, then updates/alerts (none when idle).
    Stream,
    /// `/v1/ingest`: nothing is sent either way while idle.
    Ingest,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Stream => "/v1/stream",
            Kind::Ingest => "/v1/ingest",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Ingest => "ingest",
        }
    }
}

/// Options of one idle benchmark.
#[derive(Debug, Clone)]
pub struct IdleOpts {
    pub target: String,
    pub token: Option<String>,
    pub connections: usize,
    pub kind: Kind,
    pub hold_ms: u64,
    /// Connections being opened at the same time.
    pub concurrency: usize,
    /// Connections per source address before moving to the next one.
    pub per_source_ip: usize,
    /// Longest time for one connect + handshake (+ snapshot for `stream`).
    pub open_timeout_ms: u64,
    /// Wait after closing before the last RSS sample.
    pub settle_ms: u64,
    pub server_pid: Option<u32>,
    pub out_dir: PathBuf,
}

/// Fds the client needs besides its sockets (stdio, epoll, /proc readers, …).
pub const FD_RESERVE: u64 = 64;

/// The source address of connection `i`: 127.0.0.2 for the first
/// `per_ip`, then 127.0.0.3, … (carrying into the third octet past .255).
pub fn source_ip(i: usize, per_ip: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    Ipv4Addr::from(base + (i / per_ip.max(1)) as u32)
}

/// `(soft, hard)` "Max open files" from a `/proc/<pid>/limits` text
/// (`None` stands for "unlimited").
pub fn parse_nofile(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let f: Vec<&str> = line["Max open files".len()..].split_whitespace().collect();
    let v = |s: &str| {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some((v(f.first()?)?, v(f.get(1)?)?))
}

/// The open-file limits of `pid` ("self" for this process).
pub fn nofile_of(pid: &str) -> Option<(Option<u64>, Option<u64>)> {
    parse_nofile(&std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

fn limit_text(l: Option<(Option<u64>, Option<u64>)>) -> String {
    let s = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    match l {
        Some((soft, hard)) => format!("{} (hard {})", s(soft), s(hard)),
        None => "unknown".into(),
    }
}

/// VmRSS of a process from a `/proc/<pid>/status` file kept open, so that
/// it can still be read when every other fd is taken by sockets.
#[derive(Debug)]
struct RssReader(Option<std::fs::File>);

impl RssReader {
    fn open(pid: Option<u32>) -> RssReader {
        RssReader(pid.and_then(|p| std::fs::File::open(format!("/proc/{p}/status")).ok()))
    }

    /// kB, or `None` when the process is gone.
    fn kb(&mut self) -> Option<u64> {
        let f = self.0.as_mut()?;
        f.rewind().ok()?;
        let mut text = String::with_capacity(2048);
        f.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
}

/// `TcpExt` counter `name` from a `/proc/net/netstat` text.
pub fn netstat_counter(text: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let (Some(h), Some(v)) = (lines.next(), lines.next()) {
        if h.starts_with("TcpExt:") && v.starts_with("TcpExt:") {
            let i = h.split_whitespace().position(|k| k == name)?;
            return v.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// System-wide `ListenOverflows` (SYNs dropped because an accept queue was
/// full; each costs the client a 1 s SYN retransmit), from a file kept open.
#[derive(Debug)]
struct Netstat(Option<std::fs::File>);

impl Netstat {
    fn open() -> Netstat {
        Netstat(std::fs::File::open("/proc/net/netstat").ok())
    }

    fn listen_overflows(&mut self) -> Option<u64> {
        let f = self.0.as_mut()?;
        f.rewind().ok()?;
        let mut text = String::with_capacity(8192);
        f.read_to_string(&mut text).ok()?;
        netstat_counter(&text, "ListenOverflows")
    }
}

/// Own RSS in kB.
fn self_rss_kb() -> Option<u64> {
    procstat::sample(std::process::id()).map(|(_, rss)| rss)
}

/// Errors seen by the connections: a count per kind and the first verbatim.
#[derive(Debug, Default)]
struct Errors {
    count: u64,
    first: Option<String>,
    kinds: std::collections::BTreeMap<String, u64>,
}

impl Errors {
    fn add(&mut self, phase: &str, e: &str) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("{phase}: {e}"));
        }
        // Group by the message without numbers (ports, addresses, counts).
        let key: String = e.chars().filter(|c| !c.is_ascii_digit()).take(120).collect();
        *self.kinds.entry(format!("{phase}: {key}")).or_default() += 1;
    }

    fn json(&self) -> Value {
        json!({"count": self.count, "first": self.first, "kinds": self.kinds})
    }
}

#[derive(Debug, Default)]
struct Shared {
    frames: AtomicU64,
    bytes: AtomicU64,
    snapshot_bytes: AtomicU64,
    /// Opened connections that the server ended before we closed them.
    ended_by_server: AtomicU64,
    closed_clean: AtomicU64,
    /// Frames after the first, by `type` (`ping`, `binary`, … for non-text).
    frame_types: Mutex<std::collections::BTreeMap<String, u64>>,
    open_errors: Mutex<Errors>,
    hold_errors: Mutex<Errors>,
    close_errors: Mutex<Errors>,
}

fn note(m: &Mutex<Errors>, phase: &str, e: &str) {
    m.lock().expect("error lock poisoned").add(phase, e);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open_one(
    kind: Kind,
    server: SocketAddr,
    source: Ipv4Addr,
    url: &str,
    token: Option<&str>,
    shared: &Shared,
) -> Result<Ws> {
    let sock = tokio::net::TcpSocket::new_v4().context("socket")?;
    // Lets a source port still in TIME_WAIT from an earlier run be reused.
    sock.set_reuseaddr(true).context("SO_REUSEADDR")?;
    sock.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))
        .with_context(|| format!("bind {source}:0"))?;
    let tcp = sock
        .connect(server)
        .await
        .with_context(|| format!("connect {server}"))?;
    tcp.set_nodelay(true)?;
    // Small buffers: the client should not be the one running out of memory.
    let cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 << 10)
        .max_message_size(Some(64 << 20));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(ws_request(url, token)?, tcp, Some(cfg))
        .await
        .context("handshake")?;
    if kind == Kind::Stream {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    shared.snapshot_bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                    if !t.contains("\"snapshot\"") {
                        bail!("first stream frame is not a snapshot: {}", &t[..t.len().min(120)]);
                    }
                    break;
                }
                Some(Ok(Message::Close(c))) => bail!("closed by the server before the snapshot: {c:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e).context("reading the snapshot"),
                None => bail!("connection ended before the snapshot"),
            }
        }
    }
    Ok(ws)
}

/// `type` of a JSON text frame (from its first bytes), else the frame kind.
pub fn frame_type(m: &Message) -> String {
    match m {
        Message::Text(t) => {
            let head = &t.as_str()[..t.len().min(64)];
            head.split_once("\"type\":\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map_or("text".into(), |(ty, _)| ty.to_string())
        }
        Message::Binary(_) => "binary".into(),
        Message::Ping(_) => "ping".into(),
        Message::Pong(_) => "pong".into(),
        Message::Close(_) => "close".into(),
        Message::Frame(_) => "frame".into(),
    }
}

/// One connection: open (holding a concurrency permit), report, stay idle
/// reading until `stop`, then close.
#[expect(clippy::too_many_arguments, reason = "one spawned task per connection")]
async fn connection(
    i: usize,
    o: Arc<IdleOpts>,
    server: SocketAddr,
    url: Arc<String>,
    permit: tokio::sync::OwnedSemaphorePermit,
    opened: mpsc::UnboundedSender<Option<Duration>>,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    let source = source_ip(i, o.per_source_ip);
    let t = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_millis(o.open_timeout_ms),
        open_one(o.kind, server, source, &url, o.token.as_deref(), &shared),
    )
    .await;
    drop(permit);
    let mut ws = match res {
        Ok(Ok(ws)) => {
            let _ignored = opened.send(Some(t.elapsed()));
            ws
        }
        Ok(Err(e)) => {
            note(&shared.open_errors, "open", &format!("{e:#}"));
            let _ignored = opened.send(None);
            return;
        }
        Err(_) => {
            note(
                &shared.open_errors,
                "open",
                &format!("timed out after {} ms", o.open_timeout_ms),
            );
            let _ignored = opened.send(None);
            return;
        }
    };
    drop(opened);
    // Idle: read and drop whatever arrives so the server never blocks on us.
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(c))) => {
                    shared.ended_by_server.fetch_add(1, Ordering::Relaxed);
                    note(&shared.hold_errors, "hold", &format!("closed by the server: {c:?}"));
                    return;
                }
                Some(Ok(m)) => {
                    shared.frames.fetch_add(1, Ordering::Relaxed);
                    shared.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
                    let ty = frame_type(&m);
                    *shared.frame_types.lock().expect("frame type lock").entry(ty).or_default() += 1;
                }
                Some(Err(e)) => {
                    shared.ended_by_server.fetch_add(1, Ordering::Relaxed);
                    note(&shared.hold_errors, "hold", &e.to_string());
                    return;
                }
                None => {
                    shared.ended_by_server.fetch_add(1, Ordering::Relaxed);
                    note(&shared.hold_errors, "hold", "connection ended without a close frame");
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Close handshake: send Close, read until the server's Close / EOF.
    let closing = async {
        ws.close(None).await.context("sending close")?;
        while let Some(m) = ws.next().await {
            match m {
                Ok(_) => {}
                Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed) => break,
                Err(e) => return Err(e).context("reading after close"),
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), closing).await {
        Ok(Ok(())) => {
            shared.closed_clean.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => note(&shared.close_errors, "close", &format!("{e:#}")),
        Err(_) => note(&shared.close_errors, "close", "no close answer within 10 s"),
    }
}

/// The server's own count of open WebSockets of `kind` (from `/metrics`).
async fn server_ws_count(target: &Target, token: Option<&str>, kind: Kind) -> Option<u64> {
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), target.get("/metrics", token))
        .await
        .ok()?
        .ok()?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body);
    let key = format!("deskpulse_websockets{{kind=\"{}\"}}", kind.name());
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Runs the idle benchmark and writes `idle-<unix>.json` (and `latest-idle.json`).
pub async fn idle(o: IdleOpts) -> Result<Value> {
    let target = Target::parse(&o.target).await?;
    let SocketAddr::V4(server_v4) = target.addr else {
        bail!(
            "idle spreads connections over 127.0.0.x source addresses; give an IPv4 loopback target (127.0.0.1), not {}",
            target.addr
        );
    };
    if o.connections == 0 || o.connections > 1_000_000 {
        bail!("--connections must be 1..=1000000");
    }
    if o.concurrency == 0 || o.concurrency > 4096 {
        bail!("--concurrency must be 1..=4096");
    }
    if o.per_source_ip == 0 || o.per_source_ip > 28_000 {
        bail!("--per-source-ip must be 1..=28000 (one address has ~28k ephemeral ports)");
    }
    if o.hold_ms > 3_600_000 {
        bail!("--hold is at most 1h");
    }
    let pid = o.server_pid.or_else(|| procstat::find_listener(target.port));
    match target.get("/healthz", o.token.as_deref()).await {
        Ok((200, _)) => {}
        Ok((s, b)) => eprintln!("warning: /healthz answered {s}: {}", String::from_utf8_lossy(&b)),
        Err(e) => bail!("deskpulse at {} is not answering: {e:#}", o.target),
    }
    let need = o.connections as u64 + FD_RESERVE;
    let own_limit = nofile_of("self");
    if let Some((Some(soft), hard)) = own_limit
        && soft < need
    {
        eprintln!(
            "warning: this process may open {soft} files (hard limit {}), {} connections need about {need}; \
             expect 'Too many open files' failures. Raise it first: `ulimit -n {}` in the shell \
             (loadtest/bench/idle.sh does this)",
            hard.map_or("unlimited".into(), |h| h.to_string()),
            o.connections,
            hard.map_or(need.to_string(), |h| h.max(need).to_string()),
        );
    }
    let server_limit = pid.and_then(|p| nofile_of(&p.to_string()));
    if let Some((Some(soft), _)) = server_limit
        && soft < need
    {
        eprintln!(
            "warning: the server (pid {}) may open {soft} files; {} connections need more. \
             Start it from a shell with a higher `ulimit -n`",
            pid.unwrap_or(0),
            o.connections
        );
    }
    if pid.is_none() {
        eprintln!("warning: no server pid (give --server-pid): RSS is not measured");
    }
    let mut rss = RssReader::open(pid);
    let sources = o.connections.div_ceil(o.per_source_ip);
    let url = Arc::new(target.ws(o.kind.path()));
    eprintln!(
        "idle: {} {} connections to {url} from {} source address(es) {}..{}, {} in flight, hold {} s",
        o.connections,
        o.kind.name(),
        sources,
        source_ip(0, o.per_source_ip),
        source_ip(o.connections - 1, o.per_source_ip),
        o.concurrency,
        o.hold_ms as f64 / 1000.0
    );

    let mut netstat = Netstat::open();
    let overflows0 = netstat.listen_overflows();
    let rss_before = rss.kb();
    let client_rss_before = self_rss_kb();
    let cpu = |p: Option<u32>| p.and_then(procstat::sample).map(|(t, _)| t);
    let (server_cpu0, client_cpu0) = (cpu(pid), cpu(Some(std::process::id())));
    let shared = Arc::new(Shared::default());
    let opts = Arc::new(o.clone());
    let sem = Arc::new(Semaphore::new(o.concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::unbounded_channel::<Option<Duration>>();
    let server = SocketAddr::V4(server_v4);
    let mut hist = crate::conn::hist();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.connections);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    for i in 0..o.connections {
        let permit = sem.clone().acquire_owned().await.context("semaphore closed")?;
        tasks.push(tokio::spawn(connection(
            i,
            opts.clone(),
            server,
            url.clone(),
            permit,
            open_tx.clone(),
            stop_rx.clone(),
            shared.clone(),
        )));
        while let Ok(r) = open_rx.try_recv() {
            match r {
                Some(d) => {
                    ok += 1;
                    hist.saturating_record((d.as_micros() as u64).max(1));
                }
                None => failed += 1,
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\ropening: {ok} open, {failed} failed, {:.1} s   ",
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(open_tx);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), open_rx.recv()).await {
            Ok(Some(Some(d))) => {
                ok += 1;
                hist.saturating_record((d.as_micros() as u64).max(1));
            }
            Ok(Some(None)) => failed += 1,
            Ok(None) => break,
            Err(_) => {}
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprint!(
                "\ropening: {ok} open, {failed} failed, {:.1} s   ",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let open_s = started.elapsed().as_secs_f64();
    eprintln!("\ropened {ok}, failed {failed} in {open_s:.2} s                 ");
    let rss_open = rss.kb();
    let client_rss_open = self_rss_kb();
    let listen_overflows = match (netstat.listen_overflows(), overflows0) {
        (Some(a), Some(b)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let cpu_s = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / procstat::CLK_TCK),
        _ => None,
    };
    let server_open_cpu_s = cpu_s(cpu(pid), server_cpu0);
    let client_open_cpu_s = cpu_s(cpu(Some(std::process::id())), client_cpu0);
    let server_count_open = server_ws_count(&target, o.token.as_deref(), o.kind).await;

    // Hold: sample RSS once a second.
    let hold_start = Instant::now();
    let mut series = Vec::new();
    let mut rss_peak = rss_open;
    while hold_start.elapsed() < Duration::from_millis(o.hold_ms) {
        let left = Duration::from_millis(o.hold_ms).saturating_sub(hold_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let r = rss.kb();
        rss_peak = rss_peak.max(r);
        let ended = shared.ended_by_server.load(Ordering::Relaxed);
        series.push(json!({"t": hold_start.elapsed().as_secs_f64(), "server_rss_kb": r, "ended_by_server": ended}));
        eprint!(
            "\rholding: {:.0}/{:.0} s, server RSS {} kB, {} ended by the server   ",
            hold_start.elapsed().as_secs_f64(),
            o.hold_ms as f64 / 1000.0,
            r.map_or("?".into(), |v| v.to_string()),
            ended
        );
    }
    eprintln!();
    let rss_hold_end = rss.kb();
    let server_count_hold_end = server_ws_count(&target, o.token.as_deref(), o.kind).await;

    // Close.
    let close_start = Instant::now();
    let _ignored = stop_tx.send(true);
    for t in tasks {
        if let Err(e) = t.await {
            note(&shared.close_errors, "task", &e.to_string());
        }
    }
    let close_s = close_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(o.settle_ms)).await;
    let rss_after = rss.kb();
    let server_count_after = server_ws_count(&target, o.token.as_deref(), o.kind).await;
    let server_alive = pid.is_none_or(|p| std::path::Path::new(&format!("/proc/{p}")).exists());

    let per_conn = |a: Option<u64>| match (a, rss_before) {
        (Some(a), Some(b)) if ok > 0 => Some(((a as f64 - b as f64) / ok as f64 * 100.0).round() / 100.0),
        _ => None,
    };
    let q = |p: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(p) as f64 / 1000.0);
    let errs = |m: &Mutex<Errors>| m.lock().expect("error lock poisoned").json();
    let result = json!({
        "kind": "idle",
        "config": {
            "target": o.target, "endpoint": o.kind.path(), "connections": o.connections,
            "hold_s": o.hold_ms as f64 / 1000.0, "concurrency": o.concurrency,
            "per_source_ip": o.per_source_ip, "source_ips": sources,
            "first_source_ip": source_ip(0, o.per_source_ip).to_string(),
            "last_source_ip": source_ip(o.connections - 1, o.per_source_ip).to_string(),
            "open_timeout_ms": o.open_timeout_ms, "settle_ms": o.settle_ms, "server_pid": pid,
            "client_nofile": limit_text(own_limit), "server_nofile": limit_text(server_limit),
        },
        "open": {
            "opened": ok, "failed": failed, "seconds": (open_s * 1000.0).round() / 1000.0,
            "per_second": if open_s > 0.0 { (ok as f64 / open_s).round() } else { 0.0 },
            "latency_ms": {"p50": q(0.5), "p99": q(0.99), "max": q(1.0)},
            "snapshot_bytes_total": shared.snapshot_bytes.load(Ordering::Relaxed),
            "server_cpu_s": server_open_cpu_s, "client_cpu_s": client_open_cpu_s,
            "listen_overflows": listen_overflows,
            "errors": errs(&shared.open_errors),
        },
        "hold": {
            "frames_received": shared.frames.load(Ordering::Relaxed),
            "bytes_received": shared.bytes.load(Ordering::Relaxed),
            "frame_types": *shared.frame_types.lock().expect("frame type lock"),
            "ended_by_server": shared.ended_by_server.load(Ordering::Relaxed),
            "errors": errs(&shared.hold_errors),
        },
        "close": {
            "seconds": (close_s * 1000.0).round() / 1000.0,
            "clean": shared.closed_clean.load(Ordering::Relaxed),
            "errors": errs(&shared.close_errors),
        },
        "server": {
            "alive_at_end": server_alive,
            "rss_kb": {"before": rss_before, "open": rss_open, "peak": rss_peak, "hold_end": rss_hold_end, "after_close": rss_after},
            "rss_per_connection_kib": per_conn(rss_open),
            "rss_per_connection_kib_hold_end": per_conn(rss_hold_end),
            "websockets_reported": {"open": server_count_open, "hold_end": server_count_hold_end, "after_close": server_count_after},
        },
        "client": {
            "rss_kb": {"before": client_rss_before, "open": client_rss_open},
        },
        "series": series,
    });
    write_json(&o.out_dir, &result)?;
    Ok(result)
}

/// Writes `idle-<unix>.json` and `latest-idle.json` into `dir`.
pub fn write_json(dir: &std::path::Path, result: &Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let text = serde_json::to_string_pretty(result)?;
    for name in [format!("idle-{stamp}.json"), "latest-idle.json".to_string()] {
        std::fs::write(dir.join(name), &text)?;
    }
    eprintln!("result: {}/idle-{stamp}.json (and latest-idle.json)", dir.display());
    Ok(())
}

/// True when every connection opened, stayed open through the hold, and
/// the server is still running.
pub fn clean(r: &Value) -> bool {
    r["open"]["failed"].as_u64() == Some(0)
        && r["hold"]["ended_by_server"].as_u64() == Some(0)
        && r["server"]["alive_at_end"].as_bool() != Some(false)
}

/// The terminal table of an idle result.
pub fn terminal(r: &Value) -> String {
    let c = &r["config"];
    let s = &r["server"];
    let rss = &s["rss_kb"];
    let f = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mib = |v: &Value| v.as_f64().map_or("-".into(), |k| format!("{:.1} MiB", k / 1024.0));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n== deskpulse-loadtest idle ({}) ==\ntarget {}  connections {}  hold {} s  sources {}..{} ({} per address)",
        f(&c["endpoint"]),
        f(&c["target"]),
        f(&c["connections"]),
        f(&c["hold_s"]),
        f(&c["first_source_ip"]),
        f(&c["last_source_ip"]),
        f(&c["per_source_ip"])
    );
    let _ = writeln!(
        o,
        "open-file limit: client {}, server {}",
        f(&c["client_nofile"]),
        f(&c["server_nofile"])
    );
    let op = &r["open"];
    let rows: Vec<(&str, String)> = vec![
        ("opened", f(&op["opened"])),
        ("failed", f(&op["failed"])),
        ("first error", f(&op["errors"]["first"])),
        (
            "time to open all",
            format!("{} s ({} conn/s)", f(&op["seconds"]), f(&op["per_second"])),
        ),
        ("listen queue overflows (system)", f(&op["listen_overflows"])),
        (
            "CPU while opening",
            format!(
                "server {} s, client {} s",
                f(&op["server_cpu_s"]),
                f(&op["client_cpu_s"])
            ),
        ),
        (
            "open latency p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                f(&op["latency_ms"]["p50"]),
                f(&op["latency_ms"]["p99"]),
                f(&op["latency_ms"]["max"])
            ),
        ),
        (
            "server WebSockets (metrics)",
            format!(
                "{} open, {} at hold end, {} after close",
                f(&s["websockets_reported"]["open"]),
                f(&s["websockets_reported"]["hold_end"]),
                f(&s["websockets_reported"]["after_close"])
            ),
        ),
        ("server RSS before", mib(&rss["before"])),
        ("server RSS all open", mib(&rss["open"])),
        (
            "server RSS end of hold (peak)",
            format!("{} ({})", mib(&rss["hold_end"]), mib(&rss["peak"])),
        ),
        ("server RSS after close", mib(&rss["after_close"])),
        (
            "RSS per connection",
            format!(
                "{} KiB (end of hold: {} KiB)",
                f(&s["rss_per_connection_kib"]),
                f(&s["rss_per_connection_kib_hold_end"])
            ),
        ),
        (
            "frames during hold",
            format!(
                "{} ({} bytes) {}",
                f(&r["hold"]["frames_received"]),
                f(&r["hold"]["bytes_received"]),
                f(&r["hold"]["frame_types"])
            ),
        ),
        (
            "ended by server during hold",
            format!(
                "{} (first: {})",
                f(&r["hold"]["ended_by_server"]),
                f(&r["hold"]["errors"]["first"])
            ),
        ),
        (
            "close",
            format!(
                "{} clean in {} s, {} errors (first: {})",
                f(&r["close"]["clean"]),
                f(&r["close"]["seconds"]),
                f(&r["close"]["errors"]["count"]),
                f(&r["close"]["errors"]["first"])
            ),
        ),
        ("server alive at end", f(&s["alive_at_end"])),
        (
            "client RSS all open",
            format!(
                "{} (before {})",
                mib(&r["client"]["rss_kb"]["open"]),
                mib(&r["client"]["rss_kb"]["before"])
            ),
        ),
    ];
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(o, "  {k:<w$}  {v}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_rotate_every_per_ip_connections() {
        assert_eq!(source_ip(0, 10_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(9_999, 10_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(10_000, 10_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_ip(19_999, 10_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_ip(254 * 10, 10), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn parses_open_file_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max open files            20000                1048576              files     \n";
        assert_eq!(parse_nofile(text), Some((Some(20000), Some(1_048_576))));
        assert_eq!(
            parse_nofile("Max open files            unlimited            unlimited            files"),
            Some((None, None))
        );
        assert_eq!(parse_nofile("Max processes 1 1"), None);
        let own = nofile_of("self").expect("own limits");
        assert!(own.0.is_none_or(|s| s > 0));
    }

    #[test]
    fn reads_netstat_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 398 399\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(netstat_counter(text, "ListenOverflows"), Some(398));
        assert_eq!(netstat_counter(text, "ListenDrops"), Some(399));
        assert_eq!(netstat_counter(text, "Nope"), None);
    }

    #[test]
    fn names_frame_types() {
        assert_eq!(
            frame_type(&Message::Text(r#"{"type":"update","now":1}"#.into())),
            "update"
        );
        assert_eq!(frame_type(&Message::Text("hello".into())), "text");
        assert_eq!(frame_type(&Message::Ping(Vec::new().into())), "ping");
    }

    #[test]
    fn rss_reader_rereads_an_open_file() {
        let mut r = RssReader::open(Some(std::process::id()));
        let a = r.kb().expect("own VmRSS");
        let b = r.kb().expect("own VmRSS again");
        assert!(a > 0 && b > 0);
        assert_eq!(RssReader::open(None).kb(), None);
    }

    #[test]
    fn terminal_table_renders_a_result() {
        let r = json!({"kind": "idle", "config": {"endpoint": "/v1/stream", "connections": 2},
            "open": {"opened": 2, "failed": 0, "errors": {"first": null}},
            "server": {"rss_kb": {"before": 1024, "open": 2048}, "rss_per_connection_kib": 512.0}});
        let t = terminal(&r);
        assert!(
            t.contains("opened") && t.contains("512.0 KiB") && t.contains("2.0 MiB"),
            "{t}"
        );
    }
}
