//! Snapshot-style tests of `portcullis.yaml` compilation: every case is a YAML text and the exact
//! text `portcullis check` would print for it (errors with their paths, or `ok` plus warnings),
//! compared by one [`check`] helper. Environment variables come from [`Loader::with_vars`], never
//! from the process environment.

use portcullis_config::raw::{parse_duration, parse_rfc3339, parse_size};
use portcullis_config::{Config, ConfigErrors, Credentials, Loader, Secret, Transport};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const KEY_SHA: &str = "85dbe15d75ef9308c7ae0f33c7a324cc6f4bf519a2ed2f3027bd33c140a4f9aa";
const ANON: &str = "auth: { anonymous: { agent: dev } }\n";
const NO_AUTH: &str = "ok\nwarning: auth: no api_keys, oidc or anonymous access configured: every call will be refused with 401";

/// What `check` prints: `ok` and one `warning:` line per warning, or one line per error.
fn render(result: &Result<Config, ConfigErrors>) -> String {
    match result {
        Ok(config) => std::iter::once("ok".to_owned())
            .chain(config.warnings().iter().map(|w| format!("warning: {w}")))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(errors) => errors
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// Removes the common indentation of the non-blank lines and surrounding blank lines.
fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim_matches('\n')
        .to_owned()
        + "\n"
}

/// Compiles `yaml` (dedented) with an empty environment and compares the rendered outcome.
#[track_caller]
fn check(yaml: &str, expected: &str) -> Option<Config> {
    check_env(&[], yaml, expected)
}

/// [`check`] with the given environment variables.
#[track_caller]
fn check_env(vars: &[(&str, &str)], yaml: &str, expected: &str) -> Option<Config> {
    let result = Loader::with_vars(vars.iter().copied()).from_yaml(&dedent(yaml), "test.yaml");
    let actual = render(&result);
    let expected = dedent(expected);
    assert_eq!(
        actual.trim(),
        expected.trim(),
        "\n--- actual ---\n{actual}\n--------------"
    );
    result.ok()
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-config-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- rules -----

#[test]
fn rules_compile_and_errors_name_their_path() {
    let config = check(
        r#"
        rules:
          - { id: read-only, allow: { agents: [support-bot], tools: ["time__*"] } }
          - { id: big-refunds, approve: { tools: ["billing__refund"], when: "args.amount > 100" } }
          - { id: no-sampling, deny: { methods: [sampling/createMessage] } }
          - id: hinted
            allow: { annotations: { readOnlyHint: true }, hours: "09:00-18:00", days: [mon, fri] }
          - { id: everything-else, allow: {} }
        "#,
        NO_AUTH,
    )
    .expect("compiles");
    assert_eq!(config.policy.len(), 5);
    check(
        "rules: [{ id: a, allow: { agent: [x] } }]",
        "rules[0].allow.agent: unknown field, expected one of `agents`, `users`, `roles`, `servers`, `tools`, `methods`, `annotations`, `hours`, `days`, `when`, `timeout`, `approvers`, `role`, `self_approval` (line 1, column 27)",
    );
    check(
        "rules: [{ id: a, permit: {} }]",
        "rules[0].permit: unknown field, expected one of `id`, `allow`, `deny`, `approve` (line 1, column 18)",
    );
    check(
        "rules: [{ id: a, allow: { annotations: { readOnlyHint: true, readOnlyHint: false } } }]",
        "rules[0].allow.annotations.readOnlyHint: duplicate key (line 1, column 40)",
    );
    check(
        r#"
        rules:
          - { id: a, allow: {}, deny: {} }
          - { allow: { when: "args.amount >" } }
          - { id: a, approve: { when: "args.amount > 100", hours: "9-5" } }
          - { id: b }
          - { id: c, deny: { methods: [tools/lsit], tools: [refund] } }
        "#,
        r#"
        rules[0]: set exactly one of `allow`, `deny` or `approve`, not several
        rules[1].id: required: every rule has an id
        rules[1].allow.when: unexpected end of expression (at byte 13)
        rules[2].id: duplicate rule id "a" (also rules[0])
        rules[2].approve.hours: invalid hours "9-5": expected "HH:MM-HH:MM" (UTC), e.g. "09:00-18:00"
        rules[3]: set exactly one of `allow`, `deny` or `approve`
        rules[4].deny.methods[0]: unknown method "tools/lsit" (one of tools/call, resources/read, resources/subscribe, resources/unsubscribe, prompts/get, completion/complete, subscriptions/listen, sampling/createMessage, elicitation/create, roots/list)
        rules[4].deny.tools[0]: "refund" is not an aggregated name: tools are named server__tool
        "#,
    );
}

// ----- the DESIGN.md example -----

#[test]
fn design_example_compiles_with_warnings_for_unenforced_sections() {
    let yaml = format!(
        r#"
        listen: 127.0.0.1:8686
        public_url: http://127.0.0.1:8686          # the OAuth resource identifier / token audience
        storage: sqlite://portcullis.db             # or postgres://user@host/db
        servers:                                    # the catalog: nothing else is reachable
          time:
            command: [uvx, mcp-server-time]         # stdio upstream, supervised by the gateway
          github:
            url: https://mcp.example.com/mcp        # streamable HTTP (or legacy SSE) upstream
            credentials: {{ bearer_env: GITHUB_MCP_TOKEN }}   # the gateway's own; client tokens never pass
        auth:
          api_keys: [{{ agent: support-bot, sha256: "{KEY_SHA}" }}]
          oidc: {{ issuer: https://idp.example.com, audience: http://127.0.0.1:8686/mcp }}
          # anonymous: {{ agent: local-dev }}         # explicit opt-in only (tests, local use); `check` warns off loopback
        rules:                                      # first match wins; no match = deny
          - {{ id: read-only, allow: {{ agents: [support-bot], tools: ["time__*"] }} }}
          - {{ id: big-refunds, approve: {{ tools: ["billing__refund"], when: "args.amount > 100" }} }}
        scanners: {{ pii: redact, secrets: block, injection: block, poisoning: quarantine }}
        audit: {{ sinks: [{{ syslog: "tcp://127.0.0.1:514", format: cef }}] }}
        "#
    );
    let config = check_env(
        &[("GITHUB_MCP_TOKEN", "ghp-test-token")],
        &yaml,
        "
        ok
        ",
    )
    .expect("compiles");

    assert_eq!(config.listen.to_string(), "127.0.0.1:8686");
    assert_eq!(config.public_url, "http://127.0.0.1:8686");
    assert_eq!(config.storage, "sqlite://portcullis.db");
    assert_eq!(config.policy.len(), 2);
    assert_eq!(
        config.servers.keys().collect::<Vec<_>>(),
        ["github", "time"]
    );
    let time = &config.servers["time"];
    assert_eq!(time.name, "time");
    assert_eq!(time.request_timeout, Duration::from_secs(120));
    assert_eq!(time.max_in_flight, 256);
    assert_eq!(
        time.transport,
        Transport::Stdio {
            command: vec!["uvx".into(), "mcp-server-time".into()],
            env: Default::default(),
            cwd: None,
        }
    );
    assert_eq!(
        config.servers["github"].transport,
        Transport::Http {
            url: "https://mcp.example.com/mcp".into(),
            legacy_sse: false,
            credentials: Some(Credentials::Bearer(Secret::new("ghp-test-token"))),
        }
    );
    assert_eq!(config.auth.api_keys.len(), 1);
    assert_eq!(config.auth.api_keys[0].agent, "support-bot");
    assert_eq!(hex::encode(config.auth.api_keys[0].sha256), KEY_SHA);
    assert_eq!(config.auth.api_keys[0].expires_at, None);
    assert_eq!(config.auth.anonymous, None);
    let oidc = config.auth.oidc.as_ref().expect("oidc");
    assert_eq!(oidc.issuer, "https://idp.example.com");
    assert_eq!(oidc.audience, "http://127.0.0.1:8686/mcp");
    assert_eq!(
        (
            oidc.agent_claim.as_str(),
            oidc.user_claim.as_str(),
            oidc.roles_claim.as_str()
        ),
        ("azp", "sub", "roles")
    );
    assert!(config.extensions.is_empty(), "{:?}", config.extensions);
    assert_eq!(
        config.policy.specs()[1].matcher.when.as_deref(),
        Some("args.amount > 100")
    );
    assert_eq!(
        config.scanners.default.poisoning("tool_poisoning"),
        portcullis_config::scanners::Action::Block
    );
    assert_eq!(config.source, None);
    assert_eq!(config.limits, Default::default());
}

#[test]
fn empty_file_is_all_defaults() {
    for text in ["", "# nothing yet\n", "---\n", "~\n"] {
        let config = check(text, NO_AUTH).expect("compiles");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8686");
        assert_eq!(config.public_url, "http://127.0.0.1:8686");
        assert_eq!(config.storage, "sqlite://portcullis.db");
        assert!(config.servers.is_empty());
        assert!(config.extensions.is_empty());
    }
}

// ----- YAML-level errors: first one only, with path, line and column -----

#[test]
fn unknown_keys_at_every_depth() {
    check(
        "lisen: 127.0.0.1:1",
        "lisen: unknown field, expected one of `listen`, `public_url`, `storage`, `allowed_origins`, `limits`, `servers`, `auth`, `rules`, `scanners`, `audit`, `admin`, `approvals`, `telemetry`, `tls` (line 1, column 1)",
    );
    check(
        "
        servers:
          time:
            comand: [uvx, mcp-server-time]
        ",
        "servers.time.comand: unknown field, expected one of `command`, `env`, `env_from`, `cwd`, `url`, `transport`, `credentials`, `request_timeout`, `max_in_flight` (line 3, column 5)",
    );
    check(
        "
        limits:
          max_body: 1
        ",
        "limits.max_body: unknown field, expected one of `max_body_bytes`, `max_json_depth`, `max_header_bytes`, `max_sessions`, `max_streams_per_session`, `request_timeout`, `session_idle_timeout`, `max_batch`, `rate` (line 2, column 3)",
    );
    check(
        "
        auth:
          api_keys:
            - agent: a
              sha: abc
        ",
        "auth.api_keys[0].sha: unknown field, expected one of `agent`, `sha256`, `expires_at`, `revoked` (line 4, column 7)",
    );
    check(
        "
        servers:
          github:
            url: https://x.example/mcp
            credentials:
              headers:
                X-Api-Key: { enb: KEY }
        ",
        "servers.github.credentials.headers.X-Api-Key.enb: unknown field, expected `env` or `file` (line 6, column 22)",
    );
    check(
        "auth: { oidc: { issuer: https://idp.example, scopes: [a] } }",
        "auth.oidc.scopes: unknown field, expected one of `issuer`, `audience`, `agent_claim`, `user_claim`, `roles_claim`, `required_scopes`, `clock_skew`, `algorithms`, `jwks_refetch_interval` (line 1, column 46)",
    );
    check(
        "auth: { anonymous: { agent: dev, role: admin } }",
        "auth.anonymous.role: unknown field, expected `agent` (line 1, column 34)",
    );
}

#[test]
fn duplicate_keys_are_errors() {
    check(
        "
        servers:
          time: { command: [a] }
          time: { command: [b] }
        ",
        "servers.time: duplicate key (line 2, column 3)",
    );
    check(
        "
        listen: 127.0.0.1:1
        listen: 127.0.0.1:2
        ",
        "listen: duplicate key (line 1, column 1)",
    );
    check(
        "
        servers:
          s:
            command: [a]
            env: { A: x, A: y }
        ",
        "servers.s.env.A: duplicate key (line 4, column 10)",
    );
}

#[test]
fn syntax_and_type_errors() {
    check(
        "listen: 127.0.0.1:1\nstorage: sqlite:\n",
        "mapping values are not allowed in this context (line 2, column 16)",
    );
    check(
        "servers:\n  a: {command: [x]\n",
        "servers.a: did not find expected ',' or '}', while parsing a flow mapping at line 2 column 6 (line 3, column 1)",
    );
    check(
        "listen: \"127.0.0.1:1\n",
        "listen: found unexpected end of stream, while scanning a quoted scalar at line 1 column 9 (line 2, column 1)",
    );
    check(
        "servers:\n  time:\n    command: uvx mcp-server-time\n",
        r#"servers.time.command: invalid type: string "uvx mcp-server-time", expected a sequence (line 3, column 14)"#,
    );
    check(
        "- a\n",
        "invalid type: sequence, expected a mapping (line 1, column 1)",
    );
    check(
        "servers: 3\n",
        "servers: invalid type: integer `3`, expected a mapping (line 1, column 10)",
    );
    check(
        "limits: { max_batch: -1 }",
        "limits.max_batch: invalid type: integer `-1`, expected a non-negative integer (line 1, column 22)",
    );
    check(
        "servers: { a: { url: 'http://x', transport: grpc } }",
        "servers.a.transport: unknown variant `grpc`, expected `streamable-http` or `sse` (line 1, column 45)",
    );
}

// ----- semantic errors: all at once, each with its path -----

#[test]
fn every_semantic_error_is_reported_at_once() {
    check(
        r#"
        listen: x
        public_url: ftp://gateway.example
        storage: mysql://db
        allowed_origins: [http://localhost:3000/app, "*"]
        limits: { max_body_bytes: 0, request_timeout: 5x }
        servers:
          Bad_Name: { command: [a] }
          time: { command: [] }
          github: { command: [a], url: "https://x.example/mcp" }
          neither: {}
          x: { url: "file:///etc/passwd" }
        auth:
          api_keys:
            - { agent: a, sha256: abc }
            - { sha256: "85dbe15d75ef9308c7ae0f33c7a324cc6f4bf519a2ed2f3027bd33c140a4f9aa" }
          anonymous: {}
        "#,
        r#"
        listen: invalid socket address "x" (expected ip:port, e.g. 127.0.0.1:8686)
        public_url: must be http(s)
        storage: expected sqlite://path or postgres://user@host/db, got "mysql://db"
        allowed_origins[0]: expected scheme://host[:port] without a path, got "http://localhost:3000/app"
        allowed_origins[1]: must be http(s): "*" is not an absolute URL
        limits.max_body_bytes: must be at least 1
        limits.request_timeout: invalid duration "5x": expected e.g. "250ms", "30s", "5m", "1h" or integer seconds
        servers.Bad_Name: server names must match [a-z0-9][a-z0-9-]* (at most 63 characters)
        servers.time.command: must not be empty
        servers.github: set exactly one of command or url
        servers.neither: set exactly one of command or url
        servers.x.url: must be http(s)
        auth.api_keys[0].sha256: expected 64 hex characters
        auth.api_keys[1].agent: required
        auth.anonymous.agent: required
        "#,
    );
}

#[test]
fn server_names() {
    check(
        &format!(
            "{ANON}servers:\n  ok-1: {{ command: [a] }}\n  0k: {{ command: [a] }}\n  -x: {{ command: [a] }}\n  a_b: {{ command: [a] }}\n  {}: {{ command: [a] }}\n",
            "a".repeat(64)
        ),
        &format!(
            "
            servers.-x: server names must match [a-z0-9][a-z0-9-]* (at most 63 characters)
            servers.a_b: server names must match [a-z0-9][a-z0-9-]* (at most 63 characters)
            servers.{}: server names must match [a-z0-9][a-z0-9-]* (at most 63 characters)
            ",
            "a".repeat(64)
        ),
    );
}

#[test]
fn fields_of_the_other_transport_are_errors() {
    check(
        r#"
        servers:
          local:
            command: [a]
            transport: sse
            credentials: { bearer_env: T }
          remote:
            url: https://x.example/mcp
            env: { A: b }
            env_from: { B: { env: C } }
            cwd: /tmp
        "#,
        "
        servers.local.transport: only applies to url servers
        servers.local.credentials: only applies to url servers (give stdio servers secrets with env_from)
        servers.remote.env: only applies to command (stdio) servers
        servers.remote.env_from: only applies to command (stdio) servers
        servers.remote.cwd: only applies to command (stdio) servers
        ",
    );
}

#[test]
fn stdio_servers() {
    let config = check_env(
        &[("HOST_TOKEN", "from-host")],
        &format!(
            r#"
            {ANON}
            limits: {{ request_timeout: 45s }}
            servers:
              time:
                command: [uvx, mcp-server-time]
                env: {{ TZ: UTC, PORT: 8080, DEBUG: true }}
                env_from: {{ GITHUB_TOKEN: {{ env: HOST_TOKEN }} }}
                cwd: /srv/time
                max_in_flight: 4
            "#
        ),
        "ok",
    )
    .expect("compiles");
    let time = &config.servers["time"];
    assert_eq!(time.request_timeout, Duration::from_secs(45));
    assert_eq!(time.max_in_flight, 4);
    let Transport::Stdio { command, env, cwd } = &time.transport else {
        panic!("stdio expected")
    };
    assert_eq!(command, &["uvx", "mcp-server-time"]);
    assert_eq!(env["TZ"].expose(), "UTC");
    assert_eq!(env["PORT"].expose(), "8080");
    assert_eq!(env["DEBUG"].expose(), "true");
    assert_eq!(env["GITHUB_TOKEN"].expose(), "from-host");
    assert_eq!(cwd.as_deref(), Some(Path::new("/srv/time")));

    check(
        r#"
        servers:
          s:
            command: ["", "x"]
            env: { "A=B": x, C: y }
            env_from:
              C: { env: HOST }
              D: { env: MISSING }
              E: {}
              F: { env: X, file: /y }
              G: { file: /nonexistent/portcullis-test-secret }
            max_in_flight: 0
            request_timeout: 0
        "#,
        "
        servers.s.request_timeout: must be greater than zero
        servers.s.max_in_flight: must be at least 1
        servers.s.command[0]: the program must not be empty
        servers.s.env.A=B: invalid environment variable name
        servers.s.env_from.C: C is also set in servers.s.env
        servers.s.env_from.D.env: environment variable MISSING is not set
        servers.s.env_from.E: set exactly one of env or file
        servers.s.env_from.F: set exactly one of env or file
        servers.s.env_from.G.file: cannot read /nonexistent/portcullis-test-secret: No such file or directory (os error 2)
        ",
    );
}

#[test]
fn http_servers_and_credentials() {
    let config = check_env(
        &[("API_KEY", "k-123"), ("TOKEN", "t-456")],
        &format!(
            r#"
            {ANON}
            servers:
              a: {{ url: "https://a.example/mcp", request_timeout: 30s }}
              b: {{ url: "http://127.0.0.1:9000/sse", transport: sse, credentials: {{ bearer_env: TOKEN }} }}
              c: {{ url: "https://c.example/mcp", transport: streamable-http, credentials: {{ headers: {{ X-Api-Key: {{ env: API_KEY }} }} }} }}
            "#
        ),
        "ok",
    )
    .expect("compiles");
    assert_eq!(
        config.servers["a"].transport,
        Transport::Http {
            url: "https://a.example/mcp".into(),
            legacy_sse: false,
            credentials: None
        }
    );
    assert_eq!(config.servers["a"].request_timeout, Duration::from_secs(30));
    assert_eq!(
        config.servers["b"].transport,
        Transport::Http {
            url: "http://127.0.0.1:9000/sse".into(),
            legacy_sse: true,
            credentials: Some(Credentials::Bearer(Secret::new("t-456")))
        }
    );
    let Transport::Http {
        credentials: Some(Credentials::Headers(headers)),
        ..
    } = &config.servers["c"].transport
    else {
        panic!("headers expected")
    };
    assert_eq!(headers["X-Api-Key"].expose(), "k-123");

    check_env(
        &[("TOKEN", "t")],
        &format!(
            "{ANON}servers:\n  p: {{ url: 'http://mcp.example.com/mcp', credentials: {{ bearer_env: TOKEN }} }}\n"
        ),
        "
        ok
        warning: servers.p.url: credentials are sent over plain http beyond loopback
        ",
    );

    check_env(
        &[("EMPTY", ""), ("NEWLINE", "a\nb")],
        r#"
        servers:
          github: { url: "https://x.example/mcp", credentials: { bearer_env: GITHUB_MCP_TOKEN } }
          b: { url: "https://x.example/mcp", credentials: { bearer_env: EMPTY } }
          c: { url: "https://x.example/mcp", credentials: { bearer_env: NEWLINE } }
          d: { url: "https://x.example/mcp", credentials: { bearer_file: /nonexistent/portcullis-token } }
          e: { url: "https://x.example/mcp", credentials: { bearer_env: A, headers: { X: { env: B } } } }
          f: { url: "https://x.example/mcp", credentials: {} }
          g: { url: "https://x.example/mcp", credentials: { headers: { Host: { env: A }, "Bad Name": { env: A } } } }
          h: { url: "https://user:pw@x.example/mcp" }
          i: { url: "not a url" }
          j: { url: "https://" }
        "#,
        r#"
        servers.github.credentials.bearer_env: environment variable GITHUB_MCP_TOKEN is not set
        servers.b.credentials.bearer_env: environment variable EMPTY is empty
        servers.c.credentials.bearer_env: the value contains control characters and cannot be sent in a header
        servers.d.credentials.bearer_file: cannot read /nonexistent/portcullis-token: No such file or directory (os error 2)
        servers.e.credentials: set exactly one of bearer_env, bearer_file, headers or oauth_client_credentials
        servers.f.credentials: set exactly one of bearer_env, bearer_file, headers or oauth_client_credentials
        servers.g.credentials.headers.Host: is set by the gateway and cannot be configured
        servers.g.credentials.headers.Bad Name: invalid HTTP header name
        servers.h.url: must not contain credentials; use credentials: instead
        servers.i.url: must be http(s): "not a url" is not an absolute URL
        servers.j.url: invalid URL "https://": empty host
        "#,
    );
}

#[test]
fn oversized_secret_files_are_refused() {
    let dir = TempDir::new("big-secret");
    let big = dir.write("big", &"x".repeat(70_000));
    check(
        &format!(
            "{ANON}servers:\n  a: {{ url: 'https://a.example/mcp', credentials: {{ bearer_file: '{}' }} }}\n",
            big.display()
        ),
        &format!(
            "servers.a.credentials.bearer_file: cannot read {}: larger than 65536 bytes",
            big.display()
        ),
    );
}

#[test]
fn api_key_digest_matches_the_stored_form() {
    assert_eq!(
        hex::encode(portcullis_config::ApiKey::digest("secret-key")),
        KEY_SHA
    );
}

#[test]
fn secret_files_are_trimmed_and_relative_to_the_config_file() {
    let dir = TempDir::new("secret-file");
    dir.write("token", "file-token\n");
    let path = dir.write(
        "portcullis.yaml",
        &format!(
            "{ANON}servers:\n  a: {{ url: 'https://a.example/mcp', credentials: {{ bearer_file: token }} }}\n"
        ),
    );
    let config = Loader::with_vars::<String, String>([])
        .load(&path)
        .expect("compiles");
    assert_eq!(config.source.as_deref(), Some(path.as_path()));
    assert_eq!(
        config.servers["a"].transport,
        Transport::Http {
            url: "https://a.example/mcp".into(),
            legacy_sse: false,
            credentials: Some(Credentials::Bearer(Secret::new("file-token")))
        }
    );
}

// ----- secrets never print -----

#[test]
fn secrets_print_as_stars_in_debug() {
    let config = check_env(
        &[
            ("TOKEN", "super-secret-token"),
            ("CHILD", "child-secret"),
            ("SINK", "sink-token-0123456789"),
        ],
        &format!(
            r#"
            {ANON}
            storage: postgres://portcullis:db-password@db.internal/portcullis
            servers:
              a: {{ url: "https://a.example/mcp", credentials: {{ bearer_env: TOKEN }} }}
              b: {{ url: "https://a.example/mcp", credentials: {{ headers: {{ X-Api-Key: {{ env: TOKEN }} }} }} }}
              c: {{ command: [x], env_from: {{ SECRET: {{ env: CHILD }} }} }}
            audit: {{ sinks: [{{ webhook: "https://siem.example", secret_env: SINK }}] }}
            "#
        ),
        "
        ok
        ",
    )
    .expect("compiles");
    let debug = format!("{config:?}");
    for secret in ["super-secret-token", "child-secret", "db-password"] {
        assert!(!debug.contains(secret), "{secret} leaked in {debug}");
    }
    assert!(debug.contains("Bearer(***)"), "{debug}");
    assert!(!debug.contains("sink-token"), "{debug}");
    // `audit` is a typed section now (its sinks print as a count), not an opaque extension.
    assert!(debug.contains("extensions: []"), "{debug}");
    assert!(debug.contains("\"X-Api-Key\": ***"), "{debug}");
    assert!(
        debug.contains("postgres://portcullis:***@db.internal/portcullis"),
        "{debug}"
    );
    // The value itself is intact for the code that needs it.
    assert_eq!(
        config.storage,
        "postgres://portcullis:db-password@db.internal/portcullis"
    );
    assert_eq!(format!("{:?}", Secret::new("x")), "***");
}

// ----- environment overrides and files -----

#[test]
fn environment_overrides_win_over_the_file() {
    let dir = TempDir::new("overrides");
    let path = dir.write(
        "portcullis.yaml",
        &format!("{ANON}listen: 127.0.0.1:1000\nstorage: sqlite://a.db\n"),
    );

    let config = Loader::with_vars([
        ("PORTCULLIS_LISTEN", "127.0.0.1:2000"),
        ("PORTCULLIS_PUBLIC_URL", "https://gw.example.com/"),
        ("PORTCULLIS_STORAGE", "postgres://gw@db/gw"),
    ])
    .load(&path)
    .expect("compiles");
    assert_eq!(config.listen.to_string(), "127.0.0.1:2000");
    assert_eq!(config.public_url, "https://gw.example.com");
    assert_eq!(config.storage, "postgres://gw@db/gw");

    // Empty overrides count as unset; public_url follows listen.
    let config = Loader::with_vars([
        ("PORTCULLIS_LISTEN", "127.0.0.1:3000"),
        ("PORTCULLIS_STORAGE", ""),
    ])
    .load(&path)
    .expect("compiles");
    assert_eq!(config.listen.to_string(), "127.0.0.1:3000");
    assert_eq!(config.public_url, "http://127.0.0.1:3000");
    assert_eq!(config.storage, "sqlite://a.db");

    // from_yaml ignores them.
    let text = std::fs::read_to_string(&path).expect("read");
    let config = Loader::with_vars([("PORTCULLIS_LISTEN", "127.0.0.1:2000")])
        .from_yaml(&text, "x")
        .expect("compiles");
    assert_eq!(config.listen.to_string(), "127.0.0.1:1000");

    // A bad override says where the value came from.
    let errors = Loader::with_vars([
        ("PORTCULLIS_LISTEN", "nope"),
        ("PORTCULLIS_PUBLIC_URL", "gw"),
    ])
    .load(&path)
    .expect_err("bad listen");
    assert_eq!(
        render(&Err(errors)),
        "listen: invalid socket address \"nope\" (expected ip:port, e.g. 127.0.0.1:8686) (set by PORTCULLIS_LISTEN)\n\
         public_url: must be http(s): \"gw\" is not an absolute URL (set by PORTCULLIS_PUBLIC_URL)"
    );
}

#[test]
fn unreadable_file_error_names_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.path().join("absent.yaml");
    let errors = Loader::new().load(&path).expect_err("missing");
    assert_eq!(errors.source_name, path.display().to_string());
    assert_eq!(errors.errors.len(), 1);
    assert_eq!(
        errors.errors[0].message,
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    let shown = errors.to_string();
    assert!(
        shown.starts_with(&format!("1 error(s) in {}:\n  cannot read", path.display())),
        "{shown}"
    );
}

// ----- values: durations, sizes, timestamps, urls -----

#[test]
fn durations_and_sizes() {
    let config = check(
        &format!(
            r#"
            {ANON}
            limits:
              max_body_bytes: 4MiB
              max_header_bytes: "16KiB"
              max_json_depth: 32
              max_sessions: 5
              max_streams_per_session: 2
              request_timeout: 250ms
              session_idle_timeout: 5m
              max_batch: 10
            servers:
              a: {{ command: [a], request_timeout: 90 }}
              b: {{ command: [b], request_timeout: 1h }}
            "#
        ),
        "ok",
    )
    .expect("compiles");
    let l = &config.limits;
    assert_eq!(l.max_body_bytes, 4 * 1024 * 1024);
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert_eq!(
        (
            l.max_json_depth,
            l.max_sessions,
            l.max_streams_per_session,
            l.max_batch
        ),
        (32, 5, 2, 10)
    );
    assert_eq!(l.request_timeout, Duration::from_millis(250));
    assert_eq!(l.session_idle_timeout, Duration::from_secs(300));
    assert_eq!(config.servers["a"].request_timeout, Duration::from_secs(90));
    assert_eq!(
        config.servers["b"].request_timeout,
        Duration::from_secs(3600)
    );

    check(
        r#"
        auth: { anonymous: { agent: dev } }
        limits:
          max_body_bytes: 4 MB
          max_header_bytes: MiB
          request_timeout: 1.5
        "#,
        r#"limits.request_timeout: invalid type: floating point `1.5`, expected a duration such as "250ms", "30s", "5m", "1h" or integer seconds (line 5, column 20)"#,
    );
    check(
        r#"
        auth: { anonymous: { agent: dev } }
        limits:
          max_body_bytes: 4XB
          max_header_bytes: MiB
          request_timeout: "-1s"
          session_idle_timeout: 99999999999999999999h
          max_batch: 0
        "#,
        r#"
        limits.max_body_bytes: invalid size "4XB": expected e.g. "16KiB", "4MiB" or integer bytes
        limits.max_header_bytes: invalid size "MiB": expected e.g. "16KiB", "4MiB" or integer bytes
        limits.request_timeout: invalid duration "-1s": expected e.g. "250ms", "30s", "5m", "1h" or integer seconds
        limits.session_idle_timeout: invalid duration "99999999999999999999h": expected e.g. "250ms", "30s", "5m", "1h" or integer seconds
        limits.max_batch: must be at least 1
        "#,
    );

    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("h").is_err());
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("1hour").is_err());
    assert_eq!(
        parse_duration("18446744073709551615h"),
        Err("duration \"18446744073709551615h\" is too large".to_owned())
    );
    assert_eq!(parse_size("16KiB"), Ok(16384));
    assert_eq!(parse_size("4MiB"), Ok(4 << 20));
    assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    assert_eq!(parse_size("2KB"), Ok(2000));
    assert_eq!(parse_size("10B"), Ok(10));
    assert_eq!(parse_size("100"), Ok(100));
    assert!(parse_size("1.5MiB").is_err());
    assert!(parse_size("18446744073709551615GiB").is_err());
}

#[test]
fn api_keys() {
    let config = check(
        &format!(
            r#"
            auth:
              api_keys:
                - {{ agent: a, sha256: "{KEY_SHA}", expires_at: "2999-01-01T00:00:00Z" }}
                - {{ agent: b, sha256: "{}", expires_at: 32503680000 }}
                - {{ agent: c, sha256: "{}", expires_at: "2001-02-03T04:05:06.789+01:30" }}
            "#,
            "ab".repeat(32),
            "AB".repeat(31) + "cd"
        ),
        "
        ok
        warning: auth.api_keys[2].expires_at: the key has expired and every call with it is refused
        ",
    )
    .expect("compiles");
    let keys = &config.auth.api_keys;
    assert_eq!(keys[0].expires_at, Some(32_472_144_000));
    assert_eq!(keys[1].expires_at, Some(32_503_680_000));
    assert_eq!(keys[1].sha256, [0xab; 32]);
    assert_eq!(keys[2].expires_at, Some(981_173_106 - 5400));

    check(
        &format!(
            r#"
            auth:
              api_keys:
                - {{ agent: a, sha256: "{KEY_SHA}" }}
                - {{ agent: b, sha256: "{KEY_SHA}" }}
                - {{ agent: "", sha256: "{}" }}
                - {{ agent: " c", sha256: "{}z", expires_at: "tomorrow" }}
                - {{ agent: d }}
                - {{ agent: e, sha256: "{}", expires_at: "2027-02-30T00:00:00Z" }}
            "#,
            "11".repeat(32),
            "22".repeat(31),
            "33".repeat(32),
        ),
        r#"
        auth.api_keys[1].sha256: same key as auth.api_keys[0]
        auth.api_keys[2].agent: must not be empty
        auth.api_keys[3].agent: must not have surrounding whitespace or control characters
        auth.api_keys[3].sha256: expected 64 hex characters
        auth.api_keys[3].expires_at: invalid timestamp "tomorrow": expected RFC 3339 (2027-01-01T00:00:00Z) or Unix seconds
        auth.api_keys[4].sha256: required
        auth.api_keys[5].expires_at: invalid timestamp "2027-02-30T00:00:00Z": expected RFC 3339 (2027-01-01T00:00:00Z) or Unix seconds
        "#,
    );

    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(1_798_761_600));
    assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z"), Some(1_709_208_000));
    assert_eq!(
        parse_rfc3339("2024-02-29T13:00:00+01:00"),
        Some(1_709_208_000)
    );
    assert_eq!(parse_rfc3339("2023-02-29T12:00:00Z"), None);
    assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), None);
    assert_eq!(parse_rfc3339("2027-01-01T00:00:00"), None);
    assert_eq!(parse_rfc3339("2027-01-01"), None);
    assert_eq!(parse_rfc3339("2027-01-01T00:00:00.Z"), None);
    assert_eq!(parse_rfc3339("2027-01-01T24:00:00Z"), None);
    assert_eq!(parse_rfc3339("２０２７-01-01T00:00:00Z"), None);
}

#[test]
fn urls_and_origins() {
    let config = check(
        &format!(
            r#"
            {ANON}
            listen: "[::1]:9000"
            allowed_origins: ["http://localhost:3000", "HTTPS://App.Example.COM:443/", "http://localhost:3000"]
            "#
        ),
        "ok",
    )
    .expect("compiles");
    assert_eq!(config.public_url, "http://[::1]:9000");
    assert_eq!(
        config.allowed_origins,
        ["http://localhost:3000", "https://app.example.com"]
    );

    let config = check(
        &format!("{ANON}public_url: https://gw.example.com/prefix/\n"),
        "ok",
    )
    .expect("compiles");
    assert_eq!(config.public_url, "https://gw.example.com/prefix");

    check(
        &format!("{ANON}public_url: https://gw.example.com/?a=b\nstorage: \"sqlite:\"\n"),
        r#"
        public_url: must not have a query or fragment
        storage: expected sqlite://path or postgres://user@host/db, got "sqlite:"
        "#,
    );
    for ok in [
        "sqlite::memory:",
        "sqlite:relative.db",
        "sqlite:///abs.db",
        "postgresql://h/db",
    ] {
        check(&format!("{ANON}storage: \"{ok}\"\n"), "ok");
    }
}

#[test]
fn oidc() {
    let config = check(
        "
        public_url: https://gw.example.com
        auth: { oidc: { issuer: https://idp.example.com/realms/x, agent_claim: client_id, roles_claim: groups } }
        ",
        "ok",
    )
    .expect("compiles");
    let oidc = config.auth.oidc.expect("oidc");
    assert_eq!(oidc.issuer, "https://idp.example.com/realms/x");
    assert_eq!(oidc.audience, "https://gw.example.com/mcp");
    assert_eq!(oidc.agent_claim, "client_id");
    assert_eq!(oidc.user_claim, "sub");
    assert_eq!(oidc.roles_claim, "groups");

    check("auth: { oidc: { issuer: http://localhost:9999 } }", "ok");
    check(
        "auth: { oidc: { issuer: http://idp.example.com } }",
        "
        ok
        warning: auth.oidc.issuer: plain http beyond loopback; keys and discovery can be tampered with in transit
        ",
    );
    check(
        "auth: { oidc: { audience: x, user_claim: '' } }",
        "
        auth.oidc.issuer: required
        auth.oidc.user_claim: must not be empty
        ",
    );
    check(
        "auth: { oidc: { issuer: idp.example.com } }",
        r#"auth.oidc.issuer: must be http(s): "idp.example.com" is not an absolute URL"#,
    );
}

#[test]
fn oidc_validation_settings() {
    // Defaults: 60 s skew, every supported asymmetric algorithm, 30 s refetch interval.
    let config =
        check("auth: { oidc: { issuer: https://idp.example.com } }", "ok").expect("compiles");
    let oidc = config.auth.oidc.expect("oidc");
    assert_eq!(oidc.clock_skew, std::time::Duration::from_secs(60));
    assert_eq!(oidc.algorithms, portcullis_config::OIDC_ALGORITHMS.to_vec());
    assert_eq!(
        oidc.jwks_refetch_interval,
        std::time::Duration::from_secs(30)
    );
    assert!(oidc.required_scopes.is_empty());

    let config = check(
        "auth: { oidc: { issuer: https://idp.example.com, clock_skew: 0s, algorithms: [ES256, EdDSA], required_scopes: [mcp:tools], jwks_refetch_interval: 5m } }",
        "ok",
    )
    .expect("compiles");
    let oidc = config.auth.oidc.expect("oidc");
    assert_eq!(oidc.clock_skew, std::time::Duration::ZERO);
    assert_eq!(oidc.algorithms, ["ES256", "EdDSA"]);
    assert_eq!(oidc.required_scopes, ["mcp:tools"]);
    assert_eq!(
        oidc.jwks_refetch_interval,
        std::time::Duration::from_secs(300)
    );

    check(
        r#"auth: { oidc: { issuer: https://idp.example.com, algorithms: [RS256, none, HS256], required_scopes: ["a b", 'q"'], clock_skew: soon, jwks_refetch_interval: 0s } }"#,
        "
        auth.oidc.required_scopes[0]: a scope is non-empty visible ASCII without `\"` or `\\`
        auth.oidc.required_scopes[1]: a scope is non-empty visible ASCII without `\"` or `\\`
        auth.oidc.clock_skew: invalid duration \"soon\": expected e.g. \"250ms\", \"30s\", \"5m\", \"1h\" or integer seconds
        auth.oidc.algorithms[1]: unsupported algorithm \"none\": expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (`none` and HMAC algorithms are never accepted)
        auth.oidc.algorithms[2]: unsupported algorithm \"HS256\": expected one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (`none` and HMAC algorithms are never accepted)
        auth.oidc.jwks_refetch_interval: must be greater than zero
        ",
    );
    check(
        "auth: { oidc: { issuer: https://idp.example.com, algorithms: [] } }",
        "auth.oidc.algorithms: must name at least one algorithm",
    );
}

#[test]
fn revoked_api_keys() {
    let config = check(
        &format!(
            r#"
            auth:
              api_keys:
                - {{ agent: a, sha256: "{KEY_SHA}", revoked: true }}
                - {{ agent: b, sha256: "{}" }}
            "#,
            "ab".repeat(32)
        ),
        "ok",
    )
    .expect("compiles");
    assert!(config.auth.api_keys[0].revoked);
    assert!(!config.auth.api_keys[1].revoked);
}

// ----- warnings -----

#[test]
fn auth_warnings() {
    check(
        "
        listen: 0.0.0.0:8686
        auth: { anonymous: { agent: local-dev } }
        ",
        "
        ok
        warning: public_url: not set, so it defaults to http://0.0.0.0:8686, which clients cannot reach and OAuth audiences will not match; set public_url
        warning: auth.anonymous: unauthenticated callers are accepted and the listener 0.0.0.0:8686 is reachable beyond loopback
        ",
    );
    let config = check(
        "
        listen: 127.0.0.1:8686
        auth: { anonymous: { agent: local-dev } }
        ",
        "ok",
    )
    .expect("compiles");
    assert_eq!(config.auth.anonymous.as_deref(), Some("local-dev"));
    check("auth: {}", NO_AUTH);
    check("auth: { api_keys: [] }", NO_AUTH);
}

// ----- robustness -----

#[test]
fn hostile_inputs_never_panic() {
    let deep = "[".repeat(10_000);
    let wide_alias = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\nrules: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
    let inputs = [
        "\0",
        "[",
        "{",
        "*a",
        "&a [*a]",
        "? [a]: b",
        "listen: 99999999999999999999999",
        "servers: { a: { command: [\"\"] } }",
        "servers: { \"\": { command: [a] } }",
        "rules: { [1, 2]: x }",
        "rules: !!binary aGVsbG8=",
        "auth: { api_keys: [{ agent: a, sha256: \"ééééééééééééééééééééééééééééééééé\" }] }",
        "limits: { max_body_bytes: \"٣MiB\" }",
        "a: 1\n---\nb: 2\n",
        "!!map { listen: x }",
        &deep,
        wide_alias,
    ];
    for input in inputs {
        let _ = Loader::with_vars::<String, String>([]).from_yaml(input, "hostile");
    }
}

// ----- hot reload -----

/// Waits (at most 10 s) for a reload result that satisfies `want`, skipping stale ones.
async fn next_matching(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Config, ConfigErrors>>,
    what: &str,
    want: impl Fn(&Result<Config, ConfigErrors>) -> bool,
) -> Result<Config, ConfigErrors> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(result)) if want(&result) => return result,
            Ok(Some(_stale)) => continue,
            Ok(None) => panic!("watcher stopped while waiting for {what}"),
            Err(_) => panic!("no reload with {what} within 10 s"),
        }
    }
}

fn listens_on(port: u16) -> impl Fn(&Result<Config, ConfigErrors>) -> bool {
    move |r| r.as_ref().is_ok_and(|c| c.listen.port() == port)
}

#[tokio::test]
async fn watch_reloads_valid_invalid_valid() {
    let dir = TempDir::new("watch");
    let path = dir.write(
        "portcullis.yaml",
        &format!("{ANON}listen: 127.0.0.1:1000\n"),
    );
    let mut rx = Loader::with_vars::<String, String>([])
        .watch(path.clone())
        .expect("watch");

    // In-place write.
    std::fs::write(&path, format!("{ANON}listen: 127.0.0.1:1001\n")).expect("write");
    let ok = next_matching(&mut rx, "listen 1001", listens_on(1001)).await;
    assert_eq!(ok.expect("ok").source.as_deref(), Some(path.as_path()));

    // A bad edit: reported, with the path.
    std::fs::write(&path, format!("{ANON}listen: nope\n")).expect("write");
    let err = next_matching(&mut rx, "an error", |r| r.is_err()).await;
    assert_eq!(
        render(&err),
        "listen: invalid socket address \"nope\" (expected ip:port, e.g. 127.0.0.1:8686)"
    );

    // An editor-style save: write a temporary file, rename it over the original.
    let tmp = dir.write(
        ".portcullis.yaml.swp",
        &format!("{ANON}listen: 127.0.0.1:1003\n"),
    );
    std::fs::rename(&tmp, &path).expect("rename");
    next_matching(&mut rx, "listen 1003", listens_on(1003))
        .await
        .expect("ok");

    // Other files in the directory do not trigger reloads of their own: after an unrelated
    // write, the next result is the one caused by the config change.
    dir.write("unrelated.txt", "x");
    std::fs::write(&path, format!("{ANON}listen: 127.0.0.1:1004\n")).expect("write");
    next_matching(&mut rx, "listen 1004", listens_on(1004))
        .await
        .expect("ok");
}

#[test]
fn watch_refuses_paths_without_a_file_name() {
    let err = Loader::new()
        .watch(PathBuf::from("/"))
        .expect_err("no file name");
    assert_eq!(err.to_string(), "cannot watch /: not a file path");
    let err = portcullis_config::watch(PathBuf::from("/nonexistent-portcullis-dir/p.yaml"))
        .expect_err("no directory");
    assert!(
        err.to_string()
            .starts_with("cannot watch /nonexistent-portcullis-dir:"),
        "{err}"
    );
}
