//! Content scanning and tool pinning (DESIGN.md step 8): the gateway side of `portcullis-scan`.
//!
//! - [`content`]: arguments, results, resource contents and server requests → block, redact,
//!   hold for approval, or flag, per the server's [`portcullis_config::scanners::ScanProfile`];
//! - [`schema`]: would a redaction break the tool's `outputSchema`? (then block instead);
//! - [`metadata`]: `tools/list` (and prompts, resources, server instructions) scanned for
//!   poisoning, cached by definition hash; quarantine of changed, new and poisoned tools;
//! - [`pins`]: the approved definition hash of every tool, in the store and in memory;
//! - [`catalog`]: the reviewer's view (pins and waiting versions) and approval;
//! - [`canonical`]: canonical JSON and definition hashes;
//! - [`fetch`]: a server's metadata through the gateway's connectors (`portcullis scan`).
//!
//! The proxy calls in through [`crate::proxy::scanning`] (one call per hook). Detectors are
//! compiled once per process ([`scanner`]); if they cannot be, every scan fails closed.

pub mod canonical;
pub mod catalog;
pub mod content;
pub mod fetch;
pub mod metadata;
pub mod pins;
pub mod schema;

use std::sync::OnceLock;

use portcullis_scan::Scanner;

/// The gateway's scanning state: metadata cache, observed definitions, pins.
#[derive(Debug, Default)]
pub struct Scanning {
    pub metadata: metadata::MetadataGuard,
}

impl Scanning {
    /// The pins.
    pub fn pins(&self) -> &std::sync::Arc<pins::Pins> {
        &self.metadata.pins
    }
}

static SCANNER: OnceLock<Result<Scanner, String>> = OnceLock::new();

/// The detectors, compiled on first use. Err (a built-in pattern did not compile) makes every
/// scan fail closed.
pub fn scanner() -> Result<&'static Scanner, &'static str> {
    SCANNER
        .get_or_init(|| Scanner::new().map_err(|error| error.to_string()))
        .as_ref()
        .map_err(String::as_str)
}

/// Attaches the pins to the gateway's store (migrations, first load, writer and refresher,
/// which stop at shutdown) and compiles the detectors, before the gateway serves.
pub async fn start(gateway: &crate::state::Gateway) -> anyhow::Result<()> {
    gateway
        .scanning
        .pins()
        .attach(gateway.store.clone(), gateway.shutting_down.clone())
        .await
        .map_err(|error| anyhow::anyhow!("cannot load tool pins: {error}"))?;
    if let Err(error) = tokio::task::spawn_blocking(scanner).await? {
        tracing::error!(%error, "content scanners unavailable: scanned calls will be refused");
    }
    Ok(())
}
