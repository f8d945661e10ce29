//! SDS secrets from the registry's credentials: the Secrets and CA ConfigMaps of the proxy's
//! namespace, served inline over ADS as `kubernetes://<name>` (certificate and key) and
//! `kubernetes://<name>-cacert` (a CA and its revocation list). Gateways name them in their
//! servers' `credentialName` (see [`gateway`](super::gateway)); DestinationRules name them in
//! `tls.credentialName` for TLS origination ([`for_clusters`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, config_source, data_source, transport_socket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, UpstreamTlsContext, common_tls_context, secret,
};
use prost::Message;

use super::context::Context;
use super::security::TRANSPORT_SOCKET_TLS;
use crate::model::TlsCredential;
use crate::registry::secret as secret_key;

/// How SDS names a credential of the registry.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";
/// The suffix of the SDS name of a credential's CA.
pub const CA_SUFFIX: &str = "-cacert";

/// A credential of the proxy's namespace (where istiod looks for the Secrets a gateway or a
/// DestinationRule names).
pub fn credential<'a>(ctx: &Context<'a>, name: &str) -> Option<&'a Arc<TlsCredential>> {
    ctx.snapshot.secrets.get(&secret_key::key(&ctx.proxy.namespace, name))
}

/// The CA of credential `name` (see [`ca_of`]); `Err` says why it cannot verify peers, naming
/// the ConfigMap or Secret (and key) at fault.
pub fn client_ca<'a>(ctx: &Context<'a>, name: &str) -> Result<&'a Arc<TlsCredential>, String> {
    let Some((source, ca)) = ca_of(ctx, name) else {
        return Err(format!(
            "credentialName {name:?}: MUTUAL needs a CA (ca.crt in a ConfigMap {name}, ca.crt/cacert in the \
             Secret, or a Secret {name}{CA_SUFFIX})"
        ));
    };
    match &ca.ca_error {
        // Verifying peers without the revocation list asked for would admit revoked ones.
        Some(why) => Err(format!("credentialName {name:?}: {source} {why}")),
        None => Ok(ca),
    }
}

/// Where the CA (and its CRL) of credential `name` comes from, in Istio's order: the ConfigMap
/// `<name>` (`ca.crt`), else the Secret `<name>-cacert`, else the Secret `<name>`, whichever
/// has a CA first; with a description naming it.
fn ca_of<'a>(ctx: &Context<'a>, name: &str) -> Option<(String, &'a Arc<TlsCredential>)> {
    let namespace = &ctx.proxy.namespace;
    let config_map = ctx
        .snapshot
        .secrets
        .get(&secret_key::config_map_key(namespace, name))
        .map(|ca| (format!("ConfigMap {namespace}/{name}"), ca));
    config_map.or_else(|| {
        [format!("{name}{CA_SUFFIX}"), name.to_owned()].into_iter().find_map(|secret| {
            let ca = credential(ctx, &secret).filter(|c| !c.ca_certificates.is_empty())?;
            Some((format!("Secret {namespace}/{secret}"), ca))
        })
    })
}

/// `kubernetes://<name>`: the certificate and key of credential `name`, if it has them.
pub fn certificate(ctx: &Context<'_>, name: &str) -> Option<Secret> {
    let credential = credential(ctx, name).filter(|c| !c.certificate_chain.is_empty())?;
    Some(Secret {
        name: format!("{CREDENTIAL_PREFIX}{name}"),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&credential.certificate_chain)),
            private_key: Some(inline(&credential.private_key)),
            ..Default::default()
        })),
    })
}

/// `kubernetes://<name>-cacert`: the CA of credential `name` and its CRL (peers whose
/// certificate the CRL revokes are refused).
pub fn validation(ctx: &Context<'_>, name: &str) -> Result<Secret, String> {
    let ca = client_ca(ctx, name)?;
    Ok(Secret {
        name: format!("{CREDENTIAL_PREFIX}{name}{CA_SUFFIX}"),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(inline(&ca.ca_certificates)),
            crl: (!ca.ca_crl.is_empty()).then(|| inline(&ca.ca_crl)),
            ..Default::default()
        })),
    })
}

/// The SDS secrets `clusters` name for TLS origination (a DestinationRule's `credentialName`):
/// the certificate of a MUTUAL cluster and the CA every such cluster verifies its server with.
/// A credential that is missing is left out (and logged): Envoy then keeps that cluster
/// warming until its initial fetch times out, as with istiod, and every other cluster serves.
pub fn for_clusters(ctx: &Context<'_>, clusters: &[Cluster]) -> Vec<Secret> {
    let mut names = BTreeSet::new();
    for cluster in clusters {
        let Some(socket) = cluster.transport_socket.as_ref().filter(|s| s.name == TRANSPORT_SOCKET_TLS) else {
            continue;
        };
        let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { continue };
        let Ok(context) = UpstreamTlsContext::decode(any.value.as_slice()) else { continue };
        let Some(common) = context.common_tls_context else { continue };
        let validation = match common.validation_context_type {
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(combined)) => {
                combined.validation_context_sds_secret_config
            }
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(config)) => Some(config),
            _ => None,
        };
        let over_ads = |config: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig| {
            config.sds_config.as_ref().is_some_and(|source| {
                matches!(source.config_source_specifier, Some(config_source::ConfigSourceSpecifier::Ads(_)))
            })
        };
        for config in common.tls_certificate_sds_secret_configs.iter().chain(validation.iter()) {
            if let Some(name) = config.name.strip_prefix(CREDENTIAL_PREFIX).filter(|_| over_ads(config)) {
                names.insert(name.to_owned());
            }
        }
    }
    // Names are sorted, and each serves the secret of its own SDS name, so `out` is sorted.
    let mut out = Vec::new();
    for name in names {
        let served = match name.strip_suffix(CA_SUFFIX) {
            Some(base) => validation(ctx, base),
            None => certificate(ctx, &name).ok_or_else(|| {
                format!(
                    "credentialName {name:?}: no Secret with a certificate and key in namespace {}",
                    ctx.proxy.namespace
                )
            }),
        };
        match served {
            Ok(secret) => out.push(secret),
            Err(why) => tracing::debug!(proxy = %ctx.proxy.id, "DestinationRule {why}; not served"),
        }
    }
    out
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())), ..Default::default() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Proxy, Snapshot};

    #[test]
    fn a_client_ca_whose_crl_is_unusable_is_an_error_naming_the_secret_and_key() {
        let mut snapshot = Snapshot::default();
        let ca = |ca_error: Option<&str>| {
            Arc::new(TlsCredential {
                ca_certificates: b"CA".to_vec(),
                ca_error: ca_error.map(str::to_owned),
                ..Default::default()
            })
        };
        snapshot.secrets.insert("istio-system/good".into(), ca(None));
        snapshot.secrets.insert("istio-system/split-cacert".into(), ca(Some("key crl: not a PEM CRL")));
        snapshot.secrets.insert("istio-system/split".into(), ca(None));
        let proxy =
            Proxy::from_node("router~10.1.0.30~gw-1.istio-system~istio-system.svc.cluster.local", &BTreeMap::new())
                .unwrap();
        let ctx = Context::new(&snapshot, &proxy);
        assert!(client_ca(&ctx, "good").is_ok());
        // The `-cacert` Secret's CA is the one used: its broken CRL is not worked around with
        // the credential's own CA (that would admit the clients it revokes).
        assert_eq!(
            client_ca(&ctx, "split").unwrap_err(),
            "credentialName \"split\": Secret istio-system/split-cacert key crl: not a PEM CRL"
        );
        assert!(client_ca(&ctx, "missing").unwrap_err().contains("MUTUAL needs a CA"));
    }

    #[test]
    fn a_config_map_ca_comes_before_the_secrets_of_the_same_name() {
        let mut snapshot = Snapshot::default();
        let ca = |pem: &str, ca_error: Option<&str>| {
            Arc::new(TlsCredential {
                ca_certificates: pem.as_bytes().to_vec(),
                ca_error: ca_error.map(str::to_owned),
                ..Default::default()
            })
        };
        snapshot.secrets.insert("istio-system/ConfigMap/cred".into(), ca("FROM CONFIGMAP", None));
        snapshot.secrets.insert("istio-system/cred-cacert".into(), ca("FROM SECRET", None));
        snapshot.secrets.insert("istio-system/ConfigMap/bad".into(), ca("X", Some("key ca.crl: not a PEM CRL")));
        snapshot.secrets.insert("istio-system/bad".into(), ca("FROM SECRET", None));
        snapshot.secrets.insert("other/ConfigMap/elsewhere".into(), ca("OTHER NAMESPACE", None));
        let proxy =
            Proxy::from_node("router~10.1.0.30~gw-1.istio-system~istio-system.svc.cluster.local", &BTreeMap::new())
                .unwrap();
        let ctx = Context::new(&snapshot, &proxy);
        assert_eq!(client_ca(&ctx, "cred").unwrap().ca_certificates, b"FROM CONFIGMAP");
        assert_eq!(
            client_ca(&ctx, "bad").unwrap_err(),
            "credentialName \"bad\": ConfigMap istio-system/bad key ca.crl: not a PEM CRL"
        );
        // Only the gateway's own namespace is looked in, as for Secrets.
        assert!(client_ca(&ctx, "elsewhere").unwrap_err().contains("MUTUAL needs a CA"));
    }
}
