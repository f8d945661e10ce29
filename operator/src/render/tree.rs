//! Editing untyped YAML trees (`serde_json::Value`): deep merge, path parsing shared by
//! `--set` flags and `k8s.overlays` patches, and setting or deleting at a path.
//!
//! Path syntax: segments separated by `.` (a literal dot in a key is written `\.`); a segment
//! `[N]` picks list item N, `[key:value]` the list item whose `key` equals `value`. A selector
//! may follow a key directly (`gateways[0]`) or stand alone (`containers.[name:discovery]`).

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
    Match { key: String, value: String },
}

/// Splits `path` into segments; errors say what is malformed.
pub fn parse_path(path: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    for token in split_unescaped(path) {
        parse_token(&token, &mut segments)?;
    }
    if segments.is_empty() {
        return Err("empty path".into());
    }
    Ok(segments)
}

fn split_unescaped(path: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                current.push('.');
            }
            '.' if depth == 0 => tokens.push(std::mem::take(&mut current)),
            _ => {
                depth = match c {
                    '[' => depth + 1,
                    ']' => depth.saturating_sub(1),
                    _ => depth,
                };
                current.push(c);
            }
        }
    }
    tokens.push(current);
    tokens
}

fn parse_token(token: &str, out: &mut Vec<Segment>) -> Result<(), String> {
    let (key, selector) = match token.find('[') {
        Some(i) => (&token[..i], Some(&token[i..])),
        None => (token, None),
    };
    if !key.is_empty() {
        out.push(Segment::Key(key.to_owned()));
    }
    match selector {
        None if key.is_empty() => Err("empty path segment".into()),
        None => Ok(()),
        Some(sel) => {
            let inner = sel
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| format!("malformed selector {sel:?}; use [N] or [key:value]"))?;
            out.push(parse_selector(inner)?);
            Ok(())
        }
    }
}

fn parse_selector(inner: &str) -> Result<Segment, String> {
    if let Some((key, value)) = inner.split_once(':') {
        return Ok(Segment::Match { key: key.trim().to_owned(), value: value.trim().to_owned() });
    }
    inner
        .trim()
        .parse()
        .map(Segment::Index)
        .map_err(|_| format!("selector [{inner}] is neither an index nor key:value"))
}

/// Merges `overlay` into `base`: maps merge key by key, anything else replaces. Lists of
/// gateways (`ingressGateways`, `egressGateways`) merge item by item on `name`.
pub fn merge(base: &mut Value, overlay: Value) {
    merge_keyed(base, overlay, "")
}

fn merge_keyed(base: &mut Value, overlay: Value, key: &str) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (k, v) in overlay {
                let slot = base.entry(k.clone()).or_insert(Value::Null);
                merge_keyed(slot, v, &k);
            }
        }
        (Value::Array(base), Value::Array(overlay)) if key.ends_with("Gateways") => merge_by_name(base, overlay),
        (base, overlay) => *base = overlay,
    }
}

fn merge_by_name(base: &mut Vec<Value>, overlay: Vec<Value>) {
    for item in overlay {
        let name = item.get("name").and_then(Value::as_str).map(str::to_owned);
        let existing = name.and_then(|n| base.iter_mut().find(|b| b.get("name").and_then(Value::as_str) == Some(&n)));
        match existing {
            Some(slot) => merge(slot, item),
            None => base.push(item),
        }
    }
}

/// The value at `path`, if present.
pub fn get<'a>(root: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(root, |node, seg| match seg {
        Segment::Key(k) => node.get(k),
        Segment::Index(i) => node.get(i),
        Segment::Match { key, value } => node.as_array()?.iter().find(|item| matches(item, key, value)),
    })
}

/// The value at a dotted path of plain keys (`global.proxy.resources`).
pub fn get_dotted<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |node, key| node.get(key))
}

fn matches(item: &Value, key: &str, value: &str) -> bool {
    match item.get(key) {
        Some(Value::String(s)) => s == value,
        Some(other @ (Value::Number(_) | Value::Bool(_))) => value == other.to_string().as_str(),
        _ => false,
    }
}

/// Sets `value` at `path`, creating missing maps, a list's next item (an index one past its
/// end) and `key:value` items on the way. Errors when the path crosses a scalar, a selector
/// meets a map, or an index lies further past a list's end (items are added in order, so
/// `[4]` on an empty list is a mistake, and `[444444444444]` must not fill memory).
pub fn set(root: &mut Value, path: &[Segment], value: Value) -> Result<(), String> {
    let mut node = root;
    for seg in path {
        node = step_mut(node, seg)?;
    }
    *node = value;
    Ok(())
}

fn step_mut<'a>(node: &'a mut Value, seg: &Segment) -> Result<&'a mut Value, String> {
    if node.is_null() {
        *node = match seg {
            Segment::Key(_) => Value::Object(Map::new()),
            _ => Value::Array(Vec::new()),
        };
    }
    match (node, seg) {
        (Value::Object(map), Segment::Key(k)) => Ok(map.entry(k.clone()).or_insert(Value::Null)),
        (Value::Array(list), Segment::Index(i)) => {
            if *i > list.len() {
                return Err(format!(
                    "index [{i}] is past the end of a list of {} item(s); add items in order ([{}] adds one)",
                    list.len(),
                    list.len()
                ));
            }
            if *i == list.len() {
                list.push(Value::Object(Map::new()));
            }
            Ok(&mut list[*i])
        }
        (Value::Array(list), Segment::Match { key, value }) => {
            let pos = match list.iter().position(|item| matches(item, key, value)) {
                Some(pos) => pos,
                None => {
                    let mut item = Map::new();
                    item.insert(key.clone(), Value::String(value.clone()));
                    list.push(Value::Object(item));
                    list.len() - 1
                }
            };
            Ok(&mut list[pos])
        }
        (other, seg) => Err(format!("cannot apply {} to {}", describe(seg), kind_of(other))),
    }
}

/// Removes what `path` points at; a missing target is not an error.
pub fn delete(root: &mut Value, path: &[Segment]) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else { return Ok(()) };
    let mut node = root;
    for seg in parents {
        node = match (node, seg) {
            (Value::Object(map), Segment::Key(k)) => match map.get_mut(k) {
                Some(next) => next,
                None => return Ok(()),
            },
            (Value::Array(list), Segment::Index(i)) => match list.get_mut(*i) {
                Some(next) => next,
                None => return Ok(()),
            },
            (Value::Array(list), Segment::Match { key, value }) => {
                match list.iter_mut().find(|item| matches(item, key, value)) {
                    Some(next) => next,
                    None => return Ok(()),
                }
            }
            (other, seg) => return Err(format!("cannot apply {} to {}", describe(seg), kind_of(other))),
        };
    }
    match (node, last) {
        (Value::Object(map), Segment::Key(k)) => {
            map.remove(k);
        }
        (Value::Array(list), Segment::Index(i)) if *i < list.len() => {
            list.remove(*i);
        }
        (Value::Array(list), Segment::Match { key, value }) => list.retain(|item| !matches(item, key, value)),
        _ => {}
    }
    Ok(())
}

fn describe(seg: &Segment) -> String {
    match seg {
        Segment::Key(k) => format!("key {k:?}"),
        Segment::Index(i) => format!("index [{i}]"),
        Segment::Match { key, value } => format!("selector [{key}:{value}]"),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// A `--set path=value` flag, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct SetFlag {
    pub path: Vec<Segment>,
    pub value: Value,
}

/// Parses `path=value`: the path as above, the value as a YAML scalar (`true`/`false`, an
/// integer, else the text as a string).
pub fn parse_set(flag: &str) -> Result<SetFlag, String> {
    let (path, value) = flag.split_once('=').ok_or_else(|| format!("--set {flag:?}: expected path=value"))?;
    let path = parse_path(path.trim()).map_err(|e| format!("--set {flag:?}: {e}"))?;
    Ok(SetFlag { path, value: scalar(value) })
}

fn scalar(text: &str) -> Value {
    match text {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(text.to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Fuzzing (`render`, 2026-12-06) found `--set components.egressGateways[444444444444444440]…`
    /// filling memory with empty items up to the index.
    #[test]
    fn an_index_may_add_the_next_item_but_not_skip_ahead() {
        let mut root = json!({"gateways": [{"name": "a"}]});
        set(&mut root, &parse_path("gateways[1].name").unwrap(), json!("b")).unwrap();
        set(&mut root, &parse_path("gateways[0].enabled").unwrap(), json!(true)).unwrap();
        assert_eq!(root, json!({"gateways": [{"name": "a", "enabled": true}, {"name": "b"}]}));
        let far = set(&mut root, &parse_path("gateways[444444444444444440].enabled").unwrap(), json!(true));
        assert_eq!(
            far.unwrap_err(),
            "index [444444444444444440] is past the end of a list of 2 item(s); add items in order ([2] adds one)"
        );
        let mut empty = json!({});
        assert!(set(&mut empty, &parse_path("list[3]").unwrap(), json!(1)).is_err());
        set(&mut empty, &parse_path("list[0]").unwrap(), json!(1)).unwrap();
        assert_eq!(empty, json!({"list": [1]}));
        assert_eq!(root["gateways"].as_array().unwrap().len(), 2, "a refused path changes nothing");
    }
}
