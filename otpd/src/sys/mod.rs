//! The operating system below everything: the clock, framed Unix-socket
//! connections, sockets and start-up, trusted files, the hashing threads.
pub mod clock;
pub mod conn;
pub mod hashing;
pub mod pamauth;
pub mod start;
pub mod trust;
