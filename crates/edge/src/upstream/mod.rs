//! Sources of events: the V1 long-poller and the native stream link. Each
//! runs as its own task, owned by a hub through a `SourceHandle`; dropping
//! or stopping the handle ends the task. Sources only push into their hub,
//! as `SourceReport`s: what a source produces (the parsed
//! `IncomingEvent`s, its `SourceStatus`) and what it borrows (the
//! org's `TokenPool`) are defined here, and the hub builds on them; this
//! module does not know the hub.
#![warn(missing_docs)]

mod event;
mod native;
mod poller;
mod tokens;

pub(crate) use event::IncomingEvent;
pub use native::client_ws_config;
pub(crate) use tokens::TokenPool;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls::ClientConfig;

use crate::auth::OrgId;
use crate::config::Config;
use crate::metrics::Stats;

/// Largest V1 answer body read.
pub(crate) const MAX_POLL_BODY: usize = 16 << 20;

/// Identifies a running source within its hub.
pub(crate) type SourceId = u64;
/// Identifies a client connection (whose token the [`TokenPool`] holds).
pub(crate) type SessionId = u64;

/// What a source tells its hub about itself.
#[derive(Debug)]
pub(crate) enum SourceStatus {
    /// The source now covers every event from here on (poller: first answer
    /// or started from a known cursor; native link: ack received).
    Ready,
    /// The source failed; `service` is `None` for all its services.
    Failed {
        /// The failed service, `None` for all the source's services.
        service: Option<u16>,
        /// Whether the backend refused the token.
        auth: bool,
        /// What failed, for the log and the clients' `error` message.
        message: String,
    },
    /// The native link lost its connection (it keeps retrying). Its
    /// coverage goes on if it resumes when it is back.
    Down,
    /// The native link connected without resuming (the first time, or the
    /// backend could not resume it): it covers only what is published from
    /// now on; what was published while it was down is not in it.
    Unresumed,
}

/// What a source pushes into its hub. The hub's inbox message type `M`
/// takes these (`M: From<SourceReport>`), so sources do not depend on it.
#[derive(Debug)]
pub(crate) enum SourceReport {
    /// Events of one service, oldest first.
    Events {
        /// The source that read them.
        source: SourceId,
        /// The service index.
        service: u16,
        /// The events, parsed (malformed ones are already dropped).
        events: Vec<IncomingEvent>,
        /// V1 poller: the cursor after this answer.
        cursor: Option<String>,
        /// Native link: the upstream position of the last event.
        native_seq: Option<u64>,
        /// V1 poller: when the request this answers was sent (switching
        /// waits for an answer to a request sent after the new source was
        /// ready). A poller reports every answer, even an empty one.
        requested_at: Option<tokio::time::Instant>,
    },
    /// A change of the source's state.
    Status {
        /// The source it concerns.
        source: SourceId,
        /// Its new state.
        status: SourceStatus,
    },
}

/// Where a poller gets its bearer token.
pub(crate) enum TokenChoice {
    /// Any live connection of the org (shared poller).
    Pool(Arc<TokenPool>),
    /// This connection's own token (`FIN_LEADER_ENABLED=false`).
    Session(Arc<TokenPool>, SessionId),
}

/// What a V1 poller is started with: one org and service, and the inbox
/// (of message type `M`) of the hub it reports to.
pub(crate) struct PollerSpec<M> {
    pub(crate) org: OrgId,
    pub(crate) service: u16,
    pub(crate) source: SourceId,
    pub(crate) cursor: Option<String>,
    pub(crate) tokens: TokenChoice,
    pub(crate) hub: mpsc::Sender<M>,
}

/// What a native link is started with: one org and its native services,
/// and the inbox (of message type `M`) of the hub it reports to.
pub(crate) struct NativeSpec<M> {
    pub(crate) org: OrgId,
    pub(crate) services: Vec<u16>,
    pub(crate) source: SourceId,
    pub(crate) last_seq: Option<u64>,
    pub(crate) tokens: Arc<TokenPool>,
    pub(crate) hub: mpsc::Sender<M>,
}

/// Owns a running source; stopping or dropping it ends the task.
pub(crate) struct SourceHandle {
    stop: Option<oneshot::Sender<()>>,
}

impl SourceHandle {
    /// A handle and the receiver its source task watches.
    pub(crate) fn new() -> (SourceHandle, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (SourceHandle { stop: Some(tx) }, rx)
    }

    pub(crate) fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Shared upstream plumbing: the HTTP client and the configuration.
pub(crate) struct Upstream {
    pub(crate) http: Client<crate::tls::HttpsConnector, Empty<Bytes>>,
    /// Verifies an `https://` backend and the `wss://` native stream.
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) config: Arc<Config>,
    pub(crate) stats: Arc<Stats>,
}

impl Upstream {
    pub(crate) fn new(
        config: Arc<Config>,
        stats: Arc<Stats>,
        tls: Arc<ClientConfig>,
    ) -> Arc<Upstream> {
        let connector = crate::tls::https_connector(&tls, Duration::from_secs(5));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4096)
            .build(connector);
        Arc::new(Upstream {
            http,
            tls,
            config,
            stats,
        })
    }
}

/// Starts sources for a hub whose inbox takes messages of type `M`. The
/// hub depends on this seam, not on HTTP, so its switching logic is tested
/// with scripted sources.
pub(crate) trait SourceSpawner<M>: Send + Sync {
    /// Starts a V1 poller.
    fn spawn_poller(&self, spec: PollerSpec<M>) -> SourceHandle;
    /// Starts a native link.
    fn spawn_native(&self, spec: NativeSpec<M>) -> SourceHandle;
}

impl<M: From<SourceReport> + Send + 'static> SourceSpawner<M> for Arc<Upstream> {
    fn spawn_poller(&self, spec: PollerSpec<M>) -> SourceHandle {
        let (handle, stop) = SourceHandle::new();
        tokio::spawn(poller::run(self.clone(), spec, stop));
        handle
    }

    fn spawn_native(&self, spec: NativeSpec<M>) -> SourceHandle {
        let (handle, stop) = SourceHandle::new();
        tokio::spawn(native::run(self.clone(), spec, stop));
        handle
    }
}

/// Exponential backoff with jitter: 200 ms doubling to 30 s, each wait
/// drawn from the upper half of the current step.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Waits out the next delay; false when `stop` fired meanwhile.
    pub(crate) async fn wait(&mut self, stop: &mut oneshot::Receiver<()>) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.next_delay()) => true,
            _ = stop => false,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let step_ms = (200u64 << self.failures.min(8)).min(30_000);
        self.failures = self.failures.saturating_add(1);
        let jitter = rand::random_range(0..=step_ms / 2);
        Duration::from_millis(step_ms / 2 + jitter)
    }
}

/// Counts a gauge up while alive.
struct GaugeGuard(&'static str);

impl GaugeGuard {
    fn new(name: &'static str) -> Self {
        ::metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        ::metrics::gauge!(self.0).decrement(1.0);
    }
}

/// `path` on the backend as a WebSocket URL: the base URL's host, port and
/// path prefix with a ws (or wss, for https) scheme.
pub(crate) fn ws_url(base: &url::Url, path: &str) -> String {
    let scheme = if base.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    let host = base.host_str().unwrap_or("127.0.0.1");
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let prefix = base.path().trim_end_matches('/');
    format!("{scheme}://{host}{port}{prefix}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(15));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }
}
