//! The per-org event hub and the registry that finds or creates it.
//!
//! ```text
//! client ── session ──┐
//! client ── session ──┼── OrgHub ── per service: V1 poller | native link
//! client ── session ──┘     └── seq, replay window, recent eventIds, batcher
//! ```
//!
//! Sources push `(service, events)` into the hub's channel; the hub assigns
//! positions, de-duplicates, batches, serialises once per view and pushes
//! the bytes into the sessions' byte-bounded queues without waiting. A flag
//! flip swaps sources of a hub; it never touches a socket.

mod dedup;
mod org;
pub mod queue;
pub(crate) mod replay;
mod switching;
#[cfg(test)]
mod switching_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::OrgId;
use crate::cluster::org::LinkUpdate;
use crate::config::Config;
use crate::flags::FlagStore;
use crate::metrics::Stats;
use crate::protocol::PropertyKey;
use crate::upstream::{IncomingEvent, SourceId, SourceReport, SourceSpawner, SourceStatus};

/// A session's id; the token pool the sources borrow from keys by it.
pub(crate) use crate::upstream::SessionId;
pub(crate) use queue::{Frame, SessionQueue};

/// Capacity of a hub's inbox (joins, leaves, source batches).
const HUB_INBOX: usize = 1024;

/// Messages into a hub. A source's [`SourceReport`]s arrive as `Events`
/// and `Status` (see the `From` below).
pub(crate) enum HubMsg {
    Join(Box<JoinRequest>),
    /// A reader that is not a live session (a V1 facade) asks the window.
    Read(Box<ReadRequest>),
    Leave(SessionId),
    /// What a source reports: events, or a change of its state.
    Source(SourceReport),
    /// From the org's cluster link (cluster mode); `link` tells a
    /// replaced link's late words from the current one's.
    Cluster {
        link: u64,
        update: crate::cluster::org::ClusterUpdate,
    },
}

impl From<SourceReport> for HubMsg {
    fn from(report: SourceReport) -> HubMsg {
        HubMsg::Source(report)
    }
}

impl From<LinkUpdate> for HubMsg {
    fn from(LinkUpdate { link, update }: LinkUpdate) -> HubMsg {
        HubMsg::Cluster { link, update }
    }
}

/// A client connection asking to be served.
pub(crate) struct JoinRequest {
    pub(crate) session: SessionId,
    pub(crate) queue: Arc<SessionQueue>,
    /// Known service indexes, sorted and unique.
    pub(crate) services: Vec<u16>,
    pub(crate) unknown_services: Vec<String>,
    pub(crate) property: Option<PropertyKey>,
    pub(crate) last_seq: Option<u64>,
    pub(crate) token: Arc<str>,
    pub(crate) expires_at: Option<u64>,
    pub(crate) reply: oneshot::Sender<JoinReply>,
}

/// "Events of these services after position `after`, at most
/// `max_events` events and `max_bytes` bytes" (the first event always).
pub(crate) struct ReadRequest {
    /// Service indexes, sorted and unique.
    pub(crate) services: Vec<u16>,
    pub(crate) property: Option<PropertyKey>,
    pub(crate) after: u64,
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) reply: oneshot::Sender<ReadReply>,
}

/// What a hub answered a [`ReadRequest`].
#[derive(Debug)]
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the window read API has no production caller: the facade joins as a session"
    )
)]
pub(crate) struct ReadReply {
    pub(crate) events: Vec<Arc<replay::Stored>>,
    /// False when events after `after` already left the window (or `after`
    /// is not a position of this hub): the reader should start over.
    pub(crate) complete: bool,
    /// The hub's newest position.
    pub(crate) head: u64,
    /// Changes whenever the head moves: a reader waits on it for the next
    /// event instead of polling.
    pub(crate) heads: watch::Receiver<u64>,
}

/// What the hub answered (the ack is already queued).
#[derive(Debug, Clone)]
pub(crate) struct JoinReply {
    pub(crate) mode: crate::metrics::ServingMode,
    pub(crate) resumed: bool,
}

/// Everything a hub needs from the process.
pub(crate) struct HubContext {
    pub(crate) config: Arc<Config>,
    pub(crate) flags: Arc<FlagStore>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) upstream: Arc<dyn SourceSpawner<HubMsg>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The replica's cluster link (`cluster.redis_url` set).
    pub(crate) cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

/// Finds or creates the hub of an org.
pub(crate) struct HubRegistry {
    ctx: Arc<HubContext>,
    hubs: Mutex<HashMap<OrgId, mpsc::Sender<HubMsg>>>,
    next_session: AtomicU64,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

impl HubRegistry {
    pub(crate) fn new(ctx: HubContext) -> Arc<HubRegistry> {
        Arc::new(HubRegistry {
            ctx: Arc::new(ctx),
            hubs: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    pub(crate) fn context(&self) -> &Arc<HubContext> {
        &self.ctx
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn active_orgs(&self) -> usize {
        self.hubs.lock().map(|h| h.len()).unwrap_or(0)
    }

    fn hub_sender(self: &Arc<Self>, org: OrgId) -> mpsc::Sender<HubMsg> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = hubs.get(&org)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(HUB_INBOX);
        hubs.insert(org, tx.clone());
        self.count_orgs(hubs.len());
        tokio::spawn(org::OrgHub::new(org, self.clone(), tx.clone(), rx).run());
        tx
    }

    /// Reads an org's replay window (creating its hub when there is none;
    /// a reader alone starts no source: the facade joins for that).
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the window read API has no production caller: the facade joins as a session"
        )
    )]
    pub(crate) async fn read(
        self: &Arc<Self>,
        org: OrgId,
        mut req: ReadRequest,
    ) -> Result<ReadReply, JoinError> {
        let (tx, rx) = oneshot::channel();
        req.reply = tx;
        let hub = self.hub_sender(org);
        hub.send(HubMsg::Read(Box::new(req)))
            .await
            .map_err(|_| JoinError::ShuttingDown)?;
        rx.await.map_err(|_| JoinError::ShuttingDown)
    }

    /// Hands a connection to its org's hub; returns the hub's inbox for the leave.
    pub(crate) async fn join(
        self: &Arc<Self>,
        org: OrgId,
        mut req: Box<JoinRequest>,
        reply: oneshot::Receiver<JoinReply>,
    ) -> Result<(mpsc::Sender<HubMsg>, JoinReply), JoinError> {
        let mut reply = reply;
        // A hub that is retiring closes its inbox; then a fresh one is made.
        for _ in 0..3 {
            if *self.ctx.shutdown.borrow() {
                return Err(JoinError::ShuttingDown);
            }
            let tx = self.hub_sender(org);
            match tx.send(HubMsg::Join(req)).await {
                Ok(()) => {
                    return match reply.await {
                        Ok(r) => Ok((tx, r)),
                        Err(_) => Err(JoinError::ShuttingDown),
                    };
                }
                Err(mpsc::error::SendError(HubMsg::Join(r))) => {
                    req = r;
                    let (rtx, rrx) = oneshot::channel();
                    req.reply = rtx;
                    reply = rrx;
                }
                Err(_) => return Err(JoinError::ShuttingDown),
            }
        }
        Err(JoinError::ShuttingDown)
    }

    /// Removes a hub that retires, unless a newer hub took its place or a
    /// message is still waiting for it. Returns whether it may exit.
    fn retire(
        &self,
        org: OrgId,
        inbox: &mpsc::Receiver<HubMsg>,
        own: &mpsc::Sender<HubMsg>,
    ) -> bool {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        if !inbox.is_empty() {
            return false;
        }
        self.remove_locked(&mut hubs, org, own);
        true
    }

    /// Removes a hub that stops (shutdown).
    fn forget(&self, org: OrgId, own: &mpsc::Sender<HubMsg>) {
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(&mut hubs, org, own);
    }

    fn remove_locked(
        &self,
        hubs: &mut HashMap<OrgId, mpsc::Sender<HubMsg>>,
        org: OrgId,
        own: &mpsc::Sender<HubMsg>,
    ) {
        if hubs.get(&org).is_some_and(|tx| tx.same_channel(own)) {
            hubs.remove(&org);
        }
        self.count_orgs(hubs.len());
    }

    fn count_orgs(&self, n: usize) {
        self.ctx
            .stats
            .active_orgs
            .store(n as u64, Ordering::Relaxed);
        ::metrics::gauge!(crate::metrics::ACTIVE_ORGS).set(n as f64);
    }
}
