//! Fields of the current upstream Istio API that Rudder used to reject as unknown: each one
//! decodes, round-trips, and is validated with errors naming its field path.
//!
//! Every case is a DestinationRule `trafficPolicy` or a VirtualService `http`/`tcp` entry, and
//! the exact errors it must produce (empty for a good value).

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
                "loadBalancer:\n  zoneAwareLbSetting:\n    enabled: true\n    failover: [{from: us-east, to: eu-west}]\n    failoverPriority: [topology.istio.io/network, app=web]",
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
