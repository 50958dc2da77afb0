//! af-sandbox UNIT -- COMMAND [ARGS...]: runs COMMAND under the address-family
//! filter that systemd's `RestrictAddressFamilies=` in UNIT would install, so a
//! test can show what the packaged otpd.service lets the daemon reach without
//! systemd-run. Like systemd, it filters `socket()` with a seccomp program and
//! fails a forbidden family with EAFNOSUPPORT.
use std::ffi::CString;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 0xC000_00B7;

/// The unit's families: `Some(list)` allows only those, `None` no filter.
/// As in systemd.exec(5): lines accumulate, an empty assignment resets, a
/// leading `~` makes the list a deny list (returned as `Err`).
fn families(unit: &str) -> Result<Option<Vec<i32>>, Vec<i32>> {
    let mut allow: Option<Vec<i32>> = None;
    let mut deny: Vec<i32> = Vec::new();
    for line in unit.lines() {
        let Some(v) = line.trim().strip_prefix("RestrictAddressFamilies=") else { continue };
        let v = v.trim();
        if v.is_empty() {
            allow = None;
            deny.clear();
            continue;
        }
        let (neg, list) = match v.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        let fams: Vec<i32> = list.split_whitespace().map(family).collect();
        if neg {
            deny.extend(fams);
        } else {
            allow.get_or_insert_with(Vec::new).extend(fams);
        }
    }
    match (allow, deny.is_empty()) {
        (Some(a), _) => Ok(Some(a)),
        (None, true) => Ok(None),
        (None, false) => Err(deny),
    }
}

fn family(name: &str) -> i32 {
    match name {
        "AF_UNIX" | "AF_LOCAL" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        "none" => -1,
        other => panic!("af-sandbox: unknown address family {other}"),
    }
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

/// socket(family, …): allowed when `family` is (not) in the list, else EAFNOSUPPORT.
fn program(list: &[i32], listed_allowed: bool) -> Vec<libc::sock_filter> {
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let allow = stmt(ret, libc::SECCOMP_RET_ALLOW);
    let refuse = stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32);
    let (hit, miss) = if listed_allowed { (allow, refuse) } else { (refuse, allow) };
    let n = list.len() as u8;
    let mut p = vec![
        // seccomp_data: nr at 0, arch at 4, args[0] at 16 (low half first on these targets).
        stmt(ld, 4),
        jeq(AUDIT_ARCH_NATIVE, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(ld, 0),
        jeq(libc::SYS_socket as u32, 1, 0),
        allow,
        stmt(ld, 16),
    ];
    for (i, &f) in list.iter().enumerate() {
        // On a match jump to `hit`, which sits after the remaining tests and `miss`.
        p.push(jeq(f as u32, n - i as u8, 0));
    }
    p.push(miss);
    p.push(hit);
    p
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sep = args.iter().position(|a| a == "--").expect("usage: af-sandbox UNIT -- COMMAND [ARGS...]");
    assert!(sep == 2 && args.len() > 3, "usage: af-sandbox UNIT -- COMMAND [ARGS...]");
    let unit = std::fs::read_to_string(&args[1]).expect("af-sandbox: cannot read the unit");
    let filter = match families(&unit) {
        Ok(Some(allowed)) => Some(program(&allowed, true)),
        Ok(None) => None,
        Err(denied) => Some(program(&denied, false)),
    };
    if let Some(p) = filter {
        let prog = libc::sock_fprog { len: p.len() as u16, filter: p.as_ptr() as *mut libc::sock_filter };
        // SAFETY: prctl with a filter program that outlives the call.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "PR_SET_NO_NEW_PRIVS");
            assert_eq!(
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog),
                0,
                "PR_SET_SECCOMP: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let cargs: Vec<CString> = args[3..].iter().map(|a| CString::new(a.as_str()).unwrap()).collect();
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: argv is a NULL-terminated array of C strings that live until exec.
    unsafe { libc::execvp(argv[0], argv.as_ptr()) };
    panic!("af-sandbox: exec {} failed: {}", args[3], std::io::Error::last_os_error());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lines_accumulate_reset_and_negate() {
        assert_eq!(families("RestrictAddressFamilies=AF_UNIX\n"), Ok(Some(vec![libc::AF_UNIX])));
        assert_eq!(
            families("RestrictAddressFamilies=AF_UNIX\nRestrictAddressFamilies=AF_INET AF_INET6\n"),
            Ok(Some(vec![libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]))
        );
        assert_eq!(families("RestrictAddressFamilies=AF_UNIX\nRestrictAddressFamilies=\n"), Ok(None));
        assert_eq!(families("RestrictAddressFamilies=~AF_PACKET\n"), Err(vec![libc::AF_PACKET]));
        assert_eq!(families("[Service]\nType=notify\n"), Ok(None));
    }
}
