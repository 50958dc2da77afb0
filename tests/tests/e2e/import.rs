//! `otpctl import google-authenticator` with files written by the real
//! `google-authenticator` program and used by the real
//! pam_google_authenticator.so before the import. otpctl resolves accounts
//! through NSS, so it runs in a private mount namespace over a temp
//! /etc/passwd whose users live in the fixture's dir (the host's files and
//! users are never touched).
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const GA_MODULE: &str = "/usr/lib/x86_64-linux-gnu/security/pam_google_authenticator.so";

/// Users ga1…ga6 (uids 23501…) with homes under the fixture's dir, and root.
struct Accounts {
    etc: PathBuf,
    home: PathBuf,
}

fn uid(n: u32) -> u32 {
    23500 + n
}

impl Accounts {
    fn new(fx: &Fixture) -> Accounts {
        let etc = fx.path("etc");
        let home = fx.path("home");
        std::fs::create_dir_all(&etc).unwrap();
        let mut passwd = format!("root:x:0:0:root:{}:/bin/sh\n", fx.path("roothome").display());
        let mut group = "root:x:0:\n".to_string();
        for n in 1..=6 {
            let h = home.join(format!("ga{n}"));
            std::fs::create_dir_all(&h).unwrap();
            std::os::unix::fs::chown(&h, Some(uid(n)), Some(uid(n))).unwrap();
            passwd += &format!("ga{n}:x:{0}:{0}::{1}:/bin/sh\n", uid(n), h.display());
            group += &format!("ga{n}:x:{}:\n", uid(n));
        }
        std::fs::create_dir_all(fx.path("roothome")).unwrap();
        std::fs::write(etc.join("passwd"), passwd).unwrap();
        std::fs::write(etc.join("group"), group).unwrap();
        Accounts { etc, home }
    }

    fn file(&self, n: u32) -> PathBuf {
        self.home.join(format!("ga{n}/.google_authenticator"))
    }

    /// otpctl with the temp passwd and group as NSS's files.
    fn otpctl(&self, fx: &Fixture, args: &[&str]) -> Run {
        let script = format!(
            "set -e; mount --bind {e}/passwd /etc/passwd; mount --bind {e}/group /etc/group; exec \"$@\"",
            e = self.etc.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"]);
        cmd.arg(build_dir().join("otpctl")).arg("--config").arg(&fx.config).args(args);
        run(cmd)
    }
}

/// What the real program writes: TOTP (`-t -d`: disallow reuse) or HOTP
/// (`-c`), rate limit 3 per 30 s, window 3, 5 scratch codes.
fn google_authenticator(path: &Path, extra: &[&str]) {
    let mode: &[&str] = if extra == ["-c"] { &["-c"] } else { &["-t", "-d"] };
    let out = Command::new("/usr/bin/google-authenticator")
        .args(mode)
        .args(["-f", "-r", "3", "-R", "30", "-w", "3", "-q", "-s"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn secret_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().lines().next().unwrap().trim().to_string()
}

fn scratch_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().skip(1).filter(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit())).map(String::from).collect()
}

fn oathtool(secret: &str, at: Option<i64>) -> String {
    let mut cmd = Command::new("oathtool");
    cmd.args(["--totp", "-b", secret]);
    if let Some(t) = at {
        cmd.args(["-N", &format!("@{t}")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn oathtool_hotp(secret: &str, counter: u64) -> String {
    let out = Command::new("oathtool").args(["--hotp", "-b", secret, "-c", &counter.to_string()]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn chown_to(path: &Path, owner: u32) {
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).unwrap();
}

#[test]
fn google_authenticator_files_import_once_with_their_secret_last_step_and_scratch_codes() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let acc = Accounts::new(&fx);
    // ga1: used under pam_google_authenticator first (as root's file: the
    // module's `user=root` needs no NSS entry), then handed to its user.
    google_authenticator(&acc.file(1), &["-t"]);
    let secret = secret_of(&acc.file(1));
    std::fs::write(
        fx.path("services/ga"),
        format!("auth required {GA_MODULE} secret={} user=root\n", acc.file(1).display()),
    )
    .unwrap();
    let used = oathtool(&secret, None);
    let before = fx.login_with("ga", "ga1", &[used.as_bytes()]);
    assert_eq!(before.code, PAM_SUCCESS, "pam_google_authenticator took the code: {}", before.out);
    assert!(std::fs::read_to_string(acc.file(1)).unwrap().contains("\" DISALLOW_REUSE "), "the step was recorded");
    chown_to(&acc.file(1), uid(1));
    let scratch = scratch_of(&acc.file(1));
    assert_eq!(scratch.len(), 5);
    // ga2: a plain TOTP file; ga3: HOTP; ga4: world-readable; ga5: not
    // its user's; ga6: a symlink to a good file; plus a malformed one.
    google_authenticator(&acc.file(2), &["-t"]);
    chown_to(&acc.file(2), uid(2));
    // ga3: HOTP, one code used under pam_google_authenticator (counter 1 → 2).
    google_authenticator(&acc.file(3), &["-c"]);
    let hotp_secret = secret_of(&acc.file(3));
    std::fs::write(
        fx.path("services/ga"),
        format!("auth required {GA_MODULE} secret={} user=root\n", acc.file(3).display()),
    )
    .unwrap();
    let hotp_used = oathtool_hotp(&hotp_secret, 1);
    let before = fx.login_with("ga", "ga3", &[hotp_used.as_bytes()]);
    assert_eq!(before.code, PAM_SUCCESS, "pam_google_authenticator took the HOTP code: {}", before.out);
    assert!(std::fs::read_to_string(acc.file(3)).unwrap().contains("\" HOTP_COUNTER 2"), "the counter moved");
    chown_to(&acc.file(3), uid(3));
    google_authenticator(&acc.file(4), &["-t"]);
    chown_to(&acc.file(4), uid(4));
    std::fs::set_permissions(acc.file(4), std::fs::Permissions::from_mode(0o644)).unwrap();
    google_authenticator(&acc.file(5), &["-t"]);
    let target = acc.home.join("ga6/real");
    google_authenticator(&target, &["-t"]);
    chown_to(&target, uid(6));
    std::os::unix::fs::symlink(&target, acc.file(6)).unwrap();
    let malformed = acc.home.join("ga2/malformed");
    std::fs::write(&malformed, "not a secret at all\n\" TOTP_AUTH\n").unwrap();
    std::fs::set_permissions(&malformed, std::fs::Permissions::from_mode(0o400)).unwrap();
    chown_to(&malformed, uid(2));

    // A dry run changes nothing.
    let dry = acc.otpctl(&fx, &["import", "google-authenticator", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.out);
    assert!(dry.out.lines().any(|l| l.starts_with("ga1 ") && l.contains("would import")), "{}", dry.out);
    assert_eq!(fx.ctl(&["user", "show", "ga1"]).status.code(), Some(3), "nothing imported by a dry run");

    // Every local user's file (NSS), in one go.
    let out = acc.otpctl(&fx, &["import", "google-authenticator"]);
    assert_eq!(out.code, 0, "{}", out.out);
    let line = |u: &str| out.out.lines().find(|l| l.starts_with(&format!("{u} "))).unwrap_or("").to_string();
    assert!(line("ga1").contains("imported") && line("ga1").contains("5 scratch code(s)"), "{}", out.out);
    assert!(line("ga2").contains("imported"), "{}", out.out);
    assert!(line("ga3").contains("imported") && line("ga3").contains("HOTP secret, next counter 2"), "{}", out.out);
    assert!(line("ga3").contains("RATE_LIMIT 3 per 30 s replaced by otpd's lockout"), "{}", out.out);
    assert!(line("ga4").contains("skipped") && line("ga4").contains("mode 0644"), "{}", out.out);
    assert!(line("ga5").contains("skipped") && line("ga5").contains("owned by uid 0"), "{}", out.out);
    assert!(line("ga6").contains("skipped") && line("ga6").contains("symbolic link"), "{}", out.out);
    for n in 4..=6 {
        assert_eq!(fx.ctl(&["user", "show", &format!("ga{n}")]).status.code(), Some(3), "ga{n}: {}", out.out);
    }
    let shown = fx.show("ga1")["user"].clone();
    assert_eq!((shown["activated"].as_bool(), shown["recovery_codes_left"].as_u64()), (Some(true), Some(5)));

    // The malformed file, by path for its user: skipped, nothing imported.
    let bad = acc.otpctl(&fx, &["import", "google-authenticator", &format!("ga2={}", malformed.display())]);
    assert!(bad.out.contains("neither an option") || bad.out.contains("not a base32"), "{}", bad.out);
    assert!(bad.out.contains("skipped"), "{}", bad.out);

    // The code used under pam_google_authenticator is refused by pam_otp;
    // the next one (oathtool, at the daemon's pinned time) is accepted.
    let now = fx.pin_clock();
    let replay = fx.login("ga1", &[&used]);
    assert_eq!(replay.code, PAM_AUTH_ERR, "{}", replay.out);
    let next = oathtool(&secret, Some(now + 30));
    assert_ne!(next, used);
    let ok = fx.login("ga1", &[&next]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    // ga3's HOTP token: the code used before the import is refused, the
    // next counter's code is accepted once.
    assert_eq!(fx.login("ga3", &[&hotp_used]).code, PAM_AUTH_ERR);
    let hotp_next = oathtool_hotp(&hotp_secret, 2);
    let ok3 = fx.login("ga3", &[&hotp_next]);
    assert_eq!(ok3.code, PAM_SUCCESS, "{}", ok3.out);
    assert_eq!(fx.login("ga3", &[&hotp_next]).code, PAM_AUTH_ERR, "single use");
    assert_eq!(fx.show("ga3")["user"]["method"], "hotp");
    // ga2's existing authenticator entry keeps working.
    let ok2 = fx.login("ga2", &[&oathtool(&secret_of(&acc.file(2)), Some(now))]);
    assert_eq!(ok2.code, PAM_SUCCESS, "{}", ok2.out);

    // Scratch codes: each works once, and the count goes down.
    for (i, code) in scratch.iter().take(2).enumerate() {
        let ok = fx.login("ga1", &[code]);
        assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
        assert!(ok.out.contains(&format!("{} recovery codes left", 4 - i)), "{}", ok.out);
        let again = fx.login("ga1", &[code]);
        assert_eq!(again.code, PAM_AUTH_ERR, "{}", again.out);
    }
    assert_eq!(fx.show("ga1")["user"]["recovery_codes_left"], 3);

    // Again: idempotent (nothing changes, used scratch codes stay used).
    let again = acc.otpctl(&fx, &["import", "google-authenticator", &acc.file(1).display().to_string()]);
    assert!(again.out.lines().any(|l| l.starts_with("ga1 ") && l.contains("unchanged")), "{}", again.out);
    assert_eq!(fx.show("ga1")["user"]["recovery_codes_left"], 3);
    assert_eq!(fx.login("ga1", &[&scratch[0]]).code, PAM_AUTH_ERR);

    // --remove-files deletes only what was imported, after the commit.
    let rm = acc.otpctl(&fx, &["import", "google-authenticator", "--remove-files"]);
    assert!(rm.out.contains("removed"), "{}", rm.out);
    assert!(!acc.file(1).exists() && !acc.file(2).exists());
    assert!(!acc.file(3).exists(), "ga3 was imported");
    assert!(acc.file(4).exists() && acc.file(5).exists());
}

/// 700 files are one admin request over 64 KiB, imported in one transaction.
#[test]
fn many_files_are_one_request_and_one_transaction() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    let etc = fx.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let mut passwd = format!("root:x:0:0:root:{}:/bin/sh\n", fx.path("roothome").display());
    let mut args = Vec::new();
    for n in 0..700u32 {
        let (name, id) = (format!("bulk{n}"), 24000 + n);
        passwd += &format!("{name}:x:{id}:{id}::/nonexistent:/bin/sh\n");
        let file = fx.path(&format!("ga-{n}"));
        // The format google-authenticator writes, without scratch codes (no slow hashes).
        let digits: String = format!("{n:016}").bytes().map(|b| (b - b'0' + b'A') as char).collect();
        let secret = format!("JBSWY3DPEHPK3PXP{digits}");
        std::fs::write(&file, format!("{secret}\n\" TOTP_AUTH\n\" DISALLOW_REUSE\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown_to(&file, id);
        args.push(format!("{name}={}", file.display()));
    }
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    let acc = Accounts { etc, home: fx.path("home") };
    let mut argv = vec!["import", "google-authenticator"];
    argv.extend(args.iter().map(String::as_str));
    let out = acc.otpctl(&fx, &argv);
    assert_eq!(out.code, 0, "{}", out.out);
    assert!(out.out.contains("700 imported, 0 skipped"), "{}", out.out.lines().last().unwrap_or(""));
    assert_eq!(fx.show("bulk699")["user"]["activated"], true);
    let again = acc.otpctl(&fx, &argv);
    assert!(again.out.contains("700 unchanged, 0 skipped"), "{}", again.out.lines().last().unwrap_or(""));
}
