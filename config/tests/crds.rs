//! The CRDs: `chart/crds/` is the golden copy of what the types generate (`UPDATE_GOLDEN=1`
//! rewrites it), every schema is structural, and every example and valid fixture is accepted by
//! the schema of its kind and version, as the API server would check it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rudder_config::crds;
use rudder_config::load::load_paths;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn chart_crds_match_the_types() {
    let files = crds::render_files().unwrap_or_else(|e| panic!("{e}"));
    let dir = repo().join("chart/crds");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&dir).expect("mkdir chart/crds");
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).expect("write golden");
        }
    }
    for (name, text) in &files {
        let on_disk = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            &on_disk == text,
            "chart/crds/{name} is stale; run `cargo run -p rudder-crd-gen` (or UPDATE_GOLDEN=1 cargo test)"
        );
    }
}

#[test]
fn compiled_in_crds_are_the_generated_ones() {
    let files = crds::render_files().unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
    let compiled: Vec<&str> = crds::GENERATED_FILES.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, compiled, "GENERATED_FILES must list every group file");
    let generated: Vec<serde_json::Value> =
        crds::all().iter().map(|c| serde_json::to_value(c).expect("json")).collect();
    let mut compiled = crds::generated_values().expect("parse");
    let mut generated = generated;
    let key = |v: &serde_json::Value| v["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    compiled.sort_by_key(key);
    generated.sort_by_key(key);
    assert!(compiled == generated, "chart/crds differs from the types; run `cargo run -p rudder-crd-gen`");
}

#[test]
fn every_crd_is_structural_and_carries_istio_names() {
    let all = crds::all();
    assert_eq!(all.len(), rudder_config::object::KINDS.len());
    for crd in &all {
        assert_eq!(crds::structural_problems(crd), Vec::<String>::new(), "{:?}", crd.metadata.name);
        // Every config kind is in upstream's `istio-io` category; IstioOperator has none upstream.
        let categories = crd.spec.names.categories.clone().unwrap_or_default();
        let expected = crd.spec.group != "install.istio.io";
        assert_eq!(categories.iter().any(|c| c == "istio-io"), expected, "{:?} categories", crd.metadata.name);
        assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1, "{:?}", crd.metadata.name);
    }
}

#[test]
fn structural_check_catches_what_the_api_server_refuses() {
    let mut crd = crds::all().remove(0);
    let schema = crd.spec.versions[0].schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()).expect("schema");
    let spec = schema.properties.as_mut().and_then(|p| p.get_mut("spec")).expect("spec");
    spec.type_ = None;
    let problems = crds::structural_problems(&crd);
    assert!(problems.iter().any(|p| p.ends_with(".spec: type is missing")), "{problems:?}");
}

/// The schema of every served version, keyed by (`group/version`, kind).
fn schemas() -> HashMap<(String, String), Value> {
    let mut out = HashMap::new();
    for crd in crds::all() {
        for v in crd.spec.versions {
            let schema = serde_json::to_value(v.schema.and_then(|s| s.open_api_v3_schema)).expect("schema json");
            out.insert((format!("{}/{}", crd.spec.group, v.name), crd.spec.names.kind.clone()), schema);
        }
    }
    out
}

#[test]
fn crd_schemas_accept_every_example_and_fixture() {
    let loads = load_paths(&[repo().join("examples"), repo().join("config/tests/valid")]).expect("load");
    let schemas = schemas();
    let mut validators = HashMap::new();
    let mut failures = Vec::new();
    for loaded in &loads.objects {
        let key = (loaded.id.api_version.clone(), loaded.id.kind.clone());
        let validator = validators
            .entry(key.clone())
            .or_insert_with(|| jsonschema::draft4::new(&schemas[&key]).expect("schema compiles"));
        for error in validator.iter_errors(&loaded.raw) {
            failures.push(format!("{} {}: {} at {}", loaded.source, loaded.id, error, error.instance_path()));
        }
    }
    assert!(!loads.objects.is_empty());
    assert!(failures.is_empty(), "schema rejects:\n{}", failures.join("\n"));
}

#[test]
fn crd_schemas_reject_a_wrong_type() {
    let schemas = schemas();
    let schema = &schemas[&("networking.istio.io/v1".to_owned(), "VirtualService".to_owned())];
    let validator = jsonschema::draft4::new(schema).expect("schema compiles");
    let object = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "x"}, "spec": "not an object"});
    assert!(!validator.is_valid(&object));
}
