//! A real headless Chromium for the web console's end-to-end tests, driven
//! over WebDriver by a chromedriver of its own on a loopback port.
//!
//! Blocking, like the rest of the e2e support code: each [`Browser`] runs
//! its own single-threaded tokio runtime and every helper waits for its
//! command, so tests stay plain `#[test]` functions and [`Drop`] can end the
//! session (an async Drop cannot). Do not call it from inside a tokio
//! runtime. Helpers panic with the page's URL on failure, as test code may.
//!
//! Everything a browser starts carries its own temp `--user-data-dir` on its
//! command line, and chromedriver leads a process group of its own: Drop
//! quits the session, then kills that group and any process still naming
//! the profile, and waits until they are gone.
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The desktop viewport every browser starts with.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone's viewport in CSS pixels (an iPhone 12 to 15).
pub const PHONE: (u32, u32) = (390, 844);

/// How long [`Browser::start`] waits for chromedriver, then for the session.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two looks at the page while waiting for something on it.
const POLL: Duration = Duration::from_millis(25);

pub struct Browser {
    /// `None` only once Drop has closed the session.
    client: Option<Client>,
    rt: tokio::runtime::Runtime,
    driver: Child,
    /// Holds `profile/` (Chromium's user data) and `chromedriver.log`.
    dir: tempfile::TempDir,
    driver_port: u16,
}

/// A cookie of the current page as the browser stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieInfo {
    pub name: String,
    pub value: String,
    pub secure: bool,
    pub http_only: bool,
    /// "Strict", "Lax" or "None"; `None` when the browser reports none.
    pub same_site: Option<String>,
}

/// One rule axe-core found broken on a page.
#[derive(Debug, Clone)]
pub struct AxeViolation {
    /// The rule, e.g. `image-alt`, `label`, `color-contrast`.
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: String,
    pub help: String,
    pub help_url: String,
    /// A CSS selector for each element that breaks it.
    pub targets: Vec<String>,
}

impl std::fmt::Display for AxeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {} [{}] <{}>", self.id, self.impact, self.help, self.targets.join(", "), self.help_url)
    }
}

impl Browser {
    /// A fresh Chromium (empty profile, no cookies) at the [`DESKTOP`] size,
    /// accepting self-signed certificates (the console's test certificate).
    pub fn start() -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::Builder::new().prefix("e2e-browser.").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("profile")).unwrap();
        let (driver, driver_port) = start_chromedriver(dir.path(), super::free_port);
        let mut browser = Browser { client: None, rt, driver, dir, driver_port };
        let capabilities = browser.capabilities();
        let url = format!("http://127.0.0.1:{}", browser.driver_port);
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        let connect = builder.capabilities(capabilities).connect(&url).await_within(START_TIMEOUT);
        match browser.rt.block_on(connect) {
            Ok(Ok(client)) => browser.client = Some(client),
            // Drop still reaps chromedriver and whatever Chromium it began.
            Ok(Err(e)) => panic!("no WebDriver session: {e}\n{}", browser.driver_log()),
            Err(_) => panic!("no WebDriver session within {START_TIMEOUT:?}\n{}", browser.driver_log()),
        }
        browser.set_viewport(DESKTOP.0, DESKTOP.1);
        browser
    }

    fn capabilities(&self) -> serde_json::Map<String, Value> {
        let mut args = vec![
            // New headless mode: the same browser as a desktop one, no window.
            "--headless".to_string(),
            "--disable-gpu".into(),
            // This machine's network is closed: without these Chromium keeps
            // trying Google's hosts (updates, sync, QUIC probes) at every start.
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", self.profile_dir().display()),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
        ];
        // Chromium refuses to run as root with its sandbox on; the pages it
        // shows here are the tests' own.
        if unsafe { libc::geteuid() } == 0 {
            args.push("--no-sandbox".into());
        }
        let caps = json!({
            "browserName": "chrome",
            // Trusts the test server's self-signed certificate through the
            // standard capability, for this session only, rather than a
            // Chromium switch (without it the page stays on Chromium's
            // certificate warning: the self-test fails).
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "timeouts": { "implicit": 0, "pageLoad": 30_000, "script": 30_000 },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        match caps {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open until Drop")
    }

    /// Runs one WebDriver command to its end.
    fn run<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T, fantoccini::error::CmdError>>) -> T {
        match self.rt.block_on(f) {
            Ok(v) => v,
            Err(e) => panic!("{what}: {e} (at {})", self.url_for_messages()),
        }
    }

    fn url_for_messages(&self) -> String {
        match self.rt.block_on(self.client().current_url()) {
            Ok(url) => url.to_string(),
            Err(e) => format!("no URL: {e}"),
        }
    }

    /// Chromium's profile: every process of this browser names it.
    pub fn profile_dir(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// chromedriver's process id.
    pub fn driver_pid(&self) -> u32 {
        self.driver.id()
    }

    pub fn driver_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        // The start and the end tell what went wrong; the middle is traffic.
        let lines: Vec<&str> = log.lines().collect();
        if lines.len() > 100 {
            format!("{}\n[...]\n{}", lines[..30].join("\n"), lines[lines.len() - 60..].join("\n"))
        } else {
            log
        }
    }

    /// Navigates and waits for the page's load event.
    pub fn goto(&self, url: &str) {
        self.run(&format!("goto {url}"), self.client().goto(url));
    }

    pub fn current_url(&self) -> String {
        self.run("current URL", self.client().current_url()).to_string()
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.run(&format!("find {css}"), self.client().find(Locator::Css(css)))
    }

    /// Clears the field and types `text` into it, key by key.
    pub fn fill(&self, css: &str, text: &str) {
        let field = self.find(css);
        self.run(&format!("clear {css}"), field.clear());
        self.run(&format!("type into {css}"), field.send_keys(text));
    }

    pub fn click(&self, css: &str) {
        let element = self.find(css);
        self.run(&format!("click {css}"), element.click());
    }

    /// Submits the form `form_css` by clicking its submit button, as a user
    /// would (validation and submit handlers run).
    pub fn submit(&self, form_css: &str) {
        let form = self.run(&format!("find form {form_css}"), self.client().form(Locator::Css(form_css)));
        self.run(&format!("submit {form_css}"), form.submit());
    }

    /// The element's rendered text (what a user sees, whitespace collapsed).
    pub fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.run(&format!("text of {css}"), element.text())
    }

    /// An attribute of the element, `None` when it has none.
    pub fn attribute(&self, css: &str, name: &str) -> Option<String> {
        let element = self.find(css);
        self.run(&format!("attribute {name} of {css}"), element.attr(name))
    }

    /// How many elements match now.
    pub fn count(&self, css: &str) -> usize {
        self.run(&format!("find all {css}"), self.client().find_all(Locator::Css(css))).len()
    }

    /// Waits until an element matches `css`.
    pub fn wait_for(&self, css: &str, timeout: Duration) {
        self.wait_until(&format!("an element matching {css}"), timeout, |b| b.count(css) > 0);
    }

    /// Waits until an element matching `css` shows `needle` in its text.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) {
        self.wait_until(&format!("{needle:?} in {css}"), timeout, |b| b.texts(css).iter().any(|t| t.contains(needle)));
    }

    /// The text of every element matching `css`; an element replaced while
    /// being read (the page moved on) counts as none.
    fn texts(&self, css: &str) -> Vec<String> {
        let Ok(elements) = self.rt.block_on(self.client().find_all(Locator::Css(css))) else { return Vec::new() };
        elements.iter().filter_map(|e| self.rt.block_on(e.text()).ok()).collect()
    }

    /// Polls `done` until it holds or `timeout` passes (then panics, with a
    /// screenshot of the page as it was).
    pub fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                let shot = self.screenshot(&format!("timeout-{}", test_name()));
                panic!("no {what} after {timeout:?} at {}; screenshot {}", self.url_for_messages(), shot.display());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `script` as the body of a function in the page (`arguments[i]`
    /// are `args`) and returns what it returns. WebDriver scripts are not
    /// subject to the page's Content-Security-Policy.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.run("execute script", self.client().execute(script, args))
    }

    /// Like [`Browser::execute`], for a script that ends by calling its last
    /// argument with the result.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.run("execute async script", self.client().execute_async(script, args))
    }

    /// The cookies the browser keeps for the current page, HttpOnly ones too.
    pub fn cookies(&self) -> Vec<CookieInfo> {
        self.run("get cookies", self.client().get_all_cookies())
            .into_iter()
            .map(|c| CookieInfo {
                name: c.name().to_string(),
                value: c.value().to_string(),
                secure: c.secure().unwrap_or(false),
                http_only: c.http_only().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
            })
            .collect()
    }

    /// Sets a cookie for the current page's host as the page's own script
    /// could (so not HttpOnly): Secure, SameSite=Strict, Path=/, no Domain,
    /// which a `__Host-` name requires. A test can replay an old value.
    /// (Not WebDriver's Add Cookie: fantoccini sends `"domain": null`,
    /// which chromedriver refuses.)
    pub fn set_cookie(&self, name: &str, value: &str) {
        let set = self.execute(
            "document.cookie = arguments[0] + '=' + arguments[1] + '; Secure; SameSite=Strict; Path=/';
             return document.cookie.split('; ').includes(arguments[0] + '=' + arguments[1]);",
            vec![json!(name), json!(value)],
        );
        assert_eq!(set, json!(true), "the browser refused cookie {name} at {}", self.url_for_messages());
    }

    /// Reloads the current page and waits for its load event.
    pub fn refresh(&self) {
        self.run("refresh", self.client().refresh());
    }

    /// Resizes the window so that the page's viewport is `width`×`height`
    /// CSS pixels (what media queries see).
    pub fn set_viewport(&self, width: u32, height: u32) {
        let inner = |b: &Browser| -> (i64, i64) {
            let v = b.execute("return [window.innerWidth, window.innerHeight];", vec![]);
            (v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(0))
        };
        // The window may have a frame around the viewport: size it, measure
        // the difference, size it again. The page may see the new size a
        // moment after the window has it: a measure counts once the target
        // shows, or two looks 50 ms apart agree.
        let settled = |b: &Browser| -> (i64, i64) {
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut last = inner(b);
            loop {
                if last == (i64::from(width), i64::from(height)) || Instant::now() > deadline {
                    return last;
                }
                std::thread::sleep(Duration::from_millis(50));
                let now = inner(b);
                if now == last {
                    return now;
                }
                last = now;
            }
        };
        let (mut w, mut h) = (i64::from(width), i64::from(height));
        let mut tried = Vec::new();
        for _ in 0..4 {
            self.run("set window size", self.client().set_window_size(w as u32, h as u32));
            let (iw, ih) = settled(self);
            tried.push(format!("window {w}x{h}: viewport {iw}x{ih}"));
            if (iw, ih) == (i64::from(width), i64::from(height)) {
                return;
            }
            w += i64::from(width) - iw;
            h += i64::from(height) - ih;
        }
        panic!("the viewport is {:?}, not {width}x{height} ({})", inner(self), tried.join("; "));
    }

    /// The [`PHONE`] viewport.
    pub fn phone_size(&self) {
        self.set_viewport(PHONE.0, PHONE.1);
    }

    /// The [`DESKTOP`] viewport.
    pub fn desktop_size(&self) {
        self.set_viewport(DESKTOP.0, DESKTOP.1);
    }

    /// Saves the viewport as `target/screenshots/NAME.png` and returns the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run("screenshot", self.client().screenshot());
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Runs axe-core on the current page and returns every rule it breaks.
    pub fn axe(&self) -> Vec<AxeViolation> {
        // Injected at each call: a navigation forgets it.
        let installed = self.execute(&format!("{}\n;return typeof window.axe;", axe_source()), vec![]);
        assert_eq!(installed, json!("object"), "axe-core did not install itself on {}", self.url_for_messages());
        let result = self.execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] }).then(
               r => done({ violations: r.violations.map(v => ({
                 id: v.id, impact: v.impact || '', help: v.help, helpUrl: v.helpUrl,
                 // A target is a selector per frame, each a list in a shadow tree.
                 targets: v.nodes.map(n => n.target.map(t => Array.isArray(t) ? t.join(' >>> ') : t).join(' | ')),
               })) }),
               e => done({ error: String(e) }));",
            vec![],
        );
        if let Some(e) = result.get("error") {
            panic!("axe.run failed on {}: {e}", self.url_for_messages());
        }
        let string = |v: &Value| v.as_str().unwrap_or_default().to_string();
        result["violations"]
            .as_array()
            .expect("axe returns a list of violations")
            .iter()
            .map(|v| AxeViolation {
                id: string(&v["id"]),
                impact: string(&v["impact"]),
                help: string(&v["help"]),
                help_url: string(&v["helpUrl"]),
                targets: v["targets"].as_array().map(|t| t.iter().map(string).collect()).unwrap_or_default(),
            })
            .collect()
    }

    /// Fails, listing them all, if axe finds any serious or critical
    /// violation on the current page (`page` names it in the message and
    /// in the screenshot taken then).
    pub fn assert_accessible(&self, page: &str) {
        if let Err(report) = self.check_accessible(page) {
            panic!("{report}");
        }
    }

    /// [`Browser::assert_accessible`]'s verdict, the report as the error.
    pub fn check_accessible(&self, page: &str) -> Result<(), String> {
        let bad: Vec<_> =
            self.axe().into_iter().filter(|v| matches!(v.impact.as_str(), "serious" | "critical")).collect();
        if bad.is_empty() {
            return Ok(());
        }
        let shot = self.screenshot(&format!("a11y-{}-{page}", test_name()));
        let list: Vec<String> = bad.iter().map(|v| format!("  - {v}")).collect();
        Err(format!(
            "{page} ({}): {} serious or critical accessibility violation(s):\n{}\nscreenshot {}",
            self.url_for_messages(),
            bad.len(),
            list.join("\n"),
            shot.display()
        ))
    }
}

/// A future with a deadline, as the WebDriver session start has none.
trait AwaitWithin: std::future::Future + Sized {
    /// (The timer starts at the first poll, inside the runtime.)
    async fn await_within(self, limit: Duration) -> Result<Self::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout(limit, self).await
    }
}
impl<F: std::future::Future> AwaitWithin for F {}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Quitting the session makes chromedriver close Chromium; the
            // kills below are for a session that could not quit, and for
            // chromedriver itself.
            let _ = self.rt.block_on(client.close().await_within(Duration::from_secs(10)));
        }
        let group = self.driver.id();
        unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        let profile = self.profile_dir();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Zombies are dead already: Chromium's zygotes outlive the browser
            // process by a moment, orphans, and PID 1 reaps them (here about
            // 1.5 s later; waiting for it would slow every test down).
            let running: Vec<u32> = processes_of(group, &profile).iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
            if running.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                // Not a panic: Drop may run while a test is already failing.
                eprintln!("browser: processes {running:?} outlived their browser");
                break;
            }
            for pid in running {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A process found in /proc.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub pid: u32,
    /// Dead, waiting for its parent (or PID 1, for an orphan) to reap it.
    pub zombie: bool,
}

/// The processes in process group `group` (chromedriver's, inherited by the
/// Chromium it starts) or whose command line names `profile`, which every
/// Chromium process of one browser does even if it left the group.
pub fn processes_of(group: u32, profile: &Path) -> Vec<Process> {
    let needle = profile.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...: comm may hold anything, so
            // the fields are counted from the last ')'.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // Only Chromium's and chromedriver's own (comm is cut at 15
            // bytes): once the group is empty its id may be any new process's.
            let comm = stat.split_once('(').and_then(|(_, rest)| rest.rsplit_once(')')).map_or("", |(c, _)| c);
            let in_group = fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group)
                && ["chromium", "chromedriver", "chrome_crashpad"].iter().any(|name| comm.starts_with(name));
            let names_profile = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle));
            (in_group || names_profile).then_some(Process { pid, zombie: fields.first() == Some(&"Z") })
        })
        .collect()
}

/// Starts chromedriver (logging to `dir/chromedriver.log`) on a port from
/// `next_port` and waits until it is ready. Another process may take the
/// port between [`super::free_port`] and chromedriver's bind: then
/// chromedriver exits at once, and the next port is tried.
pub fn start_chromedriver(dir: &Path, mut next_port: impl FnMut() -> u16) -> (Child, u16) {
    let log = dir.join("chromedriver.log");
    let mut last_log = String::new();
    for _ in 0..5 {
        let port = next_port();
        let out = std::fs::File::create(&log).unwrap();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Its own group, so that Drop can end it and the Chromium it runs.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e} (scripts/deps.sh installs chromium-driver)"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = driver.try_wait() {
                // Most likely the port race: try another one.
                last_log = std::fs::read_to_string(&log).unwrap_or_default();
                break;
            }
            // Ready, and still alive: whoever answered is our chromedriver.
            if driver_ready(port) && driver.try_wait().ok().flatten().is_none() {
                return (driver, port);
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(-(driver.id() as i32), libc::SIGKILL) };
                let _ = driver.wait();
                panic!(
                    "chromedriver not ready on port {port} after {START_TIMEOUT:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }
    panic!("chromedriver did not start on any of 5 ports; last log:\n{last_log}")
}

/// `GET /status` answers `"ready": true`.
fn driver_ready(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    // chromedriver keeps the connection open whatever the request says:
    // read up to the end of the body its Content-Length announces.
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))?.1.trim().parse().ok()
            });
            if length.is_some_and(|n: usize| body.len() >= n) {
                return serde_json::from_str::<Value>(body).is_ok_and(|v| v["value"]["ready"] == json!(true));
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
}

/// `target/screenshots/`: under `CARGO_TARGET_DIR` when set, else the
/// target directory this test binary was built in.
pub fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        // target/<profile>/ (a relative CARGO_TARGET_DIR was relative to
        // wherever cargo ran, which this process cannot know).
        _ => super::build_dir().parent().unwrap().to_path_buf(),
    };
    target.join("screenshots")
}

/// The running test's name as a file name (the test harness names each
/// test's thread after it).
fn test_name() -> String {
    let name = std::thread::current().name().unwrap_or("main").replace("::", "-");
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// axe-core as `npm ci --prefix tests/web` (scripts/deps.sh) installed it.
fn axe_source() -> &'static str {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/web/node_modules/axe-core/axe.min.js");
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e} (run scripts/deps.sh)"))
    })
}
