//! Syslog over UDP (one RFC 5424 message per datagram), TCP and TLS (RFC 6587 octet counting).
//!
//! One connection per sink, opened on first use and reopened after any error. Syslog receivers
//! never answer, so a write to a connection the receiver already closed would "succeed" into
//! the void: before each batch the sink polls the socket without blocking, and a connection
//! whose peer closed it (EOF) or reset it is replaced before anything is written. A receiver
//! that dies *while* a batch is in flight can still lose it — the protocol has no
//! acknowledgement — which is why the batch is written in one go and the cursor only moves
//! after the write completed.

use portcullis_config::sinks::{SinkKind, SyslogTransport};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::DeliveryError;
use crate::ExportError;
use crate::format::ExportItem;
use crate::format::syslog::{Header, MAX_UDP_MESSAGE, message, octet_frame, truncate};

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

pub(crate) struct SyslogSink {
    transport: SyslogTransport,
    host: String,
    port: u16,
    header: Header,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    conn: Option<Conn>,
}

impl SyslogSink {
    pub(crate) fn new(kind: &SinkKind) -> Result<Self, ExportError> {
        let SinkKind::Syslog {
            transport,
            host,
            port,
            format,
            facility,
            app_name,
            hostname,
            ca_file,
        } = kind
        else {
            return Err(ExportError::Internal("not a syslog sink".into()));
        };
        let tls = match transport {
            SyslogTransport::Tls => {
                let config = crate::tls::client_config(ca_file.as_deref())?;
                let name = ServerName::try_from(host.clone()).map_err(|e| ExportError::Tls {
                    file: host.clone(),
                    reason: format!("not a valid TLS server name: {e}"),
                })?;
                Some((TlsConnector::from(config), name))
            }
            _ => None,
        };
        Ok(SyslogSink {
            transport: *transport,
            host: host.clone(),
            port: *port,
            header: Header {
                facility: *facility,
                hostname: hostname.clone().unwrap_or_else(super::hostname),
                app_name: app_name.clone(),
                procid: std::process::id().to_string(),
                format: *format,
            },
            tls,
            conn: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.conn = None;
    }

    pub(crate) async fn deliver(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        if self.conn.as_ref().is_some_and(|c| !usable(c)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let result = self.write(items).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let target = (self.host.as_str(), self.port);
        let fail = |e: std::io::Error| {
            DeliveryError::new(format!("connect {}:{}: {e}", self.host, self.port))
        };
        match self.transport {
            SyslogTransport::Udp => {
                let addr = tokio::net::lookup_host(target)
                    .await
                    .map_err(fail)?
                    .next()
                    .ok_or_else(|| DeliveryError::new(format!("{} has no address", self.host)))?;
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(local).await.map_err(fail)?;
                socket.connect(addr).await.map_err(fail)?;
                Ok(Conn::Udp(socket))
            }
            SyslogTransport::Tcp => {
                let stream = TcpStream::connect(target).await.map_err(fail)?;
                let _ = stream.set_nodelay(true);
                Ok(Conn::Tcp(stream))
            }
            SyslogTransport::Tls => {
                let Some((connector, name)) = &self.tls else {
                    return Err(DeliveryError::new("TLS is not configured"));
                };
                let stream = TcpStream::connect(target).await.map_err(fail)?;
                let _ = stream.set_nodelay(true);
                let tls = connector.connect(name.clone(), stream).await.map_err(|e| {
                    DeliveryError::new(format!("TLS handshake with {}: {e}", self.host))
                })?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }

    async fn write(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        let io = |e: std::io::Error| DeliveryError::new(format!("send: {e}"));
        match &mut self.conn {
            Some(Conn::Udp(socket)) => {
                for item in items {
                    let msg = message(&self.header, item);
                    socket
                        .send(truncate(&msg, MAX_UDP_MESSAGE).as_bytes())
                        .await
                        .map_err(io)?;
                }
                Ok(())
            }
            Some(Conn::Tcp(stream)) => {
                stream
                    .write_all(&frames(&self.header, items))
                    .await
                    .map_err(io)?;
                stream.flush().await.map_err(io)
            }
            Some(Conn::Tls(stream)) => {
                stream
                    .write_all(&frames(&self.header, items))
                    .await
                    .map_err(io)?;
                stream.flush().await.map_err(io)
            }
            None => Err(DeliveryError::new("not connected")),
        }
    }
}

/// The octet-counted frames of a batch, written in one go.
fn frames(header: &Header, items: &[ExportItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.len() * 1024);
    for item in items {
        out.extend_from_slice(&octet_frame(&message(header, item)));
    }
    out
}

/// Can this connection still carry a batch? A non-blocking read: EOF or an error means the
/// receiver closed or reset it. (Receivers send nothing; for TLS, bytes read here are
/// post-handshake records such as session tickets, which a write-only client can drop.)
fn usable(conn: &Conn) -> bool {
    let stream = match conn {
        Conn::Udp(_) => return true,
        Conn::Tcp(s) => s,
        Conn::Tls(s) => s.get_ref().0,
    };
    let mut buf = [0u8; 512];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
