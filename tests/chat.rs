//! Chat rooms (CONTRACT 8) end to end: real sidecar and simulated backend on
//! loopback; each test waits on conditions, never on sleeps.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CHAT: &str = "/v2/collaboration/chat/stream";

/// A token for `user` of `org`, optionally with a display name.
fn user_token(org: u64, user: &str, name: Option<&str>) -> String {
    let exp = realtime_edge::clock::unix_millis() / 1000 + 3600;
    let mut claims = json!({"orgId": org, "sub": user, "exp": exp});
    if let Some(n) = name {
        claims["name"] = json!(n);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn open(addr: SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{addr}{CHAT}").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Joins `room` as `user` of `org`; returns the socket, the history and the
/// presence snapshot.
async fn join(addr: SocketAddr, org: u64, user: &str, room: &str) -> (Ws, Value, Value) {
    let mut ws = open(addr, &user_token(org, user, Some(&format!("Name {user}")))).await;
    send(&mut ws, json!({"roomId": room})).await;
    let history = next_json(&mut ws).await;
    assert_eq!(history["type"], "history", "{history}");
    let snapshot = next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "presence", "{snapshot}");
    (ws, history, snapshot)
}

fn member_ids(snapshot: &Value) -> Vec<String> {
    let mut ids: Vec<String> = snapshot["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn join_gets_history_then_presence_and_others_see_online() {
    let (sim, sc) = rig("").await;
    let (mut a, history, snap) = join(sc.client_addr, 1, "alice", "room-1").await;
    assert_eq!(history["messages"], json!([]));
    assert_eq!(member_ids(&snap), ["alice"]);
    assert_eq!(snap["members"][0]["userName"], "Name alice");
    assert_eq!(snap["members"][0]["status"], "online");

    let (_b, _, snap) = join(sc.client_addr, 1, "bob", "room-1").await;
    assert_eq!(member_ids(&snap), ["alice", "bob"]);
    let online = next_json(&mut a).await;
    assert_eq!(
        (
            &online["type"],
            &online["userId"],
            &online["userName"],
            &online["status"]
        ),
        (
            &json!("presence"),
            &json!("bob"),
            &json!("Name bob"),
            &json!("online")
        ),
        "{online}"
    );
    assert_eq!(load(&sim.chat.counters.history), 2);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn chat_is_stored_with_idempotency_key_then_broadcast_to_all() {
    let (sim, sc) = rig("").await;
    let (mut a, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    next_json(&mut a).await; // bob online
    send(
        &mut a,
        json!({"type": "chat", "text": "hello", "clientMsgId": "c-1"}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let m = next_json(ws).await;
        assert_eq!(m["type"], "chat", "{m}");
        assert_eq!(m["text"], "hello");
        assert_eq!(m["userId"], "alice");
        assert_eq!(m["userName"], "Name alice");
        assert_eq!(m["clientMsgId"], "c-1");
        assert!(m["id"].is_string() && m["timestamp"].is_string(), "{m}");
    }
    // The same clientMsgId again is the same saved message (Idempotency-Key).
    send(
        &mut a,
        json!({"type": "chat", "text": "hello", "clientMsgId": "c-1"}),
    )
    .await;
    let again = next_json(&mut b).await;
    assert_eq!(again["clientMsgId"], "c-1");
    assert_eq!(sim.chat.messages(1, "r").len(), 1);
    assert_eq!(load(&sim.chat.counters.messages), 2);
    // A later joiner gets it in the history.
    let (_c, history, _) = join(sc.client_addr, 1, "carol", "r").await;
    assert_eq!(history["messages"][0]["text"], "hello", "{history}");
    let (_, _, metrics) = http(
        "GET",
        &format!("http://{}/metrics", sc.admin_addr),
        None,
        None,
    )
    .await;
    for name in [
        "chat_messages_total{result=\"saved\"}",
        "chat_backend_requests_total{endpoint=\"messages\",status=\"2xx\"}",
        "chat_rooms",
        "chat_active_connections{mode=\"hosted\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    sc.shutdown().await;
    sim.shutdown().await;
}

/// Sends a chat that the backend will not save; the sender gets
/// SEND_FAILED, the other member nothing (the next thing it sees is the
/// sender's presence change that follows).
async fn assert_send_fails(a: &mut Ws, b: &mut Ws, client_msg_id: &str) {
    send(
        a,
        json!({"type": "chat", "text": "lost?", "clientMsgId": client_msg_id}),
    )
    .await;
    let err = next_json(a).await;
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "SEND_FAILED", "{err}");
    assert_eq!(err["clientMsgId"], client_msg_id);
    send(a, json!({"type": "presence", "status": "busy"})).await;
    let seen = next_json(b).await;
    assert_eq!(
        (&seen["type"], &seen["status"]),
        (&json!("presence"), &json!("busy")),
        "{seen}"
    );
    assert_eq!(next_json(a).await["status"], "busy");
}

#[tokio::test]
async fn backend_failure_or_slowness_tells_the_sender_only() {
    let (sim, sc) = rig("chat: {backend_timeout_ms: 300}\n").await;
    let (mut a, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    next_json(&mut a).await;
    let fault = |v: Value| {
        let url = format!("{}/_sim/chat/fault", sim.base_url());
        async move {
            let (s, _, body) = http(
                "POST",
                &url,
                None,
                Some(("application/json", v.to_string())),
            )
            .await;
            assert_eq!(s, 200, "{body}");
        }
    };
    fault(json!({"endpoint": "messages", "kind": "status", "status": 500})).await;
    assert_send_fails(&mut a, &mut b, "c-500").await;
    fault(json!({"endpoint": "messages", "kind": "garbage"})).await;
    assert_send_fails(&mut a, &mut b, "c-garbage").await;
    fault(json!({"endpoint": "messages", "kind": "slow", "ms": 3000})).await;
    assert_send_fails(&mut a, &mut b, "c-slow").await;
    assert_eq!(sim.chat.messages(1, "r").len(), 0);

    // Retrying with the same clientMsgId once the backend is well stores it once.
    fault(json!({"endpoint": "messages", "kind": "none"})).await;
    send(
        &mut a,
        json!({"type": "chat", "text": "lost?", "clientMsgId": "c-500"}),
    )
    .await;
    let m = next_json(&mut b).await;
    assert_eq!(
        (&m["type"], &m["clientMsgId"]),
        (&json!("chat"), &json!("c-500"))
    );
    assert_eq!(sim.chat.messages(1, "r").len(), 1);
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn typing_reaches_the_others_only_throttled_and_never_the_backend() {
    let (sim, sc) = rig("").await;
    let (mut a, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    next_json(&mut a).await;
    let before = sim.state.total_requests()
        + load(&sim.chat.counters.messages)
        + load(&sim.chat.counters.receipts);
    let started = Instant::now();
    for _ in 0..5 {
        send(&mut a, json!({"type": "typing"})).await;
    }
    let elapsed = started.elapsed().as_secs();
    send(&mut a, json!({"type": "presence", "status": "away"})).await;
    // Alice sees no typing of her own: the next thing is her presence.
    assert_eq!(next_json(&mut a).await["status"], "away");
    let mut typings = 0;
    loop {
        let m = next_json(&mut b).await;
        if m["type"] == "typing" {
            assert_eq!(
                (&m["userId"], &m["userName"]),
                (&json!("alice"), &json!("Name alice"))
            );
            typings += 1;
        } else {
            assert_eq!(m["status"], "away", "{m}");
            break;
        }
    }
    assert!(
        typings >= 1 && typings <= 1 + elapsed,
        "{typings} typing indicators"
    );
    let after = sim.state.total_requests()
        + load(&sim.chat.counters.messages)
        + load(&sim.chat.counters.receipts);
    assert_eq!(before, after, "typing reached the backend");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn acks_are_broadcast_and_receipts_coalesced_to_the_latest() {
    let (sim, sc) = rig("").await;
    let (mut a, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    next_json(&mut a).await;
    let started = Instant::now();
    for i in 1..=50 {
        send(&mut b, json!({"type": "ack", "messageId": format!("m{i}")})).await;
    }
    let elapsed = started.elapsed().as_secs();
    for i in 1..=50 {
        let r = next_json(&mut a).await;
        assert_eq!(
            (&r["type"], &r["userId"], &r["messageId"]),
            (&json!("receipt"), &json!("bob"), &json!(format!("m{i}")))
        );
    }
    eventually("the latest receipt stored", || async {
        sim.chat.receipt(1, "r", "bob") == Some(json!("m50"))
    })
    .await;
    let posts = load(&sim.chat.counters.receipts);
    // One at once, then at most one per second, the last carrying m50.
    assert!(posts >= 1 && posts <= 2 + elapsed, "{posts} receipt posts");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn two_tabs_stay_online_until_the_last_leaves_plus_grace() {
    let (sim, sc) = rig("chat: {leave_grace_s: 1}\n").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    let (mut tab1, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    assert_eq!(next_json(&mut b).await["status"], "online");
    let (mut tab2, _, snap) = join(sc.client_addr, 1, "alice", "r").await;
    assert_eq!(member_ids(&snap), ["alice", "bob"]);
    tab1.close(None).await.unwrap();
    // The second tab keeps alice online: bob sees her next status, not offline.
    send(&mut tab2, json!({"type": "presence", "status": "busy"})).await;
    let m = next_json(&mut b).await;
    assert_eq!(
        (&m["userId"], &m["status"]),
        (&json!("alice"), &json!("busy")),
        "{m}"
    );
    tab2.close(None).await.unwrap();
    let m = next_json(&mut b).await;
    assert_eq!(
        (&m["userId"], &m["status"]),
        (&json!("alice"), &json!("offline")),
        "{m}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn rooms_are_per_org() {
    let (sim, sc) = rig("").await;
    let (mut a1, _, _) = join(sc.client_addr, 1, "alice", "shared").await;
    let (mut a2, _, snap) = join(sc.client_addr, 2, "mallory", "shared").await;
    assert_eq!(member_ids(&snap), ["mallory"]);
    send(
        &mut a1,
        json!({"type": "chat", "text": "org 1 only", "clientMsgId": "x"}),
    )
    .await;
    assert_eq!(next_json(&mut a1).await["text"], "org 1 only");
    send(&mut a2, json!({"type": "presence", "status": "away"})).await;
    // Org 2 saw nothing of org 1: its next message is its own presence.
    let m = next_json(&mut a2).await;
    assert_eq!(
        (&m["userId"], &m["status"]),
        (&json!("mallory"), &json!("away")),
        "{m}"
    );
    let (_c, history, _) = join(sc.client_addr, 2, "eve", "shared").await;
    assert_eq!(history["messages"], json!([]));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn bounds_and_bad_input() {
    let (sim, sc) = rig("chat: {max_room_members: 2, max_messages_per_s: 2}\n").await;
    let addr = sc.client_addr;

    // Handshakes: bad room ids get BAD_HANDSHAKE and 1008.
    for hs in [
        json!({"roomId": "no spaces"}),
        json!({"roomId": ""}),
        json!({"room": "x"}),
        json!({"roomId": "x".repeat(129)}),
    ] {
        let mut ws = open(addr, &user_token(1, "u", None)).await;
        send(&mut ws, hs.clone()).await;
        let m = next_json(&mut ws).await;
        assert_eq!(m["code"], "BAD_HANDSHAKE", "{hs}: {m}");
        assert_eq!(close_code(&mut ws).await, Some(1008));
    }

    let (mut a, _, snap) = join(addr, 1, "alice", "r").await;
    // No name claim: shown as the user id.
    let mut ws = open(addr, &user_token(1, "bob", None)).await;
    send(&mut ws, json!({"roomId": "r"})).await;
    next_json(&mut ws).await;
    let snap2 = next_json(&mut ws).await;
    assert!(
        snap2["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["userName"] == "bob"),
        "{snap2}"
    );
    assert_eq!(member_ids(&snap), ["alice"]);
    next_json(&mut a).await;

    // A third member is refused, be it another user or another tab.
    let mut full = open(addr, &user_token(1, "carol", None)).await;
    send(&mut full, json!({"roomId": "r"})).await;
    assert_eq!(next_json(&mut full).await["code"], "ROOM_FULL");
    assert_eq!(close_code(&mut full).await, Some(1008));
    let mut tab = open(addr, &user_token(1, "alice", None)).await;
    send(&mut tab, json!({"roomId": "r"})).await;
    assert_eq!(next_json(&mut tab).await["code"], "ROOM_FULL");
    assert_eq!(close_code(&mut tab).await, Some(1008));

    // Unknown types, bad JSON, bad text: BAD_MESSAGE, the connection stays.
    for bad in [
        json!({"type": "dance"}),
        json!({"type": "chat", "text": "", "clientMsgId": "e"}),
        json!({"type": "chat", "text": "x".repeat(4097), "clientMsgId": "e"}),
        json!({"type": "presence", "status": "asleep"}),
    ] {
        send(&mut a, bad.clone()).await;
        let m = next_json(&mut a).await;
        assert_eq!(m["code"], "BAD_MESSAGE", "{bad}: {m}");
    }
    a.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next_json(&mut a).await["code"], "BAD_MESSAGE");

    // Rate limit: beyond 2 per second, RATE_LIMITED and not sent.
    let started = Instant::now();
    for i in 0..4 {
        send(
            &mut a,
            json!({"type": "chat", "text": "spam", "clientMsgId": format!("s{i}")}),
        )
        .await;
    }
    let elapsed = started.elapsed().as_secs();
    let (mut saved, mut limited) = (0, 0);
    while saved + limited < 4 {
        let m = next_json(&mut a).await;
        match (m["type"].as_str(), m["code"].as_str()) {
            (Some("chat"), _) => saved += 1,
            (Some("error"), Some("RATE_LIMITED")) => limited += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    if elapsed == 0 {
        assert_eq!((saved, limited), (2, 2));
    }
    assert_eq!(sim.chat.messages(1, "r").len(), saved);

    // No token, or a token without the user claim: 401 before the upgrade.
    let url = format!("http://{addr}{CHAT}");
    let (status, _, body) = http("GET", &url, None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = http(
        "GET",
        &url,
        Some(&{
            let exp = realtime_edge::clock::unix_millis() / 1000 + 60;
            jsonwebtoken::encode(
                &Default::default(),
                &json!({"orgId": 1, "exp": exp}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        }),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("sub"), "{body}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn history_failure_is_reported_and_the_room_still_works() {
    let (sim, sc) = rig("").await;
    sim.chat
        .set_fault("history", realtime_edge_sim::Fault::Status(500))
        .unwrap();
    let mut ws = open(sc.client_addr, &user_token(1, "alice", None)).await;
    send(&mut ws, json!({"roomId": "r"})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["code"], "HISTORY_FAILED", "{m}");
    assert_eq!(next_json(&mut ws).await["type"], "presence");
    send(
        &mut ws,
        json!({"type": "chat", "text": "still", "clientMsgId": "1"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["text"], "still");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn native_mode_relays_to_the_backend_chat_stream() {
    let (sim, sc) = rig("").await;
    set_flags(&sc, "COLLAB_CHAT_NATIVE=true").await;
    // access_token in the query, as a browser sends it.
    let url = format!(
        "ws://{}{CHAT}?access_token={}",
        sc.client_addr,
        user_token(1, "alice", Some("Alice"))
    );
    let (mut a, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    send(&mut a, json!({"roomId": "n"})).await;
    assert_eq!(next_json(&mut a).await["type"], "history");
    let mut b = open(sc.client_addr, &user_token(1, "bob", None)).await;
    send(&mut b, json!({"roomId": "n"})).await;
    assert_eq!(next_json(&mut b).await["type"], "history");
    eventually("two native chat connections", || async {
        load(&sim.chat.counters.native_connections) == 2
    })
    .await;
    send(
        &mut a,
        json!({"type": "chat", "text": "via backend", "clientMsgId": "n1"}),
    )
    .await;
    for ws in [&mut a, &mut b] {
        let m = next_json(ws).await;
        assert_eq!(
            (&m["text"], &m["userId"], &m["userName"]),
            (&json!("via backend"), &json!("alice"), &json!("Alice")),
            "{m}"
        );
    }
    // Hosted mode made no store calls: the backend's stream did the work.
    assert_eq!(load(&sim.chat.counters.history), 0);
    // Frames larger than the client limit are refused on the way in.
    a.send(Message::Text("x".repeat(70 * 1024).into()))
        .await
        .unwrap();
    let end = a.next().await;
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn native_mode_without_a_backend_closes_with_an_error() {
    let sim = start_sim(std::time::Duration::from_secs(25)).await;
    // A port nothing listens on.
    let dead = realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let sc = start_sidecar(config(
        &sim.base_url(),
        &format!("upstream: {{base_url: \"{dead_url}\"}}\n"),
    ))
    .await;
    set_flags(&sc, "COLLAB_CHAT_NATIVE=true").await;
    let mut ws = open(sc.client_addr, &user_token(1, "alice", None)).await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["code"], "UPSTREAM_ERROR", "{m}");
    assert_eq!(close_code(&mut ws).await, Some(1011));
    sc.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_gives_up_its_place() {
    let (sim, sc) = rig("stream: {ping_interval_s: 1}\nchat: {leave_grace_s: 0}\n").await;
    let (mut b, _, _) = join(sc.client_addr, 1, "bob", "r").await;
    // Alice joins, then never reads again: her client answers no pings.
    let (_silent, _, _) = join(sc.client_addr, 1, "alice", "r").await;
    assert_eq!(next_json(&mut b).await["status"], "online");
    // Bob keeps reading (and so answering pings) until alice is dropped.
    let m = next_json(&mut b).await;
    assert_eq!(
        (&m["userId"], &m["status"]),
        (&json!("alice"), &json!("offline")),
        "{m}"
    );
    sc.shutdown().await;
    sim.shutdown().await;
}
