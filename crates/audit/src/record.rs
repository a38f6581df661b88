//! The audit record and its canonical encoding.
//!
//! An [`AuditEvent`] is what the data plane knows about one governed message; the chain adds
//! `chain_id`, `seq` and `prev_hash` to make an [`AuditRecord`], whose `hash` covers all of it.
//!
//! # Canonical encoding (version 1)
//!
//! The bytes hashed are canonical JSON of the record *without* its `hash` field:
//! - a JSON object whose keys are sorted by their UTF-8 bytes at every depth, no whitespace;
//! - strings escaped as `serde_json` writes them (`"`, `\`, control characters; non-ASCII as is);
//! - integers only (times in µs since the Unix epoch, latencies in µs); no floats ever;
//! - absent optional fields are written as `null`, so every record has the same key set;
//! - enums are lower snake-case strings.
//!
//! The definition is [`canonical_bytes_generic`]: [`canonical_json`] over the serialized record
//! (keys sorted explicitly, so `serde_json`'s map-ordering feature cannot change it).
//! [`AuditRecord::canonical_bytes`] writes the same bytes directly, without the intermediate
//! `Value`, and a test pins the two together. Changing either is a format change (version 2).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// What kind of event a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A forwarded request (tools/call, resources/read, lists, ...).
    Call,
    /// A request refused by policy, scanning, rate limit or kill switch.
    Denial,
    /// A failed authentication.
    AuthFailure,
    /// A configuration revision applied.
    ConfigChange,
    /// A kill switch engaged or released.
    KillSwitch,
    /// An approval requested, granted or refused.
    Approval,
    /// Retention removed records (the signed tombstone checkpoint says which).
    Retention,
    /// A scanner alert outside any one call: a tool, prompt or resource quarantined (poisoned,
    /// changed since it was pinned, new and not approved) or flagged, with the findings.
    Alert,
}

impl RecordKind {
    /// All kinds, in declaration order.
    pub const ALL: [RecordKind; 8] = [
        Self::Call,
        Self::Denial,
        Self::AuthFailure,
        Self::ConfigChange,
        Self::KillSwitch,
        Self::Approval,
        Self::Retention,
        Self::Alert,
    ];

    /// The stored name (`call`, `auth_failure`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Denial => "denial",
            Self::AuthFailure => "auth_failure",
            Self::ConfigChange => "config_change",
            Self::KillSwitch => "kill_switch",
            Self::Approval => "approval",
            Self::Retention => "retention",
            Self::Alert => "alert",
        }
    }

    /// Parses a stored name; `None` for anything else (a verify finding, not a panic).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Who made the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The agent (workload) identity.
    pub agent: Option<String>,
    /// The human user the agent acts for, if known.
    pub user: Option<String>,
    /// The id of the credential used (never the credential itself).
    pub token_id: Option<String>,
}

/// One scanner or policy finding attached to a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The scanner or rule that produced it (`secrets.aws_key`, `injection.hidden_unicode`).
    pub rule: String,
    /// `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// Where in the message (`arguments.path`, `result.content[0]`).
    pub location: Option<String>,
}

/// How the message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Outcome {
    /// Answered with a result.
    Ok,
    /// Answered with an error (JSON-RPC or gateway code).
    Error {
        /// The error code the client saw.
        code: i64,
    },
}

/// Everything the data plane records about one governed message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Wall-clock time, µs since the Unix epoch.
    pub time_us: i64,
    /// What happened.
    pub kind: RecordKind,
    /// W3C trace id (32 lowercase hex digits).
    pub trace_id: Option<String>,
    /// Who.
    pub principal: Principal,
    /// Gateway session id, when the caller has one.
    pub session: Option<String>,
    /// Protocol version the client spoke.
    pub client_era: Option<String>,
    /// Protocol version spoken to the upstream.
    pub upstream_era: Option<String>,
    /// Catalog server name.
    pub server: Option<String>,
    /// JSON-RPC method.
    pub method: Option<String>,
    /// Tool as `{server}__{tool}`.
    pub tool: Option<String>,
    /// Keyed fingerprint of the canonical arguments ([`fingerprint_arguments`]).
    pub args_fingerprint: Option<String>,
    /// Policy decision (`allow`, `deny`, `approve`, ...).
    pub decision: Option<String>,
    /// The rule that decided.
    pub rule_id: Option<String>,
    /// The approval this call waited for.
    pub approval_ref: Option<String>,
    /// Scanner and policy findings.
    pub findings: Vec<Finding>,
    /// How it ended; `None` for the decision record written before the upstream call.
    pub outcome: Option<Outcome>,
    /// Gateway latency, µs.
    pub latency_us: Option<i64>,
    /// Request bytes from the client.
    pub bytes_in: Option<i64>,
    /// Response bytes to the client.
    pub bytes_out: Option<i64>,
}

impl AuditEvent {
    /// An event of `kind` at `time_us` with every other field empty.
    pub fn new(kind: RecordKind, time_us: i64) -> Self {
        Self {
            time_us,
            kind,
            trace_id: None,
            principal: Principal::default(),
            session: None,
            client_era: None,
            upstream_era: None,
            server: None,
            method: None,
            tool: None,
            args_fingerprint: None,
            decision: None,
            rule_id: None,
            approval_ref: None,
            findings: Vec::new(),
            outcome: None,
            latency_us: None,
            bytes_in: None,
            bytes_out: None,
        }
    }
}

/// A record as stored: the event plus its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// The chain (one per replica).
    pub chain_id: String,
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// Hash of the record at `seq - 1` (all zeros for seq 1).
    pub prev_hash: crate::Hash,
    /// `SHA-256(prev_hash || canonical(record without hash))`.
    pub hash: crate::Hash,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl AuditRecord {
    /// The canonical bytes the hash covers: every field but `hash`.
    ///
    /// Written directly, field by field in sorted key order (the hot path of every append);
    /// `canonical_matches_generic_encoding` pins it to [`canonical_json`] of the serialized
    /// record, which is the definition.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let e = &self.event;
        let mut out = Vec::with_capacity(768);
        out.push(b'{');
        let mut w = Fields {
            out: &mut out,
            first: true,
        };
        w.opt_str("approval_ref", &e.approval_ref);
        w.opt_str("args_fingerprint", &e.args_fingerprint);
        w.opt_int("bytes_in", e.bytes_in);
        w.opt_int("bytes_out", e.bytes_out);
        w.str("chain_id", &self.chain_id);
        w.opt_str("client_era", &e.client_era);
        w.opt_str("decision", &e.decision);
        w.key("findings");
        w.out.push(b'[');
        for (i, f) in e.findings.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            w.out.push(b'{');
            let mut fw = Fields {
                out: w.out,
                first: true,
            };
            fw.opt_str("location", &f.location);
            fw.str("rule", &f.rule);
            fw.str("severity", &f.severity);
            w.out.push(b'}');
        }
        w.out.push(b']');
        w.str("kind", e.kind.as_str());
        w.opt_int("latency_us", e.latency_us);
        w.opt_str("method", &e.method);
        w.key("outcome");
        match e.outcome {
            None => w.out.extend_from_slice(b"null"),
            Some(Outcome::Ok) => w.out.extend_from_slice(br#"{"status":"ok"}"#),
            Some(Outcome::Error { code }) => {
                w.out.extend_from_slice(br#"{"code":"#);
                w.out.extend_from_slice(code.to_string().as_bytes());
                w.out.extend_from_slice(br#","status":"error"}"#);
            }
        }
        w.str("prev_hash", &self.prev_hash.to_hex());
        w.key("principal");
        w.out.push(b'{');
        let mut pw = Fields {
            out: w.out,
            first: true,
        };
        pw.opt_str("agent", &e.principal.agent);
        pw.opt_str("token_id", &e.principal.token_id);
        pw.opt_str("user", &e.principal.user);
        w.out.push(b'}');
        w.opt_str("rule_id", &e.rule_id);
        w.key("seq");
        w.out.extend_from_slice(self.seq.to_string().as_bytes());
        w.opt_str("server", &e.server);
        w.opt_str("session", &e.session);
        w.opt_int("time_us", Some(e.time_us));
        w.opt_str("tool", &e.tool);
        w.opt_str("trace_id", &e.trace_id);
        w.opt_str("upstream_era", &e.upstream_era);
        out.push(b'}');
        out
    }
}

/// Writes `"key":value` members of one JSON object, commas included.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_string(key, self.out);
        self.out.push(b':');
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_string(value, self.out);
    }

    fn opt_str(&mut self, key: &str, value: &Option<String>) {
        match value {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    fn opt_int(&mut self, key: &str, value: Option<i64>) {
        self.key(key);
        match value {
            Some(v) => self.out.extend_from_slice(v.to_string().as_bytes()),
            None => self.out.extend_from_slice(b"null"),
        }
    }
}

/// The definition of the canonical encoding: [`canonical_json`] of the serialized record
/// without `hash`. Slower than [`AuditRecord::canonical_bytes`], which must equal it.
pub fn canonical_bytes_generic(record: &AuditRecord) -> Vec<u8> {
    let mut value = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.remove("hash");
    }
    let mut out = Vec::with_capacity(768);
    canonical_json(&value, &mut out);
    out
}

/// Writes `value` as canonical JSON (sorted keys, no whitespace) into `out`.
pub fn canonical_json(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        // Records hold integers only; a float (never produced by our types) is written as
        // serde_json prints it, which is still deterministic for a given value.
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    canonical_json(v, out);
                }
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is stable and deterministic.
    match serde_json::to_string(s) {
        Ok(quoted) => out.extend_from_slice(quoted.as_bytes()),
        Err(_) => out.extend_from_slice(b"\"\""),
    }
}

/// The argument fingerprint: `hex(HMAC-SHA256(key, canonical_json(arguments)))`.
///
/// Keyed with a per-deployment secret so equal arguments link across records without the trail
/// storing (or letting anyone brute-force) the arguments themselves.
pub fn fingerprint_arguments(key: &[u8], arguments: &Value) -> String {
    let mut canonical = Vec::new();
    canonical_json(arguments, &mut canonical);
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(&canonical);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[1,{"y":2,"x":"é\n"}],"c":null}}"#).unwrap();
        let mut out = Vec::new();
        canonical_json(&v, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"c":null,"z":[1,{"x":"é\n","y":2}]},"b":1}"#
        );
    }

    #[test]
    fn fingerprint_is_keyed_and_order_independent() {
        let a: Value = serde_json::from_str(r#"{"path":"/etc","n":1}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"n":1,"path":"/etc"}"#).unwrap();
        assert_eq!(
            fingerprint_arguments(b"k1", &a),
            fingerprint_arguments(b"k1", &b)
        );
        assert_ne!(
            fingerprint_arguments(b"k1", &a),
            fingerprint_arguments(b"k2", &a)
        );
        assert_eq!(fingerprint_arguments(b"k1", &a).len(), 64);
    }

    #[test]
    fn canonical_matches_generic_encoding() {
        let mut full = AuditEvent::new(RecordKind::KillSwitch, -7);
        full.trace_id = Some("t\"\u{1}é".into());
        full.principal = Principal {
            agent: Some("a".into()),
            user: Some("u".into()),
            token_id: Some("k".into()),
        };
        full.session = Some("s".into());
        full.client_era = Some("c".into());
        full.upstream_era = Some("e".into());
        full.server = Some("srv".into());
        full.method = Some("tools/call".into());
        full.tool = Some("srv__t".into());
        full.args_fingerprint = Some("ff".into());
        full.decision = Some("deny".into());
        full.rule_id = Some("r".into());
        full.approval_ref = Some("ap".into());
        full.findings = vec![
            Finding {
                rule: "x".into(),
                severity: "high".into(),
                location: None,
            },
            Finding {
                rule: "y".into(),
                severity: "low".into(),
                location: Some("l".into()),
            },
        ];
        full.latency_us = Some(1);
        full.bytes_in = Some(i64::MAX);
        full.bytes_out = Some(i64::MIN);
        for outcome in [
            None,
            Some(Outcome::Ok),
            Some(Outcome::Error { code: -32_001 }),
        ] {
            for event in [AuditEvent::new(RecordKind::Call, 0), full.clone()] {
                let rec = AuditRecord {
                    chain_id: "c\n".into(),
                    seq: u64::MAX,
                    prev_hash: crate::Hash([9; 32]),
                    hash: crate::Hash([1; 32]),
                    event: AuditEvent { outcome, ..event },
                };
                assert_eq!(
                    String::from_utf8(rec.canonical_bytes()).unwrap(),
                    String::from_utf8(canonical_bytes_generic(&rec)).unwrap()
                );
            }
        }
    }

    #[test]
    fn canonical_record_has_every_field_but_hash() {
        let rec = AuditRecord {
            chain_id: "r1".into(),
            seq: 1,
            prev_hash: crate::Hash::ZERO,
            hash: crate::Hash::ZERO,
            event: AuditEvent::new(RecordKind::Call, 5),
        };
        let text = String::from_utf8(rec.canonical_bytes()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"approval_ref":null,"args_fingerprint":null,"bytes_in":null,"bytes_out":null,"#,
                r#""chain_id":"r1","client_era":null,"decision":null,"findings":[],"kind":"call","#,
                r#""latency_us":null,"method":null,"outcome":null,"#,
                r#""prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
                r#""principal":{"agent":null,"token_id":null,"user":null},"rule_id":null,"#,
                r#""seq":1,"server":null,"session":null,"time_us":5,"tool":null,"trace_id":null,"#,
                r#""upstream_era":null}"#
            )
        );
    }
}
