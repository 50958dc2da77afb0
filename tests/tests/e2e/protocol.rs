//! Hostile bytes on the daemon's sockets change nothing and stall nobody.
use crate::support;
use e2e::PAM_SUCCESS;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use support::*;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// Sends `bytes`, then reads until the daemon closes; returns what it said.
fn poke(fx: &Fixture, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(fx.pam_socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let r = s.read_to_end(&mut out);
    // Closed (EOF), or reset because the daemon hung up on unread garbage;
    // never left hanging until our read timeout.
    let closed = match &r {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "daemon must close the connection, not leave it hanging: {r:?}");
    out
}

fn outcome_of(reply: &[u8]) -> serde_json::Value {
    assert!(reply.len() > 4, "expected a reply frame, got {reply:?}");
    serde_json::from_slice(&reply[4..]).unwrap()
}

#[test]
fn garbage_frames_change_nothing() {
    let _turn = support::shared();
    let fx = Fixture::start("io_timeout = \"300ms\"\n");
    let uri = fx.enroll_active("paul");
    let before_user = fx.show("paul");
    let audit_before = fx.ctl_ok(&["--json", "audit"]);

    // Oversized length, empty frame, garbage, NUL bytes, non-UTF-8, wrong
    // message types, trailing bytes: each is dropped with the connection.
    for bytes in [
        u32::MAX.to_be_bytes().to_vec(),
        (64 * 1024 + 1u32).to_be_bytes().to_vec(),
        vec![0, 0, 0, 0],
        frame(b"not json at all"),
        frame(b"{\"type\":\"begin\",\"user\":\"paul\0\"}"),
        frame(b"\xff\xfe\xfd"),
        frame(b"{\"type\":\"begin\",\"protocol\":1,\"user\":\"paul\",\"service\":\"x\",\"pid\":1,\"evil\":1}"),
        frame(b"[]"),
        b"\x00\x00".to_vec(),
    ] {
        let reply = poke(&fx, &bytes);
        assert!(reply.is_empty(), "no reply expected for {bytes:?}: {reply:?}");
    }
    // Well-formed but wrong first message: a denial.
    let r = outcome_of(&poke(&fx, &frame(br#"{"type":"answer","text":"123456"}"#)));
    assert_eq!(r["result"], "deny");

    assert_eq!(fx.show("paul"), before_user, "user state must not change");
    assert_eq!(fx.ctl_ok(&["--json", "audit"]), audit_before, "nothing with no user is audited as a login");

    // Hostile Begin messages concern a login: denied and audited.
    let bad_user = r#"{"type":"begin","protocol":1,"user":"../../etc/passwd","service":"sshd","pid":1}"#;
    assert_eq!(outcome_of(&poke(&fx, &frame(bad_user.as_bytes())))["result"], "deny");
    let long_user =
        format!(r#"{{"type":"begin","protocol":1,"user":"{}","service":"sshd","pid":1}}"#, "a".repeat(5000));
    assert_eq!(outcome_of(&poke(&fx, &frame(long_user.as_bytes())))["result"], "deny");
    let old = r#"{"type":"begin","protocol":99,"user":"paul","service":"sshd","pid":1}"#;
    assert_eq!(outcome_of(&poke(&fx, &frame(old.as_bytes())))["result"], "deny");
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--limit", "3"])).unwrap();
    let reasons: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].contains("protocol version 99"), "{reasons:?}");
    assert_eq!(reasons[1], "invalid user name");
    assert_eq!(reasons[2], "invalid user name");
    assert_eq!(fx.show("paul"), before_user);

    assert_eq!(fx.login("paul", &[&fx.code(&uri, 1)]).code, PAM_SUCCESS);
}

#[test]
fn slow_and_half_frame_clients_do_not_stall_logins() {
    let _turn = support::shared();
    let fx = Fixture::start("io_timeout = \"500ms\"\nmax_connections = 8\n");
    let uri = fx.enroll_active("quinn");
    // Hold every connection slot with clients that send half a frame or nothing.
    let mut hogs = Vec::new();
    for i in 0..8 {
        let mut s = UnixStream::connect(fx.pam_socket()).unwrap();
        if i % 2 == 0 {
            s.write_all(&[0, 0, 1, 0, b'{']).unwrap(); // promises 256 bytes, sends 1
        }
        hogs.push(s);
    }
    // The daemon cuts them off after io_timeout; a real login still gets through
    // well within the module's own timeout.
    let started = std::time::Instant::now();
    let r = fx.login("quinn", &[&fx.code(&uri, 1)]);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);
    assert!(started.elapsed() < Duration::from_secs(10), "login waited {:?}", started.elapsed());
    for mut h in hogs {
        h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        // Closed either way: a reset when the daemon dropped it with the
        // hog's half frame still unread (evicted to make room for the login).
        let got = h.read(&mut buf);
        let closed =
            matches!(&got, Ok(0)) || got.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(closed, "the daemon must close a stalled connection: {got:?}");
    }
}

#[test]
fn random_frames_at_a_live_daemon_change_nothing() {
    let _turn = support::shared();
    let fx = Fixture::start("io_timeout = \"300ms\"\n");
    let uri = fx.enroll_active("rafa");
    let before = fx.show("rafa");
    let audit_before = fx.ctl_ok(&["--json", "audit"]);
    // xorshift: reproducible garbage without another dependency.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && bytes.len() >= 4 {
            // A plausible length prefix makes the daemon parse the body.
            let body = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&body.to_be_bytes());
        }
        let reply = poke(&fx, &bytes);
        // Only well-formed non-begin messages may get a reply, and it is a denial.
        if reply.len() > 4 {
            assert_eq!(outcome_of(&reply)["result"], "deny");
        }
    }
    assert_eq!(fx.show("rafa"), before);
    assert_eq!(fx.ctl_ok(&["--json", "audit"]), audit_before);
    assert_eq!(fx.login("rafa", &[&fx.code(&uri, 1)]).code, PAM_SUCCESS);
}
