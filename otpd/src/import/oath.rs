//! `otpctl import oath`: users of pam_oath (`/etc/users.oath`, liboath's
//! UsersFile format) become activated users here with the same secret, so
//! their tokens and apps keep working.
//!
//! A line is `TYPE USER PIN HEXSECRET [COUNTER [LASTOTP [TIME]]]`, TYPE one of
//! `HOTP`, `HOTP/E[/6|7|8]` (counter based) or `HOTP/T30[/6|7|8]`,
//! `HOTP/T60[/6|7|8]` (time based, 30 or 60 s steps). pam_oath rewrites the
//! line after each login with the counter it matched, that code and the
//! local time of the login.
//!
//! PINs: `-` (none) and `+` (checked by another module) are imported. A
//! line with a PIN is refused: pam_otp asks for no PIN, so importing it would
//! quietly drop a factor; such users are enrolled the ordinary way.
use crate::core::context::valid_user_name;
use crate::core::policy::Policy;
use crate::store::model::{Store, StoreError, UserRecord};
use common::proto::Method;

/// One importable line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OathEntry {
    pub line: usize,
    pub user: String,
    pub method: Method,
    pub digits: u32,
    /// TOTP step in seconds (0 for HOTP).
    pub period: u64,
    pub secret: Vec<u8>,
    pub counter: u64,
    pub last_otp: Option<String>,
    /// Unix seconds of the last login pam_oath recorded.
    pub last_time: Option<i64>,
}

/// Longest counter imported: resync looks 1000 further and counters are
/// stored as signed 64-bit numbers.
pub(crate) const MAX_COUNTER: u64 = (i64::MAX as u64) - 10_000;

fn parse_type(t: &str) -> Option<(Method, u64, u32)> {
    let (method, period, rest) = if let Some(r) = t.strip_prefix("HOTP/T30") {
        (Method::Totp, 30, r)
    } else if let Some(r) = t.strip_prefix("HOTP/T60") {
        (Method::Totp, 60, r)
    } else if let Some(r) = t.strip_prefix("HOTP/E") {
        (Method::Hotp, 0, r)
    } else if t == "HOTP" {
        (Method::Hotp, 0, "")
    } else {
        return None;
    };
    let digits = match rest {
        "" | "/6" => 6,
        "/7" => 7,
        "/8" => 8,
        _ => return None,
    };
    Some((method, period, digits))
}

/// pam_oath's `%Y-%m-%dT%H:%M:%SL`: local time of the host that wrote it.
pub fn parse_local_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix('L')?;
    let (date, time) = s.split_once('T')?;
    let num = |x: &str| -> Option<i32> { x.bytes().all(|b| b.is_ascii_digit()).then(|| x.parse().ok()).flatten() };
    let d: Vec<i32> = date.split('-').map(num).collect::<Option<_>>()?;
    let t: Vec<i32> = time.split(':').map(num).collect::<Option<_>>()?;
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else { return None };
    if !(1970..=9999).contains(y) || !(1..=12).contains(mo) || !(1..=31).contains(da) || *h > 23 || *mi > 59 || *se > 60
    {
        return None;
    }
    // SAFETY: a zeroed tm is a valid value; mktime only reads and normalises it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = *da;
    tm.tm_hour = *h;
    tm.tm_min = *mi;
    tm.tm_sec = *se;
    tm.tm_isdst = -1;
    // SAFETY: tm is a valid, exclusively borrowed struct.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t as i64)
}

/// The lines to import, and a report line for every line that is not
/// imported (comments and blank lines excepted). Never echoes a secret.
pub fn parse_oath(text: &str) -> (Vec<OathEntry>, Vec<String>) {
    let (mut entries, mut problems) = (Vec::<OathEntry>::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let fields: Vec<&str> = raw.split_whitespace().collect();
        let Some(first) = fields.first() else { continue };
        if first.starts_with('#') {
            continue;
        }
        let mut skip = |why: String| problems.push(format!("line {line}: skipped: {why}"));
        let Some((method, period, digits)) = parse_type(first) else {
            skip(format!(
                "unknown token type {:?} (HOTP, HOTP/E[/digits], HOTP/T30[/digits], HOTP/T60[/digits])",
                first
            ));
            continue;
        };
        if !(4..=7).contains(&fields.len()) {
            skip(format!("{} fields; expected TYPE USER PIN SECRET [COUNTER [LASTOTP [TIME]]]", fields.len()));
            continue;
        }
        let user = fields[1];
        if !valid_user_name(user) {
            skip("not a valid user name".into());
            continue;
        }
        match fields[2] {
            "-" | "+" => {}
            _ => {
                skip(format!(
                    "{user} has a PIN, which pam_otp does not ask for; enroll {user} with `otpctl user enable` instead"
                ));
                continue;
            }
        }
        let secret = match data_encoding::HEXLOWER_PERMISSIVE.decode(fields[3].as_bytes()) {
            Ok(s) if (16..=64).contains(&s.len()) => s,
            Ok(s) => {
                skip(format!(
                    "{user}'s secret is {} bytes; 16 to 64 are imported (RFC 4226 asks for 128 bits)",
                    s.len()
                ));
                continue;
            }
            Err(_) => {
                skip(format!("{user}'s secret is not hexadecimal"));
                continue;
            }
        };
        let counter = match fields.get(4).map(|c| c.parse::<u64>()) {
            None => 0,
            Some(Ok(c)) if c <= MAX_COUNTER => c,
            Some(_) => {
                skip(format!("{user}'s counter is not a number (0 to {MAX_COUNTER})"));
                continue;
            }
        };
        let last_otp = fields.get(5).map(|s| s.to_string());
        if last_otp.as_ref().is_some_and(|o| o.is_empty() || !o.bytes().all(|b| b.is_ascii_digit())) {
            skip(format!("{user}'s last code is not a number"));
            continue;
        }
        let last_time = match fields.get(6).map(|t| parse_local_time(t)) {
            None => None,
            Some(Some(t)) => Some(t),
            Some(None) => {
                skip(format!("{user}'s time of last use is not YYYY-MM-DDTHH:MM:SSL"));
                continue;
            }
        };
        if let Some(first) = entries.iter().find(|e| e.user == user) {
            skip(format!("{user} already has line {} (pam_oath uses the first one)", first.line));
            continue;
        }
        entries.push(OathEntry {
            line,
            user: user.into(),
            method,
            digits,
            period,
            secret,
            counter,
            last_otp,
            last_time,
        });
    }
    (entries, problems)
}

/// The first HOTP counter not yet used: pam_oath records the counter it
/// matched (with that code), so after a login the next one is counter + 1.
pub fn next_counter(e: &OathEntry) -> u64 {
    e.counter + u64::from(e.last_otp.is_some())
}

/// The last TOTP step that must not be accepted again: the step of the code
/// pam_oath accepted last (found near its recorded time), and never less
/// than the step of that time. With a code but no time, every step up to the
/// import's own is treated as used (the user waits for the next code).
pub fn last_step(p: &Policy, e: &OathEntry, now: i64) -> Option<i64> {
    let period = p.totp.period as i64;
    let otp = e.last_otp.as_deref()?;
    let Some(t) = e.last_time else { return Some(now.div_euclid(period)) };
    let at = t.div_euclid(period);
    let params = crate::core::totp::TotpParams { digits: e.digits, ..p.totp.clone() };
    // pam_oath's window is the admin's choice; 100 steps either side covers any sane one.
    // The match nearest the recorded time: another step showing the same
    // digits by chance is much less likely to be that close.
    let found =
        (at - 100..=at + 100).filter(|&s| params.code_at_step(&e.secret, s) == otp).min_by_key(|s| (s - at).abs());
    Some(found.map_or(at, |s| s.max(at)))
}

/// What the import did (or, dry, would do) with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Imported,
    /// Already imported with this secret; counter or last step raised if the file is ahead.
    Unchanged,
    Skipped(String),
}

/// Imports every entry in the caller's transaction; `uids` resolves names
/// (done by the caller before the transaction: NSS is not called inside it).
pub fn import(
    st: &mut dyn Store,
    p: &Policy,
    entries: &[OathEntry],
    uids: &[Option<u32>],
    dry_run: bool,
    now: i64,
) -> Result<Vec<Outcome>, StoreError> {
    let mut out = Vec::new();
    for (e, uid) in entries.iter().zip(uids) {
        if e.method == Method::Totp && e.period != p.totp.period {
            out.push(Outcome::Skipped(format!(
                "{} uses {} s steps and this otpd {} s (totp.period)",
                e.user, e.period, p.totp.period
            )));
            continue;
        }
        let existing = st.user(&e.user)?;
        if let Some(other) = uid.map(|u| st.user_by_uid(u)).transpose()?.flatten() {
            if other.enabled && other.name != e.user {
                out.push(Outcome::Skipped(format!(
                    "{} is the same account as {}, which is already enabled",
                    e.user, other.name
                )));
                continue;
            }
        }
        let hotp_counter = (e.method == Method::Hotp).then(|| next_counter(e) as i64);
        let last = if e.method == Method::Totp { last_step(p, e, now) } else { None };
        if let Some(x) = existing.as_ref().filter(|x| x.enabled) {
            let same = x.method == e.method
                && x.secret.as_deref().and_then(|s| p.crypto.open(&x.name, s)).is_some_and(|s| s == e.secret);
            if !same {
                out.push(Outcome::Skipped(format!(
                    "{} is already enabled here (method {}) with another secret; `otpctl user disable {}` first to replace it",
                    e.user, x.method, e.user
                )));
                continue;
            }
            // Same token: the file may have seen logins since the last
            // import; save_user only ever raises the counter and the step.
            if !dry_run {
                let mut y = x.clone();
                y.hotp_counter = hotp_counter;
                y.last_step = last;
                st.save_user(&y)?;
            }
            out.push(Outcome::Unchanged);
            continue;
        }
        // Kept from a disabled record of that name: its address, last
        // login, creation time and internal password.
        let base = existing.unwrap_or_else(|| UserRecord::new(&e.user, None, now));
        let mut rec = UserRecord {
            uid: uid.or(base.uid),
            method: e.method,
            enabled: true,
            secret: Some(p.crypto.seal(&e.user, &e.secret)),
            activated_at: Some(now),
            last_step: last,
            updated_at: now,
            hotp_counter,
            digits: (e.method == Method::Hotp || e.digits != p.totp.digits).then_some(e.digits),
            ..base
        };
        rec.clear_lockout();
        if !dry_run {
            st.save_user(&rec)?;
        }
        out.push(Outcome::Imported);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "3132333435363738393031323334353637383930";

    #[test]
    fn parses_pam_oath_lines_and_reports_the_rest() {
        let text = format!(
            "# comment\n\nHOTP/T30\talice\t-\t{SECRET}\nHOTP bob + {SECRET} 7 399871 2026-01-02T03:04:05L\n\
             HOTP/E/8 carol - {SECRET} 3\nHOTP/T30 dave 1234 {SECRET}\nTOTP erin - {SECRET}\n\
             HOTP frank - zz\nHOTP gina - {SECRET} -1\nHOTP alice - {SECRET}\nHOTP/T30/9 hal - {SECRET}\n\
             HOTP ivy - 3132\nHOTP jo - {SECRET} 1 2 3 4\nHOTP kim - {SECRET} 1 1 yesterday\n"
        );
        let (entries, problems) = parse_oath(&text);
        let names: Vec<_> = entries.iter().map(|e| (e.line, e.user.as_str(), e.method, e.digits)).collect();
        assert_eq!(names, [(3, "alice", Method::Totp, 6), (4, "bob", Method::Hotp, 6), (5, "carol", Method::Hotp, 8)]);
        assert_eq!(entries[1].counter, 7);
        assert_eq!(next_counter(&entries[1]), 8, "pam_oath records the counter it matched");
        assert_eq!(next_counter(&entries[2]), 3, "never used: the recorded counter is the next one");
        assert!(entries[1].last_time.is_some());
        let lines: Vec<_> = problems.iter().map(|p| p.split(':').next().unwrap_or_default().to_string()).collect();
        assert_eq!(
            lines,
            ["line 6", "line 7", "line 8", "line 9", "line 10", "line 11", "line 12", "line 13", "line 14"]
        );
        assert!(problems[0].contains("PIN"), "{problems:?}");
        assert!(problems.iter().all(|p| !p.contains(SECRET)), "no secret in a report");
    }

    #[test]
    fn local_time_round_trips() {
        let t = parse_local_time("2026-01-02T03:04:05L").unwrap();
        assert!((t - 1_767_322_245).abs() <= 14 * 3600, "{t}");
        assert_eq!(parse_local_time("2026-13-02T03:04:05L"), None);
        assert_eq!(parse_local_time("2026-01-02T03:04:05"), None);
    }
}
