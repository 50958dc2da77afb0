//! The Debian package as an admin meets it: its contents, lintian, and the
//! real apt-get/dpkg installing, removing and purging it on a host without
//! systemd. The apt test runs in a private mount and PID namespace where
//! /etc, /usr and /var are overlays (the host's files are the read-only lower
//! layer, every write lands in a temp dir) and /run is an empty tmpfs: dpkg,
//! the maintainer scripts, pam-auth-update, systemd-sysusers and the daemon
//! all run for real, and the host is not touched. The same run then covers
//! the systemd branch of the scripts (against logging stand-ins for
//! systemctl and deb-systemd-invoke) and a host without systemd-sysusers and
//! systemd-tmpfiles (the groupadd / install -d fallback).
use crate::support;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use support::*;

/// Built once per test binary, into the target dir (replaced by the next
/// run, so nothing accumulates in /tmp); the tests only read it.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = build_dir().join("package-test");
        let profile = build_dir().file_name().unwrap().to_string_lossy().into_owned();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/build-deb.sh");
        let o = Command::new("bash")
            .arg(script)
            .args(["--profile", &profile, "--no-build", "--fast", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().into()
    })
}

fn multiarch() -> String {
    String::from_utf8_lossy(&Command::new("gcc").arg("-print-multiarch").output().unwrap().stdout).trim().to_string()
}

fn field(deb: &Path, name: &str) -> String {
    let o = Command::new("dpkg-deb").arg("-f").arg(deb).arg(name).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn package_contents_control_and_checksums() {
    let _turn = support::exclusive("package");
    let deb = deb();
    let list =
        String::from_utf8_lossy(&Command::new("dpkg-deb").arg("-c").arg(deb).output().unwrap().stdout).into_owned();
    let multiarch = multiarch();
    for path in [
        // Where Debian 12's own modules are (libpam-modules ships /lib/<multiarch>/security).
        format!("./lib/{multiarch}/security/pam_otp.so"),
        "./usr/sbin/otpd".into(),
        "./usr/sbin/otpctl".into(),
        "./lib/systemd/system/otpd.service".into(),
        // The web console: its binary and unit, the PAM service otpd checks its passwords with.
        "./usr/sbin/otpweb".into(),
        "./lib/systemd/system/otpweb.service".into(),
        "./etc/pam.d/otpweb".into(),
        "./usr/share/pam-configs/pam_otp".into(),
        "./usr/share/dbus-1/system.d/org.otpd.conf".into(),
        "./usr/lib/sysusers.d/otpd.conf".into(),
        "./usr/lib/tmpfiles.d/otpd.conf".into(),
        "./etc/otpd/otpd.toml".into(),
        "./usr/share/doc/pam-otp/copyright".into(),
        "./usr/share/doc/pam-otp/changelog.gz".into(),
        "./usr/share/man/man8/otpd.8.gz".into(),
        "./usr/share/man/man8/otpctl.8.gz".into(),
        "./usr/share/man/man8/otpctl-user-enable.8.gz".into(),
        "./usr/share/man/man8/otpctl-user-list.8.gz".into(),
        "./usr/share/man/man8/pam_otp.8.gz".into(),
        "./usr/share/man/man8/otpweb.8.gz".into(),
        "./usr/share/man/man5/otpd.toml.5.gz".into(),
        // A fleet: one example configuration per role.
        "./usr/share/doc/pam-otp/examples/otpd-server.toml".into(),
        "./usr/share/doc/pam-otp/examples/otpd-agent.toml".into(),
    ] {
        assert!(list.lines().any(|l| l.ends_with(&path)), "{path} missing:\n{list}");
    }
    assert!(!list.contains(&format!("./usr/lib/{multiarch}/security")), "{list}");
    assert!(list.lines().next().unwrap().starts_with("drwxr-xr-x root/root"), "{list}");

    // Depends from dpkg-shlibdeps: the libraries the binaries link, libc6 versioned.
    let depends = field(deb, "Depends");
    for lib in ["libpam0g", "libgcc-s1", "libc6 (>= ", "libpam-runtime"] {
        assert!(depends.contains(lib), "Depends lacks {lib}: {depends}");
    }
    assert!(!field(deb, "Maintainer").contains("localhost"));

    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x");
    assert!(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&x).status().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(x.join("DEBIAN/conffiles")).unwrap().trim(),
        "/etc/otpd/otpd.toml\n/etc/pam.d/otpweb"
    );
    // md5sums covers every shipped file but the conffile, and matches.
    let sums = std::fs::read_to_string(x.join("DEBIAN/md5sums")).unwrap();
    assert!(sums.contains(&format!("  lib/{multiarch}/security/pam_otp.so")), "{sums}");
    assert!(sums.contains("  usr/sbin/otpd\n") && !sums.contains("etc/otpd"), "{sums}");
    let check = Command::new("md5sum").arg("-c").arg("--quiet").arg(x.join("DEBIAN/md5sums")).current_dir(&x).output();
    assert!(check.unwrap().status.success());
    for s in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(x.join("DEBIAN").join(s)).unwrap();
        assert!(Command::new("sh").arg("-n").arg(x.join("DEBIAN").join(s)).status().unwrap().success(), "{s} syntax");
        for line in text.lines().filter(|l| l.trim_start().starts_with("systemctl")) {
            assert!(line.contains("daemon-reload"), "{s} calls systemctl directly: {line}");
        }
    }
    // Stripped, as dh_strip would: no symbol table, no debug info (only
    // Rust's loaded .debug_gdb_scripts section, which strip must keep).
    for bin in ["usr/sbin/otpd", "usr/sbin/otpctl", "usr/sbin/otpweb", &format!("lib/{multiarch}/security/pam_otp.so")]
    {
        let sections = Command::new("readelf").arg("-S").arg(x.join(bin)).output().unwrap();
        let sections = String::from_utf8_lossy(&sections.stdout);
        assert!(!sections.contains(".symtab") && !sections.contains(".debug_info"), "{bin} is not stripped");
    }
}

#[test]
fn lintian_reports_no_errors_or_warnings() {
    let _turn = support::exclusive("package");
    let deb = deb();
    let out =
        Command::new("lintian").args(["--fail-on", "error,warning", "--tag-display-limit", "0"]).arg(deb).output();
    let out = out.expect("lintian (apt install lintian; scripts/deps.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let bad: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    assert!(bad.is_empty() && out.status.success(), "lintian:\n{text}");
}

/// Runs `script` with bash in a private mount+PID namespace where /etc, /usr
/// and /var are overlays on the host's (writes go to `work`) and /run is an
/// empty tmpfs, so the host looks like a container without systemd.
fn on_a_copy_of_this_host(work: &Path, script: &str) -> (bool, String) {
    let setup = format!(
        "set -e; W={w}
         for d in etc usr var; do
           mkdir -p $W/$d.upper $W/$d.work
           mount -t overlay overlay -o lowerdir=/$d,upperdir=$W/$d.upper,workdir=$W/$d.work /$d
         done
         mount -t tmpfs tmpfs /run
         set +e
         export DEBIAN_FRONTEND=noninteractive
         {script}",
        w = work.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "bash", "-c", &setup])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Splits the transcript at "=== NAME" markers.
fn part(text: &str, name: &str) -> String {
    text.split(&format!("=== {name}\n")).nth(1).unwrap_or("").split("=== ").next().unwrap_or("").to_string()
}

#[test]
fn apt_install_remove_and_purge_on_a_host_without_systemd() {
    let _turn = support::exclusive("package");
    let deb = deb();
    let work = tempfile::tempdir().unwrap();
    let multiarch = multiarch();
    let script = format!(
        r#"
        echo "=== install"
        apt-get install -y {deb} 2>&1; echo "exit $?"
        echo "=== state after install"
        stat -c '%a %U %n' /var/lib/otpd /run/otpd
        getent group otpadmin >/dev/null && echo "group otpadmin exists"
        getent passwd otpweb | cut -d: -f1,6,7 | sed 's/^/user /'
        ls /lib/{multiarch}/security/pam_otp.so
        grep -c pam_otp /etc/pam.d/common-auth
        echo "=== otpctl without a daemon"
        otpctl status 2>&1; echo "exit $?"
        echo "=== daemon"
        /usr/sbin/otpd --config /etc/otpd/otpd.toml >/var/tmp/otpd.log 2>&1 &
        OTPD=$!
        for i in $(seq 200); do [ -S /run/otpd/admin.sock ] && break; sleep 0.05; done
        otpctl status >/dev/null 2>&1 && echo "otpd answers"
        pam-auth-update --enable pam_otp
        grep -c pam_otp.so /etc/pam.d/common-auth
        echo "=== hand-edited sudo"
        cp /etc/pam.d/sudo /var/tmp/sudo.orig
        cp /usr/share/doc/pam-otp/examples/pam.d-sudo /etc/pam.d/sudo
        apt-get remove -y pam-otp 2>&1; echo "exit $?"
        echo "=== state after refusal"
        dpkg-query -W -f='${{Status}}\n' pam-otp
        ls /lib/{multiarch}/security/pam_otp.so
        grep -c pam_otp.so /etc/pam.d/common-auth
        kill -0 $OTPD && echo "otpd still running"
        echo "=== remove"
        cp /var/tmp/sudo.orig /etc/pam.d/sudo
        apt-get remove -y pam-otp 2>&1; echo "exit $?"
        echo "=== state after remove"
        grep -q State:.Z /proc/$OTPD/status 2>/dev/null || ! [ -e /proc/$OTPD ] && echo "otpd stopped"
        ls /lib/{multiarch}/security/pam_otp.so 2>&1
        grep -rl pam_otp /etc/pam.d; echo "pam.d references: $?"
        [ -d /var/lib/otpd ] && echo "state kept"
        echo "=== purge"
        apt-get purge -y pam-otp 2>&1; echo "exit $?"
        echo "=== state after purge"
        ls -d /var/lib/otpd /etc/otpd 2>&1
        dpkg-query -W -f='${{Status}}\n' pam-otp 2>&1
        echo "=== with systemd"
        # The systemd branch of the scripts, against stand-ins that log their calls.
        # (Replaced in the overlay: apt runs dpkg with its own PATH.)
        mkdir -p /run/systemd/system
        for c in systemctl deb-systemd-invoke; do
          printf '#!/bin/sh\necho "%s $*" >> /var/tmp/systemd.log\n' $c > /usr/bin/$c
        done
        apt-get install -y {deb} 2>&1; echo "exit $?"
        apt-get remove -y pam-otp 2>&1; echo "exit $?"
        echo "=== systemd calls"
        cat /var/tmp/systemd.log
        echo "=== without systemd-sysusers and systemd-tmpfiles"
        apt-get purge -y pam-otp >/dev/null 2>&1
        rm -f /usr/bin/systemd-sysusers /usr/bin/systemd-tmpfiles /run/systemd/system -r
        groupdel otpadmin; rm -rf /run/otpd
        apt-get install -y {deb} 2>&1; echo "exit $?"
        stat -c '%a %U %n' /var/lib/otpd /run/otpd
        getent group otpadmin >/dev/null && echo "group otpadmin exists"
        getent passwd otpweb | cut -d: -f1,6,7 | sed 's/^/user /'
        echo "=== end"
        "#,
        deb = deb.display()
    );
    let (ok, text) = on_a_copy_of_this_host(work.path(), &script);
    assert!(ok, "{text}");

    let install = part(&text, "install");
    assert!(install.contains("exit 0"), "{text}");
    assert!(install.contains("systemd is not running here, so otpd was NOT started"), "{install}");
    assert!(!install.contains("warning"), "{install}");
    assert!(install.contains("/usr/sbin/otpd --config /etc/otpd/otpd.toml &"), "{install}");
    let state = part(&text, "state after install");
    assert!(state.contains("700 root /var/lib/otpd") && state.contains("755 root /run/otpd"), "{state}");
    assert!(state.contains("group otpadmin exists"), "{state}");
    assert!(state.contains("user otpweb:/nonexistent:/usr/sbin/nologin"), "{state}");
    assert!(state.trim_end().ends_with("\n0"), "installed, not enabled:\n{state}");

    let no_daemon = part(&text, "otpctl without a daemon");
    assert!(no_daemon.contains("exit 5"), "{no_daemon}");
    assert!(no_daemon.contains("systemctl start otpd") && no_daemon.contains("/usr/sbin/otpd --config"), "{no_daemon}");
    let daemon = part(&text, "daemon");
    assert!(daemon.contains("otpd answers"), "{text}");

    // The shipped sudo example, hand-copied as the README says: removal refused, nothing changed.
    let refused = part(&text, "hand-edited sudo");
    assert!(!refused.contains("exit 0"), "{refused}");
    assert!(refused.contains("NOT removing pam-otp") && refused.contains("/etc/pam.d/sudo: auth"), "{refused}");
    let after = part(&text, "state after refusal");
    assert!(after.contains("ok installed"), "{after}");
    assert!(after.contains("pam_otp.so\n1\n"), "module and profile still in place:\n{after}");
    assert!(after.contains("otpd still running"), "{after}");

    let remove = part(&text, "remove");
    assert!(remove.contains("exit 0"), "{text}");
    assert!(!remove.to_lowercase().contains("warning"), "{remove}");
    let after = part(&text, "state after remove");
    assert!(after.contains("otpd stopped"), "the old daemon must not keep running:\n{after}");
    assert!(after.contains("No such file"), "{after}");
    assert!(after.contains("pam.d references: 1"), "no stack may name the missing module:\n{after}");
    assert!(after.contains("state kept"), "{after}");

    let purge = part(&text, "purge");
    assert!(purge.contains("exit 0"), "{purge}");
    // With the module under /usr/lib/<multiarch>/security (libpam-modules ships
    // that directory as /lib/...), dpkg warned here that it could not remove it.
    assert!(!purge.to_lowercase().contains("warning"), "dpkg warned at purge:\n{purge}");
    let with_systemd = part(&text, "with systemd");
    assert!(!with_systemd.contains("NOT started") && with_systemd.matches("exit 0").count() == 2, "{with_systemd}");
    let calls = part(&text, "systemd calls");
    assert!(calls.contains("deb-systemd-invoke start otpd.service"), "{calls}");
    // The console goes first: it depends on otpd.
    assert!(calls.contains("deb-systemd-invoke stop otpweb.service otpd.service"), "{calls}");
    assert!(!calls.contains("start otpweb"), "the console stays off until configured: {calls}");
    let fallback = part(&text, "without systemd-sysusers and systemd-tmpfiles");
    assert!(fallback.contains("exit 0") && fallback.contains("700 root /var/lib/otpd"), "{fallback}");
    assert!(fallback.contains("755 root /run/otpd") && fallback.contains("group otpadmin exists"), "{fallback}");
    assert!(fallback.contains("user otpweb:/nonexistent:/usr/sbin/nologin"), "{fallback}");
    let after = part(&text, "state after purge");
    assert!(after.contains("/var/lib/otpd': No such file") && after.contains("/etc/otpd': No such file"), "{after}");
}
