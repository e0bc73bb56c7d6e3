//! The V1 long-poller of one (org, service): `GET {v1_path}?since=cursor`
//! with a live connection's token, forever, until its hub stops it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{
    Backoff, GaugeGuard, IncomingEvent, MAX_POLL_BODY, PollerSpec, SourceReport, SourceStatus,
    TokenChoice, Upstream,
};
use crate::metrics as m;

/// An empty answer quicker than this means the backend is not holding requests.
const MIN_EMPTY_POLL: Duration = Duration::from_millis(100);
/// The pause after such an answer, which bounds the request rate.
const EMPTY_POLL_PAUSE: Duration = Duration::from_secs(1);
/// After a refusal another connection's token is tried at once, at most
/// this many times in a row; then the poller backs off (an auth outage
/// must not turn into one request per connection).
const IMMEDIATE_TOKEN_RETRIES: u32 = 3;

/// How one poll ended.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("no live connection token to poll with")]
    NoToken,
    #[error("backend refused the token (HTTP {0})")]
    Refused(u16),
    #[error("backend answered HTTP {0}")]
    Status(u16),
    #[error("backend request failed: {0}")]
    Transport(String),
    #[error("backend did not answer within {0} s")]
    Timeout(u64),
    #[error("backend answer is not a V1 poll body: {0}")]
    Garbage(String),
    #[error("backend answer is larger than the {0}-byte limit")]
    TooLarge(usize),
}

impl PollError {
    /// Whether the cursor the request carried may be the cause: the answer
    /// to a stale cursor can exceed the body limit, and a backend may
    /// refuse a cursor it no longer honours with 400, 404, 410 or 422.
    fn blames_cursor(&self) -> bool {
        matches!(
            self,
            PollError::TooLarge(_) | PollError::Status(400 | 404 | 410 | 422)
        )
    }
}

struct Answer {
    events: Vec<Box<RawValue>>,
    cursor: Option<String>,
}

pub(super) async fn run<M: From<SourceReport>>(
    up: Arc<Upstream>,
    spec: PollerSpec<M>,
    mut stop: oneshot::Receiver<()>,
) {
    let _gauge = GaugeGuard::new(m::UPSTREAM_POLLERS);
    let cfg = up.config.clone();
    let service = &cfg.services[spec.service as usize];
    let base = cfg
        .upstream
        .base_url
        .as_str()
        .trim_end_matches('/')
        .to_string();
    let mut cursor = spec.cursor.clone();
    let mut ready_sent = cursor.is_some();
    let mut backoff = Backoff::default();
    let mut answered_fast = false;
    let mut requested_at = None;
    let mut refusals_in_row = 0u32;
    loop {
        let token = match &spec.tokens {
            TokenChoice::Pool(pool) => pool.pick(),
            TokenChoice::Session(pool, sid) => pool.of_session(*sid),
        };
        let outcome = match token {
            None => Err(PollError::NoToken),
            Some(token) => {
                let mut url = format!("{base}{}", service.v1_path);
                if let Some(c) = &cursor {
                    url.push('?');
                    url.push_str(
                        &url::form_urlencoded::Serializer::new(String::new())
                            .append_pair(&cfg.legacy.cursor_param, c)
                            .finish(),
                    );
                }
                let started = tokio::time::Instant::now();
                requested_at = Some(started);
                let res = tokio::select! {
                    r = poll_once(&up, &service.name, &url, &token) => r,
                    _ = &mut stop => return,
                };
                answered_fast = started.elapsed() < MIN_EMPTY_POLL;
                if let TokenChoice::Pool(pool) = &spec.tokens {
                    match &res {
                        Err(PollError::Refused(_)) => pool.refuse(&token),
                        Ok(_) => pool.accepted(&token),
                        Err(_) => {}
                    }
                }
                res
            }
        };
        up.stats.v1_polls.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(answer) => {
                backoff.reset();
                refusals_in_row = 0;
                let empty = answer.events.is_empty();
                let now = crate::clock::unix_millis();
                let mut events = Vec::with_capacity(answer.events.len());
                for raw in answer.events {
                    match IncomingEvent::parse(raw, now) {
                        Ok(e) => events.push(e),
                        Err(e) => {
                            tracing::warn!(org = spec.org, service = %service.name, error = %e, "dropped a malformed event from the V1 endpoint");
                            up.stats.count_error(m::ErrorKind::Upstream);
                        }
                    }
                }
                if answer.cursor.is_some() {
                    cursor = answer.cursor.clone();
                }
                // Every answer is reported, even an empty one: it tells the
                // hub how far this poller's coverage reaches (switching).
                let msg = SourceReport::Events {
                    source: spec.source,
                    service: spec.service,
                    events,
                    cursor: answer.cursor,
                    native_seq: None,
                    requested_at,
                };
                if spec.hub.send(msg.into()).await.is_err() {
                    return;
                }
                if !ready_sent {
                    ready_sent = true;
                    let status = SourceReport::Status {
                        source: spec.source,
                        status: SourceStatus::Ready,
                    };
                    if spec.hub.send(status.into()).await.is_err() {
                        return;
                    }
                }
                // A backend that answers "nothing" at once instead of
                // holding the request would be polled in a tight loop.
                if empty && answered_fast {
                    tokio::select! {
                        _ = tokio::time::sleep(EMPTY_POLL_PAUSE) => {}
                        _ = &mut stop => return,
                    }
                }
            }
            // No client of the org is left to lend a token: the hub stops
            // such pollers; until then this is idleness, not a failure.
            Err(PollError::NoToken) => {
                tracing::debug!(org = spec.org, service = %service.name, "V1 poller idle: no live connection token");
                if !backoff.wait(&mut stop).await {
                    return;
                }
            }
            Err(e) => {
                let auth = matches!(e, PollError::Refused(_));
                // A cursor the backend cannot answer (or no longer honours)
                // would fail forever: start over without one, once reported.
                let message = if cursor.is_some() && e.blames_cursor() {
                    cursor = None;
                    format!(
                        "{e}; polling restarts from new events (events since the last answer may be missing)"
                    )
                } else {
                    e.to_string()
                };
                tracing::warn!(org = spec.org, service = %service.name, error = %message, "V1 poll failed");
                let status = SourceReport::Status {
                    source: spec.source,
                    status: SourceStatus::Failed {
                        service: Some(spec.service),
                        auth,
                        message,
                    },
                };
                if spec.hub.send(status.into()).await.is_err() {
                    return;
                }
                // With another token at hand a refusal is retried at once,
                // a few times in a row at most.
                if matches!(e, PollError::Refused(_)) {
                    refusals_in_row = refusals_in_row.saturating_add(1);
                }
                let retry_now = matches!(e, PollError::Refused(_))
                    && refusals_in_row <= IMMEDIATE_TOKEN_RETRIES
                    && matches!(&spec.tokens, TokenChoice::Pool(p) if p.pick().is_some());
                if !retry_now && !backoff.wait(&mut stop).await {
                    return;
                }
            }
        }
    }
}

async fn poll_once(
    up: &Upstream,
    service: &str,
    url: &str,
    token: &str,
) -> Result<Answer, PollError> {
    let cfg = &up.config;
    let req = http::Request::get(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| PollError::Transport(e.to_string()))?;
    let timeout = cfg.upstream.poll_timeout;
    let work = async {
        let resp = up
            .http
            .request(req)
            .await
            .map_err(|e| PollError::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        ::metrics::counter!(m::UPSTREAM_REQUESTS, m::label::SERVICE => service.to_string(), m::label::MODE => m::ServingMode::Poll.as_str(), m::label::STATUS => m::StatusClass::of(status).as_str())
            .increment(1);
        match status {
            200 => {}
            401 | 403 => return Err(PollError::Refused(status)),
            s => return Err(PollError::Status(s)),
        }
        let body = Limited::new(resp.into_body(), MAX_POLL_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    PollError::TooLarge(MAX_POLL_BODY)
                } else {
                    PollError::Transport(e.to_string())
                }
            })?
            .to_bytes();
        parse_answer(&body, &cfg.legacy.events_field, &cfg.legacy.cursor_field)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(PollError::Timeout(timeout.as_secs())),
    }
}

fn parse_answer(body: &[u8], events_field: &str, cursor_field: &str) -> Result<Answer, PollError> {
    let obj: std::collections::HashMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| PollError::Garbage(e.to_string()))?;
    let events = match obj.get(events_field) {
        None => Vec::new(),
        Some(raw) => serde_json::from_str::<Option<Vec<Box<RawValue>>>>(raw.get())
            .map_err(|_| PollError::Garbage(format!("{events_field:?} is not a list")))?
            .unwrap_or_default(),
    };
    let cursor = match obj.get(cursor_field) {
        None => None,
        Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::String(s)) => Some(s),
            Ok(serde_json::Value::Number(n)) => Some(n.to_string()),
            Ok(serde_json::Value::Null) => None,
            _ => {
                return Err(PollError::Garbage(format!(
                    "{cursor_field:?} is not a string"
                )));
            }
        },
    };
    Ok(Answer { events, cursor })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let a = parse_answer(
            br#"{"events":[{"eventId":"a"}],"cursor":"c1"}"#,
            "events",
            "cursor",
        )
        .unwrap();
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.cursor.as_deref(), Some("c1"));
        let a = parse_answer(br#"{"items":[],"next":7}"#, "items", "next").unwrap();
        assert_eq!(a.cursor.as_deref(), Some("7"));
        assert!(parse_answer(b"<html>", "events", "cursor").is_err());
        assert!(parse_answer(br#"{"events":{}}"#, "events", "cursor").is_err());
        assert!(parse_answer(br#"[1]"#, "events", "cursor").is_err());
    }

    proptest::proptest! {
        /// Any V1 answer body is an answer or a typed error, never a panic.
        #[test]
        fn any_v1_body_parses_or_is_garbage(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_answer(&bytes, "events", "cursor");
        }

        #[test]
        fn any_v1_json_parses_or_is_garbage(v in crate::protocol::strategies::json_value()) {
            match parse_answer(v.to_string().as_bytes(), "events", "cursor") {
                Ok(_) | Err(PollError::Garbage(_)) => {}
                Err(other) => proptest::prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}
