//! Fields of the current upstream Istio API that Rudder used to reject as unknown (those newer
//! than the pinned list, and those added to reach 100 % in `api/coverage.md`): each one decodes,
//! round-trips where it says so, and is validated with errors naming its field path. Every case
//! is one document and the exact errors it must produce (empty for a good value).

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

fn destination_rule(traffic_policy: &str) -> String {
    let body: String = traffic_policy.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: dr\n  namespace: ns\nspec:\n  host: svc.ns.svc.cluster.local\n  trafficPolicy:\n{body}"
    )
}

fn virtual_service(routes: &str) -> String {
    let body: String = routes.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: vs\n  namespace: ns\nspec:\n  hosts: [svc]\n{body}"
    )
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
fn destination_rule_load_balancer_fields() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "backendUtilization alone",
            destination_rule("loadBalancer:\n  backendUtilization: {blackoutPeriod: 30s}"),
            &[],
        ),
        ("backendUtilization empty", destination_rule("loadBalancer:\n  backendUtilization: {}"), &[]),
        (
            "backendUtilization blackout off",
            destination_rule("loadBalancer:\n  backendUtilization: {blackoutPeriod: 0s}"),
            &[],
        ),
        (
            "backendUtilization with simple",
            destination_rule("loadBalancer:\n  simple: ROUND_ROBIN\n  backendUtilization: {}"),
            &[
                "spec.trafficPolicy.loadBalancer.backendUtilization: backendUtilization and simple (ROUND_ROBIN) cannot be set together; choose one",
            ],
        ),
        (
            "backendUtilization with consistentHash",
            destination_rule("loadBalancer:\n  consistentHash: {useSourceIp: true}\n  backendUtilization: {}"),
            &[
                "spec.trafficPolicy.loadBalancer.backendUtilization: backendUtilization and consistentHash cannot be set together; choose one",
            ],
        ),
        (
            "backendUtilization sub-millisecond blackout",
            destination_rule("loadBalancer:\n  backendUtilization: {blackoutPeriod: 1500us}"),
            &[
                "spec.trafficPolicy.loadBalancer.backendUtilization.blackoutPeriod: duration 1500us has sub-millisecond precision; only whole milliseconds are supported",
            ],
        ),
        (
            "zoneAwareLbSetting",
            destination_rule(
                "loadBalancer:\n  zoneAwareLbSetting:\n    enabled: true\n    minClusterSize: 3\n    failover: [{from: us-east, to: eu-west}]\n    failoverPriority: [topology.istio.io/network, app=web]",
            ),
            &[],
        ),
        (
            "zoneAwareLbSetting with localityLbSetting",
            destination_rule(
                "loadBalancer:\n  localityLbSetting: {enabled: true}\n  zoneAwareLbSetting: {enabled: true}",
            ),
            &[
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting: zoneAwareLbSetting and localityLbSetting cannot be set together; choose one",
            ],
        ),
        (
            "zoneAwareLbSetting topology labels",
            destination_rule(
                "loadBalancer:\n  zoneAwareLbSetting:\n    failoverPriority: [topology.kubernetes.io/zone, topology.kubernetes.io/region=us, \"\"]",
            ),
            &[
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[0]: topology.kubernetes.io/zone cannot be used in failoverPriority with zone-aware load balancing",
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[1]: topology.kubernetes.io/region cannot be used in failoverPriority with zone-aware load balancing",
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failoverPriority[2]: failoverPriority label must not be empty",
            ],
        ),
        (
            "zoneAwareLbSetting failover to itself and to a zone",
            destination_rule(
                "loadBalancer:\n  zoneAwareLbSetting:\n    failover: [{from: us-east, to: us-east}, {from: us-east, to: eu-west/zone1}]",
            ),
            &[
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[0]: failover from \"us-east\" to itself; from and to must be different regions",
                "spec.trafficPolicy.loadBalancer.zoneAwareLbSetting.failover[1]: failover takes regions only, without zones ('/')",
            ],
        ),
        (
            "unknown field inside backendUtilization",
            destination_rule("loadBalancer:\n  backendUtilization: {blackout: 1s}"),
            &[],
        ),
    ];
    // The last case must fail to decode, naming the field; checked separately below.
    check(&cases[..cases.len() - 1]);
    let unknown = errors(&cases[cases.len() - 1].1);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].contains("spec.trafficPolicy.loadBalancer.backendUtilization") && unknown[0].contains("blackout")
    );
}

#[test]
fn destination_rule_connection_pool_outlier_and_retry_budget_fields() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "http2KeepAlive",
            destination_rule("connectionPool:\n  http:\n    http2KeepAlive: {interval: 30s, timeout: 5s}"),
            &[],
        ),
        (
            "http2KeepAlive interval only",
            destination_rule("connectionPool:\n  http:\n    http2KeepAlive: {interval: 1m}"),
            &[],
        ),
        (
            "http2KeepAlive zero and sub-millisecond",
            destination_rule("connectionPool:\n  http:\n    http2KeepAlive: {interval: 0s, timeout: 100us}"),
            &[
                "spec.trafficPolicy.connectionPool.http.http2KeepAlive.interval: duration 0s must be at least 1ms",
                "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout: duration 100us must be at least 1ms",
            ],
        ),
        (
            "outlierDetectionHttpErrorCodes",
            destination_rule(
                "outlierDetection:\n  consecutive5xxErrors: 3\n  outlierDetectionHttpErrorCodes: [429, 503, 404]",
            ),
            &[],
        ),
        (
            "outlierDetectionHttpErrorCodes out of range and duplicate",
            destination_rule("outlierDetection:\n  outlierDetectionHttpErrorCodes: [99, 600, 500, 500, -1]"),
            &[
                "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[0]: HTTP status code 99 must be in the range 100..599",
                "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]: HTTP status code 600 must be in the range 100..599",
                "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[3]: duplicate HTTP status code 500",
                "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[4]: HTTP status code -1 must be in the range 100..599",
            ],
        ),
        (
            "retryBudget.budgetInterval",
            destination_rule("retryBudget: {percent: 25, minRetryConcurrency: 5, budgetInterval: 10s}"),
            &[],
        ),
        ("retryBudget.budgetInterval zero", destination_rule("retryBudget: {budgetInterval: 0s}"), &[]),
        (
            "retryBudget.budgetInterval sub-millisecond",
            destination_rule("retryBudget: {budgetInterval: 10us}"),
            &["spec.trafficPolicy.retryBudget.budgetInterval: duration 10us must be at least 1ms"],
        ),
        (
            "port-level outlier codes",
            destination_rule(
                "portLevelSettings:\n- port: {number: 80}\n  outlierDetection: {outlierDetectionHttpErrorCodes: [700]}",
            ),
            &[
                "spec.trafficPolicy.portLevelSettings[0].outlierDetection.outlierDetectionHttpErrorCodes[0]: HTTP status code 700 must be in the range 100..599",
            ],
        ),
    ];
    check(cases);
}

#[test]
fn virtual_service_redirect_prefix_rewrite_and_tcp_source_subnet() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "prefixRewrite with a prefix match",
            virtual_service(
                "http:\n- match: [{uri: {prefix: /foo/}}]\n  redirect: {authority: foo.example.com, prefixRewrite: /}",
            ),
            &[],
        ),
        ("prefixRewrite without a match", virtual_service("http:\n- redirect: {prefixRewrite: /v2}"), &[]),
        (
            "prefixRewrite with uri",
            virtual_service("http:\n- match: [{uri: {prefix: /a}}]\n  redirect: {uri: /b, prefixRewrite: /c}"),
            &["spec.http[0].redirect.prefixRewrite: uri and prefixRewrite are mutually exclusive; choose one"],
        ),
        (
            "prefixRewrite with exact and regex matches",
            virtual_service(
                "http:\n- match: [{uri: {exact: /a}}, {uri: {prefix: /b}}, {uri: {regex: /c.*}}, {headers: {x-h: {exact: v}}}]\n  redirect: {prefixRewrite: /d}",
            ),
            &[
                "spec.http[0].match[0].uri: redirect.prefixRewrite needs prefix URI matches, not exact",
                "spec.http[0].match[2].uri: redirect.prefixRewrite needs prefix URI matches, not regex",
            ],
        ),
        (
            "mirrorPercent (deprecated) in range",
            virtual_service(
                "http:\n- route: [{destination: {host: svc}}]\n  mirror: {host: other}\n  mirrorPercent: 50",
            ),
            &[],
        ),
        (
            "mirrorPercent above 100",
            virtual_service(
                "http:\n- route: [{destination: {host: svc}}]\n  mirror: {host: other}\n  mirrorPercent: 150",
            ),
            &["spec.http[0].mirrorPercent: mirrorPercent 150 must be in the range 0..100"],
        ),
        (
            "tcp sourceSubnet",
            virtual_service(
                "tcp:\n- match: [{port: 27017, sourceSubnet: 10.1.0.0/16}, {sourceSubnet: \"2001:db8::1\"}]\n  route: [{destination: {host: svc}}]",
            ),
            &[],
        ),
        (
            "tcp sourceSubnet invalid",
            virtual_service(
                "tcp:\n- match: [{sourceSubnet: 10.1.0.0/40}, {sourceSubnet: nowhere}]\n  route: [{destination: {host: svc}}]",
            ),
            &[
                "spec.tcp[0].match[0].sourceSubnet: \"10.1.0.0/40\" has an invalid prefix length (0..32)",
                "spec.tcp[0].match[1].sourceSubnet: \"nowhere\" is not a valid IP address or CIDR block",
            ],
        ),
    ];
    check(cases);
}

/// The new fields survive decoding and encoding unchanged (the CRD round trip the API server
/// does).
#[test]
fn new_fields_round_trip() {
    for yaml in [
        destination_rule(
            "loadBalancer:\n  backendUtilization: {blackoutPeriod: 30s}\n  zoneAwareLbSetting: {enabled: true, failoverPriority: [a]}\nconnectionPool:\n  http: {http2KeepAlive: {interval: 30s, timeout: 5s}}\noutlierDetection: {outlierDetectionHttpErrorCodes: [429]}\nretryBudget: {budgetInterval: 10s}",
        ),
        virtual_service(
            "http:\n- redirect: {prefixRewrite: /v2}\ntcp:\n- match: [{sourceSubnet: 10.0.0.0/8}]\n  route: [{destination: {host: svc}}]",
        ),
    ] {
        let loads = load_str("case.yaml", &yaml).expect("readable");
        assert!(loads.problems.is_empty(), "{:?}", loads.problems);
        let loaded = &loads.objects[0];
        let spec = |v: &serde_json::Value| v.get("spec").cloned().unwrap_or_default();
        let written = loaded.object.to_value().expect("encodes");
        assert_eq!(spec(&written), spec(&loaded.raw), "{yaml}");
    }
}

// Fields added to reach 100 % of the pinned upstream list.

/// A document of `kind` (`apiVersion` from the group) with `spec` indented under it.
fn doc(api_version: &str, kind: &str, spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: x\n  namespace: ns\nspec:\n{body}")
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
