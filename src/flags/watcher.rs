//! Hot reload of the flags file. The watcher re-reads the file every
//! [`POLL_INTERVAL`] and applies it when its content changed. Comparing
//! content (not inotify events or mtimes) catches every way ops replace a
//! file — rewritten in place, renamed over by an editor, swapped through a
//! symlink by a Kubernetes ConfigMap — at the cost of reading a small file
//! four times a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::FlagStore;

pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A flags file is a few hundred bytes; anything this large is a mistake.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one read of the flags file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Text(String),
    Unreadable(String),
}

async fn read_state(path: &PathBuf) -> FileState {
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return FileState::Missing,
        Err(e) => return FileState::Unreadable(e.to_string()),
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return FileState::Unreadable(format!("larger than {MAX_FILE_BYTES} bytes"));
        }
        Ok(_) => {}
    }
    match tokio::fs::read(path).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => FileState::Text(t),
            Err(_) => FileState::Unreadable("not UTF-8 text".into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::Missing,
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

fn apply(store: &FlagStore, file: &str, state: &FileState) -> Result<(), String> {
    match state {
        FileState::Missing => store.apply_file(file, None),
        FileState::Text(t) => store.apply_file(file, Some(t)),
        FileState::Unreadable(why) => Err(store.reject_file(file, why)),
    }
}

/// Reads the file once at start-up. A missing file is fine (no file flags).
/// Returns what was read, for [`watch_file`] to compare against, and
/// whether it was accepted.
pub async fn load_initial(store: &FlagStore, path: &PathBuf) -> (FileState, Result<(), String>) {
    let state = read_state(path).await;
    if state == FileState::Missing {
        tracing::info!(file = %path.display(), "no flags file; using defaults, environment and overrides");
    }
    let result = apply(store, &path.display().to_string(), &state);
    (state, result)
}

/// Watches `path` until `shutdown` fires; `last` is what was applied last,
/// so a change made between start-up and the first look is not missed.
pub async fn watch_file(
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
