//! TOTP secrets at rest: XChaCha20-Poly1305 under a 256-bit key file that
//! only the daemon can read. The user name is authenticated data, so a
//! ciphertext copied onto another user's row does not decrypt.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const AAD_PREFIX: &[u8] = b"otpd totp secret v1\0";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {why}")]
    Bad { path: String, why: String },
}

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    email_key: [u8; 32],
    scratch_key: [u8; 32],
}

impl SecretBox {
    pub fn from_key(key: &[u8; KEY_LEN]) -> SecretBox {
        use hmac::Mac;
        // A separate key for hashing emailed codes, derived so that one key file serves both.
        let derive = |label: &[u8]| -> [u8; 32] {
            <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
                .map(|m| m.chain_update(label).finalize().into_bytes().into())
                .unwrap_or([0u8; 32])
        };
        SecretBox {
            cipher: XChaCha20Poly1305::new(key.into()),
            email_key: derive(b"otpd email code hmac key v1"),
            scratch_key: derive(b"otpd scratch code argon2 secret v1"),
        }
    }

    /// Secret input of the keyed hashes of imported scratch codes
    /// ([`crate::core::recovery::hash_scratch`]).
    pub fn scratch_key(&self) -> &[u8; 32] {
        &self.scratch_key
    }

    /// Key for the keyed hashes of emailed codes.
    pub fn email_key(&self) -> &[u8; 32] {
        &self.email_key
    }

    /// Loads the key file, creating it (mode 0600, O_EXCL) on first start.
    /// Refuses a key that other users could read or that has the wrong size.
    pub fn load_or_create(path: &Path) -> Result<(SecretBox, bool), KeyError> {
        let bad = |why: String| KeyError::Bad { path: path.display().to_string(), why };
        // Whoever created the key file knows the key.
        crate::sys::trust::check_file(path, "key file").map_err(|e| bad(e.why))?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                if !meta.file_type().is_file() {
                    return Err(bad("not a regular file".into()));
                }
                if meta.mode() & 0o077 != 0 {
                    return Err(bad(format!(
                        "mode {:o} lets other users read it; run `chmod 600 {}`",
                        meta.permissions().mode() & 0o777,
                        path.display()
                    )));
                }
                let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let key: [u8; KEY_LEN] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad(format!("expected {KEY_LEN} bytes, found {}", bytes.len())))?;
                Ok((SecretBox::from_key(&key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                rand::rngs::OsRng.fill_bytes(&mut key);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
                    .map_err(|e| bad(format!("cannot create: {e}")))?;
                f.write_all(&key).and_then(|_| f.sync_all()).map_err(|e| bad(e.to_string()))?;
                if let Some(dir) = path.parent() {
                    if let Ok(d) = std::fs::File::open(dir) {
                        let _ = d.sync_all();
                    }
                }
                Ok((SecretBox::from_key(&key), true))
            }
            Err(e) => Err(bad(e.to_string())),
        }
    }

    pub fn seal(&self, user: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = [AAD_PREFIX, user.as_bytes()].concat();
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct =
            self.cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: secret, aad: &aad }).unwrap_or_default();
        [nonce.as_slice(), ct.as_slice()].concat()
    }

    pub fn open(&self, user: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let aad = [AAD_PREFIX, user.as_bytes()].concat();
        self.cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_bound_to_user() {
        let b = SecretBox::from_key(&[7u8; 32]);
        let sealed = b.seal("alice", b"0123456789abcdefghij");
        assert!(!sealed.windows(20).any(|w| w == b"0123456789abcdefghij"));
        assert_eq!(b.open("alice", &sealed).as_deref(), Some(&b"0123456789abcdefghij"[..]));
        assert_eq!(b.open("mallory", &sealed), None);
        assert_eq!(SecretBox::from_key(&[8u8; 32]).open("alice", &sealed), None);
        assert_eq!(b.open("alice", &sealed[..10]), None);
    }

    #[test]
    fn key_file_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        let (b1, created) = SecretBox::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let sealed = b1.seal("u", b"secret-bytes-here!!!");
        let (b2, created) = SecretBox::load_or_create(&p).unwrap();
        assert!(!created);
        assert!(b2.open("u", &sealed).is_some());
    }

    #[test]
    fn readable_or_wrong_size_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretBox::load_or_create(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [1u8; 31]).unwrap();
        assert!(SecretBox::load_or_create(&p).is_err());
    }

    #[test]
    fn a_key_file_someone_else_created_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.key");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let err = SecretBox::load_or_create(&p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("secret.key") && err.contains("owned by uid 65534"), "{err}");
    }
}
