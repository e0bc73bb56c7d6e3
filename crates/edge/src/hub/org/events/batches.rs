//! Batches: pending events flushed when a batch is full or due, stored in
//! the replay window, and serialised once per view into the event frames
//! pushed to the members.

use std::sync::Arc;

use tokio::time::Instant;

use super::*;

impl OrgHub {
    /// Sends what is pending. Adaptive batching: when the hub has drained
    /// everything that arrived together, events go out at once (latency);
    /// while messages keep queueing up (`busy`), a service's batch grows
    /// until `batch_max_events` or until its oldest event has waited
    /// `batch_window_ms` (throughput, and the contract's upper bound).
    pub(in crate::hub::org) fn flush_due(&mut self, now: Instant, busy: bool) {
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

    pub(in crate::hub::org) fn flush(&mut self, service: u16) {
        if self.shared() {
            self.flush_shared();
            return;
        }
        let slot = &mut self.slots[service as usize];
        let pending = std::mem::take(&mut slot.pending);
        slot.pending_since = None;
        let mut stored = Vec::with_capacity(pending.len());
        for ev in pending {
            // Already delivered from the shared stream before Redis failed.
            if !self.delivered.insert(&ev.id) {
                continue;
            }
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
        self.publish(stored);
        if let Some(link) = self.cluster.as_ref().and_then(|c| c.link.as_ref()) {
            link.set_floor(self.seq);
        }
    }

    /// Keeps positioned events for replay and pushes them to every view.
    pub(in crate::hub::org) fn publish(&mut self, stored: Vec<Arc<Stored>>) {
        if stored.is_empty() {
            return;
        }
        for e in &stored {
            self.replay.push(e.clone());
        }
        self.heads.send_replace(self.seq);
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
                    // A client behind by more than its queue gets the
                    // events themselves, shared (hub::queue).
                    if q.offer(frame.clone()) == Pushed::Lagging {
                        q.push_lagged(batch.iter().map(|e| Arc::clone(e)).collect());
                    }
                }
            }
        }
    }

    /// One live `event` message of events of one service.
    pub(in crate::hub::org) fn event_frame(&self, events: &[&Arc<Stored>]) -> Option<Frame> {
        let service = events.last()?.service as usize;
        let mode = self.slots[service]
            .serving
            .map_or(ServingMode::Poll, ServingMode::from);
        Frame::events(events, &self.cfg.services[service].name, Some(mode))
    }
}
