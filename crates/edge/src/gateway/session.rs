//! One client's stream after the upgrade: the handshake, joining the org's
//! hub, then one loop that writes what the hub queued, reads what the
//! client sends (close, pongs), and closes with the right code on token
//! expiry, overflow, silence or shutdown. A [`StreamGuard`] owns the
//! stream's connection counts and its hub membership, so they are released
//! however the stream ends (even by a panic).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::Identity;
use crate::client_ws::{CLOSE_GRACE, close_with, server_ws_config};
use crate::config::Config;
use crate::drain::StreamClose;
use crate::hub::queue::{Outgoing, QueueClosed};
use crate::hub::{HubRegistry, JoinRequest, SessionQueue};
use crate::metrics::ErrorKind;
use crate::protocol::{self, close};

use super::stream_guard::{EndReason, StreamGuard, count_close};
use super::write::{record_delivery, write_items};

/// When a token with expiry `exp` (epoch seconds) must be closed with
/// 4001, as a point on the runtime's clock; `None` when it never expires
/// or is so far away that the clock cannot represent it.
fn expiry_deadline(exp: Option<u64>, now_unix_s: u64) -> Option<tokio::time::Instant> {
    let remaining = Duration::from_secs(exp?.saturating_sub(now_unix_s));
    tokio::time::Instant::now().checked_add(remaining)
}

/// Serves one upgraded client stream until it ends.
pub(crate) async fn run<S>(
    mut ws: WebSocketStream<S>,
    identity: Identity,
    token: Arc<str>,
    registry: Arc<HubRegistry>,
    mut shutdown: StreamClose,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = registry.context().clone();
    let cfg = ctx.config.clone();
    let stats = ctx.stats.clone();
    let org = identity.org_id;
    let mut guard = StreamGuard::new(stats.clone());

    // ---- handshake --------------------------------------------------------
    // Control frames (a browser's or proxy's ping) may come first.
    let deadline = tokio::time::Instant::now() + cfg.stream.handshake_timeout;
    let text = loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, ws.next()) => r,
            _ = shutdown.wait() => {
                close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                return;
            }
        };
        match next {
            Err(_) => {
                stats.count_error(ErrorKind::Handshake);
                close_with(&mut ws, close::POLICY, "no handshake in time").await;
                count_close(EndReason::Handshake);
                return;
            }
            Ok(Some(Err(e))) => {
                // A frame that breaks the WebSocket rules gets the close
                // code RFC 6455 names for it (when the socket still takes one).
                stats.count_error(ErrorKind::Handshake);
                if let Some((code, why)) = violation_close(&e) {
                    close_with(&mut ws, code, why).await;
                }
                count_close(EndReason::Handshake);
                return;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Text(t)))) => break t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => break String::from_utf8_lossy(&b).into_owned(),
            Ok(Some(Ok(_))) => continue,
        }
    };
    let hs = match protocol::parse_handshake(&text) {
        Ok(h) => h,
        Err(e) => {
            stats.count_error(ErrorKind::Handshake);
            let msg = protocol::error_message(None, e.code(), &e.to_string(), 0);
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.send(Message::Text(msg.into()))).await;
            close_with(&mut ws, close::POLICY, e.code().as_str()).await;
            count_close(EndReason::Handshake);
            return;
        }
    };
    let mut services: Vec<u16> = Vec::new();
    let mut unknown = Vec::new();
    for name in &hs.services {
        match cfg.service_index(name) {
            Some(i) => services.push(i as u16),
            None => unknown.push(name.clone()),
        }
    }
    services.sort_unstable();
    services.dedup();

    // ---- join the org's hub ------------------------------------------------
    let session = registry.next_session_id();
    // Behind by more than its queue, a client is sent the org's shared
    // events, up to what the replay window holds in bytes (hub::queue).
    let queue = SessionQueue::with_lag_budget(cfg.stream.max_queue_bytes, cfg.stream.replay_bytes);
    let (reply_tx, reply_rx) = oneshot::channel();
    let req = Box::new(JoinRequest {
        session,
        queue: queue.clone(),
        services: services.clone(),
        unknown_services: unknown,
        property: hs.property.clone(),
        last_seq: hs.last_seq,
        token,
        // The session lives until exp + leeway, and so may its token in the pool.
        expires_at: identity
            .expires_at
            .map(|exp| exp.saturating_add(cfg.auth.leeway.as_secs())),
        reply: reply_tx,
    });
    let (hub, reply) = match registry.join(org, req, reply_rx).await {
        Ok(x) => x,
        Err(_) => {
            close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
            count_close(EndReason::Shutdown);
            return;
        }
    };
    guard.member = Some((hub, session));
    let service_names: Vec<&str> = services
        .iter()
        .map(|&s| cfg.services[s as usize].name.as_str())
        .collect();
    tracing::debug!(org, session, services = ?service_names, mode = reply.mode.as_str(), resumed = reply.resumed, "subscribed");
    let started = tokio::time::Instant::now();

    // ---- serve --------------------------------------------------------------
    let now_s = u64::try_from(crate::clock::unix_millis() / 1000).unwrap_or(0);
    // Closed with 4001 once `exp + auth.leeway_s` has passed — the same
    // leeway the token was accepted with. An `exp` too far away to add up
    // (or to be a deadline) never closes the session.
    let expiry = identity
        .expires_at
        .and_then(|exp| exp.checked_add(cfg.auth.leeway.as_secs()))
        .and_then(|close_at| expiry_deadline(Some(close_at), now_s));
    // Anything from the client (a message, a Pong) proves it is there.
    let mut silent_until = tokio::time::Instant::now() + cfg.stream.client_timeout;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut delivered: u64 = 0;
    let end = 'serve: loop {
        if shutdown.is_due() {
            // Drain (CONTRACT 2.2): what is queued first, then 1001.
            flush_and_close(&mut ws, &cfg, &queue, &mut batch).await;
            break EndReason::Shutdown;
        }
        match queue.take(&mut batch) {
            Err(QueueClosed::Overflow) => {
                stats.count_error(ErrorKind::SlowClient);
                tracing::warn!(
                    org,
                    session,
                    "client fell too far behind; closing with 1013"
                );
                close_with(
                    &mut ws,
                    close::TRY_AGAIN_LATER,
                    "client too slow; resume with lastSeq",
                )
                .await;
                break EndReason::Slow;
            }
            Ok(()) => {}
        }
        if !batch.is_empty() {
            // Write while watching for overflow, so a client that stopped
            // reading is cut off instead of pinning this task in a write.
            let written = {
                let write = write_items(&mut ws, &cfg, &batch);
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        r = &mut write => break r,
                        _ = queue.notified() => {
                            if queue.is_closed().is_some() {
                                break Ok(false);
                            }
                        }
                    }
                }
            };
            match written {
                Ok(true) => {
                    record_delivery(&stats, &batch, &mut delivered);
                    batch.clear();
                    continue;
                }
                Ok(false) => {
                    batch.clear();
                    if shutdown.is_due() {
                        close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                        break EndReason::Shutdown;
                    }
                    continue;
                }
                Err(e) => {
                    stats.count_error(ErrorKind::Send);
                    tracing::info!(org, session, error = %e, "send error");
                    break EndReason::Error;
                }
            }
        }
        tokio::select! {
            // What the client sent first: it may be the Pong that keeps it.
            biased;
            incoming = ws.next() => match incoming {
                None | Some(Err(_)) => break 'serve EndReason::Normal,
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                    break 'serve EndReason::Normal;
                }
                // Pings are answered by tungstenite; other messages after
                // the handshake have no meaning and are ignored. Each one
                // shows the client is there.
                Some(Ok(_)) => {
                    silent_until = tokio::time::Instant::now() + cfg.stream.client_timeout;
                }
            },
            _ = queue.notified() => {}
            _ = tokio::time::sleep_until(silent_until) => {
                stats.count_error(ErrorKind::Timeout);
                break 'serve EndReason::Timeout;
            }
            _ = sleep_until_opt(expiry) => {
                stats.count_error(ErrorKind::Auth);
                close_with(&mut ws, close::TOKEN_EXPIRED, "token expired").await;
                break 'serve EndReason::Auth;
            }
            _ = shutdown.wait() => {
                flush_and_close(&mut ws, &cfg, &queue, &mut batch).await;
                break 'serve EndReason::Shutdown;
            }
        }
    };
    // The guard leaves the hub and gives back the counts.
    drop(guard);
    count_close(end);
    tracing::info!(org, session, services = ?service_names, mode = reply.mode.as_str(), resumed = reply.resumed,
        duration_ms = started.elapsed().as_millis() as u64, events = delivered, reason = end.as_str(), "stream ended");
}

/// Sends what is queued (within [`CLOSE_GRACE`]), then closes with 1001.
async fn flush_and_close<S>(
    ws: &mut WebSocketStream<S>,
    cfg: &Config,
    queue: &SessionQueue,
    batch: &mut Vec<Outgoing>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if queue.take(batch).is_ok() && !batch.is_empty() {
        let _ = tokio::time::timeout(CLOSE_GRACE, write_items(ws, cfg, batch)).await;
    }
    close_with(
        ws,
        close::GOING_AWAY,
        "shutting down; reconnect with lastSeq",
    )
    .await;
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The WebSocket settings of a client stream: the server defaults, with a
/// write buffer that holds the largest message the sizes allow, so a legal
/// message is never refused as `WriteBufferFull` (CONTRACT 2.1).
pub(crate) fn ws_config(cfg: &Config) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    server_ws_config().max_write_buffer_size(write_buffer_limit(cfg))
}

/// Room for one largest message plus a pending control frame (pong, close).
pub fn write_buffer_limit(cfg: &Config) -> usize {
    const CONTROL_SLACK: usize = 4096;
    cfg.stream.max_message_bytes.saturating_add(CONTROL_SLACK)
}

/// The close code for a frame that broke the WebSocket rules before the
/// handshake: 1009 too big, 1007 not UTF-8, 1002 any other protocol error.
fn violation_close(e: &tokio_tungstenite::tungstenite::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => Some((close::TOO_BIG, "message too big")),
        Error::Utf8(_) => Some((close::INVALID_DATA, "text is not valid UTF-8")),
        Error::Protocol(_) => Some((close::PROTOCOL, "WebSocket protocol violation")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_far_expiry_is_no_deadline_and_does_not_panic() {
        assert!(expiry_deadline(None, 0).is_none());
        assert!(expiry_deadline(Some(u64::MAX), 0).is_none());
        let soon = expiry_deadline(Some(110), 100).unwrap();
        assert!(soon <= tokio::time::Instant::now() + Duration::from_secs(10));
        // Already expired: due now.
        assert!(expiry_deadline(Some(5), 100).unwrap() <= tokio::time::Instant::now());
    }
}
