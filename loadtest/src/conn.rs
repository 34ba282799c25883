//! Sending side: frames of events go out over pipelined connections
//! (deskpulse WebSocket ingest, Redis RESP, NATS JetStream); acks come back
//! in order and every event's latency, from its *intended* send time, lands
//! in the shared [`Recorder`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Latency histogram in µs, 1 µs … 1 h, 3 significant figures.
pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

/// Coarser histogram for per-second buckets.
pub fn hist2() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static histogram bounds are valid")
}

/// One wall-clock second of the run.
#[derive(Debug)]
pub struct Second {
    /// Events written.
    pub sent: u64,
    /// Events acknowledged.
    pub acked: u64,
    /// Ack latency of events acked in this second (µs from intended send).
    pub ack_lat: Histogram<u64>,
    /// Event → subscriber latency observed in this second (µs).
    pub sub_lat: Histogram<u64>,
    /// Server RSS at the end of the second (kB).
    pub rss_kb: Option<u64>,
    /// Server CPU in this second (% of one core).
    pub cpu_pct: Option<f64>,
    /// Load generator's own CPU (% of one core).
    pub self_cpu_pct: Option<f64>,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            sent: 0,
            acked: 0,
            ack_lat: hist2(),
            sub_lat: hist2(),
            rss_kb: None,
            cpu_pct: None,
            self_cpu_pct: None,
        }
    }
}

/// Everything measured during a run; one per run, behind a mutex that is
/// taken once per frame, never across an await.
#[derive(Debug)]
pub struct Recorder {
    /// Start of the run (the schedule's zero).
    pub t0: Instant,
    /// Per-second series.
    pub secs: Vec<Second>,
    /// Ack latency from the intended send time (no coordinated omission).
    pub ack_lat: Histogram<u64>,
    /// Ack latency from the actual write (service time).
    pub service_lat: Histogram<u64>,
    /// Event → subscriber latency.
    pub sub_lat: Histogram<u64>,
    /// How late the scheduler handed events to the sockets.
    pub sched_lag: Histogram<u64>,
    pub frames_sent: u64,
    pub frames_acked: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub warnings: u64,
    pub error_count: u64,
    /// The first errors, verbatim.
    pub errors: Vec<String>,
}

impl Recorder {
    /// A recorder whose clock starts at `t0`.
    pub fn new(t0: Instant) -> Recorder {
        Recorder {
            t0,
            secs: Vec::new(),
            ack_lat: hist(),
            service_lat: hist(),
            sub_lat: hist(),
            sched_lag: hist(),
            frames_sent: 0,
            frames_acked: 0,
            events_sent: 0,
            events_acked: 0,
            accepted: 0,
            duplicates: 0,
            rejected: 0,
            warnings: 0,
            error_count: 0,
            errors: Vec::new(),
        }
    }

    /// µs since `t0` (0 before it).
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    /// The bucket of second `s`, created on demand.
    pub fn sec(&mut self, us: u64) -> &mut Second {
        let s = (us / 1_000_000) as usize;
        while self.secs.len() <= s {
            self.secs.push(Second::default());
        }
        &mut self.secs[s]
    }

    /// Notes an error (the first 50 are kept verbatim).
    pub fn error(&mut self, e: impl Into<String>) {
        self.error_count += 1;
        if self.errors.len() < 50 {
            self.errors.push(e.into());
        }
    }
}

/// Shared handle to the recorder.
pub type Rec = Arc<Mutex<Recorder>>;

/// Locks the recorder; a poisoned lock means a panicked task, which is fatal.
pub fn lock(rec: &Rec) -> std::sync::MutexGuard<'_, Recorder> {
    rec.lock().expect("recorder lock poisoned: a task panicked")
}

/// A batch of events ready for one connection.
#[derive(Debug)]
pub struct Frame {
    /// Encoded bytes (NDJSON for deskpulse, RESP or NATS protocol for peers).
    pub payload: Vec<u8>,
    /// Intended send time of each event, µs since `t0`.
    pub intended_us: Vec<u64>,
}

#[derive(Debug)]
struct InFlight {
    seq: u64,
    intended_us: Vec<u64>,
    sent_us: u64,
    remaining: usize,
}

fn record_ack(rec: &Rec, f: &InFlight, accepted: u64, duplicates: u64, rejected: u64) {
    let mut r = lock(rec);
    let now = r.now_us();
    let n = f.intended_us.len() as u64;
    r.frames_acked += 1;
    r.events_acked += n;
    r.accepted += accepted;
    r.duplicates += duplicates;
    r.rejected += rejected;
    r.service_lat.saturating_record(now.saturating_sub(f.sent_us).max(1));
    let sec = r.sec(now);
    sec.acked += n;
    for &i in &f.intended_us {
        sec.ack_lat.saturating_record(now.saturating_sub(i).max(1));
    }
    for &i in &f.intended_us {
        r.ack_lat.saturating_record(now.saturating_sub(i).max(1));
    }
}

fn record_sent(rec: &Rec, n: usize) -> u64 {
    let mut r = lock(rec);
    let now = r.now_us();
    r.frames_sent += 1;
    r.events_sent += n as u64;
    r.sec(now).sent += n as u64;
    now
}

#[derive(Debug, Deserialize)]
struct Ack {
    #[serde(rename = "type")]
    ty: String,
    seq: Option<u64>,
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<serde_json::Value>,
    #[serde(default)]
    warnings: Vec<serde_json::Value>,
    error: Option<String>,
}

/// Builds a WebSocket request with the bearer token, if any.
pub fn ws_request(
    url: &str,
    token: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut req = url
        .into_client_request()
        .with_context(|| format!("bad WebSocket url {url}"))?;
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}")
                .parse()
                .context("token is not a valid header value")?,
        );
    }
    Ok(req)
}

/// How many frames may be unacknowledged per connection.
#[derive(Debug, Clone, Copy)]
pub struct Window(pub usize);

/// Drives one deskpulse `/v1/ingest` socket until `rx` closes and every
/// frame is acknowledged (or `stop` is set).
pub async fn ws_ingest(
    url: String,
    token: Option<String>,
    rx: mpsc::UnboundedReceiver<Frame>,
    rec: Rec,
    window: Window,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(ws_request(&url, token.as_deref())?, None, true)
        .await
        .with_context(|| format!("connecting {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let inflight: Arc<Mutex<VecDeque<InFlight>>> = Arc::default();
    let sem = Arc::new(Semaphore::new(window.0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (inflight, sem, done, rec) = (inflight.clone(), sem.clone(), done.clone(), rec.clone());
        let mut rx = rx;
        async move {
            let mut seq = 0u64;
            while let Some(f) = rx.recv().await {
                sem.acquire().await.context("window semaphore closed")?.forget();
                seq += 1;
                let n = f.intended_us.len();
                let text = String::from_utf8(f.payload).context("frame is not UTF-8")?;
                let sent_us = record_sent(&rec, n);
                inflight.lock().expect("inflight lock").push_back(InFlight {
                    seq,
                    intended_us: f.intended_us,
                    sent_us,
                    remaining: n,
                });
                sink.send(Message::Text(text.into())).await.context("sending frame")?;
            }
            done.store(true, Ordering::SeqCst);
            anyhow::Ok(sink)
        }
    };
    let reader = {
        let (inflight, done, rec, stop) = (inflight.clone(), done.clone(), rec.clone(), stop.clone());
        async move {
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if done.load(Ordering::SeqCst) && inflight.lock().expect("inflight lock").is_empty() {
                    break;
                }
                let msg = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                    Err(_) => continue,
                    Ok(None) => bail!("ingest socket closed by the server"),
                    Ok(Some(m)) => m.context("reading ack")?,
                };
                let text = match msg {
                    Message::Text(t) => t.to_string(),
                    Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                    Message::Close(c) => bail!("ingest socket closed by the server: {c:?}"),
                    _ => continue,
                };
                let ack: Ack = match serde_json::from_str(&text) {
                    Ok(a) => a,
                    Err(e) => {
                        lock(&rec).error(format!(
                            "unparsable ingest frame ({e}): {}",
                            &text[..text.len().min(200)]
                        ));
                        continue;
                    }
                };
                if ack.ty != "ack" {
                    lock(&rec).error(format!("unexpected ingest frame type {:?}", ack.ty));
                    continue;
                }
                let Some(f) = inflight.lock().expect("inflight lock").pop_front() else {
                    lock(&rec).error(format!("ack with nothing in flight: {text}"));
                    continue;
                };
                sem.add_permits(1);
                if ack.seq != Some(f.seq) {
                    lock(&rec).error(format!("ack seq {:?}, expected {}", ack.seq, f.seq));
                }
                if let Some(e) = &ack.error {
                    lock(&rec).error(format!("frame {} error: {e}", f.seq));
                }
                let n = f.intended_us.len() as u64;
                if ack.error.is_none() && ack.accepted + ack.duplicates + ack.rejected.len() as u64 != n {
                    lock(&rec).error(format!(
                        "frame {} of {n} events acked {} accepted + {} duplicates + {} rejected",
                        f.seq,
                        ack.accepted,
                        ack.duplicates,
                        ack.rejected.len()
                    ));
                }
                for r in ack.rejected.iter().take(3) {
                    lock(&rec).error(format!("rejected: {r}"));
                }
                if !ack.warnings.is_empty() {
                    lock(&rec).warnings += ack.warnings.len() as u64;
                }
                record_ack(&rec, &f, ack.accepted, ack.duplicates, ack.rejected.len() as u64);
            }
            anyhow::Ok(())
        }
    };
    let (w, r) = tokio::join!(writer, reader);
    r?;
    let mut sink = w?;
    let _closed = sink.send(Message::Close(None)).await; // best effort: the run is over
    Ok(())
}

/// Which pipelined TCP protocol a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Redis: one `HINCRBY` per event, one integer reply each.
    Redis,
    /// NATS JetStream: one `HPUB` with a reply inbox per event, one PubAck each.
    Nats,
}

/// Reads one CRLF-terminated line (without the CRLF).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let n = r.read_until(b'\n', buf).await?;
    if n == 0 {
        bail!("connection closed");
    }
    while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        buf.pop();
    }
    Ok(())
}

/// Opens a NATS connection: INFO, CONNECT, PING/PONG, and a wildcard
/// subscription on `inbox.*` (sid 1). Returns the split stream.
pub async fn nats_connect(
    addr: &str,
    inbox: &str,
) -> Result<(
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting NATS at {addr}"))?;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let mut line = Vec::new();
    read_line(&mut r, &mut line).await?;
    if !line.starts_with(b"INFO") {
        bail!("NATS said {:?} instead of INFO", String::from_utf8_lossy(&line));
    }
    w.write_all(
        format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1,\"name\":\"deskpulse-loadtest\"}}\r\nSUB {inbox}.* 1\r\nPING\r\n"
        )
        .as_bytes(),
    )
    .await?;
    loop {
        read_line(&mut r, &mut line).await?;
        if line == b"PONG" {
            break;
        }
        if line.starts_with(b"-ERR") {
            bail!("NATS: {}", String::from_utf8_lossy(&line));
        }
    }
    Ok((r, w))
}

/// One NATS request/reply (e.g. a JetStream API call); returns the payload.
pub async fn nats_request(addr: &str, subject: &str, payload: &str) -> Result<String> {
    let (mut r, mut w) = nats_connect(addr, "_INBOX.dpreq").await?;
    w.write_all(format!("PUB {subject} _INBOX.dpreq.1 {}\r\n{payload}\r\n", payload.len()).as_bytes())
        .await?;
    let mut line = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::timeout_at(deadline, read_line(&mut r, &mut line))
            .await
            .context("NATS request timed out")??;
        let l = String::from_utf8_lossy(&line).into_owned();
        if l == "PING" {
            w.write_all(b"PONG\r\n").await?;
        } else if l.starts_with("MSG ") || l.starts_with("HMSG ") {
            let len: usize = l
                .rsplit(' ')
                .next()
                .and_then(|x| x.parse().ok())
                .context("bad MSG line")?;
            let mut body = vec![0u8; len + 2];
            r.read_exact(&mut body).await?;
            body.truncate(len);
            return Ok(String::from_utf8_lossy(&body).into_owned());
        } else if l.starts_with("-ERR") {
            bail!("NATS: {l}");
        }
    }
}

/// Drives one pipelined Redis or NATS connection until `rx` closes and every
/// event has its reply. Each event of a frame gets exactly one reply.
pub async fn tcp_peer(
    peer: Peer,
    addr: String,
    conn_ix: usize,
    rx: mpsc::UnboundedReceiver<Frame>,
    rec: Rec,
    window: Window,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let (mut reader, mut w) = match peer {
        Peer::Redis => {
            let s = TcpStream::connect(&addr)
                .await
                .with_context(|| format!("connecting Redis at {addr}"))?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            (BufReader::with_capacity(256 * 1024, r), w)
        }
        Peer::Nats => nats_connect(&addr, &format!("_INBOX.dp{conn_ix}")).await?,
    };
    let inflight: Arc<Mutex<VecDeque<InFlight>>> = Arc::default();
    let sem = Arc::new(Semaphore::new(window.0));
    let done = Arc::new(AtomicBool::new(false));
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<()>();
    let writer = {
        let (inflight, sem, done, rec) = (inflight.clone(), sem.clone(), done.clone(), rec.clone());
        let mut rx = rx;
        async move {
            let mut seq = 0u64;
            let mut rx_open = true;
            // Runs until the reader is done (it drops `pong_tx`), so a PING
            // that arrives after the last frame is still answered.
            loop {
                tokio::select! {
                    f = rx.recv(), if rx_open => {
                        let Some(f) = f else {
                            rx_open = false;
                            done.store(true, Ordering::SeqCst);
                            continue;
                        };
                        sem.acquire().await.context("window semaphore closed")?.forget();
                        seq += 1;
                        let n = f.intended_us.len();
                        let sent_us = record_sent(&rec, n);
                        inflight.lock().expect("inflight lock").push_back(InFlight { seq, intended_us: f.intended_us, sent_us, remaining: n });
                        w.write_all(&f.payload).await.context("writing to peer")?;
                    }
                    p = pong_rx.recv() => match p {
                        Some(()) => w.write_all(b"PONG\r\n").await?,
                        None => break,
                    },
                }
            }
            anyhow::Ok(w)
        }
    };
    let reader = {
        let (inflight, done, rec, stop) = (inflight.clone(), done.clone(), rec.clone(), stop.clone());
        async move {
            let mut line = Vec::with_capacity(256);
            let mut body = Vec::with_capacity(256);
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if done.load(Ordering::SeqCst) && inflight.lock().expect("inflight lock").is_empty() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), read_line(&mut reader, &mut line)).await {
                    Err(_) => continue,
                    Ok(r) => r?,
                }
                let mut bad: Option<String> = None;
                match peer {
                    Peer::Redis => match line.first() {
                        Some(b':') | Some(b'+') => {}
                        _ => bad = Some(String::from_utf8_lossy(&line).into_owned()),
                    },
                    Peer::Nats => {
                        if line == b"PING" {
                            pong_tx.send(()).map_err(|_| anyhow!("NATS writer ended"))?;
                            continue;
                        }
                        if line == b"+OK" || line == b"PONG" {
                            continue;
                        }
                        if line.starts_with(b"MSG ") || line.starts_with(b"HMSG ") {
                            let l = String::from_utf8_lossy(&line);
                            let len: usize = l
                                .rsplit(' ')
                                .next()
                                .and_then(|x| x.parse().ok())
                                .context("bad MSG line")?;
                            body.resize(len + 2, 0);
                            reader.read_exact(&mut body).await?;
                            body.truncate(len);
                            if line.starts_with(b"HMSG ") || body.windows(7).any(|w| w == b"\"error\"") {
                                bad = Some(format!("JetStream: {}", String::from_utf8_lossy(&body)));
                            }
                        } else {
                            lock(&rec).error(format!("NATS: {}", String::from_utf8_lossy(&line)));
                            continue;
                        }
                    }
                }
                if let Some(b) = &bad {
                    lock(&rec).error(b.clone());
                }
                let finished = {
                    let mut q = inflight.lock().expect("inflight lock");
                    let Some(front) = q.front_mut() else {
                        drop(q);
                        lock(&rec).error("reply with nothing in flight");
                        continue;
                    };
                    front.remaining -= 1;
                    if front.remaining == 0 { q.pop_front() } else { None }
                };
                if let Some(f) = finished {
                    sem.add_permits(1);
                    let n = f.intended_us.len() as u64;
                    record_ack(&rec, &f, n, 0, 0);
                }
                if bad.is_some() {
                    lock(&rec).rejected += 1;
                }
            }
            anyhow::Ok(())
        }
    };
    let (w, r) = tokio::join!(writer, reader);
    r?;
    let mut w = w?;
    let _shut = w.shutdown().await; // best effort: the run is over
    Ok(())
}

/// Encodes one event for a peer, appending to `out`. `json` is the event's
/// NDJSON line; `key`/`field` name the counter Redis increments.
#[expect(clippy::too_many_arguments, reason = "one flat call per event on the hot path")]
pub fn encode_peer(
    peer: Peer,
    out: &mut Vec<u8>,
    json: &[u8],
    key: &str,
    field: &str,
    subject: &str,
    msg_id: &str,
    reply: &str,
) {
    match peer {
        Peer::Redis => {
            out.extend_from_slice(
                format!(
                    "*4\r\n$7\r\nHINCRBY\r\n${}\r\n{key}\r\n${}\r\n{field}\r\n$1\r\n1\r\n",
                    key.len(),
                    field.len()
                )
                .as_bytes(),
            );
        }
        Peer::Nats => {
            let hdr = format!("NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n");
            out.extend_from_slice(
                format!("HPUB {subject} {reply} {} {}\r\n", hdr.len(), hdr.len() + json.len()).as_bytes(),
            );
            out.extend_from_slice(hdr.as_bytes());
            out.extend_from_slice(json);
            out.extend_from_slice(b"\r\n");
        }
    }
}
