//! The `when:` condition language: a small, CEL-shaped subset, compiled once at config load.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | compare
//! compare := primary (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") primary)?
//! primary := number | string | true | false | null | path | "(" expr ")" | "[" list "]"
//! path    := root ("." name)*      roots: args, agent, user, roles, server, tool, method
//! ```
//!
//! Strings are `'…'` or `"…"` (escapes `\\ \" \' \n \t`); numbers are decimal (compared as
//! `f64`). `x in [..]` tests list membership, `x in args.list` membership in a JSON array,
//! `"k" in args.obj` a key of a JSON object, `"r" in roles` a role of the caller.
//!
//! Evaluation never panics and never guesses: a missing field, comparing a number with a string
//! by order, or a non-boolean result is an [`EvalError`]. `&&` and `||` absorb an error when the
//! other side decides the result (`false && error` is `false`, `true || error` is `true`), like
//! CEL. What an error means for a rule is the policy's business (it fails closed).

use serde_json::Value;
use std::fmt;

/// Longest accepted expression, in bytes.
pub const MAX_EXPR_LEN: usize = 4096;
/// Deepest accepted nesting of the expression.
const MAX_DEPTH: usize = 64;

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    source: String,
    node: Node,
}

/// Where names in an expression come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Args,
    Agent,
    User,
    Roles,
    Server,
    Tool,
    Method,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Value),
    Path(Root, Vec<String>),
    List(Vec<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Op, Box<Node>, Box<Node>),
}

/// What a condition can see of a call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env<'a> {
    pub args: Option<&'a Value>,
    pub agent: &'a str,
    pub user: Option<&'a str>,
    pub roles: &'a [String],
    pub server: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub method: &'a str,
}

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {offset})")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

/// Why an expression could not be evaluated for a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{0} is missing")]
    Missing(String),
    #[error("cannot compare {0} with {1}")]
    Types(&'static str, &'static str),
    #[error("expected a boolean, got {0}")]
    NotBool(&'static str),
}

impl Expr {
    /// Compiles `source`.
    pub fn parse(source: &str) -> Result<Expr, ParseError> {
        if source.len() > MAX_EXPR_LEN {
            return Err(ParseError {
                offset: MAX_EXPR_LEN,
                message: format!("expression longer than {MAX_EXPR_LEN} bytes"),
            });
        }
        let tokens = lex(source)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            end: source.len(),
        };
        let node = parser.expr()?;
        if let Some((offset, token)) = parser.tokens.get(parser.pos) {
            return Err(ParseError {
                offset: *offset,
                message: format!("unexpected {token}"),
            });
        }
        Ok(Expr {
            source: source.to_owned(),
            node,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a boolean.
    pub fn eval(&self, env: &Env<'_>) -> Result<bool, EvalError> {
        truth(eval(&self.node, env)?)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Not,
    And,
    Or,
    Minus,
    Op(Op),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Dot => f.write_str("`.`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::LBracket => f.write_str("`[`"),
            Tok::RBracket => f.write_str("`]`"),
            Tok::Not => f.write_str("`!`"),
            Tok::And => f.write_str("`&&`"),
            Tok::Or => f.write_str("`||`"),
            Tok::Minus => f.write_str("`-`"),
            Tok::Op(op) => write!(f, "`{}`", op_text(*op)),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "==",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::In => "in",
    }
}

fn lex(source: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let err = |offset: usize, message: String| ParseError { offset, message };
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = bytes.get(i + 1).copied();
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'.' => Tok::Dot,
            b',' => Tok::Comma,
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b'[' => Tok::LBracket,
            b']' => Tok::RBracket,
            b'-' => Tok::Minus,
            b'&' if two == Some(b'&') => {
                i += 1;
                Tok::And
            }
            b'|' if two == Some(b'|') => {
                i += 1;
                Tok::Or
            }
            b'=' if two == Some(b'=') => {
                i += 1;
                Tok::Op(Op::Eq)
            }
            b'!' if two == Some(b'=') => {
                i += 1;
                Tok::Op(Op::Ne)
            }
            b'!' => Tok::Not,
            b'<' if two == Some(b'=') => {
                i += 1;
                Tok::Op(Op::Le)
            }
            b'<' => Tok::Op(Op::Lt),
            b'>' if two == Some(b'=') => {
                i += 1;
                Tok::Op(Op::Ge)
            }
            b'>' => Tok::Op(Op::Gt),
            b'"' | b'\'' => {
                let quote = c;
                let mut text = String::new();
                let mut chars = source[i + 1..].char_indices();
                let mut closed = None;
                while let Some((k, ch)) = chars.next() {
                    match ch {
                        '\\' => match chars.next() {
                            Some((_, 'n')) => text.push('\n'),
                            Some((_, 't')) => text.push('\t'),
                            Some((_, e @ ('\\' | '"' | '\''))) => text.push(e),
                            _ => return Err(err(i + 1 + k, "unknown escape in string".into())),
                        },
                        ch if ch as u32 == u32::from(quote) => {
                            closed = Some(i + 1 + k);
                            break;
                        }
                        ch => text.push(ch),
                    }
                }
                let Some(end) = closed else {
                    return Err(err(start, "unterminated string".into()));
                };
                i = end;
                Tok::Str(text)
            }
            b'0'..=b'9' => {
                let mut j = i;
                while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                    j += 1;
                }
                let text = &source[i..j];
                let n: f64 = text
                    .parse()
                    .map_err(|_| err(start, format!("invalid number {text:?}")))?;
                i = j - 1;
                Tok::Num(n)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                let word = &source[i..j];
                i = j - 1;
                if word == "in" {
                    Tok::Op(Op::In)
                } else {
                    Tok::Ident(word.to_owned())
                }
            }
            _ => {
                let ch = source[i..].chars().next().unwrap_or('?');
                return Err(err(start, format!("unexpected character {ch:?}")));
            }
        };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

// ---- parser ----

struct Parser {
    tokens: Vec<(usize, Tok)>,
    pos: usize,
    depth: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            offset: self.offset(),
            message: message.into(),
        })
    }

    fn next(&mut self) -> Option<Tok> {
        let tok = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        if tok.is_some() {
            self.pos += 1;
        }
        tok
    }

    fn expect(&mut self, want: Tok) -> Result<(), ParseError> {
        match self.peek() {
            Some(tok) if *tok == want => {
                self.pos += 1;
                Ok(())
            }
            Some(tok) => {
                let msg = format!("expected {want}, found {tok}");
                self.fail(msg)
            }
            None => self.fail(format!("expected {want}, found the end")),
        }
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail("expression nested too deeply");
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Node, ParseError> {
        self.deeper()?;
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        self.depth -= 1;
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.unary()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Node, ParseError> {
        let left = self.primary()?;
        if let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.primary()?;
            if matches!(left, Node::List(_)) || (op != Op::In && matches!(right, Node::List(_))) {
                return self.fail("a list literal is only allowed on the right of `in`");
            }
            return Ok(Node::Cmp(op, Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let offset = self.offset();
        match self.next() {
            Some(Tok::Num(n)) => Ok(Node::Lit(number(n))),
            Some(Tok::Minus) => match self.next() {
                Some(Tok::Num(n)) => Ok(Node::Lit(number(-n))),
                _ => Err(ParseError {
                    offset,
                    message: "`-` must be followed by a number".into(),
                }),
            },
            Some(Tok::Str(s)) => Ok(Node::Lit(Value::String(s))),
            Some(Tok::LParen) => {
                let inner = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(inner)
            }
            Some(Tok::LBracket) => {
                let mut items = Vec::new();
                if self.peek() != Some(&Tok::RBracket) {
                    loop {
                        let item = self.primary()?;
                        if matches!(item, Node::List(_)) {
                            return self.fail("nested lists are not supported");
                        }
                        items.push(item);
                        if self.peek() == Some(&Tok::Comma) {
                            self.pos += 1;
                            continue;
                        }
                        break;
                    }
                }
                self.expect(Tok::RBracket)?;
                Ok(Node::List(items))
            }
            Some(Tok::Ident(word)) => {
                let root = match word.as_str() {
                    "true" => return Ok(Node::Lit(Value::Bool(true))),
                    "false" => return Ok(Node::Lit(Value::Bool(false))),
                    "null" => return Ok(Node::Lit(Value::Null)),
                    "args" => Root::Args,
                    "agent" => Root::Agent,
                    "user" => Root::User,
                    "roles" => Root::Roles,
                    "server" => Root::Server,
                    "tool" => Root::Tool,
                    "method" => Root::Method,
                    other => {
                        return Err(ParseError {
                            offset,
                            message: format!(
                                "unknown name `{other}` (use args.…, agent, user, roles, server, tool or method)"
                            ),
                        });
                    }
                };
                let mut fields = Vec::new();
                while self.peek() == Some(&Tok::Dot) {
                    self.pos += 1;
                    match self.next() {
                        Some(Tok::Ident(field)) => fields.push(field),
                        Some(Tok::Num(n)) if n.fract() == 0.0 && n >= 0.0 => {
                            fields.push(format!("{n}"))
                        }
                        _ => return self.fail("expected a field name after `.`"),
                    }
                }
                if root != Root::Args && !fields.is_empty() {
                    return Err(ParseError {
                        offset,
                        message: format!("`{word}` has no fields"),
                    });
                }
                Ok(Node::Path(root, fields))
            }
            Some(tok) => Err(ParseError {
                offset,
                message: format!("unexpected {tok}"),
            }),
            None => Err(ParseError {
                offset,
                message: "unexpected end of expression".into(),
            }),
        }
    }
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

// ---- evaluation ----

/// A value during evaluation, borrowed from the expression or the call.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Json(&'a Value),
    Str(&'a str),
    Bool(bool),
    Roles(&'a [String]),
    List(&'a [Node]),
}

fn kind(v: &Val<'_>) -> &'static str {
    match v {
        Val::Json(Value::Null) => "null",
        Val::Json(Value::Bool(_)) | Val::Bool(_) => "a boolean",
        Val::Json(Value::Number(_)) => "a number",
        Val::Json(Value::String(_)) | Val::Str(_) => "a string",
        Val::Json(Value::Array(_)) | Val::Roles(_) | Val::List(_) => "a list",
        Val::Json(Value::Object(_)) => "an object",
    }
}

fn truth(v: Val<'_>) -> Result<bool, EvalError> {
    match v {
        Val::Bool(b) => Ok(b),
        Val::Json(Value::Bool(b)) => Ok(*b),
        other => Err(EvalError::NotBool(kind(&other))),
    }
}

fn eval<'a>(node: &'a Node, env: &Env<'a>) -> Result<Val<'a>, EvalError> {
    Ok(match node {
        Node::Lit(v) => Val::Json(v),
        Node::List(items) => Val::List(items),
        Node::Path(root, fields) => match root {
            Root::Agent => Val::Str(env.agent),
            Root::Method => Val::Str(env.method),
            Root::User => Val::Str(env.user.ok_or_else(|| EvalError::Missing("user".into()))?),
            Root::Server => Val::Str(
                env.server
                    .ok_or_else(|| EvalError::Missing("server".into()))?,
            ),
            Root::Tool => Val::Str(env.tool.ok_or_else(|| EvalError::Missing("tool".into()))?),
            Root::Roles => Val::Roles(env.roles),
            Root::Args => {
                let missing = || EvalError::Missing(format!("args.{}", fields.join(".")));
                let mut value = env.args.ok_or_else(missing)?;
                for field in fields {
                    value = match value {
                        Value::Object(map) => map.get(field.as_str()),
                        Value::Array(items) => {
                            field.parse::<usize>().ok().and_then(|i| items.get(i))
                        }
                        _ => None,
                    }
                    .ok_or_else(missing)?;
                }
                Val::Json(value)
            }
        },
        Node::Not(inner) => Val::Bool(!truth(eval(inner, env)?)?),
        Node::And(a, b) => {
            let left = eval(a, env).and_then(truth);
            if left == Ok(false) {
                return Ok(Val::Bool(false));
            }
            let right = eval(b, env).and_then(truth);
            match (left, right) {
                (_, Ok(false)) => Val::Bool(false),
                (Ok(true), Ok(true)) => Val::Bool(true),
                (Ok(false), _) => Val::Bool(false),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            }
        }
        Node::Or(a, b) => {
            let left = eval(a, env).and_then(truth);
            if left == Ok(true) {
                return Ok(Val::Bool(true));
            }
            let right = eval(b, env).and_then(truth);
            match (left, right) {
                (_, Ok(true)) => Val::Bool(true),
                (Ok(false), Ok(false)) => Val::Bool(false),
                (Ok(true), _) => Val::Bool(true),
                (Err(e), _) | (_, Err(e)) => return Err(e),
            }
        }
        Node::Cmp(op, a, b) => {
            let left = eval(a, env)?;
            let right = eval(b, env)?;
            Val::Bool(compare(*op, left, right, env)?)
        }
    })
}

/// A scalar view for comparisons.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scalar<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
}

fn scalar<'a>(v: &Val<'a>) -> Option<Scalar<'a>> {
    Some(match *v {
        Val::Json(Value::Null) => Scalar::Null,
        Val::Json(Value::Bool(b)) => Scalar::Bool(*b),
        Val::Bool(b) => Scalar::Bool(b),
        Val::Json(Value::Number(n)) => Scalar::Num(n.as_f64()?),
        Val::Json(Value::String(s)) => Scalar::Str(s),
        Val::Str(s) => Scalar::Str(s),
        _ => return None,
    })
}

fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (scalar(a), scalar(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (a, b) {
            (Val::Json(x), Val::Json(y)) => x == y,
            _ => false,
        },
    }
}

fn compare<'a>(op: Op, a: Val<'a>, b: Val<'a>, env: &Env<'a>) -> Result<bool, EvalError> {
    match op {
        Op::Eq => Ok(equal(&a, &b)),
        Op::Ne => Ok(!equal(&a, &b)),
        Op::In => match b {
            Val::List(items) => {
                for item in items {
                    if equal(&a, &eval(item, env)?) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Val::Json(Value::Array(items)) => Ok(items.iter().any(|i| equal(&a, &Val::Json(i)))),
            Val::Json(Value::Object(map)) => match scalar(&a) {
                Some(Scalar::Str(key)) => Ok(map.contains_key(key)),
                _ => Err(EvalError::Types(kind(&a), "an object's keys")),
            },
            Val::Roles(roles) => match scalar(&a) {
                Some(Scalar::Str(role)) => Ok(roles.iter().any(|r| r == role)),
                _ => Err(EvalError::Types(kind(&a), "roles")),
            },
            other => Err(EvalError::Types(kind(&a), kind(&other))),
        },
        Op::Lt | Op::Le | Op::Gt | Op::Ge => {
            let ordering = match (scalar(&a), scalar(&b)) {
                (Some(Scalar::Num(x)), Some(Scalar::Num(y))) => x.partial_cmp(&y),
                (Some(Scalar::Str(x)), Some(Scalar::Str(y))) => Some(x.cmp(y)),
                _ => None,
            }
            .ok_or(EvalError::Types(kind(&a), kind(&b)))?;
            Ok(match op {
                Op::Lt => ordering.is_lt(),
                Op::Le => ordering.is_le(),
                Op::Gt => ordering.is_gt(),
                _ => ordering.is_ge(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Evaluates `source` against `args` (agent `alice`, role `admin`): `Ok(bool)`,
    /// `Err("eval: …")` or `Err("parse: …")`.
    fn check(source: &str, args: Value) -> Result<bool, String> {
        let expr = Expr::parse(source).map_err(|e| format!("parse: {e}"))?;
        let roles = vec!["admin".to_owned()];
        let env = Env {
            args: Some(&args),
            agent: "alice",
            user: None,
            roles: &roles,
            server: Some("billing"),
            tool: Some("billing__refund"),
            method: "tools/call",
        };
        expr.eval(&env).map_err(|e| format!("eval: {e}"))
    }

    #[test]
    fn conditions() {
        let a = || json!({"amount": 150, "currency": "EUR", "tags": ["x", "vip"], "nested": {"ok": true}, "s": "100"});
        for (source, expected) in [
            ("args.amount > 100", Ok(true)),
            ("args.amount > 150", Ok(false)),
            ("args.amount >= 150 && args.currency == 'EUR'", Ok(true)),
            ("args.amount < 10 || args.currency == \"EUR\"", Ok(true)),
            ("!(args.amount > 100)", Ok(false)),
            ("args.currency in ['USD', 'EUR']", Ok(true)),
            ("'vip' in args.tags", Ok(true)),
            ("'ok' in args.nested", Ok(true)),
            ("args.nested.ok", Ok(true)),
            ("args.tags.1 == 'vip'", Ok(true)),
            ("agent == 'alice' && 'admin' in roles", Ok(true)),
            ("tool == 'billing__refund' && server == 'billing'", Ok(true)),
            ("args.amount == -1", Ok(false)),
            ("args.amount != 150.0", Ok(false)),
            ("args.s == 100", Ok(false)),
            ("args.s > 100", Err("eval: cannot compare a string with a number".to_owned())),
            ("args.missing > 1", Err("eval: args.missing is missing".to_owned())),
            ("args.missing > 1 || true", Ok(true)),
            ("args.missing > 1 && false", Ok(false)),
            ("args.amount", Err("eval: expected a boolean, got a number".to_owned())),
            ("user == 'x'", Err("eval: user is missing".to_owned())),
            ("args.amount >", Err("parse: unexpected end of expression (at byte 13)".to_owned())),
            ("foo > 1", Err("parse: unknown name `foo` (use args.…, agent, user, roles, server, tool or method) (at byte 0)".to_owned())),
            ("args.a = 1", Err("parse: unexpected character '=' (at byte 7)".to_owned())),
            ("'abc", Err("parse: unterminated string (at byte 0)".to_owned())),
            ("[1] == [1]", Err("parse: a list literal is only allowed on the right of `in` (at byte 10)".to_owned())),
            ("agent.x == 1", Err("parse: `agent` has no fields (at byte 0)".to_owned())),
            ("(args.amount > 1", Err("parse: expected `)`, found the end (at byte 16)".to_owned())),
            ("args.amount > 1 1", Err("parse: unexpected number 1 (at byte 16)".to_owned())),
        ] {
            assert_eq!(check(source, a()), expected, "{source}");
        }
    }

    #[test]
    fn limits() {
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Expr::parse(&deep)
                .unwrap_err()
                .message
                .contains("too deeply")
        );
        let nots = format!("{}true", "!".repeat(100));
        assert!(Expr::parse(&nots).is_err());
        assert!(Expr::parse(&"1".repeat(MAX_EXPR_LEN + 1)).is_err());
    }
}
