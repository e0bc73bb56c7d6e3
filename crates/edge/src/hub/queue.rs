//! The send queue of one client connection, bounded in bytes.
//!
//! The hub pushes frames without ever waiting; the connection's task drains
//! them to the socket. When a client falls further behind than
//! `max_queue_bytes`, the queue drops what it holds, marks itself
//! overflowed, and the connection closes with 1013 (the client resumes with
//! lastSeq). One stalled client so costs at most its queue.
//!
//! A resume's replay is queued as one [`Outgoing::Replay`] item holding the
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
pub struct Frame {
    pub text: Utf8Bytes,
    /// For event messages: the service index and the origin time (epoch ms)
    /// of each event, for the latency measurement at write time.
    pub delivery: Option<Delivery>,
    /// The keep-alive `ping` message: a WebSocket Ping frame follows it.
    pub ws_ping: bool,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub service: u16,
    /// How the events were served (poll or native).
    pub mode: ServingMode,
    /// Events in the message.
    pub count: u64,
    /// The origin times of the live events among them: replayed events and
    /// events a source caught up on after an absence are not live, and only
    /// live deliveries count in the latency.
    pub live_origins_ms: Arc<[i64]>,
}

impl Frame {
    pub fn control(text: String) -> Frame {
        Frame {
            text: text.into(),
            delivery: None,
            ws_ping: false,
        }
    }

    /// The periodic `ping` message, followed by a WebSocket Ping frame.
    pub fn keepalive(text: String) -> Frame {
        Frame {
            ws_ping: true,
            ..Frame::control(text)
        }
    }

    /// One `event` message of events of one service (the last one's
    /// position is the message's `seq`); None for no events. `live` is how
    /// the hub's sources serve them now, None for a page of a replay (whose
    /// events the connection counts itself: the frame carries no delivery).
    pub fn events<T: AsRef<Stored>>(
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
pub enum Outgoing {
    /// A serialised message.
    Frame(Frame),
    /// Replayed events (already filtered for the connection), rendered
    /// into messages when written.
    Replay(Vec<Arc<Stored>>),
}

/// Why the queue stopped accepting frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClosed {
    /// The client fell more than `max_queue_bytes` behind.
    Overflow,
}

struct Inner {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<QueueClosed>,
}

pub struct SessionQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    max_bytes: usize,
}

impl SessionQueue {
    pub fn new(max_bytes: usize) -> Arc<SessionQueue> {
        Arc::new(SessionQueue {
            inner: Mutex::new(Inner {
                frames: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            notify: Notify::new(),
            max_bytes,
        })
    }

    /// Appends a frame; returns false when the queue is (now) closed.
    pub fn push(&self, frame: Frame) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return false;
        }
        let len = frame.text.len();
        if g.bytes + len > self.max_bytes {
            g.frames.clear();
            g.frames.shrink_to_fit();
            g.bytes = 0;
            g.closed = Some(QueueClosed::Overflow);
            drop(g);
            self.notify.notify_one();
            return false;
        }
        g.bytes += len;
        g.frames.push_back(Outgoing::Frame(frame));
        let was_empty = g.frames.len() == 1;
        drop(g);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Queues replayed events; they are not counted against `max_queue_bytes`
    /// (they are shared with the replay window, which is bounded).
    pub fn push_replay(&self, events: Vec<Arc<Stored>>) -> bool {
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

    /// Takes everything queued, or the reason the queue closed.
    pub fn take(&self, out: &mut Vec<Outgoing>) -> Result<(), QueueClosed> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.closed {
            return Err(c);
        }
        out.extend(g.frames.drain(..));
        g.bytes = 0;
        if g.frames.capacity() > 64 {
            g.frames.shrink_to_fit();
        }
        Ok(())
    }

    pub fn is_closed(&self) -> Option<QueueClosed> {
        self.inner.lock().map(|g| g.closed).unwrap_or(None)
    }

    /// Resolves when frames were pushed or the queue closed.
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    pub fn queued_bytes(&self) -> usize {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_closes_and_frees() {
        let q = SessionQueue::new(10);
        assert!(q.push(Frame::control("12345".into())));
        assert!(q.push(Frame::control("12345".into())));
        assert_eq!(q.queued_bytes(), 10);
        assert!(!q.push(Frame::control("1".into())));
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(q.is_closed(), Some(QueueClosed::Overflow));
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), Err(QueueClosed::Overflow));
        assert!(!q.push(Frame::control("1".into())));
    }

    #[test]
    fn take_drains_in_order() {
        let q = SessionQueue::new(100);
        q.push(Frame::control("a".into()));
        q.push(Frame::control("b".into()));
        let mut out = Vec::new();
        q.take(&mut out).unwrap();
        let texts: Vec<&str> = out
            .iter()
            .map(|f| match f {
                Outgoing::Frame(f) => f.text.as_str(),
                Outgoing::Replay(_) => "replay",
            })
            .collect();
        assert_eq!(texts, ["a", "b"]);
        assert_eq!(q.queued_bytes(), 0);
    }
}
