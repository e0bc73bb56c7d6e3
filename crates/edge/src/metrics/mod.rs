//! Metric names, defined once, and the per-instance counters behind
//! `GET /v2/realtime/metrics`.
//!
//! Prometheus series go through the `metrics` facade to a process-wide
//! recorder ([`install_prometheus`]); label sets are bounded (service, mode,
//! kind, reason, status class) — never an orgId or a token.
#![warn(missing_docs)]

mod stats;
mod values;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) use stats::Stats;
pub use values::{
    ChatMessageResult, ChatMode, ErrorKind, Outcome, ServingMode, StatusClass, UploadRoute,
};

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
pub(crate) const TLS_CERT_RELOADS: &str = "streaming_tls_cert_reloads_total";
/// Counter by `result` (ok|error) and `trigger` (start|schedule|unknown_kid): JWKS fetches.
pub(crate) const JWKS_REFRESHES: &str = "streaming_jwks_refreshes_total";
/// Counter by `reason`: keys of a JWKS or key file that were not usable.
pub(crate) const JWKS_KEYS_REFUSED: &str = "streaming_jwks_keys_refused_total";

/// Gauge: 1 when Redis answered the last cluster heartbeat, else 0 (CONTRACT 9).
pub(crate) const CLUSTER_REDIS_UP: &str = "cluster_redis_up";
/// Counter: orgs whose sources this replica took over (cluster mode).
pub(crate) const CLUSTER_OWNERSHIPS: &str = "cluster_org_ownerships_total";
/// Counter: events this replica appended to orgs' Redis streams as owner.
pub(crate) const CLUSTER_EVENTS_APPENDED: &str = "cluster_events_appended_total";
/// Counter: times an owner's appends outran Redis (`cluster.append_queue`)
/// and the org was served locally.
pub(crate) const CLUSTER_APPEND_OVERFLOWS: &str = "cluster_append_overflows_total";

/// Counter by `version`: uploads admitted (CONTRACT 7).
pub(crate) const UPLOADS_STARTED: &str = "uploads_started_total";
/// Counter by `delivery` (legacy, native): uploads delivered to the backend.
pub(crate) const UPLOADS_COMPLETED: &str = "uploads_completed_total";
/// Counter by `reason` (the error code, lowercase): uploads that failed.
pub(crate) const UPLOADS_FAILED: &str = "uploads_failed_total";
/// Counter: file bytes received from clients.
pub(crate) const UPLOADS_RECEIVED_BYTES: &str = "uploads_received_bytes_total";
/// Histogram by `delivery`: a complete file's delivery, first attempt to result.
pub(crate) const UPLOADS_DELIVERY_SECONDS: &str = "uploads_delivery_seconds";
/// Counter: idle uploads removed after `uploads.resume_ttl_s`.
pub(crate) const UPLOADS_EXPIRED: &str = "uploads_expired_total";
/// Gauge: spool bytes reserved by the uploads held (this sidecar's).
pub(crate) const UPLOADS_SPOOL_BYTES: &str = "uploads_spool_bytes";

/// Upload series exist from the start, at zero, for every label value;
/// `failure_reasons` are the `reason` values of [`UPLOADS_FAILED`] (the
/// uploads module owns its error codes).
pub(crate) fn register_upload_zeroes(failure_reasons: impl IntoIterator<Item = &'static str>) {
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
        metrics::counter!(UPLOADS_STARTED, label::VERSION => version).increment(0);
    }
    for route in UploadRoute::ALL {
        metrics::counter!(UPLOADS_COMPLETED, label::DELIVERY => route.as_str()).increment(0);
    }
    for reason in failure_reasons {
        metrics::counter!(UPLOADS_FAILED, label::REASON => reason).increment(0);
    }
    metrics::counter!(UPLOADS_RECEIVED_BYTES).increment(0);
    metrics::counter!(UPLOADS_EXPIRED).increment(0);
}
/// Gauge by `mode` (hosted, native): open chat connections.
pub(crate) const CHAT_ACTIVE_CONNECTIONS: &str = "chat_active_connections";
/// Gauge: hosted chat rooms alive.
pub(crate) const CHAT_ROOMS: &str = "chat_rooms";
/// Counter by `result` (saved, failed, rate_limited): chat messages sent by clients.
pub(crate) const CHAT_MESSAGES: &str = "chat_messages_total";
/// Counter by `endpoint` (history, messages, receipts) and `status`: chat store requests.
pub(crate) const CHAT_BACKEND_REQUESTS: &str = "chat_backend_requests_total";
/// Counter: native chat relays the backend refused or did not answer.
pub(crate) const CHAT_RELAY_FAILURES: &str = "chat_relay_failures_total";
/// Room messages between replicas not delivered, by `reason` (cluster mode).
pub(crate) const CHAT_CLUSTER_DROPPED: &str = "chat_cluster_dropped_total";
/// Counter by `service`: events dropped for exceeding `stream.max_event_bytes`.
pub(crate) const EVENTS_TOO_LARGE: &str = "streaming_events_too_large_total";

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later calls reuse it.
pub(crate) fn install_prometheus() -> Option<PrometheusHandle> {
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
    metrics::describe_counter!(
        CLUSTER_OWNERSHIPS,
        "Orgs whose sources this replica took over"
    );
    metrics::describe_counter!(
        CLUSTER_EVENTS_APPENDED,
        "Events appended to orgs' Redis streams by this replica as owner"
    );
    metrics::describe_counter!(
        CLUSTER_APPEND_OVERFLOWS,
        "Times an owner's appends outran Redis and the org was served locally"
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
    for kind in ErrorKind::ALL {
        metrics::counter!(ERRORS, label::KIND => kind.as_str()).increment(0);
    }
    for result in Outcome::ALL {
        metrics::counter!(FLAG_RELOADS, label::RESULT => result.as_str()).increment(0);
    }
    metrics::gauge!(FACADE_HELD).set(0.0);
    metrics::counter!(FACADE_REQUESTS).increment(0);
    metrics::counter!(FACADE_EVENTS).increment(0);
}

/// The facade's forwarded counter exists from the start, at zero, for
/// every `reason` (the facade module owns its reasons).
pub(crate) fn register_facade_zeroes(forward_reasons: impl IntoIterator<Item = &'static str>) {
    for reason in forward_reasons {
        metrics::counter!(FACADE_FORWARDED, label::REASON => reason).increment(0);
    }
}

/// Label keys. Each key's values are one of the enums below or, where the
/// value is a domain type, that type's label: `reason` of
/// [`CONNECTIONS_CLOSED`] (`gateway::EndReason`), of [`FACADE_FORWARDED`]
/// (`facade::ForwardReason`), of [`UPLOADS_FAILED`] (`uploads::UploadCode`)
/// and of [`JWKS_KEYS_REFUSED`]; `trigger` of [`JWKS_REFRESHES`];
/// `endpoint` of [`CHAT_BACKEND_REQUESTS`]; `service` is a configured
/// service name, `version` an upload protocol version.
pub(crate) mod label {
    pub(crate) const KIND: &str = "kind";
    pub(crate) const MODE: &str = "mode";
    pub(crate) const SERVICE: &str = "service";
    pub(crate) const STATUS: &str = "status";
    pub(crate) const REASON: &str = "reason";
    pub(crate) const RESULT: &str = "result";
    pub(crate) const TRIGGER: &str = "trigger";
    pub(crate) const TO: &str = "to";
    pub(crate) const VERSION: &str = "version";
    pub(crate) const DELIVERY: &str = "delivery";
    pub(crate) const ENDPOINT: &str = "endpoint";
}
