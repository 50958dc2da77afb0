//! Bulk enrollment: `otpctl user enable --group GROUP` and `--from-file FILE`.
//! nss_wrapper gives otpctl and otpd a passwd and group file of their own; the
//! host's /etc is not touched.
use crate::support;
use std::process::{Command, Output};
use support::*;

const NSS_WRAPPER: &str = "libnss_wrapper.so";

struct Directory {
    env: Vec<(String, String)>,
}

impl Directory {
    /// `staff`: `members` in its member list, plus `primary` accounts whose
    /// primary group it is (not listed as members).
    fn new(dir: &std::path::Path, members: usize, primary: usize) -> Directory {
        let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
        let mut listed = Vec::new();
        for i in 0..members {
            passwd.push_str(&format!("m{i}:x:{}:40000:M:/nonexistent:/bin/sh\n", 30000 + i));
            listed.push(format!("m{i}"));
        }
        // Listed members have their own primary group 40000 ("other").
        for i in 0..primary {
            passwd.push_str(&format!("p{i}:x:{}:40001:P:/nonexistent:/bin/sh\n", 50000 + i));
        }
        passwd.push_str("outsider:x:60000:40000:O:/nonexistent:/bin/sh\n");
        let group = format!("root:x:0:\nother:x:40000:\nstaff:x:40001:{}\n", listed.join(","));
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        std::fs::write(dir.join("group"), group).unwrap();
        Directory {
            env: vec![
                ("LD_PRELOAD".into(), NSS_WRAPPER.into()),
                ("NSS_WRAPPER_PASSWD".into(), dir.join("passwd").display().to_string()),
                ("NSS_WRAPPER_GROUP".into(), dir.join("group").display().to_string()),
            ],
        }
    }

    fn pairs(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    fn ctl(&self, fx: &Fixture, args: &[&str]) -> Output {
        Command::new(build_dir().join("otpctl"))
            .arg("--config")
            .arg(&fx.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    }

    fn ctl_ok(&self, fx: &Fixture, args: &[&str]) -> String {
        let out = self.ctl(fx, args);
        assert!(out.status.success(), "otpctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn enabled_users(fx: &Fixture) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "user", "list"])).unwrap();
    list["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["enabled"] == true)
        .map(|u| u["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn enable_group_enables_every_member_once_and_is_idempotent() {
    let _turn = support::shared();
    let names = tempfile::tempdir().unwrap();
    let dir = Directory::new(names.path(), 1000, 5);
    let fx = Fixture::start_with_env(&dir.pairs(), "");
    // One member was enabled before: counted, its secret kept.
    fx.ctl_ok(&["user", "enable", "m7"]);
    let before = fx.show("m7");

    let started = std::time::Instant::now();
    let out: serde_json::Value =
        serde_json::from_str(&dir.ctl_ok(&fx, &["--json", "user", "enable", "--group", "staff"])).unwrap();
    let took = started.elapsed();
    assert_eq!(out["type"], "enabled_many", "{out}");
    assert_eq!(out["enabled"], 1004, "1000 listed + 5 primary - m7: {out}");
    assert_eq!(out["already_enabled"], 1, "{out}");
    assert_eq!(out["skipped"], 0, "{out}");
    assert!(out["notes"].as_array().unwrap().len() <= 10, "{out}");
    assert!(took < std::time::Duration::from_secs(10), "1005 users took {took:?}");
    eprintln!("enable --group staff (1005 users, debug build): {took:?}");

    let users = enabled_users(&fx);
    assert_eq!(users.len(), 1005);
    assert!(users.iter().any(|u| u == "p4"), "primary-group members are enabled");
    assert!(!users.iter().any(|u| u == "outsider"));
    assert_eq!(fx.show("m7")["user"]["created_at"], before["user"]["created_at"]);
    assert_eq!(fx.show("m999")["user"]["activated"], false, "they enroll at their next login");

    // The uids otpctl resolved are kept (logins are decided on the account).
    // One audit row per enabled user, naming the group; all at one time (one job).
    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--limit", "5000"])).unwrap();
    let rows: Vec<&serde_json::Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"].as_str().unwrap_or("").contains("group staff"))
        .collect();
    assert_eq!(rows.len(), 1004);

    // A second run changes nothing.
    let again = dir.ctl_ok(&fx, &["user", "enable", "--group", "staff"]);
    assert!(again.contains("0 enabled, 1005 already enabled"), "{again}");
    assert_eq!(enabled_users(&fx).len(), 1005);
    assert_eq!(fx.show("m7")["user"]["created_at"], before["user"]["created_at"]);

    // An unknown group is refused.
    let none = dir.ctl(&fx, &["user", "enable", "--group", "nosuchgroup"]);
    assert_eq!(none.status.code(), Some(6), "{}", String::from_utf8_lossy(&none.stderr));
}

#[test]
fn enable_from_file_ignores_comments_and_refuses_a_bad_file_whole() {
    let _turn = support::shared();
    let names = tempfile::tempdir().unwrap();
    let dir = Directory::new(names.path(), 3, 0);
    let fx = Fixture::start_with_env(&dir.pairs(), "");

    let bad = names.path().join("bad.txt");
    std::fs::write(&bad, "# admins\nm0\n\nm1 # second\nnot a name\nm2\n-x\n").unwrap();
    let out = dir.ctl(&fx, &["user", "enable", "--from-file", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("line 5") && err.contains("line 7"), "{err}");
    assert!(!err.contains("line 2"), "{err}");
    assert!(enabled_users(&fx).is_empty(), "nothing was enabled");

    let good = names.path().join("users.txt");
    // newcomer has no account yet: enabled by name, like `user enable`.
    std::fs::write(&good, "# admins\nm0\n\nm1 # second\nm2\nm1\nnewcomer\n").unwrap();
    let first = dir.ctl_ok(&fx, &["user", "enable", "--from-file", good.to_str().unwrap()]);
    assert!(first.contains("4 users: 4 enabled, 0 already enabled"), "{first}");
    let mut users = enabled_users(&fx);
    users.sort();
    assert_eq!(users, vec!["m0", "m1", "m2", "newcomer"]);
    let second = dir.ctl_ok(&fx, &["user", "enable", "--from-file", good.to_str().unwrap()]);
    assert!(second.contains("0 enabled, 4 already enabled"), "{second}");
}

impl Directory {
    /// A login through the real libpam whose process resolves names here.
    fn login(&self, fx: &Fixture, service: &str, user: &str, answers: &[&str]) -> Run {
        let a: Vec<&[u8]> = answers.iter().map(|s| s.as_bytes()).collect();
        let mut cmd = fx.pamdrive(service, user, &a);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(cmd)
    }
}

#[test]
fn require_group_refuses_unenrolled_members_and_follows_refresh() {
    let _turn = support::shared();
    let names = tempfile::tempdir().unwrap();
    // staff: m0, m1, m2 listed; p0 by primary group.
    let dir = Directory::new(names.path(), 3, 1);
    let mut env = dir.pairs();
    env.push(HOUSEKEEPING_LOG);
    let fx = Fixture::start_with_env(&env, "require_group = \"staff\"\n");
    // The daemon also refreshes at start, in the background: once that is
    // done, the stored list changes only when the test asks.
    fx.wait_for_housekeeping(1);
    let refreshed = dir.ctl_ok(&fx, &["group", "refresh"]);
    assert!(refreshed.contains("staff: 4 member(s)"), "{refreshed}");

    for member in ["m0", "p0"] {
        let r = dir.login(&fx, "otp-probe", member, &[]);
        assert_eq!(r.code, e2e::PAM_AUTH_ERR, "{member}: {}", r.out);
        assert!(r.out.contains("not enrolled"), "{member}: {}", r.out);
    }
    let outsider = dir.login(&fx, "otp-probe", "outsider", &[]);
    assert_eq!(outsider.code, PROBE_IGNORED, "non-members stay not_enrolled: {}", outsider.out);

    // An enrolled member logs in with a code.
    dir.ctl_ok(&fx, &["user", "enable", "m1"]);
    let first = dir.login(&fx, "otp", "m1", &[""]);
    let uri = first.uri().unwrap_or_else(|| panic!("no URI in {}", first.out));
    let activate = dir.login(&fx, "otp", "m1", &[&fx.code(&uri, -1)]);
    assert_eq!(activate.code, e2e::PAM_SUCCESS, "{}", activate.out);
    let code = fx.code(&uri, 0);
    let ok = dir.login(&fx, "otp-probe", "m1", &[&code]);
    assert_eq!(ok.code, e2e::PAM_SUCCESS, "{}", ok.out);

    let audit: serde_json::Value = serde_json::from_str(&fx.ctl_ok(&["--json", "audit", "--user", "m0"])).unwrap();
    let rows = audit["entries"].as_array().unwrap();
    assert!(
        rows.iter().any(|e| e["result"] == "deny" && e["reason"].as_str().unwrap_or("").contains("require_group")),
        "{audit}"
    );

    // The directory changes: outsider joins staff, m0 leaves. Logins keep the
    // stored list until a refresh (no NSS at login).
    let group = "root:x:0:\nother:x:40000:\nstaff:x:40001:m1,m2,outsider\n";
    std::fs::write(names.path().join("group"), group).unwrap();
    // nss_wrapper rereads a file whose mtime (in seconds) changed: move it on
    // rather than wait for the clock.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(names.path().join("group")).unwrap().set_modified(later).unwrap();
    let before = dir.login(&fx, "otp-probe", "outsider", &[]);
    assert_eq!(before.code, PROBE_IGNORED, "{}", before.out);
    dir.ctl_ok(&fx, &["group", "refresh"]);
    let after = dir.login(&fx, "otp-probe", "outsider", &[]);
    assert_eq!(after.code, e2e::PAM_AUTH_ERR, "{}", after.out);
    let left = dir.login(&fx, "otp-probe", "m0", &[]);
    assert_eq!(left.code, PROBE_IGNORED, "{}", left.out);
}

#[test]
fn group_refresh_without_require_group_is_refused() {
    let _turn = support::shared();
    let fx = Fixture::start("");
    let out = fx.ctl(&["group", "refresh"]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The same bulk enable on a server on PostgreSQL: one transaction there
/// too (every row it wrote carries the same `xmin`, the id of the
/// transaction that wrote it), and idempotent.
#[test]
fn enable_group_on_postgresql_is_one_transaction() {
    let _turn = support::shared();
    let pg = e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
    let names = tempfile::tempdir().unwrap();
    let dir = Directory::new(names.path(), 1000, 5);
    let port = free_port();
    let setup = Setup {
        top: "role = \"server\"\n".into(),
        database: Some(pg.url()),
        extra: format!("dbus = false\n[fleet]\nlisten = [\"127.0.0.1:{port}\"]\nnames = [\"127.0.0.1\"]\n"),
        env: dir.env.clone(),
        ..Setup::default()
    };
    let fx = Fixture::start_setup(tempfile::tempdir().unwrap(), setup);
    fx.ctl_ok(&["user", "enable", "m7"]);

    let out: serde_json::Value =
        serde_json::from_str(&dir.ctl_ok(&fx, &["--json", "user", "enable", "--group", "staff"])).unwrap();
    assert_eq!((out["enabled"].as_u64(), out["already_enabled"].as_u64()), (Some(1004), Some(1)), "{out}");
    let q = |sql: &str| pg.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).trim().to_string();
    assert_eq!(q("SELECT count(*) FROM users WHERE enabled"), "1005");
    assert_eq!(
        q("SELECT count(DISTINCT xmin::text) FROM users WHERE enabled AND name <> 'm7'"),
        "1",
        "one transaction"
    );
    let audit_tx = q("SELECT count(DISTINCT xmin::text) FROM audit WHERE result LIKE '%group staff%'");
    assert_eq!(audit_tx, "1", "the audit rows in the same transaction");
    assert_eq!(
        q("SELECT count(*) FROM audit WHERE result LIKE '%group staff%' AND xmin::text = \
           (SELECT min(xmin::text) FROM users WHERE name = 'm999')"),
        "1004",
        "users and audit rows written together"
    );

    let again = dir.ctl_ok(&fx, &["user", "enable", "--group", "staff"]);
    assert!(again.contains("0 enabled, 1005 already enabled"), "{again}");
    assert_eq!(q("SELECT count(*) FROM users WHERE enabled"), "1005");
    assert_eq!(enabled_users(&fx).len(), 1005);
}
