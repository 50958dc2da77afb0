//! The [`Store`] on PostgreSQL, for fleet servers sharing one database.
//!
//! Same tables and columns as the SQLite schema (`"user"` quoted: it is a
//! reserved word here); timestamps are BIGINT unix seconds, blobs BYTEA,
//! flags BOOLEAN. Each [`crate::store::db`] worker owns one `PgStore` and runs one
//! job per transaction; the concurrency contract is in [`crate::store::model`].
//! The statements are in [`crate::store::sql`], beside SQLite's.
use crate::store::model::{
    AuditMethod, AuditQuery, Counts, EmailCode, EmergencyRequest, HostRecord, HostRole, MailCount, MailStats, NewAudit,
    PlanReads, QueuedMail, Renewal, RequestCount, SessionRecord, Store, StoreError, StoredCa, UserRecord,
};
use crate::store::pgtls::{self, MakeTls, Plan, TlsStream};
use crate::store::sql;
use common::proto::{AuditEntry, RequestStatus};
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use std::collections::HashMap;
use std::time::Duration;

/// Advisory lock keys ("otpd" in the high bytes). Session-level for the
/// migration; transaction-level for the caps, so each cap's count-then-insert
/// runs one transaction at a time across every server.
const LOCK_MIGRATE: i64 = 0x6f74_7064_0000_0001;
const LOCK_MAIL_CAP: i64 = 0x6f74_7064_0000_0002;
const LOCK_REQUEST_CAP: i64 = 0x6f74_7064_0000_0003;

/// A database URL made ready to connect: tokio-postgres's settings (the
/// same for both clients) and the TLS they need ([`crate::store::pgtls`]),
/// its files read once.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    plan: Plan,
    tls: MakeTls,
}

/// A connection of the async client, to be driven by a task of its own.
pub type PgConnection = tokio_postgres::Connection<tokio_postgres::Socket, TlsStream<tokio_postgres::Socket>>;

impl PgTarget {
    /// Parses `url` ([`async_config`]'s checks and settings) and reads the
    /// certificates and key it names.
    pub fn new(url: &str) -> Result<PgTarget, StoreError> {
        let (config, plan) = parse(url)?;
        let tls = pgtls::load(&plan).map_err(|why| StoreError::Unusable { path: describe(&config), why })?;
        Ok(PgTarget { config, plan, tls })
    }

    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_tls()
    }

    /// A connection of the blocking client (not from a tokio thread: it
    /// runs a runtime of its own).
    pub fn connect_blocking(&self) -> Result<Client, StoreError> {
        postgres::Config::from(self.config.clone()).connect(self.tls.clone()).map_err(|e| self.explain(e))
    }

    /// A connection of the async client.
    pub async fn connect(&self) -> Result<(tokio_postgres::Client, PgConnection), StoreError> {
        self.config.connect(self.tls.clone()).await.map_err(|e| self.explain(e))
    }

    /// A failed connection, said so that an admin knows what to fix where
    /// it is about TLS.
    fn explain(&self, e: postgres::Error) -> StoreError {
        let Plan::Tls { rootcert, client, .. } = &self.plan else { return e.into() };
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        match pgtls::explain(&e, &hosts.join(","), Some(rootcert), client.is_some()) {
            Some(why) => StoreError::Unusable { path: describe(&self.config), why },
            None => e.into(),
        }
    }
}

/// Parses a `postgresql://` URL (no file read): its TLS options
/// ([`crate::store::pgtls`]: a network host needs a verified certificate or
/// an explicit `sslmode=disable`) and otpd's settings. A server that cannot
/// be reached must not hold a login for long: without a timeout in the URL,
/// connecting gives up after a few seconds.
pub fn async_config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    parse(url).map(|(config, _)| config)
}

fn parse(url: &str) -> Result<(tokio_postgres::Config, Plan), StoreError> {
    let unusable = |why: String| StoreError::Unusable { path: "the PostgreSQL URL".into(), why };
    let (url, options) = pgtls::split_url(url).map_err(unusable)?;
    let mut config: tokio_postgres::Config = url.parse()?;
    let plan = pgtls::plan(&config, &options).map_err(|why| StoreError::Unusable { path: describe(&config), why })?;
    // tokio-postgres's own "prefer" would silently fall back to clear
    // text: TLS is either required (and verified) or not used at all.
    config.ssl_mode(match plan {
        Plan::Plain => tokio_postgres::config::SslMode::Disable,
        Plan::Tls { .. } => tokio_postgres::config::SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A server that hangs while holding a user's row lock (stopped, not
    // dead: its connection stays open) must not hang every other server's
    // logins of that user: waits end in an error, and the login is denied.
    // And the holder must not keep the lock for the length of its pause
    // (SIGSTOP, a frozen VM, a partition — check 37): PostgreSQL ends a
    // session idle inside a transaction after 3 s (otpd's transactions
    // never wait between statements) and one whose peer stopped answering
    // TCP keepalives; the transaction rolls back and the other servers
    // decide. Options in the URL come after these, so a site may change them.
    let ours = "-c lock_timeout=5s -c statement_timeout=10s -c idle_in_transaction_session_timeout=3s \
                -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3";
    let options = match config.get_options() {
        Some(theirs) => format!("{ours} {theirs}"),
        None => ours.to_string(),
    };
    config.options(&options);
    // Our side of the same: a database that went away without a word is
    // noticed within seconds, not after the kernel's two hours.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(5));
    config.keepalives_interval(Duration::from_secs(2));
    config.keepalives_retries(3);
    Ok((config, plan))
}

/// The database as logs and `otpctl status` show it: user, hosts, ports
/// and name, never a password (wherever the URL carried it).
pub fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgresql://{}@{}:{}/{}",
        config.get_user().unwrap_or("-"),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("-")
    )
}

pub struct PgStore {
    client: Client,
    /// Prepared once per connection: a login runs the same few statements.
    statements: HashMap<&'static str, Statement>,
    /// A statement failed since BEGIN: PostgreSQL has aborted the transaction.
    failed: bool,
    /// A read-only job outside a transaction ([`crate::store::db::Db::read`]): rows
    /// are read without locks and writes are refused.
    reading: bool,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl PgStore {
    /// Connects (with TLS where the URL asks for it). Does not migrate.
    pub fn connect(target: &PgTarget) -> Result<PgStore, StoreError> {
        let client = target.connect_blocking()?;
        Ok(PgStore { client, statements: HashMap::new(), failed: false, reading: false })
    }

    /// Connects to `url` and brings the schema up to date (tests, tools).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut store = PgStore::connect(&PgTarget::new(url)?)?;
        store.migrate()?;
        Ok(store)
    }

    /// Runs the missing migrations, each in its own transaction, holding a
    /// session advisory lock so that servers starting together take turns
    /// (CREATE TABLE IF NOT EXISTS alone still races in PostgreSQL).
    pub fn migrate(&mut self) -> Result<(), StoreError> {
        self.client.execute(sql::postgres::LOCK, &[&LOCK_MIGRATE])?;
        let result = self.migrate_locked();
        let unlocked = self.client.execute(sql::postgres::UNLOCK, &[&LOCK_MIGRATE]);
        result?;
        unlocked?;
        Ok(())
    }

    fn migrate_locked(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute(
            "CREATE TABLE IF NOT EXISTS otpd_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
             INSERT INTO otpd_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
        )?;
        let version: i64 = self.client.query_one(sql::SCHEMA_VERSION.postgres, &[])?.try_get(0)?;
        let known = crate::store::schema::POSTGRES.len() as i64;
        if version > known || version < 0 {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this otpd understands ({known})"
            )));
        }
        for (i, step) in crate::store::schema::POSTGRES.iter().enumerate().skip(version as usize) {
            let mut tx = self.client.transaction()?;
            tx.batch_execute(step)?;
            tx.execute(sql::postgres::SET_SCHEMA_VERSION, &[&(i as i64 + 1)])?;
            tx.commit()?;
        }
        Ok(())
    }

    pub(crate) fn begin(&mut self) -> Result<(), postgres::Error> {
        self.failed = false;
        self.client.batch_execute("BEGIN")
    }

    /// COMMIT, ROLLBACK.
    pub(crate) fn control(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }

    pub(crate) fn failed_in_transaction(&self) -> bool {
        self.failed
    }

    pub(crate) fn set_reading(&mut self, reading: bool) {
        self.reading = reading;
    }

    /// Outside a transaction every statement would commit on its own.
    fn refuse_write(&self, sql: &str) -> Result<(), StoreError> {
        if self.reading && !sql.trim_start().starts_with("SELECT") {
            return Err(StoreError::Corrupt(format!("a write in a read-only job: {sql}")));
        }
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    fn note<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, StoreError> {
        if r.is_err() {
            self.failed = true;
        }
        Ok(r?)
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.statements.get(sql) {
            return Ok(st.clone());
        }
        let st = self.client.prepare(sql)?;
        self.statements.insert(sql, st.clone());
        Ok(st)
    }

    fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.refuse_write(sql)?;
        let r = self.statement(sql).and_then(|st| self.client.query(&st, params));
        self.note(r)
    }

    fn query_opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn query_one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, StoreError> {
        self.query_opt(sql, params)?.ok_or_else(|| StoreError::Corrupt(format!("no row from {sql}")))
    }

    fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        self.refuse_write(sql)?;
        let r = self.statement(sql).and_then(|st| self.client.execute(&st, params));
        self.note(r)
    }

    /// An audit row: the columns every row has, in the order
    /// [`sql::ADD_AUDIT`] lists them, then `late` (a spooled row's).
    fn insert_audit(&mut self, sql: &'static str, e: &NewAudit, late: Params<'_>) -> Result<u64, StoreError> {
        let (method, result) = (e.method.as_str(), e.result.as_str());
        let mut p: Vec<&(dyn ToSql + Sync)> =
            vec![&e.time, &e.user, &e.service, &e.rhost, &e.tty, &e.machine, &method, &result, &e.reason];
        p.extend_from_slice(late);
        self.execute(sql, &p)
    }

    fn count(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, StoreError> {
        let n: i64 = self.query_one(sql, params)?.try_get(0)?;
        Ok(n.max(0) as u64)
    }

    /// Serialises this transaction's count-then-insert with every other
    /// transaction taking the same lock, on any server. The lock is taken in
    /// its own statement: under READ COMMITTED the count that follows then
    /// reads a snapshot that includes whatever the previous holder committed.
    fn cap_lock(&mut self, key: i64) -> Result<(), StoreError> {
        self.execute(sql::postgres::XACT_LOCK, &[&key]).map(|_| ())
    }
}

fn u32_of(v: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is out of range")))
}

fn opt_u32_of(v: Option<i64>, what: &str) -> Result<Option<u32>, StoreError> {
    v.map(|v| u32_of(v, what)).transpose()
}

/// The arguments of [`sql::postgres::ACCEPT_STEP`].
pub(crate) struct AcceptStep<'a> {
    seen: &'a UserRecord,
    secret: &'a [u8],
    digits: Option<i64>,
    step: i64,
    now: i64,
    e: &'a NewAudit,
    /// The audit row's method and result as stored.
    method: &'static str,
    result: &'a str,
    /// A relayed login's host certificate: accepted only while not revoked.
    host: Option<&'a [u8]>,
}

impl<'a> AcceptStep<'a> {
    /// None for a record without a secret (nothing to accept).
    pub(crate) fn new(
        seen: &'a UserRecord,
        step: i64,
        now: i64,
        e: &'a NewAudit,
        host: Option<&'a [u8]>,
    ) -> Option<AcceptStep<'a>> {
        let secret = seen.secret.as_deref()?;
        let (method, result) = (e.method.as_str(), e.result.as_str());
        Some(AcceptStep { seen, secret, digits: seen.digits.map(i64::from), step, now, e, method, result, host })
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        let e = self.e;
        [
            &self.seen.name,
            &self.step,
            &self.now,
            &self.secret,
            &self.digits,
            &e.user,
            &e.service,
            &e.rhost,
            &e.tty,
            &e.machine,
            &self.method,
            &self.result,
            &e.reason,
            &self.host,
        ]
    }
}

pub(crate) fn user_from_row(r: &Row) -> Result<UserRecord, StoreError> {
    let method: String = r.try_get("method")?;
    Ok(UserRecord {
        name: r.try_get("name")?,
        uid: opt_u32_of(r.try_get("uid")?, "uid")?,
        method: crate::store::model::parse_method(&method),
        enabled: r.try_get("enabled")?,
        email: r.try_get("email")?,
        secret: r.try_get("secret")?,
        activated_at: r.try_get("activated_at")?,
        last_step: r.try_get("last_step")?,
        failures: u32_of(r.try_get("failures")?, "failures")?,
        locked_until: r.try_get("locked_until")?,
        lock_periods: u32_of(r.try_get("lock_periods")?, "lock_periods")?,
        failures_since_login: u32_of(r.try_get("failures_since_login")?, "failures_since_login")?,
        admin_locked_at: r.try_get("admin_locked_at")?,
        last_login: r.try_get("last_login")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        password_hash: r.try_get("password_hash")?,
        last_method: r.try_get::<_, Option<String>>("last_method")?.and_then(|m| AuditMethod::parse(&m).ok()),
        hotp_counter: r.try_get("hotp_counter")?,
        digits: opt_u32_of(r.try_get("digits")?, "digits")?,
        clock_drift_secs: r.try_get("clock_drift_secs")?,
        clock_drift_at: r.try_get("clock_drift_at")?,
        clock_drift_refusals: u32_of(r.try_get("clock_drift_refusals")?, "clock_drift_refusals")?,
    })
}

fn code_from_row(r: &Row) -> Result<EmailCode, StoreError> {
    Ok(EmailCode {
        id: r.try_get("id")?,
        user: r.try_get("user")?,
        machine: r.try_get("machine")?,
        address: r.try_get("address")?,
        code_hash: r.try_get("code_hash")?,
        code_enc: r.try_get("code_enc")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        used_at: r.try_get("used_at")?,
        origin: r.try_get("origin")?,
        emergency: r.try_get("emergency")?,
    })
}

fn request_from_row(r: &Row) -> Result<EmergencyRequest, StoreError> {
    Ok(EmergencyRequest {
        id: r.try_get("id")?,
        user: r.try_get("user")?,
        machine: r.try_get("machine")?,
        address: r.try_get("address")?,
        reason: r.try_get("reason")?,
        origin: r.try_get("origin")?,
        created_at: r.try_get("created_at")?,
        status: crate::store::model::parse_status(r.try_get("status")?)?,
        decided_at: r.try_get("decided_at")?,
        decided_by: opt_u32_of(r.try_get("decided_by")?, "decided_by")?,
    })
}

pub(crate) fn host_from_row(r: &Row) -> Result<HostRecord, StoreError> {
    let role: String = r.try_get("role")?;
    Ok(HostRecord {
        name: r.try_get("name")?,
        role: HostRole::parse(&role)?,
        fingerprint: r.try_get("fingerprint")?,
        added_at: r.try_get("added_at")?,
        revoked_at: r.try_get("revoked_at")?,
        last_seen: r.try_get("last_seen")?,
        last_addr: r.try_get("last_addr")?,
        expires_at: r.try_get("expires_at")?,
        ca: r.try_get("ca")?,
        renewed_at: r.try_get("renewed_at")?,
        prev_fingerprint: r.try_get("prev_fingerprint")?,
        prev_until: r.try_get("prev_until")?,
    })
}

fn all<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

impl PlanReads for PgStore {
    /// Locks the row until the transaction ends: another server's login
    /// for the same user waits, then reads what this one wrote.
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = if self.reading { sql::USER.postgres } else { sql::postgres::USER_FOR_UPDATE };
        self.query_opt(sql, &[&name])?.as_ref().map(user_from_row).transpose()
    }

    fn user_by_uid(&mut self, uid: u32) -> Result<Option<UserRecord>, StoreError> {
        let uid = i64::from(uid);
        let sql = if self.reading { sql::USER_BY_UID.postgres } else { sql::postgres::USER_BY_UID_FOR_UPDATE };
        self.query_opt(sql, &[&uid])?.as_ref().map(user_from_row).transpose()
    }

    fn enabled_user_nocase(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let rows = self.query(sql::ENABLED_USER_NOCASE.postgres, &[&name])?;
        if rows.len() != 1 {
            return Ok(None);
        }
        rows.first().map(user_from_row).transpose()
    }

    fn in_group(&mut self, group: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.query_opt(sql::IN_GROUP.postgres, &[&group, &name])?.is_some())
    }

    fn failing_mail_for(&mut self, user: &str) -> Result<u64, StoreError> {
        self.count(sql::FAILING_MAIL.postgres, &[&user])
    }
}

impl Store for PgStore {
    fn save_user(&mut self, u: &UserRecord) -> Result<(), StoreError> {
        let method = u.method.to_string();
        self.execute(
            sql::SAVE_USER.postgres,
            &[
                &u.name,
                &u.uid.map(i64::from),
                &method,
                &u.enabled,
                &u.email,
                &u.secret,
                &u.activated_at,
                &u.last_step,
                &i64::from(u.failures),
                &u.locked_until,
                &u.last_login,
                &u.created_at,
                &u.updated_at,
                &u.password_hash,
                &u.last_method.map(AuditMethod::as_str),
                &i64::from(u.lock_periods),
                &i64::from(u.failures_since_login),
                &u.admin_locked_at,
                &u.hotp_counter,
                &u.digits.map(i64::from),
                &u.clock_drift_secs,
                &u.clock_drift_at,
                &i64::from(u.clock_drift_refusals),
            ],
        )?;
        Ok(())
    }

    /// As [`Self::consume_step`]: a concurrent caller waits on the row lock,
    /// then re-checks the condition against the committed counter.
    fn consume_counter(&mut self, user: &str, matched: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::CONSUME_COUNTER.postgres, &[&user, &matched])? == 1)
    }

    /// The row is updated only if the step is new: a concurrent caller waits
    /// on the row lock, then re-checks the condition against the committed
    /// row and changes nothing.
    fn consume_step(&mut self, user: &str, step: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::CONSUME_STEP.postgres, &[&user, &step])? == 1)
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self.query(sql::USERS.postgres, &[])?;
        all(rows, user_from_row)
    }

    fn users_page(
        &mut self,
        search: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let pattern = search.map(crate::store::model::like_pattern);
        let rows = self.query(sql::USERS_PAGE.postgres, &[&pattern, &after, &i64::from(limit)])?;
        all(rows, user_from_row)
    }

    fn set_recovery_codes(&mut self, user: &str, salt: &[u8], hashes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.execute(sql::DELETE_RECOVERY_CODES.postgres, &[&user])?;
        for h in hashes {
            self.execute(sql::INSERT_RECOVERY_CODE.postgres, &[&user, &salt, &h.as_slice()])?;
        }
        Ok(())
    }

    fn recovery_salt(&mut self, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(match self.query_opt(sql::RECOVERY_SALT.postgres, &[&user])? {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    /// A concurrent delete of the same row (any server) waits for this
    /// transaction, then finds the row gone and deletes nothing.
    fn use_recovery_code(&mut self, user: &str, hash: &[u8]) -> Result<bool, StoreError> {
        Ok(self.execute(sql::USE_RECOVERY_CODE.postgres, &[&user, &hash])? == 1)
    }

    fn recovery_codes_left(&mut self, user: &str) -> Result<u64, StoreError> {
        self.count(sql::RECOVERY_CODES_LEFT.postgres, &[&user])
    }

    fn set_group_members(&mut self, group: &str, names: &[String]) -> Result<(), StoreError> {
        self.execute(sql::DELETE_GROUP_MEMBERS.postgres, &[&group])?;
        // One statement for the whole list: a group may have 100,000 members.
        self.execute(sql::INSERT_GROUP_MEMBERS.postgres, &[&group, &names])?;
        Ok(())
    }

    fn add_audit(&mut self, e: &NewAudit) -> Result<(), StoreError> {
        self.insert_audit(sql::ADD_AUDIT.postgres, e, &[])?;
        Ok(())
    }

    fn add_late_audit(&mut self, e: &NewAudit, received_at: i64, spool_id: Option<&str>) -> Result<bool, StoreError> {
        Ok(self.insert_audit(sql::ADD_LATE_AUDIT.postgres, e, &[&received_at, &spool_id])? > 0)
    }

    fn prune_audit(&mut self, before: i64, limit: u32) -> Result<u64, StoreError> {
        let limit = i64::from(limit);
        let n = self.execute(sql::PRUNE_AUDIT.postgres, &[&before, &limit])?;
        let sessions = self.execute(sql::PRUNE_SESSIONS.postgres, &[&before, &limit])?;
        Ok(n + sessions)
    }

    fn audit_page(&mut self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::from(q.limit);
        let args: [&(dyn postgres::types::ToSql + Sync); 7] =
            [&q.user, &q.machine, &q.since, &limit, &q.result, &q.until, &q.before_id];
        let text = sql::audit_page(q.user.is_some(), q.machine.is_some(), q.result.is_some());
        let rows = self.query(text.postgres, &args)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    time: r.try_get(1)?,
                    user: r.try_get(2)?,
                    service: r.try_get(3)?,
                    rhost: r.try_get(4)?,
                    tty: r.try_get(5)?,
                    machine: r.try_get(6)?,
                    method: r.try_get(7)?,
                    result: r.try_get(8)?,
                    reason: r.try_get(9)?,
                    received_at: r.try_get(10)?,
                })
            })
            .collect()
    }

    fn counts(&mut self, now: i64) -> Result<Counts, StoreError> {
        let r = self.query_one(sql::COUNT_USERS.postgres, &[&now])?;
        let get = |i: usize| -> Result<u64, StoreError> { Ok(r.try_get::<_, i64>(i)?.max(0) as u64) };
        let (users_total, users_enabled, users_activated, users_locked) = (get(0)?, get(1)?, get(2)?, get(3)?);
        let audit_entries = self.count(sql::COUNT_AUDIT.postgres, &[])?;
        Ok(Counts { users_total, users_enabled, users_activated, users_locked, audit_entries })
    }

    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.query_one(sql::SCHEMA_VERSION.postgres, &[])?.try_get(0)?)
    }

    fn latest_email_code(&mut self, user: &str, machine: Option<&str>) -> Result<Option<EmailCode>, StoreError> {
        self.query_opt(sql::LATEST_EMAIL_CODE.postgres, &[&user, &machine])?.as_ref().map(code_from_row).transpose()
    }

    fn insert_email_code(&mut self, c: &EmailCode) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                sql::INSERT_EMAIL_CODE.postgres,
                &[
                    &c.user,
                    &c.machine,
                    &c.address,
                    &c.code_hash,
                    &c.code_enc,
                    &c.created_at,
                    &c.expires_at,
                    &c.used_at,
                    &c.origin,
                    &c.emergency,
                ],
            )?
            .try_get(0)?)
    }

    /// Like [`Self::consume_step`]: a concurrent caller re-checks
    /// `used_at IS NULL` after the first one committed, and changes nothing.
    fn retire_email_code(&mut self, id: i64, used_at: Option<i64>) -> Result<bool, StoreError> {
        Ok(self.execute(sql::RETIRE_EMAIL_CODE.postgres, &[&id, &used_at])? == 1)
    }

    fn enqueue_mail(&mut self, code_id: i64, to: &str, now: i64) -> Result<i64, StoreError> {
        Ok(self.query_one(sql::ENQUEUE_MAIL.postgres, &[&code_id, &to, &now])?.try_get(0)?)
    }

    fn count_mail_since(&mut self, what: MailCount<'_>, since: i64) -> Result<u64, StoreError> {
        self.cap_lock(LOCK_MAIL_CAP)?;
        match what {
            MailCount::All => self.count(sql::COUNT_MAIL.postgres, &[&since]),
            MailCount::Address(a) => self.count(sql::COUNT_MAIL_TO.postgres, &[&a, &since]),
            MailCount::Code(id) => self.count(sql::COUNT_MAIL_OF_CODE.postgres, &[&id, &since]),
        }
    }

    fn due_mail(&mut self, now: i64, limit: u32) -> Result<Vec<QueuedMail>, StoreError> {
        // Rows another server is claiming right now are skipped, not waited
        // for; the claim (a later next_attempt_at) commits with this job.
        let rows = self.query(sql::DUE_MAIL.postgres, &[&now, &i64::from(limit)])?;
        let ids: Vec<i64> = rows.iter().map(|r| r.try_get("oid")).collect::<Result<_, _>>()?;
        self.execute(sql::CLAIM_MAIL.postgres, &[&ids, &(now + crate::store::model::MAIL_LEASE)])?;
        rows.iter()
            .map(|r| {
                Ok(QueuedMail {
                    id: r.try_get("oid")?,
                    attempts: u32_of(r.try_get("attempts")?, "attempts")?,
                    to_addr: r.try_get("to_addr")?,
                    code: code_from_row(r)?,
                })
            })
            .collect()
    }

    fn mail_sent(&mut self, id: i64, now: i64) -> Result<(), StoreError> {
        self.execute(sql::MAIL_SENT.postgres, &[&id, &now])?;
        Ok(())
    }

    fn mail_failed(&mut self, id: i64, next_attempt_at: i64, error: &str) -> Result<(), StoreError> {
        self.execute(sql::MAIL_FAILED.postgres, &[&id, &next_attempt_at, &error])?;
        Ok(())
    }

    fn mail_stats(&mut self, now: i64) -> Result<MailStats, StoreError> {
        let r = self.query_one(sql::MAIL_COUNTS.postgres, &[&(now - 3600)])?;
        let get = |i: usize| -> Result<u64, StoreError> { Ok(r.try_get::<_, i64>(i)?.max(0) as u64) };
        let (queued, failing, sent_last_hour) = (get(0)?, get(1)?, get(2)?);
        let last_error: Option<String> = match self.query_opt(sql::MAIL_LAST_ERROR.postgres, &[])? {
            Some(r) => r.try_get(0)?,
            None => None,
        };
        Ok(MailStats { queued, failing, sent_last_hour, last_error })
    }

    fn insert_request(&mut self, r: &EmergencyRequest) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                sql::INSERT_REQUEST.postgres,
                &[&r.user, &r.machine, &r.address, &r.reason, &r.origin, &r.created_at, &r.status.as_str()],
            )?
            .try_get(0)?)
    }

    fn request(&mut self, id: i64) -> Result<Option<EmergencyRequest>, StoreError> {
        self.query_opt(sql::REQUEST.postgres, &[&id])?.as_ref().map(request_from_row).transpose()
    }

    fn requests(&mut self, pending_only: bool) -> Result<Vec<EmergencyRequest>, StoreError> {
        let rows = self.query(sql::REQUESTS.postgres, &[&pending_only])?;
        all(rows, request_from_row)
    }

    fn count_requests(&mut self, which: RequestCount<'_>) -> Result<u64, StoreError> {
        self.cap_lock(LOCK_REQUEST_CAP)?;
        match which {
            RequestCount::All { pending_only } => self.count(sql::COUNT_REQUESTS.postgres, &[&pending_only]),
            RequestCount::PendingForUser(user) => self.count(sql::COUNT_PENDING_FOR_USER.postgres, &[&user]),
            RequestCount::PendingForAddress(address) => {
                self.count(sql::COUNT_PENDING_FOR_ADDRESS.postgres, &[&address])
            }
        }
    }

    fn decide_request(&mut self, id: i64, status: RequestStatus, by: u32, now: i64) -> Result<(), StoreError> {
        self.execute(sql::DECIDE_REQUEST.postgres, &[&id, &status.as_str(), &i64::from(by), &now])?;
        Ok(())
    }

    fn open_session(&mut self, s: &SessionRecord) -> Result<i64, StoreError> {
        Ok(self
            .query_one(
                sql::OPEN_SESSION.postgres,
                &[&s.user, &s.email, &s.machine, &s.service, &s.rhost, &s.tty, &i64::from(s.pid), &s.opened_at],
            )?
            .try_get(0)?)
    }

    fn close_session(
        &mut self,
        user: &str,
        machine: &str,
        service: &str,
        pid: u32,
        now: i64,
    ) -> Result<u64, StoreError> {
        self.execute(sql::CLOSE_SESSION.postgres, &[&user, &service, &i64::from(pid), &now, &machine])
    }

    fn sessions(&mut self, limit: u32) -> Result<Vec<SessionRecord>, StoreError> {
        let rows = self.query(sql::SESSIONS.postgres, &[&i64::from(limit)])?;
        rows.iter()
            .map(|r| {
                Ok(SessionRecord {
                    id: r.try_get("id")?,
                    user: r.try_get("user")?,
                    email: r.try_get("email")?,
                    machine: r.try_get("machine")?,
                    service: r.try_get("service")?,
                    rhost: r.try_get("rhost")?,
                    tty: r.try_get("tty")?,
                    pid: u32_of(r.try_get("pid")?, "pid")?,
                    opened_at: r.try_get("opened_at")?,
                    closed_at: r.try_get("closed_at")?,
                })
            })
            .collect()
    }

    /// One statement: two servers adding the same name cannot both succeed.
    fn add_host(&mut self, h: &HostRecord) -> Result<bool, StoreError> {
        let n = self.execute(
            sql::ADD_HOST.postgres,
            &[
                &h.name,
                &h.role.as_str(),
                &h.fingerprint,
                &h.added_at,
                &h.revoked_at,
                &h.last_seen,
                &h.last_addr,
                &h.expires_at,
                &h.ca,
                &h.renewed_at,
                &h.prev_fingerprint,
                &h.prev_until,
            ],
        )?;
        Ok(n == 1)
    }

    fn host(&mut self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        self.query_opt(sql::HOST.postgres, &[&name])?.as_ref().map(host_from_row).transpose()
    }

    fn host_by_fingerprint(&mut self, fp: &[u8]) -> Result<Option<HostRecord>, StoreError> {
        self.query_opt(sql::HOST_BY_FINGERPRINT.postgres, &[&fp])?.as_ref().map(host_from_row).transpose()
    }

    fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = self.query(sql::HOSTS.postgres, &[])?;
        all(rows, host_from_row)
    }

    fn revoke_host(&mut self, name: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::REVOKE_HOST.postgres, &[&name, &now])? == 1)
    }

    fn host_seen(&mut self, name: &str, now: i64, addr: &str) -> Result<(), StoreError> {
        self.execute(sql::HOST_SEEN.postgres, &[&name, &now, &addr])?;
        Ok(())
    }

    fn renew_host(&mut self, name: &str, r: &Renewal) -> Result<bool, StoreError> {
        let args: [&(dyn ToSql + Sync); 7] =
            [&name, &r.fingerprint, &r.expires_at, &r.ca, &r.now, &r.presented, &r.presented_until];
        Ok(self.execute(sql::RENEW_HOST.postgres, &args)? == 1)
    }

    fn host_presented(&mut self, name: &str, fp: &[u8], until: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::HOST_PRESENTED.postgres, &[&name, &fp, &until])? == 1)
    }

    fn fleet_cas(&mut self) -> Result<Vec<StoredCa>, StoreError> {
        let rows = self.query(sql::FLEET_CAS.postgres, &[])?;
        rows.iter()
            .map(|r| {
                Ok(StoredCa {
                    id: r.try_get(0)?,
                    cert_pem: r.try_get(1)?,
                    key_sealed: r.try_get(2)?,
                    added_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// ON CONFLICT DO NOTHING waits for a concurrent insert to commit, then
    /// does nothing: exactly one server's CA is stored.
    fn set_fleet_ca_if_absent(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::SET_FLEET_CA.postgres, &[&cert_pem, &key_sealed, &now])? == 1)
    }

    fn add_fleet_ca(&mut self, cert_pem: &str, key_sealed: &[u8], now: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::ADD_FLEET_CA.postgres, &[&cert_pem, &key_sealed, &now])? == 1)
    }

    fn retire_fleet_ca(&mut self, id: i64) -> Result<bool, StoreError> {
        Ok(self.execute(sql::RETIRE_FLEET_CA.postgres, &[&id])? == 1)
    }

    fn revoke_hosts_of_ca(&mut self, ca: &[u8], now: i64) -> Result<u64, StoreError> {
        self.execute(sql::REVOKE_HOSTS_OF_CA.postgres, &[&ca, &now])
    }

    fn end_replaced_certificates(&mut self, now: i64) -> Result<u64, StoreError> {
        self.execute(sql::END_REPLACED_CERTIFICATES.postgres, &[&now])
    }

    fn set_hosts_ca_if_unknown(&mut self, ca: &[u8]) -> Result<u64, StoreError> {
        self.execute(sql::HOSTS_CA_UNKNOWN.postgres, &[&ca])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_over_a_network_need_an_explicit_no_tls_and_passwords_are_never_shown() {
        assert!(async_config("postgresql://otp@%2Frun%2Fpostgresql:5432/otpd").is_ok());
        assert!(async_config("postgresql://otp@127.0.0.1:5432/otpd").is_ok());
        assert!(async_config("postgresql://otp@localhost/otpd").is_ok());
        let err = async_config("postgresql://otp:s3cret@db.example.org/otpd").unwrap_err().to_string();
        assert!(err.contains("db.example.org") && err.contains("sslmode=disable"), "{err}");
        assert!(err.contains("sslmode=verify-full") && err.contains("sslrootcert="), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = async_config("postgresql://otp:s3cret@db.example.org/otpd?sslmode=require").unwrap_err().to_string();
        assert!(err.contains("checks no certificate") && !err.contains("s3cret"), "{err}");
        let ok = async_config("postgresql://db.example.org/otpd?user=otp&password=s3cret&sslmode=disable").unwrap();
        let shown = describe(&ok);
        assert_eq!(shown, "postgresql://otp@db.example.org:5432/otpd");
        let tls = async_config(
            "postgresql://otp:s3cret@db.example.org/otpd?sslmode=verify-full&sslrootcert=/etc/otpd/pg-ca.crt",
        )
        .unwrap();
        assert_eq!(describe(&tls), "postgresql://otp@db.example.org:5432/otpd");
        assert_eq!(tls.get_ssl_mode(), postgres::config::SslMode::Require);
    }

    use super::*;
    use crate::store::db::Db;
    use crate::store::sqlite::SqliteStore;
    use common::proto::Method;
    use e2e::pg::Cluster;

    /// A private PostgreSQL; the test fails (never skips) when it cannot start.
    fn cluster() -> Cluster {
        Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL cannot start: {e}"))
    }

    fn full_user() -> UserRecord {
        UserRecord {
            name: "alice".into(),
            uid: Some(u32::MAX),
            method: Method::Email,
            enabled: true,
            email: Some("alice@example.org".into()),
            secret: Some(vec![0, 1, 2, 255]),
            activated_at: Some(11),
            last_step: Some(12),
            failures: 3,
            locked_until: Some(14),
            lock_periods: 5,
            failures_since_login: 6,
            admin_locked_at: Some(17),
            last_login: Some(18),
            created_at: 19,
            updated_at: 20,
            password_hash: Some("$argon2id$x".into()),
            last_method: Some(AuditMethod::Email),
            hotp_counter: Some(21),
            digits: Some(8),
            clock_drift_secs: Some(-300),
            clock_drift_at: Some(22),
            clock_drift_refusals: 2,
        }
    }

    fn bare_user(name: &str, uid: u32) -> UserRecord {
        UserRecord::new(name, Some(uid), 1)
    }

    fn host(name: &str, fp: u8) -> HostRecord {
        HostRecord {
            name: name.into(),
            role: HostRole::Agent,
            fingerprint: vec![fp; 32],
            added_at: 100,
            revoked_at: None,
            last_seen: None,
            last_addr: None,
            ..HostRecord::default()
        }
    }

    fn code(user: &str, machine: &str, at: i64) -> EmailCode {
        EmailCode {
            id: 0,
            user: user.into(),
            machine: machine.into(),
            address: format!("{user}@example.org"),
            code_hash: vec![7; 32],
            code_enc: Some(vec![8; 40]),
            created_at: at,
            expires_at: at + 600,
            used_at: None,
            origin: "service sshd".into(),
            emergency: true,
        }
    }

    /// What every Store must do alike; run against both backends.
    fn contract(s: &mut dyn Store) {
        // Users: every field round-trips; created_at is kept from the first insert.
        assert_eq!(s.user("alice").unwrap(), None);
        let mut a = full_user();
        s.save_user(&a).unwrap();
        assert_eq!(s.user("alice").unwrap(), Some(a.clone()));
        let b = UserRecord { name: "bob".into(), enabled: false, ..bare_user("bob", 7) };
        s.save_user(&b).unwrap();
        assert_eq!(s.user("bob").unwrap(), Some(b.clone()));
        a.uid = Some(7);
        a.created_at = 999;
        a.admin_locked_at = None;
        s.save_user(&a).unwrap();
        let back = s.user("alice").unwrap().unwrap();
        assert_eq!((back.created_at, back.admin_locked_at, back.uid), (19, None, Some(7)));
        assert_eq!(s.user_by_uid(7).unwrap().map(|u| u.name), Some("alice".into()), "the enabled record");
        assert_eq!(s.users().unwrap().iter().map(|u| u.name.as_str()).collect::<Vec<_>>(), ["alice", "bob"]);
        let c = s.counts(15).unwrap();
        assert_eq!((c.users_total, c.users_enabled, c.users_activated, c.users_locked), (2, 1, 1, 0));

        // consume_step: once per step, never backwards, unknown users never.
        s.save_user(&bare_user("carol", 8)).unwrap();
        assert!(s.consume_step("carol", 100).unwrap());
        assert!(!s.consume_step("carol", 100).unwrap(), "the same step again");
        assert!(!s.consume_step("carol", 99).unwrap(), "an earlier step");
        assert!(s.consume_step("carol", 101).unwrap());
        assert!(!s.consume_step("nobody", 5).unwrap());
        assert_eq!(s.user("carol").unwrap().unwrap().last_step, Some(101));
        // A stale copy saved later does not give a used step back; a new secret restarts the count.
        let stale = UserRecord { last_step: Some(100), failures: 2, ..bare_user("carol", 8) };
        s.save_user(&stale).unwrap();
        assert_eq!(s.user("carol").unwrap().unwrap().last_step, Some(101));
        assert_eq!(s.user("carol").unwrap().unwrap().failures, 2);
        s.save_user(&UserRecord { last_step: None, ..stale.clone() }).unwrap();
        assert_eq!(s.user("carol").unwrap().unwrap().last_step, Some(101));
        let reset = UserRecord { secret: Some(vec![9]), last_step: None, ..stale };
        s.save_user(&reset).unwrap();
        assert_eq!(s.user("carol").unwrap().unwrap().last_step, None);

        // consume_counter (HOTP): the counter moves past a used code once, never backwards.
        let h = UserRecord {
            method: Method::Hotp,
            secret: Some(vec![5]),
            hotp_counter: Some(10),
            digits: Some(6),
            ..bare_user("hank", 9)
        };
        s.save_user(&h).unwrap();
        assert_eq!(s.user("hank").unwrap(), Some(h.clone()));
        assert!(s.consume_counter("hank", 12).unwrap());
        assert!(!s.consume_counter("hank", 12).unwrap(), "the same code again");
        assert!(!s.consume_counter("hank", 11).unwrap(), "a code behind the counter");
        assert!(s.consume_counter("hank", 13).unwrap());
        assert!(!s.consume_counter("carol", 5).unwrap(), "not a HOTP user");
        assert!(!s.consume_counter("nobody", 5).unwrap());
        assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(14));
        s.save_user(&h).unwrap();
        assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(14), "a stale copy gives no code back");
        s.save_user(&UserRecord { secret: Some(vec![6]), ..h.clone() }).unwrap();
        assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(10), "a new token starts where it says");
        assert!(s.consume_step("carol", 101).unwrap());

        // Emailed codes: retiring without used_at only forgets the copy; used once.
        let id = s.insert_email_code(&code("carol", "m1", 50)).unwrap();
        let other = s.insert_email_code(&code("carol", "m2", 60)).unwrap();
        assert_eq!(s.latest_email_code("carol", None).unwrap().map(|c| c.id), Some(other));
        let got = s.latest_email_code("carol", Some("m1")).unwrap().unwrap();
        assert_eq!(got, EmailCode { id, ..code("carol", "m1", 50) });
        assert!(s.retire_email_code(id, None).unwrap());
        let got = s.latest_email_code("carol", Some("m1")).unwrap().unwrap();
        assert_eq!((got.code_enc, got.used_at), (None, None));
        assert!(s.retire_email_code(id, Some(70)).unwrap());
        assert!(!s.retire_email_code(id, Some(71)).unwrap(), "already used");
        assert_eq!(s.latest_email_code("carol", Some("m1")).unwrap().unwrap().used_at, Some(70));
        assert!(!s.retire_email_code(id + 1000, Some(72)).unwrap());

        // Outbox.
        let m1 = s.enqueue_mail(id, "carol@example.org", 100).unwrap();
        let m2 = s.enqueue_mail(other, "carol@example.org", 200).unwrap();
        assert_eq!(s.count_mail_since(MailCount::All, 150).unwrap(), 1);
        assert_eq!(s.count_mail_since(MailCount::Address("carol@example.org"), 0).unwrap(), 2);
        assert_eq!(s.count_mail_since(MailCount::Code(id), 0).unwrap(), 1);
        let due = s.due_mail(150, 10).unwrap();
        assert_eq!(due.iter().map(|m| (m.id, m.code.id)).collect::<Vec<_>>(), [(m1, id)]);
        s.mail_failed(m1, 300, "refused").unwrap();
        assert_eq!(s.failing_mail_for("carol").unwrap(), 1);
        s.mail_sent(m2, 250).unwrap();
        let st = s.mail_stats(260).unwrap();
        assert_eq!(st, MailStats { queued: 1, failing: 1, sent_last_hour: 1, last_error: Some("refused".into()) });
        assert_eq!(s.due_mail(300, 10).unwrap()[0].attempts, 1);

        // Emergency requests.
        for (i, addr) in ["Dave@Example.org", "x@example.org"].into_iter().enumerate() {
            let r = EmergencyRequest {
                id: 0,
                user: "dave".into(),
                machine: "m".into(),
                address: addr.into(),
                reason: "lost phone".into(),
                origin: "o".into(),
                created_at: i as i64,
                status: RequestStatus::Pending,
                decided_at: None,
                decided_by: None,
            };
            let rid = s.insert_request(&r).unwrap();
            assert_eq!(s.request(rid).unwrap(), Some(EmergencyRequest { id: rid, ..r }));
        }
        let first = s.requests(false).unwrap()[1].id;
        s.decide_request(first, RequestStatus::Approved, u32::MAX, 9).unwrap();
        let r = s.request(first).unwrap().unwrap();
        assert_eq!((r.status, r.decided_by, r.decided_at), (RequestStatus::Approved, Some(u32::MAX), Some(9)));
        assert_eq!(s.requests(true).unwrap().len(), 1);
        assert_eq!(s.count_requests(RequestCount::All { pending_only: false }).unwrap(), 2);
        assert_eq!(s.count_requests(RequestCount::PendingForUser("dave")).unwrap(), 1);
        assert_eq!(s.count_requests(RequestCount::PendingForAddress("X@EXAMPLE.ORG")).unwrap(), 1);
        assert_eq!(s.count_requests(RequestCount::PendingForAddress("dave@example.org")).unwrap(), 0);

        // Sessions.
        let sess = SessionRecord {
            id: 0,
            user: "dave".into(),
            email: Some("d@x".into()),
            machine: "web01".into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.7".into()),
            tty: None,
            pid: u32::MAX,
            opened_at: 10,
            closed_at: None,
        };
        let sid = s.open_session(&sess).unwrap();
        assert_eq!(s.close_session("dave", "web01", "sshd", u32::MAX, 20).unwrap(), 1);
        assert_eq!(s.close_session("dave", "web01", "sshd", u32::MAX, 21).unwrap(), 0);
        assert_eq!(s.sessions(10).unwrap(), [SessionRecord { id: sid, closed_at: Some(20), ..sess }]);

        // Audit: user, machine and time filters, newest first; pruning.
        for (t, u, m) in [(100, "a", "web01"), (200, "b", "web02"), (300, "a", "web02"), (400, "a", "web01")] {
            s.add_audit(&NewAudit { time: t, user: u.into(), machine: m.into(), ..Default::default() }).unwrap();
        }
        let times = |v: Vec<AuditEntry>| v.into_iter().map(|e| e.time).collect::<Vec<_>>();
        assert_eq!(times(s.audit(None, None, None, 10).unwrap()), [400, 300, 200, 100]);
        assert_eq!(times(s.audit(None, Some("web02"), None, 10).unwrap()), [300, 200]);
        assert_eq!(times(s.audit(Some("a"), Some("web01"), None, 10).unwrap()), [400, 100]);
        assert_eq!(times(s.audit(Some("a"), Some("web02"), Some(300), 10).unwrap()), [300]);
        assert_eq!(times(s.audit(None, Some("web03"), None, 10).unwrap()), Vec::<i64>::new());
        assert_eq!(times(s.audit(None, None, None, 1).unwrap()), [400]);
        assert_eq!(s.counts(0).unwrap().audit_entries, 4);
        assert_eq!(s.prune_audit(250, 10).unwrap(), 2 + 1, "two audit rows and the session closed at 20");
        assert_eq!(times(s.audit(None, None, None, 10).unwrap()), [400, 300]);
        // Late rows (an agent's spool): one host's entry id is written once;
        // counts (no id) every time; the time received is read back.
        let late = NewAudit { time: 350, user: "late".into(), machine: "web01".into(), ..Default::default() };
        assert!(s.add_late_audit(&late, 500, Some("ab01")).unwrap());
        assert!(!s.add_late_audit(&late, 501, Some("ab01")).unwrap(), "sent again");
        assert!(s.add_late_audit(&NewAudit { machine: "web02".into(), ..late.clone() }, 500, Some("ab01")).unwrap());
        assert!(s.add_late_audit(&late, 500, None).unwrap() && s.add_late_audit(&late, 500, None).unwrap());
        let rows = s.audit(Some("late"), None, None, 10).unwrap();
        assert_eq!(rows.iter().map(|e| (e.time, e.received_at)).collect::<Vec<_>>(), [(350, Some(500)); 4]);
        assert!(s.audit(Some("a"), None, None, 10).unwrap().iter().all(|e| e.received_at.is_none()));
        s.prune_audit(360, 10).unwrap();
        assert_eq!(s.audit(Some("late"), None, None, 10).unwrap(), [], "pruned by the time they happened");

        // Hosts.
        assert_eq!(s.host("web01").unwrap(), None);
        let w1 = host("web01", 1);
        assert!(s.add_host(&w1).unwrap());
        assert!(!s.add_host(&HostRecord { fingerprint: vec![9; 32], ..host("web01", 9) }).unwrap(), "taken");
        assert_eq!(s.host("web01").unwrap(), Some(w1.clone()), "the first one stays");
        let adm = HostRecord { role: HostRole::Admin, ..host("adm", 2) };
        assert!(s.add_host(&adm).unwrap());
        assert_eq!(s.host_by_fingerprint(&[2; 32]).unwrap(), Some(adm.clone()));
        assert_eq!(s.host_by_fingerprint(&[3; 32]).unwrap(), None);
        s.host_seen("web01", 500, "192.0.2.7").unwrap();
        let seen = s.host("web01").unwrap().unwrap();
        assert_eq!((seen.last_seen, seen.last_addr.as_deref()), (Some(500), Some("192.0.2.7")));
        assert!(s.revoke_host("web01", 600).unwrap());
        assert!(!s.revoke_host("web01", 601).unwrap(), "already revoked");
        assert!(!s.revoke_host("nope", 601).unwrap());
        let revoked = s.host_by_fingerprint(&[1; 32]).unwrap().unwrap();
        assert_eq!((revoked.revoked_at, revoked.last_seen), (Some(600), Some(500)), "still found, as revoked");
        let again = HostRecord { added_at: 700, ..host("web01", 4) };
        assert!(s.add_host(&again).unwrap(), "a revoked host is replaced");
        assert_eq!(s.host("web01").unwrap(), Some(again.clone()));
        assert_eq!(s.host_by_fingerprint(&[1; 32]).unwrap(), None, "the old certificate is gone");
        assert_eq!(s.hosts().unwrap(), [adm, again]);

        // Recovery codes: one salt per set, each hash deleted once, a new set replaces the old.
        assert_eq!((s.recovery_salt("alice").unwrap(), s.recovery_codes_left("alice").unwrap()), (None, 0));
        let set: Vec<Vec<u8>> = (1..=10u8).map(|i| vec![i; 32]).collect();
        s.set_recovery_codes("alice", &[9; 16], &set).unwrap();
        s.set_recovery_codes("bob", &[8; 16], &set[..2]).unwrap();
        assert_eq!(s.recovery_salt("alice").unwrap(), Some(vec![9; 16]));
        assert_eq!(s.recovery_codes_left("alice").unwrap(), 10);
        assert!(s.use_recovery_code("alice", &[3; 32]).unwrap());
        assert!(!s.use_recovery_code("alice", &[3; 32]).unwrap(), "used once");
        assert!(!s.use_recovery_code("alice", &[11; 32]).unwrap(), "not in the set");
        assert_eq!(s.recovery_codes_left("alice").unwrap(), 9);
        assert_eq!(s.recovery_codes_left("bob").unwrap(), 2, "another user's set is untouched");
        s.set_recovery_codes("alice", &[7; 16], &set[5..7]).unwrap();
        assert_eq!(
            (s.recovery_salt("alice").unwrap(), s.recovery_codes_left("alice").unwrap()),
            (Some(vec![7; 16]), 2)
        );
        assert!(!s.use_recovery_code("alice", &[1; 32]).unwrap(), "the old set is gone");
        s.set_recovery_codes("alice", &[7; 16], &[]).unwrap();
        assert_eq!((s.recovery_salt("alice").unwrap(), s.recovery_codes_left("alice").unwrap()), (None, 0));
        // Group members (require_group): replaced as a whole, per group.
        assert!(!s.in_group("sudo", "alice").unwrap());
        s.set_group_members("sudo", &["alice".into(), "bob".into(), "alice".into()]).unwrap();
        s.set_group_members("wheel", &["carol".into()]).unwrap();
        assert!(s.in_group("sudo", "alice").unwrap() && s.in_group("sudo", "bob").unwrap());
        assert!(!s.in_group("sudo", "carol").unwrap() && !s.in_group("sudo", "Alice").unwrap());
        s.set_group_members("sudo", &["bob".into()]).unwrap();
        assert!(!s.in_group("sudo", "alice").unwrap() && s.in_group("sudo", "bob").unwrap());
        assert!(s.in_group("wheel", "carol").unwrap());
        s.set_group_members("sudo", &[]).unwrap();
        assert!(!s.in_group("sudo", "bob").unwrap());
        // Fleet CA: the first one stored stays.
        assert_eq!(s.fleet_cas().unwrap(), vec![]);
        assert!(s.set_fleet_ca_if_absent("CERT1", &[1, 2, 3], 7).unwrap());
        assert!(!s.set_fleet_ca_if_absent("CERT2", &[4], 8).unwrap());
        let first = StoredCa { id: 1, cert_pem: "CERT1".into(), key_sealed: vec![1, 2, 3], added_at: 7 };
        assert_eq!(s.fleet_cas().unwrap(), vec![first.clone()]);
        // A rotation adds one CA beside it, never a third; retiring takes
        // the older only, and never the last.
        assert!(!s.retire_fleet_ca(1).unwrap());
        assert!(s.add_fleet_ca("CERT3", &[5], 9).unwrap());
        assert!(!s.add_fleet_ca("CERT4", &[6], 10).unwrap());
        let second = StoredCa { id: 2, cert_pem: "CERT3".into(), key_sealed: vec![5], added_at: 9 };
        assert_eq!(s.fleet_cas().unwrap(), vec![first, second.clone()]);
        assert!(!s.retire_fleet_ca(2).unwrap());
        assert!(s.retire_fleet_ca(1).unwrap());
        assert_eq!(s.fleet_cas().unwrap(), vec![second]);
        assert!(!s.retire_fleet_ca(2).unwrap());
        assert!(s.add_fleet_ca("CERT5", &[7], 11).unwrap());
        assert_eq!(s.fleet_cas().unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn store_contract_sqlite() {
        contract(&mut SqliteStore::in_memory().unwrap());
    }

    /// One table of a schema as both backends can describe it: columns
    /// (name, type, NOT NULL, default), primary key, every other index as
    /// (unique, columns) whatever its name or how it was made (a UNIQUE
    /// constraint is the unique index that enforces it), CHECK constraints
    /// as (column, values allowed) and foreign keys.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Table {
        columns: BTreeMap<String, Column>,
        primary_key: Vec<String>,
        indexes: BTreeSet<(bool, Vec<String>)>,
        checks: BTreeSet<(String, BTreeSet<String>)>,
        foreign_keys: BTreeSet<ForeignKey>,
    }

    /// (columns, referenced table, referenced columns, ON UPDATE, ON DELETE).
    type ForeignKey = (Vec<String>, String, Vec<String>, String, String);

    #[derive(Debug, PartialEq, Eq)]
    struct Column {
        /// PostgreSQL's name for the type (SQLite's through [`pg_type_of`]).
        ty: String,
        not_null: bool,
        default: Option<String>,
    }

    use std::collections::{BTreeMap, BTreeSet};

    /// The PostgreSQL type a SQLite column must have: INTEGER is BIGINT
    /// (timestamps and counters outgrow 32 bits) but for the flags, which
    /// are BOOLEAN, and the one-row table's key.
    fn pg_type_of(table: &str, column: &str, sqlite_type: &str) -> String {
        const EXCEPTIONS: &[(&str, &str, &str)] =
            &[("users", "enabled", "boolean"), ("email_codes", "emergency", "boolean")];
        if let Some((_, _, ty)) = EXCEPTIONS.iter().find(|(t, c, _)| (*t, *c) == (table, column)) {
            return ty.to_string();
        }
        match sqlite_type {
            "INTEGER" => "bigint",
            "TEXT" => "text",
            "BLOB" => "bytea",
            other => panic!("{table}.{column}: SQLite type {other} is not mapped"),
        }
        .into()
    }

    /// A default as both write it: PostgreSQL's `false` is SQLite's 0.
    fn default_of(text: Option<String>) -> Option<String> {
        text.map(|d| match d.as_str() {
            "false" => "0".into(),
            "true" => "1".into(),
            _ => d,
        })
    }

    /// A CHECK as (column, the values it allows): the only shapes the schema
    /// uses, `c IN (a, b)` and `c = a` (PostgreSQL shows `c = ANY (ARRAY[a,
    /// b])` and `'a'::text`). Any other shape fails: teach it here first.
    fn check_of(expr: &str) -> (String, BTreeSet<String>) {
        let mut words: Vec<String> = Vec::new();
        let mut chars = expr.replace("::text", "").chars().collect::<std::collections::VecDeque<_>>();
        while let Some(c) = chars.pop_front() {
            if c == '\'' {
                let mut w = String::from(c);
                while let Some(d) = chars.pop_front() {
                    w.push(d);
                    if d == '\'' {
                        break;
                    }
                }
                words.push(w);
            } else if c.is_alphanumeric() || c == '_' {
                let mut w = String::from(c);
                while chars.front().is_some_and(|d| d.is_alphanumeric() || *d == '_') {
                    w.extend(chars.pop_front());
                }
                words.push(w);
            } else if !c.is_whitespace() && !"()[],".contains(c) {
                words.push(c.to_string());
            }
        }
        let shape: Vec<&str> =
            words.iter().map(String::as_str).filter(|w| !["CHECK", "ANY", "ARRAY"].contains(w)).collect();
        match shape.as_slice() {
            [column, "=" | "IN", values @ ..] if !values.is_empty() => {
                (column.to_string(), values.iter().map(|v| v.to_string()).collect())
            }
            _ => panic!("a CHECK of a shape this test does not know: {expr}"),
        }
    }

    /// Each `CHECK (…)` of a CREATE TABLE text (SQLite keeps them nowhere else).
    fn checks_in(create: &str) -> BTreeSet<(String, BTreeSet<String>)> {
        let mut out = BTreeSet::new();
        for (at, _) in create.match_indices("CHECK (") {
            let rest = &create[at + "CHECK ".len()..];
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += i32::from(c == '(') - i32::from(c == ')');
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            out.insert(check_of(&rest[..=end]));
        }
        out
    }

    fn sqlite_rows<T>(
        conn: &rusqlite::Connection,
        sql: &str,
        f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        conn.prepare(sql).unwrap().query_map([], f).unwrap().collect::<Result<_, _>>().unwrap()
    }

    fn sqlite_table(conn: &rusqlite::Connection, name: &str, create: &str) -> Table {
        let mut t = Table { checks: checks_in(create), ..Table::default() };
        let mut pk: Vec<(i64, String)> = Vec::new();
        let cols = sqlite_rows(conn, &format!("PRAGMA table_info({name})"), |r| {
            Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get(4)?, r.get::<_, i64>(5)?))
        });
        for (col, ty, notnull, default, pk_pos) in cols {
            if pk_pos > 0 {
                pk.push((pk_pos, col.clone()));
            }
            let ty = pg_type_of(name, &col, &ty);
            t.columns.insert(col, Column { ty, not_null: notnull == 1 || pk_pos > 0, default: default_of(default) });
        }
        pk.sort();
        t.primary_key = pk.into_iter().map(|(_, c)| c).collect();
        let indexes = sqlite_rows(conn, &format!("PRAGMA index_list({name})"), |r| {
            Ok((r.get::<_, String>(1)?, r.get::<_, i64>(2)? == 1, r.get::<_, String>(3)?))
        });
        for (index, unique, _) in indexes.into_iter().filter(|(_, _, origin)| origin != "pk") {
            let key = sqlite_rows(conn, &format!("PRAGMA index_xinfo({index})"), |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, i64>(5)?))
            });
            let columns = key
                .into_iter()
                .filter(|(_, _, key)| *key == 1)
                .map(|(cid, col, _)| if cid == -2 { "<expression>".into() } else { col.unwrap_or_default() })
                .collect();
            t.indexes.insert((unique, columns));
        }
        let fks = sqlite_rows(conn, &format!("PRAGMA foreign_key_list({name})"), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(2)?,
                r.get(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        });
        let mut by_id: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for (id, to_table, from, to, on_update, on_delete) in fks {
            let fk = by_id.entry(id).or_insert_with(|| (vec![], to_table, vec![], on_update, on_delete));
            fk.0.push(from);
            fk.2.push(to.unwrap_or_default());
        }
        t.foreign_keys = by_id.into_values().collect();
        t
    }

    fn sqlite_schema(path: &std::path::Path) -> BTreeMap<String, Table> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let tables: Vec<(String, String)> = sqlite_rows(
            &conn,
            "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        tables.into_iter().map(|(name, create)| (name.clone(), sqlite_table(&conn, &name, &create))).collect()
    }

    /// The names of columns `keys` of table `rel` (an `int2vector` as an array), in order.
    fn pg_columns(rel: &str, keys: &str) -> String {
        format!(
            "ARRAY(SELECT COALESCE(a.attname::text, '<expression>')
                     FROM unnest({keys}) WITH ORDINALITY AS k(attnum, n)
                     LEFT JOIN pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.attnum AND k.attnum > 0
                    ORDER BY k.n)"
        )
    }

    /// A foreign key's action as SQLite names it (`pg_constraint.confupdtype`, `confdeltype`).
    fn fk_action(code: i8) -> String {
        match code as u8 {
            b'a' => "NO ACTION",
            b'r' => "RESTRICT",
            b'c' => "CASCADE",
            b'n' => "SET NULL",
            b'd' => "SET DEFAULT",
            other => panic!("foreign key action {other}"),
        }
        .into()
    }

    fn postgres_schema(url: &str) -> BTreeMap<String, Table> {
        let mut client = PgTarget::new(url).unwrap().connect_blocking().unwrap();
        let mut schema: BTreeMap<String, Table> = BTreeMap::new();
        let columns =
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'NO', column_default::text
                         FROM information_schema.columns WHERE table_schema = 'public'";
        for r in client.query(columns, &[]).unwrap() {
            let column = Column { ty: r.get(2), not_null: r.get(3), default: default_of(r.get(4)) };
            schema.entry(r.get(0)).or_default().columns.insert(r.get(1), column);
        }
        let indexes = format!(
            "SELECT t.relname::text, i.indisprimary, i.indisunique, {}
               FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
              WHERE t.relnamespace = 'public'::regnamespace",
            pg_columns("t.oid", "i.indkey")
        );
        for r in client.query(&indexes, &[]).unwrap() {
            let (table, primary, unique, columns): (String, bool, bool, Vec<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let t = schema.entry(table).or_default();
            if primary {
                t.primary_key = columns;
            } else {
                t.indexes.insert((unique, columns));
            }
        }
        let constraints = format!(
            "SELECT c.conrelid::regclass::text, c.contype::text, pg_get_constraintdef(c.oid),
                    coalesce(c.confrelid::regclass::text, ''), {}, {}, c.confupdtype, c.confdeltype
               FROM pg_constraint c
              WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('c', 'f')",
            pg_columns("c.conrelid", "c.conkey"),
            pg_columns("c.confrelid", "coalesce(c.confkey, '{}')")
        );
        for r in client.query(&constraints, &[]).unwrap() {
            let t = schema.entry(r.get(0)).or_default();
            match r.get::<_, String>(1).as_str() {
                "c" => assert!(t.checks.insert(check_of(r.get(2)))),
                _ => assert!(t.foreign_keys.insert((
                    r.get(4),
                    r.get(3),
                    r.get(5),
                    fk_action(r.get(6)),
                    fk_action(r.get(7))
                ))),
            }
        }
        schema
    }

    /// Both backends migrated from empty describe the same tables, columns,
    /// types (SQLite's mapped by [`pg_type_of`]), nullability, defaults,
    /// primary keys, indexes, unique, CHECK and foreign key constraints
    /// (issue 19: the SQL was written twice and had drifted).
    #[test]
    fn the_sqlite_and_postgresql_schemas_agree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("otpd.db");
        drop(SqliteStore::open(&path).unwrap());
        let pg = cluster();
        drop(PgStore::open(&pg.url()).unwrap());
        let lite = sqlite_schema(&path);
        let mut post = postgres_schema(&pg.url());
        // PostgreSQL's migration bookkeeping; SQLite keeps it in PRAGMA user_version.
        assert!(post.remove("otpd_schema").is_some());
        assert_eq!(lite.keys().collect::<Vec<_>>(), post.keys().collect::<Vec<_>>(), "tables");
        for (name, l) in &lite {
            assert_eq!(l, &post[name], "table {name}: SQLite (left) and PostgreSQL (right) differ");
        }
        // What the comparison must see, or it would compare nothing.
        let seen = |f: fn(&Table) -> usize| lite.values().map(f).sum::<usize>();
        assert_eq!(seen(|t| t.checks.len()), 3, "CHECKs: users.method, emergency_requests.status, hosts.role");
        assert_eq!(seen(|t| t.foreign_keys.len()), 1, "outbox.code_id");
        assert_eq!(
            seen(|t| t.indexes.iter().filter(|(unique, _)| *unique).count()),
            3,
            "hosts.fingerprint, hosts.prev_fingerprint; audit (machine, spool_id)"
        );
        let defaults = seen(|t| t.columns.values().filter(|c| c.default.is_some()).count());
        assert_eq!(
            defaults, 6,
            "users: failures, lock_periods, failures_since_login, clock_drift_refusals; email_codes.emergency; \
             outbox.attempts"
        );
    }

    #[test]
    fn store_contract_postgres() {
        let pg = cluster();
        let mut s = PgStore::open(&pg.url()).unwrap();
        assert_eq!(s.schema_version().unwrap(), crate::store::schema::POSTGRES.len() as i64);
        contract(&mut s);
        // Reopening migrates nothing and keeps the data.
        let mut again = PgStore::open(&pg.url()).unwrap();
        assert_eq!(again.user("alice").unwrap().map(|u| u.created_at), Some(19));
    }

    /// Two "servers" on one database, `per_db` concurrent jobs each; returns
    /// every job's result.
    async fn race<T, F>(dbs: &[Db], per_db: usize, f: F) -> Vec<T>
    where
        T: Send + std::fmt::Debug + 'static,
        F: Fn(&mut dyn Store) -> Result<T, StoreError> + Send + Sync + Clone + 'static,
    {
        let mut tasks = Vec::new();
        for _ in 0..per_db {
            for db in dbs {
                let (db, f) = (db.clone(), f.clone());
                tasks.push(tokio::spawn(async move { db.run(move |s| f(s)).await }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap().unwrap());
        }
        out
    }

    fn two_servers(pg: &Cluster) -> Vec<Db> {
        let dbs: Vec<Db> = (0..2).map(|_| Db::start_postgres(&pg.url(), 8).unwrap()).collect();
        assert!(dbs.iter().all(|d| d.fast().is_some()));
        dbs
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_step_one_winner() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        dbs[0].run(|s| s.save_user(&bare_user("alice", 1000))).await.unwrap();
        let won = race(&dbs, 32, |s| {
            // As a login does: read (and lock) the user, then take the step.
            s.user("alice")?;
            s.consume_step("alice", 4242)
        })
        .await;
        assert_eq!(won.len(), 64);
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        // Without the row lock first, the conditional update alone still decides.
        let won = race(&dbs, 32, |s| s.consume_step("alice", 4243)).await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        assert_eq!(pg.psql("SELECT last_step FROM users WHERE name = 'alice'").unwrap().trim(), "4243");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_hotp_counter_one_winner() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        let h = UserRecord { method: Method::Hotp, hotp_counter: Some(5), digits: Some(6), ..bare_user("hank", 9) };
        dbs[0].run(move |s| s.save_user(&h)).await.unwrap();
        let won = race(&dbs, 32, |s| {
            s.user("hank")?;
            s.consume_counter("hank", 7)
        })
        .await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        // Without the row lock first, the conditional update alone still decides.
        let won = race(&dbs, 32, |s| s.consume_counter("hank", 8)).await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        assert_eq!(pg.psql("SELECT hotp_counter FROM users WHERE name = 'hank'").unwrap().trim(), "9");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_code_one_winner() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        let id = dbs[0].run(|s| s.insert_email_code(&code("alice", "web01", 100))).await.unwrap();
        let won = race(&dbs, 32, move |s| s.retire_email_code(id, Some(200))).await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_recovery_code_one_winner() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        let set: Vec<Vec<u8>> = (1..=10u8).map(|i| vec![i; 32]).collect();
        dbs[0].run(move |s| s.set_recovery_codes("alice", &[9; 16], &set)).await.unwrap();
        let won = race(&dbs, 32, |s| {
            // As a login does: read (and lock) the user, then use the code.
            s.user("alice")?;
            s.use_recovery_code("alice", &[4; 32])
        })
        .await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        // Without the row lock first, the delete alone still decides.
        let won = race(&dbs, 32, |s| s.use_recovery_code("alice", &[5; 32])).await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
        assert_eq!(pg.psql("SELECT count(*) FROM recovery_codes").unwrap().trim(), "8");
    }

    /// The one-statement login (`PgFast::accept_step_if_unchanged`, as the
    /// conversation runs it): one winner per step across two servers, and
    /// nothing written when the row changed since it was read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_one_statement_accept_has_one_winner_and_needs_an_unchanged_row() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        let alice = UserRecord {
            method: Method::Totp,
            secret: Some(vec![1, 2, 3]),
            activated_at: Some(1),
            last_step: Some(99),
            ..bare_user("alice", 1000)
        };
        let saved = alice.clone();
        dbs[0].run(move |s| s.save_user(&saved)).await.unwrap();
        let entry = |step: i64| NewAudit {
            time: 5,
            user: "alice".into(),
            service: "sshd".into(),
            machine: "web01".into(),
            method: AuditMethod::Totp,
            result: crate::store::model::AuditResult::Accept,
            reason: format!("valid code {step}"),
            ..Default::default()
        };
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (db, e) = (dbs[i % 2].clone(), entry(100));
            tasks.push(tokio::spawn(async move {
                let seen = db.read(|s| s.user("alice")).await.unwrap().unwrap();
                db.fast().unwrap().accept_step_if_unchanged(&seen, 100, 5, &e, None).await.unwrap()
            }));
        }
        let mut won = 0;
        for t in tasks {
            won += usize::from(t.await.unwrap());
        }
        assert_eq!(won, 1, "one login per step");
        let q = |sql: &str| pg.psql(sql).unwrap().trim().to_string();
        assert_eq!(q("SELECT last_step || ' ' || last_login || ' ' || last_method FROM users"), "100 5 totp");
        assert_eq!(q("SELECT count(*) FROM audit WHERE reason = 'valid code 100'"), "1", "with its audit row");

        // A failure recorded since the read: the transaction must decide
        // (it reports the failures); nothing written here.
        let failed = UserRecord { failures: 1, failures_since_login: 1, last_step: Some(100), ..alice.clone() };
        let f = failed.clone();
        dbs[1].run(move |s| s.save_user(&f)).await.unwrap();
        let (seen, e) = (UserRecord { last_step: Some(100), ..alice.clone() }, entry(101));
        assert!(!dbs[1].fast().unwrap().accept_step_if_unchanged(&seen, 101, 6, &e, None).await.unwrap());
        // A new secret since the read (an admin re-enrolled alice): nothing.
        let reset = UserRecord { secret: Some(vec![4, 5, 6]), last_step: None, ..alice.clone() };
        dbs[0].run(move |s| s.save_user(&reset)).await.unwrap();
        let (seen, e) = (alice.clone(), entry(102));
        assert!(!dbs[0].fast().unwrap().accept_step_if_unchanged(&seen, 102, 7, &e, None).await.unwrap());
        assert_eq!(q("SELECT count(*) FROM audit"), "1");
        assert_eq!(q("SELECT coalesce(last_step, -1) FROM users"), "-1", "the new secret's steps are all unused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_mail_cap_holds_across_servers() {
        let pg = cluster();
        let dbs = two_servers(&pg);
        let id = dbs[0].run(|s| s.insert_email_code(&code("alice", "web01", 100))).await.unwrap();
        let sent = race(&dbs, 20, move |s| {
            if s.count_mail_since(MailCount::Address("alice@example.org"), 0)? < 5 {
                s.enqueue_mail(id, "alice@example.org", 100)?;
                return Ok(true);
            }
            Ok(false)
        })
        .await;
        assert_eq!(sent.iter().filter(|s| **s).count(), 5);
        assert_eq!(pg.psql("SELECT count(*) FROM outbox").unwrap().trim(), "5");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_read_jobs_take_no_lock_and_refuse_writes() {
        let pg = cluster();
        let db = Db::start_postgres(&pg.url(), 2).unwrap();
        db.run(|s| s.save_user(&bare_user("alice", 1000))).await.unwrap();
        // A login's answer check holds alice's row lock...
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let db = db.clone();
            tokio::spawn(async move {
                db.run(move |s| {
                    s.user("alice")?;
                    let _ = locked_tx.send(());
                    let _ = release_rx.recv();
                    s.consume_step("alice", 7)
                })
                .await
            })
        };
        tokio::task::spawn_blocking(move || locked_rx.recv()).await.unwrap().unwrap();
        // ...and "what to ask" for her, on the other connection, does not wait for it.
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), db.read(|s| s.user("alice"))).await;
        release_tx.send(()).unwrap();
        assert!(read.expect("a read job waited for a row lock").unwrap().is_some());
        assert!(holder.await.unwrap().unwrap());
        // A write in a read job is refused and changes nothing.
        let wrote = db.read(|s| s.consume_step("alice", 8)).await;
        assert!(wrote.is_err(), "{wrote:?}");
        assert_eq!(pg.psql("SELECT last_step FROM users WHERE name = 'alice'").unwrap().trim(), "7");
        // Both connections serve ordinary (locking, writing) jobs afterwards.
        for step in 9..=12 {
            assert!(db.run(move |s| s.consume_step("alice", step)).await.unwrap(), "step {step}");
        }
        assert_eq!(pg.psql("SELECT last_step FROM users WHERE name = 'alice'").unwrap().trim(), "12");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_pg_login_reads_count_failing_mail_in_the_same_statement() {
        let pg = cluster();
        let db = Db::start_postgres(&pg.url(), 2).unwrap();
        db.run(|s| {
            s.save_user(&bare_user("carol", 1001))?;
            s.save_user(&bare_user("dave", 1002))?;
            let id = s.insert_email_code(&code("carol", "m1", 50))?;
            let failed = s.enqueue_mail(id, "carol@example.org", 100)?;
            s.mail_failed(failed, 300, "refused")?;
            let sent = s.enqueue_mail(id, "carol@example.org", 110)?;
            s.mail_sent(sent, 120)?;
            s.enqueue_mail(id, "carol@example.org", 130)?; // not tried yet
            Ok(())
        })
        .await
        .unwrap();
        let fast = db.fast().unwrap();
        let (carol, failing) = fast.plan_reads("carol", true).await.unwrap();
        assert_eq!(carol.map(|u| u.name), Some("carol".into()));
        let stored = db.run(|s| s.failing_mail_for("carol")).await.unwrap();
        assert_eq!((failing, stored), (Some(1), 1), "the count the store gives");
        assert_eq!(fast.plan_reads("dave", true).await.unwrap().1, Some(0), "another user's mail is not counted");
        assert_eq!(fast.plan_reads("carol", false).await.unwrap().1, None, "not asked: not counted");
        assert_eq!(fast.plan_reads("nobody", true).await.unwrap(), (None, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_reconnects_after_a_restart() {
        let mut pg = cluster();
        let db = Db::start_postgres(&pg.url(), 2).unwrap();
        db.run(|s| s.save_user(&bare_user("alice", 1000))).await.unwrap();
        // The login path's async connections (crate::store::pgfast) too.
        let fast = db.fast().unwrap();
        for _ in 0..2 {
            let (alice, failing) = fast.plan_reads("alice", true).await.unwrap();
            assert_eq!((alice.map(|u| u.name), failing), (Some("alice".into()), Some(0)));
        }
        pg.stop().unwrap();
        let down = db.run(|s| s.user("alice")).await;
        assert!(down.is_err(), "{down:?}");
        let down = fast.plan_reads("alice", false).await;
        assert!(down.is_err(), "{down:?}");
        pg.start_again().unwrap();
        // Every worker's old connection is dead; each job must still succeed.
        for step in 1..=6 {
            assert!(db.run(move |s| s.consume_step("alice", step)).await.unwrap(), "step {step}");
        }
        assert_eq!(db.run(|s| s.user("alice")).await.unwrap().unwrap().last_step, Some(6));
        // The async connections are made again (at most once a second each).
        let by = std::time::Instant::now() + Duration::from_secs(20);
        let mut back = 0;
        while back < 4 {
            match fast.plan_reads("alice", false).await {
                Ok((alice, _)) => {
                    assert_eq!(alice.and_then(|u| u.last_step), Some(6));
                    back += 1;
                }
                Err(e) => assert!(std::time::Instant::now() < by, "still failing: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A database that stops answering without closing its connections
    /// (frozen; as after a failover behind an address): the login path's
    /// statement gives up, and a new connection serves once it answers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_pg_fast_path_gives_up_on_a_database_that_stops_answering() {
        let pg = cluster();
        let db = Db::start_postgres(&pg.url(), 1).unwrap();
        db.run(|s| s.save_user(&bare_user("alice", 1000))).await.unwrap();
        let fast = db.fast().unwrap();
        assert!(fast.plan_reads("alice", false).await.unwrap().0.is_some());
        // A second server whose login path has made no connection yet:
        // making one can hang as a statement can.
        let other = Db::start_postgres(&pg.url(), 1).unwrap();
        pg.freeze(true).unwrap();
        let wait = Duration::from_secs(60);
        let frozen = tokio::time::timeout(wait, fast.plan_reads("alice", false)).await;
        let connecting = tokio::time::timeout(wait, other.fast().unwrap().plan_reads("alice", false)).await;
        pg.freeze(false).unwrap();
        for r in [frozen, connecting] {
            let err = r.expect("the login path must give up, not wait for ever").unwrap_err();
            assert!(err.to_string().contains("no answer in time"), "{err}");
        }
        let by = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match fast.plan_reads("alice", false).await {
                Ok((alice, _)) => break assert_eq!(alice.map(|u| u.name), Some("alice".into())),
                Err(e) => assert!(std::time::Instant::now() < by, "still failing after the thaw: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[test]
    fn store_pg_two_servers_migrate_at_once() {
        let pg = cluster();
        let url = pg.url();
        let barrier = std::sync::Barrier::new(2);
        let results: Vec<Result<Db, StoreError>> = std::thread::scope(|sc| {
            let starts: Vec<_> = (0..2)
                .map(|_| {
                    sc.spawn(|| {
                        barrier.wait();
                        Db::start_postgres(&url, 2)
                    })
                })
                .collect();
            starts.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert!(r.is_ok(), "{:?}", r.as_ref().err());
        }
        assert_eq!(
            pg.psql("SELECT version FROM otpd_schema").unwrap().trim(),
            crate::store::schema::POSTGRES.len().to_string()
        );
        assert_eq!(pg.psql("SELECT count(*) FROM otpd_schema").unwrap().trim(), "1");
    }

    fn policy() -> crate::core::policy::Policy {
        use common::config::{Algorithm, EmailConfig, LockoutConfig};
        crate::core::policy::Policy {
            totp: crate::core::totp::TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 },
            hotp_window: 10,
            require_group: None,
            lockout: LockoutConfig {
                max_failures: 1000,
                lock_for: std::time::Duration::from_secs(900),
                max_lock_periods: 4,
            },
            issuer: "test".into(),
            machine: "m1".into(),
            crypto: crate::core::crypto::SecretBox::from_key(&[3u8; 32]),
            email: EmailConfig { fallback: false, ..EmailConfig::default() },
        }
    }

    /// The login path itself, not just the store call: one code, 64 logins
    /// on two servers, one accepted, every other one refused as a replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_totp_login() {
        use crate::core::auth::{check_answer, new_enrollment, Verdict};
        use crate::core::context::LoginContext;
        const T0: i64 = 1_700_000_000;
        let pg = cluster();
        let dbs = two_servers(&pg);
        let p = std::sync::Arc::new(policy());
        let rec = new_enrollment(&p, None, "alice", Some(1000), T0);
        let secret = p.crypto.open("alice", rec.secret.as_deref().unwrap()).unwrap();
        dbs[0].run(move |s| s.save_user(&rec)).await.unwrap();
        let answer = p.totp.code_at_step(&secret, p.totp.step_of(T0));
        let wrong = p.totp.code_at_step(&secret, p.totp.step_of(T0) + 100);
        let login = move |answer: String| {
            let p = p.clone();
            move |s: &mut dyn Store| {
                let ctx = LoginContext { user: "alice".into(), service: "login".into(), ..Default::default() };
                check_answer(s, &p, &ctx, &answer, T0)
            }
        };
        let verdicts = race(&dbs, 32, login(answer)).await;
        let accepted = verdicts.iter().filter(|v| matches!(v, Verdict::Accept { .. })).count();
        assert_eq!(accepted, 1, "{verdicts:?}");
        let reasons = pg.psql("SELECT reason FROM audit WHERE result = 'deny'").unwrap();
        assert_eq!(reasons.lines().filter(|r| r.starts_with("code already used")).count(), 63, "{reasons}");
        // Read-modify-write of the user is serialised (row lock): no failure is lost.
        let before = dbs[0].run(|s| s.user("alice")).await.unwrap().unwrap().failures_since_login;
        race(&dbs, 32, login(wrong)).await;
        let after = dbs[1].run(|s| s.user("alice")).await.unwrap().unwrap().failures_since_login;
        assert_eq!(after - before, 64);
    }

    /// A HOTP code through the login path on two servers at once: one
    /// accepted, the counter moved once, every other login a replay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_hotp_login() {
        use crate::core::auth::{check_answer, Verdict};
        use crate::core::context::LoginContext;
        let pg = cluster();
        let dbs = two_servers(&pg);
        let p = std::sync::Arc::new(policy());
        let secret = b"12345678901234567890";
        let h = UserRecord {
            method: Method::Hotp,
            secret: Some(p.crypto.seal("hank", secret)),
            activated_at: Some(1),
            hotp_counter: Some(3),
            digits: Some(6),
            ..bare_user("hank", 9)
        };
        dbs[0].run(move |s| s.save_user(&h)).await.unwrap();
        let code = crate::core::totp::hotp(secret, 5, 6);
        let verdicts = race(&dbs, 32, move |s| {
            let ctx = LoginContext { user: "hank".into(), service: "login".into(), ..Default::default() };
            check_answer(s, &p, &ctx, &code, 1_700_000_000)
        })
        .await;
        assert_eq!(verdicts.iter().filter(|v| matches!(v, Verdict::Accept { .. })).count(), 1, "{verdicts:?}");
        assert_eq!(pg.psql("SELECT hotp_counter FROM users WHERE name = 'hank'").unwrap().trim(), "6");
        let reasons = pg.psql("SELECT reason FROM audit WHERE result = 'deny'").unwrap();
        assert_eq!(reasons.lines().filter(|r| r.starts_with("code already used")).count(), 63, "{reasons}");
    }

    /// An emailed code checked by 64 logins at once on two servers: one
    /// Valid, the others Used (they may all have read it unused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn store_pg_two_servers_one_emailed_code_login() {
        use crate::core::email::{check_code, code_hash, CodeCheck};
        let pg = cluster();
        let dbs = two_servers(&pg);
        let p = std::sync::Arc::new(policy());
        let c = EmailCode {
            code_hash: code_hash(p.crypto.email_key(), "alice", "m1", "12345678"),
            ..code("alice", "m1", 100)
        };
        dbs[0].run(move |s| s.insert_email_code(&c)).await.unwrap();
        let checks = race(&dbs, 32, move |s| check_code(s, &p, "alice", "m1", "12345678", 200)).await;
        assert_eq!(checks.iter().filter(|c| **c == CodeCheck::Valid).count(), 1, "{checks:?}");
        assert_eq!(checks.iter().filter(|c| **c == CodeCheck::Used).count(), 63, "{checks:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_pg_failed_job_leaves_no_writes() {
        let pg = cluster();
        let db = Db::start_postgres(&pg.url(), 2).unwrap();
        db.run(|s| s.add_host(&host("web01", 1))).await.unwrap();
        let failing = db
            .run(|s| {
                s.add_audit(&NewAudit { user: "ghost".into(), ..Default::default() })?;
                Err::<(), _>(StoreError::Corrupt("boom".into()))
            })
            .await;
        assert!(matches!(failing, Err(StoreError::Corrupt(_))), "the job's own error: {failing:?}");
        // A job that ignores a failed statement: PostgreSQL aborted its
        // transaction, so it must not be reported as done.
        let swallowed = db
            .run(|s| {
                s.add_audit(&NewAudit { user: "ghost2".into(), ..Default::default() })?;
                let dup = s.add_host(&host("web02", 1));
                assert!(dup.is_err(), "same fingerprint: {dup:?}");
                Ok(())
            })
            .await;
        assert!(matches!(swallowed, Err(StoreError::NotCommitted)), "{swallowed:?}");
        db.run(|s| s.add_audit(&NewAudit { user: "real".into(), ..Default::default() })).await.unwrap();
        let users: Vec<String> =
            db.run(|s| s.audit(None, None, None, 10)).await.unwrap().into_iter().map(|e| e.user).collect();
        assert_eq!(users, ["real"]);
    }

    #[test]
    fn store_pg_unreachable_database_is_an_error() {
        let pg = cluster();
        let url = pg.url().replace("/otpd", "/no_such_db");
        let err = Db::start_postgres(&url, 1).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no_such_db"), "{err}");
    }

    // TLS to PostgreSQL (crate::store::pgtls), against real servers on
    // 127.0.0.1 with `ssl = on` and `hostssl`-only pg_hba lines.

    use e2e::pg::{ServerTls, Tcp, TestCa};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// Writes `pem` to `dir/name` with `mode`.
    fn pem_file(dir: &std::path::Path, name: &str, pem: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A TLS cluster whose certificate, issued by `ca`, names `names`;
    /// client certificates of `client_ca` accepted for `cert` lines.
    fn tls_cluster(ca: &TestCa, names: &[&str], client_ca: Option<&TestCa>, hba: &[&str]) -> Cluster {
        let (cert_pem, key_pem) = ca.server(names);
        let tls = ServerTls { cert_pem, key_pem, client_ca_pem: client_ca.map(TestCa::cert_pem) };
        let tcp = Tcp { tls: Some(tls), hba: hba.iter().map(|l| l.to_string()).collect() };
        Cluster::start_tcp(&tcp).unwrap_or_else(|e| panic!("PostgreSQL with TLS cannot start: {e}"))
    }

    /// Whether the session of `client` is encrypted, as the server sees it.
    fn session_is_tls(client: &mut Client) -> bool {
        client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0)
    }

    fn refusal(url: &str) -> String {
        match PgTarget::new(url).and_then(|t| t.connect_blocking()) {
            Ok(_) => panic!("{url}: connected"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_verify_full_serves_both_clients_channel_binding_and_client_certificates() {
        let ca = TestCa::new("otpd test PostgreSQL CA");
        let clients = TestCa::new("otpd test client CA");
        let pg = tls_cluster(
            &ca,
            &["localhost", "127.0.0.1"],
            Some(&clients),
            &[
                "hostssl all otp 127.0.0.1/32 trust",
                "hostssl all app 127.0.0.1/32 scram-sha-256",
                "hostssl all certuser 127.0.0.1/32 cert",
            ],
        );
        pg.psql("CREATE ROLE app LOGIN PASSWORD 'app-pw'; CREATE ROLE certuser LOGIN").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = pem_file(dir.path(), "ca.crt", &ca.cert_pem(), 0o644);
        let verify = format!("sslmode=verify-full&sslrootcert={}", root.display());

        // The workers (blocking client) migrate and write, the login path
        // (async client) reads: all over verified TLS.
        let url = pg.tcp_url("otp", &verify);
        let db = Db::start_postgres(&url, 2).unwrap();
        db.run(|s| s.save_user(&bare_user("alice", 1000))).await.unwrap();
        let (alice, _) = db.fast().unwrap().plan_reads("alice", false).await.unwrap();
        assert_eq!(alice.map(|u| u.name), Some("alice".into()));
        let target = PgTarget::new(&url).unwrap();
        assert!(target.is_tls());
        let (client, connection) = target.connect().await.unwrap();
        tokio::spawn(connection);
        let ssl: bool =
            client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
        assert!(ssl, "the async client's session is not encrypted");
        let url_for_blocking = url.clone();
        // The blocking client runs a runtime of its own: on a plain thread.
        let (ssl, users) = std::thread::spawn(move || {
            let mut c = PgTarget::new(&url_for_blocking).unwrap().connect_blocking().unwrap();
            let users: i64 = c.query_one("SELECT count(*) FROM users", &[]).unwrap().get(0);
            (session_is_tls(&mut c), users)
        })
        .join()
        .unwrap();
        assert!(ssl && users == 1, "blocking client: tls {ssl}, {users} users");
        drop(db);

        std::thread::spawn(move || {
            // The server takes TLS only: clear text said on purpose is refused by pg_hba.
            let err = refusal(&pg.tcp_url("otp", "sslmode=disable"));
            assert!(err.contains("no encryption"), "{err}");

            // SCRAM with channel binding required: the binding otpd computes
            // from the server's certificate is the one the server expects.
            let mut app = PgTarget::new(&pg.tcp_url("app:app-pw", &format!("{verify}&channel_binding=require")))
                .unwrap()
                .connect_blocking()
                .unwrap();
            assert!(session_is_tls(&mut app));
            let err = refusal(&pg.tcp_url("app:wrong", &format!("{verify}&channel_binding=require")));
            assert!(err.contains("password authentication failed"), "{err}");

            // `cert` authentication: the client certificate names the user.
            let (cert, key) = clients.client("certuser");
            let cert = pem_file(dir.path(), "certuser.crt", &cert, 0o644);
            let key = pem_file(dir.path(), "certuser.key", &key, 0o600);
            let with_cert = format!("{verify}&sslcert={}&sslkey={}", cert.display(), key.display());
            let mut certuser = PgTarget::new(&pg.tcp_url("certuser", &with_cert)).unwrap().connect_blocking().unwrap();
            let who: String = certuser.query_one("SELECT current_user::text", &[]).unwrap().get(0);
            assert_eq!(who, "certuser");
            assert!(session_is_tls(&mut certuser));
            // Without one, or with one of a CA the server does not trust: refused.
            let err = refusal(&pg.tcp_url("certuser", &verify));
            assert!(err.contains("certificate"), "{err}");
            let (cert, key) = TestCa::new("another client CA").client("certuser");
            let cert = pem_file(dir.path(), "other.crt", &cert, 0o644);
            let key = pem_file(dir.path(), "other.key", &key, 0o600);
            let err = refusal(
                &pg.tcp_url("certuser", &format!("{verify}&sslcert={}&sslkey={}", cert.display(), key.display())),
            );
            assert!(err.contains("refused otpd's client certificate"), "{err}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn tls_refuses_another_name_an_unknown_ca_and_a_server_without_tls() {
        let ca = TestCa::new("otpd test PostgreSQL CA");
        let dir = tempfile::tempdir().unwrap();
        let root = pem_file(dir.path(), "ca.crt", &ca.cert_pem(), 0o644);
        let other = pem_file(dir.path(), "other-ca.crt", &TestCa::new("another CA").cert_pem(), 0o644);
        // A certificate of the right CA, for another name.
        let pg = tls_cluster(&ca, &["db.example.org"], None, &["hostssl all otp 127.0.0.1/32 trust"]);
        let err = refusal(&pg.tcp_url("otp", &format!("sslmode=verify-full&sslrootcert={}", root.display())));
        assert!(err.contains("not issued for that name") && err.contains("db.example.org"), "{err}");
        assert!(err.contains("127.0.0.1"), "{err}");
        // verify-ca checks the issuer only.
        let mut c = PgTarget::new(&pg.tcp_url("otp", &format!("sslmode=verify-ca&sslrootcert={}", root.display())))
            .unwrap()
            .connect_blocking()
            .unwrap();
        assert!(session_is_tls(&mut c));
        // A CA otpd was not told to trust, whatever the name.
        for mode in ["verify-full", "verify-ca"] {
            let err = refusal(&pg.tcp_url("otp", &format!("sslmode={mode}&sslrootcert={}", other.display())));
            assert!(err.contains("not issued by a CA of") && err.contains("other-ca.crt"), "{mode}: {err}");
        }
        drop((c, pg));
        // A server that speaks clear text only.
        let tcp = Tcp { tls: None, hba: vec!["host all otp 127.0.0.1/32 trust".into()] };
        let plain = Cluster::start_tcp(&tcp).unwrap_or_else(|e| panic!("PostgreSQL cannot start: {e}"));
        let err = refusal(&plain.tcp_url("otp", &format!("sslmode=verify-full&sslrootcert={}", root.display())));
        assert!(err.contains("does not speak TLS") && err.contains("ssl = on"), "{err}");
        // Loopback without TLS is still what it was.
        let mut c = PgTarget::new(&plain.tcp_url("otp", "")).unwrap().connect_blocking().unwrap();
        assert!(!session_is_tls(&mut c));
    }

    /// The files a TLS URL names are checked before anything is sent.
    #[test]
    fn tls_files_must_exist_and_keys_must_be_private() {
        let ca = TestCa::new("otpd test PostgreSQL CA");
        let dir = tempfile::tempdir().unwrap();
        let root = pem_file(dir.path(), "ca.crt", &ca.cert_pem(), 0o644);
        let (cert, key) = ca.client("otp");
        let cert = pem_file(dir.path(), "c.crt", &cert, 0o644);
        let key = pem_file(dir.path(), "c.key", &key, 0o600);
        let url = |params: String| format!("postgresql://otp:s3cret@db.example.org/otpd?sslmode=verify-full&{params}");
        let err = |params: String| match PgTarget::new(&url(params)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        let with = |root: &PathBuf, cert: &PathBuf, key: &PathBuf| {
            format!("sslrootcert={}&sslcert={}&sslkey={}", root.display(), cert.display(), key.display())
        };
        assert!(PgTarget::new(&url(with(&root, &cert, &key))).unwrap().is_tls());

        let missing = dir.path().join("missing.crt");
        let e = err(with(&missing, &cert, &key));
        assert!(e.contains("missing.crt") && e.contains("cannot open"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = err(with(&root, &cert, &key));
        assert!(e.contains("chmod 600") && e.contains("c.key"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = err(with(&root, &cert, &key));
        assert!(e.contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let e = err(with(&root, &cert, &key));
        assert!(e.contains("uid 65534") && e.contains("chown root"), "{e}");
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        // The key of another certificate; a file with no certificate.
        let (_, other_key) = ca.client("otp");
        let other_key = pem_file(dir.path(), "other.key", &other_key, 0o600);
        let e = err(with(&root, &cert, &other_key));
        assert!(e.contains("is not the key of the certificate"), "{e}");
        let e = err(with(&key, &cert, &key));
        assert!(e.contains("no certificate"), "{e}");
        // A directory others may write to.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = err(with(&root, &cert, &key));
        assert!(e.contains("writable by every user"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!e.contains("s3cret"));
    }
}
