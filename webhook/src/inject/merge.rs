//! A strategic-merge-like overlay on JSON, enough for pod templates: objects merge key by key
//! (`null` removes a key); lists of objects merge element by element on their merge key
//! (`name` for containers, volumes, env and pull secrets, `mountPath` for `volumeMounts`,
//! `containerPort` for `ports`), new elements are appended, and an empty list changes nothing;
//! every other list is replaced.

use serde_json::Value;

/// The key list elements under `field` are matched by, if the list merges.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "volumeMounts" | "volumeDevices" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        _ => None,
    }
}

/// Merges `overlay` onto `base`.
pub fn merge(base: &mut Value, overlay: &Value) {
    merge_field(base, overlay, "");
}

fn merge_field(base: &mut Value, overlay: &Value, field: &str) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(key);
                } else {
                    merge_field(base.entry(key.clone()).or_insert(Value::Null), value, key);
                }
            }
        }
        (Value::Array(base), Value::Array(overlay)) if merge_key(field).is_some_and(|k| keyed(overlay, k)) => {
            let key = merge_key(field).unwrap_or("name");
            for item in overlay {
                match base.iter_mut().find(|b| b.get(key).is_some() && b.get(key) == item.get(key)) {
                    Some(existing) => merge_field(existing, item, ""),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// Every element carries the merge key (an empty list merges as a no-op).
fn keyed(items: &[Value], key: &str) -> bool {
    items.iter().all(|i| i.get(key).is_some())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merges_by_name_and_replaces_scalar_lists() {
        let mut base = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "args": ["1"], "env": [{"name": "E", "value": "1"}],
             "ports": [{"containerPort": 80}]}]}});
        let overlay = json!({"spec": {"containers": [
            {"name": "a", "args": ["2"], "env": [{"name": "F", "value": "2"}], "image": null,
             "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "b"}]}});
        merge(&mut base, &overlay);
        assert_eq!(
            base,
            json!({"spec": {"containers": [
                {"name": "a", "args": ["2"], "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}],
                 "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "b"}]}})
        );
    }
}
