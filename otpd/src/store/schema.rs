//! The schema, side by side: one migration list per backend, in the same
//! order, each step written once per dialect. A step that is the same text
//! in both is still listed in both (SQLite counts steps in `PRAGMA
//! user_version`, PostgreSQL in `otpd_schema.version`, and neither list may
//! ever be reordered). `postgres::tests::the_sqlite_and_postgresql_schemas_agree`
//! migrates an empty database of each and fails on any drift.

/// Schema migrations; `PRAGMA user_version` records how many have run.
pub const SQLITE: &[&str] = &[
    r#"
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
"#,
    r#"
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN last_method TEXT;
CREATE TABLE email_codes (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL,
    machine    TEXT NOT NULL,
    address    TEXT NOT NULL,
    code_hash  BLOB NOT NULL,
    code_enc   BLOB,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    origin     TEXT NOT NULL,
    emergency  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX email_codes_by_user ON email_codes (user, machine, created_at);
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    code_id         INTEGER NOT NULL REFERENCES email_codes (id),
    to_addr         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    sent_at         INTEGER,
    last_error      TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox (sent_at, next_attempt_at);
CREATE INDEX outbox_by_addr ON outbox (to_addr, created_at);
CREATE INDEX outbox_by_time ON outbox (created_at);
CREATE TABLE emergency_requests (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL,
    machine    TEXT NOT NULL,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    decided_at INTEGER,
    decided_by INTEGER
) STRICT;
CREATE TABLE sessions (
    id        INTEGER PRIMARY KEY,
    user      TEXT NOT NULL,
    email     TEXT,
    machine   TEXT NOT NULL,
    service   TEXT NOT NULL,
    rhost     TEXT,
    tty       TEXT,
    pid       INTEGER NOT NULL,
    opened_at INTEGER NOT NULL,
    closed_at INTEGER
) STRICT;
"#,
    // Users keyed by name in one B-tree (no rowid plus separate index): a
    // login reads one tree instead of two, which matters when 100,000
    // users do not fit in the page cache.
    r#"
CREATE TABLE users_by_name (
    name          TEXT PRIMARY KEY NOT NULL,
    uid           INTEGER,
    method        TEXT NOT NULL CHECK (method IN ('totp', 'email')),
    enabled       INTEGER NOT NULL,
    email         TEXT,
    secret        BLOB,
    activated_at  INTEGER,
    last_step     INTEGER,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER,
    last_login    INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    password_hash TEXT,
    last_method   TEXT
) STRICT, WITHOUT ROWID;
INSERT INTO users_by_name (name, uid, method, enabled, email, secret, activated_at, last_step, failures,
                           locked_until, last_login, created_at, updated_at, password_hash, last_method)
    SELECT name, uid, method, enabled, email, secret, activated_at, last_step, failures,
           locked_until, last_login, created_at, updated_at, password_hash, last_method FROM users;
DROP TABLE users;
ALTER TABLE users_by_name RENAME TO users;
"#,
    // Logins are decided on the account (uid), whatever spelling of its
    // name was typed.
    r#"
CREATE INDEX users_by_uid ON users (uid);
"#,
    // Escalating lockout: locks in a row, failures since the last login, and
    // the lock only an admin lifts. A user locked under the old scheme has
    // had one lock since the last success (a success cleared locked_until).
    r#"
ALTER TABLE users ADD COLUMN lock_periods INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN failures_since_login INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN admin_locked_at INTEGER;
UPDATE users SET failures_since_login = failures,
                 lock_periods = CASE WHEN locked_until IS NULL THEN 0 ELSE 1 END;
"#,
    // The fleet: hosts known by their certificate, the CA that issues them,
    // and the audit log read per host.
    r#"
CREATE TABLE hosts (
    name        TEXT PRIMARY KEY NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'admin')),
    fingerprint BLOB NOT NULL,
    added_at    INTEGER NOT NULL,
    revoked_at  INTEGER,
    last_seen   INTEGER
) STRICT;
CREATE UNIQUE INDEX hosts_by_fingerprint ON hosts (fingerprint);
CREATE TABLE fleet_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL
) STRICT;
CREATE INDEX audit_by_machine_time ON audit (machine, time);
"#,
    // Fleet hosts look accounts up by name ignoring case (see
    // `Store::enabled_user_nocase`).
    r#"
CREATE INDEX users_by_lower_name ON users (lower(name));
"#,
    // HOTP users (RFC 4226 tokens imported from pam_oath): the method's
    // CHECK changes, which SQLite can only do by rebuilding the table.
    r#"
CREATE TABLE users_new (
    name                 TEXT PRIMARY KEY NOT NULL,
    uid                  INTEGER,
    method               TEXT NOT NULL CHECK (method IN ('totp', 'email', 'hotp')),
    enabled              INTEGER NOT NULL,
    email                TEXT,
    secret               BLOB,
    activated_at         INTEGER,
    last_step            INTEGER,
    failures             INTEGER NOT NULL DEFAULT 0,
    locked_until         INTEGER,
    last_login           INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    password_hash        TEXT,
    last_method          TEXT,
    lock_periods         INTEGER NOT NULL DEFAULT 0,
    failures_since_login INTEGER NOT NULL DEFAULT 0,
    admin_locked_at      INTEGER,
    hotp_counter         INTEGER,
    digits               INTEGER
) STRICT, WITHOUT ROWID;
INSERT INTO users_new (name, uid, method, enabled, email, secret, activated_at, last_step, failures,
                       locked_until, last_login, created_at, updated_at, password_hash, last_method,
                       lock_periods, failures_since_login, admin_locked_at)
    SELECT name, uid, method, enabled, email, secret, activated_at, last_step, failures,
           locked_until, last_login, created_at, updated_at, password_hash, last_method,
           lock_periods, failures_since_login, admin_locked_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;
CREATE INDEX users_by_uid ON users (uid);
CREATE INDEX users_by_lower_name ON users (lower(name));
"#,
    // Recovery codes: argon2id hashes, one salt per user for the whole set
    // (repeated in each row), deleted when used.
    r#"
CREATE TABLE recovery_codes (
    user TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (user, hash)
) STRICT, WITHOUT ROWID;
"#,
    // require_group: the group's members by name, refreshed on the admin
    // path and hourly (the login path never asks NSS).
    r#"
CREATE TABLE group_members (
    grp  TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (grp, name)
) STRICT, WITHOUT ROWID;
"#,
    // Fleet: the address each host's last link came from (check 39), and
    // the addresses a server keeps room for after a restart (check 36).
    r#"
ALTER TABLE hosts ADD COLUMN last_addr TEXT;
"#,
    // Messages looked up by their code (re-sending, marking a used code's
    // mail done): PostgreSQL has had this index from the start; SQLite
    // lacked it until the schema comparison test found the drift.
    r#"
CREATE INDEX outbox_by_code ON outbox (code_id);
"#,
    // The console's audit pages filtered by result ("lockout") walk this
    // rather than the whole table. Names in byte order are the primary key
    // already; PostgreSQL needs users_by_name_c for that, and the two
    // schemas list the same indexes.
    r#"
CREATE INDEX audit_by_result_time ON audit (result, time);
CREATE INDEX users_by_name_c ON users (name);
"#,
    // Clock drift: what the last refused code outside the TOTP window
    // showed of the authenticator's clock, and such refusals in a row.
    r#"
ALTER TABLE users ADD COLUMN clock_drift_secs INTEGER;
ALTER TABLE users ADD COLUMN clock_drift_at INTEGER;
ALTER TABLE users ADD COLUMN clock_drift_refusals INTEGER NOT NULL DEFAULT 0;
"#,
    // Refusals an agent spooled while no server answered, written when one
    // did (crate::fleet::spool): `received_at` says when (NULL on every
    // other row), and one host's `spool_id` is written once, however often
    // the agent resends it (an acknowledgement lost on the way).
    r#"
ALTER TABLE audit ADD COLUMN received_at INTEGER;
ALTER TABLE audit ADD COLUMN spool_id TEXT;
CREATE UNIQUE INDEX audit_spooled_once ON audit (machine, spool_id) WHERE spool_id IS NOT NULL;
"#,
    // Fleet: host certificates that renew themselves. Each host's expiry
    // and issuing CA, its last renewal, and the certificate a renewal
    // replaced, accepted until the new one is first presented.
    r#"
ALTER TABLE hosts ADD COLUMN expires_at INTEGER;
ALTER TABLE hosts ADD COLUMN ca BLOB;
ALTER TABLE hosts ADD COLUMN renewed_at INTEGER;
ALTER TABLE hosts ADD COLUMN prev_fingerprint BLOB;
ALTER TABLE hosts ADD COLUMN prev_until INTEGER;
CREATE UNIQUE INDEX hosts_by_prev_fingerprint ON hosts (prev_fingerprint);
"#,
    // Fleet CA rotation (`otpctl ca rotate|retire`): the CAs in use, oldest
    // first; the one CA so far becomes the first. At most two at a time.
    r#"
CREATE TABLE fleet_cas (
    id         INTEGER PRIMARY KEY NOT NULL,
    cert_pem   TEXT NOT NULL,
    key_sealed BLOB NOT NULL,
    added_at   INTEGER NOT NULL
) STRICT;
INSERT INTO fleet_cas (id, cert_pem, key_sealed, added_at) SELECT 1, cert_pem, key_sealed, 0 FROM fleet_ca;
DROP TABLE fleet_ca;
"#,
];

/// Schema migrations; `otpd_schema.version` records how many have run.
pub const POSTGRES: &[&str] = &[
    r#"
CREATE TABLE users (
    name                 TEXT PRIMARY KEY,
    uid                  BIGINT,
    method               TEXT NOT NULL CHECK (method IN ('totp', 'email')),
    enabled              BOOLEAN NOT NULL,
    email                TEXT,
    secret               BYTEA,
    activated_at         BIGINT,
    last_step            BIGINT,
    failures             BIGINT NOT NULL DEFAULT 0,
    locked_until         BIGINT,
    last_login           BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    password_hash        TEXT,
    last_method          TEXT,
    lock_periods         BIGINT NOT NULL DEFAULT 0,
    failures_since_login BIGINT NOT NULL DEFAULT 0,
    admin_locked_at      BIGINT
);
CREATE INDEX users_by_uid ON users (uid);
CREATE TABLE audit (
    id      BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    time    BIGINT NOT NULL,
    "user"  TEXT NOT NULL,
    service TEXT NOT NULL,
    rhost   TEXT,
    tty     TEXT,
    machine TEXT NOT NULL,
    method  TEXT NOT NULL,
    result  TEXT NOT NULL,
    reason  TEXT NOT NULL
);
CREATE INDEX audit_by_user_time ON audit ("user", time);
CREATE INDEX audit_by_time ON audit (time);
CREATE INDEX audit_by_machine_time ON audit (machine, time);
CREATE TABLE email_codes (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "user"     TEXT NOT NULL,
    machine    TEXT NOT NULL,
    address    TEXT NOT NULL,
    code_hash  BYTEA NOT NULL,
    code_enc   BYTEA,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    origin     TEXT NOT NULL,
    emergency  BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX email_codes_by_user ON email_codes ("user", machine, created_at);
CREATE TABLE outbox (
    id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    code_id         BIGINT NOT NULL REFERENCES email_codes (id),
    to_addr         TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    sent_at         BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (sent_at, next_attempt_at);
CREATE INDEX outbox_by_addr ON outbox (to_addr, created_at);
CREATE INDEX outbox_by_time ON outbox (created_at);
CREATE INDEX outbox_by_code ON outbox (code_id);
CREATE TABLE emergency_requests (
    id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "user"     TEXT NOT NULL,
    machine    TEXT NOT NULL,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    decided_at BIGINT,
    decided_by BIGINT
);
CREATE TABLE sessions (
    id        BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    "user"    TEXT NOT NULL,
    email     TEXT,
    machine   TEXT NOT NULL,
    service   TEXT NOT NULL,
    rhost     TEXT,
    tty       TEXT,
    pid       BIGINT NOT NULL,
    opened_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE TABLE hosts (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'admin')),
    fingerprint BYTEA NOT NULL UNIQUE,
    added_at    BIGINT NOT NULL,
    revoked_at  BIGINT,
    last_seen   BIGINT
);
CREATE TABLE fleet_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_sealed BYTEA NOT NULL
);
"#,
    r#"
CREATE INDEX users_by_lower_name ON users (lower(name));
"#,
    // HOTP users (RFC 4226 tokens imported from pam_oath).
    r#"
ALTER TABLE users DROP CONSTRAINT users_method_check;
ALTER TABLE users ADD CONSTRAINT users_method_check CHECK (method IN ('totp', 'email', 'hotp'));
ALTER TABLE users ADD COLUMN hotp_counter BIGINT;
ALTER TABLE users ADD COLUMN digits BIGINT;
"#,
    // Recovery codes: argon2id hashes, one salt per user for the whole set
    // (repeated in each row), deleted when used.
    r#"
CREATE TABLE recovery_codes (
    "user" TEXT NOT NULL,
    salt   BYTEA NOT NULL,
    hash   BYTEA NOT NULL,
    PRIMARY KEY ("user", hash)
);
"#,
    // require_group: the group's members by name, refreshed on the admin
    // path and hourly (the login path never asks NSS).
    r#"
CREATE TABLE group_members (
    grp  TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (grp, name)
);
"#,
    // Fleet: the address each host's last link came from (check 39), and
    // the addresses a server keeps room for after a restart (check 36).
    r#"
ALTER TABLE hosts ADD COLUMN last_addr TEXT;
"#,
    // The console's audit pages filtered by result; its users pages in
    // the byte order both backends list names in.
    r#"
CREATE INDEX audit_by_result_time ON audit (result, time);
CREATE INDEX users_by_name_c ON users (name COLLATE "C");
"#,
    // Clock drift: what the last refused code outside the TOTP window
    // showed of the authenticator's clock, and such refusals in a row.
    r#"
ALTER TABLE users ADD COLUMN clock_drift_secs BIGINT;
ALTER TABLE users ADD COLUMN clock_drift_at BIGINT;
ALTER TABLE users ADD COLUMN clock_drift_refusals BIGINT NOT NULL DEFAULT 0;
"#,
    // Refusals an agent spooled while no server answered, written when one
    // did (crate::fleet::spool): `received_at` says when (NULL on every
    // other row), and one host's `spool_id` is written once, however often
    // the agent resends it (an acknowledgement lost on the way).
    r#"
ALTER TABLE audit ADD COLUMN received_at BIGINT;
ALTER TABLE audit ADD COLUMN spool_id TEXT;
CREATE UNIQUE INDEX audit_spooled_once ON audit (machine, spool_id) WHERE spool_id IS NOT NULL;
"#,
    // Fleet: host certificates that renew themselves (see the SQLite step).
    r#"
ALTER TABLE hosts ADD COLUMN expires_at BIGINT;
ALTER TABLE hosts ADD COLUMN ca BYTEA;
ALTER TABLE hosts ADD COLUMN renewed_at BIGINT;
ALTER TABLE hosts ADD COLUMN prev_fingerprint BYTEA;
ALTER TABLE hosts ADD COLUMN prev_until BIGINT;
CREATE UNIQUE INDEX hosts_by_prev_fingerprint ON hosts (prev_fingerprint);
"#,
    // Fleet CA rotation (see the SQLite step).
    r#"
CREATE TABLE fleet_cas (
    id         BIGINT PRIMARY KEY,
    cert_pem   TEXT NOT NULL,
    key_sealed BYTEA NOT NULL,
    added_at   BIGINT NOT NULL
);
INSERT INTO fleet_cas (id, cert_pem, key_sealed, added_at) SELECT 1, cert_pem, key_sealed, 0 FROM fleet_ca;
DROP TABLE fleet_ca;
"#,
];
