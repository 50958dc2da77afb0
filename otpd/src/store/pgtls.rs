//! TLS to PostgreSQL, through rustls with the `ring` provider (no OpenSSL,
//! no aws-lc), for both clients (the blocking `postgres` of the workers and
//! the async `tokio-postgres` of [`crate::store::pgfast`]).
//!
//! tokio-postgres knows only `sslmode` disable/prefer/require and none of
//! libpq's certificate options, so the URL's `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` are read (and taken out) here:
//!
//! - `verify-full`: TLS on every connection, the server's certificate
//!   issued by a CA of `sslrootcert` *and* naming the host of the URL;
//!   `verify-ca`: issued by such a CA, any name (the CA must then issue
//!   certificates to database servers only).
//! - `disable`: no TLS, said on purpose (a private network, a tunnel).
//! - No `sslmode`: no TLS to a Unix socket or loopback; a network host is
//!   refused.
//! - `allow`, `prefer`, `require` to a TCP host: refused. `prefer` falls
//!   back to clear text whenever someone on the path says "no TLS", and
//!   `require` checks no certificate, so whoever is on the path answers in
//!   the database's place: that is control of every decision.
//! - A Unix socket never speaks TLS (as in libpq, `sslmode` does not apply
//!   to it); a URL that needs TLS may not mix sockets and TCP hosts.
//! - `sslcert` + `sslkey`: a client certificate (PEM chain, PEM key), for
//!   `cert` authentication in pg_hba.conf.
//!
//! The files are read once, at start: the CA file and the certificate must
//! belong to root (or otpd's user) and be writable by nobody else, the key
//! must also be readable by nobody else, and no other user may be able to
//! swap them in their directory ([`crate::sys::trust::check_dir`]).
//!
//! With TLS the connection offers SCRAM channel binding
//! (`tls-server-end-point`): with `scram-sha-256` a man in the middle who
//! knows the password still cannot log in for otpd. `channel_binding=require`
//! in the URL makes it mandatory (no `md5`, `password` or `cert` login then).
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// Certificates and keys are small; anything much bigger is not one.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is not a PostgreSQL sslmode: use verify-full (with sslrootcert=FILE) or \
                     disable"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS options of a URL, as written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub mode: Option<SslMode>,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// libpq options otpd does not support, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "sslpassword",
        "otpd reads no encrypted key: decrypt it (`openssl pkey -in KEY -out KEY.plain`) and keep it mode 0600",
    ),
    ("sslcrl", "otpd checks no revocation list: have the database's certificate replaced instead"),
    ("sslcrldir", "otpd checks no revocation list: have the database's certificate replaced instead"),
    ("requiressl", "use sslmode=verify-full with sslrootcert=FILE"),
];

/// Splits `url` into the URL tokio-postgres parses (without the options
/// above) and those options. Only the `postgresql://` form: otpd's
/// `database` setting takes nothing else.
pub fn split_url(url: &str) -> Result<(String, TlsOptions), String> {
    let rest = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
        .ok_or("the database must be a postgresql:// URL")?;
    // Where tokio-postgres finds the parameters: the first '?' after the
    // credentials (everything up to the first '@').
    let after_credentials = rest.find('@').map_or(0, |at| at + 1);
    let Some(q) = rest[after_credentials..].find('?').map(|q| url.len() - rest.len() + after_credentials + q) else {
        return Ok((url.to_string(), TlsOptions::default()));
    };
    let (head, query) = (&url[..q], &url[q + 1..]);
    let mut options = TlsOptions::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut s = query;
    while !s.is_empty() {
        // As tokio-postgres reads them: a key up to '=', a value up to '&'.
        let Some(eq) = s.find('=') else {
            kept.push(s);
            break;
        };
        let end = s[eq + 1..].find('&').map_or(s.len(), |a| eq + 1 + a);
        let (pair, key, value) = (&s[..end], &s[..eq], &s[eq + 1..end]);
        s = s.get(end + 1..).unwrap_or("");
        let key = decode(key)?;
        if let Some((_, fix)) = UNSUPPORTED.iter().find(|(k, _)| *k == key) {
            return Err(format!("the URL option {key} is not supported: {fix}"));
        }
        let slot = match key.as_str() {
            "sslmode" => {
                let mode = SslMode::parse(&decode(value)?)?;
                if options.mode.replace(mode).is_some() {
                    return Err("sslmode is given twice in the URL: give it once".into());
                }
                continue;
            }
            "sslrootcert" => &mut options.rootcert,
            "sslcert" => &mut options.cert,
            "sslkey" => &mut options.key,
            _ => {
                kept.push(pair);
                continue;
            }
        };
        let path = PathBuf::from(decode(value)?);
        if !path.is_absolute() {
            return Err(format!("{key}={} must be an absolute path", path.display()));
        }
        if slot.replace(path).is_some() {
            return Err(format!("{key} is given twice in the URL: give it once"));
        }
    }
    let url = if kept.is_empty() { head.to_string() } else { format!("{head}?{}", kept.join("&")) };
    Ok((url, options))
}

/// Percent-decoding, as tokio-postgres does it (no '+' for a space).
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// Whether a connection to `host` (a name or an address of the URL) stays
/// on this machine.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What connecting takes, decided from the URL alone (no file read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No TLS: a Unix socket, loopback, or `sslmode=disable`.
    Plain,
    Tls {
        verify_name: bool,
        rootcert: PathBuf,
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// The rules of the module's header, for the hosts of `config`.
pub fn plan(config: &tokio_postgres::Config, options: &TlsOptions) -> Result<Plan, String> {
    use tokio_postgres::config::Host;
    let tcp: Vec<String> = config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) => Some(name.clone()),
            Host::Unix(_) => None,
        })
        .chain(config.get_hostaddrs().iter().map(|a| a.to_string()))
        .collect();
    let sockets = config.get_hosts().iter().filter(|h| matches!(h, Host::Unix(_))).count();
    let remote = tcp.iter().find(|h| !is_loopback(h));
    let fix = "use sslmode=verify-full&sslrootcert=/etc/otpd/postgresql-ca.crt (the CA certificate, PEM, that \
               issued the database's certificate), or sslmode=disable to accept an unencrypted connection on a \
               trusted network or through a tunnel";
    // TLS that checks nothing is refused first: whatever else the URL says.
    if let (Some(mode @ (SslMode::Allow | SslMode::Prefer | SslMode::Require)), false) = (options.mode, tcp.is_empty())
    {
        let why = if mode == SslMode::Require {
            "encrypts but checks no certificate, so whoever is on the path can answer in the database's place"
        } else {
            "falls back to clear text whenever someone on the path says the server has no TLS"
        };
        return Err(format!("sslmode={} {why}, and the database's answers decide every login: {fix}", mode.name()));
    }
    let verifying = matches!(options.mode, Some(SslMode::VerifyCa | SslMode::VerifyFull));
    if !verifying {
        if let Some(given) = [("sslrootcert", &options.rootcert), ("sslcert", &options.cert), ("sslkey", &options.key)]
            .iter()
            .find_map(|(k, v)| v.as_ref().map(|_| k))
        {
            return Err(format!(
                "{given} is given but sslmode is {}: add sslmode=verify-full to the URL to use TLS",
                options.mode.map_or("not", |m| m.name())
            ));
        }
    }
    match options.mode {
        Some(SslMode::Disable) => Ok(Plan::Plain),
        None => match remote {
            Some(host) => Err(format!(
                "{host} is reached over the network and the URL says nothing about TLS: whoever is on the path \
                 would read the traffic and could change the answers, which decide every login. {fix}"
            )),
            None => Ok(Plan::Plain),
        },
        // Unix sockets only (TCP hosts were refused above).
        Some(SslMode::Allow | SslMode::Prefer | SslMode::Require) => Ok(Plan::Plain),
        Some(mode @ (SslMode::VerifyCa | SslMode::VerifyFull)) => {
            if tcp.is_empty() {
                // libpq: no TLS over a Unix socket, whatever sslmode says.
                return Ok(Plan::Plain);
            }
            if sockets > 0 {
                return Err(format!(
                    "sslmode={} applies to TCP hosts; a Unix socket never speaks TLS: list either sockets or \
                     network hosts in the URL, not both",
                    mode.name()
                ));
            }
            let rootcert = options.rootcert.clone().ok_or_else(|| {
                format!(
                    "sslmode={} needs sslrootcert=FILE in the URL: the CA certificate (PEM) that issued the \
                     database's certificate (otpd has no default such as ~/.postgresql/root.crt)",
                    mode.name()
                )
            })?;
            let client = match (&options.cert, &options.key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                (Some(_), None) => return Err("sslcert is given without sslkey: give both, or neither".into()),
                (None, Some(_)) => return Err("sslkey is given without sslcert: give both, or neither".into()),
            };
            Ok(Plan::Tls { verify_name: mode == SslMode::VerifyFull, rootcert, client })
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a file otpd trusts for TLS: a regular file of root or otpd's user,
/// writable by nobody else, and with `secret` readable by nobody else; in a
/// directory nobody else can write to.
fn read_trusted(option: &str, path: &Path, secret: bool) -> Result<Vec<u8>, String> {
    let shown = format!("{option}={}", path.display());
    if let Some(dir) = path.parent() {
        crate::sys::trust::check_dir(dir, &format!("{option} file's")).map_err(|e| format!("{shown}: {e}"))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{shown}: cannot open it ({e}): give the path of an existing PEM file"))?;
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(format!(
            "{shown}: owned by uid {}, not by root or otpd's user (uid {me}): its owner could change what otpd \
             trusts. Check it, then `chown root {}`",
            meta.uid(),
            path.display()
        ));
    }
    let mode = meta.mode() & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(format!(
            "{shown}: mode {mode:04o} lets others read this private key: run `chmod 600 {}` (and have a new \
             certificate issued if others may have read it)",
            path.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{shown}: mode {mode:04o} lets others change what otpd trusts: run `chmod go-w {}`",
            path.display()
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{shown}: {} bytes is too big for certificates or a key", meta.len()));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| format!("{shown}: {e}"))?;
    Ok(bytes)
}

/// Reads the files of `plan` and makes the connector.
pub fn load(plan: &Plan) -> Result<MakeTls, String> {
    let Plan::Tls { verify_name, rootcert, client } = plan else { return Ok(MakeTls { tls: None }) };
    let pem = read_trusted("sslrootcert", rootcert, false)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert={}: unreadable PEM ({e})", rootcert.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert={}: not a usable CA certificate ({e})", rootcert.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert={}: no certificate in it; put the CA certificate (PEM) that issued the database's there",
            rootcert.display()
        ));
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("sslrootcert={}: {e}", rootcert.display()))?;
    let verifier: Arc<dyn ServerCertVerifier> = if *verify_name { webpki } else { Arc::new(AnyName(webpki)) };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let pem = read_trusted("sslcert", cert, false)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslcert={}: unreadable PEM ({e})", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("sslcert={}: no certificate in it", cert.display()));
            }
            let key_pem = zeroize::Zeroizing::new(read_trusted("sslkey", key, true)?);
            let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                format!("sslkey={}: no readable private key ({e}); otpd reads unencrypted PEM keys", key.display())
            })?;
            builder.with_client_auth_cert(chain, private).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "sslkey={} is not the key of the certificate in sslcert={}: give the matching pair",
                    key.display(),
                    cert.display()
                ),
                e => format!("sslcert={} / sslkey={}: {e}", cert.display(), key.display()),
            })?
        }
    };
    // PostgreSQL 17 checks the ALPN name when a client sends one; older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    // Every connection verifies the certificate afresh (and its channel
    // binding is that certificate's).
    config.resumption = Resumption::disabled();
    Ok(MakeTls { tls: Some(Arc::new(config)) })
}

/// verify-ca: the chain is checked as for verify-full, the name is not.
/// webpki checks the chain first and the name last, so "not valid for this
/// name" means the chain was good.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The TLS of both PostgreSQL clients: none where the [`Plan`] is plain
/// (tokio-postgres is then told `sslmode=disable` and never asks for it).
#[derive(Clone)]
pub struct MakeTls {
    tls: Option<Arc<ClientConfig>>,
}

impl MakeTls {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let bare = domain.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(domain);
        let name = match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ServerName::IpAddress(ip.into())),
            Err(_) => ServerName::try_from(bare.to_string()).ok(),
        };
        Ok(Connect { tls: self.tls.clone(), name, domain: domain.to_string() })
    }
}

pub struct Connect {
    tls: Option<Arc<ClientConfig>>,
    name: Option<ServerName<'static>>,
    domain: String,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.tls.ok_or_else(|| io::Error::other("TLS to PostgreSQL is not configured"))?;
            let name = self.name.ok_or_else(|| {
                io::Error::other(format!("{:?} is neither a DNS name nor an IP address to check", self.domain))
            })?;
            Ok(TlsStream(tokio_rustls::TlsConnector::from(tls).connect(name, stream).await?))
        })
    }
}

pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn.peer_certificates().and_then(|c| c.first()).and_then(|c| server_end_point(c)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with the
/// hash of its signature algorithm (SHA-256 for MD5 and SHA-1). `None` for
/// algorithms the RFC leaves undefined (then no channel binding is offered).
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    match parsed.signature_algorithm.algorithm.to_id_string().as_str() {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1, sha256WithRSA, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.3.2" => Some(sha2::Sha256::digest(cert).to_vec()),
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(sha2::Sha384::digest(cert).to_vec()),
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(sha2::Sha512::digest(cert).to_vec()),
        _ => None,
    }
}

/// What went wrong with TLS in `e` (a failed connection), said so that an
/// admin knows what to fix; `None` when it is not about TLS.
pub fn explain(e: &tokio_postgres::Error, hosts: &str, rootcert: Option<&Path>, client: bool) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut rustls_error = None;
    let mut plain_text = false;
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            rustls_error = Some(r);
            break;
        }
        if let Some(inner) = s.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                rustls_error = Some(r);
                break;
            }
        }
        plain_text |= s.to_string() == "server does not support TLS";
        source = s.source();
    }
    let roots = rootcert.map(|p| p.display().to_string()).unwrap_or_else(|| "sslrootcert".into());
    if plain_text {
        return Some(format!(
            "the PostgreSQL server at {hosts} does not speak TLS (ssl = off in its postgresql.conf, or \
             something on the path that is not that server): turn on ssl (ssl = on, ssl_cert_file, \
             ssl_key_file) and allow otpd with `hostssl` lines in pg_hba.conf"
        ));
    }
    let mitm = "(or something else is answering in its place)";
    Some(match rustls_error? {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. }) => format!(
            "the certificate of the PostgreSQL server at {hosts} is not issued for that name (it names {}) \
             {mitm}: write a name the certificate names as the host of the URL, or give the server a \
             certificate for {hosts}",
            if presented.is_empty() {
                "no name".into()
            } else {
                presented.iter().map(|p| bare_name(p)).collect::<Vec<_>>().join(", ")
            }
        ),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
            "the certificate of the PostgreSQL server at {hosts} is not issued for that name {mitm}: write a \
             name the certificate names as the host of the URL, or give the server a certificate for {hosts}"
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            format!(
                "the certificate of the PostgreSQL server at {hosts} is not issued by a CA of {roots} {mitm}: \
                 put the CA certificate that issued the server's certificate in {roots}"
            )
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            format!("the certificate of the PostgreSQL server at {hosts} has expired: renew it on the server")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "the certificate of the PostgreSQL server at {hosts} is not valid yet: check the clocks of both machines"
        ),
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) if !client => format!(
            "the PostgreSQL server at {hosts} wants a client certificate: add sslcert=FILE&sslkey=FILE to the URL"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied,
        ) => format!(
            "the PostgreSQL server at {hosts} refused otpd's client certificate (sslcert): it must be issued by a \
             CA of the server's ssl_ca_file, unexpired, and name the database user"
        ),
        other => format!("TLS with the PostgreSQL server at {hosts} failed: {other}"),
    })
}

/// rustls shows a presented name as `DnsName("db.example.org")` or
/// `IpAddress(10.0.0.1)`: the name alone.
fn bare_name(presented: &str) -> &str {
    let inner = ["DnsName(", "IpAddress("]
        .iter()
        .find_map(|p| presented.strip_prefix(p)?.strip_suffix(')'))
        .unwrap_or(presented);
    inner.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> (String, TlsOptions) {
        split_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn the_tls_options_are_taken_out_of_the_url_and_the_rest_is_kept() {
        let (url, o) = opts(
            "postgresql://otp:p%3Fw@db.example.org:5433/otpd?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fotpd%2Fca.crt&sslcert=/etc/otpd/c.crt&sslkey=/etc/otpd/c.key&application_name=otpd",
        );
        assert_eq!(url, "postgresql://otp:p%3Fw@db.example.org:5433/otpd?connect_timeout=3&application_name=otpd");
        assert_eq!(o.mode, Some(SslMode::VerifyFull));
        assert_eq!(o.rootcert.as_deref(), Some(Path::new("/etc/otpd/ca.crt")));
        assert_eq!(o.cert.as_deref(), Some(Path::new("/etc/otpd/c.crt")));
        assert_eq!(o.key.as_deref(), Some(Path::new("/etc/otpd/c.key")));
        // A '?' in the password (before the '@') does not start the parameters.
        let (url, o) = opts("postgres://otp:a?b@127.0.0.1/otpd?sslmode=disable");
        assert_eq!((url.as_str(), o.mode), ("postgres://otp:a?b@127.0.0.1/otpd", Some(SslMode::Disable)));
        let (url, o) = opts("postgresql://otp@%2Frun%2Fpostgresql/otpd");
        assert_eq!((url.as_str(), o), ("postgresql://otp@%2Frun%2Fpostgresql/otpd", TlsOptions::default()));
    }

    #[test]
    fn odd_tls_options_are_refused_with_what_to_do() {
        let err = |url: &str| split_url(url).unwrap_err();
        assert!(err("host=db user=otp sslmode=verify-full").contains("postgresql:// URL"));
        assert!(err("postgresql://db/otpd?sslmode=verify-all").contains("verify-full"));
        assert!(err("postgresql://db/otpd?sslmode=disable&sslmode=verify-full").contains("twice"));
        assert!(err("postgresql://db/otpd?sslrootcert=ca.crt").contains("absolute path"));
        assert!(err("postgresql://db/otpd?sslpassword=x").contains("decrypt"));
        assert!(err("postgresql://db/otpd?sslcrl=/x").contains("revocation"));
    }

    fn plan_of(url: &str) -> Result<Plan, String> {
        let (url, options) = split_url(url)?;
        plan(&url.parse().map_err(|e: tokio_postgres::Error| e.to_string())?, &options)
    }

    #[test]
    fn network_hosts_need_a_verified_certificate_or_an_explicit_disable() {
        let tls = |name: bool| Plan::Tls { verify_name: name, rootcert: "/ca".into(), client: None };
        // Local: clear text unless TLS is asked for.
        assert_eq!(plan_of("postgresql://otp@%2Frun%2Fpostgresql/otpd"), Ok(Plan::Plain));
        assert_eq!(plan_of("postgresql://otp@127.0.0.1/otpd"), Ok(Plan::Plain));
        assert_eq!(plan_of("postgresql://otp@[::1]/otpd"), Ok(Plan::Plain));
        assert_eq!(
            plan_of("postgresql://otp@%2Frun%2Fpostgresql/otpd?sslmode=verify-full&sslrootcert=/ca"),
            Ok(Plan::Plain)
        );
        assert_eq!(plan_of("postgresql://otp@127.0.0.1/otpd?sslmode=verify-full&sslrootcert=/ca"), Ok(tls(true)));
        // Network: verified TLS, or clear text said on purpose.
        assert_eq!(plan_of("postgresql://otp@db.example.org/otpd?sslmode=verify-full&sslrootcert=/ca"), Ok(tls(true)));
        assert_eq!(plan_of("postgresql://otp@db.example.org/otpd?sslmode=verify-ca&sslrootcert=/ca"), Ok(tls(false)));
        assert_eq!(plan_of("postgresql://otp@db.example.org/otpd?sslmode=disable"), Ok(Plan::Plain));
        assert_eq!(
            plan_of("postgresql://otp@db.example.org/otpd?sslmode=verify-full&sslrootcert=/ca&sslcert=/c&sslkey=/k"),
            Ok(Plan::Tls { verify_name: true, rootcert: "/ca".into(), client: Some(("/c".into(), "/k".into())) })
        );
        for (url, says) in [
            ("postgresql://otp@db.example.org/otpd", "sslmode=verify-full"),
            ("postgresql://otp@localhost/otpd?hostaddr=10.1.2.3", "10.1.2.3"),
            ("postgresql://otp@db.example.org/otpd?sslmode=require", "checks no certificate"),
            ("postgresql://otp@localhost/otpd?sslmode=require", "checks no certificate"),
            ("postgresql://otp@db.example.org/otpd?sslmode=require&sslrootcert=/ca", "checks no certificate"),
            ("postgresql://otp@db.example.org/otpd?sslmode=prefer", "clear text"),
            ("postgresql://otp@db.example.org/otpd?sslmode=allow", "clear text"),
            ("postgresql://otp@db.example.org/otpd?sslmode=verify-full", "needs sslrootcert"),
            ("postgresql://otp@db.example.org/otpd?sslmode=verify-full&sslrootcert=/ca&sslcert=/c", "without sslkey"),
            ("postgresql://otp@db.example.org/otpd?sslrootcert=/ca", "add sslmode=verify-full"),
            ("postgresql://otp@127.0.0.1/otpd?sslmode=disable&sslkey=/k", "add sslmode=verify-full"),
            ("postgresql://otp@%2Frun,db.example.org/otpd?sslmode=verify-full&sslrootcert=/ca", "not both"),
        ] {
            let err = plan_of(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"db.example.org\")"), "db.example.org");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("db"), "db");
    }

    #[test]
    fn the_channel_binding_hash_follows_the_signature_algorithm() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()]).unwrap().self_signed(&key).unwrap();
        use sha2::Digest;
        assert_eq!(server_end_point(cert.der()), Some(sha2::Sha384::digest(cert.der()).to_vec()));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(server_end_point(cert.der()), Some(sha2::Sha256::digest(cert.der()).to_vec()));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(server_end_point(cert.der()), None);
    }
}
