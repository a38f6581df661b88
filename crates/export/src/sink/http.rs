//! The HTTP sinks: Splunk HEC, signed webhooks and OTLP logs. One POST per batch; any 2xx
//! answer acknowledges it, 413 asks for a smaller batch, anything else is retried.

use portcullis_config::sinks::{SinkConfig, SinkKind};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::DeliveryError;
use crate::ExportError;
use crate::format::{ExportItem, hec, otlp, webhook};

/// Most bytes of an error answer kept for the log (receivers explain refusals in the body).
const ERROR_BODY_BYTES: usize = 512;

enum Flavor {
    Hec { meta: hec::Meta },
    Webhook { secret: Vec<u8>, sink: String },
    Otlp { service_name: String },
}

pub(crate) struct HttpSink {
    client: reqwest::Client,
    url: String,
    /// Fixed headers (token, OTLP extra headers), marked sensitive.
    headers: HeaderMap,
    flavor: Flavor,
}

fn sensitive(value: &str) -> Result<HeaderValue, ExportError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ExportError::Internal("a header value is not valid".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

impl HttpSink {
    pub(crate) fn new(config: &SinkConfig) -> Result<Self, ExportError> {
        let mut headers = HeaderMap::new();
        let (url, flavor, ca_file) = match &config.kind {
            SinkKind::SplunkHec {
                url,
                token,
                index,
                sourcetype,
                source,
                ca_file,
            } => {
                headers.insert(
                    AUTHORIZATION,
                    sensitive(&format!("Splunk {}", token.expose()))?,
                );
                let meta = hec::Meta {
                    host: super::hostname(),
                    source: source.clone(),
                    sourcetype: sourcetype.clone(),
                    index: index.clone(),
                };
                (url, Flavor::Hec { meta }, ca_file)
            }
            SinkKind::Webhook {
                url,
                secret,
                ca_file,
            } => (
                url,
                Flavor::Webhook {
                    secret: secret.expose().as_bytes().to_vec(),
                    sink: config.name.clone(),
                },
                ca_file,
            ),
            SinkKind::OtlpLogs {
                url,
                headers: extra,
                service_name,
                ca_file,
            } => {
                for (name, value) in extra {
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| ExportError::Internal(format!("bad header name {name:?}")))?;
                    headers.insert(name, sensitive(value.expose())?);
                }
                (
                    url,
                    Flavor::Otlp {
                        service_name: service_name.clone(),
                    },
                    ca_file,
                )
            }
            _ => return Err(ExportError::Internal("not an HTTP sink".into())),
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(HttpSink {
            client: crate::tls::http_client(config.timeout, ca_file.as_deref())?,
            url: url.clone(),
            headers,
            flavor,
        })
    }

    pub(crate) async fn deliver(&mut self, items: &[ExportItem]) -> Result<(), DeliveryError> {
        let mut request = self.client.post(&self.url).headers(self.headers.clone());
        let body = match &self.flavor {
            Flavor::Hec { meta } => hec::batch(meta, items),
            Flavor::Otlp { service_name } => serde_json::to_vec(&otlp::request(
                service_name,
                portcullis_audit::store::now_us(),
                items,
            ))
            .unwrap_or_default(),
            Flavor::Webhook { secret, sink } => {
                let body = webhook::body(items);
                let now = portcullis_audit::store::now_us() / 1_000_000;
                request = request
                    .header(webhook::TIMESTAMP_HEADER, now.to_string())
                    .header(webhook::SIGNATURE_HEADER, webhook::sign(secret, now, &body))
                    .header(webhook::DELIVERY_HEADER, webhook::delivery_id(sink, items));
                body
            }
        };
        let mut response = request.body(body).send().await.map_err(|e| {
            let e = e.without_url();
            DeliveryError::new(format!("POST {}: {}", self.shown_url(), error_chain(&e)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Read a bounded prefix of the explanation; never the whole body.
        let mut text = Vec::new();
        while text.len() < ERROR_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                _ => break,
            }
        }
        text.truncate(ERROR_BODY_BYTES);
        Err(DeliveryError {
            message: format!(
                "POST {}: HTTP {status}: {}",
                self.shown_url(),
                String::from_utf8_lossy(&text).trim()
            ),
            too_large: status == reqwest::StatusCode::PAYLOAD_TOO_LARGE,
        })
    }

    /// The URL without its query (which may carry a key).
    fn shown_url(&self) -> &str {
        self.url.split('?').next().unwrap_or(&self.url)
    }
}

/// An error with its sources (`error sending request: connection refused`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
