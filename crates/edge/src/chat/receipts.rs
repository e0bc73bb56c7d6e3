//! Read-receipt coalescing for one user in one room: acks arrive as fast as
//! the client sends them, the backend gets at most one `POST receipts` per
//! `chat.receipt_flush_ms`, always carrying the latest acked message, and
//! never two at once (so a slow answer cannot overwrite a newer receipt).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// A receipt ready to be stored: the message id and the token to store it with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Receipt {
    pub(crate) message_id: Value,
    pub(crate) token: Arc<str>,
}

/// What the room should do next for this slot.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Store this receipt now.
    Store(Receipt),
    /// Wake at this instant and call [`ReceiptSlot::due`].
    WakeAt(Instant),
    /// Nothing to do now (a wake-up or a store is already under way).
    Wait,
}

/// The receipt state of one user in one room.
#[derive(Debug, Default)]
pub(crate) struct ReceiptSlot {
    pending: Option<Receipt>,
    /// No store starts before this instant.
    next_allowed: Option<Instant>,
    /// A wake-up is scheduled.
    scheduled: bool,
    /// A store is in flight.
    in_flight: bool,
}

impl ReceiptSlot {
    /// The client acked a message: it replaces whatever was pending.
    pub(crate) fn ack(&mut self, receipt: Receipt, now: Instant, interval: Duration) -> Next {
        self.pending = Some(receipt);
        self.next(now, interval)
    }

    /// The scheduled wake-up came.
    pub(crate) fn due(&mut self, now: Instant, interval: Duration) -> Next {
        self.scheduled = false;
        self.next(now, interval)
    }

    /// The store in flight finished (whatever its result).
    pub(crate) fn stored(&mut self, now: Instant, interval: Duration) -> Next {
        self.in_flight = false;
        self.next(now, interval)
    }

    fn next(&mut self, now: Instant, interval: Duration) -> Next {
        if self.pending.is_none() || self.in_flight {
            return Next::Wait;
        }
        match self.next_allowed {
            Some(at) if now < at => {
                if self.scheduled {
                    Next::Wait
                } else {
                    self.scheduled = true;
                    Next::WakeAt(at)
                }
            }
            _ => match self.pending.take() {
                Some(r) => {
                    self.next_allowed = Some(now + interval);
                    self.in_flight = true;
                    Next::Store(r)
                }
                None => Next::Wait,
            },
        }
    }

    /// Nothing pending or in flight and the interval has passed: the slot
    /// may be forgotten.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.pending.is_none()
            && !self.scheduled
            && !self.in_flight
            && self.next_allowed.is_none_or(|at| now >= at)
    }

    /// A receipt waits to be stored, or is being stored.
    pub(crate) fn is_busy(&self) -> bool {
        self.pending.is_some() || self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: u64) -> Receipt {
        Receipt {
            message_id: Value::from(id),
            token: "t".into(),
        }
    }

    #[test]
    fn coalesces_to_the_latest_once_per_interval() {
        let iv = Duration::from_millis(1000);
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut s = ReceiptSlot::default();
        assert_eq!(s.ack(r(1), t0, iv), Next::Store(r(1)));
        assert_eq!(s.ack(r(2), t0 + ms(10), iv), Next::Wait, "one in flight");
        assert_eq!(s.stored(t0 + ms(20), iv), Next::WakeAt(t0 + iv));
        assert_eq!(s.ack(r(3), t0 + ms(30), iv), Next::Wait, "coalesced");
        assert!(!s.is_idle(t0 + ms(40)));
        assert_eq!(s.due(t0 + iv, iv), Next::Store(r(3)));
        assert_eq!(s.due(t0 + iv, iv), Next::Wait);
        // A store slower than the interval: the next waits for it.
        assert_eq!(s.ack(r(4), t0 + iv + ms(1), iv), Next::Wait);
        assert_eq!(s.due(t0 + iv + iv, iv), Next::Wait);
        assert_eq!(s.stored(t0 + iv * 3, iv), Next::Store(r(4)));
        assert_eq!(s.stored(t0 + iv * 3 + ms(5), iv), Next::Wait);
        assert!(s.is_idle(t0 + iv * 4));
    }
}
