//! Several replicas on Redis (CONTRACT 9): what they share and how a replica
//! knows whether it can.
//!
//! [`ClusterLink`] is one replica's handle: its id, the key prefix
//! (`cluster.name`), a multiplexed Redis connection for short commands, and
//! the replica's view of Redis health (`cluster_redis_up`). Its heartbeat
//! task renews the replica's membership every third of `cluster.lease_ms`;
//! the same round trip is the health probe, so a replica that cannot renew
//! its membership also knows it must serve its clients on its own.
//!
//! Redis keys (all under `{cluster.name}:`):
//! - `replicas` — sorted set: replica id → membership expiry (Redis ms).

pub mod flags;
pub mod org;
pub mod ownership;
pub mod reader;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;

use crate::config::ClusterConfig;
use crate::metrics as m;

/// Renews the replica's membership and returns the live replicas, on Redis's
/// clock so that replicas with skewed clocks agree on who is alive.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Why the cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis_url` is not a URL redis-rs accepts.
    #[error("cluster.redis_url: {source}")]
    Url {
        /// What redis-rs found wrong.
        #[source]
        source: redis::RedisError,
    },
}

/// One replica's view of the cluster.
pub struct ClusterLink {
    replica: String,
    prefix: String,
    lease: Duration,
    client: redis::Client,
    conn: ConnectionManager,
    up: watch::Sender<bool>,
    members: watch::Sender<Arc<[String]>>,
}

impl ClusterLink {
    /// Prepares the link; it connects lazily, so a replica starts (and
    /// serves on its own) while Redis is down.
    pub fn new(cfg: &ClusterConfig, url: &str) -> Result<Arc<ClusterLink>, ClusterError> {
        let client = redis::Client::open(url).map_err(|source| ClusterError::Url { source })?;
        let conn_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.redis_timeout))
            .set_response_timeout(Some(cfg.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(cfg.lease);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), conn_cfg)
            .map_err(|source| ClusterError::Url { source })?;
        let replica = format!("{:016x}", rand::random::<u64>());
        ::metrics::gauge!(m::CLUSTER_REDIS_UP).set(0.0);
        Ok(Arc::new(ClusterLink {
            replica,
            prefix: cfg.name.clone(),
            lease: cfg.lease,
            client,
            conn,
            up: watch::Sender::new(false),
            members: watch::Sender::new(Arc::from(Vec::new())),
        }))
    }

    /// This replica's id, random per process.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The Redis key `{cluster.name}:{suffix}`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// A clone of the multiplexed connection, for short commands.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client, for a dedicated connection (blocking reads, pub/sub),
    /// which must not share the multiplexed one.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The ownership and membership lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Whether Redis answered the last heartbeat; watch it to fall back to
    /// serving alone and to rejoin.
    pub fn up(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// The live replicas (ids) as of the last heartbeat, this one included.
    pub fn members(&self) -> watch::Receiver<Arc<[String]>> {
        self.members.subscribe()
    }

    /// Renews membership every third of the lease until `stop` turns true;
    /// then leaves the membership so others take over at once.
    pub async fn run_heartbeat(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let script = redis::Script::new(HEARTBEAT);
        let key = self.key("replicas");
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let mut conn = self.conn();
            let result: redis::RedisResult<Vec<String>> = script
                .key(&key)
                .arg(&self.replica)
                .arg(lease_ms)
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok(members) => {
                    self.members.send_if_modified(|old| {
                        let changed = old[..] != members[..];
                        if changed {
                            *old = Arc::from(members);
                        }
                        changed
                    });
                    self.set_up(true, None);
                }
                Err(e) => self.set_up(false, Some(&e)),
            }
        }
        let mut conn = self.conn();
        let _: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(&key)
            .arg(&self.replica)
            .query_async(&mut conn)
            .await;
    }

    /// Records Redis health; logs once per change of state.
    fn set_up(&self, up: bool, error: Option<&redis::RedisError>) {
        let changed = self
            .up
            .send_if_modified(|old| std::mem::replace(old, up) != up);
        ::metrics::gauge!(m::CLUSTER_REDIS_UP).set(if up { 1.0 } else { 0.0 });
        if changed {
            if up {
                tracing::info!(replica = %self.replica, "Redis is reachable: serving in cluster mode");
            } else {
                tracing::warn!(replica = %self.replica, error = ?error.map(ToString::to_string),
                    "Redis is unavailable: serving this replica's clients with its own sources");
            }
        }
    }
}
