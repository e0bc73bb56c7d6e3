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
//!
//! This module is the actor: its state, the loop and the timers. Joining
//! and leaving (the leave grace) are `membership`'s; what members say is
//! `messages`'s; the same room on other replicas is `replicas`'.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cluster::{ChatBus, Remote};
use super::protocol::{self, ClientMessage, MemberView, Status};
use super::receipts::ReceiptSlot;
use super::registry::{RoomKey, RoomRegistry};
use super::store::{BackendStore, StoreError};
use super::throttle::{SendWindow, TypingThrottle};
use crate::config::ChatConfig;
use crate::hub::{Frame, SessionQueue};
use crate::metrics as m;

mod membership;
mod messages;
mod replicas;

/// A chat connection's id, unique in the process.
pub(crate) type ConnId = u64;

/// A connection asking to join.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) conn: ConnId,
    pub(crate) user_id: Arc<str>,
    pub(crate) user_name: Arc<str>,
    /// The connection's token: backend calls for this user use it.
    pub(crate) token: Arc<str>,
    pub(crate) queue: Arc<SessionQueue>,
}

/// The answer to a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    Joined,
    /// `chat.max_room_members` users are in the room.
    Full,
    /// The room was retiring; join the registry's new one.
    Retired,
}

/// What a room's inbox carries.
pub(crate) enum RoomMsg {
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
