//! Adapt phase: reshape what comes back from an upstream for the client's era and route.
//!
//! - Modern clients get `resultType` on every result and caching hints on list, read and
//!   discover results. The gateway serves lists per principal, so `cacheScope` is always
//!   `private` (never relay an upstream's `public`).
//! - On the aggregate, URIs in notifications are wrapped into the gateway's namespace.

use portcullis_core::envelope::{Envelope, Kind, to_raw};
use portcullis_core::era::Era;
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;

use super::Face;
use crate::route::Route;

/// Methods whose complete results carry caching hints in the modern era.
fn carries_cache_hints(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

/// Adapts a final response for the client.
pub fn response(face: &Face, method: &str, mut message: Envelope) -> Envelope {
    if face.era != Era::Modern || message.kind() != Kind::Result {
        return message;
    }
    let Some(mut result) = message.member("result").and_then(RawObject::parse) else {
        return message;
    };
    adapt_modern_result(method, &mut result);
    message.set_member("result", result.to_raw());
    message
}

/// Adds what a modern result must carry and a legacy upstream does not send.
pub fn adapt_modern_result(method: &str, result: &mut RawObject) {
    let result_type = result.get_str("resultType");
    if result_type.is_none() {
        result.set("resultType", to_raw("complete"));
    }
    if carries_cache_hints(method) && result_type.as_deref().is_none_or(|t| t == "complete") {
        if result.get("ttlMs").is_none() {
            result.set("ttlMs", to_raw(&0));
        }
        result.set("cacheScope", to_raw("private"));
    }
}

/// Adapts a notification from `server` for the client; None drops it.
pub fn notification(route: &Route, server: &str, mut message: Envelope) -> Option<Envelope> {
    if *route != Route::Aggregate {
        return Some(message);
    }
    if message.method() == Some("notifications/resources/updated") {
        let mut params = message.params().and_then(RawObject::parse)?;
        let uri = params.get_str("uri")?;
        params.set("uri", to_raw(&names::wrap_uri(server, &uri)));
        message.set_member("params", params.to_raw());
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::envelope::{Limits, Parsed, parse};

    fn envelope(text: &str) -> Envelope {
        match parse(text.as_bytes(), &Limits::default()).unwrap() {
            Parsed::Single(e) => e,
            Parsed::Batch(_) => panic!("batch"),
        }
    }

    fn modern() -> Face {
        Face {
            era: Era::Modern,
            version: "2026-07-28".into(),
            accepts_sse: true,
        }
    }

    #[test]
    fn legacy_list_result_gains_modern_fields_and_private_scope() {
        let message =
            envelope(r#"{"jsonrpc":"2.0","id":7,"result":{"tools":[],"cacheScope":"public"}}"#);
        let adapted = response(&modern(), "tools/list", message);
        let value: serde_json::Value = serde_json::from_slice(&adapted.to_bytes()).unwrap();
        assert_eq!(value["result"]["resultType"], "complete");
        assert_eq!(value["result"]["cacheScope"], "private");
        assert_eq!(value["result"]["ttlMs"], 0);
        assert_eq!(value["id"], 7);
    }

    #[test]
    fn input_required_results_get_no_cache_hints() {
        let message = envelope(
            r#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","requestState":"x"}}"#,
        );
        let adapted = response(&modern(), "resources/read", message);
        let value: serde_json::Value = serde_json::from_slice(&adapted.to_bytes()).unwrap();
        assert!(value["result"].get("cacheScope").is_none());
    }

    #[test]
    fn legacy_clients_get_results_unchanged() {
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let face = Face {
            era: Era::Legacy,
            version: "2025-11-25".into(),
            accepts_sse: true,
        };
        assert_eq!(
            response(&face, "tools/list", envelope(text)).to_bytes(),
            text.as_bytes()
        );
    }

    #[test]
    fn resource_updates_are_wrapped_on_the_aggregate() {
        let message = envelope(
            r#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"test://a"}}"#,
        );
        let adapted = notification(&Route::Aggregate, "fx", message).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&adapted.to_bytes()).unwrap();
        assert_eq!(value["params"]["uri"], "portcullis://fx/test://a");
    }
}
