//! One hosted chat room as an actor: a task that owns the room's members,
//! presence, throttles and receipt slots, fed through a bounded inbox.
//!
//! Nothing here holds a lock across an await: the room pushes serialised
//! frames into each connection's byte-bounded [`SessionQueue`] (never
//! waiting), backend calls run as jobs in the room's own `JoinSet` (so a
//! slow backend never stalls typing or presence, and the jobs die with the
//! room), and timers (leave grace, receipt flushes) sit in one heap.
//!
//! A message is broadcast only after the backend saved it; a failed or slow
//! save is told to its sender alone (`SEND_FAILED`).
//!
//! In cluster mode the room also publishes what members elsewhere must see
//! on the room bus ([`super::cluster`]) and replays what the same room on
//! other replicas did; presence then spans the replicas: a user is in the
//! room while any replica has them, and `online`/`offline` are said when the
//! user first appears anywhere and when they are gone everywhere.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{ChatBus, Remote, Wire, WireMember};
use super::protocol::{self, ChatErrorCode, ClientMessage, MemberView, Status};
use super::receipts::{Next, Receipt, ReceiptSlot};
use super::registry::{RoomKey, RoomRegistry};
use super::store::{BackendStore, StoreError};
use super::throttle::{SendWindow, TypingThrottle};
use crate::config::ChatConfig;
use crate::hub::{Frame, SessionQueue};
use crate::metrics as m;

/// A chat connection's id, unique in the process.
pub type ConnId = u64;

/// A connection asking to join.
#[derive(Clone)]
pub struct Member {
    pub conn: ConnId,
    pub user_id: Arc<str>,
    pub user_name: Arc<str>,
    /// The connection's token: backend calls for this user use it.
    pub token: Arc<str>,
    pub queue: Arc<SessionQueue>,
}

/// The answer to a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// `chat.max_room_members` users are in the room.
    Full,
    /// The room was retiring; join the registry's new one.
    Retired,
}

/// What a room's inbox carries.
pub enum RoomMsg {
    Join {
        member: Member,
        reply: oneshot::Sender<JoinOutcome>,
    },
    Leave(ConnId),
    Client {
        conn: ConnId,
        msg: ClientMessage,
    },
    /// Cluster mode: what the same room did on another replica.
    Remote(Remote),
    /// Cluster mode: this replica left the membership; its users are gone.
    ReplicaGone(Arc<str>),
    /// Cluster mode: the room bus reconnected; say hello again.
    Rejoin,
}

/// A backend call finished.
enum JobDone {
    Saved {
        conn: ConnId,
        user_id: Arc<str>,
        user_name: Arc<str>,
        text: String,
        client_msg_id: String,
        result: Result<Map<String, Value>, StoreError>,
    },
    Receipt {
        user_id: Arc<str>,
        result: Result<(), StoreError>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The leave grace of this user ended.
    Offline(Arc<str>),
    /// This user's coalesced receipt may be stored.
    Receipt(Arc<str>),
}

struct Conn {
    user: Arc<str>,
    token: Arc<str>,
    queue: Arc<SessionQueue>,
}

struct User {
    name: Arc<str>,
    conns: usize,
    status: Status,
    /// Set while the user has no connection: when `offline` is due.
    offline_at: Option<Instant>,
    sends: SendWindow,
    typing: TypingThrottle,
}

pub(super) struct Room {
    key: RoomKey,
    id: u64,
    cfg: ChatConfig,
    store: Arc<BackendStore>,
    registry: Arc<RoomRegistry>,
    conns: HashMap<ConnId, Conn>,
    users: HashMap<Arc<str>, User>,
    receipts: HashMap<Arc<str>, ReceiptSlot>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    jobs: JoinSet<JobDone>,
    /// Cluster mode: the bus to the same room on the other replicas.
    bus: Option<Arc<ChatBus>>,
    /// Cluster mode: the members the other replicas have, by replica.
    remote: HashMap<Arc<str>, HashMap<Arc<str>, RemoteUser>>,
}

/// A member of the room on another replica.
#[derive(Debug, Clone)]
struct RemoteUser {
    name: Arc<str>,
    status: Status,
}

impl Room {
    pub(super) fn new(
        key: RoomKey,
        id: u64,
        cfg: ChatConfig,
        store: Arc<BackendStore>,
        registry: Arc<RoomRegistry>,
        bus: Option<Arc<ChatBus>>,
    ) -> Room {
        Room {
            key,
            id,
            cfg,
            store,
            registry,
            conns: HashMap::new(),
            users: HashMap::new(),
            receipts: HashMap::new(),
            timers: BinaryHeap::new(),
            jobs: JoinSet::new(),
            bus,
            remote: HashMap::new(),
        }
    }

    /// Serves the inbox until the room is empty (then retires it from the
    /// registry) or the sidecar shuts down.
    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<RoomMsg>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        ::metrics::gauge!(m::CHAT_ROOMS).increment(1.0);
        self.hello();
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                msg = inbox.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    if let Ok(done) = done {
                        self.job_done(done);
                    }
                }
                _ = sleep_until_opt(next_timer) => self.fire_timers(),
                _ = shutdown.changed() => break,
            }
            if self.is_idle() {
                self.registry.retire(&self.key, self.id);
                // No new sender can find this room now; joins already in the
                // inbox are told to go to the new room.
                inbox.close();
                while let Some(msg) = inbox.recv().await {
                    if let RoomMsg::Join { reply, .. } = msg {
                        let _ = reply.send(JoinOutcome::Retired);
                    }
                }
                break;
            }
        }
        ::metrics::gauge!(m::CHAT_ROOMS).decrement(1.0);
    }

    fn is_idle(&self) -> bool {
        self.conns.is_empty()
            && self.users.is_empty()
            && self.jobs.is_empty()
            && self.receipts.values().all(|r| !r.is_busy())
    }

    fn handle(&mut self, msg: RoomMsg) {
        match msg {
            RoomMsg::Join { member, reply } => {
                let conn = member.conn;
                let outcome = self.join(member);
                // A session that went away while joining never leaves.
                if reply.send(outcome).is_err() && outcome == JoinOutcome::Joined {
                    self.leave(conn);
                }
            }
            RoomMsg::Leave(conn) => self.leave(conn),
            RoomMsg::Remote(remote) => self.remote(remote),
            RoomMsg::ReplicaGone(replica) => self.replica_gone(&replica),
            RoomMsg::Rejoin => self.hello(),
            RoomMsg::Client { conn, msg } => {
                let Some(user_id) = self.conns.get(&conn).map(|c| c.user.clone()) else {
                    return;
                };
                match msg {
                    ClientMessage::Chat {
                        text,
                        client_msg_id,
                    } => self.chat(conn, user_id, text, client_msg_id),
                    ClientMessage::Typing => self.typing(conn, &user_id),
                    ClientMessage::Presence(status) => self.presence(&user_id, status),
                    ClientMessage::Ack(message_id) => self.ack(conn, user_id, message_id),
                }
            }
        }
    }

    fn join(&mut self, member: Member) -> JoinOutcome {
        // Members are connections: every tab costs the room a queue and a
        // share of each broadcast, so every tab counts against the cap.
        if self.conns.len() >= self.cfg.max_room_members {
            return JoinOutcome::Full;
        }
        let returning = match self.users.get_mut(&member.user_id) {
            Some(user) => {
                user.conns += 1;
                user.offline_at = None;
                true
            }
            None => {
                self.users.insert(
                    member.user_id.clone(),
                    User {
                        name: member.user_name.clone(),
                        conns: 1,
                        status: Status::Online,
                        offline_at: None,
                        sends: SendWindow::default(),
                        typing: TypingThrottle::default(),
                    },
                );
                false
            }
        };
        if !returning {
            // Someone the room already has through another replica is not new.
            if !self.is_remote(&member.user_id, None) {
                let frame = protocol::presence(&member.user_id, &member.user_name, Status::Online);
                self.broadcast(frame, None);
            }
            self.publish_presence(&member.user_id, &member.user_name, Status::Online);
        }
        self.conns.insert(
            member.conn,
            Conn {
                user: member.user_id.clone(),
                token: member.token.clone(),
                queue: member.queue.clone(),
            },
        );
        let mut members: Vec<MemberView<'_>> = self
            .users
            .iter()
            .map(|(id, u)| MemberView {
                user_id: id,
                user_name: &u.name,
                status: u.status,
            })
            .collect();
        // Members on other replicas, each user once.
        let mut listed: std::collections::HashSet<&str> = self.users.keys().map(|k| &**k).collect();
        for users in self.remote.values() {
            for (id, u) in users {
                if listed.insert(id) {
                    members.push(MemberView {
                        user_id: id,
                        user_name: &u.name,
                        status: u.status,
                    });
                }
            }
        }
        member
            .queue
            .push(Frame::control(protocol::presence_snapshot(&members)));
        JoinOutcome::Joined
    }

    fn leave(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(user) = self.users.get_mut(&c.user) else {
            return;
        };
        user.conns = user.conns.saturating_sub(1);
        if user.conns == 0 {
            let at = Instant::now() + self.cfg.leave_grace;
            user.offline_at = Some(at);
            self.timers.push(Reverse((at, Timer::Offline(c.user))));
        }
    }

    fn chat(&mut self, conn: ConnId, user_id: Arc<str>, text: String, client_msg_id: String) {
        let Some(token) = self.token_of(conn) else {
            return;
        };
        let Some(user) = self.users.get_mut(&user_id) else {
            return;
        };
        if !user
            .sends
            .try_send(Instant::now(), self.cfg.max_messages_per_s)
        {
            ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::RateLimited.as_str()).increment(1);
            let msg = format!(
                "more than {} messages per second; not sent",
                self.cfg.max_messages_per_s
            );
            self.tell(
                conn,
                protocol::error(ChatErrorCode::RateLimited, &msg, Some(&client_msg_id)),
            );
            return;
        }
        let user_name = user.name.clone();
        let store = self.store.clone();
        let room = self.key.room.clone();
        self.jobs.spawn(async move {
            let result = store
                .save_message(&token, &room, &text, &client_msg_id)
                .await;
            JobDone::Saved {
                conn,
                user_id,
                user_name,
                text,
                client_msg_id,
                result,
            }
        });
    }

    fn token_of(&self, conn: ConnId) -> Option<Arc<str>> {
        self.conns.get(&conn).map(|c| c.token.clone())
    }

    /// Typing goes to every connection but the one typing (a user's other
    /// tabs included: the client filters its own user if it wants to).
    fn typing(&mut self, conn: ConnId, user_id: &Arc<str>) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        if !user.typing.allow(Instant::now()) {
            return;
        }
        let frame = protocol::typing(user_id, &user.name);
        self.publish_frame(&frame);
        self.broadcast(frame, Some(conn));
    }

    fn presence(&mut self, user_id: &Arc<str>, status: Status) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        user.status = status;
        let name = user.name.clone();
        let frame = protocol::presence(user_id, &name, status);
        self.broadcast(frame, None);
        self.publish_presence(user_id, &name, status);
    }

    fn ack(&mut self, conn: ConnId, user_id: Arc<str>, message_id: Value) {
        let frame = protocol::receipt(&user_id, &message_id);
        self.publish_frame(&frame);
        self.broadcast(frame, None);
        let Some(token) = self.token_of(conn) else {
            return;
        };
        let slot = self.receipts.entry(user_id.clone()).or_default();
        let next = slot.ack(
            Receipt { message_id, token },
            Instant::now(),
            self.cfg.receipt_flush,
        );
        self.receipt_next(user_id, next);
    }

    /// Acts on what a user's receipt slot asks for.
    fn receipt_next(&mut self, user_id: Arc<str>, next: Next) {
        match next {
            Next::Store(r) => {
                let store = self.store.clone();
                let room = self.key.room.clone();
                self.jobs.spawn(async move {
                    let result = store.save_receipt(&r.token, &room, &r.message_id).await;
                    JobDone::Receipt { user_id, result }
                });
            }
            Next::WakeAt(at) => self.timers.push(Reverse((at, Timer::Receipt(user_id)))),
            Next::Wait => {}
        }
    }

    fn job_done(&mut self, done: JobDone) {
        match done {
            JobDone::Saved {
                conn,
                user_id,
                user_name,
                text,
                client_msg_id,
                result,
            } => match result {
                Ok(mut saved) => {
                    ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::Saved.as_str()).increment(1);
                    // The backend's saved message is what everyone sees;
                    // fields it left out come from what the sidecar knows.
                    saved.entry("userId").or_insert_with(|| json!(&*user_id));
                    saved
                        .entry("userName")
                        .or_insert_with(|| json!(&*user_name));
                    saved.entry("text").or_insert_with(|| json!(text));
                    saved
                        .entry("timestamp")
                        .or_insert_with(|| json!(crate::clock::now_rfc3339()));
                    let frame = protocol::chat(saved, &client_msg_id);
                    self.publish_frame(&frame);
                    self.broadcast(frame, None);
                }
                Err(e) => {
                    ::metrics::counter!(m::CHAT_MESSAGES, m::label::RESULT => m::ChatMessageResult::Failed.as_str()).increment(1);
                    tracing::info!(org = self.key.org, error = %e, "chat message not saved");
                    let msg = format!("message not saved: {e}");
                    self.tell(
                        conn,
                        protocol::error(ChatErrorCode::SendFailed, &msg, Some(&client_msg_id)),
                    );
                }
            },
            JobDone::Receipt { user_id, result } => {
                if let Err(e) = result {
                    tracing::info!(org = self.key.org, error = %e, "read receipt not stored");
                }
                let next = self
                    .receipts
                    .get_mut(&user_id)
                    .map(|slot| slot.stored(Instant::now(), self.cfg.receipt_flush));
                if let Some(next) = next {
                    self.receipt_next(user_id, next);
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Offline(user_id) => {
                    let due = self
                        .users
                        .get(&user_id)
                        .is_some_and(|u| u.conns == 0 && u.offline_at == Some(at));
                    if due && let Some(user) = self.users.remove(&user_id) {
                        // Still here through another replica: not offline.
                        if !self.is_remote(&user_id, None) {
                            let frame = protocol::presence(&user_id, &user.name, Status::Offline);
                            self.broadcast(frame, None);
                        }
                        self.publish_presence(&user_id, &user.name, Status::Offline);
                    }
                }
                Timer::Receipt(user_id) => {
                    let interval = self.cfg.receipt_flush;
                    let next = self
                        .receipts
                        .get_mut(&user_id)
                        .map(|slot| slot.due(now, interval));
                    if let Some(next) = next {
                        self.receipt_next(user_id, next);
                    }
                }
            }
        }
        self.receipts.retain(|_, slot| !slot.is_idle(now));
    }

    /// Cluster mode: whether another replica (but `except`) has this user.
    fn is_remote(&self, user_id: &str, except: Option<&str>) -> bool {
        self.remote
            .iter()
            .any(|(replica, users)| Some(&**replica) != except && users.contains_key(user_id))
    }

    /// Whether the room has this user anywhere but on replica `except`.
    fn is_member_elsewhere(&self, user_id: &str, except: &str) -> bool {
        self.users.contains_key(user_id) || self.is_remote(user_id, Some(except))
    }

    fn publish(&self, wire: Wire) {
        if let Some(bus) = &self.bus {
            bus.publish(&self.key, wire);
        }
    }

    fn publish_frame(&self, frame: &str) {
        if self.bus.is_some() {
            self.publish(Wire::Frame {
                frame: frame.to_string(),
            });
        }
    }

    fn publish_presence(&self, user_id: &str, user_name: &str, status: Status) {
        self.publish(Wire::Presence {
            user_id: user_id.to_string(),
            user_name: user_name.to_string(),
            status: status.as_str().to_string(),
        });
    }

    /// This replica's members, as the other replicas are told them.
    fn local_members(&self) -> Vec<WireMember> {
        self.users
            .iter()
            .map(|(id, u)| WireMember {
                user_id: id.to_string(),
                user_name: u.name.to_string(),
                status: u.status.as_str().to_string(),
            })
            .collect()
    }

    /// Tells the same room elsewhere that it lives here, with its members.
    fn hello(&self) {
        if self.bus.is_some() {
            self.publish(Wire::Hello {
                members: self.local_members(),
            });
        }
    }

    /// What the same room did on another replica.
    fn remote(&mut self, Remote { from, wire }: Remote) {
        match wire {
            Wire::Frame { frame } => self.broadcast(frame, None),
            Wire::Presence {
                user_id,
                user_name,
                status,
            } => self.remote_presence(&from, &user_id, &user_name, &status),
            Wire::Hello { members } => {
                for m in &members {
                    self.remote_presence(&from, &m.user_id, &m.user_name, &m.status);
                }
                let answer = Wire::Members {
                    to: from.to_string(),
                    members: self.local_members(),
                };
                self.publish(answer);
            }
            Wire::Members { to, members } => {
                if self.bus.as_ref().is_some_and(|b| b.replica() == to) {
                    for m in &members {
                        self.remote_presence(&from, &m.user_id, &m.user_name, &m.status);
                    }
                }
            }
        }
    }

    /// A user's presence on replica `from`: the room says `online` when the
    /// user is new to it, `offline` when gone everywhere, and every change
    /// of status of a user it knows.
    fn remote_presence(&mut self, from: &Arc<str>, user_id: &str, user_name: &str, status: &str) {
        let Some(status) = Status::from_wire(status) else {
            return;
        };
        let elsewhere = self.is_member_elsewhere(user_id, from);
        if status == Status::Offline {
            let removed = self
                .remote
                .get_mut(from)
                .and_then(|users| users.remove(user_id));
            if self.remote.get(from).is_some_and(|u| u.is_empty()) {
                self.remote.remove(from);
            }
            if removed.is_some() && !elsewhere {
                self.broadcast(
                    protocol::presence(user_id, user_name, Status::Offline),
                    None,
                );
            }
            return;
        }
        let previous = self.remote.entry(from.clone()).or_default().insert(
            Arc::from(user_id),
            RemoteUser {
                name: Arc::from(user_name),
                status,
            },
        );
        let changed = match previous {
            None => !elsewhere,
            Some(p) => p.status != status,
        };
        if changed {
            self.broadcast(protocol::presence(user_id, user_name, status), None);
        }
    }

    /// Replica `replica` left the cluster: its users are offline unless the
    /// room has them elsewhere.
    fn replica_gone(&mut self, replica: &str) {
        let Some(users) = self.remote.remove(replica) else {
            return;
        };
        for (user_id, u) in users {
            if !self.users.contains_key(&user_id) && !self.is_remote(&user_id, None) {
                self.broadcast(protocol::presence(&user_id, &u.name, Status::Offline), None);
            }
        }
    }

    /// Pushes one frame to every connection, except `except`.
    fn broadcast(&self, text: String, except: Option<ConnId>) {
        let frame = Frame::control(text);
        for (id, c) in &self.conns {
            if except == Some(*id) {
                continue;
            }
            c.queue.push(frame.clone());
        }
    }

    /// Pushes one frame to one connection.
    fn tell(&self, conn: ConnId, text: String) {
        if let Some(c) = self.conns.get(&conn) {
            c.queue.push(Frame::control(text));
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
