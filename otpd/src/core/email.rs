//! Emailed one-time codes: generation, keyed hashing, addresses, the
//! request rules (re-send the same code, one new code per interval, hourly
//! caps) and verification. Like `auth`, every function here runs inside one
//! database transaction; the mail itself leaves through the outbox
//! (`crate::notify::mail`), never inside a login conversation.
use crate::core::audit::audit_method;
use crate::core::context::LoginContext;
use crate::core::policy::Policy;
use crate::store::model::{AuditMethod, AuditResult};
use crate::store::model::{EmailCode, MailCount, Store, StoreError};
use common::config::EmailConfig;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A uniformly random code of `digits` digits from the OS CSPRNG
/// (`gen_range` rejects out-of-range samples: no modulo bias).
pub fn generate_code(digits: u32) -> String {
    let n: u64 = rand::rngs::OsRng.gen_range(0..10u64.pow(digits));
    format!("{n:0width$}", width = digits as usize)
}

/// The stored form of a code: HMAC-SHA256 under a key derived from the key
/// file, over user, machine and code, so a hash is useless elsewhere.
pub fn code_hash(key: &[u8; 32], user: &str, machine: &str, code: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_mac());
    for part in [b"otpd email code v1".as_slice(), user.as_bytes(), machine.as_bytes(), code.as_bytes()] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

// HMAC accepts keys of any length; this cannot happen.
fn unreachable_mac() -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("HMAC takes any key length")
}

/// Validates an address strictly: ASCII only (no look-alike Unicode), no
/// whitespace or control characters (no header injection), a dotted domain.
/// Returns it with the domain lower-cased.
pub fn validate_address(s: &str) -> Result<String, &'static str> {
    if s.len() > 254 {
        return Err("address too long");
    }
    if !s.is_ascii() {
        return Err("address must be plain ASCII");
    }
    if s.chars().any(|c| c.is_ascii_control() || c.is_ascii_whitespace()) {
        return Err("address contains spaces or control characters");
    }
    let (local, domain) = s.rsplit_once('@').ok_or("address has no @")?;
    if local.is_empty() || local.len() > 64 || local.contains('@') || local.contains('"') {
        return Err("invalid local part");
    }
    if !local.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err("invalid local part");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    {
        return Err("invalid domain");
    }
    let out = format!("{local}@{}", domain.to_ascii_lowercase());
    // lettre must agree, since it will build the message.
    out.parse::<lettre::Address>().map_err(|_| "invalid address")?;
    Ok(out)
}

/// "o***r@example.org": enough for the user to recognise (and to tell two
/// addresses at one domain apart), not enough to harvest. A local part of
/// one or two characters keeps only the first, so none is shown whole.
pub fn mask(addr: &str) -> String {
    let Some((local, domain)) = addr.rsplit_once('@') else { return "***".into() };
    let chars: Vec<char> = local.chars().collect();
    match chars.as_slice() {
        [] => format!("***@{domain}"),
        [first] | [first, _] => format!("{first}***@{domain}"),
        [first, .., last] => format!("{first}***{last}@{domain}"),
    }
}

/// Same mailbox? Compared case-insensitively: local parts are case-sensitive
/// in theory, but no real mail system treats them so and users type either.
pub fn same_address(a: &str, b: &str) -> bool {
    match (validate_address(a), validate_address(b)) {
        (Ok(x), Ok(y)) => x.eq_ignore_ascii_case(&y),
        _ => false,
    }
}

/// The address on record when the admin set none: a map file ("user
/// address" per line) or the GECOS field, read from /etc/passwd directly
/// rather than through NSS (no lookups that could recurse into a module
/// served by this daemon).
pub fn directory_address(directory: &str, user: &str) -> Option<String> {
    if let Some(path) = directory.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).ok()?;
        return text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                l.split_once(char::is_whitespace).filter(|(u, _)| *u == user).map(|(_, a)| a.trim().to_string())
            })
            .and_then(|a| validate_address(&a).ok());
    }
    if directory == "gecos" {
        let text = std::fs::read_to_string("/etc/passwd").ok()?;
        let gecos = text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&user)).then(|| f.get(4).copied().unwrap_or("").to_string())
        })?;
        return gecos.split(',').find_map(|part| validate_address(part.trim()).ok());
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A message was queued; `resent` when it carries the still-valid code.
    Queued { masked: String, expires_at: i64, resent: bool },
    /// A new code may be requested at `next_at`.
    TooSoon { next_at: i64 },
    /// The same code was re-sent too often this hour.
    ResendCapped,
    /// Hourly cap for the address or the whole daemon reached.
    Capped,
}

/// Where a request came from, for the mail and the request list: "service
/// sshd from 192.0.2.7", with ", terminal pts/3" only when PAM_TTY names a
/// terminal (sshd sets it to "ssh", cron to "cron": no terminal at all).
pub fn origin(ctx: &LoginContext) -> String {
    let from = format!("service {} from {}", ctx.service, ctx.rhost.as_deref().unwrap_or("this machine"));
    match ctx.tty.as_deref().filter(|t| is_terminal(t)) {
        Some(tty) => format!("{from}, terminal {tty}"),
        None => from,
    }
}

/// A terminal device name as PAM_TTY holds it: /dev/…, pts/N, ttyN, console.
fn is_terminal(tty: &str) -> bool {
    let name = tty.strip_prefix("/dev/").unwrap_or(tty);
    let pts = name.strip_prefix("pts/").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let tty_n = name.strip_prefix("tty").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric()));
    tty.starts_with("/dev/") || pts || tty_n || name == "console"
}

fn valid_code(c: &EmailCode, now: i64) -> bool {
    c.used_at.is_none() && c.expires_at > now && c.code_enc.is_some()
}

/// Why no emailed code can work for this user on this machine right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoUsableCode {
    /// When the last code was used, if it was (otherwise it expired or was replaced).
    pub used_at: Option<i64>,
    pub expired_at: i64,
    /// When a new code may be requested (`new_code_interval` after the last one).
    pub next_at: i64,
}

/// `Some` when no valid unused code exists for an emailed-code user on this
/// machine and the interval forbids a new one: nothing the user types can
/// work, so the conversation should say so and end rather than ask for a
/// passcode. A TOTP user (emailed codes as fallback) still has the app.
pub fn no_usable_code(
    store: &mut dyn Store,
    p: &Policy,
    user: &str,
    machine: &str,
    now: i64,
) -> Result<Option<NoUsableCode>, StoreError> {
    if !matches!(store.user(user)?, Some(u) if u.method == common::proto::Method::Email) {
        return Ok(None);
    }
    let Some(last) = store.latest_email_code(user, Some(machine))? else { return Ok(None) };
    let next_at = last.created_at + p.email.new_code_interval.as_secs() as i64;
    if valid_code(&last, now) || next_at <= now {
        return Ok(None);
    }
    Ok(Some(NoUsableCode { used_at: last.used_at, expired_at: last.expires_at, next_at }))
}

/// Queues the still-valid code again, or a new one if the interval allows.
pub fn request_code(
    store: &mut dyn Store,
    p: &Policy,
    ctx: &LoginContext,
    address: &str,
    emergency: bool,
    now: i64,
) -> Result<RequestOutcome, StoreError> {
    let cfg: &EmailConfig = &p.email;
    let hour_ago = now - 3600;
    let latest = store.latest_email_code(&ctx.user, Some(&ctx.machine))?;
    let caps_ok = |store: &mut dyn Store| -> Result<bool, StoreError> {
        Ok(store.count_mail_since(MailCount::Address(address), hour_ago)? < cfg.per_address_per_hour as u64
            && store.count_mail_since(MailCount::All, hour_ago)? < cfg.global_per_hour as u64)
    };
    if let Some(code) = latest.as_ref().filter(|c| valid_code(c, now) && c.address == address) {
        if store.count_mail_since(MailCount::Code(code.id), hour_ago)? > cfg.resends_per_hour as u64 {
            audit_method(store, p, ctx, now, AuditMethod::Email, AuditResult::Deny, "re-send cap reached")?;
            return Ok(RequestOutcome::ResendCapped);
        }
        if !caps_ok(store)? {
            audit_method(store, p, ctx, now, AuditMethod::Email, AuditResult::Deny, "hourly mail cap reached")?;
            return Ok(RequestOutcome::Capped);
        }
        store.enqueue_mail(code.id, address, now)?;
        audit_method(
            store,
            p,
            ctx,
            now,
            AuditMethod::Email,
            AuditResult::CodeResent,
            &format!("to {}", mask(address)),
        )?;
        return Ok(RequestOutcome::Queued { masked: mask(address), expires_at: code.expires_at, resent: true });
    }
    if let Some(prev) = &latest {
        let next_at = prev.created_at + cfg.new_code_interval.as_secs() as i64;
        if next_at > now {
            audit_method(
                store,
                p,
                ctx,
                now,
                AuditMethod::Email,
                AuditResult::Deny,
                "new code requested within the interval",
            )?;
            return Ok(RequestOutcome::TooSoon { next_at });
        }
    }
    if !caps_ok(store)? {
        audit_method(store, p, ctx, now, AuditMethod::Email, AuditResult::Deny, "hourly mail cap reached")?;
        return Ok(RequestOutcome::Capped);
    }
    if let Some(prev) = latest.filter(|c| c.code_enc.is_some()) {
        store.retire_email_code(prev.id, None)?;
    }
    let code = generate_code(cfg.digits);
    let expires_at = now + cfg.code_ttl.as_secs() as i64;
    let id = store.insert_email_code(&EmailCode {
        id: 0,
        user: ctx.user.clone(),
        machine: ctx.machine.clone(),
        address: address.to_string(),
        code_hash: code_hash(p.crypto.email_key(), &ctx.user, &ctx.machine, &code),
        code_enc: Some(p.crypto.seal(&code_aad(&ctx.user), code.as_bytes())),
        created_at: now,
        expires_at,
        used_at: None,
        origin: origin(ctx),
        emergency,
    })?;
    store.enqueue_mail(id, address, now)?;
    let what = if emergency { "emergency code queued" } else { "code queued" };
    audit_method(
        store,
        p,
        ctx,
        now,
        AuditMethod::Email,
        AuditResult::CodeSent,
        &format!("{what} to {}", mask(address)),
    )?;
    Ok(RequestOutcome::Queued { masked: mask(address), expires_at, resent: false })
}

/// Associated data for encrypted email codes (distinct from TOTP secrets).
pub fn code_aad(user: &str) -> String {
    format!("email-code:{user}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    Valid,
    Wrong,
    Expired,
    Used,
    OtherMachine,
    NoCode,
}

/// Checks an emailed code and, if valid, consumes it. Expiry is decided
/// inside the transaction, against the same `now` as everything else.
pub fn check_code(
    store: &mut dyn Store,
    p: &Policy,
    user: &str,
    machine: &str,
    answer: &str,
    now: i64,
) -> Result<CodeCheck, StoreError> {
    let Some(code) = store.latest_email_code(user, Some(machine))? else {
        return Ok(other_machine(store, p, user, machine, answer)?.unwrap_or(CodeCheck::NoCode));
    };
    let expected = &code.code_hash;
    let given = code_hash(p.crypto.email_key(), user, machine, answer);
    if !bool::from(expected.ct_eq(&given)) {
        return Ok(other_machine(store, p, user, machine, answer)?.unwrap_or(CodeCheck::Wrong));
    }
    if code.used_at.is_some() {
        return Ok(CodeCheck::Used);
    }
    if code.expires_at <= now {
        store.retire_email_code(code.id, None)?;
        return Ok(CodeCheck::Expired);
    }
    // Only the call that marks the code used may accept it: a concurrent
    // check (on another server) that read it unused too gets Used.
    if !store.retire_email_code(code.id, Some(now))? {
        return Ok(CodeCheck::Used);
    }
    Ok(CodeCheck::Valid)
}

fn other_machine(
    store: &mut dyn Store,
    p: &Policy,
    user: &str,
    machine: &str,
    answer: &str,
) -> Result<Option<CodeCheck>, StoreError> {
    Ok(store
        .latest_email_code(user, None)?
        .filter(|c| c.machine != machine)
        .filter(|c| bool::from(c.code_hash.ct_eq(&code_hash(p.crypto.email_key(), user, &c.machine, answer))))
        .map(|_| CodeCheck::OtherMachine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_uniform_digits() {
        let mut counts = [0u32; 10];
        for _ in 0..2000 {
            let c = generate_code(8);
            assert_eq!(c.len(), 8);
            for d in c.bytes() {
                counts[(d - b'0') as usize] += 1;
            }
        }
        // 16000 digits: each should be near 1600; a biased generator would skew.
        assert!(counts.iter().all(|&n| (1350..1850).contains(&n)), "{counts:?}");
    }

    #[test]
    fn hash_binds_user_and_machine() {
        let k = [1u8; 32];
        let h = code_hash(&k, "bob", "m1", "12345678");
        assert_eq!(h, code_hash(&k, "bob", "m1", "12345678"));
        assert_ne!(h, code_hash(&k, "bob", "m2", "12345678"));
        assert_ne!(h, code_hash(&k, "eve", "m1", "12345678"));
        assert_ne!(h, code_hash(&[2u8; 32], "bob", "m1", "12345678"));
        // Length-prefixed: no ambiguity between ("ab","c") and ("a","bc").
        assert_ne!(code_hash(&k, "ab", "c", "1"), code_hash(&k, "a", "bc", "1"));
    }

    #[test]
    fn addresses() {
        assert_eq!(validate_address("Bob.Smith+otp@Example.ORG"), Ok("Bob.Smith+otp@example.org".into()));
        for bad in [
            "bob@example.org\r\nBcc: eve@evil.test",
            "bob@example.org\nX: y",
            "bob @example.org",
            "bob@localhost",
            "bob@exаmple.org", // Cyrillic а
            "bоb@example.org", // Cyrillic о
            "@example.org",
            "bob@",
            "bob",
            "a..b@example.org",
            "\"bob\"@example.org",
            "bob@-example.org",
            "bob@example..org",
            &format!("{}@example.org", "a".repeat(65)),
            &format!("bob@{}.org", "a".repeat(250)),
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(mask("bob@example.org"), "b***b@example.org");
        assert_eq!(mask("oliver@example.org"), "o***r@example.org");
        assert_ne!(mask("oliver@example.org"), mask("oscar.w@example.org"));
        assert_eq!(mask("jo@example.org"), "j***@example.org");
        assert_eq!(mask("j@example.org"), "j***@example.org");
        assert!(same_address("bob@EXAMPLE.org", "bob@example.org"));
        assert!(same_address("Bob@example.org", "bob@example.org"));
        assert!(!same_address("bob@example.org", "bob@example.org.evil.test"));
        assert!(!same_address("bob@example.org\n", "bob@example.org"));
    }

    #[test]
    fn origin_names_a_terminal_only_when_there_is_one() {
        let ctx = |tty: Option<&str>, rhost: Option<&str>| LoginContext {
            user: "bob".into(),
            service: "sshd".into(),
            rhost: rhost.map(String::from),
            tty: tty.map(String::from),
            ..Default::default()
        };
        assert_eq!(origin(&ctx(Some("ssh"), Some("192.0.2.7"))), "service sshd from 192.0.2.7");
        assert_eq!(origin(&ctx(None, None)), "service sshd from this machine");
        for tty in ["pts/3", "/dev/pts/3", "tty1", "/dev/tty1", "ttyS0", "console"] {
            assert_eq!(origin(&ctx(Some(tty), None)), format!("service sshd from this machine, terminal {tty}"));
        }
        for not_a_tty in ["ssh", "cron", ":0", "pts/", "tty", "pts/x"] {
            assert!(!origin(&ctx(Some(not_a_tty), None)).contains("terminal"), "{not_a_tty}");
        }
    }

    #[test]
    fn directory_file_and_gecos() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("emails");
        std::fs::write(&f, "# comment\nbob  bob@example.org\ncarol not-an-address\n").unwrap();
        let src = format!("file:{}", f.display());
        assert_eq!(directory_address(&src, "bob"), Some("bob@example.org".into()));
        assert_eq!(directory_address(&src, "carol"), None);
        assert_eq!(directory_address(&src, "dave"), None);
        assert_eq!(directory_address("none", "bob"), None);
    }
}
