//! W3C Trace Context for governed calls: the trace id every audit record carries and the
//! `traceparent` the upstream receives in `params._meta.traceparent`.
//!
//! The client's own trace is continued when it sends a valid `traceparent` (in
//! `params._meta.traceparent`, or else the HTTP `traceparent` header, which the edge folds into
//! `_meta` with [`adopt_header`]); otherwise the gateway starts a trace. Either way the upstream
//! gets the same trace id with the gateway's own span id as parent (the gateway is a hop of the
//! trace). Invalid values (wrong length, upper case, all-zero ids, version `ff`) are replaced,
//! never passed on. Edits touch only `params._meta.traceparent`, through raw members: the rest
//! of the message keeps its bytes.

use portcullis_core::envelope::{Envelope, Kind, Parsed, to_raw};
use portcullis_core::rawobj::RawObject;
use rand::RngCore;

/// The `_meta` key (and HTTP header name) of a W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";

/// A parsed `traceparent`: `00-{trace id}-{parent id}-{flags}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits, not all zero.
    pub trace_id: String,
    /// 16 lowercase hex digits, not all zero.
    pub parent_id: String,
    /// 2 lowercase hex digits.
    pub flags: String,
}

impl TraceParent {
    /// Parses a `traceparent` value; None unless it is valid (version 00, or a later version
    /// whose first four fields are well formed, as the spec asks).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim();
        let mut parts = text.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let zero = |s: &str| s.bytes().all(|b| b == b'0');
        if !hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex(trace_id, 32) || zero(trace_id) || !hex(parent_id, 16) || zero(parent_id) {
            return None;
        }
        if !hex(flags, 2) {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// A new trace (random ids, sampled flag set: the gateway records it).
    pub fn mint() -> TraceParent {
        TraceParent {
            trace_id: random_hex::<16>(),
            parent_id: random_hex::<8>(),
            flags: "01".to_owned(),
        }
    }

    /// The next hop: same trace and flags, a new parent (span) id for the gateway.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            trace_id: self.trace_id.clone(),
            parent_id: random_hex::<8>(),
            flags: self.flags.clone(),
        }
    }

    /// The header / `_meta` value (always version 00).
    pub fn to_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.parent_id, self.flags)
    }
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    loop {
        rand::rng().fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return hex::encode(bytes);
        }
    }
}

/// Continues the message's trace (or starts one) and writes the gateway's hop into
/// `params._meta.traceparent` of `message`, the request as the upstream will receive it.
/// Returns the trace for the audit records. Messages whose `params` is not an object (or
/// absent on a method that takes none) are left as they are; the trace is still returned.
pub fn propagate(message: &mut Envelope) -> TraceParent {
    continue_trace(message).1
}

/// [`propagate`], also returning the valid `traceparent` the message came with (None: the
/// gateway started the trace), for the request's span (`crate::telemetry`).
pub fn continue_trace(message: &mut Envelope) -> (Option<TraceParent>, TraceParent) {
    let params = match message.params() {
        Some(raw) => match RawObject::parse(raw) {
            Some(params) => Some(params),
            None => return (None, TraceParent::mint()),
        },
        None => None,
    };
    let mut params = params.unwrap_or_default();
    let mut meta = params.get_object("_meta").unwrap_or_default();
    let incoming = meta
        .get_str(TRACEPARENT)
        .and_then(|value| TraceParent::parse(&value));
    let hop = match &incoming {
        Some(parent) => parent.child(),
        None => TraceParent::mint(),
    };
    meta.set(TRACEPARENT, to_raw(&hop.to_value()));
    params.set("_meta", meta.to_raw());
    message.set_member("params", params.to_raw());
    (incoming, hop)
}

/// The edge's part: a valid HTTP `traceparent` header is copied into `params._meta.traceparent`
/// of each request that carries none (a `_meta` value wins over the header). Requests only;
/// requests whose `params` is not an object are left alone.
pub fn adopt_header(header: Option<&http::HeaderValue>, parsed: Parsed) -> Parsed {
    let Some(parent) = header
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
    else {
        return parsed;
    };
    let value = parent.to_value();
    let adopt = |mut message: Envelope| {
        if message.kind() != Kind::Request {
            return message;
        }
        let mut params = match message.params() {
            Some(raw) => match RawObject::parse(raw) {
                Some(params) => params,
                None => return message,
            },
            None => RawObject::default(),
        };
        let mut meta = match params.get("_meta") {
            Some(raw) => match RawObject::parse(raw) {
                Some(meta) => meta,
                None => return message,
            },
            None => RawObject::default(),
        };
        if meta.get(TRACEPARENT).is_some() {
            return message;
        }
        meta.set(TRACEPARENT, to_raw(&value));
        params.set("_meta", meta.to_raw());
        message.set_member("params", params.to_raw());
        message
    };
    match parsed {
        Parsed::Single(message) => Parsed::Single(adopt(message)),
        Parsed::Batch(messages) => Parsed::Batch(messages.into_iter().map(adopt).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::envelope::{Limits, parse};

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn request(body: &str) -> Envelope {
        match parse(body.as_bytes(), &Limits::default()).unwrap() {
            Parsed::Single(m) => m,
            Parsed::Batch(_) => panic!("batch"),
        }
    }

    #[test]
    fn parses_only_valid_values() {
        let tp = TraceParent::parse(VALID).unwrap();
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A future version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn continues_the_clients_trace_with_a_new_parent() {
        let mut m = request(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"b":123456789012345678901234567890,"a":2.50}},"_meta":{{"progressToken":7,"traceparent":"{VALID}"}}}}}}"#
        ));
        let hop = propagate(&mut m);
        assert_eq!(hop.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(hop.parent_id, "00f067aa0ba902b7");
        let params = m.params().unwrap().get();
        // Untouched members keep their bytes (a 30-digit integer and 2.50 would not survive a Value round trip).
        assert!(
            params.contains(r#""arguments":{"b":123456789012345678901234567890,"a":2.50}"#),
            "{params}"
        );
        assert!(params.contains(r#""progressToken":7"#), "{params}");
        assert!(params.contains(&hop.to_value()), "{params}");
    }

    #[test]
    fn mints_a_trace_when_absent_or_invalid() {
        let mut m = request(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"traceparent":"garbage"}}}"#,
        );
        let hop = propagate(&mut m);
        assert!(TraceParent::parse(&hop.to_value()).is_some());
        assert!(!m.params().unwrap().get().contains("garbage"));
        let mut bare = request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let hop = propagate(&mut bare);
        assert_eq!(
            bare.params().unwrap().get(),
            format!(r#"{{"_meta":{{"traceparent":"{}"}}}}"#, hop.to_value())
        );
    }

    #[test]
    fn header_is_adopted_only_when_meta_has_none() {
        let header = http::HeaderValue::from_static(VALID);
        let other = "00-11111111111111111111111111111111-2222222222222222-00";
        let with_meta = request(&format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"_meta":{{"traceparent":"{other}"}}}}}}"#
        ));
        let Parsed::Single(kept) = adopt_header(Some(&header), Parsed::Single(with_meta)) else {
            panic!()
        };
        assert!(kept.params().unwrap().get().contains(other));
        let without =
            request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
        let Parsed::Single(adopted) = adopt_header(Some(&header), Parsed::Single(without)) else {
            panic!()
        };
        assert!(adopted.params().unwrap().get().contains(VALID));
        let bad = http::HeaderValue::from_static("nonsense");
        let without =
            request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#);
        let Parsed::Single(same) = adopt_header(Some(&bad), Parsed::Single(without)) else {
            panic!()
        };
        assert_eq!(same.params().unwrap().get(), r#"{"name":"x"}"#);
    }
}
