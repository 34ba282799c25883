//! End-to-end plumbing of `run` against an in-process mock deskpulse: the
//! mock acks frames, parses the NDJSON it receives and answers
//! `/v1/agents` from the truth model over what actually crossed the wire.
//! A faithful mock must pass; a mock that loses events must fail.

use std::sync::{Arc, Mutex};

use deskpulse_loadtest::run::{Clock, RunOpts, run};
use deskpulse_loadtest::scenario::{Millis, Scenario};
use deskpulse_loadtest::truth::{LogReader, Truth, TruthConfig, TruthReport};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

struct Mock {
    reader: LogReader,
    truth: Option<Truth>,
    report: Option<TruthReport>,
    /// Apply only every n-th accepted event when `lose_every` > 0 (a broken server).
    lose_every: u64,
    seen: u64,
}

async fn handle(mut s: TcpStream, state: Arc<Mutex<Mock>>) {
    let mut head = vec![0u8; 4096];
    let n = loop {
        let n = s.peek(&mut head).await.unwrap_or(0);
        if n == 0 || head[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break n;
        }
        tokio::task::yield_now().await;
    };
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
    if text.to_ascii_lowercase().contains("upgrade: websocket") {
        let Ok(ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        if path.starts_with("/v1/stream") {
            let _sent = tx
                .send(Message::Text(
                    json!({"type":"snapshot","now":0,"agents":[]}).to_string().into(),
                ))
                .await;
            while let Some(Ok(_)) = rx.next().await {}
            return;
        }
        let mut seq = 0u64;
        while let Some(Ok(m)) = rx.next().await {
            let Message::Text(t) = m else { continue };
            seq += 1;
            let (mut acc, mut dup) = (0u64, 0u64);
            {
                let mut st = state.lock().unwrap();
                for line in t.lines() {
                    let before = st.reader.duplicates;
                    let ev = st.reader.parse(line).expect("the tool sends valid events");
                    if st.reader.duplicates > before {
                        dup += 1;
                    }
                    if let Some(ev) = ev {
                        acc += 1;
                        st.seen += 1;
                        let lose = st.lose_every > 0 && st.seen.is_multiple_of(st.lose_every);
                        if !lose {
                            st.truth.as_mut().unwrap().apply(&ev);
                        }
                    }
                }
            }
            let ack = json!({"type":"ack","seq":seq,"accepted":acc,"duplicates":dup,"rejected":[],"warnings":[]});
            if tx.send(Message::Text(ack.to_string().into())).await.is_err() {
                return;
            }
        }
        return;
    }
    let mut buf = vec![0u8; n];
    let _read = s.read_exact(&mut buf).await;
    let body = if path.starts_with("/v1/agents") {
        let mut st = state.lock().unwrap();
        let truth = st.truth.take().unwrap();
        let report = truth.finish(&st.reader.agents, &st.reader.shops);
        st.report = Some(report.clone());
        let agents: Vec<serde_json::Value> = report
            .agents
            .iter()
            .map(|(name, t)| {
                let mut v = serde_json::to_value(t).unwrap();
                v["agent"] = json!(name);
                v
            })
            .collect();
        json!({"now": report.now, "window": "today", "agents": agents}).to_string()
    } else if let Some(shop) = path.strip_prefix("/v1/shops/").and_then(|p| p.split('/').next()) {
        let st = state.lock().unwrap();
        let (n, fen) = st
            .report
            .as_ref()
            .and_then(|r| r.silent.get(shop).copied())
            .unwrap_or((0, 0));
        json!({"shop": shop, "silent_orders": n, "silent_sales_fen": fen}).to_string()
    } else if path.starts_with("/v1/alerts") {
        json!({"alerts": []}).to_string()
    } else {
        "ok".to_string()
    };
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _written = s.write_all(resp.as_bytes()).await;
}

fn scenario() -> Scenario {
    let mut s = Scenario::default();
    s.shops.count = 6;
    s.shops.shared_seat_agents = 2;
    s.shops.shops_per_shared_agent = 2;
    s.span = Millis(1_800_000);
    s.traffic.conversations_per_shop_per_hour = 60.0;
    s.conversations.duplicate_share = 0.01;
    s
}

async fn start_mock(lose_every: u64) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let state = Arc::new(Mutex::new(Mock {
        reader: LogReader::default(),
        truth: Some(Truth::new(TruthConfig::of(&scenario()))),
        report: None,
        lose_every,
        seen: 0,
    }));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s, state.clone()));
        }
    });
    format!("http://{addr}")
}

fn opts(target: String, out: &str) -> RunOpts {
    RunOpts {
        target,
        token: None,
        scenario: scenario(),
        seed: 7,
        duration_ms: 2_000,
        connections: 3,
        batch: 20,
        linger_us: 2_000,
        window: 64,
        subscribers: 1,
        stream_interval_ms: None,
        rate: None,
        clock: Clock::Event,
        server_pid: None,
        out_dir: std::env::temp_dir().join(out),
        max_events: 1_000_000,
        max_backlog: 1_000_000,
        settle_ms: 100,
        drain_ms: 5_000,
        id_prefix: String::new(),
        min_precision: 0.0,
        min_recall: 0.0,
        quiet: true,
        save_log: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faithful_mock_passes_and_lossy_mock_fails() {
    let ok = run(opts(start_mock(0).await, "dp-lt-ok")).await.unwrap();
    let t = &ok["totals"];
    assert!(t["events_sent"].as_u64().unwrap() > 1_000, "{t}");
    assert_eq!(t["events_sent"], t["events_acked"]);
    assert!(t["duplicates"].as_u64().unwrap() > 0);
    assert_eq!(ok["verdict"]["pass"], json!(true), "{}", ok["verdict"]);
    assert!(std::env::temp_dir().join("dp-lt-ok/latest-run.html").exists());

    let bad = run(opts(start_mock(97).await, "dp-lt-bad")).await.unwrap();
    assert_eq!(bad["verdict"]["pass"], json!(false));
    assert!(!bad["verdict"]["stats"]["mismatches"].as_array().unwrap().is_empty());
}
