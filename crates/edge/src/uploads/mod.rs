//! Document uploads (CONTRACT 7): `GET /v2/documents/upload/stream`.
//!
//! A browser streams a file over a WebSocket; the sidecar spools it to disk
//! and delivers it once to the backend. Flow: [`Uploads::handle`] verifies
//! the token and upgrades; the session reads the [`handshake`], admits the
//! upload into the [`registry`] (a spool reservation and a [`spool`] file
//! named by a generated uploadId), receives the bytes ([`v1`]: the seed's
//! base64 chunks, [`v2`]: resumable binary frames with acknowledgements),
//! then hands the file to [`delivery`] (legacy multipart or the backend's
//! native upload stream, chosen by `DOCUMENTS_UPLOAD_NATIVE`) and answers
//! with the backend's result. A sweeper owned by the sidecar removes
//! uploads idle for `uploads.resume_ttl_s`.
#![warn(missing_docs)]

mod code;
pub(crate) mod delivery;
pub(crate) mod handshake;
pub mod multipart;
pub(crate) mod registry;
mod session;
pub(crate) mod spool;
mod v1;
mod v2;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth::{self, Verifier};
use crate::config::Config;
use crate::flags::FlagStore;
use crate::http_server::{Body, json_error};
use crate::metrics as m;

pub(crate) use code::UploadCode;

/// The client-facing upload endpoint.
pub const UPLOAD_PATH: &str = "/v2/documents/upload/stream";
/// Largest binary frame of version 2 (CONTRACT 7).
pub(crate) const MAX_BINARY_FRAME: usize = 1 << 20;

/// Buffers of an upload socket: frames up to 1 MiB (plus slack so that an
/// oversized one is read and answered with an error, not a torn socket).
pub fn upload_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_BINARY_FRAME + 64 * 1024))
        .max_frame_size(Some(MAX_BINARY_FRAME + 64 * 1024))
}

/// The upload service: shared by every upload connection.
pub(crate) struct Uploads {
    pub(crate) config: Arc<Config>,
    verifier: Arc<Verifier>,
    pub(crate) flags: Arc<FlagStore>,
    pub(crate) registry: registry::Registry,
    pub(crate) delivery: delivery::Delivery,
    slots: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Why the upload service could not start.
#[derive(Debug, thiserror::Error)]
#[error("{file}: uploads.spool_dir: cannot use {dir}: {source}")]
pub struct SpoolDirError {
    pub(crate) file: String,
    pub(crate) dir: String,
    #[source]
    pub(crate) source: std::io::Error,
}

impl Uploads {
    /// Prepares the spool directory (created if missing; files of an
    /// earlier run idle for `uploads.resume_ttl_s` removed).
    pub(crate) async fn new(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        flags: Arc<FlagStore>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Uploads>, SpoolDirError> {
        let dir = config.uploads.spool_dir.clone();
        let err = |source| SpoolDirError {
            file: config.source.clone(),
            dir: dir.display().to_string(),
            source,
        };
        tokio::fs::create_dir_all(&dir).await.map_err(err)?;
        let removed = spool::remove_stale(&dir, config.uploads.resume_ttl, |_| false)
            .await
            .map_err(err)?;
        if removed > 0 {
            tracing::info!(removed, dir = %dir.display(), "removed spooled uploads of an earlier run");
        }
        m::register_upload_zeroes(UploadCode::ALL.iter().map(|code| code.reason()));
        Ok(Arc::new(Uploads {
            registry: registry::Registry::new(dir, config.uploads.max_spool_bytes),
            delivery: delivery::Delivery::new(&config),
            slots: Arc::new(Semaphore::new(config.uploads.max_concurrent)),
            config,
            verifier,
            flags,
            shutdown,
        }))
    }

    /// Serves a request for [`UPLOAD_PATH`].
    pub(crate) async fn handle(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let Some(token) = auth::token_from_request(req.headers(), req.uri().query()) else {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization header or access_token parameter)",
            );
        };
        let identity = match self.verifier.verify(&token) {
            Ok(i) => i,
            Err(e) => return json_error(StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let key = match crate::http_server::websocket_upgrade_key(&req) {
            Ok(k) => k,
            Err(resp) => return *resp,
        };
        let owner = registry::Owner {
            org: identity.org_id,
            // The user of the verified token (`auth.user_claim`, default `sub`).
            user: identity.user_id.clone(),
        };
        let permit = self.slots.clone().try_acquire_owned().ok();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upload upgrade failed");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(upload_ws_config()),
            )
            .await;
            let mut conn = session::Conn::new(ws, self.clone());
            match permit {
                Some(_permit) => session::run(&mut conn, owner, token).await,
                None => {
                    // A browser cannot read an HTTP status from a failed
                    // WebSocket: the refusal is an error message and 1013.
                    conn.fail(
                        UploadCode::Busy,
                        "too many uploads on this sidecar; retry later",
                    )
                    .await
                }
            }
        });
        crate::http_server::switching_protocols(&key)
    }

    /// The owned task that removes uploads idle for `uploads.resume_ttl_s`;
    /// it stops on shutdown.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>) -> JoinHandle<()> {
        let me = self.clone();
        let ttl = me.config.uploads.resume_ttl;
        let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut shutdown = me.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let mut removed = me.registry.sweep(ttl).await;
                        let dir = &me.config.uploads.spool_dir;
                        match spool::remove_stale(dir, ttl, |id| me.registry.holds(id)).await {
                            Ok(n) => removed += n,
                            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot sweep the upload spool"),
                        }
                        if removed > 0 {
                            ::metrics::counter!(m::UPLOADS_EXPIRED).increment(removed as u64);
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
        })
    }
}
