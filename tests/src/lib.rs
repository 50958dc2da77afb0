//! Test support: drive the real libpam in-process (`pam_start` /
//! `pam_authenticate` / `pam_end`) with a scripted conversation.
//!
//! Stacks come from a temp dir, never the host's /etc/pam.d: either through
//! libpam's own `pam_start_confdir` (Linux-PAM ≥ 1.4; what pam_wrapper uses
//! internally), or through pam_wrapper (`LD_PRELOAD`) when no confdir is
//! given. The tests prefer confdir: pam_wrapper picks its /tmp/pam.X
//! directory with an lstat-then-mkdir race, so concurrent processes of
//! different tests can read each other's service files.
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};

pub mod pg;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

#[repr(C)]
struct PamConv {
    conv: extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int,
    appdata_ptr: *mut c_void,
}

#[link(name = "pam")]
extern "C" {
    fn pam_start(service: *const c_char, user: *const c_char, conv: *const PamConv, pamh: *mut *mut c_void) -> c_int;
    fn pam_start_confdir(
        service: *const c_char,
        user: *const c_char,
        conv: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut c_void,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_set_item(pamh: *mut c_void, item_type: c_int, item: *const c_void) -> c_int;
    fn pam_end(pamh: *mut c_void, status: c_int) -> c_int;
    fn pam_open_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_close_session(pamh: *mut c_void, flags: c_int) -> c_int;
    fn pam_strerror(pamh: *mut c_void, errnum: c_int) -> *const c_char;
}

pub const PAM_SUCCESS: i32 = 0;
pub const PAM_AUTH_ERR: i32 = 7;
pub const PAM_MAXTRIES: i32 = 11;
pub const PAM_IGNORE: i32 = 25;
const PAM_TTY: c_int = 3;
const PAM_RHOST: c_int = 4;
const PAM_CONV_ERR: c_int = 19;
const PAM_BUF_ERR: c_int = 5;

struct Script {
    answers: VecDeque<Vec<u8>>,
    transcript: String,
}

extern "C" fn converse(
    n: c_int,
    msgs: *mut *const PamMessage,
    resp: *mut *mut PamResponse,
    data: *mut c_void,
) -> c_int {
    if n <= 0 || msgs.is_null() || resp.is_null() || data.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: libpam passes n valid messages and our Script as appdata.
    unsafe {
        let script = &mut *(data as *mut Script);
        let out = libc::calloc(n as usize, std::mem::size_of::<PamResponse>()) as *mut PamResponse;
        if out.is_null() {
            return PAM_BUF_ERR;
        }
        for i in 0..n as usize {
            let m = &**msgs.add(i);
            let text =
                if m.msg.is_null() { String::new() } else { CStr::from_ptr(m.msg).to_string_lossy().into_owned() };
            let tag = match m.msg_style {
                1 => "prompt-off",
                2 => "prompt-on",
                3 => "error",
                4 => "info",
                _ => "other",
            };
            script.transcript.push_str(&format!("[{tag}] {text}\n"));
            if m.msg_style == 1 || m.msg_style == 2 {
                let Some(answer) = script.answers.pop_front() else {
                    for j in 0..i {
                        libc::free((*out.add(j)).resp as *mut c_void);
                    }
                    libc::free(out as *mut c_void);
                    script.transcript.push_str("[driver] no answer left: conversation error\n");
                    return PAM_CONV_ERR;
                };
                // Answers cannot carry NUL through the C API: cut there as a C string would.
                let end = answer.iter().position(|&b| b == 0).unwrap_or(answer.len());
                let c = CString::new(&answer[..end]).unwrap_or_default();
                (*out.add(i)).resp = libc::strdup(c.as_ptr());
            }
        }
        *resp = out;
    }
    0
}

/// The fields of `/proc/<pid>/stat` after `pid (comm)`: state, ppid, ...
/// (utime and stime are the 12th and 13th); empty for a process that is
/// gone.
pub fn proc_stat(pid: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

pub struct Login {
    pub code: i32,
    pub error: String,
    pub transcript: String,
}

/// One complete authentication through libpam.
pub fn authenticate(
    confdir: Option<&str>,
    service: &str,
    user: &str,
    answers: Vec<Vec<u8>>,
    tty: Option<&str>,
    rhost: Option<&str>,
    session: bool,
) -> Login {
    let mut script = Script { answers: answers.into(), transcript: String::new() };
    let conv = PamConv { conv: converse, appdata_ptr: &mut script as *mut Script as *mut c_void };
    let service_c = CString::new(service).unwrap_or_default();
    let user_c = CString::new(user).unwrap_or_default();
    let mut pamh: *mut c_void = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the duration of the calls.
    unsafe {
        let confdir_c = confdir.map(|c| CString::new(c).unwrap_or_default());
        let rc = match &confdir_c {
            Some(dir) => pam_start_confdir(service_c.as_ptr(), user_c.as_ptr(), &conv, dir.as_ptr(), &mut pamh),
            None => pam_start(service_c.as_ptr(), user_c.as_ptr(), &conv, &mut pamh),
        };
        if rc != 0 {
            return Login { code: rc, error: format!("pam_start failed: {rc}"), transcript: script.transcript };
        }
        let tty_c = tty.map(|t| CString::new(t).unwrap_or_default());
        if let Some(t) = &tty_c {
            pam_set_item(pamh, PAM_TTY, t.as_ptr() as *const c_void);
        }
        let rhost_c = rhost.map(|t| CString::new(t).unwrap_or_default());
        if let Some(r) = &rhost_c {
            pam_set_item(pamh, PAM_RHOST, r.as_ptr() as *const c_void);
        }
        let code = pam_authenticate(pamh, 0);
        let error = CStr::from_ptr(pam_strerror(pamh, code)).to_string_lossy().into_owned();
        if session && code == 0 {
            let open = pam_open_session(pamh, 0);
            let close = pam_close_session(pamh, 0);
            script.transcript.push_str(&format!("[driver] session open={open} close={close}\n"));
        }
        pam_end(pamh, code);
        Login { code, error, transcript: script.transcript }
    }
}

#[cfg(test)]
mod pg_tests {
    #[test]
    fn a_private_cluster_starts_answers_and_stops() {
        let mut c = super::pg::Cluster::start().expect("PostgreSQL must be installed (scripts/deps.sh)");
        assert_eq!(c.psql("select 40 + 2").unwrap().trim(), "42");
        let sock = c.socket_dir().join(format!(".s.PGSQL.{}", c.port));
        assert!(sock.exists());
        c.stop().unwrap();
        assert!(!sock.exists());
        assert!(c.psql("select 1").is_err());
    }
}
