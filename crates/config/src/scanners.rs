//! `scanners:`: what the gateway does with each kind of finding, per direction and per server,
//! raw and compiled.
//!
//! ```yaml
//! scanners:
//!   pii: redact                          # one action for both directions …
//!   secrets: { request: block, response: redact }   # … or per direction
//!   injection: { response: block, invisible_unicode: flag }   # … and per category
//!   poisoning: quarantine                # tool metadata: quarantine | flag | off
//!   pinning: { new_tools: first_use }    # first_use | auto_pin | quarantine
//!   servers:                             # per-server overrides, on top of the above
//!     crm: { pii: { email: flag }, pinning: { new_tools: quarantine } }
//! ```
//!
//! Families and the categories a family setting may name (the scanner's own category names;
//! `card`, `ssn`, `ip` and `dob` are accepted as short forms):
//!
//! | family | categories |
//! | --- | --- |
//! | `pii` | `email`, `phone`, `us_ssn`, `payment_card`, `iban`, `ip_address`, `date_of_birth`, `passport` |
//! | `secrets` | `secret` |
//! | `injection` | `prompt_injection`, `invisible_unicode`, `homoglyph`, `encoded_payload` |
//! | `poisoning` | `tool_poisoning`, `invisible_unicode`, `homoglyph`, `encoded_payload` |
//!
//! Directions: `request` is what a client sends out (tool, prompt and completion arguments);
//! `response` is what comes back from a server (tool results, resource contents, prompts, and
//! the server's own sampling/elicitation requests). `poisoning` applies to tool, prompt and
//! resource metadata and has no direction.
//!
//! Actions, from weakest to strictest: `off` (not acted on), `flag` (forward, record, alert),
//! `redact` (mask the spans in place), `approve` (hold for a reviewer; fails closed while no
//! approval flow is wired), `block` (refuse with a JSON-RPC error). For `poisoning`:
//! `quarantine` (hide the tool and refuse calls), `flag`, `off`.
//!
//! Layering: built-in defaults, then the top-level settings, then `servers.<name>`. Inside one
//! layer, a family-wide setting applies before a direction, and a direction before a category,
//! whatever the key order, so the most specific setting wins.
//!
//! Defaults (secure): `pii: redact` (except `ip_address: flag`), `secrets: block`,
//! `injection: { request: flag, response: block, invisible_unicode: flag, homoglyph: flag }`
//! (zero-width joiners occur in ordinary emoji), `poisoning: quarantine`,
//! `pinning.new_tools: first_use` (a server with no pins has its tools pinned on first sight;
//! afterwards new tools wait for approval).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::ConfigError;
use crate::raw::UniqueMap;

/// `scanners:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanners {
    /// Personal data: an action, or a mapping of `request`/`response`/category → action.
    pub pii: Option<RawSetting>,
    /// Credentials: an action, or a mapping of `request`/`response` → action.
    pub secrets: Option<RawSetting>,
    /// Prompt injection in results (and invisible characters in arguments).
    pub injection: Option<RawSetting>,
    /// Tool, prompt and resource metadata: `quarantine`, `flag` or `off`, or per category.
    pub poisoning: Option<RawSetting>,
    /// Tool definition pinning (rug-pull protection).
    pub pinning: Option<RawPinning>,
    /// Per-server overrides, keyed by catalog server name.
    pub servers: Option<UniqueMap<RawServerScanners>>,
}

/// `scanners.servers.<name>`: the same settings as the top level, for one server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerScanners {
    pub pii: Option<RawSetting>,
    pub secrets: Option<RawSetting>,
    pub injection: Option<RawSetting>,
    pub poisoning: Option<RawSetting>,
    pub pinning: Option<RawPinning>,
}

/// `scanners.pinning`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPinning {
    /// What happens to a tool the gateway has no pin for: `first_use` (default: pinned on
    /// first sight while the server has no pins at all, quarantined afterwards), `auto_pin`
    /// (always pinned on first sight) or `quarantine` (always waits for approval).
    pub new_tools: Option<String>,
}

/// A setting: an action word, or a mapping whose values are settings again.
#[derive(Debug, Clone, PartialEq)]
pub enum RawSetting {
    Action(String),
    Map(UniqueMap<RawSetting>),
}

impl<'de> Deserialize<'de> for RawSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSetting;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an action (block, redact, approve, flag, off) or a mapping")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSetting, E> {
                Ok(RawSetting::Action(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSetting, A::Error> {
                UniqueMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSetting::Map)
            }
        }
        d.deserialize_any(V)
    }
}

/// A scanner family, as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Pii,
    Secrets,
    Injection,
    Poisoning,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Pii,
        Family::Secrets,
        Family::Injection,
        Family::Poisoning,
    ];

    /// The config key (`pii`, `secrets`, `injection`, `poisoning`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Pii => "pii",
            Family::Secrets => "secrets",
            Family::Injection => "injection",
            Family::Poisoning => "poisoning",
        }
    }

    /// The categories a setting of this family may name (the scanner's category names).
    pub fn categories(self) -> &'static [&'static str] {
        match self {
            Family::Pii => &[
                "email",
                "phone",
                "us_ssn",
                "payment_card",
                "iban",
                "ip_address",
                "date_of_birth",
                "passport",
            ],
            Family::Secrets => &["secret"],
            Family::Injection => &[
                "prompt_injection",
                "invisible_unicode",
                "homoglyph",
                "encoded_payload",
            ],
            Family::Poisoning => &[
                "tool_poisoning",
                "invisible_unicode",
                "homoglyph",
                "encoded_payload",
            ],
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn category_index(self, name: &str) -> Option<usize> {
        let name = match name {
            "card" => "payment_card",
            "ssn" => "us_ssn",
            "ip" => "ip_address",
            "dob" => "date_of_birth",
            other => other,
        };
        self.categories().iter().position(|c| *c == name)
    }
}

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server: arguments of tools, prompts and completions.
    Request,
    /// Server → client: results, resource contents, prompts, sampling/elicitation requests.
    Response,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// What to do with a finding, weakest first (so `max` picks the strictest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Action {
    /// Not acted on, not recorded.
    #[default]
    Off,
    /// Forwarded unchanged; the finding is recorded and an alert raised.
    Flag,
    /// The spans are masked in place (strings stay strings, the JSON keeps its shape).
    Redact,
    /// Held for a reviewer (fails closed until an approval flow is wired).
    Approve,
    /// Refused with a JSON-RPC error; for `poisoning`, the item is quarantined.
    Block,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Off => "off",
            Action::Flag => "flag",
            Action::Redact => "redact",
            Action::Approve => "approve",
            Action::Block => "block",
        }
    }
}

/// What happens to a tool the gateway has no pin for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NewTools {
    /// Pinned on first sight while the server has no pins; quarantined once it has some.
    #[default]
    FirstUse,
    /// Always pinned on first sight (changes of pinned tools are still quarantined).
    AutoPin,
    /// Always quarantined until approved.
    Quarantine,
}

impl NewTools {
    pub fn name(self) -> &'static str {
        match self {
            NewTools::FirstUse => "first_use",
            NewTools::AutoPin => "auto_pin",
            NewTools::Quarantine => "quarantine",
        }
    }
}

const MAX_CATEGORIES: usize = 8;

/// The effective settings for one server: an action per family, category and direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanProfile {
    /// `[family][category][direction]`; poisoning uses both direction slots alike.
    table: [[[Action; 2]; MAX_CATEGORIES]; 4],
    /// `pinning.new_tools`.
    pub new_tools: NewTools,
}

impl Default for ScanProfile {
    /// The secure defaults (see the module documentation).
    fn default() -> Self {
        let mut p = ScanProfile {
            table: [[[Action::Off; 2]; MAX_CATEGORIES]; 4],
            new_tools: NewTools::FirstUse,
        };
        p.set_family(Family::Pii, None, Action::Redact);
        p.set(Family::Pii, "ip_address", None, Action::Flag);
        p.set_family(Family::Secrets, None, Action::Block);
        p.set_family(Family::Injection, Some(Direction::Request), Action::Flag);
        p.set_family(Family::Injection, Some(Direction::Response), Action::Block);
        p.set(Family::Injection, "invisible_unicode", None, Action::Flag);
        p.set(Family::Injection, "homoglyph", None, Action::Flag);
        p.set_family(Family::Poisoning, None, Action::Block);
        p
    }
}

impl ScanProfile {
    /// A profile that acts on nothing (every family `off`; new tools auto-pinned).
    pub fn off() -> Self {
        ScanProfile {
            table: [[[Action::Off; 2]; MAX_CATEGORIES]; 4],
            new_tools: NewTools::AutoPin,
        }
    }

    /// The action for a finding of `category` (the scanner's name) reported under `family`.
    /// A category this build's config does not know gets the family's strictest action.
    pub fn action(&self, family: Family, category: &str, direction: Direction) -> Action {
        let row = &self.table[family.index()];
        match family.category_index(category) {
            Some(i) => row[i][direction as usize],
            None => row[..family.categories().len()]
                .iter()
                .map(|cell| cell[direction as usize])
                .max()
                .unwrap_or(Action::Block),
        }
    }

    /// The action for tool metadata findings of `category` (`Block` means quarantine).
    pub fn poisoning(&self, category: &str) -> Action {
        self.action(Family::Poisoning, category, Direction::Response)
    }

    /// Does any category of `family` act in `direction`?
    pub fn family_enabled(&self, family: Family, direction: Direction) -> bool {
        self.table[family.index()][..family.categories().len()]
            .iter()
            .any(|cell| cell[direction as usize] != Action::Off)
    }

    /// Is any content scanning (pii, secrets, injection) on in `direction`?
    pub fn content_enabled(&self, direction: Direction) -> bool {
        [Family::Pii, Family::Secrets, Family::Injection]
            .into_iter()
            .any(|f| self.family_enabled(f, direction))
    }

    fn set_family(&mut self, family: Family, direction: Option<Direction>, action: Action) {
        for i in 0..family.categories().len() {
            self.set_cell(family, i, direction, action);
        }
    }

    fn set(&mut self, family: Family, category: &str, dir: Option<Direction>, action: Action) {
        if let Some(i) = family.category_index(category) {
            self.set_cell(family, i, dir, action);
        }
    }

    fn set_cell(&mut self, family: Family, i: usize, dir: Option<Direction>, action: Action) {
        let cell = &mut self.table[family.index()][i];
        match dir {
            Some(d) => cell[d as usize] = action,
            None => *cell = [action; 2],
        }
    }
}

/// `scanners:`, compiled: the profile of every server (servers without overrides share the
/// top-level one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScannersConfig {
    /// Defaults with the top-level settings applied.
    pub default: ScanProfile,
    /// Servers with their own overrides.
    pub servers: BTreeMap<String, ScanProfile>,
}

impl ScannersConfig {
    /// The effective settings for `server`.
    pub fn profile(&self, server: &str) -> &ScanProfile {
        self.servers.get(server).unwrap_or(&self.default)
    }
}

/// Compiles `scanners:`; `servers` are the catalog's server names (overrides must name one).
/// Problems are appended to `errors` with their paths.
pub(crate) fn compile(
    raw: Option<RawScanners>,
    servers: &[&str],
    errors: &mut Vec<ConfigError>,
) -> ScannersConfig {
    let mut config = ScannersConfig::default();
    let Some(raw) = raw else { return config };
    let mut cx = Cx { errors };
    let top = Layer {
        pii: raw.pii,
        secrets: raw.secrets,
        injection: raw.injection,
        poisoning: raw.poisoning,
        pinning: raw.pinning,
    };
    cx.apply(&mut config.default, &top, "scanners");
    for (name, over) in raw.servers.unwrap_or_default().0 {
        let path = format!("scanners.servers.{name}");
        if !servers.contains(&name.as_str()) {
            cx.error(&path, format!("no catalog server named {name:?}"));
            continue;
        }
        let mut profile = config.default.clone();
        let layer = Layer {
            pii: over.pii,
            secrets: over.secrets,
            injection: over.injection,
            poisoning: over.poisoning,
            pinning: over.pinning,
        };
        cx.apply(&mut profile, &layer, &path);
        config.servers.insert(name, profile);
    }
    config
}

struct Layer {
    pii: Option<RawSetting>,
    secrets: Option<RawSetting>,
    injection: Option<RawSetting>,
    poisoning: Option<RawSetting>,
    pinning: Option<RawPinning>,
}

struct Cx<'a> {
    errors: &'a mut Vec<ConfigError>,
}

impl Cx<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn apply(&mut self, profile: &mut ScanProfile, layer: &Layer, path: &str) {
        for (family, setting) in [
            (Family::Pii, &layer.pii),
            (Family::Secrets, &layer.secrets),
            (Family::Injection, &layer.injection),
            (Family::Poisoning, &layer.poisoning),
        ] {
            if let Some(setting) = setting {
                self.family(
                    profile,
                    family,
                    setting,
                    &format!("{path}.{}", family.name()),
                );
            }
        }
        if let Some(pinning) = &layer.pinning
            && let Some(word) = &pinning.new_tools
        {
            match word.as_str() {
                "first_use" => profile.new_tools = NewTools::FirstUse,
                "auto_pin" => profile.new_tools = NewTools::AutoPin,
                "quarantine" => profile.new_tools = NewTools::Quarantine,
                other => self.error(
                    &format!("{path}.pinning.new_tools"),
                    format!("unknown value {other:?} (expected first_use, auto_pin or quarantine)"),
                ),
            }
        }
    }

    fn action(&mut self, family: Family, word: &str, path: &str) -> Option<Action> {
        let action = if family == Family::Poisoning {
            match word {
                "quarantine" => Some(Action::Block),
                "flag" => Some(Action::Flag),
                "off" => Some(Action::Off),
                _ => None,
            }
        } else {
            match word {
                "block" => Some(Action::Block),
                "redact" => Some(Action::Redact),
                "approve" => Some(Action::Approve),
                "flag" => Some(Action::Flag),
                "off" => Some(Action::Off),
                _ => None,
            }
        };
        if action.is_none() {
            let expected = if family == Family::Poisoning {
                "quarantine, flag or off"
            } else {
                "block, redact, approve, flag or off"
            };
            self.error(
                path,
                format!("unknown action {word:?} (expected {expected})"),
            );
        }
        action
    }

    fn family(&mut self, p: &mut ScanProfile, family: Family, setting: &RawSetting, path: &str) {
        let entries = match setting {
            RawSetting::Action(word) => {
                if let Some(action) = self.action(family, word, path) {
                    p.set_family(family, None, action);
                }
                return;
            }
            RawSetting::Map(entries) => entries,
        };
        // Directions first, then categories, whatever the key order: the specific one wins.
        for (key, value) in entries.iter() {
            let key_path = format!("{path}.{key}");
            let Some(direction) = direction_of(key) else {
                continue;
            };
            if family == Family::Poisoning {
                self.error(
                    &key_path,
                    "poisoning applies to tool metadata and has no request/response",
                );
                continue;
            }
            match value {
                RawSetting::Action(word) => {
                    if let Some(action) = self.action(family, word, &key_path) {
                        p.set_family(family, Some(direction), action);
                    }
                }
                RawSetting::Map(_) => self.error(&key_path, "expected an action"),
            }
        }
        for (key, value) in entries.iter() {
            if direction_of(key).is_some() {
                continue;
            }
            let key_path = format!("{path}.{key}");
            let Some(index) = family.category_index(key) else {
                let mut expected: Vec<&str> = Vec::new();
                if family != Family::Poisoning {
                    expected.extend(["request", "response"]);
                }
                expected.extend(family.categories());
                self.error(
                    &key_path,
                    format!("unknown key (expected one of {})", expected.join(", ")),
                );
                continue;
            };
            match value {
                RawSetting::Action(word) => {
                    if let Some(action) = self.action(family, word, &key_path) {
                        p.set_cell(family, index, None, action);
                    }
                }
                RawSetting::Map(directions) if family != Family::Poisoning => {
                    for (dkey, dvalue) in directions.iter() {
                        let dpath = format!("{key_path}.{dkey}");
                        match (direction_of(dkey), dvalue) {
                            (Some(direction), RawSetting::Action(word)) => {
                                if let Some(action) = self.action(family, word, &dpath) {
                                    p.set_cell(family, index, Some(direction), action);
                                }
                            }
                            (Some(_), RawSetting::Map(_)) => {
                                self.error(&dpath, "expected an action")
                            }
                            (None, _) => {
                                self.error(&dpath, "unknown key (expected request or response)")
                            }
                        }
                    }
                }
                RawSetting::Map(_) => self.error(&key_path, "expected quarantine, flag or off"),
            }
        }
    }
}

fn direction_of(key: &str) -> Option<Direction> {
    match key {
        "request" => Some(Direction::Request),
        "response" => Some(Direction::Response),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_yaml(yaml: &str, servers: &[&str]) -> Result<ScannersConfig, Vec<String>> {
        let raw: RawScanners = serde_yaml_ng::from_str(yaml).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let config = compile(Some(raw), servers, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn defaults_are_secure() {
        let p = ScanProfile::default();
        use Direction::*;
        assert_eq!(
            p.action(Family::Pii, "payment_card", Request),
            Action::Redact
        );
        assert_eq!(p.action(Family::Pii, "email", Response), Action::Redact);
        assert_eq!(p.action(Family::Pii, "ip_address", Request), Action::Flag);
        assert_eq!(p.action(Family::Secrets, "secret", Request), Action::Block);
        assert_eq!(p.action(Family::Secrets, "secret", Response), Action::Block);
        assert_eq!(
            p.action(Family::Injection, "prompt_injection", Response),
            Action::Block
        );
        assert_eq!(
            p.action(Family::Injection, "prompt_injection", Request),
            Action::Flag
        );
        assert_eq!(
            p.action(Family::Injection, "invisible_unicode", Response),
            Action::Flag
        );
        assert_eq!(p.poisoning("tool_poisoning"), Action::Block);
        assert_eq!(p.poisoning("invisible_unicode"), Action::Block);
        assert_eq!(p.new_tools, NewTools::FirstUse);
        // A category the config does not know gets the family's strictest action.
        assert_eq!(p.action(Family::Pii, "tax_id", Request), Action::Redact);
    }

    #[test]
    fn the_design_line_compiles() {
        let c = compile_yaml(
            "{ pii: redact, secrets: block, injection: block, poisoning: quarantine }",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.default
                .action(Family::Injection, "invisible_unicode", Direction::Response),
            Action::Block,
            "a family-wide action replaces the default of every category"
        );
    }

    #[test]
    fn specific_settings_win_whatever_the_key_order() {
        let c = compile_yaml(
            "pii: { card: block, request: flag, email: { response: off } }\nsecrets: { response: redact }",
            &[],
        )
        .unwrap();
        let p = &c.default;
        use Direction::*;
        assert_eq!(
            p.action(Family::Pii, "payment_card", Request),
            Action::Block
        );
        assert_eq!(
            p.action(Family::Pii, "payment_card", Response),
            Action::Block
        );
        assert_eq!(p.action(Family::Pii, "phone", Request), Action::Flag);
        assert_eq!(p.action(Family::Pii, "phone", Response), Action::Redact);
        assert_eq!(p.action(Family::Pii, "email", Request), Action::Flag);
        assert_eq!(p.action(Family::Pii, "email", Response), Action::Off);
        assert_eq!(p.action(Family::Secrets, "secret", Request), Action::Block);
        assert_eq!(
            p.action(Family::Secrets, "secret", Response),
            Action::Redact
        );
    }

    #[test]
    fn server_overrides_layer_on_the_top_level() {
        let c = compile_yaml(
            "pii: flag\nservers:\n  crm: { pii: { email: off }, pinning: { new_tools: quarantine } }",
            &["crm", "other"],
        )
        .unwrap();
        let crm = c.profile("crm");
        assert_eq!(
            crm.action(Family::Pii, "email", Direction::Request),
            Action::Off
        );
        assert_eq!(
            crm.action(Family::Pii, "phone", Direction::Request),
            Action::Flag
        );
        assert_eq!(crm.new_tools, NewTools::Quarantine);
        let other = c.profile("other");
        assert_eq!(
            other.action(Family::Pii, "email", Direction::Request),
            Action::Flag
        );
        assert_eq!(other.new_tools, NewTools::FirstUse);
    }

    #[test]
    fn errors_name_their_path() {
        let errors = compile_yaml(
            "pii: { card: blok, request: { x: flag }, fingerprint: flag, email: { sideways: flag } }\npoisoning: { request: flag, tool_poisoning: redact }\npinning: { new_tools: maybe }\nservers: { nope: { pii: off } }",
            &["crm"],
        )
        .unwrap_err();
        let expected = [
            "scanners.pii.request: expected an action",
            "scanners.pii.card: unknown action \"blok\" (expected block, redact, approve, flag or off)",
            "scanners.pii.fingerprint: unknown key (expected one of request, response, email, phone, us_ssn, payment_card, iban, ip_address, date_of_birth, passport)",
            "scanners.pii.email.sideways: unknown key (expected request or response)",
            "scanners.poisoning.request: poisoning applies to tool metadata and has no request/response",
            "scanners.poisoning.tool_poisoning: unknown action \"redact\" (expected quarantine, flag or off)",
            "scanners.pinning.new_tools: unknown value \"maybe\" (expected first_use, auto_pin or quarantine)",
            "scanners.servers.nope: no catalog server named \"nope\"",
        ];
        assert_eq!(errors, expected);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let error = compile_yaml("pii: { card: flag, card: block }", &[]).unwrap_err();
        assert!(error[0].contains("duplicate key `card`"), "{error:?}");
    }
}
