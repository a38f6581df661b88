//! Strict JSON-RPC 2.0 envelope: the one parser every MCP message goes through.
//!
//! Architecture Invariant: the value that is authorized is the value that is forwarded. To make
//! that hold, [`parse`] rejects duplicate object keys at every depth (serde_json would silently keep
//! the last one), bounds nesting depth and size, and keeps the `id` and every top-level member as
//! raw JSON text. Rewriting a message ([`Envelope::set_member`], [`Envelope::set_id`]) replaces
//! exactly one member; [`Envelope::to_bytes`] writes all others back byte for byte.
//!
//! API contract used by the gateway (do not change signatures without updating callers):
//! - `parse(bytes, &Limits) -> Result<Parsed, EnvelopeError>`
//! - `Envelope::{kind, method, id, params, member, params_value, set_member, remove_member,
//!   set_id, to_bytes}`
//! - builders `Envelope::request/notification/result/error`.
//!
//! How parsing works (one pass over the top level, one checking pass per member):
//! 1. The body must be UTF-8. The top level is read with serde_json; each top-level member value
//!    is captured as a borrowed [`RawValue`] (serde_json skips it iteratively, so a 100k-deep
//!    array cannot overflow the stack).
//! 2. Each member value is then walked by a checking visitor ([`Check`]) that builds nothing: it
//!    tracks the keys of every object (decoded, so `"\u0061"` and `"a"` collide) and the nesting
//!    depth, and stops at the first duplicate or at `max_depth`. It also refuses serde_json's
//!    private marker keys (`$serde_json::private::RawValue`, `…::Number`), which make a
//!    `serde_json::Value` read an object as something else (found by the fuzz target).
//! 3. The JSON-RPC shape is validated from the raw members.
//!
//! Depth counting: the message object itself is depth 1, an object or array directly inside it is
//! depth 2, and so on. A batch array does not count, so a message has the same depth inside and
//! outside a batch. Limits above [`MAX_SUPPORTED_DEPTH`] are clamped to it (serde_json's own
//! recursion guard sits just above).
//!
//! Numbers are checked the way `serde_json::Value` would read them, so a number that does not fit
//! an `f64` (such as `1e400`) is refused as a parse error: no later stage could read it either.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Bounds applied while parsing untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting depth of arrays/objects anywhere in the message.
    pub max_depth: usize,
    /// Maximum number of messages in a JSON-RPC batch (2025-03-26 only).
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_batch: 64,
        }
    }
}

/// The deepest nesting [`parse`] can check; larger [`Limits::max_depth`] values are clamped.
pub const MAX_SUPPORTED_DEPTH: usize = 120;

/// What kind of JSON-RPC message an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result`.
    Result,
    /// Has `error` (and an `id`, possibly `null` when the request id could not be read).
    Error,
}

/// One parse of a body: a single message or a batch (JSON array).
#[derive(Debug)]
pub enum Parsed {
    Single(Envelope),
    Batch(Vec<Envelope>),
}

/// Why a body was refused. Each variant maps to JSON-RPC `-32700` (parse) or `-32600` (invalid
/// request) at the edge; messages are meant for the client and name the offending key or depth.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("parse error: {0}")]
    Syntax(String),
    #[error("duplicate key {key:?} in a JSON object (at {path})")]
    DuplicateKey { key: String, path: String },
    #[error("JSON nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("batch of {0} messages exceeds the limit of {1}")]
    BatchTooLarge(usize, usize),
    #[error("empty batch")]
    EmptyBatch,
    #[error("invalid JSON-RPC message: {0}")]
    Invalid(String),
}

impl EnvelopeError {
    /// The JSON-RPC error code this failure is reported with.
    pub fn code(&self) -> i64 {
        match self {
            EnvelopeError::Syntax(_)
            | EnvelopeError::DuplicateKey { .. }
            | EnvelopeError::TooDeep(_) => -32700,
            _ => -32600,
        }
    }
}

/// A parsed JSON-RPC message whose top-level members are kept raw, in their original order.
#[derive(Debug, Clone)]
pub struct Envelope {
    members: Vec<(String, Box<RawValue>)>,
    kind: Kind,
    /// `method` decoded once (it is raw JSON text in `members`), so [`Envelope::method`] can lend it.
    method: Option<String>,
}

/// Parses one HTTP body or stdio line. Validates JSON-RPC 2.0 shape (`jsonrpc: "2.0"`, `id` a
/// string or integer — never null, fractional or boolean — for requests; `method` a string),
/// rejects duplicate keys at any depth, and enforces `limits`.
///
/// A batch is refused as a whole when any element is invalid. Whether batches are allowed at all
/// depends on the protocol version (see [`crate::era::allows_batches`]); that is the caller's call.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Parsed, EnvelopeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| EnvelopeError::Syntax(format!("body is not valid UTF-8: {e}")))?;
    let mut state = State::new(limits);
    let mut de = serde_json::Deserializer::from_str(text);
    let top = de
        .deserialize_any(TopVisitor { state: &mut state })
        .and_then(|top| de.end().map(|()| top));
    match top {
        Ok(Top::Single(members)) => Ok(Parsed::Single(Envelope::from_members(members)?)),
        Ok(Top::Batch(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (index, members) in items.into_iter().enumerate() {
                out.push(Envelope::from_members(members).map_err(|e| match e {
                    EnvelopeError::Invalid(msg) => {
                        EnvelopeError::Invalid(format!("batch element {index}: {msg}"))
                    }
                    other => other,
                })?);
            }
            Ok(Parsed::Batch(out))
        }
        Err(err) => Err(state.into_error(err)),
    }
}

impl Envelope {
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The `method` member, for requests and notifications.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }
    /// The raw `id` token exactly as received (e.g. `123456789012345678901234567890` survives).
    pub fn id(&self) -> Option<&RawValue> {
        self.member("id")
    }
    /// The raw `params` member.
    pub fn params(&self) -> Option<&RawValue> {
        self.member("params")
    }
    /// Any top-level member, raw.
    pub fn member(&self, name: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| &**v)
    }
    /// All top-level members, raw, in wire order.
    pub fn members(&self) -> impl ExactSizeIterator<Item = (&str, &RawValue)> {
        self.members.iter().map(|(k, v)| (k.as_str(), &**v))
    }
    /// `params` parsed into a `serde_json::Value`. Safe because duplicates were rejected.
    pub fn params_value(&self) -> Option<serde_json::Value> {
        serde_json::from_str(self.params()?.get()).ok()
    }
    /// Any top-level member parsed into a `serde_json::Value` (e.g. `result`, `error`).
    pub fn member_value(&self, name: &str) -> Option<serde_json::Value> {
        serde_json::from_str(self.member(name)?.get()).ok()
    }
    /// Replaces (or appends) one top-level member; all others keep their bytes.
    ///
    /// The caller is trusted: the value is not re-validated. [`Envelope::kind`] and
    /// [`Envelope::method`] follow the new members (e.g. adding an `id` to a notification makes it
    /// a request).
    pub fn set_member(&mut self, name: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == name) {
            Some((_, slot)) => *slot = value,
            None => self.members.push((name.to_owned(), value)),
        }
        self.refresh(name);
    }
    /// Removes one top-level member.
    pub fn remove_member(&mut self, name: &str) -> Option<Box<RawValue>> {
        let index = self.members.iter().position(|(k, _)| k == name)?;
        let (_, value) = self.members.remove(index);
        self.refresh(name);
        Some(value)
    }
    /// Replaces the id with another raw token.
    pub fn set_id(&mut self, id: Box<RawValue>) {
        self.set_member("id", id)
    }
    /// Serialises: `{` members in order `}` with no whitespace added.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = 2 + self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.push(b'{');
        for (i, (key, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, key);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        out
    }
    /// Builds a request; `params` None omits the member.
    pub fn request(id: Box<RawValue>, method: &str, params: Option<Box<RawValue>>) -> Envelope {
        let mut members = vec![
            jsonrpc_member(),
            ("id".to_owned(), id),
            ("method".to_owned(), to_raw(method)),
        ];
        if let Some(params) = params {
            members.push(("params".to_owned(), params));
        }
        Envelope {
            members,
            kind: Kind::Request,
            method: Some(method.to_owned()),
        }
    }
    pub fn notification(method: &str, params: Option<Box<RawValue>>) -> Envelope {
        let mut members = vec![jsonrpc_member(), ("method".to_owned(), to_raw(method))];
        if let Some(params) = params {
            members.push(("params".to_owned(), params));
        }
        Envelope {
            members,
            kind: Kind::Notification,
            method: Some(method.to_owned()),
        }
    }
    /// A success response.
    pub fn result(id: Box<RawValue>, result: Box<RawValue>) -> Envelope {
        let members = vec![
            jsonrpc_member(),
            ("id".to_owned(), id),
            ("result".to_owned(), result),
        ];
        Envelope {
            members,
            kind: Kind::Result,
            method: None,
        }
    }
    /// An error response; `id` None writes `"id": null`.
    pub fn error(
        id: Option<Box<RawValue>>,
        code: i64,
        message: &str,
        data: Option<serde_json::Value>,
    ) -> Envelope {
        let id = id.unwrap_or_else(|| raw_literal("null"));
        #[derive(serde::Serialize)]
        struct ErrorObject<'a> {
            code: i64,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            data: Option<serde_json::Value>,
        }
        let error = ErrorObject {
            code,
            message,
            data,
        };
        let members = vec![
            jsonrpc_member(),
            ("id".to_owned(), id),
            ("error".to_owned(), to_raw(&error)),
        ];
        Envelope {
            members,
            kind: Kind::Error,
            method: None,
        }
    }

    /// Validates the JSON-RPC 2.0 shape of already duplicate-checked members.
    fn from_members(members: Vec<(String, Box<RawValue>)>) -> Result<Envelope, EnvelopeError> {
        let find = |name: &str| {
            members
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.get())
        };
        match find("jsonrpc") {
            Some("\"2.0\"") => {}
            Some(other) if decode_string(other).as_deref() == Some("2.0") => {}
            Some(other) => {
                return Err(invalid(format!(
                    "`jsonrpc` must be \"2.0\", got {}",
                    preview(other)
                )));
            }
            None => return Err(invalid("missing `jsonrpc` member")),
        }
        let id = find("id");
        let has_result = find("result").is_some();
        let error = find("error");
        let kind = if let Some(method) = find("method") {
            let method =
                decode_string(method).ok_or_else(|| invalid("`method` must be a string"))?;
            if has_result || error.is_some() {
                return Err(invalid(
                    "a message cannot have both `method` and `result`/`error`",
                ));
            }
            if let Some(params) = find("params")
                && !params.starts_with(['{', '['])
            {
                return Err(invalid("`params` must be an object or an array"));
            }
            let kind = match id {
                Some(id) => {
                    check_id(id, false)?;
                    Kind::Request
                }
                None => Kind::Notification,
            };
            return Ok(Envelope {
                kind,
                method: Some(method.into_owned()),
                members,
            });
        } else if let Some(error) = error {
            if has_result {
                return Err(invalid("a response cannot have both `result` and `error`"));
            }
            if let Some(id) = id {
                check_id(id, true)?;
            }
            check_error_object(error)?;
            Kind::Error
        } else if has_result {
            check_id(
                id.ok_or_else(|| invalid("a result response must have an `id`"))?,
                false,
            )?;
            Kind::Result
        } else {
            return Err(invalid("a message needs `method`, `result` or `error`"));
        };
        Ok(Envelope {
            members,
            kind,
            method: None,
        })
    }

    /// Keeps `kind` and `method` in step after a member changed.
    fn refresh(&mut self, changed: &str) {
        if changed == "method" {
            self.method = self
                .member("method")
                .and_then(|m| decode_string(m.get()))
                .map(Cow::into_owned);
        }
        let has = |name: &str| self.member(name).is_some();
        self.kind = if has("method") {
            if has("id") {
                Kind::Request
            } else {
                Kind::Notification
            }
        } else if has("error") {
            Kind::Error
        } else if has("result") {
            Kind::Result
        } else {
            self.kind
        };
    }
}

/// Convenience: turns any serialisable value into an owned raw JSON value.
pub fn to_raw<T: serde::Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("serialising an in-memory value cannot fail")
}

fn raw_literal(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_owned()).expect("literal is valid JSON")
}

fn jsonrpc_member() -> (String, Box<RawValue>) {
    ("jsonrpc".to_owned(), raw_literal("\"2.0\""))
}

fn invalid(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid(msg.into())
}

/// First characters of a raw value, for error messages.
fn preview(raw: &str) -> String {
    const MAX: usize = 40;
    if raw.len() <= MAX {
        return raw.to_owned();
    }
    let mut end = MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end])
}

/// The text of a raw JSON string token, decoded; None if the token is not a string.
fn decode_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains(['\\', '"']) {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// Ids are strings or integers (any size: kept raw). `null` only for error responses.
fn check_id(raw: &str, null_ok: bool) -> Result<(), EnvelopeError> {
    match raw.as_bytes().first() {
        Some(b'"') => Ok(()),
        Some(b'-' | b'0'..=b'9') if !raw.contains(['.', 'e', 'E']) => Ok(()),
        Some(b'n') if null_ok => Ok(()),
        _ => Err(invalid(format!(
            "`id` must be a string or an integer, got {}",
            preview(raw)
        ))),
    }
}

/// `error` must be an object with an integer `code` and a string `message`.
fn check_error_object(raw: &str) -> Result<(), EnvelopeError> {
    #[derive(serde::Deserialize)]
    struct ErrorObject {
        code: serde_json::Number,
        #[allow(dead_code)]
        message: String,
    }
    let bad = || invalid("`error` must be an object with an integer `code` and a string `message`");
    let parsed: ErrorObject = serde_json::from_str(raw).map_err(|_| bad())?;
    if parsed.code.is_i64() || parsed.code.is_u64() {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // serde_json escapes exactly what JSON requires; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing machinery.

/// A failure recorded while serde_json unwinds; serde errors are strings, this keeps the type.
enum Failure {
    /// A duplicate key, or (`reserved`) a key serde_json treats as a private marker.
    Key {
        key: String,
        path: Vec<Segment>,
        reserved: bool,
    },
    TooDeep,
    Batch(EnvelopeError),
    Member(String),
}

/// One step of a JSON path, collected innermost first while an error unwinds.
enum Segment {
    Key(String),
    Index(usize),
}

/// Shared by every visitor of one [`parse`] call.
struct State<'de> {
    max_depth: usize,
    max_batch: usize,
    /// Keys of the objects currently open, innermost last; each object owns a suffix.
    keys: Vec<Cow<'de, str>>,
    failure: Option<Failure>,
}

impl<'de> State<'de> {
    fn new(limits: &Limits) -> Self {
        State {
            max_depth: limits.max_depth.min(MAX_SUPPORTED_DEPTH),
            max_batch: limits.max_batch,
            keys: Vec::with_capacity(32),
            failure: None,
        }
    }

    /// Adds a path step to a duplicate-key failure that is unwinding through this level.
    fn note_path(&mut self, segment: impl FnOnce() -> Segment) {
        if let Some(Failure::Key { path, .. }) = &mut self.failure {
            path.push(segment());
        }
    }

    fn into_error(self, err: serde_json::Error) -> EnvelopeError {
        match self.failure {
            Some(Failure::Key {
                key,
                path,
                reserved: false,
            }) => EnvelopeError::DuplicateKey {
                key,
                path: format_path(&path),
            },
            Some(Failure::Key {
                key,
                path,
                reserved: true,
            }) => EnvelopeError::Invalid(format!(
                "object key {key:?} is reserved (it changes how serde_json reads the object) (at {})",
                format_path(&path)
            )),
            Some(Failure::TooDeep) => EnvelopeError::TooDeep(self.max_depth),
            Some(Failure::Batch(e)) => e,
            Some(Failure::Member(msg)) => EnvelopeError::Syntax(msg),
            None if err.is_data() => EnvelopeError::Invalid(err.to_string()),
            None => EnvelopeError::Syntax(err.to_string()),
        }
    }
}

fn format_path(innermost_first: &[Segment]) -> String {
    let mut out = String::from("$");
    for segment in innermost_first.iter().rev() {
        match segment {
            Segment::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
            Segment::Key(k) => {
                let plain = k
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if plain {
                    out.push('.');
                    out.push_str(k);
                } else {
                    out.push('[');
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(']');
                }
            }
        }
    }
    out
}

type Members = Vec<(String, Box<RawValue>)>;

enum Top {
    Single(Members),
    Batch(Vec<Members>),
}

/// Above this many keys an object's duplicate check switches from a linear scan to a hash set.
const LINEAR_KEYS: usize = 16;

/// Decoded object key, borrowed from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Duplicate detection for the keys of one object.
struct KeySet<'de> {
    /// Index in `State::keys` where this object's keys start (while `set` is None).
    base: usize,
    set: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> KeySet<'de> {
    fn new(state: &State<'de>) -> Self {
        KeySet {
            base: state.keys.len(),
            set: None,
        }
    }

    /// Records `key`; false if it was already present.
    #[expect(
        clippy::ptr_arg,
        reason = "cloning the Cow keeps borrowed keys allocation-free"
    )]
    fn insert(&mut self, state: &mut State<'de>, key: &Cow<'de, str>) -> bool {
        if let Some(set) = &mut self.set {
            return set.insert(key.clone());
        }
        if state.keys[self.base..].iter().any(|k| k == key) {
            return false;
        }
        state.keys.push(key.clone());
        if state.keys.len() - self.base > LINEAR_KEYS {
            self.set = Some(state.keys.drain(self.base..).collect());
        }
        true
    }

    fn finish(self, state: &mut State<'de>) {
        state.keys.truncate(self.base);
    }
}

/// serde_json reads an object whose first key is one of these as something else entirely
/// (`{"$serde_json::private::RawValue":"[1]"}` becomes `[1]` in a `Value`): a parser
/// differential between the policy's view and the upstream's, so such keys are refused.
const RESERVED_KEYS: [&str; 2] = [
    "$serde_json::private::RawValue",
    "$serde_json::private::Number",
];

/// Checks one object key: not reserved, not seen before in this object.
#[expect(
    clippy::ptr_arg,
    reason = "the Cow is cloned into the key set without allocating"
)]
fn check_key<'de, E: de::Error>(
    state: &mut State<'de>,
    keys: &mut KeySet<'de>,
    key: &Cow<'de, str>,
) -> Result<(), E> {
    let reserved = key.starts_with('$') && RESERVED_KEYS.contains(&key.as_ref());
    if !reserved && keys.insert(state, key) {
        return Ok(());
    }
    state.failure = Some(Failure::Key {
        key: key.clone().into_owned(),
        path: Vec::new(),
        reserved,
    });
    Err(E::custom(format_args!("refused key {key:?}")))
}

/// Reads the top level: one message object or a batch array of them.
struct TopVisitor<'a, 'de> {
    state: &'a mut State<'de>,
}

impl<'de> Visitor<'de> for TopVisitor<'_, 'de> {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message object or a batch array")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top, A::Error> {
        read_message(self.state, map).map(Top::Single)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        let state = self.state;
        let mut items = Vec::new();
        loop {
            if items.len() == state.max_batch {
                // Over the limit: count the rest without checking it, then refuse.
                let mut count = items.len();
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                if count > state.max_batch {
                    state.failure = Some(Failure::Batch(EnvelopeError::BatchTooLarge(
                        count,
                        state.max_batch,
                    )));
                    return Err(de::Error::custom("batch too large"));
                }
                break;
            }
            let index = items.len();
            match seq.next_element_seed(MessageSeed { state: &mut *state }) {
                Ok(Some(members)) => items.push(members),
                Ok(None) => break,
                Err(e) => {
                    state.note_path(|| Segment::Index(index));
                    if state.failure.is_none() && e.to_string().starts_with("invalid type") {
                        state.failure = Some(Failure::Batch(invalid(format!(
                            "batch element {index} is not an object"
                        ))));
                    }
                    return Err(e);
                }
            }
        }
        if items.is_empty() {
            state.failure = Some(Failure::Batch(EnvelopeError::EmptyBatch));
            return Err(de::Error::custom("empty batch"));
        }
        Ok(Top::Batch(items))
    }
}

/// One batch element: must be an object.
struct MessageSeed<'a, 'de> {
    state: &'a mut State<'de>,
}

impl<'de> DeserializeSeed<'de> for MessageSeed<'_, 'de> {
    type Value = Members;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Members, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed<'_, 'de> {
    type Value = Members;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Members, A::Error> {
        read_message(self.state, map)
    }
}

/// Collects the top-level members of one message as raw values, checking each one.
fn read_message<'de, A: MapAccess<'de>>(
    state: &mut State<'de>,
    mut map: A,
) -> Result<Members, A::Error> {
    if state.max_depth == 0 {
        state.failure = Some(Failure::TooDeep);
        return Err(de::Error::custom("too deep"));
    }
    let mut members: Members = Vec::with_capacity(map.size_hint().unwrap_or(6));
    let mut keys = KeySet::new(state);
    while let Some(key) = map.next_key_seed(KeySeed)? {
        check_key(state, &mut keys, &key)?;
        let raw: &'de RawValue = map.next_value()?;
        let text: &'de str = raw.get();
        let mut de = serde_json::Deserializer::from_str(text);
        let checked = de
            .deserialize_any(Check {
                state: &mut *state,
                depth: 2,
            })
            .and_then(|()| de.end());
        if let Err(e) = checked {
            state.note_path(|| Segment::Key(key.clone().into_owned()));
            if state.failure.is_none() {
                state.failure = Some(Failure::Member(format!("in member {key:?}: {e}")));
            }
            return Err(de::Error::custom(e));
        }
        members.push((key.into_owned(), raw.to_owned()));
    }
    keys.finish(state);
    Ok(members)
}

/// Walks a value without building it: rejects duplicate keys and excess depth.
/// `depth` is the depth an array or object at this position would have.
struct Check<'a, 'de> {
    state: &'a mut State<'de>,
    depth: usize,
}

impl<'de> Check<'_, 'de> {
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        if self.depth > self.state.max_depth {
            self.state.failure = Some(Failure::TooDeep);
            return Err(E::custom("too deep"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Check<'_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        let mut index = 0usize;
        loop {
            match seq.next_element_seed(Check {
                state: &mut *self.state,
                depth: self.depth + 1,
            }) {
                Ok(Some(())) => index += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.state.note_path(|| Segment::Index(index));
                    return Err(e);
                }
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        let state = self.state;
        let mut keys = KeySet::new(state);
        while let Some(key) = map.next_key_seed(KeySeed)? {
            check_key(state, &mut keys, &key)?;
            if let Err(e) = map.next_value_seed(Check {
                state: &mut *state,
                depth: self.depth + 1,
            }) {
                state.note_path(|| Segment::Key(key.into_owned()));
                return Err(e);
            }
        }
        keys.finish(state);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(text: &str) -> Envelope {
        match parse(text.as_bytes(), &Limits::default()) {
            Ok(Parsed::Single(env)) => env,
            other => panic!("expected a single message for {text}, got {other:?}"),
        }
    }

    fn err(text: &str) -> EnvelopeError {
        match parse(text.as_bytes(), &Limits::default()) {
            Err(e) => e,
            Ok(p) => panic!("expected {text} to be refused, got {p:?}"),
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn duplicate_key_argument_bypass() {
        let e = err(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"path":"/tmp/x","path":"/etc/passwd"}}}"#,
        );
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "path".into(),
                path: "$.params.arguments".into()
            }
        );
        assert_eq!(e.code(), -32700);
    }

    #[test]
    fn duplicate_top_level_method_bypass() {
        let e = err(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{}}"#,
        );
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "method".into(),
                path: "$".into()
            }
        );
    }

    #[test]
    fn duplicate_top_level_id_bypass() {
        let e = err(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#);
        assert!(
            matches!(e, EnvelopeError::DuplicateKey { ref key, .. } if key == "id"),
            "{e:?}"
        );
    }

    #[test]
    fn nested_duplicate_key_in_array_bypass() {
        let e = err(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"items":[{"a":1},{"cmd":"ls","cmd":"rm -rf /"}]}}}"#,
        );
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "cmd".into(),
                path: "$.params.arguments.items[1]".into()
            }
        );
    }

    #[test]
    fn escaped_key_duplicate_bypass() {
        let e = err(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1,"\u0061":2}}"#);
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "a".into(),
                path: "$.params".into()
            }
        );
        let e = err(r#"{"jsonrpc":"2.0","id":1,"\u006dethod":"a","method":"b"}"#);
        assert!(
            matches!(e, EnvelopeError::DuplicateKey { ref key, .. } if key == "method"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_in_large_object_bypass() {
        // More keys than the linear scan handles: the hash set must still see the duplicate.
        let mut args: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        args.push("\"k7\":0".into());
        let text = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{{}}}}}"#,
            args.join(",")
        );
        assert_eq!(
            err(&text),
            EnvelopeError::DuplicateKey {
                key: "k7".into(),
                path: "$.params".into()
            }
        );
        args.pop();
        let text = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{{{}}}}}"#,
            args.join(",")
        );
        single(&text);
    }

    /// Found by the `envelope` fuzz target: serde_json's `Value` reads an object whose first key
    /// is its private RawValue marker as the JSON text of the marker's value, so the policy
    /// (reading `params` as a `Value`) and the upstream would see different arguments.
    #[test]
    fn serde_json_magic_key_bypass() {
        let text = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"$serde_json::private::RawValue":"{\"path\":\"/tmp/x\"}"}}}"#;
        let e = err(text);
        assert!(
            matches!(&e, EnvelopeError::Invalid(m) if m.contains("$.params.arguments")),
            "{e:?}"
        );
        assert_eq!(e.code(), -32600);
        let e = err(r#"{"$serde_json::private::Number":"1","jsonrpc":"2.0","method":"m"}"#);
        assert!(
            matches!(&e, EnvelopeError::Invalid(m) if m.contains("reserved")),
            "{e:?}"
        );
        // Escaped spelling of the same key is refused too (keys are compared decoded).
        assert!(matches!(
            err(
                r#"{"jsonrpc":"2.0","method":"m","params":{"\u0024serde_json::private::RawValue":"1"}}"#
            ),
            EnvelopeError::Invalid(_)
        ));
        // A look-alike is an ordinary key.
        single(r#"{"jsonrpc":"2.0","method":"m","params":{"$serde_json::private::Other":"1"}}"#);
    }

    #[test]
    fn same_key_in_sibling_objects_is_fine() {
        single(
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":{"x":1},"b":{"x":2},"c":[{"x":1},{"x":1}]}}"#,
        );
    }

    #[test]
    fn duplicate_path_quotes_odd_keys() {
        let e = err(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"a b":{"q":1,"q":2}}}"#);
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "q".into(),
                path: r#"$.params["a b"]"#.into()
            }
        );
    }

    #[test]
    fn large_integer_id_survives() {
        let text = r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}"#;
        let env = single(text);
        assert_eq!(env.id().unwrap().get(), "123456789012345678901234567890");
        assert_eq!(env.to_bytes(), text.as_bytes());
        let env = single(r#"{"jsonrpc":"2.0","id":"abc","method":"ping"}"#);
        assert_eq!(env.id().unwrap().get(), r#""abc""#);
    }

    #[test]
    fn deep_nesting_is_rejected_not_stack_overflow() {
        let deep = "[".repeat(100_000);
        assert!(matches!(
            err(&deep),
            EnvelopeError::Syntax(_) | EnvelopeError::Invalid(_)
        ));
        let inside = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}}}"#,
            "[".repeat(100_000)
        );
        assert!(matches!(err(&inside), EnvelopeError::Syntax(_)));
        let closed = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(err(&closed), EnvelopeError::TooDeep(64));
        let objects = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}1{}}}"#,
            r#"{"a":"#.repeat(50_000),
            "}".repeat(50_000)
        );
        assert_eq!(err(&objects), EnvelopeError::TooDeep(64));
        let batch = format!("[{}]", "{\"a\":".repeat(50_000));
        assert!(parse(batch.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn depth_limit_is_exact() {
        let limits = Limits {
            max_depth: 4,
            max_batch: 4,
        };
        // message (1) > params object (2) > outer array (3) > inner array (4)
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":[[1]]}}"#;
        assert!(parse(ok.as_bytes(), &limits).is_ok());
        let deep = r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"arguments":[[[1]]]}}"#;
        assert_eq!(
            parse(deep.as_bytes(), &limits).unwrap_err(),
            EnvelopeError::TooDeep(4)
        );
        let batch = format!("[{ok}]");
        assert!(parse(batch.as_bytes(), &limits).is_ok());
        let huge = Limits {
            max_depth: 10_000,
            max_batch: 4,
        };
        let closed = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"m","params":{}{}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        );
        assert_eq!(
            parse(closed.as_bytes(), &huge).unwrap_err(),
            EnvelopeError::TooDeep(MAX_SUPPORTED_DEPTH)
        );
    }

    #[test]
    fn invalid_json_is_a_parse_error() {
        for text in [
            "",
            "{",
            "{\"jsonrpc\":\"2.0\",}",
            "nul",
            "{\"a\":1} x",
            "\u{feff}{}",
            "{\"a\":\"\\ud800\"}",
        ] {
            let e = err(text);
            assert_eq!(e.code(), -32700, "{text:?} gave {e:?}");
        }
        assert!(matches!(
            parse(b"{\"a\":\"\xff\"}", &Limits::default()),
            Err(EnvelopeError::Syntax(_))
        ));
    }

    #[test]
    fn number_out_of_f64_range_is_refused() {
        assert_eq!(
            err(r#"{"jsonrpc":"2.0","id":1,"method":"m","params":{"n":1e400}}"#).code(),
            -32700
        );
    }

    #[test]
    fn shape_is_validated() {
        let cases = [
            r#"{"id":1,"method":"m"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"m"}"#,
            r#"{"jsonrpc":2.0,"id":1,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":true,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1e3,"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"m"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"m","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":null,"result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1.5,"message":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
            "42",
            "\"x\"",
            "null",
            "[1]",
            "[[]]",
        ];
        for text in cases {
            let e = err(text);
            assert_eq!(e.code(), -32600, "{text} gave {e:?}");
        }
    }

    #[test]
    fn kinds_are_recognised() {
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#).kind(),
            Kind::Request
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","method":"m"}"#).kind(),
            Kind::Notification
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":"a","result":null}"#).kind(),
            Kind::Result
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#).kind(),
            Kind::Error
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"x","data":[1]}}"#).kind(),
            Kind::Error
        );
        assert_eq!(
            single(r#"{"jsonrpc":"2\u002e0","id":-0,"method":"t\/x"}"#).method(),
            Some("t/x")
        );
    }

    #[test]
    fn unknown_members_and_order_are_kept() {
        let text = r#"{"x-extra":{"b":1, "a":[1, 2]},"method":"tools/call","jsonrpc":"2.0","id":7,"params":{"name":"a","task":{"ttl":5}}}"#;
        let env = single(text);
        assert_eq!(env.to_bytes(), text.as_bytes());
        assert_eq!(
            env.member("x-extra").unwrap().get(),
            r#"{"b":1, "a":[1, 2]}"#
        );
        let names: Vec<&str> = env.members().map(|(k, _)| k).collect();
        assert_eq!(names, ["x-extra", "method", "jsonrpc", "id", "params"]);
        assert_eq!(env.params_value().unwrap()["task"]["ttl"], 5);
    }

    #[test]
    fn whitespace_between_members_is_dropped() {
        let env = single(
            "  {\n \"jsonrpc\" : \"2.0\" ,\t\"id\" : 1 , \"method\":\"m\" , \"params\" : { \"a\" : 1 } }\r\n",
        );
        assert_eq!(
            env.to_bytes(),
            br#"{"jsonrpc":"2.0","id":1,"method":"m","params":{ "a" : 1 }}"#
        );
    }

    #[test]
    fn keys_are_re_escaped() {
        let env = single(r#"{"jsonrpc":"2.0","method":"m","we\"ird\n\u00e9":1}"#);
        let bytes = env.to_bytes();
        assert_eq!(
            bytes,
            "{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"we\\\"ird\\n\u{e9}\":1}".as_bytes()
        );
        let back = single(std::str::from_utf8(&bytes).unwrap());
        assert!(back.member("we\"ird\n\u{e9}").is_some());
    }

    #[test]
    fn batches() {
        let one = r#"{"jsonrpc":"2.0","id":1,"method":"m"}"#;
        match parse(format!("[{one},{one}]").as_bytes(), &Limits::default()).unwrap() {
            Parsed::Batch(items) => assert_eq!(items.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(err("[]"), EnvelopeError::EmptyBatch);
        assert_eq!(err(" [ ] ").code(), -32600);
        let limits = Limits {
            max_depth: 8,
            max_batch: 2,
        };
        assert_eq!(
            parse(format!("[{one},{one},{one}]").as_bytes(), &limits).unwrap_err(),
            EnvelopeError::BatchTooLarge(3, 2)
        );
        assert!(
            matches!(err(&format!("[{one},5]")), EnvelopeError::Invalid(m) if m.contains("element 1"))
        );
        let e = err(&format!(
            r#"[{one},{{"jsonrpc":"2.0","method":"m","params":{{"a":1,"a":2}}}}]"#
        ));
        assert_eq!(
            e,
            EnvelopeError::DuplicateKey {
                key: "a".into(),
                path: "$[1].params".into()
            }
        );
        assert!(
            matches!(err(&format!(r#"[{one},{{"jsonrpc":"2.0","id":null,"method":"m"}}]"#)), EnvelopeError::Invalid(m) if m.contains("element 1"))
        );
    }

    #[test]
    fn rewriting_keeps_other_bytes() {
        let text = r#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"a__b", "arguments":{}}}"#;
        let mut env = single(text);
        env.set_id(raw("17"));
        env.set_member("params", raw(r#"{"name":"b"}"#));
        assert_eq!(
            env.to_bytes(),
            br#"{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"name":"b"}}"#
        );
        env.set_member("x", raw("true"));
        assert!(env.to_bytes().ends_with(br#","x":true}"#));
        assert_eq!(env.remove_member("x").unwrap().get(), "true");
        assert!(env.remove_member("x").is_none());
        env.remove_member("id");
        assert_eq!(env.kind(), Kind::Notification);
        env.set_member("method", raw(r#""other""#));
        assert_eq!(env.method(), Some("other"));
        env.set_id(raw("1"));
        assert_eq!(env.kind(), Kind::Request);
    }

    #[test]
    fn builders_produce_valid_messages() {
        let check = |env: Envelope, kind: Kind| {
            let bytes = env.to_bytes();
            let back = single(std::str::from_utf8(&bytes).unwrap());
            assert_eq!(back.kind(), kind);
            assert_eq!(env.kind(), kind);
            bytes
        };
        let b = check(
            Envelope::request(raw("1"), "tools/list", None),
            Kind::Request,
        );
        assert_eq!(b, br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        let b = check(
            Envelope::request(raw("\"x\""), "tools/call", Some(raw(r#"{"name":"a"}"#))),
            Kind::Request,
        );
        assert_eq!(
            b,
            br#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"a"}}"#
        );
        let b = check(
            Envelope::notification("notifications/initialized", None),
            Kind::Notification,
        );
        assert_eq!(
            b,
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#
        );
        let b = check(Envelope::result(raw("2"), raw("{}")), Kind::Result);
        assert_eq!(b, br#"{"jsonrpc":"2.0","id":2,"result":{}}"#);
        let b = check(
            Envelope::error(None, -32700, "Parse \"error\"", None),
            Kind::Error,
        );
        assert_eq!(
            b,
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse \"error\""}}"#
        );
        let b = check(
            Envelope::error(
                Some(raw("3")),
                -32020,
                "mismatch",
                Some(serde_json::json!({"header":"Mcp-Name"})),
            ),
            Kind::Error,
        );
        assert_eq!(b, br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32020,"message":"mismatch","data":{"header":"Mcp-Name"}}}"#);
        assert_eq!(
            Envelope::request(raw("1"), "a\"b", None).method(),
            Some("a\"b")
        );
    }

    /// Small deterministic generator of JSON text that knows whether it wrote a duplicate key.
    struct Gen {
        seed: u64,
        duplicate: bool,
        max_depth_seen: usize,
    }

    impl Gen {
        fn next(&mut self) -> u64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed
        }
        fn pick(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        /// A key from a small set, sometimes written with escapes (same decoded text).
        fn key(&mut self, out: &mut String) -> String {
            let k = ["a", "b", "path", "é", "a\"b"][self.pick(5)];
            if self.pick(4) == 0 {
                out.push('"');
                for c in k.chars() {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                }
                out.push('"');
            } else {
                out.push_str(&serde_json::to_string(k).unwrap());
            }
            k.to_owned()
        }
        fn value(&mut self, out: &mut String, depth: usize) {
            self.max_depth_seen = self.max_depth_seen.max(depth);
            let choice = if depth > 6 {
                3 + self.pick(6)
            } else {
                self.pick(9)
            };
            match choice {
                0 | 1 => {
                    out.push('{');
                    let mut seen = Vec::new();
                    for i in 0..self.pick(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        let k = self.key(out);
                        if seen.contains(&k) {
                            self.duplicate = true;
                        }
                        seen.push(k);
                        out.push(':');
                        self.value(out, depth + 1);
                    }
                    out.push('}');
                }
                2 => {
                    out.push('[');
                    for i in 0..self.pick(4) {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        self.value(out, depth + 1);
                    }
                    out.push(']');
                }
                3 => out.push_str(
                    ["0", "-1", "123456789012345678901234567890", "1.5e3", "-0.0"][self.pick(5)],
                ),
                4 => out.push_str(["true", "false", "null"][self.pick(3)]),
                5 => out.push_str(
                    ["\"x\"", "\"\\n\\u00e9\\ud83d\\ude00\"", "\"\"", "\"2.0\""][self.pick(4)],
                ),
                _ => self.value(out, depth + 1),
            }
        }
    }

    /// The fuzz target's invariant over generated messages and byte mutations of them: no
    /// panic; accepted input is valid JSON with the same meaning after `to_bytes`; a generated
    /// duplicate key is always refused.
    #[test]
    fn generated_messages_round_trip_and_duplicates_are_caught() {
        let limits = Limits {
            max_depth: 8,
            max_batch: 4,
        };
        let mut g = Gen {
            seed: 0x2545_F491_4F6C_DD1D,
            duplicate: false,
            max_depth_seen: 0,
        };
        let (mut accepted, mut duplicates) = (0, 0);
        for round in 0..600 {
            g.duplicate = false;
            g.max_depth_seen = 0;
            let mut text = String::from(r#"{"jsonrpc":"2.0","id":"#);
            text.push_str(["1", "\"r\"", "99999999999999999999999"][g.pick(3)]);
            text.push_str(r#","method":"tools/call","params":{"arguments":"#);
            g.value(&mut text, 3);
            text.push_str("}}");
            let mut bytes = text.into_bytes();
            let mutated = round % 3 == 0;
            if mutated {
                for _ in 0..1 + g.pick(3) {
                    let at = g.pick(bytes.len());
                    match g.pick(3) {
                        0 => bytes[at] = b"{}[]\",:\\u0a"[g.pick(11)],
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, b"{}[]\",:\\ "[g.pick(9)]),
                    }
                }
            }
            let result = parse(&bytes, &limits);
            if !mutated && g.duplicate {
                duplicates += 1;
                assert!(
                    matches!(
                        result,
                        Err(EnvelopeError::DuplicateKey { .. }) | Err(EnvelopeError::TooDeep(_))
                    ),
                    "duplicate not caught in {}: {result:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            let Ok(parsed) = result else { continue };
            accepted += 1;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).expect("accepted input is JSON");
            let Parsed::Single(env) = parsed else {
                panic!("not a batch")
            };
            let out = env.to_bytes();
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&out).unwrap(),
                value
            );
            match parse(&out, &limits) {
                Ok(Parsed::Single(again)) => {
                    let a: Vec<_> = env
                        .members()
                        .map(|(k, v)| (k.to_owned(), v.get().to_owned()))
                        .collect();
                    let b: Vec<_> = again
                        .members()
                        .map(|(k, v)| (k.to_owned(), v.get().to_owned()))
                        .collect();
                    assert_eq!(a, b);
                    assert_eq!(env.kind(), again.kind());
                }
                other => panic!("reparse failed: {other:?}"),
            }
        }
        assert!(
            accepted > 100,
            "only {accepted} generated messages were accepted"
        );
        assert!(
            duplicates > 20,
            "only {duplicates} generated messages had a duplicate key"
        );
    }

    /// The official 2026-07-28 examples that are JSON-RPC messages survive parse → to_bytes →
    /// parse unchanged.
    #[test]
    fn official_examples_round_trip() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/reference/mcp/schema/2026-07-28/examples");
        let types = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!("official examples not found at {} ({e}); the shared/ checkout must sit beside the repository", dir.display())
        });
        let mut seen = 0;
        for entry in types {
            for file in std::fs::read_dir(entry.unwrap().path()).unwrap() {
                let path = file.unwrap().path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                if value.get("jsonrpc").is_none() {
                    continue;
                }
                let env = match parse(&bytes, &Limits::default()) {
                    Ok(Parsed::Single(env)) => env,
                    other => panic!("{} did not parse as one message: {other:?}", path.display()),
                };
                let out = env.to_bytes();
                let again: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(again, value, "{}", path.display());
                assert!(matches!(
                    parse(&out, &Limits::default()),
                    Ok(Parsed::Single(_))
                ));
                seen += 1;
            }
        }
        assert!(
            seen >= 30,
            "only {seen} JSON-RPC examples found in {}",
            dir.display()
        );
    }
}
