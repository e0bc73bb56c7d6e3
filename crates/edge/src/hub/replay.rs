//! Positions, the replay window and batching of one org's stream.
//!
//! Every accepted event becomes a [`Stored`] event with its position; the
//! window keeps the newest of them, bounded both in events and in bytes
//! (`stream.replay_events`, `stream.replay_bytes`). Messages are cut from
//! runs of stored events by [`batches`], bounded in events and in bytes
//! (`stream.batch_max_events`, `stream.batch_max_bytes`); an event larger
//! than the byte bound travels alone.
//!
//! [`ReplayWindow::read`] is the query a reader that is not a live session
//! (a resume, a V1 facade) needs: "events of these services after position
//! P, at most N events and B bytes".

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::protocol::PropertyKey;

/// An accepted event with its position in the org's stream.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) service: u16,
    pub(crate) raw: Box<RawValue>,
    pub(crate) property: Option<PropertyKey>,
    /// The event's origin time (epoch ms), for the latency of live deliveries.
    pub(crate) origin_ms: i64,
    /// False for events a source caught up on after an absence (their age
    /// is not a delivery latency).
    pub(crate) live: bool,
}

impl Stored {
    /// Bytes this event adds to a message.
    pub(crate) fn bytes(&self) -> usize {
        self.raw.get().len()
    }
}

/// Which events a reader wants: sorted service indexes and a property filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ViewKey {
    pub(crate) services: Vec<u16>,
    pub(crate) property: Option<PropertyKey>,
}

impl ViewKey {
    pub(crate) fn wants(&self, e: &Stored) -> bool {
        self.services.binary_search(&e.service).is_ok()
            && match (&self.property, &e.property) {
                (Some(want), Some(has)) => want == has,
                _ => true,
            }
    }
}

/// The newest events of an org, bounded in count and in bytes.
pub(crate) struct ReplayWindow {
    events: VecDeque<Arc<Stored>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
}

/// What [`ReplayWindow::read`] found.
#[derive(Debug)]
pub(crate) struct ReplayRead {
    pub(crate) events: Vec<Arc<Stored>>,
    /// False when events after the asked position already left the window.
    pub(crate) complete: bool,
}

impl ReplayWindow {
    pub(crate) fn new(max_events: usize, max_bytes: usize) -> ReplayWindow {
        ReplayWindow {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
        }
    }

    /// Appends an event (positions only grow) and forgets the oldest until
    /// both bounds hold again.
    pub(crate) fn push(&mut self, e: Arc<Stored>) {
        self.bytes = self.bytes.saturating_add(e.bytes());
        self.events.push_back(e);
        while self.events.len() > self.max_events || self.bytes > self.max_bytes {
            match self.events.pop_front() {
                Some(old) => self.bytes = self.bytes.saturating_sub(old.bytes()),
                None => break,
            }
        }
    }

    /// True when every event after `after` up to `head` is still held.
    pub(crate) fn covers(&self, after: u64, head: u64) -> bool {
        match self.events.front() {
            Some(first) => first.seq <= after.saturating_add(1),
            // Nothing held: only "nothing happened since" is covered.
            None => after == head,
        }
    }

    /// Events after position `after` that `view` wants, at most `max_events`
    /// and `max_bytes` (the first event is always included, however large).
    pub(crate) fn read(
        &self,
        view: &ViewKey,
        after: u64,
        max_events: usize,
        max_bytes: usize,
        head: u64,
    ) -> ReplayRead {
        let start = self.events.partition_point(|e| e.seq <= after);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        for e in self.events.range(start..).filter(|e| view.wants(e)) {
            let next = bytes.saturating_add(e.bytes());
            if events.len() >= max_events || (!events.is_empty() && next > max_bytes) {
                break;
            }
            bytes = next;
            events.push(e.clone());
        }
        ReplayRead {
            events,
            complete: self.covers(after, head),
        }
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.events.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Cuts a run of events into messages: each message holds events of one
/// service, at most `max_events` of them and at most `max_bytes` of event
/// text (commas included); an event larger than `max_bytes` travels alone.
pub(crate) fn batches<T: AsRef<Stored>>(
    events: &[T],
    max_events: usize,
    max_bytes: usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (i, e) in events.iter().enumerate() {
        let e = e.as_ref();
        let size = e.bytes().saturating_add(1);
        if i > start {
            let prev = events[i - 1].as_ref();
            if prev.service != e.service
                || i - start >= max_events
                || bytes.saturating_add(size) > max_bytes
            {
                out.push(&events[start..i]);
                start = i;
                bytes = 0;
            }
        }
        bytes = bytes.saturating_add(size);
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, service: u16, size: usize) -> Arc<Stored> {
        let pad = "x".repeat(size.saturating_sub(20));
        let text = format!(r#"{{"eventId":"{seq:04}","p":"{pad}"}}"#);
        Arc::new(Stored {
            seq,
            service,
            raw: RawValue::from_string(text).unwrap(),
            property: None,
            origin_ms: 0,
            live: true,
        })
    }

    fn view(services: &[u16]) -> ViewKey {
        ViewKey {
            services: services.to_vec(),
            property: None,
        }
    }

    #[test]
    fn window_is_bounded_in_bytes_and_events() {
        let mut w = ReplayWindow::new(100, 1000);
        for seq in 1..=10 {
            w.push(ev(seq, 0, 300));
        }
        assert!(w.bytes() <= 1000);
        assert_eq!(w.held(), 3);
        assert!(w.covers(7, 10));
        assert!(!w.covers(6, 10));
        let mut w = ReplayWindow::new(2, 1 << 20);
        for seq in 1..=5 {
            w.push(ev(seq, 0, 30));
        }
        assert_eq!(w.held(), 2);
    }

    #[test]
    fn read_is_bounded_and_filtered() {
        let mut w = ReplayWindow::new(100, 1 << 20);
        for seq in 1..=10 {
            w.push(ev(seq, (seq % 2) as u16, 100));
        }
        let r = w.read(&view(&[0]), 3, 100, 1 << 20, 10);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [4, 6, 8, 10]);
        assert!(r.complete);
        let r = w.read(&view(&[0, 1]), 0, 3, 1 << 20, 10);
        assert_eq!(r.events.len(), 3);
        let r = w.read(&view(&[0, 1]), 0, 100, 250, 10);
        assert_eq!(r.events.len(), 2, "two 100-byte events fit 250 bytes");
        let r = w.read(&view(&[0, 1]), 0, 100, 10, 10);
        assert_eq!(r.events.len(), 1, "the first event always comes");
    }

    #[test]
    fn batches_respect_service_count_and_bytes() {
        let events: Vec<Arc<Stored>> = vec![
            ev(1, 0, 100),
            ev(2, 0, 100),
            ev(3, 0, 100),
            ev(4, 1, 100),
            ev(5, 1, 5000),
            ev(6, 1, 100),
        ];
        let sizes: Vec<Vec<u64>> = batches(&events, 2, 1000)
            .iter()
            .map(|b| b.iter().map(|e| e.seq).collect())
            .collect();
        assert_eq!(sizes, vec![vec![1, 2], vec![3], vec![4], vec![5], vec![6]]);
        let all: Vec<usize> = batches(&events, 100, 250).iter().map(|b| b.len()).collect();
        assert_eq!(all, [2, 1, 1, 1, 1]);
        assert!(batches::<Arc<Stored>>(&[], 10, 10).is_empty());
    }
}
