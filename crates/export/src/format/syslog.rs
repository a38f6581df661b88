//! RFC 5424 syslog messages and RFC 6587 octet-counting frames.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [portcullis@32473 …] MSG`
//!
//! - PRI is `facility * 8 + severity` ([`super::ExportItem::severity`]).
//! - TIMESTAMP is the record's time in UTC with microseconds; MSGID is the record kind
//!   (`call`, `denial`, `auth_failure`, …, `unreadable`).
//! - The structured data element `portcullis@32473` (32473 is the enterprise number RFC 5612
//!   reserves for documentation; the SD-ID only has to be unique, receivers key on its name)
//!   repeats the fields SIEM rules filter on: `chain`, `seq`, `kind`, `agent`, `user`, `server`,
//!   `tool`, `decision`, `rule`, `outcome`, `code`, `trace`.
//! - MSG is the record as JSON ([`super::json`]) or, with `format: cef`, a CEF line
//!   ([`super::cef`]). No BOM is written: receivers treat MSG as UTF-8 either way and many show
//!   a BOM as garbage.

use super::ExportItem;
use portcullis_audit::record::Outcome;
use portcullis_config::sinks::SyslogFormat;

/// The SD-ID of the structured data element.
pub const SD_ID: &str = "portcullis@32473";

/// Largest datagram sent over UDP; longer messages are cut (UDP syslog is best effort).
pub const MAX_UDP_MESSAGE: usize = 65_000;

/// The fixed parts of every message a sink writes.
#[derive(Debug, Clone)]
pub struct Header {
    /// Facility code (0..=23).
    pub facility: u8,
    /// HOSTNAME (printable ASCII, no spaces; `-` when unknown).
    pub hostname: String,
    /// APP-NAME.
    pub app_name: String,
    /// PROCID.
    pub procid: String,
    /// The MSG format.
    pub format: SyslogFormat,
}

/// One RFC 5424 message for `item` (no framing).
pub fn message(header: &Header, item: &ExportItem) -> String {
    let pri = u16::from(header.facility) * 8 + u16::from(item.severity());
    let timestamp = item
        .time_us()
        .map(super::rfc3339_micros)
        .unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "<{pri}>1 {timestamp} {} {} {} {} ",
        header_field(&header.hostname, 255),
        header_field(&header.app_name, 48),
        header_field(&header.procid, 128),
        item.kind_name()
    );
    structured_data(item, &mut out);
    out.push(' ');
    match header.format {
        SyslogFormat::Json => out.push_str(&super::json(item).to_string()),
        SyslogFormat::Cef => out.push_str(&super::cef::line(item)),
    }
    out
}

/// `LEN SP MSG` (RFC 6587 §3.4.1).
pub fn octet_frame(message: &str) -> Vec<u8> {
    let mut out = format!("{} ", message.len()).into_bytes();
    out.extend_from_slice(message.as_bytes());
    out
}

/// `message` cut to at most `max` bytes on a character boundary.
pub fn truncate(message: &str, max: usize) -> &str {
    if message.len() <= max {
        return message;
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// A header field: printable ASCII without spaces, at most `max` bytes; `-` if nothing is left.
fn header_field(value: &str, max: usize) -> String {
    let cleaned: String = value
        .bytes()
        .filter(|b| (33..=126).contains(b))
        .take(max)
        .map(char::from)
        .collect();
    if cleaned.is_empty() {
        "-".to_owned()
    } else {
        cleaned
    }
}

fn structured_data(item: &ExportItem, out: &mut String) {
    out.push('[');
    out.push_str(SD_ID);
    let mut param = |name: &str, value: &str| {
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            // RFC 5424 §6.3.3: `"`, `\` and `]` are escaped inside PARAM-VALUE.
            if matches!(c, '"' | '\\' | ']') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    };
    param("chain", item.chain_id());
    param("seq", &item.seq().to_string());
    param("kind", item.kind_name());
    if let ExportItem::Record(r) = item {
        let e = &r.event;
        for (name, value) in [
            ("agent", &e.principal.agent),
            ("user", &e.principal.user),
            ("server", &e.server),
            ("tool", &e.tool),
            ("decision", &e.decision),
            ("rule", &e.rule_id),
            ("trace", &e.trace_id),
        ] {
            if let Some(v) = value {
                param(name, v);
            }
        }
        match e.outcome {
            Some(Outcome::Ok) => param("outcome", "ok"),
            Some(Outcome::Error { code }) => {
                param("outcome", "error");
                param("code", &code.to_string());
            }
            None => {}
        }
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;

    fn header(format: SyslogFormat) -> Header {
        Header {
            facility: 16,
            hostname: "gw host".into(),
            app_name: "portcullis".into(),
            procid: "42".into(),
            format,
        }
    }

    #[test]
    fn rfc5424_message_with_structured_data() {
        let mut record = sample();
        record.event.tool = Some("a]b\"c\\d".into());
        let msg = message(
            &header(SyslogFormat::Json),
            &ExportItem::Record(Box::new(record)),
        );
        // local0 (16) * 8 + warning (4) = 132.
        let expected_head = concat!(
            "<132>1 2024-05-01T12:00:00.123456Z gwhost portcullis 42 denial ",
            r#"[portcullis@32473 chain="gw-1" seq="1" kind="denial" agent="support-bot" user="alice" "#,
            r#"server="billing" tool="a\]b\"c\\d" decision="deny" rule="no-refunds" "#,
            r#"trace="4bf92f3577b34da6a3ce929d0e0e4736" outcome="error" code="-31001"] {"#
        );
        assert!(msg.starts_with(expected_head), "{msg}");
        let json: serde_json::Value =
            serde_json::from_str(&msg[expected_head.len() - 1..]).unwrap();
        assert_eq!(json["seq"], 1);
    }

    #[test]
    fn octet_counting_counts_bytes_not_chars() {
        assert_eq!(octet_frame("é x"), "4 é x".as_bytes());
    }

    #[test]
    fn unreadable_rows_have_a_nil_timestamp_and_error_severity() {
        let item = ExportItem::Unreadable {
            chain_id: "c".into(),
            seq: 3,
            reason: "bad".into(),
        };
        let msg = message(&header(SyslogFormat::Json), &item);
        assert!(
            msg.starts_with(r#"<131>1 - gwhost portcullis 42 unreadable [portcullis@32473 chain="c" seq="3" kind="unreadable"] {"#),
            "{msg}"
        );
    }

    #[test]
    fn truncation_keeps_utf8_whole() {
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
