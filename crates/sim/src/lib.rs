//! A simulated backend on loopback, for the demo, the tests and the
//! benchmark: the ten V1 long-poll endpoints (CONTRACT 3.1), the native
//! stream (3.2), the document upload endpoints (7, in `uploads`), an event
//! generator, the write endpoints of the migration guide's walkthrough
//! (`writes`), and a control API under `/_sim/`
//! (publish, faults, counters) that is also available in-process.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chat;
mod generator;
pub(crate) mod jwks;
mod native;
mod state;
mod uploads;
mod v1;
pub(crate) mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) use chat::ChatStore;
pub use generator::GeneratorConfig;
pub use state::{Fault, SimState};
pub use uploads::{StoredFile, UploadStore, checksum};

use realtime_edge::auth::{OrgId, Verifier};
use realtime_edge::config::{AuthConfig, DEFAULT_SERVICES};
use realtime_edge::http_server::{self, Body, BoxError, ServerLimits, json, json_error};

/// How the simulated backend behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The HS256 secret tokens are verified with.
    pub jwt_secret: String,
    /// The claim holding the org id.
    pub org_claim: String,
    /// How long a V1 request is held when nothing is pending.
    pub hold: Duration,
    /// (name, v1_path) of each service.
    pub services: Vec<(String, String)>,
    /// Path of the native stream.
    pub native_path: String,
    /// Interval of the native stream's `ping` messages.
    pub ping_interval: Duration,
    /// Events kept per org for cursors and native resume.
    pub log_capacity: usize,
    /// An event generator started with the simulator.
    pub generator: Option<GeneratorConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            jwt_secret: "demo-secret".into(),
            org_claim: "orgId".into(),
            hold: Duration::from_secs(25),
            services: DEFAULT_SERVICES
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_string()))
                .collect(),
            native_path: "/v2/realtime/stream".into(),
            ping_interval: Duration::from_secs(15),
            log_capacity: 100_000,
            generator: None,
        }
    }
}

/// A running simulated backend.
pub struct Simulator {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The V1 and native state: event logs, faults, counters.
    pub state: Arc<SimState>,
    /// The document upload endpoints' state.
    pub uploads: Arc<UploadStore>,
    /// Chat history, messages, receipts and the native chat stream.
    pub chat: Arc<ChatStore>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct Ctx {
    cfg: SimConfig,
    state: Arc<SimState>,
    verifier: Verifier,
    shutdown: watch::Receiver<bool>,
    /// Ids of the entities the write endpoints create.
    next_entity: std::sync::atomic::AtomicU64,
    uploads: Arc<UploadStore>,
    chat: Arc<ChatStore>,
}

impl Simulator {
    /// Starts on `listener` (bind 127.0.0.1:0 for tests).
    pub async fn start(cfg: SimConfig, listener: TcpListener) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let state = SimState::new(cfg.services.clone(), cfg.log_capacity);
        let verifier = Verifier::new(&AuthConfig {
            jwt_secret: Some(cfg.jwt_secret.clone()),
            org_claim: cfg.org_claim.clone(),
            ..AuthConfig::default()
        })
        .map_err(std::io::Error::other)?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let mut tasks = Vec::new();
        if let Some(g) = cfg.generator.clone() {
            tasks.push(tokio::spawn(generator::run(
                state.clone(),
                g,
                shutdown.clone(),
            )));
        }
        let uploads = Arc::new(UploadStore::default());
        let chat = Arc::new(ChatStore::default());
        let ctx = Arc::new(Ctx {
            cfg,
            state: state.clone(),
            verifier,
            shutdown: shutdown.clone(),
            next_entity: std::sync::atomic::AtomicU64::new(1),
            uploads: uploads.clone(),
            chat: chat.clone(),
        });
        let limits = ServerLimits {
            max_connections: 30_000,
            header_timeout: Duration::from_secs(30),
        };
        tasks.push(tokio::spawn(http_server::serve(
            listener,
            None,
            limits,
            move |req, _peer| handle(ctx.clone(), req),
            shutdown,
        )));
        Ok(Simulator {
            addr,
            state,
            uploads,
            chat,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// Starts an event generator on the running backend; it stops when the
    /// returned sender is dropped or set, or when the backend shuts down.
    pub fn spawn_generator(&self, cfg: GeneratorConfig) -> watch::Sender<bool> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut shutdown = self.shutdown.subscribe();
        let (merged_tx, merged_rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx.changed() => {}
                _ = shutdown.changed() => {}
            }
            let _ = merged_tx.send(true);
        });
        tokio::spawn(generator::run(self.state.clone(), cfg, merged_rx));
        stop_tx
    }

    /// `http://{addr}`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits (briefly) for its tasks.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if path == "/_sim/echo" {
        return echo(req).await;
    }
    if path == "/_sim/ws-echo" {
        return native::echo_upgrade(req).await;
    }
    if path == jwks::JWKS_PATH {
        return ctx.state.jwks.serve();
    }
    if path == uploads::LEGACY_PATH {
        return uploads::legacy(&ctx, req).await;
    }
    if path == uploads::NATIVE_PATH {
        return uploads::native(ctx.clone(), req).await;
    }
    if chat::serves(&path) {
        return chat::handle(ctx, req, &path).await;
    }
    if path.starts_with("/_sim/") {
        return control(&ctx, req, &path).await;
    }
    if path == ctx.cfg.native_path {
        return native::upgrade(ctx.clone(), req).await;
    }
    if let Some((name, _)) = ctx.cfg.services.iter().find(|(_, p)| *p == path) {
        let name = name.clone();
        return v1::serve(&ctx, req, &name).await;
    }
    if let Some(route) = writes::route(&ctx.cfg.services, req.method(), &path) {
        return write(&ctx, req, route).await;
    }
    json_error(
        StatusCode::NOT_FOUND,
        "no such endpoint on the simulated backend",
    )
}

fn authorize(ctx: &Ctx, req: &Request<Incoming>) -> Result<OrgId, Box<Response<Body>>> {
    let token = realtime_edge::auth::token_from_request(req.headers(), req.uri().query())
        .unwrap_or_default();
    let refusal = match ctx.verifier.verify(&token) {
        Ok(id) if !ctx.state.is_revoked(&token) => return Ok(id.org_id),
        Ok(_) => "token revoked".to_string(),
        Err(e) => e.to_string(),
    };
    ctx.state
        .counters
        .unauthorized
        .fetch_add(1, Ordering::Relaxed);
    Err(Box::new(json_error(StatusCode::UNAUTHORIZED, &refusal)))
}

/// A write of the guide's walkthrough (`POST /finance/revenue`, ...):
/// publishes the matching event for the token's org and answers with the
/// entity, as a backend that stores it would.
async fn write(ctx: &Ctx, req: Request<Incoming>, route: writes::WriteRoute) -> Response<Body> {
    let org = match authorize(ctx, &req) {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    let body = match Limited::new(req.into_body(), writes::MAX_WRITE_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    let n = ctx.next_entity.fetch_add(1, Ordering::Relaxed);
    match writes::event_for(&route, &body, n) {
        Ok((event, mut entity)) => {
            let ids = ctx.state.publish(org, &route.service, vec![event]);
            if let (Some(obj), Some(id)) = (entity.as_object_mut(), ids.first()) {
                obj.insert("eventId".into(), json!(id));
            }
            json(writes::status_for(&route), &entity)
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
    }
}

/// Echoes a request back (method, path, query, headers, body), streaming
/// the body through, for pass-through tests.
async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    let meta = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
    });
    Response::builder()
        .header("x-echo-meta", meta.to_string())
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(body.map_err(Into::into).boxed())
        .unwrap_or_else(|_| json_error(StatusCode::INTERNAL_SERVER_ERROR, "echo"))
}

/// The body's `service`, when it names a simulated service.
fn known_service<'a>(state: &SimState, body: &'a Value) -> Result<&'a str, Box<Response<Body>>> {
    match body.get("service").and_then(Value::as_str) {
        None => Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "service required",
        ))),
        Some(s) if !state.has_service(s) => Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            &format!("unknown service {s:?}"),
        ))),
        Some(s) => Ok(s),
    }
}

/// The control API: publish, faults, counters.
async fn control(ctx: &Ctx, req: Request<Incoming>, path: &str) -> Response<Body> {
    let method = req.method().clone();
    let body: Value = if method == Method::POST {
        match Limited::new(req.into_body(), 8 << 20).collect().await {
            Ok(b) => match serde_json::from_slice(&b.to_bytes()) {
                Ok(v) => v,
                Err(e) => {
                    return json_error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}"));
                }
            },
            Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
        }
    } else {
        Value::Null
    };
    let state = &ctx.state;
    match (method, path) {
        (Method::GET, "/_sim/stats") => json(StatusCode::OK, &state.stats_json()),
        (Method::POST, "/_sim/jwks") => {
            state.jwks.set(body);
            json(StatusCode::OK, &json!({"jwks": "set"}))
        }
        (Method::POST, "/_sim/publish") => {
            let Some(org) = body.get("orgId").and_then(Value::as_u64) else {
                return json_error(StatusCode::BAD_REQUEST, "orgId (integer) required");
            };
            let service = match known_service(state, &body) {
                Ok(s) => s,
                Err(resp) => return *resp,
            };
            let events = match (
                body.get("events"),
                body.get("count").and_then(Value::as_u64),
            ) {
                (Some(Value::Array(list)), _) => list.clone(),
                (None, Some(n)) if n <= 100_000 => {
                    (0..n).map(|i| json!({"data": {"n": i}})).collect()
                }
                _ => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "events (list) or count (<= 100000) required",
                    );
                }
            };
            let ids = state.publish(org, service, events);
            json(StatusCode::OK, &json!({ "eventIds": ids }))
        }
        (Method::POST, "/_sim/fault") => {
            if let Some(n) = body.get("native").and_then(Value::as_str) {
                state.set_native_down(n == "down");
                return json(StatusCode::OK, &json!({"native": n}));
            }
            let service = match known_service(state, &body) {
                Ok(s) => s,
                Err(resp) => return *resp,
            };
            match Fault::from_json(&body) {
                Ok(f) => {
                    state.set_fault(service, f);
                    json(
                        StatusCode::OK,
                        &json!({"service": service, "fault": body.get("kind")}),
                    )
                }
                Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (Method::POST, "/_sim/upload-fault") => uploads::set_fault(ctx, &body),
        _ => json_error(
            StatusCode::NOT_FOUND,
            "control endpoints: GET /_sim/stats, POST /_sim/publish, POST /_sim/fault, POST /_sim/upload-fault",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            Fault::from_json(&json!({"kind":"status","status":500})),
            Ok(Fault::Status(500))
        );
        assert_eq!(
            Fault::from_json(&json!({"kind":"slow","ms":5})),
            Ok(Fault::Slow(5))
        );
        assert!(Fault::from_json(&json!({"kind":"status"})).is_err());
        assert!(Fault::from_json(&json!({"kind":"explode"})).is_err());
    }
}
