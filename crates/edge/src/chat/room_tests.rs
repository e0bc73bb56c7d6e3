//! The room actor's timing on tokio's paused clock: leave grace, returning
//! users, typing throttle, retirement. No backend is involved (these
//! clauses never call it).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::protocol::ClientMessage;
use super::registry::{JoinError, RoomKey, RoomRegistry};
use super::room::{Member, RoomMsg};
use super::store::BackendStore;
use crate::config::{Config, EnvSecrets};
use crate::hub::SessionQueue;
use crate::hub::queue::Outgoing;

fn registry(max_members: usize) -> (Arc<RoomRegistry>, watch::Sender<bool>) {
    let mut cfg = Config::defaults(&EnvSecrets::default());
    cfg.chat.leave_grace = Duration::from_secs(5);
    cfg.chat.max_room_members = max_members;
    let (tx, rx) = watch::channel(false);
    let store = Arc::new(BackendStore::new(&cfg));
    (RoomRegistry::new(cfg.chat, store, rx, None), tx)
}

fn key(org: u64) -> RoomKey {
    RoomKey {
        org,
        room: "r".into(),
    }
}

fn member(conn: u64, user: &str) -> Member {
    Member {
        conn,
        user_id: user.into(),
        user_name: user.into(),
        token: "t".into(),
        queue: SessionQueue::new(1 << 20),
    }
}

/// Lets the room run until it waits again (the paused clock advances only then).
async fn after(d: Duration) {
    tokio::time::sleep(d).await;
}

fn drain(q: &SessionQueue) -> Vec<Value> {
    let mut out = Vec::new();
    q.take(&mut out).unwrap();
    out.iter()
        .map(|item| match item {
            Outgoing::Frame(f) => serde_json::from_str(f.text.as_str()).unwrap(),
            Outgoing::Replay(_) => panic!("a room never queues a stream replay"),
        })
        .collect()
}

fn statuses(frames: &[Value], user: &str) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "presence" && f["userId"] == user)
        .map(|f| f["status"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn join(reg: &Arc<RoomRegistry>, m: &Member) -> mpsc::Sender<RoomMsg> {
    reg.join(&key(1), m.clone()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn offline_only_after_the_last_connection_and_the_grace() {
    let (reg, _stop) = registry(10);
    let bob = member(1, "bob");
    let tab1 = member(2, "alice");
    let tab2 = member(3, "alice");
    let inbox = join(&reg, &bob).await;
    join(&reg, &tab1).await;
    join(&reg, &tab2).await;
    assert_eq!(statuses(&drain(&bob.queue), "alice"), ["online"]);

    inbox.send(RoomMsg::Leave(2)).await.unwrap();
    after(Duration::from_secs(30)).await;
    assert!(drain(&bob.queue).is_empty(), "one tab left, alice stays");

    inbox.send(RoomMsg::Leave(3)).await.unwrap();
    after(Duration::from_millis(4900)).await;
    assert!(drain(&bob.queue).is_empty(), "still within the grace");
    after(Duration::from_millis(200)).await;
    assert_eq!(statuses(&drain(&bob.queue), "alice"), ["offline"]);
}

#[tokio::test(start_paused = true)]
async fn coming_back_within_the_grace_is_never_offline() {
    let (reg, _stop) = registry(10);
    let bob = member(1, "bob");
    let alice = member(2, "alice");
    let inbox = join(&reg, &bob).await;
    join(&reg, &alice).await;
    drain(&bob.queue);
    inbox.send(RoomMsg::Leave(2)).await.unwrap();
    after(Duration::from_secs(4)).await;
    let back = member(3, "alice");
    join(&reg, &back).await;
    after(Duration::from_secs(60)).await;
    assert!(
        drain(&bob.queue).is_empty(),
        "neither offline nor a second online"
    );
    let snapshot = drain(&back.queue);
    assert_eq!(snapshot[0]["members"].as_array().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn typing_at_most_once_per_second_and_not_to_the_typing_connection() {
    let (reg, _stop) = registry(10);
    let bob = member(1, "bob");
    let alice = member(2, "alice");
    let alice2 = member(3, "alice");
    let inbox = join(&reg, &bob).await;
    join(&reg, &alice).await;
    join(&reg, &alice2).await;
    drain(&bob.queue);
    drain(&alice.queue);
    drain(&alice2.queue);
    let typing = |conn| RoomMsg::Client {
        conn,
        msg: ClientMessage::Typing,
    };
    inbox.send(typing(2)).await.unwrap();
    after(Duration::from_millis(500)).await;
    inbox.send(typing(3)).await.unwrap();
    after(Duration::from_millis(499)).await;
    inbox.send(typing(2)).await.unwrap();
    after(Duration::from_millis(1)).await;
    let count = |q: &SessionQueue| drain(q).iter().filter(|f| f["type"] == "typing").count();
    assert_eq!(count(&bob.queue), 1);
    inbox.send(typing(2)).await.unwrap();
    after(Duration::from_millis(1)).await;
    assert_eq!(count(&bob.queue), 1, "one second after the first");
    // Never to the connection typing (conn 2 sent both that went out);
    // alice's other tab saw them like anyone else.
    assert_eq!(count(&alice.queue), 0);
    assert_eq!(count(&alice2.queue), 2);
}

#[tokio::test(start_paused = true)]
async fn full_rooms_refuse_new_users_and_empty_rooms_retire() {
    let (reg, _stop) = registry(1);
    let alice = member(1, "alice");
    let inbox = join(&reg, &alice).await;
    assert_eq!(
        reg.join(&key(1), member(2, "bob")).await.unwrap_err(),
        JoinError::Full
    );
    // The same room id in another org is another room.
    reg.join(&key(2), member(3, "bob")).await.unwrap();
    // Every tab is a member: alice's second one is refused too.
    assert_eq!(
        reg.join(&key(1), member(4, "alice")).await.unwrap_err(),
        JoinError::Full
    );
    assert_eq!(reg.len(), 2);
    inbox.send(RoomMsg::Leave(1)).await.unwrap();
    after(Duration::from_secs(4)).await;
    assert_eq!(reg.len(), 2, "kept through the grace");
    after(Duration::from_secs(2)).await;
    assert_eq!(reg.len(), 1, "org 1's room retired");
    // Joining again starts a fresh room.
    let again = member(5, "carol");
    join(&reg, &again).await;
    assert_eq!(
        drain(&again.queue)[0]["members"].as_array().unwrap().len(),
        1
    );
}
