//! Rate limits shared through Redis over TLS (`rediss://` with `limits.rate.redis_tls`): a
//! `redis-server` (the machine's Redis, the binary behind the service on 6379) is started on a
//! free loopback port with TLS only and client certificates required, under a CA generated
//! here (rcgen). Two limiters with the CA and a client certificate share one bucket through
//! it; without the client certificate, or trusting another CA, calls are refused (fail closed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis_config::{RateBucket, RateConfig, RateLimit, RedisRate, RedisTls, Secret};
use portcullis_control::rate::{RateDenied, RateKey, RateLimiter};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that signs the server's and the clients' certificates.
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

    /// A certificate and key (PEM) for `names` with `usage`, written as `dir/{stem}.pem|.key`.
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// `redis-server` with TLS only on a free loopback port; killed when dropped.
struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    client: (PathBuf, PathBuf),
}

impl TlsRedis {
    async fn start(ca: &Ca) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let (cert, key) = ca.issue(
            dir.path(),
            "server",
            &["127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = ca.issue(
            dir.path(),
            "client",
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args([
                "--tls-auth-clients",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (the machine's Redis) on the PATH");
        let server = TlsRedis {
            child,
            port,
            dir,
            ca_file,
            client,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on 127.0.0.1:{port}");
    }

    fn config(&self, tls: RedisTls) -> RateConfig {
        RateConfig {
            limits: vec![RateLimit {
                id: "three".into(),
                agents: vec![],
                tools: vec![],
                calls: 3,
                per: Duration::from_secs(3600),
                burst: 3,
                bucket: RateBucket::Agent,
            }],
            redis: Some(RedisRate {
                url: Secret::new(format!("rediss://127.0.0.1:{}/0", self.port)),
                key_prefix: "portcullis-test:tls".into(),
                tls: Some(tls),
            }),
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BOT: RateKey<'static> = RateKey {
    agent: "bot",
    tool: None,
    token: None,
};

#[tokio::test]
async fn two_replicas_share_one_bucket_through_redis_over_mutual_tls() {
    let ca = Ca::new("redis test CA");
    let redis = TlsRedis::start(&ca).await;
    let config = redis.config(RedisTls {
        ca_file: Some(redis.ca_file.clone()),
        client: Some(redis.client.clone()),
    });
    let first = RateLimiter::from_config(&config);
    let second = RateLimiter::from_config(&config);
    let mut admitted = 0;
    for i in 0..6 {
        let replica = if i % 2 == 0 { &first } else { &second };
        match replica.take(&BOT).await {
            Ok(()) => admitted += 1,
            Err(RateDenied::Limited(refusal)) => assert_eq!(refusal.limit, "three"),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(admitted, 3, "three calls in all, across both replicas");
}

/// Regression: a Redis reached without the client certificate it requires, or whose
/// certificate is not from the trusted CA (a man in the middle), never admits a call.
#[tokio::test]
async fn redis_over_tls_without_a_client_certificate_or_from_another_ca_refuses_calls() {
    let ca = Ca::new("redis test CA");
    let redis = TlsRedis::start(&ca).await;
    let no_client = RateLimiter::from_config(&redis.config(RedisTls {
        ca_file: Some(redis.ca_file.clone()),
        client: None,
    }));
    let other_ca_file = redis.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca_file, Ca::new("someone else").pem).unwrap();
    let wrong_ca = RateLimiter::from_config(&redis.config(RedisTls {
        ca_file: Some(other_ca_file),
        client: Some(redis.client.clone()),
    }));
    for (name, limiter) in [
        ("no client certificate", no_client),
        ("another CA", wrong_ca),
    ] {
        for _ in 0..2 {
            match limiter.take(&BOT).await {
                Err(RateDenied::Unavailable(why)) => assert!(!why.is_empty(), "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }
}
