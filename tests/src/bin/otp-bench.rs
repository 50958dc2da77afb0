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
    let procs: Vec<usize> =
        arg(&args, "--procs").unwrap_or_else(|| "1,8".into()).split(',').filter_map(|p| p.parse().ok()).collect();
    let users: usize = arg(&args, "--users").and_then(|u| u.parse().ok()).unwrap_or(3000);
    let email_requests: usize = arg(&args, "--email").and_then(|u| u.parse().ok()).unwrap_or(0);
    let sink_port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
        .unwrap_or(2525);
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
            "[daemon]\npam_socket = \"{}\"\nadmin_socket = \"{}\"\ndatabase = \"{}/state/otpd.db\"\nkey_file = \"{}/state/secret.key\"\nmax_connections = 512\n\
             [email]\ndirectory = \"none\"\nglobal_per_hour = 1000000\nper_address_per_hour = 1000\n\
             [smtp]\nurl = \"smtp+plain://127.0.0.1:{}\"\n",
            sock.display(),
            admin.display(),
            dir.display(),
            dir.display(),
            sink_port
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
    println!(
        "{:>3} {:<10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>8} {:>10}",
        "P", "module", "auths", "auths/s", "p50 ms", "p99 ms", "rejected", "replays", "vs permit"
    );
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
    if email_requests > 0 {
        email_round(&bin, &dir, &admin, email_requests, sink_port);
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

/// 1000 (or N) users each press Enter once, from 8 processes at once: the
/// login-conversation latency of a request, and the time until the local
/// SMTP server has accepted each message.
fn email_round(bin: &Path, dir: &Path, admin: &Path, n: usize, port: u16) {
    let maildir = dir.join("maildir");
    let sink = concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_sink.py");
    let mut smtp = Command::new("/usr/bin/python3")
        .arg(sink)
        .arg(&maildir)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("smtp sink: {e}"));
    let mut ready = String::new();
    if let Some(out) = smtp.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut ready);
    }
    let mut list = Vec::new();
    for i in 0..n {
        let user = format!("mailer{i}");
        let req = AdminRequest::UserEnable {
            user: user.clone(),
            method: Method::Email,
            email: Some(format!("{user}@bench.example")),
        };
        if let Ok(mut c) = Client::connect(admin, Duration::from_secs(30), &[0]) {
            let _: Result<AdminResponse, _> = c.call(&req);
        }
        list.push(format!("{user} -"));
    }
    let users_file = dir.join("users-email");
    std::fs::write(&users_file, list.join("\n")).ok();
    let r = run_round(bin, dir, "otp", &users_file, n, 8, "email");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut arrivals = Vec::new();
    while Instant::now() < deadline {
        arrivals = std::fs::read_dir(&maildir)
            .map(|d| {
                d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "eml")).map(|e| e.path()).collect()
            })
            .unwrap_or_default();
        if arrivals.len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let starts: std::collections::HashMap<String, f64> = std::fs::read_to_string(dir.join("email-starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(u, t)| t.parse::<f64>().ok().map(|t| (u.to_string(), t))))
        .collect();
    let mut delivery: Vec<f64> = arrivals
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let to = text.lines().next()?.strip_prefix("X-Envelope-To: ")?.split('@').next()?.to_string();
            let at: f64 = text.lines().nth(1)?.strip_prefix("X-Received-At: ")?.trim().parse().ok()?;
            Some((at - starts.get(&to)? / 1e6) * 1000.0)
        })
        .collect();
    delivery.sort_by(|a, b| a.total_cmp(b));
    let pct = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    println!();
    println!("emailed-code requests: {n} distinct users, 8 processes, SMTP sink on 127.0.0.1");
    println!("  login conversation of a request: p50 {:.3} ms, p99 {:.3} ms ({:.0} requests/s)", r.p50, r.p99, r.rate);
    println!(
        "  request -> accepted by SMTP:     p50 {:.1} ms, p99 {:.1} ms; delivered {}/{}",
        pct(&delivery, 0.5),
        pct(&delivery, 0.99),
        delivery.len(),
        n
    );
    let _ = smtp.kill();
    let _ = smtp.wait();
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
                        match c
                            .call(&AdminRequest::UserEnable { user: user.clone(), method: Method::Totp, email: None })
                            .ok()?
                        {
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
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0) / 1000.0
    };
    let secs = (end.saturating_sub(start)) as f64 / 1e6;
    Round {
        count: lat.len(),
        rate: lat.len() as f64 / secs.max(1e-9),
        p50: pct(0.5),
        p99: pct(0.99),
        rejected,
        replays_accepted: replays,
    }
}

/// --worker SERVICE CONFDIR USERS FIRST COUNT PHASE
fn worker(args: &[String]) {
    let (service, confdir, users, first, count, phase) = (&args[2], &args[3], &args[4], &args[5], &args[6], &args[7]);
    let first: usize = first.parse().unwrap_or(0);
    let count: usize = count.parse().unwrap_or(0);
    let file = std::fs::File::open(users).unwrap_or_else(|e| panic!("{users}: {e}"));
    let lines: Vec<String> =
        std::io::BufReader::new(file).lines().map_while(Result::ok).skip(first).take(count).collect();
    if phase == "email" {
        return email_worker(confdir, service, &lines, users);
    }
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

/// Presses Enter once per user (the request), then has no more answers, as a
/// user who will type the code in a later login.
fn email_worker(confdir: &str, service: &str, lines: &[String], users: &str) {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut starts = String::new();
    writeln!(out, "start {}", now_us()).ok();
    for line in lines {
        let user = line.split(' ').next().unwrap_or_default();
        let t0 = now_us();
        let t = Instant::now();
        let login = e2e::authenticate(Some(confdir), service, user, vec![Vec::new()], None, None, false);
        writeln!(out, "lat {}", t.elapsed().as_micros()).ok();
        if !login.transcript.contains("A code was sent") {
            writeln!(out, "rejected 1").ok();
        }
        starts.push_str(&format!("{user} {t0}\n"));
    }
    writeln!(out, "end {}", now_us()).ok();
    let path = std::path::Path::new(users).with_file_name("email-starts");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = f.write_all(starts.as_bytes());
    }
}
