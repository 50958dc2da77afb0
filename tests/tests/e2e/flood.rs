//! Floods on the PAM socket: a thousand idle and half-sent connections, a
//! non-root user opening hundreds, and a burst of garbage frames must not
//! keep real logins (the built module, real libpam, the module's default
//! 10 s timeout) from completing.
use crate::support;
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
    let _turn = support::exclusive("flood");
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
    let _turn = support::exclusive("flood");
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

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// What the database (with its WAL) and the daemon's log take on disk.
fn footprint(fx: &Fixture) -> (u64, u64) {
    let db = file_len(&fx.path("state/otpd.db")) + file_len(&fx.path("state/otpd.db-wal"));
    (db, file_len(&fx.path("otpd.log")))
}

/// Audit rows, newest first, as `otpctl audit --json` shows them.
fn audit_rows(fx: &Fixture, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json", "audit", "--limit", "100000"];
    all.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&all)).unwrap();
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// One process of uid nobody sending `Begin` for made-up names, one
/// connection after another, for `secs`; prints "sent rate_limited other".
const FLOODER: &str = r#"
import json, os, socket, struct, sys, time
path, secs, proto = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
end = time.time() + secs
sent = limited = other = 0
while time.time() < end:
    sent += 1
    body = json.dumps({"type": "begin", "protocol": proto, "user": "ghost%d_%d" % (os.getpid(), sent),
                       "service": "flood", "pid": os.getpid()}).encode()
    s = socket.socket(socket.AF_UNIX)
    data = b""
    try:
        s.connect(path)
        s.sendall(struct.pack(">I", len(body)) + body)
        for _ in range(2):
            data = b""
            while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            # As pam_otp does: otpd asks a non-root caller for the uid of the name.
            if b'"resolve_user"' not in data:
                break
            answer = json.dumps({"type": "user_resolved", "uid": os.getuid()}).encode()
            s.sendall(struct.pack(">I", len(answer)) + answer)
    except OSError:
        pass
    finally:
        s.close()
    if b"Too many login attempts" in data:
        limited += 1
    else:
        other += 1
print(sent, limited, other, flush=True)
"#;

#[test]
fn a_flood_of_made_up_names_from_one_uid_stays_small_on_disk_and_logins_work() {
    let _turn = support::exclusive("flood");
    let fx = Fixture::start("");
    let users = enroll_many(&fx, "real", 4);
    let (db_before, log_before) = footprint(&fx);

    const SECS: f64 = 10.0;
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let mut c = Command::new("/usr/bin/python3");
            c.arg("-c")
                .arg(FLOODER)
                .arg(fx.pam_socket())
                .arg(SECS.to_string())
                .arg(common::proto::PROTOCOL_VERSION.to_string())
                .stdout(Stdio::piped());
            as_uid(&mut c, 65534);
            c.spawn().unwrap()
        })
        .collect();
    let started = Instant::now();
    // The first refusal of a caller is written at once: the flood is on and limited.
    while audit_rows(&fx, &["--user", "uid:65534"]).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "no refusal recorded: {}", fx.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let results = parallel_logins(&fx, &users);
    let mut flooders = flooders;
    assert!(
        flooders.iter_mut().all(|c| c.try_wait().unwrap().is_none()),
        "the flood ended before the logins did: they did not run during it"
    );
    for (i, (code, secs)) in results.iter().enumerate() {
        assert_eq!(*code, PAM_SUCCESS, "login {i} failed during the flood");
        assert!(*secs < 5.0, "login {i} took {secs:.1} s during the flood");
    }
    let (mut sent, mut limited, mut answered) = (0u64, 0u64, 0u64);
    for c in flooders {
        let out = c.wait_with_output().unwrap();
        let nums: Vec<u64> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|n| n.parse().unwrap()).collect();
        assert_eq!(nums.len(), 3, "flooder output: {:?}", out);
        (sent, limited, answered) = (sent + nums[0], limited + nums[1], answered + nums[2]);
    }
    let (db_after, log_mid) = footprint(&fx);
    eprintln!(
        "flood: {sent} attempts in {SECS} s ({:.0}/s), {limited} refused by the rate limit; database+WAL grew {} bytes",
        sent as f64 / SECS,
        db_after.saturating_sub(db_before)
    );
    assert!(sent >= 2000, "the flood was too weak to mean anything: {sent} attempts");
    // 30 at once, then 30 a minute: the rest is refused without a row each.
    assert!(answered <= 40, "{answered} attempts of one uid were looked at");
    assert_eq!(sent, limited + answered);
    assert!(db_after.saturating_sub(db_before) < 2 << 20, "database+WAL grew by {} bytes", db_after - db_before);

    // Stopping writes the counts not yet written: every refusal is accounted for.
    let mut fx = fx;
    fx.stop_daemon();
    let log_growth = file_len(&fx.path("otpd.log")).saturating_sub(log_before);
    eprintln!("flood: the log grew {log_growth} bytes (before shutdown: {})", log_mid - log_before);
    assert!(log_growth < 256 << 10, "the log grew by {log_growth} bytes");
    fx.start_daemon();
    let reports = audit_rows(&fx, &["--user", "uid:65534"]);
    assert!(reports.len() <= 3, "{} audit rows for one uid's refusals: {reports:?}", reports.len());
    let counted: u64 = reports
        .iter()
        .map(|r| {
            let reason = r["reason"].as_str().unwrap();
            assert!(reason.contains("refused (rate limit) from uid 65534"), "{reason}");
            reason.split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(counted, limited, "the audit counts every refused attempt");
    let rows = audit_rows(&fx, &[]);
    let ghosts = rows.iter().filter(|r| r["user"].as_str().is_some_and(|u| u.starts_with("ghost"))).count();
    assert_eq!(ghosts as u64, answered, "one row per attempt that was looked at, none for the refused");
}

#[test]
fn audit_rows_older_than_the_retention_are_deleted_at_start() {
    let _turn = support::exclusive("flood");
    let mut fx = Fixture::start_with_env(&[HOUSEKEEPING_LOG], "[audit]\nretention = \"30days\"\n");
    assert_eq!(fx.login("ghost-old", &[]).code, PAM_SUCCESS);
    fx.set_clock_offset(20 * 86400);
    assert_eq!(fx.login("ghost-mid", &[]).code, PAM_SUCCESS);
    fx.stop_daemon();
    // 31 days on: the first row is past the retention, the second is not.
    fx.set_clock_offset(31 * 86400);
    fx.start_daemon();
    let users = |fx: &Fixture| -> Vec<String> {
        audit_rows(fx, &[]).iter().map(|r| r["user"].as_str().unwrap().to_string()).collect()
    };
    // The second start's pass has pruned (and logged it).
    fx.wait_for_housekeeping(2);
    assert_eq!(users(&fx), vec!["ghost-mid".to_string()]);
    assert!(fx.log().contains("deleted 1 audit row(s) older than the retention"), "{}", fx.log());
}
