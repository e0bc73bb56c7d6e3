//! The bearer tokens of an org's live connections. Shared pollers and the
//! native link borrow one to talk to the backend; a token the backend
//! refuses is set aside and another connection's token is tried.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock;

/// A refused token is set aside for a while that starts at a few seconds
/// and doubles with each further refusal, up to a minute: a backend that
/// refused everything for a moment (an auth blip) gets the org's tokens
/// back within seconds of recovering, and a token it keeps refusing costs
/// at most one request a minute.
const FIRST_REFUSAL_PAUSE: Duration = Duration::from_secs(2);
const MAX_REFUSAL_PAUSE: Duration = Duration::from_secs(60);

fn refusal_pause(refusals: u32) -> Duration {
    let doublings = refusals.saturating_sub(1).min(5);
    FIRST_REFUSAL_PAUSE
        .saturating_mul(1 << doublings)
        .min(MAX_REFUSAL_PAUSE)
}

#[derive(Debug)]
struct Entry {
    session: u64,
    token: Arc<str>,
    expires_at: Option<u64>,
    refused_at: Option<Instant>,
    /// Refusals in a row (reset when the token is accepted again).
    refusals: u32,
}

/// The tokens of one org's live connections, by session.
#[derive(Debug, Default)]
pub(crate) struct TokenPool {
    entries: Mutex<Vec<Entry>>,
    /// The token of the last connection that left, and when it left: an
    /// org whose clients come and go (old clients' V1 polls through the
    /// facade leave between polls) keeps its sources for `hub_linger` on it
    /// instead of stopping and restarting them on every poll.
    last_left: Mutex<Option<(Entry, Instant)>>,
}

impl TokenPool {
    /// Adds a connection's token (`expires_at`: epoch seconds).
    pub(crate) fn add(&self, session: u64, token: Arc<str>, expires_at: Option<u64>) {
        if let Ok(mut e) = self.entries.lock() {
            e.push(Entry {
                session,
                token,
                expires_at,
                refused_at: None,
                refusals: 0,
            });
        }
    }

    /// Removes a connection's token; it lingers as the last one left.
    pub(crate) fn remove(&self, session: u64) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        if let Some(i) = e.iter().position(|x| x.session == session) {
            let gone = e.remove(i);
            if let Ok(mut last) = self.last_left.lock() {
                *last = Some((gone, Instant::now()));
            }
        }
    }

    /// Whether a connection left at most `linger` ago with a token that
    /// has not expired (the sources may go on with it meanwhile).
    pub(crate) fn left_within(&self, linger: Duration) -> bool {
        let now = (clock::unix_millis() / 1000) as u64;
        self.last_left.lock().is_ok_and(|l| {
            l.as_ref().is_some_and(|(x, at)| {
                at.elapsed() < linger && x.expires_at.is_none_or(|t| t > now)
            })
        })
    }

    /// A live token the backend has not refused, newest first (the newest
    /// connection's token usually lives longest).
    pub(crate) fn pick(&self) -> Option<Arc<str>> {
        let now = (clock::unix_millis() / 1000) as u64;
        let usable = |x: &Entry| {
            x.refused_at
                .is_none_or(|t| t.elapsed() >= refusal_pause(x.refusals))
                && x.expires_at.is_none_or(|t| t > now)
        };
        let e = self.entries.lock().ok()?;
        if let Some(x) = e.iter().rev().find(|x| usable(x)) {
            return Some(x.token.clone());
        }
        if !e.is_empty() {
            return None;
        }
        // No connection left: the last one's token, while the hub lingers.
        let last = self.last_left.lock().ok()?;
        last.as_ref()
            .filter(|(x, _)| usable(x))
            .map(|(x, _)| x.token.clone())
    }

    /// The token of one session (per-connection polling).
    pub(crate) fn of_session(&self, session: u64) -> Option<Arc<str>> {
        let e = self.entries.lock().ok()?;
        e.iter()
            .find(|x| x.session == session)
            .map(|x| x.token.clone())
    }

    /// Marks a token the backend refused with 401/403.
    pub(crate) fn refuse(&self, token: &str) {
        if let Ok(mut e) = self.entries.lock() {
            for x in e.iter_mut().filter(|x| &*x.token == token) {
                x.refused_at = Some(Instant::now());
                x.refusals = x.refusals.saturating_add(1);
            }
        }
    }

    /// Marks a token the backend accepted: its next refusal starts the
    /// pause from a few seconds again.
    pub(crate) fn accepted(&self, token: &str) {
        if let Ok(mut e) = self.entries.lock() {
            for x in e.iter_mut().filter(|x| &*x.token == token) {
                x.refused_at = None;
                x.refusals = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_live_unrefused_tokens() {
        let p = TokenPool::default();
        assert!(p.pick().is_none());
        p.add(1, "a".into(), None);
        p.add(2, "b".into(), Some(1));
        assert_eq!(p.pick().as_deref(), Some("a"));
        p.add(3, "c".into(), None);
        assert_eq!(p.pick().as_deref(), Some("c"));
        p.refuse("c");
        assert_eq!(p.pick().as_deref(), Some("a"));
        p.remove(1);
        assert!(p.pick().is_none());
        assert_eq!(p.of_session(3).as_deref(), Some("c"));
    }

    #[test]
    fn the_last_token_to_leave_lingers() {
        let p = TokenPool::default();
        assert!(!p.left_within(Duration::from_secs(5)));
        p.add(1, "a".into(), None);
        p.remove(1);
        assert!(p.left_within(Duration::from_secs(5)));
        assert!(!p.left_within(Duration::ZERO));
        assert_eq!(
            p.pick().as_deref(),
            Some("a"),
            "no one left: the last token"
        );
        p.add(2, "b".into(), Some(1));
        assert!(
            p.pick().is_none(),
            "a live connection's expired token is not replaced"
        );
        p.remove(2);
        assert!(
            !p.left_within(Duration::from_secs(5)),
            "an expired token does not linger"
        );
        assert!(p.pick().is_none());
    }

    #[test]
    fn refusal_pauses_start_at_seconds_and_are_capped() {
        assert_eq!(refusal_pause(1), Duration::from_secs(2));
        assert_eq!(refusal_pause(2), Duration::from_secs(4));
        assert_eq!(refusal_pause(50), Duration::from_secs(60));
    }
}
