//! What the controller's installs decide from the objects already in the cluster. Three rules,
//! all pure; [`super::apply::install`] lists the live objects (reads only) and feeds them in.
//!
//! 1. **Run-time fields.** Discovery writes some webhook fields itself while it runs: `caBundle`
//!    (once its serving certificate exists) and `failurePolicy` (switched to `Fail` once it can
//!    serve). With server-side apply, a field the applier keeps sending under `force` is taken
//!    back on every reconcile, so each resync would undo discovery. Simply never sending these
//!    fields would not work either: SSA *removes* a field its only owner stops applying, and the
//!    API server would then default `failurePolicy` to `Fail` behind the renderer's back. What SSA
//!    does offer is that a field an applier stops sending is only *released* (value kept) when
//!    another manager also owns it. So [`leave_run_time_fields`] drops `caBundle`/`failurePolicy`
//!    of a webhook from the apply body exactly when the live object records another field
//!    manager as owner of it: a fresh object gets the rendered values, an object only Rudder
//!    ever wrote keeps getting them, and once discovery has set a value Rudder lets go of it.
//! 2. **Unchanged objects.** [`AppliedCache`] remembers, per object, a hash of the body last
//!    applied and the `resourceVersion` the API server answered with. When the live object still
//!    has that version and the body hashes the same, nobody changed the object since and there is
//!    nothing to apply, so a no-op reconcile only reads. Any edit (or delete) by anyone moves the
//!    version on, and the object is applied again; a restarted operator applies everything once.
//! 3. **Shared gateways** live in [`super::plan::yields_to_live_owner`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use kube::api::DynamicObject;
use rudder_config::labels;
use serde_json::Value;

use super::plan::ObjectKey;

/// Webhook fields that discovery may own at run time, as paths inside one webhook entry.
pub const RUN_TIME_FIELDS: [&[&str]; 2] = [&["failurePolicy"], &["clientConfig", "caBundle"]];

/// Whether `kind` holds a `webhooks` list whose entries may carry [`RUN_TIME_FIELDS`].
pub fn is_webhook_configuration(kind: &str) -> bool {
    matches!(kind, "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration")
}

/// The apply body for a webhook configuration with every run-time field that some manager other
/// than Rudder owns on the live object taken out (see the module docs for why that, and only
/// that, leaves the field to its owner). Without a live object the body is unchanged.
pub fn leave_run_time_fields(kind: &str, body: &DynamicObject, live: Option<&DynamicObject>) -> DynamicObject {
    let mut out = body.clone();
    let Some(live) = live else { return out };
    if !is_webhook_configuration(kind) {
        return out;
    }
    let Some(hooks) = out.data.get_mut("webhooks").and_then(Value::as_array_mut) else { return out };
    for hook in hooks {
        let Some(name) = hook.get("name").and_then(Value::as_str).map(str::to_owned) else { continue };
        for path in RUN_TIME_FIELDS {
            if owned_by_others(live, &name, path) {
                remove_path(hook, path);
            }
        }
    }
    out
}

/// Whether a field manager other than Rudder's owns `path` in the webhook entry `name`.
pub fn owned_by_others(live: &DynamicObject, webhook: &str, path: &[&str]) -> bool {
    let entries = live.metadata.managed_fields.iter().flatten();
    entries
        .filter(|m| m.manager.as_deref() != Some(labels::FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:webhooks").and_then(Value::as_object))
        .flat_map(|items| items.iter())
        .filter(|(key, _)| list_item_name(key).as_deref() == Some(webhook))
        .any(|(_, fields)| path.iter().try_fold(fields, |node, step| node.get(format!("f:{step}"))).is_some())
}

/// The `name` of a `managedFields` list-item key such as `k:{"name":"rev.validation.istio.io"}`.
fn list_item_name(key: &str) -> Option<String> {
    let json = key.strip_prefix("k:")?;
    let value: Value = serde_json::from_str(json).ok()?;
    value.get("name")?.as_str().map(str::to_owned)
}

fn remove_path(node: &mut Value, path: &[&str]) {
    match path {
        [] => {}
        [last] => {
            if let Some(map) = node.as_object_mut() {
                map.remove(*last);
            }
        }
        [first, rest @ ..] => {
            if let Some(child) = node.get_mut(*first) {
                remove_path(child, rest);
            }
        }
    }
}

/// A hash of an apply body (only compared within one process, so the std hasher is enough).
pub fn body_hash(body: &DynamicObject) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(body).unwrap_or_default().hash(&mut h);
    h.finish()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    body_hash: u64,
    resource_version: String,
}

/// Per object: what was last applied and the `resourceVersion` that apply produced. Kept by the
/// controller across reconciles; see the module docs.
#[derive(Debug, Default)]
pub struct AppliedCache(Mutex<HashMap<ObjectKey, Applied>>);

impl AppliedCache {
    /// Whether applying `body` to `key` would change nothing: the live object is still the one
    /// the last apply of the same body produced.
    pub fn unchanged(&self, key: &ObjectKey, body: &DynamicObject, live: Option<&DynamicObject>) -> bool {
        let Some(version) = live.and_then(|l| l.metadata.resource_version.as_deref()) else { return false };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|a| a.resource_version == version && a.body_hash == body_hash(body))
    }

    /// Records an apply of `body` that left the object at `resource_version`.
    pub fn record(&self, key: &ObjectKey, body: &DynamicObject, resource_version: Option<&str>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match resource_version {
            Some(v) => {
                map.insert(key.clone(), Applied { body_hash: body_hash(body), resource_version: v.to_owned() });
            }
            None => {
                map.remove(key);
            }
        }
    }

    /// Forgets an object (it was deleted).
    pub fn forget(&self, key: &ObjectKey) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vwc(policy: &str, managers: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "istio-validator-istio-system", "resourceVersion": "4", "managedFields": managers},
            "webhooks": [{"name": "rev.validation.istio.io", "failurePolicy": policy,
                "clientConfig": {"service": {"name": "istiod", "namespace": "istio-system"}}}],
        }))
        .unwrap()
    }

    fn manager(name: &str, fields: Value) -> Value {
        json!({"manager": name, "operation": "Update", "apiVersion": "admissionregistration.k8s.io/v1", "fieldsType": "FieldsV1", "fieldsV1": fields})
    }

    const KIND: &str = "ValidatingWebhookConfiguration";

    #[test]
    fn fields_owned_by_discovery_are_left_out_and_others_kept() {
        let item = r#"k:{"name":"rev.validation.istio.io"}"#;
        let discovery = manager(
            "pilot-discovery",
            json!({"f:webhooks": {item: {"f:failurePolicy": {}, "f:clientConfig": {"f:caBundle": {}}}}}),
        );
        let live = vwc("Fail", json!([discovery]));
        let body = vwc("Ignore", json!(null));
        let out = leave_run_time_fields(KIND, &body, Some(&live));
        let hook = &out.data["webhooks"][0];
        assert_eq!(hook.get("failurePolicy"), None);
        assert_eq!(hook["clientConfig"]["service"]["name"], "istiod");
    }

    #[test]
    fn fresh_objects_and_fields_only_rudder_owns_keep_the_rendered_value() {
        let body = vwc("Ignore", json!(null));
        assert_eq!(leave_run_time_fields(KIND, &body, None).data, body.data);
        let item = r#"k:{"name":"rev.validation.istio.io"}"#;
        let ours = manager("rudder", json!({"f:webhooks": {item: {"f:failurePolicy": {}}}}));
        let someone = manager("kubectl", json!({"f:metadata": {"f:labels": {}}}));
        let live = vwc("Ignore", json!([ours, someone]));
        assert_eq!(leave_run_time_fields(KIND, &body, Some(&live)).data, body.data);
        // Other webhook names do not count.
        let other = manager("x", json!({"f:webhooks": {r#"k:{"name":"other"}"#: {"f:failurePolicy": {}}}}));
        assert_eq!(leave_run_time_fields(KIND, &body, Some(&vwc("Fail", json!([other])))).data, body.data);
    }

    #[test]
    fn the_cache_skips_only_the_same_body_at_the_same_version() {
        let cache = AppliedCache::default();
        let key = ObjectKey { kind: KIND.into(), namespace: None, name: "istio-validator-istio-system".into() };
        let body = vwc("Ignore", json!(null));
        let live = vwc("Ignore", json!(null));
        assert!(!cache.unchanged(&key, &body, Some(&live)));
        cache.record(&key, &body, Some("4"));
        assert!(cache.unchanged(&key, &body, Some(&live)));
        assert!(!cache.unchanged(&key, &body, None), "deleted");
        assert!(!cache.unchanged(&key, &vwc("Fail", json!(null)), Some(&live)), "rendered differently");
        let mut edited = live.clone();
        edited.metadata.resource_version = Some("5".into());
        assert!(!cache.unchanged(&key, &body, Some(&edited)), "changed by someone");
        cache.forget(&key);
        assert!(!cache.unchanged(&key, &body, Some(&live)));
    }
}
