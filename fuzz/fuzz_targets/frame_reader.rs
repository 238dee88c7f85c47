//! The WebSocket frame reader (`transport/frame_reader.rs`) on arbitrary
//! client bytes.
//!
//! Input: 2 bytes of size limit, 1 byte choosing how the bytes arrive
//! (piece sizes), 1 byte of stalls, then the bytes on the wire.
//!
//! Checks:
//! - it agrees with a reference reader written from RFC 6455 (below): the
//!   same messages in the same order, then the same kind of stop;
//! - the result does not depend on how the bytes arrive, nor on `next()`
//!   being cancelled while the socket has nothing (cancel safety);
//! - no message is over the limit, and the reader never holds more than
//!   about two messages' worth of bytes (limit + header, doubled by
//!   allocation growth, plus a read chunk).
#![no_main]

use gateway::fuzzing::{Frame, FrameReader, Stop};
use gateway_fuzz::{poll_once, Trickle};
use libfuzzer_sys::fuzz_target;

/// The largest header: 2 bytes, 8 of length, 4 of mask.
const HEADER: usize = 14;
/// What one read may add beyond a frame (the reader's read chunk).
const READ_CHUNK: usize = 1024;

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let max = usize::from(u16::from_le_bytes([input[0], input[1]]));
    let sizes: Vec<usize> = match input[2] {
        0 => vec![0],
        n => vec![usize::from(n % 16), usize::from(n / 16), 1, 3],
    };
    let stall = u64::from(input[3]) * 0x0101_0101_0101_0101;
    let wire = &input[4..];

    let want = reference(wire, max);
    let whole = read_all(Trickle::new(wire, vec![0], 0), max);
    assert_eq!(whole, want, "reader disagrees with the reference");
    let trickled = read_all(Trickle::new(wire, sizes, stall), max);
    assert_eq!(trickled, want, "result depends on how the bytes arrive");
});

/// Everything the reader yields up to its first stop or close, checking the
/// bounds after every poll.
fn read_all(io: Trickle<'_>, max: usize) -> (Vec<Frame>, Option<Stop>) {
    let mut reader = FrameReader::new(io, max);
    let mut out = Vec::new();
    // Every poll consumes input or pends once, so this ends.
    loop {
        let polled = poll_once(reader.next());
        let (len, cap, partial) = reader.held();
        assert!(len <= cap);
        assert!(
            partial <= max,
            "fragments over the limit are kept: {partial} > {max}"
        );
        let bound = 2 * (max + HEADER) + 2 * READ_CHUNK;
        assert!(
            cap <= bound,
            "read buffer of {cap} bytes for a limit of {max}"
        );
        match polled {
            None => continue, // cancelled while pending; call again
            Some(Ok(frame)) => {
                if let Frame::Text(b) | Frame::Binary(b) = &frame {
                    assert!(
                        b.len() <= max,
                        "a message of {} bytes, limit {max}",
                        b.len()
                    );
                }
                let close = matches!(frame, Frame::Close(_));
                out.push(frame);
                if close {
                    return (out, None);
                }
            }
            Some(Err(stop)) => return (out, Some(stop)),
        }
    }
}

/// RFC 6455 as a server reads client frames, written plainly over the whole
/// input: frames must be masked, no reserved bits or opcodes, control frames
/// unfragmented and at most 125 bytes, continuations only inside a message,
/// text valid UTF-8, close codes as §7.4 allows, messages up to `max`.
fn reference(mut wire: &[u8], max: usize) -> (Vec<Frame>, Option<Stop>) {
    let mut out = Vec::new();
    let mut partial: Option<(u8, Vec<u8>)> = None;
    let stop = |out, s| (out, Some(s));
    loop {
        if wire.len() < 2 {
            return stop(out, Stop::Eof);
        }
        let (fin, rsv, opcode, masked) = (
            wire[0] & 0x80 != 0,
            wire[0] & 0x70,
            wire[0] & 0x0F,
            wire[1] & 0x80 != 0,
        );
        if rsv != 0 || !masked {
            return stop(out, Stop::Protocol);
        }
        let control = opcode >= 8;
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return stop(out, Stop::Protocol);
        }
        let (len, at) = match wire[1] & 0x7F {
            126 if wire.len() >= 4 => (u64::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 if wire.len() >= 10 => (u64::from_be_bytes(wire[2..10].try_into().unwrap()), 10),
            126 | 127 => return stop(out, Stop::Eof),
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return stop(out, Stop::Protocol);
        }
        let so_far = partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if !control && len.saturating_add(so_far) > max as u64 {
            return stop(out, Stop::TooLarge);
        }
        let len = len as usize;
        if wire.len() < at + 4 + len {
            return stop(out, Stop::Eof);
        }
        let mask = &wire[at..at + 4];
        let payload: Vec<u8> = wire[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        wire = &wire[at + 4 + len..];
        match opcode {
            9 => out.push(Frame::Ping(payload.into())),
            10 => {}
            8 => {
                let code = match payload.len() {
                    0 => None,
                    1 => return stop(out, Stop::Protocol),
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        let ok = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                        if !ok || std::str::from_utf8(&payload[2..]).is_err() {
                            return stop(out, Stop::Protocol);
                        }
                        Some(code)
                    }
                };
                out.push(Frame::Close(code));
                return (out, None);
            }
            0 => {
                let Some((_, data)) = partial.as_mut() else {
                    return stop(out, Stop::Protocol);
                };
                data.extend_from_slice(&payload);
                if fin {
                    let (op, data) = partial.take().unwrap();
                    match message(op, data) {
                        Some(m) => out.push(m),
                        None => return stop(out, Stop::Protocol),
                    }
                }
            }
            op => {
                if partial.is_some() {
                    return stop(out, Stop::Protocol);
                }
                if fin {
                    match message(op, payload) {
                        Some(m) => out.push(m),
                        None => return stop(out, Stop::Protocol),
                    }
                } else {
                    partial = Some((op, payload));
                }
            }
        }
    }
}

fn message(opcode: u8, data: Vec<u8>) -> Option<Frame> {
    if opcode == 1 {
        std::str::from_utf8(&data).ok()?;
        Some(Frame::Text(data.into()))
    } else {
        Some(Frame::Binary(data.into()))
    }
}
