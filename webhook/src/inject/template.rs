//! The built-in templates, written as Rust (not text): `sidecar` (spec §2.5: the `istio-init`
//! redirection init container, the `istio-proxy` container, volumes, labels and annotations)
//! and `gateway` (the proxy as a router, no redirection). Each produces a pod *fragment*
//! (`{metadata: {labels, annotations}, spec: {initContainers, containers, volumes,
//! imagePullSecrets}}`) that is merged onto the pod.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rudder_config::labels;
use rudder_config::mesh::{InterceptionMode, ProxyConfig};
use serde_json::{Value, json};

use super::InjectionContext;
use super::params::{ENVOY_PROM_PORT, PROXY_UID, Params, READINESS_PORT, value, value_str};
use super::workload::{WorkloadMeta, canonical_name, canonical_revision};

/// Name of the proxy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Name of the redirection init container.
pub const INIT_CONTAINER: &str = "istio-init";
/// Name of the init container that only checks redirection set up by the CNI plugin.
pub const VALIDATION_CONTAINER: &str = "istio-validation";

/// What a template reads besides the parameters.
#[derive(Debug)]
pub struct Input<'a> {
    pub ctx: &'a InjectionContext,
    pub params: &'a Params,
    /// The pod as it will be before the template is merged (user proxy container removed).
    pub pod: &'a Value,
    pub namespace: &'a str,
    pub workload: &'a WorkloadMeta,
}

impl Input<'_> {
    fn revision(&self) -> &str {
        self.ctx.revision.as_deref().unwrap_or(labels::DEFAULT_REVISION)
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.pod.pointer("/metadata/labels").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
    }

    fn app_containers(&self) -> Vec<&Value> {
        let list = self.pod.pointer("/spec/containers").and_then(Value::as_array);
        list.into_iter().flatten().filter(|c| c.get("name").and_then(Value::as_str) != Some(PROXY_CONTAINER)).collect()
    }
}

/// The `sidecar` template.
pub fn sidecar(input: &Input) -> Value {
    let p = input.params;
    let mut init = Vec::new();
    if p.mode != InterceptionMode::None {
        init.push(init_container(input));
    }
    let proxy = proxy_container(input, "sidecar");
    let mut containers = Vec::new();
    if p.native {
        init.push(proxy);
    } else {
        containers.push(proxy);
    }
    let mut fragment = obj([
        ("metadata", obj([("labels", pod_labels(input, true)), ("annotations", pod_annotations(input))])),
        ("spec", obj([("volumes", Value::Array(volumes(input)))])),
    ]);
    if !init.is_empty() {
        fragment["spec"]["initContainers"] = Value::Array(init);
    }
    if !containers.is_empty() {
        fragment["spec"]["containers"] = Value::Array(containers);
    }
    add_pull_secrets(input, &mut fragment);
    fragment
}

/// The `gateway` template: the proxy runs as a router in a container the user declared (usually
/// with `image: auto`); no traffic redirection.
pub fn gateway(input: &Input) -> Value {
    let mut fragment = obj([
        ("metadata", obj([("labels", pod_labels(input, false)), ("annotations", pod_annotations(input))])),
        (
            "spec",
            obj([
                ("containers", Value::Array(vec![proxy_container(input, "router")])),
                ("volumes", Value::Array(volumes(input))),
            ]),
        ),
    ]);
    add_pull_secrets(input, &mut fragment);
    fragment
}

/// An object from key/value pairs, moving the values in (`json!` would copy each non-literal
/// value by serialising it).
fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn add_pull_secrets(input: &Input, fragment: &mut Value) {
    let secrets = value(&input.ctx.values, &["global", "imagePullSecrets"]).and_then(Value::as_array);
    let names: Vec<Value> =
        secrets.into_iter().flatten().filter_map(|s| s.as_str()).map(|s| json!({"name": s})).collect();
    if !names.is_empty() {
        fragment["spec"]["imagePullSecrets"] = Value::Array(names);
    }
}

fn pod_labels(input: &Input, tls_mode: bool) -> Value {
    let existing = input.pod_labels();
    let mut out = serde_json::Map::new();
    if tls_mode {
        let mode = existing.get(labels::TLS_MODE).cloned().unwrap_or_else(|| labels::TLS_MODE_ISTIO.into());
        out.insert(labels::TLS_MODE.into(), mode.into());
    }
    out.insert(labels::CANONICAL_NAME.into(), canonical_name(&existing, input.workload).into());
    out.insert(labels::CANONICAL_REVISION.into(), canonical_revision(&existing).into());
    if let Some(network) = network(input) {
        out.insert(labels::NETWORK.into(), network.into());
    }
    Value::Object(out)
}

fn network(input: &Input) -> Option<String> {
    input.ctx.network.clone().or_else(|| value_str(&input.ctx.values, &["global", "network"]))
}

fn pod_annotations(input: &Input) -> Value {
    let mut out = json!({ labels::REVISION: input.revision() });
    let p = input.params;
    if p.cni {
        let t = &p.traffic;
        for (key, v) in [
            (labels::INTERCEPTION_MODE, p.mode.as_str()),
            (labels::INCLUDE_OUTBOUND_IP_RANGES, &t.include_ip_ranges),
            (labels::EXCLUDE_OUTBOUND_IP_RANGES, &t.exclude_ip_ranges),
            (labels::INCLUDE_INBOUND_PORTS, &t.include_inbound_ports),
            (labels::EXCLUDE_INBOUND_PORTS, &excluded_inbound(p)),
            (labels::INCLUDE_OUTBOUND_PORTS, &t.include_outbound_ports),
            (labels::EXCLUDE_OUTBOUND_PORTS, &t.exclude_outbound_ports),
        ] {
            out[key] = v.into();
        }
    }
    out
}

/// The `-d` list: the proxy's own ports, then the excluded ports, then the status port.
fn excluded_inbound(p: &Params) -> String {
    let mut ports = vec![ENVOY_PROM_PORT.to_string(), READINESS_PORT.to_string()];
    let status = (p.status_port != 0).then(|| p.status_port.to_string());
    let extra = p.traffic.exclude_inbound_ports.split(',').map(str::trim).filter(|s| !s.is_empty());
    for port in extra.map(str::to_owned).chain(status) {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports.join(",")
}

fn init_args(input: &Input) -> Vec<String> {
    let p = input.params;
    let mesh = &input.ctx.mesh;
    let t = &p.traffic;
    let mut args: Vec<String> = vec!["proxy".into(), "init".into()];
    let mut flag = |name: &str, v: String| {
        args.push(name.to_owned());
        args.push(v);
    };
    flag("-p", mesh.proxy_listen_port.unwrap_or(15001).to_string());
    flag("-z", mesh.proxy_inbound_listen_port.unwrap_or(15006).to_string());
    flag("-u", PROXY_UID.to_string());
    flag("-m", p.mode.as_str().to_owned());
    flag("-i", t.include_ip_ranges.clone());
    flag("-x", t.exclude_ip_ranges.clone());
    flag("-b", t.include_inbound_ports.clone());
    flag("-d", excluded_inbound(p));
    for (name, v) in [
        ("-q", &t.include_outbound_ports),
        ("-o", &t.exclude_outbound_ports),
        ("-k", &t.reroute_interfaces),
        ("-c", &t.exclude_interfaces),
    ] {
        if !v.is_empty() {
            flag(name, v.clone());
        }
    }
    if p.cni {
        args.push("--run-validation".into());
        args.push("--skip-rule-apply".into());
    }
    args.push(format!("--log_output_level={}", p.agent_log_level));
    args
}

fn init_container(input: &Input) -> Value {
    let p = input.params;
    let (name, security) = if p.cni {
        (VALIDATION_CONTAINER, non_root_security(p, false))
    } else {
        let security = json!({
            "allowPrivilegeEscalation": p.privileged,
            "privileged": p.privileged,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        });
        (INIT_CONTAINER, security)
    };
    let args = init_args(input).into_iter().map(Value::String).collect();
    let mut c = obj([
        ("name", name.into()),
        ("image", p.image.clone().into()),
        ("args", Value::Array(args)),
        ("resources", p.resources.clone()),
        ("securityContext", security),
    ]);
    // proxyMetadata reaches the init container too (as Istio's template does): it carries the
    // capture switches the rules depend on, e.g. ISTIO_META_DNS_CAPTURE.
    if !p.cni && !p.proxy_config.proxy_metadata.is_empty() {
        let env = p.proxy_config.proxy_metadata.iter().map(|(name, v)| plain_env(name, v.clone())).collect();
        c["env"] = Value::Array(env);
    }
    add_pull_policy(input, &mut c);
    c
}

fn add_pull_policy(input: &Input, container: &mut Value) {
    if let Some(policy) = value_str(&input.ctx.values, &["global", "imagePullPolicy"]) {
        container["imagePullPolicy"] = policy.into();
    }
}

/// The proxy's security context: non-root 1337, unless TPROXY or NET_BIND_SERVICE need root.
fn non_root_security(p: &Params, proxy: bool) -> Value {
    let mut add = Vec::new();
    if proxy && p.mode == InterceptionMode::Tproxy {
        add.push("NET_ADMIN");
    }
    if proxy && p.cap_net_bind_service {
        add.push("NET_BIND_SERVICE");
    }
    let root = !add.is_empty();
    let mut caps = json!({"drop": ["ALL"]});
    if root {
        caps["add"] = json!(add);
    }
    obj([
        ("allowPrivilegeEscalation", p.privileged.into()),
        ("privileged", p.privileged.into()),
        ("capabilities", caps),
        ("readOnlyRootFilesystem", true.into()),
        ("runAsGroup", PROXY_UID.into()),
        ("runAsNonRoot", (!root).into()),
        ("runAsUser", (if root { 0 } else { PROXY_UID }).into()),
    ])
}

fn proxy_container(input: &Input, role: &str) -> Value {
    let p = input.params;
    let args = vec![
        "proxy".to_owned(),
        role.to_owned(),
        "--domain".to_owned(),
        format!("$(POD_NAMESPACE).svc.{}", cluster_domain(input)),
        format!("--proxyLogLevel={}", p.log_level),
        format!("--proxyComponentLogLevel={}", p.component_log_level),
        format!("--log_output_level={}", p.agent_log_level),
    ];
    let mut c = obj([
        ("name", PROXY_CONTAINER.into()),
        ("image", p.image.clone().into()),
        ("args", Value::Array(args.into_iter().map(Value::String).collect())),
        ("ports", json!([{"containerPort": ENVOY_PROM_PORT, "name": "http-envoy-prom", "protocol": "TCP"}])),
        ("env", Value::Array(env(input))),
        ("resources", p.resources.clone()),
        ("securityContext", non_root_security(p, role == "sidecar")),
        ("volumeMounts", Value::Array(volume_mounts(input))),
    ]);
    add_pull_policy(input, &mut c);
    if p.status_port != 0 {
        c["readinessProbe"] = probe(p.readiness.initial_delay, p.readiness.period, 3, p.readiness.failure_threshold);
        c["startupProbe"] = probe(0, 1, 3, 600);
    }
    if let Some(lifecycle) = lifecycle(input) {
        c["lifecycle"] = lifecycle;
    }
    if p.native && role == "sidecar" {
        c["restartPolicy"] = "Always".into();
    }
    c
}

fn cluster_domain(input: &Input) -> String {
    value_str(&input.ctx.values, &["global", "proxy", "clusterDomain"]).unwrap_or_else(|| "cluster.local".into())
}

fn probe(delay: u32, period: u32, timeout: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": "/healthz/ready", "port": READINESS_PORT},
        "initialDelaySeconds": delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    })
}

fn lifecycle(input: &Input) -> Option<Value> {
    let p = input.params;
    if let Some(custom) = value(&input.ctx.values, &["global", "proxy", "lifecycle"]).filter(|l| !l.is_null()) {
        return Some(custom.clone());
    }
    if p.hold && !p.native {
        return Some(json!({"postStart": {"exec": {"command": ["rudder", "proxy", "wait"]}}}));
    }
    p.native.then(|| {
        let debug = format!("--debug-port={}", p.status_port);
        json!({"preStop": {"exec": {"command": ["rudder", "proxy", "request", debug, "POST", "drain"]}}})
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn resource_env(name: &str, resource: &str, divisor: Option<&str>) -> Value {
    let mut field = json!({"resource": resource});
    if let Some(divisor) = divisor {
        field["divisor"] = divisor.into();
    }
    obj([("name", name.into()), ("valueFrom", obj([("resourceFieldRef", field)]))])
}

fn plain_env(name: &str, value: impl Into<String>) -> Value {
    obj([("name", name.into()), ("value", Value::String(value.into()))])
}

fn env(input: &Input) -> Vec<Value> {
    let ctx = input.ctx;
    let p = input.params;
    let revision = input.revision();
    let istio_ns = value_str(&ctx.values, &["global", "istioNamespace"]).unwrap_or_else(|| "istio-system".into());
    let istiod = if revision == labels::DEFAULT_REVISION { "istiod".to_owned() } else { format!("istiod-{revision}") };
    let ca_addr =
        value_str(&ctx.values, &["global", "caAddress"]).unwrap_or_else(|| format!("{istiod}.{istio_ns}.svc:15012"));
    let apps = input.app_containers();
    let names: Vec<&str> = apps.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect();
    let ports: Vec<&Value> = apps.iter().filter_map(|c| c.get("ports").and_then(Value::as_array)).flatten().collect();
    let trust_domain = ctx.mesh.trust_domain.clone().unwrap_or_else(|| "cluster.local".into());
    let mut env = vec![
        plain_env("PILOT_CERT_PROVIDER", "istiod"),
        plain_env("CA_ADDR", ca_addr),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("HOST_IP", "status.hostIP"),
        resource_env("ISTIO_CPU_LIMIT", "limits.cpu", Some("1")),
        plain_env("PROXY_CONFIG", proxy_config_json(&p.proxy_config)),
        plain_env("ISTIO_META_POD_PORTS", serde_json::to_string(&ports).unwrap_or_default()),
        plain_env("ISTIO_META_APP_CONTAINERS", names.join(",")),
        resource_env("GOMEMLIMIT", "limits.memory", None),
    ];
    if let Some(policy) = ctx.mesh.compliance_policy.as_deref().filter(|c| !c.is_empty()) {
        env.push(plain_env("COMPLIANCE_POLICY", policy));
    }
    let cluster = ctx
        .cluster_id
        .clone()
        .or_else(|| value_str(&ctx.values, &["global", "multiCluster", "clusterName"]))
        .unwrap_or_else(|| "Kubernetes".into());
    env.push(plain_env("ISTIO_META_CLUSTER_ID", cluster));
    env.push(field_env("ISTIO_META_NODE_NAME", "spec.nodeName"));
    env.push(plain_env("ISTIO_META_INTERCEPTION_MODE", p.mode.as_str()));
    if let Some(network) = network(input) {
        env.push(plain_env("ISTIO_META_NETWORK", network));
    }
    let workload_name =
        input.pod_labels().get(labels::WORKLOAD_NAME).cloned().unwrap_or_else(|| input.workload.name.clone());
    env.push(plain_env("ISTIO_META_WORKLOAD_NAME", workload_name));
    env.push(plain_env("ISTIO_META_OWNER", input.workload.owner_uri(input.namespace)));
    let mesh_id = value_str(&ctx.values, &["global", "meshID"]).unwrap_or_else(|| trust_domain.clone());
    env.push(plain_env("ISTIO_META_MESH_ID", mesh_id));
    env.push(plain_env("TRUST_DOMAIN", trust_domain));
    for (name, v) in &p.proxy_config.proxy_metadata {
        env.push(plain_env(name, v.clone()));
    }
    env
}

/// The effective ProxyConfig as compact JSON, without the fields equal to the built-in defaults
/// (`{}` when nothing differs).
fn proxy_config_json(config: &ProxyConfig) -> String {
    static DEFAULTS: OnceLock<(ProxyConfig, Value)> = OnceLock::new();
    let (default_config, defaults) = DEFAULTS.get_or_init(|| {
        let config = ProxyConfig::istio_defaults();
        let json = serde_json::to_value(&config).unwrap_or_default();
        (config, json)
    });
    if config == default_config {
        return "{}".to_owned();
    }
    let mut own = match serde_json::to_value(config) {
        Ok(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    own.retain(|k, v| defaults.get(k) != Some(v));
    Value::Object(own).to_string()
}

fn volume_mounts(input: &Input) -> Vec<Value> {
    let mut mounts: Vec<Value> = [
        ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
        ("credential-socket", "/var/run/secrets/credential-uds"),
        ("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
        ("istiod-ca-cert", "/var/run/secrets/istio"),
        ("istio-ca-crl", "/var/run/secrets/istio/crl"),
        ("istio-data", "/var/lib/istio/data"),
        ("istio-envoy", "/etc/istio/proxy"),
        ("istio-token", "/var/run/secrets/tokens"),
        ("istio-podinfo", "/etc/istio/pod"),
    ]
    .iter()
    .map(|(name, path)| json!({"name": name, "mountPath": path}))
    .collect();
    for (name, mount) in &input.params.user_volume_mounts {
        let mut m = mount.clone();
        if let Value::Object(map) = &mut m {
            map.insert("name".into(), name.clone().into());
        }
        mounts.push(m);
    }
    mounts
}

fn volumes(input: &Input) -> Vec<Value> {
    let mut volumes = vec![
        json!({"name": "workload-socket", "emptyDir": {}}),
        json!({"name": "credential-socket", "emptyDir": {}}),
        json!({"name": "workload-certs", "emptyDir": {}}),
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
        json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}),
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}),
        // Optional until discovery runs the mesh CA and publishes its root in every namespace:
        // a required mount of a ConfigMap nobody writes would keep every injected pod pending.
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
        json!({"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": true}}),
    ];
    for (name, volume) in &input.params.user_volumes {
        let mut v = volume.clone();
        if let Value::Object(map) = &mut v {
            map.insert("name".into(), name.clone().into());
        }
        volumes.push(v);
    }
    volumes
}
