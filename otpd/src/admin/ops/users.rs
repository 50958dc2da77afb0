//! `otpctl user enable|reset|disable|unlock|show|list`: one user's record.
use crate::admin::ops::shared::{admin_audit, bad_user_name, err, finish, info, not_found, By};
use crate::core::access::account_uid;
use crate::core::auth::new_enrollment;
use crate::core::policy::Policy;
use crate::core::service::Core;
use crate::store::model::UserRecord;
use common::proto::{AdminErrorKind, AdminResponse, Method};

/// `user enable`: a new secret (TOTP) or none (email), not yet activated.
/// HOTP users come from `import oath`; an enabled user is not enabled twice,
/// nor is a second name for an enabled account.
pub async fn enable(core: &Core, by: &By, user: String, method: Method, email: Option<String>) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    if method == Method::Hotp {
        return err(
            AdminErrorKind::InvalidInput,
            "HOTP users come with their token: `otpctl import oath FILE` (a token's secret and counter)",
        );
    }
    let policy = core.policy.clone();
    let email = match email.as_deref().map(crate::core::email::validate_address).transpose() {
        Ok(e) => e,
        Err(why) => return err(AdminErrorKind::InvalidInput, format!("--email: {why}")),
    };
    if method == Method::Email
        && email.is_none()
        && crate::core::email::directory_address(&policy.email.directory, &user).is_none()
    {
        return err(
            AdminErrorKind::InvalidInput,
            format!("no address for {user}: give --email ADDR or add it to the directory ({})", policy.email.directory),
        );
    }
    let uid = account_uid(&user);
    let by = by.clone();
    let r = core
        .db
        .run(move |st| {
            let existing = st.user(&user)?;
            // Logins are decided on the account: a second name for
            // an enabled account would be a second secret for it.
            if let Some(other) = uid.map(|u| st.user_by_uid(u)).transpose()?.flatten() {
                if other.enabled && other.name != user {
                    return Ok(err(
                        AdminErrorKind::InvalidInput,
                        format!(
                            "{user} is the same account as {} (uid {}), which is already enabled",
                            other.name,
                            uid.unwrap_or_default()
                        ),
                    ));
                }
            }
            if let Some(e) = existing.as_ref().filter(|e| e.enabled) {
                return Ok(err(
                    AdminErrorKind::InvalidInput,
                    format!(
                        "{} is already enabled (method {}); use `otpctl user reset {}` for a new secret",
                        e.name, e.method, e.name
                    ),
                ));
            }
            let mut rec = new_enrollment(&policy, existing, &user, uid, now);
            if email.is_some() {
                rec.email = email;
            }
            if method == Method::Email {
                rec.method = Method::Email;
                rec.secret = None;
            }
            st.save_user(&rec)?;
            admin_audit(st, &policy.machine, &user, &format!("enable ({method})"), &by, now)?;
            Ok(enrolled(&policy, &rec, now))
        })
        .await;
    finish(r)
}

/// `user reset`: a new secret for an enabled user, to be activated again.
pub async fn reset(core: &Core, by: &By, user: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    let (policy, by) = (core.policy.clone(), by.clone());
    // A user enabled before the account existed gets its uid now.
    let uid = account_uid(&user);
    let r = core
        .db
        .run(move |st| {
            let Some(existing) = st.user(&user)?.filter(|u| u.enabled) else {
                return Ok(not_found(&user));
            };
            let rec = new_enrollment(&policy, Some(existing), &user, uid, now);
            st.save_user(&rec)?;
            admin_audit(st, &policy.machine, &user, "reset", &by, now)?;
            Ok(enrolled(&policy, &rec, now))
        })
        .await;
    changed(core, finish(r))
}

/// `user disable`: the secret, counter, lock and recovery codes erased; the
/// record (and its history) kept.
pub async fn disable(core: &Core, by: &By, user: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
            u.enabled = false;
            u.secret = None;
            u.activated_at = None;
            u.last_step = None;
            u.hotp_counter = None;
            // The lock guarded the erased secret; a disabled user is not "locked".
            u.clear_lockout();
            u.updated_at = now;
            st.save_user(&u)?;
            // Recovery codes stand in for the secret: erased with it.
            st.set_recovery_codes(&user, &[], &[])?;
            admin_audit(st, &policy.machine, &user, "disable", &by, now)?;
            Ok(AdminResponse::User { user: info(&u, now) })
        })
        .await;
    changed(core, finish(r))
}

/// After a reset or a disable that was made: whoever listens (the console's
/// sessions) hears that the user's second factor changed.
fn changed(core: &Core, r: AdminResponse) -> AdminResponse {
    match &r {
        AdminResponse::Enrolled { user, .. } | AdminResponse::User { user } => {
            core.emit(crate::core::events::Event::SecondFactorChanged { user: user.name.clone() })
        }
        _ => {}
    }
    r
}

/// `user unlock`: any lock lifted, the escalation started over.
pub async fn unlock(core: &Core, by: &By, user: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core
        .db
        .run(move |st| {
            let Some(mut u) = st.user(&user)? else { return Ok(not_found(&user)) };
            u.unlock();
            u.updated_at = now;
            st.save_user(&u)?;
            admin_audit(st, &policy.machine, &user, "unlock", &by, now)?;
            Ok(AdminResponse::User { user: info(&u, now) })
        })
        .await;
    finish(r)
}

/// `user show`: the record, with how many recovery codes are left.
pub async fn show(core: &Core, user: String) -> AdminResponse {
    let now = core.clock.now();
    if let Some(refused) = bad_user_name(&user) {
        return refused;
    }
    let r = core
        .db
        .run(move |st| {
            let Some(u) = st.user(&user)? else { return Ok(not_found(&user)) };
            let mut shown = info(&u, now);
            shown.recovery_codes_left = Some(st.recovery_codes_left(&u.name)?);
            Ok(AdminResponse::User { user: shown })
        })
        .await;
    finish(r)
}

/// `user list`: every record, enabled or not.
/// Every user by name; or, with a `limit` (at most 1000), one page of those
/// whose name or address contains `search`, after the name `after`.
pub async fn list(core: &Core, search: Option<String>, after: Option<String>, limit: Option<u32>) -> AdminResponse {
    let now = core.clock.now();
    let search = search.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if search.as_ref().is_some_and(|s| s.len() > 256) || after.as_ref().is_some_and(|a| a.len() > 256) {
        return err(AdminErrorKind::InvalidInput, "search text too long (at most 256 bytes)");
    }
    let r = core
        .db
        .run(move |st| {
            let users = match (limit, &search, &after) {
                (None, None, None) => st.users()?,
                _ => st.users_page(search.as_deref(), after.as_deref(), limit.unwrap_or(100).clamp(1, 1000))?,
            };
            Ok(AdminResponse::Users { users: users.iter().map(|u| info(u, now)).collect() })
        })
        .await;
    finish(r)
}

/// The answer to `enable` and `reset`: the record and, for a TOTP secret,
/// its provisioning URI.
fn enrolled(policy: &Policy, rec: &UserRecord, now: i64) -> AdminResponse {
    let uri = rec
        .secret
        .as_deref()
        .and_then(|s| policy.crypto.open(&rec.name, s))
        .map(|secret| policy.totp.uri(&secret, &policy.issuer, &rec.name));
    AdminResponse::Enrolled { user: info(rec, now), otpauth_uri: uri }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use std::sync::Arc;

    const NOT_ENABLED: &str = "ut-ghost is not enabled for OTP; use `otpctl user enable ut-ghost --method totp`";

    fn enrolled_answer(resp: AdminResponse) -> (common::proto::UserInfo, Option<String>) {
        match resp {
            AdminResponse::Enrolled { user, otpauth_uri } => (user, otpauth_uri),
            other => panic!("expected Enrolled, got {other:?}"),
        }
    }

    fn user_answer(resp: AdminResponse) -> common::proto::UserInfo {
        match resp {
            AdminResponse::User { user } => user,
            other => panic!("expected User, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn enable_stores_a_new_totp_secret_and_answers_its_uri() {
        let core = core();
        let resp = enable(&core, &ROOT, "ut-ada".into(), Method::Totp, None).await;
        let (shown, uri) = enrolled_answer(resp);
        assert_eq!(
            (shown.name.as_str(), shown.method, shown.enabled, shown.activated),
            ("ut-ada", Method::Totp, true, false)
        );
        let uri = uri.unwrap();
        assert!(uri.starts_with("otpauth://totp/test:ut-ada?secret="), "{uri}");
        let u = user(&core, "ut-ada").await.unwrap();
        assert!(u.enabled && u.activated_at.is_none() && u.email.is_none());
        let secret = core.policy.crypto.open("ut-ada", u.secret.as_deref().unwrap()).unwrap();
        assert!(uri.contains(&data_encoding::BASE32_NOPAD.encode(&secret)), "the URI carries the stored secret");
        assert_eq!(one_admin_row(&core, "ut-ada").await, ("enable (totp)".into(), "by uid 0".into()));
    }

    #[tokio::test]
    async fn enable_for_email_stores_the_address_and_no_secret() {
        let core = core();
        let resp = enable(&core, &ROOT, "ut-erin".into(), Method::Email, Some("erin@example.org".into())).await;
        let (shown, uri) = enrolled_answer(resp);
        assert_eq!((shown.method, shown.email.as_deref(), uri), (Method::Email, Some("erin@example.org"), None));
        let u = user(&core, "ut-erin").await.unwrap();
        assert_eq!((u.method, u.secret, u.email.as_deref()), (Method::Email, None, Some("erin@example.org")));
        assert_eq!(one_admin_row(&core, "ut-erin").await.0, "enable (email)");
    }

    #[tokio::test]
    async fn enable_for_email_takes_the_address_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("emails");
        std::fs::write(&map, "ut-erin erin@example.org\n").unwrap();
        let mut parts = parts();
        Arc::get_mut(&mut parts.policy).unwrap().email.directory = format!("file:{}", map.display());
        let core = crate::core::service::Core::new(parts);
        let (shown, _) = enrolled_answer(enable(&core, &ROOT, "ut-erin".into(), Method::Email, None).await);
        // The directory is read at each login: the record keeps no copy.
        assert_eq!((shown.method, shown.email), (Method::Email, None));
        assert_eq!(user(&core, "ut-erin").await.unwrap().method, Method::Email);
        // Someone the directory does not know has no address.
        let (kind, message) = refusal(enable(&core, &ROOT, "ut-fred".into(), Method::Email, None).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert_eq!(
            message,
            format!("no address for ut-fred: give --email ADDR or add it to the directory (file:{})", map.display())
        );
        assert!(user(&core, "ut-fred").await.is_none());
    }

    #[tokio::test]
    async fn enable_refuses_bad_input_before_writing_anything() {
        let mut parts = parts();
        Arc::get_mut(&mut parts.policy).unwrap().email.directory = "none".into();
        let core = crate::core::service::Core::new(parts);
        let cases = [
            ("a b", Method::Hotp, None, "\"a b\" is not a valid user name"),
            (
                "ut-hank",
                Method::Hotp,
                None,
                "HOTP users come with their token: `otpctl import oath FILE` (a token's secret and counter)",
            ),
            (
                "ut-erin",
                Method::Email,
                None,
                "no address for ut-erin: give --email ADDR or add it to the directory (none)",
            ),
        ];
        for (name, method, email, expected) in cases {
            let resp = enable(&core, &ROOT, name.into(), method, email).await;
            assert_eq!(refusal(resp), (AdminErrorKind::InvalidInput, expected.to_string()), "{name}");
        }
        let (kind, message) =
            refusal(enable(&core, &ROOT, "ut-erin".into(), Method::Totp, Some("not an address".into())).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert!(message.starts_with("--email: "), "{message}");
        assert!(on_db(&core, |st| st.users()).await.is_empty());
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn enable_refuses_an_enabled_user_and_a_second_name_for_an_enabled_account() {
        let core = core();
        let before = enrolled_user(&core, "ut-ada", None).await;
        let (kind, message) = refusal(enable(&core, &ROOT, "ut-ada".into(), Method::Totp, None).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert_eq!(message, "ut-ada is already enabled (method totp); use `otpctl user reset ut-ada` for a new secret");
        assert_eq!(user(&core, "ut-ada").await.unwrap(), before, "the secret is kept");
        // root is uid 0 on every Linux system; another name for uid 0 is enabled.
        enrolled_user(&core, "ut-toor", Some(0)).await;
        let (kind, message) = refusal(enable(&core, &ROOT, "root".into(), Method::Totp, None).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert_eq!(message, "root is the same account as ut-toor (uid 0), which is already enabled");
        assert!(user(&core, "root").await.is_none());
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn enable_again_after_disable_keeps_the_record_and_takes_the_accounts_uid() {
        let core = core();
        let mut old = enrolled_user(&core, "root", None).await;
        old.enabled = false;
        old.secret = None;
        save(&core, old.clone()).await;
        let (shown, uri) = enrolled_answer(enable(&core, &ROOT, "root".into(), Method::Totp, None).await);
        assert!(shown.enabled && uri.is_some());
        let u = user(&core, "root").await.unwrap();
        assert_eq!((u.enabled, u.uid, u.created_at), (true, Some(0), old.created_at));
    }

    #[tokio::test]
    async fn reset_gives_an_enabled_user_a_new_secret_to_activate() {
        let core = core();
        let mut before = enrolled_user(&core, "ut-ada", None).await;
        before.failures = 2;
        before.admin_locked_at = Some(T0 - 10);
        save(&core, before.clone()).await;
        let (shown, uri) = enrolled_answer(reset(&core, &ROOT, "ut-ada".into()).await);
        assert!(!shown.activated && !shown.locked && uri.is_some());
        let u = user(&core, "ut-ada").await.unwrap();
        assert_ne!(u.secret, before.secret);
        assert_eq!((u.activated_at, u.failures, u.admin_locked_at, u.updated_at), (None, 0, None, T0));
        assert_eq!(one_admin_row(&core, "ut-ada").await, ("reset".into(), "by uid 0".into()));
    }

    #[tokio::test]
    async fn reset_refuses_unknown_and_disabled_users() {
        let core = core();
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(reset(&core, &ROOT, "ut-ghost".into()).await), not_found);
        let mut off = enrolled_user(&core, "ut-ghost", None).await;
        off.enabled = false;
        save(&core, off.clone()).await;
        assert_eq!(refusal(reset(&core, &ROOT, "ut-ghost".into()).await), not_found);
        assert_eq!(user(&core, "ut-ghost").await.unwrap(), off);
        let invalid = (AdminErrorKind::InvalidInput, "\"x/y\" is not a valid user name".to_string());
        assert_eq!(refusal(reset(&core, &ROOT, "x/y".into()).await), invalid);
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn disable_erases_the_secret_lock_and_recovery_codes() {
        let core = core();
        let mut before = enrolled_user(&core, "ut-ada", None).await;
        before.locked_until = Some(T0 + 600);
        before.failures_since_login = 4;
        save(&core, before).await;
        on_db(&core, |st| st.set_recovery_codes("ut-ada", &[1; 16], &[vec![2; 32], vec![3; 32]])).await;
        let remote = By::Remote("adm1".into());
        let shown = user_answer(disable(&core, &remote, "ut-ada".into()).await);
        assert!(!shown.enabled && !shown.activated && !shown.locked);
        let u = user(&core, "ut-ada").await.unwrap();
        assert_eq!((u.enabled, u.secret, u.activated_at, u.locked_until), (false, None, None, None));
        assert_eq!((u.failures_since_login, u.updated_at), (0, T0));
        assert_eq!(on_db(&core, |st| st.recovery_codes_left("ut-ada")).await, 0);
        assert_eq!(
            one_admin_row(&core, "ut-ada").await,
            ("disable".into(), "by admin credentials adm1 (remote)".into())
        );
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(disable(&core, &ROOT, "ut-ghost".into()).await), not_found);
    }

    #[tokio::test]
    async fn unlock_lifts_every_lock_and_keeps_the_failures_to_tell() {
        let core = core();
        let mut before = enrolled_user(&core, "ut-ada", None).await;
        before.failures = 3;
        before.locked_until = Some(T0 + 600);
        before.lock_periods = 2;
        before.admin_locked_at = Some(T0 - 60);
        before.failures_since_login = 9;
        save(&core, before.clone()).await;
        let shown = user_answer(unlock(&core, &ROOT, "ut-ada".into()).await);
        assert!(!shown.locked && shown.enabled);
        let u = user(&core, "ut-ada").await.unwrap();
        assert_eq!((u.failures, u.locked_until, u.lock_periods, u.admin_locked_at), (0, None, 0, None));
        assert_eq!((u.failures_since_login, u.secret, u.updated_at), (9, before.secret, T0));
        assert_eq!(one_admin_row(&core, "ut-ada").await, ("unlock".into(), "by uid 0".into()));
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(unlock(&core, &ROOT, "ut-ghost".into()).await), not_found);
    }

    #[tokio::test]
    async fn show_adds_the_recovery_codes_left_and_writes_nothing() {
        let core = core();
        let before = enrolled_user(&core, "ut-ada", Some(4242)).await;
        on_db(&core, |st| st.set_recovery_codes("ut-ada", &[1; 16], &[vec![2; 32], vec![3; 32], vec![4; 32]])).await;
        let shown = user_answer(show(&core, "ut-ada".into()).await);
        assert_eq!(shown, common::proto::UserInfo { recovery_codes_left: Some(3), ..info(&before, T0) });
        assert_eq!(user(&core, "ut-ada").await.unwrap(), before);
        assert!(all_audit(&core).await.is_empty());
        let not_found = (AdminErrorKind::NotFound, NOT_ENABLED.to_string());
        assert_eq!(refusal(show(&core, "ut-ghost".into()).await), not_found);
        let invalid = (AdminErrorKind::InvalidInput, "\"\" is not a valid user name".to_string());
        assert_eq!(refusal(show(&core, String::new()).await), invalid);
    }

    #[tokio::test]
    async fn list_shows_every_record_enabled_or_not() {
        let core = core();
        match list(&core, None, None, None).await {
            AdminResponse::Users { users } => assert!(users.is_empty()),
            other => panic!("expected Users, got {other:?}"),
        }
        let ada = enrolled_user(&core, "ut-ada", None).await;
        let mut bob = enrolled_user(&core, "ut-bob", None).await;
        bob.enabled = false;
        save(&core, bob.clone()).await;
        match list(&core, None, None, None).await {
            AdminResponse::Users { mut users } => {
                users.sort_by(|a, b| a.name.cmp(&b.name));
                assert_eq!(users, vec![info(&ada, T0), info(&bob, T0)]);
            }
            other => panic!("expected Users, got {other:?}"),
        }
    }

    /// The console's users page: a search in names and addresses (any case,
    /// `%` and `_` only themselves), pages by name.
    #[tokio::test]
    async fn list_pages_and_searches() {
        let core = core();
        for name in ["ut-ada", "ut-bob", "ut-cy", "x_y", "xay"] {
            let mut rec = enrolled_user(&core, name, None).await;
            rec.email = Some(format!("{name}@Example.org"));
            save(&core, rec).await;
        }
        let names = |r: AdminResponse| match r {
            AdminResponse::Users { users } => users.into_iter().map(|u| u.name).collect::<Vec<_>>(),
            other => panic!("expected Users, got {other:?}"),
        };
        let page = |after: Option<&str>| list(&core, None, after.map(String::from), Some(2));
        assert_eq!(names(page(None).await), ["ut-ada", "ut-bob"]);
        assert_eq!(names(page(Some("ut-bob")).await), ["ut-cy", "x_y"]);
        assert_eq!(names(page(Some("x_y")).await), ["xay"]);
        let search = |q: &str| list(&core, Some(q.into()), None, Some(50));
        assert_eq!(names(search("UT-").await), ["ut-ada", "ut-bob", "ut-cy"]);
        assert_eq!(names(search("_").await), ["x_y"]);
        assert_eq!(names(search("example.ORG").await).len(), 5);
        assert!(names(search("%").await).is_empty());
        let long = list(&core, Some("a".repeat(300)), None, Some(5)).await;
        assert!(matches!(long, AdminResponse::Error { kind: AdminErrorKind::InvalidInput, .. }));
    }
}
