//! Who is asking: one login's context, and which names may be asked about.
use common::proto::MAX_USER_LEN;

/// Who is asking, from the `Begin` message and SO_PEERCRED.
#[derive(Debug, Clone, Default)]
pub struct LoginContext {
    /// The name as typed until [`plan`] finds the account; then the
    /// account's name, so every later step and audit row names the account.
    pub user: String,
    /// The spelling typed, when it differs from the account's name.
    pub typed: Option<String>,
    /// The account the login process's directory resolved the name to
    /// (`Begin.uid` or the answer to `resolve_user`); trusted from root
    /// callers only.
    pub uid: Option<u32>,
    /// The module has been asked to resolve the name (its answer is `uid`).
    pub resolved: bool,
    pub service: String,
    pub rhost: Option<String>,
    pub tty: Option<String>,
    pub peer_uid: u32,
    /// The host the login happens on: this machine for the local PAM
    /// socket, the host named by an agent's certificate on a server.
    /// Emailed codes are bound to it; audit rows and sessions record it.
    pub machine: String,
    /// Relayed by an agent: `uid`/`peer_uid` are that host's, and mean
    /// nothing in this daemon's records (uid 1000 on web01 and on db02 are
    /// different people). Accounts are found by name.
    pub remote: bool,
    /// Relayed from a caller other than root: the name of its own account
    /// on its host, looked up by the agent there ([`common::proto::Relay`]).
    /// Such a caller is only ever this account; none: it is refused.
    pub account: Option<String>,
    /// Relayed from root: the real uid of the process that started the
    /// login (su, sudo), when it is not root; recorded in the audit.
    pub invoker: Option<u32>,
    /// Relayed: the fingerprint of the agent's certificate. A decision is
    /// made only while it is still a host's and not revoked (check 40).
    pub host_fingerprint: Option<Vec<u8>>,
}

/// POSIX-portable user names plus the characters real directories use
/// (`@` for realms, `$` for machine accounts). Anything else is refused
/// before it reaches the store or the logs.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_LEN
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'$'))
}
