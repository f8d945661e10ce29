//! The upstream fields added to reach 100 % in `api/coverage.md`: each decodes, and is validated
//! with errors naming its field path. Every case is one document and the exact errors it must
//! produce (empty for a good value).

use rudder_config::load::{Problem, load_str};
use rudder_config::{Severity, Validate};

/// Errors (decode problems included) of one YAML document, as `PATH: MESSAGE`.
fn errors(yaml: &str) -> Vec<String> {
    let loads = load_str("case.yaml", yaml).expect("readable YAML");
    let mut out: Vec<String> = loads
        .problems
        .iter()
        .map(|p| match p {
            Problem::Decode { error, .. } => error.to_string(),
            other => other.to_string(),
        })
        .collect();
    for loaded in &loads.objects {
        for item in loaded.object.report().items {
            if item.severity == Severity::Error {
                out.push(format!("{}: {}", item.path, item.message));
            }
        }
    }
    out
}

/// A document of `kind` (`apiVersion` from the group) with `spec` indented under it.
fn doc(api_version: &str, kind: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: x\n  namespace: ns\nspec:\n{body}")
}

fn check(cases: &[(&str, String, &[&str])]) {
    let mut failures = Vec::new();
    for (name, yaml, want) in cases {
        let got = errors(yaml);
        if got != *want {
            failures.push(format!("{name}:\n  want {want:#?}\n  got  {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn virtual_service_mirror_percent_under_its_protobuf_name() {
    let vs = |extra: &str| {
        doc(
            "networking.istio.io/v1",
            "VirtualService",
            &format!(
                "hosts: [svc]\nhttp:\n- route: [{{destination: {{host: svc}}}}]\n  mirror: {{host: other}}\n{extra}"
            ),
        )
    };
    check(&[
        ("mirror_percent alone", vs("  mirror_percent: 40"), &[]),
        (
            "mirror_percent out of range",
            vs("  mirror_percent: 150"),
            &["spec.http[0].mirror_percent: mirrorPercent 150 must be in the range 0..100"],
        ),
        (
            "both spellings",
            vs("  mirror_percent: 40\n  mirrorPercent: 40"),
            &[
                "spec.http[0].mirror_percent: mirror_percent is mirrorPercent under its protobuf name; set only one of them",
            ],
        ),
    ]);
}

#[test]
fn request_authentication_jwks_uri_and_space_delimited_claims() {
    let ra = |rule: &str| doc("security.istio.io/v1", "RequestAuthentication", &format!("jwtRules:\n- {rule}"));
    check(&[
        ("jwks_uri alone", ra("jwks_uri: https://issuer.example/keys"), &[]),
        (
            "jwks_uri checked like jwksUri",
            ra("jwks_uri: ftp://issuer.example/keys"),
            &[
                "spec.jwtRules[0].jwks_uri: jwksUri \"ftp://issuer.example/keys\" is invalid: scheme \"ftp\" is not supported (http or https)",
            ],
        ),
        (
            "both spellings",
            ra("{jwks_uri: https://a.example/k, jwksUri: https://a.example/k}"),
            &["spec.jwtRules[0].jwks_uri: jwks_uri is jwksUri under its protobuf name; set only one of them"],
        ),
        ("space-delimited claims", ra("{issuer: a, spaceDelimitedClaims: [roles, groups]}"), &[]),
        (
            "empty claim name",
            ra("{issuer: a, spaceDelimitedClaims: [roles, \"\"]}"),
            &["spec.jwtRules[0].spaceDelimitedClaims[1]: claim name must not be empty"],
        ),
    ]);
}

#[test]
fn telemetry_formatter_tags_and_istio_tags() {
    let tracing = |tags: &str| doc("telemetry.istio.io/v1", "Telemetry", &format!("tracing:\n- {tags}"));
    let bad_format = |value: &str, at: &str| {
        format!(
            "spec.tracing[0].customTags[{at}].formatter.value: format {value:?} is invalid: every % must open a command closed by %, e.g. %REQ(x-user)% or %RESPONSE_CODE%"
        )
    };
    check(&[
        ("enableIstioTags", tracing("enableIstioTags: false"), &[]),
        (
            "formatter commands",
            tracing(r#"customTags: {a: {formatter: {value: "%REQ(x-user):10% on %ROUTE_NAME% 100% sure"}}}"#),
            &[&bad_format("%REQ(x-user):10% on %ROUTE_NAME% 100% sure", "a")],
        ),
        (
            "good formatters",
            tracing(
                r#"customTags: {a: {formatter: {value: "%REQ(x-user):10%/%ROUTE_NAME%"}}, b: {formatter: {value: "plain"}}, c: {formatter: {value: "%CEL(size(request.path))%"}}}"#,
            ),
            &[],
        ),
        (
            "unterminated command",
            tracing(r#"customTags: {a: {formatter: {value: "%REQ(x"}}}"#),
            &[&bad_format("%REQ(x", "a")],
        ),
        (
            "empty formatter",
            tracing("customTags: {a: {formatter: {}}}"),
            &["spec.tracing[0].customTags[a].formatter.value: formatter value must not be empty"],
        ),
    ]);
    // A tag takes one source only.
    let two = errors(&tracing(r#"customTags: {a: {formatter: {value: x}, literal: {value: y}}}"#));
    assert_eq!(two.len(), 1, "{two:?}");
    assert!(two[0].contains("spec.tracing[0].customTags.a"), "{two:?}");
}

#[test]
fn gateway_ca_cert_credential_name() {
    let gw = |tls: &str| {
        doc(
            "networking.istio.io/v1",
            "Gateway",
            &format!(
                "selector: {{istio: ingressgateway}}\nservers:\n- port: {{number: 443, name: https, protocol: HTTPS}}\n  hosts: [\"*\"]\n  tls: {tls}"
            ),
        )
    };
    check(&[
        (
            "MUTUAL with a credential and a CA credential",
            gw("{mode: MUTUAL, credentialName: c, caCertCredentialName: ca}"),
            &[],
        ),
        (
            "MUTUAL with files and a CA credential",
            gw("{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertCredentialName: ca}"),
            &[],
        ),
        (
            "MUTUAL with files and no CA",
            gw("{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem}"),
            &[
                "spec.servers[0].tls.caCertificates: MUTUAL TLS needs caCertificates (or credentialName) to verify clients",
            ],
        ),
        (
            "both CA sources",
            gw(
                "{mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, caCertCredentialName: ca}",
            ),
            &[
                "spec.servers[0].tls.caCertCredentialName: only one of caCertificates and caCertCredentialName may be set",
            ],
        ),
        (
            "ISTIO_MUTUAL",
            gw("{mode: ISTIO_MUTUAL, caCertCredentialName: ca}"),
            &[
                "spec.servers[0].tls.caCertCredentialName: caCertCredentialName must not be set with ISTIO_MUTUAL, which uses Istio's own certificates",
            ],
        ),
        ("SIMPLE ignores it (a warning)", gw("{mode: SIMPLE, credentialName: c, caCertCredentialName: ca}"), &[]),
    ]);
}

#[test]
fn envoy_filter_waypoint_match() {
    let ef = |apply_to: &str, m: &str| {
        doc(
            "networking.istio.io/v1alpha3",
            "EnvoyFilter",
            &format!(
                "configPatches:\n- applyTo: {apply_to}\n  match: {m}\n  patch: {{operation: MERGE, value: {{a: 1}}}}"
            ),
        )
    };
    let p = "spec.configPatches[0].match";
    check(&[
        ("filter", ef("NETWORK_FILTER", "{waypoint: {filter: {name: envoy.filters.network.tcp_proxy}}}"), &[]),
        ("route", ef("HTTP_ROUTE", "{waypoint: {route: {name: default}, portNumber: 8080}}"), &[]),
        (
            "with a listener match",
            ef("HTTP_FILTER", "{waypoint: {}, listener: {}}"),
            &[&format!("{p}: only one of listener, routeConfiguration, cluster or waypoint may be set")],
        ),
        (
            "filter for a cluster",
            ef("CLUSTER", "{waypoint: {filter: {name: envoy.filters.network.tcp_proxy}}}"),
            &[&format!(
                "{p}.waypoint.filter: a waypoint filter match applies with applyTo NETWORK_FILTER or HTTP_FILTER, not CLUSTER"
            )],
        ),
        (
            "route for a filter",
            ef("HTTP_FILTER", "{waypoint: {route: {name: r}}}"),
            &[&format!("{p}.waypoint.route: a waypoint route match applies with applyTo HTTP_ROUTE, not HTTP_FILTER")],
        ),
        (
            "sub-filter of a network filter, no names, port 0",
            ef("HTTP_FILTER", "{waypoint: {filter: {subFilter: {}}, portNumber: 0}}"),
            &[
                &format!("{p}.waypoint.filter.name: a filter match needs the name of the filter"),
                &format!("{p}.waypoint.filter.subFilter.name: a subFilter match needs the name of the HTTP filter"),
                &format!("{p}.waypoint.portNumber: port number 0 must be in the range 1..65535"),
            ],
        ),
    ]);
}
