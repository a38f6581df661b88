//! Lists on the aggregate endpoint: every catalog server's tools, prompts, resources and
//! resource templates merged into one namespace, with cursors minted by the gateway.
//!
//! Servers are walked in catalog (name) order. A page holds the items of as many servers as fit
//! in [`PAGE_TARGET`] without splitting an upstream's own page; when an upstream paginates, the
//! gateway's cursor records (list method, server, upstream cursor) under an HMAC bound to the
//! principal, so a cursor is useless to anyone else and cannot be forged or edited. A server that
//! fails to answer is left out of the page and logged; the rest of the catalog still lists.
//! Items the caller may not use (policy, see [`super::policy::visible`]) are left out.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use portcullis_core::envelope::{Envelope, to_raw};
use portcullis_core::names;
use portcullis_core::rawobj::RawObject;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use super::errors::{INVALID_PARAMS, ProxyError};
use super::{Call, Reply, adapt, forward};
use crate::route::Route;
use crate::state::CatalogEntry;
use crate::upstream::UpstreamEvent;

/// Items per page the aggregate aims for before cutting a page at a server boundary.
pub const PAGE_TARGET: usize = 500;

/// Handles `tools/list`, `prompts/list`, `resources/list`, `resources/templates/list`.
pub async fn list(call: &Call, message: Envelope) -> Result<Reply, ProxyError> {
    let method = message.method().unwrap_or_default().to_owned();
    if let Route::Server(name) = &call.route {
        let entry = call.runtime.server(name).cloned().ok_or_else(|| {
            ProxyError::client(
                super::errors::UNKNOWN_SERVER,
                format!("no catalog server named {name:?}"),
            )
        })?;
        return forward::forward(call, &entry, message, &method).await;
    }
    let kind = ListKind::of(&method).expect("dispatch sends only list methods here");
    let params = match message.params() {
        Some(raw) => RawObject::parse(raw).ok_or_else(|| {
            ProxyError::client(
                INVALID_PARAMS,
                format!("{method}: params must be an object"),
            )
        })?,
        None => RawObject::default(),
    };
    let start = match params.get("cursor").filter(|raw| raw.get() != "null") {
        Some(raw) => {
            let text: String = serde_json::from_str(raw.get()).map_err(|_| invalid_cursor())?;
            let cursor = decode_cursor(&call.gateway.cursor_key, &call.principal, &text)
                .ok_or_else(invalid_cursor)?;
            if cursor.method != method {
                return Err(invalid_cursor());
            }
            Some(cursor)
        }
        None => None,
    };
    let servers: Vec<Arc<CatalogEntry>> = call.runtime.catalog.values().cloned().collect();
    let start_index = match &start {
        Some(cursor) => servers
            .iter()
            .position(|e| e.config.name == cursor.server)
            .ok_or_else(invalid_cursor)?,
        None => 0,
    };

    let mut items: Vec<Box<RawValue>> = Vec::new();
    let mut next: Option<PageCursor> = None;
    for (offset, entry) in servers[start_index..].iter().enumerate() {
        if items.len() >= PAGE_TARGET {
            next = Some(PageCursor {
                method: method.clone(),
                server: entry.config.name.clone(),
                upstream: None,
            });
            break;
        }
        let upstream_cursor = if offset == 0 {
            start.as_ref().and_then(|c| c.upstream.clone())
        } else {
            None
        };
        let request = page_request(&message, &method, &params, upstream_cursor.as_deref());
        match list_one(call, entry, request, kind).await {
            Ok(page) => {
                let policy = &call.runtime.config.policy;
                items.extend(
                    page.items
                        .iter()
                        .filter(|item| {
                            // Only what the caller may use (policy), judged on the upstream's
                            // own item (its annotations included).
                            serde_json::from_str::<serde_json::Value>(item.get()).is_ok_and(|v| {
                                super::policy::visible(
                                    policy,
                                    &call.principal,
                                    &method,
                                    &entry.config.name,
                                    &v,
                                )
                            })
                        })
                        .filter_map(|item| rename(kind, &entry.config.name, item)),
                );
                if let Some(upstream) = page.next_cursor {
                    next = Some(PageCursor {
                        method: method.clone(),
                        server: entry.config.name.clone(),
                        upstream: Some(upstream),
                    });
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(server = %entry.config.name, method, error = %error.message, "server left out of the aggregate list")
            }
        }
    }

    let mut result = RawObject::default();
    result.set(kind.field(), to_raw(&items));
    if let Some(next) = next {
        result.set(
            "nextCursor",
            to_raw(&encode_cursor(
                &call.gateway.cursor_key,
                &call.principal,
                &next,
            )),
        );
    }
    if call.face.era == portcullis_core::era::Era::Modern {
        adapt::adapt_modern_result(&method, &mut result);
    }
    let id = message
        .id()
        .map(|raw| raw.to_owned())
        .unwrap_or_else(|| to_raw(&0));
    Ok(Reply::ok(Envelope::result(id, result.to_raw())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl ListKind {
    fn of(method: &str) -> Option<ListKind> {
        Some(match method {
            "tools/list" => ListKind::Tools,
            "prompts/list" => ListKind::Prompts,
            "resources/list" => ListKind::Resources,
            "resources/templates/list" => ListKind::Templates,
            _ => return None,
        })
    }

    /// The member of the result holding the items.
    fn field(self) -> &'static str {
        match self {
            ListKind::Tools => "tools",
            ListKind::Prompts => "prompts",
            ListKind::Resources => "resources",
            ListKind::Templates => "resourceTemplates",
        }
    }
}

/// The request for one upstream page: the client's params (with its `_meta`) and the
/// upstream's own cursor instead of the gateway's.
fn page_request(
    message: &Envelope,
    method: &str,
    params: &RawObject,
    cursor: Option<&str>,
) -> Envelope {
    let mut upstream_params = params.clone();
    upstream_params.remove("cursor");
    if let Some(cursor) = cursor {
        upstream_params.set("cursor", to_raw(cursor));
    }
    let id = message
        .id()
        .map(|raw| raw.to_owned())
        .unwrap_or_else(|| to_raw(&0));
    Envelope::request(id, method, Some(upstream_params.to_raw()))
}

struct Page {
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

async fn list_one(
    call: &Call,
    entry: &CatalogEntry,
    request: Envelope,
    kind: ListKind,
) -> Result<Page, ProxyError> {
    let mut exchange = entry.connector.request(&call.caller, request).await?;
    let response = loop {
        match exchange.events.recv().await {
            Some(UpstreamEvent::Response(response)) => break response,
            Some(UpstreamEvent::Notification(_)) => {}
            Some(UpstreamEvent::Request { request, reply }) => {
                let refusal = Envelope::error(
                    request.id().map(|r| r.to_owned()),
                    super::errors::METHOD_NOT_FOUND,
                    "server requests are not relayed during an aggregate list",
                    None,
                );
                let _ = reply.send(refusal);
            }
            None => {
                return Err(ProxyError::upstream(
                    super::errors::UPSTREAM_UNAVAILABLE,
                    "upstream ended the list call without a response",
                ));
            }
        }
    };
    if kind == ListKind::Tools {
        call.gateway
            .tool_schemas
            .observe_list(&entry.config.name, &response);
    }
    if let Some(error) = response.member("error") {
        return Err(ProxyError::upstream(
            super::errors::UPSTREAM_UNAVAILABLE,
            format!("upstream answered with an error: {}", error.get()),
        ));
    }
    let result = response
        .member("result")
        .and_then(RawObject::parse)
        .ok_or_else(|| {
            ProxyError::upstream(
                super::errors::UPSTREAM_UNAVAILABLE,
                "list result is not an object",
            )
        })?;
    let items = match result.get(kind.field()) {
        Some(raw) => serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()).map_err(|_| {
            ProxyError::upstream(
                super::errors::UPSTREAM_UNAVAILABLE,
                format!("list result's {} is not an array", kind.field()),
            )
        })?,
        None => Vec::new(),
    };
    let last_page = result
        .get("nextCursor")
        .is_none_or(|raw| raw.get() == "null");
    // Tool metadata: poisoned, changed (rug pull) and unapproved new items are left out.
    let items = super::scanning::screen_list_items(
        &call.gateway,
        &entry.config.name,
        kind.field(),
        items,
        last_page,
    );
    // Kill switches and the caller's task token scope.
    let items = super::control::screen_list_items(
        &call.gateway,
        &call.principal,
        &entry.config.name,
        kind.field(),
        items,
    );
    let next_cursor = result.get_str("nextCursor");
    Ok(Page { items, next_cursor })
}

/// Namespaces one item; items without the expected string member are dropped (and logged).
fn rename(kind: ListKind, server: &str, item: &RawValue) -> Option<Box<RawValue>> {
    let mut object = RawObject::parse(item)?;
    let (key, renamed) = match kind {
        ListKind::Tools | ListKind::Prompts => {
            ("name", names::join(server, &object.get_str("name")?))
        }
        ListKind::Resources => ("uri", names::wrap_uri(server, &object.get_str("uri")?)),
        ListKind::Templates => (
            "uriTemplate",
            names::wrap_uri(server, &object.get_str("uriTemplate")?),
        ),
    };
    object.set(key, to_raw(&renamed));
    Some(object.to_raw())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PageCursor {
    #[serde(rename = "m")]
    method: String,
    #[serde(rename = "s")]
    server: String,
    #[serde(rename = "c")]
    upstream: Option<String>,
}

type HmacSha256 = Hmac<Sha256>;

fn cursor_mac(key: &[u8; 32], principal: &crate::auth::Principal, payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(principal.credential_id.as_bytes());
    mac.update(b"\0");
    mac.update(principal.agent.as_bytes());
    mac.update(b"\0");
    mac.update(payload);
    mac
}

fn encode_cursor(
    key: &[u8; 32],
    principal: &crate::auth::Principal,
    cursor: &PageCursor,
) -> String {
    let payload = serde_json::to_vec(cursor).expect("serialisable");
    let tag = cursor_mac(key, principal, &payload).finalize().into_bytes();
    format!("{}.{}", hex::encode(&payload), hex::encode(&tag[..16]))
}

fn decode_cursor(
    key: &[u8; 32],
    principal: &crate::auth::Principal,
    text: &str,
) -> Option<PageCursor> {
    let (payload_hex, tag_hex) = text.split_once('.')?;
    if payload_hex.len() > 8192 {
        return None;
    }
    let payload = hex::decode(payload_hex).ok()?;
    let tag = hex::decode(tag_hex).ok()?;
    cursor_mac(key, principal, &payload)
        .verify_truncated_left(&tag)
        .ok()?;
    serde_json::from_slice(&payload).ok()
}

fn invalid_cursor() -> ProxyError {
    ProxyError::client(INVALID_PARAMS, "invalid or expired cursor")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Principal};

    fn principal(agent: &str) -> Principal {
        Principal {
            agent: agent.into(),
            user: None,
            method: AuthMethod::ApiKey,
            credential_id: format!("key:{agent}").into(),
            roles: std::sync::Arc::from([]),
            token_id: None,
            task: None,
        }
    }

    #[test]
    fn cursor_round_trips_for_its_principal_only() {
        let key = [7u8; 32];
        let cursor = PageCursor {
            method: "tools/list".into(),
            server: "fx".into(),
            upstream: Some("abc".into()),
        };
        let text = encode_cursor(&key, &principal("alice"), &cursor);
        assert_eq!(
            decode_cursor(&key, &principal("alice"), &text),
            Some(cursor)
        );
        assert_eq!(decode_cursor(&key, &principal("mallory"), &text), None);
        assert_eq!(decode_cursor(&[8u8; 32], &principal("alice"), &text), None);
    }

    #[test]
    fn forged_cursor_is_refused() {
        let key = [7u8; 32];
        let cursor = PageCursor {
            method: "tools/list".into(),
            server: "fx".into(),
            upstream: None,
        };
        let text = encode_cursor(&key, &principal("alice"), &cursor);
        let (_, tag) = text.split_once('.').unwrap();
        let forged = PageCursor {
            method: "tools/list".into(),
            server: "secret".into(),
            upstream: None,
        };
        let forged_text = format!(
            "{}.{tag}",
            hex::encode(serde_json::to_vec(&forged).unwrap())
        );
        assert_eq!(decode_cursor(&key, &principal("alice"), &forged_text), None);
        assert_eq!(decode_cursor(&key, &principal("alice"), "garbage"), None);
        assert_eq!(decode_cursor(&key, &principal("alice"), "zz.zz"), None);
    }

    #[test]
    fn items_are_namespaced_by_kind() {
        let tool =
            to_raw(&serde_json::json!({"name": "echo", "inputSchema": {"$defs": {"a": {}}}}));
        let renamed: serde_json::Value =
            serde_json::from_str(rename(ListKind::Tools, "fx", &tool).unwrap().get()).unwrap();
        assert_eq!(renamed["name"], "fx__echo");
        assert!(renamed["inputSchema"]["$defs"].is_object());
        let template =
            to_raw(&serde_json::json!({"uriTemplate": "test://template/{id}/data", "name": "t"}));
        let renamed: serde_json::Value =
            serde_json::from_str(rename(ListKind::Templates, "fx", &template).unwrap().get())
                .unwrap();
        assert_eq!(
            renamed["uriTemplate"],
            "portcullis://fx/test://template/{id}/data"
        );
        assert!(
            rename(
                ListKind::Tools,
                "fx",
                &to_raw(&serde_json::json!({"title": "no name"}))
            )
            .is_none()
        );
    }
}
