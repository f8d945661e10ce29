//! Any text as the `mesh` key of the `istio` ConfigMap (or `--mesh-config`): layered over
//! Istio's defaults and validated. Bad input is an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rudder_config::validate::{FieldPath, Report};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mesh) = rudder_config::mesh::apply_yaml_over_defaults(text) {
        let mut report = Report::default();
        mesh.validate(&FieldPath::new("mesh"), &mut report);
    }
});
