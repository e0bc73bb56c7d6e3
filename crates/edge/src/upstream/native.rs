//! The native stream link of one org: ONE WebSocket to the backend's
//! `/v2/realtime/stream`, speaking the client protocol, shared by all the
//! org's connections. After a drop it reconnects with backoff and resumes
//! with its own `lastSeq`, so events published meanwhile still arrive.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{Backoff, GaugeGuard, IncomingEvent, NativeSpec, SourceReport, SourceStatus, Upstream};
use crate::metrics as m;
use crate::protocol::{self, ServerMessage};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A link that hears nothing (not even a ping) for this long is presumed dead.
const SILENCE_LIMIT_FACTOR: u32 = 3;

/// The WebSocket settings of a client of a native stream (the native link,
/// and the tools' stream clients).
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// The native link's WebSocket settings: it reads messages of the same
/// protocol, so it accepts at least twice the largest message this
/// sidecar's sizes allow (an oversized event must arrive to be reported as
/// `EVENT_TOO_LARGE` rather than break the link), and 16 MiB at least.
fn link_ws_config(cfg: &crate::config::Config) -> WebSocketConfig {
    const FLOOR: usize = 16 << 20;
    let limit = cfg.stream.max_message_bytes.saturating_mul(2).max(FLOOR);
    client_ws_config()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// Malformed native messages are logged at most once per this interval,
/// with the number passed over meanwhile.
const MALFORMED_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
struct MalformedLog {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl MalformedLog {
    fn note(&mut self, org: crate::auth::OrgId, error: &serde_json::Error) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < MALFORMED_LOG_INTERVAL)
        {
            self.suppressed = self.suppressed.saturating_add(1);
            return;
        }
        tracing::warn!(org, error = %error, suppressed = self.suppressed, "ignored a malformed native stream message");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// The native stream URL: the base URL with a ws scheme.
pub(crate) fn native_url(up: &Upstream) -> String {
    super::ws_url(
        &up.config.upstream.base_url,
        &up.config.upstream.native_stream_path,
    )
}

async fn send<M: From<SourceReport>>(spec: &NativeSpec<M>, status: SourceStatus) -> bool {
    spec.hub
        .send(
            SourceReport::Status {
                source: spec.source,
                status,
            }
            .into(),
        )
        .await
        .is_ok()
}

pub(super) async fn run<M: From<SourceReport>>(
    up: Arc<Upstream>,
    spec: NativeSpec<M>,
    mut stop: oneshot::Receiver<()>,
) {
    let cfg = up.config.clone();
    let url = native_url(&up);
    let names: Vec<String> = spec
        .services
        .iter()
        .map(|&s| cfg.services[s as usize].name.clone())
        .collect();
    let mut last_seq = spec.last_seq;
    let mut backoff = Backoff::default();
    let silence_limit = cfg.stream.ping_interval * SILENCE_LIMIT_FACTOR;
    let mut malformed = MalformedLog::default();
    loop {
        let Some(token) = spec.tokens.pick() else {
            if !send(
                &spec,
                SourceStatus::Failed {
                    service: None,
                    auth: true,
                    message: "no live connection token for the native stream".into(),
                },
            )
            .await
            {
                return;
            }
            if !backoff.wait(&mut stop).await {
                return;
            }
            continue;
        };
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(url, error = %e, "native stream URL is invalid");
                let _ = send(
                    &spec,
                    SourceStatus::Failed {
                        service: None,
                        auth: false,
                        message: format!("invalid native stream URL: {e}"),
                    },
                )
                .await;
                let _ = stop.await;
                return;
            }
        };
        if let Ok(v) = format!("Bearer {token}").parse() {
            request.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(link_ws_config(&cfg)),
            true,
            Some(tokio_tungstenite::Connector::Rustls(up.tls.clone())),
        );
        let connected = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => r,
            _ = &mut stop => return,
        };
        up.stats.native_connects.fetch_add(1, Ordering::Relaxed);
        let mut ws = match connected {
            Ok(Ok((ws, _))) => {
                // A completed upgrade answers 101: a success, counted with
                // the 2xx the alerts treat as healthy.
                ::metrics::counter!(m::UPSTREAM_REQUESTS, m::label::SERVICE => "*", m::label::MODE => m::ServingMode::Native.as_str(), m::label::STATUS => m::StatusClass::Success.as_str()).increment(1);
                ws
            }
            Ok(Err(e)) => {
                let (auth, message) = match &e {
                    tungstenite::Error::Http(resp) => {
                        let code = resp.status().as_u16();
                        ::metrics::counter!(m::UPSTREAM_REQUESTS, m::label::SERVICE => "*", m::label::MODE => m::ServingMode::Native.as_str(), m::label::STATUS => m::StatusClass::of(code).as_str()).increment(1);
                        (
                            code == 401 || code == 403,
                            format!("native stream refused the connection: HTTP {code}"),
                        )
                    }
                    other => {
                        // No HTTP answer at all (refused, reset, TLS): a
                        // failed request all the same, or the upstream-error
                        // alert would not see a backend that is down.
                        ::metrics::counter!(m::UPSTREAM_REQUESTS, m::label::SERVICE => "*", m::label::MODE => m::ServingMode::Native.as_str(), m::label::STATUS => m::StatusClass::Error.as_str()).increment(1);
                        (false, format!("native stream connection failed: {other}"))
                    }
                };
                if auth {
                    spec.tokens.refuse(&token);
                }
                tracing::warn!(org = spec.org, error = %message, "native link failed");
                if !send(
                    &spec,
                    SourceStatus::Failed {
                        service: None,
                        auth,
                        message,
                    },
                )
                .await
                {
                    return;
                }
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                if !send(
                    &spec,
                    SourceStatus::Failed {
                        service: None,
                        auth: false,
                        message: "native stream connection timed out".into(),
                    },
                )
                .await
                {
                    return;
                }
                if !backoff.wait(&mut stop).await {
                    return;
                }
                continue;
            }
        };
        let _gauge = GaugeGuard::new(m::UPSTREAM_NATIVE_LINKS);
        let hello = protocol::handshake_json(&names, None, last_seq);
        if ws.send(Message::Text(hello.into())).await.is_err() {
            if !backoff.wait(&mut stop).await {
                return;
            }
            continue;
        }
        let mut acked = false;
        // A resumed link's backlog (positions up to the ack's) is a catch-up,
        // not live delivery: it does not count in the latency.
        let mut backlog_until: Option<u64> = None;
        let end = loop {
            let next = tokio::select! {
                n = tokio::time::timeout(silence_limit, ws.next()) => n,
                _ = &mut stop => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return;
                }
            };
            let text = match next {
                Err(_) => break "native stream went silent".to_string(),
                Ok(None) => break "native stream closed".to_string(),
                Ok(Some(Err(e))) => break format!("native stream error: {e}"),
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    break format!(
                        "native stream closed by the backend ({})",
                        frame.map(|f| f.code.to_string()).unwrap_or_default()
                    );
                }
                Ok(Some(Ok(_))) => continue,
            };
            let msg: ServerMessage = match serde_json::from_str(&text) {
                Ok(m) => m,
                Err(e) => {
                    malformed.note(spec.org, &e);
                    continue;
                }
            };
            // The backoff is reset only once the link has carried something
            // after its ack: a backend that acks and then fails at once
            // (an oversized frame, say) is retried ever more slowly.
            if acked && msg.kind != "ack" {
                backoff.reset();
            }
            match msg.kind.as_str() {
                "ack" => {
                    acked = true;
                    spec.tokens.accepted(&token);
                    tracing::debug!(org = spec.org, source = spec.source, last_seq = ?last_seq, ack = ?msg.seq, resumed = ?msg.resumed, "native ack");
                    if msg.resumed == Some(true) {
                        backlog_until = msg.seq;
                    }
                    if msg.resumed != Some(true) {
                        if last_seq.is_some() {
                            tracing::info!(
                                org = spec.org,
                                "native stream could not resume; events during the gap may be missing"
                            );
                        }
                        if !send(&spec, SourceStatus::Unresumed).await {
                            return;
                        }
                    }
                    if !send(&spec, SourceStatus::Ready).await {
                        return;
                    }
                }
                "event" => {
                    let Some(service) = msg.service.as_deref().and_then(|n| cfg.service_index(n))
                    else {
                        continue;
                    };
                    let now = crate::clock::unix_millis();
                    let live = !matches!((msg.seq, backlog_until), (Some(s), Some(b)) if s <= b);
                    let events: Vec<IncomingEvent> = msg
                        .events
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|raw| IncomingEvent::parse(raw.to_owned(), now).ok())
                        .map(|mut e| {
                            e.live = live;
                            e
                        })
                        .collect();
                    if let Some(s) = msg.seq {
                        last_seq = Some(last_seq.map_or(s, |o| o.max(s)));
                    }
                    let batch = SourceReport::Events {
                        source: spec.source,
                        service: service as u16,
                        events,
                        cursor: None,
                        native_seq: msg.seq,
                        requested_at: None,
                    };
                    if spec.hub.send(batch.into()).await.is_err() {
                        return;
                    }
                }
                "error" => {
                    let service = msg
                        .service
                        .as_deref()
                        .and_then(|n| cfg.service_index(n))
                        .map(|s| s as u16);
                    let message = msg
                        .message
                        .unwrap_or_else(|| "native stream reported an error".into());
                    let status = SourceStatus::Failed {
                        service,
                        auth: false,
                        message,
                    };
                    if !send(&spec, status).await {
                        return;
                    }
                }
                _ => {}
            }
        };
        tracing::warn!(org = spec.org, reason = %end, was_up = acked, "native link down; reconnecting");
        if !send(&spec, SourceStatus::Down).await {
            return;
        }
        if !send(
            &spec,
            SourceStatus::Failed {
                service: None,
                auth: false,
                message: end,
            },
        )
        .await
        {
            return;
        }
        if !backoff.wait(&mut stop).await {
            return;
        }
    }
}
