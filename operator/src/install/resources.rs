//! Which Kubernetes API serves each kind the renderer produces: a static table from
//! `apiVersion`/`kind` to the REST resource, so applying and pruning need no discovery round trip.

use kube::api::ApiResource;
use kube::core::GroupVersionKind;

use super::InstallError;

/// One row of the table: a kind Rudder installs and where its API lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

impl KindInfo {
    pub fn api_resource(&self) -> ApiResource {
        let (group, version) = match self.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, self.kind), self.plural)
    }

    pub fn is_crd(&self) -> bool {
        self.kind == "CustomResourceDefinition"
    }

    pub fn is_namespace(&self) -> bool {
        self.kind == "Namespace"
    }
}

const fn row(api_version: &'static str, kind: &'static str, plural: &'static str, namespaced: bool) -> KindInfo {
    KindInfo { api_version, kind, plural, namespaced }
}

/// Every kind the installer applies, in the order prune lists them.
pub const KINDS: [KindInfo; 16] = [
    row("v1", "Namespace", "namespaces", false),
    row("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false),
    row("v1", "ServiceAccount", "serviceaccounts", true),
    row("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", false),
    row("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false),
    row("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    row("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", true),
    row("v1", "ConfigMap", "configmaps", true),
    row("v1", "Secret", "secrets", true),
    row("v1", "Service", "services", true),
    row("apps/v1", "Deployment", "deployments", true),
    row("apps/v1", "DaemonSet", "daemonsets", true),
    row("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
    row("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", true),
    row("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", false),
    row("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations", false),
];

/// Looks a kind up by `apiVersion` and `kind`.
pub fn lookup(api_version: &str, kind: &str) -> Result<&'static KindInfo, InstallError> {
    KINDS
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
        .ok_or_else(|| InstallError::UnknownKind { api_version: api_version.to_owned(), kind: kind.to_owned() })
}

/// Looks a kind up by name alone (the table has one version of each).
pub fn by_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Kinds whose installed objects prune may delete: everything but namespaces and CRDs.
pub fn prunable() -> impl Iterator<Item = &'static KindInfo> {
    KINDS.iter().filter(|k| !k.is_crd() && !k.is_namespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_group_version_and_plural() {
        let hpa = lookup("autoscaling/v2", "HorizontalPodAutoscaler").map(KindInfo::api_resource);
        let hpa = hpa.expect("hpa is in the table");
        assert_eq!((hpa.group.as_str(), hpa.version.as_str()), ("autoscaling", "v2"));
        assert_eq!(hpa.plural, "horizontalpodautoscalers");
        let cm = lookup("v1", "ConfigMap").map(KindInfo::api_resource).expect("configmap");
        assert_eq!((cm.group.as_str(), cm.api_version.as_str()), ("", "v1"));
    }

    #[test]
    fn unknown_kinds_are_errors_and_never_prunable() {
        assert!(lookup("v1", "Pod").is_err());
        assert!(lookup("autoscaling/v1", "HorizontalPodAutoscaler").is_err());
        assert!(prunable().all(|k| !k.is_crd() && !k.is_namespace()));
        assert_eq!(prunable().count(), KINDS.len() - 2);
    }
}
