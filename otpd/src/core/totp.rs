//! RFC 6238 codes (through totp-rs) and the single-use rule.
use common::config::{Algorithm, TotpConfig};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct TotpParams {
    pub algorithm: Algorithm,
    pub digits: u32,
    pub period: u64,
    pub skew: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The code matches this step, which was never used.
    Valid {
        step: i64,
    },
    /// The code matches a step at or below the last accepted one.
    Replayed,
    Wrong,
}

/// How far an authenticator's clock may be off for a refused code to be
/// diagnosed as clock drift: ten minutes either side of the server's time,
/// and never more than [`DRIFT_SEARCH_STEPS`] steps (the search costs one
/// HMAC per step, paid only by codes the window refused).
pub const DRIFT_SEARCH_SECS: i64 = 600;
pub const DRIFT_SEARCH_STEPS: i64 = 20;

/// A refused code that matches a step outside the window: the
/// authenticator's clock is off by about `secs` (positive: ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    pub step: i64,
    pub secs: i64,
}

impl From<&TotpConfig> for TotpParams {
    fn from(c: &TotpConfig) -> Self {
        TotpParams { algorithm: c.algorithm, digits: c.digits, period: c.period, skew: c.skew }
    }
}

impl TotpParams {
    /// Key length matching the hash's output (RFC 4226 §4 asks for at least 160 bits).
    pub fn secret_len(&self) -> usize {
        match self.algorithm {
            Algorithm::SHA1 => 20,
            Algorithm::SHA256 => 32,
            Algorithm::SHA512 => 64,
        }
    }

    fn engine(&self, secret: &[u8], issuer: Option<&str>, account: &str) -> totp_rs::TOTP {
        let alg = match self.algorithm {
            Algorithm::SHA1 => totp_rs::Algorithm::SHA1,
            Algorithm::SHA256 => totp_rs::Algorithm::SHA256,
            Algorithm::SHA512 => totp_rs::Algorithm::SHA512,
        };
        totp_rs::TOTP::new_unchecked(
            alg,
            self.digits as usize,
            0,
            self.period,
            secret.to_vec(),
            issuer.map(String::from),
            account.to_string(),
        )
    }

    pub fn step_of(&self, unix: i64) -> i64 {
        unix.div_euclid(self.period as i64)
    }

    pub fn code_at_step(&self, secret: &[u8], step: i64) -> String {
        self.engine(secret, None, "").generate((step.max(0) as u64) * self.period)
    }

    /// Checks `code` against every step in the window, always computing all
    /// of them and comparing in constant time, so timing reveals neither
    /// which step matched nor how many digits were right.
    pub fn check(&self, secret: &[u8], code: &str, now: i64, last_step: Option<i64>) -> Check {
        let current = self.step_of(now);
        let skew = self.skew as i64;
        let mut matched: Option<i64> = None;
        for step in (current - skew)..=(current + skew) {
            let expected = self.code_at_step(secret, step);
            let eq: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            if eq && matched.is_none() {
                matched = Some(step);
            }
        }
        match matched {
            Some(step) if last_step.is_some_and(|last| step <= last) => Check::Replayed,
            Some(step) => Check::Valid { step },
            None => Check::Wrong,
        }
    }

    /// The steps either side of now that [`TotpParams::drift`] searches.
    fn drift_reach(&self) -> i64 {
        (DRIFT_SEARCH_SECS / (self.period.max(1) as i64)).min(DRIFT_SEARCH_STEPS)
    }

    /// For a code the window refused ([`Check::Wrong`]): the step it
    /// matches outside the window but within [`DRIFT_SEARCH_SECS`] of
    /// `now`, if any. It diagnoses, never accepts. As in
    /// [`TotpParams::check`], every step of the reach is computed and
    /// compared in constant time.
    pub fn drift(&self, secret: &[u8], code: &str, now: i64) -> Option<Drift> {
        let current = self.step_of(now);
        let (skew, reach) = (self.skew as i64, self.drift_reach());
        let mut matched: Option<i64> = None;
        for offset in -reach..=reach {
            // The window's steps were checked already (and the skip does
            // not depend on the code).
            if offset.abs() <= skew {
                continue;
            }
            let expected = self.code_at_step(secret, current + offset);
            let eq: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            if eq && matched.is_none() {
                matched = Some(offset);
            }
        }
        matched.map(|offset| Drift { step: current + offset, secs: offset * self.period as i64 })
    }

    pub fn uri(&self, secret: &[u8], issuer: &str, account: &str) -> String {
        self.engine(secret, Some(issuer), account).get_url()
    }
}

/// RFC 4226 §5.3: HMAC-SHA1 over the big-endian counter, dynamic
/// truncation, `digits` decimal digits (6 to 8) with leading zeros.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mut mac) = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret) else { return String::new() };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[offset] & 0x7f, h[offset + 1], h[offset + 2], h[offset + 3]]);
    let digits = digits.clamp(6, 8);
    format!("{:0width$}", bin % 10u32.pow(digits), width = digits as usize)
}

/// The counter in `from..=from+window` whose code is `code`, if any. Every
/// counter is computed and compared in constant time (as [`TotpParams::check`]).
pub fn hotp_find(secret: &[u8], code: &str, digits: u32, from: u64, window: u64) -> Option<u64> {
    let mut matched = None;
    for c in from..=from.saturating_add(window) {
        let eq: bool = hotp(secret, c, digits).as_bytes().ct_eq(code.as_bytes()).into();
        if eq && matched.is_none() {
            matched = Some(c);
        }
    }
    matched
}

pub fn base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(algorithm: Algorithm) -> TotpParams {
        TotpParams { algorithm, digits: 8, period: 30, skew: 1 }
    }

    /// RFC 6238 Appendix B: the same times for each hash, with the seeds
    /// the appendix specifies (the ASCII digits repeated to the hash size).
    #[test]
    fn rfc6238_appendix_b() {
        let seed20 = b"12345678901234567890".to_vec();
        let seed32 = b"12345678901234567890123456789012".to_vec();
        let seed64 = b"1234567890123456789012345678901234567890123456789012345678901234".to_vec();
        let table: [(i64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1111111109, "07081804", "68084774", "25091201"),
            (1111111111, "14050471", "67062674", "99943326"),
            (1234567890, "89005924", "91819424", "93441116"),
            (2000000000, "69279037", "90698825", "38618901"),
            (20000000000, "65353130", "77737706", "47863826"),
        ];
        for (t, sha1, sha256, sha512) in table {
            for (alg, seed, want) in [
                (Algorithm::SHA1, &seed20, sha1),
                (Algorithm::SHA256, &seed32, sha256),
                (Algorithm::SHA512, &seed64, sha512),
            ] {
                let p = params(alg);
                assert_eq!(p.code_at_step(seed, p.step_of(t)), want, "{alg:?} at {t}");
            }
        }
    }

    /// RFC 4226 Appendix D: the secret "12345678901234567890", counters 0 to 9.
    #[test]
    fn rfc4226_appendix_d() {
        let secret = b"12345678901234567890";
        let want = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];
        for (c, w) in want.iter().enumerate() {
            assert_eq!(hotp(secret, c as u64, 6), *w, "counter {c}");
        }
        // Truncated values of the appendix, as 8 digits (the same number mod 10^8).
        assert_eq!(hotp(secret, 0, 8), "84755224");
        assert_eq!(hotp(secret, 9, 8), "45520489");
        assert_eq!(hotp_find(secret, "969429", 6, 0, 10), Some(3));
        assert_eq!(hotp_find(secret, "969429", 6, 4, 10), None, "behind the counter");
        assert_eq!(hotp_find(secret, "520489", 6, 0, 8), None, "beyond the window");
        assert_eq!(hotp_find(secret, "520489", 6, 0, 9), Some(9));
    }

    #[test]
    fn window_and_replay() {
        let p = TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 };
        let secret = [9u8; 20];
        let now = 1_700_000_000;
        let s = p.step_of(now);
        let code = |step| p.code_at_step(&secret, step);
        assert_eq!(p.check(&secret, &code(s), now, None), Check::Valid { step: s });
        assert_eq!(p.check(&secret, &code(s - 1), now, None), Check::Valid { step: s - 1 });
        assert_eq!(p.check(&secret, &code(s + 1), now, None), Check::Valid { step: s + 1 });
        assert_eq!(p.check(&secret, &code(s - 2), now, None), Check::Wrong);
        assert_eq!(p.check(&secret, &code(s + 2), now, None), Check::Wrong);
        assert_eq!(p.check(&secret, &code(s), now, Some(s)), Check::Replayed);
        assert_eq!(p.check(&secret, &code(s - 1), now, Some(s)), Check::Replayed);
        assert_eq!(p.check(&secret, &code(s + 1), now, Some(s)), Check::Valid { step: s + 1 });
        // After the clock steps back a whole window, the code that was used
        // is still a replay.
        assert_eq!(p.check(&secret, &code(s), now - 30, Some(s)), Check::Replayed);
        assert_eq!(p.check(&secret, "", now, None), Check::Wrong);
    }

    /// Codes of steps outside the window are diagnosed up to ten minutes
    /// either side, never accepted; beyond that they are plain wrong codes.
    #[test]
    fn drift_outside_the_window_up_to_ten_minutes() {
        let p = TotpParams { algorithm: Algorithm::SHA1, digits: 6, period: 30, skew: 1 };
        let secret = [7u8; 20];
        let now = 1_700_000_010;
        let s = p.step_of(now);
        let code = |step| p.code_at_step(&secret, step);
        for k in [-20, -10, -2, 2, 10, 20] {
            assert_eq!(p.check(&secret, &code(s + k), now, None), Check::Wrong, "{k}");
            assert_eq!(p.drift(&secret, &code(s + k), now), Some(Drift { step: s + k, secs: 30 * k }), "{k}");
        }
        for k in [-21, 21, 40] {
            assert_eq!(p.drift(&secret, &code(s + k), now), None, "beyond ten minutes: {k}");
        }
        assert_eq!(p.drift(&secret, "000000x", now), None);
        // A longer period searches fewer steps: still ten minutes.
        let slow = TotpParams { period: 60, ..p.clone() };
        let t = slow.step_of(now);
        assert_eq!(slow.drift(&secret, &slow.code_at_step(&secret, t + 10), now).map(|d| d.secs), Some(600));
        assert_eq!(slow.drift(&secret, &slow.code_at_step(&secret, t + 11), now), None);
    }

    #[test]
    fn uri_carries_parameters() {
        let p = TotpParams { algorithm: Algorithm::SHA256, digits: 8, period: 60, skew: 1 };
        let uri = p.uri(&[1u8; 32], "host one", "alice");
        assert!(uri.starts_with("otpauth://totp/host%20one:alice?secret="), "{uri}");
        assert!(uri.contains("digits=8") && uri.contains("algorithm=SHA256") && uri.contains("period=60"), "{uri}");
        assert!(uri.contains(&base32(&[1u8; 32])));
    }
}
