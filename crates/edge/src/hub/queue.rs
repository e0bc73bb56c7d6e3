//! The send queue of one client connection, bounded in bytes.
//!
//! The hub pushes frames without ever waiting; the connection's task drains
//! them to the socket. A burst of events can be many times larger than
//! `max_queue_bytes`, and larger than the org's replay window, and still
//! arrive in one hub turn (a V1 answer after a long upstream outage, a
//! resumed native backlog), before the connection could write anything;
//! closing then would cut off clients that read. So an event message that
//! does not fit is not queued as text: the queue becomes *lagging* and
//! takes that message's events, and every later one's, as shared pointers
//! to the hub's stored events (`Outgoing::Replay`, rendered into messages
//! as the connection writes them). They cost one pointer each: the events
//! themselves are the ones every other client of the org and the replay
//! window hold. Once the connection has taken everything queued, the queue
//! is no longer lagging.
//!
//! What a lagging queue pins is bounded by its lag budget
//! (`stream.replay_bytes`, counting each event's bytes plus
//! [`PIN_OVERHEAD`]): a client that stopped reading passes it and its queue
//! closes (1013, "resume with lastSeq"); it could not have resumed from
//! further behind anyway. The events pinned by the lagging clients of one
//! org are a suffix of its stream no longer than the budget, so they cost at
//! most one budget per org, however many clients stopped.
//!
//! Control messages (keep-alives, errors) are queued with [`CONTROL_SLACK`]
//! of room beyond the bound in a queue that carries events; past that the
//! queue drops what it holds and closes (1013).
//!
//! A resume's replay is queued as one `Outgoing::Replay` item holding the
//! window's shared events, not their text: the connection renders it into
//! messages as it writes, so a replay larger than the queue never closes a
//! client that reads (its cost is one pointer per event).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::replay::Stored;
use crate::metrics::ServingMode;
use crate::protocol;

/// One serialised server message, shared by every connection of a view.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) text: Utf8Bytes,
    /// For event messages: the service index and the origin time (epoch ms)
    /// of each event, for the latency measurement at write time.
    pub(crate) delivery: Option<Delivery>,
    /// The keep-alive `ping` message: a WebSocket Ping frame follows it.
    pub(crate) ws_ping: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) service: u16,
    /// How the events were served (poll or native).
    pub(crate) mode: ServingMode,
    /// Events in the message.
    pub(crate) count: u64,
    /// The origin times of the live events among them: replayed events and
    /// events a source caught up on after an absence are not live, and only
    /// live deliveries count in the latency.
    pub(crate) live_origins_ms: Arc<[i64]>,
}

impl Frame {
    pub(crate) fn control(text: String) -> Frame {
        Frame {
            text: text.into(),
            delivery: None,
            ws_ping: false,
        }
    }

    /// The periodic `ping` message, followed by a WebSocket Ping frame.
    pub(crate) fn keepalive(text: String) -> Frame {
        Frame {
            ws_ping: true,
            ..Frame::control(text)
        }
    }

    /// One `event` message of events of one service (the last one's
    /// position is the message's `seq`); None for no events. `live` is how
    /// the hub's sources serve them now, None for a page of a replay (whose
    /// events the connection counts itself: the frame carries no delivery).
    pub(crate) fn events<T: AsRef<Stored>>(
        events: &[T],
        service_name: &str,
        live: Option<ServingMode>,
    ) -> Option<Frame> {
        let last = events.last()?.as_ref();
        Some(Frame {
            ws_ping: false,
            text: protocol::event_message(
                service_name,
                events.iter().map(|e| &*e.as_ref().raw),
                last.seq,
            )
            .into(),
            delivery: live.map(|mode| Delivery {
                service: last.service,
                mode,
                count: events.len() as u64,
                live_origins_ms: events
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|e| e.live)
                    .map(|e| e.origin_ms)
                    .collect(),
            }),
        })
    }
}

/// One item of a connection's queue.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// A serialised message.
    Frame(Frame),
    /// Replayed events (already filtered for the connection), rendered
    /// into messages when written.
    Replay(Vec<Arc<Stored>>),
}

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// An event message not queued because the queue is lagging: its
    /// events go to [`SessionQueue::push_lagged`].
    Lagging,
    /// The queue is closed.
    Closed,
}

/// Why the queue stopped accepting frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueClosed {
    /// The client fell more than `max_queue_bytes` behind.
    Overflow,
}

/// What one pinned event counts against the lag budget besides its bytes
/// (the pointer and its share of the list), so a flood of tiny events is
/// bounded too.
pub const PIN_OVERHEAD: usize = 64;

/// Room for control messages beyond `max_queue_bytes` in a queue that
/// carries event messages: a keep-alive or an error arriving while a burst
/// fills the queue must not close a client that reads.
pub const CONTROL_SLACK: usize = 64 * 1024;

struct Inner {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<QueueClosed>,
    /// Set while event messages are taken as pinned events: what they
    /// count against the lag budget (see the module docs).
    lag: Option<usize>,
    /// Set by the first event message: from then on control messages get
    /// [`CONTROL_SLACK`] (a queue of control messages only, like a chat
    /// connection's, keeps its exact bound).
    carries_events: bool,
}

pub(crate) struct SessionQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    max_bytes: usize,
    lag_budget: usize,
}

impl SessionQueue {
    /// A queue of `max_bytes` that never lags: an event message that does
    /// not fit closes it (a chat connection, a V1 facade request).
    pub(crate) fn new(max_bytes: usize) -> Arc<SessionQueue> {
        Self::with_lag_budget(max_bytes, 0)
    }

    /// A stream connection's queue: past `max_bytes`, event messages are
    /// pinned as shared events up to `lag_budget` (module docs).
    pub(crate) fn with_lag_budget(max_bytes: usize, lag_budget: usize) -> Arc<SessionQueue> {
        Arc::new(SessionQueue {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                bytes: 0,
                closed: None,
                lag: None,
                carries_events: false,
            }),
            notify: Notify::new(),
            max_bytes,
            lag_budget,
        })
    }

    /// Appends a frame; returns false when the queue is (now) closed.
    pub(crate) fn push(&self, frame: Frame) -> bool {
        !matches!(self.offer(frame), Pushed::Closed)
    }

    /// Appends a frame and says what became of it.
    pub(crate) fn offer(&self, frame: Frame) -> Pushed {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return Pushed::Closed;
        }
        let len = frame.text.len();
        let bytes = g.bytes.saturating_add(len);
        if frame.delivery.is_some() {
            g.carries_events = true;
            // An event message that does not fit: its events are to be
            // pinned instead ([`SessionQueue::push_lagged`]).
            if g.lag.is_some() {
                return Pushed::Lagging;
            }
            if bytes > self.max_bytes {
                g.lag = Some(0);
                return Pushed::Lagging;
            }
        } else {
            let slack = if g.carries_events { CONTROL_SLACK } else { 0 };
            if bytes > self.max_bytes.saturating_add(slack) {
                drop(g);
                self.close_overflow();
                return Pushed::Closed;
            }
        }
        g.bytes = bytes;
        g.frames.push_back(Outgoing::Frame(frame));
        let was_empty = g.frames.len() == 1;
        drop(g);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Queues replayed events; they are not counted against `max_queue_bytes`
    /// (they are shared with the replay window, which is bounded).
    pub(crate) fn push_replay(&self, events: Vec<Arc<Stored>>) -> bool {
        if events.is_empty() {
            return true;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return false;
        }
        g.frames.push_back(Outgoing::Replay(events));
        let was_empty = g.frames.len() == 1;
        drop(g);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Closes the queue for a client too far behind (1013) and frees what
    /// it holds.
    pub(crate) fn close_overflow(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.frames.clear();
        g.frames.shrink_to_fit();
        g.bytes = 0;
        g.lag = None;
        g.closed = Some(QueueClosed::Overflow);
        drop(g);
        self.notify.notify_one();
    }

    /// Queues the events of a message that [`SessionQueue::offer`] answered
    /// `Lagging` for, as shared pointers; past the lag budget the queue
    /// closes (1013). Returns false when the queue is (now) closed.
    pub(crate) fn push_lagged(&self, events: Vec<Arc<Stored>>) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return false;
        }
        let cost = events.iter().fold(0usize, |a, e| {
            a.saturating_add(e.bytes()).saturating_add(PIN_OVERHEAD)
        });
        let pinned = g.lag.unwrap_or(0).saturating_add(cost);
        if pinned > self.lag_budget {
            drop(g);
            self.close_overflow();
            return false;
        }
        g.lag = Some(pinned);
        let was_empty = g.frames.is_empty();
        match g.frames.back_mut() {
            Some(Outgoing::Replay(list)) => list.extend(events),
            _ => g.frames.push_back(Outgoing::Replay(events)),
        }
        drop(g);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Takes everything queued, or the reason the queue closed.
    pub(crate) fn take(&self, out: &mut Vec<Outgoing>) -> Result<(), QueueClosed> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.closed {
            return Err(c);
        }
        out.extend(g.frames.drain(..));
        g.bytes = 0;
        // Everything pinned is the connection's now: no longer lagging.
        g.lag = None;
        if g.frames.capacity() > 64 {
            g.frames.shrink_to_fit();
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> Option<QueueClosed> {
        self.inner.lock().map(|g| g.closed).unwrap_or(None)
    }

    /// Resolves when frames were pushed or the queue closed.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }

    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
