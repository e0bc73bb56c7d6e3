//! Version 2, resumable: `ready` with the offset held, binary frames of at
//! most 1 MiB, a durable `progress` at least every `uploads.ack_bytes` and
//! at the end, at most `uploads.window_bytes` unacknowledged, then delivery
//! and `complete`. A dropped connection keeps the partial file; a reconnect
//! with the uploadId (same org and user) continues at the acknowledged
//! offset, and one after completion gets the same `complete` again.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::MAX_BINARY_FRAME;
use super::UploadCode;
use super::delivery::DeliveryError;
use super::handshake::FileMeta;
use super::registry::{Attached, Owner, Phase, Upload};
use super::session::{self, Conn, Incoming};
use crate::metrics as m;
use crate::protocol::close;

/// How long a reconnect waits for the old connection to let go of its upload.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A new version-2 upload.
pub(crate) async fn start(conn: &mut Conn, owner: Owner, token: String, meta: FileMeta) {
    let Some(upload) = conn.admit(owner, meta, "2").await else {
        return;
    };
    serve(conn, upload, token).await
}

/// A reconnect naming `upload_id`.
pub(crate) async fn resume(
    conn: &mut Conn,
    owner: Owner,
    token: String,
    upload_id: &str,
    filesize: Option<u64>,
) {
    let Some(upload) = conn.service.registry.find(upload_id, &owner) else {
        tracing::info!(
            org = owner.org,
            "resume of an unknown or foreign upload refused"
        );
        return conn.fail(UploadCode::UnknownUpload, "no such upload").await;
    };
    if filesize.is_some_and(|s| s != upload.meta.filesize) {
        return conn
            .fail(
                UploadCode::BadHandshake,
                &format!(
                    "filesize differs from the upload's ({})",
                    upload.meta.filesize
                ),
            )
            .await;
    }
    serve(conn, upload, token).await
}

async fn serve(conn: &mut Conn, upload: Arc<Upload>, token: String) {
    let Some(mut held) = Attached::take(upload.clone(), TAKEOVER_WAIT).await else {
        return conn
            .fail(UploadCode::Busy, "the upload is busy on another connection")
            .await;
    };
    match upload.phase() {
        Phase::Complete(msg) => {
            let _ = conn.send(msg.to_string()).await;
            return conn.close(close::NORMAL, "delivered").await;
        }
        Phase::Rejected(msg) => {
            return conn.fail_with(UploadCode::UpstreamRejected, &msg).await;
        }
        Phase::Receiving => {}
    }
    if let Err(e) = held.spool.rewind_to_durable().await {
        tracing::error!(upload = %upload.id, error = %e, "cannot reopen a spooled upload");
        return conn
            .fail(UploadCode::UpstreamError, "cannot reopen the spooled file")
            .await;
    }
    let offset = held.spool.durable();
    let ready = json!({"type": "ready", "uploadId": upload.id, "offset": offset});
    if !conn.send(ready.to_string()).await {
        return;
    }
    let filesize = upload.meta.filesize;
    if offset < filesize && !receive(conn, &mut held).await {
        // Kept for a resume: make what arrived durable.
        if let Err(e) = held.spool.sync().await {
            tracing::warn!(upload = %upload.id, error = %e, "cannot sync a partial upload");
        }
        held.spool.close().await;
        upload.touch();
        return;
    }
    held.spool.close().await;
    let service = conn.service.clone();
    match session::deliver(conn, &upload, &held.spool, &token).await {
        Ok(result) => {
            let complete: Arc<str> =
                json!({"type": "complete", "uploadId": upload.id, "result": result})
                    .to_string()
                    .into();
            service
                .registry
                .discard_file(&upload, &mut held.spool)
                .await;
            service
                .registry
                .finish(&upload, Phase::Complete(complete.clone()));
            let _ = conn.send(complete.to_string()).await;
            conn.close(close::NORMAL, "delivered").await;
        }
        Err(DeliveryError::Shutdown) => {
            upload.touch();
            conn.close(close::GOING_AWAY, "shutting down; resume with the uploadId")
                .await;
        }
        Err(e) => {
            let (code, message) = session::delivery_failure(&e);
            let error = session::error_json(code, &message);
            if code == UploadCode::UpstreamRejected {
                service
                    .registry
                    .discard_file(&upload, &mut held.spool)
                    .await;
                service
                    .registry
                    .finish(&upload, Phase::Rejected(error.clone().into()));
            }
            // UPSTREAM_ERROR: the file stays; a reconnect delivers it again.
            upload.touch();
            conn.fail_with(code, &error).await;
        }
    }
}

/// Receives frames until the file is complete and durable (`true`), or the
/// connection ends (`false`; the reason was answered already).
async fn receive(conn: &mut Conn, held: &mut Attached) -> bool {
    let cfg = conn.service.config.clone();
    let filesize = held.upload.meta.filesize;
    let mut acked = held.spool.durable();
    loop {
        let incoming = conn
            .next(
                cfg.uploads.idle_timeout,
                Some((&mut held.takeover, held.generation)),
            )
            .await;
        let data = match incoming {
            Incoming::Binary(b) => b,
            Incoming::Text(_) => {
                conn.fail(
                    UploadCode::BadChunk,
                    "version 2 takes the file as binary frames, not text",
                )
                .await;
                return false;
            }
            Incoming::TooLarge => {
                conn.fail(
                    UploadCode::BadChunk,
                    &format!("a binary frame carries at most {MAX_BINARY_FRAME} bytes"),
                )
                .await;
                return false;
            }
            Incoming::Idle => {
                conn.close(close::GOING_AWAY, "idle; resume with the uploadId")
                    .await;
                return false;
            }
            Incoming::Shutdown => {
                conn.close(close::GOING_AWAY, "shutting down; resume with the uploadId")
                    .await;
                return false;
            }
            Incoming::TakenOver => {
                conn.close(
                    close::POLICY,
                    "the upload was resumed on another connection",
                )
                .await;
                return false;
            }
            Incoming::Gone => return false,
        };
        if data.len() > MAX_BINARY_FRAME {
            conn.fail(
                UploadCode::BadChunk,
                &format!("a binary frame carries at most {MAX_BINARY_FRAME} bytes"),
            )
            .await;
            return false;
        }
        let written = held.spool.written();
        let len = data.len() as u64;
        if written.checked_add(len).is_none_or(|t| t > filesize) {
            conn.fail(
                UploadCode::SizeMismatch,
                &format!("more bytes than the announced filesize {filesize}"),
            )
            .await;
            return false;
        }
        // The client may hold at most a window of unacknowledged bytes; a
        // client that sends more cannot be buffering by the protocol.
        if (written + len).saturating_sub(acked) > cfg.uploads.window_bytes {
            conn.fail(
                UploadCode::WindowExceeded,
                &format!(
                    "more than {} unacknowledged bytes; wait for progress",
                    cfg.uploads.window_bytes
                ),
            )
            .await;
            return false;
        }
        ::metrics::counter!(m::UPLOADS_RECEIVED_BYTES).increment(len);
        held.upload.touch();
        // Written in slices that end on acknowledgement points, so a
        // `progress` follows at least every `ack_bytes` even when one frame
        // carries several of them.
        let mut rest = &data[..];
        while !rest.is_empty() {
            let unacked = held.spool.written() - acked;
            let room = cfg.uploads.ack_bytes.saturating_sub(unacked).max(1);
            let n = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            if let Err(e) = held.spool.append(&rest[..n]).await {
                tracing::error!(upload = %held.upload.id, error = %e, "cannot write to the spool");
                conn.fail(UploadCode::UpstreamError, "cannot spool the file")
                    .await;
                return false;
            }
            rest = &rest[n..];
            let written = held.spool.written();
            if written - acked < cfg.uploads.ack_bytes && written != filesize {
                continue;
            }
            match held.spool.sync().await {
                Ok(durable) => acked = durable,
                Err(e) => {
                    tracing::error!(upload = %held.upload.id, error = %e, "cannot sync the spool");
                    conn.fail(UploadCode::UpstreamError, "cannot spool the file")
                        .await;
                    return false;
                }
            }
            let progress = json!({"type": "progress", "uploadId": held.upload.id, "offset": acked});
            if !conn.send(progress.to_string()).await {
                return false;
            }
            if acked == filesize {
                return true;
            }
        }
    }
}
