//! libpam entry points. Only argument conversion and result mapping live
//! here; `pam_hooks!` wraps every entry point in `catch_unwind` (a panic
//! becomes PAM_ABORT, a failure) and exports only `pam_sm_*` symbols.
use crate::flow::{self, ConvError, Daemon, PamCode, PamIo, Style};
use crate::log::{syslog, Level};
use crate::options::{self, Options};
use common::client::Client;
use common::proto::{ClientMsg, ServerMsg, PROTOCOL_VERSION};
use pam::constants::{
    PamFlag, PamResultCode, PAM_ERROR_MSG, PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON, PAM_SILENT, PAM_TEXT_INFO,
};
use pam::conv::Conv;
use pam::items::{RHost, RUser, Service, Tty};
use pam::module::{PamHandle, PamHooks};
use std::ffi::CStr;

pub struct PamOtp;
pam::pam_hooks!(PamOtp);

impl PamHooks for PamOtp {
    fn sm_authenticate(pamh: &mut PamHandle, args: Vec<&CStr>, flags: PamFlag) -> PamResultCode {
        let (opts, problems) = options::parse(args.iter().map(|a| a.to_bytes()));
        for p in &problems {
            syslog(pamh, Level::Warning, p);
        }
        #[cfg(debug_assertions)]
        #[allow(clippy::panic)]
        if opts.test_panic {
            panic!("test_panic: pam_hooks! must turn this into a failure");
        }
        let mut io = LibPam { pamh, silent: flags & PAM_SILENT != 0, debug: opts.debug };
        match flow::authenticate(&mut io, &opts, connect) {
            PamCode::Success => PamResultCode::PAM_SUCCESS,
            PamCode::AuthErr => PamResultCode::PAM_AUTH_ERR,
            PamCode::MaxTries => PamResultCode::PAM_MAXTRIES,
            PamCode::Ignore => PamResultCode::PAM_IGNORE,
        }
    }

    /// Reports the session to otpd (`otpctl sessions`). Best effort: a
    /// session is never refused for bookkeeping, so failures give IGNORE.
    fn sm_open_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        session_event(pamh, args, true)
    }

    fn sm_close_session(pamh: &mut PamHandle, args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        session_event(pamh, args, false)
    }

    /// A passcode establishes no credentials, so there is nothing to do.
    /// SUCCESS rather than IGNORE: when pam_otp is the only auth module (sshd
    /// with the key as first factor), a stack whose modules all ignore
    /// setcred fails with PAM_PERM_DENIED and sshd drops the session after a
    /// correct code (found by the sshd test). setcred runs only after
    /// authentication succeeded; it grants nothing.
    fn sm_setcred(_pamh: &mut PamHandle, _args: Vec<&CStr>, _flags: PamFlag) -> PamResultCode {
        PamResultCode::PAM_SUCCESS
    }
}

fn session_event(pamh: &mut PamHandle, args: Vec<&CStr>, open: bool) -> PamResultCode {
    let (opts, _) = options::parse(args.iter().map(|a| a.to_bytes()));
    let io = LibPam { pamh, silent: true, debug: opts.debug };
    let user = match io.pamh.get_item::<pam::items::User>() {
        Ok(Some(u)) => String::from_utf8_lossy(u.to_bytes()).into_owned(),
        _ => return PamResultCode::PAM_IGNORE,
    };
    let service = io.service().unwrap_or_default();
    let pid = std::process::id();
    let msg = if open {
        ClientMsg::SessionOpened { protocol: PROTOCOL_VERSION, user, service, rhost: io.rhost(), tty: io.tty(), pid }
    } else {
        ClientMsg::SessionClosed { protocol: PROTOCOL_VERSION, user, service, tty: io.tty(), pid }
    };
    let acked = connect(&opts).and_then(|mut d| {
        d.send(&msg)?;
        d.recv()
    });
    match acked {
        Ok(ServerMsg::Ack) => PamResultCode::PAM_SUCCESS,
        Ok(_) | Err(_) => {
            syslog(io.pamh, Level::Warning, "could not report the session to otpd");
            PamResultCode::PAM_IGNORE
        }
    }
}

/// The only uid trusted to run the daemon.
const TRUSTED_UIDS: &[u32] = &[0];

struct SocketDaemon(Client);

impl Daemon for SocketDaemon {
    fn send(&mut self, msg: &ClientMsg) -> Result<(), String> {
        self.0.send(msg).map_err(|e| e.to_string())
    }
    fn recv(&mut self) -> Result<ServerMsg, String> {
        self.0.recv().map_err(|e| e.to_string())
    }
}

fn connect(opts: &Options) -> Result<SocketDaemon, String> {
    Client::connect(&opts.socket, opts.timeout, TRUSTED_UIDS).map(SocketDaemon).map_err(|e| e.to_string())
}

struct LibPam<'a> {
    pamh: &'a mut PamHandle,
    silent: bool,
    debug: bool,
}

impl LibPam<'_> {
    fn item_string<'a, T>(&'a self) -> Option<String>
    where
        T: pam::items::Item<'a> + std::ops::Deref<Target = &'a CStr>,
    {
        match self.pamh.get_item::<T>() {
            Ok(Some(v)) => Some(String::from_utf8_lossy(v.to_bytes()).into_owned()),
            _ => None,
        }
    }
}

impl PamIo for LibPam<'_> {
    fn user(&mut self) -> Option<String> {
        self.pamh.get_user(None).ok()
    }
    fn service(&self) -> Option<String> {
        self.item_string::<Service>()
    }
    fn rhost(&self) -> Option<String> {
        self.item_string::<RHost>()
    }
    fn ruser(&self) -> Option<String> {
        self.item_string::<RUser>()
    }
    fn tty(&self) -> Option<String> {
        self.item_string::<Tty>()
    }
    fn uid_of(&self, user: &str) -> Option<u32> {
        uid_of(user)
    }
    fn silent(&self) -> bool {
        self.silent
    }
    fn converse(&mut self, style: Style, text: &str) -> Result<Option<Vec<u8>>, ConvError> {
        let pam_style = match style {
            Style::PromptEchoOff => PAM_PROMPT_ECHO_OFF,
            Style::PromptEchoOn => PAM_PROMPT_ECHO_ON,
            Style::Info => PAM_TEXT_INFO,
            Style::Error => PAM_ERROR_MSG,
        };
        let conv = match self.pamh.get_item::<Conv>() {
            Ok(Some(c)) => c,
            _ => return Err(ConvError),
        };
        match conv.send(pam_style, text) {
            Ok(answer) => Ok(answer.map(|s| s.as_bytes().to_vec())),
            Err(_) => Err(ConvError),
        }
    }
    fn log(&mut self, level: Level, msg: &str) {
        if level == Level::Debug && !self.debug {
            return;
        }
        syslog(self.pamh, level, msg);
    }
}

/// The uid the directory gives `user`, through the same NSS the login
/// process already uses for the first factor (the daemon makes no NSS
/// lookups on the login path). `None` when the name does not resolve.
fn uid_of(user: &str) -> Option<u32> {
    let name = std::ffi::CString::new(user).ok()?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: every pointer is valid for the call; getpwnam_r writes the
        // entry's strings into `buf` and only points `result` at `pwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(pwd.pw_uid);
    }
}
