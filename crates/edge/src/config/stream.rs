//! `stream`: tuning and delivery bounds of the unified stream (CONTRACT 2),
//! and the relations between its sizes.

use std::time::Duration;

use serde::Deserialize;

use super::{Problems, ServiceConfig};

/// `stream.batch_window_ms`.
const BATCH_WINDOW_MS: u64 = 50;
/// `stream.batch_max_events`.
const BATCH_MAX_EVENTS: u64 = 100;
/// `stream.ping_interval_s`.
const PING_INTERVAL_S: u64 = 30;
/// `stream.handshake_timeout_s`.
const HANDSHAKE_TIMEOUT_S: u64 = 10;
/// `stream.replay_events`.
const REPLAY_EVENTS: u64 = 1000;
/// `stream.max_queue_bytes` (raised to fit the largest message when unset).
const MAX_QUEUE_BYTES: u64 = 1_048_576;
/// `stream.dedup_events`.
const DEDUP_EVENTS: u64 = 4096;
/// `stream.max_connections`.
const MAX_CONNECTIONS: u64 = 18_000;
/// `stream.hub_linger_ms`.
const HUB_LINGER_MS: u64 = 5_000;
/// `stream.batch_max_bytes`.
const BATCH_MAX_BYTES: u64 = 65_536;
/// `stream.max_event_bytes`.
const MAX_EVENT_BYTES: u64 = 1_048_576;
/// `stream.replay_bytes`.
const REPLAY_BYTES: u64 = 16 << 20;
/// `stream.resume_ttl_s`.
const RESUME_TTL_S: u64 = 300;
/// `stream.client_timeout_s`.
const CLIENT_TIMEOUT_S: u64 = 75;
/// When `stream.max_queue_bytes` is not set, the queue holds at least the
/// largest message plus this much (so a default 1 MiB event fits).
const QUEUE_HEADROOM: usize = 64 * 1024;

/// Stream tuning; see CONTRACT section 2.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// How long events are gathered before a batch is sent.
    pub(crate) batch_window: Duration,
    /// Events one message carries at most.
    pub(crate) batch_max_events: usize,
    /// How often the server pings an idle client.
    pub(crate) ping_interval: Duration,
    /// Time allowed from upgrade to a valid `subscribe`.
    pub(crate) handshake_timeout: Duration,
    /// Events the replay window of one org keeps at most.
    pub(crate) replay_events: usize,
    /// Send queue of one client, in bytes; past it the client is handed the
    /// org's shared events, up to `replay_bytes` of them (hub::queue), then 1013.
    pub max_queue_bytes: usize,
    /// Recent eventIds remembered per org for de-duplication.
    pub(crate) dedup_events: usize,
    /// Client connections accepted at once; the rest get 503.
    pub(crate) max_connections: usize,
    /// How long an org hub outlives its last client, so a reconnect reuses it.
    pub(crate) hub_linger: Duration,
    // ---- delivery bounds (CONTRACT 2.1, 2.2) ----
    /// Bytes of events one message carries at most (a larger event travels alone).
    pub(crate) batch_max_bytes: usize,
    /// Largest event delivered; larger ones are dropped with `EVENT_TOO_LARGE`.
    pub(crate) max_event_bytes: usize,
    /// Bytes of events the replay window of one org keeps at most.
    pub replay_bytes: usize,
    /// How long an org's positions and replay window outlive its last client.
    pub(crate) resume_ttl: Duration,
    /// A client that sends nothing (not even a Pong) for this long is dropped.
    pub(crate) client_timeout: Duration,
    /// The largest server message the sizes allow (derived: the larger of
    /// `batch_max_bytes` and `max_event_bytes`, plus the envelope). WebSocket
    /// write buffers are sized from it.
    pub(crate) max_message_bytes: usize,
}

/// `stream` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStream {
    batch_window_ms: Option<u64>,
    batch_max_events: Option<u64>,
    ping_interval_s: Option<u64>,
    handshake_timeout_s: Option<u64>,
    replay_events: Option<u64>,
    pub(super) max_queue_bytes: Option<u64>,
    dedup_events: Option<u64>,
    max_connections: Option<u64>,
    hub_linger_ms: Option<u64>,
    batch_max_bytes: Option<u64>,
    max_event_bytes: Option<u64>,
    replay_bytes: Option<u64>,
    resume_ttl_s: Option<u64>,
    client_timeout_s: Option<u64>,
}

impl RawStream {
    /// Each key's range; the size relations need the services and are
    /// checked by [`validate_sizes`], which also sets `max_message_bytes`.
    pub(super) fn validate(self, p: &mut Problems) -> StreamConfig {
        let ms = |p: &mut Problems, key: &str, v, default, min, max| {
            Duration::from_millis(p.range(key, v, default, min, max))
        };
        let secs = |p: &mut Problems, key: &str, v, default, min, max| {
            Duration::from_secs(p.range(key, v, default, min, max))
        };
        let count = |p: &mut Problems, key: &str, v, default, min, max| {
            p.range(key, v, default, min, max) as usize
        };
        StreamConfig {
            batch_window: ms(
                p,
                "stream.batch_window_ms",
                self.batch_window_ms,
                BATCH_WINDOW_MS,
                0,
                10_000,
            ),
            batch_max_events: count(
                p,
                "stream.batch_max_events",
                self.batch_max_events,
                BATCH_MAX_EVENTS,
                1,
                10_000,
            ),
            ping_interval: secs(
                p,
                "stream.ping_interval_s",
                self.ping_interval_s,
                PING_INTERVAL_S,
                1,
                3600,
            ),
            handshake_timeout: secs(
                p,
                "stream.handshake_timeout_s",
                self.handshake_timeout_s,
                HANDSHAKE_TIMEOUT_S,
                1,
                600,
            ),
            replay_events: count(
                p,
                "stream.replay_events",
                self.replay_events,
                REPLAY_EVENTS,
                0,
                1_000_000,
            ),
            max_queue_bytes: count(
                p,
                "stream.max_queue_bytes",
                self.max_queue_bytes,
                MAX_QUEUE_BYTES,
                1024,
                1 << 30,
            ),
            dedup_events: count(
                p,
                "stream.dedup_events",
                self.dedup_events,
                DEDUP_EVENTS,
                16,
                10_000_000,
            ),
            max_connections: count(
                p,
                "stream.max_connections",
                self.max_connections,
                MAX_CONNECTIONS,
                1,
                10_000_000,
            ),
            hub_linger: ms(
                p,
                "stream.hub_linger_ms",
                self.hub_linger_ms,
                HUB_LINGER_MS,
                0,
                3_600_000,
            ),
            batch_max_bytes: count(
                p,
                "stream.batch_max_bytes",
                self.batch_max_bytes,
                BATCH_MAX_BYTES,
                1024,
                64 << 20,
            ),
            max_event_bytes: count(
                p,
                "stream.max_event_bytes",
                self.max_event_bytes,
                MAX_EVENT_BYTES,
                256,
                64 << 20,
            ),
            replay_bytes: count(
                p,
                "stream.replay_bytes",
                self.replay_bytes,
                REPLAY_BYTES,
                0,
                1 << 30,
            ),
            resume_ttl: secs(
                p,
                "stream.resume_ttl_s",
                self.resume_ttl_s,
                RESUME_TTL_S,
                0,
                86_400,
            ),
            client_timeout: secs(
                p,
                "stream.client_timeout_s",
                self.client_timeout_s,
                CLIENT_TIMEOUT_S,
                1,
                86_400,
            ),
            // Set by `validate_sizes` once the service names are known.
            max_message_bytes: 0,
        }
    }
}

/// The relations between the stream's sizes (CONTRACT 2.1), and the
/// largest message they allow: every legal message must fit an empty
/// client queue, and the replay window must hold the largest event.
/// `queue_set` says whether the file set `stream.max_queue_bytes`; when it
/// did not, the queue is raised to fit the largest message.
pub(super) fn validate_sizes(
    p: &mut Problems,
    stream: &mut StreamConfig,
    services: &[ServiceConfig],
    queue_set: bool,
) {
    let longest_name = services.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let envelope = crate::protocol::event_envelope_bytes(longest_name);
    let largest_events = stream.batch_max_bytes.max(stream.max_event_bytes);
    stream.max_message_bytes = largest_events.saturating_add(envelope);
    let needed = stream.max_event_bytes.saturating_add(envelope);
    if !queue_set {
        stream.max_queue_bytes = stream
            .max_queue_bytes
            .max(stream.max_message_bytes.saturating_add(QUEUE_HEADROOM));
    }
    if stream.max_queue_bytes < needed {
        p.push(
            "stream.max_queue_bytes",
            format!(
                "{} is smaller than stream.max_event_bytes ({}) plus the message envelope ({envelope}); it must be at least {needed}",
                stream.max_queue_bytes, stream.max_event_bytes
            ),
        );
    } else if stream.max_queue_bytes < stream.max_message_bytes {
        p.push(
            "stream.max_queue_bytes",
            format!(
                "{} is smaller than stream.batch_max_bytes ({}) plus the message envelope ({envelope})",
                stream.max_queue_bytes, stream.batch_max_bytes
            ),
        );
    }
    if stream.replay_bytes > 0 && stream.replay_bytes < stream.max_event_bytes {
        p.push(
            "stream.replay_bytes",
            format!(
                "{} is smaller than stream.max_event_bytes ({}); use 0 to keep no replay window",
                stream.replay_bytes, stream.max_event_bytes
            ),
        );
    }
}
