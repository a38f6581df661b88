//! `portcullis serve`: run a config file, or the embedded demo (SQLite, the demo upstream over
//! stdio, a fresh API key) when no config is given.

use std::net::SocketAddr;
use std::path::PathBuf;

use portcullis_config::Config;
use rand::RngCore;

/// Runs the gateway; `event_loops` threads serve requests (None: one per CPU).
pub async fn run(
    config_path: Option<PathBuf>,
    demo_listen: SocketAddr,
    event_loops: Option<usize>,
) -> anyhow::Result<()> {
    let (config, demo_token) = match config_path {
        Some(path) => (
            portcullis_config::load(&path).map_err(anyhow::Error::from)?,
            None,
        ),
        None => {
            let (config, token) = embedded_demo(demo_listen)?;
            (config, Some(token))
        }
    };
    for warning in config.warnings() {
        tracing::warn!(%warning, "config warning");
    }
    let running = portcullis_gateway::serve::start(config, event_loops, shutdown_signal()).await?;
    print_banner(
        &running.gateway.runtime().config,
        running.local_addr,
        demo_token.as_deref(),
    );
    running.done.await??;
    Ok(())
}

/// The embedded default: the demo upstream (this binary's `demo-server` verb), a random API
/// key, shown once, and a rule letting `demo-agent` use everything on `demo` (`demo__*`). It goes through the same validation as a file.
fn embedded_demo(listen: SocketAddr) -> anyhow::Result<(Config, String)> {
    let exe = std::env::current_exe()?;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("pc_demo_{}", hex::encode(bytes));
    let yaml = format!(
        "listen: \"{listen}\"\nstorage: sqlite://portcullis.db\nservers:\n  demo:\n    command: [{exe}, demo-server]\nauth:\n  api_keys:\n    - {{ agent: demo-agent, sha256: \"{digest}\" }}\nrules:\n  - {{ id: demo-agent-uses-demo, allow: {{ agents: [demo-agent], servers: [demo] }} }}\n",
        exe = serde_json::to_string(&exe.display().to_string())?,
        digest = portcullis_gateway::auth::key_digest_hex(&token),
    );
    let config =
        portcullis_config::from_yaml(&yaml, "embedded demo config").map_err(anyhow::Error::from)?;
    Ok((config, token))
}

fn print_banner(config: &Config, addr: SocketAddr, demo_token: Option<&str>) {
    let base = &config.public_url;
    println!(
        "Portcullis {} listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    );
    println!("  all catalog servers: {base}/mcp");
    for name in config.servers.keys() {
        println!("  server {name:<12}     {base}/mcp/{name}");
    }
    println!("  health:              {base}/healthz");
    if let Some(token) = demo_token {
        println!("  demo API key (agent demo-agent): {token}");
        println!(
            "  try: curl -s {base}/mcp -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\"
        );
        println!(
            "         -H 'Accept: application/json, text/event-stream' -H 'MCP-Protocol-Version: 2026-07-28' -H 'Mcp-Method: tools/list' \\"
        );
        println!(
            "         -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
