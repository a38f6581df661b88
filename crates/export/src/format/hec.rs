//! Splunk HTTP Event Collector batches (`POST /services/collector/event`).
//!
//! A batch is the events' JSON objects one after another (HEC's batch format, not an array):
//! `{"time":1714564800.123456,"host":…,"source":…,"sourcetype":…,"index":…,"event":{…}}`.
//! `time` is written from the record's µs as exact decimal text (no float rounding); `event`
//! is [`super::json`] of the row.

use super::ExportItem;

/// The HEC metadata of a sink.
#[derive(Debug, Clone)]
pub struct Meta {
    pub host: String,
    pub source: String,
    pub sourcetype: String,
    pub index: Option<String>,
}

/// The request body for `items`.
pub fn batch(meta: &Meta, items: &[ExportItem]) -> Vec<u8> {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
    let mut fixed = format!(
        "\"host\":{},\"source\":{},\"sourcetype\":{},",
        quote(&meta.host),
        quote(&meta.source),
        quote(&meta.sourcetype)
    );
    if let Some(index) = &meta.index {
        fixed.push_str(&format!("\"index\":{},", quote(index)));
    }
    let mut out = Vec::with_capacity(items.len() * 1024);
    for item in items {
        out.extend_from_slice(b"{");
        if let Some(us) = item.time_us() {
            let us = us.max(0);
            out.extend_from_slice(
                format!("\"time\":{}.{:06},", us / 1_000_000, us % 1_000_000).as_bytes(),
            );
        }
        out.extend_from_slice(fixed.as_bytes());
        out.extend_from_slice(b"\"event\":");
        out.extend_from_slice(super::json(item).to_string().as_bytes());
        out.extend_from_slice(b"}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::sample;

    #[test]
    fn hec_batch_is_concatenated_events_with_exact_time() {
        let meta = Meta {
            host: "gw".into(),
            source: "portcullis".into(),
            sourcetype: "portcullis:audit".into(),
            index: Some("sec".into()),
        };
        let item = ExportItem::Record(Box::new(sample()));
        let body = String::from_utf8(batch(&meta, &[item.clone(), item])).unwrap();
        let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&body)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(events.len(), 2);
        assert!(body.starts_with("{\"time\":1714564800.123456,\"host\":\"gw\","));
        assert_eq!(events[0]["index"], "sec");
        assert_eq!(events[0]["sourcetype"], "portcullis:audit");
        assert_eq!(events[1]["event"]["tool"], "billing__refund");
    }
}
