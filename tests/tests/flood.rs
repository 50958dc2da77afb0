//! Floods on the PAM socket: a thousand idle and half-sent connections, a
//! non-root user opening hundreds, and a burst of garbage frames must not
//! keep real logins (the built module, real libpam, the module's default
//! 10 s timeout) from completing.
mod support;
use e2e::PAM_SUCCESS;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let target = want.min(lim.rlim_max);
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "setrlimit");
    }
}

/// 1000 connections: odd ones idle, even ones promising a 256-byte frame
/// and sending one byte of it.
fn hogs(fx: &Fixture, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|i| {
            let mut s = UnixStream::connect(fx.pam_socket()).unwrap();
            if i % 2 == 0 {
                s.write_all(&[0, 0, 1, 0, b'{']).unwrap();
            }
            s
        })
        .collect()
}

/// Connections that each send garbage (random bytes, every third with a
/// plausible length prefix) and go away, until `stop`.
fn garbage(fx: &Fixture, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<usize> {
    let sock = fx.pam_socket();
    std::thread::spawn(move || {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut sent = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let Ok(mut s) = UnixStream::connect(&sock) else { continue };
            let len = 4 + (x % 200) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if sent % 3 == 0 {
                bytes[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
            }
            let _ = s.write_all(&bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let _ = s.read(&mut [0u8; 256]);
            sent += 1;
        }
        sent
    })
}

/// `n` logins at once (separate processes); returns (PAM result, seconds).
fn parallel_logins(fx: &Fixture, users: &[(String, String)]) -> Vec<(i32, f64)> {
    let started = Instant::now();
    let children: Vec<_> = users
        .iter()
        .map(|(user, code)| {
            let mut c = fx.pamdrive("otp", user, &[code.as_bytes()]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|mut c| {
            let code = c.wait().unwrap().code().unwrap_or(-1);
            (code, started.elapsed().as_secs_f64())
        })
        .collect()
}

fn enroll_many(fx: &Fixture, prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            let uri = fx.enroll_active(&user);
            let code = fx.code(&uri, 0);
            (user, code)
        })
        .collect()
}

#[test]
fn idle_half_frame_and_garbage_floods_do_not_keep_logins_out() {
    raise_fd_limit(8192);
    // Hogs are not cut off while the logins run: they must get through anyway.
    let fx = Fixture::start("io_timeout = \"60s\"\n");
    let users = enroll_many(&fx, "flood", 8);
    let hogs = hogs(&fx, 1000);

    // A non-root user opens 300 connections: only a handful stay open.
    let script = format!(
        "import socket, time\n\
         conns = [socket.socket(socket.AF_UNIX) for _ in range(300)]\n\
         for c in conns: c.connect('{}')\n\
         time.sleep(1.5)\n\
         closed = 0\n\
         for c in conns:\n\
         \x20   c.settimeout(0.01)\n\
         \x20   try:\n\
         \x20       closed += c.recv(1) == b''\n\
         \x20   except Exception:\n\
         \x20       pass\n\
         print(closed, flush=True)\n\
         time.sleep(30)\n",
        fx.pam_socket().display()
    );
    let mut nobody = Command::new("/usr/bin/python3");
    nobody.arg("-c").arg(script).stdout(Stdio::piped());
    as_uid(&mut nobody, 65534);
    let mut nobody = nobody.spawn().unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(nobody.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let closed: usize = line.trim().parse().unwrap();
    assert!(closed >= 300 - 16, "the daemon kept {} connections of one non-root uid", 300 - closed);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burst = garbage(&fx, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let results = parallel_logins(&fx, &users);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = burst.join().unwrap();
    let _ = nobody.kill();
    let _ = nobody.wait();
    for (i, (code, secs)) in results.iter().enumerate() {
        assert_eq!(*code, PAM_SUCCESS, "login {i} failed during the flood");
        // The module gives up after 10 s; these must finish well before.
        assert!(*secs < 5.0, "login {i} took {secs:.1} s during the flood");
    }
    assert!(sent > 50, "the garbage burst sent only {sent} frames");
    // The hogs are still connected: the logins did not depend on their timeout.
    let mut still_open = 0;
    for mut h in hogs {
        h.set_nonblocking(true).unwrap();
        if matches!(h.read(&mut [0u8; 1]), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            still_open += 1;
        }
    }
    assert!(still_open >= 990, "only {still_open} of 1000 idle connections were still open");
}

#[test]
fn at_max_connections_the_oldest_silent_connection_makes_room() {
    raise_fd_limit(8192);
    let fx = Fixture::start("io_timeout = \"60s\"\nmax_connections = 64\n");
    let users = enroll_many(&fx, "room", 4);
    // Far more idle connections than slots.
    let hogs = hogs(&fx, 1000);
    let results = parallel_logins(&fx, &users);
    for (i, (code, secs)) in results.iter().enumerate() {
        assert_eq!(*code, PAM_SUCCESS, "login {i} failed with every slot held by idle connections");
        assert!(*secs < 5.0, "login {i} took {secs:.1} s");
    }
    // The oldest idle connections were closed to make room.
    let mut closed = 0;
    for mut h in hogs.into_iter().take(100) {
        h.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // EOF, or ECONNRESET for the ones whose unread half frame was discarded.
        match h.read(&mut [0u8; 1]) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 100, "the oldest idle connections should have been evicted");
}
