//! Fuzz target for `portcullis_core::envelope::parse`: never panics on any input, and whatever it
//! accepts survives `to_bytes` → `parse` with the same members, kind and method, and is readable
//! by `serde_json::Value` with the same meaning (no parser differential).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::envelope::{Envelope, Limits, Parsed, parse};

fn check(original: &[u8], env: &Envelope, limits: &Limits) {
    let bytes = env.to_bytes();
    let again = match parse(&bytes, limits) {
        Ok(Parsed::Single(again)) => again,
        other => panic!(
            "to_bytes output did not reparse: {other:?}\n{}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    let a: Vec<(&str, &str)> = env.members().map(|(k, v)| (k, v.get())).collect();
    let b: Vec<(&str, &str)> = again.members().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(a, b);
    assert_eq!(env.kind(), again.kind());
    assert_eq!(env.method(), again.method());
    let _ = original;
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_depth: 32,
        max_batch: 8,
    };
    let Ok(parsed) = parse(data, &limits) else {
        return;
    };
    // Accepted input is plain JSON to serde_json too, with the same value.
    let value: serde_json::Value =
        serde_json::from_slice(data).expect("accepted input must be valid JSON");
    match parsed {
        Parsed::Single(env) => {
            check(data, &env, &limits);
            let out: serde_json::Value =
                serde_json::from_slice(&env.to_bytes()).expect("output is JSON");
            assert_eq!(out, value);
        }
        Parsed::Batch(items) => {
            let serde_json::Value::Array(values) = value else {
                panic!("batch is not an array")
            };
            assert_eq!(items.len(), values.len());
            for (env, value) in items.iter().zip(values) {
                check(data, env, &limits);
                let out: serde_json::Value =
                    serde_json::from_slice(&env.to_bytes()).expect("output is JSON");
                assert_eq!(out, value);
            }
        }
    }
});
