//! The fleet's CAs as a server holds them: one, or two during a rotation
//! (`otpctl ca rotate`, then `otpctl ca retire`).
//!
//! While there are two, servers accept host certificates of either, present
//! a server certificate of the older (every host trusts it: hosts that have
//! not renewed yet trust only it), issue new host certificates with the
//! newer, and hand hosts both at renewal. Retiring the older makes every
//! server present a certificate of the newer, which the hosts renewed since
//! the rotation trust. Servers of one database read the set from it every
//! [`REFRESH_EVERY`], so a rotation or retirement on one reaches all.
use crate::core::crypto::SecretBox;
use crate::fleet::pki;
use crate::store::db::Db;
use crate::store::model::StoredCa;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often a server reads the CAs of its database.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// A new CA issues certificates only once every server has read it (two
/// refreshes): before that, one could not yet accept what it issued.
pub const PROPAGATION: i64 = 2 * REFRESH_EVERY.as_secs() as i64;
/// The associated data the CA keys are sealed with.
const AAD: &str = "otpd fleet CA key";

/// A CA's key as the database keeps it: sealed under the key file.
pub fn seal(crypto: &SecretBox, ca: &pki::Ca) -> Vec<u8> {
    crypto.seal(AAD, ca.key_pem().as_bytes())
}

/// One of the fleet's CAs.
pub struct LiveCa {
    /// Its row in the database (ids only grow).
    pub id: i64,
    /// When it was stored (0: stored before rotations existed).
    pub added_at: i64,
    pub ca: pki::Ca,
    pub fingerprint: [u8; 32],
}

/// The CAs in use, oldest first.
pub struct CaSet {
    cas: Vec<Arc<LiveCa>>,
}

impl CaSet {
    pub fn all(&self) -> &[Arc<LiveCa>] {
        &self.cas
    }

    /// The CA a server's own certificate comes from: the oldest, which
    /// every host of the fleet trusts.
    pub fn serving(&self) -> &LiveCa {
        &self.cas[0]
    }

    /// The CA that issues host certificates at `now`: the newest, once every
    /// server can have read it ([`PROPAGATION`]).
    pub fn issuing(&self, now: i64) -> &LiveCa {
        self.cas.iter().rev().find(|c| c.added_at + PROPAGATION <= now).unwrap_or(&self.cas[0])
    }

    /// The CAs every server can have read at `now` (the oldest always):
    /// what a host renewing now should trust, for [`common::proto::CaCheck`].
    pub fn settled(&self, now: i64) -> impl Iterator<Item = &LiveCa> {
        self.cas.iter().enumerate().filter(move |(i, c)| *i == 0 || c.added_at + PROPAGATION <= now).map(|(_, c)| &**c)
    }

    /// The certificates of [`CaSet::settled`]: what a host renewing or
    /// added now is given to trust (before every server can have read a new
    /// CA, none presents or issues with it, and [`common::proto::CaCheck`]
    /// compares with this set).
    pub fn settled_pem(&self, now: i64) -> String {
        self.settled(now).map(|c| c.ca.cert_pem()).collect()
    }

    /// Every CA's certificate, oldest first: what a server accepts.
    pub fn trust_pem(&self) -> String {
        self.cas.iter().map(|c| c.ca.cert_pem()).collect()
    }

    /// Whether `fp` is one of these CAs.
    pub fn knows(&self, fp: &[u8]) -> bool {
        self.cas.iter().any(|c| c.fingerprint == fp)
    }

    fn ids(&self) -> Vec<i64> {
        self.cas.iter().map(|c| c.id).collect()
    }

    /// For unit tests: one CA, made now.
    pub fn single(ca: pki::Ca) -> CaSet {
        let fingerprint = ca.fingerprint();
        CaSet { cas: vec![Arc::new(LiveCa { id: 1, added_at: 0, ca, fingerprint })] }
    }
}

/// A server's CAs; replaced as a whole when the database's change.
pub struct Authority {
    set: RwLock<Arc<CaSet>>,
    /// Bumped at every change: the fleet listener makes its TLS
    /// configuration again (crate::fleet::link).
    changed: tokio::sync::watch::Sender<u64>,
    /// When the database was last read on a host's behalf.
    asked: Mutex<Option<Instant>>,
    /// One refresh at a time: an older read never replaces a newer set.
    refreshing: tokio::sync::Mutex<()>,
}

impl Authority {
    pub fn new(set: CaSet) -> Authority {
        Authority {
            set: RwLock::new(Arc::new(set)),
            changed: tokio::sync::watch::channel(0).0,
            asked: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self) -> Arc<CaSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The database's CAs (the first server of a database makes the first,
    /// sealed under the key file all its servers share).
    pub async fn load(db: &Db, crypto: &SecretBox, now: i64) -> Result<CaSet, String> {
        let mut stored = db.read(|st| st.fleet_cas()).await.map_err(|e| e.to_string())?;
        if stored.is_empty() {
            let ca = pki::Ca::generate().map_err(|e| e.to_string())?;
            let sealed = seal(crypto, &ca);
            let cert_pem = ca.cert_pem();
            // Two servers starting together: the first CA stored wins.
            db.run(move |st| st.set_fleet_ca_if_absent(&cert_pem, &sealed, now)).await.map_err(|e| e.to_string())?;
            stored = db.read(|st| st.fleet_cas()).await.map_err(|e| e.to_string())?;
        }
        Self::open_all(&stored, crypto, &[])
    }

    /// Opens the stored CAs, reusing those already open in `known`.
    fn open_all(stored: &[StoredCa], crypto: &SecretBox, known: &[Arc<LiveCa>]) -> Result<CaSet, String> {
        if stored.is_empty() {
            return Err("the database holds no fleet CA".into());
        }
        let mut cas = Vec::with_capacity(stored.len());
        for s in stored {
            if let Some(k) = known.iter().find(|k| k.id == s.id) {
                cas.push(k.clone());
                continue;
            }
            let key = crypto.open(AAD, &s.key_sealed).ok_or_else(|| {
                "the fleet CA key cannot be decrypted: every server of one database needs the same key file".to_string()
            })?;
            let key = zeroize::Zeroizing::new(String::from_utf8(key).map_err(|_| "the fleet CA key is corrupt")?);
            let ca = pki::Ca::from_pem(&s.cert_pem, &key).map_err(|e| e.to_string())?;
            let fingerprint = ca.fingerprint();
            cas.push(Arc::new(LiveCa { id: s.id, added_at: s.added_at, ca, fingerprint }));
        }
        Ok(CaSet { cas })
    }

    /// Reads the database's CAs and takes them up if they changed (true).
    pub async fn refresh(&self, db: &Db, crypto: &SecretBox) -> Result<bool, String> {
        let _one = self.refreshing.lock().await;
        let stored = db.read(|st| st.fleet_cas()).await.map_err(|e| e.to_string())?;
        let current = self.get();
        if stored.iter().map(|s| s.id).collect::<Vec<_>>() == current.ids() {
            return Ok(false);
        }
        let set = Self::open_all(&stored, crypto, current.all())?;
        let fps: Vec<String> = set.all().iter().map(|c| pki::fingerprint_short(&c.fingerprint)).collect();
        tracing::info!("fleet CAs now {} (oldest first)", fps.join(", "));
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// [`Authority::refresh`] on behalf of a host whose CA this server does
    /// not know (another server rotated a moment ago): at most once a second.
    pub async fn refresh_for_host(&self, db: &Db, crypto: &SecretBox) {
        {
            let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
            if asked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *asked = Some(Instant::now());
        }
        if let Err(e) = self.refresh(db, crypto).await {
            tracing::warn!("reading the fleet CAs failed: {e}");
        }
    }
}

/// Keeps a server's CAs those of its database; runs until aborted.
pub async fn follow(authority: Arc<Authority>, db: Db, policy: Arc<crate::core::policy::Policy>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        match authority.refresh(&db, &policy.crypto).await {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("reading the fleet CAs failed (trying again every {REFRESH_EVERY:?}): {e}");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: i64, added_at: i64) -> Arc<LiveCa> {
        let ca = pki::Ca::generate().unwrap();
        let fingerprint = ca.fingerprint();
        Arc::new(LiveCa { id, added_at, ca, fingerprint })
    }

    #[test]
    fn the_older_ca_serves_and_the_newer_issues_once_every_server_can_know_it() {
        let (old, new) = (live(1, 0), live(2, 1000));
        let set = CaSet { cas: vec![old.clone(), new.clone()] };
        assert_eq!(set.serving().id, 1);
        assert_eq!(set.issuing(1000).id, 1, "not yet read by every server");
        assert_eq!(set.issuing(1000 + PROPAGATION - 1).id, 1);
        assert_eq!(set.issuing(1000 + PROPAGATION).id, 2);
        assert_eq!(set.trust_pem(), old.ca.cert_pem() + &new.ca.cert_pem());
        assert!(set.knows(&old.fingerprint) && set.knows(&new.fingerprint) && !set.knows(&[0; 32]));
        let settled = |now| set.settled(now).map(|c| c.id).collect::<Vec<_>>();
        assert_eq!((settled(1000 + PROPAGATION - 1), settled(1000 + PROPAGATION)), (vec![1], vec![1, 2]));
        let one = CaSet { cas: vec![new.clone()] };
        assert_eq!((one.serving().id, one.issuing(0).id), (2, 2));
    }

    #[tokio::test]
    async fn servers_take_up_a_rotation_and_a_retirement_from_the_database() {
        let db = Db::start(crate::store::sqlite::SqliteStore::in_memory().unwrap());
        let crypto = SecretBox::from_key(&[9; 32]);
        let first = Authority::load(&db, &crypto, 50).await.unwrap();
        assert_eq!(first.all().len(), 1);
        // A second server of the database loads the same CA.
        let again = Authority::load(&db, &crypto, 60).await.unwrap();
        assert_eq!(again.all()[0].fingerprint, first.all()[0].fingerprint);
        let auth = Authority::new(first);
        let changed = auth.subscribe();
        assert!(!auth.refresh(&db, &crypto).await.unwrap());
        assert!(!changed.has_changed().unwrap());

        let next = pki::Ca::generate().unwrap();
        let (pem, sealed) = (next.cert_pem(), seal(&crypto, &next));
        assert!(db.run(move |st| st.add_fleet_ca(&pem, &sealed, 70)).await.unwrap());
        assert!(auth.refresh(&db, &crypto).await.unwrap());
        assert!(changed.has_changed().unwrap());
        let set = auth.get();
        assert_eq!(set.all().len(), 2);
        assert_eq!(set.all()[1].fingerprint, next.fingerprint());
        assert_eq!(set.all()[1].added_at, 70);

        assert!(db.run(|st| st.retire_fleet_ca(1)).await.unwrap());
        assert!(auth.refresh(&db, &crypto).await.unwrap());
        assert_eq!(auth.get().all().iter().map(|c| c.fingerprint).collect::<Vec<_>>(), vec![next.fingerprint()]);

        // Another key file cannot open the CA: refused, the set unchanged.
        let other = SecretBox::from_key(&[1; 32]);
        let e = Authority::load(&db, &other, 80).await.err().unwrap();
        assert!(e.contains("same key file"), "{e}");
    }
}
