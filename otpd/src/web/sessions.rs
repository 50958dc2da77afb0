//! Console sessions: issued after a login's password and second factor,
//! kept in memory only as hashes of their tokens (a restart logs everyone
//! out), ended by logout, after `[web] idle_timeout` unused and after
//! `[web] session_lifetime` whatever happens.
use common::web::SessionView;
use data_encoding::BASE64URL_NOPAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// Sessions alive at once, in all and per user: the oldest goes first.
const MAX_SESSIONS: usize = 10_000;
const MAX_PER_USER: usize = 16;

pub struct Session {
    pub user: String,
    pub csrf: String,
    pub created: i64,
    pub last_used: i64,
}

pub struct Sessions {
    idle: i64,
    lifetime: i64,
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// A new random token (256 bits) and the key it is kept under.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = BASE64URL_NOPAD.encode(&raw);
    let key = key_of(&token);
    (token, key)
}

/// What a token is kept under: its SHA-256 (a memory dump shows no token).
pub fn key_of(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    pub fn new(idle_secs: i64, lifetime_secs: i64) -> Sessions {
        Sessions { idle: idle_secs, lifetime: lifetime_secs, live: Mutex::new(HashMap::new()) }
    }

    /// A new session for `user`: its token (given to the browser once) and view.
    pub fn issue(&self, user: &str, admin: bool, now: i64) -> (String, SessionView) {
        let (token, key) = new_token();
        let (csrf, _) = new_token();
        let mut live = lock(&self.live);
        live.retain(|_, s| !self.expired(s, now));
        let mine: Vec<([u8; 32], i64)> =
            live.iter().filter(|(_, s)| s.user == user).map(|(k, s)| (*k, s.last_used)).collect();
        if mine.len() >= MAX_PER_USER {
            if let Some((k, _)) = mine.iter().min_by_key(|(_, t)| *t) {
                live.remove(k);
            }
        }
        if live.len() >= MAX_SESSIONS {
            if let Some(k) = live.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k) {
                live.remove(&k);
            }
        }
        let s = Session { user: user.to_string(), csrf, created: now, last_used: now };
        let view = self.view(&s, admin);
        live.insert(key, s);
        (token, view)
    }

    fn expired(&self, s: &Session, now: i64) -> bool {
        now >= s.last_used + self.idle || now >= s.created + self.lifetime
    }

    /// The live session of `token`: its user and CSRF token. `active`: used
    /// by its person now (its idle time starts again); a page polling on its
    /// own is not. An expired one is ended here.
    pub fn touch(&self, token: &str, now: i64, active: bool) -> Option<(String, String)> {
        self.touch_full(token, now, active).map(|(user, csrf, _)| (user, csrf))
    }

    /// [`Sessions::touch`], and when the session's login was.
    pub fn touch_full(&self, token: &str, now: i64, active: bool) -> Option<(String, String, i64)> {
        let key = key_of(token);
        let mut live = lock(&self.live);
        let s = live.get_mut(&key)?;
        if self.expired(s, now) {
            live.remove(&key);
            return None;
        }
        if active {
            s.last_used = now;
        }
        Some((s.user.clone(), s.csrf.clone(), s.created))
    }

    /// The view of a live session (after [`Sessions::touch`]).
    pub fn view_of(&self, token: &str, admin: bool) -> Option<SessionView> {
        lock(&self.live).get(&key_of(token)).map(|s| self.view(s, admin))
    }

    fn view(&self, s: &Session, admin: bool) -> SessionView {
        SessionView {
            user: s.user.clone(),
            admin,
            csrf: s.csrf.clone(),
            idle_expires_at: (s.last_used + self.idle).min(s.created + self.lifetime),
            expires_at: s.created + self.lifetime,
        }
    }

    /// Ends the session (logout). Its user, when it was live.
    pub fn end(&self, token: &str) -> Option<String> {
        lock(&self.live).remove(&key_of(token)).map(|s| s.user)
    }

    /// Ends every session of `user` (their second factor was reset).
    pub fn end_all_of(&self, user: &str) {
        lock(&self.live).retain(|_, s| s.user != user);
    }

    /// Ends every session (when it is no longer known whose must end).
    pub fn end_all(&self) {
        lock(&self.live).clear();
    }
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
pub fn same_token(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_absolute_expiry_and_logout() {
        let s = Sessions::new(900, 8 * 3600);
        let (token, view) = s.issue("ada", false, 1000);
        assert_eq!((view.idle_expires_at, view.expires_at), (1900, 1000 + 8 * 3600));
        assert_eq!(s.touch(&token, 1899, true).map(|t| t.0), Some("ada".to_string()));
        // Used at 1899: alive until 2799, not a second more.
        assert!(s.touch(&token, 2798, true).is_some());
        assert!(s.touch(&token, 2798 + 900, true).is_none());
        assert!(s.touch(&token, 2798, true).is_none(), "an expired session is gone, not only refused");
        // Used every 10 minutes, it still ends after 8 hours.
        let (t2, _) = s.issue("ada", false, 0);
        let mut now = 0;
        while now + 600 < 8 * 3600 {
            now += 600;
            assert!(s.touch(&t2, now, true).is_some(), "alive at {now}");
        }
        assert!(s.touch(&t2, 8 * 3600, true).is_none());
        let (t3, _) = s.issue("bob", true, 0);
        assert_eq!(s.end(&t3).as_deref(), Some("bob"));
        assert!(s.touch(&t3, 1, true).is_none());
        assert!(s.touch("not-a-token", 1, true).is_none());
        // A page polling on its own keeps nobody logged in.
        let (t4, _) = s.issue("cy", false, 0);
        assert!(s.touch(&t4, 800, false).is_some());
        assert!(s.touch(&t4, 900, false).is_none(), "idle since 0, whatever polled meanwhile");
    }

    #[test]
    fn tokens_are_random_and_kept_hashed() {
        let s = Sessions::new(900, 3600);
        let (a, va) = s.issue("ada", false, 0);
        let (b, vb) = s.issue("ada", false, 0);
        assert_ne!(a, b);
        assert_ne!(va.csrf, vb.csrf);
        assert_eq!(a.len(), 43);
        assert!(!lock(&s.live).contains_key(&{
            let mut raw = [0u8; 32];
            raw.copy_from_slice(&a.as_bytes()[..32]);
            raw
        }));
        assert!(lock(&s.live).contains_key(&key_of(&a)));
        s.end_all_of("ada");
        assert!(s.touch(&a, 1, true).is_none() && s.touch(&b, 1, true).is_none());
    }

    #[test]
    fn a_user_holds_at_most_16_sessions() {
        let s = Sessions::new(900, 3600);
        let tokens: Vec<String> = (0..17).map(|i| s.issue("ada", false, i).0).collect();
        assert!(s.touch(&tokens[0], 20, true).is_none(), "the oldest went");
        assert!(tokens[1..].iter().all(|t| s.touch(t, 20, true).is_some()));
    }

    #[test]
    fn csrf_compare() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
    }
}
