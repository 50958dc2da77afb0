//! Blocking client for the daemon's Unix sockets, with deadlines on connect,
//! read and write. Used by the PAM module (which must not run an async
//! runtime inside sshd or a screen locker) and by `otpctl`.
use crate::codec::{take_frame, write_frame, FrameError};
use serde::{de::DeserializeOwned, Serialize};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

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
    timeout: Duration,
    /// Bytes read but not yet returned as a frame.
    pending: Vec<u8>,
    /// Largest frame accepted from the daemon.
    max_frame: usize,
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
        let stream = connect_bounded(path, timeout).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(shown.clone()),
            std::io::ErrorKind::NotFound => ClientError::Missing(shown.clone()),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => ClientError::Frame(FrameError::TimedOut),
            _ => ClientError::Connect { path: shown.clone(), source: e },
        })?;
        let peer = peer_uid(&stream).map_err(|e| ClientError::Connect { path: shown.clone(), source: e })?;
        if !trusted_uids.contains(&peer) {
            return Err(ClientError::WrongPeer { path: shown, uid: peer });
        }
        // Reads wait in poll(2) with their own deadline; writes are bounded
        // by the send timeout set before connecting.
        Ok(Client { stream, timeout, pending: Vec::new(), max_frame: crate::codec::MAX_FRAME })
    }

    /// Accepts replies up to [`crate::codec::MAX_ADMIN_RESPONSE`] (otpctl).
    pub fn for_admin_responses(mut self) -> Client {
        self.max_frame = crate::codec::MAX_ADMIN_RESPONSE;
        self
    }

    /// An admin client may also send frames up to its reply limit (an
    /// import of many accounts is one request, one transaction).
    pub fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        if self.max_frame == crate::codec::MAX_FRAME {
            return write_frame(&mut self.stream, msg);
        }
        use std::io::Write as _;
        let frame = crate::codec::encode_limited(msg, self.max_frame)?;
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// Waits at most `timeout` for the next frame.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(msg) = take_frame(&mut self.pending, self.max_frame) {
                return msg;
            }
            wait_readable(&self.stream, deadline)?;
            let mut buf = [0u8; 8192];
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Err(if self.pending.is_empty() { FrameError::Closed } else { FrameError::Truncated }),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One request, one response (the admin protocol).
    pub fn call<Q: Serialize, A: DeserializeOwned>(&mut self, req: &Q) -> Result<A, FrameError> {
        self.send(req)?;
        self.recv()
    }
}

/// Waits until `stream` has something to read, or `deadline` passes.
///
/// poll(2) rather than a blocking read(2): a task blocked in read on a Unix
/// stream socket is also woken each time the peer consumes what we sent
/// (the socket becomes writable), which costs a wake-up per message on
/// every login; poll only wakes for what it asked for.
fn wait_readable(stream: &UnixStream, deadline: Instant) -> Result<(), FrameError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FrameError::TimedOut);
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        let mut fds = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut fds, 1, ms) };
        match rc {
            0 => return Err(FrameError::TimedOut),
            n if n > 0 => return Ok(()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
}

/// connect(2) with a deadline: a blocking connect to a Unix socket whose
/// accept queue is full waits until there is room, so the send timeout is
/// set before connecting (Linux bounds that wait by SO_SNDTIMEO).
fn connect_bounded(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned by the UnixStream below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    stream.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    loop {
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
        if rc == 0 {
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
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

#[cfg(test)]
mod tests {
    //! The client's frame reader against the reference decoder: any bytes,
    //! delivered in any chunks, give the same messages and the same error.
    use super::*;
    use crate::codec::decode_stream;
    use crate::proto::ServerMsg;
    use proptest::prelude::*;
    use std::io::Write;

    fn frames() -> impl Strategy<Value = Vec<u8>> {
        let msg = prop_oneof![
            "\\PC{0,40}".prop_map(|text| ServerMsg::Info { text }),
            ("\\PC{0,40}", any::<bool>()).prop_map(|(text, echo)| ServerMsg::Prompt { echo, text }),
            Just(ServerMsg::Ack),
        ];
        let good = msg.prop_map(|m| crate::codec::encode(&m).unwrap_or_default());
        let junk = proptest::collection::vec(any::<u8>(), 0..64);
        proptest::collection::vec(prop_oneof![4 => good, 1 => junk], 0..6).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn chunked_reads_match_the_reference_decoder(bytes in frames(), cuts in proptest::collection::vec(1usize..50, 1..20)) {
            let (mine, theirs) = UnixStream::pair().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut client = Client { stream: mine, timeout: Duration::from_secs(5), pending: Vec::new(), max_frame: crate::codec::MAX_FRAME };
            let writer = {
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    let mut theirs = theirs;
                    let mut at = 0;
                    for cut in cuts.iter().cycle() {
                        if at >= bytes.len() {
                            break;
                        }
                        let end = (at + cut).min(bytes.len());
                        if theirs.write_all(&bytes[at..end]).is_err() {
                            break;
                        }
                        at = end;
                    }
                    // Dropping the socket closes it: the reader sees the end.
                })
            };
            let mut got = Vec::new();
            let end = loop {
                match client.recv::<ServerMsg>() {
                    Ok(m) => got.push(m),
                    Err(e) => break e,
                }
            };
            drop(client);
            let _ = writer.join();
            let (want, want_end) = decode_stream::<ServerMsg>(&bytes);
            prop_assert_eq!(got, want);
            prop_assert_eq!(std::mem::discriminant(&end), std::mem::discriminant(&want_end), "{} vs {}", end, want_end);
        }
    }
}
