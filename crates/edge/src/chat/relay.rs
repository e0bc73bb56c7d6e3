//! Native mode (`COLLAB_CHAT_NATIVE=true`): each client connection gets its
//! own WebSocket to the backend's `{base_url as ws}/v2/collaboration/chat/stream`
//! with the client's credentials, and frames are relayed both ways unchanged.
//! Both sockets use the client listener's frame size limits, so the backend
//! cannot send a browser more than the hosted mode would.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::protocol::{self, ChatErrorCode};
use super::session::{ChatUser, sleep_until_opt};
use super::{CHAT_PATH, ChatService};
use crate::client_ws::{close_with, server_ws_config};
use crate::metrics as m;
use crate::protocol::close;

/// How long closing either side may take.
const RELAY_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The backend's chat stream URL: the base URL with a ws scheme.
pub(crate) fn backend_url(base: &url::Url) -> String {
    crate::upstream::ws_url(base, CHAT_PATH)
}

/// Relays one client connection to the backend until either side ends.
pub(crate) async fn run<S>(
    mut client: WebSocketStream<S>,
    user: ChatUser,
    svc: Arc<ChatService>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let url = backend_url(&svc.config.upstream.base_url);
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(url, error = %e, "backend chat stream URL is invalid");
            let msg = protocol::error(ChatErrorCode::UpstreamError, "invalid backend URL", None);
            let _ = client.send(Message::Text(msg.into())).await;
            close_with(&mut client, close::INTERNAL, "backend unreachable").await;
            return;
        }
    };
    if let Ok(v) = format!("Bearer {}", user.token).parse() {
        request.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let connect =
        tokio_tungstenite::connect_async_with_config(request, Some(server_ws_config()), true);
    let connected = tokio::select! {
        r = tokio::time::timeout(svc.config.chat.backend_timeout, connect) => r,
        _ = shutdown.changed() => {
            close_with(&mut client, close::GOING_AWAY, "shutting down").await;
            return;
        }
    };
    let mut backend = match connected {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            let (code, close_code, message) = match &e {
                tungstenite::Error::Http(resp) if matches!(resp.status().as_u16(), 401 | 403) => (
                    ChatErrorCode::UpstreamAuth,
                    close::POLICY,
                    format!("the backend refused the credentials ({})", resp.status()),
                ),
                _ => (
                    ChatErrorCode::UpstreamError,
                    close::INTERNAL,
                    format!("cannot reach the backend chat stream: {e}"),
                ),
            };
            tracing::info!(org = user.org, error = %e, "backend chat stream refused");
            ::metrics::counter!(m::CHAT_RELAY_FAILURES).increment(1);
            let msg = protocol::error(code, &message, None);
            let _ = client.send(Message::Text(msg.into())).await;
            close_with(&mut client, close_code, code.as_str()).await;
            return;
        }
        Err(_) => {
            ::metrics::counter!(m::CHAT_RELAY_FAILURES).increment(1);
            let msg = protocol::error(
                ChatErrorCode::UpstreamError,
                "the backend chat stream did not answer in time",
                None,
            );
            let _ = client.send(Message::Text(msg.into())).await;
            close_with(&mut client, close::INTERNAL, "backend timeout").await;
            return;
        }
    };

    let expiry = user.expires_at.map(|exp| {
        let now = (crate::clock::unix_millis() / 1000) as u64;
        tokio::time::Instant::now() + std::time::Duration::from_secs(exp.saturating_sub(now))
    });
    loop {
        tokio::select! {
            from_client = client.next() => match from_client {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if backend.send(msg).await.is_err() {
                        close_with(&mut client, close::INTERNAL, "backend chat stream failed").await;
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    // tungstenite queued the reply to the client's close; send it.
                    let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, client.flush()).await;
                    let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, backend.close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, backend.close(None)).await;
                    break;
                }
            },
            from_backend = backend.next() => match from_backend {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if client.send(msg).await.is_err() {
                        let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, backend.close(None)).await;
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.unwrap_or(CloseFrame {
                        code: close::NORMAL.into(),
                        reason: "".into(),
                    });
                    close_with(&mut client, frame.code.into(), &frame.reason).await;
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    close_with(&mut client, close::INTERNAL, "backend chat stream ended").await;
                    break;
                }
            },
            _ = sleep_until_opt(expiry) => {
                close_with(&mut client, close::TOKEN_EXPIRED, "token expired").await;
                let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, backend.close(None)).await;
                break;
            }
            _ = shutdown.changed() => {
                close_with(&mut client, close::GOING_AWAY, "shutting down").await;
                let _ = tokio::time::timeout(RELAY_CLOSE_GRACE, backend.close(None)).await;
                break;
            }
        }
    }
}
