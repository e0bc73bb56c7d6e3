//! The layered flag store. Layers, later wins: defaults < environment <
//! file < admin overrides. Every change builds a whole new [`Snapshot`],
//! stores it in an `ArcSwap` (readers never lock) and publishes it on a
//! `watch` channel. In-flight work keeps the snapshot it loaded; the next
//! load sees the new one.
//!
//! The version counts changes of the effective flags: each new version has
//! its entries in the history (tagged with it), and a change that leaves
//! every value as it was (the same value set again, a rejected file) keeps
//! the version; `sources` and `lastError` are updated all the same.
//!
//! In cluster mode (CONTRACT 9, `cluster::flags`) the overrides
//! layer, the version and the admin history are the cluster's, read from
//! Redis and installed with `FlagStore::apply_cluster`; the file layer
//! stays this replica's own, and a file reload keeps the cluster version.
//!
//! This module holds the layers and publishes snapshots; how a snapshot
//! is built is `snapshot`'s, the change record `history`'s, and the
//! overrides file `overrides`'s.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{FlagSchema, FlagValue};
use crate::metrics as m;

mod history;
mod overrides;
mod snapshot;

pub(crate) use history::HISTORY_LIMIT;
pub use history::HistoryEntry;
use snapshot::build;
pub use snapshot::{Snapshot, Source};

#[derive(Default)]
struct Layers {
    env: BTreeMap<String, FlagValue>,
    file: BTreeMap<String, FlagValue>,
    overrides: BTreeMap<String, FlagValue>,
    last_error: Option<String>,
    /// Set once the cluster's state was installed: the version and admin
    /// history come from Redis from then on.
    cluster: Option<ClusterLayer>,
}

/// What the cluster owns of the flags, as last read from Redis.
#[derive(Debug, Clone, Default)]
struct ClusterLayer {
    version: u64,
    /// Oldest first.
    history: Vec<HistoryEntry>,
}

/// The cluster's shared flag state (CONTRACT 9), as read from Redis.
#[derive(Debug, Clone)]
pub(crate) struct ClusterState {
    /// The cluster-wide flags version.
    pub version: u64,
    /// The admin overrides every replica applies.
    pub overrides: BTreeMap<String, FlagValue>,
    /// The admin changes, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Why an admin change was refused; nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The changes named unknown flags or bad values: every problem.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The overrides file could not be written.
    #[error("cannot persist overrides to {file}: {source}")]
    Persist {
        /// The overrides file.
        file: String,
        /// Why the write failed.
        #[source]
        source: std::io::Error,
    },
}

/// The flag store shared by the admin API, the watcher and the hubs.
pub struct FlagStore {
    schema: FlagSchema,
    current: ArcSwap<Snapshot>,
    layers: Mutex<Layers>,
    history: Mutex<VecDeque<HistoryEntry>>,
    notify: watch::Sender<Arc<Snapshot>>,
    overrides_file: Option<PathBuf>,
    /// Serialises override writers across their file write, so the file
    /// and the layer change in the same order.
    override_writers: tokio::sync::Mutex<()>,
}

impl FlagStore {
    /// A store with defaults and the given environment layer.
    pub fn new(
        schema: FlagSchema,
        env: BTreeMap<String, FlagValue>,
        overrides_file: Option<PathBuf>,
    ) -> Arc<FlagStore> {
        let layers = Layers {
            env,
            ..Layers::default()
        };
        let snap = Arc::new(build(&schema, &layers, 1));
        let (notify, _) = watch::channel(snap.clone());
        Arc::new(FlagStore {
            schema,
            current: ArcSwap::new(snap),
            layers: Mutex::new(layers),
            history: Mutex::new(VecDeque::new()),
            notify,
            overrides_file,
            override_writers: tokio::sync::Mutex::new(()),
        })
    }

    /// The flag names and types this store accepts.
    pub fn schema(&self) -> &FlagSchema {
        &self.schema
    }

    /// The current snapshot; lock-free.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Receives every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.notify.subscribe()
    }

    /// The admin overrides in force.
    pub fn overrides(&self) -> BTreeMap<String, FlagValue> {
        self.lock_layers().overrides.clone()
    }

    /// The value `key` has below the overrides (default, environment, file)
    /// on this replica; `None` for an unknown key.
    pub(crate) fn base_value(&self, key: &str) -> Option<FlagValue> {
        let layers = self.lock_layers();
        layers
            .file
            .get(key)
            .or_else(|| layers.env.get(key))
            .cloned()
            .or_else(|| self.schema.defaults().remove(key))
    }

    /// Whether the cluster's state was installed (cluster mode, synced once).
    pub fn cluster_version(&self) -> Option<u64> {
        self.lock_layers().cluster.as_ref().map(|c| c.version)
    }

    /// Installs the cluster's overrides, version and history (cluster
    /// mode). Publishes a new snapshot when anything visible changed.
    pub(crate) fn apply_cluster(&self, state: ClusterState) -> Arc<Snapshot> {
        let mut layers = self.lock_layers();
        let old = self.current.load_full();
        let ClusterState {
            version,
            overrides,
            history,
        } = state;
        for (key, value) in &overrides {
            if old.values.get(key) != Some(value) {
                tracing::info!(key, new = %value, version, "flag changed through the cluster");
            }
        }
        layers.overrides = overrides;
        layers.cluster = Some(ClusterLayer { version, history });
        let next = build(&self.schema, &layers, version);
        if next.version == old.version
            && next.values == old.values
            && next.sources == old.sources
            && next.last_error == old.last_error
        {
            return old;
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        ::metrics::gauge!(m::FLAGS_VERSION).set(next.version as f64);
        self.notify.send_replace(next.clone());
        next
    }

    /// Replaces the file layer with a freshly read file, or records why it
    /// was rejected (an empty file is rejected: CONTRACT 4).
    pub(crate) fn apply_file(&self, file: &str, text: &str) -> Result<(), String> {
        match self.schema.parse_yaml_file(text) {
            Ok(layer) => {
                let who = format!("file {file}");
                let _ = self.apply(&who, |l| {
                    l.file = layer;
                    l.last_error = None;
                    Ok(())
                });
                ::metrics::counter!(m::FLAG_RELOADS, m::label::RESULT => m::Outcome::Ok.as_str())
                    .increment(1);
                Ok(())
            }
            Err(problems) => Err(self.reject_file(file, &problems.join("; "))),
        }
    }

    /// Records a file that could not be used; the last good flags stay.
    pub(crate) fn reject_file(&self, file: &str, why: &str) -> String {
        let msg = format!("{file}: {why}");
        tracing::error!(file, error = %msg, "flags file rejected; the last good flags stay in force");
        ::metrics::counter!(m::FLAG_RELOADS, m::label::RESULT => m::Outcome::Error.as_str())
            .increment(1);
        let _ = self.apply("file", |l| {
            l.last_error = Some(msg.clone());
            Ok(())
        });
        msg
    }

    fn lock_layers(&self) -> std::sync::MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `change` on the layers under the writer lock, then publishes a
    /// new snapshot if the effective flags or the error changed.
    fn apply(
        &self,
        who: &str,
        change: impl FnOnce(&mut Layers) -> Result<(), StoreError>,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let mut layers = self.layers.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut layers)?;
        let old = self.current.load_full();
        let mut next = build(&self.schema, &layers, old.version);
        let changed: Vec<(String, String, String)> = next
            .values
            .iter()
            .filter_map(|(k, v)| {
                let before = old.values.get(k);
                (before != Some(v)).then(|| {
                    (
                        k.clone(),
                        before.map(|b| b.to_string()).unwrap_or_default(),
                        v.to_string(),
                    )
                })
            })
            .collect();
        let sources_changed = next.sources != old.sources;
        if changed.is_empty() && !sources_changed && next.last_error == old.last_error {
            return Ok(old);
        }
        // Only a change of the effective flags is a new version; in cluster
        // mode the version is the cluster's, and a change of this replica's
        // file keeps it.
        if !changed.is_empty() && layers.cluster.is_none() {
            next.version = old.version + 1;
        }
        let next = Arc::new(next);
        self.current.store(next.clone());
        if !changed.is_empty() {
            self.record_history(next.version, who, changed);
        }
        ::metrics::gauge!(m::FLAGS_VERSION).set(next.version as f64);
        self.notify.send_replace(next.clone());
        Ok(next)
    }
}

#[cfg(test)]
mod tests;
