//! The `deskpulse` command: parse flags, load config, run.

use std::io::{BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deskpulse::config::Config;
use deskpulse::engine::Clock;
use deskpulse::engine::window::Window;
use deskpulse::node::NodeOptions;
use deskpulse::protocol::ShopId;

/// mimalloc instead of glibc malloc: events are allocated on the tokio
/// workers that parse them and freed after the engine thread applied them,
/// a cross-thread pattern glibc's arenas handle poorly (see BENCHMARKS.md).
/// Told to keep the memory it frees: [`deskpulse::allocator`].
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "deskpulse", version, about = "Real-time monitoring of e-commerce chat desks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node: ingest, durable log, stats API, live stream, dashboards.
    Serve {
        /// Address to listen on; without tokens in the config only loopback is allowed.
        #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
        listen: SocketAddr,
        /// Where the event log lives.
        #[arg(long, default_value = "deskpulse-data")]
        data_dir: PathBuf,
        /// `wall` (now = server clock) or `event` (now = largest ts seen).
        #[arg(long, default_value = "wall", value_parser = parse_clock)]
        clock: Clock,
        /// Config file (TOML); without one the embedded default runs open on loopback.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Engine partitions (shops are spread over them).
        #[arg(long, default_value_t = 1)]
        partitions: usize,
    },
    /// Apply an NDJSON event log with the event clock and print per-agent stats.
    Replay {
        /// The log (one event per line); `-` for standard input.
        file: PathBuf,
        /// today, 1h, 15m or 5m.
        #[arg(long, default_value = "today", value_parser = parse_window)]
        window: Window,
        /// Only this shop's slice.
        #[arg(long)]
        shop: Option<String>,
        /// Config file (time zone, thresholds, teams).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and print what it sets.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Read a token from standard input (its first line) and print the value
    /// for `token_hash` in a [[tokens]] entry.
    HashToken {
        /// Print an argon2id PHC string (default parameters, random salt)
        /// instead of `sha256:<hex>`.
        #[arg(long)]
        argon2: bool,
    },
}

fn parse_clock(s: &str) -> Result<Clock, String> {
    match s {
        "wall" => Ok(Clock::Wall),
        "event" => Ok(Clock::Event),
        _ => Err(format!("unknown clock `{s}` (wall, event)")),
    }
}

/// `IP:PORT`, or `HOST:PORT` resolved once at start (`localhost:8080`);
/// a name with several addresses takes the first IPv4 one.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(s)
        .map_err(|e| format!("`{s}` is not an address like 127.0.0.1:8080 or localhost:8080 ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

fn parse_window(s: &str) -> Result<Window, String> {
    Window::parse(s).ok_or_else(|| format!("unknown window `{s}` (today, 1h, 15m, 5m)"))
}

/// `server.reserve_memory_mib`: refuses more than the machine has free
/// (where `/proc/meminfo` says), then faults it in before the engine
/// starts, so a restore and the day's growth take pages already zeroed.
fn reserve_memory(mib: u64) -> anyhow::Result<()> {
    if mib == 0 {
        return Ok(());
    }
    if let Some(available) = deskpulse::allocator::proc_kib("/proc/meminfo", "MemAvailable").map(|kib| kib >> 10) {
        anyhow::ensure!(
            mib <= available,
            "config key `server.reserve_memory_mib`: {mib} MiB is more than the {available} MiB this machine has available"
        );
    }
    if let Some(purge) = deskpulse::allocator::purges() {
        tracing::warn!(
            "server.reserve_memory_mib: memory is returned to the OS under {purge}, so the {mib} MiB reserved will not stay reserved"
        );
    }
    tracing::info!(mib, "reserving memory for the engine's tables before listening");
    let started = std::time::Instant::now();
    let bytes = deskpulse::allocator::reserve(mib << 20);
    tracing::info!(
        mib = bytes >> 20,
        secs = format!("{:.1}", started.elapsed().as_secs_f64()),
        "reserved memory for the engine's tables"
    );
    Ok(())
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                ctrl_c.await.ok();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
    tracing::info!("shutting down: closing sockets, flushing the log");
}

fn main() -> ExitCode {
    deskpulse::allocator::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deskpulse: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            clock,
            config,
            partitions,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let config = Arc::new(load_config(config.as_ref())?);
            if config.tokens.is_empty() {
                if !listen.ip().is_loopback() {
                    anyhow::bail!(
                        "refusing to listen on {listen} without tokens: add [[tokens]] to a config, or listen on 127.0.0.1"
                    );
                }
                tracing::warn!("NO AUTH: no tokens configured; serving open on loopback {listen} only");
                eprintln!(
                    "WARNING: deskpulse runs OPEN (no tokens): anyone on this machine can read and write. Add [[tokens]] to a config for real use."
                );
            }
            reserve_memory(config.server.reserve_memory_mib)?;
            let options = NodeOptions {
                data_dir,
                clock,
                partitions: partitions.max(1),
                push_interval: Duration::from_millis(config.server.push_interval_ms),
                snapshot_every_events: config.server.snapshot_every_events,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(async move {
                let server = deskpulse::Server::start(config, options)?;
                // A deep accept queue: a wallboard fleet reconnecting at once
                // must not overflow the default 128.
                let socket = match listen {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.set_reuseaddr(true)?;
                socket
                    .bind(listen)
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let listener = socket.listen(4096)?;
                let addr = listener.local_addr()?;
                println!("deskpulse listening on http://{addr}");
                std::io::stdout().flush()?;
                server.run(listener, shutdown_signal()).await?;
                tracing::info!("stopped cleanly");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            file,
            window,
            shop,
            config,
        } => {
            let config = load_config(config.as_ref())?;
            let mut engine = deskpulse::replay::engine(config.settings(Clock::Event));
            let stderr = std::io::stderr();
            let counts = if file.as_os_str() == "-" {
                deskpulse::replay::apply_log(
                    &mut engine,
                    BufReader::with_capacity(1 << 20, std::io::stdin()),
                    stderr.lock(),
                )?
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
                deskpulse::replay::apply_log(&mut engine, BufReader::with_capacity(1 << 20, f), stderr.lock())?
            };
            let shop = shop.map(|s| ShopId::new(&s));
            let out = deskpulse::replay::output(&engine, window, shop.as_ref());
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut stdout, &out)?;
            writeln!(stdout)?;
            eprintln!(
                "replay: {} accepted, {} duplicates, {} bad events or lines skipped",
                counts.accepted, counts.duplicates, counts.rejected
            );
            Ok(if counts.rejected > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            let t = config.thresholds();
            println!("config {} is valid", file.display());
            println!("  timezone: {}", config.desk.timezone);
            println!(
                "  thresholds: target {} ms, norm {} ms, clear {} ms, critical {} ms, min_samples {}",
                t.target_ms, t.norm_ms, t.clear_ms, t.critical_ms, t.min_samples
            );
            println!(
                "  shop overrides: {}, team overrides: {}",
                config.alerts.shops.len(),
                config.alerts.teams.len()
            );
            println!("  teams: {}, tokens: {}", config.teams.len(), config.tokens.len());
            if config.server.reserve_memory_mib > 0 {
                println!("  memory reserved at start: {} MiB", config.server.reserve_memory_mib);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::HashToken { argon2 } => {
            // From stdin, not argv: a token on the command line ends up in shell history.
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("token: ");
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            stdin.read_line(&mut line).context("cannot read the token")?;
            // The server trims the token it is sent, so spaces around it could never match.
            let token = line.trim();
            if token.len() < 8 {
                anyhow::bail!("the token is shorter than 8 characters");
            }
            let value = if argon2 {
                deskpulse::http::auth::hash_token_argon2(token).map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            } else {
                deskpulse::http::auth::hash_token(token)
            };
            println!("{value}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
