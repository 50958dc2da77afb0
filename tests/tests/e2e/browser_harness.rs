//! The browser harness itself ([`support::browser`]), against a small site
//! served over HTTPS with a self-signed certificate and the strict
//! Content-Security-Policy the web console sends: a form that posts, a
//! session cookie, screenshots, the phone size, axe-core on a good and on a
//! bad page, and no Chromium left behind.
use crate::support;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::browser::{processes_of, start_chromedriver, Browser, PHONE};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; frame-ancestors 'none'";
const WAIT: Duration = Duration::from_secs(10);

/// A request the site received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    body: String,
}

/// The test site: HTTPS on a loopback port, one thread per connection.
struct Site {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Site {
    fn start() -> Site {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key.into())
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (config, received) = (config.clone(), received.clone());
                    std::thread::spawn(move || serve(conn, config, &received));
                }
            })
        };
        Site { port, received, stop, thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn posts(&self) -> Vec<Received> {
        self.received.lock().unwrap().iter().filter(|r| r.method == "POST").cloned().collect()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request, one response, then the connection closes. Failed
/// handshakes and half requests are the browser's business: ignored.
fn serve(conn: TcpStream, config: Arc<rustls::ServerConfig>, received: &Mutex<Vec<Received>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(tls) = rustls::ServerConnection::new(config) else { return };
    let mut stream = rustls::StreamOwned::new(tls, conn);
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("/").to_string());
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    received.lock().unwrap().push(Received { method: method.clone(), path: path.to_string(), body: body.clone() });
    let response = respond(&method, path, query, &body);
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

const SIGN_IN: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in</title>
<link rel="stylesheet" href="/style.css">
<script>document.title = 'inline script ran';</script>
<script src="/page.js"></script>
</head>
<body>
<main>
<h1>Sign in</h1>
<form method="post" action="/login">
<label for="user">User name</label>
<input id="user" name="user" autocomplete="username" required>
<label for="code">One-time code</label>
<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required>
<button type="submit">Sign in</button>
</form>
<p id="status"></p>
</main>
</body>
</html>
"#;

/// The mistakes axe must catch: an image without alt text, a field
/// without a label.
const BROKEN: &str = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Search</title></head>
<body>
<main>
<h1>Search</h1>
<img src="/logo.png">
<input type="text" name="q">
</main>
</body>
</html>
"#;

const STYLE: &str = "body { font-family: sans-serif; margin: 2em; color: #111; background: #fff; }
label { display: block; margin-top: 1em; }
@media (max-width: 600px) { body { margin: 0.5em; } h1 { font-size: 1.3em; } }
";

/// Runs only because the CSP allows scripts from 'self'.
const PAGE_JS: &str = "document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('status').textContent = 'script from self ran';
});
";

fn respond(method: &str, path: &str, query: &str, body: &str) -> Vec<u8> {
    let (status, extra, content_type, content) = match (method, path) {
        ("GET", "/") => ("200 OK", String::new(), "text/html; charset=utf-8", SIGN_IN.to_string()),
        ("GET", "/broken") => ("200 OK", String::new(), "text/html; charset=utf-8", BROKEN.to_string()),
        ("GET", "/style.css") => ("200 OK", String::new(), "text/css", STYLE.to_string()),
        ("GET", "/page.js") => ("200 OK", String::new(), "text/javascript", PAGE_JS.to_string()),
        ("POST", "/login") => {
            let user = form_value(body, "user").unwrap_or_default();
            let location = format!("/welcome?user={}", percent_encode(&user));
            (
                "303 See Other",
                format!(
                    "Location: {location}\r\n\
                     Set-Cookie: session=s3cr3t; Path=/; Secure; HttpOnly; SameSite=Strict\r\n\
                     Set-Cookie: theme=dark; Path=/; SameSite=Lax\r\n"
                ),
                "text/plain",
                String::new(),
            )
        }
        ("GET", "/welcome") => {
            let user = form_value(query, "user").unwrap_or_default();
            let user = user.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let page = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Welcome</title>\
                 <link rel=\"stylesheet\" href=\"/style.css\"></head>\
                 <body><main><h1>Welcome</h1><p id=\"greeting\">Welcome, {user}</p></main></body></html>"
            );
            ("200 OK", String::new(), "text/html; charset=utf-8", page)
        }
        _ => ("404 Not Found", String::new(), "text/plain", "not found".to_string()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Content-Security-Policy: {CSP}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{content}",
        content.len()
    )
    .into_bytes()
}

/// `name`'s value in an `application/x-www-form-urlencoded` string.
fn form_value(encoded: &str, name: &str) -> Option<String> {
    encoded.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| {
        let v = v.replace('+', " ");
        let bytes = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match (bytes[i], bytes.get(i + 1..i + 3)) {
                (b'%', Some(hex)) if u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16).is_ok() => {
                    out.push(u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap());
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).to_string()
    })
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn assert_png(path: &std::path::Path) -> (u32, u32) {
    let png = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(png.len() > 1000, "{} is only {} bytes", path.display(), png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is no PNG", path.display());
    // The IHDR chunk comes first: its width and height, big-endian.
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!(&png[12..16], b"IHDR");
    (be(16), be(20))
}

#[test]
fn a_form_posts_over_https_and_the_session_cookie_is_strict() {
    let _turn = support::exclusive("browser");
    let site = Site::start();
    let browser = Browser::start();
    // Self-signed, and the page still loads: acceptInsecureCerts.
    browser.goto(&site.url("/"));
    browser.wait_for_text("#status", "script from self ran", WAIT);
    // The CSP is in force: the page's own inline script was blocked.
    assert_eq!(browser.execute("return document.title;", vec![]), "Sign in");

    browser.fill("#user", "alice");
    browser.fill("#code", "123 456");
    browser.click("button[type=submit]");
    browser.wait_for_text("#greeting", "Welcome, alice", WAIT);
    assert_eq!(browser.current_url(), site.url("/welcome?user=alice"));
    let posts = site.posts();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].path, "/login");
    assert_eq!(posts[0].body, "user=alice&code=123+456");

    let cookies = browser.cookies();
    let session = cookies.iter().find(|c| c.name == "session").unwrap_or_else(|| panic!("no session: {cookies:?}"));
    assert_eq!(session.value, "s3cr3t");
    assert!(session.secure && session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Strict"));
    let theme = cookies.iter().find(|c| c.name == "theme").unwrap_or_else(|| panic!("no theme: {cookies:?}"));
    assert!(!theme.secure && !theme.http_only, "{theme:?}");
    assert_eq!(theme.same_site.as_deref(), Some("Lax"));
    // What the page's own scripts can see: HttpOnly keeps the session out.
    assert_eq!(browser.execute("return document.cookie;", vec![]), "theme=dark");

    // submit(): the form's own button, as a user would.
    browser.goto(&site.url("/"));
    browser.fill("#user", "bob");
    browser.fill("#code", "654321");
    browser.submit("form");
    browser.wait_for_text("#greeting", "Welcome, bob", WAIT);
    assert_eq!(site.posts().len(), 2);

    let shot = browser.screenshot("browser-harness-welcome");
    assert_eq!(assert_png(&shot), (1280, 900));
}

#[test]
fn the_phone_size_is_a_phone_viewport() {
    let _turn = support::exclusive("browser");
    let site = Site::start();
    let browser = Browser::start();
    browser.goto(&site.url("/"));
    let narrow = "return [innerWidth, innerHeight, matchMedia('(max-width: 600px)').matches];";
    assert_eq!(browser.execute(narrow, vec![]), serde_json::json!([1280, 900, false]));
    browser.phone_size();
    assert_eq!(browser.execute(narrow, vec![]), serde_json::json!([PHONE.0, PHONE.1, true]));
    assert_eq!(assert_png(&browser.screenshot("browser-harness-phone")), PHONE);
    browser.desktop_size();
    assert_eq!(browser.execute(narrow, vec![]), serde_json::json!([1280, 900, false]));
}

#[test]
fn axe_passes_an_accessible_page_and_reports_an_inaccessible_one() {
    let _turn = support::exclusive("browser");
    let site = Site::start();
    let started = Instant::now();
    let browser = Browser::start();
    let browser_start = started.elapsed();
    browser.goto(&site.url("/"));
    let axe_started = Instant::now();
    // Under script-src 'self': WebDriver's scripts are exempt from the CSP.
    browser.assert_accessible("sign-in");
    let axe_run = axe_started.elapsed();
    eprintln!("browser start {browser_start:?}, axe on the sign-in page {axe_run:?}");

    browser.goto(&site.url("/broken"));
    let violations = browser.axe();
    for (rule, selector) in [("image-alt", "img"), ("label", "input")] {
        let v = violations.iter().find(|v| v.id == rule).unwrap_or_else(|| panic!("axe missed {rule}: {violations:?}"));
        assert!(matches!(v.impact.as_str(), "serious" | "critical"), "{v}");
        assert_eq!(v.targets, vec![selector.to_string()], "{v}");
    }
    // And so assert_accessible fails, naming both.
    let message = browser.check_accessible("broken").expect_err("a page without alt text or labels passed");
    assert!(message.contains("image-alt") && message.contains("label"), "{message}");
    assert!(message.contains("broken"), "{message}");
}

/// Every chromium and chromedriver process a browser started, seen while
/// it runs: chromedriver's descendants, and what the harness itself counts
/// as the browser's.
fn started_by(browser: &Browser) -> Vec<u32> {
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so after the ')'.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let descends = |mut pid: u32| loop {
        if pid == browser.driver_pid() {
            return true;
        }
        match parent_of(pid) {
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    };
    let mut pids: Vec<u32> = pgrep("chromium").into_iter().filter(|&p| descends(p)).collect();
    pids.extend(processes_of(browser.driver_pid(), &browser.profile_dir()).iter().map(|p| p.pid));
    pids.push(browser.driver_pid());
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn pgrep(pattern: &str) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn no_browser_process_outlives_its_browser() {
    let _turn = support::exclusive("browser");
    let site = Site::start();
    let before = pgrep("chromium");
    let browser = Browser::start();
    browser.goto(&site.url("/"));
    browser.wait_for("#status", WAIT);
    let (group, profile) = (browser.driver_pid(), browser.profile_dir());
    let ours = started_by(&browser);
    let running = pgrep("chromium");
    let chromium: Vec<u32> = ours.iter().copied().filter(|p| running.contains(p)).collect();
    // Browser, zygotes, GPU, network, renderer: a vacuous check would pass.
    assert!(chromium.len() >= 3, "too few chromium processes found for the browser: {ours:?}");
    assert!(chromium.iter().all(|p| !before.contains(p)));
    drop(browser);
    let running = processes_of(group, &profile);
    assert!(running.iter().all(|p| p.zombie), "still running after drop: {running:?}");
    // Orphaned zygotes may stay zombies until PID 1 reaps them: pgrep lists
    // them until then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> =
            pgrep("chromium").into_iter().chain(pgrep("chromedriver")).filter(|p| ours.contains(p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there after drop: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(processes_of(group, &profile).is_empty(), "{:?}", processes_of(group, &profile));
    assert!(!profile.exists(), "the profile outlived its browser");
}

#[test]
fn chromedriver_moves_on_when_its_port_is_taken() {
    let _turn = support::shared();
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut ports = vec![support::free_port(), taken_port];
    let (mut driver, port) = start_chromedriver(dir.path(), || ports.pop().unwrap());
    assert_ne!(port, taken_port);
    assert!(driver.try_wait().unwrap().is_none(), "chromedriver is not running");
    let log = std::fs::read_to_string(dir.path().join("chromedriver.log")).unwrap();
    assert!(log.contains(&format!("on port {port}")), "{log}");
    driver.kill().unwrap();
    driver.wait().unwrap();
}
