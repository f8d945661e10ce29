//! The admission webhook configurations of the discovery server: the injection
//! MutatingWebhookConfiguration `istio-sidecar-injector[-<rev>][-<ns>]` with exactly the
//! selector matrix of spec §2.1 (`rev.namespace`, `rev.object`; plus `namespace`, `object`
//! and, with `enableNamespacesByDefault`, `auto` for the default revision), and the config
//! ValidatingWebhookConfiguration `istio-validator[-<rev>]-<ns>`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use rudder_config::labels;

use super::RenderError;
use super::objects::{labels_of, meta, rendered};
use super::values::Context;
use crate::manifest::{Component, RenderedObject};

/// Namespaces the `auto` webhook never matches.
const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease", "local-path-storage"];

/// The webhook configurations Pilot renders.
pub fn render(ctx: &Context) -> Result<Vec<RenderedObject>, RenderError> {
    let mut out = vec![rendered(Component::Pilot, &injector(ctx))?];
    if ctx.bool_value("global.configValidation", true) && !ctx.remote() {
        out.push(rendered(Component::Pilot, &validator(ctx))?);
    }
    Ok(out)
}

fn req(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

fn selector(reqs: Vec<LabelSelectorRequirement>) -> Option<LabelSelector> {
    Some(LabelSelector { match_expressions: Some(reqs), match_labels: None })
}

/// Name of the injection MWC: `istio-sidecar-injector[-<rev>]`, `-<ns>` outside istio-system.
pub fn injector_name(ctx: &Context) -> String {
    let name = ctx.revisioned("istio-sidecar-injector");
    if ctx.namespace == "istio-system" { name } else { format!("{name}-{}", ctx.namespace) }
}

/// Where the API server sends admission requests: the istiod Service, or the remote URL.
///
/// `caBundle` is only rendered when `values.istiodRemote.injectionCABundle` gives one (PEM text).
/// Otherwise the field is left out, so a forced server-side apply never takes it from discovery,
/// which patches it in at run time.
fn client_config(ctx: &Context, path: &str, url: Option<String>) -> WebhookClientConfig {
    match url {
        Some(url) => WebhookClientConfig {
            url: Some(url),
            ca_bundle: ctx
                .str_value("istiodRemote.injectionCABundle")
                .filter(|pem| !pem.is_empty())
                .map(|pem| ByteString(pem.into_bytes())),
            service: None,
        },
        None => WebhookClientConfig {
            service: Some(ServiceReference {
                name: ctx.istiod(),
                namespace: ctx.namespace.clone(),
                path: Some(path.into()),
                port: Some(443),
            }),
            ..WebhookClientConfig::default()
        },
    }
}

fn injector(ctx: &Context) -> MutatingWebhookConfiguration {
    let rev = ctx.rev_label();
    let mut hooks = vec![
        hook(
            ctx,
            "rev.namespace",
            vec![req(labels::REVISION, "In", &[rev]), req(labels::ISTIO_INJECTION, "DoesNotExist", &[])],
            vec![req(labels::SIDECAR_INJECT, "NotIn", &["false"])],
        ),
        hook(
            ctx,
            "rev.object",
            vec![req(labels::REVISION, "DoesNotExist", &[]), req(labels::ISTIO_INJECTION, "DoesNotExist", &[])],
            vec![req(labels::SIDECAR_INJECT, "NotIn", &["false"]), req(labels::REVISION, "In", &[rev])],
        ),
    ];
    if ctx.revision.is_none() {
        hooks.push(hook(
            ctx,
            "namespace",
            vec![req(labels::ISTIO_INJECTION, "In", &["enabled"])],
            vec![req(labels::SIDECAR_INJECT, "NotIn", &["false"])],
        ));
        hooks.push(hook(
            ctx,
            "object",
            vec![req(labels::ISTIO_INJECTION, "DoesNotExist", &[]), req(labels::REVISION, "DoesNotExist", &[])],
            vec![req(labels::SIDECAR_INJECT, "In", &["true"]), req(labels::REVISION, "DoesNotExist", &[])],
        ));
        if ctx.bool_value("sidecarInjectorWebhook.enableNamespacesByDefault", false) {
            hooks.push(hook(
                ctx,
                "auto",
                vec![
                    req(labels::ISTIO_INJECTION, "DoesNotExist", &[]),
                    req(labels::REVISION, "DoesNotExist", &[]),
                    req(labels::NAMESPACE_NAME, "NotIn", SYSTEM_NAMESPACES),
                ],
                vec![req(labels::SIDECAR_INJECT, "DoesNotExist", &[]), req(labels::REVISION, "DoesNotExist", &[])],
            ));
        }
    }
    MutatingWebhookConfiguration {
        metadata: meta(&injector_name(ctx), None, webhook_labels(ctx, "sidecar-injector")),
        webhooks: Some(hooks),
    }
}

fn webhook_labels(ctx: &Context, app: &str) -> BTreeMap<String, String> {
    labels_of(&[(labels::APP, app), (labels::REVISION, ctx.rev_label())])
}

fn hook(
    ctx: &Context,
    prefix: &str,
    namespace: Vec<LabelSelectorRequirement>,
    object: Vec<LabelSelectorRequirement>,
) -> MutatingWebhook {
    MutatingWebhook {
        name: format!("{prefix}.sidecar-injector.istio.io"),
        client_config: client_config(ctx, "/inject", ctx.str_value("istiodRemote.injectionURL")),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into()]),
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["pods".into()]),
            scope: None,
        }]),
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        reinvocation_policy: Some(
            ctx.str_value("sidecarInjectorWebhook.reinvocationPolicy").unwrap_or_else(|| "Never".into()),
        ),
        admission_review_versions: vec!["v1".into()],
        namespace_selector: selector(namespace),
        object_selector: selector(object),
        ..MutatingWebhook::default()
    }
}

fn validator(ctx: &Context) -> ValidatingWebhookConfiguration {
    let groups = ["security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io"];
    let hook = ValidatingWebhook {
        name: "rev.validation.istio.io".into(),
        client_config: client_config(ctx, "/validate", None),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            api_groups: Some(groups.iter().map(|g| (*g).to_owned()).collect()),
            api_versions: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            scope: None,
        }]),
        failure_policy: Some("Ignore".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into()],
        object_selector: selector(vec![req(labels::REVISION, "In", &[ctx.rev_label()])]),
        ..ValidatingWebhook::default()
    };
    ValidatingWebhookConfiguration {
        metadata: meta(&ctx.cluster_scoped("istio-validator"), None, webhook_labels(ctx, "istiod")),
        webhooks: Some(vec![hook]),
    }
}
