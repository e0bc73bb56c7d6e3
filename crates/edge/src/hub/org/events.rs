//! Events from the sources: positions, de-duplication, the size limit,
//! the replay window and the byte- and count-bounded batches pushed to
//! every view (the batches themselves are `batches`').

use std::collections::HashSet;

use tokio::time::Instant;

use super::*;

mod batches;

fn native_source(r: Option<&Running>) -> bool {
    matches!(r.map(|r| &r.kind), Some(SourceKind::Native(_)))
}

/// How many of a poller's first eventIds mark where its coverage begins.
const COVERAGE_MARKS: usize = 16;

impl OrgHub {
    /// Records how far a poller's coverage reaches; an answer of a retiring
    /// poller may complete its handover.
    pub(super) fn note_answer(&mut self, source: SourceId, requested_at: Option<Instant>) {
        let Some(at) = requested_at else { return };
        let Some(r) = self.sources.get_mut(&source) else {
            return;
        };
        r.answered_request_at = Some(r.answered_request_at.map_or(at, |o| o.max(at)));
        r.first_answered_request_at.get_or_insert(at);
        let retiring = match r.kind {
            SourceKind::SharedPoller(s) | SourceKind::SessionPoller(s, _) => {
                self.slots[s as usize].serving != Some(Mode::Poll)
            }
            SourceKind::Native(_) => false,
        };
        // ... or the answer of a new poller may complete a native link's.
        let native_retiring = self.sources.len() > 1
            && self
                .sources
                .values()
                .any(|r| matches!(r.kind, SourceKind::Native(_)));
        if retiring || native_retiring {
            self.reconcile();
        }
    }

    /// Whether `source` is being replaced for `service` (it runs only to
    /// overlap its replacement).
    fn retiring(&self, source: SourceId, service: u16) -> bool {
        let serving = self.slots.get(service as usize).and_then(|s| s.serving);
        match self.sources.get(&source).map(|r| &r.kind) {
            Some(SourceKind::SharedPoller(_) | SourceKind::SessionPoller(..)) => {
                serving != Some(Mode::Poll)
            }
            // The newest link is never cut short: during a fallback it is
            // the one expected back (with its resume), not a retiring one.
            Some(SourceKind::Native(_)) => self.newest_native() != Some(source),
            None => false,
        }
    }

    /// Counts what a retiring source delivers during its overlap; once that
    /// is more than half the de-duplication set could still recognise, the
    /// overlap is cut short (CONTRACT 3.3): its further events would risk
    /// being redelivered.
    fn bound_overlap(&mut self, source: SourceId, service: u16, events: usize) {
        if !self.retiring(source, service) {
            return;
        }
        let limit = self.cfg.stream.dedup_events / 2;
        let Some(r) = self.sources.get_mut(&source) else {
            return;
        };
        r.overlap_events = r.overlap_events.saturating_add(events);
        if r.overlap_events > limit
            && let Some(r) = self.sources.remove(&source)
        {
            tracing::warn!(org = self.org, service = %self.cfg.services[service as usize].name, events = r.overlap_events,
                "overlap longer than the de-duplication bound; the source being replaced stops now");
            r.handle.stop();
        }
    }

    pub(super) fn accept_events(
        &mut self,
        source: SourceId,
        service: u16,
        events: Vec<IncomingEvent>,
        cursor: Option<String>,
        native_seq: Option<u64>,
    ) {
        // A retiring poller's answer is cut where a native link's live
        // coverage began (see `Running::live_marks`).
        let native_marks: HashSet<Box<str>> = if self.retiring(source, service)
            && !matches!(
                self.sources.get(&source).map(|r| &r.kind),
                Some(SourceKind::Native(_))
            ) {
            self.sources
                .values()
                .flat_map(|r| r.live_marks.iter())
                .filter(|(s, _)| *s == service)
                .map(|(_, id)| id.clone())
                .collect()
        } else {
            HashSet::new()
        };
        let mut reached_native = false;
        let stale = self.stale_overlap(source, service, &events);
        let caught_up = !native_source(self.sources.get(&source)) || !events.is_empty();
        self.bound_overlap(source, service, events.len());
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
        let native = matches!(
            self.sources.get(&source).map(|r| &r.kind),
            Some(SourceKind::Native(_))
        );
        // A poller covers everything from its first answer on while it
        // runs: that answer's first ids mark where its coverage begins.
        if !native
            && let Some(r) = self.sources.get_mut(&source)
            && r.first_answer_ids.is_empty()
        {
            r.first_answer_ids = events
                .iter()
                .filter(|e| e.org == Some(self.org))
                .take(COVERAGE_MARKS)
                .map(|e| e.id.clone())
                .collect();
        }
        // Where the running pollers of `service` began to cover it.
        let marks: HashMap<Box<str>, SourceId> = if native {
            self.sources
                .iter()
                .filter(|(_, r)| {
                    matches!(r.kind, SourceKind::SharedPoller(x) | SourceKind::SessionPoller(x, _) if x == service)
                })
                .flat_map(|(&id, r)| r.first_answer_ids.iter().map(move |m| (m.clone(), id)))
                .collect()
        } else {
            HashMap::new()
        };
        // Any source's events are accepted, even from one being retired:
        // they may predate what its replacement covers. Duplicates go.
        for (i, mut ev) in events.into_iter().enumerate() {
            ev.live &= live;
            // A resumed native link replays its backlog oldest first: first
            // what nobody else covered (the gap), then what the pollers
            // serving meanwhile delivered already. Where their coverage
            // began (one of a running poller's first ids, or else the first
            // duplicate) the rest of the backlog is theirs and is skipped,
            // so a long overlap is cut short instead of outrunning the
            // de-duplication set.
            let backlog = native && !ev.live;
            if backlog
                && let Some(r) = self.sources.get_mut(&source)
                && r.backlog_covered.iter().any(|(s, _)| *s == service)
            {
                self.left_to_pollers.insert(&ev.id);
                continue;
            }
            if backlog
                && let Some(&poller) = marks.get(&ev.id)
                && let Some(r) = self.sources.get_mut(&source)
            {
                r.backlog_handed_over(service, Some(poller));
                continue;
            }
            // Past the link's coverage (or within what others delivered
            // since), only the holes the link left to pollers remain.
            reached_native |= native_marks.contains(&ev.id);
            if (reached_native || stale.contains(&i))
                && (native || !self.left_to_pollers.contains(&ev.id))
            {
                continue;
            }
            if ev.org != Some(self.org) {
                tracing::warn!(org = self.org, event_org = ?ev.org, event_id = %ev.id, service = %self.cfg.services[service as usize].name,
                    "dropped an event of another org (or without orgId) from the backend");
                self.ctx.stats.count_error(ErrorKind::CrossOrg);
                ::metrics::counter!(m::CROSS_ORG_DROPPED).increment(1);
                continue;
            }
            if native
                && ev.live
                && let Some(r) = self.sources.get_mut(&source)
                && r.live_marks.iter().filter(|(s, _)| *s == service).count() < COVERAGE_MARKS
            {
                r.live_marks.push((service, ev.id.clone()));
            }
            if !self.recent.insert(&ev.id) {
                if backlog && let Some(r) = self.sources.get_mut(&source) {
                    r.backlog_handed_over(service, None);
                }
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
        if caught_up {
            self.note_caught_up(source, service);
        }
        if reached_native && let Some(r) = self.sources.remove(&source) {
            tracing::debug!(org = self.org, service = %self.cfg.services[service as usize].name,
                "the poller being replaced reached the native link's coverage; it stops");
            r.handle.stop();
        }
    }

    /// The part of an answer of `source` for `service` that repeats what
    /// other sources delivered since its last one, when more has been
    /// recorded since than the de-duplication set surely remembers (a
    /// poller whose requests kept failing while a native link delivered, a
    /// link that was down while pollers did): from where another running source's coverage
    /// began (one of its marks in the answer, else the answer's start) to
    /// the last event the set still remembers. An answer holds events in the
    /// order the backend published them, and what the hub delivered is
    /// gapless from such a mark on, so all of that range was delivered;
    /// before the mark lies what nobody else covered, after the last
    /// remembered event what is new. Empty while the set suffices.
    fn stale_overlap(
        &self,
        source: SourceId,
        service: u16,
        events: &[IncomingEvent],
    ) -> std::ops::Range<usize> {
        let since = self
            .sources
            .get(&source)
            .and_then(|r| r.caught_up_at.iter().find(|(s, _)| *s == service))
            .map_or(0, |&(_, at)| at);
        let recorded = self.recent.inserted().wrapping_sub(since);
        if recorded <= (self.cfg.stream.dedup_events / 2) as u64 {
            return 0..0;
        }
        let marks: HashSet<&str> = self
            .sources
            .iter()
            .filter(|&(&id, _)| id != source)
            .flat_map(|(_, r)| {
                let poller_marks: &[Box<str>] = match r.kind {
                    SourceKind::SharedPoller(s) | SourceKind::SessionPoller(s, _)
                        if s == service =>
                    {
                        &r.first_answer_ids
                    }
                    _ => &[],
                };
                r.live_marks
                    .iter()
                    .filter(|(s, _)| *s == service)
                    .map(|(_, id)| &**id)
                    .chain(poller_marks.iter().map(|id| &**id))
            })
            .collect();
        let start = events
            .iter()
            .position(|e| marks.contains(&*e.id))
            .unwrap_or(0);
        match events.iter().rposition(|e| self.recent.contains(&e.id)) {
            Some(last) if last >= start => start..last + 1,
            _ => 0..0,
        }
    }

    /// Keeps [`Running::caught_up_at`]: `source` has caught up on
    /// `service` (a poller's answer, a link's events).
    fn note_caught_up(&mut self, source: SourceId, service: u16) {
        let at = self.recent.inserted();
        let Some(r) = self.sources.get_mut(&source) else {
            return;
        };
        match r.caught_up_at.iter_mut().find(|(s, _)| *s == service) {
            Some(entry) => entry.1 = at,
            None => r.caught_up_at.push((service, at)),
        }
    }

    /// An event over `stream.max_event_bytes` is never delivered nor kept
    /// for replay: it is counted, logged, and reported to the service's
    /// clients (each such event once, whatever the error rate limit).
    pub(super) fn report_too_large(&mut self, service: u16, id: &str, size: usize) {
        let max = self.cfg.stream.max_event_bytes;
        let name = &self.cfg.services[service as usize].name;
        tracing::warn!(org = self.org, service = %name, event_id = %id, bytes = size, max_event_bytes = max,
            "dropped an event larger than stream.max_event_bytes");
        self.ctx.stats.count_error(ErrorKind::EventTooLarge);
        ::metrics::counter!(m::EVENTS_TOO_LARGE, m::label::SERVICE => name.clone()).increment(1);
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
}
