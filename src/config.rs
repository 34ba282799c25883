//! The TOML configuration (PROTOCOL.md §6 and extensions): parsed, checked
//! once at start, errors naming the key. No file means the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::engine::alerts::Thresholds;
use crate::engine::{Clock, Settings, ThresholdOverride};
use crate::http::auth;
use crate::protocol::{AgentId, ShopId, TeamId, UnknownFields};

/// A config problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (the reason is the source, so a chain
    /// printer shows it once).
    #[error("cannot read config {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or an unknown / mistyped key.
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    /// A value that parses but makes no sense.
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Desk-wide settings.
    #[serde(default)]
    pub desk: DeskConfig,
    /// Alert thresholds.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The roster.
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    /// Access tokens.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Ingest limits.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// Server settings.
    #[serde(default)]
    pub server: ServerConfig,
}

/// `[desk]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeskConfig {
    /// IANA zone of the business day.
    #[serde(default = "default_tz")]
    pub timezone: String,
}

fn default_tz() -> String {
    "Asia/Shanghai".into()
}

impl Default for DeskConfig {
    fn default() -> Self {
        Self { timezone: default_tz() }
    }
}

/// `[alerts]` with `[alerts.shops.X]` and `[alerts.teams.X]` overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    pub target_ms: Option<u64>,
    pub norm_ms: Option<u64>,
    pub clear_ms: Option<u64>,
    pub critical_ms: Option<u64>,
    pub min_samples: Option<u64>,
    #[serde(default)]
    pub shops: BTreeMap<String, ThresholdOverride>,
    #[serde(default)]
    pub teams: BTreeMap<String, ThresholdOverride>,
}

/// `[teams.X]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Agent ids.
    #[serde(default)]
    pub agents: Vec<String>,
}

/// A role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Supervisor,
    Agent,
    Shop,
    Ingest,
}

/// `[[tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token in clear, or an argon2 PHC string (a value starting with
    /// `$argon2` is always taken as a hash).
    pub token: Option<String>,
    /// Or its hash: `sha256:<hex>` or an argon2 PHC string (`$argon2id$…`).
    pub token_hash: Option<String>,
    /// A display name (shown as `acked_by`); defaults to the role and scope.
    pub name: Option<String>,
    pub role: Role,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub shops: Vec<String>,
    pub agent: Option<String>,
}

/// `[ingest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest WebSocket frame taken, bytes.
    #[serde(default = "default_frame")]
    pub max_frame_bytes: usize,
    /// Largest HTTP body taken, bytes.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Unknown fields: warn (default) or reject.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// With the wall clock, events stamped further ahead are rejected, ms.
    #[serde(default = "default_future")]
    pub max_future_ms: i64,
}

fn default_frame() -> usize {
    1 << 20
}
fn default_body() -> usize {
    8 << 20
}
fn default_future() -> i64 {
    600_000
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: default_frame(),
            max_body_bytes: default_body(),
            unknown_fields: UnknownFields::Warn,
            max_future_ms: default_future(),
        }
    }
}

/// `[server]`: defaults for flags of `serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Live stream push interval, ms.
    #[serde(default = "default_push")]
    pub push_interval_ms: u64,
    /// Engine snapshot every this many applied events.
    #[serde(default = "default_snapshot_events")]
    pub snapshot_every_events: u64,
    /// Origins allowed for browser WebSockets besides the server's own host.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// MiB of memory faulted in at start and kept for the engine's tables
    /// to grow into ([`crate::allocator::reserve`]); 0, the default, takes
    /// none.
    #[serde(default)]
    pub reserve_memory_mib: u64,
}

/// The most `server.reserve_memory_mib` may ask for; whether the machine
/// has it is checked when `serve` starts.
const MAX_RESERVE_MIB: u64 = 1 << 20;

fn default_push() -> u64 {
    1000
}
fn default_snapshot_events() -> u64 {
    1_000_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            push_interval_ms: default_push(),
            snapshot_every_events: default_snapshot_events(),
            allowed_origins: Vec::new(),
            reserve_memory_mib: 0,
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and checks config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        jiff::tz::TimeZone::get(&self.desk.timezone).map_err(|e| {
            invalid(
                "desk.timezone",
                format!("unknown time zone `{}`: {e}", self.desk.timezone),
            )
        })?;
        let base = self.thresholds();
        check_thresholds("alerts", &base)?;
        for (shop, o) in &self.alerts.shops {
            check_thresholds(&format!("alerts.shops.{shop}"), &o.apply(base))?;
        }
        for (team, o) in &self.alerts.teams {
            if !self.teams.contains_key(team) {
                return Err(invalid(format!("alerts.teams.{team}"), "no such team in [teams]"));
            }
            check_thresholds(&format!("alerts.teams.{team}"), &o.apply(base))?;
        }
        for (team, t) in &self.teams {
            if let Some(a) = t.agents.iter().find(|a| a.is_empty() || a.len() > 128) {
                return Err(invalid(format!("teams.{team}.agents"), format!("bad agent id `{a}`")));
            }
        }
        // Which entry holds each clear or sha256 token: one token, one role.
        let mut first_with: HashMap<auth::TokenDigest, usize> = HashMap::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("tokens[{i}]");
            match auth::secret_of(t) {
                Err((field, reason)) => {
                    let at = if field.is_empty() {
                        key
                    } else {
                        format!("{key}.{field}")
                    };
                    return Err(invalid(at, reason));
                }
                Ok(auth::Secret::Digest(d)) => {
                    if let Some(j) = first_with.insert(d, i) {
                        return Err(invalid(
                            &key,
                            format!("the same token as tokens[{j}]: each token needs one role"),
                        ));
                    }
                }
                Ok(auth::Secret::Argon2(_)) => {}
            }
            match t.role {
                Role::Agent if t.agent.is_none() => {
                    return Err(invalid(format!("{key}.agent"), "role `agent` needs `agent`"));
                }
                Role::Supervisor if t.teams.is_empty() && t.shops.is_empty() => {
                    return Err(invalid(&key, "role `supervisor` needs `teams` and/or `shops`"));
                }
                Role::Shop | Role::Ingest if t.shops.is_empty() => {
                    return Err(invalid(format!("{key}.shops"), "this role needs `shops`"));
                }
                _ => {}
            }
            if let Some(team) = t.teams.iter().find(|team| !self.teams.contains_key(*team)) {
                return Err(invalid(
                    format!("{key}.teams"),
                    format!("no such team `{team}` in [teams]"),
                ));
            }
        }
        if self.ingest.max_frame_bytes < 1024 || self.ingest.max_frame_bytes > 16 << 20 {
            return Err(invalid("ingest.max_frame_bytes", "must be between 1 KiB and 16 MiB"));
        }
        if self.ingest.max_body_bytes < 1024 || self.ingest.max_body_bytes > 256 << 20 {
            return Err(invalid("ingest.max_body_bytes", "must be between 1 KiB and 256 MiB"));
        }
        if self.server.push_interval_ms < 50 || self.server.push_interval_ms > 60_000 {
            return Err(invalid("server.push_interval_ms", "must be between 50 and 60000"));
        }
        if self.server.reserve_memory_mib > MAX_RESERVE_MIB {
            return Err(invalid(
                "server.reserve_memory_mib",
                format!("must be at most {MAX_RESERVE_MIB} (1 TiB)"),
            ));
        }
        Ok(())
    }

    /// Desk-wide thresholds.
    pub fn thresholds(&self) -> Thresholds {
        let a = &self.alerts;
        ThresholdOverride {
            target_ms: a.target_ms,
            norm_ms: a.norm_ms,
            clear_ms: a.clear_ms,
            critical_ms: a.critical_ms,
            min_samples: a.min_samples,
        }
        .apply(Thresholds::default())
    }

    /// The engine's settings.
    pub fn settings(&self, clock: Clock) -> Arc<Settings> {
        Arc::new(Settings {
            timezone: jiff::tz::TimeZone::get(&self.desk.timezone).expect("checked at load"),
            clock,
            thresholds: self.thresholds(),
            shop_thresholds: self
                .alerts
                .shops
                .iter()
                .map(|(k, v)| (ShopId::new(k), *v))
                .collect::<HashMap<_, _>>(),
            team_thresholds: self
                .alerts
                .teams
                .iter()
                .map(|(k, v)| (TeamId::new(k), *v))
                .collect::<HashMap<_, _>>(),
            teams: self
                .teams
                .iter()
                .map(|(k, v)| (TeamId::new(k), v.agents.iter().map(|a| AgentId::new(a)).collect()))
                .collect(),
        })
    }
}

fn check_thresholds(key: &str, t: &Thresholds) -> Result<(), ConfigError> {
    if t.clear_ms > t.norm_ms {
        return Err(invalid(
            format!("{key}.clear_ms"),
            "must not exceed norm_ms (alerts would never settle)",
        ));
    }
    if t.norm_ms > t.critical_ms {
        return Err(invalid(format!("{key}.critical_ms"), "must not be below norm_ms"));
    }
    if t.target_ms > t.norm_ms {
        return Err(invalid(format!("{key}.target_ms"), "must not exceed norm_ms"));
    }
    if t.min_samples == 0 {
        return Err(invalid(format!("{key}.min_samples"), "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c.thresholds(), Thresholds::default());
        assert_eq!(c.desk.timezone, "Asia/Shanghai");
    }

    #[test]
    fn protocol_example_parses() {
        let text = r#"
[desk]
timezone = "Asia/Shanghai"

[alerts]
target_ms = 30000
norm_ms = 60000
clear_ms = 50000
critical_ms = 100000
min_samples = 3

[alerts.shops.shop-a]
norm_ms = 45000

[teams.night-shift]
agents = ["a1", "a2"]

[[tokens]]
token = "supervisor-secret"
role = "supervisor"
teams = ["night-shift"]
"#;
        let c = Config::parse(text, "test").unwrap();
        let s = c.settings(Clock::Wall);
        let a = s.thresholds_for(None, &ShopId::new("shop-a"));
        assert_eq!((a.norm_ms, a.clear_ms, a.critical_ms), (45_000, 37_500, 100_000));
        assert_eq!(s.thresholds_for(None, &ShopId::new("shop-b")), Thresholds::default());
        assert_eq!(s.teams_of(&AgentId::new("a2")), vec![TeamId::new("night-shift")]);
    }

    #[test]
    fn an_override_of_norm_ms_alone_keeps_the_other_thresholds_in_proportion() {
        let c = Config::parse(
            "[alerts.shops.slow]\nnorm_ms = 120000\n[alerts.shops.strict]\nnorm_ms = 20000\n",
            "test",
        )
        .unwrap();
        let s = c.settings(Clock::Wall);
        // Raised past critical_ms: critical keeps its 10:6 ratio; clear and
        // target, already below, are inherited as they are.
        let slow = s.thresholds_for(None, &ShopId::new("slow"));
        assert_eq!(
            (slow.target_ms, slow.clear_ms, slow.critical_ms),
            (30_000, 50_000, 200_000)
        );
        // Lowered past target and clear: both keep their ratio to norm.
        let strict = s.thresholds_for(None, &ShopId::new("strict"));
        assert_eq!(
            (strict.target_ms, strict.clear_ms, strict.critical_ms),
            (10_000, 16_666, 100_000)
        );
        // A key the user wrote is never changed: a conflict is an error.
        let e = Config::parse("[alerts.shops.x]\nnorm_ms = 45000\nclear_ms = 50000", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alerts.shops.x.clear_ms"), "{e}");
    }

    #[test]
    fn reserve_memory_mib_is_none_by_default_and_at_most_a_tib() {
        assert_eq!(Config::parse("", "test").unwrap().server.reserve_memory_mib, 0);
        let c = Config::parse("[server]\nreserve_memory_mib = 4096\n", "test").unwrap();
        assert_eq!(c.server.reserve_memory_mib, 4096);
        let e = Config::parse("[server]\nreserve_memory_mib = 1048577\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.reserve_memory_mib"), "{e}");
        let e = Config::parse("[server]\nreserve_memory_mib = -1\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserve_memory_mib"), "{e}");
    }

    #[test]
    fn a_token_given_twice_is_an_error() {
        let text = "[[tokens]]\ntoken = \"same-secret\"\nrole = \"admin\"\n\
                    [[tokens]]\ntoken = \"same-secret\"\nrole = \"shop\"\nshops = [\"s1\"]\n";
        let e = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("tokens[1]") && e.contains("tokens[0]"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("[alerts]\nnrom_ms = 5", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nrom_ms"), "{e}");
        let e = Config::parse("[alerts]\nclear_ms = 70000", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alerts.clear_ms"), "{e}");
        let e = Config::parse("[desk]\ntimezone = \"Mars/Olympus\"", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("desk.timezone"), "{e}");
        let e = Config::parse("[[tokens]]\ntoken = \"abcdefgh\"\nrole = \"agent\"", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens[0].agent"), "{e}");
        let e = Config::parse("[alerts]\nnorm_ms = \"fast\"", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_ms"), "{e}");
    }
}
