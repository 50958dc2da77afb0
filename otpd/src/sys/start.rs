//! Starting a daemon (server or agent): its errors, the process's
//! hardening, its sockets, and telling systemd it is ready.
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] crate::core::crypto::KeyError),
    #[error(transparent)]
    Store(#[from] crate::store::model::StoreError),
    #[error("socket {path}: {why}")]
    Socket { path: String, why: String },
    #[error("refusing to start: {0}")]
    Untrusted(#[from] crate::sys::trust::Untrusted),
    #[error("fleet: {0}")]
    Fleet(String),
}

/// Core dumps of a process holding secrets are a leak; so is ptrace by
/// same-uid processes. Both are switched off before any secret is loaded.
pub fn harden_process() {
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: prctl with PR_SET_DUMPABLE takes integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Binds a socket path, replacing a stale socket but never a live daemon's
/// socket or a file that is not a socket.
pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, StartError> {
    let fail = |why: String| StartError::Socket { path: path.display().to_string(), why };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create directory: {e}")))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another otpd is already listening there".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
        }
        Ok(_) => return Err(fail("exists and is not a socket; refusing to replace it".into())),
        Err(_) => {}
    }
    // Bound under a temporary name and renamed into place once it listens
    // with its final mode: a client that sees the path (a login at boot, a
    // test that waits for the file) never meets a socket that is not yet
    // listening (ECONNREFUSED) or not yet open to it (EACCES).
    let tmp = path.with_file_name(format!(".otpd-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let ready = || -> Result<UnixListener, String> {
        let listener = UnixListener::bind(&tmp).map_err(|e| e.to_string())?;
        // A burst of logins (or of junk connections) must not find the accept
        // queue full: connect(2) would then block or fail for real logins.
        // SAFETY: listen(2) on a socket we own; calling it again only resizes the queue.
        unsafe { libc::listen(std::os::unix::io::AsRawFd::as_raw_fd(&listener), 4096) };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        if let Some(gid) = group {
            let _ = nix::unistd::chown(&tmp, None, Some(nix::unistd::Gid::from_raw(gid)));
        }
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
        Ok(listener)
    };
    ready().map_err(|why| {
        let _ = std::fs::remove_file(&tmp);
        fail(why)
    })
}

/// Every PAM connection is a file descriptor; systemd's default soft limit
/// (1024) would make a flood of idle connections lock out real logins long
/// before `max_connections`.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(65536);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// The soft limit on open files now (after [`raise_fd_limit`]).
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// Tells systemd (Type=notify) that the sockets are ready.
pub fn notify_ready() {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = addr.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&addr))
    };
    if let Err(e) = r {
        tracing::warn!("sd_notify failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_socket_path_appears_only_listening_and_with_its_final_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pam.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        // The test itself takes each socket away (unlink, then close): a
        // connect already past the path lookup would meet the closed socket.
        // So the watcher stands still (`idle`) while the test holds it.
        let hold = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, stop, seen) = (path.clone(), stop.clone(), seen.clone());
            let (hold, idle) = (hold.clone(), idle.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if hold.load(Ordering::SeqCst) {
                        idle.store(true, Ordering::SeqCst);
                        while hold.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                            std::thread::yield_now();
                        }
                        idle.store(false, Ordering::SeqCst);
                        continue;
                    }
                    let Ok(m) = std::fs::symlink_metadata(&path) else { continue };
                    if m.permissions().mode() & 0o777 != 0o666 {
                        bad.push(format!("mode {:o}", m.permissions().mode() & 0o777));
                    }
                    match std::os::unix::net::UnixStream::connect(&path) {
                        Ok(_) => {
                            // One connection to this socket is enough. More
                            // would pile up unaccepted until its backlog is
                            // full, and then connect(2) blocks for good: on a
                            // loaded machine this test hung that way.
                            seen.fetch_add(1, Ordering::Relaxed);
                            while !hold.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                                std::thread::yield_now();
                            }
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => bad.push(e.to_string()),
                    }
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                bad
            })
        };
        for _ in 0..300 {
            let before = seen.load(Ordering::Relaxed);
            let listener = bind(&path, 0o666, None).unwrap();
            // The watcher looks at every socket at least once.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while seen.load(Ordering::Relaxed) == before {
                assert!(std::time::Instant::now() < deadline, "the watcher never saw the socket");
                std::thread::yield_now();
            }
            hold.store(true, Ordering::SeqCst);
            while !idle.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            std::fs::remove_file(&path).unwrap();
            drop(listener);
            hold.store(false, Ordering::SeqCst);
            while idle.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let bad = watcher.join().unwrap();
        assert!(bad.is_empty(), "a client met a socket not ready for it: {bad:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no temporary name left behind");
    }
}
