//! The console's TLS identity: the configured certificate and key, or a
//! self-signed pair made once in `[web] state_dir` and reused afterwards,
//! so the fingerprint an admin checked in the browser stays the same.
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CERT_FILE: &str = "certificate.pem";
pub const KEY_FILE: &str = "key.pem";
/// Read by `otpctl status` to print the fingerprint an admin compares
/// with the browser's.
pub const FINGERPRINT_FILE: &str = "certificate.sha256";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem { path: path.display().to_string(), message: e.to_string() }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.display().to_string(), source }
}

pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf certificate, `AB:CD:…`.
    pub fingerprint: String,
    /// Made now (first start) rather than read.
    pub created: bool,
}

/// SHA-256 of a DER certificate as browsers and `openssl x509 -fingerprint
/// -sha256` show it: upper-case hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads a configured certificate chain and key (PEM).
pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_error(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(cert))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Pem { path: cert.display().to_string(), message: "no certificate in the file".into() });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error(key))?;
    Ok(Identity { chain, key, fingerprint, created: false })
}

/// The self-signed pair in `state_dir`, made now if it is not there yet.
pub fn self_signed(state_dir: &Path, names: &[String]) -> Result<Identity, TlsError> {
    let cert_path = state_dir.join(CERT_FILE);
    let key_path = state_dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        warn_if_key_readable(&key_path);
        return load(&cert_path, &key_path);
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io_error(state_dir))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "otpweb");
    let key_pair = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key_pair)?;
    // The key first: a certificate without its key is never left behind.
    write_atomically(&key_path, key_pair.serialize_pem().as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644)?;
    let mut identity = load(&cert_path, &key_path)?;
    identity.created = true;
    Ok(identity)
}

fn warn_if_key_readable(key: &Path) {
    if let Ok(meta) = std::fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!("{}: the private key is readable by others; chmod 600 it", key.display());
        }
    }
}

/// Writes a new file beside `path` with `mode` and renames it into place.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_error(&tmp))?;
    file.write_all(content).and_then(|()| file.sync_all()).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// Writes the fingerprint to `state_dir/certificate.sha256` (one line).
pub fn publish_fingerprint(state_dir: &Path, fingerprint: &str) -> Result<(), TlsError> {
    write_atomically(&state_dir.join(FINGERPRINT_FILE), format!("{fingerprint}\n").as_bytes(), 0o644)
}

/// The names a self-signed certificate is made for: loopback, this host's
/// name, and the hosts of the listen addresses and the configured origin.
pub fn certificate_names(listen: &[String], origin: Option<&str>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_string());
    }
    for addr in listen {
        if let Some((host, _)) = addr.rsplit_once(':') {
            names.push(host.trim_start_matches('[').trim_end_matches(']').to_string());
        }
    }
    if let Some(host) = origin.and_then(|o| o.strip_prefix("https://")) {
        let host = if host.starts_with('[') {
            host.split_once(']').map(|(h, _)| h.trim_start_matches('[')).unwrap_or(host)
        } else {
            host.split(':').next().unwrap_or(host)
        };
        names.push(host.to_string());
    }
    let mut seen = std::collections::BTreeSet::new();
    // A name a certificate cannot carry (not plain ASCII) is left out rather than fail the start.
    let fits = |n: &str| n.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:_*".contains(&b));
    names.retain(|n| !n.is_empty() && fits(n) && n != "0.0.0.0" && n != "::" && seen.insert(n.clone()));
    names
}

/// rustls with the ring provider only; HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(identity: Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let state = dir.path().join("state");
        let names = certificate_names(&["127.0.0.1:8443".into()], Some("https://otp.example.org:8443"));
        assert!(names.contains(&"otp.example.org".to_string()) && names.contains(&"localhost".to_string()));
        let first = self_signed(&state, &names).unwrap_or_else(|e| panic!("{e}"));
        assert!(first.created);
        let mode = |p: &str| std::fs::metadata(state.join(p)).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode(KEY_FILE), Some(0o600), "the key is for otpweb alone");
        assert_eq!(std::fs::metadata(&state).map(|m| m.permissions().mode() & 0o777).ok(), Some(0o700));
        let second = self_signed(&state, &names).unwrap_or_else(|e| panic!("{e}"));
        assert!(!second.created);
        assert_eq!(first.fingerprint, second.fingerprint, "the same certificate at the next start");
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        assert!(first.fingerprint.split(':').all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())));
        publish_fingerprint(&state, &first.fingerprint).unwrap_or_else(|e| panic!("{e}"));
        let written = std::fs::read_to_string(state.join(FINGERPRINT_FILE)).unwrap_or_default();
        assert_eq!(written.trim(), first.fingerprint);
        assert!(server_config(second).is_ok());
    }

    #[test]
    fn fingerprint_is_colon_separated_upper_hex() {
        // SHA-256 of the empty string.
        assert!(fingerprint(b"").starts_with("E3:B0:C4:42:98:FC:1C:14"));
    }
}
