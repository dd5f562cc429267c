//! Reload on file change: secrets that rotate themselves.
//!
//! Kubernetes updates a mounted Secret or ConfigMap without a signal: the
//! kubelet writes the new files into a fresh timestamped directory, points
//! a `..data_tmp` symlink at it and renames that over `..data`, which the
//! visible files link through. Editors save by writing a temporary file and
//! renaming it over the original. Neither touches the watched file itself,
//! so the *directories* holding the config file, the admin key file and
//! the TLS files are watched (inotify, through `notify`), and any event
//! that names a watched file or a `..`-prefixed kubelet entry counts.
//!
//! Events are debounced: the reload runs once things have been quiet for
//! [`QUIET`] (at most [`MAX_WAIT`] after the first event), so one update is
//! one reload. The reload is the same as SIGHUP's ([`Reloader::reload_file`]),
//! counted with `trigger="file"`; the log names the files that changed,
//! never their content.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::reload::{Reloader, Trigger};

/// Quiet time after the last event before the reload runs.
pub const QUIET: Duration = Duration::from_millis(500);

/// Longest wait after the first event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Keeps the watch running; dropping it stops it.
pub struct FileWatch {
    /// The task that owns the watcher and follows the config's files;
    /// aborted (and with it the watcher dropped) when this is dropped.
    follow: AbortHandle,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

/// Watches `config_path` and the files the running config depends on, and
/// reloads through `reloader` when they change. After every applied
/// reload the watched directories are recomputed from the new config
/// (a key file moved to another directory is followed there), and the
/// log names the directories added and dropped. Needs a Tokio runtime.
pub fn spawn(config_path: &Path, reloader: Reloader) -> notify::Result<FileWatch> {
    let mut files = reloader.dependent_files();
    let names = Arc::new(Mutex::new(BTreeSet::new()));
    let (tx, rx) = mpsc::channel::<Vec<String>>(64);
    let seen = Arc::clone(&names);
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let Ok(event) = event else { return };
        // Reading the files (as every reload does) is not a change.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let names = seen.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<String> = event
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .filter(|n| names.contains(*n) || n.to_string_lossy().starts_with(".."))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        drop(names);
        if !changed.is_empty() {
            // A full channel means a reload is pending already.
            let _ = tx.try_send(changed);
        }
    })?;
    let mut watched = Watched {
        watcher,
        config_path: config_path.to_path_buf(),
        names,
        dirs: BTreeSet::new(),
    };
    let first = files.borrow_and_update().clone();
    let (added, _) = watched.follow(&first);
    if let Some(Err(e)) = added.into_iter().find(Result::is_err) {
        return Err(e);
    }
    info!(dirs = %watched.dirs_text(), "watching the config files for changes");
    let follow = tokio::spawn(async move {
        while files.changed().await.is_ok() {
            let now = files.borrow_and_update().clone();
            let (added, dropped) = watched.follow(&now);
            watched.log_change(added, dropped);
        }
    });
    tokio::spawn(debounce(rx, config_path.to_path_buf(), reloader));
    Ok(FileWatch {
        follow: follow.abort_handle(),
    })
}

/// The directories under watch and the file names that count in them.
struct Watched {
    /// The inotify watcher; dropping it ends the events (and so the
    /// debounce task).
    watcher: RecommendedWatcher,
    /// The config file itself, always watched.
    config_path: PathBuf,
    /// File names whose events count, shared with the watcher's callback.
    names: Arc<Mutex<BTreeSet<OsString>>>,
    /// The directories being watched now.
    dirs: BTreeSet<PathBuf>,
}

/// One directory's watch result, for the log.
type DirResult = notify::Result<PathBuf>;

impl Watched {
    /// Watches the directories of the config file and `files`, and drops
    /// the ones no longer needed. Returns what was added (or failed to
    /// be) and what was dropped.
    fn follow(&mut self, files: &[PathBuf]) -> (Vec<DirResult>, Vec<PathBuf>) {
        let mut all = vec![self.config_path.clone()];
        all.extend(files.iter().cloned());
        let names = all
            .iter()
            .filter_map(|p| p.file_name().map(OsString::from))
            .collect();
        *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
        let want: BTreeSet<PathBuf> = all.iter().map(|p| parent_dir(p)).collect();
        let mut added = Vec::new();
        for dir in want.difference(&self.dirs).cloned().collect::<Vec<_>>() {
            // A directory that cannot be watched now is tried again on the
            // next reload.
            added.push(
                self.watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .map(|()| dir.clone()),
            );
            if matches!(added.last(), Some(Ok(_))) {
                self.dirs.insert(dir);
            }
        }
        let dropped: Vec<PathBuf> = self.dirs.difference(&want).cloned().collect();
        for dir in &dropped {
            let _ = self.watcher.unwatch(dir);
            self.dirs.remove(dir);
        }
        (added, dropped)
    }

    /// Logs a change of the watched set (nothing when it did not change).
    fn log_change(&self, added: Vec<DirResult>, dropped: Vec<PathBuf>) {
        let mut ok = Vec::new();
        for result in added {
            match result {
                Ok(dir) => ok.push(dir.display().to_string()),
                Err(e) => {
                    warn!(cause = %e, "cannot watch a directory the config names; reload with SIGHUP")
                }
            }
        }
        if ok.is_empty() && dropped.is_empty() {
            return;
        }
        let dropped: Vec<String> = dropped.iter().map(|d| d.display().to_string()).collect();
        info!(
            added = %ok.join(", "),
            dropped = %dropped.join(", "),
            dirs = %self.dirs_text(),
            "file watch follows the configuration"
        );
    }

    /// The watched directories, for the log.
    fn dirs_text(&self) -> String {
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(", ")
    }
}

/// The directory holding `p` (`.` for a bare file name).
fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// One reload per burst of events.
async fn debounce(mut rx: mpsc::Receiver<Vec<String>>, path: PathBuf, reloader: Reloader) {
    while let Some(first) = rx.recv().await {
        let mut changed: BTreeSet<String> = first.into_iter().collect();
        let give_up = Instant::now() + MAX_WAIT;
        loop {
            let quiet_until = (Instant::now() + QUIET).min(give_up);
            match tokio::time::timeout_at(quiet_until, rx.recv()).await {
                Ok(Some(more)) => changed.extend(more),
                Ok(None) => return,
                Err(_) => break,
            }
            if Instant::now() >= give_up {
                break;
            }
        }
        let files = changed.into_iter().collect::<Vec<_>>().join(", ");
        info!(files = %files, "watched files changed: reloading configuration");
        reloader.reload_file(&path, Trigger::File).await;
    }
    warn!("file watch ended");
}
