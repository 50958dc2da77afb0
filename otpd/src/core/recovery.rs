//! Recovery codes (`otpctl user recovery-codes USER`): single-use codes a
//! user types at the passcode prompt when the authenticator is lost.
//!
//! A code is 10 letters of an alphabet without look-alikes (no i, l, o),
//! shown as `xxxxx-xxxxx`: it has no digits, so it is never mistaken for a
//! TOTP code (6–8 digits) or an emailed one (6–10 digits), and only an
//! answer of that shape costs a slow hash. 23^10 ≈ 2^45 codes, guessed no
//! faster than TOTP codes (the same lockout counts every wrong one).
//!
//! Stored only as argon2id hashes under ONE salt per user for the whole
//! set: checking an answer costs one hash (computed off the database
//! thread), then the store deletes the row with that hash — the delete
//! decides, so a code is used once however many logins race.
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

/// How many codes `otpctl user recovery-codes` issues.
pub const COUNT: usize = 10;
/// Letters only, without i, l and o (read as 1, 1 and 0).
const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz";
const LEN: usize = 10;
pub const SALT_LEN: usize = 16;
pub const HASH_LEN: usize = 32;

/// The code as stored and hashed (10 lowercase letters) if `answer` has the
/// shape of a recovery code: 10 letters of the alphabet in any case, with
/// or without the dash after the fifth, spaces ignored.
pub fn normalize(answer: &str) -> Option<String> {
    let s: String = answer.trim().chars().filter(|&c| c != ' ').collect::<String>().to_ascii_lowercase();
    let s = match s.len() {
        11 if s.as_bytes()[5] == b'-' => format!("{}{}", &s[..5], &s[6..]),
        10 => s,
        _ => return None,
    };
    s.bytes().all(|b| ALPHABET.contains(&b)).then_some(s)
}

/// An imported google-authenticator scratch code (8 digits, no leading
/// zero), spaces ignored. Only tried after TOTP and emailed codes.
pub fn scratch_shape(answer: &str) -> Option<String> {
    let s: String = answer.trim().chars().filter(|&c| c != ' ').collect();
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0')).then_some(s)
}

/// How a code is shown to the admin: `xxxxx-xxxxx`.
pub fn display(code: &str) -> String {
    if code.len() == LEN && code.is_ascii() {
        format!("{}-{}", &code[..5], &code[5..])
    } else {
        code.to_string()
    }
}

/// A new code (normalized form), uniformly drawn from the alphabet.
pub fn generate() -> String {
    let mut out = String::with_capacity(LEN);
    let mut rng = rand::rngs::OsRng;
    while out.len() < LEN {
        let mut b = [0u8; 1];
        rng.fill_bytes(&mut b);
        // Rejection sampling: 230 is the largest multiple of 23 below 256.
        if (b[0] as usize) < 230 {
            out.push(ALPHABET[b[0] as usize % ALPHABET.len()] as char);
        }
    }
    out
}

pub fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// argon2id of a normalized code under the set's salt (the crate's default
/// cost: 19 MiB, 2 passes). Slow on purpose: call it off the database thread.
///
/// Each thread keeps one work area for all its hashes: allocating and
/// freeing 19 MiB per hash left every hashing thread's malloc arena holding
/// several such areas (a server hashing two at a time grew by 190 MB).
pub fn hash(salt: &[u8], code: &str) -> Result<Vec<u8>, String> {
    thread_local! {
        static WORK: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let params = Params::new(Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, Params::DEFAULT_P_COST, Some(HASH_LEN))
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; HASH_LEN];
    WORK.with_borrow_mut(|blocks| {
        if blocks.len() != params.block_count() {
            *blocks = vec![argon2::Block::new(); params.block_count()];
        }
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into_with_memory(code.as_bytes(), salt, &mut out, &mut blocks[..])
            .map_err(|e| e.to_string())
    })?;
    Ok(out)
}

/// Cost of [`hash_scratch`]: 1 MiB, one pass.
const SCRATCH_M_COST: u32 = 1024;
const SCRATCH_T_COST: u32 = 1;

/// Hash of an imported google-authenticator scratch code (8 digits):
/// argon2id KEYED with a key derived from otpd's key file, at a lower cost
/// than [`hash`].
///
/// Why not the same cost: a scratch code has 10^8 values (27 bits), so a
/// slow hash alone cannot protect it from offline guessing (at [`hash`]'s
/// cost, about 700 CPU-hours for all of them), while it would make the
/// import of 100,000 files (500,000 codes) take hours. The key is what
/// protects them: a copy of the database without the key file gives no way
/// to test a guess at all, and whoever has the key file can open the TOTP
/// secrets beside them anyway. Generated recovery codes (45 bits) keep
/// [`hash`]. The shape of the answer (digits or letters) says which hash
/// applies, so no stored flag is needed.
pub fn hash_scratch(key: &[u8; 32], salt: &[u8], code: &str) -> Result<Vec<u8>, String> {
    ScratchHasher::new(key)?.hash(salt, code)
}

/// [`hash_scratch`] for many codes with ONE work area: allocating and
/// freeing 1 MiB per code while keeping each 32-byte result fragments the
/// heap (an import of 300 files grew otpd by 400 MB that way).
pub struct ScratchHasher<'k> {
    argon: Argon2<'k>,
    blocks: Vec<argon2::Block>,
}

impl<'k> ScratchHasher<'k> {
    pub fn new(key: &'k [u8; 32]) -> Result<ScratchHasher<'k>, String> {
        let params = Params::new(SCRATCH_M_COST, SCRATCH_T_COST, Params::DEFAULT_P_COST, Some(HASH_LEN))
            .map_err(|e| e.to_string())?;
        let blocks = vec![argon2::Block::new(); params.block_count()];
        let argon =
            Argon2::new_with_secret(key, Algorithm::Argon2id, Version::V0x13, params).map_err(|e| e.to_string())?;
        Ok(ScratchHasher { argon, blocks })
    }

    pub fn hash(&mut self, salt: &[u8], code: &str) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; HASH_LEN];
        self.argon
            .hash_password_into_with_memory(code.as_bytes(), salt, &mut out, &mut self.blocks)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// The codes to show once, the salt and the hashes to store.
pub type NewSet = (Vec<String>, Vec<u8>, Vec<Vec<u8>>);

/// A new set of [`COUNT`] distinct codes under a new salt.
pub fn new_set() -> Result<NewSet, String> {
    let salt = new_salt();
    let mut codes: Vec<String> = Vec::with_capacity(COUNT);
    while codes.len() < COUNT {
        let c = generate();
        if !codes.contains(&c) {
            codes.push(c);
        }
    }
    let hashes = codes.iter().map(|c| hash(&salt, c)).collect::<Result<Vec<_>, _>>()?;
    Ok((codes, salt, hashes))
}

/// What the user is told after a recovery code let them in.
pub fn left_text(left: u64) -> String {
    match left {
        0 => "0 recovery codes left: ask your administrator for new ones (`otpctl user recovery-codes`).".into(),
        1 => "1 recovery code left.".into(),
        n => format!("{n} recovery codes left."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_is_never_a_number_and_accepts_dash_and_case() {
        let c = generate();
        assert_eq!(c.len(), 10);
        assert_eq!(normalize(&c).as_deref(), Some(c.as_str()));
        assert_eq!(normalize(&display(&c)).as_deref(), Some(c.as_str()));
        assert_eq!(normalize(&display(&c).to_uppercase()).as_deref(), Some(c.as_str()));
        assert_eq!(normalize(&format!(" {} ", display(&c))).as_deref(), Some(c.as_str()));
        for bad in ["123456", "12345678", "1234567890", "abcde-fghij-", "abcdefghi", "abcdefghijk", "abcdefghio"] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
        assert_eq!(normalize("abcde-fghjk").as_deref(), Some("abcdefghjk"));
        assert_eq!(normalize("abcdefghjk-"), None);
    }

    #[test]
    fn one_salt_per_set_and_distinct_hashes() {
        let (codes, salt, hashes) = new_set().unwrap();
        assert_eq!((codes.len(), hashes.len(), salt.len()), (COUNT, COUNT, SALT_LEN));
        assert_eq!(hash(&salt, &codes[3]).unwrap(), hashes[3]);
        assert_ne!(hash(&new_salt(), &codes[3]).unwrap(), hashes[3]);
        assert!(hashes.iter().all(|h| h.len() == HASH_LEN));
    }

    #[test]
    fn scratch_hashes_depend_on_the_key_salt_and_code() {
        let (k1, k2, salt) = ([1u8; 32], [2u8; 32], new_salt());
        let h = hash_scratch(&k1, &salt, "12345678").unwrap();
        assert_eq!(h.len(), HASH_LEN);
        assert_eq!(hash_scratch(&k1, &salt, "12345678").unwrap(), h);
        assert_ne!(hash_scratch(&k2, &salt, "12345678").unwrap(), h, "another key file: no match");
        assert_ne!(hash_scratch(&k1, &new_salt(), "12345678").unwrap(), h);
        assert_ne!(hash_scratch(&k1, &salt, "12345679").unwrap(), h);
        assert_ne!(hash(&salt, "12345678").unwrap(), h, "not the recovery-code hash");
        let mut many = ScratchHasher::new(&k1).unwrap();
        assert_eq!(many.hash(&salt, "87654321").unwrap(), hash_scratch(&k1, &salt, "87654321").unwrap());
        assert_eq!(many.hash(&salt, "12345678").unwrap(), h, "the reused work area changes nothing");
    }
}
