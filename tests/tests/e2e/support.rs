//! A real otpd in a temp dir, the built pam_otp.so in pam_wrapper service
//! files, and pamdrive (real libpam) to log in. Nothing outside the temp dir
//! is touched; Drop stops the daemon.
#![allow(dead_code)]
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod browser;

pub fn build_dir() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The module as every test's PAM stack loads it: staged (see [`staged`]),
/// because stacks also run as uid nobody.
pub fn module_path() -> PathBuf {
    staged("libpam_otp.so")
}

/// `name` from the build dir, copied once per test process into a temp dir
/// every uid can reach. A checkout may sit in a private directory (/root is
/// 0700 on Debian) where a test that switches to uid nobody could run or
/// load nothing from target/.
pub fn staged(name: &str) -> PathBuf {
    static STAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = STAGE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("pam_otp-stage.").tempdir().unwrap().keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for file in ["libpam_otp.so", "otpctl", "pamdrive", "otpweb"] {
            let to = dir.join(file);
            std::fs::copy(build_dir().join(file), &to).unwrap_or_else(|e| panic!("staging {file}: {e}"));
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        extern "C" fn remove_stage() {
            if let Some(dir) = STAGE.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // The test harness ends with exit(3), which runs atexit handlers.
        unsafe { libc::atexit(remove_stage) };
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{name} is not staged");
    path
}

/// Which tests may run at the same time as the one holding it: every test
/// takes one first ([`shared`] or [`exclusive`]) and holds it to its end
/// (a panic drops it too).
#[must_use = "a turn lasts as long as it is held: `let _turn = ...;`"]
pub struct Turn(());

/// What [`shared`] tests count as: one area of their own.
const SHARED: &str = "(shared)";

struct Turns {
    /// The area whose tests run now (`None`: nothing runs).
    running: Option<&'static str>,
    /// How many of its tests run now.
    active: usize,
    /// Tests waiting for their turn, in the order they asked: (ticket, area).
    waiting: std::collections::VecDeque<(u64, &'static str)>,
    next_ticket: u64,
}

static TURNS: std::sync::Mutex<Turns> = std::sync::Mutex::new(Turns {
    running: None,
    active: 0,
    waiting: std::collections::VecDeque::new(),
    next_ticket: 0,
});
static TURN_CHANGED: std::sync::Condvar = std::sync::Condvar::new();

/// A test that may run alongside any other shared test, of any area.
pub fn shared() -> Turn {
    Turn::take(SHARED)
}

/// A heavy test (a storm, a flood, a 64-way race, a fleet, lintian and
/// apt): it runs only alongside tests of its own `area`, never alongside a
/// test of another area or a shared one, as when every area was a test
/// binary of its own and cargo ran one binary after another. Its load
/// cannot make other tests late, nor theirs it.
pub fn exclusive(area: &'static str) -> Turn {
    assert_ne!(area, SHARED);
    Turn::take(area)
}

impl Turn {
    /// Waits for `area`'s turn. First come, first served: a test whose area
    /// is running still waits behind one of another area that asked before
    /// it, so no area waits for ever.
    fn take(area: &'static str) -> Turn {
        let lock = || TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut turns = lock();
        let ticket = turns.next_ticket;
        turns.next_ticket += 1;
        turns.waiting.push_back((ticket, area));
        loop {
            let first_of_its_area =
                turns.waiting.iter().take_while(|(t, _)| *t != ticket).all(|(_, other)| *other == area);
            if first_of_its_area && turns.running.is_none_or(|running| running == area) {
                break;
            }
            turns = TURN_CHANGED.wait(turns).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        turns.waiting.retain(|(t, _)| *t != ticket);
        turns.running = Some(area);
        turns.active += 1;
        drop(turns);
        // Tests of the same area queued right behind this one may start too.
        TURN_CHANGED.notify_all();
        Turn(())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turns = TURNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        turns.active -= 1;
        if turns.active == 0 {
            turns.running = None;
        }
        drop(turns);
        TURN_CHANGED.notify_all();
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub daemon: Option<Child>,
    /// Extra environment for otpd (e.g. a private D-Bus address).
    pub env: Vec<(String, String)>,
    /// Where the debug clock's files live: daemons sharing it agree on the
    /// time (the servers of one fleet), so one pinned clock serves them all.
    pub clock_dir: PathBuf,
    /// Only the PAM socket is waited for: an agent binds no admin socket.
    pub pam_only: bool,
}

/// How a fixture's otpd is set up. `Default`: a standalone otpd on SQLite,
/// everything in the fixture's dir.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Top-level keys, written before `[daemon]` (`role = "agent"`).
    pub top: String,
    /// `[daemon] database`; default `<dir>/state/otpd.db`.
    pub database: Option<String>,
    /// `[daemon] key_file`; default `<dir>/state/secret.key`.
    pub key_file: Option<PathBuf>,
    /// Appended right after the `[daemon]` keys, so bare keys land in
    /// `[daemon]` and other tables start with their header.
    pub extra: String,
    pub env: Vec<(String, String)>,
    /// See [`Fixture::clock_dir`]; default the fixture's dir.
    pub clock_dir: Option<PathBuf>,
    pub pam_only: bool,
}

/// What the probe stack returns when pam_otp said PAM_IGNORE.
pub const PROBE_IGNORED: i32 = 10;

pub struct Run {
    pub code: i32,
    pub out: String,
}

impl Run {
    pub fn uri(&self) -> Option<String> {
        self.out.lines().find_map(|l| l.strip_prefix("URI: ").map(|u| u.trim().to_string()))
    }
    pub fn shows_qr(&self) -> bool {
        self.out.contains('\u{2588}') && self.out.contains("otpauth://")
    }
}

/// otpd's log filter for [`Fixture::wait_for_housekeeping`].
pub const HOUSEKEEPING_LOG: (&str, &str) = ("OTPD_LOG", "info,otpd=debug");
const HOUSEKEEPING_DONE: &str = "start-up housekeeping done";

impl Fixture {
    /// `extra_config` is appended right after the `[daemon]` keys, so bare
    /// keys land in `[daemon]` and other tables start with their header.
    pub fn start(extra_config: &str) -> Fixture {
        Fixture::start_with_env(&[], extra_config)
    }

    /// [`Fixture::start`] with extra environment for otpd.
    pub fn start_with_env(env: &[(&str, &str)], extra_config: &str) -> Fixture {
        Fixture::start_in(tempfile::tempdir().unwrap(), env, extra_config)
    }

    /// [`Fixture::start`] in a given (empty) directory.
    pub fn start_in(dir: tempfile::TempDir, env: &[(&str, &str)], extra_config: &str) -> Fixture {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Fixture::start_setup(dir, Setup { extra: extra_config.into(), env, ..Setup::default() })
    }

    /// An otpd set up as `setup` says in `dir` (which may already hold files
    /// the config names, such as an agent's bundle).
    pub fn start_setup(dir: tempfile::TempDir, setup: Setup) -> Fixture {
        Fixture::try_start_setup(dir, setup).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Fixture::start_setup`], or why otpd did not come up (its log).
    pub fn try_start_setup(dir: tempfile::TempDir, setup: Setup) -> Result<Fixture, String> {
        // World-traversable so a non-root pamdrive can read the service files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        let config = d.join("otpd.toml");
        let database = setup.database.unwrap_or_else(|| format!("{}/state/otpd.db", d.display()));
        let key_file = setup.key_file.unwrap_or_else(|| d.join("state/secret.key"));
        let text = format!(
            "{top}[daemon]\npam_socket = \"{0}/run/pam.sock\"\nadmin_socket = \"{0}/run/admin.sock\"\n\
             database = \"{database}\"\nkey_file = \"{key}\"\n{extra}\n",
            d.display(),
            top = setup.top,
            key = key_file.display(),
            extra = setup.extra,
        );
        std::fs::create_dir_all(d.join("state")).unwrap();
        std::fs::create_dir_all(d.join("services")).unwrap();
        std::fs::write(&config, text).unwrap();
        let clock_dir = setup.clock_dir.unwrap_or_else(|| d.to_path_buf());
        let mut fx = Fixture { dir, config, daemon: None, env: setup.env, clock_dir, pam_only: setup.pam_only };
        fx.write_service("otp", "");
        // pam_otp's own IGNORE is invisible in a normal stack (the next
        // module decides), so the probe stack turns it into PAM_USER_UNKNOWN,
        // a code pam_otp never returns.
        let probe = format!(
            "auth [success=done ignore=ignore default=die] {} socket={}\nauth requisite pam_debug.so auth=user_unknown\n",
            module_path().display(),
            fx.pam_socket().display()
        );
        std::fs::write(fx.path("services/otp-probe"), probe).unwrap();
        let mut cmd = Command::new(build_dir().join("otpd"));
        cmd.arg("--config").arg(&fx.config);
        fx.try_launch(cmd)?;
        Ok(fx)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn pam_socket(&self) -> PathBuf {
        self.path("run/pam.sock")
    }

    pub fn start_daemon(&mut self) {
        let mut cmd = Command::new(build_dir().join("otpd"));
        cmd.arg("--config").arg(&self.config);
        self.launch(cmd);
    }

    /// Runs `cmd` (otpd, or something that execs it) as this fixture's
    /// daemon: its environment, output to otpd.log, and waits for the sockets.
    pub fn launch(&mut self, cmd: Command) {
        if let Err(e) = self.try_launch(cmd) {
            panic!("{e}");
        }
    }

    /// [`Fixture::launch`], or why the daemon did not come up (its log).
    pub fn try_launch(&mut self, mut cmd: Command) -> Result<(), String> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.path("otpd.log")).unwrap();
        let child = cmd
            // Debug builds read a clock offset from this file (absent: none).
            .env("OTPD_TEST_CLOCK_FILE", self.clock_dir.join("clock-offset"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        self.wait_until_listening()
    }

    /// Waits for the sockets of a daemon just started in `self.daemon`.
    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ready means accepting: a socket file exists between bind and
        // listen, and a stale one from a previous start exists all along.
        let accepting = |p: &Path| std::os::unix::net::UnixStream::connect(p).is_ok();
        while !(accepting(&self.pam_socket()) && (self.pam_only || accepting(&self.path("run/admin.sock")))) {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                self.daemon = None;
                return Err(format!("otpd exited with {status}: {}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("otpd did not start: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.wait();
        }
    }

    /// Moves the daemon's clock by `secs` from real time, or from the pinned
    /// time once [`Fixture::pin_clock`] was called.
    pub fn set_clock_offset(&self, secs: i64) {
        let text = match self.pinned_at() {
            Some(t) => format!("@{}", t + secs),
            None => secs.to_string(),
        };
        std::fs::write(self.clock_dir.join("clock-offset"), text).unwrap();
    }

    fn pinned_at(&self) -> Option<i64> {
        std::fs::read_to_string(self.clock_dir.join("clock-pinned")).ok().and_then(|s| s.trim().parse().ok())
    }

    /// The daemon's time now (debug clock: real time plus offset, or pinned).
    pub fn daemon_now(&self) -> i64 {
        let text = std::fs::read_to_string(self.clock_dir.join("clock-offset")).unwrap_or_default();
        match text.trim().strip_prefix('@') {
            Some(t) => t.parse().unwrap(),
            None => unix_now() + text.trim().parse::<i64>().unwrap_or(0),
        }
    }

    /// Stops the daemon's clock at its current time (offsets set later are
    /// relative to it), so a TOTP code computed by the test is for the very
    /// step the daemon checks, however long the test runs. Idempotent.
    pub fn pin_clock(&self) -> i64 {
        if let Some(t) = self.pinned_at() {
            return t;
        }
        let t = self.daemon_now();
        std::fs::write(self.clock_dir.join("clock-pinned"), t.to_string()).unwrap();
        std::fs::write(self.clock_dir.join("clock-offset"), format!("@{t}")).unwrap();
        t
    }

    /// The TOTP code of `uri` for `steps` steps from the daemon's (pinned)
    /// time. The only way tests compute codes: never racing a step boundary.
    pub fn code(&self, uri: &str, steps: i64) -> String {
        let totp = totp_rs::TOTP::from_url_unchecked(uri).unwrap();
        let t = self.pin_clock() + steps * totp.step as i64;
        totp.generate(t as u64)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("otpd.log")).unwrap_or_default()
    }

    /// Waits until otpd's start-up housekeeping (pruning the audit, linking
    /// uids, refreshing `require_group`, run in the background) has finished
    /// `starts` times over this fixture's life: a test that then changes what
    /// it reads cannot race it. otpd must run with [`HOUSEKEEPING_LOG`].
    pub fn wait_for_housekeeping(&self, starts: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.log().matches(HOUSEKEEPING_DONE).count() < starts {
            assert!(Instant::now() < deadline, "no start-up housekeeping: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes a pam_wrapper service `name` stacking pam_otp.so with `opts`.
    pub fn write_service(&self, name: &str, opts: &str) {
        let text = format!(
            "auth [success=ok ignore=ignore default=die] {m} socket={s} {opts}\nauth required pam_permit.so\n\
             account required pam_permit.so\nsession optional {m} socket={s}\n",
            m = module_path().display(),
            s = self.pam_socket().display(),
        );
        std::fs::write(self.path("services").join(name), text).unwrap();
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(build_dir().join("otpctl")).arg("--config").arg(&self.config).args(args).output().unwrap()
    }

    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "otpctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn show(&self, user: &str) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["--json", "user", "show", user])).unwrap()
    }

    pub fn pamdrive(&self, service: &str, user: &str, answers: &[&[u8]]) -> Command {
        let mut cmd = Command::new(staged("pamdrive"));
        cmd.arg(service).arg(user).arg("--confdir").arg(self.path("services"));
        for a in answers {
            if a.starts_with(b"file:") {
                cmd.arg(String::from_utf8_lossy(a).into_owned());
                continue;
            }
            // hex: so NUL and non-UTF-8 bytes survive argv.
            cmd.arg(format!("hex:{}", a.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn login_with(&self, service: &str, user: &str, answers: &[&[u8]]) -> Run {
        run(self.pamdrive(service, user, answers))
    }

    pub fn login(&self, user: &str, answers: &[&str]) -> Run {
        let a: Vec<&[u8]> = answers.iter().map(|s| s.as_bytes()).collect();
        self.login_with("otp", user, &a)
    }

    /// Enables `user`, activates the enrollment with the previous step's code
    /// and returns the URI, so the current and next steps are still unused.
    /// Pins the daemon's clock (see [`Fixture::code`]).
    pub fn enroll_active(&self, user: &str) -> String {
        self.ctl_ok(&["user", "enable", user, "--method", "totp"]);
        let first = self.login(user, &[""]);
        let uri = first.uri().unwrap_or_else(|| panic!("no URI in {}", first.out));
        let code = self.code(&uri, -1);
        let ok = self.login(user, &[&code]);
        assert_eq!(ok.code, 0, "{}", ok.out);
        uri
    }
}

pub fn run(mut cmd: Command) -> Run {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Run { code: out.status.code().unwrap_or(-1), out: text }
}

/// Runs `cmd` as an unprivileged uid (std drops supplementary groups when
/// root changes uid). The program must be one every uid can reach (a system
/// binary or [`staged`]), wherever the checkout is: checked here, so a test
/// that runs something from target/ fails in every checkout, not only in a
/// private one (arguments such as a shell script's paths are not checked).
pub fn as_uid(cmd: &mut Command, uid: u32) {
    let program = Path::new(cmd.get_program());
    assert!(
        !program.starts_with(build_dir()),
        "{} is inside the checkout, which uid {uid} may not reach: use support::staged",
        program.display()
    );
    if program.is_absolute() {
        for dir in program.ancestors().skip(1) {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert!(
                mode & 0o001 != 0,
                "{} is not reachable by uid {uid}: stage it (support::staged)",
                program.display()
            );
        }
    }
    cmd.uid(uid).gid(uid);
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

pub fn write_all(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Starts `n` pamdrive logins of `user` answering `answers`, holds them at
/// a FIFO barrier until all are started, releases them at once and returns
/// their PAM results.
pub fn race(fx: &Fixture, service: &str, user: &str, answers: &[&[u8]], n: usize) -> Vec<i32> {
    race_commands(&fx.path(""), (0..n).map(|_| fx.pamdrive(service, user, answers)).collect())
}

/// Starts every pamdrive command, holds them at a FIFO barrier (made in
/// `dir`) until all are started, releases them at once and returns their
/// PAM results in order.
pub fn race_commands(dir: &Path, commands: Vec<Command>) -> Vec<i32> {
    let n = commands.len();
    let fifo = dir.join(format!("barrier-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    let children: Vec<Child> = commands
        .into_iter()
        .map(|mut c| {
            c.arg("--barrier").arg(&fifo);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    // Wait until every child sits in open(2) of the FIFO (or 5 s, then go
    // anyway). The kernel function they wait in is fifo_open on some
    // kernels, wait_for_partner on others.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let waiting = children
            .iter()
            .filter(|c| {
                std::fs::read_to_string(format!("/proc/{}/wchan", c.id()))
                    .is_ok_and(|w| w.contains("fifo") || w.contains("wait_for_partner"))
            })
            .count();
        if waiting == n {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    let codes = children.into_iter().map(|mut c| c.wait().unwrap().code().unwrap_or(-1)).collect();
    let _ = std::fs::remove_file(&fifo);
    codes
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The aiosmtpd sink (tests/support/smtp_sink.py, Debian's python3-aiosmtpd)
/// on 127.0.0.1:`port`, storing each message in `maildir`; with `tls`
/// (certificate, key) it offers STARTTLS. Killed on drop.
pub struct SmtpSink(Child);

impl SmtpSink {
    pub fn start(maildir: &Path, port: u16, tls: Option<(&Path, &Path)>) -> SmtpSink {
        use std::io::BufRead;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/support/smtp_sink.py");
        // Debian's interpreter, where python3-aiosmtpd is installed.
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script).arg(maildir).arg(port.to_string());
        if let Some((pem, key)) = tls {
            cmd.arg(pem).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "READY");
        SmtpSink(child)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP port nothing listens on, for a server a test starts
/// next. Taken below the kernel's ephemeral range (32768 and up here), so a
/// concurrent test's outgoing connection cannot take it between this check
/// and the server's bind (as a port from `bind(0)` can), and never handed
/// out twice by this test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start at a place of this process's own, so runs one after another
    // do not reuse the ports of a previous run's lingering sockets.
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % SPAN, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// The test user's password inside [`SudoSandbox`].
pub const SUDO_PASSWORD: &str = "correct horse";

/// Real sudo (pam_unix, then pam_otp) in a private mount namespace over
/// temp copies of /etc/pam.d, sudoers, passwd, shadow and group; the test
/// user `otpsudo` (uid 23456) exists only inside it.
pub struct SudoSandbox {
    etc: std::path::PathBuf,
    input: std::path::PathBuf,
}

impl SudoSandbox {
    pub fn new(fx: &Fixture) -> SudoSandbox {
        let etc = fx.path("etc");
        std::fs::create_dir_all(etc.join("pam.d")).unwrap();
        for entry in std::fs::read_dir("/etc/pam.d").unwrap().flatten() {
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                std::fs::copy(entry.path(), etc.join("pam.d").join(entry.file_name())).unwrap();
            }
        }
        for f in ["passwd", "shadow", "group"] {
            std::fs::copy(format!("/etc/{f}"), etc.join(f)).unwrap();
        }
        let hash = std::process::Command::new("openssl").args(["passwd", "-6", SUDO_PASSWORD]).output().unwrap();
        let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
        let append = |f: &str, line: String| {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(etc.join(f)).unwrap();
            writeln!(file, "{line}").unwrap();
        };
        append("passwd", "otpsudo:x:23456:23456:sudo test:/nonexistent:/bin/sh".into());
        append("shadow", format!("otpsudo:{hash}:19000:0:99999:7:::"));
        append("group", "otpsudo:x:23456:".into());
        std::fs::write(
            etc.join("pam.d/sudo"),
            format!(
                "auth required pam_unix.so\n\
                 auth [success=ok ignore=ignore default=die] {} socket={}\n\
                 account required pam_permit.so\nsession required pam_permit.so\n",
                module_path().display(),
                fx.pam_socket().display()
            ),
        )
        .unwrap();
        // sudo insists on a root-owned 0440 sudoers.
        let sudoers = etc.join("sudoers");
        std::fs::write(&sudoers, "Defaults !lecture, !fqdn\notpsudo ALL=(ALL) ALL\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sudoers, std::fs::Permissions::from_mode(0o440)).unwrap();
        SudoSandbox { input: fx.path("sudo-input"), etc }
    }

    /// `printf 'password\ncode\n' | sudo -S -k id -un` as the test user.
    pub fn sudo(&self, lines: &[&str]) -> Run {
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&self.input, input).unwrap();
        run(self.command(&format!("< {}", self.input.display())))
    }

    /// `sudo -S -k id -un` as the test user, stdin as `redirect` says.
    pub fn command(&self, redirect: &str) -> std::process::Command {
        let script = format!(
            "set -e; E={e}; for f in passwd shadow group sudoers; do mount --bind $E/$f /etc/$f; done; \
             mount --bind $E/pam.d /etc/pam.d; \
             exec setpriv --reuid=23456 --regid=23456 --clear-groups -- sudo -S -k id -un {redirect}",
            e = self.etc.display(),
        );
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        cmd
    }
}
