//! The escalating lockout through the real module and daemon: locks double
//! while failures continue, lock number `max_lock_periods` stays until an
//! admin unlocks, a successful login (or reset, or enable) starts over, and
//! Enter at the QR prompt is never a guess. Time moves with the daemon's
//! debug clock, never by sleeping.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_MAXTRIES, PAM_SUCCESS};
use support::*;

fn real_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The daemon's clock: real time plus the offset the test set.
struct DaemonClock<'a> {
    fx: &'a Fixture,
    offset: i64,
}

impl DaemonClock<'_> {
    fn now(&self) -> i64 {
        real_now() + self.offset
    }
    /// Moves the daemon's clock to `t`.
    fn set(&mut self, t: i64) {
        self.offset = t - real_now();
        self.fx.set_clock_offset(self.offset);
    }
    /// The code the app shows at the daemon's current time.
    fn code(&self, uri: &str) -> String {
        let totp = totp_rs::TOTP::from_url_unchecked(uri).unwrap();
        totp.generate(self.now() as u64)
    }
    /// A code that is wrong in the whole ±1 step window around the daemon's time.
    fn wrong_code(&self, uri: &str) -> String {
        let totp = totp_rs::TOTP::from_url_unchecked(uri).unwrap();
        let valid: Vec<String> = (-2..=2).map(|k| totp.generate((self.now() + 30 * k) as u64)).collect();
        ["000000", "111111", "222222"].into_iter().find(|c| !valid.iter().any(|v| v == c)).unwrap().to_string()
    }
}

/// Enables `user` and activates it with the current step's code: a step
/// boundary passing in between still leaves it inside the ±1 window.
fn enroll(fx: &Fixture, clock: &DaemonClock, name: &str) -> String {
    fx.ctl_ok(&["user", "enable", name, "--method", "totp"]);
    let uri = fx.login(name, &[""]).uri().unwrap();
    let ok = fx.login(name, &[&clock.code(&uri)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    uri
}

fn user(fx: &Fixture, name: &str) -> serde_json::Value {
    fx.show(name)["user"].clone()
}

#[test]
fn lock_periods_double_then_only_an_admin_unlocks() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 2\nlock_for = \"1m\"\nmax_lock_periods = 4\n");
    let mut clock = DaemonClock { fx: &fx, offset: 0 };
    let uri = enroll(&fx, &clock, "lee");
    for period in 1..=3u32 {
        let first = fx.login("lee", &[&clock.wrong_code(&uri)]);
        assert_eq!(first.code, PAM_AUTH_ERR, "{}", first.out);
        let before = clock.now();
        let locked = fx.login("lee", &[&clock.wrong_code(&uri)]);
        let after = clock.now();
        assert_eq!(locked.code, PAM_MAXTRIES, "{}", locked.out);
        assert!(locked.out.contains("Too many failed attempts. Try again in"), "{}", locked.out);
        let u = user(&fx, "lee");
        assert_eq!((u["locked"].as_bool(), u["lock_periods"].as_u64()), (Some(true), Some(period as u64)), "{u}");
        assert_eq!(u["failures_since_login"], 2 * period, "{u}");
        assert_eq!(u["failures"], 0, "a new lock starts a new count towards the next: {u}");
        let until = u["locked_until"].as_i64().unwrap();
        // The lock began between `before` and `after`.
        let secs = 60 << (period - 1);
        assert!(
            before + secs <= until && until <= after + secs,
            "lock {period}: {before}..{after} + {secs} vs {until}"
        );
        let table = fx.ctl_ok(&["user", "show", "lee"]);
        assert!(table.contains("locked         yes, until "), "{table}");
        assert!(table.contains(&format!("locks in a row {period} ")), "{table}");
        assert!(table.contains(&format!("failures       {} since the last login", 2 * period)), "{table}");

        // Five seconds before the end: still locked, not even asked, the right code not consumed.
        clock.set(until - 5);
        let early = fx.login("lee", &[&clock.code(&uri)]);
        assert_eq!(early.code, PAM_MAXTRIES, "{}", early.out);
        assert!(!early.out.contains("Passcode:"), "{}", early.out);
        clock.set(until);
    }
    // The daemon's own record of the three locks: 1m, 2m, 4m.
    let audit = fx.ctl_ok(&["--json", "audit", "--user", "lee"]);
    for (n, d) in [(1, "1m"), (2, "2m"), (3, "4m")] {
        assert!(audit.contains(&format!("account locked for {d} (lock {n} in a row")), "{audit}");
    }

    // The fourth lock in a row is the admin's.
    assert_eq!(fx.login("lee", &[&clock.wrong_code(&uri)]).code, PAM_AUTH_ERR);
    let last = fx.login("lee", &[&clock.wrong_code(&uri)]);
    assert_eq!(last.code, PAM_MAXTRIES, "{}", last.out);
    assert!(last.out.contains("locked until an administrator unlocks it"), "{}", last.out);
    let u = user(&fx, "lee");
    assert_eq!((u["locked"].as_bool(), u["lock_periods"].as_u64()), (Some(true), Some(4)), "{u}");
    assert!(u["admin_locked_at"].as_i64().is_some(), "{u}");
    assert!(fx.log().contains("locked until an administrator runs `otpctl user unlock lee`"), "{}", fx.log());
    let table = fx.ctl_ok(&["user", "show", "lee"]);
    assert!(table.contains("locked         yes, until an administrator unlocks it"), "{table}");
    assert!(fx.ctl_ok(&["user", "list"]).contains("until unlocked (4 locks)"));

    // A year later nothing has changed: no prompt, the right code refused.
    clock.set(clock.now() + 366 * 86400);
    let later = fx.login("lee", &[&clock.code(&uri)]);
    assert_eq!(later.code, PAM_MAXTRIES, "{}", later.out);
    assert!(!later.out.contains("Passcode:"), "{}", later.out);
    assert!(later.out.contains("until an administrator unlocks it"), "{}", later.out);
    let status = fx.ctl_ok(&["status"]);
    assert!(status.contains("1 locked"), "{status}");

    // Unlock clears it; the user is told about the failures at the next login.
    fx.ctl_ok(&["user", "unlock", "lee"]);
    let u = user(&fx, "lee");
    assert_eq!(
        (u["locked"].as_bool(), u["lock_periods"].as_u64(), u["admin_locked_at"].is_null()),
        (Some(false), Some(0), true)
    );
    let ok = fx.login("lee", &[&clock.code(&uri)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert!(ok.out.contains("There were 8 failed passcode attempt(s) since your last login"), "{}", ok.out);
    assert_eq!(user(&fx, "lee")["failures_since_login"], 0);
    let audit = fx.ctl_ok(&["--json", "audit", "--user", "lee", "--limit", "1"]);
    assert!(audit.contains("valid code; 8 failed attempt(s) and 0 lock(s) since the previous login"), "{audit}");

    // After a success the escalation starts over at lock_for.
    assert_eq!(fx.login("lee", &[&clock.wrong_code(&uri)]).code, PAM_AUTH_ERR);
    let before = clock.now();
    assert_eq!(fx.login("lee", &[&clock.wrong_code(&uri)]).code, PAM_MAXTRIES);
    let until = user(&fx, "lee")["locked_until"].as_i64().unwrap();
    assert!(until >= before + 60 && until <= clock.now() + 60, "{before} {until}");
}

#[test]
fn a_success_between_locks_starts_over_and_the_user_is_told() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 2\nlock_for = \"1m\"\n");
    let mut clock = DaemonClock { fx: &fx, offset: 0 };
    let uri = enroll(&fx, &clock, "mo");
    fx.login("mo", &[&clock.wrong_code(&uri)]);
    assert_eq!(fx.login("mo", &[&clock.wrong_code(&uri)]).code, PAM_MAXTRIES);
    clock.set(clock.now() + 61);
    fx.login("mo", &[&clock.wrong_code(&uri)]);
    let ok = fx.login("mo", &[&clock.code(&uri)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert!(
        ok.out.contains(
            "There were 3 failed passcode attempt(s) since your last login, and your account was locked 1 time(s)"
        ),
        "{}",
        ok.out
    );
    assert!(fx.log().contains("mo logged in after 3 failed attempts and 1 lock(s)"), "{}", fx.log());
    let u = user(&fx, "mo");
    assert_eq!((u["failures_since_login"].as_u64(), u["lock_periods"].as_u64()), (Some(0), Some(0)), "{u}");
    // A login with no failures before it says nothing of the kind.
    clock.set(clock.now() + 30);
    let quiet = fx.login("mo", &[&clock.code(&uri)]);
    assert_eq!(quiet.code, PAM_SUCCESS, "{}", quiet.out);
    assert!(!quiet.out.contains("failed passcode attempt"), "{}", quiet.out);
}

#[test]
fn reset_and_enable_after_disable_clear_a_lock() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 2\nlock_for = \"1h\"\n");
    let clock = DaemonClock { fx: &fx, offset: 0 };
    let uri = enroll(&fx, &clock, "rita");
    let lock = |uri: &str| {
        fx.login("rita", &[&clock.wrong_code(uri)]);
        let r = fx.login("rita", &[&clock.wrong_code(uri)]);
        assert_eq!(r.code, PAM_MAXTRIES, "{}", r.out);
        assert_eq!(user(&fx, "rita")["locked"], true);
    };

    // Lost phone while locked: the reset user sees the new QR code, not "locked".
    lock(&uri);
    fx.ctl_ok(&["user", "reset", "rita"]);
    let u = user(&fx, "rita");
    assert_eq!(
        (u["locked"].as_bool(), u["failures"].as_u64(), u["lock_periods"].as_u64()),
        (Some(false), Some(0), Some(0))
    );
    let qr = fx.login("rita", &[""]);
    assert!(qr.shows_qr(), "{}", qr.out);
    assert!(!qr.out.contains("Too many failed attempts"), "{}", qr.out);
    let uri = qr.uri().unwrap();
    let ok = fx.login("rita", &[&clock.code(&uri)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);

    // Locked, disabled, enabled again: a fresh enrollment, no lock.
    lock(&uri);
    fx.ctl_ok(&["user", "disable", "rita"]);
    assert_eq!(user(&fx, "rita")["locked"], false);
    assert!(fx.ctl_ok(&["status"]).contains(" 0 locked"));
    fx.ctl_ok(&["user", "enable", "rita", "--method", "totp"]);
    assert_eq!(user(&fx, "rita")["locked"], false);
    let qr = fx.login("rita", &[""]);
    assert!(qr.shows_qr() && !qr.out.contains("Too many failed attempts"), "{}", qr.out);
    let ok = fx.login("rita", &[&clock.code(&qr.uri().unwrap())]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
}

#[test]
fn enter_at_the_qr_prompt_is_never_a_failure() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 3\n");
    fx.ctl_ok(&["user", "enable", "quinn", "--method", "totp"]);
    for _ in 0..10 {
        let r = fx.login("quinn", &[""]);
        assert_eq!(r.code, PAM_AUTH_ERR, "{}", r.out);
        assert!(r.shows_qr(), "the QR code is shown every time: {}", r.out);
        assert!(r.out.contains("No passcode entered."), "{}", r.out);
    }
    let u = user(&fx, "quinn");
    assert_eq!(
        (u["locked"].as_bool(), u["failures"].as_u64(), u["failures_since_login"].as_u64()),
        (Some(false), Some(0), Some(0))
    );
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", "quinn"])).unwrap();
    let blank = audit["entries"].as_array().unwrap().iter().filter(|e| e["reason"] == "no code entered").count();
    assert_eq!(blank, 10, "{audit}");
    // Real guesses still count.
    let uri = fx.login("quinn", &[""]).uri().unwrap();
    let clock = DaemonClock { fx: &fx, offset: 0 };
    for _ in 0..2 {
        assert_eq!(fx.login("quinn", &[&clock.wrong_code(&uri)]).code, PAM_AUTH_ERR);
    }
    assert_eq!(fx.login("quinn", &[&clock.wrong_code(&uri)]).code, PAM_MAXTRIES);
}
