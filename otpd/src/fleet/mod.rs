//! The fleet: [`link`] is a server's door for agents and remote otpctl,
//! [`agent`] an agent's relay door; both speak [`pki`] certificates.
pub mod admission;
pub mod agent;
pub mod link;
pub mod pki;
pub mod renewal;
pub mod wire;
