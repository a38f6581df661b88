//! Shared gateway state: the running configuration, the catalog of upstream connectors, the
//! session table and the keys minted at start. Hot reload swaps the configuration and rebuilds
//! only the connectors whose server entry changed.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use portcullis_config::{Config, ServerConfig, Transport};
use rand::RngCore;

use crate::session::SessionTable;
use crate::upstream::Connector;
use crate::upstream::http::{HttpConnector, http_client};
use crate::upstream::stdio::StdioConnector;

/// One catalog server: its configuration and its live connector.
pub struct CatalogEntry {
    pub config: ServerConfig,
    pub connector: Arc<dyn Connector>,
}

/// What one configuration revision runs on. Replaced as a whole on reload.
pub struct Runtime {
    pub config: Arc<Config>,
    /// Catalog servers by name, in name order (the aggregate's fixed walking order).
    pub catalog: BTreeMap<Arc<str>, Arc<CatalogEntry>>,
    /// The credentials this revision accepts (API key index, JWT verifier with its JWKS cache).
    pub auth: Arc<crate::auth::Authenticator>,
    /// The audit trail (the gateway's, the same for every revision): here for phases that see
    /// only a revision, such as the edge recording authentication failures.
    pub audit: crate::audit_trail::AuditTrail,
}

impl Runtime {
    pub fn server(&self, name: &str) -> Option<&Arc<CatalogEntry>> {
        self.catalog.get(name)
    }
}

/// The process-wide state every request handler shares.
pub struct Gateway {
    runtime: RwLock<Arc<Runtime>>,
    pub sessions: SessionTable,
    /// Open connections of the legacy HTTP+SSE transport (2024-11-05).
    pub legacy_sse: crate::edge::legacy_sse::Connections,
    /// Key of the MACs on gateway-minted pagination cursors; random per process.
    pub cursor_key: [u8; 32],
    /// Upstream calls held across a modern client's `input_required` rounds.
    pub held: crate::proxy::held::HeldCalls,
    http: reqwest::Client,
    /// Cancelled when the gateway starts shutting down: every open SSE stream ends, so graceful
    /// shutdown does not wait on long-lived streams.
    pub shutting_down: tokio_util::sync::CancellationToken,
    /// Tool schemas with header-mirrored parameters, learned from `tools/list` results.
    pub tool_schemas: Arc<crate::tool_schemas::ToolSchemas>,
    /// The control-plane store (`storage:`): kill switches, task tokens, pins, approvals.
    pub store: portcullis_store::Store,
    /// This replica's audit chain writer (`audit:`); shut down (final checkpoint) last.
    pub audit: crate::audit_trail::AuditTrail,
    /// Prometheus metrics (`/metrics`); other modules register theirs here.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Content scanning state: metadata scans by definition hash, observed tools, pins.
    pub scanning: crate::scanning::Scanning,
    /// Kill switches, task tokens and rate limits (issue 3); checked by `proxy::control`.
    pub control: Arc<portcullis_control::Control>,
    /// Approval requests (issue 6): held calls of this process, the approvals store.
    pub approvals: crate::approval::Approvals,
    /// OpenTelemetry traces (`telemetry:`); off unless configured. Fixed at start.
    pub telemetry: crate::telemetry::Telemetry,
}

impl Gateway {
    /// Builds the state and the connectors of the initial configuration (connectors connect
    /// lazily, on first use).
    pub fn new(
        config: Config,
        store: portcullis_store::Store,
        audit: crate::audit_trail::AuditTrail,
        control: Arc<portcullis_control::Control>,
    ) -> Arc<Gateway> {
        let http = http_client();
        let tool_schemas = Arc::new(crate::tool_schemas::ToolSchemas::default());
        let catalog = build_catalog(&config, &BTreeMap::new(), &http, &tool_schemas);
        let mut cursor_key = [0u8; 32];
        rand::rng().fill_bytes(&mut cursor_key);
        let approvals = crate::approval::Approvals::new(store.clone(), http.clone());
        let telemetry = crate::telemetry::Telemetry::start(&config.telemetry, audit.metrics());
        Arc::new(Gateway {
            runtime: RwLock::new(Arc::new(Runtime {
                auth: Arc::new(
                    crate::auth::Authenticator::for_revision(&config, None, &http)
                        .with_task_tokens(control.clone()),
                ),
                config: Arc::new(config),
                catalog,
                audit: audit.clone(),
            })),
            sessions: SessionTable::default(),
            legacy_sse: Default::default(),
            tool_schemas,
            shutting_down: tokio_util::sync::CancellationToken::new(),
            held: Default::default(),
            cursor_key,
            http,
            store,
            metrics: audit.metrics().clone(),
            audit,
            scanning: Default::default(),
            approvals,
            control,
            telemetry,
        })
    }

    /// The current revision. Cheap: one read lock and an `Arc` clone.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.read().expect("poisoned").clone()
    }

    /// Applies a new configuration. Servers whose entry is unchanged keep their connector (and
    /// so their upstream sessions and child processes); removed or changed ones are shut down.
    /// The listen address cannot change without a restart; the caller warns about that.
    pub async fn reload(&self, config: Config) {
        let old = self.runtime();
        let catalog = build_catalog(&config, &old.catalog, &self.http, &self.tool_schemas);
        let retired: Vec<Arc<CatalogEntry>> = old
            .catalog
            .iter()
            .filter(|(name, entry)| {
                catalog
                    .get(*name)
                    .is_none_or(|new| !Arc::ptr_eq(new, entry))
            })
            .map(|(_, entry)| entry.clone())
            .collect();
        let auth = crate::auth::Authenticator::for_revision(&config, Some(&old.auth), &self.http)
            .with_task_tokens(self.control.clone());
        self.control.configure(&config.limits.rate);
        *self.runtime.write().expect("poisoned") = Arc::new(Runtime {
            config: Arc::new(config),
            catalog,
            auth: Arc::new(auth),
            audit: self.audit.clone(),
        });
        for entry in retired {
            tracing::info!(server = %entry.config.name, "catalog server removed or changed; stopping its connector");
            entry.connector.shutdown().await;
        }
    }

    /// Stops every connector (children reaped, upstream sessions deleted), then the audit
    /// writer (queued records committed, final signed checkpoint).
    pub async fn shutdown(&self) {
        let runtime = self.runtime();
        for entry in runtime.catalog.values() {
            entry.connector.shutdown().await;
        }
        self.audit.shutdown().await;
    }
}

fn build_catalog(
    config: &Config,
    previous: &BTreeMap<Arc<str>, Arc<CatalogEntry>>,
    http: &reqwest::Client,
    tool_schemas: &Arc<crate::tool_schemas::ToolSchemas>,
) -> BTreeMap<Arc<str>, Arc<CatalogEntry>> {
    config
        .servers
        .iter()
        .map(|(name, server)| {
            let entry = match previous.get(name.as_str()) {
                Some(existing) if existing.config == *server => existing.clone(),
                _ => Arc::new(CatalogEntry {
                    config: server.clone(),
                    connector: connector_for(server, http, tool_schemas),
                }),
            };
            (Arc::<str>::from(name.as_str()), entry)
        })
        .collect()
}

fn connector_for(
    server: &ServerConfig,
    http: &reqwest::Client,
    tool_schemas: &Arc<crate::tool_schemas::ToolSchemas>,
) -> Arc<dyn Connector> {
    match &server.transport {
        Transport::Stdio { .. } => Arc::new(StdioConnector::spawn(server)),
        Transport::Http { .. } => Arc::new(
            HttpConnector::new(server, http.clone()).with_tool_schemas(tool_schemas.clone()),
        ),
    }
}
