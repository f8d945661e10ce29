//! Istio's semantic validation: the checks `istioctl validate` and the validating webhook make
//! beyond what the schema can say.
//!
//! Every kind implements [`Validate`], walking its spec with a [`FieldPath`] and collecting every
//! problem into a [`Report`] (all problems at once, never the first only). Shared checks for
//! hosts, ports, durations, regexes, percentages and labels live in [`checks`].

pub mod checks;
mod export;

pub use export::export_to;

use std::fmt;

/// Where in an object a problem is, spelled the way users read YAML paths:
/// `spec.http[0].route[1].weight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn new(root: &str) -> Self {
        Self(root.to_owned())
    }
    /// The usual root for a spec.
    pub fn spec() -> Self {
        Self::new("spec")
    }
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() { Self(name.to_owned()) } else { Self(format!("{}.{name}", self.0)) }
    }
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }
    /// A map entry, e.g. `spec.selector.matchLabels[app]`.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub severity: Severity,
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        if self.path.is_empty() {
            write!(f, "{level}{}", self.message)
        } else {
            write!(f, "{level}{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub items: Vec<FieldError>,
}

impl Report {
    pub fn error(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.items.push(FieldError { severity: Severity::Error, path: at.0.clone(), message: message.into() });
    }
    pub fn warning(&mut self, at: &FieldPath, message: impl Into<String>) {
        self.items.push(FieldError { severity: Severity::Warning, path: at.0.clone(), message: message.into() });
    }
    /// Records `result`'s error, if any, at `at`. For the `checks` functions.
    pub fn check(&mut self, at: &FieldPath, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(at, message);
        }
    }
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        self.items.iter().filter(|e| e.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &FieldError> {
        self.items.iter().filter(|e| e.severity == Severity::Warning)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Semantic validation of one Istio object (the whole object, since some rules read metadata,
/// such as the namespace or name).
pub trait Validate {
    fn validate(&self, report: &mut Report);

    /// Convenience: validate into a fresh report.
    fn report(&self) -> Report {
        let mut report = Report::default();
        self.validate(&mut report);
        report
    }
}
