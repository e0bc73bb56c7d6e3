//! The drain sequence of CONTRACT 2.2: what happens between "stop, please"
//! (SIGTERM, SIGINT, `POST /drain`) and the process exiting.
//!
//! ```text
//! t0            begin(): /readyz answers 503 at once
//! t0+prestop    window start: new stream upgrades get 503 {"error":"draining"},
//!               HTTP connections finish their request and close, open streams
//!               and relayed WebSockets are closed with 1001, each at its own
//!               moment spread uniformly over the window
//! t0+prestop+drain   window end: every stream has had its close
//! (anything)    nothing tracked is open any more → stop
//! window end+5s stop at the latest
//! ```
//!
//! The window starts after the pre-stop delay, not at the signal, so no
//! client is told to reconnect while load balancers may still route it back
//! here. With the defaults (5 s + 20 s + 5 s) the latest exit is 30 s after
//! the signal, Kubernetes' default termination grace period.
//!
//! "Stop" flips the watch that every background loop (listeners, hubs,
//! pollers, native links, the flags watcher) ends on. Everything a drain
//! must wait for — client connections, streams, relayed WebSockets — is
//! spawned on [`Drain::tracker`].
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::ShutdownConfig;

/// Past the end of the window, how long tracked work may still take.
pub(crate) const FINAL_GRACE: Duration = Duration::from_secs(5);

/// Where the sidecar is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Draining; the window of closes starts at `window_start` and lasts `window`.
    Draining {
        window_start: Instant,
        window: Duration,
    },
}

/// The shutdown controller shared by the listeners, the gateway and the admin API.
pub struct Drain {
    config: ShutdownConfig,
    phase: watch::Sender<Phase>,
    /// Turns true when the drain window starts (connections wind down).
    wind_down: watch::Sender<bool>,
    /// Turns true when everything must stop.
    stop: watch::Sender<bool>,
    tracker: TaskTracker,
}

impl Drain {
    pub(crate) fn new(config: ShutdownConfig) -> Arc<Drain> {
        Arc::new(Drain {
            config,
            phase: watch::channel(Phase::Serving).0,
            wind_down: watch::channel(false).0,
            stop: watch::channel(false).0,
            tracker: TaskTracker::new(),
        })
    }

    /// The configured drain window.
    pub(crate) fn drain_window(&self) -> Duration {
        self.config.drain
    }

    /// Starts the sequence with the configured delays; `false` when it had
    /// already started (a repeated `POST /drain` changes nothing).
    pub fn begin(self: &Arc<Self>) -> bool {
        let window_start = Instant::now() + self.config.prestop_delay;
        let window = self.config.drain;
        self.start(window_start, window, false)
    }

    /// Starts (or shortens) the sequence with no delay and no spread: every
    /// stream is closed with 1001 now. Used by [`crate::Sidecar::shutdown`].
    pub(crate) fn begin_now(self: &Arc<Self>) {
        self.start(Instant::now(), Duration::ZERO, true);
    }

    fn start(self: &Arc<Self>, window_start: Instant, window: Duration, shorten: bool) -> bool {
        let mut began = false;
        self.phase.send_if_modified(|p| match *p {
            Phase::Serving => {
                began = true;
                *p = Phase::Draining {
                    window_start,
                    window,
                };
                true
            }
            Phase::Draining { .. } if shorten => {
                *p = Phase::Draining {
                    window_start,
                    window,
                };
                true
            }
            Phase::Draining { .. } => false,
        });
        if began {
            tracing::info!(
                prestop_delay_s = window_start
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64(),
                drain_s = window.as_secs_f64(),
                "draining: readiness off; streams close with 1001 over the drain window"
            );
            tokio::spawn(self.clone().sequence());
        }
        began
    }

    /// Drives the phases: wind down at the window start, then stop when
    /// nothing tracked is open or at the deadline.
    async fn sequence(self: Arc<Self>) {
        let mut phase = self.phase.subscribe();
        // Wait for the window start; a `begin_now` may move it earlier.
        let (window_start, window) = loop {
            let Phase::Draining {
                window_start,
                window,
            } = *phase.borrow_and_update()
            else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(window_start) => break (window_start, window),
                r = phase.changed() => if r.is_err() { break (window_start, window) },
            }
        };
        tracing::info!("drain window started: refusing new streams, closing open ones");
        self.wind_down.send_replace(true);
        self.tracker.close();
        let mut deadline = window_start + window + FINAL_GRACE;
        loop {
            tokio::select! {
                _ = self.tracker.wait() => {
                    tracing::info!("drained: nothing open any more");
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(open = self.tracker.len(), "drain deadline reached; stopping with work still open");
                    break;
                }
                r = phase.changed() => {
                    if r.is_err() { continue; }
                    // Shortened by `begin_now`.
                    if let Phase::Draining { window_start, window } = *phase.borrow_and_update() {
                        deadline = deadline.min(window_start + window + FINAL_GRACE);
                    }
                }
            }
        }
        self.stop.send_replace(true);
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }

    /// True once the drain window started: new streams are refused.
    pub(crate) fn refuses_streams(&self) -> bool {
        match *self.phase.borrow() {
            Phase::Serving => false,
            Phase::Draining { window_start, .. } => Instant::now() >= window_start,
        }
    }

    /// Resolves once everything must stop.
    pub(crate) async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The watch every background loop ends on.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Turns true when the drain window starts.
    pub(crate) fn wind_down_signal(&self) -> watch::Receiver<bool> {
        self.wind_down.subscribe()
    }

    /// Where connections, streams and relays are spawned so the drain can wait for them.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// The moment one stream (or relayed WebSocket) is to be closed, drawn
    /// now, uniformly over the drain window.
    pub(crate) fn stream_close(&self) -> StreamClose {
        StreamClose {
            phase: self.phase.subscribe(),
            fraction: rand::random::<f64>(),
        }
    }
}

/// One stream's close moment. [`StreamClose::wait`] is cancel-safe: it can
/// be polled afresh in every `select!` round and resolves at the same moment.
pub(crate) struct StreamClose {
    phase: watch::Receiver<Phase>,
    /// Where in the window this stream closes, in `[0, 1)`.
    fraction: f64,
}

impl StreamClose {
    fn moment(&self) -> Option<Instant> {
        match *self.phase.borrow() {
            Phase::Serving => None,
            Phase::Draining {
                window_start,
                window,
            } => Some(window_start + window.mul_f64(self.fraction)),
        }
    }

    /// True when the moment has passed.
    pub(crate) fn is_due(&self) -> bool {
        self.moment().is_some_and(|t| Instant::now() >= t)
    }

    /// Resolves at this stream's close moment (never while serving).
    pub(crate) async fn wait(&mut self) {
        loop {
            self.phase.borrow_and_update();
            match self.moment() {
                None => {
                    if self.phase.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => return,
                        r = self.phase.changed() => if r.is_err() {
                            tokio::time::sleep_until(at).await;
                            return;
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(prestop_s: u64, drain_s: u64) -> Arc<Drain> {
        Drain::new(ShutdownConfig {
            prestop_delay: Duration::from_secs(prestop_s),
            drain: Duration::from_secs(drain_s),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn phases_follow_the_contract_order() {
        let d = drain(5, 20);
        let mut close = d.stream_close();
        assert!(!d.is_draining() && !d.refuses_streams());
        assert!(d.begin());
        assert!(!d.begin(), "a second begin changes nothing");
        assert!(d.is_draining());
        assert!(
            !d.refuses_streams(),
            "streams accepted during the pre-stop delay"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(d.refuses_streams());
        let opened = Instant::now();
        close.wait().await;
        let after = opened.elapsed();
        assert!(after <= Duration::from_secs(20), "{after:?}");
        // Nothing tracked: the stop follows at once once the window started.
        tokio::time::timeout(Duration::from_secs(1), d.stopped())
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn close_moments_spread_over_the_window() {
        let d = drain(0, 100);
        let closes: Vec<StreamClose> = (0..200).map(|_| d.stream_close()).collect();
        d.begin();
        let start = Instant::now();
        let mut waits = tokio::task::JoinSet::new();
        for mut c in closes {
            waits.spawn(async move {
                c.wait().await;
                start.elapsed().as_secs()
            });
        }
        let at = waits.join_all().await;
        // Uniform over 100 s: each quarter holds some, none past the end.
        for q in 0..4 {
            let n = at.iter().filter(|s| **s / 25 == q).count();
            assert!(n > 10, "quarter {q} has {n} of 200: {at:?}");
        }
        assert!(at.iter().all(|s| *s <= 100));
    }

    #[tokio::test(start_paused = true)]
    async fn tracked_work_holds_the_stop_until_the_deadline() {
        let d = drain(1, 2);
        d.tracker().spawn(std::future::pending::<()>());
        d.begin();
        let t0 = Instant::now();
        d.stopped().await;
        assert_eq!(t0.elapsed().as_secs(), 1 + 2 + FINAL_GRACE.as_secs());
    }

    #[tokio::test(start_paused = true)]
    async fn begin_now_shortens_a_running_drain() {
        let d = drain(30, 300);
        let mut close = d.stream_close();
        d.tracker().spawn(std::future::pending::<()>());
        d.begin();
        d.begin_now();
        let t0 = Instant::now();
        close.wait().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        d.stopped().await;
        assert_eq!(t0.elapsed(), FINAL_GRACE);
    }
}
