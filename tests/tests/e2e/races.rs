//! Races on one code: 64 logins at once, each a separate process (as sshd
//! forks one per connection) loading the built pam_otp.so into the real
//! libpam, released together from a FIFO barrier. Exactly one may succeed.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use support::*;

const N: usize = 64;

fn successes(codes: &[i32]) -> usize {
    codes.iter().filter(|&&c| c == PAM_SUCCESS).count()
}

fn audit_reasons(fx: &Fixture, user: &str) -> Vec<String> {
    let audit: serde_json::Value =
        serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", user, "--limit", "1000"])).unwrap();
    audit["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn sixty_four_parallel_logins_with_one_totp_code_exactly_one_succeeds() {
    let _turn = support::exclusive("races");
    let fx = Fixture::start("[lockout]\nmax_failures = 1000\n");
    let uri = fx.enroll_active("tara");
    let code = fx.code(&uri, 0);
    let codes = race(&fx, "otp", "tara", &[code.as_bytes()], N);
    assert_eq!(successes(&codes), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == PAM_AUTH_ERR).count(), N - 1, "{codes:?}");
    // The audit tells the same story: one acceptance of this code, 63 replays.
    let reasons = audit_reasons(&fx, "tara");
    assert_eq!(reasons.iter().filter(|r| *r == "valid code").count(), 1, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "code already used").count(), N - 1, "{reasons:?}");
}

#[test]
fn sixty_four_parallel_logins_with_one_emailed_code_exactly_one_succeeds() {
    let _turn = support::exclusive("races");
    let maildir = std::env::temp_dir().join(format!("otpd-race-mail-{}", std::process::id()));
    let fx = Fixture::start(&format!(
        "[lockout]\nmax_failures = 1000\n[email]\ndirectory = \"none\"\n[smtp]\nurl = \"file:{}\"\n",
        maildir.display()
    ));
    fx.ctl_ok(&["user", "enable", "emil", "--method", "email", "--email", "emil@example.org"]);
    let asked = fx.login("emil", &[""]);
    assert!(asked.out.contains("A code was sent to"), "{}", asked.out);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        let found = std::fs::read_dir(&maildir).ok().and_then(|d| {
            d.flatten().find_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                text.lines()
                    .map(str::trim)
                    .find(|l| l.len() == 8 && l.bytes().all(|b| b.is_ascii_digit()))
                    .map(String::from)
            })
        });
        if let Some(c) = found {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no mail in {}", maildir.display());
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let codes = race(&fx, "otp", "emil", &[code.as_bytes()], N);
    let _ = std::fs::remove_dir_all(&maildir);
    assert_eq!(successes(&codes), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == PAM_AUTH_ERR).count(), N - 1, "{codes:?}");
    let reasons = audit_reasons(&fx, "emil");
    assert_eq!(reasons.iter().filter(|r| *r == "valid emailed code").count(), 1, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| *r == "emailed code already used").count(), N - 1, "{reasons:?}");
}

#[test]
fn after_a_backwards_clock_step_a_used_code_stays_used_and_a_new_one_works_once() {
    let _turn = support::exclusive("races");
    let fx = Fixture::start("[lockout]\nmax_failures = 1000\n");
    // Activation used the previous step's code (step s-1).
    let uri = fx.enroll_active("cleo");
    let used = fx.code(&uri, -1);
    let fresh = fx.code(&uri, 0);
    // The daemon's clock jumps back one step: the used code is now the
    // current one, and the fresh code is one step ahead.
    fx.set_clock_offset(-30);
    let codes = race(&fx, "otp", "cleo", &[used.as_bytes()], N);
    assert_eq!(successes(&codes), 0, "a code used before the clock step was accepted again: {codes:?}");
    let codes = race(&fx, "otp", "cleo", &[fresh.as_bytes()], N);
    assert_eq!(successes(&codes), 1, "{codes:?}");
    let codes = race(&fx, "otp", "cleo", &[fresh.as_bytes()], N);
    assert_eq!(successes(&codes), 0, "{codes:?}");
}
