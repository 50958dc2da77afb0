//! The fleet's wire, both ends: a framed TLS stream ([`Link`]), and the
//! blocking client of remote otpctl ([`admin_call`]).
use crate::fleet::pki;
use common::codec::{encode, take_frame, FrameError, MAX_ADMIN_RESPONSE};
use common::proto::{AdminRequest, AdminResponse, LinkHello, LinkReply, PROTOCOL_VERSION};
use serde::{de::DeserializeOwned, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes read at once from the TLS stream into a frame.
const READ_CHUNK: usize = 1024;
/// An empty frame buffer larger than this is given back.
const KEEP_CAPACITY: usize = 4096;

/// A server closes an agent link idle this long; the agent knows it, so
/// a link closed sooner means the server went away (it reconnects).
pub const LINK_IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// A framed TLS stream (either side).
pub struct Link<S> {
    stream: S,
    pending: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Link<S> {
    pub fn new(stream: S) -> Link<S> {
        Link { stream, pending: Vec::new() }
    }

    /// One frame of at most `max` bytes: it must start within `wait` and
    /// end within `io_timeout` of its start.
    pub async fn read<T: DeserializeOwned>(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
        max: usize,
    ) -> Result<T, FrameError> {
        let first_byte_by = Instant::now() + wait;
        let mut frame_by = (!self.pending.is_empty()).then(|| Instant::now() + io_timeout);
        loop {
            if let Some(msg) = take_frame(&mut self.pending, max) {
                // An idle link keeps no room for the largest frame it saw.
                if self.pending.is_empty() && self.pending.capacity() > KEEP_CAPACITY {
                    self.pending = Vec::new();
                }
                return msg;
            }
            // Small: this buffer is part of every link's task while it
            // waits (10,000 idle links, docs/BENCHMARKS.md "Fleet scale"),
            // and TLS has the bytes in its own buffer already.
            let mut buf = [0u8; READ_CHUNK];
            let deadline = frame_by.unwrap_or(first_byte_by);
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut buf))
                .await
                .map_err(|_| FrameError::TimedOut)??;
            if n == 0 {
                return Err(if self.pending.is_empty() { FrameError::Closed } else { FrameError::Truncated });
            }
            frame_by.get_or_insert_with(|| Instant::now() + io_timeout);
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    pub async fn write_bytes(&mut self, frame: &[u8], io_timeout: Duration) -> Result<(), FrameError> {
        let io = async {
            self.stream.write_all(frame).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(io_timeout, io).await.map_err(|_| FrameError::TimedOut)?.map_err(FrameError::from)
    }

    pub async fn write<T: Serialize>(&mut self, msg: &T, io_timeout: Duration) -> Result<(), FrameError> {
        self.write_bytes(&encode(msg)?, io_timeout).await
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Whether the peer has closed the stream, looked at without waiting
    /// (bytes that did arrive are kept for the next read).
    pub async fn closed_now(&mut self) -> bool {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::ZERO, self.stream.read(&mut buf)).await {
            Err(_) => false,
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&buf[..n]);
                false
            }
        }
    }
}

type AdminTls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// otpctl --server: one admin request over a blocking TLS connection; then
/// the credentials renew themselves if due ([`renew_admin`]): the answer,
/// and what the renewal did, to tell the administrator.
pub fn admin_call(
    server: &str,
    bundle_path: &std::path::Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<(AdminResponse, Option<String>), String> {
    // The daemon's clock (the test suite's shifted clock in debug builds).
    let clock = pki::TlsClock::new(std::sync::Arc::from(crate::sys::clock::configured()));
    let bundle = pki::Bundle::load_at(bundle_path, clock.now()).map_err(|e| e.to_string())?;
    let config = pki::client_config_with(&bundle, &clock).map_err(|e| e.to_string())?;
    let (host, port) =
        common::config::split_host_port(server).ok_or_else(|| format!("--server {server:?}: use host:port"))?;
    let name = pki::server_name(host).map_err(|e| e.to_string())?;
    let tcp = connect_any(host, port, timeout).map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let talk = |tls: &mut AdminTls| {
        common::codec::write_frame(tls, &LinkHello::Admin { protocol: PROTOCOL_VERSION })?;
        match common::codec::read_frame::<LinkReply, _>(tls)? {
            LinkReply::Ready { .. } => {}
            LinkReply::Refused { reason } => return Ok(Err(reason)),
        }
        Ok::<_, FrameError>(Ok(ask(tls, req)?))
    };
    let resp = match talk(&mut tls) {
        Ok(Ok(resp)) => resp,
        Ok(Err(reason)) => return Err(format!("{server} refused these credentials: {reason}")),
        Err(e) => return Err(format!("talking to {server} failed: {e} (are these admin credentials of this fleet?)")),
    };
    let note = match resp {
        AdminResponse::Error { kind: common::proto::AdminErrorKind::PermissionDenied, .. } => None,
        _ => renew_admin(&mut tls, &bundle, bundle_path, &clock),
    };
    Ok((resp, note))
}

fn ask(tls: &mut AdminTls, req: &AdminRequest) -> Result<AdminResponse, FrameError> {
    common::codec::write_frame(tls, req)?;
    common::codec::read_frame_limited::<AdminResponse, _>(tls, MAX_ADMIN_RESPONSE)
}

/// Admin credentials renew themselves when used: once two thirds of their
/// life passed, or at once when the server says the fleet's CAs changed (a
/// rotation). A new key made here, the certificate asked over this link,
/// the bundle written over the old one atomically. What happened, if
/// anything did.
fn renew_admin(
    tls: &mut AdminTls,
    bundle: &pki::Bundle,
    path: &std::path::Path,
    clock: &pki::TlsClock,
) -> Option<String> {
    let now = clock.now();
    let due = bundle.renew_at().is_ok_and(|at| now >= at);
    let cas = bundle.ca_fingerprints().ok()?;
    let why = match ask(tls, &AdminRequest::CaCheck { check_cas: cas }) {
        Ok(AdminResponse::CaCheck { renew: Some(why) }) => why,
        // Current, or an older server that does not know the question.
        _ if !due => return None,
        _ => "two thirds of their life passed".into(),
    };
    let (_, until) = bundle.validity().ok()?;
    let failed = |e: String| {
        Some(format!(
            "renewing these admin credentials failed ({why}): {e}; they stay valid until {}",
            pki::rfc3339(until)
        ))
    };
    let (key_pem, csr) = match pki::new_key_and_csr(&bundle.name) {
        Ok(k) => k,
        Err(e) => return failed(e.to_string()),
    };
    let (cert_pem, ca_pem) = match ask(tls, &AdminRequest::Renew { renew_csr: csr }) {
        Ok(AdminResponse::Renewed { cert_pem, ca_pem, .. }) => (cert_pem, ca_pem),
        Ok(AdminResponse::Error { message, .. }) => return failed(format!("the server refused: {message}")),
        Ok(other) => return failed(format!("unexpected answer {other:?}")),
        Err(e) => return failed(e.to_string()),
    };
    let (new, text) = match pki::renewed_bundle(bundle, &key_pem, cert_pem, ca_pem, now) {
        Ok(b) => b,
        Err(e) => return failed(e.to_string()),
    };
    // The server keeps accepting the current certificate until the new one
    // is used (and a few minutes more), so an unwritable file locks no one out.
    if let Err(e) = pki::write_atomically(path, &text) {
        return failed(format!("the new certificate was issued but not written: {e}"));
    }
    let until = new.validity().map(|(_, u)| pki::rfc3339(u)).unwrap_or_default();
    Some(format!("admin credentials {} renewed ({why}): valid until {until}, written to {}", new.name, path.display()))
}

/// Connects to the first address of `host` that answers.
pub fn connect_any(host: &str, port: u16, timeout: Duration) -> std::io::Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in (host, port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}
