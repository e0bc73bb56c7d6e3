//! The simulated backend's chat (CONTRACT 8): the three store endpoints the
//! sidecar calls in hosted mode (history, messages with `Idempotency-Key`,
//! receipts), each with an injectable fault, and a native chat stream for
//! `COLLAB_CHAT_NATIVE=true`. Counters let tests and the benchmark see how
//! many requests reached the backend.
//!
//! Control: `POST /_sim/chat/fault {"endpoint": "history|messages|receipts",
//! "kind": "none|status|slow|garbage|hang", ...}` and `GET /_sim/chat/stats`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use super::state::Fault;
use super::{Ctx, native};
use realtime_edge::auth::OrgId;
use realtime_edge::clock;
use realtime_edge::http_server::{self, Body, json, json_error};

pub(crate) const HISTORY_PATH: &str = "/collaboration/chat/history";
pub(crate) const MESSAGES_PATH: &str = "/collaboration/chat/messages";
pub(crate) const RECEIPTS_PATH: &str = "/collaboration/chat/receipts";
pub(crate) const STREAM_PATH: &str = realtime_edge::chat::CHAT_PATH;

/// Messages kept per room.
const ROOM_CAPACITY: usize = 1000;
/// Idempotency keys remembered (oldest forgotten first).
const IDEMPOTENCY_CAPACITY: usize = 100_000;
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Frames buffered per native chat listener before it lags.
const NATIVE_FANOUT: usize = 1024;

/// Requests that reached each endpoint.
#[derive(Debug, Default)]
pub struct ChatCounters {
    pub history: AtomicU64,
    pub messages: AtomicU64,
    pub receipts: AtomicU64,
    /// Messages actually stored (idempotent repeats excluded).
    pub(crate) saved: AtomicU64,
    pub native_connections: AtomicU64,
}

type RoomId = (OrgId, String);

#[derive(Default)]
struct Inner {
    rooms: HashMap<RoomId, VecDeque<Value>>,
    idempotency: HashMap<(OrgId, String, String), Value>,
    idempotency_order: VecDeque<(OrgId, String, String)>,
    /// The latest receipt per (org, room, user).
    receipts: HashMap<(OrgId, String, String), Value>,
    faults: HashMap<&'static str, Fault>,
    native: HashMap<RoomId, broadcast::Sender<String>>,
}

/// The simulated chat store.
#[derive(Default)]
pub struct ChatStore {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    pub counters: ChatCounters,
}

impl ChatStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Injects `fault` into `endpoint` (`history`, `messages`, `receipts`).
    pub fn set_fault(&self, endpoint: &str, fault: Fault) -> Result<(), String> {
        let key = match endpoint {
            "history" => "history",
            "messages" => "messages",
            "receipts" => "receipts",
            other => {
                return Err(format!(
                    "unknown chat endpoint {other:?} (history, messages, receipts)"
                ));
            }
        };
        self.lock().faults.insert(key, fault);
        Ok(())
    }

    fn fault(&self, endpoint: &'static str) -> Fault {
        self.lock()
            .faults
            .get(endpoint)
            .cloned()
            .unwrap_or(Fault::None)
    }

    /// The messages stored in a room, oldest first.
    pub fn messages(&self, org: OrgId, room: &str) -> Vec<Value> {
        self.lock()
            .rooms
            .get(&(org, room.to_string()))
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The latest stored receipt of a user in a room.
    pub fn receipt(&self, org: OrgId, room: &str, user: &str) -> Option<Value> {
        self.lock()
            .receipts
            .get(&(org, room.to_string(), user.to_string()))
            .cloned()
    }

    /// Stores a message once per (org, user, idempotency key).
    fn save(&self, org: OrgId, room: &str, user: &str, name: &str, text: &str, key: &str) -> Value {
        let mut g = self.lock();
        let idem = (org, user.to_string(), key.to_string());
        if let Some(saved) = g.idempotency.get(&idem) {
            return saved.clone();
        }
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let saved = json!({
            "id": format!("m{n}"),
            "roomId": room,
            "userId": user,
            "userName": name,
            "text": text,
            "timestamp": clock::now_rfc3339(),
        });
        let log = g.rooms.entry((org, room.to_string())).or_default();
        log.push_back(saved.clone());
        if log.len() > ROOM_CAPACITY {
            log.pop_front();
        }
        g.idempotency.insert(idem.clone(), saved.clone());
        g.idempotency_order.push_back(idem);
        if g.idempotency_order.len() > IDEMPOTENCY_CAPACITY
            && let Some(old) = g.idempotency_order.pop_front()
        {
            g.idempotency.remove(&old);
        }
        self.counters.saved.fetch_add(1, Ordering::Relaxed);
        saved
    }

    fn history(&self, org: OrgId, room: &str, limit: usize) -> Vec<Value> {
        let g = self.lock();
        match g.rooms.get(&(org, room.to_string())) {
            Some(log) => log
                .iter()
                .skip(log.len().saturating_sub(limit))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn stats_json(&self) -> Value {
        let c = &self.counters;
        json!({
            "history": c.history.load(Ordering::Relaxed),
            "messages": c.messages.load(Ordering::Relaxed),
            "receipts": c.receipts.load(Ordering::Relaxed),
            "saved": c.saved.load(Ordering::Relaxed),
            "nativeConnections": c.native_connections.load(Ordering::Relaxed),
        })
    }
}

/// Whether the simulator's chat serves `path`.
pub(super) fn serves(path: &str) -> bool {
    matches!(
        path,
        HISTORY_PATH
            | MESSAGES_PATH
            | RECEIPTS_PATH
            | STREAM_PATH
            | "/_sim/chat/fault"
            | "/_sim/chat/stats"
    )
}

pub(super) async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let chat = ctx.chat.clone();
    match (req.method().clone(), path) {
        (Method::GET, "/_sim/chat/stats") => json(StatusCode::OK, &chat.stats_json()),
        (Method::POST, "/_sim/chat/fault") => {
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            let endpoint = body.get("endpoint").and_then(Value::as_str).unwrap_or("");
            match Fault::from_json(&body).and_then(|f| chat.set_fault(endpoint, f)) {
                Ok(()) => json(
                    StatusCode::OK,
                    &json!({"endpoint": endpoint, "fault": body.get("kind")}),
                ),
                Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (Method::GET, STREAM_PATH) => native_stream(ctx, req).await,
        (Method::GET, HISTORY_PATH) => {
            chat.counters.history.fetch_add(1, Ordering::Relaxed);
            let (org, _) = match user(&ctx, &req) {
                Ok(u) => u,
                Err(resp) => return *resp,
            };
            if let Some(resp) = apply_fault(&ctx, chat.fault("history")).await {
                return resp;
            }
            let query: HashMap<String, String> =
                url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            let Some(room) = query.get("roomId") else {
                return json_error(StatusCode::BAD_REQUEST, "roomId required");
            };
            let limit = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(50);
            json(
                StatusCode::OK,
                &json!({"messages": chat.history(org, room, limit)}),
            )
        }
        (Method::POST, MESSAGES_PATH) => {
            chat.counters.messages.fetch_add(1, Ordering::Relaxed);
            let (org, (user, name)) = match user(&ctx, &req) {
                Ok(u) => u,
                Err(resp) => return *resp,
            };
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let fault = chat.fault("messages");
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            if let Some(resp) = apply_fault(&ctx, fault).await {
                return resp;
            }
            let Some(key) = key else {
                return json_error(StatusCode::BAD_REQUEST, "Idempotency-Key header required");
            };
            let (Some(room), Some(text)) = (
                body.get("roomId").and_then(Value::as_str),
                body.get("text").and_then(Value::as_str),
            ) else {
                return json_error(StatusCode::BAD_REQUEST, "roomId and text required");
            };
            json(
                StatusCode::OK,
                &chat.save(org, room, &user, &name, text, &key),
            )
        }
        (Method::POST, RECEIPTS_PATH) => {
            chat.counters.receipts.fetch_add(1, Ordering::Relaxed);
            let (org, (user, _)) = match user(&ctx, &req) {
                Ok(u) => u,
                Err(resp) => return *resp,
            };
            let fault = chat.fault("receipts");
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return *resp,
            };
            if let Some(resp) = apply_fault(&ctx, fault).await {
                return resp;
            }
            let (Some(room), Some(id)) = (
                body.get("roomId").and_then(Value::as_str),
                body.get("messageId"),
            ) else {
                return json_error(StatusCode::BAD_REQUEST, "roomId and messageId required");
            };
            chat.lock()
                .receipts
                .insert((org, room.to_string(), user), id.clone());
            json(StatusCode::OK, &json!({"ok": true}))
        }
        _ => json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "wrong method for this chat endpoint",
        ),
    }
}

/// Who sent a request: org, user id and user name from the token.
type Caller = (OrgId, (String, String));

/// The org and (user id, user name) of a request's token.
fn user(ctx: &Ctx, req: &Request<Incoming>) -> Result<Caller, Box<Response<Body>>> {
    let token = realtime_edge::auth::token_from_request(req.headers(), req.uri().query())
        .unwrap_or_default();
    match ctx.verifier.verify(&token) {
        Ok(id) => match id.user_id {
            Some(u) => {
                let name = id.user_name.unwrap_or_else(|| u.clone());
                Ok((id.org_id, (u, name)))
            }
            None => Err(Box::new(json_error(
                StatusCode::UNAUTHORIZED,
                "token names no user",
            ))),
        },
        Err(e) => Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            &e.to_string(),
        ))),
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Box<Response<Body>>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => serde_json::from_slice(&b.to_bytes()).map_err(|e| {
            Box::new(json_error(
                StatusCode::BAD_REQUEST,
                &format!("body is not JSON: {e}"),
            ))
        }),
        Err(_) => Err(Box::new(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
        ))),
    }
}

/// Applies an injected fault: an answer to send instead, or `None` to go on
/// (after a delay for `slow`).
async fn apply_fault(ctx: &Ctx, fault: Fault) -> Option<Response<Body>> {
    match fault {
        // A stale V1 cursor means nothing to the chat store.
        Fault::None | Fault::StaleCursor => None,
        Fault::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        Fault::Status(code) => Some(json_error(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "injected fault",
        )),
        Fault::Garbage | Fault::Drop => Some(
            Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_server::full("<html>502 Bad Gateway</html>"))
                .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "x")),
        ),
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

/// The native chat stream: handshake `{"roomId"}`, then `history`, then
/// chat messages stored and broadcast and typing broadcast, per (org, room).
async fn native_stream(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let (org, (user, name)) = match user(&ctx, &req) {
        Ok(u) => u,
        Err(resp) => return *resp,
    };
    native::accept(req, move |mut ws| async move {
        let chat = ctx.chat.clone();
        chat.counters
            .native_connections
            .fetch_add(1, Ordering::Relaxed);
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        let Ok(Some(Ok(Message::Text(text)))) = first else {
            return;
        };
        let Ok(room) = realtime_edge::chat::protocol::parse_handshake(&text) else {
            native::close(
                &mut ws,
                realtime_edge::protocol::close::POLICY,
                "BAD_HANDSHAKE",
            )
            .await;
            return;
        };
        let mut feed = {
            let mut g = chat.lock();
            g.native
                .entry((org, room.clone()))
                .or_insert_with(|| broadcast::channel(NATIVE_FANOUT).0)
                .subscribe()
        };
        let history = json!({"type": "history", "messages": chat.history(org, &room, 50)});
        if ws
            .send(Message::Text(history.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let publish = |frame: String| {
            if let Some(tx) = chat.lock().native.get(&(org, room.clone())) {
                let _ = tx.send(frame);
            }
        };
        let mut shutdown = ctx.shutdown.clone();
        loop {
            tokio::select! {
                incoming = ws.next() => match incoming {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        match v.get("type").and_then(Value::as_str) {
                            Some("chat") => {
                                let text = v.get("text").and_then(Value::as_str).unwrap_or("");
                                let cmid = v.get("clientMsgId").and_then(Value::as_str).unwrap_or("");
                                let saved = chat.save(org, &room, &user, &name, text, cmid);
                                let mut out: Map<String, Value> = saved.as_object().cloned().unwrap_or_default();
                                out.insert("type".into(), json!("chat"));
                                out.insert("clientMsgId".into(), json!(cmid));
                                publish(Value::Object(out).to_string());
                            }
                            Some("typing") => publish(json!({"type": "typing", "userId": user, "userName": name}).to_string()),
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                frame = feed.recv() => match frame {
                    Ok(f) => {
                        if ws.send(Message::Text(f.into())).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = shutdown.changed() => {
                    native::close(&mut ws, realtime_edge::protocol::close::GOING_AWAY, "backend shutting down").await;
                    break;
                }
            }
        }
    })
}
