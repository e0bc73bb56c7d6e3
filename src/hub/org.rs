//! One organisation's hub: an actor task that owns the org's stream.
//!
//! It alone assigns positions (`seq`), keeps the replay window and the
//! recent-eventId set, batches per service, serialises each batch once per
//! view (services + property filter) and pushes the shared bytes into the
//! sessions' queues. It also owns the org's sources and swaps them when the
//! flags move the org: start the new source, and stop the old one only when
//! the new one is ready, de-duplicating the overlap by eventId.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::dedup::RecentIds;
use super::queue::{Frame, SessionQueue};
use super::replay::{ReplayWindow, Stored, ViewKey, batches};
use super::switching::{self, Handover};
use super::tokens::TokenPool;
use super::{
    HubContext, HubMsg, HubRegistry, IncomingEvent, JoinReply, JoinRequest, SessionId, SourceId,
    SourceStatus,
};
use crate::auth::OrgId;
use crate::config::Config;
use crate::flags::{Mode, Snapshot, decide, decide_org};
use crate::metrics::{self as m, error_kind};
use crate::protocol::{self, ErrorCode};
use crate::upstream::{NativeSpec, PollerSpec, SourceHandle, TokenChoice};

/// Messages handled per wake-up before the hub looks at its timers again.
const DRAIN_LIMIT: usize = 256;
/// At most one `error` message per service in this interval.
const ERROR_REPEAT: Duration = Duration::from_secs(5);

struct Member {
    queue: Arc<SessionQueue>,
    view: ViewKey,
    /// How the member is served now: "poll", "native" or "mixed".
    serving: &'static str,
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
    handle: SourceHandle,
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
    replay: ReplayWindow,
    recent: RecentIds,
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
        match msg {
            HubMsg::Join(req) => self.join(*req),
            HubMsg::Leave(id) => self.leave(id),
            HubMsg::Events {
                source,
                service,
                events,
                cursor,
                native_seq,
                requested_at,
            } => {
                self.accept_events(source, service, events, cursor, native_seq);
                self.note_answer(source, requested_at);
            }
            HubMsg::Status { source, status } => self.source_status(source, status),
        }
    }

    // ---- connections ------------------------------------------------------

    fn join(&mut self, req: JoinRequest) {
        let view = ViewKey {
            services: req.services.clone(),
            property: req.property.clone(),
        };
        self.tokens
            .add(req.session, req.token.clone(), req.expires_at);
        for &s in &req.services {
            if let Some(slot) = self.slots.get_mut(s as usize) {
                slot.subscribers += 1;
                slot.idle_since = None;
            }
        }
        let mode = self.ack_mode(&req.services);
        let resumed = req.last_seq.is_some_and(|n| self.can_resume(n));
        // A resumed client's position is its lastSeq: the replay then moves
        // it forward, so the seq it sees only ever grows.
        let position = match req.last_seq {
            Some(n) if resumed => n,
            _ => self.seq,
        };
        let q = &req.queue;
        q.push(Frame::control(protocol::ack_message(
            position, mode, resumed,
        )));
        // One error for all unknown names (the list is capped at the handshake).
        if !req.unknown_services.is_empty() {
            let names = &req.unknown_services;
            let service = match names.as_slice() {
                [only] => Some(only.as_str()),
                _ => None,
            };
            q.push(Frame::control(protocol::error_message(
                service,
                ErrorCode::UnknownService,
                &format!("unknown services: {names:?}"),
                position,
            )));
        }
        if resumed {
            self.replay_to(q, &view, position);
        }
        self.views
            .entry(view.clone())
            .or_default()
            .push((req.session, req.queue.clone()));
        self.members.insert(
            req.session,
            Member {
                queue: req.queue,
                view,
                serving: "",
            },
        );
        self.empty_since = None;
        let _ = req.reply.send(JoinReply { mode, resumed });
        self.reconcile();
        self.classify(req.session);
    }

    fn leave(&mut self, id: SessionId) {
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        if !member.serving.is_empty() {
            self.ctx
                .stats
                .mode_counter(member.serving)
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.tokens.remove(id);
        if let Some(list) = self.views.get_mut(&member.view) {
            list.retain(|(sid, _)| *sid != id);
            if list.is_empty() {
                self.views.remove(&member.view);
            }
        }
        let now = Instant::now();
        for &s in &member.view.services {
            if let Some(slot) = self.slots.get_mut(s as usize) {
                slot.subscribers = slot.subscribers.saturating_sub(1);
                if slot.subscribers == 0 {
                    slot.idle_since = Some(now);
                }
            }
        }
        if self.members.is_empty() {
            self.empty_since = Some(now);
        }
        self.reconcile();
    }

    fn ack_mode(&self, services: &[u16]) -> &'static str {
        let group = &self.cfg.rollout_group;
        let mut modes = services
            .iter()
            .map(|&s| decide(&self.flags.flags, group, self.org, s as usize).0);
        let first = modes
            .next()
            .unwrap_or_else(|| decide_org(&self.flags.flags, group, self.org).0);
        if modes.all(|m| m == first) {
            first.as_str()
        } else {
            "mixed"
        }
    }

    /// True when every event after `n` of this hub is still in the window.
    fn can_resume(&self, n: u64) -> bool {
        n >= self.base_seq && n <= self.seq && self.replay.covers(n, self.seq)
    }

    /// Queues the window's events after `after` for a resuming client; the
    /// connection renders them into messages as it writes.
    fn replay_to(&self, q: &SessionQueue, view: &ViewKey, after: u64) {
        let read = self
            .replay
            .read(view, after, usize::MAX, usize::MAX, self.seq);
        q.push_replay(read.events);
    }

    /// One live `event` message of events of one service.
    fn event_frame(&self, events: &[&Arc<Stored>]) -> Option<Frame> {
        let service = events.last()?.service as usize;
        let mode = self.slots[service].serving.map_or("poll", Mode::as_str);
        Frame::events(events, &self.cfg.services[service].name, mode, true)
    }

    fn broadcast(&self, frame: Frame) {
        for m in self.members.values() {
            m.queue.push(frame.clone());
        }
    }

    fn send_error(&mut self, service: u16, code: ErrorCode, message: &str) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(service as usize) else {
            return;
        };
        if slot.last_error_sent.is_some_and(|t| now < t + ERROR_REPEAT) {
            return;
        }
        slot.last_error_sent = Some(now);
        let name = &self.cfg.services[service as usize].name;
        let frame = Frame::control(protocol::error_message(Some(name), code, message, self.seq));
        for m in self.members.values() {
            if m.view.services.binary_search(&service).is_ok() {
                m.queue.push(frame.clone());
            }
        }
    }

    // ---- events -------------------------------------------------------------

    /// Records how far a poller's coverage reaches; an answer of a retiring
    /// poller may complete its handover.
    fn note_answer(&mut self, source: SourceId, requested_at: Option<Instant>) {
        let Some(at) = requested_at else { return };
        let Some(r) = self.sources.get_mut(&source) else {
            return;
        };
        r.answered_request_at = Some(r.answered_request_at.map_or(at, |o| o.max(at)));
        let retiring = match r.kind {
            SourceKind::SharedPoller(s) | SourceKind::SessionPoller(s, _) => {
                self.slots[s as usize].serving != Some(Mode::Poll)
            }
            SourceKind::Native(_) => false,
        };
        if retiring {
            self.reconcile();
        }
    }

    fn accept_events(
        &mut self,
        source: SourceId,
        service: u16,
        events: Vec<IncomingEvent>,
        cursor: Option<String>,
        native_seq: Option<u64>,
    ) {
        // Positions to restart from are taken only from the source that
        // serves: a retiring source's position is history, not a plan.
        if let Some(n) = native_seq
            && self.newest_native() == Some(source)
        {
            self.native_seq = Some(self.native_seq.map_or(n, |o| o.max(n)));
        }
        let Some(slot) = self.slots.get_mut(service as usize) else {
            return;
        };
        if cursor.is_some() && slot.serving == Some(Mode::Poll) {
            slot.cursor = cursor;
        }
        let live = slot.catching_up != Some(source);
        if !live {
            slot.catching_up = None;
        }
        let mut too_large: Vec<(Box<str>, usize)> = Vec::new();
        // Any source's events are accepted, even from one being retired:
        // they may predate what its replacement covers. Duplicates go.
        for mut ev in events {
            ev.live = live;
            if ev.org != Some(self.org) {
                tracing::warn!(org = self.org, event_org = ?ev.org, event_id = %ev.id, service = %self.cfg.services[service as usize].name,
                    "dropped an event of another org (or without orgId) from the backend");
                self.ctx.stats.count_error(error_kind::CROSS_ORG);
                ::metrics::counter!(m::CROSS_ORG_DROPPED).increment(1);
                continue;
            }
            if !self.recent.insert(&ev.id) {
                continue;
            }
            let size = ev.raw.get().len();
            if size > self.cfg.stream.max_event_bytes {
                too_large.push((ev.id, size));
                continue;
            }
            {
                if slot.pending.is_empty() {
                    slot.pending_since = Some(Instant::now());
                }
                slot.pending.push(ev);
            }
        }
        if slot.last_error_sent.is_some() && !slot.pending.is_empty() {
            // Events flowing again announce the recovery.
            slot.last_error_sent = None;
        }
        for (id, size) in too_large {
            self.report_too_large(service, &id, size);
        }
    }

    /// An event over `stream.max_event_bytes` is never delivered nor kept
    /// for replay: it is counted, logged, and reported to the service's
    /// clients (each such event once, whatever the error rate limit).
    fn report_too_large(&mut self, service: u16, id: &str, size: usize) {
        let max = self.cfg.stream.max_event_bytes;
        let name = &self.cfg.services[service as usize].name;
        tracing::warn!(org = self.org, service = %name, event_id = %id, bytes = size, max_event_bytes = max,
            "dropped an event larger than stream.max_event_bytes");
        self.ctx.stats.count_error(error_kind::EVENT_TOO_LARGE);
        ::metrics::counter!(m::EVENTS_TOO_LARGE, "service" => name.clone()).increment(1);
        let message = format!(
            "event {id:?} ({size} bytes) is larger than the limit of {max} bytes and was dropped"
        );
        let frame = Frame::control(protocol::error_message(
            Some(name),
            ErrorCode::EventTooLarge,
            &message,
            self.seq,
        ));
        for m in self.members.values() {
            if m.view.services.binary_search(&service).is_ok() {
                m.queue.push(frame.clone());
            }
        }
    }

    /// Sends what is pending. Adaptive batching: when the hub has drained
    /// everything that arrived together, events go out at once (latency);
    /// while messages keep queueing up (`busy`), a service's batch grows
    /// until `batch_max_events` or until its oldest event has waited
    /// `batch_window_ms` (throughput, and the contract's upper bound).
    fn flush_due(&mut self, now: Instant, busy: bool) {
        let window = self.cfg.stream.batch_window;
        let max = self.cfg.stream.batch_max_events;
        for s in 0..self.slots.len() {
            let slot = &self.slots[s];
            let Some(since) = slot.pending_since else {
                continue;
            };
            if !busy || slot.pending.len() >= max || now >= since + window {
                self.flush(s as u16);
            }
        }
    }

    fn flush(&mut self, service: u16) {
        let slot = &mut self.slots[service as usize];
        let pending = std::mem::take(&mut slot.pending);
        slot.pending_since = None;
        let mut stored = Vec::with_capacity(pending.len());
        for ev in pending {
            self.seq += 1;
            stored.push(Arc::new(Stored {
                seq: self.seq,
                service,
                raw: ev.raw,
                property: ev.property,
                origin_ms: ev.origin_ms,
                live: ev.live,
            }));
        }
        for e in &stored {
            self.replay.push(e.clone());
        }
        let limits = (
            self.cfg.stream.batch_max_events,
            self.cfg.stream.batch_max_bytes,
        );
        for (view, members) in &self.views {
            let selected: Vec<&Arc<Stored>> = stored.iter().filter(|e| view.wants(e)).collect();
            for batch in batches(&selected, limits.0, limits.1) {
                let Some(frame) = self.event_frame(batch) else {
                    continue;
                };
                for (_, q) in members {
                    q.push(frame.clone());
                }
            }
        }
    }

    // ---- sources ------------------------------------------------------------

    fn source_status(&mut self, source: SourceId, status: SourceStatus) {
        let Some(running) = self.sources.get_mut(&source) else {
            return;
        };
        match status {
            // Only the newest native link decides whether the org's native
            // stream is up: an older one being retired may drop meanwhile.
            SourceStatus::Ready => {
                running.ready = true;
                running.ready_at.get_or_insert_with(Instant::now);
                let native = matches!(running.kind, SourceKind::Native(_));
                if native && self.newest_native() == Some(source) {
                    if self.native_down_since.is_some() {
                        tracing::info!(org = self.org, "native stream link is up");
                    }
                    self.native_down_since = None;
                }
                self.reconcile();
            }
            SourceStatus::Down => {
                running.ready = false;
                running.ready_at = None;
                let native = matches!(running.kind, SourceKind::Native(_));
                if native
                    && self.newest_native() == Some(source)
                    && self.native_down_since.is_none()
                {
                    self.native_down_since = Some(Instant::now());
                }
                self.reconcile();
            }
            SourceStatus::Failed {
                service,
                auth,
                message,
            } => {
                let affected: Vec<u16> = match (&running.kind, service) {
                    (_, Some(s)) => vec![s],
                    (SourceKind::Native(set), None) => set.clone(),
                    (SourceKind::SharedPoller(s) | SourceKind::SessionPoller(s, _), None) => {
                        vec![*s]
                    }
                };
                let native = matches!(running.kind, SourceKind::Native(_));
                self.ctx.stats.count_error(if auth {
                    error_kind::UPSTREAM_AUTH
                } else {
                    error_kind::UPSTREAM
                });
                let code = if auth {
                    ErrorCode::UpstreamAuth
                } else {
                    ErrorCode::UpstreamError
                };
                for s in affected {
                    // A failing link only matters to clients it is serving.
                    let serving = self.slots[s as usize].serving;
                    if (native && serving == Some(Mode::Native))
                        || (!native && serving == Some(Mode::Poll))
                    {
                        self.send_error(s, code, &message);
                    }
                }
            }
        }
    }

    /// Whether service `s` needs a source: while it has subscribers, and
    /// for `hub_linger` after its last one left if the org still has
    /// clients (their tokens keep the source going). With no client left
    /// the sources stop at once: a source without a token could only fail.
    /// Positions and cursors stay for `resume_ttl` (see [`OrgHub::run`]).
    fn active(&self, s: usize, now: Instant) -> bool {
        let slot = &self.slots[s];
        slot.subscribers > 0
            || (!self.members.is_empty()
                && slot
                    .idle_since
                    .is_some_and(|t| now < t + self.cfg.stream.hub_linger))
    }

    /// Brings the running sources in line with the flags and subscribers.
    /// Starts what is missing first; stops what is no longer wanted only
    /// once its replacement is ready (make-before-break).
    fn reconcile(&mut self) {
        let now = Instant::now();
        let n = self.slots.len();
        let group = self.cfg.rollout_group.clone();
        let flags = self.flags.flags.clone();
        let fallback = self.fallback_deadline().is_some_and(|d| now >= d);
        self.in_fallback = fallback;
        let mut decided: Vec<Option<Mode>> = vec![None; n];
        let mut serve: Vec<Option<Mode>> = vec![None; n];
        for s in 0..n {
            if !self.active(s, now) {
                continue;
            }
            let d = decide(&flags, &group, self.org, s).0;
            decided[s] = Some(d);
            let v1 = flags.service_v1.get(s).copied().unwrap_or(true);
            serve[s] = Some(if d == Mode::Native && fallback && v1 {
                Mode::Poll
            } else {
                d
            });
        }

        // Start pollers.
        let polled: Vec<u16> = (0..n)
            .filter(|&s| serve[s] == Some(Mode::Poll))
            .map(|s| s as u16)
            .collect();
        for s16 in polled {
            if flags.leader_enabled {
                if !self
                    .sources
                    .values()
                    .any(|r| matches!(r.kind, SourceKind::SharedPoller(x) if x == s16))
                {
                    self.start_poller(s16, None);
                }
            } else {
                let wanting: Vec<SessionId> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.view.services.binary_search(&s16).is_ok())
                    .map(|(id, _)| *id)
                    .collect();
                for id in wanting {
                    if !self
                        .sources
                        .values()
                        .any(|r| matches!(r.kind, SourceKind::SessionPoller(x, sid) if x == s16 && sid == id))
                    {
                        self.start_poller(s16, Some(id));
                    }
                }
            }
        }

        // Start a native link covering every service decided native (it
        // keeps running during a fallback, so it can come back).
        let native_want: Vec<u16> = (0..n)
            .filter(|&s| decided[s] == Some(Mode::Native))
            .map(|s| s as u16)
            .collect();
        let newest_native = self.newest_native();
        let adequate = newest_native.is_some_and(|id| match &self.sources[&id].kind {
            SourceKind::Native(set) => native_want.iter().all(|s| set.binary_search(s).is_ok()),
            _ => false,
        });
        if !native_want.is_empty() && !adequate {
            self.start_native(native_want.clone());
        }
        let newest_native = self.newest_native().filter(|_| !native_want.is_empty());

        // Stop what is no longer wanted, once its replacement is ready.
        let poll_ready = |hub: &OrgHub, s: u16| -> bool {
            let mut any = false;
            let mut all = true;
            for r in hub.sources.values() {
                match r.kind {
                    SourceKind::SharedPoller(x) if x == s && flags.leader_enabled => {
                        any = true;
                        all &= r.ready;
                    }
                    SourceKind::SessionPoller(x, _) if x == s && !flags.leader_enabled => {
                        any = true;
                        all &= r.ready;
                    }
                    _ => {}
                }
            }
            any && all
        };
        let native_ready = |hub: &OrgHub, s: u16| -> bool {
            newest_native.is_some_and(|id| {
                let r = &hub.sources[&id];
                r.ready
                    && matches!(&r.kind, SourceKind::Native(set) if set.binary_search(&s).is_ok())
            })
        };
        let native_ready_at = |hub: &OrgHub, s: u16| -> Option<Instant> {
            newest_native.and_then(|id| {
                let r = &hub.sources[&id];
                match &r.kind {
                    SourceKind::Native(set) if set.binary_search(&s).is_ok() => r.ready_at,
                    _ => None,
                }
            })
        };
        // Whether the source `old`, no longer wanted for service `s`, has
        // handed over to what serves `s` now (see `switching`).
        let handed_over = |hub: &OrgHub, s: u16, old: &Running| -> bool {
            let old_is_poller = !matches!(old.kind, SourceKind::Native(_));
            let handover = match serve[s as usize] {
                None => Handover::Proven,
                // A native link, or one poller kind replacing the other
                // (leader flag): the new pollers' first answers decide.
                Some(Mode::Poll) => switching::native_to_pollers(poll_ready(hub, s)),
                Some(Mode::Native) if old_is_poller => {
                    switching::poller_to_native(native_ready_at(hub, s), old.answered_request_at)
                }
                // A narrower link replaced by a wider one.
                Some(Mode::Native) if native_ready(hub, s) => Handover::Proven,
                Some(Mode::Native) => Handover::Starting,
            };
            handover == Handover::Proven
        };
        let mut to_stop = Vec::new();
        for (&id, r) in &self.sources {
            let stop = match &r.kind {
                SourceKind::SharedPoller(s) => {
                    let wanted = serve[*s as usize] == Some(Mode::Poll) && flags.leader_enabled;
                    !wanted && handed_over(self, *s, r)
                }
                SourceKind::SessionPoller(s, sid) => {
                    let still_member = self
                        .members
                        .get(sid)
                        .is_some_and(|m| m.view.services.binary_search(s).is_ok());
                    let wanted = serve[*s as usize] == Some(Mode::Poll)
                        && !flags.leader_enabled
                        && still_member;
                    !wanted && (!still_member || handed_over(self, *s, r))
                }
                SourceKind::Native(set) => {
                    let wanted = Some(id) == newest_native;
                    !wanted && set.iter().all(|&s| handed_over(self, s, r))
                }
            };
            if stop {
                to_stop.push(id);
            }
        }
        for id in to_stop {
            if let Some(r) = self.sources.remove(&id) {
                // A native link replaced by polling (clients still here):
                // its position is history; a later link starts fresh.
                if matches!(r.kind, SourceKind::Native(_))
                    && native_want.is_empty()
                    && !self.members.is_empty()
                {
                    self.native_seq = None;
                }
                r.handle.stop();
            }
        }
        if self.newest_native().is_none() {
            self.native_down_since = None;
        }

        // Record switches of the effective source.
        let mut switched = false;
        for s in 0..n {
            let was = self.slots[s].serving;
            if serve[s] != was {
                switched = true;
                if let (Some(from), Some(to)) = (was, serve[s]) {
                    tracing::info!(org = self.org, service = %self.cfg.services[s].name, from = from.as_str(), to = to.as_str(),
                        fallback = fallback && decided[s] == Some(Mode::Native), "mode switch");
                    ::metrics::counter!(m::MODE_SWITCHES, "to" => to.as_str()).increment(1);
                }
                // A cursor is history once native serves: a poller that
                // starts after the native period starts fresh.
                if was == Some(Mode::Poll) && serve[s] == Some(Mode::Native) {
                    self.slots[s].cursor = None;
                }
                self.slots[s].serving = serve[s];
            }
            if serve[s].is_none() && self.slots[s].subscribers == 0 {
                self.slots[s].idle_since = None;
                // What arrived keeps its place in the window for a resume.
                if self.slots[s].pending_since.is_some() {
                    self.flush(s as u16);
                }
            }
        }
        if switched {
            let ids: Vec<SessionId> = self.members.keys().copied().collect();
            for id in ids {
                self.classify(id);
            }
        }
    }

    /// How the slots serve a set of services now.
    fn serving_class(&self, services: &[u16]) -> &'static str {
        let mut modes = services
            .iter()
            .filter_map(|&s| self.slots[s as usize].serving);
        match modes.next() {
            None => "poll",
            Some(first) => {
                if modes.all(|m| m == first) {
                    first.as_str()
                } else {
                    "mixed"
                }
            }
        }
    }

    /// Keeps the process-wide connections-by-mode counts in step with a member.
    fn classify(&mut self, id: SessionId) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let now = self.serving_class(&member.view.services);
        let before = member.serving;
        if now == before {
            return;
        }
        let stats = &self.ctx.stats;
        if !before.is_empty() {
            stats
                .mode_counter(before)
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        stats
            .mode_counter(now)
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(m) = self.members.get_mut(&id) {
            m.serving = now;
        }
    }

    fn newest_native(&self) -> Option<SourceId> {
        self.sources
            .iter()
            .filter(|(_, r)| matches!(r.kind, SourceKind::Native(_)))
            .map(|(id, _)| *id)
            .max()
    }

    fn alloc_source(&mut self) -> SourceId {
        let id = self.next_source;
        self.next_source += 1;
        id
    }

    fn start_poller(&mut self, service: u16, session: Option<SessionId>) {
        let id = self.alloc_source();
        let cursor = self.slots[service as usize].cursor.clone();
        // A poller that starts from a known cursor covers everything since
        // its predecessor; it is ready at once, and its first answer catches
        // up on the absence.
        let ready = cursor.is_some();
        if ready {
            self.slots[service as usize].catching_up = Some(id);
        }
        let spec = PollerSpec {
            org: self.org,
            service,
            source: id,
            cursor,
            tokens: match session {
                None => TokenChoice::Pool(self.tokens.clone()),
                Some(s) => TokenChoice::Session(self.tokens.clone(), s),
            },
            hub: self.me.clone(),
        };
        let handle = self.ctx.upstream.spawn_poller(spec);
        let kind = match session {
            None => SourceKind::SharedPoller(service),
            Some(s) => SourceKind::SessionPoller(service, s),
        };
        self.sources.insert(
            id,
            Running {
                kind,
                ready,
                ready_at: ready.then(Instant::now),
                answered_request_at: None,
                handle,
            },
        );
    }

    fn start_native(&mut self, services: Vec<u16>) {
        let id = self.alloc_source();
        if !self
            .sources
            .values()
            .any(|r| matches!(r.kind, SourceKind::Native(_)) && r.ready)
            && self.native_down_since.is_none()
        {
            self.native_down_since = Some(Instant::now());
        }
        let spec = NativeSpec {
            org: self.org,
            services: services.clone(),
            source: id,
            last_seq: self.native_seq,
            tokens: self.tokens.clone(),
            hub: self.me.clone(),
        };
        let handle = self.ctx.upstream.spawn_native(spec);
        self.sources.insert(
            id,
            Running {
                kind: SourceKind::Native(services),
                ready: false,
                ready_at: None,
                answered_request_at: None,
                handle,
            },
        );
    }
}
