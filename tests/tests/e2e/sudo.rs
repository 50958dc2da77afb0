//! Real sudo, with pam_unix for the password and pam_otp for the passcode.
//! Runs in a private mount namespace over temp copies of /etc/pam.d,
//! /etc/sudoers, /etc/passwd, /etc/shadow and /etc/group: the host's files
//! are never changed, and the test user exists only inside the namespace.
use crate::support;

use support::*;

use support::SudoSandbox as Sandbox;
use support::SUDO_PASSWORD as PASSWORD;

#[test]
fn sudo_asks_password_then_passcode() {
    let _turn = support::shared();
    let fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let sandbox = Sandbox::new(&fx);
    let uri = fx.enroll_active("otpsudo");

    let code = fx.code(&uri, 1);
    let ok = sandbox.sudo(&[PASSWORD, &code]);
    assert_eq!(ok.code, 0, "{}", ok.out);
    assert!(ok.out.lines().any(|l| l.trim() == "root"), "the command ran as root: {}", ok.out);
    // The prompt text is the daemon's.
    assert!(ok.out.contains("Passcode:"), "{}", ok.out);

    // Replayed code: refused (sudo retries up to three times, then gives up).
    let replay = sandbox.sudo(&[PASSWORD, &code]);
    assert_ne!(replay.code, 0, "{}", replay.out);
    assert!(!replay.out.lines().any(|l| l.trim() == "root"), "{}", replay.out);

    // Wrong code: refused.
    let wrong = sandbox.sudo(&[PASSWORD, "000000"]);
    assert_ne!(wrong.code, 0, "{}", wrong.out);
    assert!(!wrong.out.lines().any(|l| l.trim() == "root"));

    // Wrong password: pam_unix is `required`, so the stack still asks for the
    // passcode (not revealing which factor failed), and sudo refuses.
    let badpw = sandbox.sudo(&["nope", &fx.code(&uri, 0)]);
    assert_ne!(badpw.code, 0, "{}", badpw.out);
}

#[test]
fn sudo_refuses_when_daemon_is_down() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    let sandbox = Sandbox::new(&fx);
    let uri = fx.enroll_active("otpsudo");
    fx.stop_daemon();
    let r = sandbox.sudo(&[PASSWORD, &fx.code(&uri, 1)]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(!r.out.lines().any(|l| l.trim() == "root"), "{}", r.out);
}

/// sudo calls pam_authenticate with PAM_SILENT, so applications show no
/// messages from it; pam_otp then carries what the user must see in the
/// prompt text. A user who was only enabled enrolls through `sudo -S`
/// alone: the test reads sudo's terminal output like a user, takes the URI
/// from it, computes the code from that URI and types it.
#[test]
fn sudo_alone_enrolls_and_says_why_it_refuses() {
    let _turn = support::shared();
    use std::io::Write;
    let mut fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let sandbox = Sandbox::new(&fx);
    let enabled: serde_json::Value =
        serde_json::from_str(&fx.ctl_ok(&["--json", "user", "enable", "otpsudo", "--method", "totp", "--print-uri"]))
            .unwrap();
    let stored_uri = enabled["otpauth_uri"].as_str().unwrap().to_string();

    let mut cmd = sandbox.command("");
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{PASSWORD}").unwrap();
    // sudo -S writes prompts to stderr: read it as it comes, until the
    // passcode prompt (which ends without a newline).
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stderr, &mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut bytes = Vec::new();
    while !seen.contains("Passcode: ") {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(chunk) => bytes.extend(chunk),
            Err(e) => {
                let _ = child.kill();
                panic!("no passcode prompt from sudo ({e:?}): {seen}");
            }
        }
        seen = String::from_utf8_lossy(&bytes).into_owned();
    }
    assert!(seen.contains('\u{2588}'), "the QR code is on sudo's terminal: {seen}");
    assert!(seen.contains("secret key manually"), "{seen}");
    let uri = seen.lines().find_map(|l| l.strip_prefix("URI: ")).unwrap().trim().to_string();
    assert_eq!(uri, stored_uri, "what sudo showed is what the daemon stored");
    // Computed independently of our TOTP code, for the daemon's pinned time,
    // so no step boundary can fall between here and its check.
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    let now = format!("@{}", fx.pin_clock());
    let code = std::process::Command::new("oathtool").args(["--totp", "-b", secret, "-N", &now]).output().unwrap();
    assert!(code.status.success());
    stdin.write_all(&code.stdout).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let rest: Vec<u8> = rx.try_iter().flatten().collect();
    let rest = String::from_utf8_lossy(&rest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{seen}{rest}{stdout}");
    assert_eq!(stdout.trim(), "root");
    assert_eq!(fx.show("otpsudo")["user"]["activated"], true);

    // A wrong code reads as a wrong passcode, not as a wrong password.
    let wrong = sandbox.sudo(&[PASSWORD, "000000", ""]);
    assert_ne!(wrong.code, 0, "{}", wrong.out);
    assert!(wrong.out.contains("Wrong passcode. (press Enter)"), "{}", wrong.out);
    // So does a replayed one.
    let code = String::from_utf8_lossy(&code.stdout).trim().to_string();
    let replay = sandbox.sudo(&[PASSWORD, &code, ""]);
    assert_ne!(replay.code, 0, "{}", replay.out);
    assert!(replay.out.contains("already used"), "{}", replay.out);

    // With otpd down, sudo's output names the passcode service.
    fx.stop_daemon();
    let down = sandbox.sudo(&[PASSWORD, ""]);
    assert_ne!(down.code, 0, "{}", down.out);
    assert!(down.out.contains("one-time passcode service is unavailable"), "{}", down.out);
    assert!(!down.out.lines().any(|l| l.trim() == "root"), "{}", down.out);
}
