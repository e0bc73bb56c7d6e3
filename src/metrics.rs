//! Metric names, defined once, and the per-instance counters behind
//! `GET /v2/realtime/metrics`.
//!
//! Prometheus series go through the `metrics` facade to a process-wide
//! recorder ([`install_prometheus`]); label sets are bounded (service, mode,
//! kind, reason, status class) — never an orgId or a token.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Gauge: open client streams. Used by the existing alert rules.
pub const ACTIVE_CONNECTIONS: &str = "streaming_active_connections";
/// Gauge: moving average of delivery latency. Used by the existing alert rules.
pub const AVG_LATENCY_MS: &str = "streaming_avg_latency_ms";
/// Counter by `kind`. Used by the existing alert rules.
pub const ERRORS: &str = "streaming_errors";
/// Histogram by `mode`: event timestamp to batch written to the client socket.
pub const DELIVERY_LATENCY_SECONDS: &str = "streaming_delivery_latency_seconds";
/// Counter by `service`: events written to clients.
pub const EVENTS_DELIVERED: &str = "streaming_events_delivered_total";
/// Counter: client connections accepted.
pub const CONNECTIONS_TOTAL: &str = "streaming_connections_total";
/// Counter by `reason`: client connections closed.
pub const CONNECTIONS_CLOSED: &str = "streaming_connections_closed_total";
/// Counter by `service`, `mode`, `status`: requests to the backend.
pub const UPSTREAM_REQUESTS: &str = "streaming_upstream_requests_total";
/// Gauge: running V1 pollers.
pub const UPSTREAM_POLLERS: &str = "streaming_upstream_pollers";
/// Gauge: open native links.
pub const UPSTREAM_NATIVE_LINKS: &str = "streaming_upstream_native_links";
/// Counter by `to`: services switched to another source.
pub const MODE_SWITCHES: &str = "streaming_mode_switches_total";
/// Counter by `result`: flags file reloads.
pub const FLAG_RELOADS: &str = "streaming_flag_reloads_total";
/// Gauge: current flags version.
pub const FLAGS_VERSION: &str = "streaming_flags_version";
/// Counter: events dropped because their orgId was not the hub's.
pub const CROSS_ORG_DROPPED: &str = "streaming_cross_org_events_dropped_total";
/// Gauge: org hubs alive.
pub const ACTIVE_ORGS: &str = "streaming_active_orgs";
/// Counter: V1 requests served by the facade (CONTRACT 3.4).
pub const FACADE_REQUESTS: &str = "streaming_facade_requests_total";
/// Gauge: V1 requests the facade holds now.
pub const FACADE_HELD: &str = "streaming_facade_held_requests";
/// Counter: events answered by the facade.
pub const FACADE_EVENTS: &str = "streaming_facade_events_total";
/// Counter by `reason`: V1 requests the facade forwarded to the backend.
pub const FACADE_FORWARDED: &str = "streaming_facade_forwarded_total";
/// Counter by `result` (ok|error): client-facing certificate reloads.
pub const TLS_CERT_RELOADS: &str = "streaming_tls_cert_reloads_total";
/// Counter by `result` (ok|error) and `trigger` (start|schedule|unknown_kid): JWKS fetches.
pub const JWKS_REFRESHES: &str = "streaming_jwks_refreshes_total";
/// Counter by `reason`: keys of a JWKS or key file that were not usable.
pub const JWKS_KEYS_REFUSED: &str = "streaming_jwks_keys_refused_total";

/// Gauge: 1 when Redis answered the last cluster heartbeat, else 0 (CONTRACT 9).
pub const CLUSTER_REDIS_UP: &str = "cluster_redis_up";

/// Counter by `version`: uploads admitted (CONTRACT 7).
pub const UPLOADS_STARTED: &str = "uploads_started_total";
/// Counter by `delivery` (legacy, native): uploads delivered to the backend.
pub const UPLOADS_COMPLETED: &str = "uploads_completed_total";
/// Counter by `reason` (the error code, lowercase): uploads that failed.
pub const UPLOADS_FAILED: &str = "uploads_failed_total";
/// Counter: file bytes received from clients.
pub const UPLOADS_RECEIVED_BYTES: &str = "uploads_received_bytes_total";
/// Histogram by `delivery`: a complete file's delivery, first attempt to result.
pub const UPLOADS_DELIVERY_SECONDS: &str = "uploads_delivery_seconds";
/// Counter: idle uploads removed after `uploads.resume_ttl_s`.
pub const UPLOADS_EXPIRED: &str = "uploads_expired_total";
/// Gauge: spool bytes reserved by the uploads held (this sidecar's).
pub const UPLOADS_SPOOL_BYTES: &str = "uploads_spool_bytes";

/// Upload series exist from the start, at zero, for every label value.
pub fn register_upload_zeroes() {
    metrics::describe_counter!(UPLOADS_STARTED, "Uploads admitted, by protocol version");
    metrics::describe_counter!(UPLOADS_COMPLETED, "Uploads delivered, by delivery route");
    metrics::describe_counter!(UPLOADS_FAILED, "Uploads failed, by reason");
    metrics::describe_counter!(
        UPLOADS_RECEIVED_BYTES,
        metrics::Unit::Bytes,
        "File bytes received from clients"
    );
    metrics::describe_histogram!(
        UPLOADS_DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "Delivery of a complete file to the backend, first attempt to result"
    );
    metrics::describe_counter!(UPLOADS_EXPIRED, "Idle uploads removed after their TTL");
    metrics::describe_gauge!(UPLOADS_SPOOL_BYTES, "Spool bytes reserved by held uploads");
    for version in ["1", "2"] {
        metrics::counter!(UPLOADS_STARTED, "version" => version).increment(0);
    }
    for route in ["legacy", "native"] {
        metrics::counter!(UPLOADS_COMPLETED, "delivery" => route).increment(0);
    }
    for code in crate::uploads::UploadCode::ALL {
        metrics::counter!(UPLOADS_FAILED, "reason" => code.reason()).increment(0);
    }
    metrics::counter!(UPLOADS_RECEIVED_BYTES).increment(0);
    metrics::counter!(UPLOADS_EXPIRED).increment(0);
}
/// Gauge by `mode` (hosted, native): open chat connections.
pub const CHAT_ACTIVE_CONNECTIONS: &str = "chat_active_connections";
/// Gauge: hosted chat rooms alive.
pub const CHAT_ROOMS: &str = "chat_rooms";
/// Counter by `result` (saved, failed, rate_limited): chat messages sent by clients.
pub const CHAT_MESSAGES: &str = "chat_messages_total";
/// Counter by `endpoint` (history, messages, receipts) and `status`: chat store requests.
pub const CHAT_BACKEND_REQUESTS: &str = "chat_backend_requests_total";
/// Counter: native chat relays the backend refused or did not answer.
pub const CHAT_RELAY_FAILURES: &str = "chat_relay_failures_total";
/// Room messages between replicas not delivered, by `reason` (cluster mode).
pub const CHAT_CLUSTER_DROPPED: &str = "chat_cluster_dropped_total";
/// Counter by `service`: events dropped for exceeding `stream.max_event_bytes`.
pub const EVENTS_TOO_LARGE: &str = "streaming_events_too_large_total";

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls reuse it.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        DELIVERY_LATENCY_SECONDS.to_string(),
                    ),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            register_zeroes();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!(ACTIVE_CONNECTIONS, "Open client streams");
    metrics::describe_gauge!(
        AVG_LATENCY_MS,
        "Moving average of event delivery latency in milliseconds"
    );
    metrics::describe_counter!(ERRORS, "Stream errors by kind");
    metrics::describe_histogram!(
        DELIVERY_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Event timestamp to batch written to the client socket"
    );
    metrics::describe_counter!(
        EVENTS_DELIVERED,
        "Events written to client sockets, by service"
    );
    metrics::describe_counter!(CONNECTIONS_TOTAL, "Client streams accepted");
    metrics::describe_counter!(CONNECTIONS_CLOSED, "Client streams closed, by reason");
    metrics::describe_counter!(
        UPSTREAM_REQUESTS,
        "Requests to the backend by service, mode and status"
    );
    metrics::describe_gauge!(UPSTREAM_POLLERS, "Running V1 long-pollers");
    metrics::describe_gauge!(UPSTREAM_NATIVE_LINKS, "Open native stream links");
    metrics::describe_counter!(MODE_SWITCHES, "Service sources switched, by target mode");
    metrics::describe_counter!(FLAG_RELOADS, "Flags file reloads by result");
    metrics::describe_gauge!(FLAGS_VERSION, "Current flags version");
    metrics::describe_counter!(
        CROSS_ORG_DROPPED,
        "Events dropped because their orgId was not the connection's"
    );
    metrics::describe_gauge!(ACTIVE_ORGS, "Org hubs alive");
    metrics::describe_gauge!(
        CLUSTER_REDIS_UP,
        "1 when Redis answered the last cluster heartbeat (cluster mode only)"
    );
    metrics::describe_counter!(FACADE_REQUESTS, "V1 requests served by the facade");
    metrics::describe_gauge!(FACADE_HELD, "V1 requests the facade holds now");
    metrics::describe_counter!(FACADE_EVENTS, "Events answered by the V1 facade");
    metrics::describe_counter!(
        FACADE_FORWARDED,
        "V1 requests the facade forwarded to the backend, by reason"
    );
    metrics::describe_counter!(
        TLS_CERT_RELOADS,
        "Client-facing certificate reloads by result (error: the old pair kept)"
    );
    metrics::describe_counter!(
        JWKS_REFRESHES,
        "JWKS fetches by result and trigger (error: the last good key set kept)"
    );
    metrics::describe_counter!(
        JWKS_KEYS_REFUSED,
        "JWKS keys skipped as unusable, by reason"
    );
    metrics::describe_gauge!(CHAT_ACTIVE_CONNECTIONS, "Open chat connections by mode");
    metrics::describe_gauge!(CHAT_ROOMS, "Hosted chat rooms alive");
    metrics::describe_counter!(
        CHAT_CLUSTER_DROPPED,
        "Chat room messages between replicas dropped, by reason (publish_queue_full, publish_failed, room_inbox_full)"
    );
    metrics::describe_counter!(CHAT_MESSAGES, "Chat messages sent by clients, by result");
    metrics::describe_counter!(
        CHAT_BACKEND_REQUESTS,
        "Chat store requests to the backend by endpoint and status"
    );
    metrics::describe_counter!(
        CHAT_RELAY_FAILURES,
        "Native chat relays the backend refused or did not answer"
    );
    metrics::describe_counter!(
        EVENTS_TOO_LARGE,
        "Events dropped for exceeding stream.max_event_bytes, by service"
    );
}

/// Series that alerts and dashboards read exist from the start, at zero.
fn register_zeroes() {
    metrics::gauge!(ACTIVE_CONNECTIONS).set(0.0);
    metrics::gauge!(AVG_LATENCY_MS).set(0.0);
    metrics::gauge!(UPSTREAM_POLLERS).set(0.0);
    metrics::gauge!(UPSTREAM_NATIVE_LINKS).set(0.0);
    metrics::gauge!(ACTIVE_ORGS).set(0.0);
    for kind in error_kind::ALL {
        metrics::counter!(ERRORS, "kind" => kind).increment(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(FLAG_RELOADS, "result" => result).increment(0);
    }
    metrics::gauge!(FACADE_HELD).set(0.0);
    metrics::counter!(FACADE_REQUESTS).increment(0);
    metrics::counter!(FACADE_EVENTS).increment(0);
    for reason in crate::facade::ForwardReason::ALL {
        metrics::counter!(FACADE_FORWARDED, "reason" => reason.as_str()).increment(0);
    }
}

/// Error kinds (the `kind` label of `streaming_errors`).
pub mod error_kind {
    pub const UPSTREAM: &str = "upstream";
    pub const UPSTREAM_AUTH: &str = "upstream_auth";
    pub const AUTH: &str = "auth";
    pub const HANDSHAKE: &str = "handshake";
    pub const SLOW_CLIENT: &str = "slow_client";
    pub const SEND: &str = "send";
    pub const CROSS_ORG: &str = "cross_org";
    pub const OVERLOAD: &str = "overload";
    /// An upstream event over `stream.max_event_bytes` (dropped).
    pub const EVENT_TOO_LARGE: &str = "event_too_large";
    /// A client silent for `stream.client_timeout_s` (dropped).
    pub const TIMEOUT: &str = "timeout";
    pub const ALL: [&str; 10] = [
        EVENT_TOO_LARGE,
        TIMEOUT,
        UPSTREAM,
        UPSTREAM_AUTH,
        AUTH,
        HANDSHAKE,
        SLOW_CLIENT,
        SEND,
        CROSS_ORG,
        OVERLOAD,
    ];
}

/// Counters of one sidecar instance, for the JSON metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub active_connections: AtomicU64,
    pub total_connections: AtomicU64,
    pub events_delivered: AtomicU64,
    pub errors: AtomicU64,
    pub v1_polls: AtomicU64,
    pub native_connects: AtomicU64,
    pub active_orgs: AtomicU64,
    pub connections_poll: AtomicU64,
    pub connections_native: AtomicU64,
    pub connections_mixed: AtomicU64,
    /// Live delivery latency over the last minute (`avgLatencyMs`).
    latency: std::sync::Mutex<LatencyWindow>,
    events_by_service: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// The V1 facade of this instance.
    pub facade: FacadeStats,
}

/// The V1 facade's counters of one instance (the Prometheus series are process-wide).
#[derive(Default)]
pub struct FacadeStats {
    /// V1 requests served by the facade.
    pub requests: AtomicU64,
    /// V1 requests held now.
    pub held: AtomicU64,
    /// Events answered.
    pub events: AtomicU64,
    /// V1 requests forwarded to the backend.
    pub forwarded: AtomicU64,
}

impl Stats {
    pub fn count_error(&self, kind: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ERRORS, "kind" => kind).increment(1);
    }

    /// Records `count` live events of `service` delivered after
    /// `latency_ms` on average.
    pub fn record_delivery(&self, service: &str, count: u64, latency_ms: f64) {
        self.count_delivered(service, count);
        let now = crate::clock::unix_millis();
        let mean = match self.latency.lock() {
            Ok(mut w) => {
                w.record(now, count, latency_ms.max(0.0) * count as f64);
                w.mean_ms(now)
            }
            Err(_) => return,
        };
        metrics::gauge!(AVG_LATENCY_MS).set(mean);
    }

    /// Counts delivered events without a latency (replayed events).
    pub fn count_delivered(&self, service: &str, count: u64) {
        self.events_delivered.fetch_add(count, Ordering::Relaxed);
        if let Ok(mut m) = self.events_by_service.lock() {
            if let Some(v) = m.get_mut(service) {
                *v += count;
            } else {
                m.insert(service.to_string(), count);
            }
        }
    }

    /// The connections-by-mode counter for "poll", "native" or "mixed".
    pub fn mode_counter(&self, mode: &str) -> &AtomicU64 {
        match mode {
            "poll" => &self.connections_poll,
            "native" => &self.connections_native,
            _ => &self.connections_mixed,
        }
    }

    /// Mean latency of live deliveries over the last minute (see [`LatencyWindow`]).
    pub fn avg_latency_ms(&self) -> f64 {
        let now = crate::clock::unix_millis();
        self.latency.lock().map(|w| w.mean_ms(now)).unwrap_or(0.0)
    }

    pub fn events_by_service(&self) -> std::collections::BTreeMap<String, u64> {
        self.events_by_service
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// The mean latency of live deliveries over the last minute: six buckets
/// of ten seconds; the mean covers the buckets younger than 60 s (so the
/// newest 50 to 60 s of deliveries), 0 when there were none.
#[derive(Default)]
pub struct LatencyWindow {
    /// (bucket start in ms, events, summed latency in ms)
    buckets: [(i64, u64, f64); LATENCY_BUCKETS],
}

const LATENCY_BUCKETS: usize = 6;
const LATENCY_BUCKET_MS: i64 = 10_000;

impl LatencyWindow {
    pub fn record(&mut self, now_ms: i64, count: u64, latency_sum_ms: f64) {
        let start = now_ms - now_ms.rem_euclid(LATENCY_BUCKET_MS);
        let slot = (start / LATENCY_BUCKET_MS).rem_euclid(LATENCY_BUCKETS as i64) as usize;
        let b = &mut self.buckets[slot];
        if b.0 != start {
            *b = (start, 0, 0.0);
        }
        b.1 = b.1.saturating_add(count);
        b.2 += latency_sum_ms;
    }

    pub fn mean_ms(&self, now_ms: i64) -> f64 {
        let oldest = now_ms - LATENCY_BUCKET_MS * LATENCY_BUCKETS as i64;
        let (n, sum) = self
            .buckets
            .iter()
            .filter(|b| b.1 > 0 && b.0 > oldest)
            .fold((0u64, 0f64), |(n, s), b| (n + b.1, s + b.2));
        if n == 0 { 0.0 } else { sum / n as f64 }
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn mean_of_the_last_minute() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.mean_ms(0), 0.0);
        w.record(1_000, 2, 20.0);
        w.record(15_000, 2, 60.0);
        assert_eq!(w.mean_ms(16_000), 20.0);
        // Past a minute the first bucket no longer counts.
        assert_eq!(w.mean_ms(62_000), 30.0);
        assert_eq!(w.mean_ms(200_000), 0.0);
    }
}
