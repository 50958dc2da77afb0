//! Door: the PAM socket (SO_PEERCRED, connection slots, the first frame).
pub mod listener;
