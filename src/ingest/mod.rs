//! Ingest: a body or frame of events in, an ack out once the accepted ones
//! are durable. Each bad event is named in `rejected`; the good ones in the
//! same batch are kept. Frames of one WebSocket are acked in order, with up
//! to [`IN_FLIGHT`] frames pipelined.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::stream::FuturesOrdered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Role;
use crate::engine::{Applied, Clock};
use crate::http::auth::Principal;
use crate::node::{Node, NodeError, wall_ms};
use crate::protocol::{Rejection, ShopId, Warning, parse_batch};

/// With the event clock, events stamped further than this after the
/// server's wall clock are rejected (366 days).
pub const EVENT_CLOCK_MAX_AHEAD_MS: i64 = 366 * 86_400_000;

/// Frames of one connection being stored at once.
pub const IN_FLIGHT: usize = 32;

/// The answer to one batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ack {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejection>,
    pub warnings: Vec<Warning>,
    /// Set when the whole batch was refused (too large, storage down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Ack {
    fn refused(error: String) -> Self {
        Self {
            kind: None,
            seq: None,
            accepted: 0,
            duplicates: 0,
            rejected: Vec::new(),
            warnings: Vec::new(),
            error: Some(error),
        }
    }
}

/// Which shops a caller may write; `None` means any.
pub fn writable_shops(p: &Principal) -> Option<Option<&BTreeSet<ShopId>>> {
    match p.role {
        Role::Admin => Some(None),
        Role::Ingest => Some(Some(&p.shops)),
        _ => None,
    }
}

/// A batch checked and queued for the log, waiting for its outcome.
#[derive(Debug)]
pub struct Queued {
    arrived: std::time::Instant,
    pending: Result<crate::node::Pending, NodeError>,
    count: usize,
    rejected: Vec<Rejection>,
    warnings: Vec<Warning>,
}

/// Parses, checks and queues one batch (in call order); the answer comes
/// from [`finish`].
pub async fn enqueue(node: &Node, principal: &Principal, bytes: &[u8], max_bytes: usize) -> Result<Queued, Ack> {
    let arrived = std::time::Instant::now();
    let counters = node.counters();
    counters.frames.fetch_add(1, Ordering::Relaxed);
    if bytes.len() > max_bytes {
        return Err(Ack::refused(format!(
            "frame too large: {} bytes (limit {max_bytes}); no event taken",
            bytes.len()
        )));
    }
    let config = node.config();
    let mut batch = parse_batch(bytes, config.ingest.unknown_fields);
    let allowed = writable_shops(principal).flatten();
    // With the event clock `now` follows `ts`, so the limit is loose (a
    // replayed log may come from any time), but one event stamped decades
    // ahead would still end every window for good.
    let ahead_ms = match node.clock() {
        Clock::Wall => config.ingest.max_future_ms,
        Clock::Event => EVENT_CLOCK_MAX_AHEAD_MS,
    };
    let future_limit = wall_ms() + ahead_ms;
    let mut events = Vec::with_capacity(batch.events.len());
    for (index, event) in std::mem::take(&mut batch.events) {
        let refusal = if allowed.is_some_and(|shops| !shops.contains(&event.shop)) {
            Some(format!("field `shop`: this token may not write shop `{}`", event.shop))
        } else if event.ts > future_limit {
            Some(format!(
                "field `ts`: {} ms ahead of the server clock (limit {ahead_ms} ms)",
                event.ts - wall_ms(),
            ))
        } else {
            None
        };
        match refusal {
            Some(error) => {
                batch.warnings.retain(|w| w.index != index);
                batch.rejected.push(Rejection {
                    index: Some(index),
                    id: Some(event.id.to_string()),
                    error,
                });
            }
            None => events.push(event),
        }
    }
    batch.rejected.sort_by_key(|r| r.index);
    counters
        .events_rejected
        .fetch_add(batch.rejected.len() as u64, Ordering::Relaxed);
    let count = events.len();
    Ok(Queued {
        arrived,
        pending: node.enqueue(events).await,
        count,
        rejected: batch.rejected,
        warnings: batch.warnings,
    })
}

/// Waits for a queued batch to be durable (and queued for the engine), and builds its ack.
pub async fn finish(node: &Node, queued: Queued) -> Ack {
    let counters = node.counters();
    let outcome = match queued.pending {
        Ok(p) => p.wait().await,
        Err(e) => Err(e),
    };
    counters.ingest_latency.record(queued.arrived.elapsed());
    match outcome {
        Ok(outcomes) => {
            let duplicates = outcomes.iter().filter(|o| **o == Applied::Duplicate).count() as u64;
            let accepted = queued.count as u64 - duplicates;
            counters.events_accepted.fetch_add(accepted, Ordering::Relaxed);
            counters.events_duplicate.fetch_add(duplicates, Ordering::Relaxed);
            Ack {
                kind: None,
                seq: None,
                accepted,
                duplicates,
                rejected: queued.rejected,
                warnings: queued.warnings,
                error: None,
            }
        }
        Err(e) => {
            let mut ack = Ack::refused(format!("{e}; the valid events of this batch were not stored"));
            ack.rejected = queued.rejected;
            ack
        }
    }
}

/// Parses, checks and stores one batch; the answer says what happened to
/// every event.
pub async fn process(node: &Node, principal: &Principal, bytes: &[u8], max_bytes: usize) -> Ack {
    match enqueue(node, principal, bytes, max_bytes).await {
        Ok(queued) => finish(node, queued).await,
        Err(ack) => ack,
    }
}

/// Serves one ingest WebSocket until the client leaves or the server stops.
pub async fn serve<S>(socket: S, node: Node, principal: Principal, shutdown: CancellationToken)
where
    S: Sink<Message> + Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let (mut sink, mut incoming) = socket.split();
    let max = node.config().ingest.max_frame_bytes;
    let mut seq = 0u64;
    let mut pending = FuturesOrdered::new();
    let mut closing = false;
    // Why the client's side broke, told in the close frame.
    let mut broken: Option<CloseFrame> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled(), if !closing => closing = true,
            msg = incoming.next(), if !closing && pending.len() < IN_FLIGHT => match msg {
                Some(Ok(Message::Text(text))) => {
                    seq += 1;
                    // Queued here, in frame order; only the waiting overlaps.
                    let queued = enqueue(&node, &principal, text.as_bytes(), max).await;
                    pending.push_back(frame(node.clone(), seq, queued));
                }
                Some(Ok(Message::Binary(bytes))) => {
                    seq += 1;
                    let queued = enqueue(&node, &principal, &bytes, max).await;
                    pending.push_back(frame(node.clone(), seq, queued));
                }
                Some(Ok(_)) => {} // ping/pong: the socket answers pings itself
                // Acks of frames already in flight still go out.
                Some(Err(e)) => {
                    broken = Some(close_for(e, seq + 1));
                    closing = true;
                }
                None => closing = true,
            },
            Some(ack) = pending.next() => {
                if sink.send(Message::Text(Utf8Bytes::from(ack))).await.is_err() {
                    return;
                }
            }
            else => break,
        }
        if closing && pending.is_empty() {
            break;
        }
    }
    let close = broken.or_else(|| {
        shutdown.is_cancelled().then(|| CloseFrame {
            code: 1001,
            reason: Utf8Bytes::from_static("server shutting down"),
        })
    });
    if let Some(close) = close {
        // The client may be gone already; the close frame is a courtesy.
        sink.send(Message::Close(Some(close))).await.ok();
    }
}

/// The close frame for a frame the WebSocket layer could not read: frame
/// `seq` and any after it were not taken.
fn close_for(e: axum::Error, seq: u64) -> CloseFrame {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    let (code, why) = match e.into_inner().downcast::<Error>().map(|e| *e) {
        Ok(Error::Utf8(_)) => (1007, "is not valid UTF-8 (send raw bytes as a binary frame)"),
        Ok(Error::Capacity(CapacityError::MessageTooLong { .. })) => (1009, "is over 16 MiB"),
        _ => (1002, "could not be read"),
    };
    CloseFrame {
        code,
        reason: Utf8Bytes::from(format!("frame {seq} {why}; it and later frames were not taken")),
    }
}

async fn frame(node: Node, seq: u64, queued: Result<Queued, Ack>) -> String {
    let mut ack = match queued {
        Ok(q) => finish(&node, q).await,
        Err(ack) => ack,
    };
    ack.kind = Some("ack");
    ack.seq = Some(seq);
    serde_json::to_string(&ack).expect("acks serialize")
}
