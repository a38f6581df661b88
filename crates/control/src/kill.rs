//! Kill switches: stop an agent, a server, a tool (`{server}__{tool}` glob) or everything
//! (lockdown) at once.
//!
//! Switches live in the store (`control_kill_switches`) so that they survive restarts and reach
//! every replica; each process keeps the whole set in memory as an immutable [`KillSet`] behind a
//! `watch` channel. The hot path reads the current set (one read lock, no IO) and checks a call
//! in O(1) for agents and servers and O(tool globs) for tools. Calls in flight and open streams
//! hold a receiver and end as soon as a set that matches them is published ([`wait_for_kill`]).
//! Other replicas' changes arrive by [`KillSwitches::refresh`], which the gateway runs about
//! once a second.
//!
//! Tool names are matched without ASCII case (`fx__Delete` is killed by `fx__delete`): a kill
//! switch is a deny list, so it errs towards stopping more.

use std::collections::HashMap;
use std::sync::Arc;

use portcullis_policy::glob::Glob;
use portcullis_store::{Store, on_pool};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::sync::watch;

use crate::ControlError;

/// What a kill switch stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every call of one agent.
    Agent,
    /// Every call to one catalog server.
    Server,
    /// `tools/call` of the tools whose `{server}__{tool}` name matches a glob.
    Tool,
    /// Everything (lockdown).
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Server => "server",
            Scope::Tool => "tool",
            Scope::All => "all",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "agent" => Some(Scope::Agent),
            "server" => Some(Scope::Server),
            "tool" => Some(Scope::Tool),
            "all" => Some(Scope::All),
            _ => None,
        }
    }
}

/// The thing a switch names: a scope and, except for [`Scope::All`], a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub scope: Scope,
    /// Agent or server name, or a tool glob; empty for [`Scope::All`].
    pub name: String,
}

impl Target {
    /// A checked target: `all` takes no name, the others need a non-empty one of at most 256
    /// visible characters.
    pub fn new(scope: Scope, name: Option<&str>) -> Result<Target, ControlError> {
        let name = name.map(str::trim).unwrap_or_default();
        match scope {
            Scope::All if !name.is_empty() => Err(ControlError::Invalid(
                "a lockdown (scope all) takes no name".into(),
            )),
            Scope::All => Ok(Target {
                scope,
                name: String::new(),
            }),
            _ if name.is_empty() => Err(ControlError::Invalid(format!(
                "a {} kill switch needs a name",
                scope.as_str()
            ))),
            _ if name.len() > 256 || name.chars().any(char::is_control) => Err(
                ControlError::Invalid("names are at most 256 characters, no controls".into()),
            ),
            Scope::Tool => Ok(Target {
                scope,
                name: name.to_ascii_lowercase(),
            }),
            _ => Ok(Target {
                scope,
                name: name.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.scope {
            Scope::All => f.write_str("all"),
            scope => write!(f, "{}:{}", scope.as_str(), self.name),
        }
    }
}

/// One active kill switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSwitch {
    pub target: Target,
    pub reason: String,
    /// Who set it (the admin's name).
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl KillSwitch {
    /// The switch as the admin API and errors show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "scope": self.target.scope,
            "name": self.target.name,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
        })
    }
}

/// Every active switch, indexed for the hot path. Immutable; replaced as a whole.
#[derive(Debug, Default)]
pub struct KillSet {
    all: Option<Arc<KillSwitch>>,
    agents: HashMap<String, Arc<KillSwitch>>,
    servers: HashMap<String, Arc<KillSwitch>>,
    tools_exact: HashMap<String, Arc<KillSwitch>>,
    tool_globs: Vec<(Glob, Arc<KillSwitch>)>,
    /// Every switch in target order (listing, change detection).
    list: Vec<Arc<KillSwitch>>,
}

impl KillSet {
    /// Indexes `switches`.
    pub fn new(mut switches: Vec<KillSwitch>) -> KillSet {
        switches.sort_by(|a, b| a.target.cmp(&b.target));
        let mut set = KillSet::default();
        for switch in switches {
            let switch = Arc::new(switch);
            let name = switch.target.name.clone();
            match switch.target.scope {
                Scope::All => set.all = Some(switch.clone()),
                Scope::Agent => {
                    set.agents.insert(name, switch.clone());
                }
                Scope::Server => {
                    set.servers.insert(name, switch.clone());
                }
                Scope::Tool => {
                    let glob = Glob::new(&name);
                    if glob.is_literal() {
                        set.tools_exact.insert(name, switch.clone());
                    } else {
                        set.tool_globs.push((glob, switch.clone()));
                    }
                }
            }
            set.list.push(switch);
        }
        set
    }

    /// Every switch, in target order.
    pub fn switches(&self) -> &[Arc<KillSwitch>] {
        &self.list
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The lockdown switch, when everything is stopped.
    pub fn lockdown(&self) -> Option<&Arc<KillSwitch>> {
        self.all.as_ref()
    }

    /// The switch that stops `agent` (lockdown or its agent switch), if any.
    pub fn agent(&self, agent: &str) -> Option<&Arc<KillSwitch>> {
        if self.list.is_empty() {
            return None;
        }
        self.all.as_ref().or_else(|| self.agents.get(agent))
    }

    /// The switch that stops calls to `server` (regardless of agent), if any.
    pub fn server(&self, server: &str) -> Option<&Arc<KillSwitch>> {
        self.servers.get(server)
    }

    /// The switch that stops the tool `{server}__{tool}` (`aggregated`), if any: its server's
    /// switch or a tool switch.
    pub fn tool(&self, server: &str, aggregated: &str) -> Option<&Arc<KillSwitch>> {
        if let Some(switch) = self.servers.get(server) {
            return Some(switch);
        }
        if self.tools_exact.is_empty() && self.tool_globs.is_empty() {
            return None;
        }
        let folded = aggregated.to_ascii_lowercase();
        self.tools_exact.get(&folded).or_else(|| {
            self.tool_globs
                .iter()
                .find(|(glob, _)| glob.matches(&folded))
                .map(|(_, switch)| switch)
        })
    }

    /// The switch that stops a call by `agent` to `server` (and, for `tools/call`, the tool
    /// `aggregated` = `{server}__{tool}`), if any. Checked in this order: lockdown, agent,
    /// server, tool.
    pub fn matching(
        &self,
        agent: &str,
        server: Option<&str>,
        aggregated_tool: Option<&str>,
    ) -> Option<&Arc<KillSwitch>> {
        if self.list.is_empty() {
            return None;
        }
        self.agent(agent)
            .or_else(|| match (server, aggregated_tool) {
                (Some(server), Some(tool)) => self.tool(server, tool),
                (Some(server), None) => self.server(server),
                (None, _) => None,
            })
    }
}

/// The kill switches of one process: the store and the published in-memory set.
pub struct KillSwitches {
    store: Store,
    /// The current set. Its receivers (calls in flight, open streams) wake on every change and
    /// check whether the new set stops them.
    current: watch::Sender<Arc<KillSet>>,
}

const SELECT: &str =
    "SELECT scope, name, reason, created_by, created_at FROM control_kill_switches";

impl KillSwitches {
    /// Loads the switches from `store` (migrated by the caller).
    pub async fn load(store: Store) -> Result<KillSwitches, ControlError> {
        let switches = read_all(&store).await?;
        let (current, _) = watch::channel(Arc::new(KillSet::new(switches)));
        Ok(KillSwitches { store, current })
    }

    /// The set in force now (no IO).
    pub fn snapshot(&self) -> Arc<KillSet> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every new set; see [`wait_for_kill`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<KillSet>> {
        self.current.subscribe()
    }

    /// Sets (or updates the reason of) a switch, in the store first, then here: calls in flight
    /// that it matches end at once.
    pub async fn kill(
        &self,
        target: Target,
        reason: &str,
        created_by: &str,
    ) -> Result<KillSwitch, ControlError> {
        let switch = KillSwitch {
            target,
            reason: reason.chars().take(1024).collect(),
            created_by: created_by.to_owned(),
            created_at: portcullis_store::unix_now(),
        };
        on_pool!(self.store.backend(), pool => {
            sqlx::query(
                "INSERT INTO control_kill_switches (scope, name, reason, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (scope, name) DO UPDATE SET \
                 reason = excluded.reason, created_by = excluded.created_by, created_at = excluded.created_at",
            )
            .bind(switch.target.scope.as_str())
            .bind(&switch.target.name)
            .bind(&switch.reason)
            .bind(&switch.created_by)
            .bind(switch.created_at)
            .execute(pool)
            .await?;
        });
        tracing::warn!(target = %switch.target, reason = %switch.reason, by = %switch.created_by, "kill switch set");
        self.refresh().await?;
        Ok(switch)
    }

    /// Removes a switch; `None` when there was none for `target`.
    pub async fn revive(&self, target: &Target) -> Result<Option<KillSwitch>, ControlError> {
        let existing = self
            .snapshot()
            .switches()
            .iter()
            .find(|s| s.target == *target)
            .map(|s| (**s).clone());
        let deleted = on_pool!(self.store.backend(), pool => {
            sqlx::query("DELETE FROM control_kill_switches WHERE scope = $1 AND name = $2")
                .bind(target.scope.as_str())
                .bind(&target.name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        self.refresh().await?;
        if deleted == 0 {
            return Ok(None);
        }
        tracing::warn!(%target, "kill switch removed");
        Ok(Some(existing.unwrap_or(KillSwitch {
            target: target.clone(),
            reason: String::new(),
            created_by: String::new(),
            created_at: 0,
        })))
    }

    /// Re-reads the store and publishes the set if it changed (changes made by other replicas,
    /// or by this one). Returns whether it changed.
    pub async fn refresh(&self) -> Result<bool, ControlError> {
        let switches = read_all(&self.store).await?;
        let fresh = KillSet::new(switches);
        Ok(self.current.send_if_modified(|current| {
            let same = current.list.len() == fresh.list.len()
                && current.list.iter().zip(&fresh.list).all(|(a, b)| a == b);
            if !same {
                *current = Arc::new(fresh);
            }
            !same
        }))
    }
}

async fn read_all(store: &Store) -> Result<Vec<KillSwitch>, ControlError> {
    let rows = on_pool!(store.backend(), pool => {
        sqlx::query(SELECT)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| -> Result<_, sqlx::Error> {
                Ok((
                    row.try_get::<String, _>("scope")?,
                    row.try_get::<String, _>("name")?,
                    row.try_get::<String, _>("reason")?,
                    row.try_get::<String, _>("created_by")?,
                    row.try_get::<i64, _>("created_at")?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?
    });
    let mut switches = Vec::with_capacity(rows.len());
    for (scope, name, reason, created_by, created_at) in rows {
        // A row this build does not understand stops everything rather than nothing.
        let target = match Scope::parse(&scope) {
            Some(scope) => Target { scope, name },
            None => {
                tracing::error!(
                    scope,
                    name,
                    "unknown kill switch scope in the store; locking down"
                );
                Target {
                    scope: Scope::All,
                    name: String::new(),
                }
            }
        };
        switches.push(KillSwitch {
            target,
            reason,
            created_by,
            created_at,
        });
    }
    Ok(switches)
}

/// Waits until the set published on `sets` stops a call by `agent` to `server` (and `tool`,
/// the aggregated `{server}__{tool}` of a `tools/call`), and returns that switch. Checks the
/// current set first. Pending forever if the sender is gone (the gateway is stopping anyway).
pub async fn wait_for_kill(
    sets: &mut watch::Receiver<Arc<KillSet>>,
    agent: &str,
    server: Option<&str>,
    tool: Option<&str>,
) -> Arc<KillSwitch> {
    loop {
        if let Some(switch) = sets.borrow_and_update().matching(agent, server, tool) {
            return switch.clone();
        }
        if sets.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(scope: Scope, name: &str) -> KillSwitch {
        KillSwitch {
            target: Target::new(scope, Some(name).filter(|n| !n.is_empty())).unwrap(),
            reason: "test".into(),
            created_by: "ops".into(),
            created_at: 1,
        }
    }

    #[test]
    fn each_scope_stops_what_it_names_and_nothing_else() {
        let set = KillSet::new(vec![
            switch(Scope::Agent, "rogue"),
            switch(Scope::Server, "billing"),
            switch(Scope::Tool, "fx__delete_*"),
            switch(Scope::Tool, "time__now"),
        ]);
        let hit = |agent, server, tool| {
            set.matching(agent, server, tool)
                .map(|s| s.target.to_string())
        };
        assert_eq!(hit("rogue", Some("time"), None), Some("agent:rogue".into()));
        assert_eq!(
            hit("alice", Some("billing"), Some("billing__refund")),
            Some("server:billing".into())
        );
        assert_eq!(
            hit("alice", Some("billing"), None),
            Some("server:billing".into())
        );
        assert_eq!(
            hit("alice", Some("fx"), Some("fx__delete_all")),
            Some("tool:fx__delete_*".into())
        );
        assert_eq!(
            hit("alice", Some("time"), Some("time__now")),
            Some("tool:time__now".into())
        );
        assert_eq!(hit("alice", Some("fx"), Some("fx__echo")), None);
        assert_eq!(
            hit("alice", Some("fx"), None),
            None,
            "a tool switch does not stop its server"
        );
        assert_eq!(hit("alice", None, None), None);
    }

    #[test]
    fn tool_switch_cannot_be_dodged_by_case() {
        let set = KillSet::new(vec![switch(Scope::Tool, "FX__Delete")]);
        assert!(set.matching("a", Some("fx"), Some("fx__DELETE")).is_some());
        assert!(set.matching("a", Some("fx"), Some("fx__delete")).is_some());
    }

    #[test]
    fn lockdown_stops_everyone() {
        let set = KillSet::new(vec![switch(Scope::All, "")]);
        assert_eq!(
            set.matching("anyone", None, None).unwrap().target.scope,
            Scope::All
        );
        assert!(set.agent("anyone").is_some());
    }

    #[test]
    fn targets_are_checked() {
        assert!(Target::new(Scope::Server, None).is_err());
        assert!(Target::new(Scope::Server, Some("  ")).is_err());
        assert!(Target::new(Scope::All, Some("x")).is_err());
        assert!(Target::new(Scope::Agent, Some("a\nb")).is_err());
        assert_eq!(Target::new(Scope::All, None).unwrap().to_string(), "all");
    }
}
