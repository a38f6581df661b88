//! The floor of any HTTP proxy on this machine: a bare pass-through proxy that takes the
//! gateway's place in a load-generator run (`portcullis-loadgen --gateway-bin <this binary>`:
//! it answers the same `serve --config FILE` the gateway is started with).
//!
//! Each client connection gets its own HTTP/1.1 connection to the `fast` upstream of the
//! generated config; every request is forwarded with its method, headers and body to the
//! upstream's `/mcp`, and the answer comes back the same way. Nothing is parsed, checked,
//! scanned or recorded, and `/readyz` answers 200. What it measures (via ÷ direct throughput,
//! added latency) is what no gateway doing more than forwarding can beat here: BENCHMARKS.md,
//! "Why 0.8× is out of reach".

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::client::{self, Sender};

/// Serves the proxy on the config's `listen:` address, forwarding to its `fast` server.
pub async fn serve(config: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    let (listen, upstream) = addresses(&text)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(sender) = client::connect(upstream).await else {
                return;
            };
            let sender = Arc::new(Mutex::new(sender));
            let service = service_fn(move |request| forward(sender.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `listen:` and the `fast` server's address from the load generator's generated config.
fn addresses(config: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let value = |prefix: &str, after: usize| {
        config[after..]
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("no `{prefix}` in the config"))
    };
    let listen = value("listen:", 0)?.parse().context("listen:")?;
    let fast = config
        .find("fast:")
        .context("no `fast:` server in the config")?;
    let url = value("url:", fast)?;
    let upstream = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("fast url {url}"))?
        .parse()
        .with_context(|| format!("fast url {url}"))?;
    Ok((listen, upstream))
}

/// One request through: its method, headers and body to the upstream's `/mcp`, the answer back.
async fn forward(
    upstream: Arc<Mutex<Sender>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.uri().path() == "/readyz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ready"))));
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut onward = Request::new(Full::new(body));
    *onward.method_mut() = parts.method;
    *onward.uri_mut() = hyper::Uri::from_static("/mcp");
    *onward.headers_mut() = parts.headers;
    let mut sender = upstream.lock().await;
    sender.ready().await?;
    let answer = sender.send_request(onward).await?;
    drop(sender);
    let (parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tools/call` through the proxy reaches the benchmark upstream and its answer comes
    /// back whole; `/readyz` is answered by the proxy itself.
    #[tokio::test]
    async fn calls_pass_through_to_the_fast_upstream() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(crate::upstream::serve(upstream, false));
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = free.local_addr().unwrap();
        drop(free);
        let dir = std::env::temp_dir().join(format!("bare-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("portcullis.yaml");
        std::fs::write(
            &config,
            format!("listen: {listen}\nservers:\n  fast:\n    url: http://{upstream_addr}/mcp\n"),
        )
        .unwrap();
        tokio::spawn(async move { serve(&config).await });
        let mut sender = None;
        for _ in 0..100 {
            if let Ok(s) = client::connect(listen).await {
                sender = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut sender = sender.expect("the proxy listens");
        let target = client::Target {
            addr: listen,
            path: "/mcp".into(),
            tool: "echo".into(),
            token: "t".into(),
        };
        for id in 1..=3 {
            client::send(&mut sender, client::tools_call(&target, id))
                .await
                .expect("a result through the proxy");
        }
        let ready = Request::get("/readyz")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.ready().await.unwrap();
        let answer = sender.send_request(ready).await.unwrap();
        assert_eq!(answer.status(), 200);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_come_from_the_generated_config() {
        let config = "listen: 127.0.0.1:4000\nstorage: sqlite://x.db\nservers:\n  fast:\n    url: http://127.0.0.1:4001/mcp\n  legacy:\n    url: http://127.0.0.1:4002/mcp\n";
        let (listen, upstream) = addresses(config).unwrap();
        assert_eq!(listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(upstream, "127.0.0.1:4001".parse().unwrap());
        assert!(addresses("listen: 127.0.0.1:1\n").is_err());
    }
}
