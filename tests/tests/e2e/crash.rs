//! Crash safety: a storm of real logins (the built module in the real
//! libpam, several threads) while otpd is killed with SIGKILL at random
//! points, 24 times, and started again each time. After every restart:
//! no code accepted before the kill is accepted again, every accepted
//! login is in the audit table, the failure counter and the email re-send
//! limit did not reset, and `PRAGMA integrity_check` is ok.
use crate::support;
use common::client::Client;
use common::proto::{AdminRequest, AdminResponse, Method};
use e2e::PAM_SUCCESS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::*;

const USERS: usize = 300;
const KILLS: usize = 24;
const STORM_THREADS: usize = 6;

fn now_step() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 / 30
}

/// Accepted logins: user → steps whose codes were accepted.
type Accepted = Arc<Mutex<Vec<(String, i64)>>>;

struct User {
    name: String,
    totp: totp_rs::TOTP,
    /// Highest step this user has presented a code for (accepted or not).
    last_tried: i64,
}

/// Picks a user with an untried step in the window and claims it.
fn claim(users: &Mutex<Vec<User>>, cursor: &mut usize) -> Option<(String, String, i64)> {
    let mut users = users.lock().unwrap();
    let now = now_step();
    for _ in 0..users.len() {
        *cursor = (*cursor + 1) % users.len();
        let u = &mut users[*cursor];
        let step = (u.last_tried + 1).max(now - 1);
        if step <= now + 1 {
            u.last_tried = step;
            return Some((u.name.clone(), u.totp.generate(step as u64 * 30), step));
        }
    }
    None
}

fn code_for(totp: &totp_rs::TOTP, step: i64) -> String {
    totp.generate(step as u64 * 30)
}

/// Acceptances per user in the audit table, read from the database file
/// itself while otpd is down: what survived the crash.
fn accepts_in_audit(fx: &Fixture) -> HashMap<String, usize> {
    let out = std::process::Command::new("sqlite3")
        .arg(fx.path("state/otpd.db"))
        .arg("SELECT user, count(*) FROM audit WHERE result = 'accept' GROUP BY user;")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|').and_then(|(u, n)| Some((u.to_string(), n.parse().ok()?))))
        .collect()
}

fn integrity(fx: &Fixture) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(fx.path("state/otpd.db"))
        .arg("PRAGMA integrity_check;")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn sigkill_during_a_login_storm_loses_nothing() {
    let _turn = support::exclusive("crash");
    let maildir = std::env::temp_dir().join(format!("otpd-crash-mail-{}", std::process::id()));
    // Debug otpd holds each transaction 10 ms before COMMIT, so kills often
    // land between a decision and its commit.
    let mut fx = Fixture::start_with_env(
        &[("OTPD_TEST_COMMIT_DELAY_MS", "10")],
        &format!(
            "[lockout]\nmax_failures = 100000\n[email]\ndirectory = \"none\"\n[smtp]\nurl = \"file:{}\"\n",
            maildir.display()
        ),
    );
    let admin = fx.path("run/admin.sock");
    let mut users = Vec::new();
    for i in 0..USERS {
        let name = format!("storm{i}");
        let mut c = Client::connect(&admin, Duration::from_secs(30), &[0]).unwrap();
        let req = AdminRequest::UserEnable { user: name.clone(), method: Method::Totp, email: None };
        let Ok(AdminResponse::Enrolled { otpauth_uri: Some(uri), .. }) = c.call(&req) else { panic!("enable {name}") };
        let totp = totp_rs::TOTP::from_url_unchecked(&uri).unwrap();
        users.push(User { name, totp, last_tried: i64::MIN / 2 });
    }
    fx.ctl_ok(&["user", "enable", "hammer", "--method", "totp"]);
    fx.ctl_ok(&["user", "enable", "mailer", "--method", "email", "--email", "mailer@example.org"]);

    let users = Arc::new(Mutex::new(users));
    let accepted: Accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // The storm ends with the test however it ends: after a panic below its
    // threads would go on logging in while later tests run in this process.
    struct EndStorm(Arc<AtomicBool>);
    impl Drop for EndStorm {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _end_storm = EndStorm(stop.clone());
    let services = fx.path("services").display().to_string();
    let storm: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let (users, accepted, stop, services) = (users.clone(), accepted.clone(), stop.clone(), services.clone());
            std::thread::spawn(move || {
                let mut cursor = t * USERS / STORM_THREADS;
                while !stop.load(Ordering::Relaxed) {
                    let Some((user, code, step)) = claim(&users, &mut cursor) else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let login =
                        e2e::authenticate(Some(&services), "otp", &user, vec![code.into_bytes()], None, None, false);
                    if login.code == PAM_SUCCESS {
                        accepted.lock().unwrap().push((user, step));
                    } else {
                        // Daemon down: do not spin.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();

    // xorshift, seeded from the clock; the seed is printed to replay a failure.
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut rand = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let (mut wrong_acked, mut new_mails, mut resent) = (0u32, 0, 0);
    let mut total_accepted_before_kills = 0;
    for round in 0..KILLS {
        // Some wrong codes for "hammer", counted only when otpd answered.
        for _ in 0..3 {
            let r = fx.login("hammer", &["000000"]);
            if r.out.contains("Wrong passcode") || r.out.contains("A passcode is a number") {
                wrong_acked += 1;
            }
        }
        // One emailed-code request: the first sends a code, later ones
        // re-send it (at most resends_per_hour), never a new one.
        let r = fx.login("mailer", &[""]);
        new_mails += r.out.matches("A code was sent to").count();
        resent += r.out.matches("Your code was sent again").count();

        std::thread::sleep(Duration::from_millis(20 + rand(400)));
        let mut child = fx.daemon.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let before: Vec<(String, i64)> = accepted.lock().unwrap().clone();
        total_accepted_before_kills = before.len();

        assert_eq!(integrity(&fx), "ok", "integrity after kill {round}");
        // Every accepted login is in the audit table.
        let audited = accepts_in_audit(&fx);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (user, _) in &before {
            *seen.entry(user.as_str()).or_insert(0) += 1;
        }
        for (user, n) in seen {
            let a = audited.get(user).copied().unwrap_or(0);
            assert!(a >= n, "kill {round}: {user} logged in {n} times but the audit has {a} acceptances");
        }
        fx.start_daemon();

        // Nothing accepted before the kill is accepted again (codes still
        // inside the window are presented once more).
        let now = now_step();
        let recent: Vec<&(String, i64)> = before.iter().filter(|(_, step)| *step >= now - 1).collect();
        for (user, step) in recent.iter().rev().take(15) {
            let code = {
                let users = users.lock().unwrap();
                code_for(&users.iter().find(|u| &u.name == user).unwrap().totp, *step)
            };
            let again = fx.login(user, &[&code]);
            assert_ne!(again.code, PAM_SUCCESS, "kill {round}: {user}'s code for step {step} was accepted twice");
        }
        // Counters survived: every acknowledged failure is still counted.
        let hammer = fx.show("hammer");
        assert!(
            hammer["user"]["failures"].as_u64().unwrap() >= wrong_acked as u64,
            "kill {round}: failures {} < {wrong_acked} acknowledged wrong codes",
            hammer["user"]["failures"]
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        t.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&maildir);
    assert!(total_accepted_before_kills >= 50, "the storm logged in only {total_accepted_before_kills} times");
    assert!(new_mails <= 1, "{new_mails} new codes in one hour: the new-code interval was reset by a restart");
    assert!(resent <= 5, "{resent} re-sends in one hour: the re-send cap was reset by a restart");
    assert_eq!(integrity(&fx), "ok");
    eprintln!("{total_accepted_before_kills} logins accepted during the storm, {wrong_acked} wrong codes acknowledged");
    // After all that, enrollment and logins still work.
    let uri = fx.enroll_active("survivor");
    let r = fx.login("survivor", &[&fx.code(&uri, 0)]);
    assert_eq!(r.code, PAM_SUCCESS, "{}", r.out);
}
