//! Blocking client for the daemon's Unix sockets, with deadlines on connect,
//! read and write. Used by the PAM module (which must not run an async
//! runtime inside sshd or a screen locker) and by `otpctl`.
use crate::codec::{read_frame, write_frame, FrameError};
use serde::{de::DeserializeOwned, Serialize};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("socket {0} does not exist (is otpd running?)")]
    Missing(String),
    #[error("{0} is not a socket")]
    NotASocket(String),
    #[error("socket {path} is owned by uid {uid}, not by the daemon's user; refusing to talk to it")]
    WrongOwner { path: String, uid: u32 },
    #[error("the process behind {path} runs as uid {uid}, not as the daemon's user; refusing to talk to it")]
    WrongPeer { path: String, uid: u32 },
    #[error("permission denied on {0}")]
    PermissionDenied(String),
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error(transparent)]
    Frame(#[from] FrameError),
}

pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to `path` and checks, twice, that the daemon is who we expect:
    /// the socket file's owner (`lstat`, never following a symlink) and the
    /// credentials of the process that accepted (`SO_PEERCRED`), which a
    /// user cannot fake by racing a rename between the two.
    pub fn connect(path: &Path, timeout: Duration, trusted_uids: &[u32]) -> Result<Client, ClientError> {
        let shown = path.display().to_string();
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ClientError::Missing(shown)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ClientError::PermissionDenied(shown))
            }
            Err(e) => return Err(ClientError::Connect { path: shown, source: e }),
        };
        if !meta.file_type().is_socket() {
            return Err(ClientError::NotASocket(shown));
        }
        if !trusted_uids.contains(&meta.uid()) {
            return Err(ClientError::WrongOwner { path: shown, uid: meta.uid() });
        }
        // connect(2) on a Unix stream socket does not block on the peer's accept:
        // it fails at once (ECONNREFUSED/EAGAIN) when the backlog is full.
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(shown.clone()),
            std::io::ErrorKind::NotFound => ClientError::Missing(shown.clone()),
            _ => ClientError::Connect { path: shown.clone(), source: e },
        })?;
        let peer = peer_uid(&stream).map_err(|e| ClientError::Connect { path: shown.clone(), source: e })?;
        if !trusted_uids.contains(&peer) {
            return Err(ClientError::WrongPeer { path: shown, uid: peer });
        }
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| ClientError::Connect { path: shown, source: e })?;
        Ok(Client { stream })
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        write_frame(&mut self.stream, msg)
    }

    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        read_frame(&mut self.stream)
    }

    /// One request, one response (the admin protocol).
    pub fn call<Q: Serialize, A: DeserializeOwned>(&mut self, req: &Q) -> Result<A, FrameError> {
        self.send(req)?;
        self.recv()
    }
}

/// uid of the process on the other end of a connected Unix socket.
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}
