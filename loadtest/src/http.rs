//! The target: a loopback-only `http://host:port` base, and a tiny HTTP/1.1
//! GET client (Connection: close, Content-Length or chunked) for the
//! stats endpoints. No TLS: the load test never leaves the machine.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deskpulse base URL that resolved to loopback addresses only.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host as written (for the `Host` header and ws:// urls).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The resolved loopback address.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `http://127.0.0.1:PORT` (or `ws://`, or bare `host:port`) and
    /// refuses anything that is not loopback.
    pub async fn parse(url: &str) -> Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .unwrap_or(url);
        if url.starts_with("https://") || url.starts_with("wss://") {
            bail!("refusing {url}: the load test targets plain loopback only");
        }
        let hostport = rest.split('/').next().unwrap_or("");
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse::<u16>().context("bad port")?,
            ),
            None => bail!("target {url} needs a port"),
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{host} resolves to nothing");
        }
        if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "refusing target {url}: {} is not a loopback address (load goes to 127.0.0.0/8 or ::1 only)",
                bad.ip()
            );
        }
        Ok(Target {
            host,
            port,
            addr: addrs[0],
        })
    }

    /// `ws://host:port{path}`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// GETs `path` and parses the body as JSON; returns the status too.
    pub async fn get_json(&self, path: &str, token: Option<&str>) -> Result<(u16, serde_json::Value)> {
        let (status, body) = self.get(path, token).await?;
        let v = serde_json::from_slice(&body).with_context(|| {
            format!(
                "GET {path}: status {status}, body is not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
        })?;
        Ok((status, v))
    }

    /// GETs `path`; returns status and body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<(u16, Vec<u8>)> {
        let mut s = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting {}", self.addr))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Accept: application/json\r\nConnection: close\r\n\r\n",
            self.authority()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut buf))
            .await
            .context("GET timed out")??;
        parse_response(&buf).with_context(|| format!("GET {path}"))
    }
}

/// Splits an HTTP/1.1 response into status and (de-chunked) body.
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>)> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
            if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    let raw = &buf[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        let mut rest = raw;
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").context("bad chunk header")?;
            let size_str = String::from_utf8_lossy(&rest[..nl]);
            let size =
                usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).context("bad chunk size")?;
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                bail!("truncated chunk");
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        out
    } else if let Some(n) = length {
        raw[..n.min(raw.len())].to_vec()
    } else {
        raw.to_vec()
    };
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"{\"a\":1}"[..]));
    }

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        assert!(Target::parse("http://127.0.0.1:8080").await.is_ok());
        assert!(Target::parse("http://localhost:8080").await.is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").await.is_err());
        assert!(Target::parse("http://192.168.1.1:80").await.is_err());
        assert!(Target::parse("https://127.0.0.1:8080").await.is_err());
        assert!(Target::parse("http://127.0.0.1").await.is_err());
    }
}
