use super::*;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{Endpoint, lb_endpoint};
use rudder_config::networking::destination_rule::ZoneAwareLoadBalancerSetting;

fn endpoint(ip: &str) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        ..Default::default()
    }
}

fn ip(endpoint: &LbEndpoint) -> &str {
    let Some(lb_endpoint::HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else { return "" };
    match e.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => &s.address,
        _ => "",
    }
}

/// One group per `(locality, [ips])`, weight = endpoint count.
fn assignment(groups: &[(&str, &[&str])]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: "outbound|80||web.default.svc.cluster.local".into(),
        endpoints: groups
            .iter()
            .map(|(locality, ips)| {
                let mut parts = locality.splitn(3, '/');
                LocalityLbEndpoints {
                    locality: Some(Locality {
                        region: parts.next().unwrap_or_default().into(),
                        zone: parts.next().unwrap_or_default().into(),
                        sub_zone: parts.next().unwrap_or_default().into(),
                    }),
                    lb_endpoints: ips.iter().map(|ip| endpoint(ip)).collect(),
                    load_balancing_weight: Some(UInt32Value { value: u32::try_from(ips.len()).unwrap() }),
                    ..Default::default()
                }
            })
            .collect(),
        ..Default::default()
    }
}

/// `locality:priority:weight:[ips]` per group, in output order.
fn shape(cla: &ClusterLoadAssignment) -> Vec<String> {
    cla.endpoints
        .iter()
        .map(|g| {
            let (r, z, s) = parts(g.locality.as_ref());
            let ips: Vec<&str> = g.lb_endpoints.iter().map(ip).collect();
            let weight = g.load_balancing_weight.as_ref().map_or(0, |w| w.value);
            format!("{r}/{z}/{s}:p{}:w{weight}:{}", g.priority, ips.join(","))
        })
        .collect()
}

fn setting(yaml: &str) -> LocalityLoadBalancerSetting {
    serde_saphyr::from_str(yaml).unwrap()
}

fn no_labels(_: &LbEndpoint) -> Option<&'static BTreeMap<String, String>> {
    None
}

#[test]
fn which_clusters_take_a_policy() {
    let failover_only = || LocalityPolicy::Failover { priority_labels: vec![], regions: vec![] };
    let on = setting("enabled: true");
    let off = setting("enabled: false");
    let distribute = setting("distribute: [{from: r1/*, to: {r1/*: 100}}]");
    type Case<'a> = (
        &'a str,
        Option<&'a LocalityLoadBalancerSetting>,
        Option<&'a LocalityLoadBalancerSetting>,
        bool,
        Option<LocalityPolicy>,
    );
    let cases: Vec<Case<'_>> = vec![
        ("mesh default, outlier detection", None, None, true, Some(failover_only())),
        ("mesh default, no outlier detection: Envoy would never fail over", None, None, false, None),
        ("mesh on, outlier detection", Some(&on), None, true, Some(failover_only())),
        ("mesh off", Some(&off), None, true, None),
        ("rule off beats mesh on", Some(&on), Some(&off), true, None),
        ("rule on beats mesh off", Some(&off), Some(&on), true, Some(failover_only())),
        (
            "distribute needs no outlier detection",
            None,
            Some(&distribute),
            false,
            Some(LocalityPolicy::Distribute(vec![DistributeRule {
                from: "r1/*".into(),
                to: vec![("r1/*".into(), 100)],
            }])),
        ),
    ];
    for (name, mesh, rule, outlier, want) in cases {
        assert_eq!(LocalityPolicy::of(mesh, rule, TrafficDistribution::Any, outlier), want, "{name}");
    }
    let labelled = setting("failoverPriority: [topology.istio.io/network, app=web]\nfailover: [{from: r1, to: r2}]");
    let policy = LocalityPolicy::of(None, Some(&labelled), TrafficDistribution::Any, true).unwrap();
    assert_eq!(
        policy,
        LocalityPolicy::Failover {
            priority_labels: vec![
                PriorityLabel { key: "topology.istio.io/network".into(), value: None },
                PriorityLabel { key: "app".into(), value: Some("web".into()) },
            ],
            regions: vec![("r1".into(), "r2".into())],
        }
    );
    assert!(policy.weighs_localities());
    assert!(!failover_only().weighs_localities());
    // A Service's trafficDistribution: failover by topology without outlier detection, unless
    // a rule says otherwise.
    let by_zone = LocalityPolicy::of(Some(&off), None, TrafficDistribution::PreferSameZone, false).unwrap();
    assert_eq!(by_zone.proxy_label_keys().collect::<Vec<_>>(), [NETWORK_LABEL, REGION_LABEL, ZONE_LABEL]);
    assert!(by_zone.weighs_localities());
    assert_eq!(LocalityPolicy::of(None, Some(&off), TrafficDistribution::PreferSameZone, true), None);
    let by_node = LocalityPolicy::of(None, None, TrafficDistribution::PreferSameNode, false).unwrap();
    assert_eq!(by_node.proxy_label_keys().count(), 4);
}

#[test]
fn locality_patterns() {
    let cases = [
        ("r1/z1/s1", "r1/z1/s1", true),
        ("r1/z1/s1", "r1/z1/*", true),
        ("r1/z1/s1", "r1/*", true),
        ("r1/z1/s1", "r1", true),
        ("r1/z1/s1", "*", true),
        ("r1/z1/s1", "r2/*", false),
        ("r1/z1/s1", "r1/z2/*", false),
        ("r1/z1/s1", "r1/z1/s2", false),
        ("", "r1/*", false),
    ];
    for (locality, pattern, want) in cases {
        let mut p = locality.splitn(3, '/');
        let (r, z, s) = (p.next().unwrap_or(""), p.next().unwrap_or(""), p.next().unwrap_or(""));
        assert_eq!(locality_matches(r, z, s, pattern), want, "{locality} ~ {pattern}");
    }
}

#[test]
fn default_failover_ranks_subzone_zone_region_then_the_rest() {
    let base = assignment(&[
        ("r1/z1/s1", &["10.0.0.1"]),
        ("r1/z1/s2", &["10.0.0.2"]),
        ("r1/z2/s1", &["10.0.0.3"]),
        ("r2/z1/s1", &["10.0.0.4"]),
        ("r3/z1/s1", &["10.0.0.5"]),
    ]);
    let policy = LocalityPolicy::Failover { priority_labels: vec![], regions: vec![] };
    let place = Place::new("r1/z1/s1", &BTreeMap::new(), std::iter::empty());
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        [
            "r1/z1/s1:p0:w1:10.0.0.1",
            "r1/z1/s2:p1:w1:10.0.0.2",
            "r1/z2/s1:p2:w1:10.0.0.3",
            "r2/z1/s1:p3:w1:10.0.0.4",
            "r3/z1/s1:p3:w1:10.0.0.5",
        ]
    );
    // Without a subzone of its own, a proxy ranks its zone's subzones below its own (none) and
    // every other region alike; the gaps close up.
    let place = Place::new("r2/z1", &BTreeMap::new(), std::iter::empty());
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        [
            "r1/z1/s1:p1:w1:10.0.0.1",
            "r1/z1/s2:p1:w1:10.0.0.2",
            "r1/z2/s1:p1:w1:10.0.0.3",
            "r2/z1/s1:p0:w1:10.0.0.4",
            "r3/z1/s1:p1:w1:10.0.0.5",
        ]
    );
}

#[test]
fn explicit_failover_region_comes_before_other_regions() {
    let base = assignment(&[
        ("r1/z1", &["10.0.0.1"]),
        ("r2/z1", &["10.0.0.2"]),
        ("r3/z1", &["10.0.0.3"]),
        ("r1/z2", &["10.0.0.4"]),
    ]);
    let policy = LocalityPolicy::Failover { priority_labels: vec![], regions: vec![("r1".into(), "r3".into())] };
    let place = Place::new("r1/z1", &BTreeMap::new(), std::iter::empty());
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p0:w1:10.0.0.1", "r2/z1/:p3:w1:10.0.0.2", "r3/z1/:p2:w1:10.0.0.3", "r1/z2/:p1:w1:10.0.0.4"]
    );
    // A rule for another region changes nothing for this proxy.
    let policy = LocalityPolicy::Failover { priority_labels: vec![], regions: vec![("r9".into(), "r3".into())] };
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p0:w1:10.0.0.1", "r2/z1/:p2:w1:10.0.0.2", "r3/z1/:p2:w1:10.0.0.3", "r1/z2/:p1:w1:10.0.0.4"]
    );
}

#[test]
fn failover_priority_splits_localities_by_shared_labels() {
    let base = assignment(&[("r1/z1", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]), ("r1/z2", &["10.0.0.4"])]);
    let labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::from([
        ("10.0.0.1", BTreeMap::from([("net".into(), "n1".into()), ("version".into(), "v1".into())])),
        ("10.0.0.2", BTreeMap::from([("net".into(), "n1".into()), ("version".into(), "v2".into())])),
        ("10.0.0.3", BTreeMap::from([("net".into(), "n2".into()), ("version".into(), "v1".into())])),
        ("10.0.0.4", BTreeMap::from([("net".into(), "n1".into()), ("version".into(), "v1".into())])),
    ]);
    let lookup = |e: &LbEndpoint| labels.get(ip(e));
    let keys = ["net", "version"];
    let proxy_labels = BTreeMap::from([("net".to_owned(), "n1".to_owned()), ("version".to_owned(), "v1".to_owned())]);
    let priority_labels = keys.iter().map(|k| PriorityLabel { key: (*k).into(), value: None }).collect::<Vec<_>>();
    let policy = LocalityPolicy::Failover { priority_labels: priority_labels.clone(), regions: vec![] };
    let place = Place::new("r1/z1", &proxy_labels, keys.into_iter());
    // Both labels shared: 0; net only: 1; neither: 2. Localities do not rank without `failover`.
    assert_eq!(
        shape(&localize(&base, &policy, &place, &lookup)),
        ["r1/z1/:p0:w1:10.0.0.1", "r1/z1/:p1:w1:10.0.0.2", "r1/z1/:p2:w1:10.0.0.3", "r1/z2/:p0:w1:10.0.0.4"]
    );
    // `key=value` stands for the proxy's own value.
    let overridden = vec![
        PriorityLabel { key: "net".into(), value: None },
        PriorityLabel { key: "version".into(), value: Some("v2".into()) },
    ];
    let policy = LocalityPolicy::Failover { priority_labels: overridden, regions: vec![] };
    assert_eq!(
        shape(&localize(&base, &policy, &place, &lookup)),
        ["r1/z1/:p0:w1:10.0.0.2", "r1/z1/:p1:w1:10.0.0.1", "r1/z1/:p2:w1:10.0.0.3", "r1/z2/:p1:w1:10.0.0.4"]
    );
    // With `failover` too, localities rank within each label rank.
    let policy = LocalityPolicy::Failover { priority_labels, regions: vec![("r1".into(), "r2".into())] };
    assert_eq!(
        shape(&localize(&base, &policy, &place, &lookup)),
        ["r1/z1/:p0:w1:10.0.0.1", "r1/z1/:p2:w1:10.0.0.2", "r1/z1/:p3:w1:10.0.0.3", "r1/z2/:p1:w1:10.0.0.4"]
    );
    // Topology labels take their values from localities, the proxy's and the endpoints'.
    let zone = vec![PriorityLabel { key: ZONE_LABEL.into(), value: None }];
    let policy = LocalityPolicy::Failover { priority_labels: zone, regions: vec![] };
    let place = Place::new("r1/z2", &BTreeMap::new(), [ZONE_LABEL].into_iter());
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p1:w3:10.0.0.1,10.0.0.2,10.0.0.3", "r1/z2/:p0:w1:10.0.0.4"]
    );
}

#[test]
fn distribute_weighs_matched_localities_and_drops_the_rest() {
    let base = assignment(&[
        ("r1/z1", &["10.0.0.1"]),
        ("r1/z2", &["10.0.0.2", "10.0.0.3", "10.0.0.4"]),
        ("r1/z3", &["10.0.0.5"]),
        ("r2/z1", &["10.0.0.6"]),
    ]);
    let policy = LocalityPolicy::Distribute(vec![
        DistributeRule { from: "r9/*".into(), to: vec![("r2/*".into(), 100)] },
        DistributeRule { from: "r1/z1/*".into(), to: vec![("r1/z1/*".into(), 80), ("r1/*".into(), 20)] },
    ]);
    let place = Place::new("r1/z1", &BTreeMap::new(), std::iter::empty());
    // r1/z1 takes 80; r1/z2 and r1/z3 split 20 by their weights 3:1 (15 and 5); r2 gets nothing.
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p0:w80:10.0.0.1", "r1/z2/:p0:w15:10.0.0.2,10.0.0.3,10.0.0.4", "r1/z3/:p0:w5:10.0.0.5"]
    );
    // No rule for the proxy's locality: the assignment as it is.
    let place = Place::new("r3/z1", &BTreeMap::new(), std::iter::empty());
    assert_eq!(localize(&base, &policy, &place, &no_labels), base);
}

#[test]
fn places() {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned()), (ZONE_LABEL.to_owned(), "ignored".to_owned())]);
    let place = Place::new("r1/z1/s1", &labels, ["app", ZONE_LABEL, "missing"].into_iter());
    assert_eq!(
        place.labels,
        [
            ("app".to_owned(), "web".to_owned()),
            ("missing".to_owned(), String::new()),
            (ZONE_LABEL.to_owned(), "z1".to_owned())
        ]
    );
    assert!(!place.is_unknown());
    assert!(Place::new("", &BTreeMap::new(), ["app"].into_iter()).is_unknown());
    // A topology label the locality does not give comes from the labels.
    assert_eq!(Place::new("", &labels, [ZONE_LABEL].into_iter()).label(ZONE_LABEL), "ignored");
}

#[test]
fn zone_aware_ranks_regions_only() {
    let base = assignment(&[
        ("r1/z1", &["10.0.0.1"]),
        ("r1/z2", &["10.0.0.2"]),
        ("r2/z1", &["10.0.0.3"]),
        ("r3/z1", &["10.0.0.4"]),
    ]);
    let place = Place::new("r1/z1", &BTreeMap::new(), std::iter::empty());
    // Zones of the proxy's region share priority 0: weighing them is Envoy's zone-aware routing.
    let policy = LocalityPolicy::zone_aware(&ZoneAwareLoadBalancerSetting::default()).unwrap();
    assert!(!policy.weighs_localities());
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p0:w1:10.0.0.1", "r1/z2/:p0:w1:10.0.0.2", "r2/z1/:p1:w1:10.0.0.3", "r3/z1/:p1:w1:10.0.0.4"]
    );
    // `failover` puts its region before the others.
    let setting: ZoneAwareLoadBalancerSetting = serde_saphyr::from_str("failover: [{from: r1, to: r3}]").unwrap();
    let policy = LocalityPolicy::zone_aware(&setting).unwrap();
    assert_eq!(
        shape(&localize(&base, &policy, &place, &no_labels)),
        ["r1/z1/:p0:w1:10.0.0.1", "r1/z2/:p0:w1:10.0.0.2", "r2/z1/:p2:w1:10.0.0.3", "r3/z1/:p1:w1:10.0.0.4"]
    );
    let off: ZoneAwareLoadBalancerSetting = serde_saphyr::from_str("enabled: false").unwrap();
    assert_eq!(LocalityPolicy::zone_aware(&off), None);
}

#[test]
fn local_cluster_is_the_proxys_region_and_revision() {
    use crate::model::Endpoint as Workload;
    let workload = |ip: &str, locality: &str, hash: &str| {
        let mut e = Workload::plain(ip, 8080, "http", "default");
        e.locality = locality.into();
        e.labels.insert("pod-template-hash".into(), hash.into());
        e
    };
    let endpoints = [
        workload("10.0.0.1", "r1/z1", "abc"),
        workload("10.0.0.1", "r1/z1", "abc"),
        workload("10.0.0.2", "r1/z2", "abc"),
        workload("10.0.0.3", "r1/z2", "old"),
        workload("10.0.0.4", "r2/z1", "abc"),
    ];
    let local = local_assignment(&endpoints, "r1", Some(("pod-template-hash", "abc")));
    assert_eq!(local.cluster_name, LOCAL_CLUSTER);
    assert_eq!(shape(&local), ["r1/z1/:p0:w1:10.0.0.1", "r1/z2/:p0:w1:10.0.0.2"]);
    // No revision label: every revision; no region known: every region.
    let all = local_assignment(&endpoints, "", None);
    assert_eq!(all.endpoints.iter().map(|g| g.lb_endpoints.len()).sum::<usize>(), 4);
    let labels = BTreeMap::from([("rollouts-pod-template-hash".to_owned(), "x".to_owned())]);
    assert_eq!(revision(&labels), Some(("rollouts-pod-template-hash", "x")));
}
