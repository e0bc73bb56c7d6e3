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
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::Identity;
use crate::config::Config;
use crate::drain::StreamClose;
use crate::hub::queue::{Outgoing, QueueClosed};
use crate::hub::replay::batches;
use crate::hub::{Frame, HubMsg, HubRegistry, JoinRequest, SessionId, SessionQueue};
use crate::metrics::{self as m, Stats, error_kind};
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
    Timeout,
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
            EndReason::Timeout => "timeout",
        }
    }
}

/// What one stream holds in process-wide state: its place in the connection
/// counts and, once joined, its membership of the org's hub. Dropping the
/// guard gives both back, on every path out of [`run`], a panic included.
struct StreamGuard {
    stats: Arc<Stats>,
    member: Option<(mpsc::Sender<HubMsg>, SessionId)>,
}

impl StreamGuard {
    fn new(stats: Arc<Stats>) -> StreamGuard {
        stats
            .active_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .total_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(m::ACTIVE_CONNECTIONS).increment(1.0);
        ::metrics::counter!(m::CONNECTIONS_TOTAL).increment(1);
        StreamGuard {
            stats,
            member: None,
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((hub, session)) = self.member.take() {
            // The hub's inbox is bounded; when it is full the leave waits
            // in a task of its own rather than being lost.
            if let Err(mpsc::error::TrySendError::Full(msg)) = hub.try_send(HubMsg::Leave(session))
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(async move {
                    let _ = hub.send(msg).await;
                });
            }
        }
        self.stats
            .active_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        ::metrics::gauge!(m::ACTIVE_CONNECTIONS).decrement(1.0);
    }
}

/// When a token with expiry `exp` (epoch seconds) must be closed with
/// 4001, as a point on the runtime's clock; `None` when it never expires
/// or is so far away that the clock cannot represent it.
fn expiry_deadline(exp: Option<u64>, now_unix_s: u64) -> Option<tokio::time::Instant> {
    let remaining = Duration::from_secs(exp?.saturating_sub(now_unix_s));
    tokio::time::Instant::now().checked_add(remaining)
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
                stats.count_error(error_kind::HANDSHAKE);
                close_with(&mut ws, close::POLICY, "no handshake in time").await;
                count_close(EndReason::Handshake);
                return;
            }
            Ok(Some(Err(e))) => {
                // A frame that breaks the WebSocket rules gets the close
                // code RFC 6455 names for it (when the socket still takes one).
                stats.count_error(error_kind::HANDSHAKE);
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
    tracing::debug!(org, session, services = ?service_names, mode = reply.mode, resumed = reply.resumed, "subscribed");
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
                    if shutdown.is_due() {
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
                stats.count_error(error_kind::TIMEOUT);
                break 'serve EndReason::Timeout;
            }
            _ = sleep_until_opt(expiry) => {
                stats.count_error(error_kind::AUTH);
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
    tracing::info!(org, session, services = ?service_names, mode = reply.mode, resumed = reply.resumed,
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
            Outgoing::Frame(f) => {
                ws.feed(Message::Text(f.text.clone())).await?;
                // The keep-alive goes as a WebSocket Ping frame too (CONTRACT
                // 2.2): the client's Pong proves the connection is not half-open.
                if f.ws_ping {
                    ws.feed(Message::Ping(Default::default())).await?;
                }
            }
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

fn count_close(reason: EndReason) {
    ::metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that fails, even by a panic, still leaves its hub and
    /// gives back its connection count (CONTRACT 2.2).
    #[tokio::test]
    async fn a_panicking_stream_still_leaves_and_uncounts() {
        let stats = Arc::new(Stats::default());
        let (hub, mut inbox) = mpsc::channel(4);
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            let mut guard = StreamGuard::new(task_stats);
            guard.member = Some((hub, 7));
            panic!("a bug in a session");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(matches!(inbox.recv().await, Some(HubMsg::Leave(7))));
        let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(r(&stats.active_connections), 0);
        assert_eq!(r(&stats.total_connections), 1);
    }

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
