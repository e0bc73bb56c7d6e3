//! The send queue of one client connection, bounded in bytes.
//!
//! The hub pushes frames without ever waiting; the connection's task drains
//! them to the socket. A burst of events can be many times larger than
//! `max_queue_bytes` and still arrive in one hub turn (a V1 answer after an
//! outage, a resumed native backlog), before the connection could write
//! anything; closing then would cut off clients that read. So an event
//! message that does not fit is not queued: the queue becomes *lagging*
//! from the position before it and drops the org's later event messages.
//! Once the connection has written what is queued it asks the hub for a
//! catch-up (see [`SessionQueue::catch_up_due`]): one page of at most
//! `max_queue_bytes` from the replay window at a time, until it has reached
//! the head and live messages are queued again. A client that stopped
//! reading never asks; the hub closes its queue (1013) once its position
//! has left the replay window. One stalled client so costs at most its
//! queue and one page, and a client that reads is never cut off by size.
//!
//! Control messages (keep-alives, errors) are queued while lagging with
//! [`CONTROL_SLACK`] of room beyond the bound; past that, or when a control
//! message alone overflows a queue that is not lagging, the queue drops
//! what it holds and closes (1013).
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
    /// The position of the message's first event.
    pub first_seq: u64,
    /// The source that served the events ("poll" or "native").
    pub mode: &'static str,
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
    /// position is the message's `seq`); None for no events. `live` is
    /// false for a replay.
    pub fn events<T: AsRef<Stored>>(
        events: &[T],
        service_name: &str,
        mode: &'static str,
        live: bool,
    ) -> Option<Frame> {
        let first = events.first()?.as_ref();
        let last = events.last()?.as_ref();
        Some(Frame {
            ws_ping: false,
            text: protocol::event_message(
                service_name,
                events.iter().map(|e| &*e.as_ref().raw),
                last.seq,
            )
            .into(),
            delivery: Some(Delivery {
                service: last.service,
                first_seq: first.seq,
                mode,
                count: events.len() as u64,
                live_origins_ms: events
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|e| live && e.live)
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

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// An event message left to the catch-up: the queue is lagging after
    /// this position.
    Lagging(u64),
    /// The queue is closed.
    Closed,
}

/// Why the queue stopped accepting frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClosed {
    /// The client fell more than `max_queue_bytes` behind.
    Overflow,
}

/// Room for control messages beyond `max_queue_bytes` while the queue is
/// lagging (it is then full of event messages by definition).
pub const CONTROL_SLACK: usize = 64 * 1024;

/// A queue that dropped event messages: they are caught up from the
/// replay window (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Lag {
    /// The position after which the client has not been sent events.
    after: u64,
    /// The connection asked the hub for the next page.
    requested: bool,
}

struct Inner {
    frames: VecDeque<Outgoing>,
    bytes: usize,
    closed: Option<QueueClosed>,
    lag: Option<Lag>,
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
                lag: None,
            }),
            notify: Notify::new(),
            max_bytes,
        })
    }

    /// Appends a frame; returns false when the queue is (now) closed.
    pub fn push(&self, frame: Frame) -> bool {
        !matches!(self.offer(frame), Pushed::Closed)
    }

    /// Appends a frame and says what became of it.
    pub fn offer(&self, frame: Frame) -> Pushed {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return Pushed::Closed;
        }
        let len = frame.text.len();
        let bytes = g.bytes.saturating_add(len);
        if let Some(d) = &frame.delivery {
            // An event message: the replay window holds its events, so one
            // that does not fit is caught up from there (module docs).
            if let Some(lag) = g.lag {
                return Pushed::Lagging(lag.after);
            }
            if bytes > self.max_bytes {
                let after = d.first_seq.saturating_sub(1);
                g.lag = Some(Lag {
                    after,
                    requested: false,
                });
                return Pushed::Lagging(after);
            }
        } else {
            let slack = if g.lag.is_some() { CONTROL_SLACK } else { 0 };
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

    /// Closes the queue for a client too far behind (1013) and frees what
    /// it holds.
    pub fn close_overflow(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.frames.clear();
        g.frames.shrink_to_fit();
        g.bytes = 0;
        g.lag = None;
        g.closed = Some(QueueClosed::Overflow);
        drop(g);
        self.notify.notify_one();
    }

    /// The position after which a lagging queue dropped event messages
    /// (None when it is not lagging).
    pub fn lagging_after(&self) -> Option<u64> {
        self.inner
            .lock()
            .map(|g| g.lag.map(|l| l.after))
            .unwrap_or(None)
    }

    /// True once per page when the queue is lagging and the connection has
    /// written everything queued: it should then ask the hub for the next
    /// page of the catch-up (`HubMsg::CatchUp`).
    pub fn catch_up_due(&self) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() || !g.frames.is_empty() {
            return false;
        }
        match &mut g.lag {
            Some(lag) if !lag.requested => {
                lag.requested = true;
                true
            }
            _ => false,
        }
    }

    /// Queues one page of a catch-up (events after the lag position, from
    /// the replay window). With `reached_head` the queue takes live event
    /// messages again; otherwise it stays lagging after the page's last event.
    pub fn push_catch_up(&self, page: Vec<Arc<Stored>>, reached_head: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.closed.is_some() {
            return;
        }
        let Some(lag) = g.lag else { return };
        g.lag = if reached_head {
            None
        } else {
            Some(Lag {
                after: page.last().map_or(lag.after, |e| e.seq),
                requested: false,
            })
        };
        if !page.is_empty() {
            g.frames.push_back(Outgoing::Replay(page));
        }
        drop(g);
        self.notify.notify_one();
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

    fn stored(seq: u64, pad: usize) -> Arc<Stored> {
        let raw = format!(r#"{{"eventId":"e{seq}","pad":"{}"}}"#, "x".repeat(pad));
        Arc::new(Stored {
            seq,
            service: 0,
            raw: serde_json::value::RawValue::from_string(raw).unwrap(),
            property: None,
            origin_ms: 0,
            live: true,
        })
    }

    fn event(seq: u64, pad: usize) -> Frame {
        Frame::events(&[stored(seq, pad)], "finance", "poll", true).unwrap()
    }

    /// A burst larger than the queue makes it lag instead of closing; the
    /// catch-up pages move it forward until it reaches the head.
    #[test]
    fn an_event_burst_past_the_bound_lags_and_catches_up() {
        let q = SessionQueue::new(2 * event(1, 100).text.len() + 10);
        assert_eq!(q.offer(event(1, 100)), Pushed::Queued);
        assert_eq!(q.offer(event(2, 100)), Pushed::Queued);
        // The third does not fit: dropped, the queue lags after 2.
        assert_eq!(q.offer(event(3, 100)), Pushed::Lagging(2));
        assert_eq!(q.offer(event(4, 10)), Pushed::Lagging(2));
        assert_eq!(q.is_closed(), None);
        // Control messages still fit (with slack); no catch-up before the
        // queued messages are written.
        assert!(q.push(Frame::control("x".repeat(200))));
        assert!(!q.catch_up_due());
        let mut out = Vec::new();
        q.take(&mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(q.catch_up_due());
        assert!(!q.catch_up_due(), "asked once per page");
        q.push_catch_up(vec![stored(3, 100)], false);
        assert_eq!(q.lagging_after(), Some(3));
        out.clear();
        q.take(&mut out).unwrap();
        assert!(matches!(&out[..], [Outgoing::Replay(p)] if p[0].seq == 3));
        assert!(q.catch_up_due());
        q.push_catch_up(vec![stored(4, 10)], true);
        assert_eq!(q.lagging_after(), None);
        assert_eq!(q.offer(event(5, 10)), Pushed::Queued);
    }

    /// A lagging queue gives control messages only a bounded slack.
    #[test]
    fn control_messages_past_the_slack_close_a_lagging_queue() {
        let q = SessionQueue::new(event(1, 200).text.len() + 10);
        assert_eq!(q.offer(event(1, 200)), Pushed::Queued);
        assert_eq!(q.offer(event(2, 200)), Pushed::Lagging(1));
        assert!(q.push(Frame::control("x".repeat(CONTROL_SLACK / 2))));
        assert!(!q.push(Frame::control("x".repeat(CONTROL_SLACK))));
        assert_eq!(q.is_closed(), Some(QueueClosed::Overflow));
        assert_eq!(q.queued_bytes(), 0);
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
