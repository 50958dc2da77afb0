//! Real sudo, with pam_unix for the password and pam_otp for the passcode.
//! Runs in a private mount namespace over temp copies of /etc/pam.d,
//! /etc/sudoers, /etc/passwd, /etc/shadow and /etc/group: the host's files
//! are never changed, and the test user exists only inside the namespace.
mod support;

use support::*;

const PASSWORD: &str = "correct horse";

struct Sandbox {
    etc: std::path::PathBuf,
    input: std::path::PathBuf,
}

impl Sandbox {
    fn new(fx: &Fixture) -> Sandbox {
        let etc = fx.path("etc");
        std::fs::create_dir_all(etc.join("pam.d")).unwrap();
        for entry in std::fs::read_dir("/etc/pam.d").unwrap().flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                std::fs::copy(entry.path(), etc.join("pam.d").join(entry.file_name())).unwrap();
            }
        }
        for f in ["passwd", "shadow", "group"] {
            std::fs::copy(format!("/etc/{f}"), etc.join(f)).unwrap();
        }
        let hash = std::process::Command::new("openssl").args(["passwd", "-6", PASSWORD]).output().unwrap();
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        let append = |f: &str, line: String| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(etc.join(f)).unwrap();
            writeln!(file, "{line}").unwrap();
        };
        append("passwd", "otpsudo:x:23456:23456:sudo test:/nonexistent:/bin/sh".into());
        append("shadow", format!("otpsudo:{hash}:19000:0:99999:7:::"));
        append("group", "otpsudo:x:23456:".into());
        std::fs::write(
            etc.join("pam.d/sudo"),
            format!(
                "auth required pam_unix.so\n\
                 auth [success=ok ignore=ignore default=die] {} socket={}\n\
                 account required pam_permit.so\nsession required pam_permit.so\n",
                module_path().display(),
                fx.pam_socket().display()
            ),
        )
        .unwrap();
        // sudo insists on a root-owned 0440 sudoers.
        let sudoers = etc.join("sudoers");
        std::fs::write(&sudoers, "Defaults !lecture, !fqdn\notpsudo ALL=(ALL) ALL\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)).unwrap();
        Sandbox { input: fx.path("sudo-input"), etc }
    }

    /// `printf 'password\ncode\n' | sudo -S -k id -un` as the test user.
    fn sudo(&self, lines: &[&str]) -> Run {
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&self.input, input).unwrap();
        let script = format!(
            "set -e; E={e}; for f in passwd shadow group sudoers; do mount --bind $E/$f /etc/$f; done; \
             mount --bind $E/pam.d /etc/pam.d; \
             setpriv --reuid=23456 --regid=23456 --clear-groups -- sudo -S -k id -un < {input}",
            e = self.etc.display(),
            input = self.input.display()
        );
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        run(cmd)
    }
}

#[test]
fn sudo_asks_password_then_passcode() {
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
    let mut fx = Fixture::start("");
    let sandbox = Sandbox::new(&fx);
    let uri = fx.enroll_active("otpsudo");
    fx.stop_daemon();
    let r = sandbox.sudo(&[PASSWORD, &fx.code(&uri, 1)]);
    assert_ne!(r.code, 0, "{}", r.out);
    assert!(!r.out.lines().any(|l| l.trim() == "root"), "{}", r.out);
}
