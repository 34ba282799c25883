//! CLI of deskpulse-loadtest: parses flags and calls the library.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use deskpulse_loadtest::events::{Generator, Names};
use deskpulse_loadtest::run::{Clock, RunOpts};
use deskpulse_loadtest::scenario::{Scenario, World, parse_duration};
use deskpulse_loadtest::truth::{LogReader, TEvent, Truth, TruthConfig};
use deskpulse_loadtest::{bench, idle, report, run, verdict};

#[derive(Debug, Parser)]
#[command(
    name = "deskpulse-loadtest",
    version,
    about = "Big-sale (11.11) traffic simulator, ground-truth checker and benchmark driver for deskpulse"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open-loop load against a running deskpulse, then check every agent's figures and alerts against the ground truth.
    Run(RunArgs),
    /// Write the scenario's events as an NDJSON log (also a generator benchmark).
    Generate(GenArgs),
    /// Print the scenario (all defaults written out) or the matching deskpulse config.
    Scenario {
        /// `11.11` (built-in big sale), `ordinary`, or a TOML file.
        #[arg(long, default_value = "11.11")]
        scenario: String,
        /// Print the deskpulse config (teams, thresholds) instead of the scenario.
        #[arg(long)]
        server_config: bool,
        #[arg(long, default_value_t = 1111)]
        seed: u64,
    },
    /// Compare `deskpulse replay LOG` output with the ground truth computed from LOG.
    VerifyReplay {
        /// The NDJSON log given to `deskpulse replay`.
        #[arg(long)]
        log: PathBuf,
        /// The JSON `deskpulse replay` printed.
        #[arg(long)]
        replay_json: PathBuf,
        /// Scenario whose thresholds and time zone apply.
        #[arg(long, default_value = "11.11")]
        scenario: String,
    },
    /// Same events through deskpulse, Redis and NATS JetStream; ratios to deskpulse.
    SideBySide(SideArgs),
    /// Open N idle WebSockets (stream or ingest), hold them, close them; server RSS per connection.
    Idle(IdleArgs),
    /// Re-render the terminal table and HTML of a result JSON.
    Report {
        /// A result JSON written by `run`, `side-by-side` or `idle`.
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// deskpulse base URL; loopback only.
    #[arg(long)]
    target: String,
    /// Bearer token (omit for a server running open on loopback).
    #[arg(long, env = "DESKPULSE_TOKEN")]
    token: Option<String>,
    /// `11.11` (built-in), `ordinary`, or a scenario TOML file.
    #[arg(long, default_value = "11.11")]
    scenario: String,
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Wall-clock length of the load (the scenario span is compressed into it with --clock event). At most 1h.
    #[arg(long, default_value = "60s")]
    duration: String,
    /// `event`: compressed scenario time (server --clock event); `wall`: real time from now.
    #[arg(long, value_enum, default_value = "event")]
    clock: Clock,
    /// Ingest WebSocket connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Most events per frame.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// A partial frame waits at most this long for more events.
    #[arg(long, default_value = "5ms")]
    linger: String,
    /// Unacknowledged frames allowed per connection.
    #[arg(long, default_value_t = 1024)]
    window: usize,
    /// Supervisor subscribers on /v1/stream.
    #[arg(long, default_value_t = 2)]
    subscribers: usize,
    /// Ask the stream for this update interval (ms).
    #[arg(long)]
    stream_interval_ms: Option<u64>,
    /// Target average events/s (scales arrivals); default: the scenario's own volume.
    #[arg(long)]
    rate: Option<f64>,
    /// Server pid for CPU/RSS (default: the process listening on the target port).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "loadtest-results")]
    out_dir: PathBuf,
    /// Hard cap on events sent.
    #[arg(long, default_value_t = 50_000_000)]
    max_events: u64,
    /// Abort when this many events are sent but not acknowledged.
    #[arg(long, default_value_t = 2_000_000)]
    max_backlog: u64,
    /// Wait after the last ack for alerts and updates.
    #[arg(long, default_value = "3s")]
    settle: String,
    /// Longest wait for outstanding acks after the last send.
    #[arg(long, default_value = "30s")]
    drain: String,
    /// Prepended to event ids (to run twice against one server; figures then mix).
    #[arg(long, default_value = "")]
    id_prefix: String,
    #[arg(long, default_value_t = 1.0)]
    min_precision: f64,
    #[arg(long, default_value_t = 1.0)]
    min_recall: f64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Also write every event sent, in send order, as NDJSON (replayable with `deskpulse replay`).
    #[arg(long)]
    save_log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct GenArgs {
    /// Number of events (arrivals are scaled to reach it). Default: the scenario's own volume.
    #[arg(long)]
    events: Option<u64>,
    /// Output file (`-` for stdout, /dev/null to benchmark).
    #[arg(long, default_value = "/dev/null")]
    out: PathBuf,
    #[arg(long, default_value = "11.11")]
    scenario: String,
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Also write the ground truth (expected `today` per agent, alert keys) as JSON.
    #[arg(long)]
    truth_out: Option<PathBuf>,
    /// Check every line against the protocol (slow; for tests).
    #[arg(long)]
    validate: bool,
    /// Print only the generator's speed (no file).
    #[arg(long)]
    bench_generator: bool,
}

#[derive(Debug, clap::Args)]
struct SideArgs {
    /// deskpulse base URL (loopback); the baseline of the ratios (without it, the first peer is).
    #[arg(long)]
    deskpulse: Option<String>,
    #[arg(long, env = "DESKPULSE_TOKEN")]
    token: Option<String>,
    #[arg(long)]
    deskpulse_pid: Option<u32>,
    /// Redis address host:port (loopback).
    #[arg(long)]
    redis: Option<String>,
    #[arg(long)]
    redis_pid: Option<u32>,
    /// NATS address host:port (loopback, JetStream enabled).
    #[arg(long)]
    nats: Option<String>,
    #[arg(long)]
    nats_pid: Option<u32>,
    #[arg(long, default_value = "11.11")]
    scenario: String,
    #[arg(long, default_value_t = 1111)]
    seed: u64,
    /// Events in the max-throughput phase.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Offered events/s in the paced phase.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Length of the paced phase.
    #[arg(long, default_value = "15s")]
    rate_duration: String,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Frames in flight per connection in the max phase.
    #[arg(long, default_value_t = 32)]
    window: usize,
    #[arg(long, default_value = "loadtest-results")]
    out_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// deskpulse base URL; IPv4 loopback only.
    #[arg(long)]
    target: String,
    /// Bearer token (omit for a server running open on loopback).
    #[arg(long, env = "DESKPULSE_TOKEN")]
    token: Option<String>,
    /// WebSockets to open and hold (the process needs about this many + 64 open files: `ulimit -n`).
    #[arg(long, default_value_t = 20_000)]
    connections: usize,
    /// `stream` (/v1/stream, snapshot first) or `ingest` (/v1/ingest).
    #[arg(long, value_enum, default_value = "stream")]
    kind: idle::Kind,
    /// How long all connections stay open and idle.
    #[arg(long, default_value = "20s")]
    hold: String,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Connections per source address 127.0.0.2, 127.0.0.3, … (ephemeral ports run out at ~28k).
    #[arg(long, default_value_t = 10_000)]
    per_source_ip: usize,
    /// Longest connect + handshake (+ snapshot) of one connection.
    #[arg(long, default_value = "30s")]
    open_timeout: String,
    /// Wait after closing before the last RSS sample.
    #[arg(long, default_value = "2s")]
    settle: String,
    /// Server pid for RSS (default: the process listening on the target port).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "loadtest-results")]
    out_dir: PathBuf,
}

fn generate(a: GenArgs) -> Result<()> {
    let scenario = Scenario::load(&a.scenario)?;
    let world = Arc::new(World::build(&scenario, a.seed)?);
    let (ts0, span) = (world.start_ts, world.scenario.span.0);
    let scale = match a.events {
        Some(n) => run::arrival_scale_for(&world, a.seed, ts0, span, n as f64 * 1.1),
        None => 1.0,
    };
    let limit = a.events.unwrap_or(u64::MAX);
    let names = Names::of(&world);
    let to_file = !a.bench_generator;
    let mut sink: Box<dyn Write> = if !to_file {
        Box::new(std::io::sink())
    } else if a.out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?)
    };
    let mut truth = a
        .truth_out
        .as_ref()
        .map(|_| Truth::new(TruthConfig::of(&world.scenario)));
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let started = Instant::now();
    let mut generator = Generator::new(world.clone(), a.seed, ts0, span, scale);
    let mut n = 0u64;
    let mut bytes = 0u64;
    for ev in generator.by_ref() {
        if n >= limit {
            break;
        }
        let start = buf.len();
        names.write_json(&ev, &mut buf);
        if a.validate {
            let v: serde_json::Value = serde_json::from_slice(&buf[start..])?;
            deskpulse_loadtest::validate::check_event(&v).map_err(|e| anyhow::anyhow!("event {n}: {e}"))?;
        }
        buf.push(b'\n');
        if let Some(t) = truth.as_mut()
            && !ev.dup
        {
            t.apply(&TEvent::from(&ev));
        }
        n += 1;
        if buf.len() >= (1 << 20) - 512 {
            bytes += buf.len() as u64;
            sink.write_all(&buf)?;
            buf.clear();
        }
    }
    bytes += buf.len() as u64;
    sink.write_all(&buf)?;
    sink.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {n} events ({:.1} MB) in {secs:.3} s: {:.0} events/s, {:.0} MB/s{}",
        bytes as f64 / 1e6,
        n as f64 / secs,
        bytes as f64 / 1e6 / secs,
        if a.truth_out.is_some() || a.validate {
            " (including truth/validation)"
        } else {
            ""
        }
    );
    eprintln!("generator: {}", serde_json::to_string(&generator.stats)?);
    if let (Some(path), Some(t)) = (a.truth_out, truth) {
        let report = t.finish(&world.agent_names, &world.shop_names);
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("truth: {}", path.display());
    }
    Ok(())
}

fn verify_replay(log: PathBuf, replay_json: PathBuf, scenario: &str) -> Result<bool> {
    let scenario = Scenario::load(scenario)?;
    let mut reader = LogReader::default();
    let mut truth = Truth::new(TruthConfig::of(&scenario));
    let f = std::io::BufReader::new(std::fs::File::open(&log).with_context(|| format!("opening {}", log.display()))?);
    for (i, line) in f.lines().enumerate() {
        let line = line?;
        if let Some(e) = reader
            .parse(&line)
            .with_context(|| format!("{} line {}", log.display(), i + 1))?
        {
            truth.apply(&e);
        }
    }
    let report = truth.finish(&reader.agents, &reader.shops);
    let replay: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&replay_json)?)?;
    let mut server = std::collections::BTreeMap::new();
    match &replay["agents"] {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                server.insert(k.clone(), v.clone());
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                if let Some(k) = v["agent"].as_str() {
                    server.insert(k.to_string(), v.clone());
                }
            }
        }
        _ => bail!("{}: no `agents` object", replay_json.display()),
    }
    if replay["now"].as_i64() != Some(report.now) {
        eprintln!("note: replay now = {}, truth now = {}", replay["now"], report.now);
    }
    let check = verdict::compare_stats(&report, &server);
    println!(
        "{} agents, {} figures compared, {} mismatches, {} extension mismatches ({} duplicates skipped)",
        check.agents,
        check.figures,
        check.mismatches.len(),
        check.extension_mismatches.len(),
        reader.duplicates
    );
    for m in check.mismatches.iter().chain(&check.extension_mismatches).take(30) {
        println!("  {} {}: expected {} got {}", m.agent, m.field, m.expected, m.got);
    }
    Ok(check.mismatches.is_empty())
}

fn ms(s: &str) -> Result<i64> {
    parse_duration(s)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Generate(a) => generate(a),
        Cmd::Scenario {
            scenario,
            server_config,
            seed,
        } => {
            let s = Scenario::load(&scenario)?;
            if server_config {
                print!("{}", World::build(&s, seed)?.server_config());
            } else {
                print!("{}", s.to_toml());
            }
            Ok(())
        }
        Cmd::VerifyReplay {
            log,
            replay_json,
            scenario,
        } => {
            if verify_replay(log, replay_json, &scenario)? {
                println!("PASS");
                Ok(())
            } else {
                println!("FAIL");
                std::process::exit(1)
            }
        }
        Cmd::Report { file } => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
            if v["kind"] == "idle" {
                println!("{}", idle::terminal(&v));
                return Ok(());
            }
            println!("{}", report::terminal(&v));
            let html = file.with_extension("html");
            std::fs::write(&html, report::html(&v))?;
            eprintln!("wrote {}", html.display());
            Ok(())
        }
        Cmd::Run(a) => {
            let opts = RunOpts {
                target: a.target,
                token: a.token,
                scenario: Scenario::load(&a.scenario)?,
                seed: a.seed,
                duration_ms: ms(&a.duration)?,
                connections: a.connections,
                batch: a.batch,
                linger_us: (ms(&a.linger.replace("us", ""))? as u64).saturating_mul(if a.linger.ends_with("us") {
                    1
                } else {
                    1000
                }),
                window: a.window.max(1),
                subscribers: a.subscribers,
                stream_interval_ms: a.stream_interval_ms,
                rate: a.rate,
                clock: a.clock,
                server_pid: a.server_pid,
                out_dir: a.out_dir,
                max_events: a.max_events,
                max_backlog: a.max_backlog,
                settle_ms: ms(&a.settle)? as u64,
                drain_ms: ms(&a.drain)? as u64,
                id_prefix: a.id_prefix,
                min_precision: a.min_precision,
                min_recall: a.min_recall,
                quiet: a.quiet,
                save_log: a.save_log,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let result = rt.block_on(run::run(opts))?;
            println!("{}", report::terminal(&result));
            if result["verdict"]["pass"].as_bool() != Some(true) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Idle(a) => {
            let opts = idle::IdleOpts {
                target: a.target,
                token: a.token,
                connections: a.connections,
                kind: a.kind,
                hold_ms: ms(&a.hold)?.max(0) as u64,
                concurrency: a.concurrency,
                per_source_ip: a.per_source_ip,
                open_timeout_ms: ms(&a.open_timeout)?.max(1) as u64,
                settle_ms: ms(&a.settle)?.max(0) as u64,
                server_pid: a.server_pid,
                out_dir: a.out_dir,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let result = rt.block_on(idle::idle(opts))?;
            println!("{}", idle::terminal(&result));
            if !idle::clean(&result) {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::SideBySide(a) => {
            let opts = bench::BenchOpts {
                deskpulse: a.deskpulse,
                token: a.token,
                deskpulse_pid: a.deskpulse_pid,
                redis: a.redis,
                redis_pid: a.redis_pid,
                nats: a.nats,
                nats_pid: a.nats_pid,
                scenario: Scenario::load(&a.scenario)?,
                seed: a.seed,
                events: a.events,
                rate: a.rate,
                rate_duration_ms: ms(&a.rate_duration)? as u64,
                connections: a.connections.max(1),
                batch: a.batch.max(1),
                window: a.window.max(1),
                out_dir: a.out_dir,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let result = rt.block_on(bench::side_by_side(opts))?;
            bench::print(&result);
            Ok(())
        }
    }
}
