//! Audit lines go to syslog (authpriv) and to the daemon's log.
//!
//! They are sent from whichever thread decides (usually the database thread)
//! on a non-blocking datagram socket: a stuck syslog daemon must not stall
//! logins, so a line that cannot be sent at once is dropped and counted (the
//! audit table is the record of truth). No hand-off to another thread, so
//! no wake-up per login.
use crate::store::model::NewAudit;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use syslog::{Facility, Formatter3164, LogFormat, Severity};

const DEV_LOG: &str = "/dev/log";
/// Seconds between attempts to reach a syslog socket that was missing.
const RETRY_SECS: u64 = 10;

struct Sink {
    socket: Option<UnixDatagram>,
    /// When to try connecting again after a failure (Unix seconds).
    retry_at: u64,
    formatter: Formatter3164,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines that could not be sent (syslog missing, stuck or refusing).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

pub fn start() {
    let formatter = Formatter3164 {
        facility: Facility::LOG_AUTHPRIV,
        hostname: None,
        process: "otpd".into(),
        pid: std::process::id(),
    };
    let mut sink = SINK.lock().unwrap_or_else(|e| e.into_inner());
    *sink = Some(Sink { socket: None, retry_at: 0, formatter });
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn connect() -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.connect(DEV_LOG).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

fn send(severity: Severity, line: &str) {
    let mut guard = SINK.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sink) = guard.as_mut() else { return };
    if sink.socket.is_none() {
        let now = unix_now();
        if now < sink.retry_at {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sink.socket = connect();
        if sink.socket.is_none() {
            sink.retry_at = now + RETRY_SECS;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let mut buf = Vec::with_capacity(line.len() + 64);
    if sink.formatter.format(&mut buf, severity, line).is_err() {
        return;
    }
    let Some(socket) = sink.socket.as_ref() else { return };
    match socket.send(&buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            // syslog restarted (ECONNREFUSED) or went away: reconnect next time.
            sink.socket = None;
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One line per attempt: never the code, never the secret.
pub fn audit(e: &NewAudit) {
    let line = format!(
        "audit: user={} service={} rhost={} tty={} machine={} method={} result={} reason=\"{}\"",
        e.user,
        e.service,
        e.rhost.as_deref().unwrap_or("-"),
        e.tty.as_deref().unwrap_or("-"),
        e.machine,
        e.method.as_str(),
        e.result.as_str(),
        e.reason
    );
    tracing::info!("{line}");
    send(Severity::LOG_NOTICE, &line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_stuck_syslog_never_blocks_and_is_counted() {
        // Point the sink at a socket nobody reads: after its buffer fills,
        // sends must fail at once (dropped), not block.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let _server = UnixDatagram::bind(&path).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.connect(&path).unwrap();
        client.set_nonblocking(true).unwrap();
        start();
        SINK.lock().unwrap().as_mut().unwrap().socket = Some(client);
        let before = dropped();
        let started = std::time::Instant::now();
        for _ in 0..5000 {
            send(Severity::LOG_NOTICE, &"x".repeat(200));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(dropped() > before, "a full syslog socket must drop lines");
    }
}
