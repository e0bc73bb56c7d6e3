//! `shutdown`, `passthrough` and `limits`: the drain sequence, the
//! timeouts and caps of pass-through traffic, and the connection caps of
//! both listeners, checked together against the descriptor budget.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `shutdown.prestop_delay_s`.
const PRESTOP_DELAY_S: u64 = 5;
/// `shutdown.drain_s`.
const DRAIN_S: u64 = 20;
/// `passthrough.response_timeout_s`.
const RESPONSE_TIMEOUT_S: u64 = 60;
/// `passthrough.idle_timeout_s`.
const IDLE_TIMEOUT_S: u64 = 300;
/// `passthrough.max_in_flight`.
const MAX_IN_FLIGHT: u64 = 256;
/// `passthrough.max_websockets`.
const MAX_WEBSOCKETS: u64 = 128;
/// `passthrough.buffered_body_bytes`.
const BUFFERED_BODY_BYTES: u64 = 64 * 1024;
/// `limits.max_open_files`.
const MAX_OPEN_FILES: u64 = 19_500;
/// `limits.client_connections`: `stream.max_connections` plus room for
/// pass-through sockets.
const CLIENT_CONNECTIONS: u64 = 18_400;
/// `limits.admin_connections`.
const ADMIN_CONNECTIONS: u64 = 64;
/// `limits.header_timeout_s`.
const HEADER_TIMEOUT_S: u64 = 10;
/// `limits.admin_body_timeout_s`.
const ADMIN_BODY_TIMEOUT_S: u64 = 10;

/// The drain sequence of CONTRACT 2.2.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownConfig {
    /// `shutdown.prestop_delay_s`: readiness is off this long before new
    /// stream upgrades are refused and the drain window starts.
    pub(crate) prestop_delay: Duration,
    /// `shutdown.drain_s`: the window over which open streams are closed
    /// with 1001 (each at its own random moment); the process exits when
    /// nothing is open, or `drain_s` + 5 s after the window started.
    pub(crate) drain: Duration,
}

/// Pass-through traffic (everything that is not the unified stream).
#[derive(Debug, Clone)]
pub(crate) struct PassthroughConfig {
    /// `passthrough.response_timeout_s`: no response head this long after
    /// the request body was sent → 504.
    pub(crate) response_timeout: Duration,
    /// `passthrough.idle_timeout_s`: a relayed WebSocket or a body that
    /// moves no byte for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// `passthrough.max_in_flight`: requests forwarded at once (each holds
    /// a backend connection); past it the answer is 503.
    pub(crate) max_in_flight: usize,
    /// `passthrough.max_websockets`: relayed WebSocket upgrades at once.
    pub(crate) max_websockets: usize,
    /// `passthrough.buffered_body_bytes`: a request body up to this size
    /// (with a `Content-Length`) is read whole before the request goes to
    /// the backend, on the byte path; a longer or chunked one is streamed.
    pub(crate) buffered_body_bytes: usize,
}

/// Connection caps and slow-peer timeouts of both listeners.
#[derive(Debug, Clone)]
pub(crate) struct LimitsConfig {
    /// `limits.max_open_files`: the descriptor budget every cap below must
    /// fit in, with the descriptors reserved for listeners, upstream links
    /// and files to spare (checked at load).
    pub(crate) max_open_files: usize,
    /// `limits.client_connections`: client-listener sockets at once, streams
    /// and relayed WebSockets included; past it new ones get a 503.
    pub(crate) client_connections: usize,
    /// `limits.admin_connections`: admin-listener sockets at once.
    pub(crate) admin_connections: usize,
    /// `limits.header_timeout_s`: time for a request's headers to arrive
    /// (both listeners; against header-trickling clients).
    pub(crate) header_timeout: Duration,
    /// `limits.admin_body_timeout_s`: time for an admin request body to arrive.
    pub(crate) admin_body_timeout: Duration,
}

/// Descriptors kept outside every cap: listeners, upstream links (pollers,
/// native links), the flags and overrides files, logs.
const RESERVED_FILES: usize = 512;

/// `shutdown` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawShutdown {
    prestop_delay_s: Option<u64>,
    drain_s: Option<u64>,
}

/// `passthrough` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPassthrough {
    response_timeout_s: Option<u64>,
    idle_timeout_s: Option<u64>,
    max_in_flight: Option<u64>,
    max_websockets: Option<u64>,
    buffered_body_bytes: Option<u64>,
}

/// `limits` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    max_open_files: Option<u64>,
    client_connections: Option<u64>,
    admin_connections: Option<u64>,
    header_timeout_s: Option<u64>,
    admin_body_timeout_s: Option<u64>,
}

/// Validates the three sections, then checks that every cap added up fits
/// the descriptor budget (a process past its descriptor limit cannot even
/// accept a connection to refuse it).
pub(super) fn validate(
    p: &mut Problems,
    s: &RawShutdown,
    t: &RawPassthrough,
    l: &RawLimits,
    max_streams: usize,
) -> (ShutdownConfig, PassthroughConfig, LimitsConfig) {
    let secs = |p: &mut Problems, key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
        Duration::from_secs(p.range(key, v, default, min, max))
    };
    let shutdown = ShutdownConfig {
        prestop_delay: secs(
            p,
            "shutdown.prestop_delay_s",
            s.prestop_delay_s,
            PRESTOP_DELAY_S,
            0,
            600,
        ),
        drain: secs(p, "shutdown.drain_s", s.drain_s, DRAIN_S, 0, 3600),
    };
    let passthrough = PassthroughConfig {
        response_timeout: secs(
            p,
            "passthrough.response_timeout_s",
            t.response_timeout_s,
            RESPONSE_TIMEOUT_S,
            1,
            3600,
        ),
        idle_timeout: secs(
            p,
            "passthrough.idle_timeout_s",
            t.idle_timeout_s,
            IDLE_TIMEOUT_S,
            1,
            86_400,
        ),
        max_in_flight: p.range(
            "passthrough.max_in_flight",
            t.max_in_flight,
            MAX_IN_FLIGHT,
            1,
            1_000_000,
        ) as usize,
        max_websockets: p.range(
            "passthrough.max_websockets",
            t.max_websockets,
            MAX_WEBSOCKETS,
            0,
            1_000_000,
        ) as usize,
        buffered_body_bytes: p.range(
            "passthrough.buffered_body_bytes",
            t.buffered_body_bytes,
            BUFFERED_BODY_BYTES,
            0,
            16 * 1024 * 1024,
        ) as usize,
    };
    let limits = LimitsConfig {
        max_open_files: p.range(
            "limits.max_open_files",
            l.max_open_files,
            MAX_OPEN_FILES,
            1024,
            100_000_000,
        ) as usize,
        client_connections: p.range(
            "limits.client_connections",
            l.client_connections,
            CLIENT_CONNECTIONS,
            1,
            100_000_000,
        ) as usize,
        admin_connections: p.range(
            "limits.admin_connections",
            l.admin_connections,
            ADMIN_CONNECTIONS,
            1,
            100_000,
        ) as usize,
        header_timeout: secs(
            p,
            "limits.header_timeout_s",
            l.header_timeout_s,
            HEADER_TIMEOUT_S,
            1,
            600,
        ),
        admin_body_timeout: secs(
            p,
            "limits.admin_body_timeout_s",
            l.admin_body_timeout_s,
            ADMIN_BODY_TIMEOUT_S,
            1,
            600,
        ),
    };
    if limits.client_connections < max_streams {
        p.push(
            "limits.client_connections",
            format!(
                "{} is below stream.max_connections ({max_streams}); every stream is a client connection",
                limits.client_connections
            ),
        );
    }
    // Client sockets (streams and relays included), the backend side of
    // forwarded requests and relayed WebSockets, the admin listener, and
    // the reserve.
    let needed = limits
        .client_connections
        .saturating_add(passthrough.max_in_flight)
        .saturating_add(passthrough.max_websockets)
        .saturating_add(limits.admin_connections)
        .saturating_add(RESERVED_FILES);
    if needed > limits.max_open_files {
        p.push(
            "limits.max_open_files",
            format!(
                "the connection caps need up to {needed} descriptors (limits.client_connections {} + passthrough.max_in_flight {} + passthrough.max_websockets {} + limits.admin_connections {} + {RESERVED_FILES} reserved) but the budget is {}; lower a cap or raise the budget (and the process's descriptor limit)",
                limits.client_connections,
                passthrough.max_in_flight,
                passthrough.max_websockets,
                limits.admin_connections,
                limits.max_open_files
            ),
        );
    }
    (shutdown, passthrough, limits)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, problems};

    #[test]
    fn lifecycle_defaults_fit_the_descriptor_budget() {
        let c = parse("").unwrap();
        assert_eq!(c.shutdown.prestop_delay, Duration::from_secs(5));
        assert_eq!(c.shutdown.drain, Duration::from_secs(20));
        assert_eq!(c.passthrough.response_timeout, Duration::from_secs(60));
        assert_eq!(c.passthrough.idle_timeout, Duration::from_secs(300));
        assert!(c.limits.max_open_files < 20_000);
        assert!(c.limits.client_connections >= c.stream.max_connections);
    }

    #[test]
    fn caps_past_the_descriptor_budget_are_refused() {
        let lines = problems(
            "limits: {client_connections: 30000}
stream: {max_connections: 100}
",
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("edge.yaml: limits.max_open_files:") && l.contains("30000")),
            "{lines:?}"
        );
        let lines = problems(
            "limits: {client_connections: 10}
stream: {max_connections: 100}
",
        );
        assert!(lines[0].contains("limits.client_connections"), "{lines:?}");
        assert!(
            parse(
                "limits: {max_open_files: 60000, client_connections: 30000}
"
            )
            .is_ok()
        );
    }
}
