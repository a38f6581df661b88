//! Linux: the directory watch of [`super::watch`](crate::watch) through inotify directly,
//! subscribed only to the events that can change the config file: a file written and closed,
//! an entry created, moved in or out, deleted, or its metadata changed.
//!
//! `notify`'s inotify backend always subscribes to every write (`IN_MODIFY`) and open
//! (`IN_OPEN`) in the directory. With the SQLite database next to the config (a common layout,
//! and the default of the examples and the load generator), every page the audit trail wrote
//! to the WAL queued a kernel event and woke two threads (notify's and the debouncer): a sixth
//! of the gateway's CPU at 1,000 calls/s, and about 0.1 ms of every call (BENCHMARKS.md).
//! Without those subscriptions the kernel drops such writes at the mask check.
//!
//! Events are handed on as `notify` events, so the debouncer in `watch.rs` is the same on
//! every platform.

use std::path::Path;
use std::sync::mpsc as std_mpsc;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use notify::event::{AccessKind, AccessMode, CreateKind, MetadataKind, ModifyKind, RemoveKind};
use notify::{Event, EventKind};

/// What the watch subscribes to: no `IN_MODIFY`, `IN_OPEN` or `IN_ACCESS`.
fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
}

/// The watch on a directory; dropping it removes the watch, which stops the reader thread.
pub(crate) struct DirWatch {
    watches: Watches,
    wd: WatchDescriptor,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // The kernel answers with IN_IGNORED, which ends the reader's blocking read.
        let _ = self.watches.remove(self.wd.clone());
    }
}

/// Watches `dir` and sends its events on `events` from a reader thread, until the returned
/// watch is dropped or `events` is disconnected.
pub(crate) fn watch_dir(
    dir: &Path,
    events: std_mpsc::Sender<notify::Result<Event>>,
) -> std::io::Result<DirWatch> {
    let mut inotify = Inotify::init()?;
    let mut watches = inotify.watches();
    let wd = watches.add(dir, mask())?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("portcullis-config-inotify".to_owned())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let batch = match inotify.read_events_blocking(&mut buffer) {
                    Ok(batch) => batch,
                    Err(error) => {
                        let _ = events.send(Err(notify::Error::io(error)));
                        return;
                    }
                };
                for event in batch {
                    if event.mask.contains(EventMask::IGNORED) {
                        return; // the watch was removed
                    }
                    let event = as_notify(&dir, event.mask, event.name);
                    if events.send(event).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(DirWatch { watches, wd })
}

/// One inotify event as `notify` reports it; a queue overflow is an error (the debouncer
/// reloads on errors: something may have changed).
fn as_notify(dir: &Path, mask: EventMask, name: Option<&std::ffi::OsStr>) -> notify::Result<Event> {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Err(notify::Error::generic("inotify event queue overflow"));
    }
    let kind = if mask.contains(EventMask::CLOSE_WRITE) {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    } else if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        EventKind::Create(CreateKind::Any)
    } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
        EventKind::Remove(RemoveKind::Any)
    } else {
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))
    };
    let mut event = Event::new(kind);
    if let Some(name) = name {
        event = event.add_path(dir.join(name));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    fn names(events: &std_mpsc::Receiver<notify::Result<Event>>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        while let Ok(event) = events.recv_timeout(Duration::from_millis(300)) {
            out.extend(event.expect("no error").paths);
        }
        out
    }

    /// A database being written next to the config produces no event at all; the config's
    /// own save (write and close, and an editor's rename) does.
    #[test]
    fn writes_to_a_busy_neighbour_file_are_not_events() {
        let dir = std::env::temp_dir().join(format!("portcullis-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut db = std::fs::File::create(dir.join("portcullis.db-wal")).unwrap();
        let (tx, rx) = std_mpsc::channel();
        let watch = watch_dir(&dir, tx).unwrap();

        for _ in 0..2_000 {
            db.write_all(&[0u8; 4096]).unwrap();
        }
        db.sync_data().unwrap();
        assert_eq!(names(&rx), Vec::<PathBuf>::new(), "writes are not events");

        let config = dir.join("portcullis.yaml");
        std::fs::write(&config, "listen: 127.0.0.1:1\n").unwrap();
        assert!(names(&rx).contains(&config), "a saved config is");
        std::fs::write(dir.join(".portcullis.yaml.swp"), "x").unwrap();
        std::fs::rename(dir.join(".portcullis.yaml.swp"), &config).unwrap();
        assert!(names(&rx).contains(&config), "so is a rename over it");

        drop(watch);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
