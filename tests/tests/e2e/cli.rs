//! otpctl and otpd command lines: exit codes and messages an admin relies on.
use crate::support;
use std::process::Command;
use support::*;

#[test]
fn otpctl_exit_codes_and_messages() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    let out = fx.ctl(&["user", "show", "nobody-enrolled"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("otpctl user enable nobody-enrolled"));
    let out = fx.ctl(&["user", "enable", "bad name!"]);
    assert_eq!(out.status.code(), Some(6));
    fx.ctl_ok(&["user", "enable", "rita"]);
    let again = fx.ctl(&["user", "enable", "rita"]);
    assert_eq!(again.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&again.stderr).contains("otpctl user reset rita"));
    let no_addr = fx.ctl(&["user", "enable", "sam", "--method", "email"]);
    assert_eq!(no_addr.status.code(), Some(6), "an email user needs an address");
    assert!(String::from_utf8_lossy(&no_addr.stderr).contains("--email"));
    let injected =
        fx.ctl(&["user", "enable", "sam", "--method", "email", "--email", "sam@example.org\r\nBcc: x@evil.test"]);
    assert_eq!(injected.status.code(), Some(6));
    let list = fx.ctl_ok(&["user", "list"]);
    assert!(list.contains("rita") && !list.contains("sam"), "{list}");
    fx.ctl_ok(&["user", "enable", "sam", "--method", "email", "--email", "sam@example.org"]);
    let status = fx.ctl_ok(&["status"]);
    assert!(status.contains("2 enabled"), "{status}");

    // Unprivileged callers are refused and change nothing.
    let mut cmd = Command::new(staged("otpctl"));
    cmd.arg("--config").arg(&fx.config).args(["user", "disable", "rita"]);
    as_uid(&mut cmd, 65534);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fx.show("rita")["user"]["enabled"], true);

    fx.stop_daemon();
    let out = fx.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is otpd running?"));
}

#[test]
fn check_config_names_the_key_and_line() {
    let _turn = support::shared();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("otpd.toml");
    std::fs::write(&cfg, "[totp]\ndigits = 6\nperoid = 30\n").unwrap();
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&cfg).arg("--check-config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("line 3") && err.contains("peroid"), "{err}");
    // The daemon refuses to start with the same message.
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("peroid"));

    std::fs::write(&cfg, "[lockout]\nmax_failures = 0\n").unwrap();
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&cfg).arg("--check-config").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("lockout.max_failures"));
    std::fs::write(&cfg, "").unwrap();
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&cfg).arg("--check-config").output().unwrap();
    assert!(out.status.success());
}

#[test]
fn corrupt_database_or_readable_key_refuses_to_start() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "tess"]);
    fx.stop_daemon();
    let db = fx.path("state/otpd.db");
    let _ = std::fs::remove_file(fx.path("state/otpd.db-wal"));
    let _ = std::fs::remove_file(fx.path("state/otpd.db-shm"));
    std::fs::write(&db, vec![0x5a; 16384]).unwrap();
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&fx.config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("otpd.db") && err.contains("unusable"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), vec![0x5a; 16384], "the broken file is left for the admin");

    use std::os::unix::fs::PermissionsExt;
    std::fs::remove_file(&db).unwrap();
    let key = fx.path("state/secret.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&fx.config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn state_files_are_private() {
    let _turn = support::shared();
    use std::os::unix::fs::MetadataExt;
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "uma"]);
    for f in ["state/otpd.db", "state/secret.key"] {
        let mode = std::fs::metadata(fx.path(f)).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{f} has mode {mode:o}");
    }
    let mode = std::fs::metadata(fx.pam_socket()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o666, "screen lockers running as the user must reach the PAM socket");
    // A crash leaves no core file with secrets in it.
    let pid = fx.daemon.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    // The secret is not stored in clear.
    let uri_secret = {
        let r = fx.login("uma", &["1"]);
        r.uri().unwrap().split("secret=").nth(1).unwrap().split('&').next().unwrap().to_string()
    };
    let out =
        Command::new("sqlite3").arg(fx.path("state/otpd.db")).arg("SELECT hex(secret) FROM users").output().unwrap();
    let stored = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!stored.trim().is_empty());
    let raw = totp_rs::Secret::Encoded(uri_secret).to_bytes().unwrap();
    let raw_hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
    assert!(raw.len() >= 20 && !stored.contains(&raw_hex), "secret stored in clear");
}

#[test]
fn shipped_example_config_is_valid() {
    let _turn = support::shared();
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/otpd.toml");
    let out = Command::new(build_dir().join("otpd")).args(["--check-config", "--config", cfg]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tells_systemd_when_ready() {
    let _turn = support::shared();
    // Type=notify: READY=1 arrives on NOTIFY_SOCKET once the sockets exist.
    use std::os::unix::net::UnixDatagram;
    let mut fx = Fixture::start("");
    fx.stop_daemon();
    let sock = fx.path("notify.sock");
    let listener = UnixDatagram::bind(&sock).unwrap();
    listener.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    fx.env.push(("NOTIFY_SOCKET".into(), sock.display().to_string()));
    fx.start_daemon();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    assert!(fx.pam_socket().exists());
}

#[test]
fn user_list_larger_than_a_pam_frame_reaches_otpctl() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    let admin = fx.path("run/admin.sock");
    for i in 0..400 {
        let mut c = common::client::Client::connect(&admin, std::time::Duration::from_secs(10), &[0]).unwrap();
        let req = common::proto::AdminRequest::UserEnable {
            user: format!("listed{i}"),
            method: common::proto::Method::Totp,
            email: None,
        };
        let resp: common::proto::AdminResponse = c.call(&req).unwrap();
        assert!(matches!(resp, common::proto::AdminResponse::Enrolled { .. }), "{resp:?}");
    }
    let out = fx.ctl_ok(&["--json", "user", "list"]);
    // More than the 64 KiB a PAM-socket frame may carry.
    assert!(out.len() > 64 * 1024, "{} bytes", out.len());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["users"].as_array().unwrap().len(), 400);
    let table = fx.ctl_ok(&["user", "list"]);
    assert!(table.contains("listed399"));
}

/// The server's clock is the one codes are checked against: `otpctl
/// status` shows whether the kernel reports it synchronised, as adjtimex
/// tells this test, and warns when it is not.
#[test]
fn status_shows_the_server_clock_state() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    // SAFETY: modes 0: adjtimex only fills in the struct.
    let (state, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut tx), tx)
    };
    let synchronised = (state >= 0).then_some(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0);
    let text = fx.ctl_ok(&["status"]);
    let json: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "status"])).unwrap();
    let clock = &json["status"]["clock"];
    match synchronised {
        Some(true) => {
            assert!(text.contains("server clock   synchronised"), "{text}");
            assert!(!text.contains("warning"), "{text}");
            assert_eq!(clock["synchronised"], true, "{clock}");
        }
        Some(false) => {
            assert!(text.contains("server clock   NOT synchronised"), "{text}");
            assert!(text.contains("warning        codes are checked against this clock"), "{text}");
            assert_eq!(clock["synchronised"], false, "{clock}");
        }
        None => {
            assert!(text.contains("server clock   unknown (adjtimex"), "{text}");
            assert!(clock["synchronised"].is_null() && clock["error"].is_string(), "{clock}");
        }
    }
}
