//! The identity provider's key set (`auth.jwks_url`): fetched at start-up,
//! again every `auth.jwks_refresh_s`, and — at most once per
//! [`UNKNOWN_KID_INTERVAL`] — when a token names a `kid` the set lacks.
//!
//! The current set is one snapshot behind an `ArcSwapOption` (empty until
//! the first good fetch); readers never lock. A fetch is bounded in time
//! (`auth.jwks_timeout_s`) and size (`auth.jwks_max_bytes`); one that fails
//! for any reason (network, status, garbage, no usable key) is logged and
//! counted and the last good set stays in force. One task owns the schedule
//! and stops with the sidecar.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::keys::{PublicKey, parse_jwks};
use crate::config::AuthConfig;
use crate::metrics as m;
use crate::tls::{HttpsConnector, TlsClientError};

/// The least time between two refreshes caused by unknown `kid`s.
pub(crate) const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// How soon a start-up fetch that failed is tried again (capped by the refresh period).
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(2);

/// Why one fetch was refused. The previous key set stays in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body larger than auth.jwks_max_bytes ({0} bytes) or cut short")]
    Body(usize),
    #[error("{0}")]
    Document(String),
}

/// Why a refresh was made (the `trigger` label).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Start,
    Schedule,
    UnknownKid,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Schedule => "schedule",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// The remote key set and its fetcher.
pub(crate) struct Jwks {
    url: url::Url,
    client: Client<HttpsConnector, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
    refresh: Duration,
    keys: ArcSwapOption<Vec<PublicKey>>,
    /// Serialises fetches and remembers when the last unknown-kid one began.
    fetching: Mutex<Option<Instant>>,
    /// Bumped by every successful fetch, so a waiter can tell that another
    /// caller refreshed the set while it waited for the lock.
    generation: AtomicU64,
}

impl Jwks {
    pub(crate) fn new(url: url::Url, cfg: &AuthConfig) -> Result<Jwks, TlsClientError> {
        // https key sets are verified against the system roots; a plain
        // http URL needs no trust store at all.
        let tls = if url.scheme() == "https" {
            crate::tls::client_config(None)?
        } else {
            crate::tls::client::no_roots_config()?
        };
        let connector = crate::tls::https_connector(&tls, cfg.jwks_timeout);
        Ok(Jwks {
            url,
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
            timeout: cfg.jwks_timeout,
            max_bytes: cfg.jwks_max_bytes,
            refresh: cfg.jwks_refresh,
            keys: ArcSwapOption::empty(),
            fetching: Mutex::new(None),
            generation: AtomicU64::new(0),
        })
    }

    /// The current key set; `None` until a fetch has succeeded.
    pub(crate) fn keys(&self) -> Option<Arc<Vec<PublicKey>>> {
        self.keys.load_full()
    }

    /// Whether a key set has loaded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Fetches the set again for a token whose `kid` it lacks, unless one
    /// such refresh began less than [`UNKNOWN_KID_INTERVAL`] ago. True when
    /// the set changed (here or by a concurrent fetch) since the call began.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        let before = self.generation.load(Ordering::Acquire);
        let mut last = self.fetching.lock().await;
        if self.generation.load(Ordering::Acquire) != before {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        self.fetch_and_store(Trigger::UnknownKid).await
    }

    /// Fetches at start-up (retrying until the first success), then every
    /// refresh period, until `shutdown` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut trigger = Trigger::Start;
        loop {
            // A fetch in flight (up to auth.jwks_timeout_s) must not hold up shutdown.
            let ok = tokio::select! {
                ok = async {
                    let _serial = self.fetching.lock().await;
                    self.fetch_and_store(trigger).await
                } => ok,
                _ = shutdown.changed() => return,
            };
            let wait = if self.is_loaded() {
                self.refresh
            } else {
                FIRST_LOAD_RETRY.min(self.refresh)
            };
            if ok || self.is_loaded() {
                trigger = Trigger::Schedule;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One fetch; on success the new set replaces the old one whole.
    async fn fetch_and_store(&self, trigger: Trigger) -> bool {
        match self.fetch().await {
            Ok(keys) => {
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                tracing::info!(url = %self.url, keys = keys.len(), ?kids, trigger = trigger.label(), "JWKS loaded");
                self.keys.store(Some(Arc::new(keys)));
                self.generation.fetch_add(1, Ordering::AcqRel);
                ::metrics::counter!(m::JWKS_REFRESHES, m::label::RESULT => m::Outcome::Ok.as_str(), m::label::TRIGGER => trigger.label()).increment(1);
                true
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, trigger = trigger.label(), kept_previous = self.is_loaded(), "JWKS fetch refused; keeping the last good key set");
                ::metrics::counter!(m::JWKS_REFRESHES, m::label::RESULT => m::Outcome::Error.as_str(), m::label::TRIGGER => trigger.label()).increment(1);
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<PublicKey>, JwksError> {
        let request = http::Request::get(self.url.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| JwksError::Document(format!("bad request: {e}")))?;
        let max = self.max_bytes;
        let read = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(JwksError::Request)?;
            if !resp.status().is_success() {
                return Err(JwksError::Status(resp.status().as_u16()));
            }
            Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|_| JwksError::Body(max))
        };
        let body = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| JwksError::Timeout(self.timeout))??;
        parse_jwks(&body).map_err(JwksError::Document)
    }
}
