//! Make-before-break: when an old source of a service may stop (CONTRACT
//! 3.3). The hub starts a replacement first and asks these rules, at every
//! step, whether the old source's coverage now provably overlaps the new
//! one's; until then both run and the hub de-duplicates what they deliver.
//!
//! ```text
//!  old poller ──► Starting ──(native ready at T)──► Overlapping{since: T}
//!                     ──(answer to a request SENT at or after T)──► Proven: stop
//!  old native ──► Starting ──(new poller's first answer)──► Proven: stop
//! ```
//!
//! An answer that was in flight when the native link became ready is not
//! enough: its cut-off may predate the link's start, and events between
//! the two would be in neither. A new poller's first answer is enough for a
//! native link: the poller covers everything after its first request
//! arrived, and the link covered everything until then.

use tokio::time::Instant;

/// How far the replacement of one source has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The replacement does not cover anything yet: the old source runs.
    Starting,
    /// The replacement covers everything since `since`; the old source
    /// runs until its coverage provably reaches that moment.
    Overlapping { since: Instant },
    /// The two overlap: the old source may stop.
    Proven,
}

/// The handover of an old V1 poller to a native link that has been ready
/// since `native_ready_at` (None: not ready), given when the poller SENT
/// the newest request it has received an answer to.
pub fn poller_to_native(
    native_ready_at: Option<Instant>,
    answered_request_sent_at: Option<Instant>,
) -> Handover {
    match (native_ready_at, answered_request_sent_at) {
        (None, _) => Handover::Starting,
        (Some(since), Some(sent)) if sent >= since => Handover::Proven,
        (Some(since), _) => Handover::Overlapping { since },
    }
}

/// The handover of an old native link to new pollers: proven once every
/// one of them has had its first answer (`ready`).
pub fn native_to_pollers(pollers_ready: bool) -> Handover {
    if pollers_ready {
        Handover::Proven
    } else {
        Handover::Starting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_poller_stops_only_after_answering_a_request_sent_after_native_was_ready() {
        let t0 = Instant::now();
        let ready = t0 + Duration::from_secs(5);
        assert_eq!(poller_to_native(None, Some(ready)), Handover::Starting);
        // The answer in flight when native became ready is not enough.
        assert_eq!(
            poller_to_native(Some(ready), Some(t0)),
            Handover::Overlapping { since: ready }
        );
        assert_eq!(
            poller_to_native(Some(ready), None),
            Handover::Overlapping { since: ready }
        );
        assert_eq!(
            poller_to_native(Some(ready), Some(ready + Duration::from_millis(1))),
            Handover::Proven
        );
    }

    #[test]
    fn a_native_link_stops_after_the_pollers_first_answer() {
        assert_eq!(native_to_pollers(false), Handover::Starting);
        assert_eq!(native_to_pollers(true), Handover::Proven);
    }
}
