//! `~/.google_authenticator` files (Debian's libpam-google-authenticator),
//! read by `otpctl import google-authenticator`.
//!
//! The format, as pam_google_authenticator.c reads and writes it: the first
//! line is the base32 secret; option lines start with `" ` (`TOTP_AUTH`,
//! `HOTP_COUNTER n`, `STEP_SIZE s`, `WINDOW_SIZE w`, `RATE_LIMIT n m
//! [timestamps…]`, `DISALLOW_REUSE [steps…]`, `TIME_SKEW`, …); every other
//! line is an 8-digit emergency scratch code. A file without `TOTP_AUTH` is
//! counter based (HOTP). `DISALLOW_REUSE` lists the time steps (unix time /
//! step size) used recently: the highest becomes otpd's last used step.
//!
//! Parsing is strict: anything this module does not understand makes the
//! whole file malformed, so nothing is half-imported.
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest file pam_google_authenticator reads.
const MAX_SIZE: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaFile {
    pub secret: Vec<u8>,
    /// TOTP_AUTH present; otherwise the file is counter based.
    pub totp: bool,
    pub hotp_counter: Option<i64>,
    pub step_size: u32,
    pub window_size: Option<u32>,
    /// RATE_LIMIT attempts and seconds (otpd's lockout replaces it).
    pub rate_limit: Option<(u32, u32)>,
    pub disallow_reuse: bool,
    /// Highest step listed in DISALLOW_REUSE.
    pub last_step: Option<i64>,
    pub scratch_codes: Vec<String>,
}

fn num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: {s:?} is not a number"));
    }
    s.parse().map_err(|_| format!("{what}: {s:?} is out of range"))
}

/// Base32 as pam_google_authenticator decodes it: unused trailing bits of
/// the last character are ignored (a hand-written secret may set them).
fn lenient_base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
    spec.check_trailing_bits = false;
    spec.encoding().unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
}

pub fn parse(text: &str) -> Result<GaFile, String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    if first.is_empty() {
        return Err("no secret on the first line".into());
    }
    let secret = lenient_base32()
        .decode(first.to_ascii_uppercase().trim_end_matches('=').as_bytes())
        .map_err(|_| "the first line is not a base32 secret".to_string())?;
    if secret.len() < 10 {
        return Err(format!("the secret is {} bytes; at least 10 expected", secret.len()));
    }
    let mut f = GaFile {
        secret,
        totp: false,
        hotp_counter: None,
        step_size: 30,
        window_size: None,
        rate_limit: None,
        disallow_reuse: false,
        last_step: None,
        scratch_codes: Vec::new(),
    };
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        if let Some(opt) = line.strip_prefix("\" ") {
            let mut words = opt.split_whitespace();
            let key = words.next().unwrap_or("");
            let vals: Vec<&str> = words.collect();
            let bad = |why: String| format!("line {n}: {why}");
            match key {
                "TOTP_AUTH" => f.totp = true,
                "HOTP_COUNTER" => {
                    f.hotp_counter = Some(num(vals.first().copied().unwrap_or(""), "HOTP_COUNTER").map_err(bad)?)
                }
                "STEP_SIZE" => {
                    let s: u32 = num(vals.first().copied().unwrap_or(""), "STEP_SIZE").map_err(bad)?;
                    if !(1..=60).contains(&s) {
                        return Err(format!("line {n}: STEP_SIZE {s} is out of range (1 to 60)"));
                    }
                    f.step_size = s;
                }
                "WINDOW_SIZE" => {
                    f.window_size = Some(num(vals.first().copied().unwrap_or(""), "WINDOW_SIZE").map_err(bad)?)
                }
                "RATE_LIMIT" => {
                    let attempts = num(vals.first().copied().unwrap_or(""), "RATE_LIMIT").map_err(bad)?;
                    let secs = num(vals.get(1).copied().unwrap_or(""), "RATE_LIMIT").map_err(bad)?;
                    for t in vals.iter().skip(2) {
                        num::<u64>(t, "RATE_LIMIT timestamp").map_err(bad)?;
                    }
                    f.rate_limit = Some((attempts, secs));
                }
                "DISALLOW_REUSE" => {
                    f.disallow_reuse = true;
                    for v in &vals {
                        let step: i64 = num(v, "DISALLOW_REUSE").map_err(bad)?;
                        f.last_step = Some(f.last_step.map_or(step, |s| s.max(step)));
                    }
                }
                // Clock skew bookkeeping of pam_google_authenticator: nothing to keep.
                "TIME_SKEW" | "RESETTING_TIME_SKEW" => {}
                other => return Err(format!("line {n}: unknown option {other:?}")),
            }
            continue;
        }
        let code = line.trim();
        if code.len() == 8 && code.bytes().all(|b| b.is_ascii_digit()) && !code.starts_with('0') {
            if !f.scratch_codes.iter().any(|c| c == code) {
                f.scratch_codes.push(code.to_string());
            }
            continue;
        }
        return Err(format!("line {n} is neither an option nor an 8-digit scratch code"));
    }
    Ok(f)
}

/// Reads `path` for the account `uid`, refusing what pam_google_authenticator
/// would refuse and more: a symlink, anything but a regular file, a file not
/// owned by `uid`, readable or writable by group or others, empty or over 64 KiB.
pub fn read(path: &Path, uid: u32) -> Result<GaFile, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        return Err("is a symbolic link".into());
    }
    // O_NOFOLLOW: a file swapped for a link after the check is not followed.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != uid {
        return Err(format!("is owned by uid {}, not by its user (uid {uid})", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!("mode {:04o} lets others read or change it (expected 0600 or 0400)", meta.mode() & 0o7777));
    }
    if meta.len() == 0 || meta.len() > MAX_SIZE {
        return Err(format!("size {} bytes is out of range", meta.len()));
    }
    let mut text = String::new();
    file.take(MAX_SIZE).read_to_string(&mut text).map_err(|e| format!("not readable as text: {e}"))?;
    if text.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_google_authenticator_writes_and_refuses_the_rest() {
        let text = "HNZC5YSDIE7NXRUMF7LXGYJWBA\n\" RATE_LIMIT 3 30 1700000000\n\" WINDOW_SIZE 3\n\
                    \" DISALLOW_REUSE 56666666 56666667\n\" TOTP_AUTH\n33994678\n19312535\n";
        let f = parse(text).unwrap();
        assert!(f.totp && f.disallow_reuse);
        assert_eq!((f.step_size, f.window_size, f.rate_limit), (30, Some(3), Some((3, 30))));
        assert_eq!(f.last_step, Some(56666667));
        assert_eq!(f.scratch_codes, ["33994678", "19312535"]);
        assert_eq!(f.secret.len(), 16);
        // Trailing bits set in the last character: read as the module reads it.
        assert_eq!(parse("HNZC5YSDIE7NXRUMF7LXGYJWBB\n\" TOTP_AUTH\n").unwrap().secret, f.secret);
        let hotp = parse("TLJRHL2XNHILFMDTXWZSZD3FHQ\n\" HOTP_COUNTER 1\n27725580\n").unwrap();
        assert!(!hotp.totp);
        assert_eq!(hotp.hotp_counter, Some(1));
        for bad in [
            "",
            "not base32!\n\" TOTP_AUTH\n",
            "ABCD\n\" TOTP_AUTH\n",
            "HNZC5YSDIE7NXRUMF7LXGYJWBA\n\" TOTP_AUTH\n1234\n",
            "HNZC5YSDIE7NXRUMF7LXGYJWBA\n\" TOTP_AUTH\n\" STEP_SIZE 90\n",
            "HNZC5YSDIE7NXRUMF7LXGYJWBA\n\" DISALLOW_REUSE x\n",
            "HNZC5YSDIE7NXRUMF7LXGYJWBA\n\" SOMETHING_NEW\n",
            "HNZC5YSDIE7NXRUMF7LXGYJWBA\nhello\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
