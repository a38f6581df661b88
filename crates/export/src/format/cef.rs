//! ArcSight Common Event Format (CEF 0) lines, the MSG of `format: cef` syslog sinks.
//!
//! `CEF:0|Portcullis|Portcullis Gateway|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`
//!
//! SIGNATURE is the record kind, NAME a short summary (`denial tools/call billing__refund`),
//! SEVERITY 0–10. Extension keys: `rt` (ms since the epoch), `externalId` (`chain:seq`),
//! `deviceExternalId` (chain), `cat` (kind), `act` (decision), `outcome` (`ok`/`error`),
//! `suser` (agent), `suid` (token id), `destinationServiceName` (server), `in`/`out` (bytes),
//! and labelled custom fields: `cs1` tool, `cs2` rule, `cs3` user, `cs4` trace id, `cs5`
//! findings (rule names, comma separated), `cs6` session, `cn1` error code, `cn2` latency (µs).
//! Header fields escape `\` and `|`; extension values escape `\`, `=` and line breaks.

use super::ExportItem;
use portcullis_audit::record::Outcome;

/// The CEF line for `item`.
pub fn line(item: &ExportItem) -> String {
    let severity = match item {
        ExportItem::Unreadable { .. } => 10,
        ExportItem::Record(_) => match item.severity() {
            3 => 8,
            4 => 6,
            5 => 4,
            _ => 2,
        },
    };
    let name = match item {
        ExportItem::Record(r) => {
            let e = &r.event;
            let mut parts = vec![e.kind.as_str().to_owned()];
            parts.extend(e.method.clone());
            parts.extend(e.tool.clone());
            parts.join(" ")
        }
        ExportItem::Unreadable { .. } => "unreadable audit row".to_owned(),
    };
    let mut out = format!(
        "CEF:0|Portcullis|Portcullis Gateway|{}|{}|{}|{severity}|",
        header(env!("CARGO_PKG_VERSION")),
        header(item.kind_name()),
        header(&name),
    );
    let mut ext = Extension {
        out: &mut out,
        first: true,
    };
    ext.put("externalId", &format!("{}:{}", item.chain_id(), item.seq()));
    ext.put("deviceExternalId", item.chain_id());
    ext.put("cat", item.kind_name());
    match item {
        ExportItem::Unreadable { reason, .. } => ext.put("reason", reason),
        ExportItem::Record(r) => {
            let e = &r.event;
            ext.put("rt", &e.time_us.div_euclid(1000).to_string());
            ext.opt("act", &e.decision);
            match e.outcome {
                Some(Outcome::Ok) => ext.put("outcome", "ok"),
                Some(Outcome::Error { code }) => {
                    ext.put("outcome", "error");
                    ext.labelled("cn1", "errorCode", &code.to_string());
                }
                None => {}
            }
            ext.opt("suser", &e.principal.agent);
            ext.opt("suid", &e.principal.token_id);
            ext.opt("destinationServiceName", &e.server);
            if let Some(n) = e.bytes_in {
                ext.put("in", &n.to_string());
            }
            if let Some(n) = e.bytes_out {
                ext.put("out", &n.to_string());
            }
            if let Some(v) = &e.tool {
                ext.labelled("cs1", "tool", v);
            }
            if let Some(v) = &e.rule_id {
                ext.labelled("cs2", "rule", v);
            }
            if let Some(v) = &e.principal.user {
                ext.labelled("cs3", "user", v);
            }
            if let Some(v) = &e.trace_id {
                ext.labelled("cs4", "traceId", v);
            }
            if !e.findings.is_empty() {
                let rules: Vec<&str> = e.findings.iter().map(|f| f.rule.as_str()).collect();
                ext.labelled("cs5", "findings", &rules.join(","));
            }
            if let Some(v) = &e.session {
                ext.labelled("cs6", "session", v);
            }
            if let Some(v) = e.latency_us {
                ext.labelled("cn2", "latencyMicros", &v.to_string());
            }
        }
    }
    out
}

/// A header field: `\` and `|` escaped, line breaks flattened to spaces.
fn header(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Writes `key=value` pairs separated by spaces.
struct Extension<'a> {
    out: &'a mut String,
    first: bool,
}

impl Extension<'_> {
    fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(' ');
        }
        self.first = false;
        self.out.push_str(key);
        self.out.push('=');
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '=' => self.out.push_str("\\="),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c => self.out.push(c),
            }
        }
    }

    fn opt(&mut self, key: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    fn labelled(&mut self, key: &str, label: &str, value: &str) {
        self.put(key, value);
        self.put(&format!("{key}Label"), label);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;

    #[test]
    fn cef_line_of_a_denial() {
        let line = line(&ExportItem::Record(Box::new(sample())));
        let expected = format!(
            concat!(
                "CEF:0|Portcullis|Portcullis Gateway|{}|denial|denial tools/call billing__refund|6|",
                "externalId=gw-1:1 deviceExternalId=gw-1 cat=denial rt=1714564800123 act=deny ",
                "outcome=error cn1=-31001 cn1Label=errorCode suser=support-bot suid=key-1 ",
                "destinationServiceName=billing in=123 out=45 cs1=billing__refund cs1Label=tool ",
                "cs2=no-refunds cs2Label=rule cs3=alice cs3Label=user ",
                "cs4=4bf92f3577b34da6a3ce929d0e0e4736 cs4Label=traceId cs5=secrets.aws_key ",
                "cs5Label=findings cs6=s-1 cs6Label=session cn2=420 cn2Label=latencyMicros"
            ),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(line, expected);
    }

    #[test]
    fn cef_escapes_header_and_extension_separators() {
        let mut record = sample();
        record.event.tool = Some("x|y=z\\\nw".into());
        let line = line(&ExportItem::Record(Box::new(record)));
        assert!(line.contains("|denial tools/call x\\|y=z\\\\ w|"), "{line}");
        assert!(line.contains("cs1=x|y\\=z\\\\\\nw cs1Label=tool"), "{line}");
    }
}
