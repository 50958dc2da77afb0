//! otp-bench: complete PAM authentications through the real libpam, pam_otp.so
//! against a running otpd, next to pam_permit.so measured in the same run
//! with the same driver. Prints auths/s, p50, p99 and the ratio to pam_permit.
//!
//!   otp-bench [--procs 1,8] [--users 3000]
//!
//! Each measured login is a distinct, already activated user presenting a
//! valid current code (single use means a code can only log in once). Run it
//! from a release build: `cargo build --release && target/release/otp-bench`.
use common::client::Client;
use common::proto::{AdminRequest, AdminResponse, Method};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        return worker(&args);
    }
    let procs: Vec<usize> = arg(&args, "--procs")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    let users: usize = arg(&args, "--users").and_then(|u| u.parse().ok()).unwrap_or(3000);
    let bin = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("otp-bench.{}", std::process::id()));
    std::fs::create_dir_all(dir.join("services")).ok();
    std::fs::create_dir_all(dir.join("state")).ok();
    let sock = dir.join("run/pam.sock");
    let admin = dir.join("run/admin.sock");
    let config = dir.join("otpd.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\npam_socket = \"{}\"\nadmin_socket = \"{}\"\ndatabase = \"{}/state/otpd.db\"\nkey_file = \"{}/state/secret.key\"\nmax_connections = 512\n",
            sock.display(),
            admin.display(),
            dir.display(),
            dir.display()
        ),
    )
    .ok();
    std::fs::write(
        dir.join("services/otp"),
        format!(
            "auth [success=ok ignore=ignore default=die] {}/libpam_otp.so socket={}\nauth required pam_permit.so\n",
            bin.display(),
            sock.display()
        ),
    )
    .ok();
    std::fs::write(dir.join("services/permit"), "auth required pam_permit.so\n").ok();

    let mut otpd = Command::new(bin.join("otpd"))
        .arg("--config")
        .arg(&config)
        .env("OTPD_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join("otpd").display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    println!("otp-bench: complete pam_authenticate calls (pam_start_confdir + authenticate + pam_end) through libpam");
    println!("{:>3} {:<10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10}", "P", "module", "auths", "auths/s", "p50 ms", "p99 ms", "rejected", "replays", "vs permit");
    let mut next_user = 0usize;
    for &p in &procs {
        // Fresh users for every round: each code can only be used once.
        let list = enroll(&admin, next_user, users);
        next_user += users;
        let users_file = dir.join(format!("users-{p}"));
        std::fs::write(&users_file, list.join("\n")).ok();
        run_round(&bin, &dir, "otp", &users_file, users, p, "activate");
        let permit = run_round(&bin, &dir, "permit", &users_file, users, p, "measure");
        let otp = run_round(&bin, &dir, "otp", &users_file, users, p, "measure");
        for (name, r) in [("pam_permit", &permit), ("pam_otp", &otp)] {
            println!(
                "{:>3} {:<10} {:>7} {:>10.0} {:>9.3} {:>9.3} {:>9} {:>8} {:>9.3}x",
                p,
                name,
                r.count,
                r.rate,
                r.p50,
                r.p99,
                r.rejected,
                r.replays_accepted,
                r.rate / permit.rate
            );
        }
    }
    let rss = std::fs::read_to_string(format!("/proc/{}/status", otpd.id()))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(|l| l.trim().to_string()))
        .unwrap_or_default();
    println!("otpd resident memory after the run: {rss}");
    let _ = Command::new("kill").arg(otpd.id().to_string()).status();
    let _ = otpd.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn enroll(admin: &Path, first: usize, n: usize) -> Vec<String> {
    let threads = 8;
    let chunks: Vec<Vec<usize>> = (0..threads).map(|t| (first + t..first + n).step_by(threads).collect()).collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|ids| {
            let admin = admin.to_path_buf();
            std::thread::spawn(move || {
                ids.into_iter()
                    .filter_map(|i| {
                        let user = format!("bench{i}");
                        let mut c = Client::connect(&admin, Duration::from_secs(30), &[0]).ok()?;
                        match c.call(&AdminRequest::UserEnable { user: user.clone(), method: Method::Totp, email: None }).ok()? {
                            AdminResponse::Enrolled { otpauth_uri: Some(uri), .. } => Some(format!("{user} {uri}")),
                            _ => None,
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let list: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    assert_eq!(list.len(), n, "enrolling bench users failed");
    list
}

struct Round {
    count: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    rejected: usize,
    replays_accepted: usize,
}

fn run_round(bin: &Path, dir: &Path, service: &str, users: &PathBuf, n: usize, procs: usize, phase: &str) -> Round {
    let per = n / procs;
    let children: Vec<_> = (0..procs)
        .map(|i| {
            Command::new(bin.join("otp-bench"))
                .args(["--worker", service])
                .arg(dir.join("services"))
                .arg(users)
                .arg((i * per).to_string())
                .arg(per.to_string())
                .arg(phase)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("worker: {e}"))
        })
        .collect();
    let (mut lat, mut rejected, mut replays, mut start, mut end) = (Vec::new(), 0, 0, u128::MAX, 0u128);
    for c in children {
        let out = c.wait_with_output().unwrap_or_else(|e| panic!("worker: {e}"));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut f = line.split_whitespace();
            match (f.next(), f.next()) {
                (Some("lat"), Some(v)) => lat.push(v.parse::<f64>().unwrap_or(0.0)),
                (Some("rejected"), Some(v)) => rejected += v.parse::<usize>().unwrap_or(0),
                (Some("replays_accepted"), Some(v)) => replays += v.parse::<usize>().unwrap_or(0),
                (Some("start"), Some(v)) => start = start.min(v.parse().unwrap_or(u128::MAX)),
                (Some("end"), Some(v)) => end = end.max(v.parse().unwrap_or(0)),
                _ => {}
            }
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0) / 1000.0;
    let secs = (end.saturating_sub(start)) as f64 / 1e6;
    Round { count: lat.len(), rate: lat.len() as f64 / secs.max(1e-9), p50: pct(0.5), p99: pct(0.99), rejected, replays_accepted: replays }
}

/// --worker SERVICE CONFDIR USERS FIRST COUNT PHASE
fn worker(args: &[String]) {
    let (service, confdir, users, first, count, phase) = (&args[2], &args[3], &args[4], &args[5], &args[6], &args[7]);
    let first: usize = first.parse().unwrap_or(0);
    let count: usize = count.parse().unwrap_or(0);
    let file = std::fs::File::open(users).unwrap_or_else(|e| panic!("{users}: {e}"));
    let lines: Vec<String> = std::io::BufReader::new(file).lines().map_while(Result::ok).skip(first).take(count).collect();
    let offset = if phase == "activate" { -1 } else { 0 };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let (mut rejected, mut last) = (0, None);
    writeln!(out, "start {}", now_us()).ok();
    for line in &lines {
        let (user, uri) = line.split_once(' ').unwrap_or_default();
        let code = e2e::code_from_uri(uri, offset).unwrap_or_default();
        let t = Instant::now();
        let login = e2e::authenticate(Some(confdir), service, user, vec![code.clone().into_bytes()], None, None, false);
        writeln!(out, "lat {}", t.elapsed().as_micros()).ok();
        if login.code != 0 {
            rejected += 1;
        }
        last = Some((user.to_string(), code));
    }
    writeln!(out, "end {}", now_us()).ok();
    writeln!(out, "rejected {rejected}").ok();
    // One replay per worker, outside the timed part: must be refused by pam_otp.
    if let (Some((user, code)), "otp", "measure") = (last, service.as_str(), phase.as_str()) {
        let again = e2e::authenticate(Some(confdir), service, &user, vec![code.into_bytes()], None, None, false);
        writeln!(out, "replays_accepted {}", usize::from(again.code == 0)).ok();
    }
}
