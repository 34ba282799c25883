//! The `deskpulse` command: parse flags, load config, run.

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use deskpulse::config::Config;
use deskpulse::engine::Clock;
use deskpulse::engine::window::Window;
use deskpulse::protocol::ShopId;

#[derive(Debug, Parser)]
#[command(name = "deskpulse", version, about = "Real-time monitoring of e-commerce chat desks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

fn parse_window(s: &str) -> Result<Window, String> {
    Window::parse(s).ok_or_else(|| format!("unknown window `{s}` (today, 1h, 15m, 5m)"))
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
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
                deskpulse::replay::apply_log(&mut engine, std::io::stdin().lock(), stderr.lock())?
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
                "replay: {} accepted, {} duplicates, {} bad lines skipped",
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
            Ok(ExitCode::SUCCESS)
        }
    }
}
