//! `security.istio.io/v1`: PeerAuthentication, RequestAuthentication, AuthorizationPolicy.

use std::collections::{BTreeMap, BTreeSet};

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, IstioStatus, PolicyTargetReference, WorkloadSelector};
use crate::validate::{FieldPath, Report, Validate, checks};

// ---------------------------------------------------------------------------------------------
// Shared policy attachment: `selector`, `targetRef`, `targetRefs` (also used by Telemetry).
// ---------------------------------------------------------------------------------------------

/// Checks a workload selector's `matchLabels`, when there is a selector.
fn validate_selector(selector: Option<&WorkloadSelector>, at: &FieldPath, report: &mut Report) {
    if let Some(selector) = selector {
        checks::selector_labels(&selector.match_labels, report, &at.field("matchLabels"));
    }
}

/// The policy attachment rules shared by every policy kind: at most one of `selector`,
/// `targetRef` and `targetRefs`, each of them valid.
pub(crate) fn validate_attachment(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
    report: &mut Report,
) {
    let spec = FieldPath::spec();
    let set =
        usize::from(selector.is_some()) + usize::from(target_ref.is_some()) + usize::from(!target_refs.is_empty());
    if set > 1 {
        report.error(&spec, "only one of selector, targetRef and targetRefs may be set");
    }
    validate_selector(selector, &spec.field("selector"), report);
    if let Some(target) = target_ref {
        checks::target_ref(target, report, &spec.field("targetRef"));
    }
    for (i, target) in target_refs.iter().enumerate() {
        checks::target_ref(target, report, &spec.field("targetRefs").index(i));
    }
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication
// ---------------------------------------------------------------------------------------------

/// How workloads accept peer (mutual TLS) traffic.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    status = "IstioStatus",
    shortname = "pa",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Mode","type":"string","description":"The mTLS mode of the policy.","jsonPath":".spec.mtls.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to; all in the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS settings of the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port mutual TLS settings, keyed by port number; needs a selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<String, MutualTls>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mutual TLS mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MutualTlsMode>,
}

crate::proto_enum! {
    /// `PeerAuthentication.MutualTLS.Mode`.
    pub enum MutualTlsMode {
        Unset = 0 => "UNSET",
        Disable = 1 => "DISABLE",
        Permissive = 2 => "PERMISSIVE",
        Strict = 3 => "STRICT",
    }
}

impl Validate for PeerAuthentication {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        let ports = at.field("portLevelMtls");
        let has_labels = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
        if !spec.port_level_mtls.is_empty() && !has_labels {
            report.error(
                &ports,
                "port-level mTLS needs a workload selector with labels; a namespace or mesh-wide policy cannot set it",
            );
        }
        for key in spec.port_level_mtls.keys() {
            match key.trim().parse::<u32>() {
                Ok(port) => report.check(&ports.key(key), checks::port(port)),
                Err(_) => report.error(&ports.key(key), format!("port {key:?} must be a number in the range 1..65535")),
            }
        }
        validate_selector(spec.selector.as_ref(), &at.field("selector"), report);
    }
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication
// ---------------------------------------------------------------------------------------------

/// Which request credentials (JWTs) workloads accept.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    status = "IstioStatus",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// Workloads the policy applies to; all in the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource the policy attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the policy attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JWTs that are accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// How to find and check one kind of JWT.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// Expected `iss` claim.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// Accepted `aud` values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where to fetch the signing keys from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks_uri: String,
    /// `jwksUri` under its protobuf field name, which protobuf JSON also reads (upstream's CRD
    /// lists both); use [`JwtRule::jwks_uri`].
    #[serde(default, rename = "jwks_uri", skip_serializing_if = "String::is_empty")]
    pub jwks_uri_proto_name: String,
    /// The signing keys inline, as a JSON Web Key Set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub jwks: String,
    /// Headers the token may arrive in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may arrive in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Header to pass the verified payload on in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_payload_to_header: String,
    /// Cookies the token may arrive in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the original token on the forwarded request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_original_token: bool,
    /// Claims to copy into request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the key set fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Claims holding space-separated values (besides `scope` and `permission`), which are
    /// split into lists for matching.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// The key set address, under either of its names.
    pub fn jwks_uri(&self) -> &str {
        if self.jwks_uri.is_empty() { &self.jwks_uri_proto_name } else { &self.jwks_uri }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    /// Header name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Prefix to strip before the token, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Header to write.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    /// Claim to read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
}

impl Validate for RequestAuthentication {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        validate_attachment(spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs, report);
        let rules = FieldPath::spec().field("jwtRules");
        for (i, rule) in spec.jwt_rules.iter().enumerate() {
            validate_jwt_rule(rule, &rules.index(i), report);
        }
    }
}

fn validate_jwt_rule(rule: &JwtRule, at: &FieldPath, report: &mut Report) {
    if !rule.jwks_uri.is_empty() && !rule.jwks_uri_proto_name.is_empty() {
        report.error(&at.field("jwks_uri"), "jwks_uri is jwksUri under its protobuf name; set only one of them");
    }
    if rule.issuer.is_empty() && rule.jwks_uri().is_empty() {
        report.error(at, "issuer or jwksUri must be set");
    }
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            report.error(&at.field("audiences").index(i), "audience must not be empty");
        }
    }
    if !rule.jwks_uri().is_empty() {
        let name = if rule.jwks_uri.is_empty() { "jwks_uri" } else { "jwksUri" };
        report.check(&at.field(name), jwks_uri(rule.jwks_uri()));
    }
    if !rule.jwks.is_empty() {
        report.check(&at.field("jwks"), jwks(&rule.jwks));
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        if header.name.is_empty() {
            report.error(&at.field("fromHeaders").index(i).field("name"), "header name must not be empty");
        }
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            report.error(&at.field("fromParams").index(i), "query parameter name must not be empty");
        }
    }
    for (i, cookie) in rule.from_cookies.iter().enumerate() {
        if cookie.is_empty() {
            report.error(&at.field("fromCookies").index(i), "cookie name must not be empty");
        }
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, output) in rule.output_claim_to_headers.iter().enumerate() {
        let here = at.field("outputClaimToHeaders").index(i);
        if output.header.is_empty() {
            report.error(&here.field("header"), "header must not be empty");
        } else if let Err(message) = http_token(&output.header) {
            report.error(&here.field("header"), message);
        } else if let Some(first) = seen.insert(output.header.to_ascii_lowercase(), i) {
            report.error(
                &here.field("header"),
                format!("header {:?} is already written by outputClaimToHeaders[{first}]", output.header),
            );
        }
        if output.claim.is_empty() {
            report.error(&here.field("claim"), "claim must not be empty");
        }
    }
    if let Some(timeout) = &rule.timeout {
        report.check(&at.field("timeout"), checks::duration(timeout));
    }
    let mut claims = BTreeSet::new();
    for (i, claim) in rule.space_delimited_claims.iter().enumerate() {
        let here = at.field("spaceDelimitedClaims").index(i);
        if claim.is_empty() {
            report.error(&here, "claim name must not be empty");
        } else if !claims.insert(claim.as_str()) {
            report.warning(&here, format!("claim {claim:?} is listed twice"));
        }
    }
}

/// An HTTP header name in the strict token alphabet of RFC 7230 (either case).
fn http_token(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(format!("header name {name:?} is invalid (letters, digits and !#$%&'*+-.^_`|~ only)")) }
}

/// A JWKS address: an absolute `http` or `https` URL with a host and, if given, a valid port.
fn jwks_uri(uri: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("jwksUri {uri:?} is invalid: {why}"));
    let Some((scheme, rest)) = uri.split_once("://") else {
        return bad("expected an absolute http:// or https:// URL");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad(&format!("scheme {scheme:?} is not supported (http or https)"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':')),
            None => return bad("unclosed '[' in host"),
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return bad("missing host");
    }
    if host.contains(char::is_whitespace) {
        return bad("host contains whitespace");
    }
    if let Some(port) = port {
        match port.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => return bad(&format!("port {port:?} is not in the range 1..65535")),
        }
    }
    Ok(())
}

/// An inline JWKS: a JSON object holding a `keys` list (a key set) or a `kty` (one key).
fn jwks(text: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("jwks is not valid JSON: {e}"))?;
    let is_set = value.get("keys").is_some_and(serde_json::Value::is_array);
    let is_key = value.get("kty").is_some_and(serde_json::Value::is_string);
    if is_set || is_key {
        Ok(())
    } else {
        Err("jwks must be a JSON Web Key Set (an object with a \"keys\" list) or a single key".into())
    }
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------------------------

/// Access control for workloads.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "IstioStatus",
    shortname = "ap",
    category = "istio-io",
    category = "security-istio-io",
    printcolumn = r#"{"name":"Action","type":"string","description":"What the policy does with matching requests.","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","description":"Time since the object was created.","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to; all in the namespace when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A resource the policy attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the policy attaches to, instead of a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Requests match when any rule matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// What to do with matching requests; ALLOW when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthorizationAction>,
    /// The extension provider deciding CUSTOM policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

crate::proto_enum! {
    /// `AuthorizationPolicy.Action`.
    pub enum AuthorizationAction {
        Allow = 0 => "ALLOW",
        Deny = 1 => "DENY",
        Audit = 2 => "AUDIT",
        Custom = 3 => "CUSTOM",
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name of an extension provider in the mesh config.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// A rule matches when a source, an operation and all conditions match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Who sends the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// What the request does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Further conditions on request attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Source identities of a request; all given fields must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
}

/// Request operations; all given fields must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// A condition on one request attribute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Attribute name, e.g. `request.headers[x-user]` or `source.ip`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

impl Source {
    /// `(YAML name, values)` of every field, in declaration order.
    fn fields(&self) -> [(&'static str, &[String]); 12] {
        [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("remoteIpBlocks", &self.remote_ip_blocks),
            ("notRemoteIpBlocks", &self.not_remote_ip_blocks),
        ]
    }
}

impl Operation {
    fn fields(&self) -> [(&'static str, &[String]); 8] {
        [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("ports", &self.ports),
            ("notPorts", &self.not_ports),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ]
    }
}

/// Source fields an ext_authz (CUSTOM) policy cannot match on.
const NOT_WITH_CUSTOM: [&str; 8] = [
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
];

/// Source fields that apply to TCP traffic too (everything but request principals).
const TCP_SOURCE_FIELDS: [&str; 10] = [
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

impl Validate for AuthorizationPolicy {
    fn validate(&self, report: &mut Report) {
        let spec = &self.spec;
        let at = FieldPath::spec();
        validate_attachment(spec.selector.as_ref(), spec.target_ref.as_ref(), &spec.target_refs, report);
        let action = spec.action.unwrap_or_default();
        match (action, &spec.provider) {
            (AuthorizationAction::Custom, None) => {
                report.error(&at.field("provider"), "provider is required with action CUSTOM")
            }
            (AuthorizationAction::Custom, Some(p)) if p.name.is_empty() => {
                report.error(&at.field("provider").field("name"), "provider name must not be empty")
            }
            (AuthorizationAction::Custom, Some(_)) | (_, None) => {}
            (other, Some(_)) => {
                report.error(&at.field("provider"), format!("provider is only allowed with action CUSTOM, not {other}"))
            }
        }
        if spec.rules.is_empty() && matches!(action, AuthorizationAction::Deny | AuthorizationAction::Custom) {
            report.error(
                &at.field("rules"),
                format!("a {action} policy without rules never matches; add an empty rule {{}} to match every request"),
            );
        }
        for (i, rule) in spec.rules.iter().enumerate() {
            validate_rule(rule, action, &at.field("rules").index(i), report);
        }
    }
}

fn validate_rule(rule: &Rule, action: AuthorizationAction, at: &FieldPath, report: &mut Report) {
    let custom = action == AuthorizationAction::Custom;
    let mut tcp_in_from = false;
    let mut tcp_in_to = false;
    let mut has_source = false;
    let mut has_operation = false;

    for (j, from) in rule.from.iter().enumerate() {
        let here = at.field("from").index(j);
        let Some(source) = &from.source else {
            report.error(&here, "source must be set");
            continue;
        };
        has_source = true;
        let here = here.field("source");
        let fields = source.fields();
        if fields.iter().all(|(_, values)| values.is_empty()) {
            report.error(&here, "source must set at least one field");
        }
        let set = |names: &[&str]| fields.iter().any(|(name, values)| names.contains(name) && !values.is_empty());
        if set(&["serviceAccounts", "notServiceAccounts"])
            && set(&["principals", "notPrincipals", "namespaces", "notNamespaces"])
        {
            report.error(
                &here,
                "serviceAccounts and notServiceAccounts cannot be combined with principals, notPrincipals, namespaces or notNamespaces",
            );
        }
        tcp_in_from |= set(&TCP_SOURCE_FIELDS);
        for (name, values) in fields {
            let field = here.field(name);
            if custom && !values.is_empty() && NOT_WITH_CUSTOM.contains(&name) {
                report.error(&field, format!("{name} is not supported with action CUSTOM"));
            }
            for (k, value) in values.iter().enumerate() {
                let item = field.index(k);
                if value.is_empty() {
                    report.error(&item, "value must not be empty");
                } else if name.ends_with("pBlocks") {
                    report.check(&item, checks::ip_or_cidr(value));
                } else if name.ends_with("erviceAccounts") {
                    report.check(&item, service_account(value));
                }
            }
        }
    }

    for (j, to) in rule.to.iter().enumerate() {
        let here = at.field("to").index(j);
        let Some(operation) = &to.operation else {
            report.error(&here, "operation must be set");
            continue;
        };
        has_operation = true;
        let here = here.field("operation");
        let fields = operation.fields();
        if fields.iter().all(|(_, values)| values.is_empty()) {
            report.error(&here, "operation must set at least one field");
        }
        tcp_in_to |= !operation.ports.is_empty() || !operation.not_ports.is_empty();
        for (name, values) in fields {
            let field = here.field(name);
            for (k, value) in values.iter().enumerate() {
                let item = field.index(k);
                if value.is_empty() {
                    report.error(&item, "value must not be empty");
                } else if name.ends_with("orts") {
                    report.check(&item, port_text(value));
                } else if name.ends_with("aths") {
                    report.check(&item, path_template(value));
                }
            }
        }
    }

    for (j, condition) in rule.when.iter().enumerate() {
        validate_condition(condition, custom, &at.field("when").index(j), report);
    }

    if action == AuthorizationAction::Deny
        && ((has_source && !has_operation && !tcp_in_from) || (has_operation && !tcp_in_to))
    {
        report.warning(
            at,
            "this DENY rule only uses HTTP attributes, so it denies all traffic to TCP ports in scope; name the ports explicitly",
        );
    }
}

fn validate_condition(condition: &Condition, custom: bool, at: &FieldPath, report: &mut Report) {
    let key = condition.key.as_str();
    if key.is_empty() {
        report.error(&at.field("key"), "key must not be empty");
        return;
    }
    if custom
        && (matches!(key, "source.namespace" | "source.serviceAccount" | "source.principal")
            || key.starts_with("request.auth."))
    {
        report.error(&at.field("key"), format!("key {key} is not supported with action CUSTOM"));
    }
    let Some(kind) = attribute_kind(key) else {
        report.error(
            &at.field("key"),
            format!("unknown attribute {key:?}; see the list of supported authorization conditions"),
        );
        return;
    };
    if let AttributeKind::Map(prefix) = kind {
        let name =
            key.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('[')).and_then(|rest| rest.strip_suffix(']'));
        if !name.is_some_and(|n| !n.is_empty() && !n.contains(['[', ']'])) {
            report.error(&at.field("key"), format!("key {key:?} must be of the form {prefix}[NAME]"));
        }
    }
    if condition.values.is_empty() && condition.not_values.is_empty() {
        report.error(at, format!("at least one of values or notValues must be set for key {key}"));
        return;
    }
    for (name, values) in [("values", &condition.values), ("notValues", &condition.not_values)] {
        for (k, value) in values.iter().enumerate() {
            let item = at.field(name).index(k);
            match kind {
                AttributeKind::Ip => report.check(&item, checks::ip_or_cidr(value)),
                AttributeKind::Port => report.check(&item, port_text(value)),
                AttributeKind::Plain | AttributeKind::Map(_) => {}
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttributeKind {
    Plain,
    Ip,
    Port,
    /// `prefix[name]`.
    Map(&'static str),
}

/// What kind of values a condition key takes, or `None` for an unknown key.
fn attribute_kind(key: &str) -> Option<AttributeKind> {
    for prefix in ["request.headers", "request.auth.claims"] {
        if key.starts_with(prefix) {
            return Some(AttributeKind::Map(prefix));
        }
    }
    if key.starts_with("experimental.envoy.filters.") {
        return Some(AttributeKind::Plain);
    }
    match key {
        "source.ip" | "remote.ip" | "destination.ip" => Some(AttributeKind::Ip),
        "destination.port" => Some(AttributeKind::Port),
        "source.namespace"
        | "source.principal"
        | "source.serviceAccount"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Some(AttributeKind::Plain),
        _ => None,
    }
}

/// A port number given as text, in 1..65535.
fn port_text(value: &str) -> Result<(), String> {
    match value.parse::<u32>() {
        Ok(n) => checks::port(n),
        Err(_) => Err(format!("port {value:?} must be a number in the range 1..65535")),
    }
}

/// A service account as `namespace/name`, without wildcards.
fn service_account(value: &str) -> Result<(), String> {
    if value.contains('*') {
        return Err(format!("service account {value:?} must not contain a wildcard"));
    }
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(format!("service account {value:?} must be of the form namespace/name")),
    }
}

/// A path that may use the `{*}` (one segment) and `{**}` (the rest, last only) templates.
fn path_template(path: &str) -> Result<(), String> {
    let templated = path.contains("{*}") || path.contains("{**}");
    let mut seen_any = false;
    for segment in path.trim_matches('/').split('/') {
        if !seen_any && segment == "{*}" {
            continue;
        }
        if !seen_any && segment == "{**}" {
            seen_any = true;
            continue;
        }
        if segment.contains(['{', '}']) {
            return Err(format!("path {path:?} uses '{{' or '}}' outside a {{*}} or {{**}} segment, or after {{**}}"));
        }
        if templated && !segment.bytes().all(path_char) {
            return Err(format!(
                "path {path:?} has segment {segment:?} with characters not allowed in a templated path"
            ));
        }
    }
    Ok(())
}

/// RFC 3986 `pchar` (percent escapes allowed as `%`).
fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::structural_problems;
    use kube::CustomResourceExt;

    #[test]
    fn crds_are_structural_and_named_like_upstream() {
        for (crd, short, columns) in [
            (PeerAuthentication::crd(), "pa", vec!["Mode", "Age"]),
            (RequestAuthentication::crd(), "ra", vec![]),
            (AuthorizationPolicy::crd(), "ap", vec!["Action", "Age"]),
        ] {
            assert_eq!(structural_problems(&crd), Vec::<String>::new());
            assert_eq!(crd.spec.names.short_names, Some(vec![short.to_owned()]));
            assert_eq!(crd.spec.names.categories, Some(vec!["istio-io".to_owned(), "security-istio-io".to_owned()]));
            let got: Vec<String> =
                crd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
            assert_eq!(got, columns);
        }
    }

    #[test]
    fn jwks_uris() {
        for ok in [
            "https://example.com/.well-known/jwks.json",
            "http://localhost:8080/keys",
            "https://[::1]:443/jwks",
            "HTTPS://example.com",
        ] {
            assert_eq!(jwks_uri(ok), Ok(()), "{ok}");
        }
        for bad in [
            "example.com/jwks",
            "ftp://example.com/jwks",
            "https:///jwks",
            "https://example.com:0/jwks",
            "https://example.com:http/jwks",
            "https://[::1/jwks",
        ] {
            assert!(jwks_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inline_key_sets() {
        assert_eq!(jwks(r#"{"keys":[]}"#), Ok(()));
        assert_eq!(jwks(r#"{"kty":"RSA","n":"x","e":"AQAB"}"#), Ok(()));
        assert!(jwks("not json").is_err());
        assert!(jwks(r#"{"foo":1}"#).is_err());
    }

    #[test]
    fn path_templates() {
        for ok in ["/foo/{*}/bar", "/foo/{**}", "/{*}/{**}", "/plain*", "*/suffix", "/a/b"] {
            assert_eq!(path_template(ok), Ok(()), "{ok}");
        }
        for bad in ["/foo/{**}/{*}", "/foo/{**}/{**}", "/foo/{bar}", "/foo{*}", "/foo/{*}/b\"r"] {
            assert!(path_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn condition_keys() {
        use AttributeKind::*;
        for (key, kind) in [
            ("request.headers[x-user]", Some(Map("request.headers"))),
            ("request.auth.claims[groups]", Some(Map("request.auth.claims"))),
            ("source.ip", Some(Ip)),
            ("remote.ip", Some(Ip)),
            ("destination.ip", Some(Ip)),
            ("destination.port", Some(Port)),
            ("source.namespace", Some(Plain)),
            ("source.principal", Some(Plain)),
            ("request.auth.principal", Some(Plain)),
            ("request.auth.audiences", Some(Plain)),
            ("request.auth.presenter", Some(Plain)),
            ("connection.sni", Some(Plain)),
            ("experimental.envoy.filters.network.mysql_proxy[db.table]", Some(Plain)),
            ("request.method", None),
            ("source.user", None),
        ] {
            assert_eq!(attribute_kind(key), kind, "{key}");
        }
    }

    #[test]
    fn service_accounts_and_ports() {
        assert_eq!(service_account("default/sleep"), Ok(()));
        for bad in ["sleep", "default/*", "/sleep", "a/b/c", "default/"] {
            assert!(service_account(bad).is_err(), "{bad}");
        }
        assert_eq!(port_text("8080"), Ok(()));
        for bad in ["0", "65536", "http", "-1", ""] {
            assert!(port_text(bad).is_err(), "{bad}");
        }
        assert_eq!(http_token("X-Jwt-Claim"), Ok(()));
        assert!(http_token("bad header").is_err());
        assert!(http_token("x:y").is_err());
    }
}
