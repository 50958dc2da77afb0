//! Real OpenSSH: sshd on 127.0.0.1 with its own config, publickey first and
//! then keyboard-interactive through PAM (pam_otp), and the real ssh client
//! answering prompts through SSH_ASKPASS. sshd runs in a private mount
//! namespace over temp copies of /etc/pam.d, /etc/passwd, /etc/shadow and
//! /etc/group, where the test user exists; the host is not changed.
use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const USER: &str = "otpssh";

struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &std::path::Path) {
    let ok = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path).status().unwrap();
    assert!(ok.success());
}

fn start_sshd(fx: &Fixture) -> Sshd {
    let w = fx.path("ssh");
    let etc = w.join("etc");
    std::fs::create_dir_all(etc.join("pam.d")).unwrap();
    std::fs::create_dir_all(w.join("keys")).unwrap();
    for entry in std::fs::read_dir("/etc/pam.d").unwrap().flatten() {
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            std::fs::copy(entry.path(), etc.join("pam.d").join(entry.file_name())).unwrap();
        }
    }
    for f in ["passwd", "shadow", "group"] {
        std::fs::copy(format!("/etc/{f}"), etc.join(f)).unwrap();
    }
    let append = |f: &str, line: &str| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(etc.join(f)).unwrap();
        writeln!(file, "{line}").unwrap();
    };
    append("passwd", &format!("{USER}:x:23457:23457:ssh test:/tmp:/bin/sh"));
    // A password the test never uses: the key is the first factor.
    append("shadow", &format!("{USER}:$6$x$notusednotusednotused:19000:0:99999:7:::"));
    append("group", &format!("{USER}:x:23457:"));
    std::fs::write(
        etc.join("pam.d/sshd"),
        format!(
            "auth [success=ok ignore=ignore default=die] {} socket={}\naccount required pam_permit.so\nsession required pam_permit.so\n",
            module_path().display(),
            fx.pam_socket().display()
        ),
    )
    .unwrap();
    keygen(&w.join("hostkey"));
    keygen(&w.join("client"));
    std::fs::copy(w.join("client.pub"), w.join("keys").join(USER)).unwrap();
    std::fs::write(w.join("answer"), "").unwrap();
    let askpass = w.join("askpass");
    std::fs::write(&askpass, format!("#!/bin/sh\necho \"$1\" >> {0}/prompts\ncat {0}/answer\n", w.display())).unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    std::fs::write(
        w.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {w}/hostkey\nPidFile {w}/sshd.pid\nUsePAM yes\n\
             KbdInteractiveAuthentication yes\nPasswordAuthentication no\nPubkeyAuthentication yes\n\
             AuthenticationMethods publickey,keyboard-interactive\nAuthorizedKeysFile {w}/keys/%u\nStrictModes no\n\
             PermitRootLogin no\nLogLevel VERBOSE\n",
            w = w.display()
        ),
    )
    .unwrap();
    let script = format!(
        "set -e; E={e}; for f in passwd shadow group; do mount --bind $E/$f /etc/$f; done; \
         mount --bind $E/pam.d /etc/pam.d; mkdir -p /run/sshd; exec /usr/sbin/sshd -D -f {w}/sshd_config -E {w}/sshd.log",
        e = etc.display(),
        w = w.display()
    );
    let child = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).spawn().unwrap();
    let sshd = Sshd { child, dir: w, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(sshd.dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sshd
}

impl Sshd {
    /// `ssh user@127.0.0.1 whoami`, answering every prompt with `answer`.
    fn ssh(&self, answer: &str) -> Run {
        std::fs::write(self.dir.join("answer"), format!("{answer}\n")).unwrap();
        // script(1) gives ssh a pty, as for a person at a terminal; prompts
        // still go to askpass (SSH_ASKPASS_REQUIRE=force).
        let ssh = format!(
            "ssh -p {} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
             -o NumberOfPasswordPrompts=1 -o ConnectTimeout=10 {USER}@127.0.0.1 whoami",
            self.port,
            self.dir.join("client").display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &ssh, "/dev/null"])
            .env("SSH_ASKPASS", self.dir.join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null());
        run(cmd)
    }

    fn prompts(&self) -> String {
        std::fs::read_to_string(self.dir.join("prompts")).unwrap_or_default()
    }
}

fn logged_in(r: &Run) -> bool {
    r.code == 0 && r.out.lines().any(|l| l.trim() == USER)
}

#[test]
fn ssh_key_then_passcode() {
    let _turn = support::shared();
    let mut fx = Fixture::start("[lockout]\nmax_failures = 100\n");
    let sshd = start_sshd(&fx);
    fx.ctl_ok(&["user", "enable", USER]);

    // Enrollment: the QR text reaches the client (sshd sends PAM's info
    // text with the keyboard-interactive prompt, which ssh hands to askpass);
    // a wrong code is refused.
    let first = sshd.ssh("000000");
    assert!(!logged_in(&first), "{}", first.out);
    let prompts = sshd.prompts();
    let uri = prompts
        .lines()
        .find_map(|l| l.split("URI: ").nth(1).map(|u| u.trim().to_string()))
        .unwrap_or_else(|| panic!("enrollment not shown to the ssh client: {prompts}\n{}", first.out));
    assert!(
        prompts.contains('\u{2588}') && prompts.contains("Passcode:"),
        "QR blocks and prompt reach the client: {prompts}"
    );

    // The first correct code activates and the command runs.
    let code = fx.code(&uri, 0);
    let ok = sshd.ssh(&code);
    assert!(logged_in(&ok), "{}\n{}", ok.out, std::fs::read_to_string(sshd.dir.join("sshd.log")).unwrap_or_default());
    assert_eq!(fx.show(USER)["user"]["activated"], true);

    // Replay and wrong code refused; the next step's code works, without QR.
    let replay = sshd.ssh(&code);
    assert!(!logged_in(&replay), "{}", replay.out);
    assert!(!logged_in(&sshd.ssh("123456")));
    std::fs::write(sshd.dir.join("prompts"), "").unwrap();
    let next = sshd.ssh(&fx.code(&uri, 1));
    assert!(logged_in(&next), "{}", next.out);
    assert!(!sshd.prompts().contains("otpauth://"), "no QR once activated: {}", sshd.prompts());

    // otpd down: refused.
    fx.stop_daemon();
    let down = sshd.ssh(&fx.code(&uri, 1));
    assert!(!logged_in(&down), "{}", down.out);
}
