//! Hot reload: watch the config file and compile it again whenever it changes.
//!
//! [`watch`] watches the file's *parent directory* (not the file itself), so that editors which
//! save by writing a temporary file and renaming it over the original, and Kubernetes ConfigMap
//! volumes, which swap a `..data` symlink, are both noticed. Events are filtered on the file's
//! name (and `..data`), then debounced: a reload happens once no event has arrived for
//! [`DEBOUNCE`] (at most [`MAX_DELAY`] after the first event), so a save that produces several
//! events yields one reload.
//!
//! Each reload sends the result of [`crate::Loader::load`] on the returned channel: `Ok` with
//! the new config, or `Err` with every problem. The receiver decides what to do; the gateway
//! keeps its last good config on `Err` and logs why. Nothing is sent for the initial state: the
//! caller loads the file itself before watching.
//!
//! The watcher runs on its own thread (no Tokio runtime is needed to call [`watch`]) and stops
//! when the receiver is dropped.

use crate::{Config, ConfigErrors, Loader};
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind};
#[cfg(not(target_os = "linux"))]
use notify::{RecursiveMode, Watcher};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Linux watches through inotify directly, without subscribing to every write in the directory.
#[cfg(target_os = "linux")]
#[path = "watch_inotify.rs"]
mod inotify_watch;

/// Quiet period after the last event before the file is read again.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest delay between the first event of a burst and the reload.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// How often the watcher thread checks whether the receiver is gone while idle.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Reload results that may wait in the channel for the receiver.
const CHANNEL_CAPACITY: usize = 4;
/// The entry a Kubernetes ConfigMap volume swaps atomically on update.
const K8S_DATA_DIR: &str = "..data";

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path has no file name (e.g. `/` or `..`).
    #[error("cannot watch {}: not a file path", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The working directory is needed to make a relative path absolute and is unavailable.
    #[error("cannot watch {}: {source}", path.display())]
    Absolute {
        /// The path given.
        path: PathBuf,
        /// Why it could not be made absolute.
        source: std::io::Error,
    },
    /// The OS watcher refused (missing directory, inotify limits, …).
    #[error("cannot watch {}: {source}", dir.display())]
    Notify {
        /// The directory that was to be watched.
        dir: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// The watcher thread could not be started.
    #[error("cannot start the config watcher thread: {0}")]
    Spawn(std::io::Error),
}

/// Watches `path` and sends a freshly loaded config (or its errors) after every change. Secrets
/// and `PORTCULLIS_*` overrides come from the process environment. Same as
/// `Loader::new().watch(path)`.
pub fn watch(path: PathBuf) -> Result<mpsc::Receiver<Result<Config, ConfigErrors>>, WatchError> {
    Loader::new().watch(path)
}

impl Loader {
    /// Watches `path` and sends the result of [`Loader::load`] after every change; see the
    /// [module documentation](self) for the details. Stops when the receiver is dropped.
    pub fn watch(
        &self,
        path: PathBuf,
    ) -> Result<mpsc::Receiver<Result<Config, ConfigErrors>>, WatchError> {
        let path = std::path::absolute(&path).map_err(|source| WatchError::Absolute {
            path: path.clone(),
            source,
        })?;
        let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
            return Err(WatchError::NotAFile { path });
        };
        let dir = dir.to_path_buf();
        let file_name = file_name.to_os_string();

        let (event_tx, event_rx) = std_mpsc::channel::<notify::Result<Event>>();
        #[cfg(target_os = "linux")]
        let watcher = inotify_watch::watch_dir(&dir, event_tx).map_err(|e| WatchError::Notify {
            dir: dir.clone(),
            source: notify::Error::io(e),
        })?;
        #[cfg(not(target_os = "linux"))]
        let watcher = {
            let mut watcher =
                notify::recommended_watcher(event_tx).map_err(|source| WatchError::Notify {
                    dir: dir.clone(),
                    source,
                })?;
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Notify {
                    dir: dir.clone(),
                    source,
                })?;
            watcher
        };

        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let loader = self.clone();
        std::thread::Builder::new()
            .name("portcullis-config-watch".to_owned())
            .spawn(move || {
                // The watcher lives as long as this thread; dropping it stops the OS watch.
                let _watcher = watcher;
                run(&loader, &path, &file_name, &event_rx, &tx);
            })
            .map_err(WatchError::Spawn)?;
        Ok(rx)
    }
}

/// The watcher thread: wait for a relevant event, let the burst settle, reload, send.
fn run(
    loader: &Loader,
    path: &Path,
    file_name: &OsString,
    events: &std_mpsc::Receiver<notify::Result<Event>>,
    tx: &mpsc::Sender<Result<Config, ConfigErrors>>,
) {
    loop {
        match events.recv_timeout(IDLE_CHECK) {
            Ok(event) if relevant(&event, file_name) => {}
            Ok(_) => continue,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                if tx.is_closed() {
                    return;
                }
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let deadline = Instant::now() + MAX_DELAY;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match events.recv_timeout(DEBOUNCE.min(left)) {
                // Any event, relevant or not, only prolongs the wait by at most DEBOUNCE.
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        // `blocking_send` is fine here: this is a plain thread, outside any runtime.
        if tx.blocking_send(loader.load(path)).is_err() {
            return;
        }
    }
}

/// Does `event` concern the watched file? Errors (e.g. a queue overflow) count: a reload is the
/// safe answer to "something may have changed". Read-only accesses never do, or our own reads
/// would trigger reloads.
fn relevant(event: &notify::Result<Event>, file_name: &OsString) -> bool {
    let Ok(event) = event else { return true };
    if let EventKind::Access(kind) = event.kind
        && kind != AccessKind::Close(AccessMode::Write)
    {
        return false;
    }
    event.paths.iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n == file_name.as_os_str() || n == K8S_DATA_DIR)
    })
}
