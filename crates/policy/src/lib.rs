//! Portcullis policy: who may do what, decided per call, with no IO.
//!
//! Rules come from the config's `rules:` section as [`RuleSpec`]s and are compiled once into a
//! [`Policy`] (globs, time windows and `when:` conditions parsed up front, every error naming its
//! path: `rules[3].approve.when: …`). A decision walks the rules in file order; **the first rule
//! that matches decides, and no match is a denial**.
//!
//! A rule matches a [`Request`] when every criterion it sets holds:
//! - `agents`, `users`, `roles`: the principal (globs; a rule naming `users` never matches a call
//!   without a user);
//! - `servers`: the catalog server of the call (glob);
//! - `tools`: the aggregated tool name `{server}__{tool}` (glob, case-sensitive, byte for byte:
//!   no case folding, no Unicode normalization). Set only for `tools/call`, so a rule naming
//!   tools never matches other methods;
//! - `methods`: the JSON-RPC method, including server→client requests (`sampling/createMessage`,
//!   `elicitation/create`, `roots/list`);
//! - `annotations`: the tool's annotations as listed by its server — untrusted hints. When the
//!   gateway does not know them, an `allow` rule does not match and a `deny`/`approve` rule does
//!   (fail closed either way);
//! - `hours` (`"09:00-18:00"`, UTC, may wrap midnight) and `days` (`[mon, tue, …]`, UTC);
//! - `when`: a condition over the arguments and the principal ([`expr`]). An error while
//!   evaluating it (a missing field, a type mismatch) makes an `allow` rule not match and a
//!   `deny`/`approve` rule match.
//!
//! Rules are indexed by exact tool name and by server (from `servers:` or the literal prefix of
//! `tools:` globs such as `time__*`), so a call only looks at the rules that can concern it; the
//! candidate lists are merged in file order, so first-match semantics are unchanged.

pub mod expr;
pub mod glob;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use expr::{Env, Expr};
use glob::Glob;
use serde_json::Value;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
    /// The call needs a reviewer's approval: the gateway holds it until enough reviewers
    /// decide ([`Policy::approval`] gives the rule's options), and refuses it on a denial or
    /// when the hold times out.
    Approve,
}

impl Effect {
    /// The config key: `allow`, `deny`, `approve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Approve => "approve",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule as written in the config (already structurally valid).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuleSpec {
    pub id: String,
    pub effect: Option<Effect>,
    pub matcher: MatchSpec,
    /// The options of an `approve` rule as written (None: all defaults). Refused on `allow` and
    /// `deny` rules.
    pub approval: Option<ApprovalSpec>,
}

/// `approve: { …, timeout: 5m, approvers: 2, role: admin, self_approval: false }` as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ApprovalSpec {
    /// How long the call may be held (None: the config's `approvals.timeout`).
    pub timeout: Option<Duration>,
    /// Distinct reviewers needed: 1 (default) or 2.
    pub approvers: Option<u64>,
    /// The least admin role a reviewer needs: `approver` (default) or `admin`.
    pub role: Option<String>,
    /// May the end user approve their own call at the client (MCP elicitation)? Default false.
    pub self_approval: Option<bool>,
}

/// The admin role a reviewer of an `approve` rule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReviewerRole {
    #[default]
    Approver,
    Admin,
}

impl ReviewerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewerRole::Approver => "approver",
            ReviewerRole::Admin => "admin",
        }
    }
}

/// The compiled options of an `approve` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalOptions {
    /// How long the call may be held (None: the config's default).
    pub timeout: Option<Duration>,
    /// Distinct reviewers needed (1 or 2).
    pub approvers: u8,
    pub role: ReviewerRole,
    pub self_approval: bool,
}

impl Default for ApprovalOptions {
    fn default() -> Self {
        ApprovalOptions {
            timeout: None,
            approvers: 1,
            role: ReviewerRole::Approver,
            self_approval: false,
        }
    }
}

/// Longest hold an `approve` rule may ask for.
pub const MAX_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The criteria of a rule, as written. `None` means "any".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MatchSpec {
    pub agents: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    pub servers: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    /// Annotation name → required value (`readOnlyHint: true`).
    pub annotations: Option<Vec<(String, Value)>>,
    pub hours: Option<String>,
    pub days: Option<Vec<String>>,
    pub when: Option<String>,
}

/// One problem in the rules, with the path of the key at fault (`rules[2].allow.hours`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

/// One call (or server→client request) to decide.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub agent: &'a str,
    pub user: Option<&'a str>,
    pub roles: &'a [String],
    /// The JSON-RPC method (`tools/call`, `sampling/createMessage`, …).
    pub method: &'a str,
    /// The catalog server concerned, when there is one.
    pub server: Option<&'a str>,
    /// `tools/call` only: the aggregated name `{server}__{tool}`.
    pub tool: Option<&'a str>,
    /// `tools/call` arguments (None: not known, e.g. when listing).
    pub args: Option<&'a Value>,
    /// The tool's annotations as its server listed them (None: not known).
    pub annotations: Option<&'a Value>,
    /// Now, in Unix seconds (time windows are UTC).
    pub now: u64,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The rule that decided; None for the default deny.
    pub rule_id: Option<String>,
    /// One sentence for error messages and logs.
    pub reason: String,
}

/// A decision with, for each rule considered before the match, why it did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub decision: Decision,
    /// `rule-id: why` lines, in file order, ending with the rule that matched.
    pub steps: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision: {}", self.decision.effect)?;
        match &self.decision.rule_id {
            Some(id) => writeln!(f, "rule: {id}")?,
            None => writeln!(f, "rule: (none: no rule matched, default deny)")?,
        }
        writeln!(f, "reason: {}", self.decision.reason)?;
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

/// A time window, in minutes of the UTC day, and the days of the week it applies to.
#[derive(Debug, Clone, PartialEq)]
struct Window {
    /// (start, end) minutes; start > end wraps midnight.
    hours: Option<(u32, u32)>,
    /// Bit 0 = Monday … bit 6 = Sunday.
    days: Option<u8>,
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    id: String,
    effect: Effect,
    agents: Option<Vec<Glob>>,
    users: Option<Vec<Glob>>,
    roles: Option<Vec<Glob>>,
    servers: Option<Vec<Glob>>,
    tools: Option<Vec<Glob>>,
    methods: Option<Vec<String>>,
    annotations: Option<Vec<(String, Value)>>,
    window: Window,
    when: Option<Expr>,
}

/// Why a rule did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    Agent,
    User,
    Role,
    Server,
    Tool,
    Method,
    Annotations,
    Time,
    Condition,
    ConditionError,
}

/// The compiled rules. Compares equal when compiled from equal specs.
#[derive(Clone, Default)]
pub struct Policy {
    specs: Vec<RuleSpec>,
    rules: Vec<Rule>,
    by_tool: HashMap<String, Vec<usize>>,
    by_server: HashMap<String, Vec<usize>>,
    general: Vec<usize>,
    has_conditions: bool,
    /// Options of the `approve` rules, by rule id (looked up only when a call needs approval).
    approvals: HashMap<String, ApprovalOptions>,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.specs == other.specs
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Methods a rule's `methods:` may name.
pub const KNOWN_METHODS: &[&str] = &[
    "tools/call",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/get",
    "completion/complete",
    "subscriptions/listen",
    "sampling/createMessage",
    "elicitation/create",
    "roots/list",
];

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Policy {
    /// Compiles rules; `base` prefixes error paths (`rules`). Every problem is reported.
    pub fn compile(specs: Vec<RuleSpec>, base: &str) -> Result<Policy, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut approvals = HashMap::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut error = |key: &str, message: String| {
                errors.push(PolicyError {
                    path: format!("{base}[{i}]{}{key}", if key.is_empty() { "" } else { "." }),
                    message,
                })
            };
            if spec.id.is_empty() {
                error("id", "required: every rule has an id".into());
            } else if let Some(first) = seen.insert(spec.id.as_str(), i) {
                error(
                    "id",
                    format!("duplicate rule id {:?} (also rules[{first}])", spec.id),
                );
            }
            let Some(effect) = spec.effect else {
                error("", "set exactly one of `allow`, `deny` or `approve`".into());
                continue;
            };
            let m = &spec.matcher;
            let at = |key: &str| format!("{}.{key}", effect.as_str());
            if effect == Effect::Approve {
                let (options, problems) = approval_options(spec.approval.as_ref());
                for (key, message) in problems {
                    error(&at(key), message);
                }
                approvals.insert(spec.id.clone(), options);
            } else if let Some(key) = spec.approval.as_ref().and_then(first_approval_key) {
                error(&at(key), format!("only `approve` rules take `{key}`"));
            }
            let globs = |list: &Option<Vec<String>>| {
                list.as_ref()
                    .map(|l| l.iter().map(|p| Glob::new(p)).collect::<Vec<_>>())
            };
            for (key, list) in [
                ("agents", &m.agents),
                ("users", &m.users),
                ("roles", &m.roles),
                ("servers", &m.servers),
                ("tools", &m.tools),
                ("methods", &m.methods),
                ("days", &m.days),
            ] {
                if list.as_ref().is_some_and(|l| l.is_empty()) {
                    error(
                        &at(key),
                        "must not be empty (leave the key out to match any)".into(),
                    );
                }
            }
            if let Some(methods) = &m.methods {
                for (j, method) in methods.iter().enumerate() {
                    if !KNOWN_METHODS.contains(&method.as_str()) {
                        error(
                            &format!("{}[{j}]", at("methods")),
                            format!(
                                "unknown method {method:?} (one of {})",
                                KNOWN_METHODS.join(", ")
                            ),
                        );
                    }
                }
            }
            if let Some(tools) = &m.tools {
                for (j, tool) in tools.iter().enumerate() {
                    if Glob::new(tool).is_literal() && !tool.contains("__") {
                        error(
                            &format!("{}[{j}]", at("tools")),
                            format!(
                                "{tool:?} is not an aggregated name: tools are named server__tool"
                            ),
                        );
                    }
                }
            }
            let hours = match &m.hours {
                None => None,
                Some(text) => match parse_hours(text) {
                    Ok(h) => Some(h),
                    Err(message) => {
                        error(&at("hours"), message);
                        None
                    }
                },
            };
            let mut days = None;
            if let Some(list) = &m.days {
                let mut bits = 0u8;
                for (j, day) in list.iter().enumerate() {
                    match DAYS.iter().position(|d| *d == day.as_str()) {
                        Some(k) => bits |= 1 << k,
                        None => error(
                            &format!("{}[{j}]", at("days")),
                            format!("unknown day {day:?} (one of {})", DAYS.join(", ")),
                        ),
                    }
                }
                days = Some(bits);
            }
            let when = match &m.when {
                None => None,
                Some(text) => match Expr::parse(text) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        error(&at("when"), e.to_string());
                        None
                    }
                },
            };
            rules.push(Rule {
                id: spec.id.clone(),
                effect,
                agents: globs(&m.agents),
                users: globs(&m.users),
                roles: globs(&m.roles),
                servers: globs(&m.servers),
                tools: globs(&m.tools),
                methods: m.methods.clone(),
                annotations: m.annotations.clone(),
                window: Window { hours, days },
                when,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut policy = Policy {
            specs,
            approvals,
            ..Policy::default()
        };
        for (i, rule) in rules.iter().enumerate() {
            policy.has_conditions |= rule.when.is_some();
            match index_keys(rule) {
                None => policy.general.push(i),
                Some(keys) => {
                    for key in keys {
                        let list = match key {
                            Key::Tool(t) => policy.by_tool.entry(t).or_default(),
                            Key::Server(s) => policy.by_server.entry(s).or_default(),
                        };
                        if list.last() != Some(&i) {
                            list.push(i);
                        }
                    }
                }
            }
        }
        policy.rules = rules;
        Ok(policy)
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules (everything is denied)?
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Does any rule have a `when:` condition (so that callers need the arguments)?
    pub fn has_conditions(&self) -> bool {
        self.has_conditions
    }

    /// The rules as written.
    pub fn specs(&self) -> &[RuleSpec] {
        &self.specs
    }

    /// The options of the `approve` rule `rule_id` (None for unknown ids and other effects).
    pub fn approval(&self, rule_id: &str) -> Option<&ApprovalOptions> {
        self.approvals.get(rule_id)
    }

    /// Decides a call: the first matching rule, or the default deny.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        let mut found = None;
        self.walk(req, |i, result| {
            if result.is_ok() {
                found = Some(i);
                return false;
            }
            true
        });
        self.decision(req, found)
    }

    /// Like [`Policy::decide`], with why each earlier candidate rule did not match.
    pub fn explain(&self, req: &Request<'_>) -> Explanation {
        let mut steps = Vec::new();
        let mut found = None;
        self.walk(req, |i, result| {
            let rule = &self.rules[i];
            match result {
                Ok(()) => {
                    steps.push(format!("{}: matched ({})", rule.id, rule.effect));
                    found = Some(i);
                    false
                }
                Err(miss) => {
                    steps.push(format!(
                        "{}: skipped, {}",
                        rule.id,
                        miss_text(rule, miss, req)
                    ));
                    true
                }
            }
        });
        Explanation {
            decision: self.decision(req, found),
            steps,
        }
    }

    /// Could some rule allow this principal to make this call, whatever its arguments? Used to
    /// filter lists. `when:` conditions are taken as "may hold": a conditional `allow` counts,
    /// a conditional `deny` or `approve` does not hide anything. An unconditional `approve`
    /// keeps the item listed: the call can be made, it is held for reviewers.
    pub fn could_allow(&self, req: &Request<'_>) -> bool {
        let mut allowed = false;
        self.walk_with(req, true, |i, result| {
            if result.is_err() {
                return true;
            }
            let rule = &self.rules[i];
            if rule.when.is_some() && rule.effect != Effect::Allow {
                return true;
            }
            allowed = rule.effect != Effect::Deny;
            false
        });
        allowed
    }

    fn decision(&self, req: &Request<'_>, found: Option<usize>) -> Decision {
        let what = describe(req);
        match found {
            Some(i) => {
                let rule = &self.rules[i];
                let reason = match rule.effect {
                    Effect::Allow => format!("{what} allowed by rule {}", rule.id),
                    Effect::Deny => format!("{what} denied by rule {}", rule.id),
                    Effect::Approve => format!("{what} requires approval (rule {})", rule.id),
                };
                Decision {
                    effect: rule.effect,
                    rule_id: Some(rule.id.clone()),
                    reason,
                }
            }
            None => Decision {
                effect: Effect::Deny,
                rule_id: None,
                reason: format!("no rule allows {what}"),
            },
        }
    }

    fn walk(&self, req: &Request<'_>, visit: impl FnMut(usize, Result<(), Miss>) -> bool) {
        self.walk_with(req, false, visit)
    }

    /// Visits the candidate rules in file order until `visit` returns false.
    fn walk_with(
        &self,
        req: &Request<'_>,
        skip_when: bool,
        mut visit: impl FnMut(usize, Result<(), Miss>) -> bool,
    ) {
        let empty: &[usize] = &[];
        let a = req
            .tool
            .and_then(|t| self.by_tool.get(t))
            .map_or(empty, Vec::as_slice);
        let b = req
            .server
            .and_then(|s| self.by_server.get(s))
            .map_or(empty, Vec::as_slice);
        let c = self.general.as_slice();
        let (mut i, mut j, mut k) = (0, 0, 0);
        let mut last = None;
        loop {
            let next = [a.get(i), b.get(j), c.get(k)]
                .into_iter()
                .flatten()
                .min()
                .copied();
            let Some(n) = next else { return };
            if a.get(i) == Some(&n) {
                i += 1;
            }
            if b.get(j) == Some(&n) {
                j += 1;
            }
            if c.get(k) == Some(&n) {
                k += 1;
            }
            if last == Some(n) {
                continue;
            }
            last = Some(n);
            if !visit(n, matches(&self.rules[n], req, skip_when)) {
                return;
            }
        }
    }
}

enum Key {
    Tool(String),
    Server(String),
}

/// Checks the options of an `approve` rule; problems as (key, message).
fn approval_options(spec: Option<&ApprovalSpec>) -> (ApprovalOptions, Vec<(&'static str, String)>) {
    let mut options = ApprovalOptions::default();
    let mut problems = Vec::new();
    let Some(spec) = spec else {
        return (options, problems);
    };
    if let Some(timeout) = spec.timeout {
        if timeout.is_zero() || timeout > MAX_APPROVAL_TIMEOUT {
            problems.push(("timeout", "must be more than 0s and at most 24h".to_owned()));
        } else {
            options.timeout = Some(timeout);
        }
    }
    match spec.approvers {
        None => {}
        Some(n @ (1 | 2)) => options.approvers = n as u8,
        Some(n) => problems.push((
            "approvers",
            format!("must be 1 or 2 (distinct reviewers), not {n}"),
        )),
    }
    match spec.role.as_deref() {
        None | Some("approver") => {}
        Some("admin") => options.role = ReviewerRole::Admin,
        Some(other) => problems.push((
            "role",
            format!("unknown reviewer role {other:?} (approver or admin)"),
        )),
    }
    options.self_approval = spec.self_approval.unwrap_or(false);
    (options, problems)
}

/// The first approval option set in `spec` (to name it when a non-approve rule sets it).
fn first_approval_key(spec: &ApprovalSpec) -> Option<&'static str> {
    if spec.timeout.is_some() {
        Some("timeout")
    } else if spec.approvers.is_some() {
        Some("approvers")
    } else if spec.role.is_some() {
        Some("role")
    } else if spec.self_approval.is_some() {
        Some("self_approval")
    } else {
        None
    }
}

/// The index keys of a rule; None when it may concern any call.
fn index_keys(rule: &Rule) -> Option<Vec<Key>> {
    if let Some(tools) = &rule.tools {
        let mut keys = Vec::new();
        for glob in tools {
            if glob.is_literal() {
                keys.push(Key::Tool(glob.as_str().to_owned()));
            } else {
                let prefix = glob.literal_prefix();
                let (server, _) = prefix.split_once("__")?;
                keys.push(Key::Server(server.to_owned()));
            }
        }
        return Some(keys);
    }
    if let Some(servers) = &rule.servers {
        let mut keys = Vec::new();
        for glob in servers {
            if !glob.is_literal() {
                return None;
            }
            keys.push(Key::Server(glob.as_str().to_owned()));
        }
        return Some(keys);
    }
    None
}

fn any(globs: &Option<Vec<Glob>>, value: Option<&str>) -> bool {
    match globs {
        None => true,
        Some(globs) => value.is_some_and(|v| globs.iter().any(|g| g.matches(v))),
    }
}

fn matches(rule: &Rule, req: &Request<'_>, skip_when: bool) -> Result<(), Miss> {
    if let Some(methods) = &rule.methods
        && !methods.iter().any(|m| m == req.method)
    {
        return Err(Miss::Method);
    }
    if !any(&rule.tools, req.tool) {
        return Err(Miss::Tool);
    }
    if !any(&rule.servers, req.server) {
        return Err(Miss::Server);
    }
    if !any(&rule.agents, Some(req.agent)) {
        return Err(Miss::Agent);
    }
    if !any(&rule.users, req.user) {
        return Err(Miss::User);
    }
    if let Some(roles) = &rule.roles
        && !req.roles.iter().any(|r| roles.iter().any(|g| g.matches(r)))
    {
        return Err(Miss::Role);
    }
    if let Some(wanted) = &rule.annotations {
        let ok = match req.annotations {
            // Unknown hints: only a restrictive rule may apply.
            None => rule.effect != Effect::Allow,
            Some(have) => wanted.iter().all(|(k, v)| have.get(k) == Some(v)),
        };
        if !ok {
            return Err(Miss::Annotations);
        }
    }
    if !in_window(&rule.window, req.now) {
        return Err(Miss::Time);
    }
    if skip_when {
        return Ok(());
    }
    if let Some(when) = &rule.when {
        let env = Env {
            args: req.args,
            agent: req.agent,
            user: req.user,
            roles: req.roles,
            server: req.server,
            tool: req.tool,
            method: req.method,
        };
        match when.eval(&env) {
            Ok(true) => {}
            Ok(false) => return Err(Miss::Condition),
            Err(_) if rule.effect != Effect::Allow => {}
            Err(_) => return Err(Miss::ConditionError),
        }
    }
    Ok(())
}

fn in_window(window: &Window, now: u64) -> bool {
    let days_since_epoch = now / 86_400;
    if let Some(days) = window.days {
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = ((days_since_epoch + 3) % 7) as u8;
        if days & (1 << weekday) == 0 {
            return false;
        }
    }
    if let Some((start, end)) = window.hours {
        let minute = ((now % 86_400) / 60) as u32;
        let inside = if start <= end {
            minute >= start && minute < end
        } else {
            minute >= start || minute < end
        };
        if !inside {
            return false;
        }
    }
    true
}

/// `"09:00-18:00"` → minutes of the day.
fn parse_hours(text: &str) -> Result<(u32, u32), String> {
    let bad =
        || format!("invalid hours {text:?}: expected \"HH:MM-HH:MM\" (UTC), e.g. \"09:00-18:00\"");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!("hours {text:?} is an empty window"));
    }
    Ok((start, end))
}

fn describe(req: &Request<'_>) -> String {
    match (req.tool, req.server) {
        (Some(tool), _) => format!("{} {tool} for agent {}", req.method, req.agent),
        (None, Some(server)) => {
            format!("{} on server {server} for agent {}", req.method, req.agent)
        }
        (None, None) => format!("{} for agent {}", req.method, req.agent),
    }
}

fn miss_text(rule: &Rule, miss: Miss, req: &Request<'_>) -> String {
    let list = |globs: &Option<Vec<Glob>>| {
        globs
            .as_ref()
            .map(|g| g.iter().map(Glob::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    match miss {
        Miss::Agent => format!("agent {} not in [{}]", req.agent, list(&rule.agents)),
        Miss::User => format!(
            "user {} not in [{}]",
            req.user.unwrap_or("(none)"),
            list(&rule.users)
        ),
        Miss::Role => format!("no role in [{}]", list(&rule.roles)),
        Miss::Server => format!(
            "server {} not in [{}]",
            req.server.unwrap_or("(none)"),
            list(&rule.servers)
        ),
        Miss::Tool => format!(
            "tool {} not in [{}]",
            req.tool.unwrap_or("(none)"),
            list(&rule.tools)
        ),
        Miss::Method => format!(
            "method {} not in [{}]",
            req.method,
            rule.methods.as_deref().unwrap_or_default().join(", ")
        ),
        Miss::Annotations => "annotations do not match (or are unknown)".to_owned(),
        Miss::Time => "outside its hours/days (UTC)".to_owned(),
        Miss::Condition => format!(
            "condition `{}` is false",
            rule.when.as_ref().map(Expr::source).unwrap_or_default()
        ),
        Miss::ConditionError => {
            let env = Env {
                args: req.args,
                agent: req.agent,
                user: req.user,
                roles: req.roles,
                server: req.server,
                tool: req.tool,
                method: req.method,
            };
            let why = rule
                .when
                .as_ref()
                .and_then(|w| w.eval(&env).err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            format!("condition could not be evaluated ({why}); an allow rule then does not match")
        }
    }
}

#[cfg(test)]
mod tests;
