//! The uploads this sidecar holds: who owns each, its spooled file, its
//! phase, and the spool-space reservations behind `uploads.max_spool_bytes`.
//!
//! One connection at a time works on an upload: it holds the upload's
//! spool lock. A reconnect with the same uploadId signals the old
//! connection to let go (`takeover`) and takes the lock, so a half-dead
//! connection never holds an upload in limbo.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, watch};
use tokio::time::Instant;

use super::handshake::FileMeta;
use super::spool::SpoolFile;
use crate::auth::OrgId;

/// Who may resume an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) org: OrgId,
    /// The token's user (`sub`); `None` when the token has none.
    pub(crate) user: Option<String>,
}

/// Where an upload stands.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// Bytes are arriving (or may arrive on a resume).
    Receiving,
    /// Delivered: the `complete` message, sent again to a reconnect.
    Complete(Arc<str>),
    /// The backend refused the file: the `error` message, sent again to a reconnect.
    Rejected(Arc<str>),
}

/// One upload.
pub(crate) struct Upload {
    pub(crate) id: String,
    pub(crate) owner: Owner,
    pub(crate) meta: FileMeta,
    pub(crate) spool: Arc<tokio::sync::Mutex<SpoolFile>>,
    takeover: watch::Sender<u64>,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    last_active: Instant,
    /// Spool bytes reserved for this upload (0 once its file is gone).
    reserved: u64,
}

impl Upload {
    pub(crate) fn phase(&self) -> Phase {
        self.lock().phase.clone()
    }

    pub(crate) fn touch(&self) {
        self.lock().last_active = Instant::now();
    }

    /// Asks the connection working on this upload to let go and returns
    /// the receiver the new connection watches for the next takeover.
    pub(crate) fn take_over(&self) -> (u64, watch::Receiver<u64>) {
        self.takeover.send_modify(|g| *g += 1);
        let rx = self.takeover.subscribe();
        let generation = *rx.borrow();
        (generation, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a new upload was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmitError {
    #[error("the sidecar's upload spool is full ({used} of {max} bytes); retry later")]
    SpoolFull { used: u64, max: u64 },
    #[error("cannot create the spool file: {0}")]
    Io(#[source] std::io::Error),
}

/// Every upload held, by uploadId.
pub(crate) struct Registry {
    dir: PathBuf,
    max_spool_bytes: u64,
    reserved: AtomicU64,
    uploads: Mutex<HashMap<String, Arc<Upload>>>,
}

impl Registry {
    pub(crate) fn new(dir: PathBuf, max_spool_bytes: u64) -> Registry {
        Registry {
            dir,
            max_spool_bytes,
            reserved: AtomicU64::new(0),
            uploads: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes reserved by spooled files.
    pub(crate) fn spool_bytes(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Admits a new upload: reserves its whole size in the spool, generates
    /// its id and creates its file.
    pub(crate) async fn admit(
        &self,
        owner: Owner,
        meta: FileMeta,
    ) -> Result<Arc<Upload>, AdmitError> {
        let size = meta.filesize;
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(size)
                    .filter(|&total| total <= self.max_spool_bytes)
            })
            .map_err(|used| AdmitError::SpoolFull {
                used,
                max: self.max_spool_bytes,
            })?;
        self.publish_spool_bytes();
        let id = new_upload_id();
        let spool = match SpoolFile::create(&self.dir, &id).await {
            Ok(s) => s,
            Err(e) => {
                self.reserved.fetch_sub(size, Ordering::AcqRel);
                self.publish_spool_bytes();
                return Err(AdmitError::Io(e));
            }
        };
        let upload = Arc::new(Upload {
            id: id.clone(),
            owner,
            meta,
            spool: Arc::new(tokio::sync::Mutex::new(spool)),
            takeover: watch::channel(0).0,
            state: Mutex::new(State {
                phase: Phase::Receiving,
                last_active: Instant::now(),
                reserved: size,
            }),
        });
        self.map().insert(id, upload.clone());
        Ok(upload)
    }

    /// Whether upload `id` is held (its file belongs to a live upload).
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.map().contains_key(id)
    }

    /// The upload `id` if `owner` may resume it.
    pub(crate) fn find(&self, id: &str, owner: &Owner) -> Option<Arc<Upload>> {
        self.map().get(id).filter(|u| u.owner == *owner).cloned()
    }

    /// Deletes the upload's file (the caller holds its spool lock) and
    /// releases its reservation; the upload itself stays for its result.
    pub(crate) async fn discard_file(&self, upload: &Upload, spool: &mut SpoolFile) {
        spool.remove().await;
        self.release(upload);
    }

    /// Records the final phase; the file is gone.
    pub(crate) fn finish(&self, upload: &Upload, phase: Phase) {
        let mut st = upload.lock();
        st.phase = phase;
        st.last_active = Instant::now();
    }

    /// Forgets an upload whose file is gone (a version-1 upload at its end).
    pub(crate) fn forget(&self, id: &str) {
        self.map().remove(id);
    }

    fn release(&self, upload: &Upload) {
        let n = std::mem::take(&mut upload.lock().reserved);
        self.reserved.fetch_sub(n, Ordering::AcqRel);
        self.publish_spool_bytes();
    }

    /// Removes uploads idle for `ttl` that no connection works on, with
    /// their files; returns how many.
    pub(crate) async fn sweep(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let expired: Vec<Arc<Upload>> = self
            .map()
            .values()
            .filter(|u| now.saturating_duration_since(u.lock().last_active) >= ttl)
            .cloned()
            .collect();
        let mut removed = 0;
        for upload in expired {
            // Held means a connection is working on it: not idle after all.
            let Ok(mut spool) = upload.spool.clone().try_lock_owned() else {
                continue;
            };
            self.map().remove(&upload.id);
            if matches!(upload.phase(), Phase::Receiving) {
                self.discard_file(&upload, &mut spool).await;
            }
            tracing::info!(upload = %upload.id, org = upload.owner.org, "expired upload removed");
            removed += 1;
        }
        removed
    }

    fn publish_spool_bytes(&self) {
        metrics::gauge!(crate::metrics::UPLOADS_SPOOL_BYTES).set(self.spool_bytes() as f64);
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Upload>>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's hold on an upload: the spool lock plus the receiver that
/// says when another connection took the upload over.
pub(crate) struct Attached {
    pub(crate) upload: Arc<Upload>,
    pub(crate) spool: OwnedMutexGuard<SpoolFile>,
    pub(crate) generation: u64,
    pub(crate) takeover: watch::Receiver<u64>,
}

impl Attached {
    /// Takes `upload` over from any connection working on it, waiting at
    /// most `wait` for it to let go.
    pub(crate) async fn take(upload: Arc<Upload>, wait: Duration) -> Option<Attached> {
        let (generation, takeover) = upload.take_over();
        let spool = tokio::time::timeout(wait, upload.spool.clone().lock_owned())
            .await
            .ok()?;
        upload.touch();
        Some(Attached {
            upload,
            spool,
            generation,
            takeover,
        })
    }
}

/// 128 random bits as 32 hex digits: unguessable, and safe as a file name.
fn new_upload_id() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            filename: "f".into(),
            filesize: size,
            mimetype: None,
            document_type: None,
            guest_id: None,
            property_id: None,
        }
    }

    fn owner(org: OrgId, user: &str) -> Owner {
        Owner {
            org,
            user: Some(user.into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_owners_takeover_and_expiry() {
        let dir = std::env::temp_dir().join(format!(
            "re-registry-{}-{}",
            std::process::id(),
            crate::clock::unix_micros()
        ));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let r = Registry::new(dir.clone(), 100);
        let a = r.admit(owner(1, "u"), meta(60)).await.unwrap();
        assert!(matches!(
            r.admit(owner(1, "u"), meta(41)).await,
            Err(AdmitError::SpoolFull { used: 60, max: 100 })
        ));
        let b = r.admit(owner(1, "u"), meta(40)).await.unwrap();
        assert_eq!(r.spool_bytes(), 100);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);

        assert!(r.find(&a.id, &owner(1, "u")).is_some());
        assert!(r.find(&a.id, &owner(2, "u")).is_none(), "another org");
        assert!(r.find(&a.id, &owner(1, "v")).is_none(), "another user");
        assert!(r.find("nope", &owner(1, "u")).is_none());

        let first = Attached::take(a.clone(), Duration::from_secs(1))
            .await
            .unwrap();
        let mut watch = first.takeover.clone();
        let a2 = a.clone();
        let second = tokio::spawn(async move { Attached::take(a2, Duration::from_secs(5)).await });
        watch.changed().await.unwrap();
        assert_ne!(
            *watch.borrow(),
            first.generation,
            "the holder is told to let go"
        );
        drop(first);
        let second = second.await.unwrap().unwrap();

        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            r.sweep(Duration::from_secs(10)).await,
            1,
            "only the unheld one"
        );
        assert_eq!(r.spool_bytes(), 60);
        assert!(!SpoolFile::path_for(&dir, &b.id).exists());
        drop(second);
        assert_eq!(r.sweep(Duration::from_secs(10)).await, 1);
        assert_eq!(r.spool_bytes(), 0);
        assert!(r.map().is_empty());
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
