//! TLS credentials from Secrets, as gateways name them in `credentialName`. Both Secret layouts
//! Istio reads are accepted: `kubernetes.io/tls` (`tls.crt`, `tls.key`, optionally `ca.crt` and
//! its revocation list `ca.crl`) and the generic one (`cert`, `key`, `cacert`, `crl`). A Secret
//! named `<name>-cacert` carrying only a CA (and its CRL) is how MUTUAL servers get their client
//! CA separately. A ConfigMap carrying `ca.crt` (and optionally `ca.crl`) is a client CA too:
//! trust bundles are not secret, and tools such as cert-manager's trust-manager write them to
//! ConfigMaps.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::model::TlsCredential;

/// The key of a credential in [`Snapshot::secrets`](crate::model::Snapshot::secrets).
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The key of a ConfigMap's client CA in [`Snapshot::secrets`](crate::model::Snapshot::secrets).
/// Kubernetes names hold no `/`, so it never equals a Secret's [`key`].
pub fn config_map_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/ConfigMap/{name}")
}

/// The keys of a ConfigMap a client CA is read from; every other key is dropped as the
/// ConfigMap is watched, so a cluster's other ConfigMaps cost discovery only their metadata.
pub const CONFIG_MAP_CA_KEYS: [&str; 2] = ["ca.crt", "ca.crl"];

/// The client CA a ConfigMap holds in `ca.crt` (with its revocation list in `ca.crl`), or
/// `None` when it has no `ca.crt`. A CRL that is not PEM is [`TlsCredential::ca_error`].
pub fn config_map_ca(config_map: &ConfigMap) -> Option<TlsCredential> {
    let data = config_map.data.as_ref()?;
    let ca = data.get("ca.crt").filter(|ca| !ca.trim().is_empty())?;
    let (ca_crl, ca_error) = match data.get("ca.crl") {
        Some(crl) => match check_crl(crl.as_bytes()) {
            Ok(()) => (crl.as_bytes().to_vec(), None),
            Err(why) => (Vec::new(), Some(format!("key ca.crl: {why}"))),
        },
        None => (Vec::new(), None),
    };
    Some(TlsCredential { ca_certificates: ca.as_bytes().to_vec(), ca_crl, ca_error, ..TlsCredential::default() })
}

/// The client CAs of `config_maps` by [`config_map_key`]; ConfigMaps without `ca.crt` are
/// skipped quietly (most ConfigMaps are not trust bundles).
pub fn config_map_cas<'c>(
    config_maps: impl IntoIterator<Item = &'c ConfigMap>,
) -> BTreeMap<String, Arc<TlsCredential>> {
    let mut out = BTreeMap::new();
    for config_map in config_maps {
        let Some(credential) = config_map_ca(config_map) else { continue };
        let key = config_map_key(
            config_map.metadata.namespace.as_deref().unwrap_or("default"),
            config_map.metadata.name.as_deref().unwrap_or_default(),
        );
        if let Some(why) = &credential.ca_error {
            tracing::warn!(configmap = %key, "ConfigMap {why}; MUTUAL servers verifying clients with its CA are skipped");
        }
        out.insert(key, Arc::new(credential));
    }
    out
}

/// Drops every key of a watched ConfigMap but [`CONFIG_MAP_CA_KEYS`], and the metadata nothing
/// reads: managed fields, labels and annotations (`kubectl apply` keeps a whole copy of the
/// object in `kubectl.kubernetes.io/last-applied-configuration`).
pub fn keep_ca_keys(config_map: &mut ConfigMap) {
    config_map.metadata.managed_fields = None;
    config_map.metadata.annotations = None;
    config_map.metadata.labels = None;
    config_map.binary_data = None;
    if let Some(data) = config_map.data.as_mut() {
        data.retain(|key, _| CONFIG_MAP_CA_KEYS.contains(&key.as_str()));
    }
}

/// Drops the metadata of a watched Secret that nothing reads: managed fields and annotations
/// (`kubectl apply` keeps a whole copy of the Secret, keys included, in
/// `kubectl.kubernetes.io/last-applied-configuration`).
pub fn strip_unread_metadata(secret: &mut Secret) {
    secret.metadata.managed_fields = None;
    secret.metadata.annotations = None;
}

/// The credential a Secret holds; `Err` says which keys are missing. Secrets that carry no TLS
/// material at all (service-account tokens, app passwords) are `Ok(None)`: they are not
/// credentials and are skipped quietly. A CRL that is not PEM does not make the Secret an
/// error: it is [`TlsCredential::ca_error`], so only servers verifying clients with this CA
/// are affected.
pub fn credential(secret: &Secret) -> Result<Option<TlsCredential>, String> {
    let Some(data) = secret.data.as_ref() else { return Ok(None) };
    let get = |keys: &[&'static str]| keys.iter().find_map(|k| data.get(*k).map(|b| (*k, b.0.clone())));
    let certificate_chain = get(&["tls.crt", "cert"]).map(|(_, v)| v);
    let private_key = get(&["tls.key", "key"]).map(|(_, v)| v);
    let ca = get(&["ca.crt", "cacert"]);
    // The CRL of the CA's layout first (`ca.crl` beside `ca.crt`, `crl` beside `cacert`).
    let crl_keys: &[&str] = match ca {
        Some(("cacert", _)) => &["crl", "ca.crl"],
        _ => &["ca.crl", "crl"],
    };
    let crl = get(crl_keys);
    let (ca_crl, ca_error) = match (&ca, crl) {
        (Some(_), Some((key, pem))) => match check_crl(&pem) {
            Ok(()) => (pem, None),
            Err(why) => (Vec::new(), Some(format!("key {key}: {why}"))),
        },
        (None, Some((key, _))) => {
            if certificate_chain.is_some() || private_key.is_some() {
                tracing::warn!(
                    secret = %key_of(secret),
                    "Secret has a CRL ({key}) but no CA certificate (ca.crt or cacert) to go with it; the CRL is not used"
                );
            }
            (Vec::new(), None)
        }
        (_, None) => (Vec::new(), None),
    };
    match (certificate_chain, private_key, ca) {
        (None, None, None) => Ok(None),
        (Some(_), None, _) => Err("has a certificate (tls.crt or cert) but no private key (tls.key or key)".into()),
        (None, Some(_), _) => Err("has a private key (tls.key or key) but no certificate (tls.crt or cert)".into()),
        (chain, key, ca) => Ok(Some(TlsCredential {
            certificate_chain: chain.unwrap_or_default(),
            private_key: key.unwrap_or_default(),
            ca_certificates: ca.map(|(_, v)| v).unwrap_or_default(),
            ca_crl,
            ca_error,
        })),
    }
}

/// `Ok` when `pem` holds one or more PEM `X509 CRL` blocks, each a well-formed CRL (what Envoy
/// needs to load it; it refuses the whole validation context otherwise).
fn check_crl(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;
    let mut count = 0;
    for der in CertificateRevocationListDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("not a PEM certificate revocation list ({e})"))?;
        x509_parser::parse_x509_crl(&der).map_err(|e| format!("X509 CRL block {} does not parse ({e})", count + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("not a PEM certificate revocation list (no -----BEGIN X509 CRL----- block)".into());
    }
    Ok(())
}

fn key_of(secret: &Secret) -> String {
    key(secret.metadata.namespace.as_deref().unwrap_or("default"), secret.metadata.name.as_deref().unwrap_or_default())
}

/// The credentials of `secrets` by [`key`]. A Secret whose TLS keys are incomplete is logged
/// and left out, so a bad Secret never takes another gateway's credential down; a Secret whose
/// CRL is not usable is logged and kept (see [`TlsCredential::ca_error`]).
pub fn credentials<'s>(secrets: impl IntoIterator<Item = &'s Secret>) -> BTreeMap<String, Arc<TlsCredential>> {
    let mut out = BTreeMap::new();
    for secret in secrets {
        let key = key_of(secret);
        match credential(secret) {
            Ok(Some(credential)) => {
                if let Some(why) = &credential.ca_error {
                    tracing::warn!(secret = %key, "Secret {why}; MUTUAL servers verifying clients with its CA are skipped");
                }
                out.insert(key, Arc::new(credential));
            }
            Ok(None) => {}
            Err(why) => tracing::warn!(secret = %key, "Secret {why}; not usable as a TLS credential"),
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

    /// A CRL signed by a throwaway CA, revoking serial 7, PEM.
    fn crl_pem() -> String {
        use rcgen::{
            CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair, RevokedCertParams,
            date_time_ymd,
        };
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = Issuer::new(params, key);
        CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2124, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: 7u64.into(),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn config_map(entries: &[(&str, &str)]) -> ConfigMap {
        let mut config_map = ConfigMap::default();
        config_map.metadata.name = Some("bundle".into());
        config_map.metadata.namespace = Some("istio-system".into());
        config_map.data = Some(entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        config_map
    }

    #[test]
    fn a_config_map_with_ca_crt_is_a_client_ca_and_others_are_not() {
        let crl = crl_pem();
        let cas = config_map_cas([
            &config_map(&[("ca.crt", "A"), ("ca.crl", &crl)]),
            &config_map(&[("ca.crt", "  ")]),
            &config_map(&[("config.yaml", "x")]),
        ]);
        assert_eq!(cas.keys().collect::<Vec<_>>(), ["istio-system/ConfigMap/bundle"]);
        let ca = &cas["istio-system/ConfigMap/bundle"];
        assert_eq!((ca.ca_certificates.as_slice(), ca.ca_crl.as_slice()), (b"A".as_slice(), crl.as_bytes()));
        assert!(ca.certificate_chain.is_empty() && ca.private_key.is_empty() && ca.ca_error.is_none());
        let bad = config_map_ca(&config_map(&[("ca.crt", "A"), ("ca.crl", "no")])).unwrap();
        assert!(bad.ca_error.unwrap().starts_with("key ca.crl: not a PEM"));
        assert_ne!(config_map_key("ns", "a"), key("ns", "a"));
    }

    #[test]
    fn a_watched_config_map_keeps_only_its_ca_keys() {
        let mut watched = config_map(&[("ca.crt", "A"), ("ca.crl", "R"), ("dashboard.json", "{}")]);
        watched.binary_data = Some(BTreeMap::from([("blob".to_owned(), ByteString(vec![0; 8]))]));
        watched.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{\"data\": {\"dashboard.json\": \"{}\"}}".to_owned(),
        )]));
        keep_ca_keys(&mut watched);
        assert_eq!(watched.metadata.annotations, None);
        assert_eq!(watched.data.unwrap().into_keys().collect::<Vec<_>>(), ["ca.crl", "ca.crt"]);
        assert_eq!(watched.binary_data, None);
    }

    #[test]
    fn a_watched_secret_drops_its_annotations_and_keeps_its_keys() {
        let mut watched = secret(&[("tls.crt", "C"), ("tls.key", "K")]);
        watched.metadata.annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
            "{\"data\": {\"tls.key\": \"Sw==\"}}".to_owned(),
        )]));
        strip_unread_metadata(&mut watched);
        assert_eq!(watched.metadata.annotations, None);
        assert_eq!(credential(&watched).unwrap().unwrap().private_key, b"K");
    }

    #[test]
    fn a_crl_goes_with_the_ca_of_either_layout() {
        let crl = crl_pem();
        let tls = credential(&secret(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A"), ("ca.crl", &crl)]))
            .unwrap()
            .unwrap();
        assert_eq!((tls.ca_crl.as_slice(), tls.ca_error.as_deref()), (crl.as_bytes(), None));
        let generic = credential(&secret(&[("cacert", "A"), ("crl", &crl)])).unwrap().unwrap();
        assert_eq!(generic.ca_crl, crl.as_bytes());
        // A CRL without a CA has nothing to check (as upstream, it is not used).
        let no_ca = credential(&secret(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crl", &crl)])).unwrap().unwrap();
        assert!(no_ca.ca_crl.is_empty() && no_ca.ca_error.is_none());
        let none = credential(&secret(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A")])).unwrap().unwrap();
        assert!(none.ca_crl.is_empty() && none.ca_error.is_none());
    }

    #[test]
    fn a_crl_that_is_not_pem_is_a_ca_error_naming_the_key_and_keeps_the_certificate() {
        let bad = credential(&secret(&[("tls.crt", "C"), ("tls.key", "K"), ("ca.crt", "A"), ("ca.crl", "not a crl")]))
            .unwrap()
            .unwrap();
        let why = bad.ca_error.unwrap();
        assert!(why.starts_with("key ca.crl: not a PEM certificate revocation list"), "{why}");
        assert!(bad.ca_crl.is_empty());
        assert_eq!(bad.certificate_chain, b"C", "the certificate still serves");
        // A PEM block of another kind, or a CRL block whose content is not a CRL.
        let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let wrong_kind = credential(&secret(&[("cacert", "A"), ("crl", certificate)])).unwrap().unwrap();
        assert!(wrong_kind.ca_error.unwrap().starts_with("key crl: not a PEM certificate revocation list"));
        let garbage = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
        let garbled = credential(&secret(&[("cacert", "A"), ("crl", garbage)])).unwrap().unwrap();
        assert!(garbled.ca_error.unwrap().contains("X509 CRL block 1 does not parse"));
        assert_eq!(credentials([&secret(&[("ca.crt", "A"), ("ca.crl", "x")])]).len(), 1, "kept, with its error");
    }
}
