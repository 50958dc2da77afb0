//! What an admin sees from otpctl and the generated man pages: help for
//! every command, aligned tables, quiet exit on a closed pipe, messages that
//! say what to do (the admin group's name; how to start otpd with or without
//! systemd).
use crate::support;
use std::process::{Command, Stdio};
use support::*;

fn otpctl() -> Command {
    Command::new(build_dir().join("otpctl"))
}

#[test]
fn every_command_has_help_text_and_every_man_page_a_whatis_line() {
    let _turn = support::shared();
    let out = otpctl().args(["user", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["enable", "disable", "reset", "show", "list", "unlock", "passwd"] {
        let line = help.lines().find(|l| l.trim_start().starts_with(&format!("{cmd} "))).unwrap_or("");
        assert!(line.split_whitespace().count() > 1, "`otpctl user {cmd}` has no help text:\n{help}");
    }

    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(build_dir().join("otpd-man")).arg(dir.path()).output().unwrap();
    assert!(o.status.success());
    let mut pages = 0;
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let page = std::fs::read_to_string(e.path()).unwrap();
        let name = page.split(".SH NAME\n").nth(1).and_then(|r| r.lines().next()).unwrap_or("");
        // whatis/lexgrog need "name \- description".
        let (_, what) = name.split_once(" \\- ").unwrap_or_else(|| panic!("{:?}: NAME is {name:?}", e.path()));
        assert!(!what.trim().is_empty(), "{:?}", e.path());
        pages += 1;
    }
    assert!(pages >= 15, "{pages} pages");
    let otpd = std::fs::read_to_string(dir.path().join("otpd.8")).unwrap();
    let name = otpd.split(".SH NAME\n").nth(1).and_then(|r| r.lines().next()).unwrap();
    assert_eq!(name.matches("otpd").count(), 1, "otpd(8) repeats its name: {name}");
    for section in [".SH FILES", ".SH ENVIRONMENT", ".SH LOGGING"] {
        assert!(otpd.contains(section), "otpd(8) lacks {section}");
    }
    assert!(otpd.contains("/var/lib/otpd/secret.key") && otpd.contains("OTPD_LOG"));
}

#[test]
fn user_list_columns_line_up() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    fx.ctl_ok(&["user", "enable", "al"]);
    fx.ctl_ok(&["user", "enable", "a-rather-long-account-name@example.org"]);
    fx.ctl_ok(&["user", "enable", "em", "--method", "email", "--email", "em@example.org"]);
    let list = fx.ctl_ok(&["user", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    let header = lines[0];
    let starts: Vec<usize> = ["METHOD", "ENABLED", "ACTIVATED", "FAILURES", "LOCKED UNTIL"]
        .iter()
        .map(|h| header.find(h).unwrap_or_else(|| panic!("{h} not in {header}")))
        .collect();
    for row in &lines[1..] {
        for &s in &starts {
            let b = row.as_bytes();
            assert!(b.len() > s && b[s] != b' ' && b[s - 1] == b' ', "column at {s} misaligned:\n{list}");
        }
    }
}

#[test]
fn a_closed_pipe_ends_otpctl_quietly() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    for i in 0..3 {
        fx.ctl_ok(&["user", "enable", &format!("user{i}")]);
    }
    // The reader is gone before otpctl writes a byte: every write gets EPIPE.
    let mut child = otpctl()
        .arg("--config")
        .arg(&fx.config)
        .args(["user", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked") && err.is_empty(), "{err}");

    // The way admins meet it.
    let cmd = format!("{} --config {} user list | head -1", build_dir().join("otpctl").display(), fx.config.display());
    let out = Command::new("bash").args(["-o", "pipefail", "-c", &cmd]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("USER"));
}

#[test]
fn refusals_say_what_to_do() {
    let _turn = support::shared();
    let mut fx = Fixture::start("");
    // uid nobody may not be able to enter the checkout: run the staged copy.
    let mut cmd = Command::new(staged("otpctl"));
    cmd.arg("--config").arg(&fx.config).arg("status");
    as_uid(&mut cmd, 65534);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("`otpadmin` group"), "the permission error names the group: {err}");

    fx.stop_daemon();
    let out = fx.ctl(&["status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("systemctl start otpd"), "{err}");
    assert!(err.contains(&format!("/usr/sbin/otpd --config {}", fx.config.display())), "{err}");
}
