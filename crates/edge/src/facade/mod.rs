//! The legacy V1 facade (CONTRACT 3.4): old clients' long-polls answered
//! from the org's hub instead of one backend request per client poll.
//!
//! ```text
//! GET {v1_path}?since=<facade cursor> ──► classify ──► forward unchanged (not ours)
//!                                             │
//!                                             ▼
//!                          join the org hub as a one-service member
//!                          (replay after the cursor, else live events)
//!                                             │
//!             first event message, or hold ends ──► {"events": [...], "cursor": "<new>"}
//! ```
//!
//! A held request is a hub member like a stream, so the org's shared
//! sources (one poller per service, or the native link) feed it; it costs
//! its small queue and no task beyond hyper's connection task. The hub's
//! own bounds shape each answer: an event message carries at most
//! `stream.batch_max_events` events and `stream.batch_max_bytes`, and the
//! answer is exactly one such message, whose position becomes the cursor.
#![warn(missing_docs)]

mod answer;
mod classify;
pub(crate) mod cursor;
mod forward;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::auth::{Identity, Verifier};
use crate::config::Config;
use crate::flags::FlagStore;
use crate::http_server::{Body, json_error};
use crate::hub::queue::{Outgoing, QueueClosed};
use crate::hub::replay::Stored;
use crate::hub::{HubMsg, HubRegistry, JoinRequest, SessionId, SessionQueue};
use crate::metrics::{self as m, Stats};

use answer::{AnswerEvents, HubMessage, V1Answer};
use classify::Decision;
pub(crate) use cursor::{Cursor, CursorKey};
pub(crate) use forward::ForwardReason;

/// The facade of one sidecar.
pub(crate) struct Facade {
    config: Arc<Config>,
    registry: Arc<HubRegistry>,
    verifier: Arc<Verifier>,
    flags: Arc<FlagStore>,
    key: CursorKey,
    /// V1 path → service index.
    paths: HashMap<String, u16>,
    held: Arc<Semaphore>,
}

impl Facade {
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Arc<HubRegistry>,
        verifier: Arc<Verifier>,
        flags: Arc<FlagStore>,
        key: CursorKey,
    ) -> Facade {
        let paths = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.v1_path.clone(), i as u16))
            .collect();
        let held = Arc::new(Semaphore::new(config.legacy.facade_max_held));
        m::register_facade_zeroes(ForwardReason::ALL.iter().map(|reason| reason.as_str()));
        Facade {
            config,
            registry,
            verifier,
            flags,
            key,
            paths,
            held,
        }
    }

    /// The service whose V1 endpoint a request addresses, if any.
    /// The V1 paths the facade may answer (GET only).
    pub(crate) fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.keys().map(String::as_str)
    }

    pub(crate) fn service_for<B>(&self, req: &Request<B>) -> Option<u16> {
        if req.method() != Method::GET {
            return None;
        }
        self.paths.get(req.uri().path()).copied()
    }

    /// Answers a V1 request from the hub, or hands it back (possibly
    /// without its cursor parameter) to be forwarded to the backend.
    pub(crate) async fn handle(
        &self,
        mut req: Request<Incoming>,
        service: u16,
    ) -> Result<Response<Body>, Request<Incoming>> {
        match self.classify(&req, service) {
            Decision::Forward {
                reason,
                strip_cursor,
            } => {
                if let Some(reason) = reason {
                    self.count_forward(reason);
                }
                if strip_cursor {
                    self.strip_cursor(&mut req);
                }
                Err(req)
            }
            Decision::Serve {
                identity,
                token,
                cursor,
            } => {
                let Ok(permit) = self.held.clone().try_acquire_owned() else {
                    self.registry
                        .context()
                        .stats
                        .count_error(m::ErrorKind::Overload);
                    return Ok(json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many held V1 requests on this sidecar; retry shortly",
                    ));
                };
                match self.serve(identity, token, service, cursor, permit).await {
                    Served::Answer(resp) => Ok(resp),
                    Served::Forward(reason) => {
                        self.count_forward(reason);
                        if reason == ForwardReason::ExpiredCursor {
                            // The backend cannot honour our cursor: a first poll.
                            self.strip_cursor(&mut req);
                        }
                        Err(req)
                    }
                }
            }
        }
    }

    fn count_forward(&self, reason: ForwardReason) {
        let stats = &self.registry.context().stats;
        stats.facade.forwarded.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(m::FACADE_FORWARDED, m::label::REASON => reason.as_str()).increment(1);
    }

    async fn serve(
        &self,
        identity: Identity,
        token: String,
        service: u16,
        cursor: Option<Cursor>,
        _permit: OwnedSemaphorePermit,
    ) -> Served {
        let ctx = self.registry.context();
        let org = identity.org_id;
        let session = self.registry.next_session_id();
        let queue = SessionQueue::new(self.config.stream.max_queue_bytes);
        let (reply_tx, reply_rx) = oneshot::channel();
        let join = Box::new(JoinRequest {
            session,
            queue: queue.clone(),
            services: vec![service],
            unknown_services: Vec::new(),
            property: None,
            last_seq: cursor.map(|c| c.position),
            token: token.into(),
            expires_at: identity.expires_at,
            reply: reply_tx,
        });
        let Ok((hub, reply)) = self.registry.join(org, join, reply_rx).await else {
            return Served::Forward(ForwardReason::ShuttingDown);
        };
        let _member = Membership { hub, session };
        if cursor.is_some() && !reply.resumed {
            return Served::Forward(ForwardReason::ExpiredCursor);
        }
        ctx.stats.facade.requests.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(m::FACADE_REQUESTS).increment(1);
        let _held = HeldGauge::new(ctx.stats.clone());

        let deadline = tokio::time::Instant::now() + self.config.legacy.facade_hold;
        let mut flags = self.flags.subscribe();
        let mut shutdown = ctx.shutdown.clone();
        let mut position = cursor.map(|c| c.position);
        let mut queued: Vec<Outgoing> = Vec::new();
        loop {
            if queue.take(&mut queued) == Err(QueueClosed::Overflow) {
                break;
            }
            for item in queued.drain(..) {
                match item {
                    // A resume's replay: the events after the cursor, each
                    // with its position, so the answer ends exactly where
                    // its bounds cut it.
                    Outgoing::Replay(events) => {
                        let taken = self.bounded(&events);
                        if let Some(last) = taken.last() {
                            let count = taken.len() as u64;
                            ctx.stats.facade.events.fetch_add(count, Ordering::Relaxed);
                            ::metrics::counter!(m::FACADE_EVENTS).increment(count);
                            let raws: Vec<&RawValue> = taken.iter().map(|e| &*e.raw).collect();
                            return Served::Answer(self.answer(
                                org,
                                service,
                                last.seq,
                                AnswerEvents::List(&raws),
                            ));
                        }
                    }
                    Outgoing::Frame(frame) => {
                        let Ok(msg) = serde_json::from_str::<HubMessage>(frame.text.as_str())
                        else {
                            continue;
                        };
                        match msg.kind {
                            // Live events: one message, already bounded by
                            // the hub's batch_max_events and batch_max_bytes.
                            "event" => {
                                if let Some(events) = msg.events {
                                    let count = frame.delivery.as_ref().map_or(0, |d| d.count);
                                    ctx.stats.facade.events.fetch_add(count, Ordering::Relaxed);
                                    ::metrics::counter!(m::FACADE_EVENTS).increment(count);
                                    return Served::Answer(self.answer(
                                        org,
                                        service,
                                        msg.seq,
                                        AnswerEvents::Message(events),
                                    ));
                                }
                            }
                            // The ack and pings carry the org's current
                            // position; every event of this service up to it
                            // is already in the queue.
                            "ack" | "ping" | "error" => position = Some(msg.seq),
                            _ => {}
                        }
                    }
                }
            }
            tokio::select! {
                _ = queue.notified() => {}
                _ = tokio::time::sleep_until(deadline) => break,
                changed = flags.changed() => {
                    if changed.is_err() || !flags.borrow().flags.v1_facade {
                        break;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let position = position.unwrap_or_default();
        Served::Answer(self.answer(org, service, position, AnswerEvents::None))
    }

    /// The longest prefix of `events` one answer may carry: at most
    /// `stream.batch_max_events` events and `stream.batch_max_bytes` (an
    /// event larger than that travels alone, as in a stream).
    fn bounded<'e>(&self, events: &'e [Arc<Stored>]) -> &'e [Arc<Stored>] {
        let (max_events, max_bytes) = (
            self.config.stream.batch_max_events.max(1),
            self.config.stream.batch_max_bytes,
        );
        let mut bytes = 0usize;
        let mut n = 0;
        for e in events.iter().take(max_events) {
            bytes = bytes.saturating_add(e.bytes());
            if n > 0 && bytes > max_bytes {
                break;
            }
            n += 1;
        }
        &events[..n]
    }

    fn answer(
        &self,
        org: u64,
        service: u16,
        position: u64,
        events: AnswerEvents<'_>,
    ) -> Response<Body> {
        let cursor = self.key.mint(Cursor {
            org,
            service,
            position,
        });
        V1Answer {
            events_field: &self.config.legacy.events_field,
            events,
            cursor_field: &self.config.legacy.cursor_field,
            cursor: &cursor,
        }
        .response()
    }
}

enum Served {
    Answer(Response<Body>),
    Forward(ForwardReason),
}

/// Leaves the hub however the request ends (answered, or the client went away).
struct Membership {
    hub: mpsc::Sender<HubMsg>,
    session: SessionId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Err(mpsc::error::TrySendError::Full(msg)) =
            self.hub.try_send(HubMsg::Leave(self.session))
        {
            let hub = self.hub.clone();
            tokio::spawn(async move {
                let _ = hub.send(msg).await;
            });
        }
    }
}

/// The held-requests gauges, decremented however the request ends.
struct HeldGauge(Arc<Stats>);

impl HeldGauge {
    fn new(stats: Arc<Stats>) -> HeldGauge {
        stats.facade.held.fetch_add(1, Ordering::Relaxed);
        ::metrics::gauge!(m::FACADE_HELD).increment(1.0);
        HeldGauge(stats)
    }
}

impl Drop for HeldGauge {
    fn drop(&mut self) {
        self.0.facade.held.fetch_sub(1, Ordering::Relaxed);
        ::metrics::gauge!(m::FACADE_HELD).decrement(1.0);
    }
}
