//! Input schemas of upstream tools that declare `x-mcp-header` parameters (2026-07-28 header
//! mirroring). The gateway needs them twice: to check the `Mcp-Param-*` headers a client sends
//! against the body, and to generate the ones the upstream expects after un-namespacing. They
//! are learned from `tools/list` results as they pass through, so the data plane never waits on
//! the network for them; a tool whose schema has not been seen yet gets no `Mcp-Param-*` headers
//! and the upstream decides (it rejects a call missing a required one, failing closed).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use portcullis_core::envelope::Envelope;
use portcullis_core::rawobj::RawObject;
use serde_json::Value;
use serde_json::value::RawValue;

/// (server, upstream tool name).
type ToolKey = (Arc<str>, String);

/// Tool schemas with header-mirrored parameters, by (server, upstream tool name).
#[derive(Debug, Default)]
pub struct ToolSchemas {
    schemas: RwLock<HashMap<ToolKey, Arc<Value>>>,
    /// Description and annotations of every tool listed (shown to approval reviewers).
    described: RwLock<HashMap<ToolKey, Arc<ToolInfo>>>,
}

/// What a tool's server last said about it in `tools/list` (untrusted hints).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolInfo {
    pub description: Option<String>,
    pub annotations: Option<Value>,
}

/// Upper bound on remembered schemas, so a hostile upstream cannot grow memory without bound.
const MAX_SCHEMAS: usize = 10_000;

impl ToolSchemas {
    /// Learns from a `tools/list` response of `server` (tool names as the upstream knows them).
    pub fn observe_list(&self, server: &str, response: &Envelope) {
        let Some(result) = response.member("result").and_then(RawObject::parse) else {
            return;
        };
        let Some(tools) = result.get("tools") else {
            return;
        };
        let mirrored = tools.get().contains("x-mcp-header");
        let Ok(tools) = serde_json::from_str::<Vec<Box<RawValue>>>(tools.get()) else {
            return;
        };
        self.describe(server, &tools);
        if !mirrored {
            return;
        }
        let mut schemas = self.schemas.write().expect("poisoned");
        for tool in tools {
            let Some(tool) = RawObject::parse(&tool) else {
                continue;
            };
            let (Some(name), Some(schema)) = (tool.get_str("name"), tool.get("inputSchema")) else {
                continue;
            };
            if !schema.get().contains("x-mcp-header") || schemas.len() >= MAX_SCHEMAS {
                continue;
            }
            if let Ok(schema) = serde_json::from_str::<Value>(schema.get()) {
                schemas.insert((server.into(), name), Arc::new(schema));
            }
        }
    }

    /// Remembers each listed tool's description and annotations.
    fn describe(&self, server: &str, tools: &[Box<RawValue>]) {
        let mut described = self.described.write().expect("poisoned");
        for tool in tools {
            let Some(tool) = RawObject::parse(tool) else {
                continue;
            };
            let Some(name) = tool.get_str("name") else {
                continue;
            };
            let key = (Arc::<str>::from(server), name);
            if described.len() >= MAX_SCHEMAS && !described.contains_key(&key) {
                continue;
            }
            let info = ToolInfo {
                description: tool.get_str("description"),
                annotations: tool
                    .get("annotations")
                    .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            };
            described.insert(key, Arc::new(info));
        }
    }

    /// The description and annotations `server` last listed for `tool` (upstream name).
    pub fn info(&self, server: &str, tool: &str) -> Option<Arc<ToolInfo>> {
        self.described
            .read()
            .expect("poisoned")
            .get(&(Arc::<str>::from(server), tool.to_owned()))
            .cloned()
    }

    /// No tool seen so far mirrors parameters (the common case: lookups can be skipped).
    pub fn is_empty(&self) -> bool {
        self.schemas.read().expect("poisoned").is_empty()
    }

    /// The schema of a tool, if it has header-mirrored parameters.
    pub fn get(&self, server: &str, tool: &str) -> Option<Arc<Value>> {
        self.schemas
            .read()
            .expect("poisoned")
            .get(&(Arc::<str>::from(server), tool.to_owned()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::envelope::{Limits, Parsed, parse};

    #[test]
    fn only_tools_with_mirrored_headers_are_remembered() {
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"plain","inputSchema":{"type":"object"}},
            {"name":"regional","inputSchema":{"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"}}}}]}}"#;
        let Parsed::Single(response) = parse(text.as_bytes(), &Limits::default()).unwrap() else {
            panic!()
        };
        let schemas = ToolSchemas::default();
        schemas.observe_list("fx", &response);
        assert!(schemas.get("fx", "plain").is_none());
        assert_eq!(
            schemas.get("fx", "regional").unwrap()["properties"]["region"]["x-mcp-header"],
            "Region"
        );
        assert!(schemas.get("other", "regional").is_none());
    }

    #[test]
    fn descriptions_and_annotations_of_every_tool_are_remembered() {
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"refund","description":"Refund a charge","annotations":{"destructiveHint":true},"inputSchema":{"type":"object"}},
            {"name":"bare","inputSchema":{"type":"object"}}]}}"#;
        let Parsed::Single(response) = parse(text.as_bytes(), &Limits::default()).unwrap() else {
            panic!()
        };
        let schemas = ToolSchemas::default();
        schemas.observe_list("billing", &response);
        let info = schemas.info("billing", "refund").unwrap();
        assert_eq!(info.description.as_deref(), Some("Refund a charge"));
        assert_eq!(info.annotations.as_ref().unwrap()["destructiveHint"], true);
        assert_eq!(
            *schemas.info("billing", "bare").unwrap(),
            ToolInfo::default()
        );
        assert!(schemas.info("other", "refund").is_none());
        assert!(schemas.is_empty(), "no mirrored headers were listed");
    }
}
