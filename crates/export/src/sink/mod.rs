//! The sinks: each turns a batch of rows into bytes for its receiver and reports whether the
//! receiver took them. "Took" is the strongest acknowledgement each protocol offers: a file
//! `fsync`, a 2xx answer over HTTP, a completed write on a TCP/TLS syslog connection that was
//! checked for a peer close first (syslog has no application-level acknowledgement), a sent
//! datagram over UDP (best effort).

mod file;
mod http;
mod syslog;

use portcullis_config::sinks::{SinkConfig, SinkKind};

use crate::ExportError;
use crate::format::ExportItem;

/// Why a delivery failed. Every failure is retried (with backoff); none drops records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// What went wrong, for logs and the lag report (never contains secrets).
    pub message: String,
    /// The receiver refused the batch as too large (HTTP 413): retry with a smaller one.
    pub too_large: bool,
}

impl DeliveryError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        DeliveryError {
            message: message.into(),
            too_large: false,
        }
    }
}

/// A connected (or connectable) sink.
pub(crate) enum Sink {
    File(file::FileSink),
    Syslog(syslog::SyslogSink),
    Http(http::HttpSink),
}

impl Sink {
    /// Builds the sink of `config` (reads CA files, host name; connects lazily).
    pub(crate) fn build(config: &SinkConfig) -> Result<Self, ExportError> {
        Ok(match &config.kind {
            SinkKind::File { path, rotate } => {
                Sink::File(file::FileSink::new(path.clone(), *rotate))
            }
            SinkKind::Syslog { .. } => Sink::Syslog(syslog::SyslogSink::new(&config.kind)?),
            SinkKind::SplunkHec { .. } | SinkKind::Webhook { .. } | SinkKind::OtlpLogs { .. } => {
                Sink::Http(http::HttpSink::new(config)?)
            }
        })
    }

    /// Delivers `items` (in seq order, one chain); Ok once the receiver took all of them.
    pub(crate) async fn deliver(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        match self {
            Sink::File(s) => s.deliver(items).await,
            Sink::Syslog(s) => s.deliver(items).await,
            Sink::Http(s) => s.deliver(items).await,
        }
    }

    /// Drops any open connection (after a timeout the stream state is unknown).
    pub(crate) fn reset(&mut self) {
        match self {
            Sink::File(s) => s.reset(),
            Sink::Syslog(s) => s.reset(),
            Sink::Http(_) => {}
        }
    }
}

/// This machine's host name (for syslog HOSTNAME and HEC `host`), `-` if unknown.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".to_owned())
}
