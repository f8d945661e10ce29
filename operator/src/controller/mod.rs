//! The in-cluster controller for `IstioOperator` (§1.8): [`reconcile`] renders a CR with the pure
//! renderer, applies and prunes it with [`crate::install`], and writes `status` only when it
//! changes; the finalizer's cleanup removes the revision's objects ([`cleanup`]). [`error_policy`]
//! turns the error class into an action: permanent errors wait for the CR to change, transient
//! ones requeue with exponential backoff. [`run`] wires it into a `kube::runtime::Controller`.

pub mod cleanup;
pub mod leader;
pub mod metrics;
pub mod run;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::{Api, Client, ResourceExt};
use rudder_config::operator::{InstallStatus, IstioOperator};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::install::live::AppliedCache;
use crate::install::plan::{self, ObjectKey, Owner, revision_name};
use crate::install::{InstallError, InstallOptions, Progress, install, wait};
use crate::manifest::{Component, Manifest};
use crate::render::{InputFile, RenderRequest, render};
use status::Failure;

/// The finalizer that holds a CR until its objects are removed.
pub const FINALIZER: &str = "istio-finalizer.install.istio.io";
/// Annotation that pauses reconciliation of a CR when `"true"`.
pub const IGNORE_RECONCILE: &str = "install.istio.io/ignoreReconcile";
/// How often a healthy CR is re-checked for drift even without events.
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a CR with Deployments not ready yet is looked at again.
const READY_POLL: Duration = Duration::from_secs(10);

/// Whether an error can go away by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Needs a change to the CR (invalid spec, unrenderable object).
    Permanent,
    /// May succeed on retry (API errors, connected proxies).
    Transient,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid IstioOperator: {0}")]
    InvalidSpec(String),
    #[error("IstioOperator {0} has no namespace")]
    NoNamespace(String),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("revision {revision} is still used by {} proxies: {}", proxies.len(), proxies.join(", "))]
    ProxiesConnected { revision: String, proxies: Vec<String> },
}

impl Error {
    /// Which class the error belongs to; drives [`error_policy`].
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidSpec(_) | Error::NoNamespace(_) => ErrorClass::Permanent,
            Error::Install(
                InstallError::MissingType { .. }
                | InstallError::MissingName { .. }
                | InstallError::UnknownKind { .. }
                | InstallError::Convert { .. },
            ) => ErrorClass::Permanent,
            Error::Install(_) | Error::Kube { .. } | Error::ProxiesConnected { .. } => ErrorClass::Transient,
        }
    }

    fn from_finalizer(e: finalizer::Error<Error>) -> Error {
        match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            finalizer::Error::AddFinalizer(source) => Error::Kube { action: "adding the finalizer", source },
            finalizer::Error::RemoveFinalizer(source) => Error::Kube { action: "removing the finalizer", source },
            other => Error::InvalidSpec(other.to_string()),
        }
    }
}

/// What every reconcile shares: the client, the `--revision` filter and the retry counts.
pub struct Context {
    pub client: Client,
    /// Only CRs of this revision are reconciled (`None` or empty: all).
    pub revision: Option<String>,
    /// What `/metrics` serves.
    pub metrics: Arc<metrics::Metrics>,
    failures: Mutex<HashMap<String, u32>>,
    /// What was applied and the versions it produced, so unchanged objects are not re-applied.
    applied: Arc<AppliedCache>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("revision", &self.revision).finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, revision: Option<String>) -> Arc<Context> {
        Arc::new(Context {
            client,
            revision,
            metrics: Arc::default(),
            failures: Mutex::default(),
            applied: Arc::default(),
        })
    }

    /// Counts consecutive failures per CR (reset on success) and returns the count.
    fn record(&self, key: &str, failed: bool) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !failed {
            failures.remove(key);
            return 0;
        }
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    fn failures(&self, key: &str) -> u32 {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied().unwrap_or(0)
    }
}

/// `namespace/name` of a CR, for logs and the retry table.
fn cr_key(iop: &IstioOperator) -> String {
    format!("{}/{}", iop.namespace().unwrap_or_default(), iop.name_any())
}

/// Whether this controller should touch the CR at all (revision filter, ignoreReconcile).
pub fn selected(iop: &IstioOperator, revision: Option<&str>) -> bool {
    if iop.annotations().get(IGNORE_RECONCILE).is_some_and(|v| v == "true") {
        return false;
    }
    match revision.filter(|r| !r.is_empty()) {
        Some(want) => revision_name(Some(&iop.spec.revision)) == revision_name(Some(want)),
        None => true,
    }
}

/// Brings the cluster in line with one IstioOperator. Every log line inside carries the CR's
/// name and namespace (a span around the whole reconcile); the outcome goes to the metrics.
pub async fn reconcile(iop: Arc<IstioOperator>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span =
        tracing::info_span!("reconcile", name = %iop.name_any(), namespace = %iop.namespace().unwrap_or_default());
    reconcile_inner(iop, ctx).instrument(span).await
}

async fn reconcile_inner(iop: Arc<IstioOperator>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = cr_key(&iop);
    if !selected(&iop, ctx.revision.as_deref()) {
        tracing::debug!("not selected by revision or ignoreReconcile; skipping");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_selected(iop, &ctx).await;
    ctx.metrics.reconciled(result.as_ref().err().map(Error::class), started.elapsed());
    ctx.record(&key, result.is_err());
    match &result {
        Ok(action) => tracing::info!(?action, "reconciled"),
        Err(e) => tracing::warn!(error = %e, class = ?e.class(), "reconcile failed"),
    }
    result
}

async fn reconcile_selected(iop: Arc<IstioOperator>, ctx: &Context) -> Result<Action, Error> {
    let ns = iop.namespace().ok_or_else(|| Error::NoNamespace(iop.name_any()))?;
    let api: Api<IstioOperator> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, iop, |event| async {
        match event {
            Event::Apply(iop) => apply(&api, &iop, ctx).await,
            Event::Cleanup(iop) => cleanup::cleanup(&api, &iop, ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// Permanent errors wait for a change; transient ones back off 5s, 10s, 20s … up to 5 minutes.
pub fn error_policy(iop: Arc<IstioOperator>, error: &Error, ctx: Arc<Context>) -> Action {
    match error.class() {
        ErrorClass::Permanent => Action::await_change(),
        ErrorClass::Transient => Action::requeue(backoff(ctx.failures(&cr_key(&iop)))),
    }
}

/// The delay before retry number `failures` (1-based).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64 << exp).min(RESYNC)
}

/// The apply path: render, install (apply + prune), readiness check, status.
async fn apply(api: &Api<IstioOperator>, iop: &IstioOperator, ctx: &Context) -> Result<Action, Error> {
    let old = iop.status.clone().unwrap_or_default();
    let generation = iop.metadata.generation;
    let manifest = match render_cr(iop) {
        Ok(m) => m,
        Err(message) => {
            write_status(api, iop, &old, &status::invalid(&old, generation, &message)).await?;
            return Ok(Action::await_change());
        }
    };
    let components = components(&manifest);
    let mut latest = old;
    if latest.observed_generation != generation {
        let begin = status::begin(&latest, generation, &components);
        write_status(api, iop, &latest, &begin).await?;
        latest = begin;
    }
    let opts = InstallOptions { wait: false, cache: Some(ctx.applied.clone()), ..InstallOptions::default() };
    let outcome = install(&ctx.client, &manifest, &opts, &mut Progress::quiet()).await;
    match outcome {
        Ok(report) => {
            ctx.metrics.objects(report.applied.len(), report.pruned.len());
            let pending = not_ready(&ctx.client, &manifest, &report.left_to_owner).await?;
            let new = status::installed(&latest, generation, &components, None, &pending);
            write_status(api, iop, &latest, &new).await?;
            Ok(Action::requeue(if pending.is_empty() { RESYNC } else { READY_POLL }))
        }
        Err(e) => {
            let failure = Failure { component: failed_component(&manifest, &e), error: e.to_string() };
            let new = status::installed(&latest, generation, &components, Some(&failure), &[]);
            write_status(api, iop, &latest, &new).await?;
            Err(Error::Install(e))
        }
    }
}

/// Renders the CR as the single input file; any render error is an invalid spec.
pub fn render_cr(iop: &IstioOperator) -> Result<Manifest, String> {
    let value = input_document(iop).map_err(|e| e.to_string())?;
    let req = RenderRequest { files: vec![InputFile { name: cr_key(iop), value }], ..RenderRequest::default() };
    render(&req).map_err(|e| e.to_string())
}

/// The CR as an input file: type, name, namespace, labels, annotations and spec; no status.
fn input_document(iop: &IstioOperator) -> Result<Value, serde_json::Error> {
    Ok(json!({
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": iop.name_any(), "namespace": iop.namespace()},
        "spec": serde_json::to_value(&iop.spec)?,
    }))
}

/// The components a manifest renders, in install order.
fn components(manifest: &Manifest) -> Vec<Component> {
    let mut out: Vec<Component> = manifest.objects.iter().map(|o| o.component).collect();
    out.sort();
    out.dedup();
    out
}

/// The component whose object an apply error names, if any.
fn failed_component(manifest: &Manifest, error: &InstallError) -> Option<Component> {
    let InstallError::Kube { target, .. } = error else { return None };
    let planned = plan::plan_apply(manifest, &Owner::of_manifest(manifest)).ok()?;
    planned.iter().find(|p| p.key.to_string() == *target).map(|p| p.component)
}

/// Deployments of the manifest that are not rolled out yet (one list call, no waiting). Shared
/// gateways left to the CR that owns them are that CR's to watch.
async fn not_ready(client: &Client, manifest: &Manifest, not_ours: &[ObjectKey]) -> Result<Vec<String>, Error> {
    let owner = Owner::of_manifest(manifest);
    let planned = plan::plan_apply(manifest, &owner)?;
    let wanted: Vec<ObjectKey> = planned
        .iter()
        .filter(|p| p.info.kind == "Deployment" && !not_ours.contains(&p.key))
        .map(|p| p.key.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<Deployment> = Api::all(client.clone());
    let found = api
        .list(&ListParams::default().labels(&owner.selector()))
        .await
        .map_err(|source| Error::Kube { action: "listing Deployments", source })?;
    Ok(wait::pending(&wanted, &found.items).into_iter().map(|(k, why)| format!("{k} ({why})")).collect())
}

/// Merge-patches `/status` from `old` to `new`; no request when they are equal.
pub(crate) async fn write_status(
    api: &Api<IstioOperator>,
    iop: &IstioOperator,
    old: &InstallStatus,
    new: &InstallStatus,
) -> Result<(), Error> {
    if old == new {
        return Ok(());
    }
    let to_value = |s: &InstallStatus| serde_json::to_value(s).unwrap_or(Value::Null);
    let patch = json!({"status": status::merge_patch(&to_value(old), &to_value(new))});
    api.patch_status(&iop.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Kube { action: "writing the IstioOperator status", source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_resync_period() {
        let secs: Vec<u64> = [1, 2, 3, 4, 7, 20].iter().map(|n| backoff(*n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 300, 300]);
    }

    #[test]
    fn permanent_and_transient_classes() {
        assert_eq!(Error::InvalidSpec("x".into()).class(), ErrorClass::Permanent);
        let proxies = Error::ProxiesConnected { revision: "canary".into(), proxies: vec!["a/b".into()] };
        assert_eq!(proxies.class(), ErrorClass::Transient);
        let timeout = Error::Install(InstallError::Timeout { seconds: 1, pending: vec![] });
        assert_eq!(timeout.class(), ErrorClass::Transient);
    }
}
