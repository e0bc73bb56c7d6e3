//! Per-user limits of a room: the chat rate window (`chat.max_messages_per_s`)
//! and the typing throttle (one indicator per user per second). Pure state
//! driven by the room's clock, so it is tested without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The span both limits count over.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// A sliding one-second window of chat sends.
#[derive(Debug, Default)]
pub(crate) struct SendWindow {
    sent: VecDeque<Instant>,
}

impl SendWindow {
    /// Records a send at `now` when fewer than `max` happened in the last
    /// second; false (nothing recorded) otherwise.
    pub(crate) fn try_send(&mut self, now: Instant, max: usize) -> bool {
        while let Some(&t) = self.sent.front() {
            if now.saturating_duration_since(t) >= WINDOW {
                self.sent.pop_front();
            } else {
                break;
            }
        }
        if self.sent.len() >= max {
            return false;
        }
        self.sent.push_back(now);
        true
    }
}

/// At most one typing indicator per [`WINDOW`].
#[derive(Debug, Default)]
pub(crate) struct TypingThrottle {
    last: Option<Instant>,
}

impl TypingThrottle {
    /// True when an indicator may go out at `now` (and records it).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < WINDOW => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_slides() {
        let t0 = Instant::now();
        let mut w = SendWindow::default();
        for i in 0..5 {
            assert!(w.try_send(t0 + Duration::from_millis(i * 10), 5));
        }
        assert!(!w.try_send(t0 + Duration::from_millis(500), 5));
        // The first send leaves the window one second after it happened.
        assert!(w.try_send(t0 + Duration::from_millis(1000), 5));
        assert!(!w.try_send(t0 + Duration::from_millis(1005), 5));
    }

    #[test]
    fn typing_once_per_second() {
        let t0 = Instant::now();
        let mut t = TypingThrottle::default();
        assert!(t.allow(t0));
        assert!(!t.allow(t0 + Duration::from_millis(999)));
        assert!(t.allow(t0 + Duration::from_millis(1000)));
    }
}
