//! The client-facing listener: `/v2/realtime/stream` is served here, every
//! other request and upgrade goes to the backend unchanged (pass-through).
#![warn(missing_docs)]

pub(crate) mod passthrough;
pub(crate) mod relay;
pub(crate) mod session;
mod stream_guard;
mod write;

/// How much a client's socket write buffer may hold (the benchmark states
/// the per-client memory bound with it).
pub use session::write_buffer_limit;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::auth::{self, Verifier};
use crate::client_ws::{close_with, server_ws_config};
use crate::drain::Drain;
use crate::http_server::{Body, json_error};
use crate::hub::HubRegistry;
use crate::metrics::ErrorKind;

/// The path of the unified stream.
pub(crate) const STREAM_PATH: &str = "/v2/realtime/stream";

/// What the client listener needs.
pub(crate) struct Gateway {
    pub(crate) registry: Arc<HubRegistry>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) passthrough: passthrough::Passthrough,
    /// Answers old clients' V1 long-polls from the hub when the flag is on.
    pub(crate) facade: Arc<crate::facade::Facade>,
    pub(crate) stream_slots: Arc<Semaphore>,
    /// Streams being refused with 1013 at once (see `refuse_overloaded`).
    pub(crate) refusal_slots: Arc<Semaphore>,
    /// Refuses new streams once the drain window started; tracks and closes open ones.
    pub(crate) drain: Arc<Drain>,
    pub(crate) tls: bool,
    /// Document uploads (`/v2/documents/upload/stream`).
    pub(crate) uploads: Arc<crate::uploads::Uploads>,
    /// `/v2/collaboration/chat/stream` (CONTRACT 8).
    pub(crate) chat: Arc<crate::chat::ChatService>,
}

impl Gateway {
    /// The paths this gateway answers itself, or may (the facade's): every
    /// other request is pass-through, which the byte path may forward
    /// without hyper.
    pub(crate) fn own_paths(&self) -> passthrough::raw::OwnPaths {
        [
            STREAM_PATH,
            crate::assets::CLIENT_JS_PATH,
            crate::uploads::UPLOAD_PATH,
            crate::chat::CHAT_PATH,
        ]
        .into_iter()
        .chain(self.facade.paths())
        .map(|p| p.as_bytes().to_vec())
        .collect()
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        if let Some(service) = self.facade.service_for(&req) {
            req = match self.facade.handle(req, service).await {
                Ok(answer) => return answer,
                Err(forward) => forward,
            };
        }
        if req.uri().path() == STREAM_PATH {
            self.stream(req).await
        } else if req.uri().path() == crate::assets::CLIENT_JS_PATH {
            crate::assets::client_js(req.method(), req.headers())
        } else if req.uri().path() == crate::uploads::UPLOAD_PATH {
            self.uploads.clone().handle(req).await
        } else if req.uri().path() == crate::chat::CHAT_PATH {
            crate::chat::endpoint::upgrade(
                self.chat.clone(),
                &self.verifier,
                &self.stream_slots,
                req,
            )
            .await
        } else {
            self.passthrough.forward(req, peer, self.tls).await
        }
    }

    async fn stream(&self, mut req: Request<Incoming>) -> Response<Body> {
        if self.drain.refuses_streams() {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "draining");
        }
        let stats = &self.registry.context().stats;
        let Some(token) = auth::token_from_request(req.headers(), req.uri().query()) else {
            stats.count_error(ErrorKind::Auth);
            return json_error(
                StatusCode::UNAUTHORIZED,
                "missing bearer token (Authorization header or access_token parameter)",
            );
        };
        let identity = match self.verifier.verify_refreshing(&token).await {
            Ok(i) => i,
            Err(e) => {
                stats.count_error(ErrorKind::Auth);
                return json_error(StatusCode::UNAUTHORIZED, &e.to_string());
            }
        };
        let key = match crate::http_server::websocket_upgrade_key(&req) {
            Ok(key) => key,
            Err(refusal) => return *refusal,
        };
        let Ok(permit) = self.stream_slots.clone().try_acquire_owned() else {
            stats.count_error(ErrorKind::Overload);
            return self.refuse_overloaded(req, key);
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let registry = self.registry.clone();
        let shutdown = self.drain.stream_close();
        let token: Arc<str> = token.into();
        self.drain.tracker().spawn(async move {
            let _permit = permit;
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            tracing::debug!(org = identity.org_id, "connected");
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(session::ws_config(&registry.context().config)),
            )
            .await;
            // The session counts itself in and out (a drop guard).
            session::run(ws, identity, token, registry, shutdown).await;
        });
        crate::http_server::switching_protocols(&key)
    }

    /// Full: a browser cannot read an HTTP status from a failed WebSocket,
    /// so the upgrade completes and the stream closes at once with 1013
    /// (retry later, resume with lastSeq). A small separate cap bounds these
    /// short-lived refusals; past it the answer is a plain 503.
    fn refuse_overloaded(
        &self,
        mut req: Request<Incoming>,
        key: http::HeaderValue,
    ) -> Response<Body> {
        let Ok(permit) = self.refusal_slots.clone().try_acquire_owned() else {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many streams on this sidecar; retry shortly",
            );
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(upgraded) = on_upgrade.await {
                let mut ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(server_ws_config()),
                )
                .await;
                close_with(
                    &mut ws,
                    crate::protocol::close::TRY_AGAIN_LATER,
                    "sidecar overloaded; retry with lastSeq",
                )
                .await;
            }
        });
        crate::http_server::switching_protocols(&key)
    }
}
