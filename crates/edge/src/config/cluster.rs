//! `cluster`: several replicas sharing flags, sources and positions through
//! Redis (CONTRACT 9). Without `cluster.redis_url` the sidecar is one
//! process with nothing shared, the embedded default.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// `cluster.name`.
const NAME: &str = "realtime-edge";
/// `cluster.lease_ms`.
const LEASE_MS: u64 = 3000;
/// `cluster.redis_timeout_ms`.
const REDIS_TIMEOUT_MS: u64 = 1000;
/// `cluster.append_queue`.
const APPEND_QUEUE: u64 = 256;
/// `cluster.read_batch`.
const READ_BATCH: u64 = 500;

/// Several replicas on Redis (CONTRACT 9).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]` (or `rediss://`); `None` runs one process
    /// with nothing shared.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several clusters can share one Redis.
    pub name: String,
    /// How long an org's ownership lease (and a replica's membership) lasts
    /// without renewal; renewed every third of it.
    pub lease: Duration,
    /// How long one Redis command may take before Redis counts as
    /// unavailable (and the replica serves its clients on its own).
    pub redis_timeout: Duration,
    /// Batches of accepted events an org's owner may have waiting for
    /// their append to Redis; past it the org is served locally (degraded)
    /// until Redis keeps up again.
    pub append_queue: usize,
    /// Stream entries one blocking read of an org's reader takes at most.
    pub read_batch: usize,
}

/// `cluster` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCluster {
    redis_url: Option<String>,
    name: Option<String>,
    lease_ms: Option<u64>,
    redis_timeout_ms: Option<u64>,
    append_queue: Option<u64>,
    read_batch: Option<u64>,
}

impl RawCluster {
    pub(super) fn validate(self, p: &mut Problems) -> ClusterConfig {
        let c = self;
        let redis_url = c.redis_url.filter(|u| {
            let ok = u.starts_with("redis://") || u.starts_with("rediss://");
            if !ok {
                p.push(
                    "cluster.redis_url",
                    format!("{u:?} must be a redis:// or rediss:// URL"),
                );
            }
            ok
        });
        let name = p.name("cluster.name", c.name.as_deref(), NAME);
        if name.contains(['{', '}', ' ']) {
            p.push(
                "cluster.name",
                format!("{name:?} must not contain braces or spaces (it prefixes Redis keys)"),
            );
        }
        let lease_ms = p.range("cluster.lease_ms", c.lease_ms, LEASE_MS, 300, 600_000);
        let timeout_ms = p.range(
            "cluster.redis_timeout_ms",
            c.redis_timeout_ms,
            REDIS_TIMEOUT_MS,
            10,
            60_000,
        );
        if timeout_ms >= lease_ms {
            p.push(
                "cluster.redis_timeout_ms",
                format!("{timeout_ms} must be below cluster.lease_ms ({lease_ms}): a lease is renewed within it"),
            );
        }
        let append_queue = p.range(
            "cluster.append_queue",
            c.append_queue,
            APPEND_QUEUE,
            1,
            1 << 20,
        );
        let read_batch = p.range("cluster.read_batch", c.read_batch, READ_BATCH, 1, 100_000);
        ClusterConfig {
            append_queue: append_queue as usize,
            read_batch: read_batch as usize,
            redis_url,
            name,
            lease: Duration::from_millis(lease_ms),
            redis_timeout: Duration::from_millis(timeout_ms.min(lease_ms)),
        }
    }
}
