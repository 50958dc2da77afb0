//! `[daemon] require_group`: the members of a group, read through NSS on the
//! admin path only (`otpctl group refresh`, after a bulk enable, at start and
//! hourly) and kept in the database, so a login is decided without NSS.
use crate::core::service::Core;
use std::sync::Mutex;

/// getpwent's enumeration state is one per process.
static ENUMERATION: Mutex<()> = Mutex::new(());

/// Every member of `group`: its member list and the accounts whose primary
/// group it is. `Ok(None)`: there is no such group. Blocking (NSS).
pub fn members(group: &str) -> Result<Option<Vec<String>>, String> {
    let g = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => g,
        Ok(None) => return Ok(None),
        Err(e) => return Err(format!("looking up group {group} failed: {e}")),
    };
    let mut names: Vec<String> = g.mem.clone();
    let gid = g.gid.as_raw();
    {
        let _one = ENUMERATION.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        // SAFETY: getpwent_r writes the entry into `pw` and `buf`, which
        // outlive every use of the pointers it returns; the enumeration
        // state is guarded by ENUMERATION.
        unsafe {
            libc::setpwent();
            loop {
                let mut pw: libc::passwd = std::mem::zeroed();
                let mut out: *mut libc::passwd = std::ptr::null_mut();
                let rc = libc::getpwent_r(&mut pw, buf.as_mut_ptr(), buf.len(), &mut out);
                if rc == libc::ERANGE && buf.len() < 1024 * 1024 {
                    buf.resize(buf.len() * 2, 0);
                    continue;
                }
                if rc != 0 || out.is_null() {
                    break;
                }
                if pw.pw_gid == gid && !pw.pw_name.is_null() {
                    names.push(std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned());
                }
            }
            libc::endpwent();
        }
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(Some(names))
}

/// Stores the current members of `require_group`. `Ok(None)`: no
/// require_group is set. A group that no longer exists is stored empty.
pub async fn refresh(sh: &Core) -> Result<Option<(String, usize)>, String> {
    let Some(group) = sh.policy.require_group.clone() else { return Ok(None) };
    let g = group.clone();
    let found = tokio::task::spawn_blocking(move || members(&g))
        .await
        .map_err(|e| format!("reading group {group} failed: {e}"))??;
    let names = match found {
        Some(n) => n,
        None => {
            tracing::warn!("require_group {group}: there is no such group; no one is required to enroll by it");
            Vec::new()
        }
    };
    let n = names.len();
    let g = group.clone();
    sh.db
        .run(move |st| st.set_group_members(&g, &names))
        .await
        .map_err(|e| format!("storing the members of {group} failed: {e}"))?;
    tracing::info!("require_group {group}: {n} member(s) stored");
    Ok(Some((group, n)))
}
