//! Audit lines go to syslog (authpriv) and to the daemon's log. Sending to
//! `/dev/log` can block when syslog is stuck, so a thread does it and a full
//! queue drops lines (the audit table is the record of truth).
use crate::store::NewAudit;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::OnceLock;

static QUEUE: OnceLock<SyncSender<String>> = OnceLock::new();

pub fn start() {
    let (tx, rx) = sync_channel::<String>(1024);
    if QUEUE.set(tx).is_err() {
        return;
    }
    let _ = std::thread::Builder::new().name("otpd-syslog".into()).spawn(move || {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_AUTHPRIV,
            hostname: None,
            process: "otpd".into(),
            pid: std::process::id(),
        };
        let mut logger = syslog::unix(formatter).ok();
        for line in rx {
            if let Some(l) = logger.as_mut() {
                let _ = l.notice(&line);
            }
        }
    });
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
        e.method,
        e.result,
        e.reason
    );
    tracing::info!("{line}");
    if let Some(q) = QUEUE.get() {
        let _ = q.try_send(line);
    }
}
