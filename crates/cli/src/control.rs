//! `portcullis kill|revive|token`: thin clients of a running gateway's admin API
//! (`/admin/api/v1`), for operators and scripts.
//!
//! Exit codes: 0 done; 1 the gateway refused (bad request, unauthorized, forbidden, nothing to
//! revive or revoke); 2 usage error, gateway unreachable, or a gateway failure (5xx).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the gateway is and how to authenticate to its admin API.
#[derive(Debug, Args)]
pub struct Endpoint {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "PORTCULLIS_URL",
        default_value = "http://127.0.0.1:8686",
        global = true
    )]
    url: String,
    /// An admin API token (`admin.tokens`); prefer the environment variable: argv is visible to
    /// other local users.
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    /// Print the gateway's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
}

/// `portcullis kill …`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct KillArgs {
    #[command(subcommand)]
    target: Option<TargetCommand>,
    /// List the active kill switches instead of setting one.
    #[arg(long)]
    list: bool,
    /// Why (recorded with the switch, shown in refusals).
    #[arg(long, global = true)]
    reason: Option<String>,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// `portcullis revive …`
#[derive(Debug, Args)]
pub struct ReviveArgs {
    #[command(subcommand)]
    target: TargetCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

/// What a kill switch names.
#[derive(Debug, Clone, Subcommand)]
pub enum TargetCommand {
    /// Every call of one agent.
    Agent { name: String },
    /// Every call to one catalog server.
    Server { name: String },
    /// Tool calls whose `{server}__{tool}` name matches a glob (e.g. 'fx__delete_*').
    Tool { name: String },
    /// Everything, for every agent (lockdown).
    All,
}

impl TargetCommand {
    fn body(&self) -> Value {
        match self {
            TargetCommand::Agent { name } => json!({ "scope": "agent", "name": name }),
            TargetCommand::Server { name } => json!({ "scope": "server", "name": name }),
            TargetCommand::Tool { name } => json!({ "scope": "tool", "name": name }),
            TargetCommand::All => json!({ "scope": "all" }),
        }
    }
}

/// `portcullis token …`
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a task token; prints the token alone on stdout (details on stderr). With
    /// --agent-key the agent exchanges its own key for a narrower, short-lived token; with an
    /// admin token, --agent names the agent.
    Issue {
        /// The agent's own API key or JWT (the exchange); prefer the environment variable.
        #[arg(long, env = "PORTCULLIS_AGENT_KEY", hide_env_values = true)]
        agent_key: Option<String>,
        /// The agent the token acts as (required with an admin token).
        #[arg(long)]
        agent: Option<String>,
        /// Catalog servers the token may reach, comma-separated globs (default: all).
        #[arg(long, value_delimiter = ',')]
        servers: Vec<String>,
        /// `{server}__{tool}` globs the token may call, comma-separated (default: all tools of
        /// its servers).
        #[arg(long, value_delimiter = ',')]
        tools: Vec<String>,
        /// Lifetime: 30s, 15m, 1h… (default 15m).
        #[arg(long)]
        ttl: Option<String>,
        /// Calls the token may make in total.
        #[arg(long)]
        max_calls: Option<u64>,
    },
    /// Revoke a task token at once.
    Revoke {
        /// The token's id (`tt_…`, from `token issue` or `token list`).
        id: String,
        /// Revoke as the agent that owns the token, with its own key.
        #[arg(long, env = "PORTCULLIS_AGENT_KEY", hide_env_values = true)]
        agent_key: Option<String>,
    },
    /// List task tokens (all of them for admins; an agent's own with --agent-key).
    List {
        #[arg(long, env = "PORTCULLIS_AGENT_KEY", hide_env_values = true)]
        agent_key: Option<String>,
    },
}

pub fn kill(args: KillArgs) -> ExitCode {
    let endpoint = &args.endpoint;
    match (args.list, &args.target) {
        (true, _) => run(endpoint, None, "GET", "/kill-switches", None, |answer| {
            let switches = answer["switches"].as_array().cloned().unwrap_or_default();
            if switches.is_empty() {
                eprintln!("no kill switches");
            }
            for switch in switches {
                println!("{}", describe_switch(&switch));
            }
        }),
        (false, Some(target)) => {
            let mut body = target.body();
            if let Some(reason) = &args.reason {
                body["reason"] = json!(reason);
            }
            run(
                endpoint,
                None,
                "POST",
                "/kill-switches",
                Some(body),
                |answer| {
                    println!("killed {}", describe_switch(answer));
                },
            )
        }
        (false, None) => {
            eprintln!(
                "portcullis kill: name what to kill (agent NAME, server NAME, tool GLOB, all) or --list"
            );
            ExitCode::from(2)
        }
    }
}

pub fn revive(args: ReviveArgs) -> ExitCode {
    run(
        &args.endpoint,
        None,
        "POST",
        "/kill-switches/revive",
        Some(args.target.body()),
        |answer| println!("revived {}", target_of(answer)),
    )
}

pub fn token(args: TokenArgs) -> ExitCode {
    let endpoint = &args.endpoint;
    match args.command {
        TokenCommand::Issue {
            agent_key,
            agent,
            servers,
            tools,
            ttl,
            max_calls,
        } => {
            let mut body = json!({});
            if let Some(agent) = agent {
                body["agent"] = json!(agent);
            }
            if !servers.is_empty() {
                body["servers"] = json!(servers);
            }
            if !tools.is_empty() {
                body["tools"] = json!(tools);
            }
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            if let Some(max_calls) = max_calls {
                body["max_calls"] = json!(max_calls);
            }
            run(
                endpoint,
                agent_key.as_deref(),
                "POST",
                "/tokens",
                Some(body),
                |answer| {
                    println!("{}", answer["token"].as_str().unwrap_or_default());
                    eprintln!(
                        "issued {} for agent {} (expires at {}, max calls {})",
                        answer["id"].as_str().unwrap_or("?"),
                        answer["agent"].as_str().unwrap_or("?"),
                        answer["expires_at"],
                        answer["max_calls"],
                    );
                },
            )
        }
        TokenCommand::Revoke { id, agent_key } => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                eprintln!("portcullis token revoke: {id:?} is not a token id (tt_…)");
                return ExitCode::from(2);
            }
            run(
                endpoint,
                agent_key.as_deref(),
                "DELETE",
                &format!("/tokens/{id}"),
                None,
                |answer| {
                    println!("revoked {}", answer["id"].as_str().unwrap_or("?"));
                },
            )
        }
        TokenCommand::List { agent_key } => run(
            endpoint,
            agent_key.as_deref(),
            "GET",
            "/tokens",
            None,
            |answer| {
                for token in answer["tokens"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{}\tagent={}\tservers={}\ttools={}\texpires_at={}\tcalls={}/{}\t{}",
                        token["id"].as_str().unwrap_or("?"),
                        token["agent"].as_str().unwrap_or("?"),
                        token["servers"],
                        token["tools"],
                        token["expires_at"],
                        token["calls_used"],
                        token["max_calls"],
                        if token["revoked"] == json!(true) {
                            "revoked"
                        } else {
                            "active"
                        },
                    );
                }
            },
        ),
    }
}

fn target_of(switch: &Value) -> String {
    match (switch["scope"].as_str(), switch["name"].as_str()) {
        (Some("all"), _) => "all".to_owned(),
        (Some(scope), Some(name)) => format!("{scope}:{name}"),
        _ => "?".to_owned(),
    }
}

fn describe_switch(switch: &Value) -> String {
    let reason = switch["reason"].as_str().unwrap_or_default();
    format!(
        "{}\tby={}\tat={}{}",
        target_of(switch),
        switch["created_by"].as_str().unwrap_or("?"),
        switch["created_at"],
        if reason.is_empty() {
            String::new()
        } else {
            format!("\treason={reason}")
        }
    )
}

/// Sends one admin API request (authenticated with `credential`, else the admin token) and
/// prints the answer with `print` (or as JSON with `--json`). Shared with `approvals`.
pub(crate) fn run(
    endpoint: &Endpoint,
    credential: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
    print: impl FnOnce(&Value),
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start: {error}");
            return ExitCode::from(2);
        }
    };
    let credential = credential.or(endpoint.admin_token.as_deref());
    match runtime.block_on(call(&endpoint.url, credential, method, path, body)) {
        Ok((status, answer)) if status.is_success() => {
            if endpoint.json {
                println!("{answer}");
            } else {
                print(&answer);
            }
            ExitCode::SUCCESS
        }
        Ok((status, answer)) => {
            let message = answer["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| answer.to_string());
            eprintln!("portcullis: the gateway answered {status}: {message}");
            if credential.is_none() && status == reqwest::StatusCode::UNAUTHORIZED {
                eprintln!("portcullis: set PORTCULLIS_ADMIN_TOKEN or pass --admin-token");
            }
            if status.is_server_error() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("portcullis: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn call(
    base: &str,
    credential: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(reqwest::StatusCode, Value)> {
    use anyhow::Context;
    // reqwest is built without a default rustls provider; a second install is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}/admin/api/v1{path}", base.trim_end_matches('/'));
    let parsed =
        reqwest::Url::parse(&url).with_context(|| format!("invalid gateway URL {base:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("the gateway URL must be http:// or https://");
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let method = reqwest::Method::from_bytes(method.as_bytes()).context("method")?;
    let mut request = http.request(method, parsed);
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {base}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .context("cannot read the gateway's answer")?;
    let answer = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, answer))
}
