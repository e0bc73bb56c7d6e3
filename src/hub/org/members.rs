//! The org's connections: joining (ack, resume, replay), leaving, the
//! views they read through, errors addressed to them, and the process-wide
//! connections-by-mode counts.

use tokio::time::Instant;

use super::*;

impl OrgHub {
    pub(super) fn join(&mut self, req: JoinRequest) {
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

    /// Answers a reader of the window (see [`ReadRequest`]).
    pub(super) fn read(&mut self, req: ReadRequest) {
        let view = ViewKey {
            services: req.services,
            property: req.property,
        };
        let found = self
            .replay
            .read(&view, req.after, req.max_events, req.max_bytes, self.seq);
        let _ = req.reply.send(ReadReply {
            events: found.events,
            complete: found.complete && self.can_resume(req.after),
            head: self.seq,
            heads: self.heads.subscribe(),
        });
    }

    pub(super) fn leave(&mut self, id: SessionId) {
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

    pub(super) fn ack_mode(&self, services: &[u16]) -> &'static str {
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
    pub(super) fn can_resume(&self, n: u64) -> bool {
        n >= self.base_seq && n <= self.seq && self.replay.covers(n, self.seq)
    }

    /// Queues the window's events after `after` for a resuming client; the
    /// connection renders them into messages as it writes.
    pub(super) fn replay_to(&self, q: &SessionQueue, view: &ViewKey, after: u64) {
        let read = self
            .replay
            .read(view, after, usize::MAX, usize::MAX, self.seq);
        q.push_replay(read.events);
    }

    pub(super) fn broadcast(&self, frame: Frame) {
        for m in self.members.values() {
            m.queue.push(frame.clone());
        }
    }

    pub(super) fn send_error(&mut self, service: u16, code: ErrorCode, message: &str) {
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

    /// How the slots serve a set of services now.
    pub(super) fn serving_class(&self, services: &[u16]) -> &'static str {
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
    pub(super) fn classify(&mut self, id: SessionId) {
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
}
