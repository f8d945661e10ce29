//! Pure planning for install: which labels mark this install's objects, the order objects are
//! applied in, and which installed objects prune deletes. No I/O; the shells in
//! [`super::apply`] feed it what they listed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kube::ResourceExt;
use kube::api::DynamicObject;
use rudder_config::labels;

use super::InstallError;
use super::resources::{self, KindInfo};
use crate::manifest::{Component, Manifest};

/// Identifies one object in the cluster: kind, namespace (none for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn of(kind: &str, obj: &DynamicObject) -> ObjectKey {
        ObjectKey { kind: kind.to_owned(), namespace: obj.metadata.namespace.clone(), name: obj.name_any() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// The labels that say "this install owns the object": the owning IstioOperator and the revision.
/// Deliberately not the installer version, so objects written by an older Rudder are still pruned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub owning_resource: String,
    pub revision: String,
}

impl Owner {
    /// The owner of a rendered manifest: the owning-resource label the renderer set (`unknown` when
    /// none did, as the charts default it) and the revision (`default` when there is none).
    pub fn of_manifest(manifest: &Manifest) -> Owner {
        let owning_resource = manifest
            .objects
            .iter()
            .find_map(|o| o.object.labels().get(labels::OWNING_RESOURCE).cloned())
            .unwrap_or_else(|| "unknown".to_owned());
        Owner { owning_resource, revision: revision_name(manifest.revision.as_deref()).to_owned() }
    }

    /// Label selector for every object of this install that belongs to some component.
    pub fn selector(&self) -> String {
        format!(
            "{}={},{}={},{}",
            labels::OWNING_RESOURCE,
            self.owning_resource,
            labels::REVISION,
            self.revision,
            labels::COMPONENT
        )
    }

    /// The owner labels stamped on every applied object (existing values win).
    fn stamp(&self, component: Component, obj: &mut DynamicObject) {
        let l = obj.labels_mut();
        let mut put = |k: &str, v: &str| {
            l.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        };
        put(labels::MANAGED, labels::MANAGED_RECONCILE);
        put(labels::OWNING_RESOURCE, &self.owning_resource);
        put(labels::REVISION, &self.revision);
        put(labels::COMPONENT, component.label());
        put(labels::OPERATOR_VERSION, env!("CARGO_PKG_VERSION"));
    }
}

/// `default` for an empty or absent revision, else the revision.
pub fn revision_name(revision: Option<&str>) -> &str {
    match revision {
        Some(r) if !r.is_empty() => r,
        _ => labels::DEFAULT_REVISION,
    }
}

/// Whether a component's objects are shared between the CRs of different revisions: gateways
/// keep their names (`istio-ingressgateway`, …) whichever revision renders them, and Base (the
/// CRDs, the reader ServiceAccount, the control-plane Namespace) exists once per cluster.
pub fn is_shared(component: Component) -> bool {
    matches!(component, Component::Base | Component::IngressGateways | Component::EgressGateways)
}

/// Whether an install should leave `planned` alone because another CR owns the live object.
///
/// The rule for objects two CRs both render (gateways and Base, [`is_shared`]): the CR of the default
/// revision owns them. It applies them whoever holds them now, and the forced apply rewrites the
/// owner labels, so from then on no other CR's prune or finalizer selects them. A revisioned CR
/// (a canary) applies a shared object only while it is absent or already its own; one owned by
/// another CR is left as it is. So every shared object has exactly one owner, and deleting or
/// pruning a canary never takes away a gateway the default CR also renders, and two CRs never
/// take turns rewriting the same object on every resync. (So while a default CR exists, the CRDs
/// are the ones it renders; a canary's Base is applied only while nobody else holds it.)
pub fn yields_to_live_owner(planned: &PlannedObject, owner: &Owner, live: Option<&DynamicObject>) -> bool {
    if !is_shared(planned.component) || owner.revision == labels::DEFAULT_REVISION {
        return false;
    }
    let Some(live) = live else { return false };
    let l = live.labels();
    let holder = (l.get(labels::OWNING_RESOURCE), l.get(labels::REVISION));
    holder != (Some(&owner.owning_resource), Some(&owner.revision))
}

/// One object ready to apply.
#[derive(Clone, Debug)]
pub struct PlannedObject {
    pub component: Component,
    pub info: &'static KindInfo,
    pub key: ObjectKey,
    pub object: DynamicObject,
}

/// The objects of a manifest in apply order — namespaces, then CRDs, then the rest by component
/// (stable within each group) — each with its namespace defaulted and the owner labels stamped.
pub fn plan_apply(manifest: &Manifest, owner: &Owner) -> Result<Vec<PlannedObject>, InstallError> {
    let mut planned = Vec::with_capacity(manifest.objects.len());
    for rendered in &manifest.objects {
        let types = rendered
            .object
            .types
            .as_ref()
            .ok_or_else(|| InstallError::MissingType { name: rendered.object.name_any() })?;
        let info = resources::lookup(&types.api_version, &types.kind)?;
        let mut object = rendered.object.clone();
        if object.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(InstallError::MissingName { kind: info.kind.to_owned() });
        }
        object.metadata.namespace = match info.namespaced {
            true => Some(object.metadata.namespace.take().unwrap_or_else(|| manifest.namespace.clone())),
            false => None,
        };
        owner.stamp(rendered.component, &mut object);
        let key = ObjectKey::of(info.kind, &object);
        planned.push(PlannedObject { component: rendered.component, info, key, object });
    }
    planned.sort_by_key(apply_rank);
    Ok(planned)
}

fn apply_rank(p: &PlannedObject) -> (u8, Component) {
    let phase = match (p.info.is_namespace(), p.info.is_crd()) {
        (true, _) => 0,
        (_, true) => 1,
        _ => 2,
    };
    (phase, if phase == 2 { p.component } else { Component::Base })
}

/// For each component, how many of its objects are applied: lets the shell report a component as
/// installed once its last object is through.
pub fn component_counts(planned: &[PlannedObject]) -> BTreeMap<Component, usize> {
    let mut counts = BTreeMap::new();
    for p in planned {
        *counts.entry(p.component).or_insert(0) += 1;
    }
    counts
}

/// An installed object found by listing with the owner selector.
#[derive(Clone, Debug)]
pub struct Listed {
    pub info: &'static KindInfo,
    pub object: DynamicObject,
}

/// What prune deletes: listed objects that are not rendered, skipping CRDs, namespaces and anything
/// labelled not-pruned. The installer-version label plays no part.
pub fn plan_prune(listed: &[Listed], rendered: &BTreeSet<ObjectKey>) -> Vec<ObjectKey> {
    let mut doomed: Vec<ObjectKey> = listed
        .iter()
        .filter(|l| !l.info.is_crd() && !l.info.is_namespace())
        .filter(|l| !is_not_pruned(&l.object))
        .map(|l| ObjectKey::of(l.info.kind, &l.object))
        .filter(|k| !rendered.contains(k))
        .collect();
    doomed.sort();
    doomed.dedup();
    doomed
}

/// Whether an object opted out of prune with `owning-resource-not-pruned=true`.
pub fn is_not_pruned(obj: &DynamicObject) -> bool {
    obj.labels().get(labels::OWNING_RESOURCE_NOT_PRUNED).is_some_and(|v| v == "true")
}

/// Whether install also makes the `default` revision tag (§1.10): when no earlier install made one,
/// or when this install is the unrevisioned control plane.
pub fn creates_default_tag(previous_default_tag: bool, revision: Option<&str>) -> bool {
    !previous_default_tag || revision_name(revision) == labels::DEFAULT_REVISION
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::RenderedObject;
    use kube::api::TypeMeta;

    fn obj(api_version: &str, kind: &str, ns: Option<&str>, name: &str) -> DynamicObject {
        let mut o = DynamicObject {
            types: Some(TypeMeta { api_version: api_version.into(), kind: kind.into() }),
            metadata: Default::default(),
            data: serde_json::Value::Null,
        };
        o.metadata.name = Some(name.into());
        o.metadata.namespace = ns.map(str::to_owned);
        o
    }

    fn rendered(component: Component, o: DynamicObject) -> RenderedObject {
        RenderedObject { component, object: o }
    }

    #[test]
    fn apply_order_is_namespaces_crds_then_components() {
        let m = Manifest {
            revision: None,
            namespace: "istio-system".into(),
            objects: vec![
                rendered(Component::IngressGateways, obj("v1", "Service", None, "istio-ingressgateway")),
                rendered(Component::Pilot, obj("apps/v1", "Deployment", None, "istiod")),
                rendered(
                    Component::Base,
                    obj("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "gateways.networking.istio.io"),
                ),
                rendered(Component::Base, obj("v1", "ServiceAccount", None, "istio-reader-service-account")),
                rendered(Component::Base, obj("v1", "Namespace", None, "istio-system")),
            ],
            notes: vec![],
        };
        let owner = Owner::of_manifest(&m);
        let plan = plan_apply(&m, &owner).expect("plan");
        let order: Vec<String> = plan.iter().map(|p| p.key.to_string()).collect();
        assert_eq!(
            order,
            [
                "Namespace istio-system",
                "CustomResourceDefinition gateways.networking.istio.io",
                "ServiceAccount istio-system/istio-reader-service-account",
                "Deployment istio-system/istiod",
                "Service istio-system/istio-ingressgateway",
            ]
        );
        let d = &plan[3].object;
        assert_eq!(d.labels()[labels::COMPONENT], "Pilot");
        assert_eq!(d.labels()[labels::REVISION], "default");
        assert_eq!(d.labels()[labels::OWNING_RESOURCE], "unknown");
    }

    #[test]
    fn renderer_labels_win_over_stamped_ones() {
        let mut d = obj("apps/v1", "Deployment", Some("istio-system"), "istiod-canary");
        d.labels_mut().insert(labels::OWNING_RESOURCE.into(), "main".into());
        let m = Manifest {
            revision: Some("canary".into()),
            namespace: "istio-system".into(),
            objects: vec![rendered(Component::Pilot, d)],
            notes: vec![],
        };
        let owner = Owner::of_manifest(&m);
        assert_eq!(owner, Owner { owning_resource: "main".into(), revision: "canary".into() });
        assert_eq!(
            owner.selector(),
            "install.operator.istio.io/owning-resource=main,istio.io/rev=canary,operator.istio.io/component"
        );
    }

    #[test]
    fn unknown_kind_and_missing_name_are_errors() {
        let m =
            Manifest { objects: vec![rendered(Component::Pilot, obj("v1", "Pod", None, "p"))], ..Manifest::default() };
        assert!(matches!(plan_apply(&m, &Owner::of_manifest(&m)), Err(InstallError::UnknownKind { .. })));
        let m = Manifest {
            objects: vec![rendered(Component::Pilot, obj("v1", "ConfigMap", None, ""))],
            ..Manifest::default()
        };
        assert!(matches!(plan_apply(&m, &Owner::of_manifest(&m)), Err(InstallError::MissingName { .. })));
    }

    #[test]
    fn prune_skips_rendered_crds_and_not_pruned() {
        let table = |kind: &str| resources::by_kind(kind).expect("known kind");
        let mut keep = obj("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None, "tag");
        keep.labels_mut().insert(labels::OWNING_RESOURCE_NOT_PRUNED.into(), "true".into());
        let mut old_version = obj("v1", "ConfigMap", Some("istio-system"), "stale");
        old_version.labels_mut().insert(labels::OPERATOR_VERSION.into(), "0.0.1".into());
        let listed = vec![
            Listed { info: table("Deployment"), object: obj("apps/v1", "Deployment", Some("istio-system"), "istiod") },
            Listed { info: table("ConfigMap"), object: old_version },
            Listed { info: table("MutatingWebhookConfiguration"), object: keep },
            Listed { info: table("CustomResourceDefinition"), object: obj("x", "CustomResourceDefinition", None, "c") },
        ];
        let rendered: BTreeSet<ObjectKey> =
            [ObjectKey { kind: "Deployment".into(), namespace: Some("istio-system".into()), name: "istiod".into() }]
                .into();
        let doomed: Vec<String> = plan_prune(&listed, &rendered).iter().map(ToString::to_string).collect();
        assert_eq!(doomed, ["ConfigMap istio-system/stale"]);
    }

    #[test]
    fn default_tag_rules() {
        assert!(creates_default_tag(false, Some("canary")));
        assert!(creates_default_tag(true, None));
        assert!(creates_default_tag(true, Some("")));
        assert!(!creates_default_tag(true, Some("canary")));
    }
}
