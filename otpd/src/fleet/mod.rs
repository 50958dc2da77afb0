//! The fleet: [`link`] is a server's door for agents and remote otpctl,
//! [`agent`] an agent's relay door; both speak [`pki`] certificates.
//! [`spool`] keeps what an agent refused by itself until a server audits it;
//! [`authority`] holds a server's CAs through a rotation.
pub mod admission;
pub mod agent;
pub mod authority;
pub mod link;
pub mod pki;
pub mod renewal;
pub mod spool;
pub mod wire;
