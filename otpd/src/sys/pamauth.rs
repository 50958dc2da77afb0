//! The web console's password check: otpd as a PAM application of the
//! service `[web] pam_service` (`otpweb`: `@include common-auth` without
//! pam_otp, so the system's own password rules, faillock included, apply).
//! Blocking: run it off the async workers.
use libc::{c_int, c_void};
use pam_sys::{PamConversation, PamFlag, PamHandle, PamItemType, PamMessage, PamResponse, PamReturnCode};
use std::ffi::CString;

/// What the conversation answers: the password to a hidden prompt, the
/// name to a shown one (a module that asks again), nothing to messages.
struct Answers {
    user: CString,
    password: CString,
}

/// PAM's conversation callback. Each response is malloc'd: PAM frees them.
extern "C" fn converse(
    num_msg: c_int,
    msg: *mut *mut PamMessage,
    out: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    if num_msg <= 0 || msg.is_null() || out.is_null() || appdata.is_null() {
        return PamReturnCode::CONV_ERR as c_int;
    }
    let n = num_msg as usize;
    // SAFETY: calloc of n zeroed responses; checked for NULL below.
    let resp = unsafe { libc::calloc(n, std::mem::size_of::<PamResponse>()) } as *mut PamResponse;
    if resp.is_null() {
        return PamReturnCode::BUF_ERR as c_int;
    }
    // SAFETY: appdata is the `Answers` check_password passed to pam_start,
    // alive until pam_end; Linux-PAM passes `msg` as an array of n pointers.
    let answers = unsafe { &*(appdata as *const Answers) };
    for i in 0..n {
        let style = unsafe { (**msg.add(i)).msg_style };
        let text: Option<&CString> = match style {
            1 => Some(&answers.password),
            2 => Some(&answers.user),
            _ => None,
        };
        if let Some(t) = text {
            // SAFETY: strdup of a NUL-terminated string; PAM frees it.
            unsafe { (*resp.add(i)).resp = libc::strdup(t.as_ptr()) };
        }
    }
    // SAFETY: out is PAM's place for the response array.
    unsafe { *out = resp };
    PamReturnCode::SUCCESS as c_int
}

/// Whether `user` with `password` passes the service's `auth` and
/// `account` stacks, the browser at `rhost` (PAM_RHOST, for the modules'
/// logs). Any PAM failure (no such service, unknown user, wrong password,
/// expired account) is false; the reason goes to the debug log only, never
/// to the browser (no user enumeration).
pub fn check_password(service: &str, user: &str, password: &str, rhost: &str) -> bool {
    let (Ok(c_user), Ok(c_password), Ok(c_rhost)) = (CString::new(user), CString::new(password), CString::new(rhost))
    else {
        return false;
    };
    let answers = Box::new(Answers { user: c_user, password: c_password });
    let conv = PamConversation { conv: Some(converse), data_ptr: &*answers as *const Answers as *mut c_void };
    let mut handle: *mut PamHandle = std::ptr::null_mut();
    let started = pam_sys::wrapped::start(service, Some(user), &conv, &mut handle);
    if started != PamReturnCode::SUCCESS || handle.is_null() {
        tracing::error!("PAM service {service:?} cannot start: {started:?}; console logins are refused");
        return false;
    }
    // SAFETY: pam_start succeeded: the handle is valid until pam_end below.
    let h = unsafe { &mut *handle };
    // SAFETY: PAM copies the string item.
    let _ = pam_sys::wrapped::set_item(h, PamItemType::RHOST, unsafe { &*(c_rhost.as_ptr() as *const c_void) });
    let mut rc = pam_sys::wrapped::authenticate(h, PamFlag::NONE);
    if rc == PamReturnCode::SUCCESS {
        rc = pam_sys::wrapped::acct_mgmt(h, PamFlag::NONE);
    }
    if rc != PamReturnCode::SUCCESS {
        tracing::debug!("console password check failed: {rc:?}");
    }
    pam_sys::wrapped::end(h, rc);
    drop(answers);
    rc == PamReturnCode::SUCCESS
}
