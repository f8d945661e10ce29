//! The render context: the merged IstioOperator with its top-level fields translated into
//! values (`hub`, `tag`, `namespace`, `revision`, `meshConfig`; the user's own `values` win),
//! typed look-ups into those values, the rendered MeshConfig, revision-aware names, and the
//! notes about values Rudder keeps but does not act on.

use rudder_config::mesh::{MeshConfig, apply_yaml};
use rudder_config::operator::{ComponentsSpec, IstioOperator};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::input::Merged;
use super::{ClusterFacts, DEFAULT_HUB, DEFAULT_TAG, RenderError, tree};

/// Value paths Rudder acts on (a path counts when it is, or lies under, one of these).
const USED_VALUES: &[&str] = &[
    "global.hub",
    "global.tag",
    "global.istioNamespace",
    "global.imagePullPolicy",
    "global.proxy",
    "global.configValidation",
    "global.network",
    "global.omitSidecarInjectorConfigMap",
    "pilot",
    "sidecarInjectorWebhook",
    "gateways",
    "meshConfig",
    "revision",
    "ownerName",
    "istiodRemote.enabled",
    "istiodRemote.injectionURL",
    "istiodRemote.injectionCABundle",
];

/// Everything the builders read.
#[derive(Clone, Debug)]
pub struct Context {
    pub iop: IstioOperator,
    /// The final values tree (always a map).
    pub values: Value,
    pub namespace: String,
    pub revision: Option<String>,
    pub hub: String,
    pub tag: String,
    pub mesh: MeshConfig,
    pub owner_name: String,
    pub owner_namespace: Option<String>,
    pub network: Option<String>,
    pub notes: Vec<String>,
}

impl Context {
    pub fn new(merged: Merged, cluster: &ClusterFacts) -> Result<Self, RenderError> {
        let values = final_values(&merged)?;
        let text = |path: &str| tree::get_dotted(&values, path).and_then(scalar_text).filter(|s| !s.is_empty());
        let namespace = text("global.istioNamespace")
            .or_else(|| merged.iop.metadata.namespace.clone().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "istio-system".into());
        let revision = text("revision");
        let hub = text("global.hub").unwrap_or_else(|| DEFAULT_HUB.into());
        let tag = text("global.tag").unwrap_or_else(|| DEFAULT_TAG.into());
        let owner_name = merged
            .iop
            .metadata
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| text("ownerName"))
            .unwrap_or_else(|| "unknown".into());
        let owner_namespace = merged.iop.metadata.namespace.clone().filter(|s| !s.is_empty());
        let network = text("global.network").or_else(|| cluster.network.clone());
        let mut ctx = Self {
            iop: merged.iop,
            values,
            namespace,
            revision,
            hub,
            tag,
            mesh: MeshConfig::default(),
            owner_name,
            owner_namespace,
            network,
            notes: merged.warnings,
        };
        ctx.mesh = ctx.render_mesh()?;
        ctx.notes.extend(unused_notes(&ctx));
        Ok(ctx)
    }

    fn render_mesh(&self) -> Result<MeshConfig, RenderError> {
        let mut base = MeshConfig::istio_defaults();
        base.root_namespace = Some(self.namespace.clone());
        if let Some(proxy) = base.default_config.as_mut() {
            proxy.discovery_address = Some(self.discovery_address());
        }
        let overlay = self.value("meshConfig").cloned().unwrap_or(Value::Null);
        let text = serde_json::to_string(&overlay).map_err(|e| value_error("meshConfig", e.to_string()))?;
        apply_yaml(&text, &base).map_err(|e| value_error("meshConfig", e))
    }

    /// `istio.io/rev` value: the revision, or `default`.
    pub fn rev_label(&self) -> &str {
        self.revision.as_deref().unwrap_or(rudder_config::labels::DEFAULT_REVISION)
    }

    /// `base` or `base-<rev>`: names of namespaced control-plane objects.
    pub fn revisioned(&self, base: &str) -> String {
        match &self.revision {
            Some(rev) => format!("{base}-{rev}"),
            None => base.to_owned(),
        }
    }

    /// `base[-<rev>]-<ns>`: names of cluster-scoped control-plane objects.
    pub fn cluster_scoped(&self, base: &str) -> String {
        format!("{}-{}", self.revisioned(base), self.namespace)
    }

    /// The discovery Service name, `istiod[-<rev>]`.
    pub fn istiod(&self) -> String {
        self.revisioned("istiod")
    }

    /// Where proxies reach the discovery server.
    pub fn discovery_address(&self) -> String {
        format!("{}.{}.svc:15012", self.istiod(), self.namespace)
    }

    /// `<hub>/<name>:<tag>`, with a component's own hub and tag preferred.
    pub fn image(&self, name: &str, hub: Option<&str>, tag: Option<&Value>) -> String {
        let hub = hub.filter(|h| !h.is_empty()).unwrap_or(&self.hub);
        let tag = tag.and_then(scalar_text).unwrap_or_else(|| self.tag.clone());
        format!("{hub}/{name}:{tag}")
    }

    pub fn value(&self, path: &str) -> Option<&Value> {
        tree::get_dotted(&self.values, path).filter(|v| !v.is_null())
    }

    pub fn bool_value(&self, path: &str, default: bool) -> bool {
        match self.value(path) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => default,
        }
    }

    pub fn int_value(&self, path: &str, default: i64) -> i64 {
        match self.value(path) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
            Some(Value::String(s)) => s.parse().unwrap_or(default),
            _ => default,
        }
    }

    pub fn str_value(&self, path: &str) -> Option<String> {
        self.value(path).and_then(scalar_text)
    }

    /// The value at `path` decoded as `T`; a value of the wrong shape is an error naming it.
    pub fn typed<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, RenderError> {
        self.value(path)
            .map(|v| serde_json::from_value(v.clone()).map_err(|e| value_error(path, e.to_string())))
            .transpose()
    }

    pub fn components(&self) -> ComponentsSpec {
        self.iop.spec.components.clone().unwrap_or_default()
    }

    /// Whether the remote-cluster mode is on (no local discovery server).
    pub fn remote(&self) -> bool {
        self.bool_value("istiodRemote.enabled", false)
    }
}

fn value_error(path: &str, message: String) -> RenderError {
    RenderError::Value { path: format!("spec.values.{path}"), message }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Merged `values`, then the translated top-level fields, then the user's own values again.
fn final_values(merged: &Merged) -> Result<Value, RenderError> {
    let spec = &merged.iop.spec;
    let mut values = Value::Object(spec.values.clone().map(|v| v.0).unwrap_or_default());
    let mut translated = json!({});
    let mut put = |path: &str, v: Value| {
        if let Ok(path) = tree::parse_path(path) {
            let _ = tree::set(&mut translated, &path, v);
        }
    };
    if let Some(hub) = &spec.hub {
        put("global.hub", Value::String(hub.clone()));
    }
    if let Some(tag) = &spec.tag {
        put("global.tag", tag.0.clone());
    }
    if !spec.namespace.is_empty() {
        put("global.istioNamespace", Value::String(spec.namespace.clone()));
    }
    if !spec.revision.is_empty() {
        put("revision", Value::String(spec.revision.clone()));
    }
    if let Some(mesh) = &spec.mesh_config {
        let mesh = serde_json::to_value(mesh).map_err(|e| value_error("meshConfig", e.to_string()))?;
        put("meshConfig", mesh);
    }
    tree::merge(&mut values, translated);
    if merged.user_values.is_object() {
        tree::merge(&mut values, merged.user_values.clone());
    }
    if !values.is_object() {
        values = Value::Object(Map::new());
    }
    Ok(values)
}

/// One note per value path Rudder does not act on, and per component it does not render.
fn unused_notes(ctx: &Context) -> Vec<String> {
    let mut leaves = Vec::new();
    collect_leaves(&ctx.values, String::new(), &mut leaves);
    let mut notes: Vec<String> = leaves
        .into_iter()
        .filter(|path| !USED_VALUES.iter().any(|used| path == used || path.starts_with(&format!("{used}."))))
        .map(|path| format!("values.{path} is kept in the injector values but Rudder does not act on it"))
        .collect();
    let components = ctx.components();
    for (name, spec) in
        [("cni", &components.cni), ("ztunnel", &components.ztunnel), ("istiodRemote", &components.istiod_remote)]
    {
        if spec.as_ref().and_then(|s| s.enabled) == Some(true) {
            notes.push(format!("components.{name} is enabled but Rudder does not render it"));
        }
    }
    if !ctx.iop.spec.compatibility_version.is_empty() {
        notes.push("compatibilityVersion is ignored: Rudder has one set of defaults".into());
    }
    notes
}

fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                collect_leaves(v, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}
