//! A rendered control plane: the Kubernetes objects of one `IstioOperator`, each tagged with the
//! component it belongs to. The renderer produces it; `manifest generate` prints it; `install`,
//! the controller and `verify-install` apply, prune and check it.

use kube::api::DynamicObject;

/// The installable parts of a control plane, named as Istio names them in the
/// `operator.istio.io/component` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Base,
    Pilot,
    Cni,
    Ztunnel,
    IngressGateways,
    EgressGateways,
}

impl Component {
    /// Every component, in install order (a component only after those it depends on).
    pub const INSTALL_ORDER: [Component; 6] = [
        Component::Base,
        Component::Pilot,
        Component::Cni,
        Component::Ztunnel,
        Component::IngressGateways,
        Component::EgressGateways,
    ];

    /// The value of the `operator.istio.io/component` label, and the name users see.
    pub fn label(self) -> &'static str {
        match self {
            Component::Base => "Base",
            Component::Pilot => "Pilot",
            Component::Cni => "Cni",
            Component::Ztunnel => "Ztunnel",
            Component::IngressGateways => "IngressGateways",
            Component::EgressGateways => "EgressGateways",
        }
    }

    pub fn from_label(label: &str) -> Option<Component> {
        Self::INSTALL_ORDER.into_iter().find(|c| c.label() == label)
    }
}

/// One object to apply.
#[derive(Clone, Debug)]
pub struct RenderedObject {
    pub component: Component,
    /// Carries `apiVersion`/`kind` in `types`, full metadata (with the owner labels) and body.
    pub object: DynamicObject,
}

/// Everything one IstioOperator renders to.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    /// The IstioOperator's `spec.revision`, if any.
    pub revision: Option<String>,
    /// The control-plane namespace.
    pub namespace: String,
    /// Objects in apply order: namespaces, then CRDs, then the rest by component.
    pub objects: Vec<RenderedObject>,
    /// Things the user should know (e.g. values Rudder keeps but does not act on), each once.
    pub notes: Vec<String>,
}

impl Manifest {
    /// The objects as one YAML stream (`---` before each document), in [`Manifest::objects`]
    /// order. Keys are sorted, so the same manifest always gives the same bytes.
    pub fn to_yaml(&self) -> Result<String, String> {
        let mut out = String::new();
        for obj in &self.objects {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(&obj.object).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}
