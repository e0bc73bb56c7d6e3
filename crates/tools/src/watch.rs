//! `realtime-edge watch`: a small stream client for ops and the demo. It
//! connects, sends the handshake and prints each server message on a line,
//! and ends with the server's close code, its meaning and its reason.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use realtime_edge::protocol::{self, ServerMessage};

/// How long connecting (TCP, TLS, upgrade) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The stream URL.
    pub url: String,
    /// The bearer token.
    pub token: String,
    /// Services to subscribe to.
    pub services: Vec<String>,
    /// `filters.propertyId`.
    pub property: Option<serde_json::Value>,
    /// Resume after this position.
    pub last_seq: Option<u64>,
    /// Stop after this many event messages.
    pub max_events: Option<u64>,
    /// Print the raw JSON instead of a summary.
    pub raw: bool,
}

/// Why watching stopped. The messages do not repeat their `#[source]`:
/// the binary prints the chain (`error: cannot connect: <cause>`).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The URL is not a WebSocket URL.
    #[error("bad URL {url:?}")]
    Url {
        /// The URL.
        url: String,
        /// Why not.
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// The connection or upgrade failed.
    #[error("cannot connect")]
    Connect(#[source] tokio_tungstenite::tungstenite::Error),
    /// No upgrade within this time.
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The upgrade was answered with an HTTP error.
    #[error("the server refused the stream with HTTP {status}: {error}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's `error`.
        error: String,
    },
    /// Reading or writing the stream failed.
    #[error("stream failed")]
    Stream(#[source] tokio_tungstenite::tungstenite::Error),
    /// The server closed the stream.
    #[error(
        "the server closed the stream with code {code} ({meaning}){}",
        reason_suffix(reason)
    )]
    Closed {
        /// The close code.
        code: u16,
        /// What the code means in this protocol.
        meaning: &'static str,
        /// The close reason.
        reason: String,
    },
    /// The connection ended without a close frame.
    #[error("the connection ended without a close frame")]
    Ended,
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// What a close code means for a client of the stream (docs/protocol.md).
pub(crate) fn close_code_meaning(code: u16) -> &'static str {
    match code {
        1000 => "normal close",
        1001 => "the sidecar is shutting down; reconnect with lastSeq",
        1005 => "no code given",
        1006 => "connection lost",
        1008 => "policy: bad handshake or credentials",
        1011 => "internal error",
        1013 => "too far behind or overloaded; reconnect with lastSeq",
        4001 => "token expired",
        _ => "unknown code",
    }
}

/// The refusal of an upgrade answered with an HTTP status: its JSON
/// `error`, or its body as text.
fn refusal(response: &http::Response<Option<Vec<u8>>>) -> WatchError {
    let body = response.body().as_deref().unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    WatchError::Refused {
        status: response.status().as_u16(),
        error,
    }
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
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| WatchError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(response) => refusal(&response),
            other => WatchError::Connect(other),
        })?;
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
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                let meaning = close_code_meaning(code);
                if opts.raw {
                    out(&serde_json::json!({"close": code, "reason": reason}).to_string());
                } else {
                    out(&format!("close   code={code} ({meaning}) reason={reason}"));
                }
                if code == 1000 {
                    return Ok(());
                }
                return Err(WatchError::Closed {
                    code,
                    meaning,
                    reason,
                });
            }
            _ => {}
        }
    }
    Err(WatchError::Ended)
}

fn summarise(text: &str) -> String {
    match serde_json::from_str::<ServerMessage>(text) {
        Ok(m) => match m.kind.as_str() {
            "event" => {
                let evs = m.events.unwrap_or_default();
                let parsed: Vec<serde_json::Value> = evs
                    .iter()
                    .filter_map(|e| serde_json::from_str(e.get()).ok())
                    .collect();
                let text = |v: &serde_json::Value| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                };
                let ids: Vec<String> = parsed.iter().map(|v| text(&v["eventId"])).collect();
                // The distinct event types, in order (e.g. revenue_created).
                let mut types: Vec<String> = Vec::new();
                for t in parsed.iter().filter_map(|v| v["type"].as_str()) {
                    if !types.iter().any(|x| x == t) {
                        types.push(t.to_string());
                    }
                }
                format!(
                    "event   seq={} service={} events={} ids={} types={}",
                    m.seq.unwrap_or(0),
                    m.service.unwrap_or_default(),
                    evs.len(),
                    ids.join(","),
                    types.join(",")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let event = r#"{"type":"event","seq":7,"timestamp":"t","service":"finance","events":[
            {"eventId":"e1","type":"revenue_created"},{"eventId":"e2","type":"revenue_created"},
            {"eventId":3,"type":"expense_deleted"}]}"#;
        assert_eq!(
            summarise(event),
            "event   seq=7 service=finance events=3 ids=e1,e2,3 types=revenue_created,expense_deleted"
        );
        assert_eq!(
            summarise(r#"{"type":"ack","seq":0,"timestamp":"t","mode":"poll","resumed":false}"#),
            "ack     seq=0 mode=poll resumed=false"
        );
        assert_eq!(summarise("not json"), "not json");
        assert_eq!(close_code_meaning(4001), "token expired");
        assert_eq!(close_code_meaning(4999), "unknown code");
    }
}
