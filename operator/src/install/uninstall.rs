//! Uninstall (§1.8 delete path): which installed objects a revision or a purge removes, which
//! proxies still depend on that revision, and the shell that lists, checks and deletes.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use rudder_config::labels;

use super::apply::{delete, list_labelled};
use super::plan::{Listed, ObjectKey};
use super::resources::{self, KindInfo};
use super::{InstallError, Progress};
use crate::manifest::Component;

/// What to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One revision's control plane; Base (CRDs, shared RBAC) stays.
    Revision(String),
    /// Everything any install made, CRDs included, and every revision tag.
    Purge,
}

/// The label selectors (with the kinds they apply to) that find the objects in scope.
pub fn selectors(scope: &Scope) -> Vec<(Vec<&'static KindInfo>, String)> {
    let not_namespace = || resources::KINDS.iter().filter(|k| !k.is_namespace()).collect::<Vec<_>>();
    match scope {
        Scope::Revision(rev) => {
            let components: Vec<&str> =
                Component::INSTALL_ORDER.iter().filter(|c| **c != Component::Base).map(|c| c.label()).collect();
            let selector = format!("{}={rev},{} in ({})", labels::REVISION, labels::COMPONENT, components.join(","));
            vec![(resources::prunable().collect(), selector)]
        }
        Scope::Purge => {
            let webhooks = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"];
            let tag_kinds = webhooks.iter().filter_map(|k| resources::by_kind(k)).collect();
            vec![(not_namespace(), labels::COMPONENT.to_owned()), (tag_kinds, labels::TAG.to_owned())]
        }
    }
}

/// The objects to delete, webhooks first (so no new pod reaches a dying injector), CRDs last.
pub fn plan_uninstall(listed: &[Listed]) -> Vec<ObjectKey> {
    let rank = |k: &ObjectKey| match k.kind.as_str() {
        "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => 0,
        "CustomResourceDefinition" => 2,
        _ => 1,
    };
    let mut keys: Vec<ObjectKey> =
        listed.iter().filter(|l| !l.info.is_namespace()).map(|l| ObjectKey::of(l.info.kind, &l.object)).collect();
    keys.sort_by(|a, b| (rank(a), a).cmp(&(rank(b), b)));
    keys.dedup();
    keys
}

/// The revision a pod's proxy is connected to, or `None` if the pod runs no proxy (istiod and
/// operator pods included, whatever their labels). A pod is a proxy when it carries the
/// injection status annotation, or runs an `istio-proxy` container with an `istio.io/rev` label
/// (gateways); the label names the revision, else the status annotation does.
pub fn proxy_revision(pod: &Pod) -> Option<String> {
    if pod.labels().get(labels::APP).is_some_and(|a| a == "istiod") {
        return None;
    }
    let runs_proxy = pod.spec.as_ref().is_some_and(|spec| spec.containers.iter().any(|c| c.name == "istio-proxy"));
    if !runs_proxy && !pod.annotations().contains_key(labels::SIDECAR_STATUS) {
        return None;
    }
    let label = pod.labels().get(labels::REVISION).cloned();
    match pod.annotations().get(labels::SIDECAR_STATUS) {
        Some(status) => {
            let from_status = serde_json::from_str::<serde_json::Value>(status)
                .ok()
                .and_then(|v| v.get("revision").and_then(|r| r.as_str()).map(str::to_owned));
            Some(label.or(from_status).unwrap_or_else(|| labels::DEFAULT_REVISION.to_owned()))
        }
        None => label,
    }
}

/// `namespace/name` of every pod whose proxy uses a revision in scope, except the pods of the
/// workloads in `removed`: a gateway that the removal itself deletes never blocks it.
pub fn connected_proxies(pods: &[Pod], scope: &Scope, removed: &[ObjectKey]) -> Vec<String> {
    let mut out: Vec<String> = pods
        .iter()
        .filter(|p| match (scope, proxy_revision(p)) {
            (_, None) => false,
            (Scope::Purge, Some(_)) => true,
            (Scope::Revision(r), Some(rev)) => &rev == r,
        })
        .filter(|p| !workload_of(p).is_some_and(|w| removed.contains(&w)))
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    out.sort();
    out
}

/// The workload that runs `pod`: its controller, and for a ReplicaSet the Deployment that
/// named it (`<deployment>-<pod-template-hash>`, so no further lookup is needed).
fn workload_of(pod: &Pod) -> Option<ObjectKey> {
    let owner = pod.metadata.owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let (kind, name) = match (owner.kind.as_str(), pod.labels().get("pod-template-hash")) {
        ("ReplicaSet", Some(hash)) => ("Deployment", owner.name.strip_suffix(&format!("-{hash}"))?.to_owned()),
        (kind, _) => (kind, owner.name.clone()),
    };
    Some(ObjectKey { kind: kind.to_owned(), namespace: pod.namespace(), name })
}

/// Lists what the scope removes and refuses (unless `force`) while proxies other than the
/// removed workloads' own still use it.
pub async fn plan(client: &Client, scope: &Scope, force: bool) -> Result<Vec<ObjectKey>, InstallError> {
    let mut listed = Vec::new();
    for (kinds, selector) in selectors(scope) {
        listed.extend(list_labelled(client, kinds, &selector).await?);
    }
    let keys = plan_uninstall(&listed);
    if !force {
        let pods: Api<Pod> = Api::all(client.clone());
        let pods = pods.list(&ListParams::default()).await.map_err(|e| InstallError::kube("list", "Pods", e))?;
        let proxies = connected_proxies(&pods.items, scope, &keys);
        if !proxies.is_empty() {
            let revision = match scope {
                Scope::Revision(r) => r.clone(),
                Scope::Purge => "(all)".to_owned(),
            };
            return Err(InstallError::ConnectedProxies { revision, proxies });
        }
    }
    Ok(keys)
}

/// What discovery made at run time rather than what an install applied: the mesh root's
/// ConfigMap `istio-ca-root-cert` in every namespace and the self-signed CA's Secret
/// `istio-ca-secret` (a plugged-in `cacerts` is the user's and stays). A purge removes them
/// once no discovery pod is left to publish them again (waiting up to `timeout` for that).
pub async fn remove_mesh_ca_objects(
    client: &Client,
    progress: &mut Progress,
    timeout: std::time::Duration,
) -> Result<(), InstallError> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let pods: Api<Pod> = Api::all(client.clone());
    let discovery = ListParams::default().labels(&format!("{}=istiod", labels::APP));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = pods.list(&discovery).await.map_err(|e| InstallError::kube("list", "Pods", e))?;
        if left.items.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            progress.line(&format!(
                "  {} discovery pods still stopping; the mesh root may be published again",
                left.items.len()
            ));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let named = |name: &str| ListParams::default().fields(&format!("metadata.name={name}"));
    let found = configmaps
        .list(&named(rudder_xds::ca_kube::ROOT_CONFIGMAP))
        .await
        .map_err(|e| InstallError::kube("list", "ConfigMaps", e))?;
    for cm in found.items {
        let namespace = cm.namespace().unwrap_or_default();
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&cm.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(InstallError::kube("delete", "ConfigMap", e)),
        }
        progress.line(&format!("  removed ConfigMap/{namespace}/{}", rudder_xds::ca_kube::ROOT_CONFIGMAP));
    }
    let secrets: Api<Secret> = Api::all(client.clone());
    let found = secrets
        .list(&named(rudder_xds::ca_kube::SELF_SIGNED_SECRET))
        .await
        .map_err(|e| InstallError::kube("list", "Secrets", e))?;
    for secret in found.items {
        let namespace = secret.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&secret.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(InstallError::kube("delete", "Secret", e)),
        }
        progress.line(&format!("  removed Secret/{namespace}/{}", rudder_xds::ca_kube::SELF_SIGNED_SECRET));
    }
    Ok(())
}

/// Deletes the planned objects in order.
pub async fn execute(client: &Client, keys: &[ObjectKey], progress: &mut Progress) -> Result<(), InstallError> {
    for key in keys {
        delete(client, key).await?;
        progress.line(&format!("  removed {key}"));
    }
    progress.done("Uninstall complete");
    Ok(())
}

/// Waits (up to `timeout`) until the CustomResourceDefinitions among `keys` are gone, and
/// returns the names still there. The API server deletes a CRD only after its cleanup finalizer
/// has listed and removed the CRD's objects; for a CRD created moments before, that listing can
/// fail ("storage is (re)initializing") and is then retried only on the CRD's next change, so a
/// CRD found in that state gets an annotation touched to have the cleanup tried again.
pub async fn settle_crds(client: &Client, keys: &[ObjectKey], timeout: std::time::Duration) -> Vec<String> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut remaining: Vec<String> =
        keys.iter().filter(|k| k.kind == "CustomResourceDefinition").map(|k| k.name.clone()).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    while !remaining.is_empty() {
        let mut still = Vec::new();
        for name in remaining {
            match api.get_opt(&name).await {
                Ok(None) => {}
                Ok(Some(crd)) => {
                    if cleanup_failed(&crd) {
                        let touch = serde_json::json!({"metadata": {"annotations": {
                            "rudder.io/cleanup-retry": std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs().to_string())
                                .unwrap_or_default(),
                        }}});
                        let _ = api
                            .patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&touch))
                            .await;
                    }
                    still.push(name);
                }
                Err(_) => still.push(name),
            }
        }
        remaining = still;
        if remaining.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    remaining
}

/// Whether the CRD's cleanup finalizer gave up on listing its objects (condition `Terminating`
/// with reason `InstanceDeletionFailed`).
fn cleanup_failed(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> bool {
    crd.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|conditions| {
        conditions.iter().any(|c| c.type_ == "Terminating" && c.reason.as_deref() == Some("InstanceDeletionFailed"))
    })
}
