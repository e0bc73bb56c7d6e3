//! The simulated backend's document upload endpoints (CONTRACT 7): the
//! legacy `POST /documents/upload` (multipart/form-data) and the native
//! `GET /v2/documents/upload/stream` (the seed's version-1 protocol). Both
//! store what they receive (size and checksum, not the bytes), answer
//! `{fileId, url, ocrResult}`, honour `Idempotency-Key`, and obey one
//! injectable fault (`POST /_sim/upload-fault`), optionally for a number of
//! requests only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::state::Fault;
use super::{Ctx, authorize};
use realtime_edge::auth::OrgId;
use realtime_edge::http_server::{self, Body, BoxError, json, json_error};

/// The legacy multipart endpoint.
pub(crate) const LEGACY_PATH: &str = "/documents/upload";
/// The native upload stream.
pub(crate) const NATIVE_PATH: &str = "/v2/documents/upload/stream";
/// Largest file the simulator accepts.
const MAX_FILE_BYTES: u64 = 1 << 31;

/// FNV-1a, 64 bits: how the simulator fingerprints stored files.
pub fn checksum(data: &[u8]) -> u64 {
    checksum_more(0xcbf2_9ce4_8422_2325, data)
}

fn checksum_more(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One stored document.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// The org of the token it was sent with.
    pub org: OrgId,
    /// The endpoint it arrived at: "legacy" or "native".
    pub route: &'static str,
    /// Its filename.
    pub filename: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its [`checksum`].
    pub checksum: u64,
    /// The form's text fields (legacy) or the handshake's (native).
    pub fields: BTreeMap<String, String>,
    /// The request's Content-Length (legacy), checked against the body.
    pub content_length: Option<u64>,
    /// The `Idempotency-Key` header it was sent with.
    pub idempotency_key: Option<String>,
    /// The `Authorization` header it was sent with.
    pub authorization: Option<String>,
}

/// The upload endpoints' state, shared with tests in-process.
#[derive(Default)]
pub struct UploadStore {
    files: Mutex<BTreeMap<String, StoredFile>>,
    answers: Mutex<HashMap<String, Value>>,
    /// The injected fault and how many requests it still applies to
    /// (`None`: all); no fault when unset.
    fault: Mutex<Option<(Fault, Option<u64>)>>,
    next_id: AtomicU64,
    /// Requests to either endpoint (including failed and repeated ones).
    pub requests: AtomicU64,
    /// Requests answered from the idempotency record.
    pub repeats: AtomicU64,
}

impl UploadStore {
    /// Every stored file by fileId.
    pub fn files(&self) -> BTreeMap<String, StoredFile> {
        self.files.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Sets the fault for the next `times` requests (all when `None`).
    pub fn set_fault(&self, fault: Fault, times: Option<u64>) {
        if let Ok(mut f) = self.fault.lock() {
            *f = Some((fault, times));
        }
    }

    /// The fault for this request, counting it down.
    fn take_fault(&self) -> Fault {
        let Ok(mut guard) = self.fault.lock() else {
            return Fault::None;
        };
        let Some((fault, times)) = guard.as_mut() else {
            return Fault::None;
        };
        match times {
            None => fault.clone(),
            Some(0) => Fault::None,
            Some(n) => {
                *n -= 1;
                fault.clone()
            }
        }
    }

    fn answer_for(&self, key: Option<&str>) -> Option<Value> {
        let key = key?;
        let v = self.answers.lock().ok()?.get(key).cloned()?;
        self.repeats.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }

    fn store(&self, file: StoredFile) -> Value {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let file_id = format!("doc-{n}");
        let answer = json!({
            "fileId": file_id,
            "url": format!("/documents/{file_id}"),
            "ocrResult": {
                "documentType": file.fields.get("documentType"),
                "pages": 1,
                "confidence": 0.97,
                "bytes": file.size,
            },
        });
        if let (Some(k), Ok(mut a)) = (&file.idempotency_key, self.answers.lock()) {
            a.insert(k.clone(), answer.clone());
        }
        if let Ok(mut f) = self.files.lock() {
            f.insert(file_id, file);
        }
        answer
    }
}

/// What a fault makes of a request: `None` to go on serving it.
async fn fault_answer(ctx: &Ctx) -> Option<Response<Body>> {
    match ctx.uploads.take_fault() {
        // A stale V1 cursor means nothing to the upload endpoints.
        Fault::None | Fault::StaleCursor => None,
        Fault::Status(code) => Some(json_error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected fault",
        )),
        Fault::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        Fault::Garbage => Some(
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_server::full("<html>502 Bad Gateway</html>"))
                .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "x")),
        ),
        Fault::Drop => {
            let failing = stream::once(async {
                Err::<Frame<Bytes>, BoxError>("connection dropped by fault".into())
            });
            Some(
                Response::builder()
                    .body(BodyExt::boxed(StreamBody::new(failing)))
                    .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "x")),
            )
        }
        Fault::Hang => {
            let mut shutdown = ctx.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = shutdown.changed() => {}
            }
            Some(json_error(StatusCode::GATEWAY_TIMEOUT, "hung"))
        }
    }
}

fn header(req: &Request<Incoming>, name: impl http::header::AsHeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `POST /documents/upload`: a multipart form with text fields and `file`.
pub(super) async fn legacy(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "POST only");
    }
    ctx.uploads.requests.fetch_add(1, Ordering::Relaxed);
    let org = match authorize(ctx, &req) {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    if let Some(resp) = fault_answer(ctx).await {
        return resp;
    }
    let key = header(&req, "idempotency-key");
    if let Some(answer) = ctx.uploads.answer_for(key.as_deref()) {
        return json(StatusCode::OK, &answer);
    }
    let content_length = header(&req, http::header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    let authorization = header(&req, http::header::AUTHORIZATION);
    let Some(boundary) =
        header(&req, http::header::CONTENT_TYPE).and_then(|ct| multer::parse_boundary(ct).ok())
    else {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "multipart/form-data with a boundary required",
        );
    };
    let body_bytes = std::sync::Arc::new(AtomicU64::new(0));
    let counted = body_bytes.clone();
    let body = req.into_body().into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            counted.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let mut form = multer::Multipart::with_constraints(
        body,
        boundary,
        multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(MAX_FILE_BYTES + (1 << 20))),
    );
    let mut fields = BTreeMap::new();
    let mut file: Option<(String, u64, u64)> = None;
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad form: {e}")),
        };
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let filename = field.file_name().unwrap_or_default().to_string();
            let (mut size, mut sum) = (0u64, checksum(&[]));
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        size += c.len() as u64;
                        sum = checksum_more(sum, &c);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return json_error(StatusCode::BAD_REQUEST, &format!("bad file part: {e}"));
                    }
                }
            }
            file = Some((filename, size, sum));
        } else {
            match field.text().await {
                Ok(t) => {
                    fields.insert(name, t);
                }
                Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("bad field: {e}")),
            }
        }
    }
    let Some((filename, size, sum)) = file else {
        return json_error(StatusCode::BAD_REQUEST, "the form has no \"file\" part");
    };
    let received = body_bytes.load(Ordering::Relaxed);
    if content_length.is_some_and(|l| l != received) {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("Content-Length {content_length:?} but {received} bytes arrived"),
        );
    }
    let answer = ctx.uploads.store(StoredFile {
        org,
        route: "legacy",
        filename,
        size,
        checksum: sum,
        fields,
        content_length,
        idempotency_key: key,
        authorization,
    });
    json(StatusCode::OK, &answer)
}

type ServerWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `GET /v2/documents/upload/stream`: the seed's version 1.
pub(super) async fn native(ctx: std::sync::Arc<Ctx>, mut req: Request<Incoming>) -> Response<Body> {
    ctx.uploads.requests.fetch_add(1, Ordering::Relaxed);
    let org = match authorize(&ctx, &req) {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    if let Some(resp) = fault_answer(&ctx).await {
        return resp;
    }
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return json_error(StatusCode::UPGRADE_REQUIRED, "WebSocket only");
    };
    let authorization = header(&req, http::header::AUTHORIZATION);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(realtime_edge::uploads::upload_ws_config()),
        )
        .await;
        let answer = match receive_v1(&mut ws).await {
            Ok((hs, size, sum)) => {
                let fields: BTreeMap<String, String> = hs
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(k, _)| !matches!(k.as_str(), "filesize" | "version"))
                            .map(|(k, v)| {
                                let text = v
                                    .as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string());
                                (k.clone(), text)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let file = StoredFile {
                    org,
                    route: "native",
                    filename: fields.get("filename").cloned().unwrap_or_default(),
                    size,
                    checksum: sum,
                    fields,
                    content_length: None,
                    idempotency_key: None,
                    authorization,
                };
                Ok(ctx.uploads.store(file))
            }
            Err(e) => Err(e),
        };
        let (text, code) = match answer {
            Ok(v) => (v.to_string(), 1000),
            Err(message) => (
                json!({"type": "error", "code": "BAD_CHUNK", "message": message}).to_string(),
                1008,
            ),
        };
        let _ = ws.send(Message::Text(text.into())).await;
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
    });
    http_server::switching_protocols(&key)
}

/// Reads a version-1 upload: the handshake, then chunks until `final`.
async fn receive_v1(ws: &mut ServerWs) -> Result<(Value, u64, u64), String> {
    let mut next_text = async || -> Result<String, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(_) => return Err("expected a text message".into()),
                Err(_) => return Err("timed out".into()),
            }
        }
    };
    let hs: Value = serde_json::from_str(&next_text().await?).map_err(|e| e.to_string())?;
    let filesize = hs
        .get("filesize")
        .and_then(Value::as_u64)
        .filter(|&s| s <= MAX_FILE_BYTES)
        .ok_or("filesize required")?;
    let (mut size, mut sum, mut seq) = (0u64, checksum(&[]), 0u64);
    loop {
        let chunk: Value = serde_json::from_str(&next_text().await?).map_err(|e| e.to_string())?;
        if chunk.get("seq").and_then(Value::as_u64) != Some(seq + 1) {
            return Err(format!("Missing chunk: expected {}", seq + 1));
        }
        seq += 1;
        let data = base64::engine::general_purpose::STANDARD
            .decode(
                chunk
                    .get("data")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            )
            .map_err(|e| e.to_string())?;
        size += data.len() as u64;
        sum = checksum_more(sum, &data);
        if chunk.get("final").and_then(Value::as_bool) == Some(true) {
            break;
        }
    }
    if size != filesize {
        return Err(format!("got {size} bytes, filesize {filesize}"));
    }
    Ok((hs, size, sum))
}

/// `POST /_sim/upload-fault {"kind": ..., "times": n}`.
pub(super) fn set_fault(ctx: &Ctx, body: &Value) -> Response<Body> {
    match Fault::from_json(body) {
        Ok(f) => {
            let times = body.get("times").and_then(Value::as_u64);
            ctx.uploads.set_fault(f, times);
            json(
                StatusCode::OK,
                &json!({"uploadFault": body.get("kind"), "times": times}),
            )
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_incremental() {
        let data = b"hello world";
        assert_eq!(checksum(data), checksum_more(checksum(b"hello"), b" world"));
        assert_ne!(checksum(b"a"), checksum(b"b"));
    }

    #[test]
    fn faults_count_down() {
        let s = UploadStore::default();
        s.set_fault(Fault::Status(500), Some(2));
        assert_eq!(s.take_fault(), Fault::Status(500));
        assert_eq!(s.take_fault(), Fault::Status(500));
        assert_eq!(s.take_fault(), Fault::None);
        s.set_fault(Fault::Garbage, None);
        assert_eq!(s.take_fault(), Fault::Garbage);
        assert_eq!(s.take_fault(), Fault::Garbage);
    }
}
