//! Admin requests: [`ops`] handles each (for every door); the admin
//! socket and D-Bus are doors onto them.
pub mod dbus;
pub mod ops;
pub mod socket;
