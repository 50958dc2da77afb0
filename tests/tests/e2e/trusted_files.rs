//! otpd refuses to start on state another user could have planted or can
//! reach: a key file, database, -wal or -shm owned by someone else, a state
//! or socket directory others can write to (or another group), a
//! world-writable directory above them. Each refusal names the file, its
//! owner and what to do, and creates or changes nothing; the normal case
//! still starts.
use crate::support;
use e2e::PAM_SUCCESS;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry under the fixture's state and socket directories, with what
/// a start could change about it.
fn snapshot(fx: &Fixture) -> Vec<(PathBuf, u32, u32, u32, u64, i64, i64)> {
    let mut out = Vec::new();
    for dir in [fx.path("state"), fx.path("run"), fx.dir.path().to_path_buf()] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.push(dir.clone());
        entries.sort();
        for p in entries {
            if p.file_name().is_some_and(|n| n == "otpd.log" || n == "refused.log") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (size, mtime) =
                if m.is_dir() { (0, 0) } else { (m.size(), m.mtime_nsec() + m.mtime() * 1_000_000_000) };
            out.push((p, m.mode(), m.uid(), m.gid(), size, mtime, m.ino() as i64));
        }
    }
    out
}

/// Runs otpd on the fixture's configuration; returns its stderr if it
/// refused to start, panics if it started.
fn refused(fx: &Fixture) -> String {
    let log = fx.path("refused.log");
    let mut child = Command::new(build_dir().join("otpd"))
        .arg("--config")
        .arg(&fx.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        // A refusal comes at once; a daemon still running after 10 s started.
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("otpd started: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{err}");
    err
}

/// Applies `setup`, checks otpd refuses with a message containing every
/// one of `expect` and changes nothing, then undoes the setup.
fn case(fx: &Fixture, name: &str, setup: impl FnOnce(), expect: &[&str], undo: impl FnOnce()) {
    setup();
    let before = snapshot(fx);
    let err = refused(fx);
    for e in expect {
        assert!(err.contains(e), "{name}: {e:?} not in: {err}");
    }
    assert!(err.contains("refusing to start"), "{name}: {err}");
    assert_eq!(snapshot(fx), before, "{name}: a refused start changed the state");
    undo();
}

/// Enables `user` and activates it with the current step's code (a step
/// boundary in between still leaves it inside the ±1 window).
fn enroll(fx: &Fixture, name: &str) -> String {
    fx.ctl_ok(&["user", "enable", name, "--method", "totp"]);
    let uri = fx.login(name, &[""]).uri().unwrap();
    let ok = fx.login(name, &[&fx.code(&uri, 0)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    uri
}

#[test]
fn untrusted_state_is_refused_naming_the_file_and_changing_nothing() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    let uri = enroll(&fx, "tess");
    fx.stop_daemon();
    let state = fx.path("state");
    let run = fx.path("run");
    let (key, db) = (state.join("secret.key"), state.join("otpd.db"));
    let shown = |p: &Path| p.display().to_string();

    for mode in [0o777, 0o1777, 0o757] {
        case(
            &fx,
            &format!("state dir {mode:o}"),
            || chmod(&state, mode),
            &[&shown(&state), "writable by every user", "chmod o-w"],
            || chmod(&state, 0o755),
        );
    }
    case(
        &fx,
        "state dir writable by another group",
        || {
            chown(&state, None, Some(NOBODY)).unwrap();
            chmod(&state, 0o775);
        },
        &[&shown(&state), "writable by group gid 65534 (nogroup)", "not otpd's group"],
        || {
            chown(&state, None, Some(0)).unwrap();
            chmod(&state, 0o755);
        },
    );
    case(
        &fx,
        "state dir owned by nobody",
        || chown(&state, Some(NOBODY), None).unwrap(),
        &[&shown(&state), "owned by uid 65534 (nobody)", "chown root"],
        || chown(&state, Some(0), None).unwrap(),
    );
    case(
        &fx,
        "socket dir world-writable",
        || chmod(&run, 0o777),
        &[&shown(&run), "socket directory is writable by every user"],
        || chmod(&run, 0o755),
    );
    case(
        &fx,
        "world-writable directory above the state, without the sticky bit",
        || chmod(fx.dir.path(), 0o777),
        &[&shown(fx.dir.path()), "parent is writable by every user"],
        || chmod(fx.dir.path(), 0o755),
    );
    for (file, what) in [(&key, "key file"), (&db, "database")] {
        case(
            &fx,
            &format!("{what} owned by nobody"),
            || chown(file, Some(NOBODY), None).unwrap(),
            &[&shown(file), &format!("the {what} is owned by uid 65534 (nobody), not by uid 0 (root)"), "chown root"],
            || chown(file, Some(0), None).unwrap(),
        );
    }
    // -wal and -shm: planted next to a database that was closed cleanly.
    for (suffix, what) in [("-wal", "write-ahead log"), ("-shm", "shared-memory file")] {
        let f = state.join(format!("otpd.db{suffix}"));
        let existed = f.exists();
        case(
            &fx,
            what,
            || {
                if !existed {
                    std::fs::write(&f, b"").unwrap();
                }
                chown(&f, Some(NOBODY), None).unwrap();
            },
            &[&shown(&f), what, "owned by uid 65534 (nobody)"],
            || {
                if existed {
                    chown(&f, Some(0), None).unwrap();
                } else {
                    std::fs::remove_file(&f).unwrap();
                }
            },
        );
    }

    // Group-writable by otpd's own group (root's here) is accepted, and the state is intact.
    chmod(&state, 0o770);
    fx.start_daemon();
    let code = fx.code(&uri, 1);
    assert_eq!(fx.login("tess", &[&code]).code, PAM_SUCCESS);
}

#[test]
fn a_key_file_planted_before_the_first_start_is_refused() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    fx.stop_daemon();
    let state = fx.path("state");
    // A fresh install: nothing in the state or socket directory (a SIGTERM
    // right after start may leave the sockets behind).
    for dir in [&state, &fx.path("run")] {
        for f in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
    }
    // A fresh install whose key someone else wrote (and so knows).
    let key = state.join("secret.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    chmod(&key, 0o600);
    chown(&key, Some(NOBODY), Some(NOBODY)).unwrap();
    let before = snapshot(&fx);
    let err = refused(&fx);
    assert!(err.contains(&format!("{}: the key file is owned by uid 65534 (nobody)", key.display())), "{err}");
    assert_eq!(snapshot(&fx), before);
    assert!(!state.join("otpd.db").exists(), "no database may be created next to a planted key");

    // Removed, otpd starts and creates its own.
    std::fs::remove_file(&key).unwrap();
    fx.start_daemon();
    assert_eq!(std::fs::metadata(&key).unwrap().uid(), 0);
    enroll(&fx, "tom");
}
