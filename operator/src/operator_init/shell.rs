//! Applying and removing the operator against the API server, with the installer's server-side
//! apply (field manager `rudder`, forced) and its object-kind table. Re-running init is an
//! upgrade in place: apply only changes what differs.

use kube::Client;
use kube::api::DynamicObject;

use super::{COMPONENT, InitError};
use crate::install::apply::{self, list_labelled};
use crate::install::plan::ObjectKey;
use crate::install::resources::{self, KindInfo};
use crate::install::{InstallError, Progress};

/// The `IstioOperator` kind, which the installer's table leaves out (it never renders CRs).
pub const ISTIO_OPERATOR: KindInfo = KindInfo {
    api_version: "install.istio.io/v1alpha1",
    kind: "IstioOperator",
    plural: "istiooperators",
    namespaced: true,
};

/// The operator's own objects that `remove` deletes (never namespaces, the CRD or CRs).
pub const REMOVED_KINDS: [&str; 5] = ["Deployment", "Service", "ClusterRoleBinding", "ClusterRole", "ServiceAccount"];

fn kind_of(obj: &DynamicObject) -> Result<&'static KindInfo, InitError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let types = obj.types.as_ref().ok_or(InstallError::MissingType { name })?;
    if types.api_version == ISTIO_OPERATOR.api_version && types.kind == ISTIO_OPERATOR.kind {
        return Ok(&ISTIO_OPERATOR);
    }
    Ok(resources::lookup(&types.api_version, &types.kind)?)
}

/// Applies the objects in order; returns what was applied.
pub async fn init(
    client: &Client,
    objects: &[DynamicObject],
    progress: &mut Progress,
) -> Result<Vec<ObjectKey>, InitError> {
    let mut applied = Vec::with_capacity(objects.len());
    for obj in objects {
        let info = kind_of(obj)?;
        apply::apply(client, info, obj).await?;
        let key = ObjectKey::of(info.kind, obj);
        progress.line(&format!("  applied {key}"));
        applied.push(key);
    }
    progress.done("Operator installed");
    Ok(applied)
}

/// Label selector for the operator objects of one revision (`None`: every revision).
pub fn remove_selector(revision: Option<&str>) -> String {
    let component = format!("{}={COMPONENT}", rudder_config::labels::COMPONENT);
    match revision {
        Some(rev) => format!(
            "{component},{}={}",
            rudder_config::labels::REVISION,
            crate::install::plan::revision_name(Some(rev))
        ),
        None => component,
    }
}

/// The operator objects `remove` would delete, Deployments first. With every revision
/// (`None`, `--purge`) the IstioOperator CRD goes too, last, once no IstioOperator is left
/// (deleting it would delete the users' CRs, which no operator would then finalize).
pub async fn plan_remove(client: &Client, revision: Option<&str>) -> Result<Vec<ObjectKey>, InitError> {
    let kinds = REMOVED_KINDS.iter().filter_map(|k| resources::by_kind(k));
    let listed = list_labelled(client, kinds, &remove_selector(revision)).await?;
    let mut keys: Vec<ObjectKey> = listed.iter().map(|l| ObjectKey::of(l.info.kind, &l.object)).collect();
    if revision.is_none() {
        let crs = kube::Api::<rudder_config::operator::IstioOperator>::all(client.clone())
            .list(&kube::api::ListParams::default().limit(1))
            .await;
        if let Ok(list) = crs
            && list.items.is_empty()
        {
            keys.push(ObjectKey {
                kind: "CustomResourceDefinition".into(),
                namespace: None,
                name: ISTIO_OPERATOR_CRD.into(),
            });
        }
    }
    Ok(keys)
}

/// The IstioOperator CRD that `operator init` installs.
pub const ISTIO_OPERATOR_CRD: &str = "istiooperators.install.istio.io";

/// Deletes the planned objects (already gone is fine).
pub async fn remove(client: &Client, keys: &[ObjectKey], progress: &mut Progress) -> Result<(), InitError> {
    for key in keys {
        apply::delete(client, key).await?;
        progress.line(&format!("  removed {key}"));
    }
    progress.done("Operator removed");
    Ok(())
}
