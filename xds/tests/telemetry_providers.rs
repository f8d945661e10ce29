//! Telemetry extension providers as a sidecar's listeners carry them: gRPC access log services
//! (`envoyHttpAls`, `envoyTcpAls`, `envoyOtelAls`) and tracers (`opentelemetry` over gRPC and
//! HTTP, with resource detectors and the Dynatrace sampler, `datadog`, `skywalking`), each
//! selected by a Telemetry. Per case, the access logs of the
//! inbound HTTP connection manager and tcp_proxy and the HCM's tracing are compared, as protobuf
//! JSON, with `tests/telemetry_providers/<case>.golden.json`
//! (`UPDATE_GOLDEN=1 cargo test -p rudder-xds --test telemetry_providers` rewrites them), and a
//! real Envoy (`--mode validate`) accepts the whole translated config.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use prost::Message;
use prost_reflect::DynamicMessage;
use rudder_xds::model::{Proxy, Snapshot};
use rudder_xds::testing::config_dir_snapshot;
use rudder_xds::translate;

/// The mesh: every provider kind this test covers, one whose service does not exist.
const MESH: &str = r#"
extensionProviders:
- name: http-als
  envoyHttpAls:
    service: als.observability.svc.cluster.local
    port: 9001
    additionalRequestHeadersToLog: [x-tenant]
    additionalResponseHeadersToLog: [x-cache]
- name: tcp-als
  envoyTcpAls: {service: observability/als.observability.svc.cluster.local, port: 9001, logName: tcp-logs}
- name: otel-als
  envoyOtelAls:
    service: otel.observability.svc.cluster.local
    port: 4317
    logFormat:
      text: "%REQ(:METHOD)% %RESPONSE_CODE%"
      labels: {path: "%REQ(:PATH)%", code: "%RESPONSE_CODE%"}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317, maxTagLength: 99}
- name: otel-http
  opentelemetry:
    service: otel.observability.svc.cluster.local
    port: 4318
    http:
      path: /v1/traces
      timeout: 3s
      headers: [{name: x-api-key, value: secret}]
- name: datadog
  datadog: {service: datadog-agent.observability.svc.cluster.local, port: 8126}
- name: skywalking
  skywalking: {service: oap.observability.svc.cluster.local, port: 11800, accessToken: token}
- name: nowhere
  opentelemetry: {service: missing.observability.svc.cluster.local, port: 4317}
- name: nowhere-als
  envoyHttpAls: {service: missing.observability.svc.cluster.local, port: 9001}
- name: dynatrace
  opentelemetry:
    service: otel.observability.svc.cluster.local
    port: 4318
    http:
      path: /api/v2/otlp/v1/traces
      headers:
      - {name: authorization, envName: DT_API_TOKEN}
      - {name: x-unset, envName: RUDDER_TEST_UNSET}
      - {name: x-team, value: mesh}
    resourceDetectors: {environment: {}, dynatrace: {}}
    dynatraceSampler:
      tenant: abc12345
      clusterId: -1743916452
      rootSpansPerMinute: 2000
      httpService:
        service: activegate.dynatrace.svc.cluster.local
        port: 443
        http:
          timeout: 3s
          headers: [{name: authorization, envName: DT_API_TOKEN}]
- name: dynatrace-shared
  opentelemetry:
    service: otel.observability.svc.cluster.local
    port: 4318
    http: {timeout: 5s, headers: [{name: authorization, envName: DT_API_TOKEN}]}
    resourceDetectors: {environment: {}}
    dynatraceSampler: {tenant: abc12345, clusterId: 7}
- name: dynatrace-nowhere
  opentelemetry:
    service: otel.observability.svc.cluster.local
    port: 4318
    http: {}
    dynatraceSampler: {tenant: abc12345, clusterId: 7, httpService: {service: missing.dynatrace.svc.cluster.local, port: 443}}
- name: wrong-namespace-als
  envoyTcpAls: {service: apps/als.observability.svc.cluster.local, port: 9001}
"#;

/// The workload (HTTP 8080, TCP 5432) and the collectors' services.
const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: apps}
spec:
  hosts: [db.apps.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}, {number: 5432, name: tcp-db, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db-1, namespace: apps}
spec: {address: 10.244.0.9, labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: collectors, namespace: observability}
spec:
  hosts: [als.observability.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9001, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.20}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: otel, namespace: observability}
spec:
  hosts: [otel.observability.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 4317, name: grpc-otlp, protocol: GRPC}, {number: 4318, name: http-otlp, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.21}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: datadog, namespace: observability}
spec:
  hosts: [datadog-agent.observability.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8126, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.22}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: oap, namespace: observability}
spec:
  hosts: [oap.observability.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 11800, name: grpc, protocol: GRPC}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.23}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: activegate, namespace: dynatrace}
spec:
  hosts: [activegate.dynatrace.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints: [{address: 10.244.0.24}]
"#;

/// Discovery's environment as the mesh config's `envName` headers read it.
fn environment(name: &str) -> Option<String> {
    (name == "DT_API_TOKEN").then(|| "Api-Token dt0c01.example".to_owned())
}

/// Case name, the Telemetry's `tracing` and `accessLogging` entries.
const CASES: &[(&str, &str, &str)] = &[
    (
        "grpc-access-logs",
        "[{providers: [{name: otel}]}]",
        r#"[{providers: [{name: http-als}, {name: tcp-als}, {name: otel-als}], filter: {expression: "response.code >= 400"}}]"#,
    ),
    ("otel-http-tracer", "[{providers: [{name: otel-http}], randomSamplingPercentage: 50}]", "[]"),
    ("datadog-tracer", "[{providers: [{name: datadog}]}]", "[]"),
    ("skywalking-tracer", "[{providers: [{name: skywalking}]}]", "[]"),
    ("otel-dynatrace", "[{providers: [{name: dynatrace}], randomSamplingPercentage: 10}]", "[]"),
    ("otel-dynatrace-shared", "[{providers: [{name: dynatrace-shared}]}]", "[]"),
    (
        "missing-services",
        "[{providers: [{name: nowhere}]}]",
        "[{providers: [{name: nowhere-als}, {name: wrong-namespace-als}]}]",
    ),
];

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/telemetry_providers")
}

fn snapshot(telemetry: &str) -> Snapshot {
    let mut mesh = rudder_config::mesh::apply_yaml_over_defaults(MESH).unwrap();
    // As discovery does where it loads the mesh config: one header's variable is not set.
    let unresolved = mesh.resolve_header_env(environment);
    assert_eq!(unresolved.iter().map(|u| u.variable.as_str()).collect::<Vec<_>>(), ["RUDDER_TEST_UNSET"]);
    config_dir_snapshot(&[("config.yaml", CONFIG), ("telemetry.yaml", telemetry)], mesh)
}

fn proxy() -> Proxy {
    let meta = serde_json::from_value::<BTreeMap<String, serde_json::Value>>(serde_json::json!({
        "LABELS": {"app": "db"},
    }))
    .unwrap();
    Proxy::from_node("sidecar~10.244.0.9~db-1.apps~apps.svc.cluster.local", &meta).unwrap()
}

fn json<M: Message>(type_name: &str, message: &M) -> serde_json::Value {
    let desc = rudder_config::envoy_proto::descriptor(type_name).unwrap();
    serde_json::to_value(DynamicMessage::decode(desc, message.encode_to_vec().as_slice()).unwrap()).unwrap()
}

/// The access logs (without the metrics' stats logs) and tracing of the inbound HTTP
/// connection manager of port 8080 and the tcp_proxy of port 5432.
fn telemetry_of(listeners: &[envoy_types::pb::envoy::config::listener::v3::Listener]) -> serde_json::Value {
    let mut hcm = None;
    let mut tcp = None;
    for listener in listeners.iter().filter(|l| l.name == "virtualInbound") {
        for chain in &listener.filter_chains {
            let port = chain.filter_chain_match.as_ref().and_then(|m| m.destination_port).map(|p| p.value);
            for filter in &chain.filters {
                let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else { continue };
                match (port, any.type_url.rsplit('/').next().unwrap()) {
                    (
                        Some(8080),
                        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    ) => {
                        hcm.get_or_insert(HttpConnectionManager::decode(any.value.as_slice()).unwrap());
                    }
                    (Some(5432), "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy") => {
                        tcp.get_or_insert(TcpProxy::decode(any.value.as_slice()).unwrap());
                    }
                    _ => {}
                }
            }
        }
    }
    let hcm = hcm.expect("an inbound HTTP connection manager for port 8080");
    let tcp = tcp.expect("an inbound tcp_proxy for port 5432");
    let logs = |logs: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog]| -> Vec<serde_json::Value> {
        logs.iter()
            .filter(|l| l.name != translate::telemetry::STATS_ACCESS_LOG)
            .map(|l| json("envoy.config.accesslog.v3.AccessLog", l))
            .collect()
    };
    let tracing = hcm.tracing.as_ref().and_then(|t| t.provider.as_ref()).map(|p| {
        serde_json::json!({
            "provider": json("envoy.config.trace.v3.Tracing.Http", p),
            "randomSampling": hcm.tracing.as_ref().unwrap().random_sampling.as_ref().map(|r| r.value),
            "maxPathTagLength": hcm.tracing.as_ref().unwrap().max_path_tag_length.as_ref().map(|m| m.value),
        })
    });
    serde_json::json!({
        "httpAccessLogs": logs(&hcm.access_log),
        "tcpAccessLogs": logs(&tcp.access_log),
        "tracing": tracing,
    })
}

#[test]
fn telemetry_provider_goldens() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for (case, tracing, logging) in CASES {
        let telemetry = format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  tracing: {tracing}\n  accessLogging: {logging}\n"
        );
        let snapshot = snapshot(&telemetry);
        assert_eq!(snapshot.telemetries.len(), 1, "{case}: the Telemetry was read");
        let translated = translate::for_proxy(&snapshot, &proxy());
        let got = telemetry_of(&translated.listeners);
        let golden = cases_dir().join(format!("{case}.golden.json"));
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(cases_dir()).unwrap();
            std::fs::write(&golden, &text).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            failures.push(format!("{case}: differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{text}", golden.display()));
        }
        if let Err(e) = rudder_xds::testing::envoy_accepts(translated.clusters, translated.listeners) {
            failures.push(format!("{case}: Envoy refuses the config: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the goldens must show, so a golden rewritten by mistake still fails: each provider
/// reaches its Envoy extension, on the chains Istio puts it on, and nothing is made for a
/// service the registry lacks.
#[test]
fn providers_reach_their_envoy_extensions() {
    let translated = |tracing: &str, logging: &str| {
        let telemetry = format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  tracing: {tracing}\n  accessLogging: {logging}\n"
        );
        telemetry_of(&translate::for_proxy(&snapshot(&telemetry), &proxy()).listeners)
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap().to_owned()).collect()
    };
    let (_, tracing, logging) = CASES[0];
    let got = translated(tracing, logging);
    assert_eq!(
        names(&got["httpAccessLogs"]),
        ["envoy.access_loggers.http_grpc", "envoy.access_loggers.open_telemetry"]
    );
    assert_eq!(names(&got["tcpAccessLogs"]), ["envoy.access_loggers.open_telemetry", "envoy.access_loggers.tcp_grpc"]);
    let http = &got["httpAccessLogs"][0]["typedConfig"];
    assert_eq!(http["commonConfig"]["logName"], "http_envoy_accesslog");
    assert_eq!(
        http["commonConfig"]["grpcService"]["envoyGrpc"]["clusterName"],
        "outbound|9001||als.observability.svc.cluster.local"
    );
    assert_eq!(http["additionalRequestHeadersToLog"], serde_json::json!(["x-tenant"]));
    let otel = &got["httpAccessLogs"][1]["typedConfig"];
    assert_eq!(otel["body"]["stringValue"], "%REQ(:METHOD)% %RESPONSE_CODE%");
    assert_eq!(otel["attributes"]["values"][0]["key"], "code");
    assert!(got["httpAccessLogs"][0]["filter"].to_string().contains("response.code >= 400"));
    let tracer = &got["tracing"]["provider"];
    assert_eq!(tracer["name"], "envoy.tracers.opentelemetry");
    assert_eq!(got["tracing"]["maxPathTagLength"], 99);
    assert_eq!(tracer["typedConfig"]["serviceName"], "db.apps");
    assert_eq!(
        tracer["typedConfig"]["grpcService"]["envoyGrpc"]["clusterName"],
        "outbound|4317||otel.observability.svc.cluster.local"
    );
    let http = translated("[{providers: [{name: otel-http}]}]", "[]");
    let uri = &http["tracing"]["provider"]["typedConfig"]["httpService"]["httpUri"];
    assert_eq!(uri["uri"], "otel.observability.svc.cluster.local/v1/traces");
    assert_eq!(uri["cluster"], "outbound|4318||otel.observability.svc.cluster.local");
    let datadog = translated("[{providers: [{name: datadog}]}]", "[]");
    assert_eq!(datadog["tracing"]["provider"]["name"], "envoy.tracers.datadog");
    let skywalking = translated("[{providers: [{name: skywalking}]}]", "[]");
    assert_eq!(skywalking["tracing"]["provider"]["typedConfig"]["clientConfig"]["backendToken"], "token");
    let missing = translated(
        "[{providers: [{name: nowhere}]}]",
        "[{providers: [{name: nowhere-als}, {name: wrong-namespace-als}]}]",
    );
    assert_eq!(missing["tracing"], serde_json::Value::Null);
    assert_eq!(missing["httpAccessLogs"], serde_json::json!([]));
    assert_eq!(missing["tcpAccessLogs"], serde_json::json!([]));
    let tcp = got["tcpAccessLogs"].as_array().unwrap().iter().find(|l| l["name"] == "envoy.access_loggers.tcp_grpc");
    assert_eq!(tcp.unwrap()["typedConfig"]["commonConfig"]["logName"], "tcp-logs");
    assert_eq!(otel["disableBuiltinLabels"], true);
    // A Sidecar whose egress leaves the collectors out: the proxy has no cluster to them, so
    // neither tracer nor gRPC logs.
    let telemetry = format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  tracing: {tracing}\n  accessLogging: {logging}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: apps}}\nspec:\n  egress: [{{hosts: [./*]}}]\n"
    );
    let scoped = telemetry_of(&translate::for_proxy(&snapshot(&telemetry), &proxy()).listeners);
    assert_eq!(scoped["tracing"], serde_json::Value::Null);
    assert_eq!(scoped["httpAccessLogs"], serde_json::json!([]));
    assert_eq!(scoped["tcpAccessLogs"], serde_json::json!([]));
}

/// The OpenTelemetry tracer's resource detectors and Dynatrace sampler, and header values from
/// discovery's environment, as the goldens must show them.
#[test]
fn opentelemetry_detectors_sampler_and_environment_headers() {
    let tracing = |providers: &str| {
        let telemetry = format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh, namespace: istio-system}}\nspec:\n  tracing: [{{providers: [{{name: {providers}}}], randomSamplingPercentage: 10}}]\n"
        );
        telemetry_of(&translate::for_proxy(&snapshot(&telemetry), &proxy()).listeners)["tracing"].clone()
    };
    let headers = |service: &serde_json::Value| -> Vec<(String, String)> {
        service["requestHeadersToAdd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (h["header"]["key"].as_str().unwrap().to_owned(), h["header"]["value"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());

    let got = tracing("dynatrace");
    let config = &got["provider"]["typedConfig"];
    let detectors: Vec<&str> =
        config["resourceDetectors"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        detectors,
        [
            "envoy.tracers.opentelemetry.resource_detectors.environment",
            "envoy.tracers.opentelemetry.resource_detectors.dynatrace"
        ]
    );
    assert_eq!(
        config["resourceDetectors"][0]["typedConfig"]["@type"],
        "type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig"
    );
    // The exporter's headers: the variable's value, the literal one; the unset one left out.
    assert_eq!(
        headers(&config["httpService"]),
        [pair("authorization", "Api-Token dt0c01.example"), pair("x-team", "mesh")]
    );
    let sampler = &config["sampler"];
    assert_eq!(sampler["name"], "envoy.tracers.opentelemetry.samplers.dynatrace");
    let dt = &sampler["typedConfig"];
    assert_eq!(dt["tenant"], "abc12345");
    assert_eq!(dt["clusterId"], -1_743_916_452);
    assert_eq!(dt["rootSpansPerMinute"], 2000);
    let uri = &dt["httpService"]["httpUri"];
    assert_eq!(uri["uri"], "activegate.dynatrace.svc.cluster.local/api/v2/samplingConfiguration");
    assert_eq!(uri["cluster"], "outbound|443||activegate.dynatrace.svc.cluster.local");
    assert_eq!(uri["timeout"], "3s");
    assert_eq!(headers(&dt["httpService"]), [pair("authorization", "Api-Token dt0c01.example")]);
    // The sampler decides: every request is offered to it, whatever the Telemetry's percentage.
    assert_eq!(got["randomSampling"], 100.0);

    // Without httpService the sampler reads from the exporter's service, with its timeout and
    // headers.
    let shared = tracing("dynatrace-shared");
    let config = &shared["provider"]["typedConfig"];
    assert_eq!(config["resourceDetectors"].as_array().unwrap().len(), 1);
    let service = &config["sampler"]["typedConfig"]["httpService"];
    assert_eq!(service["httpUri"]["uri"], "otel.observability.svc.cluster.local/api/v2/samplingConfiguration");
    assert_eq!(service["httpUri"]["cluster"], "outbound|4318||otel.observability.svc.cluster.local");
    assert_eq!(service["httpUri"]["timeout"], "5s");
    assert_eq!(headers(service), [pair("authorization", "Api-Token dt0c01.example")]);
    assert_eq!(config["sampler"]["typedConfig"]["rootSpansPerMinute"], serde_json::Value::Null, "Envoy's default");
    assert_eq!(config["httpService"]["httpUri"]["uri"], "otel.observability.svc.cluster.local/v1/traces");

    // A sampler whose service the registry lacks: no tracing, as in Istio.
    assert_eq!(tracing("dynatrace-nowhere"), serde_json::Value::Null);
    // Without a sampler the Telemetry's percentage stands.
    assert_eq!(tracing("otel-http")["randomSampling"], 10.0);
}
