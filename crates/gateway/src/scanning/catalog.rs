//! The catalog of tool versions as reviewers see it (`portcullis catalog`, `GET /catalog` of
//! the admin API): per (server, tool) its pin and the versions waiting for approval, read from
//! the store ([`super::pins`]), and approval of a waiting version.
//!
//! A tool is `pinned` when nothing waits; `changed` when a version other than the pinned one was
//! quarantined after the pin was made (a rug pull); `new` or `poisoned` when it has no pin and
//! was quarantined on sight. Versions recorded as `pinned` (the definitions behind earlier pins)
//! are history, never waiting.

use std::collections::BTreeMap;

use portcullis_store::{Store, StoreError};
use serde_json::{Value, json};

use super::metadata::short;
use super::pins::{self, DefinitionRow, Pin};

/// What the store knows about one tool.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub pin: Option<Pin>,
    /// Every recorded version, oldest first.
    pub versions: Vec<DefinitionRow>,
}

impl Entry {
    /// Versions waiting for approval, most recently seen first.
    pub fn waiting(&self) -> Vec<&DefinitionRow> {
        let mut out: Vec<&DefinitionRow> = self
            .versions
            .iter()
            .filter(|v| v.event != "pinned")
            .filter(|v| match &self.pin {
                Some(pin) => v.hash != pin.hash && v.last_seen >= pin.at,
                None => true,
            })
            .collect();
        out.sort_by_key(|v| std::cmp::Reverse(v.last_seen));
        out
    }

    /// `pinned`, `changed`, `new` or `poisoned`.
    pub fn state(&self) -> &'static str {
        let waiting = self.waiting();
        match (&self.pin, waiting.first()) {
            (Some(_), None) => "pinned",
            (_, Some(v)) if v.event == "poisoned" => "poisoned",
            (Some(_), Some(_)) => "changed",
            (None, _) => "new",
        }
    }

    /// The recorded definition behind the pin, if any.
    pub fn pinned_definition(&self) -> Option<&DefinitionRow> {
        let pin = self.pin.as_ref()?;
        self.versions.iter().find(|v| v.hash == pin.hash)
    }

    /// The JSON form (`catalog list --json`, the admin API).
    pub fn to_json(&self, server: &str, tool: &str) -> Value {
        json!({
            "server": server,
            "tool": tool,
            "state": self.state(),
            "pinned": self.pin.as_ref().map(|p| json!({"sha256": p.hash, "by": p.by, "at": p.at})),
            "waiting": self.waiting().iter().map(|v| json!({
                "sha256": v.hash, "event": v.event, "first_seen": v.first_seen,
                "last_seen": v.last_seen,
                "findings": serde_json::from_str::<Value>(&v.findings).unwrap_or(Value::Null),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Every tool the store knows, by (server, tool).
pub async fn entries(store: &Store) -> Result<BTreeMap<(String, String), Entry>, StoreError> {
    let mut out: BTreeMap<(String, String), Entry> = BTreeMap::new();
    for (key, pin) in pins::all_pins(store).await? {
        out.entry(key).or_default().pin = Some(pin);
    }
    for row in pins::definitions(store).await? {
        out.entry((row.server.clone(), row.tool.clone()))
            .or_default()
            .versions
            .push(row);
    }
    Ok(out)
}

/// Why an approval did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error("no tool {0} in the catalog store")]
    UnknownTool(String),
    #[error("no version of {0} has a hash starting with {1}")]
    NoSuchVersion(String, String),
    #[error("several versions of {0} match {1}; give more digits")]
    Ambiguous(String, String),
    #[error("{0} has no version waiting for approval")]
    NothingWaiting(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an approval pinned.
#[derive(Debug, Clone)]
pub struct Approved {
    pub hash: String,
    /// The pin it replaced, if any.
    pub previous: Option<String>,
}

/// Pins the version of `server`/`tool` whose hash starts with `hash` (default: the waiting
/// version seen last), recording `by`.
pub async fn approve(
    store: &Store,
    server: &str,
    tool: &str,
    hash: Option<&str>,
    by: &str,
) -> Result<Approved, ApproveError> {
    let name = format!("{server}/{tool}");
    let entries = entries(store).await?;
    let entry = entries
        .get(&(server.to_owned(), tool.to_owned()))
        .ok_or_else(|| ApproveError::UnknownTool(name.clone()))?;
    let chosen: &DefinitionRow = match hash {
        Some(prefix) => {
            let matching: Vec<&DefinitionRow> = entry
                .versions
                .iter()
                .filter(|v| v.hash.starts_with(prefix))
                .collect();
            match matching.as_slice() {
                [one] => one,
                [] => return Err(ApproveError::NoSuchVersion(name, prefix.to_owned())),
                _ => return Err(ApproveError::Ambiguous(name, prefix.to_owned())),
            }
        }
        None => entry
            .waiting()
            .into_iter()
            .next()
            .ok_or(ApproveError::NothingWaiting(name))?,
    };
    pins::approve(store, server, tool, &chosen.hash, by).await?;
    tracing::info!(
        server,
        tool,
        sha256 = short(&chosen.hash),
        by,
        "tool version approved and pinned"
    );
    Ok(Approved {
        hash: chosen.hash.clone(),
        previous: entry.pin.as_ref().map(|p| p.hash.clone()),
    })
}
