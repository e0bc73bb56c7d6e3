//! `realtime-edge bench-ws-rtt`: the round-trip time of one WebSocket
//! connection to an echo endpoint (bench/compare-nginx.sh runs it directly,
//! through realtime-edge's pass-through relay and through nginx). One
//! message is in flight at a time; the answer is the next message sent.
//! Prints one line: `messages p50_us p99_us`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// What to measure (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct RttOptions {
    /// The echo endpoint, e.g. ws://127.0.0.1:4000/_sim/ws-echo.
    #[arg(long)]
    pub url: String,
    /// Messages sent after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Bytes of each message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum RttError {
    /// The connection failed.
    #[error("WebSocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The echo endpoint stopped answering.
    #[error("the echo endpoint stopped answering")]
    NoAnswer,
}

/// Messages sent before measuring (connection and caches warm).
const WARM_UP: usize = 200;
/// The longest one round trip may take before the run is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Measures and returns the output line.
pub async fn run(o: RttOptions) -> Result<String, RttError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(o.url.as_str()).await?;
    let payload = "x".repeat(o.size);
    let mut rtts_us = Vec::with_capacity(o.messages);
    for i in 0..WARM_UP + o.messages {
        let t0 = Instant::now();
        ws.send(Message::Text(payload.clone().into())).await?;
        loop {
            match tokio::time::timeout(ANSWER_TIMEOUT, ws.next()).await {
                Ok(Some(Ok(Message::Text(_)))) => break,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Err(e))) => return Err(e.into()),
                _ => return Err(RttError::NoAnswer),
            }
        }
        if i >= WARM_UP {
            rtts_us.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = ws.close(None).await;
    rtts_us.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((rtts_us.len() as f64 * q) as usize).min(rtts_us.len().saturating_sub(1));
        rtts_us.get(i).copied().unwrap_or(0.0)
    };
    Ok(format!("{} {:.1} {:.1}", rtts_us.len(), at(0.50), at(0.99)))
}
