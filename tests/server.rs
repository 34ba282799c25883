//! The single-node server end to end: the real binary on port 0.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const T: Duration = Duration::from_secs(10);

fn events_ndjson(prefix: &str, n: usize, ts: i64, shop: &str) -> String {
    (0..n)
        .map(|i| {
            customer(
                &format!("{prefix}{i}"),
                ts,
                shop,
                &format!("c-{prefix}{i}"),
                &format!("u-{prefix}{i}"),
                Some("a1"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn http_ingest_acks_after_durable_and_counts_duplicates() {
    let dir = DataDir::new("http");
    let s = Server::start(&dir.0, None, "event");
    let ts = 1_762_826_400_000;
    let body = format!(
        "{}\n{}\n{}",
        customer("e1", ts, "s1", "c1", "u1", Some("a1")),
        reply("e2", ts + 20_000, "s1", "c1", "u1", "a1"),
        customer("e1", ts, "s1", "c1", "u1", Some("a1")),
    );
    let (status, ack) = s.post("/v1/events", None, body.as_bytes()).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    // A JSON array works too, and the same ids are duplicates now.
    let array = format!(
        "[{},{}]",
        customer("e1", ts, "s1", "c1", "u1", None),
        customer("e3", ts, "s1", "c3", "u3", None)
    );
    let (_, ack) = s.post("/v1/events", None, array.as_bytes()).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, stats) = s.get("/v1/agents/a1/stats?window=today", None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["responses"], 1);
    assert_eq!(stats["avg_response_ms"], 20_000.0);
    assert_eq!(stats["customers"], 1);
    // A slice of a shop no event named is refused, not a slice of zeros.
    let (status, body) = s.get("/v1/agents/a1/stats?window=today&shop=nosuch", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = s.get("/v1/agents/a1/stats?window=today&shop=s1", None).await;
    assert_eq!(status, 200);
    let (_, shop) = s.get("/v1/shops/s1/stats", None).await;
    assert_eq!(shop["queued"], 1, "c3 waits unassigned: {shop}");
    // Both bodies are in the ingest latency histogram.
    let (status, metrics) = s.http("GET", "/metrics", None, b"").await;
    assert_eq!(status, 200);
    let line = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    assert_eq!(line("deskpulse_ingest_ack_seconds_count"), 2.0);
    assert_eq!(line("deskpulse_ingest_ack_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert!(line("deskpulse_ingest_ack_seconds_sum") > 0.0);
    assert!(metrics.contains("# TYPE deskpulse_ingest_ack_seconds histogram"));
    // Two bodies, two group commits: each timed in the commit histogram.
    assert_eq!(
        line("deskpulse_log_commit_duration_seconds_count"),
        line("deskpulse_log_commits_total")
    );
    assert!(line("deskpulse_log_commit_duration_seconds_count") >= 2.0);
    assert!(metrics.contains("# TYPE deskpulse_log_commit_duration_seconds histogram"));
}

#[tokio::test]
async fn websocket_ingest_acks_every_frame_in_order() {
    let dir = DataDir::new("ws");
    let s = Server::start(&dir.0, None, "event");
    let mut ws = s.ws("/v1/ingest", None).await.expect("connect");
    let ts = 1_762_826_400_000;
    for k in 0..50 {
        let frame = match k % 3 {
            0 => customer(&format!("f{k}"), ts, "s1", "c", "u", Some("a1")),
            1 => format!("[{}]", customer(&format!("f{k}"), ts, "s1", "c", "u", Some("a1"))),
            _ => events_ndjson(&format!("f{k}-"), 3, ts, "s2"),
        };
        send(&mut ws, frame).await;
    }
    for k in 1..=50u64 {
        let ack = next_json(&mut ws, T).await.expect("an ack per frame");
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["seq"], k, "acks come in order");
        let expect = if k % 3 == 0 { 3 } else { 1 };
        assert_eq!(
            ack["accepted"].as_u64().unwrap() + ack["duplicates"].as_u64().unwrap(),
            expect
        );
    }
}

#[tokio::test]
async fn bad_input_is_named_and_the_rest_is_kept() {
    let dir = DataDir::new("bad");
    let s = Server::start(&dir.0, Some(CONFIG), "event");
    let ts = 1_762_826_400_000;
    let mut body = Vec::new();
    let lines = [
        customer("good-1", ts, "s1", "c1", "u1", Some("a1")),
        "{not json".to_owned(),
        json!({"id": "wrong-type", "type": "chat.customer", "ts": "yesterday", "shop": "s1", "conversation": "c", "customer": "u"}).to_string(),
        json!({"id": "missing", "type": "chat.agent", "ts": ts, "shop": "s1", "conversation": "c", "customer": "u"}).to_string(),
        json!({"id": "unknown-type", "type": "chat.robot", "ts": ts, "shop": "s1"}).to_string(),
        json!({"id": "x".repeat(200), "type": "conversation.close", "ts": ts, "shop": "s1", "conversation": "c"}).to_string(),
        customer("other-shop", ts, "s9", "c1", "u1", None),
        json!({"id": "extra", "type": "conversation.close", "ts": ts, "shop": "s1", "conversation": "c", "colour": "red"}).to_string(),
    ];
    for l in &lines {
        body.extend_from_slice(l.as_bytes());
        body.push(b'\n');
    }
    body.extend_from_slice(b"{\"id\":\"bad-utf8-\xff\",\"type\":\"conversation.close\"}\n");
    body.extend_from_slice(customer("good-2", ts, "s2", "c2", "u2", Some("a2")).as_bytes());
    let (status, ack) = s.post("/v1/events", Some("ingest-token"), &body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["accepted"], 3, "good-1, extra (with a warning) and good-2: {ack}");
    let rejected: Vec<(u64, String)> = ack["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["error"].as_str().unwrap().to_owned()))
        .collect();
    let indexes: Vec<u64> = rejected.iter().map(|r| r.0).collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 5, 6, 8]);
    assert!(rejected[0].1.contains("malformed JSON"));
    assert!(rejected[1].1.contains("`ts`"));
    assert!(rejected[2].1.contains("`agent`: missing"));
    assert!(rejected[3].1.contains("chat.robot"));
    assert!(rejected[4].1.contains("`id`: too long"));
    assert!(rejected[5].1.contains("may not write shop `s9`"));
    assert!(rejected[6].1.contains("UTF-8"));
    assert_eq!(ack["rejected"][1]["id"], "wrong-type");
    assert!(ack["warnings"][0]["warning"].as_str().unwrap().contains("colour"));

    // Even with the event clock, an event stamped decades ahead is refused:
    // it would move `now` past every window for good.
    let far = customer("year-2100", 4_102_444_800_000, "s1", "c1", "u1", None);
    let (status, ack) = s.post("/v1/events", Some("ingest-token"), far.as_bytes()).await;
    assert_eq!((status, ack["accepted"].as_u64()), (200, Some(0)), "{ack}");
    assert!(
        ack["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ahead of the server clock"),
        "{ack}"
    );

    // A body over the limit: 413 with a JSON error, and the server still serves.
    let big = vec![b' '; 9 << 20];
    let (status, err) = s.post("/v1/events", Some("ingest-token"), &big).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["error"].as_str().unwrap().contains("too large"));

    // An oversized WebSocket frame gets an ack with an error; the socket stays usable.
    let mut ws = s.ws("/v1/ingest", Some("ingest-token")).await.unwrap();
    send(&mut ws, format!("[{}]", " ".repeat(2 << 20))).await;
    let ack = next_json(&mut ws, T).await.unwrap();
    assert_eq!(ack["seq"], 1);
    assert!(ack["error"].as_str().unwrap().contains("frame too large"), "{ack}");
    send(&mut ws, customer("after-big", ts, "s1", "c9", "u9", None)).await;
    let ack = next_json(&mut ws, T).await.unwrap();
    assert_eq!((ack["seq"].as_u64(), ack["accepted"].as_u64()), (Some(2), Some(1)));
    // A frame that is not JSON at all.
    send(&mut ws, "hello".into()).await;
    let ack = next_json(&mut ws, T).await.unwrap();
    assert_eq!(ack["rejected"][0]["index"], 0);
    let (status, _) = s.get("/healthz", None).await;
    assert_eq!(status, 200);
    // A compressed body is refused as such, not read as bad lines.
    let (status, err) = http(
        &s.addr,
        "POST",
        "/v1/events",
        Some("ingest-token"),
        b"\x1f\x8b\x08\x00",
        &[("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 415, "{err}");
    // Unknown paths and methods answer in JSON too.
    let (status, err) = s.get("/v1/nope", None).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().unwrap().contains("/v1/nope"), "{err}");
    let (status, err) = s.get("/v1/alerts/x/ack", Some("admin-token")).await;
    assert_eq!(status, 405);
    assert!(err["error"].as_str().unwrap().contains("GET"), "{err}");

    // A text frame that is not UTF-8 cannot be read as a text frame at all
    // (RFC 6455): earlier frames are acked, then the socket closes with
    // 1007 naming the frame. The same bytes as a binary frame get an answer
    // per event.
    let mut ws = s.ws("/v1/ingest", Some("ingest-token")).await.unwrap();
    let mut raw = customer("in-binary", ts, "s1", "c8", "u8", None).into_bytes();
    raw.extend_from_slice(b"\n{\"id\":\"x\xff\"}");
    ws.send(Message::Binary(raw.into())).await.unwrap();
    let ack = next_json(&mut ws, T).await.unwrap();
    assert_eq!(ack["accepted"], 1, "{ack}");
    assert_eq!(ack["rejected"][0]["index"], 1, "{ack}");
    assert!(ack["rejected"][0]["error"].as_str().unwrap().contains("UTF-8"), "{ack}");
    send(&mut ws, customer("before-bad-text", ts, "s1", "c7", "u7", None)).await;
    let mut raw = customer("in-bad-text", ts, "s1", "c8", "u8", None).into_bytes();
    raw.extend_from_slice(b"\n{\"id\":\"x\xff\"}");
    let frame = Frame::message(raw, OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let ack = next_json(&mut ws, T).await.unwrap();
    assert_eq!((ack["seq"].as_u64(), ack["accepted"].as_u64()), (Some(2), Some(1)));
    let close = close_frame(&mut ws, T).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1007, "{close:?}");
    assert!(close.reason.contains("frame 3"), "{close:?}");
}

#[tokio::test]
async fn every_role_is_allowed_or_refused() {
    let dir = DataDir::new("roles");
    let s = Server::start(&dir.0, Some(CONFIG), "event");
    let ts = 1_762_826_400_000;
    let body = [
        customer("r1", ts, "s1", "c1", "u1", Some("a1")),
        customer("r2", ts, "s2", "c2", "u2", Some("a2")),
        customer("r3", ts, "s2", "c3", "u3", Some("a3")),
        customer("r4", ts, "s1", "c4", "u4", Some("a3")),
    ]
    .join("\n");
    assert_eq!(s.post("/v1/events", Some("ingest-token"), body.as_bytes()).await.0, 200);
    // Reading needs a valid token.
    assert_eq!(s.get("/v1/agents/a1/stats", None).await.0, 401);
    assert_eq!(s.get("/v1/agents/a1/stats", Some("wrong")).await.0, 401);
    let cases: &[(&str, &str, u16)] = &[
        ("admin-token", "/v1/agents/a3/stats", 200),
        ("admin-token", "/v1/desk/stats", 200),
        ("admin-token", "/v1/agents/nobody/stats", 404),
        ("sup-t1-token", "/v1/agents/a1/stats", 200),
        ("sup-t1-token", "/v1/agents/a2/stats", 200),
        ("sup-t1-token", "/v1/agents/a3/stats", 403),
        ("sup-t1-token", "/v1/teams/t1/stats", 200),
        ("sup-t1-token", "/v1/teams/t2/stats", 403),
        ("sup-t1-token", "/v1/shops/s1/stats", 403),
        ("sup-t1-token", "/v1/desk/stats", 403),
        ("sup-s2-token", "/v1/shops/s2/stats", 200),
        ("sup-s2-token", "/v1/agents/a3/stats", 200),
        ("sup-s2-token", "/v1/agents/a1/stats", 403),
        ("agent-a1-token", "/v1/agents/a1/stats", 200),
        ("agent-a1-token", "/v1/agents/a2/stats", 403),
        ("agent-a1-token", "/v1/teams/t1/stats", 403),
        ("shop-s1-token", "/v1/shops/s1/stats", 200),
        ("shop-s1-token", "/v1/shops/s2/stats", 403),
        ("shop-s1-token", "/v1/agents/a3/stats", 200),
        ("shop-s1-token", "/v1/agents/a2/stats", 403),
        ("ingest-token", "/v1/agents/a1/stats", 403),
        ("ingest-token", "/v1/alerts", 403),
        // An alert filter outside the scope is refused, not answered empty.
        ("agent-a1-token", "/v1/alerts?agent=a1", 200),
        ("agent-a1-token", "/v1/alerts?agent=a2", 403),
        ("sup-t1-token", "/v1/alerts?agent=a2", 200),
        ("sup-t1-token", "/v1/alerts?agent=a3", 403),
        ("shop-s1-token", "/v1/alerts?shop=s1", 200),
        ("shop-s1-token", "/v1/alerts?shop=s2", 403),
        ("shop-s1-token", "/v1/alerts?agent=a2", 403),
        // The standing ranks whole agents: not for a slice's viewer.
        ("agent-a1-token", "/v1/agents/a1/standing", 200),
        ("sup-t1-token", "/v1/agents/a1/standing", 200),
        ("shop-s1-token", "/v1/agents/a3/standing", 403),
    ];
    for (token, path, want) in cases {
        let (status, body) = s.get(path, Some(token)).await;
        assert_eq!(status, *want, "{token} GET {path}: {body}");
    }
    // A merchant sees only its shop's slice of a shared-seat agent.
    let (_, a3) = s.get("/v1/agents/a3/stats", Some("shop-s1-token")).await;
    assert_eq!(a3["customers"], 1, "only the s1 customer: {a3}");
    assert_eq!(a3["shops"], json!(["s1"]));
    assert_eq!(a3["shop"], "s1", "the slice names its shop");
    let (_, a3) = s.get("/v1/agents/a3/stats", Some("admin-token")).await;
    assert_eq!(a3["shop"], Value::Null, "the whole agent: {a3}");
    let (_, detail) = s.get("/v1/agents/a3/detail", Some("shop-s1-token")).await;
    assert_eq!(
        (&detail["shop"], &detail["shops"]),
        (&json!("s1"), &json!(["s1"])),
        "{detail}"
    );
    // Listing is filtered, never refused.
    let (_, list) = s.get("/v1/agents", Some("sup-t1-token")).await;
    let names = agent_names(&list);
    assert_eq!(names, vec!["a1", "a2"]);
    // Writing: supervisors and agents may not send events; ingest may not read.
    for token in ["sup-t1-token", "agent-a1-token", "shop-s1-token"] {
        assert_eq!(
            s.post("/v1/events", Some(token), body.as_bytes()).await.0,
            403,
            "{token}"
        );
        assert!(s.ws("/v1/ingest", Some(token)).await.is_err(), "{token} ws ingest");
    }
    assert!(s.ws("/v1/stream", Some("ingest-token")).await.is_err());
    assert!(s.ws("/v1/stream", None).await.is_err());
    assert!(s.ws("/v1/ingest", Some("ingest-token")).await.is_ok());
    // A browser WebSocket from another origin is refused; from our own page it is fine.
    let auth = ("authorization", "Bearer admin-token");
    assert!(
        s.ws_with("/v1/stream", &[auth, ("origin", "http://evil.example")])
            .await
            .is_err()
    );
    let own = format!("http://{}", s.addr);
    assert!(s.ws_with("/v1/stream", &[auth, ("origin", own.as_str())]).await.is_ok());
    // Browsers may pass the token as a `bearer.<token>` subprotocol.
    let mut ws = s
        .ws_with(
            "/v1/stream",
            &[("sec-websocket-protocol", "deskpulse, bearer.agent-a1-token")],
        )
        .await
        .expect("subprotocol token");
    let snap = next_json(&mut ws, T).await.unwrap();
    assert_eq!(snap["agents"][0]["agent"], "a1");
    // Or as the pair `bearer, <token>`, or alone. The client library refuses
    // a handshake whose answer is not one of the offered subprotocols, so
    // each success also checks the echo.
    for offered in ["bearer, agent-a1-token", "agent-a1-token"] {
        let mut ws = s
            .ws_with("/v1/stream", &[("sec-websocket-protocol", offered)])
            .await
            .unwrap_or_else(|e| panic!("{offered}: {e}"));
        let snap = next_json(&mut ws, T).await.unwrap();
        assert_eq!(snap["agents"][0]["agent"], "a1", "{offered}");
    }
    for offered in ["bearer.not-a-token", "deskpulse", "not-a-token"] {
        assert!(
            s.ws_with("/v1/stream", &[("sec-websocket-protocol", offered)])
                .await
                .is_err(),
            "{offered}"
        );
    }
    // The token may also come as a cookie.
    let (status, _) = http(
        &s.addr,
        "GET",
        "/v1/agents/a1/stats",
        None,
        b"",
        &[("Cookie", "theme=dark; deskpulse_token=agent-a1-token")],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn hundreds_of_alerts_at_once_reach_a_reading_subscriber_without_a_lag() {
    let dir = DataDir::new("burst");
    let s = Server::start(&dir.0, None, "event");
    let ts = 1_762_826_400_000;
    let n = 600;
    let body: Vec<String> = (0..n)
        .map(|i| {
            customer(
                &format!("w{i}"),
                ts,
                "s1",
                &format!("c{i}"),
                &format!("u{i}"),
                Some(&format!("x{i}")),
            )
        })
        .collect();
    s.post("/v1/events", None, body.join("\n").as_bytes()).await;
    let mut ws = s.ws("/v1/stream", None).await.unwrap();
    wait_for(&mut ws, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    // One event moves the event clock past the norm: every wait crosses it
    // in the same engine step.
    let late = json!({"id": "tick", "type": "agent.status", "ts": ts + 61_000, "shop": "s1", "agent": "x0", "status": "online"});
    s.post("/v1/events", None, late.to_string().as_bytes()).await;
    let mut raised = 0;
    while raised < n {
        let frame = next_json(&mut ws, T).await.expect("a frame");
        assert_ne!(frame["type"], "lagged", "after {raised} raises");
        if frame["type"] == "alert" && frame["event"] == "raised" {
            raised += 1;
        }
    }
}

#[tokio::test]
async fn stream_is_scoped_snapshot_then_updates() {
    let dir = DataDir::new("stream");
    let s = Server::start(&dir.0, Some(CONFIG), "event");
    let ts = 1_762_826_400_000;
    let body = [
        customer("s1", ts, "s1", "c1", "u1", Some("a1")),
        customer("s2", ts, "s2", "c3", "u3", Some("a3")),
    ]
    .join("\n");
    s.post("/v1/events", Some("ingest-token"), body.as_bytes()).await;
    let mut sup = s.ws("/v1/stream", Some("sup-t1-token")).await.unwrap();
    let mut agent = s.ws("/v1/stream", Some("agent-a1-token")).await.unwrap();
    let snap = wait_for(&mut sup, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    let names = agent_names(&snap);
    assert_eq!(names, vec!["a1", "a2"], "team t1 only");
    assert!(snap["desk"].is_null());
    let snap = wait_for(&mut agent, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    assert_eq!(snap["agents"].as_array().unwrap().len(), 1);
    assert_eq!(snap["agents"][0]["agent"], "a1");
    assert!(snap["teams"].as_array().unwrap().is_empty());
    // A reply changes a1: the update reaches both, with the new numbers.
    s.post(
        "/v1/events",
        Some("ingest-token"),
        reply("s3", ts + 5_000, "s1", "c1", "u1", "a1").as_bytes(),
    )
    .await;
    for ws in [&mut sup, &mut agent] {
        let up = wait_for(ws, T, |v| {
            v["type"] == "update"
                && v["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x["agent"] == "a1" && x["today"]["responses"] == 1))
        })
        .await
        .expect("update with the reply");
        assert!(up["agents"].as_array().unwrap().iter().all(|x| x["agent"] != "a3"));
    }
}

#[tokio::test]
async fn customer_waiting_alert_fires_within_a_second_with_no_new_event() {
    let dir = DataDir::new("alert");
    let s = Server::start(&dir.0, Some(CONFIG), "wall");
    let mut sup = s.ws("/v1/stream", Some("sup-t1-token")).await.unwrap();
    wait_for(&mut sup, T, |v| v["type"] == "snapshot").await.unwrap();
    // norm_ms = 2000: the wait crosses it 2 s after `start`.
    let start = now_ms();
    s.post(
        "/v1/events",
        Some("ingest-token"),
        customer("w1", start, "s1", "c1", "u1", Some("a1")).as_bytes(),
    )
    .await;
    let raised = wait_for(&mut sup, T, |v| v["type"] == "alert" && v["event"] == "raised")
        .await
        .expect("raised");
    let delay = now_ms() - (start + 2000);
    assert_eq!(raised["alert"]["rule"], "customer_waiting");
    assert_eq!(raised["alert"]["agent"], "a1");
    assert!(delay < 1000, "raised {delay} ms after the crossing");
    let escalated = wait_for(&mut sup, T, |v| v["type"] == "alert" && v["event"] == "escalated")
        .await
        .expect("escalated");
    assert_eq!(escalated["alert"]["severity"], "critical");
    // Ack from the API reaches the subscriber, with who acked.
    let id = raised["alert"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        s.post(&format!("/v1/alerts/{id}/ack"), Some("agent-a1-token"), b"")
            .await
            .0,
        403
    );
    // A page of another site cannot make a supervisor's browser ack it.
    let cookie = [
        ("cookie", "deskpulse_token=sup-t1-token"),
        ("origin", "http://evil.example"),
    ];
    let (status, body) = http(&s.addr, "POST", &format!("/v1/alerts/{id}/ack"), None, b"", &cookie).await;
    assert_eq!(status, 403, "{body}");
    let (status, acked) = s.post(&format!("/v1/alerts/{id}/ack"), Some("sup-t1-token"), b"").await;
    assert_eq!(status, 200, "{acked}");
    let frame = wait_for(&mut sup, T, |v| v["type"] == "alert" && v["event"] == "acked")
        .await
        .expect("acked frame");
    assert_eq!(frame["alert"]["acked_by"], acked["acked_by"]);
    assert_eq!(s.post("/v1/alerts/nope/ack", Some("sup-t1-token"), b"").await.0, 404);
    // The reply resolves it.
    s.post(
        "/v1/events",
        Some("ingest-token"),
        reply("w2", now_ms(), "s1", "c1", "u1", "a1").as_bytes(),
    )
    .await;
    wait_for(&mut sup, T, |v| v["type"] == "alert" && v["event"] == "resolved")
        .await
        .expect("resolved");
    let (_, all) = s.get("/v1/alerts?state=all&agent=a1", Some("admin-token")).await;
    let ours = all["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .expect("kept in history");
    assert_eq!(ours["acked_by"], acked["acked_by"]);
    assert!(ours["resolved_at"].is_i64());
    let (_, active) = s.get("/v1/alerts", Some("admin-token")).await;
    assert!(
        active["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["rule"] != "customer_waiting")
    );
    // After kill -9 the history is the same to the millisecond: the raise
    // and escalation came from clock ticks alone, and the ticks are logged.
    let (_, before) = s.get("/v1/alerts?state=all", Some("admin-token")).await;
    let s = Server::restart(s.kill9());
    let (_, after) = s.get("/v1/alerts?state=all", Some("admin-token")).await;
    assert_eq!(after, before);
}

#[tokio::test]
async fn a_slower_update_pace_sends_what_piled_up_when_the_interval_ends() {
    let dir = DataDir::new("pace");
    let s = Server::start(&dir.0, None, "event");
    let ts = 1_762_826_400_000;
    let mut ws = s.ws("/v1/stream?interval_ms=2000", None).await.unwrap();
    wait_for(&mut ws, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    let post = |id: &str, k: i64| customer(id, ts + k, "s1", &format!("c-{id}"), "u", Some("a1"));
    s.post("/v1/events", None, post("p1", 0).as_bytes()).await;
    wait_for(&mut ws, T, |v| v["type"] == "update")
        .await
        .expect("first update");
    let first = std::time::Instant::now();
    // A change right after: it waits for the 2 s pace, and no longer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.post("/v1/events", None, post("p2", 1).as_bytes()).await;
    wait_for(&mut ws, T, |v| v["type"] == "update")
        .await
        .expect("second update");
    let gap = first.elapsed();
    assert!(gap >= Duration::from_millis(1900), "{gap:?}: sooner than the pace");
    assert!(gap <= Duration::from_millis(2600), "{gap:?}: later than the pace");
}

#[tokio::test]
async fn a_snapshot_on_a_quiet_desk_carries_the_current_time() {
    let dir = DataDir::new("quiet");
    let s = Server::start(&dir.0, None, "wall");
    s.post(
        "/v1/events",
        None,
        customer("q1", now_ms(), "s1", "c1", "u1", Some("a1")).as_bytes(),
    )
    .await;
    // Nothing changes for 2.5 s: no publish has a reason to run.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut ws = s.ws("/v1/stream", None).await.unwrap();
    let snap = wait_for(&mut ws, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    let behind = now_ms() - snap["now"].as_i64().unwrap();
    assert!(behind < 700, "the snapshot's now is {behind} ms behind");
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_slow_ingest() {
    let dir = DataDir::new("slow");
    let s = Server::start(&dir.0, None, "event");
    // Subscribes, then never reads a byte.
    let _stuck = s.ws("/v1/stream?interval_ms=100", None).await.unwrap();
    let mut reader = s.ws("/v1/stream?interval_ms=100", None).await.unwrap();
    let mut ingest = s.ws("/v1/ingest", None).await.unwrap();
    let ts = 1_762_826_400_000;
    let frames = 300;
    for k in 0..frames {
        let batch: Vec<String> = (0..100)
            .map(|i| {
                customer(
                    &format!("e{k}-{i}"),
                    ts + k,
                    &format!("s{}", i % 7),
                    &format!("c{k}-{i}"),
                    "u",
                    Some(&format!("agent-{}", i % 40)),
                )
            })
            .collect();
        send(&mut ingest, format!("[{}]", batch.join(","))).await;
    }
    let mut acked = 0;
    for _ in 0..frames {
        let ack = next_json(&mut ingest, T)
            .await
            .expect("every frame acked while a subscriber is stuck");
        acked += ack["accepted"].as_u64().unwrap();
    }
    assert_eq!(acked, 30_000);
    // The other subscriber keeps getting updates.
    let got = wait_for(&mut reader, T, |v| v["type"] == "update").await;
    assert!(got.is_some());
    let (_, desk) = s.get("/v1/desk/stats", None).await;
    assert_eq!(desk["waiting"], 30_000);
}

#[tokio::test]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = DataDir::new("kill");
    let s = Server::start(&dir.0, None, "event");
    let ts = 1_762_826_400_000;
    let frame = |k: u64| {
        // Each event opens its own wait for a1: `waiting` counts them exactly.
        let batch: Vec<String> = (0..50)
            .map(|i| {
                customer(
                    &format!("k{k}-{i}"),
                    ts + k as i64,
                    "s1",
                    &format!("c{k}-{i}"),
                    "u",
                    Some("a1"),
                )
            })
            .collect();
        format!("[{}]", batch.join(","))
    };
    let (mut tx, mut rx) = s.ws("/v1/ingest", None).await.unwrap().split();
    let acked = Arc::new(AtomicU64::new(0));
    let acks = acked.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) {
                acks.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::SeqCst);
            }
        }
    });
    let frames = 300u64;
    for k in 0..frames {
        tx.send(tokio_tungstenite::tungstenite::Message::Text(frame(k).into()))
            .await
            .unwrap();
        // Kill while frames are in flight, once some acks have come back.
        if k == frames / 2 {
            let deadline = tokio::time::Instant::now() + T;
            while acked.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    let sent = frames * 50;
    let parts = s.kill9();
    reader.await.ok();
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0, "some frames were acknowledged before the kill");
    let s = Server::restart(parts);
    let (_, stats) = s.get("/v1/agents/a1/stats", None).await;
    let recovered = stats["waiting"].as_u64().unwrap();
    assert!(
        recovered >= acked,
        "acked {acked}, recovered {recovered}: an acknowledged event was lost"
    );
    assert!(recovered <= sent, "no event appears that was not sent");
    // Re-sending everything: what survived is a duplicate, and the total is exact.
    let mut ws = s.ws("/v1/ingest", None).await.unwrap();
    let mut dup = 0;
    for k in 0..frames {
        send(&mut ws, frame(k)).await;
        let ack = next_json(&mut ws, T).await.unwrap();
        dup += ack["duplicates"].as_u64().unwrap();
    }
    assert_eq!(dup, recovered, "every recovered event is a duplicate on resend");
    let (_, stats) = s.get("/v1/agents/a1/stats", None).await;
    assert_eq!(
        stats["waiting"].as_u64().unwrap(),
        sent,
        "each event counted exactly once"
    );
}

#[tokio::test]
async fn a_torn_log_tail_is_cut_and_duplicates_survive_restart() {
    let dir = DataDir::new("torn");
    let s = Server::start(&dir.0, None, "event");
    let ts = 1_762_826_400_000;
    let body = events_ndjson("t", 10, ts, "s1");
    assert_eq!(s.post("/v1/events", None, body.as_bytes()).await.1["accepted"], 10);
    let parts = s.kill9();
    // A half-written record at the end of the segment.
    let log_dir = parts.0.join("log");
    let seg = std::fs::read_dir(&log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 1, b'{', b'"']);
    std::fs::write(&seg, bytes).unwrap();
    let s = Server::restart(parts);
    let (_, stats) = s.get("/v1/agents/a1/stats", None).await;
    assert_eq!(stats["waiting"], 10);
    let (_, ack) = s.post("/v1/events", None, body.as_bytes()).await;
    assert_eq!(
        (ack["accepted"].as_u64(), ack["duplicates"].as_u64()),
        (Some(0), Some(10))
    );
    let (_, ack) = s
        .post("/v1/events", None, events_ndjson("n", 1, ts, "s1").as_bytes())
        .await;
    assert_eq!(ack["accepted"], 1, "appends continue after the cut");
    let parts = s.kill9();
    let s = Server::restart(parts);
    assert_eq!(s.get("/v1/agents/a1/stats", None).await.1["waiting"], 11);
}

#[tokio::test]
async fn sigterm_closes_sockets_with_a_close_frame_and_flushes() {
    let dir = DataDir::new("term");
    let s = Server::start(&dir.0, None, "event");
    let mut sub = s.ws("/v1/stream", None).await.unwrap();
    wait_for(&mut sub, T, |v| v["type"] == "snapshot").await.unwrap();
    let (_, ack) = s
        .post(
            "/v1/events",
            None,
            events_ndjson("g", 5, 1_762_826_400_000, "s1").as_bytes(),
        )
        .await;
    assert_eq!(ack["accepted"], 5);
    let data = s.data_dir.clone();
    let status = s.terminate();
    assert!(status.success(), "{status:?}");
    // The subscriber got a close frame (1001), not a reset.
    let mut closed = None;
    use futures_util::StreamExt;
    while let Ok(Some(msg)) = tokio::time::timeout(T, sub.next()).await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Close(frame)) = msg {
            closed = frame.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(closed, Some(1001));
    let _ = data;
}

#[tokio::test]
async fn open_default_refuses_a_network_address() {
    // Bound for the whole test: a temporary would be removed before the
    // server creates its data dir inside it, and that dir would be left.
    let dir = DataDir::new("open");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.0.join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without tokens"));
}

#[tokio::test]
async fn a_host_name_listen_address_is_resolved() {
    use std::io::BufRead;
    let dir = DataDir::new("localhost");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .args(["serve", "--listen", "localhost:0", "--data-dir"])
        .arg(dir.0.join("d"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().ok();
    child.wait().ok();
    assert!(line.contains("listening on http://127.0.0.1:"), "{line}");
}

#[tokio::test]
async fn replay_prints_the_agents_skips_bad_lines_and_slices_by_shop() {
    let dir = DataDir::new("replay");
    let log = dir.0.join("log.ndjson");
    let ts = 1_762_826_400_000;
    let lines = [
        customer("e1", ts, "s1", "c1", "u1", Some("a1")),
        reply("e2", ts + 20_000, "s1", "c1", "u1", "a1"),
        "{not json".to_owned(),
        customer("e3", ts, "s2", "c2", "u2", Some("a1")),
        // Stamped in 2100: as `serve --clock event` would, skipped, so it
        // cannot move `now` past every window.
        customer("e9", 4_102_444_800_000, "s1", "c9", "u9", Some("a1")),
        reply("e4", ts + 40_000, "s2", "c2", "u2", "a1"),
        // An array: its good item is taken, its bad one named by position.
        format!(
            r#"[{{"id":"e5","type":"agent.status","ts":{},"shop":"s1","agent":"a1","status":"away"}}, {{"id":"e6","type":"chat.bogus","ts":{ts},"shop":"s1"}}]"#,
            ts + 10_000
        ),
        // Sent again a day later: a duplicate, which moves no clock.
        reply("e2", ts + 86_400_000, "s1", "c1", "u1", "a1"),
    ];
    let mut bytes = lines.join("\n").into_bytes();
    // Bad UTF-8 in a field deskpulse does not read still refuses the event.
    bytes.extend_from_slice(b"\n{\"id\":\"e7\",\"type\":\"conversation.close\",\"ts\":1,\"shop\":\"s1\",\"conversation\":\"c1\",\"note\":\"\xff\"}\n");
    std::fs::write(&log, bytes).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
            .arg("replay")
            .arg(&log)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "a bad line is reported in the exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("line 5: event e9: field `ts`"), "{stderr}");
    assert!(stderr.contains("line 7, item 1: event e6: field `type`"), "{stderr}");
    assert!(
        stderr.contains("line 9: event e7: field `note`: not valid UTF-8"),
        "{stderr}"
    );
    assert!(stderr.contains("5 accepted, 1 duplicates, 4 bad events"), "{stderr}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all["now"], ts + 40_000);
    let a1 = &all["agents"]["a1"];
    assert_eq!((&a1["now"], &a1["status"]), (&json!(ts + 40_000), &json!("away")));
    assert_eq!(a1["open_conversations"], 2, "the close with bad bytes was refused");
    assert_eq!(
        (a1["responses"].as_u64(), a1["avg_response_ms"].as_f64()),
        (Some(2), Some(30_000.0))
    );
    assert_eq!(a1["shops"], json!(["s1", "s2"]));
    // A shop's slice covers that shop, and says so.
    let s2: Value = serde_json::from_slice(&run(&["--shop", "s2"]).stdout).unwrap();
    let a1 = &s2["agents"]["a1"];
    assert_eq!(
        (a1["responses"].as_u64(), a1["avg_response_ms"].as_f64()),
        (Some(1), Some(40_000.0))
    );
    assert_eq!((&a1["shop"], &a1["shops"]), (&json!("s2"), &json!(["s2"])));
}

#[tokio::test]
async fn check_config_names_the_bad_key() {
    let dir = DataDir::new("cfg");
    let p = dir.0.join("bad.toml");
    std::fs::write(&p, "[alerts]\nnorm_ms = 1000\nclear_ms = 5000\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("alerts.clear_ms"));
    std::fs::write(&p, CONFIG).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[tokio::test]
async fn snapshots_bound_recovery_and_keep_every_number() {
    let dir = DataDir::new("snap");
    let config = "[server]\nsnapshot_every_events = 500\n";
    let s = Server::start(&dir.0, Some(config), "event");
    let ts = 1_762_826_400_000;
    let mut ws = s.ws("/v1/ingest", None).await.unwrap();
    for k in 0..40 {
        let batch: Vec<String> = (0..50)
            .flat_map(|i| {
                let conv = format!("c{k}-{i}");
                let at = ts + (k * 50 + i) as i64 * 100;
                [
                    customer(&format!("q{k}-{i}"), at, "s1", &conv, &conv, Some("a1")),
                    reply(&format!("r{k}-{i}"), at + 7_000, "s1", &conv, &conv, "a1"),
                ]
            })
            .collect();
        send(&mut ws, batch.join("\n")).await;
        next_json(&mut ws, T).await.unwrap();
    }
    let (_, before) = s.get("/v1/agents/a1/stats?window=today", None).await;
    assert_eq!(before["responses"], 2000);
    let data = s.data_dir.clone();
    // Snapshots are written in the background (one at a time, skipping a
    // turn while the last is still being written): wait for one that
    // covers at least the first 3 000 of the 4 000 records.
    let newest = || {
        std::fs::read_dir(data.join("snapshots"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.strip_prefix("snapshot-")?
                            .strip_suffix(".bin")?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + T;
    while newest() < 3000 {
        assert!(
            std::time::Instant::now() < deadline,
            "a snapshot covering 3 000 records was written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let parts = s.kill9();
    let s = Server::restart(parts);
    let (_, after) = s.get("/v1/agents/a1/stats?window=today", None).await;
    assert_eq!(
        before, after,
        "same numbers after restoring the snapshot and the log tail"
    );
    let (_, health) = s.get("/healthz", None).await;
    assert!(
        health["recovered_records"].as_u64().unwrap() <= 1000,
        "only the tail after the snapshot is replayed: {health}"
    );
    // Duplicates are still recognised across the snapshot.
    let (_, ack) = s
        .post(
            "/v1/events",
            None,
            customer("q0-0", ts, "s1", "c0-0", "c0-0", Some("a1")).as_bytes(),
        )
        .await;
    assert_eq!(ack["duplicates"], 1);
}

#[tokio::test]
async fn pipelined_frames_of_one_connection_apply_in_order() {
    let dir = DataDir::new("order");
    let s = Server::start(&dir.0, None, "event");
    let mut ws = s.ws("/v1/ingest", None).await.unwrap();
    let ts = 1_762_826_400_000;
    // One conversation, one event per frame, all sent before any ack is read:
    // a message, its reply a second later, and so on.
    // Big frames of filler between them keep the log busy.
    for k in 0..200i64 {
        let frame = if k % 2 == 0 {
            let mut lines: Vec<String> = (0..400)
                .map(|i| {
                    customer(
                        &format!("f{k}-{i}"),
                        ts + k * 1000,
                        "s2",
                        &format!("c{k}-{i}"),
                        "u",
                        Some("a9"),
                    )
                })
                .collect();
            lines.push(customer(&format!("o{k}"), ts + k * 1000, "s1", "c1", "u1", Some("a1")));
            lines.join("\n")
        } else {
            reply(&format!("o{k}"), ts + k * 1000, "s1", "c1", "u1", "a1")
        };
        send(&mut ws, frame).await;
    }
    for k in 1..=200u64 {
        assert_eq!(next_json(&mut ws, T).await.unwrap()["seq"], k);
    }
    let (_, stats) = s.get("/v1/agents/a1/stats", None).await;
    assert_eq!(stats["responses"], 100, "{stats}");
    assert_eq!(stats["max_ms"], 1000, "every reply followed its own message: {stats}");
}

#[tokio::test]
async fn a_client_close_on_the_stream_gets_a_close_back() {
    use futures_util::StreamExt;
    let dir = DataDir::new("close");
    let s = Server::start(&dir.0, None, "event");
    let mut ws = s.ws("/v1/stream", None).await.unwrap();
    wait_for(&mut ws, T, |v| v["type"] == "snapshot").await.unwrap();
    ws.close(None).await.unwrap();
    let mut answered = false;
    while let Ok(Some(msg)) = tokio::time::timeout(T, ws.next()).await {
        match msg {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => answered = true,
            Ok(_) => {}
            Err(e) => panic!("closing handshake not finished: {e}"),
        }
    }
    assert!(answered, "the server answered our close frame");
}

#[tokio::test]
async fn active_alerts_are_in_the_stream_snapshot_after_a_restart() {
    let dir = DataDir::new("alert-restart");
    let s = Server::start(&dir.0, Some(CONFIG), "event");
    let ts = 1_762_826_400_000;
    // A wait, then time moves 10 s on (another shop): critical customer_waiting.
    let body = [
        customer("a1", ts, "s1", "c1", "u1", Some("a1")),
        customer("a2", ts + 10_000, "s2", "c2", "u2", Some("a3")),
    ]
    .join("\n");
    s.post("/v1/events", Some("ingest-token"), body.as_bytes()).await;
    let (_, active) = s.get("/v1/alerts", Some("admin-token")).await;
    let ids: Vec<String> = active["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.is_empty(), "{active}");
    let s = Server::restart(s.kill9());
    let mut sub = s.ws("/v1/stream", Some("admin-token")).await.unwrap();
    let snap = wait_for(&mut sub, T, |v| v["type"] == "snapshot").await.unwrap();
    let mut in_snapshot: Vec<String> = snap["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    in_snapshot.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(in_snapshot, ids, "same alerts, same ids, after kill -9");
}

/// An argon2id PHC string with tiny parameters (8 KiB, one pass): fast to check.
fn small_argon2(token: &str) -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, Version};
    let params = Params::new(8, 1, 1, None).unwrap();
    let hash: PasswordHash = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(token.as_bytes(), b"deskpulse-it-salt")
        .unwrap();
    hash.to_string()
}

/// `deskpulse hash-token [--argon2]` with `token` on stdin.
fn hash_token_cli(token: &str, argon2: bool) -> String {
    use std::io::Write;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"));
    cmd.arg("hash-token");
    if argon2 {
        cmd.arg("--argon2");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn argon2_hashed_tokens_work_over_rest_and_websocket() {
    let dir = DataDir::new("argon2");
    // A supervisor as `token_hash`, and an admin as `token` with the CLI's
    // default parameters (verified once, then cached).
    let admin = hash_token_cli("argon-admin-token", true);
    assert!(admin.starts_with("$argon2id$"), "{admin}");
    assert!(hash_token_cli("argon-admin-token", false).starts_with("sha256:"));
    let config = format!(
        "{CONFIG}\n[[tokens]]\ntoken_hash = \"{}\"\nrole = \"supervisor\"\nteams = [\"t1\"]\n\n\
         [[tokens]]\ntoken = \"{admin}\"\nrole = \"admin\"\nname = \"argon-admin\"\n",
        small_argon2("argon-sup-token"),
    );
    let s = Server::start(&dir.0, Some(&config), "event");
    let ts = 1_762_826_400_000;
    let body = [
        customer("g1", ts, "s1", "c1", "u1", Some("a1")),
        customer("g2", ts, "s2", "c3", "u3", Some("a3")),
    ]
    .join("\n");
    assert_eq!(s.post("/v1/events", Some("ingest-token"), body.as_bytes()).await.0, 200);
    for _ in 0..2 {
        assert_eq!(s.get("/v1/agents/a1/stats", Some("argon-sup-token")).await.0, 200);
        assert_eq!(s.get("/v1/agents/a3/stats", Some("argon-sup-token")).await.0, 403);
        assert_eq!(s.get("/v1/agents/a1/stats", Some("argon-sup-tokenX")).await.0, 401);
        assert_eq!(s.get("/v1/agents/a1/stats", None).await.0, 401);
    }
    // The PHC string is not itself a token; clear tokens still work beside it.
    let phc = small_argon2("argon-sup-token");
    assert_eq!(s.get("/v1/desk/stats", Some(&phc)).await.0, 401);
    assert_eq!(s.get("/v1/desk/stats", Some("admin-token")).await.0, 200);
    let (status, me) = s.get("/v1/whoami", Some("argon-admin-token")).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["role"].as_str(), me["name"].as_str()),
        (Some("admin"), Some("argon-admin"))
    );
    // The live stream, with the header and with the subprotocol.
    let mut ws = s.ws("/v1/stream", Some("argon-sup-token")).await.expect("stream");
    let snap = wait_for(&mut ws, T, |v| v["type"] == "snapshot")
        .await
        .expect("snapshot");
    let names = agent_names(&snap);
    assert_eq!(names, vec!["a1", "a2"], "team t1 only");
    assert!(
        s.ws_with(
            "/v1/stream",
            &[("sec-websocket-protocol", "deskpulse, bearer.argon-admin-token")]
        )
        .await
        .is_ok()
    );
    assert!(s.ws("/v1/stream", Some("argon-sup-tokenX")).await.is_err());
    // A malformed PHC string is refused at start, naming the key.
    let p = dir.0.join("bad.toml");
    std::fs::write(
        &p,
        format!("{CONFIG}\n[[tokens]]\ntoken_hash = \"$argon2id$v=19$m=8,t=1,p=1$!!\"\nrole = \"admin\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .arg("check-config")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokens[6].token_hash"), "{err}");
}

#[tokio::test]
async fn a_restart_judges_each_logged_batch_as_it_was_judged_live() {
    // Wall clock: a batch holding a customer's message from ten minutes ago
    // and the reply to it leaves no wait, so the live server raises no
    // alert. Recovery must apply the batch as one too, or its wait rules
    // would see the message alone and raise (and resolve) an alert that
    // never happened.
    let dir = DataDir::new("batches");
    let s = Server::start(&dir.0, None, "wall");
    let ts = now_ms() - 10 * 60_000;
    let body = format!(
        "{}\n{}\n",
        customer("b1", ts, "s1", "c1", "u1", Some("a1")),
        reply("b2", ts + 60_000, "s1", "c1", "u1", "a1")
    );
    assert_eq!(s.post("/v1/events", None, body.as_bytes()).await.1["accepted"], 2);
    let (_, live) = s.get("/v1/alerts?state=all", None).await;
    assert_eq!(live["alerts"].as_array().map(Vec::len), Some(0), "{live}");
    let parts = s.kill9();
    let s = Server::restart(parts);
    let (_, after) = s.get("/v1/alerts?state=all", None).await;
    assert_eq!(after["alerts"].as_array().map(Vec::len), Some(0), "{after}");
    let (_, stats) = s.get("/v1/agents/a1/stats", None).await;
    assert_eq!(stats["responses"], 1);
}

/// The `MIMALLOC_PURGE_DELAY=…` entries of process `pid`'s environment.
fn purge_delay_entries(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).expect("read the server's environment");
    bytes
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY="))
        .collect()
}

#[tokio::test]
async fn serve_runs_with_mimalloc_keeping_the_memory_it_frees() {
    let dir = DataDir::new("purge-default");
    let s = Server::start_with_env(&dir.0, &[]);
    assert_eq!(
        purge_delay_entries(s.pid()),
        ["MIMALLOC_PURGE_DELAY=-1"],
        "restarted in place with the delay set"
    );
    // The restarted process is the one serving.
    assert_eq!(s.get("/healthz", None).await.0, 200);
}

#[tokio::test]
async fn an_operators_own_purge_delay_is_kept() {
    let dir = DataDir::new("purge-operator");
    let s = Server::start_with_env(&dir.0, &[("MIMALLOC_PURGE_DELAY", "250")]);
    assert_eq!(purge_delay_entries(s.pid()), ["MIMALLOC_PURGE_DELAY=250"]);
    assert_eq!(s.get("/healthz", None).await.0, 200);
}

/// `MemAvailable` of this machine, MiB.
fn available_mib() -> u64 {
    deskpulse::allocator::proc_kib("/proc/meminfo", "MemAvailable").expect("MemAvailable in /proc/meminfo") >> 10
}

/// The resident memory of process `pid`, MiB.
fn resident_mib(pid: u32) -> u64 {
    deskpulse::allocator::proc_kib(&format!("/proc/{pid}/status"), "VmRSS").expect("VmRSS in the server's status") >> 10
}

#[tokio::test]
async fn memory_reserved_at_start_is_faulted_in_and_kept() {
    let dir = DataDir::new("reserve");
    let s = Server::start(&dir.0, Some("[server]\nreserve_memory_mib = 256\n"), "event");
    // Freed before the engine starts, yet still resident: mimalloc keeps it
    // for the tables to grow into.
    let resident = resident_mib(s.pid());
    assert!(resident >= 256, "{resident} MiB resident");
    let ts = 1_762_826_400_000;
    let body = format!("{}\n", customer("r1", ts, "s1", "c1", "u1", Some("a1")));
    assert_eq!(s.post("/v1/events", None, body.as_bytes()).await.1["accepted"], 1);
    // An operator sees both in /metrics.
    let (_, metrics) = s.http("GET", "/metrics", None, b"").await;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    assert_eq!(value("deskpulse_reserved_memory_bytes"), f64::from(256u32 << 20));
    assert!(value("process_resident_memory_bytes") >= f64::from(256u32 << 20));
}

#[test]
fn a_reserve_the_machine_lacks_is_refused_naming_the_key() {
    let dir = DataDir::new("reserve-too-much");
    let config = dir.0.join("config.toml");
    let ask = available_mib() + 1024;
    std::fs::write(&config, format!("[server]\nreserve_memory_mib = {ask}\n")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deskpulse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.0.join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start deskpulse");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for deskpulse") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            panic!("deskpulse did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped stderr"), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("server.reserve_memory_mib"), "{stderr}");
}
