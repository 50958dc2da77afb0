//! The statements every fleet login runs, on the server's own runtime.
//!
//! A fleet login on PostgreSQL reads the host and the user, then (the
//! common case) accepts the code in one statement. Through [`crate::store::db`]'s
//! worker threads each of those is two thread hops more (the runtime hands
//! the job to a worker, the worker hands the answer back) on top of the
//! round trip to PostgreSQL; on a busy machine each hop waits for a core.
//! Here they are async queries on a few connections of the async client,
//! so the task that awaits one is woken by the reply itself, and concurrent
//! queries on one connection share a round trip (the client pipelines
//! them).
//!
//! Only reads and the one-statement accept run here; every transaction
//! stays on the workers. Nothing depends on this path: when it cannot
//! answer (no connection yet, PostgreSQL away, an error) the caller does
//! the same work through [`crate::store::db::Db`], which decides and reports as it
//! always has. A connection that failed is made again on a later use, at
//! most once a second per connection.
use crate::lock;
use crate::store::model::{HostRecord, NewAudit, StoreError, UserRecord};
use crate::store::postgres::PgTarget;
use crate::store::postgres::{host_from_row, user_from_row, AcceptStep};
use crate::store::sql;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Statement};

/// A connection that failed is not made again sooner than this.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A statement with no answer by then is given up, and its connection
/// with it (a database that went away without closing it, as after a
/// failover behind an address, would otherwise hold every login sent to
/// it): longer than the `lock_timeout` otpd sets (5 s), so an accept that
/// waits for another server's row lock is not cut short.
const ANSWER_WITHIN: Duration = Duration::from_secs(6);

pub struct PgFast {
    target: PgTarget,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    /// Held while the connection is made (others wait for it); when the
    /// last attempt failed: not again before this.
    connect: tokio::sync::Mutex<Option<Instant>>,
}

struct Conn {
    client: Client,
    user: Statement,
    host: Statement,
    accept: Statement,
}

impl Slot {
    fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.conn).as_ref().filter(|c| !c.client.is_closed()).cloned()
    }
}

impl PgFast {
    /// Up to `connections` connections, made on first use (from a task of
    /// the runtime that will drive them).
    pub fn new(target: PgTarget, connections: usize) -> PgFast {
        PgFast { target, slots: (0..connections.max(1)).map(|_| Slot::default()).collect(), next: AtomicUsize::new(0) }
    }

    /// Runs `query` on the next connection in turn, made first if need be;
    /// all within [`ANSWER_WITHIN`] (a connection being made can hang as a
    /// statement can). A connection that gives no answer in time is
    /// dropped (the next use makes a new one).
    async fn on_conn<T, F, Fut>(&self, query: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut used = None;
        let answer = tokio::time::timeout(ANSWER_WITHIN, async {
            let conn = self.conn(slot).await?;
            used = Some(conn.clone());
            query(conn).await
        })
        .await;
        match answer {
            Ok(answer) => answer,
            Err(_) => {
                let mut held = lock(&slot.conn);
                if let (Some(c), Some(conn)) = (held.as_ref(), used.as_ref()) {
                    if Arc::ptr_eq(c, conn) {
                        *held = None;
                    }
                }
                Err(StoreError::Unusable { path: "PostgreSQL".into(), why: "no answer in time".into() })
            }
        }
    }

    /// The slot's connection, made if it has to be.
    async fn conn(&self, slot: &Slot) -> Result<Arc<Conn>, StoreError> {
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let mut retry_at = slot.connect.lock().await;
        // Made while this one waited?
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(StoreError::Unusable { path: "PostgreSQL".into(), why: "reconnecting".into() });
        }
        match self.connect().await {
            Ok(c) => {
                let c = Arc::new(c);
                *lock(&slot.conn) = Some(c.clone());
                *retry_at = None;
                Ok(c)
            }
            Err(e) => {
                *retry_at = Some(Instant::now() + RETRY_AFTER);
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let (client, connection) = self.target.connect().await?;
        // Ends when the client is dropped or the connection fails; the
        // client then reports itself closed.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection of the login path ended: {e}");
            }
        });
        let (user, host, accept) = tokio::try_join!(
            client.prepare(sql::postgres::USER_AND_FAILING_MAIL),
            client.prepare(sql::HOST_BY_FINGERPRINT.postgres),
            client.prepare(sql::postgres::ACCEPT_STEP),
        )?;
        Ok(Conn { client, user, host, accept })
    }

    /// The host that was issued this certificate, revoked or not.
    pub async fn host_by_fingerprint(&self, fp: &[u8]) -> Result<Option<HostRecord>, StoreError> {
        self.on_conn(
            |c| async move { c.client.query_opt(&c.host, &[&fp]).await?.as_ref().map(host_from_row).transpose() },
        )
        .await
    }

    /// What planning a fleet login reads: the record of that exact name
    /// and, when `mail` and the record exists, how many of its messages are
    /// failing — in one statement.
    pub async fn plan_reads(&self, name: &str, mail: bool) -> Result<(Option<UserRecord>, Option<u64>), StoreError> {
        self.on_conn(|c| async move {
            let Some(row) = c.client.query_opt(&c.user, &[&name, &mail]).await? else { return Ok((None, None)) };
            let failing: Option<i64> = row.try_get("failing_mail")?;
            Ok((Some(user_from_row(&row)?), failing.map(|n| n.max(0) as u64)))
        })
        .await
    }

    /// Records TOTP `step` as used by `seen`'s user, the login and `audit`,
    /// in one statement outside a transaction (one round trip, one WAL
    /// flush) — if and only if the row still holds what the decision was
    /// made on: `seen`'s secret and digits, an enabled, activated TOTP
    /// user, a step below `step`, no failure and no lock. False: nothing
    /// was written; the caller decides in a transaction
    /// ([`crate::core::auth::check_answer`]).
    pub async fn accept_step_if_unchanged(
        &self,
        seen: &UserRecord,
        step: i64,
        now: i64,
        audit: &NewAudit,
        host: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let Some(args) = AcceptStep::new(seen, step, now, audit, host) else { return Ok(false) };
        self.on_conn(|c| async move { Ok(c.client.execute(&c.accept, &args.params()).await? == 1) }).await
    }
}
