//! One client's stream after the upgrade: the handshake, joining the org's
//! hub, then one loop that writes what the hub queued, reads what the
//! client sends (close, pings), and closes with the right code on token
//! expiry, overflow or shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::Identity;
use crate::config::Config;
use crate::hub::queue::{Outgoing, QueueClosed};
use crate::hub::replay::batches;
use crate::hub::{Frame, HubMsg, HubRegistry, JoinRequest, SessionQueue};
use crate::metrics::{self as m, error_kind};
use crate::protocol::{self, close};

/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a stream ended (the `reason` label of closed connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    Normal,
    Slow,
    Auth,
    Shutdown,
    Error,
    Handshake,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Slow => "slow",
            EndReason::Auth => "auth",
            EndReason::Shutdown => "shutdown",
            EndReason::Error => "error",
            EndReason::Handshake => "handshake",
        }
    }
}

pub async fn close_with<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, ws.close(Some(frame))).await;
}

/// Serves one upgraded client stream until it ends.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    identity: Identity,
    token: Arc<str>,
    registry: Arc<HubRegistry>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = registry.context().clone();
    let cfg = ctx.config.clone();
    let stats = ctx.stats.clone();
    let org = identity.org_id;

    // ---- handshake --------------------------------------------------------
    // Control frames (a browser's or proxy's ping) may come first.
    let deadline = tokio::time::Instant::now() + cfg.stream.handshake_timeout;
    let text = loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, ws.next()) => r,
            _ = shutdown.changed() => {
                close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                return;
            }
        };
        match next {
            Err(_) => {
                stats.count_error(error_kind::HANDSHAKE);
                close_with(&mut ws, close::POLICY, "no handshake in time").await;
                count_close(EndReason::Handshake);
                return;
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Text(t)))) => break t.to_string(),
            Ok(Some(Ok(Message::Binary(b)))) => break String::from_utf8_lossy(&b).into_owned(),
            Ok(Some(Ok(_))) => continue,
        }
    };
    let hs = match protocol::parse_handshake(&text) {
        Ok(h) => h,
        Err(e) => {
            stats.count_error(error_kind::HANDSHAKE);
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
    let queue = SessionQueue::new(cfg.stream.max_queue_bytes);
    let (reply_tx, reply_rx) = oneshot::channel();
    let req = Box::new(JoinRequest {
        session,
        queue: queue.clone(),
        services: services.clone(),
        unknown_services: unknown,
        property: hs.property.clone(),
        last_seq: hs.last_seq,
        token,
        expires_at: identity.expires_at,
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
    let service_names: Vec<&str> = services
        .iter()
        .map(|&s| cfg.services[s as usize].name.as_str())
        .collect();
    tracing::info!(org, session, services = ?service_names, mode = reply.mode, resumed = reply.resumed, "subscribed");
    let started = tokio::time::Instant::now();

    // ---- serve --------------------------------------------------------------
    let expiry = identity.expires_at.map(|exp| {
        let now = (crate::clock::unix_millis() / 1000) as u64;
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut delivered: u64 = 0;
    let end = 'serve: loop {
        match queue.take(&mut batch) {
            Err(QueueClosed::Overflow) => {
                stats.count_error(error_kind::SLOW_CLIENT);
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
                        _ = shutdown.changed() => break Ok(false),
                    }
                }
            };
            match written {
                Ok(true) => {
                    record_delivery(&stats, &cfg.services, &batch, &mut delivered);
                    batch.clear();
                    continue;
                }
                Ok(false) => {
                    batch.clear();
                    if *shutdown.borrow() {
                        close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                        break EndReason::Shutdown;
                    }
                    continue;
                }
                Err(e) => {
                    stats.count_error(error_kind::SEND);
                    tracing::info!(org, session, error = %e, "send error");
                    break EndReason::Error;
                }
            }
        }
        tokio::select! {
            _ = queue.notified() => {}
            incoming = ws.next() => match incoming {
                None | Some(Err(_)) => break 'serve EndReason::Normal,
                Some(Ok(Message::Close(_))) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
                    break 'serve EndReason::Normal;
                }
                // Pings are answered by tungstenite; other messages after
                // the handshake have no meaning and are ignored.
                Some(Ok(_)) => {}
            },
            _ = sleep_until_opt(expiry) => {
                stats.count_error(error_kind::AUTH);
                close_with(&mut ws, close::TOKEN_EXPIRED, "token expired").await;
                break 'serve EndReason::Auth;
            }
            _ = shutdown.changed() => {
                close_with(&mut ws, close::GOING_AWAY, "shutting down").await;
                break 'serve EndReason::Shutdown;
            }
        }
    };
    let _ = hub.send(HubMsg::Leave(session)).await;
    count_close(end);
    tracing::info!(org, session, services = ?service_names, mode = reply.mode, duration_ms = started.elapsed().as_millis() as u64,
        events = delivered, reason = end.as_str(), "disconnected");
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
pub fn ws_config(cfg: &Config) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    crate::gateway::server_ws_config().max_write_buffer_size(write_buffer_limit(cfg))
}

/// Room for one largest message plus a pending control frame (pong, close).
pub fn write_buffer_limit(cfg: &Config) -> usize {
    const CONTROL_SLACK: usize = 4096;
    cfg.stream.max_message_bytes.saturating_add(CONTROL_SLACK)
}

/// Writes queued items; a replay is rendered into messages page by page.
async fn write_items<S>(
    ws: &mut WebSocketStream<S>,
    cfg: &Config,
    items: &[Outgoing],
) -> Result<bool, tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for item in items {
        match item {
            Outgoing::Frame(f) => ws.feed(Message::Text(f.text.clone())).await?,
            Outgoing::Replay(events) => {
                let pages = batches(
                    events,
                    cfg.stream.batch_max_events,
                    cfg.stream.batch_max_bytes,
                );
                for page in pages {
                    let Some(first) = page.first() else { continue };
                    let name = &cfg.services[first.service as usize].name;
                    if let Some(f) = Frame::events(page, name, "replay", false) {
                        ws.feed(Message::Text(f.text)).await?;
                    }
                }
            }
        }
    }
    ws.flush().await?;
    Ok(true)
}

/// Counts what was written: every event in the totals, live events only
/// in the latency (a replayed event's age says nothing about delivery).
fn record_delivery(
    stats: &crate::metrics::Stats,
    services: &[crate::config::ServiceConfig],
    items: &[Outgoing],
    delivered: &mut u64,
) {
    let now = crate::clock::unix_millis();
    for item in items {
        let d = match item {
            Outgoing::Frame(Frame {
                delivery: Some(d), ..
            }) => d,
            Outgoing::Frame(_) => continue,
            Outgoing::Replay(events) => {
                for e in events {
                    *delivered += 1;
                    let name = &services[e.service as usize].name;
                    stats.count_delivered(name, 1);
                    ::metrics::counter!(m::EVENTS_DELIVERED, "service" => name.clone())
                        .increment(1);
                }
                continue;
            }
        };
        *delivered += d.count;
        let name = &services[d.service as usize].name;
        ::metrics::counter!(m::EVENTS_DELIVERED, "service" => name.clone()).increment(d.count);
        let live = d.live_origins_ms.len() as u64;
        stats.count_delivered(name, d.count - live);
        if live > 0 {
            let histogram = ::metrics::histogram!(m::DELIVERY_LATENCY_SECONDS, "mode" => d.mode);
            let mut sum = 0f64;
            for &o in d.live_origins_ms.iter() {
                let lat = now.saturating_sub(o).max(0) as f64;
                sum += lat;
                histogram.record(lat / 1000.0);
            }
            stats.record_delivery(name, live, sum / live as f64);
        }
    }
}

fn count_close(reason: EndReason) {
    ::metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(1);
}
