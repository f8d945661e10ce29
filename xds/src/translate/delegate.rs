//! VirtualService delegation (`http[].delegate`): a root VirtualService (one with `hosts`)
//! hands the requests one of its HTTP rules matches to another VirtualService without hosts,
//! whose rules then apply under the root rule's conditions. As in Istio:
//! - the delegate is found by name and namespace (the root's when not given) and must have no
//!   hosts and be exported to the root's namespace; otherwise the root rule is left out;
//! - delegation is one level deep: a delegate's own delegating rules are left out;
//! - each delegate rule's matches are the root rule's and its own, pairwise, combined: both
//!   must hold, so a pair whose conditions contradict (a delegate URI outside the root's
//!   prefix, two different methods, a header matched two ways) is left out, and a rule with no
//!   pair left is left out;
//! - everything else (destinations, retries, timeouts, rewrites…) is the delegate rule's.

use std::collections::BTreeMap;
use std::sync::Arc;

use rudder_config::common::StringMatch;
use rudder_config::networking::VirtualService;
use rudder_config::networking::virtual_service::{Delegate, HttpMatchRequest, HttpRoute};

use crate::model::exported_to;

/// The delegate VirtualService `delegate` of a rule of `root` names, if it can serve as one.
pub fn find<'a>(
    virtual_services: &'a [Arc<VirtualService>],
    root: &VirtualService,
    delegate: &Delegate,
) -> Option<&'a VirtualService> {
    let root_namespace = root.metadata.namespace.as_deref().unwrap_or_default();
    let namespace = if delegate.namespace.is_empty() { root_namespace } else { delegate.namespace.as_str() };
    virtual_services
        .iter()
        .map(AsRef::as_ref)
        .find(|vs| {
            vs.metadata.name.as_deref() == Some(delegate.name.as_str())
                && vs.metadata.namespace.as_deref().unwrap_or_default() == namespace
        })
        .filter(|vs| vs.spec.hosts.is_empty() && exported_to(&vs.spec.export_to, namespace, root_namespace))
}

/// `rule` of a delegate under the root rule `root`: its matches combined with the root's, or
/// `None` when every combination contradicts itself.
pub fn merge_rule(root: &HttpRoute, rule: &HttpRoute) -> Option<HttpRoute> {
    let matches = match (root.r#match.is_empty(), rule.r#match.is_empty()) {
        (true, _) => rule.r#match.clone(),
        (false, true) => root.r#match.clone(),
        (false, false) => {
            let merged: Vec<HttpMatchRequest> =
                root.r#match.iter().flat_map(|r| rule.r#match.iter().filter_map(move |d| merge_match(r, d))).collect();
            if merged.is_empty() {
                return None;
            }
            merged
        }
    };
    Some(HttpRoute { r#match: matches, ..rule.clone() })
}

/// Both conditions at once, or `None` when they contradict.
pub fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> Option<HttpMatchRequest> {
    Some(HttpMatchRequest {
        name: if delegate.name.is_empty() { root.name.clone() } else { delegate.name.clone() },
        uri: merge_uri(root.uri.as_ref(), delegate.uri.as_ref())?,
        scheme: same(root.scheme.as_ref(), delegate.scheme.as_ref())?,
        method: same(root.method.as_ref(), delegate.method.as_ref())?,
        authority: same(root.authority.as_ref(), delegate.authority.as_ref())?,
        headers: union(&root.headers, &delegate.headers)?,
        port: same(root.port.as_ref(), delegate.port.as_ref())?,
        source_labels: union(&root.source_labels, &delegate.source_labels)?,
        gateways: if root.gateways.is_empty() { delegate.gateways.clone() } else { root.gateways.clone() },
        query_params: union(&root.query_params, &delegate.query_params)?,
        ignore_uri_case: root.ignore_uri_case || delegate.ignore_uri_case,
        without_headers: union(&root.without_headers, &delegate.without_headers)?,
        source_namespace: match (root.source_namespace.as_str(), delegate.source_namespace.as_str()) {
            ("", other) | (other, "") => other.to_owned(),
            (a, b) if a == b => a.to_owned(),
            _ => return None,
        },
        stat_prefix: if delegate.stat_prefix.is_empty() {
            root.stat_prefix.clone()
        } else {
            delegate.stat_prefix.clone()
        },
    })
}

/// The URI both match: a delegate's within the root's prefix narrows it; otherwise they must
/// be equal.
fn merge_uri(root: Option<&StringMatch>, delegate: Option<&StringMatch>) -> Option<Option<StringMatch>> {
    use StringMatch::{Exact, Prefix};
    Some(Some(match (root, delegate) {
        (None, None) => return Some(None),
        (Some(only), None) | (None, Some(only)) => only.clone(),
        (Some(Prefix(outer)), Some(Prefix(inner))) if inner.starts_with(outer.as_str()) => Prefix(inner.clone()),
        (Some(Prefix(outer)), Some(Exact(path))) if path.starts_with(outer.as_str()) => Exact(path.clone()),
        (Some(Exact(path)), Some(Prefix(inner))) if path.starts_with(inner.as_str()) => Exact(path.clone()),
        (Some(a), Some(b)) if a == b => a.clone(),
        _ => return None,
    }))
}

/// The one value set, or both when equal; `None` when they differ.
fn same<T: Clone + PartialEq>(root: Option<&T>, delegate: Option<&T>) -> Option<Option<T>> {
    match (root, delegate) {
        (Some(a), Some(b)) if a != b => None,
        (a, b) => Some(a.or(b).cloned()),
    }
}

/// Both maps' entries; `None` when a key has two different values.
fn union<V: Clone + PartialEq>(
    root: &BTreeMap<String, V>,
    delegate: &BTreeMap<String, V>,
) -> Option<BTreeMap<String, V>> {
    let mut out = root.clone();
    for (key, value) in delegate {
        match out.get(key) {
            Some(existing) if existing != value => return None,
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
