//! Framing: a u32 big-endian length followed by that many bytes of JSON.
//!
//! Frames larger than [`MAX_FRAME`] are refused before any allocation, so a
//! peer cannot make either side buffer more than 64 KiB per connection.
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};

pub const MAX_FRAME: usize = 64 * 1024;

/// Largest admin *response* (daemon → otpctl over the root-only admin
/// socket): `user list` and `audit` of a large site. Requests, and
/// everything on the PAM socket, stay within [`MAX_FRAME`].
pub const MAX_ADMIN_RESPONSE: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the size limit")]
    TooBig(usize),
    #[error("empty frame")]
    Empty,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("connection closed")]
    Closed,
    #[error("timed out")]
    TimedOut,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => FrameError::TimedOut,
            std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
            _ => FrameError::Io(e),
        }
    }
}

/// Serialises `msg` into a complete frame (header + body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_limited(msg, MAX_FRAME)
}

/// [`encode`] with another size limit (admin responses).
pub fn encode_limited<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > max {
        return Err(FrameError::TooBig(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validates a frame header and returns the body length.
pub fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    body_len_limited(header, MAX_FRAME)
}

/// [`body_len`] with another size limit (admin responses).
pub fn body_len_limited(header: [u8; 4], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooBig(len));
    }
    Ok(len)
}

/// Parses a frame body. Rejects non-UTF-8, trailing garbage and unknown fields.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let text = std::str::from_utf8(body).map_err(|_| FrameError::Malformed("not UTF-8".into()))?;
    serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Decodes one whole frame from a byte slice (used by fuzzing and tests);
/// returns the message and the number of bytes consumed.
pub fn decode_frame<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), FrameError> {
    let header: [u8; 4] = match bytes.get(..4).and_then(|h| h.try_into().ok()) {
        Some(h) => h,
        None => return Err(if bytes.is_empty() { FrameError::Closed } else { FrameError::Truncated }),
    };
    let len = body_len(header)?;
    let body = bytes.get(4..4 + len).ok_or(FrameError::Truncated)?;
    Ok((decode_body(body)?, 4 + len))
}

/// Takes one whole frame off the front of `pending` (the bytes an
/// incremental reader has received so far): `None` while it is incomplete
/// (room for the rest is reserved), an error as soon as a bad header is in.
pub fn take_frame<T: DeserializeOwned>(pending: &mut Vec<u8>, max: usize) -> Option<Result<T, FrameError>> {
    let header: [u8; 4] = pending.get(..4)?.try_into().ok()?;
    let len = match body_len_limited(header, max) {
        Ok(len) => len,
        Err(e) => return Some(Err(e)),
    };
    if pending.len() < 4 + len {
        pending.reserve(4 + len - pending.len());
        return None;
    }
    let msg = decode_body(&pending[4..4 + len]);
    pending.drain(..4 + len);
    Some(msg)
}

/// Decodes back-to-back frames until the first error: the messages, and
/// the error that ends them (`Closed` when the bytes end cleanly). The
/// reference for the incremental readers, which must give the same for the
/// same bytes however they arrive.
pub fn decode_stream<T: DeserializeOwned>(mut bytes: &[u8]) -> (Vec<T>, FrameError) {
    let mut out = Vec::new();
    loop {
        match decode_frame::<T>(bytes) {
            Ok((m, used)) => {
                out.push(m);
                bytes = &bytes[used..];
            }
            Err(e) => return (out, e),
        }
    }
}

/// Blocking read of one frame. The caller sets the socket deadlines.
pub fn read_frame<T: DeserializeOwned, R: Read>(r: &mut R) -> Result<T, FrameError> {
    read_frame_limited(r, MAX_FRAME)
}

/// [`read_frame`] for frames up to `max` bytes (admin responses).
pub fn read_frame_limited<T: DeserializeOwned, R: Read>(r: &mut R, max: usize) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) => return Err(if got == 0 { FrameError::Closed } else { FrameError::Truncated }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let len = body_len_limited(header, max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode_body(&body)
}

/// Blocking write of one frame.
pub fn write_frame<T: Serialize, W: Write>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ClientMsg, ServerMsg};

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn roundtrip() {
        let msg = ClientMsg::Answer { text: "123456".into() };
        let bytes = encode(&msg).unwrap_or_default();
        let mut cur = std::io::Cursor::new(bytes.clone());
        let back: ClientMsg = read_frame(&mut cur).unwrap_or(ClientMsg::Cancel);
        assert_eq!(back, msg);
        let (again, used): (ClientMsg, usize) = decode_frame(&bytes).unwrap_or((ClientMsg::Cancel, 0));
        assert_eq!((again, used), (msg, bytes.len()));
    }

    #[test]
    fn truncated_header_and_body() {
        let mut cur = std::io::Cursor::new(vec![0u8, 0]);
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::Truncated)));
        let mut bytes = frame(br#"{"type":"cancel"}"#);
        bytes.truncate(bytes.len() - 3);
        let mut cur = std::io::Cursor::new(bytes.clone());
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::Truncated)));
        assert!(matches!(decode_frame::<ClientMsg>(&bytes), Err(FrameError::Truncated)));
        let mut cur = std::io::Cursor::new(Vec::new());
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::Closed)));
    }

    #[test]
    fn oversized_is_refused_before_reading_body() {
        let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
        // Only the header is present: the error must come from the length alone.
        let mut cur = std::io::Cursor::new(header.to_vec());
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::TooBig(n)) if n == MAX_FRAME + 1));
        let mut cur = std::io::Cursor::new(u32::MAX.to_be_bytes().to_vec());
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::TooBig(_))));
        let big = ServerMsg::Info { text: "x".repeat(MAX_FRAME) };
        assert!(matches!(encode(&big), Err(FrameError::TooBig(_))));
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &b"\xff\xfe\x00garbage"[..],
            b"not json",
            br#"{"type":"answer"}"#,
            br#"{"type":"answer","text":"1"} trailing"#,
            br#"{"type":"nope"}"#,
            br#"[1,2,3]"#,
        ] {
            let mut cur = std::io::Cursor::new(frame(body));
            assert!(
                matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::Malformed(_))),
                "body {body:?} should be malformed"
            );
        }
        let mut cur = std::io::Cursor::new(vec![0, 0, 0, 0]);
        assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::Empty)));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut bytes = encode(&ClientMsg::Cancel).unwrap_or_default();
        bytes.extend(encode(&ClientMsg::Answer { text: "1".into() }).unwrap_or_default());
        let mut cur = std::io::Cursor::new(bytes);
        assert_eq!(read_frame::<ClientMsg, _>(&mut cur).ok(), Some(ClientMsg::Cancel));
        assert_eq!(read_frame::<ClientMsg, _>(&mut cur).ok(), Some(ClientMsg::Answer { text: "1".into() }));
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests on arbitrary bytes: the decoder never panics, never
    //! reads past a frame, and never accepts more than MAX_FRAME.
    use super::*;
    use crate::proto::{AdminRequest, ClientMsg, ServerMsg};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok((_, used)) = decode_frame::<ClientMsg>(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_FRAME + 4);
            }
            let _ = decode_frame::<ServerMsg>(&bytes);
            let _ = decode_frame::<AdminRequest>(&bytes);
            let mut cur = std::io::Cursor::new(bytes);
            let _ = read_frame::<ClientMsg, _>(&mut cur);
        }

        #[test]
        fn arbitrary_json_bodies_never_panic(body in "\\PC{0,300}") {
            let _ = decode_body::<ClientMsg>(body.as_bytes());
            let _ = decode_body::<AdminRequest>(body.as_bytes());
        }

        #[test]
        fn answers_roundtrip(text in "\\PC{0,600}") {
            let msg = ClientMsg::Answer { text };
            let frame = encode(&msg).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (back, used): (ClientMsg, usize) = decode_frame(&frame).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn any_declared_length_over_the_cap_is_refused(len in (MAX_FRAME as u32 + 1)..=u32::MAX) {
            let mut cur = std::io::Cursor::new(len.to_be_bytes().to_vec());
            prop_assert!(matches!(read_frame::<ClientMsg, _>(&mut cur), Err(FrameError::TooBig(_))));
        }
    }
}
