//! Any text through what `rudder validate`, `--config-dir` and the validating webhook do with
//! it: split into YAML documents, decode every Istio kind, validate each object. Every input
//! must end in objects or problems, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rudder_config::validate::Validate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(loads) = rudder_config::load::load_str("fuzz.yaml", text) else { return };
    for loaded in &loads.objects {
        let report = loaded.object.report();
        for item in &report.items {
            let _ = item.to_string();
        }
    }
    for problem in &loads.problems {
        let _ = problem.to_string();
    }
});
