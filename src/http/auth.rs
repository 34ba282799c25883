//! Tokens and scope: who the caller is ([`Principal`]) and what they may see.
//!
//! A config token is given in clear, as `sha256:<hex>`, or as an argon2 PHC
//! string (`$argon2id$…`). Clear and SHA-256 tokens are compared as SHA-256
//! digests, in constant time. Argon2 is slow on purpose (tens of ms and
//! ~19 MiB at the default parameters), so a presented token is checked against
//! the argon2 entries only when no digest matches, on the blocking pool, a few
//! at a time, and the outcome is remembered under the token's digest in two
//! bounded caches: a valid token is verified once, and so is a wrong one that
//! keeps coming back.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::Error as HashError;
use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{Config, Role, TokenConfig};
use crate::protocol::{AgentId, ShopId, TeamId};

/// A SHA-256 digest of a token.
pub type TokenDigest = [u8; 32];

/// Presented tokens remembered as verified (and, separately, as refused) by
/// argon2; past this an arbitrary entry is evicted.
pub const CACHE_CAP: usize = 1024;

/// The largest argon2 memory cost taken from the config, KiB (1 GiB).
pub const MAX_ARGON2_M_COST: u32 = 1 << 20;

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

/// True when a config value is meant as an argon2 PHC string, not a token.
pub fn is_argon2(s: &str) -> bool {
    s.starts_with("$argon2")
}

/// Parses and checks an argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`):
/// a known variant and version, valid parameters, a salt and a hash.
pub fn parse_argon2(s: &str) -> Result<PasswordHash, String> {
    let hash = PasswordHash::new(s).map_err(|e| format!("malformed argon2 PHC string: {e}"))?;
    Algorithm::try_from(hash.algorithm.as_str()).map_err(|_| {
        format!(
            "unknown algorithm `{}` (argon2id, argon2i or argon2d)",
            hash.algorithm.as_str()
        )
    })?;
    if let Some(v) = hash.version {
        Version::try_from(v).map_err(|_| format!("unknown argon2 version v={v} (16 or 19)"))?;
    }
    let params = Params::try_from(&hash).map_err(|e| format!("bad argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_ARGON2_M_COST {
        return Err(format!(
            "argon2 memory cost m={} KiB is over {MAX_ARGON2_M_COST} KiB (1 GiB)",
            params.m_cost()
        ));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("argon2 PHC string without salt or hash".into());
    }
    Ok(hash)
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

/// An argon2id PHC string of a token (the argon2 crate's default parameters,
/// a random salt), for writing configs.
pub fn hash_token_argon2(token: &str) -> Result<String, HashError> {
    let hash: PasswordHash = Argon2::default().hash_password(token.as_bytes())?;
    Ok(hash.to_string())
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

/// How a config token is checked.
#[derive(Debug)]
pub(crate) enum Secret {
    /// Clear or `sha256:` tokens.
    Digest(TokenDigest),
    /// An argon2 PHC string.
    Argon2(Box<PasswordHash>),
}

/// What the cheap checks (digests, caches) say of a presented token.
enum Fast {
    Found(usize),
    Refused,
    /// Only argon2 can tell.
    Verify,
}

/// The token table. Clones share the table and the caches.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    entries: Vec<(Secret, Principal)>,
    has_argon2: bool,
    /// Presented tokens argon2 accepted: digest → entry.
    verified: Mutex<HashMap<TokenDigest, usize>>,
    /// Presented tokens every argon2 entry refused.
    refused: Mutex<HashMap<TokenDigest, ()>>,
    /// Argon2 verifications run so far.
    verifications: AtomicU64,
    /// Bounds the argon2 verifications running at once (CPU and memory).
    permits: Arc<Semaphore>,
}

impl Default for Inner {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Inner {
    fn new(entries: Vec<(Secret, Principal)>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            has_argon2: entries.iter().any(|(s, _)| matches!(s, Secret::Argon2(_))),
            entries,
            verified: Mutex::default(),
            refused: Mutex::default(),
            verifications: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(cores.clamp(1, 4))),
        }
    }
}

/// How the `[[tokens]]` entry `t` is checked, or which of its fields is
/// wrong (`""` for the entry) and why. Config validation and the token
/// table both use this, so they can never disagree.
pub(crate) fn secret_of(t: &TokenConfig) -> Result<Secret, (&'static str, String)> {
    match (&t.token, &t.token_hash) {
        (Some(_), Some(_)) => Err(("", "give `token` or `token_hash`, not both".into())),
        (None, None) => Err(("", "needs `token` or `token_hash`".into())),
        (Some(tok), None) if is_argon2(tok) => Ok(Secret::Argon2(Box::new(
            parse_argon2(tok).map_err(|reason| ("token", reason))?,
        ))),
        (Some(tok), None) if tok.len() < 8 => Err(("token", "shorter than 8 characters".into())),
        (Some(tok), None) => Ok(Secret::Digest(digest(tok))),
        (None, Some(h)) if is_argon2(h) => Ok(Secret::Argon2(Box::new(
            parse_argon2(h).map_err(|reason| ("token_hash", reason))?,
        ))),
        (None, Some(h)) => parse_hash(h).map(Secret::Digest).ok_or((
            "token_hash",
            "expected `sha256:` and 64 hex digits, or an argon2 PHC string (`$argon2id$…`)".into(),
        )),
    }
}

/// Inserts, evicting an arbitrary entry to stay within [`CACHE_CAP`].
fn insert_bounded<K: Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CACHE_CAP
        && !map.contains_key(&key)
        && let Some(evict) = map.keys().next().copied()
    {
        map.remove(&evict);
    }
    map.insert(key, value);
}

impl Tokens {
    /// Builds the table from the config.
    pub fn from_config(config: &Config) -> Self {
        let entries = config
            .tokens
            .iter()
            .map(|t| {
                let secret = secret_of(t).expect("checked at config load");
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
                (secret, p)
            })
            .collect();
        Self {
            inner: Arc::new(Inner::new(entries)),
        }
    }

    /// True when no token is configured.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// The principal of `token`, if it is known. Argon2 entries are verified
    /// on this thread: async code calls [`Tokens::authenticate`].
    pub fn lookup(&self, token: &str) -> Option<&Principal> {
        let d = digest(token);
        let i = match self.fast(&d) {
            Fast::Found(i) => Some(i),
            Fast::Refused => None,
            Fast::Verify => self.verify_argon2(token, &d),
        };
        i.map(|i| &self.inner.entries[i].1)
    }

    /// The principal of `token`, if it is known. Digests and caches are
    /// checked in place; an argon2 verification runs on the blocking pool.
    pub async fn authenticate(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let i = match self.fast(&d) {
            Fast::Found(i) => Some(i),
            Fast::Refused => None,
            Fast::Verify => {
                // The permit moves into the task: a caller that goes away
                // does not free a place while its verification still runs.
                let permit = self.inner.permits.clone().acquire_owned().await.ok()?;
                let this = self.clone();
                let token = token.to_owned();
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    this.verify_argon2(&token, &d)
                })
                .await
                .unwrap_or_else(|e| {
                    tracing::error!("argon2 verification failed: {e}");
                    None
                })
            }
        };
        i.map(|i| self.inner.entries[i].1.clone())
    }

    /// Digests in constant time, then the caches.
    fn fast(&self, d: &TokenDigest) -> Fast {
        let inner = &*self.inner;
        let mut found = None;
        // Compare against every entry so timing does not tell which matched.
        for (i, (secret, _)) in inner.entries.iter().enumerate() {
            if let Secret::Digest(entry) = secret
                && constant_time_eq(entry, d)
                && found.is_none()
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            return Fast::Found(i);
        }
        if !inner.has_argon2 {
            return Fast::Refused;
        }
        if let Some(&i) = inner.verified.lock().unwrap_or_else(PoisonError::into_inner).get(d) {
            return Fast::Found(i);
        }
        if inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(d)
        {
            return Fast::Refused;
        }
        Fast::Verify
    }

    /// Verifies `token` against the argon2 entries and caches the outcome (blocking).
    fn verify_argon2(&self, token: &str, d: &TokenDigest) -> Option<usize> {
        // Another caller may have settled the same token while this one waited.
        match self.fast(d) {
            Fast::Found(i) => return Some(i),
            Fast::Refused => return None,
            Fast::Verify => {}
        }
        let inner = &*self.inner;
        let argon2 = Argon2::default();
        let mut all_mismatched = true;
        for (i, (secret, _)) in inner.entries.iter().enumerate() {
            let Secret::Argon2(hash) = secret else { continue };
            inner.verifications.fetch_add(1, Ordering::Relaxed);
            match argon2.verify_password(token.as_bytes(), &**hash) {
                Ok(()) => {
                    let mut verified = inner.verified.lock().unwrap_or_else(PoisonError::into_inner);
                    insert_bounded(&mut verified, *d, i);
                    return Some(i);
                }
                Err(HashError::PasswordInvalid) => {}
                Err(e) => {
                    tracing::warn!("argon2 token entry {i} could not be checked: {e}");
                    all_mismatched = false;
                }
            }
        }
        if all_mismatched {
            let mut refused = inner.refused.lock().unwrap_or_else(PoisonError::into_inner);
            insert_bounded(&mut refused, *d, ());
        }
        None
    }

    /// Argon2 verifications run so far.
    pub fn argon2_verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Presented tokens in the caches: (verified, refused).
    pub fn cached(&self) -> (usize, usize) {
        let inner = &*self.inner;
        (
            inner.verified.lock().unwrap_or_else(PoisonError::into_inner).len(),
            inner.refused.lock().unwrap_or_else(PoisonError::into_inner).len(),
        )
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

    /// A PHC string with tiny parameters (8 KiB, one pass) so tests are fast.
    fn small_hash(alg: Algorithm, token: &str) -> String {
        let params = Params::new(8, 1, 1, None).unwrap();
        let hash: PasswordHash = Argon2::new(alg, Version::V0x13, params)
            .hash_password_with_salt(token.as_bytes(), b"deskpulse-test-salt")
            .unwrap();
        hash.to_string()
    }

    fn argon2_config() -> Config {
        let text = format!(
            "[[tokens]]\ntoken = \"clear-admin-token\"\nrole = \"admin\"\n\
             [[tokens]]\ntoken_hash = \"{}\"\nrole = \"agent\"\nagent = \"a1\"\n\
             [[tokens]]\ntoken = \"{}\"\nrole = \"shop\"\nshops = [\"s1\"]\n",
            small_hash(Algorithm::Argon2id, "argon-agent-token"),
            small_hash(Algorithm::Argon2i, "argon-shop-token"),
        );
        Config::parse(&text, "t").unwrap()
    }

    #[test]
    fn argon2_hashes_verify_the_right_token_only() {
        let tokens = Tokens::from_config(&argon2_config());
        assert_eq!(
            tokens.lookup("argon-agent-token").unwrap().agent,
            Some(AgentId::new("a1"))
        );
        assert_eq!(tokens.lookup("argon-shop-token").unwrap().role, Role::Shop);
        assert_eq!(tokens.lookup("clear-admin-token").unwrap().role, Role::Admin);
        assert!(tokens.lookup("argon-agent-token2").is_none());
        assert!(tokens.lookup("").is_none());
        // The PHC string itself is not a token.
        let phc = small_hash(Algorithm::Argon2id, "argon-agent-token");
        assert!(tokens.lookup(&phc).is_none());
    }

    #[test]
    fn a_token_is_verified_once_and_a_wrong_one_too() {
        let tokens = Tokens::from_config(&argon2_config());
        // Clear tokens never touch argon2.
        assert!(tokens.lookup("clear-admin-token").is_some());
        assert_eq!(tokens.argon2_verifications(), 0);
        assert!(tokens.lookup("argon-agent-token").is_some());
        assert_eq!(tokens.argon2_verifications(), 1, "matched the first argon2 entry");
        for _ in 0..5 {
            assert!(tokens.lookup("argon-agent-token").is_some());
        }
        assert_eq!(tokens.argon2_verifications(), 1, "answered from the cache");
        assert_eq!(tokens.cached(), (1, 0));
        // A wrong token costs one verification per argon2 entry, once.
        assert!(tokens.lookup("wrong-token").is_none());
        assert_eq!(tokens.argon2_verifications(), 3);
        assert!(tokens.lookup("wrong-token").is_none());
        assert_eq!(tokens.argon2_verifications(), 3);
        assert_eq!(tokens.cached(), (1, 1));
        // Clones share the caches.
        assert!(tokens.clone().lookup("argon-agent-token").is_some());
        assert_eq!(tokens.argon2_verifications(), 3);
    }

    #[test]
    fn failed_attempts_do_not_grow_the_cache_past_its_bound() {
        let tokens = Tokens::from_config(&argon2_config());
        assert!(tokens.lookup("argon-shop-token").is_some());
        for i in 0..CACHE_CAP + 50 {
            assert!(tokens.lookup(&format!("guess-{i}")).is_none());
        }
        assert_eq!(tokens.cached(), (1, CACHE_CAP));
        let before = tokens.argon2_verifications();
        assert!(tokens.lookup("argon-shop-token").is_some(), "still cached");
        assert_eq!(tokens.argon2_verifications(), before);
        let mut map = HashMap::new();
        for i in 0..CACHE_CAP + 10 {
            insert_bounded(&mut map, i, ());
        }
        assert_eq!(map.len(), CACHE_CAP);
    }

    #[tokio::test]
    async fn authenticate_verifies_off_the_executor_and_caches() {
        let tokens = Tokens::from_config(&argon2_config());
        let p = tokens.authenticate("argon-agent-token").await.unwrap();
        assert_eq!(p.agent, Some(AgentId::new("a1")));
        assert!(tokens.authenticate("argon-agent-token").await.is_some());
        assert!(tokens.authenticate("clear-admin-token").await.is_some());
        assert!(tokens.authenticate("nope-nope").await.is_none());
        assert!(tokens.authenticate("nope-nope").await.is_none());
        assert_eq!(tokens.argon2_verifications(), 3);
    }

    #[test]
    fn the_cli_hash_is_argon2id_with_default_parameters() {
        let phc = hash_token_argon2("a-long-random-secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let hash = parse_argon2(&phc).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"a-long-random-secret", &hash)
                .is_ok()
        );
        assert!(Argon2::default().verify_password(b"another-secret", &hash).is_err());
    }

    #[test]
    fn malformed_phc_strings_are_config_errors_naming_the_key() {
        let good = small_hash(Algorithm::Argon2id, "argon-agent-token");
        let salt_and_hash = good.rsplitn(3, '$').take(2).collect::<Vec<_>>();
        let (hash, salt) = (salt_and_hash[0], salt_and_hash[1]);
        let bad = [
            (
                "token",
                "$argon2id$v=19$m=8,t=1,p=1$not base64!$xx".to_owned(),
                "malformed",
            ),
            ("token_hash", "$argon2id".to_owned(), "without salt or hash"),
            (
                "token_hash",
                format!("$argon2id$v=19$m=8,t=1,p=1${salt}"),
                "without salt or hash",
            ),
            (
                "token",
                format!("$argon2x$v=19$m=8,t=1,p=1${salt}${hash}"),
                "unknown algorithm",
            ),
            ("token", format!("$argon2id$v=18$m=8,t=1,p=1${salt}${hash}"), "version"),
            (
                "token_hash",
                format!("$argon2id$v=19$m=1,t=1,p=1${salt}${hash}"),
                "parameters",
            ),
            (
                "token_hash",
                format!("$argon2id$v=19$m=8,t=1,p=1,q=2${salt}${hash}"),
                "parameters",
            ),
            (
                "token",
                format!("$argon2id$v=19$m=2000000,t=1,p=1${salt}${hash}"),
                "1 GiB",
            ),
        ];
        for (key, value, why) in bad {
            let text = format!(
                "[[tokens]]\ntoken = \"clear-admin-token\"\nrole = \"admin\"\n\
                 [[tokens]]\n{key} = \"{value}\"\nrole = \"admin\"\n"
            );
            let e = Config::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(e.contains(&format!("tokens[1].{key}")), "{value}: {e}");
            assert!(e.contains(why), "{value}: {e}");
        }
        // A `token_hash` that is neither says what it may be.
        let e = Config::parse("[[tokens]]\ntoken_hash = \"md5:00\"\nrole = \"admin\"\n", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tokens[0].token_hash") && e.contains("argon2"), "{e}");
        // The well-formed one is taken under either key.
        for key in ["token", "token_hash"] {
            let text = format!("[[tokens]]\n{key} = \"{good}\"\nrole = \"admin\"\n");
            Config::parse(&text, "x.toml").unwrap();
        }
    }
}
