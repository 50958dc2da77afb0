//! Internal-account passwords (email `auto_send = "internal"`): argon2id.
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::OnceLock;

pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Verifies `password` against `stored`. Without a stored hash it still
/// spends the same work on a dummy hash, so timing does not reveal which
/// accounts have a password.
pub fn verify(stored: Option<&str>, password: &str) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("dummy password for timing").unwrap_or_default());
    let target = stored.unwrap_or(dummy);
    let ok = PasswordHash::new(target)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false);
    ok && stored.is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        let h = super::hash("s3cret pass").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(super::verify(Some(&h), "s3cret pass"));
        assert!(!super::verify(Some(&h), "s3cret pasS"));
        assert!(!super::verify(None, "dummy password for timing"));
        assert!(!super::verify(Some("garbage"), "x"));
    }
}
