//! One organisation's hub: an actor task that owns the org's stream. This
//! file holds its state, its loop and its timers; `members`, `events` and
//! `sources` hold the rest by concern.
//!
//! It alone assigns positions (`seq`), keeps the replay window and the
//! recent-eventId set, batches per service, serialises each batch once per
//! view (services + property filter) and pushes the shared bytes into the
//! sessions' queues. It also owns the org's sources and swaps them when the
//! flags move the org: start the new source, and stop the old one only when
//! the new one is ready, de-duplicating the overlap by eventId.

mod cluster;
mod events;
mod members;
mod sources;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::dedup::RecentIds;
use super::queue::{Frame, Pushed, SessionQueue};
use super::replay::{ReplayWindow, Stored, ViewKey, batches};
use super::switching::{self, Handover};
use super::{
    HubContext, HubMsg, HubRegistry, IncomingEvent, JoinReply, JoinRequest, ReadReply, ReadRequest,
    SessionId, SourceId, SourceStatus,
};
use crate::auth::OrgId;
use crate::config::Config;
use crate::flags::{Mode, Snapshot, decide, decide_org};
use crate::metrics::{self as m, ErrorKind, ServingMode};
use crate::protocol::{self, ErrorCode};
use crate::upstream::{NativeSpec, PollerSpec, SourceHandle, SourceReport, TokenChoice, TokenPool};

/// Messages handled per wake-up before the hub looks at its timers again.
const DRAIN_LIMIT: usize = 256;
/// At most one `error` message per service in this interval.
const ERROR_REPEAT: Duration = Duration::from_secs(5);

struct Member {
    queue: Arc<SessionQueue>,
    view: ViewKey,
    /// How the member is served now (None until first classified).
    serving: Option<ServingMode>,
}

#[derive(Default)]
struct Slot {
    subscribers: usize,
    /// Set when the last subscriber left; sources stay for the linger.
    idle_since: Option<Instant>,
    pending: Vec<IncomingEvent>,
    /// When the oldest pending event arrived.
    pending_since: Option<Instant>,
    /// The newest V1 cursor, so a poller restarted after an absence
    /// continues where the last one stopped.
    cursor: Option<String>,
    /// A poller restarted from `cursor`: its first answer is a catch-up
    /// (events from the absence), not live delivery.
    catching_up: Option<SourceId>,
    last_error_sent: Option<Instant>,
    serving: Option<Mode>,
}

enum SourceKind {
    SharedPoller(u16),
    SessionPoller(u16, SessionId),
    Native(Vec<u16>),
}

struct Running {
    kind: SourceKind,
    ready: bool,
    /// Since when the source has been ready (reset when it goes down).
    ready_at: Option<Instant>,
    /// A poller: when it sent the newest request it has an answer to.
    answered_request_at: Option<Instant>,
    /// A poller: when it sent the first request it has an answer to.
    first_answered_request_at: Option<Instant>,
    /// Events delivered while being replaced (see `bound_overlap`).
    overlap_events: usize,
    /// A native link: services whose resume backlog reached what other
    /// sources delivered, with the poller that proved it when one did
    /// (see `OrgHub::accept_events`).
    backlog_covered: Vec<(u16, Option<SourceId>)>,
    /// A poller: the first eventIds of its first answer with events. It
    /// covers everything from them on while it runs, so a resumed native
    /// backlog that reaches one of them is cut there, however many events
    /// the de-duplication set has seen since.
    first_answer_ids: Vec<Box<str>>,
    /// A native link: its first live eventIds per service since it was last
    /// up. It covers everything from them on, so a retiring poller's answer
    /// that reaches one of them is cut there: a poller whose requests kept
    /// failing answers from an old cursor and would repeat what the link
    /// delivered, past what the de-duplication set remembers.
    live_marks: Vec<(u16, Box<str>)>,
    /// Per service: the de-duplication set's insertion count when this
    /// source last answered (a poller) or delivered (a native link). Once
    /// more than half the set has been recorded since, the set may have
    /// forgotten what its next answer repeats: that answer is cut where
    /// the others' coverage lies (see `OrgHub::stale_overlap`).
    caught_up_at: Vec<(u16, u64)>,
    handle: SourceHandle,
}

impl Running {
    /// A source just started; `recorded` is the de-duplication set's
    /// insertion count now (see `caught_up_at`).
    fn new(kind: SourceKind, ready: bool, recorded: u64, handle: SourceHandle) -> Running {
        let caught_up_at = match &kind {
            SourceKind::Native(services) => services.iter().map(|&s| (s, recorded)).collect(),
            SourceKind::SharedPoller(s) | SourceKind::SessionPoller(s, _) => vec![(*s, recorded)],
        };
        Running {
            kind,
            ready,
            ready_at: ready.then(Instant::now),
            answered_request_at: None,
            first_answered_request_at: None,
            overlap_events: 0,
            backlog_covered: Vec::new(),
            first_answer_ids: Vec::new(),
            live_marks: Vec::new(),
            caught_up_at,
            handle,
        }
    }

    /// A native link's resume backlog for `service` reached what others
    /// delivered (`by`: the poller whose coverage it reached, when one did):
    /// the rest of it is theirs.
    fn backlog_handed_over(&mut self, service: u16, by: Option<SourceId>) {
        self.backlog_covered.push((service, by));
    }
}

pub(super) struct OrgHub {
    org: OrgId,
    registry: Arc<HubRegistry>,
    ctx: Arc<HubContext>,
    cfg: Arc<Config>,
    me: mpsc::Sender<HubMsg>,
    inbox: mpsc::Receiver<HubMsg>,
    flags: Arc<Snapshot>,
    flag_rx: watch::Receiver<Arc<Snapshot>>,
    base_seq: u64,
    seq: u64,
    /// The newest position, for readers waiting for the next event.
    heads: watch::Sender<u64>,
    replay: ReplayWindow,
    /// Source-side de-duplication: eventIds accepted from the sources.
    recent: RecentIds,
    /// eventIds a native link skipped in its resume backlog as the pollers'
    /// (they had begun to cover them): holes in the link's own coverage.
    /// A poller's answer cut where the link's coverage lies still delivers
    /// these. Bounded like `recent`.
    left_to_pollers: RecentIds,
    /// Delivery-side de-duplication: eventIds delivered to this replica's
    /// clients (in cluster mode they may come from local sources and from
    /// the shared stream across a change of serving).
    delivered: RecentIds,
    /// Set in cluster mode (`cluster.redis_url`).
    cluster: Option<cluster::ClusterSide>,
    members: HashMap<SessionId, Member>,
    views: HashMap<ViewKey, Vec<(SessionId, Arc<SessionQueue>)>>,
    slots: Vec<Slot>,
    sources: HashMap<SourceId, Running>,
    next_source: SourceId,
    native_seq: Option<u64>,
    native_down_since: Option<Instant>,
    /// Whether the last reconcile served native services by polling.
    in_fallback: bool,
    tokens: Arc<TokenPool>,
    empty_since: Option<Instant>,
    next_ping: Instant,
}

impl OrgHub {
    pub(super) fn new(
        org: OrgId,
        registry: Arc<HubRegistry>,
        me: mpsc::Sender<HubMsg>,
        inbox: mpsc::Receiver<HubMsg>,
    ) -> Self {
        let ctx = registry.context().clone();
        let cfg = ctx.config.clone();
        let mut flag_rx = ctx.flags.subscribe();
        let flags = flag_rx.borrow_and_update().clone();
        // Positions start from the creation time in microseconds-ish units,
        // so a lastSeq from an earlier run, an earlier hub of this org or
        // another replica is never mistaken for a position in this one.
        let base_seq = (crate::clock::unix_millis().max(0) as u64) * 1000;
        let replay = ReplayWindow::new(cfg.stream.replay_events, cfg.stream.replay_bytes);
        OrgHub {
            org,
            slots: (0..cfg.services.len()).map(|_| Slot::default()).collect(),
            recent: RecentIds::new(cfg.stream.dedup_events),
            left_to_pollers: RecentIds::new(cfg.stream.dedup_events),
            delivered: RecentIds::new(cfg.stream.dedup_events),
            cluster: ctx.cluster.as_ref().map(|_| cluster::ClusterSide::new()),
            next_ping: Instant::now() + cfg.stream.ping_interval,
            registry,
            ctx,
            cfg,
            me,
            inbox,
            flags,
            flag_rx,
            base_seq,
            seq: base_seq,
            heads: watch::channel(base_seq).0,
            replay,
            members: HashMap::new(),
            views: HashMap::new(),
            sources: HashMap::new(),
            next_source: 1,
            native_seq: None,
            native_down_since: None,
            in_fallback: false,
            tokens: Arc::new(TokenPool::default()),
            empty_since: Some(Instant::now()),
        }
    }

    pub(super) async fn run(mut self) {
        let mut shutdown = self.ctx.shutdown.clone();
        let mut flags_open = true;
        loop {
            let deadline = self.next_deadline();
            // Set when the inbox still held messages after a full drain.
            let mut busy = false;
            tokio::select! {
                msg = self.inbox.recv() => {
                    let Some(msg) = msg else { break };
                    self.handle(msg);
                    busy = true;
                    for _ in 0..DRAIN_LIMIT {
                        match self.inbox.try_recv() {
                            Ok(msg) => self.handle(msg),
                            Err(_) => {
                                busy = false;
                                break;
                            }
                        }
                    }
                }
                changed = self.flag_rx.changed(), if flags_open => {
                    match changed {
                        Ok(()) => {
                            self.flags = self.flag_rx.borrow_and_update().clone();
                            self.reconcile();
                        }
                        Err(_) => flags_open = false,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => break,
            }
            let now = Instant::now();
            self.release_ahead(now, false);
            self.flush_due(now, busy);
            if now >= self.next_ping {
                self.next_ping = now + self.cfg.stream.ping_interval;
                self.broadcast(Frame::keepalive(protocol::ping_message(self.seq)));
            }
            let fallback_due = self.fallback_deadline().is_some_and(|d| now >= d);
            if fallback_due != self.in_fallback || self.slot_linger_due(now) {
                self.reconcile();
            }
            // An org with no client keeps its positions, replay window and
            // cursors for resume_ttl, so a client back within it resumes.
            if self.members.is_empty()
                && self
                    .empty_since
                    .is_some_and(|t| now >= t + self.cfg.stream.resume_ttl)
                && self.registry.retire(self.org, &self.inbox, &self.me)
            {
                self.stop_all();
                return;
            }
        }
        self.stop_all();
        self.registry.forget(self.org, &self.me);
    }

    fn stop_all(&mut self) {
        for (_, r) in self.sources.drain() {
            r.handle.stop();
        }
        // Releases the org's lease and demand.
        if let Some(c) = self.cluster.as_mut() {
            c.link = None;
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self.next_ping;
        let window = self.cfg.stream.batch_window;
        for slot in &self.slots {
            if let Some(t) = slot.pending_since {
                d = d.min(t + window);
            }
            if slot.subscribers == 0
                && let Some(t) = slot.idle_since
            {
                d = d.min(t + self.cfg.stream.hub_linger);
            }
        }
        // Once the fallback is in force it needs no timer (a deadline in
        // the past would spin this loop).
        if let Some(f) = self.fallback_deadline().filter(|_| !self.in_fallback) {
            d = d.min(f);
        }
        if let Some(a) = self.ahead_deadline() {
            d = d.min(a);
        }
        if self.members.is_empty()
            && let Some(t) = self.empty_since
        {
            d = d.min(t + self.cfg.stream.resume_ttl);
        }
        d
    }

    fn fallback_deadline(&self) -> Option<Instant> {
        self.native_down_since
            .map(|t| t + self.cfg.upstream.native_fallback_after)
    }

    fn slot_linger_due(&self, now: Instant) -> bool {
        self.slots.iter().any(|s| {
            s.subscribers == 0
                && s.idle_since
                    .is_some_and(|t| now >= t + self.cfg.stream.hub_linger)
        })
    }

    fn handle(&mut self, msg: HubMsg) {
        let msg = match msg {
            HubMsg::Join(_) | HubMsg::Read(_) => match self.hold_until_served(msg) {
                Some(msg) => msg,
                None => return,
            },
            other => other,
        };
        match msg {
            HubMsg::Cluster { link, update } => self.cluster_update(link, update),
            HubMsg::Join(req) => self.join(*req),
            HubMsg::Leave(id) => self.leave(id),
            HubMsg::Source(SourceReport::Events {
                source,
                service,
                events,
                cursor,
                native_seq,
                requested_at,
            }) => {
                self.accept_events(source, service, events, cursor, native_seq);
                self.note_answer(source, requested_at);
            }
            HubMsg::Source(SourceReport::Status { source, status }) => {
                self.source_status(source, status)
            }
            HubMsg::Read(req) => self.read(*req),
        }
    }
}
