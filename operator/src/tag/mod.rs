//! Revision tags (§1.9, §2.1): stable names (`prod`, `default`) that namespaces use in
//! `istio.io/rev` and that point at a real revision. The webhook transforms are pure
//! ([`webhook`]); [`classify`] and [`check_set`] decide what may happen; the async functions
//! read the cluster, apply and delete.

pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use rudder_config::labels;

use crate::install::apply::{apply, dynamic};
use crate::install::resources;

pub use webhook::{deactivate, default_validator, tag_webhook, tag_webhook_name};

/// Why a tag operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("revision {revision:?} not found (installed revisions: {})", list(known))]
    RevisionNotFound { revision: String, known: Vec<String> },
    #[error("revision {revision:?} has {count} injector webhook configurations; pass --webhook-name to pick one")]
    AmbiguousRevision { revision: String, count: usize },
    #[error("{tag:?} is the name of an installed revision; a tag cannot share it")]
    TagIsRevision { tag: String },
    #[error(
        "tag {tag:?} already points at revision {current:?} (namespaces using it: {}); pass --overwrite to re-point it",
        list(namespaces)
    )]
    TagExists { tag: String, current: String, namespaces: Vec<String> },
    #[error("tag {tag:?} is still used by namespaces {}; pass -y to remove it anyway", list(namespaces))]
    InUse { tag: String, namespaces: Vec<String> },
    #[error("tag {tag:?} not found")]
    TagNotFound { tag: String },
    #[error("{action} {target}: {source}")]
    Kube {
        action: &'static str,
        target: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying the tag: {0}")]
    Apply(String),
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

fn kube_err(action: &'static str, target: &str) -> impl FnOnce(kube::Error) -> TagError {
    let target = target.to_owned();
    move |source| TagError::Kube { action, target, source }
}

/// The injector webhook configurations in a cluster, split into revisions and tags.
#[derive(Clone, Debug, Default)]
pub struct Webhooks {
    /// Revision → its injector configurations (normally one).
    pub revisions: BTreeMap<String, Vec<MutatingWebhookConfiguration>>,
    /// Tag → its configuration.
    pub tags: BTreeMap<String, MutatingWebhookConfiguration>,
}

/// Splits sidecar-injector webhook configurations: those with `istio.io/tag` are tags, those with
/// only `istio.io/rev` are revisions.
pub fn classify(mwcs: Vec<MutatingWebhookConfiguration>) -> Webhooks {
    let mut out = Webhooks::default();
    for mwc in mwcs {
        let l = mwc.labels();
        if let Some(tag) = l.get(labels::TAG).cloned() {
            out.tags.insert(tag, mwc);
        } else if let Some(rev) = l.get(labels::REVISION).cloned() {
            out.revisions.entry(rev).or_default().push(mwc);
        }
    }
    out
}

/// The revision a tag configuration points at.
pub fn tag_revision(mwc: &MutatingWebhookConfiguration) -> String {
    mwc.labels().get(labels::REVISION).cloned().unwrap_or_default()
}

/// Checks `tag set` (§1.9) and returns the revision's injector configuration to clone.
/// `webhook_name` picks one configuration when a revision has several.
pub fn check_set<'a>(
    hooks: &'a Webhooks,
    tag: &str,
    revision: &str,
    webhook_name: Option<&str>,
    namespaces_using_tag: &[String],
    overwrite: bool,
) -> Result<&'a MutatingWebhookConfiguration, TagError> {
    let candidates: Vec<&MutatingWebhookConfiguration> = hooks
        .revisions
        .get(revision)
        .into_iter()
        .flatten()
        .filter(|m| webhook_name.is_none_or(|n| m.name_any() == n))
        .collect();
    let source = match candidates.as_slice() {
        [] => {
            let known = hooks.revisions.keys().cloned().collect();
            return Err(TagError::RevisionNotFound { revision: revision.to_owned(), known });
        }
        [one] => *one,
        many => return Err(TagError::AmbiguousRevision { revision: revision.to_owned(), count: many.len() }),
    };
    if tag != webhook::DEFAULT_TAG && hooks.revisions.contains_key(tag) {
        return Err(TagError::TagIsRevision { tag: tag.to_owned() });
    }
    if let Some(existing) = hooks.tags.get(tag) {
        let current = tag_revision(existing);
        if current != revision && !overwrite {
            let namespaces = namespaces_using_tag.to_vec();
            return Err(TagError::TagExists { tag: tag.to_owned(), current, namespaces });
        }
    }
    Ok(source)
}

/// One row of `tag list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    pub tag: String,
    pub revision: String,
    pub namespaces: Vec<String>,
}

/// Lists the sidecar-injector webhook configurations.
pub async fn cluster_webhooks(client: &Client) -> Result<Webhooks, TagError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{}=sidecar-injector", labels::APP));
    let found = api.list(&params).await.map_err(kube_err("list", "MutatingWebhookConfigurations"))?;
    Ok(classify(found.items))
}

/// Names of namespaces labelled `istio.io/rev=<tag>`.
pub async fn namespaces_using(client: &Client, tag: &str) -> Result<Vec<String>, TagError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{}={tag}", labels::REVISION));
    let found = api.list(&params).await.map_err(kube_err("list", "Namespaces"))?;
    Ok(found.items.iter().map(ResourceExt::name_any).collect())
}

/// Options of `tag set`.
#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    pub overwrite: bool,
    /// Which of the revision's injector configurations to clone, when it has several.
    pub webhook_name: Option<String>,
}

/// `tag set`: checks, then applies the tag configuration; for `default` also switches off the
/// unrevisioned injector and applies the default validator. Returns the tag configuration.
pub async fn set(
    client: &Client,
    tag: &str,
    revision: &str,
    opts: &SetOptions,
) -> Result<MutatingWebhookConfiguration, TagError> {
    let hooks = cluster_webhooks(client).await?;
    let using = namespaces_using(client, tag).await?;
    let source = check_set(&hooks, tag, revision, opts.webhook_name.as_deref(), &using, opts.overwrite)?;
    let generated = tag_webhook(source, tag, revision);
    apply_typed(client, "MutatingWebhookConfiguration", &generated).await?;
    if tag == webhook::DEFAULT_TAG {
        for unrevisioned in hooks.revisions.get(labels::DEFAULT_REVISION).into_iter().flatten() {
            if !webhook::is_deactivated(unrevisioned) {
                apply_typed(client, "MutatingWebhookConfiguration", &deactivate(unrevisioned)).await?;
            }
        }
        if let Some(validator) = revision_validator(client, revision).await? {
            apply_typed(client, "ValidatingWebhookConfiguration", &default_validator(&validator, revision)).await?;
        }
    }
    Ok(generated)
}

async fn revision_validator(
    client: &Client,
    revision: &str,
) -> Result<Option<ValidatingWebhookConfiguration>, TagError> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{}={revision}", labels::REVISION));
    let found = api.list(&params).await.map_err(kube_err("list", "ValidatingWebhookConfigurations"))?;
    Ok(found
        .items
        .into_iter()
        .find(|v| v.name_any().starts_with("istio-validator") && !v.labels().contains_key(labels::TAG)))
}

async fn apply_typed<T>(client: &Client, kind: &str, obj: &T) -> Result<(), TagError>
where
    T: serde::Serialize + ResourceExt,
{
    let info = resources::by_kind(kind).ok_or_else(|| TagError::Apply(format!("unknown kind {kind}")))?;
    let mut object = dynamic(obj).map_err(|e| TagError::Apply(e.to_string()))?;
    object.types = Some(kube::api::TypeMeta { api_version: info.api_version.into(), kind: info.kind.into() });
    apply(client, info, &object).await.map_err(|e| TagError::Apply(e.to_string()))
}

/// `tag list`: every tag with its revision and the namespaces using it.
pub async fn list_tags(client: &Client) -> Result<Vec<TagInfo>, TagError> {
    let hooks = cluster_webhooks(client).await?;
    let mut out = Vec::new();
    for (tag, mwc) in &hooks.tags {
        let namespaces = namespaces_using(client, tag).await?;
        out.push(TagInfo { tag: tag.clone(), revision: tag_revision(mwc), namespaces });
    }
    Ok(out)
}

/// `tag remove`: deletes the tag configuration (and for `default` the default validator).
/// Refuses while namespaces use the tag unless `force`.
pub async fn remove(client: &Client, tag: &str, force: bool) -> Result<(), TagError> {
    let hooks = cluster_webhooks(client).await?;
    let Some(mwc) = hooks.tags.get(tag) else {
        return Err(TagError::TagNotFound { tag: tag.to_owned() });
    };
    let namespaces = namespaces_using(client, tag).await?;
    if !namespaces.is_empty() && !force {
        return Err(TagError::InUse { tag: tag.to_owned(), namespaces });
    }
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = mwc.name_any();
    api.delete(&name, &DeleteParams::background()).await.map_err(kube_err("delete", &name))?;
    if tag == webhook::DEFAULT_TAG {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        match api.delete(webhook::DEFAULT_VALIDATOR, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err("delete", webhook::DEFAULT_VALIDATOR)(e)),
        }
    }
    Ok(())
}
