//! `deskpulse replay`: an NDJSON log through the engine with the event
//! clock, printing every agent's stats object. Bad lines are reported with
//! their line number and skipped; so are events stamped further ahead of
//! this machine's clock than `serve --clock event` takes
//! ([`EVENT_CLOCK_MAX_AHEAD_MS`]): one would end every window for good.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use serde::Serialize;

use crate::engine::window::Window;
use crate::engine::{AgentStats, Applied, Engine, Settings};
use crate::ingest::EVENT_CLOCK_MAX_AHEAD_MS;
use crate::node::wall_ms;
use crate::protocol::{ShopId, UnknownFields, parse_batch};

/// The printed result.
#[derive(Debug, Serialize)]
pub struct ReplayOutput {
    /// The largest `ts` applied (`null` if none).
    pub now: Option<i64>,
    /// Stats per agent, by id.
    pub agents: BTreeMap<String, AgentStats>,
}

/// What happened to the lines of a log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCounts {
    /// Events applied.
    pub accepted: u64,
    /// Repeated `(shop, id)`s.
    pub duplicates: u64,
    /// Events refused (a line of one event, or an item of a line holding
    /// an array), and lines that are not JSON at all.
    pub rejected: u64,
}

/// What the parsing thread hands to the applying one.
enum Parsed {
    Events(Vec<crate::protocol::Event>),
    /// A line for stderr, and whether it tells of an event refused (not
    /// one taken with a warning).
    Note(String, bool),
}

/// Applies every line of `input` to `engine`; bad lines go to `errors` as
/// `line N: reason`. One thread parses while this one applies, in order.
pub fn apply_log(
    engine: &mut Engine,
    input: impl BufRead + Send,
    mut errors: impl Write,
) -> std::io::Result<ReplayCounts> {
    let mut counts = ReplayCounts::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Parsed>(16);
    let wall = wall_ms();
    std::thread::scope(|scope| {
        let parser = scope.spawn(move || parse_lines(input, wall, tx));
        for item in rx {
            match item {
                Parsed::Events(events) => {
                    // Under the event clock a batch gives what one event at a
                    // time gives, and looks its memory up ahead.
                    for applied in engine.apply_batch(&events) {
                        match applied {
                            Applied::Accepted => counts.accepted += 1,
                            Applied::Duplicate => counts.duplicates += 1,
                        }
                    }
                    // Replay reports alerts as they stand, not their
                    // transitions: drop the change list as a server would.
                    drop(engine.take_alert_changes());
                }
                Parsed::Note(line, refused) => {
                    counts.rejected += u64::from(refused);
                    writeln!(errors, "{line}")?;
                }
            }
        }
        parser.join().expect("the parser thread does not panic")
    })?;
    Ok(counts)
}

/// Parses `reader` line by line into chunks of events for the applier;
/// events stamped more than [`EVENT_CLOCK_MAX_AHEAD_MS`] after `wall` are
/// reported, not sent.
fn parse_lines(mut reader: impl BufRead, wall: i64, tx: std::sync::mpsc::SyncSender<Parsed>) -> std::io::Result<()> {
    const CHUNK: usize = 1024;
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK);
    // A closed receiver means the applier stopped on an error: stop too.
    let send = |item: Parsed| tx.send(item).is_ok();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let batch = parse_batch(&line, UnknownFields::Warn);
        // A line holding an array is taken as `POST /v1/events` takes a
        // body: each item on its own, named by its position.
        let items = line.trim_ascii_start().starts_with(b"[");
        let at = |index: Option<usize>| match index {
            Some(i) if items => format!("line {number}, item {i}"),
            _ => format!("line {number}"),
        };
        let mut notes = Vec::new();
        for r in &batch.rejected {
            let note = match &r.id {
                Some(id) => format!("{}: event {id}: {}", at(r.index), r.error),
                None => format!("{}: {}", at(r.index), r.error),
            };
            notes.push((note, true));
        }
        for w in &batch.warnings {
            notes.push((format!("{}: event {}: {}", at(Some(w.index)), w.id, w.warning), false));
        }
        // Good events join the chunk; one stamped too far ahead is reported.
        for (i, e) in batch.events {
            let ahead = e.ts.saturating_sub(wall);
            if ahead > EVENT_CLOCK_MAX_AHEAD_MS {
                let note = format!(
                    "{}: event {}: field `ts`: {ahead} ms ahead of this machine's clock (limit {EVENT_CLOCK_MAX_AHEAD_MS} ms)",
                    at(Some(i)),
                    e.id
                );
                notes.push((note, true));
            } else {
                chunk.push(e);
            }
        }
        if !notes.is_empty() {
            if !chunk.is_empty() && !send(Parsed::Events(std::mem::take(&mut chunk))) {
                return Ok(());
            }
            for (note, refused) in notes {
                if !send(Parsed::Note(note, refused)) {
                    return Ok(());
                }
            }
        }
        if chunk.len() >= CHUNK && !send(Parsed::Events(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))) {
            return Ok(());
        }
    }
    if !chunk.is_empty() {
        send(Parsed::Events(chunk));
    }
    Ok(())
}

/// The stats of every agent (or those serving `shop`) in `window`.
pub fn output(engine: &Engine, window: Window, shop: Option<&ShopId>) -> ReplayOutput {
    let agents = engine
        .agent_ids()
        .into_iter()
        .filter_map(|a| engine.agent_stats(&a, window, shop).map(|s| (a.to_string(), s)))
        .collect();
    ReplayOutput {
        now: engine.max_ts(),
        agents,
    }
}

/// A fresh engine for replay (event clock).
pub fn engine(settings: Arc<Settings>) -> Engine {
    Engine::new(settings)
}
