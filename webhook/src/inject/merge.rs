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

/// Merges `overlay` onto `base`, moving the overlay's values in (same result as [`merge`]).
pub fn merge_owned(base: &mut Value, overlay: Value) {
    merge_field_owned(base, overlay, None);
}

/// `list_key`: the merge key of the field being merged (see [`merge_key`]).
fn merge_field_owned(base: &mut Value, overlay: Value, list_key: Option<&'static str>) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                if value.is_null() {
                    base.remove(&key);
                } else {
                    let list_key = merge_key(&key);
                    merge_field_owned(base.entry(key).or_insert(Value::Null), value, list_key);
                }
            }
        }
        (Value::Array(base), Value::Array(overlay)) if list_key.is_some_and(|k| keyed(&overlay, k)) => {
            let key = list_key.unwrap_or("name");
            for item in overlay {
                match base.iter_mut().find(|b| b.get(key).is_some() && b.get(key) == item.get(key)) {
                    Some(existing) => merge_field_owned(existing, item, None),
                    None => base.push(item),
                }
            }
        }
        (base, overlay) => *base = overlay,
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

    #[test]
    fn owned_merge_matches_borrowed_merge() {
        let base = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}], "ports": [{"containerPort": 80}],
             "volumeMounts": [{"name": "v", "mountPath": "/v"}]}], "volumes": []}});
        let overlay = json!({"metadata": {"labels": {"a": null, "b": "2"}, "annotations": {"x": "y"}},
            "spec": {"containers": [
                {"name": "a", "args": ["2"], "env": [{"name": "F", "value": "2"}], "image": null,
                 "ports": [{"containerPort": 80, "name": "http"}], "volumeMounts": [{"name": "w", "mountPath": "/v"}]},
                {"name": "b", "nested": {"k": null}}],
             "volumes": [{"name": "v", "emptyDir": {}}], "args": [{"name": "n"}], "empty": []}});
        let mut borrowed = base.clone();
        merge(&mut borrowed, &overlay);
        let mut owned = base;
        merge_owned(&mut owned, overlay);
        assert_eq!(owned, borrowed);
    }
}
