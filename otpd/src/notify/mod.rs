//! Sending what the core has queued: emailed codes.
pub mod mail;
