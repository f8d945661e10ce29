//! `extensions.istio.io`: WasmPlugin, a WebAssembly module (proxy-wasm ABI) run as an HTTP or
//! network filter in the proxies it selects.

use std::collections::BTreeSet;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{FreeForm, IstioStatus, PolicyTargetReference, PortSelector, WorkloadSelector};
use crate::security::validate_attachment;
use crate::validate::{FieldPath, Report, Validate, checks};

/// A WebAssembly extension of the proxies: where its module comes from, how it is configured,
/// and where in the filter chain it runs.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "WasmPlugin",
    plural = "wasmplugins",
    namespaced,
    status = "IstioStatus",
    category = "istio-io",
    category = "extensions-istio-io",
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPluginSpec {
    /// Workloads the plugin runs in; all in the namespace (in the mesh, from the root
    /// namespace) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource the plugin attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the plugin attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Where the module is: `oci://` (the default scheme), `https://`, `http://` or `file://`.
    #[serde(default)]
    pub url: String,
    /// SHA-256 of the module (or, for OCI, of the image manifest), 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// When the module is fetched again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Secret with registry credentials for OCI pulls, in the plugin's namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_pull_secret: String,
    /// Public key to verify the module's signature (not implemented upstream either).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub verification_key: String,
    /// The plugin's configuration, handed to it as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<FreeForm>,
    /// The plugin's root id in the module (Envoy's `root_id`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plugin_name: String,
    /// Where in the filter chain the plugin runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PluginPhase>,
    /// Order within a phase: higher runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// What happens when the plugin fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_strategy: Option<FailStrategy>,
    /// Settings of the Wasm VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<VmConfig>,
    /// Traffic the plugin sees; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub r#match: Vec<TrafficSelector>,
    /// HTTP filter (the default) or network filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<PluginType>,
}

crate::proto_enum! {
    /// `PullPolicy`.
    pub enum PullPolicy {
        UnspecifiedPolicy = 0 => "UNSPECIFIED_POLICY",
        IfNotPresent = 1 => "IfNotPresent",
        Always = 2 => "Always",
    }
}

crate::proto_enum! {
    /// `PluginPhase`: where in the filter chain a plugin runs.
    pub enum PluginPhase {
        UnspecifiedPhase = 0 => "UNSPECIFIED_PHASE",
        Authn = 1 => "AUTHN",
        Authz = 2 => "AUTHZ",
        Stats = 3 => "STATS",
    }
}

crate::proto_enum! {
    /// `FailStrategy`.
    pub enum FailStrategy {
        FailClose = 0 => "FAIL_CLOSE",
        FailOpen = 1 => "FAIL_OPEN",
        FailReload = 2 => "FAIL_RELOAD",
    }
}

crate::proto_enum! {
    /// `PluginType`.
    pub enum PluginType {
        UnspecifiedPluginType = 0 => "UNSPECIFIED_PLUGIN_TYPE",
        Http = 1 => "HTTP",
        Network = 2 => "NETWORK",
    }
}

crate::proto_enum! {
    /// `istio.type.v1beta1.WorkloadMode`: which side of the traffic.
    pub enum TrafficMode {
        Undefined = 0 => "UNDEFINED",
        Client = 1 => "CLIENT",
        Server = 2 => "SERVER",
        ClientAndServer = 3 => "CLIENT_AND_SERVER",
    }
}

crate::proto_enum! {
    /// `EnvValueSource`.
    pub enum EnvValueSource {
        Inline = 0 => "INLINE",
        Host = 1 => "HOST",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Environment variables of the VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Variable name.
    #[serde(default)]
    pub name: String,
    /// Value (with `valueFrom: INLINE` only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// INLINE (the default): `value`; HOST: the proxy's own variable of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvValueSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// Direction: CLIENT (outbound, gateways), SERVER (inbound) or both (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TrafficMode>,
    /// Destination ports; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSelector>,
}

/// The URL schemes Istio accepts in `url`.
pub const URL_SCHEMES: [&str; 4] = ["oci", "https", "http", "file"];

impl WasmPluginSpec {
    /// The plugin type, HTTP when unset (as upstream).
    pub fn plugin_type(&self) -> PluginType {
        match self.r#type {
            Some(PluginType::Network) => PluginType::Network,
            _ => PluginType::Http,
        }
    }

    /// The URL's scheme (`oci` when none is given, as upstream; a bare absolute path is a
    /// file) and the rest after `scheme://`.
    pub fn url_parts(&self) -> (&str, &str) {
        let url = self.url.trim();
        if url.starts_with('/') {
            return ("file", url);
        }
        match url.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("oci", url),
        }
    }
}

impl Validate for WasmPlugin {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        validate_attachment(spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs, report);
        if spec.target_refs.len() > 16 {
            report.error(&at.field("targetRefs"), "at most 16 targetRefs are allowed");
        }
        validate_url(spec, &at.field("url"), report);
        if !spec.sha256.is_empty()
            && (spec.sha256.len() != 64
                || !spec.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            report.error(&at.field("sha256"), "sha256 must be 64 lowercase hexadecimal digits");
        }
        if let Some((_, digest)) = spec.url.split_once("@sha256:")
            && !spec.sha256.is_empty()
            && digest != spec.sha256
        {
            report.error(&at.field("sha256"), "sha256 does not match the @sha256: digest of url");
        }
        if spec.image_pull_secret.len() > 253 {
            report.error(&at.field("imagePullSecret"), "imagePullSecret must be at most 253 characters");
        }
        if !spec.image_pull_secret.is_empty() {
            report.warning(
                &at.field("imagePullSecret"),
                "registry credentials are not supported by Rudder; the image is pulled anonymously",
            );
        }
        if !spec.verification_key.is_empty() {
            report.warning(&at.field("verificationKey"), "verificationKey is not implemented and is ignored");
        }
        if spec.plugin_name.len() > 256 {
            report.error(&at.field("pluginName"), "pluginName must be at most 256 characters");
        }
        if let Some(vm) = &spec.vm_config {
            validate_env(&vm.env, &at.field("vmConfig").field("env"), report);
        }
        for (i, selector) in spec.r#match.iter().enumerate() {
            let here = at.field("match").index(i);
            for (j, port) in selector.ports.iter().enumerate() {
                let number = here.field("ports").index(j).field("number");
                match port.number {
                    None | Some(0) => report.error(&number, "port number is required"),
                    Some(n) => report.check(&number, checks::port(n)),
                }
            }
        }
    }
}

fn validate_url(spec: &WasmPluginSpec, at: &FieldPath, report: &mut Report) {
    let url = spec.url.trim();
    if url.is_empty() {
        report.error(at, "url is required");
        return;
    }
    if url.chars().any(char::is_whitespace) {
        report.error(at, "url must not contain whitespace");
        return;
    }
    let (scheme, rest) = spec.url_parts();
    if !URL_SCHEMES.contains(&scheme) {
        report.error(at, format!("url scheme {scheme:?} is not supported; use one of oci, https, http, file"));
        return;
    }
    if rest.is_empty() {
        report.error(at, "url has nothing after the scheme");
    } else if scheme == "file" && !rest.starts_with('/') {
        report.error(at, "a file url must hold an absolute path (file:///path/to/plugin.wasm)");
    }
}

fn validate_env(env: &[EnvVar], at: &FieldPath, report: &mut Report) {
    if env.len() > 256 {
        report.error(at, "at most 256 environment variables are allowed");
    }
    let mut seen = BTreeSet::new();
    for (i, var) in env.iter().enumerate() {
        let here = at.index(i);
        if var.name.is_empty() {
            report.error(&here.field("name"), "name is required");
        } else if var.name.len() > 256 {
            report.error(&here.field("name"), "name must be at most 256 characters");
        } else if !seen.insert(var.name.as_str()) {
            report.error(&here.field("name"), format!("environment variable {:?} is set twice", var.name));
        }
        if var.value.len() > 2048 {
            report.error(&here.field("value"), "value must be at most 2048 characters");
        }
        if var.value_from == Some(EnvValueSource::Host) && !var.value.is_empty() {
            report.error(&here.field("value"), "value may only be set when valueFrom is INLINE");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::structural_problems;
    use kube::CustomResourceExt;

    fn problems(spec: serde_json::Value) -> Vec<String> {
        let spec: WasmPluginSpec = serde_json::from_value(spec).expect("decodes");
        let plugin = WasmPlugin::new("p", spec);
        plugin.report().items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn crd_is_structural_and_named_like_upstream() {
        let crd = WasmPlugin::crd();
        assert_eq!(structural_problems(&crd), Vec::<String>::new());
        assert_eq!(crd.spec.names.plural, "wasmplugins");
        assert_eq!(crd.spec.group, "extensions.istio.io");
    }

    #[test]
    fn a_full_plugin_decodes_and_validates() {
        let got = problems(serde_json::json!({
            "selector": {"matchLabels": {"app": "httpbin"}},
            "url": "oci://registry.example/plugins/hello:1.0",
            "sha256": "a".repeat(64),
            "imagePullPolicy": "Always",
            "pluginConfig": {"header": "x-hello", "nested": {"a": [1, 2]}},
            "pluginName": "hello",
            "phase": "AUTHZ",
            "priority": -10,
            "failStrategy": "FAIL_OPEN",
            "vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "HOME", "valueFrom": "HOST"}]},
            "match": [{"mode": "SERVER", "ports": [{"number": 8080}]}],
            "type": "HTTP",
        }));
        assert_eq!(got, Vec::<String>::new());
    }

    #[test]
    fn bad_fields_are_named() {
        let got = problems(serde_json::json!({
            "selector": {"matchLabels": {"app": "a"}},
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}],
            "url": "ftp://example/x.wasm",
            "sha256": "ABC",
            "vmConfig": {"env": [{"name": "A"}, {"name": "A"}, {"name": "H", "value": "x", "valueFrom": "HOST"}, {"value": "v"}]},
            "match": [{"ports": [{"number": 70000}, {}]}],
        }));
        assert_eq!(
            got,
            [
                "spec: only one of selector, targetRef and targetRefs may be set",
                "spec.url: url scheme \"ftp\" is not supported; use one of oci, https, http, file",
                "spec.sha256: sha256 must be 64 lowercase hexadecimal digits",
                "spec.vmConfig.env[1].name: environment variable \"A\" is set twice",
                "spec.vmConfig.env[2].value: value may only be set when valueFrom is INLINE",
                "spec.vmConfig.env[3].name: name is required",
                "spec.match[0].ports[0].number: port number 70000 must be in the range 1..65535",
                "spec.match[0].ports[1].number: port number is required",
            ]
        );
    }

    #[test]
    fn url_schemes_default_to_oci_and_paths_are_files() {
        let spec = |url: &str| WasmPluginSpec { url: url.to_owned(), ..WasmPluginSpec::default() };
        assert_eq!(spec("ghcr.io/x/y:1").url_parts(), ("oci", "ghcr.io/x/y:1"));
        assert_eq!(spec("/opt/p.wasm").url_parts(), ("file", "/opt/p.wasm"));
        assert_eq!(spec("file:///opt/p.wasm").url_parts(), ("file", "/opt/p.wasm"));
        assert_eq!(spec("https://h/p.wasm").url_parts(), ("https", "h/p.wasm"));
        assert_eq!(problems(serde_json::json!({"url": ""})), ["spec.url: url is required"]);
        assert_eq!(
            problems(serde_json::json!({"url": "file://rel/p.wasm"})),
            ["spec.url: a file url must hold an absolute path (file:///path/to/plugin.wasm)"]
        );
    }
}
