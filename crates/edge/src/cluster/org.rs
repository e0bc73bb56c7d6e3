//! The link between one org's hub and the cluster, alive while this
//! replica has local demand for the org: it keeps the demand and the lease
//! (see `ownership`), appends what the hub accepts while this replica owns
//! the org (see `stream`), runs the org's reader (see `reader`), and tells
//! the hub how to serve: from the shared stream, or on its own while Redis
//! is unavailable (degraded mode), and whether to run the sources.
//!
//! ```text
//!            Redis up, stream loaded: Joined ─────────────┐
//!  Local ◄──── Redis down, an append or a read fails ──── Shared ──(lease)──► Owner / OwnedElsewhere
//! ```
//!
//! Dropping the [`OrgLink`] ends the task, which releases the lease (if
//! still held) and the demand, so another replica can take over at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use super::ClusterLink;
use super::stream::{Head, Outgoing, SourcePositions, StreamEvent};
use crate::auth::OrgId;
use crate::config::Config;

mod agent;

use agent::Agent;

/// What the org's link tells its hub.
#[derive(Debug)]
pub enum ClusterUpdate {
    /// The shared stream is read from here on: its generation and head,
    /// and its newest events (oldest first), the org's replay window.
    Joined {
        head: Head,
        window: Vec<StreamEvent>,
    },
    /// Events read from the stream, oldest first.
    Events(Vec<StreamEvent>),
    /// This replica owns the org now: run its sources from these positions
    /// (those stored with the last append, when any).
    Owner { stored: SourcePositions },
    /// This replica does not own the org (any more): stop its sources now.
    NotOwner,
    /// Redis is unavailable or too slow: serve the org's clients with local
    /// sources and positions until the next `Joined`.
    Local,
    /// Events accepted while owning that could not be appended because
    /// Redis failed (they follow a `Local`): deliver them locally.
    Unappended(Vec<Outgoing>),
}

/// An update as the hub receives it: tagged with the id of the link that
/// sent it, so a replaced link's late words are told from the current
/// one's. The hub's inbox message type `M` takes these
/// (`M: From<LinkUpdate>`), so this module does not depend on the hub.
#[derive(Debug)]
pub struct LinkUpdate {
    /// [`OrgLink::id`] of the sending link.
    pub link: u64,
    /// What it says.
    pub update: ClusterUpdate,
}

/// Accepted events and the source positions reached with them.
#[derive(Debug)]
pub struct AppendBatch {
    pub events: Vec<Outgoing>,
    pub positions: SourcePositions,
}

/// The hub's handle on its org's link; dropping it ends the link.
pub struct OrgLink {
    id: u64,
    appends: mpsc::Sender<AppendBatch>,
    floor: watch::Sender<u64>,
}

/// The append queue is full (Redis does not keep up).
#[derive(Debug, thiserror::Error)]
#[error("the org's append queue is full")]
pub struct QueueFull(pub AppendBatch);

impl OrgLink {
    /// Starts the link of `org`; updates go to `hub`.
    pub fn start<M: From<LinkUpdate> + Send + 'static>(
        link: Arc<ClusterLink>,
        org: OrgId,
        config: &Config,
        hub: mpsc::Sender<M>,
    ) -> OrgLink {
        let (appends, rx) = mpsc::channel(config.cluster.append_queue.max(1));
        let (floor, floor_rx) = watch::channel(0);
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let agent = Agent::new(id, link, org, config, hub, floor_rx);
        tokio::spawn(agent.run(rx));
        OrgLink { id, appends, floor }
    }

    /// Tells this link's updates from those of a link it replaced.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues accepted events for their append; never waits.
    pub fn append(&self, batch: AppendBatch) -> Result<(), QueueFull> {
        self.appends.try_send(batch).map_err(|e| match e {
            mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                QueueFull(b)
            }
        })
    }

    /// The newest position the hub handed out on its own: a rejoin raises
    /// the org's shared positions above it.
    pub fn set_floor(&self, seq: u64) {
        self.floor.send_replace(seq);
    }
}
