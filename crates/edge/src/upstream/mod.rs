//! Sources of events: the V1 long-poller and the native stream link. Each
//! runs as its own task, owned by a hub through a [`SourceHandle`]; dropping
//! or stopping the handle ends the task. Sources only push into their hub.
#![warn(missing_docs)]

mod native;
mod poller;

pub use native::client_ws_config;

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
use crate::hub::tokens::TokenPool;
use crate::hub::{HubMsg, SessionId, SourceId};
use crate::metrics::Stats;

/// Largest V1 answer body read.
pub(crate) const MAX_POLL_BODY: usize = 16 << 20;

/// Where a poller gets its bearer token.
pub(crate) enum TokenChoice {
    /// Any live connection of the org (shared poller).
    Pool(Arc<TokenPool>),
    /// This connection's own token (`FIN_LEADER_ENABLED=false`).
    Session(Arc<TokenPool>, SessionId),
}

/// What a V1 poller is started with: one org and service.
pub struct PollerSpec {
    pub(crate) org: OrgId,
    pub(crate) service: u16,
    pub(crate) source: SourceId,
    pub(crate) cursor: Option<String>,
    pub(crate) tokens: TokenChoice,
    pub(crate) hub: mpsc::Sender<HubMsg>,
}

/// What a native link is started with: one org and its native services.
pub struct NativeSpec {
    pub(crate) org: OrgId,
    pub(crate) services: Vec<u16>,
    pub(crate) source: SourceId,
    pub(crate) last_seq: Option<u64>,
    pub(crate) tokens: Arc<TokenPool>,
    pub(crate) hub: mpsc::Sender<HubMsg>,
}

/// Owns a running source; stopping or dropping it ends the task.
pub struct SourceHandle {
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

/// Starts sources for a hub. The hub depends on this seam, not on HTTP, so
/// its switching logic is tested with scripted sources.
pub trait SourceSpawner: Send + Sync {
    /// Starts a V1 poller.
    fn spawn_poller(&self, spec: PollerSpec) -> SourceHandle;
    /// Starts a native link.
    fn spawn_native(&self, spec: NativeSpec) -> SourceHandle;
}

impl SourceSpawner for Arc<Upstream> {
    fn spawn_poller(&self, spec: PollerSpec) -> SourceHandle {
        let (handle, stop) = SourceHandle::new();
        tokio::spawn(poller::run(self.clone(), spec, stop));
        handle
    }

    fn spawn_native(&self, spec: NativeSpec) -> SourceHandle {
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
