//! The record of flag changes: which key changed, from what to what, by
//! whom and when, tagged with the flags version the change produced. This
//! replica keeps its own changes (bounded by [`HISTORY_LIMIT`]); in cluster
//! mode the admin changes are the cluster's, merged in by time.

use crate::clock;

use super::FlagStore;

/// One recorded change.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// The flags version this change produced.
    pub version: u64,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// Who made it (the admin caller, or `file <path>`).
    pub who: String,
    /// The flag changed.
    pub key: String,
    /// Its effective value before, as text.
    pub old: String,
    /// Its effective value after, as text.
    pub new: String,
}

/// How many changes the history keeps (locally, and in Redis in cluster mode).
pub(crate) const HISTORY_LIMIT: usize = 500;

impl FlagStore {
    /// The recorded changes, oldest first. In cluster mode: the cluster's
    /// admin changes merged by time with this replica's file reloads.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let local: Vec<HistoryEntry> = self
            .history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        let Some(cluster) = self.lock_layers().cluster.clone() else {
            return local;
        };
        let mut all = cluster.history;
        all.extend(local);
        // RFC 3339 in UTC with milliseconds sorts as text; stable for ties.
        all.sort_by(|a, b| a.time.cmp(&b.time));
        let excess = all.len().saturating_sub(HISTORY_LIMIT);
        all.drain(..excess);
        all
    }

    /// Records the changes that produced flags version `version`, each
    /// `(key, old, new)`, dropping the oldest beyond [`HISTORY_LIMIT`].
    pub(super) fn record_history(
        &self,
        version: u64,
        who: &str,
        changed: Vec<(String, String, String)>,
    ) {
        let now = clock::now_rfc3339();
        let mut hist = self.history.lock().unwrap_or_else(|p| p.into_inner());
        for (key, old_v, new_v) in changed {
            tracing::info!(who, key, old = %old_v, new = %new_v, version, "flag changed");
            hist.push_back(HistoryEntry {
                version,
                time: now.clone(),
                who: who.to_string(),
                key,
                old: old_v,
                new: new_v,
            });
            while hist.len() > HISTORY_LIMIT {
                hist.pop_front();
            }
        }
    }
}
