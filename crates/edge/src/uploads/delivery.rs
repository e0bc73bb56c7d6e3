//! Delivering a spooled file to the backend, once per upload: as
//! `multipart/form-data` to its legacy endpoint (streamed from the spool
//! file with an exact `Content-Length`), or as a version-1 client of its
//! native upload stream. 5xx, garbage and timeouts are retried with
//! backoff; a 4xx is the backend's final word.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::handshake::FileMeta;
use super::multipart::MultipartForm;
use crate::config::Config;
use crate::http_server::{Body, BoxError};
use crate::protocol::close;

/// The backend's native upload stream (CONTRACT 7).
pub(crate) const NATIVE_UPLOAD_PATH: &str = "/v2/documents/upload/stream";
/// Bytes per chunk sent to the native endpoint and read from the spool.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;
/// Largest backend answer read.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Part of a rejected answer's body quoted in the error message.
const QUOTED_BODY_BYTES: usize = 2048;
/// First retry delay; doubled per attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a delivery did not produce a result.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    /// The backend refused the file (4xx): retrying will not help.
    #[error("the backend rejected the upload: {0}")]
    Rejected(String),
    /// Every attempt failed (5xx, garbage, timeout, connection).
    #[error("delivery failed after {attempts} attempt(s); last: {last}")]
    Failed { attempts: u32, last: String },
    /// The sidecar is shutting down; the file stays spooled.
    #[error("the sidecar is shutting down")]
    Shutdown,
}

/// One failed attempt.
enum AttemptError {
    Rejected(String),
    Retry(String),
}

/// What to deliver.
pub(crate) struct Parcel<'a> {
    pub(crate) upload_id: &'a str,
    pub(crate) meta: &'a FileMeta,
    pub(crate) path: &'a Path,
    /// The client's bearer token.
    pub(crate) token: &'a str,
}

/// Delivers files to one backend.
pub(crate) struct Delivery {
    http: Client<HttpConnector, Body>,
    base_url: url::Url,
    legacy_path: String,
    attempts: u32,
    timeout: Duration,
}

impl Delivery {
    pub(crate) fn new(config: &Config) -> Delivery {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        Delivery {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base_url: config.upstream.base_url.clone(),
            legacy_path: config.uploads.legacy_path.clone(),
            attempts: config.uploads.delivery_attempts,
            timeout: config.uploads.delivery_timeout,
        }
    }

    /// Delivers `parcel` (natively when `native`), retrying as configured.
    pub(crate) async fn deliver(
        &self,
        parcel: &Parcel<'_>,
        native: bool,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<Value, DeliveryError> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            let one = async {
                if native {
                    self.native_attempt(parcel).await
                } else {
                    self.legacy_attempt(parcel).await
                }
            };
            let outcome = tokio::select! {
                r = tokio::time::timeout(self.timeout, one) => r,
                _ = shutdown.changed() => return Err(DeliveryError::Shutdown),
            };
            match outcome {
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(AttemptError::Rejected(why))) => return Err(DeliveryError::Rejected(why)),
                Ok(Err(AttemptError::Retry(why))) => last = why,
                Err(_) => {
                    last = format!("no answer within {} s", self.timeout.as_secs());
                }
            }
            tracing::warn!(upload = parcel.upload_id, attempt, error = %last, "upload delivery attempt failed");
            if attempt < self.attempts {
                let wait = backoff(attempt);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Err(DeliveryError::Shutdown),
                }
            }
        }
        Err(DeliveryError::Failed {
            attempts: self.attempts,
            last,
        })
    }

    async fn legacy_attempt(&self, parcel: &Parcel<'_>) -> Result<Value, AttemptError> {
        let meta = parcel.meta;
        let fields = meta.text_fields();
        let fields: Vec<(&str, String)> = fields.into_iter().collect();
        let form = MultipartForm::new(
            &fields,
            "file",
            &meta.filename,
            meta.mimetype
                .as_deref()
                .unwrap_or("application/octet-stream"),
        );
        let length = form
            .content_length(meta.filesize)
            .ok_or_else(|| AttemptError::Rejected("file too large to describe".into()))?;
        let file = tokio::fs::File::open(parcel.path)
            .await
            .map_err(|e| AttemptError::Retry(format!("cannot open the spooled file: {e}")))?;
        let body = multipart_body(form.head.clone(), file, meta.filesize, form.tail.clone());
        let mut url = self.base_url.clone();
        url.set_path(&self.legacy_path);
        let req = http::Request::post(url.as_str())
            .header(http::header::CONTENT_TYPE, form.content_type())
            .header(http::header::CONTENT_LENGTH, length)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", parcel.token),
            )
            .header("idempotency-key", parcel.upload_id)
            .header(http::header::ACCEPT, "application/json")
            .body(body)
            .map_err(|e| AttemptError::Rejected(format!("cannot build the request: {e}")))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| AttemptError::Retry(format!("request failed: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| AttemptError::Retry(format!("answer unreadable: {e}")))?
            .to_bytes();
        if status.is_success() {
            match serde_json::from_slice::<Value>(&body) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ => Err(AttemptError::Retry(format!(
                    "HTTP {} with a body that is not a JSON object",
                    status.as_u16()
                ))),
            }
        } else if status.is_client_error() {
            Err(AttemptError::Rejected(format!(
                "HTTP {}: {}",
                status.as_u16(),
                quote_body(&body)
            )))
        } else {
            Err(AttemptError::Retry(format!(
                "HTTP {}: {}",
                status.as_u16(),
                quote_body(&body)
            )))
        }
    }

    async fn native_attempt(&self, parcel: &Parcel<'_>) -> Result<Value, AttemptError> {
        let mut url = self.base_url.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|_| AttemptError::Rejected("backend URL cannot be a ws URL".into()))?;
        url.set_path(NATIVE_UPLOAD_PATH);
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| AttemptError::Rejected(format!("bad native upload URL: {e}")))?;
        let auth = format!("Bearer {}", parcel.token)
            .parse()
            .map_err(|_| AttemptError::Rejected("token is not a header value".into()))?;
        req.headers_mut().insert(http::header::AUTHORIZATION, auth);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
            req,
            Some(crate::upstream::client_ws_config()),
            true,
        )
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) if r.status().is_client_error() => {
                let body = r.body().as_deref().unwrap_or_default();
                AttemptError::Rejected(format!(
                    "HTTP {}: {}",
                    r.status().as_u16(),
                    quote_body(body)
                ))
            }
            other => AttemptError::Retry(format!("native upload connection failed: {other}")),
        })?;
        let retry = |e: tokio_tungstenite::tungstenite::Error| {
            AttemptError::Retry(format!("native upload stream failed: {e}"))
        };
        ws.send(Message::Text(parcel.meta.v1_handshake().to_string().into()))
            .await
            .map_err(retry)?;
        let mut file = tokio::fs::File::open(parcel.path)
            .await
            .map_err(|e| AttemptError::Retry(format!("cannot open the spooled file: {e}")))?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        let mut sent: u64 = 0;
        let mut seq: u64 = 0;
        while sent < parcel.meta.filesize {
            let want = (parcel.meta.filesize - sent).min(CHUNK_BYTES as u64) as usize;
            file.read_exact(&mut buf[..want])
                .await
                .map_err(|e| AttemptError::Retry(format!("spooled file unreadable: {e}")))?;
            sent += want as u64;
            seq += 1;
            let chunk = serde_json::json!({
                "seq": seq,
                "data": base64::engine::general_purpose::STANDARD.encode(&buf[..want]),
                "final": sent == parcel.meta.filesize,
            });
            ws.feed(Message::Text(chunk.to_string().into()))
                .await
                .map_err(retry)?;
        }
        ws.flush().await.map_err(retry)?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let _ = ws.close(None).await;
                    return match serde_json::from_str::<Value>(&t) {
                        Ok(v) if v.get("type").and_then(Value::as_str) == Some("error") => {
                            Err(AttemptError::Retry(format!("native upload error: {v}")))
                        }
                        Ok(v @ Value::Object(_)) => Ok(v),
                        _ => Err(AttemptError::Retry(
                            "native upload answered something that is not a JSON object".into(),
                        )),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    let why =
                        format!("native upload closed with {code} before answering: {reason}");
                    return Err(if code == close::POLICY {
                        AttemptError::Rejected(why)
                    } else {
                        AttemptError::Retry(why)
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(retry(e)),
                None => {
                    return Err(AttemptError::Retry(
                        "native upload stream ended before answering".into(),
                    ));
                }
            }
        }
    }
}

/// The request body: `head`, the file's `len` bytes read in chunks, `tail`.
fn multipart_body(head: Bytes, file: tokio::fs::File, len: u64, tail: Bytes) -> Body {
    enum Part {
        Head(tokio::fs::File),
        File(tokio::fs::File, u64),
        Done,
    }
    let frames = stream::unfold(
        (Part::Head(file), head, tail),
        move |(part, head, tail)| async move {
            match part {
                Part::Head(f) => Some((
                    Ok(Frame::data(head.clone())),
                    (Part::File(f, len), head, tail),
                )),
                Part::File(_, 0) => Some((Ok(Frame::data(tail.clone())), (Part::Done, head, tail))),
                Part::File(mut f, left) => {
                    let want = left.min(CHUNK_BYTES as u64) as usize;
                    let mut buf = vec![0u8; want];
                    match f.read_exact(&mut buf).await {
                        Ok(_) => Some((
                            Ok(Frame::data(Bytes::from(buf))),
                            (Part::File(f, left - want as u64), head, tail),
                        )),
                        Err(e) => Some((
                            Err::<Frame<Bytes>, BoxError>(Box::new(e)),
                            (Part::Done, head, tail),
                        )),
                    }
                }
                Part::Done => None,
            }
        },
    );
    BodyExt::boxed(StreamBody::new(frames))
}

fn quote_body(body: &[u8]) -> String {
    let cut = &body[..body.len().min(QUOTED_BODY_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

/// Delay before attempt `attempt + 1`: doubling, capped, jittered to 50-100 %.
fn backoff(attempt: u32) -> Duration {
    let base = FIRST_BACKOFF
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= FIRST_BACKOFF && backoff(1) >= FIRST_BACKOFF / 2);
        assert!(backoff(3) >= FIRST_BACKOFF * 2);
        assert!(backoff(40) <= MAX_BACKOFF);
    }

    #[tokio::test]
    async fn body_is_head_file_tail_with_the_announced_length() {
        let dir = std::env::temp_dir().join(format!(
            "re-delivery-{}-{}",
            std::process::id(),
            crate::clock::unix_micros()
        ));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..(CHUNK_BYTES * 2 + 17)).map(|i| i as u8).collect();
        tokio::fs::write(&path, &data).await.unwrap();
        let form = MultipartForm::new(&[("filename", "f".into())], "file", "f", "text/plain");
        let file = tokio::fs::File::open(&path).await.unwrap();
        let body = multipart_body(
            form.head.clone(),
            file,
            data.len() as u64,
            form.tail.clone(),
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(
            Some(bytes.len() as u64),
            form.content_length(data.len() as u64)
        );
        assert_eq!(
            &bytes[form.head.len()..bytes.len() - form.tail.len()],
            &data[..]
        );
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
