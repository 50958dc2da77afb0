//! When the database cannot be written — a full disk, a database that
//! became read-only — logins are denied with a clear log line, nothing is
//! accepted without being recorded, and a refused code is not consumed:
//! once storage is back it still works, exactly once.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn accepts(fx: &Fixture, user: &str) -> usize {
    let audit: serde_json::Value =
        serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", user, "--limit", "1000"])).unwrap();
    audit["entries"].as_array().unwrap().iter().filter(|e| e["result"] == "accept").count()
}

/// Runs `script` with sh in otpd's mount namespace.
fn in_daemon_ns(fx: &Fixture, script: &str) -> std::process::Output {
    let pid = fx.daemon.as_ref().unwrap().id().to_string();
    Command::new("nsenter").args(["--target", &pid, "--mount", "--", "sh", "-c", script]).output().unwrap()
}

/// Restarts otpd in a private mount namespace whose state directory is a
/// 4 MiB tmpfs holding a copy of the current state, so the test can fill
/// that file system without touching the host's.
fn restart_on_small_tmpfs(fx: &mut Fixture) -> PathBuf {
    fx.stop_daemon();
    let state = fx.path("state");
    let seed = fx.path("seed");
    let out = Command::new("cp").arg("-a").arg(&state).arg(&seed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let script = format!(
        "mount -t tmpfs -o size=4m,mode=0700 otpd-test-state '{state}' && cp -a '{seed}'/. '{state}'/ && exec '{otpd}' --config '{cfg}'",
        state = state.display(),
        seed = seed.display(),
        otpd = build_dir().join("otpd").display(),
        cfg = fx.config.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    fx.launch(cmd);
    let mounted = in_daemon_ns(fx, &format!("grep -c ' {} tmpfs ' /proc/mounts", state.display()));
    assert_eq!(String::from_utf8_lossy(&mounted.stdout).trim(), "1", "otpd's state is not on the test tmpfs");
    state
}

#[test]
fn full_disk_denies_with_a_clear_log_line_and_consumes_nothing() {
    let _turn = support::shared();
    let mut fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let uri = fx.enroll_active("dora");
    let state = restart_on_small_tmpfs(&mut fx);
    let now = fx.code(&uri, 0);
    assert_eq!(fx.login("dora", &[&now]).code, PAM_SUCCESS);
    let accepted_before = accepts(&fx, "dora");

    // Fill the daemon's file system to the last byte.
    in_daemon_ns(&fx, &format!("cat /dev/zero > '{}/filler' 2>/dev/null; sync", state.display()));
    let df = in_daemon_ns(&fx, &format!("df --output=avail -B1 '{}' | tail -1", state.display()));
    assert_eq!(String::from_utf8_lossy(&df.stdout).trim(), "0", "the tmpfs is not full");

    let next = fx.code(&uri, 1);
    let r = fx.login("dora", &[&next]);
    assert_eq!(r.code, PAM_AUTH_ERR, "a login was accepted although nothing could be recorded: {}", r.out);
    assert!(r.out.contains("Passcode check unavailable"), "{}", r.out);
    let log = fx.log();
    assert!(log.contains("disk is full") && log.contains("denying"), "no clear log line: {log}");
    assert_eq!(accepts(&fx, "dora"), accepted_before, "an acceptance appeared while the disk was full");

    // Space is back: the refused code was not consumed and works once.
    in_daemon_ns(&fx, &format!("rm -f '{}/filler'", state.display()));
    assert_eq!(fx.login("dora", &[&next]).code, PAM_SUCCESS);
    assert_eq!(fx.login("dora", &[&next]).code, PAM_AUTH_ERR);
    assert_eq!(accepts(&fx, "dora"), accepted_before + 1);
}

/// `chattr +i` on the database files: writes through otpd's open file
/// descriptors fail (EPERM), as when a file system turns read-only under
/// a running daemon. Needs a file system with inode flags (ext4, xfs,
/// btrfs), so the fixture lives under cargo's target dir, not in /tmp.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(files: &[PathBuf]) -> Immutable {
        for f in files {
            let out = Command::new("chattr").arg("+i").arg(f).output().unwrap();
            assert!(
                out.status.success(),
                "chattr +i {} failed ({}): this test needs a file system with inode flags",
                f.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Immutable(files.to_vec())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(f).output();
        }
    }
}

fn target_tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

#[test]
fn database_turning_read_only_denies_and_consumes_nothing() {
    let _turn = support::shared();
    let dir = tempfile::tempdir_in(target_tmp()).unwrap();
    let fx = Fixture::start_in(dir, &[], "[lockout]\nmax_failures = 100\n");
    let uri = fx.enroll_active("rory");
    assert_eq!(fx.login("rory", &[&fx.code(&uri, 0)]).code, PAM_SUCCESS);
    let accepted_before = accepts(&fx, "rory");

    let files = [fx.path("state/otpd.db"), fx.path("state/otpd.db-wal")];
    let next = fx.code(&uri, 1);
    {
        let _ro = Immutable::set(&files);
        let r = fx.login("rory", &[&next]);
        assert_eq!(r.code, PAM_AUTH_ERR, "a login was accepted although nothing could be recorded: {}", r.out);
        assert!(r.out.contains("Passcode check unavailable"), "{}", r.out);
        let log = fx.log();
        assert!(log.contains("denying"), "no log line: {log}");
    }
    assert_eq!(accepts(&fx, "rory"), accepted_before, "an acceptance was recorded while the database was read-only");
    // Writable again: the refused code was not consumed and works once.
    assert_eq!(fx.login("rory", &[&next]).code, PAM_SUCCESS);
    assert_eq!(fx.login("rory", &[&next]).code, PAM_AUTH_ERR);
}

#[test]
fn a_read_only_database_at_start_is_refused() {
    let _turn = support::shared();
    let dir = tempfile::tempdir_in(target_tmp()).unwrap();
    let mut fx = Fixture::start_in(dir, &[], "");
    fx.enroll_active("ruth");
    fx.stop_daemon();
    let files: Vec<PathBuf> = ["otpd.db", "otpd.db-wal", "otpd.db-shm"]
        .iter()
        .map(|f| fx.path("state").join(f))
        .filter(|p| p.exists())
        .collect();
    let _ro = Immutable::set(&files);
    let out = Command::new(build_dir().join("otpd")).arg("--config").arg(&fx.config).output().unwrap();
    assert!(!out.status.success(), "otpd started on a database it cannot write");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be written") || err.contains("otpd.db"), "{err}");
}
