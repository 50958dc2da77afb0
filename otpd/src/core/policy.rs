//! What the daemon was configured to decide by, shared by every door.
use crate::core::crypto::SecretBox;
use crate::core::totp::TotpParams;
use common::config::{EmailConfig, LockoutConfig};

/// Everything the core needs besides the store, shared by all connections.
pub struct Policy {
    pub totp: TotpParams,
    /// HOTP look-ahead (`[hotp] window`).
    pub hotp_window: u32,
    /// `[daemon] require_group`: members of this group (as last stored, see
    /// [`crate::core::groups`]) who are not enrolled are refused, not ignored.
    pub require_group: Option<String>,
    pub lockout: LockoutConfig,
    pub issuer: String,
    pub machine: String,
    pub crypto: SecretBox,
    pub email: EmailConfig,
}
