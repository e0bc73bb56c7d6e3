//! One hosted chat connection after the upgrade: the handshake, joining the
//! room, the history, then one loop that writes what the room queued and
//! passes what the client sends to the room. Bad client messages are
//! answered on this connection only; the connection stays.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::ChatService;
use super::protocol::{self, ChatErrorCode};
use super::registry::{JoinError, RoomKey};
use super::room::{ConnId, Member, RoomMsg};
use crate::client_ws::close_with;
use crate::hub::queue::Outgoing;
use crate::hub::queue::QueueClosed;
use crate::hub::{Frame, SessionQueue};
use crate::protocol::close;

/// Ping intervals without a word from the client before it is dropped.
const SILENT_INTERVALS: u32 = 3;

/// How long a last message before a close may take.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Who is connected, from the verified token.
pub(crate) struct ChatUser {
    pub(crate) org: crate::auth::OrgId,
    pub(crate) user_id: Arc<str>,
    pub(crate) user_name: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) expires_at: Option<u64>,
}

/// Leaves the room when the session ends, however it ends.
struct Membership {
    inbox: mpsc::Sender<RoomMsg>,
    conn: ConnId,
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Err(mpsc::error::TrySendError::Full(msg)) =
            self.inbox.try_send(RoomMsg::Leave(self.conn))
        {
            let inbox = self.inbox.clone();
            tokio::spawn(async move {
                let _ = inbox.send(msg).await;
            });
        }
    }
}

/// Sends one message, then closes with `code`.
async fn refuse<S>(ws: &mut WebSocketStream<S>, code: ChatErrorCode, message: &str, close_code: u16)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = protocol::error(code, message, None);
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(Message::Text(text.into()))).await;
    close_with(ws, close_code, code.as_str()).await;
}

/// Reads the first text message within the handshake timeout.
pub(super) async fn read_handshake<S>(
    ws: &mut WebSocketStream<S>,
    timeout: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Result<String, u16>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, ws.next()) => r,
            _ = shutdown.changed() => return Some(Err(close::GOING_AWAY)),
        };
        match next {
            Err(_) => return Some(Err(close::POLICY)),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(Ok(t.to_string())),
            Ok(Some(Ok(Message::Binary(b)))) => {
                return Some(Ok(String::from_utf8_lossy(&b).into_owned()));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Serves one hosted chat connection until it ends.
pub(crate) async fn run<S>(
    mut ws: WebSocketStream<S>,
    user: ChatUser,
    svc: Arc<ChatService>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cfg = &svc.config;
    let text = match read_handshake(&mut ws, cfg.stream.handshake_timeout, &mut shutdown).await {
        None => return,
        Some(Err(code)) => {
            let why = if code == close::GOING_AWAY {
                "shutting down"
            } else {
                "no handshake in time"
            };
            close_with(&mut ws, code, why).await;
            return;
        }
        Some(Ok(t)) => t,
    };
    let room = match protocol::parse_handshake(&text) {
        Ok(r) => r,
        Err(why) => {
            refuse(&mut ws, ChatErrorCode::BadHandshake, &why, close::POLICY).await;
            return;
        }
    };
    let key = RoomKey {
        org: user.org,
        room: room.as_str().into(),
    };
    let conn = svc.next_conn_id();
    let queue = SessionQueue::new(cfg.chat.max_queue_bytes);
    let member = Member {
        conn,
        user_id: user.user_id.clone(),
        user_name: user.user_name.clone(),
        token: user.token.clone(),
        queue: queue.clone(),
    };
    let inbox = match svc.rooms.join(&key, member).await {
        Ok(inbox) => inbox,
        Err(JoinError::Full) => {
            let msg = format!(
                "room {room:?} has {} members, the most allowed",
                cfg.chat.max_room_members
            );
            refuse(&mut ws, ChatErrorCode::RoomFull, &msg, close::POLICY).await;
            return;
        }
        Err(JoinError::ShuttingDown) => {
            close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
            return;
        }
    };
    let _membership = Membership {
        inbox: inbox.clone(),
        conn,
    };
    tracing::info!(org = user.org, conn, "joined chat room");

    // History first; the presence snapshot and live messages wait in the
    // queue meanwhile, so nothing said after the join is missed.
    let history = tokio::select! {
        h = svc.store.history(&user.token, &room) => h,
        _ = shutdown.changed() => {
            close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
            return;
        }
    };
    let first = match history {
        Ok(messages) => protocol::history(&messages),
        Err(e) => {
            tracing::info!(org = user.org, error = %e, "chat history not loaded");
            protocol::error(
                ChatErrorCode::HistoryFailed,
                &format!("history not loaded: {e}"),
                None,
            )
        }
    };
    if ws.send(Message::Text(first.into())).await.is_err() {
        return;
    }

    let expiry = user.expires_at.map(|exp| {
        let now = (crate::clock::unix_millis() / 1000) as u64;
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    // Liveness: a WebSocket Ping every `stream.ping_interval_s`; a client
    // that sent nothing (not even a Pong) for three intervals is gone, and
    // its place in the room (presence, member cap) is given up.
    let ping_every = cfg.stream.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    let mut batch: Vec<Outgoing> = Vec::new();
    loop {
        if queue.take(&mut batch) == Err(QueueClosed::Overflow) {
            close_with(&mut ws, close::TRY_AGAIN_LATER, "client too slow").await;
            break;
        }
        if !batch.is_empty() {
            let written = {
                let write = write_frames(&mut ws, &batch);
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        r = &mut write => break r.is_ok(),
                        _ = queue.notified() => {
                            if queue.is_closed().is_some() {
                                break false;
                            }
                        }
                        _ = shutdown.changed() => break false,
                    }
                }
            };
            batch.clear();
            if !written {
                if *shutdown.borrow() {
                    close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                    break;
                }
                if queue.is_closed().is_some() {
                    continue;
                }
                break;
            }
            continue;
        }
        tokio::select! {
            _ = queue.notified() => {}
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * SILENT_INTERVALS {
                    tracing::info!(org = user.org, conn, "chat client silent; dropping");
                    close_with(&mut ws, close::GOING_AWAY, "no answer to pings").await;
                    break;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            incoming = ws.next() => {
                last_heard = tokio::time::Instant::now();
                match incoming {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                    break;
                }
                Some(Ok(Message::Text(t))) => {
                    match protocol::parse_client(&t) {
                        Ok(msg) => {
                            if inbox.send(RoomMsg::Client { conn, msg }).await.is_err() {
                                close_with(&mut ws, close::GOING_AWAY, "room closed").await;
                                break;
                            }
                        }
                        Err(r) => {
                            queue.push(Frame::control(protocol::error(
                                r.code,
                                &r.message,
                                r.client_msg_id.as_deref(),
                            )));
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    queue.push(Frame::control(protocol::error(
                        ChatErrorCode::BadMessage,
                        "messages are JSON text frames",
                        None,
                    )));
                }
                Some(Ok(_)) => {}
                }
            }
            _ = sleep_until_opt(expiry) => {
                close_with(&mut ws, close::TOKEN_EXPIRED, "token expired").await;
                break;
            }
            _ = shutdown.changed() => {
                close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                break;
            }
        }
    }
    tracing::info!(org = user.org, conn, "left chat room");
}

async fn write_frames<S>(
    ws: &mut WebSocketStream<S>,
    frames: &[Outgoing],
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // A room queues only serialised messages (no stream replay).
    for f in frames {
        if let Outgoing::Frame(f) = f {
            ws.feed(Message::Text(f.text.clone())).await?;
        }
    }
    ws.flush().await
}

pub(super) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
