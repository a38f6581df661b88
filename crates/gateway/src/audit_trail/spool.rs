//! The local audit spool (`audit.on_failure: spool`): when the store cannot take a record, the
//! record goes to an append-only file of JSON lines (one [`AuditEvent`] each, fsynced before the
//! call goes on), and is replayed into the store, in order, once it can write again.
//!
//! Replay renames the spool to `<spool>.replaying` first, so new failures start a fresh spool
//! while the old one drains; a crash mid-replay leaves the `.replaying` file, which the next
//! replay finishes (delivery is at least once: a record appended just before a crash may be
//! appended again; both copies carry the same time and trace id). A line that cannot be
//! decoded is kept in `<spool>.rejected` and logged, never silently dropped.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use portcullis_audit::AuditEvent;

/// The spool file.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    /// The open file, appended under the lock (None until the first failure, and after a replay
    /// moved it away).
    file: Mutex<Option<std::fs::File>>,
}

/// Why a record could not be spooled either.
#[derive(Debug, thiserror::Error)]
#[error("audit spool {path}: {source}")]
pub struct SpoolError {
    path: String,
    source: std::io::Error,
}

impl Spool {
    /// A spool at `path` (created on the first record).
    pub fn new(path: PathBuf) -> Spool {
        Spool {
            path,
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn replaying_path(&self) -> PathBuf {
        with_suffix(&self.path, ".replaying")
    }

    /// Appends `event` durably (written and fsynced before returning).
    pub fn append(&self, event: &AuditEvent) -> Result<(), SpoolError> {
        let fail = |source| SpoolError {
            path: self.path.display().to_string(),
            source,
        };
        let mut line = serde_json::to_vec(event).map_err(|e| fail(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut slot = self.file.lock().expect("poisoned");
        if slot.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(fail)?;
            *slot = Some(file);
        }
        let file = slot.as_mut().expect("just opened");
        file.write_all(&line).map_err(fail)?;
        file.sync_data().map_err(fail)
    }

    /// Records waiting (in the spool and in an unfinished replay).
    pub fn backlog(&self) -> usize {
        [self.path.clone(), self.replaying_path()]
            .iter()
            .filter_map(|p| std::fs::File::open(p).ok())
            .map(|f| std::io::BufReader::new(f).lines().count())
            .sum()
    }

    /// Takes the records to replay: those of an unfinished replay, else the current spool
    /// (moved to `.replaying`). Empty when there is nothing to do.
    pub fn take_for_replay(&self) -> std::io::Result<Vec<AuditEvent>> {
        let replaying = self.replaying_path();
        if !replaying.exists() {
            let mut slot = self.file.lock().expect("poisoned");
            match std::fs::rename(&self.path, &replaying) {
                Ok(()) => *slot = None,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let file = std::fs::File::open(&replaying)?;
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<AuditEvent>(&line) {
                Ok(event) => events.push(event),
                Err(error) => {
                    tracing::error!(%error, spool = %replaying.display(), "undecodable spooled audit record kept aside");
                    rejected.push(line);
                }
            }
        }
        if !rejected.is_empty() {
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(with_suffix(&self.path, ".rejected"))?;
            for line in rejected {
                writeln!(out, "{line}")?;
            }
            out.sync_data()?;
        }
        Ok(events)
    }

    /// After a replay: `done` records went into the store; keep the rest for the next attempt.
    pub fn finish_replay(&self, events: &[AuditEvent], done: usize) -> std::io::Result<()> {
        let replaying = self.replaying_path();
        if done >= events.len() {
            return match std::fs::remove_file(&replaying) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = with_suffix(&self.path, ".replaying.tmp");
        let mut out = std::fs::File::create(&tmp)?;
        for event in &events[done..] {
            let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
            line.push(b'\n');
            out.write_all(&line)?;
        }
        out.sync_data()?;
        std::fs::rename(tmp, replaying)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_audit::RecordKind;

    #[test]
    fn spooled_records_replay_in_order_and_partial_replays_resume() {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-spool-test-{}-{}",
            std::process::id(),
            portcullis_audit::store::now_us()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let spool = Spool::new(dir.join("audit.spool"));
        assert!(spool.take_for_replay().unwrap().is_empty());
        for i in 0..3 {
            let mut e = AuditEvent::new(RecordKind::Call, i);
            e.tool = Some(format!("s__t{i}"));
            spool.append(&e).unwrap();
        }
        assert_eq!(spool.backlog(), 3);
        let events = spool.take_for_replay().unwrap();
        assert_eq!(
            events.iter().map(|e| e.time_us).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // New failures during the replay go to a fresh spool.
        spool
            .append(&AuditEvent::new(RecordKind::Denial, 9))
            .unwrap();
        spool.finish_replay(&events, 1).unwrap();
        assert_eq!(spool.backlog(), 3, "two left to replay, one new");
        let again = spool.take_for_replay().unwrap();
        assert_eq!(
            again.iter().map(|e| e.time_us).collect::<Vec<_>>(),
            vec![1, 2]
        );
        spool.finish_replay(&again, again.len()).unwrap();
        let last = spool.take_for_replay().unwrap();
        assert_eq!(last.iter().map(|e| e.time_us).collect::<Vec<_>>(), vec![9]);
        spool.finish_replay(&last, 1).unwrap();
        assert_eq!(spool.backlog(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
