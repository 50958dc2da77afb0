//! `otpctl user recovery-codes|passwd|resync`: what stands beside a user's
//! secret (recovery codes, the internal account's password) and a HOTP
//! token's counter.
use crate::admin::ops::shared::{admin_audit, bad_user_name, err, finish, info, not_found, By};
use crate::core::policy::Policy;
use crate::core::service::Core;
use crate::store::model::{Store, StoreError};
use common::proto::{AdminErrorKind, AdminResponse, Method};

/// How far ahead of its counter a token is searched for by `user resync`.
pub const RESYNC_LOOKAHEAD: u64 = 1000;

/// `user recovery-codes`: ten new single-use codes for an enabled user,
/// replacing any old set; shown once, only their hashes stored.
pub async fn recovery_codes(core: &Core, by: &By, user: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    // Ten argon2id hashes: slow on purpose, so off the database thread.
    let (codes, salt, hashes) = match tokio::task::spawn_blocking(crate::core::recovery::new_set).await {
        Ok(Ok(set)) => set,
        _ => return err(AdminErrorKind::Internal, "generating recovery codes failed"),
    };
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(u) = st.user(&user)?.filter(|u| u.enabled) else {
                return Ok(not_found(&user));
            };
            st.set_recovery_codes(&u.name, &salt, &hashes)?;
            admin_audit(st, &policy.machine, &u.name, "recovery-codes (new set)", &by, now)?;
            let codes = codes.iter().map(|c| crate::core::recovery::display(c)).collect();
            Ok(AdminResponse::RecoveryCodes { user: u.name, codes })
        })
        .await;
    finish(r)
}

/// `user passwd`: the password of the otpd-internal account
/// (`auto_send = "internal"`), stored as an argon2id hash.
pub async fn passwd(core: &Core, by: &By, user: String, password: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    if password.chars().count() < 12 || password.len() > 1024 {
        return err(AdminErrorKind::InvalidInput, "the password must be 12 to 1024 characters");
    }
    let hash = match tokio::task::spawn_blocking(move || crate::core::passwd::hash(&password)).await {
        Ok(Ok(h)) => h,
        _ => return err(AdminErrorKind::Internal, "hashing the password failed"),
    };
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
            u.password_hash = Some(hash);
            u.updated_at = now;
            st.save_user(&u)?;
            admin_audit(st, &policy.machine, &user, "passwd", &by, now)?;
            Ok(AdminResponse::Done { message: format!("password for {user}'s internal account set") })
        })
        .await;
    finish(r)
}

/// `user resync`: two consecutive codes of a HOTP token found within
/// [`RESYNC_LOOKAHEAD`] after the counter move the counter past them.
pub async fn resync(core: &Core, by: &By, user: String, code1: String, code2: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    let (policy, by) = (core.policy.clone(), by.clone());
    finish(core.db.run(move |st| resync_in(st, &policy, &by, &user, &code1, &code2, now)).await)
}

fn resync_in(
    st: &mut dyn Store,
    policy: &Policy,
    by: &By,
    user: &str,
    code1: &str,
    code2: &str,
    now: i64,
) -> Result<AdminResponse, StoreError> {
    let Some(u) = st.user(user)?.filter(|u| u.enabled) else { return Ok(not_found(user)) };
    if u.method != Method::Hotp {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!("{user} uses {} codes; resync is for HOTP tokens (imported with `otpctl import oath`)", u.method),
        ));
    }
    let digits = u.digits.unwrap_or(6);
    let ok = |c: &str| c.len() == digits as usize && c.bytes().all(|b| b.is_ascii_digit());
    if !ok(code1) || !ok(code2) {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!("{user}'s token shows {digits}-digit codes; give two consecutive ones"),
        ));
    }
    let (Some(secret), Some(counter)) = (u.secret.as_deref().and_then(|s| policy.crypto.open(user, s)), u.hotp_counter)
    else {
        return Ok(err(AdminErrorKind::Internal, format!("{user}'s secret cannot be decrypted (wrong key file?)")));
    };
    let from = counter.max(0) as u64;
    let found = (from..from + RESYNC_LOOKAHEAD).find(|&c| {
        crate::core::totp::hotp(&secret, c, digits) == code1 && crate::core::totp::hotp(&secret, c + 1, digits) == code2
    });
    let Some(c) = found else {
        return Ok(err(
            AdminErrorKind::InvalidInput,
            format!(
                "no two consecutive codes {code1} {code2} within {RESYNC_LOOKAHEAD} after {user}'s counter {from}; \
                 nothing changed (press the button once between the two codes, nothing else)"
            ),
        ));
    };
    // Conditional, like a login: a login that moved the counter past
    // these codes meanwhile wins, and the resync changes nothing.
    if !st.consume_counter(user, c as i64 + 1)? {
        return Ok(err(AdminErrorKind::InvalidInput, format!("{user}'s counter moved past these codes meanwhile")));
    }
    admin_audit(st, &policy.machine, user, &format!("resync (counter {from} -> {})", c + 2), by, now)?;
    let u = st.user(user)?.unwrap_or(u);
    Ok(AdminResponse::User { user: info(&u, now) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use crate::store::model::UserRecord;

    const NOT_ENABLED: &str = "ut-ghost is not enabled for OTP; use `otpctl user enable ut-ghost --method totp`";
    const TOKEN: &[u8] = b"12345678901234567890";

    /// An activated HOTP user whose token's next counter is `counter`.
    async fn hotp_user(core: &Core, name: &str, counter: i64) -> UserRecord {
        let mut rec = UserRecord::new(name, None, T0 - 3600);
        rec.method = Method::Hotp;
        rec.secret = Some(core.policy.crypto.seal(name, TOKEN));
        rec.activated_at = Some(T0 - 3600);
        rec.hotp_counter = Some(counter);
        rec.digits = Some(6);
        save(core, rec.clone()).await;
        rec
    }

    fn code(counter: u64) -> String {
        crate::core::totp::hotp(TOKEN, counter, 6)
    }

    #[tokio::test]
    async fn recovery_codes_replace_the_set_and_are_shown_once() {
        let core = core();
        enrolled_user(&core, "ut-ada", None).await;
        on_db(&core, |st| st.set_recovery_codes("ut-ada", &[1; 16], &[vec![2; 32]])).await;
        let (name, codes) = match recovery_codes(&core, &ROOT, "ut-ada".into()).await {
            AdminResponse::RecoveryCodes { user, codes } => (user, codes),
            other => panic!("expected RecoveryCodes, got {other:?}"),
        };
        assert_eq!((name.as_str(), codes.len()), ("ut-ada", crate::core::recovery::COUNT));
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'), "{codes:?}");
        assert_eq!(on_db(&core, |st| st.recovery_codes_left("ut-ada")).await, 10, "the old set is gone");
        // A code shown is one stored (as its hash).
        let first = crate::core::recovery::normalize(&codes[0]).unwrap();
        let used = on_db(&core, move |st| {
            let salt = st.recovery_salt("ut-ada")?.unwrap();
            st.use_recovery_code("ut-ada", &crate::core::recovery::hash(&salt, &first).unwrap())
        })
        .await;
        assert!(used);
        assert_eq!(one_admin_row(&core, "ut-ada").await, ("recovery-codes (new set)".into(), "by uid 0".into()));
    }

    #[tokio::test]
    async fn recovery_codes_only_for_enabled_users() {
        let core = core();
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(recovery_codes(&core, &ROOT, "ut-ghost".into()).await), not_found);
        let mut off = enrolled_user(&core, "ut-ghost", None).await;
        off.enabled = false;
        save(&core, off).await;
        assert_eq!(refusal(recovery_codes(&core, &ROOT, "ut-ghost".into()).await), not_found);
        assert_eq!(on_db(&core, |st| st.recovery_codes_left("ut-ghost")).await, 0);
        let invalid = (AdminErrorKind::InvalidInput, "\"a:b\" is not a valid user name".to_string());
        assert_eq!(refusal(recovery_codes(&core, &ROOT, "a:b".into()).await), invalid);
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn passwd_stores_a_hash_of_the_password() {
        let core = core();
        enrolled_user(&core, "ut-ada", None).await;
        let message = done(passwd(&core, &ROOT, "ut-ada".into(), "correct horse battery".into()).await);
        assert_eq!(message, "password for ut-ada's internal account set");
        let u = user(&core, "ut-ada").await.unwrap();
        assert!(crate::core::passwd::verify(u.password_hash.as_deref(), "correct horse battery"));
        assert!(!crate::core::passwd::verify(u.password_hash.as_deref(), "correct horse batterY"));
        assert_eq!(u.updated_at, T0);
        assert_eq!(one_admin_row(&core, "ut-ada").await, ("passwd".into(), "by uid 0".into()));
    }

    #[tokio::test]
    async fn passwd_refuses_a_short_or_huge_password_and_an_unknown_user() {
        let core = core();
        enrolled_user(&core, "ut-ada", None).await;
        let bad = (AdminErrorKind::InvalidInput, "the password must be 12 to 1024 characters".to_string());
        for pw in ["eleven char".to_string(), "x".repeat(1025), "é".repeat(600)] {
            assert_eq!(refusal(passwd(&core, &ROOT, "ut-ada".into(), pw).await), bad);
        }
        assert_eq!(user(&core, "ut-ada").await.unwrap().password_hash, None);
        // Twelve characters are enough, whatever their bytes.
        done(passwd(&core, &ROOT, "ut-ada".into(), "é".repeat(12)).await);
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(passwd(&core, &ROOT, "ut-ghost".into(), "long enough password".into()).await), not_found);
        assert_eq!(all_audit(&core).await.len(), 1);
    }

    #[tokio::test]
    async fn resync_moves_the_counter_past_two_consecutive_codes() {
        let core = core();
        hotp_user(&core, "ut-hank", 10).await;
        let shown = match resync(&core, &ROOT, "ut-hank".into(), code(510), code(511)).await {
            AdminResponse::User { user } => user,
            other => panic!("expected User, got {other:?}"),
        };
        assert_eq!(shown.hotp_counter, Some(512));
        assert_eq!(user(&core, "ut-hank").await.unwrap().hotp_counter, Some(512));
        assert_eq!(one_admin_row(&core, "ut-hank").await, ("resync (counter 10 -> 512)".into(), "by uid 0".into()));
    }

    #[tokio::test]
    async fn resync_refuses_what_it_cannot_match_and_changes_nothing() {
        let core = core();
        let hank = hotp_user(&core, "ut-hank", 10).await;
        enrolled_user(&core, "ut-tess", None).await;
        let invalid = |m: &str| (AdminErrorKind::InvalidInput, m.to_string());
        let far = 10 + RESYNC_LOOKAHEAD;
        let cases = [
            (
                "ut-tess",
                code(20),
                code(21),
                invalid("ut-tess uses totp codes; resync is for HOTP tokens (imported with `otpctl import oath`)"),
            ),
            (
                "ut-hank",
                "12345".into(),
                code(21),
                invalid("ut-hank's token shows 6-digit codes; give two consecutive ones"),
            ),
            (
                "ut-hank",
                code(20),
                "12345a".into(),
                invalid("ut-hank's token shows 6-digit codes; give two consecutive ones"),
            ),
            (
                "ut-hank",
                code(far),
                code(far + 1),
                invalid(&format!(
                    "no two consecutive codes {} {} within 1000 after ut-hank's counter 10; nothing changed \
                     (press the button once between the two codes, nothing else)",
                    code(far),
                    code(far + 1)
                )),
            ),
            ("ut-ghost", code(20), code(21), (AdminErrorKind::NotFound, NOT_ENABLED.to_string())),
        ];
        for (name, c1, c2, expected) in cases {
            assert_eq!(refusal(resync(&core, &ROOT, name.into(), c1, c2).await), expected, "{name}");
        }
        assert_eq!(user(&core, "ut-hank").await.unwrap(), hank);
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn resync_of_a_secret_that_cannot_be_opened_is_an_internal_error() {
        let core = core();
        let mut hank = hotp_user(&core, "ut-hank", 10).await;
        hank.secret = Some(vec![1, 2, 3]);
        save(&core, hank).await;
        let (kind, message) = refusal(resync(&core, &ROOT, "ut-hank".into(), code(20), code(21)).await);
        assert_eq!(kind, AdminErrorKind::Internal);
        assert_eq!(message, "ut-hank's secret cannot be decrypted (wrong key file?)");
    }
}
