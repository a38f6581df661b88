//! The append log of a chain kept in a SQLite file: where the direct writer makes a record
//! durable before SQLite has it.
//!
//! An append is one `write` of one line to this file (the OS page cache: it survives `kill -9`,
//! as a SQLite commit with `synchronous = NORMAL` does, not a power cut). The writer's thread
//! then copies what was logged into SQLite in batches and marks it ingested in the header; when
//! everything logged is in SQLite the file is cut back to its header.
//!
//! Layout: a 16-byte header (`MAGIC`, then the little-endian offset up to which the entries are
//! in SQLite), then one JSON line per [`Entry`]. A last line without its newline is a write the
//! process did not finish (never acknowledged) and is dropped.
//!
//! One process writes a chain: the writer holds an exclusive lock on the file for as long as it
//! runs. A reader that opens the store ([`catch_up`]) takes the lock when nobody holds it and
//! replays what a crashed writer left (so `audit verify` right after a `kill -9` sees every
//! acknowledged record), or, when a live writer holds it, waits until the writer has ingested
//! what was logged when the reader came (read-your-writes for a caller whose append returned).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::record::AuditRecord;
use crate::store::StoreError;

/// First bytes of every append log.
const MAGIC: &[u8; 8] = b"PCAUDLG1";

/// Length of the header: the magic and the ingested offset.
pub(crate) const HEADER_LEN: u64 = 16;

/// How long a reader waits for a live writer to ingest what was logged when it came.
const READER_WAIT: Duration = Duration::from_secs(1);

/// How often a waiting reader looks at the header.
const READER_POLL: Duration = Duration::from_millis(1);

/// What the log holds, in chain order.
#[expect(
    clippy::large_enum_variant,
    reason = "records are nearly every entry: boxing them would cost an allocation per append"
)]
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) enum Entry {
    /// A record.
    #[serde(rename = "r")]
    Record(AuditRecord),
    /// A signed checkpoint over the records before it.
    #[serde(rename = "c")]
    Checkpoint(Checkpoint),
}

/// An entry to write, borrowed (the same line as [`Entry`]).
#[derive(Serialize)]
enum EntryRef<'a> {
    #[serde(rename = "r")]
    Record(&'a AuditRecord),
    #[serde(rename = "c")]
    Checkpoint(&'a Checkpoint),
}

fn encode(entry: &EntryRef<'_>, out: &mut Vec<u8>) {
    // Serializing these types into a Vec cannot fail: every field is a string, a number, or a
    // list of such, with string keys.
    let _ = serde_json::to_writer(&mut *out, entry);
    out.push(b'\n');
}

/// Appends the log line of `record` to `out`.
pub(crate) fn encode_record(record: &AuditRecord, out: &mut Vec<u8>) {
    encode(&EntryRef::Record(record), out);
}

/// Appends the log line of `checkpoint` to `out`.
pub(crate) fn encode_checkpoint(checkpoint: &Checkpoint, out: &mut Vec<u8>) {
    encode(&EntryRef::Checkpoint(checkpoint), out);
}

/// The log of `chain_id` beside the database file `db`: `<db>.chain-<hex of chain_id>.log`.
pub(crate) fn log_path(db: &Path, chain_id: &str) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".chain-{}.log", hex::encode(chain_id)));
    db.with_file_name(name)
}

/// Every append log beside `db` (one per chain written there).
fn logs_of(db: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(name) = db.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.chain-");
    let dir = match db.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let file_name = entry?.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if file_name.starts_with(&prefix) && file_name.ends_with(".log") {
            logs.push(dir.join(file_name));
        }
    }
    logs.sort();
    Ok(logs)
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Log {
        path: path.to_path_buf(),
        source,
    }
}

/// An open, locked append log.
#[derive(Debug)]
pub(crate) struct AppendLog {
    file: File,
    path: PathBuf,
    /// Bytes in the file (header included).
    len: u64,
    /// Entries before this offset are in SQLite.
    ingested: u64,
}

impl AppendLog {
    /// Opens (creating) the log at `path` and locks it for this writer: an error if another
    /// process (or another writer of this process) holds it.
    pub(crate) fn open_for_writer(path: &Path) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error(path, e))?;
        match file.try_lock() {
            Ok(()) => Self::locked(file, path),
            Err(TryLockError::WouldBlock) => Err(StoreError::ChainBusy(path.to_path_buf())),
            Err(TryLockError::Error(e)) => Err(io_error(path, e)),
        }
    }

    /// Reads the header of a log whose lock this process holds (writing one into a new file).
    fn locked(file: File, path: &Path) -> Result<Self, StoreError> {
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut log = Self {
            file,
            path: path.to_path_buf(),
            len,
            ingested: HEADER_LEN,
        };
        if len < HEADER_LEN {
            // New, or created by a writer that died before its header was written.
            log.reset()?;
            return Ok(log);
        }
        let header = read_header(&log.file).map_err(|e| io_error(path, e))?;
        log.ingested = header.ok_or_else(|| {
            io_error(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, "not an audit append log"),
            )
        })?;
        log.ingested = log.ingested.clamp(HEADER_LEN, len);
        Ok(log)
    }

    /// Bytes in the file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The entries not yet in SQLite. A torn last line (a write the process did not finish)
    /// is cut off; any other undecodable line is an error naming its offset.
    pub(crate) fn pending(&mut self) -> Result<Vec<Entry>, StoreError> {
        let mut bytes = Vec::new();
        let mut reader = &self.file;
        std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(self.ingested))
            .and_then(|_| reader.read_to_end(&mut bytes))
            .map_err(|e| io_error(&self.path, e))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                log = %self.path.display(),
                bytes = bytes.len() - complete,
                "audit append log ends in an unfinished write (never acknowledged): dropped"
            );
            let end = self.ingested + complete as u64;
            self.file
                .set_len(end)
                .map_err(|e| io_error(&self.path, e))?;
            self.len = end;
        }
        let mut entries = Vec::new();
        let mut offset = self.ingested;
        for line in bytes[..complete].split_inclusive(|&b| b == b'\n') {
            let entry = serde_json::from_slice(line).map_err(|e| {
                io_error(
                    &self.path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("undecodable entry at byte {offset}: {e}"),
                    ),
                )
            })?;
            entries.push(entry);
            offset += line.len() as u64;
        }
        Ok(entries)
    }

    /// Writes `bytes` (whole lines) at the end; on failure the file is cut back to where it was.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Err(error) = self.file.write_all_at(bytes, self.len) {
            let _ = self.file.set_len(self.len);
            return Err(io_error(&self.path, error));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Everything before `offset` is in SQLite.
    pub(crate) fn mark_ingested(&mut self, offset: u64) -> Result<(), StoreError> {
        self.file
            .write_all_at(&offset.to_le_bytes(), 8)
            .map_err(|e| io_error(&self.path, e))?;
        self.ingested = offset;
        Ok(())
    }

    /// Everything logged is in SQLite: cut the file back to its header.
    pub(crate) fn reset(&mut self) -> Result<(), StoreError> {
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&HEADER_LEN.to_le_bytes());
        self.file
            .set_len(HEADER_LEN)
            .and_then(|()| self.file.write_all_at(&header, 0))
            .map_err(|e| io_error(&self.path, e))?;
        self.len = HEADER_LEN;
        self.ingested = HEADER_LEN;
        Ok(())
    }
}

/// The ingested offset in a log's header; None if the file is not an append log.
fn read_header(file: &File) -> std::io::Result<Option<u64>> {
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)?;
    if &header[..8] != MAGIC {
        return Ok(None);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&header[8..]);
    Ok(Some(u64::from_le_bytes(offset)))
}

/// Writes `entries` into SQLite in one transaction, skipping what is already there (a writer
/// may have died after its commit and before it marked the entries ingested): records at or
/// below the stored head of their chain, checkpoints already stored.
pub(crate) fn replay(conn: &mut Connection, entries: &[Entry]) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut written = 0;
    let mut head: Option<(String, u64)> = None;
    for entry in entries {
        match entry {
            Entry::Record(record) => {
                let stored = match &head {
                    Some((chain, seq)) if *chain == record.chain_id => *seq,
                    _ => {
                        let seq = crate::sqlite_writer::read_head(&tx, &record.chain_id)?.seq;
                        head = Some((record.chain_id.clone(), seq));
                        seq
                    }
                };
                if record.seq > stored {
                    crate::sqlite_writer::insert_entry(&tx, entry)?;
                    head = Some((record.chain_id.clone(), record.seq));
                    written += 1;
                }
            }
            Entry::Checkpoint(cp) => {
                let seq = i64::try_from(cp.seq).map_err(|_| StoreError::Range("checkpoint seq"))?;
                let stored: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM audit_checkpoints WHERE chain_id = ? AND seq = ? \
                         AND key_id = ?",
                        params![cp.chain_id, seq, cp.key_id],
                        |row| row.get(0),
                    )
                    .optional()?;
                if stored.is_none() {
                    crate::sqlite_writer::insert_entry(&tx, entry)?;
                    written += 1;
                }
            }
        }
    }
    tx.commit()?;
    Ok(written)
}

/// Before reading the SQLite file `db`: replays every append log a dead writer left beside it
/// into the database, and waits (up to [`READER_WAIT`]) for live writers to ingest what they
/// had logged when this call began. Blocking: call it off the async workers.
pub(crate) fn catch_up(db: &Path) -> Result<(), StoreError> {
    let logs = logs_of(db).map_err(|e| io_error(db, e))?;
    for path in logs {
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path, e)),
        };
        match file.try_lock() {
            Ok(()) => {
                let mut log = AppendLog::locked(file, &path)?;
                let entries = log.pending()?;
                if !entries.is_empty() {
                    let mut conn = crate::sqlite_writer::open_connection(db)?;
                    let written = replay(&mut conn, &entries)?;
                    tracing::info!(
                        log = %path.display(),
                        entries = entries.len(),
                        written,
                        "replayed the audit append log of a writer that stopped without ingesting it"
                    );
                }
                log.reset()?;
            }
            Err(TryLockError::WouldBlock) => wait_for_writer(&file, &path)?,
            Err(TryLockError::Error(e)) => return Err(io_error(&path, e)),
        }
    }
    Ok(())
}

/// Waits until the live writer of `file` has ingested what the file held now (or cut it back).
fn wait_for_writer(file: &File, path: &Path) -> Result<(), StoreError> {
    let target = file.metadata().map_err(|e| io_error(path, e))?.len();
    let deadline = Instant::now() + READER_WAIT;
    loop {
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if len < HEADER_LEN || len < target {
            return Ok(());
        }
        match read_header(file) {
            Ok(Some(ingested)) if ingested >= target => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(io_error(path, e)),
        }
        if Instant::now() >= deadline {
            tracing::debug!(log = %path.display(), "audit writer still ingesting; reading what SQLite has");
            return Ok(());
        }
        std::thread::sleep(READER_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AuditEvent, RecordKind};

    #[test]
    fn entries_survive_their_encoding_with_the_same_hash() {
        let mut head = crate::ChainHead::new("c");
        let mut event = AuditEvent::new(RecordKind::Call, 1_700_000_000_000_000);
        event.tool = Some("srv__tool \"quoted\"\nnewline".into());
        event.latency_us = Some(42);
        let record = head.append(event);
        let mut line = Vec::new();
        encode_record(&record, &mut line);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let back: Entry = serde_json::from_slice(&line).unwrap();
        let Entry::Record(back) = back else {
            panic!("a record")
        };
        assert_eq!(back, record);
        assert_eq!(back.canonical_bytes(), record.canonical_bytes());
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db.chain-63.log");
        let mut log = AppendLog::open_for_writer(&path).unwrap();
        let mut head = crate::ChainHead::new("c");
        let mut bytes = Vec::new();
        encode_record(
            &head.append(AuditEvent::new(RecordKind::Call, 1)),
            &mut bytes,
        );
        log.append(&bytes).unwrap();
        log.append(b"{\"r\":{\"chain_id\":\"c\"").unwrap();
        let entries = log.pending().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(log.len(), HEADER_LEN + bytes.len() as u64);
    }

    #[test]
    fn a_second_writer_of_the_same_chain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(&dir.path().join("a.db"), "chain");
        let _first = AppendLog::open_for_writer(&path).unwrap();
        let second = AppendLog::open_for_writer(&path).unwrap_err();
        assert!(matches!(second, StoreError::ChainBusy(_)), "{second}");
    }

    /// What a writer killed before it ingested (and, for the first entries, after it ingested
    /// them but before it marked them) is replayed by the next reader: nothing twice, nothing
    /// lost, the chain verifies and is signed through its last record.
    #[tokio::test]
    async fn a_dead_writers_log_is_replayed_once_by_the_next_reader() {
        use crate::checkpoint::{KeyRing, SigningKeyFile};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("crash.db");
        let store = crate::store::AuditStore::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let signer = SigningKeyFile::from_seed(&[7; 32]);
        let mut head = crate::ChainHead::new("c");
        let records: Vec<AuditRecord> = (1..=5)
            .map(|i| head.append(AuditEvent::new(RecordKind::Call, i)))
            .collect();
        let cp = signer.sign("c", head.seq, head.hash, 9);
        // The first two already reached SQLite (the writer died before marking them).
        store.insert(&records[..2], None).await.unwrap();
        {
            let mut log = AppendLog::open_for_writer(&log_path(&db, "c")).unwrap();
            let mut bytes = Vec::new();
            for r in &records {
                encode_record(r, &mut bytes);
            }
            encode_checkpoint(&cp, &mut bytes);
            log.append(&bytes).unwrap();
        }
        let stored = store.read_page("c", 0, 100).await.unwrap();
        assert_eq!(stored.len(), 5);
        let mut ring = KeyRing::new();
        ring.add(signer.verifying_key());
        let report = store.verify_chain("c", &ring).await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.records, report.signed_through), (5, 5));
        let log = std::fs::metadata(log_path(&db, "c")).unwrap();
        assert_eq!(log.len(), HEADER_LEN, "the replayed log is cut back");
        assert_eq!(store.read_page("c", 0, 100).await.unwrap().len(), 5);
    }
}
