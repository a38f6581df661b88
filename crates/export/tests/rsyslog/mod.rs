//! Against a real receiver: Debian's rsyslog (installed project-locally by
//! `scripts/install-rsyslog.sh`, which `scripts/install-peers.sh` runs), listening on a
//! loopback port with a config file of the test's own, over TCP (octet counting) and TLS (the
//! `ossl` stream driver). rsyslog parses each message as RFC 5424 and writes its fields to a
//! file; the test reads the fields back as rsyslog understood them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis_config::sinks::{SinkKind, SyslogFormat, SyslogTransport};

use crate::support::*;

/// The project-local rsyslogd launcher.
fn rsyslogd() -> PathBuf {
    let peers = std::env::var("PORTCULLIS_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.mcp-peers"));
    let bin = peers.join("rsyslog/bin/rsyslogd");
    assert!(
        bin.exists(),
        "rsyslog is not installed at {}; run scripts/install-peers.sh (or scripts/install-rsyslog.sh)",
        bin.display()
    );
    bin
}

/// A running rsyslogd; killed on drop.
struct Rsyslog {
    child: Child,
    port: u16,
    out: PathBuf,
    dir: PathBuf,
}

/// A free loopback port (bound, then released for rsyslog to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Rsyslog {
    /// Starts rsyslogd on `port` (0: a free one) writing into `dir/out.log`.
    async fn start(dir: &Path, port: u16, tls: bool) -> Rsyslog {
        let port = if port == 0 { free_port() } else { port };
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.join("out.log");
        let driver = if tls {
            format!(
                "global(DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\")\n\
                 module(load=\"imtcp\" StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n",
                data("ca.pem").display(),
                data("server.pem").display(),
                data("server.key").display()
            )
        } else {
            "module(load=\"imtcp\")\n".to_owned()
        };
        let conf = format!(
            "global(workDirectory=\"{work}\")\n{driver}\
             template(name=\"fields\" type=\"string\" string=\"%pri%|%app-name%|%msgid%|%hostname%|%structured-data%|%msg%\\n\")\n\
             ruleset(name=\"audit\") {{ action(type=\"omfile\" file=\"{out}\" template=\"fields\") }}\n\
             input(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\" ruleset=\"audit\")\n",
            work = work.display(),
            out = out.display(),
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("rsyslogd.log")).unwrap();
        let child = Command::new(rsyslogd())
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        let me = Rsyslog {
            child,
            port,
            out,
            dir: dir.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "rsyslogd did not listen on {port}; log: {}",
                std::fs::read_to_string(dir.join("rsyslogd.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        me
    }

    /// Kills it (SIGKILL: no goodbye to connected clients beyond the kernel's).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Complete lines written so far, as (pri, app, msgid, hostname, structured data, msg). A
    /// last line without its newline is one rsyslogd is still writing: it is read next time.
    fn lines(&self) -> Vec<[String; 6]> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| {
                let parts: Vec<&str> = l.splitn(6, '|').collect();
                assert_eq!(parts.len(), 6, "rsyslog line {l:?}");
                std::array::from_fn(|i| parts[i].to_owned())
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seqs(lines: &[[String; 6]]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            let msg: serde_json::Value =
                serde_json::from_str(&l[5]).expect("MSG is the JSON record");
            let seq = msg["seq"].as_u64().expect("seq");
            assert!(
                l[4].contains(&format!(" seq=\"{seq}\"")),
                "SD agrees with MSG: {l:?}"
            );
            seq
        })
        .collect()
}

fn kind(transport: SyslogTransport, port: u16) -> SinkKind {
    SinkKind::Syslog {
        transport,
        host: if transport == SyslogTransport::Tls {
            "localhost"
        } else {
            "127.0.0.1"
        }
        .into(),
        port,
        format: SyslogFormat::Json,
        facility: 16,
        app_name: "portcullis".into(),
        hostname: Some("gw-test".into()),
        ca_file: (transport == SyslogTransport::Tls).then(|| data("ca.pem")),
    }
}

/// rsyslog parses what we send as RFC 5424 with the fields we meant; killed and restarted, it
/// still ends up with every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tcp_receives_every_record_across_a_restart() {
    let db = Db::sqlite().await;
    let rs_dir = db.path("rsyslog");
    std::fs::create_dir_all(&rs_dir).unwrap();
    let rs = Rsyslog::start(&rs_dir, 0, false).await;
    let port = rs.port;
    let writer = db.writer("gw-1").await;
    append(&writer, 50, Duration::ZERO).await;
    let export = db
        .export(&[sink("rsyslog", kind(SyslogTransport::Tcp, port), 20)])
        .await;
    wait_for("50 lines in rsyslog's file", || rs.lines().len() >= 50).await;
    let lines = rs.lines();
    // local0 (16) * 8 + informational (6) = 134.
    for l in &lines {
        assert_eq!(
            (l[0].as_str(), l[1].as_str(), l[2].as_str(), l[3].as_str()),
            ("134", "portcullis", "call", "gw-test"),
            "{l:?}"
        );
        assert!(
            l[4].starts_with("[portcullis@32473 chain=\"gw-1\""),
            "{l:?}"
        );
    }
    assert_eq!(seqs(&lines), (1..=50).collect::<Vec<_>>());
    wait_for("caught up", || {
        lag_of(&export, "rsyslog", "gw-1").is_some_and(|l| l.records_behind == 0)
    })
    .await;

    rs.kill();
    append(&writer, 100, Duration::ZERO).await;
    wait_for("failures while rsyslog is down", || {
        lag_of(&export, "rsyslog", "gw-1")
            .is_some_and(|l| l.consecutive_failures >= 2 && l.records_behind == 100)
    })
    .await;
    let rs = Rsyslog::start(&rs_dir, port, false).await;
    wait_for("all 150", || {
        let set: std::collections::BTreeSet<u64> = seqs(&rs.lines()).into_iter().collect();
        set.len() == 150
    })
    .await;
    assert_complete(&seqs(&rs.lines()), 150);
    assert!(
        !rs.log().contains("Framing Error"),
        "rsyslog complained: {}",
        rs.log()
    );
    export.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_tls_receives_records_from_a_sink_trusting_its_ca() {
    let db = Db::sqlite().await;
    let rs_dir = db.path("rsyslog-tls");
    std::fs::create_dir_all(&rs_dir).unwrap();
    let rs = Rsyslog::start(&rs_dir, 0, true).await;
    let writer = db.writer("gw-1").await;
    append(&writer, 30, Duration::ZERO).await;
    let export = db
        .export(&[sink("rsyslog-tls", kind(SyslogTransport::Tls, rs.port), 8)])
        .await;
    wait_for("30 lines over TLS", || rs.lines().len() >= 30).await;
    assert_complete(&seqs(&rs.lines()), 30);
    let lag = lag_of(&export, "rsyslog-tls", "gw-1").unwrap();
    assert_eq!(lag.failures_total, 0, "{lag:?}");
    export.stop().await;
}
