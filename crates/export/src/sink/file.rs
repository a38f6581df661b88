//! JSON lines appended to a local file, `fsync`ed per batch, with optional size-based rotation.
//!
//! A batch is one `write` of complete lines followed by `fdatasync`; a failed write is cut back
//! to the previous length so a retry never leaves half a line. If the file is moved away
//! (logrotate's default `create` mode) the sink notices by inode and opens a new one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use portcullis_config::sinks::Rotate;

use super::DeliveryError;
use crate::format::{ExportItem, json};

/// The open file and what we know about it.
struct Open {
    file: File,
    /// Bytes in the file (our appends included).
    len: u64,
    /// (device, inode) of the file we hold, to notice external rotation.
    id: (u64, u64),
}

pub(crate) struct FileSink {
    path: PathBuf,
    rotate: Option<Rotate>,
    /// None until the first batch, and after an error (reopened on the next try).
    open: Option<Open>,
}

impl FileSink {
    pub(crate) fn new(path: PathBuf, rotate: Option<Rotate>) -> Self {
        FileSink {
            path,
            rotate,
            open: None,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.open = None;
    }

    pub(crate) async fn deliver(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        let mut lines = Vec::with_capacity(items.len() * 1024);
        for item in items {
            serde_json::to_writer(&mut lines, &json(item))
                .map_err(|e| DeliveryError::new(format!("encoding: {e}")))?;
            lines.push(b'\n');
        }
        let open = self.open.take();
        let path = self.path.clone();
        let rotate = self.rotate;
        let (open, result) =
            tokio::task::spawn_blocking(move || write_batch(open, &path, rotate, &lines))
                .await
                .map_err(|e| DeliveryError::new(format!("writer task: {e}")))?;
        self.open = open;
        result.map_err(|e| DeliveryError::new(format!("{}: {e}", self.path.display())))
    }
}

fn open(path: &Path) -> std::io::Result<Open> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let meta = file.metadata()?;
    Ok(Open {
        file,
        len: meta.len(),
        id: (meta.dev(), meta.ino()),
    })
}

/// Appends `lines` and syncs; returns the handle to keep (None after an error).
fn write_batch(
    current: Option<Open>,
    path: &Path,
    rotate: Option<Rotate>,
    lines: &[u8],
) -> (Option<Open>, std::io::Result<()>) {
    let mut handle = match current {
        // Still the file at `path`? (Moved away: start a new one.)
        Some(o) if std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == o.id) => o,
        _ => match open(path) {
            Ok(o) => o,
            Err(e) => return (None, Err(e)),
        },
    };
    if let Some(r) = rotate
        && handle.len > 0
        && handle.len + lines.len() as u64 > r.max_bytes
    {
        drop(handle);
        if let Err(e) = rotate_files(path, r.keep) {
            return (None, Err(e));
        }
        handle = match open(path) {
            Ok(o) => o,
            Err(e) => return (None, Err(e)),
        };
    }
    let before = handle.len;
    let written = handle
        .file
        .write_all(lines)
        .and_then(|()| handle.file.sync_data());
    match written {
        Ok(()) => {
            handle.len += lines.len() as u64;
            (Some(handle), Ok(()))
        }
        Err(e) => {
            // Best effort: no torn line before the retry appends the batch again.
            let _ = handle.file.set_len(before);
            (None, Err(e))
        }
    }
}

/// `path.{keep-1}` → `path.{keep}`, …, `path` → `path.1`; the oldest falls off.
fn rotate_files(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    match std::fs::remove_file(numbered(keep)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for n in (1..keep).rev() {
        match std::fs::rename(numbered(n), numbered(n + 1)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::rename(path, numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;

    fn items(n: u64) -> Vec<ExportItem> {
        (1..=n)
            .map(|seq| {
                let mut r = sample();
                r.seq = seq;
                ExportItem::Record(Box::new(r))
            })
            .collect()
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn appends_complete_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::new(path.clone(), None);
        sink.deliver(&items(3)).await.unwrap();
        sink.deliver(&items(2)).await.unwrap();
        let got = lines(&path);
        assert_eq!(got.len(), 5);
        assert_eq!(got[2]["seq"], 3);
        assert_eq!(got[3]["seq"], 1);
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line_len = {
            let mut v = serde_json::to_vec(&json(&items(1)[0])).unwrap();
            v.push(b'\n');
            v.len() as u64
        };
        let mut sink = FileSink::new(
            path.clone(),
            Some(Rotate {
                max_bytes: line_len * 2,
                keep: 2,
            }),
        );
        for _ in 0..4 {
            sink.deliver(&items(2)).await.unwrap();
        }
        // Every file holds one whole batch; two rotated ones are kept.
        assert_eq!(lines(&path).len(), 2);
        assert_eq!(lines(&dir.path().join("audit.jsonl.1")).len(), 2);
        assert_eq!(lines(&dir.path().join("audit.jsonl.2")).len(), 2);
        assert!(!dir.path().join("audit.jsonl.3").exists());
    }

    #[tokio::test]
    async fn a_file_moved_away_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut sink = FileSink::new(path.clone(), None);
        sink.deliver(&items(1)).await.unwrap();
        std::fs::rename(&path, dir.path().join("moved.jsonl")).unwrap();
        sink.deliver(&items(2)).await.unwrap();
        assert_eq!(lines(&path).len(), 2);
        assert_eq!(lines(&dir.path().join("moved.jsonl")).len(), 1);
    }

    #[tokio::test]
    async fn an_unwritable_path_is_an_error_not_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new(dir.path().join("missing-dir").join("a.jsonl"), None);
        let error = sink.deliver(&items(1)).await.unwrap_err();
        assert!(error.message.contains("missing-dir"), "{error:?}");
    }
}
