//! The hosted rooms of this sidecar, keyed by (org, roomId): room `R` of
//! org `o` is a different room from `R` of any other org, so nothing in one
//! org's room is ever seen by another.
//!
//! The map is only touched for a moment under its mutex (never across an
//! await). A room that became idle removes itself with [`RoomRegistry::retire`]
//! and answers the joins still in its inbox with `Retired`, which sends
//! them back here to create the next room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use super::cluster::ChatBus;
use super::room::{JoinOutcome, Member, Room, RoomMsg};
use super::store::BackendStore;
use crate::auth::OrgId;
use crate::config::ChatConfig;

/// A room's identity: the org from the token and the roomId from the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RoomKey {
    pub(crate) org: OrgId,
    pub(crate) room: Arc<str>,
}

struct Entry {
    id: u64,
    inbox: mpsc::Sender<RoomMsg>,
}

/// Why a join did not put the connection in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("the room is full")]
    Full,
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

pub(crate) struct RoomRegistry {
    rooms: Mutex<HashMap<RoomKey, Entry>>,
    next_id: AtomicU64,
    cfg: ChatConfig,
    store: Arc<BackendStore>,
    shutdown: watch::Receiver<bool>,
    /// Cluster mode: the bus to the same rooms on the other replicas.
    bus: Option<Arc<ChatBus>>,
}

impl RoomRegistry {
    pub(crate) fn new(
        cfg: ChatConfig,
        store: Arc<BackendStore>,
        shutdown: watch::Receiver<bool>,
        bus: Option<Arc<ChatBus>>,
    ) -> Arc<RoomRegistry> {
        Arc::new(RoomRegistry {
            rooms: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            cfg,
            store,
            shutdown,
            bus,
        })
    }

    /// Hands `msg` to the live room `key`, never waiting; `false` when the
    /// room's inbox is full. No room here: nothing to do (`true`).
    pub(super) fn send_to(&self, key: &RoomKey, msg: RoomMsg) -> bool {
        let inbox = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.get(key).map(|e| e.inbox.clone())
        };
        match inbox {
            Some(inbox) => !matches!(inbox.try_send(msg), Err(mpsc::error::TrySendError::Full(_))),
            None => true,
        }
    }

    /// Hands a message made by `msg` to every live room, never waiting.
    pub(super) fn send_all(&self, msg: impl Fn() -> RoomMsg) {
        let inboxes: Vec<mpsc::Sender<RoomMsg>> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.values().map(|e| e.inbox.clone()).collect()
        };
        for inbox in inboxes {
            if inbox.try_send(msg()).is_err() {
                ::metrics::counter!(crate::metrics::CHAT_CLUSTER_DROPPED, "reason" => "room_inbox_full")
                    .increment(1);
            }
        }
    }

    /// Puts `member` in the room `key`, creating the room when needed;
    /// returns the room's inbox.
    pub(crate) async fn join(
        self: &Arc<Self>,
        key: &RoomKey,
        member: Member,
    ) -> Result<mpsc::Sender<RoomMsg>, JoinError> {
        // A room retires only when idle, so a join that met a retiring room
        // finds a fresh one on the next try; the bound is a safety net.
        for _ in 0..8 {
            if *self.shutdown.borrow() {
                return Err(JoinError::ShuttingDown);
            }
            let (id, inbox) = self.room(key);
            let (reply_tx, reply_rx) = oneshot::channel();
            let sent = inbox
                .send(RoomMsg::Join {
                    member: member.clone(),
                    reply: reply_tx,
                })
                .await;
            let outcome = match sent {
                Ok(()) => reply_rx.await.unwrap_or(JoinOutcome::Retired),
                Err(_) => JoinOutcome::Retired,
            };
            match outcome {
                JoinOutcome::Joined => return Ok(inbox),
                JoinOutcome::Full => return Err(JoinError::Full),
                JoinOutcome::Retired => {
                    self.retire(key, id);
                }
            }
        }
        Err(JoinError::ShuttingDown)
    }

    /// The live room for `key`, started when there is none.
    fn room(self: &Arc<Self>, key: &RoomKey) -> (u64, mpsc::Sender<RoomMsg>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = rooms.get(key) {
            return (e.id, e.inbox.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.cfg.room_inbox);
        rooms.insert(
            key.clone(),
            Entry {
                id,
                inbox: tx.clone(),
            },
        );
        drop(rooms);
        let room = Room::new(
            key.clone(),
            id,
            self.cfg.clone(),
            self.store.clone(),
            self.clone(),
            self.bus.clone(),
        );
        tokio::spawn(room.run(rx, self.shutdown.clone()));
        (id, tx)
    }

    /// Removes room `id` of `key`, never a newer room of the same key.
    pub(super) fn retire(&self, key: &RoomKey, id: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(key).is_some_and(|e| e.id == id) {
            rooms.remove(key);
        }
    }

    /// Rooms alive.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}
