//! The limit on one kind of wait (a request head, a response head, a body
//! that does not move), with one timer per connection and kind.
//!
//! A `tokio::time::timeout` per wait registers and removes a timer entry
//! for every request, and most waits end long before any limit. Here the
//! timer of a kind stays registered from one wait to the next: starting a
//! wait only reads the clock, and the timer is moved (to the current wait's
//! end) only when it fires before that, about once per limit, not per
//! request. A wait that completes at its first poll (the bytes were there)
//! does not read the clock at all.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How a bounded wait ended.
pub(super) enum Waited<T> {
    Done(T),
    /// It waited the whole limit in one stretch.
    TimedOut,
    /// The cancel signal came first.
    Cancelled,
}

pub(super) struct Deadline {
    limit: Duration,
    /// The end of the wait in progress.
    target: Instant,
    /// Fires at or before `target`; created at the first wait that blocks.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub(super) fn new(limit: Duration) -> Self {
        Deadline {
            limit,
            target: Instant::now(),
            sleep: None,
        }
    }

    /// Runs `io` unless it blocks for the whole limit.
    pub(super) async fn run<F: Future>(&mut self, io: F) -> Waited<F::Output> {
        self.run_or_cancel(io, std::future::pending::<()>()).await
    }

    /// Runs `io` unless it blocks for the whole limit or `cancel` completes
    /// while it blocks (`cancel` is not polled when `io` is ready at once).
    pub(super) async fn run_or_cancel<F: Future, C: Future>(
        &mut self,
        io: F,
        cancel: C,
    ) -> Waited<F::Output> {
        let mut io = pin!(io);
        let mut cancel = pin!(cancel);
        let mut armed = false;
        poll_fn(|cx| {
            if let Poll::Ready(out) = io.as_mut().poll(cx) {
                return Poll::Ready(Waited::Done(out));
            }
            if !armed {
                armed = true;
                self.arm();
            }
            if cancel.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Waited::Cancelled);
            }
            self.poll_expired(cx).map(|()| Waited::TimedOut)
        })
        .await
    }

    /// Starts a wait now.
    fn arm(&mut self) {
        self.target = Instant::now() + self.limit;
        match &mut self.sleep {
            // Fires early (or has fired): moved when it does.
            Some(sleep) if sleep.deadline() <= self.target => {}
            Some(sleep) => sleep.as_mut().reset(self.target),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(self.target))),
        }
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= self.target {
                return Poll::Ready(());
            }
            // Set for an earlier wait: the current one ends later.
            sleep.as_mut().reset(self.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_after_its_limit_counted_from_its_own_start() {
        let mut deadline = Deadline::new(Duration::from_secs(10));
        // A first wait of 8 s completes; the next one starts then, so its
        // timer (set for 10 s after the first) must not cut it at 10 s.
        let first = deadline
            .run(tokio::time::sleep(Duration::from_secs(8)))
            .await;
        assert!(matches!(first, Waited::Done(())));
        let started = Instant::now();
        let second = deadline.run(std::future::pending::<()>()).await;
        assert!(matches!(second, Waited::TimedOut));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_ends_a_blocked_wait() {
        let mut deadline = Deadline::new(Duration::from_secs(10));
        let cancel = tokio::time::sleep(Duration::from_secs(1));
        let waited = deadline
            .run_or_cancel(std::future::pending::<()>(), cancel)
            .await;
        assert!(matches!(waited, Waited::Cancelled));
        // Ready at once: neither the cancel nor the clock is consulted.
        let ready = deadline
            .run_or_cancel(async { 7 }, std::future::ready(()))
            .await;
        assert!(matches!(ready, Waited::Done(7)));
    }
}
