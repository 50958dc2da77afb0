//! Persistent state behind the [`Store`] trait, with SQLite as the default.
//!
//! Every operation runs inside a transaction opened by the [`crate::db`]
//! writer thread, so an auth decision reads and updates state atomically and
//! its reply is only sent after COMMIT (WAL, `synchronous=FULL`).
use common::proto::{AuditEntry, Method};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path} is unusable: {why}")]
    Unusable { path: String, why: String },
    #[error("the database write was not committed")]
    NotCommitted,
    #[error("the database worker has stopped")]
    Gone,
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
}

/// One enrolled (or once enrolled) user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// Resolved when an admin enables the user; a non-root PAM caller may
    /// only authenticate the user whose uid it runs as.
    pub uid: Option<u32>,
    pub method: Method,
    pub enabled: bool,
    pub email: Option<String>,
    /// Encrypted TOTP secret (see [`crate::crypto`]).
    pub secret: Option<Vec<u8>>,
    pub activated_at: Option<i64>,
    /// Highest TOTP step ever accepted: a step at or below it is a replay.
    pub last_step: Option<i64>,
    pub failures: u32,
    pub locked_until: Option<i64>,
    pub last_login: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl UserRecord {
    pub fn is_locked(&self, now: i64) -> bool {
        self.locked_until.is_some_and(|t| t > now)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewAudit {
    pub time: i64,
    pub user: String,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub machine: String,
    pub method: String,
    pub result: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub users_total: u64,
    pub users_enabled: u64,
    pub users_activated: u64,
    pub users_locked: u64,
    pub audit_entries: u64,
}

pub trait Store {
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError>;
    fn save_user(&mut self, user: &UserRecord) -> Result<(), StoreError>;
    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError>;
    fn add_audit(&mut self, entry: &NewAudit) -> Result<(), StoreError>;
    /// Newest first.
    fn audit(&mut self, user: Option<&str>, since: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
    fn counts(&mut self, now: i64) -> Result<Counts, StoreError>;
    fn schema_version(&mut self) -> Result<i64, StoreError>;
}

/// Schema migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE users (
    name         TEXT PRIMARY KEY NOT NULL,
    uid          INTEGER,
    method       TEXT NOT NULL CHECK (method IN ('totp', 'email')),
    enabled      INTEGER NOT NULL,
    email        TEXT,
    secret       BLOB,
    activated_at INTEGER,
    last_step    INTEGER,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    last_login   INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    time    INTEGER NOT NULL,
    user    TEXT NOT NULL,
    service TEXT NOT NULL,
    rhost   TEXT,
    tty     TEXT,
    machine TEXT NOT NULL,
    method  TEXT NOT NULL,
    result  TEXT NOT NULL,
    reason  TEXT NOT NULL
) STRICT;
CREATE INDEX audit_by_user_time ON audit (user, time);
CREATE INDEX audit_by_time ON audit (time);
"#];

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
        let mut store = SqliteStore::init(conn).map_err(|e| unusable(e.to_string()))?;
        if existed {
            let check: String = store
                .conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| unusable(e.to_string()))?;
            if check != "ok" {
                return Err(unusable(format!("integrity check failed: {check}")));
            }
        }
        store.migrate().map_err(|e| unusable(e.to_string()))?;
        Ok(store)
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
        Ok(SqliteStore { conn })
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Corrupt(format!(
                "schema version {version} is newer than this otpd understands ({known})"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Raw SQL for the writer thread's transaction control.
    pub(crate) fn exec(&mut self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.execute_batch(sql)
    }
}

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<UserRecord> {
    let method: String = r.get("method")?;
    Ok(UserRecord {
        name: r.get("name")?,
        uid: r.get("uid")?,
        method: if method == "email" { Method::Email } else { Method::Totp },
        enabled: r.get("enabled")?,
        email: r.get("email")?,
        secret: r.get("secret")?,
        activated_at: r.get("activated_at")?,
        last_step: r.get("last_step")?,
        failures: r.get("failures")?,
        locked_until: r.get("locked_until")?,
        last_login: r.get("last_login")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
    })
}

impl Store for SqliteStore {
    fn user(&mut self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT * FROM users WHERE name = ?1")?;
        Ok(st.query_row([name], user_from_row).optional()?)
    }

    fn save_user(&mut self, u: &UserRecord) -> Result<(), StoreError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO users (name, uid, method, enabled, email, secret, activated_at, last_step,
                                failures, locked_until, last_login, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (name) DO UPDATE SET
                uid = excluded.uid, method = excluded.method, enabled = excluded.enabled,
                email = excluded.email, secret = excluded.secret, activated_at = excluded.activated_at,
                last_step = excluded.last_step, failures = excluded.failures,
                locked_until = excluded.locked_until, last_login = excluded.last_login,
                updated_at = excluded.updated_at",
        )?;
        st.execute(params![
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
            u.updated_at
        ])?;
        Ok(())
    }

    fn users(&mut self) -> Result<Vec<UserRecord>, StoreError> {
        let mut st = self.conn.prepare_cached("SELECT * FROM users ORDER BY name")?;
        let rows = st.query_map([], user_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn add_audit(&mut self, e: &NewAudit) -> Result<(), StoreError> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO audit (time, user, service, rhost, tty, machine, method, result, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        st.execute(params![e.time, e.user, e.service, e.rhost, e.tty, e.machine, e.method, e.result, e.reason])?;
        Ok(())
    }

    fn audit(&mut self, user: Option<&str>, since: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT id, time, user, service, rhost, tty, machine, method, result, reason FROM audit
             WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR time >= ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![user, since, limit], |r| {
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
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn counts(&mut self, now: i64) -> Result<Counts, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT count(*), coalesce(sum(enabled), 0),
                    coalesce(sum(enabled AND activated_at IS NOT NULL), 0),
                    coalesce(sum(locked_until > ?1), 0)
             FROM users",
        )?;
        let (t, e, a, l): (i64, i64, i64, i64) = st.query_row([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let audit: i64 = self.conn.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?;
        Ok(Counts {
            users_total: t as u64,
            users_enabled: e as u64,
            users_activated: a as u64,
            users_locked: l as u64,
            audit_entries: audit as u64,
        })
    }

    fn schema_version(&mut self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            last_login: None,
            created_at: 10,
            updated_at: 10,
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
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn audit_filters_newest_first() {
        let mut s = SqliteStore::in_memory().unwrap();
        for (t, u) in [(100, "a"), (200, "b"), (300, "a")] {
            s.add_audit(&NewAudit { time: t, user: u.into(), result: "deny".into(), ..Default::default() }).unwrap();
        }
        let all = s.audit(None, None, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.time).collect::<Vec<_>>(), vec![300, 200, 100]);
        assert_eq!(s.audit(Some("a"), None, 10).unwrap().len(), 2);
        assert_eq!(s.audit(None, Some(200), 10).unwrap().len(), 2);
        assert_eq!(s.audit(None, None, 1).unwrap().len(), 1);
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
    fn reopen_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("otpd.db");
        SqliteStore::open(&p).unwrap().save_user(&alice()).unwrap();
        assert_eq!(SqliteStore::open(&p).unwrap().user("alice").unwrap(), Some(alice()));
    }
}
