//! The [`Store`] on SQLite: standalone hosts and single servers. The
//! concurrency contract every backend keeps is in [`crate::store::model`];
//! the statements are in [`crate::store::sql`], beside PostgreSQL's.
use crate::store::model::*;
use crate::store::sql;
use common::proto::{AuditEntry, RequestStatus};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::path::Path;

pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating on first start) the database at `path`. Refuses a file
    /// that is not a healthy SQLite database: starting on an empty store
    /// would silently re-enable replay of every used code.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let unusable = |why: String| StoreError::Unusable { path: shown.clone(), why };
        // A -wal file someone else created would get every change, secrets included.
        for (f, what) in crate::sys::trust::database_files(path) {
            crate::sys::trust::check_file(&f, what).map_err(|e| StoreError::Unusable { path: e.path, why: e.why })?;
        }
        let existed = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => true,
            Ok(_) => return Err(unusable("not a regular file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(unusable(e.to_string())),
        };
        if existed {
            // Opening read-write creates nothing, but check we can read it at all first
            // so "permission denied" is reported as such.
            std::fs::File::open(path).map_err(|e| unusable(e.to_string()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| unusable(e.to_string()))?;
        // SQLite quietly opens a file it cannot write read-only; a daemon
        // that cannot record its decisions must not start.
        if conn.is_readonly(rusqlite::DatabaseName::Main).unwrap_or(true) {
            return Err(unusable("the database cannot be written (read-only file or file system)".into()));
        }
        let mut store = SqliteStore::init(conn).map_err(|e| unusable(e.to_string()))?;
        if existed {
            let check: String =
                store.conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| unusable(e.to_string()))?;
            if check != "ok" {
                return Err(unusable(format!("integrity check failed: {check}")));
            }
        }
        store.migrate().map_err(|e| unusable(e.to_string()))?;
        Ok(store)
    }

    /// A second connection to the same database for the login path's reads
    /// (what to ask a user), so they do not queue behind the writer thread's
    /// fsyncs. WAL lets it read the last committed state while a write is in
    /// progress; it cannot write (`query_only`). The authoritative decision is
    /// always re-read inside the writer's transaction.
    pub fn open_reader(path: &Path) -> Result<SqliteStore, StoreError> {
        let flags =
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError::Unusable { path: path.display().to_string(), why: e.to_string() })?;
        conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
        identifiers_only(&conn)?;
        Ok(SqliteStore { conn })
    }

    /// An in-memory store for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let mut s = SqliteStore::init(Connection::open_in_memory()?)?;
        s.migrate()?;
        Ok(s)
    }

    fn init(conn: Connection) -> Result<SqliteStore, rusqlite::Error> {
        // journal_mode returns a row; WAL + FULL makes every COMMIT durable.
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;
             PRAGMA secure_delete = ON;",
        )?;
        identifiers_only(&conn)?;
        Ok(SqliteStore { conn })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = crate::store::schema::SQLITE.len() as i64;
        if version > known {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this otpd understands ({known})"
            )));
        }
        for (i, sql) in crate::store::schema::SQLITE.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Raw SQL, for tests that need to break the database.
    #[cfg(test)]
    pub(crate) fn exec(&mut self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.execute_batch(sql)
    }

    /// One transaction-control statement (BEGIN, SAVEPOINT, COMMIT, ...),
    /// prepared once: the writer runs several per login.
    pub(crate) fn control(&mut self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    /// A statement's single count.
    fn count(&self, sql: sql::Sql, params: impl rusqlite::Params) -> Result<u64, StoreError> {
        let n: i64 = self.conn.prepare_cached(sql.sqlite)?.query_row(params, |r| r.get(0))?;
        Ok(n as u64)
    }

    /// An INSERT … RETURNING id.
    fn insert(&self, sql: sql::Sql, params: impl rusqlite::Params) -> Result<i64, StoreError> {
        Ok(self.conn.prepare_cached(sql.sqlite)?.query_row(params, |r| r.get(0))?)
    }

    /// A statement that writes (INSERT, UPDATE, DELETE): how many rows it changed.
    fn change(&self, sql: sql::Sql, params: impl rusqlite::Params) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached(sql.sqlite)?.execute(params)?)
    }

    /// An audit row: the columns every row has, in the order
    /// [`sql::ADD_AUDIT`] lists them, then `late` (a spooled row's).
    fn insert_audit(&self, sql: sql::Sql, e: &NewAudit, late: &[&dyn rusqlite::ToSql]) -> Result<usize, StoreError> {
        let (method, result) = (e.method.as_str(), e.result.as_str());
        let mut p: Vec<&dyn rusqlite::ToSql> =
            vec![&e.time, &e.user, &e.service, &e.rhost, &e.tty, &e.machine, &method, &result, &e.reason];
        p.extend_from_slice(late);
        self.change(sql, p.as_slice())
    }
}

/// A double-quoted word is an identifier, never a string literal: the texts
/// SQLite shares with PostgreSQL ([`crate::store::sql`]) quote `"user"`,
/// which must name the column or fail to prepare.
fn identifiers_only(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    Ok(())
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let method: String = r.get("method")?;
    Ok(UserRecord {
        name: r.get("name")?,
        uid: r.get("uid")?,
        method: parse_method(&method),
        enabled: r.get("enabled")?,
        email: r.get("email")?,
        secret: r.get("secret")?,
        activated_at: r.get("activated_at")?,
        last_step: r.get("last_step")?,
        failures: r.get("failures")?,
        locked_until: r.get("locked_until")?,
        lock_periods: r.get("lock_periods")?,
        failures_since_login: r.get("failures_since_login")?,
        admin_locked_at: r.get("admin_locked_at")?,
        last_login: r.get("last_login")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        password_hash: r.get("password_hash")?,
        last_method: r.get::<_, Option<String>>("last_method")?.and_then(|m| AuditMethod::parse(&m).ok()),
        hotp_counter: r.get("hotp_counter")?,
        digits: r.get("digits")?,
        clock_drift_secs: r.get("clock_drift_secs")?,
        clock_drift_at: r.get("clock_drift_at")?,
        clock_drift_refusals: r.get("clock_drift_refusals")?,
    })
}

fn code_from_row(r: &Row<'_>) -> rusqlite::Result<EmailCode> {
    Ok(EmailCode {
        id: r.get("id")?,
        user: r.get("user")?,
        machine: r.get("machine")?,
        address: r.get("address")?,
        code_hash: r.get("code_hash")?,
        code_enc: r.get("code_enc")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        used_at: r.get("used_at")?,
        origin: r.get("origin")?,
        emergency: r.get("emergency")?,
    })
}

fn request_from_row(r: &Row<'_>) -> rusqlite::Result<EmergencyRequest> {
    Ok(EmergencyRequest {
        id: r.get("id")?,
        user: r.get("user")?,
        machine: r.get("machine")?,
        address: r.get("address")?,
        reason: r.get("reason")?,
        origin: r.get("origin")?,
        created_at: r.get("created_at")?,
        status: {
            let s: String = r.get("status")?;
            RequestStatus::parse(&s).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("request status {s:?}").into(),
                )
            })?
        },
        decided_at: r.get("decided_at")?,
        decided_by: r.get("decided_by")?,
    })
}

impl PlanReads for SqliteStore {
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::USER.sqlite)?;
        Ok(st.query_row([name], user_from_row).optional()?)
    }

    fn user_by_uid(&mut self, uid: u32) -> Result<Option<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::USER_BY_UID.sqlite)?;
        Ok(st.query_row([uid], user_from_row).optional()?)
    }

    fn enabled_user_nocase(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::ENABLED_USER_NOCASE.sqlite)?;
        let found = st.query_map([name], user_from_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(if found.len() == 1 { found.into_iter().next() } else { None })
    }

    fn in_group(&mut self, group: &str, name: &str) -> Result<bool, StoreError> {
        let mut st = self.conn.prepare_cached(sql::IN_GROUP.sqlite)?;
        Ok(st.query_row([group, name], |_| Ok(())).optional()?.is_some())
    }

    fn failing_mail_for(&mut self, user: &str) -> Result<u64, StoreError> {
        self.count(sql::FAILING_MAIL, params![user])
    }
}

impl Store for SqliteStore {
    fn save_user(&mut self, u: &UserRecord) -> Result<(), StoreError> {
        self.change(
            sql::SAVE_USER,
            params![
                u.name,
                u.uid,
                u.method.to_string(),
                u.enabled,
                u.email,
                u.secret,
                u.activated_at,
                u.last_step,
                u.failures,
                u.locked_until,
                u.last_login,
                u.created_at,
                u.updated_at,
                u.password_hash,
                u.last_method.map(AuditMethod::as_str),
                u.lock_periods,
                u.failures_since_login,
                u.admin_locked_at,
                u.hotp_counter,
                u.digits,
                u.clock_drift_secs,
                u.clock_drift_at,
                u.clock_drift_refusals
            ],
        )?;
        Ok(())
    }

    fn consume_counter(&mut self, user: &str, matched: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::CONSUME_COUNTER, params![user, matched])? == 1)
    }

    fn consume_step(&mut self, user: &str, step: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::CONSUME_STEP, params![user, step])? == 1)
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::USERS.sqlite)?;
        let rows = st.query_map([], user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn users_page(
        &mut self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let pattern = search.map(crate::store::model::like_pattern);
        let mut st = self.conn.prepare_cached(sql::USERS_PAGE.sqlite)?;
        let rows = st.query_map(params![pattern, after, limit], user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_recovery_codes(&mut self, user: &str, salt: &[u8], hashes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.change(sql::DELETE_RECOVERY_CODES, [user])?;
        let mut st = self.conn.prepare_cached(sql::INSERT_RECOVERY_CODE.sqlite)?;
        for h in hashes {
            st.execute(params![user, salt, h])?;
        }
        Ok(())
    }

    fn recovery_salt(&mut self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::RECOVERY_SALT.sqlite)?;
        Ok(st.query_row([user], |r| r.get(0)).optional()?)
    }

    fn use_recovery_code(&mut self, user: &str, hash: &[u8]) -> Result<bool, StoreError> {
        Ok(self.change(sql::USE_RECOVERY_CODE, params![user, hash])? == 1)
    }

    fn recovery_codes_left(&mut self, user: &str) -> Result<u64, StoreError> {
        self.count(sql::RECOVERY_CODES_LEFT, [user])
    }

    fn set_group_members(&mut self, group: &str, names: &[String]) -> Result<(), StoreError> {
        self.change(sql::DELETE_GROUP_MEMBERS, [group])?;
        let mut st = self.conn.prepare_cached(sql::INSERT_GROUP_MEMBERS.sqlite)?;
        for n in names {
            st.execute(params![group, n])?;
        }
        Ok(())
    }

    fn add_audit(&mut self, e: &NewAudit) -> Result<(), StoreError> {
        self.insert_audit(sql::ADD_AUDIT, e, &[])?;
        Ok(())
    }

    fn add_late_audit(&mut self, e: &NewAudit, received_at: i64, spool_id: Option<&str>) -> Result<bool, StoreError> {
        Ok(self.insert_audit(sql::ADD_LATE_AUDIT, e, &[&received_at, &spool_id])? > 0)
    }

    fn prune_audit(&mut self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let n = self.change(sql::PRUNE_AUDIT, params![before, limit])?;
        // A user may record its own sessions (within its rate allowance):
        // without an age limit they would grow the database for ever.
        let sessions = self.change(sql::PRUNE_SESSIONS, params![before, limit])?;
        Ok((n + sessions) as u64)
    }

    fn audit_page(&mut self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let text = sql::audit_page(q.user.is_some(), q.machine.is_some(), q.result.is_some());
        let mut st = self.conn.prepare_cached(text.sqlite)?;
        let args = params![q.user, q.machine, q.since, q.limit, q.result, q.until, q.before_id];
        let rows = st.query_map(args, |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                time: r.get(1)?,
                user: r.get(2)?,
                service: r.get(3)?,
                rhost: r.get(4)?,
                tty: r.get(5)?,
                machine: r.get(6)?,
                method: r.get(7)?,
                result: r.get(8)?,
                reason: r.get(9)?,
                received_at: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn counts(&mut self, now: i64) -> Result<Counts, StoreError> {
        let mut st = self.conn.prepare_cached(sql::COUNT_USERS.sqlite)?;
        let (t, e, a, l): (i64, i64, i64, i64) =
            st.query_row([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let audit_entries = self.count(sql::COUNT_AUDIT, [])?;
        Ok(Counts {
            users_total: t as u64,
            users_enabled: e as u64,
            users_activated: a as u64,
            users_locked: l as u64,
            audit_entries,
        })
    }

    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(sql::SCHEMA_VERSION.sqlite, [], |r| r.get(0))?)
    }

    fn latest_email_code(&mut self, user: &str, machine: Option<&str>) -> Result<Option<EmailCode>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::LATEST_EMAIL_CODE.sqlite)?;
        Ok(st.query_row(params![user, machine], code_from_row).optional()?)
    }

    fn insert_email_code(&mut self, c: &EmailCode) -> Result<i64, StoreError> {
        self.insert(
            sql::INSERT_EMAIL_CODE,
            params![
                c.user,
                c.machine,
                c.address,
                c.code_hash,
                c.code_enc,
                c.created_at,
                c.expires_at,
                c.used_at,
                c.origin,
                c.emergency
            ],
        )
    }

    fn retire_email_code(&mut self, id: i64, used_at: Option<i64>) -> Result<bool, StoreError> {
        Ok(self.change(sql::RETIRE_EMAIL_CODE, params![id, used_at])? == 1)
    }

    fn enqueue_mail(&mut self, code_id: i64, to: &str, now: i64) -> Result<i64, StoreError> {
        self.insert(sql::ENQUEUE_MAIL, params![code_id, to, now])
    }

    fn count_mail_since(&mut self, what: MailCount<'_>, since: i64) -> Result<u64, StoreError> {
        match what {
            MailCount::All => self.count(sql::COUNT_MAIL, [since]),
            MailCount::Address(a) => self.count(sql::COUNT_MAIL_TO, params![a, since]),
            MailCount::Code(id) => self.count(sql::COUNT_MAIL_OF_CODE, params![id, since]),
        }
    }

    fn due_mail(&mut self, now: i64, limit: u32) -> Result<Vec<QueuedMail>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::DUE_MAIL.sqlite)?;
        let rows = st.query_map(params![now, limit], |r| {
            Ok(QueuedMail {
                id: r.get("oid")?,
                attempts: r.get("attempts")?,
                to_addr: r.get("to_addr")?,
                code: code_from_row(r)?,
            })
        })?;
        let due: Vec<QueuedMail> = rows.collect::<Result<_, _>>()?;
        let mut claim = self.conn.prepare_cached(sql::CLAIM_MAIL.sqlite)?;
        for m in &due {
            claim.execute(params![m.id, now + MAIL_LEASE])?;
        }
        Ok(due)
    }

    fn mail_sent(&mut self, id: i64, now: i64) -> Result<(), StoreError> {
        self.change(sql::MAIL_SENT, params![id, now])?;
        Ok(())
    }

    fn mail_failed(&mut self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), StoreError> {
        self.change(sql::MAIL_FAILED, params![id, next_attempt_at, error])?;
        Ok(())
    }

    fn mail_stats(&mut self, now: i64) -> Result<MailStats, StoreError> {
        let (queued, failing, sent): (i64, i64, i64) =
            self.conn.query_row(sql::MAIL_COUNTS.sqlite, [now - 3600], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let last_error: Option<String> =
            self.conn.query_row(sql::MAIL_LAST_ERROR.sqlite, [], |r| r.get(0)).optional()?;
        Ok(MailStats { queued: queued as u64, failing: failing as u64, sent_last_hour: sent as u64, last_error })
    }

    fn insert_request(&mut self, r: &EmergencyRequest) -> Result<i64, StoreError> {
        self.insert(
            sql::INSERT_REQUEST,
            params![r.user, r.machine, r.address, r.reason, r.origin, r.created_at, r.status.as_str()],
        )
    }

    fn count_requests(&mut self, which: RequestCount<'_>) -> Result<u64, StoreError> {
        match which {
            RequestCount::All { pending_only } => self.count(sql::COUNT_REQUESTS, [pending_only]),
            RequestCount::PendingForUser(user) => self.count(sql::COUNT_PENDING_FOR_USER, [user]),
            RequestCount::PendingForAddress(address) => self.count(sql::COUNT_PENDING_FOR_ADDRESS, [address]),
        }
    }

    fn request(&mut self, id: i64) -> Result<Option<EmergencyRequest>, StoreError> {
        Ok(self.conn.prepare_cached(sql::REQUEST.sqlite)?.query_row([id], request_from_row).optional()?)
    }

    fn requests(&mut self, pending_only: bool) -> Result<Vec<EmergencyRequest>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::REQUESTS.sqlite)?;
        let rows = st.query_map([pending_only], request_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn decide_request(&mut self, id: i64, status: RequestStatus, by: u32, now: i64) -> Result<(), StoreError> {
        self.change(sql::DECIDE_REQUEST, params![id, status.as_str(), by, now])?;
        Ok(())
    }

    fn open_session(&mut self, s: &SessionRecord) -> Result<i64, StoreError> {
        self.insert(
            sql::OPEN_SESSION,
            params![s.user, s.email, s.machine, s.service, s.rhost, s.tty, s.pid, s.opened_at],
        )
    }

    fn close_session(
        &mut self,
        user: &str,
        machine: &str,
        service: &str,
        pid: u32,
        now: i64,
    ) -> Result<u64, StoreError> {
        Ok(self.change(sql::CLOSE_SESSION, params![user, service, pid, now, machine])? as u64)
    }

    fn sessions(&mut self, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::SESSIONS.sqlite)?;
        let rows = st.query_map([limit], |r| {
            Ok(SessionRecord {
                id: r.get("id")?,
                user: r.get("user")?,
                email: r.get("email")?,
                machine: r.get("machine")?,
                service: r.get("service")?,
                rhost: r.get("rhost")?,
                tty: r.get("tty")?,
                pid: r.get("pid")?,
                opened_at: r.get("opened_at")?,
                closed_at: r.get("closed_at")?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_host(&mut self, h: &HostRecord) -> Result<bool, StoreError> {
        let n = self.change(
            sql::ADD_HOST,
            params![
                h.name,
                h.role.as_str(),
                h.fingerprint,
                h.added_at,
                h.revoked_at,
                h.last_seen,
                h.last_addr,
                h.expires_at,
                h.ca,
                h.renewed_at,
                h.prev_fingerprint,
                h.prev_until
            ],
        )?;
        Ok(n == 1)
    }

    fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::HOST.sqlite)?;
        st.query_row([name], host_from_row).optional()?.transpose()
    }

    fn host_by_fingerprint(&mut self, fp: &[u8]) -> Result<Option<HostRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::HOST_BY_FINGERPRINT.sqlite)?;
        st.query_row([fp], host_from_row).optional()?.transpose()
    }

    fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::HOSTS.sqlite)?;
        let rows = st.query_map([], host_from_row)?;
        rows.map(|r| r?).collect()
    }

    fn revoke_host(&mut self, name: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::REVOKE_HOST, params![name, now])? == 1)
    }

    fn host_seen(&mut self, name: &str, now: i64, addr: &str) -> Result<(), StoreError> {
        self.change(sql::HOST_SEEN, params![name, now, addr])?;
        Ok(())
    }

    fn renew_host(&mut self, name: &str, r: &Renewal) -> Result<bool, StoreError> {
        let args = params![name, r.fingerprint, r.expires_at, r.ca, r.now, r.presented, r.presented_until];
        Ok(self.change(sql::RENEW_HOST, args)? == 1)
    }

    fn host_presented(&mut self, name: &str, fp: &[u8], until: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::HOST_PRESENTED, params![name, fp, until])? == 1)
    }

    fn fleet_cas(&mut self) -> Result<Vec<StoredCa>, StoreError> {
        let mut st = self.conn.prepare_cached(sql::FLEET_CAS.sqlite)?;
        let rows = st.query_map([], |r| {
            Ok(StoredCa { id: r.get(0)?, cert_pem: r.get(1)?, key_sealed: r.get(2)?, added_at: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn set_fleet_ca_if_absent(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::SET_FLEET_CA, params![cert_pem, key_sealed, now])? == 1)
    }

    fn add_fleet_ca(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::ADD_FLEET_CA, params![cert_pem, key_sealed, now])? == 1)
    }

    fn retire_fleet_ca(&mut self, id: i64) -> Result<bool, StoreError> {
        Ok(self.change(sql::RETIRE_FLEET_CA, params![id])? == 1)
    }

    fn revoke_hosts_of_ca(&mut self, ca: &[u8], now: i64) -> Result<u64, StoreError> {
        Ok(self.change(sql::REVOKE_HOSTS_OF_CA, params![ca, now])? as u64)
    }

    fn end_replaced_certificates(&mut self, now: i64) -> Result<u64, StoreError> {
        Ok(self.change(sql::END_REPLACED_CERTIFICATES, params![now])? as u64)
    }

    fn set_hosts_ca_if_unknown(&mut self, ca: &[u8]) -> Result<u64, StoreError> {
        Ok(self.change(sql::HOSTS_CA_UNKNOWN, params![ca])? as u64)
    }
}

/// A hosts row; the outer error is SQLite's, the inner one a bad role.
fn host_from_row(r: &Row<'_>) -> rusqlite::Result<Result<HostRecord, StoreError>> {
    let role: String = r.get("role")?;
    let (name, fingerprint, added_at, revoked_at, last_seen, last_addr) = (
        r.get("name")?,
        r.get("fingerprint")?,
        r.get("added_at")?,
        r.get("revoked_at")?,
        r.get("last_seen")?,
        r.get("last_addr")?,
    );
    let (expires_at, ca, renewed_at, prev_fingerprint, prev_until) =
        (r.get("expires_at")?, r.get("ca")?, r.get("renewed_at")?, r.get("prev_fingerprint")?, r.get("prev_until")?);
    Ok(HostRole::parse(&role).map(|role| HostRecord {
        name,
        role,
        fingerprint,
        added_at,
        revoked_at,
        last_seen,
        last_addr,
        expires_at,
        ca,
        renewed_at,
        prev_fingerprint,
        prev_until,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::proto::Method;

    fn alice() -> UserRecord {
        UserRecord {
            name: "alice".into(),
            uid: Some(1000),
            method: Method::Totp,
            enabled: true,
            email: None,
            secret: Some(vec![1, 2, 3]),
            activated_at: None,
            last_step: None,
            failures: 0,
            locked_until: None,
            lock_periods: 0,
            failures_since_login: 0,
            admin_locked_at: None,
            last_login: None,
            created_at: 10,
            updated_at: 10,
            password_hash: None,
            last_method: None,
            hotp_counter: None,
            digits: None,
            clock_drift_secs: Some(90),
            clock_drift_at: Some(11),
            clock_drift_refusals: 1,
        }
    }

    #[test]
    fn users_roundtrip_and_update() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.user("alice").unwrap(), None);
        let mut a = alice();
        s.save_user(&a).unwrap();
        assert_eq!(s.user("alice").unwrap(), Some(a.clone()));
        a.last_step = Some(42);
        a.failures = 3;
        a.created_at = 999; // created_at is kept from the first insert
        s.save_user(&a).unwrap();
        let back = s.user("alice").unwrap().unwrap();
        assert_eq!((back.last_step, back.failures, back.created_at), (Some(42), 3, 10));
        assert_eq!(s.users().unwrap().len(), 1);
        assert_eq!(s.schema_version().unwrap(), crate::store::schema::SQLITE.len() as i64);
    }

    #[test]
    fn user_by_uid_prefers_the_enabled_record() {
        let mut s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.user_by_uid(1000).unwrap(), None);
        let old = UserRecord { name: "aaa-old".into(), enabled: false, ..alice() };
        s.save_user(&old).unwrap();
        assert_eq!(s.user_by_uid(1000).unwrap(), Some(old));
        s.save_user(&alice()).unwrap();
        assert_eq!(s.user_by_uid(1000).unwrap().map(|u| u.name), Some("alice".into()));
        assert_eq!(s.user_by_uid(1001).unwrap(), None);
        let plan: String =
            s.conn.query_row("EXPLAIN QUERY PLAN SELECT * FROM users WHERE uid = 1000", [], |r| r.get(3)).unwrap();
        assert!(plan.contains("users_by_uid"), "looked up without the index: {plan}");
    }

    #[test]
    fn audit_filters_newest_first() {
        let mut s = SqliteStore::in_memory().unwrap();
        for (t, u) in [(100, "a"), (200, "b"), (300, "a")] {
            s.add_audit(&NewAudit { time: t, user: u.into(), result: AuditResult::Deny, ..Default::default() })
                .unwrap();
        }
        let all = s.audit(None, None, None, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.time).collect::<Vec<_>>(), vec![300, 200, 100]);
        assert_eq!(s.audit(Some("a"), None, None, 10).unwrap().len(), 2);
        assert_eq!(s.audit(None, None, Some(200), 10).unwrap().len(), 2);
        assert_eq!(s.audit(None, None, None, 1).unwrap().len(), 1);
    }

    #[test]
    fn prune_deletes_only_old_rows_in_batches() {
        let mut s = SqliteStore::in_memory().unwrap();
        for t in 0..25 {
            s.add_audit(&NewAudit { time: t, user: "a".into(), ..Default::default() }).unwrap();
        }
        assert_eq!(s.prune_audit(20, 10).unwrap(), 10);
        assert_eq!(s.prune_audit(20, 10).unwrap(), 10);
        assert_eq!(s.prune_audit(20, 10).unwrap(), 0);
        let left: Vec<i64> = s.audit(None, None, None, 100).unwrap().into_iter().map(|e| e.time).collect();
        assert_eq!(left, vec![24, 23, 22, 21, 20]);
        // Sessions age out too: by their end, or their start when still open.
        for (pid, opened_at, closed_at) in [(1, 5, Some(10)), (2, 5, Some(30)), (3, 6, None), (4, 40, None)] {
            let rec = SessionRecord {
                id: 0,
                user: "a".into(),
                email: None,
                machine: "m".into(),
                service: "s".into(),
                rhost: None,
                tty: None,
                pid,
                opened_at,
                closed_at: None,
            };
            s.open_session(&rec).unwrap();
            if let Some(t) = closed_at {
                s.close_session("a", "m", "s", pid, t).unwrap();
            }
        }
        assert_eq!(s.prune_audit(20, 10).unwrap(), 2);
        let left: Vec<i64> = s.sessions(100).unwrap().into_iter().map(|r| r.opened_at).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&40));
    }

    #[test]
    fn request_counts_are_true_counts() {
        let mut s = SqliteStore::in_memory().unwrap();
        for i in 0..1200 {
            s.insert_request(&EmergencyRequest {
                id: 0,
                user: if i % 2 == 0 { "erin".into() } else { "dave".into() },
                machine: "m".into(),
                address: if i == 0 { "Erin@Example.org".into() } else { format!("x{i}@example.org") },
                reason: "r".into(),
                origin: "o".into(),
                created_at: i,
                status: RequestStatus::Pending,
                decided_at: None,
                decided_by: None,
            })
            .unwrap();
        }
        s.decide_request(1, RequestStatus::Denied, 0, 5).unwrap();
        s.decide_request(3, RequestStatus::Approved, 0, 5).unwrap();
        assert_eq!(s.requests(true).unwrap().len(), 1000, "the list is capped");
        assert_eq!(s.count_requests(RequestCount::All { pending_only: true }).unwrap(), 1198);
        assert_eq!(s.count_requests(RequestCount::All { pending_only: false }).unwrap(), 1200);
        assert_eq!(s.count_requests(RequestCount::PendingForUser("erin")).unwrap(), 598);
        assert_eq!(s.count_requests(RequestCount::PendingForAddress("x4@EXAMPLE.org")).unwrap(), 1);
        assert_eq!(s.count_requests(RequestCount::PendingForAddress("erin@example.org")).unwrap(), 0, "denied");
    }

    #[test]
    fn refuses_corrupt_and_non_database_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.db");
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        assert!(matches!(SqliteStore::open(&p), Err(StoreError::Unusable { .. })));

        // A real database whose pages were then scribbled over.
        let p = dir.path().join("real.db");
        {
            let mut s = SqliteStore::open(&p).unwrap();
            for i in 0..2000 {
                s.add_audit(&NewAudit { time: i, user: format!("user{i}"), ..Default::default() }).unwrap();
            }
            s.exec("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        }
        let mut bytes = std::fs::read(&p).unwrap();
        assert!(bytes.len() > 16384);
        for b in &mut bytes[8192..12288] {
            *b = 0xA5;
        }
        std::fs::write(&p, bytes).unwrap();
        assert!(matches!(SqliteStore::open(&p), Err(StoreError::Unusable { .. })));

        let d = dir.path().join("adir");
        std::fs::create_dir(&d).unwrap();
        assert!(matches!(SqliteStore::open(&d), Err(StoreError::Unusable { .. })));
    }

    #[test]
    fn refuses_database_files_someone_else_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("otpd.db");
        SqliteStore::open(&p).unwrap().save_user(&alice()).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let f = dir.path().join(format!("otpd.db{suffix}"));
            if !f.exists() {
                std::fs::write(&f, b"").unwrap();
            }
            std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
            let err = SqliteStore::open(&p).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(&format!("otpd.db{suffix} is unusable: the database")), "{err}");
            assert!(err.contains("is owned by uid 65534"), "{err}");
            std::os::unix::fs::chown(&f, Some(0), None).unwrap();
        }
        assert_eq!(SqliteStore::open(&p).unwrap().user("alice").unwrap(), Some(alice()));
    }

    #[test]
    fn every_commit_is_durable_wal_with_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("otpd.db")).unwrap();
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        let sync: i64 = s.conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL with synchronous=FULL (2)");
    }

    #[test]
    fn upgrade_from_schema_2_keeps_users() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        {
            let conn = Connection::open(&p).unwrap();
            for sql in &crate::store::schema::SQLITE[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO users (name, uid, method, enabled, secret, last_step, failures, created_at, updated_at)
                 VALUES ('alice', 1000, 'totp', 1, x'010203', 42, 3, 10, 10)",
                [],
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::store::schema::SQLITE.len() as i64);
        let a = s.user("alice").unwrap().unwrap();
        assert_eq!((a.uid, a.secret, a.last_step, a.failures), (Some(1000), Some(vec![1, 2, 3]), Some(42), 3));
        let without_rowid: i64 = s
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'users' AND sql LIKE '%WITHOUT ROWID%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(without_rowid, 1);
    }

    #[test]
    fn upgrade_to_escalating_lockout_keeps_users_and_their_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("old.db");
        let before = crate::store::schema::SQLITE.iter().position(|m| m.contains("lock_periods")).unwrap();
        {
            let conn = Connection::open(&p).unwrap();
            for sql in &crate::store::schema::SQLITE[..before] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64).unwrap();
            conn.execute_batch(
                "INSERT INTO users (name, uid, method, enabled, secret, last_step, failures, locked_until, created_at, updated_at)
                 VALUES ('locked', 1000, 'totp', 1, x'010203', 42, 0, 5000, 10, 10),
                        ('typo', 1001, 'totp', 1, x'040506', 43, 2, NULL, 10, 10)",
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::store::schema::SQLITE.len() as i64);
        let l = s.user("locked").unwrap().unwrap();
        assert_eq!((l.secret.clone(), l.last_step, l.locked_until), (Some(vec![1, 2, 3]), Some(42), Some(5000)));
        assert_eq!((l.lock_periods, l.admin_locked_at), (1, None), "one lock since the last success");
        assert!(l.is_locked(4999) && !l.is_locked(5000));
        let t = s.user("typo").unwrap().unwrap();
        assert_eq!((t.failures, t.failures_since_login, t.lock_periods), (2, 2, 0));
        assert_eq!(s.counts(0).unwrap().users_locked, 1);
        // The new state round-trips.
        let mut l = l;
        l.admin_locked_at = Some(6000);
        l.lock_periods = 10;
        l.failures_since_login = 100;
        s.save_user(&l).unwrap();
        assert_eq!(s.user("locked").unwrap().unwrap(), l);
        assert_eq!(s.counts(1_000_000).unwrap().users_locked, 1, "an admin lock never runs out");
    }

    #[test]
    fn reopen_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("otpd.db");
        SqliteStore::open(&p).unwrap().save_user(&alice()).unwrap();
        assert_eq!(SqliteStore::open(&p).unwrap().user("alice").unwrap(), Some(alice()));
    }
}
