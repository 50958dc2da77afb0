//! Door: the web console's socket. otpweb (unprivileged) speaks
//! [`common::web`] here; every request is decided on a flow or a console
//! session that this door issued, never on otpweb's own uid.
pub mod door;
pub mod flows;
pub mod sessions;
