//! The Base component: the Istio CRDs (every kind Rudder serves, except IstioOperator, which the
//! operator's own chart installs) and the `istio-reader-service-account` that multi-cluster
//! readers use; plus the control-plane Namespace, rendered whenever anything else is.

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use rudder_config::labels;

use super::objects::{labels_of, meta, rendered};
use super::values::Context;
use super::{RenderError, k8s};
use crate::manifest::{Component, RenderedObject};

/// Base's objects, when enabled.
pub fn render(ctx: &Context) -> Result<Vec<RenderedObject>, RenderError> {
    let components = ctx.components();
    let base = components.base.clone().unwrap_or_default();
    if base.enabled == Some(false) {
        return Ok(Vec::new());
    }
    let mut out = crds()?;
    let sa = ServiceAccount {
        metadata: meta(
            "istio-reader-service-account",
            Some(&ctx.namespace),
            labels_of(&[("app", "istio-reader"), (labels::RELEASE, "base")]),
        ),
        ..ServiceAccount::default()
    };
    out.push(rendered(Component::Base, &sa)?);
    if let Some(spec) = &base.k8s {
        k8s::apply_overlays(&mut out, &spec.overlays)?;
    }
    Ok(out)
}

/// The Istio CRDs as rendered objects, read from the compiled-in generated files (generating
/// their schemas from the types costs hundreds of milliseconds); parsed once per process.
fn crds() -> Result<Vec<RenderedObject>, RenderError> {
    static CRDS: LazyLock<Result<Vec<RenderedObject>, String>> = LazyLock::new(|| {
        rudder_config::crds::generated_values()?
            .into_iter()
            .filter(|crd| crd["spec"]["names"]["kind"] != "IstioOperator")
            .map(|crd| {
                serde_json::from_value(crd)
                    .map(|object| RenderedObject { component: Component::Base, object })
                    .map_err(|e| format!("generated CRD does not read as an object: {e}"))
            })
            .collect()
    });
    CRDS.clone().map_err(RenderError::Overlay)
}

/// The control-plane namespace (labelled with its network, if one is known).
pub fn namespace(ctx: &Context) -> Result<RenderedObject, RenderError> {
    let mut pairs = vec![];
    if let Some(network) = &ctx.network {
        pairs.push((labels::NETWORK, network.as_str()));
    }
    let ns = Namespace { metadata: meta(&ctx.namespace, None, labels_of(&pairs)), ..Namespace::default() };
    rendered(Component::Base, &ns)
}
