//! What a sink sends, byte for byte: pure functions from stored rows to wire formats, tested
//! without sockets.
//!
//! An [`ExportItem`] is one row of the outbox: a decoded record, or a row the store could not
//! decode (exported as such, never skipped: the SIEM sees the damage `audit verify` will name).
//! [`json`] is the JSON document every JSON-based sink carries (the same shape as
//! `portcullis audit export` JSON lines); [`syslog`], [`cef`], [`hec`], [`otlp`] and
//! [`webhook`] wrap it for their receivers.

pub mod cef;
pub mod hec;
pub mod otlp;
pub mod syslog;
pub mod webhook;

use portcullis_audit::record::{AuditRecord, Outcome, RecordKind};
use portcullis_audit::verify::Undecodable;
use serde_json::{Map, Value};

/// One row of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportItem {
    /// A record as stored.
    Record(Box<AuditRecord>),
    /// A row of `chain_id` that does not decode (tampering or corruption).
    Unreadable {
        chain_id: String,
        seq: i64,
        reason: String,
    },
}

impl ExportItem {
    /// From one row of `chain_id` as [`portcullis_audit::store::AuditStore::read_page`] returns
    /// it.
    pub fn from_row(chain_id: &str, row: Result<AuditRecord, Undecodable>) -> Self {
        match row {
            Ok(record) => ExportItem::Record(Box::new(record)),
            Err(u) => ExportItem::Unreadable {
                chain_id: chain_id.to_owned(),
                seq: u.seq,
                reason: u.reason,
            },
        }
    }

    /// The chain the row belongs to.
    pub fn chain_id(&self) -> &str {
        match self {
            ExportItem::Record(r) => &r.chain_id,
            ExportItem::Unreadable { chain_id, .. } => chain_id,
        }
    }

    /// The row's seq (the cursor advances to the last one delivered).
    pub fn seq(&self) -> i64 {
        match self {
            ExportItem::Record(r) => i64::try_from(r.seq).unwrap_or(i64::MAX),
            ExportItem::Unreadable { seq, .. } => *seq,
        }
    }

    /// The record's time (µs since the epoch); None for unreadable rows.
    pub fn time_us(&self) -> Option<i64> {
        match self {
            ExportItem::Record(r) => Some(r.event.time_us),
            ExportItem::Unreadable { .. } => None,
        }
    }

    /// How serious the row is, as a syslog severity (RFC 5424 §6.2.1: 3 error, 4 warning,
    /// 5 notice, 6 informational). Unreadable rows are errors: the trail is damaged.
    pub fn severity(&self) -> u8 {
        let ExportItem::Record(r) = self else {
            return 3;
        };
        match r.event.kind {
            RecordKind::Denial | RecordKind::AuthFailure | RecordKind::Alert => 4,
            RecordKind::KillSwitch
            | RecordKind::ConfigChange
            | RecordKind::Approval
            | RecordKind::Retention => 5,
            RecordKind::Call => match r.event.outcome {
                Some(Outcome::Error { .. }) => 4,
                _ => 6,
            },
        }
    }

    /// The kind's name (`call`, `denial`, …), `unreadable` for damaged rows.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ExportItem::Record(r) => r.event.kind.as_str(),
            ExportItem::Unreadable { .. } => "unreadable",
        }
    }
}

/// The JSON document of one row: the record's fields (`chain_id`, `seq`, `prev_hash`, `hash`,
/// `time_us`, `kind`, `principal`, …) plus `time` in RFC 3339; an unreadable row is
/// `{"chain_id", "unreadable": {"seq", "reason"}}`.
pub fn json(item: &ExportItem) -> Value {
    match item {
        ExportItem::Record(r) => {
            let mut value = serde_json::to_value(r.as_ref()).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut value {
                map.insert("time".into(), rfc3339_micros(r.event.time_us).into());
            }
            value
        }
        ExportItem::Unreadable {
            chain_id,
            seq,
            reason,
        } => {
            let mut inner = Map::new();
            inner.insert("seq".into(), (*seq).into());
            inner.insert("reason".into(), reason.clone().into());
            let mut map = Map::new();
            map.insert("chain_id".into(), chain_id.clone().into());
            map.insert("unreadable".into(), Value::Object(inner));
            Value::Object(map)
        }
    }
}

/// `2024-05-01T12:00:00.123456Z` for µs since the epoch (proleptic Gregorian, UTC).
pub fn rfc3339_micros(time_us: i64) -> String {
    let secs = time_us.div_euclid(1_000_000);
    let micros = time_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), for any day count an `i64` of µs can reach.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era-based calendar starting on 0000-03-01 so leap days end each cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_audit::chain::ChainHead;
    use portcullis_audit::record::{AuditEvent, Finding, Principal};

    /// A fully populated record (`seq` 1 of chain `gw-1`) for the format tests.
    pub(crate) fn sample() -> AuditRecord {
        let mut e = AuditEvent::new(RecordKind::Denial, 1_714_564_800_123_456);
        e.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        e.principal = Principal {
            agent: Some("support-bot".into()),
            user: Some("alice".into()),
            token_id: Some("key-1".into()),
        };
        e.session = Some("s-1".into());
        e.server = Some("billing".into());
        e.method = Some("tools/call".into());
        e.tool = Some("billing__refund".into());
        e.args_fingerprint = Some("ab".repeat(32));
        e.decision = Some("deny".into());
        e.rule_id = Some("no-refunds".into());
        e.findings = vec![Finding {
            rule: "secrets.aws_key".into(),
            severity: "high".into(),
            location: Some("arguments.note".into()),
        }];
        e.outcome = Some(Outcome::Error { code: -31001 });
        e.latency_us = Some(420);
        e.bytes_in = Some(123);
        e.bytes_out = Some(45);
        ChainHead::new("gw-1").append(e)
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_714_564_800_123_456),
            "2024-05-01T12:00:00.123456Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn json_keeps_every_field_and_adds_time() {
        let record = sample();
        let doc = json(&ExportItem::Record(Box::new(record.clone())));
        assert_eq!(doc["time"], "2024-05-01T12:00:00.123456Z");
        assert_eq!(doc["seq"], 1);
        assert_eq!(doc["hash"], record.hash.to_hex());
        assert_eq!(doc["principal"]["agent"], "support-bot");
        assert_eq!(doc["outcome"]["code"], -31001);
        // The document round-trips to the stored record: a SIEM can re-verify the chain.
        let back: AuditRecord = serde_json::from_value(doc).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn unreadable_rows_are_exported_not_skipped() {
        let item = ExportItem::from_row(
            "gw-1",
            Err(Undecodable {
                seq: 7,
                reason: "unknown kind \"x\"".into(),
            }),
        );
        assert_eq!(item.seq(), 7);
        assert_eq!(item.severity(), 3);
        assert_eq!(
            json(&item),
            serde_json::json!({"chain_id": "gw-1", "unreadable": {"seq": 7, "reason": "unknown kind \"x\""}})
        );
    }
}
