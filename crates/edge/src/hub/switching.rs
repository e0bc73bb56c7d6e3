//! Make-before-break: when an old source of a service may stop (CONTRACT
//! 3.3). The hub starts a replacement first and asks these rules, at every
//! step, whether the old source's coverage now provably overlaps the new
//! one's; until then both run and the hub de-duplicates what they deliver.
//!
//! ```text
//!  old poller ──► Starting ──(native ready at T)──► Overlapping{since: T}
//!                     ──(answer to a request SENT at or after T)──► Proven: stop
//!  old native ──► Starting ──(new pollers' first answers, link up)──► Proven: stop
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

/// What the new pollers of a service have shown of their coverage.
#[derive(Debug, Clone, Copy)]
pub struct PollerCoverage {
    /// Every poller has had its first answer.
    pub ready: bool,
    /// When the earliest first request (among those answered) was sent.
    pub first_request: Option<Instant>,
    /// When the newest answered request was sent, the oldest among pollers.
    pub latest_request: Option<Instant>,
}

/// The handover of an old native link, up since `native_up_since` (None:
/// down, reconnecting), to new pollers. The link must have covered
/// everything until the pollers' coverage starts: either it was up since
/// before their first request, or (it dropped and came back, resuming with
/// its `lastSeq`) they have answered a request sent after it came back. A
/// link that is down is kept until it is back: what it missed is only in
/// its resume.
pub fn native_to_pollers(native_up_since: Option<Instant>, pollers: PollerCoverage) -> Handover {
    let Some(up) = native_up_since else {
        return Handover::Starting;
    };
    if !pollers.ready {
        return Handover::Starting;
    }
    let covered_before = pollers.first_request.is_some_and(|first| up <= first);
    let caught_up_since = pollers.latest_request.is_some_and(|latest| latest >= up);
    if covered_before || caught_up_since {
        Handover::Proven
    } else {
        Handover::Overlapping { since: up }
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
    fn a_native_link_stops_after_the_pollers_first_answer_while_up() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        let answered = PollerCoverage {
            ready: true,
            first_request: Some(later),
            latest_request: Some(later),
        };
        let waiting = PollerCoverage {
            ready: false,
            first_request: None,
            latest_request: None,
        };
        assert_eq!(native_to_pollers(Some(t0), waiting), Handover::Starting);
        assert_eq!(native_to_pollers(Some(t0), answered), Handover::Proven);
        // Down: kept until it is back and has resumed.
        assert_eq!(native_to_pollers(None, answered), Handover::Starting);
        // Back after the pollers' requests: one more answer is needed.
        let back = later + Duration::from_secs(1);
        assert_eq!(
            native_to_pollers(Some(back), answered),
            Handover::Overlapping { since: back }
        );
        let after_back = PollerCoverage {
            latest_request: Some(back + Duration::from_millis(1)),
            ..answered
        };
        assert_eq!(native_to_pollers(Some(back), after_back), Handover::Proven);
    }
}
