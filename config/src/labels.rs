//! Well-known labels, annotations, finalizers and field managers, spelled exactly as Istio (and
//! Kubernetes) spell them, so that no other module writes these strings by hand.

// === Injection control (namespace and pod) ===

/// Namespace label that turns default-revision injection on (`enabled`) or off (anything else).
pub const ISTIO_INJECTION: &str = "istio-injection";
/// Value of [`ISTIO_INJECTION`] that enables injection.
pub const INJECTION_ENABLED: &str = "enabled";
/// Value of [`ISTIO_INJECTION`] that disables injection (any other value disables it too).
pub const INJECTION_DISABLED: &str = "disabled";
/// Namespace or pod label naming the control-plane revision (or tag) that should inject it.
pub const REVISION: &str = "istio.io/rev";
/// The revision name of an install without a revision.
pub const DEFAULT_REVISION: &str = "default";
/// Label naming the revision tag a webhook configuration belongs to.
pub const TAG: &str = "istio.io/tag";
/// Pod label (preferred) or annotation opting a pod in (`"true"`) or out (`"false"`).
pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
/// Annotation recording what injection added (JSON of container, volume and secret names).
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Annotation listing the injection templates to apply, comma separated.
pub const INJECT_TEMPLATES: &str = "inject.istio.io/templates";
/// Label key used in selectors of deactivated webhooks.
pub const DEACTIVATED: &str = "istio.io/deactivated";
/// Value of [`DEACTIVATED`] that no object carries, so the webhook never matches.
pub const NEVER_MATCH: &str = "never-match";
/// The label Kubernetes sets on every namespace to its own name.
pub const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

// === Sidecar proxy resources and image ===

/// CPU request of the injected proxy.
pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
/// Memory request of the injected proxy.
pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
/// CPU limit of the injected proxy.
pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
/// Memory limit of the injected proxy.
pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
/// Full image reference of the injected proxy.
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
/// Image variant of the injected proxy (`default`, `debug`, `distroless`).
pub const PROXY_IMAGE_TYPE: &str = "sidecar.istio.io/proxyImageType";
/// Whether the proxy runs as a native (restartable init container) sidecar.
pub const NATIVE_SIDECAR: &str = "sidecar.istio.io/nativeSidecar";
/// Whether to add NET_BIND_SERVICE to the proxy.
pub const CAP_NET_BIND_SERVICE: &str = "sidecar.istio.io/capNetBindService";
/// Whether to add the core-dump init container.
pub const ENABLE_CORE_DUMP: &str = "sidecar.istio.io/enableCoreDump";

// === Sidecar proxy behaviour ===

/// Inbound interception mode: `REDIRECT`, `TPROXY` or `NONE`.
pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
/// Envoy log level.
pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
/// Envoy per-component log levels.
pub const COMPONENT_LOG_LEVEL: &str = "sidecar.istio.io/componentLogLevel";
/// Istio agent log levels.
pub const AGENT_LOG_LEVEL: &str = "sidecar.istio.io/agentLogLevel";
/// Extra Envoy stat name prefixes to keep (legacy; prefer ProxyConfig proxyStatsMatcher).
pub const STATS_INCLUSION_PREFIXES: &str = "sidecar.istio.io/statsInclusionPrefixes";
/// Extra Envoy stat name suffixes to keep.
pub const STATS_INCLUSION_SUFFIXES: &str = "sidecar.istio.io/statsInclusionSuffixes";
/// Extra Envoy stat name regexes to keep.
pub const STATS_INCLUSION_REGEXPS: &str = "sidecar.istio.io/statsInclusionRegexps";
/// Histogram bucket overrides for Envoy stats.
pub const STATS_HISTOGRAM_BUCKETS: &str = "sidecar.istio.io/statsHistogramBuckets";
/// Extra stat tags for the telemetry extension.
pub const EXTRA_STAT_TAGS: &str = "sidecar.istio.io/extraStatTags";
/// Whether application HTTP probes are rewritten to go through the agent.
pub const REWRITE_APP_HTTP_PROBERS: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// ConfigMap holding a custom Envoy bootstrap overlay.
pub const BOOTSTRAP_OVERRIDE: &str = "sidecar.istio.io/bootstrapOverride";
/// JSON map of extra volumes for the proxy.
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
/// JSON map of extra volume mounts for the proxy.
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// xDS address override for the proxy.
pub const DISCOVERY_ADDRESS: &str = "sidecar.istio.io/discoveryAddress";
/// Per-pod ProxyConfig overlay (YAML or JSON).
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// Proxy container fields a user set before injection (kept for re-invocation).
pub const PROXY_OVERRIDES: &str = "proxy.istio.io/overrides";

// === Traffic capture (iptables) ===

/// Outbound CIDRs to capture (`*` for all).
pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound CIDRs to leave alone.
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Inbound ports to capture (`*` for all).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports to leave alone.
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound ports to capture even when their CIDR is excluded.
pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
/// Outbound ports to leave alone.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Network interfaces to leave alone.
pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
/// KubeVirt interfaces whose traffic is redirected.
pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
/// Virtual interfaces whose traffic is redirected (successor of the KubeVirt one).
pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";

// === Health checking and metrics ===

/// Agent status port (`0` removes the proxy probes).
pub const STATUS_PORT: &str = "status.sidecar.istio.io/port";
/// Application ports the readiness check waits for.
pub const READINESS_APPLICATION_PORTS: &str = "readiness.status.sidecar.istio.io/applicationPorts";
/// Initial delay of the proxy readiness probe.
pub const READINESS_INITIAL_DELAY_SECONDS: &str = "readiness.status.sidecar.istio.io/initialDelaySeconds";
/// Period of the proxy readiness probe.
pub const READINESS_PERIOD_SECONDS: &str = "readiness.status.sidecar.istio.io/periodSeconds";
/// Failure threshold of the proxy readiness probe.
pub const READINESS_FAILURE_THRESHOLD: &str = "readiness.status.sidecar.istio.io/failureThreshold";
/// Whether the agent merges application metrics into its own (per pod).
pub const PROMETHEUS_MERGE_METRICS: &str = "prometheus.istio.io/merge-metrics";
/// Prometheus scrape toggle.
pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
/// Prometheus scrape port.
pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
/// Prometheus scrape path.
pub const PROMETHEUS_PATH: &str = "prometheus.io/path";

// === kubectl defaults ===

/// Container `kubectl exec` and friends pick by default.
pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
/// Container `kubectl logs` picks by default.
pub const DEFAULT_LOGS_CONTAINER: &str = "kubectl.kubernetes.io/default-logs-container";

// === Workload identity and topology ===

/// Marks a workload able to receive Istio mTLS; its value is [`TLS_MODE_ISTIO`].
pub const TLS_MODE: &str = "security.istio.io/tlsMode";
/// Value of [`TLS_MODE`] on injected workloads.
pub const TLS_MODE_ISTIO: &str = "istio";
/// Canonical service name of a workload.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Canonical revision of a workload.
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Workload name override.
pub const WORKLOAD_NAME: &str = "service.istio.io/workload-name";
/// Network a workload or namespace belongs to.
pub const NETWORK: &str = "topology.istio.io/network";
/// Cluster a workload belongs to.
pub const CLUSTER: &str = "topology.istio.io/cluster";
/// Sub-zone of a node or workload.
pub const SUBZONE: &str = "topology.istio.io/subzone";
/// Tunnel protocol a workload accepts (`http` for HBONE).
pub const TUNNEL: &str = "networking.istio.io/tunnel";
/// Namespaces a Service is visible to.
pub const EXPORT_TO: &str = "networking.istio.io/exportTo";
/// Ingress class annotation read by Istio's ingress controller.
pub const INGRESS_CLASS: &str = "kubernetes.io/ingress.class";

// === Ambient ===

/// Data-plane mode of a namespace or pod (`ambient`, `none`).
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
/// Waypoint that serves a namespace, service or workload.
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
/// Namespace of the waypoint named by [`USE_WAYPOINT`].
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// What traffic a waypoint handles (`service`, `workload`, `all`, `none`).
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Whether ingress gateways send traffic through the waypoint.
pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
/// Set by the CNI plugin on pods it redirected into ztunnel.
pub const AMBIENT_REDIRECTION: &str = "ambient.istio.io/redirection";

// === Installer ownership ===

/// Name of the IstioOperator that installed an object.
pub const OWNING_RESOURCE: &str = "install.operator.istio.io/owning-resource";
/// Namespace of the IstioOperator that installed an object.
pub const OWNING_RESOURCE_NAMESPACE: &str = "install.operator.istio.io/owning-resource-namespace";
/// `"true"` keeps an installed object out of pruning.
pub const OWNING_RESOURCE_NOT_PRUNED: &str = "install.operator.istio.io/owning-resource-not-pruned";
/// Installer component an object belongs to (`Base`, `Pilot`, `IngressGateways`, ...).
pub const COMPONENT: &str = "operator.istio.io/component";
/// Istio version of the installer that applied an object.
pub const OPERATOR_VERSION: &str = "operator.istio.io/version";
/// Marks objects the installer manages; its value is [`MANAGED_RECONCILE`].
pub const MANAGED: &str = "operator.istio.io/managed";
/// Value of [`MANAGED`] on installed objects.
pub const MANAGED_RECONCILE: &str = "Reconcile";
/// IstioOperator annotation: `"true"` pauses reconciliation.
pub const IGNORE_RECONCILE: &str = "install.istio.io/ignoreReconcile";
/// Finalizer the operator puts on IstioOperator objects.
pub const FINALIZER: &str = "istio-finalizer.install.istio.io";
/// Server-side apply field manager Rudder uses.
pub const FIELD_MANAGER: &str = "rudder";
/// Server-side apply field manager upstream's installer uses.
pub const ISTIO_FIELD_MANAGER: &str = "istio-operator";

// === Common application labels ===

/// Application name (Istio's canonical-name fallback).
pub const APP: &str = "app";
/// Application version (Istio's canonical-revision fallback).
pub const VERSION: &str = "version";
/// Istio component selector label on control-plane and gateway pods (`pilot`, `ingressgateway`).
pub const ISTIO: &str = "istio";
/// Helm release label the charts set.
pub const RELEASE: &str = "release";
/// Recommended application name label.
pub const APP_NAME: &str = "app.kubernetes.io/name";
/// Recommended application version label.
pub const APP_VERSION: &str = "app.kubernetes.io/version";
/// Recommended application instance label.
pub const APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// Recommended application component label.
pub const APP_COMPONENT: &str = "app.kubernetes.io/component";
/// Recommended label naming the larger application an object is part of.
pub const APP_PART_OF: &str = "app.kubernetes.io/part-of";
/// Recommended label naming the tool that manages an object.
pub const APP_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_like_istio() {
        assert_eq!(SIDECAR_INJECT, "sidecar.istio.io/inject");
        assert_eq!(INCLUDE_OUTBOUND_IP_RANGES, "traffic.sidecar.istio.io/includeOutboundIPRanges");
        assert_eq!(PROXY_CPU_LIMIT, "sidecar.istio.io/proxyCPULimit");
        assert_eq!(FINALIZER, "istio-finalizer.install.istio.io");
        for key in [
            ISTIO_INJECTION,
            REVISION,
            OWNING_RESOURCE_NOT_PRUNED,
            READINESS_FAILURE_THRESHOLD,
            DEFAULT_LOGS_CONTAINER,
            DATAPLANE_MODE,
        ] {
            assert_eq!(crate::validate::checks::label_key(key), Ok(()), "{key}");
        }
    }
}
