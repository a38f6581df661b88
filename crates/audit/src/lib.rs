//! `portcullis-audit`: the tamper-evident audit trail.
//!
//! The core is pure (no IO, no async): [`record`] defines the record and its canonical encoding,
//! [`chain`] links records into a SHA-256 hash chain, [`checkpoint`] signs chain heads with Ed25519,
//! and [`verify`] walks records and checkpoints and names every problem with its position.
//! The IO half, [`store`] (feature `store`, on by default), persists chains in SQLite or
//! PostgreSQL; its [`store::AuditWriter`] appends with group commit (`writer.rs`), or on SQLite
//! files through an append log copied into SQLite in batches (`sqlite_writer.rs`,
//! `append_log.rs`).
//!
//! Seams left for the data plane: a gateway builds an [`record::AuditEvent`] per governed message
//! and awaits [`store::AuditWriter::append`], which resolves once the record is durable.

#[cfg(feature = "store")]
mod append_log;
pub mod chain;
pub mod checkpoint;
pub mod record;
#[cfg(feature = "store")]
mod sqlite_writer;
#[cfg(feature = "store")]
pub mod store;
pub mod verify;
#[cfg(feature = "store")]
mod writer;

pub use chain::{ChainHead, Hash};
pub use checkpoint::{Checkpoint, KeyError, KeyRing, SigningKeyFile};
pub use record::{AuditEvent, AuditRecord, Finding, Outcome, Principal, RecordKind};
pub use verify::{Problem, Report};
