//! Every file in `tests/invalid/` is one invalid document. Its `# expect: PATH: MESSAGE` lines
//! list exactly the errors validation must report (decode errors included), in order.
//! `# warn: PATH: MESSAGE` lines list expected warnings the same way.

use std::path::Path;

use rudder_config::load::{Problem, load_str};
use rudder_config::{Severity, Validate};

fn expectations(text: &str, tag: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix(tag)).map(|l| l.trim().to_owned()).collect()
}

#[test]
fn every_invalid_document_reports_exactly_its_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/invalid").map(|e| e.expect("entry").path()).collect();
    files.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        count += 1;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(file).expect("read");
        let want_errors = expectations(&text, "# expect:");
        let want_warnings = expectations(&text, "# warn:");
        if want_errors.is_empty() {
            failures.push(format!("{name}: has no `# expect:` line"));
            continue;
        }
        let loads = match load_str(&name, &text) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: unreadable: {e}"));
                continue;
            }
        };
        let mut got_errors = Vec::new();
        let mut got_warnings = Vec::new();
        for problem in &loads.problems {
            match problem {
                Problem::Decode { error, .. } => got_errors.push(error.to_string()),
                other => got_errors.push(other.to_string()),
            }
        }
        for loaded in &loads.objects {
            for item in loaded.object.report().items {
                let line = format!("{}: {}", item.path, item.message);
                match item.severity {
                    Severity::Error => got_errors.push(line),
                    Severity::Warning => got_warnings.push(line),
                }
            }
        }
        if got_errors != want_errors {
            failures.push(format!("{name}:\n  want errors {want_errors:#?}\n  got  errors {got_errors:#?}"));
        }
        if !want_warnings.is_empty() && got_warnings != want_warnings {
            failures.push(format!("{name}:\n  want warnings {want_warnings:#?}\n  got  warnings {got_warnings:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {count} invalid documents differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_suite_holds_at_least_40_invalid_documents() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let count = std::fs::read_dir(dir)
        .expect("tests/invalid")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml")))
        .count();
    assert!(count >= 40, "only {count} invalid documents; the suite promises at least 40");
}
