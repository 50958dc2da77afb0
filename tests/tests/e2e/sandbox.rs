//! The packaged otpd.service's sandbox lets the daemon do its job: an otpd
//! started under the unit's `RestrictAddressFamilies=` (reproduced by the
//! af-sandbox helper with the same seccomp filter systemd installs, parsed
//! from packaging/otpd.service) mails a code to a real SMTP server on
//! localhost, as the default `smtp://localhost:25` relay needs. The same
//! test with the old AF_UNIX-only line shows the mail would not leave.
use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/otpd.service");

/// aiosmtpd on 127.0.0.1 without TLS (the address family is what is tested).
fn start_smtp(maildir: &Path) -> (SmtpSink, u16) {
    let port = free_port();
    (SmtpSink::start(maildir, port, None), port)
}

fn mails(maildir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(maildir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "eml")).collect())
        .unwrap_or_default()
}

/// otpd under af-sandbox with `unit`'s families, mailing bob's codes to a
/// local sink. Returns the fixture and the sink's maildir.
fn sandboxed_otpd(unit: &Path) -> (Fixture, SmtpSink, PathBuf) {
    let pre = tempfile::tempdir().unwrap();
    let maildir = pre.path().join("maildir");
    let (smtp, port) = start_smtp(&maildir);
    std::fs::write(pre.path().join("emails"), "bob bob@example.org\n").unwrap();
    let cfg = format!(
        "[email]\ndirectory = \"file:{}\"\n[smtp]\nurl = \"smtp+plain://localhost:{port}\"\n\
         from = \"otpd <otpd@test.example>\"\ntimeout = \"5s\"\n",
        pre.path().join("emails").display()
    );
    let mut fx = Fixture::start(&cfg);
    fx.stop_daemon();
    // launch() waits for the socket files: a stale pair from the first daemon
    // would let it return before the sandboxed one listens.
    for sock in ["run/pam.sock", "run/admin.sock"] {
        let _ = std::fs::remove_file(fx.path(sock));
    }
    let mut cmd = Command::new(build_dir().join("af-sandbox"));
    cmd.arg(unit)
        .arg("--")
        .arg(build_dir().join("otpd"))
        .arg("--config")
        .arg(&fx.config)
        .env("OTPD_TEST_CLOCK_FILE", fx.path("clock-offset"));
    fx.launch(cmd);
    // The socket file exists from bind(), a moment before listen(): wait for an answer.
    wait("the sandboxed otpd to answer", || fx.ctl(&["status"]).status.success().then_some(()));
    // The emails file and the sink's maildir live as long as the fixture's process.
    std::mem::forget(pre);
    fx.ctl_ok(&["user", "enable", "bob", "--method", "email"]);
    // Enter at the prompt = "email me a code".
    let r = fx.login("bob", &[""]);
    assert!(r.out.contains("A code was sent"), "{}", r.out);
    (fx, smtp, maildir)
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn under_the_units_address_families_an_emailed_code_reaches_a_local_smtp_server() {
    let _turn = support::shared();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let families: Vec<&str> = unit.lines().filter(|l| l.starts_with("RestrictAddressFamilies=")).collect();
    assert!(!families.is_empty(), "the unit restricts address families");

    let (fx, _smtp, maildir) = sandboxed_otpd(Path::new(UNIT));
    wait("the mail at the sink", || (!mails(&maildir).is_empty()).then_some(()));
    let status = fx.ctl_ok(&["--json", "status"]);
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(s["status"]["mail_failing"], 0, "{status}");
}

#[test]
fn with_only_af_unix_the_mail_cannot_leave() {
    let _turn = support::shared();
    // The unit as shipped before: proves the filter is real, so the test
    // above would fail against it.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let old: String = unit
        .lines()
        .map(|l| if l.starts_with("RestrictAddressFamilies=") { "RestrictAddressFamilies=AF_UNIX" } else { l })
        .map(|l| format!("{l}\n"))
        .collect();
    let old_unit = dir.path().join("otpd.service");
    std::fs::write(&old_unit, old).unwrap();

    let (fx, _smtp, maildir) = sandboxed_otpd(&old_unit);
    let err = wait("the mail to fail", || {
        let s: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "status"])).unwrap();
        (s["status"]["mail_failing"].as_u64().unwrap_or(0) > 0).then(|| s["status"]["mail_last_error"].to_string())
    });
    assert!(mails(&maildir).is_empty(), "no mail may arrive without AF_INET/AF_INET6");
    // EAFNOSUPPORT, as systemd's filter answers: the socket was refused, not the server.
    assert!(err.contains("Address family not supported"), "{err}");
    // Logins over the Unix socket still work: only the network is cut.
    assert!(fx.ctl_ok(&["user", "show", "bob"]).contains("bob"));
}
