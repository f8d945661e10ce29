//! The operator's least-privilege ClusterRole: exactly the kinds the installer applies (the
//! object-kind table in [`crate::install::resources`]), its own CRs, leases for leader election,
//! and events. `bind`/`escalate` on roles let it create the control plane's RBAC without holding
//! every permission that RBAC grants.

use k8s_openapi::api::rbac::v1::PolicyRule;

const READ: &[&str] = &["get", "list", "watch"];
const MANAGE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The rules, one per API group and verb set, in a fixed order.
pub fn rules() -> Vec<PolicyRule> {
    vec![
        rule("install.istio.io", &["istiooperators", "istiooperators/status", "istiooperators/finalizers"], MANAGE),
        rule("apiextensions.k8s.io", &["customresourcedefinitions"], MANAGE),
        rule("", &["namespaces", "serviceaccounts", "configmaps", "secrets", "services"], MANAGE),
        rule("", &["pods", "endpoints"], READ),
        rule("", &["events"], &["create", "patch"]),
        rule("apps", &["deployments", "daemonsets"], MANAGE),
        rule("apps", &["replicasets"], READ),
        rule("autoscaling", &["horizontalpodautoscalers"], MANAGE),
        rule("policy", &["poddisruptionbudgets"], MANAGE),
        rule("rbac.authorization.k8s.io", &["clusterroles", "clusterrolebindings", "roles", "rolebindings"], MANAGE),
        rule("rbac.authorization.k8s.io", &["clusterroles", "roles"], &["bind", "escalate"]),
        rule(
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            MANAGE,
        ),
        rule("coordination.k8s.io", &["leases"], &["get", "create", "update"]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::resources::KINDS;

    fn allows(group: &str, resource: &str, verb: &str) -> bool {
        rules().iter().any(|r| {
            r.api_groups.as_deref().unwrap_or_default().iter().any(|g| g == group)
                && r.resources.as_deref().unwrap_or_default().iter().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    }

    #[test]
    fn every_installed_kind_can_be_applied_and_deleted() {
        for k in KINDS {
            let group = k.api_version.split_once('/').map_or("", |(g, _)| g);
            for verb in ["get", "list", "patch", "delete"] {
                assert!(allows(group, k.plural, verb), "{verb} {}", k.plural);
            }
        }
    }

    #[test]
    fn no_wildcards_anywhere() {
        for r in rules() {
            let all = r.api_groups.iter().chain(r.resources.iter()).flatten().chain(r.verbs.iter());
            assert!(all.clone().all(|s| s != "*"), "{r:?}");
        }
        assert!(!allows("", "pods", "delete"));
        assert!(!allows("coordination.k8s.io", "leases", "delete"));
    }
}
