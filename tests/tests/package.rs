//! The Debian package: contents, maintainer scripts, and what they do to a
//! PAM configuration — run against the real pam-auth-update on temp copies
//! of /etc/pam.d, /usr/share/pam-configs and /var/lib/pam in a private mount
//! namespace (the host's files are not touched).
mod support;
use std::path::Path;
use std::process::Command;
use support::*;

fn build_deb(out: &Path) -> std::path::PathBuf {
    let profile = build_dir().file_name().unwrap().to_string_lossy().into_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/build-deb.sh");
    let o = Command::new("bash")
        .arg(script)
        .args(["--profile", &profile, "--no-build", "--fast", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().into()
}

#[test]
fn package_contents_and_pam_registration() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let list =
        String::from_utf8_lossy(&Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap().stdout).into_owned();
    let multiarch = String::from_utf8_lossy(&Command::new("gcc").arg("-print-multiarch").output().unwrap().stdout)
        .trim()
        .to_string();
    for path in [
        format!("./usr/lib/{multiarch}/security/pam_otp.so"),
        "./usr/sbin/otpd".into(),
        "./usr/sbin/otpctl".into(),
        "./lib/systemd/system/otpd.service".into(),
        "./usr/share/pam-configs/pam_otp".into(),
        "./usr/share/dbus-1/system.d/org.otpd.conf".into(),
        "./usr/lib/sysusers.d/otpd.conf".into(),
        "./etc/otpd/otpd.toml".into(),
        "./usr/share/man/man8/otpd.8.gz".into(),
        "./usr/share/man/man8/otpctl.8.gz".into(),
        "./usr/share/man/man8/otpctl-user-enable.8.gz".into(),
        "./usr/share/man/man8/pam_otp.8.gz".into(),
        "./usr/share/man/man5/otpd.toml.5.gz".into(),
    ] {
        assert!(list.lines().any(|l| l.ends_with(&path)), "{path} missing:\n{list}");
    }
    assert!(list.lines().next().unwrap().starts_with("drwxr-xr-x root/root"), "{list}");

    let x = dir.path().join("x");
    assert!(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&x).status().unwrap().success());
    let conffiles = std::fs::read_to_string(x.join("DEBIAN/conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/otpd/otpd.toml");
    for s in ["postinst", "prerm", "postrm"] {
        assert!(Command::new("sh").arg("-n").arg(x.join("DEBIAN").join(s)).status().unwrap().success(), "{s} syntax");
    }

    // Register with the real pam-auth-update: installed, not enabled; enabled
    // on request; removed by prerm so no stack names a missing module.
    let w = dir.path().join("work");
    std::fs::create_dir_all(w.join("stub")).unwrap();
    // addgroup would edit the host's /etc/group: record the call instead.
    std::fs::write(w.join("stub/addgroup"), format!("#!/bin/sh\necho \"$@\" >> {}/addgroup.log\n", w.display()))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(w.join("stub/addgroup"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = format!(
        "set -e; W={w}; X={x}
         for d in pamd pamconfigs varlibpam; do mkdir -p $W/$d; done
         cp -a /etc/pam.d/. $W/pamd/; cp -a /usr/share/pam-configs/. $W/pamconfigs/
         [ -d /var/lib/pam ] && cp -a /var/lib/pam/. $W/varlibpam/ || true
         mkdir -p /var/lib/pam
         mount --bind $W/pamd /etc/pam.d; mount --bind $W/pamconfigs /usr/share/pam-configs; mount --bind $W/varlibpam /var/lib/pam
         cp $X/usr/share/pam-configs/pam_otp /usr/share/pam-configs/pam_otp
         PATH=$W/stub:$PATH sh $X/DEBIAN/postinst configure
         echo '--- after install'; cat /etc/pam.d/common-auth /etc/pam.d/common-session
         DEBIAN_FRONTEND=noninteractive pam-auth-update --enable pam_otp
         echo '--- after enable'; cat /etc/pam.d/common-auth /etc/pam.d/common-session
         sh $X/DEBIAN/prerm remove
         echo '--- after remove'; cat /etc/pam.d/common-auth /etc/pam.d/common-session",
        w = w.display(),
        x = x.display()
    );
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let part = |name: &str| {
        text.split(&format!("--- {name}")).nth(1).unwrap_or("").split("--- ").next().unwrap_or("").to_string()
    };
    assert!(!part("after install").contains("pam_otp"), "Default: no must not enable it:\n{text}");
    let enabled = part("after enable");
    assert!(enabled.contains("[success=ok ignore=ignore default=die]") && enabled.contains("pam_otp.so"), "{text}");
    assert!(!part("after remove").contains("pam_otp"), "prerm must unregister:\n{text}");
    assert!(std::fs::read_to_string(w.join("addgroup.log")).unwrap_or_default().contains("otpadmin"));
}
