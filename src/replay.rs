//! `deskpulse replay`: an NDJSON log through the engine with the event
//! clock, printing every agent's stats object. Bad lines are reported with
//! their line number and skipped.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;

use serde::Serialize;

use crate::engine::window::Window;
use crate::engine::{AgentStats, Engine, Settings};
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
    /// Lines skipped as bad.
    pub rejected: u64,
}

/// Applies every line of `input` to `engine`; bad lines go to `errors` as
/// `line N: reason`.
pub fn apply_log(engine: &mut Engine, input: impl BufRead, mut errors: impl Write) -> std::io::Result<ReplayCounts> {
    let mut counts = ReplayCounts::default();
    let mut line = Vec::new();
    let mut reader = input;
    let mut number = 0u64;
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
        if batch.len() != 1 || batch.events.is_empty() {
            counts.rejected += 1;
            let reason = batch
                .rejected
                .first()
                .map(|r| match &r.id {
                    Some(id) => format!("event {id}: {}", r.error),
                    None => r.error.clone(),
                })
                .unwrap_or_else(|| "expected exactly one event per line".into());
            writeln!(errors, "line {number}: {reason}")?;
            continue;
        }
        for w in &batch.warnings {
            writeln!(errors, "line {number}: event {}: {}", w.id, w.warning)?;
        }
        for (_, event) in &batch.events {
            match engine.apply(event) {
                crate::engine::Applied::Accepted => counts.accepted += 1,
                crate::engine::Applied::Duplicate => counts.duplicates += 1,
            }
        }
    }
    Ok(counts)
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
