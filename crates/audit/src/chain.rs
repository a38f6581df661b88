//! The SHA-256 hash chain.
//!
//! Record `seq` stores `prev_hash` (the hash of record `seq - 1`, zeros for the first) and
//! `hash = SHA-256(prev_hash || canonical(record without hash))`, so editing, removing, inserting
//! or moving any record breaks the link at that position. [`ChainHead`] is the append side: it
//! holds the last `seq` and hash of one chain and turns events into linked records.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::record::{AuditEvent, AuditRecord};

/// A SHA-256 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// All zeros: the `prev_hash` of the first record.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits; `None` otherwise.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

/// The hash a record should carry: `SHA-256(prev_hash || canonical(record without hash))`.
pub fn compute_hash(record: &AuditRecord) -> Hash {
    let mut h = Sha256::new();
    h.update(record.prev_hash.0);
    h.update(record.canonical_bytes());
    Hash(h.finalize().into())
}

/// The head of one chain: where the next record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The chain (one per replica).
    pub chain_id: String,
    /// Seq of the last record (0 for an empty chain).
    pub seq: u64,
    /// Hash of the last record ([`Hash::ZERO`] for an empty chain).
    pub hash: Hash,
}

impl ChainHead {
    /// An empty chain.
    pub fn new(chain_id: impl Into<String>) -> Self {
        Self {
            chain_id: chain_id.into(),
            seq: 0,
            hash: Hash::ZERO,
        }
    }

    /// Links `event` after the head and advances the head.
    pub fn append(&mut self, event: AuditEvent) -> AuditRecord {
        let mut record = AuditRecord {
            chain_id: self.chain_id.clone(),
            seq: self.seq + 1,
            prev_hash: self.hash,
            hash: Hash::ZERO,
            event,
        };
        record.hash = compute_hash(&record);
        self.seq = record.seq;
        self.hash = record.hash;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;

    #[test]
    fn records_link_to_their_predecessor() {
        let mut head = ChainHead::new("c");
        let a = head.append(AuditEvent::new(RecordKind::Call, 1));
        let b = head.append(AuditEvent::new(RecordKind::Denial, 2));
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, Hash::ZERO);
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(compute_hash(&b), b.hash);
        assert_eq!(head.hash, b.hash);
    }
}
