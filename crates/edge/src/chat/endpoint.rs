//! The upgrade of `/v2/collaboration/chat/stream`: credentials as the
//! stream (header or `access_token`), the user from the verified token
//! only, then the connection is served hosted or relayed per
//! `COLLAB_CHAT_NATIVE` as it stands when the connection opens.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::session::ChatUser;
use super::{ChatService, relay, session};
use crate::auth::{self, Verifier};
use crate::client_ws::server_ws_config;
use crate::http_server::{Body, json_error};
use crate::metrics::{self as m, ErrorKind};

/// Answers one request to the chat path.
pub(crate) async fn upgrade(
    svc: Arc<ChatService>,
    verifier: &Verifier,
    slots: &Arc<Semaphore>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let Some(token) = auth::token_from_request(req.headers(), req.uri().query()) else {
        svc.stats.count_error(ErrorKind::Auth);
        return json_error(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization header or access_token parameter)",
        );
    };
    let identity = match verifier.verify(&token) {
        Ok(i) => i,
        Err(e) => {
            svc.stats.count_error(ErrorKind::Auth);
            return json_error(StatusCode::UNAUTHORIZED, &e.to_string());
        }
    };
    let Some(user_id) = identity.user_id else {
        svc.stats.count_error(ErrorKind::Auth);
        return json_error(
            StatusCode::UNAUTHORIZED,
            &format!(
                "token has no usable {:?} claim (the chat user)",
                svc.config.auth.user_claim
            ),
        );
    };
    let key = match crate::http_server::websocket_upgrade_key(&req) {
        Ok(key) => key,
        Err(refusal) => return *refusal,
    };
    let Ok(permit) = slots.clone().try_acquire_owned() else {
        svc.stats.count_error(ErrorKind::Overload);
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections on this sidecar; retry shortly",
        );
    };
    let user = ChatUser {
        org: identity.org_id,
        user_name: identity.user_name.as_deref().unwrap_or(&user_id).into(),
        user_id: user_id.into(),
        token: token.into(),
        expires_at: identity.expires_at,
    };
    let native = svc.flags.current().flags.chat_native;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _permit = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "chat upgrade failed");
                return;
            }
        };
        let mode = if native {
            m::ChatMode::Native
        } else {
            m::ChatMode::Hosted
        };
        let gauge = ::metrics::gauge!(m::CHAT_ACTIVE_CONNECTIONS, m::label::MODE => mode.as_str());
        gauge.increment(1.0);
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(server_ws_config()),
        )
        .await;
        let shutdown = svc.shutdown.clone();
        if native {
            relay::run(ws, user, svc, shutdown).await;
        } else {
            session::run(ws, user, svc, shutdown).await;
        }
        gauge.decrement(1.0);
    });
    crate::http_server::switching_protocols(&key)
}
