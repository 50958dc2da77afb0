//! The audit spool of an agent, and its reception on a server.
//!
//! A login an agent refuses by itself — no server answered, the server was
//! lost during the login, or too many logins of users other than root were
//! in progress — is decided nowhere else, so no server audits it. The agent
//! keeps it in its spool (`[fleet] spool`, a root-only file that survives a
//! restart): user, service, remote host, terminal, the caller's uid when
//! not root, time and why. Never an answer: the agent refused before one
//! was typed, or cannot know whether the one typed was checked, and keeps
//! no text the user typed at all.
//!
//! The spool is bounded (`[fleet] spool_max`): a full spool drops its
//! oldest entry and counts it; entries of callers other than root may take
//! at most half of it, so a local user who floods the agent with failing
//! logins pushes out their own entries, not those of sshd or login.
//!
//! A background task hands the entries to a server, oldest first, in
//! batches ([`common::proto::SpoolBatch`]): when one is there, after a
//! failure with a growing pause (with jitter) and at once when a login
//! finds a server again. Entries are forgotten only once the server has
//! committed them and says so ([`common::proto::SpoolAck`]); a batch sent
//! again after a lost acknowledgement adds no row (each entry's id is
//! written once per host).
//!
//! The server writes each entry under the host its certificate names —
//! never a name the agent sends — with the time it happened and the time it
//! was received (`otpctl audit` marks the row late). What an agent spools is
//! that host's word: root there can forge entries, but only as that host,
//! within a per-host rate, with lengths capped, control characters removed,
//! reasons from a fixed list and times neither in the future nor older than
//! [`MAX_AGE`].
use crate::core::limits::RateLimiter;
use crate::core::service::Core;
use crate::lock;
use crate::store::model::{AuditMethod, AuditResult, NewAudit};
use crate::sys::clock::Clock;
use crate::sys::start::StartError;
use common::proto::{ClientMsg, SpoolAck, SpoolBatch, SpoolEntry, SpoolReason};
use common::text::sanitize_field;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Entries an agent sends in one batch, and the bytes they may take (a
/// frame is at most 64 KiB).
const BATCH_ENTRIES: usize = 50;
const BATCH_BYTES: usize = 48 * 1024;
/// Entries a server takes from one batch.
pub const MAX_BATCH: usize = 100;
/// Entries (and dropped counts) a server writes per host and minute.
pub const PER_HOST_PER_MINUTE: u32 = 600;
/// When the host's rate is used up, the agent sends the rest after this.
const RETRY_LIMITED_SECS: u32 = 10;
/// An entry older than this is not written (it is counted).
pub const MAX_AGE: i64 = 30 * 86_400;
/// An entry this far ahead of the server's clock is not written either.
pub const MAX_AHEAD: i64 = 300;
/// Pauses between delivery attempts that failed: doubled up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_LAST: Duration = Duration::from_secs(30);

/// The spool file: a JSON object, rewritten whole (atomically) after changes.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Stored {
    /// Entries a full spool dropped, not yet reported to a server.
    #[serde(default)]
    dropped: u64,
    /// Oldest first.
    #[serde(default)]
    entries: VecDeque<SpoolEntry>,
}

struct State {
    stored: Stored,
    /// Bumped by every change; `saved` is the version last on disk.
    version: u64,
    saved: u64,
}

pub struct Spool {
    path: PathBuf,
    max: usize,
    clock: Box<dyn Clock>,
    state: Mutex<State>,
    /// One save at a time (the saving task, and the last save at shutdown).
    saving: Mutex<()>,
    changed: Notify,
    /// Entries were added (the delivery task waits for this when empty).
    added: Notify,
    /// A login found a server: try now rather than after the pause.
    server_back: Notify,
}

fn fail(path: &Path, why: impl std::fmt::Display) -> StartError {
    StartError::Fleet(format!("audit spool {}: {why}", path.display()))
}

impl Spool {
    /// Opens (or starts) the spool at `path`, keeping at most `max`
    /// entries. Its directory is made 0700 if missing; the directory must
    /// be writable by no one but root (or otpd's uid) and the file owned
    /// by otpd's uid, else otpd refuses to start, as for its other state.
    /// A file that cannot be read as a spool is moved aside to
    /// `PATH.unreadable` (and logged); the spool starts empty.
    pub fn open(path: &Path, max: usize, clock: Box<dyn Clock>) -> Result<Spool, StartError> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| fail(path, "no directory"))?;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail(path, format!("cannot create {}: {e}", dir.display())))?;
        }
        crate::sys::trust::check_dir(dir, "audit spool")?;
        crate::sys::trust::check_file(path, "audit spool")?;
        let mut stored = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<Stored>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    let aside = path.with_extension("unreadable");
                    tracing::warn!(
                        "the audit spool {} cannot be read ({e}); moved to {} and starting an empty one",
                        path.display(),
                        aside.display()
                    );
                    std::fs::rename(path, &aside).map_err(|e| fail(path, format!("cannot move it aside: {e}")))?;
                    Stored::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(fail(path, e)),
        };
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!("the audit spool {} was readable by others; now mode 0600", path.display());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| fail(path, e))?;
            }
        }
        let max = max.max(1);
        let over = stored.entries.len().saturating_sub(max);
        stored.entries.drain(..over);
        stored.dropped = stored.dropped.saturating_add(over as u64);
        let pending = stored.entries.len();
        if pending > 0 || stored.dropped > 0 {
            tracing::info!(
                "audit spool {}: {pending} refusals (and {} dropped) wait for a server",
                path.display(),
                stored.dropped
            );
        }
        Ok(Spool {
            path: path.to_path_buf(),
            max,
            clock,
            state: Mutex::new(State { stored, version: 0, saved: 0 }),
            saving: Mutex::new(()),
            changed: Notify::new(),
            added: Notify::new(),
            server_back: Notify::new(),
        })
    }

    /// Keeps a refusal: when `first` began a login (session messages are
    /// not logins), the entry of who asked, where from and why. `account`:
    /// for a caller other than root, its own account's name on this host
    /// (when looked up): such a caller's entry names that account, or none
    /// ("-"), never the name it typed (check 35).
    pub fn refused(
        &self,
        first: &ClientMsg,
        peer_uid: u32,
        caller: Option<u32>,
        account: Option<&str>,
        reason: SpoolReason,
    ) {
        if let Some(entry) = entry_of(first, peer_uid, caller, account, reason, self.clock.now()) {
            self.push(entry);
        }
    }

    fn push(&self, entry: SpoolEntry) {
        {
            let mut st = lock(&self.state);
            let s = &mut st.stored;
            // Callers other than root take at most half: their flood drops
            // their own oldest entries, not root's (sshd, login).
            if entry.caller.is_some() {
                let theirs = s.entries.iter().filter(|e| e.caller.is_some()).count();
                if theirs >= (self.max / 2).max(1) {
                    if let Some(i) = s.entries.iter().position(|e| e.caller.is_some()) {
                        s.entries.remove(i);
                        s.dropped = s.dropped.saturating_add(1);
                    }
                }
            }
            if s.entries.len() >= self.max {
                s.entries.pop_front();
                s.dropped = s.dropped.saturating_add(1);
            }
            s.entries.push_back(entry);
            st.version += 1;
        }
        self.changed.notify_one();
        self.added.notify_one();
    }

    /// Entries waiting, and how many were dropped.
    pub fn pending(&self) -> (usize, u64) {
        let st = lock(&self.state);
        (st.stored.entries.len(), st.stored.dropped)
    }

    /// The oldest entries, as many as fit in one batch, with the dropped
    /// count; None when there is nothing to send.
    pub fn batch(&self) -> Option<SpoolBatch> {
        let st = lock(&self.state);
        let s = &st.stored;
        if s.entries.is_empty() && s.dropped == 0 {
            return None;
        }
        let mut bytes = 0;
        let mut spool = Vec::new();
        for e in s.entries.iter().take(BATCH_ENTRIES) {
            bytes += serde_json::to_vec(e).map(|v| v.len() + 1).unwrap_or(BATCH_BYTES);
            if bytes > BATCH_BYTES && !spool.is_empty() {
                break;
            }
            spool.push(e.clone());
        }
        Some(SpoolBatch { spool, dropped: s.dropped })
    }

    /// What the server acknowledged of `sent` is forgotten. Entries are
    /// found by id: a full spool may have dropped some meanwhile (then
    /// counted as dropped, which they were not: that count goes down again).
    pub fn forget(&self, sent: &SpoolBatch, ack: &SpoolAck) {
        {
            let mut st = lock(&self.state);
            let s = &mut st.stored;
            let taken: Vec<&str> = sent.spool.iter().take(ack.taken as usize).map(|e| e.id.as_str()).collect();
            let before = s.entries.len();
            s.entries.retain(|e| !taken.contains(&e.id.as_str()));
            let gone_meanwhile = (taken.len() - (before - s.entries.len())) as u64;
            s.dropped = s.dropped.saturating_sub(ack.dropped.min(sent.dropped)).saturating_sub(gone_meanwhile);
            st.version += 1;
        }
        self.changed.notify_one();
    }

    /// A login reached a server: the delivery task tries at once.
    pub fn server_back(&self) {
        self.server_back.notify_one();
    }

    /// Writes the spool if it changed since the last save: a new file
    /// (0600) beside it, synced, renamed over it, the directory synced.
    pub fn save(&self) -> std::io::Result<()> {
        let _one = lock(&self.saving);
        let (version, bytes) = {
            let st = lock(&self.state);
            if st.version == st.saved {
                return Ok(());
            }
            (st.version, serde_json::to_vec(&st.stored).map_err(std::io::Error::other)?)
        };
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        let mut st = lock(&self.state);
        st.saved = st.saved.max(version);
        Ok(())
    }
}

/// The spool entry of a refused login: None for session messages.
fn entry_of(
    first: &ClientMsg,
    peer_uid: u32,
    caller: Option<u32>,
    account: Option<&str>,
    reason: SpoolReason,
    now: i64,
) -> Option<SpoolEntry> {
    let ClientMsg::Begin { user, service, rhost, tty, .. } = first else { return None };
    let user = match peer_uid {
        0 => user.as_str(),
        _ => account.unwrap_or("-"),
    };
    let field = |v: &Option<String>, max| v.as_deref().map(|x| sanitize_field(x, max)).filter(|x| !x.is_empty());
    let id = {
        use rand::RngCore;
        let mut raw = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    };
    Some(SpoolEntry {
        id,
        time: now,
        user: sanitize_field(user, 80),
        service: sanitize_field(service, 64),
        rhost: field(rhost, 128),
        tty: field(tty, 64),
        caller: match peer_uid {
            0 => caller.filter(|&c| c != 0),
            uid => Some(uid),
        },
        reason,
    })
}

/// Saves the spool after each change (changes made during a save are
/// written by the next), until the task is aborted.
pub async fn keep_saved(spool: Arc<Spool>) {
    let mut failing = false;
    loop {
        spool.changed.notified().await;
        let s = spool.clone();
        match tokio::task::spawn_blocking(move || s.save()).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::error!("writing the audit spool {} failed: {e}", spool.path.display());
            }
            _ => {}
        }
    }
}

/// Hands the spool to a server with `send` (one batch, its acknowledgement)
/// until the task is aborted.
pub async fn deliver<F, Fut>(spool: Arc<Spool>, send: F)
where
    F: Fn(SpoolBatch) -> Fut,
    Fut: Future<Output = Result<SpoolAck, String>>,
{
    let mut pause = RETRY_FIRST;
    loop {
        let Some(batch) = spool.batch() else {
            spool.added.notified().await;
            continue;
        };
        let wait = match send(batch.clone()).await {
            Ok(ack) => {
                spool.forget(&batch, &ack);
                pause = RETRY_FIRST;
                let (left, dropped) = spool.pending();
                tracing::info!(
                    "audit spool: a server took {} refusals (and {} dropped); {left} (and {dropped}) left",
                    ack.taken,
                    ack.dropped
                );
                match ack.retry_after_secs {
                    Some(s) => Some(Duration::from_secs(u64::from(s.clamp(1, 3600)))),
                    // Nothing taken and no word why: do not ask again at once.
                    None if ack.taken == 0 && ack.dropped == 0 => Some(RETRY_LAST),
                    None => None,
                }
            }
            Err(e) => {
                let wait = jitter(pause);
                pause = (pause * 2).min(RETRY_LAST);
                tracing::debug!("audit spool: no server took it ({e}); next try in {wait:?}");
                Some(wait)
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = spool.server_back.notified() => {}
            }
        }
    }
}

/// `d` plus up to half again, so agents that lost the same server do not
/// come back all at once.
fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d + d.mul_f64(rand::thread_rng().gen_range(0.0..0.5))
}

// ---------------------------------------------------------------- server ----

/// How a spooled reason reads in the audit.
fn reason_text(reason: SpoolReason) -> &'static str {
    match reason {
        SpoolReason::Unavailable => "refused by the agent: no server answered",
        SpoolReason::Cut => "refused by the agent: the server was lost during the login",
        SpoolReason::Busy => "refused by the agent: too many logins of users other than root in progress",
    }
}

/// Whether an entry id is what an agent makes (1 to 64 hex digits).
fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The audit row of a spooled entry from `host`, its text capped and cleaned.
fn late_row(e: &SpoolEntry, host: &str) -> NewAudit {
    let field = |v: &Option<String>, max| v.as_deref().map(|x| sanitize_field(x, max)).filter(|x| !x.is_empty());
    let mut reason = reason_text(e.reason).to_string();
    if let Some(uid) = e.caller {
        reason.push_str(&format!(" (caller uid {uid} on {host})"));
    }
    let (user, service) = (sanitize_field(&e.user, 80), sanitize_field(&e.service, 64));
    NewAudit {
        time: e.time,
        user: if user.is_empty() { "-".into() } else { user },
        service: if service.is_empty() { "-".into() } else { service },
        rhost: field(&e.rhost, 128),
        tty: field(&e.tty, 64),
        machine: host.to_string(),
        method: AuditMethod::Host,
        result: AuditResult::Refused,
        reason,
    }
}

/// A batch from `host` (its certificate's record): writes what the host's
/// rate allows, in one transaction, and says what the agent may forget.
pub async fn receive(sh: &Core, rate: &RateLimiter<String>, host: &str, batch: SpoolBatch) -> SpoolAck {
    let now = sh.clock.now();
    let mut rows: Vec<(NewAudit, String)> = Vec::new();
    let (mut too_old, mut ahead, mut malformed) = (0u64, 0u64, 0u64);
    let mut taken = 0u32;
    let mut limited = false;
    for e in batch.spool.iter().take(MAX_BATCH) {
        if !rate.allow(host.to_string()) {
            limited = true;
            break;
        }
        taken += 1;
        if !valid_id(&e.id) {
            malformed += 1;
            continue;
        }
        if e.time > now + MAX_AHEAD {
            ahead += 1;
            continue;
        }
        if e.time < now - MAX_AGE {
            too_old += 1;
            continue;
        }
        rows.push((late_row(e, host), e.id.to_ascii_lowercase()));
    }
    // The counts are rows of their own (the dropped count takes a token too).
    let summary = |reason: String| NewAudit {
        time: now,
        user: "-".into(),
        service: "fleet".into(),
        machine: host.to_string(),
        method: AuditMethod::Host,
        result: AuditResult::Refused,
        reason,
        ..NewAudit::default()
    };
    let mut summaries = Vec::new();
    let dropped = if batch.dropped > 0 && !limited && rate.allow(host.to_string()) {
        summaries.push(summary(format!(
            "{} older refusals were dropped from this host's audit spool (it was full)",
            batch.dropped
        )));
        batch.dropped
    } else {
        0
    };
    let unusable = too_old + ahead + malformed;
    if unusable > 0 {
        summaries.push(summary(format!(
            "{unusable} spooled refusals from this host not written: {too_old} older than {} days, {ahead} \
             dated ahead of this server's clock, {malformed} malformed",
            MAX_AGE / 86_400
        )));
    }
    let retry_after_secs = limited.then_some(RETRY_LIMITED_SECS);
    if rows.is_empty() && summaries.is_empty() {
        return SpoolAck { taken, dropped, retry_after_secs };
    }
    let written = sh
        .db
        .run(move |st| {
            let mut new = Vec::new();
            for (entry, id) in rows {
                if st.add_late_audit(&entry, now, Some(&id))? {
                    new.push(entry);
                }
            }
            for entry in summaries {
                st.add_late_audit(&entry, now, None)?;
                new.push(entry);
            }
            Ok(new)
        })
        .await;
    match written {
        Ok(new) => {
            for entry in &new {
                crate::core::syslog::audit(entry);
            }
            SpoolAck { taken, dropped, retry_after_secs }
        }
        Err(e) => {
            tracing::warn!("writing the audit spool of {host} failed: {e}");
            // Nothing committed: the agent keeps it all and tries again.
            SpoolAck { taken: 0, dropped: 0, retry_after_secs: Some(30) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::service::Parts;
    use crate::sys::clock::FakeClock;
    use std::os::unix::fs::MetadataExt;

    const T0: i64 = 1_700_000_000;

    fn begin(user: &str) -> ClientMsg {
        ClientMsg::Begin {
            protocol: 1,
            user: user.into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.9".into()),
            ruser: None,
            tty: Some("ssh".into()),
            pid: 42,
            uid: None,
            qr: Default::default(),
        }
    }

    /// A spool at `dir`/spool/audit.json (its directory made by `open`).
    fn open(dir: &Path, max: usize) -> Spool {
        Spool::open(&dir.join("spool/audit.json"), max, Box::new(FakeClock::new(T0))).unwrap()
    }

    fn users(spool: &Spool) -> Vec<String> {
        lock(&spool.state).stored.entries.iter().map(|e| e.user.clone()).collect()
    }

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = private_dir();
        let spool = open(dir.path(), 3);
        for u in ["u1", "u2", "u3", "u4", "u5"] {
            spool.refused(&begin(u), 0, None, None, SpoolReason::Unavailable);
        }
        assert_eq!(users(&spool), ["u3", "u4", "u5"]);
        assert_eq!(spool.pending(), (3, 2));
        let batch = spool.batch().unwrap();
        assert_eq!((batch.spool.len(), batch.dropped), (3, 2));
        // Session messages are not logins: nothing kept.
        let closed =
            ClientMsg::SessionClosed { protocol: 1, user: "u6".into(), service: "sshd".into(), tty: None, pid: 1 };
        spool.refused(&closed, 0, None, None, SpoolReason::Unavailable);
        assert_eq!(spool.pending(), (3, 2));
    }

    #[test]
    fn callers_other_than_root_take_at_most_half() {
        let dir = private_dir();
        let spool = open(dir.path(), 4);
        spool.refused(&begin("root-login"), 0, None, None, SpoolReason::Unavailable);
        // uid 1000 floods: its own oldest entries go, root's stays.
        for i in 0..6 {
            spool.refused(&begin("alice"), 1000, None, Some(&format!("me{i}")), SpoolReason::Unavailable);
        }
        assert_eq!(users(&spool), ["root-login", "me4", "me5"]);
        assert_eq!(spool.pending(), (3, 4));
        // su/sudo by uid 1000: root's program, but counted as uid 1000's.
        spool.refused(&begin("bob"), 0, Some(1000), None, SpoolReason::Busy);
        assert_eq!(users(&spool), ["root-login", "me5", "bob"]);
        let e = lock(&spool.state).stored.entries[2].clone();
        assert_eq!((e.caller, e.reason), (Some(1000), SpoolReason::Busy));
    }

    #[test]
    fn a_caller_other_than_root_is_spooled_as_its_own_account_never_the_name_typed() {
        let e = entry_of(&begin("carol"), 1000, None, Some("mallory"), SpoolReason::Unavailable, T0).unwrap();
        assert_eq!((e.user.as_str(), e.caller), ("mallory", Some(1000)));
        let e = entry_of(&begin("carol"), 1000, None, None, SpoolReason::Busy, T0).unwrap();
        assert_eq!(e.user, "-");
        let e = entry_of(&begin("carol"), 0, Some(0), None, SpoolReason::Unavailable, T0).unwrap();
        assert_eq!((e.user.as_str(), e.caller), ("carol", None));
        assert_eq!(e.id.len(), 32);
        assert_ne!(e.id, entry_of(&begin("carol"), 0, None, None, SpoolReason::Cut, T0).unwrap().id);
    }

    #[test]
    fn fields_are_capped_and_cleaned_and_no_answer_is_kept() {
        let dir = private_dir();
        let spool = open(dir.path(), 10);
        let mut msg = begin(&format!("eve\x1b[2J{}", "x".repeat(500)));
        if let ClientMsg::Begin { rhost, tty, .. } = &mut msg {
            *rhost = Some("\u{202E}evil\n".repeat(100));
            *tty = Some(String::new());
        }
        spool.refused(&msg, 0, None, None, SpoolReason::Cut);
        // Answers and cancels are never kept, whatever they hold.
        spool.refused(&ClientMsg::Answer { text: "314159".into() }, 0, None, None, SpoolReason::Cut);
        spool.refused(&ClientMsg::Cancel, 0, None, None, SpoolReason::Cut);
        spool.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("spool/audit.json")).unwrap();
        assert!(!text.contains("314159"), "{text}");
        assert!(!text.contains("\\u001b") && !text.contains("\\u202e") && !text.contains("\\n"), "{text}");
        let e = lock(&spool.state).stored.entries[0].clone();
        assert_eq!((e.user.chars().count(), e.rhost.map(|r| r.chars().count()), e.tty), (80, Some(128), None));
        assert_eq!(spool.pending(), (1, 0));
    }

    #[test]
    fn the_spool_survives_a_restart_root_only() {
        let dir = private_dir();
        let path = dir.path().join("spool/audit.json");
        {
            let spool = open(dir.path(), 3);
            for u in ["a", "b", "c", "d"] {
                spool.refused(&begin(u), 0, None, None, SpoolReason::Unavailable);
            }
            spool.save().unwrap();
        }
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, nix::unistd::geteuid().as_raw()));
        let spool_dir = std::fs::metadata(dir.path().join("spool")).unwrap();
        assert_eq!(spool_dir.mode() & 0o777, 0o700);
        let again = open(dir.path(), 3);
        assert_eq!((users(&again), again.pending()), (vec!["b".into(), "c".into(), "d".into()], (3, 1)));
        // A smaller spool_max after the restart: the oldest go, counted.
        let smaller = open(dir.path(), 2);
        assert_eq!((users(&smaller), smaller.pending()), (vec!["c".into(), "d".into()], (2, 2)));
        // Others' read access is taken away; an unreadable file is moved aside.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open(dir.path(), 3));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        std::fs::write(&path, "{not json").unwrap();
        let fresh = open(dir.path(), 3);
        assert_eq!(fresh.pending(), (0, 0));
        assert!(dir.path().join("spool/audit.unreadable").exists());
    }

    #[test]
    fn a_spool_others_could_write_or_plant_is_refused() {
        let dir = private_dir();
        let spool_dir = dir.path().join("spool");
        std::fs::create_dir(&spool_dir).unwrap();
        std::fs::set_permissions(&spool_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Spool::open(&spool_dir.join("audit.json"), 3, Box::new(FakeClock::new(T0))).err().unwrap();
        assert!(e.to_string().contains("writable by every user"), "{e}");
        std::fs::set_permissions(&spool_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(spool_dir.join("audit.json"), "{}").unwrap();
        std::os::unix::fs::chown(spool_dir.join("audit.json"), Some(65534), None).unwrap();
        let e = Spool::open(&spool_dir.join("audit.json"), 3, Box::new(FakeClock::new(T0))).err().unwrap();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn only_what_the_server_acknowledged_is_forgotten() {
        let dir = private_dir();
        let spool = open(dir.path(), 3);
        for u in ["a", "b", "c", "d"] {
            spool.refused(&begin(u), 0, None, None, SpoolReason::Unavailable);
        }
        let sent = spool.batch().unwrap();
        assert_eq!(sent.dropped, 1);
        // While the batch is out, two more refusals push "b" and "c" out.
        spool.refused(&begin("e"), 0, None, None, SpoolReason::Unavailable);
        spool.refused(&begin("f"), 0, None, None, SpoolReason::Unavailable);
        assert_eq!(spool.pending(), (3, 3));
        // The server took b and c (and the count of 1): they were not lost after all.
        spool.forget(&sent, &SpoolAck { taken: 2, dropped: 1, retry_after_secs: None });
        assert_eq!((users(&spool), spool.pending()), (vec!["d".into(), "e".into(), "f".into()], (3, 0)));
        // Nothing acknowledged: nothing forgotten.
        let sent = spool.batch().unwrap();
        spool.forget(&sent, &SpoolAck { taken: 0, dropped: 0, retry_after_secs: Some(10) });
        assert_eq!(spool.pending(), (3, 0));
    }

    #[tokio::test]
    async fn delivery_retries_until_a_server_takes_it_all() {
        let dir = private_dir();
        let spool = Arc::new(open(dir.path(), 200));
        for i in 0..120 {
            spool.refused(&begin(&format!("u{i}")), 0, None, None, SpoolReason::Unavailable);
        }
        let calls = Arc::new(Mutex::new(Vec::<usize>::new()));
        let task = {
            let calls = calls.clone();
            tokio::spawn(deliver(spool.clone(), move |batch: SpoolBatch| {
                let calls = calls.clone();
                async move {
                    let mut c = lock(&calls);
                    c.push(batch.spool.len());
                    if c.len() == 1 {
                        return Err("no server".to_string());
                    }
                    Ok(SpoolAck { taken: batch.spool.len() as u32, dropped: batch.dropped, retry_after_secs: None })
                }
            }))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&calls).is_empty() {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A login found a server: no waiting out the pause.
        spool.server_back();
        while spool.pending() != (0, 0) {
            assert!(std::time::Instant::now() < deadline, "{:?}", spool.pending());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert_eq!(*lock(&calls), [50, 50, 50, 20], "one failure, then batches of at most 50");
    }

    fn entry(id: &str, user: &str, time: i64) -> SpoolEntry {
        SpoolEntry {
            id: id.into(),
            time,
            user: user.into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.9".into()),
            tty: None,
            caller: None,
            reason: SpoolReason::Unavailable,
        }
    }

    fn core() -> Core {
        Core::new(Parts::for_tests(
            crate::store::db::Db::start(crate::store::sqlite::SqliteStore::in_memory().unwrap()),
            T0,
        ))
    }

    async fn rows(core: &Core) -> Vec<common::proto::AuditEntry> {
        core.db.run(|st| st.audit(None, None, None, 1000)).await.unwrap()
    }

    #[tokio::test]
    async fn a_server_writes_a_batch_once_late_under_the_certificates_host() {
        let core = core();
        let rate = RateLimiter::new(PER_HOST_PER_MINUTE);
        let batch = SpoolBatch {
            spool: vec![
                entry("aa01", "alice", T0 - 3600),
                SpoolEntry { caller: Some(1000), reason: SpoolReason::Busy, ..entry("aa02", "bob", T0 - 60) },
                entry("aa03", "ahead", T0 + 3600),
                entry("aa04", "ancient", T0 - MAX_AGE - 1),
                entry("not hex", "odd", T0),
            ],
            dropped: 7,
        };
        let ack = receive(&core, &rate, "web01", batch.clone()).await;
        assert_eq!(ack, SpoolAck { taken: 5, dropped: 7, retry_after_secs: None });
        let all = rows(&core).await;
        let alice = all.iter().find(|r| r.user == "alice").unwrap();
        assert_eq!((alice.time, alice.received_at, alice.machine.as_str()), (T0 - 3600, Some(T0), "web01"));
        assert_eq!((alice.result.as_str(), alice.service.as_str()), ("refused", "sshd"));
        assert_eq!(alice.reason, "refused by the agent: no server answered");
        let bob = all.iter().find(|r| r.user == "bob").unwrap();
        assert!(bob.reason.contains("too many logins") && bob.reason.ends_with("(caller uid 1000 on web01)"));
        let reasons: Vec<&str> = all.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons.contains(&"7 older refusals were dropped from this host's audit spool (it was full)"));
        assert!(
            reasons.iter().any(|r| r.starts_with(
                "3 spooled refusals from this host not written: 1 older than 30 \
                                                   days, 1 dated ahead of this server's clock, 1 malformed"
            )),
            "{reasons:?}"
        );
        assert_eq!(all.len(), 4, "{reasons:?}");
        assert!(all.iter().all(|r| r.received_at == Some(T0) && r.machine == "web01"));
        // Sent again (the acknowledgement was lost): no second row. The
        // same ids from another host are that host's own.
        let again = SpoolBatch { spool: batch.spool[..2].to_vec(), dropped: 0 };
        assert_eq!(receive(&core, &rate, "web01", again.clone()).await.taken, 2);
        assert_eq!(rows(&core).await.len(), 4);
        receive(&core, &rate, "web02", again).await;
        assert_eq!(rows(&core).await.iter().filter(|r| r.machine == "web02").count(), 2);
    }

    #[tokio::test]
    async fn one_host_cannot_write_more_than_its_rate() {
        let core = core();
        let rate = RateLimiter::new(5);
        let big = SpoolBatch { spool: (0..300).map(|i| entry(&format!("{i:x}"), "u", T0)).collect(), dropped: 9 };
        let ack = receive(&core, &rate, "web01", big).await;
        assert_eq!(ack, SpoolAck { taken: 5, dropped: 0, retry_after_secs: Some(RETRY_LIMITED_SECS) });
        assert_eq!(rows(&core).await.len(), 5);
        // Another host has its own allowance; a batch holds at most MAX_BATCH.
        let wide = RateLimiter::new(10_000);
        let big = SpoolBatch { spool: (0..300).map(|i| entry(&format!("{i:x}"), "u", T0)).collect(), dropped: 0 };
        assert_eq!(receive(&core, &wide, "web02", big).await.taken as usize, MAX_BATCH);
    }
}
