//! Delivery in cluster mode: the owner's flush appends what the hub
//! accepted to the shared stream (falling back to local delivery when the
//! append queue is full), and every replica delivers what its reader read
//! in the stream's positions, or what it accepted itself in local ones.

use super::*;

impl OrgHub {
    /// The owner's flush: everything pending goes to Redis in one append,
    /// with the positions the sources reached; it comes back through the
    /// reader. Not the owner: nothing is delivered from here.
    pub(in crate::hub::org) fn flush_shared(&mut self) {
        let owner = self.cluster.as_ref().is_some_and(|c| c.owner);
        if !owner {
            self.drop_pending();
            return;
        }
        let mut events = Vec::new();
        let mut positions = SourcePositions {
            cursors: Vec::new(),
            native: self.native_seq,
        };
        for (s, slot) in self.slots.iter_mut().enumerate() {
            if slot.pending.is_empty() {
                continue;
            }
            slot.pending_since = None;
            if let (Some(c), Ok(s)) = (&slot.cursor, u16::try_from(s)) {
                positions.cursors.push((s, c.clone()));
            }
            let service = s as u16;
            events.extend(slot.pending.drain(..).map(|e| Outgoing {
                id: e.id,
                service,
                raw: e.raw,
                property: e.property,
                origin_ms: e.origin_ms,
                live: e.live,
            }));
        }
        if events.is_empty() {
            return;
        }
        let Some(link) = self.cluster.as_ref().and_then(|c| c.link.as_ref()) else {
            return;
        };
        if let Err(full) = link.append(AppendBatch { events, positions }) {
            tracing::warn!(
                org = self.org,
                "Redis does not keep up with the org's appends (cluster.append_queue)"
            );
            ::metrics::counter!(m::CLUSTER_APPEND_OVERFLOWS).increment(1);
            self.go_local();
            self.deliver_local(full.0.events);
        }
    }

    /// Delivers events (accepted here) with local positions.
    pub(super) fn deliver_local(&mut self, events: Vec<Outgoing>) {
        let mut stored = Vec::with_capacity(events.len());
        for e in events {
            if !self.delivered.insert(&e.id) {
                continue;
            }
            self.seq += 1;
            stored.push(Arc::new(Stored {
                seq: self.seq,
                service: e.service,
                raw: e.raw,
                property: e.property,
                origin_ms: e.origin_ms,
                live: e.live,
            }));
        }
        self.publish(stored);
    }

    /// Delivers what the reader read, in the stream's positions.
    pub(super) fn deliver_stream(&mut self, events: Vec<StreamEvent>) {
        if !self.shared() {
            return;
        }
        let mut stored = Vec::with_capacity(events.len());
        for e in events {
            if e.seq <= self.seq {
                continue;
            }
            if e.seq > self.seq.saturating_add(1) {
                // Positions jumped: what lies between is not provably in
                // this window. Flush what is gathered, then restart it.
                self.publish(std::mem::take(&mut stored));
                self.boundary();
            }
            self.seq = e.seq;
            // A replica that has to serve on its own starts its sources
            // where the owner's stood after what this one has read.
            if !self.cluster.as_ref().is_some_and(|c| c.owner) {
                match &e.after {
                    Some(SourceAfter::Cursor(c)) => {
                        if let Some(slot) = self.slots.get_mut(e.service as usize) {
                            slot.cursor = Some(c.clone());
                        }
                    }
                    Some(SourceAfter::Native(n)) => self.native_seq = Some(*n),
                    None => {}
                }
            }
            if !self.delivered.insert(&e.id) {
                continue;
            }
            stored.push(Arc::new(Stored {
                seq: e.seq,
                service: e.service,
                raw: e.raw,
                property: e.property,
                origin_ms: e.origin_ms,
                live: e.live,
            }));
        }
        self.publish(stored);
        self.heads.send_replace(self.seq);
        self.release_ahead(Instant::now(), false);
    }
}
