//! `portcullis approvals list|show|approve|deny`: reviewers' verbs over a running gateway's
//! admin API (`/admin/api/v1/approvals`), with the same endpoint options and exit codes as
//! `kill` / `token` (shared client in [`crate::control`]): 0 done; 1 the gateway refused (not
//! pending any more, already decided by you, your own call, role too low, unknown id); 2 usage
//! error, gateway unreachable or failing.
//!
//! The reviewer is whoever the admin token belongs to; the caller of a held call is refused.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::control::{Endpoint, run};

/// `portcullis approvals …`
#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    #[command(subcommand)]
    command: ApprovalsCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Requests, newest first (default: pending ones).
    List {
        /// pending, approved, denied, expired, abandoned, or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// At most this many (1–500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One request: the call (arguments redacted), the tool's description and annotations,
    /// scanner findings, and the decisions so far.
    Show { id: String },
    /// Approve a held call (a two-person rule needs a second, different reviewer).
    Approve {
        id: String,
        /// Why (recorded with the decision).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a held call; the caller gets the reason in its error.
    Deny {
        id: String,
        /// Why (required; sent to the caller).
        #[arg(long)]
        reason: String,
    },
}

pub fn run_approvals(args: ApprovalsArgs) -> ExitCode {
    let endpoint = &args.endpoint;
    match args.command {
        ApprovalsCommand::List { status, limit } => {
            let filter = if status == "all" {
                String::new()
            } else {
                format!("status={status}&")
            };
            let path = format!("/approvals?{filter}limit={limit}");
            run(endpoint, None, "GET", &path, None, |answer| {
                let items = answer["approvals"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    eprintln!("no approval requests");
                }
                for item in &items {
                    println!("{}", one_line(item));
                }
            })
        }
        ApprovalsCommand::Show { id } => run(
            endpoint,
            None,
            "GET",
            &format!("/approvals/{id}"),
            None,
            |answer| println!("{}", details(answer)),
        ),
        ApprovalsCommand::Approve { id, reason } => decide(endpoint, &id, "approve", reason),
        ApprovalsCommand::Deny { id, reason } => decide(endpoint, &id, "deny", Some(reason)),
    }
}

fn decide(endpoint: &Endpoint, id: &str, verdict: &str, reason: Option<String>) -> ExitCode {
    let path = format!("/approvals/{id}/{verdict}");
    run(
        endpoint,
        None,
        "POST",
        &path,
        Some(json!({ "reason": reason })),
        |answer| match answer["final"].as_bool() {
            Some(false) => println!(
                "{id}: approval recorded ({} of {}); still pending",
                answer["approvals"], answer["needed"]
            ),
            _ => println!("{id}: {}", answer["status"].as_str().unwrap_or("?")),
        },
    )
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("-")
}

/// `id status tool agent=… user=… rule=… approvals=n/m remaining…`
fn one_line(item: &Value) -> String {
    let remaining = item["deadline_ms"]
        .as_i64()
        .map(|deadline| (deadline - portcullis_approvals_now()).max(0) / 1000)
        .unwrap_or(0);
    let status = text(item, "status");
    let timing = if status == "pending" {
        format!("\texpires_in={remaining}s")
    } else {
        format!("\treason={}", text(item, "reason"))
    };
    format!(
        "{}\t{status}\t{}\tagent={}\tuser={}\trule={}\tapprovals={}/{}{timing}\targs={}",
        text(item, "id"),
        text(item, "tool"),
        item["caller"]["agent"].as_str().unwrap_or("-"),
        item["caller"]["user"].as_str().unwrap_or("-"),
        text(item, "rule_id"),
        item["approvals"],
        item["approvals_needed"],
        item["presentation"]["arguments"],
    )
}

/// A multi-line description of one request.
fn details(item: &Value) -> String {
    let p = &item["presentation"];
    let mut out = vec![
        format!("request    {}", text(item, "id")),
        format!("status     {}", text(item, "status")),
        format!(
            "tool       {} (server {})",
            text(item, "tool"),
            text(item, "server")
        ),
        format!(
            "caller     agent {} user {} credential {}",
            item["caller"]["agent"].as_str().unwrap_or("-"),
            item["caller"]["user"].as_str().unwrap_or("-"),
            item["caller"]["credential_id"].as_str().unwrap_or("-"),
        ),
        format!(
            "rule       {} (needs {} approver(s) with role {})",
            text(item, "rule_id"),
            item["approvals_needed"],
            text(item, "required_role")
        ),
        format!(
            "described  {}",
            p["description"].as_str().unwrap_or("(not listed)")
        ),
        format!("annotations {}", p["annotations"]),
        format!("arguments  {} (PII and secrets redacted)", p["arguments"]),
        format!("findings   {}", p["findings"]),
    ];
    for decision in item["decisions"].as_array().into_iter().flatten() {
        out.push(format!(
            "decision   {} by {} ({}) via {}: {}",
            text(decision, "verdict"),
            text(decision, "reviewer"),
            text(decision, "role"),
            text(decision, "channel"),
            text(decision, "reason"),
        ));
    }
    if let Some(reason) = item["reason"].as_str() {
        out.push(format!("reason     {reason}"));
    }
    out.join("\n")
}

/// Unix milliseconds now.
fn portcullis_approvals_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
