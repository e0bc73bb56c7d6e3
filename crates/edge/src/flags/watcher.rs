//! Hot reload of the flags file. The watcher re-reads the file every
//! `POLL_INTERVAL` and applies it when its content changed. Comparing
//! content (not inotify events or mtimes) catches every way ops replace a
//! file — rewritten in place, renamed over by an editor, swapped through a
//! symlink by a Kubernetes ConfigMap — at the cost of reading a small file
//! four times a second.
//!
//! A file that cannot be used (missing, empty, not a regular file, too
//! large, not valid flags) never takes effect: the last good flags stay and
//! `lastError` says why (CONTRACT 4).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::FlagStore;

pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A flags file is a few hundred bytes; anything this large is a mistake.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one read of the flags file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// There is no file at the path.
    Missing,
    /// The file's text.
    Text(String),
    /// The file exists but could not be read (or is not a regular file,
    /// or too large): why.
    Unreadable(String),
}

/// Reads the flags file the safe way: opened without blocking (a FIFO
/// would otherwise wait for a writer), checked to be a regular file on the
/// opened descriptor (a symlink to `/dev/zero` is refused, not read), and
/// read with a bound. Blocking: call it off the async threads.
pub fn read_flags_file(path: &Path) -> FileState {
    use std::io::Read;
    #[cfg(unix)]
    let opened = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
    };
    #[cfg(not(unix))]
    let opened = std::fs::File::open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileState::Missing,
        Err(e) => return FileState::Unreadable(format!("cannot open: {e}")),
    };
    match file.metadata() {
        Err(e) => return FileState::Unreadable(format!("cannot stat: {e}")),
        Ok(m) if !m.is_file() => {
            return FileState::Unreadable(
                "not a regular file (a directory, device, FIFO or socket)".into(),
            );
        }
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return FileState::Unreadable(format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        Ok(_) => {}
    }
    // The size may grow between the stat and the read: bound the read too.
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return FileState::Unreadable(format!("cannot read: {e}"));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return FileState::Unreadable(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    match String::from_utf8(bytes) {
        Ok(t) => FileState::Text(t),
        Err(_) => FileState::Unreadable("not UTF-8 text".into()),
    }
}

async fn read_state(path: &Path) -> FileState {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_flags_file(&path))
        .await
        .unwrap_or_else(|e| FileState::Unreadable(format!("reader failed: {e}")))
}

fn apply(store: &FlagStore, file: &str, state: &FileState) -> Result<(), String> {
    match state {
        FileState::Missing => Err(store.reject_file(file, "missing (no such file)")),
        FileState::Text(t) => store.apply_file(file, t),
        FileState::Unreadable(why) => Err(store.reject_file(file, why)),
    }
}

/// Reads the file once at start-up. Returns what was read, for
/// [`watch_file`] to compare against, and whether it was accepted; when it
/// was not, the defaults, environment and overrides apply and `lastError`
/// says so.
pub(crate) async fn load_initial(
    store: &FlagStore,
    path: &Path,
) -> (FileState, Result<(), String>) {
    let state = read_state(path).await;
    let file = path.display().to_string();
    let why = match &state {
        FileState::Text(t) => match store.schema().parse_yaml_file(t) {
            Ok(_) => {
                let result = store.apply_file(&file, t);
                return (state, result);
            }
            Err(problems) => problems.join("; "),
        },
        FileState::Missing => "missing (no such file)".to_string(),
        FileState::Unreadable(why) => why.clone(),
    };
    let result = Err(store.reject_file(
        &file,
        &format!("{why}; no flags file loaded yet: defaults, environment and overrides apply"),
    ));
    (state, result)
}

/// Watches `path` until `shutdown` fires; `last` is what was applied last,
/// so a change made between start-up and the first look is not missed.
pub(crate) async fn watch_file(
    store: Arc<FlagStore>,
    path: PathBuf,
    mut last: FileState,
    mut shutdown: watch::Receiver<bool>,
) {
    let file = path.display().to_string();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let state = read_state(&path).await;
        if state != last {
            if apply(&store, &file, &state).is_ok() {
                tracing::info!(
                    file,
                    version = store.current().version,
                    "flags file reloaded"
                );
            }
            last = state;
        }
    }
}
