//! HTTPS listener with client certificates (`tls:`): a CA, the server certificate and client
//! certificates are generated here at run time (rcgen), the gateway runs in-process in front of
//! the fixture (`fx`), and reqwest (rustls) connects with or without a client identity.
//! Regression tests are named after the bypass they pin.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The certificate agent may echo; alice (API key) may add; nothing else is allowed.
const RULES: &str = r#"rules:
  - { id: cert-agent-echo, allow: { agents: [cert-agent], tools: ["fx__echo"] } }
  - { id: alice-add, allow: { agents: [alice], tools: ["fx__add"] } }
"#;

const POLICY_DENIED: i64 = -31010;

/// A certificate authority that signs certificates for the tests.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A leaf certificate and its key (DER) for `names`, with `usage` and the given validity.
    fn leaf(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }

    fn client(&self, common_name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        self.leaf(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth, false)
    }

    /// A client certificate with subject CN `common_name`, an optional subject OU, and exactly
    /// the subject alternative names `sans`, in order.
    fn client_with(
        &self,
        common_name: &str,
        ou: Option<&str>,
        sans: Vec<SanType>,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(ou) = ou {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().unwrap())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A gateway serving HTTPS with `client_auth`, its server CA and its client CA.
struct TlsGateway {
    addr: std::net::SocketAddr,
    server_ca: Ca,
    client_ca: Ca,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

impl TlsGateway {
    async fn start(client_auth: &str) -> TlsGateway {
        TlsGateway::start_with(client_auth, "{ agent_from: cn }", RULES).await
    }

    /// A gateway with `tls.identity` = `identity` (YAML flow mapping) and policy `rules`.
    async fn start_with(client_auth: &str, identity: &str, rules: &str) -> TlsGateway {
        let dir = TempDir::new("mtls");
        let server_ca = Ca::new("portcullis test server ca");
        let client_ca = Ca::new("portcullis test client ca");
        let (cert, key) = server_ca.leaf(
            "gateway",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        write(&dir.0, "server.pem", &pem("CERTIFICATE", &cert));
        write(&dir.0, "server.key", &pem("PRIVATE KEY", key.secret_der()));
        write(&dir.0, "clients.pem", &client_ca.pem);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fixture = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fixture_url = format!("http://{}/mcp", fixture.local_addr().unwrap());
        tokio::spawn(portcullis_fixture::serve_http(
            fixture,
            portcullis_fixture::FixtureOptions {
                demo: true,
                ..Default::default()
            },
        ));
        let d = dir.0.display();
        let extra = format!(
            "public_url: https://{addr}\ntls:\n  cert_file: {d}/server.pem\n  key_file: {d}/server.key\n  client_ca_file: {d}/clients.pem\n  client_auth: {client_auth}\n  identity: {identity}\n{rules}"
        );
        let yaml = config_yaml(addr, &fixture_url, &[], &extra);
        let config = portcullis_config::from_yaml(&yaml, "test").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.public_url, format!("https://{addr}"));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let running = portcullis_gateway::serve::start_on(listener, config, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
        TlsGateway {
            addr,
            server_ca,
            client_ca,
            stop: Some(stop_tx),
            done: Some(running.done),
            _dir: dir,
        }
    }

    /// A client trusting the server CA, presenting `identity` if given.
    fn client(
        &self,
        identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    ) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.server_ca.pem.as_bytes()).unwrap();
        roots.add(ca).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap()
    }

    /// `fx__add` with no bearer token: the client certificate is the only credential.
    async fn add_with_certificate_only(&self, client: &reqwest::Client) -> Value {
        self.call(client, None, "fx__add", json!({"a": 1, "b": 2}))
            .await
            .expect("the TLS handshake succeeds")
    }

    /// A modern `tools/call` of `tool` over HTTPS, with an optional bearer token.
    async fn call(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
        tool: &str,
        arguments: Value,
    ) -> Result<Value, reqwest::Error> {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {
                "name": tool, "arguments": arguments,
                "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}
                }
            }
        });
        let mut request = client
            .post(format!("https://{}/mcp", self.addr))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "tools/call")
            .header("mcp-name", tool)
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let answer = read_answer(request.send().await?).await;
        Ok(answer.last().clone())
    }

    /// A request with no bearer credential that authentication refuses: its status and
    /// `WWW-Authenticate` challenge.
    async fn refused(&self, client: &reqwest::Client) -> (u16, String) {
        let response = client
            .post(format!("https://{}/mcp", self.addr))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body("{}")
            .send()
            .await
            .unwrap();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (response.status().as_u16(), challenge)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(20), done)
                .await
                .expect("gateway stops in time")
                .unwrap()
                .unwrap();
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[track_caller]
fn assert_denied(answer: &Value, rule_text: &str) {
    assert_eq!(answer["error"]["code"], POLICY_DENIED, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(rule_text),
        "{message:?} lacks {rule_text:?}"
    );
}

#[tokio::test]
async fn valid_client_cert_names_the_agent_that_policy_sees() {
    let gw = TlsGateway::start("required").await;
    let client = gw.client(Some(gw.client_ca.client("cert-agent")));
    let ok = gw
        .call(&client, None, "fx__echo", json!({"text": "over mtls"}))
        .await
        .unwrap();
    assert!(ok.get("result").is_some(), "{ok}");
    // The certificate's agent gets only what its rule allows.
    let denied = gw.add_with_certificate_only(&client).await;
    assert_denied(&denied, "for agent cert-agent");
    // Another valid certificate names another agent, which no rule allows.
    let other = gw.client(Some(gw.client_ca.client("intruder")));
    let denied = gw
        .call(&other, None, "fx__echo", json!({"text": "x"}))
        .await
        .unwrap();
    assert_denied(&denied, "for agent intruder");
    gw.stop().await;
}

#[tokio::test]
async fn missing_client_cert_when_required_bypass() {
    let gw = TlsGateway::start("required").await;
    let client = gw.client(None);
    let result = gw
        .call(&client, Some(ALICE), "fx__add", json!({"a": 1, "b": 2}))
        .await;
    assert!(
        result.is_err(),
        "handshake without a certificate accepted: {result:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn client_cert_from_another_ca_bypass() {
    let gw = TlsGateway::start("optional").await;
    let rogue = Ca::new("portcullis test client ca"); // same name, different key
    let client = gw.client(Some(rogue.client("cert-agent")));
    let result = gw
        .call(&client, None, "fx__echo", json!({"text": "x"}))
        .await;
    assert!(
        result.is_err(),
        "certificate from another CA accepted: {result:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn expired_client_cert_bypass() {
    let gw = TlsGateway::start("optional").await;
    let expired = gw
        .client_ca
        .leaf("cert-agent", &[], ExtendedKeyUsagePurpose::ClientAuth, true);
    let client = gw.client(Some(expired));
    let result = gw
        .call(&client, None, "fx__echo", json!({"text": "x"}))
        .await;
    assert!(result.is_err(), "expired certificate accepted: {result:?}");
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_bypass() {
    let gw = TlsGateway::start("optional").await;
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let result = plain
        .post(format!("http://{}/mcp", gw.addr))
        .header("authorization", format!("Bearer {ALICE}"))
        .body("{}")
        .send()
        .await;
    assert!(
        result.is_err(),
        "plain HTTP answered on the TLS port: {result:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bearer_api_key_over_tls_wins_over_the_client_cert() {
    let gw = TlsGateway::start("optional").await;
    // Without a certificate (client_auth: optional), the API key authenticates alone.
    let anonymous_tls = gw.client(None);
    let ok = gw
        .call(
            &anonymous_tls,
            Some(ALICE),
            "fx__add",
            json!({"a": 1, "b": 2}),
        )
        .await
        .unwrap();
    assert!(ok.get("result").is_some(), "{ok}");
    // With both, the bearer credential decides: alice, not cert-agent.
    let both = gw.client(Some(gw.client_ca.client("cert-agent")));
    let denied = gw
        .call(&both, Some(ALICE), "fx__echo", json!({"text": "x"}))
        .await
        .unwrap();
    assert_denied(&denied, "for agent alice");
    // Neither a certificate nor a token: refused with 401.
    let response = anonymous_tls
        .post(format!("https://{}/mcp", gw.addr))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    gw.stop().await;
}

const SPIFFE_AGENT: &str = "spiffe://example.org/ns/prod/sa/billing-bot";

#[tokio::test]
async fn san_uri_identity_names_the_agent_by_its_first_uri_san() {
    let rules = format!(
        "rules:\n  - {{ id: spiffe-echo, allow: {{ agents: [\"{SPIFFE_AGENT}\"], tools: [\"fx__echo\"] }} }}\n  - {{ id: cn-add, allow: {{ agents: [cn-agent, dns.example.org], tools: [\"fx__add\"] }} }}\n"
    );
    let gw = TlsGateway::start_with("required", "{ agent_from: san_uri }", &rules).await;
    // The CN and a DNS SAN (listed first) are not the agent: the URI SAN is.
    let cert = gw.client_ca.client_with(
        "cn-agent",
        None,
        vec![
            dns("dns.example.org"),
            uri(SPIFFE_AGENT),
            uri("spiffe://example.org/second"),
        ],
    );
    let client = gw.client(Some(cert));
    let ok = gw
        .call(&client, None, "fx__echo", json!({"text": "spiffe"}))
        .await
        .unwrap();
    assert!(ok.get("result").is_some(), "{ok}");
    let denied = gw.add_with_certificate_only(&client).await;
    assert_denied(&denied, &format!("for agent {SPIFFE_AGENT}"));
    gw.stop().await;
}

#[tokio::test]
async fn san_uri_identity_refuses_a_cert_without_a_uri_san_bypass() {
    let gw = TlsGateway::start_with("required", "{ agent_from: san_uri }", RULES).await;
    // A valid certificate whose CN and DNS SAN would name an allowed agent under `cn`.
    let cert = gw
        .client_ca
        .client_with("cert-agent", None, vec![dns("cert-agent")]);
    let (status, challenge) = gw.refused(&gw.client(Some(cert))).await;
    assert_eq!(status, 401, "{challenge}");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(
        challenge.contains("URI subject alternative name"),
        "{challenge}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn san_dns_identity_names_the_agent_by_its_first_dns_san() {
    let rules = "rules:\n  - { id: dns-echo, allow: { agents: [billing.agents.example], tools: [\"fx__echo\"] } }\n";
    let gw = TlsGateway::start_with("required", "{ agent_from: san_dns }", rules).await;
    let cert = gw.client_ca.client_with(
        "cn-agent",
        None,
        vec![
            uri("spiffe://example.org/not-this"),
            dns("billing.agents.example"),
            dns("second.agents.example"),
        ],
    );
    let client = gw.client(Some(cert));
    let ok = gw
        .call(&client, None, "fx__echo", json!({"text": "dns"}))
        .await
        .unwrap();
    assert!(ok.get("result").is_some(), "{ok}");
    let denied = gw.add_with_certificate_only(&client).await;
    assert_denied(&denied, "for agent billing.agents.example");
    // Without a DNS SAN (a URI one only) the certificate names nobody.
    let no_dns = gw.client_ca.client_with(
        "billing.agents.example",
        None,
        vec![uri("spiffe://example.org/billing")],
    );
    let (status, challenge) = gw.refused(&gw.client(Some(no_dns))).await;
    assert_eq!(status, 401, "{challenge}");
    assert!(
        challenge.contains("DNS subject alternative name"),
        "{challenge}"
    );
    gw.stop().await;
}

/// `payments` may add (by role); nothing else is allowed.
const ROLE_RULES: &str =
    "rules:\n  - { id: payments-add, allow: { roles: [payments], tools: [\"fx__add\"] } }\n";

#[tokio::test]
async fn roles_from_ou_gives_the_subject_ou_as_a_role() {
    let gw = TlsGateway::start_with(
        "required",
        "{ agent_from: cn, roles_from_ou: true }",
        ROLE_RULES,
    )
    .await;
    let payments = gw
        .client_ca
        .client_with("ou-agent", Some("payments"), vec![]);
    let ok = gw
        .add_with_certificate_only(&gw.client(Some(payments)))
        .await;
    assert!(ok.get("result").is_some(), "{ok}");
    // Another OU is another role: the same agent name is denied.
    let marketing = gw
        .client_ca
        .client_with("ou-agent", Some("marketing"), vec![]);
    let denied = gw
        .add_with_certificate_only(&gw.client(Some(marketing)))
        .await;
    assert_denied(&denied, "for agent ou-agent");
    gw.stop().await;
}

#[tokio::test]
async fn subject_ou_is_not_a_role_unless_roles_from_ou_bypass() {
    // roles_from_ou defaults to false: an OU in a certificate must not grant a role.
    let gw = TlsGateway::start_with("required", "{ agent_from: cn }", ROLE_RULES).await;
    let payments = gw
        .client_ca
        .client_with("ou-agent", Some("payments"), vec![]);
    let denied = gw
        .add_with_certificate_only(&gw.client(Some(payments)))
        .await;
    assert_denied(&denied, "for agent ou-agent");
    gw.stop().await;
}
