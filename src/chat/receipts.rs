//! Read-receipt coalescing for one user in one room: acks arrive as fast as
//! the client sends them, the backend gets at most one `POST receipts` per
//! `chat.receipt_flush_ms`, always carrying the latest acked message.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// A receipt ready to be stored: the message id and the token to store it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub message_id: Value,
    pub token: Arc<str>,
}

/// What the room should do after an ack.
#[derive(Debug, PartialEq)]
pub enum AckOutcome {
    /// Store this receipt now.
    FlushNow(Receipt),
    /// Wake at this instant to flush (schedule a timer).
    FlushAt(Instant),
    /// A flush is already scheduled; the pending receipt was replaced.
    Coalesced,
}

/// The receipt state of one user in one room.
#[derive(Debug, Default)]
pub struct ReceiptSlot {
    pending: Option<Receipt>,
    /// No flush before this instant.
    next_allowed: Option<Instant>,
    scheduled: bool,
}

impl ReceiptSlot {
    pub fn ack(&mut self, receipt: Receipt, now: Instant, interval: Duration) -> AckOutcome {
        match self.next_allowed {
            Some(at) if now < at => {
                self.pending = Some(receipt);
                if self.scheduled {
                    AckOutcome::Coalesced
                } else {
                    self.scheduled = true;
                    AckOutcome::FlushAt(at)
                }
            }
            _ => {
                self.next_allowed = Some(now + interval);
                self.pending = None;
                AckOutcome::FlushNow(receipt)
            }
        }
    }

    /// The scheduled flush is due: the receipt to store, if any.
    pub fn due(&mut self, now: Instant, interval: Duration) -> Option<Receipt> {
        self.scheduled = false;
        let r = self.pending.take()?;
        self.next_allowed = Some(now + interval);
        Some(r)
    }

    /// Nothing pending and the interval has passed: the slot may be forgotten.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.pending.is_none() && !self.scheduled && self.next_allowed.is_none_or(|at| now >= at)
    }

    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
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
        let t0 = Instant::now();
        let mut s = ReceiptSlot::default();
        assert_eq!(s.ack(r(1), t0, iv), AckOutcome::FlushNow(r(1)));
        let at = t0 + iv;
        assert_eq!(
            s.ack(r(2), t0 + Duration::from_millis(10), iv),
            AckOutcome::FlushAt(at)
        );
        assert_eq!(
            s.ack(r(3), t0 + Duration::from_millis(20), iv),
            AckOutcome::Coalesced
        );
        assert!(!s.is_idle(t0 + Duration::from_millis(30)));
        assert_eq!(s.due(at, iv), Some(r(3)));
        assert!(s.due(at, iv).is_none());
        // Within the next interval, acks wait again.
        assert_eq!(
            s.ack(r(4), at + Duration::from_millis(1), iv),
            AckOutcome::FlushAt(at + iv)
        );
        assert_eq!(s.due(at + iv, iv), Some(r(4)));
        assert!(s.is_idle(at + iv + iv));
    }
}
