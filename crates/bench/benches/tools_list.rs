//! Tool metadata screening (`portcullis_gateway::scanning::metadata`): what a `tools/list` of
//! 50 realistic tools costs the gateway the first time (parse, canonical hash and poisoning scan
//! of every definition, first-use pins), when the same list comes again (byte-for-byte memo: no
//! parse, no hash, no scan), and when the same definitions come in another order (memo miss,
//! every definition parsed and hashed, every scan from the hash cache).
//!
//! `cargo bench -p portcullis-bench --bench tools_list`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcullis_config::scanners::ScanProfile;
use portcullis_core::envelope::to_raw;
use portcullis_gateway::scanning::metadata::{ItemKind, MetadataGuard};
use serde_json::json;
use serde_json::value::RawValue;

fn tools(n: usize) -> Vec<Box<RawValue>> {
    (0..n)
        .map(|i| {
            to_raw(&json!({
                "name": format!("resource_{i}_update"),
                "title": format!("Update resource {i}"),
                "description": format!(
                    "Updates one resource of kind {i} in the project. Fields that are left out keep \
                     their current values. Returns the updated resource, or an error when the \
                     resource does not exist or the caller lacks write access to project {i}."
                ),
                "inputSchema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "Identifier of the resource"},
                        "name": {"type": "string", "description": "New display name", "maxLength": 200},
                        "labels": {"type": "array", "items": {"type": "string"}, "description": "Labels to set"},
                        "priority": {"type": "integer", "minimum": 0, "maximum": 5},
                        "archived": {"type": "boolean", "default": false}
                    },
                    "required": ["id"]
                },
                "annotations": {"readOnlyHint": false, "idempotentHint": true}
            }))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let scanner = portcullis_gateway::scanning::scanner().expect("scanner compiles");
    let profile = ScanProfile::default();
    let list = tools(50);
    let bytes: u64 = list.iter().map(|t| t.get().len() as u64).sum();
    let mut group = c.benchmark_group("tools_list_50");
    group.throughput(Throughput::Bytes(bytes));

    group.bench_function("first_sight", |b| {
        b.iter_batched(
            || (MetadataGuard::default(), list.clone()),
            |(guard, items)| {
                guard.screen_items(scanner, "srv", ItemKind::Tool, items, &profile, true)
            },
            BatchSize::SmallInput,
        )
    });

    let warm = MetadataGuard::default();
    warm.screen_items(scanner, "srv", ItemKind::Tool, list.clone(), &profile, true);
    let scans = warm.scans();
    group.bench_function("unchanged", |b| {
        b.iter_batched(
            || list.clone(),
            |items| warm.screen_items(scanner, "srv", ItemKind::Tool, items, &profile, true),
            BatchSize::SmallInput,
        )
    });
    let mut reversed = list.clone();
    reversed.reverse();
    let mut flip = false;
    group.bench_function("same_definitions_reordered", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                if flip { reversed.clone() } else { list.clone() }
            },
            |items| warm.screen_items(scanner, "srv", ItemKind::Tool, items, &profile, true),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert_eq!(warm.scans(), scans, "no definition was scanned twice");
}

criterion_group!(benches, bench);
criterion_main!(benches);
