//! Locality load balancing (`localityLbSetting` of a DestinationRule, else of the mesh config):
//! which EDS clusters take it, and one proxy's copy of such a cluster's ClusterLoadAssignment,
//! reshaped for where that proxy runs.
//!
//! Priorities and weights are relative to the proxy, so these assignments cannot be shared by
//! every proxy as the others are: discovery keeps one copy per distinct [`Place`] and set of
//! policies, and proxies in one place share it. What the rules mean follows Istio:
//! - `distribute` (applies whatever else is set): the first rule whose `from` matches the
//!   proxy's locality gives each `to` pattern its share, split over the localities it matches
//!   by their weights; localities no pattern matches get no traffic.
//! - Failover (only with outlier detection, without which Envoy would never leave the first
//!   priority): endpoints in the proxy's subzone first, then its zone, its region, the region
//!   `failover` names for the proxy's region, then the rest. With `failoverPriority`, endpoints
//!   are ranked by how many of the listed labels, in order, they share with the proxy; a
//!   `failover` list then orders localities within each rank.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::google::protobuf::UInt32Value;
use rudder_config::networking::destination_rule::{LocalityLoadBalancerSetting, ZoneAwareLoadBalancerSetting};

use crate::model::{Endpoint, TrafficDistribution};

/// The topology labels a `failoverPriority` may name, whose values come from localities.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// The network label, which Kubernetes `trafficDistribution` preferences rank first.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// What locality load balancing does to one cluster's endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LocalityPolicy {
    /// `distribute` rules, in order.
    Distribute(Vec<DistributeRule>),
    /// Failover by priority.
    Failover {
        /// `failoverPriority`, in order.
        priority_labels: Vec<PriorityLabel>,
        /// `failover`: (from region, to region).
        regions: Vec<(String, String)>,
    },
    /// `zoneAwareLbSetting`: the proxy's region first, then the `failover` region, then the
    /// rest, as priorities (after `failoverPriority` ranks); within a priority Envoy's
    /// zone-aware routing keeps traffic in the proxy's zone as far as the zones' sizes allow.
    ZoneAware { priority_labels: Vec<PriorityLabel>, regions: Vec<(String, String)> },
}

/// One `distribute` entry: traffic from localities matching `from` goes to localities matching
/// each `to` pattern in that pattern's share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DistributeRule {
    pub from: String,
    pub to: Vec<(String, u32)>,
}

/// One `failoverPriority` entry: `key`, or `key=value` (the proxy is taken to have `value`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PriorityLabel {
    pub key: String,
    pub value: Option<String>,
}

impl LocalityPolicy {
    /// The policy of a cluster whose rule (port and subset resolved) has `rule`, whose service
    /// asks for `distribution` and whose mesh has `mesh`; `outlier_detection` says whether the
    /// cluster ejects failing hosts. `None` when locality load balancing is off or would change
    /// nothing.
    ///
    /// A rule's setting comes first (`enabled: false` turns it off whatever else says), then
    /// the service's `trafficDistribution` (failover by network, region and zone, as Istio
    /// does, without needing outlier detection: the preference is the point), then the mesh's.
    /// No mesh setting means Istio's default, enabled with no rules.
    pub fn of(
        mesh: Option<&LocalityLoadBalancerSetting>,
        rule: Option<&LocalityLoadBalancerSetting>,
        distribution: TrafficDistribution,
        outlier_detection: bool,
    ) -> Option<Self> {
        let preferred = |keys: &[&str]| LocalityPolicy::Failover {
            priority_labels: keys.iter().map(|k| PriorityLabel { key: (*k).to_owned(), value: None }).collect(),
            regions: Vec::new(),
        };
        let setting = match (rule, distribution) {
            (Some(rule), _) => rule,
            (None, TrafficDistribution::PreferSameZone) => {
                return Some(preferred(&[NETWORK_LABEL, REGION_LABEL, ZONE_LABEL]));
            }
            // Discovery does not know the nodes of endpoints, so the node preference stops at
            // the subzone.
            (None, TrafficDistribution::PreferSameNode) => {
                return Some(preferred(&[NETWORK_LABEL, REGION_LABEL, ZONE_LABEL, SUBZONE_LABEL]));
            }
            (None, TrafficDistribution::Any) => match mesh {
                Some(mesh) => mesh,
                None if outlier_detection => {
                    return Some(LocalityPolicy::Failover { priority_labels: Vec::new(), regions: Vec::new() });
                }
                None => return None,
            },
        };
        if setting.enabled == Some(false) {
            return None;
        }
        if !setting.distribute.is_empty() {
            let rules = setting
                .distribute
                .iter()
                .map(|d| DistributeRule {
                    from: d.from.clone(),
                    to: d.to.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                })
                .collect();
            return Some(LocalityPolicy::Distribute(rules));
        }
        outlier_detection.then(|| LocalityPolicy::Failover {
            priority_labels: priority_labels(&setting.failover_priority),
            regions: setting.failover.iter().map(|f| (f.from.clone(), f.to.clone())).collect(),
        })
    }

    /// The zone-aware policy of `setting`; `None` when it is turned off.
    pub fn zone_aware(setting: &ZoneAwareLoadBalancerSetting) -> Option<Self> {
        (setting.enabled != Some(false)).then(|| LocalityPolicy::ZoneAware {
            priority_labels: priority_labels(&setting.failover_priority),
            regions: setting.failover.iter().map(|f| (f.from.clone(), f.to.clone())).collect(),
        })
    }

    /// Whether Envoy must weigh localities by their weights (`locality_weighted_lb_config`):
    /// for `distribute`, and for explicit failover rules, as Istio sets it. Default failover
    /// needs only priorities.
    pub fn weighs_localities(&self) -> bool {
        match self {
            LocalityPolicy::Distribute(_) => true,
            LocalityPolicy::Failover { priority_labels, regions } => !priority_labels.is_empty() || !regions.is_empty(),
            // Zone-aware routing and locality weights are exclusive in Envoy.
            LocalityPolicy::ZoneAware { .. } => false,
        }
    }

    /// The policy as it applies to a DNS cluster's inline endpoints, which Istio localizes
    /// without `failoverPriority` (it has no workload labels there): the label ranking dropped,
    /// and with it the whole failover when there is no `failover` list to apply instead.
    pub fn for_inline_endpoints(&self) -> Option<Self> {
        match self {
            LocalityPolicy::Failover { priority_labels, regions } if !priority_labels.is_empty() => (!regions
                .is_empty())
            .then(|| LocalityPolicy::Failover { priority_labels: Vec::new(), regions: regions.clone() }),
            LocalityPolicy::ZoneAware { regions, .. } => {
                Some(LocalityPolicy::ZoneAware { priority_labels: Vec::new(), regions: regions.clone() })
            }
            other => Some(other.clone()),
        }
    }

    /// The proxy labels this policy reads (`failoverPriority` keys).
    pub fn proxy_label_keys(&self) -> impl Iterator<Item = &str> {
        let labels = match self {
            LocalityPolicy::Failover { priority_labels, .. } | LocalityPolicy::ZoneAware { priority_labels, .. } => {
                priority_labels.as_slice()
            }
            LocalityPolicy::Distribute(_) => &[],
        };
        labels.iter().map(|l| l.key.as_str())
    }
}

/// The bootstrap cluster of a proxy's own workload that zone-aware routing compares upstream
/// zones against (Istio's name), served over EDS to proxies that opt in.
pub const LOCAL_CLUSTER: &str = "local_cluster";
/// Node metadata (`ISTIO_META_ENABLE_SELF_DISCOVERY`) by which a proxy opts in.
pub const SELF_DISCOVERY: &str = "ENABLE_SELF_DISCOVERY";
/// Pod labels naming a workload's revision (Deployment, Argo Rollout).
const REVISION_HASH_LABELS: [&str; 2] = ["pod-template-hash", "rollouts-pod-template-hash"];

/// The revision label of a workload (`pod-template-hash`, else Argo's), if it has one.
pub fn revision(labels: &BTreeMap<String, String>) -> Option<(&'static str, &str)> {
    REVISION_HASH_LABELS.iter().find_map(|key| Some((*key, labels.get(*key)?.as_str())))
}

/// What a proxy's `local_cluster` holds, as Istio builds it: the endpoints of the proxy's own
/// service (`endpoints`, its first) in the proxy's region, of the proxy's revision
/// ([`revision`]) when it has one, each address once.
pub fn local_assignment(endpoints: &[Endpoint], region: &str, revision: Option<(&str, &str)>) -> ClusterLoadAssignment {
    let mut seen = std::collections::BTreeSet::new();
    let kept = endpoints
        .iter()
        .filter(|e| region.is_empty() || e.locality.split('/').next() == Some(region))
        .filter(|e| revision.is_none_or(|(key, value)| e.labels.get(key).map(String::as_str) == Some(value)))
        .filter(|e| seen.insert(e.address.as_str()))
        .filter_map(|e| Some((e.locality.as_str(), super::endpoint::lb_endpoint(e)?)));
    ClusterLoadAssignment {
        cluster_name: LOCAL_CLUSTER.to_owned(),
        endpoints: super::endpoint::group_by_locality(kept),
        ..Default::default()
    }
}

/// `failoverPriority` entries: `key` or `key=value`.
fn priority_labels(labels: &[String]) -> Vec<PriorityLabel> {
    labels
        .iter()
        .map(|label| match label.split_once('=') {
            Some((key, value)) => PriorityLabel { key: key.to_owned(), value: Some(value.to_owned()) },
            None => PriorityLabel { key: label.clone(), value: None },
        })
        .collect()
}

/// Where a proxy runs, as locality load balancing sees it: its locality, and the values of the
/// labels some policy's `failoverPriority` names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Place {
    pub region: String,
    pub zone: String,
    pub subzone: String,
    /// `(key, value)` sorted by key; topology labels take their values from the locality.
    pub labels: Vec<(String, String)>,
}

impl Place {
    /// The place of a proxy at `locality` (`region/zone/subzone`) with `labels`, keeping the
    /// labels named in `keys`.
    pub fn new<'k>(locality: &str, labels: &BTreeMap<String, String>, keys: impl Iterator<Item = &'k str>) -> Self {
        let mut parts = locality.splitn(3, '/');
        let mut place = Place {
            region: parts.next().unwrap_or_default().to_owned(),
            zone: parts.next().unwrap_or_default().to_owned(),
            subzone: parts.next().unwrap_or_default().to_owned(),
            labels: Vec::new(),
        };
        let mut kept: BTreeMap<String, String> = BTreeMap::new();
        for key in keys {
            let value = topology_value(key, &place.region, &place.zone, &place.subzone)
                .filter(|v| !v.is_empty())
                .or_else(|| labels.get(key).map(String::as_str))
                .unwrap_or_default();
            kept.insert(key.to_owned(), value.to_owned());
        }
        place.labels = kept.into_iter().collect();
        place
    }

    /// Whether nothing is known of the place (no locality, no label value): such a proxy gets
    /// the shared assignments.
    pub fn is_unknown(&self) -> bool {
        self.region.is_empty()
            && self.zone.is_empty()
            && self.subzone.is_empty()
            && self.labels.iter().all(|(_, v)| v.is_empty())
    }

    fn label(&self, key: &str) -> &str {
        self.labels.binary_search_by(|(k, _)| k.as_str().cmp(key)).map_or("", |i| self.labels[i].1.as_str())
    }
}

/// The value a topology label takes from a locality; `None` for other labels.
fn topology_value<'a>(key: &str, region: &'a str, zone: &'a str, subzone: &'a str) -> Option<&'a str> {
    match key {
        REGION_LABEL => Some(region),
        ZONE_LABEL => Some(zone),
        SUBZONE_LABEL => Some(subzone),
        _ => None,
    }
}

/// Whether `region/zone/subzone` matches `pattern`: `*` matches any part, and a pattern that
/// stops early (`us-east`, `us-east/zone1`) matches any value of the parts it leaves out.
pub fn locality_matches(region: &str, zone: &str, subzone: &str, pattern: &str) -> bool {
    let mut parts = pattern.splitn(3, '/');
    let (want_region, want_zone, want_subzone) = (parts.next(), parts.next(), parts.next());
    let part = |want: Option<&str>, have: &str, required: bool| match want {
        Some("*") => true,
        None | Some("") if !required => true,
        want => want.unwrap_or_default() == have,
    };
    part(want_region, region, true) && part(want_zone, zone, false) && part(want_subzone, subzone, false)
}

/// `base` as the proxy at `place` sees it under `policy`. `endpoint_labels` gives the labels of
/// the workload behind an endpoint (read only for `failoverPriority`).
pub fn localize<'l>(
    base: &ClusterLoadAssignment,
    policy: &LocalityPolicy,
    place: &Place,
    endpoint_labels: &dyn Fn(&LbEndpoint) -> Option<&'l BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let endpoints = match policy {
        LocalityPolicy::Distribute(rules) => distribute(&base.endpoints, rules, place),
        LocalityPolicy::Failover { priority_labels, regions } => {
            // Explicit region failover orders localities within each label rank.
            let ranks = (!regions.is_empty()).then_some(LOCALITY_RANKS);
            let rank = |locality: Option<&Locality>| locality_rank(place, locality, regions);
            failover(&base.endpoints, priority_labels, ranks, &rank, place, endpoint_labels)
        }
        LocalityPolicy::ZoneAware { priority_labels, regions } => {
            let rank = |locality: Option<&Locality>| region_rank(place, locality, regions);
            failover(&base.endpoints, priority_labels, Some(REGION_RANKS), &rank, place, endpoint_labels)
        }
    };
    ClusterLoadAssignment { endpoints, ..base.clone() }
}

fn parts(locality: Option<&Locality>) -> (&str, &str, &str) {
    locality.map_or(("", "", ""), |l| (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()))
}

fn weight(group: &LocalityLbEndpoints) -> u64 {
    u64::from(group.load_balancing_weight.as_ref().map_or(1, |w| w.value))
}

/// Weights from the first rule whose `from` matches the proxy; localities no `to` pattern
/// takes are left out. A locality two patterns match goes to the first in the rule's order.
fn distribute(groups: &[LocalityLbEndpoints], rules: &[DistributeRule], place: &Place) -> Vec<LocalityLbEndpoints> {
    let Some(rule) = rules.iter().find(|r| locality_matches(&place.region, &place.zone, &place.subzone, &r.from))
    else {
        return groups.to_vec();
    };
    let mut share: Vec<Option<u32>> = vec![None; groups.len()];
    for (pattern, percent) in &rule.to {
        let matched: Vec<usize> = (0..groups.len())
            .filter(|&i| share[i].is_none())
            .filter(|&i| {
                let (region, zone, subzone) = parts(groups[i].locality.as_ref());
                locality_matches(region, zone, subzone, pattern)
            })
            .collect();
        let total: u64 = matched.iter().map(|&i| weight(&groups[i])).sum::<u64>().max(1);
        for i in matched {
            // The pattern's share, split by the localities' own weights, rounded up so no
            // matched locality with a share drops to nothing.
            let value = (weight(&groups[i]) * u64::from(*percent)).div_ceil(total);
            share[i] = Some(u32::try_from(value).unwrap_or(u32::MAX));
        }
    }
    groups
        .iter()
        .zip(share)
        .filter_map(|(group, share)| {
            let share = share.filter(|s| *s > 0)?;
            Some(LocalityLbEndpoints { load_balancing_weight: Some(UInt32Value { value: share }), ..group.clone() })
        })
        .collect()
}

/// How many values [`locality_rank`] and [`region_rank`] take.
const LOCALITY_RANKS: u32 = 5;
const REGION_RANKS: u32 = 3;

/// Rank of a region from the proxy's, for zone-aware routing (zones are Envoy's to weigh):
/// 0 the proxy's region, 1 another region, 2 another region than the one `failover` names for
/// the proxy's region.
fn region_rank(place: &Place, locality: Option<&Locality>, regions: &[(String, String)]) -> u32 {
    let (region, _, _) = parts(locality);
    if region == place.region {
        return 0;
    }
    match regions.iter().find(|(from, _)| *from == place.region) {
        Some((_, to)) if to != region => 2,
        _ => 1,
    }
}

/// Rank of a locality from the proxy's: 0 same subzone, 1 same zone, 2 same region, 3 another
/// region, 4 another region than the one `failover` names for the proxy's region.
fn locality_rank(place: &Place, locality: Option<&Locality>, regions: &[(String, String)]) -> u32 {
    let (region, zone, subzone) = parts(locality);
    if region == place.region {
        return match (zone == place.zone, subzone == place.subzone) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        };
    }
    match regions.iter().find(|(from, _)| *from == place.region) {
        Some((_, to)) if to != region => 4,
        _ => 3,
    }
}

/// Rank by `failoverPriority`: 0 when the endpoint shares every listed label with the proxy,
/// else the number of labels from the first one it does not share to the end.
fn label_rank(place: &Place, labels: &[PriorityLabel], endpoint_value: impl Fn(&str) -> String) -> u32 {
    labels
        .iter()
        .position(|label| {
            label.value.as_deref().unwrap_or_else(|| place.label(&label.key)) != endpoint_value(&label.key)
        })
        .map_or(0, |first_mismatch| u32::try_from(labels.len() - first_mismatch).unwrap_or(u32::MAX))
}

/// Priorities from `failoverPriority` label ranks and locality ranks (`rank`): with labels,
/// each locality's endpoints split by label rank, and the locality rank orders localities
/// within a label rank when `locality_ranks` (how many values `rank` takes) is given; without
/// labels, the locality rank alone.
fn failover<'l>(
    groups: &[LocalityLbEndpoints],
    priority_labels: &[PriorityLabel],
    locality_ranks: Option<u32>,
    rank: &dyn Fn(Option<&Locality>) -> u32,
    place: &Place,
    endpoint_labels: &dyn Fn(&LbEndpoint) -> Option<&'l BTreeMap<String, String>>,
) -> Vec<LocalityLbEndpoints> {
    // As Istio: a proxy with none of the labels leaves the label ranking out.
    let by_labels = !priority_labels.is_empty()
        && priority_labels.iter().any(|l| l.value.is_some() || !place.label(&l.key).is_empty());
    let mut ranked: Vec<(u32, LocalityLbEndpoints)> = Vec::new();
    for group in groups {
        let locality_rank = rank(group.locality.as_ref());
        if priority_labels.is_empty() {
            ranked.push((locality_rank, group.clone()));
            continue;
        }
        let mut split: BTreeMap<u32, Vec<LbEndpoint>> = BTreeMap::new();
        let (region, zone, subzone) = parts(group.locality.as_ref());
        for endpoint in &group.lb_endpoints {
            let rank = if by_labels {
                label_rank(place, priority_labels, |key| match topology_value(key, region, zone, subzone) {
                    Some(value) => value.to_owned(),
                    None => endpoint_labels(endpoint).and_then(|l| l.get(key)).cloned().unwrap_or_default(),
                })
            } else {
                0
            };
            split.entry(rank).or_default().push(endpoint.clone());
        }
        // The group without its endpoints, which are split between the ranks' parts.
        let shell = LocalityLbEndpoints {
            locality: group.locality.clone(),
            metadata: group.metadata.clone(),
            lb_config: group.lb_config.clone(),
            proximity: group.proximity,
            ..Default::default()
        };
        for (label_rank, lb_endpoints) in split {
            let rank = match locality_ranks {
                Some(levels) => label_rank * levels + locality_rank,
                None => label_rank,
            };
            let weight: u32 = lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.as_ref().map_or(1, |w| w.value))
                .fold(0, u32::saturating_add);
            let part = LocalityLbEndpoints {
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: weight.max(1) }),
                ..shell.clone()
            };
            ranked.push((rank, part));
        }
    }
    // Envoy wants priorities 0..N without gaps: number the distinct ranks in order.
    let mut ranks: Vec<u32> = ranked.iter().map(|(rank, _)| *rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    ranked
        .into_iter()
        .map(|(rank, group)| {
            let priority = u32::try_from(ranks.partition_point(|r| *r < rank)).unwrap_or(u32::MAX);
            LocalityLbEndpoints { priority, ..group }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
