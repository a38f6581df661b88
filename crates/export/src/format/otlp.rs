//! OTLP logs over HTTP/JSON (`POST /v1/logs`, `ExportLogsServiceRequest`).
//!
//! One `resourceLogs` entry (resource attribute `service.name`), one `scopeLogs` entry (scope
//! `portcullis.audit`), one `logRecord` per row:
//! - `timeUnixNano` (the record's time) and `observedTimeUnixNano` (export time), as decimal
//!   strings (64-bit integers are strings in the protobuf JSON mapping);
//! - `severityNumber`/`severityText` from the syslog severity (INFO 9, INFO2 10 for notices,
//!   WARN 13, ERROR 17);
//! - `body`: the row as a JSON string ([`super::json`]);
//! - `attributes`: `portcullis.*` keys (`chain_id`, `seq`, `kind`, `agent`, `user`, `tool`,
//!   `decision`, `rule_id`, `outcome`, `error_code`, `latency_us`, …), integers as `intValue`;
//! - `traceId`: the record's W3C trace id (hex, as OTLP/JSON writes ids) when it is one.

use serde_json::{Value, json};

use super::ExportItem;
use portcullis_audit::record::Outcome;

/// The request body for `items`; `observed_us` is the export time.
pub fn request(service_name: &str, observed_us: i64, items: &[ExportItem]) -> Value {
    let records: Vec<Value> = items.iter().map(|i| log_record(i, observed_us)).collect();
    json!({
        "resourceLogs": [{
            "resource": { "attributes": [string_attr("service.name", service_name)] },
            "scopeLogs": [{
                "scope": { "name": "portcullis.audit", "version": env!("CARGO_PKG_VERSION") },
                "logRecords": records,
            }],
        }],
    })
}

fn nanos(us: i64) -> String {
    (i128::from(us.max(0)) * 1000).to_string()
}

fn string_attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn int_attr(key: &str, value: i64) -> Value {
    json!({ "key": key, "value": { "intValue": value.to_string() } })
}

fn log_record(item: &ExportItem, observed_us: i64) -> Value {
    let (number, text) = match item.severity() {
        3 => (17, "ERROR"),
        4 => (13, "WARN"),
        5 => (10, "INFO2"),
        _ => (9, "INFO"),
    };
    let mut attributes = vec![
        string_attr("portcullis.chain_id", item.chain_id()),
        int_attr("portcullis.seq", item.seq()),
        string_attr("portcullis.kind", item.kind_name()),
    ];
    let mut record = json!({
        "observedTimeUnixNano": nanos(observed_us),
        "severityNumber": number,
        "severityText": text,
        "body": { "stringValue": super::json(item).to_string() },
    });
    if let ExportItem::Record(r) = item {
        let e = &r.event;
        record["timeUnixNano"] = nanos(e.time_us).into();
        for (key, value) in [
            ("portcullis.agent", &e.principal.agent),
            ("portcullis.user", &e.principal.user),
            ("portcullis.token_id", &e.principal.token_id),
            ("portcullis.session", &e.session),
            ("portcullis.server", &e.server),
            ("portcullis.method", &e.method),
            ("portcullis.tool", &e.tool),
            ("portcullis.decision", &e.decision),
            ("portcullis.rule_id", &e.rule_id),
            ("portcullis.approval_ref", &e.approval_ref),
            ("portcullis.args_fingerprint", &e.args_fingerprint),
        ] {
            if let Some(v) = value {
                attributes.push(string_attr(key, v));
            }
        }
        match e.outcome {
            Some(Outcome::Ok) => attributes.push(string_attr("portcullis.outcome", "ok")),
            Some(Outcome::Error { code }) => {
                attributes.push(string_attr("portcullis.outcome", "error"));
                attributes.push(int_attr("portcullis.error_code", code));
            }
            None => {}
        }
        for (key, value) in [
            ("portcullis.latency_us", e.latency_us),
            ("portcullis.bytes_in", e.bytes_in),
            ("portcullis.bytes_out", e.bytes_out),
        ] {
            if let Some(v) = value {
                attributes.push(int_attr(key, v));
            }
        }
        if let Some(trace) = &e.trace_id
            && trace.len() == 32
            && trace.bytes().all(|b| b.is_ascii_hexdigit())
            && trace.bytes().any(|b| b != b'0')
        {
            record["traceId"] = trace.to_ascii_lowercase().into();
        }
    }
    record["attributes"] = Value::Array(attributes);
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;

    #[test]
    fn otlp_request_shape() {
        let item = ExportItem::Record(Box::new(sample()));
        let body = request("gw", 1_714_564_801_000_000, &[item]);
        let resource = &body["resourceLogs"][0];
        assert_eq!(
            resource["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "gw"}})
        );
        let scope = &resource["scopeLogs"][0];
        assert_eq!(scope["scope"]["name"], "portcullis.audit");
        let record = &scope["logRecords"][0];
        assert_eq!(record["timeUnixNano"], "1714564800123456000");
        assert_eq!(record["observedTimeUnixNano"], "1714564801000000000");
        assert_eq!(record["severityNumber"], 13);
        assert_eq!(record["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        let attrs = record["attributes"].as_array().unwrap();
        assert!(attrs.contains(&json!({"key": "portcullis.seq", "value": {"intValue": "1"}})));
        assert!(attrs.contains(
            &json!({"key": "portcullis.tool", "value": {"stringValue": "billing__refund"}})
        ));
        let body_doc: Value =
            serde_json::from_str(record["body"]["stringValue"].as_str().unwrap()).unwrap();
        assert_eq!(body_doc["chain_id"], "gw-1");
    }

    #[test]
    fn malformed_trace_ids_are_left_out() {
        let mut record = sample();
        record.event.trace_id = Some("0".repeat(32));
        let body = request("gw", 0, &[ExportItem::Record(Box::new(record))]);
        assert!(
            body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
                .get("traceId")
                .is_none()
        );
    }
}
