//! `realtime-edge watch`: a small stream client for ops and the demo. It
//! connects, sends the handshake and prints each server message on a line.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::protocol::{self, ServerMessage};

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub url: String,
    pub token: String,
    pub services: Vec<String>,
    pub property: Option<serde_json::Value>,
    pub last_seq: Option<u64>,
    /// Stop after this many event messages.
    pub max_events: Option<u64>,
    /// Print the raw JSON instead of a summary.
    pub raw: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("bad URL {url:?}: {source}")]
    Url {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("cannot connect: {0}")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("stream failed: {0}")]
    Stream(#[source] tokio_tungstenite::tungstenite::Error),
    #[error("server closed the stream: {0}")]
    Closed(String),
}

/// Runs until the server closes, `max_events` arrive or the process is stopped.
pub async fn run(opts: WatchOptions, mut out: impl FnMut(&str)) -> Result<(), WatchError> {
    let mut req = opts
        .url
        .as_str()
        .into_client_request()
        .map_err(|source| WatchError::Url {
            url: opts.url.clone(),
            source,
        })?;
    if let Ok(v) = format!("Bearer {}", opts.token).parse() {
        req.headers_mut().insert(http::header::AUTHORIZATION, v);
    }
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .map_err(|_| WatchError::Closed("connect timed out".into()))?
    .map_err(WatchError::Connect)?;
    let hello = protocol::handshake_json(&opts.services, opts.property.as_ref(), opts.last_seq);
    ws.send(Message::Text(hello.into()))
        .await
        .map_err(WatchError::Stream)?;
    let mut events = 0u64;
    while let Some(msg) = ws.next().await {
        match msg.map_err(WatchError::Stream)? {
            Message::Text(t) => {
                if opts.raw {
                    out(t.as_str());
                } else {
                    out(&summarise(t.as_str()));
                }
                if t.as_str().contains(r#""type":"event""#) {
                    events += 1;
                    if opts.max_events.is_some_and(|m| events >= m) {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                }
            }
            Message::Close(frame) => {
                let why = frame
                    .map(|f| format!("{} {}", f.code, f.reason))
                    .unwrap_or_default();
                return Err(WatchError::Closed(why));
            }
            _ => {}
        }
    }
    Err(WatchError::Closed("connection ended".into()))
}

fn summarise(text: &str) -> String {
    match serde_json::from_str::<ServerMessage>(text) {
        Ok(m) => match m.kind.as_str() {
            "event" => {
                let evs = m.events.unwrap_or_default();
                let ids: Vec<String> = evs
                    .iter()
                    .filter_map(|e| serde_json::from_str::<serde_json::Value>(e.get()).ok())
                    .map(|v| {
                        v["eventId"]
                            .as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v["eventId"].to_string())
                    })
                    .collect();
                format!(
                    "event   seq={} service={} events={} ids={}",
                    m.seq.unwrap_or(0),
                    m.service.unwrap_or_default(),
                    evs.len(),
                    ids.join(",")
                )
            }
            "ack" => format!(
                "ack     seq={} mode={} resumed={}",
                m.seq.unwrap_or(0),
                m.mode.unwrap_or_default(),
                m.resumed.unwrap_or(false)
            ),
            "error" => format!(
                "error   seq={} service={} code={} message={}",
                m.seq.unwrap_or(0),
                m.service.unwrap_or_default(),
                m.code.unwrap_or_default(),
                m.message.unwrap_or_default()
            ),
            other => format!("{other:<7} seq={}", m.seq.unwrap_or(0)),
        },
        Err(_) => text.to_string(),
    }
}
