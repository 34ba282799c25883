//! The shared harness: the real `deskpulse` binary on 127.0.0.1 port 0 with
//! its own data dir, a tiny HTTP client and WebSocket helpers. A server is
//! killed when its handle drops; data dirs are removed when the test ends.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A data dir removed on drop.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("deskpulse-it-{name}-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).expect("create data dir");
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(42);
    h.finish() % 1_000_000
}

/// A running server process.
pub struct Server {
    child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    config: Option<PathBuf>,
    clock: &'static str,
}

/// A config with every role, and thresholds small enough for tests.
pub const CONFIG: &str = r#"
[alerts]
target_ms = 1000
norm_ms = 2000
clear_ms = 1500
critical_ms = 4000
min_samples = 1

[teams.t1]
agents = ["a1", "a2"]

[teams.t2]
agents = ["a3"]

[[tokens]]
token = "admin-token"
role = "admin"

[[tokens]]
token = "sup-t1-token"
role = "supervisor"
teams = ["t1"]

[[tokens]]
token = "sup-s2-token"
role = "supervisor"
shops = ["s2"]

[[tokens]]
token = "agent-a1-token"
role = "agent"
agent = "a1"

[[tokens]]
token = "shop-s1-token"
role = "shop"
shops = ["s1"]

[[tokens]]
token = "ingest-token"
role = "ingest"
shops = ["s1", "s2"]
"#;

impl Server {
    /// Starts the binary with `config` (TOML text, or none for the open default).
    pub fn start(dir: &Path, config: Option<&str>, clock: &'static str) -> Self {
        let config_path = config.map(|text| {
            let p = dir.join("config.toml");
            std::fs::write(&p, text).expect("write config");
            p
        });
        Self::spawn(dir.join("data"), config_path, clock, "127.0.0.1:0", &[])
    }

    /// Starts the binary on the open default with `env` added to its
    /// environment.
    pub fn start_with_env(dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn(dir.join("data"), None, "event", "127.0.0.1:0", env)
    }

    fn spawn(
        data_dir: PathBuf,
        config: Option<PathBuf>,
        clock: &'static str,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskpulse"));
        cmd.args(["serve", "--listen", listen, "--clock", clock, "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env("RUST_LOG", "warn")
            // The server sets this itself unless its caller did; tests
            // start it as a fresh machine would, whatever ran them.
            .env_remove(deskpulse::allocator::PURGE_DELAY_VAR)
            .envs(env.iter().copied());
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().expect("start deskpulse");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("deskpulse listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        Self {
            child,
            addr,
            data_dir,
            config,
            clock,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no flush, no goodbye).
    pub fn kill9(mut self) -> (PathBuf, Option<PathBuf>, &'static str, String) {
        self.child.kill().ok();
        self.child.wait().ok();
        (
            std::mem::take(&mut self.data_dir),
            self.config.take(),
            self.clock,
            std::mem::take(&mut self.addr),
        )
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }

    /// Starts again on the same data dir and config (on a new port).
    pub fn restart((data_dir, config, clock, _): (PathBuf, Option<PathBuf>, &'static str, String)) -> Self {
        Self::spawn(data_dir, config, clock, "127.0.0.1:0", &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// One HTTP request; returns (status, body).
    pub async fn http(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
        http(&self.addr, method, path, token, body, &[]).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (status, body) = self.http("GET", path, token, b"").await;
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let (status, body) = self.http("POST", path, token, body).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// Opens a WebSocket with an optional bearer token.
    pub async fn ws(&self, path: &str, token: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.ws_with(path, &headers).await
    }

    /// Opens a WebSocket with extra request headers.
    pub async fn ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        tokio_tungstenite::connect_async(req).await.map(|(ws, _)| ws)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A bare HTTP/1.1 request with `Connection: close`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.ok(); // the server may answer 413 before reading it all
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The next text frame as JSON, within `timeout`.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Waits for a frame matching `pred`, within `timeout`.
pub async fn wait_for(ws: &mut Ws, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = next_json(ws, left).await?;
        if pred(&v) {
            return Some(v);
        }
    }
}

/// Reads until the server's close frame (skipping other frames), within
/// `timeout`; `None` if the socket ends without one.
pub async fn close_frame(
    ws: &mut Ws,
    timeout: Duration,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Message::Close(close) = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()? {
            return close;
        }
    }
}

/// Sends one text frame.
pub async fn send(ws: &mut Ws, text: String) {
    ws.send(Message::Text(text.into())).await.expect("send frame");
}

/// Wall-clock ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// A chat.customer event.
pub fn customer(id: &str, ts: i64, shop: &str, conv: &str, cust: &str, agent: Option<&str>) -> String {
    let mut v = serde_json::json!({"id": id, "type": "chat.customer", "ts": ts, "shop": shop, "conversation": conv, "customer": cust});
    if let Some(a) = agent {
        v["agent"] = a.into();
    }
    v.to_string()
}

/// A chat.agent event.
pub fn reply(id: &str, ts: i64, shop: &str, conv: &str, cust: &str, agent: &str) -> String {
    serde_json::json!({"id": id, "type": "chat.agent", "ts": ts, "shop": shop, "conversation": conv, "customer": cust, "agent": agent}).to_string()
}

/// The `agent` ids of an `agents` list (REST listing or stream snapshot).
pub fn agent_names(v: &serde_json::Value) -> Vec<&str> {
    v["agents"]
        .as_array()
        .expect("an agents array")
        .iter()
        .map(|a| a["agent"].as_str().expect("an agent id"))
        .collect()
}
