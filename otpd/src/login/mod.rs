//! One PAM conversation, the same steps over any transport (the PAM
//! socket, a relayed login from an agent).
pub mod conversation;
pub mod qr;
pub mod transport;
