//! The built-in profiles: YAML files under `operator/profiles/`, compiled in. Every profile is
//! layered over `default`. Ambient profiles are refused: Rudder does not run ambient mode.

use serde_json::Value;

use super::RenderError;
use super::tree;

/// Name and text of every built-in profile.
const PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../../profiles/default.yaml")),
    ("demo", include_str!("../../profiles/demo.yaml")),
    ("minimal", include_str!("../../profiles/minimal.yaml")),
    ("empty", include_str!("../../profiles/empty.yaml")),
    ("preview", include_str!("../../profiles/preview.yaml")),
    ("remote", include_str!("../../profiles/remote.yaml")),
];

/// The names `profile:` accepts.
pub fn names() -> Vec<&'static str> {
    PROFILES.iter().map(|(name, _)| *name).collect()
}

/// The profile `name` (empty means `default`) as one tree: `default` with the profile over it.
pub fn load(name: &str) -> Result<Value, RenderError> {
    let name = if name.is_empty() { "default" } else { name };
    if name.contains("ambient") {
        return Err(RenderError::Profile(format!(
            "profile {name:?} installs ambient mode, which Rudder does not support; use a sidecar profile ({})",
            names().join(", ")
        )));
    }
    let text = PROFILES.iter().find(|(n, _)| *n == name).map(|(_, text)| *text).ok_or_else(|| {
        let hint = if name.contains('/') { "; profile files are not supported, pass the file with -f" } else { "" };
        RenderError::Profile(format!("unknown profile {name:?}; use one of {}{hint}", names().join(", ")))
    })?;
    let mut tree = parse("default")?;
    if name != "default" {
        tree::merge(&mut tree, parse_text(name, text)?);
    }
    Ok(tree)
}

fn parse(name: &str) -> Result<Value, RenderError> {
    let text = PROFILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).unwrap_or_default();
    parse_text(name, text)
}

fn parse_text(name: &str, text: &str) -> Result<Value, RenderError> {
    serde_saphyr::from_str(text).map_err(|e| RenderError::Profile(format!("built-in profile {name} is broken: {e}")))
}
