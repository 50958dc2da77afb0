//! What the admin handlers share: who asks ([`By`]), the admin audit row,
//! the user as the admin protocol shows it, and the usual answers.
use crate::core::context::valid_user_name;
use crate::store::model::{NewAudit, Store, StoreError, UserRecord};
use common::proto::{AdminErrorKind, AdminResponse, UserInfo};

/// Who made an admin request: a local user (admin socket, D-Bus) or the
/// holder of admin credentials on a fleet link.
#[derive(Debug, Clone)]
pub enum By {
    Uid(u32),
    Remote(String),
    /// A console session's user (an admin, or a user acting on their own
    /// account) and the browser's address.
    Web {
        user: String,
        addr: String,
    },
}

impl By {
    /// The uid an emergency decision records: a remote admin has none on
    /// this machine (0); the audit row names them.
    pub(crate) fn uid(&self) -> u32 {
        match self {
            By::Uid(u) => *u,
            By::Remote(_) | By::Web { .. } => 0,
        }
    }

    /// The service an admin change is audited under: `web` for the
    /// console, `otpctl` for the other doors.
    pub(crate) fn service(&self) -> &'static str {
        match self {
            By::Web { .. } => "web",
            _ => "otpctl",
        }
    }

    /// The address the change came from, when a browser made it.
    pub(crate) fn rhost(&self) -> Option<String> {
        match self {
            By::Web { addr, .. } => Some(addr.clone()),
            _ => None,
        }
    }
}

impl std::fmt::Display for By {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            By::Uid(u) => write!(f, "uid {u}"),
            By::Remote(name) => write!(f, "admin credentials {name} (remote)"),
            By::Web { user, addr } => write!(f, "{user} on the web console from {addr}"),
        }
    }
}

pub(crate) fn err(kind: AdminErrorKind, message: impl Into<String>) -> AdminResponse {
    AdminResponse::Error { kind, message: message.into() }
}

/// A request naming a user that is not a valid user name is refused before
/// anything else is looked at.
pub(crate) fn bad_user_name(user: &str) -> Option<AdminResponse> {
    (!valid_user_name(user)).then(|| err(AdminErrorKind::InvalidInput, format!("{user:?} is not a valid user name")))
}

/// A handler's database job, answered: a store failure becomes an internal
/// error ("the change was not made"), logged.
pub(crate) fn finish(result: Result<AdminResponse, StoreError>) -> AdminResponse {
    result.unwrap_or_else(|e| {
        tracing::error!("admin request failed: {e}");
        err(AdminErrorKind::Internal, format!("the change was not made: {e}"))
    })
}

pub(crate) fn not_found(user: &str) -> AdminResponse {
    err(
        AdminErrorKind::NotFound,
        format!("{user} is not enabled for OTP; use `otpctl user enable {user} --method totp`"),
    )
}

pub(crate) fn info(u: &UserRecord, now: i64) -> UserInfo {
    UserInfo {
        name: u.name.clone(),
        method: u.method,
        enabled: u.enabled,
        email: u.email.clone(),
        activated: u.activated_at.is_some(),
        activated_at: u.activated_at,
        failures: u.failures,
        locked_until: u.locked_until,
        locked: u.is_locked(now),
        admin_locked_at: u.admin_locked_at,
        lock_periods: u.lock_periods,
        failures_since_login: u.failures_since_login,
        created_at: u.created_at,
        updated_at: u.updated_at,
        last_login: u.last_login,
        hotp_counter: u.hotp_counter.map(|c| c.max(0) as u64),
        recovery_codes_left: None,
        clock_drift: u.clock_drift_secs.zip(u.clock_drift_at).map(|(secs, seen_at)| common::proto::ClockDrift {
            secs,
            seen_at,
            refusals_in_a_row: u.clock_drift_refusals,
        }),
    }
}

/// The audit row of an admin change (method "admin", service "otpctl",
/// reason "by ..."), also sent to syslog.
pub(crate) fn admin_audit(
    st: &mut dyn Store,
    machine: &str,
    user: &str,
    action: &str,
    by: &By,
    now: i64,
) -> Result<(), StoreError> {
    let e = NewAudit {
        time: now,
        user: user.into(),
        service: by.service().into(),
        rhost: by.rhost(),
        tty: None,
        machine: machine.into(),
        method: crate::store::model::AuditMethod::Admin,
        result: crate::store::model::AuditResult::Action(action.into()),
        reason: format!("by {by}"),
    };
    crate::core::syslog::audit(&e);
    st.add_audit(&e)
}

/// What the handlers' unit tests stand on: a core on an in-memory SQLite
/// store, at [`fixture::T0`] on a fake clock, and readers of its state.
#[cfg(test)]
pub(crate) mod fixture {
    use super::By;
    use crate::core::service::{Core, Parts};
    use crate::store::db::Db;
    use crate::store::model::{Store, StoreError, UserRecord};
    use crate::store::sqlite::SqliteStore;
    use common::proto::{AdminErrorKind, AdminResponse, AuditEntry};
    use std::sync::Arc;

    pub(crate) const T0: i64 = 1_700_000_000;
    /// Root at the admin socket.
    pub(crate) const ROOT: By = By::Uid(0);

    /// The parts of a standalone core (policy: TOTP/SHA-1, 6 digits, 30 s,
    /// machine "local", mail off), to change before [`Core::new`].
    pub(crate) fn parts() -> Parts {
        Parts::for_tests(Db::start(SqliteStore::in_memory().unwrap()), T0)
    }

    pub(crate) fn core() -> Core {
        Core::new(parts())
    }

    /// A fleet server's core: it has a CA.
    pub(crate) fn server() -> Core {
        server_at(Arc::new(crate::sys::clock::FakeClock::new(T0)))
    }

    /// [`server`] on a clock the test moves.
    pub(crate) fn server_at(clock: Arc<crate::sys::clock::FakeClock>) -> Core {
        use crate::store::model::Store as _;
        let ca = crate::fleet::pki::Ca::generate().unwrap();
        let mut st = SqliteStore::in_memory().unwrap();
        // The key Parts::for_tests seals with.
        let sealed = crate::fleet::authority::seal(&crate::core::crypto::SecretBox::from_key(&[7u8; 32]), &ca);
        assert!(st.set_fleet_ca_if_absent(&ca.cert_pem(), &sealed, 0).unwrap());
        let mut p = Parts::for_tests(Db::start(st), T0);
        p.clock = Box::new(clock);
        p.fleet_ca =
            Some(Arc::new(crate::fleet::authority::Authority::new(crate::fleet::authority::CaSet::single(ca))));
        Core::new(p)
    }

    pub(crate) async fn on_db<T: Send + 'static>(
        core: &Core,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> T {
        core.db.run(f).await.unwrap()
    }

    pub(crate) async fn user(core: &Core, name: &str) -> Option<UserRecord> {
        let name = name.to_string();
        on_db(core, move |st| st.user(&name)).await
    }

    pub(crate) async fn save(core: &Core, rec: UserRecord) {
        on_db(core, move |st| st.save_user(&rec)).await
    }

    /// An enabled, activated TOTP user with a secret, made an hour ago.
    pub(crate) async fn enrolled_user(core: &Core, name: &str, uid: Option<u32>) -> UserRecord {
        let mut rec = crate::core::auth::new_enrollment(&core.policy, None, name, uid, T0 - 3600);
        rec.activated_at = Some(T0 - 3000);
        save(core, rec.clone()).await;
        rec
    }

    /// `user`'s audit rows, newest first.
    pub(crate) async fn audit_rows(core: &Core, user: &str) -> Vec<AuditEntry> {
        let user = user.to_string();
        on_db(core, move |st| st.audit(Some(&user), None, None, 1000)).await
    }

    /// Every audit row, newest first.
    pub(crate) async fn all_audit(core: &Core) -> Vec<AuditEntry> {
        on_db(core, |st| st.audit(None, None, None, 100_000)).await
    }

    /// The one admin audit row of `user`, checked as an admin change (method
    /// "admin", service "otpctl", machine "local", at T0); its result and reason.
    pub(crate) async fn one_admin_row(core: &Core, user: &str) -> (String, String) {
        let rows = audit_rows(core, user).await;
        assert_eq!(rows.len(), 1, "one audit row for {user}: {rows:?}");
        let r = &rows[0];
        assert_eq!(
            (r.method.as_str(), r.service.as_str(), r.machine.as_str(), r.time),
            ("admin", "otpctl", "local", T0)
        );
        (r.result.clone(), r.reason.clone())
    }

    /// The refusal `resp` is (a test fails on any other answer).
    pub(crate) fn refusal(resp: AdminResponse) -> (AdminErrorKind, String) {
        match resp {
            AdminResponse::Error { kind, message } => (kind, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The message of a `Done` answer.
    pub(crate) fn done(resp: AdminResponse) -> String {
        match resp {
            AdminResponse::Done { message } => message,
            other => panic!("expected Done, got {other:?}"),
        }
    }
}
