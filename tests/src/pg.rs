//! A private PostgreSQL cluster for tests and the benchmark: Debian's
//! `postgresql` binaries, `initdb` + `pg_ctl` as the `postgres` user in a
//! temp dir, listening on a Unix socket in that dir (and, with
//! [`Cluster::start_tcp`], on 127.0.0.1 with TLS if asked). Stopped (and
//! the dir removed) on drop. Needs root (to run as `postgres`).
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Listening on 127.0.0.1 too.
    tcp: bool,
    stopped: bool,
}

/// How a cluster listens on 127.0.0.1 ([`Cluster::start_tcp`]).
#[derive(Default)]
pub struct Tcp {
    /// `ssl = on` with these; `None`: `ssl = off` (clear text only).
    pub tls: Option<ServerTls>,
    /// pg_hba.conf lines for TCP connections (after `local all all trust`,
    /// which the setup through the socket uses).
    pub hba: Vec<String>,
}

/// The server's certificate and key (PEM), and the CA (PEM) whose client
/// certificates it accepts (`ssl_ca_file`), if any.
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
}

/// A certificate authority made in the test (rcgen, ECDSA P-256), for
/// PostgreSQL's server and client certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { cert, key }
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses): (cert, key) PEM.
    pub fn server(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).expect("server params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose common name is the database user `user`: (cert, key) PEM.
    pub fn client(&self, user: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(rcgen::DnType::CommonName, user);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The newest installed `/usr/lib/postgresql/N/bin`.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed (/usr/lib/postgresql: {e}); run scripts/deps.sh"))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".into())
}

fn run_as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .output()
        .map_err(|e| format!("runuser {tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl Cluster {
    /// Starts a cluster with superuser `otp` (trust auth on its private
    /// socket only) and a database `otpd`. `port` only names the socket file.
    pub fn start() -> Result<Cluster, String> {
        let c = Cluster::init()?;
        c.finish_start()
    }

    /// Starts a cluster as [`Cluster::start`] does that also listens on
    /// 127.0.0.1, on a port that was free (another one is tried when the
    /// server could not bind it), with `tcp`'s TLS and pg_hba lines.
    pub fn start_tcp(tcp: &Tcp) -> Result<Cluster, String> {
        let mut c = Cluster::init()?;
        c.tcp = true;
        let data = c.dir.join("data");
        let mut conf = String::from("\n# Cluster::start_tcp\n");
        match &tcp.tls {
            Some(tls) => {
                let mut files = vec![("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)];
                if let Some(ca) = &tls.client_ca_pem {
                    files.push(("client-ca.crt", ca));
                }
                for (name, pem) in files {
                    let path = data.join(name);
                    std::fs::write(&path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| e.to_string())?;
                    chown_postgres(&path)?;
                }
                conf += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
                if tls.client_ca_pem.is_some() {
                    conf += "ssl_ca_file = 'client-ca.crt'\n";
                }
            }
            None => conf += "ssl = off\n",
        }
        append(&data.join("postgresql.conf"), &conf)?;
        let hba = format!("local all all trust\n{}\n", tcp.hba.join("\n"));
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
        let mut last = String::new();
        for _ in 0..5 {
            c.port = free_port()?;
            match c.start_again() {
                Ok(()) => return c.finish_start(),
                Err(e) => {
                    let log = std::fs::read_to_string(c.dir.join("log")).unwrap_or_default();
                    if !log.contains("could not bind") {
                        return Err(format!("{e}\n{log}"));
                    }
                    last = e;
                }
            }
        }
        Err(format!("no free port for PostgreSQL on 127.0.0.1: {last}"))
    }

    /// A URL for TCP on 127.0.0.1 (see [`Cluster::start_tcp`]) as `user`,
    /// to the `otpd` database, with the URL parameters `params`.
    pub fn tcp_url(&self, user: &str, params: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/otpd?{params}", self.port)
    }

    fn finish_start(mut self) -> Result<Cluster, String> {
        if self.stopped {
            self.start_again()?;
        }
        self.run_psql("postgres", "create database otpd")?;
        Ok(self)
    }

    /// initdb in a new temp dir; not started.
    fn init() -> Result<Cluster, String> {
        let bin = bin_dir()?;
        let base = std::env::temp_dir().join(format!("otp-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let chown = Command::new("chown").arg("postgres").arg(&base).status().map_err(|e| e.to_string())?;
        if !chown.success() {
            return Err(format!("chown postgres {} failed", base.display()));
        }
        let port = 5432 + (unique() % 1000) as u16;
        let c = Cluster { dir: base, bin, port, tcp: false, stopped: true };
        let data = c.dir.join("data");
        let data = data.to_str().ok_or("temp dir is not UTF-8")?;
        run_as_postgres(&c.bin, "initdb", &["-D", data, "-A", "trust", "-U", "otp", "--no-sync"])?;
        Ok(c)
    }

    /// The URL otpd's `database` setting takes (the host is the socket dir).
    pub fn url(&self) -> String {
        let host: String = self.dir.to_string_lossy().replace('/', "%2F");
        format!("postgresql://otp@{host}:{}/otpd", self.port)
    }

    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The server's processes: the postmaster and its children (the
    /// backends of the connections open now, and its helpers).
    pub fn pids(&self) -> Result<Vec<String>, String> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
        let postmaster = text.lines().next().unwrap_or_default().trim().to_string();
        let mut pids = vec![postmaster.clone()];
        for entry in std::fs::read_dir("/proc").map_err(|e| e.to_string())?.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if crate::proc_stat(&pid).get(1) == Some(&postmaster) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server and all its
    /// processes: a database that stops answering without closing anything.
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        let pids = self.pids()?;
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).args(&pids).status().map_err(|e| e.to_string())?;
        status.success().then_some(()).ok_or_else(|| format!("kill {signal} {pids:?}: {status}"))
    }

    /// Stops the server (fast shutdown); `start_again` brings it back on the same data.
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        let data = self.dir.join("data");
        run_as_postgres(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap_or(""), "-m", "fast", "-w", "stop"])?;
        self.stopped = true;
        Ok(())
    }

    pub fn start_again(&mut self) -> Result<(), String> {
        let data = self.dir.join("data");
        let listen = if self.tcp { "127.0.0.1" } else { "" };
        let mut opts = format!("-k {} -c listen_addresses='{listen}' -p {}", self.dir.display(), self.port);
        // For the benchmark's analysis only (`OTP_PG_OPTIONS="-c synchronous_commit=off"`
        // shows what the WAL flush costs); the tests never set it.
        if let Ok(extra) = std::env::var("OTP_PG_OPTIONS") {
            opts = format!("{opts} {extra}");
        }
        let log = self.dir.join("log");
        run_as_postgres(
            &self.bin,
            "pg_ctl",
            &["-D", data.to_str().unwrap_or(""), "-l", log.to_str().unwrap_or("/dev/null"), "-o", &opts, "-w", "start"],
        )?;
        self.stopped = false;
        Ok(())
    }

    /// Runs SQL with psql against the `otpd` database; returns stdout (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        self.run_psql("otpd", sql)
    }

    fn run_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", self.dir.to_str().unwrap_or(""), "-p", &self.port.to_string(), "-U", "otp", "-d", database])
            .args(["-Atqc", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql on {database}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn chown_postgres(path: &Path) -> Result<(), String> {
    let status = Command::new("chown").arg("postgres").arg(path).status().map_err(|e| e.to_string())?;
    status.success().then_some(()).ok_or_else(|| format!("chown postgres {} failed", path.display()))
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// A port of 127.0.0.1 free a moment ago (the kernel's pick).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 8) + N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
