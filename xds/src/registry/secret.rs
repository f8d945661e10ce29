//! TLS credentials from Secrets, as gateways name them in `credentialName`. Both Secret layouts
//! Istio reads are accepted: `kubernetes.io/tls` (`tls.crt`, `tls.key`, optionally `ca.crt`) and
//! the generic one (`cert`, `key`, `cacert`). A Secret named `<name>-cacert` carrying only a CA
//! is how MUTUAL servers get their client CA separately.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::model::TlsCredential;

/// The key of a credential in [`Snapshot::secrets`](crate::model::Snapshot::secrets).
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The credential a Secret holds; `Err` says which keys are missing. Secrets that carry no TLS
/// material at all (service-account tokens, app passwords) are `Ok(None)`: they are not
/// credentials and are skipped quietly.
pub fn credential(secret: &Secret) -> Result<Option<TlsCredential>, String> {
    let Some(data) = secret.data.as_ref() else { return Ok(None) };
    let get = |keys: &[&str]| keys.iter().find_map(|k| data.get(*k)).map(|b| b.0.clone());
    let certificate_chain = get(&["tls.crt", "cert"]);
    let private_key = get(&["tls.key", "key"]);
    let ca_certificates = get(&["ca.crt", "cacert"]);
    match (certificate_chain, private_key, ca_certificates) {
        (None, None, None) => Ok(None),
        (Some(_), None, _) => Err("has a certificate (tls.crt or cert) but no private key (tls.key or key)".into()),
        (None, Some(_), _) => Err("has a private key (tls.key or key) but no certificate (tls.crt or cert)".into()),
        (chain, key, ca) => Ok(Some(TlsCredential {
            certificate_chain: chain.unwrap_or_default(),
            private_key: key.unwrap_or_default(),
            ca_certificates: ca.unwrap_or_default(),
        })),
    }
}

/// The credentials of `secrets` by [`key`]. A Secret whose TLS keys are incomplete is logged
/// and left out, so a bad Secret never takes another gateway's credential down.
pub fn credentials<'s>(secrets: impl IntoIterator<Item = &'s Secret>) -> BTreeMap<String, Arc<TlsCredential>> {
    let mut out = BTreeMap::new();
    for secret in secrets {
        let namespace = secret.metadata.namespace.as_deref().unwrap_or("default");
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        match credential(secret) {
            Ok(Some(credential)) => {
                out.insert(key(namespace, name), Arc::new(credential));
            }
            Ok(None) => {}
            Err(why) => tracing::warn!(secret = %key(namespace, name), "Secret {why}; not usable as a TLS credential"),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some("cred".into());
        secret.metadata.namespace = Some("istio-system".into());
        secret.data = Some(entries.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec()))).collect());
        secret
    }

    #[test]
    fn both_layouts_and_ca_only_secrets_are_credentials() {
        let tls = credential(&secret(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")])).unwrap().unwrap();
        assert_eq!(
            (tls.certificate_chain, tls.private_key, tls.ca_certificates),
            (b"C".to_vec(), b"K".to_vec(), b"A".to_vec())
        );
        let generic = credential(&secret(&[("cert", "C"), ("key", "K")])).unwrap().unwrap();
        assert_eq!((generic.certificate_chain, generic.private_key), (b"C".to_vec(), b"K".to_vec()));
        let ca_only = credential(&secret(&[("cacert", "A")])).unwrap().unwrap();
        assert!(ca_only.certificate_chain.is_empty() && ca_only.ca_certificates == b"A");
    }

    #[test]
    fn incomplete_pairs_are_errors_and_other_secrets_are_skipped() {
        assert!(credential(&secret(&[("tls.crt", "C")])).unwrap_err().contains("no private key"));
        assert!(credential(&secret(&[("key", "K")])).unwrap_err().contains("no certificate"));
        assert_eq!(credential(&secret(&[("password", "p")])).unwrap(), None);
        let all = credentials([&secret(&[("tls.crt", "C")]), &secret(&[("cert", "C"), ("key", "K")])]);
        assert_eq!(all.keys().collect::<Vec<_>>(), ["istio-system/cred"]);
    }
}
