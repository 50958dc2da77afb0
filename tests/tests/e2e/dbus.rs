//! org.otpd.Admin1 on a private dbus-daemon started by the test (its own
//! config and socket; the host's system bus is not used).
use crate::support;
use e2e::{PAM_MAXTRIES, PAM_SUCCESS};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Bus {
    daemon: Child,
    monitor: Option<Child>,
    address: String,
}

impl Drop for Bus {
    fn drop(&mut self) {
        for c in [Some(&mut self.daemon), self.monitor.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A permissive bus: every refusal seen in these tests comes from otpd
/// itself, unless `include` adds a policy file.
fn start_bus(dir: &std::path::Path, include: Option<&str>) -> Bus {
    let sock = dir.join("bus.sock");
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  {}
</busconfig>"#,
            sock.display(),
            include.map(|p| format!("<include>{p}</include>")).unwrap_or_default()
        ),
    )
    .unwrap();
    let daemon =
        Command::new("dbus-daemon").arg(format!("--config-file={}", conf.display())).arg("--nofork").spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "dbus-daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Bus { daemon, monitor: None, address: format!("unix:path={}", sock.display()) }
}

fn send(bus: &Bus, uid: Option<u32>, method: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("dbus-send");
    cmd.arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.otpd", "/org/otpd/Admin1"])
        .arg(format!("org.otpd.Admin1.{method}"))
        .args(args);
    if let Some(u) = uid {
        as_uid(&mut cmd, u);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn admin_interface_access_control_and_signals() {
    let _turn = support::shared();
    let mut fx = Fixture::start("[lockout]\nmax_failures = 2\n");
    let mut bus = start_bus(fx.dir.path(), None);
    fx.stop_daemon();
    fx.env.push(("DBUS_SYSTEM_BUS_ADDRESS".into(), bus.address.clone()));
    fx.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&send(&bus, None, "Status", &[])).contains("\"type\":\"status\"") {
        assert!(Instant::now() < deadline, "otpd did not appear on the bus: {}", fx.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = fx.path("signals.log");
    bus.monitor = Some(
        Command::new("dbus-monitor")
            .args(["--address", &bus.address])
            .arg("type='signal',interface='org.otpd.Admin1'")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The monitor has subscribed once it shows a signal of that interface.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("member=Probe") {
        assert!(Instant::now() < deadline, "dbus-monitor never subscribed");
        let probe = Command::new("dbus-send")
            .arg(format!("--bus={}", bus.address))
            .args(["--type=signal", "/org/otpd/Admin1", "org.otpd.Admin1.Probe"])
            .output()
            .unwrap();
        assert!(probe.status.success(), "{}", text(&probe));
        std::thread::sleep(Duration::from_millis(50));
    }

    let r = send(&bus, None, "UserEnable", &["string:alice", "string:totp", "string:"]);
    assert!(r.status.success() && text(&r).contains("enrolled"), "{}", text(&r));
    let shown = text(&send(&bus, None, "UserShow", &["string:alice"]));
    assert!(shown.contains("\"activated\":false"), "{shown}");
    assert!(send(&bus, None, "UserShow", &["string:nobody-here"]).status.code() != Some(0));

    // Unprivileged callers: AccessDenied, nothing changed.
    let denied = send(&bus, Some(65534), "UserDisable", &["string:alice"]);
    assert!(!denied.status.success());
    assert!(text(&denied).contains("org.freedesktop.DBus.Error.AccessDenied"), "{}", text(&denied));
    assert!(text(&send(&bus, Some(65534), "Status", &[])).contains("AccessDenied"));
    assert_eq!(fx.show("alice")["user"]["enabled"], true);

    // Signals: activation, then a lockout.
    let first = fx.login("alice", &[""]);
    let uri = first.uri().unwrap();
    assert_eq!(fx.login("alice", &[&fx.code(&uri, 0)]).code, PAM_SUCCESS);
    fx.login("alice", &["000000"]);
    assert_eq!(fx.login("alice", &["000001"]).code, PAM_MAXTRIES);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        if seen.contains("member=EnrollmentActivated") && seen.contains("member=UserLockedOut") {
            assert!(seen.contains("string \"alice\""), "{seen}");
            break;
        }
        assert!(Instant::now() < deadline, "signals not seen: {seen}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let unlocked = send(&bus, None, "UserUnlock", &["string:alice"]);
    assert!(unlocked.status.success(), "{}", text(&unlocked));
    let audit = text(&send(&bus, None, "Audit", &["string:alice", "int64:0", "uint32:10"]));
    assert!(audit.contains("unlock") && audit.contains("by uid 0"), "{audit}");
}

#[test]
fn shipped_bus_policy_is_valid_and_restrictive() {
    let _turn = support::shared();
    // The policy file parses in a real dbus-daemon and lets nobody else call otpd.
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/dbus/org.otpd.conf");
    let bus = start_bus(dir.path(), Some(policy));
    let address = bus.address.clone();
    // Root may own the name; nobody may not.
    let own = |uid: Option<u32>| {
        let mut c = Command::new("dbus-send");
        c.arg(format!("--bus={address}")).args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            "string:org.otpd",
            "uint32:0",
        ]);
        if let Some(u) = uid {
            as_uid(&mut c, u);
        }
        text(&c.output().unwrap())
    };
    let as_nobody = own(Some(65534));
    assert!(as_nobody.contains("AccessDenied"), "{as_nobody}");
    let as_root = own(None);
    assert!(as_root.contains("uint32 1"), "root becomes primary owner: {as_root}");
}
