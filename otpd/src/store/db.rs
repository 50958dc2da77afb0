//! The database workers.
//!
//! SQLite: async tasks hand closures to one OS thread that owns the SQLite
//! connection. The thread takes every job that is waiting, runs them inside
//! one `BEGIN IMMEDIATE … COMMIT` (each in its own SAVEPOINT so one failing
//! job cannot leave half its writes behind), and only after COMMIT returns —
//! i.e. after the WAL is fsynced (`synchronous=FULL`) — releases the
//! results. Many concurrent logins therefore share one fsync, and no reply
//! ever reports a decision that a crash could undo. Jobs for the same user
//! are serialised by construction, which is what makes a TOTP step
//! single-use under races.
//!
//! PostgreSQL: several worker threads, each with its own connection, run one
//! job per transaction; the result is again released only after COMMIT.
//! Jobs are no longer serialised by us, so the single-use and cap rules rest
//! on row locks and conditional updates instead (see [`crate::store::sqlite`]).
use crate::store::model::{HostRecord, NewAudit, Store, StoreError, UserRecord};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

type Completion = Box<dyn FnOnce(bool) + Send>;
/// A job runs against the store inside the batch's transaction, or with
/// `None` when there is no usable transaction: then it only produces its
/// completion, which reports that nothing was committed.
type Job = Box<dyn FnOnce(Option<&mut dyn Store>) -> (bool, Completion) + Send>;
/// A job and whether it only reads (see [`Db::read`]).
type Queued = (Job, bool);

/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Db {
    tx: mpsc::SyncSender<Queued>,
    /// PostgreSQL: the login path's async queries beside the workers.
    fast: Option<Arc<crate::store::pgfast::PgFast>>,
    /// SQLite: the login path's read-only connection, read on the caller's
    /// thread (see [`SqliteStore::open_reader`]).
    reader: Option<Arc<Mutex<SqliteStore>>>,
}

/// A `postgresql://` URL rather than a file.
fn is_server_url(database: &Path) -> bool {
    common::config::is_postgres_url(database)
}

impl Db {
    /// Opens the configured database: the one place a backend is chosen. A
    /// `postgresql://` URL (fleet servers sharing one database, with
    /// `pg_connections` workers), else a SQLite file with its read-only
    /// login-path connection beside the writer.
    pub fn open(database: &Path, pg_connections: usize) -> Result<Db, StoreError> {
        if is_server_url(database) {
            return Db::start_postgres(database.to_str().unwrap_or_default(), pg_connections);
        }
        let store = SqliteStore::open(database)?;
        // SQLite gives -wal and -shm the database's mode as it was when it made them.
        for (f, _) in crate::sys::trust::database_files(database) {
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
        }
        let reader = SqliteStore::open_reader(database)?;
        let mut db = Db::start(store);
        db.reader = Some(Arc::new(Mutex::new(reader)));
        Ok(db)
    }

    /// The files a database on this machine keeps (to be checked before
    /// anything is read: see [`crate::sys::trust`]); `None` for a server.
    pub fn local_files(database: &Path) -> Option<Vec<(PathBuf, &'static str)>> {
        (!is_server_url(database)).then(|| crate::sys::trust::database_files(database).to_vec())
    }

    /// The database as the log and `status` show it: the password in a
    /// `postgresql://` URL never appears.
    pub fn describe(database: &Path) -> String {
        match database.to_str().filter(|_| is_server_url(database)) {
            Some(url) => crate::store::postgres::async_config(url)
                .map(|c| crate::store::postgres::describe(&c))
                .unwrap_or_else(|_| "postgresql://(unusable URL)".into()),
            None => database.display().to_string(),
        }
    }

    /// The login path's reads on the caller's thread, from SQLite's
    /// read-only connection; `None` where there is none (PostgreSQL: read
    /// with [`Db::read`] or [`Db::prefetch_plan`]).
    pub fn read_here<T>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError>,
    ) -> Option<Result<T, StoreError>> {
        let reader = self.reader.as_ref()?;
        let mut reader = crate::lock(reader);
        Some(f(&mut *reader))
    }

    /// A login's plan in one round trip on the caller's runtime (the user
    /// and, when `mail`, how many of its mails are failing), where the
    /// backend has such a read (PostgreSQL); `None` elsewhere.
    pub async fn prefetch_plan(
        &self,
        name: &str,
        mail: bool,
    ) -> Option<Result<(Option<UserRecord>, Option<u64>), StoreError>> {
        Some(self.fast.as_ref()?.plan_reads(name, mail).await)
    }

    /// The common accept in one statement, where the backend has it
    /// (PostgreSQL; see [`crate::store::pgfast::PgFast::accept_step_if_unchanged`]):
    /// `Some(Ok(false))` when the record changed meanwhile, `None` elsewhere.
    /// Either way the caller then decides in a transaction.
    pub async fn accept_step_if_unchanged(
        &self,
        seen: &UserRecord,
        step: i64,
        now: i64,
        audit: &NewAudit,
        host: Option<&[u8]>,
    ) -> Option<Result<bool, StoreError>> {
        Some(self.fast.as_ref()?.accept_step_if_unchanged(seen, step, now, audit, host).await)
    }

    #[cfg(test)]
    pub(crate) fn fast(&self) -> Option<&crate::store::pgfast::PgFast> {
        self.fast.as_deref()
    }

    /// A fleet host by its certificate's fingerprint: on PostgreSQL from
    /// the caller's runtime when it can, else through the workers.
    pub async fn host_by_fingerprint(&self, fp: &[u8; 32]) -> Result<Option<HostRecord>, StoreError> {
        if let Some(fast) = &self.fast {
            match fast.host_by_fingerprint(fp).await {
                Ok(found) => return Ok(found),
                Err(e) => tracing::debug!("reading a fleet host on the login path failed ({e}); reading again"),
            }
        }
        let fp = fp.to_vec();
        self.read(move |st| st.host_by_fingerprint(&fp)).await
    }

    /// Starts the database thread. The thread ends when every `Db` is dropped.
    pub fn start(store: SqliteStore) -> Db {
        let (tx, rx) = mpsc::sync_channel::<Queued>(4096);
        std::thread::Builder::new()
            .name("otpd-db".into())
            .spawn(move || writer(store, rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the database thread: {e}"));
        Db { tx, fast: None, reader: None }
    }

    /// Connects to PostgreSQL at `url`, brings its schema up to date (under
    /// an advisory lock: servers starting together do not race), and starts
    /// `connections` worker threads, each with its own connection. Fails if
    /// the database cannot be reached now; later outages only fail the jobs
    /// that meet them (each worker reconnects before its next job).
    pub fn start_postgres(url: &str, connections: usize) -> Result<Db, StoreError> {
        let config = crate::store::postgres::PgTarget::new(url)?;
        // The blocking client runs (and drops) its own runtime, which must not
        // happen on a tokio thread: connect on a plain one.
        let stores = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Vec<PgStore>, StoreError> {
                    let mut first = PgStore::connect(&config)?;
                    first.migrate()?;
                    let mut stores = vec![first];
                    for _ in 1..connections.max(1) {
                        stores.push(PgStore::connect(&config)?);
                    }
                    Ok(stores)
                })
                .join()
        })
        .map_err(|_| StoreError::Gone)??;
        let (tx, rx) = mpsc::sync_channel::<Queued>(4096);
        let rx = Arc::new(Mutex::new(rx));
        for (i, store) in stores.into_iter().enumerate() {
            let (config, rx) = (config.clone(), rx.clone());
            std::thread::Builder::new()
                .name(format!("otpd-pg{i}"))
                .spawn(move || pg_worker(&config, Some(store), &rx))
                .map_err(|e| StoreError::Unusable {
                    path: "PostgreSQL".into(),
                    why: format!("cannot start a database thread: {e}"),
                })?;
        }
        let fast = crate::store::pgfast::PgFast::new(config, connections);
        Ok(Db { tx, fast: Some(Arc::new(fast)), reader: None })
    }

    /// Runs `f` in a transaction; resolves after COMMIT. If `f` fails its
    /// writes are rolled back; if COMMIT fails the result is
    /// [`StoreError::NotCommitted`] whatever `f` returned.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        self.submit(f, move |result| {
            let _ = done_tx.send(result);
        })
        .await?;
        done_rx.await.map_err(|_| StoreError::Gone)?
    }

    /// Runs `f`, which only reads (what to ask at a login, which host a
    /// certificate is). On SQLite it is an ordinary job. On PostgreSQL it runs
    /// outside a transaction and takes no row locks, as the login path reads
    /// SQLite through its read-only connection: at READ COMMITTED each
    /// statement sees what was committed when it started, inside a
    /// transaction or not, so BEGIN and COMMIT would add two round trips and
    /// nothing else — and `user()`'s `FOR UPDATE` would give the transaction
    /// an xid, making its COMMIT wait for a WAL flush. A write in such a job
    /// is refused (the job fails).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        self.queue(
            f,
            move |result| {
                let _ = done_tx.send(result);
            },
            true,
        )
        .await?;
        done_rx.await.map_err(|_| StoreError::Gone)?
    }

    /// Runs `f` in a transaction without waiting for it: `on_commit` gets
    /// the final result on the database thread right after COMMIT (or its
    /// failure) — the place to answer a peer without waking the task that
    /// queued the job. Returns once the job is queued; if the transaction
    /// cannot even begin, `on_commit` gets [`StoreError::NotCommitted`].
    pub async fn submit<T, F, N>(&self, f: F, on_commit: N) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
        N: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        self.queue(f, on_commit, false).await
    }

    async fn queue<T, F, N>(&self, f: F, on_commit: N, read: bool) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
        N: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let job: Job = Box::new(move |store: Option<&mut dyn Store>| {
            let result = match store {
                Some(store) => f(store),
                None => Err(StoreError::NotCommitted),
            };
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |committed: bool| {
                on_commit(if committed { result } else { Err(StoreError::NotCommitted) });
            });
            (ok, completion)
        });
        let tx = self.tx.clone();
        // The channel is bounded; waiting for room must not block a runtime thread.
        match tx.try_send((job, read)) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(job)) => tokio::task::spawn_blocking(move || tx.send(job))
                .await
                .map_err(|_| StoreError::Gone)?
                .map_err(|_| StoreError::Gone),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Gone),
        }
    }
}

fn writer(mut store: SqliteStore, rx: mpsc::Receiver<Queued>) {
    while let Ok((first, _)) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((job, _)) => batch.push(job),
                Err(_) => break,
            }
        }
        let (committed, completions) = run_batch(&mut store, batch);
        for c in completions {
            c(committed);
        }
    }
}

/// Debug builds (the test suite) may hold every transaction open for
/// `OTPD_TEST_COMMIT_DELAY_MS` (or stop, see below) before COMMIT, so a crash test's kills land
/// between a decision and its commit — where a reply sent too early would
/// be exposed. Release builds have no such hook.
fn test_commit_delay() {
    #[cfg(debug_assertions)]
    {
        static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
        let delay = DELAY.get_or_init(|| {
            std::env::var("OTPD_TEST_COMMIT_DELAY_MS").ok()?.parse().ok().map(std::time::Duration::from_millis)
        });
        if let Some(d) = delay {
            std::thread::sleep(*d);
        }
        // Holding its transaction's locks, as a frozen VM would.
        test_stop("OTPD_TEST_STOP_IN_TX_FILE");
    }
}

/// Debug builds: when the file named by the environment variable `var`
/// exists, it is removed and the whole daemon stops itself (SIGSTOP) right
/// here, as a paused process or a frozen VM would; a test resumes it with
/// SIGCONT. Release builds have no such hook.
pub(crate) fn test_stop(var: &str) {
    #[cfg(debug_assertions)]
    if let Some(file) = std::env::var_os(var) {
        if std::fs::remove_file(file).is_ok() {
            // SAFETY: raise(3) with a constant signal number.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = var;
}

/// Runs one batch in one transaction. Returns whether it committed and the
/// completions to release.
fn run_batch(store: &mut SqliteStore, batch: Vec<Job>) -> (bool, Vec<Completion>) {
    if let Err(e) = store.control("BEGIN IMMEDIATE") {
        tracing::error!("cannot begin a transaction: {e}; denying {} request(s)", batch.len());
        // Run nothing: every job is told the write did not happen.
        return (false, batch.into_iter().map(|job| job(None).1).collect());
    }
    let mut completions = Vec::with_capacity(batch.len());
    for job in batch {
        if store.control("SAVEPOINT job").is_err() {
            // Without a savepoint a failing job could leave partial writes: skip it.
            completions.push(job(None).1);
            continue;
        }
        let (ok, completion) = job(Some(&mut *store));
        completions.push(completion);
        let cleaned = if ok {
            store.control("RELEASE job").is_ok()
        } else {
            store.control("ROLLBACK TO job").and_then(|_| store.control("RELEASE job")).is_ok()
        };
        if !cleaned {
            // Savepoint bookkeeping failed: the transaction is in an unknown state.
            let _ = store.control("ROLLBACK");
            return (false, completions);
        }
    }
    test_commit_delay();
    match store.control("COMMIT") {
        Ok(()) => (true, completions),
        Err(e) => {
            tracing::error!("COMMIT failed: {e}; denying {} request(s)", completions.len());
            let _ = store.control("ROLLBACK");
            (false, completions)
        }
    }
}

fn pg_worker(config: &crate::store::postgres::PgTarget, mut conn: Option<PgStore>, rx: &Mutex<mpsc::Receiver<Queued>>) {
    loop {
        // One worker waits on the channel at a time; the others wait for the lock.
        let job = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let (committed, completion) = match job {
            (job, true) => pg_read(config, &mut conn, job),
            (job, false) => pg_job(config, &mut conn, job),
        };
        completion(committed);
    }
}

/// Begins a transaction on the worker's connection, first (re)connecting if
/// there is none. A connection that cannot even BEGIN is presumed broken
/// (the server restarted): it is replaced once, which is safe because the
/// job has not run yet.
fn pg_begin(config: &crate::store::postgres::PgTarget, conn: &mut Option<PgStore>) -> bool {
    for _ in 0..2 {
        let store = match conn {
            Some(store) => store,
            None => match PgStore::connect(config) {
                Ok(store) => conn.insert(store),
                Err(e) => {
                    tracing::error!("cannot connect to PostgreSQL: {e}; denying the request");
                    return false;
                }
            },
        };
        match store.begin() {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!("PostgreSQL connection lost ({e}); reconnecting");
                *conn = None;
            }
        }
    }
    false
}

/// Runs one job in its own transaction. Returns whether the completion may
/// report the job's own result (committed, or the job failed and its writes
/// were rolled back) and the completion.
/// A read-only job, outside any transaction (see [`Db::read`]).
fn pg_read(config: &crate::store::postgres::PgTarget, conn: &mut Option<PgStore>, job: Job) -> (bool, Completion) {
    if conn.as_ref().is_none_or(PgStore::is_closed) {
        match PgStore::connect(config) {
            Ok(store) => *conn = Some(store),
            Err(e) => {
                tracing::error!("cannot connect to PostgreSQL: {e}; denying the request");
                *conn = None;
                return (false, job(None).1);
            }
        }
    }
    let Some(store) = conn.as_mut() else {
        return (false, job(None).1);
    };
    store.set_reading(true);
    let (_, completion) = job(Some(&mut *store));
    store.set_reading(false);
    if store.is_closed() {
        *conn = None;
    }
    // Nothing to commit: the job's own result (a value or an error) stands.
    (true, completion)
}

fn pg_job(config: &crate::store::postgres::PgTarget, conn: &mut Option<PgStore>, job: Job) -> (bool, Completion) {
    if !pg_begin(config, conn) {
        return (false, job(None).1);
    }
    let Some(store) = conn.as_mut() else {
        return (false, job(None).1);
    };
    let (ok, completion) = job(Some(&mut *store));
    // A statement that failed aborted the whole transaction in PostgreSQL
    // (COMMIT would silently roll back): if the job went on regardless, its
    // result does not stand.
    let failed_inside = store.failed_in_transaction();
    if !ok || failed_inside {
        if let Err(e) = store.control("ROLLBACK") {
            tracing::warn!("ROLLBACK failed: {e}");
        }
        if store.is_closed() {
            *conn = None;
        }
        return (!ok, completion);
    }
    test_commit_delay();
    match store.control("COMMIT") {
        Ok(()) => (true, completion),
        Err(e) => {
            tracing::error!("COMMIT failed: {e}; denying the request");
            let _ = store.control("ROLLBACK");
            if store.is_closed() {
                *conn = None;
            }
            (false, completion)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::NewAudit;

    #[tokio::test]
    async fn failed_job_leaves_no_writes_and_others_commit() {
        let db = Db::start(SqliteStore::in_memory().unwrap());
        let failing = db.run(|s| {
            s.add_audit(&NewAudit { user: "ghost".into(), ..Default::default() })?;
            Err::<(), _>(StoreError::Corrupt("boom".into()))
        });
        let fine = db.run(|s| s.add_audit(&NewAudit { user: "real".into(), ..Default::default() }));
        let (a, b) = tokio::join!(failing, fine);
        assert!(a.is_err());
        assert!(b.is_ok());
        let users: Vec<String> =
            db.run(|s| s.audit(None, None, None, 10)).await.unwrap().into_iter().map(|e| e.user).collect();
        assert_eq!(users, vec!["real".to_string()]);
    }
}
