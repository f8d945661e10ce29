//! The mesh CA: the root that workload identities chain to, and workload certificates signed
//! from CSRs for SPIFFE identities (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`). Pure: PEM in,
//! PEM out, the clock passed in. Discovery keeps the root (a generated one in the Secret
//! `istio-ca-secret`, or one plugged in from `cacerts`, or their file equivalents) and serves
//! signing; the agent makes its key and CSR here too.
//!
//! Rules, as Istio's CA applies them:
//! - the certificate's only identity is the caller's, whatever the CSR asked for (a CSR asking
//!   for another identity is refused);
//! - the requested lifetime is honoured up to the maximum; none requested means the default
//!   (24 h);
//! - the chain returned is the leaf, then the CA's chain up to and including the root.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Lifetime of a workload certificate when the caller asks for none (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a workload certificate may live (Istio's `MAX_WORKLOAD_CERT_TTL` default, 90 days).
pub const DEFAULT_MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a generated root (Istio's self-signed CA default: ten years).
pub const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before they are issued: clocks differ.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot generate or sign: {0}")]
    Crypto(#[from] rcgen::Error),
    #[error("the CSR is not valid: {0}")]
    Csr(String),
    #[error("the CSR asks for {asked}, but the caller is {caller}")]
    IdentityMismatch { asked: String, caller: String },
    #[error("bad CA material: {0}")]
    Material(String),
    #[error("bad SPIFFE identity {0:?}: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    Identity(String),
}

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, CaError> {
        let bad = || CaError::Identity(text.to_owned());
        let rest = text.strip_prefix("spiffe://").ok_or_else(bad)?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [domain, "ns", ns, "sa", sa] if !domain.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Self::new(domain, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

/// A CA's material in PEM, named as Istio's `cacerts` Secret names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaMaterial {
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key.
    pub ca_key: String,
    /// `cert-chain.pem`: the signing certificate's chain up to the root (for a self-signed
    /// root, the root itself).
    pub cert_chain: String,
    /// `root-cert.pem`: the root every workload trusts.
    pub root_cert: String,
}

impl CaMaterial {
    /// The keys of the `cacerts` and `istio-ca-secret` Secrets, and the file names of a CA
    /// directory.
    pub const CA_CERT: &'static str = "ca-cert.pem";
    pub const CA_KEY: &'static str = "ca-key.pem";
    pub const CERT_CHAIN: &'static str = "cert-chain.pem";
    pub const ROOT_CERT: &'static str = "root-cert.pem";

    /// The material from a Secret's data or a directory's files, by name. `None` when none of
    /// it is there; an error names what is missing. A self-signed CA (Istio's `istio-ca-secret`
    /// leaves the chain and root empty) is its own chain and root.
    pub fn from_entries(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, CaError> {
        let present = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let (cert, key) = (present(Self::CA_CERT), present(Self::CA_KEY));
        match (cert, key) {
            (None, None) if present(Self::ROOT_CERT).is_none() => Ok(None),
            (Some(ca_cert), Some(ca_key)) => {
                let cert_chain = present(Self::CERT_CHAIN).unwrap_or_else(|| ca_cert.clone());
                let root_cert = present(Self::ROOT_CERT).unwrap_or_else(|| ca_cert.clone());
                Ok(Some(Self { ca_cert, ca_key, cert_chain, root_cert }))
            }
            (None, _) => Err(CaError::Material(format!("{} is missing", Self::CA_CERT))),
            (_, None) => Err(CaError::Material(format!("{} is missing", Self::CA_KEY))),
        }
    }

    /// `(name, PEM)` of each part, to store as Secret data or files.
    pub fn entries(&self) -> [(&'static str, &str); 4] {
        [
            (Self::CA_CERT, &self.ca_cert),
            (Self::CA_KEY, &self.ca_key),
            (Self::CERT_CHAIN, &self.cert_chain),
            (Self::ROOT_CERT, &self.root_cert),
        ]
    }

    /// The CA kept in `dir` (file mode), or a new self-signed one for `trust_domain` written
    /// there (the key readable by its owner only) when the directory holds none.
    pub fn load_or_create_dir(dir: &std::path::Path, trust_domain: &str, now: SystemTime) -> Result<Self, CaError> {
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        if let Some(material) =
            Self::from_entries(read).map_err(|e| CaError::Material(format!("{}: {e}", dir.display())))?
        {
            return Ok(material);
        }
        let material = generate_root(trust_domain, now)?;
        let io = |e: std::io::Error| CaError::Material(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        for (name, pem) in material.entries() {
            let path = dir.join(name);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            if name == Self::CA_KEY {
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            }
            let mut file = options.open(&path).map_err(io)?;
            std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(io)?;
        }
        Ok(material)
    }
}

/// A new self-signed root for `trust_domain`.
pub fn generate_root(trust_domain: &str, now: SystemTime) -> Result<CaMaterial, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, trust_domain);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, now, ROOT_TTL);
    let cert = params.self_signed(&key)?;
    let pem = cert.pem();
    Ok(CaMaterial { ca_cert: pem.clone(), ca_key: key.serialize_pem(), cert_chain: pem.clone(), root_cert: pem })
}

/// The window `[now - skew, now + ttl]`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, ttl: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let whole = Duration::from_secs(since_epoch.as_secs());
    params.not_before = epoch + whole.saturating_sub(CLOCK_SKEW);
    params.not_after = epoch + whole + ttl;
}

/// Signs workload certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    material: CaMaterial,
    max_ttl: Duration,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority").field("max_ttl", &self.max_ttl).finish_non_exhaustive()
    }
}

impl Authority {
    pub fn new(material: CaMaterial, max_ttl: Duration) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&material.ca_key).map_err(|e| CaError::Material(format!("ca-key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&material.ca_cert, key).map_err(|e| CaError::Material(format!("ca-cert: {e}")))?;
        Ok(Self { issuer, material, max_ttl })
    }

    /// The root workloads trust (`root-cert.pem`).
    pub fn root_pem(&self) -> &str {
        &self.material.root_cert
    }

    pub fn material(&self) -> &CaMaterial {
        &self.material
    }

    /// A certificate for `caller` with the CSR's key, valid for `ttl` (default when `None`,
    /// at most the maximum). Returns the chain: leaf first, root last.
    pub fn sign(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Vec<String>, CaError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Csr(e.to_string()))?;
        let caller_uri = caller.to_string();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(uri) if uri.as_str() == caller_uri => {}
                SanType::URI(uri) => {
                    return Err(CaError::IdentityMismatch { asked: uri.as_str().to_owned(), caller: caller_uri });
                }
                other => {
                    return Err(CaError::IdentityMismatch { asked: format!("{other:?}"), caller: caller_uri });
                }
            }
        }
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_WORKLOAD_TTL).min(self.max_ttl);
        let params = &mut csr.params;
        params.subject_alt_names =
            vec![SanType::URI(Ia5String::try_from(caller_uri.as_str()).map_err(|e| CaError::Csr(e.to_string()))?)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(params, now, ttl);
        let leaf = csr.signed_by(&self.issuer)?;
        let mut chain = vec![leaf.pem()];
        chain.extend(split_pem(&self.material.cert_chain));
        if !chain.iter().any(|c| c.trim() == self.material.root_cert.trim()) {
            chain.push(self.material.root_cert.clone());
        }
        Ok(chain)
    }
}

impl Authority {
    /// Discovery's own serving certificate (the TLS xDS port): DNS and IP SANs, signed by this
    /// CA so agents that trust the mesh root can verify it. Returns (chain PEM, key PEM).
    pub fn serving_certificate(
        &self,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = dns_names
            .iter()
            .map(|name| Ia5String::try_from(name.as_str()).map(SanType::DnsName))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, _>>()
            .map_err(|e| CaError::Material(format!("serving certificate name: {e}")))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, ttl.min(self.max_ttl));
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = leaf.pem();
        for cert in split_pem(&self.material.cert_chain) {
            if cert.trim() != self.material.root_cert.trim() {
                chain.push_str(&cert);
            }
        }
        Ok((chain, key.serialize_pem()))
    }
}

/// The SPIFFE identity a certificate (DER) carries in its URI SAN, if any.
pub fn identity_of_certificate(der: &[u8]) -> Option<SpiffeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => SpiffeId::parse(uri).ok(),
        _ => None,
    })
}

/// When a certificate (PEM) expires.
pub fn not_after_of(pem: &str) -> Option<SystemTime> {
    let (_, der) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der.contents).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

/// The certificates of a PEM bundle, each as its own PEM text.
pub fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim)
        .filter(|c| c.starts_with("-----BEGIN CERTIFICATE-----"))
        .map(|c| format!("{c}\n"))
        .collect()
}

/// A new key and a CSR for `identity` (what the agent sends): (CSR PEM, key PEM).
pub fn csr_for(identity: &SpiffeId) -> Result<(String, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(Ia5String::try_from(identity.to_string()).map_err(|e| CaError::Csr(e.to_string()))?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// Verifies `chain` as rustls's WebPKI client-certificate verifier would, at `at`.
    fn verifies(root: &str, chain: &[String], at: SystemTime) -> Result<(), String> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(root.as_bytes()).unwrap()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .map_err(|e| e.to_string())?;
        let certs: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| CertificateDer::from_pem_slice(c.as_bytes()).unwrap()).collect();
        let seconds = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        verifier
            .verify_client_cert(&certs[0], &certs[1..], UnixTime::since_unix_epoch(Duration::from_secs(seconds)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_ca_directory_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("rudder-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let created = CaMaterial::load_or_create_dir(&dir, "cluster.local", now()).unwrap();
        let again = CaMaterial::load_or_create_dir(&dir, "cluster.local", now()).unwrap();
        assert_eq!(created, again, "the second start keeps the first root");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(CaMaterial::CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_file(dir.join(CaMaterial::CA_KEY)).unwrap();
        let broken = CaMaterial::load_or_create_dir(&dir, "cluster.local", now()).unwrap_err();
        assert!(broken.to_string().contains("ca-key.pem is missing"), "{broken}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_self_signed_secret_is_its_own_chain_and_root() {
        let root = generate_root("cluster.local", now()).unwrap();
        let data = [(CaMaterial::CA_CERT, root.ca_cert.clone()), (CaMaterial::CA_KEY, root.ca_key.clone())];
        let get = |name: &str| data.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
        let material = CaMaterial::from_entries(get).unwrap().unwrap();
        assert_eq!(material, root);
        assert_eq!(CaMaterial::from_entries(|_| None).unwrap(), None);
    }

    #[test]
    fn spiffe_ids_parse_and_print() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/sleep").unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "default", "sleep"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        for bad in ["spiffe://cluster.local/ns/default", "http://x/ns/a/sa/b", "spiffe:///ns/a/sa/b"] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_workload_certificate_chains_to_the_root_and_names_only_the_caller() {
        let ca = Authority::new(generate_root("cluster.local", now()).unwrap(), DEFAULT_MAX_WORKLOAD_TTL).unwrap();
        let sleep = SpiffeId::new("cluster.local", "default", "sleep");
        let (csr, _key) = csr_for(&sleep).unwrap();
        let chain = ca.sign(&csr, &sleep, None, now()).unwrap();
        assert_eq!(chain.len(), 2, "leaf and root");
        assert_eq!(chain[1].trim(), ca.root_pem().trim());
        verifies(ca.root_pem(), &chain, now() + Duration::from_secs(60)).unwrap();
        // Default lifetime: 24 h.
        verifies(ca.root_pem(), &chain, now() + DEFAULT_WORKLOAD_TTL - Duration::from_secs(60)).unwrap();
        assert!(verifies(ca.root_pem(), &chain, now() + DEFAULT_WORKLOAD_TTL + Duration::from_secs(60)).is_err());
        // Another root does not vouch for it.
        let other = generate_root("cluster.local", now()).unwrap();
        assert!(verifies(&other.root_cert, &chain, now() + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn the_identity_must_be_the_callers_and_the_lifetime_is_capped() {
        let ca = Authority::new(generate_root("cluster.local", now()).unwrap(), Duration::from_secs(3600)).unwrap();
        let sleep = SpiffeId::new("cluster.local", "default", "sleep");
        let admin = SpiffeId::new("cluster.local", "istio-system", "istiod");
        let (csr, _) = csr_for(&admin).unwrap();
        let refused = ca.sign(&csr, &sleep, None, now()).unwrap_err();
        assert!(matches!(refused, CaError::IdentityMismatch { .. }), "{refused}");
        let (csr, _) = csr_for(&sleep).unwrap();
        let chain = ca.sign(&csr, &sleep, Some(Duration::from_secs(30 * 24 * 3600)), now()).unwrap();
        assert!(verifies(ca.root_pem(), &chain, now() + Duration::from_secs(3500)).is_ok());
        assert!(verifies(ca.root_pem(), &chain, now() + Duration::from_secs(3700)).is_err(), "capped at the maximum");
        assert!(matches!(ca.sign("not a csr", &sleep, None, now()), Err(CaError::Csr(_))));
    }

    #[test]
    fn a_plugged_in_intermediate_signs_and_the_chain_reaches_the_root() {
        // cacerts: a root, and an intermediate it signed that does the signing.
        let root = generate_root("cluster.local", now()).unwrap();
        let root_key = KeyPair::from_pem(&root.ca_key).unwrap();
        let root_issuer = Issuer::from_ca_cert_pem(&root.ca_cert, root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "intermediate");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, now(), ROOT_TTL);
        let intermediate = params.signed_by(&key, &root_issuer).unwrap().pem();
        let material = CaMaterial {
            ca_cert: intermediate.clone(),
            ca_key: key.serialize_pem(),
            cert_chain: format!("{intermediate}{}", root.root_cert),
            root_cert: root.root_cert.clone(),
        };
        let ca = Authority::new(material, DEFAULT_MAX_WORKLOAD_TTL).unwrap();
        let id = SpiffeId::new("cluster.local", "apps", "web");
        let (csr, _) = csr_for(&id).unwrap();
        let chain = ca.sign(&csr, &id, None, now()).unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        verifies(&root.root_cert, &chain, now() + Duration::from_secs(60)).unwrap();
        assert!(matches!(
            Authority::new(CaMaterial { ca_key: "junk".into(), ..root }, DEFAULT_MAX_WORKLOAD_TTL),
            Err(CaError::Material(_))
        ));
    }
}
