//! `realtime-edge bench-worker`: holds many stream clients from one process
//! (a process here may hold at most 20,000 file descriptors) and measures
//! the delivery latency of the events they receive. The orchestrator drives
//! it through stdin lines (`reset`, `report`, `quit`); it answers on stdout
//! with one JSON line each.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::histogram::Histogram;
use realtime_edge::protocol;

/// One worker's share of the clients (also its command line).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    #[arg(long)]
    pub(crate) target: SocketAddr,
    #[arg(long)]
    pub(crate) secret: String,
    #[arg(long)]
    pub(crate) source_ip: IpAddr,
    #[arg(long)]
    pub(crate) clients: usize,
    /// Client i belongs to org `org_start + i % org_count`.
    #[arg(long)]
    pub(crate) org_start: u64,
    #[arg(long)]
    pub(crate) org_count: u64,
    #[arg(long, value_delimiter = ',')]
    pub(crate) services: Vec<String>,
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    events: AtomicU64,
    messages: AtomicU64,
}

/// Extracts every `"t_us":N` of a message without parsing the JSON.
pub(crate) fn publish_times(text: &str) -> impl Iterator<Item = i64> + '_ {
    text.match_indices("\"t_us\":").filter_map(move |(i, m)| {
        let rest = &text[i + m.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

async fn client(
    opts: Arc<WorkerOptions>,
    org: u64,
    hist: Arc<Histogram>,
    counters: Arc<Counters>,
    gate: Arc<Semaphore>,
) {
    let permit = gate.acquire_owned().await;
    let connect = async {
        let socket = if opts.source_ip.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .ok()?;
        socket.bind(SocketAddr::new(opts.source_ip, 0)).ok()?;
        let tcp = socket.connect(opts.target).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let token = realtime_edge::auth::mint_hs256(&opts.secret, "orgId", org, 24 * 3600);
        let mut req = format!("ws://{}/v2/realtime/stream", opts.target)
            .into_client_request()
            .ok()?;
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().ok()?,
        );
        let cfg = realtime_edge::upstream::client_ws_config().read_buffer_size(4096);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
            .await
            .ok()?;
        ws.send(Message::Text(
            protocol::handshake_json(&opts.services, None, None).into(),
        ))
        .await
        .ok()?;
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"ack\"") => Some(ws),
            _ => None,
        }
    };
    let Some(mut ws) = tokio::time::timeout(Duration::from_secs(60), connect)
        .await
        .ok()
        .flatten()
    else {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    drop(permit);
    counters.connected.fetch_add(1, Ordering::Relaxed);
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg {
            counters.messages.fetch_add(1, Ordering::Relaxed);
            let now = realtime_edge::clock::unix_micros();
            for published in publish_times(t.as_str()) {
                hist.record((now - published).max(0) as u64);
                counters.events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}

/// Runs until `quit` arrives on stdin or stdin closes.
pub async fn run(opts: WorkerOptions) {
    let opts = Arc::new(opts);
    let hist = Arc::new(Histogram::default());
    let counters = Arc::new(Counters::default());
    // Connect in waves so the sidecar's accept backlog is never flooded.
    let gate = Arc::new(Semaphore::new(200));
    for i in 0..opts.clients {
        let org = opts.org_start + (i as u64 % opts.org_count.max(1));
        tokio::spawn(client(
            opts.clone(),
            org,
            hist.clone(),
            counters.clone(),
            gate.clone(),
        ));
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "reset" => {
                hist.reset();
                counters.events.store(0, Ordering::Relaxed);
                counters.messages.store(0, Ordering::Relaxed);
            }
            "report" => {
                let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let report = serde_json::json!({
                    "connected": r(&counters.connected),
                    "failed": r(&counters.failed),
                    "closed": r(&counters.closed),
                    "events": r(&counters.events),
                    "messages": r(&counters.messages),
                    "hist": hist.snapshot(),
                });
                println!("{report}");
            }
            "quit" => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_publish_times() {
        let t = r#"{"type":"event","events":[{"t_us":123,"x":1},{"a":{"t_us":456}}],"seq":1}"#;
        assert_eq!(publish_times(t).collect::<Vec<_>>(), vec![123, 456]);
        assert_eq!(publish_times("{}").count(), 0);
    }
}
