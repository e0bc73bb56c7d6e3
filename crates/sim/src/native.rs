//! The simulated native stream: section 2's protocol served from the org's
//! event log, where an event's log position is its `seq`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::{Ctx, authorize};
use realtime_edge::auth::OrgId;
use realtime_edge::http_server::{Body, json_error};
use realtime_edge::metrics::ServingMode;
use realtime_edge::protocol::{self, ErrorCode};

pub(super) async fn upgrade(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let org = match authorize(&ctx, &req) {
        Ok(o) => o,
        Err(resp) => return *resp,
    };
    if *ctx.state.native_down.borrow() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "native stream is down (injected fault)",
        );
    }
    accept(req, move |ws| async move {
        let counters = &ctx.state.counters;
        counters.native_active.fetch_add(1, Ordering::Relaxed);
        counters.native_total.fetch_add(1, Ordering::Relaxed);
        serve(&ctx, ws, org).await;
        counters.native_active.fetch_sub(1, Ordering::Relaxed);
    })
}

/// Bytes of events the simulated native stream puts in one message; a
/// larger event travels alone (as the sidecar does, CONTRACT 2.1).
const NATIVE_BATCH_BYTES: usize = 64 * 1024;
/// The largest message the simulator writes: an event as large as the
/// sidecar's `stream.max_event_bytes` can be, plus its envelope, with room
/// to spare, so the simulator can produce every legal (and some oversized)
/// event.
const SIM_MAX_MESSAGE: usize = 72 << 20;

fn sim_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    realtime_edge::client_ws::server_ws_config().max_write_buffer_size(SIM_MAX_MESSAGE)
}

type ServerWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Completes a WebSocket upgrade and runs `serve` on the socket in a task.
pub(super) fn accept<F, Fut>(mut req: Request<Incoming>, serve: F) -> Response<Body>
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let Some(key) = req.headers().get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return json_error(StatusCode::UPGRADE_REQUIRED, "WebSocket only");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(sim_ws_config()),
        )
        .await;
        serve(ws).await;
    });
    realtime_edge::http_server::switching_protocols(&key)
}

pub(super) async fn close<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    why: &str,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: why.to_string().into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ctx: &Ctx,
    mut ws: WebSocketStream<S>,
    org: OrgId,
) {
    let state = &ctx.state;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        close(&mut ws, protocol::close::POLICY, "no handshake").await;
        return;
    };
    let hs = match protocol::parse_handshake(&text) {
        Ok(h) => h,
        Err(e) => {
            let _ = ws
                .send(Message::Text(
                    protocol::error_message(None, e.code(), &e.to_string(), 0).into(),
                ))
                .await;
            close(&mut ws, protocol::close::POLICY, e.code().as_str()).await;
            return;
        }
    };
    let (services, unknown): (Vec<String>, Vec<String>) =
        hs.services.into_iter().partition(|s| state.has_service(s));
    let (mut changed, last, first_idx) = state.with_org(org, |log| {
        (log.changed.subscribe(), log.last, log.first_idx())
    });
    let resumed = hs.last_seq.is_some_and(|n| n <= last && n + 1 >= first_idx);
    let mut sent = match hs.last_seq {
        Some(n) if resumed => n,
        _ => last,
    };
    let mut out = vec![protocol::ack_message(last, ServingMode::Native, resumed)];
    for u in unknown {
        out.push(protocol::error_message(
            Some(&u),
            ErrorCode::UnknownService,
            "unknown service",
            last,
        ));
    }
    for m in out {
        if ws.send(Message::Text(m.into())).await.is_err() {
            return;
        }
    }
    let mut down = state.native_down.subscribe();
    let mut shutdown = ctx.shutdown.clone();
    let mut ping = tokio::time::interval(ctx.cfg.ping_interval);
    ping.tick().await;
    loop {
        changed.borrow_and_update();
        let events = state.with_org(org, |log| log.after(sent, Some(&services)));
        if let Some(last) = events.last() {
            sent = last.idx;
            // One message per run of one service, in log order.
            let mut i = 0;
            while i < events.len() {
                let svc = &events[i].service;
                let mut j = i;
                let mut bytes = 0usize;
                while j < events.len() && &events[j].service == svc && j - i < 100 {
                    bytes = bytes.saturating_add(events[j].json.get().len() + 1);
                    if j > i && bytes > NATIVE_BATCH_BYTES {
                        break;
                    }
                    j += 1;
                }
                let msg = protocol::event_message(
                    svc,
                    events[i..j].iter().map(|e| &*e.json),
                    events[j - 1].idx,
                );
                if ws.feed(Message::Text(msg.into())).await.is_err() {
                    return;
                }
                i = j;
            }
            if ws.flush().await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = ping.tick() => {
                if ws.send(Message::Text(protocol::ping_message(sent).into())).await.is_err() {
                    return;
                }
            }
            incoming = ws.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            r = down.changed() => {
                if r.is_err() || *down.borrow() {
                    close(&mut ws, protocol::close::GOING_AWAY, "native stream going down (injected fault)").await;
                    return;
                }
            }
            _ = shutdown.changed() => {
                close(&mut ws, protocol::close::GOING_AWAY, "backend shutting down").await;
                return;
            }
        }
    }
}

/// A plain WebSocket echo endpoint, for pass-through tests.
pub(super) async fn echo_upgrade(req: Request<Incoming>) -> Response<Body> {
    accept(req, |mut ws| async move {
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await
        {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                return;
            }
        }
    })
}
