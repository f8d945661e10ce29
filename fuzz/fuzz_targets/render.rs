//! `rudder manifest generate`: an IstioOperator file and `--set` flags through the renderer.
//! The input is text split at NUL bytes: the first part is the `-f` file (any number of YAML
//! documents), every later part one `--set path=value` flag, except a part starting with `-r `,
//! which is the revision. Bad input is an error, never a panic; what renders must print as
//! YAML that reads back.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rudder_operator::render::{InputFile, RenderRequest, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.split('\0');
    let file = parts.next().unwrap_or_default();
    let mut req = RenderRequest::default();
    for part in parts {
        match part.strip_prefix("-r ") {
            Some(revision) => req.revision = Some(revision.to_owned()),
            None => req.set.push(part.to_owned()),
        }
    }
    let Ok(docs) = rudder_config::load::documents("fuzz.yaml", file) else { return };
    req.files = docs
        .into_iter()
        .enumerate()
        .map(|(i, value)| InputFile { name: format!("fuzz.yaml:{}", i + 1), value })
        .collect();
    let Ok(manifest) = render(&req) else { return };
    if let Ok(yaml) = manifest.to_yaml() {
        if let Err(e) = rudder_config::load::documents("manifest", &yaml) {
            panic!("rendered manifest does not read back: {e}\n{yaml}");
        }
    }
});
