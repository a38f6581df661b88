//! Verification: walk one chain's records (in stored seq order) and its checkpoints, and name
//! every problem with its position.
//!
//! Pure and incremental: feed records to [`Verifier::push`] (the store pages through the table)
//! or call [`verify_chain`] over any iterator. What each finding means:
//!
//! | problem | evidence |
//! | --- | --- |
//! | [`Problem::Edited`] | the record's content no longer hashes to its stored `hash` |
//! | [`Problem::Missing`] | a gap in `seq` (deleted records), or a chain not starting at 1 |
//! | [`Problem::Inserted`] | two records claim the same predecessor; this one is not the original |
//! | [`Problem::Moved`] | the record is intact but hashes correctly only at another seq (reordered or renumbered) |
//! | [`Problem::DuplicateSeq`] / [`Problem::OutOfOrder`] | the seq column itself repeats or goes back |
//! | [`Problem::BrokenLink`] | intact record whose `prev_hash` is not its predecessor's hash |
//! | [`Problem::Truncated`] | a signed checkpoint covers seq M but the chain ends at K < M |
//! | [`Problem::CheckpointMismatch`] | the record at a signed checkpoint's seq is not the one signed (chain rewritten) |
//! | [`Problem::BadSignature`] / [`Problem::UnknownKey`] | a checkpoint that does not verify (forged, or signed by an untrusted key) |
//! | [`Problem::Undecodable`] | a stored row that is not a record (corrupt or tampered column) |
//! | [`Problem::BadTombstone`] | a retention tombstone that does not verify (forged, or an untrusted key): the records it claims to have deleted are reported missing |
//!
//! Retention: a trusted tombstone at seq S (records `1..=S` deleted, record S hashed to H) makes
//! the chain start at S + 1 with `prev_hash` H; anything else about the remaining records is
//! checked as usual, so deleting, editing or relinking the oldest remaining record is still
//! caught, and a tombstone cannot be moved forward without the signing key.
//!
//! Checkpoints with a bad signature or unknown key are reported and then ignored. Without any
//! trusted key ([`KeyRing::is_empty`]) signatures are not checked (the report says so) and
//! checkpoints are used as found. Memory: one hash and seq per record (about 80 bytes) to classify
//! moved and inserted records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use crate::chain::{Hash, compute_hash};
use crate::checkpoint::{Checkpoint, KeyRing, Purpose, SignatureCheck};
use crate::record::AuditRecord;

/// A stored row that could not be read as a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Undecodable {
    /// The row's seq column (as stored).
    pub seq: i64,
    /// What was wrong.
    pub reason: String,
}

/// One problem found, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Content edited: hash mismatch at `seq`.
    Edited {
        /// Position.
        seq: u64,
    },
    /// Records `from..=to` are absent (deleted), after record `after` (0: chain start).
    Missing {
        /// Last record present before the gap.
        after: u64,
        /// First missing seq.
        from: u64,
        /// Last missing seq.
        to: u64,
    },
    /// The record at `seq` was inserted: it claims the same predecessor as the original record,
    /// which now sits at `displaced`.
    Inserted {
        /// Position of the inserted record.
        seq: u64,
        /// Where the original record now is.
        displaced: u64,
    },
    /// An intact record found at `found_at` that belongs at `belongs_at`.
    Moved {
        /// Where it is.
        found_at: u64,
        /// Where it was written.
        belongs_at: u64,
    },
    /// Two rows with the same seq.
    DuplicateSeq {
        /// Position.
        seq: u64,
    },
    /// A seq lower than its predecessor's.
    OutOfOrder {
        /// Position.
        seq: u64,
        /// The previous row's seq.
        after: u64,
    },
    /// Intact record whose `prev_hash` is not its predecessor's hash.
    BrokenLink {
        /// Position.
        seq: u64,
    },
    /// A signed checkpoint covers `checkpoint_seq` but the chain ends at `chain_end`.
    Truncated {
        /// Seq the latest checkpoint covers.
        checkpoint_seq: u64,
        /// Last seq present.
        chain_end: u64,
    },
    /// The record at a signed checkpoint's seq has another hash, or is absent.
    CheckpointMismatch {
        /// Position.
        seq: u64,
        /// The record is missing altogether.
        absent: bool,
    },
    /// A checkpoint whose signature does not verify.
    BadSignature {
        /// The checkpoint's seq.
        seq: u64,
        /// The key id it claims.
        key_id: String,
    },
    /// A checkpoint signed by a key not trusted here.
    UnknownKey {
        /// The checkpoint's seq.
        seq: u64,
        /// The key id it claims.
        key_id: String,
    },
    /// A row that is not a record.
    Undecodable {
        /// The row's seq column.
        seq: i64,
        /// What was wrong.
        reason: String,
    },
    /// A retention tombstone whose signature does not verify with a trusted key.
    BadTombstone {
        /// The seq it claims records were deleted through.
        seq: u64,
        /// The key id it claims.
        key_id: String,
    },
}

impl Problem {
    /// The position the problem is reported at (for sorting and display).
    pub fn position(&self) -> i64 {
        let p = match self {
            Self::Edited { seq }
            | Self::DuplicateSeq { seq }
            | Self::OutOfOrder { seq, .. }
            | Self::BrokenLink { seq }
            | Self::Inserted { seq, .. }
            | Self::CheckpointMismatch { seq, .. }
            | Self::BadSignature { seq, .. }
            | Self::UnknownKey { seq, .. }
            | Self::BadTombstone { seq, .. } => *seq,
            Self::Missing { from, .. } => *from,
            Self::Moved { found_at, .. } => *found_at,
            Self::Truncated { chain_end, .. } => chain_end + 1,
            Self::Undecodable { seq, .. } => return *seq,
        };
        i64::try_from(p).unwrap_or(i64::MAX)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Edited { seq } => {
                write!(f, "record {seq} was edited (hash mismatch at seq {seq})")
            }
            Self::Missing { after, from, to } if from == to => {
                write!(
                    f,
                    "record {from} is missing (seq gap after {after}): deleted"
                )
            }
            Self::Missing { after, from, to } => {
                write!(
                    f,
                    "records {from}..={to} are missing (seq gap after {after}): deleted"
                )
            }
            Self::Inserted { seq, displaced } => write!(
                f,
                "record {seq} was inserted (the original record {seq} now sits at seq {displaced})"
            ),
            Self::Moved {
                found_at,
                belongs_at,
            } => write!(
                f,
                "record at seq {found_at} is record {belongs_at} (reordered or renumbered)"
            ),
            Self::DuplicateSeq { seq } => write!(f, "seq {seq} appears twice (inserted record)"),
            Self::OutOfOrder { seq, after } => {
                write!(f, "seq {seq} follows seq {after} (reordered)")
            }
            Self::BrokenLink { seq } => write!(
                f,
                "record {seq} does not link to record {} (prev_hash mismatch: a record was inserted or replaced before it)",
                seq.saturating_sub(1)
            ),
            Self::Truncated {
                checkpoint_seq,
                chain_end,
            } => write!(
                f,
                "chain truncated: signed checkpoint covers seq {checkpoint_seq} but the chain ends at {chain_end}"
            ),
            Self::CheckpointMismatch { seq, absent: true } => {
                write!(
                    f,
                    "signed checkpoint at seq {seq} refers to a record that is absent"
                )
            }
            Self::CheckpointMismatch { seq, absent: false } => write!(
                f,
                "record {seq} is not the record the checkpoint signed (chain rewritten up to seq {seq})"
            ),
            Self::BadSignature { seq, key_id } => {
                write!(
                    f,
                    "checkpoint at seq {seq} has a bad signature (key {key_id}): forged"
                )
            }
            Self::UnknownKey { seq, key_id } => {
                write!(
                    f,
                    "checkpoint at seq {seq} is signed by unknown key id {key_id}"
                )
            }
            Self::Undecodable { seq, reason } => {
                write!(f, "row with seq {seq} is not a valid record: {reason}")
            }
            Self::BadTombstone { seq, key_id } => write!(
                f,
                "retention tombstone through seq {seq} does not verify (key {key_id}): forged or untrusted, not accepted"
            ),
        }
    }
}

/// The outcome of verifying one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The chain.
    pub chain_id: String,
    /// Rows read.
    pub records: u64,
    /// Last seq read (0 when empty).
    pub last_seq: u64,
    /// Checkpoints found.
    pub checkpoints: u64,
    /// Seq covered by the latest trusted checkpoint or tombstone (0: none).
    pub signed_through: u64,
    /// Records `1..=deleted_through` were deleted by retention behind a trusted tombstone
    /// (0: none).
    pub deleted_through: u64,
    /// Whether signatures were checked (false without trusted keys).
    pub signatures_checked: bool,
    /// Problems, in chain order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Mismatched records kept for classification (moved / inserted / edited); beyond this many,
/// further ones are reported as edited without classification, so memory stays bounded.
const MAX_CLASSIFIED: usize = 10_000;

/// Incremental verifier of one chain.
#[derive(Debug)]
pub struct Verifier {
    chain_id: String,
    /// Trusted checkpoints by seq.
    trusted: BTreeMap<u64, Vec<Checkpoint>>,
    unmatched_checkpoints: BTreeSet<u64>,
    checkpoints: u64,
    /// Seq of the trusted tombstone (0: none).
    deleted_through: u64,
    signatures_checked: bool,
    problems: Vec<Problem>,
    records: u64,
    /// (seq, stored hash, content intact) of the previous row.
    prev: Option<(u64, Hash, bool)>,
    /// Stored hash → seq, for classifying moved records.
    at: HashMap<Hash, u64>,
    /// prev_hash → seqs of records claiming it as predecessor.
    claims: HashMap<Hash, Vec<u64>>,
    /// Records whose content does not hash to their stored hash.
    mismatched: Vec<AuditRecord>,
}

impl Verifier {
    /// Starts verifying `chain_id` against its `checkpoints`, trusting the keys in `ring`.
    pub fn new(chain_id: impl Into<String>, checkpoints: &[Checkpoint], ring: &KeyRing) -> Self {
        Self::with_tombstones(chain_id, checkpoints, &[], ring)
    }

    /// Like [`Verifier::new`], for a chain whose oldest records retention may have deleted
    /// behind the signed `tombstones` (the latest trusted one counts).
    pub fn with_tombstones(
        chain_id: impl Into<String>,
        checkpoints: &[Checkpoint],
        tombstones: &[Checkpoint],
        ring: &KeyRing,
    ) -> Self {
        let chain_id = chain_id.into();
        let signatures_checked = !ring.is_empty();
        let mut problems = Vec::new();
        let mut trusted: BTreeMap<u64, Vec<Checkpoint>> = BTreeMap::new();
        for cp in checkpoints.iter().filter(|cp| cp.chain_id == chain_id) {
            let check = if signatures_checked {
                ring.check(cp)
            } else {
                SignatureCheck::Valid
            };
            match check {
                SignatureCheck::Valid => trusted.entry(cp.seq).or_default().push(cp.clone()),
                SignatureCheck::UnknownKey => problems.push(Problem::UnknownKey {
                    seq: cp.seq,
                    key_id: cp.key_id.clone(),
                }),
                SignatureCheck::Invalid => problems.push(Problem::BadSignature {
                    seq: cp.seq,
                    key_id: cp.key_id.clone(),
                }),
            }
        }
        let mut tombstone: Option<&Checkpoint> = None;
        for t in tombstones.iter().filter(|t| t.chain_id == chain_id) {
            let check = if signatures_checked {
                ring.check_for(Purpose::Tombstone, t)
            } else {
                SignatureCheck::Valid
            };
            if check == SignatureCheck::Valid {
                if tombstone.is_none_or(|best| t.seq > best.seq) {
                    tombstone = Some(t);
                }
            } else {
                problems.push(Problem::BadTombstone {
                    seq: t.seq,
                    key_id: t.key_id.clone(),
                });
            }
        }
        // Checkpoints inside the deleted prefix point at records that are gone on purpose.
        let deleted_through = tombstone.map_or(0, |t| t.seq);
        trusted.retain(|seq, _| *seq > deleted_through);
        Self {
            chain_id,
            unmatched_checkpoints: trusted.keys().copied().collect(),
            trusted,
            checkpoints: checkpoints.len() as u64,
            deleted_through,
            signatures_checked,
            problems,
            records: 0,
            // The deleted prefix ends in the tombstone's record: the chain continues from it.
            prev: tombstone.map(|t| (t.seq, t.head_hash, true)),
            at: HashMap::new(),
            claims: HashMap::new(),
            mismatched: Vec::new(),
        }
    }

    /// Feeds the next stored row (in the store's seq order).
    pub fn push(&mut self, row: Result<AuditRecord, Undecodable>) {
        self.records += 1;
        let record = match row {
            Ok(r) => r,
            Err(u) => {
                self.problems.push(Problem::Undecodable {
                    seq: u.seq,
                    reason: u.reason,
                });
                // The next row's link cannot be checked against an unreadable one.
                if let Ok(seq) = u64::try_from(u.seq) {
                    self.prev = Some((seq, Hash::ZERO, false));
                }
                return;
            }
        };
        let seq = record.seq;
        let prev_seq = self.prev.map_or(0, |p| p.0);
        let mut seq_problem = false;
        if self.prev.is_some() && seq == prev_seq {
            self.problems.push(Problem::DuplicateSeq { seq });
            seq_problem = true;
        } else if seq < prev_seq || (self.prev.is_none() && seq == 0) {
            self.problems.push(Problem::OutOfOrder {
                seq,
                after: prev_seq,
            });
            seq_problem = true;
        } else if seq > prev_seq + 1 {
            self.problems.push(Problem::Missing {
                after: prev_seq,
                from: prev_seq + 1,
                to: seq - 1,
            });
            seq_problem = true;
        }
        let intact = compute_hash(&record) == record.hash;
        if !intact {
            if self.mismatched.len() < MAX_CLASSIFIED {
                self.mismatched.push(record.clone());
            } else {
                self.problems.push(Problem::Edited { seq });
            }
        } else if !seq_problem {
            let expected = match self.prev {
                Some((_, hash, prev_intact)) => prev_intact.then_some(hash),
                None => Some(Hash::ZERO),
            };
            if expected.is_some_and(|h| h != record.prev_hash) {
                self.problems.push(Problem::BrokenLink { seq });
            }
        }
        if let Some(cps) = self.trusted.get(&seq) {
            self.unmatched_checkpoints.remove(&seq);
            if cps.iter().any(|cp| cp.head_hash != record.hash) {
                self.problems
                    .push(Problem::CheckpointMismatch { seq, absent: false });
            }
        }
        self.at.insert(record.hash, seq);
        self.claims.entry(record.prev_hash).or_default().push(seq);
        // Of two rows with one seq, the first keeps the link (the next record is checked
        // against it); the duplicate is already reported.
        let duplicate = self.prev.is_some() && seq == prev_seq;
        if !duplicate {
            self.prev = Some((seq.max(prev_seq), record.hash, intact));
        }
    }

    /// Finishes: classifies mismatched records and checks truncation.
    pub fn finish(mut self) -> Report {
        let mismatched = std::mem::take(&mut self.mismatched);
        for record in mismatched {
            let problem = self.classify(&record);
            self.problems.push(problem);
        }
        let last_seq = self.prev.map_or(0, |p| p.0);
        let signed_through = self
            .trusted
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.deleted_through);
        if signed_through > last_seq {
            self.problems.push(Problem::Truncated {
                checkpoint_seq: signed_through,
                chain_end: last_seq,
            });
        }
        for seq in &self.unmatched_checkpoints {
            if *seq <= last_seq {
                self.problems.push(Problem::CheckpointMismatch {
                    seq: *seq,
                    absent: true,
                });
            }
        }
        self.problems.sort_by_key(Problem::position);
        Report {
            chain_id: self.chain_id,
            records: self.records,
            last_seq,
            checkpoints: self.checkpoints,
            signed_through,
            deleted_through: self.deleted_through,
            signatures_checked: self.signatures_checked,
            problems: self.problems,
        }
    }

    /// A record whose content does not match its hash: edited, or an intact record at the
    /// wrong seq (moved), which next to a second claimant of its predecessor means an insertion.
    fn classify(&self, record: &AuditRecord) -> Problem {
        let mut candidates = Vec::with_capacity(3);
        if let Some(p) = self.at.get(&record.prev_hash) {
            candidates.push(p + 1);
        }
        if record.prev_hash == Hash::ZERO {
            candidates.push(1);
        }
        candidates.push(record.seq.saturating_sub(1));
        candidates.push(record.seq + 1);
        for belongs_at in candidates {
            if belongs_at == record.seq || belongs_at == 0 {
                continue;
            }
            let mut moved = record.clone();
            moved.seq = belongs_at;
            if compute_hash(&moved) != record.hash {
                continue;
            }
            let rivals: Vec<u64> = self
                .claims
                .get(&record.prev_hash)
                .map(|seqs| seqs.iter().copied().filter(|s| *s != record.seq).collect())
                .unwrap_or_default();
            if let Some(inserted) = rivals.into_iter().find(|s| *s == belongs_at) {
                return Problem::Inserted {
                    seq: inserted,
                    displaced: record.seq,
                };
            }
            return Problem::Moved {
                found_at: record.seq,
                belongs_at,
            };
        }
        Problem::Edited { seq: record.seq }
    }
}

/// Verifies one chain in one call.
pub fn verify_chain<I>(
    chain_id: &str,
    rows: I,
    checkpoints: &[Checkpoint],
    ring: &KeyRing,
) -> Report
where
    I: IntoIterator<Item = Result<AuditRecord, Undecodable>>,
{
    let mut v = Verifier::new(chain_id, checkpoints, ring);
    for row in rows {
        v.push(row);
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHead;
    use crate::checkpoint::SigningKeyFile;
    use crate::record::{AuditEvent, RecordKind};

    fn signer() -> SigningKeyFile {
        SigningKeyFile::from_seed(&[42; 32])
    }

    fn ring() -> KeyRing {
        let mut r = KeyRing::new();
        r.add(signer().verifying_key());
        r
    }

    /// 20 records, checkpoints at 10 and 20.
    fn chain() -> (Vec<AuditRecord>, Vec<Checkpoint>) {
        let mut head = ChainHead::new("c");
        let mut records = Vec::new();
        let mut cps = Vec::new();
        for i in 1..=20 {
            let mut e = AuditEvent::new(RecordKind::Call, i);
            e.tool = Some(format!("srv__t{i}"));
            let r = head.append(e);
            if i % 10 == 0 {
                cps.push(signer().sign("c", r.seq, r.hash, i));
            }
            records.push(r);
        }
        (records, cps)
    }

    fn check(records: Vec<AuditRecord>, cps: &[Checkpoint]) -> Vec<Problem> {
        verify_chain("c", records.into_iter().map(Ok), cps, &ring()).problems
    }

    #[test]
    fn intact_chain_verifies() {
        let (r, c) = chain();
        let report = verify_chain("c", r.into_iter().map(Ok), &c, &ring());
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.last_seq, report.signed_through), (20, 20));
    }

    #[test]
    fn edited_record_is_named() {
        let (mut r, c) = chain();
        r[6].event.tool = Some("srv__evil".into());
        assert_eq!(check(r, &c), vec![Problem::Edited { seq: 7 }]);
    }

    #[test]
    fn deleted_record_is_a_gap() {
        let (mut r, c) = chain();
        r.remove(4);
        assert_eq!(
            check(r, &c),
            vec![Problem::Missing {
                after: 4,
                from: 5,
                to: 5
            }]
        );
    }

    #[test]
    fn swapped_records_are_moved() {
        let (mut r, c) = chain();
        r.swap(2, 3);
        // As a store reads them (by seq column), the seq values stay in place.
        r[2].seq = 3;
        r[3].seq = 4;
        let p = check(r, &c);
        assert_eq!(
            p,
            vec![
                Problem::Moved {
                    found_at: 3,
                    belongs_at: 4
                },
                Problem::Moved {
                    found_at: 4,
                    belongs_at: 3
                }
            ]
        );
    }

    #[test]
    fn rows_out_of_order_are_named() {
        let (mut r, c) = chain();
        r.swap(2, 3);
        let p = check(r, &c);
        assert!(
            p.contains(&Problem::OutOfOrder { seq: 3, after: 4 }),
            "{p:?}"
        );
    }

    #[test]
    fn duplicate_seq_insertion_is_named() {
        let (mut r, c) = chain();
        let mut forged = r[4].clone();
        forged.event.tool = Some("srv__forged".into());
        forged.hash = compute_hash(&forged);
        r.insert(5, forged);
        let p = check(r, &c);
        assert_eq!(p, vec![Problem::DuplicateSeq { seq: 5 }]);
    }

    #[test]
    fn renumbered_insertion_is_named() {
        let (mut r, c) = chain();
        let mut forged = r[4].clone();
        forged.event.tool = Some("srv__forged".into());
        forged.hash = compute_hash(&forged);
        r.insert(4, forged);
        for (i, rec) in r.iter_mut().enumerate().skip(5) {
            rec.seq = i as u64 + 1;
        }
        let p = check(r, &c);
        assert_eq!(
            p[0],
            Problem::Inserted {
                seq: 5,
                displaced: 6
            },
            "{p:?}"
        );
    }

    #[test]
    fn truncated_tail_detected_against_checkpoint() {
        let (mut r, c) = chain();
        r.truncate(15);
        assert_eq!(
            check(r, &c),
            vec![Problem::Truncated {
                checkpoint_seq: 20,
                chain_end: 15
            }]
        );
    }

    #[test]
    fn rewritten_chain_detected_by_checkpoint() {
        let (r, c) = chain();
        let mut head = ChainHead::new("c");
        let rewritten: Vec<AuditRecord> = r
            .into_iter()
            .map(|mut rec| {
                if rec.seq == 3 {
                    rec.event.tool = Some("srv__other".into());
                }
                head.append(rec.event)
            })
            .collect();
        let p = check(rewritten, &c);
        assert_eq!(
            p,
            vec![
                Problem::CheckpointMismatch {
                    seq: 10,
                    absent: false
                },
                Problem::CheckpointMismatch {
                    seq: 20,
                    absent: false
                }
            ]
        );
    }

    #[test]
    fn forged_and_unknown_checkpoints_are_named() {
        let (r, mut c) = chain();
        c[0].seq = 11;
        let other = SigningKeyFile::from_seed(&[7; 32]).sign("c", 20, r[19].hash, 1);
        c.push(other.clone());
        let p = check(r, &c);
        assert_eq!(
            p,
            vec![
                Problem::BadSignature {
                    seq: 11,
                    key_id: c[0].key_id.clone()
                },
                Problem::UnknownKey {
                    seq: 20,
                    key_id: other.key_id
                }
            ]
        );
    }

    fn check_after_retention(
        records: Vec<AuditRecord>,
        cps: &[Checkpoint],
        tombstones: &[Checkpoint],
    ) -> Report {
        let mut v = Verifier::with_tombstones("c", cps, tombstones, &ring());
        for r in records {
            v.push(Ok(r));
        }
        v.finish()
    }

    #[test]
    fn signed_tombstone_accounts_for_the_deleted_prefix() {
        let (r, c) = chain();
        let tomb = signer().sign_tombstone("c", 10, r[9].hash, 99);
        let report = check_after_retention(r[10..].to_vec(), &c, &[tomb]);
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(
            (
                report.deleted_through,
                report.last_seq,
                report.signed_through
            ),
            (10, 20, 20)
        );
    }

    #[test]
    fn deleting_past_the_tombstone_is_still_a_gap() {
        let (r, c) = chain();
        let tomb = signer().sign_tombstone("c", 10, r[9].hash, 99);
        let report = check_after_retention(r[11..].to_vec(), &c, &[tomb]);
        assert_eq!(
            report.problems,
            vec![Problem::Missing {
                after: 10,
                from: 11,
                to: 11
            }]
        );
    }

    #[test]
    fn forged_tombstone_is_named_and_the_prefix_reported_missing() {
        let (r, c) = chain();
        // A routine checkpoint moved into the tombstone table does not verify as a tombstone.
        let replayed = c[0].clone();
        let report = check_after_retention(r[10..].to_vec(), &c, std::slice::from_ref(&replayed));
        assert_eq!(
            report.problems,
            vec![
                Problem::Missing {
                    after: 0,
                    from: 1,
                    to: 10
                },
                Problem::BadTombstone {
                    seq: 10,
                    key_id: replayed.key_id.clone()
                },
                // The checkpoint at 10 still stands, and its record is gone.
                Problem::CheckpointMismatch {
                    seq: 10,
                    absent: true
                },
            ]
        );
        // Neither does a tombstone moved forward to cover more records.
        let mut moved = signer().sign_tombstone("c", 10, r[9].hash, 99);
        moved.seq = 12;
        moved.head_hash = r[11].hash;
        let report = check_after_retention(r[12..].to_vec(), &c, &[moved]);
        assert!(
            report.problems.contains(&Problem::Missing {
                after: 0,
                from: 1,
                to: 12
            }),
            "{:?}",
            report.problems
        );
        assert_eq!(report.deleted_through, 0);
    }

    #[test]
    fn relinked_first_record_after_tombstone_is_caught() {
        let (r, c) = chain();
        let tomb = signer().sign_tombstone("c", 10, r[9].hash, 99);
        let mut rest = r[10..].to_vec();
        rest[0].prev_hash = Hash([5; 32]);
        rest[0].hash = compute_hash(&rest[0]);
        let report = check_after_retention(rest, &c, &[tomb]);
        assert!(!report.is_ok(), "{:?}", report.problems);
        assert!(report.problems.iter().any(|p| p.position() <= 20));
    }

    #[test]
    fn undecodable_row_is_a_finding_not_a_panic() {
        let (r, c) = chain();
        let mut rows: Vec<Result<AuditRecord, Undecodable>> = r.into_iter().map(Ok).collect();
        rows[3] = Err(Undecodable {
            seq: 4,
            reason: "kind 'x'".into(),
        });
        let p = verify_chain("c", rows, &c, &ring()).problems;
        assert_eq!(
            p,
            vec![Problem::Undecodable {
                seq: 4,
                reason: "kind 'x'".into()
            }]
        );
    }
}
