//! Loading Istio YAML: files, directories and stdin, each holding any number of documents
//! (`---`-separated, or a `kind: List`). Every object keeps where it came from (file and
//! 1-based document number) so that errors can point at it. Kinds Rudder does not know are
//! reported, not fatal; so are documents whose fields do not decode.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::object::{IstioObject, KindInfo};
use crate::validate::{FieldError, Severity};

/// Where one document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The path as the user gave it (or as found under a directory); `-` is shown as `<stdin>`.
    pub file: String,
    /// 1-based position of the document in its file (empty documents are not counted).
    pub doc: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.doc)
    }
}

/// The identity of a document as far as it could be read: `Kind namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectId {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind.is_empty() { "<no kind>" } else { &self.kind };
        let name = self.name.as_deref().unwrap_or("<no name>");
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{name}"),
            None => write!(f, "{kind} {name}"),
        }
    }
}

impl ObjectId {
    fn of(value: &Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let meta = value.get("metadata");
        Self {
            api_version: text(value.get("apiVersion")).unwrap_or_default(),
            kind: text(value.get("kind")).unwrap_or_default(),
            namespace: text(meta.and_then(|m| m.get("namespace"))),
            name: text(meta.and_then(|m| m.get("name"))),
        }
    }
}

/// One object that decoded into its Rust type.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub source: Source,
    pub id: ObjectId,
    pub object: IstioObject,
    /// The document exactly as read, for round-trip checks and pass-through.
    pub raw: Value,
}

/// A document that could not become a typed object.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// A kind (or group) Rudder does not know; not an error for `validate`.
    UnknownKind { source: Source, id: ObjectId },
    /// A known kind at a version its CRD does not serve.
    UnknownVersion { source: Source, id: ObjectId, served: &'static [&'static str] },
    /// Not an object with `apiVersion` and `kind`.
    NotAnObject { source: Source, message: String },
    /// A known kind whose fields do not decode: the first field that does not fit.
    Decode { source: Source, id: ObjectId, error: FieldError },
}

impl Problem {
    /// Whether this problem makes the input invalid (unknown kinds do not).
    pub fn is_error(&self) -> bool {
        !matches!(self, Problem::UnknownKind { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownKind { source, id } => {
                write!(f, "{source} {id}: unknown kind {}/{} (skipped)", id.api_version, id.kind)
            }
            Problem::UnknownVersion { source, id, served } => write!(
                f,
                "{source} {id}: apiVersion: {} is not served; use one of {}",
                id.api_version,
                served
                    .iter()
                    .map(|v| format!("{}/{v}", id.api_version.split('/').next().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Problem::NotAnObject { source, message } => write!(f, "{source}: {message}"),
            Problem::Decode { source, id, error } => write!(f, "{source} {id}: {error}"),
        }
    }
}

/// Everything read from a set of inputs.
#[derive(Clone, Debug, Default)]
pub struct Loads {
    pub objects: Vec<Loaded>,
    pub problems: Vec<Problem>,
}

/// An input that could not be read at all (missing file, bad YAML syntax).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
}

/// Splits YAML text into its documents, as JSON values.
pub fn documents(file: &str, text: &str) -> Result<Vec<Value>, ReadError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| ReadError::Yaml { file: file.to_owned(), message: e.to_string() })?;
    // `kind: List` (what `kubectl get -o yaml` writes) holds its objects in `items`.
    Ok(docs
        .into_iter()
        .flat_map(|doc| match doc {
            Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                match map.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => Vec::new(),
                }
            }
            Value::Null => Vec::new(),
            other => vec![other],
        })
        .collect())
}

/// The kind [`Loads::add`] gives a Grafana dashboard's JSON model (skipped like other kinds).
pub const GRAFANA_DASHBOARD: &str = "GrafanaDashboard";

/// Whether `doc` is a Grafana dashboard's JSON model: no `apiVersion`/`kind`, but a
/// `schemaVersion` and a `panels` list.
fn is_grafana_dashboard(doc: &Value) -> bool {
    doc.get("schemaVersion").is_some_and(Value::is_number) && doc.get("panels").is_some_and(Value::is_array)
}

/// Decodes every document of one file's text.
pub fn load_str(file: &str, text: &str) -> Result<Loads, ReadError> {
    let mut loads = Loads::default();
    for (i, doc) in documents(file, text)?.into_iter().enumerate() {
        loads.add(Source { file: file.to_owned(), doc: i + 1 }, doc);
    }
    Ok(loads)
}

impl Loads {
    /// Decodes one document (a YAML or JSON mapping, or an object read from a cluster) into
    /// an Istio object, or records why it is not one.
    pub fn add(&mut self, source: Source, doc: Value) {
        if !doc.is_object() {
            self.problems.push(Problem::NotAnObject { source, message: "document is not a YAML mapping".into() });
            return;
        }
        let id = ObjectId::of(&doc);
        if id.api_version.is_empty() && id.kind.is_empty() && is_grafana_dashboard(&doc) {
            // Dashboards often sit beside manifests (`examples/grafana/`): not Istio config.
            let id = ObjectId { kind: GRAFANA_DASHBOARD.into(), ..id };
            self.problems.push(Problem::UnknownKind { source, id });
            return;
        }
        if id.api_version.is_empty() || id.kind.is_empty() {
            self.problems.push(Problem::NotAnObject { source, message: "document has no apiVersion or kind".into() });
            return;
        }
        let (group, version) = id.api_version.rsplit_once('/').unwrap_or(("", id.api_version.as_str()));
        let Some(info) = KindInfo::find(group, &id.kind) else {
            self.problems.push(Problem::UnknownKind { source, id });
            return;
        };
        if !info.versions.contains(&version) {
            self.problems.push(Problem::UnknownVersion { source, id, served: info.versions });
            return;
        }
        match IstioObject::decode(info.kind, doc.clone()) {
            Some(Ok(object)) => self.objects.push(Loaded { source, id, object, raw: doc }),
            Some(Err(e)) => {
                let path = e.path().to_string();
                let error = FieldError {
                    severity: Severity::Error,
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                };
                self.problems.push(Problem::Decode { source, id, error });
            }
            None => self.problems.push(Problem::UnknownKind { source, id }),
        }
    }

    fn extend(&mut self, other: Loads) {
        self.objects.extend(other.objects);
        self.problems.extend(other.problems);
    }
}

/// Reads files, directories (every `.yaml`, `.yml` and `.json` below them, in name order) and
/// `-` for stdin. Stops at the first input that cannot be read.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loads, ReadError> {
    let mut loads = Loads::default();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| ReadError::Io { file: "<stdin>".into(), source })?;
            loads.extend(load_str("<stdin>", &text)?);
            continue;
        }
        for file in files_under(path)? {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|source| ReadError::Io { file: name.clone(), source })?;
            loads.extend(load_str(&name, &text)?);
        }
    }
    Ok(loads)
}

/// Every `.yaml`, `.yml` and `.json` file at or below `path`, in name order.
pub fn files_under(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let io = |source| ReadError::Io { file: path.display().to_string(), source };
    if !path.is_dir() {
        // Let the read report a missing file with its path.
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(path).map_err(io)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(io)?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(files_under(&entry)?);
        } else if matches!(entry.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            files.push(entry);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_dashboards_are_skipped_not_errors() {
        let loads = load_str("d.json", r#"{"title": "x", "schemaVersion": 39, "panels": []}"#).expect("read");
        assert!(loads.objects.is_empty());
        assert!(
            matches!(&loads.problems[..], [Problem::UnknownKind { id, .. }] if id.kind == GRAFANA_DASHBOARD),
            "{:?}",
            loads.problems
        );
        assert!(!loads.problems[0].is_error());
        let other = load_str("d.json", r#"{"title": "x", "panels": []}"#).expect("read");
        assert!(matches!(&other.problems[..], [problem] if problem.is_error()), "{:?}", other.problems);
    }
}
