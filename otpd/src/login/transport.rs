//! What a conversation needs from its connection: the daemon-side mirror of
//! the module's `PamIo`. A local PAM socket ([`Conn`]) and a relay from a
//! remote agent ([`crate::fleet::link`]) both implement it, so one state machine
//! ([`crate::login::conversation`]) serves both.
use crate::sys::conn::Conn;
use common::codec::FrameError;
use common::proto::{ClientMsg, ServerMsg};
use std::future::Future;
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub trait Transport: Send {
    /// The next message: `wait` bounds the time until it starts (a user
    /// typing), `io_timeout` the rest of the frame.
    fn read_msg(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<ClientMsg, FrameError>> + Send;

    fn write_msg(
        &mut self,
        msg: &ServerMsg,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<(), FrameError>> + Send;

    /// A socket the database thread may write the outcome to as soon as it
    /// is committed (local sockets only; see [`crate::sys::conn::send_now`]).
    fn direct(&self) -> Option<UnixStream> {
        None
    }

    /// After this the asker has given up on an answer to the last message
    /// read (a relayed login: the module's wait, as its agent states it),
    /// so no decision may be made on it (check 37). None: no such bound.
    fn decide_by(&self) -> Option<std::time::Instant> {
        None
    }

    /// Whether the asker has already closed the connection (looked at
    /// without waiting). A local socket's closing is seen when the outcome
    /// is written; a relayed one is looked at before each decision.
    fn asker_gone(&mut self) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }
}

impl Transport for Conn {
    fn read_msg(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<ClientMsg, FrameError>> + Send {
        Conn::read_msg::<ClientMsg>(self, wait, io_timeout)
    }

    fn write_msg(
        &mut self,
        msg: &ServerMsg,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<(), FrameError>> + Send {
        Conn::write_msg(self, msg, io_timeout)
    }

    fn direct(&self) -> Option<UnixStream> {
        self.duplicate()
    }
}

/// A conversation may borrow its connection (an agent link outlives it).
impl<T: Transport> Transport for &mut T {
    fn read_msg(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<ClientMsg, FrameError>> + Send {
        (**self).read_msg(wait, io_timeout)
    }

    fn write_msg(
        &mut self,
        msg: &ServerMsg,
        io_timeout: Duration,
    ) -> impl Future<Output = Result<(), FrameError>> + Send {
        (**self).write_msg(msg, io_timeout)
    }

    fn direct(&self) -> Option<UnixStream> {
        (**self).direct()
    }

    fn decide_by(&self) -> Option<std::time::Instant> {
        (**self).decide_by()
    }

    fn asker_gone(&mut self) -> impl Future<Output = bool> + Send {
        (**self).asker_gone()
    }
}
