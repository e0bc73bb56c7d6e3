//! Version 1, the seed's client unchanged: base64 text chunks
//! `{"seq", "data", "final"}` sent without waiting; the sidecar answers once,
//! with the backend's result, after delivering. Not resumable: a version-1
//! upload that fails leaves nothing behind.

use base64::Engine;
use serde::Deserialize;

use super::UploadCode;
use super::handshake::FileMeta;
use super::registry::{Attached, Owner};
use super::session::{self, Conn, Incoming};
use crate::metrics as m;
use crate::protocol::close;

#[derive(Deserialize)]
struct Chunk {
    seq: serde_json::Value,
    data: String,
    #[serde(default, rename = "final")]
    last: bool,
}

pub(crate) async fn run(conn: &mut Conn, owner: Owner, token: String, meta: FileMeta) {
    let service = conn.service.clone();
    let Some(upload) = conn.admit(owner, meta, "1").await else {
        return;
    };
    let Some(mut held) = Attached::take(upload.clone(), std::time::Duration::from_secs(1)).await
    else {
        service.registry.forget(&upload.id);
        return conn.fail(UploadCode::Busy, "upload not available").await;
    };
    let outcome = receive(conn, &mut held, &token).await;
    // Whatever happened, a version-1 upload ends here: file and entry go.
    service
        .registry
        .discard_file(&upload, &mut held.spool)
        .await;
    service.registry.forget(&upload.id);
    match outcome {
        Ok(result) => {
            let _ = conn.send(result).await;
            conn.close(close::NORMAL, "delivered").await;
        }
        Err(Some((code, message))) => conn.fail(code, &message).await,
        Err(None) => {}
    }
}

/// Receives and delivers the file; the backend's result as text, or the
/// error to report (`None`: the client is gone or the sidecar stopping).
async fn receive(
    conn: &mut Conn,
    held: &mut Attached,
    token: &str,
) -> Result<String, Option<(UploadCode, String)>> {
    let cfg = conn.service.config.clone();
    let filesize = held.upload.meta.filesize;
    let mut expected_seq: u64 = 1;
    loop {
        let text = match conn.next(cfg.uploads.idle_timeout, None).await {
            Incoming::Text(t) => t,
            Incoming::Binary(_) => {
                return Err(Some((
                    UploadCode::BadChunk,
                    "version 1 takes base64 text chunks, not binary frames".into(),
                )));
            }
            Incoming::TooLarge => {
                return Err(Some((UploadCode::BadChunk, "chunk too large".into())));
            }
            Incoming::Idle => {
                return Err(Some((
                    UploadCode::BadChunk,
                    format!(
                        "no chunk for {} s; the upload is abandoned",
                        cfg.uploads.idle_timeout.as_secs()
                    ),
                )));
            }
            Incoming::Shutdown => {
                conn.close(close::GOING_AWAY, "shutting down").await;
                return Err(None);
            }
            Incoming::Gone | Incoming::TakenOver => return Err(None),
        };
        let chunk: Chunk = serde_json::from_str(&text).map_err(|e| {
            Some((
                UploadCode::BadChunk,
                format!("a chunk is {{\"seq\", \"data\", \"final\"}}: {e}"),
            ))
        })?;
        if chunk.seq.as_u64() != Some(expected_seq) {
            return Err(Some((
                UploadCode::ChunkOutOfOrder,
                format!("expected chunk {expected_seq}, got {}", chunk.seq),
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(chunk.data.as_bytes())
            .map_err(|e| {
                Some((
                    UploadCode::BadChunk,
                    format!("chunk {expected_seq}: data is not base64: {e}"),
                ))
            })?;
        let total = held.spool.written().checked_add(bytes.len() as u64);
        if total.is_none_or(|t| t > filesize) {
            return Err(Some((
                UploadCode::SizeMismatch,
                format!("more bytes than the announced filesize {filesize}"),
            )));
        }
        if let Err(e) = held.spool.append(&bytes).await {
            tracing::error!(upload = %held.upload.id, error = %e, "cannot write to the spool");
            return Err(Some((
                UploadCode::UpstreamError,
                "cannot spool the file".into(),
            )));
        }
        ::metrics::counter!(m::UPLOADS_RECEIVED_BYTES).increment(bytes.len() as u64);
        held.upload.touch();
        expected_seq += 1;
        if chunk.last {
            break;
        }
    }
    let got = held.spool.written();
    if got != filesize {
        return Err(Some((
            UploadCode::SizeMismatch,
            format!("final chunk after {got} bytes; the announced filesize is {filesize}"),
        )));
    }
    if let Err(e) = held.spool.sync().await {
        tracing::error!(upload = %held.upload.id, error = %e, "cannot sync the spool");
        return Err(Some((
            UploadCode::UpstreamError,
            "cannot spool the file".into(),
        )));
    }
    held.spool.close().await;
    match session::deliver(conn, &held.upload, &held.spool, token).await {
        Ok(result) => Ok(result.to_string()),
        Err(e) => Err(Some(session::delivery_failure(&e))),
    }
}
