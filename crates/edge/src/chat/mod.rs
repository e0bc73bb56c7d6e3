//! Collaboration chat (CONTRACT 8): `/v2/collaboration/chat/stream`.
//!
//! With `COLLAB_CHAT_NATIVE=false` (default) the sidecar hosts the rooms:
//! [`endpoint`] upgrades and identifies the user from the token,
//! [`session`] runs one connection, [`registry`] finds the (org, roomId)
//! room, [`room`] is the room's actor (presence, typing, rate limits,
//! fan-out), [`receipts`] and [`throttle`] its per-user state, and
//! [`store`] the backend's three HTTP endpoints that keep the messages.
//! With `true`, [`relay`] passes each connection through to the backend's
//! native chat stream.
#![warn(missing_docs)]

pub(crate) mod cluster;
pub(crate) mod endpoint;
pub mod protocol;
pub(crate) mod receipts;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod room;
#[cfg(test)]
mod room_tests;
pub(crate) mod session;
pub(crate) mod store;
pub(crate) mod throttle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use crate::config::Config;
use crate::flags::FlagStore;
use crate::metrics::Stats;

/// The chat stream's path, on the sidecar and on the backend.
pub const CHAT_PATH: &str = "/v2/collaboration/chat/stream";

/// What chat connections share.
pub(crate) struct ChatService {
    pub(crate) config: Arc<Config>,
    pub(crate) flags: Arc<FlagStore>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) rooms: Arc<registry::RoomRegistry>,
    pub(crate) store: Arc<store::BackendStore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    next_conn: AtomicU64,
}

impl ChatService {
    /// The chat service; with a cluster link, rooms span the replicas and
    /// the room bus task is spawned (it ends with `shutdown`).
    pub(crate) fn new(
        config: Arc<Config>,
        flags: Arc<FlagStore>,
        stats: Arc<Stats>,
        shutdown: watch::Receiver<bool>,
        cluster: Option<Arc<crate::cluster::ClusterLink>>,
    ) -> Arc<ChatService> {
        let store = Arc::new(store::BackendStore::new(&config));
        let bus =
            cluster.map(|link| cluster::ChatBus::new(link, config.chat.cluster_publish_queue));
        let rooms = registry::RoomRegistry::new(
            config.chat.clone(),
            store.clone(),
            shutdown.clone(),
            bus.as_ref().map(|(bus, _)| bus.clone()),
        );
        if let Some((bus, outgoing)) = bus {
            tokio::spawn(bus.run(Arc::downgrade(&rooms), outgoing, shutdown.clone()));
        }
        Arc::new(ChatService {
            config,
            flags,
            stats,
            rooms,
            store,
            shutdown,
            next_conn: AtomicU64::new(1),
        })
    }

    fn next_conn_id(&self) -> room::ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
