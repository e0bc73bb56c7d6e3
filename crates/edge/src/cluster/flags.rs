//! Flags shared by the replicas of a cluster (CONTRACT 9): the admin
//! overrides, the change history and one version sequence live in Redis.
//!
//! A change through any replica's admin API is one Lua script: it applies
//! the override(s) or the delete, increments the version, pushes the history
//! entries (capped at [`HISTORY_LIMIT`], like the local history) and
//! publishes the new version on the change channel. Every replica keeps a
//! dedicated pub/sub connection on that channel (resubscribed after a
//! reconnect) and installs the new state when a notice arrives; as a safety
//! net for a lost notice it also compares the version every third of
//! `cluster.lease_ms` (the heartbeat interval).
//!
//! Redis unreachable: each replica keeps the overrides it last knew and keeps
//! serving; admin changes are refused ([`SharedFlagsError::Unavailable`], 503
//! `CLUSTER_UNAVAILABLE`) rather than applied to one replica only. Redis
//! restarted empty: the first replica to see it re-seeds Redis from the
//! overrides it last knew, with the next version, so an empty Redis never
//! silently resets the cluster's overrides. A replica that never synced with
//! Redis (started while it was down) waits [`UNSYNCED_SEED_DELAY`] intervals
//! before seeding, so a replica that did sync gets there first.
//!
//! Redis keys (all under `{cluster.name}:`):
//! - `flags:overrides` — hash: flag → value as text (the admin API's form);
//! - `flags:version` — the cluster's flags version;
//! - `flags:history` — list of JSON entries, newest first;
//! - `flags:changes` — pub/sub channel carrying each new version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::ClusterLink;
use crate::clock;
use crate::flags::store::HISTORY_LIMIT;
use crate::flags::{ClusterState, FlagStore, FlagValue, Snapshot};

mod scripts;

use scripts::{Scripts, parse_entry};

/// Sync intervals a replica that never synced waits before seeding an
/// empty Redis.
pub const UNSYNCED_SEED_DELAY: u32 = 2;

/// Why a shared flag change was refused; nothing was applied anywhere.
#[derive(Debug, thiserror::Error)]
pub enum SharedFlagsError {
    /// Redis could not be reached (or did not answer in
    /// `cluster.redis_timeout_ms`).
    #[error(
        "Redis is unavailable, so the change cannot reach every replica; nothing was changed (retry when cluster_redis_up is 1): {source}"
    )]
    Unavailable {
        #[source]
        source: redis::RedisError,
    },
}

/// What Redis answered to a read: the state, or nothing (Redis empty).
type ReadReply = (Option<u64>, Vec<String>, Vec<String>);

/// One replica's handle on the cluster's flags.
pub struct SharedFlags {
    link: Arc<ClusterLink>,
    store: Arc<FlagStore>,
    overrides_key: String,
    version_key: String,
    history_key: String,
    channel: String,
    scripts: Scripts,
    /// The last cluster version installed; 0 = never synced.
    synced: AtomicU64,
    /// Serialises read-then-install, so a slow older read never replaces a
    /// newer state (the admin path and the sync task both install).
    installing: tokio::sync::Mutex<()>,
}

impl SharedFlags {
    pub fn new(link: Arc<ClusterLink>, store: Arc<FlagStore>) -> Arc<SharedFlags> {
        Arc::new(SharedFlags {
            overrides_key: link.key("flags:overrides"),
            version_key: link.key("flags:version"),
            history_key: link.key("flags:history"),
            channel: link.key("flags:changes"),
            scripts: Scripts::new(),
            link,
            store,
            synced: AtomicU64::new(0),
            installing: tokio::sync::Mutex::new(()),
        })
    }

    /// Sets admin overrides for the whole cluster, then installs the new
    /// state here so the answer shows it.
    pub async fn set(
        &self,
        who: &str,
        changes: &BTreeMap<String, FlagValue>,
    ) -> Result<Arc<Snapshot>, SharedFlagsError> {
        let mut args = self.change_args(who);
        for (key, value) in changes {
            let base = self.store.base_value(key).map(|b| b.to_string());
            args.extend([key.clone(), value.to_string(), base.unwrap_or_default()]);
        }
        let _version: u64 = self.write(&self.scripts.set, &args).await?;
        Ok(self.installed_after_change().await)
    }

    /// Drops one override for the whole cluster; `false` when there was none.
    pub async fn delete(&self, who: &str, key: &str) -> Result<bool, SharedFlagsError> {
        let mut args = self.change_args(who);
        let base = self.store.base_value(key).map(|b| b.to_string());
        args.extend([key.to_string(), base.unwrap_or_default()]);
        let (_version, existed): (u64, u8) = self.write(&self.scripts.delete, &args).await?;
        self.installed_after_change().await;
        Ok(existed == 1)
    }

    /// The arguments every change script starts with.
    fn change_args(&self, who: &str) -> Vec<String> {
        vec![
            format!("{who} via replica {}", self.link.replica()),
            clock::now_rfc3339(),
            HISTORY_LIMIT.to_string(),
            self.channel.clone(),
        ]
    }

    /// Runs a change script; when Redis holds no state (restarted empty) it
    /// re-seeds it from this replica's overrides first and retries once.
    async fn write<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[String],
    ) -> Result<T, SharedFlagsError> {
        match self.invoke(script, args).await {
            Err(e) if e.code() == Some("NOSTATE") => {
                self.seed().await.map_err(unavailable)?;
                self.invoke(script, args).await.map_err(unavailable)
            }
            other => other.map_err(unavailable),
        }
    }

    /// Runs one of the scripts on the flag keys.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[String],
    ) -> redis::RedisResult<T> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.overrides_key)
            .key(&self.version_key)
            .key(&self.history_key);
        for a in args {
            inv.arg(a);
        }
        inv.invoke_async(&mut self.link.conn()).await
    }

    /// Installs the state a change just wrote. The change is in Redis
    /// whatever happens here: when this read fails, the answer shows the
    /// last state installed and the sync task catches up.
    async fn installed_after_change(&self) -> Arc<Snapshot> {
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "flag change stored in Redis, but reading it back failed; this replica catches up when Redis answers");
        }
        self.store.current()
    }

    /// Reads the cluster's state and installs it; seeds an empty Redis when
    /// `may_seed`. Returns whether Redis held a state.
    async fn read_and_install(&self, may_seed: bool) -> redis::RedisResult<bool> {
        let _one_at_a_time = self.installing.lock().await;
        let (version, flat, history): ReadReply = self
            .invoke(&self.scripts.read, &[HISTORY_LIMIT.to_string()])
            .await?;
        let Some(version) = version else {
            if may_seed {
                self.seed().await?;
            }
            return Ok(false);
        };
        let state = self.parse(version, &flat, &history);
        self.synced.store(version.max(1), Ordering::Relaxed);
        let before = self.store.current().version;
        let overrides_before = self.store.overrides();
        let snap = self.store.apply_cluster(state);
        if snap.version != before {
            tracing::debug!(version = snap.version, "cluster flags installed");
        }
        if self.store.overrides() != overrides_before
            && let Err(e) = self.store.save_overrides_copy().await
        {
            tracing::warn!(error = %e, "cannot keep a local copy of the cluster's flag overrides");
        }
        Ok(true)
    }

    async fn refresh(&self) -> redis::RedisResult<bool> {
        self.read_and_install(true).await
    }

    /// Puts this replica's last known overrides into an empty Redis with
    /// the next version (a no-op when another replica was first).
    async fn seed(&self) -> redis::RedisResult<()> {
        let overrides = self.store.overrides();
        let version = self.store.current().version.saturating_add(1);
        let mut args = vec![
            version.to_string(),
            format!(
                "replica {} (re-seeded Redis from the overrides it knew)",
                self.link.replica()
            ),
            clock::now_rfc3339(),
            HISTORY_LIMIT.to_string(),
            self.channel.clone(),
        ];
        for (key, value) in &overrides {
            args.extend([key.clone(), value.to_string()]);
        }
        let seeded: u64 = self.invoke(&self.scripts.seed, &args).await?;
        if seeded != 0 {
            tracing::warn!(
                version = seeded,
                overrides = overrides.len(),
                "Redis held no flag state (new cluster, or Redis restarted empty): seeded it with this replica's overrides"
            );
        }
        Ok(())
    }

    /// Parses what Redis holds; a value that does not parse (edited by hand)
    /// is skipped with an error, the rest applies.
    fn parse(&self, version: u64, flat: &[String], history: &[String]) -> ClusterState {
        let schema = self.store.schema();
        let mut overrides = BTreeMap::new();
        for pair in flat.chunks_exact(2) {
            match schema.parse_text(&pair[0], &pair[1]) {
                Ok(v) => {
                    overrides.insert(pair[0].clone(), v);
                }
                Err(e) => {
                    tracing::error!(key = %self.overrides_key, error = %e, "ignoring a bad flag override in Redis")
                }
            }
        }
        let history = history
            .iter()
            .rev()
            .filter_map(|text| parse_entry(text))
            .collect();
        ClusterState {
            version,
            overrides,
            history,
        }
    }

    /// Keeps this replica in step with the cluster until `stop` turns true:
    /// change notices over pub/sub, and a version check every third of the
    /// lease in case a notice was lost.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = self.link.lease() / 3;
        let mut empty_seen = 0u32;
        loop {
            let subscribed = tokio::select! {
                s = self.subscribe() => s,
                _ = stopped(&mut stop) => return,
            };
            let mut messages = match subscribed {
                Ok(pubsub) => pubsub.into_on_message(),
                Err(e) => {
                    tracing::debug!(error = %e, "flag change channel: cannot subscribe; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => continue,
                        _ = stopped(&mut stop) => return,
                    }
                }
            };
            // Whatever changed while we were not listening.
            self.check(&mut empty_seen).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.reset();
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(msg) => {
                            let version: Option<u64> = msg.get_payload().ok();
                            if version != Some(self.synced.load(Ordering::Relaxed)) {
                                self.check(&mut empty_seen).await;
                            }
                        }
                        // The connection dropped: resubscribe.
                        None => break,
                    },
                    _ = tick.tick() => self.check(&mut empty_seen).await,
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let timeout = self.link.lease();
        let connect = async {
            let mut pubsub = self.link.client().get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Compares the version and reads the state when it moved; seeds an
    /// empty Redis (at once when this replica has synced before, else after
    /// [`UNSYNCED_SEED_DELAY`] looks).
    async fn check(&self, empty_seen: &mut u32) {
        let mut conn = self.link.conn();
        let version: redis::RedisResult<Option<u64>> = redis::cmd("GET")
            .arg(&self.version_key)
            .query_async(&mut conn)
            .await;
        let result = match version {
            Ok(Some(v)) if v == self.synced.load(Ordering::Relaxed) => {
                *empty_seen = 0;
                return;
            }
            Ok(Some(_)) => {
                *empty_seen = 0;
                self.read_and_install(false).await.map(drop)
            }
            Ok(None) => {
                *empty_seen = empty_seen.saturating_add(1);
                let synced_before = self.synced.load(Ordering::Relaxed) != 0;
                let may_seed = synced_before || *empty_seen > UNSYNCED_SEED_DELAY;
                self.read_and_install(may_seed).await.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // cluster_redis_up and its log line report the outage once.
            tracing::debug!(error = %e, "cluster flags: Redis unavailable; keeping the last known overrides");
        }
    }
}

/// Resolves when the stop signal is true (the guard is not held across
/// other awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn unavailable(source: redis::RedisError) -> SharedFlagsError {
    SharedFlagsError::Unavailable { source }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}
