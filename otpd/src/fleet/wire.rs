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

/// otpctl --server: one admin request over a blocking TLS connection.
pub fn admin_call(
    server: &str,
    bundle: &std::path::Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<AdminResponse, String> {
    let bundle = pki::Bundle::load(bundle).map_err(|e| e.to_string())?;
    let config = pki::client_config(&bundle).map_err(|e| e.to_string())?;
    let (host, port) =
        common::config::split_host_port(server).ok_or_else(|| format!("--server {server:?}: use host:port"))?;
    let name = pki::server_name(host).map_err(|e| e.to_string())?;
    let tcp = connect_any(host, port, timeout).map_err(|e| format!("cannot connect to {server}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(timeout));
    let _ = tcp.set_write_timeout(Some(timeout));
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let talk = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        common::codec::write_frame(tls, &LinkHello::Admin { protocol: PROTOCOL_VERSION })?;
        match common::codec::read_frame::<LinkReply, _>(tls)? {
            LinkReply::Ready { .. } => {}
            LinkReply::Refused { reason } => return Ok(Err(reason)),
        }
        common::codec::write_frame(tls, req)?;
        Ok::<_, FrameError>(Ok(common::codec::read_frame_limited::<AdminResponse, _>(tls, MAX_ADMIN_RESPONSE)?))
    };
    match talk(&mut tls) {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(reason)) => Err(format!("{server} refused these credentials: {reason}")),
        Err(e) => Err(format!("talking to {server} failed: {e} (are these admin credentials of this fleet?)")),
    }
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
