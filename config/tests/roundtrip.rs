//! Every valid document (the examples and the Istio snippets quoted in the spec, kept under
//! `tests/valid/`) loads into its Rust type, validates clean, and serialises back to the JSON it
//! was read from.

use std::path::{Path, PathBuf};

use pretty_assertions::assert_eq;
use rudder_config::Validate;
use rudder_config::load::load_paths;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The input with what serialisation legitimately drops or rewrites made equal: `null`s, empty
/// maps/lists (unset in protobuf), number spellings, and the `apiVersion` (written as the type's
/// version).
fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !is_empty(v))
                .map(|(k, v)| (k.clone(), normalise(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        // `value: 50` for a double field is written back as `50.0`: compare numbers by value.
        Value::Number(n) => n.as_f64().map_or_else(|| value.clone(), |f| serde_json::json!(f)),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn check_dir(dir: PathBuf) -> usize {
    let loads = load_paths(std::slice::from_ref(&dir)).unwrap_or_else(|e| panic!("{e}"));
    let errors: Vec<String> = loads.problems.iter().filter(|p| p.is_error()).map(ToString::to_string).collect();
    assert!(errors.is_empty(), "load problems under {}:\n{}", dir.display(), errors.join("\n"));
    for loaded in &loads.objects {
        let report = loaded.object.report();
        let errors: Vec<String> = report.errors().map(ToString::to_string).collect();
        assert!(errors.is_empty(), "{} {} is invalid:\n{}", loaded.source, loaded.id, errors.join("\n"));
        let mut written = loaded.object.to_value().unwrap_or_else(|e| panic!("{}: {e}", loaded.source));
        written["apiVersion"] = loaded.raw["apiVersion"].clone();
        assert_eq!(normalise(&loaded.raw), normalise(&written), "{} {} does not round-trip", loaded.source, loaded.id);
    }
    loads.objects.len()
}

#[test]
fn examples_round_trip() {
    let n = check_dir(repo().join("examples"));
    assert!(n > 0, "no examples found");
}

#[test]
fn spec_snippets_round_trip() {
    let n = check_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valid"));
    assert!(n > 0, "no snippets found");
}
