//! The client side of otpd's web socket: one connection per request, one
//! [`WebRequest`] frame out, one [`WebResponse`] frame back.
use common::codec::{self, FrameError};
use common::web::{WebRequest, WebResponse};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// otpd's slowest answer is a login round (a password through PAM with its
/// fail delay, a recovery code's hash; otpd gives a round 30 s) or a large
/// audit page: within this.
pub const TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum OtpdError {
    #[error("cannot connect to otpd at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("otpd did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("talking to otpd: {0}")]
    Frame(#[from] FrameError),
}

#[derive(Debug, Clone)]
pub struct Otpd {
    socket: PathBuf,
    timeout: Duration,
}

impl Otpd {
    pub fn new(socket: PathBuf) -> Otpd {
        Otpd { socket, timeout: TIMEOUT }
    }

    /// Sends one request and returns otpd's answer.
    pub async fn call(&self, request: &WebRequest) -> Result<WebResponse, OtpdError> {
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| OtpdError::TimedOut(self.timeout))?
    }

    async fn exchange(&self, request: &WebRequest) -> Result<WebResponse, OtpdError> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| OtpdError::Connect { path: self.socket.display().to_string(), source })?;
        let frame = codec::encode(request)?;
        stream.write_all(&frame).await.map_err(FrameError::from)?;
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FrameError::Closed,
            _ => FrameError::from(e),
        })?;
        let len = codec::body_len_limited(header, codec::MAX_ADMIN_RESPONSE)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.map_err(FrameError::from)?;
        Ok(codec::decode_body(&body)?)
    }
}
