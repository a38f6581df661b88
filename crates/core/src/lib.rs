//! Pure protocol logic of the Portcullis gateway.
//!
//! Nothing in this crate does IO: it parses, checks and rewrites MCP messages so that the edges
//! (HTTP, stdio, storage) can stay thin. Everything here is tested without sockets.
//!
//! - [`envelope`]: strict JSON-RPC 2.0 parsing (duplicate keys rejected, ids kept raw) and
//!   member-level rewriting that leaves every untouched byte as it was.
//! - [`sse`]: incremental Server-Sent Events parser and writer, with limits.
//! - [`names`]: `{server}__{name}` aggregation names and resource URI prefixes.
//! - [`era`]: protocol versions and the legacy / modern era split.
//! - [`mirror`]: modern-era HTTP header mirroring (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`) and
//!   its `-32020` HeaderMismatch validation.
//! - [`rawobj`]: one-level raw JSON objects for byte-preserving edits.

pub mod envelope;
pub mod era;
pub mod mirror;
pub mod names;
pub mod rawobj;
pub mod sse;
