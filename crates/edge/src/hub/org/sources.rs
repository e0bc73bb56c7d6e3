//! The org's sources: starting V1 pollers and native links for what the
//! flags and subscribers want, and stopping the old ones make-before-break
//! (the rules are in `hub::switching`; starting a source is `start`'s).

use tokio::time::Instant;

use super::*;

mod start;

impl OrgHub {
    pub(super) fn source_status(&mut self, source: SourceId, status: SourceStatus) {
        let Some(running) = self.sources.get_mut(&source) else {
            return;
        };
        match status {
            // Only the newest native link decides whether the org's native
            // stream is up: an older one being retired may drop meanwhile.
            SourceStatus::Ready => {
                running.ready = true;
                running.ready_at.get_or_insert_with(Instant::now);
                // What a poller proved covered stays covered while that
                // poller runs (the link resumes after its last position,
                // inside that coverage); the rest is decided afresh.
                let covered = std::mem::take(&mut running.backlog_covered);
                let still = covered
                    .into_iter()
                    .filter(|(_, p)| p.is_some_and(|p| self.sources.contains_key(&p)))
                    .collect();
                let Some(running) = self.sources.get_mut(&source) else {
                    return;
                };
                running.backlog_covered = still;
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
            // Coverage restarts with the link's next live events; a link
            // that resumes after a drop keeps its marks (its backlog, or the
            // pollers that served meanwhile, fill the drop).
            SourceStatus::Unresumed => running.live_marks.clear(),
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
                    ErrorKind::UpstreamAuth
                } else {
                    ErrorKind::Upstream
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
    /// for `hub_linger` after its last one left if the org still has a
    /// token to poll with (another client's, or that of the client that
    /// left last, while it is valid). Then the sources stop: a source
    /// without a token could only fail. Positions and cursors stay for
    /// `resume_ttl` (see [`OrgHub::run`]).
    pub(super) fn active(&self, s: usize, now: Instant) -> bool {
        self.wanted(s, now) && self.runs_sources()
    }

    /// Whether this replica has demand for service `s` (see `active`).
    pub(super) fn wanted(&self, s: usize, now: Instant) -> bool {
        let slot = &self.slots[s];
        let linger = self.cfg.stream.hub_linger;
        slot.subscribers > 0
            || ((!self.members.is_empty() || self.tokens.left_within(linger))
                && slot.idle_since.is_some_and(|t| now < t + linger))
    }

    /// Brings the running sources in line with the flags and subscribers.
    /// Starts what is missing first; stops what is no longer wanted only
    /// once its replacement is ready (make-before-break).
    pub(super) fn reconcile(&mut self) {
        let now = Instant::now();
        let n = self.slots.len();
        let demand = !self.members.is_empty() || (0..n).any(|s| self.wanted(s, now));
        self.track_demand(demand);
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
        // What the pollers now serving `s` have shown of their coverage.
        let poll_coverage = |hub: &OrgHub, s: u16| -> switching::PollerCoverage {
            let mut any = false;
            let mut all = true;
            let mut first: Option<Instant> = None;
            let mut latest: Option<Option<Instant>> = None;
            for r in hub.sources.values() {
                let serving = match r.kind {
                    SourceKind::SharedPoller(x) => x == s && flags.leader_enabled,
                    SourceKind::SessionPoller(x, _) => x == s && !flags.leader_enabled,
                    SourceKind::Native(_) => false,
                };
                if serving {
                    any = true;
                    all &= r.ready;
                    if let Some(f) = r.first_answered_request_at {
                        first = Some(first.map_or(f, |o| o.min(f)));
                    }
                    let l = r.answered_request_at;
                    latest = Some(match latest {
                        None => l,
                        Some(prev) => prev.zip(l).map(|(a, b)| a.min(b)),
                    });
                }
            }
            switching::PollerCoverage {
                ready: any && all,
                first_request: first,
                latest_request: latest.flatten(),
            }
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
                // One poller kind replacing the other (leader flag): the
                // new pollers' first answers decide.
                Some(Mode::Poll) if old_is_poller => {
                    if poll_coverage(hub, s).ready {
                        Handover::Proven
                    } else {
                        Handover::Starting
                    }
                }
                Some(Mode::Poll) => {
                    let up_since = if old.ready { old.ready_at } else { None };
                    switching::native_to_pollers(up_since, poll_coverage(hub, s))
                }
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
                tracing::debug!(org = self.org, source = id, "stop source");
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
                    ::metrics::counter!(m::MODE_SWITCHES, m::label::TO => ServingMode::from(to).as_str()).increment(1);
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
}
