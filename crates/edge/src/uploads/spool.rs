//! One upload's bytes on disk. The file is named by the uploadId the
//! sidecar generated (never by the client's filename), written in order,
//! and fsynced before an offset is acknowledged or the file delivered: the
//! durable offset is what a resume continues from.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// File name suffix of spooled uploads; only such files are ever removed
/// from the spool directory.
pub(crate) const SPOOL_SUFFIX: &str = ".upload";

/// The spooled bytes of one upload.
#[derive(Debug)]
pub(crate) struct SpoolFile {
    path: PathBuf,
    file: Option<File>,
    /// Bytes written (possibly not yet durable).
    written: u64,
    /// Bytes known to be on disk (fsynced).
    durable: u64,
}

impl SpoolFile {
    /// The path of upload `id` in `dir`; `id` is one the sidecar generated
    /// (ASCII letters and digits only).
    pub(crate) fn path_for(dir: &Path, id: &str) -> PathBuf {
        dir.join(format!("{id}{SPOOL_SUFFIX}"))
    }

    /// Creates the empty file of a new upload.
    pub(crate) async fn create(dir: &Path, id: &str) -> std::io::Result<SpoolFile> {
        let path = Self::path_for(dir, id);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok(SpoolFile {
            path,
            file: Some(file),
            written: 0,
            durable: 0,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable
    }

    /// Drops bytes written after the last fsync (a connection that died
    /// before they were acknowledged), so a resume continues at `durable`.
    pub(crate) async fn rewind_to_durable(&mut self) -> std::io::Result<()> {
        if self.written == self.durable {
            return Ok(());
        }
        let durable = self.durable;
        let file = self.open().await?;
        file.flush().await?;
        file.set_len(durable).await?;
        file.seek(SeekFrom::Start(durable)).await?;
        self.written = self.durable;
        Ok(())
    }

    /// Appends `data`.
    pub(crate) async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let file = self.open().await?;
        file.write_all(data).await?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Makes every written byte durable; returns the durable offset.
    pub(crate) async fn sync(&mut self) -> std::io::Result<u64> {
        if self.durable != self.written {
            let file = self.open().await?;
            file.flush().await?;
            file.sync_data().await?;
            self.durable = self.written;
        }
        Ok(self.durable)
    }

    /// Closes the write handle (reopened on the next write).
    pub(crate) async fn close(&mut self) {
        if let Some(mut f) = self.file.take() {
            let _ = f.flush().await;
        }
    }

    /// Deletes the file.
    pub(crate) async fn remove(&mut self) {
        self.close().await;
        if let Err(e) = tokio::fs::remove_file(&self.path).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove spooled upload");
        }
    }

    async fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let mut f = OpenOptions::new().write(true).open(&self.path).await?;
            f.seek(SeekFrom::Start(self.written)).await?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("spool file not open"))
    }
}

/// Removes spool files not modified for `ttl` whose upload `held` does not
/// know: files of an earlier run, or of a process sharing the directory,
/// whose uploads can no longer be resumed. Returns how many.
pub(crate) async fn remove_stale(
    dir: &Path,
    ttl: std::time::Duration,
    held: impl Fn(&str) -> bool,
) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(e) = entries.next_entry().await? {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(SPOOL_SUFFIX) else {
            continue;
        };
        let Ok(meta) = e.metadata().await else {
            continue;
        };
        let idle = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if meta.is_file()
            && idle >= ttl
            && !held(id)
            && tokio::fs::remove_file(e.path()).await.is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_sync_rewind_remove() {
        let dir = std::env::temp_dir().join(format!(
            "re-spool-{}-{}",
            std::process::id(),
            crate::clock::unix_micros()
        ));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let mut s = SpoolFile::create(&dir, "abc").await.unwrap();
        s.append(b"hello ").await.unwrap();
        assert_eq!(s.sync().await.unwrap(), 6);
        s.append(b"lost").await.unwrap();
        assert_eq!((s.written(), s.durable()), (10, 6));
        s.rewind_to_durable().await.unwrap();
        s.append(b"world").await.unwrap();
        s.sync().await.unwrap();
        s.close().await;
        assert_eq!(tokio::fs::read(s.path()).await.unwrap(), b"hello world");
        assert!(
            SpoolFile::create(&dir, "abc").await.is_err(),
            "ids are never reused"
        );
        tokio::fs::write(dir.join("keep.txt"), b"x").await.unwrap();
        let mut other = SpoolFile::create(&dir, "def").await.unwrap();
        other.close().await;
        let long = std::time::Duration::from_secs(3600);
        assert_eq!(
            remove_stale(&dir, long, |_| false).await.unwrap(),
            0,
            "recent files stay"
        );
        let zero = std::time::Duration::ZERO;
        assert_eq!(
            remove_stale(&dir, zero, |id| id == "abc").await.unwrap(),
            1,
            "held files stay"
        );
        assert!(s.path().exists() && !other.path().exists());
        assert!(
            dir.join("keep.txt").exists(),
            "only spool files are touched"
        );
        s.remove().await;
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
