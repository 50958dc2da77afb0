//! `otpctl user enable --group|--from-file`: many users enabled for TOTP
//! in one transaction.
use crate::admin::ops::shared::{admin_audit, err, finish, By};
use crate::core::access::account_uid;
use crate::core::auth::new_enrollment;
use crate::core::context::valid_user_name;
use crate::core::policy::Policy;
use crate::core::service::Core;
use crate::store::model::{Store, StoreError};
use common::proto::{AdminErrorKind, AdminResponse, BulkUser};

/// `user_enable_many`: refused whole if a name is invalid; then every user
/// enabled in one job, and `require_group`'s members read again.
pub async fn enable_many(core: &Core, by: &By, users: Vec<BulkUser>, source: String) -> AdminResponse {
    let now = core.clock.now();
    let users = match bulk_users(users, by) {
        Ok(u) => u,
        Err(why) => return err(AdminErrorKind::InvalidInput, why),
    };
    let (policy, by) = (core.policy.clone(), by.clone());
    let r = core.db.run(move |st| enable_all(st, &policy, &by, &users, &source, now)).await;
    // New accounts may have joined require_group since the last refresh.
    if let Err(e) = crate::core::groups::refresh(core).await {
        tracing::warn!("{e}; the members stored before are kept");
    }
    finish(r)
}

/// Checks a bulk request before anything is written: every name valid (else
/// the whole request is refused, naming the bad entries), duplicates dropped.
/// A remote admin's uids are another machine's: the names are resolved here.
fn bulk_users(users: Vec<BulkUser>, by: &By) -> Result<Vec<BulkUser>, String> {
    if users.is_empty() {
        return Err("no users given: nothing to enable".into());
    }
    let bad: Vec<String> = users
        .iter()
        .enumerate()
        .filter(|(_, u)| !valid_user_name(&u.name))
        .take(10)
        .map(|(i, u)| format!("entry {}: {:?}", i + 1, u.name))
        .collect();
    if !bad.is_empty() {
        return Err(format!("not valid user names (nothing was enabled): {}", bad.join(", ")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<BulkUser> = users.into_iter().filter(|u| seen.insert(u.name.clone())).collect();
    // Only a local admin's otpctl resolved the names here; a remote or a
    // console admin's uids are looked up on this machine.
    if !matches!(by, By::Uid(_)) {
        for u in &mut out {
            u.uid = account_uid(&u.name);
        }
    }
    Ok(out)
}

/// The database job: one transaction; idempotent (an enabled user keeps
/// its secret and is only counted).
fn enable_all(
    st: &mut dyn Store,
    policy: &Policy,
    by: &By,
    users: &[BulkUser],
    source: &str,
    now: i64,
) -> Result<AdminResponse, StoreError> {
    const NOTES: usize = 10;
    let (mut enabled, mut already, mut skipped) = (0u64, 0u64, 0u64);
    let mut skipped_notes = Vec::new();
    let mut enabled_names = Vec::new();
    let action = format!("enable (totp, {source})");
    for u in users {
        let existing = st.user(&u.name)?;
        if existing.as_ref().is_some_and(|e| e.enabled) {
            already += 1;
            continue;
        }
        // As for one user: a second name for an enabled account would be a
        // second secret for it.
        if let Some(other) = u.uid.map(|id| st.user_by_uid(id)).transpose()?.flatten() {
            if other.enabled && other.name != u.name {
                skipped += 1;
                if skipped_notes.len() < NOTES {
                    skipped_notes.push(format!(
                        "{}: skipped: the same account as {} (uid {}), which is already enabled",
                        u.name,
                        other.name,
                        u.uid.unwrap_or_default()
                    ));
                }
                continue;
            }
        }
        let rec = new_enrollment(policy, existing, &u.name, u.uid, now);
        st.save_user(&rec)?;
        admin_audit(st, &policy.machine, &u.name, &action, by, now)?;
        enabled += 1;
        if enabled_names.len() < NOTES {
            enabled_names.push(u.name.clone());
        }
    }
    let mut notes = skipped_notes;
    if notes.len() < NOTES && !enabled_names.is_empty() {
        let more = if enabled as usize > enabled_names.len() { ", …" } else { "" };
        notes.push(format!("enabled: {}{more}", enabled_names.join(", ")));
    }
    Ok(AdminResponse::EnabledMany { enabled, already_enabled: already, skipped, notes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::ops::shared::fixture::*;
    use std::sync::Arc;

    fn bulk(names: &[(&str, Option<u32>)]) -> Vec<BulkUser> {
        names.iter().map(|(n, uid)| BulkUser { name: n.to_string(), uid: *uid }).collect()
    }

    fn counts(resp: AdminResponse) -> (u64, u64, u64, Vec<String>) {
        match resp {
            AdminResponse::EnabledMany { enabled, already_enabled, skipped, notes } => {
                (enabled, already_enabled, skipped, notes)
            }
            other => panic!("expected EnabledMany, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn enables_the_new_users_once_and_counts_the_enabled_ones() {
        let core = core();
        let kept = enrolled_user(&core, "ut-cat", None).await;
        let users = bulk(&[("ut-ada", Some(4001)), ("ut-bob", None), ("ut-ada", Some(4001)), ("ut-cat", None)]);
        let resp = enable_many(&core, &ROOT, users, "group staff".into()).await;
        assert_eq!(counts(resp), (2, 1, 0, vec!["enabled: ut-ada, ut-bob".to_string()]));
        let ada = user(&core, "ut-ada").await.unwrap();
        assert!(ada.enabled && ada.secret.is_some() && ada.activated_at.is_none());
        assert_eq!(ada.uid, Some(4001), "a local admin's uids are taken as given");
        assert!(user(&core, "ut-bob").await.unwrap().enabled);
        assert_eq!(user(&core, "ut-cat").await.unwrap(), kept, "an enabled user keeps its secret");
        for name in ["ut-ada", "ut-bob"] {
            let row = one_admin_row(&core, name).await;
            assert_eq!(row, ("enable (totp, group staff)".into(), "by uid 0".into()));
        }
        assert!(audit_rows(&core, "ut-cat").await.is_empty());
    }

    #[tokio::test]
    async fn an_invalid_name_or_no_name_refuses_the_whole_request() {
        let core = core();
        let users = bulk(&[("ut-ada", None), ("bad name", None), ("-rf", None)]);
        let (kind, message) = refusal(enable_many(&core, &ROOT, users, "file x".into()).await);
        assert_eq!(kind, AdminErrorKind::InvalidInput);
        assert_eq!(message, "not valid user names (nothing was enabled): entry 2: \"bad name\", entry 3: \"-rf\"");
        let (kind, message) = refusal(enable_many(&core, &ROOT, Vec::new(), "file x".into()).await);
        assert_eq!((kind, message.as_str()), (AdminErrorKind::InvalidInput, "no users given: nothing to enable"));
        assert!(on_db(&core, |st| st.users()).await.is_empty());
        assert!(all_audit(&core).await.is_empty());
    }

    #[tokio::test]
    async fn a_second_name_for_an_enabled_account_is_skipped_with_a_note() {
        let core = core();
        enrolled_user(&core, "ut-first", Some(4242)).await;
        let users = bulk(&[("ut-second", Some(4242)), ("ut-third", Some(4243))]);
        let (enabled, already, skipped, notes) = counts(enable_many(&core, &ROOT, users, "group g".into()).await);
        assert_eq!((enabled, already, skipped), (1, 0, 1));
        assert_eq!(
            notes,
            [
                "ut-second: skipped: the same account as ut-first (uid 4242), which is already enabled",
                "enabled: ut-third"
            ]
        );
        assert!(user(&core, "ut-second").await.is_none());
        assert!(audit_rows(&core, "ut-second").await.is_empty());
    }

    #[tokio::test]
    async fn a_remote_admins_uids_are_resolved_here() {
        let core = core();
        // uid 4242 on the admin's machine is not this machine's root.
        enrolled_user(&core, "ut-first", Some(4242)).await;
        let remote = By::Remote("adm1".into());
        let resp = enable_many(&core, &remote, bulk(&[("root", Some(4242))]), "group wheel".into()).await;
        assert_eq!(counts(resp), (1, 0, 0, vec!["enabled: root".to_string()]));
        assert_eq!(user(&core, "root").await.unwrap().uid, Some(0));
        let row = one_admin_row(&core, "root").await;
        assert_eq!(row, ("enable (totp, group wheel)".into(), "by admin credentials adm1 (remote)".into()));
    }

    #[tokio::test]
    async fn the_notes_name_the_first_ten_enabled() {
        let core = core();
        let names: Vec<String> = (0..12).map(|i| format!("ut-u{i:02}")).collect();
        let users = names.iter().map(|n| BulkUser { name: n.clone(), uid: None }).collect();
        let (enabled, _, _, notes) = counts(enable_many(&core, &ROOT, users, "file f".into()).await);
        assert_eq!(enabled, 12);
        assert_eq!(notes, [format!("enabled: {}, …", names[..10].join(", "))]);
        assert_eq!(all_audit(&core).await.len(), 12);
    }

    #[tokio::test]
    async fn require_groups_members_are_read_again_after_the_enable() {
        let mut parts = parts();
        // The root group and root's primary group membership exist on every Linux.
        Arc::get_mut(&mut parts.policy).unwrap().require_group = Some("root".into());
        let core = crate::core::service::Core::new(parts);
        assert!(!on_db(&core, |st| st.in_group("root", "root")).await);
        counts(enable_many(&core, &ROOT, bulk(&[("ut-ada", None)]), "group root".into()).await);
        assert!(on_db(&core, |st| st.in_group("root", "root")).await);
    }
}
