//! Writing a client stream's queued items: frames as the hub serialised
//! them, replays rendered page by page as they are written, and the count
//! of what was delivered.

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::config::Config;
use crate::hub::Frame;
use crate::hub::queue::Outgoing;
use crate::hub::replay::batches;

/// Writes queued items; a replay is rendered into messages page by page.
pub(super) async fn write_items<S>(
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
                    if let Some(f) = Frame::events(page, name, None) {
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
pub(super) fn record_delivery(
    stats: &crate::metrics::Stats,
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
                    stats.count_delivered(e.service, 1);
                }
                continue;
            }
        };
        *delivered += d.count;
        stats.count_delivered(d.service, d.count);
        stats.record_latency(
            d.mode,
            d.live_origins_ms.iter().map(|&o| now.saturating_sub(o)),
        );
    }
}
