//! The install shell: server-side apply of a planned manifest, prune, the `default` revision tag,
//! and the readiness wait. Each step is a few API calls around a pure planner.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use rudder_config::labels;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::live::{self, AppliedCache};
use super::plan::{self, Listed, ObjectKey, Owner, PlannedObject};
use super::resources::{self, KindInfo};
use super::{InstallError, Progress, wait};
use crate::manifest::{Component, Manifest};
use crate::tag::webhook as tagwh;

/// How to install.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// Print what would be applied and pruned; change nothing.
    pub dry_run: bool,
    /// Wait for Deployments to be ready afterwards.
    pub wait: bool,
    pub readiness_timeout: Duration,
    pub poll_interval: Duration,
    /// Reconcile mode (the controller sets it, and keeps it between reconciles): read the live
    /// objects first, then skip objects nobody changed since their last apply, leave webhook
    /// fields discovery owns to discovery, and leave shared gateways to the CR that owns them
    /// (all in [`super::live`] and [`plan::yields_to_live_owner`]). `None`: apply everything.
    pub cache: Option<Arc<AppliedCache>>,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            dry_run: false,
            wait: true,
            readiness_timeout: Duration::from_secs(300),
            poll_interval: Duration::from_secs(2),
            cache: None,
        }
    }
}

/// What an install did (or, on a dry run, would do).
#[derive(Clone, Debug, Default)]
pub struct InstallReport {
    /// Objects sent to the API server (in reconcile mode, only those that needed it).
    pub applied: Vec<ObjectKey>,
    /// Objects not applied because nothing changed since their last apply (reconcile mode).
    pub unchanged: Vec<ObjectKey>,
    /// Rendered shared objects left to the other CR that owns them (reconcile mode).
    pub left_to_owner: Vec<ObjectKey>,
    pub pruned: Vec<ObjectKey>,
    /// Whether the `default` revision tag was (re)written.
    pub default_tag: bool,
}

/// Installs a manifest: apply (namespaces, CRDs, then components in order), prune, `default` tag, wait.
pub async fn install(
    client: &Client,
    manifest: &Manifest,
    opts: &InstallOptions,
    progress: &mut Progress,
) -> Result<InstallReport, InstallError> {
    let owner = Owner::of_manifest(manifest);
    let mut planned = plan::plan_apply(manifest, &owner)?;
    let previous_tag = default_tag_exists(client).await?;
    let tag_objects = match plan::creates_default_tag(previous_tag, manifest.revision.as_deref()) {
        true => default_tag_objects(&mut planned, &owner)?,
        false => Vec::new(),
    };
    let mut rendered: BTreeSet<ObjectKey> = planned.iter().map(|p| p.key.clone()).collect();
    rendered.extend(tag_objects.iter().map(|(info, o)| ObjectKey::of(info.kind, o)));
    let mut report = InstallReport { default_tag: !tag_objects.is_empty(), ..InstallReport::default() };
    let live = match &opts.cache {
        Some(_) => live_objects(client, planned.iter().map(|p| p.info)).await?,
        None => LiveObjects::new(),
    };
    if opts.cache.is_some() {
        let (keep, yielded): (Vec<_>, Vec<_>) =
            planned.into_iter().partition(|p| !plan::yields_to_live_owner(p, &owner, live.get(&p.key)));
        planned = keep;
        report.left_to_owner = yielded.into_iter().map(|p| p.key).collect();
        for key in &report.left_to_owner {
            progress.line(&format!("  left {key} to the CR that owns it"));
        }
    }
    let applier = Applier { client, live: &live, cache: opts.cache.as_deref() };
    if opts.dry_run {
        report.applied = rendered.iter().cloned().collect();
        report.pruned = plan_prune(client, &owner, &rendered).await?;
        print_dry_run(&report, progress);
        return Ok(report);
    }
    apply_planned(&applier, &planned, &mut report, progress).await?;
    report.pruned = plan_prune(client, &owner, &rendered).await?;
    for key in &report.pruned {
        delete(client, key).await?;
        if let Some(cache) = &opts.cache {
            cache.forget(key);
        }
        progress.line(&format!("  removed {key}"));
    }
    for (info, object) in &tag_objects {
        applier.apply(info, object, &mut report).await?;
    }
    if report.default_tag {
        progress.done(&format!("Default revision tag points at {}", owner.revision));
    }
    if opts.wait {
        let wanted: Vec<ObjectKey> =
            planned.iter().filter(|p| p.info.kind == "Deployment").map(|p| p.key.clone()).collect();
        wait::wait_for_deployments(client, &owner, &wanted, opts.readiness_timeout, opts.poll_interval, progress)
            .await?;
    }
    progress.done("Installation complete");
    Ok(report)
}

fn print_dry_run(report: &InstallReport, progress: &mut Progress) {
    for key in &report.applied {
        progress.line(&format!("would apply {key}"));
    }
    for key in &report.pruned {
        progress.line(&format!("would prune {key}"));
    }
}

async fn apply_planned(
    applier: &Applier<'_>,
    planned: &[PlannedObject],
    report: &mut InstallReport,
    progress: &mut Progress,
) -> Result<(), InstallError> {
    let mut remaining = plan::component_counts(planned);
    for p in planned {
        applier.apply(p.info, &p.object, report).await?;
        let left = remaining.entry(p.component).or_insert(1);
        *left -= 1;
        if *left == 0 {
            progress.done(&format!("{} installed", p.component.label()));
        }
    }
    Ok(())
}

/// Live objects by key, as listed before applying (reconcile mode only).
type LiveObjects = BTreeMap<ObjectKey, DynamicObject>;

/// Every object Rudder manages (`operator.istio.io/managed=Reconcile`, whoever owns it) of the
/// given kinds: one list per kind, reads only. Kinds whose API is not served yet (a CRD that
/// this very install creates) simply have no objects.
async fn live_objects(
    client: &Client,
    kinds: impl IntoIterator<Item = &'static KindInfo>,
) -> Result<LiveObjects, InstallError> {
    let mut distinct: Vec<&'static KindInfo> = Vec::new();
    for info in kinds {
        if !distinct.contains(&info) {
            distinct.push(info);
        }
    }
    let params = ListParams::default().labels(&format!("{}={}", labels::MANAGED, labels::MANAGED_RECONCILE));
    let mut out = LiveObjects::new();
    for info in distinct {
        match api_for(client, info, None).list(&params).await {
            Ok(found) => out.extend(found.items.into_iter().map(|o| (ObjectKey::of(info.kind, &o), o))),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(InstallError::kube("list", format!("{} objects", info.kind), e)),
        }
    }
    Ok(out)
}

/// Applies one object at a time; in reconcile mode with the live objects and the cache.
struct Applier<'a> {
    client: &'a Client,
    live: &'a LiveObjects,
    cache: Option<&'a AppliedCache>,
}

impl Applier<'_> {
    async fn apply(
        &self,
        info: &'static KindInfo,
        object: &DynamicObject,
        report: &mut InstallReport,
    ) -> Result<(), InstallError> {
        let key = ObjectKey::of(info.kind, object);
        let Some(cache) = self.cache else {
            apply(self.client, info, object).await?;
            report.applied.push(key);
            return Ok(());
        };
        let live = self.live.get(&key);
        let body = live::leave_run_time_fields(info.kind, object, live);
        if cache.unchanged(&key, &body, live) {
            report.unchanged.push(key);
            return Ok(());
        }
        match apply_object(self.client, info, &body).await {
            Ok(stored) => cache.record(&key, &body, stored.metadata.resource_version.as_deref()),
            Err(e) => {
                cache.forget(&key);
                return Err(e);
            }
        }
        report.applied.push(key);
        Ok(())
    }
}

/// Whether some earlier install made a `default` revision tag.
async fn default_tag_exists(client: &Client) -> Result<bool, InstallError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let selector = format!("{}=sidecar-injector,{}={}", labels::APP, labels::TAG, tagwh::DEFAULT_TAG);
    let found = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| InstallError::kube("list", "MutatingWebhookConfigurations", e))?;
    Ok(!found.items.is_empty())
}

/// The `default` tag's webhook and validator, built from the revision's rendered ones. For an
/// unrevisioned install the rendered `istio-sidecar-injector` is switched off before it is ever
/// applied, so there is no moment with two active default injectors.
fn default_tag_objects(
    planned: &mut [PlannedObject],
    owner: &Owner,
) -> Result<Vec<(&'static KindInfo, DynamicObject)>, InstallError> {
    let mut out = Vec::new();
    let is_revision_object = |p: &PlannedObject, kind: &str, prefix: &str| {
        p.info.kind == kind
            && p.key.name.starts_with(prefix)
            && !p.object.labels().contains_key(labels::TAG)
            && p.object.labels().get(labels::REVISION) == Some(&owner.revision)
    };
    let injector = "MutatingWebhookConfiguration";
    if let Some(p) = planned.iter_mut().find(|p| is_revision_object(p, injector, "istio-sidecar-injector")) {
        let mwc: MutatingWebhookConfiguration = typed(&p.object)?;
        let tag = tagwh::tag_webhook(&mwc, tagwh::DEFAULT_TAG, &owner.revision);
        out.push((p.info, with_owner(dynamic(&tag)?, owner)));
        if owner.revision == labels::DEFAULT_REVISION {
            p.object = merge_body(&p.object, dynamic(&tagwh::deactivate(&mwc))?);
        }
    }
    let validator = "ValidatingWebhookConfiguration";
    if let Some(p) = planned.iter().find(|p| is_revision_object(p, validator, "istio-validator")) {
        let vwc: ValidatingWebhookConfiguration = typed(&p.object)?;
        out.push((p.info, with_owner(dynamic(&tagwh::default_validator(&vwc, &owner.revision))?, owner)));
    }
    Ok(out)
}

/// Keeps the rendered metadata (owner labels) and takes the body of `body`.
fn merge_body(rendered: &DynamicObject, body: DynamicObject) -> DynamicObject {
    DynamicObject { types: rendered.types.clone(), metadata: rendered.metadata.clone(), data: body.data }
}

fn with_owner(mut obj: DynamicObject, owner: &Owner) -> DynamicObject {
    let l = obj.labels_mut();
    l.insert(labels::OWNING_RESOURCE.into(), owner.owning_resource.clone());
    l.insert(labels::COMPONENT.into(), Component::Pilot.label().into());
    l.insert(labels::MANAGED.into(), labels::MANAGED_RECONCILE.into());
    l.insert(labels::OWNING_RESOURCE_NOT_PRUNED.into(), "true".into());
    obj
}

/// A dynamic object as a typed one.
pub fn typed<T: DeserializeOwned>(obj: &DynamicObject) -> Result<T, InstallError> {
    let convert = |source| InstallError::Convert { what: obj.name_any(), source };
    serde_json::to_value(obj).and_then(serde_json::from_value).map_err(convert)
}

/// A typed object (with apiVersion/kind) as a dynamic one.
pub fn dynamic<T: Serialize + ResourceExt>(obj: &T) -> Result<DynamicObject, InstallError> {
    let convert = |source| InstallError::Convert { what: obj.name_any(), source };
    serde_json::to_value(obj).and_then(serde_json::from_value).map_err(convert)
}

/// The API for one kind, namespaced when the kind is and a namespace is given.
pub fn api_for(client: &Client, info: &KindInfo, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = info.api_resource();
    match (info.namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side apply under Rudder's field manager, forcing ownership of conflicting fields.
pub async fn apply(client: &Client, info: &KindInfo, object: &DynamicObject) -> Result<(), InstallError> {
    apply_object(client, info, object).await.map(drop)
}

/// [`apply`], returning the object as the API server stored it.
pub async fn apply_object(
    client: &Client,
    info: &KindInfo,
    object: &DynamicObject,
) -> Result<DynamicObject, InstallError> {
    let key = ObjectKey::of(info.kind, object);
    let mut body = object.clone();
    body.metadata.managed_fields = None;
    body.metadata.resource_version = None;
    body.metadata.uid = None;
    body.metadata.creation_timestamp = None;
    let params = PatchParams::apply(labels::FIELD_MANAGER).force();
    api_for(client, info, object.metadata.namespace.as_deref())
        .patch(&key.name, &params, &Patch::Apply(&body))
        .await
        .map_err(|e| InstallError::kube("apply", &key, e))
}

/// Deletes one object with background propagation; an object already gone is fine.
pub async fn delete(client: &Client, key: &ObjectKey) -> Result<(), InstallError> {
    let info = resources::by_kind(&key.kind)
        .ok_or_else(|| InstallError::UnknownKind { api_version: String::new(), kind: key.kind.clone() })?;
    let api = api_for(client, info, key.namespace.as_deref());
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(InstallError::kube("delete", key, e)),
    }
}

/// Lists objects of the given kinds (all namespaces) matching a label selector.
pub async fn list_labelled(
    client: &Client,
    kinds: impl IntoIterator<Item = &'static KindInfo>,
    selector: &str,
) -> Result<Vec<Listed>, InstallError> {
    let mut listed = Vec::new();
    let params = ListParams::default().labels(selector);
    for info in kinds {
        let found = api_for(client, info, None)
            .list(&params)
            .await
            .map_err(|e| InstallError::kube("list", format!("{} objects", info.kind), e))?;
        listed.extend(found.items.into_iter().map(|object| Listed { info, object }));
    }
    Ok(listed)
}

async fn plan_prune(
    client: &Client,
    owner: &Owner,
    rendered: &BTreeSet<ObjectKey>,
) -> Result<Vec<ObjectKey>, InstallError> {
    let listed = list_labelled(client, resources::prunable(), &owner.selector()).await?;
    Ok(plan::plan_prune(&listed, rendered))
}
