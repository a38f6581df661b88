//! `servers.<name>.credentials.oauth_client_credentials`: what compiles, and errors that name
//! their path. Environment variables come from [`Loader::with_vars`].

use portcullis_config::{Credentials, Loader, OAuthClientCredentials, Secret, Transport};

fn compile(vars: &[(&str, &str)], servers: &str) -> Result<portcullis_config::Config, Vec<String>> {
    let yaml = format!("servers:\n{servers}");
    Loader::with_vars(vars.iter().copied())
        .from_yaml(&yaml, "test.yaml")
        .map_err(|e| e.errors.iter().map(ToString::to_string).collect())
}

#[test]
fn client_credentials_compile_with_secret_from_env_or_file() {
    let dir = std::env::temp_dir().join(format!("portcullis-oauth-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, "  file-secret\n").unwrap();
    let config = compile(
        &[("CLIENT_SECRET", "env-secret")],
        &format!(
            "  a: {{ url: \"https://api.example/mcp\", credentials: {{ oauth_client_credentials: {{ token_url: \"https://auth.example/token\", client_id: gw, client_secret_env: CLIENT_SECRET, scope: \"mcp:tools\", resource: \"https://api.example/mcp\" }} }} }}\n  b: {{ url: \"http://127.0.0.1:9/mcp\", credentials: {{ oauth_client_credentials: {{ token_url: \"http://localhost:9/token\", client_id: gw, client_secret_file: \"{}\", audience: api }} }} }}\n",
            file.display()
        ),
    )
    .unwrap();
    let credentials = |name: &str| match &config.servers[name].transport {
        Transport::Http { credentials, .. } => credentials.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        credentials("a"),
        Some(Credentials::OAuthClientCredentials(
            OAuthClientCredentials {
                token_url: "https://auth.example/token".into(),
                client_id: "gw".into(),
                client_secret: Secret::new("env-secret"),
                scope: Some("mcp:tools".into()),
                audience: None,
                resource: Some("https://api.example/mcp".into()),
            }
        ))
    );
    let Some(Credentials::OAuthClientCredentials(b)) = credentials("b") else {
        panic!("b has client credentials");
    };
    assert_eq!(b.client_secret, Secret::new("file-secret"));
    assert_eq!(b.audience.as_deref(), Some("api"));
    assert!(
        !format!("{b:?}").contains("file-secret"),
        "the secret prints as stars"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn client_credentials_errors_name_their_path() {
    let errors = compile(
        &[],
        concat!(
            "  a: { url: \"https://x.example/mcp\", credentials: { oauth_client_credentials: { client_secret_env: NOPE } } }\n",
            "  b: { url: \"https://x.example/mcp\", credentials: { oauth_client_credentials: { token_url: \"http://auth.example/token\", client_id: gw, client_secret_env: A, client_secret_file: f } } }\n",
            "  c: { url: \"https://x.example/mcp\", credentials: { bearer_env: A, oauth_client_credentials: { token_url: \"https://a.example/t\", client_id: gw, client_secret_env: A } } }\n",
            "  d: { url: \"https://x.example/mcp\", credentials: { oauth_client_credentials: { token_url: \"https://u:p@a.example/t\", client_id: \"\", client_secret_env: A, resource: \"relative#frag\", scope: \"\" } } }\n",
        ),
    )
    .unwrap_err();
    let joined = errors.join("\n");
    for expected in [
        "servers.a.credentials.oauth_client_credentials.token_url: is required",
        "servers.a.credentials.oauth_client_credentials.client_id: is required",
        "servers.a.credentials.oauth_client_credentials.client_secret_env: environment variable NOPE is not set",
        "servers.b.credentials.oauth_client_credentials.token_url: must be https (plain http is allowed on loopback only)",
        "servers.b.credentials.oauth_client_credentials: set exactly one of client_secret_env or client_secret_file",
        "servers.c.credentials: set exactly one of bearer_env, bearer_file, headers or oauth_client_credentials",
        "servers.d.credentials.oauth_client_credentials.token_url: must not contain credentials",
        "servers.d.credentials.oauth_client_credentials.client_id: must be non-empty text without control characters",
        "servers.d.credentials.oauth_client_credentials.resource: must be an absolute URI without a fragment (RFC 8707)",
        "servers.d.credentials.oauth_client_credentials.scope: must be non-empty text without control characters",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
}

#[test]
fn unknown_client_credentials_keys_are_refused() {
    let errors = compile(
        &[("A", "a")],
        "  e: { url: \"https://x.example/mcp\", credentials: { oauth_client_credentials: { token_url: \"https://a.example/t\", client_id: gw, client_secret_env: A, grant_type: password } } }\n",
    )
    .unwrap_err();
    assert!(
        errors[0].contains("grant_type: unknown field"),
        "{errors:?}"
    );
}
