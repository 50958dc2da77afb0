//! `otpctl import google-authenticator`: accounts read from
//! `~/.google_authenticator` files (by otpctl, see [`crate::import::gauth`]) become
//! activated otpd users with the same secret, in ONE transaction.
//!
//! Per account: absent or disabled → imported (activated now, the file's
//! last used step kept, its scratch codes as recovery codes); enabled with
//! the same secret → unchanged (only a later used step is taken over), so
//! running the import twice changes nothing; enabled with another secret,
//! or another enabled record for the same uid → skipped. Scratch codes are
//! 8 digits: at the prompt an 8-digit answer is tried as a TOTP code (if
//! otpd's codes have 8 digits) and as an emailed code first, and only then
//! as a recovery code (see [`crate::core::auth::check_answer_with`]).
use crate::core::policy::Policy;
use crate::store::model::{Store, StoreError, UserRecord};
use common::config::Algorithm;
use common::proto::{ImportAccount, ImportOutcome, ImportResult, Method};

/// An account with its scratch codes hashed (off the database thread).
pub struct Prepared {
    pub account: ImportAccount,
    pub method: Method,
    pub secret: Vec<u8>,
    pub salt: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    /// What of the file otpd does not carry over, for the report.
    pub notes: Vec<String>,
}

fn result(user: &str, outcome: ImportOutcome, detail: impl Into<String>) -> ImportResult {
    ImportResult { user: user.into(), outcome, detail: detail.into() }
}

/// Checks an account against what otpd can verify; on success hashes its
/// scratch codes with `hasher` (`None`: a dry run, nothing hashed). Slow:
/// call off the database thread, see [`prepare_all`].
pub fn prepare(
    p: &Policy,
    a: ImportAccount,
    hasher: Option<&mut crate::core::recovery::ScratchHasher>,
) -> Result<Prepared, ImportResult> {
    let skip = |why: String| result(&a.user, ImportOutcome::Skipped, why);
    if !crate::core::context::valid_user_name(&a.user) {
        return Err(skip("not a valid user name".into()));
    }
    let mut notes = Vec::new();
    let method = match a.hotp_counter {
        // pam_google_authenticator's HOTP codes are 6-digit SHA1 whatever
        // [totp] says: the record keeps its own digits.
        Some(c) if !(1..=crate::import::oath::MAX_COUNTER as i64).contains(&c) => {
            return Err(skip(format!("HOTP_COUNTER {c} is out of range")));
        }
        Some(_) => {
            // Its window is WINDOW_SIZE codes from the counter on; otpd's
            // is the counter and `[hotp] window` codes after it.
            if let Some(w) = a.window_size.filter(|w| w.saturating_sub(1) != p.hotp_window) {
                notes.push(format!(
                    "WINDOW_SIZE {w} not kept: otpd looks {} codes ahead ([hotp] window)",
                    p.hotp_window
                ));
            }
            Method::Hotp
        }
        None => {
            if p.totp.digits != 6 || p.totp.algorithm != Algorithm::SHA1 {
                return Err(skip(format!(
                    "google-authenticator codes are 6-digit SHA1; otpd is set to {} digits {:?} ([totp])",
                    p.totp.digits, p.totp.algorithm
                )));
            }
            if u64::from(a.step_size) != p.totp.period {
                return Err(skip(format!(
                    "STEP_SIZE {} differs from otpd's totp.period {}",
                    a.step_size, p.totp.period
                )));
            }
            // WINDOW_SIZE w accepts w steps around now; otpd 2 × skew + 1.
            if let Some(w) = a.window_size.filter(|w| *w != 2 * u32::from(p.totp.skew) + 1) {
                notes.push(format!("WINDOW_SIZE {w} not kept: otpd accepts ±{} steps ([totp] skew)", p.totp.skew));
            }
            Method::Totp
        }
    };
    if let Some((n, secs)) = a.rate_limit {
        notes.push(format!(
            "RATE_LIMIT {n} per {secs} s replaced by otpd's lockout ({} failures)",
            p.lockout.max_failures
        ));
    }
    let secret = data_encoding::BASE32_NOPAD
        .decode(a.secret_b32.as_bytes())
        .map_err(|_| skip("the secret is not base32".into()))?;
    if secret.len() < 10 || secret.len() > 128 {
        return Err(skip("the secret has an unusable length".into()));
    }
    if a.scratch_codes.len() > 64 || !a.scratch_codes.iter().all(|c| crate::core::recovery::scratch_shape(c).is_some())
    {
        return Err(skip("scratch codes must be 8 digits (at most 64)".into()));
    }
    let salt = crate::core::recovery::new_salt();
    let hashes = match hasher {
        None => Vec::new(),
        Some(h) => a
            .scratch_codes
            .iter()
            .map(|c| h.hash(&salt, c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| skip(format!("hashing the scratch codes failed: {e}")))?,
    };
    Ok(Prepared { account: a, method, secret, salt, hashes, notes })
}

/// Which of `names` are enabled here already: the import leaves them
/// unchanged (same secret) or skips them (another one), so their scratch
/// codes need no hashing.
pub fn already_enabled(st: &mut dyn Store, names: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut out = std::collections::HashSet::new();
    for name in names {
        if st.user(name)?.is_some_and(|u| u.enabled) {
            out.insert(name.clone());
        }
    }
    Ok(out)
}

/// [`prepare`] for every account, spread over the CPUs (500,000 scratch
/// codes for 100,000 files): results in the accounts' order. Accounts in
/// `enabled` (already enabled here) are checked but not hashed: the import
/// leaves them unchanged, or skips one that changed meanwhile.
pub fn prepare_all(
    p: &Policy,
    accounts: Vec<ImportAccount>,
    dry_run: bool,
    enabled: &std::collections::HashSet<String>,
) -> Vec<Result<Prepared, ImportResult>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 16);
    let per = accounts.len().div_ceil(threads).max(1);
    let mut chunks: Vec<Vec<ImportAccount>> = Vec::new();
    let mut rest = accounts.into_iter().peekable();
    while rest.peek().is_some() {
        chunks.push(rest.by_ref().take(per).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut hasher = match dry_run {
                        true => None,
                        false => Some(crate::core::recovery::ScratchHasher::new(p.crypto.scratch_key())),
                    };
                    chunk
                        .into_iter()
                        .map(|a| match hasher.as_mut() {
                            _ if enabled.contains(&a.user) => prepare(p, a, None),
                            None => prepare(p, a, None),
                            Some(Ok(h)) => prepare(p, a, Some(h)),
                            Some(Err(e)) => {
                                Err(result(&a.user, ImportOutcome::Skipped, format!("cannot hash scratch codes: {e}")))
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| Vec::new())).collect()
    })
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
            if !same || e.method != a.method {
                out.push(result(
                    &name,
                    ImportOutcome::Skipped,
                    "already enabled in otpd with another secret; not overwritten",
                ));
                continue;
            }
            // The old module may have seen logins since the last import:
            // take over a later step or counter (never lowered).
            if !dry_run {
                // Both are compare-and-set: a lower step or counter changes nothing.
                match (a.method, a.account.hotp_counter, a.account.last_step) {
                    // The counter before HOTP_COUNTER is the last one used.
                    (Method::Hotp, Some(next), _) => {
                        st.consume_counter(&name, next - 1)?;
                    }
                    (Method::Totp, _, Some(step)) => {
                        st.consume_step(&name, step)?;
                    }
                    _ => {}
                }
            }
            out.push(result(&name, ImportOutcome::Unchanged, "already imported with this secret"));
            continue;
        }
        if let Some(uid) = a.account.uid {
            if let Some(other) = st.user_by_uid(uid)?.filter(|o| o.enabled && o.name != name) {
                let why = format!("the same account (uid {uid}) is already enabled as {}", other.name);
                out.push(result(&name, ImportOutcome::Skipped, why));
                continue;
            }
        }
        let mut parts = vec![match (a.method, a.account.hotp_counter, a.account.last_step) {
            (Method::Hotp, Some(c), _) => format!("HOTP secret, next counter {c}"),
            (_, _, Some(s)) => format!("TOTP secret, last used step {s}"),
            _ => "TOTP secret".to_string(),
        }];
        match a.account.scratch_codes.len() {
            0 => {}
            n => parts.push(format!("{n} scratch code(s) as recovery codes")),
        }
        parts.extend(a.notes.iter().cloned());
        let detail = parts.join(", ");
        if dry_run {
            out.push(result(&name, ImportOutcome::WouldImport, detail));
            continue;
        }
        // Enabled when the request came (so not hashed), disabled since.
        if a.hashes.len() != a.account.scratch_codes.len() {
            out.push(result(&name, ImportOutcome::Skipped, "changed in otpd during the import; run the import again"));
            continue;
        }
        let base = existing.unwrap_or_else(|| UserRecord::new(&name, None, now));
        let hotp = a.method == Method::Hotp;
        let mut rec = UserRecord {
            uid: a.account.uid.or(base.uid),
            method: a.method,
            enabled: true,
            secret: Some(p.crypto.seal(&name, &a.secret)),
            activated_at: Some(now),
            last_step: if hotp { None } else { a.account.last_step },
            hotp_counter: if hotp { a.account.hotp_counter } else { None },
            digits: hotp.then_some(6),
            updated_at: now,
            ..base
        };
        rec.clear_lockout();
        st.save_user(&rec)?;
        st.set_recovery_codes(&name, &a.salt, &a.hashes)?;
        let e = crate::store::model::NewAudit {
            time: now,
            user: name.clone(),
            service: "otpctl".into(),
            machine: p.machine.clone(),
            method: crate::store::model::AuditMethod::Admin,
            result: crate::store::model::AuditResult::Action("import (google-authenticator)".into()),
            reason: format!("by {by}; {detail}"),
            ..Default::default()
        };
        crate::core::syslog::audit(&e);
        st.add_audit(&e)?;
        out.push(result(&name, ImportOutcome::Imported, detail));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::totp::TotpParams;
    use crate::store::model::PlanReads;
    use crate::store::sqlite::SqliteStore;
    use common::config::{EmailConfig, LockoutConfig};

    fn policy() -> Policy {
        Policy {
            totp: TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 },
            lockout: LockoutConfig::default(),
            issuer: "test".into(),
            machine: "m1".into(),
            crypto: crate::core::crypto::SecretBox::from_key(&[3u8; 32]),
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
            hotp_counter: None,
            window_size: Some(3),
            rate_limit: None,
        }
    }

    fn run(s: &mut SqliteStore, p: &Policy, accounts: Vec<ImportAccount>, dry_run: bool) -> Vec<String> {
        let done = already_enabled(s, &accounts.iter().map(|a| a.user.clone()).collect::<Vec<_>>()).unwrap();
        let ready = prepare_all(p, accounts, dry_run, &done).into_iter().map(|r| r.unwrap()).collect();
        import(s, p, ready, dry_run, "test", 50).unwrap().into_iter().map(|r| r.outcome.as_str().to_string()).collect()
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
        let key = p.crypto.scratch_key();
        assert!(s
            .use_recovery_code("gina", &crate::core::recovery::hash_scratch(key, &salt, "12345678").unwrap())
            .unwrap());
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
        // Enabled when the request came (its codes not hashed), disabled
        // before the transaction: skipped, never imported without its codes.
        let gone = std::collections::HashSet::from(["nora".to_string()]);
        let nora = prepare_all(&p, vec![account("nora", "HNZC5YSDIE7NXRUMF7LXGYJWBA")], false, &gone);
        let r = import(&mut s, &p, nora.into_iter().map(|r| r.unwrap()).collect(), false, "test", 60).unwrap();
        assert_eq!((r[0].outcome, s.user("nora").unwrap()), (ImportOutcome::Skipped, None), "{}", r[0].detail);
        // What otpd cannot verify is refused before the transaction.
        assert!(prepare(&p, ImportAccount { step_size: 60, ..a.clone() }, None).is_err());
        assert!(prepare(&p, ImportAccount { secret_b32: "!!".into(), ..a.clone() }, None).is_err());
        assert!(prepare(&p, ImportAccount { scratch_codes: vec!["1234".into()], ..a.clone() }, None).is_err());
        let p8 = Policy { totp: TotpParams { digits: 8, ..p.totp.clone() }, ..policy() };
        assert!(prepare(&p8, a.clone(), None).is_err());
    }

    #[test]
    fn hotp_files_keep_their_counter_and_differences_are_reported() {
        let p = policy();
        let mut s = SqliteStore::in_memory().unwrap();
        let h = ImportAccount {
            hotp_counter: Some(4),
            window_size: Some(3),
            rate_limit: Some((3, 30)),
            last_step: None,
            ..account("hal", "TLJRHL2XNHILFMDTXWZSZD3FHQ")
        };
        let dry = prepare(&p, h.clone(), None).unwrap();
        assert!(dry.hashes.is_empty(), "a dry run hashes nothing");
        let none = std::collections::HashSet::new();
        let ready = prepare_all(&p, vec![h.clone()], false, &none).into_iter().map(|r| r.unwrap()).collect();
        let r = import(&mut s, &p, ready, false, "test", 50).unwrap();
        assert_eq!(r[0].outcome, ImportOutcome::Imported);
        assert!(r[0].detail.contains("HOTP secret, next counter 4"), "{}", r[0].detail);
        assert!(r[0].detail.contains("WINDOW_SIZE 3 not kept") && r[0].detail.contains("RATE_LIMIT 3 per 30 s"));
        let u = s.user("hal").unwrap().unwrap();
        assert_eq!((u.method, u.hotp_counter, u.digits, u.last_step), (Method::Hotp, Some(4), Some(6), None));
        // Used further under the old module: the counter moves up, never down.
        for (c, want) in [(9, 9), (5, 9)] {
            let again = vec![prepare(&p, ImportAccount { hotp_counter: Some(c), ..h.clone() }, None).unwrap()];
            assert_eq!(import(&mut s, &p, again, false, "test", 60).unwrap()[0].outcome, ImportOutcome::Unchanged);
            assert_eq!(s.user("hal").unwrap().unwrap().hotp_counter, Some(want));
        }
        // The same secret as TOTP is another enrollment: not overwritten.
        let totp = vec![prepare(&p, ImportAccount { hotp_counter: None, ..h.clone() }, None).unwrap()];
        assert_eq!(import(&mut s, &p, totp, false, "test", 70).unwrap()[0].outcome, ImportOutcome::Skipped);
        assert!(prepare(&p, ImportAccount { hotp_counter: Some(0), ..h }, None).is_err());
        // TOTP with the default window (3 = ±1 step): nothing to report.
        let t = prepare(&p, account("tom", "HNZC5YSDIE7NXRUMF7LXGYJWBA"), None).unwrap();
        assert!(t.notes.is_empty(), "{:?}", t.notes);
    }
}
