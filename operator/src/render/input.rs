//! Turning the request into one validated IstioOperator: profile (over `default`), the user's
//! files in order, `--set` flags last, `-r` over all; each user file and then the merged result
//! checked with `rudder_config`'s validation, errors printed the way `rudder validate` prints them.

use rudder_config::load::{Loads, load_str};
use rudder_config::operator::IstioOperator;
use rudder_config::{IstioObject, Validate};
use serde_json::{Map, Value, json};

use super::tree::{self, Segment, SetFlag};
use super::{RenderError, RenderRequest, profiles};

/// The merged input.
#[derive(Clone, Debug)]
pub struct Merged {
    /// Profile, files and flags merged, decoded.
    pub iop: IstioOperator,
    /// The `spec.values` the user gave (files and `--set`), which win over translated fields.
    pub user_values: Value,
    /// Validation warnings, to pass on as notes.
    pub warnings: Vec<String>,
}

const API_VERSION: &str = "install.istio.io/v1alpha1";
const KIND: &str = "IstioOperator";

/// Merges and validates everything `req` holds.
pub fn merge_inputs(req: &RenderRequest) -> Result<Merged, RenderError> {
    let mut user = Value::Object(Map::new());
    let mut errors = Vec::new();
    for file in &req.files {
        check_shape(&file.name, &file.value)?;
        errors.extend(validate(&file.name, &file.value)?.0);
        tree::merge(&mut user, file.value.clone());
    }
    if !errors.is_empty() {
        return Err(RenderError::Invalid(errors));
    }
    let flags = req.set.iter().map(|f| tree::parse_set(f)).collect::<Result<Vec<_>, _>>().map_err(RenderError::Set)?;
    let mut user_only = user.clone();
    for flag in &flags {
        let _ = apply_flag(&mut user_only, flag);
    }
    let profile = tree::get_dotted(&user_only, "spec.profile").and_then(Value::as_str).unwrap_or_default();
    let mut merged = profiles::load(profile)?;
    tree::merge(&mut merged, user);
    for flag in &flags {
        apply_flag(&mut merged, flag).map_err(RenderError::Set)?;
    }
    if let Some(rev) = &req.revision {
        tree::merge(&mut merged, json!({"spec": {"revision": rev}}));
    }
    finish(merged, tree::get_dotted(&user_only, "spec.values").cloned().unwrap_or(Value::Null))
}

fn finish(mut merged: Value, user_values: Value) -> Result<Merged, RenderError> {
    tree::merge(&mut merged, json!({"apiVersion": API_VERSION, "kind": KIND}));
    let (errors, warnings, iop) = validate("<merged input>", &merged)?;
    if !errors.is_empty() {
        return Err(RenderError::Invalid(errors));
    }
    let iop = iop.ok_or_else(|| RenderError::Invalid(vec!["error: merged input did not decode".into()]))?;
    Ok(Merged { iop, user_values, warnings })
}

fn apply_flag(root: &mut Value, flag: &SetFlag) -> Result<(), String> {
    let mut path = vec![Segment::Key("spec".into())];
    path.extend(flag.path.iter().cloned());
    tree::set(root, &path, flag.value.clone()).map_err(|e| format!("--set {}: {e}", display(&flag.path)))
}

fn display(path: &[Segment]) -> String {
    path.iter()
        .map(|s| match s {
            Segment::Key(k) => k.clone(),
            Segment::Index(i) => format!("[{i}]"),
            Segment::Match { key, value } => format!("[{key}:{value}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn check_shape(file: &str, value: &Value) -> Result<(), RenderError> {
    let err = |message: String| RenderError::Input { file: file.to_owned(), message };
    let map = value.as_object().ok_or_else(|| err("expected an IstioOperator document (a mapping)".into()))?;
    match map.get("kind").and_then(Value::as_str) {
        None | Some(KIND) => Ok(()),
        Some(other) => Err(err(format!("kind: expected {KIND}, found {other}"))),
    }
}

type Checked = (Vec<String>, Vec<String>, Option<IstioOperator>);

/// Validates one document as an IstioOperator: (errors, warnings, the decoded object).
fn validate(name: &str, value: &Value) -> Result<Checked, RenderError> {
    let mut doc = value.clone();
    tree::merge(&mut doc, json!({"apiVersion": API_VERSION, "kind": KIND, "metadata": {}, "spec": {}}));
    let text = serde_json::to_string(&doc)
        .map_err(|e| RenderError::Input { file: name.to_owned(), message: e.to_string() })?;
    let loads: Loads =
        load_str(name, &text).map_err(|e| RenderError::Input { file: name.to_owned(), message: e.to_string() })?;
    let mut errors: Vec<String> = loads.problems.iter().map(|p| format!("error: {p}")).collect();
    let mut warnings = Vec::new();
    let mut decoded = None;
    for loaded in loads.objects {
        for item in &loaded.object.report().items {
            let at = if item.path.is_empty() { String::new() } else { format!("{}: ", item.path) };
            let line = format!("{} {}: {at}{}", loaded.source, loaded.id, item.message);
            match item.severity {
                rudder_config::Severity::Error => errors.push(format!("error: {line}")),
                rudder_config::Severity::Warning => warnings.push(format!("warning: {line}")),
            }
        }
        if let IstioObject::IstioOperator(iop) = loaded.object {
            decoded = Some(*iop);
        }
    }
    Ok((errors, warnings, decoded))
}
