//! Golden files: each case of `render_common.rs` rendered and compared with
//! `tests/golden/<case>.yaml` (CRD bodies left out; notes as leading comments).
//! Refresh with `UPDATE_GOLDEN=1 cargo test -p rudder-operator --test render_golden`.

mod render_common;

use std::path::PathBuf;

use pretty_assertions::assert_eq;
use render_common::{CASES, render_case};
use rudder_operator::manifest::Manifest;

fn golden_text(manifest: &Manifest) -> String {
    let mut shown = manifest.clone();
    for obj in &mut shown.objects {
        if obj.object.types.as_ref().is_some_and(|t| t.kind == "CustomResourceDefinition") {
            obj.object.data = serde_json::json!({});
        }
    }
    let mut out = String::new();
    for note in &manifest.notes {
        out.push_str(&format!("# note: {note}\n"));
    }
    out.push_str(&shown.to_yaml().expect("yaml"));
    out
}

#[test]
fn rendered_cases_match_their_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for case in CASES {
        let got = golden_text(&render_case(case));
        let path = dir.join(format!("{}.yaml", case.name));
        if update {
            std::fs::write(&path, &got).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1 to create it", path.display()));
        assert_eq!(want, got, "golden {} differs (UPDATE_GOLDEN=1 refreshes it)", case.name);
    }
}
