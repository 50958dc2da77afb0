//! A private PostgreSQL cluster for tests and the benchmark: Debian's
//! `postgresql` binaries, `initdb` + `pg_ctl` as the `postgres` user in a
//! temp dir, listening only on a Unix socket in that dir. Stopped (and the
//! dir removed) on drop. Needs root (to run as `postgres`).
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    stopped: bool,
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
        let bin = bin_dir()?;
        let base = std::env::temp_dir().join(format!("otp-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        let chown = Command::new("chown").arg("postgres").arg(&base).status().map_err(|e| e.to_string())?;
        if !chown.success() {
            return Err(format!("chown postgres {} failed", base.display()));
        }
        let port = 5432 + (unique() % 1000) as u16;
        let mut c = Cluster { dir: base, bin, port, stopped: true };
        let data = c.dir.join("data");
        let data = data.to_str().ok_or("temp dir is not UTF-8")?;
        run_as_postgres(&c.bin, "initdb", &["-D", data, "-A", "trust", "-U", "otp", "--no-sync"])?;
        c.start_again()?;
        c.run_psql("postgres", "create database otpd")?;
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
        let mut opts = format!("-k {} -c listen_addresses='' -p {}", self.dir.display(), self.port);
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
