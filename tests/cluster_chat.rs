//! Chat rooms spanning replicas (CONTRACT 8 + 9): members of one room on two
//! replicas see one room — messages, typing, receipts and presence — and
//! rooms stay per org.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const CHAT: &str = "/v2/collaboration/chat/stream";

fn cluster_extra(redis: &RedisServer, name: &str) -> String {
    format!(
        "cluster: {{redis_url: \"{}\", name: \"{name}\", lease_ms: 600, redis_timeout_ms: 150}}\nchat: {{leave_grace_s: 1}}\n",
        redis.url()
    )
}

fn user_token(org: u64, user: &str) -> String {
    let exp = realtime_edge::clock::unix_millis() / 1000 + 3600;
    let claims = json!({"orgId": org, "sub": user, "name": format!("Name {user}"), "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Joins `room` as `user` of `org`; returns the socket and the presence snapshot.
async fn join(addr: SocketAddr, org: u64, user: &str, room: &str) -> (Ws, Value) {
    let mut req = format!("ws://{addr}{CHAT}").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", user_token(org, user)).parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    send(&mut ws, json!({"roomId": room})).await;
    assert_eq!(next_json(&mut ws).await["type"], "history");
    let snapshot = next_json(&mut ws).await;
    assert_eq!(snapshot["type"], "presence", "{snapshot}");
    (ws, snapshot)
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

/// The next message, which must be `user`'s presence with `status`.
async fn expect_presence(ws: &mut Ws, user: &str, status: &str) {
    let m = next_json(ws).await;
    assert_eq!(
        (&m["type"], &m["userId"], &m["status"]),
        (&json!("presence"), &json!(user), &json!(status)),
        "{m}"
    );
}

fn members(sc: &realtime_edge::Sidecar) -> usize {
    sc.cluster.as_ref().unwrap().members().borrow().len()
}

/// Waits until both replicas listen on the room bus: a probe published on
/// a room channel reaches two subscribers.
async fn wait_bus(redis: &RedisServer, name: &str) {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    eventually("both replicas on the room bus", || {
        let mut conn = conn.clone();
        async move {
            let receivers: i64 = ::redis::cmd("PUBLISH")
                .arg(format!("{name}:chat:0:probe"))
                .arg("probe")
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            receivers >= 2
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_room_across_two_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(Duration::from_secs(25)).await;
    let a = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc1"))).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc1"))).await;
    wait_bus(&redis, "cc1").await;

    // alice on replica A, bob on replica B, one room.
    let (mut alice, snap) = join(a.client_addr, 1, "alice", "r").await;
    assert_eq!(member_ids(&snap), ["alice"]);
    let (mut bob, snap) = join(b.client_addr, 1, "bob", "r").await;
    if member_ids(&snap) == ["bob"] {
        // B's room learns A's members from A's answer to its hello.
        expect_presence(&mut bob, "alice", "online").await;
    } else {
        assert_eq!(member_ids(&snap), ["alice", "bob"]);
    }
    expect_presence(&mut alice, "bob", "online").await;

    // A message saved through A reaches both, once each.
    send(
        &mut alice,
        json!({"type": "chat", "text": "hello", "clientMsgId": "c-1"}),
    )
    .await;
    let mut message_id = Value::Null;
    for ws in [&mut alice, &mut bob] {
        let m = next_json(ws).await;
        assert_eq!(
            (&m["type"], &m["text"], &m["userId"], &m["clientMsgId"]),
            (
                &json!("chat"),
                &json!("hello"),
                &json!("alice"),
                &json!("c-1")
            ),
            "{m}"
        );
        message_id = m["id"].clone();
    }
    assert_eq!(sim.chat.messages(1, "r").len(), 1, "saved once");

    // Typing through B reaches alice on A; a receipt through A reaches bob.
    send(&mut bob, json!({"type": "typing"})).await;
    let m = next_json(&mut alice).await;
    assert_eq!(
        (&m["type"], &m["userId"]),
        (&json!("typing"), &json!("bob")),
        "{m}"
    );
    send(&mut alice, json!({"type": "ack", "messageId": message_id})).await;
    for ws in [&mut alice, &mut bob] {
        let m = next_json(ws).await;
        assert_eq!(
            (&m["type"], &m["userId"], &m["messageId"]),
            (&json!("receipt"), &json!("alice"), &message_id),
            "{m}"
        );
    }

    // Another org's room of the same name on B is another room.
    let (mut mallory, snap) = join(b.client_addr, 2, "mallory", "r").await;
    assert_eq!(member_ids(&snap), ["mallory"]);

    // carol with a tab on each replica is one member: online once, and not
    // offline while one tab remains.
    let (carol_a, _) = join(a.client_addr, 1, "carol", "r").await;
    expect_presence(&mut alice, "carol", "online").await;
    expect_presence(&mut bob, "carol", "online").await;
    let (mut carol_b, snap) = join(b.client_addr, 1, "carol", "r").await;
    assert_eq!(member_ids(&snap), ["alice", "bob", "carol"]);
    drop(carol_a);
    send(&mut carol_b, json!({"type": "presence", "status": "busy"})).await;
    // The next thing alice and bob see is carol busy, not carol offline.
    expect_presence(&mut bob, "carol", "busy").await;
    expect_presence(&mut alice, "carol", "busy").await;

    // bob leaves B: after the leave grace alice on A sees him offline.
    send(&mut bob, json!({"type": "presence", "status": "away"})).await;
    expect_presence(&mut alice, "bob", "away").await;
    drop(bob);
    expect_presence(&mut alice, "bob", "offline").await;

    // Org 2 saw nothing of org 1's room: its next message is its own.
    send(&mut mallory, json!({"type": "presence", "status": "away"})).await;
    expect_presence(&mut mallory, "mallory", "away").await;
    drop(carol_b);
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leaves_takes_its_members_offline() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(Duration::from_secs(25)).await;
    let a = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc2"))).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc2"))).await;
    wait_bus(&redis, "cc2").await;
    // A replica's departure is noticed as a change of the membership, so A
    // must have seen B arrive first.
    eventually("A sees B as a member", || async { members(&a) == 2 }).await;
    let (mut alice, _) = join(a.client_addr, 1, "alice", "r").await;
    let (_bob, _) = join(b.client_addr, 1, "bob", "r").await;
    expect_presence(&mut alice, "bob", "online").await;
    // B stops: it leaves the membership, and bob is offline in A's room
    // without waiting for a leave grace on B.
    b.shutdown().await;
    expect_presence(&mut alice, "bob", "offline").await;
    a.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_carry_on_alone_without_redis_and_converge_when_it_is_back() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_sim(Duration::from_secs(25)).await;
    let a = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc3"))).await;
    let b = start_sidecar(config(&sim.base_url(), &cluster_extra(&redis, "cc3"))).await;
    wait_bus(&redis, "cc3").await;
    let (mut alice, _) = join(a.client_addr, 1, "alice", "r").await;
    let (mut bob, snap) = join(b.client_addr, 1, "bob", "r").await;
    if member_ids(&snap) == ["bob"] {
        expect_presence(&mut bob, "alice", "online").await;
    }
    expect_presence(&mut alice, "bob", "online").await;

    redis.kill();
    let up = |sc: &realtime_edge::Sidecar| *sc.cluster.as_ref().unwrap().up().borrow();
    eventually("Redis seen down", || async { !up(&a) && !up(&b) }).await;
    // Each replica's room still works for its own members.
    send(
        &mut bob,
        json!({"type": "chat", "text": "alone", "clientMsgId": "c-2"}),
    )
    .await;
    let m = next_json(&mut bob).await;
    assert_eq!(
        (&m["type"], &m["text"]),
        (&json!("chat"), &json!("alone")),
        "{m}"
    );
    // carol joins on B while A cannot hear of it.
    let (_carol, _) = join(b.client_addr, 1, "carol", "r").await;
    expect_presence(&mut bob, "carol", "online").await;

    // Redis is back (empty): the rooms say hello again and A learns of carol.
    redis.restart();
    wait_bus(&redis, "cc3").await;
    loop {
        let m = next_json(&mut alice).await;
        // What bob said while Redis was away may still arrive: the
        // replica's publish queue keeps it until Redis is back.
        if m["type"] == "chat" && m["text"] == "alone" {
            continue;
        }
        assert_eq!(m["type"], "presence", "{m}");
        // Membership may flap while both replicas re-register: bob may be
        // seen gone and back; carol must end up online.
        if m["userId"] == "carol" {
            assert_eq!(m["status"], "online", "{m}");
            break;
        }
    }
    // And messages cross again.
    send(
        &mut bob,
        json!({"type": "chat", "text": "together", "clientMsgId": "c-3"}),
    )
    .await;
    loop {
        let m = next_json(&mut alice).await;
        if m["type"] == "chat" {
            assert_eq!(m["text"], "together", "{m}");
            break;
        }
        assert_eq!(m["type"], "presence", "{m}");
    }
    a.shutdown().await;
    b.shutdown().await;
    sim.shutdown().await;
}
