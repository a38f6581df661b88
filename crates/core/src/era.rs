//! Protocol versions and eras. Legacy versions negotiate through `initialize` and sessions;
//! modern versions (2026-07-28 and later) carry version and capabilities in every request's
//! `_meta` and are stateless.

/// Versions negotiated through `initialize`, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];
/// Stateless versions, newest first.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
/// The newest version of each era.
pub const LATEST_LEGACY: &str = "2025-11-25";
pub const LATEST_MODERN: &str = "2026-07-28";

/// `_meta` keys that carry the modern era's per-request protocol state.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    Legacy,
    Modern,
}

/// The era of a known version string; None for versions we do not speak.
pub fn era_of(version: &str) -> Option<Era> {
    if LEGACY_VERSIONS.contains(&version) {
        Some(Era::Legacy)
    } else if MODERN_VERSIONS.contains(&version) {
        Some(Era::Modern)
    } else {
        None
    }
}

/// Legacy negotiation: the server answers with the client's version when it supports it, else
/// its own latest.
pub fn negotiate_legacy(requested: &str) -> &'static str {
    LEGACY_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST_LEGACY)
}

/// Does this version still accept JSON-RPC batches?
pub fn allows_batches(version: &str) -> bool {
    version == "2025-03-26"
}
