//! The finalizer's cleanup (§1.8 delete path): while pods still run proxies of the CR's revision
//! the CR waits with `ACTION_REQUIRED` (the finalizer stays); then the objects this CR owns are
//! deleted. A revisioned CR never removes Base (CRDs, shared RBAC); the unrevisioned one removes
//! everything it owns.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use rudder_config::labels;
use rudder_config::operator::IstioOperator;

use super::{Context, Error, status, write_status};
use crate::install::Progress;
use crate::install::apply::list_labelled;
use crate::install::plan::{ObjectKey, revision_name};
use crate::install::resources::{self, KindInfo};
use crate::install::uninstall::{self, Scope};

/// Removes the CR's objects, or reports the proxies that still hold them.
pub async fn cleanup(api: &Api<IstioOperator>, iop: &IstioOperator, ctx: &Context) -> Result<Action, Error> {
    let revision = revision_name(Some(&iop.spec.revision)).to_owned();
    let others = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|source| Error::Kube { action: "listing IstioOperators", source })?
        .items
        .iter()
        .any(|other| other.uid() != iop.uid());
    let mut listed = Vec::new();
    for (kinds, selector) in selectors(&iop.name_any(), &revision, others) {
        listed.extend(list_labelled(&ctx.client, kinds, &selector).await?);
    }
    let keys = uninstall::plan_uninstall(&listed);
    let proxies = connected(ctx, &revision, &keys).await?;
    if !proxies.is_empty() {
        let old = iop.status.clone().unwrap_or_default();
        let message = format!("revision {revision} is still used by: {}", proxies.join(", "));
        write_status(api, iop, &old, &status::action_required(&old, &message)).await?;
        return Err(Error::ProxiesConnected { revision, proxies });
    }
    uninstall::execute(&ctx.client, &keys, &mut Progress::quiet()).await?;
    tracing::info!(iop = %iop.name_any(), removed = keys.len(), "removed the revision's objects");
    Ok(Action::await_change())
}

/// `namespace/name` of pods whose proxy uses `revision`, but for those of `removed` workloads.
async fn connected(ctx: &Context, revision: &str, removed: &[ObjectKey]) -> Result<Vec<String>, Error> {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let pods =
        pods.list(&ListParams::default()).await.map_err(|source| Error::Kube { action: "listing pods", source })?;
    Ok(uninstall::connected_proxies(&pods.items, &Scope::Revision(revision.to_owned()), removed))
}

/// What the CR owns: for a revision, its non-Base components (as `uninstall -r` selects them);
/// for the default revision, every component, CRDs included, unless `others_remain` (another
/// IstioOperator, e.g. the canary this one is being replaced by, still needs Base: the CRDs
/// and the shared RBAC). Both limited to this owner.
pub fn selectors(owner: &str, revision: &str, others_remain: bool) -> Vec<(Vec<&'static KindInfo>, String)> {
    let owned = format!("{}={owner}", labels::OWNING_RESOURCE);
    if revision != labels::DEFAULT_REVISION || others_remain {
        return uninstall::selectors(&Scope::Revision(revision.to_owned()))
            .into_iter()
            .map(|(kinds, selector)| (kinds, format!("{selector},{owned}")))
            .collect();
    }
    let kinds = resources::KINDS.iter().filter(|k| !k.is_namespace()).collect();
    let selector = format!("{owned},{}={revision},{}", labels::REVISION, labels::COMPONENT);
    vec![(kinds, selector)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_never_selects_base_or_crds() {
        let sel = selectors("canary", "canary", false);
        assert_eq!(sel.len(), 1);
        assert!(sel[0].0.iter().all(|k| !k.is_crd()));
        assert!(!sel[0].1.contains("Base"));
        assert!(sel[0].1.ends_with("install.operator.istio.io/owning-resource=canary"));
        let default = selectors("main", "default", false);
        assert!(default[0].0.iter().any(|k| k.is_crd()));
        let replaced = selectors("main", "default", true);
        assert!(replaced[0].0.iter().all(|k| !k.is_crd()), "Base stays while another IstioOperator remains");
        assert!(replaced[0].1.starts_with("istio.io/rev=default,"));
    }
}
