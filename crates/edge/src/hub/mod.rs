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
pub mod replay;
mod switching;
#[cfg(test)]
mod switching_tests;
pub mod tokens;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

use crate::auth::OrgId;
use crate::config::Config;
use crate::flags::FlagStore;
use crate::metrics::Stats;
use crate::protocol::PropertyKey;
use crate::upstream::SourceSpawner;

pub use queue::{Frame, SessionQueue};

/// Capacity of a hub's inbox (joins, leaves, source batches).
const HUB_INBOX: usize = 1024;

/// One event as a source delivered it, with the fields the hub needs.
#[derive(Debug)]
pub struct IncomingEvent {
    pub raw: Box<RawValue>,
    pub id: Box<str>,
    pub org: Option<OrgId>,
    pub property: Option<PropertyKey>,
    /// The event's own timestamp (epoch ms), or its arrival when it has none.
    pub origin_ms: i64,
    /// Cleared by the hub for events a source caught up on after an absence.
    pub live: bool,
}

#[derive(Deserialize)]
struct EventMeta {
    #[serde(rename = "eventId")]
    event_id: Option<serde_json::Value>,
    #[serde(rename = "orgId")]
    org_id: Option<serde_json::Value>,
    #[serde(rename = "propertyId")]
    property_id: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
}

/// Why an upstream event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event has no eventId")]
    NoEventId,
}

impl IncomingEvent {
    /// Reads the fields the hub needs from an upstream event object.
    pub fn parse(raw: Box<RawValue>, arrival_ms: i64) -> Result<IncomingEvent, EventError> {
        let meta: EventMeta =
            serde_json::from_str(raw.get()).map_err(|_| EventError::NotAnObject)?;
        let id: Box<str> = match meta.event_id {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.into(),
            Some(serde_json::Value::Number(n)) => n.to_string().into(),
            _ => return Err(EventError::NoEventId),
        };
        let org = match meta.org_id {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let origin_ms = match meta.timestamp {
            Some(serde_json::Value::String(s)) => crate::clock::parse_rfc3339_millis(&s),
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            _ => None,
        }
        .unwrap_or(arrival_ms);
        Ok(IncomingEvent {
            raw,
            id,
            org,
            property: meta.property_id.as_ref().and_then(PropertyKey::from_json),
            origin_ms,
            live: true,
        })
    }
}

/// Identifies a running source within its hub.
pub type SourceId = u64;
/// Identifies a client connection.
pub type SessionId = u64;

/// What a source tells its hub about itself.
#[derive(Debug)]
pub enum SourceStatus {
    /// The source now covers every event from here on (poller: first answer
    /// or started from a known cursor; native link: ack received).
    Ready,
    /// The source failed; `service` is `None` for all its services.
    Failed {
        service: Option<u16>,
        auth: bool,
        message: String,
    },
    /// The native link lost its connection (it keeps retrying). Its
    /// coverage goes on if it resumes when it is back.
    Down,
    /// The native link connected without resuming (the first time, or the
    /// backend could not resume it): it covers only what is published from
    /// now on; what was published while it was down is not in it.
    Unresumed,
}

/// Messages into a hub.
pub enum HubMsg {
    Join(Box<JoinRequest>),
    /// A reader that is not a live session (a V1 facade) asks the window.
    Read(Box<ReadRequest>),
    Leave(SessionId),
    Events {
        source: SourceId,
        service: u16,
        events: Vec<IncomingEvent>,
        /// V1 poller: the cursor after this answer.
        cursor: Option<String>,
        /// Native link: the upstream position of the last event.
        native_seq: Option<u64>,
        /// V1 poller: when the request this answers was sent (switching
        /// waits for an answer to a request sent after the new source was
        /// ready). A poller reports every answer, even an empty one.
        requested_at: Option<tokio::time::Instant>,
    },
    Status {
        source: SourceId,
        status: SourceStatus,
    },
    /// From the org's cluster link (cluster mode); `link` tells a
    /// replaced link's late words from the current one's.
    Cluster {
        link: u64,
        update: crate::cluster::org::ClusterUpdate,
    },
}

/// A client connection asking to be served.
pub struct JoinRequest {
    pub session: SessionId,
    pub queue: Arc<SessionQueue>,
    /// Known service indexes, sorted and unique.
    pub services: Vec<u16>,
    pub unknown_services: Vec<String>,
    pub property: Option<PropertyKey>,
    pub last_seq: Option<u64>,
    pub token: Arc<str>,
    pub expires_at: Option<u64>,
    pub reply: oneshot::Sender<JoinReply>,
}

/// "Events of these services after position `after`, at most
/// `max_events` events and `max_bytes` bytes" (the first event always).
pub struct ReadRequest {
    /// Service indexes, sorted and unique.
    pub services: Vec<u16>,
    pub property: Option<PropertyKey>,
    pub after: u64,
    pub max_events: usize,
    pub max_bytes: usize,
    pub reply: oneshot::Sender<ReadReply>,
}

/// What a hub answered a [`ReadRequest`].
#[derive(Debug)]
pub struct ReadReply {
    pub events: Vec<Arc<replay::Stored>>,
    /// False when events after `after` already left the window (or `after`
    /// is not a position of this hub): the reader should start over.
    pub complete: bool,
    /// The hub's newest position.
    pub head: u64,
    /// Changes whenever the head moves: a reader waits on it for the next
    /// event instead of polling.
    pub heads: watch::Receiver<u64>,
}

/// What the hub answered (the ack is already queued).
#[derive(Debug, Clone)]
pub struct JoinReply {
    pub mode: crate::metrics::ServingMode,
    pub resumed: bool,
}

/// Everything a hub needs from the process.
pub struct HubContext {
    pub config: Arc<Config>,
    pub flags: Arc<FlagStore>,
    pub stats: Arc<Stats>,
    pub upstream: Arc<dyn SourceSpawner>,
    pub shutdown: watch::Receiver<bool>,
    /// The replica's cluster link (`cluster.redis_url` set).
    pub cluster: Option<Arc<crate::cluster::ClusterLink>>,
}

/// Finds or creates the hub of an org.
pub struct HubRegistry {
    ctx: Arc<HubContext>,
    hubs: Mutex<HashMap<OrgId, mpsc::Sender<HubMsg>>>,
    next_session: AtomicU64,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the sidecar is shutting down")]
    ShuttingDown,
}

impl HubRegistry {
    pub fn new(ctx: HubContext) -> Arc<HubRegistry> {
        Arc::new(HubRegistry {
            ctx: Arc::new(ctx),
            hubs: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    pub fn context(&self) -> &Arc<HubContext> {
        &self.ctx
    }

    pub fn next_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn active_orgs(&self) -> usize {
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
    pub async fn read(
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
    pub async fn join(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn parses_event_fields() {
        let e = IncomingEvent::parse(
            raw(r#"{"eventId":"e1","orgId":"7","propertyId":12,"timestamp":"2023-11-14T22:13:20.000Z","x":[1]}"#),
            5,
        )
        .unwrap();
        assert_eq!(&*e.id, "e1");
        assert_eq!(e.org, Some(7));
        assert_eq!(e.property, Some(PropertyKey("12".into())));
        assert_eq!(e.origin_ms, 1_700_000_000_000);
        let e = IncomingEvent::parse(raw(r#"{"eventId":5,"timestamp":"bad"}"#), 9).unwrap();
        assert_eq!(e.org, None);
        assert_eq!(e.origin_ms, 9);
        assert_eq!(
            IncomingEvent::parse(raw(r#"{"orgId":1}"#), 0).unwrap_err(),
            EventError::NoEventId
        );
        assert_eq!(
            IncomingEvent::parse(raw("[1]"), 0).unwrap_err(),
            EventError::NotAnObject
        );
    }
}
