//! What `rudder proxy-config` shows: a proxy's own Envoy config dump (`/config_dump?include_eds`)
//! read into its clusters, listeners, routes, endpoints and secrets, filtered as istioctl's
//! flags filter them, and printed as istioctl's short tables or as the raw objects. Pure: the
//! dump in, text out; the verb fetches the dump.

use serde_json::Value;

use crate::proxy_status::aligned;

/// Which part of the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
    Secret,
    All,
}

impl std::str::FromStr for Section {
    type Err = String;

    /// The names istioctl accepts, singular and short forms included.
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "clusters" | "cluster" | "c" => Section::Clusters,
            "listeners" | "listener" | "l" => Section::Listeners,
            "routes" | "route" | "r" => Section::Routes,
            "endpoints" | "endpoint" | "ep" => Section::Endpoints,
            "secret" | "secrets" | "s" => Section::Secret,
            "all" => Section::All,
            other => return Err(format!("{other:?}: expected clusters, listeners, routes, endpoints, secret or all")),
        })
    }
}

/// istioctl's filters; unset ones match everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Listener, route configuration or secret name; cluster name for endpoints.
    pub name: Option<String>,
    pub port: Option<u32>,
    /// Service host of `outbound|port|subset|host` clusters (and of endpoints).
    pub fqdn: Option<String>,
    pub subset: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
}

/// The objects of one section: Envoy's JSON (`Cluster`, `Listener`, `RouteConfiguration`,
/// `ClusterLoadAssignment`, `Secret`), in dump order, after `filter`.
pub fn objects(dump: &Value, section: Section, filter: &Filter) -> Vec<Value> {
    match section {
        Section::Clusters => clusters(dump).into_iter().filter(|c| cluster_matches(c, filter)).collect(),
        Section::Listeners => listeners(dump).into_iter().filter(|l| listener_matches(l, filter)).collect(),
        Section::Routes => routes(dump).into_iter().filter(|r| name_matches(r, filter)).collect(),
        Section::Endpoints => endpoints(dump).into_iter().filter(|e| endpoint_matches(e, filter)).collect(),
        Section::Secret => secrets(dump).into_iter().filter(|s| name_matches(s, filter)).collect(),
        Section::All => [Section::Clusters, Section::Listeners, Section::Routes, Section::Endpoints, Section::Secret]
            .into_iter()
            .flat_map(|s| objects(dump, s, filter))
            .collect(),
    }
}

/// The config dump entries of one `@type` (`…ClustersConfigDump`, …).
fn dump_of<'d>(dump: &'d Value, kind: &str) -> Option<&'d Value> {
    // By the last segment: `ScopedRoutesConfigDump` also ends with `RoutesConfigDump`.
    dump["configs"].as_array()?.iter().find(|c| c["@type"].as_str().is_some_and(|t| t.rsplit('.').next() == Some(kind)))
}

fn each<'d>(list: &'d Value, key: &str) -> impl Iterator<Item = Value> + 'd {
    let key = key.to_owned();
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(move |entry| key.split('.').try_fold(entry, |v, k| v.get(k)).filter(|v| !v.is_null()).cloned())
}

fn clusters(dump: &Value) -> Vec<Value> {
    let Some(d) = dump_of(dump, "ClustersConfigDump") else { return Vec::new() };
    each(&d["static_clusters"], "cluster").chain(each(&d["dynamic_active_clusters"], "cluster")).collect()
}

fn listeners(dump: &Value) -> Vec<Value> {
    let Some(d) = dump_of(dump, "ListenersConfigDump") else { return Vec::new() };
    each(&d["static_listeners"], "listener").chain(each(&d["dynamic_listeners"], "active_state.listener")).collect()
}

fn routes(dump: &Value) -> Vec<Value> {
    let Some(d) = dump_of(dump, "RoutesConfigDump") else { return Vec::new() };
    each(&d["static_route_configs"], "route_config").chain(each(&d["dynamic_route_configs"], "route_config")).collect()
}

fn endpoints(dump: &Value) -> Vec<Value> {
    let Some(d) = dump_of(dump, "EndpointsConfigDump") else { return Vec::new() };
    each(&d["static_endpoint_configs"], "endpoint_config")
        .chain(each(&d["dynamic_endpoint_configs"], "endpoint_config"))
        .collect()
}

fn secrets(dump: &Value) -> Vec<Value> {
    let Some(d) = dump_of(dump, "SecretsConfigDump") else { return Vec::new() };
    each(&d["static_secrets"], "secret")
        .chain(each(&d["dynamic_active_secrets"], "secret"))
        .chain(each(&d["dynamic_warming_secrets"], "secret"))
        .collect()
}

/// `(direction, port, subset, host)` of an Istio cluster name; other names have no parts.
fn cluster_parts(name: &str) -> Option<(&str, &str, &str, &str)> {
    match name.split('|').collect::<Vec<_>>().as_slice() {
        [direction, port, subset, host] => Some((direction, port, subset, host)),
        _ => None,
    }
}

fn text<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or_default()
}

fn cluster_matches(cluster: &Value, f: &Filter) -> bool {
    cluster_name_matches(text(cluster, "name"), f)
}

fn cluster_name_matches(name: &str, f: &Filter) -> bool {
    let (direction, port, subset, host) = cluster_parts(name).unwrap_or(("", "", "", name));
    f.fqdn.as_ref().is_none_or(|q| host == q || name == q)
        && f.port.is_none_or(|p| port == p.to_string())
        && f.subset.as_ref().is_none_or(|s| subset == s)
        && f.direction.as_ref().is_none_or(|d| direction == d)
        && f.name.as_ref().is_none_or(|n| name == n)
}

fn listener_port(listener: &Value) -> Option<u64> {
    listener["address"]["socket_address"]["port_value"].as_u64()
}

fn listener_matches(listener: &Value, f: &Filter) -> bool {
    f.port.is_none_or(|p| listener_port(listener) == Some(u64::from(p)))
        && f.name.as_ref().is_none_or(|n| text(listener, "name") == n)
        && f.direction.as_ref().is_none_or(|d| text(listener, "traffic_direction").eq_ignore_ascii_case(d))
}

fn name_matches(object: &Value, f: &Filter) -> bool {
    f.name.as_ref().is_none_or(|n| text(object, "name") == n)
}

fn endpoint_matches(assignment: &Value, f: &Filter) -> bool {
    cluster_name_matches(text(assignment, "cluster_name"), f)
}

/// istioctl's short table for `section` (for `all`, one table per section, each titled).
pub fn short(dump: &Value, section: Section, filter: &Filter) -> String {
    match section {
        Section::All => [Section::Clusters, Section::Listeners, Section::Routes, Section::Endpoints, Section::Secret]
            .into_iter()
            .map(|s| format!("{}:\n{}", format!("{s:?}").to_uppercase(), short(dump, s, filter)))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => aligned(&rows(dump, section, filter)),
    }
}

fn rows(dump: &Value, section: Section, filter: &Filter) -> Vec<Vec<String>> {
    let header = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    let objects = objects(dump, section, filter);
    let mut out = Vec::new();
    match section {
        Section::Clusters => {
            out.push(header(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]));
            for c in &objects {
                let name = text(c, "name");
                let (direction, port, subset, host) = cluster_parts(name).unwrap_or(("-", "-", "-", name));
                let kind = c["type"].as_str().or(c["cluster_type"]["name"].as_str()).unwrap_or("EDS");
                let rule = c["metadata"]["filter_metadata"]["istio"]["config"].as_str().map_or("-", short_config);
                out.push([host, dash(port), dash(subset), dash(direction), kind, rule].map(str::to_owned).to_vec());
            }
        }
        Section::Listeners => {
            out.push(header(&["NAME", "ADDRESS", "PORT", "CHAINS", "DESTINATION"]));
            for l in &objects {
                let address = l["address"]["socket_address"]["address"].as_str().unwrap_or("-");
                let chains = l["filter_chains"].as_array().map_or(0, Vec::len);
                out.push(vec![
                    text(l, "name").to_owned(),
                    address.to_owned(),
                    listener_port(l).map_or("-".into(), |p| p.to_string()),
                    chains.to_string(),
                    destinations(l),
                ]);
            }
        }
        Section::Routes => {
            out.push(header(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]));
            for r in &objects {
                for vhost in r["virtual_hosts"].as_array().into_iter().flatten() {
                    let domains: Vec<&str> =
                        vhost["domains"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let shown = match domains.as_slice() {
                        [] => "-".to_owned(),
                        [one] => (*one).to_owned(),
                        [first, rest @ ..] => format!("{first} +{}", rest.len()),
                    };
                    let routes: Vec<&Value> = vhost["routes"].as_array().into_iter().flatten().collect();
                    if routes.is_empty() {
                        out.push(vec![
                            text(r, "name").into(),
                            text(vhost, "name").into(),
                            shown.clone(),
                            "-".into(),
                            "-".into(),
                        ]);
                    }
                    for route in routes {
                        let vs =
                            route["metadata"]["filter_metadata"]["istio"]["config"].as_str().map_or("-", short_config);
                        out.push(vec![
                            text(r, "name").into(),
                            text(vhost, "name").into(),
                            shown.clone(),
                            route_match(&route["match"]),
                            vs.into(),
                        ]);
                    }
                }
            }
        }
        Section::Endpoints => {
            out.push(header(&["ENDPOINT", "STATUS", "WEIGHT", "CLUSTER"]));
            for a in &objects {
                for locality in a["endpoints"].as_array().into_iter().flatten() {
                    for e in locality["lb_endpoints"].as_array().into_iter().flatten() {
                        let socket = &e["endpoint"]["address"]["socket_address"];
                        let address = format!(
                            "{}:{}",
                            socket["address"].as_str().unwrap_or("-"),
                            socket["port_value"].as_u64().unwrap_or(0)
                        );
                        out.push(vec![
                            address,
                            e["health_status"].as_str().unwrap_or("UNKNOWN").to_owned(),
                            e["load_balancing_weight"].as_u64().map_or("1".into(), |w| w.to_string()),
                            text(a, "cluster_name").to_owned(),
                        ]);
                    }
                }
            }
        }
        Section::Secret => {
            out.push(header(&["RESOURCE NAME", "TYPE", "VERSION", "LAST UPDATED"]));
            let dumped = dump_of(dump, "SecretsConfigDump");
            let versions: Vec<(String, String, String)> = dumped
                .map(|d| {
                    ["static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets"]
                        .iter()
                        .flat_map(|k| d[*k].as_array().into_iter().flatten())
                        .map(|e| {
                            (
                                e["name"].as_str().or(e["secret"]["name"].as_str()).unwrap_or_default().to_owned(),
                                e["version_info"].as_str().unwrap_or("-").to_owned(),
                                e["last_updated"].as_str().unwrap_or("-").to_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            for s in &objects {
                let name = text(s, "name");
                let kind = if s.get("tls_certificate").is_some() {
                    "Cert Chain"
                } else if s.get("validation_context").is_some() {
                    "CA"
                } else {
                    "-"
                };
                let (version, updated) = versions
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map_or(("-", "-"), |(_, v, u)| (v.as_str(), u.as_str()));
                out.push([name, kind, version, updated].map(str::to_owned).to_vec());
            }
        }
        Section::All => {}
    }
    out
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `/apis/networking.istio.io/v1/namespaces/ns/virtual-service/name` → `name.ns`.
fn short_config(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

fn route_match(m: &Value) -> String {
    for key in ["prefix", "path", "path_separated_prefix"] {
        if let Some(p) = m[key].as_str() {
            return if key == "prefix" { format!("{p}*") } else { p.to_owned() };
        }
    }
    m["safe_regex"]["regex"].as_str().map_or("-".into(), |r| format!("~{r}"))
}

/// Where a listener's chains send traffic: RDS names, inline route configs, tcp_proxy clusters.
fn destinations(listener: &Value) -> String {
    let mut out: Vec<String> = Vec::new();
    for chain in listener["filter_chains"].as_array().into_iter().flatten() {
        for filter in chain["filters"].as_array().into_iter().flatten() {
            let config = &filter["typed_config"];
            let found = if let Some(rds) = config["rds"]["route_config_name"].as_str() {
                format!("Route: {rds}")
            } else if let Some(inline) = config["route_config"]["name"].as_str() {
                format!("Inline Route: {inline}")
            } else if let Some(cluster) = config["cluster"].as_str() {
                format!("Cluster: {cluster}")
            } else {
                continue;
            };
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    match out.len() {
        0 => "-".into(),
        1..=2 => out.join(", "),
        n => format!("{}, {} +{}", out[0], out[1], n - 2),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump() -> Value {
        json!({"configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump"},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
             "static_clusters": [{"cluster": {"name": "xds-grpc", "type": "STATIC"}}],
             "dynamic_active_clusters": [
                {"cluster": {"name": "outbound|8000||httpbin.testns1.svc.cluster.local", "type": "EDS"}},
                {"cluster": {"name": "outbound|8000|v1|httpbin.testns1.svc.cluster.local", "type": "EDS",
                  "metadata": {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1/namespaces/testns1/destination-rule/httpbin"}}}}},
                {"cluster": {"name": "inbound|8000||", "type": "STATIC"}}
             ]},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
             "dynamic_listeners": [{"name": "127.0.0.20_8000", "active_state": {"listener": {
                "name": "127.0.0.20_8000", "traffic_direction": "OUTBOUND",
                "address": {"socket_address": {"address": "127.0.0.20", "port_value": 8000}},
                "filter_chains": [{"filters": [{"typed_config": {"rds": {"route_config_name": "8000"}}}]}]}}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
             "dynamic_route_configs": [{"route_config": {"name": "8000", "virtual_hosts": [
                {"name": "httpbin.testns1.svc.cluster.local:8000", "domains": ["httpbin.testns1.svc.cluster.local", "httpbin"],
                 "routes": [{"match": {"prefix": "/"}, "metadata": {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1/namespaces/testns1/virtual-service/httpbin"}}}}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
             "dynamic_endpoint_configs": [{"endpoint_config": {"cluster_name": "outbound|8000|v1|httpbin.testns1.svc.cluster.local",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.11", "port_value": 8000}}},
                   "health_status": "HEALTHY", "load_balancing_weight": 1}]}]}}]},
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
             "dynamic_active_secrets": [{"name": "kubernetes://cred", "version_info": "abc", "last_updated": "2026-12-05T16:00:00Z",
                "secret": {"name": "kubernetes://cred", "tls_certificate": {"certificate_chain": {"inline_bytes": "x"}}}}]}
        ]})
    }

    #[test]
    fn filters_pick_clusters_by_fqdn_port_subset_and_direction() {
        let d = dump();
        let names = |f: Filter| -> Vec<String> {
            objects(&d, Section::Clusters, &f).iter().map(|c| text(c, "name").to_owned()).collect()
        };
        assert_eq!(names(Filter::default()).len(), 4);
        let fqdn = Filter { fqdn: Some("httpbin.testns1.svc.cluster.local".into()), ..Default::default() };
        assert_eq!(names(fqdn.clone()).len(), 2);
        assert_eq!(
            names(Filter { subset: Some("v1".into()), ..fqdn }),
            ["outbound|8000|v1|httpbin.testns1.svc.cluster.local"]
        );
        assert_eq!(names(Filter { direction: Some("inbound".into()), ..Default::default() }), ["inbound|8000||"]);
        assert_eq!(names(Filter { port: Some(9000), ..Default::default() }), Vec::<String>::new());
        let endpoints = objects(&d, Section::Endpoints, &Filter { subset: Some("v1".into()), ..Default::default() });
        assert_eq!(endpoints.len(), 1);
        assert_eq!(objects(&d, Section::All, &Filter::default()).len(), 4 + 1 + 1 + 1 + 1);
    }

    #[test]
    fn short_tables_read_like_istioctls() {
        let d = dump();
        let clusters = short(&d, Section::Clusters, &Filter::default());
        let v1 = clusters.lines().find(|l| l.contains("v1")).unwrap();
        assert_eq!(
            v1.split_whitespace().collect::<Vec<_>>(),
            ["httpbin.testns1.svc.cluster.local", "8000", "v1", "outbound", "EDS", "httpbin"]
        );
        let listeners = short(&d, Section::Listeners, &Filter::default());
        assert!(listeners.lines().nth(1).unwrap().ends_with("Route: 8000"), "{listeners}");
        let routes = short(&d, Section::Routes, &Filter::default());
        assert!(routes.contains("httpbin.testns1.svc.cluster.local +1") && routes.contains("/*"), "{routes}");
        let endpoints = short(&d, Section::Endpoints, &Filter::default());
        assert!(endpoints.contains("127.0.0.11:8000") && endpoints.contains("HEALTHY"), "{endpoints}");
        let secrets = short(&d, Section::Secret, &Filter::default());
        assert!(
            secrets.contains("kubernetes://cred") && secrets.contains("Cert Chain") && secrets.contains("abc"),
            "{secrets}"
        );
        assert!(short(&d, Section::All, &Filter::default()).contains("ENDPOINTS:"));
    }
}
