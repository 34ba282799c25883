//! Tokens and scope: who the caller is ([`Principal`]) and what they may see.
//! Tokens are compared as SHA-256 digests, so clear and hashed tokens in the
//! config are checked the same way and in constant time.

use std::collections::BTreeSet;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{Config, Role};
use crate::protocol::{AgentId, ShopId, TeamId};

/// A SHA-256 digest of a token.
pub type TokenDigest = [u8; 32];

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(s: &str) -> Option<TokenDigest> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The digest of a clear token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:<hex>` of a token, for writing configs.
pub fn hash_token(token: &str) -> String {
    let d = digest(token);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn constant_time_eq(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated caller and their scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// What the token grants.
    pub role: Role,
    /// Shown as `acked_by` and in logs.
    pub name: String,
    /// Teams a supervisor watches.
    pub teams: BTreeSet<TeamId>,
    /// Shops a supervisor, merchant or ingest client covers.
    pub shops: BTreeSet<ShopId>,
    /// The agent of an agent token.
    pub agent: Option<AgentId>,
}

impl Principal {
    /// The caller of a server running open (no config): an administrator.
    pub fn open() -> Self {
        Self {
            role: Role::Admin,
            name: "local".into(),
            teams: BTreeSet::new(),
            shops: BTreeSet::new(),
            agent: None,
        }
    }
}

/// The token table.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(TokenDigest, Principal)>,
}

impl Tokens {
    /// Builds the table from the config.
    pub fn from_config(config: &Config) -> Self {
        let entries = config
            .tokens
            .iter()
            .map(|t| {
                let d = match (&t.token, &t.token_hash) {
                    (Some(clear), _) => digest(clear),
                    (None, Some(h)) => parse_hash(h).expect("checked at config load"),
                    (None, None) => unreachable!("checked at config load"),
                };
                let name = t.name.clone().unwrap_or_else(|| match t.role {
                    Role::Agent => format!("agent:{}", t.agent.as_deref().unwrap_or("?")),
                    Role::Admin => "admin".into(),
                    r => {
                        let scope: Vec<&str> = t.teams.iter().chain(&t.shops).map(String::as_str).collect();
                        format!("{}:{}", role_name(r), scope.join(","))
                    }
                });
                let p = Principal {
                    role: t.role,
                    name,
                    teams: t.teams.iter().map(|s| TeamId::new(s)).collect(),
                    shops: t.shops.iter().map(|s| ShopId::new(s)).collect(),
                    agent: t.agent.as_deref().map(AgentId::new),
                };
                (d, p)
            })
            .collect();
        Self { entries }
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of `token`, if it is known.
    pub fn lookup(&self, token: &str) -> Option<&Principal> {
        let d = digest(token);
        let mut found = None;
        // Compare against every entry so timing does not tell which matched.
        for (entry, p) in &self.entries {
            if constant_time_eq(entry, &d) && found.is_none() {
                found = Some(p);
            }
        }
        found
    }
}

/// The wire name of a role.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Supervisor => "supervisor",
        Role::Agent => "agent",
        Role::Shop => "shop",
        Role::Ingest => "ingest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trip() {
        let h = hash_token("s3cret-token");
        assert_eq!(parse_hash(&h), Some(digest("s3cret-token")));
        assert_eq!(parse_hash("sha256:zz"), None);
        assert_eq!(parse_hash("md5:00"), None);
    }

    #[test]
    fn clear_and_hashed_tokens_both_work() {
        let text = format!(
            "[[tokens]]\ntoken = \"admin-token\"\nrole = \"admin\"\n[[tokens]]\ntoken_hash = \"{}\"\nrole = \"agent\"\nagent = \"a1\"\n",
            hash_token("agent-token")
        );
        let config = Config::parse(&text, "t").unwrap();
        let tokens = Tokens::from_config(&config);
        assert_eq!(tokens.lookup("admin-token").unwrap().role, Role::Admin);
        assert_eq!(tokens.lookup("agent-token").unwrap().agent, Some(AgentId::new("a1")));
        assert!(tokens.lookup("nope").is_none());
    }
}
