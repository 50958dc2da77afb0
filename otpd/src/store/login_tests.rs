//! The login path's store operations, each run on both backends with the
//! same assertions: SQLite (in memory, or a file where the [`Db`] needs its
//! read-only connection) and PostgreSQL (a private cluster; a test fails,
//! never skips, when PostgreSQL cannot start).
//!
//! Each body below becomes a module of two tests, `…::sqlite` and
//! `…::postgres`. Store bodies take the [`Store`] itself; [`Db`] bodies take
//! the handle the doors use, whose login-path reads and one-statement accept
//! exist on one backend only (SQLite reads on the caller's thread,
//! PostgreSQL prefetches and accepts in one statement): they assert which
//! one the backend has, and that the login comes out the same either way.
use crate::store::db::Db;
use crate::store::model::{EmailCode, HostRecord, HostRole, NewAudit, Renewal, Store, UserRecord};
use common::proto::Method;

fn cluster() -> e2e::pg::Cluster {
    e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL cannot start: {e}"))
}

/// A store body as two tests: on SQLite in memory and on PostgreSQL.
macro_rules! on_both_stores {
    ($body:ident) => {
        mod $body {
            #[test]
            fn sqlite() {
                super::$body(&mut crate::store::sqlite::SqliteStore::in_memory().unwrap());
            }

            #[test]
            fn postgres() {
                let pg = super::cluster();
                super::$body(&mut crate::store::postgres::PgStore::open(&pg.url()).unwrap());
            }
        }
    };
}

/// A [`Db`] body as two tests: SQLite (a file, with the login path's
/// read-only connection) and PostgreSQL (workers and the async path).
macro_rules! on_both_dbs {
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let db = crate::store::db::Db::open(&dir.path().join("otpd.db"), 1).unwrap();
                super::$body(&db, super::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let pg = super::cluster();
                let db = crate::store::db::Db::open(std::path::Path::new(&pg.url()), 2).unwrap();
                super::$body(&db, super::Backend::Postgres).await;
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Enrolled, never logged in: a secret, not activated.
fn pending() -> UserRecord {
    UserRecord { secret: Some(vec![1, 2, 3]), ..UserRecord::new("pat", Some(2001), 10) }
}

/// Activated, logged in before, nothing against it: what the one-statement
/// accept needs.
fn active() -> UserRecord {
    UserRecord {
        secret: Some(vec![4, 5, 6]),
        activated_at: Some(20),
        last_step: Some(99),
        last_login: Some(30),
        last_method: Some(crate::store::model::AuditMethod::Totp),
        ..UserRecord::new("ann", Some(2002), 10)
    }
}

fn hotp(counter: i64) -> UserRecord {
    UserRecord {
        method: Method::Hotp,
        secret: Some(vec![7; 20]),
        activated_at: Some(20),
        hotp_counter: Some(counter),
        digits: Some(6),
        ..UserRecord::new("hank", Some(2003), 10)
    }
}

fn code(user: &str) -> EmailCode {
    EmailCode {
        user: user.into(),
        machine: "web01".into(),
        address: format!("{user}@example.org"),
        code_hash: vec![7; 32],
        code_enc: Some(vec![8; 40]),
        created_at: 100,
        expires_at: 700,
        origin: "service sshd".into(),
        ..EmailCode::default()
    }
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

/// Pat (pending) and Ann (active) enrolled; one of Pat's messages failing.
fn seed(s: &mut dyn Store) {
    s.save_user(&pending()).unwrap();
    s.save_user(&active()).unwrap();
    s.set_group_members("otp", &["ann".into()]).unwrap();
    let id = s.insert_email_code(&code("pat")).unwrap();
    let mail = s.enqueue_mail(id, "pat@example.org", 100).unwrap();
    s.mail_failed(mail, 400, "refused").unwrap();
}

/// Who is looked up, by name and uid, and what each read must find.
fn cases() -> [(&'static str, u32, Option<UserRecord>, u64); 3] {
    [("nobody", 2000, None, 0), ("pat", 2001, Some(pending()), 1), ("ann", 2002, Some(active()), 0)]
}

/// What a plan reads ([`crate::store::model::PlanReads`]), for a missing,
/// a pending and an active user.
fn plan_reads_of_missing_pending_and_active_users(s: &mut dyn Store) {
    seed(s);
    for (name, uid, want, failing) in cases() {
        assert_eq!(s.user(name).unwrap(), want, "{name} by name");
        assert_eq!(s.user_by_uid(uid).unwrap(), want, "{name} by uid");
        assert_eq!(s.enabled_user_nocase(&name.to_uppercase()).unwrap(), want, "{name} in capitals");
        assert_eq!(s.in_group("otp", name).unwrap(), name == "ann", "{name} in the group");
        assert_eq!(s.failing_mail_for(name).unwrap(), failing, "{name}'s failing mail");
    }
    // A disabled record is no account to log in to by another spelling.
    s.save_user(&UserRecord { enabled: false, ..active() }).unwrap();
    assert_eq!(s.enabled_user_nocase("ANN").unwrap(), None);
    assert_eq!(s.user("ann").unwrap().map(|u| u.enabled), Some(false));
}
on_both_stores!(plan_reads_of_missing_pending_and_active_users);

/// A TOTP step is taken once, and never one at or before the last taken.
fn a_step_is_accepted_once(s: &mut dyn Store) {
    s.save_user(&active()).unwrap();
    assert!(s.consume_step("ann", 100).unwrap());
    assert!(!s.consume_step("ann", 100).unwrap(), "the same step again");
    assert!(!s.consume_step("ann", 99).unwrap(), "an earlier step");
    assert_eq!(s.user("ann").unwrap().unwrap().last_step, Some(100));
    assert!(!s.consume_step("nobody", 100).unwrap(), "no such user");
    // A stale copy of the record saved afterwards does not hand the step back.
    s.save_user(&active()).unwrap();
    assert!(!s.consume_step("ann", 100).unwrap(), "after a stale save");
}
on_both_stores!(a_step_is_accepted_once);

/// A HOTP counter value is accepted once; the counter then stands past it.
fn a_hotp_counter_is_accepted_once(s: &mut dyn Store) {
    s.save_user(&hotp(5)).unwrap();
    s.save_user(&active()).unwrap();
    assert!(s.consume_counter("hank", 6).unwrap());
    assert!(!s.consume_counter("hank", 6).unwrap(), "the same code again");
    assert!(!s.consume_counter("hank", 5).unwrap(), "a code behind the counter");
    assert_eq!(s.user("hank").unwrap().unwrap().hotp_counter, Some(7));
    assert!(!s.consume_counter("ann", 1).unwrap(), "not a HOTP user");
    assert!(!s.consume_counter("nobody", 1).unwrap(), "no such user");
}
on_both_stores!(a_hotp_counter_is_accepted_once);

/// An emailed code is used once; forgetting its copy first does not use it.
fn an_emailed_code_is_retired_once(s: &mut dyn Store) {
    let id = s.insert_email_code(&code("pat")).unwrap();
    assert!(s.retire_email_code(id, None).unwrap(), "the copy forgotten");
    let kept = s.latest_email_code("pat", Some("web01")).unwrap().unwrap();
    assert_eq!((kept.id, kept.code_enc, kept.used_at), (id, None, None));
    assert!(s.retire_email_code(id, Some(200)).unwrap());
    assert!(!s.retire_email_code(id, Some(201)).unwrap(), "already used");
    assert_eq!(s.latest_email_code("pat", None).unwrap().unwrap().used_at, Some(200));
    assert!(!s.retire_email_code(id + 1, Some(202)).unwrap(), "no such code");
}
on_both_stores!(an_emailed_code_is_retired_once);

/// A recovery code is used once, and only by its user.
fn a_recovery_code_is_used_once(s: &mut dyn Store) {
    let set: Vec<Vec<u8>> = (1..=4u8).map(|i| vec![i; 32]).collect();
    s.set_recovery_codes("ann", &[9; 16], &set).unwrap();
    s.set_recovery_codes("pat", &[8; 16], &set).unwrap();
    assert!(s.use_recovery_code("ann", &[2; 32]).unwrap());
    assert!(!s.use_recovery_code("ann", &[2; 32]).unwrap(), "used once");
    assert!(!s.use_recovery_code("ann", &[5; 32]).unwrap(), "not in the set");
    assert!(!s.use_recovery_code("nobody", &[1; 32]).unwrap(), "no such user");
    assert_eq!((s.recovery_codes_left("ann").unwrap(), s.recovery_codes_left("pat").unwrap()), (3, 4));
    assert!(s.use_recovery_code("pat", &[2; 32]).unwrap(), "another user's code of the same value");
}
on_both_stores!(a_recovery_code_is_used_once);

/// A host by its certificate: found, absent, found revoked.
fn a_host_by_fingerprint_is_found_absent_or_revoked(s: &mut dyn Store) {
    let web = host("web01", 1);
    assert!(s.add_host(&web).unwrap());
    assert_eq!(s.host_by_fingerprint(&[1; 32]).unwrap(), Some(web.clone()));
    assert_eq!(s.host_by_fingerprint(&[2; 32]).unwrap(), None);
    assert!(s.revoke_host("web01", 500).unwrap());
    assert_eq!(s.host_by_fingerprint(&[1; 32]).unwrap(), Some(HostRecord { revoked_at: Some(500), ..web }));
}
on_both_stores!(a_host_by_fingerprint_is_found_absent_or_revoked);

/// A renewal is a compare-and-set on the certificate that asked; the one
/// it replaced finds the host until the new one is presented.
fn a_renewal_keeps_the_replaced_certificate_until_the_new_one_is_presented(s: &mut dyn Store) {
    let web = HostRecord { expires_at: Some(1000), ..host("web01", 1) };
    assert!(s.add_host(&web).unwrap());
    let r = Renewal {
        presented: vec![1; 32],
        presented_until: 1000,
        fingerprint: vec![2; 32],
        expires_at: 2000,
        ca: vec![7; 32],
        now: 600,
    };
    assert!(s.renew_host("web01", &r).unwrap());
    let renewed = s.host_by_fingerprint(&[1; 32]).unwrap().unwrap();
    assert_eq!(s.host_by_fingerprint(&[2; 32]).unwrap().as_ref(), Some(&renewed));
    assert_eq!(
        (renewed.expires_at, renewed.renewed_at, renewed.prev_until, renewed.ca.clone()),
        (Some(2000), Some(600), Some(1000), Some(vec![7; 32]))
    );
    assert!(renewed.accepts(&[1; 32], 650) && renewed.accepts(&[2; 32], 650));
    // Asked again with the old certificate (the new bundle was never
    // written): the old one stays the replaced one.
    let again = Renewal { fingerprint: vec![3; 32], now: 700, ..r.clone() };
    assert!(s.renew_host("web01", &again).unwrap());
    assert_eq!(s.host_by_fingerprint(&[2; 32]).unwrap(), None, "never presented, gone");
    assert!(s.host_presented("web01", &[3; 32], 800).unwrap());
    assert!(!s.host_presented("web01", &[3; 32], 900).unwrap(), "only ever shortened");
    let h = s.host("web01").unwrap().unwrap();
    assert!(h.accepts(&[1; 32], 799) && !h.accepts(&[1; 32], 800) && h.superseded(&[1; 32], 800));
    // A certificate that is not (or no longer) the host's renews nothing; nor does a revoked host.
    assert!(!s.renew_host("web01", &Renewal { presented: vec![9; 32], ..r.clone() }).unwrap());
    assert!(!s.renew_host("web01", &Renewal { now: 800, fingerprint: vec![4; 32], ..r.clone() }).unwrap());
    assert!(s.revoke_host("web01", 750).unwrap());
    assert!(!s.renew_host("web01", &Renewal { presented: vec![3; 32], fingerprint: vec![5; 32], ..r }).unwrap());
    // A host whose certificate expired may be added again, without a revoke.
    let other = HostRecord { expires_at: Some(1000), ..host("web02", 6) };
    assert!(s.add_host(&other).unwrap());
    assert!(!s.add_host(&HostRecord { added_at: 999, ..host("web02", 8) }).unwrap(), "still valid");
    assert!(s.add_host(&HostRecord { added_at: 1001, ..host("web02", 8) }).unwrap(), "expired");
}
on_both_stores!(a_renewal_keeps_the_replaced_certificate_until_the_new_one_is_presented);

/// What the login path reads for a plan on the caller's side: exactly one
/// of SQLite's read-only connection ([`Db::read_here`]) and PostgreSQL's
/// prefetch ([`Db::prefetch_plan`]) answers; the user and, when `mail`
/// and there is a user, its failing messages.
async fn caller_side_plan(db: &Db, name: &str, mail: bool) -> (Option<UserRecord>, Option<u64>) {
    let here = db.read_here(|s| {
        let user = s.user(name)?;
        let failing = match (&user, mail) {
            (Some(_), true) => Some(s.failing_mail_for(name)?),
            _ => None,
        };
        Ok((user, failing))
    });
    match (here, db.prefetch_plan(name, mail).await) {
        (Some(read), None) | (None, Some(read)) => read.unwrap(),
        (h, p) => panic!("read_here answered: {}, prefetch_plan answered: {}", h.is_some(), p.is_some()),
    }
}

async fn login_reads_of_missing_pending_and_active_users(db: &Db, backend: Backend) {
    db.run(|s| {
        seed(s);
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(db.read_here(|_| Ok(())).is_some(), backend == Backend::Sqlite, "reads on the caller's thread");
    assert_eq!(db.prefetch_plan("ann", false).await.is_some(), backend == Backend::Postgres, "prefetches");
    for (name, _, want, failing) in cases() {
        let asked = want.as_ref().map(|_| failing);
        assert_eq!(caller_side_plan(db, name, true).await, (want.clone(), asked), "{name}");
        assert_eq!(caller_side_plan(db, name, false).await, (want.clone(), None), "{name}, mail not asked");
        let owned = name.to_string();
        let read = db.read(move |s| Ok((s.user(&owned)?, s.failing_mail_for(&owned)?))).await.unwrap();
        assert_eq!(read, (want, failing), "{name} through the workers");
    }
}
on_both_dbs!(login_reads_of_missing_pending_and_active_users);

/// A TOTP step accepted as the conversation accepts it: in one statement
/// where the backend can ([`Db::accept_step_if_unchanged`]), else (or when
/// that declines) in a transaction.
async fn accept(db: &Db, seen: &UserRecord, step: i64, host: Option<&[u8]>) -> (Option<bool>, bool) {
    let audit = NewAudit { time: 5, user: seen.name.clone(), ..Default::default() };
    let fast = db.accept_step_if_unchanged(seen, step, 5, &audit, host).await.map(Result::unwrap);
    if fast == Some(true) {
        return (fast, true);
    }
    let name = seen.name.clone();
    (fast, db.run(move |s| s.consume_step(&name, step)).await.unwrap())
}

async fn login_accepts_a_step_once(db: &Db, backend: Backend) {
    db.run(|s| {
        s.save_user(&active())?;
        s.add_host(&host("web01", 1))?;
        s.add_host(&host("web02", 2))?;
        s.revoke_host("web02", 50).map(|_| ())
    })
    .await
    .unwrap();
    let seen = caller_side_plan(db, "ann", false).await.0.unwrap();
    let one_statement = backend == Backend::Postgres;
    assert_eq!(accept(db, &seen, 100, None).await, (one_statement.then_some(true), true), "first");
    assert_eq!(accept(db, &seen, 100, None).await, (one_statement.then_some(false), false), "again");
    assert_eq!(accept(db, &seen, 99, None).await, (one_statement.then_some(false), false), "an earlier step");
    let seen = caller_side_plan(db, "ann", false).await.0.unwrap();
    assert_eq!(seen.last_step, Some(100));
    // Relayed by a known host: accepted; by a revoked one, never in one statement.
    assert_eq!(accept(db, &seen, 101, Some(&[1; 32])).await, (one_statement.then_some(true), true), "web01");
    let seen = caller_side_plan(db, "ann", false).await.0.unwrap();
    assert_eq!(accept(db, &seen, 102, Some(&[2; 32])).await.0, one_statement.then_some(false), "web02");
    // A failure recorded since the record was read: the one statement writes nothing.
    let failed = UserRecord { failures: 1, failures_since_login: 1, ..seen.clone() };
    db.run(move |s| s.save_user(&failed)).await.unwrap();
    assert_eq!(accept(db, &seen, 103, None).await, (one_statement.then_some(false), true), "decided in a transaction");
}
on_both_dbs!(login_accepts_a_step_once);

/// A fleet host by its certificate through [`Db::host_by_fingerprint`]
/// (PostgreSQL: on the caller's runtime; SQLite: a read job).
async fn login_finds_a_host_by_fingerprint_absent_or_revoked(db: &Db, _: Backend) {
    let web = host("web01", 1);
    let added = web.clone();
    assert!(db.run(move |s| s.add_host(&added)).await.unwrap());
    assert_eq!(db.host_by_fingerprint(&[1; 32]).await.unwrap(), Some(web.clone()));
    assert_eq!(db.host_by_fingerprint(&[2; 32]).await.unwrap(), None);
    assert!(db.run(|s| s.revoke_host("web01", 500)).await.unwrap());
    assert_eq!(db.host_by_fingerprint(&[1; 32]).await.unwrap(), Some(HostRecord { revoked_at: Some(500), ..web }));
}
on_both_dbs!(login_finds_a_host_by_fingerprint_absent_or_revoked);
