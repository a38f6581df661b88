//! `portcullis policy explain`: decide one call against a config's rules, without a running
//! gateway, and print the decision, the rule that made it, and why earlier rules did not match.
//! Exit 0 when allowed, 1 when denied or held for approval, 2 on usage or config errors, so
//! policy changes can be tested in CI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use portcullis_policy::{Effect, Request};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the decision for one call and the rule that made it.
    Explain(ExplainArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The portcullis.yaml whose `rules:` decide.
    #[arg(long, short, env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// The calling agent.
    #[arg(long)]
    agent: String,
    /// The end user the agent acts for.
    #[arg(long)]
    user: Option<String>,
    /// A role of the caller (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// The tool, as aggregated `server__tool` (for `tools/call`).
    #[arg(long)]
    tool: Option<String>,
    /// The server, for methods without a tool (default: the tool's server).
    #[arg(long)]
    server: Option<String>,
    /// The JSON-RPC method.
    #[arg(long, default_value = "tools/call")]
    method: String,
    /// The call's arguments, as a JSON object (`'{"amount":150}'`).
    #[arg(long)]
    args: Option<String>,
    /// The tool's annotations as its server lists them, as a JSON object.
    #[arg(long)]
    annotations: Option<String>,
    /// The time of the call in Unix seconds (default: now).
    #[arg(long)]
    at: Option<u64>,
}

pub fn run(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Explain(args) => match explain(&args) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("portcullis: {error:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let config = portcullis_config::load(&args.config)?;
    let json = |text: &Option<String>, what: &str| -> anyhow::Result<Option<serde_json::Value>> {
        text.as_deref()
            .map(|t| {
                serde_json::from_str(t)
                    .map_err(|e| anyhow::anyhow!("--{what} is not valid JSON: {e}"))
            })
            .transpose()
    };
    let call_args = json(&args.args, "args")?;
    let annotations = json(&args.annotations, "annotations")?;
    if args.method == "tools/call" && args.tool.is_none() {
        anyhow::bail!("--tool server__tool is required for tools/call");
    }
    let tool_server = match &args.tool {
        Some(tool) => Some(
            portcullis_core::names::split(tool)
                .map(|(server, _)| server.to_owned())
                .ok_or_else(|| anyhow::anyhow!("--tool {tool:?} is not server__tool"))?,
        ),
        None => None,
    };
    let server = args.server.clone().or(tool_server);
    let tool = (args.method == "tools/call")
        .then_some(args.tool.as_deref())
        .flatten();
    let now = args.at.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let request = Request {
        agent: &args.agent,
        user: args.user.as_deref(),
        roles: &args.roles,
        method: &args.method,
        server: server.as_deref(),
        tool,
        args: call_args.as_ref(),
        annotations: annotations.as_ref(),
        now,
    };
    let explanation = config.policy.explain(&request);
    print!("{explanation}");
    Ok(match explanation.decision.effect {
        Effect::Allow => ExitCode::SUCCESS,
        Effect::Deny | Effect::Approve => ExitCode::from(1),
    })
}
