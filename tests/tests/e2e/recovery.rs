//! Recovery codes through the real module and daemon: `otpctl user
//! recovery-codes` prints 10 codes once; each logs in once (real libpam via
//! pamdrive, and real sudo), the user is told how many are left, `user
//! show` counts down, a new set replaces the old, and wrong codes lock the
//! account like wrong passcodes.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_MAXTRIES, PAM_SUCCESS};
use support::*;

use support::SudoSandbox as Sandbox;
use support::SUDO_PASSWORD as PASSWORD;

/// `otpctl user recovery-codes USER`: the 10 codes it printed.
fn new_codes(fx: &Fixture, user: &str) -> Vec<String> {
    let out = fx.ctl(&["user", "recovery-codes", user]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("shown only now"), "{stderr}");
    let codes: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(codes.len(), 10, "{codes:?}");
    for c in &codes {
        let b = c.as_bytes();
        assert!(b.len() == 11 && b[5] == b'-', "{c}");
        assert!(c.bytes().filter(|&x| x != b'-').all(|x| x.is_ascii_lowercase() && !b"ilo".contains(&x)), "{c}");
    }
    codes
}

fn left(fx: &Fixture, user: &str) -> u64 {
    fx.show(user)["user"]["recovery_codes_left"].as_u64().unwrap()
}

#[test]
fn recovery_codes_work_once_each_count_down_and_share_the_lockout() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 3\nlock_for = \"1h\"\n");
    let uri = fx.enroll_active("rosa");
    assert_eq!(left(&fx, "rosa"), 0);
    let no = fx.ctl(&["user", "recovery-codes", "nobody-enrolled"]);
    assert_eq!(no.status.code(), Some(3), "not found");

    let old = new_codes(&fx, "rosa");
    let codes = new_codes(&fx, "rosa");
    assert!(old.iter().all(|c| !codes.contains(c)));
    assert_eq!(left(&fx, "rosa"), 10);
    // The old set is gone: a code from it is a wrong one.
    let stale = fx.login("rosa", &[&old[0]]);
    assert_eq!(stale.code, PAM_AUTH_ERR, "{}", stale.out);
    assert!(stale.out.contains("Wrong or already used recovery code."), "{}", stale.out);

    for (i, typed) in [codes[0].clone(), codes[1].to_uppercase().replace('-', "")].iter().enumerate() {
        let ok = fx.login("rosa", &[typed]);
        assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
        let n = 9 - i;
        assert!(ok.out.contains(&format!("{n} recovery codes left")), "{}", ok.out);
        assert_eq!(left(&fx, "rosa"), n as u64);
        let again = fx.login("rosa", &[typed]);
        assert_eq!(again.code, PAM_AUTH_ERR, "used once: {}", again.out);
    }
    assert!(fx.ctl_ok(&["user", "show", "rosa"]).contains("recovery codes 8 left"));
    // TOTP still works beside them.
    assert_eq!(fx.login("rosa", &[&fx.code(&uri, 1)]).code, PAM_SUCCESS);

    let audit = fx.ctl_ok(&["audit", "--user", "rosa"]);
    assert!(audit.lines().any(|l| l.contains(" recovery ") && l.contains("accept")), "{audit}");
    for c in old.iter().chain(&codes) {
        assert!(!audit.contains(c.as_str()) && !audit.contains(&c.replace('-', "")), "a code in the audit: {audit}");
    }
    assert!(!fx.log().contains(codes[0].as_str()), "a code in the log");

    // Wrong recovery codes count like wrong passcodes: the third locks.
    for (i, wrong) in ["aaaaa-aaaaa", "bbbbb-bbbbb", "ccccc-ccccc"].iter().enumerate() {
        let r = fx.login("rosa", &[wrong]);
        assert_eq!(r.code, if i < 2 { PAM_AUTH_ERR } else { PAM_MAXTRIES }, "{}", r.out);
    }
    assert_eq!(fx.show("rosa")["user"]["locked"], true);
    let locked = fx.login("rosa", &[&codes[2]]);
    assert_ne!(locked.code, PAM_SUCCESS, "{}", locked.out);
    assert_eq!(left(&fx, "rosa"), 8, "a locked account uses no code");
    fx.ctl_ok(&["user", "unlock", "rosa"]);
    assert_eq!(fx.login("rosa", &[&codes[2]]).code, PAM_SUCCESS);
    assert_eq!(left(&fx, "rosa"), 7);

    // Disabling erases the set.
    fx.ctl_ok(&["user", "disable", "rosa"]);
    assert_eq!(left(&fx, "rosa"), 0);
}

fn ran_as_root(r: &Run) -> bool {
    r.out.lines().any(|l| l.trim() == "root")
}

#[test]
fn sudo_takes_each_recovery_code_once_and_not_while_locked() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 3\nlock_for = \"1h\"\n");
    let sandbox = Sandbox::new(&fx);
    fx.enroll_active("otpsudo");
    let codes = new_codes(&fx, "otpsudo");

    let ok = sandbox.sudo(&[PASSWORD, &codes[0]]);
    assert_eq!(ok.code, 0, "{}", ok.out);
    assert!(ran_as_root(&ok), "{}", ok.out);
    assert_eq!(left(&fx, "otpsudo"), 9);

    let replay = sandbox.sudo(&[PASSWORD, &codes[0], ""]);
    assert_ne!(replay.code, 0, "{}", replay.out);
    assert!(!ran_as_root(&replay), "{}", replay.out);
    assert!(replay.out.contains("Wrong or already used recovery code."), "{}", replay.out);

    let ok = sandbox.sudo(&[PASSWORD, &codes[1].to_uppercase()]);
    assert!(ran_as_root(&ok), "{}", ok.out);
    assert_eq!(left(&fx, "otpsudo"), 8);

    // Locked by wrong recovery codes (through libpam): sudo refuses a good one and uses nothing.
    for _ in 0..3 {
        fx.login("otpsudo", &["zzzzz-zzzzz"]);
    }
    assert_eq!(fx.show("otpsudo")["user"]["locked"], true);
    let locked = sandbox.sudo(&[PASSWORD, &codes[2], ""]);
    assert_ne!(locked.code, 0, "{}", locked.out);
    assert!(!ran_as_root(&locked), "{}", locked.out);
    assert_eq!(left(&fx, "otpsudo"), 8);
}
