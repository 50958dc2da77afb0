//! The statements the stores run, in one place: a statement whose text is
//! the same in SQLite and PostgreSQL is written once (`same!`); where the
//! dialects differ both texts stand side by side (`pair!`, or
//! `locked_in_postgres!` for a shared text PostgreSQL runs with a row lock);
//! what only PostgreSQL runs is in [`postgres`]. (Each backend's PRAGMAs,
//! transaction control and schema stay with it; the schema is in
//! [`crate::store::schema`].)
//!
//! # Placeholders
//!
//! Every text here numbers its parameters PostgreSQL's way: `$1`, `$2`, ….
//! SQLite's copy of a text is made at compile time by [`numbered`], which
//! turns each `$N` into `?N` and changes nothing else. That is exactly right
//! because `?N` is SQLite's "parameter number N" as `$N` is PostgreSQL's:
//! both stores pass a statement's arguments in the same order (rusqlite binds
//! the i-th argument to number i, tokio-postgres binds the i-th to `$i`), so
//! each `$N` and its `?N` get the same value however often and in whatever
//! order the text names them.
//!
//! `$N` itself is NOT usable in SQLite: there it is a *named* parameter, and
//! named parameters are numbered in the order they first appear, so in
//! `SET last_step = $2 WHERE name = $1` the first argument would land in
//! `$2` (the test `dollar_numbers_are_no_positions_in_sqlite` shows it).
//!
//! [`numbered`] refuses (a compile error, since it runs while compiling) a
//! `?` placeholder, a `$` not followed by a digit, a `$` inside a string
//! literal, and a PostgreSQL `::` cast: a text written here is either valid
//! in both dialects or does not build.
//!
//! # Where the dialects were made to agree
//!
//! The shared texts use only what both dialects mean alike: `"user"`
//! (a quoted identifier in both: `user` is reserved in PostgreSQL; SQLite
//! connections also refuse double-quoted string literals, so it can be
//! nothing but the column), `CAST($n AS TEXT) IS NULL` (PostgreSQL's
//! `$n::text`, which it needs to type a parameter), `NOT $1` on a boolean
//! (SQLite binds it as 0 or 1), `count(*) FILTER (WHERE …)` and
//! `RETURNING id` (SQLite 3.30 and 3.35; the bundled one is 3.46).

/// One statement in both dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sql {
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// `text` with each `$N` written `?N` (see the module's documentation).
/// Fails (only ever evaluated while compiling: the build fails) on anything
/// else that is not the same in both dialects' placeholders.
const fn numbered<const N: usize>(text: &str) -> [u8; N] {
    let b = text.as_bytes();
    assert!(b.len() == N, "numbered: wrong length");
    let mut out = [0u8; N];
    let mut quoted = false;
    let mut i = 0;
    while i < N {
        let c = b[i];
        let next = if i + 1 < N { b[i + 1] } else { 0 };
        if c == b'\'' {
            quoted = !quoted;
        }
        assert!(c != b'?' || quoted, "a ? placeholder: write $1, $2, ...");
        assert!(c != b'$' || (!quoted && next.is_ascii_digit()), "a $ that is not a placeholder $N");
        assert!(c != b':' || next != b':' || quoted, "a PostgreSQL cast (::): write CAST(x AS type)");
        out[i] = if c == b'$' { b'?' } else { c };
        i += 1;
    }
    out
}

/// `a` then `b`.
const fn joined<const N: usize>(a: &str, b: &str) -> [u8; N] {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    assert!(a.len() + b.len() == N, "joined: wrong length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if i < a.len() { a[i] } else { b[i - a.len()] };
        i += 1;
    }
    out
}

/// SQLite's copy of a `$N` text, made while compiling.
macro_rules! sqlite_text {
    ($text:expr) => {{
        const TEXT: &str = $text;
        const BYTES: [u8; TEXT.len()] = numbered(TEXT);
        match ::core::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("not UTF-8"),
        }
    }};
}

/// Two texts as one, made while compiling.
macro_rules! join {
    ($a:expr, $b:expr) => {{
        const A: &str = $a;
        const B: &str = $b;
        const BYTES: [u8; A.len() + B.len()] = joined(A, B);
        match ::core::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("not UTF-8"),
        }
    }};
}

/// A statement written once for both dialects.
macro_rules! same {
    ($text:expr) => {
        Sql { sqlite: sqlite_text!($text), postgres: $text }
    };
}

/// A statement the dialects write differently, both with `$N` placeholders.
macro_rules! pair {
    (sqlite: $sqlite:expr, postgres: $postgres:expr $(,)?) => {
        Sql { sqlite: sqlite_text!($sqlite), postgres: $postgres }
    };
}

/// A statement PostgreSQL runs with a row-locking clause after the text
/// both share (SQLite's single writer needs no lock).
macro_rules! locked_in_postgres {
    ($text:expr, $lock:expr) => {
        Sql { sqlite: sqlite_text!($text), postgres: join!($text, $lock) }
    };
}

// Users: what a login's plan reads ([`crate::store::model::PlanReads`]).

/// On PostgreSQL only outside a transaction (a read job); inside one the
/// row is locked: [`postgres::USER_FOR_UPDATE`].
pub const USER: Sql = same!("SELECT * FROM users WHERE name = $1");
/// SQLite's BINARY order is PostgreSQL's "C" (byte order); the database's
/// default collation could be another.
pub const USER_BY_UID: Sql = pair!(
    sqlite: "SELECT * FROM users WHERE uid = $1 ORDER BY enabled DESC, name LIMIT 1",
    postgres: r#"SELECT * FROM users WHERE uid = $1 ORDER BY enabled DESC, name COLLATE "C" LIMIT 1"#,
);
pub const ENABLED_USER_NOCASE: Sql =
    locked_in_postgres!("SELECT * FROM users WHERE lower(name) = lower($1) AND enabled LIMIT 2", " FOR UPDATE");
pub const IN_GROUP: Sql = same!("SELECT 1 FROM group_members WHERE grp = $1 AND name = $2");
/// How many messages of the user named by `$user` are failing (tried, not sent).
macro_rules! failing_mail_of {
    ($user:literal) => {
        concat!(
            r#"SELECT count(*) FROM outbox o JOIN email_codes c ON c.id = o.code_id WHERE c."user" = "#,
            $user,
            " AND o.sent_at IS NULL AND o.attempts > 0"
        )
    };
}
pub const FAILING_MAIL: Sql = same!(failing_mail_of!("$1"));

// Users: writes.

/// An upsert that never lowers `last_step` or `hotp_counter` while the
/// secret stays the same: SQLite has no `greatest` (its two-argument `max`
/// is NULL when either is), PostgreSQL no scalar `max`.
pub const SAVE_USER: Sql = pair!(
    sqlite: "INSERT INTO users (name, uid, method, enabled, email, secret, activated_at, last_step,
                                failures, locked_until, last_login, created_at, updated_at,
                                password_hash, last_method, lock_periods, failures_since_login,
                                admin_locked_at, hotp_counter, digits, clock_drift_secs, clock_drift_at,
                                clock_drift_refusals)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                     $21, $22, $23)
             ON CONFLICT (name) DO UPDATE SET
                uid = excluded.uid, method = excluded.method, enabled = excluded.enabled,
                email = excluded.email, secret = excluded.secret, activated_at = excluded.activated_at,
                last_step = CASE WHEN excluded.secret IS users.secret
                                 THEN max(coalesce(excluded.last_step, users.last_step),
                                          coalesce(users.last_step, excluded.last_step))
                                 ELSE excluded.last_step END,
                failures = excluded.failures,
                locked_until = excluded.locked_until, last_login = excluded.last_login,
                updated_at = excluded.updated_at, password_hash = excluded.password_hash,
                last_method = excluded.last_method, lock_periods = excluded.lock_periods,
                failures_since_login = excluded.failures_since_login,
                admin_locked_at = excluded.admin_locked_at,
                hotp_counter = CASE WHEN excluded.secret IS users.secret
                                    THEN max(coalesce(excluded.hotp_counter, users.hotp_counter),
                                             coalesce(users.hotp_counter, excluded.hotp_counter))
                                    ELSE excluded.hotp_counter END,
                digits = excluded.digits, clock_drift_secs = excluded.clock_drift_secs,
                clock_drift_at = excluded.clock_drift_at, clock_drift_refusals = excluded.clock_drift_refusals",
    postgres: "INSERT INTO users (name, uid, method, enabled, email, secret, activated_at, last_step,
                                failures, locked_until, last_login, created_at, updated_at,
                                password_hash, last_method, lock_periods, failures_since_login,
                                admin_locked_at, hotp_counter, digits, clock_drift_secs, clock_drift_at,
                                clock_drift_refusals)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                     $21, $22, $23)
             ON CONFLICT (name) DO UPDATE SET
                uid = excluded.uid, method = excluded.method, enabled = excluded.enabled,
                email = excluded.email, secret = excluded.secret, activated_at = excluded.activated_at,
                last_step = CASE WHEN excluded.secret IS NOT DISTINCT FROM users.secret
                                 THEN greatest(users.last_step, excluded.last_step)
                                 ELSE excluded.last_step END,
                failures = excluded.failures,
                locked_until = excluded.locked_until, last_login = excluded.last_login,
                updated_at = excluded.updated_at, password_hash = excluded.password_hash,
                last_method = excluded.last_method, lock_periods = excluded.lock_periods,
                failures_since_login = excluded.failures_since_login,
                admin_locked_at = excluded.admin_locked_at,
                hotp_counter = CASE WHEN excluded.secret IS NOT DISTINCT FROM users.secret
                                    THEN greatest(users.hotp_counter, excluded.hotp_counter)
                                    ELSE excluded.hotp_counter END,
                digits = excluded.digits, clock_drift_secs = excluded.clock_drift_secs,
                clock_drift_at = excluded.clock_drift_at, clock_drift_refusals = excluded.clock_drift_refusals",
);
/// HOTP: the counter moves past `$2` only if it is not past it already.
pub const CONSUME_COUNTER: Sql = same!(
    "UPDATE users SET hotp_counter = $2 + 1
     WHERE name = $1 AND method = 'hotp' AND hotp_counter IS NOT NULL AND hotp_counter <= $2"
);
/// TOTP: step `$2` is taken only if it is later than every step taken.
pub const CONSUME_STEP: Sql =
    same!("UPDATE users SET last_step = $2 WHERE name = $1 AND (last_step IS NULL OR last_step < $2)");
/// By name in byte order (see [`USER_BY_UID`]).
pub const USERS: Sql =
    pair!(sqlite: "SELECT * FROM users ORDER BY name", postgres: r#"SELECT * FROM users ORDER BY name COLLATE "C""#);
/// One page of users by name: those whose name or address contains $1
/// (lower case, `%` and `_` escaped with `\`), after the name $2. The
/// names walk the primary key (SQLite) or `users_by_name_c` (PostgreSQL)
/// from $2 on; a search reads every name.
pub const USERS_PAGE: Sql = pair!(
    sqlite: r#"SELECT * FROM users
       WHERE (CAST($1 AS TEXT) IS NULL OR lower(name) LIKE '%' || $1 || '%' ESCAPE '\'
              OR lower(coalesce(email, '')) LIKE '%' || $1 || '%' ESCAPE '\')
         AND name > coalesce($2, '')
       ORDER BY name LIMIT $3"#,
    postgres: r#"SELECT * FROM users
       WHERE (CAST($1 AS TEXT) IS NULL OR lower(name) LIKE '%' || $1 || '%' ESCAPE '\'
              OR lower(coalesce(email, '')) LIKE '%' || $1 || '%' ESCAPE '\')
         AND name COLLATE "C" > coalesce(CAST($2 AS TEXT), '')
       ORDER BY name COLLATE "C" LIMIT $3"#,
);

// Recovery codes and group members.

pub const DELETE_RECOVERY_CODES: Sql = same!(r#"DELETE FROM recovery_codes WHERE "user" = $1"#);
pub const INSERT_RECOVERY_CODE: Sql = same!(r#"INSERT INTO recovery_codes ("user", salt, hash) VALUES ($1, $2, $3)"#);
pub const RECOVERY_SALT: Sql = same!(r#"SELECT salt FROM recovery_codes WHERE "user" = $1 LIMIT 1"#);
/// The delete decides: a code is used by the one caller whose delete found it.
pub const USE_RECOVERY_CODE: Sql = same!(r#"DELETE FROM recovery_codes WHERE "user" = $1 AND hash = $2"#);
pub const RECOVERY_CODES_LEFT: Sql = same!(r#"SELECT count(*) FROM recovery_codes WHERE "user" = $1"#);
pub const DELETE_GROUP_MEMBERS: Sql = same!("DELETE FROM group_members WHERE grp = $1");
/// SQLite inserts one name per execution; PostgreSQL takes the whole list
/// (`$2`, a text array: a group may have 100,000 members) in one statement.
pub const INSERT_GROUP_MEMBERS: Sql = pair!(
    sqlite: "INSERT OR IGNORE INTO group_members (grp, name) VALUES ($1, $2)",
    postgres: "INSERT INTO group_members (grp, name) SELECT $1, n FROM unnest($2::text[]) AS n ON CONFLICT DO NOTHING",
);

// Audit.

pub const ADD_AUDIT: Sql = same!(
    r#"INSERT INTO audit (time, "user", service, rhost, tty, machine, method, result, reason)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#
);
/// A refusal an agent spooled while no server answered, written late
/// (`received_at`): a second copy of one `spool_id` from one host (a
/// resend after a lost acknowledgement) writes nothing.
pub const ADD_LATE_AUDIT: Sql = same!(
    r#"INSERT INTO audit (time, "user", service, rhost, tty, machine, method, result, reason, received_at, spool_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"#
);
pub const PRUNE_AUDIT: Sql =
    same!("DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE time < $1 ORDER BY time LIMIT $2)");
/// A session ages out by its end, or its start if it never ended.
pub const PRUNE_SESSIONS: Sql = same!(
    "DELETE FROM sessions WHERE id IN
       (SELECT id FROM sessions WHERE coalesce(closed_at, opened_at) < $1 LIMIT $2)"
);
/// Filters that are NULL filter nothing.
/// An audit page: newest first (by time, then id); every filter optional —
/// user $1, host $2, since $3, the page size $4, result $5, until $6, and
/// the end of the previous page $7 (entries before that entry; a pruned one
/// starts again from the newest). Four texts that differ only in the
/// filter they lead with, so that each walks an index in page order
/// (`"user"`, `machine`, `result` or `time`, each with `time`) and stops
/// after a page, at a million rows as at a thousand: a filter written
/// `$1 IS NULL OR "user" = $1` can use no index in SQLite.
macro_rules! audit_page {
    ($lead:literal) => {
        same!(concat!(
            r#"SELECT id, time, "user", service, rhost, tty, machine, method, result, reason, received_at FROM audit
       WHERE "#,
            $lead,
            r#"
         AND (CAST($1 AS TEXT) IS NULL OR "user" = $1) AND (CAST($2 AS TEXT) IS NULL OR machine = $2)
         AND (CAST($3 AS BIGINT) IS NULL OR time >= $3) AND (CAST($5 AS TEXT) IS NULL OR result = $5)
         AND (CAST($6 AS BIGINT) IS NULL OR time < $6)
         AND (time, id) < (SELECT time, id FROM audit WHERE id = CAST($7 AS BIGINT)
                           UNION ALL SELECT 9223372036854775807, 0 ORDER BY 1 LIMIT 1)
       ORDER BY time DESC, id DESC LIMIT $4"#
        ))
    };
}
pub const AUDIT_BY_USER: Sql = audit_page!(r#""user" = $1"#);
pub const AUDIT_BY_MACHINE: Sql = audit_page!("machine = $2");
pub const AUDIT_BY_RESULT: Sql = audit_page!("result = $5");
pub const AUDIT: Sql = audit_page!("TRUE");

/// The audit page's text for the filters given: the most selective leads.
pub fn audit_page(user: bool, machine: bool, result: bool) -> Sql {
    match (user, machine, result) {
        (true, _, _) => AUDIT_BY_USER,
        (false, true, _) => AUDIT_BY_MACHINE,
        (false, false, true) => AUDIT_BY_RESULT,
        _ => AUDIT,
    }
}
pub const COUNT_USERS: Sql = same!(
    "SELECT count(*), count(*) FILTER (WHERE enabled),
            count(*) FILTER (WHERE enabled AND activated_at IS NOT NULL),
            count(*) FILTER (WHERE locked_until > $1 OR admin_locked_at IS NOT NULL)
     FROM users"
);
pub const COUNT_AUDIT: Sql = same!("SELECT count(*) FROM audit");
/// SQLite keeps it in `PRAGMA user_version`, PostgreSQL in a table of its own.
pub const SCHEMA_VERSION: Sql =
    pair!(sqlite: "PRAGMA user_version", postgres: "SELECT version FROM otpd_schema WHERE id = 1");

// Emailed codes and their mail.

pub const LATEST_EMAIL_CODE: Sql = same!(
    r#"SELECT * FROM email_codes WHERE "user" = $1 AND (CAST($2 AS TEXT) IS NULL OR machine = $2)
       ORDER BY created_at DESC, id DESC LIMIT 1"#
);
pub const INSERT_EMAIL_CODE: Sql = same!(
    r#"INSERT INTO email_codes ("user", machine, address, code_hash, code_enc, created_at, expires_at,
                                used_at, origin, emergency)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id"#
);
/// With `$2` (used at), only a code not used yet: the caller whose update
/// changed the row is the one that used it.
pub const RETIRE_EMAIL_CODE: Sql = same!(
    "UPDATE email_codes SET code_enc = NULL, used_at = coalesce($2, used_at)
     WHERE id = $1 AND (CAST($2 AS BIGINT) IS NULL OR used_at IS NULL)"
);
pub const ENQUEUE_MAIL: Sql = same!(
    "INSERT INTO outbox (code_id, to_addr, created_at, next_attempt_at) VALUES ($1, $2, $3, $3)
     RETURNING id"
);
pub const COUNT_MAIL: Sql = same!("SELECT count(*) FROM outbox WHERE created_at >= $1");
pub const COUNT_MAIL_TO: Sql = same!("SELECT count(*) FROM outbox WHERE to_addr = $1 AND created_at >= $2");
pub const COUNT_MAIL_OF_CODE: Sql = same!("SELECT count(*) FROM outbox WHERE code_id = $1 AND created_at >= $2");
/// PostgreSQL skips the rows another server is claiming right now rather
/// than wait for them; the claim commits with the job.
pub const DUE_MAIL: Sql = locked_in_postgres!(
    "SELECT o.id AS oid, o.attempts, o.to_addr, c.* FROM outbox o JOIN email_codes c ON c.id = o.code_id
     WHERE o.sent_at IS NULL AND o.next_attempt_at <= $1 ORDER BY o.next_attempt_at, o.id LIMIT $2",
    " FOR UPDATE OF o SKIP LOCKED"
);
/// SQLite claims one message per execution (`$1` an id), PostgreSQL all of
/// them at once (`$1` an array of ids).
pub const CLAIM_MAIL: Sql = pair!(
    sqlite: "UPDATE outbox SET next_attempt_at = $2 WHERE id = $1",
    postgres: "UPDATE outbox SET next_attempt_at = $2 WHERE id = ANY($1)",
);
pub const MAIL_SENT: Sql = same!("UPDATE outbox SET sent_at = $2, last_error = NULL WHERE id = $1");
pub const MAIL_FAILED: Sql =
    same!("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1");
pub const MAIL_COUNTS: Sql = same!(
    "SELECT count(*) FILTER (WHERE sent_at IS NULL),
            count(*) FILTER (WHERE sent_at IS NULL AND attempts > 0),
            count(*) FILTER (WHERE sent_at >= $1) FROM outbox"
);
pub const MAIL_LAST_ERROR: Sql = same!(
    "SELECT last_error FROM outbox WHERE sent_at IS NULL AND last_error IS NOT NULL
     ORDER BY next_attempt_at DESC LIMIT 1"
);

// Emergency requests and sessions.

pub const INSERT_REQUEST: Sql = same!(
    r#"INSERT INTO emergency_requests ("user", machine, address, reason, origin, created_at, status)
       VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id"#
);
pub const REQUEST: Sql = same!("SELECT * FROM emergency_requests WHERE id = $1");
/// `$1`: pending ones only.
pub const REQUESTS: Sql =
    same!("SELECT * FROM emergency_requests WHERE (NOT $1 OR status = 'pending') ORDER BY id DESC LIMIT 1000");
/// `$1`: pending ones only.
pub const COUNT_REQUESTS: Sql = same!("SELECT count(*) FROM emergency_requests WHERE (NOT $1 OR status = 'pending')");
pub const COUNT_PENDING_FOR_USER: Sql =
    same!(r#"SELECT count(*) FROM emergency_requests WHERE status = 'pending' AND "user" = $1"#);
pub const COUNT_PENDING_FOR_ADDRESS: Sql =
    same!("SELECT count(*) FROM emergency_requests WHERE status = 'pending' AND lower(address) = lower($1)");
pub const DECIDE_REQUEST: Sql =
    same!("UPDATE emergency_requests SET status = $2, decided_by = $3, decided_at = $4 WHERE id = $1");
pub const OPEN_SESSION: Sql = same!(
    r#"INSERT INTO sessions ("user", email, machine, service, rhost, tty, pid, opened_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id"#
);
/// The newest open session of that user, service and pid on that machine.
pub const CLOSE_SESSION: Sql = same!(
    r#"UPDATE sessions SET closed_at = $4 WHERE id = (SELECT id FROM sessions
       WHERE "user" = $1 AND service = $2 AND pid = $3 AND machine = $5 AND closed_at IS NULL
       ORDER BY id DESC LIMIT 1)"#
);
pub const SESSIONS: Sql = same!("SELECT * FROM sessions ORDER BY id DESC LIMIT $1");

// Fleet hosts and CA.

/// One statement: two servers adding the same name cannot both succeed; a
/// revoked host of that name, or one whose certificate expired, is replaced.
pub const ADD_HOST: Sql = same!(
    "INSERT INTO hosts (name, role, fingerprint, added_at, revoked_at, last_seen, last_addr, expires_at, ca,
                        renewed_at, prev_fingerprint, prev_until)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
     ON CONFLICT (name) DO UPDATE SET
        role = excluded.role, fingerprint = excluded.fingerprint, added_at = excluded.added_at,
        revoked_at = excluded.revoked_at, last_seen = excluded.last_seen, last_addr = excluded.last_addr,
        expires_at = excluded.expires_at, ca = excluded.ca, renewed_at = excluded.renewed_at,
        prev_fingerprint = excluded.prev_fingerprint, prev_until = excluded.prev_until
     WHERE hosts.revoked_at IS NOT NULL OR hosts.expires_at < excluded.added_at"
);
pub const HOST: Sql = same!("SELECT * FROM hosts WHERE name = $1");
/// Also on the login path ([`crate::store::pgfast`]).
/// Its current certificate, or the one its last renewal replaced.
pub const HOST_BY_FINGERPRINT: Sql = same!("SELECT * FROM hosts WHERE fingerprint = $1 OR prev_fingerprint = $1");
/// By name in byte order (see [`USER_BY_UID`]).
pub const HOSTS: Sql =
    pair!(sqlite: "SELECT * FROM hosts ORDER BY name", postgres: r#"SELECT * FROM hosts ORDER BY name COLLATE "C""#);
pub const REVOKE_HOST: Sql = same!("UPDATE hosts SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL");
pub const HOST_SEEN: Sql = same!("UPDATE hosts SET last_seen = $2, last_addr = $3 WHERE name = $1");
/// Compare-and-set: only while the certificate that asked ($6) is still
/// one the host may use and the host is not revoked.
pub const RENEW_HOST: Sql = same!(
    "UPDATE hosts SET fingerprint = $2, expires_at = $3, ca = $4, renewed_at = $5, prev_fingerprint = $6,
                      prev_until = $7
     WHERE name = $1 AND revoked_at IS NULL
       AND (fingerprint = $6 OR (prev_fingerprint = $6 AND prev_until > $5))"
);
pub const HOST_PRESENTED: Sql =
    same!("UPDATE hosts SET prev_until = $3 WHERE name = $1 AND fingerprint = $2 AND prev_until > $3");
/// The fleet's CAs, oldest first.
pub const FLEET_CAS: Sql = same!("SELECT id, cert_pem, key_sealed, added_at FROM fleet_cas ORDER BY id");
/// The first CA of a database: two servers starting together store one.
pub const SET_FLEET_CA: Sql = same!(
    "INSERT INTO fleet_cas (id, cert_pem, key_sealed, added_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING"
);
/// `ca rotate`: a second CA, only while there is one (two servers rotating
/// together: the same id, so one of them adds nothing).
pub const ADD_FLEET_CA: Sql = pair!(
    sqlite: "INSERT INTO fleet_cas (id, cert_pem, key_sealed, added_at)
             SELECT (SELECT MAX(id) FROM fleet_cas) + 1, $1, $2, $3 WHERE (SELECT COUNT(*) FROM fleet_cas) = 1
             ON CONFLICT (id) DO NOTHING",
    postgres: "INSERT INTO fleet_cas (id, cert_pem, key_sealed, added_at)
               SELECT (SELECT MAX(id) FROM fleet_cas) + 1, $1::TEXT, $2::BYTEA, $3::BIGINT
               WHERE (SELECT COUNT(*) FROM fleet_cas) = 1
               ON CONFLICT (id) DO NOTHING",
);
/// `ca retire`: the older of two CAs, if it is still the one the admin saw.
pub const RETIRE_FLEET_CA: Sql = same!(
    "DELETE FROM fleet_cas WHERE id = $1 AND id = (SELECT MIN(id) FROM fleet_cas)
       AND (SELECT COUNT(*) FROM fleet_cas) > 1"
);
/// `ca retire --force`: the hosts still on the retired CA need new bundles.
pub const REVOKE_HOSTS_OF_CA: Sql = same!("UPDATE hosts SET revoked_at = $2 WHERE ca = $1 AND revoked_at IS NULL");
/// `ca retire`: certificates a renewal replaced (of the retired CA, most
/// of them) are accepted no longer.
pub const END_REPLACED_CERTIFICATES: Sql = same!("UPDATE hosts SET prev_until = $1 WHERE prev_until > $1");
/// Hosts added before hosts recorded their CA were issued by the first one.
pub const HOSTS_CA_UNKNOWN: Sql = same!("UPDATE hosts SET ca = $1 WHERE ca IS NULL");

/// What only PostgreSQL runs: row locks, advisory locks, its schema
/// bookkeeping and the login path's one-statement reads and accept.
pub mod postgres {
    use super::{joined, USER, USER_BY_UID};

    /// [`USER`] keeping the row locked to the end of the transaction:
    /// another server's login of the same user waits, then reads what this
    /// one wrote.
    pub const USER_FOR_UPDATE: &str = join!(USER.postgres, " FOR UPDATE");
    pub const USER_BY_UID_FOR_UPDATE: &str = join!(USER_BY_UID.postgres, " FOR UPDATE");

    /// What planning a fleet login reads, in one statement: the record of
    /// the name `$1` and, when `$2`, its failing messages (`failing_mail`;
    /// null when not asked).
    pub const USER_AND_FAILING_MAIL: &str = concat!(
        "SELECT u.*, CASE WHEN $2 THEN (",
        failing_mail_of!("u.name"),
        ") END AS failing_mail FROM users u WHERE u.name = $1"
    );

    /// The common login in ONE statement (see
    /// [`crate::store::pgfast::PgFast::accept_step_if_unchanged`]). One
    /// statement is a transaction of its own: the UPDATE and the audit row
    /// commit together or not at all. A concurrent login on the same row
    /// waits for the row lock, then re-checks the WHERE on the committed
    /// row: the step is then used, and it writes nothing.
    pub const ACCEPT_STEP: &str = r#"WITH u AS (
        UPDATE users SET last_step = $2, last_login = $3, last_method = 'totp', updated_at = $3
         WHERE name = $1 AND enabled AND method = 'totp' AND secret = $4
           AND activated_at IS NOT NULL AND digits IS NOT DISTINCT FROM $5
           AND (last_step IS NULL OR last_step < $2)
           AND failures = 0 AND failures_since_login = 0 AND lock_periods = 0
           AND locked_until IS NULL AND admin_locked_at IS NULL
           AND ($14::bytea IS NULL
                OR EXISTS (SELECT 1 FROM hosts WHERE revoked_at IS NULL
                             AND ((fingerprint = $14 AND (expires_at IS NULL OR expires_at >= $3))
                                  OR (prev_fingerprint = $14 AND prev_until > $3))))
        RETURNING name)
    INSERT INTO audit (time, "user", service, rhost, tty, machine, method, result, reason)
    SELECT $3, $6, $7, $8, $9, $10, $11, $12, $13 FROM u"#;

    /// Session-level, around the migrations (servers starting together
    /// take turns).
    pub const LOCK: &str = "SELECT pg_advisory_lock($1)";
    pub const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";
    /// Transaction-level, before a cap's count (see
    /// [`crate::store::model`]'s concurrency contract).
    pub const XACT_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
    pub const SET_SCHEMA_VERSION: &str = "UPDATE otpd_schema SET version = $1 WHERE id = 1";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of this file, by name (checked against the file).
    fn shared_and_paired() -> Vec<(&'static str, Sql)> {
        vec![
            ("USER", USER),
            ("USER_BY_UID", USER_BY_UID),
            ("ENABLED_USER_NOCASE", ENABLED_USER_NOCASE),
            ("IN_GROUP", IN_GROUP),
            ("FAILING_MAIL", FAILING_MAIL),
            ("SAVE_USER", SAVE_USER),
            ("CONSUME_COUNTER", CONSUME_COUNTER),
            ("CONSUME_STEP", CONSUME_STEP),
            ("USERS", USERS),
            ("USERS_PAGE", USERS_PAGE),
            ("DELETE_RECOVERY_CODES", DELETE_RECOVERY_CODES),
            ("INSERT_RECOVERY_CODE", INSERT_RECOVERY_CODE),
            ("RECOVERY_SALT", RECOVERY_SALT),
            ("USE_RECOVERY_CODE", USE_RECOVERY_CODE),
            ("RECOVERY_CODES_LEFT", RECOVERY_CODES_LEFT),
            ("DELETE_GROUP_MEMBERS", DELETE_GROUP_MEMBERS),
            ("INSERT_GROUP_MEMBERS", INSERT_GROUP_MEMBERS),
            ("ADD_AUDIT", ADD_AUDIT),
            ("ADD_LATE_AUDIT", ADD_LATE_AUDIT),
            ("PRUNE_AUDIT", PRUNE_AUDIT),
            ("PRUNE_SESSIONS", PRUNE_SESSIONS),
            ("AUDIT_BY_USER", AUDIT_BY_USER),
            ("AUDIT_BY_MACHINE", AUDIT_BY_MACHINE),
            ("AUDIT_BY_RESULT", AUDIT_BY_RESULT),
            ("AUDIT", AUDIT),
            ("COUNT_USERS", COUNT_USERS),
            ("COUNT_AUDIT", COUNT_AUDIT),
            ("SCHEMA_VERSION", SCHEMA_VERSION),
            ("LATEST_EMAIL_CODE", LATEST_EMAIL_CODE),
            ("INSERT_EMAIL_CODE", INSERT_EMAIL_CODE),
            ("RETIRE_EMAIL_CODE", RETIRE_EMAIL_CODE),
            ("ENQUEUE_MAIL", ENQUEUE_MAIL),
            ("COUNT_MAIL", COUNT_MAIL),
            ("COUNT_MAIL_TO", COUNT_MAIL_TO),
            ("COUNT_MAIL_OF_CODE", COUNT_MAIL_OF_CODE),
            ("DUE_MAIL", DUE_MAIL),
            ("CLAIM_MAIL", CLAIM_MAIL),
            ("MAIL_SENT", MAIL_SENT),
            ("MAIL_FAILED", MAIL_FAILED),
            ("MAIL_COUNTS", MAIL_COUNTS),
            ("MAIL_LAST_ERROR", MAIL_LAST_ERROR),
            ("INSERT_REQUEST", INSERT_REQUEST),
            ("REQUEST", REQUEST),
            ("REQUESTS", REQUESTS),
            ("COUNT_REQUESTS", COUNT_REQUESTS),
            ("COUNT_PENDING_FOR_USER", COUNT_PENDING_FOR_USER),
            ("COUNT_PENDING_FOR_ADDRESS", COUNT_PENDING_FOR_ADDRESS),
            ("DECIDE_REQUEST", DECIDE_REQUEST),
            ("OPEN_SESSION", OPEN_SESSION),
            ("CLOSE_SESSION", CLOSE_SESSION),
            ("SESSIONS", SESSIONS),
            ("ADD_HOST", ADD_HOST),
            ("HOST", HOST),
            ("HOST_BY_FINGERPRINT", HOST_BY_FINGERPRINT),
            ("HOSTS", HOSTS),
            ("REVOKE_HOST", REVOKE_HOST),
            ("HOST_SEEN", HOST_SEEN),
            ("RENEW_HOST", RENEW_HOST),
            ("HOST_PRESENTED", HOST_PRESENTED),
            ("FLEET_CAS", FLEET_CAS),
            ("SET_FLEET_CA", SET_FLEET_CA),
            ("ADD_FLEET_CA", ADD_FLEET_CA),
            ("RETIRE_FLEET_CA", RETIRE_FLEET_CA),
            ("REVOKE_HOSTS_OF_CA", REVOKE_HOSTS_OF_CA),
            ("END_REPLACED_CERTIFICATES", END_REPLACED_CERTIFICATES),
            ("HOSTS_CA_UNKNOWN", HOSTS_CA_UNKNOWN),
        ]
    }

    fn postgres_only() -> Vec<(&'static str, &'static str)> {
        vec![
            ("USER_FOR_UPDATE", postgres::USER_FOR_UPDATE),
            ("USER_BY_UID_FOR_UPDATE", postgres::USER_BY_UID_FOR_UPDATE),
            ("USER_AND_FAILING_MAIL", postgres::USER_AND_FAILING_MAIL),
            ("ACCEPT_STEP", postgres::ACCEPT_STEP),
            ("LOCK", postgres::LOCK),
            ("UNLOCK", postgres::UNLOCK),
            ("XACT_LOCK", postgres::XACT_LOCK),
            ("SET_SCHEMA_VERSION", postgres::SET_SCHEMA_VERSION),
        ]
    }

    /// The lists above name every constant of this file, and how each was
    /// written: (written once, written twice, PostgreSQL only).
    #[test]
    fn the_lists_name_every_statement() {
        let text = include_str!("sql.rs");
        let text = &text[..text.find("#[cfg(test)]").unwrap()];
        let names = |marker: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(marker).map(|(n, _)| n.to_string()))
                .collect()
        };
        let listed: Vec<&str> = shared_and_paired().iter().map(|(n, _)| *n).collect();
        assert_eq!(names(": Sql ="), listed);
        let listed: Vec<&str> = postgres_only().iter().map(|(n, _)| *n).collect();
        assert_eq!(names(": &str ="), listed);
        // The audit pages are written once each through `audit_page!`, whose
        // body holds one `same!(` of its own.
        let once = text.matches("same!(").count() - 1 + text.matches("audit_page!(").count();
        let twice = text.matches("pair!(").count();
        let locked = text.matches("locked_in_postgres!(").count();
        assert_eq!(once + twice + locked, shared_and_paired().len(), "{once} + {twice} + {locked}");
        println!(
            "{} statements both backends run: {once} written once, {locked} written once with PostgreSQL's row \
             lock after it, {twice} written twice; {} PostgreSQL only",
            shared_and_paired().len(),
            postgres_only().len()
        );
    }

    #[test]
    fn numbered_writes_each_dollar_number_as_a_question_mark_number() {
        const T: &str = "UPDATE t SET a = $2, b = 'x''y' WHERE c = $1 AND d = $12 AND e = $2";
        assert_eq!(&numbered::<{ T.len() }>(T), b"UPDATE t SET a = ?2, b = 'x''y' WHERE c = ?1 AND d = ?12 AND e = ?2");
        assert_eq!(CONSUME_STEP.sqlite, CONSUME_STEP.postgres.replace('$', "?"));
        assert_eq!(
            ENABLED_USER_NOCASE.postgres,
            format!("{} FOR UPDATE", ENABLED_USER_NOCASE.postgres.replace(" FOR UPDATE", ""))
        );
    }

    #[test]
    #[should_panic(expected = "a ? placeholder")]
    fn numbered_refuses_question_marks() {
        numbered::<13>("SELECT ?1, $2");
    }

    #[test]
    #[should_panic(expected = "not a placeholder")]
    fn numbered_refuses_a_dollar_in_a_string() {
        numbered::<11>("SELECT '$1'");
    }

    #[test]
    #[should_panic(expected = "not a placeholder")]
    fn numbered_refuses_named_parameters() {
        numbered::<12>("SELECT $name");
    }

    #[test]
    #[should_panic(expected = "cast")]
    fn numbered_refuses_casts() {
        numbered::<15>("SELECT $1::text");
    }

    /// Why SQLite gets `?N`: its `$N` is a name, numbered by first
    /// appearance, so `$2` before `$1` takes the first argument.
    #[test]
    fn dollar_numbers_are_no_positions_in_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let row = |sql: &str| -> (i64, i64) { conn.query_row(sql, [10, 20], |r| Ok((r.get(0)?, r.get(1)?))).unwrap() };
        assert_eq!(row("SELECT $2, $1"), (10, 20), "named: in order of appearance");
        assert_eq!(row(sqlite_text!("SELECT $2, $1")), (20, 10), "numbered, as PostgreSQL reads $2, $1");
    }

    /// Every SQLite text prepares on a migrated database (with double-quoted
    /// words as identifiers only, as the store opens it): its table and
    /// column names exist and its syntax is SQLite's.
    #[test]
    fn every_sqlite_text_prepares() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DQS_DML, false).unwrap();
        for step in crate::store::schema::SQLITE {
            conn.execute_batch(step).unwrap();
        }
        for (name, sql) in shared_and_paired() {
            conn.prepare(sql.sqlite).unwrap_or_else(|e| panic!("{name}: {e}\n{}", sql.sqlite));
        }
        let dqs = conn.prepare(r#"SELECT "no such column" FROM users"#).err().map(|e| e.to_string());
        assert!(dqs.is_some_and(|e| e.contains("no such column")), "a double-quoted word must be a name");
    }

    /// Every PostgreSQL text prepares on a migrated database (parameter
    /// types inferred, names resolved). Fails, never skips, without PostgreSQL.
    #[test]
    fn every_postgresql_text_prepares() {
        let pg = e2e::pg::Cluster::start().unwrap_or_else(|e| panic!("PostgreSQL cannot start: {e}"));
        drop(crate::store::postgres::PgStore::open(&pg.url()).unwrap());
        let mut client = crate::store::postgres::PgTarget::new(&pg.url()).unwrap().connect_blocking().unwrap();
        let all = shared_and_paired().into_iter().map(|(n, s)| (n, s.postgres)).chain(postgres_only());
        for (name, sql) in all {
            client.prepare(sql).unwrap_or_else(|e| panic!("{name}: {e:?}\n{sql}"));
        }
    }
}
