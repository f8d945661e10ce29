//! AuthorizationPolicy → Envoy RBAC, for the workloads a policy applies to (its selector in its
//! namespace, every workload of its namespace without one, the whole mesh from the root
//! namespace).
//!
//! As Istio evaluates them: DENY policies first (a match is a 403), then ALLOW policies (when
//! any applies to the workload, a request must match one of their rules; otherwise it is
//! allowed); AUDIT marks matches for logging only. A rule is `from` (any source; within a
//! source every field) and `to` (any operation; within one every field) and `when` (every
//! condition). Empty-rules semantics: an ALLOW policy without rules allows nothing (deny all);
//! a rule `{}` matches everything (`rules: [{}]` allows or denies all); a DENY policy without
//! rules denies nothing. CUSTOM needs an external authorizer Rudder does not run: its policies
//! are left out with a warning.
//!
//! HTTP chains get the HTTP RBAC filters (before the router, after JWT authentication); TCP
//! chains the network RBAC filters. On TCP, HTTP-only fields (methods, paths, hosts, request
//! principals, `request.*` conditions) cannot be checked, so, as in Istio, an ALLOW rule using
//! them never matches and a DENY rule is checked without them (it denies more, never less).
//!
//! A DENY or ALLOW policy annotated `istio.io/dry-run: "true"` is evaluated but not enforced,
//! as in Istio: its rules are the filter's shadow rules, whose outcome Envoy counts
//! (`rbac.istio_dry_run_deny_.shadow_denied`, `…allow_.shadow_allowed`) and records in the
//! request's dynamic metadata (`envoy.filters.http.rbac`, `istio_dry_run_<action>_shadow_*`),
//! where Istio's tracing tags read it. ALLOW policies in dry run only make no workload
//! deny-by-default.
//!
//! Envoy's policy maps are protobuf maps (Rust `HashMap`s): encoded here with sorted names so
//! equal config gives equal bytes and no needless pushes.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, SourcedMetadata, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher, list_matcher,
    metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use rudder_config::security::{AuthorizationAction, AuthorizationPolicy, Condition, Operation, Rule, Source};

use crate::model::{Proxy, Snapshot, labels_match};

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const NETWORK_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// Where the JWT filter leaves a verified token's payload (see [`super::authn`]).
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
pub const JWT_PAYLOAD: &str = "payload";

/// The annotation that puts an AuthorizationPolicy in dry run.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// The shadow rules' stat prefixes, which also prefix their dynamic metadata keys (Istio's).
pub const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";
pub const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";

/// The policies of each action that apply to a workload; `dry_*` are in dry run.
#[derive(Debug, Default)]
struct Applicable<'a> {
    deny: Vec<&'a AuthorizationPolicy>,
    allow: Vec<&'a AuthorizationPolicy>,
    audit: Vec<&'a AuthorizationPolicy>,
    dry_deny: Vec<&'a AuthorizationPolicy>,
    dry_allow: Vec<&'a AuthorizationPolicy>,
}

/// Whether a policy is in dry run: the annotation holds a true boolean, as Go's
/// `strconv.ParseBool` reads it (`1`, `t`, `true`, any case of `true`/`t`).
pub fn dry_run(policy: &AuthorizationPolicy) -> bool {
    policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
}

/// Whether a policy of `namespace` with `selector` applies to `proxy`: the selector's workloads
/// of its namespace, or without one every workload of its namespace (of the mesh, from the
/// root namespace).
pub(crate) fn selects(
    snapshot: &Snapshot,
    namespace: &str,
    selector: Option<&rudder_config::common::WorkloadSelector>,
    proxy: &Proxy,
) -> bool {
    let root = snapshot.root_namespace();
    match selector.filter(|s| !s.match_labels.is_empty()) {
        Some(selector) => namespace == proxy.namespace && labels_match(&selector.match_labels, &proxy.labels),
        None => namespace == proxy.namespace || namespace == root,
    }
}

fn applicable<'a>(snapshot: &'a Snapshot, proxy: &Proxy) -> Applicable<'a> {
    let mut out = Applicable::default();
    for policy in snapshot.authorization_policies.iter().map(AsRef::as_ref) {
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let spec = &policy.spec;
        let attached = match (&spec.target_ref, spec.target_refs.is_empty()) {
            (None, true) => selects(snapshot, namespace, spec.selector.as_ref(), proxy),
            (target, _) => super::context::targets_proxy(namespace, target.iter().chain(&spec.target_refs), proxy),
        };
        if !attached {
            continue;
        }
        match spec.action.unwrap_or_default() {
            AuthorizationAction::Allow if dry_run(policy) => out.dry_allow.push(policy),
            AuthorizationAction::Deny if dry_run(policy) => out.dry_deny.push(policy),
            AuthorizationAction::Allow => out.allow.push(policy),
            AuthorizationAction::Deny => out.deny.push(policy),
            AuthorizationAction::Audit => out.audit.push(policy),
            AuthorizationAction::Custom => tracing::warn!(
                proxy = %proxy,
                policy = %policy_name(policy),
                "CUSTOM authorization needs an external authorizer, which Rudder does not run; policy left out"
            ),
        }
    }
    out
}

fn policy_name(policy: &AuthorizationPolicy) -> String {
    format!(
        "ns[{}]-policy[{}]",
        policy.metadata.namespace.as_deref().unwrap_or_default(),
        policy.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether HTTP fields can be checked (HTTP chains) or not (TCP chains).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Http,
    Tcp,
}

/// The Envoy policies of one action: each Istio rule becomes one, `None` when a rule cannot be
/// checked on this layer and must not match.
fn envoy_policies(
    policies: &[&AuthorizationPolicy],
    layer: Layer,
    deny: bool,
    trust_domain: &str,
) -> BTreeMap<String, Policy> {
    let mut out = BTreeMap::new();
    for policy in policies {
        for (i, rule) in policy.spec.rules.iter().enumerate() {
            if let Some(translated) = rule_policy(rule, layer, deny, trust_domain) {
                out.insert(format!("{}-rule[{i}]", policy_name(policy)), translated);
            }
        }
    }
    out
}

/// The HTTP filters that authenticate and authorize requests to `proxy`'s workload: the JWT
/// filter (RequestAuthentication), then the RBAC filters: DENY, ALLOW, AUDIT.
pub fn http_filters(snapshot: &Snapshot, proxy: &Proxy) -> Vec<HttpFilter> {
    let jwt = super::authn::http_filter(snapshot, proxy);
    jwt.into_iter()
        .chain(filters(snapshot, proxy, Layer::Http).into_iter().map(|(_, config)| HttpFilter {
            name: HTTP_RBAC.to_owned(),
            config_type: Some(HttpFilterConfig::TypedConfig(Any {
                type_url: HTTP_RBAC_TYPE.to_owned(),
                value: config,
            })),
            ..Default::default()
        }))
        .collect()
}

/// The network RBAC filters for `proxy`'s inbound TCP chains (before tcp_proxy).
pub fn network_filters(snapshot: &Snapshot, proxy: &Proxy) -> Vec<Filter> {
    filters(snapshot, proxy, Layer::Tcp)
        .into_iter()
        .map(|(action, mut config)| {
            // stat_prefix (3) is required by the network filter (its shadow prefix is field 5).
            encode_key(3, WireType::LengthDelimited, &mut config);
            let prefix = format!("tcp.{action}.");
            encode_varint(prefix.len() as u64, &mut config);
            config.extend_from_slice(prefix.as_bytes());
            Filter {
                name: NETWORK_RBAC.to_owned(),
                config_type: Some(FilterConfig::TypedConfig(Any {
                    type_url: NETWORK_RBAC_TYPE.to_owned(),
                    value: config,
                })),
            }
        })
        .collect()
}

/// `(action name, encoded filter config with only `rules` set)` for each needed filter.
fn filters(snapshot: &Snapshot, proxy: &Proxy, layer: Layer) -> Vec<(&'static str, Vec<u8>)> {
    let found = applicable(snapshot, proxy);
    let trust_domain = snapshot.mesh.effective_trust_domain();
    let mut out = Vec::new();
    // Enforced rules only when an enforced policy applies: with no policy at all (every rule
    // unusable, or no rules) an ALLOW filter allows nothing.
    let translated = |policies: &[&AuthorizationPolicy], deny: bool| {
        (!policies.is_empty()).then(|| envoy_policies(policies, layer, deny, trust_domain))
    };
    for (name, action, deny, policies, dry, prefix) in [
        ("deny", rbac::Action::Deny, true, &found.deny, &found.dry_deny, DRY_RUN_DENY_PREFIX),
        ("allow", rbac::Action::Allow, false, &found.allow, &found.dry_allow, DRY_RUN_ALLOW_PREFIX),
    ] {
        let rules = translated(policies, deny);
        let shadow = translated(dry, deny).map(|policies| (policies, prefix));
        if rules.is_some() || shadow.is_some() {
            out.push((name, filter_config(action, rules.as_ref(), shadow.as_ref().map(|(p, s)| (p, *s)), layer)));
        }
    }
    if !found.audit.is_empty() && layer == Layer::Http {
        let policies = envoy_policies(&found.audit, layer, false, trust_domain);
        out.push(("audit", filter_config(rbac::Action::Log, Some(&policies), None, layer)));
    }
    out
}

/// The RBAC filter config: `rules` (enforced) and `shadow_rules` with their stat prefix (dry
/// run), each `{action, policies}` with its map in name order.
fn filter_config(
    action: rbac::Action,
    rules: Option<&BTreeMap<String, Policy>>,
    shadow: Option<(&BTreeMap<String, Policy>, &str)>,
    layer: Layer,
) -> Vec<u8> {
    let encode_rules = |field: u32, policies: &BTreeMap<String, Policy>, config: &mut Vec<u8>| {
        let rules = encode_sorted_map(
            &envoy_types::pb::envoy::config::rbac::v3::Rbac { action: action as i32, ..Default::default() },
            2,
            policies,
        );
        encode_key(field, WireType::LengthDelimited, config);
        encode_varint(rules.len() as u64, config);
        config.extend_from_slice(&rules);
    };
    let mut config = Vec::new();
    if let Some(policies) = rules {
        encode_rules(1, policies, &mut config);
    }
    if let Some((policies, prefix)) = shadow {
        encode_rules(2, policies, &mut config);
        // shadow_rules_stat_prefix: field 3 of the HTTP filter, 5 of the network one.
        let field = if layer == Layer::Http { 3 } else { 5 };
        prost::encoding::string::encode(field, &prefix.to_owned(), &mut config);
    }
    config
}

/// `base` encoded, then the `map<string, V>` field `field` with its entries in key order.
pub(crate) fn encode_sorted_map<M: Message, V: Message>(
    base: &M,
    field: u32,
    entries: &BTreeMap<String, V>,
) -> Vec<u8> {
    let mut out = base.encode_to_vec();
    for (key, value) in entries {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, key, &mut entry);
        prost::encoding::message::encode(2, value, &mut entry);
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(entry.len() as u64, &mut out);
        out.extend_from_slice(&entry);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rules

/// One Istio rule as one Envoy policy; `None` if it must not match on this layer.
fn rule_policy(rule: &Rule, layer: Layer, deny: bool, trust_domain: &str) -> Option<Policy> {
    // `to` and destination conditions are permissions; `from` and the rest principals.
    let mut permissions = Vec::new();
    let mut principals = Vec::new();
    let unusable = |what: &str| {
        if deny {
            tracing::debug!(field = what, "HTTP-only field ignored on a TCP chain (DENY checks the rest)");
            false
        } else {
            true
        }
    };
    if !rule.to.is_empty() {
        let mut ops = Vec::new();
        for to in &rule.to {
            let op = to.operation.clone().unwrap_or_default();
            match operation(&op, layer) {
                Ok(permission) => ops.push(permission),
                Err(field) if unusable(field) => {}
                Err(_) => ops.push(operation(&strip_http_operation(&op), layer).unwrap_or_else(|_| any_permission())),
            }
        }
        if ops.is_empty() {
            return None;
        }
        permissions.push(or_permissions(ops));
    }
    if !rule.from.is_empty() {
        let mut sources = Vec::new();
        for from in &rule.from {
            let source = from.source.clone().unwrap_or_default();
            match source_principal(&source, layer, trust_domain) {
                Ok(p) => sources.push(p),
                Err(field) if unusable(field) => {}
                Err(_) => {
                    let mut stripped = source.clone();
                    stripped.request_principals.clear();
                    stripped.not_request_principals.clear();
                    sources.push(source_principal(&stripped, layer, trust_domain).unwrap_or_else(|_| any_principal()));
                }
            }
        }
        if sources.is_empty() {
            return None;
        }
        principals.push(or_principals(sources));
    }
    for condition in &rule.when {
        match condition_matcher(condition, layer, trust_domain) {
            Ok(Matcher::Permission(p)) => permissions.push(p),
            Ok(Matcher::Principal(p)) => principals.push(p),
            Err(field) if unusable(field) => return None,
            Err(_) => {}
        }
    }
    Some(Policy {
        permissions: vec![and_permissions(permissions)],
        principals: vec![and_principals(principals)],
        ..Default::default()
    })
}

fn strip_http_operation(op: &Operation) -> Operation {
    Operation { ports: op.ports.clone(), not_ports: op.not_ports.clone(), ..Default::default() }
}

/// An operation: every field must hold. `Err(field)` when an HTTP field is used on TCP.
fn operation(op: &Operation, layer: Layer) -> Result<Permission, &'static str> {
    let mut all = Vec::new();
    let http_fields = [
        ("hosts", !op.hosts.is_empty() || !op.not_hosts.is_empty()),
        ("methods", !op.methods.is_empty() || !op.not_methods.is_empty()),
        ("paths", !op.paths.is_empty() || !op.not_paths.is_empty()),
    ];
    if layer == Layer::Tcp
        && let Some((field, _)) = http_fields.iter().find(|(_, used)| *used)
    {
        return Err(field);
    }
    let mut both = |values: &[String], negated: &[String], each: &dyn Fn(&str) -> Permission| {
        if !values.is_empty() {
            all.push(or_permissions(values.iter().map(|v| each(v)).collect()));
        }
        if !negated.is_empty() {
            all.push(not_permission(or_permissions(negated.iter().map(|v| each(v)).collect())));
        }
    };
    both(&op.hosts, &op.not_hosts, &host_permission);
    both(&op.ports, &op.not_ports, &|port| port_permission(port));
    both(&op.methods, &op.not_methods, &|method| header_permission(":method", string_match(method, false)));
    both(&op.paths, &op.not_paths, &|path| Permission {
        rule: Some(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(string_match(path, false))),
        })),
    });
    Ok(and_permissions(all))
}

/// A host matches with or without a port, case-insensitively.
fn host_permission(host: &str) -> Permission {
    let exact = string_match(host, true);
    let with_port = if host.ends_with('*') {
        None
    } else {
        Some(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                regex: format!("{}:[0-9]+", regex_of(host)),
                ..Default::default()
            })),
            ignore_case: false,
        })
    };
    let mut choices = vec![header_permission(":authority", exact)];
    if let Some(with_port) = with_port {
        choices.push(header_permission(":authority", with_port));
    }
    or_permissions(choices)
}

fn port_permission(port: &str) -> Permission {
    match port.trim().parse::<u32>() {
        Ok(port) => Permission { rule: Some(permission::Rule::DestinationPort(port)) },
        Err(_) => {
            tracing::warn!(port, "AuthorizationPolicy port is not a number; it matches nothing");
            not_permission(any_permission())
        }
    }
}

/// A source: every field must hold. `Err(field)` when an HTTP field is used on TCP.
fn source_principal(source: &Source, layer: Layer, trust_domain: &str) -> Result<Principal, &'static str> {
    if layer == Layer::Tcp && (!source.request_principals.is_empty() || !source.not_request_principals.is_empty()) {
        return Err("requestPrincipals");
    }
    let mut all = Vec::new();
    let mut both = |values: &[String], negated: &[String], each: &dyn Fn(&str) -> Principal| {
        if !values.is_empty() {
            all.push(or_principals(values.iter().map(|v| each(v)).collect()));
        }
        if !negated.is_empty() {
            all.push(not_principal(or_principals(negated.iter().map(|v| each(v)).collect())));
        }
    };
    both(&source.principals, &source.not_principals, &|p| peer_principal(p));
    both(&source.namespaces, &source.not_namespaces, &namespace_principal);
    both(&source.service_accounts, &source.not_service_accounts, &|account| {
        let (namespace, name) = account.split_once('/').unwrap_or(("", account));
        authenticated(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{name}"
            ))),
            ignore_case: false,
        })
    });
    both(&source.ip_blocks, &source.not_ip_blocks, &|cidr| ip_principal(cidr, false));
    both(&source.remote_ip_blocks, &source.not_remote_ip_blocks, &|cidr| ip_principal(cidr, true));
    both(&source.request_principals, &source.not_request_principals, &request_principal);
    Ok(and_principals(all))
}

/// A peer principal as Istio writes it (`<trust domain>/ns/<ns>/sa/<sa>`, `*` for any
/// authenticated peer, `prefix*`, `*suffix`), matched against the client certificate.
fn peer_principal(value: &str) -> Principal {
    if value == "*" {
        return Principal {
            identifier: Some(principal::Identifier::Authenticated(principal::Authenticated::default())),
        };
    }
    let pattern = if let Some(prefix) = value.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(format!("spiffe://{prefix}"))
    } else if let Some(suffix) = value.strip_prefix('*') {
        string_matcher::MatchPattern::Suffix(suffix.to_owned())
    } else {
        string_matcher::MatchPattern::Exact(format!("spiffe://{value}"))
    };
    authenticated(StringMatcher { match_pattern: Some(pattern), ignore_case: false })
}

fn namespace_principal(namespace: &str) -> Principal {
    let namespace = if namespace == "*" { "[^/]+".to_owned() } else { regex_of(namespace) };
    authenticated(StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: format!(".*/ns/{namespace}/.*"),
            ..Default::default()
        })),
        ignore_case: false,
    })
}

fn authenticated(name: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(principal::Authenticated { principal_name: Some(name) })),
    }
}

fn cidr(text: &str) -> Option<CidrRange> {
    let (address, len) = match text.split_once('/') {
        Some((address, len)) => (address, len.parse::<u32>().ok()?),
        None => (text, if text.contains(':') { 128 } else { 32 }),
    };
    address.parse::<std::net::IpAddr>().ok()?;
    Some(CidrRange { address_prefix: address.to_owned(), prefix_len: Some(UInt32Value { value: len }) })
}

fn ip_principal(text: &str, remote: bool) -> Principal {
    match cidr(text) {
        Some(range) if remote => Principal { identifier: Some(principal::Identifier::RemoteIp(range)) },
        Some(range) => Principal { identifier: Some(principal::Identifier::DirectRemoteIp(range)) },
        None => {
            tracing::warn!(ip = text, "AuthorizationPolicy IP block does not parse; it matches nothing");
            not_principal(any_principal())
        }
    }
}

/// A request principal `<iss>/<sub>` (`*`, `<iss>/*` and `*/<sub>` too), from the payload of
/// the JWT the JWT filter verified.
fn request_principal(value: &str) -> Principal {
    if value == "*" {
        return jwt_claim("iss", ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)) });
    }
    let (issuer, subject) = value.rsplit_once('/').unwrap_or((value, "*"));
    let part = |claim: &str, text: &str| {
        (text != "*").then(|| {
            jwt_claim(
                claim,
                ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::StringMatch(string_match(text, false))),
                },
            )
        })
    };
    let parts: Vec<Principal> = [part("iss", issuer), part("sub", subject)].into_iter().flatten().collect();
    if parts.is_empty() {
        return request_principal("*");
    }
    and_principals(parts)
}

/// A claim of the verified JWT (a string equal to, or a list containing, what `value` says).
fn jwt_claim_path(path: &[String], value: ValueMatcher) -> Principal {
    let mut segments = vec![JWT_PAYLOAD.to_owned()];
    segments.extend(path.iter().cloned());
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: JWT_FILTER.to_owned(),
                path: segments
                    .into_iter()
                    .map(|key| metadata_matcher::PathSegment {
                        segment: Some(metadata_matcher::path_segment::Segment::Key(key)),
                    })
                    .collect(),
                value: Some(value),
                invert: false,
            }),
            // Dynamic metadata: what the JWT filter wrote for this request.
            metadata_source: 0,
        })),
    }
}

fn jwt_claim(claim: &str, value: ValueMatcher) -> Principal {
    jwt_claim_path(&[claim.to_owned()], value)
}

/// A claim equal to `text`, or a list claim containing it.
fn claim_value(path: &[String], text: &str) -> Principal {
    let string =
        ValueMatcher { match_pattern: Some(value_matcher::MatchPattern::StringMatch(string_match(text, false))) };
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(ListMatcher {
            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string.clone()))),
        }))),
    };
    or_principals(vec![jwt_claim_path(path, string), jwt_claim_path(path, list)])
}

enum Matcher {
    Permission(Permission),
    Principal(Principal),
}

/// A `when` condition. `Err(key)` when it cannot be checked on this layer (or at all).
fn condition_matcher(condition: &Condition, layer: Layer, trust_domain: &str) -> Result<Matcher, &'static str> {
    let key = condition.key.trim();
    let http_only = key.starts_with("request.");
    if http_only && layer == Layer::Tcp {
        return Err("request.*");
    }
    let principals = |each: &dyn Fn(&str) -> Principal| {
        let mut all = Vec::new();
        if !condition.values.is_empty() {
            all.push(or_principals(condition.values.iter().map(|v| each(v)).collect()));
        }
        if !condition.not_values.is_empty() {
            all.push(not_principal(or_principals(condition.not_values.iter().map(|v| each(v)).collect())));
        }
        Matcher::Principal(and_principals(all))
    };
    let permissions = |each: &dyn Fn(&str) -> Permission| {
        let mut all = Vec::new();
        if !condition.values.is_empty() {
            all.push(or_permissions(condition.values.iter().map(|v| each(v)).collect()));
        }
        if !condition.not_values.is_empty() {
            all.push(not_permission(or_permissions(condition.not_values.iter().map(|v| each(v)).collect())));
        }
        Matcher::Permission(and_permissions(all))
    };
    if let Some(name) = bracketed(key, "request.headers") {
        let name = name.to_ascii_lowercase();
        return Ok(principals(&|v| header_principal(&name, string_match(v, false))));
    }
    if let Some(path) = claims_path(key) {
        return Ok(principals(&|v| claim_value(&path, v)));
    }
    Ok(match key {
        "source.ip" => principals(&|v| ip_principal(v, false)),
        "remote.ip" => principals(&|v| ip_principal(v, true)),
        "source.namespace" => principals(&namespace_principal),
        "source.principal" => principals(&peer_principal),
        "source.serviceAccount" => principals(&|account| {
            let (namespace, name) = account.split_once('/').unwrap_or(("", account));
            peer_principal(&format!("{trust_domain}/ns/{namespace}/sa/{name}"))
        }),
        "request.auth.principal" => principals(&request_principal),
        "request.auth.audiences" => principals(&|v| claim_value(&["aud".to_owned()], v)),
        "request.auth.presenter" => principals(&|v| claim_value(&["azp".to_owned()], v)),
        "destination.ip" => permissions(&|v| match cidr(v) {
            Some(range) => Permission { rule: Some(permission::Rule::DestinationIp(range)) },
            None => not_permission(any_permission()),
        }),
        "destination.port" => permissions(&port_permission),
        "connection.sni" => {
            permissions(&|v| Permission { rule: Some(permission::Rule::RequestedServerName(string_match(v, false))) })
        }
        _ => {
            tracing::warn!(key, "AuthorizationPolicy condition key not supported; the rule never matches");
            return Err("unsupported condition");
        }
    })
}

/// `name` of `prefix[name]`.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_prefix('[')?.strip_suffix(']')
}

/// The claim path of `request.auth.claims[a][b]…`.
fn claims_path(key: &str) -> Option<Vec<String>> {
    let rest = key.strip_prefix("request.auth.claims")?;
    let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
    Some(inner.split("][").map(str::to_owned).collect())
}

// ---------------------------------------------------------------------------------------------
// Matcher helpers

/// Istio's string forms: `*` any (non-empty), `prefix*`, `*suffix`, or exact.
fn string_match(value: &str, ignore_case: bool) -> StringMatcher {
    let pattern = if value == "*" {
        string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex: ".+".to_owned(), ..Default::default() })
    } else if let Some(prefix) = value.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(prefix.to_owned())
    } else if let Some(suffix) = value.strip_prefix('*') {
        string_matcher::MatchPattern::Suffix(suffix.to_owned())
    } else {
        string_matcher::MatchPattern::Exact(value.to_owned())
    };
    StringMatcher { match_pattern: Some(pattern), ignore_case }
}

fn regex_of(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_string() } else { format!("\\{c}") })
        .collect()
}

fn header_permission(name: &str, value: StringMatcher) -> Permission {
    Permission { rule: Some(permission::Rule::Header(header(name, value))) }
}

fn header_principal(name: &str, value: StringMatcher) -> Principal {
    Principal { identifier: Some(principal::Identifier::Header(header(name, value))) }
}

fn header(name: &str, value: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(value)),
        ..Default::default()
    }
}

fn any_permission() -> Permission {
    Permission { rule: Some(permission::Rule::Any(true)) }
}

fn any_principal() -> Principal {
    Principal { identifier: Some(principal::Identifier::Any(true)) }
}

fn not_permission(p: Permission) -> Permission {
    Permission { rule: Some(permission::Rule::NotRule(Box::new(p))) }
}

fn not_principal(p: Principal) -> Principal {
    Principal { identifier: Some(principal::Identifier::NotId(Box::new(p))) }
}

fn and_permissions(mut all: Vec<Permission>) -> Permission {
    match all.len() {
        0 => any_permission(),
        1 => all.remove(0),
        _ => Permission { rule: Some(permission::Rule::AndRules(permission::Set { rules: all })) },
    }
}

fn or_permissions(mut all: Vec<Permission>) -> Permission {
    match all.len() {
        1 => all.remove(0),
        _ => Permission { rule: Some(permission::Rule::OrRules(permission::Set { rules: all })) },
    }
}

fn and_principals(mut all: Vec<Principal>) -> Principal {
    match all.len() {
        0 => any_principal(),
        1 => all.remove(0),
        _ => Principal { identifier: Some(principal::Identifier::AndIds(principal::Set { ids: all })) },
    }
}

fn or_principals(mut all: Vec<Principal>) -> Principal {
    match all.len() {
        1 => all.remove(0),
        _ => Principal { identifier: Some(principal::Identifier::OrIds(principal::Set { ids: all })) },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        let loads = rudder_config::load::load_str("policies.yaml", yaml).unwrap();
        assert!(loads.problems.is_empty(), "{:?}", loads.problems);
        let mut snapshot = Snapshot::default();
        for loaded in loads.objects {
            match loaded.object {
                rudder_config::IstioObject::AuthorizationPolicy(p) => {
                    snapshot.authorization_policies.push(Arc::from(p))
                }
                rudder_config::IstioObject::RequestAuthentication(p) => {
                    snapshot.request_authentications.push(Arc::from(p));
                }
                other => panic!("unexpected {}", other.kind()),
            }
        }
        snapshot
    }

    fn proxy(namespace: &str, app: &str) -> Proxy {
        let meta = BTreeMap::from([("LABELS".to_owned(), serde_json::json!({"app": app}))]);
        Proxy::from_node(&format!("sidecar~10.0.0.1~{app}-1.{namespace}~{namespace}.svc.cluster.local"), &meta).unwrap()
    }

    /// The HTTP filters as (name, action, policy names).
    fn http(snapshot: &Snapshot, proxy: &Proxy) -> Vec<(String, Option<i32>, Vec<String>)> {
        http_filters(snapshot, proxy)
            .into_iter()
            .map(|f| {
                let Some(HttpFilterConfig::TypedConfig(any)) = f.config_type else { panic!("typed config") };
                if f.name != HTTP_RBAC {
                    return (f.name, None, vec![]);
                }
                let rbac = HttpRbac::decode(any.value.as_slice()).unwrap().rules.unwrap();
                let mut names: Vec<String> = rbac.policies.keys().cloned().collect();
                names.sort();
                (f.name, Some(rbac.action), names)
            })
            .collect()
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: quiet}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: closed}
spec: {action: DENY, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: closed}
spec: {action: DENY}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: apps}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/apps/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/get"]}}]
  - to: [{operation: {ports: ["9000"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

    #[test]
    fn which_policies_apply_and_in_which_order() {
        let snapshot = snapshot(POLICIES);
        let mesh_deny = (
            "envoy.filters.http.rbac".to_owned(),
            Some(1),
            vec!["ns[istio-system]-policy[no-admin]-rule[0]".to_owned()],
        );
        // No policy of its own: only the mesh-wide DENY.
        assert_eq!(http(&snapshot, &proxy("apps", "sleep")), vec![mesh_deny.clone()]);
        // Its own ALLOW (two rules) after every DENY.
        assert_eq!(
            http(&snapshot, &proxy("apps", "httpbin")),
            vec![
                mesh_deny.clone(),
                (
                    HTTP_RBAC.to_owned(),
                    Some(0),
                    vec!["ns[apps]-policy[httpbin]-rule[0]".to_owned(), "ns[apps]-policy[httpbin]-rule[1]".to_owned()]
                ),
            ]
        );
        // ALLOW without rules: an ALLOW filter with no policy, which denies everything.
        let quiet = http(&snapshot, &proxy("quiet", "x"));
        assert_eq!(quiet[1], (HTTP_RBAC.to_owned(), Some(0), vec![]));
        // DENY with `rules: [{}]` denies all; DENY without rules matches nothing.
        let closed = http(&snapshot, &proxy("closed", "x"));
        assert_eq!(closed.len(), 1);
        let (_, action, names) = &closed[0];
        assert_eq!(action, &Some(1));
        assert!(names.contains(&"ns[closed]-policy[deny-all]-rule[0]".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("deny-nothing")), "{names:?}");
    }

    #[test]
    fn policies_attach_to_the_gateway_api_gateway_a_proxy_serves() {
        let snapshot = snapshot(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gw-deny, namespace: edge}\n\
             spec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public}]\n  action: DENY\n  \
             rules: [{to: [{operation: {paths: [/admin]}}]}]\n---\n\
             apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: gw-jwt, namespace: edge}\n\
             spec:\n  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: public}\n  \
             jwtRules: [{issuer: https://issuer, jwks: '{\"keys\": []}'}]\n",
        );
        let gateway = |namespace: &str, name: &str| {
            let meta = BTreeMap::from([(
                "LABELS".to_owned(),
                serde_json::json!({"gateway.networking.k8s.io/gateway-name": name}),
            )]);
            Proxy::from_node(&format!("router~10.0.0.2~gw-1.{namespace}~{namespace}.svc.cluster.local"), &meta).unwrap()
        };
        let names = |proxy: &Proxy| http_filters(&snapshot, proxy).into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(names(&gateway("edge", "public")), ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac"]);
        // Another gateway, the same gateway name elsewhere, and a sidecar of the namespace: no.
        assert!(names(&gateway("edge", "internal")).is_empty());
        assert!(names(&gateway("other", "public")).is_empty());
        assert!(names(&proxy("edge", "httpbin")).is_empty());
    }

    #[test]
    fn peer_principals_become_spiffe_ids() {
        let snapshot = snapshot(POLICIES);
        let filters = http_filters(&snapshot, &proxy("apps", "httpbin"));
        let Some(HttpFilterConfig::TypedConfig(any)) = &filters[1].config_type else { panic!() };
        let rbac = HttpRbac::decode(any.value.as_slice()).unwrap().rules.unwrap();
        let text = format!("{:?}", rbac.policies["ns[apps]-policy[httpbin]-rule[0]"]);
        assert!(text.contains(r#"Exact("spiffe://cluster.local/ns/apps/sa/sleep")"#), "{text}");
        assert!(text.contains(r#"name: ":method""#) && text.contains(r#"Exact("GET")"#), "{text}");
    }

    #[test]
    fn tcp_chains_drop_allow_rules_with_http_fields_and_widen_deny_rules() {
        let snapshot = snapshot(POLICIES);
        let decode = |f: &Filter| {
            let Some(FilterConfig::TypedConfig(any)) = &f.config_type else { panic!() };
            let rbac = NetworkRbac::decode(any.value.as_slice()).unwrap();
            assert!(!rbac.stat_prefix.is_empty());
            let rules = rbac.rules.unwrap();
            let mut names: Vec<String> = rules.policies.keys().cloned().collect();
            names.sort();
            (rules.action, names, rules.policies)
        };
        let filters = network_filters(&snapshot, &proxy("apps", "httpbin"));
        let (deny, deny_names, deny_policies) = decode(&filters[0]);
        assert_eq!((deny, deny_names.len()), (1, 1));
        // The mesh DENY on /admin* cannot check the path on TCP: it denies every connection.
        let only = &deny_policies["ns[istio-system]-policy[no-admin]-rule[0]"];
        assert_eq!(format!("{:?}", only.permissions), format!("{:?}", vec![any_permission()]));
        // The ALLOW rule with methods/paths is gone; the port rule stays.
        let (allow, allow_names, _) = decode(&filters[1]);
        assert_eq!((allow, allow_names), (0, vec!["ns[apps]-policy[httpbin]-rule[1]".to_owned()]));
    }

    #[test]
    fn dry_run_policies_are_shadow_rules_and_never_enforced() {
        let snapshot = snapshot(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: apps, annotations: {istio.io/dry-run: "true"}}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/admin"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: apps, annotations: {istio.io/dry-run: "True"}}
spec: {rules: [{from: [{source: {namespaces: ["apps"]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-teapot, namespace: apps, annotations: {istio.io/dry-run: "false"}}
spec: {action: DENY, rules: [{to: [{operation: {paths: ["/418"]}}]}]}
"#,
        );
        let p = proxy("apps", "httpbin");
        let filters: Vec<HttpRbac> = http_filters(&snapshot, &p)
            .into_iter()
            .map(|f| {
                let Some(HttpFilterConfig::TypedConfig(any)) = f.config_type else { panic!("typed config") };
                HttpRbac::decode(any.value.as_slice()).unwrap()
            })
            .collect();
        let names = |rules: &Option<envoy_types::pb::envoy::config::rbac::v3::Rbac>| {
            let mut names: Vec<String> = rules.iter().flat_map(|r| r.policies.keys().cloned()).collect();
            names.sort();
            names
        };
        // DENY: the enforced policy (annotation "false") as rules, the dry-run one as shadow rules.
        assert_eq!(names(&filters[0].rules), ["ns[apps]-policy[deny-teapot]-rule[0]"]);
        assert_eq!(names(&filters[0].shadow_rules), ["ns[apps]-policy[deny-admin]-rule[0]"]);
        assert_eq!(filters[0].shadow_rules_stat_prefix, DRY_RUN_DENY_PREFIX);
        // ALLOW in dry run only: shadow rules and no rules, so nothing is denied by default.
        assert_eq!(filters.len(), 2);
        assert!(filters[1].rules.is_none(), "{:?}", filters[1].rules);
        assert_eq!(names(&filters[1].shadow_rules), ["ns[apps]-policy[allow-sleep]-rule[0]"]);
        assert_eq!(filters[1].shadow_rules_stat_prefix, DRY_RUN_ALLOW_PREFIX);
        // TCP chains: the same split, the shadow prefix in the network filter's own field.
        let network: Vec<NetworkRbac> = network_filters(&snapshot, &p)
            .into_iter()
            .map(|f| {
                let Some(FilterConfig::TypedConfig(any)) = f.config_type else { panic!() };
                NetworkRbac::decode(any.value.as_slice()).unwrap()
            })
            .collect();
        assert_eq!(
            network.iter().map(|n| (n.stat_prefix.as_str(), n.shadow_rules_stat_prefix.as_str())).collect::<Vec<_>>(),
            [("tcp.deny.", DRY_RUN_DENY_PREFIX), ("tcp.allow.", DRY_RUN_ALLOW_PREFIX)]
        );
        assert!(network[1].rules.is_none());
    }

    #[test]
    fn equal_policies_encode_to_equal_bytes() {
        let snapshot = snapshot(POLICIES);
        let p = proxy("apps", "httpbin");
        let first: Vec<Vec<u8>> = http_filters(&snapshot, &p).into_iter().map(|f| f.encode_to_vec()).collect();
        for _ in 0..20 {
            let again: Vec<Vec<u8>> = http_filters(&snapshot, &p).into_iter().map(|f| f.encode_to_vec()).collect();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn a_request_authentication_puts_the_jwt_filter_first() {
        let yaml = format!(
            "{POLICIES}---\n{}",
            r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: apps}
spec:
  jwtRules: [{issuer: "https://issuer.example", jwks: '{"keys":[]}'}]
"#
        );
        let snapshot = snapshot(&yaml);
        let names: Vec<String> = http(&snapshot, &proxy("apps", "httpbin")).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, [JWT_FILTER, HTTP_RBAC, HTTP_RBAC]);
        assert_eq!(http(&snapshot, &proxy("other", "x")).len(), 1, "only the mesh-wide DENY elsewhere");
    }
}
