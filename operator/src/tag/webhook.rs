//! Pure transforms behind revision tags (§1.9, §2.1): a revision's injector webhook becomes a tag
//! webhook; the unrevisioned injector is switched off with never-match selectors; the revision's
//! validator becomes the default validator.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use rudder_config::labels;

/// Name of the default validator the `default` tag brings.
pub const DEFAULT_VALIDATOR: &str = "istiod-default-validator";
/// The tag that also takes over `istio-injection=enabled` namespaces.
pub const DEFAULT_TAG: &str = "default";
const WEBHOOK_SUFFIX: &str = "sidecar-injector.istio.io";
const REV_NAMESPACE: &str = "rev.namespace.";
const REV_OBJECT: &str = "rev.object.";

/// The name of a tag's webhook configuration; `-<ns>` is appended outside `istio-system`.
pub fn tag_webhook_name(tag: &str, istio_namespace: &str) -> String {
    match istio_namespace {
        "istio-system" | "" => format!("istio-revision-tag-{tag}"),
        ns => format!("istio-revision-tag-{tag}-{ns}"),
    }
}

/// The namespace the webhook's injector service lives in (`istio-system` if it names none).
pub fn injector_namespace(mwc: &MutatingWebhookConfiguration) -> String {
    mwc.webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.service.as_ref().map(|s| s.namespace.clone()))
        .unwrap_or_else(|| "istio-system".to_owned())
}

/// Builds the tag webhook configuration `istio-revision-tag-<tag>` from a revision's injector
/// webhook: same service, rules and policies, selectors keyed on `istio.io/rev=<tag>`; the
/// `default` tag also gets the `istio-injection=enabled` and opt-in-pod webhooks.
pub fn tag_webhook(
    revision_webhook: &MutatingWebhookConfiguration,
    tag: &str,
    revision: &str,
) -> MutatingWebhookConfiguration {
    let hooks = revision_webhook.webhooks.as_deref().unwrap_or_default();
    let template = hooks.iter().find(|w| w.name.starts_with(REV_NAMESPACE)).or(hooks.first());
    let Some(template) = template else {
        return MutatingWebhookConfiguration { metadata: tag_meta(revision_webhook, tag, revision), webhooks: None };
    };
    let suffix = template.name.strip_prefix(REV_NAMESPACE).unwrap_or(WEBHOOK_SUFFIX);
    let mut webhooks = vec![
        with(template, REV_NAMESPACE, suffix, rev_namespace_selectors(tag)),
        with(template, REV_OBJECT, suffix, rev_object_selectors(tag)),
    ];
    if tag == DEFAULT_TAG {
        webhooks.push(with(template, "namespace.", suffix, legacy_namespace_selectors()));
        webhooks.push(with(template, "object.", suffix, legacy_object_selectors()));
    }
    MutatingWebhookConfiguration { metadata: tag_meta(revision_webhook, tag, revision), webhooks: Some(webhooks) }
}

fn tag_meta(source: &MutatingWebhookConfiguration, tag: &str, revision: &str) -> ObjectMeta {
    let mut labels = BTreeMap::new();
    labels.insert(labels::APP.to_owned(), "sidecar-injector".to_owned());
    labels.insert(labels::TAG.to_owned(), tag.to_owned());
    labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    ObjectMeta {
        name: Some(tag_webhook_name(tag, &injector_namespace(source))),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

type Selectors = (LabelSelector, LabelSelector);

fn with(template: &MutatingWebhook, prefix: &str, suffix: &str, (ns, obj): Selectors) -> MutatingWebhook {
    MutatingWebhook {
        name: format!("{prefix}{suffix}"),
        namespace_selector: Some(ns),
        object_selector: Some(obj),
        ..template.clone()
    }
}

fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn exprs(requirements: Vec<LabelSelectorRequirement>) -> LabelSelector {
    LabelSelector { match_expressions: Some(requirements), match_labels: None }
}

fn not_opted_out() -> LabelSelectorRequirement {
    req(labels::SIDECAR_INJECT, "NotIn", &["false"])
}

fn rev_namespace_selectors(tag: &str) -> Selectors {
    (
        exprs(vec![req(labels::REVISION, "In", &[tag]), req(labels::ISTIO_INJECTION, "DoesNotExist", &[])]),
        exprs(vec![not_opted_out()]),
    )
}

fn rev_object_selectors(tag: &str) -> Selectors {
    (
        exprs(vec![req(labels::REVISION, "DoesNotExist", &[]), req(labels::ISTIO_INJECTION, "DoesNotExist", &[])]),
        exprs(vec![not_opted_out(), req(labels::REVISION, "In", &[tag])]),
    )
}

fn legacy_namespace_selectors() -> Selectors {
    (exprs(vec![req(labels::ISTIO_INJECTION, "In", &[labels::INJECTION_ENABLED])]), exprs(vec![not_opted_out()]))
}

fn legacy_object_selectors() -> Selectors {
    (
        exprs(vec![req(labels::ISTIO_INJECTION, "DoesNotExist", &[]), req(labels::REVISION, "DoesNotExist", &[])]),
        exprs(vec![req(labels::SIDECAR_INJECT, "In", &["true"]), req(labels::REVISION, "DoesNotExist", &[])]),
    )
}

/// A selector no namespace or pod carries.
pub fn never_match() -> LabelSelector {
    LabelSelector {
        match_labels: Some([(labels::DEACTIVATED.to_owned(), labels::NEVER_MATCH.to_owned())].into()),
        match_expressions: None,
    }
}

/// Switches every webhook of a configuration off (kept, so it can be switched back on).
pub fn deactivate(mwc: &MutatingWebhookConfiguration) -> MutatingWebhookConfiguration {
    let mut out = mwc.clone();
    for w in out.webhooks.iter_mut().flatten() {
        w.namespace_selector = Some(never_match());
        w.object_selector = Some(never_match());
    }
    out
}

/// Whether every webhook of the configuration is switched off.
pub fn is_deactivated(mwc: &MutatingWebhookConfiguration) -> bool {
    let off = Some(never_match());
    mwc.webhooks.iter().flatten().all(|w| w.namespace_selector == off && w.object_selector == off)
}

/// The default validator: the revision's validator renamed, checking config objects that carry
/// no `istio.io/rev` label.
pub fn default_validator(
    revision_validator: &ValidatingWebhookConfiguration,
    revision: &str,
) -> ValidatingWebhookConfiguration {
    let mut labels = BTreeMap::new();
    labels.insert(labels::APP.to_owned(), "istiod".to_owned());
    labels.insert(labels::TAG.to_owned(), DEFAULT_TAG.to_owned());
    labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    let mut webhooks = revision_validator.webhooks.clone();
    for w in webhooks.iter_mut().flatten() {
        w.name = "validation.istio.io".to_owned();
        w.object_selector = Some(exprs(vec![req(labels::REVISION, "DoesNotExist", &[])]));
    }
    if let Some(ws) = webhooks.as_mut() {
        ws.truncate(1);
    }
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(DEFAULT_VALIDATOR.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        webhooks,
    }
}
