//! Persistence of the admin overrides (`flags.overrides_file`): loaded at
//! start-up, and written before a change takes effect (temp file then
//! rename, off the async threads for the admin API) so a failed write
//! changes nothing and a crash never leaves a half-written file.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{FlagStore, Snapshot, StoreError};
use crate::flags::FlagValue;

impl FlagStore {
    /// Writes the overrides in force to `flags.overrides_file` (if set): in
    /// cluster mode a local copy of the cluster's overrides, so a replica
    /// restarted while Redis is down starts with the last ones it knew.
    pub(crate) async fn save_overrides_copy(&self) -> Result<(), StoreError> {
        let _order = self.override_writers.lock().await;
        let overrides = self.overrides();
        self.persist_off_thread(&overrides).await
    }

    /// Loads the persisted overrides at start-up. A bad file is an error.
    pub(crate) fn load_overrides(&self) -> Result<(), String> {
        let Some(path) = &self.overrides_file else {
            return Ok(());
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        // Our own file; one emptied by hand means "no overrides".
        if crate::flags::is_empty_document(&text) {
            return Ok(());
        }
        let layer = self
            .schema
            .parse_yaml_file(&text)
            .map_err(|p| format!("{}: {}", path.display(), p.join("; ")))?;
        self.apply("overrides file", |l| {
            l.overrides = layer;
            Ok(())
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Sets admin overrides atomically (all or nothing): written to the
    /// overrides file (off the async threads, temp file then rename) before
    /// they take effect, so a failed write changes nothing.
    pub(crate) async fn set_overrides_persisted(
        &self,
        who: &str,
        changes: BTreeMap<String, FlagValue>,
    ) -> Result<Arc<Snapshot>, StoreError> {
        let _order = self.override_writers.lock().await;
        let mut next = self.lock_layers().overrides.clone();
        next.extend(changes);
        self.persist_off_thread(&next).await?;
        self.apply(who, |l| {
            l.overrides = next;
            Ok(())
        })
    }

    /// Drops one override like [`Self::set_overrides_persisted`]; `Ok(false)` when there was none.
    pub(crate) async fn delete_override_persisted(
        &self,
        who: &str,
        key: &str,
    ) -> Result<bool, StoreError> {
        let _order = self.override_writers.lock().await;
        let mut next = self.lock_layers().overrides.clone();
        if next.remove(key).is_none() {
            return Ok(false);
        }
        self.persist_off_thread(&next).await?;
        self.apply(who, |l| {
            l.overrides = next;
            Ok(())
        })?;
        Ok(true)
    }

    async fn persist_off_thread(
        &self,
        overrides: &BTreeMap<String, FlagValue>,
    ) -> Result<(), StoreError> {
        let Some(path) = self.overrides_file.clone() else {
            return Ok(());
        };
        let text = overrides_text(overrides);
        let file = path.display().to_string();
        tokio::task::spawn_blocking(move || write_atomically(&path, &text))
            .await
            .map_err(|e| StoreError::Persist {
                file,
                source: std::io::Error::other(e),
            })?
    }

    /// Sets admin overrides atomically and persists them, blocking; for
    /// tools and tests (the admin API uses `Self::set_overrides_persisted`).
    pub fn set_overrides(
        &self,
        who: &str,
        changes: BTreeMap<String, FlagValue>,
    ) -> Result<Arc<Snapshot>, StoreError> {
        self.apply(who, |l| {
            let mut next = l.overrides.clone();
            next.extend(changes);
            self.persist(&next)?;
            l.overrides = next;
            Ok(())
        })
    }

    /// Drops one override; `Ok(false)` when there was none.
    pub fn delete_override(&self, who: &str, key: &str) -> Result<bool, StoreError> {
        let mut existed = false;
        self.apply(who, |l| {
            let mut next = l.overrides.clone();
            existed = next.remove(key).is_some();
            if existed {
                self.persist(&next)?;
                l.overrides = next;
            }
            Ok(())
        })?;
        Ok(existed)
    }

    fn persist(&self, overrides: &BTreeMap<String, FlagValue>) -> Result<(), StoreError> {
        match &self.overrides_file {
            None => Ok(()),
            Some(path) => write_atomically(path, &overrides_text(overrides)),
        }
    }
}

/// The overrides file's text.
fn overrides_text(overrides: &BTreeMap<String, FlagValue>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = overrides
        .iter()
        .map(|(k, v)| (k.clone(), v.to_json()))
        .collect();
    format!(
        "# Admin overrides written by realtime-edge; edit through the admin API.\n{}",
        yaml_serde::to_string(&map).unwrap_or_default()
    )
}

/// Write then rename, so a crash never leaves a half-written file.
fn write_atomically(path: &std::path::Path, text: &str) -> Result<(), StoreError> {
    let err = |source| StoreError::Persist {
        file: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::clock;
    use crate::flags::{FlagSchema, ROLLOUT_PERCENT};

    fn store(overrides: Option<PathBuf>) -> Arc<FlagStore> {
        let schema = FlagSchema::new(vec!["finance".into()]);
        let env = BTreeMap::from([(ROLLOUT_PERCENT.to_string(), FlagValue::Percent(5))]);
        FlagStore::new(schema, env, overrides)
    }

    #[test]
    fn overrides_persist_and_reload() {
        let dir = std::env::temp_dir().join(format!(
            "re-flags-{}-{}",
            std::process::id(),
            clock::unix_millis()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("overrides.yaml");
        let s = store(Some(path.clone()));
        s.set_overrides(
            "t",
            BTreeMap::from([(ROLLOUT_PERCENT.to_string(), FlagValue::Percent(77))]),
        )
        .unwrap();
        let again = store(Some(path.clone()));
        again.load_overrides().unwrap();
        assert_eq!(again.current().flags.rollout_percent, 77);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
