//! Liveness and robustness of client streams (CONTRACT 2.2, issue 16
//! items 6, 10 and 14): WebSocket pings and the client timeout, tokens that
//! never expire, hostile frames before the handshake.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A client that answers nothing (no Pong, no message) is dropped after
/// `client_timeout_s` and counted; a reading client (whose library answers
/// the Ping frames) stays.
#[tokio::test]
async fn a_silent_client_is_dropped_and_a_reading_one_stays() {
    let (sim, sc) =
        rig("stream: {ping_interval_s: 1, client_timeout_s: 2, hub_linger_ms: 100}\n").await;
    let (mut alive, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    // Never polled again: its Pongs are never sent.
    let (_silent, _) = subscribe(sc.client_addr, 1, hello(&["finance"])).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut saw_ws_ping = false;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent client was not dropped"
        );
        match tokio::time::timeout(WAIT, alive.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => saw_ws_ping = true,
            Some(Ok(_)) => {}
            other => panic!("the reading client lost its stream: {other:?}"),
        }
        if sidecar_metrics(&sc).await["activeConnections"] == 1 {
            break;
        }
    }
    assert!(saw_ws_ping, "WebSocket Ping frames are sent");
    pollers(&sim, 1).await;
    let ids = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, _) = collect_ids(&mut alive, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids);
    let prom = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await
    .2;
    assert!(
        prom.lines()
            .any(|l| l.starts_with("streaming_errors{kind=\"timeout\"}") && !l.ends_with(" 0")),
        "{prom}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Issue 16 item 6: a valid token whose `exp` is absurdly far away is
/// served normally (no overflow, no panic, no leaked membership).
#[tokio::test]
async fn a_token_with_a_huge_exp_is_served() {
    let (sim, sc) = rig("").await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"orgId": 1, "exp": u64::MAX / 2, "sub": "u"}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let mut ws = connect(sc.client_addr, &token).await;
    handshake(&mut ws, &hello(&["finance"])).await;
    pollers(&sim, 1).await;
    let ids = sim.state.publish(
        1,
        "finance",
        vec![
            json!({"timestamp": i64::MIN}),
            json!({"timestamp": i64::MAX}),
        ],
    );
    let (got, _) = collect_ids(&mut ws, &ids.iter().cloned().collect()).await;
    assert_eq!(
        got, ids,
        "numeric timestamps at the extremes do not break delivery"
    );
    drop(ws);
    eventually("the stream left its hub", || async {
        sidecar_metrics(&sc).await["activeConnections"] == 0
    })
    .await;
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Issue 16 item 14: a frame over the size limit before the handshake is
/// answered with close 1009; a handshake listing too many services is
/// refused with one BAD_HANDSHAKE; unknown names get one error.
#[tokio::test]
async fn hostile_handshakes_get_clear_answers() {
    let (sim, sc) = rig("").await;
    let mut ws = connect(sc.client_addr, &token(1)).await;
    let _ = ws.send(Message::Text("x".repeat(100 * 1024).into())).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));

    let mut ws = connect(sc.client_addr, &token(1)).await;
    let names: Vec<String> = (0..500).map(|i| format!("nope{i}")).collect();
    ws.send(Message::Text(
        json!({"services": names, "version": 1}).to_string().into(),
    ))
    .await
    .unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["code"], "BAD_HANDSHAKE", "{err}");
    assert_eq!(close_code(&mut ws).await, Some(1008));

    let (mut ws, _) = subscribe(
        sc.client_addr,
        1,
        json!({"services": ["finance", "nope1", "nope2"], "version": 1}),
    )
    .await;
    let err = next_non_ping(&mut ws).await;
    assert_eq!(err["code"], "UNKNOWN_SERVICE", "{err}");
    let text = err["message"].as_str().unwrap();
    assert!(text.contains("nope1") && text.contains("nope2"), "{err}");
    pollers(&sim, 1).await;
    let ids = sim.state.publish(1, "finance", vec![json!({})]);
    let (got, msgs) = collect_ids(&mut ws, &ids.iter().cloned().collect()).await;
    assert_eq!(got, ids);
    assert!(
        msgs.iter().all(|m| m["type"] != "error"),
        "one error only: {msgs:?}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}
