//! RBAC of the discovery server and of the multi-cluster reader: what each may read or write,
//! written as Rudder needs it (watch config and workloads, patch webhooks, sign certificates,
//! manage gateway Deployments), with revision- and namespace-suffixed cluster-scoped names.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::objects::meta;
use super::values::Context;

const ISTIO_GROUPS: &[&str] = &[
    "config.istio.io",
    "security.istio.io",
    "networking.istio.io",
    "authentication.istio.io",
    "rbac.istio.io",
    "telemetry.istio.io",
    "extensions.istio.io",
];
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let own = |items: &[&str]| Some(items.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: own(groups),
        resources: own(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

fn discovery_rules() -> Vec<PolicyRule> {
    vec![
        rule(ISTIO_GROUPS, &["*"], READ),
        rule(&["networking.istio.io"], &["workloadentries", "workloadentries/status", "serviceentries/status"], WRITE),
        rule(&["security.istio.io", "telemetry.istio.io", "extensions.istio.io"], &["*/status"], &["update", "patch"]),
        rule(
            &["admissionregistration.k8s.io"],
            &["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
            &["get", "list", "watch", "update", "patch"],
        ),
        rule(&["apiextensions.k8s.io"], &["customresourcedefinitions"], READ),
        rule(&[""], &["pods", "nodes", "services", "namespaces", "endpoints", "secrets", "serviceaccounts"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingressclasses"], READ),
        rule(&["networking.k8s.io"], &["ingresses/status"], &["update", "patch"]),
        rule(&[""], &["configmaps"], WRITE),
        rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests", "certificatesigningrequests/approval", "certificatesigningrequests/status"],
            &["get", "list", "watch", "create", "update", "delete"],
        ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
        rule(&["gateway.networking.k8s.io"], &["*"], READ),
        rule(&["gateway.networking.k8s.io"], &["*/status"], &["update", "patch"]),
    ]
}

fn gateway_controller_rules() -> Vec<PolicyRule> {
    vec![
        rule(&["apps"], &["deployments"], WRITE),
        rule(&[""], &["services", "serviceaccounts"], WRITE),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
    ]
}

fn reader_rules() -> Vec<PolicyRule> {
    vec![
        rule(ISTIO_GROUPS, &["*"], READ),
        rule(
            &[""],
            &["endpoints", "pods", "services", "nodes", "replicationcontrollers", "namespaces", "secrets"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["apps"], &["replicasets"], READ),
        rule(&["multicluster.x-k8s.io"], &["serviceexports", "serviceimports"], READ),
        rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
    ]
}

/// Namespaced rules of the discovery server in its own namespace.
fn namespace_rules() -> Vec<PolicyRule> {
    vec![rule(&[""], &["configmaps", "secrets"], WRITE), rule(&["coordination.k8s.io"], &["leases"], WRITE)]
}

fn subject(name: &str, ns: &str) -> Subject {
    Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: Some(ns.into()), ..Subject::default() }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: Some("rbac.authorization.k8s.io".into()), kind: kind.into(), name: name.into() }
}

/// The three ClusterRoles and their bindings.
pub fn cluster(ctx: &Context, labels: &BTreeMap<String, String>) -> (Vec<ClusterRole>, Vec<ClusterRoleBinding>) {
    let istiod = ctx.istiod();
    let sets = [
        ("istiod-clusterrole", discovery_rules(), istiod.clone()),
        ("istiod-gateway-controller", gateway_controller_rules(), istiod),
        ("istio-reader-clusterrole", reader_rules(), "istio-reader-service-account".to_owned()),
    ];
    let mut roles = Vec::new();
    let mut bindings = Vec::new();
    for (base, rules, account) in sets {
        let name = ctx.cluster_scoped(base);
        roles.push(ClusterRole {
            metadata: meta(&name, None, labels.clone()),
            rules: Some(rules),
            ..ClusterRole::default()
        });
        bindings.push(ClusterRoleBinding {
            metadata: meta(&name, None, labels.clone()),
            role_ref: role_ref("ClusterRole", &name),
            subjects: Some(vec![subject(&account, &ctx.namespace)]),
        });
    }
    (roles, bindings)
}

/// The Role and RoleBinding `istiod[-<rev>]`.
pub fn namespaced(ctx: &Context, labels: &BTreeMap<String, String>) -> (Role, RoleBinding) {
    let name = ctx.istiod();
    let role = Role { metadata: meta(&name, Some(&ctx.namespace), labels.clone()), rules: Some(namespace_rules()) };
    let binding = RoleBinding {
        metadata: meta(&name, Some(&ctx.namespace), labels.clone()),
        role_ref: role_ref("Role", &name),
        subjects: Some(vec![subject(&name, &ctx.namespace)]),
    };
    (role, binding)
}

/// A gateway's `<name>-sds` Role and RoleBinding: read secrets in its namespace.
pub fn gateway_sds(name: &str, ns: &str, account: &str, labels: &BTreeMap<String, String>) -> (Role, RoleBinding) {
    let role_name = format!("{name}-sds");
    let role = Role {
        metadata: meta(&role_name, Some(ns), labels.clone()),
        rules: Some(vec![rule(&[""], &["secrets"], READ)]),
    };
    let binding = RoleBinding {
        metadata: meta(&role_name, Some(ns), labels.clone()),
        role_ref: role_ref("Role", &role_name),
        subjects: Some(vec![subject(account, ns)]),
    };
    (role, binding)
}
