//! The fleet-scale benchmark (tests/src/bin/fleet-scale.rs, docs/BENCHMARKS.md
//! "Fleet scale") with 50 hosts, so that it cannot rot: it completes, every
//! host links, comes back after the server's restart, and the report's
//! counts add up. Nothing here is timed.
use crate::support;
use serde_json::Value;
use std::process::Command;

#[test]
fn the_fleet_scale_driver_links_fifty_hosts_restarts_the_server_and_its_counts_add_up() {
    let _turn = support::exclusive("fleet");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(support::build_dir().join("fleet-scale"))
        .args(["--hosts", "50", "--sample", "5", "--baseline", "3", "--logins", "30", "--users", "40"])
        .arg("--bin")
        .arg(support::build_dir())
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fleet-scale failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("== fleet scale: 50 hosts"), "{stdout}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let n = |path: &str| -> f64 {
        path.split('.').fold(&r, |v, k| &v[k]).as_f64().unwrap_or_else(|| panic!("{path} missing in {r:#}"))
    };
    assert_eq!(n("hosts"), 50.0);
    assert_eq!(n("idle_links"), 50.0, "every host keeps its idle link");
    assert_eq!(n("restart.reconnected"), 50.0, "every host is back after the restart");
    assert!(n("server_fd_limit_soft") > 1024.0, "otpd raised its own open files limit: {r:#}");
    assert!(n("fds_idle") >= n("fds_no_links") + 50.0, "{r:#}");
    assert!(n("rss_kb_idle") > 0.0 && n("issued_per_s") > 0.0 && n("handshakes_per_s") > 0.0, "{r:#}");
    for phase in ["baseline", "through_idle_fleet", "restart.storm", "restart.during_reconnect"] {
        let sum = n(&format!("{phase}.accepted")) + n(&format!("{phase}.denied")) + n(&format!("{phase}.unavailable"));
        assert_eq!(sum, n(&format!("{phase}.logins")), "{phase}: {r:#}");
        // A valid code is never refused: only a server that is not there fails a login.
        assert_eq!(n(&format!("{phase}.denied")), 0.0, "{phase}: {r:#}");
    }
    for phase in ["baseline", "through_idle_fleet"] {
        assert_eq!(n(&format!("{phase}.logins")), 30.0);
        assert_eq!(n(&format!("{phase}.accepted")), 30.0, "{phase}: {r:#}");
    }
    assert_eq!(
        n("restart.unavailable_while_down") + n("restart.unavailable_after_ready"),
        n("restart.storm.unavailable"),
        "{r:#}"
    );
    assert!(n("restart.storm.logins") > 0.0, "{r:#}");
}
