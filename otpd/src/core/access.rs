//! Who may administer this daemon, and the accounts behind names. Kept by
//! every admin door (socket, D-Bus) alike.

/// Root, the admin group as primary group, or as a supplementary group of
/// the calling process (read from /proc: the admin path may do lookups the
/// login path must not).
pub fn authorized(uid: u32, gid: u32, pid: Option<i32>, admin_gid: Option<u32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(admin) = admin_gid else { return false };
    if gid == admin {
        return true;
    }
    let Some(pid) = pid else { return false };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse::<u32>() == Ok(admin)))
}

/// The account behind a name. The admin path may use NSS; the login path
/// never does (the module sends the uid it resolved).
pub(crate) fn account_uid(user: &str) -> Option<u32> {
    nix::unistd::User::from_name(user).ok().flatten().map(|u| u.uid.as_raw())
}

/// Whether the account `user` administers this daemon, as the console asks
/// at every request: root, or a member of the admin group (primary or
/// supplementary) in the directory now.
pub fn user_is_admin(user: &str, admin_gid: Option<u32>) -> bool {
    let Ok(Some(account)) = nix::unistd::User::from_name(user) else { return false };
    if account.uid.is_root() {
        return true;
    }
    let Some(admin) = admin_gid else { return false };
    if account.gid.as_raw() == admin {
        return true;
    }
    let Ok(name) = std::ffi::CString::new(user) else { return false };
    nix::unistd::getgrouplist(&name, account.gid).is_ok_and(|gs| gs.iter().any(|g| g.as_raw() == admin))
}
