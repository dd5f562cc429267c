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
use std::time::Duration;

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::reload::{Reloader, Trigger};
use crate::config::Config;

/// Quiet time after the last event before the reload runs.
pub const QUIET: Duration = Duration::from_millis(500);

/// Longest wait after the first event of a burst.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// Keeps the watch running; dropping it stops it.
pub struct FileWatch {
    /// The inotify watcher.
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileWatch")
    }
}

/// The files a config depends on besides itself: the admin key file and
/// the TLS certificate and key.
pub fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.upstream.admin_key_file.iter().cloned().collect();
    if let Some(tls) = &config.server.tls {
        files.push(tls.cert.clone());
        files.push(tls.key.clone());
    }
    files
}

/// Watches `config_path` and `files` and reloads through `reloader` when
/// they change. Needs a Tokio runtime.
pub fn spawn(
    config_path: &Path,
    files: &[PathBuf],
    reloader: Reloader,
) -> notify::Result<FileWatch> {
    let mut all = vec![config_path.to_path_buf()];
    all.extend(files.iter().cloned());
    let names: BTreeSet<OsString> = all
        .iter()
        .filter_map(|p| p.file_name().map(OsString::from))
        .collect();
    let dirs: BTreeSet<PathBuf> = all.iter().map(|p| parent_dir(p)).collect();

    let (tx, rx) = mpsc::channel::<Vec<String>>(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let Ok(event) = event else { return };
        // Reading the files (as every reload does) is not a change.
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let changed: Vec<String> = event
            .paths
            .iter()
            .filter_map(|p| p.file_name())
            .filter(|n| names.contains(*n) || n.to_string_lossy().starts_with(".."))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        if !changed.is_empty() {
            // A full channel means a reload is pending already.
            let _ = tx.try_send(changed);
        }
    })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    info!(
        dirs = %dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        "watching the config files for changes"
    );
    tokio::spawn(debounce(rx, config_path.to_path_buf(), reloader));
    Ok(FileWatch { _watcher: watcher })
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
