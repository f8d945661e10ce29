//! Serving certificates for the admission server.
//!
//! - [`CertStore`] is the rustls certificate resolver: either fixed (a generated certificate,
//!   swapped on rotation with [`CertStore::set`]) or backed by `--tls-cert`/`--tls-key` files,
//!   which it re-reads on the next handshake after their modification time changes.
//! - Pure parts: [`generate`] a CA and a serving certificate for `istiod[-<rev>].<ns>.svc`
//!   (rcgen), keep them in a Secret ([`to_secret`] / [`from_secret`]), decide rotation
//!   ([`needs_rotation`]), and set `caBundle` in webhook configurations ([`set_ca_bundle`]).
//! - Thin kube shells: [`ensure_secret`] and [`patch_ca_bundles`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long a generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a generated serving certificate is valid.
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Rotate a serving certificate when less than this is left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Secret keys holding the generated material.
pub const CA_CERT_KEY: &str = "ca-cert.pem";
pub const CA_KEY_KEY: &str = "ca-key.pem";
pub const CERT_KEY: &str = "cert-chain.pem";
pub const KEY_KEY: &str = "key.pem";
/// Secret annotation with the serving certificate's expiry (seconds since the Unix epoch).
pub const NOT_AFTER_ANNOTATION: &str = "rudder.io/cert-not-after";

const CA_COMMON_NAME: &str = "Rudder webhook CA";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    #[error("bad PEM in {what}: {message}")]
    Pem { what: String, message: String },
    #[error("unusable private key: {0}")]
    Key(rustls::Error),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("secret {0}")]
    Secret(String),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Builds a rustls certified key from a PEM chain and a PEM private key.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], what: &str) -> Result<CertifiedKey, CertError> {
    let pem = |e: rustls_pki_types::pem::Error| CertError::Pem { what: what.to_owned(), message: e.to_string() };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().map_err(pem)?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(what.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(CertError::Key)?;
    Ok(CertifiedKey::new(chain, signing))
}

/// A pair of PEM files and the modification times last loaded from them.
#[derive(Debug)]
struct FilePair {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Option<(SystemTime, SystemTime)>>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read { path: path.display().to_string(), source })
}

impl FilePair {
    fn stamps(&self) -> Option<(SystemTime, SystemTime)> {
        Some((mtime(&self.cert)?, mtime(&self.key)?))
    }

    fn load(&self) -> Result<CertifiedKey, CertError> {
        certified_key(&read(&self.cert)?, &read(&self.key)?, &self.cert.display().to_string())
    }
}

/// The server's certificate, resolved on every TLS handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    files: Option<FilePair>,
}

impl CertStore {
    /// A store that serves `key` until [`CertStore::set`] replaces it.
    pub fn fixed(key: CertifiedKey) -> Self {
        CertStore { current: RwLock::new(Arc::new(key)), files: None }
    }

    /// A store backed by files; fails when they cannot be loaded now. Later changes are picked
    /// up on the next handshake; a rewrite that does not load (e.g. half written) keeps the last
    /// good certificate and is retried.
    pub fn from_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, CertError> {
        let files = FilePair { cert: cert.into(), key: key.into(), loaded: Mutex::new(None) };
        let stamps = files.stamps();
        let first = files.load()?;
        *files.loaded.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(CertStore { current: RwLock::new(Arc::new(first)), files: Some(files) })
    }

    /// Replaces the served certificate (rotation of a generated one).
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }

    /// The certificate to serve now, reloading the files first if they changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        if let Some(files) = &self.files {
            self.reload_if_changed(files);
        }
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reload_if_changed(&self, files: &FilePair) {
        let Some(stamps) = files.stamps() else { return };
        let mut loaded = files.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == Some(stamps) {
            return;
        }
        match files.load() {
            Ok(key) => {
                self.set(key);
                *loaded = Some(stamps);
                tracing::info!(cert = %files.cert.display(), "reloaded the serving certificate");
            }
            Err(e) => tracing::warn!("keeping the previous serving certificate: {e}"),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A generated CA and the serving certificate it signed, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the serving certificate expires (whole seconds).
    pub not_after: SystemTime,
}

impl Bundle {
    /// The serving certificate as rustls wants it.
    pub fn certified_key(&self) -> Result<CertifiedKey, CertError> {
        certified_key(self.cert_pem.as_bytes(), self.key_pem.as_bytes(), "generated certificate")
    }
}

/// `istiod` for the default revision, `istiod-<rev>` otherwise.
pub fn service_name(revision: Option<&str>) -> String {
    match revision {
        None | Some("" | "default") => "istiod".to_owned(),
        Some(rev) => format!("istiod-{rev}"),
    }
}

/// The names a serving certificate covers: the Service in its namespace (short and cluster
/// forms) plus `localhost` and 127.0.0.1 for local runs.
pub fn dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

/// Whether a certificate expiring at `not_after` should be replaced at `now`.
pub fn needs_rotation(not_after: SystemTime, now: SystemTime) -> bool {
    now + RENEW_BEFORE >= not_after
}

fn whole_seconds(t: SystemTime) -> Duration {
    Duration::from_secs(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Sets the validity window: from an hour before `now` (clock skew) for `validity`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) -> SystemTime {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let start = whole_seconds(now);
    params.not_before = epoch + start.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + start + validity;
    SystemTime::UNIX_EPOCH + start + validity
}

fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name.push(DnType::OrganizationName, "Rudder");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, now, CA_VALIDITY);
    params
}

/// A new self-signed CA: (certificate PEM, key PEM).
pub fn generate_ca(now: SystemTime) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now).self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA whose key is `ca_key_pem` (generated by
/// [`generate_ca`]): (certificate PEM, key PEM, expiry).
pub fn issue_serving(
    ca_key_pem: &str,
    names: &[String],
    now: SystemTime,
) -> Result<(String, String, SystemTime), CertError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    // The issuer's name and key identifier come from these params and the key, so rebuilding
    // them matches the stored CA certificate.
    let issuer = Issuer::new(ca_params(now), ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let not_after = set_validity(&mut params, now, CERT_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A new CA and a serving certificate for `names`.
pub fn generate(names: &[String], now: SystemTime) -> Result<Bundle, CertError> {
    let (ca_cert_pem, ca_key_pem) = generate_ca(now)?;
    reissue(ca_cert_pem, ca_key_pem, names, now)
}

/// A fresh serving certificate from an existing CA.
pub fn reissue(
    ca_cert_pem: String,
    ca_key_pem: String,
    names: &[String],
    now: SystemTime,
) -> Result<Bundle, CertError> {
    let (cert_pem, key_pem, not_after) = issue_serving(&ca_key_pem, names, now)?;
    Ok(Bundle { ca_cert_pem, ca_key_pem, cert_pem, key_pem, not_after })
}

/// The Secret that keeps `bundle`.
pub fn to_secret(bundle: &Bundle, name: &str, namespace: &str) -> Secret {
    let data = [
        (CA_CERT_KEY, &bundle.ca_cert_pem),
        (CA_KEY_KEY, &bundle.ca_key_pem),
        (CERT_KEY, &bundle.cert_pem),
        (KEY_KEY, &bundle.key_pem),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
    .collect();
    let not_after = whole_seconds(bundle.not_after).as_secs().to_string();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            annotations: Some(BTreeMap::from([(NOT_AFTER_ANNOTATION.to_owned(), not_after)])),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "rudder".to_owned())])),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Reads a bundle back from a Secret written by [`to_secret`].
pub fn from_secret(secret: &Secret) -> Result<Bundle, CertError> {
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |key: &str| -> Result<String, CertError> {
        let bytes = data.get(key).ok_or_else(|| CertError::Secret(format!("has no {key}")))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| CertError::Secret(format!("{key} is not text")))
    };
    let secs = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NOT_AFTER_ANNOTATION))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| CertError::Secret(format!("has no valid {NOT_AFTER_ANNOTATION} annotation")))?;
    Ok(Bundle {
        ca_cert_pem: text(CA_CERT_KEY)?,
        ca_key_pem: text(CA_KEY_KEY)?,
        cert_pem: text(CERT_KEY)?,
        key_pem: text(KEY_KEY)?,
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    })
}

/// What to keep in the Secret next: `None` when `current` is still good; a reissued
/// certificate from the same CA when only the serving certificate is due; a whole new bundle
/// when there is none or it does not parse.
pub fn next_bundle(current: Option<&Secret>, names: &[String], now: SystemTime) -> Result<Option<Bundle>, CertError> {
    match current.map(from_secret) {
        Some(Ok(bundle)) if !needs_rotation(bundle.not_after, now) => Ok(None),
        Some(Ok(bundle)) => reissue(bundle.ca_cert_pem, bundle.ca_key_pem, names, now).map(Some),
        Some(Err(e)) => {
            tracing::warn!("replacing an unreadable certificate secret: {e}");
            generate(names, now).map(Some)
        }
        None => generate(names, now).map(Some),
    }
}

/// Gets the certificate Secret, creating or rotating it as [`next_bundle`] says.
pub async fn ensure_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    names: &[String],
    now: SystemTime,
) -> Result<Bundle, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = api.get_opt(name).await?;
    let Some(bundle) = next_bundle(existing.as_ref(), names, now)? else {
        return existing.as_ref().map(from_secret).unwrap_or_else(|| Err(CertError::Secret("vanished".into())));
    };
    let mut secret = to_secret(&bundle, name, namespace);
    match existing {
        Some(old) => {
            secret.metadata.resource_version = old.metadata.resource_version;
            api.replace(name, &PostParams::default(), &secret).await?;
        }
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
    }
    Ok(bundle)
}

/// How many certificate checks a replaced CA stays trusted in `caBundle` after the CA changed:
/// long enough for every replica to serve the new certificate before the old CA goes.
pub const RETIRE_AFTER_CHECKS: u32 = 2;

/// The CAs webhook configurations must trust while the serving certificate moves from one CA
/// to another: the API server verifies the webhook with `caBundle`, so a new CA is added there
/// before a certificate it signed is served, and the old one leaves only later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaTrust {
    current: String,
    /// The replaced CA and how many more checks it stays.
    retiring: Option<(String, u32)>,
}

impl CaTrust {
    pub fn new(ca_pem: impl Into<String>) -> Self {
        Self { current: ca_pem.into(), retiring: None }
    }

    /// The trust after a check that read `ca_pem` from the Secret, and whether the CA changed
    /// (then `caBundle` must hold the new trust before the new certificate is served).
    pub fn next(&self, ca_pem: &str) -> (Self, bool) {
        if ca_pem == self.current {
            let retiring = self.retiring.clone().and_then(|(ca, left)| (left > 1).then(|| (ca, left - 1)));
            return (Self { current: self.current.clone(), retiring }, false);
        }
        let retiring = Some((self.current.clone(), RETIRE_AFTER_CHECKS));
        (Self { current: ca_pem.to_owned(), retiring }, true)
    }

    /// The `caBundle` to set: the current CA, then the retiring one.
    pub fn bundle(&self) -> String {
        match &self.retiring {
            Some((old, _)) => format!("{}\n{}", self.current.trim_end(), old.trim_end()) + "\n",
            None => self.current.clone(),
        }
    }
}

/// Sets `caBundle` on every client config; whether anything changed.
pub fn set_ca_bundle<'a>(configs: impl IntoIterator<Item = &'a mut WebhookClientConfig>, ca_pem: &str) -> bool {
    let mut changed = false;
    for config in configs {
        if config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()) {
            config.ca_bundle = Some(ByteString(ca_pem.as_bytes().to_vec()));
            changed = true;
        }
    }
    changed
}

/// The label selector for a revision's webhook configurations.
pub fn revision_selector(revision: Option<&str>) -> String {
    format!("istio.io/rev={}", revision.filter(|r| !r.is_empty()).unwrap_or("default"))
}

/// Writes `ca_pem` into the `caBundle` of the Mutating and Validating webhook configurations
/// labelled with this revision; returns how many objects were updated.
pub async fn patch_ca_bundles(client: &Client, revision: Option<&str>, ca_pem: &str) -> Result<usize, CertError> {
    let params = ListParams::default().labels(&revision_selector(revision));
    let mut updated = 0;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for mut mwc in mutating.list(&params).await?.items {
        let hooks = mwc.webhooks.iter_mut().flatten().map(|w| &mut w.client_config);
        if set_ca_bundle(hooks, ca_pem) {
            let name = mwc.metadata.name.clone().unwrap_or_default();
            mutating.replace(&name, &PostParams::default(), &mwc).await?;
            updated += 1;
        }
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    for mut vwc in validating.list(&params).await?.items {
        let hooks = vwc.webhooks.iter_mut().flatten().map(|w| &mut w.client_config);
        if set_ca_bundle(hooks, ca_pem) {
            let name = vwc.metadata.name.clone().unwrap_or_default();
            validating.replace(&name, &PostParams::default(), &vwc).await?;
            updated += 1;
        }
    }
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_new_ca_is_trusted_beside_the_old_one_for_a_while() {
        let trust = CaTrust::new("OLD\n");
        assert_eq!(trust.bundle(), "OLD\n");
        let (same, changed) = trust.next("OLD\n");
        assert!(!changed);
        assert_eq!(same, trust);

        let (rotated, changed) = trust.next("NEW\n");
        assert!(changed, "a new CA must be trusted before its certificate is served");
        assert_eq!(rotated.bundle(), "NEW\nOLD\n");
        let mut trust = rotated;
        for check in 1..RETIRE_AFTER_CHECKS {
            trust = trust.next("NEW\n").0;
            assert_eq!(trust.bundle(), "NEW\nOLD\n", "check {check}");
        }
        let (settled, changed) = trust.next("NEW\n");
        assert!(!changed);
        assert_eq!(settled.bundle(), "NEW\n");
        // A second rotation while the first still retires keeps only the last two.
        let (twice, _) = CaTrust::new("A").next("B").0.next("C");
        assert_eq!(twice.bundle(), "C\nB\n");
    }

    #[test]
    fn rotation_window() {
        let not_after = now() + Duration::from_secs(31 * 24 * 3600);
        assert!(!needs_rotation(not_after, now()));
        assert!(needs_rotation(not_after, now() + Duration::from_secs(2 * 24 * 3600)));
        assert!(needs_rotation(not_after, not_after + Duration::from_secs(1)));
    }

    #[test]
    fn names_and_service() {
        assert_eq!(service_name(None), "istiod");
        assert_eq!(service_name(Some("default")), "istiod");
        assert_eq!(service_name(Some("canary")), "istiod-canary");
        let names = dns_names("istiod-canary", "istio-system");
        assert_eq!(names[0], "istiod-canary.istio-system.svc");
        assert_eq!(names[1], "istiod-canary.istio-system.svc.cluster.local");
        assert_eq!(revision_selector(None), "istio.io/rev=default");
    }

    #[test]
    fn generated_bundle_round_trips_through_a_secret_and_loads_in_rustls() {
        let names = dns_names("istiod", "istio-system");
        let bundle = generate(&names, now()).expect("generate");
        assert_eq!(bundle.not_after, now() + CERT_VALIDITY);
        bundle.certified_key().expect("rustls accepts it");
        let secret = to_secret(&bundle, "istiod-webhook-certs", "istio-system");
        assert_eq!(from_secret(&secret).expect("parse"), bundle);
        assert!(next_bundle(Some(&secret), &names, now()).expect("next").is_none());
        let later = now() + CERT_VALIDITY - Duration::from_secs(3600);
        let rotated = next_bundle(Some(&secret), &names, later).expect("next").expect("rotated");
        assert_eq!(rotated.ca_cert_pem, bundle.ca_cert_pem, "rotation keeps the CA");
        assert_ne!(rotated.cert_pem, bundle.cert_pem);
        assert!(next_bundle(None, &names, now()).expect("next").is_some());
    }

    #[test]
    fn ca_bundle_is_set_once() {
        let mut configs = [WebhookClientConfig::default(), WebhookClientConfig::default()];
        assert!(set_ca_bundle(configs.iter_mut(), "PEM"));
        assert!(!set_ca_bundle(configs.iter_mut(), "PEM"));
        assert_eq!(configs[1].ca_bundle, Some(ByteString(b"PEM".to_vec())));
    }
}
