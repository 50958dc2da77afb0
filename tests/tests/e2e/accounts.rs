//! One account, several names (check 31). Directories such as SSSD, AD or
//! winbind resolve `ALICE`, `Alice` or `alice@DOMAIN` to alice's account,
//! and the first factor logs that account in. nss_wrapper gives the PAM
//! process (and otpd, for `otpctl user enable`) a passwd file where two
//! names share one uid; the host's /etc is not touched.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use support::*;

const NSS_WRAPPER: &str = "libnss_wrapper.so";

struct Directory {
    env: Vec<(String, String)>,
}

impl Directory {
    fn new(dir: &std::path::Path) -> Directory {
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\n\
             alice:x:23500:23500:Alice:/nonexistent:/bin/sh\n\
             ALICE:x:23500:23500:Alice:/nonexistent:/bin/sh\n\
             bob:x:23501:23501:Bob:/nonexistent:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(&group, "root:x:0:\nalice:x:23500:\nbob:x:23501:\n").unwrap();
        let env = vec![
            ("LD_PRELOAD".to_string(), NSS_WRAPPER.to_string()),
            ("NSS_WRAPPER_PASSWD".to_string(), passwd.display().to_string()),
            ("NSS_WRAPPER_GROUP".to_string(), group.display().to_string()),
        ];
        Directory { env }
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// A login through the real libpam whose process resolves names here.
    fn login(&self, fx: &Fixture, user: &str, answers: &[&str]) -> Run {
        let a: Vec<&[u8]> = answers.iter().map(|s| s.as_bytes()).collect();
        let mut cmd = fx.pamdrive("otp", user, &a);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(cmd)
    }
}

#[test]
fn every_name_of_an_enrolled_account_requires_its_code() {
    let _turn = support::shared();
    let names = tempfile::tempdir().unwrap();
    let dir = Directory::new(names.path());
    let fx = Fixture::start_with_env(&dir.pairs(), "[lockout]\nmax_failures = 100\n");
    fx.ctl_ok(&["user", "enable", "alice", "--method", "totp"]);

    // Before: ALICE was "not enrolled", so the stack skipped the passcode
    // (pam_permit follows in this service) and ALICE got in with nothing.
    let other_spelling = dir.login(&fx, "ALICE", &[""]);
    assert_eq!(other_spelling.code, PAM_AUTH_ERR, "{}", other_spelling.out);
    assert!(other_spelling.shows_qr(), "ALICE is shown alice's enrollment: {}", other_spelling.out);
    let uri = other_spelling.uri().unwrap();
    assert!(uri.contains(":alice?"), "the account's own name is in the URI: {uri}");
    let wrong = dir.login(&fx, "ALICE", &["000000"]);
    assert_eq!(wrong.code, PAM_AUTH_ERR, "{}", wrong.out);

    // alice's code works for ALICE, once: the step is used for the account.
    let code = fx.code(&uri, 0);
    let ok = dir.login(&fx, "ALICE", &[&code]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    let replay = dir.login(&fx, "alice", &[&code]);
    assert_eq!(replay.code, PAM_AUTH_ERR, "{}", replay.out);
    assert!(replay.out.contains("already used"), "{}", replay.out);
    assert_eq!(fx.show("alice")["user"]["activated"], true);

    // The audit names the account and keeps the spelling typed.
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit"])).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["user"] != "ALICE"), "{audit}");
    assert!(
        entries.iter().any(|e| e["user"] == "alice"
            && e["result"] == "accept"
            && e["reason"].as_str().unwrap().contains("typed as ALICE")),
        "{audit}"
    );

    // A second name for an enabled account is refused: it would be a second secret.
    let dup = fx.ctl(&["user", "enable", "ALICE", "--method", "totp"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("same account as alice"), "{dup:?}");

    // Another account is still decided on its own: bob is not enrolled.
    let bob = dir.login(&fx, "bob", &["123456"]);
    assert_eq!(bob.code, PAM_SUCCESS, "not enrolled: pam_permit decides: {}", bob.out);
    assert!(!bob.out.contains("Passcode"), "{}", bob.out);
}

/// A user enabled before the account existed has no uid on record. A screen
/// locker (not root) is matched by uid only, so it used to get "not
/// enrolled" and skip the passcode; now it is refused until otpd links the
/// record to the account (at start and hourly), and then asked for the code.
#[test]
fn a_user_enabled_before_the_account_existed_is_not_skipped_by_a_screen_locker() {
    let _turn = support::shared();
    let names = tempfile::tempdir().unwrap();
    let dir = Directory::new(names.path());
    let mut env = dir.pairs();
    env.push(HOUSEKEEPING_LOG);
    let mut fx = Fixture::start_with_env(&env, "");
    // The start-up pass links records in the background: enabling `late`
    // and adding the account before it ran would let it link at once.
    fx.wait_for_housekeeping(1);
    fx.ctl_ok(&["user", "enable", "late", "--method", "totp"]);
    let passwd = names.path().join("passwd");
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("late:x:23600:23600:Late:/nonexistent:/bin/sh\n");
    std::fs::write(&passwd, text).unwrap();
    let locker = |fx: &Fixture| {
        let mut cmd = fx.pamdrive("otp", "late", &[b""]);
        cmd.envs(dir.pairs());
        as_uid(&mut cmd, 23600);
        run(cmd)
    };
    let before = locker(&fx);
    assert_eq!(before.code, PAM_AUTH_ERR, "not waved through as not enrolled: {}", before.out);
    assert!(before.out.contains("You may only authenticate yourself."), "{}", before.out);

    fx.stop_daemon();
    fx.start_daemon();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let after = locker(&fx);
        if after.shows_qr() {
            assert_eq!(after.code, PAM_AUTH_ERR, "{}", after.out);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "otpd never linked late's record: {}", after.out);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Logged after the record is saved: wait for the pass to end.
    fx.wait_for_housekeeping(2);
    assert!(fx.log().contains("recorded the uid of 1 user(s)"), "{}", fx.log());
}
