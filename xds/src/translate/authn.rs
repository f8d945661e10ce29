//! RequestAuthentication → Envoy's JWT filter, for the workloads a policy applies to (selector,
//! namespace, mesh root namespace, as for AuthorizationPolicy).
//!
//! As Istio documents it: a request without a token passes (an AuthorizationPolicy asking for
//! `requestPrincipals` is what turns it away); a request with a token that no rule of the
//! workload validates (wrong signature, expired, wrong issuer or audience) gets 401. Every
//! rule is one provider: its issuer, audiences, keys (`jwks` inline, or the `jwksUri` document
//! discovery fetched, see `crate::registry::jwks`), where the token is read from
//! (`fromHeaders`, `fromParams`, `fromCookies`; default the `Authorization: Bearer` header and
//! the `access_token` parameter), `forwardOriginalToken`, `outputPayloadToHeader` and
//! `outputClaimToHeaders`. The verified payload goes into dynamic metadata, where the RBAC
//! filters read request principals and claims ([`super::authz`]); there the space-separated
//! claims `scope`, `permission` and the rule's `spaceDelimitedClaims` are lists, as in Istio.
//!
//! A rule whose keys are not (yet) known gets a key nothing was signed with: its tokens are
//! refused rather than accepted unverified.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::RouteMatch;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement, JwtRequirementOrList, RequirementRule,
    jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::google::protobuf::{Any, Empty};
use rudder_config::security::{JwtRule, RequestAuthentication};

use super::authz::{JWT_FILTER, JWT_PAYLOAD, encode_sorted_map, selects};
use crate::model::{Proxy, Snapshot};

/// Claims Istio always splits on spaces in the verified payload (OAuth scopes and the like).
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];
const JWT_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// A P-256 public key no one holds the private half of: the keys of a rule whose real keys
/// are unknown, so its tokens fail verification.
const NO_KEYS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"rudder-no-key","alg":"ES256","x":"GW5zgilQRO-6r8L760rlYcCoUYK2s-aUe78iXDOKkdY","y":"X4pS6rqDk0iRd9IEOY6BldYwHRyIves4B7XZVtgEY0A"}]}"#;

/// The JWT filter for `proxy`, if any RequestAuthentication applies to it.
pub fn http_filter(snapshot: &Snapshot, proxy: &Proxy) -> Option<HttpFilter> {
    let mut providers = BTreeMap::new();
    for policy in snapshot.request_authentications.iter().map(AsRef::as_ref) {
        if !applies(snapshot, policy, proxy) {
            continue;
        }
        let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        for (i, rule) in policy.spec.jwt_rules.iter().enumerate() {
            providers.insert(format!("{namespace}/{name}/{i}"), provider(snapshot, rule));
        }
    }
    if providers.is_empty() {
        return None;
    }
    let mut requirements: Vec<JwtRequirement> = providers
        .keys()
        .map(|name| JwtRequirement { requires_type: Some(jwt_requirement::RequiresType::ProviderName(name.clone())) })
        .collect();
    requirements.push(JwtRequirement { requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})) });
    let rule = RequirementRule {
        r#match: Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".to_owned())), ..Default::default() }),
        requirement_type: Some(requirement_rule::RequirementType::Requires(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAny(JwtRequirementOrList { requirements })),
        })),
    };
    let base = JwtAuthentication { rules: vec![rule], ..Default::default() };
    let config = encode_sorted_map(&base, 1, &providers);
    Some(HttpFilter {
        name: JWT_FILTER.to_owned(),
        config_type: Some(ConfigType::TypedConfig(Any { type_url: JWT_FILTER_TYPE.to_owned(), value: config })),
        ..Default::default()
    })
}

fn applies(snapshot: &Snapshot, policy: &RequestAuthentication, proxy: &Proxy) -> bool {
    let spec = &policy.spec;
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    match (&spec.target_ref, spec.target_refs.is_empty()) {
        (None, true) => selects(snapshot, namespace, spec.selector.as_ref(), proxy),
        (target, _) => super::context::targets_proxy(namespace, target.iter().chain(&spec.target_refs), proxy),
    }
}

fn provider(snapshot: &Snapshot, rule: &JwtRule) -> JwtProvider {
    let keys = if !rule.jwks.trim().is_empty() {
        rule.jwks.clone()
    } else if let Some(fetched) = snapshot.jwks.get(rule.jwks_uri()) {
        fetched.to_string()
    } else {
        if !rule.jwks_uri().is_empty() {
            tracing::debug!(uri = %rule.jwks_uri(), issuer = %rule.issuer, "JWKS not fetched (yet); tokens of this issuer are refused");
        }
        NO_KEYS.to_owned()
    };
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader { name: h.name.clone(), value_prefix: h.prefix.clone() })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone(),
        payload_in_metadata: JWT_PAYLOAD.to_owned(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(keys)),
            ..Default::default()
        })),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: space_delimited_claims(rule),
        }),
        ..Default::default()
    }
}

/// `scope` and `permission`, then the rule's own space-delimited claims, each once.
fn space_delimited_claims(rule: &JwtRule) -> Vec<String> {
    let mut claims: Vec<String> = SPACE_DELIMITED_CLAIMS.iter().map(|c| (*c).to_owned()).collect();
    for claim in &rule.space_delimited_claims {
        if !claim.is_empty() && !claims.contains(claim) {
            claims.push(claim.clone());
        }
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_delimited_claims_add_to_istios_defaults() {
        let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec![], vec!["scope", "permission"]),
            (vec!["roles"], vec!["scope", "permission", "roles"]),
            (vec!["scope", "groups", "groups"], vec!["scope", "permission", "groups"]),
        ];
        for (given, want) in cases {
            let rule = JwtRule {
                space_delimited_claims: given.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            };
            assert_eq!(space_delimited_claims(&rule), want, "{given:?}");
        }
    }

    #[test]
    fn the_protobuf_name_of_jwks_uri_finds_the_fetched_keys() {
        let mut snapshot = Snapshot::default();
        let uri = "https://issuer.example/jwks.json";
        snapshot.jwks.insert(uri.to_owned(), r#"{"keys":[]}"#.into());
        let rule = JwtRule { issuer: "issuer.example".into(), jwks_uri_proto_name: uri.into(), ..Default::default() };
        let provider = provider(&snapshot, &rule);
        let Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(keys)),
            ..
        })) = provider.jwks_source_specifier
        else {
            panic!("inline keys expected");
        };
        assert_eq!(keys, r#"{"keys":[]}"#);
        assert_eq!(
            provider.normalize_payload_in_metadata.map(|n| n.space_delimited_claims),
            Some(vec!["scope".to_owned(), "permission".to_owned()])
        );
    }
}
