//! Fleet PKI: the fleet CA, host and server certificates, host bundles and the TLS 1.3 mTLS configurations used
//! between agents / remote otpctl and servers.
//!
//! Everything here uses the `ring` provider explicitly (never the process-wide default provider), so no aws-lc enters
//! the build and no other code in the process can change which algorithms the fleet link accepts.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const CA_COMMON_NAME: &str = "otpd fleet CA";
const CA_DAYS: i64 = 10 * 365;
/// A host certificate's life when nothing else is configured (`[fleet]
/// host_certificate_life`): agents renew theirs at two thirds of it.
pub const DEFAULT_HOST_LIFE: i64 = 30 * 86_400;
const SERVER_DAYS: i64 = 365;
/// Certificates start an hour in the past so hosts whose clocks lag a little still accept a fresh one.
const BACKDATE: time::Duration = time::Duration::hours(1);
/// A bundle is three small PEM blocks; anything much bigger is not one.
const MAX_BUNDLE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid host name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ -, not starting with '-' or '.'")]
    HostName(String),
    #[error("invalid server name {0:?}: must be a DNS name or an IP address")]
    ServerName(String),
    #[error("a server certificate needs at least one name")]
    NoServerNames,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("fleet CA: {0}")]
    Ca(String),
    #[error("certificate: {0}")]
    Cert(String),
    #[error("host bundle: {0}")]
    Bundle(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "the certificate of host {name} expired at {at}: it can no longer renew itself. Make a new bundle on a \
         server (`otpctl host add {name} -o FILE`; a host whose certificate expired may be added again) and \
         install it here"
    )]
    Expired { name: String, at: String },
    #[error("certificate signing request: {0}")]
    Csr(String),
}

/// The time TLS checks certificates against: the daemon's clock (debug
/// builds: the test suite's shifted clock, so expiry and renewal are tested
/// without waiting), the system's in release builds.
#[derive(Clone)]
pub struct TlsClock(Arc<dyn crate::sys::clock::Clock>);

impl TlsClock {
    pub fn new(clock: Arc<dyn crate::sys::clock::Clock>) -> TlsClock {
        TlsClock(clock)
    }

    pub fn system() -> TlsClock {
        TlsClock(Arc::new(crate::sys::clock::SystemClock))
    }

    pub fn now(&self) -> i64 {
        self.0.now()
    }
}

impl fmt::Debug for TlsClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClock")
    }
}

impl rustls::time_provider::TimeProvider for TlsClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix_time(self.0.now()))
    }
}

fn unix_time(t: i64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0) as u64))
}

/// "2025-01-31T12:00:00Z".
pub fn rfc3339(t: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64))
        .to_string()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The fleet certificate authority: issues host (client) and server certificates.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    /// The CA's parameters re-signed with its key: rcgen needs a `Certificate` as issuer; only its subject DN, key
    /// identifier and key are used when signing, and those are the original's.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &fingerprint_hex(&fingerprint(&self.cert_der)))
            .finish_non_exhaustive()
    }
}

/// A freshly issued certificate and its private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the certificate's DER: what the server's hosts table records.
    pub fingerprint: [u8; 32],
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate issued for a key the server never saw (a renewal's CSR).
#[derive(Debug, Clone)]
pub struct Signed {
    pub cert_pem: String,
    pub fingerprint: [u8; 32],
    pub not_after: i64,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("fingerprint", &fingerprint_hex(&self.fingerprint)).finish_non_exhaustive()
    }
}

/// What a host (agent or remote admin) holds: the fleet CA, its own certificate and its private key.
#[derive(Clone)]
pub struct Bundle {
    pub name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle").field("name", &self.name).finish_non_exhaustive()
    }
}

fn now_utc() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // Positive and always 16 bytes long once DER-encoded.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn leaf_params(now: i64, life_secs: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let now = time::OffsetDateTime::from_unix_timestamp(now).unwrap_or_else(|_| now_utc());
    params.not_before = now - BACKDATE;
    params.not_after = now + time::Duration::seconds(life_secs);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// Host names as they appear in bundles, the hosts table and audit rows.
pub fn validate_host_name(name: &str) -> Result<(), PkiError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('-')
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::HostName(name.to_string()))
    }
}

fn parse_x509(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing data after the certificate".into()),
        Err(e) => Err(format!("not an X.509 certificate ({e})")),
    }
}

fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<String, String> {
    let mut names = cert.subject().iter_common_name();
    let cn = names.next().ok_or("the certificate has no common name")?;
    if names.next().is_some() {
        return Err("the certificate has more than one common name".into());
    }
    cn.as_str().map(str::to_string).map_err(|_| "the certificate's common name is not a string".into())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn cert_from_pem(pem: &str, what: &str) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("{what}: no readable certificate ({e})"))
}

fn key_from_pem(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    // The PEM error never contains key bytes, only its kind.
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("{what}: no readable private key ({e})"))
}

/// Every certificate of a PEM text (a trust set: one CA or several).
fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what}: no readable certificate ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate"));
    }
    Ok(certs)
}

fn roots_of(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(|e| PkiError::Ca(format!("not usable as a trust anchor: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn client_verifier(cas: &[CertificateDer<'static>]) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    WebPkiClientVerifier::builder_with_provider(roots_of(cas)?, provider())
        .build()
        .map_err(|e| PkiError::Ca(format!("cannot verify clients with it: {e}")))
}

impl Ca {
    /// A new fleet CA: ECDSA P-256, valid 10 years, may sign end-entity certificates only (path length 0).
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let now = now_utc();
        // Each CA its own name (after a rotation hosts trust two): a
        // certificate of another names its issuer, not a look-alike.
        let tag: [u8; 4] = rand::random();
        let mut dn = DistinguishedName::new();
        let (y, m, d) = (now.year(), now.month() as u8, now.day());
        dn.push(
            DnType::CommonName,
            format!("{CA_COMMON_NAME} {y:04}-{m:02}-{d:02} {}", fingerprint_hex(&tag).replace(':', "")),
        );
        params.distinguished_name = dn;
        params.not_before = now - BACKDATE;
        params.not_after = now + time::Duration::days(CA_DAYS);
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().clone();
        Ok(Ca { cert_pem: cert.pem(), cert_der, issuer: cert, key })
    }

    /// The CA as stored (certificate PEM + unsealed key PEM); checks that the key belongs to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der = cert_from_pem(cert_pem, "CA certificate").map_err(PkiError::Ca)?;
        let x509 = parse_x509(&cert_der).map_err(PkiError::Ca)?;
        if !x509.is_ca() {
            return Err(PkiError::Ca("the certificate is not a CA certificate".into()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Ca(format!("unreadable CA key ({e})")))?;
        if key.public_key_der() != x509.public_key().raw {
            return Err(PkiError::Ca("the key does not belong to the CA certificate".into()));
        }
        let params = CertificateParams::from_ca_cert_der(&cert_der)
            .map_err(|e| PkiError::Ca(format!("unsupported CA certificate ({e})")))?;
        let issuer = params.self_signed(&key)?;
        Ok(Ca { cert_pem: pem_encode("CERTIFICATE", &cert_der), cert_der, issuer, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA's private key: the caller seals it before storing it anywhere.
    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// When the CA certificate runs out (Unix seconds).
    pub fn not_after(&self) -> i64 {
        parse_x509(&self.cert_der).map(|x| x.validity().not_after.timestamp()).unwrap_or(0)
    }

    /// A host certificate (with a new key) valid for the default life from
    /// now, by the system clock (tests; the daemon uses [`Ca::issue_client_at`]).
    #[cfg(test)]
    pub fn issue_client(&self, name: &str) -> Result<Issued, PkiError> {
        self.issue_client_at(name, now_utc().unix_timestamp(), DEFAULT_HOST_LIFE)
    }

    /// A host certificate: CN = name, usable only for TLS client authentication, valid `life` seconds from `now`.
    pub fn issue_client_at(&self, name: &str, now: i64, life: i64) -> Result<Issued, PkiError> {
        self.sign(client_params(name, now, life)?)
    }

    /// A renewal: a host certificate for `name` (whatever the request's subject says) and the key of the
    /// certificate signing request `csr_pem`, which must be signed by that key (ECDSA P-256).
    pub fn issue_for_csr(&self, name: &str, csr_pem: &str, now: i64, life: i64) -> Result<Signed, PkiError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(PkiError::Csr("too large".into()));
        }
        // Parsing checks the request's signature: the asker holds the key.
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(format!("unreadable or not signed by its key ({e})")))?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Csr("the key must be ECDSA P-256".into()));
        }
        let request = rcgen::CertificateSigningRequestParams {
            params: client_params(name, now, life)?,
            public_key: csr.public_key,
        };
        let not_after = request.params.not_after.unix_timestamp();
        let cert = request.signed_by(&self.issuer, &self.key)?;
        Ok(Signed { cert_pem: cert.pem(), fingerprint: fingerprint(cert.der()), not_after })
    }

    /// [`Ca::issue_server_at`] by the system clock (tests).
    #[cfg(test)]
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, PkiError> {
        self.issue_server_at(names, now_utc().unix_timestamp())
    }

    /// A server certificate: one SAN per name (IP address or DNS name), usable only for TLS server
    /// authentication, valid 1 year from `now`.
    pub fn issue_server_at(&self, names: &[String], now: i64) -> Result<Issued, PkiError> {
        let first = names.first().ok_or(PkiError::NoServerNames)?;
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(san_for(name)?);
        }
        let mut params = leaf_params(now, SERVER_DAYS * 86_400);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: fingerprint(cert.der()),
            not_after,
        })
    }
}

fn client_params(name: &str, now: i64, life: i64) -> Result<CertificateParams, PkiError> {
    validate_host_name(name)?;
    let mut params = leaf_params(now, life);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A new key pair made here, and a certificate signing request for it (its subject is `name`, which the server
/// ignores: it issues for the name it has on record). The key never leaves this host.
pub fn new_key_and_csr(name: &str) -> Result<(Zeroizing<String>, String), PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    let pem = csr.pem()?;
    Ok((Zeroizing::new(key.serialize_pem()), pem))
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    let bad = || PkiError::ServerName(name.to_string());
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    match ServerName::try_from(name) {
        Ok(ServerName::DnsName(_)) => {}
        _ => return Err(bad()),
    }
    let ia5 = rcgen::Ia5String::try_from(name).map_err(|_| bad())?;
    Ok(SanType::DnsName(ia5))
}

impl Bundle {
    /// One PEM file: a comment header, then the fleet CA, the host certificate and the host key.
    pub fn to_text(&self) -> String {
        format!(
            "# otpd host bundle for {}\n\
             # Fleet CA, host certificate and the host's private key: keep this file mode 0600, owned by the user\n\
             # that uses it (root for an agent). Anyone who reads it can act as this host.\n\
             {}{}{}",
            self.name,
            ensure_newline(&self.ca_pem),
            ensure_newline(&self.cert_pem),
            ensure_newline(&self.key_pem)
        )
    }

    /// Parses and checks a bundle (at the system's time; see [`Bundle::parse_at`]).
    pub fn parse(text: &str) -> Result<Bundle, PkiError> {
        Bundle::parse_at(text, now_utc().unix_timestamp())
    }

    /// Parses and checks a bundle: the fleet CA certificates (one, or during a CA rotation several), then the
    /// host's certificate, and one PKCS#8 key; the host certificate must be valid at `now`, issued by one of those
    /// CAs for client authentication, and match the key.
    pub fn parse_at(text: &str, now: i64) -> Result<Bundle, PkiError> {
        let err = |m: &str| PkiError::Bundle(m.to_string());
        let mut certs: Vec<CertificateDer<'static>> = Vec::new();
        let mut key: Option<Zeroizing<Vec<u8>>> = None;
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()) {
            let (kind, der) = item.map_err(|e| PkiError::Bundle(format!("malformed PEM ({e})")))?;
            match kind {
                SectionKind::Certificate => certs.push(CertificateDer::from(der)),
                SectionKind::PrivateKey => {
                    let der = Zeroizing::new(der);
                    if key.replace(der).is_some() {
                        return Err(err("more than one private key"));
                    }
                }
                other => return Err(PkiError::Bundle(format!("unexpected PEM section {other:?}"))),
            }
        }
        let key = key.ok_or_else(|| err("no PKCS#8 private key (a PEM block labelled PRIVATE KEY)"))?;
        if certs.len() < 2 || certs.len() > 8 {
            return Err(PkiError::Bundle(format!(
                "expected the fleet CA certificate(s), then the host certificate; found {} certificate(s)",
                certs.len()
            )));
        }
        let cert_der = certs.pop().ok_or_else(|| err("no host certificate"))?;
        for ca_der in &certs {
            let ca = parse_x509(ca_der).map_err(|e| PkiError::Bundle(format!("CA certificate: {e}")))?;
            if !ca.is_ca() {
                return Err(err("a certificate before the host's is not a CA certificate"));
            }
        }
        let host = parse_x509(&cert_der).map_err(|e| PkiError::Bundle(format!("host certificate: {e}")))?;
        let name = common_name(&host).map_err(|e| PkiError::Bundle(format!("host certificate: {e}")))?;
        validate_host_name(&name).map_err(|e| PkiError::Bundle(format!("host certificate: {e}")))?;
        let (not_before, not_after) = (host.validity().not_before.timestamp(), host.validity().not_after.timestamp());
        if now > not_after {
            return Err(PkiError::Expired { name, at: rfc3339(not_after) });
        }
        if now < not_before {
            return Err(PkiError::Bundle(format!(
                "the host certificate of {name} is valid only from {} (is this host's clock right?)",
                rfc3339(not_before)
            )));
        }

        let verifier = client_verifier(&certs).map_err(|e| PkiError::Bundle(e.to_string()))?;
        verifier.verify_client_cert(&cert_der, &[], unix_time(now)).map_err(|e| {
            PkiError::Bundle(format!("the host certificate of {name} does not verify against this bundle's CA ({e})"))
        })?;
        let key_der = PrivateKeyDer::Pkcs8(key.to_vec().into());
        CertifiedKey::from_der(vec![cert_der.clone()], key_der, &provider()).map_err(|e| {
            PkiError::Bundle(format!("the private key does not belong to the host certificate of {name} ({e})"))
        })?;

        Ok(Bundle {
            name,
            ca_pem: certs.iter().map(|c| pem_encode("CERTIFICATE", c)).collect(),
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            key_pem: pem_encode("PRIVATE KEY", &key),
        })
    }

    /// The host certificate's validity: (not before, not after), Unix seconds.
    pub fn validity(&self) -> Result<(i64, i64), PkiError> {
        let der = cert_from_pem(&self.cert_pem, "host certificate").map_err(PkiError::Bundle)?;
        let x = parse_x509(&der).map_err(PkiError::Bundle)?;
        Ok((x.validity().not_before.timestamp(), x.validity().not_after.timestamp()))
    }

    /// SHA-256 of each CA certificate the bundle trusts, hex, in its order.
    pub fn ca_fingerprints(&self) -> Result<Vec<String>, PkiError> {
        let cas = certs_from_pem(&self.ca_pem, "bundle CA").map_err(PkiError::Bundle)?;
        Ok(cas.iter().map(|c| fingerprint_hex(&fingerprint(c))).collect())
    }

    /// SHA-256 of the host certificate.
    pub fn fingerprint(&self) -> Result<[u8; 32], PkiError> {
        Ok(fingerprint(&cert_from_pem(&self.cert_pem, "host certificate").map_err(PkiError::Bundle)?))
    }

    /// When this bundle's certificate is due for renewal: two thirds into its life.
    pub fn renew_at(&self) -> Result<i64, PkiError> {
        let (from, until) = self.validity()?;
        Ok(from + (until - from) * 2 / 3)
    }

    /// [`Bundle::load_at`] by the system clock (tests).
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<Bundle, PkiError> {
        Bundle::load_at(path, now_utc().unix_timestamp())
    }

    /// Reads a bundle file, checking the certificate's validity at `now`. It holds a private key, so it must be a
    /// regular file (not a symlink) that neither group nor others can read or write.
    pub fn load_at(path: &Path, now: i64) -> Result<Bundle, PkiError> {
        let shown = path.display().to_string();
        let file_err = |reason: String| PkiError::File { path: shown.clone(), reason };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ELOOP) {
                    file_err("is a symbolic link; refusing it (point the configuration at the real file)".into())
                } else {
                    file_err(format!("cannot open host bundle: {e}"))
                }
            })?;
        let meta = file.metadata().map_err(|e| file_err(format!("cannot stat host bundle: {e}")))?;
        if !meta.is_file() {
            return Err(file_err("is not a regular file; a host bundle must be one".into()));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_err(format!(
                "host bundle has mode {mode:04o}, open to group/others, but it holds this host's private key; \
                 run `chmod 600 {shown}` (and consider re-issuing it if others may have read it)"
            )));
        }
        // Another user's file, even mode 0600, is one that user can
        // rewrite or read back whenever they like.
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(file_err(format!(
                "host bundle is owned by uid {}, not by the user that uses it (uid {me}): \
                 run `chown {me} {shown}` if it is yours to use",
                meta.uid()
            )));
        }
        if meta.len() > MAX_BUNDLE_BYTES {
            return Err(file_err(format!("is {} bytes, too big for a host bundle", meta.len())));
        }
        let mut text = Zeroizing::new(String::new());
        file.by_ref()
            .take(MAX_BUNDLE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| file_err(format!("cannot read host bundle: {e}")))?;
        Bundle::parse_at(&text, now).map_err(|e| match e {
            e @ PkiError::Expired { .. } => e,
            e => file_err(e.to_string()),
        })
    }
}

/// A renewal's answer made into the new bundle of `old`'s holder, checked:
/// a certificate for the same name and for `key_pem` (the key made here),
/// valid at `now`, issued by one of the CAs of `ca_pem`. With its text, to
/// write.
pub fn renewed_bundle(
    old: &Bundle,
    key_pem: &str,
    cert_pem: String,
    ca_pem: String,
    now: i64,
) -> Result<(Bundle, Zeroizing<String>), PkiError> {
    let new = Bundle { name: old.name.clone(), ca_pem, cert_pem, key_pem: key_pem.to_string() };
    let text = Zeroizing::new(new.to_text());
    let checked = Bundle::parse_at(&text, now)?;
    if checked.name != old.name {
        return Err(PkiError::Bundle(format!(
            "the server issued a certificate for {:?}, not {:?}",
            checked.name, old.name
        )));
    }
    Ok((checked, text))
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// SHA-256 of a certificate's DER encoding.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// "ab:cd:…" (lowercase hex, colon separated).
pub fn fingerprint_hex(fp: &[u8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The first 8 bytes of a fingerprint as [`fingerprint_hex`]: enough to
/// tell certificates apart in log lines and audit reasons.
pub fn fingerprint_short(fp: &[u8]) -> String {
    fingerprint_hex(&fp[..fp.len().min(8)])
}

/// [`server_config_with`] trusting `ca` alone, by the system clock (tests).
#[cfg(test)]
pub fn server_config(ca: &Ca, server: &Issued) -> Result<Arc<ServerConfig>, PkiError> {
    server_config_with(&ca.cert_pem, server, &TlsClock::system())
}

/// The server side of the fleet link: TLS 1.3 only; every client must present a certificate issued by one of the
/// CAs of `trust_pem` (during a CA rotation, the old and the new), valid at `clock`'s time.
pub fn server_config_with(trust_pem: &str, server: &Issued, clock: &TlsClock) -> Result<Arc<ServerConfig>, PkiError> {
    let chain = vec![cert_from_pem(&server.cert_pem, "server certificate").map_err(PkiError::Cert)?];
    let key = key_from_pem(&server.key_pem, "server key").map_err(PkiError::Cert)?;
    let trust = certs_from_pem(trust_pem, "fleet CA").map_err(PkiError::Ca)?;
    let mut config = ServerConfig::builder_with_details(provider(), Arc::new(clock.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier(&trust)?)
        .with_single_cert(chain, key)?;
    // No resumption: every connection runs the full handshake, so the client certificate is verified every time.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// [`client_config_with`] by the system clock (tests).
#[cfg(test)]
pub fn client_config(bundle: &Bundle) -> Result<Arc<ClientConfig>, PkiError> {
    client_config_with(bundle, &TlsClock::system())
}

/// The client side of the fleet link: TLS 1.3 only; trusts only the bundle's CAs (never the system roots),
/// presents the bundle's certificate, and checks the server's at `clock`'s time.
pub fn client_config_with(bundle: &Bundle, clock: &TlsClock) -> Result<Arc<ClientConfig>, PkiError> {
    let cas = certs_from_pem(&bundle.ca_pem, "bundle CA").map_err(PkiError::Bundle)?;
    let chain = vec![cert_from_pem(&bundle.cert_pem, "bundle certificate").map_err(PkiError::Bundle)?];
    let key = key_from_pem(&bundle.key_pem, "bundle key").map_err(PkiError::Bundle)?;
    let mut config = ClientConfig::builder_with_details(provider(), Arc::new(clock.clone()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots_of(&cas)?)
        .with_client_auth_cert(chain, key)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The name a client checks the server certificate against: an IP address (brackets allowed) or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, PkiError> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(bare.to_string()).map_err(|_| PkiError::ServerName(host.to_string()))
}

/// Fingerprint of the peer's end-entity certificate, once the handshake has completed.
pub fn peer_fingerprint(conn: &rustls::CommonState) -> Option<[u8; 32]> {
    conn.peer_certificates()?.first().map(|c| fingerprint(c))
}

/// When the peer's end-entity certificate runs out (Unix seconds), once the handshake has completed.
pub fn peer_not_after(conn: &rustls::CommonState) -> Option<i64> {
    let der = conn.peer_certificates()?.first()?;
    Some(parse_x509(der).ok()?.validity().not_after.timestamp())
}

/// Issues a host's (or an admin's) credentials at `now`, valid `life` seconds, trusting the CAs of `trust_pem`:
/// the bundle handed out once, and what was issued (its fingerprint is what the hosts table records).
pub fn issue_bundle_at(
    ca: &Ca,
    trust_pem: &str,
    name: &str,
    now: i64,
    life: i64,
) -> Result<(Bundle, Issued), PkiError> {
    let issued = ca.issue_client_at(name, now, life)?;
    let bundle = Bundle {
        name: name.to_string(),
        ca_pem: trust_pem.to_string(),
        cert_pem: issued.cert_pem.clone(),
        key_pem: issued.key_pem.clone(),
    };
    Ok((bundle, issued))
}

/// Writes `text` to `path` so that a reader sees the old file or the new one, never a part: a new file in the same
/// directory (mode 0600, this user's), synced, renamed over the old one, and the directory synced.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or("the path has no file name")?.to_string_lossy().into_owned();
    let tmp = dir.join(format!(".{file_name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn bundle_for(ca: &Ca, name: &str) -> (Bundle, [u8; 32]) {
        let issued = ca.issue_client(name).unwrap();
        let b = Bundle { name: name.into(), ca_pem: ca.cert_pem(), cert_pem: issued.cert_pem, key_pem: issued.key_pem };
        (b, issued.fingerprint)
    }

    struct Outcome {
        /// The server's view: the client certificate's fingerprint, or why the handshake failed.
        server: Result<Option<[u8; 32]>, String>,
        /// The client's view: Ok only if the handshake completed and the server's first byte arrived (in TLS 1.3
        /// the client finishes before the server has checked its certificate).
        client: Result<(), String>,
    }

    async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let fp = peer_fingerprint(tls.get_ref().1);
                    tls.write_all(b"k").await.map_err(|e| e.to_string())?;
                    tls.shutdown().await.ok();
                    Ok(fp)
                }
                Err(e) => Err(e.to_string()),
            }
        });
        let connector = TlsConnector::from(client);
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client_result = async {
            let mut tls = connector.connect(server_name(name).unwrap(), tcp).await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            assert_eq!(&b, b"k");
            Ok(())
        }
        .await;
        Outcome { server: server_task.await.unwrap(), client: client_result }
    }

    fn server_for(ca: &Ca, names: &[&str]) -> Arc<ServerConfig> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        server_config(ca, &ca.issue_server(&names).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn valid_client_is_seen_by_its_fingerprint() {
        let ca = Ca::generate().unwrap();
        let (bundle, fp) = bundle_for(&ca, "web01");
        let out =
            handshake(server_for(&ca, &["otp1.example", "127.0.0.1"]), client_config(&bundle).unwrap(), "otp1.example")
                .await;
        assert_eq!(out.client, Ok(()));
        assert_eq!(out.server, Ok(Some(fp)));
    }

    #[tokio::test]
    async fn ip_san_is_accepted() {
        let ca = Ca::generate().unwrap();
        let (bundle, fp) = bundle_for(&ca, "web01");
        let out =
            handshake(server_for(&ca, &["otp1.example", "127.0.0.1"]), client_config(&bundle).unwrap(), "127.0.0.1")
                .await;
        assert_eq!(out.client, Ok(()));
        assert_eq!(out.server, Ok(Some(fp)));
    }

    #[tokio::test]
    async fn ca_restored_from_pem_keeps_issuing_for_the_same_fleet() {
        let ca = Ca::generate().unwrap();
        let restored = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(restored.cert_pem(), ca.cert_pem());
        assert_eq!(restored.fingerprint(), ca.fingerprint());
        // A host issued by the restored CA talks to a server issued by the original, and vice versa.
        let (bundle, fp) = bundle_for(&restored, "web02");
        let out = handshake(server_for(&ca, &["otp1.example"]), client_config(&bundle).unwrap(), "otp1.example").await;
        assert_eq!(out.client, Ok(()));
        assert_eq!(out.server, Ok(Some(fp)));
        let (bundle, fp) = bundle_for(&ca, "web03");
        let out =
            handshake(server_for(&restored, &["otp1.example"]), client_config(&bundle).unwrap(), "otp1.example").await;
        assert_eq!(out.client, Ok(()));
        assert_eq!(out.server, Ok(Some(fp)));
    }

    #[test]
    fn ca_from_pem_refuses_a_foreign_key() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let e = Ca::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        let leaf = ca.issue_client("web01").unwrap();
        let e = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
        assert!(Ca::from_pem("junk", &ca.key_pem()).is_err());
    }

    #[tokio::test]
    async fn client_cert_of_another_ca_is_refused() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let issued = other.issue_client("web01").unwrap();
        // Trusts the right CA for the server, but presents a certificate from elsewhere.
        let bundle =
            Bundle { name: "web01".into(), ca_pem: ca.cert_pem(), cert_pem: issued.cert_pem, key_pem: issued.key_pem };
        let out = handshake(server_for(&ca, &["otp1.example"]), client_config(&bundle).unwrap(), "otp1.example").await;
        assert!(out.server.is_err(), "{:?}", out.server);
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn server_cert_is_not_a_client_cert() {
        // A server's certificate (serverAuth only) cannot be used to log in as a host.
        let ca = Ca::generate().unwrap();
        let issued = ca.issue_server(&["web01".into()]).unwrap();
        let bundle =
            Bundle { name: "web01".into(), ca_pem: ca.cert_pem(), cert_pem: issued.cert_pem, key_pem: issued.key_pem };
        let out = handshake(server_for(&ca, &["otp1.example"]), client_config(&bundle).unwrap(), "otp1.example").await;
        assert!(out.server.is_err(), "{:?}", out.server);
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() {
        let ca = Ca::generate().unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let out = handshake(server_for(&ca, &["otp1.example"]), Arc::new(client), "otp1.example").await;
        assert!(out.server.is_err(), "{:?}", out.server);
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn server_cert_of_another_ca_is_refused_by_the_client() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "web01");
        let out =
            handshake(server_for(&other, &["otp1.example"]), client_config(&bundle).unwrap(), "otp1.example").await;
        let e = out.client.unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{e}");
        assert!(out.server.is_err());
    }

    #[tokio::test]
    async fn wrong_server_name_is_refused() {
        let ca = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "web01");
        let out = handshake(server_for(&ca, &["otp1.example"]), client_config(&bundle).unwrap(), "otp2.example").await;
        let e = out.client.unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        assert!(out.server.is_err());
    }

    #[tokio::test]
    async fn client_cert_is_not_a_server_cert() {
        // A host's certificate (clientAuth only) cannot be used to impersonate a server.
        let ca = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "otp1.example");
        let host = ca.issue_client("otp1.example").unwrap();
        let server = server_config(&ca, &host).unwrap();
        let out = handshake(server, client_config(&bundle).unwrap(), "otp1.example").await;
        assert!(out.client.is_err());
    }

    #[tokio::test]
    async fn tls12_only_client_is_refused() {
        let ca = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "web01");
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let out = handshake(server_for(&ca, &["otp1.example"]), Arc::new(client), "otp1.example").await;
        assert!(out.server.is_err(), "{:?}", out.server);
        assert!(out.client.is_err());
    }

    #[test]
    fn issued_certificates_have_the_right_shape() {
        use x509_parser::extensions::ParsedExtension;
        let ca = Ca::generate().unwrap();
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let x = parse_x509(&ca_der).unwrap();
        assert!(common_name(&x).unwrap().starts_with("otpd fleet CA 20"), "{:?}", common_name(&x));
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());

        let client = ca.issue_client("web01").unwrap();
        let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der), client.fingerprint);
        let x = parse_x509(&der).unwrap();
        assert_eq!(common_name(&x).unwrap(), "web01");
        assert!(!x.is_ca());
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty() && !eku.any);

        let server = ca.issue_server(&["otp1.example".into(), "10.0.0.5".into()]).unwrap();
        let der = CertificateDer::from_pem_slice(server.cert_pem.as_bytes()).unwrap();
        let x = parse_x509(&der).unwrap();
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && eku.other.is_empty() && !eku.any);
        let san = x
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(s) => Some(format!("{:?}", s.general_names)),
                _ => None,
            })
            .unwrap();
        assert!(san.contains("DNSName(\"otp1.example\")") && san.contains("IPAddress([10, 0, 0, 5])"), "{san}");
        assert_ne!(client.fingerprint, server.fingerprint);
    }

    #[test]
    fn host_names_are_validated() {
        let ca = Ca::generate().unwrap();
        for good in ["web01", "a", "Web-01.example_x", &"x".repeat(64)] {
            ca.issue_client(good).unwrap();
        }
        for bad in ["", "-web", ".web", "web 01", "web/01", "wéb", "web\n01", &"x".repeat(65), "a:b"] {
            let e = ca.issue_client(bad).unwrap_err();
            assert!(matches!(e, PkiError::HostName(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("A-Z a-z 0-9"), "{e}");
        }
        assert!(matches!(ca.issue_server(&[]), Err(PkiError::NoServerNames)));
        assert!(matches!(ca.issue_server(&["bad name".into()]), Err(PkiError::ServerName(_))));
        assert!(server_name("otp1.example").is_ok());
        assert!(server_name("[::1]").is_ok());
        assert!(server_name("bad name").is_err());
    }

    /// A renewal: the key is made by the host, the server issues for the name it gives (not the request's), and the
    /// new bundle works where the old one did.
    #[tokio::test]
    async fn a_csr_is_issued_for_the_recorded_name_and_the_hosts_own_key() {
        let ca = Ca::generate().unwrap();
        let now = now_utc().unix_timestamp();
        let (key_pem, csr) = new_key_and_csr("someone-else").unwrap();
        let signed = ca.issue_for_csr("web01", &csr, now, 86_400).unwrap();
        assert_eq!(signed.not_after, now + 86_400);
        let bundle = Bundle {
            name: "web01".into(),
            ca_pem: ca.cert_pem(),
            cert_pem: signed.cert_pem,
            key_pem: key_pem.to_string(),
        };
        let parsed = Bundle::parse_at(&bundle.to_text(), now).unwrap();
        assert_eq!(parsed.name, "web01", "the request's subject is ignored");
        assert_eq!(parsed.fingerprint().unwrap(), signed.fingerprint);
        assert_eq!(parsed.validity().unwrap(), (now - 3600, now + 86_400));
        assert_eq!(parsed.renew_at().unwrap(), now - 3600 + (86_400 + 3600) * 2 / 3);
        let out = handshake(server_for(&ca, &["otp1.example"]), client_config(&parsed).unwrap(), "otp1.example").await;
        assert_eq!(out.server, Ok(Some(signed.fingerprint)));
        // A request whose signature does not hold, or not a request at all.
        let b64: String = csr.lines().filter(|l| !l.starts_with("-----")).collect();
        let mut der = data_encoding::BASE64.decode(b64.as_bytes()).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(ca.issue_for_csr("web01", &tampered, now, 86_400), Err(PkiError::Csr(_))));
        assert!(matches!(ca.issue_for_csr("web01", "junk", now, 86_400), Err(PkiError::Csr(_))));
        assert!(matches!(ca.issue_for_csr("bad name", &csr, now, 86_400), Err(PkiError::HostName(_))));
    }

    /// An expired bundle says so (and what to do); the server, whose clock says it expired, refuses it at the
    /// handshake.
    #[tokio::test]
    async fn an_expired_certificate_is_named_as_such_and_refused_at_the_handshake() {
        let ca = Ca::generate().unwrap();
        let now = now_utc().unix_timestamp();
        let (bundle, issued) = issue_bundle_at(&ca, &ca.cert_pem(), "web01", now - 2 * 86_400, 86_400).unwrap();
        let e = Bundle::parse_at(&bundle.to_text(), now).unwrap_err();
        assert!(matches!(e, PkiError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("otpctl host add web01 -o FILE"), "{e}");
        assert!(Bundle::parse_at(&bundle.to_text(), now - 86_400).is_ok());
        // The same certificate, checked by a server whose clock is a day later than the system's.
        let (fresh, _) = issue_bundle_at(&ca, &ca.cert_pem(), "web02", now, 86_400).unwrap();
        struct Later(i64);
        impl crate::sys::clock::Clock for Later {
            fn now(&self) -> i64 {
                self.0
            }
        }
        let later = TlsClock::new(Arc::new(Later(now + 2 * 86_400)));
        let server = ca.issue_server_at(&["otp1.example".into()], now).unwrap();
        let config = server_config_with(&ca.cert_pem(), &server, &later).unwrap();
        let out = handshake(config, client_config(&fresh).unwrap(), "otp1.example").await;
        let e = out.server.unwrap_err();
        assert!(e.contains("expired"), "{e}");
        drop(issued);
    }

    /// During a CA rotation a bundle carries both CAs; a server trusting both accepts hosts of either.
    #[tokio::test]
    async fn a_bundle_and_a_server_may_trust_several_cas() {
        let (old, new) = (Ca::generate().unwrap(), Ca::generate().unwrap());
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        let now = now_utc().unix_timestamp();
        let (bundle, issued) = issue_bundle_at(&new, &both, "web01", now, 86_400).unwrap();
        let parsed = Bundle::parse_at(&bundle.to_text(), now).unwrap();
        assert_eq!(parsed.ca_pem, both);
        let server = old.issue_server(&["otp1.example".into()]).unwrap();
        let config = server_config_with(&both, &server, &TlsClock::system()).unwrap();
        let out = handshake(config, client_config(&parsed).unwrap(), "otp1.example").await;
        assert_eq!((out.client, out.server), (Ok(()), Ok(Some(issued.fingerprint))));
        let (single, _) = bundle_for(&old, "web02");
        let out = handshake(
            server_config_with(&both, &server, &TlsClock::system()).unwrap(),
            client_config(&single).unwrap(),
            "otp1.example",
        )
        .await;
        assert!(out.server.is_ok());
    }

    #[test]
    fn a_bundle_is_written_whole_with_mode_0600() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.bundle");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "new text").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new text");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        let e = write_atomically(&dir.path().join("missing/host.bundle"), "x").unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
    }

    #[test]
    fn bundle_round_trip() {
        let ca = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "web01");
        let text = bundle.to_text();
        assert!(text.starts_with("# otpd host bundle for web01\n"), "{text}");
        let parsed = Bundle::parse(&text).unwrap();
        assert_eq!(parsed.name, "web01");
        assert_eq!(parsed.ca_pem, ca.cert_pem());
        assert_eq!(parsed.cert_pem, bundle.cert_pem);
        assert_eq!(Bundle::parse(&parsed.to_text()).unwrap().to_text(), parsed.to_text());
        client_config(&parsed).unwrap();
        // Debug output never shows key material.
        assert!(!format!("{parsed:?}").contains("PRIVATE"));
        assert!(!format!("{ca:?}").contains("PRIVATE"));
    }

    #[test]
    fn bad_bundles_are_refused_with_a_reason() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let (good, _) = bundle_for(&ca, "web01");
        let (web02, _) = bundle_for(&ca, "web02");
        let foreign = other.issue_client("web01").unwrap();
        let server = ca.issue_server(&["otp1.example".into()]).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no PKCS#8 private key"),
            ("hello\n".into(), "no PKCS#8 private key"),
            (format!("{}{}", good.ca_pem, good.key_pem), "found 1 certificate"),
            (format!("{}{}{}{}", good.ca_pem, good.cert_pem, good.cert_pem, good.key_pem), "not a CA certificate"),
            (format!("{}{}{}{}", good.ca_pem, good.cert_pem, good.key_pem, good.key_pem), "more than one private key"),
            (format!("{}{}{}", good.cert_pem, good.ca_pem, good.key_pem), "not a CA certificate"),
            (format!("{}{}{}", good.ca_pem, good.cert_pem, web02.key_pem), "does not belong"),
            (
                format!("{}{}{}", good.ca_pem, foreign.cert_pem, foreign.key_pem),
                "does not verify against this bundle's CA",
            ),
            (
                format!("{}{}{}", good.ca_pem, server.cert_pem, server.key_pem),
                "does not verify against this bundle's CA",
            ),
            (
                format!("{}{}{}", good.ca_pem, good.cert_pem, good.key_pem.replace("-----END PRIVATE KEY-----\n", "")),
                "malformed PEM",
            ),
            (
                format!(
                    "{}{}-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
                    good.ca_pem, good.cert_pem
                ),
                "malformed PEM",
            ),
        ];
        for (text, want) in cases {
            let e = Bundle::parse(&text).unwrap_err();
            assert!(matches!(e, PkiError::Bundle(_)), "{e}");
            assert!(e.to_string().contains(want), "want {want:?}, got {e}");
            assert!(!e.to_string().contains("PRIVATE KEY-----"), "{e}");
        }
    }

    #[test]
    fn bundle_file_permissions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let (bundle, _) = bundle_for(&ca, "web01");
        let path = dir.path().join("host.bundle");
        std::fs::write(&path, bundle.to_text()).unwrap();

        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Bundle::load(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains("chmod 600"), "{e}");
        }

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Bundle::load(&path).unwrap().name, "web01");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Bundle::load(&path).unwrap().name, "web01");
        // Mode 0600 but another user's file (the suite runs as root, so it can give it away).
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = Bundle::load(&path).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534") && e.contains("chown"), "{e}");
        std::os::unix::fs::chown(&path, Some(nix::unistd::geteuid().as_raw()), None).unwrap();
        assert_eq!(Bundle::load(&path).unwrap().name, "web01");

        let link = dir.path().join("link.bundle");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = Bundle::load(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let e = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("regular file") || e.contains("mode"), "{e}");

        let missing = dir.path().join("missing");
        assert!(Bundle::load(&missing).unwrap_err().to_string().contains("cannot open"));
    }
}
