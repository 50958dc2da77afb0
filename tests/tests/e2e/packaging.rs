//! What ships in packaging/ is what the docs promise.
use crate::support;
use std::process::Command;

fn file(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/../packaging/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// systemd-analyze's exposure score of packaging/`unit` is at most 2.0.
fn assert_exposure_at_most_2(unit: &str) {
    let path = format!("{}/../packaging/{unit}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("systemd-analyze").args(["security", "--offline=true", &path]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split(&format!("Overall exposure level for {unit}:")).nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 2.0, "{unit}: exposure {score}:\n{text}");
}

#[test]
fn systemd_unit_exposure_is_at_most_2() {
    let _turn = support::shared();
    assert_exposure_at_most_2("otpd.service");
    let unit = file("otpd.service");
    for line in ["LimitCORE=0", "StateDirectory=otpd", "RuntimeDirectoryPreserve=yes", "Type=notify"] {
        assert!(unit.contains(line), "missing {line}");
    }
}

/// The web console's unit: its own user, no more exposure than otpd's, and
/// disabled until configured (the package never enables it).
#[test]
fn otpweb_unit_is_unprivileged_and_its_exposure_is_at_most_2() {
    let _turn = support::shared();
    assert_exposure_at_most_2("otpweb.service");
    let unit = file("otpweb.service");
    for line in ["User=otpweb", "Group=otpweb", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"] {
        assert!(unit.contains(line), "missing {line}");
    }
    assert!(file("otpd.sysusers").contains("u otpweb -"));
    let postinst = file("debian/postinst");
    assert!(postinst.contains("update-state 'otpweb.service'") && !postinst.contains("enable 'otpweb.service'"));
    let pam = file("pam.d/otpweb");
    let active: Vec<&str> = pam.lines().filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(active, ["@include common-auth", "@include common-account"]);
}

#[test]
fn pam_auth_update_profile_is_off_by_default_and_fails_closed() {
    let _turn = support::shared();
    let p = file("pam-configs/pam_otp");
    assert!(p.lines().any(|l| l.trim() == "Default: no"));
    assert!(p.contains("[success=ok ignore=ignore default=die]\tpam_otp.so"));
    let sshd = file("examples/sshd_config.d-pam_otp.conf");
    assert!(sshd.contains("AuthenticationMethods publickey,keyboard-interactive"));
}
