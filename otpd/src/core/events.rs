//! What the core tells whoever listens (D-Bus signals today): sent by the
//! login paths, nobody listening is fine.

/// Things worth a signal.
#[derive(Debug, Clone)]
pub enum Event {
    EnrollmentActivated {
        user: String,
    },
    CodeRequested {
        user: String,
        address: String,
    },
    EmergencyRequestPending {
        id: i64,
        user: String,
    },
    UserLockedOut {
        user: String,
        until: i64,
    },
    /// The user's second factor was disabled or reset: what was proven with
    /// the old one (a console session) no longer stands.
    SecondFactorChanged {
        user: String,
    },
}
