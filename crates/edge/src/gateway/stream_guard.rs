//! What one client stream holds in process-wide state (its connection
//! counts and hub membership), given back when the stream ends however it
//! ends, and why it ended.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::hub::{HubMsg, SessionId};
use crate::metrics::{self as m, Stats};

/// Why a stream ended (the `reason` label of closed connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndReason {
    Normal,
    Slow,
    Auth,
    Shutdown,
    Error,
    Handshake,
    Timeout,
}

impl EndReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Slow => "slow",
            EndReason::Auth => "auth",
            EndReason::Shutdown => "shutdown",
            EndReason::Error => "error",
            EndReason::Handshake => "handshake",
            EndReason::Timeout => "timeout",
        }
    }
}

/// What one stream holds in process-wide state: its place in the connection
/// counts and, once joined, its membership of the org's hub. Dropping the
/// guard gives both back, on every path out of `session::run`, a panic included.
pub(super) struct StreamGuard {
    stats: Arc<Stats>,
    pub(crate) member: Option<(mpsc::Sender<HubMsg>, SessionId)>,
}

impl StreamGuard {
    pub(crate) fn new(stats: Arc<Stats>) -> StreamGuard {
        stats
            .active_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .total_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(m::ACTIVE_CONNECTIONS).increment(1.0);
        ::metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
        StreamGuard {
            stats,
            member: None,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((hub, session)) = self.member.take() {
            // The hub's inbox is bounded; when it is full the leave waits
            // in a task of its own rather than being lost.
            if let Err(mpsc::error::TrySendError::Full(msg)) = hub.try_send(HubMsg::Leave(session))
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(async move {
                    let _ = hub.send(msg).await;
                });
            }
        }
        self.stats
            .active_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(m::ACTIVE_CONNECTIONS).decrement(1.0);
    }
}

/// Counts a closed stream by why it ended.
pub(super) fn count_close(reason: EndReason) {
    ::metrics::counter!(m::CONNECTIONS_CLOSED, m::label::REASON => reason.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that fails, even by a panic, still leaves its hub and
    /// gives back its connection count (CONTRACT 2.2).
    #[tokio::test]
    async fn a_panicking_stream_still_leaves_and_uncounts() {
        let stats = Arc::new(Stats::default());
        let (hub, mut inbox) = mpsc::channel(4);
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            let mut guard = StreamGuard::new(task_stats);
            guard.member = Some((hub, 7));
            panic!("a bug in a session");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(matches!(inbox.recv().await, Some(HubMsg::Leave(7))));
        let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r(&stats.active_connections), 0);
        assert_eq!(r(&stats.total_connections), 1);
    }
}
