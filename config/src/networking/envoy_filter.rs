//! EnvoyFilter: raw Envoy patches (`networking/v1alpha3/envoy_filter.proto`).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;
use crate::common::{FreeForm, IstioStatus, PolicyTargetReference};
use crate::validate::{FieldPath, Report, Validate, checks};

const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

crate::proto_enum! {
    /// Where in the Envoy configuration a patch applies.
    pub enum ApplyTo {
        Invalid = 0 => "INVALID",
        Listener = 1 => "LISTENER",
        FilterChain = 2 => "FILTER_CHAIN",
        NetworkFilter = 3 => "NETWORK_FILTER",
        HttpFilter = 4 => "HTTP_FILTER",
        RouteConfiguration = 5 => "ROUTE_CONFIGURATION",
        VirtualHost = 6 => "VIRTUAL_HOST",
        HttpRoute = 7 => "HTTP_ROUTE",
        Cluster = 8 => "CLUSTER",
        ExtensionConfig = 9 => "EXTENSION_CONFIG",
        Bootstrap = 10 => "BOOTSTRAP",
        ListenerFilter = 11 => "LISTENER_FILTER",
    }
}

crate::proto_enum! {
    /// Traffic direction and proxy type a patch applies to.
    pub enum PatchContext {
        Any = 0 => "ANY",
        SidecarInbound = 1 => "SIDECAR_INBOUND",
        SidecarOutbound = 2 => "SIDECAR_OUTBOUND",
        Gateway = 3 => "GATEWAY",
    }
}

crate::proto_enum! {
    /// `RouteMatch.Action`: the kind of route action to match.
    pub enum RouteAction {
        Any = 0 => "ANY",
        Route = 1 => "ROUTE",
        Redirect = 2 => "REDIRECT",
        DirectResponse = 3 => "DIRECT_RESPONSE",
    }
}

crate::proto_enum! {
    /// `Patch.Operation`.
    pub enum Operation {
        Invalid = 0 => "INVALID",
        Merge = 1 => "MERGE",
        Add = 2 => "ADD",
        Remove = 3 => "REMOVE",
        InsertBefore = 4 => "INSERT_BEFORE",
        InsertAfter = 5 => "INSERT_AFTER",
        InsertFirst = 6 => "INSERT_FIRST",
        Replace = 7 => "REPLACE",
    }
}

crate::proto_enum! {
    /// `Patch.FilterClass`: where an added filter goes relative to Istio's own filters.
    pub enum FilterClass {
        Unspecified = 0 => "UNSPECIFIED",
        Authn = 1 => "AUTHN",
        Authz = 2 => "AUTHZ",
        Stats = 3 => "STATS",
    }
}

/// `EnvoyFilter` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1alpha3",
    kind = "EnvoyFilter",
    namespaced,
    status = "IstioStatus",
    category = "istio-io",
    category = "networking-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyFilterSpec {
    /// Workloads to patch; all in the namespace when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    /// Gateways or waypoints to patch (exclusive with workloadSelector).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_patches: Vec<EnvoyConfigObjectPatch>,
    /// Order among EnvoyFilters; lower applies first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

/// `EnvoyConfigObjectPatch`: one patch with its match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_to: Option<ApplyTo>,
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<EnvoyConfigObjectMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

// A protobuf oneof (listener, routeConfiguration, cluster) kept as separate fields beside the
// common ones; validation allows at most one.
/// `EnvoyConfigObjectMatch`: which generated objects a patch applies to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoyConfigObjectMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<PatchContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<ListenerMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_configuration: Option<RouteConfigurationMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterMatch>,
    /// Objects of a waypoint proxy (ambient mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<WaypointMatch>,
}

/// `WaypointMatch`: a filter, route or port of a waypoint proxy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<WaypointRouteMatch>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
}

/// `WaypointMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRouteMatch {
    /// The route's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `ProxyMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyMatch {
    /// RE2 regex on the proxy's Istio version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub proxy_version: String,
    /// Node metadata values that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `ClusterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMatch {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `RouteConfigurationMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfigurationMatch {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_name: String,
    /// Gateway as `namespace/name` (GATEWAY context only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost: Option<VirtualHostMatch>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `RouteConfigurationMatch.VirtualHostMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualHostMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteMatch>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain_name: String,
}

/// `RouteConfigurationMatch.RouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RouteAction>,
}

/// `ListenerMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerMatch {
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub port_number: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_chain: Option<FilterChainMatch>,
    /// Name of a listener filter to match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listener_filter: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `ListenerMatch.FilterChainMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterChainMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sni: String,
    /// `raw_buffer` or `tls`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transport_protocol: String,
    /// Comma-separated ALPN values, e.g. `h2,http/1.1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub application_protocols: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterMatch>,
    #[serde(default, deserialize_with = "crate::common::lenient_u32", skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u32>,
}

/// `ListenerMatch.FilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_filter: Option<SubFilterMatch>,
}

/// `ListenerMatch.SubFilterMatch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubFilterMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// `Patch`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Patch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The Envoy configuration to merge, add or insert, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<FreeForm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_class: Option<FilterClass>,
}

/// Filter names Envoy dropped in favour of canonical ones.
const DEPRECATED_FILTER_NAMES: [(&str, &str); 6] = [
    ("envoy.http_connection_manager", HTTP_CONNECTION_MANAGER),
    ("envoy.tcp_proxy", "envoy.filters.network.tcp_proxy"),
    ("envoy.router", "envoy.filters.http.router"),
    ("envoy.cors", "envoy.filters.http.cors"),
    ("envoy.fault", "envoy.filters.http.fault"),
    ("envoy.lua", "envoy.filters.http.lua"),
];

fn warn_deprecated_filter_name(report: &mut Report, at: &FieldPath, name: &str) {
    if let Some((_, canonical)) = DEPRECATED_FILTER_NAMES.iter().find(|(old, _)| *old == name) {
        report.warning(at, format!("filter name {name:?} is deprecated; use {canonical:?}"));
    }
}

fn validate_listener_match(report: &mut Report, at: &FieldPath, apply_to: ApplyTo, listener: &ListenerMatch) {
    let Some(filter) = listener.filter_chain.as_ref().and_then(|fc| fc.filter.as_ref()) else {
        return;
    };
    validate_filter_match(report, &at.field("filterChain").field("filter"), apply_to, filter);
}

/// A filter match (of a listener's filter chain, or of a waypoint).
fn validate_filter_match(report: &mut Report, filter_at: &FieldPath, apply_to: ApplyTo, filter: &FilterMatch) {
    if matches!(apply_to, ApplyTo::Listener | ApplyTo::FilterChain) {
        report.warning(filter_at, format!("a filter match has no effect with applyTo {apply_to}"));
    }
    if filter.name.is_empty() {
        report.error(&filter_at.field("name"), "a filter match needs the name of the filter");
    } else {
        warn_deprecated_filter_name(report, &filter_at.field("name"), &filter.name);
    }
    if let Some(sub) = &filter.sub_filter {
        let sub_at = filter_at.field("subFilter");
        if apply_to != ApplyTo::HttpFilter {
            report.error(&sub_at, format!("a subFilter match only applies with applyTo HTTP_FILTER, not {apply_to}"));
        }
        if !filter.name.is_empty()
            && filter.name != HTTP_CONNECTION_MANAGER
            && filter.name != "envoy.http_connection_manager"
        {
            report.error(&sub_at, format!("a subFilter match needs the filter name {HTTP_CONNECTION_MANAGER:?}"));
        }
        if sub.name.is_empty() {
            report.error(&sub_at.field("name"), "a subFilter match needs the name of the HTTP filter");
        } else {
            warn_deprecated_filter_name(report, &sub_at.field("name"), &sub.name);
        }
    }
}

fn validate_waypoint_match(report: &mut Report, at: &FieldPath, apply_to: ApplyTo, waypoint: &WaypointMatch) {
    if let Some(filter) = &waypoint.filter {
        let filter_at = at.field("filter");
        if !matches!(apply_to, ApplyTo::NetworkFilter | ApplyTo::HttpFilter) {
            report.error(
                &filter_at,
                format!("a waypoint filter match applies with applyTo NETWORK_FILTER or HTTP_FILTER, not {apply_to}"),
            );
        }
        validate_filter_match(report, &filter_at, apply_to, filter);
    }
    if waypoint.route.is_some() && apply_to != ApplyTo::HttpRoute {
        report.error(
            &at.field("route"),
            format!("a waypoint route match applies with applyTo HTTP_ROUTE, not {apply_to}"),
        );
    }
    if let Some(port) = waypoint.port_number {
        report.check(&at.field("portNumber"), checks::port(port));
    }
}

/// The operations Istio applies for each `applyTo` (other combinations are accepted by
/// Istio's validation and never do anything).
pub fn operation_applies(apply_to: ApplyTo, operation: Operation) -> bool {
    use Operation::*;
    match apply_to {
        ApplyTo::Listener | ApplyTo::FilterChain | ApplyTo::Cluster => matches!(operation, Merge | Add | Remove),
        ApplyTo::NetworkFilter | ApplyTo::HttpFilter => {
            matches!(operation, Merge | Add | Remove | InsertBefore | InsertAfter | InsertFirst | Replace)
        }
        ApplyTo::ListenerFilter => {
            matches!(operation, Add | Remove | InsertBefore | InsertAfter | InsertFirst | Replace)
        }
        ApplyTo::RouteConfiguration => operation == Merge,
        ApplyTo::VirtualHost => matches!(operation, Merge | Add | Remove | Replace),
        ApplyTo::HttpRoute => matches!(operation, Merge | Add | Remove | InsertBefore | InsertAfter | InsertFirst),
        ApplyTo::ExtensionConfig => matches!(operation, Add | Remove | Merge | Replace),
        ApplyTo::Bootstrap => operation == Merge,
        ApplyTo::Invalid => false,
    }
}

/// The value must decode as the Envoy message of `applyTo` (an unknown `@type` or a value of
/// the wrong type is an error, as in Istio); an unknown field is a warning, and is ignored
/// when the patch is applied.
fn validate_value(report: &mut Report, at: &FieldPath, apply_to: ApplyTo, value: &FreeForm) {
    let Some(type_name) = crate::envoy_proto::message_type(apply_to) else { return };
    let field_at = |field: &str| {
        field.split('.').filter(|f| !f.is_empty()).fold(at.clone(), |path, f| match f.parse::<usize>() {
            Ok(i) => path.index(i),
            Err(_) => path.field(f),
        })
    };
    match crate::envoy_proto::decode(type_name, &value.0) {
        Err(failure) => report.error(&field_at(&failure.field), format!("not a valid {type_name}: {}", failure.reason)),
        Ok(decoded) => {
            if let Some(ignored) = decoded.ignored {
                report.warning(&field_at(&ignored.field), format!("{}; ignored", ignored.reason));
            }
        }
    }
}

/// A filter added without `typed_config` (or `config_discovery`) names its extension only by
/// name, which Envoy no longer looks up: Envoy refuses it. A warning, as upstream gives.
fn warn_untyped_filter(report: &mut Report, at: &FieldPath, apply_to: ApplyTo, operation: Operation, value: &FreeForm) {
    let filter = matches!(apply_to, ApplyTo::NetworkFilter | ApplyTo::HttpFilter | ApplyTo::ListenerFilter);
    let adds = !matches!(operation, Operation::Merge | Operation::Remove | Operation::Invalid);
    let typed =
        ["typed_config", "typedConfig", "config_discovery", "configDiscovery"].iter().any(|k| value.0.contains_key(*k));
    if filter && adds && !typed {
        report.warning(
            at,
            "a filter without typed_config is looked up by name, which Envoy no longer does; add its typed_config",
        );
    }
}

fn validate_patch(report: &mut Report, at: &FieldPath, patch: &EnvoyConfigObjectPatch) {
    let apply_to = patch.apply_to.unwrap_or_default();
    if apply_to == ApplyTo::Invalid {
        report.error(&at.field("applyTo"), "applyTo is required (the kind of Envoy object to patch)");
    }
    match &patch.patch {
        None => report.error(&at.field("patch"), "patch is required"),
        Some(p) => {
            let operation = p.operation.unwrap_or_default();
            let patch_at = at.field("patch");
            if operation == Operation::Invalid {
                report.error(&patch_at.field("operation"), "operation is required");
            } else if operation == Operation::Remove {
                if p.value.is_some() {
                    report.warning(&patch_at.field("value"), "value is ignored by REMOVE");
                }
            } else if p.value.is_none() {
                report.error(&patch_at.field("value"), format!("value is required for operation {operation}"));
            }
            if let Some(value) = &p.value
                && operation != Operation::Remove
                && apply_to != ApplyTo::Invalid
            {
                validate_value(report, &patch_at.field("value"), apply_to, value);
                warn_untyped_filter(report, &patch_at.field("value"), apply_to, operation, value);
            }
            if apply_to != ApplyTo::Invalid
                && operation != Operation::Invalid
                && !operation_applies(apply_to, operation)
            {
                report.warning(
                    &patch_at.field("operation"),
                    format!("operation {operation} does not apply to applyTo {apply_to}; the patch does nothing"),
                );
            }
            if p.filter_class.is_some_and(|c| c != FilterClass::Unspecified)
                && !(operation == Operation::Add && matches!(apply_to, ApplyTo::HttpFilter | ApplyTo::NetworkFilter))
            {
                report.warning(
                    &patch_at.field("filterClass"),
                    format!(
                        "filterClass only places filters an ADD of HTTP_FILTER or NETWORK_FILTER adds; ignored with operation {operation} and applyTo {apply_to}"
                    ),
                );
            }
            if apply_to == ApplyTo::Bootstrap {
                report.warning(
                    &at.field("applyTo"),
                    format!("Rudder does not apply {apply_to} patches (see docs/envoy-filter.md)"),
                );
            }
            // Extension configs are served over ECDS as added; nothing patches them afterwards
            // (Istio accepts these operations and likewise does nothing with them).
            if apply_to == ApplyTo::ExtensionConfig && !matches!(operation, Operation::Add | Operation::Invalid) {
                report.warning(
                    &patch_at.field("operation"),
                    format!(
                        "operation {operation} of EXTENSION_CONFIG does nothing; only ADD serves an extension config"
                    ),
                );
            }
        }
    }
    let Some(m) = &patch.match_ else {
        return;
    };
    let match_at = at.field("match");
    if let Some(proxy) = &m.proxy
        && !proxy.proxy_version.is_empty()
    {
        report.check(&match_at.field("proxy").field("proxyVersion"), checks::regex(&proxy.proxy_version));
    }
    let objects = [m.listener.is_some(), m.route_configuration.is_some(), m.cluster.is_some(), m.waypoint.is_some()]
        .into_iter()
        .filter(|set| *set)
        .count();
    if objects > 1 {
        report.error(&match_at, "only one of listener, routeConfiguration, cluster or waypoint may be set");
        return;
    }
    if objects == 0 {
        return;
    }
    if let Some(waypoint) = &m.waypoint {
        validate_waypoint_match(report, &match_at.field("waypoint"), apply_to, waypoint);
        return;
    }
    match apply_to {
        ApplyTo::Listener
        | ApplyTo::FilterChain
        | ApplyTo::NetworkFilter
        | ApplyTo::HttpFilter
        | ApplyTo::ListenerFilter => match &m.listener {
            Some(listener) => {
                validate_listener_match(report, &match_at.field("listener"), apply_to, listener);
            }
            None => report.error(
                &match_at,
                format!("applyTo {apply_to} needs a listener match, not a route configuration or cluster match"),
            ),
        },
        ApplyTo::RouteConfiguration | ApplyTo::VirtualHost | ApplyTo::HttpRoute => {
            if m.route_configuration.is_none() {
                report.error(
                    &match_at,
                    format!("applyTo {apply_to} needs a routeConfiguration match, not a listener or cluster match"),
                );
            }
        }
        ApplyTo::Cluster => {
            if m.cluster.is_none() {
                report.error(
                    &match_at,
                    "applyTo CLUSTER needs a cluster match, not a listener or route configuration match",
                );
            }
        }
        ApplyTo::Invalid | ApplyTo::ExtensionConfig | ApplyTo::Bootstrap => {}
    }
}

impl Validate for EnvoyFilter {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        report.warning(
            &at,
            "EnvoyFilter patches Envoy's generated configuration, which may change in any release; prefer other APIs where possible",
        );
        if let Some(selector) = &spec.workload_selector {
            let sel_at = at.field("workloadSelector");
            checks::selector_labels(&selector.labels, report, &sel_at.field("labels"));
            if !spec.target_refs.is_empty() {
                report.error(&sel_at, "only one of workloadSelector or targetRefs may be set");
            }
        }
        for (i, target) in spec.target_refs.iter().enumerate() {
            checks::target_ref(target, report, &at.field("targetRefs").index(i));
        }
        let patches_at = at.field("configPatches");
        if spec.config_patches.is_empty() {
            report.error(&patches_at, "at least one config patch is required");
        }
        for (i, patch) in spec.config_patches.iter().enumerate() {
            validate_patch(report, &patches_at.index(i), patch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(patch_yaml: &str) -> Vec<String> {
        let yaml = format!("configPatches:\n- {}", patch_yaml.replace('\n', "\n  "));
        let spec: EnvoyFilterSpec = serde_saphyr::from_str(&yaml).expect("spec decodes");
        EnvoyFilter::new("ef", spec).report().errors().map(ToString::to_string).collect()
    }

    #[test]
    fn filter_class_warns_where_it_places_nothing() {
        let warnings = |patch_yaml: &str| -> Vec<String> {
            let yaml = format!("configPatches:\n- {}", patch_yaml.replace('\n', "\n  "));
            let spec: EnvoyFilterSpec = serde_saphyr::from_str(&yaml).expect("spec decodes");
            let report = EnvoyFilter::new("ef", spec).report();
            assert_eq!(report.errors().count(), 0, "{patch_yaml}");
            report.warnings().map(ToString::to_string).filter(|w| w.contains("filterClass")).collect()
        };
        let value =
            "{name: x, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors}}";
        let cases = [
            (format!("applyTo: HTTP_FILTER\npatch: {{operation: ADD, filterClass: AUTHZ, value: {value}}}"), None),
            (format!("applyTo: HTTP_FILTER\npatch: {{operation: ADD, filterClass: UNSPECIFIED, value: {value}}}"), None),
            (
                "applyTo: NETWORK_FILTER\npatch: {operation: ADD, filterClass: STATS, value: {name: limit, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: limit}}}".to_owned(),
                None,
            ),
            (
                format!("applyTo: HTTP_FILTER\npatch: {{operation: INSERT_FIRST, filterClass: AUTHN, value: {value}}}"),
                Some("operation INSERT_FIRST and applyTo HTTP_FILTER"),
            ),
            (
                "applyTo: CLUSTER\npatch: {operation: ADD, filterClass: STATS, value: {name: c}}".to_owned(),
                Some("operation ADD and applyTo CLUSTER"),
            ),
        ];
        for (yaml, want) in cases {
            let got = warnings(&yaml);
            match want {
                None => assert!(got.is_empty(), "{yaml}: {got:?}"),
                Some(tail) => assert_eq!(
                    got,
                    [format!(
                        "warning: spec.configPatches[0].patch.filterClass: filterClass only places filters an ADD of HTTP_FILTER or NETWORK_FILTER adds; ignored with {tail}"
                    )],
                    "{yaml}"
                ),
            }
        }
    }

    #[test]
    fn apply_to_must_fit_the_match() {
        let p = "spec.configPatches[0]";
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "applyTo: HTTP_FILTER\nmatch: {listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager, subFilter: {name: envoy.filters.http.router}}}}}\npatch: {operation: INSERT_BEFORE, value: {name: x}}",
                vec![],
            ),
            ("applyTo: CLUSTER\nmatch: {cluster: {service: a.example.com}}\npatch: {operation: REMOVE}", vec![]),
            ("applyTo: BOOTSTRAP\npatch: {operation: MERGE, value: {}}", vec![]),
            (
                "applyTo: HTTP_ROUTE\nmatch: {cluster: {}}\npatch: {operation: MERGE, value: {a: 1}}",
                vec![format!(
                    "{p}.match: applyTo HTTP_ROUTE needs a routeConfiguration match, not a listener or cluster match"
                )],
            ),
            (
                "applyTo: NETWORK_FILTER\nmatch: {listener: {filterChain: {filter: {name: envoy.filters.network.tcp_proxy, subFilter: {}}}}}\npatch: {operation: MERGE, value: {a: 1}}",
                vec![
                    format!(
                        "{p}.match.listener.filterChain.filter.subFilter: a subFilter match only applies with applyTo HTTP_FILTER, not NETWORK_FILTER"
                    ),
                    format!(
                        "{p}.match.listener.filterChain.filter.subFilter: a subFilter match needs the filter name \"envoy.filters.network.http_connection_manager\""
                    ),
                    format!(
                        "{p}.match.listener.filterChain.filter.subFilter.name: a subFilter match needs the name of the HTTP filter"
                    ),
                ],
            ),
            (
                "applyTo: CLUSTER\nmatch: {cluster: {}, listener: {}}\npatch: {operation: ADD}",
                vec![
                    format!("{p}.patch.value: value is required for operation ADD"),
                    format!("{p}.match: only one of listener, routeConfiguration, cluster or waypoint may be set"),
                ],
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(errors_of(yaml), want, "{yaml}");
        }
    }
}
