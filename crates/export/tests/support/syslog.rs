//! Loopback syslog receivers: TCP or TLS with a strict RFC 6587 octet-counting parser (every
//! framing violation is recorded and fails the test), and UDP (one message per datagram).

use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// What a receiver saw; survives receiver restarts.
#[derive(Debug, Default)]
pub struct Seen {
    pub messages: Vec<String>,
    /// Framing or format violations.
    pub errors: Vec<String>,
}

pub type Shared = Arc<Mutex<Seen>>;

/// A TCP (optionally TLS) receiver; dropping or [`TcpSyslog::stop`] closes every connection.
pub struct TcpSyslog {
    pub port: u16,
    pub seen: Shared,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl TcpSyslog {
    /// Listens on 127.0.0.1:`port` (0: any), recording into `seen`.
    pub async fn start(port: u16, tls: Option<tokio_rustls::TlsAcceptor>, seen: Shared) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (seen2, tasks2) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen2.clone();
                let tls = tls.clone();
                let task = tokio::spawn(async move {
                    match tls {
                        None => read_frames(stream, seen).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => read_frames(s, seen).await,
                            Err(e) => seen.lock().unwrap().errors.push(format!("TLS accept: {e}")),
                        },
                    }
                });
                tasks2.lock().unwrap().push(task);
            }
        });
        TcpSyslog {
            port,
            seen,
            tasks,
            accept,
        }
    }

    /// Stops listening and closes every connection.
    pub async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Parses `LEN SP MSG` frames until EOF; violations go to `errors`.
async fn read_frames(mut stream: impl AsyncReadExt + Unpin, seen: Shared) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            let Some(space) = buf.iter().position(|b| *b == b' ') else {
                if buf.len() > 10 {
                    seen.lock().unwrap().errors.push("no length prefix".into());
                }
                break;
            };
            let len_text = String::from_utf8_lossy(&buf[..space]).to_string();
            let valid_len = !len_text.is_empty()
                && len_text.len() <= 9
                && len_text.bytes().all(|b| b.is_ascii_digit())
                && !len_text.starts_with('0');
            if !valid_len {
                seen.lock()
                    .unwrap()
                    .errors
                    .push(format!("bad octet count {len_text:?}"));
                return;
            }
            let len: usize = len_text.parse().unwrap();
            if buf.len() < space + 1 + len {
                break;
            }
            let msg = String::from_utf8(buf[space + 1..space + 1 + len].to_vec());
            buf.drain(..space + 1 + len);
            let mut s = seen.lock().unwrap();
            match msg {
                Ok(m) if is_rfc5424(&m) => s.messages.push(m),
                Ok(m) => s.errors.push(format!("not RFC 5424: {m}")),
                Err(_) => s.errors.push("not UTF-8".into()),
            }
        }
    }
    // A partial frame at a close is what a receiver crash would see; not expected here.
    if !buf.is_empty() {
        seen.lock()
            .unwrap()
            .errors
            .push(format!("{} trailing bytes at close", buf.len()));
    }
}

/// `<PRI>1 ` with PRI 0..=191, then six more space-separated header fields.
pub fn is_rfc5424(m: &str) -> bool {
    let Some(rest) = m.strip_prefix('<') else {
        return false;
    };
    let Some((pri, rest)) = rest.split_once('>') else {
        return false;
    };
    let pri_ok = pri.parse::<u16>().is_ok_and(|p| p <= 191);
    pri_ok && rest.starts_with("1 ") && rest.splitn(7, ' ').count() == 7
}

/// The `seq="N"` structured-data parameter of a message.
pub fn seq_of(m: &str) -> u64 {
    let at = m.find(" seq=\"").expect("seq param") + 6;
    m[at..]
        .split('"')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("numeric seq")
}

/// A UDP receiver.
pub struct UdpSyslog {
    pub port: u16,
    pub seen: Shared,
    task: JoinHandle<()>,
}

impl UdpSyslog {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let port = socket.local_addr().unwrap().port();
        let seen: Shared = Arc::default();
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = socket.recv(&mut buf).await {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                let mut s = s2.lock().unwrap();
                if is_rfc5424(&m) {
                    s.messages.push(m);
                } else {
                    s.errors.push(format!("not RFC 5424: {m}"));
                }
            }
        });
        UdpSyslog { port, seen, task }
    }
}

impl Drop for UdpSyslog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor with the test server certificate (`localhost`, 127.0.0.1).
pub fn test_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(super::data("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(super::data("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
