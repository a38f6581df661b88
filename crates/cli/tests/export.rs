//! SIEM export wired into the gateway: `audit.sinks` in the config is started with the gateway,
//! the records of governed messages reach the sink, and `/metrics` reports the sink's lag.
//! (The sinks themselves are tested against real and loopback receivers in `crates/export`.)

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn governed_messages_reach_a_file_sink_and_metrics_show_its_lag() {
    let dir = TempDir::new("export-file");
    let out = dir.0.join("siem.jsonl");
    let gw = gateway_with(&format!(
        "audit:\n  chain_id: export-chain\n  sinks:\n    - {{ file: \"{}\", name: siem }}\n",
        out.display()
    ))
    .await;
    modern(&gw, "/mcp", ALICE, 1, "tools/list", json!({})).await;

    let lines = poll(Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        lines
            .iter()
            .any(|l| l["method"] == "tools/list" && l["principal"]["agent"] == "alice")
            .then_some(lines)
    })
    .await
    .unwrap_or_else(|| panic!("no tools/list record in {}", out.display()));
    assert!(lines.iter().all(|l| l["chain_id"] == "export-chain"));
    assert!(
        lines
            .iter()
            .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64))
    );

    let text = gw.metrics_text().await;
    for series in [
        "portcullis_export_lag_records{sink=\"siem\",chain=\"export-chain\"}",
        "portcullis_export_lag_seconds{sink=\"siem\",chain=\"export-chain\"}",
        "portcullis_export_delivered_records_total{sink=\"siem\",chain=\"export-chain\"}",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_sink_with_a_missing_secret_is_a_config_error_naming_its_path() {
    let error = portcullis_config::Loader::with_vars([("UNRELATED", "x")])
        .from_yaml(
            "audit:\n  sinks:\n    - { webhook: \"https://siem.example/hook\", secret_env: HOOK_SECRET }\n",
            "test",
        )
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("audit.sinks[0].secret_env: environment variable HOOK_SECRET is not set"),
        "{error}"
    );
}
