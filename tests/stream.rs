//! The unified stream in poll mode, end to end: the real sidecar against the
//! simulated backend on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

fn ids(v: &[String]) -> HashSet<String> {
    v.iter().cloned().collect()
}

#[tokio::test]
async fn message_shapes_and_delivery() {
    let (sim, sc) = rig("").await;
    let (mut ws, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance", "nope", "staff"], "version": 1}),
    )
    .await;
    assert_eq!(ack["mode"], "poll");
    assert_eq!(ack["resumed"], false);
    assert!(ack["seq"].as_u64().unwrap() > 0);
    assert!(ack["timestamp"].as_str().unwrap().ends_with('Z'));
    let err = next_non_ping(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "UNKNOWN_SERVICE");
    assert_eq!(err["service"], "nope");
    assert_eq!(err["seq"], ack["seq"]);

    // Wait until the shared pollers are parked at the backend.
    pollers(&sim, 2).await;
    let published = sim.state.publish(
        1,
        "finance",
        vec![json!({"propertyId": 7, "payload": {"a": 1}})],
    );
    let msg = next_non_ping(&mut ws).await;
    assert_eq!(msg["type"], "event", "{msg}");
    assert_eq!(msg["service"], "finance");
    let events = msg["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["eventId"], published[0].as_str());
    assert_eq!(events[0]["orgId"], 1);
    assert_eq!(
        events[0]["payload"]["a"], 1,
        "event objects pass through unchanged"
    );
    assert!(msg["seq"].as_u64().unwrap() > ack["seq"].as_u64().unwrap());
    assert!(msg["timestamp"].is_string());
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn pings_arrive() {
    let (sim, sc) = rig("stream: {ping_interval_s: 1, hub_linger_ms: 100}\n").await;
    let (mut ws, ack) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let ping = next_json(&mut ws).await;
    assert_eq!(ping["type"], "ping");
    assert_eq!(ping["seq"], ack["seq"]);
    assert!(ping["timestamp"].is_string());
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_handshakes_are_refused_with_1008() {
    let (sim, sc) = rig("stream: {handshake_timeout_s: 1}\n").await;
    for (text, code) in [
        ("not json", "BAD_HANDSHAKE"),
        ("[1,2]", "BAD_HANDSHAKE"),
        (
            r#"{"services":["finance"],"version":7}"#,
            "UNSUPPORTED_VERSION",
        ),
    ] {
        let mut ws = connect(sc.client_addr, &token(1)).await;
        ws.send(Message::Text(text.into())).await.unwrap();
        let err = next_json(&mut ws).await;
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], code, "{text}");
        assert_eq!(close_code(&mut ws).await, Some(1008));
    }
    // No handshake at all: closed with 1008 after the timeout.
    let mut ws = connect(sc.client_addr, &token(1)).await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_get_401_before_the_upgrade() {
    let (sim, sc) = rig("").await;
    let url = format!("http://{}/v2/realtime/stream", sc.client_addr);
    let none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJvcmdJZCI6MX0.";
    let wrong_key = realtime_edge::auth::mint_hs256("another-secret", "orgId", 1, 60);
    for tok in [
        None,
        Some(none_alg.to_string()),
        Some(wrong_key),
        Some("garbage".to_string()),
    ] {
        let (status, headers, body) = http("GET", &url, tok.as_deref(), None).await;
        assert_eq!(status, 401, "{tok:?}");
        assert_eq!(headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].is_string());
    }
    // A WebSocket client sees the refusal as an HTTP error, not a stream.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        stream_url(sc.client_addr),
    )
    .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {none_alg}").parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // The query parameter works for browsers.
    let (mut ws, _) = {
        let url = format!("{}?access_token={}", stream_url(sc.client_addr), token(3));
        tokio_tungstenite::connect_async(url).await.unwrap()
    };
    handshake(&mut ws, &hello(&["finance"])).await;
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn fifty_connections_share_three_pollers() {
    let (sim, sc) = rig("").await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (ws, _) = subscribe(sc.client_addr, 5, hello(&["finance", "staff", "tasks"])).await;
        clients.push(ws);
    }
    pollers(&sim, 3).await;
    // Let more time pass: the count stays at three, not 150.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.state.stats_json()["activePollsTotal"], 3);
    let id = sim.state.publish(5, "staff", vec![json!({})]);
    for ws in clients.iter_mut() {
        let (got, _) = collect_ids(ws, &ids(&id)).await;
        assert_eq!(got, id);
    }
    let requests = sim.state.stats_json()["requestsByOrg"]["5"]
        .as_u64()
        .unwrap();
    assert!(
        requests <= 6,
        "each poller re-polls once per answer, not once per client: {requests}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn property_filter() {
    let (sim, sc) = rig("").await;
    let (mut filtered, _) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "filters": {"propertyId": 7}}),
    )
    .await;
    let (mut all, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let a = sim.state.publish(
        1,
        "finance",
        vec![
            json!({"propertyId": 7}),
            json!({"propertyId": 8}),
            json!({"x": 1}),
            json!({"propertyId": "7"}),
        ],
    );
    let (got_all, _) = collect_ids(&mut all, &ids(&a)).await;
    assert_eq!(got_all, a);
    let want: Vec<String> = vec![a[0].clone(), a[2].clone(), a[3].clone()];
    let (got, _) = collect_ids(&mut filtered, &ids(&want)).await;
    assert_eq!(
        got, want,
        "property 8 is filtered out; events without propertyId pass"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn orgs_never_see_each_other() {
    let (sim, sc) = rig("").await;
    let (mut one, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (mut two, _) = subscribe(sc.client_addr, 2, hello(&["finance"])).await;
    pollers(&sim, 2).await;
    // The backend misbehaves: org 1's endpoint returns an event of org 2.
    let leaked = sim
        .state
        .publish(1, "finance", vec![json!({"eventId": "leak-1", "orgId": 2})]);
    let a = sim.state.publish(1, "finance", vec![json!({})]);
    let b = sim.state.publish(2, "finance", vec![json!({})]);
    let (got1, _) = collect_ids(&mut one, &ids(&a)).await;
    let (got2, _) = collect_ids(&mut two, &ids(&b)).await;
    assert_eq!(got1, a);
    assert_eq!(got2, b);
    let more1 = drain_ids(&mut one, Duration::from_millis(300)).await;
    let more2 = drain_ids(&mut two, Duration::from_millis(300)).await;
    assert!(!more1.contains(&leaked[0]) && !more2.contains(&leaked[0]));
    let m = sidecar_metrics(&sc).await;
    assert!(
        m["errorCount"].as_u64().unwrap() >= 1,
        "the dropped event is counted: {m}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_events() {
    let (sim, sc) = rig("").await;
    // A second client keeps the org's hub alive while the first is away.
    let (mut keeper, _) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    pollers(&sim, 2).await;
    let first = sim.state.publish(1, "finance", vec![json!({}), json!({})]);
    let (_, msgs) = collect_ids(&mut ws, &ids(&first)).await;
    let last_seq = msgs
        .iter()
        .filter(|m| m["type"] == "event")
        .map(|m| m["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    drop(ws);

    let mut missed = sim.state.publish(1, "finance", vec![json!({}), json!({})]);
    missed.extend(sim.state.publish(1, "staff", vec![json!({})]));
    // Once the keeper has them, the hub has them.
    collect_ids(&mut keeper, &ids(&missed)).await;

    let (mut back, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance", "staff"], "version": 1, "lastSeq": last_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], true, "{ack}");
    assert_eq!(
        ack["seq"], last_seq,
        "a resumed stream starts at its lastSeq"
    );
    let (got, replayed) = collect_ids(&mut back, &ids(&missed)).await;
    let mut position = last_seq;
    for m in &replayed {
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq >= position, "seq only grows: {position} then {m}");
        position = seq;
    }
    assert_eq!(ids(&got), ids(&missed));
    assert_eq!(got.len(), missed.len(), "no duplicates: {got:?}");
    assert!(
        !got.iter().any(|g| first.contains(g)),
        "nothing from before lastSeq"
    );
    // Live events follow the replay.
    let live = sim.state.publish(1, "staff", vec![json!({})]);
    let (got, _) = collect_ids(&mut back, &ids(&live)).await;
    assert_eq!(got, live);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn last_seq_from_an_earlier_run_is_not_resumed() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let a = sim
        .state
        .publish(1, "finance", vec![json!({}), json!({}), json!({})]);
    let (_, msgs) = collect_ids(&mut ws, &ids(&a)).await;
    let old_seq = msgs.iter().filter_map(|m| m["seq"].as_u64()).max().unwrap();
    drop(ws);
    sc.shutdown().await;

    // A new run of the sidecar (as after a restart, or another replica),
    // started on a later millisecond (positions derive from the start time).
    let stopped_at = realtime_edge::clock::unix_millis();
    eventually("a later millisecond", || async {
        realtime_edge::clock::unix_millis() > stopped_at
    })
    .await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let (mut ws, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": old_seq}),
    )
    .await;
    assert_eq!(ack["resumed"], false, "{ack}");
    assert!(
        ack["seq"].as_u64().unwrap() > old_seq,
        "positions of a new run start above any earlier run's"
    );
    // Nothing is replayed.
    assert!(
        drain_ids(&mut ws, Duration::from_millis(300))
            .await
            .is_empty()
    );
    // A far-future lastSeq is not resumed either.
    let (_, ack) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance"], "version": 1, "lastSeq": u64::MAX / 4}),
    )
    .await;
    assert_eq!(ack["resumed"], false);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_service_does_not_disturb_the_others_and_recovers() {
    use realtime_edge_sim::Fault;
    let sim = start_sim(Duration::from_secs(2)).await;
    let extra = format!(
        "upstream: {{base_url: \"{}\", poll_timeout_s: 2}}\n",
        sim.base_url()
    );
    let sc = start_sidecar(config(&sim.base_url(), &extra)).await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    pollers(&sim, 2).await;
    for fault in [
        Fault::Status(500),
        Fault::Garbage,
        Fault::Hang,
        Fault::Drop,
        Fault::Status(429),
    ] {
        sim.state.set_fault("finance", fault.clone());
        // Let the parked finance poll come back and hit the fault.
        sim.state.publish(1, "finance", vec![json!({})]);
        let mut saw_error = false;
        let staff = sim.state.publish(1, "staff", vec![json!({})]);
        let mut got_staff = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(saw_error && got_staff) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{fault:?}: error={saw_error} staff={got_staff}"
            );
            let m = next_json(&mut ws).await;
            if m["type"] == "error" {
                assert_eq!(m["service"], "finance");
                assert_eq!(m["code"], "UPSTREAM_ERROR");
                saw_error = true;
            }
            if m["type"] == "event" && m["service"] == "staff" {
                got_staff |= m["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["eventId"] == staff[0].as_str());
            }
        }
        sim.state.set_fault("finance", Fault::None);
        // Recovery: finance events flow again.
        let fin = sim.state.publish(1, "finance", vec![json!({})]);
        let (got, _) = collect_ids(&mut ws, &ids(&fin)).await;
        assert!(got.contains(&fin[0]));
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let (sim, sc) = rig(
        "stream: {max_queue_bytes: 65536, max_event_bytes: 16384, batch_max_bytes: 16384, batch_window_ms: 5, replay_bytes: 1048576}\n",
    )
    .await;
    // A raw socket with a tiny receive window that never reads.
    let (mut slow, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (mut healthy, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let blob = "x".repeat(1000);
    let mut last = Vec::new();
    for _ in 0..1000 {
        last = sim.state.publish(
            1,
            "finance",
            (0..20).map(|_| json!({"blob": blob})).collect(),
        );
        // The healthy client keeps up.
        let (_, _) = collect_ids(&mut healthy, &ids(&last)).await;
        if sidecar_metrics(&sc).await["activeConnections"] == 1 {
            break;
        }
    }
    assert_eq!(
        sidecar_metrics(&sc).await["activeConnections"],
        1,
        "the slow client was cut off"
    );
    let _ = last;
    // Memory is measured by the benchmark, not here: this binary runs
    // other tests at the same time.
    // When the slow client finally reads, the stream ends (1013 if the close frame got through).
    let code = close_code(&mut slow).await;
    assert!(code.is_none() || code == Some(1013), "{code:?}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn token_expiry_closes_with_4001() {
    let (sim, sc) = rig("").await;
    let short = realtime_edge::auth::mint_hs256(SECRET, "orgId", 1, 1);
    let mut ws = connect(sc.client_addr, &short).await;
    handshake(&mut ws, &hello(&["finance"])).await;
    assert_eq!(close_code(&mut ws).await, Some(4001));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_streams_with_1001() {
    let (sim, sc) = rig("").await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let stop = tokio::spawn(sc.shutdown());
    assert_eq!(close_code(&mut ws).await, Some(1001));
    stop.await.unwrap();
    sim.shutdown().await;
}

#[tokio::test]
async fn upstream_401_tries_another_connections_token() {
    let sim = start_sim(Duration::from_secs(1)).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let older = token(1);
    // A different exp makes a different token.
    let newer = realtime_edge::auth::mint_hs256(SECRET, "orgId", 1, 7200);
    assert_ne!(older, newer);
    let mut a = connect(sc.client_addr, &older).await;
    handshake(&mut a, &hello(&["finance"])).await;
    let mut b = connect(sc.client_addr, &newer).await;
    handshake(&mut b, &hello(&["finance"])).await;
    // The backend stops accepting the newest token: the poller moves to the other one.
    sim.state.revoke_token(&newer);
    eventually("a refusal happened", || async {
        sim.state.stats_json()["unauthorized"].as_u64().unwrap() >= 1
    })
    .await;
    let ev = sim.state.publish(1, "finance", vec![json!({})]);
    for ws in [&mut a, &mut b] {
        let (got, _) = collect_ids(ws, &ids(&ev)).await;
        assert!(got.contains(&ev[0]));
    }
    // With no token left the backend accepts, clients are told.
    sim.state.revoke_token(&older);
    sim.state.publish(1, "finance", vec![json!({})]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline);
        let m = next_json(&mut a).await;
        if m["type"] == "error" {
            assert_eq!(m["code"], "UPSTREAM_AUTH", "{m}");
            assert_eq!(m["service"], "finance");
            break;
        }
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn ws_stream_rejects_plain_get() {
    let (sim, sc) = rig("").await;
    let (status, _, body) = http(
        "GET",
        &format!("http://{}/v2/realtime/stream", sc.client_addr),
        Some(&token(1)),
        None,
    )
    .await;
    assert_eq!(status, 426, "{body}");
    // A ping before the handshake is answered and does not count as one.
    let mut ws = connect(sc.client_addr, &token(1)).await;
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], &[1]),
        other => panic!("expected a pong, got {other:?}"),
    }
    handshake(&mut ws, &hello(&["finance"])).await;
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_full_sidecar_closes_new_streams_with_1013() {
    let (sim, sc) = rig("stream: {max_connections: 2}\n").await;
    let (_a, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (_b, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let mut c = connect(sc.client_addr, &token(1)).await;
    assert_eq!(close_code(&mut c).await, Some(1013));
    // Those already connected are unaffected.
    pollers(&sim, 1).await;
    let ids = sim.state.publish(1, "finance", vec![json!({})]);
    let mut a = _a;
    let (got, _) = collect_ids(&mut a, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn bursts_are_batched_per_service_within_the_limits() {
    let (sim, sc) = rig("stream: {batch_max_events: 40}\n").await;
    let (mut ws, ack) = subscribe(sc.client_addr, 1, hello(&["finance", "staff"])).await;
    pollers(&sim, 2).await;
    let mut ids = sim
        .state
        .publish(1, "finance", (0..100).map(|i| json!({"i": i})).collect());
    ids.extend(
        sim.state
            .publish(1, "staff", (0..30).map(|i| json!({"i": i})).collect()),
    );
    let (got, msgs) = collect_ids(&mut ws, &ids.iter().cloned().collect()).await;
    assert_eq!(got.len(), ids.len(), "each event once");
    let mut last_seq = ack["seq"].as_u64().unwrap();
    let mut finance = Vec::new();
    for m in msgs.iter().filter(|m| m["type"] == "event") {
        let events = m["events"].as_array().unwrap();
        assert!(
            !events.is_empty() && events.len() <= 40,
            "{} events in one message",
            events.len()
        );
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "seq only grows");
        assert_eq!(
            seq - last_seq,
            events.len() as u64,
            "seq is the position of the message's last event"
        );
        last_seq = seq;
        let service = m["service"].as_str().unwrap();
        for e in events {
            // A batch holds one service's events only.
            assert_eq!(e["type"], format!("{service}.updated"));
            if service == "finance" {
                finance.push(e["eventId"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(finance, ids[..100].to_vec(), "order kept within a service");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_does_not_hold_requests_is_not_hammered() {
    let sim = start_sim(Duration::ZERO).await;
    let sc = start_sidecar(config(&sim.base_url(), "")).await;
    let (mut ws, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let requests = sim.state.total_requests();
    // Without the pause a poller would send thousands of requests here.
    assert!(requests <= 5, "{requests} requests in 1.5 s");
    // Events still flow.
    let ids = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut ws, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn an_oversized_or_broken_client_frame_ends_only_that_stream() {
    let (sim, sc) = rig("").await;
    let (mut good, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let (mut big, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    pollers(&sim, 1).await;
    // 200 KiB: beyond the 64 KiB a client may send in one message.
    let _ = big.send(Message::Text("x".repeat(200 * 1024).into())).await;
    let ended = loop {
        match tokio::time::timeout(WAIT, big.next())
            .await
            .expect("the stream must end")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
            Some(Ok(_)) => continue,
        }
    };
    assert!(ended);
    let ids = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut good, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids, "the other stream is unaffected");
    eventually("one stream left", || async {
        sidecar_metrics(&sc).await["activeConnections"] == 1
    })
    .await;
    sc.shutdown().await;
    sim.shutdown().await;
}
