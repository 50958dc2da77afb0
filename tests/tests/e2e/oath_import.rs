//! Moving a site from pam_oath: a users.oath used by the real pam_oath.so
//! (which rewrites it after each login) is imported with `otpctl import
//! oath`; both its TOTP and its HOTP user then log in through pam_otp in the
//! real libpam, and the code pam_oath accepted last is refused.
use crate::support;
use e2e::{PAM_AUTH_ERR, PAM_SUCCESS};
use std::process::Command;
use support::*;

const PAM_OATH: &str = "/lib/x86_64-linux-gnu/security/pam_oath.so";
const TOTP_HEX: &str = "3132333435363738393031323334353637383930";
const HOTP_HEX: &str = "00112233445566778899aabbccddeeff00112233";

fn oathtool(args: &[&str]) -> String {
    let out = Command::new("oathtool").args(args).output().unwrap();
    assert!(out.status.success(), "oathtool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hotp(counter: u64) -> String {
    oathtool(&["--hotp", "-c", &counter.to_string(), HOTP_HEX])
}

/// The TOTP code for the daemon's time plus `steps` steps.
fn totp(fx: &Fixture, steps: i64) -> String {
    let t = fx.pin_clock() + steps * 30;
    oathtool(&["--totp", TOTP_HEX, "-N", &format!("@{t}")])
}

/// A login through the real pam_oath.so, reading and rewriting `usersfile`.
fn pam_oath_login(fx: &Fixture, usersfile: &std::path::Path, user: &str, code: &str) -> i32 {
    std::fs::write(
        fx.path("services/oath"),
        format!(
            "auth required {PAM_OATH} usersfile={} window=20 digits=6\naccount required pam_permit.so\n",
            usersfile.display()
        ),
    )
    .unwrap();
    fx.login_with("oath", user, &[code.as_bytes()]).code
}

fn counter(fx: &Fixture, user: &str) -> u64 {
    fx.show(user)["user"]["hotp_counter"].as_u64().unwrap()
}

#[test]
fn pam_oath_users_keep_their_tokens_after_import() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 1000\n");
    fx.write_service("otp", "");
    let usersfile = fx.path("users.oath");
    std::fs::write(
        &usersfile,
        format!(
            "# pam_oath users\nHOTP/T30\talice\t-\t{TOTP_HEX}\nHOTP\tbob\t-\t{HOTP_HEX}\t0\n\
             HOTP\tpinned\t4711\t{HOTP_HEX}\nHOTP/T30 broken - nothex\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&usersfile, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    // Both users log in with pam_oath first, which records what they used.
    // pam_oath reads the real clock, so its TOTP code is oathtool's for now.
    let alice_used = oathtool(&["--totp", TOTP_HEX]);
    assert_eq!(pam_oath_login(&fx, &usersfile, "alice", &alice_used), PAM_SUCCESS);
    assert_eq!(pam_oath_login(&fx, &usersfile, "bob", &hotp(0)), PAM_SUCCESS);
    // Two presses without a login: pam_oath's window finds counter 2.
    assert_eq!(pam_oath_login(&fx, &usersfile, "bob", &hotp(2)), PAM_SUCCESS);
    assert_eq!(pam_oath_login(&fx, &usersfile, "bob", &hotp(2)), PAM_AUTH_ERR, "pam_oath refuses a replay too");
    let written = std::fs::read_to_string(&usersfile).unwrap();
    assert!(written.contains(&hotp(2)), "pam_oath recorded its last code: {written}");

    // A dry run changes nothing; the PIN line and the malformed line are reported.
    let file = usersfile.to_str().unwrap();
    let dry = fx.ctl_ok(&["import", "oath", file, "--dry-run"]);
    assert!(dry.contains("alice: would be imported") && dry.contains("bob: would be imported"), "{dry}");
    assert!(dry.contains("line 4: skipped") && dry.contains("PIN"), "{dry}");
    assert!(dry.contains("line 5: skipped"), "{dry}");
    assert!(dry.contains("2 imported, 0 unchanged, 2 skipped (dry run"), "{dry}");
    assert!(!dry.contains(HOTP_HEX) && !dry.contains(TOTP_HEX), "no secret in the report: {dry}");
    assert!(!fx.ctl(&["user", "show", "bob"]).status.success(), "the dry run imported bob");

    let report = fx.ctl_ok(&["import", "oath", file]);
    assert!(report.contains("2 imported, 0 unchanged, 2 skipped"), "{report}");
    assert!(!fx.ctl(&["user", "show", "pinned"]).status.success());
    // Idempotent: the same file again changes nothing.
    let again = fx.ctl_ok(&["import", "oath", file]);
    assert!(again.contains("0 imported, 2 unchanged, 2 skipped"), "{again}");
    let bob = fx.show("bob");
    assert_eq!(bob["user"]["method"], "hotp");
    assert_eq!(bob["user"]["activated"], true);
    assert_eq!(counter(&fx, "bob"), 3, "past the code pam_oath accepted last");
    let shown = fx.ctl_ok(&["user", "show", "bob"]);
    assert!(shown.contains("hotp counter   3"), "{shown}");

    // TOTP: the code pam_oath accepted is refused (its step is used), the
    // next step's works; no QR code (imported means activated).
    fx.pin_clock();
    let replay = fx.login("alice", &[&alice_used]);
    assert_eq!(replay.code, PAM_AUTH_ERR, "{}", replay.out);
    assert!(!replay.shows_qr(), "{}", replay.out);
    fx.set_clock_offset(30);
    let ok = fx.login("alice", &[&totp(&fx, 1)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert!(!ok.shows_qr(), "{}", ok.out);

    // HOTP: the code pam_oath accepted last is refused.
    let replay = fx.login("bob", &[&hotp(2)]);
    assert_eq!(replay.code, PAM_AUTH_ERR, "{}", replay.out);
    assert!(!replay.shows_qr(), "{}", replay.out);
    assert_eq!(counter(&fx, "bob"), 3);

    // 64 logins at once with one code: exactly one.
    let code = hotp(3);
    let codes = race(&fx, "otp", "bob", &[code.as_bytes()], 64);
    assert_eq!(codes.iter().filter(|&&c| c == PAM_SUCCESS).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == PAM_AUTH_ERR).count(), 63, "{codes:?}");
    assert_eq!(counter(&fx, "bob"), 4);

    // A token 5 ahead (presses without a login) is inside the window.
    let ok = fx.login("bob", &[&hotp(4 + 5)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    assert_eq!(counter(&fx, "bob"), 10);

    // 200 ahead is not; resync with two consecutive codes fixes it.
    let far = fx.login("bob", &[&hotp(210)]);
    assert_eq!(far.code, PAM_AUTH_ERR, "{}", far.out);
    assert_eq!(counter(&fx, "bob"), 10);
    let bad = fx.ctl(&["user", "resync", "bob", &hotp(211), &hotp(213)]);
    assert!(!bad.status.success(), "codes that are not consecutive");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nothing changed"), "{bad:?}");
    let too_far = fx.ctl(&["user", "resync", "bob", &hotp(1200), &hotp(1201)]);
    assert!(!too_far.status.success(), "beyond 1000 ahead");
    assert_eq!(counter(&fx, "bob"), 10);
    fx.ctl_ok(&["user", "resync", "bob", &hotp(211), &hotp(212)]);
    assert_eq!(counter(&fx, "bob"), 213);
    let ok = fx.login("bob", &[&hotp(213)]);
    assert_eq!(ok.code, PAM_SUCCESS, "{}", ok.out);
    let refused = fx.ctl(&["user", "resync", "alice", &hotp(1), &hotp(2)]);
    assert!(!refused.status.success(), "resync is for HOTP users");

    // Audited: the import and the resync.
    let audit: serde_json::Value =
        serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", "bob", "--limit", "1000"])).unwrap();
    let results: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["result"].as_str().unwrap_or("")).collect();
    assert!(results.iter().any(|r| r.starts_with("import from pam_oath (hotp")), "{results:?}");
    assert!(results.contains(&"resync (counter 10 -> 213)"), "{results:?}");
}
