//! The registry of Istio kinds Rudder understands: one enum over every typed object, with the
//! API group, served versions and storage version of each kind in one table.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::validate::{Report, Validate};
use crate::{extensions, networking, operator, security, telemetry};

/// What the registry knows about one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub group: &'static str,
    pub kind: &'static str,
    /// Every version the CRD serves, all with the same schema.
    pub versions: &'static [&'static str],
    /// The version objects are stored in (as upstream).
    pub storage_version: &'static str,
}

macro_rules! istio_kinds {
    ($($variant:ident: $ty:ty, $group:literal => [$($version:literal),+], storage $storage:literal;)+) => {
        /// One typed Istio object of any kind Rudder knows.
        #[derive(Clone, Debug)]
        pub enum IstioObject { $($variant(Box<$ty>)),+ }

        /// Every kind, in the order CRDs are written.
        pub const KINDS: &[KindInfo] = &[$(KindInfo {
            group: $group,
            kind: stringify!($variant),
            versions: &[$($version),+],
            storage_version: $storage,
        }),+];

        impl IstioObject {
            pub fn info(&self) -> &'static KindInfo {
                let kind = self.kind();
                KINDS.iter().find(|k| k.kind == kind).unwrap_or(&KINDS[0])
            }
            pub fn kind(&self) -> &'static str {
                match self { $(Self::$variant(_) => stringify!($variant)),+ }
            }
            pub fn metadata(&self) -> &ObjectMeta {
                match self { $(Self::$variant(o) => &o.metadata),+ }
            }
            /// The object as JSON, written with the version the Rust type carries.
            pub fn to_value(&self) -> Result<Value, serde_json::Error> {
                match self { $(Self::$variant(o) => serde_json::to_value(o)),+ }
            }
            /// Decodes `value` as `kind` (known to the registry), reporting the path of the
            /// first field that does not fit.
            pub(crate) fn decode(kind: &str, value: Value) -> Option<Result<Self, serde_path_to_error::Error<serde_json::Error>>> {
                match kind {
                    $(stringify!($variant) => Some(serde_path_to_error::deserialize(value).map(|o| Self::$variant(Box::new(o))))),+,
                    _ => None,
                }
            }
            /// The CRDs of every kind, one version each, as the Rust types derive them.
            pub(crate) fn derived_crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
                use kube::CustomResourceExt;
                vec![$(<$ty>::crd()),+]
            }
        }

        impl Validate for IstioObject {
            fn validate(&self, report: &mut Report) {
                match self { $(Self::$variant(o) => o.validate(report)),+ }
            }
        }
    };
}

istio_kinds! {
    VirtualService: networking::VirtualService, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    DestinationRule: networking::DestinationRule, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    Gateway: networking::Gateway, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    ServiceEntry: networking::ServiceEntry, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    WorkloadEntry: networking::WorkloadEntry, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    WorkloadGroup: networking::WorkloadGroup, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    Sidecar: networking::Sidecar, "networking.istio.io" => ["v1alpha3", "v1beta1", "v1"], storage "v1alpha3";
    EnvoyFilter: networking::EnvoyFilter, "networking.istio.io" => ["v1alpha3"], storage "v1alpha3";
    ProxyConfig: networking::ProxyConfig, "networking.istio.io" => ["v1beta1"], storage "v1beta1";
    PeerAuthentication: security::PeerAuthentication, "security.istio.io" => ["v1beta1", "v1"], storage "v1beta1";
    RequestAuthentication: security::RequestAuthentication, "security.istio.io" => ["v1beta1", "v1"], storage "v1beta1";
    AuthorizationPolicy: security::AuthorizationPolicy, "security.istio.io" => ["v1beta1", "v1"], storage "v1beta1";
    Telemetry: telemetry::Telemetry, "telemetry.istio.io" => ["v1alpha1", "v1"], storage "v1alpha1";
    WasmPlugin: extensions::WasmPlugin, "extensions.istio.io" => ["v1alpha1"], storage "v1alpha1";
    IstioOperator: operator::IstioOperator, "install.istio.io" => ["v1alpha1"], storage "v1alpha1";
}

impl KindInfo {
    /// Looks a kind up by API group and kind name.
    pub fn find(group: &str, kind: &str) -> Option<&'static KindInfo> {
        KINDS.iter().find(|k| k.group == group && k.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_the_derived_types() {
        for (crd, info) in IstioObject::derived_crds().iter().zip(KINDS) {
            assert_eq!(crd.spec.names.kind, info.kind);
            assert_eq!(crd.spec.group, info.group);
            assert!(info.versions.contains(&info.storage_version), "{}", info.kind);
            let derived = &crd.spec.versions[0].name;
            assert!(info.versions.contains(&derived.as_str()), "{} derives {derived}", info.kind);
        }
    }
}
