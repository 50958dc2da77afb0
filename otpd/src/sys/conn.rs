//! Framed connections on the daemon's Unix sockets.
//!
//! The socket is registered with the runtime for readability only. tokio's
//! own `UnixStream` also asks for writability, and a Unix stream socket
//! signals "writable" every time the peer consumes what we sent, so each
//! message the daemon sends would wake the login thread once more for
//! nothing. Writes are small and go straight into the socket buffer; a peer
//! that does not read gets short retries until `io_timeout`.
use common::codec::{encode, encode_limited, take_frame, FrameError, MAX_ADMIN_RESPONSE, MAX_FRAME};
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

pub struct Conn {
    fd: AsyncFd<UnixStream>,
    /// Bytes received but not yet returned as a frame.
    pending: Vec<u8>,
}

impl Conn {
    pub fn new(stream: UnixStream) -> std::io::Result<Conn> {
        stream.set_nonblocking(true)?;
        // SAFETY: the AsyncFd owns the stream, so its fd stays open and the same until it is dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(stream, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Conn { fd, pending: Vec::new() })
    }

    /// uid, gid and pid of the peer (`SO_PEERCRED`).
    pub fn peer(&self) -> std::io::Result<(u32, u32, Option<i32>)> {
        let c = nix::sys::socket::getsockopt(self.fd.get_ref(), nix::sys::socket::sockopt::PeerCredentials)
            .map_err(std::io::Error::from)?;
        Ok((c.uid(), c.gid(), Some(c.pid()).filter(|&p| p > 0)))
    }

    /// Reads one frame. `wait` bounds the time until its first byte arrives
    /// (a user typing); once a frame has started, the rest must arrive within
    /// `io_timeout`, so a half-sent frame cannot hold a connection.
    pub async fn read_msg<T: DeserializeOwned>(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
    ) -> Result<T, FrameError> {
        self.read_msg_limited(wait, io_timeout, MAX_FRAME).await
    }

    /// [`Conn::read_msg`] for frames up to `limit` bytes: only for peers
    /// already authorized (the admin socket's root and admin group).
    pub async fn read_msg_limited<T: DeserializeOwned>(
        &mut self,
        wait: Duration,
        io_timeout: Duration,
        limit: usize,
    ) -> Result<T, FrameError> {
        let first_byte_by = Instant::now() + wait;
        // Bytes left over from the previous read already started this frame.
        let mut frame_by = (!self.pending.is_empty()).then(|| Instant::now() + io_timeout);
        loop {
            if let Some(msg) = take_frame(&mut self.pending, limit) {
                return msg;
            }
            let mut buf = [0u8; 4096];
            let deadline = frame_by.unwrap_or(first_byte_by);
            let n = tokio::time::timeout_at(deadline, self.read_some(&mut buf))
                .await
                .map_err(|_| FrameError::TimedOut)??;
            if n == 0 {
                return Err(if self.pending.is_empty() { FrameError::Closed } else { FrameError::Truncated });
            }
            frame_by.get_or_insert_with(|| Instant::now() + io_timeout);
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    async fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().read(buf)) {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_msg<T: Serialize>(&mut self, msg: &T, io_timeout: Duration) -> Result<(), FrameError> {
        self.write_bytes(&encode(msg)?, io_timeout).await
    }

    /// An admin response, which may be larger than a PAM frame.
    pub async fn write_admin_response<T: Serialize>(
        &mut self,
        msg: &T,
        io_timeout: Duration,
    ) -> Result<(), FrameError> {
        self.write_bytes(&encode_limited(msg, MAX_ADMIN_RESPONSE)?, io_timeout).await
    }

    /// A second handle on the socket, for [`send_now`] from another thread.
    pub fn duplicate(&self) -> Option<UnixStream> {
        self.fd.get_ref().try_clone().ok()
    }

    async fn write_bytes(&mut self, frame: &[u8], io_timeout: Duration) -> Result<(), FrameError> {
        let deadline = Instant::now() + io_timeout;
        let mut sent = 0;
        let mut pause = Duration::from_millis(1);
        while sent < frame.len() {
            match self.fd.get_ref().write(&frame[sent..]) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // The peer is not reading: its buffer is full.
                    if Instant::now() + pause > deadline {
                        return Err(FrameError::TimedOut);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Writes as much of `frame` as the socket takes right now, without
/// waiting, and returns how much that was. Lets the database thread hand a
/// login its outcome the moment the decision is committed, instead of
/// waking the login thread to do it.
pub fn send_now(stream: &UnixStream, frame: &[u8]) -> usize {
    let mut sent = 0;
    while sent < frame.len() {
        match (&*stream).write(&frame[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

/// A listening socket registered for readability.
pub struct Listener(AsyncFd<UnixListener>);

impl Listener {
    pub fn new(listener: UnixListener) -> std::io::Result<Listener> {
        listener.set_nonblocking(true)?;
        // SAFETY: as for Conn::new, the AsyncFd owns the listener.
        let fd =
            unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
        Ok(Listener(fd))
    }

    pub async fn accept(&self) -> std::io::Result<Conn> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|l| l.get_ref().accept()) {
                Ok(Ok((stream, _))) => return Conn::new(stream),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The daemon's frame reader against the reference decoder: any bytes a
    //! peer sends, in any chunks, give the same messages and the same error.
    use super::*;
    use common::codec::decode_stream;
    use common::proto::ClientMsg;
    use proptest::prelude::*;

    fn frames() -> impl Strategy<Value = Vec<u8>> {
        let msg = prop_oneof![
            "\\PC{0,40}".prop_map(|text| ClientMsg::Answer { text }),
            Just(ClientMsg::Cancel),
            ("[a-z]{1,8}", "[a-z]{0,8}").prop_map(|(user, service)| ClientMsg::Begin {
                protocol: 1,
                user,
                service,
                rhost: None,
                ruser: None,
                tty: None,
                pid: 1,
                uid: None,
                qr: Default::default(),
            }),
        ];
        let good = msg.prop_map(|m| encode(&m).unwrap_or_default());
        let junk = proptest::collection::vec(any::<u8>(), 0..64);
        proptest::collection::vec(prop_oneof![4 => good, 1 => junk], 0..6).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn chunked_reads_match_the_reference_decoder(bytes in frames(), cuts in proptest::collection::vec(1usize..50, 1..20)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (got, end) = rt.block_on(async {
                let (mine, mut theirs) = UnixStream::pair().unwrap();
                let mut conn = Conn::new(mine).unwrap();
                let bytes = bytes.clone();
                let writer = std::thread::spawn(move || {
                    let mut at = 0;
                    for cut in cuts.iter().cycle() {
                        if at >= bytes.len() {
                            break;
                        }
                        let end = (at + cut).min(bytes.len());
                        if theirs.write_all(&bytes[at..end]).is_err() {
                            break;
                        }
                        at = end;
                    }
                });
                let mut got = Vec::new();
                let end = loop {
                    match conn.read_msg::<ClientMsg>(Duration::from_secs(5), Duration::from_secs(5)).await {
                        Ok(m) => got.push(m),
                        Err(e) => break e,
                    }
                };
                drop(conn);
                let _ = writer.join();
                (got, end)
            });
            let (want, want_end) = decode_stream::<ClientMsg>(&bytes);
            prop_assert_eq!(got, want);
            prop_assert_eq!(std::mem::discriminant(&end), std::mem::discriminant(&want_end), "{} vs {}", end, want_end);
        }
    }

    #[tokio::test]
    async fn a_half_sent_frame_times_out_after_io_timeout() {
        let (mine, mut theirs) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(mine).unwrap();
        theirs.write_all(&[0, 0, 1, 0, b'{']).unwrap();
        let started = std::time::Instant::now();
        let r = conn.read_msg::<ClientMsg>(Duration::from_secs(60), Duration::from_millis(200)).await;
        assert!(matches!(r, Err(FrameError::TimedOut)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
