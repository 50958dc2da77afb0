//! [`Core`]: what every door is given — the store, the policy, the clock,
//! the event sink and the callers' limits — and nothing of any door.
use crate::core::events::Event;
use crate::core::limits::Callers;
use crate::core::policy::Policy;
use crate::store::db::Db;
use crate::sys::clock::Clock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct Core {
    pub db: Db,
    pub policy: Arc<Policy>,
    pub clock: Box<dyn Clock>,
    /// How long a peer may take over one message, and over a prompt.
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    /// The admin group (`[daemon] admin_group`), when it exists.
    pub admin_gid: Option<u32>,
    pub started_at: i64,
    /// The database as `status` shows it (no password).
    pub database: String,
    /// Wakes the mail sender when something was queued.
    pub mail_wakeup: Arc<tokio::sync::Notify>,
    /// Events for D-Bus signals; nobody listening is fine.
    pub events: tokio::sync::broadcast::Sender<Event>,
    /// Rate limits and conversation caps per caller, of this machine and of
    /// each remote host (see [`crate::core::limits`]).
    pub callers: Callers,
    /// Server role: the fleet CAs, which issue hosts' credentials.
    pub fleet_ca: Option<Arc<crate::fleet::authority::Authority>>,
    /// Server role: show pending enrollments (QR, secret) on agent hosts.
    pub enroll_on_agents: bool,
    /// Server role: seconds a host certificate it issues is valid.
    pub host_cert_life: i64,
    /// What the doors report for `status`.
    pub gauges: Gauges,
    /// When the last throttled warning was logged (Unix seconds).
    last_warning: AtomicI64,
}

/// Figures the doors keep up to date for `status`.
#[derive(Default)]
pub struct Gauges {
    /// Connections open on the PAM socket.
    pub pam_connections: AtomicU64,
}

/// What a [`Core`] is made of (see [`Core::new`]).
pub struct Parts {
    pub db: Db,
    pub policy: Arc<Policy>,
    pub clock: Box<dyn Clock>,
    pub io_timeout: Duration,
    pub prompt_timeout: Duration,
    pub admin_gid: Option<u32>,
    pub database: String,
    pub callers: Callers,
    pub fleet_ca: Option<Arc<crate::fleet::authority::Authority>>,
    pub enroll_on_agents: bool,
    pub host_cert_life: i64,
}

impl Core {
    pub fn new(p: Parts) -> Core {
        Core {
            started_at: p.clock.now(),
            db: p.db,
            policy: p.policy,
            clock: p.clock,
            io_timeout: p.io_timeout,
            prompt_timeout: p.prompt_timeout,
            admin_gid: p.admin_gid,
            database: p.database,
            mail_wakeup: Arc::new(tokio::sync::Notify::new()),
            events: tokio::sync::broadcast::channel(1024).0,
            callers: p.callers,
            fleet_ca: p.fleet_ca,
            enroll_on_agents: p.enroll_on_agents,
            host_cert_life: p.host_cert_life,
            gauges: Gauges::default(),
            last_warning: AtomicI64::new(0),
        }
    }

    pub fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// At most one such warning a second: a flood must not become a log flood.
    pub fn warn_throttled(&self, msg: &str) {
        let now = self.clock.now();
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            tracing::warn!("{msg}");
        }
    }
}

#[cfg(test)]
impl Parts {
    /// A core for unit tests: `db` (the login path then plans through the
    /// database thread, as on PostgreSQL), a TOTP/SHA-1 policy for machine
    /// "local" with mail off, a fake clock at `now`, no admin group.
    pub(crate) fn for_tests(db: Db, now: i64) -> Parts {
        let caps = crate::core::limits::Caps { per_caller: 8, per_target: 16, unprivileged: 100 };
        Parts {
            db,
            policy: Arc::new(Policy {
                totp: crate::core::totp::TotpParams {
                    algorithm: common::config::Algorithm::SHA1,
                    digits: 6,
                    period: 30,
                    skew: 1,
                },
                hotp_window: 10,
                require_group: None,
                lockout: common::config::LockoutConfig::default(),
                issuer: "test".into(),
                machine: "local".into(),
                crypto: crate::core::crypto::SecretBox::from_key(&[7u8; 32]),
                email: common::config::EmailConfig { enabled: false, ..Default::default() },
            }),
            clock: Box::new(crate::sys::clock::FakeClock::new(now)),
            io_timeout: Duration::from_secs(5),
            prompt_timeout: Duration::from_secs(60),
            admin_gid: None,
            database: ":memory:".into(),
            callers: Callers::new("local", 30, caps, 6000),
            fleet_ca: None,
            enroll_on_agents: true,
            host_cert_life: crate::fleet::pki::DEFAULT_HOST_LIFE,
        }
    }
}
