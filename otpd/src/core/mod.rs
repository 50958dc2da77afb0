//! Every decision, knowing no door: the login plan and the answer,
//! enrollment, lockout, emailed codes, emergency requests, rate limits,
//! groups, audit. The doors reach it through [`service::Core`].
pub mod access;
pub mod audit;
pub mod auth;
pub mod context;
pub mod crypto;
pub mod email;
pub mod events;
pub mod groups;
pub mod housekeeping;
pub mod limits;
pub mod passwd;
pub mod policy;
pub mod recovery;
pub mod refusals;
pub mod service;
pub mod syslog;
pub mod totp;
