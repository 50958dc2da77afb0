//! Adoption: importing users.oath / HOTP files and google-authenticator files.
pub mod gaimport;
pub mod gauth;
pub mod oath;
