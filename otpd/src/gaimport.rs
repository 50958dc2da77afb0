//! `otpctl import google-authenticator`: accounts read from
//! `~/.google_authenticator` files (by otpctl, see [`crate::gauth`]) become
//! activated otpd users with the same secret, in ONE transaction.
//!
//! Per account: absent or disabled → imported (activated now, the file's
//! last used step kept, its scratch codes as recovery codes); enabled with
//! the same secret → unchanged (only a later used step is taken over), so
//! running the import twice changes nothing; enabled with another secret,
//! or another enabled record for the same uid → skipped. Scratch codes are
//! 8 digits: at the prompt an 8-digit answer is tried as a TOTP code (if
//! otpd's codes have 8 digits) and as an emailed code first, and only then
//! as a recovery code (see [`crate::auth::check_answer_with`]).
use crate::auth::{self, Policy};
use crate::store::{Store, StoreError, UserRecord};
use common::config::Algorithm;
use common::proto::{ImportAccount, ImportResult, Method};

/// An account with its scratch codes hashed (off the database thread).
pub struct Prepared {
    pub account: ImportAccount,
    pub secret: Vec<u8>,
    pub salt: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
}

fn result(user: &str, outcome: &str, detail: impl Into<String>) -> ImportResult {
    ImportResult { user: user.into(), outcome: outcome.into(), detail: detail.into() }
}

/// Checks an account against what otpd can verify; on success hashes its
/// scratch codes (slow: call off the database thread).
pub fn prepare(p: &Policy, a: ImportAccount) -> Result<Prepared, ImportResult> {
    let skip = |why: String| result(&a.user, "skipped", why);
    if !auth::valid_user_name(&a.user) {
        return Err(skip("not a valid user name".into()));
    }
    if p.totp.digits != 6 || p.totp.algorithm != Algorithm::SHA1 {
        return Err(skip(format!(
            "google-authenticator codes are 6-digit SHA1; otpd is set to {} digits {:?} ([totp])",
            p.totp.digits, p.totp.algorithm
        )));
    }
    if u64::from(a.step_size) != p.totp.period {
        return Err(skip(format!("STEP_SIZE {} differs from otpd's totp.period {}", a.step_size, p.totp.period)));
    }
    let secret = data_encoding::BASE32_NOPAD
        .decode(a.secret_b32.as_bytes())
        .map_err(|_| skip("the secret is not base32".into()))?;
    if secret.len() < 10 || secret.len() > 128 {
        return Err(skip("the secret has an unusable length".into()));
    }
    if a.scratch_codes.len() > 64 || !a.scratch_codes.iter().all(|c| crate::recovery::scratch_shape(c).is_some()) {
        return Err(skip("scratch codes must be 8 digits (at most 64)".into()));
    }
    let salt = crate::recovery::new_salt();
    let hashes = a
        .scratch_codes
        .iter()
        .map(|c| crate::recovery::hash(&salt, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| skip(format!("hashing the scratch codes failed: {e}")))?;
    Ok(Prepared { account: a, secret, salt, hashes })
}

/// Imports every prepared account in the caller's transaction; `dry_run`
/// decides the same way and writes nothing.
pub fn import(
    st: &mut dyn Store,
    p: &Policy,
    accounts: Vec<Prepared>,
    dry_run: bool,
    by: &str,
    now: i64,
) -> Result<Vec<ImportResult>, StoreError> {
    let mut out = Vec::new();
    for a in accounts {
        let name = a.account.user.clone();
        let existing = st.user(&name)?;
        if let Some(e) = existing.as_ref().filter(|e| e.enabled) {
            let same = e.secret.as_deref().and_then(|s| p.crypto.open(&name, s)).is_some_and(|s| s == a.secret);
            if !same || e.method != Method::Totp {
                out.push(result(&name, "skipped", "already enabled in otpd with another secret; not overwritten"));
                continue;
            }
            let newer = a.account.last_step.is_some_and(|s| e.last_step.is_none_or(|l| s > l));
            if newer && !dry_run {
                if let Some(step) = a.account.last_step {
                    st.consume_step(&name, step)?;
                }
            }
            out.push(result(&name, "unchanged", "already imported with this secret"));
            continue;
        }
        if let Some(uid) = a.account.uid {
            if let Some(other) = st.user_by_uid(uid)?.filter(|o| o.enabled && o.name != name) {
                let why = format!("the same account (uid {uid}) is already enabled as {}", other.name);
                out.push(result(&name, "skipped", why));
                continue;
            }
        }
        let detail = format!(
            "TOTP secret{}{}",
            match a.account.last_step {
                Some(s) => format!(", last used step {s}"),
                None => String::new(),
            },
            match a.hashes.len() {
                0 => String::new(),
                n => format!(", {n} scratch code(s) as recovery codes"),
            }
        );
        if dry_run {
            out.push(result(&name, "would import", detail));
            continue;
        }
        let base = existing.unwrap_or_else(|| UserRecord::new(&name, None, now));
        let mut rec = UserRecord {
            uid: a.account.uid.or(base.uid),
            method: Method::Totp,
            enabled: true,
            secret: Some(p.crypto.seal(&name, &a.secret)),
            activated_at: Some(now),
            last_step: a.account.last_step,
            updated_at: now,
            ..base
        };
        rec.clear_lockout();
        st.save_user(&rec)?;
        st.set_recovery_codes(&name, &a.salt, &a.hashes)?;
        let e = crate::store::NewAudit {
            time: now,
            user: name.clone(),
            service: "otpctl".into(),
            machine: p.machine.clone(),
            method: "admin".into(),
            result: "import (google-authenticator)".into(),
            reason: format!("by {by}; {detail}"),
            ..Default::default()
        };
        crate::syslog::audit(&e);
        st.add_audit(&e)?;
        out.push(result(&name, "imported", detail));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::totp::TotpParams;
    use common::config::{EmailConfig, LockoutConfig};

    fn policy() -> Policy {
        Policy {
            totp: TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 },
            lockout: LockoutConfig::default(),
            issuer: "test".into(),
            machine: "m1".into(),
            crypto: crate::crypto::SecretBox::from_key(&[3u8; 32]),
            email: EmailConfig::default(),
            hotp_window: 10,
            require_group: None,
        }
    }

    fn account(user: &str, secret: &str) -> ImportAccount {
        ImportAccount {
            user: user.into(),
            uid: Some(2000),
            secret_b32: secret.into(),
            step_size: 30,
            last_step: Some(100),
            scratch_codes: vec!["12345678".into(), "87654321".into()],
        }
    }

    fn run(s: &mut SqliteStore, p: &Policy, accounts: Vec<ImportAccount>, dry_run: bool) -> Vec<String> {
        let ready = accounts.into_iter().map(|a| prepare(p, a).unwrap()).collect();
        import(s, p, ready, dry_run, "test", 50).unwrap().into_iter().map(|r| r.outcome).collect()
    }

    #[test]
    fn imports_once_keeps_the_step_and_refuses_what_it_cannot_verify() {
        let p = policy();
        let mut s = SqliteStore::in_memory().unwrap();
        let a = account("gina", "HNZC5YSDIE7NXRUMF7LXGYJWBA");
        assert_eq!(run(&mut s, &p, vec![a.clone()], true), ["would import"]);
        assert_eq!(s.user("gina").unwrap(), None, "a dry run writes nothing");
        assert_eq!(run(&mut s, &p, vec![a.clone()], false), ["imported"]);
        let u = s.user("gina").unwrap().unwrap();
        assert_eq!((u.enabled, u.activated_at, u.last_step, u.uid), (true, Some(50), Some(100), Some(2000)));
        assert_eq!(s.recovery_codes_left("gina").unwrap(), 2);
        let salt = s.recovery_salt("gina").unwrap().unwrap();
        assert!(s.use_recovery_code("gina", &crate::recovery::hash(&salt, "12345678").unwrap()).unwrap());
        // Again: unchanged, the used scratch code stays used; a later step is taken over.
        let later = ImportAccount { last_step: Some(120), ..a.clone() };
        assert_eq!(run(&mut s, &p, vec![later], false), ["unchanged"]);
        assert_eq!(s.recovery_codes_left("gina").unwrap(), 1);
        assert_eq!(s.user("gina").unwrap().unwrap().last_step, Some(120));
        // Another secret for an enabled user, or for the same uid: skipped.
        let other = account("gina", "TLJRHL2XNHILFMDTXWZSZD3FHQ");
        assert_eq!(run(&mut s, &p, vec![other], false), ["skipped"]);
        let twin = account("gina2", "TLJRHL2XNHILFMDTXWZSZD3FHQ");
        assert_eq!(run(&mut s, &p, vec![twin], false), ["skipped"]);
        // What otpd cannot verify is refused before the transaction.
        assert!(prepare(&p, ImportAccount { step_size: 60, ..a.clone() }).is_err());
        assert!(prepare(&p, ImportAccount { secret_b32: "!!".into(), ..a.clone() }).is_err());
        assert!(prepare(&p, ImportAccount { scratch_codes: vec!["1234".into()], ..a.clone() }).is_err());
        let p8 = Policy { totp: TotpParams { digits: 8, ..p.totp.clone() }, ..policy() };
        assert!(prepare(&p8, a).is_err());
    }
}
