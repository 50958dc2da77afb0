//! The admin operations, one handler per request, for every admin door (the
//! admin socket, D-Bus, remote otpctl over a fleet link): [`dispatch`]
//! routes a request to its handler; each area's handlers, and their unit
//! tests against an in-memory core, are in a file of their own; [`shared`]
//! holds what they have in common (who asks, the admin audit row, errors).
pub mod audit;
pub mod bulk;
pub mod ca;
pub mod credentials;
pub mod dispatch;
pub mod groups;
pub mod hosts;
pub mod imports;
pub mod own;
pub mod requests;
pub mod sessions;
pub mod shared;
pub mod status;
pub mod users;
