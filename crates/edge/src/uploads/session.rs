//! What both protocol versions share: the socket with its idle timeout and
//! shutdown arm, error answers, the handshake, and delivery with metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::UploadCode;
use super::delivery::{DeliveryError, Parcel};
use super::handshake::{self, Handshake};
use super::registry::{AdmitError, Owner, Upload};
use super::spool::SpoolFile;
use super::{Uploads, v1, v2};
use crate::metrics as m;
use crate::protocol::close;

/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the client did next.
pub(crate) enum Incoming {
    Text(String),
    Binary(Bytes),
    /// A frame over the size limit.
    TooLarge,
    /// The client closed or the connection broke.
    Gone,
    /// Nothing for `uploads.idle_timeout_s`.
    Idle,
    /// The sidecar is shutting down.
    Shutdown,
    /// Another connection took this upload over.
    TakenOver,
}

/// One upload connection.
pub(crate) struct Conn {
    ws: WebSocketStream<TokioIo<Upgraded>>,
    pub(crate) service: Arc<Uploads>,
    shutdown: watch::Receiver<bool>,
}

impl Conn {
    pub(crate) fn new(ws: WebSocketStream<TokioIo<Upgraded>>, service: Arc<Uploads>) -> Conn {
        let shutdown = service.shutdown.clone();
        Conn {
            ws,
            service,
            shutdown,
        }
    }

    /// The next data frame, waiting at most `wait`. Control frames are
    /// answered by tungstenite and skipped without extending the wait: an
    /// idle upload is one that sends no data, whatever it pings.
    pub(crate) async fn next(
        &mut self,
        wait: Duration,
        takeover: Option<(&mut watch::Receiver<u64>, u64)>,
    ) -> Incoming {
        let deadline = tokio::time::Instant::now() + wait;
        let mut takeover = takeover;
        loop {
            let taken = async {
                match takeover.as_mut() {
                    Some((rx, mine)) => loop {
                        if *rx.borrow_and_update() != *mine {
                            return;
                        }
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            let next = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.ws.next()) => r,
                _ = self.shutdown.changed() => return Incoming::Shutdown,
                _ = taken => return Incoming::TakenOver,
            };
            return match next {
                Err(_) => Incoming::Idle,
                Ok(Some(Ok(Message::Text(t)))) => Incoming::Text(t.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => Incoming::Binary(b),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) => Incoming::Gone,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(WsError::Capacity(_)))) => Incoming::TooLarge,
                Ok(Some(Err(_))) => Incoming::Gone,
            };
        }
    }

    pub(crate) async fn send(&mut self, text: String) -> bool {
        tokio::time::timeout(CLOSE_GRACE * 5, self.ws.send(Message::Text(text.into())))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, self.ws.close(Some(frame))).await;
    }

    /// Sends an already serialised `error` message, then the close.
    pub(crate) async fn fail_with(&mut self, code: UploadCode, message_json: &str) {
        ::metrics::counter!(m::UPLOADS_FAILED, m::label::REASON => code.reason()).increment(1);
        let _ = self.send(message_json.to_string()).await;
        self.close(code.close_code(), code.as_str()).await;
    }

    /// `{"type":"error","code","message"}`, then the code's close.
    pub(crate) async fn fail(&mut self, code: UploadCode, message: &str) {
        self.fail_with(code, &error_json(code, message)).await;
    }

    /// Reserves spool room for a new upload of either protocol version, or
    /// answers `BUSY` (and returns `None`) when it cannot.
    pub(crate) async fn admit(
        &mut self,
        owner: Owner,
        meta: handshake::FileMeta,
        version: &'static str,
    ) -> Option<Arc<Upload>> {
        let upload = match self.service.registry.admit(owner, meta).await {
            Ok(u) => u,
            Err(e @ AdmitError::SpoolFull { .. }) => {
                self.fail(UploadCode::Busy, &e.to_string()).await;
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot spool an upload");
                self.fail(
                    UploadCode::Busy,
                    "the sidecar cannot spool uploads right now",
                )
                .await;
                return None;
            }
        };
        ::metrics::counter!(m::UPLOADS_STARTED, m::label::VERSION => version).increment(1);
        tracing::info!(upload = %upload.id, org = upload.owner.org, bytes = upload.meta.filesize, version, "upload started");
        Some(upload)
    }
}

pub(crate) fn error_json(code: UploadCode, message: &str) -> String {
    json!({"type": "error", "code": code.as_str(), "message": message}).to_string()
}

/// Serves one upload connection from its handshake to its close.
pub(crate) async fn run(conn: &mut Conn, owner: Owner, token: String) {
    let cfg = conn.service.config.clone();
    let text = match conn.next(cfg.stream.handshake_timeout, None).await {
        Incoming::Text(t) => t,
        Incoming::Binary(_) | Incoming::TooLarge => {
            return conn
                .fail(
                    UploadCode::BadHandshake,
                    "the first message must be the JSON handshake",
                )
                .await;
        }
        Incoming::Idle => {
            return conn
                .fail(UploadCode::BadHandshake, "no handshake in time")
                .await;
        }
        Incoming::Shutdown => return conn.close(close::GOING_AWAY, "shutting down").await,
        Incoming::Gone | Incoming::TakenOver => return,
    };
    match handshake::parse(&text, &cfg.uploads) {
        Err(e) => {
            tracing::info!(org = owner.org, code = e.code.as_str(), error = %e, "upload handshake refused");
            conn.fail(e.code, &e.message).await
        }
        Ok(Handshake::New { version: 1, meta }) => v1::run(conn, owner, token, meta).await,
        Ok(Handshake::New { meta, .. }) => v2::start(conn, owner, token, meta).await,
        Ok(Handshake::Resume {
            upload_id,
            filesize,
        }) => v2::resume(conn, owner, token, &upload_id, filesize).await,
    }
}

/// Delivers a complete, durable spool file, recording latency and outcome.
pub(crate) async fn deliver(
    conn: &mut Conn,
    upload: &Upload,
    spool: &SpoolFile,
    token: &str,
) -> Result<Value, DeliveryError> {
    let native = conn.service.flags.current().flags.upload_native;
    let route = if native {
        m::UploadRoute::Native
    } else {
        m::UploadRoute::Legacy
    };
    let started = Instant::now();
    let parcel = Parcel {
        upload_id: &upload.id,
        meta: &upload.meta,
        path: spool.path(),
        token,
    };
    let mut shutdown = conn.shutdown.clone();
    let outcome = conn
        .service
        .delivery
        .deliver(&parcel, native, &mut shutdown)
        .await;
    ::metrics::histogram!(m::UPLOADS_DELIVERY_SECONDS, m::label::DELIVERY => route.as_str())
        .record(started.elapsed().as_secs_f64());
    match &outcome {
        Ok(_) => {
            ::metrics::counter!(m::UPLOADS_COMPLETED, m::label::DELIVERY => route.as_str())
                .increment(1);
            tracing::info!(upload = %upload.id, org = upload.owner.org, bytes = upload.meta.filesize, delivery = route.as_str(),
                ms = started.elapsed().as_millis() as u64, "upload delivered");
        }
        Err(e) => {
            tracing::warn!(upload = %upload.id, org = upload.owner.org, delivery = route.as_str(), error = %e, "upload not delivered");
        }
    }
    outcome
}

/// The error code and message a failed delivery is reported with.
pub(crate) fn delivery_failure(e: &DeliveryError) -> (UploadCode, String) {
    match e {
        DeliveryError::Rejected(_) => (UploadCode::UpstreamRejected, e.to_string()),
        DeliveryError::Failed { .. } | DeliveryError::Shutdown => {
            (UploadCode::UpstreamError, e.to_string())
        }
    }
}
